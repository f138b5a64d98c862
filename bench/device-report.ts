/**
 * The device check's report: its JSON shape (checked with zod wherever one is read), the parsers
 * of what the machine's tools print (nvidia-smi, vulkaninfo), and the report as text.
 *
 * The same format comes from a GPU host and from lavapipe in CI, so CI runs these parsers.
 */
import { z } from "zod";

const nullableNumber = z.number().nullable();

export const gpuSchema = z.object({
  name: z.string(), driverVersion: z.string(), memoryTotalMiB: nullableNumber, computeCapability: z.string().nullable(),
});
export type Gpu = z.infer<typeof gpuSchema>;

export const vulkanAdapterSchema = z.object({
  index: z.number().int(), deviceName: z.string(), deviceType: z.string().nullable(), driverName: z.string().nullable(),
  driverInfo: z.string().nullable(), apiVersion: z.string().nullable(),
  /** VkPhysicalDeviceShaderFloat16Int8Features.shaderFloat16: what WebGPU's shader-f16 needs (null: not printed). */
  shaderFloat16: z.boolean().nullable(),
});
export type VulkanAdapter = z.infer<typeof vulkanAdapterSchema>;

export const benchPointSchema = z.object({
  concurrency: z.number().int(), numPrompts: z.number().int(), inputLen: z.number().int(), outputLen: z.number().int(),
  outputThroughput: nullableNumber, medianTtftMs: nullableNumber, medianTpotMs: nullableNumber, p99ItlMs: nullableNumber,
  error: z.string().nullable(),
});
export type BenchPoint = z.infer<typeof benchPointSchema>;

export const deviceReportSchema = z.object({
  format: z.literal("tokenmill-device-check/1"),
  tokenmillVersion: z.string(), node: z.string(), startedAt: z.string(), seconds: z.number(),
  profile: z.enum(["full", "quick"]),
  /** nvidia-smi's GPUs; null when nvidia-smi did not run (its message in gpuError). */
  gpus: z.array(gpuSchema).nullable(), gpuError: z.string().nullable(),
  vulkan: z.object({
    icds: z.array(z.string()), adapters: z.array(vulkanAdapterSchema).nullable(), error: z.string().nullable(),
  }),
  cudaProvider: z.object({ library: z.string().nullable(), cudaLibraries: z.record(z.string(), z.string().nullable()) }),
  greedy: z.object({
    model: z.string(), numTokens: z.number().int(),
    cpu: z.array(z.number().int()).nullable(), webgpu: z.array(z.number().int()).nullable(),
    equal: z.boolean().nullable(), firstDifference: z.number().int().nullable(), maxTop1LogprobDelta: nullableNumber,
    error: z.string().nullable(),
  }),
  bench: z.object({
    model: z.string(), device: z.string(), dtype: z.string(),
    points: z.array(benchPointSchema),
    ttft: benchPointSchema.nullable(),
  }),
  /** The most GPU memory nvidia-smi saw in use while the benches ran (null: no nvidia-smi). */
  gpuMemoryUsedMiB: nullableNumber,
  stoppedEarly: z.boolean(),
});
export type DeviceReport = z.infer<typeof deviceReportSchema>;

/** `nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader,nounits`. */
export function parseNvidiaSmi(csv: string): Gpu[] {
  return csv.split("\n").map((line) => line.trim()).filter(Boolean).map((line) => {
    const [name, driverVersion, memory, cap] = line.split(",").map((field) => field.trim());
    const memoryTotalMiB = Number(memory);
    return { name, driverVersion: driverVersion ?? "", memoryTotalMiB: Number.isFinite(memoryTotalMiB) ? memoryTotalMiB : null, computeCapability: cap || null };
  });
}

/** `nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits`: MiB in use, summed over the GPUs (null: nothing readable). */
export function parseMemoryUsed(csv: string): number | null {
  const values = csv.split("\n").map((line) => line.trim()).filter(Boolean).map(Number).filter(Number.isFinite);
  return values.length > 0 ? values.reduce((a, b) => a + b, 0) : null;
}

/** `vulkaninfo` (its full output): one entry per `GPUn:` section. */
export function parseVulkaninfo(text: string): VulkanAdapter[] {
  const adapters: VulkanAdapter[] = [];
  const sections = text.split(/^GPU(\d+):\s*$/m);
  // split() with a capture group: [before, index0, body0, index1, body1, ...]
  for (let i = 1; i + 1 < sections.length; i += 2) {
    const body = sections[i + 1];
    const field = (name: string) => body.match(new RegExp(`^\\s*${name}\\s*=\\s*(.+?)\\s*$`, "m"))?.[1] ?? null;
    const deviceName = field("deviceName");
    if (deviceName === null) continue;
    const f16 = field("shaderFloat16");
    adapters.push({
      index: Number(sections[i]), deviceName, deviceType: field("deviceType"), driverName: field("driverName"), driverInfo: field("driverInfo"),
      apiVersion: field("apiVersion"), shaderFloat16: f16 === null ? null : f16 === "true",
    });
  }
  return adapters;
}

