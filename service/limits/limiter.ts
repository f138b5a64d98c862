/**
 * Enforces a request's limits at every level it has (its key's, and its team's when the key
 * belongs to one), kind by kind, around each request:
 * - admit(): at the start, one request from each level's RPM bucket and one slot of each
 *   level's max_parallel (all levels' slots in one transaction);
 * - reserveRun(): before each engine request runs, once its prompt is tokenized, its worst
 *   case: the prompt plus max_tokens from each level's TPM bucket (max_tokens as given; absent:
 *   the prompt alone, the rest charged at settlement), and against every budget and token
 *   quota of every level, the model's own ones included, the prompt at the input price plus
 *   every token the request may generate at the output price (max_tokens × n, or the context's
 *   remainder), all in one transaction (meters.ts);
 * - at settlement the reservations become what was used, in the ledger's transaction.
 * A refusal gives back what the request had taken, so a refused request costs nothing, and
 * names the level and the limit that refused it.
 */
import type { Settlement, Usage } from "../settlement.ts";
import type { PriceTier } from "../prices.ts";
import type { Alerts } from "./alerts.ts";
import { hasAnyLimit, usdText, type KeyLimits } from "./key-limits.ts";
import type { Hold, Meter, MeterChange, Meters } from "./meters.ts";
import { meterKind, meterModel, modelMeter, NO_MODEL_LIMITS, type ModelLimits } from "./model-limits.ts";
import { durationText, periodEndMs, periodStartMs, type Period } from "./periods.ts";
import { msUntil, type Bucket, type RateBuckets } from "./rate-buckets.ts";

export type LimitName = "rpm" | "tpm" | "max_parallel" | "budget" | "token_quota";

/** Where a limit is set: on the key, or on its team. */
export type LevelKind = "key" | "team";

/** A refusal: rate limits may be retried after `retryAfterMs`; a budget or quota (retryAfterMs null) may not. */
export class LimitExceeded extends Error {
  constructor(
    readonly limit: LimitName, message: string, readonly retryAfterMs: number | null, readonly headers: Record<string, string>,
    readonly level: LevelKind = "key", readonly model: string | null = null,
  ) {
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
  worstCaseAt: (model: string, promptTokens: number, outputTokens: number, atMs: number, tier: PriceTier) => Promise<number | null>;
  /** Hears each refusal (for metrics). */
  onRefused?: (limit: LimitName) => void;
}

/** One level's limits: a key's (its own over the defaults) or its team's. */
export interface LimitLevel {
  level: LevelKind;
  /** The owner of its meters and buckets: the key's id, or the team's. */
  id: string;
  name: string | null;
  limits: KeyLimits;
  modelLimits: ModelLimits;
}

/** Who a request is from, as the limiter needs it: its key's limits, and its team's. */
export interface LimitedKey {
  keyId: string;
  name: string | null;
  limits: KeyLimits;
  modelLimits?: ModelLimits;
  team?: { id: string; name: string; limits: KeyLimits; modelLimits: ModelLimits } | null;
}

/** A request's levels, the key's first. */
export function levelsOf(key: LimitedKey): LimitLevel[] {
  const levels: LimitLevel[] = [{ level: "key", id: key.keyId, name: key.name, limits: key.limits, modelLimits: key.modelLimits ?? NO_MODEL_LIMITS }];
  if (key.team) levels.push({ level: "team", id: key.team.id, name: key.team.name, limits: key.team.limits, modelLimits: key.team.modelLimits });
  return levels;
}

const levelHasLimits = (level: LimitLevel) => hasAnyLimit(level.limits) || Object.keys(level.modelLimits).length > 0;

/** A level's standing on one limit, for GET /v1/key. */
export interface LimitStatus {
  limit: number;
  remaining: number;
  /** When it is whole again: a bucket full, a period's start; null for max_parallel. */
  resetsAtMs: number | null;
  period?: Period;
  /** What settled requests used in the period (budgets and quotas): the same counter that is enforced. */
  used?: number;
  /** What requests in flight hold. */
  reserved?: number;
}

/** Where a level stands on each of its limits, and on each model's budget and quota. */
export interface LevelStatus {
  level: LevelKind;
  id: string;
  name: string | null;
  limits: KeyLimits;
  modelLimits: ModelLimits;
  status: Partial<Record<LimitName, LimitStatus>>;
  models: Record<string, Partial<Record<"budget" | "token_quota", LimitStatus>>>;
}

/** A hold, with what the messages and alerts need to name it. */
interface LevelHold {
  hold: Hold;
  level: LimitLevel;
  period: Period | null;
}

export class Limiter {
  constructor(private readonly options: LimiterOptions) {}

