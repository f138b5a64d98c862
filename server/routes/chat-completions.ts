/** POST /v1/chat/completions: OpenAI's chat API, streamed over SSE or returned whole. */
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply } from "fastify";
import type { Admitted } from "../http/request-scope.ts";
import { serveRequest } from "../http/serve-request.ts";
import { proxyToUpstream } from "../upstream/upstream-proxy.ts";
import { Choices, openAiUsage } from "../openai/choices.ts";
import type { EngineOutput, GrammarSpec } from "../backends/engine-api.ts";
import { inMessages } from "../openai/to-engine-request.ts";
import { nowSeconds, parseBody } from "../http/http-helpers.ts";
import { chatCompletionRequest, type ChatCompletionRequest } from "../openai/schemas.ts";
import type { ServerContext } from "../server-context.ts";
import { SseStream } from "../http/sse.ts";
import { OutputSplitter, splitOutput, startChat, toolParsingFor } from "../openai/chat-run.ts";
import { grammarOf } from "../openai/structured-outputs.ts";

export function registerChatCompletions(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/chat/completions", async (request, reply) => {
    const body = parseBody(chatCompletionRequest, request.body);
    const grammar = grammarOf(body);
    return serveRequest(ctx, request, reply, { model: body.model, endpoint: "/v1/chat/completions", numSequences: body.n }, {
      local: (admitted) => serveLocal(reply, body, grammar, admitted),
      upstream: (admitted) => proxyToUpstream(admitted, reply, {
        path: "/chat/completions", body: request.body as Record<string, unknown>, stream: body.stream === true,
        includeUsage: body.stream_options?.include_usage === true, promptText: JSON.stringify(body.messages),
        maxTokens: body.max_completion_tokens ?? body.max_tokens ?? null,
      }),
    });
  });
}

async function serveLocal(reply: FastifyReply, body: ChatCompletionRequest, grammar: GrammarSpec | undefined, admitted: Admitted): Promise<unknown> {
  const { backend } = admitted;
  try {
    const { first, outputs } = await startChat(admitted, body, grammar);
    const head = { id: `chatcmpl-${randomUUID()}`, object: "chat.completion", created: nowSeconds(), model: backend.id };
    const parseTools = toolParsingFor(backend, body);
    if (body.stream) return await streamChat(reply, body, head, { first, outputs, admitted }, parseTools);
    const choices = new Choices(body.n);
    for (let next = first; !next.done; next = await outputs.next()) choices.add(next.value);
    const response = {
      ...head,
      choices: choices.choices.map((c) => {
        const { reasoning, content, toolCalls } = splitOutput(c.text, backend.reasoningParser, parseTools);
        const withReasoning = backend.reasoningParser ? { reasoning_content: reasoning || null } : {};
        return {
          index: c.index,
          message: toolCalls.length > 0
            ? { role: "assistant", content: content || null, ...withReasoning, tool_calls: toolCalls }
            : { role: "assistant", content, ...withReasoning },
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

interface Run {
  first: IteratorResult<EngineOutput>;
  outputs: AsyncIterator<EngineOutput>;
  admitted: Admitted;
}

/**
 * Each engine output becomes one chunk (a delta, possibly empty, per generated token);
 * a finished choice then gets its tool calls, if any, and a chunk with its finish_reason.
 */
async function streamChat(reply: FastifyReply, body: ChatCompletionRequest, head: Head, { first, outputs, admitted }: Run, parseTools: boolean): Promise<void> {
  admitted.commit();
  reply.hijack();
  const sse = new SseStream(reply.raw);
  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choice: unknown) => ({
    ...head, object: "chat.completion.chunk", choices: [choice], ...(includeUsage ? { usage: null } : {}),
  });
  const choices = new Choices(body.n);
  const splitters = new Map<number, OutputSplitter>();
  await sse.settledRun(admitted, async () => {
    for (let next = first; !next.done && !sse.closed; next = await outputs.next()) {
      const output = next.value;
      const index = output.index;
      const choice = choices.add(output);
      if (!splitters.has(index)) {
        splitters.set(index, new OutputSplitter(admitted.backend.reasoningParser, parseTools));
        await sse.send(chunk({ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }));
      }
      const { reasoning, content: text, toolCalls } = splitters.get(index)!.push(output.text, Boolean(output.finishReason));
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

type Logprob = NonNullable<EngineOutput["logprobs"]>[number];

function chatLogprob(entry: Logprob) {
  return {
    token: entry.token ?? "",
    logprob: entry.logprob,
    bytes: entry.bytes ?? null,
    top_logprobs: entry.top.map((t) => ({ token: t.token ?? "", logprob: t.logprob, bytes: t.bytes ?? null })),
  };
}
