/**
 * /v1/embeddings in the HTTP layer, through app.inject() with a fake engine: the engine
 * requests it makes (prefill-only, the model's pooling), how many inputs run at once, --task,
 * a failing input, a client that leaves, and the one settlement each request gets.
 */
import type { FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import type { EngineOutput, EngineRequest } from "../../server/common/engine-api.ts";
import { buildApp } from "../../server/app.ts";
import type { Settlement } from "../../service/settlement.ts";
import { FakeEngine, FakeTokenizer, MODEL_ID, backendOf, fakeEmbedding, makeContext, type BackendOverrides } from "../helpers/server-fakes.ts";
import { until } from "../helpers/until.ts";

/** A fake engine that counts how many requests it runs at once. */
class CountingEngine extends FakeEngine {
  live = 0;
  maxLive = 0;

  override add(request: EngineRequest, signal?: AbortSignal): AsyncIterable<EngineOutput> {
    const outputs = super.add(request, signal);
    this.maxLive = Math.max(this.maxLive, ++this.live);
    return this.counted(outputs);
  }

  private async *counted(outputs: AsyncIterable<EngineOutput>): AsyncGenerator<EngineOutput> {
    try {
      await new Promise((resolve) => setTimeout(resolve, 2));
      yield* outputs;
    } finally {
      this.live--;
    }
  }
}

let app: FastifyInstance;
afterEach(async () => {
  // NOTE: fetch keeps its connection alive for 4 s; close() would wait for it.
  app?.server.closeAllConnections();
  await app?.close();
});

function setUp(overrides: BackendOverrides = {}, engine = new CountingEngine()) {
  const ctx = makeContext({ engine, tokenizer: new FakeTokenizer(), ...overrides });
  const settlements: Settlement[] = [];
  ctx.settleListeners.push((s) => void settlements.push(s));
  app = buildApp(ctx, {});
  return { ctx, engine, settlements };
}

const embed = (payload: Record<string, unknown>) => app.inject({ method: "POST", url: "/v1/embeddings", payload: { model: "tiny", ...payload } });

describe("/v1/embeddings over a fake engine", () => {
  it("runs each input as one prefill-only request with the model's pooling, at most --max-num-seqs at once, settled once", async () => {
    const { engine, settlements, ctx } = setUp({ pooling: "mean", limits: { maxNumSeqs: 3, maxQueuedRequests: 0 } });
    const inputs = Array.from({ length: 10 }, (_, i) => `text ${"x".repeat(i)}`);
    const res = await embed({ input: inputs, encoding_format: "float" });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body.data.map((d: { index: number }) => d.index)).toEqual(inputs.map((_, i) => i));
    inputs.forEach((text, i) => expect(body.data[i].embedding).toEqual(Array.from(fakeEmbedding(Array.from(text, (c) => c.charCodeAt(0))))));
    const numTokens = inputs.reduce((sum, t) => sum + t.length, 0);
    expect(body.usage).toEqual({ prompt_tokens: numTokens, total_tokens: numTokens });
    expect(engine.requests.map((r) => [r.pooling, r.maxTokens])).toEqual(inputs.map(() => ["mean", 0]));
    expect(engine.maxLive).toBe(3);
    expect(settlements).toHaveLength(1);
    expect(settlements[0]).toMatchObject({ endpoint: "/v1/embeddings", outcome: "finished", usage: { promptTokens: numTokens, cachedPromptTokens: 0, completionTokens: 0 } });
    expect(backendOf(ctx).numInFlight).toBe(0);
  });

  it("--task embed refuses generation, --task generate refuses embeddings, each with a 400 model_not_supported", async () => {
    setUp({ task: "embed" });
    expect((await embed({ input: "hi" })).statusCode).toBe(200);
    for (const [url, payload] of [["/v1/chat/completions", { messages: [{ role: "user", content: "hi" }] }], ["/v1/completions", { prompt: "hi" }], ["/v1/responses", { input: "hi" }]] as const) {
      const res = await app.inject({ method: "POST", url, payload: { model: "tiny", ...payload } });
      expect(res.statusCode, url).toBe(400);
      expect(res.json().error).toMatchObject({ type: "invalid_request_error", param: "model", code: "model_not_supported" });
    }
    const messages = await app.inject({ method: "POST", url: "/v1/messages", payload: { model: "tiny", max_tokens: 4, messages: [{ role: "user", content: "hi" }] } });
    expect(messages.statusCode).toBe(400);
    expect(messages.json()).toMatchObject({ type: "error", error: { type: "invalid_request_error" } });
    await app.close();
    setUp({ task: "generate" });
    const res = await embed({ input: "hi" });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ param: "model", code: "model_not_supported" });
    expect((await app.inject({ method: "POST", url: "/v1/completions", payload: { model: "tiny", prompt: "hi", max_tokens: 2 } })).statusCode).toBe(200);
  });

  it("fails the whole request when one input's engine request fails, and runs no more inputs", async () => {
    const engine = new CountingEngine();
    const { settlements } = setUp({ limits: { maxNumSeqs: 2, maxQueuedRequests: 0 } }, engine);
    engine.script({ kind: "generate" }, { kind: "fail", code: "RUNTIME_FAILED" });
    const res = await embed({ input: Array.from({ length: 8 }, (_, i) => `t${i}`) });
    expect(res.statusCode).toBe(500);
    expect(engine.requests.length).toBeLessThanOrEqual(3);
    await settled(settlements);
    expect(settlements[0].outcome).toBe("errored");
  });

  it("checks every input before running any: a bad one costs nothing", async () => {
    const { engine, settlements } = setUp();
    const res = await embed({ input: [[1, 2, 3], [1, 2, 3], [10 ** 9]] });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ param: "input" });
    expect(engine.requests).toHaveLength(0);
    expect(settlements.every((s) => s.usage.promptTokens === 0)).toBe(true);
  });

  it("stops a client's work when it leaves, and settles it as disconnected", async () => {
    const engine = new CountingEngine();
    const { settlements, ctx } = setUp({ limits: { maxNumSeqs: 2, maxQueuedRequests: 0 } }, engine);
    engine.script({ kind: "hang" }, { kind: "hang" });
    const controller = new AbortController();
    const pending = fetchLeaving(controller);
    // NOTE: it leaves once both of its first inputs are in the engine, not after a fixed time (CI is slow).
    await until(() => engine.requests.length === 2);
    controller.abort();
    await pending;
    await settled(settlements);
    expect(settlements[0].outcome).toBe("disconnected");
    expect(engine.requests).toHaveLength(2);
    expect(engine.signals.every((s) => s?.aborted)).toBe(true);
    expect(backendOf(ctx).numInFlight).toBe(0);
  });
});

/** Waits for the one settlement (an error's comes after its response). */
async function settled(settlements: Settlement[]): Promise<void> {
  await until(() => settlements.length > 0);
  expect(settlements).toHaveLength(1);
}

/** A real HTTP request (inject can't hang up) that the controller aborts. */
async function fetchLeaving(controller: AbortController): Promise<void> {
  const url = await app.listen({ port: 0, host: "127.0.0.1" });
  await fetch(`${url}/v1/embeddings`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: MODEL_ID, input: ["a", "b", "c", "d"] }), signal: controller.signal,
  }).catch(() => undefined);
}
