/** Tiny random checkpoints of each family, generated once into the cache. */
import { existsSync, renameSync, rmSync } from "node:fs";
import { cacheDir } from "../../models/cache-dir.ts";
import { writeRandomCheckpoint } from "../../models/synthetic/random-checkpoint.ts";

export const BASE_CONFIG = {
  vocab_size: 320,
  hidden_size: 48,
  intermediate_size: 96,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 12,
  rope_theta: 10000,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 256,
  eos_token_id: 2,
};

export interface TinyModelSpec {
  name: string;
  config: Record<string, unknown>;
  dtype?: "F32" | "F16" | "BF16";
  maxShardBytes?: number;
}

export const FAMILY_MODELS: TinyModelSpec[] = [
  { name: "llama-tied", config: { ...BASE_CONFIG, architectures: ["LlamaForCausalLM"], tie_word_embeddings: true } },
  { name: "llama-untied-bias", config: { ...BASE_CONFIG, architectures: ["LlamaForCausalLM"], tie_word_embeddings: false, attention_bias: true, mlp_bias: true } },
  {
    name: "llama3-rope-bf16", dtype: "BF16",
    config: {
      ...BASE_CONFIG, architectures: ["LlamaForCausalLM"], num_key_value_heads: 1, rope_theta: 500000,
      rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 },
    },
  },
  { name: "mistral-window", config: { ...BASE_CONFIG, architectures: ["MistralForCausalLM"], sliding_window: 5 } },
  { name: "qwen2-bias-f16-sharded", dtype: "F16", maxShardBytes: 40_000, config: { ...BASE_CONFIG, architectures: ["Qwen2ForCausalLM"], tie_word_embeddings: true } },
  { name: "qwen3-qknorm", config: { ...BASE_CONFIG, architectures: ["Qwen3ForCausalLM"], tie_word_embeddings: true, num_attention_heads: 6, num_key_value_heads: 2, head_dim: 8 } },
];

/**
 * The families again with head_dim 16: ONNX Runtime's WebGPU PagedAttention needs a head size
 * that is a multiple of 8 (the models above have 12 and 8 with odd layouts on purpose).
 */
export const WEBGPU_MODELS: TinyModelSpec[] = [
  { name: "webgpu-llama", config: { ...BASE_CONFIG, architectures: ["LlamaForCausalLM"], tie_word_embeddings: false, head_dim: 16 } },
  { name: "webgpu-qwen2", config: { ...BASE_CONFIG, architectures: ["Qwen2ForCausalLM"], tie_word_embeddings: true, head_dim: 16 } },
  { name: "webgpu-qwen3", config: { ...BASE_CONFIG, architectures: ["Qwen3ForCausalLM"], tie_word_embeddings: true, num_attention_heads: 6, num_key_value_heads: 2, head_dim: 16 } },
  { name: "webgpu-mistral-window", config: { ...BASE_CONFIG, architectures: ["MistralForCausalLM"], head_dim: 16, sliding_window: 5 } },
];

/** One layer with wide K/V rows (8 heads of 128: 32 KiB a block a layer), for pools near the adapter's binding limits. */
export const WIDE_KV_MODEL: TinyModelSpec = {
  name: "webgpu-wide-kv", config: { ...BASE_CONFIG, architectures: ["LlamaForCausalLM"], num_hidden_layers: 1, num_attention_heads: 8, num_key_value_heads: 8, head_dim: 128 },
};

/** Writes the checkpoint if it isn't in the cache yet, and returns its folder. */
export function tinyCheckpoint(spec: TinyModelSpec): string {
  const dir = cacheDir("test-models", spec.name);
  if (existsSync(dir)) return dir;
  // NOTE: test files run in parallel; write aside and rename so no one reads a half-written checkpoint.
  const scratch = `${dir}.partial-${process.pid}`;
  writeRandomCheckpoint(scratch, { config: spec.config, seed: 7, std: 0.15, normNoise: 0.2, dtype: spec.dtype, maxShardBytes: spec.maxShardBytes });
  try {
    renameSync(scratch, dir);
  } catch {
    rmSync(scratch, { recursive: true, force: true });
  }
  return dir;
}
