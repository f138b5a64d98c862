/**
 * Starts serving: listen at once (so /health answers 503 while the model loads), then start
 * the tokenizer pool and the engine thread. close() drains: stop accepting, let in-flight
 * requests finish within the shutdown timeout, abort the rest, stop the engine.
 */
import type { FastifyBaseLogger, FastifyInstance, FastifyServerOptions } from "fastify";
import type { AlertOptions } from "../service/limits/alerts.ts";
import type { KeyLimits } from "../service/limits/key-limits.ts";
import type { Price } from "../service/prices.ts";
import { startService } from "../service/service.ts";
import { MemoryResponseStore, SqlResponseStore } from "../service/response-store.ts";
import { serverShuttingDown } from "./common/api-error.ts";
import { ANONYMOUS_WARNING } from "./routes/probes.ts";
import type { AuthMode } from "./http/auth.ts";
import { DEFAULT_MAX_BATCH_FILE_BYTES, DEFAULT_MAX_BATCH_LINES, buildApp } from "./app.ts";
import { randomBytes } from "node:crypto";
import { BatchStore } from "../service/batches.ts";
import { FileStore } from "../service/files.ts";
import { BatchRunner } from "./batch/batch-runner.ts";
import { Engine, TokenizerPool, type EngineOptions, type Pooling } from "./common/engine-api.ts";
import { LocalBackend, UpstreamBackend, type ModelTask } from "./backends/model-backend.ts";
import { ModelRegistry } from "./backends/model-registry.ts";
import { LoraAdapters } from "./backends/lora-adapters.ts";
import type { FallbackReason } from "./common/api-error.ts";
import { UpstreamProvider, type ProviderOptions } from "./upstream/upstream-provider.ts";
import { prefixAffinity, type PrefixAffinityOptions } from "./chat/prefix-affinity.ts";
import type { BreakerState } from "./upstream/circuit-breaker.ts";
import type { ReasoningParser } from "./openai/reasoning.ts";
import { ServerMetrics } from "./http/metrics.ts";
import type { GenerationDefaults, ServerContext } from "./http/server-context.ts";

/** A model served by an engine thread of this process. */
export interface LocalModelSpec {
  /** The name clients send as `model`. */
  name: string;
  /** More names for it. */
  aliases?: string[];
  engineOptions: EngineOptions;
  defaults: GenerationDefaults;
  /** Sequences that may wait beyond --max-num-seqs before a 503. */
  maxQueuedRequests: number;
  /** How this model writes tool calls, for parsing them out of its output; undefined: not parsed. */
  toolCallParser?: "hermes";
  /** How this model marks its reasoning (--reasoning-parser); undefined: left in the content. */
  reasoningParser?: ReasoningParser;
  /** How its embeddings pool the hidden states (--pooling; default last). */
  pooling?: Pooling;
  /** What it serves (--task; default both). */
  task?: ModelTask;
}

/** An OpenAI-compatible provider, and the models of it that are served (each under its own name). */
export interface ProviderSpec extends Omit<ProviderOptions, "onTry" | "onBreaker" | "onHealth" | "affinityKey"> {
  models: { name: string; upstreamModel?: string; maxOutputTokens?: number; aliases?: string[] }[];
  /** With balance prefix: the replicas' tokenizer (a checkpoint folder) and how many leading KV blocks of which size make a request's key. */
  prefix?: { tokenizerDir: string } & PrefixAffinityOptions;
}

/** A served name whose requests go to its targets in order (see backends/serving-plan.ts). */
export interface RouteSpec {
  name: string;
  targets: string[];
  fallbackOn?: FallbackReason[];
  burst?: { to: string; waitingOver?: number; ttftOverMs?: number };
}

