/**
 * The host buffers behind a LoRA graph's adapter inputs (models/graph/graph-io.ts): for each
 * layer and projection, every slot's A stacked by rows and scale·B stacked by columns, as
 * tensors made once over these buffers. Loading an adapter into a slot writes its rows and
 * columns (zero past its rank); no graph is rebuilt. Slot 0 is "no adapter"; slots 1…N are
 * the graph's N.
 */
import { GRAPH_INPUTS, loraInputNames, type ModelConfig } from "../../../models/index.ts";
import { LORA_MODULES, moduleShape, type LoraAdapter } from "../../../models/index.ts";
import { EngineError } from "../../common/engine-error.ts";
import { ort } from "./onnx-session.ts";

interface ModuleBuffers {
  a: Float32Array;
  b: Float32Array;
  inFeatures: number;
  outFeatures: number;
}

export class LoraSlots {
  /** The adapter tensors, fed every step as they are. */
  readonly feeds: Record<string, ort.Tensor> = {};
  private readonly buffers: ModuleBuffers[][] = [];
  private readonly width: number;

  constructor(private readonly config: ModelConfig, readonly numSlots: number, readonly rank: number) {
    this.width = numSlots * rank;
    for (let layer = 0; layer < config.numLayers; layer++) {
      const modules: ModuleBuffers[] = [];
      for (const module of LORA_MODULES) {
        const { inFeatures, outFeatures } = moduleShape(config, module);
        const buffers = { a: new Float32Array(this.width * inFeatures), b: new Float32Array(outFeatures * this.width), inFeatures, outFeatures };
        const names = loraInputNames(layer, module);
        this.feeds[names.a] = new ort.Tensor("float32", buffers.a, [this.width, inFeatures]);
        this.feeds[names.b] = new ort.Tensor("float32", buffers.b, [outFeatures, this.width]);
        modules.push(buffers);
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
        for (let o = 0; o < outFeatures; o++) {
          for (let j = 0; j < lora.rank; j++) b[o * this.width + base + j] = lora.b[o * lora.rank + j] * lora.scale;
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
        for (let o = 0; o < outFeatures; o++) b.fill(0, o * this.width + base, o * this.width + base + this.rank);
      }
    }
  }

  /** lora_rows for a step's [batch, seq] rows: each sequence's rows take its slot's columns (slot 0: none). */
  rowsFeed(slots: readonly number[], seqLen: number): Record<string, ort.Tensor> {
    const rows = new Float32Array(slots.length * seqLen * this.width);
    slots.forEach((slot, b) => {
      if (slot === 0) return;
      this.checkSlot(slot);
      for (let s = 0; s < seqLen; s++) rows.fill(1, (b * seqLen + s) * this.width + (slot - 1) * this.rank, (b * seqLen + s) * this.width + slot * this.rank);
    });
    return { [GRAPH_INPUTS.loraRows]: new ort.Tensor("float32", rows, [slots.length * seqLen, this.width]) };
  }

  private checkSlot(slot: number): void {
    if (!Number.isInteger(slot) || slot < 1 || slot > this.numSlots) throw new EngineError("INVALID_REQUEST", `LoRA slot ${slot} is not one of 1…${this.numSlots}`);
  }
}
