/** `tokenmill bench`: load any OpenAI-compatible endpoint, or an in-process tokenmill, and report vLLM's serving metrics. */
import { existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { runBench, type BenchTarget } from "../bench/run-bench.ts";
import { buildWorkload, type BenchTokenizer } from "../bench/workload.ts";
import { readCheckpoint, type Checkpoint } from "../models/checkpoint.ts";
import { SYNTHETIC_MODELS } from "../models/default-model.ts";
import { ModelTokenizer } from "../models/tokenizer.ts";
import { startServer } from "../server/serve.ts";
import { ENGINE_FLAGS, ENGINE_FLAGS_HELP, engineOptionsFrom, modelDirFrom, positiveInt, type EngineFlagValues } from "./engine-flags.ts";

export const BENCH_HELP = `tokenmill bench [options]
Target:
  --base-url URL                an OpenAI-compatible server (tokenmill, vLLM, llama.cpp...); without it,
                                tokenmill is started in this process with the engine flags below
  --model NAME|DIR              the model name to send (with --base-url), or the model to serve
  --tokenizer DIR               checkpoint folder whose tokenizer makes the prompts (default: the model's)
  --endpoint completions|chat   which API to load (default completions)
Workload:
  --num-prompts N (64)  --input-len N (128)  --output-len N (64)  --range-ratio R (0)
  --prefix-len N (0)    shared prefix tokens    --prompt-format ids|text (ids; text for chat)
  --request-rate R|inf (inf)  --burstiness B (1)  --max-concurrency N (32)
  --ignore-eos  --temperature T (0)  --top-p P  --top-k K  --min-p P  --seed N (0)  --warmup N (0)
Results:
  --goodput ttft:MS,tpot:MS,e2el:MS   SLOs for goodput
  --percentiles 50,90,99        latency percentiles
  --save-result FILE            JSON (vLLM's field names)
  --sweep-concurrency 1,4,16,64 also run each concurrency; with --plot FILE, an SVG of throughput and latency
  --compare-limit               the runner's static-batch throughput beside the server's, with the ratio
  --compare-sequential          the same workload served one request at a time, with the ratio
  --rounds N (3)                alternating rounds for the comparisons (medians are compared)
${ENGINE_FLAGS_HELP}`;

const list = (text: string | undefined) => (text ? text.split(",").map((s) => Number(s.trim())) : undefined);

export async function benchCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...ENGINE_FLAGS,
      "base-url": { type: "string" }, tokenizer: { type: "string" }, endpoint: { type: "string", default: "completions" },
      "num-prompts": { type: "string", default: "64" }, "input-len": { type: "string", default: "128" },
      "output-len": { type: "string", default: "64" }, "range-ratio": { type: "string", default: "0" },
      "prefix-len": { type: "string", default: "0" }, "prompt-format": { type: "string" },
      "request-rate": { type: "string", default: "inf" }, burstiness: { type: "string", default: "1" },
      "max-concurrency": { type: "string", default: "32" }, "ignore-eos": { type: "boolean", default: false },
      temperature: { type: "string", default: "0" }, "top-p": { type: "string" }, "top-k": { type: "string" }, "min-p": { type: "string" },
      seed: { type: "string", default: "0" }, warmup: { type: "string", default: "0" },
      goodput: { type: "string" }, percentiles: { type: "string", default: "50,90,99" },
      "save-result": { type: "string" }, "sweep-concurrency": { type: "string" }, plot: { type: "string" },
      "compare-limit": { type: "boolean", default: false }, "compare-sequential": { type: "boolean", default: false },
      rounds: { type: "string", default: "3" }, help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return void console.log(BENCH_HELP);
  const endpoint = values.endpoint === "chat" ? "chat" : "completions";
  const remote = values["base-url"];
  const checkpoint = readCheckpoint(tokenizerDir(values));
  const tokenizer = benchTokenizer(checkpoint);
  const maxConcurrency = positiveInt(values["max-concurrency"], "--max-concurrency");
  const inputLen = positiveInt(values["input-len"], "--input-len");
  const outputLen = positiveInt(values["output-len"], "--output-len");
  const workload = buildWorkload({
    numPrompts: positiveInt(values["num-prompts"], "--num-prompts"), inputLen, outputLen,
    rangeRatio: Number(values["range-ratio"]), prefixLen: Number(values["prefix-len"]), seed: Number(values.seed),
    promptFormat: (values["prompt-format"] ?? (endpoint === "chat" ? "text" : "ids")) as "ids" | "text",
  }, tokenizer);

  const { target, close } = remote
    ? { target: { baseUrl: remote, model: typeof values.model === "string" ? values.model : checkpoint.name } as BenchTarget, close: async () => {} }
    : await localTarget(values, checkpoint, maxConcurrency);
  for (const path of [values["save-result"], values.plot]) if (path) mkdirSync(dirname(path), { recursive: true });
  try {
    await runBench(target, {
      workload,
      load: {
        endpoint, temperature: Number(values.temperature), ignoreEos: values["ignore-eos"], warmup: Number(values.warmup),
        extraBody: samplingExtras(values),
        requestRate: values["request-rate"] === "inf" ? Infinity : Number(values["request-rate"]), burstiness: Number(values.burstiness),
        seed: Number(values.seed), progress: process.stderr.isTTY,
      },
      maxConcurrency,
      sweepConcurrency: list(values["sweep-concurrency"]),
      compareLimit: values["compare-limit"], compareSequential: values["compare-sequential"],
      rounds: positiveInt(values.rounds, "--rounds"),
      goodput: parseGoodput(values.goodput), percentiles: list(values.percentiles) ?? [50, 90, 99],
      limit: { inputLen, outputLen, blockSize: positiveInt(values["block-size"], "--block-size"), maxTokenId: tokenizer.firstSpecialId ?? tokenizer.vocabSize },
      saveResult: values["save-result"], plot: values.plot,
      config: {
        model: target.model, endpoint, num_prompts: workload.length, input_len: inputLen, output_len: outputLen,
        range_ratio: Number(values["range-ratio"]), prefix_len: Number(values["prefix-len"]), request_rate: values["request-rate"],
        burstiness: Number(values.burstiness), ignore_eos: values["ignore-eos"], base_url: target.baseUrl,
      },
    });
  } finally {
    await close();
  }
}

