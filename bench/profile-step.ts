/**
 * Where a step's time goes: ONNX Runtime's profiler over one prefill chunk and a run of
 * full-batch decode steps on the real runner, grouped by the role the graph builder gives
 * each node (linears, attention, the KV gather, norms, rope, the LM head, the logits' tail)
 * and by op type, plus the runner's host side (laying the step out and copying the new K/V
 * into the pool) as step time minus ORT's run time.
 *
 *   node --import tsx bench/profile-step.ts --model qwen3-0.6b-random --quantization int4 \
 *     --batch 32 --context 192 --prefill-len 1024 --steps 8 [--fuse true|false] [--kv-cache-dtype float32|float16|int8]
 *     [--shared-prefix N]   (every sequence's first N tokens in the same blocks, as step-fixture.ts)
 *
 * --fuse overrides whether q/k/v and gate/up are fused (default: fused in quantized graphs).
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { QUANTIZATIONS, type Quantization } from "../models/graph/quantize.ts";
import { KV_CACHE_DTYPES, type KvCacheDtype } from "../models/graph/kv-dtype.ts";
import { modelDirOf, openStepFixture } from "./step-fixture.ts";

interface TraceEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string };
}

export interface StepProfile {
  /** Mean wall time of the runner's step, ms. */
  stepMs: number;
  /** Mean time inside ORT's run, ms. */
  runMs: number;
  /** ms per step by role, then by op type. */
  byRole: Map<string, Map<string, number>>;
}

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "qwen3-0.6b-random" },
    quantization: { type: "string", default: "none" },
    batch: { type: "string", default: "32" },
    context: { type: "string", default: "192" },
    "prefill-len": { type: "string", default: "1024" },
    steps: { type: "string", default: "8" },
    threads: { type: "string", default: "0" },
    fuse: { type: "string" },
    "kv-cache-dtype": { type: "string", default: "float32" },
    "shared-prefix": { type: "string", default: "0" },
  },
});
const quantization = values.quantization as Quantization;
if (!QUANTIZATIONS.includes(quantization)) throw new Error(`--quantization takes ${QUANTIZATIONS.join("|")}`);
const kvCacheDtype = values["kv-cache-dtype"] as KvCacheDtype;
if (!KV_CACHE_DTYPES.includes(kvCacheDtype)) throw new Error(`--kv-cache-dtype takes ${KV_CACHE_DTYPES.join("|")}`);
const modelDir = modelDirOf(values.model!);
const batch = Number(values.batch);
const context = Number(values.context);
const prefillLen = Number(values["prefill-len"]);
const numSteps = Number(values.steps);
const warmup = 2;

const profileDir = mkdtempSync(join(tmpdir(), "tokenmill-profile-"));
const fuseProjections = values.fuse === undefined ? undefined : values.fuse === "true";
const fixture = await openStepFixture(modelDir, { quantization, fuseProjections, kvCacheDtype }, {
  batch, context, prefillLen, steps: warmup + numSteps, threads: Number(values.threads), profileFilePrefix: join(profileDir, "step"),
  sharedPrefix: Number(values["shared-prefix"]),
});
// Run 0 warms the session up; run 1 is the prefill chunk profiled; runs 2..batch+1 fill each sequence's context.
const walls: number[] = [];
for (let i = 0; i < 2; i++) walls.push(await fixture.prefill());
await fixture.fill();
walls.push(...new Array<number>(batch).fill(0));
for (let t = 0; t < warmup + numSteps; t++) walls.push(await fixture.decode(t));
const memory = { weights: fixture.weightsBytes, kvPool: fixture.runner.kvCache.numBytes, rss: process.memoryUsage().rss };
fixture.runner.endProfiling();
await fixture.runner.release();

const file = readdirSync(profileDir).find((f) => f.endsWith(".json"));
if (!file) throw new Error(`ONNX Runtime wrote no profile under ${profileDir}`);
const events = JSON.parse(readFileSync(join(profileDir, file), "utf8")) as TraceEvent[];
rmSync(profileDir, { recursive: true, force: true });
const runs = events.filter((e) => e.cat === "Session" && e.name === "model_run").sort((a, b) => a.ts - b.ts);
const nodes = events.filter((e) => e.cat === "Node" && e.name.endsWith("_kernel_time"));
if (runs.length !== walls.length) throw new Error(`expected ${walls.length} profiled runs, found ${runs.length}`);

function profileOf(first: number, count: number): StepProfile {
  const byRole = new Map<string, Map<string, number>>();
  const window = runs.slice(first, first + count);
  for (const node of nodes) {
    if (!window.some((r) => node.ts >= r.ts && node.ts <= r.ts + r.dur)) continue;
    const name = node.name.replace(/_kernel_time$/, "");
    const role = name.includes("/") ? name.slice(0, name.indexOf("/")) : "other";
    const op = node.args?.op_name ?? "?";
    const ops = byRole.get(role) ?? new Map<string, number>();
    ops.set(op, (ops.get(op) ?? 0) + node.dur / 1000 / count);
    byRole.set(role, ops);
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return { stepMs: mean(walls.slice(first, first + count)), runMs: mean(window.map((r) => r.dur / 1000)), byRole };
}

function print(title: string, p: StepProfile): void {
  const host = p.stepMs - p.runMs;
  const kernels = [...p.byRole.values()].reduce((sum, ops) => sum + [...ops.values()].reduce((a, b) => a + b, 0), 0);
  console.log(`\n## ${title}: step ${p.stepMs.toFixed(1)} ms = ORT run ${p.runMs.toFixed(1)} ms (kernels ${kernels.toFixed(1)} ms) + runner host side ${host.toFixed(1)} ms\n`);
  console.log("| role | ms | share of step | by op type (ms) |\n|---|---:|---:|---|");
  const rows = [...p.byRole].map(([role, ops]) => ({ role, ops, ms: [...ops.values()].reduce((a, b) => a + b, 0) }));
  rows.push({ role: "runner host side (layout, new K/V into the pool)", ops: new Map(), ms: host });
  for (const row of rows.sort((a, b) => b.ms - a.ms)) {
    const ops = [...row.ops].sort((a, b) => b[1] - a[1]).map(([op, ms]) => `${op} ${ms.toFixed(1)}`).join(", ");
    console.log(`| ${row.role} | ${row.ms.toFixed(1)} | ${((100 * row.ms) / p.stepMs).toFixed(1)}% | ${ops} |`);
  }
}

console.log(`# ${modelDir.split("/").pop()} (${fixture.config.numLayers} layers) at --quantization ${quantization}, --kv-cache-dtype ${kvCacheDtype}${fuseProjections === undefined ? "" : `, fuse=${fuseProjections}`}`);
print(`prefill chunk of ${prefillLen} tokens (one sequence)`, profileOf(1, 1));
print(`decode step, batch ${batch}, context ${context}`, profileOf(2 + batch + warmup, numSteps));
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
console.log(`\nmemory: weights ${mib(memory.weights)} on disk; KV pool ${mib(memory.kvPool)} (${fixture.runner.kvCache.numBlocks} blocks of 16); process RSS ${mib(memory.rss)} after the run`);
