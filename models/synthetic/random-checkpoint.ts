/**
 * Writes a synthetic Llama-style checkpoint (config.json plus safetensors with Hugging Face
 * tensor names) filled with seeded random weights, for tests and benchmarks without downloads.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseModelConfig } from "../config.ts";
import { deriveSeed, fillNormal, Prng } from "../prng.ts";
import { writeSafetensors, writeShardedSafetensors, type TensorEntry } from "../weights/safetensors.ts";

export interface RandomCheckpointOptions {
  /** Written verbatim as config.json; also decides the tensors and their shapes. */
  config: Record<string, unknown>;
  seed: number;
  /** Storage dtype of every tensor; default F32. */
  dtype?: "F32" | "F16" | "BF16";
  /** Standard deviation of matrices and biases; default 0.02. */
  std?: number;
  /** Norm weights are 1 + normNoise * Normal(0, 1); default 0 (all ones). */
  normNoise?: number;
  /** When given, write shards of at most this size plus an index instead of one model.safetensors. */
  maxShardBytes?: number;
}

/**
 * Writes `config.json` and the weights of a decoder described by `options.config` into `dir`.
 * The same options always give the same bytes.
 *
 * NOTE: each tensor draws from its own stream seeded by (seed, tensor name), and is produced
 * only when the writer reaches it, so a multi-GiB checkpoint is never held in memory at once
 * and the values don't depend on sharding or write order.
 */
export function writeRandomCheckpoint(dir: string, options: RandomCheckpointOptions): void {
  const entries = randomCheckpointEntries(options);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(options.config, null, 2) + "\n");
  if (options.maxShardBytes !== undefined) {
    writeShardedSafetensors(dir, entries, options.maxShardBytes);
  } else {
    writeSafetensors(join(dir, "model.safetensors"), entries, { format: "pt" });
  }
}

/** The tensors of the checkpoint, in Hugging Face order, with lazily generated data. */
export function randomCheckpointEntries(options: RandomCheckpointOptions): TensorEntry[] {
  const config = parseModelConfig(options.config, "random checkpoint config");
  const { seed, dtype = "F32", std = 0.02, normNoise = 0 } = options;
  const hidden = config.hiddenSize;
  const qSize = config.numHeads * config.headDim;
  const kvSize = config.numKvHeads * config.headDim;
  const entries: TensorEntry[] = [];
  const add = (name: string, shape: number[], kind: "matrix" | "norm") => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = kind === "norm"
      ? () => normNoise === 0 ? new Float32Array(n).fill(1) : fillNormal(new Prng(deriveSeed(seed, name)), n, normNoise, 1)
      : () => fillNormal(new Prng(deriveSeed(seed, name)), n, std);
    entries.push({ name, dtype, shape, data });
  };

  add("model.embed_tokens.weight", [config.vocabSize, hidden], "matrix");
  for (let i = 0; i < config.numLayers; i++) {
    const layer = `model.layers.${i}`;
    add(`${layer}.input_layernorm.weight`, [hidden], "norm");
    add(`${layer}.self_attn.q_proj.weight`, [qSize, hidden], "matrix");
    add(`${layer}.self_attn.k_proj.weight`, [kvSize, hidden], "matrix");
    add(`${layer}.self_attn.v_proj.weight`, [kvSize, hidden], "matrix");
    if (config.qkvBias) {
      add(`${layer}.self_attn.q_proj.bias`, [qSize], "matrix");
      add(`${layer}.self_attn.k_proj.bias`, [kvSize], "matrix");
      add(`${layer}.self_attn.v_proj.bias`, [kvSize], "matrix");
    }
    if (config.qkNorm) {
      add(`${layer}.self_attn.q_norm.weight`, [config.headDim], "norm");
      add(`${layer}.self_attn.k_norm.weight`, [config.headDim], "norm");
    }
    add(`${layer}.self_attn.o_proj.weight`, [hidden, qSize], "matrix");
    if (config.oBias) add(`${layer}.self_attn.o_proj.bias`, [hidden], "matrix");
    add(`${layer}.post_attention_layernorm.weight`, [hidden], "norm");
    add(`${layer}.mlp.gate_proj.weight`, [config.intermediateSize, hidden], "matrix");
    add(`${layer}.mlp.up_proj.weight`, [config.intermediateSize, hidden], "matrix");
    add(`${layer}.mlp.down_proj.weight`, [hidden, config.intermediateSize], "matrix");
    if (config.mlpBias) {
      add(`${layer}.mlp.gate_proj.bias`, [config.intermediateSize], "matrix");
      add(`${layer}.mlp.up_proj.bias`, [config.intermediateSize], "matrix");
      add(`${layer}.mlp.down_proj.bias`, [hidden], "matrix");
    }
  }
  add("model.norm.weight", [hidden], "norm");
  if (!config.tieWordEmbeddings) add("lm_head.weight", [config.vocabSize, hidden], "matrix");
  return entries;
}
