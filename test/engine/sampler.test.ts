/**
 * The sampler against its definitions: greedy is argmax, logprobs are the raw
 * log-softmax, top-k/top-p/min-p exclude what they should (checked by seeded draws),
 * and penalties and logit bias move the choice as OpenAI and vLLM define them.
 */
import { describe, expect, it } from "vitest";
import type { SamplingParams } from "../../engine/common/request.ts";
import fc from "fast-check";
import { GREEDY } from "../../engine/common/request.ts";
import { rowOf, sequenceRowsFromFull } from "../../engine/runner/step-rows.ts";
import {
  type TokenHistory, keptDistribution, keptDistributionFromProbs, keptDistributionFromTop, logSumExpOf, logitsNeedOf, sampleFromProbs,
  sampleRow, sampleToken,
} from "../../engine/sampling/sampler.ts";

/**
 * Top-p the obvious way, as an independent reference: sort every token by probability (ties:
 * lower id), keep the shortest prefix whose mass reaches top_p.
 */
function referenceTopP(probs: Float32Array, topP: number): number[] {
  const order = [...probs.keys()].filter((i) => probs[i] > 0).sort((a, b) => probs[b] - probs[a] || a - b);
  const total = order.reduce((sum, i) => sum + probs[i], 0);
  const kept: number[] = [];
  let mass = 0;
  for (const i of order) {
    kept.push(i);
    mass += probs[i];
    if (mass >= topP * total) break;
  }
  return kept.sort((a, b) => a - b);
}
import { Prng } from "../../models/prng.ts";
import { makeSampling } from "../helpers/core-fakes.ts";

const NO_HISTORY: TokenHistory = { promptTokenIds: [], outputTokenIds: [] };

function randomLogits(seed: number, vocab = 50): Float32Array {
  const rng = new Prng(seed);
  return Float32Array.from({ length: vocab }, () => rng.normal() * 3);
}

/** Log-probabilities from the given probabilities (as logits, up to a constant). */
const logitsFor = (probs: number[]) => Float32Array.from(probs, Math.log);

function draw(logits: Float32Array, params: Partial<SamplingParams>, numDraws: number, seed = 1234): number[] {
  const counts = new Array<number>(logits.length).fill(0);
  const rng = new Prng(seed);
  const sampling = makeSampling(params);
  for (let i = 0; i < numDraws; i++) counts[sampleToken(logits, sampling, NO_HISTORY, rng).tokenId]++;
  return counts.map((count) => count / numDraws);
}

const pick = (logits: Float32Array, params: Partial<SamplingParams>, history: TokenHistory = NO_HISTORY) =>
  sampleToken(logits, makeSampling(params), history, new Prng(1)).tokenId;

function argmaxOf(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

describe("greedy and logprobs", () => {
  it("picks the argmax at temperature 0", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const logits = randomLogits(seed);
      expect(pick(logits, { temperature: 0 })).toBe(argmaxOf(logits));
    }
  });

  it("picks the lowest id among tied maxima", () => {
    expect(pick(Float32Array.from([0, 3, 1, 3]), {})).toBe(1);
  });

  it("reports the chosen token's log-softmax of the raw logits", () => {
    const logits = randomLogits(7);
    let sum = 0;
    for (const x of logits) sum += Math.exp(x);
    const result = sampleToken(logits, makeSampling({ logprobs: 0 }), NO_HISTORY, new Prng(1));
    expect(result.logprob).toBeCloseTo(logits[result.tokenId] - Math.log(sum), 5);
    expect(logSumExpOf(logits)).toBeCloseTo(Math.log(sum), 5);
    expect(result.top).toEqual([]);
  });

  it("stays numerically stable for large logits", () => {
    const logits = Float32Array.from([1000, 999, 998]);
    const result = sampleToken(logits, makeSampling({ logprobs: 3 }), NO_HISTORY, new Prng(1));
    const expected = -Math.log(1 + Math.exp(-1) + Math.exp(-2));
    expect(result.logprob).toBeCloseTo(expected, 5);
    expect(result.top.map((t) => t.tokenId)).toEqual([0, 1, 2]);
  });

  it("returns n top logprobs, sorted, which are the n most likely tokens", () => {
    for (const n of [1, 3, 5, 20]) {
      const logits = randomLogits(n);
      const { top } = sampleToken(logits, makeSampling({ logprobs: n }), NO_HISTORY, new Prng(1));
      const lse = logSumExpOf(logits);
      const expectedIds = [...logits.keys()].sort((a, b) => logits[b] - logits[a]).slice(0, n);
      expect(top.map((t) => t.tokenId)).toEqual(expectedIds);
      for (const t of top) expect(t.logprob).toBeCloseTo(logits[t.tokenId] - lse, 5);
      for (let i = 1; i < top.length; i++) expect(top[i].logprob).toBeLessThanOrEqual(top[i - 1].logprob);
    }
  });

  it("reports the model's raw logprobs even when penalties change the choice", () => {
    const logits = Float32Array.from([2, 1.9, 0]);
    const result = sampleToken(logits, makeSampling({ presencePenalty: 1, logprobs: 2 }), { promptTokenIds: [], outputTokenIds: [0] }, new Prng(1));
    expect(result.tokenId).toBe(1);
    expect(result.logprob).toBeCloseTo(1.9 - logSumExpOf(logits), 5);
    expect(result.top.map((t) => t.tokenId)).toEqual([0, 1]);
  });
});

