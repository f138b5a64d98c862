/** Small pieces every route uses: body parsing, noticing a client leave. */
import type { FastifyReply } from "fastify";
import type { z } from "zod";
import { invalidRequest } from "./api-error.ts";
import { describeIssue } from "../openai/schemas.ts";

export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
  if (body === undefined || body === null || typeof body !== "object") {
    throw invalidRequest("The request body must be a JSON object.");
  }
  const parsed = schema.safeParse(body);
  if (!parsed.success) {
    const { message, param } = describeIssue(parsed.error);
    throw invalidRequest(message, param);
  }
  return parsed.data;
}

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
