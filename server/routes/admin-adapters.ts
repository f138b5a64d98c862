/**
 * Loading and unloading LoRA adapters at run time (backends/lora-adapters.ts), admin key only:
 *
 *   GET    /v1/admin/adapters              every adapter served, with its parent
 *   POST   /v1/admin/adapters              {name, path, base_model?}: load, serve, 200 with its card
 *   DELETE /v1/admin/adapters/{name}       unload
 *   POST   /v1/load_lora_adapter           vLLM's: {lora_name, lora_path}, answered in text
 *   POST   /v1/unload_lora_adapter         vLLM's: {lora_name}
 */
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { noAdapters } from "../common/api-error.ts";
import { parseBody } from "../common/parse-body.ts";
import type { ServerContext } from "../http/server-context.ts";
import type { LoraAdapters } from "../backends/lora-adapters.ts";

const adapterName = z.string().min(1).max(200).regex(/^[^\s]+$/, "a name without spaces");
const path = z.string().min(1).max(4096);
const load = z.object({ name: adapterName, path, base_model: z.string().min(1).optional() }).strict();
const vllmLoad = z.object({ lora_name: adapterName, lora_path: path, base_model_name: z.string().min(1).optional(), load_inplace: z.boolean().optional() }).strict();
const vllmUnload = z.object({ lora_name: adapterName, lora_int_id: z.number().int().optional() }).strict();

export function registerAdminAdapterRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const adapters = (): LoraAdapters => {
    if (!ctx.adapters) throw noAdapters();
    return ctx.adapters;
  };

  app.get("/v1/admin/adapters", async () => ({ object: "list", data: adapters().list() }));

  app.post("/v1/admin/adapters", async (request) => {
    const body = parseBody(load, request.body);
    return adapters().load(body.name, body.path, body.base_model);
  });

  app.delete<{ Params: { "*": string } }>("/v1/admin/adapters/*", async (request) => {
    const name = request.params["*"];
    await adapters().unload(name);
    return { id: name, object: "lora_adapter", deleted: true };
  });

  app.post("/v1/load_lora_adapter", async (request, reply) => {
    const body = parseBody(vllmLoad, request.body);
    await adapters().load(body.lora_name, body.lora_path, body.base_model_name);
    return reply.type("text/plain; charset=utf-8").send(`Success: LoRA adapter '${body.lora_name}' added successfully.`);
  });

  app.post("/v1/unload_lora_adapter", async (request, reply) => {
    const body = parseBody(vllmUnload, request.body);
    await adapters().unload(body.lora_name);
    return reply.type("text/plain; charset=utf-8").send(`Success: LoRA adapter '${body.lora_name}' removed successfully.`);
  });
}
