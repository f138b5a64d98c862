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
});
