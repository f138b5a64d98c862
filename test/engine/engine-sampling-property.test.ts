/**
 * Every mix of sampling options, alone or sharing a step, is served by the real engine
 * thread on the default model: no combination fails a request or stops the engine.
 * (A step once fetched by one rule and sampled by another, and echo with logprobs 0 killed it.)
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_ENGINE_OPTIONS, Engine, type EngineOutput, type EngineRequest, type SamplingParams } from "../../engine/index.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";

const VOCAB = 151936;
const TEXT_VOCAB = 151643;

const sampling: fc.Arbitrary<SamplingParams> = fc.record({
  temperature: fc.oneof(fc.constant(0), fc.constant(1), fc.double({ min: 0.05, max: 2, noNaN: true })),
  topP: fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 1, noNaN: true })),
  topK: fc.oneof(fc.constant(0), fc.constant(-1), fc.integer({ min: 1, max: 40 })),
  minP: fc.oneof(fc.constant(0), fc.double({ min: 0, max: 1, noNaN: true })),
  presencePenalty: fc.oneof(fc.constant(0), fc.double({ min: -2, max: 2, noNaN: true })),
  frequencyPenalty: fc.oneof(fc.constant(0), fc.double({ min: -2, max: 2, noNaN: true })),
  repetitionPenalty: fc.oneof(fc.constant(1), fc.double({ min: 0.5, max: 2, noNaN: true })),
  seed: fc.option(fc.integer({ min: 0, max: 2 ** 31 - 1 }), { nil: undefined }),
  logprobs: fc.option(fc.integer({ min: 0, max: 20 }), { nil: undefined }),
  logitBias: fc.option(
    fc.array(fc.tuple(fc.integer({ min: 0, max: VOCAB - 1 }), fc.double({ min: -100, max: 100, noNaN: true })), { minLength: 1, maxLength: 3 })
      .map((entries) => new Map(entries)),
    { nil: undefined },
  ),
});

const request = fc.record({
  prompt: fc.array(fc.integer({ min: 0, max: TEXT_VOCAB - 1 }), { minLength: 1, maxLength: 40 }),
  maxTokens: fc.integer({ min: 1, max: 5 }),
  n: fc.integer({ min: 1, max: 3 }),
  sampling,
  promptLogprobs: fc.option(fc.integer({ min: 0, max: 5 }), { nil: undefined }),
});

describe("sampling options on the real engine", () => {
  let engine: Engine;
  let numRequests = 0;
  beforeAll(async () => {
    engine = await Engine.start({ ...DEFAULT_ENGINE_OPTIONS, modelDir: ensureDefaultModel(), kvCacheMemoryBytes: 128 * 1024 ** 2, intraOpThreads: 1 });
  });
  afterAll(async () => engine.shutdown());

  it("serves any combination, alone and mixed in one step, with n finishes each and the engine alive", async () => {
    await fc.assert(fc.asyncProperty(fc.array(request, { minLength: 1, maxLength: 4 }), async (specs) => {
      const requests: EngineRequest[] = specs.map((spec) => ({
        requestId: `prop-${numRequests++}`, promptTokenIds: spec.prompt, maxTokens: spec.maxTokens, n: spec.n,
        sampling: spec.sampling, promptLogprobs: spec.promptLogprobs, ignoreEos: true,
      }));
      const results = await Promise.all(requests.map(async (r) => {
        const outputs: EngineOutput[] = [];
        for await (const output of engine.add(r)) outputs.push(output);
        return outputs;
      }));
      results.forEach((outputs, i) => {
        const { n, maxTokens, sampling: params, promptLogprobs } = specs[i];
        expect(outputs.filter((o) => o.finishReason === "length")).toHaveLength(n);
        for (const output of outputs) {
          for (const id of output.newTokenIds) expect(id >= 0 && id < VOCAB).toBe(true);
          if (params.logprobs !== undefined) {
            expect(output.logprobs).toHaveLength(output.newTokenIds.length);
            for (const entry of output.logprobs!) {
              expect(entry.logprob).toBeLessThanOrEqual(0);
              expect(entry.top).toHaveLength(params.logprobs);
            }
          }
        }
        expect(outputs.flatMap((o) => o.newTokenIds)).toHaveLength(n * maxTokens);
        if (promptLogprobs !== undefined) expect(outputs.find((o) => o.promptLogprobs)!.promptLogprobs).toHaveLength(specs[i].prompt.length);
      });
      expect(engine.isAlive).toBe(true);
    }), { numRuns: 60 });
  });
});