/** A bench result file (vLLM's field names, `tokenmill bench --save-result`) as a point of the report. */
export function benchPointOf(result: Record<string, unknown>, concurrency: number): BenchPoint {
  const num = (key: string) => (typeof result[key] === "number" ? (result[key] as number) : null);
  return {
    concurrency, numPrompts: num("num_prompts") ?? 0, inputLen: num("input_len") ?? 0, outputLen: num("output_len") ?? 0,
    outputThroughput: num("output_throughput"), medianTtftMs: num("median_ttft_ms"), medianTpotMs: num("median_tpot_ms"), p99ItlMs: num("p99_itl_ms"),
    error: null,
  };
}

/** The report as the text the check prints. */
export function reportText(report: DeviceReport): string {
  const f = (x: number | null, digits = 1) => (x === null ? "-" : x.toFixed(digits));
  const lines: string[] = [`tokenmill ${report.tokenmillVersion} device check (${report.profile}), Node ${report.node}, ${report.startedAt}, ${f(report.seconds, 0)} s`];
  lines.push("", "== GPU (nvidia-smi)");
  if (report.gpus) for (const g of report.gpus) lines.push(`${g.name}, driver ${g.driverVersion}, ${f(g.memoryTotalMiB, 0)} MiB, compute ${g.computeCapability ?? "-"}`);
  else lines.push(`missing: ${report.gpuError}`);
  lines.push("", "== Vulkan (what WebGPU runs on)", `ICDs: ${report.vulkan.icds.length > 0 ? report.vulkan.icds.join(", ") : "none (no Vulkan driver installed)"}`);
  if (report.vulkan.adapters) {
    for (const a of report.vulkan.adapters) {
      lines.push(`GPU${a.index}: ${a.deviceName} (${a.deviceType ?? "?"}, ${a.driverName ?? "?"} ${a.driverInfo ?? ""}), Vulkan ${a.apiVersion ?? "?"}, shaderFloat16 ${a.shaderFloat16 ?? "not printed"}`);
    }
  } else lines.push(`vulkaninfo: ${report.vulkan.error}`);
  lines.push("", "== CUDA EP libraries", `ONNX Runtime CUDA provider: ${report.cudaProvider.library ?? "not in this install (the bundle ships the CPU and WebGPU library only)"}`);
  for (const [lib, path] of Object.entries(report.cudaProvider.cudaLibraries)) lines.push(`${lib}: ${path ?? "not found"}`);
  const g = report.greedy;
  lines.push("", `== greedy: --device webgpu (float16) beside --device cpu (float32), ${g.model}, ${g.numTokens} tokens`);
  if (g.error) lines.push(`failed: ${g.error}`);
  if (g.cpu) lines.push(`cpu    ${g.cpu.join(" ")}`);
  if (g.webgpu) lines.push(`webgpu ${g.webgpu.join(" ")}`);
  if (g.equal !== null) lines.push(`${g.equal ? "equal" : `first difference at token ${g.firstDifference}`}; max |Δ top-1 logprob| while equal ${f(g.maxTop1LogprobDelta, 4)}`);
  const b = report.bench;
  lines.push("", `== bench: ${b.model}, --device ${b.device} --dtype ${b.dtype}`);
  for (const p of [...b.points, ...(b.ttft ? [b.ttft] : [])]) {
    const head = `c${p.concurrency} (${p.numPrompts} prompts, ${p.inputLen} in / ${p.outputLen} out)`;
    lines.push(p.error ? `${head}: no result (${p.error})` : `${head}: output ${f(p.outputThroughput)} tok/s, TTFT median ${f(p.medianTtftMs)} ms, TPOT median ${f(p.medianTpotMs)} ms, ITL p99 ${f(p.p99ItlMs)} ms`);
  }
  lines.push("", `GPU memory used (most seen by nvidia-smi while the benches ran): ${report.gpuMemoryUsedMiB === null ? "not measured (no nvidia-smi)" : `${report.gpuMemoryUsedMiB} MiB`}`);
  if (report.stoppedEarly) lines.push("", "device-check: stopped at its time limit; the parts not reached are empty");
  return lines.join("\n");
}
