/** Messages between the engine thread and the grammar thread. */
import type { AdvanceRow } from "./grammar-core.ts";
import type { GrammarSpec } from "../common/grammar-spec.ts";

export interface GrammarWorkerData {
  tokenizerJson: string;
  vocabSize: number;
  stopTokenIds: number[];
}

export type ToGrammar =
  | { op: "open"; id: number; seqKey: string; spec: GrammarSpec }
  | { op: "advance"; id: number; rows: AdvanceRow[] }
  | { op: "close"; seqKey: string };

export type FromGrammar =
  | { op: "ready" }
  | { op: "fatal"; message: string }
  | { op: "opened"; id: number; compileMs: number; cached: boolean }
  | { op: "advanced"; id: number; masks: Int32Array[]; rejected: boolean[] }
  /** poisoned: xgrammar trapped; the thread must be replaced. */
  | { op: "failed"; id: number; message: string; param: string | null; grammar: boolean; poisoned: boolean };
