/** How keys' and teams' limits read in the API: the admin API's and GET /v1/key's field names. */
import type { KeyLimits } from "../../service/limits/key-limits.ts";
import type { ModelLimits } from "../../service/limits/model-limits.ts";

/** A key's limits under the admin API's names (budget in USD). */
export function limitFields(limits: KeyLimits) {
  return {
    rpm: limits.rpm, tpm: limits.tpm, max_parallel: limits.maxParallel,
    budget_usd: limits.budgetMicroUsd === null ? null : limits.budgetMicroUsd / 1e6, budget_period: limits.budgetPeriod,
    token_quota: limits.tokenQuota, quota_period: limits.quotaPeriod,
  };
}

/** Per-model budgets and quotas under the API's names: {"MODEL": {"budget_usd": 50, "budget_period": "month", ...}}. */
export function modelLimitsBody(limits: ModelLimits) {
  return Object.fromEntries(Object.entries(limits).map(([model, limit]) => [model, Object.fromEntries(Object.entries({
    budget_usd: limit.budgetMicroUsd === null ? null : limit.budgetMicroUsd / 1e6, budget_period: limit.budgetPeriod,
    token_quota: limit.tokenQuota, quota_period: limit.quotaPeriod,
  }).filter(([, v]) => v !== null))]));
}
