/**
 * The KV cache's memory in host RAM: for every layer, one key and one value array of
 * [kvHeads, numSlots, headDim] values in the pool's dtype (float32, float16 or int8; see
 * models/graph/kv-dtype.ts), and for int8 one float32 scale per [kvHead, slot], handed to
 * ONNX Runtime without copying. (The block pool hands out block ids; these are the values
 * behind them.) Kv-head-major, so that the graph's one gather per layer lands in the layout
 * its attention MatMuls read.
 *
 *   block table  [7, 2, 9]           blockSize = 4
 *   position p   0 1 2 3 | 4 5 6 7 | 8 9
 *   slot         28..31  | 8..11   | 36 37      slot = table[p / 4] * 4 + p % 4
 *
 * Block 0 is never handed out: its first slot is the null slot that pads past_slots.
 */
import { hasScales, kvBytes, type KvCacheDtype } from "../../../models/index.ts";

export interface KvBuffersShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  blockSize: number;
  numBlocks: number;
  /** Default float32. */
  dtype?: KvCacheDtype;
}

export type KvArray = Float32Array | Uint16Array | Int8Array;

/** What a step's present outputs hold for one layer: [kvHeads, rows, headDim] (scales [kvHeads, rows], int8 only). */
export interface PresentKv {
  keys: KvArray;
  values: KvArray;
  keyScales: Float32Array | null;
  valueScales: Float32Array | null;
  /** The step's rows (B·S). */
  numRows: number;
}

function kvArray(dtype: KvCacheDtype, length: number): KvArray {
  return dtype === "float32" ? new Float32Array(length) : dtype === "float16" ? new Uint16Array(length) : new Int8Array(length);
}

export class KvBuffers {
  readonly dtype: KvCacheDtype;
  readonly keys: KvArray[];
  readonly values: KvArray[];
  /** int8 only: [kvHeads, numSlots] per layer. */
  readonly keyScales: Float32Array[];
  readonly valueScales: Float32Array[];

  constructor(readonly shape: KvBuffersShape) {
    this.dtype = shape.dtype ?? "float32";
    const numValues = this.numSlots * shape.numKvHeads * shape.headDim;
    const layers = <T>(make: () => T) => Array.from({ length: shape.numLayers }, make);
    this.keys = layers(() => kvArray(this.dtype, numValues));
    this.values = layers(() => kvArray(this.dtype, numValues));
    const numScales = hasScales(this.dtype) ? this.numSlots * shape.numKvHeads : 0;
    this.keyScales = numScales > 0 ? layers(() => new Float32Array(numScales)) : [];
    this.valueScales = numScales > 0 ? layers(() => new Float32Array(numScales)) : [];
  }

  get numSlots(): number {
    return this.shape.numBlocks * this.shape.blockSize;
  }

  /** Bytes of one block for this model: key + value (and int8's scales), every layer. */
  static bytesPerBlock(shape: Omit<KvBuffersShape, "numBlocks">): number {
    return 2 * shape.numLayers * shape.blockSize * shape.numKvHeads * kvBytes(shape.dtype ?? "float32", shape.headDim).perHeadRow;
  }

  get numBytes(): number {
    return this.shape.numBlocks * KvBuffers.bytesPerBlock(this.shape);
  }

  slotOf(blockTable: readonly number[], position: number): number {
    const { blockSize } = this.shape;
    return blockTable[Math.floor(position / blockSize)] * blockSize + (position % blockSize);
  }

  /** The pool's dims as the graph declares them, and its scales'. */
  get dims(): number[] {
    return [this.shape.numKvHeads, this.numSlots, this.shape.headDim];
  }

  get scaleDims(): number[] {
    return [this.shape.numKvHeads, this.numSlots];
  }

  /**
   * Copies `slots.length` rows starting at row `fromRow` of a layer's present outputs into
   * their slots: per head, one copy for each run of consecutive slots (a prefill chunk's
   * tokens within a block), since both sides are kv-head-major.
   */
  write(layer: number, slots: ArrayLike<number>, present: PresentKv, fromRow: number): void {
    const { numKvHeads, headDim } = this.shape;
    const { numSlots } = this;
    const { numRows } = present;
    for (let i = 0; i < slots.length; ) {
      let run = 1;
      while (i + run < slots.length && slots[i + run] === slots[i] + run) run++;
      for (let h = 0; h < numKvHeads; h++) {
        const src = h * numRows + fromRow + i;
        const dst = h * numSlots + slots[i];
        copyRows(this.keys[layer], present.keys, src * headDim, dst * headDim, run * headDim);
        copyRows(this.values[layer], present.values, src * headDim, dst * headDim, run * headDim);
        if (present.keyScales !== null && present.valueScales !== null) {
          copyRows(this.keyScales[layer], present.keyScales, src, dst, run);
          copyRows(this.valueScales[layer], present.valueScales, src, dst, run);
        }
      }
      i += run;
    }
  }
}

function copyRows<T extends KvArray>(into: T, from: KvArray, src: number, dst: number, length: number): void {
  into.set(from.subarray(src, src + length) as T, dst);
}
