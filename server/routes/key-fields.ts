/** How keys' limits read in the API: the admin API's and GET /v1/key's field names. */
import type { KeyLimits } from "../../service/limits/key-limits.ts";

/** A key's limits under the admin API's names (budget in USD). */
export function limitFields(limits: KeyLimits) {
  return {
    rpm: limits.rpm, tpm: limits.tpm, max_parallel: limits.maxParallel,
    budget_usd: limits.budgetMicroUsd === null ? null : limits.budgetMicroUsd / 1e6, budget_period: limits.budgetPeriod,
    token_quota: limits.tokenQuota, quota_period: limits.quotaPeriod,
  };
}
