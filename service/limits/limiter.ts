/**
 * Enforces a key's limits around each request:
 * - admit(): at the start, one request from the RPM bucket and one slot of max_parallel;
 * - reserveRun(): before each engine request runs, once its prompt is tokenized, its worst
 *   case: the prompt plus max_tokens from the TPM bucket (max_tokens as given; absent: the
 *   prompt alone, the rest charged at settlement), and against the budget and the token quota,
 *   the prompt at the input price plus every token the request may generate at the output
 *   price (max_tokens × n, or the context's remainder);
 * - at settlement the reservations become what was used, in the ledger's transaction.
 * A refusal gives back what the request had taken, so a refused request costs nothing.
 */
import type { Settlement, Usage } from "../settlement.ts";
import type { Alerts } from "./alerts.ts";
import { hasAnyLimit, usdText, type KeyLimits } from "./key-limits.ts";
import type { Hold, Meter, MeterChange, Meters } from "./meters.ts";
import { durationText, periodEndMs, periodStartMs, type Period } from "./periods.ts";
import { msUntil, type Bucket, type RateBuckets } from "./rate-buckets.ts";

export type LimitName = "rpm" | "tpm" | "max_parallel" | "budget" | "token_quota";

/** A refusal: rate limits may be retried after `retryAfterMs`; a budget or quota (retryAfterMs null) may not. */
export class LimitExceeded extends Error {
  constructor(readonly limit: LimitName, message: string, readonly retryAfterMs: number | null, readonly headers: Record<string, string>) {
    super(message);
    this.name = "LimitExceeded";
  }

  get retryable(): boolean {
    return this.retryAfterMs !== null;
  }
}

/** When a parallel slot frees is unknown; this is the hint a client gets. */
const PARALLEL_RETRY_MS = 1000;

export interface LimiterOptions {
  buckets: RateBuckets;
  meters: Meters;
  alerts?: Alerts | null;
  /** The worst-case hold for a request (PriceBook.worstCaseAt); null when the model has no price. */
  worstCaseAt: (model: string, promptTokens: number, outputTokens: number, atMs: number) => Promise<number | null>;
  /** Hears each refusal (for metrics). */
  onRefused?: (limit: LimitName) => void;
}

/** Who a request is from, as the limiter needs it. */
export interface LimitedKey {
  keyId: string;
  name: string | null;
  limits: KeyLimits;
}

/** A key's standing on one limit, for GET /v1/key. */
export interface LimitStatus {
  limit: number;
  remaining: number;
  /** When it is whole again: a bucket full, a period's start; null for max_parallel. */
  resetsAtMs: number | null;
  period?: Period;
}

export class Limiter {
  constructor(private readonly options: LimiterOptions) {}

  /** Admits a request (null when its key has no limits); throws LimitExceeded. */
  async admit(key: LimitedKey, requestId: string, startedMs: number): Promise<LimitTicket | null> {
    if (!hasAnyLimit(key.limits)) return null;
    const ticket = new LimitTicket(key, requestId, startedMs, this.options);
    await ticket.admit();
    return ticket;
  }

  async status(key: LimitedKey, nowMs = Date.now()): Promise<Partial<Record<LimitName, LimitStatus>>> {
    const { limits } = key;
    const out: Partial<Record<LimitName, LimitStatus>> = {};
    for (const [name, kind, perMinute] of [["rpm", "requests", limits.rpm], ["tpm", "tokens", limits.tpm]] as const) {
      if (perMinute === null) continue;
      const bucket: Bucket = { keyId: key.keyId, kind, perMinute };
      const level = await this.options.buckets.level(bucket);
      out[name] = { limit: perMinute, remaining: Math.max(0, Math.floor(level)), resetsAtMs: nowMs + Math.ceil(msUntil(bucket, level, perMinute)) };
    }
    if (limits.maxParallel !== null) {
      const state = await this.options.meters.state(key.keyId, "parallel", 0);
      out.max_parallel = { limit: limits.maxParallel, remaining: Math.max(0, limits.maxParallel - state.reserved), resetsAtMs: null };
    }
    for (const [name, meter, limit, period] of [["budget", "usd", limits.budgetMicroUsd, limits.budgetPeriod], ["token_quota", "tokens", limits.tokenQuota, limits.quotaPeriod]] as const) {
      if (limit === null || period === null) continue;
      const state = await this.options.meters.state(key.keyId, meter, periodStartMs(period, nowMs));
      out[name] = { limit, remaining: Math.max(0, limit - state.used - state.reserved), resetsAtMs: periodEndMs(period, nowMs), period };
    }
    return out;
  }
}

