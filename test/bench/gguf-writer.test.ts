/**
 * The GGUF writer (bench/gguf-writer.ts), read back by a small reader written here from
 * ggml's spec: header, keys, tensor infos, alignment, and the data; Q8_0 and Q4_0 blocks
 * decoded as ggml's reference dequantizers decode them, within half a quantization step.
 *
 * NOTE: checked by hand against llama.cpp itself (node-llama-cpp 3.22.1, its prebuilt CPU
 * binary) while it was written: the default model's F32 file gives tokenmill's fp32 greedy
 * tokens, and its Q8_0 file tokenmill's int8 tokens, for the same prompt. The peer bench
 * (issue 28) is to make that a test.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { quantizeQ4_0, quantizeQ8_0, writeGguf } from "../../bench/gguf-writer.ts";
import { float16ToFloat32 } from "../../models/weights/float-formats.ts";
import { openWeights } from "../../models/weights/safetensors.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";

const dir = mkdtempSync(join(tmpdir(), "tokenmill-gguf-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const half = (view: DataView, at: number) => float16ToFloat32(Uint16Array.of(view.getUint16(at, true)))[0];

/** ggml's dequantize_row_q8_0. */
function dequantQ8_0(bytes: Uint8Array, n: number): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  for (let b = 0; b < n / 32; b++) for (let j = 0; j < 32; j++) out[b * 32 + j] = view.getInt8(b * 34 + 2 + j) * half(view, b * 34);
  return out;
}

/** ggml's dequantize_row_q4_0: byte j holds value j (low nibble) and value j + 16 (high nibble), each minus 8. */
function dequantQ4_0(bytes: Uint8Array, n: number): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  for (let b = 0; b < n / 32; b++) {
    const d = half(view, b * 18);
    for (let j = 0; j < 16; j++) {
      const q = bytes[b * 18 + 2 + j];
      out[b * 32 + j] = ((q & 0x0f) - 8) * d;
      out[b * 32 + j + 16] = ((q >> 4) - 8) * d;
    }
  }
  return out;
}

interface Gguf { version: number; keys: Map<string, unknown>; tensors: { name: string; dims: number[]; type: number; offset: number }[]; dataStart: number; bytes: Uint8Array }

/** A GGUF reader, from the spec: enough of it to check what the writer wrote. */
function readGguf(path: string): Gguf {
  const bytes = readFileSync(path);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const u32 = () => ((at += 4), view.getUint32(at - 4, true));
  const u64 = () => ((at += 8), Number(view.getBigUint64(at - 8, true)));
  const str = () => {
    const n = u64();
    at += n;
    return bytes.subarray(at - n, at).toString("utf8");
  };
  const value = (type: number): unknown => {
    switch (type) {
      case 4: return u32();
      case 5: return ((at += 4), view.getInt32(at - 4, true));
      case 6: return ((at += 4), view.getFloat32(at - 4, true));
      case 7: return ((at += 1), bytes[at - 1] === 1);
      case 8: return str();
      case 9: {
        const elem = u32();
        return Array.from({ length: u64() }, () => value(elem));
      }
      default: throw new Error(`value type ${type} not expected here`);
    }
  };
  expect(bytes.subarray(0, 4).toString("latin1")).toBe("GGUF");
  at = 4;
  const version = u32();
  const [numTensors, numKeys] = [u64(), u64()];
  const keys = new Map<string, unknown>();
  for (let i = 0; i < numKeys; i++) {
    const key = str();
    keys.set(key, value(u32()));
  }
  const tensors = Array.from({ length: numTensors }, () => {
    const name = str();
    const dims = Array.from({ length: u32() }, () => u64());
    return { name, dims, type: u32(), offset: u64() };
  });
  return { version, keys, tensors, dataStart: Math.ceil(at / 32) * 32, bytes };
}

describe("Q8_0 and Q4_0 blocks", () => {
  const values = Float32Array.from({ length: 32 * 64 }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)) * (i % 97 === 0 ? 0 : 1));
  // NOTE: the scale is stored as float16, so a value may miss by its rounding too: 127 × 2^-11 of a step for Q8_0.
  it("Q8_0: 34 bytes per 32 values, decoded by ggml's rule within half a step of the block's scale (plus its float16 rounding)", () => {
    const encoded = quantizeQ8_0(values);
    expect(encoded.length).toBe((values.length / 32) * 34);
    const decoded = dequantQ8_0(encoded, values.length);
    for (let b = 0; b < values.length / 32; b++) {
      const amax = Math.max(...values.subarray(b * 32, b * 32 + 32).map(Math.abs));
      for (let j = 0; j < 32; j++) expect(Math.abs(decoded[b * 32 + j] - values[b * 32 + j])).toBeLessThanOrEqual((amax / 127) * (0.5 + 127 * 2 ** -11) + 1e-6);
    }
  });

  // NOTE: Q4_0's codes run from -8 to 7 steps of max / -8: the value of largest magnitude is exact, and one of the opposite
  // sign and the same size lands a whole step short (clamped at 15), as in ggml's own quantizer.
  it("Q4_0: 18 bytes per 32 values, nibbles as ggml packs them, within one step", () => {
    const encoded = quantizeQ4_0(values);
    expect(encoded.length).toBe((values.length / 32) * 18);
    const decoded = dequantQ4_0(encoded, values.length);
    for (let b = 0; b < values.length / 32; b++) {
      const amax = Math.max(...values.subarray(b * 32, b * 32 + 32).map(Math.abs));
      for (let j = 0; j < 32; j++) expect(Math.abs(decoded[b * 32 + j] - values[b * 32 + j])).toBeLessThanOrEqual((amax / 8) * (1 + 8 * 2 ** -11) + 1e-6);
    }
    // A swapped nibble order (value j + 16 in the low nibble) would fail: the first half must decode to the first half.
    // Whole steps of 1 (the largest magnitude is -8): the first half rises from -8 to 7, the second falls from 7 to -8.
    const ramp = Float32Array.from({ length: 32 }, (_, j) => (j < 16 ? j - 8 : 23 - j));
    expect(Array.from(dequantQ4_0(quantizeQ4_0(ramp), 32)).map(Math.round)).toEqual(Array.from(ramp));
  });
});

