/**
 * Builds the fastify app without listening, so tests use app.inject().
 * Every error leaves through one handler, in OpenAI's shape.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from "fastify";
import { routeNotFound, toApiError } from "./common/api-error.ts";
import { authenticator, type AuthOptions, type Caller } from "./http/auth.ts";
import { handleClientError } from "./http/client-error.ts";
import { createHttpServer, DEFAULT_KEEP_ALIVE_TIMEOUT_MS, keepOpenForBodyError, registerDrain } from "./http/connections.ts";
import { registerJsonBody } from "./http/json-body.ts";
import { registerChatCompletions } from "./routes/chat-completions.ts";
import { registerCompletions } from "./routes/completions.ts";
import { registerEmbeddings } from "./routes/embeddings.ts";
import { registerMessages } from "./routes/messages.ts";
import { registerResponses } from "./routes/responses.ts";
import { MemoryResponseStore, type ResponseStore } from "../service/response-store.ts";
import { anthropicErrorBody, isAnthropicRoute } from "./anthropic/anthropic-errors.ts";
import type { Ledger } from "../service/ledger.ts";
import type { PriceBook } from "../service/prices.ts";
import type { Store } from "../service/store/open-store.ts";
import { registerAdminKeyRoutes } from "./routes/admin-keys.ts";
import { registerAdminTeamRoutes } from "./routes/admin-teams.ts";
import { registerConsoleRoutes } from "./routes/console.ts";
import { registerAdminStateRoutes } from "./routes/admin-state.ts";
import multipart from "@fastify/multipart";
import { registerBatchRoutes, type BatchRouteOptions } from "./routes/batches.ts";
import type { TeamStore } from "../service/teams.ts";
import { registerAdminPriceRoutes } from "./routes/admin-prices.ts";
import { registerAdminAdapterRoutes } from "./routes/admin-adapters.ts";
import { registerModelRoutes } from "./routes/models.ts";
import { registerUsageRoutes } from "./routes/usage.ts";
import { registerProbeRoutes } from "./routes/probes.ts";
import { registerTokenizeRoutes } from "./routes/tokenize.ts";
import type { ServerContext } from "./http/server-context.ts";

export interface AppOptions {
  bodyLimitBytes?: number;
  /** Static keys the API routes accept (--api-key). */
  apiKeys?: readonly string[];
  /** Admin keys, the key store and the auth mode (see http/auth.ts). */
  auth?: Omit<AuthOptions, "staticKeys">;
  /** The Files and Batches APIs' stores and limits; none: no store (they answer 503). */
  batches?: BatchRouteOptions;
  /** The alert thresholds in force (--alert-thresholds), for /v1/admin/alerts. */
  alertThresholds?: readonly number[];
  /** The teams behind /v1/admin/teams; none: no store. */
  teams?: TeamStore | null;
  /** The price book behind /v1/admin/prices; none: no store. */
  prices?: PriceBook | null;
  /** The store and ledger behind the usage routes; none: no store. */
  store?: Store | null;
  ledger?: Ledger | null;
  logger?: FastifyServerOptions["logger"];
  /** The Responses API's store (default: in memory) and how long it keeps a response (default 30 days). */
  responses?: { store?: ResponseStore; retentionMs?: number };
  /** How long a client may take to send a whole request (headers and body) before a 408; default 60 s. */
  requestTimeoutMs?: number;
  /** How long an idle keep-alive socket stays open (--keep-alive-timeout); default 75 s. */
  keepAliveTimeoutMs?: number;
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
/** A batch input file's limits (--max-batch-file-bytes, --max-batch-lines): OpenAI's line limit; a size that fits in memory. */
export const DEFAULT_MAX_BATCH_FILE_BYTES = 64 * 1024 * 1024;
export const DEFAULT_MAX_BATCH_LINES = 50_000;
/** OpenAI keeps stored responses 30 days. */
export const DEFAULT_RESPONSES_RETENTION_MS = 30 * 86_400_000;

declare module "fastify" {
  interface FastifyRequest {
    /** Who the request is from, set before any route runs. */
    caller: Caller;
  }
}

