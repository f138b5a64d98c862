/**
 * An embedding sequence's pooling: each step's final hidden rows are summed in float64 (every
 * row for mean pooling, the prompt's last for last pooling), and once the prompt is computed
 * the sum is L2-normalized into the request's one output. The mean's 1/n cancels in the norm.
 */
import type { SequenceRows } from "../runner/step-rows.ts";
import type { Sequence } from "./sequence.ts";

/** Adds the step's hidden rows to the sequence's sum; returns the embedding once its prompt is computed, else null. */
export function poolStep(seq: Sequence, numNewTokens: number, rows: SequenceRows, hiddenSize: number): Float32Array | null {
  const hidden = rows.hidden;
  const numRows = seq.pooling === "mean" ? numNewTokens : seq.numComputedTokens >= seq.numPromptTokens ? 1 : 0;
  if (!hidden || hidden.length !== numRows * hiddenSize) throw new Error(`an embedding step returned ${hidden?.length ?? 0} hidden values, not ${numRows} rows of ${hiddenSize}`);
  const sum = (seq.pooled ??= new Float64Array(hiddenSize));
  for (let r = 0; r < numRows; r++) for (let i = 0; i < hiddenSize; i++) sum[i] += hidden[r * hiddenSize + i];
  return seq.numComputedTokens < seq.numPromptTokens ? null : l2Normalized(sum);
}

/** The vector scaled to unit length (a zero vector stays zero). */
function l2Normalized(v: Float64Array): Float32Array {
  let norm = 0;
  for (const x of v) norm += x * x;
  const scale = norm > 0 ? 1 / Math.sqrt(norm) : 0;
  return Float32Array.from(v, (x) => x * scale);
}
