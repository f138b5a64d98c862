/**
 * Anthropic's Messages API on the real server and the random-weights default model, through
 * the real @anthropic-ai/sdk: create, stream, a tool_use round trip, count_tokens, Anthropic's
 * error shape and x-api-key; usage as the client reports it equals the ledger's rows.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Anthropic from "@anthropic-ai/sdk";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../server/serve.ts";
import { openStore } from "../../service/store/open-store.ts";
import { startTestServer } from "../helpers/server.ts";

const MODEL = "claude-local";
const KEY = "sk-ant-local-test-key";
const DB = `sqlite:${join(mkdtempSync(join(tmpdir(), "tokenmill-anthropic-")), "ledger.db")}`;
let server: RunningServer;
let client: Anthropic;
/** What the client was told, by request id. */
const told = new Map<string, Anthropic.Usage>();

const WEATHER: Anthropic.Tool = {
  name: "get_weather", description: "The weather in a city",
  input_schema: { type: "object", properties: { city: { type: "string", enum: ["Paris", "Oslo", "Lima"] } }, required: ["city"] },
};

beforeAll(async () => {
  server = await startTestServer({ modelId: MODEL, apiKeys: [KEY], db: { url: DB, replica: "anthropic" } });
  client = new Anthropic({ baseURL: server.url, apiKey: KEY, maxRetries: 0 });
}, 120_000);
afterAll(() => server?.close());

/**
 * Greedy, so that streamed equals whole. NOTE: @anthropic-ai/sdk 1.x dropped `temperature` from its
 * types (it still sends any field given); tokenmill takes it, as older clients send it.
 */
const GREEDY = { temperature: 0 } as object;

async function create(params: Anthropic.MessageCreateParamsNonStreaming): Promise<Anthropic.Message> {
  const { data, response } = await client.messages.create({ ...params, ...GREEDY }).withResponse();
  told.set(response.headers.get("x-request-id")!, data.usage);
  return data;
}

