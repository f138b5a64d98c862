/**
 * Serving metrics with the definitions of vLLM's `calculate_metrics` (benchmarks/serve.py), so
 * numbers from tokenmill and from `vllm bench serve` can sit in one table.
 */
import type { RequestResult } from "./sse-client.ts";

/** Service-level objectives in milliseconds; a request is good when it meets every one given. */
export interface GoodputSlo {
  ttftMs?: number;
  tpotMs?: number;
  e2elMs?: number;
}

export interface MetricsOptions {
  goodput?: GoodputSlo;
  /** Percentiles to report, e.g. [50, 90, 99]. */
  percentiles: readonly number[];
}

/** Summary of one latency, in milliseconds; every field is 0 when there were no samples. */
export interface LatencyStats {
  meanMs: number;
  medianMs: number;
  /** Population standard deviation (numpy's default, ddof = 0). */
  stdMs: number;
  /** Keyed by percentile: `percentilesMs[99]`. */
  percentilesMs: Record<number, number>;
}

export interface BenchMetrics {
  completed: number;
  failed: number;
  totalInputTokens: number;
  totalOutputTokens: number;
  durationS: number;
  requestThroughput: number;
  /** Good requests per second; null when no SLO was given. */
  requestGoodput: number | null;
  outputThroughput: number;
  totalTokenThroughput: number;
  ttft: LatencyStats;
  /** Per request, over requests with more than one output token. */
  tpot: LatencyStats;
  /** Every gap between token chunks, pooled over all requests. */
  itl: LatencyStats;
  e2el: LatencyStats;
  percentiles: readonly number[];
}

/** Time to the first token chunk. */
export function ttftMsOf(r: RequestResult): number {
  return r.tokenTimesMs[0] - r.startMs;
}

/** Gaps between consecutive token chunks. */
export function itlMsOf(r: RequestResult): number[] {
  return r.tokenTimesMs.slice(1).map((t, i) => t - r.tokenTimesMs[i]);
}

/** Until the last token chunk, as vLLM measures it (a trailing usage chunk doesn't count). */
export function e2elMsOf(r: RequestResult): number {
  return r.tokenTimesMs[r.tokenTimesMs.length - 1] - r.startMs;
}

/** Time per output token after the first; null for a request with at most one output token. */
export function tpotMsOf(r: RequestResult): number | null {
  return r.numOutputTokens > 1 ? (e2elMsOf(r) - ttftMsOf(r)) / (r.numOutputTokens - 1) : null;
}

export function computeMetrics(results: readonly RequestResult[], durationS: number, opts: MetricsOptions): BenchMetrics {
  const done = results.filter((r) => r.success);
  const totalInputTokens = sum(done.map((r) => r.numPromptTokens));
  const totalOutputTokens = sum(done.map((r) => r.numOutputTokens));
  const ttfts = done.map(ttftMsOf);
  const tpots = done.map(tpotMsOf).filter((t) => t !== null);
  const e2els = done.map(e2elMsOf);
  const stats = (values: number[]) => latencyStats(values, opts.percentiles);
  return {
    completed: done.length,
    failed: results.length - done.length,
    totalInputTokens,
    totalOutputTokens,
    durationS,
    requestThroughput: done.length / durationS,
    requestGoodput: opts.goodput && hasSlo(opts.goodput) ? done.filter((r) => isGood(r, opts.goodput!)).length / durationS : null,
    outputThroughput: totalOutputTokens / durationS,
    totalTokenThroughput: (totalInputTokens + totalOutputTokens) / durationS,
    ttft: stats(ttfts),
    tpot: stats(tpots),
    itl: stats(done.flatMap(itlMsOf)),
    e2el: stats(e2els),
    percentiles: [...opts.percentiles],
  };
}

function hasSlo(slo: GoodputSlo): boolean {
  return slo.ttftMs !== undefined || slo.tpotMs !== undefined || slo.e2elMs !== undefined;
}

/** NOTE: as in vLLM, a one-token request counts as TPOT 0 here, and meeting an SLO exactly is good. */
function isGood(r: RequestResult, slo: GoodputSlo): boolean {
  return (slo.ttftMs === undefined || ttftMsOf(r) <= slo.ttftMs)
    && (slo.tpotMs === undefined || (tpotMsOf(r) ?? 0) <= slo.tpotMs)
    && (slo.e2elMs === undefined || e2elMsOf(r) <= slo.e2elMs);
}

export function latencyStats(values: readonly number[], percentiles: readonly number[]): LatencyStats {
  const sorted = [...values].sort((a, b) => a - b);
  const mean = sorted.length === 0 ? 0 : sum(sorted) / sorted.length;
  const variance = sorted.length === 0 ? 0 : sum(sorted.map((v) => (v - mean) ** 2)) / sorted.length;
  return {
    meanMs: mean,
    medianMs: percentile(sorted, 50),
    stdMs: Math.sqrt(variance),
    percentilesMs: Object.fromEntries(percentiles.map((p) => [p, percentile(sorted, p)])),
  };
}

/**
 * The p-th percentile of ascending `sorted` by linear interpolation between the two nearest ranks,
 * numpy's default ("linear", type 7): rank = p/100 · (n − 1). Returns 0 for no values, as vLLM does.
 */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const rank = (p / 100) * (sorted.length - 1);
  const low = Math.floor(rank);
  const high = Math.min(low + 1, sorted.length - 1);
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - low);
}

function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
