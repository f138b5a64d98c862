/**
 * Anthropic's Messages API: POST /v1/messages (whole, or streamed as Anthropic's typed SSE
 * events) and POST /v1/messages/count_tokens. A request runs as the chat request it translates
 * to (see anthropic/messages-schema.ts), on a local model or an upstream one (as a chat
 * completion), through the same admission, limits and ledger.
 * Errors on these routes are in Anthropic's shape (see app.ts).
 */
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply } from "fastify";
import type { Usage } from "../../service/settlement.ts";
import { anthropicErrorBody } from "../anthropic/anthropic-errors.ts";
import { countTokensRequest, messagesRequest, toChatRequest, toolsOf, chatMessagesOf } from "../anthropic/messages-schema.ts";
import type { LocalBackend } from "../backends/model-backend.ts";
import { invalidRequest, modelLoading, toApiError } from "../common/api-error.ts";
import { checkModelAccess } from "../http/auth.ts";
import { parseBody } from "../common/parse-body.ts";
import { serveRequest } from "../http/serve-request.ts";
import { SseStream } from "../http/sse.ts";
import { toChatMessage } from "../openai/chat-messages.ts";
import { endPieces, startLocalPieces, type ChatAttempt, type ChatPiece, type PieceRun } from "../chat/chat-pieces.ts";
import type { SplitOutput } from "../chat/chat-run.ts";
import type { ChatCompletionRequest } from "../openai/schemas.ts";
import { grammarOf } from "../openai/structured-outputs.ts";
import type { ToolCall } from "../openai/tool-calls.ts";
import type { ServerContext } from "../http/server-context.ts";
import { startUpstreamChat } from "../chat/upstream-chat.ts";

export function registerMessages(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/messages", async (request, reply) => {
    const anthropic = parseBody(messagesRequest, request.body);
    const body = toChatRequest(anthropic);
    const grammar = grammarOf(body);
    const respond = (attempt: ChatAttempt, run: PieceRun) => endPieces(run, () => serveMessage(reply, body, attempt, run));
    return serveRequest(ctx, request, reply, { model: body.model, endpoint: "/v1/messages" }, {
      local: async (admitted) => respond(admitted, await startLocalPieces(admitted, body, grammar, "messages")),
      upstream: async (admitted) => respond(admitted, await startUpstreamChat(admitted, body)),
    });
  });

  app.post("/v1/messages/count_tokens", async (request) => {
    const body = parseBody(countTokensRequest, request.body);
    const route = ctx.models.resolve(body.model);
    checkModelAccess(request.caller, route.name);
    const backend = route.targets.find((target): target is LocalBackend => target.kind === "local");
    if (!backend) throw invalidRequest(`The model \`${body.model}\` is served by an upstream provider, whose tokenizer tokenmill does not have.`, "model", "model_not_local");
    if (!backend.tokenizer) throw modelLoading();
    const { promptTokenIds } = await backend.tokenizer.applyChatTemplate(chatMessagesOf(body).map(toChatMessage), {
      addGenerationPrompt: true, tools: toolsOf(body) ?? undefined,
      ...(body.thinking ? { kwargs: { enable_thinking: body.thinking.type !== "disabled" } } : {}),
    });
    return { input_tokens: promptTokenIds.length };
  });
}

/** Anthropic's usage: input_tokens excludes what was read from the cache. */
function anthropicUsage(usage: Usage) {
  return {
    input_tokens: usage.promptTokens - usage.cachedPromptTokens, output_tokens: usage.completionTokens,
    cache_read_input_tokens: usage.cachedPromptTokens, cache_creation_input_tokens: 0,
  };
}

type Block = { type: "thinking"; thinking: string; signature: string } | { type: "text"; text: string } | { type: "tool_use"; id: string; name: string; input: unknown };

const toolUseOf = (call: ToolCall): Block => ({ type: "tool_use", id: `toolu_${call.id.replace(/^call_/, "")}`, name: call.function.name, input: parseInput(call.function.arguments) });

function parseInput(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
}

/** stop_reason and stop_sequence, from how the sequence finished. */
function stopOf(finishReason: string | null | undefined, stopReason: string | number | null | undefined, toolCalls: number) {
  if (toolCalls > 0) return { stop_reason: "tool_use", stop_sequence: null };
  if (finishReason === "length") return { stop_reason: "max_tokens", stop_sequence: null };
  if (typeof stopReason === "string") return { stop_reason: "stop_sequence", stop_sequence: stopReason };
  return { stop_reason: "end_turn", stop_sequence: null };
}

