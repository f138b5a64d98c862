/**
 * Budgets, token quotas and parallel limits, as meters in the shared database: per key, meter
 * and period, what settled requests used and what requests in flight reserved.
 *
 * A reservation is one conditional UPDATE (`reserved += amount WHERE used + reserved + amount
 * <= limit`), so concurrent requests on any number of replicas can never together pass a limit:
 * the database serializes them on the meter's row. Each hold is also written to
 * limit_reservations in the same transaction, so the next start of a replica that crashed gives
 * back what its requests held. Settlement (in the ledger's transaction, with the row it bills)
 * replaces each reservation with what the request actually used.
 *
 * NOTE: every transaction here touches meter rows in one order (key, meter, period), so two
 * replicas can wait on each other's rows but never deadlock.
 */
import { sql, type Kysely, type Transaction } from "kysely";
import type { Database } from "../store/database.ts";

/** usd: a budget (micro-USD); tokens: a token quota; parallel: requests in flight (period 0). */
export type Meter = "usd" | "tokens" | "parallel";

export interface Hold {
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
          await ensureMeter(trx, hold);
          const result = await trx.updateTable("key_meters").set({ reserved: sql`reserved + ${hold.amount}` })
            .where("key_id", "=", hold.keyId).where("meter", "=", hold.meter).where("period_start_ms", "=", hold.periodStartMs)
            .where(sql`used + reserved + ${hold.amount}`, "<=", hold.limit)
            .executeTakeFirst();
          if (Number(result.numUpdatedRows) === 0) throw new Refused(hold);
          await trx.insertInto("limit_reservations")
            .values({ request_id: requestId, meter: hold.meter, key_id: hold.keyId, period_start_ms: hold.periodStartMs, amount: hold.amount, replica: this.replica })
            .onConflict((oc) => oc.columns(["request_id", "meter"]).doUpdateSet({ amount: sql`limit_reservations.amount + ${hold.amount}` }))
            .execute();
        }
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

  /** At start: what this replica's requests held when it last stopped (a crash) is given back. Returns how many holds. */
  async releaseCrashed(): Promise<number> {
    return this.db.transaction().execute(async (trx) => {
      const holds = await trx.selectFrom("limit_reservations").selectAll().where("replica", "=", this.replica).execute();
      const changes = holds.map((h) => ({ keyId: h.key_id, meter: h.meter as Meter, periodStartMs: Number(h.period_start_ms), reservedDelta: -Number(h.amount), usedDelta: 0 }));
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
    await trx.deleteFrom("limit_reservations").where("request_id", "in", requestIds.slice(i, i + 500)).execute();
  }
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

async function usedFromLedger(db: Kysely<Database>, keyId: string, meter: Meter, periodStartMs: number): Promise<number> {
  const row = await db.selectFrom("usage_ledger").select((eb) => [
    eb.fn.coalesce(eb.fn.sum<number>(meter === "usd" ? sql`cost_micro_usd` : sql`uncached_input_tokens + cached_input_tokens + output_tokens`), eb.lit(0)).as("used"),
  ]).where("key_id", "=", keyId).where("started_ms", ">=", periodStartMs).where("status", "!=", "in_flight").executeTakeFirstOrThrow();
  return Number(row.used);
}
