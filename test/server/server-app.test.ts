/**
 * The HTTP layer through app.inject() with a fake engine and tokenizer: validation and
 * OpenAI's error shape, context-length checks, admission, engine faults, the body →
 * EngineRequest mapping, response shapes (whole and streamed), completions prompts and
 * legacy logprobs, metrics and request ids.
 */
import type { FastifyInstance, LightMyRequestResponse } from "fastify";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Settlement } from "../../service/settlement.ts";
import { serverShuttingDown } from "../../server/common/api-error.ts";
import { buildApp } from "../../server/app.ts";
import type { ServerContext } from "../../server/http/server-context.ts";
import type { LocalBackend } from "../../server/backends/model-backend.ts";
import {
  FakeEngine, FakeTokenizer, MAX_MODEL_LEN, MODEL_ID, backendOf, chatPromptOf, generatedText, makeContext, makeStats, type BackendOverrides,
} from "../helpers/server-fakes.ts";
import { until } from "../helpers/until.ts";

let engine: FakeEngine;
let tokenizer: FakeTokenizer;
let ctx: ServerContext;
/** The context's one model: its admission counters and its engine. */
let model: LocalBackend;
let app: FastifyInstance;

function setUp(overrides: BackendOverrides = {}, bodyLimitBytes?: number): void {
  engine = new FakeEngine();
  tokenizer = new FakeTokenizer();
  ctx = makeContext({ engine, tokenizer, ...overrides });
  model = backendOf(ctx);
  app = buildApp(ctx, { bodyLimitBytes });
}

beforeEach(() => setUp());
afterEach(async () => {
  await app.close();
});

const USER_HI = [{ role: "user", content: "hi" }];
/** "user:hi": one token per character. */
const USER_HI_TOKENS = chatPromptOf(USER_HI).length;

const chat = (extra: Record<string, unknown> = {}) =>
  app.inject({ method: "POST", url: "/v1/chat/completions", payload: { model: "tiny", messages: USER_HI, max_tokens: 3, ...extra } });
const complete = (extra: Record<string, unknown> = {}) =>
  app.inject({ method: "POST", url: "/v1/completions", payload: { model: "tiny", prompt: "hello", max_tokens: 3, ...extra } });

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** /health's 503: OpenAI's error shape, plus each model's state. */
function expectHealthDown(res: LightMyRequestResponse, code: string, state?: string): void {
  expect(res.statusCode).toBe(503);
  const body = res.json() as Json;
  expect(Object.keys(body).sort()).toEqual(["error", "models"]);
  expect(body.error).toMatchObject({ type: "server_error", code });
  if (state) expect(body.models[MODEL_ID].state).toBe(state);
}

function expectError(res: LightMyRequestResponse, status: number, expected: { type?: string; param?: string | null; code?: string | null } = {}): Json {
  expect(res.statusCode).toBe(status);
  const body = res.json() as Json;
  expect(Object.keys(body)).toEqual(["error"]);
  expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
  expect(typeof body.error.message).toBe("string");
  expect(body.error.message.length).toBeGreaterThan(0);
  expect(body.error.type).toBe(expected.type ?? (status < 500 ? "invalid_request_error" : "server_error"));
  if (expected.param !== undefined) expect(body.error.param).toBe(expected.param);
  if (expected.code !== undefined) expect(body.error.code).toBe(expected.code);
  return body.error;
}

/** The `data:` payloads of an SSE body, and whether it ended with [DONE]. */
function sseEvents(res: LightMyRequestResponse): { events: Json[]; done: boolean } {
  const data = res.body.split("\n\n").filter((frame) => frame.length > 0).map((frame) => {
    expect(frame.startsWith("data: ")).toBe(true);
    return frame.slice("data: ".length);
  });
  const done = data.at(-1) === "[DONE]";
  expect(data.filter((d) => d === "[DONE]")).toHaveLength(done ? 1 : 0);
  return { events: data.filter((d) => d !== "[DONE]").map((d) => JSON.parse(d) as Json), done };
}

