/**
 * A checkpoint as GGUF (v3), for running the same weights through llama.cpp beside tokenmill
 * (issue 28's peer bench): F32, or the big linears as Q8_0 or Q4_0 blocks of 32 (the norms stay
 * F32), with llama.cpp's `qwen3` tensor names and hyperparameters and the BPE tokenizer
 * (`gpt2` model, `qwen2` pre-tokenizer) as its tokenizer keys.
 *
 * The embedding and LM head (token_embd, output) are Q8_0 in a Q4_0 file: the same precision as
 * tokenmill's --quantization int4, which keeps them int8 (decoder-graph.ts), and as llama.cpp's
 * own llama-quantize keeps them above 4 bits (Q6_K for the output tensor).
 *
 * The layout, from ggml's gguf spec: "GGUF", version 3, tensor and key counts (u64); the keys
 * (string, type, value); each tensor's name, dims (innermost first), ggml type and offset; then
 * the data, every tensor aligned to 32 bytes.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, statSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import { cacheDir } from "../models/cache-dir.ts";
import { readCheckpoint } from "../models/checkpoint.ts";
import { openWeights } from "../models/weights/safetensors.ts";
import { float32ToFloat16 } from "../models/weights/float-formats.ts";

export const GGUF_TYPES = ["F32", "Q8_0", "Q4_0"] as const;
export type GgufType = (typeof GGUF_TYPES)[number];
/** Part of a cached file's name: v2 writes the embedding Q8_0 in Q4_0 files. */
const GGUF_WRITER_VERSION = 2;

const GGML_TYPE = { F32: 0, Q4_0: 2, Q8_0: 8 } as const;
const ALIGNMENT = 32;
const BLOCK = 32;

type Value = { type: "u32"; value: number } | { type: "f32"; value: number } | { type: "bool"; value: boolean } | { type: "string"; value: string }
  | { type: "strings"; value: string[] } | { type: "i32s"; value: Int32Array };

