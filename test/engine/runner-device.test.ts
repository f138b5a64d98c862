/** The execution provider choice: CUDA without its binaries fails with instructions, never a crash. */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { EngineError } from "../../engine/common/engine-error.ts";
import { KvBuffers } from "../../engine/runner/onnx-host/kv-buffers.ts";
import { createSession } from "../../engine/runner/onnx-host/onnx-session.ts";
import { DEVICES, createRunner } from "../../engine/runner/runner-registry.ts";
import { ensureGraph } from "../../models/build-graph.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";

const binDir = join(dirname(createRequire(import.meta.url).resolve("onnxruntime-node")), "..", "bin");
const hasCuda = existsSync(join(binDir, "napi-v6", "linux", "x64", "libonnxruntime_providers_cuda.so"));

describe("--device", () => {
  it.skipIf(hasCuda)("cuda without the CUDA provider says so and how to install it", async () => {
    const { graphPath } = ensureGraph(ensureDefaultModel());
    const error = await createSession(graphPath, { device: "cuda" }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(EngineError);
    expect((error as EngineError).code).toBe("CUDA_UNAVAILABLE");
    expect((error as EngineError).message).toContain("--onnxruntime-node-install=cuda12");
  });

  it("webgpu without any Vulkan driver says so and what to install", () => {
    // NOTE: in a child process, pointed at no Vulkan driver: Dawn's adapter lookup is once per process.
    const script = `import { createSession } from "./engine/runner/onnx-host/onnx-session.ts";
import { float16ZerosGraph } from "./models/index.ts";
createSession(float16ZerosGraph(), { device: "webgpu" }).then(() => console.log("opened"), (err) => console.log(JSON.stringify({ code: err.code, message: err.message })));`;
    const child = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: join(import.meta.dirname, "..", ".."), encoding: "utf8", env: { ...process.env, VK_ICD_FILENAMES: "/nonexistent/icd.json", VK_DRIVER_FILES: "/nonexistent/icd.json" }, timeout: 60_000,
    });
    const line = child.stdout.trim().split("\n").at(-1)!;
    const error = JSON.parse(line);
    expect(error.code).toBe("WEBGPU_UNAVAILABLE");
    expect(error.message).toContain("mesa-vulkan-drivers");
  });

  it("cpu loads the graph", async () => {
    const { graphPath } = ensureGraph(ensureDefaultModel());
    const session = await createSession(graphPath, { device: "cpu" });
    expect(session.inputNames).toEqual(expect.arrayContaining(["input_ids", "past_slots", "pool.0.key"]));
    await session.release();
  });
});

describe("the runner registry", () => {
  it("gives a runner by device, which sizes its own KV cache from bytes and reports blocks, tokens and bytes", async () => {
    const graph = ensureGraph(ensureDefaultModel());
    const { config } = graph;
    const bytesPerBlock = KvBuffers.bytesPerBlock({ numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize: 16 });
    expect(DEVICES).toEqual(["cpu", "cuda", "webgpu"]);
    const runner = await createRunner("cpu", { graphPath: graph.graphPath, config, blockSize: 16, kvCacheBytes: 10.5 * bytesPerBlock, intraOpThreads: 1 });
    try {
      expect(runner.kvCache).toEqual({ numBlocks: 10, blockSize: 16, numTokens: 9 * 16, numBytes: 10 * bytesPerBlock, dtype: "float32" });
      expect(runner.vocabSize).toBe(config.vocabSize);
    } finally {
      await runner.release();
    }
    const tooSmall = await createRunner("cpu", { graphPath: graph.graphPath, config, blockSize: 16, kvCacheBytes: bytesPerBlock }).catch((err: unknown) => err);
    expect(tooSmall).toBeInstanceOf(EngineError);
    expect((tooSmall as Error).message).toMatch(/fewer than 2 blocks/);
  });
});
