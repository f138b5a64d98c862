/**
 * The engine thread: owns the ONNX Runtime session, the KV pool, the scheduler and every
 * request's state. It only ever talks to the outside through messages.
 */
import { parentPort, workerData } from "node:worker_threads";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { DEFAULT_MAX_LORA_RANK, ModelError, ensureGraph, readLoraAdapter, type ModelConfig } from "../../models/index.ts";
import { ModelTokenizer } from "../../models/tokenizer.ts";
import { EngineCore } from "../core/engine-core.ts";
import { EngineError, StepFailure } from "../common/engine-error.ts";
import type { AdapterInfo, EngineInfo, EngineOptions, LoraModuleSpec } from "./engine-options.ts";
import type { FromEngine, ToEngine } from "./engine-protocol.ts";
import { contextLengthOf } from "../core/context-length.ts";
import { createRunner } from "../runner/runner-registry.ts";
import { spinningFor } from "../runner/onnx-host/onnx-session.ts";
import { DEFAULT_GRAMMAR_COMPILE_TIMEOUT_MS, DEFAULT_GRAMMAR_MASK_TIMEOUT_MS, DEFAULT_GRAMMAR_THREADS, GrammarPool } from "../grammar/grammar-pool.ts";

const port = parentPort!;
const post = (message: FromEngine) => port.postMessage(message);

