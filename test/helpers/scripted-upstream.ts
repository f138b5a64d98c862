/**
 * A small real OpenAI-compatible server on loopback, whose answers a test scripts: a status
 * (500, 429 with Retry-After), a hang, or a chat completion (whole, streamed slowly, or streamed
 * with reasoning and a tool call in parts). It
 * counts every call, and notices a caller that goes away mid-stream.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type Script =
  /** usage: what to report instead of SCRIPTED_USAGE (anything, however wrong); null: report none. */
  | { kind: "ok"; text?: string; usage?: unknown }
  | { kind: "status"; status: number; retryAfter?: string }
  | { kind: "hang" }
  | { kind: "slow-stream"; intervalMs: number }
  /** A streamed answer with reasoning, text and one tool call whose arguments come in parts, as OpenAI streams them. */
  | { kind: "tool-stream" }
  /** A 200's headers, then nothing more. */
  | { kind: "stall-after-headers" }
  /** A 200, then a body that is not JSON (an SSE event that is not, when streamed). */
  | { kind: "garbage-after-headers" }
  /** A 200 and half a body, then the connection dropped. */
  | { kind: "close-mid-body" };

export interface ScriptedUpstream {
  url: string;
  /** Calls by path, in order. */
  calls: { path: string; body: Record<string, unknown>; authorization?: string; text: string }[];
  /** Streams whose caller left before the end. */
  numAbandoned: number;
  script: Script;
  /** Scripts for some upstream model names, over `script`. */
  byModel: Record<string, Script>;
  /** What GET /health answers (default 200), and how often it was asked. */
  healthStatus: number;
  numHealthChecks: number;
  close(): Promise<void>;
}

const USAGE = { prompt_tokens: 11, completion_tokens: 3, total_tokens: 14, prompt_tokens_details: { cached_tokens: 4 } };

export async function startScriptedUpstream(script: Script = { kind: "ok" }): Promise<ScriptedUpstream> {
  const state: ScriptedUpstream = { url: "", calls: [], numAbandoned: 0, script, byModel: {}, healthStatus: 200, numHealthChecks: 0, close: async () => undefined };
  const server = createServer((req, res) => void handle(state, req, res));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  state.close = () => new Promise((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  });
  return state;
}

async function handle(state: ScriptedUpstream, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method === "GET" && req.url === "/health") {
    state.numHealthChecks++;
    res.writeHead(state.healthStatus, { "content-type": "application/json" });
    return void res.end(JSON.stringify({ status: state.healthStatus === 200 ? "ok" : "unavailable" }));
  }
  let text = "";
  for await (const chunk of req) text += chunk;
  const body = JSON.parse(text || "{}") as Record<string, unknown>;
  state.calls.push({ path: req.url ?? "", body, authorization: req.headers.authorization, text });
  const script = state.byModel[String(body.model)] ?? state.script;
  if (script.kind === "stall-after-headers") {
    res.writeHead(200, { "content-type": body.stream ? "text/event-stream" : "application/json" });
    return void res.flushHeaders();
  }
  if (script.kind === "garbage-after-headers") {
    res.writeHead(200, { "content-type": body.stream ? "text/event-stream" : "application/json" });
    return void res.end(body.stream ? "data: {this is not json\n\ndata: [DONE]\n\n" : "{this is not json");
  }
  if (script.kind === "close-mid-body") {
    res.writeHead(200, { "content-type": body.stream ? "text/event-stream" : "application/json" });
    res.write(body.stream ? `data: ${JSON.stringify({ id: "x", object: "chat.completion.chunk", choices: [{ index: 0, delta: { content: "half" } }] })}\n\n` : '{"id": "x", "choices": [');
    return void setTimeout(() => res.destroy(), 20);
  }
  if (script.kind === "status") {
    res.writeHead(script.status, { "content-type": "application/json", ...(script.retryAfter !== undefined ? { "retry-after": script.retryAfter } : {}) });
    return void res.end(JSON.stringify({ error: { message: `scripted ${script.status}`, type: "server_error", param: null, code: null } }));
  }
  if (script.kind === "hang") return;
  const head = { id: "chatcmpl-scripted", created: 1, model: String(body.model) };
  if (script.kind === "slow-stream") {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.on("close", () => {
      if (!res.writableFinished) state.numAbandoned++;
    });
    for (let i = 0; !res.destroyed && i < 10_000; i++) {
      res.write(`data: ${JSON.stringify({ ...head, object: "chat.completion.chunk", choices: [{ index: 0, delta: { content: "x" }, finish_reason: null }] })}\n\n`);
      await new Promise((r) => setTimeout(r, script.intervalMs));
    }
    return void res.end();
  }
  if (script.kind === "tool-stream") {
    res.writeHead(200, { "content-type": "text/event-stream" });
    const chunk = (delta: unknown, finish: string | null = null) => `data: ${JSON.stringify({ ...head, object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
    res.write(chunk({ role: "assistant", content: "" }));
    res.write(chunk({ reasoning_content: "Thinking " }));
    res.write(chunk({ reasoning_content: "it over." }));
    res.write(chunk({ content: "Let me check." }));
    res.write(chunk({ tool_calls: [{ index: 0, id: "call_scripted", type: "function", function: { name: "get_weather", arguments: "" } }] }));
    for (const part of ['{"city"', ': "Os', 'lo"}']) res.write(chunk({ tool_calls: [{ index: 0, function: { arguments: part } }] }));
    res.write(chunk({}, "tool_calls"));
    res.write(`data: ${JSON.stringify({ ...head, object: "chat.completion.chunk", choices: [], usage: { ...USAGE, completion_tokens_details: { reasoning_tokens: 2 } } })}\n\n`);
    return void res.end("data: [DONE]\n\n");
  }
  const content = script.text ?? "scripted answer";
  const usage = script.usage === undefined ? USAGE : script.usage;
  if (body.stream) {
    res.writeHead(200, { "content-type": "text/event-stream" });
    const chunk = (choices: unknown[], usage: unknown = null) => `data: ${JSON.stringify({ ...head, object: "chat.completion.chunk", choices, usage })}\n\n`;
    res.write(chunk([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }]));
    for (const word of content.split(" ")) res.write(chunk([{ index: 0, delta: { content: word }, finish_reason: null }]));
    res.write(chunk([{ index: 0, delta: {}, finish_reason: "stop" }]));
    if (usage !== null) res.write(chunk([], usage));
    return void res.end("data: [DONE]\n\n");
  }
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ ...head, object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }], ...(usage !== null ? { usage } : {}) }));
}

export const SCRIPTED_USAGE = USAGE;
