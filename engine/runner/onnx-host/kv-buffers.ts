/**
 * The KV cache's memory in host RAM: for every layer, one key and one value array of
 * [numSlots, kvHeads, headDim] floats, handed to ONNX Runtime without copying. (The block
 * pool hands out block ids; these are the floats behind them.)
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

  /** Copies `numRows` rows starting at row `fromRow` of a layer's step output into their slots. */
  write(layer: number, slots: ArrayLike<number>, newKeys: Float32Array, newValues: Float32Array, fromRow: number): void {
    const width = this.rowWidth;
    const keys = this.keys[layer];
    const values = this.values[layer];
    for (let i = 0; i < slots.length; i++) {
      const src = (fromRow + i) * width;
      const dst = slots[i] * width;
      keys.set(newKeys.subarray(src, src + width), dst);
      values.set(newValues.subarray(src, src + width), dst);
    }
  }
}
