/**
 * Several models behind one server, end to end, with real processes on loopback: two local
 * models (engine threads) and upstream providers in one tokenmill process. One provider is a
 * second tokenmill process (serving the same models alone, from a --config file); the others
 * are small scripted OpenAI-compatible servers that fail on cue. Clients are the openai SDK, and
 * the Anthropic SDK for the Messages API served through an upstream.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_ENGINE_OPTIONS, type Engine } from "../../engine/index.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import type { UpstreamBackend } from "../../server/backends/model-backend.ts";
import { startServer, type RunningServer } from "../../server/serve.ts";
import { openStore } from "../../service/store/open-store.ts";
import { serveProcess, type Serving } from "../helpers/serve-process.ts";
import { startScriptedUpstream, type ScriptedUpstream } from "../helpers/scripted-upstream.ts";
import { ADMIN, createKey } from "../helpers/limits.ts";
import { until } from "../helpers/until.ts";

const dir = mkdtempSync(join(tmpdir(), "tokenmill-routing-"));
const DB = `sqlite:${join(dir, "router.db")}`;
const PEER_KEY = "sk-peer-secret";
const price = (model: string) => ({ model, inputPerMtok: 1_000_000, cachedInputPerMtok: 500_000, outputPerMtok: 2_000_000 });

let peer: Serving;
let failing500: ScriptedUpstream;
let failing429: ScriptedUpstream;
let slow: ScriptedUpstream;
let piecemeal: ScriptedUpstream;
let router: RunningServer;
let client: OpenAI;
let peerClient: OpenAI;

/** What each client was told, by its x-request-id: the ledger must say the same. */
const seen = new Map<string, { model: string; usage: OpenAI.CompletionUsage & { cost?: number } }>();
let numRequests = 0;
let keyId = "";

async function chat(model: string, content: string, extra: Record<string, unknown> = {}, as = client): Promise<OpenAI.ChatCompletion> {
  const id = `routing-${numRequests++}`;
  const response = await as.chat.completions.create(
    { model, messages: [{ role: "user", content }], max_tokens: 12, temperature: 0, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming,
    { headers: { "x-request-id": id } },
  );
  seen.set(id, { model: response.model, usage: response.usage! });
  return response;
}

const textOf = (response: OpenAI.ChatCompletion) => response.choices[0].message.content;

/** temperature 0, which the Messages API takes (the SDK's types leave it out). */
const greedy = (params: Omit<Anthropic.MessageCreateParamsNonStreaming, "temperature">) => ({ ...params, temperature: 0 }) as Anthropic.MessageCreateParamsNonStreaming;

async function metricValue(line: RegExp): Promise<number> {
  const text = await (await fetch(`${router.url}/metrics`)).text();
  return text.split("\n").filter((l) => line.test(l)).reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
}

beforeAll(async () => {
  const checkpoint = readCheckpoint(ensureDefaultModel());
  const peerConfig = join(dir, "peer.yaml");
  writeFileSync(peerConfig, "models:\n  - name: tiny\n    threads: 1\n  - name: tiny-int8\n    quantization: int8\n    threads: 1\n");
  [peer, failing500, failing429, slow, piecemeal] = await Promise.all([
    serveProcess("none", "peer", join(dir, "peer-data"), ["--config", peerConfig, "--api-key", PEER_KEY]),
    startScriptedUpstream({ kind: "status", status: 500 }),
    startScriptedUpstream({ kind: "status", status: 429, retryAfter: "0" }),
    startScriptedUpstream({ kind: "slow-stream", intervalMs: 40 }),
    startScriptedUpstream({ kind: "tool-stream" }),
  ]);
  const engineOptions = { ...DEFAULT_ENGINE_OPTIONS, modelDir: checkpoint.dir, kvCacheMemoryBytes: 128 * 1024 ** 2, intraOpThreads: 1 };
  const scripted = (name: string, upstream: ScriptedUpstream, model: string) => ({
    name, baseUrl: upstream.url, apiKey: null, timeoutMs: 10_000, maxConcurrency: 8,
    retry: { maxRetries: 2, baseDelayMs: 10, maxDelayMs: 50, maxRetryAfterMs: 1000 }, breaker: { failureThreshold: 3, cooldownMs: 500 }, models: [{ name: model }],
  });
  router = await startServer({
    models: [
      { name: "alpha", engineOptions: { ...engineOptions, maxNumSeqs: 8, faultInjection: true }, defaults: checkpoint.generationDefaults, maxQueuedRequests: 64 },
      // NOTE: float32, as alpha: int8 greedy output is not shown to be batch-invariant (docs/performance.md: Quantized weights), and the flood below compares texts across batches.
      { name: "beta", engineOptions: { ...engineOptions, maxNumSeqs: 2 }, defaults: checkpoint.generationDefaults, maxQueuedRequests: 1 },
    ],
    providers: [
      {
        name: "peer", baseUrl: `${peer.url}/v1`, apiKey: PEER_KEY, timeoutMs: 60_000, maxConcurrency: 32,
        models: [{ name: "remote", upstreamModel: "tiny" }, { name: "remote-int8", upstreamModel: "tiny-int8" }],
      },
      scripted("flaky500", failing500, "flaky-a"),
      scripted("flaky429", failing429, "flaky-b"),
      scripted("slow", slow, "slow-remote"),
      scripted("pieces", piecemeal, "piecemeal"),
    ],
    routes: [
      { name: "chat", targets: ["alpha", "remote"] },
      { name: "flood", targets: ["beta"], burst: { to: "remote", waitingOver: 0 } },
      { name: "fragile", targets: ["flaky-a", "flaky-b"] },
      { name: "sturdy", targets: ["flaky-a", "alpha"] },
    ],
    host: "127.0.0.1", port: 0, shutdownTimeoutMs: 5000, bodyLimitBytes: 1024 * 1024, tokenizerThreads: 1,
    adminKeys: [ADMIN],
    db: { url: DB, replica: "router", prices: [price("alpha"), price("remote"), price("remote-int8"), price("beta")] },
  });
  await router.ready;
  client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "unused", maxRetries: 0 });
  peerClient = new OpenAI({ baseURL: `${peer.url}/v1`, apiKey: PEER_KEY, maxRetries: 0 });
}, 300_000);

