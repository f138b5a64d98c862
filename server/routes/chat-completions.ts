/** POST /v1/chat/completions: OpenAI's chat API, streamed over SSE or returned whole. */
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply } from "fastify";
import type { Admitted } from "../backends/admitted.ts";
import { serveRequest } from "../http/serve-request.ts";
import { proxyToUpstream } from "../http/upstream-proxy.ts";
import { openAiUsage } from "../openai/choices.ts";
import type { GrammarSpec } from "../common/engine-api.ts";
import { endPieces, startLocalPieces, type PieceLogprob, type PieceRun } from "../chat/chat-pieces.ts";
import { inMessages } from "../openai/to-engine-request.ts";
import { nowSeconds } from "../http/http-helpers.ts";
import { parseBody } from "../common/parse-body.ts";
import { chatCompletionRequest, type ChatCompletionRequest } from "../openai/schemas.ts";
import type { ServerContext } from "../http/server-context.ts";
import { SseStream } from "../http/sse.ts";
import { splitOutput, toolParsingFor } from "../chat/chat-run.ts";
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
    const run = await startLocalPieces(admitted, body, grammar, "messages");
    const head = { id: `chatcmpl-${randomUUID()}`, object: "chat.completion", created: nowSeconds(), model: backend.id };
    const parseTools = toolParsingFor(backend, body);
    if (body.stream) return await streamChat(reply, body, head, run, admitted);
    const choices = Array.from({ length: body.n }, (_, index) => ({ index, text: "", logprobs: [] as Logprob[], finishReason: null as string | null, stopReason: null as string | number | null }));
    await endPieces(run, async () => {
      for (let next = run.first; !next.done; next = await run.pieces.next()) {
        const piece = next.value;
        const choice = choices[piece.index];
        choice.text += piece.text;
        choice.logprobs.push(...(piece.logprobs ?? []));
        if (piece.finishReason) choice.finishReason = piece.finishReason;
        if (piece.stopReason !== undefined) choice.stopReason = piece.stopReason;
      }
    });
    const response = {
      ...head,
      choices: choices.map((c) => {
        // NOTE: a whole answer is split once, from its whole text.
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

/**
 * Each piece becomes one chunk (a delta, possibly empty, per generated token); a finished
 * choice then gets its tool calls, if any, and a chunk with its finish_reason.
 */
async function streamChat(reply: FastifyReply, body: ChatCompletionRequest, head: Head, run: PieceRun, admitted: Admitted): Promise<void> {
  admitted.commit();
  reply.hijack();
  const sse = new SseStream(reply.raw);
  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choice: unknown) => ({
    ...head, object: "chat.completion.chunk", choices: [choice], ...(includeUsage ? { usage: null } : {}),
  });
  const started = new Set<number>();
  const stopReasons = new Map<number, string | number | null>();
  await sse.settledRun(admitted, () => endPieces(run, async () => {
    for (let next = run.first; !next.done && !sse.closed; next = await run.pieces.next()) {
      const { index, reasoning, content, toolCalls, numTokens, logprobs, finishReason, stopReason } = next.value;
      if (!started.has(index)) {
        started.add(index);
        await sse.send(chunk({ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }));
      }
      if (stopReason !== undefined) stopReasons.set(index, stopReason);
      if (numTokens > 0 || content || reasoning) {
        const chunkLogprobs = body.logprobs && logprobs ? { content: logprobs.map(chatLogprob) } : null;
        const delta = { ...(reasoning ? { reasoning_content: reasoning } : {}), ...(content ? { content } : {}) };
        await sse.send(chunk({ index, delta, logprobs: chunkLogprobs, finish_reason: null }));
      }
      if (toolCalls.length > 0) {
        await sse.send(chunk({ index, delta: { tool_calls: toolCalls.map((call, i) => ({ index: i, ...call })) }, logprobs: null, finish_reason: null }));
      }
      if (finishReason) {
        const finish = toolCalls.length > 0 && finishReason === "stop" ? "tool_calls" : finishReason;
        await sse.send(chunk({ index, delta: {}, logprobs: null, finish_reason: finish, stop_reason: stopReasons.get(index) ?? null }));
      }
    }
    if (includeUsage) await sse.send({ ...head, object: "chat.completion.chunk", choices: [], usage: openAiUsage(admitted.usage, await admitted.cost()) });
  }));
}

type Logprob = PieceLogprob;

function chatLogprob(entry: Logprob) {
  return {
    token: entry.token ?? "",
    logprob: entry.logprob,
    bytes: entry.bytes ?? null,
    top_logprobs: entry.top.map((t) => ({ token: t.token ?? "", logprob: t.logprob, bytes: t.bytes ?? null })),
  };
}