describe("request validation", () => {
  it("rejects malformed JSON with 400 invalid_json", async () => {
    const res = await app.inject({ method: "POST", url: "/v1/chat/completions", headers: { "content-type": "application/json" }, payload: '{"model": "tiny",' });
    expectError(res, 400, { code: "invalid_json", param: null });
  });

  it.each([['"hello"'], ["42"], ["null"], ["[1, 2]"]])("rejects the non-object body %s with 400", async (payload) => {
    const res = await app.inject({ method: "POST", url: "/v1/completions", headers: { "content-type": "application/json" }, payload });
    expectError(res, 400);
  });

  it.each([
    ["messages", { messages: "hi" }],
    ["messages", { messages: [] }],
    ["temperature", { temperature: "hot" }],
    ["temperature", { temperature: 3 }],
    ["n", { n: 0 }],
    ["top_logprobs", { logprobs: true, top_logprobs: 21 }],
    ["top_logprobs", { top_logprobs: 2 }],
    ["stop", { stop: ["a", "b", "c", "d", "e"] }],
    ["max_tokens", { max_tokens: 0 }],
    ["stream", { stream: "yes" }],
  ])("rejects a wrong %s with 400 naming the field", async (param, extra) => {
    expectError(await chat(extra), 400, { param, code: null });
    expect(engine.requests).toHaveLength(0);
  });

  it("names logit_bias when a key is not a token id", async () => {
    const error = expectError(await chat({ logit_bias: { hello: 5 } }), 400);
    expect(error.param).toMatch(/^logit_bias/);
  });

  it("turns each way of asking for structured output into the engine request's grammar", async () => {
    const schema = { type: "object", properties: { a: { type: "integer" } } };
    const f = { type: "function", function: { name: "f", parameters: schema } };
    const g = { type: "function", function: { name: "g" } };
    const cases: [Record<string, unknown>, unknown][] = [
      [{ response_format: { type: "json_object" } }, { type: "json_object" }],
      [{ response_format: { type: "json_schema", json_schema: { name: "s", schema, strict: true } } }, { type: "json_schema", schema }],
      [{ guided_json: JSON.stringify(schema) }, { type: "json_schema", schema }],
      [{ guided_regex: "[a-z]+" }, { type: "regex", pattern: "[a-z]+" }],
      [{ guided_choice: ["yes", "no"] }, { type: "choice", choices: ["yes", "no"] }],
      [{ structured_outputs: { grammar: 'root ::= "x"' } }, { type: "ebnf", grammar: 'root ::= "x"' }],
      [{ tools: [f, g], tool_choice: "required" }, { type: "tool_calls", tools: [{ name: "f", parameters: schema }, { name: "g", parameters: { type: "object" } }], parallel: true }],
      [{ tools: [f, g], tool_choice: "required", parallel_tool_calls: false }, { type: "tool_calls", tools: [{ name: "f", parameters: schema }, { name: "g", parameters: { type: "object" } }], parallel: false }],
      [{ tools: [f, g], tool_choice: { type: "function", function: { name: "g" } } }, { type: "tool_calls", tools: [{ name: "g", parameters: { type: "object" } }], parallel: false }],
      [{ response_format: { type: "text" }, tools: [f], tool_choice: "auto" }, undefined],
      [{ tools: [{ ...f, function: { ...f.function, strict: true } }, g], tool_choice: "auto", parallel_tool_calls: false },
        { type: "tool_calls", optional: true, parallel: false, tools: [{ name: "f", parameters: schema }, { name: "g", parameters: { type: "object" } }] }],
      [{ tools: [{ ...f, function: { ...f.function, strict: true } }], tool_choice: "none" }, undefined],
      [{ tools: [{ ...f, function: { ...f.function, strict: true } }], response_format: { type: "json_object" } }, { type: "json_object" }],
    ];
    for (const [fields, grammar] of cases) {
      expect((await chat(fields)).statusCode, JSON.stringify(fields)).toBe(200);
      expect(engine.requests.at(-1)!.grammar, JSON.stringify(fields)).toEqual(grammar);
    }
    expect((await complete({ guided_choice: ["a"] })).statusCode).toBe(200);
    expect(engine.requests.at(-1)!.grammar).toEqual({ type: "choice", choices: ["a"] });
  });

  it("requires a model", async () => {
    const res = await app.inject({ method: "POST", url: "/v1/chat/completions", payload: { messages: USER_HI } });
    expectError(res, 400, { param: "model" });
  });

  it("rejects a completions prompt of the wrong type", async () => {
    expectError(await complete({ prompt: [1, "a"] }), 400, { param: "prompt" });
    expectError(await complete({ prompt: [] }), 400, { param: "prompt" });
  });
});

describe("models and routes", () => {
  it("answers an unknown model with 404 model_not_found", async () => {
    const error = expectError(await chat({ model: "gpt-4" }), 404, { param: "model", code: "model_not_found" });
    expect(error.message).toContain("gpt-4");
    expectError(await complete({ model: "other" }), 404, { code: "model_not_found" });
    expect(engine.requests).toHaveLength(0);
  });

  it("answers an unknown route with 404 in OpenAI's shape", async () => {
    expectError(await app.inject({ method: "GET", url: "/v1/nothing" }), 404, { code: "not_found" });
    expectError(await app.inject({ method: "GET", url: "/v1/chat/completions" }), 404, { code: "not_found" });
  });

  it("answers a malformed URL with 400 in OpenAI's shape", async () => {
    expectError(await app.inject({ method: "GET", url: "/v1/models/%zz" }), 400, { code: "FST_ERR_BAD_URL" });
  });

  it("lists the served model and looks it up by id", async () => {
    const list = await app.inject({ method: "GET", url: "/v1/models" });
    expect(list.statusCode).toBe(200);
    expect(list.json()).toMatchObject({ object: "list", data: [{ id: "tiny", object: "model", owned_by: "tokenmill", max_model_len: MAX_MODEL_LEN }] });
    const one = await app.inject({ method: "GET", url: "/v1/models/tiny" });
    expect(one.statusCode).toBe(200);
    expect(one.json()).toMatchObject({ id: "tiny", object: "model" });
    expectError(await app.inject({ method: "GET", url: "/v1/models/other" }), 404, { code: "model_not_found" });
  });

  it("answers a body over the limit with 413", async () => {
    await app.close();
    setUp({}, 256);
    const res = await chat({ messages: [{ role: "user", content: "x".repeat(1000) }] });
    expectError(res, 413, { code: "payload_too_large" });
    expect(engine.requests).toHaveLength(0);
    expect((await chat()).statusCode).toBe(200);
  });
});

describe("context length", () => {
  it("rejects a prompt longer than the context with both numbers", async () => {
    const content = "x".repeat(70);
    const numPromptTokens = chatPromptOf([{ role: "user", content }]).length;
    const error = expectError(await chat({ messages: [{ role: "user", content }] }), 400, { param: "messages", code: "context_length_exceeded" });
    expect(error.message).toContain(String(MAX_MODEL_LEN));
    expect(error.message).toContain(String(numPromptTokens));
    expect(engine.requests).toHaveLength(0);
    expect(model.numInFlight).toBe(0);
  });

  it("rejects a prompt that fills the context exactly, leaving no room to generate", async () => {
    expectError(await complete({ prompt: "x".repeat(MAX_MODEL_LEN), max_tokens: null }), 400, { param: "prompt", code: "context_length_exceeded" });
  });

  it("rejects prompt + max_tokens over the context with the numbers", async () => {
    const maxTokens = MAX_MODEL_LEN - USER_HI_TOKENS + 1;
    const error = expectError(await chat({ max_tokens: maxTokens }), 400, { param: "max_tokens", code: "context_length_exceeded" });
    for (const n of [MAX_MODEL_LEN, USER_HI_TOKENS + maxTokens, USER_HI_TOKENS, maxTokens]) expect(error.message).toContain(String(n));
    expect((await chat({ max_tokens: maxTokens - 1 })).statusCode).toBe(200);
  });

  it("checks max_completion_tokens too", async () => {
    expectError(await chat({ max_tokens: null, max_completion_tokens: MAX_MODEL_LEN }), 400, { code: "context_length_exceeded" });
  });

  it("gives chat without max_tokens what the context leaves", async () => {
    const res = await chat({ max_tokens: undefined });
    expect(res.statusCode).toBe(200);
    expect(engine.requests[0].maxTokens).toBe(MAX_MODEL_LEN - USER_HI_TOKENS);
    expect(res.json().usage.completion_tokens).toBe(MAX_MODEL_LEN - USER_HI_TOKENS);
  });

  it("defaults completions max_tokens to 16", async () => {
    const res = await complete({ max_tokens: undefined });
    expect(res.statusCode).toBe(200);
    expect(engine.requests[0].maxTokens).toBe(16);
    expect(res.json().choices[0].text).toBe(generatedText(16));
  });
});

