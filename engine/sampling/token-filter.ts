/**
 * TokenFilter: the one implementation of min-p, top-k and top-p (applied in vLLM's order), for any row of
 * weights: a full softmax row, the graph's softmax(logits / T), or the graph's top-N entries.
 * Nothing sorts the vocabulary.
 *
 * - min-p keeps weights of at least minP × the largest.
 * - top-k keeps the k highest by `rankBy`, by quickselect. NOTE: ranked by logit where there are
 *   logits, so weights that round equal never reorder tokens (the graph's TopK ranks the same way).
 * - top-p keeps the smallest set of most likely tokens whose mass reaches topP (ties: lower id).
 *   Weights are bucketed by the high bits of their float32 value (which order positive floats as
 *   their values do); only the bucket where the mass crosses topP is sorted. It costs well under
 *   1 ms a row of 151,936, against ~13 ms for Math.log2 buckets in Float64.
 */
import type { Prng } from "../../models/prng.ts";

export interface KeepParams {
  topK: number;
  topP: number;
  minP: number;
}

/** Sign, exponent and the top 5 mantissa bits: 2^14 buckets, 32 per octave. */
const SHIFT = 18;
const NUM_BUCKETS = 1 << (32 - SHIFT);
const bucketMass = new Float64Array(NUM_BUCKETS);

/**
 * The entries of a row of weights that survive min-p, then top-k, then top-p. Each filter is
 * a threshold plus the few entries kept at its boundary, so nothing is allocated per token and
 * top-p alone costs three passes over the row (bucket, crossing, draw).
 */
export class TokenFilter {
  /** min-p: weights below this are dropped. */
  private floor = 0;
  /** top-k: rankBy above kth is kept, and of those equal to it, these. */
  private kth = -Infinity;
  private kTies: Set<number> | null = null;
  /** top-p: buckets above `crossing` are kept, and of the crossing bucket, these. */
  private crossing = 0;
  private crossingKept: Set<number> | null = null;
  private readonly bits: Uint32Array;
  /** The kept weights' sum, once known. */
  private keptMass = NaN;

  constructor(readonly weights: Float32Array, private readonly rankBy: ArrayLike<number>, params: KeepParams) {
    this.bits = new Uint32Array(weights.buffer, weights.byteOffset, weights.length);
    if (params.minP > 0) {
      let maxWeight = 0;
      for (let i = 0; i < weights.length; i++) if (weights[i] > maxWeight) maxWeight = weights[i];
      this.floor = params.minP * maxWeight;
    }
    if (params.topK > 0) this.keepTopK(params.topK);
    if (params.topP < 1) this.keepTopP(params.topP);
  }

  has(i: number): boolean {
    const w = this.weights[i];
    if (!(w > 0) || w < this.floor) return false;
    if (this.kTies !== null) {
      const r = this.rankBy[i];
      if (r < this.kth || (r === this.kth && !this.kTies.has(i))) return false;
    }
    if (this.crossingKept !== null) {
      const b = this.bits[i] >>> SHIFT;
      if (b < this.crossing || (b === this.crossing && !this.crossingKept.has(i))) return false;
    }
    return true;
  }

  /** Draws a kept index in proportion to its weight. */
  draw(rng: Prng): number {
    const { weights } = this;
    let u = rng.next() * this.mass;
    let last = 0;
    if (this.onlyTopP) {
      // NOTE: the common case (top-p alone), with the test inlined: this walk is most of a sampled step's cost.
      const { bits, crossing, crossingKept } = this;
      for (let i = 0; i < weights.length; i++) {
        const b = bits[i] >>> SHIFT;
        if (b < crossing || (b === crossing && !crossingKept!.has(i)) || !(weights[i] > 0)) continue;
        last = i;
        u -= weights[i];
        if (u <= 0) return i;
      }
      return last;
    }
    for (let i = 0; i < weights.length; i++) {
      if (!this.has(i)) continue;
      last = i;
      u -= weights[i];
      if (u <= 0) return i;
    }
    return last;
  }

  private get onlyTopP(): boolean {
    return this.floor === 0 && this.kTies === null && this.crossingKept !== null;
  }

  get mass(): number {
    if (Number.isNaN(this.keptMass)) {
      let mass = 0;
      for (let i = 0; i < this.weights.length; i++) if (this.has(i)) mass += this.weights[i];
      this.keptMass = mass;
    }
    return this.keptMass;
  }

  /** The kept entries with their normalized probabilities: index → probability. */
  probabilities(): Map<number, number> {
    const out = new Map<number, number>();
    for (let i = 0; i < this.weights.length; i++) if (this.has(i)) out.set(i, this.weights[i] / this.mass);
    return out;
  }

  /** Keeps the k highest-ranked entries still kept (ties to the lower index). */
  private keepTopK(k: number): void {
    const values: number[] = [];
    for (let i = 0; i < this.weights.length; i++) if (this.has(i)) values.push(this.rankBy[i]);
    if (k >= values.length) return;
    const kth = quickselectDescending(values, k - 1);
    let numAbove = 0;
    for (const v of values) if (v > kth) numAbove++;
    const ties = new Set<number>();
    for (let i = 0; i < this.weights.length && ties.size < k - numAbove; i++) if (this.rankBy[i] === kth && this.has(i)) ties.add(i);
    this.kth = kth;
    this.kTies = ties;
  }

  private keepTopP(topP: number): void {
    const { weights, bits } = this;
    bucketMass.fill(0);
    let total = 0;
    const unfiltered = this.floor === 0 && this.kTies === null;
    for (let i = 0; i < weights.length; i++) {
      const w = weights[i];
      if (unfiltered ? !(w > 0) : !this.has(i)) continue;
      bucketMass[bits[i] >>> SHIFT] += w;
      total += w;
    }
    const target = topP * total;
    let mass = 0;
    let crossing = NUM_BUCKETS - 1;
    while (crossing > 0 && mass + bucketMass[crossing] < target) mass += bucketMass[crossing--];
    const inCrossing: number[] = [];
    for (let i = 0; i < weights.length; i++) if (bits[i] >>> SHIFT === crossing && (unfiltered ? weights[i] > 0 : this.has(i))) inCrossing.push(i);
    inCrossing.sort((a, b) => weights[b] - weights[a] || this.rankBy[b] - this.rankBy[a] || a - b);
    const kept = new Set<number>();
    for (const i of inCrossing) {
      kept.add(i);
      mass += weights[i];
      if (mass >= target) break;
    }
    this.crossing = crossing;
    this.crossingKept = kept;
    this.keptMass = mass;
  }
}

/** Draws an index in proportion to its positive weight (no filters). */
export function drawWeighted(weights: Float32Array, rng: Prng): number {
  let mass = 0;
  for (let i = 0; i < weights.length; i++) if (weights[i] > 0) mass += weights[i];
  let u = rng.next() * mass;
  let last = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i] <= 0) continue;
    last = i;
    u -= weights[i];
    if (u <= 0) return i;
  }
  return last;
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
