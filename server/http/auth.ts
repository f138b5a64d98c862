/**
 * Who is calling. On the API routes a key comes as `Authorization: Bearer KEY` or `x-api-key`:
 * - an admin key (`--admin-key`): the admin routes, and everything else;
 * - a static key (`--api-key`, as vLLM's and llama.cpp's servers take);
 * - a key from the service's key store (`tokenmill keys create`).
 * While no key exists anywhere, the server serves anonymously (as key id "anonymous") and
 * ignores any Authorization header, so that SDKs that must send some key keep working; once
 * one exists, every API request needs one. `--require-auth` and `--no-auth` fix either way.
 * /health, /metrics and /version stay open for probes and scrapers.
 *
 * NOTE: access is decided on the route the router matched (its pattern), never on the raw URL:
 * the router decodes the path before matching, so `/v1/%61dmin/keys` reaches `/v1/admin/keys`.
 *
 * NOTE: static and admin keys are compared as SHA-256 digests with timingSafeEqual; stored keys
 * are found by the hash of what was sent. Secrets are never logged.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { mayUse, type KeyStore, type VerifiedKey } from "../../service/keys.ts";
import { adminApiOff, invalidApiKey, modelNotFound, notAdmin, type ApiError } from "../common/api-error.ts";

export type AuthMode = "auto" | "required" | "none";

export interface AuthOptions {
  /** --api-key: static keys. */
  staticKeys?: readonly string[];
  /** --admin-key: keys for /v1/admin/*; none: the admin routes are off. */
  adminKeys?: readonly string[];
  keys?: KeyStore | null;
  mode?: AuthMode;
  /**
   * This process's own secret for the batch runner's requests (server/batch/): a request that
   * carries it in x-tokenmill-internal runs as the batch's key (x-tokenmill-key-id), for one
   * line of a batch (x-tokenmill-batch-line: BATCH_ID:LINE). Random per process; never sent
   * over the network (the runner injects its requests in process).
   */
  internalSecret?: string;
}

/** Who a request is from: a key id for the ledger, the stored key with its team (for their model lists, limits and residency), whether it is the admin. */
export interface Caller {
  keyId: string;
  key: VerifiedKey | null;
  admin: boolean;
  /** A batch job's line, when the batch runner sends the request on its key's behalf. */
  batchLine?: { batchId: string; line: number };
}

export const ANONYMOUS: Caller = { keyId: "anonymous", key: null, admin: false };

const OPEN_ROUTES = new Set(["/health", "/metrics", "/version"]);
/** Admin routes outside /v1/admin/: vLLM's run-time LoRA routes, kept at vLLM's paths for its clients. */
const ADMIN_ROUTES = new Set(["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]);

/** Who may use a route, from the pattern the router matched (undefined: no route matched). */
export type RouteAccess = "open" | "admin" | "api";

export function routeAccess(routePattern: string | undefined): RouteAccess {
  if (routePattern === undefined) return "api";
  // NOTE: the console's files are open (a page that signs in must load first); the APIs it calls are not.
  if (OPEN_ROUTES.has(routePattern) || routePattern === "/console" || routePattern.startsWith("/console/")) return "open";
  if (routePattern.startsWith("/v1/admin/") || routePattern.startsWith("/v1/organization/") || ADMIN_ROUTES.has(routePattern)) return "admin";
  return "api";
}

/** Authenticates a request to the route the router matched (`request.routeOptions.url`). */
export function authenticator(options: AuthOptions): (routePattern: string | undefined, headers: IncomingHttpHeaders) => Promise<Caller> {
  const staticDigests = (options.staticKeys ?? []).map(digest);
  const adminDigests = (options.adminKeys ?? []).map(digest);
  const mode = options.mode ?? "auto";
  const store = options.keys ?? null;
  const internal = options.internalSecret ? digest(options.internalSecret) : null;
  return async (routePattern, headers) => {
    const access = routeAccess(routePattern);
    if (access === "open") return ANONYMOUS;
    const sentInternal = headerValue(headers, "x-tokenmill-internal");
    if (sentInternal !== undefined) {
      if (!internal || access !== "api" || !timingSafeEqual(digest(sentInternal), internal)) throw invalidApiKey("Incorrect API key provided.");
      return batchCaller(store, headerValue(headers, "x-tokenmill-key-id") ?? "", headerValue(headers, "x-tokenmill-batch-line") ?? "");
    }
    const secret = presentedKey(headers);
    const presented = secret ? digest(secret) : null;
    const isAdmin = presented !== null && adminDigests.some((d) => timingSafeEqual(d, presented));
    if (access === "admin") {
      if (adminDigests.length === 0) throw adminApiOff();
      if (isAdmin) return { keyId: "admin", key: null, admin: true };
      throw secret ? notAdmin() : invalidKey(null, routePattern);
    }
    if (isAdmin) return { keyId: "admin", key: null, admin: true };
    if (mode === "none") return ANONYMOUS;
    if (presented && staticDigests.some((d) => timingSafeEqual(d, presented))) return { keyId: `static-${presented.toString("hex").slice(0, 8)}`, key: null, admin: false };
    const key = secret && store ? await store.verify(secret) : null;
    if (key) return { keyId: key.id, key, admin: false };
    const anyKeys = staticDigests.length > 0 || (store !== null && (await store.hasAny()));
    if (mode === "auto" && !anyKeys) return ANONYMOUS;
    throw invalidKey(secret, routePattern);
  };
}

function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** The caller a batch line runs as: the batch's key (read afresh: a key revoked since refuses its lines), or the admin, anonymous or a static key. */
async function batchCaller(store: KeyStore | null, keyId: string, line: string): Promise<Caller> {
  const match = /^(.+):(\d+)$/.exec(line);
  if (!match) throw invalidApiKey("Incorrect API key provided.");
  const batchLine = { batchId: match[1], line: Number(match[2]) };
  if (keyId === "admin") return { keyId, key: null, admin: true, batchLine };
  if (!keyId.startsWith("key_")) return { keyId, key: null, admin: false, batchLine };
  const key = store ? await store.verifiedById(keyId) : null;
  if (!key) throw invalidApiKey("The batch's API key was revoked or has expired.");
  return { keyId, key, admin: false, batchLine };
}

/** A key limited to some models gets 404 model_not_found for the others, as OpenAI answers. */
export function checkModelAccess(caller: Caller, model: string): void {
  if (caller.key && !mayUse(caller.key, model)) throw modelNotFound(model);
}

function presentedKey(headers: IncomingHttpHeaders): string | null {
  const bearer = /^Bearer\s+(.+)$/i.exec(headers.authorization ?? "")?.[1]?.trim();
  if (bearer) return bearer;
  const header = headers["x-api-key"];
  const value = Array.isArray(header) ? header[0] : header;
  return value?.trim() || null;
}

function invalidKey(secret: string | null, routePattern: string | undefined): ApiError {
  // NOTE: Anthropic's clients send their key as x-api-key; OpenAI's as a bearer token.
  const how = routePattern?.startsWith("/v1/messages") ? "x-api-key: YOUR_KEY" : "Authorization: Bearer YOUR_KEY";
  return invalidApiKey(secret ? "Incorrect API key provided." : `Missing API key: send ${how}.`);
}

function digest(key: string): Buffer {
  return createHash("sha256").update(key).digest();
}
