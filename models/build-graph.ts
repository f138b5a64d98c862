/**
 * Turns a Hugging Face checkpoint folder into the paged-KV ONNX graph, cached on disk.
 *
 * The cache key covers the builder version, config.json, the weight files' names,
 * sizes and modification times, and the graph's build options (dtype, quantization, the
 * device it is built for), so a second start skips the build, any change to the checkpoint
 * rebuilds it, and graphs built with different options never collide.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { DEFAULT_QUANT_BLOCK_SIZE, type Quantization } from "./graph/quantize.ts";
import cliProgress from "cli-progress";
import { readModelConfig, type ModelConfig } from "./config.ts";
import { ModelError } from "./model-error.ts";
import { cacheDir } from "./cache-dir.ts";
import { buildDecoderGraph } from "./graph/decoder-graph.ts";
import type { WeightSource } from "./graph/layers.ts";
import { DataType, OnnxGraph } from "./graph/onnx-graph.ts";
import type { AttentionKind } from "./graph/step-attention.ts";
import type { KvCacheDtype } from "./graph/kv-dtype.ts";
import { openWeights } from "./weights/safetensors.ts";

/** Bump when the graph's inputs, outputs or numerics change. */
const BUILDER_VERSION = 6;
/** NOTE: the builder's own source is part of the key too, so editing it can never serve a stale graph. */
// NOTE: compiled to JavaScript (the bundle), the builder's sources are the .js files beside this one.
const SOURCE_EXT = import.meta.url.endsWith(".js") ? ".js" : ".ts";
const BUILDER_SOURCES = [
  "graph/decoder-graph", "graph/gathered-attention", "graph/step-attention", "graph/kv-dtype", "graph/layers", "graph/onnx-graph", "graph/quantize",
  "graph/graph-io", "config", "families", "weights/float-formats", "lora/adapter",
].map((name) => name + SOURCE_EXT);

export const GRAPH_DTYPES = ["float32", "float16", "bfloat16"] as const;
export type GraphDtype = (typeof GRAPH_DTYPES)[number];

/** What the graph is built as; each is part of the cache key. */
export interface GraphBuildOptions {
  /** Weights and activations (default float16 on webgpu, float32 elsewhere); see dtypeProblem. */
  dtype?: GraphDtype;
  /** The big linears (q/k/v/o, gate/up/down) as int8 or int4 blocks through MatMulNBits; none: float. */
  quantization?: Quantization;
  /** Inputs per quantization block (default 32). */
  quantBlockSize?: number;
  /** The device the graph is built for: webgpu gets the device-pool graph (PagedAttention), the others the host-pool one. */
  device?: string;
  /**
   * Device-pool graphs: rotary embedding inside PagedAttention (from cos/sin caches) rather
   * than before it (default on; see the README's GPU section).
   */
  ropeInAttention?: boolean;
  /**
   * q/k/v as one matmul and gate/up as one. Default: on for quantized graphs, off for float
   * ones, as measured by bench/ab-step.ts (README, "Quantized weights").
   */
  fuseProjections?: boolean;
  /**
   * How the host pool stores K/V (kv-dtype.ts; default float32). The device pool is float16,
   * the only pool PagedAttention reads; see kvCacheDtypeProblem.
   */
  kvCacheDtype?: KvCacheDtype;
  /** Host pool: RoPE as ONNX's RotaryEmbedding op (default) rather than plain ops (for A/B runs). */
  ropeOp?: boolean;
  /** LoRA adapter slots (--max-loras; 0, the default: none) and the rank each holds (--max-lora-rank). */
  maxLoras?: number;
  maxLoraRank?: number;
  /**
   * How a projection applies each row's adapter (graph-io.ts): "stacked" (default) multiplies
   * by every slot's A and B at once and masks the other slots' columns; "gather" gathers each
   * row's own A and B first (for A/B runs: measured slower, docs/performance.md).
   */
  loraLayout?: LoraLayout;
}

export type LoraLayout = "stacked" | "gather";

export interface BuildOptions {
  /** Show a progress bar on stderr while building. */
  progress?: boolean;
  build?: GraphBuildOptions;
}

/** vLLM's default --max-lora-rank. */
export const DEFAULT_MAX_LORA_RANK = 16;

/** The build options with every default filled in, as the cache key sees them. */
export function normalizedBuildOptions(build: GraphBuildOptions = {}): Required<GraphBuildOptions> {
  const quantization = build.quantization ?? "none";
  const device = build.device ?? "cpu";
  const devicePool = attentionKindFor(device) === "device-pool";
  return {
    dtype: build.dtype ?? (devicePool ? "float16" : "float32"),
    quantization,
    quantBlockSize: quantization === "none" ? 0 : (build.quantBlockSize ?? DEFAULT_QUANT_BLOCK_SIZE),
    device,
    fuseProjections: build.fuseProjections ?? quantization !== "none",
    ropeInAttention: devicePool && (build.ropeInAttention ?? true),
    kvCacheDtype: build.kvCacheDtype ?? (devicePool ? "float16" : "float32"),
    ropeOp: !devicePool && (build.ropeOp ?? true),
    maxLoras: build.maxLoras ?? 0,
    maxLoraRank: (build.maxLoras ?? 0) > 0 ? (build.maxLoraRank ?? DEFAULT_MAX_LORA_RANK) : 0,
    loraLayout: build.loraLayout ?? "stacked",
  };
}

/** Which KV pool a device's graph attends over: WebGPU keeps it on the device; CPU and CUDA pass it in from host memory. */
export function attentionKindFor(device: string): AttentionKind {
  return device === "webgpu" ? "device-pool" : "host-pool";
}

