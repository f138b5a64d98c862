/** The device check's parsers and report, on what nvidia-smi and vulkaninfo print (an H100 host's, and lavapipe's). */
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { benchPointOf, deviceReportSchema, parseMemoryUsed, parseNvidiaSmi, parseVulkaninfo, reportText, type DeviceReport } from "../../bench/device-report.ts";

const SMI = "NVIDIA H100 80GB HBM3, 580.95.05, 81559, 9.0\nNVIDIA H100 80GB HBM3, 580.95.05, 81559, 9.0\n";

const VULKANINFO_NVIDIA = `==========
VULKANINFO
==========

Vulkan Instance Version: 1.3.239

Devices:
========
GPU0:
VkPhysicalDeviceProperties:
---------------------------
	apiVersion        = 1.4.312 (4210992)
	driverVersion     = 580.95.5.0 (2436186112)
	vendorID          = 0x10de
	deviceType        = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
	deviceName        = NVIDIA H100 80GB HBM3

VkPhysicalDeviceDriverProperties:
---------------------------------
	driverID           = DRIVER_ID_NVIDIA_PROPRIETARY
	driverName         = NVIDIA
	driverInfo         = 580.95.05

VkPhysicalDeviceShaderFloat16Int8Features:
------------------------------------------
	shaderFloat16 = true
	shaderInt8    = true

GPU1:
VkPhysicalDeviceProperties:
---------------------------
	apiVersion        = 1.4.305 (4210993)
	deviceType        = PHYSICAL_DEVICE_TYPE_CPU
	deviceName        = llvmpipe (LLVM 15.0.6, 256 bits)

VkPhysicalDeviceDriverProperties:
---------------------------------
	driverName         = llvmpipe
	driverInfo         = Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)

VkPhysicalDeviceShaderFloat16Int8Features:
------------------------------------------
	shaderFloat16 = false
`;

function report(overrides: Partial<DeviceReport> = {}): DeviceReport {
  return {
    format: "tokenmill-device-check/1", tokenmillVersion: "0.1.0", node: "v20.20.2", startedAt: "2026-12-06T00:00:00.000Z", seconds: 61, profile: "full",
    gpus: parseNvidiaSmi(SMI), gpuError: null,
    vulkan: { icds: ["/usr/share/vulkan/icd.d/nvidia_icd.json"], adapters: parseVulkaninfo(VULKANINFO_NVIDIA), error: null },
    cudaProvider: { library: null, cudaLibraries: { "libcudart.so": "/usr/local/cuda/lib64/libcudart.so.13", "libcublas.so": null } },
    greedy: { model: "tokenmill-tiny-qwen3", numTokens: 3, cpu: [1, 2, 3], webgpu: [1, 2, 4], equal: false, firstDifference: 2, maxTop1LogprobDelta: 0.0123, error: null },
    bench: {
      model: "qwen3-0.6b-random", device: "webgpu", dtype: "float16",
      points: [benchPointOf({ num_prompts: 64, input_len: 128, output_len: 64, output_throughput: 2345.6, median_ttft_ms: 40.1, median_tpot_ms: 12.5, p99_itl_ms: 20 }, 32)],
      ttft: { concurrency: 1, numPrompts: 4, inputLen: 1024, outputLen: 2, outputThroughput: null, medianTtftMs: null, medianTpotMs: null, p99ItlMs: null, error: "no result (exit 1): out of memory" },
    },
    gpuMemoryUsedMiB: 10240, stoppedEarly: false,
    ...overrides,
  };
}

