/** How an engine thread is set up: the model, the device and the scheduler's limits. */
import type { GraphDtype, KvCacheDtype, Quantization } from "../../models/index.ts";
import type { Device } from "../runner/runner-registry.ts";
import type { KvCacheInfo } from "../runner/step-runner.ts";

export interface EngineOptions {
  /** A Hugging Face checkpoint folder. */
  modelDir: string;
  device: Device;
  /** Bytes of memory for the KV pool: host memory, or device memory on webgpu. */
  kvCacheMemoryBytes: number;
  /**
   * How the pool stores K/V (--kv-cache-dtype; unset: auto, float32 on the host pool and
   * float16 on webgpu's): float16 and int8 hold 2× and ~3.9× the tokens in the same memory.
   */
  kvCacheDtype?: KvCacheDtype;
  /** The graph's weights and activations (--dtype; default float16 on webgpu, float32 elsewhere). */
  dtype?: GraphDtype;
  /** webgpu: rotary inside PagedAttention (default) or before it (--rope-before-attention). */
  ropeInAttention?: boolean;
  blockSize: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  /** Defaults to the model's max_position_embeddings. */
  maxModelLen?: number;
  enablePrefixCaching: boolean;
  /** Token ids that end a sequence; by default generation_config.json's, config.json's and the tokenizer's EOS. */
  eosTokenIds?: number[];
  /** Threads for one ONNX Runtime operator; 0: every core. */
  intraOpThreads?: number;
  /** ONNX Runtime's threads spin between parallel sections (--ort-spinning; unset: auto, by the graph's weight bytes: spinningFor). */
  spinning?: boolean;
  /** How long a batch-tier request may wait before it is admitted as standard (default 30 s). */
  batchMaxWaitMs?: number;
  /** The big linears' weights: float (none), or int8/int4 blocks through MatMulNBits (--quantization). */
  quantization?: Quantization;
  /** Inputs per quantization block (--quant-block-size, default 32). */
  quantBlockSize?: number;
  /** How long a request's grammar may take to compile before the request fails (default 10 s). */
  grammarCompileTimeoutMs?: number;
  /** At most this many grammar threads, each compiling or matching its own grammars (--grammar-threads, default 2). */
  grammarThreads?: number;
  /** At most this many batch-tier sequences per step while higher tiers are about (see Scheduler). */
  batchStepSeqs?: number;
  /**
   * LoRA: the graph takes this many adapters at once (--max-loras; unset or 0: no LoRA), each
   * of rank up to maxLoraRank (--max-lora-rank, default 16). More may be loaded than this: they
   * take the slots in turn (core/adapter-slots.ts).
   */
  maxLoras?: number;
  maxLoraRank?: number;
  /** Adapters served from the start (--lora-modules name=path), read and checked as the engine starts. */
  loraModules?: LoraModuleSpec[];
  /** Show a progress bar while the graph builds. */
  progress?: boolean;
  /** Tests only (no flag sets it): lets Engine.injectFault() make the engine thread throw. */
  faultInjection?: boolean;
}

export const DEFAULT_ENGINE_OPTIONS = {
  device: "cpu",
  kvCacheMemoryBytes: 2 * 1024 ** 3,
  blockSize: 16,
  maxNumSeqs: 128,
  maxNumBatchedTokens: 2048,
  enablePrefixCaching: true,
} as const satisfies Partial<EngineOptions>;

/** A LoRA adapter to serve: the name requests give, and its PEFT folder. */
export interface LoraModuleSpec {
  name: string;
  path: string;
}

/** A loaded LoRA adapter, as the engine reports it. */
export interface AdapterInfo extends LoraModuleSpec {
  rank: number;
  targetModules: string[];
  /** adapter_config.json's base_model_name_or_path, when it names one. */
  baseModel: string | null;
}

/** What the engine thread reports once it is ready. */
export interface EngineInfo {
  modelDir: string;
  architecture: string;
  vocabSize: number;
  /** The width of the model's hidden state: an embedding's length. */
  hiddenSize: number;
  maxModelLen: number;
  /** Set when the KV pool holds fewer tokens than the context asked for, which was capped to fit. */
  maxModelLenCappedFrom?: number;
  numBlocks: number;
  blockSize: number;
  /** The runner's KV cache: blocks, the tokens they hold and their bytes. */
  kvCache: KvCacheInfo;
  graphBuilt: boolean;
  graphBuildMs: number;
  /** The graph's weights on disk, as loaded (quantized graphs are smaller). */
  weightsBytes: number;
  loadMs: number;
  /** The LoRA slots (null: none), and the adapters loaded at start. */
  lora: { maxLoras: number; maxLoraRank: number } | null;
  adapters: AdapterInfo[];
}

/** Parses "2GiB", "512MiB", "1.5GB" or a plain number of bytes. */
export function parseBytes(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$/i.exec(text);
  if (!match) throw new Error(`cannot read "${text}" as a size; write e.g. 2GiB or 512MiB`);
  const unit = (match[2] ?? "").toUpperCase().replace(/B$/, "");
  const powers: Record<string, number> = { "": 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, KI: 1024, MI: 1024 ** 2, GI: 1024 ** 3, TI: 1024 ** 4 };
  const scale = powers[unit];
  if (scale === undefined) throw new Error(`unknown size unit in "${text}"`);
  return Math.floor(Number(match[1]) * scale);
}
