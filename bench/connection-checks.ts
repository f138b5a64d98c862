/**
 * Connection checks as pooled clients see a server: resets after idle time, drains on pooled
 * sockets, oversized bodies under load. Shared by test/connections-e2e.test.ts (a few rounds)
 * and bench/connection-soak.ts (as many as asked). Traffic goes only to the URL given.
 */
import { Agent, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import type { Socket } from "node:net";

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  /** Whether the request went out on a socket the pool had not used before. */
  newSocket: boolean;
}

/** What a failed request saw: a reset after it was sent (the failure these checks count), or a refused connection. */
export type Failure = "reset" | "refused";

export function failureOf(err: unknown): Failure {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ECONNREFUSED" ? "refused" : "reset";
}

/** node:http's keep-alive pool, as SDKs and proxies keep one: sockets reused in order, never closed by the client while idle. */
export class PooledClient {
  readonly agent: Agent;
  private readonly seen = new WeakSet<Socket>();
  private readonly url: URL;

  constructor(url: string, maxSockets: number) {
    this.url = new URL(url);
    this.agent = new Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets, scheduling: "fifo" });
  }

  request(method: string, path: string, json?: unknown): Promise<Reply> {
    const payload = json === undefined ? undefined : JSON.stringify(json);
    return new Promise((resolve, reject) => {
      let newSocket = false;
      const req = httpRequest({
        host: this.url.hostname, port: this.url.port, method, path, agent: this.agent,
        headers: payload ? { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } : {},
      }, (res) => {
        let body = "";
        res.setEncoding("utf8").on("data", (c: string) => (body += c)).on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body, newSocket }));
        res.on("error", reject);
      });
      req.on("socket", (socket: Socket) => {
        newSocket = !this.seen.has(socket);
        this.seen.add(socket);
      });
      req.on("error", reject);
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

const chat = (model: string, maxTokens: number) => ({ model, messages: [{ role: "user", content: "hello there" }], max_tokens: maxTokens, ignore_eos: true });

export interface IdleResult {
  statuses: number[];
  resets: number;
  newSockets: number;
  errors: string[];
}

/** The pool sits idle for `idleMs`, then sends `concurrency` chats at once. */
export async function idleRound(client: PooledClient, model: string, options: { idleMs: number; concurrency: number }): Promise<IdleResult> {
  await new Promise((resolve) => setTimeout(resolve, options.idleMs));
  const settled = await Promise.allSettled(Array.from({ length: options.concurrency }, () => client.request("POST", "/v1/chat/completions", chat(model, 2))));
  const result: IdleResult = { statuses: [], resets: 0, newSockets: 0, errors: [] };
  for (const each of settled) {
    if (each.status === "fulfilled") {
      result.statuses.push(each.value.status);
      if (each.value.newSocket) result.newSockets++;
    } else {
      result.resets++;
      result.errors.push(String(each.reason));
    }
  }
  return result;
}

export interface OversizedResult {
  /** Each oversized body's status, or how it failed. */
  oversized: (number | Failure)[];
  small: (number | Failure)[];
  errors: string[];
}

/** `numOversized` bodies of `oversizedBytes` and `numSmall` small chats, all at once, each on a connection of its own (fetch's pool). */
export async function oversizedRound(url: string, model: string, options: { numOversized: number; oversizedBytes: number; numSmall: number }): Promise<OversizedResult> {
  const errors: string[] = [];
  const send = async (body: string): Promise<number | Failure> => {
    try {
      const response = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body });
      await response.text();
      return response.status;
    } catch (err) {
      errors.push(String((err as Error).cause ?? err));
      return failureOf((err as Error).cause ?? err);
    }
  };
  const big = JSON.stringify({ ...chat(model, 2), messages: [{ role: "user", content: "x".repeat(options.oversizedBytes) }] });
  const small = JSON.stringify(chat(model, 2));
  const [oversized, smalls] = await Promise.all([
    Promise.all(Array.from({ length: options.numOversized }, () => send(big))),
    Promise.all(Array.from({ length: options.numSmall }, () => send(small))),
  ]);
  return { oversized, small: smalls, errors };
}

export interface DrainResult {
  /** The requests in flight when the drain began. */
  inFlight: (number | Failure)[];
  /** Requests written to the pool's idle sockets in the same tick as the drain began: not yet read by the server. */
  justSent: (number | Failure)[];
  /** Requests sent on the pool's open sockets after the drain began. */
  late: (number | Failure)[];
  late503HadConnectionClose: boolean;
  errors: string[];
}

/**
 * Fills a pool with sockets, sends `inFlight` chats of `maxTokens` on it, and `closeAfterMs`
 * later sends `justSent` more and starts the drain (`close`) in the same tick; then sends
 * `lateRequests` more on the same pool.
 */
export async function drainRound(url: string, model: string, options: {
  inFlight: number; maxTokens: number; closeAfterMs: number; justSent: number; lateRequests: number; close: () => Promise<void>;
}): Promise<DrainResult> {
  const numSockets = options.inFlight + options.justSent + options.lateRequests;
  const client = new PooledClient(url, numSockets);
  const errors: string[] = [];
  const outcome = (sent: Promise<Reply>, onReply?: (reply: Reply) => void) => sent.then((reply) => {
    onReply?.(reply);
    return reply.status;
  }, (err: unknown) => {
    errors.push(String(err));
    return failureOf(err);
  });
  try {
    await Promise.all(Array.from({ length: numSockets }, () => client.request("GET", "/v1/models")));
    const inFlight = Promise.all(Array.from({ length: options.inFlight }, () => outcome(client.request("POST", "/v1/chat/completions", chat(model, options.maxTokens)))));
    await new Promise((resolve) => setTimeout(resolve, options.closeAfterMs));
    const justSent = Promise.all(Array.from({ length: options.justSent }, () => outcome(client.request("POST", "/v1/chat/completions", chat(model, 2)))));
    const closed = options.close();
    await new Promise((resolve) => setTimeout(resolve, 20));
    let late503HadConnectionClose = true;
    const late = Promise.all(Array.from({ length: options.lateRequests }, () => outcome(client.request("POST", "/v1/chat/completions", chat(model, 2)), (reply) => {
      if (reply.status === 503 && reply.headers.connection !== "close") late503HadConnectionClose = false;
    })));
    const result = { inFlight: await inFlight, justSent: await justSent, late: await late };
    await closed;
    return { ...result, late503HadConnectionClose, errors };
  } finally {
    client.close();
  }
}
