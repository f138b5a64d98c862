/**
 * Where the decoder's attention reads its KV cache from, one per kind of runner. Each
 * declares the inputs (and outputs) its layout needs and attends layer by layer:
 *
 * - host pool: the pool is an input every step (float32, float16 or int8: kv-dtype.ts); past
 *   K/V are gathered by slot (gathered-attention.ts) and the runner copies the step's K/V
 *   (present outputs) back in.
 * - device pool: the pool stays on the device as float16; com.microsoft PagedAttention reads
 *   it through the block table and writes the step's K/V into it in place.
 */
import type { ModelConfig } from "../config.ts";
import { gatheredAttention } from "./gathered-attention.ts";
import { hasScales, kvElemType, storeKv, type KvCacheDtype } from "./kv-dtype.ts";
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
  /** Host pool only: how the pool stores K/V (the device pool is float16). Default float32. */
  kvDtype?: KvCacheDtype;
}

export function stepAttention(g: OnnxGraph, config: ModelConfig, inputIds: string, options: StepAttentionOptions): StepAttention {
  return options.kind === "host-pool" ? hostPoolAttention(g, config, inputIds, options.kvDtype ?? "float32") : devicePoolAttention(g, config, options.ropeInside);
}

/** input_ids and position_ids: [B, S] padded (host pool), or [T] packed (device pool). */
export function tokenDimsOf(kind: AttentionKind): string[] {
  return kind === "host-pool" ? ["batch", "seq"] : ["num_tokens"];
}

function hostPoolAttention(g: OnnxGraph, config: ModelConfig, inputIds: string, kvDtype: KvCacheDtype): StepAttention {
  const { numKvHeads, headDim } = config;
  const sharedSlots = g.input(GRAPH_INPUTS.sharedSlots, DataType.INT64, ["shared"]);
  const pastSlots = g.input(GRAPH_INPUTS.pastSlots, DataType.INT64, ["batch", "past"]);
  const mask = g.input(GRAPH_INPUTS.attentionMask, DataType.FLOAT, ["batch", 1, "seq", "total"]);
  const batchSeqShape = g.op("Shape", [inputIds]);
  const elemType = kvElemType(kvDtype);
  // [N, kv_heads, head_dim] → stored as the pool keeps it, and declared as present outputs [kv_heads, N, head_dim] (scales [kv_heads, N]).
  const present = (rows: string, name: string, scaleName: string) => {
    const kv = storeKv(g, kvDtype, rows);
    g.output(name, g.op("Transpose", [kv.stored], { perm: [1, 0, 2] }), elemType, [numKvHeads, "rows", headDim]);
    if (kv.scales !== null) g.output(scaleName, g.op("Transpose", [kv.scales], { perm: [1, 0] }), DataType.FLOAT, [numKvHeads, "rows"]);
    return kv.readBack;
  };
  return {
    ropeInside: false,
    attend(layer, q, k, v) {
      const pool = poolInputNames(layer);
      g.input(pool.key, elemType, [numKvHeads, "num_slots", headDim]);
      g.input(pool.value, elemType, [numKvHeads, "num_slots", headDim]);
      if (hasScales(kvDtype)) {
        g.input(pool.keyScale, DataType.FLOAT, [numKvHeads, "num_slots"]);
        g.input(pool.valueScale, DataType.FLOAT, [numKvHeads, "num_slots"]);
      }
      const names = presentOutputNames(layer);
      const newK = g.scoped("kv_store", () => present(k, names.key, names.keyScale));
      const newV = g.scoped("kv_store", () => present(g.op("Reshape", [v, g.constInt64([-1, numKvHeads, headDim])]), names.value, names.valueScale));
      return g.scoped("attention", () => gatheredAttention(g, config, {
        q, k: newK, v: newV, pool: { ...pool, dtype: kvDtype }, sharedSlots, pastSlots, mask, batchSeqShape,
      }));
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
