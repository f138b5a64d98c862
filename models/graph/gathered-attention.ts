/**
 * Attention over the host-memory paged KV pool (the CPU runner's), as plain MatMuls in
 * kv-head-major layout, so that each
 * past K/V value is copied once per step (by the gather) and never concatenated with the
 * step's own K/V or transposed:
 *
 *   pool [kv_heads, slots, head_dim] ──Gather(axis 1, shared_slots [P0])──▶ shared [kv_heads, P0, head_dim]
 *                                    ──Gather(axis 1, past_slots [B, P])──▶ past [kv_heads, B, P, head_dim]
 *   q [N, heads, head_dim] ──▶ [kv_heads, B, G·S, head_dim]        (G = heads / kv_heads; only the step's rows)
 *   scores = [q·sharedᵀ ‖ q·pastᵀ ‖ q·newᵀ]·scale + mask ──softmax over P0+P+S──▶ probs
 *   out = probs[…, :P0]·shared_v + probs[…, P0:P0+P]·past_v + probs[…, P0+P:]·new_v ──▶ [N, heads·head_dim]
 *
 * The shared past is the blocks every sequence of the step has at the same positions (a
 * prefix-cached system prompt): gathered once instead of once per sequence, and scored by all
 * B·G·S query rows of a kv head as one GEMM (step-layout.ts finds it; empty when there is none).
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
  /** [P0] int64: slots of the past every sequence of the step shares (its first P0 positions). */
  sharedSlots: string;
  /** [B, P] int64: each sequence's past after those. */
  pastSlots: string;
  /** [B, 1, S, P0+P+S], additive. */
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
  const read = (x: string, slots: string) => g.scoped("kv_gather", () => readKv(g, pool.dtype, g.op("Gather", [x, slots], { axis: 1 })));
  // int8: each past token's scale multiplies its score and its probability (kv-dtype.ts); null otherwise.
  const scalesOf = (x: string, slots: string, axes: number[]) => (hasScales(pool.dtype)
    ? g.scoped("kv_gather", () => g.op("Unsqueeze", [g.op("Gather", [x, slots], { axis: 1 }), c(axes)])) : null);
  const scaled = (x: string, scales: string | null) => (scales === null ? x : g.op("Mul", [x, scales]));
  const scale = { f: 1 / Math.sqrt(headDim) };
  const scoresOf = (keys: string, rows = q) => g.microsoftOp("FusedMatMul", [rows, keys], { transB: 1, alpha: scale });

  // The shared past [kv_heads, P0, head_dim]: read once, and scored by every query row of the step as one GEMM.
  // NOTE: P0 may be 0; allowzero makes Reshape take a 0 as a size, not as "copy this dim".
  const sharedLen = g.op("Shape", [inputs.sharedSlots]);
  const gs = g.op("Mul", [c([group]), seqDim]);
  const allRows = g.op("Mul", [batchDim, gs]);
  const qAll = g.op("Reshape", [q, shape(c([numKvHeads]), allRows, c([headDim]))]);
  const sharedScores = g.op("Reshape", [
    scaled(scoresOf(read(pool.key, inputs.sharedSlots), qAll), scalesOf(pool.keyScale, inputs.sharedSlots, [1])),
    shape(c([numKvHeads]), batchDim, gs, sharedLen),
  ], { allowzero: 1 });
  // Each sequence's own past [kv_heads, B, P, head_dim].
  const pastScores = scaled(scoresOf(read(pool.key, inputs.pastSlots)), scalesOf(pool.keyScale, inputs.pastSlots, [2]));
  const scores = g.op("Concat", [sharedScores, pastScores, scoresOf(newK)], { axis: -1 });
  // The mask [B, 1, S, T] broadcasts over kv heads and the group: scores as [kv_heads, B, G, S, T].
  const grouped = g.op("Reshape", [scores, shape(c([numKvHeads]), batchDim, c([group]), seqDim, c([-1]))]);
  const masked = g.op("Add", [grouped, g.op("Unsqueeze", [inputs.mask, c([0])])]);
  const probs = g.op("Reshape", [g.op("Softmax", [masked], { axis: -1 }), g.op("Shape", [scores])]);
  const pastEnd = g.op("Add", [sharedLen, g.op("Slice", [g.op("Shape", [inputs.pastSlots]), c([1]), c([2])])]);
  const slice = (from: string, to: string) => g.op("Slice", [probs, from, to, c([3])]);
  const sharedProbs = g.op("Reshape", [
    scaled(slice(c([0]), sharedLen), scalesOf(pool.valueScale, inputs.sharedSlots, [1, 2])),
    shape(c([numKvHeads]), allRows, sharedLen),
  ], { allowzero: 1 });
  const sharedOut = g.op("Reshape", [g.op("MatMul", [sharedProbs, read(pool.value, inputs.sharedSlots)]), shape(c([numKvHeads]), batchDim, gs, c([headDim]))]);
  const pastOut = g.op("MatMul", [scaled(slice(sharedLen, pastEnd), scalesOf(pool.valueScale, inputs.pastSlots, [2])), read(pool.value, inputs.pastSlots)]);
  const newOut = g.op("MatMul", [slice(pastEnd, c([Number.MAX_SAFE_INTEGER])), newV]);
  const out = g.op("Add", [g.op("Add", [sharedOut, pastOut]), newOut]);

  // [kv_heads, B, G·S, head_dim] back to token rows [B·S, heads·head_dim].
  const split = g.op("Reshape", [out, shape(c([numKvHeads]), batchDim, c([group]), seqDim, c([headDim]))]);
  return g.op("Reshape", [g.op("Transpose", [split], { perm: [1, 3, 0, 2, 4] }), c([-1, numHeads * headDim])]);
}
