/**
 * How keys' and teams' limits read and are written in the API: the admin API's and GET
 * /v1/key's field names, and the schemas the admin API parses them with.
 */
import { z } from "zod";
import { DEFAULT_PERIOD, type KeyLimits } from "../../service/limits/key-limits.ts";
import type { ModelLimits } from "../../service/limits/model-limits.ts";
import { PERIODS, type Period } from "../../service/limits/periods.ts";
import { DATA_RESIDENCIES, KEY_PRIORITIES, type DataResidency, type KeyPriority } from "../../service/owner-columns.ts";
import { microUsdPerMtok } from "../../service/prices.ts";

/** Each limit: a value, null to clear it (the server's default then applies), or absent to leave it. */
const count = z.number().int().positive().max(Number.MAX_SAFE_INTEGER).nullish();
const period = z.enum(PERIODS as [Period, ...Period[]]).nullish();
const usd = z.union([z.number().nonnegative(), z.string()]).nullish()
  .refine((v) => v === null || v === undefined || /^\d+(\.\d{0,6})?$/.test(String(v)), "budget_usd must be USD with up to 6 decimals, such as 25 or 12.5");
const microUsd = (value: string | number | null | undefined) => (value === undefined ? undefined : value === null ? null : microUsdPerMtok(String(value)));

/** One model's budget and token quota, over one period (default month). */
const modelBudget = z.object({ budget_usd: usd, token_quota: count, period }).strict()
  .refine((m) => (m.budget_usd ?? null) !== null || (m.token_quota ?? null) !== null, "a model's entry needs budget_usd or token_quota");

/** The fields keys and teams share in the admin API. */
export const ownedFields = {
  models: z.array(z.string().min(1)).min(1).nullish(),
  metadata: z.record(z.string(), z.unknown()).nullish(),
  priority: z.enum(KEY_PRIORITIES as [KeyPriority, ...KeyPriority[]]).nullish(),
  rpm: count, tpm: count, max_parallel: count, budget_usd: usd, budget_period: period, token_quota: count, quota_period: period,
  /** {"MODEL": {"budget_usd": 50, "period": "month"}}; null clears them all. */
  model_budgets: z.record(z.string().min(1), modelBudget).nullish(),
  data_residency: z.enum(DATA_RESIDENCIES as [DataResidency, ...DataResidency[]]).nullish(),
};

type OwnedBody = { [K in keyof typeof ownedFields]?: z.infer<(typeof ownedFields)[K]> };

/** The limit fields of a request body as the store's limits (micro-USD for budgets); undefined: leave alone. */
export function limitsOfBody(body: OwnedBody): Partial<KeyLimits> {
  return {
    rpm: body.rpm, tpm: body.tpm, maxParallel: body.max_parallel, budgetMicroUsd: microUsd(body.budget_usd), budgetPeriod: body.budget_period,
    tokenQuota: body.token_quota, quotaPeriod: body.quota_period,
  };
}

export function modelLimitsOfBody(body: OwnedBody): ModelLimits | null | undefined {
  if (body.model_budgets === undefined || body.model_budgets === null) return body.model_budgets;
  return Object.fromEntries(Object.entries(body.model_budgets).map(([model, m]) => {
    const budget = microUsd(m.budget_usd) ?? null;
    const quota = m.token_quota ?? null;
    const every = m.period ?? DEFAULT_PERIOD;
    return [model, { budgetMicroUsd: budget, budgetPeriod: budget === null ? null : every, tokenQuota: quota, quotaPeriod: quota === null ? null : every }];
  }));
}

/** Per-model budgets and quotas under the API's names: {"MODEL": {"budget_usd": 50, "token_quota": null, "period": "month"}}. */
export function modelBudgetsBody(limits: ModelLimits) {
  return Object.fromEntries(Object.entries(limits).map(([model, limit]) => [model, {
    budget_usd: limit.budgetMicroUsd === null ? null : limit.budgetMicroUsd / 1e6, token_quota: limit.tokenQuota, period: limit.budgetPeriod ?? limit.quotaPeriod,
  }]));
}

/** A key's limits under the admin API's names (budget in USD). */
export function limitFields(limits: KeyLimits) {
  return {
    rpm: limits.rpm, tpm: limits.tpm, max_parallel: limits.maxParallel,
    budget_usd: limits.budgetMicroUsd === null ? null : limits.budgetMicroUsd / 1e6, budget_period: limits.budgetPeriod,
    token_quota: limits.tokenQuota, quota_period: limits.quotaPeriod,
  };
}

