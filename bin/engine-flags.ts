/** Command-line flags shared by every command that starts an engine. */
import type { ParseArgsConfig } from "node:util";
import { DEFAULT_BATCH_MAX_WAIT_MS, DEFAULT_ENGINE_OPTIONS, DEVICES, type EngineOptions } from "../engine/index.ts";
import { z } from "zod";
import { FlagError, bytesFlag, enumFlag, flagValue, intFlag, numberFlag, optionalFlagValue, type Flag } from "./flags.ts";
import { existsSync } from "node:fs";
import { SYNTHETIC_MODELS, ensureDefaultModel, ensureSyntheticModel } from "../models/synthetic/default-model.ts";
import { readCheckpoint, type Checkpoint } from "../models/checkpoint.ts";
import { DEFAULT_MAX_LORA_RANK, GRAPH_DTYPES, KV_CACHE_DTYPES, QUANTIZATIONS, dtypeProblem, kvCacheDtypeProblem } from "../models/index.ts";
import type { LoraModuleSpec } from "../engine/index.ts";
import { ModelTokenizer } from "../models/tokenizer.ts";

/** Adapter slots when LoRA is on and --max-loras is not given. */
export const DEFAULT_MAX_LORAS = 4;

export const ENGINE_FLAGS = {
  model: { type: "string" },
  device: { type: "string", default: DEFAULT_ENGINE_OPTIONS.device },
  "kv-cache-memory": { type: "string", default: "2GiB" },
  "kv-cache-dtype": { type: "string", default: "auto" },
  "block-size": { type: "string", default: String(DEFAULT_ENGINE_OPTIONS.blockSize) },
  "max-num-seqs": { type: "string", default: String(DEFAULT_ENGINE_OPTIONS.maxNumSeqs) },
  "max-num-batched-tokens": { type: "string", default: String(DEFAULT_ENGINE_OPTIONS.maxNumBatchedTokens) },
  "max-model-len": { type: "string" },
  "no-prefix-caching": { type: "boolean", default: false },
  threads: { type: "string" },
  "ort-spinning": { type: "string", default: "auto" },
  "batch-max-wait": { type: "string" },
  "batch-step-seqs": { type: "string" },
  "grammar-compile-timeout": { type: "string" },
  "grammar-threads": { type: "string" },
  quantization: { type: "string" },
  "quant-block-size": { type: "string" },
  dtype: { type: "string" },
  "rope-before-attention": { type: "boolean", default: false },
  "enable-lora": { type: "boolean", default: false },
  "max-loras": { type: "string" },
  "max-lora-rank": { type: "string" },
  "lora-modules": { type: "string", multiple: true },
} as const satisfies ParseArgsConfig["options"];