export interface ServeOptions {
  /** The local models (one engine thread each). */
  models: LocalModelSpec[];
  providers?: ProviderSpec[];
  routes?: RouteSpec[];
  host: string;
  port: number;
  shutdownTimeoutMs: number;
  bodyLimitBytes: number;
  /** How long a client may take to send a whole request; default 60 s. */
  requestTimeoutMs?: number;
  /** How long an idle keep-alive socket stays open (default 75 s). */
  keepAliveTimeoutMs?: number;
  /** How long the Responses API keeps a stored response (--responses-retention; default 30 days). */
  responsesRetentionMs?: number;
  /** The service layer's database (--db): keys and the ledger; null: none (no keys but --api-key, no metering). */
  db?: { url: string; sync?: "normal" | "full"; ledger?: boolean; replica?: string; prices?: Omit<Price, "effectiveMs">[] } | null;
  /** Limits for keys that set none (--default-rpm, ...), and budget alerts (--alert-*); they need the db. */
  limits?: { defaults?: KeyLimits; alerts?: Omit<AlertOptions, "onAlert" | "onWebhookFailed"> };
  /** --admin-key: keys for /v1/admin/*. */
  adminKeys?: readonly string[];
  /** --require-auth / --no-auth (default auto: anonymous until a key exists). */
  authMode?: AuthMode;
  apiKeys?: readonly string[];
  tokenizerThreads?: number;
  logger?: FastifyServerOptions["logger"];
  /** Batch jobs (--batch-*): lines in flight per batch, the input file's limits, how long output files are kept, the batch discount. */
  batch?: { concurrency?: number; maxFileBytes?: number; maxLines?: number; fileRetentionMs?: number; discountPercent?: number; leaseMs?: number };
}

export const DEFAULT_BATCH_CONCURRENCY = 8;
export const DEFAULT_BATCH_FILE_RETENTION_MS = 30 * 86_400_000;

export interface RunningServer {
  app: FastifyInstance;
  ctx: ServerContext;
  url: string;
  /** Resolves once the engine and tokenizers are ready (rejects if loading failed). */
  ready: Promise<void>;
  close(): Promise<void>;
}

