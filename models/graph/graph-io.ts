/**
 * The one place that names the decoder graph's inputs and outputs: the builder declares
 * them by these names and the runner feeds and fetches by them.
 *
 *   input_ids, position_ids  [B, S]       the step's new tokens, right-padded
 *   past_slots               [B, P]       pool slot of every earlier context position
 *   attention_mask           [B, 1, S, P+S]  additive: 0 to attend, -1e9 to mask
 *   logits_indices           [K]          flat rows (b*S + s) whose logits to return
 *   inv_temperature          [K]          1 / temperature of each of those rows, for probs
 *   want_probs               []           whether to compute probs at all (else they are [0, 1])
 *   pool.L.key/value         [kv_heads, slots, head_dim]
 *   ──▶ logits [K, V], probs [K, V] = softmax(logits / T), top_logprobs / top_ids [K, 20]
 *       (the top of each row's log-softmax),
 *       present.L.key/value [B, S, kv_heads*head_dim]
 */

export const GRAPH_INPUTS = {
  inputIds: "input_ids",
  positionIds: "position_ids",
  pastSlots: "past_slots",
  attentionMask: "attention_mask",
  logitsIndices: "logits_indices",
  invTemperature: "inv_temperature",
  wantProbs: "want_probs",
} as const;

export const GRAPH_OUTPUTS = {
  logits: "logits",
  probs: "probs",
  topLogprobs: "top_logprobs",
  topIds: "top_ids",
} as const;

/** How many log-softmax entries per row the graph returns besides the full logits. */
export const TOP_LOGPROBS = 20;

export function poolInputNames(layer: number): { key: string; value: string } {
  return { key: `pool.${layer}.key`, value: `pool.${layer}.value` };
}

export function presentOutputNames(layer: number): { key: string; value: string } {
  return { key: `present.${layer}.key`, value: `present.${layer}.value` };
}
