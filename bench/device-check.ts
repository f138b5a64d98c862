/**
 * The device check (`tokenmill device-check`): one command for a GPU host, run from the bundle
 * or the source tree. It reports the GPU (nvidia-smi), whether Vulkan (and so WebGPU) sees it
 * and with shaderFloat16, whether ONNX Runtime's CUDA EP libraries are there, a greedy run on
 * --device webgpu beside --device cpu, throughput at several concurrencies and the TTFT of a
 * long prompt on the device, and the most GPU memory in use meanwhile.
 *
 * Profiles: "full" is the GPU host's (the Qwen3-0.6B shape in float16; concurrency 1, 32 and
 * 128; a 1,024-token prompt); "quick" is CI's on lavapipe (the default model; concurrency 1 and
 * 4; a 256-token prompt). Both give the same report (device-report.ts).
 *
 * Each part says what is missing and goes on; the whole keeps within its deadline (8 minutes
 * by default): what it does not reach stays empty, and the report says it stopped early.
 */
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { OnnxRunner } from "../engine/runner/onnx-host/onnx-runner.ts";
import { KvBuffers } from "../engine/runner/onnx-host/kv-buffers.ts";
import { DevicePool } from "../engine/runner/onnx-device/device-pool.ts";
import { WebGpuRunner } from "../engine/runner/onnx-device/webgpu-runner.ts";
import type { StepRunner, StepSequence } from "../engine/runner/step-runner.ts";
import { ensureGraph } from "../models/build-graph.ts";
import { readCheckpoint } from "../models/checkpoint.ts";
import { ensureDefaultModel } from "../models/synthetic/default-model.ts";
import { benchPointOf, parseMemoryUsed, parseNvidiaSmi, parseVulkaninfo, type BenchPoint, type DeviceReport } from "./device-report.ts";
import { tokenmillCommand } from "./self-command.ts";

const execFileAsync = promisify(execFile);

export type DeviceCheckProfile = "full" | "quick";

interface BenchPlan {
  model: string | null;
  dtype: string;
  kvCacheMemory: string;
  points: { concurrency: number; numPrompts: number }[];
  inputLen: number;
  outputLen: number;
  ttftInputLen: number;
}

const PLANS: Record<DeviceCheckProfile, BenchPlan> = {
  full: {
    model: "qwen3-0.6b-random", dtype: "float16", kvCacheMemory: "8GiB",
    points: [{ concurrency: 1, numPrompts: 8 }, { concurrency: 32, numPrompts: 64 }, { concurrency: 128, numPrompts: 256 }],
    inputLen: 128, outputLen: 64, ttftInputLen: 1024,
  },
  quick: {
    model: null, dtype: "float16", kvCacheMemory: "256MiB",
    points: [{ concurrency: 1, numPrompts: 4 }, { concurrency: 4, numPrompts: 8 }],
    inputLen: 64, outputLen: 16, ttftInputLen: 256,
  },
};

export interface DeviceCheckOptions {
  profile: DeviceCheckProfile;
  /** The whole check's time limit (default 8 minutes). */
  deadlineMs?: number;
  /** Where each part's text goes as it finishes (default: nowhere). */
  log?: (text: string) => void;
}

