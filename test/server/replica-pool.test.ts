/**
 * Replica pools: the order each balance gives (round-robin, least-loaded, prefix with bounded
 * loads), replicas leaving and rejoining, and a pooled provider against real scripted
 * upstreams on loopback: a dead replica passed over at once, health checks, and the prefix key
 * made by the default model's own tokenizer.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ReplicaPool } from "../../server/upstream/replica-pool.ts";
import { UpstreamProvider } from "../../server/upstream/upstream-provider.ts";
import { prefixAffinity } from "../../server/chat/prefix-affinity.ts";
import { TokenizerPool } from "../../engine/index.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { startScriptedUpstream, type ScriptedUpstream } from "../helpers/scripted-upstream.ts";

const URLS = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1", "http://10.0.0.3:8000/v1"];
const all = () => true;

describe("the replica pool's order", () => {
  it("round-robin starts each request one replica further on", () => {
    const pool = new ReplicaPool(URLS, { balance: "round-robin", healthIntervalMs: 0 });
    const firsts = Array.from({ length: 6 }, () => pool.order(null, all)[0].label);
    expect(firsts).toEqual(["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]);
    expect(new Set(pool.order(null, all))).toEqual(new Set(pool.replicas));
  });

  it("least-loaded puts first the fewest in flight from here plus the load the replica reported", () => {
    const pool = new ReplicaPool(URLS, { balance: "least-loaded", healthIntervalMs: 0 });
    const [a, b, c] = pool.replicas;
    a.numInFlight = 3;
    b.numInFlight = 1;
    b.reportedLoad = 5;
    c.numInFlight = 2;
    for (let i = 0; i < 3; i++) expect(pool.order(null, all).map((r) => r.label)).toEqual([c.label, a.label, b.label]);
  });

  it("prefix sends a key to the same replica every time, spreads keys over all of them, and moves only a lost replica's keys", () => {
    const pool = new ReplicaPool(URLS, { balance: "prefix", healthIntervalMs: 0 });
    const keys = Array.from({ length: 600 }, (_, i) => `prefix-${i}`);
    const home = new Map(keys.map((key) => [key, pool.order(key, all)[0]]));
    for (const key of keys.slice(0, 50)) expect(pool.order(key, all)[0]).toBe(home.get(key));
    const share = pool.replicas.map((r) => keys.filter((k) => home.get(k) === r).length / keys.length);
    for (const s of share) expect(s).toBeGreaterThan(0.2);
    const [lost] = pool.replicas;
    lost.healthy = false;
    for (const key of keys) {
      const now = pool.order(key, all)[0];
      expect(now).not.toBe(lost);
      if (home.get(key) !== lost) expect(now).toBe(home.get(key));
    }
    lost.healthy = true;
    for (const key of keys) expect(pool.order(key, all)[0]).toBe(home.get(key));
  });

  it("prefix with bounded loads: a replica above loadFactor times the average plus the slack passes the request to the next one on the ring", () => {
    const pool = new ReplicaPool(URLS, { balance: "prefix", healthIntervalMs: 0, loadFactor: 1.25, loadSlack: 4 });
    const key = "a shared system prompt";
    const [home, next] = pool.order(key, all);
    home.numInFlight = 10;
    // 10 in flight + this one over 3 replicas: the bound is 1.25 × 11 / 3 + 4 = 8.6; home would carry 11.
    expect(pool.order(key, all)[0]).toBe(next);
    expect(pool.order(key, all)).toContain(home);
    // 7 in flight: it would carry 8 against a bound of 1.25 × 8 / 3 + 4 = 7.3, so still passed on.
    home.numInFlight = 7;
    expect(pool.order(key, all)[0]).toBe(next);
    // 5 in flight: 6 against 1.25 × 6 / 3 + 4 = 6.5, so home again.
    home.numInFlight = 5;
    expect(pool.order(key, all)[0]).toBe(home);
    // A light load never scatters a prefix: the second request of a key stays home.
    home.numInFlight = 1;
    expect(pool.order(key, all)[0]).toBe(home);
  });

  it("prefix without a key (no full block) goes to the least loaded; a replica unhealthy or unavailable is left out", () => {
    const pool = new ReplicaPool(URLS, { balance: "prefix", healthIntervalMs: 0 });
    const [a, b, c] = pool.replicas;
    a.numInFlight = 2;
    c.numInFlight = 1;
    expect(pool.order(null, all)[0]).toBe(b);
    b.healthy = false;
    expect(pool.order(null, all)).toEqual([c, a]);
    expect(pool.order("k", (r) => r !== c)).toEqual([a]);
    expect(pool.order("k", () => false)).toEqual([]);
  });
});

describe("a pooled provider against real upstreams", () => {
  let upstreams: ScriptedUpstream[] = [];
  beforeAll(async () => {
    upstreams = await Promise.all([0, 1, 2].map(() => startScriptedUpstream({ kind: "ok" })));
  });
  afterAll(async () => Promise.all(upstreams.map((u) => u.close())));

  const pooled = (extra: Partial<ConstructorParameters<typeof UpstreamProvider>[0]> = {}) => new UpstreamProvider({
    name: "pool", replicas: upstreams.map((u) => u.url), balance: "round-robin", healthIntervalMs: 0, apiKey: null, timeoutMs: 2000, maxConcurrency: 4,
    retry: { maxRetries: 1, baseDelayMs: 1000, maxDelayMs: 1000, maxRetryAfterMs: 1000 }, breaker: { failureThreshold: 2, cooldownMs: 60_000 }, ...extra,
  });
  const call = async (p: UpstreamProvider) => {
    const answer = await p.send("/chat/completions", { model: "m", messages: [{ role: "user", content: "hi" }] }, new AbortController().signal);
    for await (const _ of answer.body());
    answer.release();
  };

  it("spreads calls round-robin, goes on at once past a failing replica, and its breaker keeps it out", async () => {
    for (const u of upstreams) u.calls.length = 0;
    const tries: string[] = [];
    // NOTE: no retries at all: passing a failure on to a replica not yet tried is not a retry (it waits no backoff and spends no retry).
    const p = pooled({ onTry: (result, replica) => tries.push(`${replica} ${result}`), retry: { maxRetries: 0, baseDelayMs: 1000, maxDelayMs: 1000, maxRetryAfterMs: 1000 } });
    for (let i = 0; i < 3; i++) await call(p);
    expect(upstreams.map((u) => u.calls.length)).toEqual([1, 1, 1]);
    upstreams[1].script = { kind: "status", status: 500 };
    for (let i = 0; i < 6; i++) await call(p);
    const failing = p.pool.replicas[1].label;
    tries.forEach((t, i) => {
      if (t === `${failing} 500`) expect(tries[i + 1]).toMatch(/ 200$/);
    });
    expect(upstreams[1].calls.length).toBe(1 + 2);
    expect(p.breakerFor("m", p.pool.replicas[1]).state).toBe("open");
    expect(p.stateFor("m")).toBe("closed");
    expect(tries.filter((t) => t.endsWith(" 500"))).toHaveLength(2);
    expect(p.numInFlight).toBe(0);
    upstreams[1].script = { kind: "ok" };
  });

  it("a replica whose health check fails leaves the pool and comes back when it passes; with none healthy, calls are refused", async () => {
    for (const u of upstreams) u.calls.length = 0;
    const changes: string[] = [];
    const p = pooled({ onHealth: (replica, healthy) => changes.push(`${replica} ${healthy}`) });
    upstreams[0].healthStatus = 503;
    await p.pool.checkAll();
    expect(changes).toEqual([`${p.pool.replicas[0].label} false`]);
    for (let i = 0; i < 4; i++) await call(p);
    expect(upstreams[0].calls).toHaveLength(0);
    upstreams[0].healthStatus = 200;
    await p.pool.checkAll();
    expect(changes.at(-1)).toBe(`${p.pool.replicas[0].label} true`);
    for (let i = 0; i < 3; i++) await call(p);
    expect(upstreams[0].calls.length).toBeGreaterThan(0);
    for (const u of upstreams) u.healthStatus = 503;
    await p.pool.checkAll();
    expect(p.stateFor("m")).toBe("open");
    await expect(call(p)).rejects.toMatchObject({ status: 502, code: "upstream_error" });
    for (const u of upstreams) u.healthStatus = 200;
    await p.pool.checkAll();
    await call(p);
  });

  it("prefix: the default model's tokenizer makes the key, so requests sharing a long system prompt go to one replica and others spread", async () => {
    for (const u of upstreams) u.calls.length = 0;
    const tokenizer = await TokenizerPool.start(ensureDefaultModel(), { threads: 1 });
    try {
      const affinityKey = prefixAffinity(tokenizer, { blockSize: 16, numBlocks: 4 });
      const p = pooled({ balance: "prefix", affinityKey, maxConcurrency: 64 });
      const system = (i: number) => `You are assistant number ${i}. ${"Follow the house style guide closely and answer briefly. ".repeat(12)}`;
      const ask = async (i: number, question: string) => {
        const answer = await p.send("/chat/completions", { model: "m", messages: [{ role: "system", content: system(i) }, { role: "user", content: question }] }, new AbortController().signal);
        for await (const _ of answer.body());
        answer.release();
      };
      const where = () => upstreams.map((u) => u.calls.length);
      for (const question of ["What is the time?", "How are you?", "Tell me a joke.", "Why is the sky blue?"]) await ask(7, question);
      expect(where().filter((n) => n > 0)).toHaveLength(1);
      expect(Math.max(...where())).toBe(4);
      for (let i = 0; i < 30; i++) await ask(100 + i, "hello");
      expect(where().every((n) => n > 2)).toBe(true);
      expect(await affinityKey("/chat/completions", { model: "m", messages: [{ role: "user", content: "hi" }] })).toBeNull();
      expect(await affinityKey("/completions", { model: "m", prompt: Array.from({ length: 64 }, (_, i) => i) })).toEqual(
        await affinityKey("/completions", { model: "m", prompt: [...Array.from({ length: 64 }, (_, i) => i), 7, 8, 9] }),
      );
      expect(await affinityKey("/embeddings", { model: "m", input: "x" })).toBeNull();
    } finally {
      await tokenizer.close();
    }
  });
});
