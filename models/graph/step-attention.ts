/**
 * Where the decoder's attention reads its KV cache from, one per kind of runner. Each
 * declares the inputs (and outputs) its layout needs and attends layer by layer:
 *
 * - host pool: the pool is a float32 input every step; past K/V are gathered by slot
 *   (gathered-attention.ts) and the runner copies the step's K/V (present outputs) back in.
 * - device pool: the pool stays on the device as float16; com.microsoft PagedAttention reads
 *   it through the block table and writes the step's K/V into it in place.
 */
import type { ModelConfig } from "../config.ts";
import { gatheredAttention } from "./gathered-attention.ts";
import { GRAPH_INPUTS, poolInputNames, presentOutputNames } from "./graph-io.ts";
import { ropeCaches } from "./layers.ts";
import { DataType, type OnnxGraph } from "./onnx-graph.ts";

export type AttentionKind = "host-pool" | "device-pool";

export interface StepAttention {
  /** Whether attention rotates q and k itself (then attend gets them before rope). */
  readonly ropeInside: boolean;
  /**
   * q [N, heads, head_dim] and k [N, kv_heads, head_dim] after the head norm (and after rope
   * unless ropeInside), v [N, kv_heads·head_dim]; returns [N, heads·head_dim] rows.
   */
  attend(layer: number, q: string, k: string, v: string): string;
}

export interface StepAttentionOptions {
  kind: AttentionKind;
  /** Device pool only: rotary inside PagedAttention (its cos/sin caches) rather than before it. */
  ropeInside: boolean;
}

export function stepAttention(g: OnnxGraph, config: ModelConfig, inputIds: string, options: StepAttentionOptions): StepAttention {
  return options.kind === "host-pool" ? hostPoolAttention(g, config, inputIds) : devicePoolAttention(g, config, options.ropeInside);
}

/** input_ids and position_ids: [B, S] padded (host pool), or [T] packed (device pool). */
export function tokenDimsOf(kind: AttentionKind): string[] {
  return kind === "host-pool" ? ["batch", "seq"] : ["num_tokens"];
}

function hostPoolAttention(g: OnnxGraph, config: ModelConfig, inputIds: string): StepAttention {
  const { numKvHeads, headDim } = config;
  const kvWidth = numKvHeads * headDim;
  const pastSlots = g.input(GRAPH_INPUTS.pastSlots, DataType.INT64, ["batch", "past"]);
  const mask = g.input(GRAPH_INPUTS.attentionMask, DataType.FLOAT, ["batch", 1, "seq", "total"]);
  const batchSeqShape = g.op("Shape", [inputIds]);
  const kvRowsShape = g.op("Concat", [batchSeqShape, g.constInt64([kvWidth])], { axis: 0 });
  return {
    ropeInside: false,
    attend(layer, q, k, v) {
      const pool = poolInputNames(layer);
      g.input(pool.key, DataType.FLOAT, [numKvHeads, "num_slots", headDim]);
      g.input(pool.value, DataType.FLOAT, [numKvHeads, "num_slots", headDim]);
      const present = presentOutputNames(layer);
      g.output(present.key, g.op("Reshape", [k, kvRowsShape]), DataType.FLOAT, ["batch", "seq", kvWidth]);
      g.output(present.value, g.op("Reshape", [v, kvRowsShape]), DataType.FLOAT, ["batch", "seq", kvWidth]);
      return g.scoped("attention", () => gatheredAttention(g, config, { q, k, v, poolKey: pool.key, poolValue: pool.value, pastSlots, mask, batchSeqShape }));
    },
  };
}

/**
 * NOTE: PagedAttention's cache outputs are left out (empty names): declared, ONNX Runtime
 * copies the whole cache on every run. Its q/k norm inputs are not implemented on WebGPU
 * (ONNX Runtime 1.30 refuses them), so the head norm stays before it.
 */
function devicePoolAttention(g: OnnxGraph, config: ModelConfig, ropeInside: boolean): StepAttention {
  const { numHeads, numKvHeads, headDim } = config;
  const cumulative = g.input(GRAPH_INPUTS.cumulativeSequenceLength, DataType.INT32, ["batch_plus_1"]);
  const pastSeqlens = g.input(GRAPH_INPUTS.pastSeqlens, DataType.INT32, ["batch"]);
  const blockTable = g.input(GRAPH_INPUTS.blockTable, DataType.INT32, ["batch", "max_blocks"]);
  // NOTE: without these host-side bounds, PagedAttention copies the sequence lengths back from the device in every layer.
  const metadata = g.input(GRAPH_INPUTS.attentionMetadata, DataType.INT32, [2]);
  const caches = ropeInside ? g.scoped("rope", () => ropeCaches(g, config)) : null;
  const half = (x: string) => (g.floatType === DataType.FLOAT16 ? x : g.op("Cast", [x], { to: DataType.FLOAT16 }));
  const rows = (x: string, heads: number) => half(g.op("Reshape", [x, g.constInt64([-1, heads * headDim])]));
  const attrs = {
    num_heads: numHeads, kv_num_heads: numKvHeads, scale: { f: 1 / Math.sqrt(headDim) },
    ...(ropeInside ? { do_rotary: 1 } : {}),
    // NOTE: a token at position q sees keys at positions > q - sliding_window (as in step-layout.ts), which is
    // what the op's local_window_size of sliding_window gives (measured against the CPU runner: test/webgpu-runner.test.ts).
    ...(config.slidingWindow !== null ? { local_window_size: config.slidingWindow } : {}),
  };
  return {
    ropeInside,
    attend(layer, q, k, v) {
      const pool = poolInputNames(layer);
      g.input(pool.key, DataType.FLOAT16, ["num_blocks", "block_size", numKvHeads, headDim]);
      g.input(pool.value, DataType.FLOAT16, ["num_blocks", "block_size", numKvHeads, headDim]);
      return g.scoped("attention", () => {
        const inputs = [rows(q, numHeads), rows(k, numKvHeads), rows(v, numKvHeads), pool.key, pool.value, cumulative, pastSeqlens, blockTable];
        // Inputs 8-15 (cos/sin caches, slot mapping, head sink, q/k norm weights, k/v scales) are optional; 16 is the metadata.
        const optional = [caches?.cos ?? "", caches?.sin ?? "", "", "", "", "", "", ""];
        const out = g.microsoftOp("PagedAttention", [...inputs, ...optional, metadata], attrs);
        return g.floatType === DataType.FLOAT16 ? out : g.op("Cast", [out], { to: g.floatType });
      });
    },
  };
}
