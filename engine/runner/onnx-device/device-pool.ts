/**
 * The KV cache in device memory: for every layer, one key and one value tensor of
 * [numBlocks, blockSize, kvHeads, headDim] float16, as com.microsoft PagedAttention reads
 * and updates them in place. They are made once, on the device (a zeros graph with its output
 * there), fed to every step as the same tensors, and never read back to the host.
 *
 * NOTE: getData() on a gpu-buffer tensor aborts the process in onnxruntime-node 1.30; this
 * class never calls it, and nothing else sees the tensors.
 */
import { ZEROS_GRAPH_IO, float16ZerosGraph, poolInputNames } from "../../../models/index.ts";
import { createSession, int64Tensor, type ort } from "../onnx-host/onnx-session.ts";

export interface DevicePoolShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  blockSize: number;
  numBlocks: number;
}

const FLOAT16_BYTES = 2;

export class DevicePool {
  private disposed = false;

  private constructor(readonly shape: DevicePoolShape, private readonly zeros: ort.InferenceSession, readonly feeds: Readonly<Record<string, ort.Tensor>>) {}

  /** Bytes of one block for this model: key + value, every layer, float16. */
  static bytesPerBlock(shape: Omit<DevicePoolShape, "numBlocks">): number {
    return 2 * shape.numLayers * shape.blockSize * shape.numKvHeads * shape.headDim * FLOAT16_BYTES;
  }

  /** Bytes of one layer's key (or value) tensor: the largest single buffer the pool binds. */
  static tensorBytes(shape: DevicePoolShape): number {
    return shape.numBlocks * shape.blockSize * shape.numKvHeads * shape.headDim * FLOAT16_BYTES;
  }

  static async create(shape: DevicePoolShape): Promise<DevicePool> {
    const zeros = await createSession(float16ZerosGraph(), { device: "webgpu", preferredOutputLocation: "gpu-buffer" });
    const dims = [shape.numBlocks, shape.blockSize, shape.numKvHeads, shape.headDim];
    const feeds: Record<string, ort.Tensor> = {};
    try {
      for (let layer = 0; layer < shape.numLayers; layer++) {
        const names = poolInputNames(layer);
        for (const name of [names.key, names.value]) {
          const out = await zeros.run({ [ZEROS_GRAPH_IO.shape]: int64Tensor(BigInt64Array.from(dims, BigInt), [4]) });
          feeds[name] = out[ZEROS_GRAPH_IO.zeros];
        }
      }
    } catch (err) {
      for (const tensor of Object.values(feeds)) tensor.dispose();
      await zeros.release();
      throw err;
    }
    return new DevicePool(shape, zeros, feeds);
  }

  get numBytes(): number {
    return 2 * this.shape.numLayers * DevicePool.tensorBytes(this.shape);
  }

  /** The device tensors this pool holds: 2 per layer until disposed, 0 after. */
  get numTensors(): number {
    return this.disposed ? 0 : Object.keys(this.feeds).length;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    for (const tensor of Object.values(this.feeds)) tensor.dispose();
    await this.zeros.release();
  }
}
