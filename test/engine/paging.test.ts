/**
 * Paging is invisible to the results: chunking, batching, padding and where the blocks
 * sit in the pool never change the logits.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { OnnxRunner } from "../../engine/runner/onnx-host/onnx-runner.ts";
import type { StepSequence } from "../../engine/runner/step-runner.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { KV_CACHE_DTYPES } from "../../models/graph/kv-dtype.ts";
import { FAMILY_MODELS, tinyCheckpoint } from "../helpers/tiny-models.ts";
import { fullLogits, loadRunner, maxAbsDiff, seededTokens } from "../helpers/runner.ts";

const EXACT = 1e-5;
const qwen3 = FAMILY_MODELS.find((m) => m.name === "qwen3-qknorm")!;
const VOCAB = qwen3.config.vocab_size as number;

describe("paging on the default model", () => {
  let runner: OnnxRunner;
  beforeAll(async () => (runner = await loadRunner(ensureDefaultModel(), 16, 32)));
  afterAll(async () => runner.release());

  it("a prefill of N then one decode step equals a prefill of N+1", async () => {
    const tokens = [9707, 11, 1879, 0, 13, 358, 1079, 264, 1273, 151645, 198, 40, 1079, 1588, 13, 30, 77, 88];
    const [whole] = await fullLogits(runner, [{ tokenIds: tokens, numPastTokens: 0, blockTable: [1, 2], logitsFrom: tokens.length - 1 }]);
    const n = tokens.length - 1;
    await fullLogits(runner, [{ tokenIds: tokens.slice(0, n), numPastTokens: 0, blockTable: [3, 4], logitsFrom: n - 1 }]);
    const [decode] = await fullLogits(runner, [{ tokenIds: tokens.slice(n), numPastTokens: n, blockTable: [3, 4], logitsFrom: 0 }]);
    expect(maxAbsDiff(whole, decode)).toBeLessThan(EXACT);
  });
});

/**
 * Every KV cache dtype stores a token's K/V once and its attention reads back those values, in
 * the step that computes them as in later ones. The rounded pools are looser than EXACT: a
 * batched GEMM's last-bit differences can move a value across a rounding step, which the pool
 * then keeps (float16: 2^-11 of the value, measured up to 1.1e-5 in logits here; int8: 1/127 of
 * the row's largest value, measured up to 1.7e-3).
 */
const PAGING_TOLERANCE = { float32: EXACT, float16: 1e-4, int8: 1e-2 } as const;

