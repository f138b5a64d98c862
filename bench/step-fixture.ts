/**
 * The real runner on a synthetic or local checkpoint, set up for timing single steps:
 * `batch` sequences whose contexts are filled to `context` tokens, ready for decode steps
 * of the whole batch, and one spare table for a prefill chunk. Used by profile-step.ts and
 * ab-step.ts.
 */
import { KvBuffers } from "../engine/runner/onnx-host/kv-buffers.ts";
import { OnnxRunner } from "../engine/runner/onnx-host/onnx-runner.ts";
import type { StepSequence } from "../engine/runner/step-runner.ts";
import { DEFAULT_MAX_LORA_RANK, ensureGraph, type GraphBuildOptions } from "../models/build-graph.ts";
import { readLoraAdapter } from "../models/lora/adapter.ts";
import { cachedRandomAdapters } from "../models/synthetic/lora-adapter.ts";
import type { ModelConfig } from "../models/config.ts";
import { Prng } from "../models/prng.ts";
import { ensureDefaultModel, ensureSyntheticModel, SYNTHETIC_MODELS } from "../models/synthetic/default-model.ts";

export interface StepFixtureOptions {
  batch: number;
  context: number;
  /** Decode steps the fixture must have room for. */
  steps: number;
  prefillLen: number;
  threads?: number;
  profileFilePrefix?: string;
  /** The first this many tokens (whole blocks) of every sequence are the same, in the same blocks, filled once. */
  sharedPrefix?: number;
  /** The runner's shareBlocks (default on). */
  shareBlocks?: boolean;
  /** The runner's splitPasts (default on). */
  splitPasts?: boolean;
  /** With a graph built with LoRA slots: load this many random adapters (of the slots' rank) and spread the batch's rows over them evenly (0: every row on the base model). */
  loraMix?: number;
  /** Sequence b's context is shared + (context − shared)·(b + 1)/batch, instead of `context` for all: ragged pasts. */
  raggedContext?: boolean;
}

export interface StepFixture {
  runner: OnnxRunner;
  config: ModelConfig;
  /** The graph's weights on disk. */
  weightsBytes: number;
  /** One prefill chunk of prefillLen tokens, on the spare table; returns its wall time, ms. */
  prefill(): Promise<number>;
  /** Fills every sequence's context (one prefill step each). */
  fill(): Promise<void>;
  /** Decode step `t` (0, 1, …) of the whole batch; returns its wall time, ms. */
  decode(t: number): Promise<number>;
}

/** --model: a synthetic model's name, "default", or a checkpoint folder. */
export function modelDirOf(model: string): string {
  if (model in SYNTHETIC_MODELS) return ensureSyntheticModel(model);
  return model === "default" ? ensureDefaultModel() : model;
}

export async function openStepFixture(modelDir: string, build: GraphBuildOptions, options: StepFixtureOptions): Promise<StepFixture> {
  const { batch, context, prefillLen } = options;
  const graph = ensureGraph(modelDir, { progress: true, build });
  const { config } = graph;
  const blockSize = 16;
  const blocksPerSeq = Math.ceil(Math.max(context + options.steps + 2, prefillLen) / blockSize);
  const { kvCacheDtype } = graph;
  const bytesPerBlock = KvBuffers.bytesPerBlock({ numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize, dtype: kvCacheDtype });
  const runner = await OnnxRunner.create({
    graphPath: graph.graphPath, config, device: "cpu", blockSize, kvCacheBytes: (1 + (batch + 1) * blocksPerSeq) * bytesPerBlock, kvCacheDtype,
    intraOpThreads: options.threads ?? 0, profileFilePrefix: options.profileFilePrefix, shareBlocks: options.shareBlocks, splitPasts: options.splitPasts,
    ...(build.maxLoras ? { lora: { slots: build.maxLoras, rank: build.maxLoraRank ?? DEFAULT_MAX_LORA_RANK, layout: build.loraLayout } } : {}),
  });
  const mix = options.loraMix ?? 0;
  if (mix > 0) {
    if (!runner.lora || mix > runner.lora.numSlots) throw new Error(`--lora-mix ${mix} needs a graph with at least ${mix} LoRA slots (lora=N:R)`);
    const paths = cachedRandomAdapters(modelDir, config, mix, runner.lora.rank);
    for (let slot = 1; slot <= mix; slot++) {
      runner.lora.load(slot, readLoraAdapter(paths[slot - 1], config, `bench-${slot}`));
    }
  }
  const slotOf = (b: number) => (mix > 0 ? 1 + (b % mix) : 0);
  const sharedBlocks = Math.floor((options.sharedPrefix ?? 0) / blockSize);
  const shared = sharedBlocks * blockSize;
  if (shared > context) throw new Error(`--shared-prefix ${shared} is longer than the context ${context}`);
  // Never below the shared prefix, which sequence 0 fills for all.
  const contextOf = (b: number) => (options.raggedContext ? shared + Math.round(((context - shared) * (b + 1)) / batch) : context);
  const rng = new Prng(1);
  const tokens = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * (config.vocabSize - 1000)));
  // Sequence b's blocks; with a shared prefix, every sequence's first sharedBlocks are sequence 0's.
  const tables = Array.from({ length: batch + 1 }, (_, b) => Array.from({ length: blocksPerSeq }, (_, i) => 1 + (b < batch && i < sharedBlocks ? 0 : b) * blocksPerSeq + i));
  const timed = async (seqs: StepSequence[]) => {
    const started = performance.now();
    await runner.step(seqs, { fullLogits: false });
    return performance.now() - started;
  };
  return {
    runner, config, weightsBytes: graph.weightsBytes,
    prefill: () => timed([{ tokenIds: tokens(prefillLen), numPastTokens: 0, blockTable: tables[batch], logitsFrom: prefillLen - 1 }]),
    fill: async () => {
      for (let b = 0; b < batch; b++) {
        const from = b === 0 ? 0 : shared;
        const to = contextOf(b);
        if (from < to) await timed([{ tokenIds: tokens(to - from), numPastTokens: from, blockTable: tables[b], logitsFrom: to - from - 1, loraSlot: slotOf(b) }]);
      }
    },
    decode: (t) => timed(tables.slice(0, batch).map((blockTable, b) => ({ tokenIds: tokens(1), numPastTokens: contextOf(b) + t, blockTable, logitsFrom: 0, loraSlot: slotOf(b) }))),
  };
}
