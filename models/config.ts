/**
 * Reads a Hugging Face `config.json` into a {@link ModelConfig}: the numbers the graph
 * builder and the engine need, with the family's flags already applied.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { familyFor } from "./families.ts";
import { ModelError } from "./model-error.ts";

export interface RopeScaling {
  type: "default" | "linear" | "llama3";
  factor: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
}

export interface ModelConfig {
  architecture: string;
  family: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  rmsNormEps: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** Qwen2: q/k/v projections carry a bias. */
  qkvBias: boolean;
  /** Llama and Qwen3 with attention_bias: o_proj carries a bias too. */
  oBias: boolean;
  /** Llama with mlp_bias: gate, up and down projections carry biases. */
  mlpBias: boolean;
  /** Qwen3: per-head RMSNorm on q and k before RoPE. */
  qkNorm: boolean;
  /** Mistral: each token attends only to the last slidingWindow positions. */
  slidingWindow: number | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

export function readModelConfig(dir: string): ModelConfig {
  const path = join(dir, "config.json");
  let raw: Json;
  try {
    raw = JSON.parse(readFileSync(path, "utf8")) as Json;
  } catch (err) {
    throw new ModelError("BAD_CONFIG", `cannot read ${path}: ${(err as Error).message}`);
  }
  return parseModelConfig(raw, path);
}

export function parseModelConfig(raw: Json, source = "config.json"): ModelConfig {
  const architecture = Array.isArray(raw.architectures) ? String(raw.architectures[0]) : String(raw.model_type ?? "");
  const family = familyFor(architecture);
  const int = (key: string, fallback?: number): number => {
    const value = raw[key] ?? fallback;
    if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
      throw new ModelError("BAD_CONFIG", `${source}: "${key}" must be a positive integer, got ${JSON.stringify(value)}`);
    }
    return value;
  };
  const num = (key: string, fallback: number): number => {
    const value = raw[key] ?? fallback;
    if (typeof value !== "number" || !(value > 0)) {
      throw new ModelError("BAD_CONFIG", `${source}: "${key}" must be a positive number, got ${JSON.stringify(value)}`);
    }
    return value;
  };
  const hiddenSize = int("hidden_size");
  const numHeads = int("num_attention_heads");
  const numKvHeads = int("num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ModelError("BAD_CONFIG", `${source}: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  }
  // NOTE: transformers' Qwen3Config defaults head_dim to 128, not hidden_size / heads.
  const headDim = raw.head_dim == null ? (family.name === "qwen3" ? 128 : hiddenSize / numHeads) : int("head_dim");
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ModelError("BAD_CONFIG", `${source}: head dimension ${headDim} must be an even integer`);
  }
  // NOTE: newer transformers versions keep theta and scaling together in rope_parameters.
  const ropeParams = typeof raw.rope_parameters === "object" && raw.rope_parameters !== null ? (raw.rope_parameters as Json) : null;
  return {
    architecture,
    family: family.name,
    vocabSize: int("vocab_size"),
    hiddenSize,
    intermediateSize: int("intermediate_size"),
    numLayers: int("num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    ropeTheta: typeof ropeParams?.rope_theta === "number" ? ropeParams.rope_theta : num("rope_theta", 10000),
    ropeScaling: parseRopeScaling(ropeParams ?? raw.rope_scaling, source),
    rmsNormEps: num("rms_norm_eps", 1e-6),
    maxPositionEmbeddings: int("max_position_embeddings", 4096),
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    qkvBias: family.qkvBias || (family.attentionBiasFlag && raw.attention_bias === true),
    oBias: family.attentionBiasFlag && raw.attention_bias === true,
    mlpBias: family.name === "llama" && raw.mlp_bias === true,
    qkNorm: family.qkNorm,
    slidingWindow: slidingWindowOf(raw, family.name, source),
    bosTokenId: typeof raw.bos_token_id === "number" ? raw.bos_token_id : null,
    eosTokenIds: tokenIdList(raw.eos_token_id),
  };
}

function slidingWindowOf(raw: Json, family: string, source: string): number | null {
  if (family === "mistral") return typeof raw.sliding_window === "number" ? raw.sliding_window : null;
  if (raw.use_sliding_window === true) {
    throw new ModelError("UNSUPPORTED_MODEL", `${source}: use_sliding_window is not supported for ${family}`);
  }
  return null;
}

export function tokenIdList(value: unknown): number[] {
  if (typeof value === "number") return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === "number");
  return [];
}

function parseRopeScaling(value: unknown, source: string): RopeScaling {
  if (value == null) return { type: "default", factor: 1 };
  const raw = value as Json;
  const type = String(raw.rope_type ?? raw.type ?? "default");
  const factor = typeof raw.factor === "number" ? raw.factor : 1;
  if (type === "default") return { type, factor: 1 };
  if (type === "linear") return { type, factor };
  if (type === "llama3") {
    return {
      type, factor,
      lowFreqFactor: Number(raw.low_freq_factor ?? 1),
      highFreqFactor: Number(raw.high_freq_factor ?? 4),
      originalMaxPositionEmbeddings: Number(raw.original_max_position_embeddings ?? 8192),
    };
  }
  throw new ModelError("UNSUPPORTED_MODEL", `${source}: rope_scaling type "${type}" is not supported (supported: default, linear, llama3)`);
}
