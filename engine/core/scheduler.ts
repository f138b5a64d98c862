/**
 * Iteration-level scheduling. One rule, no phases: every step each running sequence's
 * numComputedTokens catches up with its numTokens, within a token budget and a cap on
 * running sequences. Decode is a grant of 1 token; prefill is chunked against what
 * remains of the budget. Waiting sequences are admitted by priority tier (interactive,
 * standard, batch), first-come, first-served within a tier; a batch sequence that has waited
 * batchMaxWaitMs counts as standard, so it never starves. When blocks run out, the newest
 * running sequence of the lowest tier is preempted and recomputed later.
 */
import type { KvCacheManager } from "../kv-cache/kv-cache-manager.ts";
import type { Priority } from "./request.ts";
import type { Sequence } from "./sequence.ts";

export interface SchedulerLimits {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  /** How long a batch sequence may wait before it is admitted as standard (default 30 s). */
  batchMaxWaitMs?: number;
}

const RANK: Record<Priority, number> = { interactive: 0, standard: 1, batch: 2 };
export const DEFAULT_BATCH_MAX_WAIT_MS = 30_000;

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

  schedule(nowMs = performance.now()): SchedulerOutput {
    let budget = this.limits.maxNumBatchedTokens;
    const scheduled: ScheduledSequence[] = [];
    const preempted: Sequence[] = [];

    for (const seq of [...this.running]) {
      if (budget <= 0) break;
      if (seq.status !== "running") continue;
      const numNewTokens = Math.min(seq.numUncomputedTokens, budget);
      if (numNewTokens <= 0) continue;
      while (!this.kv.allocateSlots(seq, numNewTokens)) {
        const victim = this.victim();
        // A victim already granted tokens this step gives them back.
        const granted = scheduled.findIndex((s) => s.seq === victim);
        if (granted >= 0) budget += scheduled.splice(granted, 1)[0].numNewTokens;
        this.preempt(victim);
        preempted.push(victim);
        if (victim === seq) break;
      }
      if (seq.status !== "running") continue;
      scheduled.push({ seq, numNewTokens });
      budget -= numNewTokens;
    }

    // NOTE: after a preemption the pool is short; admitting new work now would only thrash.
    while (preempted.length === 0 && budget > 0 && this.waiting.length > 0 && this.running.length < this.limits.maxNumSeqs) {
      const next = this.nextWaiting(nowMs);
      const seq = this.waiting[next];
      // A sequence that already holds blocks (a forked copy) or needs every prompt position's logits skips the cache.
      const cached = seq.numComputedTokens > 0 || seq.promptLogprobs ? { blockIds: [], hashes: [] } : this.kv.findCachedBlocks(seq);
      const numCachedTokens = cached.blockIds.length * this.kv.blockSize;
      const numNewTokens = Math.min(seq.numUncomputedTokens - numCachedTokens, budget);
      if (!this.kv.allocateSlots(seq, numNewTokens, cached)) break;
      this.waiting.splice(next, 1);
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

  /** The waiting sequence to admit next: the best tier (a long-waiting batch one counts as standard), first in the queue within it. */
  private nextWaiting(nowMs: number): number {
    const maxWaitMs = this.limits.batchMaxWaitMs ?? DEFAULT_BATCH_MAX_WAIT_MS;
    const rankOf = (seq: Sequence) => (seq.priority === "batch" && nowMs - seq.arrivalMs >= maxWaitMs ? RANK.standard : RANK[seq.priority]);
    let best = 0;
    for (let i = 1; i < this.waiting.length; i++) if (rankOf(this.waiting[i]) < rankOf(this.waiting[best])) best = i;
    return best;
  }

  /** Whom to preempt: the lowest tier, and within it the newest running (the last admitted). */
  private victim(): Sequence {
    let worst = this.running.length - 1;
    for (let i = this.running.length - 2; i >= 0; i--) if (RANK[this.running[i].priority] > RANK[this.running[worst].priority]) worst = i;
    return this.running[worst];
  }

  private preempt(seq: Sequence): void {
    removeFrom(this.running, seq);
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
