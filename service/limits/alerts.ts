/**
 * Budget and quota alerts: when a key's or a team's use in a period crosses a threshold (50, 80
 * and 100 % by default), of its budget, its token quota or a model's own, the alert fires once
 * per owner (key or team), meter, period and threshold, however many
 * replicas share the database and however often they restart: the row in budget_alerts is
 * the claim, and only the replica whose insert made it fires.
 *
 * Firing is a callback (the server logs and counts it) and, with a webhook URL, a JSON POST
 * signed with HMAC-SHA256, retried with backoff off the request path. Its `id` is stable, so a
 * receiver can drop a duplicate; a delivery a restart cut short is resumed by the next start.
 */
import { createHmac } from "node:crypto";
import type { Kysely } from "kysely";
import type { Database } from "../store/database.ts";
import type { LevelKind } from "./limiter.ts";
import type { Meter } from "./meters.ts";
import { meterKind, meterModel } from "./model-limits.ts";
import type { Period } from "./periods.ts";

export const DEFAULT_ALERT_THRESHOLDS = [50, 80, 100];
/** Waits between webhook attempts (after the first): 7 tries over about a minute. */
export const WEBHOOK_BACKOFF_MS = [1000, 2000, 4000, 8000, 16_000, 32_000];
const WEBHOOK_TIMEOUT_MS = 10_000;

export interface BudgetAlert {
  /** Stable: the same alert always has the same id. */
  id: string;
  type: "budget_alert";
  /** Whose limit: a key's or a team's. */
  level: LevelKind;
  /** The key, for a key's limit; null for a team's. */
  key_id: string | null;
  key_name: string | null;
  /** The team, for a team's limit (or the key's team, for a key's). */
  team_id: string | null;
  team_name: string | null;
  /** budget (USD) or token_quota (tokens). */
  limit_type: "budget" | "token_quota";
  /** The model, for a per-model budget or quota; null for the owner's own. */
  model: string | null;
  period: Period;
  period_start: string;
  period_end: string;
  threshold: number;
  /** USD spent, or tokens used, in the period so far. */
  used: number;
  limit: number;
  fired_at: string;
}

export interface AlertOptions {
  thresholds?: readonly number[];
  webhookUrl?: string;
  webhookSecret?: string;
  /** Hears every alert this replica fires (the server logs it and counts it). */
  onAlert?: (alert: BudgetAlert) => void;
  /** Hears a webhook that gave up after every retry. */
  onWebhookFailed?: (alert: BudgetAlert, reason: string) => void;
}

export interface MeterReading {
  /** The meter's owner: a key's id or a team's. */
  keyId: string;
  /** The owner's name. */
  keyName: string | null;
  level?: LevelKind;
  /** For a key's meter, the key's team. */
  keyOfTeam?: string | null;
  meter: Exclude<Meter, "parallel">;
  period: Period;
  periodStartMs: number;
  periodEndMs: number;
  used: number;
  limit: number;
}

export class Alerts {
  private readonly thresholds: number[];
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly pending = new Set<AbortController>();
  private closed = false;

  constructor(private readonly db: Kysely<Database>, private readonly replica: string, private readonly options: AlertOptions = {}) {
    this.thresholds = [...(options.thresholds ?? DEFAULT_ALERT_THRESHOLDS)].sort((a, b) => a - b);
  }

  /** Fires each threshold the reading has crossed that has not fired yet for its period. */
  async check(reading: MeterReading, nowMs = Date.now()): Promise<void> {
    for (const threshold of this.thresholds) {
      if (reading.used * 100 < threshold * reading.limit) break;
      const alert = alertOf(reading, threshold, nowMs);
      const claim = await this.db.insertInto("budget_alerts").values({
        key_id: reading.keyId, meter: reading.meter, period_start_ms: reading.periodStartMs, threshold, fired_ms: nowMs, replica: this.replica,
        delivered_ms: null, payload: JSON.stringify(alert),
      }).onConflict((oc) => oc.columns(["key_id", "meter", "period_start_ms", "threshold"]).doNothing()).executeTakeFirst();
      if (Number(claim.numInsertedOrUpdatedRows ?? 0n) === 0) continue;
      this.options.onAlert?.(alert);
      this.deliver(alert, reading, threshold);
    }
  }

