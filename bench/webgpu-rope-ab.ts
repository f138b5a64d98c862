/**
 * Rope inside PagedAttention against rope before it, on the WebGPU runner: decode steps of
 * both graphs alternating, medians. `node --import tsx bench/webgpu-rope-ab.ts [--model NAME]
 * [--batch N] [--steps N]` (default: the default model, batch 8, 10 steps after a 64-token prefill).
 */
import { parseArgs } from "node:util";
import { DevicePool } from "../engine/runner/onnx-device/device-pool.ts";
import { WebGpuRunner } from "../engine/runner/onnx-device/webgpu-runner.ts";
import { ensureGraph } from "../models/build-graph.ts";
import { SYNTHETIC_MODELS, ensureDefaultModel, ensureSyntheticModel } from "../models/synthetic/default-model.ts";

const { values } = parseArgs({ options: { model: { type: "string" }, batch: { type: "string", default: "8" }, steps: { type: "string", default: "10" } } });
const dir = values.model && values.model in SYNTHETIC_MODELS ? ensureSyntheticModel(values.model) : (values.model ?? ensureDefaultModel());
const batch = Number(values.batch);
const numSteps = Number(values.steps);
const PROMPT = 64;
const BLOCK = 16;
const blocksPerSeq = Math.ceil((PROMPT + numSteps) / BLOCK);

async function runner(ropeInAttention: boolean): Promise<WebGpuRunner> {
  const graph = ensureGraph(dir, { build: { device: "webgpu", ropeInAttention } });
  const { config } = graph;
  const bytesPerBlock = DevicePool.bytesPerBlock({ numLayers: config.numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSize: BLOCK });
  return WebGpuRunner.create({ graphPath: graph.graphPath, config, blockSize: BLOCK, kvCacheBytes: (1 + batch * blocksPerSeq) * bytesPerBlock });
}

const runners = { inside: await runner(true), before: await runner(false) };
const tables = Array.from({ length: batch }, (_, b) => Array.from({ length: blocksPerSeq }, (_, i) => 1 + b * blocksPerSeq + i));
const prompt = (b: number) => Array.from({ length: PROMPT }, (_, i) => (b * 7919 + i * 104729) % runners.inside.vocabSize);
for (const r of Object.values(runners)) await r.step(tables.map((blockTable, b) => ({ tokenIds: prompt(b), numPastTokens: 0, blockTable, logitsFrom: PROMPT - 1 })), { fullLogits: false });
const times: Record<string, number[]> = { inside: [], before: [] };
for (let step = 0; step < numSteps; step++) {
  for (const [name, r] of Object.entries(runners)) {
    const started = performance.now();
    await r.step(tables.map((blockTable) => ({ tokenIds: [5], numPastTokens: PROMPT + step, blockTable, logitsFrom: 0 })), { fullLogits: false });
    times[name].push(performance.now() - started);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const [name, ts] of Object.entries(times)) console.log(`rope ${name}: median decode step ${median(ts).toFixed(1)} ms (batch ${batch}, context ${PROMPT}-${PROMPT + numSteps})`);
console.log(`inside / before: ${(median(times.inside) / median(times.before)).toFixed(3)}`);
for (const r of Object.values(runners)) await r.release();
process.exit(0);
