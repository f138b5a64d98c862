/**
 * One sequence's state: a plain object the engine changes through named methods.
 * Progress rule: numComputedTokens catches up with numTokens, one grant per step.
 */
import { Prng } from "../../models/prng.ts";
import type { IncrementalDetokenizer } from "../text/detokenizer.ts";
import type { EngineRequest, Pooling, PositionLogprob, Priority, SamplingParams } from "../common/request.ts";
import type { ServedAdapter } from "./adapter-slots.ts";

export type SequenceStatus = "waiting" | "running" | "finished";

export class Sequence {
  readonly outputTokenIds: number[] = [];
  numComputedTokens = 0;
  blockIds: number[] = [];
  /** Prefix-cache hashes of this sequence's full blocks, each chained to the one before. */
  blockHashes: string[] = [];
  status: SequenceStatus = "waiting";
  /** Prompt tokens whose KV came from the prefix cache, counted at first admission. */
  numCachedTokens: number | null = null;
  numPreemptions = 0;
  readonly rng: Prng;
  readonly arrivalMs = performance.now();
  priority: Priority = "standard";
  /** Turns output tokens into text and applies stop strings; null when the engine has no tokenizer. */
  detokenizer: IncrementalDetokenizer | null = null;
  /** Prompt logprobs by position, when the request asked for them. */
  promptLogprobs: Map<number, PositionLogprob> | null = null;
  /** The grammar matcher's key, when the output is constrained; the tokens it has yet to accept. */
  grammarKey: string | null = null;
  readonly grammarTokens: number[] = [];
  /** Set on an embedding sequence: how its hidden states pool, and their running sum (float64) so far. */
  pooling: Pooling | null = null;
  pooled: Float64Array | null = null;
  /** The LoRA adapter it runs under (null: the base model), and the slot that holds it while it runs (0: none). */
  adapter: ServedAdapter | null = null;
  loraSlot = 0;
  firstTokenMs: number | null = null;
  lastTokenMs: number | null = null;
  previousTokenMs: number | null = null;

  constructor(
    readonly requestId: string,
    readonly index: number,
    readonly promptTokenIds: readonly number[],
    readonly maxTokens: number,
    readonly sampling: SamplingParams,
    readonly stopTokenIds: ReadonlySet<number>,
  ) {
    const seed = sampling.seed === undefined ? (Math.random() * 2 ** 32) >>> 0 : (sampling.seed + index * 0x9e3779b9) >>> 0;
    this.rng = new Prng(seed);
  }

  static fromRequest(request: EngineRequest & { maxTokens: number }, index: number, stopTokenIds: ReadonlySet<number>): Sequence {
    const seq = new Sequence(request.requestId, index, request.promptTokenIds, request.maxTokens, request.sampling, stopTokenIds);
    seq.priority = request.priority ?? "standard";
    seq.pooling = request.pooling ?? null;
    return seq;
  }

  get numPromptTokens(): number {
    return this.promptTokenIds.length;
  }

  /** A sequence that reads every prompt row (prompt logprobs, mean pooling) computes them all: it takes no prefix-cache hits. */
  get skipsPrefixCache(): boolean {
    return this.promptLogprobs !== null || this.pooling !== null;
  }

  /** What its prefix-cache hashes are chained from: its adapter's key, so KV computed under other weights is never shared. */
  get cacheSalt(): string {
    return this.adapter?.cacheKey ?? "";
  }

  get numTokens(): number {
    return this.promptTokenIds.length + this.outputTokenIds.length;
  }

  get numUncomputedTokens(): number {
    return this.numTokens - this.numComputedTokens;
  }

  tokenAt(position: number): number {
    return position < this.promptTokenIds.length ? this.promptTokenIds[position] : this.outputTokenIds[position - this.promptTokenIds.length];
  }

  tokensIn(start: number, end: number): number[] {
    const out: number[] = [];
    for (let p = start; p < end; p++) out.push(this.tokenAt(p));
    return out;
  }

  appendToken(tokenId: number): void {
    this.outputTokenIds.push(tokenId);
    const now = performance.now();
    this.firstTokenMs ??= now;
    this.previousTokenMs = this.lastTokenMs;
    this.lastTokenMs = now;
  }

  /** Back to waiting with nothing computed: its blocks were taken, so it recomputes. */
  preempt(): void {
    this.status = "waiting";
    this.numComputedTokens = 0;
    this.blockIds = [];
    this.blockHashes = [];
    this.pooled = null;
    this.loraSlot = 0;
    this.numPreemptions++;
  }
}
