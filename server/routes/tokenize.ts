/** vLLM's POST /tokenize and POST /detokenize, and GET /version: token counting for clients. */
import { createRequire } from "node:module";
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { invalidRequest, modelLoading } from "../common/api-error.ts";
import { toChatMessage } from "../openai/chat-messages.ts";
import type { PromptTokenizer } from "../common/engine-api.ts";
import type { LocalBackend } from "../backends/model-backend.ts";
import { checkModelAccess, type Caller } from "../http/auth.ts";
import { parseBody } from "../common/parse-body.ts";
import { chatCompletionRequest } from "../openai/schemas.ts";
import type { ServerContext } from "../http/server-context.ts";

const tokenizePrompt = z.object({ model: z.string().min(1), prompt: z.string(), add_special_tokens: z.boolean().nullish() }).loose();
const tokenizeChat = z.object({
  model: z.string().min(1), messages: chatCompletionRequest.shape.messages, add_generation_prompt: z.boolean().nullish(),
}).loose();

const detokenizeRequest = z.object({ model: z.string().min(1), tokens: z.array(z.number().int().nonnegative()) }).loose();

const { version } = createRequire(import.meta.url)("../../package.json") as { version: string };

export function registerTokenizeRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/tokenize", async (request) => {
    const isChat = typeof request.body === "object" && request.body !== null && "messages" in request.body;
    const { backend, tokens } = isChat ? await tokenizeMessages(ctx, request.caller, request.body) : await tokenizeText(ctx, request.caller, request.body);
    return { count: tokens.length, max_model_len: backend.maxModelLen, tokens };
  });

  app.post("/detokenize", async (request) => {
    const body = parseBody(detokenizeRequest, request.body);
    return { prompt: await tokenizerOf(resolveFor(ctx, request.caller, body.model)).decode(body.tokens, false) };
  });

  app.get("/version", async () => ({ version }));
}

interface Tokenized {
  backend: LocalBackend;
  tokens: number[];
}

/** The local model serving `model` (a route's first local target): upstream models have no tokenizer here. */
function resolveFor(ctx: ServerContext, caller: Caller, model: string): LocalBackend {
  const route = ctx.models.resolve(model);
  checkModelAccess(caller, route.name);
  const backend = route.targets.find((target) => target.kind === "local");
  if (!backend) throw invalidRequest(`The model \`${model}\` is served by an upstream provider, whose tokenizer tokenmill does not have.`, "model", "model_not_local");
  return backend;
}

async function tokenizeText(ctx: ServerContext, caller: Caller, raw: unknown): Promise<Tokenized> {
  const body = parseBody(tokenizePrompt, raw);
  const backend = resolveFor(ctx, caller, body.model);
  return { backend, tokens: await tokenizerOf(backend).encode(body.prompt, body.add_special_tokens ?? true) };
}

async function tokenizeMessages(ctx: ServerContext, caller: Caller, raw: unknown): Promise<Tokenized> {
  const body = parseBody(tokenizeChat, raw);
  const backend = resolveFor(ctx, caller, body.model);
  const options = { addGenerationPrompt: body.add_generation_prompt ?? true };
  return { backend, tokens: (await tokenizerOf(backend).applyChatTemplate(body.messages.map(toChatMessage), options)).promptTokenIds };
}

function tokenizerOf(backend: LocalBackend): PromptTokenizer {
  if (!backend.tokenizer) throw modelLoading();
  return backend.tokenizer;
}
