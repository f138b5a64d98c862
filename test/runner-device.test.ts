/** The execution provider choice: CUDA without its binaries fails with instructions, never a crash. */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { EngineError } from "../engine/core/engine-error.ts";
import { createSession } from "../engine/runner/onnx-host/onnx-session.ts";
import { ensureGraph } from "../models/build-graph.ts";
import { ensureDefaultModel } from "../models/synthetic/default-model.ts";

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

  it("cpu loads the graph", async () => {
    const { graphPath } = ensureGraph(ensureDefaultModel());
    const session = await createSession(graphPath, { device: "cpu" });
    expect(session.inputNames).toEqual(expect.arrayContaining(["input_ids", "past_slots", "pool.0.key"]));
    await session.release();
  });
});
