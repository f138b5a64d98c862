/**
 * Logits → one token: penalties and logit bias, then greedy or temperature sampling
 * with top-k, top-p and min-p. Logprobs are the model's own (raw log-softmax).
 */
import { Prng } from "../../models/prng.ts";
import type { SamplingParams, TokenLogprob } from "../core/request.ts";
import type { LogitsRow } from "../runner/step-logits.ts";
import { drawFromTop, isTopNSampling } from "./top-n-sampler.ts";
import { sampleNucleus } from "./nucleus-sampler.ts";

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

/**
 * What of each row a request's choice needs:
 * - "top": the graph's top-N log-softmax entries (greedy; top-k ≤ N sampling);
 * - "probs": softmax(logits / T) from the graph (other temperature sampling);
 * - "logits": the raw logits (penalties and logit bias change them first; a sampled token's
 *   raw logprob at T ≠ 1 may lie outside the top-N).
 */
export type LogitsNeed = "top" | "probs" | "logits";

export function logitsNeedOf(params: SamplingParams): LogitsNeed {
  const penalized = params.presencePenalty !== 0 || params.frequencyPenalty !== 0 || params.repetitionPenalty !== 1 || (params.logitBias?.size ?? 0) > 0;
  if (penalized) return "logits";
  if (isGreedy(params) || isTopNSampling(params)) return "top";
  return params.logprobs !== undefined && params.temperature !== 1 ? "logits" : "probs";
}


function isGreedy(params: SamplingParams): boolean {
  return params.temperature <= 0 || params.topK === 1;
}

/**
 * Samples from one row of a step, reading what `need` says the step fetched for this row.
 * NOTE: the caller passes the need it fetched by, never re-derived here: a row fetched with
 * full logits (prompt logprobs, say) is sampled from them whatever the params alone would ask.
 */
export function sampleRow(row: LogitsRow, need: LogitsNeed, params: SamplingParams, history: TokenHistory, rng: Prng): SampleResult {
  if (need === "logits") {
    if (!row.full) throw new Error("this request needs full logits, but the step did not fetch them");
    return sampleToken(row.full, params, history, rng);
  }
  const top: TokenLogprob[] = [];
  for (let k = 0; k < (params.logprobs ?? 0); k++) top.push({ tokenId: row.topIds[k], logprob: row.topLogprobs[k] });
  if (need === "top") {
    const choice = isGreedy(params) ? 0 : drawFromTop(row, params, rng);
    return { tokenId: row.topIds[choice], logprob: params.logprobs === undefined ? NaN : row.topLogprobs[choice], top };
  }
  if (!row.probs) throw new Error("this request needs probs, but the step did not fetch them");
  const tokenId = sampleFromProbs(row.probs, params, rng);
  // At T = 1 (the only "probs" case with logprobs) the probs are the model's own distribution.
  const rank = row.topIds.indexOf(tokenId);
  const logprob = params.logprobs === undefined ? NaN : rank >= 0 ? row.topLogprobs[rank] : Math.log(row.probs[tokenId]);
  return { tokenId, logprob, top };
}

/** NOTE: logprobs cost a pass of exp over the vocabulary, so they are computed only when asked for (NaN otherwise). */
export function sampleToken(logits: Float32Array, params: SamplingParams, history: TokenHistory, rng: Prng): SampleResult {
  const adjusted = applyPenalties(logits, params, history);
  const tokenId = params.temperature <= 0 || params.topK === 1 ? argmax(adjusted) : sampleFrom(adjusted, params, rng);
  if (params.logprobs === undefined) return { tokenId, logprob: NaN, top: [] };
  const logSumExp = logSumExpOf(logits);
  const top = params.logprobs > 0 ? topLogprobs(logits, logSumExp, params.logprobs) : [];
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
  for (const [id, bias] of logitBias ?? []) out[id] += bias;
  return out;
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * Draws from softmax(logits / T) restricted by min-p, top-k and top-p, without sorting the
 * vocabulary: each filter only raises a weight floor, and the draw walks the survivors.
 */
function sampleFrom(logits: Float32Array, params: SamplingParams, rng: Prng): number {
  const weights = softmaxWeights(logits, params.temperature);
  return drawKept(weights, keptMask(weights, logits, params), rng);
}

/** Temperature sampling from the graph's softmax(logits / T) row. */
export function sampleFromProbs(probs: Float32Array, params: SamplingParams, rng: Prng): number {
  if (params.minP <= 0 && params.topK <= 0 && params.topP < 1) return sampleNucleus(probs, params.topP, rng);
  if (params.minP > 0 || params.topK > 0 || params.topP < 1) return drawKept(probs, keptMask(probs, probs, params), rng);
  // Plain temperature: one partial walk. The row sums to 1 up to float32 rounding, covered by the fallback.
  let u = rng.next();
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] <= 0) continue;
    last = i;
    u -= probs[i];
    if (u <= 0) return i;
  }
  return last;
}

function drawKept(weights: Float32Array | Float64Array, keep: Uint8Array, rng: Prng): number {
  let mass = 0;
  for (let i = 0; i < weights.length; i++) if (keep[i]) mass += weights[i];
  let u = rng.next() * mass;
  let last = 0;
  for (let i = 0; i < weights.length; i++) {
    if (!keep[i]) continue;
    last = i;
    u -= weights[i];
    if (u <= 0) return i;
  }
  return last;
}

