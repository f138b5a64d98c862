/**
 * What keys and teams both have, as their tables hold it: limit columns, per-model limits,
 * priority and data residency, read and written in one place.
 */
import type { KeyLimits } from "./limits/key-limits.ts";
import { parseModelLimits } from "./limits/model-limits.ts";
import type { Period } from "./limits/periods.ts";
import type { OwnerColumns } from "./store/database.ts";

/** The scheduling tier a key's requests get (the engine's priority tiers). */
export type KeyPriority = "interactive" | "standard" | "batch";
export const KEY_PRIORITIES: readonly KeyPriority[] = ["interactive", "standard", "batch"];

/** local: a key's (or team's) requests are never sent to an upstream provider; any: they may be. */
export type DataResidency = "any" | "local";
export const DATA_RESIDENCIES: readonly DataResidency[] = ["any", "local"];

/** What keys and teams both have, read from their columns. */
export function ownedColumns(row: Pick<OwnerColumns, "priority" | "model_limits" | "data_residency"> & LimitColumns) {
  return {
    priority: (row.priority as KeyPriority | null) ?? "standard", ownPriority: row.priority !== null,
    limits: {
      rpm: numberOrNull(row.rpm), tpm: numberOrNull(row.tpm), maxParallel: numberOrNull(row.max_parallel),
      budgetMicroUsd: numberOrNull(row.budget_micro_usd), budgetPeriod: row.budget_period as Period | null,
      tokenQuota: numberOrNull(row.token_quota), quotaPeriod: row.quota_period as Period | null,
    },
    modelLimits: parseModelLimits(row.model_limits ?? null),
    dataResidency: (row.data_residency ?? "any") as DataResidency,
  };
}

export const numberOrNull = (value: number | null | undefined) => (value === null || value === undefined ? null : Number(value));

/** "any" is stored as null. */
export const residencyColumn = (value: DataResidency | null | undefined) => (value === "local" ? "local" : null);

export type LimitColumns = Pick<OwnerColumns, "rpm" | "tpm" | "max_parallel" | "budget_micro_usd" | "budget_period" | "token_quota" | "quota_period">;

/** The limit columns a (partial) set of limits writes; undefined: leave alone. */
export function limitColumns(limits: Partial<KeyLimits>): { [C in keyof LimitColumns]: LimitColumns[C] | undefined } {
  return {
    rpm: limits.rpm, tpm: limits.tpm, max_parallel: limits.maxParallel, budget_micro_usd: limits.budgetMicroUsd,
    budget_period: limits.budgetPeriod, token_quota: limits.tokenQuota, quota_period: limits.quotaPeriod,
  };
}
