/** Reading checkpoints: config flags per family, clear errors, the graph cache and the default model. */
import { cpSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseModelConfig } from "../../models/config.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { DEFAULT_MODEL_CONFIG, ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { ensureGraph, normalizedBuildOptions } from "../../models/build-graph.ts";
import { ModelError } from "../../models/model-error.ts";
import { cacheDir } from "../../models/cache-dir.ts";
import { openWeights } from "../../models/weights/safetensors.ts";
import { ModelTokenizer } from "../../models/tokenizer.ts";
import { BASE_CONFIG, FAMILY_MODELS, tinyCheckpoint } from "../helpers/tiny-models.ts";

describe("config.json", () => {
  it("applies each family's flags", () => {
    const flags = (architecture: string, extra = {}) => {
      const c = parseModelConfig({ ...BASE_CONFIG, architectures: [architecture], ...extra });
      return { family: c.family, qkvBias: c.qkvBias, oBias: c.oBias, qkNorm: c.qkNorm };
    };
    expect(flags("LlamaForCausalLM")).toEqual({ family: "llama", qkvBias: false, oBias: false, qkNorm: false });
    expect(flags("LlamaForCausalLM", { attention_bias: true })).toEqual({ family: "llama", qkvBias: true, oBias: true, qkNorm: false });
    expect(flags("MistralForCausalLM")).toEqual({ family: "mistral", qkvBias: false, oBias: false, qkNorm: false });
    expect(flags("Qwen2ForCausalLM")).toEqual({ family: "qwen2", qkvBias: true, oBias: false, qkNorm: false });
    expect(flags("Qwen3ForCausalLM")).toEqual({ family: "qwen3", qkvBias: false, oBias: false, qkNorm: true });
  });

  it("reads GQA, head_dim, rope and norm settings, with Hugging Face's defaults", () => {
    const c = parseModelConfig({ ...BASE_CONFIG, architectures: ["LlamaForCausalLM"], head_dim: undefined, num_key_value_heads: undefined, rope_theta: undefined });
    expect(c.numKvHeads).toBe(c.numHeads);
    expect(c.headDim).toBe(BASE_CONFIG.hidden_size / BASE_CONFIG.num_attention_heads);
    expect(c.ropeTheta).toBe(10000);
    const q = parseModelConfig({ ...DEFAULT_MODEL_CONFIG });
    expect(q).toMatchObject({ numHeads: 4, numKvHeads: 2, headDim: 32, ropeTheta: 1000000, rmsNormEps: 1e-6, tieWordEmbeddings: true });
  });

  it("names the supported architectures when it meets an unknown one", () => {
    expect(() => parseModelConfig({ ...BASE_CONFIG, architectures: ["GPT2LMHeadModel"] }))
      .toThrow(/unsupported architecture "GPT2LMHeadModel"; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM/);
  });

  it("rejects impossible shapes and unsupported rope scaling with ModelError", () => {
    const bad = (extra: Record<string, unknown>) => () => parseModelConfig({ ...BASE_CONFIG, architectures: ["LlamaForCausalLM"], ...extra });
    expect(bad({ num_key_value_heads: 3 })).toThrow(/multiple of num_key_value_heads/);
    expect(bad({ hidden_size: "big" })).toThrow(/"hidden_size" must be a positive integer/);
    expect(bad({ rope_scaling: { rope_type: "yarn", factor: 4 } })).toThrow(/rope_scaling type "yarn" is not supported/);
    expect(bad({ num_hidden_layers: 0 })).toThrow(ModelError);
  });
});

