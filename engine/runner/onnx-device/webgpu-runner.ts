/**
 * Runs steps of the device-pool graph on ONNX Runtime's WebGPU EP. The KV pool lives on the
 * device (device-pool.ts) and PagedAttention writes each step's K/V into it in place, so a step
 * sends only the packed tokens and block tables, and copies back only the rows it fetches
 * (top-N log-softmax, and logits or probs when asked).
 *
 * The scheduler, block pool and prefix cache are the same as the CPU runner's: the same block
 * tables drive both.
 */
import { GRAPH_INPUTS, GRAPH_OUTPUTS, type LoraLayout, type ModelConfig } from "../../../models/index.ts";
import { EngineError } from "../../common/engine-error.ts";
import type { KvCacheInfo, StepOptions, StepRunner, StepSequence } from "../step-runner.ts";
import { splitStepRows, type SequenceRows, type BatchRows } from "../step-rows.ts";
import { createSession, floatTensor, int64Tensor, ort, rowsOf } from "../onnx-host/onnx-session.ts";
import { DevicePool, type DevicePoolShape } from "./device-pool.ts";
import { LoraSlots } from "../onnx-host/lora-slots.ts";
import { NULL_BLOCK, layoutPacked } from "./packed-layout.ts";

export interface WebGpuRunnerOptions {
  graphPath: string;
  config: ModelConfig;
  blockSize: number;
  /** Device memory for the KV pool; the runner fits as many blocks as it can. */
  kvCacheBytes: number;
  /** The graph's LoRA slots (--max-loras, --max-lora-rank); absent: none. */
  lora?: { slots: number; rank: number; layout?: LoraLayout };
}

export class WebGpuRunner implements StepRunner {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly kvCache: KvCacheInfo;

  /**
   * NOTE: the adapter slots are host buffers, as on the host runner (lora-slots.ts): ORT uploads
   * the step's slots 1…k with its inputs. Nothing is uploaded for a step without adapters.
   */
  private constructor(private readonly session: ort.InferenceSession, readonly pool: DevicePool, config: ModelConfig, readonly lora: LoraSlots | null = null) {
    this.vocabSize = config.vocabSize;
    this.hiddenSize = config.hiddenSize;
    const { numBlocks, blockSize } = pool.shape;
    this.kvCache = { numBlocks, blockSize, numTokens: (numBlocks - 1) * blockSize, numBytes: pool.numBytes, dtype: "float16" };
  }

  static async create(options: WebGpuRunnerOptions): Promise<WebGpuRunner> {
    const { config, blockSize } = options;
    // NOTE: ONNX Runtime's WebGPU PagedAttention tiles blocks by powers of two from 16 on.
    if (blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) {
      throw new EngineError("INVALID_REQUEST", `--device webgpu needs --block-size a power of two of at least 16 (PagedAttention's blocks), not ${blockSize}`);
    }
    if (config.headDim % 8 !== 0) {
      throw new EngineError("INVALID_REQUEST", `--device webgpu needs a head size that is a multiple of 8 (ONNX Runtime's WebGPU PagedAttention); this model's is ${config.headDim}`);
    }
    const shape = { numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize };
    const numBlocks = Math.floor(options.kvCacheBytes / DevicePool.bytesPerBlock(shape));
    if (numBlocks < 2) {
      throw new EngineError("INVALID_REQUEST", `a KV cache of ${options.kvCacheBytes} bytes holds fewer than 2 blocks of ${DevicePool.bytesPerBlock(shape)} bytes; raise --kv-cache-memory`);
    }
    const session = await createSession(options.graphPath, { device: "webgpu" });
    try {
      const lora = options.lora && options.lora.slots > 0 ? new LoraSlots(config, options.lora.slots, options.lora.rank, options.lora.layout, 1) : null;
      const pool = await fittedPool(session, { ...shape, numBlocks }, lora);
      return new WebGpuRunner(session, pool, config, lora);
    } catch (err) {
      await session.release();
      throw err;
    }
  }

  async step(seqs: readonly StepSequence[], options: StepOptions): Promise<SequenceRows[]> {
    const out = await runPacked(this.session, this.pool, seqs, options, this.lora);
    return splitStepRows(seqs, withTiesById(rowsOf(out, options)), this.vocabSize, this.hiddenSize);
  }

  async release(): Promise<void> {
    await this.pool.dispose();
    await this.session.release();
  }
}

/** Each row's top entries most likely first, ties lower id first, as the CPU graph's TopK orders them (see chunkedTopK). */
function withTiesById(rows: BatchRows): BatchRows {
  const { topN, topIds, topLogprobs } = rows;
  for (let start = 0; start < topIds.length; start += topN) {
    const order = Array.from({ length: topN }, (_, i) => start + i).sort((a, b) => topLogprobs[b] - topLogprobs[a] || topIds[a] - topIds[b]);
    const ids = order.map((i) => topIds[i]);
    const logprobs = order.map((i) => topLogprobs[i]);
    topIds.set(ids, start);
    topLogprobs.set(logprobs, start);
  }
  return rows;
}

