/**
 * Usage and cost over time from the ledger, bucketed by 1m, 1h or 1d and grouped by key, team,
 * model or backend, in the numbers OpenAI's usage API reports: input tokens count every prompt token,
 * cached ones included, and input_cached_tokens is the cached part.
 */
import { sql, type Kysely } from "kysely";
import type { Database } from "./store/database.ts";

export const BUCKET_MS = { "1m": 60_000, "1h": 3_600_000, "1d": 86_400_000 } as const;
export type BucketWidth = keyof typeof BUCKET_MS;
export type GroupBy = "api_key_id" | "team_id" | "model" | "backend";

export interface UsageQuery {
  startMs: number;
  endMs: number;
  bucketWidth: BucketWidth;
  groupBy?: GroupBy[];
  /** Only this key's rows. */
  keyId?: string;
  /** Only the rows of this team's keys. */
  teamId?: string;
  /** Only these keys', models' or backends' rows (OpenAI's api_key_ids and models filters; tokenmill's backends). */
  keyIds?: readonly string[];
  models?: readonly string[];
  backends?: readonly string[];
}

export interface UsageGroup {
  bucketStartMs: number;
  keyId: string | null;
  /** The key's team when the request was made (null: none), when grouped by team. */
  teamId: string | null;
  model: string | null;
  /** local:MODEL or upstream:PROVIDER, when grouped by backend. */
  backend: string | null;
  inputTokens: number;
  inputCachedTokens: number;
  outputTokens: number;
  numRequests: number;
  costMicroUsd: number;
}

/** Sums per bucket (and group), for the buckets that have rows; in flight rows are left out. */
export async function usageByBucket(db: Kysely<Database>, query: UsageQuery): Promise<UsageGroup[]> {
  const width = BUCKET_MS[query.bucketWidth];
  const groupByKey = query.groupBy?.includes("api_key_id") ?? false;
  const groupByTeam = query.groupBy?.includes("team_id") ?? false;
  const groupByModel = query.groupBy?.includes("model") ?? false;
  const groupByBackend = query.groupBy?.includes("backend") ?? false;
  // NOTE: integer division truncates alike in SQLite and PostgreSQL for these non-negative BIGINTs. The numbers are
  // literals: better-sqlite3 binds JS numbers as REAL (which would divide exactly), and PostgreSQL would see the
  // SELECT's and GROUP BY's parameters as different expressions.
  const bucket = sql<number>`(started_ms - ${sql.lit(Math.trunc(query.startMs))}) / ${sql.lit(width)}`;
  let q = db.selectFrom("usage_ledger")
    .select((eb) => [
      bucket.as("bucket"),
      eb.fn.sum<number>("uncached_input_tokens").as("uncached"),
      eb.fn.sum<number>("cached_input_tokens").as("cached"),
      eb.fn.sum<number>("output_tokens").as("output"),
      eb.fn.countAll<number>().as("requests"),
      eb.fn.sum<number>("cost_micro_usd").as("cost"),
      ...(groupByKey ? [eb.ref("key_id").as("key_id")] : []),
      ...(groupByTeam ? [eb.ref("team_id").as("team_id")] : []),
      ...(groupByModel ? [eb.ref("model").as("model")] : []),
      ...(groupByBackend ? [eb.ref("backend").as("backend")] : []),
    ])
    .where("started_ms", ">=", query.startMs).where("started_ms", "<", query.endMs).where("status", "!=", "in_flight")
    .groupBy(bucket);
  if (groupByKey) q = q.groupBy("key_id");
  if (groupByTeam) q = q.groupBy("team_id");
  if (groupByModel) q = q.groupBy("model");
  if (groupByBackend) q = q.groupBy("backend");
  if (query.keyId !== undefined) q = q.where("key_id", "=", query.keyId);
  if (query.teamId !== undefined) q = q.where("team_id", "=", query.teamId);
  if (query.keyIds?.length) q = q.where("key_id", "in", [...query.keyIds]);
  if (query.models?.length) q = q.where("model", "in", [...query.models]);
  if (query.backends?.length) q = q.where("backend", "in", [...query.backends]);
  const rows = (await q.execute()) as unknown as Record<string, unknown>[];
  return rows.map((row) => {
    const cached = Number(row.cached);
    return {
      bucketStartMs: query.startMs + Math.floor(Number(row.bucket)) * width,
      keyId: groupByKey ? String(row.key_id) : null,
      teamId: groupByTeam && row.team_id !== null ? String(row.team_id) : null,
      model: groupByModel ? String(row.model) : null,
      backend: groupByBackend ? String(row.backend ?? "local") : null,
      inputTokens: Number(row.uncached) + cached, inputCachedTokens: cached, outputTokens: Number(row.output),
      numRequests: Number(row.requests), costMicroUsd: Number(row.cost),
    };
  }).sort((a, b) => a.bucketStartMs - b.bucketStartMs || String(a.keyId).localeCompare(String(b.keyId)) || String(a.teamId).localeCompare(String(b.teamId)) || String(a.model).localeCompare(String(b.model)) || String(a.backend).localeCompare(String(b.backend)));
}
