/**
 * The HTTP server's connections: keep-alive that outlives the proxies in front, and a drain
 * that never resets a request.
 *
 * - Keep-alive lasts `--keep-alive-timeout` (75 s): a pooled client or a proxy (60 s idle at
 *   nginx and most cloud load balancers) must close an idle socket before the server does,
 *   or it races the server's close and its next request is reset.
 * - A drain stops listening at once (new connections are refused), but closes no open socket
 *   while any request runs: a request a client has just written to an idle pooled socket may
 *   sit unread in the kernel while the event loop is busy, and closing that "idle" socket
 *   resets it. Requests that arrive on open sockets during the drain get a 503 with
 *   `Connection: close`; every response then closes its socket; once no request has run for
 *   DRAIN_LINGER_MS, the sockets still idle are closed and the server's close completes.
 * - A body the server refuses (413, 415, malformed JSON) is read to its end and discarded, up
 *   to MAX_DISCARDED_BODY_BYTES, so the client finishes sending and reads its error; closing
 *   while it still writes would reset it (nginx's lingering close does the same).
 */
import { createServer, type Server } from "node:http";
import { Server as NetServer } from "node:net";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { serverDraining } from "../common/api-error.ts";

export const DEFAULT_KEEP_ALIVE_TIMEOUT_MS = 75_000;
/** A refused body larger than this is not read: the connection closes (and its client may see a reset). */
export const MAX_DISCARDED_BODY_BYTES = 64 * 1024 * 1024;

export interface ConnectionOptions {
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
}

/** fastify's serverFactory: Node's server with tokenmill's timeouts, whose close() only stops listening (see drain()). */
export function createHttpServer(handler: Parameters<typeof createServer>[1], options: ConnectionOptions): Server {
  const server = createServer({
    requestTimeout: options.requestTimeoutMs,
    // NOTE: Node requires headersTimeout <= requestTimeout; its headers timer starts with a request's first byte, so it never races keep-alive.
    headersTimeout: options.requestTimeoutMs,
    // NOTE: Node checks request timeouts only every connectionsCheckingInterval (30 s by default), so it is tied to the timeout here.
    connectionsCheckingInterval: Math.max(50, Math.min(1000, options.requestTimeoutMs / 4)),
    keepAliveTimeout: options.keepAliveTimeoutMs,
  }, handler);
  // NOTE: Node's own close() also closes every idle socket at once, resetting requests not yet read from them.
  server.close = function close(callback?: (err?: Error) => void) {
    NetServer.prototype.close.call(this, callback);
    return this;
  };
  return server;
}

/** How long a drain with nothing running waits before closing idle sockets: a request written just before it is read, and answered. */
export const DRAIN_LINGER_MS = 200;

/** Counts running requests, answers new ones with a 503 once closing, and closes idle sockets when the last running one ends. */
export function registerDrain(app: FastifyInstance): void {
  let numRunning = 0;
  let draining = false;
  let lingering: NodeJS.Timeout | null = null;
  const closeIdleWhenDone = () => {
    if (!draining || numRunning > 0 || lingering) return;
    lingering = setTimeout(() => {
      lingering = null;
      if (numRunning === 0) app.server.closeIdleConnections();
    }, DRAIN_LINGER_MS);
  };
  app.addHook("onRequest", async (request, reply) => {
    numRunning++;
    reply.raw.once("close", () => {
      numRunning--;
      closeIdleWhenDone();
    });
    if (draining) {
      reply.header("connection", "close");
      throw serverDraining();
    }
  });
  app.addHook("onSend", async (_request, reply) => {
    if (draining) reply.header("connection", "close");
  });
  app.addHook("preClose", async () => {
    draining = true;
    closeIdleWhenDone();
  });
}

/**
 * NOTE: fastify answers a body error with `Connection: close` before reading the body; a client
 * still writing its body then gets a reset instead of the answer. Node reads and discards the
 * rest of a request's body once its response ends, so keeping the connection open lets the
 * client finish and read its error.
 */
export function keepOpenForBodyError(request: FastifyRequest, reply: FastifyReply): void {
  // NOTE: during a drain, the onSend hook above puts `Connection: close` back.
  if (reply.getHeader("connection") !== "close") return;
  const length = Number(request.headers["content-length"] ?? Number.NaN);
  if (Number.isFinite(length) && length > MAX_DISCARDED_BODY_BYTES) return;
  reply.removeHeader("connection");
}