export async function runDeviceCheck(options: DeviceCheckOptions): Promise<DeviceReport> {
  const started = Date.now();
  const deadline = started + (options.deadlineMs ?? 8 * 60_000) - 10_000;
  const left = () => deadline - Date.now();
  const log = options.log ?? (() => {});
  const plan = PLANS[options.profile];
  const version = (createRequire(import.meta.url)("../package.json") as { version: string }).version;

  const report: DeviceReport = {
    format: "tokenmill-device-check/1", tokenmillVersion: version, node: process.version, startedAt: new Date(started).toISOString(), seconds: 0,
    profile: options.profile, gpus: null, gpuError: null,
    vulkan: { icds: [], adapters: null, error: null },
    cudaProvider: { library: null, cudaLibraries: {} },
    greedy: { model: "", numTokens: 32, cpu: null, webgpu: null, equal: null, firstDifference: null, maxTop1LogprobDelta: null, error: null },
    bench: { model: plan.model ?? "", device: "webgpu", dtype: plan.dtype, points: [], ttft: null },
    gpuMemoryUsedMiB: null, stoppedEarly: false,
  };

  const smi = await tool("nvidia-smi", ["--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader,nounits"]);
  if (smi.ok) report.gpus = parseNvidiaSmi(smi.out);
  else report.gpuError = `nvidia-smi did not run (${smi.out})`;
  log(`GPU: ${report.gpus ? report.gpus.map((g) => g.name).join(", ") : report.gpuError}`);

  const icdDirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"].filter(existsSync);
  report.vulkan.icds = icdDirs.flatMap((dir) => readdirSync(dir).map((name) => join(dir, name)));
  const info = await tool("vulkaninfo", [], 60_000);
  if (info.ok || info.out.includes("GPU0:")) report.vulkan.adapters = parseVulkaninfo(info.out);
  else report.vulkan.error = `vulkaninfo did not run (apt-get install vulkan-tools): ${info.out.split("\n").slice(-2).join(" ")}`;
  log(`Vulkan: ${report.vulkan.adapters?.map((a) => `${a.deviceName}, shaderFloat16 ${a.shaderFloat16}`).join("; ") ?? report.vulkan.error}`);

  report.cudaProvider = await cudaLibraries();

  try {
    Object.assign(report.greedy, await greedyBesideCpu());
  } catch (err) {
    report.greedy.error = (err as Error).message;
  }
  log(`greedy: ${report.greedy.error ?? (report.greedy.equal ? "equal" : `first difference at token ${report.greedy.firstDifference}`)}`);

  const memory = report.gpus ? memoryPoller() : null;
  const out = mkdtempSync(join(tmpdir(), "tokenmill-device-check-"));
  try {
    report.bench.model ||= readCheckpoint(ensureDefaultModel()).name;
    for (const point of plan.points) {
      if (left() < 30_000) {
        report.stoppedEarly = true;
        break;
      }
      const result = await bench(plan, point.concurrency, point.numPrompts, plan.inputLen, plan.outputLen, join(out, `c${point.concurrency}.json`), left());
      report.bench.points.push(result);
      log(`c${point.concurrency}: ${result.error ?? `${result.outputThroughput?.toFixed(1)} tok/s, TTFT median ${result.medianTtftMs?.toFixed(1)} ms`}`);
    }
    if (left() >= 30_000) {
      report.bench.ttft = await bench(plan, 1, 4, plan.ttftInputLen, 2, join(out, "ttft.json"), left());
      log(`TTFT, ${plan.ttftInputLen}-token prompt: ${report.bench.ttft.error ?? `median ${report.bench.ttft.medianTtftMs?.toFixed(1)} ms`}`);
    } else report.stoppedEarly = true;
  } finally {
    rmSync(out, { recursive: true, force: true });
    report.gpuMemoryUsedMiB = memory ? await memory.stop() : null;
  }
  report.seconds = (Date.now() - started) / 1000;
  return report;
}

async function tool(command: string, args: string[], timeoutMs = 20_000): Promise<{ ok: boolean; out: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(command, args, { encoding: "utf8", timeout: timeoutMs, maxBuffer: 64 * 2 ** 20 });
    return { ok: true, out: `${stdout}${stderr}`.trim() };
  } catch (err) {
    const e = err as { stdout?: string; message: string };
    return { ok: false, out: e.stdout && e.stdout.length > 0 ? e.stdout : e.message };
  }
}

async function cudaLibraries(): Promise<DeviceReport["cudaProvider"]> {
  const binDir = join(dirname(createRequire(import.meta.url).resolve("onnxruntime-node")), "..", "bin");
  const found = await tool("find", [binDir, "-name", "libonnxruntime_providers_cuda.so"]);
  const ldconfig = await tool("ldconfig", ["-p"]);
  const cudaLibraries: Record<string, string | null> = {};
  for (const lib of ["libcudart.so", "libcublas.so", "libcudnn.so"]) {
    const line = ldconfig.out.split("\n").find((l) => l.includes(lib));
    cudaLibraries[lib] = line ? line.trim().split(" => ")[1] ?? null : null;
  }
  return { library: found.ok && found.out ? found.out.split("\n")[0] : null, cudaLibraries };
}

