/**
 * The real engine thread on the real tiny default model: continuous batching and prefix
 * caching change nothing about what a greedy request produces. The core of it runs once more
 * on --device webgpu (the device-resident pool), where a WebGPU adapter exists: in CI, Mesa's
 * lavapipe.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_ENGINE_OPTIONS, Engine, GREEDY, type EngineOutput, type EngineRequest } from "../../engine/index.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ModelTokenizer } from "../../models/tokenizer.ts";
import { referenceFor, seededTokens } from "../helpers/runner.ts";
import { webgpuAvailable } from "../helpers/webgpu.ts";

const VOCAB = 151643;

async function collect(engine: Engine, request: EngineRequest): Promise<EngineOutput[]> {
  const outputs: EngineOutput[] = [];
  for await (const output of engine.add(request)) outputs.push(output);
  return outputs;
}

const tokensOf = (outputs: EngineOutput[]) => outputs.flatMap((o) => o.newTokenIds);

type StartOptions = Partial<Parameters<typeof Engine.start>[0]>;

function startEngine(overrides: StartOptions = {}): Promise<Engine> {
  return Engine.start({
    ...DEFAULT_ENGINE_OPTIONS, modelDir: ensureDefaultModel(), kvCacheMemoryBytes: 256 * 1024 ** 2,
    eosTokenIds: [151645, 151643], intraOpThreads: 1, ...overrides,
  });
}

interface CoreRun {
  device: "cpu" | "webgpu";
  /** Bytes of one KV block of the default model on this device (float32 host pool, float16 device pool). */
  bytesPerBlock: number;
  /**
   * Every how many of the 64 batched requests is checked alone. NOTE: lavapipe runs a step of
   * the default model in about 0.35 s whatever the batch, so on webgpu every 4th is.
   */
  aloneStride: number;
  /** Per test. */
  timeoutMs: number;
}

// 2 (key, value) * 6 layers * 16 slots * 64 floats: 48 KiB a block in float32, 24 KiB in float16.
const CORE_RUNS: CoreRun[] = [
  { device: "cpu", bytesPerBlock: 49152, aloneStride: 1, timeoutMs: 120_000 },
  ...((await webgpuAvailable()) ? [{ device: "webgpu", bytesPerBlock: 24576, aloneStride: 4, timeoutMs: 300_000 } as const] : []),
];

