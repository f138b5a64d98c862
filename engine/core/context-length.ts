/**
 * The context length, decided here once: the model's own limit, lowered by --max-model-len,
 * and capped at what the KV cache holds (a sequence longer than the whole cache could never
 * finish). The engine reports the result; the server and the command line read it from there.
 */
export interface ContextLength {
  maxModelLen: number;
  /** Set when the KV cache held fewer tokens than asked for, and the context was capped to fit. */
  cappedFrom?: number;
}

/** What a request without max_tokens may generate: what the context leaves after its prompt (decided here, for the engine's check and the server's budget hold alike). */
export function defaultMaxTokens(numPromptTokens: number, maxModelLen: number): number {
  return Math.max(0, maxModelLen - numPromptTokens);
}

export function contextLengthOf(limits: { maxPositionEmbeddings: number; requested?: number; kvCacheTokens: number }): ContextLength {
  const wanted = Math.min(limits.requested ?? limits.maxPositionEmbeddings, limits.maxPositionEmbeddings);
  const maxModelLen = Math.min(wanted, limits.kvCacheTokens);
  return maxModelLen < wanted ? { maxModelLen, cappedFrom: wanted } : { maxModelLen };
}
