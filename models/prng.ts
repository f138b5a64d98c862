/**
 * A small seeded pseudo-random generator (mulberry32) with Box–Muller normals, for synthetic
 * checkpoints and tests that must produce the same bytes on every machine.
 *
 * NOTE: the uniform stream is pure 32-bit integer arithmetic. Normals also use Math.log (sqrt is
 * exact by IEEE 754); V8 implements log with its own port of fdlibm rather than the platform
 * libm, so under Node the bits are the same on every CPU and OS.
 */
export class Prng {
  private state: number;
  // NOTE: a flag rather than `number | null`, so V8 keeps `spare` an unboxed double.
  private spare = 0;
  private hasSpare = false;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1), with 32 random bits. */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Standard normal: mean 0, standard deviation 1. */
  normal(): number {
    if (this.hasSpare) {
      this.hasSpare = false;
      return this.spare;
    }
    // Marsaglia's polar form of Box–Muller: a point uniform in the unit disc, no sin or cos.
    let u: number, v: number, radiusSquared: number;
    do {
      u = 2 * this.next() - 1;
      v = 2 * this.next() - 1;
      radiusSquared = u * u + v * v;
    } while (radiusSquared >= 1 || radiusSquared === 0);
    const scale = Math.sqrt((-2 * Math.log(radiusSquared)) / radiusSquared);
    this.spare = v * scale;
    this.hasSpare = true;
    return u * scale;
  }
}

/** `n` values drawn from Normal(mean, std). */
export function fillNormal(prng: Prng, n: number, std: number, mean = 0): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = mean + std * prng.normal();
  return out;
}

/** A 32-bit seed derived from a base seed and a name (FNV-1a), so streams don't depend on order. */
export function deriveSeed(seed: number, name: string): number {
  let hash = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return hash;
}
