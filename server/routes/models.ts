/** GET /v1/models and /v1/models/{id}: every model in the registry. */
import type { FastifyInstance } from "fastify";
import type { ModelBackend } from "../backends/model-backend.ts";
import type { ServerContext } from "../server-context.ts";

const startedSeconds = Math.floor(Date.now() / 1000);

/** OpenAI's model object, with vLLM's max_model_len once the engine has decided it. */
function modelCard(backend: ModelBackend) {
  return {
    id: backend.id, object: "model", created: startedSeconds, owned_by: "tokenmill",
    ...(backend.maxModelLen !== null ? { max_model_len: backend.maxModelLen } : {}),
  };
}

export function registerModelRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.get("/v1/models", async () => ({ object: "list", data: ctx.models.list().map(modelCard) }));

  // NOTE: a wildcard, so that served names with slashes, as on the Hub (Qwen/Qwen3-0.6B), are found.
  app.get<{ Params: { "*": string } }>("/v1/models/*", async (request) => modelCard(ctx.models.resolve(request.params["*"])));
}
