/**
 * The benchmark's plan: one run, a concurrency sweep, and the side-by-side comparisons
 * (the runner's static-batch limit, and the same workload served one request at a time).
 * Comparisons alternate their two sides for several rounds in this one process and
 * compare medians, so that a noisy machine moves both sides alike.
 */
import { writeFileSync } from "node:fs";
import type { GraphBuildOptions } from "../models/build-graph.ts";
import { measureGemmRate } from "./gemm-rate.ts";
import { measureLimit, type LimitResult } from "./limit.ts";
import { runLoad, type LoadOptions } from "./load-generator.ts";
import { computeMetrics, type BenchMetrics, type GoodputSlo } from "./metrics.ts";
import { sweepPlotSvg, type SweepPoint } from "./plot.ts";
import { toJson, toMarkdown } from "./report.ts";
import type { BenchRequest } from "./workload.ts";

/** A server to load: a URL, and for in-process servers a way to make a one-at-a-time twin. */
export interface BenchTarget {
  baseUrl: string;
  model: string;
  /** In-process only: the model folder, for the limit. */
  modelDir?: string;
  /** In-process only: starts the same server with --max-num-seqs 1. */
  startSequential?: () => Promise<{ baseUrl: string; close(): Promise<void> }>;
  /** In-process only: starts the same server with its weights at another quantization. */
  startQuantized?: (quantization: string) => Promise<{ baseUrl: string; close(): Promise<void> }>;
}

export interface BenchPlan {
  workload: BenchRequest[];
  /**
   * The workload of round r (r = 0 is `workload`): each round and each sweep point sends
   * prompts of its own, so that none is served from the prefix cache an earlier one filled.
   * Both sides of a comparison get the same prompts within a round.
   */
  workloadOfRound?: (round: number) => BenchRequest[];
  load: Omit<LoadOptions, "baseUrl" | "model" | "maxConcurrency">;
  maxConcurrency: number;
  sweepConcurrency?: number[];
  compareLimit: boolean;
  compareSequential: boolean;
  /** The quantization to alternate rounds with (--compare-quantization). */
  compareQuantization?: string;
  rounds: number;
  goodput?: GoodputSlo;
  percentiles: number[];
  limit?: { inputLen: number; outputLen: number; blockSize: number; maxTokenId: number; intraOpThreads?: number; build?: GraphBuildOptions };
  saveResult?: string;
  plot?: string;
  /** What an hour of this hardware costs, USD: prints the break-even $/Mtok at the measured rate. */
  gpuHourPriceUsd?: number;
  config: Record<string, unknown>;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor((values.length - 1) / 2)];

/** What a run is compared by: output tokens a second, or for embeddings (which generate none) input tokens a second. */
export function throughputOf(metrics: BenchMetrics, endpoint: string | undefined): number {
  return endpoint === "embeddings" ? metrics.totalTokenThroughput : metrics.outputThroughput;
}