describe("admission", () => {
  it("answers 503 with Retry-After when the queue is full, and admits again once requests end", async () => {
    await app.close();
    setUp({ limits: { maxNumSeqs: 1, maxQueuedRequests: 1 } });
    engine.script({ kind: "hang" }, { kind: "hang" });
    const first = chat().then((res) => res);
    const second = complete().then((res) => res);
    await until(() => engine.requests.length === 2);
    expect(model.numInFlight).toBe(2);

    const third = await chat();
    expectError(third, 503, { type: "server_error", code: "overloaded" });
    expect(Number(third.headers["retry-after"])).toBeGreaterThan(0);
    expect(engine.requests).toHaveLength(2);

    // NOTE: a request the server cuts off is never reported as finished (it once read finish_reason "stop").
    for (const controller of model.inFlightControllers) controller.abort();
    const [a, b] = await Promise.all([first, second]);
    expectError(a, 503, { type: "server_error", code: "request_aborted" });
    expectError(b, 503, { type: "server_error", code: "request_aborted" });
    expect(model.numInFlight).toBe(0);
    expect(model.inFlightControllers.size).toBe(0);

    const again = await chat();
    expect(again.statusCode).toBe(200);
    expect(again.json().choices[0].message.content).toBe(generatedText(3));
    expect(model.numInFlight).toBe(0);
  });

  it("counts each of n sequences against the capacity; a request that could never fit is a 400 saying why, not a retry-later 503", async () => {
    await app.close();
    setUp({ limits: { maxNumSeqs: 1, maxQueuedRequests: 1 } });
    const tooMany = expectError(await chat({ n: 3 }), 400, { param: "n", code: "too_many_sequences" });
    expect(tooMany.message).toMatch(/needs 3 sequences.*at most 2 \(1 running plus 1 queued\)/);
    expectError(await complete({ prompt: ["a", "b", "c"] }), 400, { param: "prompt", code: "too_many_sequences" });
    expectError(await complete({ prompt: "a", n: 3 }), 400, { param: "n", code: "too_many_sequences" });
    expect(engine.requests).toHaveLength(0);
    expect((await chat({ n: 2 })).statusCode).toBe(200);
  });

  it("logs /health probes while the model loads quietly, and a real fault at error level", async () => {
    await app.close();
    const lines: Json[] = [];
    const stream = { write: (line: string) => void lines.push(JSON.parse(line) as Json) };
    ctx = makeContext({ engine: null, tokenizer: null });
    model = backendOf(ctx);
    app = buildApp(ctx, { logger: { level: "info", stream } });
    for (let i = 0; i < 3; i++) expect((await app.inject({ method: "GET", url: "/health" })).statusCode).toBe(503);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
    expect(JSON.stringify(lines)).not.toContain("stack");
    model.engine = engine;
    model.tokenizer = tokenizer;
    engine.script({ kind: "fail", code: "RUNTIME_FAILED" });
    expect((await chat()).statusCode).toBe(500);
    expect(lines.filter((l) => l.level >= 50).map((l) => l.msg)).toEqual(["request failed"]);
  });

  it("answers 503 with Retry-After while the model loads, and /health says so", async () => {
    await app.close();
    setUp({ engine: null, tokenizer: null });
    const res = await chat();
    expectError(res, 503, { code: "overloaded" });
    expect(res.headers["retry-after"]).toBeDefined();
    expectError(await complete(), 503);
    const health = await app.inject({ method: "GET", url: "/health" });
    expectHealthDown(health, "loading", "loading");
    expect(health.headers["retry-after"]).toBeDefined();
  });

  it("reports the engine's health", async () => {
    const healthy = await app.inject({ method: "GET", url: "/health" });
    expect(healthy.statusCode).toBe(200);
    expect(healthy.json()).toEqual({ status: "ok", models: { [MODEL_ID]: { backend: `local:${MODEL_ID}`, state: "running" } } });
    engine.state = "stopped";
    expectHealthDown(await app.inject({ method: "GET", url: "/health" }), "engine_dead");
    expectError(await chat(), 503, { code: "engine_dead" });
    engine.state = "restarting";
    expectHealthDown(await app.inject({ method: "GET", url: "/health" }), "engine_restarting");
    const refused = await chat();
    expectError(refused, 503, { code: "engine_restarting" });
    expect(refused.headers["retry-after"]).toBe("2");
    engine.state = "running";
    expect((await app.inject({ method: "GET", url: "/health" })).statusCode).toBe(200);
  });
});

