/**
 * API keys: `tm-` and 32 random bytes (base64url), shown once at creation. Only the secret's
 * SHA-256 and a short display prefix are stored; a key is found by the hash of what a client
 * sends. Valid keys are cached for at most CACHE_MS, so a revoke takes effect within it.
 */
import { createHash, randomBytes } from "node:crypto";
import type { Kysely } from "kysely";
import { NO_LIMITS as UNSET_LIMITS, type KeyLimits } from "./limits/key-limits.ts";
import { modelLimitsJson, type ModelLimits } from "./limits/model-limits.ts";
import { limitColumns, ownedColumns, residencyColumn, type DataResidency, type KeyPriority, type LimitColumns } from "./owner-columns.ts";
import type { ApiKeyTable, Database } from "./store/database.ts";
import { TeamStore, type Team } from "./teams.ts";

/** How long a verified key (and the "are there any keys" answer) may be served from memory. */
export const CACHE_MS = 1000;

export { DATA_RESIDENCIES, KEY_PRIORITIES, type DataResidency, type KeyPriority } from "./owner-columns.ts";

/** The rules a key's create or update broke (a model outside its team's list, an unknown team): the caller's 400. */
export class KeyRuleError extends Error {
  constructor(message: string, readonly param: string) {
    super(message);
    this.name = "KeyRuleError";
  }
}

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
  /** The key's own limits (null where it sets none; its team's member budget or the server's defaults then apply). */
  limits: KeyLimits;
  /** Its own per-model budgets and quotas. */
  modelLimits: ModelLimits;
  /** The team it belongs to; null: none. */
  teamId: string | null;
  dataResidency: DataResidency;
  /** Whether it set its priority itself (else its team's applies, or standard). */
  ownPriority: boolean;
}

/** A key as a request meets it: with its team, as both stood when the key was verified. */
export interface VerifiedKey extends ApiKey {
  team: Team | null;
}

export interface NewKey {
  name: string;
  models?: string[] | null;
  expiresMs?: number | null;
  metadata?: Record<string, unknown> | null;
  priority?: KeyPriority | null;
  limits?: Partial<KeyLimits>;
  modelLimits?: ModelLimits | null;
  teamId?: string | null;
  dataResidency?: DataResidency | null;
}

/** What to change; a limit set to null is cleared. */
export type KeyUpdate = Partial<Pick<NewKey, "name" | "models" | "expiresMs" | "metadata" | "priority" | "limits" | "modelLimits" | "teamId" | "dataResidency">>;

export const hashSecret = (secret: string) => createHash("sha256").update(secret).digest("hex");

export class KeyStore {
  private readonly verified = new Map<string, { key: VerifiedKey; untilMs: number }>();
  private anyKeys: { value: boolean; untilMs: number } | null = null;

  constructor(private readonly db: Kysely<Database>, private readonly teams: TeamStore = new TeamStore(db)) {}

