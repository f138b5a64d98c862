/**
 * Structured outputs on the random-weights default model, through the openai SDK: for each
 * grammar (a strict nested schema, json_object, a regex, a choice, a named tool, required with
 * two tools) 100 requests under greedy, temperature 1, top-p 0.9 and a repetition penalty.
 * Every output that stops parses and validates (ajv, strict), matches in full, or is a
 * choice; every forced call has valid arguments for its tool; every output cut at max_tokens
 * is a prefix the grammar accepts. Also the SDK's parse() with zod, and streaming equal to
 * non-streaming for a seeded request.
 */
import { Ajv } from "ajv";
import OpenAI from "openai";
import { zodResponseFormat } from "openai/helpers/zod";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { GrammarCore } from "../../engine/grammar/grammar-core.ts";
import type { GrammarSpec } from "../../engine/common/grammar-spec.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import type { RunningServer } from "../../server/serve.ts";
import { startTestServer } from "../helpers/server.ts";

const MODEL = "tokenmill-tiny-qwen3";
const SAMPLINGS = [
  { temperature: 0 },
  { temperature: 1 },
  { temperature: 1, top_p: 0.9 },
  { temperature: 0.8, repetition_penalty: 1.3 },
] as const;

const PET = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 12 },
    level: { type: "integer", minimum: 1, maximum: 5 },
    kind: { enum: ["cat", "dog", "bird"] },
    owner: {
      type: "object", properties: { city: { type: "string", maxLength: 8 }, verified: { type: "boolean" } },
      required: ["city", "verified"], additionalProperties: false,
    },
    tags: { type: "array", items: { type: "string", maxLength: 6 }, maxItems: 3 },
  },
  required: ["name", "level", "kind", "owner", "tags"],
  additionalProperties: false,
};
const WEATHER = {
  type: "object", properties: { city: { type: "string", maxLength: 10 }, unit: { enum: ["c", "f"] } }, required: ["city", "unit"], additionalProperties: false,
};
const TIME = { type: "object", properties: { zone: { type: "string", maxLength: 6 } }, required: ["zone"], additionalProperties: false };
const REGEX = "[A-Z][a-z]{2,5}-[0-9]{3}";
const tool = (name: string, parameters: object) => ({ type: "function" as const, function: { name, parameters: parameters as Record<string, unknown> } });

