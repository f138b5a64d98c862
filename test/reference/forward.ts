// Independent plain-TypeScript forward pass of a Llama / Mistral / Qwen2 / Qwen3 decoder, following
// Hugging Face transformers semantics. It exists only to check the ONNX graph's logits, so it shares no
// code with models/: it parses the raw config.json object itself and reads HF-named weights.
// Activations are kept in Float64 throughout; the weights are whatever Float32 values the caller gives.

export interface RefTensor { shape: number[]; data: Float32Array }

type Vec = Float64Array;

interface RefConfig {
  arch: string;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  eps: number;
  tied: boolean;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  qkNorm: boolean;
  slidingWindow: number | null;
  invFreq: Vec;
}

const ARCHS = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

function num(config: Record<string, unknown>, key: string, fallback?: number): number {
  const v = config[key] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v)) throw new Error(`reference: config.${key} must be a number`);
  return v;
}

/** HF inv_freq, including the "linear" and "llama3" rope_scaling variants. Exported for tests. */
export function ropeInvFreq(config: Record<string, unknown>, headDim: number): Vec {
  // transformers >= 4.56 may store theta and scaling together in rope_parameters.
  const params = (config.rope_parameters ?? config.rope_scaling ?? null) as Record<string, unknown> | null;
  const theta = typeof params?.rope_theta === "number" ? params.rope_theta : num(config, "rope_theta", 10000);
  const inv = new Float64Array(headDim / 2);
  for (let j = 0; j < inv.length; j++) inv[j] = 1 / Math.pow(theta, (2 * j) / headDim);
  const type = params ? (params.rope_type ?? params.type ?? "default") : "default";
  if (type === "default") return inv;
  const factor = num(params!, "factor");
  if (type === "linear") return inv.map((f) => f / factor);
  if (type !== "llama3") throw new Error(`reference: unsupported rope type ${String(type)}`);
  const low = num(params!, "low_freq_factor");
  const high = num(params!, "high_freq_factor");
  const oldCtx = num(params!, "original_max_position_embeddings");
  const lowWavelen = oldCtx / low;
  const highWavelen = oldCtx / high;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) return f; // high frequency: unchanged
    if (wavelen > lowWavelen) return f / factor; // low frequency: fully scaled
    const smooth = (oldCtx / wavelen - low) / (high - low);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

function parseConfig(config: Record<string, unknown>): RefConfig {
  const arch = (config.architectures as string[] | undefined)?.[0] ?? "";
  if (!ARCHS.includes(arch)) throw new Error(`reference: unsupported architecture ${arch}`);
  if (config.use_sliding_window === true) throw new Error("reference: Qwen sliding-window attention is not supported");
  const hidden = num(config, "hidden_size");
  const heads = num(config, "num_attention_heads");
  // HF's Qwen3Config defaults head_dim to 128; the others derive it from hidden_size.
  const defaultHeadDim = arch === "Qwen3ForCausalLM" ? 128 : Math.floor(hidden / heads);
  const headDim = num(config, "head_dim", defaultHeadDim);
  const attentionBias = config.attention_bias === true;
  const window = config.sliding_window;
  return {
    arch,
    hidden,
    intermediate: num(config, "intermediate_size"),
    layers: num(config, "num_hidden_layers"),
    heads,
    kvHeads: num(config, "num_key_value_heads", heads),
    headDim,
    eps: num(config, "rms_norm_eps", 1e-6),
    tied: config.tie_word_embeddings === true,
    // Qwen2 hard-codes bias on q/k/v (never on o); Llama/Qwen3 put attention_bias on all four; Mistral on none.
    qkvBias: arch === "Qwen2ForCausalLM" || (attentionBias && arch !== "MistralForCausalLM"),
    oBias: attentionBias && (arch === "LlamaForCausalLM" || arch === "Qwen3ForCausalLM"),
    mlpBias: arch === "LlamaForCausalLM" && config.mlp_bias === true,
    qkNorm: arch === "Qwen3ForCausalLM",
    slidingWindow: arch === "MistralForCausalLM" && typeof window === "number" ? window : null,
    invFreq: ropeInvFreq(config, headDim),
  };
}

function expectShape(name: string, t: RefTensor, shape: number[]): RefTensor {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`reference: ${name} has shape [${t.shape}], expected [${shape}]`);
  }
  return t;
}

