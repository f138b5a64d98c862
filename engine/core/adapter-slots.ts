/**
 * Which LoRA adapter each of the runner's slots holds. More adapters may be registered than
 * there are slots (--max-loras): a sequence's adapter is put in a slot when the sequence is
 * admitted, into an empty slot first, else into the least recently used slot that no running
 * sequence uses. When every slot is used by running sequences, the sequence waits (the
 * scheduler admits others meanwhile) until one of them finishes.
 *
 *   registered   sql, chat, legal, med, code, fin       (any number: the engine's adapters map)
 *   slots        [1: sql] [2: legal]                      (--max-loras 2)
 *   a request for "med" → slot 2 if no running sequence uses legal, else it waits
 *
 * Loading writes the adapter's weights into the runner's slot (RunnerLoraSlots.load): no graph
 * is rebuilt. An adapter is identified by its ServedAdapter object, so one unloaded and loaded
 * again under the same name (new weights) is never mistaken for the old.
 */
import type { LoraAdapter } from "../../models/index.ts";
import type { RunnerLoraSlots } from "../runner/step-runner.ts";

/** An adapter the engine serves: its weights, its name, and the key its KV is cached under. */
export interface ServedAdapter {
  readonly name: string;
  /** Unique per load: salts the prefix cache (kv-cache-manager.ts), so KV computed under other weights is never shared. */
  readonly cacheKey: string;
  readonly weights: LoraAdapter;
}

export class AdapterSlots {
  /** held[s - 1]: what slot s holds. */
  private readonly held: (ServedAdapter | null)[];
  private readonly lastUsed: number[];
  private clock = 0;
  /** Adapters written into a slot since the engine started (a slot's churn). */
  numLoads = 0;

  constructor(private readonly runner: RunnerLoraSlots) {
    this.held = new Array<ServedAdapter | null>(runner.numSlots).fill(null);
    this.lastUsed = new Array<number>(runner.numSlots).fill(0);
  }

  get numSlots(): number {
    return this.held.length;
  }

  /** The slot that holds `adapter`, or 0. */
  slotOf(adapter: ServedAdapter): number {
    return this.held.indexOf(adapter) + 1;
  }

  /**
   * The slot `adapter` runs in: the one that holds it, or one it is loaded into now (an empty
   * one, else the least recently used of those no running sequence uses: `inUse`). Null when
   * every slot is in use by other adapters: the sequence waits.
   */
  acquire(adapter: ServedAdapter, inUse: ReadonlySet<number>): number | null {
    const slot = this.slotOf(adapter) || this.freeSlot(inUse);
    if (slot === 0) return null;
    if (this.held[slot - 1] !== adapter) {
      this.runner.load(slot, adapter.weights);
      this.held[slot - 1] = adapter;
      this.numLoads++;
    }
    this.lastUsed[slot - 1] = ++this.clock;
    return slot;
  }

  /** Whether acquire() would give `adapter` a slot now. */
  canAcquire(adapter: ServedAdapter, inUse: ReadonlySet<number>): boolean {
    return this.slotOf(adapter) !== 0 || this.freeSlot(inUse) !== 0;
  }

  /** Empties the slot of an adapter that was unloaded, unless a running sequence still uses it (it then leaves by LRU). */
  release(adapter: ServedAdapter, inUse: ReadonlySet<number>): void {
    const slot = this.slotOf(adapter);
    if (slot === 0 || inUse.has(slot)) return;
    this.runner.clear(slot);
    this.held[slot - 1] = null;
    this.lastUsed[slot - 1] = 0;
  }

  /** The names the slots hold, in slot order. */
  get names(): string[] {
    return this.held.flatMap((adapter) => (adapter ? [adapter.name] : []));
  }

  /** An empty slot (the lowest: a step feeds only slots 1…k, k the highest used), else the LRU one not in use; 0: none. */
  private freeSlot(inUse: ReadonlySet<number>): number {
    let best = 0;
    for (let slot = 1; slot <= this.held.length; slot++) {
      if (inUse.has(slot)) continue;
      if (this.held[slot - 1] === null) return slot;
      if (best === 0 || this.lastUsed[slot - 1] < this.lastUsed[best - 1]) best = slot;
    }
    return best;
  }
}
