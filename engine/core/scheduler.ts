/**
 * Iteration-level scheduling. One rule, no phases: every step each running sequence's
 * numComputedTokens catches up with its numTokens, within a token budget and a cap on
 * running sequences. Decode is a grant of 1 token; prefill is chunked against what
 * remains of the budget. Waiting sequences are admitted first-come, first-served.
 * When blocks run out, the newest running sequence is preempted and recomputed later.
 */
import type { KvCacheManager } from "../kv-cache/kv-cache-manager.ts";
import type { Sequence } from "./sequence.ts";

export interface SchedulerLimits {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
}

export interface ScheduledSequence {
  seq: Sequence;
  numNewTokens: number;
}

export interface SchedulerOutput {
  scheduled: ScheduledSequence[];
  preempted: Sequence[];
}

export class Scheduler {
  /** Ordered by arrival; preempted sequences go back to the front. */
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];

  constructor(private readonly kv: KvCacheManager, private readonly limits: SchedulerLimits) {}

  add(seq: Sequence): void {
    seq.status = "waiting";
    this.waiting.push(seq);
  }

  /** Queues sequences ahead of everyone waiting: the copies of a request already admitted. */
  addFirst(seqs: Sequence[]): void {
    for (const seq of seqs) seq.status = "waiting";
    this.waiting.unshift(...seqs);
  }

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  schedule(): SchedulerOutput {
    let budget = this.limits.maxNumBatchedTokens;
    const scheduled: ScheduledSequence[] = [];
    const preempted: Sequence[] = [];

    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const seq = this.running[i];
      const numNewTokens = Math.min(seq.numUncomputedTokens, budget);
      if (numNewTokens <= 0) continue;
      while (!this.kv.allocateSlots(seq, numNewTokens)) {
        const victim = this.running.pop()!;
        this.preempt(victim);
        preempted.push(victim);
        if (victim === seq) break;
      }
      if (seq.status !== "running") break;
      scheduled.push({ seq, numNewTokens });
      budget -= numNewTokens;
    }

    // NOTE: after a preemption the pool is short; admitting new work now would only thrash.
    while (preempted.length === 0 && budget > 0 && this.waiting.length > 0 && this.running.length < this.limits.maxNumSeqs) {
      const seq = this.waiting[0];
      // A sequence that already holds blocks (a forked copy) or needs every prompt position's logits skips the cache.
      const cached = seq.numComputedTokens > 0 || seq.promptLogprobs ? { blockIds: [], hashes: [] } : this.kv.findCachedBlocks(seq);
      const numCachedTokens = cached.blockIds.length * this.kv.blockSize;
      const numNewTokens = Math.min(seq.numUncomputedTokens - numCachedTokens, budget);
      if (!this.kv.allocateSlots(seq, numNewTokens, cached)) break;
      this.waiting.shift();
      seq.status = "running";
      seq.numCachedTokens ??= numCachedTokens;
      this.running.push(seq);
      scheduled.push({ seq, numNewTokens });
      budget -= numNewTokens;
    }
    return { scheduled, preempted };
  }

  /** Removes a sequence wherever it is and frees its blocks. */
  finish(seq: Sequence): void {
    seq.status = "finished";
    if (!removeFrom(this.running, seq)) removeFrom(this.waiting, seq);
    this.kv.free(seq);
  }

  private preempt(seq: Sequence): void {
    this.kv.free(seq);
    seq.preempt();
    this.waiting.unshift(seq);
  }
}

function removeFrom(list: Sequence[], seq: Sequence): boolean {
  const at = list.indexOf(seq);
  if (at < 0) return false;
  list.splice(at, 1);
  return true;
}
