/**
 * EngineCore driven step by step with a fake runner whose greedy outputs are known in
 * advance: outputs, finish reasons, aborts, n > 1, prefix hits, validation, and what
 * the runner is asked to compute.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { EngineError, StepFailure } from "../../engine/common/engine-error.ts";
import type { EngineOutput, EngineRequest } from "../../engine/common/request.ts";
import {
  BLOCK_SIZE, EOS, FakeRunner, byLastTokenAndPosition, byWholeContext, collect, drain, expectedGreedy, makeCore, makeRequest, makeSampling, tokens,
} from "../helpers/core-fakes.ts";

const freeAll = (core: ReturnType<typeof makeCore>["core"]) => {
  core.checkIntegrity();
  expect(core.kv.pool.numFreeBlocks).toBe(core.kv.pool.numUsableBlocks);
};

function expectRejected(fn: () => void, code: string, ...parts: string[]): void {
  let error: unknown;
  try {
    fn();
  } catch (err) {
    error = err;
  }
  expect(error).toBeInstanceOf(EngineError);
  expect((error as EngineError).code).toBe(code);
  for (const part of parts) expect((error as EngineError).message).toContain(part);
}

describe("EngineCore: outputs and finish reasons", () => {
  it("streams one token per step and ends with finish_reason length at max_tokens", async () => {
    const { core } = makeCore();
    const prompt = [1, 2, 3];
    const expected = expectedGreedy(prompt, 4);
    core.add(makeRequest({ requestId: "r", promptTokenIds: prompt, maxTokens: 4 }));
    expect(core.hasWork).toBe(true);
    expect(await core.step()).toEqual([{ requestId: "r", index: 0, newTokenIds: [expected[0]], text: "", numCachedTokens: 0, numPromptTokens: 3 }]);
    expect(await core.step()).toEqual([{ requestId: "r", index: 0, newTokenIds: [expected[1]], text: "" }]);
    expect(await core.step()).toEqual([{ requestId: "r", index: 0, newTokenIds: [expected[2]], text: "" }]);
    expect(await core.step()).toEqual([{
      requestId: "r", index: 0, newTokenIds: [expected[3]], text: "", finishReason: "length",
      usage: { numPromptTokens: 3, numCachedPromptTokens: 0, numCompletionTokens: 4 },
    }]);
    expect(core.hasWork).toBe(false);
    freeAll(core);
  });

  it("stops on an EOS token, and includes it", async () => {
    const prompt = [4, 9, 1];
    const greedy = expectedGreedy(prompt, 8);
    const eos = greedy[2];
    expect(greedy.slice(0, 2)).not.toContain(eos);
    const { core } = makeCore({ eosTokenIds: [EOS, eos] });
    core.add(makeRequest({ requestId: "r", promptTokenIds: prompt, maxTokens: 8 }));
    const result = collect(await drain(core)).get("r#0");
    expect(result).toEqual({ tokenIds: greedy.slice(0, 3), finishReason: "stop" });
    freeAll(core);
  });

  it("ignores EOS with ignoreEos, but still stops on stopTokenIds", async () => {
    const prompt = [4, 9, 1];
    const greedy = expectedGreedy(prompt, 8);
    const { core } = makeCore({ eosTokenIds: [greedy[2]] });
    core.add(makeRequest({ requestId: "ignore", promptTokenIds: prompt, maxTokens: 8, ignoreEos: true }));
    core.add(makeRequest({ requestId: "stop", promptTokenIds: prompt, maxTokens: 8, ignoreEos: true, stopTokenIds: [greedy[4]] }));
    const results = collect(await drain(core));
    expect(results.get("ignore#0")).toEqual({ tokenIds: greedy, finishReason: "length" });
    expect(results.get("stop#0")).toEqual({ tokenIds: greedy.slice(0, 5), finishReason: "stop" });
    freeAll(core);
  });

  it("stops on a stop token id even when EOS is elsewhere", async () => {
    const prompt = [7, 7, 2, 5];
    const greedy = expectedGreedy(prompt, 8);
    const { core } = makeCore();
    core.add(makeRequest({ requestId: "r", promptTokenIds: prompt, maxTokens: 8, stopTokenIds: [greedy[1]] }));
    expect(collect(await drain(core)).get("r#0")).toEqual({ tokenIds: greedy.slice(0, 2), finishReason: "stop" });
  });

  it("returns the chosen token's logprob and the top alternatives when asked", async () => {
    const { core } = makeCore();
    core.add(makeRequest({ requestId: "r", promptTokenIds: [1, 2], maxTokens: 2, sampling: makeSampling({ logprobs: 3 }) }));
    const outputs = await drain(core);
    expect(outputs).toHaveLength(2);
    for (const output of outputs) {
      const [entry] = output.logprobs!;
      expect(entry.top).toHaveLength(3);
      expect(entry.top[0].tokenId).toBe(output.newTokenIds[0]);
      expect(entry.top[0].logprob).toBeCloseTo(entry.logprob, 6);
      expect(entry.logprob).toBeLessThan(0);
    }
  });

  it("samples a prompt-logprobs request at temperature 1 from the full logits its step fetched (echo with logprobs 0)", async () => {
    const { core } = makeCore();
    core.add(makeRequest({ requestId: "echo", promptTokenIds: [1, 2, 3], maxTokens: 2, promptLogprobs: 0, sampling: makeSampling({ temperature: 1, logprobs: 0, seed: 1 }) }));
    const outputs = await drain(core);
    expect(collect(outputs).get("echo#0")).toMatchObject({ finishReason: "length" });
    expect(outputs[0].promptLogprobs).toHaveLength(3);
    expect(outputs[0].promptLogprobs![1].logprob).toBeLessThan(0);
    for (const output of outputs) expect(output.logprobs![0].logprob).toBeLessThan(0);
  });

  it("gives n = 2 two sequences, index 0 and 1, the copy sharing the prompt's full blocks", async () => {
    const { core, runner } = makeCore();
    const prompt = tokens(5);
    core.add(makeRequest({ requestId: "r", promptTokenIds: prompt, maxTokens: 3, n: 2 }));
    const first = await core.step();
    expect(first.map((o) => [o.index, o.numPromptTokens])).toEqual([[0, 5]]);
    expect(runner.calls[0].map((s) => s.blockTable)).toEqual([[1, 2]]);
    const second = await core.step();
    expect(second.map((o) => [o.index, o.numPromptTokens])).toEqual([[0, undefined], [1, 5]]);
    // Copy 1 holds a second reference on the full block 1 and recomputes only the partial block's token.
    expect(runner.calls[1].map((s) => [s.blockTable, s.numPastTokens, s.tokenIds.length])).toEqual([[[1, 2], 5, 1], [[1, 3], 4, 1]]);
    expect(core.kv.pool.refCountOf(1)).toBe(2);
    const results = collect([...first, ...second, ...(await drain(core))]);
    expect([...results.keys()]).toEqual(["r#0", "r#1"]);
    for (const result of results.values()) expect(result).toEqual({ tokenIds: expectedGreedy(prompt, 3), finishReason: "length" });
    freeAll(core);
  });
});

describe("EngineCore: abort", () => {
  it("frees a running request's blocks at the next step and reports finish_reason abort", async () => {
    const { core } = makeCore();
    core.add(makeRequest({ requestId: "r", promptTokenIds: tokens(6), maxTokens: 10 }));
    core.add(makeRequest({ requestId: "other", promptTokenIds: tokens(3, 9), maxTokens: 3 }));
    await core.step();
    const usedByOther = 1;
    expect(core.kv.pool.numFreeBlocks).toBe(core.kv.pool.numUsableBlocks - 2 - usedByOther);
    core.abort("r");
    expect(core.kv.pool.numFreeBlocks).toBe(core.kv.pool.numUsableBlocks - 2 - usedByOther);
    const outputs = await core.step();
    // The abort carries what the request used: its 6-token prompt and the 1 token of its first step.
    expect(outputs[0]).toEqual({
      requestId: "r", index: 0, newTokenIds: [], text: "", finishReason: "abort", usage: { numPromptTokens: 6, numCachedPromptTokens: 0, numCompletionTokens: 1 },
    });
    expect(outputs.filter((o) => o.requestId === "r")).toHaveLength(1);
    expect(core.kv.pool.numFreeBlocks).toBe(core.kv.pool.numUsableBlocks - usedByOther);
    core.checkIntegrity();
    const rest = await drain(core);
    expect(rest.filter((o) => o.requestId === "r")).toEqual([]);
    freeAll(core);
  });

  it("aborts a request that never ran, without running it", async () => {
    const { core, runner } = makeCore();
    core.add(makeRequest({ requestId: "r", n: 2 }));
    core.abort("r");
    expect(await core.step()).toEqual([
      { requestId: "r", index: 0, newTokenIds: [], text: "", finishReason: "abort" },
      { requestId: "r", index: 1, newTokenIds: [], text: "", finishReason: "abort", usage: { numPromptTokens: 3, numCachedPromptTokens: 0, numCompletionTokens: 0 } },
    ]);
    expect(runner.calls).toEqual([]);
    expect(core.hasWork).toBe(false);
    freeAll(core);
  });

  it("aborts only the unfinished sequences of an n > 1 request", async () => {
    // Near-uniform sampling with a seed, so the two sequences draw different first tokens.
    const sampling = makeSampling({ temperature: 100, seed: 7 });
    const probe = makeCore().core;
    probe.add(makeRequest({ requestId: "probe", maxTokens: 5, n: 2, sampling }));
    const probed = await drain(probe);
    const firstOf = (index: number) => probed.find((o) => o.index === index)!.newTokenIds[0];
    const [first0, first1] = [firstOf(0), firstOf(1)];
    expect(first0).not.toBe(first1);

    const { core } = makeCore();
    core.add(makeRequest({ requestId: "r", maxTokens: 5, n: 2, sampling, stopTokenIds: [first0] }));
    expect((await core.step()).map((o) => [o.index, o.newTokenIds, o.finishReason])).toEqual([[0, [first0], "stop"]]);
    expect((await core.step()).map((o) => [o.index, o.newTokenIds, o.finishReason])).toEqual([[1, [first1], undefined]]);
    core.abort("r");
    // The request's usage counts both sequences' tokens: the one that stopped and the one aborted.
    expect(await core.step()).toEqual([{
      requestId: "r", index: 1, newTokenIds: [], text: "", finishReason: "abort", usage: { numPromptTokens: 3, numCachedPromptTokens: 0, numCompletionTokens: 2 },
    }]);
    freeAll(core);
  });

  it("ignores an abort for an unknown or finished request", async () => {
    const { core } = makeCore();
    core.add(makeRequest({ requestId: "r", maxTokens: 1 }));
    await drain(core);
    core.abort("r");
    core.abort("nobody");
    expect(core.hasWork).toBe(false);
  });
});

describe("EngineCore: prefix caching", () => {
  it("reports numCachedTokens on the first output and sends the runner only the uncached tokens", async () => {
    const { core, runner } = makeCore();
    const shared = tokens(8);
    core.add(makeRequest({ requestId: "a", promptTokenIds: [...shared, 20, 21], maxTokens: 1 }));
    await drain(core);
    const b = [...shared, 25, 26, 27];
    core.add(makeRequest({ requestId: "b", promptTokenIds: b, maxTokens: 2 }));
    const first = await core.step();
    expect(first).toEqual([{ requestId: "b", index: 0, newTokenIds: [expectedGreedy(b, 1)[0]], text: "", numCachedTokens: 8, numPromptTokens: 11 }]);
    expect(runner.calls.at(-1)).toEqual([{ tokenIds: [25, 26, 27], numPastTokens: 8, blockTable: [1, 2, 4], logitsFrom: 2, invTemperature: 1 }]);
    await drain(core);
    freeAll(core);
  });

  it("reports numCachedTokens 0 with prefix caching off", async () => {
    const { core, runner } = makeCore({ enablePrefixCaching: false });
    for (const requestId of ["a", "b"]) {
      core.add(makeRequest({ requestId, promptTokenIds: tokens(10), maxTokens: 1 }));
      expect(collect(await drain(core)).get(`${requestId}#0`)?.tokenIds).toEqual(expectedGreedy(tokens(10), 1));
    }
    expect(runner.calls.at(-1)![0].numPastTokens).toBe(0);
  });
});

describe("EngineCore: stats", () => {
  it("refreshes running count and KV usage after a step that only aborts", async () => {
    const { core } = makeCore();
    core.add(makeRequest({ requestId: "r", promptTokenIds: tokens(6), maxTokens: 10 }));
    await core.step();
    expect(core.stats.snapshot()).toMatchObject({ numRunning: 1, numWaiting: 0 });
    core.abort("r");
    await core.step();
    expect(core.hasWork).toBe(false);
    expect(core.stats.snapshot()).toMatchObject({ numRunning: 0, numWaiting: 0, kvCacheUsage: 0 });
  });

  it("counts prefix-cache queries and hits once per admission, not once per attempt while blocked", async () => {
    const { core } = makeCore({ numBlocks: 6, maxModelLen: 20 }); // 5 usable blocks
    const shared = tokens(8);
    core.add(makeRequest({ requestId: "a", promptTokenIds: [...shared, 30], maxTokens: 1 }));
    await drain(core);
    core.add(makeRequest({ requestId: "hog", promptTokenIds: tokens(8, 12), maxTokens: 4 }));
    await core.step();
    const b = [...shared, 29, 28, 27, 26, 25];
    core.add(makeRequest({ requestId: "b", promptTokenIds: b, maxTokens: 1 }));
    // b's 2 cached blocks plus 2 new ones don't fit beside hog until hog finishes.
    expect(await core.step()).toEqual([expect.objectContaining({ requestId: "hog" })]);
    expect(await core.step()).toEqual([expect.objectContaining({ requestId: "hog" })]);
    const outputs = await drain(core);
    expect(outputs.find((o) => o.requestId === "b")?.numCachedTokens).toBe(8);
    expect(core.kv.numPrefixQueries).toBe(9 + 8 + b.length);
    expect(core.kv.numPrefixHits).toBe(8);
    const snapshot = core.stats.snapshot();
    expect([snapshot.numPrefixQueryTokens, snapshot.numPrefixHitTokens]).toEqual([9 + 8 + b.length, 8]);
  });
});

describe("EngineCore: what the runner is asked", () => {
  it("chunks a prefill, asks for logits only when a chunk reaches the end, then decodes one token at a time", async () => {
    const { core, runner } = makeCore({ maxNumBatchedTokens: 4 });
    const prompt = tokens(10, 3);
    const [t1] = expectedGreedy(prompt, 1);
    core.add(makeRequest({ requestId: "r", promptTokenIds: prompt, maxTokens: 2 }));
    expect(await core.step()).toEqual([]);
    expect(await core.step()).toEqual([]);
    await drain(core);
    expect(runner.calls).toEqual([
      [{ tokenIds: prompt.slice(0, 4), numPastTokens: 0, blockTable: [1], logitsFrom: 4, invTemperature: 1 }],
      [{ tokenIds: prompt.slice(4, 8), numPastTokens: 4, blockTable: [1, 2], logitsFrom: 4, invTemperature: 1 }],
      [{ tokenIds: prompt.slice(8), numPastTokens: 8, blockTable: [1, 2, 3], logitsFrom: 1, invTemperature: 1 }],
      [{ tokenIds: [t1], numPastTokens: 10, blockTable: [1, 2, 3], logitsFrom: 0, invTemperature: 1 }],
    ]);
  });

  it("batches a decode with another request's prefill chunk in one call", async () => {
    const { core, runner } = makeCore({ maxNumBatchedTokens: 5 });
    core.add(makeRequest({ requestId: "a", promptTokenIds: [1, 2], maxTokens: 5 }));
    await core.step();
    core.add(makeRequest({ requestId: "b", promptTokenIds: tokens(9, 10), maxTokens: 1 }));
    await core.step();
    const [decode, prefill] = runner.calls[1];
    expect(decode).toMatchObject({ numPastTokens: 2, blockTable: [1], logitsFrom: 0 });
    expect(prefill).toEqual({ tokenIds: tokens(4, 10), numPastTokens: 0, blockTable: [2], logitsFrom: 4, invTemperature: 1 });
  });
});

describe("EngineCore: validation", () => {
  it("rejects prompt + max_tokens over maxModelLen with PROMPT_TOO_LONG and the numbers", () => {
    const { core } = makeCore({ maxModelLen: 64 });
    expectRejected(() => core.add(makeRequest({ promptTokenIds: tokens(60), maxTokens: 5 })), "PROMPT_TOO_LONG", "64", "60", "max_tokens is 5", "65");
    core.add(makeRequest({ promptTokenIds: tokens(60), maxTokens: 4 }));
  });

  it("rejects a request needing more blocks than the whole pool with PROMPT_TOO_LONG and the numbers", () => {
    const { core } = makeCore({ numBlocks: 8, maxModelLen: 64 });
    expectRejected(() => core.add(makeRequest({ promptTokenIds: tokens(20), maxTokens: 10 })), "PROMPT_TOO_LONG", "20 tokens", "(10)", "8 KV blocks", "holds 7");
    expect(core.hasWork).toBe(false);
    core.add(makeRequest({ promptTokenIds: tokens(20), maxTokens: 8 }));
  });

  it("rejects an empty prompt and a request id in use", () => {
    const { core } = makeCore();
    expectRejected(() => core.add(makeRequest({ promptTokenIds: [] })), "INVALID_REQUEST", "empty");
    core.add(makeRequest({ requestId: "dup" }));
    expectRejected(() => core.add(makeRequest({ requestId: "dup" })), "INVALID_REQUEST", "dup");
  });
});

describe("EngineCore: batching is invisible", () => {
  const requests: EngineRequest[] = [
    makeRequest({ requestId: "a", promptTokenIds: tokens(9), maxTokens: 6 }),
    makeRequest({ requestId: "b", promptTokenIds: [...tokens(8), 30, 29], maxTokens: 5 }),
    makeRequest({ requestId: "c", promptTokenIds: [3], maxTokens: 9 }),
    makeRequest({ requestId: "d", promptTokenIds: tokens(14, 11), maxTokens: 3 }),
    makeRequest({ requestId: "e", promptTokenIds: tokens(9), maxTokens: 4, n: 2 }),
  ];

  async function runAlone(request: EngineRequest): Promise<Map<string, { tokenIds: number[]; finishReason?: string }>> {
    const { core } = makeCore({}, new FakeRunner(byWholeContext));
    core.add(request);
    return collect(await drain(core));
  }

  it("gives every greedy request the same tokens batched (with chunking and preemption) as alone", async () => {
    const { core, runner } = makeCore({ numBlocks: 8, maxNumBatchedTokens: 6, maxNumSeqs: 4, maxModelLen: 28 }, new FakeRunner(byWholeContext));
    for (const request of requests) core.add(request);
    const batched = collect(await drain(core));
    expect(core.stats.numPreemptions).toBeGreaterThan(0);
    expect(runner.calls.some((call) => call.length > 1)).toBe(true);
    for (const request of requests) {
      const alone = await runAlone(request);
      for (const [key, result] of alone) {
        expect(result).toEqual({ tokenIds: expectedGreedy(request.promptTokenIds, request.maxTokens!, byWholeContext), finishReason: "length" });
        expect(batched.get(key)).toEqual(result);
      }
    }
    freeAll(core);
  });
});

describe("EngineCore: running out of blocks", () => {
  it("finishes requests that each fill the whole pool, by preempting instead of failing", async () => {
    const { core } = makeCore({ numBlocks: 5, maxModelLen: 16 }, new FakeRunner(byWholeContext)); // 4 usable blocks: 16 tokens
    const prompts = [tokens(10), tokens(10, 3), [...tokens(8), 30, 30]];
    prompts.forEach((prompt, i) => core.add(makeRequest({ requestId: `r${i}`, promptTokenIds: prompt, maxTokens: 6, n: i === 2 ? 2 : 1 })));
    const results = collect(await drain(core));
    expect(core.stats.numPreemptions).toBeGreaterThan(0);
    expect(results.size).toBe(4);
    for (const [key, result] of results) {
      const prompt = prompts[Number(key.slice(1, key.indexOf("#")))];
      expect(result).toEqual({ tokenIds: expectedGreedy(prompt, 6, byWholeContext), finishReason: "length" });
    }
    freeAll(core);
  });
});

interface Arrival {
  prompt: number[];
  maxTokens: number;
  n: number;
  arrivalStep: number;
  abortStep: number | null;
}

describe("EngineCore under random workloads", () => {
  it("finishes every sequence exactly once with the tokens it would get alone, and drains to a free pool", async () => {
    const arrival: fc.Arbitrary<Arrival> = fc.record({
      prompt: fc.array(fc.integer({ min: 0, max: 1 }), { minLength: 1, maxLength: 20 }),
      maxTokens: fc.integer({ min: 1, max: 8 }),
      n: fc.integer({ min: 1, max: 2 }),
      arrivalStep: fc.integer({ min: 0, max: 8 }),
      abortStep: fc.option(fc.integer({ min: 0, max: 12 }), { freq: 4 }),
    });
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 8, max: 14 }), fc.integer({ min: 1, max: 10 }), fc.integer({ min: 1, max: 4 }), fc.array(arrival, { minLength: 1, maxLength: 6 }),
        async (numBlocks, maxNumBatchedTokens, maxNumSeqs, arrivals) => {
          const { core } = makeCore({ numBlocks, maxNumBatchedTokens, maxNumSeqs, maxModelLen: 28 }, new FakeRunner(byWholeContext));
          const outputs: EngineOutput[] = [];
          for (let step = 0; step < 2000 && (core.hasWork || step <= 12); step++) {
            arrivals.forEach((a, i) => {
              if (a.arrivalStep === step) core.add(makeRequest({ requestId: `q${i}`, promptTokenIds: a.prompt, maxTokens: a.maxTokens, n: a.n }));
              if (a.abortStep === step) core.abort(`q${i}`);
            });
            outputs.push(...(await core.step()));
            core.checkIntegrity();
          }
          expect(core.hasWork).toBe(false);
          const results = collect(outputs);
          arrivals.forEach((a, i) => {
            const expected = expectedGreedy(a.prompt, a.maxTokens, byWholeContext);
            for (let index = 0; index < a.n; index++) {
              const result = results.get(`q${i}#${index}`)!;
              if (result.finishReason === "abort") expect(expected.slice(0, result.tokenIds.length)).toEqual(result.tokenIds);
              else expect(result).toEqual({ tokenIds: expected, finishReason: "length" });
            }
          });
          freeAll(core);
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe("the fake runner", () => {
  it("catches a block table that reads KV nobody wrote", async () => {
    const runner = new FakeRunner();
    const execute = (seqs: Parameters<FakeRunner["step"]>[0]) => runner.step(seqs, { fullLogits: true });
    await expect(execute([{ tokenIds: [1], numPastTokens: 2, blockTable: [3], logitsFrom: 0 }])).rejects.toThrow(/never written/);
    await expect(execute([{ tokenIds: [1, 2], numPastTokens: 0, blockTable: [0], logitsFrom: 1 }])).rejects.toThrow(/null block/);
    await expect(execute([{ tokenIds: [1, 2, 3, 4, 5], numPastTokens: 0, blockTable: [1], logitsFrom: 4 }])).rejects.toThrow(/can't hold/);
  });

  it("peaks its logits at the next token of its rule", async () => {
    const runner = new FakeRunner(byLastTokenAndPosition, BLOCK_SIZE);
    const [logits] = await runner.step([{ tokenIds: [5, 6, 7], numPastTokens: 0, blockTable: [1], logitsFrom: 2 }], { fullLogits: true });
    const row = logits.full!;
    expect(row.indexOf(Math.max(...row))).toBe(byLastTokenAndPosition([5, 6, 7]));
    expect(logits.topIds[0]).toBe(byLastTokenAndPosition([5, 6, 7]));
  });
});

describe("EngineCore: a failed step", () => {
  /** Fails any step that carries the poison token; otherwise the usual fake runner. */
  class PoisonRunner extends FakeRunner {
    override async step(...args: Parameters<FakeRunner["step"]>) {
      if (args[0].some((s) => s.tokenIds.includes(POISON))) throw new Error("kernel exploded");
      return super.step(...args);
    }
  }
  const POISON = 13;

  /** Drops the rows a poisoned sequence needs, as a fetch decided in two places once did. */
  class MissingRowsRunner extends FakeRunner {
    override async step(...args: Parameters<FakeRunner["step"]>) {
      const logits = await super.step(...args);
      return logits.map((l, i) => (args[0][i].tokenIds.includes(POISON) ? { ...l, full: null, probs: null } : l));
    }
  }

  it("a fault while sampling one request fails that request alone; the others in the step keep their tokens", async () => {
    const { core } = makeCore({}, new MissingRowsRunner());
    const sampled = makeSampling({ temperature: 0.8, seed: 3 });
    core.add(makeRequest({ requestId: "victim", promptTokenIds: [1, POISON, 3], maxTokens: 4, sampling: sampled }));
    core.add(makeRequest({ requestId: "bystander", promptTokenIds: [4, 5], maxTokens: 4, sampling: sampled }));
    const error = await core.step().catch((err: unknown) => err);
    expect(error).toBeInstanceOf(StepFailure);
    expect((error as StepFailure).requestIds).toEqual(["victim"]);
    expect((error as StepFailure).outputs.map((o) => o.requestId)).toEqual(["bystander"]);
    const rest = collect(await drain(core));
    expect(rest.get("bystander#0")!.tokenIds).toHaveLength(3);
    expect(rest.has("victim#0")).toBe(false);
    freeAll(core);
  });

  it("fails only its own requests, frees their blocks, delivers pending aborts, and keeps serving", async () => {
    const { core } = makeCore({}, new PoisonRunner());
    core.add(makeRequest({ requestId: "victim", promptTokenIds: [1, POISON, 3], maxTokens: 4 }));
    core.add(makeRequest({ requestId: "gone", promptTokenIds: [7, 8], maxTokens: 4 }));
    core.abort("gone");
    const error = await core.step().catch((err: unknown) => err);
    expect(error).toBeInstanceOf(StepFailure);
    expect((error as StepFailure).requestIds).toEqual(["victim"]);
    expect((error as StepFailure).code).toBe("RUNTIME_FAILED");
    expect((error as StepFailure).message).toMatch(/kernel exploded/);
    expect((error as StepFailure).outputs).toEqual([{
      requestId: "gone", index: 0, newTokenIds: [], text: "", finishReason: "abort", usage: { numPromptTokens: 2, numCachedPromptTokens: 0, numCompletionTokens: 0 },
    }]);
    expect((error as StepFailure).usages.get("victim")).toEqual({ numPromptTokens: 3, numCachedPromptTokens: 0, numCompletionTokens: 0 });
    core.checkIntegrity();
    expect(core.kv.pool.numFreeBlocks).toBe(core.kv.pool.numUsableBlocks);
    core.add(makeRequest({ requestId: "next", promptTokenIds: [4, 5], maxTokens: 2 }));
    const result = collect(await drain(core)).get("next#0");
    expect(result).toEqual({ tokenIds: expectedGreedy([4, 5], 2), finishReason: "length" });
  });
});