export function buildApp(ctx: ServerContext, options: AppOptions = {}): FastifyInstance {
  const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const app = Fastify({
    bodyLimit: options.bodyLimitBytes ?? 8 * 1024 * 1024,
    logger: options.logger ?? false,
    serverFactory: (handler) => createHttpServer(handler, { requestTimeoutMs, keepAliveTimeoutMs: options.keepAliveTimeoutMs ?? DEFAULT_KEEP_ALIVE_TIMEOUT_MS }),
    // NOTE: the drain (http/connections.ts) closes idle sockets itself, once no request runs, and answers late requests itself.
    forceCloseConnections: false,
    return503OnClosing: false,
    clientErrorHandler: handleClientError,
    // NOTE: fastify's request logs carry method, URL, status and timing, never bodies: prompts and outputs stay out of logs.
    genReqId: (req) => (typeof req.headers["x-request-id"] === "string" ? req.headers["x-request-id"] : crypto.randomUUID()),
    requestIdHeader: false,
    // NOTE: errors fastify meets while routing (a malformed URL) skip the hooks and the error handler.
    frameworkErrors: (err, request, reply) => {
      reply.raw.setHeader("x-request-id", request.id);
      return sendError(err, request, reply);
    },
  });
  registerJsonBody(app);
  registerDrain(app);
  const authenticate = authenticator({ ...options.auth, staticKeys: options.apiKeys ?? [] });
  // NOTE: fastify refuses object defaults for request decorators; onRequest sets it before any route runs.
  app.decorateRequest("caller", null as unknown as Caller);
  app.addHook("onRequest", async (request, reply) => {
    // NOTE: set on the raw response, so streamed replies, which bypass fastify's send, carry it too.
    reply.raw.setHeader("x-request-id", request.id);
    // NOTE: a response whose client left never finishes, so onResponse never counts it: count it here, as nginx's 499.
    reply.raw.once("close", () => {
      if (!reply.raw.writableFinished) ctx.metrics.requests.inc({ route: request.routeOptions.url ?? "unknown", status: "499" });
    });
    request.caller = await authenticate(request.routeOptions.url, request.headers);
  });
  app.addHook("onResponse", async (request, reply) => {
    ctx.metrics.requests.inc({ route: request.routeOptions.url ?? "unknown", status: String(reply.statusCode) });
  });

  app.setErrorHandler(sendError);
  app.setNotFoundHandler((request, reply) => {
    const apiError = routeNotFound(request.method, request.url);
    return reply.status(apiError.status).send(apiError.body);
  });
  registerChatCompletions(app, ctx);
  registerCompletions(app, ctx);
  registerMessages(app, ctx);
  registerEmbeddings(app, ctx);
  registerResponses(app, ctx, { store: options.responses?.store ?? new MemoryResponseStore(), retentionMs: options.responses?.retentionMs ?? DEFAULT_RESPONSES_RETENTION_MS });
  registerModelRoutes(app, ctx);
  registerProbeRoutes(app, ctx);
  registerTokenizeRoutes(app, ctx);
  registerConsoleRoutes(app);
  // NOTE: multipart bodies (file uploads) only; the plugin adds a content-type parser and request.parts().
  void app.register(multipart);
  registerBatchRoutes(app, options.batches ?? { files: null, batches: null, maxFileBytes: DEFAULT_MAX_BATCH_FILE_BYTES, maxLines: DEFAULT_MAX_BATCH_LINES });
  registerAdminKeyRoutes(app, options.auth?.keys ?? null);
  registerAdminTeamRoutes(app, options.teams ?? null, options.auth?.keys ?? null);
  registerAdminPriceRoutes(app, options.prices ?? null);
  registerAdminAdapterRoutes(app, ctx);
  registerUsageRoutes(app, options.store ?? null, options.ledger ?? null, ctx);
  registerAdminStateRoutes(app, ctx, { db: options.store?.db ?? null, keys: options.auth?.keys ?? null, teams: options.teams ?? null, alertThresholds: options.alertThresholds });
  return app;
}

function sendError(err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const apiError = toApiError(err);
  // NOTE: a 503 is a state the server is in (loading, full, restarting, draining), not a fault: the request log line has its status.
  if (apiError.status === 500) request.log.error({ err }, "request failed");
  if (apiError.retryAfterSeconds !== undefined) reply.header("retry-after", String(apiError.retryAfterSeconds));
  keepOpenForBodyError(request, reply);
  for (const [name, value] of Object.entries(apiError.headers)) reply.header(name, value);
  // NOTE: Anthropic's routes answer in Anthropic's error shape, whatever refused the request (auth, JSON, schema).
  return reply.status(apiError.status).send(isAnthropicRoute(request.routeOptions.url ?? request.url) ? anthropicErrorBody(apiError) : apiError.body);
}
