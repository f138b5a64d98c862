/**
 * Per-key limits in the store, on SQLite and a real PostgreSQL: reservations that concurrent
 * requests (and, on PostgreSQL, two replicas' connection pools) can never push past a limit,
 * settled in the ledger's transaction; a crashed replica's holds given back; shared token
 * buckets exact under a burst; alerts claimed once.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Ledger } from "../../service/ledger.ts";
import { Alerts, type BudgetAlert } from "../../service/limits/alerts.ts";
import { Meters, type MeterChange } from "../../service/limits/meters.ts";
import { PostgresBuckets } from "../../service/limits/rate-buckets.ts";
import type { Settlement } from "../../service/settlement.ts";
import { openStore, type Store } from "../../service/store/open-store.ts";
import { startPostgres, type TestPostgres } from "../helpers/postgres.ts";

const settlement = (id: string, keyId: string, changes: MeterChange[]): Settlement => ({
  id, requestId: `http-${id}`, keyId, model: "m", endpoint: "/v1/chat/completions", startedMs: 1000, finishedMs: 1500, ttftMs: 40,
  outcome: "finished", usage: { promptTokens: 10, cachedPromptTokens: 0, completionTokens: 7 },
  reservations: { holdsAny: true, changes: () => changes, settled: async () => {} },
});

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`limits in the store on ${kind}`, () => {
    let pg: TestPostgres | null = null;
    let dir: string;
    let stores: Store[];
    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "tokenmill-limits-"));
      if (kind === "postgres") pg = await startPostgres();
      const url = pg ? pg.url : `sqlite:${join(dir, "tokenmill.db")}`;
      // NOTE: on PostgreSQL, two stores are two replicas' pools; SQLite is one process's.
      stores = kind === "postgres" ? [await openStore(url), await openStore(url)] : [await openStore(url)];
    }, 60_000);
    afterAll(async () => {
      for (const store of stores ?? []) await store.close();
      pg?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    it("admits exactly limit/amount of 3× as many concurrent reservations, and refuses the rest with the meter's state", async () => {
      const meters = stores.map((s, i) => new Meters(s.db, `replica-${i}`));
      const results = await Promise.all(Array.from({ length: 30 }, (_, i) =>
        meters[i % meters.length].reserve(`burst-${i}`, [{ keyId: "key_burst", meter: "usd", periodStartMs: 0, amount: 10, limit: 100 }])));
      expect(results.filter((r) => r === null)).toHaveLength(10);
      const refusal = results.find((r) => r !== null)!;
      expect(refusal).toMatchObject({ used: 0, reserved: 100, hold: { amount: 10, limit: 100 } });
      expect(await meters[0].state("key_burst", "usd", 0)).toEqual({ used: 0, reserved: 100 });
    });

    it("reserves a request's holds all or none", async () => {
      const meters = new Meters(stores[0].db, "r");
      await meters.reserve("fill", [{ keyId: "key_both", meter: "tokens", periodStartMs: 0, amount: 90, limit: 100 }]);
      const refused = await meters.reserve("both", [
        { keyId: "key_both", meter: "usd", periodStartMs: 0, amount: 5, limit: 100 },
        { keyId: "key_both", meter: "tokens", periodStartMs: 0, amount: 20, limit: 100 },
      ]);
      expect(refused?.hold.meter).toBe("tokens");
      expect(await meters.state("key_both", "usd", 0)).toEqual({ used: 0, reserved: 0 });
    });

    it("settles a reservation into what was used, in the ledger's transaction, and forgets the hold", async () => {
      const { db } = stores[0];
      const meters = new Meters(db, "r");
      await meters.reserve("settle-1", [{ keyId: "key_settle", meter: "usd", periodStartMs: 0, amount: 50, limit: 100 }]);
      const ledger = new Ledger(db, "r");
      await ledger.settle(settlement("settle-1", "key_settle", [{ keyId: "key_settle", meter: "usd", periodStartMs: 0, reservedDelta: -50, usedDelta: 17 }]));
      expect(await meters.state("key_settle", "usd", 0)).toEqual({ used: 17, reserved: 0 });
      expect(await db.selectFrom("limit_holds").selectAll().where("request_id", "=", "settle-1").execute()).toEqual([]);
      expect(await meters.reserve("settle-2", [{ keyId: "key_settle", meter: "usd", periodStartMs: 0, amount: 83, limit: 100 }])).toBeNull();
      expect(await meters.reserve("settle-3", [{ keyId: "key_settle", meter: "usd", periodStartMs: 0, amount: 1, limit: 100 }])).not.toBeNull();
    });

    it("starts a new meter from the spend the ledger already holds for its period", async () => {
      const { db } = stores[0];
      await db.insertInto("usage_ledger").values({
        request_id: "before-budget", http_request_id: null, key_id: "key_late", model: "m", endpoint: "/v1/completions", status: "completed",
        uncached_input_tokens: 3, cached_input_tokens: 0, output_tokens: 4, cost_micro_usd: 60, started_ms: 5000, finished_ms: 5001, ttft_ms: null, replica: "r",
      }).execute();
      const meters = new Meters(db, "r");
      expect(await meters.reserve("late-1", [{ keyId: "key_late", meter: "usd", periodStartMs: 1000, amount: 50, limit: 100 }])).toMatchObject({ used: 60 });
      expect(await meters.reserve("late-2", [{ keyId: "key_late", meter: "tokens", periodStartMs: 1000, amount: 3, limit: 10 }])).toBeNull();
      expect(await meters.state("key_late", "tokens", 1000)).toEqual({ used: 7, reserved: 3 });
    });

    it("reserves at key and team level in one transaction: concurrent requests of 3 keys (given in either order) never pass either level, and never deadlock", async () => {
      const meters = stores.map((s, i) => new Meters(s.db, `replica-${i}`));
      // Key k_0 may take 4 of 10 each; the team all of 10: the team binds the others.
      const holdsOf = (i: number) => {
        const holds = [
          { keyId: `key_lvl_${i % 3}`, meter: "usd" as const, periodStartMs: 0, amount: 10, limit: i % 3 === 0 ? 40 : 1000 },
          { keyId: "team_lvl", meter: "usd" as const, periodStartMs: 0, amount: 10, limit: 100 },
          { keyId: "team_lvl", meter: "usd:m" as const, periodStartMs: 0, amount: 10, limit: 1000 },
        ];
        return i % 2 === 0 ? holds : holds.reverse();
      };
      const results = await Promise.all(Array.from({ length: 30 }, (_, i) => meters[i % meters.length].reserve(`lvl-${i}`, holdsOf(i))));
      const passed = results.map((r, i) => (r === null ? i : -1)).filter((i) => i >= 0);
      expect(passed).toHaveLength(10);
      expect(passed.filter((i) => i % 3 === 0).length).toBeLessThanOrEqual(4);
      expect(await meters[0].state("team_lvl", "usd", 0)).toEqual({ used: 0, reserved: 100 });
      expect(await meters[0].state("team_lvl", "usd:m", 0)).toEqual({ used: 0, reserved: 100 });
      expect(await meters[0].state("key_lvl_0", "usd", 0)).toEqual({ used: 0, reserved: passed.filter((i) => i % 3 === 0).length * 10 });
      // A refused request holds nothing at any level: every hold row is a passed request's.
      const holds = await stores[0].db.selectFrom("limit_holds").select(["request_id", "owner_id"]).where("request_id", "like", "lvl-%").execute();
      expect(new Set(holds.map((h) => h.request_id))).toEqual(new Set(passed.map((i) => `lvl-${i}`)));
      expect(holds).toHaveLength(passed.length * 3);
      // Settling one replaces its reservations at both levels, in the ledger's transaction.
      const id = `lvl-${passed[0]}`;
      const key = `key_lvl_${passed[0] % 3}`;
      await new Ledger(stores[0].db, "r").settle(settlement(id, key, [
        { keyId: key, meter: "usd", periodStartMs: 0, reservedDelta: -10, usedDelta: 7 },
        { keyId: "team_lvl", meter: "usd", periodStartMs: 0, reservedDelta: -10, usedDelta: 7 },
        { keyId: "team_lvl", meter: "usd:m", periodStartMs: 0, reservedDelta: -10, usedDelta: 7 },
      ]));
      expect(await meters[0].state("team_lvl", "usd", 0)).toEqual({ used: 7, reserved: 90 });
      expect(await meters[0].state("team_lvl", "usd:m", 0)).toEqual({ used: 7, reserved: 90 });
    });

    it("starts a team's meter, and a model's, from what the ledger holds of the team's rows and the model's", async () => {
      const { db } = stores[0];
      const row = (id: string, keyId: string, teamId: string | null, model: string, cost: number) => ({
        request_id: id, http_request_id: null, key_id: keyId, model, endpoint: "/v1/completions", status: "completed" as const, team_id: teamId,
        uncached_input_tokens: 1, cached_input_tokens: 0, output_tokens: 1, cost_micro_usd: cost, started_ms: 5000, finished_ms: 5001, ttft_ms: null, replica: "r",
      });
      await db.insertInto("usage_ledger").values([row("t-1", "key_t1", "team_late", "a", 30), row("t-2", "key_t2", "team_late", "b", 20), row("t-3", "key_t3", null, "a", 500)]).execute();
      const meters = new Meters(db, "r");
      expect(await meters.state("team_late", "usd", 1000)).toEqual({ used: 50, reserved: 0 });
      expect(await meters.state("team_late", "usd:a", 1000)).toEqual({ used: 30, reserved: 0 });
      expect(await meters.state("key_t1", "tokens:a", 1000)).toEqual({ used: 2, reserved: 0 });
      expect(await meters.reserve("t-late", [{ keyId: "team_late", meter: "usd", periodStartMs: 1000, amount: 51, limit: 100 }])).toMatchObject({ used: 50 });
    });

    it("gives back what a crashed replica's requests held, and only that replica's", async () => {
      const { db } = stores[0];
      await new Meters(db, "crashed").reserve("crash-1", [{ keyId: "key_crash", meter: "parallel", periodStartMs: 0, amount: 1, limit: 5 }]);
      await new Meters(db, "alive").reserve("alive-1", [{ keyId: "key_crash", meter: "parallel", periodStartMs: 0, amount: 1, limit: 5 }]);
      expect(await new Meters(db, "crashed").releaseCrashed()).toBe(1);
      expect(await new Meters(db, "crashed").state("key_crash", "parallel", 0)).toEqual({ used: 0, reserved: 1 });
      expect(await new Meters(db, "crashed").releaseCrashed()).toBe(0);
    });

    it("fires each alert threshold once, however many replicas check the same reading at once", async () => {
      const heard: BudgetAlert[] = [];
      const alerts = stores.flatMap((s, i) => [0, 1].map((j) => new Alerts(s.db, `replica-${i}-${j}`, { onAlert: (a) => heard.push(a) })));
      const reading = { keyId: "key_alert", keyName: "alerted", meter: "usd" as const, period: "month" as const, periodStartMs: 0, periodEndMs: 10, used: 800_000, limit: 1_000_000 };
      await Promise.all(alerts.map((a) => a.check(reading)));
      expect(heard.map((a) => a.threshold).sort()).toEqual([50, 80]);
      expect(heard[0]).toMatchObject({ key_id: "key_alert", key_name: "alerted", limit_type: "budget", used: 0.8, limit: 1, period: "month" });
      await Promise.all(alerts.map((a) => a.check({ ...reading, used: 1_000_000 })));
      expect(heard.map((a) => a.threshold).sort()).toEqual([100, 50, 80]);
      await alerts[0].check({ ...reading, periodStartMs: 10, used: 500_000 });
      expect(heard).toHaveLength(4);
    });

    if (kind === "postgres") {
      it("shares a token bucket between replicas: exactly the limit of a 3× burst gets through", async () => {
        const buckets = stores.map((s) => new PostgresBuckets(s.db));
        const bucket = { keyId: "key_rpm", kind: "requests" as const, perMinute: 10 };
        const takes = await Promise.all(Array.from({ length: 30 }, (_, i) => buckets[i % 2].take(bucket, 1)));
        expect(takes.filter((t) => t.taken)).toHaveLength(10);
        const level = await buckets[0].level(bucket);
        expect(level).toBeGreaterThanOrEqual(0);
        expect(level).toBeLessThan(1);
        await buckets[1].adjust(bucket, -5);
        expect(await buckets[0].level(bucket)).toBeLessThan(-4);
        await buckets[0].adjust(bucket, 100);
        expect(await buckets[1].level(bucket)).toBe(10);
      });
    }
  });
}
