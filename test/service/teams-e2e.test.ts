/**
 * Teams end to end, with the real server, model and database: a team's budget and RPM shared
 * by its keys under concurrency (SQLite and PostgreSQL, one process; two replicas are in
 * teams-replicas.test.ts), a key's budget inside its team's, member budgets, per-model budgets
 * whose tracking, enforcement and report read one counter, and data residency against a
 * scripted upstream that counts every byte it is sent.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_ENGINE_OPTIONS, type Engine } from "../../engine/index.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { startServer, type RunningServer } from "../../server/serve.ts";
import { openStore } from "../../service/store/open-store.ts";
import { usageByBucket } from "../../service/usage-report.ts";
import { ADMIN, MODEL, chat, createKey, statuses, type Answer } from "../helpers/limits.ts";
import { admin, createTeam, ledgerOf, messageOf, spread } from "../helpers/teams.ts";
import { startScriptedUpstream, type ScriptedUpstream } from "../helpers/scripted-upstream.ts";
import { startTestServer } from "../helpers/server.ts";
import { testDatabase } from "../helpers/test-database.ts";
import { until } from "../helpers/until.ts";

/** $1 per million output tokens, input free: a request costs exactly its output tokens in micro-USD. */
const price = (model: string) => ({ model, inputPerMtok: 0, cachedInputPerMtok: 0, outputPerMtok: 1_000_000 });

/** GET /v1/key's body, as far as these tests read it. */
interface KeyView {
  data_residency: string;
  usage: Record<string, number>;
  model_limits: Record<string, { budget_usd: { limit: number; used: number; reserved: number; remaining: number } }>;
  team: { usage: Record<string, number> } & Record<string, unknown>;
}

async function keyView(url: string, secret: string): Promise<KeyView> {
  const response = await fetch(`${url}/v1/key`, { headers: { authorization: `Bearer ${secret}` } });
  expect(response.status).toBe(200);
  return (await response.json()) as KeyView;
}

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`teams under concurrency on ${kind}, one process`, () => {
    let server: RunningServer;
    const database = testDatabase(kind, "teams-e2e");
    beforeAll(async () => {
      server = await startTestServer({ db: { url: database.url, replica: "one", prices: [price(MODEL)] }, adminKeys: [ADMIN] });
    }, 120_000);
    afterAll(async () => server?.close());

    it("a team budget B shared by 3 keys: 30 concurrent requests spread over them serve exactly what B pays for", async () => {
      // Each request reserves and spends c = 8 micro-USD (8 output tokens, ignore_eos); B = 10c.
      const team = await createTeam(server.url, { name: "search", budget_usd: "0.00008", budget_period: "day" });
      const keys = await Promise.all([0, 1, 2].map((i) => createKey(server.url, { name: `search-${i}`, team_id: team.id })));
      const answers = await spread([server.url], keys.map((k) => k.secret), 30, { max_tokens: 8, ignore_eos: true });
      expect(statuses(answers)).toEqual([...Array(10).fill("200"), ...Array(20).fill("429 insufficient_quota")].sort());
      expect(messageOf(answers.find((a) => a.status === 429)!)).toMatch(/the team budget_usd of team "search" (is exhausted|has no room for this request) \(resets at \d{4}-\d\d-\d\dT00:00:00\.000Z\)/);
      expect(await ledgerOf(database.url, { teamId: team.id })).toMatchObject({ served: 10, costMicroUsd: 80 });
      // Tracked where the key is shown: the team's counter, the one enforcement read.
      const view = await keyView(server.url, keys[0].secret);
      expect(view.team).toMatchObject({ id: team.id, name: "search", budget_usd: 0.00008, limits: { budget_usd: { limit: 0.00008, used: 0.00008, reserved: 0, remaining: 0, period: "day" } } });
      expect(view.team.usage).toMatchObject({ num_model_requests: 30, output_tokens: 80, cost: 0.00008 });
    });

    it("a key budget inside its team's: the smaller one binds, and each refusal names its level", async () => {
      const team = await createTeam(server.url, { name: "ads", budget_usd: "0.00008", budget_period: "day" });
      const small = await createKey(server.url, { name: "ads-small", team_id: team.id, budget_usd: "0.000024", budget_period: "day" });
      const other = await createKey(server.url, { name: "ads-other", team_id: team.id });
      const first = await spread([server.url], [small.secret], 10, { max_tokens: 8, ignore_eos: true });
      expect(statuses(first)).toEqual([...Array(3).fill("200"), ...Array(7).fill("429 insufficient_quota")].sort());
      expect(messageOf(first.find((a) => a.status === 429)!)).toMatch(/the key budget_usd of key "ads-small"/);
      const second = await spread([server.url], [other.secret], 10, { max_tokens: 8, ignore_eos: true });
      expect(statuses(second)).toEqual([...Array(7).fill("200"), ...Array(3).fill("429 insufficient_quota")].sort());
      expect(messageOf(second.find((a) => a.status === 429)!)).toMatch(/the team budget_usd of team "ads"/);
      expect(await ledgerOf(database.url, { teamId: team.id })).toMatchObject({ served: 10, costMicroUsd: 80 });
    });

    it("a team's RPM limit is shared by its keys: R of 3R simultaneous requests over 3 keys", async () => {
      const team = await createTeam(server.url, { name: "rpm-team", rpm: 5 });
      const keys = await Promise.all([0, 1, 2].map((i) => createKey(server.url, { name: `rpm-${i}`, team_id: team.id })));
      const answers = await spread([server.url], keys.map((k) => k.secret), 15, { max_tokens: 1 });
      expect(statuses(answers)).toEqual([...Array(5).fill("200"), ...Array(10).fill("429 rate_limit_exceeded")].sort());
      expect(messageOf(answers.find((a) => a.status === 429)!)).toMatch(/the team rpm of team "rpm-team" is 5/);
    });

    it("a team's member budget caps each key that sets none; a key's own budget wins over it", async () => {
      const team = await createTeam(server.url, { name: "members", member_budget: { budget_usd: "0.000016", period: "day" } });
      const capped = await createKey(server.url, { name: "member", team_id: team.id });
      const own = await createKey(server.url, { name: "member-own", team_id: team.id, budget_usd: "0.00004", budget_period: "day" });
      expect(statuses(await spread([server.url], [capped.secret], 6, { max_tokens: 8, ignore_eos: true })))
        .toEqual([...Array(2).fill("200"), ...Array(4).fill("429 insufficient_quota")].sort());
      expect(statuses(await spread([server.url], [own.secret], 6, { max_tokens: 8, ignore_eos: true })))
        .toEqual([...Array(5).fill("200"), "429 insufficient_quota"].sort());
    });
  });
}

