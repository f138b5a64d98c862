/**
 * Serves a chat or completions request by an upstream model: the client's own body goes up
 * with the upstream's model name (and, streamed, include_usage, so that the usage is the
 * upstream's own count), and the answer comes back in OpenAI's shape, streamed through
 * without buffering. The response names the served model and carries the cost, as local ones do.
 */
import type { FastifyReply } from "fastify";
import type { UpstreamAdmitted } from "../backends/admitted.ts";
import { SseStream } from "./sse.ts";
import type { UpstreamCall } from "../upstream/upstream-provider.ts";
import { badResponse, openaiUsage, parseJson, upstreamChunks } from "../upstream/upstream-stream.ts";

export interface ProxyRequest {
  /** /chat/completions or /completions, under the provider's base URL. */
  path: string;
  /** The client's body, as it sent it. */
  body: Record<string, unknown>;
  stream: boolean;
  includeUsage: boolean;
  /** The text the prompt is made of, for the budget's hold: its UTF-8 bytes bound its tokens. */
  promptText: string;
  maxTokens: number | null;
}

export async function proxyToUpstream(admitted: UpstreamAdmitted, reply: FastifyReply, request: ProxyRequest): Promise<unknown> {
  const { backend } = admitted;
  // NOTE: a byte-level BPE token is at least one byte, so the prompt's bytes (with its JSON framing, for the chat template's tokens) bound its tokens.
  await admitted.reserve(Buffer.byteLength(request.promptText), request.maxTokens);
  const body: { model: string } & Record<string, unknown> = {
    ...request.body, model: backend.upstreamModel,
    ...(request.stream ? { stream_options: { ...(request.body.stream_options as object | undefined), include_usage: true } } : {}),
  };
  const call = await backend.provider.send(request.path, body, admitted.signal);
  let failure: unknown;
  try {
    if (request.stream) return await streamThrough(admitted, reply, call, request.includeUsage);
    const text = Buffer.concat(await collect(call.body())).toString("utf8");
    const json = parseJson(text, backend.provider.name) as { model?: string; usage?: unknown; choices?: unknown[] };
    if (!json || typeof json !== "object") throw badResponse(backend.provider.name, "it is not a JSON object");
    const generates = request.maxTokens !== 0;
    admitted.sent(1, generates ? JSON.stringify(json.choices ?? []) : "");
    admitted.report(json.usage, generates);
    const cost = await admitted.cost();
    await admitted.settle();
    return { ...json, model: backend.id, usage: { ...usageBody(admitted, generates), ...(cost !== null ? { cost: cost / 1_000_000 } : {}) } };
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    call.release(failure);
  }
}

/**
 * NOTE: the response begins (200, SSE) only once the upstream's first chunk has been read: an
 * upstream that answers 200 and then stalls, closes or sends garbage fails before anything
 * reaches the client, so the route can still fall back.
 */
async function streamThrough(admitted: UpstreamAdmitted, reply: FastifyReply, call: UpstreamCall, includeUsage: boolean): Promise<void> {
  const { backend } = admitted;
  const chunks = upstreamChunks(call.body(), backend.provider.name);
  const first = await chunks.next();
  admitted.commit();
  reply.hijack();
  const sse = new SseStream(reply.raw);
  const usageChunk = async (data: Record<string, unknown>) => {
    const cost = await admitted.cost();
    await sse.send({ ...data, model: backend.id, usage: { ...usageBody(admitted, true), ...(cost !== null ? { cost: cost / 1_000_000 } : {}) } });
  };
  // NOTE: the stream's error goes to the client as an SSE error event; its breaker hears of it here.
  await sse.settledRun(admitted, () => streamChunks().catch((err: unknown) => {
    call.release(err);
    throw err;
  }));

  async function streamChunks(): Promise<void> {
    let last: Record<string, unknown> | null = null;
    for (let next = first; !next.done; next = await chunks.next()) {
      const data = next.value;
      last = data;
      if (data.usage) admitted.report(data.usage);
      const choices = data.choices ?? [];
      if (choices.length === 0 && data.usage) {
        if (includeUsage) await usageChunk(data);
        continue;
      }
      admitted.sent(choices.filter(hasContent).length);
      const { usage: _usage, ...rest } = data;
      // NOTE: a usage on a content chunk is the checked one too: the client is told what the ledger holds.
      await sse.send({ ...rest, ...(includeUsage && data.usage ? { usage: usageBody(admitted, true) } : {}), model: backend.id });
      if (sse.closed) break;
    }
    if (sse.closed || admitted.reported) return;
    // The upstream sent no usage: the client is told (and billed) what was seen.
    admitted.report(undefined);
    if (includeUsage) await usageChunk({ id: last?.id, object: last?.object ?? "chat.completion.chunk", created: last?.created, choices: [] });
  }
}

/** The usage the client is told: what the ledger holds, in OpenAI's shape. */
function usageBody(admitted: UpstreamAdmitted, generates: boolean): Record<string, unknown> {
  const body = openaiUsage(admitted.usage, admitted.reasoningTokens);
  if (generates) return body;
  const { promptTokens } = admitted.usage;
  return { prompt_tokens: promptTokens, total_tokens: promptTokens };
}

/** Whether a chunk's choice carries output: text, a tool call, or reasoning. */
function hasContent(choice: unknown): boolean {
  const c = choice as { text?: string; delta?: { content?: string | null; tool_calls?: unknown[]; reasoning_content?: string | null } };
  return Boolean(c.text || c.delta?.content || c.delta?.tool_calls?.length || c.delta?.reasoning_content);
}

async function collect(bytes: AsyncIterable<Uint8Array>): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of bytes) chunks.push(chunk);
  return chunks;
}
