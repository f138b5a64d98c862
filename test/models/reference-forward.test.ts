// Self-checks of the independent reference forward pass (test/reference/forward.ts): hand-computed cases
// pin the formulas, and structural properties (causality, GQA, RoPE relativity, tying) guard the rest.
import { describe, expect, it } from "vitest";
import { referenceLogits, rope, ropeInvFreq, type RefTensor } from "../reference/forward.ts";
import { seededRandom, tensorGetter, tinyModel, type TinyOptions } from "../reference/tiny-weights.ts";

const ARCHS = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"] as const;

function t(shape: number[], values: number[]): RefTensor {
  return { shape, data: Float32Array.from(values) };
}

function maxAbsDiff(a: Float32Array[], b: Float32Array[]): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  a.forEach((row, i) => row.forEach((v, j) => { m = Math.max(m, Math.abs(v - b[i][j])); }));
  return m;
}

function randomTokens(n: number, vocab: number, seed: number): number[] {
  const rand = seededRandom(seed);
  return Array.from({ length: n }, () => Math.floor(rand() * vocab));
}

const silu = (x: number) => x / (1 + Math.exp(-x));
const closeTo = (actual: Float32Array, expected: number[]) => {
  expect(actual.length).toBe(expected.length);
  expected.forEach((e, i) => expect(actual[i]).toBeCloseTo(e, 6));
};

/** hidden 2, 1 layer, 1 head (head_dim 2), intermediate 1, vocab 3; embeddings and q/k given by the case. */
function handModel(eps: number, embed: number[], q: number[], k: number[]) {
  const tensors = new Map<string, RefTensor>([
    ["model.embed_tokens.weight", t([3, 2], embed)],
    ["model.layers.0.input_layernorm.weight", t([2], [1, 2])],
    ["model.layers.0.self_attn.q_proj.weight", t([2, 2], q)],
    ["model.layers.0.self_attn.k_proj.weight", t([2, 2], k)],
    ["model.layers.0.self_attn.v_proj.weight", t([2, 2], [2, 0, 0, 1])],
    ["model.layers.0.self_attn.o_proj.weight", t([2, 2], [1, 1, 0, 1])],
    ["model.layers.0.post_attention_layernorm.weight", t([2], [1, 1])],
    ["model.layers.0.mlp.gate_proj.weight", t([1, 2], [1, 0])],
    ["model.layers.0.mlp.up_proj.weight", t([1, 2], [0, 1])],
    ["model.layers.0.mlp.down_proj.weight", t([2, 1], [1, 2])],
    ["model.norm.weight", t([2], [0.5, 1])],
    ["lm_head.weight", t([3, 2], [1, 0, 0, 1, 1, -1])],
  ]);
  const config = {
    architectures: ["LlamaForCausalLM"], hidden_size: 2, intermediate_size: 1, num_hidden_layers: 1,
    num_attention_heads: 1, num_key_value_heads: 1, rms_norm_eps: eps, tie_word_embeddings: false,
  };
  // Everything after attention, by hand: residual, post-norm, SwiGLU, residual, final norm, lm_head.
  const tail = (h: number[]) => {
    const r2 = Math.sqrt((h[0] ** 2 + h[1] ** 2) / 2 + eps);
    const act = silu(h[0] / r2) * (h[1] / r2); // gate picks n2[0], up picks n2[1]
    const h2 = [h[0] + act, h[1] + 2 * act]; // down = [1, 2]
    const r3 = Math.sqrt((h2[0] ** 2 + h2[1] ** 2) / 2 + eps);
    const n3 = [(0.5 * h2[0]) / r3, h2[1] / r3];
    return [n3[0], n3[1], n3[0] - n3[1]];
  };
  return { config, getTensor: tensorGetter(tensors), tail };
}