describe.each(KV_CACHE_DTYPES)("paging on a tiny Qwen3, %s KV cache", (kvCacheDtype) => {
  let runner: OnnxRunner;
  let padded: OnnxRunner;
  beforeAll(async () => {
    const dir = tinyCheckpoint(qwen3);
    runner = await loadRunner(dir, 4, 128, undefined, { kvCacheDtype });
    padded = await loadRunner(dir, 4, 128, Infinity, { kvCacheDtype });
  });
  afterAll(async () => Promise.all([runner.release(), padded.release()]));

  it("blocks scattered through the pool give the same logits as contiguous ones", async () => {
    const tokens = seededTokens(15, VOCAB, 3);
    const [contiguous] = await fullLogits(runner, [{ tokenIds: tokens, numPastTokens: 0, blockTable: [1, 2, 3, 4], logitsFrom: 0 }]);
    await fullLogits(runner, [{ tokenIds: tokens.slice(0, 9), numPastTokens: 0, blockTable: [97, 12, 60, 5], logitsFrom: 9 }]);
    const [scattered] = await fullLogits(runner, [{ tokenIds: tokens.slice(9), numPastTokens: 9, blockTable: [97, 12, 60, 5], logitsFrom: 0 }]);
    expect(maxAbsDiff(contiguous.subarray(9 * VOCAB), scattered)).toBeLessThan(EXACT);
  });

  it("sequences sharing their first blocks (read once for the whole step) equal each run alone (property)", async () => {
    const shape = fc.record({ numOwnPast: fc.integer({ min: 0, max: 6 }), numNew: fc.integer({ min: 1, max: 5 }), seed: fc.nat() });
    await fc.assert(fc.asyncProperty(fc.integer({ min: 1, max: 3 }), fc.array(shape, { minLength: 2, maxLength: 5 }), fc.nat(), fc.boolean(), async (numShared, shapes, seed, usePadding) => {
      const batchRunner = usePadding ? padded : runner;
      // The shared prefix fills blocks 100.. (4 tokens each); sequence i owns blocks 1 + 5i .. 5 + 5i after it.
      const prefix = seededTokens(4 * numShared, VOCAB, seed);
      const sharedBlocks = [100, 101, 102].slice(0, numShared);
      for (const r of new Set([runner, batchRunner])) await fullLogits(r, [{ tokenIds: prefix, numPastTokens: 0, blockTable: sharedBlocks, logitsFrom: prefix.length }]);
      const seqs: StepSequence[] = [];
      for (const [i, s] of shapes.entries()) {
        const blockTable = [...sharedBlocks, ...[1, 2, 3, 4, 5].map((b) => b + 5 * i)];
        const own = seededTokens(s.numOwnPast + s.numNew, VOCAB, s.seed + 1);
        if (s.numOwnPast > 0) {
          for (const r of new Set([runner, batchRunner])) await fullLogits(r, [{ tokenIds: own.slice(0, s.numOwnPast), numPastTokens: prefix.length, blockTable, logitsFrom: s.numOwnPast }]);
        }
        seqs.push({ tokenIds: own.slice(s.numOwnPast), numPastTokens: prefix.length + s.numOwnPast, blockTable, logitsFrom: 0 });
      }
      const batched = await fullLogits(batchRunner, seqs);
      for (let i = 0; i < seqs.length; i++) {
        const [alone] = await fullLogits(runner, [seqs[i]]);
        expect(maxAbsDiff(batched[i], alone)).toBeLessThan(PAGING_TOLERANCE[kvCacheDtype]);
      }
    }), { numRuns: 15, seed: 7 });
  });

  it("a ragged batch equals the same sequences run one at a time (property)", async () => {
    const sequenceShape = fc.record({ numCached: fc.integer({ min: 0, max: 10 }), numNew: fc.integer({ min: 1, max: 7 }), seed: fc.nat() });
    await fc.assert(fc.asyncProperty(fc.array(sequenceShape, { minLength: 2, maxLength: 6 }), fc.boolean(), async (shapes, usePadding) => {
      const batchRunner = usePadding ? padded : runner;
      const seqs: StepSequence[] = shapes.map((s, i) => {
        const tokens = seededTokens(s.numCached + s.numNew, VOCAB, s.seed);
        // Each sequence owns blocks 1 + 5i .. 5 + 5i, listed backwards so that they are not contiguous.
        const blockTable = [5, 4, 3, 2, 1].map((b) => b + 5 * i);
        return { tokenIds: tokens.slice(s.numCached), numPastTokens: s.numCached, blockTable, logitsFrom: 0, prefix: tokens.slice(0, s.numCached) };
      });
      for (const s of seqs) {
        const prefix = (s as StepSequence & { prefix: number[] }).prefix;
        if (prefix.length === 0) continue;
        // Both runners have pools of their own, so each needs the prefix.
        for (const r of new Set([runner, batchRunner])) await fullLogits(r, [{ tokenIds: prefix, numPastTokens: 0, blockTable: s.blockTable, logitsFrom: prefix.length }]);
      }
      const batched = await fullLogits(batchRunner, seqs);
      for (let i = 0; i < seqs.length; i++) {
        const [alone] = await fullLogits(runner, [seqs[i]]);
        expect(maxAbsDiff(batched[i], alone)).toBeLessThan(PAGING_TOLERANCE[kvCacheDtype]);
      }
    }), { numRuns: 15, seed: 42 });
  });
});
