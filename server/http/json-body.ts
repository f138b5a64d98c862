/**
 * Request bodies: JSON only (415 for any other content type, text/plain included), in UTF-8
 * (a body that is not valid UTF-8 is a 400, as OpenAI answers, never text with U+FFFD in it),
 * parsed by fastify's own JSON parser (which refuses prototype poisoning), then refused with a
 * 400 naming the field when nested deeper than MAX_JSON_DEPTH or holding a string with a lone
 * UTF-16 surrogate (`"\ud800"`: valid JSON, but no text).
 *
 * NOTE: a deep body parses fine, but the chat template renders tool schemas and template
 * kwargs recursively, and a few thousand levels overflow the tokenizer worker's stack.
 */
import type { FastifyInstance } from "fastify";
import { isUtf8 } from "node:buffer";
import { invalidRequest, unsupportedMediaType } from "../common/api-error.ts";

/** NOTE: String.prototype.isWellFormed is in Node 20, not yet in TypeScript's ES2023 lib. */
const isWellFormed = (text: string) => (text as string & { isWellFormed(): boolean }).isWellFormed();

/** The deepest nesting a body may have, counting the body itself as level 1. */
export const MAX_JSON_DEPTH = 64;

export function registerJsonBody(app: FastifyInstance): void {
  const parseJson = app.getDefaultJsonParser("error", "ignore");
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (request, body, done) => {
    if (!isUtf8(body as Buffer)) return done(invalidRequest("The request body is not valid UTF-8.", null, "invalid_encoding"), undefined);
    parseJson(request, (body as Buffer).toString("utf8"), (err: Error | null, value?: unknown) => {
      if (err) return done(err, undefined);
      const problem = firstProblem(value, MAX_JSON_DEPTH);
      if (problem === null) return done(null, value);
      const field = problem.path.slice(0, 4).join(".");
      done(problem.kind === "depth"
        ? invalidRequest(`${field || "the body"} is nested more than ${MAX_JSON_DEPTH} levels deep`, field || null, "nesting_too_deep")
        : invalidRequest(`${field || "the body"} holds a lone UTF-16 surrogate (an escape such as \\ud800 with no pair), which is not text`, field || null, "invalid_encoding"), undefined);
    });
  });
  // NOTE: every other content type (and none) is answered 415 here, before the route runs.
  app.addContentTypeParser("*", (request, _payload, done) => {
    const type = request.headers["content-type"];
    done(unsupportedMediaType(type), undefined);
  });
}


/** The first value nested deeper than maxDepth, or string (a key or a value) with a lone surrogate; null when there is none. Iterative, so any depth is safe. */
function firstProblem(value: unknown, maxDepth: number): { kind: "depth" | "surrogate"; path: (string | number)[] } | null {
  interface Frame { value: unknown; depth: number; key: string | number | null; parent: Frame | null }
  const stack: Frame[] = [{ value, depth: 1, key: null, parent: null }];
  while (stack.length > 0) {
    const frame = stack.pop()!;
    if (typeof frame.value === "string" && !isWellFormed(frame.value)) return { kind: "surrogate", path: pathOf(frame) };
    if (typeof frame.value !== "object" || frame.value === null) continue;
    if (frame.depth > maxDepth) return { kind: "depth", path: pathOf(frame) };
    const entries = Array.isArray(frame.value) ? frame.value.map((v, i) => [i, v] as const) : Object.entries(frame.value);
    for (const [key] of entries) if (typeof key === "string" && !isWellFormed(key)) return { kind: "surrogate", path: [...pathOf(frame), key] };
    for (const [key, child] of entries) stack.push({ value: child, depth: frame.depth + 1, key, parent: frame });
  }
  return null;

  function pathOf(frame: Frame): (string | number)[] {
    const path: (string | number)[] = [];
    for (let f: Frame | null = frame; f && f.key !== null; f = f.parent) path.push(f.key);
    return path.reverse();
  }
}