  /** Creates a key; the secret is in the result and nowhere else, ever. Throws KeyRuleError. */
  async create(spec: NewKey, nowMs = Date.now()): Promise<{ key: ApiKey; secret: string }> {
    await this.checkTeam(spec.teamId ?? null, spec.models ?? null);
    const secret = `tm-${randomBytes(32).toString("base64url")}`;
    const row: ApiKeyTable = {
      id: `key_${randomBytes(9).toString("base64url")}`, name: spec.name, prefix: `${secret.slice(0, 8)}…`, secret_hash: hashSecret(secret),
      models: spec.models ? JSON.stringify(spec.models) : null, metadata: spec.metadata ? JSON.stringify(spec.metadata) : null,
      created_ms: nowMs, expires_ms: spec.expiresMs ?? null, revoked_ms: null, last_used_ms: null, priority: spec.priority ?? null,
      ...limitColumns({ ...UNSET_LIMITS, ...spec.limits }) as LimitColumns,
      team_id: spec.teamId ?? null, model_limits: modelLimitsJson(spec.modelLimits), data_residency: residencyColumn(spec.dataResidency),
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

  /** The live keys of a team (revoked and expired ones are not counted). */
  async ofTeam(teamId: string, nowMs = Date.now()): Promise<ApiKey[]> {
    return (await this.db.selectFrom("api_keys").selectAll().where("team_id", "=", teamId).execute()).map(toKey).filter((key) => isLive(key, nowMs));
  }

  /** Throws KeyRuleError. */
  async update(id: string, change: KeyUpdate): Promise<ApiKey | null> {
    if (change.teamId !== undefined || change.models !== undefined) {
      const current = await this.get(id);
      if (!current) return null;
      await this.checkTeam(change.teamId === undefined ? current.teamId : change.teamId, change.models === undefined ? current.models : change.models);
    }
    const set: Partial<ApiKeyTable> = {};
    if (change.name !== undefined) set.name = change.name;
    if (change.models !== undefined) set.models = change.models ? JSON.stringify(change.models) : null;
    if (change.expiresMs !== undefined) set.expires_ms = change.expiresMs;
    if (change.metadata !== undefined) set.metadata = change.metadata ? JSON.stringify(change.metadata) : null;
    if (change.priority !== undefined) set.priority = change.priority;
    if (change.limits) {
      for (const [column, value] of Object.entries(limitColumns(change.limits))) if (value !== undefined) (set as Record<string, unknown>)[column] = value;
    }
    if (change.modelLimits !== undefined) set.model_limits = modelLimitsJson(change.modelLimits);
    if (change.teamId !== undefined) set.team_id = change.teamId;
    if (change.dataResidency !== undefined) set.data_residency = residencyColumn(change.dataResidency);
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

  /** A live key by its id, with its team (the batch runner's requests run as their batch's key). */
  async verifiedById(id: string, nowMs = Date.now()): Promise<VerifiedKey | null> {
    const own = await this.get(id);
    if (!own || !isLive(own, nowMs)) return null;
    return { ...own, team: own.teamId === null ? null : await this.teams.get(own.teamId) };
  }

  /** Forgets the keys verified so far (a team changed: its keys' next requests read it anew). */
  forgetVerified(): void {
    this.verified.clear();
  }

  /** The live key a client's secret names, with its team, or null (unknown, revoked or expired). */
  async verify(secret: string, nowMs = Date.now()): Promise<VerifiedKey | null> {
    const hash = hashSecret(secret);
    const cached = this.verified.get(hash);
    if (cached && cached.untilMs > nowMs && isLive(cached.key, nowMs)) return cached.key;
    const row = await this.db.selectFrom("api_keys").selectAll().where("secret_hash", "=", hash).executeTakeFirst();
    if (!row) return null;
    const own = toKey(row);
    if (!isLive(own, nowMs)) return null;
    const key: VerifiedKey = { ...own, team: own.teamId === null ? null : await this.teams.get(own.teamId) };
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

  /** A key's team must exist, and the key's models must be among the team's. */
  private async checkTeam(teamId: string | null, models: string[] | null): Promise<void> {
    if (teamId === null) return;
    const team = await this.teams.get(teamId);
    if (!team) throw new KeyRuleError(`There is no team with id ${teamId}.`, "team_id");
    if (team.models === null || models === null) return;
    const outside = models.filter((model) => !team.models!.includes(model));
    if (outside.length > 0) throw new KeyRuleError(`The key's models must be among its team's (${team.models.join(", ")}); ${outside.join(", ")} is not.`, "models");
  }
}

export function isLive(key: ApiKey, nowMs = Date.now()): boolean {
  return key.revokedMs === null && (key.expiresMs === null || key.expiresMs > nowMs);
}

/** Whether a key may use a model: its own list and its team's both allow it. */
export function mayUse(key: ApiKey & { team?: Team | null }, model: string): boolean {
  return (key.models === null || key.models.includes(model)) && (!key.team || key.team.models === null || key.team.models.includes(model));
}

/** Whether a key's requests must stay on local models: its own setting or its team's, whichever is stricter. */
export function isLocalOnly(key: ApiKey & { team?: Team | null }): boolean {
  return key.dataResidency === "local" || key.team?.dataResidency === "local";
}

/** The scheduling tier a key's requests get: its own, else its team's, else standard. */
export function priorityOf(key: ApiKey & { team?: Team | null }): KeyPriority {
  return key.ownPriority ? key.priority : key.team?.priority ?? key.priority;
}

function toKey(row: ApiKeyTable): ApiKey {
  return {
    ...ownedColumns(row), teamId: row.team_id ?? null,
    id: row.id, name: row.name, prefix: row.prefix,
    models: row.models ? (JSON.parse(row.models) as string[]) : null,
    metadata: row.metadata ? (JSON.parse(row.metadata) as Record<string, unknown>) : null,
    createdMs: Number(row.created_ms), expiresMs: row.expires_ms === null ? null : Number(row.expires_ms),
    revokedMs: row.revoked_ms === null ? null : Number(row.revoked_ms), lastUsedMs: row.last_used_ms === null ? null : Number(row.last_used_ms),
  };
}

