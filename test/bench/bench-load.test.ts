/**
 * The load generator end to end against a fake OpenAI streaming server on 127.0.0.1: timing of
 * token chunks, usage, the concurrency cap, arrival spreading, warm-up, and every way a request
 * can fail (HTTP error, error event, timeout, refused connection).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { arrivalOffsetsMs, runLoad, sampleGamma, type LoadOptions } from "../../bench/load-generator.ts";
import { computeMetrics, e2elMsOf, itlMsOf, ttftMsOf } from "../../bench/metrics.ts";
import { runBench } from "../../bench/run-bench.ts";
import type { BenchRequest } from "../../bench/workload.ts";
import { Prng } from "../../models/prng.ts";

const CHUNK_DELAY_MS = 15;
/** The fake server reports this many prompt tokens whatever it gets, to show usage wins. */
const USAGE_PROMPT_TOKENS = 42;

/**
 * Streams `max_tokens` chunks, CHUNK_DELAY_MS apart, then usage and [DONE]. The prompt picks a
 * behaviour: "fail" → 500, "hang" → never answers, "broken" → an error event, "nousage" → no usage.
 */
class FakeOpenAiServer {
  readonly server: Server = createServer((req, res) => void this.handle(req, res));
  inFlight = 0;
  maxInFlight = 0;
  numRequests = 0;
  bodies: Record<string, unknown>[] = [];

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  reset(): void {
    Object.assign(this, { inFlight: 0, maxInFlight: 0, numRequests: 0, bodies: [] });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let raw = "";
    for await (const piece of req) raw += piece;
    const body = JSON.parse(raw);
    this.bodies.push(body);
    this.numRequests++;
    this.maxInFlight = Math.max(this.maxInFlight, ++this.inFlight);
    try {
      await this.respond(req.url ?? "", body, res);
    } finally {
      this.inFlight--;
    }
  }

  private async respond(url: string, body: { prompt?: string; messages?: { content: string }[]; max_tokens: number }, res: ServerResponse): Promise<void> {
    const prompt = body.prompt ?? body.messages![0].content;
    if (prompt === "fail") return void res.writeHead(500, { "content-type": "application/json" }).end(`{"error":{"message":"boom"}}`);
    res.writeHead(200, { "content-type": "text/event-stream" });
    if (prompt === "hang") return void (await new Promise((resolve) => res.on("close", resolve)));
    const chat = url.endsWith("/chat/completions");
    if (chat) res.write(`data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n`);
    for (let i = 0; i < body.max_tokens; i++) {
      await sleep(CHUNK_DELAY_MS);
      if (prompt === "broken" && i === 1) return void res.end(`data: {"error":{"message":"engine fault"}}\n\ndata: [DONE]\n\n`);
      const last = i === body.max_tokens - 1 ? `"length"` : "null";
      const choice = chat ? `{"index":0,"delta":{"content":"t${i} "},"finish_reason":${last}}` : `{"index":0,"text":"t${i} ","finish_reason":${last}}`;
      const event = `data: {"choices":[${choice}],"usage":null}\n\n`;
      // NOTE: the first chunk goes out in two writes, so the client sees half an event first.
      if (i === 0) res.write(event.slice(0, 20));
      res.write(i === 0 ? event.slice(20) : event);
    }
    if (prompt !== "nousage") {
      res.write(`data: {"choices":[],"usage":{"prompt_tokens":${USAGE_PROMPT_TOKENS},"completion_tokens":${body.max_tokens}}}\n\n`);
    }
    res.end("data: [DONE]\n\n");
  }
}

const fake = new FakeOpenAiServer();
let baseUrl = "";

beforeAll(async () => {
  baseUrl = await fake.start();
});
beforeEach(() => fake.reset());
afterAll(async () => {
  fake.server.closeAllConnections();
  await new Promise((resolve) => fake.server.close(resolve));
});

function requests(n: number, outputLen: number, prompt = "hello"): BenchRequest[] {
  return Array.from({ length: n }, () => ({ prompt, promptLen: 3, outputLen }));
}