/** Writes `checkpointDir` (a Qwen3 checkpoint) as GGUF at `outPath`. */
export function writeGguf(checkpointDir: string, outPath: string, type: GgufType): void {
  const checkpoint = readCheckpoint(checkpointDir);
  const c = checkpoint.config;
  if (c.architecture !== "Qwen3ForCausalLM") throw new Error(`the GGUF writer knows Qwen3 only, not ${c.architecture}`);
  const tokenizer = JSON.parse(readFileSync(checkpoint.tokenizerJson, "utf8")) as {
    model: { vocab: Record<string, number>; merges: (string | [string, string])[] };
    added_tokens: { id: number; content: string; special: boolean }[];
  };
  const tokens = new Array<string>(c.vocabSize);
  const tokenTypes = new Int32Array(c.vocabSize).fill(5);
  for (const [text, id] of Object.entries(tokenizer.model.vocab)) if (id < c.vocabSize) [tokens[id], tokenTypes[id]] = [text, 1];
  // NOTE: llama.cpp treats every <|...|> token as a control token (and warns about one typed otherwise), special or not.
  for (const added of tokenizer.added_tokens) {
    if (added.id < c.vocabSize) [tokens[added.id], tokenTypes[added.id]] = [added.content, added.special || /^<\|.*\|>$/.test(added.content) ? 3 : 4];
  }
  for (let id = 0; id < c.vocabSize; id++) tokens[id] ??= `[PAD${id}]`;
  const eos = checkpoint.eosTokenIds[0] ?? c.eosTokenIds[0];

  const keys: [string, Value][] = [
    ["general.architecture", { type: "string", value: "qwen3" }],
    ["general.name", { type: "string", value: checkpoint.name }],
    ["general.alignment", { type: "u32", value: ALIGNMENT }],
    ["qwen3.context_length", { type: "u32", value: c.maxPositionEmbeddings }],
    ["qwen3.embedding_length", { type: "u32", value: c.hiddenSize }],
    ["qwen3.block_count", { type: "u32", value: c.numLayers }],
    ["qwen3.feed_forward_length", { type: "u32", value: c.intermediateSize }],
    ["qwen3.attention.head_count", { type: "u32", value: c.numHeads }],
    ["qwen3.attention.head_count_kv", { type: "u32", value: c.numKvHeads }],
    ["qwen3.attention.key_length", { type: "u32", value: c.headDim }],
    ["qwen3.attention.value_length", { type: "u32", value: c.headDim }],
    ["qwen3.rope.freq_base", { type: "f32", value: c.ropeTheta }],
    ["qwen3.attention.layer_norm_rms_epsilon", { type: "f32", value: c.rmsNormEps }],
    ["tokenizer.ggml.model", { type: "string", value: "gpt2" }],
    ["tokenizer.ggml.pre", { type: "string", value: "qwen2" }],
    ["tokenizer.ggml.tokens", { type: "strings", value: tokens }],
    ["tokenizer.ggml.token_type", { type: "i32s", value: tokenTypes }],
    ["tokenizer.ggml.merges", { type: "strings", value: tokenizer.model.merges.map((m) => (Array.isArray(m) ? m.join(" ") : m)) }],
    ["tokenizer.ggml.add_bos_token", { type: "bool", value: false }],
    ...(eos !== undefined ? [["tokenizer.ggml.eos_token_id", { type: "u32", value: eos }] as [string, Value]] : []),
    ...(c.bosTokenId !== null ? [["tokenizer.ggml.bos_token_id", { type: "u32", value: c.bosTokenId }] as [string, Value], ["tokenizer.ggml.padding_token_id", { type: "u32", value: c.bosTokenId }] as [string, Value]] : []),
    ...(checkpoint.chatTemplate ? [["tokenizer.chat_template", { type: "string", value: checkpoint.chatTemplate }] as [string, Value]] : []),
  ];

  const weights = openWeights(checkpointDir);
  try {
    const tensors = tensorPlan(weights.names(), c.numLayers, c.tieWordEmbeddings).map(({ hf, gguf }) => {
      const { shape } = weights.info(hf);
      const quantized = type !== "F32" && shape.length === 2;
      const head = gguf === "token_embd.weight" || gguf === "output.weight";
      const ggmlType = !quantized ? GGML_TYPE.F32 : head ? GGML_TYPE.Q8_0 : GGML_TYPE[type];
      const numel = shape.reduce((a, b) => a * b, 1);
      if (quantized && shape[1] % BLOCK !== 0) throw new Error(`${hf}: its rows of ${shape[1]} are not whole blocks of ${BLOCK}`);
      const bytes = ggmlType === GGML_TYPE.F32 ? numel * 4 : (numel / BLOCK) * (ggmlType === GGML_TYPE.Q8_0 ? 34 : 18);
      // NOTE: GGUF lists dims innermost first: a [rows, cols] matrix is [cols, rows].
      return { hf, gguf, dims: [...shape].reverse(), ggmlType, bytes };
    });
    const header = new Chunks();
    header.u32(0x46554747); // "GGUF"
    header.u32(3);
    header.u64(tensors.length);
    header.u64(keys.length);
    for (const [key, value] of keys) writeKey(header, key, value);
    let offset = 0;
    const offsets = tensors.map((t) => {
      const at = offset;
      offset = align(offset + t.bytes);
      return at;
    });
    tensors.forEach((t, i) => {
      header.string(t.gguf);
      header.u32(t.dims.length);
      for (const d of t.dims) header.u64(d);
      header.u32(t.ggmlType);
      header.u64(offsets[i]);
    });
    const fd = openSync(outPath, "w");
    try {
      const head = header.bytes();
      writeSync(fd, head);
      writeSync(fd, new Uint8Array(align(head.length) - head.length));
      tensors.forEach((t) => {
        const data = weights.readFloat32(t.hf);
        const encoded = t.ggmlType === GGML_TYPE.F32 ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
          : t.ggmlType === GGML_TYPE.Q8_0 ? quantizeQ8_0(data) : quantizeQ4_0(data);
        writeSync(fd, encoded);
        writeSync(fd, new Uint8Array(align(encoded.length) - encoded.length));
      });
    } finally {
      closeSync(fd);
    }
  } finally {
    weights.close();
  }
}

/** The checkpoint's GGUF of `type` in the cache (.cache/gguf/), written when missing or older than the checkpoint's weights. */
export function ensureGguf(checkpointDir: string, type: GgufType): string {
  const { name } = readCheckpoint(checkpointDir);
  const path = cacheDir("gguf", `${name}-${type}-v${GGUF_WRITER_VERSION}.gguf`);
  const weights = join(checkpointDir, "model.safetensors");
  const newest = existsSync(weights) ? statSync(weights).mtimeMs : 0;
  if (existsSync(path) && statSync(path).mtimeMs >= newest) return path;
  mkdirSync(dirname(path), { recursive: true });
  const scratch = `${path}.partial-${process.pid}`;
  writeGguf(checkpointDir, scratch, type);
  renameSync(scratch, path);
  return path;
}

