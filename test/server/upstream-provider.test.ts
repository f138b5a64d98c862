/** The upstream provider's retries, timeout and circuit breaker, against a real scripted server on loopback; the route's plan. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackendUnavailable, ApiError } from "../../server/common/api-error.ts";
import { LocalBackend, UpstreamBackend } from "../../server/backends/model-backend.ts";
import { ServingPlan, fallbackReasonOf } from "../../server/backends/serving-plan.ts";
import { EngineError } from "../../server/common/engine-api.ts";
import { CircuitBreaker } from "../../server/upstream/circuit-breaker.ts";
import { retryAfterMsOf, retryDelayMs, DEFAULT_RETRY_POLICY } from "../../server/upstream/retry-policy.ts";
import { UpstreamProvider, type ProviderOptions } from "../../server/upstream/upstream-provider.ts";
import { startScriptedUpstream, type ScriptedUpstream } from "../helpers/scripted-upstream.ts";
import { until } from "../helpers/until.ts";

let upstream: ScriptedUpstream;
beforeAll(async () => {
  upstream = await startScriptedUpstream();
});
afterAll(() => upstream.close());

const provider = (options: Partial<ProviderOptions> = {}) => new UpstreamProvider({
  name: "scripted", baseUrl: upstream.url, apiKey: "sk-up", timeoutMs: 2000, maxConcurrency: 4,
  retry: { maxRetries: 2, baseDelayMs: 10, maxDelayMs: 40, maxRetryAfterMs: 2000 }, breaker: { failureThreshold: 3, cooldownMs: 300 }, ...options,
});
const send = (p: UpstreamProvider) => p.send("/chat/completions", { model: "m", messages: [] }, new AbortController().signal);
const failure = (p: UpstreamProvider) => send(p).then(() => null, (err: unknown) => err);

describe("upstream provider", () => {
  it("passes a 2xx through with the key, and frees its slot on release", async () => {
    upstream.script = { kind: "ok" };
    upstream.calls.length = 0;
    const p = provider();
    const call = await send(p);
    expect(call.response.status).toBe(200);
    expect(p.numInFlight).toBe(1);
    call.release();
    call.release();
    expect(p.numInFlight).toBe(0);
    expect(upstream.calls[0].authorization).toBe("Bearer sk-up");
  });

  it("retries a 500 with backoff, then fails with a fallback-able 502", async () => {
    upstream.script = { kind: "status", status: 500 };
    upstream.calls.length = 0;
    const tries: string[] = [];
    const err = await failure(provider({ onTry: (r) => tries.push(r) }));
    expect(err).toBeInstanceOf(BackendUnavailable);
    expect(err).toMatchObject({ reason: "upstream_5xx", status: 502, code: "upstream_error" });
    expect(upstream.calls).toHaveLength(3);
    expect(tries).toEqual(["500", "500", "500"]);
  });

  it("honours Retry-After on a 429, and gives up at once when it asks for longer than the policy waits", async () => {
    upstream.script = { kind: "status", status: 429, retryAfter: "1" };
    upstream.calls.length = 0;
    const started = Date.now();
    const err = await failure(provider({ retry: { ...DEFAULT_RETRY_POLICY, maxRetries: 1 } }));
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(err).toMatchObject({ reason: "upstream_429", status: 429, code: "rate_limit_exceeded" });
    expect(upstream.calls).toHaveLength(2);
    upstream.script = { kind: "status", status: 429, retryAfter: "120" };
    upstream.calls.length = 0;
    expect(await failure(provider())).toMatchObject({ reason: "upstream_429" });
    expect(upstream.calls).toHaveLength(1);
  });

  it("returns a 4xx as the upstream gave it, without retrying or counting it against the breaker", async () => {
    upstream.script = { kind: "status", status: 400 };
    upstream.calls.length = 0;
    const p = provider();
    for (let i = 0; i < 4; i++) {
      const err = await failure(p);
      expect(err).toBeInstanceOf(ApiError);
      expect(err).not.toBeInstanceOf(BackendUnavailable);
      expect(err).toMatchObject({ status: 400, message: "scripted 400" });
    }
    expect(upstream.calls).toHaveLength(4);
    expect(p.breakerFor("m").state).toBe("closed");
  });

  it("times out a hung upstream", async () => {
    upstream.script = { kind: "hang" };
    const err = await failure(provider({ timeoutMs: 200, retry: { ...DEFAULT_RETRY_POLICY, maxRetries: 0 } }));
    expect(err).toMatchObject({ reason: "timeout", status: 504, code: "upstream_timeout" });
  });

  it("opens its breaker after repeated failures, fails fast while open, and closes after a good half-open trial", async () => {
    upstream.script = { kind: "status", status: 503 };
    upstream.calls.length = 0;
    const states: string[] = [];
    const p = provider({ retry: { ...DEFAULT_RETRY_POLICY, maxRetries: 0 }, onBreaker: (s) => states.push(s) });
    for (let i = 0; i < 3; i++) await failure(p);
    expect(p.breakerFor("m").state).toBe("open");
    expect(states).toEqual(["open"]);
    const fast = await failure(p);
    expect(fast).toMatchObject({ reason: "upstream_5xx", status: 503, code: "upstream_unavailable" });
    expect(upstream.calls).toHaveLength(3);
    expect(p.refusal("m")).not.toBeNull();
    await until(() => p.breakerFor("m").state === "half_open", { what: "the breaker's cool-down" });
    await failure(p);
    expect(p.breakerFor("m").state).toBe("open");
    await until(() => p.breakerFor("m").state === "half_open", { what: "the breaker's cool-down" });
    upstream.script = { kind: "ok" };
    // A half-open trial succeeds only once its body has been read to the end: a 200 alone is not enough.
    const trial = await send(p);
    expect(p.breakerFor("m").state).toBe("half_open");
    for await (const _ of trial.body());
    trial.release();
    expect(p.breakerFor("m").state).toBe("closed");
    expect(states).toEqual(["open", "open", "closed"]);
  });

  it("refuses past its concurrency cap, and a client that leaves aborts the call", async () => {
    upstream.script = { kind: "hang" };
    const p = provider({ maxConcurrency: 1 });
    const controller = new AbortController();
    const before = upstream.calls.length;
    const pending = p.send("/chat/completions", { model: "m" }, controller.signal).catch((err: unknown) => err);
    await until(() => upstream.calls.length > before, { what: "the call to reach the upstream" });
    expect(p.refusal("m")).toMatchObject({ reason: "overloaded", code: "overloaded" });
    controller.abort(new Error("client left"));
    expect(await pending).toMatchObject({ message: "client left" });
    expect(p.numInFlight).toBe(0);
    expect(p.breakerFor("m").state).toBe("closed");
  });
});

describe("retry policy", () => {
  it("draws full jitter under a doubling cap, and reads Retry-After in its three forms", () => {
    const policy = { maxRetries: 3, baseDelayMs: 100, maxDelayMs: 250, maxRetryAfterMs: 1000 };
    expect([0, 1, 2, 3].map((retry) => retryDelayMs(policy, retry, null, () => 0.999))).toEqual([99, 199, 249, 249]);
    expect(retryDelayMs(policy, 0, null, () => 0)).toBe(0);
    expect(retryDelayMs(policy, 0, 800)).toBe(800);
    expect(retryDelayMs(policy, 0, 1001)).toBeNull();
    expect(retryAfterMsOf(new Headers({ "retry-after": "2" }))).toBe(2000);
    expect(retryAfterMsOf(new Headers({ "retry-after-ms": "150" }))).toBe(150);
    expect(retryAfterMsOf(new Headers({ "retry-after": new Date(10_000).toUTCString() }), 7000)).toBe(3000);
    expect(retryAfterMsOf(new Headers({ "retry-after": "soon" }))).toBeNull();
  });

  it("half-opens a breaker for one trial at a time", () => {
    let now = 0;
    const breaker = new CircuitBreaker({ failureThreshold: 2, cooldownMs: 100, now: () => now });
    breaker.failed();
    expect(breaker.state).toBe("closed");
    breaker.failed();
    expect(breaker.tryAcquire()).toBe(false);
    now = 100;
    expect(breaker.tryAcquire()).toBe(true);
    expect(breaker.tryAcquire()).toBe(false);
    breaker.released();
    expect(breaker.tryAcquire()).toBe(true);
    breaker.succeeded();
    expect(breaker.state).toBe("closed");
  });
});

describe("route plan", () => {
  const local = () => new LocalBackend("local", { limits: { maxNumSeqs: 2, maxQueuedRequests: 8 }, defaults: {} });
  const remote = new UpstreamBackend("remote", new UpstreamProvider({ name: "p", baseUrl: "http://127.0.0.1:9/v1", apiKey: null, timeoutMs: 1000, maxConcurrency: 1 }));

  it("tries the burst target last while the local model keeps up, and first once it is busy", () => {
    const busy = local();
    const route = new ServingPlan("r", [busy], { burst: { to: remote, waitingOver: 1 } });
    expect(route.plan().targets.map((t) => t.id)).toEqual(["local", "remote"]);
    busy.numInFlight = 3;
    expect(route.plan()).toMatchObject({ burst: false });
    busy.numInFlight = 4;
    expect(route.plan().targets.map((t) => t.id)).toEqual(["remote", "local"]);
    expect(route.plan().burst).toBe(true);
  });

  it("bursts on the estimated TTFT only while the local model is busy", () => {
    const slow = local();
    const route = new ServingPlan("r", [slow, remote], { burst: { to: remote, ttftOverMs: 500 } });
    slow.observeTtft(2000);
    expect(route.plan().burst).toBe(false);
    slow.numInFlight = 1;
    expect(route.plan().targets.map((t) => t.id)).toEqual(["remote", "local"]);
  });

  it("falls back on a backend's failures, never on the request's own or a key's limit", () => {
    expect(fallbackReasonOf(new EngineError("ENGINE_FAILED", "died"))).toBe("engine_down");
    expect(fallbackReasonOf(new EngineError("PROMPT_TOO_LONG", "long"))).toBeNull();
    expect(fallbackReasonOf(new BackendUnavailable("timeout", 504, "slow", "upstream_timeout"))).toBe("timeout");
    expect(fallbackReasonOf(new ApiError(429, "rpm", "requests", null, "rate_limit_exceeded"))).toBeNull();
  });
});