export async function runBench(target: BenchTarget, plan: BenchPlan): Promise<Record<string, unknown>> {
  const tput = (m: BenchMetrics) => throughputOf(m, plan.load.endpoint);
  const embeddings = plan.load.endpoint === "embeddings";
  if (embeddings && (plan.compareLimit || plan.plot)) throw new Error("--compare-limit and --plot measure generation; an embeddings run has neither");
  const workloads = new Map<number, BenchRequest[]>([[0, plan.workload]]);
  const workloadOf = (round: number) => {
    if (!workloads.has(round)) workloads.set(round, plan.workloadOfRound?.(round) ?? plan.workload);
    return workloads.get(round)!;
  };
  const serve = async (concurrency: number, round: number, baseUrl = target.baseUrl): Promise<BenchMetrics> => {
    const run = await runLoad(workloadOf(round), { ...plan.load, baseUrl, model: target.model, maxConcurrency: concurrency });
    checkFailures(run.results, baseUrl);
    return computeMetrics(run.results, run.durationS, { goodput: plan.goodput, percentiles: plan.percentiles });
  };
  const result: Record<string, unknown> = {};
  const log = (text: string) => process.stdout.write(`${text}\n`);

  if (plan.compareLimit && (!target.modelDir || !plan.limit)) throw new Error("--compare-limit needs the in-process server (no --base-url)");
  if (plan.compareSequential && !target.startSequential) throw new Error("--compare-sequential needs the in-process server (no --base-url)");
  if (plan.compareQuantization && !target.startQuantized) throw new Error("--compare-quantization needs the in-process server (no --base-url)");
  const sequential = plan.compareSequential ? await target.startSequential!() : null;
  const quantized = plan.compareQuantization ? await target.startQuantized!(plan.compareQuantization) : null;
  const rounds = plan.compareLimit || plan.compareSequential || quantized ? plan.rounds : 1;
  const quantRounds: BenchMetrics[] = [];
  const serverRounds: BenchMetrics[] = [];
  const limits: LimitResult[] = [];
  const seqRounds: BenchMetrics[] = [];
  try {
    for (let round = 0; round < rounds; round++) {
      serverRounds.push(await serve(plan.maxConcurrency, round));
      if (plan.compareLimit) {
        limits.push(await measureLimit({ ...plan.limit!, modelDir: target.modelDir!, batchSize: plan.maxConcurrency, numPrompts: plan.workload.length }));
      }
      if (sequential) seqRounds.push(await serve(1, round, sequential.baseUrl));
      if (quantized) quantRounds.push(await serve(plan.maxConcurrency, round, quantized.baseUrl));
    }
  } finally {
    await sequential?.close();
    await quantized?.close();
  }
  const serverTput = median(serverRounds.map((m) => tput(m)));
  result.server_rounds = serverRounds.map((m) => tput(m));
  // NOTE: an embeddings run generates nothing: its rounds and ratios compare input tokens a second, and say so.
  result.throughput_measure = embeddings ? "total_token_throughput" : "output_throughput";
  const unit = embeddings ? "input tok/s" : "tok/s";
  if (limits.length > 0) {
    const limitTput = median(limits.map((l) => l.outputThroughput));
    Object.assign(result, {
      limit_output_throughput: limitTput,
      limit_decode_step_ms: median(limits.map((l) => l.meanDecodeStepMs)),
      limit_rounds: limits.map((l) => l.outputThroughput),
      server_to_limit_ratio: serverTput / limitTput,
    });
    log(`Limit (static batches of ${plan.maxConcurrency} on the runner): ${limitTput.toFixed(1)} tok/s; server: ${serverTput.toFixed(1)} tok/s; ` +
      `server / limit = ${(serverTput / limitTput).toFixed(3)} (medians of ${rounds} alternating rounds)`);
    // How much of a decode step is matmul at the GEMM's own rate, measured now, at this shape.
    const stepMs = median(limits.map((l) => l.meanDecodeStepMs));
    const { hiddenSize, intermediateSize } = limits[0].config;
    const gemm = await measureGemmRate(plan.maxConcurrency, hiddenSize, intermediateSize, plan.limit!.intraOpThreads);
    const achieved = limits[0].decodeMatmulFlops / (stepMs / 1000) / 1e9;
    Object.assign(result, {
      decode_matmul_gflops: achieved, gemm_gflops: gemm.cachedGflops, gemm_dram_gflops: gemm.dramGflops,
      decode_gemm_share: achieved / gemm.cachedGflops, decode_gemm_dram_share: achieved / gemm.dramGflops,
    });
    log(`Decode step ${stepMs.toFixed(1)} ms: matmul work at ${achieved.toFixed(1)} GFLOP/s; ORT's fp32 GEMM at [${gemm.m}, ${gemm.k}] × [${gemm.k}, ${gemm.n}] ` +
      `${gemm.cachedGflops.toFixed(1)} GFLOP/s with its weight in cache, ${gemm.dramGflops.toFixed(1)} streaming 512 MiB of weights; ` +
      `decode_gemm_share = ${(achieved / gemm.cachedGflops).toFixed(3)} (${(achieved / gemm.dramGflops).toFixed(3)} of the streaming rate)`);
  }
  if (seqRounds.length > 0) {
    const seqTput = median(seqRounds.map((m) => tput(m)));
    Object.assign(result, {
      sequential_output_throughput: seqTput,
      sequential_rounds: seqRounds.map((m) => tput(m)),
      server_to_sequential_ratio: serverTput / seqTput,
    });
    log(`Sequential (--max-num-seqs 1): ${seqTput.toFixed(1)} ${unit}; server / sequential = ${(serverTput / seqTput).toFixed(3)}`);
  }

  if (quantRounds.length > 0) {
    const otherTput = median(quantRounds.map((m) => tput(m)));
    const [ttft, otherTtft] = [median(serverRounds.map((m) => m.ttft.meanMs)), median(quantRounds.map((m) => m.ttft.meanMs))];
    Object.assign(result, {
      compare_quantization: plan.compareQuantization, compare_quantization_output_throughput: otherTput,
      compare_quantization_rounds: quantRounds.map((m) => tput(m)), quantization_speedup: serverTput / otherTput,
      compare_quantization_mean_ttft_ms: otherTtft, quantization_ttft_speedup: otherTtft / ttft,
    });
    log(`At --quantization ${plan.compareQuantization}: ${otherTput.toFixed(1)} ${unit}; this server: ${serverTput.toFixed(1)} ${unit}; ` +
      `quantization_speedup = ${(serverTput / otherTput).toFixed(3)}; mean TTFT ${otherTtft.toFixed(0)} ms there, ${ttft.toFixed(0)} ms here: ` +
      `quantization_ttft_speedup = ${(otherTtft / ttft).toFixed(3)} (medians of ${rounds} alternating rounds)`);
  }

  // The reported run is the round whose throughput is the median one.
  const reported = [...serverRounds].sort((a, b) => tput(a) - tput(b))[Math.floor((serverRounds.length - 1) / 2)];
  log(toMarkdown(reported, `tokenmill bench: ${target.model}, concurrency ${plan.maxConcurrency}`, plan.load.endpoint));
  Object.assign(result, toJson(reported, { ...plan.config, max_concurrency: plan.maxConcurrency }));
  if (plan.gpuHourPriceUsd !== undefined) {
    const usdPerMtok = breakEvenUsdPerMtok(plan.gpuHourPriceUsd, serverTput);
    result[embeddings ? "usd_per_mtok_input" : "usd_per_mtok_output"] = usdPerMtok;
    log(`Break-even: $${usdPerMtok.toFixed(4)} per million ${embeddings ? "input" : "output"} tokens at ${serverTput.toFixed(1)} ${unit} and $${plan.gpuHourPriceUsd}/hour`);
  }

  if (plan.sweepConcurrency?.length) {
    const points: (SweepPoint & { metrics: Record<string, unknown> })[] = [];
    for (const [i, concurrency] of plan.sweepConcurrency.entries()) {
      const metrics = await serve(concurrency, rounds + i);
      log(toMarkdown(metrics, `sweep: concurrency ${concurrency}`, plan.load.endpoint));
      points.push({
        concurrency, outputThroughput: metrics.outputThroughput, meanTtftMs: metrics.ttft.meanMs, meanTpotMs: metrics.tpot.meanMs,
        p99E2elMs: metrics.e2el.percentilesMs[99], metrics: toJson(metrics, { max_concurrency: concurrency }),
      });
    }
    result.sweep = points.map((p) => p.metrics);
    if (plan.plot) {
      writeFileSync(plan.plot, sweepPlotSvg(points, `${target.model}: input ${plan.config.input_len}, output ${plan.config.output_len}`));
      log(`plot: ${plan.plot}`);
    }
  }
  if (plan.saveResult) {
    writeFileSync(plan.saveResult, JSON.stringify(result, null, 2) + "\n");
    log(`results: ${plan.saveResult}`);
  }
  return result;
}

