/**
 * OpenAI's Responses API: POST /v1/responses (whole, or streamed as its typed SSE events),
 * GET and DELETE /v1/responses/{id}. A request runs as the chat request it translates to (see
 * responses/responses-schema.ts), on a local model or an upstream one (as a chat completion), through
 * the same admission, limits and ledger. With
 * store (OpenAI's default), the response is kept for its key for the retention, for GET,
 * previous_response_id and item_reference.
 */
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply } from "fastify";
import type { ResponseStore } from "../../service/response-store.ts";
import type { Usage } from "../../service/settlement.ts";
import { responseNotFound, toApiError } from "../common/api-error.ts";
import type { Caller } from "../http/auth.ts";
import { parseBody } from "../common/parse-body.ts";
import { serveRequest } from "../http/serve-request.ts";
import { SseStream } from "../http/sse.ts";
import { endPieces, startLocalPieces, type ChatAttempt, type PieceRun } from "../chat/chat-pieces.ts";
import { grammarOf } from "../openai/structured-outputs.ts";
import type { ToolCall } from "../openai/tool-calls.ts";
import { inputMessages, responsesRequest, toChatRequest, type ResponsesRequest } from "../responses/responses-schema.ts";
import type { ServerContext } from "../http/server-context.ts";
import { startUpstreamChat } from "../chat/upstream-chat.ts";

export interface ResponsesOptions {
  store: ResponseStore;
  /** How long a stored response is kept (--responses-retention). */
  retentionMs: number;
}

const newId = (prefix: string) => `${prefix}_${randomUUID().replaceAll("-", "")}`;
/** Anonymous callers share one key id; their stored responses are theirs alike. */
const keyOf = (caller: Caller) => caller.keyId;

export function registerResponses(app: FastifyInstance, ctx: ServerContext, options: ResponsesOptions): void {
  const { store } = options;
  let lastPurgeMs = 0;
  const keep = async (stored: Parameters<ResponseStore["put"]>[0]) => {
    await store.put(stored, options.retentionMs);
    if (stored.createdMs - lastPurgeMs > 60_000) {
      lastPurgeMs = stored.createdMs;
      await store.purge(stored.createdMs);
    }
  };

  app.post("/v1/responses", async (request, reply) => {
    const body = parseBody(responsesRequest, request.body);
    const keyId = keyOf(request.caller);
    const previous = body.previous_response_id ? await store.get(body.previous_response_id, keyId) : null;
    if (body.previous_response_id && !previous) throw responseNotFound(body.previous_response_id);
    const input = await inputMessages(body.input, (id) => store.item(id, keyId));
    const conversation = [...(previous?.conversation ?? []), ...input] as Record<string, unknown>[];
    const chat = toChatRequest(body, conversation);
    const grammar = grammarOf(chat);
    const respond = async (attempt: ChatAttempt, run: PieceRun) => {
      const response = new ResponseBuilder(body, attempt.backend.id, previous?.id ?? null);
      const finished = await endPieces(run, () => (body.stream ? streamResponse(reply, attempt, run, response) : collectResponse(attempt, run, response)));
      if (finished && body.store !== false) {
        const items = response.items.map((item) => ({ id: item.id, item }));
        // NOTE: the client has its answer and the ledger its row: a store that fails now loses only the continuation.
        await keep({ id: response.id, keyId, createdMs: response.createdMs, response: finished, conversation: [...conversation, ...response.outputMessages()], items })
          .catch((err: unknown) => request.log.error({ err, responseId: response.id }, "storing a response failed; it cannot be retrieved or continued"));
      }
      return body.stream ? undefined : finished;
    };
    return serveRequest(ctx, request, reply, { model: chat.model, endpoint: "/v1/responses" }, {
      local: async (admitted) => respond(admitted, await startLocalPieces(admitted, chat, grammar, "input")),
      upstream: async (admitted) => respond(admitted, await startUpstreamChat(admitted, chat)),
    });
  });

  app.get<{ Params: { id: string } }>("/v1/responses/:id", async (request) => {
    const stored = await store.get(request.params.id, keyOf(request.caller));
    if (!stored) throw responseNotFound(request.params.id);
    return stored.response;
  });

  app.delete<{ Params: { id: string } }>("/v1/responses/:id", async (request) => {
    if (!(await store.delete(request.params.id, keyOf(request.caller)))) throw responseNotFound(request.params.id);
    return { id: request.params.id, object: "response", deleted: true };
  });
}