describe("temperature sampling", () => {
  it("top_k = 1 equals greedy at any temperature", () => {
    for (const temperature of [0.1, 0.7, 1, 2, 50]) {
      for (let seed = 1; seed <= 10; seed++) {
        const logits = randomLogits(seed);
        expect(pick(logits, { temperature, topK: 1 })).toBe(argmaxOf(logits));
      }
    }
  });

  it("samples in proportion to softmax(logits / temperature)", () => {
    const logits = logitsFor([0.5, 0.3, 0.2]);
    const freq = draw(logits, { temperature: 1 }, 20_000);
    expect(freq[0]).toBeCloseTo(0.5, 1);
    expect(freq[1]).toBeCloseTo(0.3, 1);
    expect(freq[2]).toBeCloseTo(0.2, 1);
    // Temperature 2 flattens: p ∝ sqrt(p).
    const flat = draw(logits, { temperature: 2 }, 20_000);
    const z = Math.sqrt(0.5) + Math.sqrt(0.3) + Math.sqrt(0.2);
    expect(flat[0]).toBeCloseTo(Math.sqrt(0.5) / z, 1);
    expect(flat[2]).toBeCloseTo(Math.sqrt(0.2) / z, 1);
  });

  it("top_k keeps only the k most likely tokens", () => {
    const freq = draw(logitsFor([0.4, 0.3, 0.2, 0.1]), { temperature: 1, topK: 2 }, 10_000);
    expect(freq[2]).toBe(0);
    expect(freq[3]).toBe(0);
    expect(freq[0]).toBeCloseTo(0.4 / 0.7, 1);
  });

  it("min_p drops tokens below min_p times the top probability", () => {
    // Top probability 0.5: min_p 0.2 sets the floor at 0.1, which drops token 3 (0.05) only.
    const freq = draw(logitsFor([0.5, 0.3, 0.15, 0.05]), { temperature: 1, minP: 0.2 }, 20_000);
    expect(freq[3]).toBe(0);
    expect(freq[2]).toBeGreaterThan(0.1);
    expect(freq[0]).toBeCloseTo(0.5 / 0.95, 1);
    const without = draw(logitsFor([0.5, 0.3, 0.15, 0.05]), { temperature: 1 }, 20_000);
    expect(without[3]).toBeGreaterThan(0.03);
  });

  it("top_p keeps the smallest set of most likely tokens whose mass reaches top_p", () => {
    const logits = logitsFor([0.1, 0.5, 0.05, 0.3, 0.05]);
    const freq = draw(logits, { temperature: 1, topP: 0.75 }, 20_000);
    expect(freq[0]).toBe(0);
    expect(freq[2]).toBe(0);
    expect(freq[4]).toBe(0);
    expect(freq[1]).toBeCloseTo(0.5 / 0.8, 1);
    expect(freq[3]).toBeCloseTo(0.3 / 0.8, 1);
    // 0.85 needs the third most likely token too.
    const wider = draw(logits, { temperature: 1, topP: 0.85 }, 20_000);
    expect(wider[0]).toBeGreaterThan(0.05);
    expect(wider[2] + wider[4]).toBe(0);
  });

  it("is reproducible with a seed, and differs across seeds", () => {
    const logits = randomLogits(3, 20);
    const run = (seed: number) => {
      const rng = new Prng(seed);
      return Array.from({ length: 50 }, () => sampleToken(logits, makeSampling({ temperature: 1.5 }), NO_HISTORY, rng).tokenId);
    };
    expect(run(42)).toEqual(run(42));
    expect(run(42)).not.toEqual(run(43));
  });
});

