/**
 * The scheduler on a real block pool with tiny blocks: budgets, chunked prefill,
 * first-come-first-served admission, prefix hits and preemption, asserted by block id.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { KvCacheManager } from "../../engine/kv-cache/kv-cache-manager.ts";
import { HIGHER_TIER_WINDOW_MS, Scheduler, type SchedulerLimits, type SchedulerOutput } from "../../engine/core/scheduler.ts";
import type { Sequence } from "../../engine/core/sequence.ts";
import { BLOCK_SIZE, byWholeContext, completeStep, expectedGreedy, makeKv, makeSequence, tokens } from "../helpers/core-fakes.ts";

function makeScheduler(numBlocks: number, limits: Partial<SchedulerLimits> = {}) {
  const { pool, kv } = makeKv(numBlocks);
  const scheduler = new Scheduler(kv, { maxNumSeqs: 8, maxNumBatchedTokens: 16, ...limits });
  /** One step: schedule, then what EngineCore.update does; checks the pool's integrity. */
  const step = (nowMs?: number): SchedulerOutput => {
    const output = scheduler.schedule(nowMs);
    completeStep(scheduler, kv, output.scheduled, byWholeContext);
    pool.checkIntegrity();
    return output;
  };
  return { pool, kv, scheduler, step };
}

/** Each scheduled sequence's grant, by request id. */
const grants = (output: SchedulerOutput) => Object.fromEntries(output.scheduled.map(({ seq, numNewTokens }) => [seq.requestId, numNewTokens]));

function runToCompletion(scheduler: Scheduler, step: () => SchedulerOutput, maxSteps = 500): void {
  for (let i = 0; scheduler.hasWork; i++) {
    if (i >= maxSteps) throw new Error(`still busy after ${maxSteps} steps`);
    step();
  }
}

describe("Scheduler: budgets", () => {
  it("spends at most maxNumBatchedTokens per step, chunking the prefill that doesn't fit", () => {
    const { scheduler, step } = makeScheduler(32, { maxNumBatchedTokens: 8 });
    scheduler.add(makeSequence({ requestId: "a", prompt: tokens(5), maxTokens: 3 }));
    scheduler.add(makeSequence({ requestId: "b", prompt: tokens(5, 10), maxTokens: 3 }));
    expect(grants(step())).toEqual({ a: 5, b: 3 });
    expect(grants(step())).toEqual({ a: 1, b: 2 });
    expect(grants(step())).toEqual({ a: 1, b: 1 });
  });

  it("runs at most maxNumSeqs sequences; the rest wait until one finishes", () => {
    const { scheduler, step } = makeScheduler(32, { maxNumSeqs: 2 });
    for (const id of ["a", "b", "c"]) scheduler.add(makeSequence({ requestId: id, prompt: tokens(3), maxTokens: id === "a" ? 2 : 5 }));
    expect(grants(step())).toEqual({ a: 3, b: 3 });
    expect(scheduler.waiting.map((s) => s.requestId)).toEqual(["c"]);
    expect(grants(step())).toEqual({ a: 1, b: 1 }); // a finishes here
    expect(grants(step())).toEqual({ b: 1, c: 3 });
    expect(scheduler.running.length).toBe(2);
  });
});

