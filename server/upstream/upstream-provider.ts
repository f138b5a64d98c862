/**
 * An OpenAI-compatible provider upstream: one base URL, its key, a concurrency cap, a timeout,
 * retries and a circuit breaker. send() returns the upstream's 2xx response (its body still to
 * be read: a stream goes through as it comes), or throws:
 * - BackendUnavailable, which a route may fall back on: a 5xx or no answer, a 429, a timeout,
 *   the breaker open, or the cap reached;
 * - ApiError, the upstream's own 4xx as it gave it (the request is at fault; no other backend
 *   would do better).
 * Retries happen here, before anything reaches the client, and never after the response has begun.
 *
 * Each upstream model has its own circuit breaker: one model failing at a provider (a bad
 * deployment, a model taken down) takes none of the provider's other models with it. A call
 * counts for its breaker only once its body has been read to the end (a success) or has failed
 * (a stall, a dropped connection, an answer that can't be read): an upstream that answers 200
 * and then hangs or sends garbage opens it like one that answers 500.
 */
import {
  ApiError, BackendUnavailable, upstreamAtCap, upstreamBreakerOpen, upstreamFailed, upstreamKeyRefused, upstreamProbing, upstreamRateLimited, upstreamRefused, upstreamTimeout,
} from "../common/api-error.ts";
import { CircuitBreaker, type BreakerState } from "./circuit-breaker.ts";
import { DEFAULT_RETRY_POLICY, isRetryableStatus, retryAfterMsOf, retryDelayMs, type RetryPolicy } from "./retry-policy.ts";

export interface ProviderOptions {
  name: string;
  /** The API root, e.g. https://api.openai.com/v1 (paths such as /chat/completions are appended). */
  baseUrl: string;
  /** Sent as Authorization: Bearer; null: no auth header. */
  apiKey: string | null;
  /** How long to wait for the response's headers, and then between two chunks of its body. */
  timeoutMs: number;
  /** Calls in flight at once; more are refused (overloaded) so that the route can go elsewhere. */
  maxConcurrency: number;
  retry?: RetryPolicy;
  breaker?: { failureThreshold: number; cooldownMs: number };
  /** Hears each try's result (a status, "timeout" or "error") and each change of a model's breaker. */
  onTry?: (result: string) => void;
  onBreaker?: (state: BreakerState, model: string) => void;
}

/** A 2xx response, with its body, and the slot it holds until release(). */
export interface UpstreamCall {
  response: Response;
  /** The body's bytes, as they come; a gap longer than the timeout fails it with a timeout, a dropped connection with a 502. */
  body(): AsyncIterable<Uint8Array>;
  /**
   * Frees the concurrency slot (once), and tells the model's breaker how the call went: `failure`
   * when reading or parsing its body failed; else a success if the body was read to its end, and
   * nothing if the client left first.
   */
  release(failure?: unknown): void;
}

export class UpstreamProvider {
  readonly name: string;
  numInFlight = 0;
  private readonly retry: RetryPolicy;
  private readonly breakers = new Map<string, CircuitBreaker>();

  constructor(private readonly options: ProviderOptions) {
    this.name = options.name;
    this.retry = options.retry ?? DEFAULT_RETRY_POLICY;
  }

  get maxConcurrency(): number {
    return this.options.maxConcurrency;
  }

  /** The circuit breaker of one of this provider's models (by its upstream name). */
  breakerFor(model: string): CircuitBreaker {
    let breaker = this.breakers.get(model);
    if (!breaker) {
      breaker = new CircuitBreaker({ ...(this.options.breaker ?? { failureThreshold: 5, cooldownMs: 30_000 }), onChange: (state) => this.options.onBreaker?.(state, model) });
      this.breakers.set(model, breaker);
    }
    return breaker;
  }

  /** The refusal a call for `model` would get now (its breaker open, the provider's cap reached), or null: it may go out. */
  refusal(model: string): BackendUnavailable | null {
    const breaker = this.breakerFor(model);
    if (breaker.state === "open") {
      return upstreamBreakerOpen(this.name, model, Math.max(1, Math.ceil(breaker.retryAfterMs / 1000)));
    }
    if (this.numInFlight >= this.options.maxConcurrency) {
      return upstreamAtCap(this.name, this.options.maxConcurrency);
    }
    return null;
  }

  /** POSTs `body` (with its upstream `model`) as JSON to baseUrl + path, with retries; `signal` (the client gone) aborts it. */
  async send(path: string, body: { model: string } & Record<string, unknown>, signal: AbortSignal): Promise<UpstreamCall> {
    const breaker = this.breakerFor(body.model);
    const refused = this.refusal(body.model);
    if (refused) throw refused;
    this.numInFlight++;
    let released = false;
    let bodyEnded = false;
    const release = (failure?: unknown) => {
      if (released) return;
      released = true;
      this.numInFlight--;
      if (failure !== undefined && !signal.aborted) breaker.failed();
      else if (bodyEnded) breaker.succeeded();
      else breaker.released();
    };
    try {
      const response = await this.withRetries(path, JSON.stringify(body), breaker, body.model, signal);
      return { response, body: () => this.readBody(response, signal, () => (bodyEnded = true)), release };
    } catch (err) {
      released = true;
      this.numInFlight--;
      throw err;
    }
  }