describe("checkpoint folders", () => {
  it("reads tokenizer files, the chat template and EOS ids from generation_config.json", () => {
    const checkpoint = readCheckpoint(ensureDefaultModel());
    expect(checkpoint.name).toBe("tokenmill-tiny-qwen3");
    expect(checkpoint.eosTokenIds).toEqual(expect.arrayContaining([151645, 151643]));
    expect(checkpoint.chatTemplate).toContain("<|im_start|>");
    const tokenizer = ModelTokenizer.load(checkpoint);
    expect(tokenizer.eosTokenId).toBe(151645);
    const text = tokenizer.applyChatTemplate([{ role: "user", content: "Hi" }]);
    expect(text).toBe("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    expect(tokenizer.decode(tokenizer.encode("Hello, world"))).toBe("Hello, world");
    expect(tokenizer.decode([])).toBe("");
  });

  it("the default model is deterministic, Qwen3-shaped and 10-20M parameters", () => {
    const weights = openWeights(ensureDefaultModel());
    const numParams = weights.names().reduce((sum, name) => sum + weights.info(name).shape.reduce((a, b) => a * b, 1), 0);
    weights.close();
    expect(numParams).toBeGreaterThan(10e6);
    expect(numParams).toBeLessThan(20e6);
  });

  it("a missing folder, missing tokenizer or truncated weights give ModelError, not a crash", () => {
    expect(() => readCheckpoint("/nonexistent/x")).toThrow(/does not exist/);
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-ckpt-"));
    cpSync(tinyCheckpoint(FAMILY_MODELS[0]), dir, { recursive: true });
    expect(() => readCheckpoint(dir)).toThrow(/has no tokenizer.json/);
    const weightsPath = join(dir, "model.safetensors");
    const bytes = readFileSync(weightsPath);
    writeFileSync(weightsPath, bytes.subarray(0, bytes.length - 100));
    expect(() => ensureGraph(dir)).toThrow(/truncated/);
    // A failed build leaves no half-written entry behind (other test files build graphs in this cache at the same time: only this process's count).
    expect(readdirSync(cacheDir("graphs")).filter((name) => name.endsWith(`.partial-${process.pid}`))).toEqual([]);
  });
});

describe("the graph cache", () => {
  it("builds once, then serves the cached graph; a changed checkpoint rebuilds", () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-cache-"));
    process.env.TOKENMILL_CACHE_DIR = join(dir, "cache");
    cpSync(tinyCheckpoint(FAMILY_MODELS[0]), join(dir, "model"), { recursive: true });
    const model = join(dir, "model");
    const first = ensureGraph(model);
    expect(first.built).toBe(true);
    const second = ensureGraph(model);
    expect(second).toMatchObject({ built: false, graphPath: first.graphPath });
    const config = JSON.parse(readFileSync(join(model, "config.json"), "utf8"));
    writeFileSync(join(model, "config.json"), JSON.stringify({ ...config, rms_norm_eps: 1e-5 }));
    const third = ensureGraph(model);
    expect(third.built).toBe(true);
    expect(third.graphPath).not.toBe(first.graphPath);
    expect(third.graphPath.startsWith(join(dir, "cache"))).toBe(true);
    delete process.env.TOKENMILL_CACHE_DIR;
  });

  it("keys graphs by their build options too, so graphs built differently never collide", () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-cache-"));
    process.env.TOKENMILL_CACHE_DIR = join(dir, "cache");
    const model = join(dir, "model");
    cpSync(tinyCheckpoint(FAMILY_MODELS[0]), model, { recursive: true });
    const cpu = ensureGraph(model);
    expect(ensureGraph(model, { build: { device: "cpu", dtype: "float32", quantization: "none" } })).toMatchObject({ built: false, graphPath: cpu.graphPath });
    const cuda = ensureGraph(model, { build: { device: "cuda" } });
    expect(cuda.built).toBe(true);
    expect(cuda.graphPath).not.toBe(cpu.graphPath);
    expect(JSON.parse(readFileSync(join(dirname(cuda.graphPath), "meta.json"), "utf8")).build).toEqual({ dtype: "float32", quantization: "none", quantBlockSize: 0, device: "cuda", fuseProjections: false, ropeInAttention: false, kvCacheDtype: "float32", ropeOp: true, maxLoras: 0, maxLoraRank: 0, loraLayout: "stacked" });
    const int4 = ensureGraph(model, { build: { quantization: "int4" } });
    const int4Blocks64 = ensureGraph(model, { build: { quantization: "int4", quantBlockSize: 64 } });
    const int8Kv = ensureGraph(model, { build: { kvCacheDtype: "int8" } });
    expect(int8Kv.kvCacheDtype).toBe("int8");
    const lora = ensureGraph(model, { build: { maxLoras: 2, maxLoraRank: 8 } });
    expect(new Set([cpu.graphPath, int4.graphPath, int4Blocks64.graphPath, int8Kv.graphPath, lora.graphPath]).size).toBe(5);
    expect(ensureGraph(model, { build: { quantization: "int4", quantBlockSize: 32 } })).toMatchObject({ built: false, graphPath: int4.graphPath });
    delete process.env.TOKENMILL_CACHE_DIR;
  });

  it("builds float16 only for the device-pool graph, and bfloat16 for no device, with errors that say so", () => {
    const model = tinyCheckpoint(FAMILY_MODELS[0]);
    expect(normalizedBuildOptions({ device: "webgpu" })).toMatchObject({ dtype: "float16", ropeInAttention: true });
    expect(normalizedBuildOptions({ device: "cpu" })).toMatchObject({ dtype: "float32", ropeInAttention: false });
    expect(() => ensureGraph(model, { build: { device: "cpu", dtype: "float16" } })).toThrow(/float16 needs --device webgpu/);
    expect(() => ensureGraph(model, { build: { device: "webgpu", dtype: "bfloat16" } })).toThrow(/bfloat16 is supported on no device/);
  });
});
