/**
 * OpenAI's Responses API on the real server and the random-weights default model, through the
 * real clients: the openai SDK (responses.create, streamed and not, previous_response_id,
 * retrieve, store: false, another key's response) and the Vercel AI SDK's default OpenAI model
 * (generateText, streamText, a tool call round trip). Usage as each client reports it equals
 * the ledger's rows.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../server/serve.ts";
import { openStore } from "../../service/store/open-store.ts";
import { startTestServer } from "../helpers/server.ts";

const MODEL = "tiny-responses";
const KEYS = ["sk-responses-a", "sk-responses-b"];
const DB = `sqlite:${join(mkdtempSync(join(tmpdir(), "tokenmill-responses-")), "ledger.db")}`;
let server: RunningServer;
let client: OpenAI;
/** Usage each client was told, by x-request-id. */
const told = new Map<string, { input: number; cached: number; output: number }>();

beforeAll(async () => {
  server = await startTestServer({ modelId: MODEL, apiKeys: KEYS, db: { url: DB, replica: "responses" } });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEYS[0], maxRetries: 0 });
}, 120_000);
afterAll(() => server?.close());

async function create(params: OpenAI.Responses.ResponseCreateParamsNonStreaming, as = client): Promise<OpenAI.Responses.Response> {
  const { data, response } = await as.responses.create(params).withResponse();
  const u = data.usage!;
  told.set(response.headers.get("x-request-id")!, { input: u.input_tokens, cached: u.input_tokens_details.cached_tokens, output: u.output_tokens });
  return data;
}

describe("Responses API, openai SDK", () => {
  it("creates a response with a message item, usage, and keeps it for GET", async () => {
    const response = await create({ model: MODEL, input: "Say something.", instructions: "Be brief.", max_output_tokens: 10, temperature: 0 });
    expect(response).toMatchObject({ object: "response", model: MODEL, store: true, instructions: "Be brief." });
    expect(["completed", "incomplete"]).toContain(response.status);
    expect(response.output[0]).toMatchObject({ type: "message", role: "assistant", content: [{ type: "output_text" }] });
    expect(response.output_text.length).toBeGreaterThan(0);
    expect(response.usage!.output_tokens).toBeLessThanOrEqual(10);
    expect(response.usage!.total_tokens).toBe(response.usage!.input_tokens + response.usage!.output_tokens);
    expect(response.usage!.output_tokens_details.reasoning_tokens).toBe(0);
    const fetched = await client.responses.retrieve(response.id);
    expect(fetched.output).toEqual(response.output);
  });

  it("streams OpenAI's typed events in order, and the completed response equals the whole one", async () => {
    const params = { model: MODEL, input: [{ role: "user" as const, content: [{ type: "input_text" as const, text: "Stream a tale." }] }], max_output_tokens: 12, temperature: 0 };
    const whole = await create(params);
    const { data: stream, response: http } = await client.responses.create({ ...params, stream: true }).withResponse();
    const types: string[] = [];
    let text = "";
    let completed: OpenAI.Responses.Response | null = null;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed" || event.type === "response.incomplete") completed = event.response;
    }
    expect(types.slice(0, 4)).toEqual(["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]);
    expect(types.slice(-4)).toEqual(["response.output_text.done", "response.content_part.done", "response.output_item.done", `response.${whole.status}`]);
    expect(text).toBe(whole.output_text);
    expect(completed!.output).toEqual([expect.objectContaining({ type: "message", content: [expect.objectContaining({ text: whole.output_text })] })]);
    expect(completed!.usage!.output_tokens).toBe(whole.usage!.output_tokens);
    const u = completed!.usage!;
    told.set(http.headers.get("x-request-id")!, { input: u.input_tokens, cached: u.input_tokens_details.cached_tokens, output: u.output_tokens });
  });

  it("continues a conversation with previous_response_id, which only its own key may use", async () => {
    const first = await create({ model: MODEL, input: "Remember the word kestrel.", max_output_tokens: 6, temperature: 0 });
    const second = await create({ model: MODEL, input: "What was the word?", previous_response_id: first.id, max_output_tokens: 6, temperature: 0 });
    expect(second.previous_response_id).toBe(first.id);
    // The whole first exchange is in the second prompt: it is longer than the two inputs alone, and cached from the first.
    expect(second.usage!.input_tokens).toBeGreaterThan(first.usage!.input_tokens + first.usage!.output_tokens);
    expect(second.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(0);
    const other = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEYS[1], maxRetries: 0 });
    expect(await other.responses.retrieve(first.id).catch((e: unknown) => e)).toBeInstanceOf(OpenAI.NotFoundError);
    expect(await other.responses.create({ model: MODEL, input: "x", previous_response_id: first.id, max_output_tokens: 2 }).catch((e: unknown) => e)).toBeInstanceOf(OpenAI.NotFoundError);
    const unstored = await create({ model: MODEL, input: "Forget me.", store: false, max_output_tokens: 2 });
    expect(await client.responses.retrieve(unstored.id).catch((e: unknown) => e)).toBeInstanceOf(OpenAI.NotFoundError);
    await client.responses.delete(first.id);
    expect(await client.responses.retrieve(first.id).catch((e: unknown) => e)).toBeInstanceOf(OpenAI.NotFoundError);
  });
});

