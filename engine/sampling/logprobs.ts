/** Logprob records: the prompt's (for echo) and token strings for both kinds. */
import { logSumExpOf, topLogprobs } from "./sampler.ts";
import type { PositionLogprob, TokenLogprob } from "../common/request.ts";
import type { TextCodec } from "../text/text-codec.ts";

/**
 * Logprobs of prompt tokens from the logits rows of a prefill chunk.
 *
 *   row j (position start + j) predicts the token at position start + j + 1
 */
export function promptLogprobsFromRows(
  rows: Float32Array, vocabSize: number, start: number, promptTokenIds: readonly number[], numTop: number,
): Map<number, PositionLogprob> {
  const found = new Map<number, PositionLogprob>();
  const numRows = rows.length / vocabSize;
  for (let j = 0; j < numRows; j++) {
    const position = start + j + 1;
    if (position >= promptTokenIds.length) break;
    const logits = rows.subarray(j * vocabSize, (j + 1) * vocabSize);
    const logSumExp = logSumExpOf(logits);
    const tokenId = promptTokenIds[position];
    found.set(position, { tokenId, logprob: logits[tokenId] - logSumExp, top: numTop > 0 ? topLogprobs(logits, logSumExp, numTop) : [] });
  }
  return found;
}

/** Adds each token's text and bytes, when the engine has a tokenizer. */
export function withTokenStrings(entry: PositionLogprob, codec: TextCodec | null): PositionLogprob {
  if (!codec) return entry;
  const named = (t: TokenLogprob): TokenLogprob => ({ ...t, token: codec.tokenText(t.tokenId), bytes: [...codec.tokenBytes(t.tokenId)] });
  return { ...named(entry), top: entry.top.map(named) };
}