function load(overrides: Partial<LoadOptions> = {}): LoadOptions {
  return { baseUrl, model: "fake", progress: false, timeoutMs: 5000, ...overrides };
}

describe("runLoad against a fake streaming server", () => {
  it("stamps every token chunk: TTFT, ITL, output and prompt tokens from usage", async () => {
    const { results, durationS } = await runLoad(requests(3, 5), load({ ignoreEos: true, temperature: 0.5 }));
    expect(fake.bodies[0]).toMatchObject({
      model: "fake", prompt: "hello", max_tokens: 5, temperature: 0.5, stream: true,
      stream_options: { include_usage: true }, ignore_eos: true,
    });
    for (const r of results) {
      expect(r).toMatchObject({ success: true, numOutputTokens: 5, numPromptTokens: USAGE_PROMPT_TOKENS, generatedText: "t0 t1 t2 t3 t4 " });
      expect(r.tokenTimesMs).toHaveLength(5);
      expect(ttftMsOf(r)).toBeGreaterThanOrEqual(CHUNK_DELAY_MS - 2);
      // NOTE: one gap can shrink when the chunk before it was read late, so bound the whole.
      const gaps = itlMsOf(r);
      expect(gaps).toHaveLength(4);
      expect(e2elMsOf(r)).toBeGreaterThanOrEqual(5 * CHUNK_DELAY_MS - 2);
      expect(Math.max(...gaps)).toBeLessThan(500);
      expect(r.endMs).toBeGreaterThanOrEqual(r.tokenTimesMs[4]);
    }
    const metrics = computeMetrics(results, durationS, { percentiles: [99] });
    expect(metrics).toMatchObject({ completed: 3, totalOutputTokens: 15, totalInputTokens: 3 * USAGE_PROMPT_TOKENS });
    expect(metrics.itl.meanMs).toBeGreaterThan(CHUNK_DELAY_MS / 2);
    expect(durationS).toBeGreaterThanOrEqual((5 * CHUNK_DELAY_MS - 2) / 1000);
  });

  it("counts chunks when there is no usage, and skips chat's opening role chunk", async () => {
    const [plain] = (await runLoad(requests(1, 4, "nousage"), load())).results;
    expect(plain).toMatchObject({ success: true, numOutputTokens: 4, numPromptTokens: 3 });
    const [chat] = (await runLoad(requests(1, 4), load({ endpoint: "chat" }))).results;
    expect(fake.bodies[1]).toMatchObject({ messages: [{ role: "user", content: "hello" }], max_tokens: 4 });
    expect(chat).toMatchObject({ success: true, numOutputTokens: 4, generatedText: "t0 t1 t2 t3 " });
    expect(chat.tokenTimesMs).toHaveLength(4);
    expect(ttftMsOf(chat)).toBeGreaterThanOrEqual(CHUNK_DELAY_MS - 2);
  });

  it("keeps at most maxConcurrency requests in flight", async () => {
    const { results } = await runLoad(requests(8, 2), load({ maxConcurrency: 2 }));
    expect(results.every((r) => r.success)).toBe(true);
    expect(fake.maxInFlight).toBe(2);
    fake.reset();
    await runLoad(requests(6, 2), load());
    expect(fake.maxInFlight).toBe(6);
  });

  it("spreads arrivals at a finite rate and sends them together at an infinite one", async () => {
    const spread = (rs: { startMs: number }[]) => Math.max(...rs.map((r) => r.startMs)) - Math.min(...rs.map((r) => r.startMs));
    const poisson = await runLoad(requests(10, 1), load({ requestRate: 50, seed: 1 }));
    const burst = await runLoad(requests(10, 1), load());
    // The last arrival lands at exactly n / rate = 200 ms.
    expect(poisson.durationS).toBeGreaterThanOrEqual(0.2);
    expect(spread(poisson.results)).toBeGreaterThan(60);
    expect(spread(burst.results)).toBeLessThan(spread(poisson.results) / 2);
  });

  it("runs warm-up requests first and leaves them out of the results", async () => {
    const { results } = await runLoad(requests(2, 1), load({ warmup: 3 }));
    expect(fake.numRequests).toBe(5);
    expect(results).toHaveLength(2);
  });

  it("records failures without throwing: HTTP error, error event, timeout, refused connection", async () => {
    const mixed = [...requests(2, 3), ...requests(1, 3, "fail"), ...requests(1, 3, "broken"), ...requests(1, 3, "hang")];
    const { results, durationS } = await runLoad(mixed, load({ timeoutMs: 300 }));
    expect(results.map((r) => r.success)).toEqual([true, true, false, false, false]);
    expect(results[2].error).toMatch(/^HTTP 500: .*boom/);
    expect(results[3].error).toContain("engine fault");
    expect(results[4].error).toBe("timed out after 300 ms");
    expect(durationS).toBeLessThan(3);
    expect(computeMetrics(results, durationS, { percentiles: [] })).toMatchObject({ completed: 2, failed: 3 });

    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const deadUrl = `http://127.0.0.1:${(closed.address() as AddressInfo).port}`;
    await new Promise((resolve) => closed.close(resolve));
    const [refused] = (await runLoad(requests(1, 1), load({ baseUrl: deadUrl }))).results;
    expect(refused.success).toBe(false);
    expect(refused.error).toMatch(/ECONNREFUSED/);
  });

  it("aborts what is still running when the caller's signal fires", async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    const { results } = await runLoad(requests(2, 1, "hang"), load({ signal: controller.signal }));
    expect(results.map((r) => r.error)).toEqual(["aborted", "aborted"]);
  });

  it("refuses id prompts on the chat endpoint and nonsense rates", async () => {
    await expect(runLoad([{ prompt: [1, 2], promptLen: 2, outputLen: 1 }], load({ endpoint: "chat" }))).rejects.toThrow(/text prompts/);
    await expect(runLoad(requests(1, 1), load({ requestRate: 0 }))).rejects.toThrow(RangeError);
  });
});