export async function startServer(options: ServeOptions): Promise<RunningServer> {
  const models = new ModelRegistry();
  const ctx: ServerContext = { models, metrics: new ServerMetrics(), admitListeners: [], settleListeners: [] };
  let ledgerErrors = 0;
  // NOTE: the service starts before the app, whose logger the alerts use: they log through this once it exists.
  let log: FastifyBaseLogger | null = null;
  const service = options.db
    ? await startService({
      dbUrl: options.db.url, sync: options.db.sync, ledger: options.db.ledger, replica: options.db.replica, prices: options.db.prices,
      batchDiscountPercent: options.batch?.discountPercent,
      onLedgerError: (err) => {
        ledgerErrors++;
        log?.error({ err }, "a ledger write failed and was dropped");
      },
      onLedgerHealth: (health) => {
        ctx.metrics.ledgerAvailable.set(health.available ? 1 : 0);
        if (!health.available) log?.error({ reason: health.reason, waitingRows: health.numWaiting }, "the ledger cannot commit: new requests get 503 until it can; its rows are kept and retried");
        else log?.info("the ledger commits again: serving new requests");
      },
      limitDefaults: options.limits?.defaults,
      alerts: {
        ...options.limits?.alerts,
        onAlert: (alert) => {
          ctx.metrics.budgetAlerts.inc({ threshold: String(alert.threshold), limit_type: alert.limit_type });
          log?.warn({ alert }, `key ${alert.key_id} reached ${alert.threshold}% of its ${alert.limit_type === "budget" ? "budget" : "token quota"} for this ${alert.period}`);
        },
        onWebhookFailed: (alert, reason) => log?.error({ alertId: alert.id, reason }, "a budget alert's webhook failed after every retry"),
      },
      onLimitRefused: (limit) => ctx.metrics.rateLimited.inc({ limit }),
      onLimitError: (err) => log?.error({ err }, "settling a request's rate limits or alerts failed"),
    })
    : null;
  const ledger = service?.ledger;
  if (ledger) {
    ctx.admitListeners.push((admission) => ledger.admit(admission));
    ctx.ledgerHealth = () => ledger.health;
    ctx.metrics.ledgerAvailable.set(1);
  }
  if (service) {
    const { limiter, limitsOf } = service;
    ctx.settleListeners.push((settlement) => service.settle(settlement));
    ctx.limits = {
      admit: async (caller, requestId, startedMs, tier) =>
        (unlimited(caller) ? null : limiter.admit(limitsOf(caller.keyId, caller.key), requestId, startedMs, tier)),
      status: async (caller) => (unlimited(caller) ? null : limiter.status(limitsOf(caller.keyId, caller.key))),
    };
    const prices = service.prices;
    ctx.costOf = (model, usage, atMs, tier) => prices.costAt(model, usage, atMs, tier);
  }
  ctx.settleListeners.push((settlement) => ctx.metrics.observeBilled(settlement.model, settlement.usage));
  ctx.adapters = new LoraAdapters(models, service?.prices ?? null);
  ctx.settleListeners.push((settlement) => {
    const served = models.list().find((backend) => backend.id === settlement.model);
    if (served?.kind === "local" && served.base) ctx.metrics.loraRequests.inc({ model: served.base.id, adapter: served.id, outcome: settlement.outcome });
  });
  const { locals, cleanups } = registerModels(models, options, ctx, {
    breaker: (provider, model, state, replica) => {
      const where = replica ? `${provider} (replica ${replica})` : provider;
      if (state === "open") log?.warn({ provider, replica, model }, `the upstream provider ${where} keeps failing for ${model}: its circuit breaker is open; requests go elsewhere`);
      else log?.info({ provider, replica, model }, `the upstream provider ${where} answers again for ${model}: its circuit breaker is closed`);
    },
    health: (provider, replica, healthy) => {
      if (healthy) log?.info({ provider, replica }, `the replica ${replica} of ${provider} passes its health check again: back in the pool`);
      else log?.warn({ provider, replica }, `the replica ${replica} of ${provider} fails its health check: out of the pool until it passes`);
    },
  });
  let app: FastifyInstance;
  let runner: BatchRunner | null = null;
  // NOTE: the batch runner's requests carry this process's own secret (http/auth.ts); it never leaves the process.
  const internalSecret = randomBytes(32).toString("hex");
  const batchStores = service ? { files: new FileStore(service.store.db), batches: new BatchStore(service.store.db) } : null;
  const batchLimits = { maxFileBytes: options.batch?.maxFileBytes ?? DEFAULT_MAX_BATCH_FILE_BYTES, maxLines: options.batch?.maxLines ?? DEFAULT_MAX_BATCH_LINES };
  try {
    app = buildApp(ctx, {
      bodyLimitBytes: options.bodyLimitBytes, logger: options.logger, apiKeys: options.apiKeys, requestTimeoutMs: options.requestTimeoutMs, keepAliveTimeoutMs: options.keepAliveTimeoutMs,
      auth: { keys: service?.keys ?? null, adminKeys: options.adminKeys, mode: options.authMode, internalSecret },
      batches: { files: batchStores?.files ?? null, batches: batchStores?.batches ?? null, ...batchLimits, onCreated: () => runner?.wake() },
      prices: service?.prices ?? null,
      teams: service?.teams ?? null,
      alertThresholds: options.limits?.alerts?.thresholds,
      store: service?.store ?? null,
      ledger: service?.ledger ?? null,
      // NOTE: stored responses live in the service's database (shared by replicas); without one, in memory.
      responses: { store: service ? new SqlResponseStore(service.store.db) : new MemoryResponseStore(), retentionMs: options.responsesRetentionMs },
    });
    log = app.log;
    ctx.log = app.log;
    if (service?.numReleased) app.log.warn({ holds: service.numReleased }, "limit reservations held by requests a crash cut off are given back");
    if (service?.numInterrupted) app.log.warn({ rows: service.numInterrupted }, "the ledger had requests in flight from a crash; they are marked interrupted");
    const keys = service?.keys;
    ctx.anonymous = async () => options.authMode === "none" || (options.authMode !== "required" && (options.apiKeys ?? []).length === 0 && !(await keys?.hasAny()));
    if (await ctx.anonymous()) app.log.warn(ANONYMOUS_WARNING);
    await app.listen({ host: options.host, port: options.port });
  } catch (err) {
    await service?.close();
    await Promise.all(cleanups.map((cleanup) => cleanup()));
    throw err;
  }
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : options.port;
  const url = `http://${options.host.includes(":") ? `[${options.host}]` : options.host}:${port}`;

  const loading = locals.map(({ backend, spec }) => {
    const loaded = loadLocalBackend(backend, spec, options.tokenizerThreads, ctx, app.log);
    loaded.catch((err: unknown) => app.log.error({ err, model: backend.id }, "the model failed to load"));
    return loaded;
  });
  const ready = Promise.all(loading).then(() => undefined);
  runner = service && batchStores ? new BatchRunner(app, {
    ...batchStores, replica: options.db?.replica ?? service.ledger?.replica ?? "tokenmill", internalSecret, concurrency: options.batch?.concurrency ?? DEFAULT_BATCH_CONCURRENCY,
    maxLines: batchLimits.maxLines, fileRetentionMs: options.batch?.fileRetentionMs ?? DEFAULT_BATCH_FILE_RETENTION_MS, leaseMs: options.batch?.leaseMs,
    metrics: ctx.metrics, releaseHolds: (prefix, replica) => service.releaseHoldsOf(prefix, replica), log: app.log,
  }) : null;
  // NOTE: batches start once every model has loaded: a line sent to a loading model would only fail.
  void ready.then(() => runner?.start(), () => runner?.start());

  let closing: Promise<void> | null = null;
  const close = () => (closing ??= (async () => {
    const deadline = setTimeout(() => {
      for (const each of models.list()) {
        app.log.warn({ model: each.id, inFlight: each.numInFlight }, "shutdown timeout: aborting in-flight requests");
        for (const controller of each.inFlightControllers) controller.abort(serverShuttingDown());
      }
    }, options.shutdownTimeoutMs);
    await runner?.stop();
    await app.close();
    clearTimeout(deadline);
    await Promise.all(loading.map(async (each) => {
      const loaded = await each.catch(() => null);
      await Promise.all([loaded?.engine.shutdown(), loaded?.tokenizer.close()]);
    }));
    await Promise.all(cleanups.map((cleanup) => cleanup()));
    // NOTE: the last settlements follow the engine's final outputs by a turn of the event loop; then the ledger flushes them.
    await new Promise((resolve) => setImmediate(resolve));
    const lost = (await service?.close(options.shutdownTimeoutMs)) ?? 0;
    if (lost > 0) app.log.error({ rows: lost }, "the ledger could not be written before the shutdown timeout: these requests' rows are lost");
    if (ledgerErrors > 0) app.log.error({ failedBatches: ledgerErrors }, "some ledger writes failed");
  })());
  return { app, ctx, url, ready, close };
}

