/**
 * The order waiting sequences are admitted in, behind a small interface (as vLLM's
 * request_queue.py keeps its FCFS and priority policies), so that the scheduler asks and
 * another policy can answer. The one here: priority tiers (interactive, standard, batch),
 * first come first served within a tier, and ageing: a batch sequence that has waited
 * batchMaxWaitMs counts as standard, so it never starves. Preempted sequences and a request's
 * copies go back to the front.
 */
import type { Priority } from "../common/request.ts";
import type { Sequence } from "./sequence.ts";

export interface WaitingQueue {
  /** In queue order (arrival, with preempted sequences and copies in front). */
  readonly sequences: readonly Sequence[];
  /** A new arrival. */
  push(seq: Sequence): void;
  /** Ahead of everyone: preempted sequences, or copies of a request already admitted. */
  pushFront(seqs: readonly Sequence[]): void;
  /** The sequence to admit next, if any, passing over those `skip` says (they wait for a LoRA slot). */
  next(nowMs: number, skip?: (seq: Sequence) => boolean): Sequence | undefined;
  remove(seq: Sequence): boolean;
  /** A sequence's rank now (lower is served first), waiting or running: its tier, after ageing. */
  rankOf(seq: Sequence, nowMs: number): number;
}

export const RANK: Record<Priority, number> = { interactive: 0, standard: 1, batch: 2 };
export const DEFAULT_BATCH_MAX_WAIT_MS = 30_000;

export class TieredQueue implements WaitingQueue {
  private readonly queue: Sequence[] = [];

  constructor(private readonly batchMaxWaitMs = DEFAULT_BATCH_MAX_WAIT_MS) {}

  get sequences(): readonly Sequence[] {
    return this.queue;
  }

  push(seq: Sequence): void {
    this.queue.push(seq);
  }

  pushFront(seqs: readonly Sequence[]): void {
    this.queue.unshift(...seqs);
  }

  /** The best tier (a long-waiting batch sequence counts as standard), first in the queue within it. */
  next(nowMs: number, skip?: (seq: Sequence) => boolean): Sequence | undefined {
    let best: Sequence | undefined;
    for (const seq of this.queue) if (!skip?.(seq) && (!best || this.rankOf(seq, nowMs) < this.rankOf(best, nowMs))) best = seq;
    return best;
  }

  remove(seq: Sequence): boolean {
    const at = this.queue.indexOf(seq);
    if (at < 0) return false;
    this.queue.splice(at, 1);
    return true;
  }

  rankOf(seq: Sequence, nowMs: number): number {
    return seq.priority === "batch" && nowMs - seq.arrivalMs >= this.batchMaxWaitMs ? RANK.standard : RANK[seq.priority];
  }
}
