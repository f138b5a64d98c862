/**
 * One row of a step → one token: logits processors (penalties, logit bias), then greedy or
 * temperature sampling with min-p, top-k and top-p, from whichever part of the row the step
 * fetched. Logprobs are the model's own (raw log-softmax).
 */
import type { Prng } from "../../models/prng.ts";
import type { SamplingParams, TokenLogprob } from "../common/request.ts";
import type { LogitsRow } from "../runner/step-rows.ts";
import { TOP_N } from "../runner/step-rows.ts";
import { TokenFilter, drawWeighted, type KeepParams } from "./token-filter.ts";
import { LOGITS_PROCESSORS, processLogits, type TokenHistory } from "./logits-processor.ts";

export type { TokenHistory } from "./logits-processor.ts";

export interface SampleResult {
  tokenId: number;
  logprob: number;
  top: TokenLogprob[];
}

/**
 * What of each row a request's choice needs:
 * - "top": the graph's top-N log-softmax entries (greedy; top-k ≤ N sampling, which is exact:
 *   top-k keeps only the k most likely, and temperature, min-p and top-p only reweigh or drop among them);
 * - "probs": softmax(logits / T) from the graph (other temperature sampling);
 * - "logits": the raw logits (a logits processor changes them first; a sampled token's raw
 *   logprob at T ≠ 1 may lie outside the top-N).
 */
export type LogitsNeed = "top" | "probs" | "logits";

/** @param constrained a grammar masks the next token (that needs the raw logits). */
export function logitsNeedOf(params: SamplingParams, constrained = false): LogitsNeed {
  const history = { promptTokenIds: [], outputTokenIds: [], allowedMask: constrained ? new Int32Array(0) : null };
  if (LOGITS_PROCESSORS.some((p) => p.appliesTo(params, history))) return "logits";
  if (isGreedy(params) || isTopNSampling(params)) return "top";
  return params.logprobs !== undefined && params.temperature !== 1 ? "logits" : "probs";
}

function isGreedy(params: SamplingParams): boolean {
  return params.temperature <= 0 || params.topK === 1;
}

function isTopNSampling(params: SamplingParams): boolean {
  return params.temperature > 0 && params.topK > 1 && params.topK <= TOP_N;
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
    const rank = isGreedy(params) ? 0 : drawFromTop(row, params, rng);
    return { tokenId: row.topIds[rank], logprob: params.logprobs === undefined ? NaN : row.topLogprobs[rank], top };
  }
  if (!row.probs) throw new Error("this request needs probs, but the step did not fetch them");
  const tokenId = sampleFromProbs(row.probs, params, rng);
  // At T = 1 (the only "probs" case with logprobs) the probs are the model's own distribution.
  const rank = row.topIds.indexOf(tokenId);
  const logprob = params.logprobs === undefined ? NaN : rank >= 0 ? row.topLogprobs[rank] : Math.log(row.probs[tokenId]);
  return { tokenId, logprob, top };
}

/** From raw logits. NOTE: logprobs cost a pass of exp over the vocabulary, so they are computed only when asked for (NaN otherwise). */
export function sampleToken(logits: Float32Array, params: SamplingParams, history: TokenHistory, rng: Prng): SampleResult {
  const few = history.allowedMask ? fewAllowed(history.allowedMask, logits.length) : null;
  // NOTE: among a few allowed tokens the mask needs no pass over the vocabulary: only those are looked at.
  const adjusted = processLogits(logits, params, few ? { ...history, allowedMask: null } : history);
  const tokenId = few ? sampleAmong(few, adjusted, params, rng) : isGreedy(params) ? argmax(adjusted) : drawFromLogits(adjusted, params, rng);
  if (params.logprobs === undefined) return { tokenId, logprob: NaN, top: [] };
  const logSumExp = logSumExpOf(logits);
  const top = params.logprobs > 0 ? topLogprobs(logits, logSumExp, params.logprobs) : [];
  return { tokenId, logprob: logits[tokenId] - logSumExp, top };
}

