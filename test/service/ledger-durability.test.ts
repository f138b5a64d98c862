/**
 * The ledger as operators depend on it, with the real CLI server processes: SIGKILL with 20
 * streams in flight loses no request that had completed, and the next start marks the rest
 * interrupted; two replicas on one PostgreSQL meter into one ledger that matches their clients.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { testDatabase } from "../helpers/test-database.ts";
import { ledgerRows } from "../helpers/ledger-rows.ts";
import { serveProcess } from "../helpers/serve-process.ts";
import { until } from "../helpers/until.ts";

const MODEL = "tokenmill-tiny-qwen3";

const serve = (db: string, replica: string, dataDir: string) => serveProcess(db, replica, dataDir);

interface Usage { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens: number } }

async function complete(url: string, content: string): Promise<Usage> {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content }], max_tokens: 5 }),
  });
  return ((await response.json()) as { usage: Usage }).usage;
}

/** Opens a long stream and resolves once its first chunk has arrived. */
async function openStream(url: string): Promise<void> {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "go on" }], max_tokens: 4000, ignore_eos: true, stream: true }),
  });
  const reader = response.body!.getReader();
  await reader.read();
  void (async () => {
    try {
      while (!(await reader.read()).done);
    } catch {
      // the server was killed
    }
  })();
}

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`the ledger survives kill -9 on ${kind}`, () => {
    const database = testDatabase(kind, "kill");

    it("keeps every completed request, and the next start marks the 20 in flight interrupted", async () => {
      const first = await serve(database.url, "r1", database.dir);
      const seen: Usage[] = [];
      try {
        for (let i = 0; i < 5; i++) seen.push(await complete(first.url, `request ${i}`));
        await Promise.all(Array.from({ length: 20 }, () => openStream(first.url)));
      } finally {
        first.child.kill("SIGKILL");
        await first.exited;
      }
      const before = await ledgerRows(database.url);
      const completed = before.filter((r) => r.status === "completed");
      expect(completed).toHaveLength(5);
      expect(completed.reduce((s, r) => s + r.output_tokens, 0)).toBe(seen.reduce((s, u) => s + u.completion_tokens, 0));
      expect(completed.reduce((s, r) => s + r.uncached_input_tokens + r.cached_input_tokens, 0)).toBe(seen.reduce((s, u) => s + u.prompt_tokens, 0));
      expect(before.filter((r) => r.status === "in_flight")).toHaveLength(20);

      const second = await serve(database.url, "r1", database.dir);
      second.child.kill("SIGTERM");
      await second.exited;
      const after = await ledgerRows(database.url);
      expect(after.filter((r) => r.status === "interrupted")).toHaveLength(20);
      expect(after.filter((r) => r.status === "completed")).toHaveLength(5);
      expect(after).toHaveLength(25);
      if (kind === "sqlite") {
        const sqlite = new Database(database.url.slice("sqlite:".length), { readonly: true });
        expect(sqlite.pragma("integrity_check", { simple: true })).toBe("ok");
        sqlite.close();
      }
    });
  });
}

describe("SIGTERM", () => {
  it("drains the streams in flight and writes their rows before the process exits", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-term-"));
    const db = `sqlite:${join(dir, "tokenmill.db")}`;
    try {
      const server = await serve(db, "t", dir);
      let started = 0;
      const streams = Array.from({ length: 3 }, async () => {
        const response = await fetch(`${server.url}/v1/completions`, {
          method: "POST", headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: MODEL, prompt: [9707, 11, 1879], max_tokens: 60, ignore_eos: true, stream: true }),
        });
        started++;
        return (await response.text()).split("\n\n").filter((e) => e.startsWith("data: {") && JSON.parse(e.slice(6)).choices.length > 0).length;
      });
      await until(() => started === 3, { what: "the three streams to start" });
      server.child.kill("SIGTERM");
      const received = await Promise.all(streams);
      await server.exited;
      const ledger = await ledgerRows(db);
      expect(ledger.map((r) => r.status)).toEqual(["completed", "completed", "completed"]);
      expect(ledger.map((r) => r.output_tokens).sort()).toEqual(received.sort());
      expect(received).toEqual([60, 60, 60]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("two replicas on one PostgreSQL", () => {
  const database = testDatabase("postgres", "replicas");

  it("meter into one ledger whose sums match what their clients saw", async () => {
    // Started together, so that their migrations race.
    const [a, b] = await Promise.all([serve(database.url, "a", database.dir), serve(database.url, "b", database.dir)]);
    const seen: Usage[] = [];
    try {
      await Promise.all([a, b].flatMap((replica, r) => Array.from({ length: 6 }, async (_, i) => seen.push(await complete(replica.url, `replica ${r} request ${i}`)))));
    } finally {
      for (const replica of [a, b]) replica.child.kill("SIGTERM");
      await Promise.all([a.exited, b.exited]);
    }
    const ledger = await ledgerRows(database.url);
    expect(ledger).toHaveLength(12);
    expect(ledger.every((r) => r.status === "completed")).toBe(true);
    expect(new Set(ledger.map((r) => r.replica))).toEqual(new Set(["a", "b"]));
    expect(ledger.reduce((s, r) => s + r.output_tokens, 0)).toBe(seen.reduce((s, u) => s + u.completion_tokens, 0));
    expect(ledger.reduce((s, r) => s + r.uncached_input_tokens + r.cached_input_tokens, 0)).toBe(seen.reduce((s, u) => s + u.prompt_tokens, 0));
    expect(ledger.reduce((s, r) => s + r.cached_input_tokens, 0)).toBe(seen.reduce((s, u) => s + (u.prompt_tokens_details?.cached_tokens ?? 0), 0));
  });
});