describe("penalties and logit bias", () => {
  const history = (promptTokenIds: number[], outputTokenIds: number[]): TokenHistory => ({ promptTokenIds, outputTokenIds });

  it("presence penalty subtracts once from every token already generated", () => {
    const logits = Float32Array.from([2, 1.9, 0]);
    expect(pick(logits, { presencePenalty: 0.05 }, history([], [0, 0, 0]))).toBe(0);
    expect(pick(logits, { presencePenalty: 0.2 }, history([], [0]))).toBe(1);
    expect(pick(logits, { presencePenalty: 0.2 }, history([], [0, 0, 0]))).toBe(1);
  });

  it("frequency penalty subtracts in proportion to how often a token was generated", () => {
    const logits = Float32Array.from([2, 1.9, 0]);
    expect(pick(logits, { frequencyPenalty: 0.06 }, history([], [0]))).toBe(0); // 2 - 0.06 > 1.9
    expect(pick(logits, { frequencyPenalty: 0.06 }, history([], [0, 0]))).toBe(1); // 2 - 0.12 < 1.9
  });

  it("presence and frequency penalties ignore the prompt (OpenAI: generated tokens only)", () => {
    const logits = Float32Array.from([2, 1.9, 0]);
    expect(pick(logits, { presencePenalty: 1, frequencyPenalty: 1 }, history([0, 0, 0], []))).toBe(0);
  });

  it("a negative presence penalty favours tokens already generated", () => {
    expect(pick(Float32Array.from([2, 1.9]), { presencePenalty: -0.2 }, history([], [1]))).toBe(1);
  });

  it("repetition penalty divides positive logits and multiplies negative ones of prompt and output tokens", () => {
    // Positive: 2 / 1.1 = 1.82 < 1.9.
    expect(pick(Float32Array.from([2, 1.9]), { repetitionPenalty: 1.1 }, history([0], []))).toBe(1);
    expect(pick(Float32Array.from([2, 1.9]), { repetitionPenalty: 1.1 }, history([], [0]))).toBe(1);
    // Negative: -1 × 1.1 = -1.1 < -1.05 (dividing would have raised it to -0.91).
    expect(pick(Float32Array.from([-1, -1.05]), { repetitionPenalty: 1.1 }, history([0], []))).toBe(1);
    // Once per token, however often it was seen: 2 / 1.04 = 1.92 > 1.9.
    expect(pick(Float32Array.from([2, 1.9]), { repetitionPenalty: 1.04 }, history([0, 0, 0], [0, 0]))).toBe(0);
    // A penalty below 1 rewards repeats.
    expect(pick(Float32Array.from([1.9, 2]), { repetitionPenalty: 0.9 }, history([0], []))).toBe(0);
  });

  it("logit bias adds to the logits before the choice, and -100 bans a token", () => {
    const logits = Float32Array.from([2, 1.9, 0]);
    expect(pick(logits, { logitBias: new Map([[2, 2.5]]) })).toBe(2);
    expect(pick(logits, { logitBias: new Map([[0, -100]]) })).toBe(1);
    expect(pick(logits, { logitBias: new Map([[99, 100], [-1, 100]]) })).toBe(0);
    const freq = draw(logitsFor([0.5, 0.3, 0.2]), { temperature: 1, logitBias: new Map([[0, -100]]) }, 5000);
    expect(freq[0]).toBe(0);
  });

  it("doesn't change the caller's logits", () => {
    const logits = Float32Array.from([2, 1.9, 0]);
    pick(logits, { presencePenalty: 1, repetitionPenalty: 1.3, logitBias: new Map([[2, 5]]) }, history([0], [0, 1]));
    expect([...logits]).toEqual([2, Math.fround(1.9), 0]);
  });
});

describe("sampling from the graph's top-N", () => {
  it("keeps exactly the distribution the full-logits path keeps, for any top_k ≤ 20 (property)", () => {
    const params = fc.record({
      temperature: fc.double({ min: 0.05, max: 2, noNaN: true }),
      topK: fc.integer({ min: 2, max: 20 }),
      topP: fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 1, noNaN: true })),
      minP: fc.oneof(fc.constant(0), fc.double({ min: 0, max: 0.5, noNaN: true })),
    });
    const logitsArb = fc.array(fc.float({ min: -8, max: 8, noNaN: true }), { minLength: 40, maxLength: 40 });
    fc.assert(fc.property(logitsArb, params, (values, p) => {
      const logits = Float32Array.from(values);
      const sampling = { ...GREEDY, ...p };
      expect(logitsNeedOf(sampling)).toBe("top");
      const full = keptDistribution(logits, sampling);
      const row = rowOf(sequenceRowsFromFull(logits, 40), 0, 40);
      const fromTop = keptDistributionFromTop(row, sampling);
      expect([...fromTop.keys()].sort((a, b) => a - b)).toEqual([...full.keys()].sort((a, b) => a - b));
      for (const [id, prob] of full) expect(fromTop.get(id)!).toBeCloseTo(prob, 5);
    }), { numRuns: 300, seed: 11 });
  });

  it("draws reproducibly from the top-N with a seed, and only from kept tokens", () => {
    const logits = Float32Array.from({ length: 40 }, (_, i) => Math.sin(i) * 3);
    const row = rowOf(sequenceRowsFromFull(logits, 40), 0, 40);
    const sampling = { ...GREEDY, temperature: 0.7, topK: 5, topP: 0.9 };
    const kept = new Set(keptDistribution(logits, sampling).keys());
    const draw = (seed: number) => {
      const rng = new Prng(seed);
      return Array.from({ length: 50 }, () => sampleRow(row, logitsNeedOf(sampling), sampling, NO_HISTORY, rng).tokenId);
    };
    const first = draw(3);
    expect(draw(3)).toEqual(first);
    for (const id of first) expect(kept.has(id)).toBe(true);
    expect(new Set(first).size).toBeGreaterThan(1);
  });
});

