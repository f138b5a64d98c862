/**
 * Requests Node's HTTP parser refuses before fastify sees them (a garbage request line,
 * Content-Length with chunked, a bad chunk, control characters in a header, headers over
 * the limit, a body slower than --request-timeout) are answered in OpenAI's error shape.
 */
import type { Socket } from "node:net";
import { badHttp, headersTooLarge, requestTimedOut, type ApiError } from "../common/api-error.ts";

const REASONS: Record<number, string> = { 400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large" };

export function clientErrorOf(err: NodeJS.ErrnoException): ApiError {
  if (err.code === "ERR_HTTP_REQUEST_TIMEOUT") {
    return requestTimedOut();
  }
  if (err.code === "HPE_HEADER_OVERFLOW") {
    return headersTooLarge();
  }
  return badHttp(err.code);
}

/** fastify's clientErrorHandler: write the error and close, unless the client is already gone. */
export function handleClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === "ECONNRESET" || socket.destroyed) return;
  const apiError = clientErrorOf(err);
  const body = JSON.stringify(apiError.body);
  if (socket.writable && !socket.writableEnded) {
    socket.end(
      `HTTP/1.1 ${apiError.status} ${REASONS[apiError.status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
        `Connection: close\r\n\r\n${body}`,
    );
  }
  socket.destroySoon();
}
