// Seeded random tiny decoder checkpoints (HF config object + HF-named tensors) for testing the reference.
import type { RefTensor } from "./forward.ts";

/** mulberry32: a tiny deterministic PRNG returning floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface TinyOptions {
  arch?: "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM" | "Qwen3ForCausalLM";
  hidden?: number;
  intermediate?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  headDim?: number;
  vocab?: number;
  tied?: boolean;
  attentionBias?: boolean;
  ropeTheta?: number;
  ropeScaling?: Record<string, unknown> | null;
  seed?: number;
}

export interface TinyModel {
  config: Record<string, unknown>;
  tensors: Map<string, RefTensor>;
  getTensor: (name: string) => RefTensor;
}

export function tensorGetter(tensors: Map<string, RefTensor>): (name: string) => RefTensor {
  return (name) => {
    const t = tensors.get(name);
    if (!t) throw new Error(`missing tensor ${name}`);
    return t;
  };
}

export function tinyModel(opts: TinyOptions = {}): TinyModel {
  const arch = opts.arch ?? "LlamaForCausalLM";
  const hidden = opts.hidden ?? 16;
  const intermediate = opts.intermediate ?? 24;
  const layers = opts.layers ?? 2;
  const heads = opts.heads ?? 4;
  const kvHeads = opts.kvHeads ?? 2;
  const headDim = opts.headDim ?? hidden / heads;
  const vocab = opts.vocab ?? 40;
  const tied = opts.tied ?? false;
  const attentionBias = opts.attentionBias ?? false;
  const rand = seededRandom(opts.seed ?? 1);
  const tensors = new Map<string, RefTensor>();
  // Uniform in [center - spread, center + spread].
  const add = (name: string, shape: number[], spread = 0.5, center = 0) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = center + spread * (2 * rand() - 1);
    tensors.set(name, { shape, data });
  };

  add("model.embed_tokens.weight", [vocab, hidden], 1);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    add(`${p}input_layernorm.weight`, [hidden], 0.2, 1);
    add(`${p}self_attn.q_proj.weight`, [heads * headDim, hidden]);
    add(`${p}self_attn.k_proj.weight`, [kvHeads * headDim, hidden]);
    add(`${p}self_attn.v_proj.weight`, [kvHeads * headDim, hidden]);
    add(`${p}self_attn.o_proj.weight`, [hidden, heads * headDim]);
    if (arch === "Qwen2ForCausalLM" || attentionBias) {
      add(`${p}self_attn.q_proj.bias`, [heads * headDim], 0.3);
      add(`${p}self_attn.k_proj.bias`, [kvHeads * headDim], 0.3);
      add(`${p}self_attn.v_proj.bias`, [kvHeads * headDim], 0.3);
    }
    if (attentionBias) add(`${p}self_attn.o_proj.bias`, [hidden], 0.3);
    if (arch === "Qwen3ForCausalLM") {
      add(`${p}self_attn.q_norm.weight`, [headDim], 0.2, 1);
      add(`${p}self_attn.k_norm.weight`, [headDim], 0.2, 1);
    }
    add(`${p}post_attention_layernorm.weight`, [hidden], 0.2, 1);
    add(`${p}mlp.gate_proj.weight`, [intermediate, hidden]);
    add(`${p}mlp.up_proj.weight`, [intermediate, hidden]);
    add(`${p}mlp.down_proj.weight`, [hidden, intermediate]);
  }
  add("model.norm.weight", [hidden], 0.2, 1);
  if (!tied) add("lm_head.weight", [vocab, hidden]);

  const config: Record<string, unknown> = {
    architectures: [arch],
    hidden_size: hidden,
    intermediate_size: intermediate,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    rms_norm_eps: 1e-6,
    rope_theta: opts.ropeTheta ?? 10000,
    rope_scaling: opts.ropeScaling ?? null,
    tie_word_embeddings: tied,
    attention_bias: attentionBias,
    vocab_size: vocab,
  };
  return { config, tensors, getTensor: tensorGetter(tensors) };
}