describe("writeGguf", () => {
  const model = ensureDefaultModel();

  it("writes a Qwen3 checkpoint as GGUF v3 with llama.cpp's keys, tensor names and tokenizer, and F32 data equal to the checkpoint's", () => {
    const path = join(dir, "f32.gguf");
    writeGguf(model, path, "F32");
    const gguf = readGguf(path);
    expect(gguf.version).toBe(3);
    expect(Object.fromEntries([...gguf.keys].filter(([k]) => k.startsWith("qwen3.") || k === "general.architecture"))).toEqual({
      "general.architecture": "qwen3", "qwen3.context_length": 8192, "qwen3.embedding_length": 96, "qwen3.block_count": 6, "qwen3.feed_forward_length": 256,
      "qwen3.attention.head_count": 4, "qwen3.attention.head_count_kv": 2, "qwen3.attention.key_length": 32, "qwen3.attention.value_length": 32,
      "qwen3.rope.freq_base": 1_000_000, "qwen3.attention.layer_norm_rms_epsilon": expect.closeTo(1e-6, 10),
    });
    const tokens = gguf.keys.get("tokenizer.ggml.tokens") as string[];
    const types = gguf.keys.get("tokenizer.ggml.token_type") as number[];
    expect(tokens).toHaveLength(151_936);
    expect([tokens[151_645], types[151_645]]).toEqual(["<|im_end|>", 3]);
    expect(types[151_935]).toBe(5);
    expect(gguf.keys.get("tokenizer.ggml.model")).toBe("gpt2");
    expect(gguf.keys.get("tokenizer.ggml.pre")).toBe("qwen2");
    expect((gguf.keys.get("tokenizer.ggml.merges") as string[])[0]).toBe("Ġ Ġ");
    // 2 + 11 per layer; tied embeddings: no output.weight (llama.cpp reads token_embd for the head).
    expect(gguf.tensors).toHaveLength(2 + 6 * 11);
    expect(gguf.tensors.map((t) => t.name)).not.toContain("output.weight");
    const q = gguf.tensors.find((t) => t.name === "blk.0.attn_q.weight")!;
    expect(q).toMatchObject({ dims: [96, 128], type: 0 });
    for (const t of gguf.tensors) expect(t.offset % 32).toBe(0);
    const weights = openWeights(model);
    try {
      const expected = weights.readFloat32("model.layers.0.self_attn.q_proj.weight");
      const start = gguf.dataStart + q.offset;
      expect(new Float32Array(gguf.bytes.buffer.slice(gguf.bytes.byteOffset + start, gguf.bytes.byteOffset + start + expected.byteLength))).toEqual(expected);
    } finally {
      weights.close();
    }
    const last = gguf.tensors.at(-1)!;
    expect(gguf.bytes.length).toBe(gguf.dataStart + last.offset + Math.ceil((last.dims[0] * (last.dims[1] ?? 1) * 4) / 32) * 32);
  });

  it("quantizes the matrices to Q8_0 or Q4_0 (the embedding Q8_0 in both) and keeps the norms F32", () => {
    for (const [type, ggmlType, blockBytes] of [["Q8_0", 8, 34], ["Q4_0", 2, 18]] as const) {
      const path = join(dir, `${type}.gguf`);
      writeGguf(model, path, type);
      const gguf = readGguf(path);
      const byName = new Map(gguf.tensors.map((t) => [t.name, t]));
      expect(byName.get("blk.3.ffn_down.weight")!.type).toBe(ggmlType);
      // The embedding and head stay 8-bit, as tokenmill's int4 keeps them.
      expect(byName.get("token_embd.weight")!.type).toBe(8);
      expect(byName.get("blk.3.ffn_norm.weight")!.type).toBe(0);
      const down = byName.get("blk.3.ffn_down.weight")!;
      const numel = down.dims[0] * down.dims[1];
      const start = gguf.dataStart + down.offset;
      const decoded = (type === "Q8_0" ? dequantQ8_0 : dequantQ4_0)(gguf.bytes.subarray(start, start + (numel / 32) * blockBytes), numel);
      const weights = openWeights(model);
      try {
        const original = weights.readFloat32("model.layers.3.mlp.down_proj.weight");
        const scale = Math.max(...original.map(Math.abs));
        const worst = Math.max(...decoded.map((v, i) => Math.abs(v - original[i])));
        expect(worst).toBeLessThan(scale * (type === "Q8_0" ? 0.01 : 0.1));
      } finally {
        weights.close();
      }
    }
  });
});
