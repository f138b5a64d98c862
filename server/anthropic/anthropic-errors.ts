/** Errors on Anthropic's routes, in Anthropic's shape: {"type": "error", "error": {"type", "message"}}. */
import type { ApiError } from "../common/api-error.ts";

/** Anthropic's error type for an HTTP status. */
export function anthropicErrorType(status: number): string {
  if (status === 400 || status === 422) return "invalid_request_error";
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 404) return "not_found_error";
  if (status === 413) return "request_too_large";
  if (status === 429) return "rate_limit_error";
  if (status === 503 || status === 529) return "overloaded_error";
  return "api_error";
}

export function anthropicErrorBody(err: ApiError): { type: "error"; error: { type: string; message: string } } {
  return { type: "error", error: { type: anthropicErrorType(err.status), message: err.message } };
}

/** The routes that answer in Anthropic's shape. */
export const isAnthropicRoute = (url: string) => url === "/v1/messages" || url.startsWith("/v1/messages/") || url.startsWith("/v1/messages?");