  /** Admits a request (null when neither its key nor its team has any limit); throws LimitExceeded. */
  async admit(key: LimitedKey, requestId: string, startedMs: number, tier: PriceTier = "standard"): Promise<LimitTicket | null> {
    const levels = levelsOf(key);
    if (!levels.some(levelHasLimits)) return null;
    const ticket = new LimitTicket(key, levels, requestId, startedMs, this.options, tier);
    await ticket.admit();
    return ticket;
  }

  /** Each level's standing, the key's first. */
  async status(key: LimitedKey, nowMs = Date.now()): Promise<LevelStatus[]> {
    return Promise.all(levelsOf(key).map((level) => this.levelStatus(level, nowMs)));
  }

  private async levelStatus(level: LimitLevel, nowMs: number): Promise<LevelStatus> {
    const { limits } = level;
    const status: LevelStatus["status"] = {};
    for (const [name, kind, perMinute] of [["rpm", "requests", limits.rpm], ["tpm", "tokens", limits.tpm]] as const) {
      if (perMinute === null) continue;
      const bucket: Bucket = { keyId: level.id, kind, perMinute };
      const current = await this.options.buckets.level(bucket);
      status[name] = { limit: perMinute, remaining: Math.max(0, Math.floor(current)), resetsAtMs: nowMs + Math.ceil(msUntil(bucket, current, perMinute)) };
    }
    if (limits.maxParallel !== null) {
      const state = await this.options.meters.state(level.id, "parallel", 0);
      status.max_parallel = { limit: limits.maxParallel, remaining: Math.max(0, limits.maxParallel - state.reserved), resetsAtMs: null };
    }
    const metered = async (meter: Meter, limit: number | null, period: Period | null): Promise<LimitStatus | null> => {
      if (limit === null || period === null) return null;
      const state = await this.options.meters.state(level.id, meter, periodStartMs(period, nowMs));
      return { limit, remaining: Math.max(0, limit - state.used - state.reserved), resetsAtMs: periodEndMs(period, nowMs), period, used: state.used, reserved: state.reserved };
    };
    const budget = await metered("usd", limits.budgetMicroUsd, limits.budgetPeriod);
    if (budget) status.budget = budget;
    const quota = await metered("tokens", limits.tokenQuota, limits.quotaPeriod);
    if (quota) status.token_quota = quota;
    const models: LevelStatus["models"] = {};
    for (const [model, limit] of Object.entries(level.modelLimits)) {
      const entry: LevelStatus["models"][string] = {};
      const modelBudget = await metered(modelMeter("usd", model), limit.budgetMicroUsd, limit.budgetPeriod);
      if (modelBudget) entry.budget = modelBudget;
      const modelQuota = await metered(modelMeter("tokens", model), limit.tokenQuota, limit.quotaPeriod);
      if (modelQuota) entry.token_quota = modelQuota;
      models[model] = entry;
    }
    return { level: level.level, id: level.id, name: level.name, limits, modelLimits: level.modelLimits, status, models };
  }
}

/** A bucket take, to give back if a later level refuses. */
interface Take {
  bucket: Bucket;
  amount: number;
}

export class LimitTicket {
  private readonly holds = new Map<string, LevelHold>();
  private readonly tpmTaken = new Map<string, number>();
  private rpmTaken: Take[] = [];
  /** Each bucket's level after this request's last take from it, by owner and kind. */
  private readonly bucketLevels = new Map<string, number>();

