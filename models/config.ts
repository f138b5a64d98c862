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
  /** Qwen3: per-head RMSNorm on q and k before RoPE. */
  qkNorm: boolean;
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
  const headDim = raw.head_dim == null ? hiddenSize / numHeads : int("head_dim");
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ModelError("BAD_CONFIG", `${source}: head dimension ${headDim} must be an even integer`);
  }
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
    ropeTheta: num("rope_theta", 10000),
    ropeScaling: parseRopeScaling(raw.rope_scaling, source),
    rmsNormEps: num("rms_norm_eps", 1e-6),
    maxPositionEmbeddings: int("max_position_embeddings", 4096),
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    qkvBias: family.qkvBias || raw.attention_bias === true,
    qkNorm: family.qkNorm,
    bosTokenId: typeof raw.bos_token_id === "number" ? raw.bos_token_id : null,
    eosTokenIds: tokenIdList(raw.eos_token_id),
  };
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