async function greedyBesideCpu(): Promise<Partial<DeviceReport["greedy"]>> {
  const dir = ensureDefaultModel();
  const cpuGraph = ensureGraph(dir);
  const gpuGraph = ensureGraph(dir, { build: { device: "webgpu" } });
  const { config } = cpuGraph;
  const shape = { numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize: 16 };
  const cpu = await OnnxRunner.create({ graphPath: cpuGraph.graphPath, config, device: "cpu", blockSize: 16, kvCacheBytes: 16 * KvBuffers.bytesPerBlock(shape) });
  try {
    const a = await greedy(cpu);
    const base = { model: readCheckpoint(dir).name, cpu: a.tokens };
    let gpu: WebGpuRunner;
    try {
      gpu = await WebGpuRunner.create({ graphPath: gpuGraph.graphPath, config, blockSize: 16, kvCacheBytes: 16 * DevicePool.bytesPerBlock(shape) });
    } catch (err) {
      return { ...base, error: `the WebGPU runner did not start: ${(err as Error).message}` };
    }
    try {
      const b = await greedy(gpu);
      const firstMismatch = a.tokens.findIndex((t, i) => t !== b.tokens[i]);
      const maxDelta = Math.max(...a.top1.map((lp, i) => (b.tokens[i] === a.tokens[i] ? Math.abs(lp - b.top1[i]) : 0)));
      return { ...base, webgpu: b.tokens, equal: firstMismatch < 0, firstDifference: firstMismatch < 0 ? null : firstMismatch, maxTop1LogprobDelta: maxDelta };
    } finally {
      await gpu.release();
    }
  } finally {
    await cpu.release();
  }
}

async function greedy(runner: StepRunner): Promise<{ tokens: number[]; top1: number[] }> {
  const tokens: number[] = [];
  const top1: number[] = [];
  const blockTable = [1, 2, 3, 4];
  let seq: StepSequence = { tokenIds: [9707, 11, 1879, 0, 576, 3974], numPastTokens: 0, blockTable, logitsFrom: 5 };
  for (let i = 0; i < 32; i++) {
    const [rows] = await runner.step([seq], { fullLogits: false });
    tokens.push(rows.topIds[0]);
    top1.push(rows.topLogprobs[0]);
    seq = { tokenIds: [rows.topIds[0]], numPastTokens: seq.numPastTokens + seq.tokenIds.length, blockTable, logitsFrom: 0 };
  }
  return { tokens, top1 };
}

/** One `tokenmill bench` in its own process (the model served in it on --device webgpu), as a point of the report. */
async function bench(plan: BenchPlan, concurrency: number, numPrompts: number, inputLen: number, outputLen: number, file: string, timeoutMs: number): Promise<BenchPoint> {
  const { command, args, cwd } = tokenmillCommand([
    "bench", ...(plan.model ? ["--model", plan.model] : []), "--device", "webgpu", "--dtype", plan.dtype, "--kv-cache-memory", plan.kvCacheMemory,
    "--num-prompts", String(numPrompts), "--max-concurrency", String(concurrency), "--input-len", String(inputLen), "--output-len", String(outputLen),
    "--ignore-eos", "--warmup", "1", "--rounds", "1", "--save-result", file,
  ]);
  const empty: BenchPoint = { concurrency, numPrompts, inputLen, outputLen, outputThroughput: null, medianTtftMs: null, medianTpotMs: null, p99ItlMs: null, error: null };
  const tail: string[] = [];
  const code = await new Promise<number | null>((resolve) => {
    const child = spawn(command, args, { cwd, stdio: ["ignore", "pipe", "pipe"], timeout: Math.max(1000, timeoutMs), killSignal: "SIGKILL" });
    const keep = (chunk: Buffer) => {
      tail.push(...chunk.toString("utf8").split("\n").filter(Boolean));
      tail.splice(0, Math.max(0, tail.length - 5));
    };
    child.stdout!.on("data", keep);
    child.stderr!.on("data", keep);
    child.on("error", (err) => {
      tail.push(err.message);
      resolve(null);
    });
    child.on("close", resolve);
  });
  if (!existsSync(file)) return { ...empty, error: `no result (exit ${code ?? "killed at the time limit"}): ${tail.slice(-3).join(" | ")}` };
  return { ...benchPointOf(JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>, concurrency), numPrompts, inputLen, outputLen };
}

/** Polls nvidia-smi's memory in use every second; stop() gives the most it saw. */
function memoryPoller(): { stop(): Promise<number | null> } {
  let most: number | null = null;
  let pending: Promise<void> = Promise.resolve();
  const poll = () => {
    pending = tool("nvidia-smi", ["--query-gpu=memory.used", "--format=csv,noheader,nounits"], 5000).then(({ ok, out }) => {
      const used = ok ? parseMemoryUsed(out) : null;
      if (used !== null) most = Math.max(most ?? 0, used);
    });
  };
  poll();
  const timer = setInterval(poll, 1000);
  return {
    async stop() {
      clearInterval(timer);
      await pending;
      return most;
    },
  };
}
