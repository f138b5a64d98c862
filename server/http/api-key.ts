/**
 * `--api-key`: one or more static keys that the OpenAI API routes require as
 * `Authorization: Bearer KEY`, as vLLM's and llama.cpp's servers do. /health, /metrics and
 * /version stay open for probes and scrapers.
 *
 * NOTE: keys are compared as SHA-256 digests with timingSafeEqual, so the comparison takes
 * the same time whatever a guess shares with a key. Per-key metering is a later milestone.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { ApiError } from "./api-error.ts";

const OPEN_ROUTES = new Set(["/health", "/metrics", "/version"]);

export function apiKeyGuard(keys: readonly string[]): (url: string, authorization: string | undefined) => void {
  const digests = keys.map(digest);
  return (url, authorization) => {
    if (digests.length === 0 || OPEN_ROUTES.has(url.split("?")[0])) return;
    const token = /^Bearer\s+(.+)$/i.exec(authorization ?? "")?.[1]?.trim();
    const presented = token ? digest(token) : null;
    if (presented && digests.some((d) => timingSafeEqual(d, presented))) return;
    throw new ApiError(401, token ? "Incorrect API key provided." : "Missing API key: send Authorization: Bearer YOUR_KEY.",
      "invalid_request_error", null, "invalid_api_key");
  };
}

function digest(key: string): Buffer {
  return createHash("sha256").update(key).digest();
}
