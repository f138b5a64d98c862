/** GET /v1/models and /v1/models/{id}: every model in the registry. */
import type { FastifyInstance } from "fastify";
import { mayUse } from "../../service/keys.ts";
import type { ModelBackend } from "../backends/model-backend.ts";
import { checkModelAccess } from "../http/auth.ts";
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
  app.get("/v1/models", async (request) => ({
    object: "list", data: ctx.models.list().filter((b) => !request.caller.key || mayUse(request.caller.key, b.id)).map(modelCard),
  }));

  // NOTE: a wildcard, so that served names with slashes, as on the Hub (Qwen/Qwen3-0.6B), are found.
  app.get<{ Params: { "*": string } }>("/v1/models/*", async (request) => {
    const backend = ctx.models.resolve(request.params["*"]);
    checkModelAccess(request.caller, backend.id);
    return modelCard(backend);
  });
}