async function serveMessage(reply: FastifyReply, body: ChatCompletionRequest, attempt: ChatAttempt, run: PieceRun): Promise<unknown> {
  const id = `msg_${randomUUID().replaceAll("-", "")}`;
  if (body.stream) return streamMessage(reply, attempt, run, id);
  const split: SplitOutput = { reasoning: "", content: "", toolCalls: [] };
  let last: ChatPiece | undefined;
  for (let next = run.first; !next.done; next = await run.pieces.next()) {
    last = next.value;
    split.reasoning += last.reasoning;
    split.content += last.content;
    split.toolCalls = last.toolCalls;
  }
  await attempt.settle();
  return {
    id, type: "message", role: "assistant", model: attempt.backend.id, content: blocksOf(split),
    ...stopOf(last?.finishReason, last?.stopReason, split.toolCalls.length), usage: anthropicUsage(attempt.usage),
  };
}

function blocksOf(split: SplitOutput): Block[] {
  const blocks: Block[] = [];
  if (split.reasoning) blocks.push({ type: "thinking", thinking: split.reasoning, signature: "" });
  if (split.content || split.toolCalls.length === 0) blocks.push({ type: "text", text: split.content });
  blocks.push(...split.toolCalls.map(toolUseOf));
  return blocks;
}

/**
 * Anthropic's stream: message_start, ping, then each content block (thinking, text, tool_use)
 * as content_block_start, its deltas and content_block_stop, then message_delta (stop reason and
 * usage) and message_stop. A failure mid-stream is an `error` event.
 */
async function streamMessage(reply: FastifyReply, admitted: ChatAttempt, run: PieceRun, id: string): Promise<void> {
  admitted.commit();
  reply.hijack();
  const sse = new SseStream(reply.raw);
  let index = -1;
  let open: "thinking" | "text" | null = null;
  const start = async (type: "thinking" | "text") => {
    if (open === type) return;
    if (open) await sse.event("content_block_stop", { type: "content_block_stop", index });
    index++;
    open = type;
    await sse.event("content_block_start", { type: "content_block_start", index, content_block: type === "text" ? { type: "text", text: "" } : { type: "thinking", thinking: "", signature: "" } });
  };
  const close = async () => {
    if (open) await sse.event("content_block_stop", { type: "content_block_stop", index });
    open = null;
  };
  try {
    await sse.event("message_start", {
      type: "message_start",
      message: {
        id, type: "message", role: "assistant", model: admitted.backend.id, content: [], stop_reason: null, stop_sequence: null,
        // NOTE: as Anthropic's, input_tokens are the uncached ones; message_delta's final usage says the same.
        usage: {
          input_tokens: (run.numPromptTokens ?? 0) - (run.numCachedPromptTokens ?? 0), output_tokens: 0,
          cache_read_input_tokens: run.numCachedPromptTokens ?? 0, cache_creation_input_tokens: 0,
        },
      },
    });
    await sse.event("ping", { type: "ping" });
    let last: ChatPiece | undefined;
    let toolCalls: ToolCall[] = [];
    for (let next = run.first; !next.done && !sse.closed; next = await run.pieces.next()) {
      last = next.value;
      const split = next.value;
      if (split.reasoning) {
        await start("thinking");
        await sse.event("content_block_delta", { type: "content_block_delta", index, delta: { type: "thinking_delta", thinking: split.reasoning } });
      }
      if (split.content) {
        await start("text");
        await sse.event("content_block_delta", { type: "content_block_delta", index, delta: { type: "text_delta", text: split.content } });
      }
      toolCalls = split.toolCalls;
    }
    if (sse.closed) return;
    if (open === null && toolCalls.length === 0) await start("text");
    if (open === "thinking" && toolCalls.length === 0) await start("text");
    await close();
    for (const call of toolCalls) {
      const block = toolUseOf(call) as Extract<Block, { type: "tool_use" }>;
      index++;
      await sse.event("content_block_start", { type: "content_block_start", index, content_block: { ...block, input: {} } });
      await sse.event("content_block_delta", { type: "content_block_delta", index, delta: { type: "input_json_delta", partial_json: JSON.stringify(block.input) } });
      await sse.event("content_block_stop", { type: "content_block_stop", index });
    }
    await admitted.settle();
    await sse.event("message_delta", { type: "message_delta", delta: stopOf(last?.finishReason, last?.stopReason, toolCalls.length), usage: anthropicUsage(admitted.usage) });
    await sse.event("message_stop", { type: "message_stop" });
    sse.close();
  } catch (err) {
    admitted.fail(err);
    await admitted.settle();
    if (!sse.closed) {
      await sse.event("error", anthropicErrorBody(toApiError(err)));
      sse.close();
    }
  }
}
