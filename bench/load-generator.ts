/**
 * Drives a workload against a server the way `vllm bench serve` does: requests arrive all at once
 * or as a gamma process of a given rate, a semaphore caps how many are in flight, and the clock
 * runs from the first arrival until the last response (warm-up requests excluded).
 */
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import cliProgress from "cli-progress";
import { Prng } from "../models/prng.ts";
import { sendRequest, type ClientOptions, type RequestResult } from "./sse-client.ts";
import type { BenchRequest } from "./workload.ts";

export interface LoadOptions extends ClientOptions {
  /** Requests per second; Infinity (the default) sends them all at once. */
  requestRate?: number;
  /** Shape of the gamma-distributed gaps: 1 is Poisson, below 1 burstier, Infinity evenly spaced. */
  burstiness?: number;
  /** At most this many requests in flight; later arrivals wait their turn. */
  maxConcurrency?: number;
  /** Requests sent (cycling through the workload) and awaited before the clock starts. */
  warmup?: number;
  /** Seeds the arrival times. */
  seed?: number;
  /** A progress bar on stderr; on by default. */
  progress?: boolean;
  /** Aborts every request still running, e.g. on SIGINT; they are recorded as failed. */
  signal?: AbortSignal;
}

export interface LoadRun {
  /** One per workload request, in workload order. */
  results: RequestResult[];
  /** From the first arrival until the last request finished. */
  durationS: number;
}

/** Runs the warm-up, then the whole workload; a failed request is recorded, never thrown. */
export async function runLoad(requests: readonly BenchRequest[], opts: LoadOptions): Promise<LoadRun> {
  const { requestRate = Infinity, burstiness = 1, maxConcurrency = Infinity, warmup = 0 } = opts;
  if (!(requestRate > 0)) throw new RangeError(`requestRate must be positive, got ${requestRate}`);
  if (!(burstiness > 0)) throw new RangeError(`burstiness must be positive, got ${burstiness}`);
  if (!(maxConcurrency >= 1)) throw new RangeError(`maxConcurrency must be at least 1, got ${maxConcurrency}`);
  if (opts.endpoint === "chat" && requests.some((r) => typeof r.prompt !== "string")) {
    throw new TypeError("the chat endpoint needs text prompts (promptFormat \"text\")");
  }
  if (warmup > 0 && requests.length > 0) {
    const warmupRequests = Array.from({ length: warmup }, (_, i) => requests[i % requests.length]);
    await runAll(warmupRequests, new Array<number>(warmup).fill(0), maxConcurrency, opts, "warmup");
  }
  const arrivalsMs = arrivalOffsetsMs(requests.length, requestRate, burstiness, new Prng(opts.seed ?? 0));
  const startMs = performance.now();
  const results = await runAll(requests, arrivalsMs, maxConcurrency, opts, "bench");
  return { results, durationS: (performance.now() - startMs) / 1000 };
}

async function runAll(
  requests: readonly BenchRequest[], arrivalsMs: readonly number[], maxConcurrency: number, opts: LoadOptions, label: string,
): Promise<RequestResult[]> {
  const bar = opts.progress === false ? null : new cliProgress.SingleBar({
    format: `${label} [{bar}] {value}/{total} | {duration_formatted} elapsed | ETA {eta_formatted}`,
    stream: process.stderr, hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  bar?.start(requests.length, 0);
  const slots = new Semaphore(maxConcurrency);
  const startMs = performance.now();
  const pending: Promise<RequestResult>[] = [];
  try {
    for (let i = 0; i < requests.length; i++) {
      const waitMs = startMs + arrivalsMs[i] - performance.now();
      if (waitMs > 0) await sleep(waitMs, undefined, { signal: opts.signal }).catch(() => undefined);
      pending.push(slots.run(() => sendRequest(requests[i], opts, opts.signal)).finally(() => bar?.increment()));
    }
    return await Promise.all(pending);
  } finally {
    bar?.stop();
  }
}

/**
 * When each request arrives, in milliseconds from the start.
 *
 * Like vLLM, the gaps are Gamma(shape = burstiness, scale = 1 / (rate · burstiness)), so their mean
 * is 1 / rate, and the cumulative times are then rescaled so the last arrival lands exactly at
 * n / rate: runs with different seeds offer the same load.
 */
export function arrivalOffsetsMs(n: number, requestRate: number, burstiness: number, prng: Prng): number[] {
  if (requestRate === Infinity) return new Array<number>(n).fill(0);
  const offsets: number[] = [];
  let totalS = 0;
  for (let i = 0; i < n; i++) {
    totalS += burstiness === Infinity ? 1 / requestRate : sampleGamma(prng, burstiness) / (requestRate * burstiness);
    offsets.push(totalS);
  }
  const scale = totalS > 0 ? n / requestRate / totalS : 0;
  return offsets.map((s) => s * scale * 1000);
}

/** Gamma(shape, 1) by Marsaglia and Tsang's method, boosted for shape < 1. */
export function sampleGamma(prng: Prng, shape: number): number {
  if (shape < 1) return sampleGamma(prng, shape + 1) * Math.pow(1 - prng.next(), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number, v: number;
    do {
      x = prng.normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = prng.next();
    if (u < 1 - 0.0331 * x ** 4 || Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
  }
}

/** Runs tasks with at most `limit` at once, in the order they asked. */
class Semaphore {
  private readonly waiters: (() => void)[] = [];
  private running = 0;

  constructor(private readonly limit: number) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.running >= this.limit) await new Promise<void>((resolve) => this.waiters.push(resolve));
    else this.running++;
    try {
      return await task();
    } finally {
      const next = this.waiters.shift();
      if (next) next();
      else this.running--;
    }
  }
}