describe("reference forward: hand-computed cases", () => {
  it("one token: attention output is the V projection", () => {
    const eps = 0.5;
    const rand = seededRandom(7);
    const junk = () => Array.from({ length: 4 }, () => rand() * 4 - 2); // q/k cannot matter for one token
    const m = handModel(eps, [2, 1, 1, -1, 0.5, 0.5], junk(), junk());
    const x = [1, -1]; // token 1
    const r1 = Math.sqrt((1 + 1) / 2 + eps);
    const n1 = [x[0] / r1, (2 * x[1]) / r1]; // input_layernorm weight [1, 2]
    const v = [2 * n1[0], n1[1]]; // v_proj [[2, 0], [0, 1]]
    const attn = [v[0] + v[1], v[1]]; // o_proj [[1, 1], [0, 1]]
    const expected = m.tail([x[0] + attn[0], x[1] + attn[1]]);
    const [logits] = referenceLogits(m.config, m.getTensor, [1]);
    closeTo(logits, expected);
  });

  it("two tokens: RoPE rotation direction, 1/sqrt(head_dim) scale and causal softmax", () => {
    const identity = [1, 0, 0, 1];
    const m = handModel(0, [1, 0, 0, 1, 3, 3], identity, identity);
    // eps 0: token 0 = [1, 0] -> n = [√2, 0]; token 1 = [0, 1] -> n = [0, 2√2] (weight [1, 2]).
    const s2 = Math.SQRT2;
    const k0 = [s2, 0]; // position 0: no rotation
    const q1 = [-2 * s2 * Math.sin(1), 2 * s2 * Math.cos(1)]; // [0, 2√2] rotated by +1 rad (inv_freq[0] = 1)
    const score0 = (q1[0] * k0[0] + q1[1] * k0[1]) / s2;
    const score1 = (q1[0] * q1[0] + q1[1] * q1[1]) / s2; // k1 = q1
    const p0 = Math.exp(score0) / (Math.exp(score0) + Math.exp(score1));
    const v0 = [2 * s2, 0];
    const v1 = [0, 2 * s2];
    const ctx = [p0 * v0[0] + (1 - p0) * v1[0], p0 * v0[1] + (1 - p0) * v1[1]];
    const attn = [ctx[0] + ctx[1], ctx[1]];
    const expected = m.tail([0 + attn[0], 1 + attn[1]]);
    const logits = referenceLogits(m.config, m.getTensor, [0, 1]);
    closeTo(logits[1], expected);
    // Position 0 sees only itself, whatever token 1 is.
    closeTo(referenceLogits(m.config, m.getTensor, [0, 2])[0], Array.from(logits[0]));
  });

  it("rope pairs dimension j with j + head_dim/2 (rotate_half), per head", () => {
    const v = Float64Array.from([1, 2, 3, 4, 10, 20, 30, 40]);
    const inv = Float64Array.from([1, 0.25]);
    rope(v, 2, 4, 3, inv);
    const [c0, s0, c1, s1] = [Math.cos(3), Math.sin(3), Math.cos(0.75), Math.sin(0.75)];
    const expected = [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1];
    expected.forEach((e, i) => {
      expect(v[i]).toBeCloseTo(e, 12);
      expect(v[4 + i]).toBeCloseTo(10 * e, 12);
    });
  });

  it("inv_freq: default, linear and llama3 (with smoothing band)", () => {
    const base = { rope_theta: 10000 };
    const plain = ropeInvFreq(base, 8);
    [1, 0.1, 0.01, 0.001].forEach((f, i) => expect(plain[i]).toBeCloseTo(f, 15));
    const linear = ropeInvFreq({ ...base, rope_scaling: { type: "linear", factor: 4 } }, 8);
    [0.25, 0.025, 0.0025, 0.00025].forEach((f, i) => expect(linear[i]).toBeCloseTo(f, 15));
    const scaling = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 1000 };
    const l3 = ropeInvFreq({ ...base, rope_scaling: scaling }, 8);
    // wavelengths 2π/f: 6.28 and 62.8 < 250 (high band, kept); 6283 > 1000 (low band, /8); 628 in between.
    const smooth = (1000 / ((2 * Math.PI) / 0.01) - 1) / (4 - 1);
    [1, 0.1, (1 - smooth) * (0.01 / 8) + smooth * 0.01, 0.001 / 8].forEach((f, i) => expect(l3[i]).toBeCloseTo(f, 15));
    // transformers >= 4.56 style rope_parameters is read the same way.
    const l3b = ropeInvFreq({ rope_parameters: { ...scaling, rope_theta: 10000 } }, 8);
    expect(Array.from(l3b)).toEqual(Array.from(l3));
    expect(() => ropeInvFreq({ ...base, rope_scaling: { rope_type: "yarn", factor: 2 } }, 8)).toThrow(/yarn/);
  });
});

