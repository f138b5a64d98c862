/**
 * How the host KV pool stores keys and values (--kv-cache-dtype), and the graph ops that
 * store and read each kind. One place decides it; the attention and the runner follow.
 *
 *   float32  exact; 4 bytes a value.
 *   float16  2 bytes a value; read back through a Cast.
 *   int8     1 byte a value plus one float32 scale per token and kv head (absmax / 127),
 *            4 + 4/head_dim bytes → ~3.9× the tokens of float32 in the same memory.
 *
 * int8 never dequantizes with its scales. A past key's scale s_p multiplies its whole score
 * (q·(s_p k_p) = s_p (q·k_p)) and a past value's multiplies its probability
 * (Σ p_p s_p v_p), so the big past tensors go through one DequantizeLinear with the constant
 * scale 1, as fast as reading float32 (measured: bench/ab-step.ts, README "KV cache dtype"),
 * and the scales touch only the [.., P] score rows.
 *
 * A step's own new K/V are rounded the same way before its attention reads them, so a token's
 * key is the same stored value whichever step (or chunk, or batch) computes the scores.
 */
import { DataType, type OnnxGraph } from "./onnx-graph.ts";

export const KV_CACHE_DTYPES = ["float32", "float16", "int8"] as const;
export type KvCacheDtype = (typeof KV_CACHE_DTYPES)[number];

/** Bytes of one stored value, and of the per-(token, kv head) scale that comes with each head_dim of them. */
export function kvBytes(dtype: KvCacheDtype, headDim: number): { perValue: number; perHeadRow: number } {
  const perValue = dtype === "float32" ? 4 : dtype === "float16" ? 2 : 1;
  return { perValue, perHeadRow: perValue * headDim + (dtype === "int8" ? 4 : 0) };
}

export function kvElemType(dtype: KvCacheDtype): number {
  return dtype === "float32" ? DataType.FLOAT : dtype === "float16" ? DataType.FLOAT16 : DataType.INT8;
}

export const hasScales = (dtype: KvCacheDtype): boolean => dtype === "int8";

export interface StoredKv {
  /** [..., head_dim] in the pool's dtype. */
  stored: string;
  /** int8: [...] float32, one per head_dim row; else null. */
  scales: string | null;
  /** What a later step will read back, as float32 [..., head_dim]: the step's own attention uses it. */
  readBack: string;
}

/** x [..., head_dim] float32 (rows of heads) as the pool stores it. */
export function storeKv(g: OnnxGraph, dtype: KvCacheDtype, x: string): StoredKv {
  if (dtype === "float32") return { stored: x, scales: null, readBack: x };
  if (dtype === "float16") {
    const stored = g.op("Cast", [x], { to: DataType.FLOAT16 });
    return { stored, scales: null, readBack: g.op("Cast", [stored], { to: DataType.FLOAT }) };
  }
  const absMax = g.op("ReduceMax", [g.op("Abs", [x]), g.constInt64([-1])], { keepdims: 1 });
  // NOTE: the floor keeps an all-zero row's scale positive (0 / 0 would be NaN); its values stay 0.
  const scale = g.op("Max", [g.op("Mul", [absMax, g.constFloat32([1 / 127], [])]), g.constFloat32([1e-30], [])]);
  const rounded = g.op("Round", [g.op("Div", [x, scale])]);
  return {
    stored: g.op("Cast", [rounded], { to: DataType.INT8 }),
    scales: g.op("Squeeze", [scale, g.constInt64([-1])]),
    readBack: g.op("Mul", [rounded, scale]),
  };
}

/** Past values gathered from the pool ([..., head_dim] in its dtype) as float32, before any scale. */
export function readKv(g: OnnxGraph, dtype: KvCacheDtype, gathered: string): string {
  if (dtype === "float32") return gathered;
  if (dtype === "float16") return g.op("Cast", [gathered], { to: DataType.FLOAT });
  return g.op("DequantizeLinear", [gathered, g.constFloat32([1], [])]);
}
