/**
 * The usage ledger: one row per request, keyed by the server's own id for it. A request is
 * written `in_flight` when admitted and replaced by its final row when settled, so a crash
 * leaves `in_flight` rows, which the next start of the same replica marks `interrupted`.
 *
 * Writes stay off the request path: they are queued and flushed together in one transaction
 * every FLUSH_MS (or at MAX_BATCH rows), and close() flushes what is left, so a SIGTERM loses
 * nothing. The final write is an upsert, so settling twice leaves one row.
 *
 * A batch that fails because the store can't be reached or written (PostgreSQL restarting, a
 * full disk: see store/store-errors.ts) is kept, in order, and retried with backoff; the ledger
 * is then `unavailable` until a batch commits again, and a settle resolves only once its row is
 * committed. The server refuses new requests meanwhile, so nothing is served unbilled.
 */
import type { Kysely, Transaction } from "kysely";
import { applyMeterChanges, type MeterChange } from "./limits/meters.ts";
import type { Admission, Outcome, Settlement, Usage } from "./settlement.ts";
import type { PriceTier } from "./prices.ts";
import type { Database, LedgerStatus, UsageLedgerTable } from "./store/database.ts";
import { isStoreUnavailable } from "./store/store-errors.ts";

export const FLUSH_MS = 10;
export const MAX_BATCH = 256;
/** Retries of a batch the store could not take: from the first delay, doubling up to the last. */
export const RETRY_MS = [50, 2000] as const;

/** Whether the ledger commits now; while it can't, since when and why. */
export type LedgerHealth = { available: true } | { available: false; sinceMs: number; reason: string; numWaiting: number };

export interface LedgerEvents {
  /** A write that failed for a reason of its own (not the store's availability) and was dropped. */
  onError?: (err: unknown) => void;
  /** The store stopped taking writes (first failure) or took them again. */
  onHealth?: (health: LedgerHealth) => void;
}

const STATUS_OF: Record<Outcome, LedgerStatus> = {
  finished: "completed", disconnected: "stopped", aborted: "aborted", errored: "error", rejected: "error",
};

export interface LedgerTotals {
  numRequests: number;
  uncachedInputTokens: number;
  cachedInputTokens: number;
  outputTokens: number;
  costMicroUsd: number;
}

/**
 * A queued write: prepared (prices looked up) before its batch's transaction, then run inside
 * it, with the meter changes that settle the request's reservations in the same transaction.
 */
type Write = () => Promise<Prepared>;

interface Prepared {
  run: (trx: Transaction<Database>) => Promise<unknown>;
  settles?: { requestId: string; changes: MeterChange[] };
}

interface Queued {
  write: Write;
  /** Resolves once the batch carrying this write is committed (or failed, which onError hears). */
  done: () => void;
}

export class Ledger {
  private queue: Queued[] = [];
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;
  /** Writes and the transactions that carried them, so far (for benchmarks and tests). */
  numWritten = 0;
  numBatches = 0;

  /**
   * @param replica this process's name in a fleet sharing the database (its in-flight rows are its own).
   * @param costAt a usage's cost at a model's price at a time (PriceBook.costAt), for each row; null or none: cost 0.
   */
  private unavailable: { sinceMs: number; reason: string } | null = null;
  private retryMs: number = RETRY_MS[0];
  private readonly onError: (err: unknown) => void;

  constructor(
    private readonly db: Kysely<Database>, readonly replica: string, events: LedgerEvents | ((err: unknown) => void) = {},
    private readonly costAt: (model: string, usage: Usage, atMs: number, tier: PriceTier) => Promise<number | null> = async () => null,
  ) {
    const { onError, onHealth } = typeof events === "function" ? { onError: events, onHealth: undefined } : events;
    this.onError = onError ?? (() => {});
    this.onHealth = onHealth ?? (() => {});
  }

  private readonly onHealth: (health: LedgerHealth) => void;

  get health(): LedgerHealth {
    return this.unavailable ? { available: false, ...this.unavailable, numWaiting: this.queue.length } : { available: true };
  }

  /** At start: the rows this replica left in flight (a crash) become interrupted. Returns how many. */
  async markInterrupted(nowMs = Date.now()): Promise<number> {
    const result = await this.db.updateTable("usage_ledger").set({ status: "interrupted", finished_ms: nowMs })
      .where("status", "=", "in_flight").where("replica", "=", this.replica).executeTakeFirst();
    return Number(result.numUpdatedRows);
  }

  admit(admission: Admission): void {
    const row: UsageLedgerTable = {
      request_id: admission.id, http_request_id: admission.requestId, key_id: admission.keyId, model: admission.model,
      backend: admission.backend ?? null, route: admission.route ?? null, endpoint: admission.endpoint, status: "in_flight",
      uncached_input_tokens: 0, cached_input_tokens: 0, output_tokens: 0, cost_micro_usd: 0,
      started_ms: admission.startedMs, finished_ms: null, ttft_ms: null, replica: this.replica,
      team_id: admission.teamId ?? null, residency: admission.residency ?? null, tier: admission.tier === "batch" ? "batch" : null,
    };
    void this.enqueue(async () => ({ run: (trx) => trx.insertInto("usage_ledger").values(row).onConflict((oc) => oc.column("request_id").doNothing()).execute() }));
  }

