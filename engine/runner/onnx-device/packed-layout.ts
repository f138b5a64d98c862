/**
 * Lays sequences out as one device-pool step: their new tokens packed end to end (no
 * padding), and for PagedAttention one query row per token: its position as the number of
 * tokens already in the pool before it, and its sequence's block table (padded with the null
 * block). Pure data, no ONNX Runtime.
 *
 *   seq A: 2 new tokens after 16 cached      seq B: 1 new token after 40 cached   (blockSize 16)
 *   input_ids                  [a0 a1 b0]
 *   cumulative_sequence_length [0 1 2 3]      one row per token
 *   past_seqlens               [16 17 40]
 *   block_table                [[7 2 0] [7 2 0] [4 9 5]]
 *
 * PagedAttention first writes every row's K/V at slot table[p / blockSize]·blockSize + p % blockSize
 * (the slots the host pool's runner copies into), then attends each row over the pool up to
 * and including itself: a chunk of a sequence is causal because row i's past is p + i.
 *
 * NOTE: why not one row per sequence, as the op allows: ONNX Runtime 1.30's WebGPU prefill
 * kernel (a query longer than one token) is wrong from the 9th token of a query on, by up to
 * 4% of the output; its decode kernel, which this layout always takes, matches a float64
 * reference to float16 rounding (bench/webgpu-kernels.ts measures both).
 */
import type { StepSequence } from "../step-runner.ts";

export const NULL_BLOCK = 0;

export interface PackedLayout {
  numTokens: number;
  maxBlocks: number;
  inputIds: BigInt64Array;
  positionIds: BigInt64Array;
  cumulativeSequenceLength: Int32Array;
  pastSeqlens: Int32Array;
  blockTable: Int32Array;
  logitsIndices: BigInt64Array;
  invTemperature: Float32Array;
  /** Packed rows whose final hidden state the step returns (at least one, as with logits). */
  hiddenIndices: BigInt64Array;
  /** The longest row's past plus itself: the bound PagedAttention's attention_metadata takes. */
  maxKvLength: number;
}

export function layoutPacked(seqs: readonly StepSequence[], blockSize: number): PackedLayout {
  const numTokens = seqs.reduce((sum, s) => sum + s.tokenIds.length, 0);
  const maxKvLength = Math.max(1, ...seqs.map((s) => s.numPastTokens + s.tokenIds.length));
  const maxBlocks = Math.ceil(maxKvLength / blockSize);
  const inputIds = new BigInt64Array(numTokens);
  const positionIds = new BigInt64Array(numTokens);
  const cumulativeSequenceLength = Int32Array.from({ length: numTokens + 1 }, (_, i) => i);
  const pastSeqlens = new Int32Array(numTokens);
  const blockTable = new Int32Array(numTokens * maxBlocks).fill(NULL_BLOCK);
  const logitsIndices: bigint[] = [];
  const invTemperature: number[] = [];
  const hiddenIndices: bigint[] = [];
  let offset = 0;
  seqs.forEach((s, b) => {
    const needed = Math.ceil((s.numPastTokens + s.tokenIds.length) / blockSize);
    if (s.blockTable.length < needed) throw new Error(`sequence ${b} has ${s.blockTable.length} blocks for ${s.numPastTokens + s.tokenIds.length} tokens`);
    const table = s.blockTable.slice(0, needed);
    s.tokenIds.forEach((id, i) => {
      inputIds[offset + i] = BigInt(id);
      positionIds[offset + i] = BigInt(s.numPastTokens + i);
      pastSeqlens[offset + i] = s.numPastTokens + i;
      blockTable.set(table, (offset + i) * maxBlocks);
    });
    for (let i = s.logitsFrom; i < s.tokenIds.length; i++) {
      logitsIndices.push(BigInt(offset + i));
      invTemperature.push(s.invTemperature ?? 1);
    }
    if (s.hiddenFrom !== undefined) for (let i = s.hiddenFrom; i < s.tokenIds.length; i++) hiddenIndices.push(BigInt(offset + i));
    offset += s.tokenIds.length;
  });
  // NOTE: as in step-layout.ts, a step that needs no logits asks for one it ignores (TopK on zero rows crashes).
  if (logitsIndices.length === 0) {
    logitsIndices.push(0n);
    invTemperature.push(1);
  }
  if (hiddenIndices.length === 0) hiddenIndices.push(0n);
  return {
    numTokens, maxBlocks, maxKvLength, inputIds, positionIds, cumulativeSequenceLength, pastSeqlens, blockTable,
    logitsIndices: BigInt64Array.from(logitsIndices), invTemperature: Float32Array.from(invTemperature), hiddenIndices: BigInt64Array.from(hiddenIndices),
  };
}