describe("teams, per-model budgets and data residency as a client meets them", () => {
  const database = testDatabase("sqlite", "teams-client");
  let cloud: ScriptedUpstream;
  let server: RunningServer;
  const SECRET = "LOCAL-ONLY-SECRET-7f3a";
  const cloudSaw = (text: string) => cloud.calls.some((call) => call.text.includes(text));

  beforeAll(async () => {
    cloud = await startScriptedUpstream({ kind: "ok", text: "from the cloud" });
    const checkpoint = readCheckpoint(ensureDefaultModel());
    const engineOptions = { ...DEFAULT_ENGINE_OPTIONS, modelDir: checkpoint.dir, kvCacheMemoryBytes: 64 * 1024 ** 2, intraOpThreads: 1 };
    server = await startServer({
      models: [
        { name: "alpha", engineOptions: { ...engineOptions, maxNumSeqs: 8 }, defaults: checkpoint.generationDefaults, maxQueuedRequests: 64 },
        { name: "beta", engineOptions: { ...engineOptions, maxNumSeqs: 1 }, defaults: checkpoint.generationDefaults, maxQueuedRequests: 64 },
        { name: "gamma", engineOptions: { ...engineOptions, maxNumSeqs: 4 }, defaults: checkpoint.generationDefaults, maxQueuedRequests: 16 },
      ],
      providers: [{
        name: "cloud", baseUrl: cloud.url, apiKey: null, timeoutMs: 10_000, maxConcurrency: 32,
        retry: { maxRetries: 0, baseDelayMs: 10, maxDelayMs: 50, maxRetryAfterMs: 1000 }, breaker: { failureThreshold: 100, cooldownMs: 500 }, models: [{ name: "cloud-model" }],
      }],
      routes: [
        { name: "flood", targets: ["beta"], burst: { to: "cloud-model", waitingOver: 0 } },
        { name: "safe", targets: ["gamma", "cloud-model"] },
      ],
      host: "127.0.0.1", port: 0, shutdownTimeoutMs: 5000, bodyLimitBytes: 1024 * 1024, tokenizerThreads: 1, adminKeys: [ADMIN],
      db: { url: database.url, replica: "client", prices: [price("alpha"), price("beta"), price("gamma"), price("cloud-model")] },
    });
    await server.ready;
  }, 300_000);
  afterAll(async () => {
    await server?.close();
    await cloud?.close();
  });

  it("manages teams through the admin API, with the keys' rules: a unique name, models inside the team's, no delete while keys live", async () => {
    const team = await createTeam(server.url, { name: "platform", models: ["alpha", "cloud-model"], rpm: 100, model_budgets: { alpha: { budget_usd: 5, period: "week" } }, data_residency: "local" });
    expect(team).toMatchObject({
      object: "team", name: "platform", models: ["alpha", "cloud-model"], rpm: 100, data_residency: "local", num_keys: 0,
      model_budgets: { alpha: { budget_usd: 5, token_quota: null, period: "week" } }, member_budget: null,
    });
    expect(await admin(server.url, "POST", "/v1/admin/teams", { name: "platform" })).toMatchObject({ status: 400, body: { error: { param: "name" } } });
    expect(await admin(server.url, "POST", "/v1/admin/teams", { name: "x", model_budgets: { alpha: { period: "day" } } })).toMatchObject({ status: 400 });
    expect(await admin(server.url, "POST", "/v1/admin/keys", { name: "outside", team_id: team.id, models: ["beta"] }))
      .toMatchObject({ status: 400, body: { error: { param: "models", message: expect.stringMatching(/beta is not/) } } });
    expect(await admin(server.url, "POST", "/v1/admin/keys", { name: "lost", team_id: "team_nope" })).toMatchObject({ status: 400, body: { error: { param: "team_id" } } });
    const key = await createKey(server.url, { name: "platform-svc", team_id: team.id, models: ["alpha"] });
    expect((await admin(server.url, "GET", `/v1/admin/teams/${team.id}`)).body).toMatchObject({ num_keys: 1 });
    expect(await admin(server.url, "DELETE", `/v1/admin/teams/${team.id}`)).toMatchObject({ status: 409, body: { error: { code: "team_has_keys" } } });
    expect((await admin(server.url, "PATCH", `/v1/admin/teams/${team.id}`, { rpm: null, name: "platform-2" })).body).toMatchObject({ name: "platform-2", rpm: null });
    // A key of a team whose list leaves a model out can't use it, whatever its own list says.
    expect((await admin(server.url, "PATCH", `/v1/admin/teams/${team.id}`, { models: ["cloud-model"] })).status).toBe(200);
    expect((await chat(server.url, key.secret, { model: "alpha" })).status).toBe(404);
    expect((await admin(server.url, "DELETE", `/v1/admin/keys/${key.id}`)).status).toBe(200);
    expect(await admin(server.url, "DELETE", `/v1/admin/teams/${team.id}`)).toMatchObject({ status: 200, body: { deleted: true } });
    expect((await admin(server.url, "GET", `/v1/admin/teams/${team.id}`)).status).toBe(404);
  });

  it("a team's max_parallel and TPM bind its keys together, and their refusals name the team", async () => {
    const team = await createTeam(server.url, { name: "slots", max_parallel: 2, tpm: 1000 });
    const keys = await Promise.all([0, 1, 2].map((i) => createKey(server.url, { name: `slots-${i}`, team_id: team.id })));
    const controllers = [new AbortController(), new AbortController()];
    const open = await Promise.all(controllers.map(async (controller, i) => {
      const response = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST", headers: { authorization: `Bearer ${keys[i].secret}`, "content-type": "application/json" }, signal: controller.signal,
        body: JSON.stringify({ model: "alpha", messages: [{ role: "user", content: "go on" }], max_tokens: 300, ignore_eos: true, stream: true }),
      });
      const reader = response.body!.getReader();
      await reader.read();
      return reader;
    }));
    const refused = await chat(server.url, keys[2].secret, { model: "alpha" });
    expect(refused).toMatchObject({ status: 429, code: "rate_limit_exceeded" });
    expect(messageOf(refused)).toMatch(/the team max_parallel of team "slots" is 2 at once/);
    for (const controller of controllers) controller.abort();
    await Promise.all(open.map((reader) => reader.cancel().catch(() => undefined)));
    // The aborted requests settle and free their slots.
    await until(async () => ((await keyView(server.url, keys[2].secret)).team.limits as { max_parallel: { remaining: number } }).max_parallel.remaining === 2, { timeoutMs: 30_000 });
    const tooLarge = await chat(server.url, keys[2].secret, { model: "alpha", max_tokens: 2000 });
    expect(tooLarge.status).toBe(429);
    expect(messageOf(tooLarge)).toMatch(/Request too large for tokens per minute: the team tpm of team "slots" is 1000/);
  });

  it("a per-model budget: exhausting one model's leaves the key's other models served; track, enforce and report read one figure", async () => {
    const key = await createKey(server.url, { name: "per-model", model_budgets: { alpha: { budget_usd: "0.000016", period: "day" } } });
    const answers: Answer[] = [];
    for (let i = 0; i < 3; i++) answers.push(await chat(server.url, key.secret, { model: "alpha", max_tokens: 8, ignore_eos: true }));
    expect(answers.map((a) => a.status)).toEqual([200, 200, 429]);
    expect(messageOf(answers[2])).toMatch(/the key model_budgets\["alpha"\]\.budget_usd of key "per-model" is exhausted/);
    expect((await chat(server.url, key.secret, { model: "beta", max_tokens: 8, ignore_eos: true })).status).toBe(200);
    expect((await chat(server.url, key.secret, { model: "cloud-model", max_tokens: 8 })).status).toBe(200);
    const tracked = (await keyView(server.url, key.secret)).model_limits.alpha.budget_usd;
    expect(tracked).toMatchObject({ limit: 0.000016, used: 0.000016, reserved: 0, remaining: 0, period: "day" });
    const store = await openStore(database.url);
    try {
      const reported = (await usageByBucket(store.db, { startMs: 0, endMs: Date.now() + 60_000, bucketWidth: "1d", groupBy: ["api_key_id", "model"] }))
        .filter((g) => g.keyId === key.id && g.model === "alpha").reduce((sum, g) => sum + g.costMicroUsd, 0);
      expect(reported).toBe(16);
      expect(tracked.used * 1e6).toBeCloseTo(reported, 9);
    } finally {
      await store.close();
    }
  });

  it("residency: in one flood that bursts, a local-only key never bursts while a normal key does, and the upstream sees no byte of the local-only key's", async () => {
    const local = await createKey(server.url, { name: "regulated", data_residency: "local" });
    const normal = await createKey(server.url, { name: "normal" });
    const callsBefore = cloud.calls.length;
    const body = (secret: string, tag: string) => chat(server.url, secret, { model: "flood", max_tokens: 16, ignore_eos: true, messages: [{ role: "user", content: `${tag} question` }] });
    const answers = await Promise.all(Array.from({ length: 16 }, (_, i) => (i % 2 === 0 ? body(local.secret, SECRET) : body(normal.secret, "ordinary"))));
    const localModels = answers.filter((_, i) => i % 2 === 0).map((a) => `${a.status} ${a.body.model}`);
    const normalModels = answers.filter((_, i) => i % 2 === 1).map((a) => `${a.status} ${a.body.model}`);
    expect(localModels).toEqual(Array(8).fill("200 beta"));
    expect(normalModels.every((m) => m === "200 beta" || m === "200 cloud-model")).toBe(true);
    expect(normalModels).toContain("200 cloud-model");
    expect(cloud.calls.length).toBeGreaterThan(callsBefore);
    expect(cloudSaw(SECRET)).toBe(false);
    const store = await openStore(database.url);
    try {
      const rows = await store.db.selectFrom("usage_ledger").select(["residency", "model"]).where("key_id", "=", local.id).execute();
      expect(rows.map((r) => `${r.residency} ${r.model}`)).toEqual(Array(8).fill("local beta"));
    } finally {
      await store.close();
    }
  });

  it("residency, set on the team: a direct upstream model is a 403 on every API, /v1/models hides it, and nothing reaches the upstream", async () => {
    const team = await createTeam(server.url, { name: "regulated-team", data_residency: "local" });
    const key = await createKey(server.url, { name: "regulated-member", team_id: team.id });
    const callsBefore = cloud.calls.length;
    const refused = await chat(server.url, key.secret, { model: "cloud-model", messages: [{ role: "user", content: SECRET }] });
    expect(refused.status).toBe(403);
    expect(refused.body.error).toMatchObject({ code: "data_residency_violation", param: "model" });
    const headers = { authorization: `Bearer ${key.secret}`, "content-type": "application/json" };
    const responses = await fetch(`${server.url}/v1/responses`, { method: "POST", headers, body: JSON.stringify({ model: "cloud-model", input: SECRET }) });
    expect(responses.status).toBe(403);
    const messages = await fetch(`${server.url}/v1/messages`, {
      method: "POST", headers: { "x-api-key": key.secret, "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model: "cloud-model", max_tokens: 8, messages: [{ role: "user", content: SECRET }] }),
    });
    expect(messages.status).toBe(403);
    expect(await messages.json()).toMatchObject({ type: "error", error: { message: expect.stringMatching(/data_residency: local/) } });
    const sdk = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key.secret, maxRetries: 0 });
    const listed = (await sdk.models.list()).data.map((m) => m.id).sort();
    expect(listed).toEqual(["alpha", "beta", "flood", "gamma", "safe"]);
    expect((await fetch(`${server.url}/v1/models/cloud-model`, { headers })).status).toBe(404);
    expect((await fetch(`${server.url}/v1/models/safe`, { headers })).status).toBe(200);
    const everyone = (await new OpenAI({ baseURL: `${server.url}/v1`, apiKey: (await createKey(server.url, { name: "lister" })).secret, maxRetries: 0 }).models.list()).data.map((m) => m.id);
    expect(everyone).toContain("cloud-model");
    expect((await keyView(server.url, key.secret)).data_residency).toBe("local");
    expect(cloud.calls.length).toBe(callsBefore);
  });

  it("residency: a fallback route whose local target is dead gives a local-only key a clear 503, and a normal key the upstream", async () => {
    const local = await createKey(server.url, { name: "regulated-2", data_residency: "local" });
    const normal = await createKey(server.url, { name: "normal-2" });
    expect((await chat(server.url, local.secret, { model: "safe" })).body.model).toBe("gamma");
    await (server.ctx.models.local("gamma").engine as Engine).shutdown();
    const refused = await chat(server.url, local.secret, { model: "safe", messages: [{ role: "user", content: SECRET }] });
    expect(refused.status).toBe(503);
    expect(refused.body.error).toMatchObject({ code: "local_targets_unavailable", message: expect.stringMatching(/not sent to an upstream provider/) });
    const served = await chat(server.url, normal.secret, { model: "safe", messages: [{ role: "user", content: "anything" }] });
    expect(served).toMatchObject({ status: 200, body: { model: "cloud-model" } });
    expect(cloudSaw(SECRET)).toBe(false);
  });

  it("reports group by team and filter by team: usage, costs and GET /v1/key agree with the ledger", async () => {
    const team = await createTeam(server.url, { name: "reporting", budget_usd: 1 });
    const keys = await Promise.all([0, 1].map((i) => createKey(server.url, { name: `reporting-${i}`, team_id: team.id })));
    for (const key of keys) expect((await chat(server.url, key.secret, { model: "alpha", max_tokens: 8, ignore_eos: true })).status).toBe(200);
    const since = Math.floor(Date.now() / 1000) - 3600;
    const grouped = await admin(server.url, "GET", `/v1/organization/usage/completions?start_time=${since}&bucket_width=1d&group_by=team_id`);
    const results = (grouped.body.data as { results: { team_id: string | null; output_tokens: number; num_model_requests: number }[] }[]).flatMap((b) => b.results);
    expect(results.filter((r) => r.team_id === team.id)).toEqual([expect.objectContaining({ output_tokens: 16, num_model_requests: 2 })]);
    const filtered = await admin(server.url, "GET", `/v1/organization/costs?start_time=${since}&team_id=${team.id}&group_by=team_id`);
    const costs = (filtered.body.data as { results: { team_id: string; amount: { value: number } }[] }[]).flatMap((b) => b.results);
    expect(costs).toEqual([expect.objectContaining({ team_id: team.id, amount: { value: 0.000016, currency: "usd" } })]);
    expect(await ledgerOf(database.url, { teamId: team.id })).toMatchObject({ served: 2, costMicroUsd: 16 });
    const view = await keyView(server.url, keys[1].secret);
    expect(view.team).toMatchObject({ id: team.id, limits: { budget_usd: { limit: 1, used: 0.000016 } }, usage: { num_model_requests: 2, cost: 0.000016 } });
    expect(view.usage).toMatchObject({ num_model_requests: 1, cost: 0.000008 });
  });
});
