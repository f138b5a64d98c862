import { mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { bfloat16ToFloat32, float16ToFloat32, float32ToBfloat16, float32ToFloat16 } from "../../models/weights/float-formats.ts";
import { ModelError } from "../../models/model-error.ts";
import { fillNormal, Prng } from "../../models/prng.ts";
import { writeRandomCheckpoint } from "../../models/synthetic/random-checkpoint.ts";
import { openWeights, writeSafetensors, writeShardedSafetensors, type TensorEntry } from "../../models/weights/safetensors.ts";

const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "tokenmill-safetensors-"));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

const toF16 = (x: number) => float32ToFloat16(Float32Array.of(x))[0];
const toBf16 = (x: number) => float32ToBfloat16(Float32Array.of(x))[0];
const fromF16 = (h: number) => float16ToFloat32(Uint16Array.of(h))[0];
const fromBf16 = (h: number) => bfloat16ToFloat32(Uint16Array.of(h))[0];
const bitsOf = (f: Float32Array) => Array.from(new Uint32Array(f.buffer, f.byteOffset, f.length));

/**
 * Reference rounding by value: of the two neighbouring 16-bit patterns, the nearer one, ties to
 * even. The inf pattern counts as the next power of two, which is how IEEE rounding treats overflow.
 */
function nearest(x: number, decode: (h: number) => number, maxFinite: number, infValue: number): number {
  const sign = Object.is(x, -0) || x < 0 ? 0x8000 : 0;
  const abs = Math.abs(x);
  let lo = 0;
  let hi = maxFinite + 1; // the +inf pattern
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (decode(mid) <= abs) lo = mid; else hi = mid;
  }
  const below = abs - decode(lo);
  const above = (hi > maxFinite ? infValue : decode(hi)) - abs;
  return sign | (below < above || (below === above && (lo & 1) === 0) ? lo : hi);
}

describe("float formats", () => {
  it("encodes known float16 values", () => {
    expect(toF16(1)).toBe(0x3c00);
    expect(toF16(-2)).toBe(0xc000);
    expect(toF16(65504)).toBe(0x7bff);
    expect(toF16(65519)).toBe(0x7bff);
    expect(toF16(65520)).toBe(0x7c00); // halfway to 2^16 rounds up to inf
    expect(toF16(2 ** -14)).toBe(0x0400);
    expect(toF16(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(toF16(2 ** -25)).toBe(0x0000); // tie with zero goes to even
    expect(toF16(1.5 * 2 ** -24)).toBe(0x0002); // tie between 1 and 2 goes to even
    expect(toF16(1 + 2 ** -11)).toBe(0x3c00);
    expect(toF16(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(toF16(-0)).toBe(0x8000);
    expect(toF16(Infinity)).toBe(0x7c00);
    expect(toF16(-Infinity)).toBe(0xfc00);
    expect(toF16(1e-10)).toBe(0);
    const nan = toF16(NaN);
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x3ff).not.toBe(0);
    expect([fromF16(0x3c00), fromF16(0x7bff), fromF16(0x0001), fromF16(0xfc00)]).toEqual([1, 65504, 2 ** -24, -Infinity]);
    expect(fromF16(0x7e00)).toBeNaN();
  });

  it("round-trips every float16 pattern exactly", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = float32ToFloat16(float16ToFloat32(all));
    for (let h = 0; h < 65536; h++) {
      const isNan = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNan) expect(Number.isNaN(fromF16(back[h]))).toBe(true);
      else if (back[h] !== h) expect(back[h]).toBe(h);
    }
  });

  it("rounds float32 to the nearest float16 and bfloat16, ties to even", () => {
    fc.assert(fc.property(fc.float({ noNaN: true }), (x) => {
      expect(toF16(x)).toBe(nearest(x, fromF16, 0x7bff, 2 ** 16));
      expect(toBf16(x)).toBe(nearest(x, fromBf16, 0x7f7f, 2 ** 128));
    }), { numRuns: 5000 });
  });

  it("encodes known bfloat16 values and keeps nan", () => {
    expect(toBf16(1)).toBe(0x3f80);
    expect(toBf16(1 + 2 ** -8)).toBe(0x3f80); // tie, even stays
    expect(toBf16(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie, odd rounds up
    expect(toBf16(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(toBf16(3.4028234663852886e38)).toBe(0x7f80); // max float32 rounds to inf
    expect(toBf16(-Infinity)).toBe(0xff80);
    const lowPayloadNan = new Float32Array(new Uint32Array([0x7f800001]).buffer);
    expect(fromBf16(float32ToBfloat16(lowPayloadNan)[0])).toBeNaN();
    expect(fromBf16(0x3f80)).toBe(1);
    expect(fromBf16(0xc0a0)).toBe(-5);
  });
});

const tensorArb = fc.record({
  dtype: fc.constantFrom("F32" as const, "F16" as const, "BF16" as const),
  shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }),
}).chain(({ dtype, shape }) => {
  const n = shape.reduce((a, b) => a * b, 1);
  return fc.array(fc.float(), { minLength: n, maxLength: n }).map((values) => ({ dtype, shape, data: Float32Array.from(values) }));
});
const entriesArb = fc.uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 12 }).filter((name) => name !== "__metadata__"), tensorArb), { selector: ([name]) => name, maxLength: 6 })
  .map((pairs): TensorEntry[] => pairs.map(([name, t]) => ({ name, ...t })));

