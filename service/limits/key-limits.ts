/**
 * What a key may use. Each limit is optional: a key's own value wins, and a key that sets
 * none of a limit gets the server's default for it (--default-rpm, ...).
 */
import type { Period } from "./periods.ts";

export interface KeyLimits {
  /** Requests per minute. */
  rpm: number | null;
  /** Tokens (input + output) per minute. */
  tpm: number | null;
  /** Requests in flight at once. */
  maxParallel: number | null;
  /** Spend per budgetPeriod, in micro-USD. */
  budgetMicroUsd: number | null;
  budgetPeriod: Period | null;
  /** Tokens (input + output) per quotaPeriod. */
  tokenQuota: number | null;
  quotaPeriod: Period | null;
}

export const NO_LIMITS: KeyLimits = {
  rpm: null, tpm: null, maxParallel: null, budgetMicroUsd: null, budgetPeriod: null, tokenQuota: null, quotaPeriod: null,
};

/** The period a budget or quota runs over when none is given. */
export const DEFAULT_PERIOD: Period = "month";

/** A key's limits over the defaults: field by field, the key's where it sets one. */
export function effectiveLimits(own: KeyLimits, defaults: KeyLimits): KeyLimits {
  const budgetMicroUsd = own.budgetMicroUsd ?? defaults.budgetMicroUsd;
  const tokenQuota = own.tokenQuota ?? defaults.tokenQuota;
  return {
    rpm: own.rpm ?? defaults.rpm,
    tpm: own.tpm ?? defaults.tpm,
    maxParallel: own.maxParallel ?? defaults.maxParallel,
    budgetMicroUsd,
    budgetPeriod: budgetMicroUsd === null ? null : (own.budgetMicroUsd !== null ? own.budgetPeriod : defaults.budgetPeriod) ?? DEFAULT_PERIOD,
    tokenQuota,
    quotaPeriod: tokenQuota === null ? null : (own.tokenQuota !== null ? own.quotaPeriod : defaults.quotaPeriod) ?? DEFAULT_PERIOD,
  };
}

export const hasAnyLimit = (limits: KeyLimits) =>
  limits.rpm !== null || limits.tpm !== null || limits.maxParallel !== null || limits.budgetMicroUsd !== null || limits.tokenQuota !== null;

/** Micro-USD as dollars for people: "$12.50", "$0.000150". */
export function usdText(microUsd: number): string {
  const usd = microUsd / 1e6;
  return Number.isInteger(microUsd / 10_000) ? `$${usd.toFixed(2)}` : `$${usd.toFixed(6)}`;
}
