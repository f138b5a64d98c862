/**
 * Lays a group of sequences out as one graph step: padded [B, S] tokens, past slots
 * and the additive causal mask. Pure data, no ONNX Runtime.
 *
 *   attention_mask[b, 0, i, :]     (P = widest past, S = widest step)
 *   ├──── past: j < P ─────┤├── new: P + j, j < S ──┤
 *   0 for j < numPast_b    0 for j ≤ i (causal)      else MASKED
 *   (with a sliding window W, positions at or before q - W are masked too)
 *
 * Past position j is mask column j. Its slot is in shared_slots when j < P0, the positions
 * whose block every sequence of the step holds (the same block id at the same index: a
 * prefix-cached prompt), and in past_slots[b, j - P0] otherwise. The graph reads the shared
 * blocks once for the whole step (gathered-attention.ts).
 */
import type { StepSequence } from "../step-runner.ts";
import type { KvBuffers } from "./kv-buffers.ts";

export const MASKED = -1e9;
export const NULL_SLOT = 0;

export interface StepLayout {
  batch: number;
  seq: number;
  past: number;
  inputIds: BigInt64Array;
  positionIds: BigInt64Array;
  /** Slots of positions 0..P0-1, shared by every sequence (empty when nothing is). */
  sharedSlots: BigInt64Array;
  /** [B, P - P0]: each sequence's slots of positions P0.., padded with the null slot. */
  pastSlots: BigInt64Array;
  mask: Float32Array;
  logitsIndices: BigInt64Array;
  invTemperature: Float32Array;
  /** Flat rows whose final hidden state the step returns (at least one, which a step that asked for none ignores). */
  hiddenIndices: BigInt64Array;
  /** For each sequence, the pool slots its new tokens go to. */
  newSlots: Int32Array[];
}

/**
 * @param slidingWindow when set, a token at position q sees only keys at positions > q - slidingWindow.
 * @param shareBlocks whether to read the blocks every sequence shares once (off: every past position goes in past_slots).
 */
export function layoutStep(seqs: readonly StepSequence[], pool: KvBuffers, slidingWindow: number | null = null, shareBlocks = true): StepLayout {
  const batch = seqs.length;
  const seq = Math.max(...seqs.map((s) => s.tokenIds.length));
  const past = Math.max(...seqs.map((s) => s.numPastTokens));
  const total = past + seq;
  // NOTE: with a sliding window, shared positions could fall out of a row's window; the mask handles that only per row.
  const shared = shareBlocks && slidingWindow === null && batch > 1 ? sharedPastLength(seqs, pool.shape.blockSize) : 0;
  const sharedSlots = BigInt64Array.from({ length: shared }, (_, j) => BigInt(pool.slotOf(seqs[0].blockTable, j)));
  const own = past - shared;
  const inputIds = new BigInt64Array(batch * seq);
  const positionIds = new BigInt64Array(batch * seq);
  const pastSlots = new BigInt64Array(batch * own).fill(BigInt(NULL_SLOT));
  const mask = new Float32Array(batch * seq * total).fill(MASKED);
  const logitsIndices: bigint[] = [];
  const invTemperature: number[] = [];
  const hiddenIndices: bigint[] = [];
  const newSlots: Int32Array[] = [];
  seqs.forEach((s, b) => {
    for (let j = shared; j < s.numPastTokens; j++) pastSlots[b * own + j - shared] = BigInt(pool.slotOf(s.blockTable, j));
    const slots = new Int32Array(s.tokenIds.length);
    for (let i = 0; i < seq; i++) {
      const row = b * seq + i;
      const real = i < s.tokenIds.length;
      inputIds[row] = BigInt(real ? s.tokenIds[i] : 0);
      positionIds[row] = BigInt(s.numPastTokens + (real ? i : 0));
      const maskRow = mask.subarray(row * total, (row + 1) * total);
      if (real) {
        const firstVisible = slidingWindow === null ? 0 : Math.max(0, s.numPastTokens + i - slidingWindow + 1);
        maskRow.fill(0, Math.min(firstVisible, s.numPastTokens), s.numPastTokens);
        maskRow.fill(0, past + Math.max(0, firstVisible - s.numPastTokens), past + i + 1);
        slots[i] = pool.slotOf(s.blockTable, s.numPastTokens + i);
        if (i >= s.logitsFrom) {
          logitsIndices.push(BigInt(row));
          invTemperature.push(s.invTemperature ?? 1);
        }
        if (s.hiddenFrom !== undefined && i >= s.hiddenFrom) hiddenIndices.push(BigInt(row));
      } else {
        maskRow[past + i] = 0;
      }
    }
    newSlots.push(slots);
  });
  // NOTE: ONNX Runtime's TopK crashes the process on zero rows, so a step that needs no logits asks for one it ignores.
  if (logitsIndices.length === 0) {
    logitsIndices.push(0n);
    invTemperature.push(1);
  }
  if (hiddenIndices.length === 0) hiddenIndices.push(0n);
  return {
    batch, seq, past, inputIds, positionIds, sharedSlots, pastSlots, mask, newSlots,
    logitsIndices: BigInt64Array.from(logitsIndices), invTemperature: Float32Array.from(invTemperature), hiddenIndices: BigInt64Array.from(hiddenIndices),
  };
}

