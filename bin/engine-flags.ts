/** Command-line flags shared by every command that starts an engine. */
import type { ParseArgsConfig } from "node:util";
import { DEFAULT_ENGINE_OPTIONS, parseBytes, type Device, type EngineOptions } from "../engine/index.ts";
import { existsSync } from "node:fs";
import { SYNTHETIC_MODELS, ensureDefaultModel, ensureSyntheticModel } from "../models/default-model.ts";
import { readCheckpoint, type Checkpoint } from "../models/checkpoint.ts";
import { ModelTokenizer } from "../models/tokenizer.ts";

export const ENGINE_FLAGS = {
  model: { type: "string" },
  device: { type: "string", default: DEFAULT_ENGINE_OPTIONS.device },
  "kv-cache-memory": { type: "string", default: "2GiB" },
  "block-size": { type: "string", default: String(DEFAULT_ENGINE_OPTIONS.blockSize) },
  "max-num-seqs": { type: "string", default: String(DEFAULT_ENGINE_OPTIONS.maxNumSeqs) },
  "max-num-batched-tokens": { type: "string", default: String(DEFAULT_ENGINE_OPTIONS.maxNumBatchedTokens) },
  "max-model-len": { type: "string" },
  "no-prefix-caching": { type: "boolean", default: false },
  threads: { type: "string" },
} as const satisfies ParseArgsConfig["options"];

export const ENGINE_FLAGS_HELP = `Model and engine:
  --model DIR|NAME              a Hugging Face checkpoint folder, or a synthetic model generated into
                                the cache: tokenmill-tiny-qwen3 (the default), qwen3-0.6b-random
  --device cpu|cuda             execution provider (default cpu)
  --kv-cache-memory SIZE        host memory for the KV pool, e.g. 2GiB (default 2GiB)
  --block-size N                tokens per KV block (default 16)
  --max-num-seqs N              running sequences per step (default ${DEFAULT_ENGINE_OPTIONS.maxNumSeqs})
  --max-num-batched-tokens N    token budget per step (default ${DEFAULT_ENGINE_OPTIONS.maxNumBatchedTokens})
  --max-model-len N             context length (default: the model's max_position_embeddings)
  --no-prefix-caching           turn automatic prefix caching off
  --threads N                   ONNX Runtime intra-op threads (default: all cores)`;

export type EngineFlagValues = { [K in keyof typeof ENGINE_FLAGS]?: string | boolean };

/**
 * The model folder a command serves: --model DIR, or the name of a synthetic model
 * (generated into the cache on first use), or the embedded default.
 */
export function modelDirFrom(values: EngineFlagValues): string {
  if (typeof values.model !== "string") return ensureDefaultModel();
  if (!existsSync(values.model) && values.model in SYNTHETIC_MODELS) return ensureSyntheticModel(values.model);
  return values.model;
}

/** Engine options from the flags. EOS ids are left to the engine thread, which loads the tokenizer. */
export function engineOptionsFrom(values: EngineFlagValues, checkpoint: Checkpoint): EngineOptions {
  const device = String(values.device);
  if (device !== "cpu" && device !== "cuda") throw new Error(`--device must be cpu or cuda, got ${device}`);
  return {
    modelDir: checkpoint.dir,
    device: device as Device,
    kvCacheMemoryBytes: parseBytes(String(values["kv-cache-memory"])),
    blockSize: positiveInt(values["block-size"], "--block-size"),
    maxNumSeqs: positiveInt(values["max-num-seqs"], "--max-num-seqs"),
    maxNumBatchedTokens: positiveInt(values["max-num-batched-tokens"], "--max-num-batched-tokens"),
    maxModelLen: values["max-model-len"] === undefined ? undefined : positiveInt(values["max-model-len"], "--max-model-len"),
    enablePrefixCaching: values["no-prefix-caching"] !== true,
    intraOpThreads: values.threads === undefined ? undefined : positiveInt(values.threads, "--threads"),
    progress: process.stderr.isTTY,
  };
}

export interface LoadedModel {
  checkpoint: Checkpoint;
  tokenizer: ModelTokenizer;
  engineOptions: EngineOptions;
}

/** For offline commands: the checkpoint, its tokenizer on this thread, and the engine's options. */
export function loadModel(values: EngineFlagValues): LoadedModel {
  const checkpoint = readCheckpoint(modelDirFrom(values));
  return { checkpoint, tokenizer: ModelTokenizer.load(checkpoint), engineOptions: engineOptionsFrom(values, checkpoint) };
}

export function positiveInt(value: unknown, flag: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${flag} must be a positive integer, got ${String(value)}`);
  return n;
}
