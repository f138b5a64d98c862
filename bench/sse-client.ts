/**
 * One streamed request to an OpenAI-compatible server (tokenmill, vLLM, llama.cpp), timed the
 * way vLLM's benchmark client times it: the clock starts when the request is sent, and every
 * chunk that carries a token is stamped as it arrives.
 */
import { performance } from "node:perf_hooks";
import { SseParser } from "./sse-parser.ts";
import type { BenchRequest } from "./workload.ts";

export type BenchEndpoint = "completions" | "chat" | "embeddings";

export interface ClientOptions {
  /** The server's root, e.g. http://127.0.0.1:8000; `/v1/...` is appended. */
  baseUrl: string;
  model: string;
  /** "completions" (default) posts to /v1/completions, "chat" to /v1/chat/completions, "embeddings" to /v1/embeddings (not streamed). */
  endpoint?: BenchEndpoint;
  temperature?: number;
  /** vLLM's extension: keep generating past EOS so every request yields outputLen tokens. */
  ignoreEos?: boolean;
  apiKey?: string;
  /** Merged into every request body last, e.g. { top_k: 1 }. */
  extraBody?: Record<string, unknown>;
  /** Aborts a request that runs longer; it is recorded as failed. */
  timeoutMs?: number;
}

/** What one request did. Times are `performance.now()` milliseconds. */
export interface RequestResult {
  success: boolean;
  /** Why it failed; absent on success. */
  error?: string;
  startMs: number;
  /** When each token-bearing chunk arrived: TTFT is the first minus startMs, ITLs are the gaps. */
  tokenTimesMs: number[];
  /** When the stream ended or the request failed. */
  endMs: number;
  generatedText: string;
  /** usage.completion_tokens when the server sends usage, else the number of token chunks. */
  numOutputTokens: number;
  /** usage.prompt_tokens when the server sends usage, else the workload's promptLen. */
  numPromptTokens: number;
}

interface StreamChunk {
  choices?: { text?: string; delta?: { role?: string; content?: string | null; reasoning_content?: string | null; reasoning?: string | null }; finish_reason?: string | null }[];
  usage?: { prompt_tokens?: number; completion_tokens?: number } | null;
  error?: { message?: string };
}

/** Sends one request with `stream: true` and records its timing; never throws. */
export async function sendRequest(request: BenchRequest, opts: ClientOptions, signal?: AbortSignal): Promise<RequestResult> {
  const result: RequestResult = {
    success: false, startMs: performance.now(), tokenTimesMs: [], endMs: 0,
    generatedText: "", numOutputTokens: 0, numPromptTokens: request.promptLen,
  };
  const signals = [signal, opts.timeoutMs === undefined ? undefined : AbortSignal.timeout(opts.timeoutMs)];
  try {
    const response = await fetch(urlOf(opts), {
      method: "POST",
      headers: { "content-type": "application/json", ...(opts.apiKey ? { authorization: `Bearer ${opts.apiKey}` } : {}) },
      body: JSON.stringify(bodyOf(request, opts)),
      signal: AbortSignal.any(signals.filter((s) => s !== undefined)),
    });
    if (!response.ok || !response.body) {
      result.error = `HTTP ${response.status}: ${(await response.text()).slice(0, 500)}`;
    } else if (opts.endpoint === "embeddings") {
      await readEmbeddings(response, result);
    } else {
      await readStream(response.body, result);
    }
  } catch (err) {
    result.error = describeError(err, opts.timeoutMs);
  }
  result.endMs = performance.now();
  return result;
}

const PATHS: Record<BenchEndpoint, string> = { completions: "completions", chat: "chat/completions", embeddings: "embeddings" };

function urlOf(opts: ClientOptions): string {
  const root = opts.baseUrl.replace(/\/+$/, "");
  return `${root}/v1/${PATHS[opts.endpoint ?? "completions"]}`;
}

function bodyOf(request: BenchRequest, opts: ClientOptions): Record<string, unknown> {
  if (opts.endpoint === "chat" && typeof request.prompt !== "string") {
    throw new TypeError("the chat endpoint needs text prompts (promptFormat \"text\")");
  }
  // NOTE: base64, as the openai SDK asks by default: a float list costs the server JSON-encoding time the client didn't ask for.
  if (opts.endpoint === "embeddings") return { model: opts.model, input: request.prompt, encoding_format: "base64", ...opts.extraBody };
  return {
    model: request.model ?? opts.model,
    ...(opts.endpoint === "chat" ? { messages: [{ role: "user", content: request.prompt }] } : { prompt: request.prompt }),
    max_tokens: request.outputLen,
    temperature: opts.temperature ?? 0,
    stream: true,
    stream_options: { include_usage: true },
    ...(opts.ignoreEos ? { ignore_eos: true } : {}),
    ...opts.extraBody,
  };
}

async function readStream(body: ReadableStream<Uint8Array>, result: RequestResult): Promise<void> {
  const parser = new SseParser();
  let usage: StreamChunk["usage"] = null;
  for await (const piece of body) {
    const arrivedMs = performance.now();
    for (const data of parser.push(piece)) {
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data) as StreamChunk;
      if (chunk.error) throw new Error(`server error in stream: ${chunk.error.message ?? JSON.stringify(chunk.error)}`);
      if (chunk.usage) usage = chunk.usage;
      const token = tokenOf(chunk);
      if (token === null) continue;
      result.tokenTimesMs.push(arrivedMs);
      result.generatedText += token;
    }
  }
  if (result.tokenTimesMs.length === 0) throw new Error("the stream ended without a token");
  result.numOutputTokens = usage?.completion_tokens ?? result.tokenTimesMs.length;
  result.numPromptTokens = usage?.prompt_tokens ?? result.numPromptTokens;
  result.success = true;
}

/**
 * An embeddings answer: one whole response, stamped when it has been read. Its latency is
 * the E2EL (and, with no tokens to stream, the TTFT); it generates no output tokens.
 */
async function readEmbeddings(response: Response, result: RequestResult): Promise<void> {
  const body = await response.json() as { data?: { embedding?: unknown }[]; usage?: { prompt_tokens?: number } };
  result.tokenTimesMs.push(performance.now());
  if (!Array.isArray(body.data) || body.data.length === 0 || body.data[0].embedding === undefined) throw new Error("the response holds no embedding");
  result.numPromptTokens = body.usage?.prompt_tokens ?? result.numPromptTokens;
  result.success = true;
}

/**
 * The text of a chunk that carries a token, or null for one that doesn't.
 *
 * NOTE: a token may decode to "" (half of a UTF-8 character), so an empty text still counts,
 * except in the chunks servers send around the tokens: chat's opening `{role}` delta and a closing
 * chunk that carries only finish_reason (OpenAI, llama.cpp). The usage chunk has no choices.
 */
function tokenOf(chunk: StreamChunk): string | null {
  const choice = chunk.choices?.[0];
  if (!choice) return null;
  const text = choice.text ?? choice.delta?.content ?? choice.delta?.reasoning_content ?? choice.delta?.reasoning ?? "";
  if (text !== "") return text;
  if (choice.delta?.role !== undefined || (choice.finish_reason ?? null) !== null) return null;
  return "";
}

function describeError(err: unknown, timeoutMs: number | undefined): string {
  if (err instanceof Error && err.name === "TimeoutError") return `timed out after ${timeoutMs} ms`;
  if (err instanceof Error && err.name === "AbortError") return "aborted";
  if (err instanceof Error) return err.cause instanceof Error ? `${err.message}: ${err.cause.message}` : err.message;
  return String(err);
}
