/**
 * deploy/compose/replicas.yml's topology as real processes on loopback (no Docker engine here):
 * two `tokenmill serve` replicas (no keys, no ledger), a router started with the compose
 * file's own router.yaml (its service names pointed at the replicas' loopback ports), holding
 * the keys and a PostgreSQL ledger. Through the openai SDK with a key: a shared system prompt
 * stays on one replica and is served from its prefix cache; the ledger holds what each client
 * was told; the exported metrics pass promtool's lint; and a replica killed leaves the pool
 * while the other serves on.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serveProcess, type Serving } from "../../bench/serve-process.ts";
import { startPostgres, type TestPostgres } from "../helpers/postgres.ts";
import { promtool } from "../helpers/promtool.ts";
import { until } from "../helpers/until.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const ADMIN = "tm-admin-topology-test-secret-0123456789";
const MODEL = "tokenmill-tiny-qwen3";
const scratch = mkdtempSync(join(tmpdir(), "tokenmill-topology-"));

interface Proc extends Serving { name: string }
let postgres: TestPostgres;
const procs: Proc[] = [];

async function serve(name: string, args: string[], env: Record<string, string> = {}): Promise<Proc> {
  const serving = await serveProcess(["--kv-cache-memory", "256MiB", ...args], { name, env: { TOKENMILL_DATA_DIR: join(scratch, name), ...env } });
  const proc = { name, ...serving };
  procs.push(proc);
  return proc;
}

async function metric(url: string, name: string, labels = ""): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return text.split("\n").filter((l) => l.startsWith(name) && l.includes(labels)).reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
}

let replicaA: Proc;
let replicaB: Proc;
let router: Proc;
let client: OpenAI;

beforeAll(async () => {
  postgres = await startPostgres();
  // As in replicas.yml: the replicas take no keys and keep no ledger; the router does both.
  [replicaA, replicaB] = await Promise.all(["replica-a", "replica-b"].map((name) => serve(name, ["--db", "none", "--no-auth"])));
  const config = readFileSync(join(ROOT, "deploy/compose/router.yaml"), "utf8")
    .replace("http://replica-a:8000", replicaA.url).replace("http://replica-b:8000", replicaB.url).replace("health-interval: 2", "health-interval: 0.5");
  writeFileSync(join(scratch, "router.yaml"), config);
  router = await serve("router", ["--config", join(scratch, "router.yaml"), "--db", postgres.url, "--replica-id", "router", "--require-auth"], { TOKENMILL_ADMIN_KEY: ADMIN });
  const created = await fetch(`${router.url}/v1/admin/keys`, {
    method: "POST", headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" }, body: JSON.stringify({ name: "topology" }),
  });
  expect(created.status).toBe(201);
  client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: ((await created.json()) as { secret: string }).secret, maxRetries: 0 });
}, 300_000);

afterAll(async () => {
  for (const p of procs) p.child.kill("SIGKILL");
  await Promise.all(procs.map((p) => p.exited));
  postgres?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

describe("the compose replicas topology, as processes on loopback", () => {
  it("refuses a client without a key at the router", async () => {
    const anonymous = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "tm-not-a-key", maxRetries: 0 });
    await expect(anonymous.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 })).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
  });

  it("keeps a shared system prompt on one replica, served from its prefix cache, and bills each client exactly what it was told", async () => {
    const system = `You are the support assistant of a large company. ${"Answer politely, briefly and only about our products. ".repeat(20)}`;
    const hitsBefore = await Promise.all([replicaA, replicaB].map((r) => metric(r.url, "tokenmill_prefix_cache_hits_total")));
    const answers: OpenAI.ChatCompletion[] = [];
    for (const question of ["Where is my order?", "How do I return a jacket?", "Do you ship abroad?", "What sizes are there?"]) {
      answers.push(await client.chat.completions.create({ model: MODEL, messages: [{ role: "system", content: system }, { role: "user", content: question }], max_tokens: 6 }));
    }
    const served = await Promise.all([replicaA, replicaB].map((r) => metric(r.url, "tokenmill_http_requests_total", 'route="/v1/chat/completions",status="200"')));
    expect(served.filter((n) => n > 0)).toHaveLength(1);
    const hits = await Promise.all([replicaA, replicaB].map((r, i) => metric(r.url, "tokenmill_prefix_cache_hits_total").then((h) => h - hitsBefore[i])));
    expect(Math.max(...hits)).toBeGreaterThan(3 * 200);
    expect(answers.slice(1).every((a) => (a.usage!.prompt_tokens_details?.cached_tokens ?? 0) > 200)).toBe(true);

    const db = new pg.Client({ connectionString: postgres.url });
    await db.connect();
    try {
      const { rows } = await db.query<{ request_id: string; uncached_input_tokens: string; cached_input_tokens: string; output_tokens: string; replica: string }>(
        "select request_id, uncached_input_tokens, cached_input_tokens, output_tokens, replica from usage_ledger order by started_ms");
      const told = answers.map((a) => ({ cached: a.usage!.prompt_tokens_details?.cached_tokens ?? 0, prompt: a.usage!.prompt_tokens, output: a.usage!.completion_tokens }));
      const billed = rows.slice(-4).map((r) => ({ cached: Number(r.cached_input_tokens), prompt: Number(r.uncached_input_tokens) + Number(r.cached_input_tokens), output: Number(r.output_tokens) }));
      expect(billed).toEqual(told);
      expect(rows.every((r) => r.replica === "router")).toBe(true);
    } finally {
      await db.end();
    }
  });

  it("exports metrics promtool's lint accepts, but for the vllm: names the inference gateway reads", async () => {
    const promtoolPath = promtool();
    for (const server of [router, replicaA]) {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      const lint = spawnSync(promtoolPath, ["check", "metrics"], { input: text, encoding: "utf8" });
      const problems = (lint.stdout + lint.stderr).split("\n").filter(Boolean);
      expect(problems.filter((p) => !/^vllm:[a-z_]+ metric names should not contain ':'$/.test(p)), server.name).toEqual([]);
    }
    expect(await metric(router.url, "tokenmill_upstream_replica_healthy")).toBe(2);
  });

  it("drops a killed replica from the pool within its health interval, and the other serves every request", async () => {
    replicaB.child.kill("SIGKILL");
    await replicaB.exited;
    const label = new URL(replicaB.url).host;
    await until(async () => (await metric(router.url, "tokenmill_upstream_replica_healthy", `replica="${label}"`)) === 0, { everyMs: 50, what: "the router to drop the killed replica" });
    const before = await metric(replicaA.url, "tokenmill_http_requests_total", 'route="/v1/chat/completions",status="200"');
    for (let i = 0; i < 4; i++) {
      const answer = await client.chat.completions.create({ model: MODEL, messages: [{ role: "system", content: `Prompt ${i}. ${"Be brief. ".repeat(30)}` }, { role: "user", content: "hi" }], max_tokens: 2 });
      expect(answer.choices[0].finish_reason).toBe("length");
    }
    expect(await metric(replicaA.url, "tokenmill_http_requests_total", 'route="/v1/chat/completions",status="200"')).toBe(before + 4);
    const health = (await (await fetch(`${router.url}/health`)).json()) as { status: string; models: Record<string, { state: string }> };
    expect(health.models[MODEL].state).toBe("running");
  });
});