function expectStored(dir: string, entries: TensorEntry[]): void {
  const store = openWeights(dir);
  try {
    expect(store.names().sort()).toEqual(entries.map((e) => e.name).sort());
    for (const entry of entries) {
      const data = entry.data as Float32Array;
      expect(store.info(entry.name)).toEqual({ dtype: entry.dtype, shape: entry.shape });
      const expected = entry.dtype === "F32" ? data
        : entry.dtype === "F16" ? float16ToFloat32(float32ToFloat16(data)) : bfloat16ToFloat32(float32ToBfloat16(data));
      expect(bitsOf(store.readFloat32(entry.name))).toEqual(bitsOf(expected));
    }
  } finally {
    store.close();
  }
}

describe("safetensors", () => {
  it("round-trips F32 exactly and F16/BF16 through their conversion", () => {
    fc.assert(fc.property(entriesArb, (entries) => {
      const dir = tempDir();
      writeSafetensors(join(dir, "model.safetensors"), entries, { format: "pt" });
      expectStored(dir, entries);
      const headerLength = Number(readFileSync(join(dir, "model.safetensors")).readBigUInt64LE(0));
      expect(headerLength % 8).toBe(0);
    }), { numRuns: 60 });
  });

  it("shards a tensor named __proto__ like any other (a case the property below once found)", () => {
    const dir = tempDir();
    const entries = [{ name: "__proto__", dtype: "F32" as const, shape: [1], data: Float32Array.of(3) }];
    const files = writeShardedSafetensors(dir, entries, 64);
    const index = JSON.parse(readFileSync(join(dir, "model.safetensors.index.json"), "utf8"));
    expect(Object.keys(index.weight_map)).toEqual(["__proto__"]);
    expect(new Set(Object.values(index.weight_map))).toEqual(new Set(files));
    expectStored(dir, entries);
  });

  it("writes shards and an index, and reads them back through the index", () => {
    fc.assert(fc.property(entriesArb, fc.integer({ min: 1, max: 64 }), (entries, maxShardBytes) => {
      const dir = tempDir();
      const files = writeShardedSafetensors(dir, entries, maxShardBytes);
      const index = JSON.parse(readFileSync(join(dir, "model.safetensors.index.json"), "utf8"));
      const sizes = { F32: 4, F16: 2, BF16: 2 };
      expect(index.metadata.total_size).toBe(entries.reduce((sum, e) => sum + (e.data as Float32Array).length * sizes[e.dtype], 0));
      expect(new Set(Object.values(index.weight_map))).toEqual(new Set(files));
      files.forEach((f, i) => expect(f).toBe(`model-${String(i + 1).padStart(5, "0")}-of-${String(files.length).padStart(5, "0")}.safetensors`));
      expectStored(dir, entries);
    }), { numRuns: 40 });
  });

  it("produces lazy data one tensor at a time, in order, once each", () => {
    const calls: string[] = [];
    const lazy = (name: string): TensorEntry => ({ name, dtype: "F32", shape: [2], data: () => (calls.push(name), Float32Array.of(1, 2)) });
    const dir = tempDir();
    writeSafetensors(join(dir, "model.safetensors"), [lazy("a"), lazy("b"), lazy("c")]);
    expect(calls).toEqual(["a", "b", "c"]);
  });
});

