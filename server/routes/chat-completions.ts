/** POST /v1/chat/completions: OpenAI's chat API, streamed over SSE or returned whole. */
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply } from "fastify";
import { admit } from "../admission.ts";
import { invalidRequest } from "../api-error.ts";
import { Choices, finishReasonOf, usageOf, type ChoiceState } from "../choices.ts";
import type { ChatMessage, EngineOutput } from "../engine-api.ts";
import { toEngineRequest } from "../engine-request.ts";
import { nowSeconds, onClientGone, parseBody, requireModel } from "../http-helpers.ts";
import { chatCompletionRequest, type ChatCompletionRequest, type ChatMessageInput } from "../schemas.ts";
import type { ServerContext } from "../server-context.ts";
import { SseStream } from "../sse.ts";

export function registerChatCompletions(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/chat/completions", async (request, reply) => {
    const body = parseBody(chatCompletionRequest, request.body);
    requireModel(ctx, body.model);
    rejectConstrainedDecoding(body);
    const admitted = admit(ctx, body.n, (abort) => onClientGone(reply, abort));
    try {
      const { promptTokenIds } = await admitted.tokenizer.applyChatTemplate(body.messages.map(toChatMessage), {
        addGenerationPrompt: body.add_generation_prompt ?? true,
        tools: body.tools ?? undefined,
        kwargs: body.chat_template_kwargs ?? undefined,
      });
      const engineRequest = toEngineRequest(body, promptTokenIds, ctx, {
        promptParam: "messages",
        maxTokens: body.max_completion_tokens ?? body.max_tokens,
        logprobs: body.logprobs ? (body.top_logprobs ?? 0) : undefined,
      });
      const outputs = admitted.engine.add(engineRequest, admitted.signal)[Symbol.asyncIterator]();
      // NOTE: the first output is awaited before any byte is sent, so an engine rejection still gets its HTTP status.
      const first = await outputs.next();
      const head = { id: `chatcmpl-${randomUUID()}`, object: "chat.completion", created: nowSeconds(), model: ctx.modelId };
      if (body.stream) return await streamChat(reply, body, head, first, outputs);
      const choices = new Choices(body.n);
      for (let next = first; !next.done; next = await outputs.next()) choices.add(next.value);
      return {
        ...head,
        choices: choices.choices.map((c) => ({
          index: c.index,
          message: { role: "assistant", content: c.text },
          logprobs: body.logprobs ? { content: c.logprobs.map(chatLogprob) } : null,
          finish_reason: finishReasonOf(c),
          stop_reason: c.stopReason,
        })),
        usage: usageOf([choices]),
      };
    } finally {
      admitted.release();
    }
  });
}

/**
 * NOTE: tokenmill has no constrained decoding yet. Ignoring a JSON schema or a forced tool
 * call would return output that breaks the client's contract, so such requests fail loudly.
 */
function rejectConstrainedDecoding(body: ChatCompletionRequest): void {
  const format = body.response_format?.type;
  if (format && format !== "text") {
    throw invalidRequest(`response_format type "${format}" is not supported: tokenmill has no constrained decoding yet; use "text"`, "response_format.type");
  }
  const choice = body.tool_choice;
  if (choice === "required" || (choice && typeof choice === "object")) {
    throw invalidRequest("tool_choice that forces a tool call is not supported: tokenmill has no constrained decoding yet; use \"auto\" or \"none\"", "tool_choice");
  }
}

type Head = { id: string; object: string; created: number; model: string };

async function streamChat(
  reply: FastifyReply, body: ChatCompletionRequest, head: Head,
  first: IteratorResult<EngineOutput>, outputs: AsyncIterator<EngineOutput>,
): Promise<void> {
  reply.hijack();
  const sse = new SseStream(reply.raw);
  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choices: unknown[], usage?: unknown) => ({
    ...head, object: "chat.completion.chunk", choices, ...(includeUsage ? { usage: usage ?? null } : {}),
  });
  const choices = new Choices(body.n);
  const started = new Set<number>();
  try {
    for (let next = first; !next.done && !sse.closed; next = await outputs.next()) {
      const output = next.value;
      const choice = choices.add(output);
      if (!started.has(output.index)) {
        started.add(output.index);
        await sse.send(chunk([{ index: output.index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]));
      }
      await sse.send(chunk([deltaOf(choice, output, body.logprobs === true)]));
    }
    if (includeUsage) await sse.send(chunk([], usageOf([choices])));
  } catch (err) {
    await sse.send({ error: { message: (err as Error).message, type: "server_error", param: null, code: null } });
  }
  sse.end();
}

function deltaOf(choice: ChoiceState, output: EngineOutput, withLogprobs: boolean) {
  return {
    index: output.index,
    delta: output.text ? { content: output.text } : {},
    logprobs: withLogprobs && output.logprobs ? { content: output.logprobs.map(chatLogprob) } : null,
    finish_reason: output.finishReason ? finishReasonOf(choice) : null,
    ...(output.finishReason ? { stop_reason: choice.stopReason } : {}),
  };
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

function toChatMessage(message: ChatMessageInput): ChatMessage {
  const text = (content: ChatMessageInput["content"]) =>
    content == null ? "" : typeof content === "string" ? content : content.map((part) => part.text).join("");
  const out: ChatMessage = { role: message.role === "developer" ? "system" : message.role, content: text(message.content) };
  if ("name" in message && message.name) out.name = message.name;
  if ("tool_calls" in message && message.tool_calls) {
    // NOTE: chat templates (Qwen's among them) read tool call arguments as objects.
    out.tool_calls = message.tool_calls.map((call) => ({ ...call, function: { name: call.function.name, arguments: parseArguments(call.function.arguments) } }));
  }
  if ("tool_call_id" in message) out.tool_call_id = message.tool_call_id;
  return out;
}

function parseArguments(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
