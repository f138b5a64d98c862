/**
 * Rate limits as token buckets that refill continuously: a bucket holds at most `perMinute`
 * and gains perMinute/60 000 every millisecond. A request takes from it only when it holds
 * enough (one conditional step); settlement gives back (or takes more than) what an estimate
 * got wrong, so that in the end a bucket is charged exactly what was used.
 *
 * One process keeps its buckets in memory. Replicas sharing PostgreSQL keep them in a table,
 * with one atomic statement per take on the database's clock, so N replicas together allow
 * exactly the limit (never N times it, nor skewed by their clocks).
 */
import { sql, type Kysely } from "kysely";
import type { Database } from "../store/database.ts";

export type BucketKind = "requests" | "tokens";

export interface Bucket {
  keyId: string;
  kind: BucketKind;
  perMinute: number;
}

/** A bucket's level after a take (or when the take was refused). */
export interface BucketLevel {
  taken: boolean;
  level: number;
}

export interface RateBuckets {
  /** Takes `amount` if the bucket holds it. */
  take(bucket: Bucket, amount: number): Promise<BucketLevel>;
  /** Adds `amount` (negative: takes it, even below zero, a debt refilling pays off). */
  adjust(bucket: Bucket, amount: number): Promise<void>;
  level(bucket: Bucket): Promise<number>;
}

const MINUTE_MS = 60_000;

/** Milliseconds until a bucket at `level` holds `amount`. */
export function msUntil(bucket: Bucket, level: number, amount: number): number {
  return Math.max(0, ((amount - level) * MINUTE_MS) / bucket.perMinute);
}

export class MemoryBuckets implements RateBuckets {
  private readonly buckets = new Map<string, { tokens: number; updatedMs: number }>();

  constructor(private readonly now: () => number = () => performance.timeOrigin + performance.now()) {}

  async take(bucket: Bucket, amount: number): Promise<BucketLevel> {
    const state = this.refilled(bucket);
    if (state.tokens < amount) return { taken: false, level: state.tokens };
    state.tokens -= amount;
    return { taken: true, level: state.tokens };
  }

  async adjust(bucket: Bucket, amount: number): Promise<void> {
    const state = this.refilled(bucket);
    state.tokens = Math.min(bucket.perMinute, state.tokens + amount);
  }

  async level(bucket: Bucket): Promise<number> {
    return this.refilled(bucket).tokens;
  }

  private refilled(bucket: Bucket): { tokens: number; updatedMs: number } {
    const id = `${bucket.keyId}\u0000${bucket.kind}`;
    const nowMs = this.now();
    let state = this.buckets.get(id);
    if (!state) {
      state = { tokens: bucket.perMinute, updatedMs: nowMs };
      this.buckets.set(id, state);
    }
    state.tokens = Math.min(bucket.perMinute, state.tokens + (Math.max(0, nowMs - state.updatedMs) * bucket.perMinute) / MINUTE_MS);
    state.updatedMs = Math.max(state.updatedMs, nowMs);
    return state;
  }
}

/** The database's clock in epoch milliseconds (fractional), the same for every replica. */
const NOW_MS = sql<number>`(extract(epoch from clock_timestamp()) * 1000)::float8`;

export class PostgresBuckets implements RateBuckets {
  constructor(private readonly db: Kysely<Database>) {}

  async take(bucket: Bucket, amount: number): Promise<BucketLevel> {
    const cap = sql`${bucket.perMinute}::float8`;
    const need = sql`${amount}::float8`;
    const refilled = sql`least(${cap}, b.tokens + greatest(0, excluded.updated_ms - b.updated_ms) * ${cap} / ${MINUTE_MS}::float8)`;
    // NOTE: one statement: a first take inserts the full bucket less the amount; a later one refills and takes only if enough is there.
    const { rows } = await sql<{ tokens: number }>`
      insert into rate_buckets as b (key_id, kind, tokens, updated_ms)
      values (${bucket.keyId}, ${bucket.kind}, ${cap} - ${need}, ${NOW_MS})
      on conflict (key_id, kind) do update set tokens = ${refilled} - ${need}, updated_ms = greatest(b.updated_ms, excluded.updated_ms)
      where ${refilled} >= ${need}
      returning tokens`.execute(this.db);
    if (rows.length > 0) return { taken: true, level: Number(rows[0].tokens) };
    return { taken: false, level: await this.level(bucket) };
  }

  async adjust(bucket: Bucket, amount: number): Promise<void> {
    const cap = sql`${bucket.perMinute}::float8`;
    await sql`
      update rate_buckets as b set tokens = least(${cap}, b.tokens + greatest(0, ${NOW_MS} - b.updated_ms) * ${cap} / ${MINUTE_MS}::float8 + ${amount}::float8),
        updated_ms = greatest(b.updated_ms, ${NOW_MS})
      where key_id = ${bucket.keyId} and kind = ${bucket.kind}`.execute(this.db);
  }

  async level(bucket: Bucket): Promise<number> {
    const cap = sql`${bucket.perMinute}::float8`;
    const { rows } = await sql<{ tokens: number }>`
      select least(${cap}, b.tokens + greatest(0, ${NOW_MS} - b.updated_ms) * ${cap} / ${MINUTE_MS}::float8) as tokens
      from rate_buckets as b where key_id = ${bucket.keyId} and kind = ${bucket.kind}`.execute(this.db);
    return rows.length > 0 ? Number(rows[0].tokens) : bucket.perMinute;
  }
}
