/** Small pieces every route uses: noticing a client leave, raw headers, the clock in seconds. */
import type { FastifyReply } from "fastify";

/** Calls `abort` if the connection closes before the response has been sent in full. */
export function onClientGone(reply: FastifyReply, abort: () => void): void {
  reply.raw.once("close", () => {
    if (!reply.raw.writableFinished) abort();
  });
}

/** Sets headers on the response however it is then sent (whole, as an error, or hijacked for SSE). */
export function setRawHeaders(reply: FastifyReply): (headers: Record<string, string>) => void {
  return (headers) => {
    if (reply.raw.headersSent) return;
    for (const [name, value] of Object.entries(headers)) reply.raw.setHeader(name, value);
  };
}

export const nowSeconds = () => Math.floor(Date.now() / 1000);