/**
 * Why a dtype can't be built for a device, or null if it can.
 * - float16 is for the device-pool graph: ONNX Runtime's CPU EP has no fast float16 GEMM on
 *   x86 (MLAS has one only on ARM), and the host-pool graph's K/V copy is float32.
 * - bfloat16 has no WebGPU kernels (WGSL has no bfloat16 type), and no fast CPU ones either.
 */
export function dtypeProblem(dtype: GraphDtype, device: string): string | null {
  if (dtype === "float32") return null;
  if (dtype === "float16" && attentionKindFor(device) === "device-pool") return null;
  if (dtype === "float16") return `--dtype float16 needs --device webgpu; the ${device} runner computes in float32`;
  return `--dtype bfloat16 is supported on no device of this build: WebGPU has no bfloat16 type and ONNX Runtime's CPU kernels none that are fast; use float16 on webgpu or float32`;
}

/** Why a KV cache dtype can't be used on a device, or null if it can. */
export function kvCacheDtypeProblem(kvCacheDtype: KvCacheDtype, device: string): string | null {
  if (attentionKindFor(device) === "host-pool" || kvCacheDtype === "float16") return null;
  return `--kv-cache-dtype ${kvCacheDtype} is for the host pool (cpu, cuda); the ${device} runner's PagedAttention pool is float16`;
}

export interface BuiltGraph {
  graphPath: string;
  config: ModelConfig;
  /** Whether this call built the graph (false: it came from the cache). */
  built: boolean;
  buildMs: number;
  /** Bytes of the graph's weights on disk (its external data file), as ONNX Runtime loads them. */
  weightsBytes: number;
  /** How its pool stores K/V. */
  kvCacheDtype: KvCacheDtype;
}

export function ensureGraph(checkpointDir: string, options: BuildOptions = {}): BuiltGraph {
  const dir = resolve(checkpointDir);
  const config = readModelConfig(dir);
  const build = normalizedBuildOptions(options.build);
  const problem = dtypeProblem(build.dtype, build.device) ?? kvCacheDtypeProblem(build.kvCacheDtype, build.device);
  if (problem) throw new ModelError("UNSUPPORTED_DTYPE", problem);
  const outDir = cacheDir("graphs", `${basename(dir)}-${cacheKey(dir, build)}`);
  const graphPath = join(outDir, "model.onnx");
  const { kvCacheDtype } = build;
  if (existsSync(graphPath)) return { graphPath, config, built: false, buildMs: 0, weightsBytes: weightsBytesOf(graphPath), kvCacheDtype };

  const started = performance.now();
  // NOTE: build into a scratch folder and rename, so an interrupted build never leaves a half-written cache entry.
  const scratch = `${outDir}.partial-${process.pid}`;
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(scratch, { recursive: true });
  let weights: ReturnType<typeof openWeights> | null = null;
  const bar = options.progress ? new cliProgress.SingleBar({
    format: `building ${basename(dir)} graph [{bar}] {value}/{total} layers | {duration_formatted}`,
    stream: process.stderr,
  }, cliProgress.Presets.shades_classic) : null;
  try {
    const store = (weights = openWeights(dir));
    bar?.start(config.numLayers, 0);
    const g = new OnnxGraph(join(scratch, "model.onnx.data"), build.dtype === "float16" ? DataType.FLOAT16 : DataType.FLOAT);
    const source: WeightSource = { read: (name) => ({ data: store.readFloat32(name), shape: store.info(name).shape }) };
    buildDecoderGraph(g, config, source, (layer) => bar?.update(layer + 1), {
      linears: { quantization: build.quantization, blockSize: build.quantBlockSize, fuse: build.fuseProjections },
      attention: { kind: attentionKindFor(build.device), ropeInside: build.ropeInAttention, kvDtype: kvCacheDtype },
      ropeOp: build.ropeOp,
      ...(build.maxLoras > 0 ? { lora: { slots: build.maxLoras, rank: build.maxLoraRank, layout: build.loraLayout } } : {}),
    });
    writeFileSync(join(scratch, "model.onnx"), g.finish(basename(dir)));
    writeFileSync(join(scratch, "meta.json"), JSON.stringify({ checkpoint: dir, builderVersion: BUILDER_VERSION, build, config }, null, 2));
    // NOTE: another process may have built the same graph meanwhile, and be loading it: keep its copy, never pull it from under it.
    if (existsSync(graphPath)) rmSync(scratch, { recursive: true, force: true });
    else {
      rmSync(outDir, { recursive: true, force: true });
      renameSync(scratch, outDir);
    }
  } catch (err) {
    rmSync(scratch, { recursive: true, force: true });
    throw err;
  } finally {
    bar?.stop();
    weights?.close();
  }
  return { graphPath, config, built: true, buildMs: performance.now() - started, weightsBytes: weightsBytesOf(graphPath), kvCacheDtype };
}

/** Bytes of a built graph's weights: its external data file (0 if it has none). */
export function weightsBytesOf(graphPath: string): number {
  const data = `${graphPath}.data`;
  return existsSync(data) ? statSync(data).size : 0;
}

function cacheKey(dir: string, build: Required<GraphBuildOptions>): string {
  const hash = createHash("sha256");
  hash.update(`builder ${BUILDER_VERSION}\n`);
  hash.update(`build ${JSON.stringify(build, Object.keys(build).sort())}\n`);
  for (const source of BUILDER_SOURCES) hash.update(readFileSync(new URL(source, import.meta.url)));
  hash.update(readFileSync(join(dir, "config.json")));
  for (const name of readdirSync(dir).filter((f) => f.endsWith(".safetensors") || f.endsWith(".index.json")).sort()) {
    const stat = statSync(join(dir, name));
    hash.update(`\n${name} ${stat.size} ${stat.mtimeMs}`);
  }
  return hash.digest("hex").slice(0, 16);
}
