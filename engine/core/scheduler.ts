/**
 * Iteration-level scheduling. One rule, no phases: every step each running sequence's
 * numComputedTokens catches up with its numTokens, within a token budget and a cap on
 * running sequences. Decode is a grant of 1 token; prefill is chunked against what
 * remains of the budget. Waiting sequences are admitted in the order of the WaitingQueue
 * (waiting-queue.ts): by priority tier (interactive, standard, batch), first-come, first-served
 * within a tier; a batch sequence that has waited batchMaxWaitMs counts as standard, so it
 * never starves. When blocks run out, the newest
 * running sequence of the lowest tier is preempted and recomputed later; so is one when every
 * slot is taken and a sequence of a higher tier waits (as vLLM's priority policy does), so
 * that a chat request never waits for a bulk job's long generation to end.
 *
 * A sequence under a LoRA adapter is admitted only once its adapter holds a slot
 * (adapter-slots.ts); while every slot is used by running sequences it waits, and the sequences
 * behind it that can run are admitted meanwhile.
 */
import type { KvCacheManager } from "../kv-cache/kv-cache-manager.ts";
import type { Sequence } from "./sequence.ts";
import { RANK, TieredQueue, type WaitingQueue } from "./waiting-queue.ts";
import type { AdapterSlots } from "./adapter-slots.ts";

export { DEFAULT_BATCH_MAX_WAIT_MS } from "./waiting-queue.ts";

export interface SchedulerLimits {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  /** How long a batch sequence may wait before it is admitted as standard (default 30 s). */
  batchMaxWaitMs?: number;
  /**
   * At most this many batch-tier sequences per step while higher tiers are about (one ran or
   * arrived within HIGHER_TIER_WINDOW_MS), taking turns; unset: no cap. Shorter steps let a chat
   * request's first token come sooner, at some cost to the batch tier's throughput.
   */
  batchStepSeqs?: number;
}

/** How long after the last interactive or standard sequence the batch tier stays capped by batchStepSeqs. */
export const HIGHER_TIER_WINDOW_MS = 30_000;


export interface ScheduledSequence {
  seq: Sequence;
  numNewTokens: number;
}

export interface SchedulerOutput {
  scheduled: ScheduledSequence[];
  preempted: Sequence[];
}

/** One step's grants as they are made: the token budget left, who was granted what, who was preempted, how many batch-tier sequences run. */
class StepGrants {
  readonly scheduled: ScheduledSequence[] = [];
  readonly preempted: Sequence[] = [];
  numBatch = 0;

  constructor(public budget: number) {}

  grant(seq: Sequence, numNewTokens: number): void {
    this.scheduled.push({ seq, numNewTokens });
    this.budget -= numNewTokens;
    if (seq.priority === "batch") this.numBatch++;
  }

  /** A victim already granted tokens this step gives them back, and its batch-tier slot. */
  revoke(seq: Sequence): void {
    const granted = this.scheduled.findIndex((s) => s.seq === seq);
    if (granted < 0) return;
    this.budget += this.scheduled.splice(granted, 1)[0].numNewTokens;
    if (seq.priority === "batch") this.numBatch--;
  }
}

export class Scheduler {
  readonly running: Sequence[] = [];
  /** Who is admitted next (waiting-queue.ts): tiers, first come first served within one, ageing. */
  private readonly queue: WaitingQueue;

  /** When a sequence of a tier above batch last arrived or ran. */
  private higherTierSeenMs = -Infinity;
  /** Where the batch tier's turn starts, when batchStepSeqs caps it. */
  private batchTurn = 0;

  /** @param adapters the runner's LoRA slots; null: the graph has none (no sequence has an adapter). */
  constructor(private readonly kv: KvCacheManager, private readonly limits: SchedulerLimits, private readonly adapters: AdapterSlots | null = null, queue?: WaitingQueue) {
    this.queue = queue ?? new TieredQueue(limits.batchMaxWaitMs);
  }

