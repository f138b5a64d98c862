/**
 * Upstream providers that misbehave, against a real tokenmill server routing to scripted
 * OpenAI-compatible servers on loopback:
 * - a usage that is negative, fractional, absurd, not a number or missing is the upstream's
 *   fault, logged, and replaced by what was seen; every client (chat whole and streamed,
 *   Responses, Messages) is told exactly what the ledger holds;
 * - an upstream that answers 200 and then stalls, sends garbage or drops the connection fails
 *   like one that answers 500: its model's breaker opens, a stream not yet begun falls back,
 *   and a client told its request failed is billed nothing;
 * - one failing model opens only its own breaker, not its provider's other models'.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "../../server/serve.ts";
import { openStore } from "../../service/store/open-store.ts";
import { SCRIPTED_USAGE, startScriptedUpstream, type ScriptedUpstream } from "../helpers/scripted-upstream.ts";

const MODEL = "remote";
let dir: string;
let db: string;
let upstream: ScriptedUpstream;
/** A second provider, with two models: "flaky" (scripted to fail in each test) and "steady". */
let faulty: ScriptedUpstream;
let router: RunningServer;
let client: OpenAI;
const logs: string[] = [];
let numRequests = 0;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "tokenmill-upstream-faults-"));
  db = `sqlite:${join(dir, "router.db")}`;
  upstream = await startScriptedUpstream({ kind: "ok" });
  faulty = await startScriptedUpstream({ kind: "ok" });
  const noRetries = { maxRetries: 0, baseDelayMs: 10, maxDelayMs: 50, maxRetryAfterMs: 1000 };
  router = await startServer({
    models: [],
    providers: [{
      name: "scripted", baseUrl: upstream.url, apiKey: null, timeoutMs: 10_000, maxConcurrency: 8,
      retry: noRetries, breaker: { failureThreshold: 50, cooldownMs: 500 }, models: [{ name: MODEL }],
    }, {
      name: "faulty", baseUrl: faulty.url, apiKey: null, timeoutMs: 400, maxConcurrency: 8,
      retry: noRetries, breaker: { failureThreshold: 2, cooldownMs: 60_000 }, models: [{ name: "flaky-stall" }, { name: "flaky-garbage" }, { name: "flaky-close" }, { name: "steady" }],
    }],
    routes: [
      { name: "safe-stall", targets: ["flaky-stall", MODEL] },
      { name: "safe-garbage", targets: ["flaky-garbage", MODEL] },
      { name: "safe-close", targets: ["flaky-close", MODEL] },
    ],
    host: "127.0.0.1", port: 0, shutdownTimeoutMs: 5000, bodyLimitBytes: 1024 * 1024,
    logger: { level: "warn", stream: { write: (line: string) => void logs.push(line) } },
    db: { url: db, replica: "router", prices: [{ model: MODEL, inputPerMtok: 1_000_000, cachedInputPerMtok: 500_000, outputPerMtok: 2_000_000 }] },
  });
  await router.ready;
  client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "unused", maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await router?.close();
  await upstream?.close();
  await faulty?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function rowOf(requestId: string) {
  const store = await openStore(db);
  try {
    return await store.db.selectFrom("usage_ledger").selectAll().where("http_request_id", "=", requestId).executeTakeFirstOrThrow();
  } finally {
    await store.close();
  }
}

/** Input, cached input and output tokens, as a client was told them (and the cost in USD, where the API tells it). */
interface Told { input: number; cached: number; output: number; cost?: number }

async function expectLedgerSays(requestId: string, told: Told): Promise<void> {
  for (const n of [told.input, told.cached, told.output]) expect(Number.isSafeInteger(n) && n >= 0, `${JSON.stringify(told)}`).toBe(true);
  const row = await rowOf(requestId);
  const { cost, ...tokens } = told;
  expect({ input: row.uncached_input_tokens + row.cached_input_tokens, cached: row.cached_input_tokens, output: row.output_tokens }).toEqual(tokens);
  if (cost !== undefined) expect(row.cost_micro_usd).toBe(Math.round(cost * 1e6));
  expect(row.status).toBe("completed");
  expect(row.cost_micro_usd).toBeGreaterThanOrEqual(0);
  expect(row.cost_micro_usd).toBe(told.input - told.cached + told.cached / 2 + told.output * 2);
}