export const ENGINE_FLAGS_HELP = `Model and engine:
  --model DIR|NAME              a Hugging Face checkpoint folder, or a synthetic model generated into
                                the cache: tokenmill-tiny-qwen3 (the default), qwen3-0.6b-random
  --device cpu|cuda|webgpu      where steps run (default cpu): cpu and cuda keep the KV pool in host
                                memory; webgpu keeps it on the GPU (PagedAttention, float16 pool)
  --dtype float32|float16|bfloat16
                                the graph's weights and activations (default float16 on webgpu, float32
                                elsewhere); float16 needs webgpu, and no device of this build has bfloat16
  --rope-before-attention       webgpu: rotate q and k before PagedAttention instead of inside it (for A/B runs)
  --kv-cache-memory SIZE        memory for the KV pool (host, or GPU on webgpu), e.g. 2GiB (default 2GiB)
  --kv-cache-dtype auto|float32|float16|int8
                                how the KV pool stores keys and values (default auto: float32 on cpu and cuda,
                                float16 on webgpu); float16 and int8 (per token and head scales) hold 2x and ~3.9x
                                the tokens in the same --kv-cache-memory; webgpu takes float16 only
  --block-size N                tokens per KV block (default 16; webgpu: a power of two from 16)
  --max-num-seqs N              running sequences per step (default ${DEFAULT_ENGINE_OPTIONS.maxNumSeqs})
  --max-num-batched-tokens N    token budget per step (default ${DEFAULT_ENGINE_OPTIONS.maxNumBatchedTokens})
  --max-model-len N             context length (default: the model's max_position_embeddings)
  --no-prefix-caching           turn automatic prefix caching off
  --threads N                   ONNX Runtime intra-op threads (default: all cores)
  --ort-spinning auto|on|off    ONNX Runtime's threads spin between an op's parallel sections (default auto: on for
                                graphs of 256 MiB of weights or more, where it measured faster, off below)
  --batch-max-wait SECONDS      a batch-tier request waiting this long is admitted as standard (default 30)
  --quantization none|int8|int4 the big linears (q/k/v/o, gate/up/down) as int8 or int4 blocks, MatMulNBits with
                                int8 activations, and the embedding and LM head as int8 (default none); the graph
                                is built once per setting
  --quant-block-size N          inputs per quantization block (default 32)
  --grammar-compile-timeout S   a structured-output request whose grammar takes longer to compile fails with a 400, and
                                the thread compiling it is replaced (default 10)
  --grammar-threads N           grammar threads: a new grammar compiles on one that holds no running sequence, so
                                compiles never stall other requests' masks (default 2)
  --batch-step-seqs N           at most N batch-tier sequences per step (taking turns) while interactive or
                                standard requests are about: shorter steps, sooner first tokens (default: no cap)

LoRA adapters (PEFT folders: adapter_config.json, adapter_model.safetensors):
  --enable-lora                 build the graph with adapter slots, so adapters can be served (also implied by the
                                flags below); each adapter is a served model name of its own
  --lora-modules NAME=PATH      serve the adapter at PATH as the model NAME (repeatable; vLLM's JSON form
                                {"name": ..., "path": ...} is accepted too); more at run time: POST /v1/admin/adapters
  --max-loras N                 adapters one step runs at once: the graph's slots (default ${DEFAULT_MAX_LORAS}); more may be
                                loaded, and take the slots in turn (least recently used first)
  --max-lora-rank R             the largest rank a slot holds (default ${DEFAULT_MAX_LORA_RANK})`;

export type EngineFlagValues = { [K in keyof typeof ENGINE_FLAGS]?: string | boolean | string[] };

/**
 * The model folder a command serves: --model DIR, or the name of a synthetic model
 * (generated into the cache on first use), or the embedded default.
 */
export function modelDirFrom(values: EngineFlagValues): string {
  if (typeof values.model !== "string") return ensureDefaultModel();
  if (!existsSync(values.model) && values.model in SYNTHETIC_MODELS) return ensureSyntheticModel(values.model);
  return values.model;
}

/** The engine flags, validated: everything of the engine's options but the model folder. */
export type EngineFlags = Omit<EngineOptions, "modelDir">;

/** Validates the engine flags (before any model is loaded). EOS ids are left to the engine thread, which loads the tokenizer. */
/** A quantization block: a power of two from 16 to 256 inputs. */
const blockSizeFlag: Flag<number> = { schema: z.enum(["16", "32", "64", "128", "256"]).transform(Number), accepts: "one of 16, 32, 64, 128, 256" };

export function readEngineFlags(values: EngineFlagValues): EngineFlags {
  const device = flagValue("device", values.device, enumFlag(...DEVICES));
  const dtype = optionalFlagValue("dtype", values.dtype, enumFlag(...GRAPH_DTYPES));
  const kvDtype = flagValue("kv-cache-dtype", values["kv-cache-dtype"] ?? "auto", enumFlag("auto", ...KV_CACHE_DTYPES));
  const kvCacheDtype = kvDtype === "auto" ? undefined : kvDtype;
  const problem = (dtype === undefined ? null : dtypeProblem(dtype, device)) ?? (kvCacheDtype === undefined ? null : kvCacheDtypeProblem(kvCacheDtype, device));
  if (problem) throw new FlagError(problem);
  return {
    device,
    ...(dtype !== undefined ? { dtype } : {}),
    ...(values["rope-before-attention"] === true ? { ropeInAttention: false } : {}),
    kvCacheMemoryBytes: flagValue("kv-cache-memory", values["kv-cache-memory"], bytesFlag),
    ...(kvCacheDtype !== undefined ? { kvCacheDtype } : {}),
    blockSize: flagValue("block-size", values["block-size"], intFlag(1, 1024)),
    maxNumSeqs: flagValue("max-num-seqs", values["max-num-seqs"], intFlag(1)),
    maxNumBatchedTokens: flagValue("max-num-batched-tokens", values["max-num-batched-tokens"], intFlag(1)),
    maxModelLen: optionalFlagValue("max-model-len", values["max-model-len"], intFlag(1)),
    enablePrefixCaching: values["no-prefix-caching"] !== true,
    intraOpThreads: optionalFlagValue("threads", values.threads, intFlag(1, 1024)),
    ...spinningFlag(flagValue("ort-spinning", values["ort-spinning"] ?? "auto", enumFlag("auto", "on", "off"))),
    quantization: optionalFlagValue("quantization", values.quantization, enumFlag(...QUANTIZATIONS)) ?? "none",
    quantBlockSize: optionalFlagValue("quant-block-size", values["quant-block-size"], blockSizeFlag),
    grammarCompileTimeoutMs: (optionalFlagValue("grammar-compile-timeout", values["grammar-compile-timeout"], numberFlag(0, 3600, { minExclusive: true })) ?? 10) * 1000,
    grammarThreads: optionalFlagValue("grammar-threads", values["grammar-threads"], intFlag(1, 64)),
    batchStepSeqs: optionalFlagValue("batch-step-seqs", values["batch-step-seqs"], intFlag(1)),
    batchMaxWaitMs: (optionalFlagValue("batch-max-wait", values["batch-max-wait"], numberFlag(0)) ?? DEFAULT_BATCH_MAX_WAIT_MS / 1000) * 1000,
    ...loraFlags(values),
    progress: process.stderr.isTTY,
  };
}

