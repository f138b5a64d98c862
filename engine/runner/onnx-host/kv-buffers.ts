/**
 * The KV cache's memory in host RAM: for every layer, one key and one value array of
 * [kvHeads, numSlots, headDim] floats, handed to ONNX Runtime without copying. (The block
 * pool hands out block ids; these are the floats behind them.) Kv-head-major, so that the
 * graph's one gather per layer lands in the layout its attention MatMuls read.
 *
 *   block table  [7, 2, 9]           blockSize = 4
 *   position p   0 1 2 3 | 4 5 6 7 | 8 9
 *   slot         28..31  | 8..11   | 36 37      slot = table[p / 4] * 4 + p % 4
 *
 * Block 0 is never handed out: its first slot is the null slot that pads past_slots.
 */
export interface KvBuffersShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  blockSize: number;
  numBlocks: number;
}

export class KvBuffers {
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  readonly rowWidth: number;

  constructor(readonly shape: KvBuffersShape) {
    this.rowWidth = shape.numKvHeads * shape.headDim;
    const numFloats = shape.numBlocks * shape.blockSize * this.rowWidth;
    this.keys = Array.from({ length: shape.numLayers }, () => new Float32Array(numFloats));
    this.values = Array.from({ length: shape.numLayers }, () => new Float32Array(numFloats));
  }

  get numSlots(): number {
    return this.shape.numBlocks * this.shape.blockSize;
  }

  /** Bytes of one block for this model: key + value, every layer, float32. */
  static bytesPerBlock(shape: Omit<KvBuffersShape, "numBlocks">): number {
    return 2 * shape.numLayers * shape.blockSize * shape.numKvHeads * shape.headDim * 4;
  }

  get numBytes(): number {
    return this.shape.numBlocks * KvBuffers.bytesPerBlock(this.shape);
  }

  slotOf(blockTable: readonly number[], position: number): number {
    const { blockSize } = this.shape;
    return blockTable[Math.floor(position / blockSize)] * blockSize + (position % blockSize);
  }

  /** The pool's dims as the graph declares them. */
  get dims(): number[] {
    return [this.shape.numKvHeads, this.numSlots, this.shape.headDim];
  }

  /**
   * Copies `slots.length` rows starting at row `fromRow` of a layer's step output
   * ([rows, kvHeads·headDim]) into their slots, one head at a time.
   */
  write(layer: number, slots: ArrayLike<number>, newKeys: Float32Array, newValues: Float32Array, fromRow: number): void {
    const { numKvHeads, headDim } = this.shape;
    const headStride = this.numSlots * headDim;
    const keys = this.keys[layer];
    const values = this.values[layer];
    for (let i = 0; i < slots.length; i++) {
      const row = (fromRow + i) * this.rowWidth;
      for (let h = 0; h < numKvHeads; h++) {
        const src = row + h * headDim;
        const dst = h * headStride + slots[i] * headDim;
        keys.set(newKeys.subarray(src, src + headDim), dst);
        values.set(newValues.subarray(src, src + headDim), dst);
      }
    }
  }
}