/** Beyond this many allowed tokens, sampling scans the whole (masked) vocabulary instead. */
const FEW_ALLOWED = 4096;

/** The tokens a grammar's mask allows, when they are few (as between a JSON schema's strings); null when many. */
function fewAllowed(mask: Int32Array, vocabSize: number): Int32Array | null {
  const ids: number[] = [];
  for (let word = 0; word < mask.length; word++) {
    let bits = mask[word];
    if (bits === 0) continue;
    if (bits === -1 && ids.length + 32 > FEW_ALLOWED) return null;
    while (bits !== 0) {
      const bit = 31 - Math.clz32(bits & -bits);
      const id = (word << 5) + bit;
      if (id < vocabSize) ids.push(id);
      bits &= bits - 1;
    }
    if (ids.length > FEW_ALLOWED) return null;
  }
  return Int32Array.from(ids);
}

/**
 * Sampling among a few allowed tokens: the same draw as over the masked vocabulary (every
 * other token has weight 0), without passes over all of it.
 */
function sampleAmong(ids: Int32Array, adjusted: Float32Array, params: SamplingParams, rng: Prng): number {
  const values = Float32Array.from(ids, (id) => adjusted[id]);
  if (isGreedy(params)) return ids[argmax(values)];
  const weights = softmaxWeights(values, params.temperature);
  return ids[isFiltered(params) ? new TokenFilter(weights, values, params).draw(rng) : drawWeighted(weights, rng)];
}

/** Temperature sampling from the graph's softmax(logits / T) row. */
export function sampleFromProbs(probs: Float32Array, params: SamplingParams, rng: Prng): number {
  return isFiltered(params) ? new TokenFilter(probs, probs, params).draw(rng) : drawWeighted(probs, rng);
}

function isFiltered(params: KeepParams): boolean {
  return params.minP > 0 || params.topK > 0 || params.topP < 1;
}

function drawFromLogits(logits: Float32Array, params: SamplingParams, rng: Prng): number {
  const weights = softmaxWeights(logits, params.temperature);
  return isFiltered(params) ? new TokenFilter(weights, logits, params).draw(rng) : drawWeighted(weights, rng);
}

/** Draws a rank of the row's top-N. */
function drawFromTop(row: LogitsRow, params: SamplingParams, rng: Prng): number {
  return keptOfTop(row, params).draw(rng);
}

/** The row's top-k of N entries as weights relative to the first (which gets 1), filtered by min-p and top-p. */
function keptOfTop(row: LogitsRow, params: SamplingParams): TokenFilter {
  const ranked = row.topLogprobs.subarray(0, Math.min(params.topK, row.topIds.length));
  const weights = Float32Array.from(ranked, (lp) => Math.exp((lp - ranked[0]) / params.temperature));
  return new TokenFilter(weights, ranked, { ...params, topK: 0 });
}

/** The distribution a sampled draw picks from over the full logits: token id → probability. */
export function keptDistribution(logits: Float32Array, params: SamplingParams): Map<number, number> {
  return new TokenFilter(softmaxWeights(logits, params.temperature), logits, params).probabilities();
}

/** The same from a softmax(logits / T) row. */
export function keptDistributionFromProbs(probs: Float32Array, params: SamplingParams): Map<number, number> {
  return new TokenFilter(probs, probs, params).probabilities();
}

/** The same from the graph's top-N entries of a row: token id → probability. */
export function keptDistributionFromTop(row: LogitsRow, params: SamplingParams): Map<number, number> {
  return new Map([...keptOfTop(row, params).probabilities()].map(([rank, p]) => [row.topIds[rank], p]));
}

export function logSumExpOf(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** exp((logit - max) / T): the most likely token gets weight 1. */
function softmaxWeights(logits: Float32Array, temperature: number): Float32Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const weights = new Float32Array(logits.length);
  const invT = 1 / temperature;
  for (let i = 0; i < logits.length; i++) weights[i] = Math.exp((logits[i] - max) * invT);
  return weights;
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
