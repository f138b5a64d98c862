/**
 * The engine facade supervises its thread: a thread that dies fails the requests it held,
 * and a new one is started with doubling backoff until one loads.
 */
import { cpSync, mkdtempSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DEFAULT_ENGINE_OPTIONS, Engine, GREEDY, RESTART_BACKOFF, type EngineEvent } from "../../engine/index.ts";
import { EngineError } from "../../engine/common/engine-error.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { writeRandomLoraAdapter } from "../../models/synthetic/lora-adapter.ts";
import { until } from "../helpers/until.ts";

const root = mkdtempSync(join(tmpdir(), "tokenmill-restart-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("engine restarts", () => {
  it("fails held requests with ENGINE_FAILED, refuses new ones while restarting, backs off while a restart fails, then serves", async () => {
    const modelDir = join(root, "model");
    cpSync(ensureDefaultModel(), modelDir, { recursive: true, preserveTimestamps: true });
    const saved = { ...RESTART_BACKOFF };
    Object.assign(RESTART_BACKOFF, { firstMs: 20, maxMs: 1000 });
    const engine = await Engine.start({ ...DEFAULT_ENGINE_OPTIONS, modelDir, kvCacheMemoryBytes: 64 * 1024 ** 2, intraOpThreads: 1, faultInjection: true });
    const events: EngineEvent[] = [];
    engine.onEvent((event) => events.push(event));
    try {
      const held = engine.add({ requestId: "held", promptTokenIds: [1, 2, 3], maxTokens: 5000, sampling: GREEDY, ignoreEos: true });
      const iterator = held[Symbol.asyncIterator]();
      await iterator.next();
      // The next start can't load the model, so restarts fail until it is back.
      renameSync(modelDir, `${modelDir}.away`);
      engine.injectFault();
      const error = await (async () => {
        for (let next = await iterator.next(); !next.done; next = await iterator.next());
      })().catch((err: unknown) => err);
      expect(error).toBeInstanceOf(EngineError);
      expect((error as EngineError).code).toBe("ENGINE_FAILED");
      expect(engine.state).toBe("restarting");
      expect(() => engine.add({ requestId: "new", promptTokenIds: [1], maxTokens: 1, sampling: GREEDY })).toThrow(/restarting/);

      await until(() => events.filter((e) => e.type === "restart-failed").length >= 2, { what: "two failed restarts" });
      renameSync(`${modelDir}.away`, modelDir);
      await until(() => engine.state === "running", { what: "the engine to run again" });
      expect(engine.numRestarts).toBe(1);
      const died = events[0] as Extract<EngineEvent, { type: "died" }>;
      expect(died).toMatchObject({ type: "died", numFailedRequests: 1, restartInMs: 20 });
      const failedDelays = events.filter((e) => e.type === "restart-failed").map((e) => (e as { restartInMs: number }).restartInMs);
      expect(failedDelays.slice(0, 2)).toEqual([40, 80]);
      expect(events.at(-1)!.type).toBe("restarted");

      const outputs = [];
      for await (const output of engine.add({ requestId: "after", promptTokenIds: [1, 2, 3], maxTokens: 3, sampling: GREEDY, ignoreEos: true })) outputs.push(output);
      expect(outputs.flatMap((o) => o.newTokenIds)).toHaveLength(3);
    } finally {
      Object.assign(RESTART_BACKOFF, saved);
      await engine.shutdown();
    }
  });

  it("a restarted thread serves the LoRA adapters the old one had, those loaded at run time included, with the same tokens", async () => {
    const modelDir = ensureDefaultModel();
    const config = readCheckpoint(modelDir).config;
    const paths = ["at-start", "at-run-time"].map((name, i) => {
      const path = join(root, name);
      writeRandomLoraAdapter(path, config, { rank: 4, alpha: 8, seed: 40 + i, std: 0.3 });
      return path;
    });
    const saved = { ...RESTART_BACKOFF };
    Object.assign(RESTART_BACKOFF, { firstMs: 20, maxMs: 1000 });
    const engine = await Engine.start({
      ...DEFAULT_ENGINE_OPTIONS, modelDir, kvCacheMemoryBytes: 64 * 1024 ** 2, intraOpThreads: 1, faultInjection: true, maxLoras: 1, maxLoraRank: 4,
      loraModules: [{ name: "at-start", path: paths[0] }],
    });
    const tokensOf = async (adapter: string) => {
      const outputs = [];
      for await (const output of engine.add({ requestId: `${adapter}-${Math.random()}`, promptTokenIds: [1, 2, 3, 4, 5], maxTokens: 6, sampling: GREEDY, ignoreEos: true, adapter })) outputs.push(output);
      return outputs.flatMap((o) => o.newTokenIds);
    };
    try {
      expect(await engine.loadAdapter("at-run-time", paths[1])).toMatchObject({ name: "at-run-time", rank: 4 });
      await expect(engine.loadAdapter("at-run-time", paths[1])).rejects.toThrow(/already loaded/);
      const before = [await tokensOf("at-start"), await tokensOf("at-run-time")];
      expect(before[0]).not.toEqual(before[1]);
      engine.injectFault();
      await until(() => engine.numRestarts === 1 && engine.state === "running", { what: "the engine to restart" });
      expect(engine.adapters.map((a) => a.name).sort()).toEqual(["at-run-time", "at-start"]);
      expect([await tokensOf("at-start"), await tokensOf("at-run-time")]).toEqual(before);
      expect(await engine.unloadAdapter("at-run-time")).toBe(true);
      expect(() => engine.add({ requestId: "gone", promptTokenIds: [1], maxTokens: 1, sampling: GREEDY, adapter: "at-run-time" })).toThrow(/no LoRA adapter named at-run-time/);
    } finally {
      Object.assign(RESTART_BACKOFF, saved);
      await engine.shutdown();
    }
  });
});