function expectModelError(fn: () => unknown, code: string, mention: string): void {
  let error: unknown;
  try { fn(); } catch (err) { error = err; }
  expect(error).toBeInstanceOf(ModelError);
  expect((error as ModelError).code).toBe(code);
  expect((error as ModelError).message).toContain(mention);
}

function rawFile(header: unknown, dataBytes: number, headerLength?: bigint): Buffer {
  const json = Buffer.from(typeof header === "string" ? header : JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(headerLength ?? BigInt(json.length));
  return Buffer.concat([prefix, json, Buffer.alloc(dataBytes)]);
}

describe("safetensors validation", () => {
  const ok = { dtype: "F32", shape: [2], data_offsets: [0, 8] };
  const cases: [string, Buffer][] = [
    ["shorter than 8 bytes", Buffer.alloc(4)],
    ["header length past the end", rawFile({}, 0, 1000n)],
    ["header length near 2^64", rawFile({}, 0, 2n ** 64n - 1n)],
    ["header not JSON", rawFile("{{", 0)],
    ["header an array", rawFile([1, 2], 0)],
    ["header null", rawFile("null", 0)],
    ["entry not an object", rawFile({ t: 3 }, 8)],
    ["missing dtype", rawFile({ t: { shape: [2], data_offsets: [0, 8] } }, 8)],
    ["unknown dtype", rawFile({ t: { ...ok, dtype: "Q4" } }, 8)],
    ["shape not an array", rawFile({ t: { ...ok, shape: "2" } }, 8)],
    ["negative dim", rawFile({ t: { ...ok, shape: [-2] } }, 8)],
    ["fractional dim", rawFile({ t: { ...ok, shape: [1.5] } }, 8)],
    ["offsets missing", rawFile({ t: { dtype: "F32", shape: [2] } }, 8)],
    ["one offset", rawFile({ t: { ...ok, data_offsets: [0] } }, 8)],
    ["offsets reversed", rawFile({ t: { ...ok, data_offsets: [8, 0] } }, 8)],
    ["offsets as strings", rawFile({ t: { ...ok, data_offsets: ["0", "8"] } }, 8)],
    ["data past the end", rawFile({ t: ok }, 4)],
    ["size not matching shape", rawFile({ t: { ...ok, shape: [3] } }, 8)],
  ];
  it.each(cases)("rejects a file with %s, naming the file", (_, bytes) => {
    const dir = tempDir();
    const path = join(dir, "model.safetensors");
    writeFileSync(path, bytes);
    expectModelError(() => openWeights(dir), "BAD_WEIGHTS", path);
  });

  it("rejects a truncated checkpoint and never fails with anything but ModelError on corrupt bytes", () => {
    const dir = tempDir();
    const path = join(dir, "model.safetensors");
    const entries: TensorEntry[] = [{ name: "w", dtype: "BF16", shape: [4, 4], data: fillNormal(new Prng(1), 16, 1) }];
    writeSafetensors(path, entries, { format: "pt" });
    const good = readFileSync(path);
    truncateSync(path, good.length - 3);
    expectModelError(() => openWeights(dir), "BAD_WEIGHTS", path);
    fc.assert(fc.property(fc.nat(good.length - 1), fc.nat(255), fc.nat(good.length), (at, byte, length) => {
      const corrupt = Buffer.from(good);
      corrupt[at] = byte;
      writeFileSync(path, corrupt.subarray(0, length));
      try {
        const store = openWeights(dir);
        for (const name of store.names()) store.readFloat32(name);
        store.close();
      } catch (err) {
        expect(err).toBeInstanceOf(ModelError);
      }
    }), { numRuns: 300 });
  });

  it("rejects a malformed index and a missing or incomplete shard, naming the index", () => {
    const dir = tempDir();
    const indexPath = join(dir, "model.safetensors.index.json");
    writeSafetensors(join(dir, "shard.safetensors"), [{ name: "a", dtype: "F32", shape: [1], data: Float32Array.of(1) }]);
    for (const index of ["not json", "[]", JSON.stringify({ weight_map: [] }), JSON.stringify({ weight_map: { a: 3 } }),
      JSON.stringify({ weight_map: { a: "missing.safetensors" } }), JSON.stringify({ weight_map: { b: "shard.safetensors" } })]) {
      writeFileSync(indexPath, index);
      expectModelError(() => openWeights(dir), "BAD_WEIGHTS", indexPath);
    }
    writeFileSync(indexPath, JSON.stringify({ weight_map: { a: "shard.safetensors" } }));
    const store = openWeights(dir);
    expect(store.readFloat32("a")).toEqual(Float32Array.of(1));
    store.close();
  });

  it("reports missing weights, unknown tensors and unsupported dtypes", () => {
    const dir = tempDir();
    expectModelError(() => openWeights(dir), "MISSING_FILE", dir);
    expectModelError(() => openWeights(join(dir, "nope")), "MISSING_FILE", join(dir, "nope"));
    writeFileSync(join(dir, "model.safetensors"), rawFile({ __metadata__: { format: "pt" }, ids: { dtype: "I64", shape: [1], data_offsets: [0, 8] } }, 8));
    const store = openWeights(dir);
    expect(store.names()).toEqual(["ids"]);
    expectModelError(() => store.readFloat32("ids"), "BAD_WEIGHTS", "I64");
    expectModelError(() => store.readFloat32("ghost"), "BAD_WEIGHTS", `tensor "ghost" not found in ${dir}`);
    store.close();
  });
});

describe("prng", () => {
  it("matches mulberry32 and gives standard normals", () => {
    const prng = new Prng(42);
    expect([prng.next(), prng.next(), prng.next()]).toEqual([0.6011037519201636, 0.44829055899754167, 0.8524657934904099]);
    const xs = fillNormal(new Prng(7), 20000, 2, 5);
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    const std = Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length);
    expect(mean).toBeCloseTo(5, 1);
    expect(std).toBeGreaterThan(1.95);
    expect(std).toBeLessThan(2.05);
    expect(bitsOf(fillNormal(new Prng(7), 100, 1))).toEqual(bitsOf(fillNormal(new Prng(7), 100, 1)));
  });
});

