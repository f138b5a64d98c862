/**
 * LoRA adapters served as models, end to end: the real server, model, database and OpenAI
 * SDK, with seeded random PEFT adapters of the default model. Each adapter is listed with its
 * parent, answers unlike its base, is allowed per key, billed at its own price (its base's until
 * it has one) and metered under its name; adapters load and unload at run time through the admin
 * API and vLLM's routes, with bad adapters refused by a 400 that says why; more adapters than
 * slots all serve under concurrent load; the metrics show them.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { parseModelConfig } from "../../models/config.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { writeRandomLoraAdapter } from "../../models/synthetic/lora-adapter.ts";
import type { RunningServer } from "../../server/serve.ts";
import { ADMIN, MODEL, createKey } from "../helpers/limits.ts";
import { ledgerRows } from "../helpers/ledger-rows.ts";
import { startTestServer } from "../helpers/server.ts";
import { testDatabase } from "../helpers/test-database.ts";
import { BASE_CONFIG } from "../helpers/tiny-models.ts";
import { until } from "../helpers/until.ts";

const scratch = mkdtempSync(join(tmpdir(), "tokenmill-lora-e2e-"));
const config = readCheckpoint(ensureDefaultModel()).config;
const adapterPath = (name: string, seed: number, rank = 8) => {
  const path = join(scratch, name);
  writeRandomLoraAdapter(path, config, { rank, alpha: 16, seed, std: 0.3 });
  return path;
};
const paths = { sql: adapterPath("sql", 1), chat: adapterPath("chat", 2), extra: adapterPath("extra", 3), fourth: adapterPath("fourth", 4, 4) };
/** An adapter of another base model (its widths are the tiny test family's). */
const wrongBase = join(scratch, "wrong-base");
writeRandomLoraAdapter(wrongBase, parseModelConfig({ ...BASE_CONFIG, architectures: ["Qwen3ForCausalLM"] }, "other"), { rank: 4, alpha: 8, seed: 5 });
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Long enough to fill full KV blocks, so that its prefix is cached. */
const PROMPT = "The quick brown fox jumps over the lazy dog, and then the dog chases the fox across the field, over the fence and into the woods where they rest.";
/** $1 per million output tokens for the base model; input free. */
const PRICE = { model: MODEL, inputPerMtok: 0, cachedInputPerMtok: 0, outputPerMtok: 1_000_000 };