/** Every client family, through the router: what each was told, with its request id. */
const CLIENTS: Record<string, () => Promise<{ id: string; told: Told }>> = {
  "chat, whole": async () => {
    const id = `faults-${numRequests++}`;
    const reply = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi there" }], max_tokens: 5 }, { headers: { "x-request-id": id } });
    const u = reply.usage! as OpenAI.CompletionUsage & { cost: number };
    return { id, told: { input: u.prompt_tokens, cached: u.prompt_tokens_details?.cached_tokens ?? 0, output: u.completion_tokens, cost: u.cost } };
  },
  "chat, streamed with include_usage": async () => {
    const id = `faults-${numRequests++}`;
    const stream = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi there" }], max_tokens: 5, stream: true, stream_options: { include_usage: true } }, { headers: { "x-request-id": id } });
    let usage: (OpenAI.CompletionUsage & { cost: number }) | null = null;
    for await (const chunk of stream) usage = (chunk.usage as typeof usage) ?? usage;
    expect(usage).not.toBeNull();
    return { id, told: { input: usage!.prompt_tokens, cached: usage!.prompt_tokens_details?.cached_tokens ?? 0, output: usage!.completion_tokens, cost: usage!.cost } };
  },
  "Responses": async () => {
    const id = `faults-${numRequests++}`;
    const reply = await client.responses.create({ model: MODEL, input: "hi there", store: false }, { headers: { "x-request-id": id } });
    const u = reply.usage!;
    return { id, told: { input: u.input_tokens, cached: u.input_tokens_details.cached_tokens, output: u.output_tokens } };
  },
  "Messages": async () => {
    const id = `faults-${numRequests++}`;
    const reply = await fetch(`${router.url}/v1/messages`, {
      method: "POST", headers: { "content-type": "application/json", "x-request-id": id, "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model: MODEL, max_tokens: 5, messages: [{ role: "user", content: "hi there" }] }),
    });
    expect(reply.status).toBe(200);
    const u = ((await reply.json()) as { usage: { input_tokens: number; cache_read_input_tokens: number; output_tokens: number } }).usage;
    return { id, told: { input: u.input_tokens + u.cache_read_input_tokens, cached: u.cache_read_input_tokens, output: u.output_tokens } };
  },
};

describe("an upstream's usage", () => {
  it.each(Object.keys(CLIENTS))("a sound one comes through exact: %s", async (name) => {
    upstream.script = { kind: "ok", text: "a sound answer" };
    const { id, told } = await CLIENTS[name]();
    expect({ ...told, cost: undefined }).toEqual({ cost: undefined, input: SCRIPTED_USAGE.prompt_tokens, cached: SCRIPTED_USAGE.prompt_tokens_details.cached_tokens, output: SCRIPTED_USAGE.completion_tokens });
    await expectLedgerSays(id, told);
  });

  const BAD: [string, unknown][] = [
    ["negative counts", { prompt_tokens: -5, completion_tokens: -1e9, total_tokens: -1e9 }],
    ["a count that is not a number", { prompt_tokens: 7, completion_tokens: "lots" }],
    ["fractions and an absurd count", { prompt_tokens: 1.5, completion_tokens: 1e12 }],
    ["cached tokens beyond the prompt", { prompt_tokens: 5, completion_tokens: 2, prompt_tokens_details: { cached_tokens: 90 } }],
    ["no usage at all", null],
  ];
  for (const [what, usage] of BAD) {
    it.each(Object.keys(CLIENTS))(`${what}: %s gets a 200, is told sound counts, and the ledger holds the same`, async (name) => {
      upstream.script = { kind: "ok", text: "four words of answer", usage };
      const before = logs.length;
      const { id, told } = await CLIENTS[name]();
      await expectLedgerSays(id, told);
      // Output was seen, so it is billed: never a refund, never free.
      expect(told.output).toBeGreaterThan(0);
      expect(told.input).toBeGreaterThan(0);
      expect(logs.slice(before).join("")).toMatch(/upstream provider scripted misbehaved: its usage is not believable/);
    });
  }
});

describe("an upstream that fails after its 200", () => {
  const FAULTS = [["stall", "stall-after-headers", 504, "upstream_timeout"], ["garbage", "garbage-after-headers", 502, "upstream_error"], ["close", "close-mid-body", 502, "upstream_error"]] as const;

  it.each(FAULTS)("%s: a whole answer gets its own 5xx (never a 500), the stream falls back before its first byte, and two failures open the model's breaker", async (name, kind, status, code) => {
    faulty.byModel[`flaky-${name}`] = { kind };
    upstream.script = { kind: "ok", text: "the fallback answers" };
    const whole = await fetch(`${router.url}/v1/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: `flaky-${name}`, messages: [{ role: "user", content: "hi" }], max_tokens: 5 }),
    });
    expect(whole.status).toBe(status);
    expect(((await whole.json()) as { error: { code: string } }).error.code).toBe(code);
    // Through a route, a stream falls back: the upstream failed before anything reached the client (a dropped stream had sent one chunk: it can't).
    const stream = await client.chat.completions.create({ model: `safe-${name}`, messages: [{ role: "user", content: "hi" }], max_tokens: 5, stream: true });
    let text = "";
    try {
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    } catch {
      // a stream cut after its first chunk: the client sees an error event
    }
    if (name === "close") expect(text).toBe("half");
    else expect(text).toBe("thefallbackanswers");
    // Two failures: the breaker of flaky-NAME is open, and the next call fails fast without reaching the upstream.
    const calls = faulty.calls.length;
    const fast = await fetch(`${router.url}/v1/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: `flaky-${name}`, messages: [{ role: "user", content: "hi" }], max_tokens: 5 }),
    });
    expect(fast.status).toBe(503);
    expect(((await fast.json()) as { error: { code: string } }).error.code).toBe("upstream_unavailable");
    expect(faulty.calls.length).toBe(calls);
    // The provider's other model is untouched.
    const steady = await client.chat.completions.create({ model: "steady", messages: [{ role: "user", content: "hi" }], max_tokens: 5 });
    expect(steady.choices[0].message.content).toBe("scripted answer");
    const health = (await (await fetch(`${router.url}/health`)).json()) as { models: Record<string, { state: string }> };
    expect(health.models[`flaky-${name}`].state).toBe("breaker_open");
    expect(health.models.steady.state).toBe("running");
  });

  it("Responses and Messages whose upstream drops the connection: the client gets a 502, and the ledger bills nothing", async () => {
    faulty.byModel["flaky-drop"] = { kind: "garbage-after-headers" };
    const id = `faults-${numRequests++}`;
    const responses = await fetch(`${router.url}/v1/responses`, {
      method: "POST", headers: { "content-type": "application/json", "x-request-id": id }, body: JSON.stringify({ model: "steady", input: "hi", store: false }),
    });
    expect(responses.status).toBe(200);
    faulty.byModel.steady = { kind: "close-mid-body" };
    try {
      for (const [path, body] of [["/v1/responses", { model: "steady", input: "hi", store: false }], ["/v1/messages", { model: "steady", max_tokens: 5, messages: [{ role: "user", content: "hi" }] }]] as const) {
        const failedId = `faults-${numRequests++}`;
        const reply = await fetch(`${router.url}${path}`, { method: "POST", headers: { "content-type": "application/json", "x-request-id": failedId }, body: JSON.stringify(body) });
        expect(reply.status).toBe(502);
        const row = await rowOf(failedId);
        expect([row.status, row.uncached_input_tokens, row.output_tokens, row.cost_micro_usd]).toEqual(["error", 0, 0, 0]);
      }
    } finally {
      delete faulty.byModel.steady;
    }
  });
});
