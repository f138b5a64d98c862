/**
 * Teams: a level above keys. A key belongs to at most one team, and a request is admitted only
 * if it fits both its key's limits and its team's, kind by kind (limits/limiter.ts). A team has
 * every limit a key has, a model list its keys' lists must stay inside, a data residency that
 * binds its keys when stricter than theirs, and optionally a member budget: the budget each of
 * its keys gets when the key sets none of its own.
 */
import { randomBytes } from "node:crypto";
import type { Kysely } from "kysely";
import {
  limitColumns, numberOrNull, ownedColumns, residencyColumn, type DataResidency, type KeyPriority, type LimitColumns,
} from "./owner-columns.ts";
import { NO_LIMITS, type KeyLimits } from "./limits/key-limits.ts";
import { TEAM_ID_PREFIX } from "./limits/meters.ts";
import { modelLimitsJson, type ModelLimits } from "./limits/model-limits.ts";
import type { Period } from "./limits/periods.ts";
import type { Database, TeamTable } from "./store/database.ts";

export interface MemberBudget {
  budgetMicroUsd: number;
  budgetPeriod: Period | null;
}

export interface Team {
  id: string;
  name: string;
  /** null: every model. */
  models: string[] | null;
  metadata: Record<string, unknown> | null;
  createdMs: number;
  /** The tier of its keys' requests, for keys that set none. */
  priority: KeyPriority;
  ownPriority: boolean;
  limits: KeyLimits;
  modelLimits: ModelLimits;
  dataResidency: DataResidency;
  /** The budget of each key of the team that sets none itself; null: none. */
  memberBudget: MemberBudget | null;
}

export interface NewTeam {
  name: string;
  models?: string[] | null;
  metadata?: Record<string, unknown> | null;
  priority?: KeyPriority | null;
  limits?: Partial<KeyLimits>;
  modelLimits?: ModelLimits | null;
  dataResidency?: DataResidency | null;
  memberBudget?: MemberBudget | null;
}

export type TeamUpdate = Partial<NewTeam>;

/** A rule a team's change broke (a name taken, keys still in it): the caller's 400 or 409. */
export class TeamRuleError extends Error {
  constructor(message: string, readonly param: string | null, readonly status: 400 | 409 = 400) {
    super(message);
    this.name = "TeamRuleError";
  }
}

export class TeamStore {
  constructor(private readonly db: Kysely<Database>) {}

  /** Throws TeamRuleError when the name is taken. */
  async create(spec: NewTeam, nowMs = Date.now()): Promise<Team> {
    await this.checkName(spec.name, null);
    const row: TeamTable = {
      id: `${TEAM_ID_PREFIX}${randomBytes(9).toString("base64url")}`, name: spec.name,
      models: spec.models ? JSON.stringify(spec.models) : null, metadata: spec.metadata ? JSON.stringify(spec.metadata) : null,
      priority: spec.priority ?? null, created_ms: nowMs,
      ...limitColumns({ ...NO_LIMITS, ...spec.limits }) as LimitColumns,
      member_budget_micro_usd: spec.memberBudget?.budgetMicroUsd ?? null, member_budget_period: spec.memberBudget?.budgetPeriod ?? null,
      model_limits: modelLimitsJson(spec.modelLimits), data_residency: residencyColumn(spec.dataResidency),
    };
    await this.db.insertInto("teams").values(row).execute();
    return toTeam(row);
  }

  async list(): Promise<Team[]> {
    return (await this.db.selectFrom("teams").selectAll().orderBy("created_ms").execute()).map(toTeam);
  }

  async get(id: string): Promise<Team | null> {
    const row = await this.db.selectFrom("teams").selectAll().where("id", "=", id).executeTakeFirst();
    return row ? toTeam(row) : null;
  }

  /** A team by its id or its name (the CLI takes either). */
  async find(idOrName: string): Promise<Team | null> {
    const row = await this.db.selectFrom("teams").selectAll().where((eb) => eb.or([eb("id", "=", idOrName), eb("name", "=", idOrName)])).executeTakeFirst();
    return row ? toTeam(row) : null;
  }

  /** Throws TeamRuleError; null when there is no such team. */
  async update(id: string, change: TeamUpdate): Promise<Team | null> {
    if (change.name !== undefined) await this.checkName(change.name, id);
    const set: Partial<TeamTable> = {};
    if (change.name !== undefined) set.name = change.name;
    if (change.models !== undefined) set.models = change.models ? JSON.stringify(change.models) : null;
    if (change.metadata !== undefined) set.metadata = change.metadata ? JSON.stringify(change.metadata) : null;
    if (change.priority !== undefined) set.priority = change.priority;
    if (change.limits) {
      for (const [column, value] of Object.entries(limitColumns(change.limits))) if (value !== undefined) (set as Record<string, unknown>)[column] = value;
    }
    if (change.modelLimits !== undefined) set.model_limits = modelLimitsJson(change.modelLimits);
    if (change.dataResidency !== undefined) set.data_residency = residencyColumn(change.dataResidency);
    if (change.memberBudget !== undefined) {
      set.member_budget_micro_usd = change.memberBudget?.budgetMicroUsd ?? null;
      set.member_budget_period = change.memberBudget?.budgetPeriod ?? null;
    }
    if (Object.keys(set).length > 0) await this.db.updateTable("teams").set(set).where("id", "=", id).execute();
    return this.get(id);
  }

  /**
   * Deletes a team that has no live keys (TeamRuleError 409 otherwise: move or revoke them
   * first). Its revoked and expired keys leave it; its ledger rows keep its id.
   */
  async delete(id: string, nowMs = Date.now()): Promise<boolean> {
    return this.db.transaction().execute(async (trx) => {
      const keys = await trx.selectFrom("api_keys").select(["id", "revoked_ms", "expires_ms"]).where("team_id", "=", id).execute();
      const live = keys.filter((k) => k.revoked_ms === null && (k.expires_ms === null || Number(k.expires_ms) > nowMs));
      if (live.length > 0) {
        throw new TeamRuleError(`The team still has ${live.length} live key${live.length === 1 ? "" : "s"} (${live.map((k) => k.id).join(", ")}); move them to another team or revoke them first.`, null, 409);
      }
      await trx.updateTable("api_keys").set({ team_id: null }).where("team_id", "=", id).execute();
      const result = await trx.deleteFrom("teams").where("id", "=", id).executeTakeFirst();
      return Number(result.numDeletedRows) > 0;
    });
  }

  private async checkName(name: string, id: string | null): Promise<void> {
    const taken = await this.db.selectFrom("teams").select("id").where("name", "=", name).executeTakeFirst();
    if (taken && taken.id !== id) throw new TeamRuleError(`A team named "${name}" exists already (${taken.id}).`, "name");
  }
}

function toTeam(row: TeamTable): Team {
  const budget = numberOrNull(row.member_budget_micro_usd);
  return {
    id: row.id, name: row.name, models: row.models ? (JSON.parse(row.models) as string[]) : null,
    metadata: row.metadata ? (JSON.parse(row.metadata) as Record<string, unknown>) : null, createdMs: Number(row.created_ms),
    ...ownedColumns(row),
    memberBudget: budget === null ? null : { budgetMicroUsd: budget, budgetPeriod: row.member_budget_period as Period | null },
  };
}
