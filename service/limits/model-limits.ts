/**
 * Per-model budgets and token quotas, at key and team level: `{"gpt-4o-mini": {"budget_usd":
 * 50, "period": "month"}}`. Each is one more meter of its owner (meters.ts), named for its
 * model, so that what is reserved, settled, enforced and reported is one counter.
 */
import type { Period } from "./periods.ts";

export interface ModelLimit {
  /** Spend on the model per budgetPeriod, micro-USD. */
  budgetMicroUsd: number | null;
  budgetPeriod: Period | null;
  /** Tokens (input + output) of the model per quotaPeriod. */
  tokenQuota: number | null;
  quotaPeriod: Period | null;
}

/** By the model's served name (the model that serves a request: its price is the one charged). */
export type ModelLimits = Readonly<Record<string, ModelLimit>>;

export const NO_MODEL_LIMITS: ModelLimits = {};

/** The meter that counts a model's spend (usd) or tokens at one owner: "usd:MODEL". */
export function modelMeter(meter: "usd" | "tokens", model: string): `usd:${string}` | `tokens:${string}` {
  return `${meter}:${model}`;
}

/** A meter's model, for per-model meters; null for the owner's own. */
export function meterModel(meter: string): string | null {
  const at = meter.indexOf(":");
  return at < 0 ? null : meter.slice(at + 1);
}

/** A meter's kind: usd, tokens or parallel. */
export function meterKind(meter: string): "usd" | "tokens" | "parallel" {
  const at = meter.indexOf(":");
  return (at < 0 ? meter : meter.slice(0, at)) as "usd" | "tokens" | "parallel";
}

export function parseModelLimits(json: string | null): ModelLimits {
  return json ? (JSON.parse(json) as ModelLimits) : NO_MODEL_LIMITS;
}

export function modelLimitsJson(limits: ModelLimits | null | undefined): string | null {
  return limits && Object.keys(limits).length > 0 ? JSON.stringify(limits) : null;
}