describe("the device check's parsers", () => {
  it("reads nvidia-smi's CSV: one GPU a line, memory in MiB, compute capability", () => {
    expect(parseNvidiaSmi(SMI)).toEqual([
      { name: "NVIDIA H100 80GB HBM3", driverVersion: "580.95.05", memoryTotalMiB: 81559, computeCapability: "9.0" },
      { name: "NVIDIA H100 80GB HBM3", driverVersion: "580.95.05", memoryTotalMiB: 81559, computeCapability: "9.0" },
    ]);
    expect(parseNvidiaSmi("")).toEqual([]);
    expect(parseNvidiaSmi("Some GPU, 1.0, [N/A], \n")[0]).toMatchObject({ memoryTotalMiB: null, computeCapability: null });
  });

  it("sums nvidia-smi's memory in use over the GPUs, and says null when there is nothing to read", () => {
    expect(parseMemoryUsed("10240\n2048\n")).toBe(12288);
    expect(parseMemoryUsed("")).toBeNull();
    expect(parseMemoryUsed("[N/A]\n")).toBeNull();
  });

  it("reads each vulkaninfo GPU section: name, type, driver, API version and shaderFloat16", () => {
    expect(parseVulkaninfo(VULKANINFO_NVIDIA)).toEqual([
      {
        index: 0, deviceName: "NVIDIA H100 80GB HBM3", deviceType: "PHYSICAL_DEVICE_TYPE_DISCRETE_GPU", driverName: "NVIDIA", driverInfo: "580.95.05",
        apiVersion: "1.4.312 (4210992)", shaderFloat16: true,
      },
      {
        index: 1, deviceName: "llvmpipe (LLVM 15.0.6, 256 bits)", deviceType: "PHYSICAL_DEVICE_TYPE_CPU", driverName: "llvmpipe",
        driverInfo: "Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)", apiVersion: "1.4.305 (4210993)", shaderFloat16: false,
      },
    ]);
    expect(parseVulkaninfo("ERROR: [Loader Message] vkCreateInstance failed")).toEqual([]);
    const noFeatures = parseVulkaninfo("GPU0:\n\tdeviceName = Some GPU\n");
    expect(noFeatures).toEqual([{ index: 0, deviceName: "Some GPU", deviceType: null, driverName: null, driverInfo: null, apiVersion: null, shaderFloat16: null }]);
  });

  it("takes a bench result's vLLM field names, and null for what it lacks", () => {
    expect(benchPointOf({ num_prompts: 8, input_len: 128, output_len: 64, output_throughput: 100.5, median_ttft_ms: 12, median_tpot_ms: 7, p99_itl_ms: 9 }, 1)).toEqual({
      concurrency: 1, numPrompts: 8, inputLen: 128, outputLen: 64, outputThroughput: 100.5, medianTtftMs: 12, medianTpotMs: 7, p99ItlMs: 9, error: null,
    });
    expect(benchPointOf({ output_throughput: "fast" }, 4)).toMatchObject({ outputThroughput: null, medianTtftMs: null, numPrompts: 0 });
  });
});

describe("the device check's report", () => {
  it("is valid JSON in its schema, and its text names each part's result or what is missing", () => {
    const full = report();
    expect(deviceReportSchema.parse(JSON.parse(JSON.stringify(full)))).toEqual(full);
    const text = reportText(full);
    expect(text).toContain("NVIDIA H100 80GB HBM3, driver 580.95.05, 81559 MiB, compute 9.0");
    expect(text).toContain("GPU0: NVIDIA H100 80GB HBM3 (PHYSICAL_DEVICE_TYPE_DISCRETE_GPU, NVIDIA 580.95.05), Vulkan 1.4.312 (4210992), shaderFloat16 true");
    expect(text).toContain("shaderFloat16 false");
    expect(text).toContain("libcublas.so: not found");
    expect(text).toContain("first difference at token 2; max |Δ top-1 logprob| while equal 0.0123");
    expect(text).toContain("c32 (64 prompts, 128 in / 64 out): output 2345.6 tok/s, TTFT median 40.1 ms, TPOT median 12.5 ms, ITL p99 20.0 ms");
    expect(text).toContain("c1 (4 prompts, 1024 in / 2 out): no result (no result (exit 1): out of memory)");
    expect(text).toContain("10240 MiB");
  });

  it("says what is missing on a machine without nvidia-smi or Vulkan, and when it stopped early", () => {
    const bare = report({ gpus: null, gpuError: "nvidia-smi did not run (spawn nvidia-smi ENOENT)", vulkan: { icds: [], adapters: null, error: "vulkaninfo did not run" }, gpuMemoryUsedMiB: null, stoppedEarly: true });
    expect(deviceReportSchema.safeParse(bare).success).toBe(true);
    const text = reportText(bare);
    expect(text).toContain("missing: nvidia-smi did not run (spawn nvidia-smi ENOENT)");
    expect(text).toContain("ICDs: none (no Vulkan driver installed)");
    expect(text).toContain("vulkaninfo: vulkaninfo did not run");
    expect(text).toContain("not measured (no nvidia-smi)");
    expect(text).toContain("stopped at its time limit");
    expect(deviceReportSchema.safeParse({ ...bare, format: "something-else/1" }).success).toBe(false);
  });
});

describe("the GPU run prepared for a lent machine (bench/device/)", () => {
  it("gpu-run.sh is valid sh, and hf_baseline.py parses and prints its usage without PyTorch", () => {
    const sh = spawnSync("sh", ["-n", "bench/device/gpu-run.sh"], { encoding: "utf8" });
    expect(sh.status, sh.stderr).toBe(0);
    const python = spawnSync("python3", ["bench/device/hf_baseline.py", "--help"], { encoding: "utf8" });
    expect(python.status, python.stderr).toBe(0);
    expect(python.stdout).toMatch(/--model MODEL.*--out OUT/s);
    expect(python.stdout).toContain("--concurrency");
  });
});
