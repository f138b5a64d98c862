/** The public entry point of models/. */
export { readModelConfig, parseModelConfig, type ModelConfig } from "./config.ts";
export { SUPPORTED_ARCHITECTURES } from "./families.ts";
export { ModelError } from "./model-error.ts";
export { DEFAULT_MAX_LORA_RANK, GRAPH_DTYPES, dtypeProblem, kvCacheDtypeProblem, ensureGraph, weightsBytesOf, normalizedBuildOptions, type BuiltGraph, type GraphBuildOptions, type GraphDtype, type LoraLayout } from "./build-graph.ts";
export { GRAPH_INPUTS, GRAPH_OUTPUTS, TOP_LOGPROBS, loraInputNames, poolInputNames, presentOutputNames } from "./graph/graph-io.ts";
export { KV_CACHE_DTYPES, hasScales, kvBytes, type KvCacheDtype } from "./graph/kv-dtype.ts";
export { cacheDir } from "./cache-dir.ts";
export { DEFAULT_QUANT_BLOCK_SIZE, QUANTIZATIONS, type Quantization } from "./graph/quantize.ts";
export type { GenerationDefaults } from "./checkpoint.ts";
export { ZEROS_GRAPH_IO, float16ZerosGraph } from "./graph/zeros-graph.ts";
export { LORA_MODULES, mergedWeight, moduleShape, readLoraAdapter, type LoraAdapter, type LoraModule, type LoraWeights } from "./lora/adapter.ts";
