/**
 * What a constrained request's output must match. The server builds it from response_format,
 * vLLM's guided_* fields and forcing tool_choice; the grammar thread compiles it.
 */
export interface ToolSpec {
  name: string;
  /** The function's JSON schema for its arguments (an empty object schema when none is given). */
  parameters: Record<string, unknown>;
}

export type GrammarSpec =
  | { type: "json_schema"; schema: Record<string, unknown> | boolean }
  | { type: "json_object" }
  | { type: "regex"; pattern: string }
  | { type: "choice"; choices: string[] }
  | { type: "ebnf"; grammar: string }
  /**
   * Calls in Qwen's (Hermes') format, `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`:
   * one or more and nothing else (forced), or, with `optional`, free text in which any call the
   * model starts must be well formed (tool_choice auto with strict functions).
   */
  | { type: "tool_calls"; tools: ToolSpec[]; parallel: boolean; optional?: boolean };

/** The same spec always gives the same key (object keys sorted), for the compiled-grammar cache. */
export function grammarKey(spec: GrammarSpec): string {
  return JSON.stringify(spec, (_key, value: unknown) =>
    value && typeof value === "object" && !Array.isArray(value)
      ? Object.fromEntries(Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : value);
}

/** A grammar the engine can't honour: a 400 naming what is wrong. */
export class GrammarError extends Error {
  /** @param poisoned xgrammar trapped on it: its thread's WASM heap can't be trusted after. */
  constructor(message: string, readonly param: string = "response_format", readonly poisoned = false) {
    super(message);
    this.name = "GrammarError";
  }
}

/** The request field a grammar came from, for its 400's param. */
export function paramOf(spec: GrammarSpec): string {
  return spec.type === "tool_calls" ? "tools" : spec.type === "json_schema" || spec.type === "json_object" ? "response_format" : `guided_${spec.type === "ebnf" ? "grammar" : spec.type}`;
}

/** A trap inside xgrammar's WASM (an abort, an out-of-bounds access, a stack overflow), as opposed to an error it reports. */
export function isWasmTrap(err: unknown): boolean {
  return err instanceof Error && (err.name === "RuntimeError" || /Aborted\(|memory access out of bounds|unreachable|call stack/i.test(err.message));
}