describe("Scheduler: chunked prefill and continuous batching", () => {
  it("splits a long prompt across steps while running sequences keep decoding one token a step", () => {
    const { scheduler, step } = makeScheduler(32, { maxNumBatchedTokens: 6 });
    scheduler.add(makeSequence({ requestId: "a", prompt: tokens(2), maxTokens: 10 }));
    scheduler.add(makeSequence({ requestId: "b", prompt: tokens(2, 5), maxTokens: 10 }));
    expect(grants(step())).toEqual({ a: 2, b: 2 });
    const long = makeSequence({ requestId: "long", prompt: tokens(20, 3), maxTokens: 2 });
    scheduler.add(long);
    for (let chunk = 1; chunk <= 5; chunk++) {
      expect(grants(step())).toEqual({ a: 1, b: 1, long: 4 });
      expect(long.numComputedTokens).toBe(4 * chunk);
      expect(long.outputTokenIds.length).toBe(chunk === 5 ? 1 : 0);
    }
    expect(grants(step())).toEqual({ a: 1, b: 1, long: 1 });
  });

  it("admits a new request into the running batch at the next step", () => {
    const { scheduler, step } = makeScheduler(32);
    scheduler.add(makeSequence({ requestId: "a", prompt: tokens(3), maxTokens: 10 }));
    expect(grants(step())).toEqual({ a: 3 });
    expect(grants(step())).toEqual({ a: 1 });
    scheduler.add(makeSequence({ requestId: "b", prompt: tokens(5, 7), maxTokens: 10 }));
    const output = step();
    expect(grants(output)).toEqual({ a: 1, b: 5 });
    expect(output.scheduled.map((s) => s.seq.requestId)).toEqual(["a", "b"]);
  });

  it("admits waiting requests first come, first served", () => {
    const { scheduler, step } = makeScheduler(32, { maxNumSeqs: 1 });
    const order: string[] = [];
    for (const id of ["a", "b", "c", "d"]) scheduler.add(makeSequence({ requestId: id, prompt: tokens(2), maxTokens: 1 }));
    runToCompletion(scheduler, () => {
      const output = step();
      order.push(...output.scheduled.map((s) => s.seq.requestId));
      return output;
    });
    expect(order).toEqual(["a", "b", "c", "d"]);
  });

  it("doesn't let a small request overtake a waiting one that doesn't fit yet", () => {
    const { scheduler, step } = makeScheduler(6); // 5 usable blocks
    scheduler.add(makeSequence({ requestId: "a", prompt: tokens(8), maxTokens: 4 }));
    expect(grants(step())).toEqual({ a: 8 });
    scheduler.add(makeSequence({ requestId: "big", prompt: tokens(12, 9), maxTokens: 1 }));
    scheduler.add(makeSequence({ requestId: "small", prompt: tokens(2, 20), maxTokens: 1 }));
    expect(grants(step())).toEqual({ a: 1 });
    expect(scheduler.waiting.map((s) => s.requestId)).toEqual(["big", "small"]);
    runToCompletion(scheduler, step);
  });
});

describe("Scheduler: prefix caching", () => {
  function finishFirst(scheduler: Scheduler, step: () => SchedulerOutput, prompt: number[]): Sequence {
    const first = makeSequence({ requestId: "first", prompt, maxTokens: 1 });
    scheduler.add(first);
    step();
    expect(first.status).toBe("finished");
    return first;
  }

  it("gives a sequence sharing two full blocks with a finished one exactly those blocks", () => {
    const { scheduler, step, pool } = makeScheduler(16);
    const prompt = tokens(10);
    finishFirst(scheduler, step, prompt);
    expect(pool.freeBlockIds().slice(-3)).toEqual([3, 2, 1]);

    const second = makeSequence({ requestId: "second", prompt: [...prompt.slice(0, 8), 25, 26, 27] });
    scheduler.add(second);
    const output = scheduler.schedule();
    expect(grants(output)).toEqual({ second: 3 });
    expect(second.blockIds).toEqual([1, 2, 4]);
    expect(second.numCachedTokens).toBe(8);
    expect(second.numComputedTokens).toBe(8);
    expect(pool.refCountOf(1)).toBe(1);
    pool.checkIntegrity();
  });

  it("always recomputes the last prompt token, even when every block of the prompt is cached", () => {
    const { scheduler, step } = makeScheduler(16);
    const prompt = tokens(12);
    finishFirst(scheduler, step, prompt);

    const same = makeSequence({ requestId: "same", prompt });
    scheduler.add(same);
    const output = scheduler.schedule();
    expect(same.numCachedTokens).toBe(8);
    expect(grants(output)).toEqual({ same: 4 });
    // Block 3 holds the same tokens, but a new block takes the recomputed ones.
    expect(same.blockIds).toEqual([1, 2, 4]);
  });

  it("recomputes a prompt of one full block, since its last token's logits are needed", () => {
    const { scheduler, step } = makeScheduler(16);
    finishFirst(scheduler, step, tokens(4));
    const same = makeSequence({ requestId: "same", prompt: tokens(4) });
    scheduler.add(same);
    expect(grants(scheduler.schedule())).toEqual({ same: 4 });
    expect(same.numCachedTokens).toBe(0);
  });

  it("doesn't hit on a block whose parent differs, even with the same tokens", () => {
    const { scheduler, step } = makeScheduler(16);
    finishFirst(scheduler, step, [...tokens(4, 10), ...tokens(4), 9]);
    const shifted = makeSequence({ requestId: "shifted", prompt: [...tokens(4), ...tokens(4, 10), 9] });
    scheduler.add(shifted);
    expect(grants(scheduler.schedule())).toEqual({ shifted: 9 });
    expect(shifted.numCachedTokens).toBe(0);
  });
});