describe("Responses API, Vercel AI SDK (the default openai(model))", () => {
  const provider = () => createOpenAI({ baseURL: `${server.url}/v1`, apiKey: KEYS[0] });

  it("generateText and streamText agree, greedy", async () => {
    const generated = await generateText({ model: provider()(MODEL), prompt: "Write a line.", maxOutputTokens: 10, temperature: 0 });
    expect(generated.text.length).toBeGreaterThan(0);
    expect(generated.usage.outputTokens).toBeLessThanOrEqual(10);
    const streamed = streamText({ model: provider()(MODEL), prompt: "Write a line.", maxOutputTokens: 10, temperature: 0 });
    expect(await streamed.text).toBe(generated.text);
    expect((await streamed.usage).outputTokens).toBe(generated.usage.outputTokens);
    // A next turn: the SDK names the stored assistant item by item_reference, which the store resolves.
    const bodies: string[] = [];
    const recording = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: KEYS[0], fetch: async (url, init) => {
      bodies.push(String(init?.body));
      return fetch(url, init);
    } });
    const next = await generateText({ model: recording(MODEL), messages: [{ role: "user", content: "Write a line." }, ...generated.response.messages, { role: "user", content: "Another." }], maxOutputTokens: 6, temperature: 0 });
    expect(bodies[0]).toContain("item_reference");
    expect(next.usage.inputTokens).toBeGreaterThan(generated.usage.inputTokens! + generated.usage.outputTokens!);
  });

  it("does a tool call round trip with generateText and tools", async () => {
    const calls: unknown[] = [];
    const result = await generateText({
      model: provider()(MODEL), prompt: "What's the weather in Lima?", temperature: 0, maxOutputTokens: 200,
      providerOptions: { openai: { parallelToolCalls: false } },
      tools: {
        get_weather: tool({
          description: "The weather in a city",
          inputSchema: jsonSchema<{ city: string }>({ type: "object", properties: { city: { type: "string", enum: ["Paris", "Oslo", "Lima"] } }, required: ["city"], additionalProperties: false }),
          execute: async (input) => {
            calls.push(input);
            return { temperature: 18 };
          },
        }),
      },
      // The first step must call the tool; the second answers with its result.
      prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? "required" : "none" }),
      stopWhen: stepCountIs(2),
    });
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ city: expect.stringMatching(/^(Paris|Oslo|Lima)$/) });
    expect(result.steps).toHaveLength(2);
    expect(result.steps[0].toolCalls[0]).toMatchObject({ toolName: "get_weather" });
    expect(result.steps[1].toolCalls).toHaveLength(0);
    expect(result.steps[1].text.length).toBeGreaterThan(0);
  });
});

describe("Responses API, the ledger", () => {
  it("holds exactly the usage each client was told", async () => {
    await server.close();
    const store = await openStore(DB);
    try {
      const rows = await store.db.selectFrom("usage_ledger").selectAll().where("endpoint", "=", "/v1/responses").execute();
      for (const [id, usage] of told) {
        const row = rows.find((r) => r.http_request_id === id);
        expect(row, id).toBeDefined();
        expect([row!.uncached_input_tokens + row!.cached_input_tokens, row!.cached_input_tokens, row!.output_tokens]).toEqual([usage.input, usage.cached, usage.output]);
      }
      expect(rows.length).toBeGreaterThanOrEqual(told.size + 4);
      expect(rows.every((r) => r.status === "completed" || r.status === "error")).toBe(true);
      expect(await store.db.selectFrom("stored_responses").select("id").execute()).not.toHaveLength(0);
    } finally {
      await store.close();
    }
  });
});