/** The admin and anonymous callers (no key exists yet) run under no key's limits. */
const unlimited = (caller: { keyId: string; admin: boolean }) => caller.admin || caller.keyId === "anonymous";

/** Registers every local model, upstream model, alias and route; returns the local models to load. */
function registerModels(
  models: ModelRegistry, options: ServeOptions, ctx: ServerContext,
  on: { breaker: (provider: string, model: string, state: BreakerState, replica: string | null) => void; health: (provider: string, replica: string, healthy: boolean) => void },
): { locals: { backend: LocalBackend; spec: LocalModelSpec }[]; cleanups: (() => Promise<void>)[] } {
  const cleanups: (() => Promise<void>)[] = [];
  if (options.models.length === 0 && (options.providers ?? []).every((p) => p.models.length === 0)) throw new Error("nothing to serve: no local model and no upstream model");
  const locals = options.models.map((spec) => {
    const backend = new LocalBackend(spec.name, {
      limits: { maxNumSeqs: spec.engineOptions.maxNumSeqs, maxQueuedRequests: spec.maxQueuedRequests },
      defaults: spec.defaults,
      toolCallParser: spec.toolCallParser,
      reasoningParser: spec.reasoningParser,
      pooling: spec.pooling,
      task: spec.task,
    });
    models.register(backend);
    // NOTE: its adapters are served names from the start (the engine loads them as it starts; requests wait with the model).
    for (const adapter of spec.engineOptions.loraModules ?? []) ctx.adapters!.serve(backend, adapter.name);
    return { backend, spec };
  });
  for (const spec of options.providers ?? []) {
    const pooled = (spec.replicas?.length ?? 0) > 1;
    // NOTE: the prefix balance tokenizes as the replicas will, on a tokenizer pool of its own (one thread).
    const tokenizer = spec.prefix ? TokenizerPool.start(spec.prefix.tokenizerDir, { threads: 1 }) : null;
    if (tokenizer) cleanups.push(async () => (await tokenizer.catch(() => null))?.close());
    const affinity = tokenizer && spec.prefix ? tokenizer.then((pool) => prefixAffinity(pool, spec.prefix!)) : null;
    const provider: UpstreamProvider = new UpstreamProvider({
      ...spec,
      affinityKey: affinity ? async (path, body) => (await affinity)(path, body) : undefined,
      onTry: (result, replica) => {
        ctx.metrics.upstreamTries.inc({ provider: spec.name, result });
        if (pooled) ctx.metrics.replicaTries.inc({ provider: spec.name, replica, result });
      },
      onBreaker: (state, model, replica) => {
        ctx.metrics.upstreamBreaker.set({ provider: spec.name, model }, provider.stateFor(model) === "closed" ? 0 : 1);
        if (pooled) ctx.metrics.replicaBreaker.set({ provider: spec.name, replica, model }, state === "closed" ? 0 : 1);
        on.breaker(spec.name, model, state, pooled ? replica : null);
      },
      onHealth: (replica, healthy) => {
        ctx.metrics.replicaHealthy.set({ provider: spec.name, replica }, healthy ? 1 : 0);
        on.health(spec.name, replica, healthy);
      },
    });
    cleanups.push(async () => provider.close());
    if (pooled) for (const replica of provider.pool.replicas) ctx.metrics.replicaHealthy.set({ provider: spec.name, replica: replica.label }, 1);
    for (const model of spec.models) ctx.metrics.upstreamBreaker.set({ provider: spec.name, model: model.upstreamModel ?? model.name }, 0);
    for (const model of spec.models) models.register(new UpstreamBackend(model.name, provider, model));
  }
  for (const route of options.routes ?? []) {
    const burstTo = route.burst ? models.backend(route.burst.to) : null;
    models.route(route.name, route.targets, {
      ...(route.fallbackOn ? { fallbackOn: new Set(route.fallbackOn) } : {}),
      burst: route.burst && burstTo ? { ...route.burst, to: burstTo } : null,
    });
  }
  for (const spec of [...options.models, ...(options.providers ?? []).flatMap((p) => p.models)]) {
    for (const alias of spec.aliases ?? []) models.alias(alias, spec.name);
  }
  return { locals, cleanups };
}