describe("Scheduler: preemption", () => {
  it("preempts the newest running sequence when blocks run out, and resumes it later", () => {
    const { scheduler, step, pool } = makeScheduler(5); // 4 usable blocks of 4 tokens
    const a = makeSequence({ requestId: "a", prompt: tokens(7), maxTokens: 4 });
    const b = makeSequence({ requestId: "b", prompt: tokens(7, 10), maxTokens: 6 });
    scheduler.add(a);
    scheduler.add(b);
    expect(grants(step())).toEqual({ a: 7, b: 7 });
    expect([a.blockIds, b.blockIds]).toEqual([[1, 2], [3, 4]]);
    expect(grants(step())).toEqual({ a: 1, b: 1 });

    // Both need a third block; there is none. b is newer, so b goes.
    const output = step();
    expect(grants(output)).toEqual({ a: 1 });
    expect(output.preempted).toEqual([b]);
    expect(b.status).toBe("waiting");
    expect(b.numComputedTokens).toBe(0);
    expect(b.blockIds).toEqual([]);
    expect(b.outputTokenIds.length).toBe(2);
    expect(scheduler.waiting[0]).toBe(b);
    expect(scheduler.running).toEqual([a]);
    // (Scheduler kept its own count too; the step output's `preempted`, asserted above, is the one source.)
    expect(b.numPreemptions).toBe(1);
    expect(a.blockIds).toEqual([1, 2, 4]); // b's tail block, freed first, is taken first
    expect(pool.freeBlockIds()).toEqual([3]);

    // b can't come back while a holds the pool; a finishes, then b resumes on its own cached first block.
    expect(grants(step())).toEqual({ a: 1 });
    expect(a.status).toBe("finished");
    const resumed = step();
    expect(grants(resumed)).toEqual({ b: 5 });
    expect(b.blockIds).toEqual([3, 4, 2]);
    expect(b.numCachedTokens).toBe(0); // counted at first admission only
    runToCompletion(scheduler, step);
    expect(b.status).toBe("finished");
    expect(b.outputTokenIds).toEqual(expectedGreedy(tokens(7, 10), 6, byWholeContext));
    expect(a.outputTokenIds).toEqual(expectedGreedy(tokens(7), 4, byWholeContext));
    expect(pool.numFreeBlocks).toBe(pool.numUsableBlocks);
  });

  it("puts several preempted sequences back in front of the queue, oldest first", () => {
    const { scheduler, step } = makeScheduler(5, { maxNumBatchedTokens: 32 });
    const seqs = ["a", "b", "c", "d"].map((id, i) => makeSequence({ requestId: id, prompt: tokens(4, i * 5), maxTokens: 5 }));
    seqs.forEach((seq) => scheduler.add(seq));
    expect(grants(step())).toEqual({ a: 4, b: 4, c: 4, d: 4 });
    const late = makeSequence({ requestId: "late", prompt: tokens(2), maxTokens: 1 });
    scheduler.add(late);
    const output = step();
    expect(grants(output)).toEqual({ a: 1, b: 1 });
    expect(output.preempted.map((s) => s.requestId)).toEqual(["d", "c"]);
    expect(scheduler.waiting.map((s) => s.requestId)).toEqual(["c", "d", "late"]);
    runToCompletion(scheduler, step);
    for (const seq of seqs) expect(seq.outputTokenIds).toEqual(expectedGreedy(seq.promptTokenIds, 5, byWholeContext));
  });

  it("preempts a sequence that can't grow even when it is the only one running", () => {
    const { scheduler, step, pool } = makeScheduler(3); // 2 usable blocks
    const a = makeSequence({ requestId: "a", prompt: tokens(4), maxTokens: 4 });
    scheduler.add(a);
    step();
    // Something else holds a block (as a shared prefix would), so a can't take a second one.
    const [held] = pool.allocate(1)!;
    const output = step();
    expect(output.preempted).toEqual([a]);
    expect(output.scheduled).toEqual([]);
    expect(step().scheduled).toEqual([]); // its cached block plus a new one still don't fit
    pool.free([held]);
    runToCompletion(scheduler, step);
    expect(a.outputTokenIds).toEqual(expectedGreedy(tokens(4), 4, byWholeContext));
  });
});

