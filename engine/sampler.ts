/**
 * Logits → one token: penalties and logit bias, then greedy or temperature sampling
 * with top-k, top-p and min-p. Logprobs are the model's own (raw log-softmax).
 */
import { Prng } from "../models/prng.ts";
import type { SamplingParams, TokenLogprob } from "./request.ts";

export interface SampleResult {
  tokenId: number;
  logprob: number;
  top: TokenLogprob[];
}

/** The tokens a sequence has seen, for penalties. */
export interface TokenHistory {
  promptTokenIds: readonly number[];
  outputTokenIds: readonly number[];
}

export function sampleToken(logits: Float32Array, params: SamplingParams, history: TokenHistory, rng: Prng): SampleResult {
  const logSumExp = logSumExpOf(logits);
  const adjusted = applyPenalties(logits, params, history);
  const tokenId = params.temperature <= 0 ? argmax(adjusted) : sampleFrom(adjusted, params, rng);
  const top = params.logprobs ? topLogprobs(logits, logSumExp, params.logprobs) : [];
  return { tokenId, logprob: logits[tokenId] - logSumExp, top };
}

export function logSumExpOf(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

function applyPenalties(logits: Float32Array, params: SamplingParams, history: TokenHistory): Float32Array {
  const { presencePenalty, frequencyPenalty, repetitionPenalty, logitBias } = params;
  const needsCopy = presencePenalty !== 0 || frequencyPenalty !== 0 || repetitionPenalty !== 1 || (logitBias?.size ?? 0) > 0;
  if (!needsCopy) return logits;
  const out = Float32Array.from(logits);
  if (repetitionPenalty !== 1) {
    // NOTE: as in HF and vLLM, the repetition penalty covers prompt and output; it divides positive logits and multiplies negative ones.
    const seen = new Set([...history.promptTokenIds, ...history.outputTokenIds]);
    for (const id of seen) out[id] = out[id] > 0 ? out[id] / repetitionPenalty : out[id] * repetitionPenalty;
  }
  if (presencePenalty !== 0 || frequencyPenalty !== 0) {
    // NOTE: OpenAI's presence and frequency penalties count generated tokens only.
    const counts = new Map<number, number>();
    for (const id of history.outputTokenIds) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const [id, count] of counts) out[id] -= presencePenalty + frequencyPenalty * count;
  }
  for (const [id, bias] of logitBias ?? []) if (id >= 0 && id < out.length) out[id] += bias;
  return out;
}

function argmax(values: Float32Array | Float64Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function sampleFrom(logits: Float32Array, params: SamplingParams, rng: Prng): number {
  const probs = softmax(logits, params.temperature);
  let candidates = candidatesAbove(probs, params.minP > 0 ? params.minP * probs[argmax(probs)] : 0);
  if (params.topK > 0 && params.topK < candidates.length) candidates = topKOf(candidates, probs, params.topK);
  if (params.topP < 1) candidates = nucleus(candidates, probs, params.topP);
  let mass = 0;
  for (const id of candidates) mass += probs[id];
  let u = rng.next() * mass;
  for (const id of candidates) {
    u -= probs[id];
    if (u <= 0) return id;
  }
  return candidates[candidates.length - 1];
}

function softmax(logits: Float32Array, temperature: number): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const probs = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += probs[i] = Math.exp((logits[i] - max) / temperature);
  for (let i = 0; i < probs.length; i++) probs[i] /= sum;
  return probs;
}

function candidatesAbove(probs: Float64Array, floor: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < probs.length; i++) if (probs[i] > 0 && probs[i] >= floor) out.push(i);
  return out;
}

function topKOf(candidates: number[], probs: Float64Array, k: number): number[] {
  return candidates.sort((a, b) => probs[b] - probs[a] || a - b).slice(0, k);
}

/** The smallest set of most likely tokens whose mass reaches topP (ties broken by token id). */
function nucleus(candidates: number[], probs: Float64Array, topP: number): number[] {
  const sorted = candidates.sort((a, b) => probs[b] - probs[a] || a - b);
  let total = 0;
  for (const id of sorted) total += probs[id];
  let mass = 0;
  for (let i = 0; i < sorted.length; i++) {
    mass += probs[sorted[i]];
    if (mass >= topP * total) return sorted.slice(0, i + 1);
  }
  return sorted;
}

export function topLogprobs(logits: Float32Array, logSumExp: number, n: number): TokenLogprob[] {
  const top: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    if (top.length === n && logits[i] <= logits[top[n - 1]]) continue;
    let at = top.length;
    while (at > 0 && logits[top[at - 1]] < logits[i]) at--;
    top.splice(at, 0, i);
    if (top.length > n) top.pop();
  }
  return top.map((tokenId) => ({ tokenId, logprob: logits[tokenId] - logSumExp }));
}
