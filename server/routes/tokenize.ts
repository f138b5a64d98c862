/** vLLM's POST /tokenize and POST /detokenize, and GET /version: token counting for clients. */
import { createRequire } from "node:module";
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { overloaded } from "../http/api-error.ts";
import { toChatMessage } from "../openai/chat-messages.ts";
import { parseBody, requireModel } from "../http/http-helpers.ts";
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
    const tokens = isChat ? await tokenizeMessages(ctx, request.body) : await tokenizeText(ctx, request.body);
    return { count: tokens.length, max_model_len: ctx.maxModelLen, tokens };
  });

  app.post("/detokenize", async (request) => {
    const body = parseBody(detokenizeRequest, request.body);
    requireModel(ctx, body.model);
    return { prompt: await (ctx.tokenizer ?? loading()).decode(body.tokens, false) };
  });

  app.get("/version", async () => ({ version }));
}

async function tokenizeText(ctx: ServerContext, raw: unknown): Promise<number[]> {
  const body = parseBody(tokenizePrompt, raw);
  requireModel(ctx, body.model);
  return (ctx.tokenizer ?? loading()).encode(body.prompt, body.add_special_tokens ?? true);
}

async function tokenizeMessages(ctx: ServerContext, raw: unknown): Promise<number[]> {
  const body = parseBody(tokenizeChat, raw);
  requireModel(ctx, body.model);
  const options = { addGenerationPrompt: body.add_generation_prompt ?? true };
  return (await (ctx.tokenizer ?? loading()).applyChatTemplate(body.messages.map(toChatMessage), options)).promptTokenIds;
}

function loading(): never {
  throw overloaded("The model is still loading; try again shortly.", 5);
}
