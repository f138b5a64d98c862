/**
 * `npm run device-check`: one command for a machine with an NVIDIA GPU. It prints the GPU,
 * whether Vulkan (and so WebGPU) sees it, whether ONNX Runtime's CUDA EP libraries are there,
 * a greedy run on --device webgpu beside --device cpu, and a short bench at concurrency 1 and
 * 32 on the Qwen3-0.6B shape in float16 on the device (rope inside PagedAttention and before it).
 *
 * Each part says what is missing and goes on; the whole stops by itself within 8 minutes.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { OnnxRunner } from "../engine/runner/onnx-host/onnx-runner.ts";
import { KvBuffers } from "../engine/runner/onnx-host/kv-buffers.ts";
import { DevicePool } from "../engine/runner/onnx-device/device-pool.ts";
import { WebGpuRunner } from "../engine/runner/onnx-device/webgpu-runner.ts";
import type { StepRunner, StepSequence } from "../engine/runner/step-runner.ts";
import { ensureGraph } from "../models/build-graph.ts";
import { ensureDefaultModel } from "../models/synthetic/default-model.ts";

const DEADLINE_MS = 7.5 * 60_000;
const started = Date.now();
setTimeout(() => {
  console.log(`\ndevice-check: stopped at its ${DEADLINE_MS / 60_000}-minute limit`);
  process.exit(2);
}, DEADLINE_MS).unref();

const left = () => Math.max(10_000, DEADLINE_MS - (Date.now() - started) - 15_000);
const section = (title: string) => console.log(`\n== ${title}`);

function run(command: string, args: string[], timeoutMs = 20_000): { ok: boolean; out: string } {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: timeoutMs });
  if (result.error) return { ok: false, out: String(result.error.message) };
  return { ok: result.status === 0, out: `${result.stdout}${result.stderr}`.trim() };
}

function gpu(): void {
  section("GPU (nvidia-smi)");
  const smi = run("nvidia-smi", ["--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv"]);
  console.log(smi.ok ? smi.out : `missing: nvidia-smi did not run (${smi.out})`);
}

function vulkan(): void {
  section("Vulkan (what WebGPU runs on)");
  const icdDirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"].filter(existsSync);
  const icds = icdDirs.flatMap((dir) => readdirSync(dir).map((name) => join(dir, name)));
  console.log(`ICDs: ${icds.length > 0 ? icds.join(", ") : "none (no Vulkan driver installed)"}`);
  const info = run("vulkaninfo", ["--summary"]);
  console.log(info.ok ? info.out.split("\n").filter((line) => /deviceName|driverName|apiVersion|deviceType/.test(line)).join("\n") : "vulkaninfo not installed (apt-get install vulkan-tools to list devices)");
}

function cudaLibraries(): void {
  section("CUDA EP libraries");
  const binDir = join(dirname(createRequire(import.meta.url).resolve("onnxruntime-node")), "..", "bin");
  const find = run("find", [binDir, "-name", "libonnxruntime_providers_cuda.so"]);
  console.log(find.out ? `ONNX Runtime CUDA provider: ${find.out}` : "missing: libonnxruntime_providers_cuda.so (node node_modules/onnxruntime-node/script/install --onnxruntime-node-install=cuda12)");
  const ldconfig = run("ldconfig", ["-p"]);
  for (const lib of ["libcudart.so", "libcublas.so", "libcudnn.so"]) {
    const line = ldconfig.out.split("\n").find((l) => l.includes(lib));
    console.log(`${lib}: ${line ? line.trim().split(" => ")[1] : "not found"}`);
  }
}

async function greedyBesideCpu(): Promise<void> {
  section("greedy: --device webgpu (float16) beside --device cpu (float32), default model, 32 tokens");
  const dir = ensureDefaultModel();
  const cpuGraph = ensureGraph(dir);
  const gpuGraph = ensureGraph(dir, { build: { device: "webgpu" } });
  const { config } = cpuGraph;
  const shape = { numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize: 16 };
  const cpu = await OnnxRunner.create({ graphPath: cpuGraph.graphPath, config, device: "cpu", blockSize: 16, kvCacheBytes: 16 * KvBuffers.bytesPerBlock(shape) });
  let gpu: WebGpuRunner;
  try {
    gpu = await WebGpuRunner.create({ graphPath: gpuGraph.graphPath, config, blockSize: 16, kvCacheBytes: 16 * DevicePool.bytesPerBlock(shape) });
  } catch (err) {
    console.log(`missing: the WebGPU runner did not start: ${(err as Error).message}`);
    await cpu.release();
    return;
  }
  try {
    const [a, b] = await Promise.all([greedy(cpu), greedy(gpu)]);
    const firstMismatch = a.tokens.findIndex((t, i) => t !== b.tokens[i]);
    const maxDelta = Math.max(...a.top1.map((lp, i) => (b.tokens[i] === a.tokens[i] ? Math.abs(lp - b.top1[i]) : 0)));
    console.log(`cpu    ${a.tokens.join(" ")}\nwebgpu ${b.tokens.join(" ")}`);
    console.log(`${firstMismatch < 0 ? "equal" : `first difference at token ${firstMismatch}`}; max |Δ top-1 logprob| while equal ${maxDelta.toFixed(4)} (test/webgpu-runner.test.ts bounds it by 0.03)`);
  } finally {
    await gpu.release();
    await cpu.release();
  }
}

async function greedy(runner: StepRunner): Promise<{ tokens: number[]; top1: number[] }> {
  const tokens: number[] = [];
  const top1: number[] = [];
  const blockTable = [1, 2, 3, 4];
  let seq: StepSequence = { tokenIds: [9707, 11, 1879, 0, 576, 3974], numPastTokens: 0, blockTable, logitsFrom: 5 };
  for (let i = 0; i < 32; i++) {
    const [logits] = await runner.step([seq], { fullLogits: false });
    tokens.push(logits.topIds[0]);
    top1.push(logits.topLogprobs[0]);
    seq = { tokenIds: [logits.topIds[0]], numPastTokens: seq.numPastTokens + seq.tokenIds.length, blockTable, logitsFrom: 0 };
  }
  return { tokens, top1 };
}

function bench(): void {
  section("bench: qwen3-0.6b-random, --device webgpu --dtype float16, 128 in / 64 out");
  const out = mkdtempSync(join(tmpdir(), "device-check-"));
  for (const rope of ["inside", "before"]) {
    for (const concurrency of [1, 32]) {
      const file = join(out, `c${concurrency}-${rope}.json`);
      const args = [
        "--import", "tsx", "bin/tokenmill.ts", "bench", "--model", "qwen3-0.6b-random", "--device", "webgpu", "--dtype", "float16",
        "--num-prompts", String(concurrency === 1 ? 4 : 64), "--max-concurrency", String(concurrency), "--input-len", "128", "--output-len", "64",
        "--ignore-eos", "--kv-cache-memory", "8GiB", "--save-result", file, ...(rope === "before" ? ["--rope-before-attention"] : []),
      ];
      const result = run(process.execPath, args, left());
      if (!existsSync(file)) {
        console.log(`c${concurrency} rope ${rope}: no result (${result.out.split("\n").slice(-3).join(" | ")})`);
        continue;
      }
      const r = JSON.parse(readFileSync(file, "utf8"));
      const f = (x: unknown) => (typeof x === "number" ? x.toFixed(1) : "-");
      console.log(`c${concurrency} rope ${rope}: output ${f(r.output_throughput)} tok/s, TTFT median ${f(r.median_ttft_ms)} ms, TPOT median ${f(r.median_tpot_ms)} ms, ITL p99 ${f(r.p99_itl_ms)} ms`);
    }
  }
}

gpu();
vulkan();
cudaLibraries();
await greedyBesideCpu().catch((err: unknown) => console.log(`greedy check failed: ${(err as Error).message}`));
bench();
console.log(`\ndevice-check: done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
process.exit(0);
