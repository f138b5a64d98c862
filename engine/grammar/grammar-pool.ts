/**
 * The grammar threads, started on first use so that servers that never constrain pay nothing.
 *
 * A compiled grammar and its matchers live in one thread's WASM heap, and a thread does one
 * thing at a time, so a compile stalls the masks of every sequence on its thread. So:
 * - a new grammar compiles on a thread that holds no sequence: an idle one, or a new one up to
 *   `maxThreads`; at the cap, it waits (within the compile deadline) for one to go idle, and
 *   the step loop never waits behind a compile;
 * - a grammar already compiled goes to the thread that holds it (a matcher takes microseconds);
 * - a compile past its deadline, a mask past its deadline, or a trap terminates the thread:
 *   only its own sequences fail, and the next compile starts a fresh one.
 */
import { EngineError } from "../common/engine-error.ts";
import type { GrammarSession, GrammarState, MaskRow } from "../common/grammar-session.ts";
import { GrammarHost } from "./grammar-host.ts";
import type { GrammarWorkerData } from "./grammar-protocol.ts";
import { grammarKey, type GrammarSpec } from "../common/grammar-spec.ts";

export interface GrammarPoolOptions {
  /** --grammar-threads. */
  maxThreads: number;
  /** --grammar-compile-timeout, in ms. */
  compileTimeoutMs: number;
  /** How long a step may wait for its masks. */
  maskTimeoutMs: number;
}

export const DEFAULT_GRAMMAR_THREADS = 2;
export const DEFAULT_GRAMMAR_COMPILE_TIMEOUT_MS = 10_000;
/** A mask takes milliseconds; a thread this late is stuck. */
export const DEFAULT_GRAMMAR_MASK_TIMEOUT_MS = 5_000;

interface Slot {
  host: Promise<GrammarHost>;
  /** Grammars compiled (or compiling) on this thread. */
  keys: Set<string>;
  numSeqs: number;
  numCompiling: number;
  dead: boolean;
}

export class GrammarPool implements GrammarSession {
  private readonly slots: Slot[] = [];
  private readonly seqSlots = new Map<string, Slot>();
  private idleWaiters: (() => void)[] = [];
  private numRestarts = 0;
  private lastFailure: string | null = null;
  private stopping = false;

  constructor(private readonly data: GrammarWorkerData, private readonly options: GrammarPoolOptions) {}

  async open(seqKey: string, spec: GrammarSpec): Promise<void> {
    const key = grammarKey(spec);
    const slot = this.live().find((s) => s.keys.has(key)) ?? (await this.idleSlot());
    const compiling = !slot.keys.has(key);
    slot.keys.add(key);
    slot.numSeqs++;
    this.seqSlots.set(seqKey, slot);
    if (compiling) slot.numCompiling++;
    try {
      await (await slot.host).open(seqKey, spec, this.options.compileTimeoutMs);
    } catch (err) {
      if (compiling) slot.keys.delete(key);
      this.release(seqKey);
      throw err;
    } finally {
      if (compiling) slot.numCompiling--;
    }
  }

  async advance(rows: readonly { seqKey: string; tokens: readonly number[] }[]): Promise<MaskRow[]> {
    const answers = new Array<MaskRow>(rows.length);
    const bySlot = new Map<Slot, number[]>();
    rows.forEach((row, i) => {
      const slot = this.seqSlots.get(row.seqKey);
      if (!slot || slot.dead) answers[i] = { error: this.lostMatcher() };
      else bySlot.set(slot, [...(bySlot.get(slot) ?? []), i]);
    });
    await Promise.all([...bySlot].map(async ([slot, indices]) => {
      try {
        const host = await slot.host;
        const { masks, rejected } = await host.advance(indices.map((i) => rows[i]), this.options.maskTimeoutMs);
        indices.forEach((i, j) => (answers[i] = { mask: masks[j], rejected: rejected[j] }));
      } catch (err) {
        const error = slot.dead ? this.lostMatcher() : err instanceof Error ? err : new Error(String(err));
        for (const i of indices) answers[i] = { error };
      }
    }));
    return answers;
  }

  close(seqKey: string): void {
    this.release(seqKey);
  }

  state(): GrammarState {
    const live = this.live();
    return {
      numThreads: live.length,
      numCompiling: live.reduce((n, s) => n + s.numCompiling, 0),
      numMatchers: live.reduce((n, s) => n + s.numSeqs, 0),
      numRestarts: this.numRestarts,
      lastFailure: this.lastFailure,
    };
  }

  async terminate(): Promise<void> {
    this.stopping = true;
    await Promise.all([...this.slots].map((slot) => slot.host.then((host) => host.terminate(), () => undefined)));
  }

  private live(): Slot[] {
    return this.slots.filter((s) => !s.dead);
  }

  private release(seqKey: string): void {
    const slot = this.seqSlots.get(seqKey);
    if (!slot) return;
    this.seqSlots.delete(seqKey);
    slot.numSeqs--;
    if (!slot.dead) void slot.host.then((host) => host.close(seqKey), () => undefined);
    if (slot.numSeqs === 0) for (const wake of this.idleWaiters.splice(0)) wake();
  }

  /** A thread with no sequence on it, started if need be; at the cap, the first to go idle. */
  private async idleSlot(): Promise<Slot> {
    const deadline = performance.now() + this.options.compileTimeoutMs;
    for (;;) {
      const live = this.live();
      const idle = live.find((s) => s.numSeqs === 0);
      if (idle) return idle;
      if (live.length < this.options.maxThreads) return this.startSlot();
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new EngineError("GRAMMAR_BUSY",
          `all ${this.options.maxThreads} grammar threads are busy with other requests' grammars (--grammar-threads); retry shortly`, "response_format");
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.idleWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  private startSlot(): Slot {
    const slot: Slot = { host: GrammarHost.start(this.data), keys: new Set(), numSeqs: 0, numCompiling: 0, dead: false };
    this.slots.push(slot);
    const retire = (reason: Error) => {
      if (slot.dead) return;
      slot.dead = true;
      this.slots.splice(this.slots.indexOf(slot), 1);
      // NOTE: threads stopped with the engine were not restarted for a fault.
      if (this.stopping) return;
      this.numRestarts++;
      this.lastFailure = reason.message;
      for (const wake of this.idleWaiters.splice(0)) wake();
    };
    slot.host.then((host) => (host.onDeath = retire), (err: unknown) => retire(err instanceof Error ? err : new Error(String(err))));
    return slot;
  }

  private lostMatcher(): EngineError {
    return new EngineError("GRAMMAR_BUSY", "the grammar thread holding this request's matcher was restarted (another grammar hung or crashed it); retry");
  }
}