describe("engine and tokenizer faults", () => {
  it("answers a runtime failure with 500 and keeps serving", async () => {
    engine.script({ kind: "fail", code: "RUNTIME_FAILED", message: "the step threw" });
    expectError(await chat(), 500, { type: "server_error", code: "runtime_failed", param: null });
    expect(model.numInFlight).toBe(0);
    const next = await chat();
    expect(next.statusCode).toBe(200);
    expect(next.json().choices[0].message.content).toBe(generatedText(3));
  });

  it("answers a failure before the first streamed byte with a status, not a stream", async () => {
    engine.script({ kind: "fail", code: "RUNTIME_FAILED" });
    expectError(await chat({ stream: true }), 500, { code: "runtime_failed" });
    expect(model.numInFlight).toBe(0);
    expect((await chat({ stream: true })).statusCode).toBe(200);
  });

  it("answers the engine's PROMPT_TOO_LONG with 400 context_length_exceeded", async () => {
    engine.script({ kind: "fail", code: "PROMPT_TOO_LONG", message: "The prompt (7 tokens) is too long." });
    const error = expectError(await chat(), 400, { code: "context_length_exceeded" });
    expect(error.message).toBe("The prompt (7 tokens) is too long.");
  });

  it("answers a tokenizer failure with 500 and releases the request", async () => {
    tokenizer.failWith = new Error("tokenizer worker crashed");
    const error = expectError(await chat(), 500, { code: "internal_error" });
    expect(error.message).not.toContain("crashed");
    expect(model.numInFlight).toBe(0);
    tokenizer.failWith = null;
    expect((await chat()).statusCode).toBe(200);
  });

  it("aborts the prompts already started when a later prompt of the same request is rejected", async () => {
    engine.script({ kind: "hang" });
    // NOTE: inject's response always closes unfinished, which aborts too; so look before the error is sent.
    let abortedAtSend: boolean[] = [];
    app.addHook("onSend", async () => {
      abortedAtSend = engine.signals.map((signal) => signal?.aborted === true);
    });
    expectError(await complete({ prompt: [[1, 2], [1, 2, 1000]] }), 400, { param: "prompt" });
    expect(abortedAtSend).toEqual([true]);
    expect(model.numInFlight).toBe(0);
  });
});