type Item = Record<string, unknown> & { id: string; type: string };

/** A response's object and output items, as they are built. */
class ResponseBuilder {
  readonly id = newId("resp");
  readonly createdMs = Date.now();
  readonly items: Item[] = [];
  numReasoningTokens = 0;

  constructor(private readonly body: ResponsesRequest, private readonly model: string, private readonly previousId: string | null) {}

  /** The response object in a status, with the items and usage so far. */
  object(status: "in_progress" | "completed" | "incomplete", usage: Usage | null): Record<string, unknown> {
    const { body } = this;
    return {
      id: this.id, object: "response", created_at: Math.floor(this.createdMs / 1000), status, error: null,
      incomplete_details: status === "incomplete" ? { reason: "max_output_tokens" } : null,
      instructions: body.instructions ?? null, max_output_tokens: body.max_output_tokens ?? null, model: this.model,
      output: status === "in_progress" ? [] : this.items, parallel_tool_calls: body.parallel_tool_calls ?? true,
      previous_response_id: this.previousId, reasoning: { effort: body.reasoning?.effort ?? null, summary: null }, store: body.store !== false,
      temperature: body.temperature ?? null, text: { format: body.text?.format ?? { type: "text" } }, tool_choice: body.tool_choice ?? "auto",
      tools: body.tools ?? [], top_p: body.top_p ?? null, truncation: "disabled", metadata: body.metadata ?? {}, user: body.user ?? null,
      usage: usage ? {
        input_tokens: usage.promptTokens, input_tokens_details: { cached_tokens: usage.cachedPromptTokens },
        output_tokens: usage.completionTokens, output_tokens_details: { reasoning_tokens: this.numReasoningTokens },
        total_tokens: usage.promptTokens + usage.completionTokens,
      } : null,
    };
  }

  reasoningItem(text: string): Item {
    return { id: newId("rs"), type: "reasoning", summary: [], content: [{ type: "reasoning_text", text }] };
  }

  messageItem(text: string, status = "completed"): Item {
    return { id: newId("msg"), type: "message", status, role: "assistant", content: status === "completed" ? [outputText(text)] : [] };
  }

  functionCallItem(call: ToolCall): Item {
    return { id: newId("fc"), type: "function_call", status: "completed", call_id: call.id, name: call.function.name, arguments: call.function.arguments };
  }

  /** This response's output as chat messages, for a continuation. */
  outputMessages(): Record<string, unknown>[] {
    const text = this.items.filter((i) => i.type === "message").map((i) => ((i.content as { text: string }[])[0]?.text ?? "")).join("");
    const calls = this.items.filter((i) => i.type === "function_call")
      .map((i) => ({ id: i.call_id, type: "function", function: { name: i.name, arguments: i.arguments } }));
    return [{ role: "assistant", content: text || (calls.length > 0 ? null : ""), ...(calls.length > 0 ? { tool_calls: calls } : {}) }];
  }
}

const outputText = (text: string) => ({ type: "output_text", text, annotations: [], logprobs: [] });

async function collectResponse(admitted: ChatAttempt, run: PieceRun, response: ResponseBuilder): Promise<Record<string, unknown>> {
  let reasoning = "";
  let content = "";
  let toolCalls: ToolCall[] = [];
  let finishReason: string | null | undefined;
  for (let next = run.first; !next.done; next = await run.pieces.next()) {
    const piece = next.value;
    response.numReasoningTokens += piece.reasoningTokens;
    reasoning += piece.reasoning;
    content += piece.content;
    toolCalls = piece.toolCalls;
    finishReason = piece.finishReason;
  }
  if (reasoning) response.items.push(response.reasoningItem(reasoning));
  if (content || toolCalls.length === 0) response.items.push(response.messageItem(content));
  response.items.push(...toolCalls.map((call) => response.functionCallItem(call)));
  await admitted.settle();
  return response.object(finishReason === "length" ? "incomplete" : "completed", admitted.usage);
}