interface Workload {
  numBlocks: number;
  limits: SchedulerLimits;
  requests: { prompt: number[]; maxTokens: number; arrivalStep: number; priority: Sequence["priority"] }[];
}

const workload: fc.Arbitrary<Workload> = fc
  .record({
    numBlocks: fc.integer({ min: 3, max: 10 }),
    maxNumSeqs: fc.integer({ min: 1, max: 4 }),
    maxNumBatchedTokens: fc.integer({ min: 1, max: 12 }),
    batchStepSeqs: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
    requests: fc.array(
      fc.record({
        // A two-letter alphabet, so prompts often share cached prefixes.
        prompt: fc.array(fc.integer({ min: 0, max: 1 }), { minLength: 1, maxLength: 36 }),
        maxTokens: fc.integer({ min: 1, max: 10 }),
        arrivalStep: fc.integer({ min: 0, max: 6 }),
        priority: fc.constantFrom("interactive", "standard", "batch"),
      }),
      { minLength: 1, maxLength: 6 },
    ),
  })
  .map(({ numBlocks, maxNumSeqs, maxNumBatchedTokens, batchStepSeqs, requests }) => {
    const capacity = (numBlocks - 1) * BLOCK_SIZE;
    return {
      numBlocks,
      limits: { maxNumSeqs, maxNumBatchedTokens, batchStepSeqs },
      // Only requests that fit in the pool alone (as EngineCore's validation ensures).
      requests: requests.map((r) => {
        const prompt = r.prompt.slice(0, capacity - 1);
        return { ...r, prompt, maxTokens: Math.min(r.maxTokens, capacity - prompt.length) };
      }),
    };
  });

function checkStep(kv: KvCacheManager, scheduler: Scheduler, limits: SchedulerLimits, output: SchedulerOutput, before: Map<Sequence, number>): void {
  const total = output.scheduled.reduce((sum, s) => sum + s.numNewTokens, 0);
  expect(total).toBeLessThanOrEqual(limits.maxNumBatchedTokens);
  expect(output.scheduled.length).toBeLessThanOrEqual(limits.maxNumSeqs);
  expect(scheduler.running.length).toBeLessThanOrEqual(limits.maxNumSeqs);
  for (const { seq, numNewTokens } of output.scheduled) {
    expect(seq.status).toBe("running");
    expect(numNewTokens).toBeGreaterThan(0);
    expect(numNewTokens).toBeLessThanOrEqual(seq.numUncomputedTokens);
    expect(seq.blockIds.length * BLOCK_SIZE).toBeGreaterThanOrEqual(seq.numComputedTokens + numNewTokens);
    if (before.get(seq) === 1) expect(numNewTokens).toBe(1);
  }
  const holders = new Map<number, number>();
  for (const seq of scheduler.running) for (const id of seq.blockIds) holders.set(id, (holders.get(id) ?? 0) + 1);
  for (const seq of scheduler.waiting) expect(seq.blockIds).toEqual([]);
  for (let id = 1; id < kv.pool.numBlocks; id++) expect(kv.pool.refCountOf(id)).toBe(holders.get(id) ?? 0);
  kv.pool.checkIntegrity();
}

