/**
 * What the engine core needs of a grammar engine: a matcher per constrained sequence, and
 * each step, the tokens it generated accepted and the next token's mask. The grammar thread
 * implements it (engine/grammar/grammar-host.ts); tests use a fake.
 */
import type { GrammarSpec } from "../grammar/grammar-spec.ts";

export interface GrammarSession {
  /** Compiles the spec (cached) and makes a matcher for the sequence; rejects with a GrammarError for a spec it can't honour. */
  open(seqKey: string, spec: GrammarSpec): Promise<void>;
  /** Accepts each row's new tokens, then gives its next-token bitmask (bit i of word i >> 5: token i allowed). */
  advance(rows: readonly { seqKey: string; tokens: readonly number[] }[]): Promise<{ masks: Int32Array[]; rejected: boolean[] }>;
  close(seqKey: string): void;
}
