/**
 * The usage ledger: one row per request, keyed by the server's own id for it. A request is
 * written `in_flight` when admitted and replaced by its final row when settled, so a crash
 * leaves `in_flight` rows, which the next start of the same replica marks `interrupted`.
 *
 * Writes stay off the request path: they are queued and flushed together in one transaction
 * every FLUSH_MS (or at MAX_BATCH rows), and close() flushes what is left, so a SIGTERM loses
 * nothing. The final write is an upsert, so settling twice leaves one row.
 */
import type { Kysely, Transaction } from "kysely";
import { applyMeterChanges, type MeterChange } from "./limits/meters.ts";
import { costMicroUsd, type Price } from "./prices.ts";
import type { Admission, Outcome, Settlement } from "./settlement.ts";
import type { Database, LedgerStatus, UsageLedgerTable } from "./store/database.ts";

export const FLUSH_MS = 10;
export const MAX_BATCH = 256;

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
   * @param priceAt the price in effect for a model at a time, for each row's cost; none: cost 0.
   */
  constructor(
    private readonly db: Kysely<Database>, readonly replica: string, private readonly onError: (err: unknown) => void = () => {},
    private readonly priceAt: (model: string, atMs: number) => Promise<Price | null> = async () => null,
  ) {}

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
      ttft_ms: settlement.ttftMs, replica: this.replica,
    };
    return this.enqueue(async () => {
      // NOTE: looked up before the batch's transaction: SQLite has one connection, which the transaction holds.
      const price = await this.priceAt(settlement.model, settlement.startedMs);
      const priced = { ...row, cost_micro_usd: price ? costMicroUsd(usage, price) : 0 };
      const { request_id: _id, ...final } = priced;
      const reservations = settlement.reservations;
      return {
        run: (trx) => trx.insertInto("usage_ledger").values(priced).onConflict((oc) => oc.column("request_id").doUpdateSet(final)).execute(),
        settles: reservations?.holdsAny ? { requestId: settlement.id, changes: reservations.changes(usage, priced.cost_micro_usd) } : undefined,
      };
    });
  }

  /** Writes everything queued so far. */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) return this.flushing;
    this.flushing = this.flushing.then(async () => {
      const prepared: Prepared[] = [];
      for (const { write } of batch) prepared.push(await write());
      const settles = prepared.flatMap((p) => (p.settles ? [p.settles] : []));
      await this.db.transaction().execute(async (trx) => {
        for (const { run } of prepared) await run(trx);
        if (settles.length > 0) await applyMeterChanges(trx, settles.map((s) => s.requestId), settles.flatMap((s) => s.changes));
      });
    }).then(() => {
      this.numWritten += batch.length;
      this.numBatches++;
    }, (err: unknown) => this.onError(err)).finally(() => {
      for (const { done } of batch) done();
    });
    return this.flushing;
  }

  /** Flushes what is queued; later writes are refused. */
  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
  }

  /** Sums over the rows, for one key or all, of requests started at or after sinceMs. */
  async totals(keyId?: string, sinceMs?: number): Promise<LedgerTotals> {
    let query = this.db.selectFrom("usage_ledger").select((eb) => [
      eb.fn.countAll<number>().as("numRequests"),
      eb.fn.coalesce(eb.fn.sum<number>("uncached_input_tokens"), eb.lit(0)).as("uncachedInputTokens"),
      eb.fn.coalesce(eb.fn.sum<number>("cached_input_tokens"), eb.lit(0)).as("cachedInputTokens"),
      eb.fn.coalesce(eb.fn.sum<number>("output_tokens"), eb.lit(0)).as("outputTokens"),
      eb.fn.coalesce(eb.fn.sum<number>("cost_micro_usd"), eb.lit(0)).as("costMicroUsd"),
    ]);
    if (keyId !== undefined) query = query.where("key_id", "=", keyId);
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
