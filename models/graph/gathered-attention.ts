/**
 * Attention over the host-memory paged KV pool (the CPU runner's), as plain MatMuls in
 * kv-head-major layout, so that each
 * past K/V value is copied once per step (by the gather) and never concatenated with the
 * step's own K/V or transposed:
 *
 *   pool [kv_heads, slots, head_dim] ──Gather(axis 1, past_slots [B, P])──▶ past [kv_heads, B, P, head_dim]
 *   q [N, heads, head_dim] ──▶ [kv_heads, B, G·S, head_dim]        (G = heads / kv_heads; only the step's rows)
 *   scores = [q·pastᵀ ‖ q·newᵀ]·scale + mask ──softmax over P+S──▶ probs
 *   out = probs[…, :P]·past_v + probs[…, P:]·new_v ──▶ [N, heads·head_dim]
 *
 * Query head h reads kv head h / G, as Hugging Face's repeat_kv does. The profile this
 * replaces (Gather, Concat, then ONNX Attention, which transposes K and V again) is in the
 * README's quantization section.
 */
import type { ModelConfig } from "../config.ts";
import type { KvNames } from "./graph-io.ts";
import { hasScales, readKv, type KvCacheDtype } from "./kv-dtype.ts";
import type { OnnxGraph } from "./onnx-graph.ts";

export interface GatheredAttentionInputs {
  /** [N, heads, head_dim], after rope. */
  q: string;
  /** [N, kv_heads, head_dim], after rope, as the pool will store it (kv-dtype.ts). */
  k: string;
  /** [N, kv_heads, head_dim], as the pool will store it. */
  v: string;
  /** The layer's pool inputs (scales only for int8). */
  pool: KvNames & { dtype: KvCacheDtype };
  /** [B, P] int64. */
  pastSlots: string;
  /** [B, 1, S, P+S], additive. */
  mask: string;
  /** Shape(input_ids): [B, S]. */
  batchSeqShape: string;
}

/** Returns the attention output as [N, heads·head_dim] rows. */
export function gatheredAttention(g: OnnxGraph, config: ModelConfig, inputs: GatheredAttentionInputs): string {
  const { numHeads, numKvHeads, headDim } = config;
  const group = numHeads / numKvHeads;
  const c = (values: number[]) => g.constInt64(values);
  const batchDim = g.op("Slice", [inputs.batchSeqShape, c([0]), c([1])]);
  const seqDim = g.op("Slice", [inputs.batchSeqShape, c([1]), c([2])]);
  const shape = (...parts: string[]) => g.op("Concat", parts, { axis: 0 });

  // The step's rows, kv-head-major: [kv_heads, B, G·S, head_dim] and [kv_heads, B, S, head_dim].
  const headMajor = (x: string, heads: number, perm: number[]) => g.op("Transpose", [g.op("Reshape", [x, shape(inputs.batchSeqShape, c([numKvHeads, heads, headDim]))])], { perm });
  const rowsShape = shape(c([numKvHeads]), batchDim, c([-1, headDim]));
  const q = g.op("Reshape", [headMajor(inputs.q, group, [2, 0, 3, 1, 4]), rowsShape]);
  const newK = g.op("Reshape", [headMajor(inputs.k, 1, [2, 3, 0, 1, 4]), rowsShape]);
  const newV = g.op("Reshape", [headMajor(inputs.v, 1, [2, 3, 0, 1, 4]), rowsShape]);

  // NOTE: measured with bench/ab-step.ts, both are faster than the alternatives tried: gathering
  // V only after the softmax (7% slower decode at batch 32), and past·qᵀ then a transpose
  // instead of q·pastᵀ (also 7% slower, though MLAS packs the transposed past).
  const { pool } = inputs;
  const gather = (x: string) => g.op("Gather", [x, inputs.pastSlots], { axis: 1 });
  const pastK = g.scoped("kv_gather", () => readKv(g, pool.dtype, gather(pool.key)));
  const pastV = g.scoped("kv_gather", () => readKv(g, pool.dtype, gather(pool.value)));
  // int8: each past token's scale, [kv_heads, B, 1, P], multiplies its score and its probability (kv-dtype.ts).
  const pastScales = (x: string) => (hasScales(pool.dtype) ? g.scoped("kv_gather", () => g.op("Unsqueeze", [gather(x), c([2])])) : null);
  const keyScales = pastScales(pool.keyScale);
  const valueScales = pastScales(pool.valueScale);

  const scale = { f: 1 / Math.sqrt(headDim) };
  const pastScores = g.microsoftOp("FusedMatMul", [q, pastK], { transB: 1, alpha: scale });
  const scores = g.op("Concat", [
    keyScales === null ? pastScores : g.op("Mul", [pastScores, keyScales]),
    g.microsoftOp("FusedMatMul", [q, newK], { transB: 1, alpha: scale }),
  ], { axis: -1 });
  // The mask [B, 1, S, T] broadcasts over kv heads and the group: scores as [kv_heads, B, G, S, T].
  const grouped = g.op("Reshape", [scores, shape(c([numKvHeads]), batchDim, c([group]), seqDim, c([-1]))]);
  const masked = g.op("Add", [grouped, g.op("Unsqueeze", [inputs.mask, c([0])])]);
  const probs = g.op("Reshape", [g.op("Softmax", [masked], { axis: -1 }), g.op("Shape", [scores])]);
  const past = g.op("Slice", [g.op("Shape", [inputs.pastSlots]), c([1]), c([2])]);
  const unscaledPastProbs = g.op("Slice", [probs, c([0]), past, c([3])]);
  const pastProbs = valueScales === null ? unscaledPastProbs : g.op("Mul", [unscaledPastProbs, valueScales]);
  const newProbs = g.op("Slice", [probs, past, c([Number.MAX_SAFE_INTEGER]), c([3])]);
  const out = g.op("Add", [g.op("MatMul", [pastProbs, pastV]), g.op("MatMul", [newProbs, newV])]);

  // [kv_heads, B, G·S, head_dim] back to token rows [B·S, heads·head_dim].
  const split = g.op("Reshape", [out, shape(c([numKvHeads]), batchDim, c([group]), seqDim, c([headDim]))]);
  return g.op("Reshape", [g.op("Transpose", [split], { perm: [1, 3, 0, 2, 4] }), c([-1, numHeads * headDim])]);
}