  constructor(
    private readonly key: LimitedKey, private readonly levels: readonly LimitLevel[], private readonly requestId: string,
    private readonly startedMs: number, private readonly options: LimiterOptions, private readonly tier: PriceTier = "standard",
  ) {}

  /**
   * OpenAI's x-ratelimit-* headers, for the buckets this request has, as they stand after its
   * takes: where both its key and its team limit a kind, the one with less left.
   */
  headers(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const kind of ["requests", "tokens"] as const) {
      let tightest: { perMinute: number; level: number; owner: string } | null = null;
      for (const level of this.levels) {
        const perMinute = kind === "requests" ? level.limits.rpm : level.limits.tpm;
        if (perMinute === null) continue;
        const current = this.bucketLevels.get(`${level.id}\u0000${kind}`) ?? perMinute;
        if (!tightest || current < tightest.level) tightest = { perMinute, level: current, owner: level.id };
      }
      if (!tightest) continue;
      out[`x-ratelimit-limit-${kind}`] = String(tightest.perMinute);
      out[`x-ratelimit-remaining-${kind}`] = String(Math.max(0, Math.floor(tightest.level)));
      out[`x-ratelimit-reset-${kind}`] = durationText(msUntil({ keyId: tightest.owner, kind, perMinute: tightest.perMinute }, tightest.level, tightest.perMinute));
    }
    return out;
  }

  async admit(): Promise<void> {
    for (const level of this.levels) {
      const { rpm } = level.limits;
      if (rpm === null) continue;
      const bucket: Bucket = { keyId: level.id, kind: "requests", perMinute: rpm };
      const took = await this.take(bucket, 1);
      if (!took.taken) {
        await this.giveBack();
        const waitMs = msUntil(bucket, took.level, 1);
        throw this.refusal("rpm", level, `Rate limit reached for requests per minute: the ${level.level} rpm of ${who(level)} is ${rpm}, and the next request is allowed in ${durationText(waitMs)}.`, waitMs);
      }
      this.rpmTaken.push({ bucket, amount: 1 });
    }
    const slots: LevelHold[] = this.levels.filter((level) => level.limits.maxParallel !== null).map((level) => ({
      hold: { keyId: level.id, meter: "parallel", periodStartMs: 0, amount: 1, limit: level.limits.maxParallel! }, level, period: null,
    }));
    if (slots.length === 0) return;
    const refused = await this.options.meters.reserve(this.requestId, slots.map((s) => s.hold));
    if (refused) {
      await this.giveBack();
      const level = slots.find((s) => s.hold.keyId === refused.hold.keyId)!.level;
      throw this.refusal("max_parallel", level, `Rate limit reached for requests in flight: the ${level.level} max_parallel of ${who(level)} is ${refused.hold.limit} at once, and ${refused.reserved} are running; retry when one finishes.`, PARALLEL_RETRY_MS);
    }
    for (const slot of slots) this.add(slot);
  }

