/** JSON schemas that broke xgrammar: for the grammar pool's and the server's hostile tests. */

/** d0 → d1 → … → dN by $ref, each an object with one required property: 45 deep hangs xgrammar's compile, 300 traps its WASM. */
export function refChain(depth: number): Record<string, unknown> {
  const defs: Record<string, unknown> = {};
  for (let i = 0; i < depth; i++) defs[`d${i}`] = { type: "object", properties: { x: { $ref: `#/$defs/d${i + 1}` } }, required: ["x"], additionalProperties: false };
  defs[`d${depth}`] = { type: "integer" };
  return { $ref: "#/$defs/d0", $defs: defs };
}