/**
 * Which tokens survive min-p, then top-k, then top-p (vLLM's order), given temperature
 * weights and the values that rank tokens (logits, or the weights themselves).
 */
function keptMask(weights: Float32Array | Float64Array, rankBy: Float32Array | Float64Array, params: SamplingParams): Uint8Array {
  let maxWeight = 0;
  for (let i = 0; i < weights.length; i++) if (weights[i] > maxWeight) maxWeight = weights[i];
  const keep = new Uint8Array(weights.length);
  const numKept = markAtLeast(weights, params.minP > 0 ? params.minP * maxWeight : 0, keep);
  if (params.topK > 0 && params.topK < numKept) keepTopK(rankBy, keep, params.topK);
  if (params.topP < 1) keepNucleus(rankBy, weights, keep, params.topP, maxWeight);
  return keep;
}

/** The distribution a sampled draw picks from over the full logits: token id → probability. */
export function keptDistribution(logits: Float32Array, params: SamplingParams): Map<number, number> {
  const weights = softmaxWeights(logits, params.temperature);
  return normalizedKept(weights, keptMask(weights, logits, params));
}

/** The same from a softmax(logits / T) row. */
export function keptDistributionFromProbs(probs: Float32Array, params: SamplingParams): Map<number, number> {
  return normalizedKept(probs, keptMask(probs, probs, params));
}

function normalizedKept(weights: Float32Array | Float64Array, keep: Uint8Array): Map<number, number> {
  let mass = 0;
  for (let i = 0; i < weights.length; i++) if (keep[i]) mass += weights[i];
  const out = new Map<number, number>();
  for (let i = 0; i < weights.length; i++) if (keep[i]) out.set(i, weights[i] / mass);
  return out;
}

/** exp((logit - max) / T): the most likely token gets weight 1. */
function softmaxWeights(logits: Float32Array, temperature: number): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const weights = new Float64Array(logits.length);
  const invT = 1 / temperature;
  for (let i = 0; i < logits.length; i++) weights[i] = Math.exp((logits[i] - max) * invT);
  return weights;
}

function markAtLeast(weights: Float32Array | Float64Array, floor: number, keep: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i] > 0 && weights[i] >= floor) {
      keep[i] = 1;
      n++;
    }
  }
  return n;
}

/**
 * Keeps the k most likely kept tokens (ties to the lower id); O(V) with a quickselect.
 * NOTE: ranked by logit, not by weight, so that weights rounding to equal values never
 * reorder tokens: the graph's TopK ranks the same way.
 */
function keepTopK(logits: Float32Array | Float64Array, keep: Uint8Array, k: number): void {
  const values: number[] = [];
  for (let i = 0; i < logits.length; i++) if (keep[i]) values.push(logits[i]);
  const kth = quickselectDescending(values, k - 1);
  let numAbove = 0;
  for (let i = 0; i < logits.length; i++) if (keep[i] && logits[i] > kth) numAbove++;
  let numTiesAllowed = k - numAbove;
  for (let i = 0; i < logits.length; i++) {
    if (!keep[i] || logits[i] > kth) continue;
    if (logits[i] === kth && numTiesAllowed > 0) numTiesAllowed--;
    else keep[i] = 0;
  }
}

function quickselectDescending(values: number[], index: number): number {
  let lo = 0;
  let hi = values.length - 1;
  while (lo < hi) {
    const pivot = values[(lo + hi) >> 1];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (values[i] > pivot) i++;
      while (values[j] < pivot) j--;
      if (i <= j) {
        [values[i], values[j]] = [values[j], values[i]];
        i++;
        j--;
      }
    }
    if (index <= j) hi = j;
    else if (index >= i) lo = i;
    else return values[index];
  }
  return values[index];
}

const NUM_BUCKETS = 4096;
const BUCKETS_PER_OCTAVE = 64;

/**
 * Keeps the smallest set of most likely kept tokens whose mass reaches topP (ties broken by
 * token id). Tokens are bucketed by log2 of their weight, so only the one bucket where the
 * mass crosses topP is sorted.
 */
function keepNucleus(logits: Float32Array | Float64Array, weights: Float32Array | Float64Array, keep: Uint8Array, topP: number, maxWeight: number): void {
  const bucketOf = (w: number) => Math.min(NUM_BUCKETS - 1, Math.floor(-Math.log2(w / maxWeight) * BUCKETS_PER_OCTAVE));
  const bucketMass = new Float64Array(NUM_BUCKETS);
  let total = 0;
  for (let i = 0; i < weights.length; i++) {
    if (!keep[i]) continue;
    bucketMass[bucketOf(weights[i])] += weights[i];
    total += weights[i];
  }
  const target = topP * total;
  let mass = 0;
  let crossing = 0;
  while (crossing < NUM_BUCKETS - 1 && mass + bucketMass[crossing] < target) mass += bucketMass[crossing++];
  const inCrossing: number[] = [];
  for (let i = 0; i < weights.length; i++) {
    if (!keep[i]) continue;
    const b = bucketOf(weights[i]);
    if (b > crossing) keep[i] = 0;
    else if (b === crossing) inCrossing.push(i);
  }
  inCrossing.sort((a, b) => logits[b] - logits[a] || a - b);
  let cut = inCrossing.length;
  for (let j = 0; j < inCrossing.length; j++) {
    mass += weights[inCrossing[j]];
    if (mass >= target) {
      cut = j + 1;
      break;
    }
  }
  for (let j = cut; j < inCrossing.length; j++) keep[inCrossing[j]] = 0;
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