describe("body → EngineRequest", () => {
  it("maps every sampling field", async () => {
    const res = await chat({
      temperature: 0.5, top_p: 0.9, top_k: 40, min_p: 0.05, seed: 7,
      presence_penalty: 0.5, frequency_penalty: -0.5, repetition_penalty: 1.2,
      logit_bias: { "5": 10, "17": -100 },
      stop: "END", stop_token_ids: [3, 4], ignore_eos: true, n: 2,
      logprobs: true, top_logprobs: 3,
      skip_special_tokens: false, include_stop_str_in_output: true,
    });
    expect(res.statusCode).toBe(200);
    expect(engine.requests).toHaveLength(1);
    const request = engine.requests[0];
    expect(request.promptTokenIds).toEqual([...chatPromptOf(USER_HI)].map((c) => c.charCodeAt(0)));
    expect(request).toMatchObject({
      maxTokens: 3, n: 2, stop: ["END"], stopTokenIds: [3, 4], ignoreEos: true, skipSpecialTokens: false, includeStopStrInOutput: true,
    });
    expect(request.sampling).toEqual({
      temperature: 0.5, topP: 0.9, topK: 40, minP: 0.05, seed: 7,
      presencePenalty: 0.5, frequencyPenalty: -0.5, repetitionPenalty: 1.2,
      logitBias: new Map([[5, 10], [17, -100]]), logprobs: 3,
    });
    expect([...request.sampling.logitBias!.keys()].every((key) => typeof key === "number")).toBe(true);
  });

  it("takes a stop array as it is, and logprobs without top_logprobs as 0 alternatives", async () => {
    await chat({ stop: ["a", "bc"], logprobs: true });
    expect(engine.requests[0].stop).toEqual(["a", "bc"]);
    expect(engine.requests[0].sampling.logprobs).toBe(0);
  });

  it("uses OpenAI's defaults when the body and the server say nothing", async () => {
    await chat();
    const request = engine.requests[0];
    expect(request).toMatchObject({ n: 1, stop: [], stopTokenIds: undefined, ignoreEos: false, skipSpecialTokens: true, includeStopStrInOutput: false });
    expect(request.sampling).toEqual({
      temperature: 1, topP: 1, topK: 0, minP: 0, seed: undefined, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
      logitBias: undefined, logprobs: undefined,
    });
    expect(request.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("prefers max_completion_tokens over max_tokens", async () => {
    await chat({ max_tokens: 9, max_completion_tokens: 4 });
    expect(engine.requests[0].maxTokens).toBe(4);
  });

  it("uses the server's generation defaults for fields the body omits, and the body's where given", async () => {
    await app.close();
    setUp({ defaults: { temperature: 0.7, topP: 0.8, topK: 20, minP: 0.1, repetitionPenalty: 1.05 } });
    await chat();
    expect(engine.requests[0].sampling).toMatchObject({ temperature: 0.7, topP: 0.8, topK: 20, minP: 0.1, repetitionPenalty: 1.05 });
    await chat({ temperature: 0, top_k: -1 });
    expect(engine.requests[1].sampling).toMatchObject({ temperature: 0, topP: 0.8, topK: -1, minP: 0.1 });
  });

  it("passes chat message content parts and roles through the template", async () => {
    await chat({ messages: [{ role: "developer", content: "be brief" }, { role: "user", content: [{ type: "text", text: "a" }, { type: "text", text: "b" }] }] });
    const expected = chatPromptOf([{ role: "system", content: "be brief" }, { role: "user", content: "ab" }]);
    expect(String.fromCharCode(...engine.requests[0].promptTokenIds)).toBe(expected);
  });
});

describe("chat completions: whole response", () => {
  it("has OpenAI's shape", async () => {
    engine.numCachedTokens = 2;
    const res = await chat();
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^application\/json/);
    const body = res.json() as Json;
    expect(body.id).toMatch(/^chatcmpl-/);
    expect(body).toMatchObject({ object: "chat.completion", model: "tiny" });
    expect(Number.isInteger(body.created)).toBe(true);
    expect(body.choices).toEqual([{
      index: 0, message: { role: "assistant", content: generatedText(3) }, logprobs: null, finish_reason: "length", stop_reason: null,
    }]);
    expect(body.usage).toEqual({
      prompt_tokens: USER_HI_TOKENS, completion_tokens: 3, total_tokens: USER_HI_TOKENS + 3, prompt_tokens_details: { cached_tokens: 2 },
    });
  });

  it("returns n choices, indexed, and counts all their tokens", async () => {
    const body = (await chat({ n: 2 })).json() as Json;
    expect(body.choices.map((c: Json) => c.index)).toEqual([0, 1]);
    for (const choice of body.choices) expect(choice.message.content).toBe(generatedText(3));
    expect(body.usage).toMatchObject({ prompt_tokens: USER_HI_TOKENS, completion_tokens: 6 });
  });

  it("returns logprobs per token with the asked number of alternatives", async () => {
    const choice = (await chat({ logprobs: true, top_logprobs: 2 })).json().choices[0];
    expect(choice.logprobs.content).toHaveLength(3);
    expect(choice.logprobs.content[1]).toEqual({
      token: " t1", logprob: -0.1, bytes: [...Buffer.from(" t1")],
      top_logprobs: [{ token: " t1", logprob: -0.1, bytes: [...Buffer.from(" t1")] }, { token: " t2", logprob: -0.2, bytes: [...Buffer.from(" t2")] }],
    });
  });
});

describe("chat completions: streaming", () => {
  it("streams a role delta, content deltas, a finish_reason, then [DONE]", async () => {
    const res = await chat({ stream: true });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/event-stream/);
    const { events, done } = sseEvents(res);
    expect(done).toBe(true);
    expect(new Set(events.map((e) => e.id)).size).toBe(1);
    expect(events[0].id).toMatch(/^chatcmpl-/);
    for (const event of events) {
      expect(event).toMatchObject({ object: "chat.completion.chunk", model: "tiny" });
      expect(event).not.toHaveProperty("usage");
      expect(event.choices).toHaveLength(1);
    }
    expect(events[0].choices[0].delta).toEqual({ role: "assistant", content: "" });
    expect(events.slice(1).every((e) => !("role" in e.choices[0].delta))).toBe(true);
    expect(events.map((e) => e.choices[0].delta.content ?? "").join("")).toBe(generatedText(3));
    expect(events.at(-1)!.choices[0].finish_reason).toBe("length");
    expect(events.slice(0, -1).every((e) => e.choices[0].finish_reason === null)).toBe(true);
    expect(model.numInFlight).toBe(0);
  });

  it("ends with a usage chunk when asked, with usage null on every other chunk", async () => {
    const { events, done } = sseEvents(await chat({ stream: true, n: 2, stream_options: { include_usage: true } }));
    expect(done).toBe(true);
    const last = events.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual({
      prompt_tokens: USER_HI_TOKENS, completion_tokens: 6, total_tokens: USER_HI_TOKENS + 6, prompt_tokens_details: { cached_tokens: 0 },
    });
    const rest = events.slice(0, -1);
    expect(rest.every((e) => e.usage === null && e.choices.length === 1)).toBe(true);
    for (const index of [0, 1]) {
      const mine = rest.filter((e) => e.choices[0].index === index);
      expect(mine[0].choices[0].delta.role).toBe("assistant");
      expect(mine.map((e) => e.choices[0].delta.content ?? "").join("")).toBe(generatedText(3));
      expect(mine.at(-1)!.choices[0].finish_reason).toBe("length");
    }
  });
});

describe("a request the server cuts off (shutdown past its timeout)", () => {
  const cutOff = () => {
    for (const controller of model.inFlightControllers) controller.abort(serverShuttingDown());
  };

  it.each([["chat", () => chat({ stream: true })], ["completions", () => complete({ stream: true })]])(
    "ends a %s stream with an error event in OpenAI's shape: no finish_reason, no usage, no [DONE]",
    async (_name, send) => {
      engine.script({ kind: "hang", pieces: ["t0", " t1"] });
      const response = send();
      await until(() => model.inFlightControllers.size === 1 && engine.signals.length === 1);
      await until(() => engine.numHanging === 1, { what: "the route to read the pieces before the hang" });
      cutOff();
      const { events, done } = sseEvents(await response);
      expect(done).toBe(false);
      expect(events.at(-1)).toEqual({ error: { message: expect.stringContaining("shutting down"), type: "server_error", param: null, code: "server_shutting_down" } });
      const chunks = events.slice(0, -1);
      expect(chunks.length).toBeGreaterThan(0);
      expect(chunks.every((e) => e.choices.every((c: Json) => c.finish_reason === null))).toBe(true);
      expect(model.numInFlight).toBe(0);
    },
  );

  it("answers a whole (non-streamed) request with 503 server_shutting_down and Retry-After", async () => {
    engine.script({ kind: "hang", pieces: ["t0"] });
    const response = chat();
    await until(() => model.inFlightControllers.size === 1 && engine.signals.length === 1);
    cutOff();
    const res = await response;
    expectError(res, 503, { code: "server_shutting_down" });
    expect(res.headers["retry-after"]).toBe("5");
  });
});

describe("settlement", () => {
  const settled = () => {
    const seen: Settlement[] = [];
    ctx.settleListeners.push((s) => void seen.push(s));
    return seen;
  };

  it("settles each admitted request exactly once, with the engine's usage and how it ended", async () => {
    const seen = settled();
    const finished = await chat({ n: 2 });
    engine.script({ kind: "fail", code: "RUNTIME_FAILED" });
    const errored = await chat();
    const rejected = await chat({ max_tokens: MAX_MODEL_LEN });
    // A response ends only once its request is settled: no wait needed.
    expect(seen.map((s) => [s.requestId, s.outcome])).toEqual([
      [finished.headers["x-request-id"], "finished"], [errored.headers["x-request-id"], "errored"], [rejected.headers["x-request-id"], "rejected"],
    ]);
    expect(seen[0]).toEqual({
      id: expect.any(String), requestId: finished.headers["x-request-id"], keyId: "anonymous", model: MODEL_ID, backend: `local:${MODEL_ID}`, endpoint: "/v1/chat/completions",
      startedMs: expect.any(Number), finishedMs: expect.any(Number), ttftMs: expect.any(Number), outcome: "finished",
      usage: { promptTokens: USER_HI_TOKENS, cachedPromptTokens: 0, completionTokens: 6 },
    });
    expect(finished.json().usage).toEqual({ prompt_tokens: USER_HI_TOKENS, completion_tokens: 6, total_tokens: USER_HI_TOKENS + 6, prompt_tokens_details: { cached_tokens: 0 } });
    expect(seen[1]).toMatchObject({ usage: { completionTokens: 0 }, error: { status: 500, code: "runtime_failed" } });
    expect(seen[2]).toMatchObject({ usage: { promptTokens: 0, completionTokens: 0 }, error: { status: 400, code: "context_length_exceeded" } });
  });

  it("settles a completions request over several prompts once, with their usage summed", async () => {
    const seen = settled();
    const res = await complete({ prompt: ["ab", "cde"], n: 2 });
    expect(seen).toHaveLength(1);
    const promptTokens = "ab".length + "cde".length;
    expect(seen[0].usage).toEqual({ promptTokens, cachedPromptTokens: 0, completionTokens: 12 });
    expect(res.json().usage.prompt_tokens).toBe(promptTokens);
  });

  it("a settle listener that throws harms nothing: the others hear, and the server serves on", async () => {
    ctx.settleListeners.push(() => {
      throw new Error("ledger offline");
    });
    const seen = settled();
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on("warning", onWarning);
    try {
      expect((await chat()).statusCode).toBe(200);
      expect(seen).toHaveLength(1);
      await until(() => warnings.some((w) => w.includes("ledger offline")), { what: "the listener's failure as a process warning" });
      expect((await chat()).statusCode).toBe(200);
    } finally {
      process.off("warning", onWarning);
    }
  });
});

describe("completions", () => {
  it("completes a string prompt", async () => {
    const res = await complete();
    expect(res.statusCode).toBe(200);
    const body = res.json() as Json;
    expect(body.id).toMatch(/^cmpl-/);
    expect(body).toMatchObject({ object: "text_completion", model: "tiny" });
    expect(body.choices).toEqual([{ index: 0, text: generatedText(3), logprobs: null, finish_reason: "length", stop_reason: null }]);
    expect(body.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 });
    expect(engine.requests[0].promptTokenIds).toEqual([..."hello"].map((c) => c.charCodeAt(0)));
  });

  it("indexes the choices of an array of prompts as prompt * n + i", async () => {
    const prompts = ["ab", "cde"];
    const body = (await complete({ prompt: prompts, n: 2, echo: true })).json() as Json;
    expect(engine.requests.map((r) => r.promptTokenIds.length)).toEqual([2, 3]);
    expect(body.choices.map((c: Json) => c.index)).toEqual([0, 1, 2, 3]);
    expect(body.choices.map((c: Json) => c.text)).toEqual([0, 0, 1, 1].map((p) => prompts[p] + generatedText(3)));
    expect(body.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 12 });
  });

  it("takes a token-id prompt and an array of them", async () => {
    expect((await complete({ prompt: [72, 105], echo: true })).json().choices[0].text).toBe("Hi" + generatedText(3));
    expect(engine.requests[0].promptTokenIds).toEqual([72, 105]);
    const body = (await complete({ prompt: [[1, 2, 3], [999]] })).json() as Json;
    expect(engine.requests.slice(1).map((r) => r.promptTokenIds)).toEqual([[1, 2, 3], [999]]);
    expect(body.choices.map((c: Json) => c.index)).toEqual([0, 1]);
  });

  it("rejects a token id outside the vocabulary", async () => {
    const error = expectError(await complete({ prompt: [1, 1000] }), 400, { param: "prompt" });
    expect(error.message).toContain("1000");
    expect(engine.requests).toHaveLength(0);
  });

  it("prepends the prompt with echo", async () => {
    expect((await complete({ echo: true })).json().choices[0].text).toBe("hello" + generatedText(3));
  });

  it("returns legacy logprobs whose offsets index the text, prompt first with echo", async () => {
    const choice = (await complete({ prompt: "ab", echo: true, logprobs: 2 })).json().choices[0] as Json;
    expect(engine.requests[0].promptLogprobs).toBe(2);
    expect(engine.requests[0].sampling.logprobs).toBe(2);
    const { tokens, token_logprobs, top_logprobs, text_offset } = choice.logprobs;
    expect(tokens).toEqual(["a", "b", "t0", " t1", " t2"]);
    expect(token_logprobs).toEqual([null, -1, -0.1, -0.1, -0.1]);
    expect(top_logprobs[0]).toBeNull();
    expect(top_logprobs[2]).toEqual({ t0: -0.1, " t1": -0.2 });
    expect(text_offset).toEqual([0, 1, 2, 4, 7]);
    expectOffsetsIndex(choice.text, tokens, text_offset);
  });

  it("offsets generated tokens from 0 without echo", async () => {
    const choice = (await complete({ logprobs: 0 })).json().choices[0] as Json;
    expect(engine.requests[0].promptLogprobs).toBeUndefined();
    expect(choice.logprobs.tokens).toEqual(["t0", " t1", " t2"]);
    expect(choice.logprobs.top_logprobs).toEqual([{}, {}, {}]);
    expectOffsetsIndex(choice.text, choice.logprobs.tokens, choice.logprobs.text_offset);
  });

  it("streams choices whose logprob offsets index the streamed text", async () => {
    const { events, done } = sseEvents(await complete({ prompt: ["ab", "c"], stream: true, echo: true, logprobs: 1 }));
    expect(done).toBe(true);
    for (const [index, prompt] of ["ab", "c"].entries()) {
      const mine = events.filter((e) => e.choices[0].index === index).map((e) => e.choices[0]);
      const text = mine.map((c) => c.text).join("");
      expect(text).toBe(prompt + generatedText(3));
      const tokens = mine.flatMap((c) => c.logprobs.tokens);
      expectOffsetsIndex(text, tokens, mine.flatMap((c) => c.logprobs.text_offset));
      expect(mine.at(-1)!.finish_reason).toBe("length");
    }
  });
});