describe.each(ARCHS)("reference forward properties: %s", (arch) => {
  const withBias = arch === "LlamaForCausalLM" || arch === "Qwen3ForCausalLM";
  const base: TinyOptions = { arch, attentionBias: withBias, seed: 11 };

  it("returns finite logits of vocab size at every position, and positions matter", () => {
    const m = tinyModel(base);
    const tokens = randomTokens(6, 40, 3);
    const logits = referenceLogits(m.config, m.getTensor, tokens);
    expect(logits).toHaveLength(6);
    for (const row of logits) {
      expect(row).toHaveLength(40);
      expect(row.every(Number.isFinite)).toBe(true);
    }
    const spread = referenceLogits(m.config, m.getTensor, tokens, [0, 2, 4, 6, 8, 10]);
    expect(maxAbsDiff(logits, spread)).toBeGreaterThan(1e-3);
  });

  it("is causal: logits at position i ignore later tokens", () => {
    const m = tinyModel(base);
    const a = randomTokens(8, 40, 5);
    const b = [...a.slice(0, 4), ...a.slice(4).map((id) => (id + 17) % 40)];
    const la = referenceLogits(m.config, m.getTensor, a);
    const lb = referenceLogits(m.config, m.getTensor, b);
    expect(maxAbsDiff(la.slice(0, 4), lb.slice(0, 4))).toBe(0);
    expect(maxAbsDiff(la.slice(4), lb.slice(4))).toBeGreaterThan(1e-3);
  });

  it("GQA equals MHA with the kv heads duplicated per group", () => {
    const heads = 4;
    const kvHeads = 2;
    const headDim = 4;
    const m = tinyModel({ ...base, heads, kvHeads, headDim, hidden: 12 });
    const tensors = new Map(m.tensors);
    const repeat = (src: RefTensor, rowLen: number): RefTensor => {
      const data = new Float32Array(heads * headDim * rowLen);
      for (let h = 0; h < heads; h++) {
        const g = Math.floor(h / (heads / kvHeads));
        data.set(src.data.subarray(g * headDim * rowLen, (g + 1) * headDim * rowLen), h * headDim * rowLen);
      }
      return { shape: rowLen === 1 ? [heads * headDim] : [heads * headDim, rowLen], data };
    };
    for (const [name, tensor] of m.tensors) {
      if (/\.[kv]_proj\.weight$/.test(name)) tensors.set(name, repeat(tensor, 12));
      if (/\.[kv]_proj\.bias$/.test(name)) tensors.set(name, repeat(tensor, 1));
    }
    const mha = { ...m.config, num_key_value_heads: heads };
    const tokens = randomTokens(7, 40, 9);
    const gqa = referenceLogits(m.config, m.getTensor, tokens);
    expect(maxAbsDiff(gqa, referenceLogits(mha, tensorGetter(tensors), tokens))).toBeLessThan(1e-6);
    // Without the duplication the kv shapes disagree with the config: the reference must refuse.
    expect(() => referenceLogits(mha, m.getTensor, tokens)).toThrow(/shape/);
  });

  it.each([
    ["no scaling", null],
    ["linear", { type: "linear", factor: 2 }],
    ["llama3", { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 }],
  ])("RoPE is relative: shifting all positions keeps logits (%s)", (_name, ropeScaling) => {
    for (const layers of [1, 2]) {
      const m = tinyModel({ ...base, layers, ropeScaling, ropeTheta: 100 });
      const tokens = randomTokens(6, 40, 13);
      const at0 = referenceLogits(m.config, m.getTensor, tokens);
      const shifted = referenceLogits(m.config, m.getTensor, tokens, tokens.map((_, i) => i + 37));
      expect(maxAbsDiff(at0, shifted)).toBeLessThan(1e-5);
    }
  });

  it("untied with lm_head = embed_tokens equals tied", () => {
    const tied = tinyModel({ ...base, tied: true });
    expect(tied.tensors.has("lm_head.weight")).toBe(false);
    const tensors = new Map(tied.tensors);
    tensors.set("lm_head.weight", tied.tensors.get("model.embed_tokens.weight")!);
    const untied = { ...tied.config, tie_word_embeddings: false };
    const tokens = randomTokens(5, 40, 17);
    const a = referenceLogits(tied.config, tied.getTensor, tokens);
    expect(maxAbsDiff(a, referenceLogits(untied, tensorGetter(tensors), tokens))).toBe(0);
    // And an unrelated lm_head really changes the answer.
    const other = tinyModel({ ...base, tied: false });
    tensors.set("lm_head.weight", other.tensors.get("lm_head.weight")!);
    expect(maxAbsDiff(a, referenceLogits(untied, tensorGetter(tensors), tokens))).toBeGreaterThan(1e-3);
  });
});

