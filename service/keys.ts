/**
 * API keys: `tm-` and 32 random bytes (base64url), shown once at creation. Only the secret's
 * SHA-256 and a short display prefix are stored; a key is found by the hash of what a client
 * sends. Valid keys are cached for at most CACHE_MS, so a revoke takes effect within it.
 */
import { createHash, randomBytes } from "node:crypto";
import type { Kysely } from "kysely";
import { NO_LIMITS as UNSET_LIMITS, type KeyLimits } from "./limits/key-limits.ts";
import type { Period } from "./limits/periods.ts";
import type { ApiKeyTable, Database } from "./store/database.ts";

/** How long a verified key (and the "are there any keys" answer) may be served from memory. */
export const CACHE_MS = 1000;

/** The scheduling tier a key's requests get (the engine's priority tiers). */
export type KeyPriority = "interactive" | "standard" | "batch";
export const KEY_PRIORITIES: readonly KeyPriority[] = ["interactive", "standard", "batch"];

export interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  /** null: every model. */
  models: string[] | null;
  metadata: Record<string, unknown> | null;
  createdMs: number;
  expiresMs: number | null;
  revokedMs: number | null;
  lastUsedMs: number | null;
  priority: KeyPriority;
  /** The key's own limits (null where it sets none; the server's defaults then apply). */
  limits: KeyLimits;
}

export interface NewKey {
  name: string;
  models?: string[] | null;
  expiresMs?: number | null;
  metadata?: Record<string, unknown> | null;
  priority?: KeyPriority;
  limits?: Partial<KeyLimits>;
}

/** What to change; a limit set to null is cleared. */
export type KeyUpdate = Partial<Pick<NewKey, "name" | "models" | "expiresMs" | "metadata" | "priority" | "limits">>;

export const hashSecret = (secret: string) => createHash("sha256").update(secret).digest("hex");

export class KeyStore {
  private readonly verified = new Map<string, { key: ApiKey; untilMs: number }>();
  private anyKeys: { value: boolean; untilMs: number } | null = null;

  constructor(private readonly db: Kysely<Database>) {}

  /** Creates a key; the secret is in the result and nowhere else, ever. */
  async create(spec: NewKey, nowMs = Date.now()): Promise<{ key: ApiKey; secret: string }> {
    const secret = `tm-${randomBytes(32).toString("base64url")}`;
    const row: ApiKeyTable = {
      id: `key_${randomBytes(9).toString("base64url")}`, name: spec.name, prefix: `${secret.slice(0, 8)}…`, secret_hash: hashSecret(secret),
      models: spec.models ? JSON.stringify(spec.models) : null, metadata: spec.metadata ? JSON.stringify(spec.metadata) : null,
      created_ms: nowMs, expires_ms: spec.expiresMs ?? null, revoked_ms: null, last_used_ms: null, priority: spec.priority ?? null,
      ...limitColumns({ ...UNSET_LIMITS, ...spec.limits }) as LimitColumns,
    };
    await this.db.insertInto("api_keys").values(row).execute();
    this.anyKeys = null;
    return { key: toKey(row), secret };
  }

  async list(): Promise<ApiKey[]> {
    return (await this.db.selectFrom("api_keys").selectAll().orderBy("created_ms").execute()).map(toKey);
  }

  async get(id: string): Promise<ApiKey | null> {
    const row = await this.db.selectFrom("api_keys").selectAll().where("id", "=", id).executeTakeFirst();
    return row ? toKey(row) : null;
  }

  async update(id: string, change: KeyUpdate): Promise<ApiKey | null> {
    const set: Partial<ApiKeyTable> = {};
    if (change.name !== undefined) set.name = change.name;
    if (change.models !== undefined) set.models = change.models ? JSON.stringify(change.models) : null;
    if (change.expiresMs !== undefined) set.expires_ms = change.expiresMs;
    if (change.metadata !== undefined) set.metadata = change.metadata ? JSON.stringify(change.metadata) : null;
    if (change.priority !== undefined) set.priority = change.priority;
    if (change.limits) {
      for (const [column, value] of Object.entries(limitColumns(change.limits))) if (value !== undefined) (set as Record<string, unknown>)[column] = value;
    }
    if (Object.keys(set).length > 0) await this.db.updateTable("api_keys").set(set).where("id", "=", id).execute();
    this.verified.clear();
    return this.get(id);
  }

