/**
 * LoRA adapters in PEFT's layout: `adapter_config.json` (r, lora_alpha, target_modules, and
 * optionally rank_pattern / alpha_pattern, use_rslora) and `adapter_model.safetensors` with
 * tensors named `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`
 * (A [r, in], B [out, r]). An adapted projection computes x·Wᵀ + scale·(x·Aᵀ)·Bᵀ, with scale
 * lora_alpha / r (or lora_alpha / √r with rsLoRA), the same as the merged weight
 * W + scale·B·A.
 *
 * What tokenmill can't serve is refused here, by name: DoRA, adapters of the embeddings or the
 * LM head (or any module outside the seven projections), fan_in_fan_out layouts, LoRA biases,
 * and an adapter whose shapes don't fit the base model.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ModelConfig } from "../config.ts";
import { ModelError } from "../model-error.ts";
import { openWeights } from "../weights/safetensors.ts";

export const LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;
export type LoraModule = (typeof LORA_MODULES)[number];

/** Where a module sits in a decoder layer (Hugging Face's names). */
export const MODULE_PARENT: Record<LoraModule, "self_attn" | "mlp"> = {
  q_proj: "self_attn", k_proj: "self_attn", v_proj: "self_attn", o_proj: "self_attn", gate_proj: "mlp", up_proj: "mlp", down_proj: "mlp",
};

/** One adapted projection of one layer. */
export interface LoraWeights {
  rank: number;
  /** lora_alpha / r (or / √r with rsLoRA). */
  scale: number;
  /** [rank, in], row-major. */
  a: Float32Array;
  /** [out, rank], row-major. */
  b: Float32Array;
  inFeatures: number;
  outFeatures: number;
}

export interface LoraAdapter {
  name: string;
  /** The largest rank of any of its modules (what a slot must hold). */
  maxRank: number;
  targetModules: LoraModule[];
  /** Per layer, the modules it adapts. */
  layers: Partial<Record<LoraModule, LoraWeights>>[];
  baseModel: string | null;
}

/** A projection's input and output widths in the base model. */
export function moduleShape(config: ModelConfig, module: LoraModule): { inFeatures: number; outFeatures: number } {
  const q = config.numHeads * config.headDim;
  const kv = config.numKvHeads * config.headDim;
  switch (module) {
    case "q_proj": return { inFeatures: config.hiddenSize, outFeatures: q };
    case "k_proj":
    case "v_proj": return { inFeatures: config.hiddenSize, outFeatures: kv };
    case "o_proj": return { inFeatures: q, outFeatures: config.hiddenSize };
    case "gate_proj":
    case "up_proj": return { inFeatures: config.hiddenSize, outFeatures: config.intermediateSize };
    case "down_proj": return { inFeatures: config.intermediateSize, outFeatures: config.hiddenSize };
  }
}

/** PEFT's module path of a layer's projection (as rank_pattern and alpha_pattern keys match it). */
export const modulePath = (layer: number, module: LoraModule) => `model.layers.${layer}.${MODULE_PARENT[module]}.${module}`;

const tensorName = (layer: number, module: LoraModule, which: "A" | "B") => `base_model.model.${modulePath(layer, module)}.lora_${which}.weight`;

type Json = Record<string, unknown>;

/** PEFT's rule for a pattern key: it matches a module path that is the key, or ends in "." + key (the key may be a regex). */
function patternValue(patterns: Json | undefined, path: string): number | undefined {
  for (const [key, value] of Object.entries(patterns ?? {})) {
    if (path === key || path.endsWith(`.${key}`) || safeRegex(`^(.*\\.)?${key}$`)?.test(path)) return Number(value);
  }
  return undefined;
}

function safeRegex(source: string): RegExp | null {
  try {
    return new RegExp(source);
  } catch {
    return null;
  }
}

/** The modules target_modules names: a list of names, "all-linear", or a regex over module paths. */
function targetModulesOf(value: unknown, numLayers: number, where: string): LoraModule[] {
  if (value === "all-linear") return [...LORA_MODULES];
  if (typeof value === "string") {
    const regex = safeRegex(`^${value}$`);
    if (!regex) throw new ModelError("BAD_CONFIG", `${where}: target_modules ${JSON.stringify(value)} is not a valid regular expression`);
    return LORA_MODULES.filter((module) => Array.from({ length: numLayers }, (_, layer) => modulePath(layer, module)).some((path) => regex.test(path)));
  }
  if (!Array.isArray(value) || value.length === 0) throw new ModelError("BAD_CONFIG", `${where}: target_modules must name the adapted modules`);
  const unsupported = value.filter((name) => !(LORA_MODULES as readonly string[]).includes(String(name)));
  if (unsupported.length > 0) {
    throw new ModelError("UNSUPPORTED_MODEL", `${where}: tokenmill serves LoRA on ${LORA_MODULES.join(", ")} only; this adapter also targets ${unsupported.join(", ")}`);
  }
  return value as LoraModule[];
}

/**
 * Reads and checks a PEFT adapter for `base`. Throws ModelError naming what is wrong: a
 * missing file, a feature tokenmill doesn't serve, or a shape that doesn't fit the base.
 */
