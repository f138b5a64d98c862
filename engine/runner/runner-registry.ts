/**
 * Runners by device. The engine thread asks here for a runner of `--device`; each runner
 * sizes and owns its KV cache. A CUDA runner with a device-resident pool (an addon over ORT's
 * C API IoBinding) would be one more entry.
 */
import type { KvCacheDtype, LoraLayout, ModelConfig } from "../../models/index.ts";
import { OnnxRunner } from "./onnx-host/onnx-runner.ts";
import { WebGpuRunner } from "./onnx-device/webgpu-runner.ts";
import type { StepRunner } from "./step-runner.ts";

export interface RunnerOptions {
  graphPath: string;
  config: ModelConfig;
  blockSize: number;
  /** Memory the runner may spend on its KV cache. */
  kvCacheBytes: number;
  /** How the graph's host pool stores K/V (the graph was built for it); the device pool is float16. */
  kvCacheDtype?: KvCacheDtype;
  intraOpThreads?: number;
  /** Host-pool runners: let ORT's threads spin (see spinningFor). */
  spinning?: boolean;
  /** The graph's LoRA slots (--max-loras, --max-lora-rank); absent: none. */
  lora?: { slots: number; rank: number; layout?: LoraLayout };
}

type RunnerFactory = (options: RunnerOptions) => Promise<StepRunner>;

/**
 * cpu, cuda: ONNX Runtime with the KV cache in host memory, on the CPU EP or on the CUDA EP
 * reading host tensors. webgpu: the KV cache in device memory, PagedAttention on the WebGPU EP.
 */
const RUNNERS = {
  cpu: (options) => OnnxRunner.create({ ...options, device: "cpu" }),
  cuda: (options) => OnnxRunner.create({ ...options, device: "cuda" }),
  webgpu: (options) => WebGpuRunner.create(options),
} satisfies Record<string, RunnerFactory>;

export type Device = keyof typeof RUNNERS;

export const DEVICES = Object.keys(RUNNERS) as Device[];

export function createRunner(device: Device, options: RunnerOptions): Promise<StepRunner> {
  return RUNNERS[device](options);
}