/** x / sqrt(mean(x^2) + eps) * w over x[offset .. offset + w.length). */
function rmsNorm(x: Vec, w: Float32Array, eps: number, offset = 0): Vec {
  let ss = 0;
  for (let i = 0; i < w.length; i++) ss += x[offset + i] * x[offset + i];
  const inv = 1 / Math.sqrt(ss / w.length + eps);
  const out = new Float64Array(w.length);
  for (let i = 0; i < w.length; i++) out[i] = x[offset + i] * inv * w[i];
  return out;
}

/** HF Linear: y = x W^T (+ b), W stored [out, in]. */
function linear(x: Vec, w: RefTensor, b?: RefTensor): Vec {
  const [outDim, inDim] = w.shape;
  if (inDim !== x.length) throw new Error(`reference: linear expects ${inDim} inputs, got ${x.length}`);
  const y = new Float64Array(outDim);
  const W = w.data;
  for (let o = 0; o < outDim; o++) {
    let acc = b ? b.data[o] : 0;
    const row = o * inDim;
    for (let i = 0; i < inDim; i++) acc += x[i] * W[row + i];
    y[o] = acc;
  }
  return y;
}

/** In-place non-interleaved RoPE on every head of v: x * cos + rotate_half(x) * sin. Exported for tests. */
export function rope(v: Vec, nHeads: number, headDim: number, position: number, invFreq: Vec): void {
  const half = headDim / 2;
  for (let j = 0; j < half; j++) {
    const angle = position * invFreq[j];
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    for (let h = 0; h < nHeads; h++) {
      const base = h * headDim;
      const x1 = v[base + j];
      const x2 = v[base + j + half];
      v[base + j] = x1 * c - x2 * s;
      v[base + j + half] = x2 * c + x1 * s;
    }
  }
}

/** Per-head RMSNorm (Qwen3 q_norm / k_norm), in place. */
function headNorm(v: Vec, nHeads: number, w: Float32Array, eps: number): void {
  for (let h = 0; h < nHeads; h++) v.set(rmsNorm(v, w, eps, h * w.length), h * w.length);
}

