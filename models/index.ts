/** The public entry point of models/. */
export { readModelConfig, parseModelConfig, type ModelConfig } from "./config.ts";
export { SUPPORTED_ARCHITECTURES } from "./families.ts";
export { ModelError } from "./model-error.ts";
export { ensureGraph, type BuiltGraph } from "./build-graph.ts";
export { cacheDir } from "./cache-dir.ts";
export type { GenerationDefaults } from "./checkpoint.ts";
