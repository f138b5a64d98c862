/**
 * The one place that names the decoder graph's inputs and outputs: the builder declares
 * them by these names and the runners feed and fetch by them. Two graphs share most of them.
 *
 * The host-pool graph (CPU and CUDA runners; the pool is an input every step):
 *
 *   input_ids, position_ids  [B, S]       the step's new tokens, right-padded
 *   shared_slots             [P0]         pool slots of the first P0 positions, which every sequence of the
 *                                         step shares (the same blocks); may be empty
 *   past_slots               [B, P]       pool slot of every earlier context position after those
 *   attention_mask           [B, 1, S, P0+P+S]  additive: 0 to attend, -1e9 to mask
 *   logits_indices           [K]          flat rows (b*S + s) whose logits to return
 *   inv_temperature          [K]          1 / temperature of each of those rows, for probs
 *   want_probs               []           whether to compute probs at all (else they are [0, 1])
 *   hidden_indices           [H]          flat rows whose final hidden state (after the last norm) to return
 *   pool.L.key/value         [kv_heads, slots, head_dim] in the KV cache dtype (kv-dtype.ts)
 *   pool.L.key/value_scale   [kv_heads, slots] float32, int8 pools only
 *   ──▶ logits [K, V], probs [K, V] = softmax(logits / T), top_logprobs / top_ids [K, 20]
 *       (the top of each row's log-softmax), hidden [H, hidden_size] float32 (embeddings),
 *       present.L.key/value [kv_heads, B*S, head_dim] as the pool stores them (kv-head-major, so
 *       a run of a sequence's tokens in one block is one copy per head), and for int8 pools
 *       present.L.key/value_scale [kv_heads, B*S]
 *
 * The device-pool graph (WebGPU runner; com.microsoft PagedAttention writes the step's K/V
 * into the pool in place, so it has no present outputs):
 *
 *   input_ids, position_ids     [T]        the step's new tokens, packed (no padding)
 *   cumulative_sequence_length  [B+1] int32  where each sequence's tokens start in the packing
 *   past_seqlens                [B] int32  tokens already in the pool, per sequence
 *   block_table                 [B, M] int32  each sequence's blocks, padded with the null block 0
 *   attention_metadata          [2] int32, host  [longest query, longest past + query] of the step
 *   logits_indices, inv_temperature, hidden_indices  as above, with rows counted in the packing (no want_probs:
 *                               probs are computed every step, on the device, and fetched on request)
 *   pool.L.key/value            [blocks, block_size, kv_heads, head_dim] float16, on the device
 *   ──▶ logits, probs, top_logprobs, top_ids, hidden as above (float32)
 */

export const GRAPH_INPUTS = {
  inputIds: "input_ids",
  positionIds: "position_ids",
  sharedSlots: "shared_slots",
  pastSlots: "past_slots",
  attentionMask: "attention_mask",
  logitsIndices: "logits_indices",
  invTemperature: "inv_temperature",
  wantProbs: "want_probs",
  cumulativeSequenceLength: "cumulative_sequence_length",
  pastSeqlens: "past_seqlens",
  blockTable: "block_table",
  attentionMetadata: "attention_metadata",
  hiddenIndices: "hidden_indices",
  loraRows: "lora_rows",
  /** LoRA, gather layout (an A/B baseline): each row's slot − 1 (0 for a row without an adapter, masked by lora_rows [rows, 1]). */
  loraSlotIndex: "lora_slot_index",
} as const;

export const GRAPH_OUTPUTS = {
  logits: "logits",
  probs: "probs",
  topLogprobs: "top_logprobs",
  topIds: "top_ids",
  hidden: "hidden",
} as const;

/** How many log-softmax entries per row the graph returns besides the full logits. */
export const TOP_LOGPROBS = 20;

export interface KvNames {
  key: string;
  value: string;
  keyScale: string;
  valueScale: string;
}

/**
 * A graph built with LoRA slots (--max-loras N, --max-lora-rank R) also takes, for each layer
 * and adapted projection, every slot's A stacked by rows and B stacked by columns (B already
 * times its scale), and which slot's columns each row uses:
 *
 *   lora.L.MODULE.a   [W, in]      float32: slot s's A in rows (s−1)·R … (s−1)·R + r (zero past its rank)
 *   lora.L.MODULE.b   [W, out]     float32: slot s's (scale·B)ᵀ in the same rows
 *   lora_rows         [rows, W]    float32: 1 in the columns of the row's slot, 0 elsewhere
 *                                  (a row without an adapter is all 0)
 *
 * so the projection adds ((x·aᵀ) ⊙ lora_rows)·b: every row its own adapter, in one step. W is
 * the step's: k·R for the highest slot k a row of the step uses (slots 1…k are a prefix of each
 * buffer), 0 when no row uses one.
 */
export function loraInputNames(layer: number, module: string): { a: string; b: string } {
  return { a: `lora.${layer}.${module}.a`, b: `lora.${layer}.${module}.b` };
}

export function poolInputNames(layer: number): KvNames {
  return { key: `pool.${layer}.key`, value: `pool.${layer}.value`, keyScale: `pool.${layer}.key_scale`, valueScale: `pool.${layer}.value_scale` };
}

export function presentOutputNames(layer: number): KvNames {
  return { key: `present.${layer}.key`, value: `present.${layer}.value`, keyScale: `present.${layer}.key_scale`, valueScale: `present.${layer}.value_scale` };
}
