/**
 * An upstream's streamed chat or completions answer, read as OpenAI-compatible servers send it:
 * one JSON chunk per SSE event, up to `data: [DONE]`. A chunk that is not JSON, or a stream that
 * ends before [DONE], is a bad response (a 502); an error chunk mid-stream is the upstream's failure.
 */
import { createParser, type EventSourceMessage } from "eventsource-parser";
import type { Usage } from "../../service/settlement.ts";
import { ApiError, BackendUnavailable } from "../http/api-error.ts";

export interface UpstreamUsage {
  prompt_tokens?: number;
  completion_tokens?: number;
  prompt_tokens_details?: { cached_tokens?: number } | null;
  completion_tokens_details?: { reasoning_tokens?: number } | null;
}

export type UpstreamChunk = Record<string, unknown> & { choices?: unknown[]; usage?: UpstreamUsage | null; error?: { message?: string } };

/** Each chunk of the stream, in order; the caller may stop early. */
export async function* upstreamChunks(bytes: AsyncIterable<Uint8Array>, provider: string): AsyncGenerator<UpstreamChunk> {
  const events: EventSourceMessage[] = [];
  const parser = createParser({ onEvent: (event) => void events.push(event) });
  const decoder = new TextDecoder();
  for await (const piece of bytes) {
    parser.feed(decoder.decode(piece, { stream: true }));
    for (const event of events.splice(0)) {
      if (event.data.trim() === "[DONE]") return;
      const chunk = parseJson(event.data, provider) as UpstreamChunk;
      if (chunk.error) throw new ApiError(502, `The upstream provider ${provider} failed mid-stream: ${chunk.error.message ?? "unknown error"}`, "server_error", null, "upstream_error");
      yield chunk;
    }
  }
  throw badResponse(provider, "the stream ended before [DONE]");
}

/** The upstream's own count, as the ledger holds it. */
export function usageOf(usage: UpstreamUsage): Usage {
  const promptTokens = usage.prompt_tokens ?? 0;
  return {
    promptTokens, completionTokens: usage.completion_tokens ?? 0,
    cachedPromptTokens: Math.min(promptTokens, usage.prompt_tokens_details?.cached_tokens ?? 0),
  };
}

export function parseJson(text: string, provider: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw badResponse(provider, "it is not JSON");
  }
}

export const badResponse = (provider: string, why: string) =>
  new BackendUnavailable("upstream_5xx", 502, `The upstream provider ${provider} sent a response tokenmill cannot read: ${why}.`, "upstream_error");
