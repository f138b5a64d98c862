/** vLLM's POST /tokenize and POST /detokenize, and GET /version: token counting for clients. */
import { createRequire } from "node:module";
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { overloaded } from "../http/api-error.ts";
import { toChatMessage } from "../openai/chat-messages.ts";
import type { PromptTokenizer } from "../backends/engine-api.ts";
import type { ModelBackend } from "../backends/model-backend.ts";
import { checkModelAccess, type Caller } from "../http/auth.ts";
import { parseBody } from "../http/http-helpers.ts";
import { chatCompletionRequest } from "../openai/schemas.ts";
import type { ServerContext } from "../server-context.ts";

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
  backend: ModelBackend;
  tokens: number[];
}

function resolveFor(ctx: ServerContext, caller: Caller, model: string): ModelBackend {
  const backend = ctx.models.resolve(model);
  checkModelAccess(caller, backend.id);
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

function tokenizerOf(backend: ModelBackend): PromptTokenizer {
  if (!backend.tokenizer) throw overloaded("The model is still loading; try again shortly.", 5);
  return backend.tokenizer;
}
