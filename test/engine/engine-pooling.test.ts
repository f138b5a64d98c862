/**
 * Embedding requests in EngineCore, driven with the fake runner: prefill-only sequences whose
 * final hidden states are pooled (last token or mean) and L2-normalized, through the same
 * scheduler as generation: chunked, batched, preempted and aborted, with exact usage.
 */
import { describe, expect, it } from "vitest";
import { EngineError } from "../../engine/common/engine-error.ts";
import type { EngineOutput, Pooling } from "../../engine/common/request.ts";
import { FakeRunner, byWholeContext, drain, fakeHiddenRow, makeCore, makeRequest, tokens } from "../helpers/core-fakes.ts";

/** What the engine should return: the fake's rows for the prompt, pooled and normalized in float64. */
function expectedEmbedding(prompt: readonly number[], pooling: Pooling): number[] {
  const rows = prompt.map((_, p) => fakeHiddenRow(prompt, p));
  const pooled = pooling === "last" ? rows.at(-1)! : rows[0].map((_, i) => rows.reduce((sum, row) => sum + row[i], 0) / rows.length);
  const norm = Math.hypot(...pooled);
  return pooled.map((x) => x / norm);
}

function embeddingOf(outputs: readonly EngineOutput[], requestId: string): number[] {
  const mine = outputs.filter((o) => o.requestId === requestId);
  expect(mine).toHaveLength(1);
  expect(mine[0].embedding).toBeInstanceOf(Float32Array);
  return [...mine[0].embedding!];
}

function expectClose(actual: readonly number[], expected: readonly number[]): void {
  expect(actual).toHaveLength(expected.length);
  actual.forEach((x, i) => expect(x).toBeCloseTo(expected[i], 6));
}

describe("EngineCore: embedding requests", () => {
  for (const pooling of ["last", "mean"] as const) {
    it(`pools a chunked prompt's hidden states (${pooling}), normalized, in one output with exact usage and no tokens`, async () => {
      const { core, runner } = makeCore({ maxNumBatchedTokens: 16 });
      const prompt = tokens(40, 3);
      core.add(makeRequest({ requestId: "e", promptTokenIds: prompt, pooling }));
      const outputs = await drain(core);
      expect(outputs).toEqual([{
        requestId: "e", index: 0, newTokenIds: [], text: "", finishReason: "stop", numCachedTokens: 0, numPromptTokens: 40,
        embedding: expect.any(Float32Array), usage: { numPromptTokens: 40, numCachedPromptTokens: 0, numCompletionTokens: 0 },
      }]);
      expectClose(embeddingOf(outputs, "e"), expectedEmbedding(prompt, pooling));
      // Three chunks, none asking for logits rows; last pooling asks for one hidden row only.
      expect(runner.allSteps.map((s) => [s.tokenIds.length, s.logitsFrom])).toEqual([[16, 16], [16, 16], [8, 8]]);
      expect(runner.allSteps.map((s) => s.hiddenFrom)).toEqual(pooling === "mean" ? [0, 0, 0] : [16, 16, 7]);
      core.checkIntegrity();
      expect(core.kv.pool.numFreeBlocks).toBe(core.kv.pool.numUsableBlocks);
    });
  }

  it("computes every token even when the prefix cache holds the prompt, so usage has no cached input", async () => {
    const { core, runner } = makeCore();
    const prompt = tokens(20, 5);
    core.add(makeRequest({ requestId: "g", promptTokenIds: prompt, maxTokens: 2 }));
    await drain(core);
    runner.calls.length = 0;
    core.add(makeRequest({ requestId: "e", promptTokenIds: prompt, pooling: "last" }));
    const outputs = await drain(core);
    expect(outputs[0].usage).toEqual({ numPromptTokens: 20, numCachedPromptTokens: 0, numCompletionTokens: 0 });
    expect(runner.allSteps.reduce((sum, s) => sum + s.tokenIds.length, 0)).toBe(20);
  });

  it("gives each embedding the same vector batched with generation and preempted as alone", async () => {
    const prompts = [tokens(9), tokens(14, 11), [3], tokens(25, 2)];
    const alone = new Map<string, number[]>();
    for (const [i, prompt] of prompts.entries()) {
      const { core } = makeCore({}, new FakeRunner(byWholeContext));
      core.add(makeRequest({ requestId: `e${i}`, promptTokenIds: prompt, pooling: i % 2 ? "mean" : "last" }));
      alone.set(`e${i}`, embeddingOf(await drain(core), `e${i}`));
    }
    const { core, runner } = makeCore({ numBlocks: 8, maxNumBatchedTokens: 6, maxNumSeqs: 4, maxModelLen: 28 }, new FakeRunner(byWholeContext));
    core.add(makeRequest({ requestId: "g1", promptTokenIds: tokens(10, 7), maxTokens: 12 }));
    prompts.forEach((prompt, i) => core.add(makeRequest({ requestId: `e${i}`, promptTokenIds: prompt, pooling: i % 2 ? "mean" : "last" })));
    core.add(makeRequest({ requestId: "g2", promptTokenIds: tokens(6, 1), maxTokens: 10 }));
    const outputs = await drain(core);
    expect(core.stats.numPreemptions).toBeGreaterThan(0);
    expect(runner.calls.some((call) => call.length > 1)).toBe(true);
    for (const [id, vector] of alone) expect(embeddingOf(outputs, id)).toEqual(vector);
    expect(outputs.filter((o) => o.requestId.startsWith("g") && o.finishReason).map((o) => o.finishReason)).toEqual(["length", "length"]);
    expect(core.kv.pool.numFreeBlocks).toBe(core.kv.pool.numUsableBlocks);
  });

  it("takes a prompt that fills the context, refuses one beyond it, and aborts like any request", async () => {
    const { core } = makeCore({ maxModelLen: 32 });
    core.add(makeRequest({ requestId: "full", promptTokenIds: tokens(32), pooling: "mean" }));
    let error: unknown;
    try {
      core.add(makeRequest({ requestId: "over", promptTokenIds: tokens(33), pooling: "mean" }));
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(EngineError);
    expect((error as EngineError).code).toBe("PROMPT_TOO_LONG");
    expect((error as EngineError).message).toContain("maximum context length is 32 tokens, but the input has 33");
    core.add(makeRequest({ requestId: "gone", promptTokenIds: tokens(30), pooling: "last" }));
    await core.step();
    core.abort("gone");
    const outputs = await drain(core);
    expect(outputs.find((o) => o.requestId === "gone")).toMatchObject({ finishReason: "abort", usage: { numPromptTokens: 30, numCompletionTokens: 0 } });
    expect(outputs.find((o) => o.requestId === "full")?.embedding).toHaveLength(4);
    expect(core.kv.pool.numFreeBlocks).toBe(core.kv.pool.numUsableBlocks);
  });
});
