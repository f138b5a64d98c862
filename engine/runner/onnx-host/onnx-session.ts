/**
 * The one file that imports onnxruntime-node: session creation and tensors.
 */
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import * as ort from "onnxruntime-node";
import { EngineError } from "../../core/engine-error.ts";

export { ort };
/** The execution providers this runner can use. */
export type OnnxDevice = "cpu" | "cuda";

export interface SessionOptions {
  device: OnnxDevice;
  /** Threads for one operator; 0 lets ORT use every core. */
  intraOpThreads?: number;
  /** Let ORT's threads spin while waiting for work (off by default; see createSession). */
  spinning?: boolean;
  /** Write ONNX Runtime's per-node profile (Chrome trace JSON) to PREFIX_<date>.json (bench/profile-step.ts). */
  profileFilePrefix?: string;
}

export async function createSession(graphPath: string, options: SessionOptions): Promise<ort.InferenceSession> {
  if (options.device === "cuda") assertCudaBinaries();
  try {
    return await ort.InferenceSession.create(graphPath, {
      executionProviders: options.device === "cuda" ? ["cuda", "cpu"] : ["cpu"],
      graphOptimizationLevel: "all",
      intraOpNumThreads: options.intraOpThreads ?? 0,
      enableCpuMemArena: true,
      enableMemPattern: false,
      ...(options.profileFilePrefix ? { enableProfiling: true, profileFilePrefix: options.profileFilePrefix } : {}),
      // NOTE: ORT's worker threads spin between parallel sections by default. Here they share the
      // cores with the HTTP thread, tokenizer workers and the engine loop. Five runs each of
      // `npm run bench -- --compare-limit` on two cores: the server's median throughput was 1299
      // tok/s without spinning and 1235 with it (server / limit 0.96-1.02 against 0.84-0.98);
      // only the bare runner, alone on the machine, gains from spinning.
      extra: { session: { intra_op: { allow_spinning: options.spinning ? "1" : "0" } } },
    });
  } catch (err) {
    throw new EngineError("RUNTIME_FAILED", `ONNX Runtime could not load ${graphPath} on ${options.device}: ${(err as Error).message}`);
  }
}

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
