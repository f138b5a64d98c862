/**
 * Usage and spend, in OpenAI's shapes: GET /v1/organization/usage/completions and
 * GET /v1/organization/costs (admin only: the auth hook lets only the admin key onto
 * /v1/organization/*), and GET /v1/key, where a key reads its own totals this month.
 */
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import type { Ledger } from "../../service/ledger.ts";
import { BUCKET_MS, usageByBucket, type BucketWidth, type GroupBy, type UsageGroup } from "../../service/usage-report.ts";
import type { Store } from "../../service/store/open-store.ts";
import { NO_LIMITS } from "../../service/limits/key-limits.ts";
import { limitFields, modelBudgetsBody } from "./key-fields.ts";
import type { LevelStatus, LimitName, LimitStatus } from "../../service/limits/limiter.ts";
import type { LedgerTotals } from "../../service/ledger.ts";
import { durationText } from "../../service/limits/periods.ts";
import { invalidRequest, noLedger, noStore } from "../common/api-error.ts";
import { isLocalOnly, priorityOf } from "../../service/keys.ts";
import type { ServerContext } from "../http/server-context.ts";
import { parseBody } from "../common/parse-body.ts";

/** Buckets a page holds by default and at most, per width, as OpenAI's API. */
const PAGE_LIMITS: Record<BucketWidth, { default: number; max: number }> = { "1m": { default: 60, max: 1440 }, "1h": { default: 24, max: 168 }, "1d": { default: 7, max: 31 } };

/** A list given as repeated query parameters (group_by=a&group_by=b) or comma-separated (group_by=a,b). */
const listOf = <T extends z.ZodType>(item: T) => z.preprocess((v) => (Array.isArray(v) ? v : String(v).split(",")), z.array(item));
const seconds = z.coerce.number().int().nonnegative();

const usageQuery = z.object({
  start_time: seconds, end_time: seconds.optional(), bucket_width: z.enum(["1m", "1h", "1d"]).default("1d"),
  group_by: listOf(z.enum(["api_key_id", "team_id", "model", "backend"])).optional(), limit: z.coerce.number().int().positive().optional(), page: seconds.optional(),
  team_id: z.string().min(1).optional(),
  api_key_ids: listOf(z.string().min(1)).optional(), models: listOf(z.string().min(1)).optional(), backends: listOf(z.string().min(1)).optional(),
}).loose();

const costsQuery = z.object({
  start_time: seconds, end_time: seconds.optional(), bucket_width: z.literal("1d").default("1d"),
  group_by: listOf(z.enum(["line_item", "project_id", "team_id"])).optional(), limit: z.coerce.number().int().positive().max(180).optional(), page: seconds.optional(),
  team_id: z.string().min(1).optional(),
  api_key_ids: listOf(z.string().min(1)).optional(), models: listOf(z.string().min(1)).optional(), backends: listOf(z.string().min(1)).optional(),
}).loose();

interface Page<T> {
  object: "page";
  data: { object: "bucket"; start_time: number; end_time: number; results: T[] }[];
  has_more: boolean;
  next_page: string | null;
}

/** The page's buckets (empty ones included, as OpenAI returns them), each filled with its groups. */
async function paged<T>(
  store: Store,
  query: { start_time: number; end_time?: number; bucket_width: BucketWidth; limit?: number; page?: number; team_id?: string; api_key_ids?: string[]; models?: string[]; backends?: string[] },
  groupBy: GroupBy[] | undefined,
  result: (group: UsageGroup) => T,
): Promise<Page<T>> {
  const width = BUCKET_MS[query.bucket_width];
  const limits = PAGE_LIMITS[query.bucket_width];
  const limit = Math.min(query.limit ?? limits.default, limits.max);
  const startMs = (query.page ?? query.start_time) * 1000;
  const endMs = (query.end_time ?? Math.ceil(Date.now() / 1000)) * 1000;
  if (endMs <= startMs) throw invalidRequest("end_time must be after start_time.", "end_time");
  const pageEndMs = Math.min(endMs, startMs + limit * width);
  const groups = await usageByBucket(store.db, {
    startMs, endMs: pageEndMs, bucketWidth: query.bucket_width, groupBy, teamId: query.team_id, keyIds: query.api_key_ids, models: query.models, backends: query.backends,
  });
  const data: Page<T>["data"] = [];
  for (let at = startMs; at < pageEndMs; at += width) {
    data.push({ object: "bucket", start_time: at / 1000, end_time: Math.min(at + width, endMs) / 1000, results: groups.filter((g) => g.bucketStartMs === at).map(result) });
  }
  const hasMore = pageEndMs < endMs;
  return { object: "page", data, has_more: hasMore, next_page: hasMore ? String(pageEndMs / 1000) : null };
}

