/**
 * Seeded random LoRA adapters in PEFT's layout (adapter_config.json, adapter_model.safetensors),
 * for tests and benchmarks: generated into the cache like the synthetic checkpoints, never
 * committed. Unlike a freshly initialized PEFT adapter (B = 0), both A and B are random, so
 * the adapter changes what the model says.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { cacheDir } from "../cache-dir.ts";
import type { ModelConfig } from "../config.ts";
import { LORA_MODULES, moduleShape, modulePath, type LoraModule } from "../lora/adapter.ts";
import { deriveSeed, fillNormal, Prng } from "../prng.ts";
import { writeSafetensors, type TensorEntry } from "../weights/safetensors.ts";

export interface RandomLoraOptions {
  rank: number;
  alpha: number;
  seed: number;
  targetModules?: readonly LoraModule[];
  /** Standard deviation of A's and B's entries (default 0.05). */
  std?: number;
  /** PEFT's rank_pattern / alpha_pattern, written as given (their ranks shape the tensors). */
  rankPattern?: Record<string, number>;
  alphaPattern?: Record<string, number>;
  /** More config keys, written as given (use_rslora, use_dora, ...: for tests of what is refused). */
  extraConfig?: Record<string, unknown>;
  baseModel?: string;
}

export function writeRandomLoraAdapter(dir: string, base: ModelConfig, options: RandomLoraOptions): void {
  const targets = options.targetModules ?? LORA_MODULES;
  const std = options.std ?? 0.05;
  const entries: TensorEntry[] = [];
  for (let layer = 0; layer < base.numLayers; layer++) {
    for (const module of targets) {
      const path = modulePath(layer, module);
      const rank = Object.entries(options.rankPattern ?? {}).find(([key]) => path === key || path.endsWith(`.${key}`))?.[1] ?? options.rank;
      const { inFeatures, outFeatures } = moduleShape(base, module);
      for (const [which, shape] of [["A", [rank, inFeatures]], ["B", [outFeatures, rank]]] as const) {
        const name = `base_model.model.${path}.lora_${which}.weight`;
        entries.push({ name, dtype: "F32", shape: [...shape], data: () => fillNormal(new Prng(deriveSeed(options.seed, name)), shape[0] * shape[1], std) });
      }
    }
  }
  mkdirSync(dir, { recursive: true });
  const config = {
    peft_type: "LORA", task_type: "CAUSAL_LM", base_model_name_or_path: options.baseModel ?? null, r: options.rank, lora_alpha: options.alpha,
    target_modules: [...targets], lora_dropout: 0, bias: "none", fan_in_fan_out: false, use_rslora: false, use_dora: false,
    rank_pattern: options.rankPattern ?? {}, alpha_pattern: options.alphaPattern ?? {}, modules_to_save: null, ...options.extraConfig,
  };
  writeFileSync(join(dir, "adapter_config.json"), `${JSON.stringify(config, null, 2)}\n`);
  writeSafetensors(join(dir, "adapter_model.safetensors"), entries, { format: "pt" });
}

/**
 * Benchmarks' adapters: `count` seeded random adapters of `rank` for the checkpoint at
 * `modelDir`, generated once into the cache (`lora-adapters/MODEL-rR-I`); their folders, in order.
 */
export function cachedRandomAdapters(modelDir: string, config: ModelConfig, count: number, rank: number): string[] {
  return Array.from({ length: count }, (_, i) => {
    const path = cacheDir("lora-adapters", `${basename(modelDir)}-r${rank}-${i}`);
    if (!existsSync(join(path, "adapter_model.safetensors"))) writeRandomLoraAdapter(path, config, { rank, alpha: 2 * rank, seed: 1000 + i, std: 0.02 });
    return path;
  });
}