export class LimitTicket {
  private readonly holds = new Map<Meter, Hold>();
  private tpmTaken = 0;
  private rpmTaken = false;
  private readonly levels: Partial<Record<"requests" | "tokens", number>> = {};

  constructor(
    private readonly key: LimitedKey, private readonly requestId: string, private readonly startedMs: number, private readonly options: LimiterOptions,
  ) {}

  /** OpenAI's x-ratelimit-* headers, for the buckets this key has, as they stand after this request's takes. */
  headers(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [kind, perMinute] of [["requests", this.key.limits.rpm], ["tokens", this.key.limits.tpm]] as const) {
      if (perMinute === null) continue;
      const level = this.levels[kind] ?? perMinute;
      out[`x-ratelimit-limit-${kind}`] = String(perMinute);
      out[`x-ratelimit-remaining-${kind}`] = String(Math.max(0, Math.floor(level)));
      out[`x-ratelimit-reset-${kind}`] = durationText(msUntil({ keyId: this.key.keyId, kind, perMinute }, level, perMinute));
    }
    return out;
  }

  async admit(): Promise<void> {
    const { limits } = this.key;
    if (limits.rpm !== null) {
      const bucket = this.bucket("requests", limits.rpm);
      const took = await this.options.buckets.take(bucket, 1);
      this.levels.requests = took.level;
      if (!took.taken) {
        const waitMs = msUntil(bucket, took.level, 1);
        throw this.refusal("rpm", `Rate limit reached for requests per minute: the limit is ${limits.rpm}, and the next request is allowed in ${durationText(waitMs)}.`, waitMs);
      }
      this.rpmTaken = true;
    }
    if (limits.maxParallel !== null) {
      const refused = await this.options.meters.reserve(this.requestId, [{ keyId: this.key.keyId, meter: "parallel", periodStartMs: 0, amount: 1, limit: limits.maxParallel }]);
      if (refused) {
        await this.giveBack();
        throw this.refusal("max_parallel", `Rate limit reached for requests in flight: the limit is ${limits.maxParallel} at once, and ${refused.reserved} are running; retry when one finishes.`, PARALLEL_RETRY_MS);
      }
      this.add({ keyId: this.key.keyId, meter: "parallel", periodStartMs: 0, amount: 1, limit: limits.maxParallel });
    }
  }

  /**
   * Before an engine request runs: its worst case against the TPM bucket, the budget and the quota.
   * @param worstOutputTokens every token it may generate (max_tokens × n, or the context's remainder × n).
   * @param statedOutputTokens max_tokens × n as the client gave it (0 when absent), for the TPM estimate.
   */
  async reserveRun(model: string, promptTokens: number, worstOutputTokens: number, statedOutputTokens: number): Promise<void> {
    const { limits, keyId } = this.key;
    let tpm = 0;
    if (limits.tpm !== null) {
      const bucket = this.bucket("tokens", limits.tpm);
      tpm = promptTokens + statedOutputTokens;
      if (tpm > limits.tpm) {
        throw this.refusal("tpm", `Request too large for tokens per minute: the limit is ${limits.tpm}, and this request asks for ${tpm} (${promptTokens} prompt + ${statedOutputTokens} max_tokens); send a shorter prompt or a smaller max_tokens.`, null);
      }
      const took = await this.options.buckets.take(bucket, tpm);
      this.levels.tokens = took.level;
      if (!took.taken) {
        const waitMs = msUntil(bucket, took.level, tpm);
        throw this.refusal("tpm", `Rate limit reached for tokens per minute: the limit is ${limits.tpm}, ${Math.max(0, Math.floor(took.level))} remain and this request needs ${tpm}; retry in ${durationText(waitMs)}.`, waitMs);
      }
      this.tpmTaken += tpm;
    }
    const holds: Hold[] = [];
    if (limits.budgetMicroUsd !== null && limits.budgetPeriod !== null) {
      const worst = await this.options.worstCaseAt(model, promptTokens, worstOutputTokens, this.startedMs);
      if (worst !== null) holds.push({ keyId, meter: "usd", periodStartMs: periodStartMs(limits.budgetPeriod, this.startedMs), amount: worst, limit: limits.budgetMicroUsd });
    }
    if (limits.tokenQuota !== null && limits.quotaPeriod !== null) {
      holds.push({ keyId, meter: "tokens", periodStartMs: periodStartMs(limits.quotaPeriod, this.startedMs), amount: promptTokens + worstOutputTokens, limit: limits.tokenQuota });
    }
    if (holds.length === 0) return;
    const refused = await this.options.meters.reserve(this.requestId, holds);
    if (refused) {
      if (tpm > 0) {
        this.tpmTaken -= tpm;
        await this.options.buckets.adjust(this.bucket("tokens", limits.tpm!), tpm);
      }
      await this.giveBack();
      throw this.refusal(refused.hold.meter === "usd" ? "budget" : "token_quota", this.quotaMessage(refused.hold, refused.used, refused.reserved), null);
    }
    for (const hold of holds) this.add(hold);
  }

  /** What settling with this usage does to the meters: each reservation replaced by what was used. */
  changes(usage: Usage, costMicroUsd: number): MeterChange[] {
    return [...this.holds.values()].map((hold) => ({
      keyId: hold.keyId, meter: hold.meter, periodStartMs: hold.periodStartMs, reservedDelta: -hold.amount,
      usedDelta: hold.meter === "usd" ? costMicroUsd : hold.meter === "tokens" ? usage.promptTokens + usage.completionTokens : 0,
    }));
  }

  get holdsAny(): boolean {
    return this.holds.size > 0;
  }

  /** After the settlement is committed: the TPM bucket charged what was used, and alerts for what it spent. */
  async settled(settlement: Settlement): Promise<void> {
    const { limits } = this.key;
    if (limits.tpm !== null && this.tpmTaken + (settlement.usage.promptTokens + settlement.usage.completionTokens) > 0) {
      await this.options.buckets.adjust(this.bucket("tokens", limits.tpm), this.tpmTaken - (settlement.usage.promptTokens + settlement.usage.completionTokens));
    }
    const alerts = this.options.alerts;
    if (!alerts) return;
    for (const hold of this.holds.values()) {
      if (hold.meter === "parallel") continue;
      const period = (hold.meter === "usd" ? limits.budgetPeriod : limits.quotaPeriod)!;
      const state = await this.options.meters.state(hold.keyId, hold.meter, hold.periodStartMs);
      await alerts.check({
        keyId: hold.keyId, keyName: this.key.name, meter: hold.meter, period, periodStartMs: hold.periodStartMs,
        periodEndMs: periodEndMs(period, hold.periodStartMs), used: state.used, limit: hold.limit,
      });
    }
  }

  private add(hold: Hold): void {
    const held = this.holds.get(hold.meter);
    this.holds.set(hold.meter, held ? { ...held, amount: held.amount + hold.amount } : hold);
  }

  /** A refused request gives back its request from the RPM bucket (its earlier holds go at settlement). */
  private async giveBack(): Promise<void> {
    if (!this.rpmTaken) return;
    this.rpmTaken = false;
    await this.options.buckets.adjust(this.bucket("requests", this.key.limits.rpm!), 1);
    this.levels.requests = (this.levels.requests ?? 0) + 1;
  }

  private bucket(kind: "requests" | "tokens", perMinute: number): Bucket {
    return { keyId: this.key.keyId, kind, perMinute };
  }

  private refusal(limit: LimitName, message: string, retryAfterMs: number | null): LimitExceeded {
    this.options.onRefused?.(limit);
    return new LimitExceeded(limit, message, retryAfterMs, this.headers());
  }

  private quotaMessage(hold: Hold, used: number, reserved: number): string {
    const period = (hold.meter === "usd" ? this.key.limits.budgetPeriod : this.key.limits.quotaPeriod)!;
    const resets = new Date(periodEndMs(period, this.startedMs)).toISOString();
    const who = this.key.name ? `key "${this.key.name}"` : `key ${this.key.keyId}`;
    if (hold.meter === "usd") {
      return `You exceeded your budget: ${who} may spend ${usdText(hold.limit)} per ${period}; ${usdText(used)} is spent and ${usdText(reserved)} reserved by requests in flight, ` +
        `and this request could cost up to ${usdText(hold.amount)}. The budget resets at ${resets}; a smaller max_tokens reserves less.`;
    }
    return `You exceeded your token quota: ${who} may use ${hold.limit} tokens per ${period}; ${used} are used and ${reserved} reserved by requests in flight, ` +
      `and this request could use up to ${hold.amount}. The quota resets at ${resets}; a smaller max_tokens reserves less.`;
  }
}