describe("temperature sampling from the graph's softmax(logits / T)", () => {
  it("keeps the distribution the logits path keeps (property)", () => {
    const params = fc.record({
      temperature: fc.double({ min: 0.1, max: 2, noNaN: true }),
      topK: fc.oneof(fc.constant(0), fc.integer({ min: 21, max: 35 })),
      topP: fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 0.999, noNaN: true })),
      minP: fc.oneof(fc.constant(0), fc.double({ min: 0, max: 0.5, noNaN: true })),
    });
    // Distinct logits a tenth apart, so that no two tokens round to the same probability.
    const logitsArb = fc.uniqueArray(fc.integer({ min: -80, max: 80 }), { minLength: 40, maxLength: 40 });
    fc.assert(fc.property(logitsArb, params, (values, p) => {
      const logits = Float32Array.from(values, (v) => v / 10);
      const sampling = { ...GREEDY, ...p };
      expect(logitsNeedOf(sampling)).toBe("probs");
      const row = rowOf(sequenceRowsFromFull(logits, 40, 1 / sampling.temperature), 0, 40);
      const fromLogits = keptDistribution(logits, sampling);
      const fromProbs = keptDistributionFromProbs(row.probs!, sampling);
      // float32 rounds sums and underflows below 1e-45: tokens this unlikely may fall either side of a cut.
      const drawable = (dist: Map<number, number>) => [...dist.keys()].filter((id) => dist.get(id)! > 1e-6);
      expect(drawable(fromProbs)).toEqual(drawable(fromLogits));
      for (const [id, prob] of fromProbs) expect(prob).toBeCloseTo(fromLogits.get(id) ?? 0, 5);
    }), { numRuns: 300, seed: 5 });
  });

  it("says which part of the row each kind of request needs", () => {
    expect(logitsNeedOf(GREEDY)).toBe("top");
    expect(logitsNeedOf({ ...GREEDY, temperature: 0.7, topK: 20 })).toBe("top");
    expect(logitsNeedOf({ ...GREEDY, temperature: 1 })).toBe("probs");
    expect(logitsNeedOf({ ...GREEDY, temperature: 1, logprobs: 2 })).toBe("probs");
    expect(logitsNeedOf({ ...GREEDY, temperature: 0.7, logprobs: 2 })).toBe("logits");
    expect(logitsNeedOf({ ...GREEDY, presencePenalty: 0.5 })).toBe("logits");
  });
});

describe("top-p from a softmax row by float32 buckets", () => {
  it("keeps exactly the tokens a plain sort keeps (property)", () => {
    const probsArb = fc.array(fc.float({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 300 });
    fc.assert(fc.property(probsArb, fc.double({ min: 0.01, max: 0.999, noNaN: true }), (values, topP) => {
      const total = values.reduce((a, b) => a + b, 0);
      fc.pre(total > 0);
      const probs = Float32Array.from(values, (v) => v / total);
      const general = referenceTopP(probs, topP);
      expect([...keptDistributionFromProbs(probs, { ...GREEDY, temperature: 1, topP }).keys()]).toEqual(general);
    }), { numRuns: 500 });
  });

  it("draws only kept tokens, reproducibly", () => {
    const probs = Float32Array.from({ length: 1000 }, (_, i) => Math.exp(-i / 50));
    const total = probs.reduce((a, b) => a + b, 0);
    probs.forEach((p, i) => (probs[i] = p / total));
    const nucleus = { ...GREEDY, temperature: 1, topP: 0.5 };
    const kept = new Set(referenceTopP(probs, 0.5));
    const draw = (seed: number) => {
      const rng = new Prng(seed);
      return Array.from({ length: 200 }, () => sampleFromProbs(probs, nucleus, rng));
    };
    const drawn = draw(9);
    expect(draw(9)).toEqual(drawn);
    for (const id of drawn) expect(kept.has(id)).toBe(true);
    expect(Math.max(...drawn)).toBeGreaterThan(10);
  });
});
