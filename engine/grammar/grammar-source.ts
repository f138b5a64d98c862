/**
 * From a GrammarSpec to an xgrammar compiled grammar (inside the grammar thread).
 *
 * JSON schemas are turned into EBNF without free whitespace (", " and ": " separators, no
 * indentation), so a weak model can't pad forever (vLLM #38696), and with xgrammar #800 fixed:
 * its length-bounded strings, `[^"\\\r\n]{m,n}`, admit raw control characters (invalid JSON)
 * and forbid escapes; they are rewritten to legal JSON string characters and escapes.
 * Features xgrammar can't honour are refused by name, never dropped.
 */
import type { CompiledGrammar, GrammarCompiler } from "@mlc-ai/web-xgrammar";
import { GrammarError, isWasmTrap, paramOf, type GrammarSpec } from "../common/grammar-spec.ts";
import type { XgrammarModule } from "./xgrammar.ts";

/** Beyond this, a maxLength (or minLength) string's compile time explodes (1.6 s at 40). */
export const MAX_STRING_LENGTH_BOUND = 32;

/**
 * NOTE: inline, not a rule of its own: a rule reference inside the repetition defeats
 * xgrammar's precomputed token masks (16 ms a mask instead of 6 on the bench schema). \u
 * escapes are left out for the same reason; every other JSON escape is allowed.
 */
const JSON_CHAR = '([^"\\\\\\0-\\x1f] | "\\\\" ["\\\\/bfnrt])';
const BOUNDED_STRING = /\[\^"\\\\\\r\\n\]\{(\d+),(\d+)\}/g;

export async function compileSpec(xg: XgrammarModule, compiler: GrammarCompiler, spec: GrammarSpec): Promise<CompiledGrammar> {
  const said: string[] = [];
  try {
    return await withStderr((text) => said.push(text), () => compileUnchecked(xg, compiler, spec));
  } catch (err) {
    if (err instanceof GrammarError) throw err;
    // NOTE: xgrammar reports a parse error by printing it and aborting; the abort's own message is its internals ("Aborted(). Build with -sASSERTIONS…").
    const reason = said.join("").match(/\[FATAL\][^\n]*?:\d+: ([^\n]+)/)?.[1]?.trim();
    if (isWasmTrap(err)) {
      throw new GrammarError(reason ? `the grammar does not compile: ${reason}` : "the grammar engine failed while compiling this grammar: it is too large or too deeply nested; simplify it", paramOf(spec), true);
    }
    throw new GrammarError(`the grammar does not compile: ${reason ?? (err instanceof Error ? err.message : String(err))}`, paramOf(spec));
  }
}

/** Runs `run` with this thread's stderr going to `sink` (the grammar thread runs one compile at a time). */
async function withStderr<T>(sink: (text: string) => void, run: () => Promise<T>): Promise<T> {
  const stderr = process.stderr as { write: (...args: unknown[]) => boolean };
  const write = stderr.write;
  stderr.write = (chunk: unknown) => {
    sink(String(chunk));
    return true;
  };
  try {
    return await run();
  } finally {
    stderr.write = write;
  }
}

async function compileUnchecked(xg: XgrammarModule, compiler: GrammarCompiler, spec: GrammarSpec): Promise<CompiledGrammar> {
  {
    switch (spec.type) {
      case "json_schema":
        return await compiler.compileGrammar(await schemaEbnf(xg, spec.schema, "response_format.json_schema.schema"));
      case "json_object":
        return await compiler.compileGrammar(await schemaEbnf(xg, { type: "object" }, "response_format"));
      case "regex":
        return await compiler.compileStructuralTag({ type: "structural_tag", format: { type: "regex", pattern: spec.pattern } });
      case "choice":
        return await compiler.compileGrammar(`root ::= ${spec.choices.map(ebnfString).join(" | ")}`);
      case "ebnf":
        return await compiler.compileGrammar(spec.grammar);
      case "tool_calls": {
        const tags = [];
        for (const tool of spec.tools) {
          tags.push({
            type: "tag" as const, begin: `<tool_call>\n{"name": ${JSON.stringify(tool.name)}, "arguments": `,
            content: { type: "grammar" as const, grammar: await schemaEbnf(xg, tool.parameters, `tools.${tool.name}.parameters`) }, end: "}\n</tool_call>",
          });
        }
        const format = spec.optional
          ? { type: "triggered_tags" as const, triggers: ["<tool_call>"], tags, at_least_one: false, stop_after_first: !spec.parallel }
          : { type: "tags_with_separator" as const, tags, separator: "\n", at_least_one: true, stop_after_first: !spec.parallel };
        return await compiler.compileStructuralTag({ type: "structural_tag", format });
      }
    }
  }
}

/** A JSON schema as compact EBNF, checked and with bounded strings made legal JSON. */
export async function schemaEbnf(xg: XgrammarModule, schema: unknown, param: string): Promise<string> {
  checkSchema(schema, param);
  const ebnf = await xg.Testings._jsonSchemaToEBNF(JSON.stringify(schema), false, -1, [", ", ": "], true);
  return fixBoundedStrings(ebnf);
}

/** xgrammar #800: `[^"\\\r\n]{m,n}` becomes m to n legal JSON string characters or escapes. */
export function fixBoundedStrings(ebnf: string): string {
  return ebnf.replace(BOUNDED_STRING, `${JSON_CHAR}{$1,$2}`);
}

/** Refuses what xgrammar would get wrong or take too long over, naming the feature and where. */
export function checkSchema(schema: unknown, param: string, path = "#"): void {
  if (!schema || typeof schema !== "object") return;
  if (Array.isArray(schema)) {
    schema.forEach((item, i) => checkSchema(item, param, `${path}/${i}`));
    return;
  }
  const node = schema as Record<string, unknown>;
  const refuse = (feature: string) => {
    throw new GrammarError(`the JSON schema uses ${feature} at ${path}, which structured outputs can't enforce; remove it or restate the schema without it`, param);
  };
  if ("allOf" in node) refuse('"allOf"');
  if ("pattern" in node && ("maxLength" in node || "minLength" in node)) refuse('"pattern" together with "minLength"/"maxLength"');
  for (const bound of ["maxLength", "minLength"] as const) {
    const value = node[bound];
    if (typeof value === "number" && value > MAX_STRING_LENGTH_BOUND) refuse(`"${bound}": ${value} (at most ${MAX_STRING_LENGTH_BOUND} can be enforced; use a smaller bound or none)`);
  }
  for (const [key, value] of Object.entries(node)) {
    if (key === "enum" || key === "const" || key === "default" || key === "examples") continue;
    checkSchema(value, param, `${path}/${key}`);
  }
}

/** A string as an EBNF literal. */
function ebnfString(text: string): string {
  return `"${[...text].map((ch) => {
    if (ch === "\\" || ch === '"') return `\\${ch}`;
    const code = ch.codePointAt(0)!;
    if (ch === "\n") return "\\n";
    if (ch === "\r") return "\\r";
    if (ch === "\t") return "\\t";
    return code < 0x20 ? `\\x${code.toString(16).padStart(2, "0")}` : ch;
  }).join("")}"`;
}