afterAll(async () => {
  await router?.close();
  await Promise.all([peer?.stop(), failing500?.close(), failing429?.close(), slow?.close()]);
});

describe("several models behind one server", () => {
  it("lists every served name, and routes by model: each answers as the model served alone", async () => {
    const names = (await client.models.list()).data.map((m) => m.id).sort();
    expect(names).toEqual(["alpha", "beta", "chat", "flaky-a", "flaky-b", "flood", "fragile", "piecemeal", "remote", "remote-int8", "slow-remote", "sturdy"]);
    for (const prompt of ["Tell me about rivers.", "Count to five."]) {
      const [alpha, remote, alone] = await Promise.all([
        chat("alpha", prompt), chat("remote", prompt),
        peerClient.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: prompt }], max_tokens: 12, temperature: 0 }),
      ]);
      expect(alpha.model).toBe("alpha");
      expect(remote.model).toBe("remote");
      expect(textOf(alpha)).toBe(textOf(alone));
      expect(textOf(remote)).toBe(textOf(alone));
      expect(remote.usage).toMatchObject({ prompt_tokens: alpha.usage!.prompt_tokens, completion_tokens: alpha.usage!.completion_tokens });
      const [beta, remoteInt8, aloneInt8] = await Promise.all([
        chat("beta", prompt), chat("remote-int8", prompt),
        peerClient.chat.completions.create({ model: "tiny-int8", messages: [{ role: "user", content: prompt }], max_tokens: 12, temperature: 0 }),
      ]);
      expect(beta.model).toBe("beta");
      expect(textOf(beta)).toBe(textOf(alone));
      expect(remoteInt8.model).toBe("remote-int8");
      expect(textOf(remoteInt8)).toBe(textOf(aloneInt8));
    }
    const [localText, remoteText] = await Promise.all(["alpha", "remote"].map((model) =>
      client.completions.create({ model, prompt: "Once upon a time", max_tokens: 10, temperature: 0 })));
    expect(remoteText.model).toBe("remote");
    expect(remoteText.choices[0].text).toBe(localText.choices[0].text);
    expect(remoteText.usage).toMatchObject({ prompt_tokens: localText.usage!.prompt_tokens, completion_tokens: 10 });
    const health = await (await fetch(`${router.url}/health`)).json() as { status: string; models: Record<string, { backend: string; state: string }> };
    expect(health.status).toBe("ok");
    // A local model reports its load (what a router's least-loaded balance reads); an upstream one has none to report.
    expect(health.models.alpha).toEqual({ backend: "local:alpha", state: "running", running: expect.any(Number), waiting: expect.any(Number) });
    expect(health.models.remote).toEqual({ backend: "upstream:peer", state: "running" });
    expect(await metricValue(/^tokenmill_prompt_tokens_total\{model="beta"\}/)).toBeGreaterThan(0);
  });

  it("serves embeddings by a local model and through an upstream one, under the same key and ledger", async () => {
    const input = ["A river runs.", "Hills stand still."];
    const [local, remote, alone] = await Promise.all(["alpha", "remote"].map(async (model) => {
      const id = `routing-${numRequests++}`;
      const response = await client.embeddings.create({ model, input, encoding_format: "float" }, { headers: { "x-request-id": id } });
      seen.set(id, { model, usage: { ...response.usage, completion_tokens: 0 } as OpenAI.CompletionUsage & { cost?: number } });
      return response;
    }).concat(peerClient.embeddings.create({ model: "tiny", input, encoding_format: "float" })));
    expect(remote.model).toBe("remote");
    expect(remote.usage).toMatchObject({ prompt_tokens: local.usage.prompt_tokens, cost: expect.any(Number) });
    for (const [i, d] of remote.data.entries()) {
      expect(d.embedding).toEqual(alone.data[i].embedding);
      expect(d.embedding).toEqual(local.data[i].embedding);
    }
  });

  it("serves the Responses and Messages APIs through an upstream model as the local one answers them, streamed and whole", async () => {
    const anthropic = new Anthropic({ baseURL: router.url, apiKey: "unused", maxRetries: 0 });
    const input = "Tell me about the sea.";
    const tellResponses = (id: string, model: string, u: OpenAI.Responses.ResponseUsage) =>
      seen.set(id, { model, usage: { prompt_tokens: u.input_tokens, completion_tokens: u.output_tokens, total_tokens: u.total_tokens, prompt_tokens_details: { cached_tokens: u.input_tokens_details.cached_tokens } } });
    const tellMessages = (id: string, model: string, u: Anthropic.Usage | Anthropic.MessageDeltaUsage) => {
      const cached = u.cache_read_input_tokens ?? 0;
      const prompt = (u.input_tokens ?? 0) + cached;
      seen.set(id, { model, usage: { prompt_tokens: prompt, completion_tokens: u.output_tokens, total_tokens: prompt + u.output_tokens, prompt_tokens_details: { cached_tokens: cached } } });
    };
    const responses = await Promise.all(["alpha", "remote"].map(async (model) => {
      const id = `routing-${numRequests++}`;
      const response = await client.responses.create({ model, input, max_output_tokens: 12, temperature: 0, store: false }, { headers: { "x-request-id": id } });
      tellResponses(id, model, response.usage!);
      return response;
    }));
    expect(responses[1].model).toBe("remote");
    expect(responses[1].output_text).toBe(responses[0].output_text);
    expect(responses[1].usage).toMatchObject({ input_tokens: responses[0].usage!.input_tokens, output_tokens: responses[0].usage!.output_tokens });
    const streamId = `routing-${numRequests++}`;
    const stream = await client.responses.create({ model: "remote", input, max_output_tokens: 12, temperature: 0, store: false, stream: true }, { headers: { "x-request-id": streamId } });
    let streamed = "";
    for await (const event of stream) {
      if (event.type === "response.output_text.delta") streamed += event.delta;
      if (event.type === "response.completed" || event.type === "response.incomplete") tellResponses(streamId, "remote", event.response.usage!);
    }
    expect(streamed).toBe(responses[0].output_text);

    const messages = await Promise.all(["alpha", "remote"].map(async (model) => {
      const id = `routing-${numRequests++}`;
      const message = await anthropic.messages.create(greedy({ model, max_tokens: 12, messages: [{ role: "user", content: input }] }), { headers: { "x-request-id": id } });
      tellMessages(id, model, message.usage);
      return message;
    }));
    expect(messages[1].model).toBe("remote");
    expect(messages[1].content).toEqual(messages[0].content);
    expect(messages[1].stop_reason).toBe(messages[0].stop_reason);
    const messageStreamId = `routing-${numRequests++}`;
    const final = await anthropic.messages.stream(greedy({ model: "remote", max_tokens: 12, messages: [{ role: "user", content: input }] }), { headers: { "x-request-id": messageStreamId } }).finalMessage();
    tellMessages(messageStreamId, "remote", final.usage);
    expect(final.content).toEqual(messages[0].content);

    // A forced tool call comes back from the upstream's tool_calls as the local model's tool_use.
    const tools = [{ name: "get_weather", description: "Weather for a city", input_schema: { type: "object" as const, properties: { city: { enum: ["Oslo", "Paris", "Lima"] } }, required: ["city"] } }];
    const calls = await Promise.all(["alpha", "remote"].map((model) => anthropic.messages.create(greedy({
      model, max_tokens: 60, tools, tool_choice: { type: "tool", name: "get_weather" }, messages: [{ role: "user", content: "Weather in Oslo?" }],
    }))));
    expect(calls.map((c) => c.stop_reason)).toEqual(["tool_use", "tool_use"]);
    const [localUse, remoteUse] = calls.map((c) => c.content.find((b) => b.type === "tool_use") as Anthropic.ToolUseBlock);
    expect(remoteUse).toMatchObject({ name: "get_weather", input: localUse.input });
  });

  it("turns an upstream's streamed reasoning, text and tool call in parts into Responses items and Messages blocks", async () => {
    const tools = [{ type: "function" as const, name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } }, strict: false }];
    const response = await client.responses.create({ model: "piecemeal", input: "Weather in Oslo?", tools, store: false });
    expect(response.output.map((item) => item.type)).toEqual(["reasoning", "message", "function_call"]);
    expect(response.output[0]).toMatchObject({ content: [{ type: "reasoning_text", text: "Thinking it over." }] });
    expect(response.output_text).toBe("Let me check.");
    expect(response.output[2]).toMatchObject({ call_id: "call_scripted", name: "get_weather", arguments: '{"city": "Oslo"}' });
    expect(response.usage).toMatchObject({ input_tokens: 11, input_tokens_details: { cached_tokens: 4 }, output_tokens: 3, output_tokens_details: { reasoning_tokens: 2 } });
    const sent = piecemeal.calls.at(-1)!;
    expect(sent).toMatchObject({ path: "/v1/chat/completions", body: { model: "piecemeal", stream: true, stream_options: { include_usage: true } } });

    const anthropic = new Anthropic({ baseURL: router.url, apiKey: "unused", maxRetries: 0 });
    const message = await anthropic.messages.stream({
      model: "piecemeal", max_tokens: 50, tools: [{ name: "get_weather", input_schema: { type: "object" } }], messages: [{ role: "user", content: "Weather in Oslo?" }],
    }).finalMessage();
    expect(message.content).toEqual([
      { type: "thinking", thinking: "Thinking it over.", signature: "" },
      { type: "text", text: "Let me check." },
      { type: "tool_use", id: "toolu_scripted", name: "get_weather", input: { city: "Oslo" } },
    ]);
    expect(message).toMatchObject({ stop_reason: "tool_use", usage: { input_tokens: 7, cache_read_input_tokens: 4, output_tokens: 3 } });
    // top_k is tokenmill's and vLLM's, not OpenAI's: it does not go up.
    await anthropic.messages.create({ model: "piecemeal", max_tokens: 5, top_k: 3, messages: [{ role: "user", content: "hi" }] } as Anthropic.MessageCreateParamsNonStreaming);
    expect(Object.keys(piecemeal.calls.at(-1)!.body)).not.toContain("top_k");
  });

  it("streams an upstream through as it comes, with the upstream's exact usage only when asked", async () => {
    const prompt = "Stream me something.";
    const whole = await chat("remote", prompt, { max_tokens: 16 });
    const id = `routing-${numRequests++}`;
    const stream = await client.chat.completions.create(
      { model: "remote", messages: [{ role: "user", content: prompt }], max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true } },
      { headers: { "x-request-id": id } },
    );
    let text = "";
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      expect(chunk.model).toBe("remote");
      text += chunk.choices[0]?.delta.content ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(textOf(whole));
    expect(usage).toMatchObject({ prompt_tokens: whole.usage!.prompt_tokens, completion_tokens: whole.usage!.completion_tokens, cost: expect.any(Number) });
    seen.set(id, { model: "remote", usage: usage! });
    const plain = await client.chat.completions.create({ model: "remote", messages: [{ role: "user", content: prompt }], max_tokens: 4, stream: true }, { headers: { "x-request-id": "routing-plain-stream" } });
    const chunks = [];
    for await (const chunk of plain) chunks.push(chunk);
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.every((c) => c.usage === undefined)).toBe(true);
  });

  it("falls back while a local engine is down, even for a request it held, and comes back when it recovers", async () => {
    const alpha = router.ctx.models.local("alpha");
    const engine = alpha.engine as Engine;
    const generated = () => engine.stats?.numGenerationTokens ?? 0;
    const before = generated();
    const held = chat("chat", "A long answer, please.", { max_tokens: 300, ignore_eos: true });
    await until(() => alpha.numInFlight > 0, { timeoutMs: 60_000 });
    await until(() => generated() > before, { timeoutMs: 60_000, what: "the held request to be generating" });
    engine.injectFault();
    await until(() => engine.state === "restarting", { timeoutMs: 10_000 });
    // NOTE: sent at once: the thread is back within a second or two.
    const [during, refused, health] = await Promise.all([
      chat("chat", "During the restart."),
      client.chat.completions.create({ model: "alpha", messages: [{ role: "user", content: "x" }], max_tokens: 2 }).catch((err: unknown) => err),
      fetch(`${router.url}/health`).then(async (r) => ({ status: r.status, body: await r.json() })),
    ]);
    expect(during.model).toBe("remote");
    expect(refused).toMatchObject({ status: 503, code: "engine_restarting" });
    expect(health.status).toBe(200);
    expect(health.body).toMatchObject({ status: "degraded", models: { alpha: { state: "restarting" } }, unavailable: ["alpha"] });
    const rescued = await held;
    expect(rescued.model).toBe("remote");
    expect(rescued.usage!.completion_tokens).toBe(300);
    expect(rescued.choices[0].finish_reason).toBe("length");

    await until(() => engine.state === "running", { timeoutMs: 60_000 });
    expect((await chat("chat", "After the restart.")).model).toBe("alpha");
    expect(await metricValue(/^tokenmill_route_fallbacks_total\{route="chat",from="alpha",to="remote",reason="engine_down"\}/)).toBeGreaterThanOrEqual(2);
    expect((await (await fetch(`${router.url}/health`)).json() as { status: string }).status).toBe("ok");
  }, 120_000);

  it("retries a failing upstream, opens its breaker, falls back, and gives one clean error only when every target has failed", async () => {
    const err = await client.chat.completions.create({ model: "fragile", messages: [{ role: "user", content: "hi" }], max_tokens: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err).toMatchObject({ status: 429, code: "rate_limit_exceeded" });
    expect((err as InstanceType<typeof OpenAI.APIError>).error).toMatchObject({ message: expect.stringContaining("flaky429") });
    expect(failing500.calls).toHaveLength(3);
    expect(failing429.calls).toHaveLength(3);
    const flaky = router.ctx.models.backend("flaky-a") as UpstreamBackend;
    expect(flaky.provider.breakerFor(flaky.upstreamModel).state).toBe("open");

    const rescued = await chat("sturdy", "Rescue me.");
    expect(rescued.model).toBe("alpha");
    expect(failing500.calls).toHaveLength(3);
    expect(await metricValue(/^tokenmill_upstream_tries_total\{provider="flaky500",result="500"\}/)).toBe(3);
    expect(await metricValue(/^tokenmill_upstream_breaker_open\{(?=[^}]*provider="flaky500")(?=[^}]*model="flaky-a")[^}]*\}/)).toBe(1);
    const health = await (await fetch(`${router.url}/health`)).json() as { status: string; models: Record<string, { state: string }>; unavailable: string[] };
    expect(health).toMatchObject({ status: "degraded", models: { "flaky-a": { state: "breaker_open" }, "flaky-b": { state: "breaker_open" } } });
    expect(health.unavailable.sort()).toEqual(["flaky-a", "flaky-b", "fragile"]);

    failing500.script = { kind: "ok", text: "healthy again" };
    await until(() => flaky.provider.breakerFor(flaky.upstreamModel).state === "half_open", { what: "the breaker's cool-down" });
    const healed = await chat("fragile", "Are you back?");
    expect(healed.model).toBe("flaky-a");
    expect(textOf(healed)).toBe("healthy again");
    expect(flaky.provider.breakerFor(flaky.upstreamModel).state).toBe("closed");
    expect(failing500.calls.at(-1)!.body).toMatchObject({ model: "flaky-a", max_tokens: 12 });

    // The Responses API falls back the same way, while nothing has reached its client.
    failing500.script = { kind: "status", status: 500 };
    const rescuedResponse = await client.responses.create({ model: "sturdy", input: "Rescue me.", max_output_tokens: 4, store: false });
    expect(rescuedResponse.model).toBe("alpha");
    expect(failing500.calls.at(-1)!.body).toMatchObject({ model: "flaky-a", stream: true });
  });

  it("bursts a flood over a small local model to the upstream, refusing nothing either could serve", async () => {
    const prompt = "The same question for everyone.";
    const responses = await Promise.all(Array.from({ length: 12 }, () => chat("flood", prompt, { max_tokens: 24, ignore_eos: true })));
    const byModel = new Map<string, number>();
    for (const r of responses) byModel.set(r.model, (byModel.get(r.model) ?? 0) + 1);
    expect(byModel.get("beta")).toBeGreaterThanOrEqual(3);
    expect(byModel.get("remote")).toBeGreaterThanOrEqual(1);
    expect((byModel.get("beta") ?? 0) + (byModel.get("remote") ?? 0)).toBe(12);
    // The same float32 model, local and upstream: greedy answers agree.
    expect(new Set(responses.map(textOf)).size).toBe(1);
    expect(await metricValue(/^tokenmill_route_bursts_total\{route="flood",to="remote"\}/)).toBe(byModel.get("remote"));
  });

  it("aborts the upstream request when its client leaves mid-stream", async () => {
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      { model: "slow-remote", messages: [{ role: "user", content: "go on forever" }], stream: true },
      { signal: controller.signal, headers: { "x-request-id": "routing-left" } },
    );
    let n = 0;
    try {
      for await (const _chunk of stream) if (++n === 3) controller.abort();
    } catch {
      // the abort
    }
    await until(() => slow.numAbandoned === 1, { timeoutMs: 5000 });
    const backend = router.ctx.models.backend("slow-remote") as UpstreamBackend;
    await until(() => backend.provider.numInFlight === 0 && backend.numInFlight === 0, { timeoutMs: 5000 });
  });

  // NOTE: the first key ends anonymous serving, so this runs after every anonymous test.
  it("applies the same key, allow-list and limits whichever backend serves, and never falls back past a key's limit", async () => {
    const key = await createKey(router.url, { name: "routed", models: ["chat", "remote"], rpm: 2 });
    const keyed = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: key.secret, maxRetries: 0 });
    expect((await keyed.models.list()).data.map((m) => m.id).sort()).toEqual(["chat", "remote"]);
    expect(await keyed.chat.completions.create({ model: "alpha", messages: [{ role: "user", content: "x" }], max_tokens: 2 }).catch((e: unknown) => e))
      .toMatchObject({ status: 404, code: "model_not_found" });
    expect((await chat("remote", "Keyed, upstream.", {}, keyed)).model).toBe("remote");
    expect((await chat("chat", "Keyed, local.", {}, keyed)).model).toBe("alpha");
    expect(await keyed.chat.completions.create({ model: "chat", messages: [{ role: "user", content: "x" }], max_tokens: 2 }).catch((e: unknown) => e))
      .toMatchObject({ status: 429, code: "rate_limit_exceeded" });
    keyId = key.id;
  });

  it("settles every request once, under its real backend: the ledger's sums per backend equal what clients saw", async () => {
    await router.close();
    const store = await openStore(DB);
    try {
      const rows = await store.db.selectFrom("usage_ledger").selectAll().execute();
      const byId = new Map(rows.map((row) => [row.http_request_id, row]));
      const backendOf = (model: string) => (["alpha", "beta"].includes(model) ? `local:${model}` : model.startsWith("remote") ? "upstream:peer" : `upstream:${model === "flaky-a" ? "flaky500" : "flaky429"}`);
      const sums = new Map<string, { input: number; cached: number; output: number; cost: number }>();
      const add = (key: string, input: number, cached: number, output: number, cost: number) => {
        const sum = sums.get(key) ?? { input: 0, cached: 0, output: 0, cost: 0 };
        sums.set(key, { input: sum.input + input, cached: sum.cached + cached, output: sum.output + output, cost: sum.cost + cost });
      };
      for (const [id, told] of seen) {
        const row = byId.get(id);
        expect(row, id).toBeDefined();
        expect({ id, model: row!.model, backend: row!.backend, status: row!.status }).toEqual({ id, model: told.model, backend: backendOf(told.model), status: "completed" });
        const cached = told.usage.prompt_tokens_details?.cached_tokens ?? 0;
        expect([row!.uncached_input_tokens, row!.cached_input_tokens, row!.output_tokens]).toEqual([told.usage.prompt_tokens - cached, cached, told.usage.completion_tokens]);
        if (told.usage.cost !== undefined) expect(row!.cost_micro_usd).toBe(Math.round(told.usage.cost * 1e6));
        // NOTE: the Responses and Messages APIs tell no cost: their rows' cost is checked by the ledger tests, not here.
        add(`told:${row!.backend}`, told.usage.prompt_tokens, cached, told.usage.completion_tokens, told.usage.cost === undefined ? row!.cost_micro_usd : Math.round(told.usage.cost * 1e6));
      }
      for (const row of rows.filter((r) => seen.has(r.http_request_id ?? ""))) {
        add(`ledger:${row.backend}`, row.uncached_input_tokens + row.cached_input_tokens, row.cached_input_tokens, row.output_tokens, row.cost_micro_usd);
      }
      for (const backend of ["local:alpha", "local:beta", "upstream:peer", "upstream:flaky500"]) {
        expect(sums.get(`ledger:${backend}`), backend).toEqual(sums.get(`told:${backend}`));
      }
      expect(rows.find((r) => r.http_request_id === "routing-left")).toMatchObject({ status: "stopped", model: "slow-remote", backend: "upstream:slow", uncached_input_tokens: 0 });
      expect(rows.find((r) => r.http_request_id === "routing-left")!.output_tokens).toBeGreaterThanOrEqual(3);
      // The fallback's rows: the route the client asked for, and the model that served it.
      expect(rows.filter((r) => r.route === "chat" && r.model === "remote")).toHaveLength(2);
      expect(rows.every((r) => r.status !== "in_flight")).toBe(true);
      expect(rows.filter((r) => r.key_id === keyId).map((r) => r.backend).sort()).toEqual(["local:alpha", "upstream:peer"]);
    } finally {
      await store.close();
    }
  });
});