/**
 * The typed stream, in OpenAI's order: response.created, response.in_progress, then for each
 * output item output_item.added, its parts and deltas, their .done events and output_item.done,
 * then response.completed (or response.incomplete). A failure mid-stream is an `error` event.
 * Returns the final response object, or null when the stream did not finish.
 */
async function streamResponse(reply: FastifyReply, admitted: ChatAttempt, run: PieceRun, response: ResponseBuilder): Promise<Record<string, unknown> | null> {
  admitted.commit();
  reply.hijack();
  const sse = new SseStream(reply.raw);
  let sequence = 0;
  const emit = (type: string, data: Record<string, unknown>) => sse.event(type, { type, sequence_number: sequence++, ...data });
  let open: { item: Item; kind: "reasoning" | "message"; text: string } | null = null;
  const index = () => response.items.length;
  const begin = async (kind: "reasoning" | "message") => {
    if (open?.kind === kind) return;
    await end();
    const item = kind === "reasoning" ? { ...response.reasoningItem(""), content: [] } : response.messageItem("", "in_progress");
    open = { item, kind, text: "" };
    await emit("response.output_item.added", { output_index: index(), item });
    if (kind === "message") await emit("response.content_part.added", { item_id: item.id, output_index: index(), content_index: 0, part: outputText("") });
  };
  const end = async () => {
    if (!open) return;
    const { item, kind, text } = open;
    const done = kind === "reasoning" ? { ...item, content: [{ type: "reasoning_text", text }] } : { ...item, status: "completed", content: [outputText(text)] };
    if (kind === "reasoning") await emit("response.reasoning_text.done", { item_id: item.id, output_index: index(), content_index: 0, text });
    else {
      await emit("response.output_text.done", { item_id: item.id, output_index: index(), content_index: 0, text, logprobs: [] });
      await emit("response.content_part.done", { item_id: item.id, output_index: index(), content_index: 0, part: outputText(text) });
    }
    await emit("response.output_item.done", { output_index: index(), item: done });
    response.items.push(done);
    open = null;
  };
  try {
    await emit("response.created", { response: response.object("in_progress", null) });
    await emit("response.in_progress", { response: response.object("in_progress", null) });
    let toolCalls: ToolCall[] = [];
    let finishReason: string | null | undefined;
    for (let next = run.first; !next.done && !sse.closed; next = await run.pieces.next()) {
      const split = next.value;
      response.numReasoningTokens += split.reasoningTokens;
      if (split.reasoning) {
        await begin("reasoning");
        open!.text += split.reasoning;
        await emit("response.reasoning_text.delta", { item_id: open!.item.id, output_index: index(), content_index: 0, delta: split.reasoning });
      }
      if (split.content) {
        await begin("message");
        open!.text += split.content;
        await emit("response.output_text.delta", { item_id: open!.item.id, output_index: index(), content_index: 0, delta: split.content, logprobs: [] });
      }
      toolCalls = split.toolCalls;
      finishReason = split.finishReason;
    }
    if (sse.closed) return null;
    if (toolCalls.length === 0 && (open === null || (open as { kind: string }).kind === "reasoning")) await begin("message");
    await end();
    for (const call of toolCalls) {
      const item = response.functionCallItem(call);
      await emit("response.output_item.added", { output_index: index(), item: { ...item, status: "in_progress", arguments: "" } });
      await emit("response.function_call_arguments.delta", { item_id: item.id, output_index: index(), delta: item.arguments });
      await emit("response.function_call_arguments.done", { item_id: item.id, output_index: index(), arguments: item.arguments });
      await emit("response.output_item.done", { output_index: index(), item });
      response.items.push(item);
    }
    await admitted.settle();
    const status = finishReason === "length" ? "incomplete" : "completed";
    const final = response.object(status, admitted.usage);
    await emit(`response.${status}`, { response: final });
    sse.close();
    return final;
  } catch (err) {
    admitted.fail(err);
    await admitted.settle();
    const apiError = toApiError(err);
    await emit("error", { code: apiError.code, message: apiError.message, param: apiError.param });
    sse.close();
    return null;
  }
}
