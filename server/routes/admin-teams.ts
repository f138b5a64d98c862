/**
 * The admin API for teams, mirroring `tokenmill teams` and the keys' conventions:
 * POST/GET/PATCH/DELETE /v1/admin/teams. A team has every limit a key has, per-model budgets,
 * a model list its keys' lists stay inside, a data residency, and a member budget (the budget
 * of each of its keys that sets none). The auth hook lets only the admin key through.
 */
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import type { KeyStore } from "../../service/keys.ts";
import type { Team, TeamStore } from "../../service/teams.ts";
import { TeamRuleError } from "../../service/teams.ts";
import { invalidRequest, noStore, teamHasKeys, teamNotFound } from "../common/api-error.ts";
import { parseBody } from "../common/parse-body.ts";
import { limitFields, limitsOfBody, modelBudgetsBody, modelLimitsOfBody, ownedFields } from "./key-fields.ts";
import { DEFAULT_PERIOD, NO_LIMITS, effectiveLimits } from "../../service/limits/key-limits.ts";
import { microUsdPerMtok } from "../../service/prices.ts";

const memberBudget = z.object({
  budget_usd: z.union([z.number().nonnegative(), z.string()]).refine((v) => /^\d+(\.\d{0,6})?$/.test(String(v)), "budget_usd must be USD with up to 6 decimals"),
  period: ownedFields.budget_period,
}).strict().nullish();
const name = z.string().min(1).max(200);
const createTeam = z.object({ name, member_budget: memberBudget, ...ownedFields }).strict();
const updateTeam = z.object({ name: name.optional(), member_budget: memberBudget, ...ownedFields }).strict();


/** A team as the API shows it: snake_case, times in epoch seconds, budgets in USD. */
export function teamBody(team: Team, numKeys?: number) {
  return {
    id: team.id, object: "team", name: team.name, models: team.models, metadata: team.metadata, priority: team.ownPriority ? team.priority : null,
    data_residency: team.dataResidency, ...limitFields(effectiveLimits(team.limits, NO_LIMITS)), model_budgets: modelBudgetsBody(team.modelLimits),
    member_budget: team.memberBudget && { budget_usd: team.memberBudget.budgetMicroUsd / 1e6, period: team.memberBudget.budgetPeriod ?? DEFAULT_PERIOD },
    created_at: Math.floor(team.createdMs / 1000), ...(numKeys !== undefined ? { num_keys: numKeys } : {}),
  };
}

function memberBudgetOf(body: z.infer<typeof updateTeam>) {
  if (body.member_budget === undefined || body.member_budget === null) return body.member_budget;
  return { budgetMicroUsd: microUsdPerMtok(String(body.member_budget.budget_usd)), budgetPeriod: body.member_budget.period ?? null };
}

async function teamRules<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof TeamRuleError) throw err.status === 409 ? teamHasKeys(err.message) : invalidRequest(err.message, err.param);
    throw err;
  }
}

export function registerAdminTeamRoutes(app: FastifyInstance, teams: TeamStore | null, keys: KeyStore | null): void {
  const store = () => teams ?? (() => { throw noStore("key store"); })();
  const numKeys = async (team: Team) => (keys ? (await keys.ofTeam(team.id)).length : undefined);
  const found = async (team: Team | null, id: string) => {
    if (!team) throw teamNotFound(id);
    return teamBody(team, await numKeys(team));
  };

  app.post("/v1/admin/teams", async (request, reply) => {
    const body = parseBody(createTeam, request.body);
    const team = await teamRules(() => store().create({
      name: body.name, models: body.models ?? null, metadata: body.metadata ?? null, priority: body.priority ?? null, limits: limitsOfBody(body),
      modelLimits: modelLimitsOfBody(body), dataResidency: body.data_residency ?? null, memberBudget: memberBudgetOf(body) ?? null,
    }));
    return reply.status(201).send(teamBody(team, 0));
  });

  app.get("/v1/admin/teams", async () => {
    const list = await store().list();
    return { object: "list", data: await Promise.all(list.map(async (team) => teamBody(team, await numKeys(team)))) };
  });

  app.get<{ Params: { id: string } }>("/v1/admin/teams/:id", async (request) => found(await store().get(request.params.id), request.params.id));

  app.patch<{ Params: { id: string } }>("/v1/admin/teams/:id", async (request) => {
    const body = parseBody(updateTeam, request.body);
    const team = await teamRules(() => store().update(request.params.id, {
      name: body.name, models: body.models, metadata: body.metadata, priority: body.priority, limits: limitsOfBody(body),
      modelLimits: modelLimitsOfBody(body), dataResidency: body.data_residency, memberBudget: memberBudgetOf(body),
    }));
    // NOTE: this process's keys read their team anew at once; other replicas within the key cache's second.
    keys?.forgetVerified();
    return found(team, request.params.id);
  });

  app.delete<{ Params: { id: string } }>("/v1/admin/teams/:id", async (request) => {
    const deleted = await teamRules(() => store().delete(request.params.id));
    if (!deleted) throw teamNotFound(request.params.id);
    keys?.forgetVerified();
    return { id: request.params.id, object: "team.deleted", deleted: true };
  });
}
