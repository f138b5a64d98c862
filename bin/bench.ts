/** `tokenmill bench`: load any OpenAI-compatible endpoint, or an in-process tokenmill, and report vLLM's serving metrics. */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { runBench, type BenchTarget } from "../bench/run-bench.ts";
import { benchTokenizer, buildWorkload, type BenchRequest, type BenchTokenizer } from "../bench/workload.ts";
import { ensureGguf } from "../bench/gguf-writer.ts";
import { runLlamaPeer } from "../bench/llama-peer.ts";
import { compareLora } from "../bench/lora-compare.ts";
import { arrivalOffsetsMs } from "../bench/load-generator.ts";
import { Prng } from "../models/prng.ts";
import { readCheckpoint, type Checkpoint } from "../models/checkpoint.ts";
import { SYNTHETIC_MODELS } from "../models/synthetic/default-model.ts";
import { DEFAULT_MAX_LORA_RANK, QUANTIZATIONS, type Quantization } from "../models/index.ts";
import { startServer } from "../server/serve.ts";
import { ENGINE_FLAGS, ENGINE_FLAGS_HELP, engineOptionsFrom, modelDirFrom, readEngineFlags, type EngineFlags, type EngineFlagValues } from "./engine-flags.ts";
import { LEDGER_LEVELS, measureLedger } from "../bench/ledger-throughput.ts";
import { TIMEOUT_MS, measurePriorityFlood } from "../bench/priority-flood.ts";
import { measureBatch } from "../bench/batch-flood.ts";
import { fetchMetrics, metricTotal } from "../bench/server-metrics.ts";
import { FlagError, dbUrlFlag, enumFlag, flagValue, intFlag, listFlag, nonEmptyFlag, numberFlag, optionalFlagValue } from "./flags.ts";

export const BENCH_HELP = `tokenmill bench [options]
Target:
  --base-url URL                an OpenAI-compatible server (tokenmill, vLLM, llama.cpp...); without it,
                                tokenmill is started in this process with the engine flags below
  --model NAME|DIR              the model name to send (with --base-url), or the model to serve
  --tokenizer DIR               checkpoint folder whose tokenizer makes the prompts (default: the model's)
  --endpoint completions|chat|embeddings   which API to load (default completions); embeddings sends each
                                prompt as one input and reports input tokens a second and E2EL
Workload:
  --num-prompts N (64)  --input-len N (128)  --output-len N (64)  --range-ratio R (0)
  --prefix-len N (0)    shared prefix tokens    --shared-prefixes N (1)  distinct prefixes, one drawn per prompt
  --prompt-format ids|text (ids; text for chat)
  --request-rate R|inf (inf)  --burstiness B (1)  --max-concurrency N (32)
  --ignore-eos  --temperature T (0)  --top-p P  --top-k K  --min-p P  --seed N (0)  --warmup N (0)
Results:
  --goodput ttft:MS,tpot:MS,e2el:MS   SLOs for goodput
  --percentiles 50,90,99        latency percentiles
  --save-result FILE            JSON (vLLM's field names)
  --sweep-concurrency 1,4,16,64 also run each concurrency; with --plot FILE, an SVG of throughput and latency
  --compare-limit               the runner's static-batch throughput beside the server's, with the ratio
  --compare-sequential          the same workload served one request at a time, with the ratio
  --compare-quantization Q      the same server with --quantization Q, rounds alternating: quantization_speedup
  --rounds N (3)                alternating rounds for the comparisons (medians are compared)
  --peer llama.cpp              the same workload through llama.cpp (node-llama-cpp, installed once into .cache/peers) on a GGUF of the same
                                checkpoint (F32, Q8_0 or Q4_0 as --quantization is none, int8 or int4), after tokenmill's run,
                                its requests arriving when tokenmill's did (--request-rate, --burstiness, --seed),
                                in its own process; an F32 conversion is first checked against tokenmill's greedy tokens;
                                reports peer_ratio (tokenmill's output tok/s / llama.cpp's); completions with token-id prompts
  --gpu-hour-price USD          print the break-even $/Mtok: what a million output tokens cost at the measured rate
  --db URL|none                 the in-process server meters into this ledger (default none), to measure its cost
  --ledger-writes N             with --db: measure the ledger alone (N requests' rows) and exit
  --json-schema FILE            constrain every output to this JSON schema (response_format on chat, guided_json on
                                completions) and print the grammar's mask time per step
  --compare-lora N              LoRA's cost, served: output tok/s with adapters disabled, with N empty slots, and with
                                requests spread over N random adapters of rank --max-lora-rank (default 16), round
                                by round (--rounds); reports empty / disabled and mixed / empty
  --with-batch N                batch jobs: the workload's output tok/s sent directly at --max-concurrency against the same as one batch
                                run --max-concurrency lines at a time; then interactive TTFT idle and while a batch of N requests runs
  --priority-flood              priority tiers: interactive TTFT idle, then under a flood of 4x --max-num-seqs batch
                                requests of --output-len tokens, with tiers and without; --num-prompts interactive
                                requests of 16 tokens per phase, one every 100 ms
${ENGINE_FLAGS_HELP}`;

