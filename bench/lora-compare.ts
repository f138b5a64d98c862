/**
 * `tokenmill bench --compare-lora N`: what LoRA costs, served, in one run. Two servers of the
 * same model in this process, each measured in turn, round by round (so that drift on a noisy
 * machine falls on every arm alike):
 *
 *   disabled   no adapter slots, base model requests
 *   empty      --max-loras N slots, base model requests (an empty slot's cost)
 *   mixed      the same server, requests spread evenly over N adapters of rank R
 *
 * and reports each arm's output tok/s (median over rounds) and the ratios empty / disabled
 * and mixed / empty (each the median of the rounds' own ratios: an arm is compared with the
 * arms measured next to it). The adapters are seeded random PEFT folders of the model's shapes,
 * generated once into the cache (models/synthetic/lora-adapter.ts).
 */
import type { EngineOptions, LoraModuleSpec } from "../engine/index.ts";
import { readCheckpoint } from "../models/checkpoint.ts";
import type { GenerationDefaults } from "../models/index.ts";
import { cachedRandomAdapters } from "../models/synthetic/lora-adapter.ts";
import { startServer } from "../server/serve.ts";
import { runLoad } from "./load-generator.ts";
import { computeMetrics } from "./metrics.ts";
import type { BenchRequest } from "./workload.ts";

export interface LoraCompareOptions {
  engineOptions: EngineOptions;
  model: string;
  defaults: GenerationDefaults;
  workload: readonly BenchRequest[];
  concurrency: number;
  numAdapters: number;
  rank: number;
  rounds: number;
  /** Sent with every request (ignore_eos, temperature). */
  ignoreEos: boolean;
}

export interface LoraCompareResult {
  /** Output tok/s of each round, per arm. */
  rounds: { disabled: number; empty: number; mixed: number }[];
  median: { disabled: number; empty: number; mixed: number };
  emptyOverDisabled: number;
  mixedOverEmpty: number;
  mixedOverDisabled: number;
}

/** N seeded random adapters of rank R for the model, in the cache, as --lora-modules names them. */
export function benchAdapters(modelDir: string, numAdapters: number, rank: number): LoraModuleSpec[] {
  return cachedRandomAdapters(modelDir, readCheckpoint(modelDir).config, numAdapters, rank).map((path, i) => ({ name: `bench-lora-${i}`, path }));
}

export async function compareLora(opts: LoraCompareOptions): Promise<LoraCompareResult> {
  const adapters = benchAdapters(opts.engineOptions.modelDir, opts.numAdapters, opts.rank);
  const start = async (engineOptions: EngineOptions) => {
    const server = await startServer({
      models: [{ name: opts.model, engineOptions, defaults: opts.defaults, maxQueuedRequests: 100_000 }],
      host: "127.0.0.1", port: 0, shutdownTimeoutMs: 5_000, bodyLimitBytes: 64 * 1024 * 1024, logger: false, db: null,
    });
    await server.ready;
    return server;
  };
  const maxNumSeqs = Math.max(opts.concurrency, opts.engineOptions.maxNumSeqs);
  const plain = { ...opts.engineOptions, maxNumSeqs, maxLoras: undefined, maxLoraRank: undefined, loraModules: undefined };
  const disabled = await start(plain);
  const enabled = await start({ ...plain, maxLoras: opts.numAdapters, maxLoraRank: opts.rank, loraModules: adapters });
  const mixedWorkload = opts.workload.map((request, i) => ({ ...request, model: adapters[i % adapters.length].name }));
  const measure = async (url: string, workload: readonly BenchRequest[]) => {
    const run = await runLoad(workload, {
      baseUrl: url, model: opts.model, endpoint: "completions", maxConcurrency: opts.concurrency, ignoreEos: opts.ignoreEos, temperature: 0,
      warmup: Math.min(opts.concurrency, workload.length), progress: false,
    });
    const metrics = computeMetrics(run.results, run.durationS, { percentiles: [50] });
    if (metrics.failed > 0) throw new Error(`--compare-lora: ${metrics.failed} requests failed: ${run.results.find((r) => !r.success)?.error}`);
    return metrics.outputThroughput;
  };
  const rounds: LoraCompareResult["rounds"] = [];
  try {
    for (let round = 0; round < opts.rounds; round++) {
      const arm = { disabled: await measure(disabled.url, opts.workload), empty: await measure(enabled.url, opts.workload), mixed: await measure(enabled.url, mixedWorkload) };
      console.log(`round ${round + 1}: disabled ${arm.disabled.toFixed(1)}, empty slots ${arm.empty.toFixed(1)}, ${opts.numAdapters} adapters mixed ${arm.mixed.toFixed(1)} output tok/s`);
      rounds.push(arm);
    }
  } finally {
    await Promise.all([disabled.close(), enabled.close()]);
  }
  const median = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    return sorted.length % 2 ? sorted[(sorted.length - 1) / 2] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
  };
  return {
    rounds,
    median: { disabled: median(rounds.map((r) => r.disabled)), empty: median(rounds.map((r) => r.empty)), mixed: median(rounds.map((r) => r.mixed)) },
    emptyOverDisabled: median(rounds.map((r) => r.empty / r.disabled)),
    mixedOverEmpty: median(rounds.map((r) => r.mixed / r.empty)),
    mixedOverDisabled: median(rounds.map((r) => r.mixed / r.disabled)),
  };
}
