/**
 * Starts serving: listen at once (so /health answers 503 while the model loads), then start
 * the tokenizer pool and the engine thread. close() drains: stop accepting, let in-flight
 * requests finish within the shutdown timeout, abort the rest, stop the engine.
 */
import type { FastifyInstance, FastifyServerOptions } from "fastify";
import { serverShuttingDown } from "./http/api-error.ts";
import { buildApp } from "./app.ts";
import { Engine, TokenizerPool, type EngineOptions } from "./backends/engine-api.ts";
import { ServerMetrics } from "./metrics.ts";
import type { GenerationDefaults, ServerContext } from "./server-context.ts";

export interface ServeOptions {
  engineOptions: EngineOptions;
  modelId: string;
  /** Before the engine reports its own: the model's context length and vocabulary. */
  maxModelLen: number;
  vocabSize: number;
  defaults: GenerationDefaults;
  host: string;
  port: number;
  maxQueuedRequests: number;
  shutdownTimeoutMs: number;
  bodyLimitBytes: number;
  /** How long a client may take to send a whole request; default 60 s. */
  requestTimeoutMs?: number;
  apiKeys?: readonly string[];
  tokenizerThreads?: number;
  /** How this model writes tool calls, for parsing them out of its output; undefined: not parsed. */
  toolCallParser?: "hermes";
  logger?: FastifyServerOptions["logger"];
}

export interface RunningServer {
  app: FastifyInstance;
  ctx: ServerContext;
  url: string;
  /** Resolves once the engine and tokenizers are ready (rejects if loading failed). */
  ready: Promise<void>;
  close(): Promise<void>;
}

export async function startServer(options: ServeOptions): Promise<RunningServer> {
  const ctx: ServerContext = {
    modelId: options.modelId,
    engine: null,
    tokenizer: null,
    maxModelLen: options.maxModelLen,
    vocabSize: options.vocabSize,
    limits: { maxNumSeqs: options.engineOptions.maxNumSeqs, maxQueuedRequests: options.maxQueuedRequests },
    defaults: options.defaults,
    metrics: new ServerMetrics(),
    toolCallParser: options.toolCallParser,
    numInFlight: 0,
    inFlightControllers: new Set(),
  };
  const app = buildApp(ctx, {
    bodyLimitBytes: options.bodyLimitBytes, logger: options.logger, apiKeys: options.apiKeys, requestTimeoutMs: options.requestTimeoutMs,
  });
  await app.listen({ host: options.host, port: options.port });
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : options.port;
  const url = `http://${options.host.includes(":") ? `[${options.host}]` : options.host}:${port}`;

  let engine: Engine | null = null;
  let tokenizer: TokenizerPool | null = null;
  const ready = (async () => {
    [tokenizer, engine] = await Promise.all([
      TokenizerPool.start(options.engineOptions.modelDir, { threads: options.tokenizerThreads }),
      Engine.start(options.engineOptions),
    ]);
    engine.onStats((stats) => ctx.metrics.observe(stats));
    engine.onEvent((event) => {
      if (event.type === "died") {
        ctx.metrics.observeEngineDeath();
        app.log.error({ reason: event.reason, failedRequests: event.numFailedRequests, restartInMs: event.restartInMs }, "the engine thread died; restarting it");
      } else if (event.type === "restart-failed") {
        app.log.error({ reason: event.reason, restartInMs: event.restartInMs }, "the engine thread failed to restart; trying again");
      } else {
        app.log.info({ loadMs: Math.round(event.loadMs) }, "the engine thread restarted");
      }
    });
    ctx.maxModelLen = engine.info.maxModelLen;
    ctx.tokenizer = tokenizer;
    ctx.engine = engine;
    app.log.info({ model: ctx.modelId, ...engine.info }, "model ready");
    if (engine.info.maxModelLenCappedFrom !== undefined) {
      app.log.warn(`the KV cache holds ${engine.info.maxModelLen} tokens, so the context length is capped there (the model allows ${engine.info.maxModelLenCappedFrom}); raise --kv-cache-memory for more`);
    }
  })();
  ready.catch((err: unknown) => app.log.error({ err }, "the model failed to load"));

  let closing: Promise<void> | null = null;
  const close = () => (closing ??= (async () => {
    const deadline = setTimeout(() => {
      app.log.warn({ inFlight: ctx.numInFlight }, "shutdown timeout: aborting in-flight requests");
      for (const controller of ctx.inFlightControllers) controller.abort(serverShuttingDown());
    }, options.shutdownTimeoutMs);
    await app.close();
    clearTimeout(deadline);
    await ready.catch(() => undefined);
    await Promise.all([engine?.shutdown(), tokenizer?.close()]);
  })());
  return { app, ctx, url, ready, close };
}