function runPacked(session: ort.InferenceSession, pool: DevicePool, seqs: readonly StepSequence[], options: StepOptions, lora: LoraSlots | null): Promise<ort.InferenceSession.OnnxValueMapType> {
  const layout = layoutPacked(seqs, pool.shape.blockSize);
  const int32 = (values: Int32Array, dims: number[]) => new ort.Tensor("int32", values, dims);
  const feeds: Record<string, ort.Tensor> = {
    ...pool.feeds,
    [GRAPH_INPUTS.inputIds]: int64Tensor(layout.inputIds, [layout.numTokens]),
    [GRAPH_INPUTS.cumulativeSequenceLength]: int32(layout.cumulativeSequenceLength, [layout.numTokens + 1]),
    [GRAPH_INPUTS.pastSeqlens]: int32(layout.pastSeqlens, [layout.numTokens]),
    [GRAPH_INPUTS.blockTable]: int32(layout.blockTable, [layout.numTokens, layout.maxBlocks]),
    // Every row is a query of one token (packed-layout.ts).
    [GRAPH_INPUTS.attentionMetadata]: int32(Int32Array.from([1, layout.maxKvLength]), [2]),
    [GRAPH_INPUTS.logitsIndices]: int64Tensor(layout.logitsIndices, [layout.logitsIndices.length]),
    [GRAPH_INPUTS.invTemperature]: floatTensor(layout.invTemperature, [layout.invTemperature.length]),
    [GRAPH_INPUTS.hiddenIndices]: int64Tensor(layout.hiddenIndices, [layout.hiddenIndices.length]),
  };
  if (session.inputNames.includes(GRAPH_INPUTS.positionIds)) feeds[GRAPH_INPUTS.positionIds] = int64Tensor(layout.positionIds, [layout.numTokens]);
  // Packed rows are the sequences' tokens in order: each token takes its sequence's slot.
  if (lora) Object.assign(feeds, lora.stepFeeds(seqs.flatMap((s) => new Array<number>(s.tokenIds.length).fill(s.loraSlot ?? 0)), 1));
  const fetches = [GRAPH_OUTPUTS.topLogprobs, GRAPH_OUTPUTS.topIds, ...(options.fullLogits ? [GRAPH_OUTPUTS.logits] : []), ...(options.probs ? [GRAPH_OUTPUTS.probs] : []),
    ...(options.hidden ? [GRAPH_OUTPUTS.hidden] : [])];
  return session.run(feeds, fetches);
}

/**
 * The pool of `shape`, checked by one step that binds it (a token written into the null
 * block, which no sequence reads). A pool too big for the adapter's storage-buffer limits
 * fails there; then smaller pools are tried, so that the error can say what fits.
 */
async function fittedPool(session: ort.InferenceSession, shape: DevicePoolShape, lora: LoraSlots | null): Promise<DevicePool> {
  let tried = shape;
  for (;;) {
    const pool = await DevicePool.create(tried);
    const problem = await bindingProblem(session, pool, lora);
    if (problem === null && tried === shape) return pool;
    await pool.dispose();
    if (problem === null) throw tooLarge(shape, tried);
    if (tried.numBlocks < 4) throw new EngineError("RUNTIME_FAILED", `--device webgpu could not run a step: ${problem}`);
    tried = { ...tried, numBlocks: Math.floor(tried.numBlocks / 2) };
  }
}

const BINDING_LIMIT = /storage buffers|binding size|maxStorageBuffer|maxBufferSize|out of memory/i;

async function bindingProblem(session: ort.InferenceSession, pool: DevicePool, lora: LoraSlots | null): Promise<string | null> {
  try {
    await runPacked(session, pool, [{ tokenIds: [0], numPastTokens: 0, blockTable: [NULL_BLOCK], logitsFrom: 0 }], { fullLogits: false }, lora);
    return null;
  } catch (err) {
    const message = (err as Error).message;
    if (!BINDING_LIMIT.test(message)) throw new EngineError("RUNTIME_FAILED", `--device webgpu could not run a step: ${message}`);
    return message;
  }
}

function tooLarge(asked: DevicePoolShape, fits: DevicePoolShape): EngineError {
  const mib = (shape: DevicePoolShape) => (2 * shape.numLayers * DevicePool.tensorBytes(shape)) / 2 ** 20;
  return new EngineError(
    "INVALID_REQUEST",
    `a KV pool of ${mib(asked).toFixed(0)} MiB (${asked.numBlocks} blocks; ${(DevicePool.tensorBytes(asked) / 2 ** 20).toFixed(0)} MiB per layer's key or value tensor) ` +
      `is more than this GPU adapter's storage-buffer limits let one step bind; ${mib(fits).toFixed(0)} MiB (${fits.numBlocks} blocks) fits: lower --kv-cache-memory to at most ${Math.floor(mib(fits))}MiB`,
  );
}