export async function benchCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...ENGINE_FLAGS,
      "base-url": { type: "string" }, tokenizer: { type: "string" }, endpoint: { type: "string", default: "completions" },
      "num-prompts": { type: "string", default: "64" }, "input-len": { type: "string", default: "128" },
      "output-len": { type: "string", default: "64" }, "range-ratio": { type: "string", default: "0" },
      "prefix-len": { type: "string", default: "0" }, "shared-prefixes": { type: "string", default: "1" }, "prompt-format": { type: "string" },
      "request-rate": { type: "string", default: "inf" }, burstiness: { type: "string", default: "1" },
      "max-concurrency": { type: "string", default: "32" }, "ignore-eos": { type: "boolean", default: false },
      temperature: { type: "string", default: "0" }, "top-p": { type: "string" }, "top-k": { type: "string" }, "min-p": { type: "string" },
      seed: { type: "string", default: "0" }, warmup: { type: "string", default: "0" },
      goodput: { type: "string" }, percentiles: { type: "string", default: "50,90,99" },
      "save-result": { type: "string" }, "sweep-concurrency": { type: "string" }, plot: { type: "string" },
      "compare-limit": { type: "boolean", default: false }, "compare-sequential": { type: "boolean", default: false }, peer: { type: "string" },
      "compare-quantization": { type: "string" },
      rounds: { type: "string", default: "3" }, help: { type: "boolean", short: "h" },
      db: { type: "string" }, "ledger-writes": { type: "string" }, "gpu-hour-price": { type: "string" },
      "priority-flood": { type: "boolean", default: false }, "with-batch": { type: "string" }, "compare-lora": { type: "string" },
      "json-schema": { type: "string" },
    },
  });
  if (values.help) return void console.log(BENCH_HELP);
  // NOTE: every flag is checked before a model or tokenizer loads.
  const db = values.db === undefined || values.db === "none" ? null : flagValue("db", values.db, dbUrlFlag);
  if (values["ledger-writes"] !== undefined) {
    if (db === null) throw new FlagError("--ledger-writes measures a database: give --db sqlite:PATH or postgres://...");
    const n = flagValue("ledger-writes", values["ledger-writes"], intFlag(1));
    // NOTE: no limits, a key budget, and key + team budgets, side by side: the cost of each level is their ratio.
    const results = [];
    for (const levels of LEDGER_LEVELS) results.push(await measureLedger(db, n, levels));
    const [plain] = results;
    for (const result of results) {
      console.log(`ledger on ${db.split(":")[0]}, limits ${result.levels.padEnd(4)}: ${result.numRequests} requests (in-flight insert + final upsert each${result.levels === "none" ? "" : ", a reservation and its settlement"}) ` +
        `in ${result.seconds.toFixed(2)} s: ${result.requestsPerSecond.toFixed(0)} requests/s, ${result.rowsWrittenPerSecond.toFixed(0)} writes/s, ${result.numBatches} transactions` +
        (result === plain ? "" : `; ${(result.requestsPerSecond / plain.requestsPerSecond).toFixed(3)}x the unlimited rate`));
    }
    return;
  }
  const engineFlags = readEngineFlags(values);
  const endpoint = flagValue("endpoint", values.endpoint, enumFlag("completions", "chat", "embeddings"));
  if (endpoint === "embeddings") {
    for (const flag of ["json-schema", "compare-limit", "plot", "priority-flood"] as const) {
      if (values[flag]) throw new FlagError(`--${flag} measures generation; leave it out with --endpoint embeddings`);
    }
  }
  const remote = optionalFlagValue("base-url", values["base-url"], urlFlag);
  const maxConcurrency = flagValue("max-concurrency", values["max-concurrency"], intFlag(1));
  const inputLen = flagValue("input-len", values["input-len"], intFlag(1));
  const outputLen = flagValue("output-len", values["output-len"], intFlag(1));
  const numPrompts = flagValue("num-prompts", values["num-prompts"], intFlag(1));
  const rangeRatio = flagValue("range-ratio", values["range-ratio"], numberFlag(0, 0.999));
  const prefixLen = flagValue("prefix-len", values["prefix-len"], intFlag(0));
  const sharedPrefixes = flagValue("shared-prefixes", values["shared-prefixes"], intFlag(1));
  const seed = flagValue("seed", values.seed, intFlag(0));
  const promptFormat = optionalFlagValue("prompt-format", values["prompt-format"], enumFlag("ids", "text")) ?? (endpoint === "chat" ? "text" : "ids");
  const requestRate = values["request-rate"] === "inf" ? Infinity : flagValue("request-rate", values["request-rate"], numberFlag(0, Number.MAX_VALUE, { minExclusive: true }));
  const load = {
    endpoint, temperature: flagValue("temperature", values.temperature, numberFlag(0, 100)), ignoreEos: values["ignore-eos"],
    warmup: flagValue("warmup", values.warmup, intFlag(0)), extraBody: { ...samplingExtras(values), ...schemaExtras(values["json-schema"], endpoint) }, requestRate,
    burstiness: flagValue("burstiness", values.burstiness, numberFlag(0, Number.MAX_VALUE, { minExclusive: true })), seed, progress: process.stderr.isTTY,
  };
  const sweepConcurrency = optionalFlagValue("sweep-concurrency", values["sweep-concurrency"], listFlag(intFlag(1)));
  const rounds = flagValue("rounds", values.rounds, intFlag(1));
  const goodput = parseGoodput(values.goodput);
  const percentiles = flagValue("percentiles", values.percentiles, listFlag(numberFlag(0, 100, { minExclusive: true })));
  if (values.plot && !sweepConcurrency) throw new FlagError("--plot draws the sweep: give --sweep-concurrency too");

  const checkpoint = readCheckpoint(tokenizerDir(values));
  const tokenizer = benchTokenizer(checkpoint);
  const workload = buildWorkload({ numPrompts, inputLen, outputLen, rangeRatio, prefixLen, sharedPrefixes, seed, promptFormat }, tokenizer);
  if (values["with-batch"] !== undefined) {
    if (remote) throw new FlagError("--with-batch serves the model in this process: leave out --base-url");
    const floodSize = flagValue("with-batch", values["with-batch"], intFlag(1));
    const engineOptions = engineOptionsFrom(engineFlags, checkpoint);
    const flood = buildWorkload({ numPrompts: floodSize + numPrompts, inputLen, outputLen, rangeRatio, prefixLen, sharedPrefixes, seed: seed + 1, promptFormat }, tokenizer);
    const result = await measureBatch({
      engineOptions, model: checkpoint.name, defaults: checkpoint.generationDefaults, workload, concurrency: maxConcurrency,
      floodSize, floodRequest: (i) => flood[i], numInteractive: numPrompts, gapMs: 100, interactiveOutputLen: 16,
    });
    console.log(`batch jobs: ${workload.length} requests (${inputLen} in, ${outputLen} out) at concurrency ${maxConcurrency}, --max-num-seqs ${engineOptions.maxNumSeqs}`);
    console.log(`  sent directly: ${result.directTokS.toFixed(1)} output tok/s; as one batch: ${result.batchTokS.toFixed(1)} tok/s; batch / direct = ${(result.batchTokS / result.directTokS).toFixed(3)}`);
    console.log(`  interactive TTFT (16 tokens, ${numPrompts} requests): idle p50 ${result.idle.p50Ms.toFixed(1)} ms, p99 ${result.idle.p99Ms.toFixed(1)} ms; ` +
      `during a ${floodSize}-request batch p50 ${result.duringBatch.p50Ms.toFixed(1)} ms, p99 ${result.duringBatch.p99Ms.toFixed(1)} ms (${result.duringBatch.batchLinesDone} batch lines done meanwhile)`);
    console.log(`  p99 during the batch / idle: ${(result.duringBatch.p99Ms / result.idle.p99Ms).toFixed(2)}x`);
    return;
  }
  if (values["compare-lora"] !== undefined) {
    if (remote) throw new FlagError("--compare-lora serves the model in this process: leave out --base-url");
    if (endpoint !== "completions") throw new FlagError("--compare-lora measures completions: leave out --endpoint");
    const numAdapters = flagValue("compare-lora", values["compare-lora"], intFlag(1, 64));
    const rank = engineFlags.maxLoraRank ?? DEFAULT_MAX_LORA_RANK;
    const engineOptions = engineOptionsFrom(engineFlags, checkpoint);
    const result = await compareLora({
      engineOptions, model: checkpoint.name, defaults: checkpoint.generationDefaults, workload, concurrency: maxConcurrency, numAdapters, rank, rounds,
      ignoreEos: values["ignore-eos"] === true,
    });
    console.log(`LoRA: ${workload.length} requests (${inputLen} in, ${outputLen} out) at concurrency ${maxConcurrency}, ${numAdapters} adapters of rank ${rank}, ${rounds} rounds`);
    console.log(`  output tok/s (median): disabled ${result.median.disabled.toFixed(1)}, empty slots ${result.median.empty.toFixed(1)}, adapters mixed ${result.median.mixed.toFixed(1)}`);
    console.log(`  empty / disabled = ${result.emptyOverDisabled.toFixed(3)}; mixed / empty = ${result.mixedOverEmpty.toFixed(3)}; mixed / disabled = ${result.mixedOverDisabled.toFixed(3)}`);
    if (values["save-result"]) writeFileSync(values["save-result"], `${JSON.stringify(result, null, 2)}\n`);
    return;
  }
  if (values["priority-flood"]) {
    if (remote) throw new FlagError("--priority-flood serves the model in this process: leave out --base-url");
    const engineOptions = engineOptionsFrom(engineFlags, checkpoint);
    const prompts = buildWorkload({ numPrompts: numPrompts + 4 * engineOptions.maxNumSeqs, inputLen, outputLen, rangeRatio, prefixLen, sharedPrefixes, seed, promptFormat }, tokenizer);
    const phases = await measurePriorityFlood({
      engineOptions, model: checkpoint.name, defaults: checkpoint.generationDefaults, numInteractive: numPrompts, gapMs: 100,
      numFlood: 4 * engineOptions.maxNumSeqs, floodOutputLen: outputLen, interactiveOutputLen: 16, prompt: (i) => prompts[i],
    });
    console.log(`priority tiers: ${numPrompts} interactive requests (16 tokens) per phase; flood: ${4 * engineOptions.maxNumSeqs} batch requests of ${outputLen} tokens, --max-num-seqs ${engineOptions.maxNumSeqs}`);
    for (const phase of phases) console.log(`  ${phase.name.padEnd(40)} TTFT p50 ${phase.p50Ms.toFixed(1).padStart(8)} ms  p99 ${phase.p99Ms.toFixed(1).padStart(8)} ms${phase.timedOut ? `  (${phase.timedOut} had no first token within ${TIMEOUT_MS / 1000} s: lower bounds)` : ""}`);
    const [idle, tiers, none] = phases;
    console.log(`  p99 under the flood / idle: ${(tiers.p99Ms / idle.p99Ms).toFixed(2)}x with tiers, ${(none.p99Ms / idle.p99Ms).toFixed(2)}x without`);
    return;
  }

  const peer = optionalFlagValue("peer", values.peer, enumFlag("llama.cpp"));
  if (peer && (remote || endpoint !== "completions" || promptFormat !== "ids")) {
    throw new FlagError("--peer llama.cpp runs the model in this process on completions with token-id prompts: leave out --base-url, --endpoint and --prompt-format");
  }
  if (peer && !values["ignore-eos"]) throw new FlagError("--peer llama.cpp compares fixed lengths: give --ignore-eos");
  const { target, close } = remote
    ? { target: { baseUrl: remote, model: typeof values.model === "string" ? values.model : checkpoint.name } as BenchTarget, close: async () => {} }
    : await localTarget(engineFlags, checkpoint, maxConcurrency, db);
  for (const path of [values["save-result"], values.plot]) if (path) mkdirSync(dirname(path), { recursive: true });
  try {
    const result = await runBench(target, {
      workload,
      workloadOfRound: (round) => buildWorkload({ numPrompts, inputLen, outputLen, rangeRatio, prefixLen, sharedPrefixes, seed: seed + round, promptFormat }, tokenizer),
      load,
      maxConcurrency,
      sweepConcurrency,
      compareLimit: values["compare-limit"], compareSequential: values["compare-sequential"],
      compareQuantization: optionalFlagValue("compare-quantization", values["compare-quantization"], enumFlag(...QUANTIZATIONS)),
      rounds,
      goodput, percentiles,
      limit: {
        inputLen, outputLen, blockSize: engineFlags.blockSize, maxTokenId: tokenizer.firstSpecialId ?? tokenizer.vocabSize,
        build: { quantization: engineFlags.quantization, quantBlockSize: engineFlags.quantBlockSize },
      },
      saveResult: values["save-result"], plot: values.plot,
      gpuHourPriceUsd: optionalFlagValue("gpu-hour-price", values["gpu-hour-price"], numberFlag(0, Number.MAX_VALUE, { minExclusive: true })),
      config: {
        model: target.model, endpoint, num_prompts: workload.length, input_len: inputLen, output_len: outputLen,
        range_ratio: rangeRatio, prefix_len: prefixLen, shared_prefixes: sharedPrefixes, request_rate: values["request-rate"],
        burstiness: load.burstiness, ignore_eos: values["ignore-eos"], base_url: target.baseUrl,
      },
    });
    if (values["json-schema"]) await printGrammarCost(target.baseUrl);
    if (peer) {
      // The peer's requests arrive when tokenmill's did: the same --request-rate, --burstiness and --seed.
      const arrivalsMs = arrivalOffsetsMs(workload.length, requestRate, load.burstiness, new Prng(seed));
      const peerResult = await comparePeer(target.baseUrl, checkpoint, engineFlags.quantization ?? "none", workload, maxConcurrency, arrivalsMs, engineFlags.intraOpThreads, tokenizer, result);
      if (values["save-result"]) writeFileSync(values["save-result"], `${JSON.stringify({ ...result, ...peerResult }, null, 2)}\n`);
    }
  } finally {
    await close();
  }
}