function attention(cfg: RefConfig, get: (n: string) => RefTensor, p: string, xs: Vec[], positions: number[]): Vec[] {
  const { heads, kvHeads, headDim, hidden } = cfg;
  const wq = expectShape(`${p}q_proj.weight`, get(`${p}q_proj.weight`), [heads * headDim, hidden]);
  const wk = expectShape(`${p}k_proj.weight`, get(`${p}k_proj.weight`), [kvHeads * headDim, hidden]);
  const wv = expectShape(`${p}v_proj.weight`, get(`${p}v_proj.weight`), [kvHeads * headDim, hidden]);
  const wo = expectShape(`${p}o_proj.weight`, get(`${p}o_proj.weight`), [hidden, heads * headDim]);
  const bias = (n: string, on: boolean) => (on ? get(`${p}${n}_proj.bias`) : undefined);
  const qNorm = cfg.qkNorm ? get(`${p}q_norm.weight`).data : null;
  const kNorm = cfg.qkNorm ? get(`${p}k_norm.weight`).data : null;

  const qs = xs.map((x) => linear(x, wq, bias("q", cfg.qkvBias)));
  const ks = xs.map((x) => linear(x, wk, bias("k", cfg.qkvBias)));
  const vs = xs.map((x) => linear(x, wv, bias("v", cfg.qkvBias)));
  xs.forEach((_, t) => {
    if (qNorm && kNorm) {
      headNorm(qs[t], heads, qNorm, cfg.eps);
      headNorm(ks[t], kvHeads, kNorm, cfg.eps);
    }
    rope(qs[t], heads, headDim, positions[t], cfg.invFreq);
    rope(ks[t], kvHeads, headDim, positions[t], cfg.invFreq);
  });

  const scale = 1 / Math.sqrt(headDim);
  const group = heads / kvHeads;
  return xs.map((_, t) => {
    const ctx = new Float64Array(heads * headDim);
    for (let h = 0; h < heads; h++) {
      const qo = h * headDim;
      const ko = Math.floor(h / group) * headDim;
      // Causal over sequence index; Mistral additionally masks keys a full window (or more) behind.
      const first = cfg.slidingWindow === null ? 0 : Math.max(0, t - cfg.slidingWindow + 1);
      const scores: number[] = [];
      for (let s = first; s <= t; s++) {
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += qs[t][qo + d] * ks[s][ko + d];
        scores.push(dot * scale);
      }
      const max = Math.max(...scores);
      const exps = scores.map((sc) => Math.exp(sc - max));
      const sum = exps.reduce((a, b) => a + b, 0);
      exps.forEach((e, i) => {
        const weight = e / sum;
        const v = vs[first + i];
        for (let d = 0; d < headDim; d++) ctx[qo + d] += weight * v[ko + d];
      });
    }
    return linear(ctx, wo, cfg.oBias ? get(`${p}o_proj.bias`) : undefined);
  });
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/** SwiGLU: down(silu(gate(x)) * up(x)). */
function mlp(cfg: RefConfig, get: (n: string) => RefTensor, p: string, x: Vec): Vec {
  const bias = (n: string) => (cfg.mlpBias ? get(`${p}${n}_proj.bias`) : undefined);
  const gate = linear(x, expectShape(`${p}gate_proj.weight`, get(`${p}gate_proj.weight`), [cfg.intermediate, cfg.hidden]), bias("gate"));
  const up = linear(x, expectShape(`${p}up_proj.weight`, get(`${p}up_proj.weight`), [cfg.intermediate, cfg.hidden]), bias("up"));
  for (let i = 0; i < gate.length; i++) gate[i] = silu(gate[i]) * up[i];
  return linear(gate, expectShape(`${p}down_proj.weight`, get(`${p}down_proj.weight`), [cfg.hidden, cfg.intermediate]), bias("down"));
}

function addInPlace(a: Vec, b: Vec): void {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

/**
 * The final hidden states (after the last norm, one Float64Array of hidden size per input
 * position) under full causal attention, no cache: what embeddings pool.
 */
export function referenceHiddenStates(
  config: Record<string, unknown>,
  getTensor: (name: string) => RefTensor,
  tokenIds: number[],
  positions: number[] = tokenIds.map((_, i) => i),
): Vec[] {
  return hiddenStates(parseConfig(config), getTensor, getTensor("model.embed_tokens.weight"), tokenIds, positions);
}

/** Logits (one Float32Array of vocab size per input position) under full causal attention, no cache. */
export function referenceLogits(
  config: Record<string, unknown>,
  getTensor: (name: string) => RefTensor,
  tokenIds: number[],
  positions: number[] = tokenIds.map((_, i) => i),
): Float32Array[] {
  const cfg = parseConfig(config);
  const embed = getTensor("model.embed_tokens.weight");
  const head = cfg.tied ? embed : getTensor("lm_head.weight");
  expectShape("lm_head.weight", head, [head.shape[0], cfg.hidden]);
  return hiddenStates(cfg, getTensor, embed, tokenIds, positions).map((h) => Float32Array.from(linear(h, head)));
}

/** The layers and the final norm, from the embedding table (read once by the caller, which may need it as the LM head too). */
function hiddenStates(cfg: RefConfig, getTensor: (name: string) => RefTensor, embed: RefTensor, tokenIds: number[], positions: number[]): Vec[] {
  if (positions.length !== tokenIds.length) throw new Error("reference: positions and tokenIds differ in length");
  const [vocab, hidden] = embed.shape;
  if (hidden !== cfg.hidden) throw new Error(`reference: embed_tokens width ${hidden} != hidden_size ${cfg.hidden}`);

  const hs = tokenIds.map((id) => {
    if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new Error(`reference: token id ${id} out of range`);
    return Float64Array.from(embed.data.subarray(id * hidden, (id + 1) * hidden));
  });

  for (let l = 0; l < cfg.layers; l++) {
    const p = `model.layers.${l}.`;
    const inNorm = getTensor(`${p}input_layernorm.weight`).data;
    const attn = attention(cfg, getTensor, `${p}self_attn.`, hs.map((h) => rmsNorm(h, inNorm, cfg.eps)), positions);
    hs.forEach((h, t) => addInPlace(h, attn[t]));
    const postNorm = getTensor(`${p}post_attention_layernorm.weight`).data;
    hs.forEach((h) => addInPlace(h, mlp(cfg, getTensor, `${p}mlp.`, rmsNorm(h, postNorm, cfg.eps))));
  }

  const finalNorm = getTensor("model.norm.weight").data;
  return hs.map((h) => rmsNorm(h, finalNorm, cfg.eps));
}

/** An embedding from hidden states: the last row or the mean of all rows, scaled to unit length. */
export function referenceEmbedding(hidden: readonly ArrayLike<number>[], pooling: "last" | "mean"): Float64Array {
  const width = hidden[0].length;
  const pooled = new Float64Array(width);
  if (pooling === "last") pooled.set(hidden[hidden.length - 1]);
  else for (const row of hidden) for (let i = 0; i < width; i++) pooled[i] += row[i] / hidden.length;
  const norm = Math.sqrt(pooled.reduce((sum, x) => sum + x * x, 0));
  return pooled.map((x) => x / norm);
}
