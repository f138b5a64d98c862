/**
 * What the engine core sees of a runner: data in, data out. A runner owns its KV cache
 * (sized from bytes by the runner itself) and reports it; the scheduler and block pool see
 * only block counts.
 */
import type { KvCacheDtype, LoraAdapter } from "../../models/index.ts";
import type { SequenceRows } from "./step-rows.ts";

export interface StepSequence {
  /** The tokens this step computes. */
  tokenIds: readonly number[];
  /** How many of the sequence's tokens are already in the KV cache: the position of tokenIds[0]. */
  numPastTokens: number;
  blockTable: readonly number[];
  /** Logits are returned for new tokens from this index on: length - 1 for the last only, length for none. */
  logitsFrom: number;
  /** 1 / temperature for this sequence's probs rows (default 1). */
  invTemperature?: number;
  /** Final hidden states are returned for new tokens from this index on (embeddings); undefined: none. */
  hiddenFrom?: number;
  /** The LoRA slot whose adapter this sequence runs under (1…--max-loras); 0 or absent: the base model. */
  loraSlot?: number;
}

export interface StepOptions {
  /** Fetch the full logits rows too (logits processors, logprobs of sampled tokens, prompt logprobs). */
  fullLogits: boolean;
  /** Fetch softmax(logits / T) rows too (temperature sampling). Otherwise only the top-N. */
  probs?: boolean;
  /** Fetch the hidden-state rows that sequences asked for with hiddenFrom. */
  hidden?: boolean;
}

/** A runner's KV cache: blocks for the scheduler, tokens and bytes for people. */
export interface KvCacheInfo {
  numBlocks: number;
  blockSize: number;
  /** Tokens it can hold (block 0 is the null block, never handed out). */
  numTokens: number;
  numBytes: number;
  /** How it stores K/V (--kv-cache-dtype). */
  dtype: KvCacheDtype;
}

/**
 * A runner's LoRA slots (the graph was built with them: --max-loras, --max-lora-rank): the
 * engine core decides which adapter each slot holds (core/adapter-slots.ts), the runner writes
 * its weights where the graph reads them. Slot 0 is "no adapter"; slots 1…numSlots hold one each.
 */
export interface RunnerLoraSlots {
  readonly numSlots: number;
  /** The largest rank a slot holds. */
  readonly rank: number;
  load(slot: number, adapter: LoraAdapter): void;
  clear(slot: number): void;
}

export interface StepRunner {
  readonly vocabSize: number;
  /** Its LoRA slots; null or absent: the graph has none. */
  readonly lora?: RunnerLoraSlots | null;
  /** The width of a hidden-state row. */
  readonly hiddenSize: number;
  readonly kvCache: KvCacheInfo;
  /** For each sequence, its logits rows from logitsFrom on, and its hidden rows from hiddenFrom on. */
  step(seqs: readonly StepSequence[], options: StepOptions): Promise<SequenceRows[]>;
  release(): Promise<void>;
}