export function readLoraAdapter(dir: string, base: ModelConfig, name: string): LoraAdapter {
  const where = `the LoRA adapter ${name} (${dir})`;
  const configPath = join(dir, "adapter_config.json");
  if (!existsSync(configPath)) throw new ModelError("MISSING_FILE", `${where}: no adapter_config.json`);
  let config: Json;
  try {
    config = JSON.parse(readFileSync(configPath, "utf8")) as Json;
  } catch (err) {
    throw new ModelError("BAD_CONFIG", `${where}: adapter_config.json is not JSON (${(err as Error).message})`);
  }
  if (config.peft_type !== undefined && config.peft_type !== "LORA") throw new ModelError("UNSUPPORTED_MODEL", `${where}: peft_type ${String(config.peft_type)} is not LoRA`);
  if (config.use_dora === true) throw new ModelError("UNSUPPORTED_MODEL", `${where}: DoRA (use_dora) is not supported; merge it into the weights, or train plain LoRA`);
  if (config.fan_in_fan_out === true) throw new ModelError("UNSUPPORTED_MODEL", `${where}: fan_in_fan_out (Conv1D layouts, as GPT-2's) is not supported`);
  if (config.bias !== undefined && config.bias !== "none") throw new ModelError("UNSUPPORTED_MODEL", `${where}: LoRA biases (bias: ${String(config.bias)}) are not supported`);
  const saved = Array.isArray(config.modules_to_save) ? config.modules_to_save.map(String) : [];
  if (saved.length > 0) throw new ModelError("UNSUPPORTED_MODEL", `${where}: modules_to_save (${saved.join(", ")}: full copies of embeddings or heads) is not supported`);
  const r = Number(config.r);
  const alpha = Number(config.lora_alpha ?? r);
  if (!Number.isInteger(r) || r <= 0) throw new ModelError("BAD_CONFIG", `${where}: r must be a positive integer (got ${String(config.r)})`);
  if (!Number.isFinite(alpha)) throw new ModelError("BAD_CONFIG", `${where}: lora_alpha must be a number`);
  const targetModules = targetModulesOf(config.target_modules, base.numLayers, where);
  const rsLora = config.use_rslora === true;
  const layersToTransform = Array.isArray(config.layers_to_transform) ? new Set(config.layers_to_transform.map(Number)) : null;

  const weightsPath = join(dir, "adapter_model.safetensors");
  if (!existsSync(weightsPath)) throw new ModelError("MISSING_FILE", `${where}: no adapter_model.safetensors (a .bin adapter must be converted to safetensors)`);
  const store = openWeights(dir);
  try {
    const known = new Set<string>();
    const layers: LoraAdapter["layers"] = [];
    let maxRank = 0;
    for (let layer = 0; layer < base.numLayers; layer++) {
      const modules: Partial<Record<LoraModule, LoraWeights>> = {};
      for (const module of targetModules) {
        const [aName, bName] = [tensorName(layer, module, "A"), tensorName(layer, module, "B")];
        if (!store.has(aName) && !store.has(bName) && (layersToTransform === null || !layersToTransform.has(layer))) continue;
        if (!store.has(aName) || !store.has(bName)) throw new ModelError("BAD_WEIGHTS", `${where}: ${store.has(aName) ? bName : aName} is missing`);
        known.add(aName).add(bName);
        const path = modulePath(layer, module);
        const rank = patternValue(config.rank_pattern as Json | undefined, path) ?? r;
        const moduleAlpha = patternValue(config.alpha_pattern as Json | undefined, path) ?? alpha;
        const { inFeatures, outFeatures } = moduleShape(base, module);
        const [aShape, bShape] = [store.info(aName).shape, store.info(bName).shape];
        if (aShape.join() !== `${rank},${inFeatures}` || bShape.join() !== `${outFeatures},${rank}`) {
          throw new ModelError("BAD_WEIGHTS", `${where}: ${path} has lora_A [${aShape}] and lora_B [${bShape}], but the base model takes [${rank},${inFeatures}] and [${outFeatures},${rank}] ` +
            "(rank r and the base's widths): is it an adapter of another base model?");
        }
        modules[module] = { rank, scale: rsLora ? moduleAlpha / Math.sqrt(rank) : moduleAlpha / rank, a: store.readFloat32(aName), b: store.readFloat32(bName), inFeatures, outFeatures };
        maxRank = Math.max(maxRank, rank);
      }
      layers.push(modules);
    }
    const extra = store.names().filter((tensor) => !known.has(tensor));
    if (extra.length > 0) {
      const example = extra[0];
      const why = /embed_tokens|lm_head/.test(example) ? "embedding and LM-head adapters are not supported"
        : /layers\.(\d+)\./.test(example) && Number(/layers\.(\d+)\./.exec(example)![1]) >= base.numLayers ? `the base model has ${base.numLayers} layers: is it an adapter of another base model?`
          : "tokenmill does not know where it goes";
      throw new ModelError("UNSUPPORTED_MODEL", `${where}: ${extra.length} tensor${extra.length === 1 ? "" : "s"} such as ${example} (${why})`);
    }
    if (maxRank === 0) throw new ModelError("BAD_WEIGHTS", `${where}: no LoRA weights for any of ${targetModules.join(", ")}`);
    return { name, maxRank, targetModules, layers, baseModel: typeof config.base_model_name_or_path === "string" ? config.base_model_name_or_path : null };
  } finally {
    store.close();
  }
}

/** W + scale·B·A for a weight W [out, in] (row-major): the merged weight an adapted projection is equal to. */
export function mergedWeight(weight: Float32Array, lora: LoraWeights): Float32Array {
  const { a, b, rank, scale, inFeatures, outFeatures } = lora;
  if (weight.length !== inFeatures * outFeatures) throw new Error(`mergedWeight: W has ${weight.length} values, not ${outFeatures}×${inFeatures}`);
  const out = Float32Array.from(weight);
  for (let o = 0; o < outFeatures; o++) {
    for (let j = 0; j < rank; j++) {
      const bj = b[o * rank + j] * scale;
      if (bj === 0) continue;
      const row = j * inFeatures;
      const at = o * inFeatures;
      for (let i = 0; i < inFeatures; i++) out[at + i] += bj * a[row + i];
    }
  }
  return out;
}
