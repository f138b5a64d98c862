/**
 * LoRA adapters through the engine core on a real runner (a tiny Qwen3 checkpoint, seeded
 * random adapters in PEFT's layout): a mixed batch (base, two adapters, chunked prefill and
 * decode) gives each request exactly the greedy tokens it gets alone; the prefix cache never
 * shares blocks across adapters and hits within one; six adapters over two slots under
 * concurrent load all finish with the tokens each gets alone.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EngineCore, type EngineCoreOptions } from "../../engine/core/engine-core.ts";
import { GREEDY, type EngineRequest } from "../../engine/common/request.ts";
import type { OnnxRunner } from "../../engine/runner/onnx-host/onnx-runner.ts";
import { parseModelConfig } from "../../models/config.ts";
import { readLoraAdapter, type LoraAdapter } from "../../models/lora/adapter.ts";
import { writeRandomLoraAdapter } from "../../models/synthetic/lora-adapter.ts";
import { collect, drain } from "../helpers/core-fakes.ts";
import { loadRunner, seededTokens } from "../helpers/runner.ts";
import { FAMILY_MODELS, tinyCheckpoint } from "../helpers/tiny-models.ts";

const spec = FAMILY_MODELS.find((s) => s.name === "qwen3-qknorm")!;
const dir = tinyCheckpoint(spec);
const config = parseModelConfig(spec.config, spec.name);
const VOCAB = spec.config.vocab_size as number;
const BLOCK_SIZE = 4;
const scratch = mkdtempSync(join(tmpdir(), "tokenmill-lora-engine-"));
const adapters: LoraAdapter[] = [];
let runner: OnnxRunner;

beforeAll(async () => {
  runner = await loadRunner(dir, BLOCK_SIZE, 160, undefined, { maxLoras: 2, maxLoraRank: 4 });
  for (let i = 0; i < 6; i++) {
    const path = join(scratch, `adapter-${i}`);
    writeRandomLoraAdapter(path, config, { rank: i % 2 === 0 ? 4 : 2, alpha: 8, seed: 100 + i, std: 0.3 });
    adapters.push(readLoraAdapter(path, config, `a${i}`));
  }
});
afterAll(async () => {
  await runner?.release();
  rmSync(scratch, { recursive: true, force: true });
});

function makeCore(options: Partial<EngineCoreOptions> = {}, loaded = adapters): EngineCore {
  const core = new EngineCore(runner, { blockSize: BLOCK_SIZE, numBlocks: runner.kvCache.numBlocks, maxNumSeqs: 16, maxNumBatchedTokens: 24, maxModelLen: 96, eosTokenIds: [], ...options });
  for (const adapter of loaded) core.loadAdapter(adapter.name, adapter);
  return core;
}

const request = (requestId: string, prompt: number[], adapter?: string, maxTokens = 8): EngineRequest => ({
  requestId, promptTokenIds: prompt, maxTokens, sampling: GREEDY, ignoreEos: true, ...(adapter ? { adapter } : {}),
});

async function alone(req: EngineRequest): Promise<number[]> {
  const core = makeCore({ enablePrefixCaching: false });
  core.add(req);
  return collect(await drain(core)).get(`${req.requestId}#0`)!.tokenIds;
}

describe("LoRA in the engine core", () => {
  it("gives base, adapter 1 and adapter 2 requests in one batch (chunked prefill, decode) exactly their tokens alone", async () => {
    const prompt = seededTokens(30, VOCAB, 7);
    const requests = [request("base", prompt), request("one", prompt, "a0"), request("two", prompt, "a1"), request("one-b", seededTokens(11, VOCAB, 8), "a0")];
    const core = makeCore({ enablePrefixCaching: false, maxNumBatchedTokens: 16 });
    for (const req of requests) core.add(req);
    const batched = collect(await drain(core));
    const expected: number[][] = [];
    for (const req of requests) expected.push(await alone(req)); // one at a time: the cores share the runner's KV buffers
    requests.forEach((req, i) => expect(batched.get(`${req.requestId}#0`)?.tokenIds, req.requestId).toEqual(expected[i]));
    // The adapters change what the model says, so the comparison above can fail.
    expect(new Set(expected.slice(0, 3).map((tokens) => tokens.join())).size).toBe(3);
  });

  it("keys the prefix cache by adapter: the same prompt under another adapter misses, under the same one hits", async () => {
    const core = makeCore();
    const prompt = seededTokens(21, VOCAB, 9);
    const cachedOf = async (id: string, adapter?: string) => {
      core.add(request(id, prompt, adapter, 2));
      const outputs = await drain(core);
      return outputs.find((o) => o.requestId === id && o.numCachedTokens !== undefined)!.numCachedTokens;
    };
    expect(await cachedOf("first", "a0")).toBe(0);
    expect(await cachedOf("other-adapter", "a1")).toBe(0);
    expect(await cachedOf("base", undefined)).toBe(0);
    expect(await cachedOf("same-adapter", "a0")).toBe(20);
    expect(await cachedOf("base-again", undefined)).toBe(20);
    // Unloaded and loaded again (new weights under the old name): its old blocks are not its own.
    core.unloadAdapter("a0");
    core.loadAdapter("a0", adapters[2]);
    expect(await cachedOf("reloaded", "a0")).toBe(0);
  });

  it("runs 6 adapters over 2 slots under concurrent load: all finish with their tokens alone, never more than 2 adapters running", async () => {
    const core = makeCore({ maxNumSeqs: 8 });
    const requests = Array.from({ length: 14 }, (_, i) => request(`r${i}`, seededTokens(5 + (i % 4), VOCAB, 20 + i), i % 7 === 6 ? undefined : `a${i % 6}`, 4 + (i % 3)));
    for (const req of requests) core.add(req);
    const outputs = [];
    let maxRunning = 0;
    for (let step = 0; core.hasWork; step++) {
      if (step > 2000) throw new Error("the slots never freed");
      outputs.push(...(await core.step()));
      core.checkIntegrity();
      maxRunning = Math.max(maxRunning, new Set(core.scheduler.running.flatMap((seq) => (seq.adapter ? [seq.adapter.name] : []))).size);
    }
    expect(maxRunning).toBe(2);
    expect(core.adapterSlots!.numLoads).toBeGreaterThanOrEqual(6);
    const results = collect(outputs);
    for (const req of requests) {
      expect(results.get(`${req.requestId}#0`)?.finishReason, req.requestId).toBe("length");
      expect(results.get(`${req.requestId}#0`)?.tokenIds, req.requestId).toEqual(await alone(req));
    }
  });

  it("refuses a request for an adapter that is not loaded, and an adapter above the slots' rank", () => {
    const core = makeCore({}, adapters.slice(0, 1));
    expect(() => core.add(request("x", [1, 2, 3], "nope"))).toThrow(/no LoRA adapter named nope/);
    const big = { ...adapters[0], name: "big", maxRank: 8 };
    expect(() => core.loadAdapter("big", big)).toThrow(/rank 8, above --max-lora-rank 4/);
    expect(() => core.loadAdapter("a0", adapters[0])).toThrow(/already loaded/);
  });
});