  /** The 2xx response, its breaker's trial still held (release() settles it), or the failure after retries. */
  private async withRetries(path: string, body: string, breaker: CircuitBreaker, model: string, signal: AbortSignal): Promise<Response> {
    const url = this.options.baseUrl.replace(/\/+$/, "") + path;
    for (let retry = 0; ; retry++) {
      signal.throwIfAborted();
      if (!breaker.tryAcquire()) throw this.refusal(model) ?? upstreamProbing(this.name, model);
      const outcome = await this.tryOnce(url, body, signal);
      if (outcome instanceof Response) return outcome;
      if (signal.aborted) {
        breaker.released();
        throw signal.reason;
      }
      // NOTE: a 4xx other than 429 is the request's fault, not the upstream's: it goes back to the client as given.
      if (outcome instanceof ApiError) {
        breaker.succeeded();
        throw outcome;
      }
      breaker.failed();
      const failure = outcome.error;
      const delay = retry < this.retry.maxRetries && outcome.retryable !== false ? retryDelayMs(this.retry, retry, outcome.retryAfterMs) : null;
      if (delay === null) throw failure;
      await sleep(delay, signal);
    }
  }

  /** One try: the 2xx response, the upstream's 4xx, or a failure worth retrying. */
  private async tryOnce(url: string, body: string, signal: AbortSignal): Promise<Response | ApiError | { error: BackendUnavailable; retryAfterMs: number | null; retryable?: false }> {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), this.options.timeoutMs);
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...(this.options.apiKey ? { authorization: `Bearer ${this.options.apiKey}` } : {}) },
        body,
        signal: AbortSignal.any([signal, timeout.signal]),
      });
      this.options.onTry?.(String(response.status));
      if (response.ok) return response;
      const text = await response.text().catch(() => "");
      const retryAfterMs = retryAfterMsOf(response.headers);
      // NOTE: the upstream refusing tokenmill's own key is the operator's fault, not the client's: never the client's 401.
      if (response.status === 401 || response.status === 403) {
        const error = upstreamKeyRefused(this.name, response.status, upstreamMessage(text) ?? "");
        return { error, retryAfterMs: null, retryable: false };
      }
      if (!isRetryableStatus(response.status)) return upstreamClientError(this.name, response.status, text);
      const message = `The upstream provider ${this.name} answered ${response.status}: ${upstreamMessage(text) ?? response.statusText}`;
      const error = response.status === 429
        ? upstreamRateLimited(message, retryAfterMs === null ? undefined : Math.max(1, Math.ceil(retryAfterMs / 1000)))
        : upstreamFailed(message);
      return { error, retryAfterMs };
    } catch (err) {
      if (signal.aborted) return { error: upstreamFailed("aborted"), retryAfterMs: null };
      if (timeout.signal.aborted) {
        this.options.onTry?.("timeout");
        return { error: upstreamTimeout(this.name, this.options.timeoutMs), retryAfterMs: null };
      }
      this.options.onTry?.("error");
      const reason = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      return { error: upstreamFailed(`The upstream provider ${this.name} could not be reached (${reason}).`), retryAfterMs: null };
    } finally {
      clearTimeout(timer);
    }
  }

  private async *readBody(response: Response, signal: AbortSignal, onEnd: () => void): AsyncIterable<Uint8Array> {
    if (!response.body) return onEnd();
    const reader = response.body.getReader();
    const onAbort = () => void reader.cancel().catch(() => undefined);
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        let timer: NodeJS.Timeout | undefined;
        const idle = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(upstreamTimeout(this.name, this.options.timeoutMs)), this.options.timeoutMs);
        });
        try {
          const { done, value } = await Promise.race([reader.read(), idle]).catch((err: unknown) => {
            if (signal.aborted || err instanceof BackendUnavailable) throw err;
            // NOTE: a connection dropped mid-body is the upstream's failure (a 502 a route may fall back on), not tokenmill's 500.
            throw upstreamFailed(`The upstream provider ${this.name} closed the connection before its response was complete.`);
          });
          if (done) return onEnd();
          yield value;
        } finally {
          clearTimeout(timer);
        }
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      await reader.cancel().catch(() => undefined);
    }
  }
}

/** The upstream's 4xx as the client should see it: its own OpenAI-shaped error when it gave one. */
function upstreamClientError(name: string, status: number, text: string): ApiError {
  const error = parseError(text);
  return upstreamRefused(status, error?.message ?? `The upstream provider ${name} refused the request (${status}).`, error?.type ?? "invalid_request_error",
    error?.param ?? null, error?.code ?? null);
}

function upstreamMessage(text: string): string | null {
  return parseError(text)?.message ?? (text.trim().slice(0, 200) || null);
}

function parseError(text: string): { message?: string; type?: string; param?: string | null; code?: string | null } | null {
  try {
    const body = JSON.parse(text) as { error?: unknown };
    return typeof body.error === "object" && body.error !== null ? body.error as never : null;
  } catch {
    return null;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