function expectOffsetsIndex(text: string, tokens: string[], offsets: number[]): void {
  expect(offsets).toHaveLength(tokens.length);
  expect(tokens.join("")).toBe(text);
  tokens.forEach((token, k) => expect(text.slice(offsets[k], offsets[k] + token.length)).toBe(token));
}

describe("metrics", () => {
  const names = [
    "tokenmill_requests_running", "tokenmill_requests_waiting", "tokenmill_kv_cache_usage_ratio", "tokenmill_prefix_cache_hits_total",
    "tokenmill_prompt_tokens_total", "tokenmill_generation_tokens_total", "tokenmill_time_to_first_token_seconds",
    "tokenmill_inter_token_latency_seconds", "tokenmill_e2e_request_latency_seconds", "tokenmill_num_preemptions_total",
  ];
  const metricsText = async () => {
    const res = await app.inject({ method: "GET", url: "/metrics" });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/plain/);
    return res.body;
  };
  const valueOf = (text: string, name: string) => {
    const series = `${name}{model="${MODEL_ID}"}`;
    const line = text.split("\n").find((l) => l.startsWith(`${series} `));
    expect(line, series).toBeDefined();
    return Number(line!.slice(series.length + 1));
  };

  it("exports every metric in Prometheus text", async () => {
    const text = await metricsText();
    for (const name of names) expect(text).toContain(`# TYPE ${name} `);
  });

  it("sets gauges and advances counters by the difference between snapshots", async () => {
    ctx.metrics.observe(MODEL_ID, makeStats({
      numRunning: 3, numWaiting: 2, kvCacheUsage: 0.25, numPrefixHitTokens: 4, numPromptTokens: 10, numGenerationTokens: 5, numPreemptions: 1,
      ttftSeconds: [0.05], interTokenSeconds: [0.01, 0.02], e2eSeconds: [],
    }));
    let text = await metricsText();
    expect(valueOf(text, "tokenmill_prompt_tokens_total")).toBe(10);
    expect(valueOf(text, "tokenmill_requests_running")).toBe(3);
    ctx.metrics.observe(MODEL_ID, makeStats({
      numRunning: 1, numWaiting: 0, kvCacheUsage: 0.5, numPrefixHitTokens: 12, numPromptTokens: 25, numGenerationTokens: 9, numPreemptions: 1,
      ttftSeconds: [0.07], interTokenSeconds: [], e2eSeconds: [1.5],
    }));
    text = await metricsText();
    expect(valueOf(text, "tokenmill_requests_running")).toBe(1);
    expect(valueOf(text, "tokenmill_requests_waiting")).toBe(0);
    expect(valueOf(text, "tokenmill_kv_cache_usage_ratio")).toBe(0.5);
    expect(valueOf(text, "tokenmill_prefix_cache_hits_total")).toBe(12);
    expect(valueOf(text, "tokenmill_prompt_tokens_total")).toBe(25);
    expect(valueOf(text, "tokenmill_generation_tokens_total")).toBe(9);
    expect(valueOf(text, "tokenmill_num_preemptions_total")).toBe(1);
    expect(valueOf(text, "tokenmill_time_to_first_token_seconds_count")).toBe(2);
    expect(valueOf(text, "tokenmill_inter_token_latency_seconds_count")).toBe(2);
    expect(valueOf(text, "tokenmill_e2e_request_latency_seconds_count")).toBe(1);
  });

  it("counts HTTP requests by route and status", async () => {
    await chat();
    await chat({ model: "nope" });
    const text = await metricsText();
    expect(text).toContain('tokenmill_http_requests_total{route="/v1/chat/completions",status="200"} 1');
    expect(text).toContain('tokenmill_http_requests_total{route="/v1/chat/completions",status="404"} 1');
  });
});

