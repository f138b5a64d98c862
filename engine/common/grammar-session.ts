/**
 * What the engine core needs of a grammar engine: a matcher per constrained sequence, and
 * each step, the tokens it generated accepted and the next token's mask. The grammar pool
 * implements it (engine/grammar/grammar-pool.ts); tests use a fake.
 */
import type { GrammarSpec } from "./grammar-spec.ts";

/** One row's answer: its next-token bitmask (bit i of word i >> 5: token i allowed), or why it has none. */
export type MaskRow = { mask: Int32Array; rejected: boolean } | { error: Error };

/** What /health shows of the grammar threads. */
export interface GrammarState {
  numThreads: number;
  numCompiling: number;
  numMatchers: number;
  /** Threads terminated for a missed deadline or a trap, since the engine started. */
  numRestarts: number;
  lastFailure: string | null;
}

export interface GrammarSession {
  /** Compiles the spec (cached) and makes a matcher for the sequence; rejects with a GrammarError for a spec it can't honour in time. */
  open(seqKey: string, spec: GrammarSpec): Promise<void>;
  /**
   * Accepts each row's new tokens, then gives its next mask. Never rejects, and answers within
   * its deadline: a row whose thread is late or dead gets an error, and fails alone.
   */
  advance(rows: readonly { seqKey: string; tokens: readonly number[] }[]): Promise<MaskRow[]>;
  close(seqKey: string): void;
  state?(): GrammarState;
}