async function main(options: EngineOptions): Promise<void> {
  const started = performance.now();
  const maxLoras = options.maxLoras ?? 0;
  const maxLoraRank = maxLoras > 0 ? (options.maxLoraRank ?? DEFAULT_MAX_LORA_RANK) : 0;
  const graph = ensureGraph(options.modelDir, {
    progress: options.progress,
    build: {
      device: options.device, dtype: options.dtype, ropeInAttention: options.ropeInAttention, quantization: options.quantization, quantBlockSize: options.quantBlockSize,
      kvCacheDtype: options.kvCacheDtype, ...(maxLoras > 0 ? { maxLoras, maxLoraRank } : {}),
    },
  });
  const { config } = graph;
  const runner = await createRunner(options.device, {
    graphPath: graph.graphPath, config, blockSize: options.blockSize, kvCacheBytes: options.kvCacheMemoryBytes, kvCacheDtype: graph.kvCacheDtype, intraOpThreads: options.intraOpThreads,
    spinning: options.spinning ?? spinningFor(graph.weightsBytes), ...(maxLoras > 0 ? { lora: { slots: maxLoras, rank: maxLoraRank } } : {}),
  });
  const { numBlocks } = runner.kvCache;
  const context = contextLengthOf({ maxPositionEmbeddings: config.maxPositionEmbeddings, requested: options.maxModelLen, kvCacheTokens: runner.kvCache.numTokens });
  const { maxModelLen } = context;
  // NOTE: text is made here, next to the sampler, so stop strings end a sequence in the step that completes them.
  const checkpoint = readCheckpoint(options.modelDir);
  const codec = ModelTokenizer.load(checkpoint);
  const eosTokenIds = options.eosTokenIds ?? [...new Set([...checkpoint.eosTokenIds, ...(codec.eosTokenId === null ? [] : [codec.eosTokenId])])];
  const grammar = new GrammarPool({ tokenizerJson: checkpoint.tokenizerJson, vocabSize: runner.vocabSize, stopTokenIds: eosTokenIds }, {
    maxThreads: options.grammarThreads ?? DEFAULT_GRAMMAR_THREADS,
    compileTimeoutMs: options.grammarCompileTimeoutMs ?? DEFAULT_GRAMMAR_COMPILE_TIMEOUT_MS,
    maskTimeoutMs: DEFAULT_GRAMMAR_MASK_TIMEOUT_MS,
  });
  const core = new EngineCore(runner, { ...options, numBlocks, maxModelLen, eosTokenIds, grammar }, codec);
  // NOTE: a bad adapter named at start fails the start, with the adapter's own error.
  const adapters = (options.loraModules ?? []).map((spec) => loadAdapter(core, config, spec));
  const info: EngineInfo = {
    modelDir: options.modelDir, architecture: config.architecture, vocabSize: config.vocabSize, hiddenSize: config.hiddenSize, maxModelLen, numBlocks,
    blockSize: options.blockSize, kvCache: runner.kvCache, graphBuilt: graph.built, graphBuildMs: graph.buildMs, weightsBytes: graph.weightsBytes, loadMs: performance.now() - started,
    ...(context.cappedFrom !== undefined ? { maxModelLenCappedFrom: context.cappedFrom } : {}),
    lora: maxLoras > 0 ? { maxLoras, maxLoraRank } : null, adapters,
  };

  let wake: (() => void) | null = null;
  core.onWake = () => wake?.();
  let stopping = false;
  port.on("message", (message: ToEngine) => {
    if (message.type === "add") {
      try {
        core.admit(message.request);
      } catch (err) {
        const { code, message: text, param } = err instanceof EngineError ? err : new EngineError("INVALID_REQUEST", String(err));
        post({ type: "rejected", requestId: message.request.requestId, code, message: text, param });
      }
    } else if (message.type === "load-adapter" || message.type === "unload-adapter") {
      try {
        post(message.type === "load-adapter"
          ? { type: "adapter", id: message.id, info: loadAdapter(core, config, message) }
          : { type: "adapter", id: message.id, unloaded: core.unloadAdapter(message.name) });
      } catch (err) {
        const { code, message: text, param } = err instanceof EngineError ? err : new EngineError("RUNTIME_FAILED", String(err));
        post({ type: "adapter", id: message.id, error: { code, message: text, param } });
      }
    } else if (message.type === "abort") {
      core.abort(message.requestId);
    } else if (message.type === "inject-fault") {
      // NOTE: thrown outside any step and any catch, as a bug in the loop would be: the thread dies.
      if (options.faultInjection) setImmediate(() => { throw new Error("injected fault"); });
    } else {
      stopping = true;
    }
    wake?.();
  });
  post({ type: "ready", info });

  while (!stopping) {
    if (!core.hasWork) {
      core.checkIntegrity();
      post({ type: "outputs", outputs: [], stats: core.stats.snapshot() });
      await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
      continue;
    }
    try {
      const outputs = await core.step();
      if (outputs.length > 0) post({ type: "outputs", outputs, stats: core.stats.snapshot() });
    } catch (err) {
      if (!(err instanceof StepFailure)) throw err;
      // NOTE: one failed step fails only its own requests; the engine keeps serving the rest.
      post({ type: "outputs", outputs: err.outputs, stats: core.stats.snapshot() });
      for (const requestId of err.requestIds) post({ type: "rejected", requestId, ...err.errorFor(requestId), usage: err.usages.get(requestId) });
    }
    // NOTE: session.run blocks this thread; yielding here lets new requests and aborts in between steps.
    await new Promise((resolve) => setImmediate(resolve));
  }
  await grammar.terminate();
  await runner.release();
  port.close();
}

/** Reads and checks a PEFT adapter against the model (a 400's worth of reasons: models/lora/adapter.ts) and serves it. */
function loadAdapter(core: EngineCore, config: ModelConfig, spec: LoraModuleSpec): AdapterInfo {
  let weights;
  try {
    weights = readLoraAdapter(spec.path, config, spec.name);
  } catch (err) {
    if (err instanceof ModelError) throw new EngineError("INVALID_REQUEST", err.message, "lora_path");
    throw err;
  }
  core.loadAdapter(spec.name, weights);
  return { name: spec.name, path: spec.path, rank: weights.maxRank, targetModules: weights.targetModules, baseModel: weights.baseModel };
}

main(workerData as EngineOptions).catch((err: unknown) => {
  const code = err instanceof EngineError ? err.code : "RUNTIME_FAILED";
  post({ type: "fatal", code, message: err instanceof Error ? err.message : String(err) });
  port.close();
});
