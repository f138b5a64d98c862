/**
 * The settle path on the real server and model: every request is settled exactly once, with
 * the engine's exact usage, however it ended: finished, cut off by the server, or left by
 * its client mid-stream.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Settlement } from "../../service/settlement.ts";
import { serverShuttingDown } from "../../server/common/api-error.ts";
import type { RunningServer } from "../../server/serve.ts";
import { startTestServer } from "../helpers/server.ts";
import { until } from "../helpers/until.ts";

const MODEL = "tokenmill-tiny-qwen3";
let server: RunningServer;
let client: OpenAI;
const settlements: Settlement[] = [];

beforeAll(async () => {
  server = await startTestServer();
  server.ctx.settleListeners.push((s) => void settlements.push(s));
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(async () => server.close());

const backend = () => server.ctx.models.local(MODEL);

async function settlementOf(requestId: string): Promise<Settlement> {
  const mine = () => settlements.filter((s) => s.requestId === requestId);
  await until(() => mine().length > 0, { what: `request ${requestId}'s settlement` });
  // NOTE: a fixed wait on purpose: it looks for a second settlement that must never come.
  await new Promise((r) => setTimeout(r, 50));
  expect(mine()).toHaveLength(1);
  return mine()[0];
}

async function generated(): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Number(text.split("\n").find((l) => l.startsWith(`tokenmill_generation_tokens_total{model="${MODEL}"} `))?.split(" ")[1]);
}

/**
 * Streams a legacy completion (one chunk per generated token) and reads it to its end, or `stopAfter` chunks.
 * `onEvents` hears the count of events read so far after each read.
 */
async function streamCompletion(maxTokens: number, stopAfter?: number, onEvents?: (numEvents: number) => void): Promise<{ requestId: string; numTokenChunks: number; events: string[] }> {
  const controller = new AbortController();
  const response = await fetch(`${server.url}/v1/completions`, {
    method: "POST", headers: { "content-type": "application/json" }, signal: controller.signal,
    body: JSON.stringify({ model: MODEL, prompt: [9707, 11, 1879], max_tokens: maxTokens, ignore_eos: true, stream: true }),
  });
  const requestId = response.headers.get("x-request-id")!;
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const events: string[] = [];
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const frames = buffer.split("\n\n");
      buffer = frames.pop()!;
      events.push(...frames.map((f) => f.slice("data: ".length)));
      onEvents?.(events.length);
      if (stopAfter !== undefined && events.length >= stopAfter) {
        // NOTE: one read may bring several events under load; the client reads exactly stopAfter of them.
        events.length = stopAfter;
        controller.abort();
        break;
      }
    }
  } catch {
    // the client's own abort
  }
  const numTokenChunks = events.filter((e) => e !== "[DONE]" && "choices" in JSON.parse(e) && JSON.parse(e).choices.length > 0).length;
  return { requestId, numTokenChunks, events };
}

describe("settlement", () => {
  it("settles a finished request once, with the usage the client was told", async () => {
    const response = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "settle me" }], max_tokens: 7, temperature: 0 }).withResponse();
    const settlement = await settlementOf(response.response.headers.get("x-request-id")!);
    const usage = response.data.usage!;
    expect(settlement).toEqual({
      id: expect.any(String), requestId: expect.any(String), keyId: "anonymous", model: MODEL, backend: `local:${MODEL}`, endpoint: "/v1/chat/completions",
      startedMs: expect.any(Number), finishedMs: expect.any(Number), ttftMs: expect.any(Number), outcome: "finished",
      usage: { promptTokens: usage.prompt_tokens, cachedPromptTokens: usage.prompt_tokens_details!.cached_tokens, completionTokens: 7 },
    });
  });

  it("a stream the server cuts off mid-way is settled with exactly the tokens it streamed", async () => {
    // The server cuts the stream once the client has read a few tokens, however slow the machine.
    let cutSent = false;
    const cut = streamCompletion(4000, undefined, (numEvents) => {
      if (cutSent || numEvents < 5) return;
      cutSent = true;
      for (const controller of backend().inFlightControllers) controller.abort(serverShuttingDown());
    });
    const { requestId, numTokenChunks, events } = await cut;
    expect(JSON.parse(events.at(-1)!).error.code).toBe("server_shutting_down");
    expect(numTokenChunks).toBeGreaterThan(3);
    const settlement = await settlementOf(requestId);
    expect(settlement).toMatchObject({ outcome: "aborted", usage: { promptTokens: 3, completionTokens: numTokenChunks }, error: { status: 503, code: "server_shutting_down" } });
  });

  it("a client that leaves mid-stream is settled as disconnected with the tokens it was sent, not those made after it left", async () => {
    const before = await generated();
    const { requestId, numTokenChunks } = await streamCompletion(4000, 5);
    expect(numTokenChunks).toBe(5);
    const settlement = await settlementOf(requestId);
    for (let i = 0; i < 50 && backend().numInFlight > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(settlement.outcome).toBe("disconnected");
    expect(settlement.usage.promptTokens).toBe(3);
    // The server may have sent a few more than the client read before it noticed; the engine may have made more still.
    expect(settlement.usage.completionTokens).toBeGreaterThanOrEqual(5);
    expect(settlement.usage.completionTokens).toBeLessThanOrEqual((await generated()) - before);
  });

  it("settles a request refused by the engine's checks as rejected, with nothing used", async () => {
    const error = await client.completions.create({ model: MODEL, prompt: [1, 2, 151936], max_tokens: 2 }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    const requestId = (error as InstanceType<typeof OpenAI.APIError>).headers?.get("x-request-id");
    const settlement = await settlementOf(requestId!);
    expect(settlement).toEqual({
      id: expect.any(String), requestId, keyId: "anonymous", model: MODEL, backend: `local:${MODEL}`, endpoint: "/v1/completions", startedMs: expect.any(Number), finishedMs: expect.any(Number), ttftMs: null,
      outcome: "rejected", usage: { promptTokens: 0, cachedPromptTokens: 0, completionTokens: 0 }, error: { status: 400, code: null },
    });
  });
});
