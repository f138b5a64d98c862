/**
 * The host runner's step layout, as data: which blocks a step reads once for every sequence,
 * and how a step's sequences are split by past length.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { KvBuffers } from "../../engine/runner/onnx-host/kv-buffers.ts";
import { layoutStep, splitByPast } from "../../engine/runner/onnx-host/step-layout.ts";
import type { StepSequence } from "../../engine/runner/step-runner.ts";

const pool = new KvBuffers({ numLayers: 1, numKvHeads: 1, headDim: 2, blockSize: 4, numBlocks: 64 });
const decode = (numPastTokens: number, blockTable: number[]): StepSequence => ({ tokenIds: [1], numPastTokens, blockTable, logitsFrom: 0 });

describe("the shared past", () => {
  it("is the whole blocks every sequence holds at the same positions, and only those", () => {
    // Blocks 7 and 8 are shared; the third block differs; 10 past tokens is 2 whole blocks and a part.
    const layout = layoutStep([decode(10, [7, 8, 9]), decode(13, [7, 8, 20, 21])], pool);
    expect(Array.from(layout.sharedSlots, Number)).toEqual([28, 29, 30, 31, 32, 33, 34, 35]);
    expect(layout.past).toBe(13);
    // Each row's own past: positions 8.. (the first padded with the null slot past its end).
    expect(Array.from(layout.pastSlots, Number)).toEqual([36, 37, 0, 0, 0, 80, 81, 82, 83, 84]);
    // A sliding window, one sequence, or sharing turned off: nothing is read as shared.
    expect(layoutStep([decode(10, [7, 8, 9]), decode(13, [7, 8, 20, 21])], pool, 4).sharedSlots).toHaveLength(0);
    expect(layoutStep([decode(10, [7, 8, 9])], pool).sharedSlots).toHaveLength(0);
    expect(layoutStep([decode(10, [7, 8, 9]), decode(13, [7, 8, 20, 21])], pool, null, false).sharedSlots).toHaveLength(0);
    // A part-filled shared block is not shared: its remaining slots are the sequences' own.
    expect(layoutStep([decode(6, [7, 8]), decode(6, [7, 8])], pool).sharedSlots).toHaveLength(4);
  });
});

describe("splitting a step by past length", () => {
  const seqs = (pasts: number[]) => pasts.map((p, i) => decode(p, [i + 1]));

  it("keeps one run where another costs more than the padding it saves, and splits where it does not", () => {
    const pasts = [500, 10, 490, 20];
    // Two runs: 2·20 + 2·500 = 1040 row·tokens + 2 runs, against 4·500 = 2000 + 1 run.
    expect(splitByPast(seqs(pasts), [0, 1, 2, 3], 100)).toEqual([[1, 3], [2, 0]]);
    expect(splitByPast(seqs(pasts), [0, 1, 2, 3], 2000)).toEqual([[1, 3, 2, 0]]);
    expect(splitByPast(seqs(pasts), [0, 1, 2, 3], Infinity)).toEqual([[1, 3, 2, 0]]);
  });

  it("returns every sequence once, in runs of rising past, at the least total cost of any cut (property)", () => {
    const cost = (runs: number[][], pasts: number[], runCost: number) => runs.reduce((sum, run) => sum + runCost + run.length * Math.max(...run.map((i) => pasts[i])), 0);
    fc.assert(fc.property(fc.array(fc.integer({ min: 0, max: 400 }), { minLength: 1, maxLength: 9 }), fc.integer({ min: 0, max: 1000 }), (pasts, runCost) => {
      const runs = splitByPast(seqs(pasts), pasts.map((_, i) => i), runCost);
      expect(runs.flat().sort((a, b) => a - b)).toEqual(pasts.map((_, i) => i));
      const flat = runs.flat().map((i) => pasts[i]);
      expect(flat).toEqual([...flat].sort((a, b) => a - b));
      // Against every way of cutting the sorted rows into runs.
      const sorted = runs.flat();
      let best = Infinity;
      for (let mask = 0; mask < 1 << (sorted.length - 1); mask++) {
        const cut: number[][] = [[sorted[0]]];
        for (let i = 1; i < sorted.length; i++) {
          if (mask & (1 << (i - 1))) cut.push([sorted[i]]);
          else cut.at(-1)!.push(sorted[i]);
        }
        best = Math.min(best, cost(cut, pasts, runCost));
      }
      expect(cost(runs, pasts, runCost)).toBe(best);
    }), { numRuns: 200, seed: 3 });
  });
});
