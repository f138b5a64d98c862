/**
 * Keys and the ledger under the real server, model and openai SDK, on SQLite and on a real
 * PostgreSQL: anonymous until the first key, then every request needs one; the ledger's rows
 * equal the usage clients were told; admin routes refuse everyone but the admin; secrets are
 * never logged.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openStore } from "../../service/store/open-store.ts";
import type { RunningServer } from "../../server/serve.ts";
import { startPostgres, type TestPostgres } from "../helpers/postgres.ts";
import { startTestServer } from "../helpers/server.ts";
import { until } from "../helpers/until.ts";

const MODEL = "tokenmill-tiny-qwen3";
const ADMIN = "admin-secret-for-tests";

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`keys and ledger on ${kind}`, () => {
    let server: RunningServer;
    let pg: TestPostgres | null = null;
    let dir: string;
    let dbUrl: string;
    const logs: string[] = [];
    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "tokenmill-service-"));
      if (kind === "postgres") pg = await startPostgres();
      dbUrl = pg ? pg.url : `sqlite:${join(dir, "tokenmill.db")}`;
      server = await startTestServer({
        db: { url: dbUrl, replica: "test", prices: [{ model: MODEL, inputPerMtok: 150_000, cachedInputPerMtok: 75_000, outputPerMtok: 600_000 }] }, adminKeys: [ADMIN],
        logger: { level: "info", stream: { write: (line: string) => void logs.push(line) } },
      });
    }, 120_000);
    afterAll(async () => {
      await server?.close();
      pg?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    const client = (apiKey: string) => new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0 });
    const admin = (method: string, path: string, body?: unknown) => fetch(`${server.url}/v1/admin${path}`, {
      method, headers: { authorization: `Bearer ${ADMIN}`, ...(body ? { "content-type": "application/json" } : {}) }, body: body ? JSON.stringify(body) : undefined,
    });
    const org = (path: string) => fetch(`${server.url}/v1/organization${path}`, { headers: { authorization: `Bearer ${ADMIN}` } });
    const ledgerRows = async () => {
      await new Promise((r) => setTimeout(r, 100));
      const store = await openStore(dbUrl);
      try {
        return await store.db.selectFrom("usage_ledger").selectAll().orderBy("started_ms").execute();
      } finally {
        await store.close();
      }
    };

    it("serves anonymously while no key exists (any Authorization ignored), metering as anonymous", async () => {
      const reply = await client("unused").chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hello" }], max_tokens: 5 });
      const row = (await ledgerRows()).at(-1)!;
      expect(row).toMatchObject({ key_id: "anonymous", status: "completed", output_tokens: 5, uncached_input_tokens: reply.usage!.prompt_tokens });
      expect(row.ttft_ms).toBeGreaterThanOrEqual(0);
      expect(row.ttft_ms!).toBeLessThanOrEqual(row.finished_ms! - row.started_ms);
      expect(((await (await fetch(`${server.url}/health`)).json()) as { warning?: string }).warning).toMatch(/serving anonymously/);
    });

    it("once a key exists, needs one: the ledger row of each request equals the usage its client saw", async () => {
      const created = await admin("POST", "/keys", { name: "team-a", models: [MODEL], metadata: { team: "a" } });
      expect(created.status).toBe(201);
      const key = (await created.json()) as { id: string; secret: string; prefix: string };
      expect(key.secret).toMatch(/^tm-/);
      // /health re-reads whether any key exists at most once a second.
      await until(async () => ((await (await fetch(`${server.url}/health`)).json()) as { warning?: string }).warning === undefined, { everyMs: 100, what: "/health to drop its no-keys warning" });
      const refused = await client("unused").chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(OpenAI.AuthenticationError);
      expect((refused as InstanceType<typeof OpenAI.APIError>).code).toBe("invalid_api_key");
      // Anthropic's clients are told to send x-api-key, in Anthropic's error shape.
      const anthropic = await fetch(`${server.url}/v1/messages`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: MODEL, max_tokens: 2, messages: [{ role: "user", content: "hi" }] }) });
      expect(anthropic.status).toBe(401);
      expect(await anthropic.json()).toMatchObject({ type: "error", error: { type: "authentication_error", message: expect.stringContaining("x-api-key") } });

      const sdk = client(key.secret);
      const system = { role: "system" as const, content: "You are a careful assistant. ".repeat(8) };
      const whole = await sdk.chat.completions.create({ model: MODEL, messages: [system, { role: "user", content: "one" }], max_tokens: 6, n: 2 });
      const stream = await sdk.chat.completions.create({ model: MODEL, messages: [system, { role: "user", content: "two" }], max_tokens: 9, stream: true, stream_options: { include_usage: true } });
      let streamed: OpenAI.CompletionUsage | null = null;
      for await (const chunk of stream) if (chunk.usage) streamed = chunk.usage;
      const viaHeader = await fetch(`${server.url}/v1/completions`, {
        method: "POST", headers: { "x-api-key": key.secret, "content-type": "application/json" }, body: JSON.stringify({ model: MODEL, prompt: "three", max_tokens: 3 }),
      });
      expect(viaHeader.status).toBe(200);
      const legacy = (await viaHeader.json()) as { usage: OpenAI.CompletionUsage };

      const mine = (await ledgerRows()).filter((r) => r.key_id === key.id);
      expect(mine).toHaveLength(3);
      for (const [row, usage] of mine.map((r, i) => [r, [whole.usage!, streamed!, legacy.usage][i]] as const)) {
        const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
        const expectedMicroUsd = Math.floor(((usage.prompt_tokens - cached) * 150_000 + cached * 75_000 + usage.completion_tokens * 600_000 + 500_000) / 1e6);
        expect(row).toMatchObject({
          status: "completed", uncached_input_tokens: usage.prompt_tokens - cached, cached_input_tokens: cached, output_tokens: usage.completion_tokens,
          cost_micro_usd: expectedMicroUsd,
        });
        // The response told the client the same cost, in USD.
        expect((usage as OpenAI.CompletionUsage & { cost: number }).cost).toBe(expectedMicroUsd / 1e6);
      }
      expect(whole.usage!.completion_tokens).toBe(12);
      expect(streamed!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(0);
    });

    it("bills nothing for a request its client was told failed: a grammar that does not compile, a dangling $ref", async () => {
      const created = (await (await admin("POST", "/keys", { name: "refused" })).json()) as { id: string; secret: string };
      const send = (extra: Record<string, unknown>) => fetch(`${server.url}/v1/chat/completions`, {
        method: "POST", headers: { authorization: `Bearer ${created.secret}`, "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "answer in the format asked" }], max_tokens: 5, ...extra }),
      });
      const refusals = [
        await send({ guided_regex: "(unclosed" }),
        await send({ response_format: { type: "json_schema", json_schema: { name: "x", schema: { $ref: "#/$defs/missing" } } } }),
      ];
      expect(refusals.map((r) => r.status)).toEqual([400, 400]);
      const mine = (await ledgerRows()).filter((r) => r.key_id === created.id);
      expect(mine.map((r) => [r.status, r.uncached_input_tokens, r.cached_input_tokens, r.output_tokens, r.cost_micro_usd])).toEqual([["error", 0, 0, 0, 0], ["error", 0, 0, 0, 0]]);
    });

    it("refuses a model the key may not use with 404, and a revoked key within a second", async () => {
      const created = (await (await admin("POST", "/keys", { name: "limited", models: ["some-other-model"] })).json()) as { id: string; secret: string };
      const limited = client(created.secret);
      const notAllowed = await limited.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 }).catch((e: unknown) => e);
      expect(notAllowed).toBeInstanceOf(OpenAI.NotFoundError);
      expect((await limited.models.list()).data).toEqual([]);
      const other = (await (await admin("POST", "/keys", { name: "to revoke" })).json()) as { id: string; secret: string };
      expect((await client(other.secret).models.list()).data.map((m) => m.id)).toEqual([MODEL]);
      expect((await admin("DELETE", `/keys/${other.id}`)).status).toBe(200);
      await new Promise((r) => setTimeout(r, 1100));
      expect(await client(other.secret).models.list().catch((e: unknown) => e)).toBeInstanceOf(OpenAI.AuthenticationError);
    });

    it("admin routes refuse every key but the admin's, and list keys without their secrets", async () => {
      const created = (await (await admin("POST", "/keys", { name: "plain" })).json()) as { secret: string };
      const asKey = await fetch(`${server.url}/v1/admin/keys`, { headers: { authorization: `Bearer ${created.secret}` } });
      expect(asKey.status).toBe(403);
      expect(((await asKey.json()) as { error: { code: string } }).error.code).toBe("insufficient_permissions");
      expect((await fetch(`${server.url}/v1/admin/keys`)).status).toBe(401);
      expect((await fetch(`${server.url}/v1/admin/keys`, { headers: { authorization: "Bearer wrong" } })).status).toBe(403);
      const listed = await (await admin("GET", "/keys")).text();
      expect(listed).toContain('"name":"plain"');
      expect(listed).not.toContain(created.secret.slice(3));
      const patched = await admin("PATCH", `/keys/${JSON.parse(listed).data[0].id}`, { name: "renamed" });
      expect(((await patched.json()) as { name: string }).name).toBe("renamed");
      expect((await admin("POST", "/keys", { name: "" })).status).toBe(400);
    });

    it("reports usage and cost in OpenAI's shapes (admin only), and a key its own totals at /v1/key", async () => {
      const created = (await (await admin("POST", "/keys", { name: "reporter" })).json()) as { id: string; secret: string };
      const sdk = client(created.secret);
      const replies: OpenAI.ChatCompletion[] = [];
      for (const content of ["one", "two", "three"]) replies.push(await sdk.chat.completions.create({ model: MODEL, messages: [{ role: "user", content }], max_tokens: 4 }));
      await new Promise((r) => setTimeout(r, 100));
      const start = Math.floor(Date.now() / 1000) - 3600;
      const usagePage = await (await org(`/usage/completions?start_time=${start}&bucket_width=1h&group_by=api_key_id,model`)).json() as {
        object: string; data: { start_time: number; results: { api_key_id: string; model: string; input_tokens: number; input_cached_tokens: number; output_tokens: number; num_model_requests: number }[] }[];
      };
      expect(usagePage.object, JSON.stringify(usagePage)).toBe("page");
      const mine = usagePage.data.flatMap((b) => b.results).filter((r) => r.api_key_id === created.id);
      const sum = (f: (u: OpenAI.CompletionUsage) => number) => replies.reduce((s, r) => s + f(r.usage!), 0);
      expect(mine.reduce((s, r) => s + r.num_model_requests, 0)).toBe(3);
      expect(mine.reduce((s, r) => s + r.input_tokens, 0)).toBe(sum((u) => u.prompt_tokens));
      expect(mine.reduce((s, r) => s + r.input_cached_tokens, 0)).toBe(sum((u) => u.prompt_tokens_details?.cached_tokens ?? 0));
      expect(mine.reduce((s, r) => s + r.output_tokens, 0)).toBe(12);
      expect(mine.every((r) => r.model === MODEL)).toBe(true);

      const costs = await (await org(`/costs?start_time=${start - 86_400}`)).json() as { data: { results: { amount: { value: number } }[] }[] };
      const totalCost = costs.data.flatMap((b) => b.results).reduce((s, r) => s + r.amount.value, 0);
      const rows = await ledgerRows();
      expect(totalCost).toBeCloseTo(rows.reduce((s, r) => s + r.cost_micro_usd, 0) / 1e6, 9);

      const own = await (await fetch(`${server.url}/v1/key`, { headers: { authorization: `Bearer ${created.secret}` } })).json() as { id: string; usage: { num_model_requests: number; output_tokens: number; cost: number } };
      expect(own).toMatchObject({ id: created.id, usage: { num_model_requests: 3, output_tokens: 12 } });
      expect(own.usage.cost).toBeCloseTo(replies.reduce((s, r) => s + (r.usage as OpenAI.CompletionUsage & { cost: number }).cost, 0), 9);
      expect((await fetch(`${server.url}/v1/organization/costs?start_time=${start}`, { headers: { authorization: `Bearer ${created.secret}` } })).status).toBe(403);
    });

    it("never logs a secret or a prompt", async () => {
      const created = (await (await admin("POST", "/keys", { name: "logged?" })).json()) as { secret: string };
      await client(created.secret).chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "a very private prompt" }], max_tokens: 2 });
      const text = logs.join("");
      expect(text.length).toBeGreaterThan(0);
      expect(text).not.toContain(created.secret);
      expect(text).not.toContain(ADMIN);
      expect(text).not.toContain("a very private prompt");
    });
  });
}