  /**
   * Before an engine request runs: its worst case against each level's TPM bucket, budgets and quotas.
   * @param model the model that serves it (its per-model budgets apply).
   * @param worstOutputTokens every token it may generate (max_tokens × n, or the context's remainder × n).
   * @param statedOutputTokens max_tokens × n as the client gave it (0 when absent), for the TPM estimate.
   */
  async reserveRun(model: string, promptTokens: number, worstOutputTokens: number, statedOutputTokens: number): Promise<void> {
    const tpm = promptTokens + statedOutputTokens;
    const tpmTakes: Take[] = [];
    const undoTpm = async () => {
      for (const take of tpmTakes) {
        this.tpmTaken.set(take.bucket.keyId, (this.tpmTaken.get(take.bucket.keyId) ?? 0) - take.amount);
        await this.options.buckets.adjust(take.bucket, take.amount);
      }
    };
    for (const level of this.levels) {
      const perMinute = level.limits.tpm;
      if (perMinute === null) continue;
      if (tpm > perMinute) {
        await undoTpm();
        throw this.refusal("tpm", level, `Request too large for tokens per minute: the ${level.level} tpm of ${who(level)} is ${perMinute}, and this request asks for ${tpm} (${promptTokens} prompt + ${statedOutputTokens} max_tokens); send a shorter prompt or a smaller max_tokens.`, null);
      }
      const bucket: Bucket = { keyId: level.id, kind: "tokens", perMinute };
      const took = await this.take(bucket, tpm);
      if (!took.taken) {
        await undoTpm();
        const waitMs = msUntil(bucket, took.level, tpm);
        throw this.refusal("tpm", level, `Rate limit reached for tokens per minute: the ${level.level} tpm of ${who(level)} is ${perMinute}, ${Math.max(0, Math.floor(took.level))} remain and this request needs ${tpm}; retry in ${durationText(waitMs)}.`, waitMs);
      }
      tpmTakes.push({ bucket, amount: tpm });
      this.tpmTaken.set(level.id, (this.tpmTaken.get(level.id) ?? 0) + tpm);
    }
    const holds: LevelHold[] = [];
    let worst: number | null | undefined;
    const worstCost = async () => (worst === undefined ? (worst = await this.options.worstCaseAt(model, promptTokens, worstOutputTokens, this.startedMs, this.tier)) : worst);
    const meterHolds = async (level: LimitLevel, usd: Meter, tokens: Meter, limits: Pick<KeyLimits, "budgetMicroUsd" | "budgetPeriod" | "tokenQuota" | "quotaPeriod">) => {
      if (limits.budgetMicroUsd !== null && limits.budgetPeriod !== null) {
        const amount = await worstCost();
        if (amount !== null) holds.push({ hold: { keyId: level.id, meter: usd, periodStartMs: periodStartMs(limits.budgetPeriod, this.startedMs), amount, limit: limits.budgetMicroUsd }, level, period: limits.budgetPeriod });
      }
      if (limits.tokenQuota !== null && limits.quotaPeriod !== null) {
        holds.push({ hold: { keyId: level.id, meter: tokens, periodStartMs: periodStartMs(limits.quotaPeriod, this.startedMs), amount: promptTokens + worstOutputTokens, limit: limits.tokenQuota }, level, period: limits.quotaPeriod });
      }
    };
    for (const level of this.levels) {
      await meterHolds(level, "usd", "tokens", level.limits);
      const modelLimit = level.modelLimits[model];
      if (modelLimit) await meterHolds(level, modelMeter("usd", model), modelMeter("tokens", model), modelLimit);
    }
    if (holds.length === 0) return;
    const refused = await this.options.meters.reserve(this.requestId, holds.map((h) => h.hold));
    if (refused) {
      await undoTpm();
      await this.giveBack();
      const held = holds.find((h) => h.hold.keyId === refused.hold.keyId && h.hold.meter === refused.hold.meter)!;
      throw this.refusal(meterKind(held.hold.meter) === "usd" ? "budget" : "token_quota", held.level, this.quotaMessage(held, refused.used, refused.reserved), null, meterModel(held.hold.meter));
    }
    for (const hold of holds) this.add(hold);
  }

  /** What settling with this usage does to the meters: each reservation replaced by what was used. */
  changes(usage: Usage, costMicroUsd: number): MeterChange[] {
    return [...this.holds.values()].map(({ hold }) => {
      const kind = meterKind(hold.meter);
      return {
        keyId: hold.keyId, meter: hold.meter, periodStartMs: hold.periodStartMs, reservedDelta: -hold.amount,
        usedDelta: kind === "usd" ? costMicroUsd : kind === "tokens" ? usage.promptTokens + usage.completionTokens : 0,
      };
    });
  }

