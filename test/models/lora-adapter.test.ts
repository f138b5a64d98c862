/**
 * PEFT LoRA adapters as tokenmill reads them (models/lora/adapter.ts): seeded random adapters
 * for each family's tiny checkpoint, written in PEFT's layout into a scratch folder; their
 * modules, ranks and scales; the merged weight W + scale·B·A against a direct product; the
 * independent reference forward pass on merged weights, which the adapter must change; and
 * each kind of adapter tokenmill refuses, with the reason named.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseModelConfig } from "../../models/config.ts";
import { LORA_MODULES, mergedWeight, modulePath, readLoraAdapter } from "../../models/lora/adapter.ts";
import { writeRandomLoraAdapter } from "../../models/synthetic/lora-adapter.ts";
import { openWeights, writeSafetensors } from "../../models/weights/safetensors.ts";
import { maxAbsDiff, referenceFor, referenceWithAdapter, seededTokens } from "../helpers/runner.ts";
import { BASE_CONFIG, FAMILY_MODELS, tinyCheckpoint } from "../helpers/tiny-models.ts";

const scratch = mkdtempSync(join(tmpdir(), "tokenmill-lora-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let count = 0;
const adapterDir = () => join(scratch, `adapter-${count++}`);

describe.each(FAMILY_MODELS.filter((spec) => ["llama-tied", "mistral-window", "qwen3-qknorm"].includes(spec.name)))("a PEFT adapter of $name", (spec) => {
  const dir = tinyCheckpoint(spec);
  const base = parseModelConfig(spec.config, spec.name);

  it("reads every projection of every layer, with its rank and scale (rank_pattern and alpha_pattern included)", () => {
    const path = adapterDir();
    writeRandomLoraAdapter(path, base, { rank: 4, alpha: 8, seed: 3, rankPattern: { "model.layers.1.mlp.down_proj": 2 }, alphaPattern: { "o_proj": 2 } });
    const adapter = readLoraAdapter(path, base, "tuned");
    expect(adapter).toMatchObject({ name: "tuned", maxRank: 4, targetModules: [...LORA_MODULES] });
    expect(adapter.layers).toHaveLength(base.numLayers);
    for (const [layer, modules] of adapter.layers.entries()) {
      expect(Object.keys(modules).sort()).toEqual([...LORA_MODULES].sort());
      expect(modules.q_proj).toMatchObject({ rank: 4, scale: 2, inFeatures: base.hiddenSize, outFeatures: base.numHeads * base.headDim });
      expect(modules.o_proj!.scale).toBe(2 / 4);
      expect(modules.down_proj!.rank).toBe(layer === 1 ? 2 : 4);
    }
  });

  it("merges as W + scale·B·A, and changes what the reference forward pass says", () => {
    const path = adapterDir();
    writeRandomLoraAdapter(path, base, { rank: 4, alpha: 8, seed: 5, targetModules: ["q_proj", "v_proj", "down_proj"] });
    const adapter = readLoraAdapter(path, base, "tuned");
    const lora = adapter.layers[0].q_proj!;
    const weight = Float32Array.from({ length: lora.inFeatures * lora.outFeatures }, (_, i) => Math.sin(i));
    const merged = mergedWeight(weight, lora);
    for (const [o, i] of [[0, 0], [lora.outFeatures - 1, lora.inFeatures - 1], [3, 7]]) {
      let delta = 0;
      for (let j = 0; j < lora.rank; j++) delta += lora.b[o * lora.rank + j] * lora.a[j * lora.inFeatures + i];
      expect(merged[o * lora.inFeatures + i]).toBeCloseTo(weight[o * lora.inFeatures + i] + lora.scale * delta, 6);
    }
    const tokens = seededTokens(9, spec.config.vocab_size as number, 2);
    const plain = referenceFor(dir, tokens);
    const tuned = referenceWithAdapter(dir, tokens, adapter);
    expect(Math.max(...plain.map((row, i) => maxAbsDiff(row, tuned[i])))).toBeGreaterThan(1e-3);
  });
});

describe("adapters tokenmill refuses, with the reason", () => {
  const base = parseModelConfig({ ...BASE_CONFIG, architectures: ["LlamaForCausalLM"] }, "base");
  const refusal = (write: (path: string) => void) => {
    const path = adapterDir();
    write(path);
    try {
      readLoraAdapter(path, base, "bad");
    } catch (err) {
      return (err as Error).message;
    }
    throw new Error("the adapter was accepted");
  };

  it("DoRA, LoRA biases, fan_in_fan_out, modules_to_save", () => {
    expect(refusal((p) => writeRandomLoraAdapter(p, base, { rank: 2, alpha: 2, seed: 1, extraConfig: { use_dora: true } }))).toMatch(/DoRA \(use_dora\) is not supported/);
    expect(refusal((p) => writeRandomLoraAdapter(p, base, { rank: 2, alpha: 2, seed: 1, extraConfig: { bias: "lora_only" } }))).toMatch(/LoRA biases/);
    expect(refusal((p) => writeRandomLoraAdapter(p, base, { rank: 2, alpha: 2, seed: 1, extraConfig: { fan_in_fan_out: true } }))).toMatch(/fan_in_fan_out/);
    expect(refusal((p) => writeRandomLoraAdapter(p, base, { rank: 2, alpha: 2, seed: 1, extraConfig: { modules_to_save: ["lm_head"] } }))).toMatch(/modules_to_save \(lm_head/);
  });

  it("embedding adapters, by target module or by tensor", () => {
    expect(refusal((p) => writeRandomLoraAdapter(p, base, { rank: 2, alpha: 2, seed: 1, extraConfig: { target_modules: ["q_proj", "embed_tokens"] } }))).toMatch(/also targets embed_tokens/);
    expect(refusal((p) => {
      writeRandomLoraAdapter(p, base, { rank: 2, alpha: 2, seed: 1, targetModules: ["q_proj"] });
      const store = openWeights(p);
      const entries = store.names().map((name) => ({ name, dtype: "F32" as const, shape: store.info(name).shape, data: store.readFloat32(name) }));
      store.close();
      entries.push({ name: "base_model.model.model.embed_tokens.lora_embedding_A", dtype: "F32", shape: [2, 320], data: new Float32Array(640) });
      writeSafetensors(join(p, "adapter_model.safetensors"), entries);
    })).toMatch(/embedding and LM-head adapters are not supported/);
  });

  it("an adapter of another base: wrong widths, or more layers", () => {
    const wider = parseModelConfig({ ...BASE_CONFIG, architectures: ["LlamaForCausalLM"], hidden_size: 64 }, "wider");
    expect(refusal((p) => writeRandomLoraAdapter(p, wider, { rank: 2, alpha: 2, seed: 1 }))).toMatch(/model\.layers\.0\.self_attn\.q_proj has lora_A \[2,64\].*another base model/);
    const deeper = parseModelConfig({ ...BASE_CONFIG, architectures: ["LlamaForCausalLM"], num_hidden_layers: 3 }, "deeper");
    expect(refusal((p) => writeRandomLoraAdapter(p, deeper, { rank: 2, alpha: 2, seed: 1 }))).toMatch(/layers\.2\..*the base model has 2 layers/);
  });

  it("missing files and bad configs", () => {
    expect(refusal((p) => {
      writeRandomLoraAdapter(p, base, { rank: 2, alpha: 2, seed: 1 });
      rmSync(join(p, "adapter_model.safetensors"));
    })).toMatch(/no adapter_model\.safetensors/);
    expect(refusal((p) => {
      writeRandomLoraAdapter(p, base, { rank: 2, alpha: 2, seed: 1 });
      writeFileSync(join(p, "adapter_config.json"), "{not json");
    })).toMatch(/adapter_config\.json is not JSON/);
    expect(refusal((p) => writeRandomLoraAdapter(p, base, { rank: 2, alpha: 2, seed: 1, extraConfig: { r: 0 } }))).toMatch(/r must be a positive integer/);
    expect(modulePath(3, "gate_proj")).toBe("model.layers.3.mlp.gate_proj");
  });
});
