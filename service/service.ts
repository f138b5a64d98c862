/**
 * The service layer as a server starts it: the store, its keys and its ledger, with the
 * ledger's crash recovery done before the first request.
 */
import { hostname } from "node:os";
import { KeyStore, type ApiKey } from "./keys.ts";
import { TeamStore, type Team } from "./teams.ts";
import { Ledger, type LedgerHealth } from "./ledger.ts";
import { Alerts, type AlertOptions } from "./limits/alerts.ts";
import { NO_LIMITS, effectiveLimits, type KeyLimits } from "./limits/key-limits.ts";
import { Limiter, type LimitName, type LimitedKey } from "./limits/limiter.ts";
import { Meters } from "./limits/meters.ts";
import { MemoryBuckets, PostgresBuckets } from "./limits/rate-buckets.ts";
import { PriceBook, type Price, type PriceTier } from "./prices.ts";
import type { Settlement } from "./settlement.ts";
import { openStore, type Store, type StoreOptions } from "./store/open-store.ts";

export interface ServiceOptions extends StoreOptions {
  /** --db URL. */
  dbUrl: string;
  /** Meter requests into the ledger (off with --no-ledger). */
  ledger?: boolean;
  /** This replica's name in a fleet sharing one database (default: the host name). */
  replica?: string;
  onLedgerError?: (err: unknown) => void;
  /** Hears the ledger stop committing (its store unreachable or full) and start again. */
  onLedgerHealth?: (health: LedgerHealth) => void;
  /** --batch-discount: the batch tier's discount for prices that set none (default 50%). */
  batchDiscountPercent?: number;
  /** --price: prices to put in effect now (unless the same price already is). */
  prices?: Omit<Price, "effectiveMs">[];
  /** --default-rpm and the rest: the limits of keys that set none of their own. */
  limitDefaults?: KeyLimits;
  /** --alert-thresholds, --alert-webhook, --alert-webhook-secret, and who hears each alert. */
  alerts?: AlertOptions;
  /** Hears each request a key's limit refuses. */
  onLimitRefused?: (limit: LimitName) => void;
  /** Hears failures off the request path (rate buckets, alerts after a settlement). */
  onLimitError?: (err: unknown) => void;
}

export interface Service {
  store: Store;
  keys: KeyStore;
  teams: TeamStore;
  ledger: Ledger | null;
  prices: PriceBook;
  limiter: Limiter;
  /** Rows a crash of this replica had left in flight, now interrupted. */
  numInterrupted: number;
  /** Limit reservations a crash of this replica had left, now given back. */
  numReleased: number;
  /**
   * The limits a caller's requests run under: a stored key's own over its team's member budget
   * and the defaults, and its team's; the defaults for other keys.
   */
  limitsOf(keyId: string, key: (ApiKey & { team?: Team | null }) | null): LimitedKey;
  /** Gives back the holds a stopped replica's requests left under an id prefix (a batch taken over). */
  releaseHoldsOf(requestIdPrefix: string, replica: string): Promise<number>;
  /** Settles a request: its ledger row and its reservations, in one transaction; resolves once committed. */
  settle(settlement: Settlement): Promise<void>;
  /** Flushes the ledger (retrying an unavailable store for at most `ledgerTimeoutMs`) and closes the store; returns the ledger rows that could not be written. */
  close(ledgerTimeoutMs?: number): Promise<number>;
}

export async function startService(options: ServiceOptions): Promise<Service> {
  const store = await openStore(options.dbUrl, options);
  const teams = new TeamStore(store.db);
  const keys = new KeyStore(store.db, teams);
  const prices = new PriceBook(store.db, options.batchDiscountPercent);
  for (const price of options.prices ?? []) await prices.set(price);
  const replica = options.replica ?? hostname();
  const ledger = options.ledger === false ? null : new Ledger(store.db, replica, { onError: options.onLedgerError, onHealth: options.onLedgerHealth }, (model, usage, atMs, tier) => prices.costAt(model, usage, atMs, tier));
  const numInterrupted = ledger ? await ledger.markInterrupted() : 0;
  const meters = new Meters(store.db, replica);
  const numReleased = await meters.releaseCrashed();
  const alerts = new Alerts(store.db, replica, options.alerts);
  await alerts.resumeDeliveries();
  const worstCaseAt = (model: string, promptTokens: number, outputTokens: number, atMs: number, tier: PriceTier) => prices.worstCaseAt(model, promptTokens, outputTokens, atMs, tier);
  const limiter = new Limiter({ buckets: store.kind === "postgres" ? new PostgresBuckets(store.db) : new MemoryBuckets(), meters, alerts, worstCaseAt, onRefused: options.onLimitRefused });
  const defaults = options.limitDefaults ?? NO_LIMITS;
  const onLimitError = options.onLimitError ?? (() => {});
  return {
    store, keys, teams, ledger, prices, limiter, numInterrupted, numReleased,
    releaseHoldsOf: (prefix, replica) => meters.releaseHoldsOf(prefix, replica),
    limitsOf: (keyId, key) => {
      const team = key?.team ?? null;
      const member = team?.memberBudget;
      const keyDefaults = member ? { ...defaults, budgetMicroUsd: member.budgetMicroUsd, budgetPeriod: member.budgetPeriod } : defaults;
      return {
        keyId, name: key?.name ?? null, limits: effectiveLimits(key?.limits ?? NO_LIMITS, keyDefaults), modelLimits: key?.modelLimits,
        // NOTE: a team's own limits, their periods filled (month where it set none); server defaults are for keys.
        team: team && { id: team.id, name: team.name, limits: effectiveLimits(team.limits, NO_LIMITS), modelLimits: team.modelLimits },
      };
    },
    async settle(settlement) {
      const { reservations } = settlement;
      if (ledger) {
        await ledger.settle(settlement);
      } else if (reservations?.holdsAny) {
        const cost = await prices.costAt(settlement.model, settlement.usage, settlement.startedMs, settlement.tier ?? "standard");
        await meters.settle([settlement.id], reservations.changes(settlement.usage, cost ?? 0));
      }
      // NOTE: off the request path: the response's last bytes need not wait for buckets and alerts.
      if (reservations) void reservations.settled(settlement).catch(onLimitError);
    },
    async close(ledgerTimeoutMs) {
      alerts.close();
      const lost = (await ledger?.close(ledgerTimeoutMs)) ?? 0;
      await store.close();
      return lost;
    },
  };
}
