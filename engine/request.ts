/**
 * What the engine is asked to do (EngineRequest, built once by the caller from a
 * validated API request) and what it says back (EngineOutput).
 */

export interface SamplingParams {
  /** 0 means greedy. */
  temperature: number;
  /** 0 or less: off. */
  topK: number;
  topP: number;
  minP: number;
  /** A seeded request draws from its own stream, so its tokens don't depend on the batch. */
  seed?: number;
  presencePenalty: number;
  frequencyPenalty: number;
  repetitionPenalty: number;
  logitBias?: ReadonlyMap<number, number>;
  /** Return the chosen token's logprob and this many top alternatives; undefined: no logprobs. */
  logprobs?: number;
}

export const GREEDY: SamplingParams = {
  temperature: 0, topK: 0, topP: 1, minP: 0, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
};

export interface EngineRequest {
  requestId: string;
  promptTokenIds: readonly number[];
  maxTokens: number;
  sampling: SamplingParams;
  stopTokenIds?: readonly number[];
  ignoreEos?: boolean;
  /** Generate this many sequences from one prompt, sharing its KV blocks. */
  n?: number;
}

export type FinishReason = "stop" | "length" | "abort";

export interface TokenLogprob {
  tokenId: number;
  logprob: number;
}

/** One step's news for one sequence. */
export interface EngineOutput {
  requestId: string;
  /** Which of the request's n sequences. */
  index: number;
  newTokenIds: number[];
  /** Present when the request asked for logprobs: one entry per new token. */
  logprobs?: { logprob: number; top: TokenLogprob[] }[];
  finishReason?: FinishReason;
  /** Set on the first output: prompt tokens served from the prefix cache. */
  numCachedTokens?: number;
  numPromptTokens?: number;
}
