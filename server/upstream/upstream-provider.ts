/**
 * An OpenAI-compatible provider upstream: one base URL, or a pool of replicas serving the same
 * models (replica-pool.ts: round-robin, least-loaded or prefix-affine), its key, a concurrency
 * cap per replica, a timeout, retries and circuit breakers. send() returns the upstream's 2xx response (its body still to
 * be read: a stream goes through as it comes), or throws:
 * - BackendUnavailable, which a route may fall back on: a 5xx or no answer, a 429, a timeout,
 *   the breaker open, or the cap reached;
 * - ApiError, the upstream's own 4xx as it gave it (the request is at fault; no other backend
 *   would do better).
 * Retries happen here, before anything reaches the client, and never after the response has begun.
 * With replicas, a try that fails goes on at once to the next replica in the balance's order;
 * only once each has been tried do retries wait out their backoff.
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
import { ReplicaPool, type Balance, type Replica } from "./replica-pool.ts";
import { DEFAULT_RETRY_POLICY, isRetryableStatus, retryAfterMsOf, retryDelayMs, type RetryPolicy } from "./retry-policy.ts";

export interface ProviderOptions {
  name: string;
  /** The API root, e.g. https://api.openai.com/v1 (paths such as /chat/completions are appended). */
  baseUrl?: string;
  /** Several API roots serving the same models, in place of baseUrl. */
  replicas?: string[];
  /** How requests are spread over the replicas (default round-robin). */
  balance?: Balance;
  /** How often each replica's /health is read (default 5 s with replicas; never with one base URL). */
  healthIntervalMs?: number;
  /** prefix: how far above the average load a replica may go before requests pass it by (default 1.25 × the average, plus 4). */
  loadFactor?: number;
  loadSlack?: number;
  /** prefix: the request's affinity key (its prompt's first full KV blocks, hashed), or null when it has none. */
  affinityKey?: (path: string, body: Record<string, unknown>) => Promise<string | null>;
  /** Sent as Authorization: Bearer; null: no auth header. */
  apiKey: string | null;
  /** How long to wait for the response's headers, and then between two chunks of its body. */
  timeoutMs: number;
  /** Calls in flight at once, per replica; more are refused (overloaded) so that the route can go elsewhere. */
  maxConcurrency: number;
  retry?: RetryPolicy;
  breaker?: { failureThreshold: number; cooldownMs: number };
  /** Hears each try's result (a status, "timeout" or "error"), each change of a model's breaker (on a replica), and of a replica's health. */
  onTry?: (result: string, replica: string) => void;
  onBreaker?: (state: BreakerState, model: string, replica: string) => void;
  onHealth?: (replica: string, healthy: boolean) => void;
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
  readonly pool: ReplicaPool;
  private readonly retry: RetryPolicy;
  private readonly breakers = new Map<Replica, Map<string, CircuitBreaker>>();

  constructor(private readonly options: ProviderOptions) {
    this.name = options.name;
    this.retry = options.retry ?? DEFAULT_RETRY_POLICY;
    const urls = options.replicas ?? (options.baseUrl ? [options.baseUrl] : []);
    this.pool = new ReplicaPool(urls, {
      balance: options.balance ?? "round-robin",
      // NOTE: only a pool is health-checked: a single base URL (a hosted API) may have no /health at all.
      healthIntervalMs: urls.length > 1 ? (options.healthIntervalMs ?? 5000) : 0,
      loadFactor: options.loadFactor,
      loadSlack: options.loadSlack,
      onHealth: (replica, healthy) => options.onHealth?.(replica.label, healthy),
    });
    this.pool.start();
  }

  /** Calls in flight, over all replicas. */
  get numInFlight(): number {
    return this.pool.numInFlight;
  }

  /** The cap on calls in flight, over all replicas. */
  get maxConcurrency(): number {
    return this.options.maxConcurrency * this.pool.replicas.length;
  }

  /** Stops the replicas' health checks. */
  close(): void {
    this.pool.stop();
  }

  /** The circuit breaker of one of this provider's models (by its upstream name) on a replica (default: the first). */
  breakerFor(model: string, replica: Replica = this.pool.replicas[0]): CircuitBreaker {
    let byModel = this.breakers.get(replica);
    if (!byModel) this.breakers.set(replica, (byModel = new Map()));
    let breaker = byModel.get(model);
    if (!breaker) {
      breaker = new CircuitBreaker({
        ...(this.options.breaker ?? { failureThreshold: 5, cooldownMs: 30_000 }),
        onChange: (state) => this.options.onBreaker?.(state, model, replica.label),
      });
      byModel.set(model, breaker);
    }
    return breaker;
  }

  /** The model's state over the whole provider: closed while some healthy replica's breaker is closed, else half_open or open. */
  stateFor(model: string): BreakerState {
    const states = this.pool.replicas.filter((r) => r.healthy).map((r) => this.breakerFor(model, r).state);
    if (states.length === 0) return "open";
    return states.includes("closed") ? "closed" : states.includes("half_open") ? "half_open" : "open";
  }

  /** The refusal a call for `model` would get now (no healthy replica, its breakers open, every replica at its cap), or null: it may go out. */
  refusal(model: string): BackendUnavailable | null {
    const healthy = this.pool.replicas.filter((r) => r.healthy);
    if (healthy.length === 0) return upstreamFailed(`No replica of the upstream provider ${this.name} passes its health check.`);
    const closed = healthy.filter((r) => this.breakerFor(model, r).state !== "open");
    if (closed.length === 0) {
      const retryAfterMs = Math.min(...healthy.map((r) => this.breakerFor(model, r).retryAfterMs));
      return upstreamBreakerOpen(this.name, model, Math.max(1, Math.ceil(retryAfterMs / 1000)));
    }
    if (closed.every((r) => r.numInFlight >= this.options.maxConcurrency)) {
      return upstreamAtCap(this.name, this.maxConcurrency);
    }
    return null;
  }

  /** POSTs `body` (with its upstream `model`) as JSON to a replica's base URL + path, with retries; `signal` (the client gone) aborts it. */
  async send(path: string, body: { model: string } & Record<string, unknown>, signal: AbortSignal): Promise<UpstreamCall> {
    const refused = this.refusal(body.model);
    if (refused) throw refused;
    const key = this.pool.balance === "prefix" && this.pool.replicas.length > 1 ? await this.options.affinityKey?.(path, body) ?? null : null;
    const order = this.pool.order(key, (r) => r.numInFlight < this.options.maxConcurrency && this.breakerFor(body.model, r).state !== "open");
    if (order.length === 0) throw this.refusal(body.model) ?? upstreamAtCap(this.name, this.maxConcurrency);
    const { response, replica, breaker } = await this.withRetries(path, JSON.stringify(body), order, body.model, signal);
    let released = false;
    let bodyEnded = false;
    const release = (failure?: unknown) => {
      if (released) return;
      released = true;
      replica.numInFlight--;
      if (failure !== undefined && !signal.aborted) breaker.failed();
      else if (bodyEnded) breaker.succeeded();
      else breaker.released();
    };
    return { response, body: () => this.readBody(response, signal, () => (bodyEnded = true)), release };
  }

  /**
   * The 2xx response and the replica that gave it (holding one of its slots, and its breaker's
   * trial: release() settles both), or the failure after retries. Try i goes to order[i] while
   * there are replicas not yet tried; after that, retries go round the order again after their backoff.
   */
  private async withRetries(path: string, body: string, order: Replica[], model: string, signal: AbortSignal): Promise<{ response: Response; replica: Replica; breaker: CircuitBreaker }> {
    let lastFailure: BackendUnavailable | null = null;
    for (let attempt = 0, retry = 0; ; attempt++) {
      signal.throwIfAborted();
      const replica = order[attempt % order.length];
      const breaker = this.breakerFor(model, replica);
      const fresh = attempt < order.length;
      if (replica.numInFlight >= this.options.maxConcurrency || !breaker.tryAcquire()) {
        if (fresh) continue;
        throw this.refusal(model) ?? lastFailure ?? upstreamProbing(this.name, model);
      }
      replica.numInFlight++;
      const outcome = await this.tryOnce(replica, path, body, signal);
      if (outcome instanceof Response) return { response: outcome, replica, breaker };
      replica.numInFlight--;
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
      lastFailure = outcome.error;
      if (outcome.retryable === false) throw outcome.error;
      if (attempt + 1 < order.length) continue;
      const delay = retry < this.retry.maxRetries ? retryDelayMs(this.retry, retry, outcome.retryAfterMs) : null;
      retry++;
      if (delay === null) throw outcome.error;
      await sleep(delay, signal);
    }
  }

  /** One try: the 2xx response, the upstream's 4xx, or a failure worth retrying. */
  private async tryOnce(replica: Replica, path: string, body: string, signal: AbortSignal): Promise<Response | ApiError | { error: BackendUnavailable; retryAfterMs: number | null; retryable?: false }> {
    const url = replica.baseUrl.replace(/\/+$/, "") + path;
    const onTry = (result: string) => this.options.onTry?.(result, replica.label);
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), this.options.timeoutMs);
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...(this.options.apiKey ? { authorization: `Bearer ${this.options.apiKey}` } : {}) },
        body,
        signal: AbortSignal.any([signal, timeout.signal]),
      });
      onTry(String(response.status));
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
        onTry("timeout");
        return { error: upstreamTimeout(this.name, this.options.timeoutMs), retryAfterMs: null };
      }
      onTry("error");
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
