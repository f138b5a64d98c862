/**
 * What a step returns for one sequence (SequenceRows; BatchRows for the whole batch): the
 * graph's top-N log-softmax entries for every row, the full logits rows or probabilities only
 * when the step asked for them, and the final hidden states for embeddings.
 *
 * NOTE: copying [rows, vocab] floats out of ONNX Runtime and scanning them in JavaScript costs
 * more than the decode step itself for a small model and a large vocabulary, so greedy
 * requests without penalties are served from the top-N alone.
 */
import { TOP_LOGPROBS } from "../../models/index.ts";

/** How many log-softmax entries per row the graph returns. */
export const TOP_N = TOP_LOGPROBS;

export interface SequenceRows {
  numRows: number;
  /** [numRows, topN] token ids and log-softmax values, most likely first (ties: lower id first). */
  topIds: Int32Array;
  topLogprobs: Float32Array;
  topN: number;
  /** [numRows, vocab], or null when the step did not fetch full logits. */
  full: Float32Array | null;
  /** [numRows, vocab] softmax(logits / T), or null when the step did not fetch them. */
  probs: Float32Array | null;
  /** [rows from hiddenFrom on, hiddenSize] final hidden states, or null when the step did not fetch them. */
  hidden?: Float32Array | null;
}

/** A step's logits rows for all its sequences, in order: what a runner fetched. */
export type BatchRows = Omit<SequenceRows, "numRows">;

/** How many hidden-state rows a sequence asked for. */
export function numHiddenRowsOf(s: { tokenIds: readonly number[]; hiddenFrom?: number }): number {
  return s.hiddenFrom === undefined ? 0 : Math.max(0, s.tokenIds.length - s.hiddenFrom);
}

/** Splits a step's rows back into one SequenceRows per sequence, each from its logitsFrom (and hiddenFrom) on. */
export function splitStepRows(seqs: readonly { tokenIds: readonly number[]; logitsFrom: number; hiddenFrom?: number }[], rows: BatchRows, vocabSize: number, hiddenSize = 0): SequenceRows[] {
  const { topN, topIds, topLogprobs, full, probs, hidden } = rows;
  let row = 0;
  let hiddenRow = 0;
  return seqs.map((s) => {
    const numRows = Math.max(0, s.tokenIds.length - s.logitsFrom);
    const numHidden = numHiddenRowsOf(s);
    const slice: SequenceRows = {
      numRows, topN,
      topIds: topIds.subarray(row * topN, (row + numRows) * topN),
      topLogprobs: topLogprobs.subarray(row * topN, (row + numRows) * topN),
      full: full ? full.subarray(row * vocabSize, (row + numRows) * vocabSize) : null,
      probs: probs ? probs.subarray(row * vocabSize, (row + numRows) * vocabSize) : null,
      hidden: hidden ? hidden.subarray(hiddenRow * hiddenSize, (hiddenRow + numHidden) * hiddenSize) : null,
    };
    row += numRows;
    hiddenRow += numHidden;
    return slice;
  });
}

/** One row of a SequenceRows: what the sampler reads. */
export interface LogitsRow {
  topIds: Int32Array;
  topLogprobs: Float32Array;
  full: Float32Array | null;
  probs: Float32Array | null;
}

export function rowOf(logits: SequenceRows, row: number, vocabSize: number): LogitsRow {
  const { topN } = logits;
  return {
    topIds: logits.topIds.subarray(row * topN, (row + 1) * topN),
    topLogprobs: logits.topLogprobs.subarray(row * topN, (row + 1) * topN),
    full: logits.full ? logits.full.subarray(row * vocabSize, (row + 1) * vocabSize) : null,
    probs: logits.probs ? logits.probs.subarray(row * vocabSize, (row + 1) * vocabSize) : null,
  };
}

/** The same record computed in JavaScript from full logits (for fake runners in tests). */
export function sequenceRowsFromFull(full: Float32Array, vocabSize: number, invTemperature = 1, topN = Math.min(TOP_N, vocabSize)): SequenceRows {
  const numRows = full.length / vocabSize;
  const topIds = new Int32Array(numRows * topN);
  const topLogprobs = new Float32Array(numRows * topN);
  const probs = new Float32Array(full.length);
  for (let r = 0; r < numRows; r++) {
    const row = full.subarray(r * vocabSize, (r + 1) * vocabSize);
    let max = -Infinity;
    for (const x of row) max = Math.max(max, x);
    let sum = 0;
    for (const x of row) sum += Math.exp(x - max);
    const logSumExp = max + Math.log(sum);
    let scaledSum = 0;
    for (const x of row) scaledSum += Math.exp((x - max) * invTemperature);
    row.forEach((x, i) => (probs[r * vocabSize + i] = Math.exp((x - max) * invTemperature) / scaledSum));
    const order = Array.from(row.keys()).sort((a, b) => row[b] - row[a] || a - b).slice(0, topN);
    order.forEach((id, k) => {
      topIds[r * topN + k] = id;
      topLogprobs[r * topN + k] = row[id] - logSumExp;
    });
  }
  return { numRows, topIds, topLogprobs, topN, full, probs };
}
