/**
 * The server's one error catalog, in OpenAI's shape: {error: {message, type, param, code}}.
 * Engine and model errors are mapped here, and only here, to HTTP statuses.
 */
import { LimitExceeded } from "../../service/limits/limiter.ts";
import { isStoreUnavailable } from "../../service/store/store-errors.ts";
import { EngineError, ModelError } from "./engine-api.ts";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly retryAfterSeconds?: number,
    /** More headers for the response (x-ratelimit-*, retry-after-ms, x-should-retry). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  get body() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/**
 * Why a backend could not serve a request, as the routes' fallback rules name it: its engine
 * is down (dead, restarting, loading), it is full, or its upstream failed (a 5xx or no answer,
 * a 429, or a timeout).
 */
export const FALLBACK_REASONS = ["engine_down", "overloaded", "upstream_5xx", "upstream_429", "timeout"] as const;
export type FallbackReason = (typeof FALLBACK_REASONS)[number];

/** A backend's refusal or failure that another backend of the route may make good (see backends/serving-plan.ts). */
export class BackendUnavailable extends ApiError {
  constructor(
    readonly reason: FallbackReason, status: number, message: string, code: string, retryAfterSeconds?: number, headers: Record<string, string> = {}, param: string | null = null,
  ) {
    super(status, message, status === 429 ? "requests" : status < 500 ? "invalid_request_error" : "server_error", param, code, retryAfterSeconds, headers);
  }
}

export const invalidRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, message, "invalid_request_error", param, code);
export const modelNotFound = (model: string) =>
  new ApiError(404, `The model \`${model}\` does not exist.`, "invalid_request_error", "model", "model_not_found");
export const routeNotFound = (method: string, url: string) =>
  new ApiError(404, `Unknown route ${method} ${url}`, "invalid_request_error", null, "not_found");
export const overloaded = (message: string, retryAfterSeconds = 1) =>
  new BackendUnavailable("overloaded", 503, message, "overloaded", retryAfterSeconds);
export const modelLoading = () => new BackendUnavailable("engine_down", 503, "The model is still loading; try again shortly.", "overloaded", 5);
export const serverShuttingDown = () =>
  new ApiError(503, "The server is shutting down; this request was cut off before it finished.", "server_error", null, "server_shutting_down", 5);
export const serverDraining = () =>
  new ApiError(503, "The server is shutting down and takes no new requests; retry (another replica will answer).", "server_error", null, "server_shutting_down", 1);
// Transport and bodies.
export const requestTimedOut = () =>
  new ApiError(408, "The request was not received in full within the server's request timeout.", "invalid_request_error", null, "request_timeout");
export const headersTooLarge = () => new ApiError(431, "The request's headers are larger than the server accepts.", "invalid_request_error", null, "headers_too_large");
export const badHttp = (code: string | undefined) => new ApiError(400, `The request is not valid HTTP (${code ?? "parse error"}).`, "invalid_request_error", null, "bad_request");
export const unsupportedMediaType = (type: string | undefined) =>
  new ApiError(415, `Content-Type must be application/json (${type ? `got ${type}` : "none was sent"}).`, "invalid_request_error", null, "unsupported_media_type");

// Keys and the admin API.
export const adminApiOff = () =>
  new ApiError(404, "The admin API is off: start the server with --admin-key (or TOKENMILL_ADMIN_KEY).", "invalid_request_error", null, "not_found");
export const invalidApiKey = (message: string) => new ApiError(401, message, "invalid_request_error", null, "invalid_api_key");
export const notAdmin = () => new ApiError(403, "This route needs the admin key.", "invalid_request_error", null, "insufficient_permissions");
export const teamNotFound = (id: string) => new ApiError(404, `No team with id ${id}.`, "invalid_request_error", "id", "not_found");
export const teamHasKeys = (message: string) => new ApiError(409, message, "invalid_request_error", null, "team_has_keys");
export const fileNotFound = (id: string) => new ApiError(404, `No such File object: ${id}`, "invalid_request_error", "id", "not_found");
export const batchNotFound = (id: string) => new ApiError(404, `No batch found with id '${id}'.`, "invalid_request_error", "id", "not_found");
export const keyNotFound = (id: string) => new ApiError(404, `No API key with id ${id}.`, "invalid_request_error", "id", "not_found");
export const responseNotFound = (id: string) => new ApiError(404, `No response with id '${id}' found.`, "invalid_request_error", "response_id", "not_found");
/** A route that needs the database on a server started without one (`what`: "key store", "price store", "ledger"). */
export const noStore = (what: string) => new ApiError(503, `The server has no ${what} (--db none).`, "server_error", null, "no_store");
export const noLedger = () => new ApiError(503, "The server meters nothing (--no-ledger or --db none).", "server_error", null, "no_ledger");

