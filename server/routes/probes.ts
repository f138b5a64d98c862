/** GET /health (200 only while every model's engine is running) and GET /metrics (Prometheus). */
import type { FastifyInstance } from "fastify";
import { ApiError, engineRestarting } from "../http/api-error.ts";
import type { ServerContext } from "../server-context.ts";

export const ANONYMOUS_WARNING = "serving anonymously: no API key exists yet (create one with `tokenmill keys create --name NAME`, or pass --require-auth)";

export function registerProbeRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.get("/health", async (_request, reply) => {
    for (const backend of ctx.models.list()) {
      const { engine } = backend;
      if (!engine) throw new ApiError(503, `The model ${backend.id} is loading.`, "server_error", null, "loading", 5);
      if (engine.state === "restarting") throw engineRestarting(`The engine of ${backend.id} is restarting after a fault; retry shortly.`);
      if (engine.state === "stopped") throw new ApiError(503, `The engine thread of ${backend.id} has stopped.`, "server_error", null, "engine_dead");
    }
    return reply.send((await ctx.anonymous?.()) ? { status: "ok", warning: ANONYMOUS_WARNING } : { status: "ok" });
  });

  app.get("/metrics", async (_request, reply) => {
    reply.header("content-type", ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
}