/** Past positions in whole blocks that every sequence holds, in the same blocks. */
function sharedPastLength(seqs: readonly StepSequence[], blockSize: number): number {
  const numFull = Math.floor(Math.min(...seqs.map((s) => s.numPastTokens)) / blockSize);
  let blocks = 0;
  while (blocks < numFull && seqs.every((s) => s.blockTable[blocks] === seqs[0].blockTable[blocks])) blocks++;
  return blocks * blockSize;
}

/**
 * Splits sequences into groups that each run as one padded step, so a long prefill
 * chunk does not pad every decode row to its length. Returns groups of indices.
 */
export function groupForPadding(seqs: readonly StepSequence[], slack = 1.25): number[][] {
  const order = seqs.map((_, i) => i).sort((a, b) => seqs[b].tokenIds.length - seqs[a].tokenIds.length);
  const groups: number[][] = [];
  let current: number[] = [];
  let width = 0;
  let realTokens = 0;
  for (const i of order) {
    const n = seqs[i].tokenIds.length;
    if (current.length > 0 && (current.length + 1) * width > slack * (realTokens + n)) {
      groups.push(current);
      current = [];
    }
    if (current.length === 0) {
      width = n;
      realTokens = 0;
    }
    current.push(i);
    realTokens += n;
  }
  if (current.length > 0) groups.push(current);
  return groups;
}

/**
 * Splits a group of sequences by the length of their past, where the padding saved is worth
 * another run. Attention reads every row's past padded to the group's longest, so short pasts
 * beside long ones read mostly padding. Each extra run costs `runCost`, counted in row·tokens of
 * past: reading the weights again. Rows sorted by past length are cut into runs where that
 * minimizes Σ runs (runCost + rows × longest past), found exactly by dynamic programming over
 * the cut points (O(n²), n ≤ the step's sequences).
 */
export function splitByPast(seqs: readonly StepSequence[], group: readonly number[], runCost: number): number[][] {
  const order = [...group].sort((a, b) => seqs[a].numPastTokens - seqs[b].numPastTokens);
  const n = order.length;
  const best = new Float64Array(n + 1).fill(Infinity);
  const cutAt = new Int32Array(n + 1);
  best[0] = 0;
  for (let j = 1; j <= n; j++) {
    const longest = seqs[order[j - 1]].numPastTokens;
    for (let i = 0; i < j; i++) {
      const cost = best[i] + runCost + (j - i) * longest;
      if (cost < best[j]) {
        best[j] = cost;
        cutAt[j] = i;
      }
    }
  }
  const runs: number[][] = [];
  for (let j = n; j > 0; j = cutAt[j]) runs.unshift(order.slice(cutAt[j], j));
  return runs;
}
