/**
 * The engine's counters and latency samples, for the server to export as metrics.
 * Plain numbers, sent with each step's outputs; the engine knows nothing of Prometheus.
 */
import type { KvCacheManager } from "../kv-cache/kv-cache-manager.ts";
import type { Scheduler } from "./scheduler.ts";
import type { Sequence } from "./sequence.ts";
import type { GrammarState } from "../common/grammar-session.ts";

/** The LoRA adapters at a snapshot: what the lora_requests_info gauge and the per-adapter metrics read. */
export interface LoraState {
  /** The slots (--max-loras). */
  maxLoras: number;
  /** Adapters of running sequences, and of waiting ones. */
  running: string[];
  waiting: string[];
  /** Every adapter requests may name, and those a slot holds now. */
  loaded: string[];
  inSlots: string[];
  /** Adapters written into a slot since the engine started. */
  numSlotLoads: number;
}

export interface EngineStatsSnapshot {
  numRunning: number;
  numWaiting: number;
  kvCacheUsage: number;
  numPrefixQueryTokens: number;
  numPrefixHitTokens: number;
  numPreemptions: number;
  numPromptTokens: number;
  numGenerationTokens: number;
  /** Steps with constrained rows; the grammar thread's time on their masks; and how long those steps waited for them after the model ran. */
  numGrammarSteps: number;
  grammarMaskSeconds: number;
  grammarWaitSeconds: number;
  /** The grammar threads (null: none started, or no grammar engine). */
  grammar: GrammarState | null;
  /** The LoRA adapters (null: the engine has no slots). */
  lora: LoraState | null;
  /** Latency samples since the last snapshot, in seconds. */
  ttftSeconds: number[];
  interTokenSeconds: number[];
  e2eSeconds: number[];
}

export class EngineStats {
  numPreemptions = 0;
  numGrammarSteps = 0;
  grammarMaskSeconds = 0;
  grammarWaitSeconds = 0;
  /** Reads the grammar threads' state at each snapshot. */
  grammarState: (() => GrammarState) | null = null;
  /** Reads the LoRA adapters' state at each snapshot. */
  loraState: (() => LoraState) | null = null;
  private numRunning = 0;
  private numWaiting = 0;
  private kvCacheUsage = 0;
  private numPrefixQueryTokens = 0;
  private numPrefixHitTokens = 0;
  private numPromptTokens = 0;
  private numGenerationTokens = 0;
  private ttftSeconds: number[] = [];
  private interTokenSeconds: number[] = [];
  private e2eSeconds: number[] = [];

  observeStep(scheduler: Scheduler, kv: KvCacheManager): void {
    this.numRunning = scheduler.running.length;
    this.numWaiting = scheduler.waiting.length;
    this.kvCacheUsage = kv.pool.usage;
    this.numPrefixQueryTokens = kv.numPrefixQueries;
    this.numPrefixHitTokens = kv.numPrefixHits;
  }

  observeToken(seq: Sequence, isFirst: boolean): void {
    this.numGenerationTokens++;
    // NOTE: the n copies of a request share one prompt; count it and its first token once.
    if (isFirst && seq.index === 0) {
      this.numPromptTokens += seq.numPromptTokens;
      this.ttftSeconds.push((seq.firstTokenMs! - seq.arrivalMs) / 1000);
    } else if (!isFirst && seq.previousTokenMs !== null) {
      this.interTokenSeconds.push((seq.lastTokenMs! - seq.previousTokenMs) / 1000);
    }
  }

  /** An embedding sequence's prompt, counted once it is computed (it has no tokens to count). */
  observePooled(seq: Sequence): void {
    this.numPromptTokens += seq.numPromptTokens;
  }

  observeFinish(seq: Sequence): void {
    this.e2eSeconds.push((performance.now() - seq.arrivalMs) / 1000);
  }

  /** Counters as totals; latency samples drained. */
  snapshot(): EngineStatsSnapshot {
    const snapshot: EngineStatsSnapshot = {
      numRunning: this.numRunning, numWaiting: this.numWaiting, kvCacheUsage: this.kvCacheUsage,
      numPrefixQueryTokens: this.numPrefixQueryTokens, numPrefixHitTokens: this.numPrefixHitTokens,
      numPreemptions: this.numPreemptions, numPromptTokens: this.numPromptTokens, numGenerationTokens: this.numGenerationTokens,
      numGrammarSteps: this.numGrammarSteps, grammarMaskSeconds: this.grammarMaskSeconds, grammarWaitSeconds: this.grammarWaitSeconds,
      grammar: this.grammarState?.() ?? null,
      lora: this.loraState?.() ?? null,
      ttftSeconds: this.ttftSeconds, interTokenSeconds: this.interTokenSeconds, e2eSeconds: this.e2eSeconds,
    };
    this.ttftSeconds = [];
    this.interTokenSeconds = [];
    this.e2eSeconds = [];
    return snapshot;
  }
}