  /** Revokes a key (it stays listed, and its usage stays in the ledger). */
  async revoke(id: string, nowMs = Date.now()): Promise<boolean> {
    const result = await this.db.updateTable("api_keys").set({ revoked_ms: nowMs }).where("id", "=", id).where("revoked_ms", "is", null).executeTakeFirst();
    this.verified.clear();
    return Number(result.numUpdatedRows) > 0;
  }

  /** The live key a client's secret names, or null (unknown, revoked or expired). */
  async verify(secret: string, nowMs = Date.now()): Promise<ApiKey | null> {
    const hash = hashSecret(secret);
    const cached = this.verified.get(hash);
    if (cached && cached.untilMs > nowMs && isLive(cached.key, nowMs)) return cached.key;
    const row = await this.db.selectFrom("api_keys").selectAll().where("secret_hash", "=", hash).executeTakeFirst();
    if (!row) return null;
    const key = toKey(row);
    if (!isLive(key, nowMs)) return null;
    this.verified.set(hash, { key, untilMs: nowMs + CACHE_MS });
    void this.db.updateTable("api_keys").set({ last_used_ms: nowMs }).where("id", "=", key.id).execute().catch(() => undefined);
    return key;
  }

  /** Whether any key exists at all (revoked and expired ones count): until one does, the server serves anonymously. */
  async hasAny(nowMs = Date.now()): Promise<boolean> {
    if (this.anyKeys && this.anyKeys.untilMs > nowMs) return this.anyKeys.value;
    const row = await this.db.selectFrom("api_keys").select("id").limit(1).executeTakeFirst();
    this.anyKeys = { value: row !== undefined, untilMs: nowMs + CACHE_MS };
    return this.anyKeys.value;
  }
}

export function isLive(key: ApiKey, nowMs = Date.now()): boolean {
  return key.revokedMs === null && (key.expiresMs === null || key.expiresMs > nowMs);
}

export function mayUse(key: ApiKey, model: string): boolean {
  return key.models === null || key.models.includes(model);
}

function toKey(row: ApiKeyTable): ApiKey {
  return {
    id: row.id, name: row.name, prefix: row.prefix,
    models: row.models ? (JSON.parse(row.models) as string[]) : null,
    metadata: row.metadata ? (JSON.parse(row.metadata) as Record<string, unknown>) : null,
    createdMs: Number(row.created_ms), expiresMs: row.expires_ms === null ? null : Number(row.expires_ms),
    revokedMs: row.revoked_ms === null ? null : Number(row.revoked_ms), lastUsedMs: row.last_used_ms === null ? null : Number(row.last_used_ms),
    priority: (row.priority as KeyPriority | null) ?? "standard",
    limits: {
      rpm: numberOrNull(row.rpm), tpm: numberOrNull(row.tpm), maxParallel: numberOrNull(row.max_parallel),
      budgetMicroUsd: numberOrNull(row.budget_micro_usd), budgetPeriod: row.budget_period as Period | null,
      tokenQuota: numberOrNull(row.token_quota), quotaPeriod: row.quota_period as Period | null,
    },
  };
}

const numberOrNull = (value: number | null | undefined) => (value === null || value === undefined ? null : Number(value));

type LimitColumns = Pick<ApiKeyTable, "rpm" | "tpm" | "max_parallel" | "budget_micro_usd" | "budget_period" | "token_quota" | "quota_period">;

/** The limit columns a (partial) set of limits writes; undefined: leave alone. */
function limitColumns(limits: Partial<KeyLimits>): { [C in keyof LimitColumns]: LimitColumns[C] | undefined } {
  return {
    rpm: limits.rpm, tpm: limits.tpm, max_parallel: limits.maxParallel, budget_micro_usd: limits.budgetMicroUsd,
    budget_period: limits.budgetPeriod, token_quota: limits.tokenQuota, quota_period: limits.quotaPeriod,
  };
}