describe("request ids", () => {
  it("puts x-request-id on every response, streamed ones and errors included", async () => {
    const responses = [
      await chat(),
      await chat({ stream: true }),
      await complete({ stream: true }),
      await chat({ temperature: "hot" }),
      await app.inject({ method: "GET", url: "/nowhere" }),
      await app.inject({ method: "GET", url: "/%zz" }),
      await app.inject({ method: "GET", url: "/metrics" }),
      await app.inject({ method: "POST", url: "/v1/chat/completions", headers: { "content-type": "application/json" }, payload: "{" }),
    ];
    engine.state = "stopped";
    responses.push(await chat());
    const ids = responses.map((res) => res.headers["x-request-id"]);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("echoes the client's x-request-id", async () => {
    const res = await app.inject({ method: "POST", url: "/v1/chat/completions", headers: { "x-request-id": "abc-123" }, payload: { model: "tiny", messages: USER_HI } });
    expect(res.headers["x-request-id"]).toBe("abc-123");
    const streamed = await app.inject({ method: "POST", url: "/v1/completions", headers: { "x-request-id": "def-456" }, payload: { model: "tiny", prompt: "a", stream: true } });
    expect(streamed.headers["x-request-id"]).toBe("def-456");
  });
});


describe("tool calls (Hermes format)", () => {
  const TOOLS = [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }];
  const PIECES = ["Checking. ", "<tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n</tool_call>'];

  it("returns tool_calls and finish_reason tool_calls when the model calls a tool", async () => {
    setUp({ toolCallParser: "hermes" });
    engine.script({ kind: "say", pieces: PIECES });
    const body = (await chat({ tools: TOOLS })).json() as Json;
    const [choice] = body.choices;
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.content).toBe("Checking.");
    expect(choice.message.tool_calls).toHaveLength(1);
    expect(choice.message.tool_calls[0]).toMatchObject({ type: "function", function: { name: "get_weather" } });
    expect(JSON.parse(choice.message.tool_calls[0].function.arguments)).toEqual({ city: "Paris" });
  });

  it("streams content up to the call, then the call in one delta, then finish_reason tool_calls", async () => {
    setUp({ toolCallParser: "hermes" });
    engine.script({ kind: "say", pieces: PIECES });
    const { events, done } = sseEvents(await chat({ tools: TOOLS, stream: true }));
    expect(done).toBe(true);
    const deltas = events.map((e) => e.choices[0]);
    expect(deltas.map((d) => d.delta.content ?? "").join("")).toBe("Checking. ");
    const calls = deltas.filter((d) => d.delta.tool_calls).flatMap((d) => d.delta.tool_calls);
    expect(calls).toEqual([expect.objectContaining({ index: 0, type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } })]);
    expect(deltas.at(-1).finish_reason).toBe("tool_calls");
    expect(deltas.slice(0, -1).every((d) => d.finish_reason === null)).toBe(true);
  });

  it("leaves the text alone without tools, with tool_choice none, or without a parser", async () => {
    for (const [overrides, extra] of [[{ toolCallParser: "hermes" }, {}], [{ toolCallParser: "hermes" }, { tools: TOOLS, tool_choice: "none" }], [{}, { tools: TOOLS }]] as const) {
      setUp(overrides);
      engine.script({ kind: "say", pieces: PIECES });
      const [choice] = ((await chat(extra)).json() as Json).choices;
      expect(choice.message.content).toBe(PIECES.join(""));
      expect(choice.message.tool_calls).toBeUndefined();
      expect(choice.finish_reason).toBe("stop");
    }
  });
});

