/**
 * The admin API for keys, mirroring `tokenmill keys`: POST/GET/PATCH/DELETE /v1/admin/keys.
 * The auth hook lets only the admin key through (and answers 404 while no --admin-key is set).
 */
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { KEY_PRIORITIES, type ApiKey, type KeyPriority, type KeyStore } from "../../service/keys.ts";
import type { KeyLimits } from "../../service/limits/key-limits.ts";
import { PERIODS, type Period } from "../../service/limits/periods.ts";
import { microUsdPerMtok } from "../../service/prices.ts";
import { invalidRequest, keyNotFound, noStore } from "../common/api-error.ts";
import { limitFields as limitBody } from "./key-fields.ts";
import { parseBody } from "../common/parse-body.ts";

/** An expiry as an ISO date or epoch seconds, or null for none. */
const expiry = z.union([z.string().refine((s) => !Number.isNaN(Date.parse(s)), "expires_at must be an ISO date"), z.number().int().positive()]).nullish();
const models = z.array(z.string().min(1)).min(1).nullish();
const metadata = z.record(z.string(), z.unknown()).nullish();

const priority = z.enum(KEY_PRIORITIES as [KeyPriority, ...KeyPriority[]]).optional();
/** Each limit: a value, null to clear it (the server's default then applies), or absent to leave it. */
const count = z.number().int().positive().max(Number.MAX_SAFE_INTEGER).nullish();
const period = z.enum(PERIODS as [Period, ...Period[]]).nullish();
const usd = z.union([z.number().nonnegative(), z.string()]).nullish()
  .refine((v) => v === null || v === undefined || /^\d+(\.\d{0,6})?$/.test(String(v)), "budget_usd must be USD with up to 6 decimals, such as 25 or 12.5");
const limitFields = { rpm: count, tpm: count, max_parallel: count, budget_usd: usd, budget_period: period, token_quota: count, quota_period: period };
const createKey = z.object({ name: z.string().min(1).max(200), models, expires_at: expiry, metadata, priority, ...limitFields }).strict();
const updateKey = z.object({ name: z.string().min(1).max(200).optional(), models, expires_at: expiry, metadata, priority, ...limitFields }).strict();

/** The limit fields of a request body as the key store's limits (micro-USD for the budget). */
function limitsOf(body: z.infer<typeof updateKey>): Partial<KeyLimits> {
  const micro = body.budget_usd === undefined ? undefined : body.budget_usd === null ? null : microUsdPerMtok(String(body.budget_usd));
  return {
    rpm: body.rpm, tpm: body.tpm, maxParallel: body.max_parallel, budgetMicroUsd: micro, budgetPeriod: body.budget_period,
    tokenQuota: body.token_quota, quotaPeriod: body.quota_period,
  };
}

const expiresMs = (value: string | number | null | undefined) =>
  value === undefined ? undefined : value === null ? null : typeof value === "number" ? value * 1000 : Date.parse(value);

/** A key as the API shows it: OpenAI-style snake_case, times in epoch seconds, never the secret's hash. */
export function keyBody(key: ApiKey) {
  const seconds = (ms: number | null) => (ms === null ? null : Math.floor(ms / 1000));
  return {
    id: key.id, object: "api_key", name: key.name, prefix: key.prefix, models: key.models, metadata: key.metadata, priority: key.priority, ...limitBody(key.limits),
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
    const { key, secret } = await store().create({
      name: body.name, models: body.models ?? null, expiresMs: expires ?? null, metadata: body.metadata ?? null, priority: body.priority, limits: limitsOf(body),
    });
    return reply.status(201).send({ ...keyBody(key), secret });
  });

  app.get("/v1/admin/keys", async () => ({ object: "list", data: (await store().list()).map(keyBody) }));

  app.get<{ Params: { id: string } }>("/v1/admin/keys/:id", async (request) => found(await store().get(request.params.id), request.params.id));

  app.patch<{ Params: { id: string } }>("/v1/admin/keys/:id", async (request) => {
    const body = parseBody(updateKey, request.body);
    const key = await store().update(request.params.id, {
      name: body.name, models: body.models, expiresMs: expiresMs(body.expires_at), metadata: body.metadata, priority: body.priority, limits: limitsOf(body),
    });
    return found(key, request.params.id);
  });

  app.delete<{ Params: { id: string } }>("/v1/admin/keys/:id", async (request) => {
    const revoked = await store().revoke(request.params.id);
    const key = found(await store().get(request.params.id), request.params.id);
    return { ...key, revoked };
  });
}