/** Whose tokenizer makes the prompts: --tokenizer, else the served model's, else (remote, unknown model) the default's. */
function tokenizerDir(values: EngineFlagValues & { tokenizer?: string; "base-url"?: string }): string {
  if (values.tokenizer) return values.tokenizer;
  const model = values.model;
  if (!values["base-url"] || (typeof model === "string" && (existsSync(model) || model in SYNTHETIC_MODELS))) return modelDirFrom(values);
  console.error("tokenmill bench: no --tokenizer given; making prompts with the default model's (Qwen3) tokenizer");
  return modelDirFrom({});
}

function benchTokenizer(checkpoint: Checkpoint): BenchTokenizer {
  const tokenizer = ModelTokenizer.load(checkpoint);
  return {
    vocabSize: checkpoint.config.vocabSize,
    firstSpecialId: tokenizer.firstSpecialTokenId ?? undefined,
    decode: (ids) => tokenizer.decode(ids),
    encode: (text) => tokenizer.encode(text, false),
  };
}

async function localTarget(values: EngineFlagValues, checkpoint: Checkpoint, maxConcurrency: number) {
  const engineOptions = engineOptionsFrom(values, checkpoint);
  // The main server runs at least --max-concurrency sequences at once; the sequential twin runs one.
  const start = async (maxNumSeqs: number) => {
    const server = await startServer({
      engineOptions: { ...engineOptions, maxNumSeqs },
      modelId: checkpoint.name, maxModelLen: checkpoint.config.maxPositionEmbeddings, vocabSize: checkpoint.config.vocabSize,
      defaults: checkpoint.generationDefaults, host: "127.0.0.1", port: 0, maxQueuedRequests: 100_000,
      shutdownTimeoutMs: 5_000, bodyLimitBytes: 64 * 1024 * 1024, logger: false,
    });
    await server.ready;
    return { baseUrl: server.url, close: () => server.close() };
  };
  const main = await start(Math.max(maxConcurrency, engineOptions.maxNumSeqs));
  const target: BenchTarget = { baseUrl: main.baseUrl, model: checkpoint.name, modelDir: checkpoint.dir, startSequential: () => start(1) };
  return { target, close: main.close };
}

/** vLLM's sampling extras, sent only when given so that strict endpoints see plain OpenAI bodies. */
function samplingExtras(values: { "top-p"?: string; "top-k"?: string; "min-p"?: string }): Record<string, number> {
  const extras: Record<string, number> = {};
  for (const [flag, field] of [["top-p", "top_p"], ["top-k", "top_k"], ["min-p", "min_p"]] as const) {
    if (values[flag] === undefined) continue;
    const value = Number(values[flag]);
    if (!Number.isFinite(value)) throw new Error(`--${flag} must be a number, got ${values[flag]}`);
    extras[field] = value;
  }
  return extras;
}

function parseGoodput(text: string | undefined) {
  if (!text) return undefined;
  const slo: Record<string, number> = {};
  for (const part of text.split(/[,\s]+/).filter(Boolean)) {
    const [key, value] = part.split(":");
    if (!["ttft", "tpot", "e2el"].includes(key) || !Number.isFinite(Number(value))) throw new Error(`--goodput takes ttft:MS,tpot:MS,e2el:MS, got "${part}"`);
    slo[`${key}Ms`] = Number(value);
  }
  return slo;
}
