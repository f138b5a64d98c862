/** The graph's sampling outputs against JavaScript on the logits it returns: softmax(logits / T) and the top-20 log-softmax entries. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { OnnxRunner } from "../../engine/runner/onnx-host/onnx-runner.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { loadRunner, seededTokens } from "../helpers/runner.ts";

const VOCAB = 151936;

describe("sampling outputs of the default model's graph", () => {
  let runner: OnnxRunner;
  beforeAll(async () => (runner = await loadRunner(ensureDefaultModel(), 16, 64)));
  afterAll(async () => runner.release());

  it("returns softmax(logits / T) at each row's temperature, and nothing when not asked", async () => {
    const temperatures = [1, 0.3, 2];
    const seqs = temperatures.map((t, i) => ({
      tokenIds: seededTokens(5 + i, 151000, i + 1), numPastTokens: 0, blockTable: [1 + i], logitsFrom: 4 + i, invTemperature: 1 / t,
    }));
    const out = await runner.step(seqs, { fullLogits: true, probs: true });
    out.forEach((logits, i) => {
      const full = logits.full!;
      let max = -Infinity;
      for (const x of full) max = Math.max(max, x);
      let sum = 0;
      for (const x of full) sum += Math.exp((x - max) / temperatures[i]);
      for (const id of [0, 1000, logits.topIds[0], VOCAB - 1]) {
        expect(logits.probs![id]).toBeCloseTo(Math.exp((full[id] - max) / temperatures[i]) / sum, 7);
      }
    });
    const [without] = await runner.step(seqs.slice(0, 1), { fullLogits: false });
    expect(without.probs).toBeNull();
    expect(without.full).toBeNull();
  });

  it("returns the 20 largest log-softmax entries, in order", async () => {
    const [logits] = await runner.step([{ tokenIds: [9707, 11, 1879], numPastTokens: 0, blockTable: [1], logitsFrom: 2 }], { fullLogits: true });
    const full = logits.full!;
    let max = -Infinity;
    for (const x of full) max = Math.max(max, x);
    let sum = 0;
    for (const x of full) sum += Math.exp(x - max);
    const order = Array.from(full.keys()).sort((a, b) => full[b] - full[a] || a - b).slice(0, 20);
    expect([...logits.topIds]).toEqual(order);
    order.forEach((id, k) => expect(logits.topLogprobs[k]).toBeCloseTo(full[id] - max - Math.log(sum), 4));
  });
});
