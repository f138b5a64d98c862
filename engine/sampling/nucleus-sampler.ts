/**
 * Top-p (nucleus) sampling from a softmax row in three linear passes, without sorting the
 * vocabulary: tokens are bucketed by the high bits of their float32 probability (which order
 * positive floats as their values do), the bucket where the mass crosses top_p is the only
 * one sorted, and the draw walks the survivors.
 *
 * NOTE: the general path (keptMask) bucketed by Math.log2 in Float64 and cost ~13 ms a row of
 * 151,936; this costs well under 1 ms, which is what makes temperature + top_p serve at speed.
 */
import type { Prng } from "../../models/prng.ts";

/** Sign, exponent and the top 5 mantissa bits: 2^14 buckets, 32 per octave. */
const SHIFT = 18;
const NUM_BUCKETS = 1 << (32 - SHIFT);
const bucketMass = new Float64Array(NUM_BUCKETS);

export interface Nucleus {
  /** Tokens in buckets above this one are kept whole. */
  bucket: number;
  /** Of the crossing bucket, the tokens kept. */
  keptInBucket: Set<number>;
  mass: number;
}

/** The smallest set of most likely tokens whose mass reaches topP (ties: lower id first). */
export function nucleusOf(probs: Float32Array, topP: number): Nucleus {
  const bits = new Uint32Array(probs.buffer, probs.byteOffset, probs.length);
  bucketMass.fill(0);
  let total = 0;
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i];
    if (p > 0) {
      bucketMass[bits[i] >>> SHIFT] += p;
      total += p;
    }
  }
  const target = topP * total;
  let mass = 0;
  let bucket = NUM_BUCKETS - 1;
  while (bucket > 0 && mass + bucketMass[bucket] < target) mass += bucketMass[bucket--];
  const crossing: number[] = [];
  for (let i = 0; i < probs.length; i++) if (probs[i] > 0 && bits[i] >>> SHIFT === bucket) crossing.push(i);
  crossing.sort((a, b) => probs[b] - probs[a] || a - b);
  const keptInBucket = new Set<number>();
  for (const id of crossing) {
    keptInBucket.add(id);
    mass += probs[id];
    if (mass >= target) break;
  }
  return { bucket, keptInBucket, mass };
}

export function sampleNucleus(probs: Float32Array, topP: number, rng: Prng): number {
  const { bucket, keptInBucket, mass } = nucleusOf(probs, topP);
  const bits = new Uint32Array(probs.buffer, probs.byteOffset, probs.length);
  let u = rng.next() * mass;
  let last = -1;
  for (let i = 0; i < probs.length; i++) {
    const b = bits[i] >>> SHIFT;
    if (probs[i] <= 0 || b < bucket || (b === bucket && !keptInBucket.has(i))) continue;
    last = i;
    u -= probs[i];
    if (u <= 0) return i;
  }
  return last;
}

/** The kept tokens, for tests. */
export function nucleusKept(probs: Float32Array, topP: number): number[] {
  const { bucket, keptInBucket } = nucleusOf(probs, topP);
  const bits = new Uint32Array(probs.buffer, probs.byteOffset, probs.length);
  const kept: number[] = [];
  for (let i = 0; i < probs.length; i++) {
    const b = bits[i] >>> SHIFT;
    if (probs[i] > 0 && (b > bucket || (b === bucket && keptInBucket.has(i)))) kept.push(i);
  }
  return kept;
}
