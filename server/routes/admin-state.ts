/**
 * What the console (and an operator's script) reads beyond the keys, teams and prices APIs,
 * admin only:
 * - GET /v1/admin/engines: each model's live state (a local engine's load, KV-cache use,
 *   prefix-cache hits and generation rate; an upstream's breaker) and each served name's targets;
 * - GET /v1/admin/budgets: each key's and team's standing on its budgets and quotas, from the
 *   meters enforcement reads;
 * - GET /v1/admin/alerts: the alert thresholds and the alerts that fired.
 */
import type { FastifyInstance } from "fastify";
import type { Kysely } from "kysely";
import type { KeyStore } from "../../service/keys.ts";
import type { Database } from "../../service/store/database.ts";
import type { TeamStore } from "../../service/teams.ts";
import { DEFAULT_ALERT_THRESHOLDS } from "../../service/limits/alerts.ts";
import { noStore } from "../common/api-error.ts";
import type { ModelBackend } from "../backends/model-backend.ts";
import type { ServerContext } from "../http/server-context.ts";
import { levelBody } from "./usage.ts";

/** The last reading of each engine's generated tokens, for its rate since. */
interface Reading {
  tokens: number;
  atMs: number;
}

export interface AdminStateOptions {
  db: Kysely<Database> | null;
  keys: KeyStore | null;
  teams: TeamStore | null;
  alertThresholds?: readonly number[];
}

export function registerAdminStateRoutes(app: FastifyInstance, ctx: ServerContext, options: AdminStateOptions): void {
  const readings = new Map<string, Reading>();
  /** Generated tokens a second since the last call (at most a minute back); null on the first. */
  const rateOf = (id: string, tokens: number, nowMs: number): number | null => {
    const last = readings.get(id);
    readings.set(id, { tokens, atMs: nowMs });
    if (!last || nowMs - last.atMs > 60_000 || nowMs <= last.atMs) return null;
    return ((tokens - last.tokens) * 1000) / (nowMs - last.atMs);
  };

  const engineOf = (backend: ModelBackend, nowMs: number) => {
    if (backend.kind === "upstream") {
      return { id: backend.id, object: "engine", kind: "upstream", backend: backend.label, provider: backend.provider.name, state: `breaker_${backend.provider.stateFor(backend.upstreamModel)}`, in_flight: backend.numInFlight };
    }
    const { engine } = backend;
    const stats = engine?.stats ?? null;
    return {
      id: backend.id, object: "engine", kind: "local", backend: backend.label, state: engine ? engine.state : "loading", in_flight: backend.numInFlight,
      max_model_len: backend.maxModelLen,
      // NOTE: its LoRA adapters are served names of its own, not engines: listed here.
      ...(engine?.info.lora ? {
        lora: {
          max_loras: engine.info.lora.maxLoras, max_lora_rank: engine.info.lora.maxLoraRank,
          adapters: ctx.models.list().filter((b) => b.kind === "local" && b.base === backend).map((b) => b.id),
          in_slots: stats?.lora?.inSlots ?? [], running: stats?.lora?.running ?? [], waiting: stats?.lora?.waiting ?? [],
        },
      } : {}),
      ...(stats ? {
        running: stats.numRunning, waiting: stats.numWaiting, kv_cache_usage: stats.kvCacheUsage,
        prefix_cache_hit_rate: stats.numPrefixQueryTokens > 0 ? stats.numPrefixHitTokens / stats.numPrefixQueryTokens : null,
        prompt_tokens: stats.numPromptTokens, generation_tokens: stats.numGenerationTokens, preemptions: stats.numPreemptions,
        generation_tokens_per_second: rateOf(backend.id, stats.numGenerationTokens, nowMs),
      } : {}),
    };
  };

  app.get("/v1/admin/engines", async () => {
    const nowMs = Date.now();
    return {
      object: "list", data: ctx.models.list().filter((backend) => backend.kind !== "local" || backend.base === null).map((backend) => engineOf(backend, nowMs)),
      routes: ctx.models.names().map((plan) => ({ name: plan.name, targets: plan.targets.map((t) => t.id), burst_to: plan.rules.burst?.to.id ?? null })),
    };
  });

  app.get("/v1/admin/budgets", async () => {
    const { keys, teams } = options;
    if (!keys || !teams || !ctx.limits) throw noStore("key store");
    const teamList = await teams.list();
    const byId = new Map(teamList.map((team) => [team.id, team]));
    const data = [];
    const seenTeams = new Set<string>();
    for (const key of (await keys.list()).filter((k) => k.revokedMs === null)) {
      const team = key.teamId ? byId.get(key.teamId) ?? null : null;
      const levels = (await ctx.limits.status({ keyId: key.id, key: { ...key, team }, admin: false })) ?? [];
      for (const level of levels) {
        if (level.level === "team" && seenTeams.has(level.id)) continue;
        if (level.level === "team") seenTeams.add(level.id);
        data.push({ object: "budget", level: level.level, id: level.id, name: level.name, ...(level.level === "key" ? { team_id: key.teamId } : {}), ...levelBody(level) });
      }
    }
    return { object: "list", data };
  });

  app.get("/v1/admin/alerts", async () => {
    if (!options.db) throw noStore("ledger");
    const rows = await options.db.selectFrom("budget_alerts").selectAll().orderBy("fired_ms", "desc").limit(500).execute();
    return {
      object: "list", thresholds: [...(options.alertThresholds ?? DEFAULT_ALERT_THRESHOLDS)],
      data: rows.map((row) => ({ ...(JSON.parse(row.payload) as object), replica: row.replica, delivered_at: row.delivered_ms === null ? null : Number(row.delivered_ms) / 1000 })),
    };
  });
}
