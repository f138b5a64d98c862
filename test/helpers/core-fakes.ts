/**
 * Factories and a fake runner for CPU-only engine tests: tiny blocks, no ONNX Runtime.
 *
 * The fake runner keeps a pretend KV pool (slot → token id) and checks what the engine
 * sends it: every past position it reads must have been written, and the null block is
 * never in a block table. Its logits peak at `nextToken(context)`, where the context is
 * read back from the pool, so a block handed to the wrong sequence changes the output.
 */
import { EngineCore, type EngineCoreOptions } from "../../engine/core/engine-core.ts";
import { BlockPool, NULL_BLOCK_ID } from "../../engine/kv-cache/block-pool.ts";
import { KvCacheManager } from "../../engine/kv-cache/kv-cache-manager.ts";
import type { EngineOutput, EngineRequest, SamplingParams } from "../../engine/common/request.ts";
import { GREEDY } from "../../engine/common/request.ts";
import type { KvCacheInfo, StepOptions, StepRunner, StepSequence } from "../../engine/runner/step-runner.ts";
import { sequenceRowsFromFull, type SequenceRows } from "../../engine/runner/step-rows.ts";
import { Sequence } from "../../engine/core/sequence.ts";

export const BLOCK_SIZE = 4;
export const VOCAB = 32;
/** Never produced by the default next-token rules, so only an explicit stop can end on it. */
export const EOS = 31;

/** A greedy next token as a function of the whole context so far (prompt + outputs). */
export type NextToken = (context: readonly number[]) => number;

/** The brief's rule: a function of the last token and its position only. */
export const byLastTokenAndPosition: NextToken = (context) => (context[context.length - 1] * 5 + (context.length - 1) * 3 + 1) % (VOCAB - 1);

/** Depends on every token of the context, so stale or foreign KV changes the result. */
export const byWholeContext: NextToken = (context) => {
  let hash = 17;
  context.forEach((token, position) => (hash = (hash * 31 + token * 7 + position) % 1_000_003));
  return hash % (VOCAB - 1);
};

/** What greedy decoding gives for `prompt`, `maxTokens` tokens long (no stop tokens). */
export function expectedGreedy(prompt: readonly number[], maxTokens: number, next: NextToken = byLastTokenAndPosition): number[] {
  const context = [...prompt];
  const out: number[] = [];
  while (out.length < maxTokens) {
    const token = next(context);
    context.push(token);
    out.push(token);
  }
  return out;
}

/** One row of logits whose argmax is `target`, with distinct, deterministic values elsewhere. */
export function logitsPeakingAt(target: number, vocab = VOCAB): Float32Array {
  const row = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) row[i] = ((i * 13 + target * 7) % vocab) / vocab - 2;
  row[target] = 5;
  return row;
}

/** The fake's hidden-state row for the token at `position` after `context`: distinct, deterministic, not normalized. */
export function fakeHiddenRow(context: readonly number[], position: number): number[] {
  return [context[position] + 1, position + 1, context.slice(0, position + 1).reduce((a, b) => a + b, 0) % 7, 1];
}

export class FakeRunner implements StepRunner {
  readonly vocabSize = VOCAB;
  readonly hiddenSize = 4;
  /** A pretend pool: the engine core sizes its block pool from its own options. */
  readonly kvCache: KvCacheInfo = { numBlocks: 1024, blockSize: BLOCK_SIZE, numTokens: 1023 * BLOCK_SIZE, numBytes: 0, dtype: "float32" };
  /** Every execute() call, deep-copied at call time. */
  readonly calls: StepSequence[][] = [];
  private readonly slots = new Map<number, number>();

  constructor(private readonly next: NextToken = byLastTokenAndPosition, private readonly blockSize = BLOCK_SIZE) {}

  async step(seqs: readonly StepSequence[], options: StepOptions): Promise<SequenceRows[]> {
    this.calls.push(seqs.map((s) => ({ ...s, tokenIds: [...s.tokenIds], blockTable: [...s.blockTable] })));
    return seqs.map((s) => {
      const { logits, hidden } = this.run(s);
      const rows = sequenceRowsFromFull(logits, this.vocabSize, s.invTemperature ?? 1);
      return { ...rows, full: options.fullLogits ? rows.full : null, probs: options.probs ? rows.probs : null, hidden: options.hidden ? hidden : null };
    });
  }

  async release(): Promise<void> {}

  /** The StepSequences of every call, flattened, in order. */
  get allSteps(): StepSequence[] {
    return this.calls.flat();
  }

