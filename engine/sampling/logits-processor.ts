/**
 * What changes a sequence's raw logits before sampling. Penalties and logit bias are
 * processors; a grammar's token mask is the next. A step fetches the raw logits rows only
 * for sequences some processor applies to.
 */
import type { SamplingParams } from "../common/request.ts";

/** The tokens a sequence has seen, for penalties. */
export interface TokenHistory {
  promptTokenIds: readonly number[];
  outputTokenIds: readonly number[];
  /** A grammar's mask for the next token (bit i of word i >> 5: token i allowed); absent: unconstrained. */
  allowedMask?: Int32Array | null;
}

export interface LogitsProcessor {
  /** Whether it changes anything for a sequence with these params and history. */
  appliesTo(params: SamplingParams, history: TokenHistory): boolean;
  /** Changes `logits` (the caller's own copy) in place. */
  apply(logits: Float32Array, params: SamplingParams, history: TokenHistory): void;
}

/** A grammar's disallowed tokens become −inf, first, so that no later processor or filter can bring one back. */
export const grammarMask: LogitsProcessor = {
  appliesTo: (_params, history) => history.allowedMask != null,
  apply(logits, _params, history) {
    const mask = history.allowedMask!;
    for (let word = 0; word < mask.length; word++) {
      const bits = mask[word];
      if (bits === -1) continue;
      const base = word << 5;
      const end = Math.min(32, logits.length - base);
      for (let bit = 0; bit < end; bit++) if ((bits & (1 << bit)) === 0) logits[base + bit] = -Infinity;
    }
  },
};

/** NOTE: as in HF and vLLM, it covers prompt and output, dividing positive logits and multiplying negative ones. */
export const repetitionPenalty: LogitsProcessor = {
  appliesTo: (params) => params.repetitionPenalty !== 1,
  apply(logits, { repetitionPenalty: penalty }, history) {
    const seen = new Set([...history.promptTokenIds, ...history.outputTokenIds]);
    for (const id of seen) logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
  },
};

/** NOTE: OpenAI's presence and frequency penalties count generated tokens only. */
export const presenceFrequencyPenalty: LogitsProcessor = {
  appliesTo: (params) => params.presencePenalty !== 0 || params.frequencyPenalty !== 0,
  apply(logits, { presencePenalty, frequencyPenalty }, history) {
    const counts = new Map<number, number>();
    for (const id of history.outputTokenIds) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const [id, count] of counts) logits[id] -= presencePenalty + frequencyPenalty * count;
  },
};

/** Token ids are checked against the vocabulary when the request is added. */
export const logitBias: LogitsProcessor = {
  appliesTo: (params) => (params.logitBias?.size ?? 0) > 0,
  apply(logits, params) {
    for (const [id, bias] of params.logitBias ?? []) logits[id] += bias;
  },
};

/** In the order they apply. */
export const LOGITS_PROCESSORS: readonly LogitsProcessor[] = [grammarMask, repetitionPenalty, presenceFrequencyPenalty, logitBias];

/** The logits after every processor that applies, as a copy; the logits themselves when none does. */
export function processLogits(logits: Float32Array, params: SamplingParams, history: TokenHistory): Float32Array {
  const applying = LOGITS_PROCESSORS.filter((p) => p.appliesTo(params, history));
  if (applying.length === 0) return logits;
  const out = Float32Array.from(logits);
  for (const processor of applying) processor.apply(out, params, history);
  return out;
}
