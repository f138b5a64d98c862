/**
 * Sampling with top-k ≤ N from the graph's top-N log-softmax entries alone. It is exact:
 * top-k keeps only the k most likely tokens, and temperature, min-p and top-p (applied after
 * top-k, as vLLM does) only reweigh or drop tokens among them. This is the usual setting of
 * real models (Qwen3 recommends top_k 20), and it spares copying and scanning the vocabulary.
 */
import type { Prng } from "../../models/prng.ts";
import type { SamplingParams } from "../core/request.ts";
import type { LogitsRow } from "../runner/step-logits.ts";
import { TOP_N } from "../runner/step-logits.ts";

export function isTopNSampling(params: SamplingParams): boolean {
  return params.temperature > 0 && params.topK > 1 && params.topK <= TOP_N;
}

/** The kept entries of the row's top-N, most likely first, with weights relative to the first (weight 1). */
export function keptFromTop(row: LogitsRow, params: SamplingParams): { ranks: number[]; weights: number[] } {
  const numCandidates = Math.min(params.topK, row.topIds.length);
  const ranks: number[] = [];
  const weights: number[] = [];
  for (let r = 0; r < numCandidates; r++) {
    const weight = Math.exp((row.topLogprobs[r] - row.topLogprobs[0]) / params.temperature);
    if (params.minP > 0 && weight < params.minP) continue;
    ranks.push(r);
    weights.push(weight);
  }
  if (params.topP < 1) {
    const total = weights.reduce((a, b) => a + b, 0);
    let mass = 0;
    for (let j = 0; j < weights.length; j++) {
      mass += weights[j];
      if (mass >= params.topP * total) return { ranks: ranks.slice(0, j + 1), weights: weights.slice(0, j + 1) };
    }
  }
  return { ranks, weights };
}

/** Draws a rank of the row's top-N. */
export function drawFromTop(row: LogitsRow, params: SamplingParams, rng: Prng): number {
  const { ranks, weights } = keptFromTop(row, params);
  let u = rng.next() * weights.reduce((a, b) => a + b, 0);
  for (let j = 0; j < ranks.length; j++) {
    u -= weights[j];
    if (u <= 0) return ranks[j];
  }
  return ranks[ranks.length - 1];
}
