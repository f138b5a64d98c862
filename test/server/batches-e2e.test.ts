/**
 * Batch jobs with the openai SDK's files and batches, against a real server with the default
 * model and a SQLite ledger: three batches (chat completions, completions, embeddings) whose
 * output lines equal the same requests sent directly, their usage equal to their ledger rows at
 * the batch discount; bad files refused with the line named; a line too long for the context
 * an error line while the rest run; cancel mid-run.
 */
import OpenAI, { toFile } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../server/serve.ts";
import { openStore } from "../../service/store/open-store.ts";
import { ADMIN, MODEL, createKey } from "../helpers/limits.ts";
import { startTestServer } from "../helpers/server.ts";
import { testDatabase } from "../helpers/test-database.ts";
import { jsonl, linesOf, waitForBatch } from "../helpers/batches.ts";
import { runCli } from "../helpers/cli.ts";

/** $1 per million input tokens, $2 output: the batch tier pays half (the default discount). */
const PRICE = { model: MODEL, inputPerMtok: 1_000_000, cachedInputPerMtok: 500_000, outputPerMtok: 2_000_000 };

describe("batch jobs through the openai SDK", () => {
  const database = testDatabase("sqlite", "batches");
  let server: RunningServer;
  let client: OpenAI;

  beforeAll(async () => {
    server = await startTestServer({ db: { url: database.url, replica: "batches", prices: [PRICE] }, adminKeys: [ADMIN] });
    await server.ready;
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  }, 120_000);
  afterAll(async () => server?.close());

  const upload = async (lines: object[] | string) => client.files.create({ file: await toFile(Buffer.from(typeof lines === "string" ? lines : jsonl(lines)), "input.jsonl"), purpose: "batch" });

  it("runs 100 chat completions, 50 completions and 50 embeddings: each output line equals the request sent directly, and its usage its ledger row at the batch price", async () => {
    const chat = Array.from({ length: 100 }, (_, i) => ({ model: MODEL, messages: [{ role: "user", content: `Question number ${i}: tell me about rivers.` }], max_tokens: 8 + (i % 5), temperature: 0 }));
    const completions = Array.from({ length: 50 }, (_, i) => ({ model: MODEL, prompt: `Once upon a time, number ${i},`, max_tokens: 6, temperature: 0 }));
    const embeddings = Array.from({ length: 50 }, (_, i) => ({ model: MODEL, input: `text to embed, number ${i}` }));
    const jobs = [["/v1/chat/completions", chat], ["/v1/completions", completions], ["/v1/embeddings", embeddings]] as const;
    const batches = [];
    for (const [endpoint, bodies] of jobs) {
      const file = await upload(bodies.map((body, i) => ({ custom_id: `${endpoint}-${i}`, method: "POST", url: endpoint, body })));
      batches.push(await client.batches.create({ input_file_id: file.id, endpoint, completion_window: "24h", metadata: { job: endpoint } }));
    }
    expect(batches.map((b) => b.status)).toEqual(["validating", "validating", "validating"]);
    const store = await openStore(database.url);
    try {
      for (const [index, [endpoint, bodies]] of jobs.entries()) {
        const batch = await waitForBatch(client, batches[index].id);
        expect(batch).toMatchObject({ status: "completed", request_counts: { total: bodies.length, completed: bodies.length, failed: 0 }, metadata: { job: endpoint }, error_file_id: null });
        const lines = await linesOf(client, batch.output_file_id);
        expect(lines.map((l) => l.custom_id)).toEqual(bodies.map((_, i) => `${endpoint}-${i}`));
        for (const [i, line] of lines.entries()) {
          expect(line.response!.status_code).toBe(200);
          const direct = await (await fetch(`${server.url}${endpoint}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(bodies[i]) })).json() as Record<string, unknown>;
          const body = line.response!.body;
          if (endpoint === "/v1/embeddings") {
            // NOTE: embeddings computed in a batch of other inputs differ from one computed alone in the last float32 bits.
            const [ours, theirs] = [body, direct].map((b) => (b.data as { embedding: number[] }[])[0].embedding);
            expect(ours).toHaveLength(theirs.length);
            expect(Math.max(...ours.map((v, k) => Math.abs(v - theirs[k])))).toBeLessThan(1e-5);
          } else {
            expect((body.choices as unknown[])).toEqual(direct.choices);
          }
          const usage = body.usage as { prompt_tokens: number; completion_tokens?: number; cost: number };
          const directUsage = direct.usage as { prompt_tokens: number; completion_tokens?: number; cost: number };
          expect(usage.prompt_tokens).toBe(directUsage.prompt_tokens);
          expect(usage.completion_tokens).toBe(directUsage.completion_tokens);
          // Half price, rounded once: the direct request's cost is the full price.
          const row = await store.db.selectFrom("usage_ledger").selectAll().where("request_id", "=", `batch_${batch.id}_${i + 1}`).executeTakeFirstOrThrow();
          expect(row).toMatchObject({ status: "completed", tier: "batch" });
          expect(Number(row.uncached_input_tokens) + Number(row.cached_input_tokens)).toBe(usage.prompt_tokens);
          expect(Number(row.output_tokens)).toBe(usage.completion_tokens ?? 0);
          const fullMicro = Number(row.uncached_input_tokens) * 1 + Number(row.cached_input_tokens) * 0.5 + Number(row.output_tokens) * 2;
          expect(Number(row.cost_micro_usd)).toBe(Math.round(fullMicro / 2));
          expect(usage.cost).toBeCloseTo(Number(row.cost_micro_usd) / 1e6, 12);
        }
      }
    } finally {
      await store.close();
    }
  }, 300_000);

  it("refuses a bad file at upload with the line named, fails a batch whose lines don't match its endpoint, and runs the rest around a line over the context", async () => {
    const line = (customId: string, url = "/v1/chat/completions") => ({ custom_id: customId, method: "POST", url, body: { model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 4 } });
    const duplicate = await upload([line("a"), line("b"), line("a")]).catch((err: unknown) => err);
    expect(duplicate).toMatchObject({ status: 400, code: "duplicate_custom_id" });
    expect((duplicate as Error).message).toMatch(/line 3: .*custom_id "a"/);
    const invalid = await upload(`${JSON.stringify(line("a"))}\n{not json\n`).catch((err: unknown) => err);
    expect(invalid).toMatchObject({ status: 400, code: "invalid_json_line" });
    expect((invalid as Error).message).toMatch(/line 2/);

    const completionsFile = await upload([line("x", "/v1/completions"), line("y", "/v1/completions")]);
    const mismatched = await waitForBatch(client, (await client.batches.create({ input_file_id: completionsFile.id, endpoint: "/v1/chat/completions", completion_window: "24h" })).id);
    expect(mismatched.status).toBe("failed");
    expect(mismatched.errors!.data!.map((e) => [e.code, e.line])).toEqual([["mismatched_url", 1], ["mismatched_url", 2]]);

    const tooLong = { custom_id: "long", method: "POST", url: "/v1/chat/completions", body: { model: MODEL, messages: [{ role: "user", content: "word ".repeat(9000) }], max_tokens: 4 } };
    const mixed = await upload([line("first"), tooLong, line("last")]);
    const batch = await waitForBatch(client, (await client.batches.create({ input_file_id: mixed.id, endpoint: "/v1/chat/completions", completion_window: "24h" })).id);
    expect(batch).toMatchObject({ status: "completed", request_counts: { total: 3, completed: 2, failed: 1 } });
    expect((await linesOf(client, batch.output_file_id)).map((l) => l.custom_id)).toEqual(["first", "last"]);
    const errors = await linesOf(client, batch.error_file_id);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ custom_id: "long", response: { status_code: 400 } });
  }, 120_000);

  it("cancels mid-run: cancelling, then cancelled; nothing starts after, and what finished is in the output file", async () => {
    const bodies = Array.from({ length: 60 }, (_, i) => ({ custom_id: `c${i}`, method: "POST", url: "/v1/chat/completions", body: { model: MODEL, messages: [{ role: "user", content: `n ${i}` }], max_tokens: 64, ignore_eos: true } }));
    const file = await upload(bodies);
    const created = await client.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" });
    for (let i = 0; i < 600; i++) {
      const now = await client.batches.retrieve(created.id);
      if (now.request_counts!.completed >= 3) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const cancelling = await client.batches.cancel(created.id);
    expect(cancelling.status).toBe("cancelling");
    const batch = await waitForBatch(client, created.id);
    expect(batch.status).toBe("cancelled");
    expect(batch.cancelling_at).not.toBeNull();
    const done = batch.request_counts!.completed;
    expect(done).toBeGreaterThanOrEqual(3);
    expect(done).toBeLessThan(60);
    const lines = await linesOf(client, batch.output_file_id);
    expect(lines.map((l) => l.custom_id)).toEqual(bodies.slice(0, lines.length).map((b) => b.custom_id).filter((id) => lines.some((l) => l.custom_id === id)));
    expect(lines).toHaveLength(done);
    await new Promise((r) => setTimeout(r, 500));
    expect((await client.batches.retrieve(created.id)).request_counts!.completed).toBe(done);
    // The listing shows it, newest first.
    expect((await client.batches.list({ limit: 2 })).data[0].id).toBe(created.id);
  }, 120_000);

  it("ends a batch past its window as expired, what was done kept and the rest in the error file as batch_expired; deletes files past their retention", async () => {
    const bodies = Array.from({ length: 40 }, (_, i) => ({ custom_id: `e${i}`, method: "POST", url: "/v1/chat/completions", body: { model: MODEL, messages: [{ role: "user", content: `e ${i}` }], max_tokens: 64, ignore_eos: true } }));
    const created = await client.batches.create({ input_file_id: (await upload(bodies)).id, endpoint: "/v1/chat/completions", completion_window: "24h" });
    for (let i = 0; i < 600 && (await client.batches.retrieve(created.id)).request_counts!.completed < 2; i++) await new Promise((r) => setTimeout(r, 50));
    const store = await openStore(database.url);
    try {
      await store.db.updateTable("batches").set({ expires_ms: Date.now() - 1 }).where("id", "=", created.id).execute();
      const batch = await waitForBatch(client, created.id);
      expect(batch.status).toBe("expired");
      expect(batch.expired_at).not.toBeNull();
      const done = await linesOf(client, batch.output_file_id);
      const expired = (await linesOf(client, batch.error_file_id)).filter((l) => l.error?.code === "batch_expired");
      expect(done.length).toBe(batch.request_counts!.completed);
      expect(done.length + expired.length).toBe(40);
      expect(new Set([...done, ...expired].map((l) => l.custom_id)).size).toBe(40);
      // Output files expire after --batch-file-retention; the runner deletes what is past it.
      await store.db.updateTable("files").set({ expires_ms: Date.now() - 1 }).where("id", "=", batch.output_file_id!).execute();
      const { FileStore } = await import("../../service/files.ts");
      expect(await new FileStore(store.db).deleteExpired()).toBe(1);
      await expect(client.files.retrieve(batch.output_file_id!)).rejects.toMatchObject({ status: 404 });
    } finally {
      await store.close();
    }
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/tokenmill_batch_requests_total\{status="completed"\} \d+/);
    expect(metrics).toMatch(/tokenmill_batch_queue_depth\{replica="batches"\} 0/);
  }, 120_000);

  it("applies the key's budget per line, reserved as each starts: a line the budget refuses is an error line, and the batch goes on", async () => {
    // Each line: 8 output tokens at $2/M, halved = 8 micro-USD, plus its prompt. A budget of 40 micro-USD holds a few lines, not ten.
    const key = await createKey(server.url, { name: "batch-budget", budget_usd: "0.00004", budget_period: "day" });
    const sdk = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key.secret, maxRetries: 0 });
    const bodies = Array.from({ length: 10 }, (_, i) => ({ custom_id: `b${i}`, method: "POST", url: "/v1/chat/completions", body: { model: MODEL, messages: [{ role: "user", content: `b ${i}` }], max_tokens: 8, ignore_eos: true } }));
    const file = await sdk.files.create({ file: await toFile(Buffer.from(jsonl(bodies)), "budget.jsonl"), purpose: "batch" });
    const batch = await waitForBatch(sdk, (await sdk.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })).id);
    expect(batch.status).toBe("completed");
    const { completed, failed } = batch.request_counts!;
    expect(completed).toBeGreaterThan(0);
    expect(failed).toBeGreaterThan(0);
    expect(completed + failed).toBe(10);
    const errors = await linesOf(sdk, batch.error_file_id);
    expect(errors.every((l) => l.response!.status_code === 429 && l.error!.code === "insufficient_quota")).toBe(true);
    const spent = ((await (await fetch(`${server.url}/v1/key`, { headers: { authorization: `Bearer ${key.secret}` } })).json()) as { limits: { budget_usd: { used: number; limit: number } } }).limits.budget_usd;
    expect(spent.used).toBeLessThanOrEqual(spent.limit);
  }, 60_000);

  it("keeps each key's files and batches its own: another key sees none of them, the admin sees all", async () => {
    const keyA = await createKey(server.url, { name: "batch-a" });
    const keyB = await createKey(server.url, { name: "batch-b" });
    const [a, b] = [keyA, keyB].map((k) => new OpenAI({ baseURL: `${server.url}/v1`, apiKey: k.secret, maxRetries: 0 }));
    const file = await a.files.create({ file: await toFile(Buffer.from(jsonl([{ custom_id: "only", method: "POST", url: "/v1/chat/completions", body: { model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 } }])), "a.jsonl"), purpose: "batch" });
    const batch = await a.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" });
    await expect(b.files.retrieve(file.id)).rejects.toMatchObject({ status: 404 });
    await expect(b.files.content(file.id)).rejects.toMatchObject({ status: 404 });
    await expect(b.files.delete(file.id)).rejects.toMatchObject({ status: 404 });
    await expect(b.batches.retrieve(batch.id)).rejects.toMatchObject({ status: 404 });
    await expect(b.batches.cancel(batch.id)).rejects.toMatchObject({ status: 404 });
    await expect(b.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })).rejects.toMatchObject({ status: 404 });
    expect((await b.files.list()).data).toEqual([]);
    expect((await b.batches.list()).data).toEqual([]);
    const admin = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: ADMIN, maxRetries: 0 });
    expect((await admin.batches.retrieve(batch.id)).id).toBe(batch.id);
    const done = await waitForBatch(a, batch.id);
    expect(done.status).toBe("completed");
    const store = await openStore(database.url);
    try {
      const row = await store.db.selectFrom("usage_ledger").selectAll().where("request_id", "=", `batch_${batch.id}_1`).executeTakeFirstOrThrow();
      expect(row.key_id).toBe(keyA.id);
    } finally {
      await store.close();
    }
  }, 60_000);

  it("tokenmill batches lists, shows and cancels them from the database", async () => {
    const listed = runCli(["batches", "list", "--db", database.url, "--limit", "50"]);
    expect(listed.status, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(/batch_\S+\s+completed\s+\/v1\/embeddings .* 50\/50 done, 0 failed\s+output file-/);
    // NOTE: keys exist by now (the test before made some): the admin key acts here, and its batches run as the admin.
    const admin = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: ADMIN, maxRetries: 0 });
    const failed = (await admin.batches.list({ limit: 50 })).data.find((b) => b.status === "failed")!;
    expect(runCli(["batches", "show", failed.id, "--db", database.url]).stdout).toMatch(/failed .*\n\s+line 1: mismatched_url: /);
    const bodies = Array.from({ length: 30 }, (_, i) => ({ custom_id: `cli${i}`, method: "POST", url: "/v1/chat/completions", body: { model: MODEL, messages: [{ role: "user", content: `${i}` }], max_tokens: 64, ignore_eos: true } }));
    const file = await admin.files.create({ file: await toFile(Buffer.from(jsonl(bodies)), "cli.jsonl"), purpose: "batch" });
    const created = await admin.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" });
    for (let i = 0; i < 600 && (await admin.batches.retrieve(created.id)).status !== "in_progress"; i++) await new Promise((r) => setTimeout(r, 20));
    expect(runCli(["batches", "cancel", created.id, "--db", database.url]).stdout).toMatch(/cancelling/);
    expect((await waitForBatch(admin, created.id)).status).toBe("cancelled");
    expect(runCli(["batches", "show", "batch_nope", "--db", database.url]).stderr).toMatch(/no batch with id batch_nope/);
  }, 120_000);
});