// LoRA adapters (backends/lora-adapters.ts).
export const adapterNotFound = (name: string) => new ApiError(404, `No LoRA adapter named \`${name}\` is loaded.`, "invalid_request_error", "lora_name", "not_found");
export const noAdapters = () => new ApiError(404, "This server serves no LoRA adapters.", "invalid_request_error", null, "not_found");
export const adapterBaseLoading = (what: string) => new ApiError(503, `${what} still loading; try again shortly.`, "server_error", null, "loading", 5);
export const modelInUse = (name: string, route: string) =>
  new ApiError(409, `\`${name}\` is a target of \`${route}\`; take it out of that route first.`, "invalid_request_error", "lora_name", "model_in_use");

// Data residency: a key whose data must stay on this server (data_residency: local).
export const dataResidencyViolation = (model: string) =>
  new ApiError(403, `The model \`${model}\` is served only by upstream providers, and this key's data must stay on this server (data_residency: local); use a local model.`,
    "invalid_request_error", "model", "data_residency_violation");
export const localTargetsDown = (route: string, cause: ApiError) =>
  new ApiError(503, `Every local model of \`${route}\` is unavailable (${cause.message}), and this key's data must stay on this server (data_residency: local), ` +
    "so the request was not sent to an upstream provider; retry shortly.", "server_error", null, "local_targets_unavailable", cause.retryAfterSeconds ?? 2);

// Models: /health's view of one that can't serve now, and a request too big for one.
export const modelDown = (message: string, code: "loading" | "engine_dead" | "upstream_unavailable", retryAfterSeconds?: number) =>
  new ApiError(503, message, "server_error", null, code, retryAfterSeconds);
export const tooManySequences = (message: string, param: string) => new BackendUnavailable("overloaded", 400, message, "too_many_sequences", undefined, {}, param);

// Upstream providers: each a BackendUnavailable a route may fall back on, but the last two (the upstream's own answer).
export const upstreamBreakerOpen = (provider: string, model: string, retryAfterSeconds: number) =>
  new BackendUnavailable("upstream_5xx", 503, `The upstream provider ${provider} is failing for ${model}; its circuit breaker is open.`, "upstream_unavailable", retryAfterSeconds);
export const upstreamProbing = (provider: string, model: string) =>
  new BackendUnavailable("upstream_5xx", 503, `The upstream provider ${provider} is being probed for ${model}; retry shortly.`, "upstream_unavailable", 1);
export const upstreamAtCap = (provider: string, cap: number) =>
  new BackendUnavailable("overloaded", 503, `The upstream provider ${provider} is at its concurrency cap (${cap}).`, "overloaded", 1);
export const upstreamKeyRefused = (provider: string, status: number, detail: string) =>
  new BackendUnavailable("upstream_5xx", 502, `The upstream provider ${provider} refused tokenmill's key for it (${status}): ${detail}`, "upstream_auth_failed");
export const upstreamRateLimited = (message: string, retryAfterSeconds?: number) => new BackendUnavailable("upstream_429", 429, message, "rate_limit_exceeded", retryAfterSeconds);
export const upstreamFailed = (message: string) => new BackendUnavailable("upstream_5xx", 502, message, "upstream_error");
export const upstreamTimeout = (provider: string, timeoutMs: number) =>
  new BackendUnavailable("timeout", 504, `The upstream provider ${provider} did not answer within ${timeoutMs / 1000} s.`, "upstream_timeout");
export const upstreamFailedMidStream = (provider: string, detail: string) =>
  new ApiError(502, `The upstream provider ${provider} failed mid-stream: ${detail}`, "server_error", null, "upstream_error");