describe("reference forward: family-specific weights are used", () => {
  const tokens = [3, 1, 4, 1, 5];
  const perturbed = (opts: TinyOptions, name: string) => {
    const m = tinyModel(opts);
    const before = referenceLogits(m.config, m.getTensor, tokens);
    const tensors = new Map(m.tensors);
    const src = tensors.get(name)!;
    tensors.set(name, { shape: src.shape, data: src.data.map((v) => v + 0.5) });
    return maxAbsDiff(before, referenceLogits(m.config, tensorGetter(tensors), tokens));
  };

  it.each([
    [{ arch: "Qwen2ForCausalLM" } as TinyOptions, "model.layers.0.self_attn.q_proj.bias"],
    [{ arch: "Qwen2ForCausalLM" } as TinyOptions, "model.layers.1.self_attn.v_proj.bias"],
    [{ arch: "Qwen3ForCausalLM" } as TinyOptions, "model.layers.0.self_attn.q_norm.weight"],
    [{ arch: "Qwen3ForCausalLM" } as TinyOptions, "model.layers.1.self_attn.k_norm.weight"],
    [{ arch: "LlamaForCausalLM", attentionBias: true } as TinyOptions, "model.layers.0.self_attn.o_proj.bias"],
  ])("%o reads %s", (opts, name) => {
    expect(perturbed(opts, name)).toBeGreaterThan(1e-4);
  });

  it("Qwen3 normalises q and k per head before RoPE: scaling q_proj rows changes nothing", () => {
    // RMSNorm over each head makes q/k invariant to a positive per-head scale (up to eps).
    const m = tinyModel({ arch: "Qwen3ForCausalLM", seed: 4 });
    const tensors = new Map(m.tensors);
    for (const name of ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"]) {
      const src = tensors.get(name)!;
      tensors.set(name, { shape: src.shape, data: src.data.map((v) => v * 4) });
    }
    const before = referenceLogits(m.config, m.getTensor, tokens);
    expect(maxAbsDiff(before, referenceLogits(m.config, tensorGetter(tensors), tokens))).toBeLessThan(1e-5);
  });
});
