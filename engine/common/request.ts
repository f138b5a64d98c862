/**
 * What the engine is asked to do (EngineRequest, built once by the caller from a
 * validated API request) and what it says back (EngineOutput).
 */
import type { GrammarSpec } from "./grammar-spec.ts";

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

/**
 * The scheduling tier: waiting requests are admitted interactive first, then standard, then
 * batch (each by arrival), and preemption takes batch first.
 */
export type Priority = "interactive" | "standard" | "batch";

/** How an embedding pools the prompt's final hidden states: the last token's row, or the mean of all rows. */
export type Pooling = "last" | "mean";
export const POOLINGS = ["last", "mean"] as const satisfies readonly Pooling[];

export interface EngineRequest {
  requestId: string;
  /** Default "standard". */
  priority?: Priority;
  promptTokenIds: readonly number[];
  /** Tokens to generate at most, per sequence; undefined: what the context leaves. */
  maxTokens?: number;
  sampling: SamplingParams;
  stopTokenIds?: readonly number[];
  ignoreEos?: boolean;
  /** Generate this many sequences from one prompt, sharing its KV blocks. */
  n?: number;
  /** Stop strings: a sequence ends before the first one its text contains. */
  stop?: readonly string[];
  /** Keep the stop string that ended a sequence in its text (default false, as OpenAI). */
  includeStopStrInOutput?: boolean;
  /** Leave special tokens out of the text (default true). */
  skipSpecialTokens?: boolean;
  /** Return each prompt token's logprob with this many alternatives (for echo). Turns prefix-cache hits off for the request. */
  promptLogprobs?: number;
  /** The output must match this grammar: tokens it disallows are never sampled, and it ends with stop when the grammar does. */
  grammar?: GrammarSpec;
  /**
   * An embedding request: the prompt is run prefill-only, through the same scheduler and
   * batches, and its final hidden states, pooled and L2-normalized, come back on its one
   * output as `embedding`. Nothing is generated: max_tokens, n, sampling and stops don't apply,
   * and the prefix cache is not read (every row is computed, so usage is all uncached input).
   */
  pooling?: Pooling;
  /**
   * Run under this LoRA adapter (loaded into the engine by name); undefined: the base model.
   * Its KV blocks are cached under the adapter, never shared with other weights.
   */
  adapter?: string;
}

export type FinishReason = "stop" | "length" | "abort";

export interface TokenLogprob {
  tokenId: number;
  logprob: number;
  /** The token alone as text (U+FFFD where it holds part of a character); set when the engine has a tokenizer. */
  token?: string;
  /** The token's raw UTF-8 bytes. */
  bytes?: number[];
}

export interface PositionLogprob extends TokenLogprob {
  top: TokenLogprob[];
}

/** A prompt token's logprob; the first prompt token has none (logprob and top are null). */
export interface PromptLogprob extends Omit<TokenLogprob, "logprob"> {
  logprob: number | null;
  top: TokenLogprob[] | null;
}

/**
 * What a request used, exactly: its prompt (once, whatever n), the prompt tokens served from
 * the prefix cache, and the tokens generated over all its sequences.
 */
export interface RequestUsage {
  numPromptTokens: number;
  numCachedPromptTokens: number;
  numCompletionTokens: number;
}

/** One step's news for one sequence. */
export interface EngineOutput {
  requestId: string;
  /** Which of the request's n sequences. */
  index: number;
  newTokenIds: number[];
  /** New text, safe to send: stop strings are applied and partial characters held back. */
  text: string;
  /** Present when the request asked for logprobs: one entry per new token. */
  logprobs?: PositionLogprob[];
  finishReason?: FinishReason;
  /** What stopped the sequence: the stop string, or the stop token id. */
  stopReason?: string | number;
  /** Set on the first output: prompt tokens served from the prefix cache. */
  numCachedTokens?: number;
  numPromptTokens?: number;
  /** On the first output of a request with promptLogprobs: one per prompt token; the first has none. */
  promptLogprobs?: PromptLogprob[];
  /** On the one output of a pooling request: the pooled, L2-normalized hidden state. */
  embedding?: Float32Array;
  /**
   * On the request's last output, however it ended (finished, stopped or aborted): what it
   * used. A request that fails instead carries it on its EngineError.
   */
  usage?: RequestUsage;
}
