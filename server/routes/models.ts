/** GET /v1/models and /v1/models/{id}: every model in the registry. */
import type { FastifyInstance } from "fastify";
import { isLocalOnly, mayUse } from "../../service/keys.ts";
import type { ServingPlan } from "../backends/serving-plan.ts";
import { checkModelAccess } from "../http/auth.ts";
import { modelNotFound } from "../common/api-error.ts";
import type { ServerContext } from "../http/server-context.ts";

const startedSeconds = Math.floor(Date.now() / 1000);

/**
 * OpenAI's model object for each served name (model, alias or route), with vLLM's
 * max_model_len once a local engine has decided it, and where it is served (tokenmill's own).
 * A LoRA adapter's card names its base model as `parent` (vLLM's field; null for a model).
 */
function modelCard(route: ServingPlan) {
  const [first] = route.targets;
  const maxModelLen = first.kind === "local" ? first.maxModelLen : null;
  const isModel = route.targets.length === 1 && first.id === route.name;
  return {
    id: route.name, object: "model", created: startedSeconds, owned_by: first.kind === "local" ? "tokenmill" : first.provider.name,
    ...(maxModelLen !== null ? { max_model_len: maxModelLen } : {}),
    ...(isModel && first.kind === "local" ? { parent: first.base?.id ?? null } : {}),
    ...(isModel ? {} : { targets: route.targets.map((target) => target.id) }),
  };
}

export function registerModelRoutes(app: FastifyInstance, ctx: ServerContext): void {
  // NOTE: a key sees only what it may use: its (and its team's) model lists, and no upstream-only name when its data must stay local.
  app.get("/v1/models", async (request) => {
    const { key } = request.caller;
    const usable = (route: ServingPlan) => !key || (mayUse(key, route.name) && (!isLocalOnly(key) || route.hasLocal));
    return { object: "list", data: ctx.models.names().filter(usable).map(modelCard) };
  });

  // NOTE: a wildcard, so that served names with slashes, as on the Hub (Qwen/Qwen3-0.6B), are found.
  app.get<{ Params: { "*": string } }>("/v1/models/*", async (request) => {
    const route = ctx.models.resolve(request.params["*"]);
    checkModelAccess(request.caller, route.name);
    const { key } = request.caller;
    if (key && isLocalOnly(key) && !route.hasLocal) throw modelNotFound(route.name);
    return modelCard(route);
  });
}
