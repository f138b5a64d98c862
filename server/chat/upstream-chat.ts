/**
 * A translating endpoint's request (Responses, Messages) served by an upstream model: the chat
 * request it translates to goes up as a streamed chat completion (with include_usage, so the
 * usage is the upstream's own count), and its chunks come back as the pieces a local run gives.
 * Fields only tokenmill and vLLM know (top_k, chat_template_kwargs) are left out, since
 * OpenAI refuses what it doesn't know.
 */
import type { UpstreamAdmitted } from "../backends/admitted.ts";
import type { ChatPiece, PieceRun } from "./chat-pieces.ts";
import type { ChatCompletionRequest } from "../openai/schemas.ts";
import type { ToolCall } from "../openai/tool-calls.ts";
import { upstreamChunks, type UpstreamChunk, type UpstreamUsage } from "../upstream/upstream-stream.ts";

/** The chat request's fields that OpenAI's chat API takes. */
const OPENAI_FIELDS = [
  "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
  "logit_bias", "tools", "tool_choice", "parallel_tool_calls", "response_format", "user", "n",
] as const;

interface Chunk extends UpstreamChunk {
  choices?: {
    delta?: { content?: string | null; reasoning_content?: string | null; reasoning?: string | null; tool_calls?: ToolCallDelta[] };
    finish_reason?: string | null;
    stop_reason?: string | number | null;
  }[];
  usage?: UpstreamUsage | null;
}

interface ToolCallDelta {
  index?: number;
  id?: string;
  function?: { name?: string; arguments?: string };
}

export async function startUpstreamChat(admitted: UpstreamAdmitted, chat: ChatCompletionRequest): Promise<PieceRun> {
  const { backend } = admitted;
  const maxTokens = chat.max_completion_tokens ?? chat.max_tokens ?? null;
  // NOTE: a byte-level BPE token is at least one byte, so the messages' bytes bound the prompt's tokens (as the chat proxy holds them).
  await admitted.reserve(Buffer.byteLength(JSON.stringify(chat.messages)), maxTokens);
  const body: { model: string } & Record<string, unknown> = { model: backend.upstreamModel, stream: true, stream_options: { include_usage: true } };
  for (const field of OPENAI_FIELDS) if (chat[field] !== undefined && chat[field] !== null) body[field] = chat[field];
  const call = await backend.provider.send("/chat/completions", body, admitted.signal);
  const pieces = upstreamPieces(admitted, call.body(), (failure) => call.release(failure));
  return { pieces, first: await pieces.next(), numPromptTokens: null, numCachedPromptTokens: null };
}

async function* upstreamPieces(admitted: UpstreamAdmitted, bytes: AsyncIterable<Uint8Array>, release: (failure?: unknown) => void): AsyncGenerator<ChatPiece> {
  let failure: unknown;
  const calls: ToolCall[] = [];
  let finishReason: string | null = null;
  let stopReason: string | number | null = null;
  try {
    for await (const data of upstreamChunks(bytes, admitted.backend.provider.name) as AsyncGenerator<Chunk>) {
      if (data.usage) admitted.report(data.usage);
      const choice = data.choices?.[0];
      if (!choice) continue;
      const delta = choice.delta ?? {};
      for (const d of delta.tool_calls ?? []) addToolCallDelta(calls, d);
      finishReason = choice.finish_reason ?? finishReason;
      stopReason = choice.stop_reason ?? stopReason;
      const reasoning = delta.reasoning_content ?? delta.reasoning ?? "";
      const content = delta.content ?? "";
      if (reasoning || content) {
        admitted.sent(1);
        yield { index: 0, text: reasoning + content, numTokens: 1, reasoning, content, toolCalls: [], reasoningTokens: 0 };
      }
    }
    if (calls.length > 0) admitted.sent(1, calls.map((c) => c.function.name + c.function.arguments).join(""));
    // NOTE: no usage from the upstream: the pieces' reader tells the client the usage that was seen, which is what the ledger holds.
    if (!admitted.reported) admitted.report(undefined);
    yield { index: 0, text: "", numTokens: 0, reasoning: "", content: "", toolCalls: calls, finishReason: finishReason ?? "stop", stopReason, reasoningTokens: admitted.reasoningTokens };
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    release(failure);
  }
}

/** Streamed tool calls arrive in pieces by index: the id and name first, the arguments in parts. */
function addToolCallDelta(calls: ToolCall[], delta: ToolCallDelta): void {
  const index = delta.index ?? calls.length;
  calls[index] ??= { id: delta.id ?? `call_${index}`, type: "function", function: { name: "", arguments: "" } };
  const call = calls[index];
  if (delta.id) call.id = delta.id;
  if (delta.function?.name) call.function.name += delta.function.name;
  if (delta.function?.arguments) call.function.arguments += delta.function.arguments;
}
