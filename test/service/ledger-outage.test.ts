/**
 * The ledger when its database goes away, with real server processes: PostgreSQL stopped
 * (`pg_ctl stop -m fast`) under traffic and started again, and SQLite on a disk that fills up.
 * The rule: no response completes without its ledger row committed. While the ledger can't
 * commit, new requests get a 503 with Retry-After and /health says so; the process never
 * crashes; once the database is back, serving resumes, and the ledger equals what every client
 * was told.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testDatabase } from "../helpers/test-database.ts";
import { ledgerRows } from "../helpers/ledger-rows.ts";
import { serveProcess, type Serving } from "../helpers/serve-process.ts";
import { until } from "../helpers/until.ts";

const MODEL = "tokenmill-tiny-qwen3";

interface Outcome {
  id: string;
  status: number | "failed";
  code?: string | null;
  retryAfter?: string | null;
  /** The usage the client was told, for a response that completed. */
  usage?: { prompt_tokens: number; completion_tokens: number };
}

/** One chat, whole or streamed, with a request id of the client's choosing (the ledger's http_request_id). */
async function chat(url: string, stream: boolean): Promise<Outcome> {
  const id = randomUUID();
  try {
    const response = await fetch(`${url}/v1/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json", "x-request-id": id },
      body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: `hello ${id}` }], max_tokens: 8, ignore_eos: true, stream, ...(stream ? { stream_options: { include_usage: true } } : {}) }),
    });
    const text = await response.text();
    if (response.status !== 200) {
      return { id, status: response.status, code: (JSON.parse(text) as { error: { code: string | null } }).error.code, retryAfter: response.headers.get("retry-after") };
    }
    if (!stream) return { id, status: 200, usage: (JSON.parse(text) as { usage: Outcome["usage"] }).usage };
    const events = text.split("\n\n").filter((e) => e.startsWith("data: ")).map((e) => e.slice(6));
    if (events.at(-1) !== "[DONE]") return { id, status: "failed", code: "no [DONE]" };
    const last = JSON.parse(events.at(-2)!) as { usage?: Outcome["usage"]; error?: { code: string } };
    return last.usage ? { id, status: 200, usage: last.usage } : { id, status: "failed", code: last.error?.code ?? "no usage" };
  } catch {
    return { id, status: "failed" };
  }
}

/** Chats from `workers` loops until stopped. */
function traffic(url: string, workers: number): { stop: () => Promise<Outcome[]> } {
  const outcomes: Outcome[] = [];
  let running = true;
  const loops = Array.from({ length: workers }, async (_, w) => {
    for (let i = 0; running; i++) outcomes.push(await chat(url, (w + i) % 2 === 0));
  });
  return { stop: async () => ((running = false), await Promise.all(loops), outcomes) };
}

async function healthOf(url: string): Promise<{ status: number; code?: string }> {
  const response = await fetch(`${url}/health`);
  const body = (await response.json()) as { error?: { code: string } };
  return { status: response.status, code: body.error?.code };
}

/** Every completed response has its row, with the tokens the client was told; every other answer was a 503 ledger_unavailable with Retry-After, or a request cut off that no client saw complete. */
function expectLedgerMatches(outcomes: Outcome[], rows: Awaited<ReturnType<typeof ledgerRows>>): void {
  const byId = new Map(rows.map((row) => [row.http_request_id, row]));
  const completed = outcomes.filter((o) => o.status === 200);
  const missing = completed.filter((o) => byId.get(o.id)?.status !== "completed").map((o) => o.id);
  expect(missing, `${missing.length} of ${completed.length} completed responses have no completed ledger row`).toEqual([]);
  for (const o of completed) {
    const row = byId.get(o.id)!;
    expect(row.uncached_input_tokens + row.cached_input_tokens).toBe(o.usage!.prompt_tokens);
    expect(row.output_tokens).toBe(o.usage!.completion_tokens);
  }
  const refused = outcomes.filter((o) => o.status !== 200);
  expect(refused.filter((o) => o.status !== 503 || o.code !== "ledger_unavailable" || o.retryAfter === null)).toEqual([]);
  expect(rows.filter((row) => row.status === "in_flight")).toEqual([]);
}

describe("PostgreSQL stopped under traffic, then started again", () => {
  const database = testDatabase("postgres", "outage");

  it("never crashes, refuses with 503 while it can't bill, serves again after, and bills exactly what it served", async () => {
    const server = await serveProcess(database.url, "outage", database.dir);
    let exitedEarly = false;
    void server.exited.then(() => (exitedEarly = true));
    try {
      const load = traffic(server.url, 4);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      database.pg!.pause();
      const during: { status: number; code?: string }[] = [];
      // NOTE: the workers' requests admitted before the stop wait for their rows; these probes are sent while it lasts.
      const probes: Promise<Outcome>[] = [];
      for (let i = 0; i < 8; i++) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        during.push(await healthOf(server.url));
        probes.push(chat(server.url, i % 2 === 0));
      }
      database.pg!.resume();
      let healthy = false;
      for (let i = 0; i < 100 && !healthy; i++) {
        healthy = (await healthOf(server.url)).status === 200;
        if (!healthy) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
      const probed = await Promise.all(probes);
      const worked = await load.stop();
      const outcomes = [...worked, ...probed];
      expect(exitedEarly).toBe(false);
      expect(healthy).toBe(true);
      expect(during).toContainEqual({ status: 503, code: "ledger_unavailable" });
      expect(probed.filter((o) => o.status === 503).length).toBeGreaterThan(0);
      // Requests after the database came back are served.
      expect(worked.slice(-4).filter((o) => o.status === 200).length).toBeGreaterThan(0);
      await server.stop();
      expectLedgerMatches(outcomes, await ledgerRows(database.url));
    } finally {
      server.child.kill("SIGKILL");
    }
  }, 120_000);
});

describe("SQLite on a disk that fills up", () => {
  let mount: string;
  beforeAll(() => {
    mount = mkdtempSync(join(tmpdir(), "tokenmill-full-"));
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", mount]);
  });
  afterAll(() => {
    execFileSync("umount", [mount]);
    rmSync(mount, { recursive: true, force: true });
  });

  it("refuses with 503 while the ledger can't commit, serves nothing unbilled, and serves again once space is freed", async () => {
    const db = `sqlite:${join(mount, "tokenmill.db")}`;
    const server: Serving = await serveProcess(db, "full", mkdtempSync(join(tmpdir(), "tokenmill-full-data-")));
    let exitedEarly = false;
    void server.exited.then(() => (exitedEarly = true));
    try {
      const before = await chat(server.url, false);
      expect(before.status).toBe(200);
      // Fill the disk to its last byte.
      const filler = join(mount, "filler");
      try {
        writeFileSync(filler, Buffer.alloc(8 * 1024 * 1024));
      } catch {
        // ENOSPC: full, as intended
      }
      // The first request after the disk filled can't commit: its response waits for its row; the next ones are refused.
      const first = chat(server.url, true);
      await until(async () => (await healthOf(server.url)).code === "ledger_unavailable", { everyMs: 50, what: "the server to see the ledger can't commit" });
      const refused: Outcome[] = [];
      for (let i = 0; i < 11; i++) refused.push(await chat(server.url, i % 2 === 0));
      expect((await healthOf(server.url)).code).toBe("ledger_unavailable");
      rmSync(filler);
      const whileFull = [await first, ...refused];
      let healthy = false;
      for (let i = 0; i < 100 && !healthy; i++) {
        healthy = (await healthOf(server.url)).status === 200;
        if (!healthy) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(healthy).toBe(true);
      const after = await chat(server.url, true);
      expect(after.status).toBe(200);
      expect(exitedEarly).toBe(false);
      expect(refused.every((o) => o.status === 503)).toBe(true);
      await server.stop();
      expectLedgerMatches([before, ...whileFull, after], await ledgerRows(db));
    } finally {
      server.child.kill("SIGKILL");
      await server.exited;
    }
  }, 120_000);
});