describe("Scheduler under random workloads", () => {
  it("respects its limits, keeps the pool consistent and finishes every request that fits in the pool alone", () => {
    fc.assert(
      fc.property(workload, ({ numBlocks, limits, requests }) => {
        const { kv, pool, scheduler } = makeScheduler(numBlocks, limits);
        const seqs = requests.map((r) => Object.assign(makeSequence({ prompt: r.prompt, maxTokens: r.maxTokens }), { priority: r.priority }));
        for (let stepIndex = 0; stepIndex < 2000; stepIndex++) {
          seqs.forEach((seq, i) => requests[i].arrivalStep === stepIndex && scheduler.add(seq));
          if (!scheduler.hasWork && stepIndex > 6) break;
          if (!scheduler.hasWork) continue;
          const before = new Map(scheduler.running.map((seq) => [seq, seq.numUncomputedTokens]));
          const output = scheduler.schedule();
          checkStep(kv, scheduler, limits, output, before);
          expect(output.scheduled.length).toBeGreaterThan(0);
          completeStep(scheduler, kv, output.scheduled, byWholeContext);
          pool.checkIntegrity();
        }
        expect(scheduler.hasWork).toBe(false);
        seqs.forEach((seq, i) => {
          expect(seq.status).toBe("finished");
          expect(seq.outputTokenIds).toEqual(expectedGreedy(requests[i].prompt, requests[i].maxTokens, byWholeContext));
        });
        expect(pool.numFreeBlocks).toBe(pool.numUsableBlocks);
      }),
      { numRuns: 300 },
    );
  });
});

