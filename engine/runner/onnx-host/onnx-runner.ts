/**
 * Runs steps of the paged-KV graph: lays out each group, runs the session, copies the
 * step's new K/V into the pool and returns the requested logits.
 */
import { poolInputNames, presentOutputNames } from "../../../models/graph/decoder-graph.ts";
import type { ModelConfig } from "../../../models/index.ts";
import { KvPool } from "./kv-buffers.ts";
import { type Device, createSession, floatTensor, int64Tensor, ort } from "./onnx-session.ts";
import { type StepSequence, groupForPadding, layoutStep } from "./step-layout.ts";
import type { StepLogits } from "../step-logits.ts";

export interface RunnerOptions {
  graphPath: string;
  config: ModelConfig;
  device: Device;
  blockSize: number;
  numBlocks: number;
  intraOpThreads?: number;
  /** How much padding a group of sequences may carry (padded tokens / real tokens); see groupForPadding. */
  paddingSlack?: number;
}

export interface StepOptions {
  /** Fetch the full logits rows too (penalties, logprobs of sampled tokens, prompt logprobs). */
  fullLogits: boolean;
  /** Fetch softmax(logits / T) rows too (temperature sampling). Otherwise only the top-N. */
  probs?: boolean;
}

/** What the engine sees: data in, data out. */
export interface StepRunner {
  readonly vocabSize: number;
  /** For each sequence, its logits rows from logitsFrom on. */
  step(seqs: readonly StepSequence[], options: StepOptions): Promise<StepLogits[]>;
}

export class ModelRunner implements StepRunner {
  readonly vocabSize: number;
  private readonly poolFeeds: Record<string, ort.Tensor> = {};
  private readonly fetches: string[];

  private constructor(
    private readonly session: ort.InferenceSession,
    readonly pool: KvPool,
    private readonly config: ModelConfig,
    private readonly paddingSlack: number,
  ) {
    this.vocabSize = config.vocabSize;
    const presents = Array.from({ length: config.numLayers }, (_, layer) => Object.values(presentOutputNames(layer))).flat();
    this.fetches = [...presents, "top_logprobs", "top_ids"];
    const dims = [pool.numSlots, config.numKvHeads, config.headDim];
    for (let layer = 0; layer < config.numLayers; layer++) {
      const names = poolInputNames(layer);
      this.poolFeeds[names.key] = floatTensor(pool.keys[layer], dims);
      this.poolFeeds[names.value] = floatTensor(pool.values[layer], dims);
    }
  }

  static async create(options: RunnerOptions): Promise<ModelRunner> {
    const session = await createSession(options.graphPath, { device: options.device, intraOpThreads: options.intraOpThreads });
    const { config } = options;
    const pool = new KvPool({
      numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim,
      blockSize: options.blockSize, numBlocks: options.numBlocks,
    });
    return new ModelRunner(session, pool, config, options.paddingSlack ?? 1.25);
  }

  async step(seqs: readonly StepSequence[], options: StepOptions): Promise<StepLogits[]> {
    const logits: StepLogits[] = new Array(seqs.length);
    for (const group of groupForPadding(seqs, this.paddingSlack)) {
      const rows = await this.runGroup(group.map((i) => seqs[i]), options);
      group.forEach((seqIndex, k) => (logits[seqIndex] = rows[k]));
    }
    return logits;
  }

  /** Each sequence's full logits rows (vocab-wide each) from logitsFrom on. */
  async execute(seqs: readonly StepSequence[]): Promise<Float32Array[]> {
    return (await this.step(seqs, { fullLogits: true })).map((l) => l.full!);
  }

  async release(): Promise<void> {
    await this.session.release();
  }

  private async runGroup(seqs: readonly StepSequence[], options: StepOptions): Promise<StepLogits[]> {
    const layout = layoutStep(seqs, this.pool, this.config.slidingWindow);
    const { batch, seq, past } = layout;
    const feeds: Record<string, ort.Tensor> = {
      ...this.poolFeeds,
      input_ids: int64Tensor(layout.inputIds, [batch, seq]),
      position_ids: int64Tensor(layout.positionIds, [batch, seq]),
      past_slots: int64Tensor(layout.pastSlots, [batch, past]),
      attention_mask: floatTensor(layout.mask, [batch, 1, seq, past + seq]),
      logits_indices: int64Tensor(layout.logitsIndices, [layout.logitsIndices.length]),
      inv_temperature: floatTensor(layout.invTemperature, [layout.invTemperature.length]),
      want_probs: new ort.Tensor("bool", [options.probs === true], []),
    };
    const fetches = [...this.fetches, ...(options.fullLogits ? ["logits"] : []), ...(options.probs ? ["probs"] : [])];
    const out = await this.session.run(feeds, fetches);
    for (let layer = 0; layer < this.config.numLayers; layer++) {
      const present = presentOutputNames(layer);
      const keys = out[present.key].data as Float32Array;
      const values = out[present.value].data as Float32Array;
      layout.newSlots.forEach((slots, b) => this.pool.write(layer, slots, keys, values, b * seq));
    }
    const full = options.fullLogits ? (out.logits.data as Float32Array) : null;
    const probs = options.probs ? (out.probs.data as Float32Array) : null;
    const topIds = Int32Array.from(out.top_ids.data as BigInt64Array, Number);
    const topLogprobs = out.top_logprobs.data as Float32Array;
    const topN = out.top_ids.dims[1] ?? 0;
    const vocab = this.vocabSize;
    let row = 0;
    return seqs.map((s) => {
      const numRows = Math.max(0, s.tokenIds.length - s.logitsFrom);
      const slice: StepLogits = {
        numRows, topN,
        topIds: topIds.subarray(row * topN, (row + numRows) * topN),
        topLogprobs: topLogprobs.subarray(row * topN, (row + numRows) * topN),
        full: full ? full.subarray(row * vocab, (row + numRows) * vocab) : null,
        probs: probs ? probs.subarray(row * vocab, (row + numRows) * vocab) : null,
      };
      row += numRows;
      return slice;
    });
  }
}