describe("tokenize, detokenize and version", () => {
  it("counts a prompt's tokens, and a chat's after its template, with max_model_len", async () => {
    const prompt = (await app.inject({ method: "POST", url: "/tokenize", payload: { model: "tiny", prompt: "hello" } })).json() as Json;
    expect(prompt).toEqual({ count: 5, max_model_len: MAX_MODEL_LEN, tokens: [..."hello"].map((c) => c.charCodeAt(0)) });
    const chatBody = (await app.inject({ method: "POST", url: "/tokenize", payload: { model: "tiny", messages: USER_HI } })).json() as Json;
    expect(chatBody.count).toBe(USER_HI_TOKENS);
  });

  it("turns tokens back into text", async () => {
    const res = await app.inject({ method: "POST", url: "/detokenize", payload: { model: "tiny", tokens: [104, 105] } });
    expect(res.json()).toEqual({ prompt: "hi" });
  });

  it("rejects a bad body or an unknown model in OpenAI's shape, and 503s while loading", async () => {
    expectError(await app.inject({ method: "POST", url: "/tokenize", payload: { model: "tiny", prompt: 5 } }), 400, { param: "prompt" });
    expectError(await app.inject({ method: "POST", url: "/detokenize", payload: { model: "tiny", tokens: [-1] } }), 400);
    expectError(await app.inject({ method: "POST", url: "/tokenize", payload: { model: "other", prompt: "x" } }), 404, { code: "model_not_found" });
    setUp({ tokenizer: null });
    const res = await app.inject({ method: "POST", url: "/tokenize", payload: { model: "tiny", prompt: "x" } });
    expectError(res, 503);
    expect(res.headers["retry-after"]).toBeDefined();
  });

  it("reports the version", async () => {
    expect((await app.inject({ method: "GET", url: "/version" })).json()).toEqual({ version: expect.stringMatching(/^\d+\.\d+\.\d+/) });
  });
});

describe("--api-key", () => {
  const withKeys = () => buildApp(makeContext({ engine: new FakeEngine(), tokenizer: new FakeTokenizer() }), { apiKeys: ["sk-one", "sk-two"] });

  it("requires one of the keys as a Bearer token on the API, with 401 invalid_api_key otherwise", async () => {
    const keyed = withKeys();
    const ask = (authorization?: string) => keyed.inject({
      method: "POST", url: "/v1/chat/completions", payload: { model: "tiny", messages: USER_HI, max_tokens: 2 },
      headers: authorization ? { authorization } : {},
    });
    expectError(await ask(), 401, { code: "invalid_api_key" });
    expectError(await ask("Bearer sk-wrong"), 401, { code: "invalid_api_key" });
    expectError(await ask("sk-one"), 401, { code: "invalid_api_key" });
    expect((await ask("Bearer sk-one")).statusCode).toBe(200);
    expect((await ask("bearer sk-two")).statusCode).toBe(200);
    expectError(await keyed.inject({ method: "GET", url: "/v1/models" }), 401);
    await keyed.close();
  });

  it("leaves /health, /metrics and /version open for probes and scrapers", async () => {
    const keyed = withKeys();
    for (const url of ["/health", "/metrics", "/version"]) expect((await keyed.inject({ method: "GET", url })).statusCode, url).toBe(200);
    await keyed.close();
  });
});

describe("a key's scheduling tier", () => {
  it("reaches the engine as the priority of the key's requests (its team's without one; standard without either, and for anonymous requests)", async () => {
    const { openStore } = await import("../../service/store/open-store.ts");
    const { KeyStore } = await import("../../service/keys.ts");
    const store = await openStore("sqlite::memory:");
    const keys = new KeyStore(store.db);
    const fake = new FakeEngine();
    const keyed = buildApp(makeContext({ engine: fake, tokenizer: new FakeTokenizer() }), { auth: { keys, mode: "auto" } });
    try {
      const ask = (secret?: string) => keyed.inject({
        method: "POST", url: "/v1/chat/completions", payload: { model: "tiny", messages: USER_HI, max_tokens: 2 },
        headers: secret ? { authorization: `Bearer ${secret}` } : {},
      });
      expect((await ask()).statusCode).toBe(200);
      const batch = await keys.create({ name: "bulk", priority: "batch" });
      const plain = await keys.create({ name: "plain" });
      expect((await ask(batch.secret)).statusCode).toBe(200);
      expect((await ask(plain.secret)).statusCode).toBe(200);
      expect(fake.requests.map((r) => r.priority ?? "standard")).toEqual(["standard", "batch", "standard"]);
      const updated = await keys.update(plain.key.id, { priority: "interactive" });
      expect(updated?.priority).toBe("interactive");
      // A key that sets no tier of its own gets its team's; one that sets its own keeps it.
      const { TeamStore } = await import("../../service/teams.ts");
      const team = await new TeamStore(store.db).create({ name: "bulk team", priority: "batch" });
      const member = await keys.create({ name: "member", teamId: team.id });
      const own = await keys.create({ name: "own", teamId: team.id, priority: "interactive" });
      expect((await ask(member.secret)).statusCode).toBe(200);
      expect((await ask(own.secret)).statusCode).toBe(200);
      expect(fake.requests.slice(3).map((r) => r.priority ?? "standard")).toEqual(["batch", "interactive"]);
    } finally {
      await keyed.close();
      await store.close();
    }
  });
});