describe("structured outputs on the default model", () => {
  let server: RunningServer;
  let sdk: OpenAI;
  let grammars: GrammarCore;
  const ajv = new Ajv({ strict: true });
  beforeAll(async () => {
    server = await startTestServer();
    sdk = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const checkpoint = readCheckpoint(ensureDefaultModel());
    grammars = await GrammarCore.create(checkpoint.tokenizerJson, 151936, checkpoint.eosTokenIds);
  }, 120_000);
  afterAll(async () => server?.close());

  /** 100 requests, 25 per sampling setting, each with its own prompt and seed. */
  const hundred = (extra: Record<string, unknown>, maxTokens = 120) => Promise.all(Array.from({ length: 100 }, (_, i) => sdk.chat.completions.create({
    model: MODEL, messages: [{ role: "user", content: `request ${i}: answer in the format asked` }], max_tokens: maxTokens, seed: i,
    ...SAMPLINGS[i % SAMPLINGS.length], ...extra,
  } as OpenAI.ChatCompletionCreateParamsNonStreaming)));

  const checkAll = async (replies: OpenAI.ChatCompletion[], spec: GrammarSpec, valid: (text: string) => boolean) => {
    const counts = { stop: 0, length: 0 };
    for (const reply of replies) {
      const { message, finish_reason: finish } = reply.choices[0];
      const text = message.content ?? "";
      if (finish === "length") {
        counts.length++;
        expect(await grammars.acceptsText(spec, text), text).toBe(true);
      } else {
        counts.stop++;
        expect(finish).toBe("stop");
        // Valid UTF-8 all through (xgrammar alone lets some invalid sequences through; see utf8-guard.ts).
        expect(text).not.toContain("\uFFFD");
        expect(valid(text), text).toBe(true);
      }
    }
    expect(counts.stop).toBeGreaterThan(0);
    return counts;
  };

  it("a strict nested schema: every finished output parses and validates", async () => {
    const validate = ajv.compile(PET);
    const replies = await hundred({ response_format: { type: "json_schema", json_schema: { name: "pet", schema: PET, strict: true } } });
    await checkAll(replies, { type: "json_schema", schema: PET }, (text) => validate(JSON.parse(text)));
  }, 180_000);

  it("maxLength strings under temperature 1 are legal JSON (no raw control characters; escapes allowed)", async () => {
    const schema = { type: "object", properties: { s: { type: "string", minLength: 4, maxLength: 10 } }, required: ["s"], additionalProperties: false };
    const validate = ajv.compile(schema);
    const replies = await Promise.all(Array.from({ length: 40 }, (_, i) => sdk.chat.completions.create({
      model: MODEL, messages: [{ role: "user", content: `string ${i}` }], max_tokens: 60, temperature: 1, seed: 1000 + i,
      response_format: { type: "json_schema", json_schema: { name: "s", schema, strict: true } },
    })));
    for (const reply of replies.filter((r) => r.choices[0].finish_reason === "stop")) {
      const text = reply.choices[0].message.content!;
      expect(text).not.toMatch(/[\u0000-\u001f]/);
      expect(validate(JSON.parse(text)), text).toBe(true);
    }
  }, 120_000);

  it("json_object: every finished output is a JSON object", async () => {
    // NOTE: free-form keys and values run long on random weights; most of these end at max_tokens, as prefixes.
    const replies = await hundred({ response_format: { type: "json_object" } }, 48);
    await checkAll(replies, { type: "json_object" }, (text) => {
      const value = JSON.parse(text) as unknown;
      return value !== null && typeof value === "object" && !Array.isArray(value);
    });
  }, 180_000);

  it("a regex (vLLM's guided_regex): every finished output matches in full", async () => {
    const replies = await hundred({ guided_regex: REGEX });
    await checkAll(replies, { type: "regex", pattern: REGEX }, (text) => new RegExp(`^(?:${REGEX})$`).test(text));
  }, 180_000);

  it("a choice (vLLM's guided_choice): every output is one of the choices", async () => {
    const choices = ["red", "green", "blue sky"];
    const replies = await hundred({ guided_choice: choices });
    const counts = await checkAll(replies, { type: "choice", choices }, (text) => choices.includes(text));
    expect(counts.length).toBe(0);
  }, 180_000);

  /** The one call of each reply the grammar finished (a reply cut at max_tokens has none yet). */
  const singleCalls = (replies: OpenAI.ChatCompletion[]) => replies.flatMap((reply) => {
    const choice = reply.choices[0];
    if (choice.finish_reason === "length") return [];
    expect(choice.finish_reason).toBe("tool_calls");
    const toolCalls = (choice.message.tool_calls ?? []) as OpenAI.ChatCompletionMessageFunctionToolCall[];
    expect(toolCalls).toHaveLength(1);
    return [toolCalls[0].function];
  });

  it("a named tool: every call is to it, with arguments valid for its schema", async () => {
    const validate = ajv.compile(WEATHER);
    const replies = await hundred({ tools: [tool("get_weather", WEATHER), tool("get_time", TIME)], tool_choice: { type: "function", function: { name: "get_weather" } } });
    const calls = singleCalls(replies);
    for (const call of calls) {
      expect(call.name).toBe("get_weather");
      expect(validate(JSON.parse(call.arguments)), call.arguments).toBe(true);
    }
    expect(calls.length).toBeGreaterThan(50);
  }, 180_000);

  it("tool_choice required with two tools: every call names one of them with valid arguments", async () => {
    const validators: Record<string, ReturnType<Ajv["compile"]>> = { get_weather: ajv.compile(WEATHER), get_time: ajv.compile(TIME) };
    const replies = await hundred({ tools: [tool("get_weather", WEATHER), tool("get_time", TIME)], tool_choice: "required", parallel_tool_calls: false });
    const calls = singleCalls(replies);
    for (const call of calls) {
      expect(validators[call.name], call.name).toBeDefined();
      expect(validators[call.name](JSON.parse(call.arguments)), call.arguments).toBe(true);
    }
    expect(calls.length).toBeGreaterThan(0);
  }, 180_000);

  it("the SDK's chat.completions.parse with a zod schema gives a parsed object", async () => {
    const Pet = z.object({ name: z.string().max(10), legs: z.number().int().min(0).max(8), kind: z.enum(["cat", "dog"]) });
    const completion = await sdk.chat.completions.parse({
      model: MODEL, messages: [{ role: "user", content: "a pet" }], max_tokens: 100, temperature: 0,
      response_format: zodResponseFormat(Pet, "pet"),
    });
    const parsed = completion.choices[0].message.parsed;
    expect(parsed).not.toBeNull();
    expect(Pet.parse(parsed)).toEqual(parsed);
  });

  it("streams the same text as the non-streamed reply for a seeded request", async () => {
    const body = {
      model: MODEL, messages: [{ role: "user" as const, content: "stream it" }], max_tokens: 120, temperature: 1, seed: 7,
      response_format: { type: "json_schema" as const, json_schema: { name: "pet", schema: PET, strict: true } },
    };
    const whole = await sdk.chat.completions.create(body);
    let streamed = "";
    for await (const chunk of await sdk.chat.completions.create({ ...body, stream: true })) streamed += chunk.choices[0]?.delta?.content ?? "";
    expect(streamed).toBe(whole.choices[0].message.content);
  });
});
