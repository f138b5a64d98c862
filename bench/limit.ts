/**
 * The model's own ceiling: the same workload run straight on the runner as full static
 * batches (no HTTP, no scheduler, no sampling beyond the graph's argmax). Each batch is
 * prefilled in one step and then decoded one token per step.
 */
import { KvBuffers } from "../engine/runner/onnx-host/kv-buffers.ts";
import { createRunner } from "../engine/runner/runner-registry.ts";
import type { StepSequence } from "../engine/runner/step-runner.ts";
import { ensureGraph, type GraphBuildOptions } from "../models/build-graph.ts";
import type { ModelConfig } from "../models/config.ts";
import { Prng } from "../models/prng.ts";

export interface LimitOptions {
  modelDir: string;
  batchSize: number;
  numPrompts: number;
  inputLen: number;
  outputLen: number;
  blockSize: number;
  maxTokenId: number;
  intraOpThreads?: number;
  seed?: number;
  /** The graph the server runs (its --quantization). */
  build?: GraphBuildOptions;
}

export interface LimitResult {
  batchSize: number;
  durationS: number;
  totalOutputTokens: number;
  totalInputTokens: number;
  outputThroughput: number;
  totalTokenThroughput: number;
  /** Mean time of one decode step of the full batch. */
  meanDecodeStepMs: number;
  /** The linears' and LM head's FLOPs in one decode step of the full batch. */
  decodeMatmulFlops: number;
  config: ModelConfig;
}

export async function measureLimit(options: LimitOptions): Promise<LimitResult> {
  const { batchSize, inputLen, outputLen, blockSize } = options;
  const graph = ensureGraph(options.modelDir, { build: options.build });
  const blocksPerSeq = Math.ceil((inputLen + outputLen) / blockSize);
  const { config } = graph;
  const bytesPerBlock = KvBuffers.bytesPerBlock({ numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize });
  const runner = await createRunner("cpu", {
    graphPath: graph.graphPath, config, blockSize, kvCacheBytes: (1 + batchSize * blocksPerSeq) * bytesPerBlock, intraOpThreads: options.intraOpThreads,
  });
  const rng = new Prng(options.seed ?? 0);
  let totalOutputTokens = 0;
  let decodeMs = 0;
  let numDecodeSteps = 0;
  const started = performance.now();
  try {
    for (let first = 0; first < options.numPrompts; first += batchSize) {
      const size = Math.min(batchSize, options.numPrompts - first);
      const tables = Array.from({ length: size }, (_, b) => Array.from({ length: blocksPerSeq }, (_, i) => 1 + b * blocksPerSeq + i));
      const prompts = tables.map(() => Array.from({ length: inputLen }, () => Math.floor(rng.next() * options.maxTokenId)));
      const prefill: StepSequence[] = prompts.map((tokenIds, b) => ({ tokenIds, numPastTokens: 0, blockTable: tables[b], logitsFrom: inputLen - 1 }));
      let next = (await runner.step(prefill, { fullLogits: false })).map((l) => l.topIds[0]);
      totalOutputTokens += size;
      for (let t = 1; t < outputLen; t++) {
        const stepStarted = performance.now();
        const decode = next.map((token, b) => ({ tokenIds: [token], numPastTokens: inputLen + t - 1, blockTable: tables[b], logitsFrom: 0 }));
        next = (await runner.step(decode, { fullLogits: false })).map((l) => l.topIds[0]);
        decodeMs += performance.now() - stepStarted;
        numDecodeSteps++;
        totalOutputTokens += size;
      }
    }
  } finally {
    await runner.release();
  }
  const durationS = (performance.now() - started) / 1000;
  const totalInputTokens = options.numPrompts * inputLen;
  return {
    batchSize, durationS, totalOutputTokens, totalInputTokens,
    outputThroughput: totalOutputTokens / durationS,
    totalTokenThroughput: (totalInputTokens + totalOutputTokens) / durationS,
    meanDecodeStepMs: numDecodeSteps > 0 ? decodeMs / numDecodeSteps : 0,
    decodeMatmulFlops: decodeMatmulFlops(config, batchSize), config,
  };
}

/** 2 × rows × the weights of every linear (q/k/v/o, gate/up/down) and the LM head: a decode step's matmul work. */
export function decodeMatmulFlops(config: ModelConfig, rows: number): number {
  const { hiddenSize: d, numHeads, numKvHeads, headDim, intermediateSize: f, numLayers, vocabSize } = config;
  const perLayer = d * (numHeads + 2 * numKvHeads) * headDim + numHeads * headDim * d + 3 * d * f;
  return 2 * rows * (numLayers * perLayer + vocabSize * d);
}