/**
 * Where a level stands on each limit it has: the limit, what is used and reserved (budgets and
 * quotas: the very counters enforcement reads), what remains, and when it is whole again.
 */
function limitsBody(status: Partial<Record<LimitName, LimitStatus>>) {
  const nowMs = Date.now();
  return Object.fromEntries(Object.entries(status).map(([name, s]) => {
    const usd = name === "budget";
    const amount = (n: number) => (usd ? n / 1e6 : n);
    return [usd ? "budget_usd" : name, {
      limit: amount(s.limit), ...(s.used !== undefined ? { used: amount(s.used), reserved: amount(s.reserved ?? 0) } : {}), remaining: amount(s.remaining),
      ...(s.period ? { period: s.period } : {}),
      resets_at: s.resetsAtMs === null ? null : s.resetsAtMs / 1000, resets_in: s.resetsAtMs === null ? null : durationText(s.resetsAtMs - nowMs),
    }];
  }));
}

function usageBody(periodStartMs: number, totals: LedgerTotals) {
  return {
    period_start: periodStartMs / 1000, num_model_requests: totals.numRequests,
    input_tokens: totals.uncachedInputTokens + totals.cachedInputTokens, input_cached_tokens: totals.cachedInputTokens,
    output_tokens: totals.outputTokens, cost: totals.costMicroUsd / 1_000_000,
  };
}

/** A level's limits as set, where it stands on each, and on each model's own budget and quota. */
export function levelBody(level: LevelStatus | undefined) {
  if (!level) return { ...limitFields(NO_LIMITS), model_budgets: {}, limits: {}, model_limits: {} };
  return {
    ...limitFields(level.limits), model_budgets: modelBudgetsBody(level.modelLimits), limits: limitsBody(level.status),
    model_limits: Object.fromEntries(Object.entries(level.models).map(([model, status]) => [model, limitsBody(status)])),
  };
}

export function registerUsageRoutes(app: FastifyInstance, store: Store | null, ledger: Ledger | null, ctx: ServerContext): void {
  const need = () => store ?? (() => { throw noStore("ledger"); })();

  app.get("/v1/organization/usage/completions", async (request) => {
    const query = parseBody(usageQuery, request.query);
    return paged(need(), query, query.group_by, (g) => ({
      object: "organization.usage.completions.result",
      input_tokens: g.inputTokens, input_cached_tokens: g.inputCachedTokens, output_tokens: g.outputTokens,
      input_audio_tokens: 0, output_audio_tokens: 0, num_model_requests: g.numRequests,
      project_id: null, user_id: null, api_key_id: g.keyId, model: g.model, batch: null,
      // NOTE: tokenmill's own groups: group_by=backend (local:MODEL or upstream:PROVIDER) and group_by=team_id.
      ...(g.backend !== null ? { backend: g.backend } : {}),
      ...(query.group_by?.includes("team_id") ? { team_id: g.teamId } : {}),
    }));
  });

  app.get("/v1/organization/costs", async (request) => {
    const query = parseBody(costsQuery, request.query);
    const byLineItem = query.group_by?.includes("line_item") ?? false;
    const byTeam = query.group_by?.includes("team_id") ?? false;
    const groupBy: GroupBy[] = [...(byLineItem ? ["model" as const] : []), ...(byTeam ? ["team_id" as const] : [])];
    return paged(need(), query, groupBy.length > 0 ? groupBy : undefined, (g) => ({
      object: "organization.costs.result", amount: { value: g.costMicroUsd / 1_000_000, currency: "usd" },
      line_item: byLineItem ? g.model : null, project_id: null, ...(byTeam ? { team_id: g.teamId } : {}),
    }));
  });

  app.get("/v1/key", async (request) => {
    if (!ledger) throw noLedger();
    const { caller } = request;
    const now = new Date();
    const periodStartMs = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
    await ledger.flush();
    const totals = await ledger.totals(caller.keyId, periodStartMs);
    const levels = (await ctx.limits?.status(caller)) ?? [];
    const { key } = caller;
    const team = key?.team ?? null;
    return {
      object: "api_key", id: caller.keyId, name: key?.name ?? null, prefix: key?.prefix ?? null, models: key?.models ?? null,
      priority: key ? priorityOf(key) : "standard", data_residency: key ? (isLocalOnly(key) ? "local" : "any") : "any",
      ...levelBody(levels.find((l) => l.level === "key")),
      usage: usageBody(periodStartMs, totals),
      // NOTE: the team's standing is shown where the key's is, so a key's holder sees which level will refuse first.
      team: team === null ? null : {
        object: "team", id: team.id, name: team.name, models: team.models, priority: team.priority, data_residency: team.dataResidency,
        ...levelBody(levels.find((l) => l.level === "team")),
        usage: usageBody(periodStartMs, await ledger.totals(undefined, periodStartMs, team.id)),
      },
    };
  });
}
