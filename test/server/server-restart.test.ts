/**
 * The engine thread dies (a fault injected through a hook only tests enable) under the real
 * server: the requests it held fail, /health says 503 while it restarts and 200 after, the
 * restart is counted, and the server then serves as before.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Engine } from "../../engine/index.ts";
import type { RunningServer } from "../../server/serve.ts";
import { startTestServer } from "../helpers/server.ts";
import { until } from "../helpers/until.ts";

const MODEL = "tokenmill-tiny-qwen3";
let server: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  server = await startTestServer({ faultInjection: true });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(async () => server.close());

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Number(text.split("\n").find((l) => l.startsWith(`${name}{model="${MODEL}"} `))?.split(" ")[1]);
}

describe("an engine thread that dies", () => {
  it("fails only the requests it held, restarts with /health 503 then 200, counts the restart, and serves again", async () => {
    const engine = server.ctx.models.local(MODEL).engine as Engine;
    const before = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "before" }], max_tokens: 6, temperature: 0 });
    expect(await metric("tokenmill_engine_restarts_total")).toBe(0);

    const stream = await client.chat.completions.create({
      model: MODEL, messages: [{ role: "user", content: "a long one" }], max_tokens: 4000, stream: true, ignore_eos: true,
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    const whole = client.chat.completions.create({
      model: MODEL, messages: [{ role: "user", content: "a long whole one" }], max_tokens: 4000, ignore_eos: true,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming).then(() => null, (err: unknown) => err);
    let numChunks = 0;
    let streamError: unknown = null;
    try {
      for await (const _chunk of stream) if (++numChunks === 3) engine.injectFault();
    } catch (err) {
      streamError = err;
    }
    expect(numChunks).toBeGreaterThanOrEqual(3);
    expect(streamError).toBeInstanceOf(OpenAI.APIError);
    expect((streamError as InstanceType<typeof OpenAI.APIError>).code).toBe("engine_failed");
    const wholeError = await whole;
    expect(wholeError).toBeInstanceOf(OpenAI.APIError);
    expect((wholeError as InstanceType<typeof OpenAI.APIError>).status).toBe(500);

    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(503);
    expect(((await health.json()) as { error: { code: string } }).error.code).toBe("engine_restarting");
    const refused = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "during" }], max_tokens: 2 }),
    });
    expect(refused.status).toBe(503);
    expect(refused.headers.get("retry-after")).toBe("2");

    await until(async () => (await fetch(`${server.url}/health`)).status === 200, { timeoutMs: 30_000, everyMs: 100, what: "/health to answer 200 again" });
    expect(engine.state).toBe("running");
    expect(await metric("tokenmill_engine_restarts_total")).toBe(1);

    const after = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "before" }], max_tokens: 6, temperature: 0 });
    expect(after.choices[0].message.content).toBe(before.choices[0].message.content);
    expect(server.ctx.models.local(MODEL).numInFlight).toBe(0);
    expect(await metric("tokenmill_generation_tokens_total")).toBeGreaterThan(0);
  });
});