/**
 * --peer llama.cpp: the workload through llama.cpp on the same checkpoint, converted to the GGUF
 * type that matches --quantization. An F32 conversion must first give tokenmill's own greedy
 * text for the first prompt, or nothing is timed.
 */
async function comparePeer(
  baseUrl: string, checkpoint: Checkpoint, quantization: Quantization, workload: BenchRequest[], concurrency: number, arrivalsMs: number[], threads: number | undefined,
  tokenizer: BenchTokenizer, result: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const type = ({ none: "F32", int8: "Q8_0", int4: "Q4_0" } as const)[quantization];
  const gguf = ensureGguf(checkpoint.dir, type);
  const prompts = workload.map((r) => r.prompt as number[]);
  const outputLens = workload.map((r) => r.outputLen);
  const peerThreads = threads ?? Math.max(1, Math.min(4, availableParallelism()));
  if (type === "F32") {
    const n = 8;
    const { greedy } = await runLlamaPeer({ gguf, prompts: [prompts[0]], outputLens: [n], concurrency: 1, threads: peerThreads, greedyOf: n });
    const response = await fetch(`${baseUrl}/v1/completions`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: checkpoint.name, prompt: prompts[0], max_tokens: n, temperature: 0, ignore_eos: true }),
    });
    const ours = ((await response.json()) as { choices: { text: string }[] }).choices[0].text;
    const theirs = tokenizer.decode(greedy ?? []);
    if (ours !== theirs) throw new Error(`--peer llama.cpp: the F32 GGUF does not give tokenmill's greedy text for the first prompt (${JSON.stringify(ours)} vs ${JSON.stringify(theirs)}): nothing timed`);
    console.log(`peer check: llama.cpp on the F32 GGUF gives tokenmill's first ${n} greedy tokens`);
  }
  const peer = await runLlamaPeer({ gguf, prompts, outputLens, concurrency, threads: peerThreads, arrivalsMs });
  const ours = Number(result.output_throughput);
  const meanTtft = peer.ttftMs.reduce((a, b) => a + b, 0) / Math.max(1, peer.ttftMs.length);
  const ratio = ours / peer.outputThroughput;
  console.log(`peer llama.cpp (${type}, ${peerThreads} threads, ${concurrency} sequences): ${peer.outputThroughput.toFixed(1)} output tok/s, mean TTFT ${meanTtft.toFixed(1)} ms; ` +
    `tokenmill ${ours.toFixed(1)} tok/s, mean TTFT ${Number(result.mean_ttft_ms).toFixed(1)} ms; peer_ratio = ${ratio.toFixed(3)}`);
  return {
    peer: { name: "llama.cpp", gguf_type: type, threads: peerThreads, completed: peer.completed, output_throughput: peer.outputThroughput, mean_ttft_ms: meanTtft, duration: peer.durationS },
    peer_ratio: ratio,
  };
}

