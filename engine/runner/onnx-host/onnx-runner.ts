/**
 * Runs steps of the paged-KV graph on ONNX Runtime with the KV cache in host memory: lays
 * out each group, runs the session, copies the step's new K/V into the buffers and returns
 * the requested logits.
 */
import { GRAPH_INPUTS, GRAPH_OUTPUTS, poolInputNames, presentOutputNames, type ModelConfig } from "../../../models/index.ts";
import { EngineError } from "../../common/engine-error.ts";
import type { KvCacheInfo, StepOptions, StepRunner, StepSequence } from "../step-runner.ts";
import { splitStepRows, type SequenceRows } from "../step-rows.ts";
import { KvBuffers } from "./kv-buffers.ts";
import { type OnnxDevice, createSession, floatTensor, int64Tensor, ort, rowsOf } from "./onnx-session.ts";
import { groupForPadding, layoutStep } from "./step-layout.ts";

export interface OnnxRunnerOptions {
  graphPath: string;
  config: ModelConfig;
  device: OnnxDevice;
  blockSize: number;
  /** Host memory for the KV buffers; the runner fits as many blocks as it can. */
  kvCacheBytes: number;
  intraOpThreads?: number;
  /** How much padding a group of sequences may carry (padded tokens / real tokens); see groupForPadding. */
  paddingSlack?: number;
  /** Profile every run with ONNX Runtime's profiler (see SessionOptions.profileFilePrefix). */
  profileFilePrefix?: string;
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
  ) {
    this.vocabSize = config.vocabSize;
    this.hiddenSize = config.hiddenSize;
    const { numBlocks, blockSize } = buffers.shape;
    this.kvCache = { numBlocks, blockSize, numTokens: (numBlocks - 1) * blockSize, numBytes: buffers.numBytes };
    const presents = Array.from({ length: config.numLayers }, (_, layer) => Object.values(presentOutputNames(layer))).flat();
    this.fetches = [...presents, GRAPH_OUTPUTS.topLogprobs, GRAPH_OUTPUTS.topIds];
    const dims = buffers.dims;
    for (let layer = 0; layer < config.numLayers; layer++) {
      const names = poolInputNames(layer);
      this.poolFeeds[names.key] = floatTensor(buffers.keys[layer], dims);
      this.poolFeeds[names.value] = floatTensor(buffers.values[layer], dims);
    }
  }

  static async create(options: OnnxRunnerOptions): Promise<OnnxRunner> {
    const { config } = options;
    const shape = { numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize: options.blockSize };
    const numBlocks = Math.floor(options.kvCacheBytes / KvBuffers.bytesPerBlock(shape));
    if (numBlocks < 2) {
      throw new EngineError("INVALID_REQUEST", `a KV cache of ${options.kvCacheBytes} bytes holds fewer than 2 blocks of ${KvBuffers.bytesPerBlock(shape)} bytes; raise --kv-cache-memory`);
    }
    const session = await createSession(options.graphPath, {
      device: options.device, intraOpThreads: options.intraOpThreads, profileFilePrefix: options.profileFilePrefix,
    });
    return new OnnxRunner(session, new KvBuffers({ ...shape, numBlocks }), config, options.paddingSlack ?? 1.25);
  }

  async step(seqs: readonly StepSequence[], options: StepOptions): Promise<SequenceRows[]> {
    const logits: SequenceRows[] = new Array(seqs.length);
    for (const group of groupForPadding(seqs, this.paddingSlack)) {
      const rows = await this.runGroup(group.map((i) => seqs[i]), options);
      group.forEach((seqIndex, k) => (logits[seqIndex] = rows[k]));
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
    const layout = layoutStep(seqs, this.buffers, this.config.slidingWindow);
    const { batch, seq, past } = layout;
    const feeds: Record<string, ort.Tensor> = {
      ...this.poolFeeds,
      [GRAPH_INPUTS.inputIds]: int64Tensor(layout.inputIds, [batch, seq]),
      [GRAPH_INPUTS.positionIds]: int64Tensor(layout.positionIds, [batch, seq]),
      [GRAPH_INPUTS.pastSlots]: int64Tensor(layout.pastSlots, [batch, past]),
      [GRAPH_INPUTS.attentionMask]: floatTensor(layout.mask, [batch, 1, seq, past + seq]),
      [GRAPH_INPUTS.logitsIndices]: int64Tensor(layout.logitsIndices, [layout.logitsIndices.length]),
      [GRAPH_INPUTS.invTemperature]: floatTensor(layout.invTemperature, [layout.invTemperature.length]),
      [GRAPH_INPUTS.wantProbs]: new ort.Tensor("bool", [options.probs === true], []),
      [GRAPH_INPUTS.hiddenIndices]: int64Tensor(layout.hiddenIndices, [layout.hiddenIndices.length]),
    };
    const fetches = [...this.fetches, ...(options.fullLogits ? [GRAPH_OUTPUTS.logits] : []), ...(options.probs ? [GRAPH_OUTPUTS.probs] : []),
      ...(options.hidden ? [GRAPH_OUTPUTS.hidden] : [])];
    const out = await this.session.run(feeds, fetches);
    for (let layer = 0; layer < this.config.numLayers; layer++) {
      const present = presentOutputNames(layer);
      const keys = out[present.key].data as Float32Array;
      const values = out[present.value].data as Float32Array;
      layout.newSlots.forEach((slots, b) => this.buffers.write(layer, slots, keys, values, b * seq));
    }
    return splitStepRows(seqs, rowsOf(out, options), this.vocabSize, this.hiddenSize);
  }
}
