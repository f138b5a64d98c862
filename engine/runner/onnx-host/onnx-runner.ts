/**
 * Runs steps of the paged-KV graph on ONNX Runtime with the KV cache in host memory: lays
 * out each group, runs the session, copies the step's new K/V into the buffers and returns
 * the requested logits.
 */
import { GRAPH_INPUTS, GRAPH_OUTPUTS, hasScales, poolInputNames, presentOutputNames, weightsBytesOf, type KvCacheDtype, type LoraLayout, type ModelConfig } from "../../../models/index.ts";
import { EngineError } from "../../common/engine-error.ts";
import { LoraSlots } from "./lora-slots.ts";
import type { KvCacheInfo, StepOptions, StepRunner, StepSequence } from "../step-runner.ts";
import { splitStepRows, type SequenceRows } from "../step-rows.ts";
import { KvBuffers, type KvArray } from "./kv-buffers.ts";
import { type OnnxDevice, createSession, floatTensor, int64Tensor, ort, rowsOf } from "./onnx-session.ts";
import { groupForPadding, layoutStep, splitByPast } from "./step-layout.ts";
import { statSync } from "node:fs";

export interface OnnxRunnerOptions {
  graphPath: string;
  config: ModelConfig;
  device: OnnxDevice;
  blockSize: number;
  /** Host memory for the KV buffers; the runner fits as many blocks as it can. */
  kvCacheBytes: number;
  /** How the graph's pool stores K/V (the graph was built for it: BuiltGraph.kvCacheDtype). Default float32. */
  kvCacheDtype?: KvCacheDtype;
  intraOpThreads?: number;
  /** How much padding a group of sequences may carry (padded tokens / real tokens); see groupForPadding. */
  paddingSlack?: number;
  /** Profile every run with ONNX Runtime's profiler (see SessionOptions.profileFilePrefix). */
  profileFilePrefix?: string;
  /** Read the blocks every sequence of a step shares once (default; off for A/B runs). See step-layout.ts. */
  shareBlocks?: boolean;
  /** Let ORT's threads spin between parallel sections (default off; see spinningFor). */
  spinning?: boolean;
  /** Split a step's sequences by past length where it pays (default on; off for A/B runs). See splitByPast. */
  splitPasts?: boolean;
  /** The graph's LoRA slots (it was built with them: --max-loras, --max-lora-rank); absent: none. */
  lora?: { slots: number; rank: number; layout?: LoraLayout };
}

export class OnnxRunner implements StepRunner {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly kvCache: KvCacheInfo;
  private readonly poolFeeds: Record<string, ort.Tensor> = {};
  private readonly fetches: string[];

  private constructor(
    private readonly session: ort.InferenceSession,
    readonly buffers: KvBuffers,
    private readonly config: ModelConfig,
    private readonly paddingSlack: number,
    private readonly shareBlocks: boolean,
    /** splitByPast's cost of another run, in row·tokens of past; Infinity: never split. */
    private readonly runCost: number,
    /** The adapter slots' buffers, for a graph built with them; null: none. */
    readonly lora: LoraSlots | null = null,
  ) {
    this.vocabSize = config.vocabSize;
    this.hiddenSize = config.hiddenSize;
    const { numBlocks, blockSize } = buffers.shape;
    this.kvCache = { numBlocks, blockSize, numTokens: (numBlocks - 1) * blockSize, numBytes: buffers.numBytes, dtype: buffers.dtype };
    const scaled = hasScales(buffers.dtype);
    const presents = Array.from({ length: config.numLayers }, (_, layer) => {
      const names = presentOutputNames(layer);
      return scaled ? [names.key, names.value, names.keyScale, names.valueScale] : [names.key, names.value];
    }).flat();
    this.fetches = [...presents, GRAPH_OUTPUTS.topLogprobs, GRAPH_OUTPUTS.topIds];
    const poolTensor = (data: KvArray) => new ort.Tensor(buffers.dtype, data, buffers.dims);
    for (let layer = 0; layer < config.numLayers; layer++) {
      const names = poolInputNames(layer);
      this.poolFeeds[names.key] = poolTensor(buffers.keys[layer]);
      this.poolFeeds[names.value] = poolTensor(buffers.values[layer]);
      if (scaled) {
        this.poolFeeds[names.keyScale] = floatTensor(buffers.keyScales[layer], buffers.scaleDims);
        this.poolFeeds[names.valueScale] = floatTensor(buffers.valueScales[layer], buffers.scaleDims);
      }
    }
  }

