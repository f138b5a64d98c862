/**
 * The service layer's store on both databases, SQLite and a real PostgreSQL server: the same
 * suite, run twice. Keys (hashed, shown once, revoked within the cache's second) and the
 * ledger (one idempotent row per request, in_flight rows of a crash marked interrupted).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CACHE_MS, KeyStore, hashSecret } from "../../service/keys.ts";
import { Ledger } from "../../service/ledger.ts";
import { PriceBook, costMicroUsd, microUsdPerMtok } from "../../service/prices.ts";
import type { Settlement } from "../../service/settlement.ts";
import { openStore, type Store } from "../../service/store/open-store.ts";
import { testDatabase } from "../helpers/test-database.ts";

const settlement = (id: string, overrides: Partial<Settlement> = {}): Settlement => ({
  id, requestId: `http-${id}`, keyId: "key_a", model: "m", endpoint: "/v1/chat/completions", startedMs: 1000, finishedMs: 1500, ttftMs: 40,
  outcome: "finished", usage: { promptTokens: 10, cachedPromptTokens: 4, completionTokens: 7 }, ...overrides,
});

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`the store on ${kind}`, () => {
    const database = testDatabase(kind, "store");
    let store: Store;
    beforeAll(async () => {
      store = await openStore(database.url);
    }, 60_000);
    afterAll(async () => store?.close());

    it("migrates once, and a second open (another replica) finds the schema current", async () => {
      const [again, third] = await Promise.all([openStore(database.url), openStore(database.url)]);
      expect(again.kind).toBe(kind);
      await Promise.all([again.close(), third.close()]);
    });

    it("creates a key whose secret is shown once and stored only as a hash and a prefix", async () => {
      const keys = new KeyStore(store.db);
      const { key, secret } = await keys.create({ name: "ci", models: ["m"], metadata: { team: "a" } });
      expect(secret).toMatch(/^tm-[A-Za-z0-9_-]{43}$/);
      expect(key).toMatchObject({ name: "ci", models: ["m"], metadata: { team: "a" }, prefix: `${secret.slice(0, 8)}…`, revokedMs: null });
      const rows = await store.db.selectFrom("api_keys").selectAll().where("id", "=", key.id).execute();
      expect(rows).toHaveLength(1);
      expect(JSON.stringify(rows)).not.toContain(secret.slice(8));
      expect(rows[0].secret_hash).toBe(hashSecret(secret));
      expect((await keys.verify(secret))?.id).toBe(key.id);
      expect(await keys.verify(`${secret}x`)).toBeNull();
      expect(await keys.hasAny()).toBe(true);
    });

    it("refuses a revoked key within the cache's second, and an expired one at once", async () => {
      const keys = new KeyStore(store.db);
      const { key, secret } = await keys.create({ name: "soon revoked" });
      const now = Date.now();
      expect(await keys.verify(secret, now)).not.toBeNull();
      // Another process (the CLI, a replica) revokes it: this one's cache forgets it within CACHE_MS.
      await new KeyStore(store.db).revoke(key.id);
      expect(await keys.verify(secret, now + CACHE_MS + 1)).toBeNull();
      const { secret: old } = await keys.create({ name: "expired", expiresMs: now - 1 });
      expect(await keys.verify(old)).toBeNull();
      const updated = await keys.update(key.id, { name: "renamed", models: null });
      expect(updated).toMatchObject({ name: "renamed", models: null });
      expect((await keys.list()).map((k) => k.name)).toEqual(expect.arrayContaining(["ci", "renamed", "expired"]));
    });

    it("writes one row per request: in flight at admission, final at settlement, idempotently", async () => {
      const ledger = new Ledger(store.db, "replica-1");
      ledger.admit({ id: "r1", requestId: "http-r1", keyId: "key_a", model: "m", endpoint: "/v1/chat/completions", startedMs: 1000 });
      await ledger.flush();
      expect((await store.db.selectFrom("usage_ledger").selectAll().where("request_id", "=", "r1").executeTakeFirstOrThrow()).status).toBe("in_flight");
      ledger.settle(settlement("r1"));
      ledger.settle(settlement("r1"));
      await ledger.close();
      const rows = await store.db.selectFrom("usage_ledger").selectAll().where("request_id", "=", "r1").execute();
      expect(rows).toEqual([{
        request_id: "r1", http_request_id: "http-r1", key_id: "key_a", model: "m", backend: null, route: null, endpoint: "/v1/chat/completions", status: "completed",
        uncached_input_tokens: 6, cached_input_tokens: 4, output_tokens: 7, cost_micro_usd: 0, started_ms: 1000, finished_ms: 1500, ttft_ms: 40, replica: "replica-1", team_id: null, residency: null, tier: null,
      }]);
    });

    it("maps every outcome to its status, sums per key exactly, and batches many writes into few transactions", async () => {
      const ledger = new Ledger(store.db, "replica-2");
      const outcomes = ["finished", "disconnected", "aborted", "errored", "rejected"] as const;
      for (let i = 0; i < 500; i++) {
        ledger.admit({ id: `b${i}`, requestId: `http-b${i}`, keyId: "key_b", model: "m", endpoint: "/v1/completions", startedMs: i });
        ledger.settle(settlement(`b${i}`, { keyId: "key_b", outcome: outcomes[i % 5], usage: { promptTokens: i, cachedPromptTokens: i % 3, completionTokens: 2 * i } }));
      }
      await ledger.close();
      expect(ledger.numWritten).toBe(1000);
      expect(ledger.numBatches).toBeLessThanOrEqual(Math.ceil(1000 / 256) + 1);
      const totals = await ledger.totals("key_b");
      const sum = (f: (i: number) => number) => Array.from({ length: 500 }, (_, i) => f(i)).reduce((a, b) => a + b, 0);
      expect(totals).toEqual({ numRequests: 500, uncachedInputTokens: sum((i) => i - (i % 3)), cachedInputTokens: sum((i) => i % 3), outputTokens: sum((i) => 2 * i), costMicroUsd: 0 });
      const statuses = await store.db.selectFrom("usage_ledger").select(["status"]).where("key_id", "=", "key_b").groupBy("status").execute();
      expect(statuses.map((s) => s.status).sort()).toEqual(["aborted", "completed", "error", "stopped"]);
    });

    it("prices in three tiers from an effective time: a later price never changes earlier requests' cost", async () => {
      const prices = new PriceBook(store.db);
      await prices.set({ model: "priced", inputPerMtok: microUsdPerMtok("0.15"), cachedInputPerMtok: microUsdPerMtok("0.075"), outputPerMtok: microUsdPerMtok("0.60"), effectiveMs: 1000 });
      await prices.set({ model: "priced", inputPerMtok: microUsdPerMtok("3"), cachedInputPerMtok: microUsdPerMtok("1.5"), outputPerMtok: microUsdPerMtok("15"), effectiveMs: 5000 });
      const ledger = new Ledger(store.db, "replica-5", () => {}, (model, usage, atMs) => prices.costAt(model, usage, atMs));
      const usage = { promptTokens: 1_000_000, cachedPromptTokens: 400_000, completionTokens: 200_000 };
      ledger.settle(settlement("p-old", { model: "priced", startedMs: 2000, usage }));
      ledger.settle(settlement("p-new", { model: "priced", startedMs: 6000, usage }));
      await ledger.close();
      const cost = async (id: string) => (await store.db.selectFrom("usage_ledger").select("cost_micro_usd").where("request_id", "=", id).executeTakeFirstOrThrow()).cost_micro_usd;
      // 0.6 M uncached × $0.15 + 0.4 M cached × $0.075 + 0.2 M out × $0.60 = $0.09 + $0.03 + $0.12
      expect(await cost("p-old")).toBe(240_000);
      expect(await cost("p-new")).toBe(1_800_000 + 600_000 + 3_000_000);
      expect((await prices.list()).filter((p) => p.model === "priced")).toHaveLength(2);
    });

    it("marks the rows a crash left in flight as interrupted at the next start of the same replica only", async () => {
      const crashed = new Ledger(store.db, "replica-3");
      crashed.admit({ id: "c1", requestId: "http-c1", keyId: "key_c", model: "m", endpoint: "/v1/completions", startedMs: 5 });
      crashed.admit({ id: "c2", requestId: "http-c2", keyId: "key_c", model: "m", endpoint: "/v1/completions", startedMs: 6 });
      const other = new Ledger(store.db, "replica-4");
      other.admit({ id: "c3", requestId: "http-c3", keyId: "key_c", model: "m", endpoint: "/v1/completions", startedMs: 7 });
      await Promise.all([crashed.flush(), other.flush()]);
      expect(await new Ledger(store.db, "replica-3").markInterrupted()).toBe(2);
      const status = async (id: string) => (await store.db.selectFrom("usage_ledger").select("status").where("request_id", "=", id).executeTakeFirstOrThrow()).status;
      expect([await status("c1"), await status("c2"), await status("c3")]).toEqual(["interrupted", "interrupted", "in_flight"]);
    });
  });
}

describe("cost", () => {
  it("is the integer formula, rounded half up once on the total", () => {
    const price = { model: "m", effectiveMs: 0, inputPerMtok: 150_000, cachedInputPerMtok: 75_000, outputPerMtok: 600_000 };
    expect(costMicroUsd({ promptTokens: 10, cachedPromptTokens: 4, completionTokens: 7 }, price)).toBe(Math.round((6 * 150_000 + 4 * 75_000 + 7 * 600_000) / 1e6));
    // 1 output token at $0.60/Mtok is 0.6 micro-USD: half up gives 1; 0.4 gives 0.
    expect(costMicroUsd({ promptTokens: 0, cachedPromptTokens: 0, completionTokens: 1 }, price)).toBe(1);
    expect(costMicroUsd({ promptTokens: 0, cachedPromptTokens: 0, completionTokens: 1 }, { ...price, outputPerMtok: 400_000 })).toBe(0);
    // Large counts stay exact (BigInt inside): 10^9 tokens at $100/Mtok is $100,000.
    expect(costMicroUsd({ promptTokens: 1e9, cachedPromptTokens: 0, completionTokens: 0 }, { ...price, inputPerMtok: 100_000_000 })).toBe(100_000 * 1e6);
  });

  it("reads USD per million tokens without binary fractions", () => {
    expect(microUsdPerMtok("0.15")).toBe(150_000);
    expect(microUsdPerMtok("3")).toBe(3_000_000);
    expect(microUsdPerMtok("0.000001")).toBe(1);
    for (const bad of ["", "-1", "1.0000001", "abc", "1e3"]) expect(() => microUsdPerMtok(bad), bad).toThrow(/not a price/);
  });
});
