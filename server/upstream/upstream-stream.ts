/**
 * An upstream's streamed chat or completions answer, read as OpenAI-compatible servers send it:
 * one JSON chunk per SSE event, up to `data: [DONE]`. A chunk that is not JSON, or a stream that
 * ends before [DONE], is a bad response (a 502); an error chunk mid-stream is the upstream's failure.
 */
import { createParser, type EventSourceMessage } from "eventsource-parser";
import type { Usage } from "../../service/settlement.ts";
import { upstreamFailed, upstreamFailedMidStream } from "../common/api-error.ts";

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
      if (chunk.error) throw upstreamFailedMidStream(provider, chunk.error.message ?? "unknown error");
      yield chunk;
    }
  }
  throw badResponse(provider, "the stream ended before [DONE]");
}

/** More tokens than any one request has: a count beyond it is the upstream's fault. */
export const MAX_UPSTREAM_TOKENS = 100_000_000;

/** The upstream's count, each field checked: a non-negative integer up to MAX_UPSTREAM_TOKENS, or null (absent or not believable). */
export interface CheckedUpstreamUsage {
  promptTokens: number | null;
  completionTokens: number | null;
  cachedPromptTokens: number;
  reasoningTokens: number;
  /** What was wrong with it, for the log; null when every field was sound. */
  fault: string | null;
}

/** @param generates whether the call generates (an embeddings answer has no completion_tokens). */
export function checkUsage(usage: unknown, generates = true): CheckedUpstreamUsage {
  if (!usage || typeof usage !== "object") {
    return { promptTokens: null, completionTokens: generates ? null : 0, cachedPromptTokens: 0, reasoningTokens: 0, fault: "no usage" };
  }
  const raw = usage as Record<string, unknown>;
  const faults: string[] = [];
  const count = (name: string, value: unknown, max = MAX_UPSTREAM_TOKENS): number | null => {
    if (Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= max) return value as number;
    faults.push(`${name} ${JSON.stringify(value) ?? "missing"}`);
    return null;
  };
  const promptTokens = count("prompt_tokens", raw.prompt_tokens);
  const completionTokens = !generates && raw.completion_tokens === undefined ? 0 : count("completion_tokens", raw.completion_tokens);
  const details = (key: string, field: string) => ((raw[key] && typeof raw[key] === "object") ? (raw[key] as Record<string, unknown>)[field] : undefined);
  const cached = details("prompt_tokens_details", "cached_tokens");
  const reasoning = details("completion_tokens_details", "reasoning_tokens");
  return {
    promptTokens, completionTokens,
    cachedPromptTokens: cached === undefined || cached === null ? 0 : (count("cached_tokens", cached, promptTokens ?? 0) ?? 0),
    reasoningTokens: reasoning === undefined || reasoning === null ? 0 : (count("reasoning_tokens", reasoning, completionTokens ?? 0) ?? 0),
    fault: faults.length > 0 ? faults.join(", ") : null,
  };
}

/** The usage as OpenAI's APIs report it, from what the ledger holds. */
export function openaiUsage(usage: Usage, reasoningTokens = 0): Record<string, unknown> {
  return {
    prompt_tokens: usage.promptTokens, completion_tokens: usage.completionTokens, total_tokens: usage.promptTokens + usage.completionTokens,
    prompt_tokens_details: { cached_tokens: usage.cachedPromptTokens },
    ...(reasoningTokens > 0 ? { completion_tokens_details: { reasoning_tokens: reasoningTokens } } : {}),
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
  upstreamFailed(`The upstream provider ${provider} sent a response tokenmill cannot read: ${why}.`);