describe("Scheduler: priority tiers", () => {
  const withPriority = (seq: Sequence, priority: Sequence["priority"]) => Object.assign(seq, { priority });

  it("admits interactive before standard before batch, first come first served within a tier", () => {
    const { scheduler, step } = makeScheduler(64, { maxNumSeqs: 1 });
    const order: string[] = [];
    const seqs = [
      withPriority(makeSequence({ requestId: "batch-1", maxTokens: 1 }), "batch"),
      withPriority(makeSequence({ requestId: "standard-1", maxTokens: 1 }), "standard"),
      withPriority(makeSequence({ requestId: "interactive-1", maxTokens: 1 }), "interactive"),
      withPriority(makeSequence({ requestId: "standard-2", maxTokens: 1 }), "standard"),
      withPriority(makeSequence({ requestId: "interactive-2", maxTokens: 1 }), "interactive"),
    ];
    for (const seq of seqs) scheduler.add(seq);
    for (let i = 0; i < 20 && scheduler.hasWork; i++) order.push(...step().scheduled.map(({ seq }) => seq.requestId).filter((id) => !order.includes(id)));
    expect(order).toEqual(["interactive-1", "interactive-2", "standard-1", "standard-2", "batch-1"]);
  });

  it("promotes a batch sequence that waited batchMaxWaitMs to standard, so it never starves", () => {
    const { scheduler } = makeScheduler(64, { maxNumSeqs: 1, batchMaxWaitMs: 1000 });
    const old = withPriority(makeSequence({ requestId: "old-batch" }), "batch");
    const later = withPriority(makeSequence({ requestId: "later-standard" }), "standard");
    scheduler.add(old);
    scheduler.add(later);
    expect(grants(scheduler.schedule(old.arrivalMs + 999))).toEqual({ "later-standard": 3 });
    const { scheduler: waited } = makeScheduler(64, { maxNumSeqs: 1, batchMaxWaitMs: 1000 });
    waited.add(old);
    waited.add(withPriority(makeSequence({ requestId: "standard-after-the-wait" }), "standard"));
    // Promoted, it is the oldest standard: first.
    expect(grants(waited.schedule(old.arrivalMs + 1001))).toEqual({ "old-batch": 3 });
  });

  it("preempts the lowest tier first, even when a higher tier is newer", () => {
    const { scheduler, step } = makeScheduler(5); // 4 usable blocks of 4 tokens
    const batch = withPriority(makeSequence({ requestId: "batch", prompt: tokens(7), maxTokens: 6 }), "batch");
    const chat = withPriority(makeSequence({ requestId: "chat", prompt: tokens(7, 10), maxTokens: 4 }), "interactive");
    scheduler.add(batch);
    scheduler.add(chat);
    expect(grants(step())).toEqual({ batch: 7, chat: 7 });
    expect(grants(step())).toEqual({ batch: 1, chat: 1 });
    // Both need a third block; batch is the lower tier, so it goes although chat is newer.
    const output = step();
    expect(output.preempted).toEqual([batch]);
    expect(grants(output)).toEqual({ chat: 1 });
    expect(scheduler.running).toEqual([chat]);
    runToCompletion(scheduler, step);
    expect(chat.outputTokenIds).toEqual(expectedGreedy(tokens(7, 10), 4, byWholeContext));
    expect(batch.outputTokenIds).toEqual(expectedGreedy(tokens(7), 6, byWholeContext));
  });

  it("gives a waiting higher tier the slot of the lowest running one when every slot is taken, never a same-tier one", () => {
    const { scheduler, step } = makeScheduler(64, { maxNumSeqs: 2 });
    const bulk = [1, 2].map((i) => withPriority(makeSequence({ requestId: `bulk-${i}`, prompt: tokens(4, i * 10), maxTokens: 20 }), "batch"));
    for (const seq of bulk) scheduler.add(seq);
    step();
    const same = withPriority(makeSequence({ requestId: "more-bulk", prompt: tokens(4, 50), maxTokens: 2 }), "batch");
    scheduler.add(same);
    expect(step().preempted).toEqual([]);
    const chat = withPriority(makeSequence({ requestId: "chat", prompt: tokens(4, 90), maxTokens: 3 }), "interactive");
    scheduler.add(chat);
    const output = step();
    expect(output.preempted).toEqual([bulk[1]]);
    // The step that starts chat's prompt is chat's alone; the bulk sequence goes on in the next.
    expect(grants(output)).toEqual({ chat: 4 });
    expect(grants(step())).toEqual({ chat: 1, "bulk-1": 1 });
    runToCompletion(scheduler, step);
    expect(chat.outputTokenIds).toEqual(expectedGreedy(tokens(4, 90), 3, byWholeContext));
    for (const [i, seq] of bulk.entries()) expect(seq.outputTokenIds).toEqual(expectedGreedy(tokens(4, (i + 1) * 10), 20, byWholeContext));
  });

  it("with batchStepSeqs, decodes the batch tier in turns while a higher tier is about, and all of it once none has been", () => {
    const { scheduler, step } = makeScheduler(64, { maxNumSeqs: 8, batchStepSeqs: 2 });
    const bulk = [1, 2, 3, 4].map((i) => withPriority(makeSequence({ requestId: `bulk-${i}`, prompt: tokens(3, i * 10), maxTokens: 12 }), "batch"));
    for (const seq of bulk) scheduler.add(seq);
    // No higher tier yet: every batch sequence runs in every step.
    expect(Object.keys(grants(step()))).toHaveLength(4);
    const chat = withPriority(makeSequence({ requestId: "chat", prompt: tokens(3, 90), maxTokens: 6 }), "interactive");
    scheduler.add(chat);
    expect(grants(step())).toEqual({ chat: 3 });
    const turns = [step(), step(), step()].map((output) => Object.keys(grants(output)).sort());
    expect(turns).toEqual([["bulk-1", "bulk-2", "chat"], ["bulk-3", "bulk-4", "chat"], ["bulk-1", "bulk-2", "chat"]]);
    runToCompletion(scheduler, step);
    expect(chat.outputTokenIds).toEqual(expectedGreedy(tokens(3, 90), 6, byWholeContext));
    for (const [i, seq] of bulk.entries()) expect(seq.outputTokenIds).toEqual(expectedGreedy(tokens(3, (i + 1) * 10), 12, byWholeContext));
    // A chat request long gone: the cap no longer applies.
    const { scheduler: quiet, step: quietStep } = makeScheduler(64, { maxNumSeqs: 8, batchStepSeqs: 2, batchMaxWaitMs: 10 * HIGHER_TIER_WINDOW_MS });
    for (const i of [1, 2, 3]) quiet.add(withPriority(makeSequence({ requestId: `late-${i}`, prompt: tokens(3, i * 10), maxTokens: 4 }), "batch"));
    quiet.add(withPriority(makeSequence({ requestId: "old-chat", prompt: tokens(3, 70), maxTokens: 1 }), "interactive"));
    const t0 = performance.now();
    expect(Object.keys(grants(quietStep(t0))).sort()).toEqual(["late-1", "late-2", "old-chat"]);
    expect(Object.keys(grants(quietStep(t0 + HIGHER_TIER_WINDOW_MS + 10))).sort()).toEqual(["late-1", "late-2", "late-3"]);
  });

  it("admits a waiting higher tier when blocks are short by preempting the lowest running one", () => {
    const { scheduler, step } = makeScheduler(5); // 4 usable blocks of 4 tokens
    const batch = withPriority(makeSequence({ requestId: "batch", prompt: tokens(12), maxTokens: 4 }), "batch");
    scheduler.add(batch);
    expect(grants(step())).toEqual({ batch: 12 });
    expect(grants(step())).toEqual({ batch: 1 }); // its 13th token takes the last free block
    const chat = withPriority(makeSequence({ requestId: "chat", prompt: tokens(7, 10), maxTokens: 2 }), "interactive");
    scheduler.add(chat);
    const output = step();
    expect(output.preempted).toEqual([batch]);
    expect(grants(output)).toEqual({ chat: 7 });
    runToCompletion(scheduler, step);
    expect(chat.outputTokenIds).toEqual(expectedGreedy(tokens(7, 10), 2, byWholeContext));
    expect(batch.outputTokenIds).toEqual(expectedGreedy(tokens(12), 4, byWholeContext));
  });

  it("takes back the tokens a victim was already granted in the same step", () => {
    const { scheduler, step } = makeScheduler(5); // 4 usable blocks of 4 tokens
    const batch = withPriority(makeSequence({ requestId: "batch", prompt: tokens(5), maxTokens: 6 }), "batch");
    const chat = withPriority(makeSequence({ requestId: "chat", prompt: tokens(8, 10), maxTokens: 4 }), "interactive");
    scheduler.add(batch);
    scheduler.add(chat);
    expect(grants(step())).toEqual({ batch: 5, chat: 8 });
    // batch's next token fits its second block and is granted first; chat's needs a block there is none of: batch goes, grant and all.
    const output = step();
    expect(output.preempted).toEqual([batch]);
    expect(grants(output)).toEqual({ chat: 1 });
    expect(batch.blockIds).toEqual([]);
    runToCompletion(scheduler, step);
    expect(chat.outputTokenIds).toEqual(expectedGreedy(tokens(8, 10), 4, byWholeContext));
    expect(batch.outputTokenIds).toEqual(expectedGreedy(tokens(5), 6, byWholeContext));
  });
});