/** HF tensor names and llama.cpp's, for a Qwen3 checkpoint. */
function tensorPlan(names: string[], numLayers: number, tied: boolean): { hf: string; gguf: string }[] {
  const plan = [{ hf: "model.embed_tokens.weight", gguf: "token_embd.weight" }, { hf: "model.norm.weight", gguf: "output_norm.weight" }];
  if (!tied && names.includes("lm_head.weight")) plan.push({ hf: "lm_head.weight", gguf: "output.weight" });
  const perLayer: [string, string][] = [
    ["input_layernorm", "attn_norm"], ["self_attn.q_proj", "attn_q"], ["self_attn.k_proj", "attn_k"], ["self_attn.v_proj", "attn_v"],
    ["self_attn.o_proj", "attn_output"], ["self_attn.q_norm", "attn_q_norm"], ["self_attn.k_norm", "attn_k_norm"],
    ["post_attention_layernorm", "ffn_norm"], ["mlp.gate_proj", "ffn_gate"], ["mlp.up_proj", "ffn_up"], ["mlp.down_proj", "ffn_down"],
  ];
  for (let layer = 0; layer < numLayers; layer++) {
    for (const [hf, gguf] of perLayer) plan.push({ hf: `model.layers.${layer}.${hf}.weight`, gguf: `blk.${layer}.${gguf}.weight` });
  }
  for (const { hf } of plan) if (!names.includes(hf)) throw new Error(`the checkpoint has no ${hf}`);
  return plan;
}

/** Q8_0: per 32 values, a float16 scale (max |x| / 127) and 32 int8. */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  const out = new Uint8Array((x.length / BLOCK) * 34);
  const view = new DataView(out.buffer);
  for (let b = 0; b < x.length / BLOCK; b++) {
    let amax = 0;
    for (let j = 0; j < BLOCK; j++) amax = Math.max(amax, Math.abs(x[b * BLOCK + j]));
    const d = amax / 127;
    const id = d === 0 ? 0 : 1 / d;
    view.setUint16(b * 34, float32ToFloat16(Float32Array.of(d))[0], true);
    for (let j = 0; j < BLOCK; j++) view.setInt8(b * 34 + 2 + j, Math.round(x[b * BLOCK + j] * id));
  }
  return out;
}

/** Q4_0: per 32 values, a float16 scale (the value of largest magnitude / -8) and 16 bytes: value j in the low nibble of byte j, value j + 16 in its high nibble, each stored + 8. */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  const out = new Uint8Array((x.length / BLOCK) * 18);
  const view = new DataView(out.buffer);
  for (let b = 0; b < x.length / BLOCK; b++) {
    let max = 0;
    for (let j = 0; j < BLOCK; j++) if (Math.abs(x[b * BLOCK + j]) > Math.abs(max)) max = x[b * BLOCK + j];
    const d = max / -8;
    const id = d === 0 ? 0 : 1 / d;
    view.setUint16(b * 18, float32ToFloat16(Float32Array.of(d))[0], true);
    const q = (v: number) => Math.min(15, Math.trunc(v * id + 8.5));
    for (let j = 0; j < BLOCK / 2; j++) out[b * 18 + 2 + j] = q(x[b * BLOCK + j]) | (q(x[b * BLOCK + j + BLOCK / 2]) << 4);
  }
  return out;
}

const align = (n: number) => Math.ceil(n / ALIGNMENT) * ALIGNMENT;

function writeKey(out: Chunks, key: string, value: Value): void {
  out.string(key);
  if (value.type === "u32") {
    out.u32(4);
    out.u32(value.value);
  } else if (value.type === "f32") {
    out.u32(6);
    out.f32(value.value);
  } else if (value.type === "bool") {
    out.u32(7);
    out.u8(value.value ? 1 : 0);
  } else if (value.type === "string") {
    out.u32(8);
    out.string(value.value);
  } else if (value.type === "strings") {
    out.u32(9);
    out.u32(8);
    out.u64(value.value.length);
    for (const s of value.value) out.string(s);
  } else {
    out.u32(9);
    out.u32(5);
    out.u64(value.value.length);
    out.raw(new Uint8Array(value.value.buffer, value.value.byteOffset, value.value.byteLength));
  }
}

/** Little-endian bytes, appended. */
class Chunks {
  private readonly parts: Uint8Array[] = [];
  private length = 0;

  raw(bytes: Uint8Array): void {
    this.parts.push(bytes);
    this.length += bytes.length;
  }

  u8(n: number): void {
    this.raw(Uint8Array.of(n));
  }

  u32(n: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, n, true);
    this.raw(b);
  }

  u64(n: number): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
    this.raw(b);
  }

  f32(n: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, n, true);
    this.raw(b);
  }

  string(s: string): void {
    const bytes = Buffer.from(s, "utf8");
    this.u64(bytes.length);
    this.raw(bytes);
  }

  bytes(): Uint8Array {
    return Buffer.concat(this.parts, this.length);
  }
}