  /** At start: webhooks this replica fired but never got delivered (it stopped first) are sent again. */
  async resumeDeliveries(): Promise<number> {
    if (!this.options.webhookUrl) return 0;
    const rows = await this.db.selectFrom("budget_alerts").selectAll().where("replica", "=", this.replica).where("delivered_ms", "is", null).execute();
    for (const row of rows) {
      const alert = JSON.parse(row.payload) as BudgetAlert;
      this.deliver(alert, { keyId: row.key_id, meter: row.meter as MeterReading["meter"], periodStartMs: Number(row.period_start_ms) }, row.threshold);
    }
    return rows.length;
  }

  /** Stops retrying; what was not delivered stays marked so, for the next start. */
  close(): void {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    for (const controller of this.pending) controller.abort();
  }

  private deliver(alert: BudgetAlert, row: Pick<MeterReading, "keyId" | "meter" | "periodStartMs">, threshold: number, attempt = 0): void {
    const url = this.options.webhookUrl;
    if (!url || this.closed) return;
    const body = JSON.stringify(alert);
    const timestamp = Math.floor(Date.now() / 1000);
    const headers: Record<string, string> = { "content-type": "application/json", "user-agent": "tokenmill", "x-tokenmill-event": "budget_alert" };
    if (this.options.webhookSecret) headers["x-tokenmill-signature"] = `t=${timestamp},v1=${webhookSignature(this.options.webhookSecret, timestamp, body)}`;
    const controller = new AbortController();
    this.pending.add(controller);
    const timeout = setTimeout(() => controller.abort(), WEBHOOK_TIMEOUT_MS);
    void fetch(url, { method: "POST", headers, body, signal: controller.signal }).then(async (response) => {
      await response.arrayBuffer().catch(() => undefined);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      await this.db.updateTable("budget_alerts").set({ delivered_ms: Date.now() })
        .where("key_id", "=", row.keyId).where("meter", "=", row.meter).where("period_start_ms", "=", row.periodStartMs).where("threshold", "=", threshold).execute();
    }).catch((err: unknown) => {
      if (this.closed) return;
      const reason = err instanceof Error ? err.message : String(err);
      if (attempt >= WEBHOOK_BACKOFF_MS.length) return this.options.onWebhookFailed?.(alert, reason);
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        this.deliver(alert, row, threshold, attempt + 1);
      }, WEBHOOK_BACKOFF_MS[attempt]);
      this.timers.add(timer);
    }).finally(() => {
      clearTimeout(timeout);
      this.pending.delete(controller);
    });
  }
}

/** HMAC-SHA256 of `${timestamp}.${body}`, hex: what a receiver recomputes to trust a webhook. */
export function webhookSignature(secret: string, timestamp: number, body: string): string {
  return createHmac("sha256", secret).update(`${timestamp}.${body}`).digest("hex");
}

function alertOf(reading: MeterReading, threshold: number, nowMs: number): BudgetAlert {
  const usd = meterKind(reading.meter) === "usd";
  const team = (reading.level ?? "key") === "team";
  return {
    id: `alert_${reading.keyId}_${reading.meter}_${reading.periodStartMs}_${threshold}`, type: "budget_alert", level: team ? "team" : "key",
    key_id: team ? null : reading.keyId, key_name: team ? null : reading.keyName,
    team_id: team ? reading.keyId : reading.keyOfTeam ?? null, team_name: team ? reading.keyName : null,
    limit_type: usd ? "budget" : "token_quota", model: meterModel(reading.meter), period: reading.period,
    period_start: new Date(reading.periodStartMs).toISOString(), period_end: new Date(reading.periodEndMs).toISOString(), threshold,
    used: usd ? reading.used / 1e6 : reading.used, limit: usd ? reading.limit / 1e6 : reading.limit, fired_at: new Date(nowMs).toISOString(),
  };
}
