/**
 * The ONNX graph against the independent TypeScript forward pass, per family, to 1e-4:
 * a whole-sequence prefill, and a short prefill followed by decode steps through the pool.
 */
import { afterAll, describe, expect, it } from "vitest";
import type { OnnxRunner } from "../../engine/runner/onnx-host/onnx-runner.ts";
import { FAMILY_MODELS, tinyCheckpoint } from "../helpers/tiny-models.ts";
import { fullLogits, loadRunner, maxAbsDiff, referenceFor, rows, seededTokens } from "../helpers/runner.ts";

const TOLERANCE = 1e-4;

describe.each(FAMILY_MODELS)("$name", (spec) => {
  const dir = tinyCheckpoint(spec);
  const vocab = spec.config.vocab_size as number;
  const tokens = seededTokens(13, vocab, 11);
  const expected = referenceFor(dir, tokens);
  let runner: OnnxRunner;
  afterAll(async () => runner?.release());

  it("prefill logits at every position match the reference", async () => {
    runner = await loadRunner(dir);
    const [logits] = await fullLogits(runner, [{ tokenIds: tokens, numPastTokens: 0, blockTable: [1, 2, 3, 4], logitsFrom: 0 }]);
    const got = rows(logits, vocab);
    expect(got).toHaveLength(tokens.length);
    got.forEach((row, i) => expect(maxAbsDiff(row, expected[i]), `position ${i}`).toBeLessThan(TOLERANCE));
    // The comparison means something only if logits differ between positions.
    expect(maxAbsDiff(expected[0], expected[12])).toBeGreaterThan(0.05);
  });

  it("a prefill of 6 then decode steps through the pool match the reference", async () => {
    const blockTable = [9, 3, 7, 5];
    const [first] = await fullLogits(runner, [{ tokenIds: tokens.slice(0, 6), numPastTokens: 0, blockTable, logitsFrom: 5 }]);
    expect(maxAbsDiff(first, expected[5])).toBeLessThan(TOLERANCE);
    for (let p = 6; p < tokens.length; p++) {
      const [step] = await fullLogits(runner, [{ tokenIds: [tokens[p]], numPastTokens: p, blockTable, logitsFrom: 0 }]);
      expect(maxAbsDiff(step, expected[p]), `position ${p}`).toBeLessThan(TOLERANCE);
    }
  });
});
