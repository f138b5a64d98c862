/** Whether this machine has a WebGPU adapter (a Vulkan GPU, or Mesa's lavapipe), decided once per test file. */
import { EngineError } from "../../engine/common/engine-error.ts";
import { createSession } from "../../engine/runner/onnx-host/onnx-session.ts";
import { float16ZerosGraph } from "../../models/index.ts";

/**
 * True when ONNX Runtime's WebGPU EP finds an adapter. Without one the WebGPU tests skip,
 * except in CI (CI is set), whose .ci/run installs lavapipe: there a missing adapter fails.
 */
export async function webgpuAvailable(): Promise<boolean> {
  try {
    const session = await createSession(float16ZerosGraph(), { device: "webgpu" });
    await session.release();
    return true;
  } catch (err) {
    if (!(err instanceof EngineError) || err.code !== "WEBGPU_UNAVAILABLE") throw err;
    if (process.env.CI) throw new Error(`CI runs the WebGPU tests, and this machine has no WebGPU adapter: ${err.message}`);
    return false;
  }
}