/** --json-schema FILE as the request field each endpoint takes. */
function schemaExtras(path: string | undefined, endpoint: "completions" | "chat" | "embeddings"): Record<string, unknown> {
  if (path === undefined) return {};
  let schema: unknown;
  try {
    schema = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new FlagError(`--json-schema takes a file holding a JSON schema; ${path}: ${err instanceof Error ? err.message : String(err)}`);
  }
  return endpoint === "chat" ? { response_format: { type: "json_schema", json_schema: { name: "bench", schema, strict: true } } } : { guided_json: schema };
}

/** The grammar thread's cost, from a tokenmill server's metrics (absent elsewhere). */
async function printGrammarCost(baseUrl: string): Promise<void> {
  const text = await fetchMetrics(baseUrl);
  const total = (name: string) => metricTotal(text, name);
  const steps = total("tokenmill_grammar_steps_total");
  if (steps === 0) return void console.log("grammar: no constrained steps (not a tokenmill server, or nothing was constrained)");
  const perStep = (name: string) => ((total(name) / steps) * 1000).toFixed(2);
  console.log(`grammar: ${steps} constrained steps; masks ${perStep("tokenmill_grammar_mask_seconds_total")} ms a step on the grammar thread ` +
    `(overlapping the model), of which the step waited ${perStep("tokenmill_grammar_wait_seconds_total")} ms after the model ran`);
}