async function call(url: string, method: string, path: string, body?: unknown, secret = ADMIN): Promise<{ status: number; text: string; json: Record<string, unknown> | null }> {
  const response = await fetch(`${url}${path}`, {
    method, headers: { authorization: `Bearer ${secret}`, ...(body === undefined ? {} : { "content-type": "application/json" }) }, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json: Record<string, unknown> | null = null;
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = null;
  }
  return { status: response.status, text, json };
}

describe("LoRA adapters served as models", () => {
  const database = testDatabase("sqlite", "lora-e2e");
  let server: RunningServer;
  let client: OpenAI;
  beforeAll(async () => {
    server = await startTestServer({
      db: { url: database.url, replica: "one", prices: [PRICE] }, adminKeys: [ADMIN],
      engineOptions: { maxLoras: 2, maxLoraRank: 8, loraModules: [{ name: "sql-lora", path: paths.sql }, { name: "chat-lora", path: paths.chat }] },
    });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: ADMIN, maxRetries: 0 });
  }, 120_000);
  afterAll(async () => server?.close());

  const complete = async (model: string, c = client) => {
    const completion = await c.completions.create({ model, prompt: PROMPT, max_tokens: 8, temperature: 0, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming);
    return completion;
  };

  it("lists each adapter as a model with its parent", async () => {
    const models = (await client.models.list()).data as unknown as { id: string; parent?: string | null }[];
    expect(models.find((m) => m.id === "sql-lora")).toMatchObject({ parent: MODEL });
    expect(models.find((m) => m.id === "chat-lora")).toMatchObject({ parent: MODEL });
    expect(models.find((m) => m.id === MODEL)).toMatchObject({ parent: null });
  });

  it("answers under each adapter unlike the base, billed at its own price (its base's until it has one) and metered under its name", async () => {
    const set = await call(server.url, "POST", "/v1/admin/prices", { model: "sql-lora", input: 0, cached_input: 0, output: 2 });
    expect(set.status).toBe(201);
    const [base, sql, chat] = [await complete(MODEL), await complete("sql-lora"), await complete("chat-lora")];
    expect(sql.model).toBe("sql-lora");
    expect(new Set([base.choices[0].text, sql.choices[0].text, chat.choices[0].text]).size).toBe(3);
    // The same adapter twice gives the same tokens (greedy), and the second one's prompt comes from the cache.
    const again = await complete("sql-lora");
    expect(again.choices[0].text).toBe(sql.choices[0].text);
    expect(again.usage?.prompt_tokens_details?.cached_tokens ?? 0).toBeGreaterThan(0);
    await until(async () => (await ledgerRows(database.url)).filter((r) => r.status !== "in_flight").length >= 4, { what: "four ledger rows" });
    const rows = await ledgerRows(database.url);
    const byModel = (model: string) => rows.filter((r) => r.model === model);
    expect(byModel("sql-lora")).toHaveLength(2);
    for (const row of byModel("sql-lora")) expect(row).toMatchObject({ backend: `local:${MODEL}`, output_tokens: 8, cost_micro_usd: 16 });
    expect(byModel("chat-lora")[0]).toMatchObject({ output_tokens: 8, cost_micro_usd: 8 });
    expect(byModel(MODEL)[0]).toMatchObject({ output_tokens: 8, cost_micro_usd: 8 });
  });

  it("lets a key use only the adapters and models its list names", async () => {
    const key = await createKey(server.url, { name: "sql-team", models: ["sql-lora"] });
    const keyClient = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key.secret, maxRetries: 0 });
    expect((await keyClient.models.list()).data.map((m) => m.id)).toEqual(["sql-lora"]);
    expect((await complete("sql-lora", keyClient)).choices[0].text.length).toBeGreaterThan(0);
    await expect(complete(MODEL, keyClient)).rejects.toMatchObject({ status: 404 });
    await expect(complete("chat-lora", keyClient)).rejects.toMatchObject({ status: 404 });
    // The admin routes refuse it.
    expect((await call(server.url, "POST", "/v1/admin/adapters", { name: "mine", path: paths.extra }, key.secret)).status).toBe(403);
    expect((await call(server.url, "POST", "/v1/load_lora_adapter", { lora_name: "mine", lora_path: paths.extra }, key.secret)).status).toBe(403);
  });

  it("loads and unloads adapters at run time, and refuses bad ones with a 400 that says why", async () => {
    const loaded = await call(server.url, "POST", "/v1/admin/adapters", { name: "extra-lora", path: paths.extra });
    expect(loaded.status).toBe(200);
    expect(loaded.json).toMatchObject({ id: "extra-lora", object: "lora_adapter", parent: MODEL, rank: 8 });
    expect((await complete("extra-lora")).model).toBe("extra-lora");
    expect(((await call(server.url, "GET", "/v1/admin/adapters")).json!.data as { id: string }[]).map((a) => a.id).sort()).toEqual(["chat-lora", "extra-lora", "sql-lora"]);

    const refusals = [
      [{ name: "wrong", path: wrongBase }, /is it an adapter of another base model\?/],
      [{ name: "missing", path: join(scratch, "nowhere") }, /no adapter_config\.json/],
      [{ name: "sql-lora", path: paths.extra }, /already served/],
      [{ name: MODEL, path: paths.extra }, /already served/],
      [{ name: "x", path: paths.extra, base_model: "no-such-model" }, /does not exist/],
      [{ name: "x" }, /path/],
    ] as const;
    for (const [body, why] of refusals) {
      const refused = await call(server.url, "POST", "/v1/admin/adapters", body);
      expect(refused.status === 400 || refused.status === 404, `${JSON.stringify(body)}: ${refused.text}`).toBe(true);
      expect((refused.json!.error as { message: string }).message).toMatch(why);
    }

    const unloaded = await call(server.url, "DELETE", "/v1/admin/adapters/extra-lora");
    expect(unloaded).toMatchObject({ status: 200, json: { id: "extra-lora", deleted: true } });
    await expect(complete("extra-lora")).rejects.toMatchObject({ status: 404 });
    expect((await call(server.url, "DELETE", "/v1/admin/adapters/extra-lora")).status).toBe(404);
    expect((await call(server.url, "DELETE", `/v1/admin/adapters/${MODEL}`)).status).toBe(400);

    // vLLM's routes, as its clients call them.
    const viaVllm = await call(server.url, "POST", "/v1/load_lora_adapter", { lora_name: "vllm-lora", lora_path: paths.extra });
    expect(viaVllm).toMatchObject({ status: 200, text: "Success: LoRA adapter 'vllm-lora' added successfully." });
    expect((await complete("vllm-lora")).choices[0].text.length).toBeGreaterThan(0);
    expect(await call(server.url, "POST", "/v1/unload_lora_adapter", { lora_name: "vllm-lora" })).toMatchObject({ status: 200, text: "Success: LoRA adapter 'vllm-lora' removed successfully." });
    expect((await call(server.url, "POST", "/v1/unload_lora_adapter", { lora_name: "vllm-lora" })).status).toBe(404);
  });

  it("serves more adapters than slots under concurrent load: every request gets its adapter's answer", async () => {
    expect((await call(server.url, "POST", "/v1/admin/adapters", { name: "fourth-lora", path: paths.fourth })).status).toBe(200);
    const models = ["sql-lora", "chat-lora", "fourth-lora", MODEL];
    const alone = new Map<string, string>();
    for (const model of models) alone.set(model, (await complete(model)).choices[0].text);
    const together = await Promise.all(Array.from({ length: 16 }, (_, i) => complete(models[i % 4]).then((c) => [models[i % 4], c.choices[0].text] as const)));
    for (const [model, text] of together) expect(text, model).toBe(alone.get(model));
  });

  it("exports vllm:lora_requests_info and per-adapter counters", async () => {
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(new RegExp(`vllm:lora_requests_info\\{model_name="${MODEL}",max_lora="2",running_lora_adapters="[^"]*",waiting_lora_adapters="[^"]*"\\} \\d+`));
    expect(metrics).toMatch(new RegExp(`tokenmill_lora_requests_total\\{model="${MODEL}",adapter="sql-lora",outcome="finished"\\} [1-9]`));
    expect(metrics).toMatch(new RegExp(`tokenmill_lora_slot_loads_total\\{model="${MODEL}"\\} ([3-9]|\\d\\d+)`));
    expect(metrics).toMatch(new RegExp(`tokenmill_lora_adapters\\{model="${MODEL}",state="loaded"\\} 3`));
    // The console's engines view: the base model's engine with its adapters (adapters are no engines of their own).
    const engines = (await call(server.url, "GET", "/v1/admin/engines")).json!.data as { id: string; lora?: { max_loras: number; adapters: string[] } }[];
    expect(engines.map((e) => e.id)).toEqual([MODEL]);
    expect(engines[0].lora).toMatchObject({ max_loras: 2, adapters: ["sql-lora", "chat-lora", "fourth-lora"] });
  });
});