  /** Resolves once the row is committed. */
  settle(settlement: Settlement): Promise<void> {
    const { usage } = settlement;
    const row: UsageLedgerTable = {
      request_id: settlement.id, http_request_id: settlement.requestId, key_id: settlement.keyId, model: settlement.model,
      backend: settlement.backend ?? null, route: settlement.route ?? null, endpoint: settlement.endpoint, status: STATUS_OF[settlement.outcome],
      uncached_input_tokens: usage.promptTokens - usage.cachedPromptTokens, cached_input_tokens: usage.cachedPromptTokens,
      output_tokens: usage.completionTokens, cost_micro_usd: 0, started_ms: settlement.startedMs, finished_ms: settlement.finishedMs,
      ttft_ms: settlement.ttftMs, replica: this.replica, team_id: settlement.teamId ?? null, residency: settlement.residency ?? null,
      tier: settlement.tier === "batch" ? "batch" : null,
    };
    return this.enqueue(async () => {
      // NOTE: looked up before the batch's transaction: SQLite has one connection, which the transaction holds.
      const priced = { ...row, cost_micro_usd: (await this.costAt(settlement.model, usage, settlement.startedMs, settlement.tier ?? "standard")) ?? 0 };
      const { request_id: _id, ...final } = priced;
      const reservations = settlement.reservations;
      return {
        run: (trx) => trx.insertInto("usage_ledger").values(priced).onConflict((oc) => oc.column("request_id").doUpdateSet(final)).execute(),
        settles: reservations?.holdsAny ? { requestId: settlement.id, changes: reservations.changes(usage, priced.cost_micro_usd) } : undefined,
      };
    });
  }

  /** Writes everything queued so far (a batch the store can't take yet goes back to the queue's front, and is retried). */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) return this.flushing;
    this.flushing = this.flushing.then(async () => {
      try {
        await this.commit(batch);
      } catch (err) {
        if (!isStoreUnavailable(err)) {
          this.onError(err);
          for (const { done } of batch) done();
          return;
        }
        this.queue = [...batch, ...this.queue];
        this.markUnavailable(err);
        this.timer ??= setTimeout(() => void this.flush(), this.retryMs);
        this.retryMs = Math.min(RETRY_MS[1], this.retryMs * 2);
        return;
      }
      this.numWritten += batch.length;
      this.numBatches++;
      for (const { done } of batch) done();
      if (this.unavailable) {
        this.unavailable = null;
        this.retryMs = RETRY_MS[0];
        this.onHealth(this.health);
      }
    });
    return this.flushing;
  }

  private async commit(batch: readonly Queued[]): Promise<void> {
    const prepared: Prepared[] = [];
    for (const { write } of batch) prepared.push(await write());
    const settles = prepared.flatMap((p) => (p.settles ? [p.settles] : []));
    await this.db.transaction().execute(async (trx) => {
      for (const { run } of prepared) await run(trx);
      if (settles.length > 0) await applyMeterChanges(trx, settles.map((s) => s.requestId), settles.flatMap((s) => s.changes));
    });
  }

  private markUnavailable(err: unknown): void {
    if (this.unavailable) return;
    this.unavailable = { sinceMs: Date.now(), reason: err instanceof Error ? err.message : String(err) };
    this.onHealth(this.health);
  }

  /**
   * Flushes what is queued, retrying while the store is unavailable for at most `timeoutMs`;
   * later writes are refused. Returns how many rows could not be written.
   */
  async close(timeoutMs = 10_000): Promise<number> {
    this.closed = true;
    const deadline = Date.now() + timeoutMs;
    await this.flush();
    while (this.queue.length > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(this.retryMs, Math.max(0, deadline - Date.now()))));
      await this.flush();
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const lost = this.queue.splice(0);
    for (const { done } of lost) done();
    return lost.length;
  }

  /** Sums over the rows, for one key (or one team's keys) or all, of requests started at or after sinceMs. */
  async totals(keyId?: string, sinceMs?: number, teamId?: string): Promise<LedgerTotals> {
    let query = this.db.selectFrom("usage_ledger").select((eb) => [
      eb.fn.countAll<number>().as("numRequests"),
      eb.fn.coalesce(eb.fn.sum<number>("uncached_input_tokens"), eb.lit(0)).as("uncachedInputTokens"),
      eb.fn.coalesce(eb.fn.sum<number>("cached_input_tokens"), eb.lit(0)).as("cachedInputTokens"),
      eb.fn.coalesce(eb.fn.sum<number>("output_tokens"), eb.lit(0)).as("outputTokens"),
      eb.fn.coalesce(eb.fn.sum<number>("cost_micro_usd"), eb.lit(0)).as("costMicroUsd"),
    ]);
    if (keyId !== undefined) query = query.where("key_id", "=", keyId);
    if (teamId !== undefined) query = query.where("team_id", "=", teamId);
    if (sinceMs !== undefined) query = query.where("started_ms", ">=", sinceMs);
    const row = await query.executeTakeFirstOrThrow();
    return Object.fromEntries(Object.entries(row).map(([k, v]) => [k, Number(v)])) as unknown as LedgerTotals;
  }

  private enqueue(write: Write): Promise<void> {
    if (this.closed) {
      this.onError(new Error("the ledger is closed; a write was refused"));
      return Promise.resolve();
    }
    return new Promise((done) => {
      this.queue.push({ write, done });
      if (this.queue.length >= MAX_BATCH) void this.flush();
      else this.timer ??= setTimeout(() => void this.flush(), FLUSH_MS);
    });
  }
}
