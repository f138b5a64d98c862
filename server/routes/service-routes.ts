/** GET /v1/models, /health and /metrics. */
import type { FastifyInstance } from "fastify";
import { ApiError, engineRestarting, modelNotFound } from "../http/api-error.ts";
import type { ServerContext } from "../server-context.ts";

const startedSeconds = Math.floor(Date.now() / 1000);

export function registerServiceRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const modelCard = () => ({
    id: ctx.modelId, object: "model", created: startedSeconds, owned_by: "tokenmill", max_model_len: ctx.maxModelLen,
  });

  app.get("/v1/models", async () => ({ object: "list", data: [modelCard()] }));

  // NOTE: a wildcard, so that served names with slashes, as on the Hub (Qwen/Qwen3-0.6B), are found.
  app.get<{ Params: { "*": string } }>("/v1/models/*", async (request) => {
    const model = request.params["*"];
    if (model !== ctx.modelId) throw modelNotFound(model);
    return modelCard();
  });

  app.get("/health", async (_request, reply) => {
    if (!ctx.engine) throw new ApiError(503, "The model is loading.", "server_error", null, "loading", 5);
    if (ctx.engine.state === "restarting") throw engineRestarting();
    if (ctx.engine.state === "stopped") throw new ApiError(503, "The engine thread has stopped.", "server_error", null, "engine_dead");
    return reply.send({ status: "ok" });
  });

  app.get("/metrics", async (_request, reply) => {
    reply.header("content-type", ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
}
