/**
 * Embeddings against the independent TypeScript forward pass, to 1e-4: the graph's hidden
 * output per family (a whole prefill, and chunks through the pool), and EngineCore's pooled,
 * normalized vectors (last and mean) on a real runner, batched and chunked with generation.
 */
import { afterAll, describe, expect, it } from "vitest";
import { EngineCore } from "../../engine/core/engine-core.ts";
import { GREEDY, type EngineOutput, type EngineRequest } from "../../engine/common/request.ts";
import type { OnnxRunner } from "../../engine/runner/onnx-host/onnx-runner.ts";
import { referenceEmbedding } from "../reference/forward.ts";
import { loadRunner, maxAbsDiff, referenceHiddenFor, rows, seededTokens } from "../helpers/runner.ts";
import { FAMILY_MODELS, tinyCheckpoint } from "../helpers/tiny-models.ts";

const TOLERANCE = 1e-4;

describe.each(FAMILY_MODELS)("the graph's hidden states: $name", (spec) => {
  const dir = tinyCheckpoint(spec);
  const hiddenSize = spec.config.hidden_size as number;
  const tokens = seededTokens(13, spec.config.vocab_size as number, 21);
  const expected = referenceHiddenFor(dir, tokens);
  let runner: OnnxRunner;
  afterAll(async () => runner?.release());

  it("at every position of a prefill, and of a prefill in two chunks through the pool, match the reference", async () => {
    runner = await loadRunner(dir);
    expect(runner.hiddenSize).toBe(hiddenSize);
    const [whole] = await runner.step([{ tokenIds: tokens, numPastTokens: 0, blockTable: [1, 2, 3, 4], logitsFrom: 13, hiddenFrom: 0 }], { fullLogits: false, hidden: true });
    const got = rows(whole.hidden!, hiddenSize);
    expect(got).toHaveLength(13);
    got.forEach((row, i) => expect(maxAbsDiff(row, expected[i]), `position ${i}`).toBeLessThan(TOLERANCE));
    expect(maxAbsDiff(expected[0], expected[12])).toBeGreaterThan(0.05);

    const blockTable = [9, 3, 7, 5];
    const [first] = await runner.step([{ tokenIds: tokens.slice(0, 6), numPastTokens: 0, blockTable, logitsFrom: 6, hiddenFrom: 5 }], { fullLogits: false, hidden: true });
    expect(maxAbsDiff(first.hidden!, expected[5])).toBeLessThan(TOLERANCE);
    const [rest] = await runner.step([{ tokenIds: tokens.slice(6), numPastTokens: 6, blockTable, logitsFrom: 6, hiddenFrom: 2 }], { fullLogits: false, hidden: true });
    rows(rest.hidden!, hiddenSize).forEach((row, i) => expect(maxAbsDiff(row, expected[8 + i]), `position ${8 + i}`).toBeLessThan(TOLERANCE));
  });
});

describe("EngineCore's embeddings on a real runner", () => {
  const spec = FAMILY_MODELS.find((s) => s.name === "qwen3-qknorm")!;
  const dir = tinyCheckpoint(spec);
  const vocab = spec.config.vocab_size as number;
  let runner: OnnxRunner;
  afterAll(async () => runner?.release());

  it("equal the reference's pooled hidden state (last and mean) to 1e-4, batched and chunked with generation", async () => {
    runner = await loadRunner(dir, 4, 64);
    const core = new EngineCore(runner, { blockSize: 4, numBlocks: 64, maxNumSeqs: 8, maxNumBatchedTokens: 16, maxModelLen: 64, eosTokenIds: [] });
    const prompts = [seededTokens(30, vocab, 1), seededTokens(7, vocab, 2), seededTokens(1, vocab, 3), seededTokens(19, vocab, 4)];
    const requests: EngineRequest[] = [
      { requestId: "gen", promptTokenIds: seededTokens(12, vocab, 5), maxTokens: 8, sampling: GREEDY },
      ...prompts.flatMap((prompt, i) => (["last", "mean"] as const).map((pooling) => ({ requestId: `${pooling}-${i}`, promptTokenIds: prompt, sampling: GREEDY, pooling }))),
    ];
    for (const request of requests) core.add(request);
    const outputs: EngineOutput[] = [];
    while (core.hasWork) outputs.push(...(await core.step()));
    let worst = 0;
    for (const [i, prompt] of prompts.entries()) {
      const hidden = referenceHiddenFor(dir, prompt);
      for (const pooling of ["last", "mean"] as const) {
        const output = outputs.find((o) => o.requestId === `${pooling}-${i}`)!;
        expect(output.usage).toEqual({ numPromptTokens: prompt.length, numCachedPromptTokens: 0, numCompletionTokens: 0 });
        worst = Math.max(worst, maxAbsDiff(output.embedding!, referenceEmbedding(hidden, pooling)));
      }
    }
    console.log(`embeddings vs reference: max |Δ| ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(TOLERANCE);
    // Last and mean pooling differ, so the comparison tells them apart.
    const [last, mean] = ["last-0", "mean-0"].map((id) => outputs.find((o) => o.requestId === id)!.embedding!);
    expect(maxAbsDiff(last, mean)).toBeGreaterThan(0.05);
    expect(outputs.filter((o) => o.requestId === "gen").flatMap((o) => o.newTokenIds)).toHaveLength(8);
  });
});