  /** The waiting sequences, in queue order. */
  get waiting(): readonly Sequence[] {
    return this.queue.sequences;
  }

  add(seq: Sequence): void {
    if (seq.priority !== "batch") this.higherTierSeenMs = Math.max(this.higherTierSeenMs, seq.arrivalMs);
    seq.status = "waiting";
    this.queue.push(seq);
  }

  /** Queues sequences ahead of everyone waiting: the copies of a request already admitted. */
  addFirst(seqs: Sequence[]): void {
    for (const seq of seqs) seq.status = "waiting";
    this.queue.pushFront(seqs);
  }

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  schedule(nowMs = performance.now()): SchedulerOutput {
    const step = new StepGrants(this.limits.maxNumBatchedTokens);
    const displaced = this.makeRoomForHigherTiers(nowMs);
    const deferBelow = this.firstPrefillRank(nowMs);
    const { order, batchCap } = this.runningOrder(nowMs);
    const rankOf = this.rankAt(nowMs);

    for (const seq of order) {
      if (step.budget <= 0) break;
      if (seq.status !== "running") continue;
      if (rankOf(seq) > deferBelow) continue;
      if (seq.priority === "batch" && step.numBatch >= batchCap) continue;
      const numNewTokens = Math.min(seq.numUncomputedTokens, step.budget);
      if (numNewTokens <= 0) continue;
      while (!this.kv.allocateSlots(seq, numNewTokens)) {
        const victim = this.victim();
        this.preemptIn(step, victim);
        if (victim === seq) break;
      }
      if (seq.status !== "running") continue;
      step.grant(seq, numNewTokens);
    }

    // The next step's batch turn starts after the sequences that had this one.
    this.batchTurn += step.numBatch;

    // NOTE: after a preemption the pool is short and admitting new work would only thrash, unless the
    // sequence outranks the lowest running one: then it takes that one's blocks, as it would take its slot.
    const waitsForSlot = new Set<Sequence>();
    while (step.budget > 0 && this.waiting.length > waitsForSlot.size && this.running.length < this.limits.maxNumSeqs) {
      const seq = this.queue.next(nowMs, (s) => waitsForSlot.has(s))!;
      if (!this.takeAdapterSlot(seq)) {
        waitsForSlot.add(seq);
        continue;
      }
      if (seq.priority === "batch" && step.numBatch >= batchCap) break;
      const outranks = () => this.running.length > 0 && rankOf(seq) < rankOf(this.victim());
      if (step.preempted.length > 0 && !outranks()) break;
      let numNewTokens = 0;
      let numCachedTokens = 0;
      let admitted = false;
      for (;;) {
        // A sequence that already holds blocks (a forked copy) or reads every prompt row skips the cache.
        const cached = seq.numComputedTokens > 0 || seq.skipsPrefixCache ? { blockIds: [], hashes: [] } : this.kv.findCachedBlocks(seq);
        numCachedTokens = cached.blockIds.length * this.kv.blockSize;
        numNewTokens = Math.min(seq.numUncomputedTokens - numCachedTokens, step.budget);
        if (this.kv.allocateSlots(seq, numNewTokens, cached)) {
          admitted = true;
          break;
        }
        if (!outranks()) break;
        this.preemptIn(step, this.victim());
      }
      if (!admitted) break;
      this.queue.remove(seq);
      seq.status = "running";
      seq.numCachedTokens ??= numCachedTokens;
      this.running.push(seq);
      step.grant(seq, numNewTokens);
    }
    return { scheduled: step.scheduled, preempted: [...displaced, ...step.preempted] };
  }

  /** Puts the sequence's adapter in a slot, if it has one (true), or says it must wait for one (false). */
  private takeAdapterSlot(seq: Sequence): boolean {
    if (!seq.adapter) return true;
    const slot = this.adapters?.acquire(seq.adapter, this.slotsInUse()) ?? null;
    if (slot === null) return false;
    seq.loraSlot = slot;
    return true;
  }

