/**
 * Budgets, token quotas and parallel limits, as meters in the shared database: per owner (a
 * key or a team), meter and period, what settled requests used and what requests in flight
 * reserved. A per-model budget is a meter of its own ("usd:MODEL", model-limits.ts).
 *
 * A reservation is one conditional UPDATE (`reserved += amount WHERE used + reserved + amount
 * <= limit`), so concurrent requests on any number of replicas can never together pass a limit:
 * the database serializes them on the meter's row. Each hold is also written to
 * limit_holds in the same transaction, so the next start of a replica that crashed gives
 * back what its requests held. Settlement (in the ledger's transaction, with the row it bills)
 * replaces each reservation with what the request actually used.
 *
 * A request under a team reserves at both levels in one transaction: all or none.
 *
 * NOTE: every transaction here touches meter rows in one global order (owner, meter, period),
 * whatever levels it touches, so two replicas can wait on each other's rows but never deadlock.
 */
import { sql, type Kysely, type Transaction } from "kysely";
import type { Database } from "../store/database.ts";
import { meterKind, meterModel } from "./model-limits.ts";

/**
 * usd: a budget (micro-USD); tokens: a token quota; parallel: requests in flight (period 0);
 * usd:MODEL and tokens:MODEL: a per-model budget and quota.
 */
export type Meter = "usd" | "tokens" | "parallel" | `usd:${string}` | `tokens:${string}`;

/** Team ids start so; every other owner is a key. */
export const TEAM_ID_PREFIX = "team_";

export interface Hold {
  /** The meter's owner: a key's id, or a team's (team_…). */
  keyId: string;
  meter: Meter;
  periodStartMs: number;
  amount: number;
  limit: number;
}

/** One settled request's effect on a meter. */
export interface MeterChange {
  keyId: string;
  meter: Meter;
  periodStartMs: number;
  /** Negative: the reservation given back. */
  reservedDelta: number;
  usedDelta: number;
}

export interface MeterState {
  used: number;
  reserved: number;
}

/** A hold that did not fit, and the meter as it stood. */
export interface Refusal extends MeterState {
  hold: Hold;
}

const byRow = (a: { keyId: string; meter: string; periodStartMs: number }, b: typeof a) =>
  a.keyId < b.keyId ? -1 : a.keyId > b.keyId ? 1 : a.meter < b.meter ? -1 : a.meter > b.meter ? 1 : a.periodStartMs - b.periodStartMs;

class Refused extends Error {
  constructor(readonly hold: Hold) {
    super("refused");
  }
}

export class Meters {
  constructor(private readonly db: Kysely<Database>, private readonly replica: string) {}

  /** Reserves every hold for the request, or none: null when all fit, else the first that did not. */
  async reserve(requestId: string, holds: readonly Hold[]): Promise<Refusal | null> {
    const sorted = [...holds].sort(byRow);
    try {
      await this.db.transaction().execute(async (trx) => {
        for (const hold of sorted) {
          if (await take(trx, hold)) continue;
          // NOTE: the common case is one UPDATE a hold. One that updated nothing found the row full, or no row (yet: another
          // transaction may be inserting it, which ensureMeter's insert waits for); so the row is made sure of, and tried again.
          await ensureMeter(trx, hold);
          if (!(await take(trx, hold))) throw new Refused(hold);
        }
        await trx.insertInto("limit_holds")
          .values(sorted.map((hold) => ({ request_id: requestId, owner_id: hold.keyId, meter: hold.meter, period_start_ms: hold.periodStartMs, amount: hold.amount, replica: this.replica })))
          .onConflict((oc) => oc.columns(["request_id", "owner_id", "meter"]).doUpdateSet({ amount: sql`limit_holds.amount + excluded.amount` }))
          .execute();
      });
      return null;
    } catch (err) {
      if (!(err instanceof Refused)) throw err;
      return { hold: err.hold, ...(await this.state(err.hold.keyId, err.hold.meter, err.hold.periodStartMs)) };
    }
  }

  async state(keyId: string, meter: Meter, periodStartMs: number): Promise<MeterState> {
    const row = await this.db.selectFrom("key_meters").select(["used", "reserved"])
      .where("key_id", "=", keyId).where("meter", "=", meter).where("period_start_ms", "=", periodStartMs).executeTakeFirst();
    if (row) return { used: Number(row.used), reserved: Number(row.reserved) };
    return { used: meter === "parallel" ? 0 : await usedFromLedger(this.db, keyId, meter, periodStartMs), reserved: 0 };
  }

  /** Settles requests without a ledger (--no-ledger): their changes in a transaction of their own. */
  async settle(requestIds: readonly string[], changes: readonly MeterChange[]): Promise<void> {
    await this.db.transaction().execute((trx) => applyMeterChanges(trx, requestIds, changes));
  }