  private run(s: StepSequence): { logits: Float32Array; hidden: Float32Array } {
    if (s.blockTable.includes(NULL_BLOCK_ID)) throw new Error(`block table ${s.blockTable} holds the null block`);
    const end = s.numPastTokens + s.tokenIds.length;
    if (s.blockTable.length * this.blockSize < end) throw new Error(`block table ${s.blockTable} can't hold ${end} tokens`);
    const context: number[] = [];
    for (let p = 0; p < s.numPastTokens; p++) {
      const token = this.slots.get(this.slotOf(s.blockTable, p));
      if (token === undefined) throw new Error(`position ${p} read from slot ${this.slotOf(s.blockTable, p)}, never written`);
      context.push(token);
    }
    s.tokenIds.forEach((token, i) => {
      this.slots.set(this.slotOf(s.blockTable, s.numPastTokens + i), token);
      context.push(token);
    });
    // Row r is the logits after the step's token logitsFrom + r, as the graph returns them.
    const out = new Float32Array((s.tokenIds.length - s.logitsFrom) * this.vocabSize);
    for (let i = s.logitsFrom; i < s.tokenIds.length; i++) {
      out.set(logitsPeakingAt(this.next(context.slice(0, s.numPastTokens + i + 1))), (i - s.logitsFrom) * this.vocabSize);
    }
    const hiddenFrom = s.hiddenFrom ?? s.tokenIds.length;
    const hidden = new Float32Array(Math.max(0, s.tokenIds.length - hiddenFrom) * this.hiddenSize);
    for (let i = hiddenFrom; i < s.tokenIds.length; i++) hidden.set(fakeHiddenRow(context, s.numPastTokens + i), (i - hiddenFrom) * this.hiddenSize);
    return { logits: out, hidden };
  }

  private slotOf(blockTable: readonly number[], position: number): number {
    return blockTable[Math.floor(position / this.blockSize)] * this.blockSize + (position % this.blockSize);
  }
}

export function makeSampling(overrides: Partial<SamplingParams> = {}): SamplingParams {
  return { ...GREEDY, ...overrides };
}

let numRequests = 0;

export function makeRequest(overrides: Partial<EngineRequest> = {}): EngineRequest {
  return {
    requestId: `req-${numRequests++}`,
    promptTokenIds: [1, 2, 3],
    maxTokens: 4,
    sampling: makeSampling(),
    ...overrides,
  };
}

let numSequences = 0;

export interface SequenceSpec {
  requestId?: string;
  prompt?: readonly number[];
  maxTokens?: number;
  sampling?: Partial<SamplingParams>;
  stopTokenIds?: readonly number[];
}

export function makeSequence(spec: SequenceSpec = {}): Sequence {
  const order = numSequences++;
  return new Sequence(
    spec.requestId ?? `seq-${order}`, 0, spec.prompt ?? [1, 2, 3], spec.maxTokens ?? 4,
    makeSampling(spec.sampling), new Set(spec.stopTokenIds ?? []),
  );
}

/** `n` distinct tokens starting at `from` (mod the vocabulary, skipping EOS). */
export function tokens(n: number, from = 0): number[] {
  return Array.from({ length: n }, (_, i) => (from + i) % (VOCAB - 1));
}

export function makeKv(numBlocks: number, blockSize = BLOCK_SIZE, enablePrefixCaching = true): { pool: BlockPool; kv: KvCacheManager } {
  const pool = new BlockPool(numBlocks);
  return { pool, kv: new KvCacheManager(pool, blockSize, enablePrefixCaching) };
}

export const CORE_DEFAULTS: EngineCoreOptions = {
  blockSize: BLOCK_SIZE,
  numBlocks: 64,
  maxNumSeqs: 8,
  maxNumBatchedTokens: 16,
  maxModelLen: 64,
  eosTokenIds: [EOS],
};

export function makeCore(options: Partial<EngineCoreOptions> = {}, runner = new FakeRunner()): { core: EngineCore; runner: FakeRunner } {
  return { core: new EngineCore(runner, { ...CORE_DEFAULTS, ...options }), runner };
}

/** Steps until the core has no work, checking integrity after every step. */
export async function drain(core: EngineCore, maxSteps = 1000): Promise<EngineOutput[]> {
  const outputs: EngineOutput[] = [];
  for (let step = 0; core.hasWork; step++) {
    if (step >= maxSteps) throw new Error(`still busy after ${maxSteps} steps`);
    outputs.push(...(await core.step()));
    core.checkIntegrity();
  }
  return outputs;
}

/** Each request's (and each of its sequences') tokens and finish reason, from a list of outputs. */
export function collect(outputs: readonly EngineOutput[]): Map<string, { tokenIds: number[]; finishReason?: string }> {
  const byKey = new Map<string, { tokenIds: number[]; finishReason?: string }>();
  for (const output of outputs) {
    const key = `${output.requestId}#${output.index}`;
    const entry = byKey.get(key) ?? { tokenIds: [] };
    entry.tokenIds.push(...output.newTokenIds);
    if (output.finishReason) {
      if (entry.finishReason) throw new Error(`${key} finished twice`);
      entry.finishReason = output.finishReason;
    }
    byKey.set(key, entry);
  }
  return byKey;
}

/**
 * What EngineCore.update does after the runner, minus sampling: advance each scheduled
 * sequence, cache its full blocks, and give it a token once it has caught up. Sequences
 * that reach maxTokens are finished. Returns the sequences that got a token.
 */
export function completeStep(
  scheduler: { finish(seq: Sequence): void },
  kv: KvCacheManager,
  scheduled: readonly { seq: Sequence; numNewTokens: number }[],
  next: NextToken = byLastTokenAndPosition,
): Sequence[] {
  const sampled: Sequence[] = [];
  for (const { seq, numNewTokens } of scheduled) {
    seq.numComputedTokens += numNewTokens;
    kv.cacheFullBlocks(seq);
    if (seq.numComputedTokens < seq.numTokens) continue;
    seq.appendToken(next(seq.tokensIn(0, seq.numTokens)));
    sampled.push(seq);
    if (seq.outputTokenIds.length >= seq.maxTokens) scheduler.finish(seq);
  }
  return sampled;
}