  get holdsAny(): boolean {
    return this.holds.size > 0;
  }

  /** After the settlement is committed: each TPM bucket charged what was used, and alerts for what it spent, per level. */
  async settled(settlement: Settlement): Promise<void> {
    const used = settlement.usage.promptTokens + settlement.usage.completionTokens;
    for (const level of this.levels) {
      const perMinute = level.limits.tpm;
      const taken = this.tpmTaken.get(level.id) ?? 0;
      if (perMinute !== null && taken + used > 0) await this.options.buckets.adjust({ keyId: level.id, kind: "tokens", perMinute }, taken - used);
    }
    const alerts = this.options.alerts;
    if (!alerts) return;
    for (const { hold, level, period } of this.holds.values()) {
      if (period === null) continue;
      const state = await this.options.meters.state(hold.keyId, hold.meter, hold.periodStartMs);
      await alerts.check({
        keyId: hold.keyId, keyName: level.name, level: level.level, keyOfTeam: level.level === "team" ? null : this.key.team?.id ?? null,
        meter: hold.meter as Exclude<Meter, "parallel">, period, periodStartMs: hold.periodStartMs,
        periodEndMs: periodEndMs(period, hold.periodStartMs), used: state.used, limit: hold.limit,
      });
    }
  }

  private async take(bucket: Bucket, amount: number) {
    const took = await this.options.buckets.take(bucket, amount);
    this.bucketLevels.set(`${bucket.keyId}\u0000${bucket.kind}`, took.level);
    return took;
  }

  private add(held: LevelHold): void {
    const id = `${held.hold.keyId}\u0000${held.hold.meter}`;
    const current = this.holds.get(id);
    this.holds.set(id, current ? { ...current, hold: { ...current.hold, amount: current.hold.amount + held.hold.amount } } : held);
  }

  /** A refused request gives back its requests from the RPM buckets (its earlier holds go at settlement). */
  private async giveBack(): Promise<void> {
    const taken = this.rpmTaken;
    this.rpmTaken = [];
    for (const { bucket, amount } of taken) {
      await this.options.buckets.adjust(bucket, amount);
      const id = `${bucket.keyId}\u0000${bucket.kind}`;
      this.bucketLevels.set(id, (this.bucketLevels.get(id) ?? 0) + amount);
    }
  }

  private refusal(limit: LimitName, level: LimitLevel, message: string, retryAfterMs: number | null, model: string | null = null): LimitExceeded {
    this.options.onRefused?.(limit);
    return new LimitExceeded(limit, message, retryAfterMs, this.headers(), level.level, model);
  }

  /** `The team budget_usd of team "search" is exhausted (resets …): …`, naming the model's own budget where that refused. */
  private quotaMessage({ hold, level, period }: LevelHold, used: number, reserved: number): string {
    const resets = new Date(periodEndMs(period!, this.startedMs)).toISOString();
    const model = meterModel(hold.meter);
    const usd = meterKind(hold.meter) === "usd";
    const field = `${model === null ? "" : `model_budgets["${model}"].`}${usd ? "budget_usd" : "token_quota"}`;
    const state = used + reserved >= hold.limit ? "is exhausted" : "has no room for this request";
    const amount = (n: number) => (usd ? usdText(n) : `${n} tokens`);
    return `You exceeded your ${usd ? "budget" : "token quota"}: the ${level.level} ${field} of ${who(level)} ${state} (resets at ${resets}). ` +
      `It allows ${amount(hold.limit)} per ${period}${model === null ? "" : ` on ${model}`}; ${amount(used)} ${usd ? "is spent" : "are used"} and ${amount(reserved)} reserved by requests in flight, ` +
      `and this request could ${usd ? "cost" : "use"} up to ${amount(hold.amount)}. A smaller max_tokens reserves less.`;
  }
}

const who = (level: LimitLevel) => (level.name ? `${level.level} "${level.name}"` : `${level.level} ${level.id}`);
