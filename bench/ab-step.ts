/**
 * Two builds of one model's graph, side by side on the real runner: decode steps of a full
 * batch and prefill chunks, alternating between A and B in this one process so that a noisy
 * machine moves both alike, compared by their medians.
 *
 *   node --import tsx bench/ab-step.ts --model qwen3-0.6b-random --a quantization=none \
 *     --b quantization=none,fuse=false --batch 32 --context 192 --steps 16 --prefills 3
 *
 * A build is comma-separated key=value: quantization (none|int8|int4), fuse (true|false),
 * block (the quantization block size), kv (the KV cache dtype: float32|float16|int8), rope (op:
 * the RotaryEmbedding op, ops: plain ops), share (the runner reads blocks every sequence shares
 * once: true, the default, or per sequence: false), split (the runner splits a step by past
 * length where it pays: true, the default, or never: false), lora (SLOTS:RANK: a graph with LoRA
 * slots, --max-loras and --max-lora-rank), mix (N: random adapters in slots 1…N, the batch's rows
 * spread over them; 0, the default: every row on the base model), lora-layout (stacked, the
 * default: every slot at once with the other slots masked; gather: each row's own A and B gathered).
 *
 * --shared-prefix N gives every sequence of the batch the same first N tokens, in the same
 * blocks (a prefix-cached system prompt), filled once. --ragged-context gives sequence b the
 * context shared + (context − shared)·(b + 1)/batch instead of `context`.
 */
import { parseArgs } from "node:util";
import type { GraphBuildOptions } from "../models/build-graph.ts";
import { QUANTIZATIONS, type Quantization } from "../models/graph/quantize.ts";
import { KV_CACHE_DTYPES, type KvCacheDtype } from "../models/graph/kv-dtype.ts";
import { modelDirOf, openStepFixture, type StepFixture } from "./step-fixture.ts";

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "qwen3-0.6b-random" },
    a: { type: "string", default: "quantization=none" },
    b: { type: "string", default: "quantization=none,fuse=false" },
    batch: { type: "string", default: "32" },
    context: { type: "string", default: "192" },
    steps: { type: "string", default: "16" },
    "prefill-len": { type: "string", default: "1024" },
    prefills: { type: "string", default: "3" },
    threads: { type: "string", default: "0" },
    "shared-prefix": { type: "string", default: "0" },
    "ragged-context": { type: "boolean", default: false },
  },
});

export function parseBuild(text: string): GraphBuildOptions & { shareBlocks?: boolean; splitPasts?: boolean; loraMix?: number } {
  const build: GraphBuildOptions & { shareBlocks?: boolean; splitPasts?: boolean; loraMix?: number } = {};
  for (const part of text.split(",").filter(Boolean)) {
    const [key, value] = part.split("=");
    if (key === "quantization" && QUANTIZATIONS.includes(value as Quantization)) build.quantization = value as Quantization;
    else if (key === "fuse" && (value === "true" || value === "false")) build.fuseProjections = value === "true";
    else if (key === "block" && /^\d+$/.test(value)) build.quantBlockSize = Number(value);
    else if (key === "split" && (value === "true" || value === "false")) build.splitPasts = value === "true";
    else if (key === "share" && (value === "true" || value === "false")) build.shareBlocks = value === "true";
    else if (key === "rope" && (value === "op" || value === "ops")) build.ropeOp = value === "op";
    else if (key === "kv" && KV_CACHE_DTYPES.includes(value as KvCacheDtype)) build.kvCacheDtype = value as KvCacheDtype;
    else if (key === "lora" && /^\d+:\d+$/.test(value)) [build.maxLoras, build.maxLoraRank] = value.split(":").map(Number);
    else if (key === "mix" && /^\d+$/.test(value)) build.loraMix = Number(value);
    else if (key === "lora-layout" && (value === "stacked" || value === "gather")) build.loraLayout = value;
    else throw new Error(`bad build option ${JSON.stringify(part)}: use quantization=none|int8|int4, fuse=true|false, block=N, kv=float32|float16|int8, rope=op|ops, share=true|false, split=true|false, lora=SLOTS:RANK, mix=N, lora-layout=stacked|gather`);
  }
  return build;
}

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor((xs.length - 1) / 2)];
const modelDir = modelDirOf(values.model!);
const steps = Number(values.steps);
const options = { batch: Number(values.batch), context: Number(values.context), steps: steps + 2, prefillLen: Number(values["prefill-len"]), threads: Number(values.threads), sharedPrefix: Number(values["shared-prefix"]), raggedContext: values["ragged-context"] };
const sides: { label: string; fixture: StepFixture; decode: number[]; prefill: number[] }[] = [];
for (const label of [values.a!, values.b!]) {
  const { shareBlocks, splitPasts, loraMix, ...build } = parseBuild(label);
  const fixture = await openStepFixture(modelDir, build, { ...options, shareBlocks, splitPasts, loraMix });
  await fixture.fill();
  await fixture.prefill(); // the session's first big run allocates its arena
  sides.push({ label, fixture, decode: [], prefill: [] });
}
for (let t = 0; t < steps + 2; t++) {
  for (const side of sides) {
    const ms = await side.fixture.decode(t);
    if (t >= 2) side.decode.push(ms);
  }
}
for (let i = 0; i < Number(values.prefills); i++) for (const side of sides) side.prefill.push(await side.fixture.prefill());
for (const side of sides) await side.fixture.runner.release();

const [a, b] = sides;
const line = (what: string, ms: (s: (typeof sides)[number]) => number[]) => {
  if (ms(a).length === 0) return;
  const [ma, mb] = [median(ms(a)), median(ms(b))];
  console.log(`${what}: A ${ma.toFixed(1)} ms, B ${mb.toFixed(1)} ms; B / A = ${(mb / ma).toFixed(3)} (medians of ${ms(a).length}, alternating)`);
};
console.log(`A: ${a.label}\nB: ${b.label}\n${modelDir.split("/").pop()}, batch ${options.batch}, context ${options.context}`);
line(`decode step (batch ${options.batch})`, (s) => s.decode);
line(`prefill chunk (${options.prefillLen} tokens)`, (s) => s.prefill);