/**
 * Says why requests failed (each distinct error once, with its count, most common first) on
 * stderr, and throws when every request failed: such a run measured nothing.
 */
export function checkFailures(results: readonly { success: boolean; error?: string }[], baseUrl: string): void {
  const failed = results.filter((r) => !r.success);
  if (failed.length === 0) return;
  const counts = new Map<string, number>();
  for (const r of failed) counts.set(r.error ?? "unknown error", (counts.get(r.error ?? "unknown error") ?? 0) + 1);
  const groups = [...counts].sort((a, b) => b[1] - a[1]);
  const lines = groups.slice(0, 5).map(([error, count]) => `  ${count} × ${error}`);
  if (groups.length > 5) lines.push(`  ... and ${groups.length - 5} other errors`);
  process.stderr.write(`tokenmill bench: ${failed.length} of ${results.length} requests to ${baseUrl} failed:\n${lines.join("\n")}\n`);
  if (failed.length === results.length) throw new Error(`every request to ${baseUrl} failed (first error: ${groups[0][0]})`);
}

/** What a million output tokens cost on hardware rented at `usdPerHour`, producing `tokensPerSecond`. */
export function breakEvenUsdPerMtok(usdPerHour: number, tokensPerSecond: number): number {
  return usdPerHour / ((tokensPerSecond * 3600) / 1e6);
}