describe.each(CORE_RUNS)("the engine on the default model, --device $device", ({ device, bytesPerBlock, aloneStride, timeoutMs }) => {
  let engine: Engine;
  const start = (overrides: StartOptions = {}) => startEngine({ device, ...overrides });
  beforeAll(async () => (engine = await start({ maxNumBatchedTokens: 256 })), timeoutMs);
  afterAll(async () => engine.shutdown());

  it("64 concurrent greedy requests each produce exactly what they produce alone", async () => {
    const requests: EngineRequest[] = Array.from({ length: 64 }, (_, i) => ({
      requestId: `batch-${i}`, promptTokenIds: seededTokens(3 + ((i * 7) % 40), VOCAB, i + 1),
      maxTokens: 4 + (i % 9), sampling: GREEDY, ignoreEos: true,
    }));
    const together = await Promise.all(requests.map((r) => collect(engine, r)));
    for (const [i, request] of requests.entries()) {
      if (i % aloneStride !== 0) continue;
      const alone = await collect(engine, { ...request, requestId: `alone-${i}` });
      expect(tokensOf(together[i]), request.requestId).toEqual(tokensOf(alone));
      expect(tokensOf(alone)).toHaveLength(request.maxTokens!);
    }
  }, timeoutMs);

  it("a request sharing a long prompt prefix reports the shared full blocks as cached and produces the same tokens", async () => {
    const shared = seededTokens(100, VOCAB, 99);
    const first = await collect(engine, { requestId: "prefix-1", promptTokenIds: [...shared, 5, 6, 7], maxTokens: 6, sampling: GREEDY, ignoreEos: true });
    expect(first[0].numCachedTokens).toBe(0);
    const second = await collect(engine, { requestId: "prefix-2", promptTokenIds: [...shared, 8, 9], maxTokens: 6, sampling: GREEDY, ignoreEos: true });
    // 100 shared tokens = 6 full blocks of 16 (96 tokens); the 7th block differs.
    expect(second[0].numCachedTokens).toBe(96);
    expect(second[0].numPromptTokens).toBe(102);

    const uncached = await start({ enablePrefixCaching: false });
    try {
      const fresh = await collect(uncached, { requestId: "prefix-3", promptTokenIds: [...shared, 8, 9], maxTokens: 6, sampling: GREEDY, ignoreEos: true });
      expect(fresh[0].numCachedTokens).toBe(0);
      expect(tokensOf(second)).toEqual(tokensOf(fresh));
    } finally {
      await uncached.shutdown();
    }
  }, timeoutMs);

  it("an aborted request ends with finish_reason abort and the engine keeps serving", async () => {
    const controller = new AbortController();
    const outputs: EngineOutput[] = [];
    for await (const output of engine.add({ requestId: "to-abort", promptTokenIds: [1, 2, 3], maxTokens: 500, sampling: GREEDY, ignoreEos: true }, controller.signal)) {
      outputs.push(output);
      if (outputs.length === 3) controller.abort();
    }
    expect(outputs.at(-1)?.finishReason).toBe("abort");
    expect(outputs.length).toBeLessThan(20);
    const after = await collect(engine, { requestId: "after-abort", promptTokenIds: [1, 2, 3], maxTokens: 3, sampling: GREEDY, ignoreEos: true });
    expect(tokensOf(after)).toHaveLength(3);
  }, timeoutMs);

  it("when blocks run out, preempted requests are recomputed and still produce what they produce alone", async () => {
    const small = await start({ kvCacheMemoryBytes: 20 * bytesPerBlock, maxNumBatchedTokens: 64 });
    try {
      // The context is capped at what the pool holds (20 blocks, 19 usable), so any one request can always finish.
      expect(small.info).toMatchObject({ numBlocks: 20, maxModelLen: 19 * 16, maxModelLenCappedFrom: 8192 });
      const requests: EngineRequest[] = Array.from({ length: 8 }, (_, i) => ({
        requestId: `tight-${i}`, promptTokenIds: seededTokens(20, VOCAB, 500 + i), maxTokens: 40, sampling: GREEDY, ignoreEos: true,
      }));
      let numPreemptions = 0;
      small.onStats((stats) => (numPreemptions = stats.numPreemptions));
      const together = await Promise.all(requests.map((r) => collect(small, r)));
      expect(numPreemptions).toBeGreaterThan(0);
      for (const [i, request] of requests.entries()) {
        if (i % aloneStride !== 0) continue;
        const alone = await collect(engine, { ...request, requestId: `roomy-${i}` });
        expect(tokensOf(together[i])).toEqual(tokensOf(alone));
      }
    } finally {
      await small.shutdown();
    }
  }, timeoutMs);
});