describe("EngineCore: grammars", () => {
  /** A grammar that allows exactly `tokens` in order, then EOS; its opens resolve when `compile()` is called. */
  class FakeGrammar {
    opened: string[] = [];
    closed: string[] = [];
    private readonly progress = new Map<string, number>();
    private release: (() => void)[] = [];
    /** Rows of these sequences get an error instead of a mask, as a late or restarted grammar thread gives. */
    readonly lost = new Set<string>();
    constructor(private readonly tokens: number[], private readonly fail: Error | null = null) {}
    open(seqKey: string): Promise<void> {
      this.opened.push(seqKey);
      this.progress.set(seqKey, 0);
      return new Promise((resolve, reject) => this.release.push(() => (this.fail ? reject(this.fail) : resolve())));
    }
    compile(): void {
      for (const release of this.release.splice(0)) release();
    }
    async advance(rows: readonly { seqKey: string; tokens: readonly number[] }[]) {
      return rows.map((row) => {
        if (this.lost.has(row.seqKey)) return { error: new EngineError("GRAMMAR_BUSY", "the grammar thread was restarted") };
        const at = this.progress.get(row.seqKey)! + row.tokens.length;
        this.progress.set(row.seqKey, at);
        const mask = new Int32Array(2);
        const next = at < this.tokens.length ? this.tokens[at] : EOS;
        mask[next >> 5] |= 1 << (next & 31);
        return { mask, rejected: false };
      });
    }
    close(seqKey: string): void {
      this.closed.push(seqKey);
    }
  }
  const flush = () => new Promise((resolve) => setImmediate(resolve));

  it("waits unscheduled while the grammar compiles, then samples only what it allows and stops when it ends, even with ignore_eos", async () => {
    const grammar = new FakeGrammar([7, 9, 4]);
    let woken = 0;
    const { core } = makeCore({ grammar });
    core.onWake = () => void woken++;
    core.add(makeRequest({ requestId: "g", promptTokenIds: [1, 2, 3], maxTokens: 20, ignoreEos: true, grammar: { type: "regex", pattern: "x" }, sampling: makeSampling({ temperature: 1, seed: 3 }) }));
    expect(core.hasWork).toBe(false);
    grammar.compile();
    await flush();
    expect(woken).toBe(1);
    const outputs = await drain(core);
    expect(outputs.flatMap((o) => o.newTokenIds)).toEqual([7, 9, 4, EOS]);
    expect(outputs.at(-1)!.finishReason).toBe("stop");
    expect(grammar.closed).toEqual(["g#0"]);
    freeAll(core);
  });

  it("fails only the request whose grammar does not compile, with its own 400 and param", async () => {
    const grammar = new FakeGrammar([], new EngineError("INVALID_REQUEST", "no such feature", "response_format"));
    const { core } = makeCore({ grammar });
    core.add(makeRequest({ requestId: "bad", promptTokenIds: [1], maxTokens: 3, grammar: { type: "json_object" } }));
    core.add(makeRequest({ requestId: "free", promptTokenIds: [1, 2], maxTokens: 3 }));
    grammar.compile();
    await flush();
    const error = await core.step().catch((err: unknown) => err);
    expect(error).toBeInstanceOf(StepFailure);
    expect(error).toMatchObject({ requestIds: ["bad"], code: "INVALID_REQUEST", message: "no such feature", param: "response_format" });
    const rest = await drain(core);
    expect(rest.filter((o) => o.requestId === "free").flatMap((o) => o.newTokenIds)).toHaveLength(3);
    freeAll(core);
  });

  it("an abort while compiling frees everything", async () => {
    const grammar = new FakeGrammar([5]);
    const { core } = makeCore({ grammar });
    core.add(makeRequest({ requestId: "gone", promptTokenIds: [1], maxTokens: 3, grammar: { type: "json_object" } }));
    core.abort("gone");
    expect((await core.step()).map((o) => o.finishReason)).toEqual(["abort"]);
    grammar.compile();
    await flush();
    expect(core.hasWork).toBe(false);
    expect(grammar.closed).toContain("gone#0");
    freeAll(core);
  });

  it("a row whose mask is late fails its own request alone, with its own error; the rest of the step goes on", async () => {
    const grammar = new FakeGrammar([7, 9, 4]);
    const { core } = makeCore({ grammar });
    core.add(makeRequest({ requestId: "late", promptTokenIds: [1, 2], maxTokens: 5, grammar: { type: "regex", pattern: "x" } }));
    core.add(makeRequest({ requestId: "ok", promptTokenIds: [1, 2, 3], maxTokens: 5, grammar: { type: "regex", pattern: "x" } }));
    core.add(makeRequest({ requestId: "free", promptTokenIds: [4, 5], maxTokens: 5 }));
    grammar.compile();
    await flush();
    grammar.lost.add("late#0");
    const error = await core.step().catch((err: unknown) => err) as StepFailure;
    expect(error).toBeInstanceOf(StepFailure);
    expect(error.requestIds).toEqual(["late"]);
    expect(error.errorFor("late")).toMatchObject({ code: "GRAMMAR_BUSY", message: expect.stringMatching(/restarted/) });
    expect(error.outputs.map((o) => [o.requestId, o.newTokenIds]).sort()).toEqual([["free", [expect.any(Number)]], ["ok", [7]]]);
    expect(grammar.closed).toContain("late#0");
    const rest = await drain(core);
    expect(rest.filter((o) => o.requestId === "ok").flatMap((o) => o.newTokenIds)).toEqual([9, 4, EOS]);
    freeAll(core);
  });

  it("refuses a grammar when the engine has none", () => {
    const { core } = makeCore();
    expectRejected(() => core.add(makeRequest({ requestId: "x", promptTokenIds: [1], maxTokens: 2, grammar: { type: "json_object" } })), "INVALID_REQUEST", "no grammar engine");
  });
});
