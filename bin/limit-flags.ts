/**
 * The limit flags, shared by `keys create/update` (a key's own: --rpm, ...) and `serve` (the
 * defaults for keys that set none: --default-rpm, ...). On `keys update`, `none` clears one.
 */
import { z } from "zod";
import type { KeyLimits } from "../service/limits/key-limits.ts";
import { PERIODS, type Period } from "../service/limits/periods.ts";
import { microUsdPerMtok } from "../service/prices.ts";
import { enumFlag, flagValue, intFlag, type Flag } from "./flags.ts";

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
