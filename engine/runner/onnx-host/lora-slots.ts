/**
 * The host buffers behind a LoRA graph's adapter inputs (models/graph/graph-io.ts): for each
 * layer and projection, every slot's A and (scale·B)ᵀ stacked by rows. A step is fed the
 * prefix that holds slots 1…k, k the highest slot a row of it uses, as tensors over these
 * buffers (made once per k, no copy); a step without adapters is fed width 0. Loading an
 * adapter into a slot writes its rows (zero past its rank); no graph is rebuilt. Slot 0 is
 * "no adapter"; slots 1…N are the runner's N.
 */
import { GRAPH_INPUTS, loraInputNames, type ModelConfig } from "../../../models/index.ts";
import { LORA_MODULES, moduleShape, type LoraAdapter, type LoraLayout } from "../../../models/index.ts";
import { EngineError } from "../../common/engine-error.ts";
import { ort } from "./onnx-session.ts";

interface ModuleBuffers {
  a: Float32Array;
  b: Float32Array;
  inFeatures: number;
  outFeatures: number;
}

export class LoraSlots {
  /** The adapter tensors over slots 1…k, by k (0: none), made on first use. */
  private readonly feedsByWidth = new Map<number, Record<string, ort.Tensor>>();
  private readonly buffers: ModuleBuffers[][] = [];
  private readonly width: number;

  /**
   * @param layout the graph's (build-graph.ts): stacked (default), or gather (an A/B baseline).
   * @param minSlots the fewest slots a step is fed: 1 on WebGPU, which can't bind a tensor of no elements (a step
   * without adapters then reads slot 1 under an all-zero lora_rows, which adds exactly nothing).
   */
  constructor(private readonly config: ModelConfig, readonly numSlots: number, readonly rank: number, private readonly layout: LoraLayout = "stacked", private readonly minSlots = 0) {
    this.width = numSlots * rank;
    for (let layer = 0; layer < config.numLayers; layer++) {
      const modules: ModuleBuffers[] = [];
      for (const module of LORA_MODULES) {
        const { inFeatures, outFeatures } = moduleShape(config, module);
        modules.push({ a: new Float32Array(this.width * inFeatures), b: new Float32Array(this.width * outFeatures), inFeatures, outFeatures });
      }
      this.buffers.push(modules);
    }
  }

  /** Writes an adapter into slot 1…N (its modules; the others zero). */
  load(slot: number, adapter: LoraAdapter): void {
    this.checkSlot(slot);
    if (adapter.maxRank > this.rank) throw new EngineError("INVALID_REQUEST", `the adapter ${adapter.name} has rank ${adapter.maxRank}, above --max-lora-rank ${this.rank}`);
    if (adapter.layers.length !== this.config.numLayers) throw new EngineError("INVALID_REQUEST", `the adapter ${adapter.name} has ${adapter.layers.length} layers; the model has ${this.config.numLayers}`);
    this.clear(slot);
    const base = (slot - 1) * this.rank;
    adapter.layers.forEach((modules, layer) => {
      LORA_MODULES.forEach((module, m) => {
        const lora = modules[module];
        if (!lora) return;
        const { a, b, inFeatures, outFeatures } = this.buffers[layer][m];
        a.set(lora.a, base * inFeatures);
        // (scale·B)ᵀ: row j of the slot is B's column j.
        for (let j = 0; j < lora.rank; j++) {
          for (let o = 0; o < outFeatures; o++) b[(base + j) * outFeatures + o] = lora.b[o * lora.rank + j] * lora.scale;
        }
      });
    });
  }

  /** Zeroes a slot: its rows then add nothing. */
  clear(slot: number): void {
    this.checkSlot(slot);
    const base = (slot - 1) * this.rank;
    for (const modules of this.buffers) {
      for (const { a, b, inFeatures, outFeatures } of modules) {
        a.fill(0, base * inFeatures, (base + this.rank) * inFeatures);
        b.fill(0, base * outFeatures, (base + this.rank) * outFeatures);
      }
    }
  }

  /**
   * A step's feeds for its [batch, seq] rows: the slots 1…k its rows use (k the highest), and
   * lora_rows, where each sequence's rows take its slot's columns (slot 0: none).
   */
  stepFeeds(slots: readonly number[], seqLen: number): Record<string, ort.Tensor> {
    for (const slot of slots) if (slot !== 0) this.checkSlot(slot);
    if (this.layout === "gather") return this.gatherFeeds(slots, seqLen);
    const k = Math.max(this.minSlots, ...slots);
    const width = k * this.rank;
    const rows = new Float32Array(slots.length * seqLen * width);
    slots.forEach((slot, b) => {
      if (slot === 0) return;
      for (let s = 0; s < seqLen; s++) rows.fill(1, (b * seqLen + s) * width + (slot - 1) * this.rank, (b * seqLen + s) * width + slot * this.rank);
    });
    return { ...this.feedsFor(k), [GRAPH_INPUTS.loraRows]: new ort.Tensor("float32", rows, [slots.length * seqLen, width]) };
  }

  /** The gather layout's feeds: each row's slot − 1 and a [rows, 1] mask, over slots 1…max(k, 1) (a gather needs a slot to read). */
  private gatherFeeds(slots: readonly number[], seqLen: number): Record<string, ort.Tensor> {
    const numRows = slots.length * seqLen;
    const index = new BigInt64Array(numRows);
    const mask = new Float32Array(numRows);
    slots.forEach((slot, b) => {
      if (slot === 0) return;
      index.fill(BigInt(slot - 1), b * seqLen, (b + 1) * seqLen);
      mask.fill(1, b * seqLen, (b + 1) * seqLen);
    });
    return {
      ...this.feedsFor(Math.max(1, ...slots)),
      [GRAPH_INPUTS.loraSlotIndex]: new ort.Tensor("int64", index, [numRows]), [GRAPH_INPUTS.loraRows]: new ort.Tensor("float32", mask, [numRows, 1]),
    };
  }

  /** The adapter tensors over slots 1…k: views of the buffers' first k·R rows. */
  private feedsFor(k: number): Record<string, ort.Tensor> {
    let feeds = this.feedsByWidth.get(k);
    if (feeds) return feeds;
    feeds = {};
    const width = k * this.rank;
    for (let layer = 0; layer < this.config.numLayers; layer++) {
      LORA_MODULES.forEach((module, m) => {
        const { a, b, inFeatures, outFeatures } = this.buffers[layer][m];
        const names = loraInputNames(layer, module);
        feeds![names.a] = new ort.Tensor("float32", a.subarray(0, width * inFeatures), [width, inFeatures]);
        feeds![names.b] = new ort.Tensor("float32", b.subarray(0, width * outFeatures), [width, outFeatures]);
      });
    }
    this.feedsByWidth.set(k, feeds);
    return feeds;
  }

  private checkSlot(slot: number): void {
    if (!Number.isInteger(slot) || slot < 1 || slot > this.numSlots) throw new EngineError("INVALID_REQUEST", `LoRA slot ${slot} is not one of 1…${this.numSlots}`);
  }
}