describe("Anthropic Messages API", () => {
  it("answers messages.create with text blocks, a stop reason and usage", async () => {
    const message = await create({ model: MODEL, max_tokens: 12, system: "Be brief.", messages: [{ role: "user", content: "Hello there" }] });
    expect(message).toMatchObject({ type: "message", role: "assistant", model: MODEL, stop_sequence: null });
    expect(message.id).toMatch(/^msg_/);
    expect(message.content[0].type).toBe("text");
    expect(["end_turn", "max_tokens"]).toContain(message.stop_reason);
    expect(message.usage.input_tokens + (message.usage.cache_read_input_tokens ?? 0)).toBeGreaterThan(0);
    expect(message.usage.output_tokens).toBeGreaterThan(0);
    expect(message.usage.output_tokens).toBeLessThanOrEqual(12);
  });

  it("streams with Anthropic's events in order, and the final message equals the whole one", async () => {
    const params = { model: MODEL, max_tokens: 16, system: "You tell careful, short stories. ".repeat(8), messages: [{ role: "user" as const, content: "Stream a short story." }], ...GREEDY };
    const whole = await create(params);
    const stream = client.messages.stream(params);
    const types: string[] = [];
    let started: Anthropic.Usage | null = null;
    stream.on("streamEvent", (event) => {
      types.push(event.type);
      if (event.type === "message_start") started = { ...event.message.usage };
    });
    const final = await stream.finalMessage();
    const { response } = await stream.withResponse();
    told.set(response.headers.get("x-request-id")!, final.usage);
    // message_start already splits the prompt as the final usage does (the second run of this prompt reads the prefix cache).
    expect(final.usage.cache_read_input_tokens).toBeGreaterThan(0);
    expect({ input: started!.input_tokens, cached: started!.cache_read_input_tokens }).toEqual({ input: final.usage.input_tokens, cached: final.usage.cache_read_input_tokens });
    expect(final.content).toEqual(whole.content);
    expect(final.stop_reason).toBe(whole.stop_reason);
    expect(final.usage.output_tokens).toBe(whole.usage.output_tokens);
    expect(final.usage.input_tokens + (final.usage.cache_read_input_tokens ?? 0)).toBe(whole.usage.input_tokens + (whole.usage.cache_read_input_tokens ?? 0));
    expect(types.slice(0, 2)).toEqual(["message_start", "content_block_start"]);
    expect(types.slice(-3)).toEqual(["content_block_stop", "message_delta", "message_stop"]);
    expect(types.filter((t) => t === "content_block_delta").length).toBeGreaterThan(0);
  });

  it("does a tool_use round trip: a forced call, then its tool_result answered", async () => {
    const first = await create({
      model: MODEL, max_tokens: 60, tools: [WEATHER], tool_choice: { type: "tool", name: "get_weather" },
      messages: [{ role: "user", content: "What's the weather in Paris?" }],
    });
    expect(first.stop_reason).toBe("tool_use");
    const use = first.content.find((b): b is Anthropic.ToolUseBlock => b.type === "tool_use")!;
    expect(use).toMatchObject({ type: "tool_use", name: "get_weather", input: { city: expect.any(String) } });
    expect(use.id).toMatch(/^toolu_/);
    const second = await create({
      model: MODEL, max_tokens: 10, tools: [WEATHER],
      messages: [
        { role: "user", content: "What's the weather in Paris?" },
        { role: "assistant", content: first.content },
        { role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "18 C and sunny" }] },
      ],
    });
    expect(second.role).toBe("assistant");
    expect(second.content.length).toBeGreaterThan(0);

    const stream = client.messages.stream({
      model: MODEL, max_tokens: 60, tools: [WEATHER], tool_choice: { type: "any" }, ...GREEDY,
      messages: [{ role: "user", content: "Weather in Oslo?" }],
    });
    const final = await stream.finalMessage();
    const { response } = await stream.withResponse();
    told.set(response.headers.get("x-request-id")!, final.usage);
    expect(final.stop_reason).toBe("tool_use");
    expect(final.content.find((b) => b.type === "tool_use")).toMatchObject({ name: "get_weather", input: { city: expect.any(String) } });
  });

  it("counts tokens as messages.create bills them", async () => {
    const params = { model: MODEL, system: "Count me.", messages: [{ role: "user" as const, content: "How many tokens is this?" }], tools: [WEATHER] };
    const counted = await client.messages.countTokens(params);
    const message = await create({ ...params, max_tokens: 2 });
    expect(counted.input_tokens).toBe(message.usage.input_tokens + (message.usage.cache_read_input_tokens ?? 0));
  });

  it("refuses bad requests in Anthropic's error shape, and checks x-api-key", async () => {
    const missing = await client.messages.create({ model: MODEL, messages: [{ role: "user", content: "x" }] } as unknown as Anthropic.MessageCreateParamsNonStreaming).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(Anthropic.BadRequestError);
    expect((missing as InstanceType<typeof Anthropic.BadRequestError>).error).toMatchObject({ type: "error", error: { type: "invalid_request_error", message: expect.stringContaining("max_tokens") } });
    const unknown = await client.messages.create({ model: "no-such-model", max_tokens: 2, messages: [{ role: "user", content: "x" }] }).catch((e: unknown) => e);
    expect(unknown).toBeInstanceOf(Anthropic.NotFoundError);
    const wrongKey = new Anthropic({ baseURL: server.url, apiKey: "sk-ant-wrong", maxRetries: 0 });
    const refused = await wrongKey.messages.create({ model: MODEL, max_tokens: 2, messages: [{ role: "user", content: "x" }] }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(Anthropic.AuthenticationError);
    expect((refused as InstanceType<typeof Anthropic.AuthenticationError>).error).toMatchObject({ type: "error", error: { type: "authentication_error" } });
    const raw = await fetch(`${server.url}/v1/messages`, { method: "POST", headers: { "x-api-key": KEY, "content-type": "application/json", "anthropic-version": "2023-06-01" }, body: "{not json" });
    expect(raw.status).toBe(400);
    expect(await raw.json()).toMatchObject({ type: "error", error: { type: "invalid_request_error" } });
  });

  it("holds in the ledger exactly the usage each client was told", async () => {
    await server.close();
    const store = await openStore(DB);
    try {
      const rows = await store.db.selectFrom("usage_ledger").selectAll().where("endpoint", "=", "/v1/messages").execute();
      expect(rows.length).toBeGreaterThanOrEqual(told.size);
      for (const [id, usage] of told) {
        const row = rows.find((r) => r.http_request_id === id);
        expect(row, id).toBeDefined();
        expect([row!.uncached_input_tokens, row!.cached_input_tokens, row!.output_tokens]).toEqual([usage.input_tokens, usage.cache_read_input_tokens ?? 0, usage.output_tokens]);
        expect(row!.status).toBe("completed");
      }
    } finally {
      await store.close();
    }
  });
});