  private mayGetSlot(seq: Sequence): boolean {
    return !seq.adapter || (this.adapters?.canAcquire(seq.adapter, this.slotsInUse()) ?? false);
  }

  /** The LoRA slots running sequences use. */
  slotsInUse(): Set<number> {
    const slots = new Set<number>();
    for (const seq of this.running) if (seq.loraSlot !== 0) slots.add(seq.loraSlot);
    return slots;
  }

  /** Preempts `victim` to free blocks this step: the one place a preemption is made while granting. */
  private preemptIn(step: StepGrants, victim: Sequence): void {
    step.revoke(victim);
    this.preempt(victim);
    step.preempted.push(victim);
  }

  /**
   * When every slot is taken, each waiting sequence that outranks the lowest running one
   * takes its slot: that one is preempted (its blocks stay in the prefix cache for its return).
   */
  private makeRoomForHigherTiers(nowMs: number): Sequence[] {
    const displaced: Sequence[] = [];
    if (this.running.length < this.limits.maxNumSeqs || this.waiting.length === 0) return displaced;
    const rankOf = this.rankAt(nowMs);
    const contenders = this.waiting.map(rankOf).sort((a, b) => a - b);
    for (const rank of contenders) {
      if (this.running.length === 0) break;
      const victim = this.victim();
      if (RANK[victim.priority] <= rank) break;
      this.preempt(victim);
      displaced.push(victim);
    }
    return displaced;
  }

  /**
   * NOTE: a step that starts a higher tier's prompt (its first token is what a chat user waits
   * for) leaves the lower tiers out, so that it runs as fast as on an idle server. One step per
   * such request: lower tiers can't starve unless higher-tier requests arrive faster than steps.
   * Returns the rank below which running sequences sit this step out (Infinity: none).
   */
  private firstPrefillRank(nowMs: number): number {
    if (this.waiting.length === 0 || this.running.length === 0 || this.running.length >= this.limits.maxNumSeqs) return Infinity;
    const rankOf = this.rankAt(nowMs);
    const next = this.queue.next(nowMs, (seq) => !this.mayGetSlot(seq));
    if (!next) return Infinity;
    const rank = rankOf(next);
    if (next.numComputedTokens > 0 || rank === RANK.batch) return Infinity;
    return this.running.some((seq) => rankOf(seq) > rank) ? rank : Infinity;
  }

  /**
   * The order running sequences are granted tokens in, and how many batch-tier ones may be:
   * all, in order; or, with batchStepSeqs while higher tiers are about, the others first and
   * then the batch tier from where its last turn ended.
   */
  private runningOrder(nowMs: number): { order: Sequence[]; batchCap: number } {
    const cap = this.limits.batchStepSeqs;
    if (this.running.some((seq) => seq.priority !== "batch")) this.higherTierSeenMs = nowMs;
    if (cap === undefined || nowMs - this.higherTierSeenMs > HIGHER_TIER_WINDOW_MS) return { order: [...this.running], batchCap: Infinity };
    const batch = this.running.filter((seq) => seq.priority === "batch");
    if (batch.length <= cap) return { order: [...this.running], batchCap: cap };
    const start = this.batchTurn % batch.length;
    this.batchTurn = start;
    return { order: [...this.running.filter((seq) => seq.priority !== "batch"), ...batch.slice(start), ...batch.slice(0, start)], batchCap: cap };
  }

  private rankAt(nowMs: number): (seq: Sequence) => number {
    return (seq) => this.queue.rankOf(seq, nowMs);
  }

  /** Removes a sequence wherever it is and frees its blocks. */
  finish(seq: Sequence): void {
    seq.status = "finished";
    if (!removeFrom(this.running, seq)) this.queue.remove(seq);
    this.kv.free(seq);
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
    this.queue.pushFront([seq]);
  }
}

function removeFrom(list: Sequence[], seq: Sequence): boolean {
  const at = list.indexOf(seq);
  if (at < 0) return false;
  list.splice(at, 1);
  return true;
}