describe("arrivals", () => {
  it("rescales gamma gaps so the last arrival lands at n / rate", () => {
    const offsets = arrivalOffsetsMs(100, 20, 1, new Prng(7));
    expect(offsets[99]).toBeCloseTo(5000, 6);
    expect(offsets.every((t, i) => i === 0 || t >= offsets[i - 1])).toBe(true);
    expect(arrivalOffsetsMs(4, 2, Infinity, new Prng(1))).toEqual([500, 1000, 1500, 2000]);
    expect(arrivalOffsetsMs(3, Infinity, 1, new Prng(1))).toEqual([0, 0, 0]);
  });

  it("samples Gamma(shape, 1) with mean and variance equal to the shape", () => {
    for (const shape of [0.5, 1, 4]) {
      const prng = new Prng(11);
      const samples = Array.from({ length: 40_000 }, () => sampleGamma(prng, shape));
      const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
      const variance = samples.reduce((a, b) => a + (b - mean) ** 2, 0) / samples.length;
      expect(mean).toBeCloseTo(shape, 1);
      expect(variance / shape).toBeGreaterThan(0.93);
      expect(variance / shape).toBeLessThan(1.07);
    }
  });
});

describe("runBench's rounds", () => {
  it("sends each sweep point prompts of its own, so that none is served from a prefix cache an earlier one filled", async () => {
    const { baseUrl: _unused, ...rest } = load();
    const result = await runBench({ baseUrl, model: "fake" }, {
      workload: requests(2, 2, "round 0"),
      workloadOfRound: (round) => requests(2, 2, `round ${round}`),
      load: rest, maxConcurrency: 2, sweepConcurrency: [1, 2], compareLimit: false, compareSequential: false,
      rounds: 1, percentiles: [99], config: {},
    });
    expect(result.sweep).toHaveLength(2);
    expect(fake.bodies.map((b) => b.prompt)).toEqual(["round 0", "round 0", "round 1", "round 1", "round 2", "round 2"]);
  });
});
