/**
 * KV cache dtypes (--kv-cache-dtype) against the float32 pool on the default model: 200
 * teacher-forced positions, the first 120 as one chunk and the last 80 as a second chunk that
 * reads the first's K/V back from the pool, so both the step's own rounded K/V and the pool's
 * stored ones are exercised. Measured: float16 mean |Δ logprob| 1.6e-4 (max 5.9e-4, top-1
 * 100%), int8 3.3e-3 (max 1.1e-2, 98%). The bounds sit well inside what a broken pool
 * measures: an int8 pool whose stored key scales are off by 25% gave 2.1e-2 (max 0.18, 87.5%),
 * one whose value scales are, 2.3e-2 (max 0.16, 88%); the test measures both again.
 */
import { afterAll, describe, expect, it } from "vitest";
import type { OnnxRunner } from "../../engine/runner/onnx-host/onnx-runner.ts";
import type { KvCacheDtype } from "../../models/graph/kv-dtype.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { fullLogits, loadRunner, seededTokens } from "../helpers/runner.ts";

const VOCAB = 151936;
const FIRST = 120;
const tokens = seededTokens(200, 151643, 11);
const blockTable = Array.from({ length: 13 }, (_, i) => i + 1);

function logSoftmaxAt(row: Float32Array, i: number): number {
  let max = -Infinity;
  for (const v of row) if (v > max) max = v;
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  return row[i] - max - Math.log(sum);
}

function argmax(row: Float32Array): number {
  let top = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[top]) top = i;
  return top;
}

interface Accuracy {
  /** Mean and max |Δ logprob| of the float32 pool's top token. */
  mean: number;
  max: number;
  /** Positions whose top token is the float32 pool's. */
  agreement: number;
}

function compare(ref: Float32Array[], got: Float32Array[]): Accuracy {
  let sum = 0;
  let max = 0;
  let agree = 0;
  for (let p = 0; p < ref.length; p++) {
    const top = argmax(ref[p]);
    const delta = Math.abs(logSoftmaxAt(ref[p], top) - logSoftmaxAt(got[p], top));
    sum += delta;
    max = Math.max(max, delta);
    if (argmax(got[p]) === top) agree++;
  }
  return { mean: sum / ref.length, max, agreement: agree / ref.length };
}

describe("KV cache dtypes against the float32 pool on the default model", () => {
  const dir = ensureDefaultModel();
  const runners: OnnxRunner[] = [];
  afterAll(async () => Promise.all(runners.map((r) => r.release())));

  /** Logits at every position, the second chunk reading the first from the pool; `tamper` runs between the chunks. */
  const logitsOf = async (kvCacheDtype: KvCacheDtype, tamper?: (runner: OnnxRunner) => void) => {
    const runner = await loadRunner(dir, 16, 16, undefined, { kvCacheDtype });
    runners.push(runner);
    const [first] = await fullLogits(runner, [{ tokenIds: tokens.slice(0, FIRST), numPastTokens: 0, blockTable, logitsFrom: 0 }]);
    tamper?.(runner);
    const [second] = await fullLogits(runner, [{ tokenIds: tokens.slice(FIRST), numPastTokens: FIRST, blockTable, logitsFrom: 0 }]);
    const rows = (flat: Float32Array) => Array.from({ length: flat.length / VOCAB }, (_, i) => flat.subarray(i * VOCAB, (i + 1) * VOCAB));
    return [...rows(first), ...rows(second)];
  };
  const scaleAll = (scales: Float32Array[], by: number) => scales.forEach((layer) => layer.forEach((s, i) => (layer[i] = s * by)));

  it("float16 and int8 stay within their bounds, and an int8 pool with wrong scales does not", async () => {
    const ref = await logitsOf("float32");
    const half = compare(ref, await logitsOf("float16"));
    const int8 = compare(ref, await logitsOf("int8"));
    const wrongKeys = compare(ref, await logitsOf("int8", (r) => scaleAll(r.buffers.keyScales, 1.25)));
    const wrongValues = compare(ref, await logitsOf("int8", (r) => scaleAll(r.buffers.valueScales, 1.25)));
    const text = (r: Accuracy) => `mean ${r.mean.toExponential(2)}, max ${r.max.toExponential(2)}, top-1 ${(100 * r.agreement).toFixed(1)}%`;
    console.info(`KV cache accuracy against float32: float16 ${text(half)}; int8 ${text(int8)}; int8, key scales x1.25: ${text(wrongKeys)}; value scales x1.25: ${text(wrongValues)}`);
    expect(half.mean).toBeLessThanOrEqual(5e-4);
    expect(half.max).toBeLessThanOrEqual(2e-3);
    expect(half.agreement).toBeGreaterThanOrEqual(0.99);
    expect(int8.mean).toBeLessThanOrEqual(8e-3);
    expect(int8.max).toBeLessThanOrEqual(4e-2);
    expect(int8.agreement).toBeGreaterThanOrEqual(0.95);
    for (const wrong of [wrongKeys, wrongValues]) {
      expect(wrong.mean).toBeGreaterThan(8e-3);
      expect(wrong.max).toBeGreaterThan(4e-2);
    }
    // int8 is coarser than float16, or the comparison means nothing.
    expect(int8.mean).toBeGreaterThan(half.mean);
  }, 120_000);
});