/** --enable-lora, --max-loras, --max-lora-rank, --lora-modules: LoRA is on when any of them is given. */
function loraFlags(values: EngineFlagValues): { maxLoras?: number; maxLoraRank?: number; loraModules?: LoraModuleSpec[] } {
  const given = values["lora-modules"];
  const modules = (Array.isArray(given) ? given : typeof given === "string" ? [given] : []).map(loraModuleOf);
  const names = new Set<string>();
  for (const { name } of modules) {
    if (names.has(name)) throw new FlagError(`--lora-modules names ${name} twice`);
    names.add(name);
  }
  const maxLoras = optionalFlagValue("max-loras", values["max-loras"] as string | undefined, intFlag(1, 256));
  const maxLoraRank = optionalFlagValue("max-lora-rank", values["max-lora-rank"] as string | undefined, intFlag(1, 512));
  if (values["enable-lora"] !== true && modules.length === 0 && maxLoras === undefined && maxLoraRank === undefined) return {};
  return { maxLoras: maxLoras ?? DEFAULT_MAX_LORAS, maxLoraRank: maxLoraRank ?? DEFAULT_MAX_LORA_RANK, loraModules: modules };
}

/** NAME=PATH, or vLLM's JSON form {"name": ..., "path": ...}. */
export function loraModuleOf(text: string): LoraModuleSpec {
  if (text.trim().startsWith("{")) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new FlagError(`--lora-modules: ${text} is not JSON`);
    }
    const { name, path } = (parsed ?? {}) as Record<string, unknown>;
    if (typeof name !== "string" || name === "" || typeof path !== "string" || path === "") throw new FlagError(`--lora-modules: the JSON form needs "name" and "path" strings; got ${text}`);
    return { name, path };
  }
  const at = text.indexOf("=");
  if (at <= 0 || at === text.length - 1) throw new FlagError(`--lora-modules takes NAME=PATH (a PEFT adapter folder), e.g. sql-lora=/adapters/sql; got "${text}"`);
  return { name: text.slice(0, at), path: text.slice(at + 1) };
}

function spinningFlag(value: "auto" | "on" | "off"): { spinning?: boolean } {
  return value === "auto" ? {} : { spinning: value === "on" };
}

export function engineOptionsFrom(flags: EngineFlags, checkpoint: Checkpoint): EngineOptions {
  return { ...flags, modelDir: checkpoint.dir };
}

export interface LoadedModel {
  checkpoint: Checkpoint;
  tokenizer: ModelTokenizer;
  engineOptions: EngineOptions;
}

/** For offline commands: the checkpoint, its tokenizer on this thread, and the engine's options. */
export function loadModel(values: EngineFlagValues, flags: EngineFlags): LoadedModel {
  const checkpoint = readCheckpoint(modelDirFrom(values));
  return { checkpoint, tokenizer: ModelTokenizer.load(checkpoint), engineOptions: engineOptionsFrom(flags, checkpoint) };
}
