/** POST /v1/chat/completions: OpenAI's chat API, streamed over SSE or returned whole. */
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply } from "fastify";
import { checkModelAccess } from "../http/auth.ts";
import { openRequest, type Admitted } from "../http/admission.ts";
import { serveRoute } from "../http/serve-route.ts";
import { proxyToUpstream } from "../upstream/upstream-proxy.ts";
import { Choices, openAiUsage } from "../openai/choices.ts";
import type { EngineOutput, GrammarSpec } from "../backends/engine-api.ts";
import { inMessages, toEngineRequest } from "../openai/to-engine-request.ts";
import { nowSeconds, onClientGone, parseBody, setRawHeaders } from "../http/http-helpers.ts";
import { toChatMessage } from "../openai/chat-messages.ts";
import { chatCompletionRequest, type ChatCompletionRequest } from "../openai/schemas.ts";
import type { LocalBackend } from "../backends/model-backend.ts";
import type { ServerContext } from "../server-context.ts";
import { SseStream } from "../http/sse.ts";
import { ToolCallStream, parseToolCalls, type ToolCall } from "../openai/tool-calls.ts";
import { ReasoningStream, splitReasoning } from "../openai/reasoning.ts";
import { grammarOf, grammarWritesToolCalls } from "../openai/structured-outputs.ts";

export function registerChatCompletions(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/chat/completions", async (request, reply) => {
    const body = parseBody(chatCompletionRequest, request.body);
    const route = ctx.models.resolve(body.model);
    checkModelAccess(request.caller, route.name);
    const grammar = grammarOf(body);
    const scope = openRequest(ctx, {
      requestId: request.id, caller: request.caller, setHeaders: setRawHeaders(reply), priority: request.caller.key?.priority, endpoint: request.routeOptions.url ?? request.url,
      numSequences: body.n, onClientGone: (abort) => onClientGone(reply, abort), route: route.name,
    });
    try {
      return await serveRoute(ctx, route, scope, {
        local: (admitted) => serveLocal(reply, body, grammar, admitted),
        upstream: (admitted) => proxyToUpstream(admitted, reply, {
          path: "/chat/completions", body: request.body as Record<string, unknown>, stream: body.stream === true,
          includeUsage: body.stream_options?.include_usage === true, promptText: JSON.stringify(body.messages),
          maxTokens: body.max_completion_tokens ?? body.max_tokens ?? null,
        }),
      });
    } catch (err) {
      scope.fail(err);
      throw err;
    } finally {
      scope.release();
    }
  });
}

async function serveLocal(reply: FastifyReply, body: ChatCompletionRequest, grammar: GrammarSpec | undefined, admitted: Admitted): Promise<unknown> {
  const { backend } = admitted;
  try {
    const { promptTokenIds } = await admitted.tokenizer.applyChatTemplate(body.messages.map(toChatMessage), {
      addGenerationPrompt: body.add_generation_prompt ?? true,
      tools: body.tools ?? undefined,
      kwargs: body.chat_template_kwargs ?? undefined,
      maxTokens: admitted.engine.info.maxModelLen,
    });
    const engineRequest = toEngineRequest(body, promptTokenIds, backend.defaults, {
      maxTokens: body.max_completion_tokens ?? body.max_tokens,
      logprobs: body.logprobs ? (body.top_logprobs ?? 0) : undefined,
      grammar,
    });
    const outputs = admitted.generate(engineRequest);
    // NOTE: the first output is awaited before any byte is sent, so an engine rejection still gets its HTTP status.
    const first = await outputs.next();
    const head = { id: `chatcmpl-${randomUUID()}`, object: "chat.completion", created: nowSeconds(), model: backend.id };
    const parseTools = toolParsingFor(backend, body);
    if (body.stream) return await streamChat(reply, body, head, { first, outputs, admitted }, parseTools);
    const choices = new Choices(body.n);
    for (let next = first; !next.done; next = await outputs.next()) choices.add(next.value);
    const response = {
      ...head,
      choices: choices.choices.map((c) => {
        const parser = backend.reasoningParser;
        const split = parser ? splitReasoning(parser, c.text) : { reasoning: "", content: c.text };
        const { content, toolCalls } = parseTools ? parseToolCalls(split.content) : { content: split.content, toolCalls: [] };
        const reasoning = parser ? { reasoning_content: split.reasoning || null } : {};
        return {
          index: c.index,
          message: toolCalls.length > 0 ? { role: "assistant", content: content || null, ...reasoning, tool_calls: toolCalls } : { role: "assistant", content, ...reasoning },
          logprobs: body.logprobs ? { content: c.logprobs.map(chatLogprob) } : null,
          finish_reason: toolCalls.length > 0 && c.finishReason === "stop" ? "tool_calls" : c.finishReason,
          stop_reason: c.stopReason,
        };
      }),
      usage: openAiUsage(admitted.usage, await admitted.cost()),
    };
    await admitted.settle();
    return response;
  } catch (err) {
    throw inMessages(err);
  }
}

