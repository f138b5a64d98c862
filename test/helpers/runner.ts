/** Real ONNX Runtime runners on tiny checkpoints, and the reference's view of the same weights. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ensureGraph, type GraphBuildOptions } from "../../models/build-graph.ts";
import { openWeights } from "../../models/weights/safetensors.ts";
import { mergedWeight, type LoraAdapter, type LoraModule } from "../../models/lora/adapter.ts";
import { KvBuffers } from "../../engine/runner/onnx-host/kv-buffers.ts";
import { OnnxRunner } from "../../engine/runner/onnx-host/onnx-runner.ts";
import type { StepSequence } from "../../engine/runner/step-runner.ts";
import { referenceHiddenStates, referenceLogits } from "../reference/forward.ts";

/** A real runner whose KV cache holds exactly `numBlocks` blocks. */
export async function loadRunner(dir: string, blockSize = 4, numBlocks = 64, paddingSlack?: number, build?: GraphBuildOptions): Promise<OnnxRunner> {
  const graph = ensureGraph(dir, { build });
  const { config, kvCacheDtype } = graph;
  const kvCacheBytes = numBlocks * KvBuffers.bytesPerBlock({ numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize, dtype: kvCacheDtype });
  const lora = build?.maxLoras ? { slots: build.maxLoras, rank: build.maxLoraRank ?? 16, layout: build.loraLayout } : undefined;
  return OnnxRunner.create({ graphPath: graph.graphPath, config, device: "cpu", blockSize, kvCacheBytes, kvCacheDtype, intraOpThreads: 1, paddingSlack, lora });
}

/** Each sequence's full logits rows (vocab-wide each) from logitsFrom on. */
export async function fullLogits(runner: OnnxRunner, seqs: readonly StepSequence[]): Promise<Float32Array[]> {
  return (await runner.step(seqs, { fullLogits: true })).map((l) => l.full!);
}

/** Runs the independent TypeScript forward pass on a checkpoint's config and weights. */
function withReference<T>(dir: string, run: (config: Record<string, unknown>, get: (name: string) => { shape: number[]; data: Float32Array }) => T): T {
  const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  const weights = openWeights(dir);
  try {
    return run(config, (name) => ({ shape: weights.info(name).shape, data: weights.readFloat32(name) }));
  } finally {
    weights.close();
  }
}

/** Logits of the independent TypeScript forward pass at every position. */
export function referenceFor(dir: string, tokenIds: number[]): Float32Array[] {
  return withReference(dir, (config, get) => referenceLogits(config, get, tokenIds));
}

/** The same, on the checkpoint's weights merged with a LoRA adapter (W + scale·B·A for each projection it adapts). */
export function referenceWithAdapter(dir: string, tokenIds: number[], adapter: LoraAdapter): Float32Array[] {
  return withReference(dir, (config, get) => referenceLogits(config, (name) => {
    const tensor = get(name);
    const match = /^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.weight$/.exec(name);
    const lora = match ? adapter.layers[Number(match[1])][match[2] as LoraModule] : undefined;
    return lora ? { ...tensor, data: mergedWeight(tensor.data, lora) } : tensor;
  }, tokenIds));
}

/** Final hidden states of the independent TypeScript forward pass at every position. */
export function referenceHiddenFor(dir: string, tokenIds: number[]): Float64Array[] {
  return withReference(dir, (config, get) => referenceHiddenStates(config, get, tokenIds));
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

export function rows(flat: Float32Array, width: number): Float32Array[] {
  return Array.from({ length: flat.length / width }, (_, i) => flat.subarray(i * width, (i + 1) * width));
}

export function seededTokens(n: number, vocab: number, seed: number): number[] {
  let state = seed >>> 0;
  return Array.from({ length: n }, () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state % vocab;
  });
}
