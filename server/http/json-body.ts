/**
 * Request bodies: JSON only (415 for any other content type, text/plain included), parsed
 * by fastify's own JSON parser (which refuses prototype poisoning), then refused with a 400
 * naming the field when nested deeper than MAX_JSON_DEPTH.
 *
 * NOTE: a deep body parses fine, but the chat template renders tool schemas and template
 * kwargs recursively, and a few thousand levels overflow the tokenizer worker's stack.
 */
import type { FastifyInstance } from "fastify";
import { ApiError, invalidRequest } from "./api-error.ts";

/** The deepest nesting a body may have, counting the body itself as level 1. */
export const MAX_JSON_DEPTH = 64;

export function registerJsonBody(app: FastifyInstance): void {
  const parseJson = app.getDefaultJsonParser("error", "ignore");
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("application/json", { parseAs: "string" }, (request, body, done) => {
    parseJson(request, body as string, (err: Error | null, value?: unknown) => {
      if (err) return done(err, undefined);
      const tooDeep = pathBeyondDepth(value, MAX_JSON_DEPTH);
      if (tooDeep === null) return done(null, value);
      const field = tooDeep.slice(0, 4).join(".");
      done(invalidRequest(`${field || "the body"} is nested more than ${MAX_JSON_DEPTH} levels deep`, field || null, "nesting_too_deep"), undefined);
    });
  });
  // NOTE: every other content type (and none) is answered 415 here, before the route runs.
  app.addContentTypeParser("*", (request, _payload, done) => {
    const type = request.headers["content-type"];
    done(unsupportedMediaType(type), undefined);
  });
}

export function unsupportedMediaType(type: string | undefined): ApiError {
  const got = type ? `got ${type}` : "none was sent";
  return new ApiError(415, `Content-Type must be application/json (${got}).`, "invalid_request_error", null, "unsupported_media_type");
}

/** The path to the first value nested deeper than maxDepth, or null; iterative, so any depth is safe. */
export function pathBeyondDepth(value: unknown, maxDepth: number): (string | number)[] | null {
  interface Frame { value: unknown; depth: number; key: string | number | null; parent: Frame | null }
  const stack: Frame[] = [{ value, depth: 1, key: null, parent: null }];
  while (stack.length > 0) {
    const frame = stack.pop()!;
    if (typeof frame.value !== "object" || frame.value === null) continue;
    if (frame.depth > maxDepth) return pathOf(frame);
    const entries = Array.isArray(frame.value) ? frame.value.map((v, i) => [i, v] as const) : Object.entries(frame.value);
    for (const [key, child] of entries) stack.push({ value: child, depth: frame.depth + 1, key, parent: frame });
  }
  return null;

  function pathOf(frame: Frame): (string | number)[] {
    const path: (string | number)[] = [];
    for (let f: Frame | null = frame; f && f.key !== null; f = f.parent) path.push(f.key);
    return path.reverse();
  }
}