type Head = { id: string; object: string; created: number; model: string };

/**
 * Tool calls are parsed when the request offers tools and the server has a parser for this
 * model's format, and always when the request forces a call (its grammar writes that format).
 */
function toolParsingFor(backend: LocalBackend, body: ChatCompletionRequest): boolean {
  if (grammarWritesToolCalls(body)) return true;
  return backend.toolCallParser === "hermes" && (body.tools?.length ?? 0) > 0 && body.tool_choice !== "none";
}

/**
 * Each engine output becomes one chunk (a delta, possibly empty, per generated token);
 * a finished choice then gets its tool calls, if any, and a chunk with its finish_reason.
 */
interface Run {
  first: IteratorResult<EngineOutput>;
  outputs: AsyncIterator<EngineOutput>;
  admitted: Admitted;
}

async function streamChat(reply: FastifyReply, body: ChatCompletionRequest, head: Head, { first, outputs, admitted }: Run, parseTools: boolean): Promise<void> {
  admitted.commit();
  reply.hijack();
  const sse = new SseStream(reply.raw);
  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choice: unknown) => ({
    ...head, object: "chat.completion.chunk", choices: [choice], ...(includeUsage ? { usage: null } : {}),
  });
  const choices = new Choices(body.n);
  const toolStreams = new Map<number, ToolCallStream>();
  const parser = admitted.backend.reasoningParser;
  const reasoningStreams = new Map<number, ReasoningStream>();
  await sse.settledRun(admitted, async () => {
    for (let next = first; !next.done && !sse.closed; next = await outputs.next()) {
      const output = next.value;
      const index = output.index;
      const choice = choices.add(output);
      if (!toolStreams.has(index)) {
        toolStreams.set(index, new ToolCallStream());
        await sse.send(chunk({ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }));
      }
      const toolStream = toolStreams.get(index)!;
      let reasoning = "";
      let answer = output.text;
      if (parser) {
        const reasoningStream = reasoningStreams.get(index) ?? new ReasoningStream(parser);
        reasoningStreams.set(index, reasoningStream);
        const split = reasoningStream.push(output.text);
        const rest = output.finishReason ? reasoningStream.finish() : { reasoning: "", content: "" };
        reasoning = split.reasoning + rest.reasoning;
        answer = split.content + rest.content;
      }
      let text = parseTools ? toolStream.push(answer) : answer;
      let toolCalls: ToolCall[] = [];
      if (output.finishReason && parseTools) ({ content: text, toolCalls } = appendFinished(text, toolStream.finish()));
      if (output.newTokenIds.length > 0 || text || reasoning) {
        const logprobs = body.logprobs && output.logprobs ? { content: output.logprobs.map(chatLogprob) } : null;
        const delta = { ...(reasoning ? { reasoning_content: reasoning } : {}), ...(text ? { content: text } : {}) };
        await sse.send(chunk({ index, delta, logprobs, finish_reason: null }));
      }
      if (toolCalls.length > 0) {
        await sse.send(chunk({ index, delta: { tool_calls: toolCalls.map((call, i) => ({ index: i, ...call })) }, logprobs: null, finish_reason: null }));
      }
      if (output.finishReason) {
        const finishReason = toolCalls.length > 0 && choice.finishReason === "stop" ? "tool_calls" : choice.finishReason;
        await sse.send(chunk({ index, delta: {}, logprobs: null, finish_reason: finishReason, stop_reason: choice.stopReason }));
      }
    }
    if (includeUsage) await sse.send({ ...head, object: "chat.completion.chunk", choices: [], usage: openAiUsage(admitted.usage, await admitted.cost()) });
  });
}

function appendFinished(text: string, held: { content: string; toolCalls: ToolCall[] }): { content: string; toolCalls: ToolCall[] } {
  return { content: text + held.content, toolCalls: held.toolCalls };
}

type Logprob = NonNullable<EngineOutput["logprobs"]>[number];

function chatLogprob(entry: Logprob) {
  return {
    token: entry.token ?? "",
    logprob: entry.logprob,
    bytes: entry.bytes ?? null,
    top_logprobs: entry.top.map((t) => ({ token: t.token ?? "", logprob: t.logprob, bytes: t.bytes ?? null })),
  };
}
