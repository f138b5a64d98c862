/**
 * Batch jobs that outlive their process, on one PostgreSQL: a replica killed with SIGKILL
 * mid-batch and started again finishes the batch, every custom_id once in the output and
 * billed once in the ledger; with two replicas a batch runs on one of them, and when that one
 * is killed the other takes it over once its lease runs out.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI, { toFile } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openStore } from "../../service/store/open-store.ts";
import { jsonl, linesOf, waitForBatch } from "../helpers/batches.ts";
import { ADMIN, MODEL, createKey } from "../helpers/limits.ts";
import { startPostgres, type TestPostgres } from "../helpers/postgres.ts";
import { serveProcess, type Serving } from "../helpers/serve-process.ts";

describe("batch jobs across a kill -9 and two replicas on one PostgreSQL", () => {
  let pg: TestPostgres;
  let dir: string;
  const replicas: Record<string, Serving> = {};
  const args = ["--price", `${MODEL}=1,0.5,2`, "--batch-concurrency", "4", "--batch-lease", "2s", "--admin-key", ADMIN];
  /** The batches run as a key with a budget, so their lines hold reservations a takeover must give back. */
  let secret = "";
  beforeAll(async () => {
    pg = await startPostgres();
    dir = mkdtempSync(join(tmpdir(), "tokenmill-batch-replicas-"));
    replicas.a = await serveProcess(pg.url, "a", dir, args);
    secret = (await createKey(replicas.a.url, { name: "batcher", budget_usd: 100 })).secret;
  }, 120_000);
  afterAll(async () => {
    await Promise.all(Object.values(replicas).map((r) => r.stop().catch(() => undefined)));
    pg?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const clientOf = (serving: Serving) => new OpenAI({ baseURL: `${serving.url}/v1`, apiKey: secret, maxRetries: 0 });
  const lines = (n: number, tag: string) => Array.from({ length: n }, (_, i) => ({
    custom_id: `${tag}-${i}`, method: "POST", url: "/v1/chat/completions", body: { model: MODEL, messages: [{ role: "user", content: `${tag} ${i}` }], max_tokens: 48, ignore_eos: true },
  }));
  const start = async (client: OpenAI, n: number, tag: string) => {
    const file = await client.files.create({ file: await toFile(Buffer.from(jsonl(lines(n, tag))), `${tag}.jsonl`), purpose: "batch" });
    return client.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" });
  };
  const progress = async (client: OpenAI, id: string, atLeast: number) => {
    for (let i = 0; i < 1200; i++) {
      if ((await client.batches.retrieve(id)).request_counts!.completed >= atLeast) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`batch ${id} never reached ${atLeast} completed lines`);
  };
  const kill9 = async (name: string) => {
    replicas[name].child.kill("SIGKILL");
    await replicas[name].exited;
    delete replicas[name];
  };
  /** Each custom_id once in the output, and once in the ledger, completed and priced at the batch tier. */
  const checkOnce = async (client: OpenAI, batch: OpenAI.Batch, n: number, tag: string) => {
    expect(batch).toMatchObject({ status: "completed", request_counts: { total: n, completed: n, failed: 0 } });
    const output = await linesOf(client, batch.output_file_id);
    expect(output.map((l) => l.custom_id).sort()).toEqual(lines(n, tag).map((l) => l.custom_id).sort());
    const store = await openStore(pg.url);
    try {
      const rows = await store.db.selectFrom("usage_ledger").selectAll().where("request_id", "like", `batch_${batch.id}_%`).execute();
      expect(rows).toHaveLength(n);
      expect(rows.every((r) => r.status === "completed" && r.tier === "batch" && Number(r.output_tokens) === 48)).toBe(true);
      // What each output line told the client is its row.
      for (const line of output) {
        const row = rows.find((r) => r.http_request_id === line.response!.request_id)!;
        expect((line.response!.body.usage as { completion_tokens: number }).completion_tokens).toBe(Number(row.output_tokens));
      }
      return rows;
    } finally {
      await store.close();
    }
  };

  it("finishes a batch after kill -9 and a restart: each custom_id once in the output, billed once", async () => {
    const client = clientOf(replicas.a);
    const created = await start(client, 24, "restart");
    await progress(client, created.id, 4);
    await kill9("a");
    replicas.a = await serveProcess(pg.url, "a", dir, args);
    const again = clientOf(replicas.a);
    await checkOnce(again, await waitForBatch(again, created.id, 180_000), 24, "restart");
  }, 300_000);

  it("runs a batch on one of two replicas, and the other takes it over when that one is killed", async () => {
    replicas.b = await serveProcess(pg.url, "b", dir, args);
    const created = await start(clientOf(replicas.a), 24, "takeover");
    await progress(clientOf(replicas.a), created.id, 4);
    const store = await openStore(pg.url);
    let owner: string;
    try {
      owner = (await store.db.selectFrom("batches").select("lease_owner").where("id", "=", created.id).executeTakeFirstOrThrow()).lease_owner!;
    } finally {
      await store.close();
    }
    expect(["a", "b"]).toContain(owner);
    const survivor = owner === "a" ? "b" : "a";
    await kill9(owner);
    const client = clientOf(replicas[survivor]);
    const rows = await checkOnce(client, await waitForBatch(client, created.id, 180_000), 24, "takeover");
    expect(new Set(rows.map((r) => r.replica))).toContain(survivor);
    // The killed replica's holds on the lines it had in flight were given back by the one that took over: nothing stays reserved.
    const after = await openStore(pg.url);
    try {
      expect(await after.db.selectFrom("limit_holds").selectAll().where("request_id", "like", `batch_${created.id}_%`).execute()).toEqual([]);
      const meters = await after.db.selectFrom("key_meters").selectAll().where("meter", "=", "usd").execute();
      expect(meters.map((m) => Number(m.reserved))).toEqual([0]);
      // And the meter holds what the ledger bills for the key.
      const billed = await after.db.selectFrom("usage_ledger").select((eb) => eb.fn.sum<number>("cost_micro_usd").as("sum")).where("key_id", "=", meters[0].key_id).executeTakeFirstOrThrow();
      expect(Number(meters[0].used)).toBeGreaterThanOrEqual(Number(billed.sum));
    } finally {
      await after.close();
    }
  }, 300_000);
});