describe("the engine on the default model", () => {
  let engine: Engine;
  beforeAll(async () => (engine = await startEngine({ maxNumBatchedTokens: 256 })));
  afterAll(async () => engine.shutdown());

  it("a request too long for the context is rejected with the numbers, and others still run", async () => {
    const tooLong = collect(engine, { requestId: "too-long", promptTokenIds: seededTokens(8000, VOCAB, 1), maxTokens: 500, sampling: GREEDY });
    await expect(tooLong).rejects.toMatchObject({ code: "PROMPT_TOO_LONG", message: expect.stringMatching(/8192.*8000.*500/) });
    const ok = await collect(engine, { requestId: "fine", promptTokenIds: [1, 2], maxTokens: 2, sampling: GREEDY, ignoreEos: true });
    expect(tokensOf(ok)).toHaveLength(2);
  });

  it("streams text that decodes the tokens, and ends before a stop string", async () => {
    const tokenizer = ModelTokenizer.load(readCheckpoint(ensureDefaultModel()));
    const promptTokenIds = tokenizer.encode("The quick brown fox", false);
    const plain = await collect(engine, { requestId: "text-1", promptTokenIds, maxTokens: 24, sampling: GREEDY, ignoreEos: true });
    const text = plain.map((o) => o.text).join("");
    expect(text).toBe(tokenizer.decode(tokensOf(plain), true));
    const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
    const stopped = await collect(engine, { requestId: "text-2", promptTokenIds, maxTokens: 24, sampling: GREEDY, ignoreEos: true, stop: [stop] });
    expect(stopped.map((o) => o.text).join("")).toBe(text.slice(0, text.indexOf(stop)));
    expect(stopped.at(-1)).toMatchObject({ finishReason: "stop", stopReason: stop });
  });

  it("--kv-cache-dtype int8 and float16 hold 3.6x and 2x the blocks in the same memory, and serve with prefix caching", async () => {
    // float32: 48 KiB a block (above); int8: 2 * 6 layers * 16 slots * 2 kv heads * (32 values + a 4-byte scale) = 13.5 KiB; float16 24 KiB.
    const memory = 40 * 49152;
    for (const [kvCacheDtype, bytesPerBlock] of [["int8", 13824], ["float16", 24576]] as const) {
      const small = await startEngine({ kvCacheMemoryBytes: memory, kvCacheDtype, maxNumBatchedTokens: 64 });
      try {
        expect(small.info.kvCache).toMatchObject({ dtype: kvCacheDtype, numBlocks: Math.floor(memory / bytesPerBlock), numBytes: Math.floor(memory / bytesPerBlock) * bytesPerBlock });
        const shared = seededTokens(40, VOCAB, 7);
        const first = await collect(small, { requestId: `${kvCacheDtype}-1`, promptTokenIds: [...shared, 1], maxTokens: 8, sampling: GREEDY, ignoreEos: true });
        const second = await collect(small, { requestId: `${kvCacheDtype}-2`, promptTokenIds: [...shared, 2], maxTokens: 8, sampling: GREEDY, ignoreEos: true });
        expect(tokensOf(first)).toHaveLength(8);
        expect(second[0].numCachedTokens).toBe(32);
      } finally {
        await small.shutdown();
      }
    }
  });

  it("n = 2 greedy copies share the prompt and each equal the n = 1 result", async () => {
    const promptTokenIds = seededTokens(40, VOCAB, 4242);
    const single = await collect(engine, { requestId: "n-1", promptTokenIds, maxTokens: 5, sampling: GREEDY, ignoreEos: true });
    const pair = await collect(engine, { requestId: "n-2", promptTokenIds, maxTokens: 5, sampling: GREEDY, ignoreEos: true, n: 2 });
    for (const index of [0, 1]) expect(tokensOf(pair.filter((o) => o.index === index))).toEqual(tokensOf(single));
  });

  it("prompt logprobs equal the reference forward pass's log-softmax at each position", async () => {
    const promptTokenIds = seededTokens(20, VOCAB, 77);
    const [first] = await collect(engine, {
      requestId: "echo", promptTokenIds, maxTokens: 1, sampling: { ...GREEDY, logprobs: 2 }, promptLogprobs: 2, ignoreEos: true,
    });
    const promptLogprobs = first.promptLogprobs!;
    expect(promptLogprobs).toHaveLength(20);
    expect(promptLogprobs[0]).toMatchObject({ tokenId: promptTokenIds[0], logprob: null, top: null });
    const reference = referenceFor(ensureDefaultModel(), promptTokenIds);
    for (let p = 1; p < 20; p++) {
      const logits = reference[p - 1];
      let max = -Infinity;
      for (const x of logits) max = Math.max(max, x);
      let sum = 0;
      for (const x of logits) sum += Math.exp(x - max);
      expect(promptLogprobs[p]!.logprob).toBeCloseTo(logits[promptTokenIds[p]] - max - Math.log(sum), 3);
      expect(promptLogprobs[p]!.top).toHaveLength(2);
      expect(typeof promptLogprobs[p]!.token).toBe("string");
    }
  });

  it("a seeded sampled request gives the same tokens alone and in a busy batch", async () => {
    const seeded: EngineRequest = {
      requestId: "seeded-alone", promptTokenIds: seededTokens(12, VOCAB, 8), maxTokens: 12, ignoreEos: true,
      sampling: { ...GREEDY, temperature: 1, topP: 0.95, seed: 1234 },
    };
    const alone = await collect(engine, seeded);
    const others = Array.from({ length: 10 }, (_, i) => collect(engine, {
      requestId: `noise-${i}`, promptTokenIds: seededTokens(5 + i, VOCAB, 300 + i), maxTokens: 12, ignoreEos: true,
      sampling: { ...GREEDY, temperature: 1 },
    }));
    const busy = await collect(engine, { ...seeded, requestId: "seeded-busy" });
    await Promise.all(others);
    expect(tokensOf(busy)).toEqual(tokensOf(alone));
  });
});