/** Whose tokenizer makes the prompts: --tokenizer, else the served model's, else (remote, unknown model) the default's. */
function tokenizerDir(values: EngineFlagValues & { tokenizer?: string; "base-url"?: string }): string {
  if (values.tokenizer) return values.tokenizer;
  const model = values.model;
  if (!values["base-url"] || (typeof model === "string" && (existsSync(model) || model in SYNTHETIC_MODELS))) return modelDirFrom(values);
  console.error("tokenmill bench: no --tokenizer given; making prompts with the default model's (Qwen3) tokenizer");
  return modelDirFrom({});
}

const urlFlag = {
  schema: nonEmptyFlag.schema.refine((text) => URL.canParse(text) && /^https?:/.test(text), "not an http(s) URL"),
  accepts: "an http:// or https:// URL",
};

async function localTarget(flags: EngineFlags, checkpoint: Checkpoint, maxConcurrency: number, db: string | null) {
  const engineOptions = engineOptionsFrom(flags, checkpoint);
  // The main server runs at least --max-concurrency sequences at once; the sequential twin runs one.
  const start = async (maxNumSeqs: number, quantization = engineOptions.quantization) => {
    const server = await startServer({
      models: [{ name: checkpoint.name, engineOptions: { ...engineOptions, maxNumSeqs, quantization }, defaults: checkpoint.generationDefaults, maxQueuedRequests: 100_000 }],
      host: "127.0.0.1", port: 0,
      shutdownTimeoutMs: 5_000, bodyLimitBytes: 64 * 1024 * 1024, logger: false,
      db: db === null ? null : { url: db, replica: "bench" },
    });
    await server.ready;
    return { baseUrl: server.url, close: () => server.close() };
  };
  const main = await start(Math.max(maxConcurrency, engineOptions.maxNumSeqs));
  const target: BenchTarget = {
    baseUrl: main.baseUrl, model: checkpoint.name, modelDir: checkpoint.dir, startSequential: () => start(1),
    startQuantized: (quantization) => start(Math.max(maxConcurrency, engineOptions.maxNumSeqs), quantization as Quantization),
  };
  return { target, close: main.close };
}

/** vLLM's sampling extras, sent only when given so that strict endpoints see plain OpenAI bodies. */
function samplingExtras(values: { "top-p"?: string; "top-k"?: string; "min-p"?: string }): Record<string, number> {
  const extras: Record<string, number> = {};
  const topP = optionalFlagValue("top-p", values["top-p"], numberFlag(0, 1, { minExclusive: true }));
  const topK = optionalFlagValue("top-k", values["top-k"], intFlag(-1));
  const minP = optionalFlagValue("min-p", values["min-p"], numberFlag(0, 1));
  if (topP !== undefined) extras.top_p = topP;
  if (topK !== undefined) extras.top_k = topK;
  if (minP !== undefined) extras.min_p = minP;
  return extras;
}

function parseGoodput(text: string | undefined) {
  if (!text) return undefined;
  const slo: Record<string, number> = {};
  for (const part of text.split(/[,\s]+/).filter(Boolean)) {
    const [key, value] = part.split(":");
    if (!["ttft", "tpot", "e2el"].includes(key) || !(Number(value) > 0)) throw new FlagError(`--goodput takes ttft:MS,tpot:MS,e2el:MS, got "${part}"`);
    slo[`${key}Ms`] = Number(value);
  }
  return slo;
}
