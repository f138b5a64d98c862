/**
 * The limit flags, shared by `keys create/update` and `teams create/update` (their own: --rpm,
 * ...) and `serve` (the defaults for keys that set none: --default-rpm, ...). On update, `none`
 * clears one. Also the per-model budget and data residency flags of keys and teams.
 */
import { z } from "zod";
import { DEFAULT_PERIOD, type KeyLimits } from "../service/limits/key-limits.ts";
import type { ModelLimit, ModelLimits } from "../service/limits/model-limits.ts";
import { PERIODS, type Period } from "../service/limits/periods.ts";
import { DATA_RESIDENCIES, type DataResidency } from "../service/owner-columns.ts";
import { microUsdPerMtok } from "../service/prices.ts";
import { FlagError, enumFlag, flagValue, intFlag, optionalFlagValue, type Flag } from "./flags.ts";

const NAMES = ["rpm", "tpm", "max-parallel", "budget-usd", "budget-period", "token-quota", "quota-period"] as const;

/** USD with up to 6 decimals, exactly, as micro-USD. */
export const usdFlag: Flag<number> = {
  schema: z.string().transform((text, ctx) => {
    try {
      return microUsdPerMtok(text);
    } catch {
      ctx.addIssue({ code: "custom", message: "not USD" });
      return z.NEVER;
    }
  }),
  accepts: "USD with up to 6 decimals, such as 25 or 12.50",
};

/** parseArgs options for the limit flags, each under `prefix` ("" or "default-"). */
export function limitFlagOptions(prefix: string): Record<string, { type: "string" }> {
  return Object.fromEntries(NAMES.map((name) => [`${prefix}${name}`, { type: "string" as const }]));
}

export function limitFlagsHelp(prefix: string, what: string): string {
  return [
    `  --${prefix}rpm N, --${prefix}tpm N   ${what} requests, tokens (input + output) per minute`,
    `  --${prefix}max-parallel N        ${what} requests in flight at once`,
    `  --${prefix}budget-usd X --${prefix}budget-period day|week|month   ${what} spend per UTC calendar period (default month)`,
    `  --${prefix}token-quota N --${prefix}quota-period day|week|month   ${what} tokens per period (for deployments that don't price)`,
  ].join("\n");
}

/**
 * The limits the flags give; undefined where a flag is absent, null where it says `none` (when
 * `clearable`).
 */
export function readLimitFlags(values: Record<string, unknown>, prefix: string, { clearable = false } = {}): Partial<KeyLimits> {
  const read = <T>(name: (typeof NAMES)[number], flag: Flag<T>): T | null | undefined => {
    const raw = values[`${prefix}${name}`];
    if (raw === undefined) return undefined;
    if (clearable && raw === "none") return null;
    return flagValue(`${prefix}${name}`, raw, clearable ? { ...flag, accepts: `${flag.accepts}, or none` } : flag);
  };
  const period = enumFlag(...(PERIODS as Period[]));
  const limits: Partial<KeyLimits> = {
    rpm: read("rpm", intFlag(1)), tpm: read("tpm", intFlag(1)), maxParallel: read("max-parallel", intFlag(1)),
    budgetMicroUsd: read("budget-usd", usdFlag), budgetPeriod: read("budget-period", period),
    tokenQuota: read("token-quota", intFlag(1)), quotaPeriod: read("quota-period", period),
  };
  return Object.fromEntries(Object.entries(limits).filter(([, v]) => v !== undefined)) as Partial<KeyLimits>;
}

/** parseArgs options for the per-model budgets and the data residency, shared by keys and teams. */
export const OWNER_FLAG_OPTIONS = {
  "model-budget": { type: "string", multiple: true }, "model-quota": { type: "string", multiple: true }, "data-residency": { type: "string" },
} as const;

export const OWNER_FLAGS_HELP = [
  "  --model-budget MODEL=USD[/day|week|month]   a budget for one model alone (repeatable; on update, --model-budget none clears them all)",
  "  --model-quota MODEL=TOKENS[/PERIOD]          a token quota for one model alone (repeatable)",
  "  --data-residency local|any                   local: requests never go to an upstream provider (a team's local binds its keys)",
].join("\n");

/**
 * The per-model budgets the flags give: undefined when none is given, null for `none`. A
 * model's budget and quota share one period.
 */
export function readModelLimitFlags(budgets: string[] | undefined, quotas: string[] | undefined): ModelLimits | null | undefined {
  if (budgets === undefined && quotas === undefined) return undefined;
  if (budgets?.length === 1 && budgets[0] === "none" && quotas === undefined) return null;
  const out: Record<string, ModelLimit> = {};
  const read = (flag: string, text: string, value: Flag<number>) => {
    const match = /^(.+)=([^/=]+)(?:\/(day|week|month))?$/.exec(text);
    if (!match) throw new FlagError(`--${flag} takes MODEL=${flag === "model-budget" ? "USD" : "TOKENS"}[/day|week|month]; got "${text}"`);
    const [, model, amount, period] = match;
    return { model, amount: flagValue(flag, amount, value), period: (period ?? null) as Period | null };
  };
  const entry = (model: string) => (out[model] ??= { budgetMicroUsd: null, budgetPeriod: null, tokenQuota: null, quotaPeriod: null });
  for (const text of budgets ?? []) {
    const { model, amount, period } = read("model-budget", text, usdFlag);
    Object.assign(entry(model), { budgetMicroUsd: amount, budgetPeriod: period ?? DEFAULT_PERIOD });
  }
  for (const text of quotas ?? []) {
    const { model, amount, period } = read("model-quota", text, intFlag(1));
    Object.assign(entry(model), { tokenQuota: amount, quotaPeriod: period ?? DEFAULT_PERIOD });
  }
  for (const [model, limit] of Object.entries(out)) {
    if (limit.budgetPeriod !== null && limit.quotaPeriod !== null && limit.budgetPeriod !== limit.quotaPeriod) {
      throw new FlagError(`${model}'s budget and token quota must share one period (got ${limit.budgetPeriod} and ${limit.quotaPeriod})`);
    }
  }
  return out;
}

export function readResidencyFlag(raw: unknown): DataResidency | undefined {
  return optionalFlagValue("data-residency", raw, enumFlag(...DATA_RESIDENCIES));
}
