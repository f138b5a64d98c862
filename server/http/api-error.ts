/**
 * The server's one error catalog, in OpenAI's shape: {error: {message, type, param, code}}.
 * Engine and model errors are mapped here, and only here, to HTTP statuses.
 */
import { LimitExceeded } from "../../service/limits/limiter.ts";
import { isStoreUnavailable } from "../../service/store/store-errors.ts";
import { EngineError, ModelError } from "../backends/engine-api.ts";

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

/** A backend's refusal or failure that another backend of the route may make good (see backends/route.ts). */
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