const tiny = { vocab_size: 32, hidden_size: 16, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 24, num_hidden_layers: 2 };

describe("random checkpoint", () => {
  it("is deterministic in its seed", () => {
    const config = { architectures: ["LlamaForCausalLM"], ...tiny };
    const [a, b, c] = [tempDir(), tempDir(), tempDir()];
    writeRandomCheckpoint(a, { config, seed: 1, dtype: "BF16" });
    writeRandomCheckpoint(b, { config, seed: 1, dtype: "BF16" });
    writeRandomCheckpoint(c, { config, seed: 2, dtype: "BF16" });
    const bytes = (dir: string) => readFileSync(join(dir, "model.safetensors"));
    expect(bytes(a).equals(bytes(b))).toBe(true);
    expect(bytes(a).equals(bytes(c))).toBe(false);
    expect(JSON.parse(readFileSync(join(a, "config.json"), "utf8"))).toEqual(config);
  });

  it.each([
    ["LlamaForCausalLM", {}, { lmHead: true, bias: false, oBias: false, qkNorm: false, qSize: 16 }],
    ["LlamaForCausalLM", { attention_bias: true, tie_word_embeddings: true }, { lmHead: false, bias: true, oBias: true, qkNorm: false, qSize: 16 }],
    ["Qwen2ForCausalLM", {}, { lmHead: true, bias: true, oBias: false, qkNorm: false, qSize: 16 }],
    ["Qwen3ForCausalLM", { head_dim: 8 }, { lmHead: true, bias: false, oBias: false, qkNorm: true, qSize: 32 }],
  ])("writes the %s tensors with %j", (architecture, extra, want) => {
    const dir = tempDir();
    writeRandomCheckpoint(dir, { config: { architectures: [architecture], ...tiny, ...extra }, seed: 3, normNoise: 0.1 });
    const headDim = want.qSize / 4;
    const kvSize = 2 * headDim;
    const expected: Record<string, number[]> = { "model.embed_tokens.weight": [32, 16], "model.norm.weight": [16] };
    if (want.lmHead) expected["lm_head.weight"] = [32, 16];
    for (const i of [0, 1]) {
      const p = `model.layers.${i}`;
      Object.assign(expected, {
        [`${p}.input_layernorm.weight`]: [16], [`${p}.post_attention_layernorm.weight`]: [16],
        [`${p}.self_attn.q_proj.weight`]: [want.qSize, 16], [`${p}.self_attn.k_proj.weight`]: [kvSize, 16],
        [`${p}.self_attn.v_proj.weight`]: [kvSize, 16], [`${p}.self_attn.o_proj.weight`]: [16, want.qSize],
        [`${p}.mlp.gate_proj.weight`]: [24, 16], [`${p}.mlp.up_proj.weight`]: [24, 16], [`${p}.mlp.down_proj.weight`]: [16, 24],
      });
      if (want.bias) Object.assign(expected, { [`${p}.self_attn.q_proj.bias`]: [want.qSize], [`${p}.self_attn.k_proj.bias`]: [kvSize], [`${p}.self_attn.v_proj.bias`]: [kvSize] });
      if (want.oBias) expected[`${p}.self_attn.o_proj.bias`] = [16];
      if (want.qkNorm) Object.assign(expected, { [`${p}.self_attn.q_norm.weight`]: [headDim], [`${p}.self_attn.k_norm.weight`]: [headDim] });
    }
    const store = openWeights(dir);
    expect(store.names().sort()).toEqual(Object.keys(expected).sort());
    for (const [name, shape] of Object.entries(expected)) expect(store.info(name)).toEqual({ dtype: "F32", shape });
    const norm = store.readFloat32("model.norm.weight");
    expect(norm.every((x) => Math.abs(x - 1) < 0.5) && norm.some((x) => x !== 1)).toBe(true);
    const embed = store.readFloat32("model.embed_tokens.weight");
    const std = Math.sqrt(embed.reduce((a, b) => a + b * b, 0) / embed.length);
    expect(std).toBeGreaterThan(0.017);
    expect(std).toBeLessThan(0.023);
    store.close();
  });

  it("gives the same tensors sharded or not, with all-one norms by default", () => {
    const config = { architectures: ["Qwen2ForCausalLM"], ...tiny };
    const [single, sharded] = [tempDir(), join(tempDir(), "nested")];
    mkdirSync(single, { recursive: true });
    writeRandomCheckpoint(single, { config, seed: 9 });
    writeRandomCheckpoint(sharded, { config, seed: 9, maxShardBytes: 4096 });
    const a = openWeights(single);
    const b = openWeights(sharded);
    expect(b.names()).toEqual(a.names());
    for (const name of a.names()) expect(bitsOf(b.readFloat32(name))).toEqual(bitsOf(a.readFloat32(name)));
    expect(a.readFloat32("model.layers.0.input_layernorm.weight").every((x) => x === 1)).toBe(true);
    a.close();
    b.close();
  });
});