/** Starts a local model's tokenizer pool and engine thread, and hands them to its backend once both are up. */
async function loadLocalBackend(
  backend: LocalBackend, spec: LocalModelSpec, tokenizerThreads: number | undefined, ctx: ServerContext, log: FastifyBaseLogger,
): Promise<{ engine: Engine; tokenizer: TokenizerPool }> {
  const [tokenizer, engine] = await Promise.all([
    TokenizerPool.start(spec.engineOptions.modelDir, { threads: tokenizerThreads }),
    Engine.start(spec.engineOptions),
  ]);
  const model = backend.id;
  ctx.metrics.addModel(model, { blockSize: engine.info.blockSize, numBlocks: engine.info.numBlocks, dtype: engine.info.kvCache.dtype });
  engine.onStats((stats) => ctx.metrics.observe(model, stats));
  engine.onEvent((event) => {
    if (event.type === "died") {
      ctx.metrics.observeEngineDeath(model);
      log.error({ model, reason: event.reason, failedRequests: event.numFailedRequests, restartInMs: event.restartInMs }, "the engine thread died; restarting it");
    } else if (event.type === "restart-failed") {
      log.error({ model, reason: event.reason, restartInMs: event.restartInMs }, "the engine thread failed to restart; trying again");
    } else {
      log.info({ model, loadMs: Math.round(event.loadMs) }, "the engine thread restarted");
    }
  });
  backend.tokenizer = tokenizer;
  backend.engine = engine;
  log.info({ model, ...engine.info }, "model ready");
  if (engine.info.maxModelLenCappedFrom !== undefined) {
    log.warn(`the KV cache holds ${engine.info.maxModelLen} tokens, so the context length of ${model} is capped there (the model allows ${engine.info.maxModelLenCappedFrom}); raise --kv-cache-memory for more`);
  }
  return { engine, tokenizer };
}