  static async create(options: OnnxRunnerOptions): Promise<OnnxRunner> {
    const { config } = options;
    const shape = { numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize: options.blockSize, dtype: options.kvCacheDtype ?? "float32" };
    const numBlocks = Math.floor(options.kvCacheBytes / KvBuffers.bytesPerBlock(shape));
    if (numBlocks < 2) {
      throw new EngineError("INVALID_REQUEST", `a KV cache of ${options.kvCacheBytes} bytes holds fewer than 2 blocks of ${KvBuffers.bytesPerBlock(shape)} bytes; raise --kv-cache-memory`);
    }
    const session = await createSession(options.graphPath, {
      device: options.device, intraOpThreads: options.intraOpThreads, profileFilePrefix: options.profileFilePrefix, spinning: options.spinning,
    });
    const runCost = options.splitPasts === false ? Infinity : runCostOf(options.graphPath, KvBuffers.bytesPerBlock(shape) / shape.blockSize);
    const lora = options.lora && options.lora.slots > 0 ? new LoraSlots(config, options.lora.slots, options.lora.rank, options.lora.layout) : null;
    return new OnnxRunner(session, new KvBuffers({ ...shape, numBlocks }), config, options.paddingSlack ?? 1.25, options.shareBlocks ?? true, runCost, lora);
  }

  async step(seqs: readonly StepSequence[], options: StepOptions): Promise<SequenceRows[]> {
    const logits: SequenceRows[] = new Array(seqs.length);
    for (const padded of groupForPadding(seqs, this.paddingSlack)) {
      for (const group of splitByPast(seqs, padded, this.runCost)) {
        const rows = await this.runGroup(group.map((i) => seqs[i]), options);
        group.forEach((seqIndex, k) => (logits[seqIndex] = rows[k]));
      }
    }
    return logits;
  }

  /** Flushes the profile of a runner created with profileFilePrefix. */
  endProfiling(): void {
    this.session.endProfiling();
  }

  async release(): Promise<void> {
    await this.session.release();
  }

  private async runGroup(seqs: readonly StepSequence[], options: StepOptions): Promise<SequenceRows[]> {
    const layout = layoutStep(seqs, this.buffers, this.config.slidingWindow, this.shareBlocks);
    const { batch, seq, past } = layout;
    const feeds: Record<string, ort.Tensor> = {
      ...this.poolFeeds,
      [GRAPH_INPUTS.inputIds]: int64Tensor(layout.inputIds, [batch, seq]),
      [GRAPH_INPUTS.positionIds]: int64Tensor(layout.positionIds, [batch, seq]),
      [GRAPH_INPUTS.sharedSlots]: int64Tensor(layout.sharedSlots, [layout.sharedSlots.length]),
      [GRAPH_INPUTS.pastSlots]: int64Tensor(layout.pastSlots, [batch, past - layout.sharedSlots.length]),
      [GRAPH_INPUTS.attentionMask]: floatTensor(layout.mask, [batch, 1, seq, past + seq]),
      [GRAPH_INPUTS.logitsIndices]: int64Tensor(layout.logitsIndices, [layout.logitsIndices.length]),
      [GRAPH_INPUTS.invTemperature]: floatTensor(layout.invTemperature, [layout.invTemperature.length]),
      [GRAPH_INPUTS.wantProbs]: new ort.Tensor("bool", [options.probs === true], []),
      [GRAPH_INPUTS.hiddenIndices]: int64Tensor(layout.hiddenIndices, [layout.hiddenIndices.length]),
      ...(this.lora ? this.lora.stepFeeds(seqs.map((s) => s.loraSlot ?? 0), seq) : {}),
    };
    const fetches = [...this.fetches, ...(options.fullLogits ? [GRAPH_OUTPUTS.logits] : []), ...(options.probs ? [GRAPH_OUTPUTS.probs] : []),
      ...(options.hidden ? [GRAPH_OUTPUTS.hidden] : [])];
    const out = await this.session.run(feeds, fetches);
    const numRows = batch * seq;
    for (let layer = 0; layer < this.config.numLayers; layer++) {
      const names = presentOutputNames(layer);
      const present = {
        keys: out[names.key].data as KvArray, values: out[names.value].data as KvArray, numRows,
        keyScales: (out[names.keyScale]?.data ?? null) as Float32Array | null, valueScales: (out[names.valueScale]?.data ?? null) as Float32Array | null,
      };
      layout.newSlots.forEach((slots, b) => this.buffers.write(layer, slots, present, b * seq));
    }
    return splitStepRows(seqs, rowsOf(out, options), this.vocabSize, this.hiddenSize);
  }
}

/**
 * Another run's cost in row·tokens of past (splitByPast): it reads the weights once more, where
 * a row's past token costs its K/V bytes about three times (the gather's read and write, and
 * the MatMuls' read). qwen3-0.6b-random int8: ~600 MB of weights and 224 KiB of float32 K/V a
 * token give ~870. Its profile at batch 64 (bench/profile-step.ts) has 32 µs of attention and
 * gather per row·token, so that is a run's weights read at about 28 ms.
 */
function runCostOf(graphPath: string, kvBytesPerToken: number): number {
  // A graph with its weights inline (none built here) counts its whole file.
  return (weightsBytesOf(graphPath) || statSync(graphPath).size) / (3 * kvBytesPerToken);
}
