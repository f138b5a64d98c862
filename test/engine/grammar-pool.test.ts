/**
 * The grammar threads under hostile grammars, with real xgrammar threads on the default model's
 * vocabulary: a compile that hangs is stopped at its deadline and its thread replaced; a compile
 * that traps xgrammar's WASM gets a 400 in plain words and a fresh thread; neither stalls the
 * masks of sequences already running on other threads. And the bounds that refuse such schemas
 * before any thread sees them.
 */
import { afterEach, describe, expect, it } from "vitest";
import { checkGrammarBounds, MAX_ENUM_VALUES, MAX_GRAMMAR_CHARS, MAX_SCHEMA_DEPTH } from "../../engine/grammar/grammar-bounds.ts";
import { GrammarPool } from "../../engine/grammar/grammar-pool.ts";
import { GrammarError, type GrammarSpec } from "../../engine/common/grammar-spec.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { refChain } from "../helpers/hostile-schemas.ts";
import { until } from "../helpers/until.ts";

const YES_NO: GrammarSpec = { type: "choice", choices: ["yes", "no"] };

describe("grammar bounds", () => {
  it("refuse a deep $ref chain, deep nesting, a huge enum, too many choices and a huge grammar, each by name", () => {
    const nest = (n: number) => {
      let s: Record<string, unknown> = { type: "integer" };
      for (let i = 0; i < n; i++) s = { type: "object", properties: { x: s } };
      return s;
    };
    const refuse = (spec: GrammarSpec, message: RegExp) => {
      expect(() => checkGrammarBounds(spec)).toThrow(GrammarError);
      expect(() => checkGrammarBounds(spec)).toThrow(message);
    };
    refuse({ type: "json_schema", schema: refChain(45) }, /nests \d+ levels deep \(counting each \$ref it follows, at #\/\$defs\/d\d+/);
    refuse({ type: "json_schema", schema: nest(MAX_SCHEMA_DEPTH) }, new RegExp(`nests ${MAX_SCHEMA_DEPTH + 1} levels deep.*at most ${MAX_SCHEMA_DEPTH}`));
    refuse({ type: "json_schema", schema: { enum: Array.from({ length: MAX_ENUM_VALUES + 1 }, (_, i) => i) } }, /5001 enum and const values/);
    refuse({ type: "choice", choices: Array.from({ length: MAX_ENUM_VALUES + 1 }, (_, i) => `${i}`) }, /5001 choices/);
    refuse({ type: "regex", pattern: "a".repeat(MAX_GRAMMAR_CHARS) }, /characters long/);
    refuse({ type: "tool_calls", parallel: false, tools: [{ name: "deep", parameters: refChain(40) }] }, /schema of tool deep nests/);
    expect(() => checkGrammarBounds({ type: "json_schema", schema: nest(MAX_SCHEMA_DEPTH - 1) })).not.toThrow();
    expect(() => checkGrammarBounds({ type: "json_schema", schema: refChain(10) })).not.toThrow();
  });

  it("walk a recursive schema and a doubling $ref DAG without looping or blowing up", () => {
    const tree = { $defs: { node: { type: "object", properties: { kids: { type: "array", items: { $ref: "#/$defs/node" } } } } }, $ref: "#/$defs/node" };
    expect(() => checkGrammarBounds({ type: "json_schema", schema: tree })).not.toThrow();
    const defs: Record<string, unknown> = { d20: { type: "integer" } };
    for (let i = 0; i < 20; i++) defs[`d${i}`] = { anyOf: [{ $ref: `#/$defs/d${i + 1}` }, { $ref: `#/$defs/d${i + 1}` }] };
    const started = performance.now();
    expect(() => checkGrammarBounds({ type: "json_schema", schema: { $ref: "#/$defs/d0", $defs: defs } })).toThrow(/nests/);
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

describe("the grammar pool", () => {
  let pool: GrammarPool | null = null;
  afterEach(async () => {
    await pool?.terminate();
    pool = null;
  });
  const start = (compileTimeoutMs: number, maxThreads = 2) => {
    const checkpoint = readCheckpoint(ensureDefaultModel());
    return (pool = new GrammarPool({ tokenizerJson: checkpoint.tokenizerJson, vocabSize: 151936, stopTokenIds: checkpoint.eosTokenIds }, { maxThreads, compileTimeoutMs, maskTimeoutMs: 5000 }));
  };

  it("stops a compile that hangs at its deadline, replaces its thread, and keeps another thread's sequence masked meanwhile", async () => {
    const grammars = start(1500);
    await grammars.open("running", YES_NO);
    const hung = grammars.open("hung", { type: "json_schema", schema: refChain(45) }).catch((err: unknown) => err);
    // While the hung compile runs on a second thread, the running sequence's masks keep coming, each fast.
    const maskMs: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      const [row] = await grammars.advance([{ seqKey: "running", tokens: [] }]);
      maskMs.push(performance.now() - t);
      expect("mask" in row).toBe(true);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(Math.max(...maskMs)).toBeLessThan(500);
    const error = await hung;
    expect(error).toBeInstanceOf(GrammarError);
    expect((error as GrammarError).message).toMatch(/longer than 1.5 s \(--grammar-compile-timeout\)/);
    expect(grammars.state()).toMatchObject({ numRestarts: 1, numMatchers: 1, lastFailure: expect.stringMatching(/longer than/) });
    // A new grammar compiles on a fresh thread, and the running sequence still has its matcher.
    await grammars.open("after", { type: "choice", choices: ["red", "green"] });
    const rows = await grammars.advance([{ seqKey: "running", tokens: [] }, { seqKey: "after", tokens: [] }]);
    expect(rows.every((row) => "mask" in row)).toBe(true);
  }, 60_000);

  it("answers a compile that traps xgrammar with plain words, and replaces the thread", async () => {
    const grammars = start(10_000);
    const error = await grammars.open("trap", { type: "json_schema", schema: refChain(300) }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(GrammarError);
    expect((error as GrammarError).message).toMatch(/too large or too deeply nested/);
    expect((error as GrammarError).message).not.toMatch(/Aborted|ASSERTIONS|out of bounds/);
    await until(() => grammars.state().numRestarts === 1, { what: "the trapped thread's replacement" });
    await grammars.open("next", YES_NO);
    const [row] = await grammars.advance([{ seqKey: "next", tokens: [] }]);
    expect("mask" in row).toBe(true);
  }, 60_000);

  it("names the parse error of a regex or an EBNF grammar (xgrammar prints it and aborts), on a fresh thread each time", async () => {
    const grammars = start(10_000);
    await expect(grammars.open("r", { type: "regex", pattern: "(unclosed" })).rejects.toThrow(/does not compile: Regex parsing error at position \d+: The parenthesis is not closed/);
    await expect(grammars.open("e", { type: "ebnf", grammar: "root ::= (" })).rejects.toThrow(/does not compile: EBNF parser error at line 1, column \d+/);
    await grammars.open("ok", YES_NO);
    expect(grammars.state().numRestarts).toBe(2);
  }, 60_000);

  it("at its thread cap, a new grammar waits for a thread to go idle, within the deadline, then says the threads are busy", async () => {
    const grammars = start(800, 1);
    await grammars.open("a", YES_NO);
    const waiting = grammars.open("b", { type: "choice", choices: ["up", "down"] });
    setTimeout(() => grammars.close("a"), 200);
    await waiting;
    expect(grammars.state()).toMatchObject({ numThreads: 1, numMatchers: 1 });
    const busy = await grammars.open("c", { type: "choice", choices: ["left", "right"] }).catch((err: unknown) => err);
    expect(busy).toMatchObject({ code: "GRAMMAR_BUSY", message: expect.stringMatching(/grammar threads are busy.*--grammar-threads/) });
    // The same grammar as a running one goes to its thread, cap or not.
    await grammars.open("b2", { type: "choice", choices: ["up", "down"] });
  }, 60_000);
});