  /**
   * Gives back the holds a stopped replica's requests left under `requestIdPrefix` (a batch's
   * lines, when another replica takes the batch over). Returns how many holds.
   */
  async releaseHoldsOf(requestIdPrefix: string, replica: string): Promise<number> {
    return this.db.transaction().execute(async (trx) => {
      const holds = await trx.selectFrom("limit_holds").selectAll().where("replica", "=", replica).where("request_id", "like", `${requestIdPrefix}%`).execute();
      const changes = holds.map((h) => ({ keyId: h.owner_id, meter: h.meter as Meter, periodStartMs: Number(h.period_start_ms), reservedDelta: -Number(h.amount), usedDelta: 0 }));
      await applyMeterChanges(trx, [...new Set(holds.map((h) => h.request_id))], changes);
      return holds.length;
    });
  }

  /** At start: what this replica's requests held when it last stopped (a crash) is given back. Returns how many holds. */
  async releaseCrashed(): Promise<number> {
    return this.db.transaction().execute(async (trx) => {
      const holds = await trx.selectFrom("limit_holds").selectAll().where("replica", "=", this.replica).execute();
      const changes = holds.map((h) => ({ keyId: h.owner_id, meter: h.meter as Meter, periodStartMs: Number(h.period_start_ms), reservedDelta: -Number(h.amount), usedDelta: 0 }));
      await applyMeterChanges(trx, [...new Set(holds.map((h) => h.request_id))], changes);
      return holds.length;
    });
  }
}

/**
 * Applies settled requests' changes, summed per meter row and in row order, and deletes their
 * reservations. Runs inside the caller's transaction (the ledger's batch).
 */
export async function applyMeterChanges(trx: Transaction<Database>, requestIds: readonly string[], changes: readonly MeterChange[]): Promise<void> {
  const summed = new Map<string, MeterChange>();
  for (const change of changes) {
    const id = `${change.keyId}\u0000${change.meter}\u0000${change.periodStartMs}`;
    const sum = summed.get(id);
    if (sum) {
      sum.reservedDelta += change.reservedDelta;
      sum.usedDelta += change.usedDelta;
    } else {
      summed.set(id, { ...change });
    }
  }
  for (const change of [...summed.values()].sort(byRow)) {
    await trx.updateTable("key_meters")
      .set({ reserved: sql`reserved + ${change.reservedDelta}`, used: sql`used + ${change.usedDelta}` })
      .where("key_id", "=", change.keyId).where("meter", "=", change.meter).where("period_start_ms", "=", change.periodStartMs)
      .execute();
  }
  // NOTE: in chunks, to stay under SQLite's limit on bound parameters.
  for (let i = 0; i < requestIds.length; i += 500) {
    await trx.deleteFrom("limit_holds").where("request_id", "in", requestIds.slice(i, i + 500)).execute();
  }
}

/** The conditional UPDATE that reserves a hold: true when the meter's row had room for it. */
async function take(trx: Transaction<Database>, hold: Hold): Promise<boolean> {
  const result = await trx.updateTable("key_meters").set({ reserved: sql`reserved + ${hold.amount}` })
    .where("key_id", "=", hold.keyId).where("meter", "=", hold.meter).where("period_start_ms", "=", hold.periodStartMs)
    .where(sql`used + reserved + ${hold.amount}`, "<=", hold.limit)
    .executeTakeFirst();
  return Number(result.numUpdatedRows) > 0;
}

/**
 * A meter row starts from what the ledger already holds for its period, so a budget set (or a
 * database upgraded) mid-period counts the spend before it: never a fresh allowance.
 */
async function ensureMeter(trx: Transaction<Database>, hold: Hold): Promise<void> {
  const exists = await trx.selectFrom("key_meters").select("key_id")
    .where("key_id", "=", hold.keyId).where("meter", "=", hold.meter).where("period_start_ms", "=", hold.periodStartMs).executeTakeFirst();
  if (exists) return;
  const used = hold.meter === "parallel" ? 0 : await usedFromLedger(trx, hold.keyId, hold.meter, hold.periodStartMs);
  await trx.insertInto("key_meters").values({ key_id: hold.keyId, meter: hold.meter, period_start_ms: hold.periodStartMs, used, reserved: 0 })
    .onConflict((oc) => oc.columns(["key_id", "meter", "period_start_ms"]).doNothing()).execute();
}

/** What the ledger holds of a meter's period: its owner's rows (a key's, or a team's), of its model for a per-model meter. */
async function usedFromLedger(db: Kysely<Database>, ownerId: string, meter: Meter, periodStartMs: number): Promise<number> {
  const model = meterModel(meter);
  let query = db.selectFrom("usage_ledger").select((eb) => [
    eb.fn.coalesce(eb.fn.sum<number>(meterKind(meter) === "usd" ? sql`cost_micro_usd` : sql`uncached_input_tokens + cached_input_tokens + output_tokens`), eb.lit(0)).as("used"),
  ]).where(ownerId.startsWith(TEAM_ID_PREFIX) ? "team_id" : "key_id", "=", ownerId).where("started_ms", ">=", periodStartMs).where("status", "!=", "in_flight");
  if (model !== null) query = query.where("model", "=", model);
  const row = await query.executeTakeFirstOrThrow();
  return Number(row.used);
}
