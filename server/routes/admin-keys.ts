/**
 * The admin API for keys, mirroring `tokenmill keys`: POST/GET/PATCH/DELETE /v1/admin/keys.
 * The auth hook lets only the admin key through (and answers 404 while no --admin-key is set).
 */
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { KeyRuleError, type ApiKey, type KeyStore } from "../../service/keys.ts";
import { invalidRequest, keyNotFound, noStore } from "../common/api-error.ts";
import { limitFields as limitBody, limitsOfBody, modelBudgetsBody, modelLimitsOfBody, ownedFields } from "./key-fields.ts";
import { parseBody } from "../common/parse-body.ts";

/** An expiry as an ISO date or epoch seconds, or null for none. */
const expiry = z.union([z.string().refine((s) => !Number.isNaN(Date.parse(s)), "expires_at must be an ISO date"), z.number().int().positive()]).nullish();
const teamId = z.string().min(1).nullish();
const createKey = z.object({ name: z.string().min(1).max(200), expires_at: expiry, team_id: teamId, ...ownedFields }).strict();
const updateKey = z.object({ name: z.string().min(1).max(200).optional(), expires_at: expiry, team_id: teamId, ...ownedFields }).strict();

/** A key rule broken (its team unknown, a model outside the team's list) as the admin API's 400. */
export async function keyRules<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof KeyRuleError) throw invalidRequest(err.message, err.param);
    throw err;
  }
}

const expiresMs = (value: string | number | null | undefined) =>
  value === undefined ? undefined : value === null ? null : typeof value === "number" ? value * 1000 : Date.parse(value);

/** A key as the API shows it: OpenAI-style snake_case, times in epoch seconds, never the secret's hash. */
export function keyBody(key: ApiKey) {
  const seconds = (ms: number | null) => (ms === null ? null : Math.floor(ms / 1000));
  return {
    id: key.id, object: "api_key", name: key.name, prefix: key.prefix, models: key.models, metadata: key.metadata, priority: key.ownPriority ? key.priority : null,
    team_id: key.teamId, data_residency: key.dataResidency, ...limitBody(key.limits), model_budgets: modelBudgetsBody(key.modelLimits),
    created_at: seconds(key.createdMs), expires_at: seconds(key.expiresMs), revoked_at: seconds(key.revokedMs), last_used_at: seconds(key.lastUsedMs),
  };
}

export function registerAdminKeyRoutes(app: FastifyInstance, keys: KeyStore | null): void {
  const store = () => keys ?? (() => { throw noStore("key store"); })();
  const found = (key: ApiKey | null, id: string) => {
    if (!key) throw keyNotFound(id);
    return keyBody(key);
  };

  app.post("/v1/admin/keys", async (request, reply) => {
    const body = parseBody(createKey, request.body);
    const expires = expiresMs(body.expires_at);
    if (expires !== undefined && expires !== null && expires <= Date.now()) throw invalidRequest("expires_at is in the past.", "expires_at");
    const { key, secret } = await keyRules(() => store().create({
      name: body.name, models: body.models ?? null, expiresMs: expires ?? null, metadata: body.metadata ?? null, priority: body.priority ?? null, limits: limitsOfBody(body),
      modelLimits: modelLimitsOfBody(body), teamId: body.team_id ?? null, dataResidency: body.data_residency ?? null,
    }));
    return reply.status(201).send({ ...keyBody(key), secret });
  });

  app.get("/v1/admin/keys", async () => ({ object: "list", data: (await store().list()).map(keyBody) }));

  app.get<{ Params: { id: string } }>("/v1/admin/keys/:id", async (request) => found(await store().get(request.params.id), request.params.id));

  app.patch<{ Params: { id: string } }>("/v1/admin/keys/:id", async (request) => {
    const body = parseBody(updateKey, request.body);
    const key = await keyRules(() => store().update(request.params.id, {
      name: body.name, models: body.models, expiresMs: expiresMs(body.expires_at), metadata: body.metadata, priority: body.priority, limits: limitsOfBody(body),
      modelLimits: modelLimitsOfBody(body), teamId: body.team_id, dataResidency: body.data_residency,
    }));
    return found(key, request.params.id);
  });

  app.delete<{ Params: { id: string } }>("/v1/admin/keys/:id", async (request) => {
    const revoked = await store().revoke(request.params.id);
    const key = found(await store().get(request.params.id), request.params.id);
    return { ...key, revoked };
  });
}
