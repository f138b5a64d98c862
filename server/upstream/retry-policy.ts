/**
 * When to retry an upstream call, and how long to wait: exponential backoff with full
 * jitter (AWS's "full jitter": a uniform draw below the doubled cap), or the upstream's own
 * Retry-After when it gives one, within a ceiling past which waiting is worse than falling back.
 */
export interface RetryPolicy {
  /** Retries after the first try. */
  maxRetries: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** A Retry-After longer than this is not waited for: the call fails, and the route falls back. */
  maxRetryAfterMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = { maxRetries: 2, baseDelayMs: 250, maxDelayMs: 4000, maxRetryAfterMs: 10_000 };

/** The wait before retry number `retry` (0-based), or null when the upstream asks for longer than the policy waits. */
export function retryDelayMs(policy: RetryPolicy, retry: number, retryAfterMs: number | null, random: () => number = Math.random): number | null {
  if (retryAfterMs !== null) return retryAfterMs <= policy.maxRetryAfterMs ? retryAfterMs : null;
  const cap = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** retry);
  return Math.floor(random() * cap);
}

/**
 * Retry-After (seconds, or an HTTP date), or OpenAI's retry-after-ms, in milliseconds; null
 * when absent or unreadable.
 */
export function retryAfterMsOf(headers: Headers, nowMs = Date.now()): number | null {
  const ms = headers.get("retry-after-ms");
  if (ms !== null && /^\d+(\.\d+)?$/.test(ms.trim())) return Math.ceil(Number(ms));
  const value = headers.get("retry-after")?.trim();
  if (!value) return null;
  if (/^\d+(\.\d+)?$/.test(value)) return Math.ceil(Number(value) * 1000);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - nowMs);
}

/** The statuses worth another try: rate limited, and the server's own faults. */
export const isRetryableStatus = (status: number) => status === 429 || status === 408 || status >= 500;
