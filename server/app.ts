/**
 * Builds the fastify app without listening, so tests use app.inject().
 * Every error leaves through one handler, in OpenAI's shape.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from "fastify";
import { routeNotFound, toApiError } from "./api-error.ts";
import { apiKeyGuard } from "./api-key.ts";
import { registerChatCompletions } from "./routes/chat-completions.ts";
import { registerCompletions } from "./routes/completions.ts";
import { registerServiceRoutes } from "./routes/service-routes.ts";
import { registerTokenizeRoutes } from "./routes/tokenize.ts";
import type { ServerContext } from "./server-context.ts";

export interface AppOptions {
  bodyLimitBytes?: number;
  /** Keys the API routes require as a Bearer token; none: the API is open. */
  apiKeys?: readonly string[];
  logger?: FastifyServerOptions["logger"];
}

export function buildApp(ctx: ServerContext, options: AppOptions = {}): FastifyInstance {
  const app = Fastify({
    bodyLimit: options.bodyLimitBytes ?? 8 * 1024 * 1024,
    logger: options.logger ?? false,
    // NOTE: fastify's request logs carry method, URL, status and timing, never bodies: prompts and outputs stay out of logs.
    genReqId: (req) => (typeof req.headers["x-request-id"] === "string" ? req.headers["x-request-id"] : crypto.randomUUID()),
    requestIdHeader: false,
    // NOTE: errors fastify meets while routing (a malformed URL) skip the hooks and the error handler.
    frameworkErrors: (err, request, reply) => {
      reply.raw.setHeader("x-request-id", request.id);
      return sendError(err, request, reply);
    },
  });
  ctx.log = app.log;
  const checkApiKey = apiKeyGuard(options.apiKeys ?? []);
  app.addHook("onRequest", async (request, reply) => {
    // NOTE: set on the raw response, so streamed replies, which bypass fastify's send, carry it too.
    reply.raw.setHeader("x-request-id", request.id);
    checkApiKey(request.url, request.headers.authorization);
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
  registerServiceRoutes(app, ctx);
  registerTokenizeRoutes(app, ctx);
  return app;
}

function sendError(err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const apiError = toApiError(err);
  if (apiError.status >= 500) request.log.error({ err }, "request failed");
  if (apiError.retryAfterSeconds !== undefined) reply.header("retry-after", String(apiError.retryAfterSeconds));
  return reply.status(apiError.status).send(apiError.body);
}