/** The upstream's own 4xx, as it gave it (the request is at fault). */
export const upstreamRefused = (status: number, message: string, type: string, param: string | null, code: string | null) => new ApiError(status, message, type, param, code);
/** The ledger (or the key store) can't be written or reached now: nothing may run unbilled, so nothing runs. */
export const storeUnavailable = () =>
  new ApiError(503, "The server's database cannot be reached or written right now, so it can't record usage; retry shortly.", "server_error", null, "ledger_unavailable", 2);
/** nginx's 499: nobody reads it, but the request log and metrics then say the client left. */
export const clientClosedRequest = () =>
  new ApiError(499, "The client closed the connection before the response was complete.", "invalid_request_error", null, "client_closed_request");
export const requestAborted = () =>
  new ApiError(503, "The server aborted this request before it finished.", "server_error", null, "request_aborted", 1);
export const engineRestarting = (message = "The engine is restarting after a fault; retry shortly.") =>
  new BackendUnavailable("engine_down", 503, message, "engine_restarting", 2);
export const engineDead = (message = "The engine has stopped; the server cannot serve requests.") =>
  new BackendUnavailable("engine_down", 503, message, "engine_dead", 5);

/**
 * A key's limit, as OpenAI answers it: 429 `rate_limit_exceeded` with when to retry, or 429
 * `insufficient_quota`, which the openai SDK surfaces without retrying (x-should-retry: false).
 */
export function limitExceeded(err: LimitExceeded): ApiError {
  if (err.retryAfterMs === null) {
    const quota = err.limit === "budget" || err.limit === "token_quota";
    return new ApiError(429, err.message, quota ? "insufficient_quota" : "tokens", null, quota ? "insufficient_quota" : "rate_limit_exceeded", undefined,
      { ...err.headers, "x-should-retry": "false" });
  }
  const type = err.limit === "tpm" ? "tokens" : "requests";
  return new ApiError(429, err.message, type, null, "rate_limit_exceeded", Math.max(1, Math.ceil(err.retryAfterMs / 1000)),
    { ...err.headers, "retry-after-ms": String(Math.max(1, Math.ceil(err.retryAfterMs))) });
}

/** Any thrown value as an ApiError. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof LimitExceeded) return limitExceeded(err);
  if (err instanceof EngineError) return fromEngineError(err);
  if (err instanceof ModelError) return invalidRequest(err.message, null, err.code.toLowerCase());
  const fastifyError = err as { statusCode?: number; code?: string; message?: string };
  if (fastifyError.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
    return new ApiError(413, "The request body is larger than the server accepts.", "invalid_request_error", null, "payload_too_large");
  }
  if (fastifyError.code === "FST_ERR_CTP_INVALID_JSON_BODY" || fastifyError.code === "FST_ERR_CTP_EMPTY_JSON_BODY") {
    return invalidRequest(`The request body is not valid JSON: ${fastifyError.message}`, null, "invalid_json");
  }
  if (fastifyError.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
    return new ApiError(415, fastifyError.message ?? "unsupported media type", "invalid_request_error", null, "unsupported_media_type");
  }
  if (typeof fastifyError.statusCode === "number" && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return invalidRequest(fastifyError.message ?? "bad request", null, fastifyError.code ?? null);
  }
  if (isStoreUnavailable(err)) return storeUnavailable();
  return new ApiError(500, "The server had an error while processing your request.", "server_error", null, "internal_error");
}

function fromEngineError(err: EngineError): ApiError {
  switch (err.code) {
    case "PROMPT_TOO_LONG":
      return invalidRequest(err.message, err.param ?? "messages", "context_length_exceeded");
    case "INVALID_REQUEST":
      return invalidRequest(err.message, err.param ?? null);
    case "ENGINE_DEAD":
      return engineDead(err.message);
    case "ENGINE_FAILED":
      return new BackendUnavailable("engine_down", 500, err.message, "engine_failed");
    case "ENGINE_RESTARTING":
      return engineRestarting(err.message);
    case "GRAMMAR_BUSY":
      return new ApiError(503, err.message, "server_error", null, "grammar_busy", 1);
    default:
      return new ApiError(500, err.message, "server_error", null, err.code.toLowerCase());
  }
}
