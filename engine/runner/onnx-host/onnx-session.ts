/**
 * The one file that imports onnxruntime-node: session creation and tensors.
 */
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import * as ort from "onnxruntime-node";
import { GRAPH_OUTPUTS } from "../../../models/index.ts";
import { EngineError } from "../../common/engine-error.ts";
import type { BatchRows } from "../step-rows.ts";

export { ort };
/** The execution providers the runners use: cpu and cuda with the host pool, webgpu with the device pool. */
export type OnnxDevice = "cpu" | "cuda" | "webgpu";

export interface SessionOptions {
  device: OnnxDevice;
  /** Threads for one operator; 0 lets ORT use every core. */
  intraOpThreads?: number;
  /** Let ORT's threads spin while waiting for work (off by default; see spinningFor). */
  spinning?: boolean;
  /** Write ONNX Runtime's per-node profile (Chrome trace JSON) to PREFIX_<date>.json (bench/profile-step.ts). */
  profileFilePrefix?: string;
  /** Where outputs land (default: host memory); "gpu-buffer" keeps them on the WebGPU device. */
  preferredOutputLocation?: "cpu" | "gpu-buffer";
}

const EXECUTION_PROVIDERS: Record<OnnxDevice, string[]> = { cpu: ["cpu"], cuda: ["cuda", "cpu"], webgpu: ["webgpu", "cpu"] };

/**
 * Whether ORT's worker threads should spin between an op's parallel sections, for a graph
 * with this many bytes of weights (--ort-spinning auto). They share the cores with the HTTP
 * thread, tokenizer workers and the engine loop, so spinning pays only where the steps are
 * long. Measured on two cores with `npm run bench`, two runs each, alternating:
 * - the 15M default model at concurrency 32: 1972 and 1931 tok/s without spinning, 1896 and
 *   1826 with it (and `--compare-limit`'s server / limit 0.96-1.02 without, 0.84-0.98 with);
 * - qwen3-0.6b-random int4 (448 MiB): c1 36.2/36.7 → 38.3/38.1 tok/s, c8 73.6/76.7 →
 *   77.0/79.1, c32 75.3/75.3 → 75.8/78.9.
 */
export function spinningFor(weightsBytes: number): boolean {
  return weightsBytes >= SPINNING_WEIGHTS_BYTES;
}

const SPINNING_WEIGHTS_BYTES = 256 * 1024 ** 2;

export async function createSession(graph: string | Uint8Array, options: SessionOptions): Promise<ort.InferenceSession> {
  if (options.device === "cuda") assertCudaBinaries();
  const what = typeof graph === "string" ? graph : "a graph";
  try {
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      executionProviders: EXECUTION_PROVIDERS[options.device],
      graphOptimizationLevel: "all",
      intraOpNumThreads: options.intraOpThreads ?? 0,
      enableCpuMemArena: true,
      enableMemPattern: false,
      ...(options.profileFilePrefix ? { enableProfiling: true, profileFilePrefix: options.profileFilePrefix } : {}),
      // NOTE: whether ORT's threads spin between parallel sections is the engine's choice (spinningFor).
      extra: { session: { intra_op: { allow_spinning: options.spinning ? "1" : "0" } } },
      ...(options.preferredOutputLocation ? { preferredOutputLocation: options.preferredOutputLocation } : {}),
      // NOTE: on WebGPU, ORT warns at every session that shape ops run on the CPU, which is by design.
      ...(options.device === "webgpu" ? { logSeverityLevel: 3 as const } : {}),
    };
    return await (typeof graph === "string" ? ort.InferenceSession.create(graph, sessionOptions) : ort.InferenceSession.create(graph, sessionOptions));
  } catch (err) {
    const message = (err as Error).message;
    if (options.device === "webgpu" && /vulkan|adapter|webgpu/i.test(message)) {
      throw new EngineError("WEBGPU_UNAVAILABLE", `--device webgpu found no usable GPU (${message}). ${WEBGPU_INSTALL_HINT}`);
    }
    throw new EngineError("RUNTIME_FAILED", `ONNX Runtime could not load ${what} on ${options.device}: ${message}`);
  }
}

/** NOTE: ONNX Runtime's WebGPU EP runs on Dawn over Vulkan; Dawn refuses Mesa before 25 (it lacks dynamic indexing of uniform arrays). */
export const WEBGPU_INSTALL_HINT =
  "WebGPU runs over Vulkan: install the GPU's Vulkan driver (NVIDIA's, or Mesa 25 or later for AMD and Intel), " +
  "or on a machine without a GPU Mesa's lavapipe from Debian bookworm-backports: apt-get install -t bookworm-backports mesa-vulkan-drivers";

export const CUDA_INSTALL_HINT =
  "node node_modules/onnxruntime-node/script/install --onnxruntime-node-install=cuda12";

/** NOTE: npm ci runs without onnxruntime-node's install script, so the CUDA provider is fetched separately. */
function assertCudaBinaries(): void {
  const require = createRequire(import.meta.url);
  const binDir = join(dirname(require.resolve("onnxruntime-node")), "..", "bin");
  const found = existsSync(binDir) && findFile(binDir, "libonnxruntime_providers_cuda.so");
  if (!found) {
    throw new EngineError(
      "CUDA_UNAVAILABLE",
      `--device cuda needs ONNX Runtime's CUDA provider, which is not installed (no libonnxruntime_providers_cuda.so under ${binDir}). ` +
        `On a machine with an NVIDIA GPU and internet access, run: ${CUDA_INSTALL_HINT}`,
    );
  }
}

function findFile(dir: string, name: string): boolean {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isFile() && entry.name === name) return true;
    if (entry.isDirectory() && findFile(join(dir, entry.name), name)) return true;
  }
  return false;
}

export function int64Tensor(values: BigInt64Array, dims: number[]): ort.Tensor {
  return new ort.Tensor("int64", values, dims);
}

export function floatTensor(values: Float32Array, dims: number[]): ort.Tensor {
  return new ort.Tensor("float32", values, dims);
}

/** The logits rows a step fetched (graph-io.ts names them), as host arrays. */
export function rowsOf(out: ort.InferenceSession.OnnxValueMapType, options: { fullLogits: boolean; probs?: boolean; hidden?: boolean }): BatchRows {
  return {
    topN: out[GRAPH_OUTPUTS.topIds].dims[1] ?? 0,
    topIds: Int32Array.from(out[GRAPH_OUTPUTS.topIds].data as BigInt64Array, Number),
    topLogprobs: out[GRAPH_OUTPUTS.topLogprobs].data as Float32Array,
    full: options.fullLogits ? (out[GRAPH_OUTPUTS.logits].data as Float32Array) : null,
    probs: options.probs ? (out[GRAPH_OUTPUTS.probs].data as Float32Array) : null,
    hidden: options.hidden ? (out[GRAPH_OUTPUTS.hidden].data as Float32Array) : null,
  };
}
