/**
 * Bounds on a grammar's size, checked when a request enters the engine, before any thread
 * compiles it. xgrammar's compile recurses once per level of nesting and grows faster than
 * linearly with enum values: a `$ref` chain 45 levels deep hangs it, 300 traps its WASM,
 * and a 100,000-value enum takes about 10 s. The compile deadline (grammar-pool.ts) stops what
 * gets past these; these give the clear 400 first.
 *
 * NOTE: OpenAI's structured outputs allow 10 levels of nesting and 1,000 enum values; these
 * bounds are looser, at what compiles in well under a second here (bench/grammar-compile-times.ts).
 */
import { GrammarError, paramOf, type GrammarSpec } from "../common/grammar-spec.ts";

/** The spec as JSON: a schema, a regex, a grammar or the choices. */
export const MAX_GRAMMAR_CHARS = 128 * 1024;
/** Schemas nested in schemas along any path, following `$ref`s (a 32-deep nest compiles in about 30 ms). */
export const MAX_SCHEMA_DEPTH = 32;
/** `enum` and `const` values across the whole schema (5,000 compile in about 80 ms). */
export const MAX_ENUM_VALUES = 5000;

/** Keys whose values are subschemas (objects), or lists or maps of them. */
const SUBSCHEMA = new Set(["items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames", "unevaluatedItems", "unevaluatedProperties", "additionalItems"]);
const SUBSCHEMA_LISTS = new Set(["anyOf", "oneOf", "allOf", "prefixItems"]);
const SUBSCHEMA_MAPS = new Set(["properties", "patternProperties", "dependentSchemas"]);

export function checkGrammarBounds(spec: GrammarSpec): void {
  const param = paramOf(spec);
  const chars = JSON.stringify(spec).length;
  if (chars > MAX_GRAMMAR_CHARS) throw new GrammarError(`the grammar is ${chars} characters long; at most ${MAX_GRAMMAR_CHARS} can be enforced`, param);
  if (spec.type === "choice" && spec.choices.length > MAX_ENUM_VALUES) throw new GrammarError(`${spec.choices.length} choices; at most ${MAX_ENUM_VALUES} can be enforced`, param);
  const schemas = spec.type === "json_schema" ? [{ schema: spec.schema, at: "" }]
    : spec.type === "tool_calls" ? spec.tools.map((tool) => ({ schema: tool.parameters as unknown, at: ` of tool ${tool.name}` })) : [];
  for (const { schema, at } of schemas) {
    const walk = new SchemaWalk(schema);
    const depth = walk.depth(schema, "#");
    if (depth > MAX_SCHEMA_DEPTH) {
      throw new GrammarError(`the JSON schema${at} nests ${depth} levels deep (counting each $ref it follows, at ${walk.deepest}); at most ${MAX_SCHEMA_DEPTH} can be enforced`, param);
    }
    if (walk.numEnumValues > MAX_ENUM_VALUES) throw new GrammarError(`the JSON schema${at} has ${walk.numEnumValues} enum and const values; at most ${MAX_ENUM_VALUES} can be enforced`, param);
  }
}

/** The longest path of nested schemas, through `$ref`s (a recursive `$ref` ends its path), and the enum values seen. */
class SchemaWalk {
  numEnumValues = 0;
  deepest = "#";
  private readonly onPath = new Set<string>();
  private readonly refDepths = new Map<string, number>();
  private readonly counted = new Set<unknown>();

  constructor(private readonly root: unknown) {}

  depth(node: unknown, path: string): number {
    if (!node || typeof node !== "object" || Array.isArray(node)) return 0;
    const schema = node as Record<string, unknown>;
    if (!this.counted.has(schema)) {
      this.counted.add(schema);
      if (Array.isArray(schema.enum)) this.numEnumValues += schema.enum.length;
      if ("const" in schema) this.numEnumValues++;
    }
    let below = 0;
    const deeper = (child: unknown, childPath: string) => {
      const d = this.depth(child, childPath);
      if (d > below) below = d;
    };
    if (typeof schema.$ref === "string") below = this.refDepth(schema.$ref);
    for (const [key, value] of Object.entries(schema)) {
      if (SUBSCHEMA.has(key)) {
        if (Array.isArray(value)) value.forEach((v, i) => deeper(v, `${path}/${key}/${i}`));
        else deeper(value, `${path}/${key}`);
      } else if (SUBSCHEMA_LISTS.has(key) && Array.isArray(value)) {
        value.forEach((v, i) => deeper(v, `${path}/${key}/${i}`));
      } else if (SUBSCHEMA_MAPS.has(key) && value && typeof value === "object") {
        for (const [name, v] of Object.entries(value)) deeper(v, `${path}/${key}/${name}`);
      }
    }
    if (below === 0 && path.length > this.deepest.length) this.deepest = path;
    return 1 + below;
  }

  /** NOTE: memoized, so a schema whose definitions each refer to the next twice is walked once per definition, not 2^n times. */
  private refDepth(ref: string): number {
    if (this.onPath.has(ref)) return 0;
    const known = this.refDepths.get(ref);
    if (known !== undefined) return known;
    this.onPath.add(ref);
    const depth = this.depth(resolvePointer(this.root, ref), ref);
    this.onPath.delete(ref);
    this.refDepths.set(ref, depth);
    return depth;
  }
}

/** A local JSON pointer (`#/$defs/a`); anything else resolves to nothing (xgrammar refuses it by name). */
function resolvePointer(root: unknown, ref: string): unknown {
  if (!ref.startsWith("#")) return undefined;
  let node = root;
  for (const raw of ref.slice(1).split("/").filter(Boolean)) {
    const key = decodeURIComponent(raw).replace(/~1/g, "/").replace(/~0/g, "~");
    node = node && typeof node === "object" ? (node as Record<string, unknown>)[key] : undefined;
  }
  return node;
}
