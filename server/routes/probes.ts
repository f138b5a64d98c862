/**
 * GET /health and GET /metrics (Prometheus). /health reports each model (a local engine's
 * state, an upstream's breaker): 200 "ok" while every model is up; 200 "degraded" while some
 * model is down, with the served names nothing can serve now in `unavailable` (a route whose
 * targets are all down; a model with no fallback); 503 when no served name can be served, or
 * while the ledger cannot commit (nothing may be served unbilled).
 */
import type { FastifyInstance } from "fastify";
import { ApiError, engineRestarting, modelDown, storeUnavailable } from "../common/api-error.ts";
import type { ModelBackend } from "../backends/model-backend.ts";
import type { ServerContext } from "../http/server-context.ts";

export const ANONYMOUS_WARNING = "serving anonymously: no API key exists yet (create one with `tokenmill keys create --name NAME`, or pass --require-auth)";

interface BackendHealth {
  backend: string;
  state: string;
  /** Why it cannot serve now, as the 503 a request to it alone would get; null: it can. */
  down: ApiError | null;
}

function healthOf(backend: ModelBackend): BackendHealth {
  if (backend.kind === "upstream") {
    const state = backend.provider.stateFor(backend.upstreamModel);
    const down = state === "open" ? modelDown(`The upstream provider of ${backend.id} is failing (circuit breaker open, or no replica passes its health check).`, "upstream_unavailable") : null;
    return { backend: backend.label, state: state === "closed" ? "running" : `breaker_${state}`, down };
  }
  const { engine } = backend;
  if (!engine) return { backend: backend.label, state: "loading", down: modelDown(`The model ${backend.id} is loading.`, "loading", 5) };
  if (engine.state === "restarting") return { backend: backend.label, state: "restarting", down: engineRestarting(`The engine of ${backend.id} is restarting after a fault; retry shortly.`) };
  if (engine.state === "stopped") return { backend: backend.label, state: "stopped", down: modelDown(`The engine thread of ${backend.id} has stopped.`, "engine_dead") };
  return { backend: backend.label, state: "running", down: null };
}

function loadOf(backend: ModelBackend): { running?: number; waiting?: number } {
  const stats = backend.kind === "local" ? backend.engine?.stats : null;
  return stats ? { running: stats.numRunning, waiting: stats.numWaiting } : {};
}

export function registerProbeRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.get("/health", async (_request, reply) => {
    const health = new Map(ctx.models.list().map((backend) => [backend, healthOf(backend)]));
    // NOTE: a local model's load (sequences running and waiting) is what a router's least-loaded balance reads.
    const models = Object.fromEntries([...health].map(([backend, h]) => [backend.id, { backend: h.backend, state: h.state, ...loadOf(backend), ...grammarOf(backend) }]));
    const ledger = ctx.ledgerHealth?.();
    if (ledger && !ledger.available) {
      // NOTE: the reason (a database error) goes to the log, not to whoever asks /health.
      const down = storeUnavailable();
      reply.header("retry-after", String(down.retryAfterSeconds));
      return reply.status(503).send({ ...down.body, models, ledger: { available: false, since: new Date(ledger.sinceMs).toISOString(), waiting_rows: ledger.numWaiting } });
    }
    const names = ctx.models.names();
    const unavailable = names.filter((route) => route.targets.every((target) => health.get(target)!.down !== null));
    if (unavailable.length === names.length) {
      const down = health.get(names[0].targets[0])!.down!;
      if (down.retryAfterSeconds !== undefined) reply.header("retry-after", String(down.retryAfterSeconds));
      return reply.status(503).send({ ...down.body, models });
    }
    const degraded = [...health.values()].some((h) => h.down !== null);
    const warning = (await ctx.anonymous?.()) ? { warning: ANONYMOUS_WARNING } : {};
    return reply.send({
      status: degraded ? "degraded" : "ok", ...warning, models, ...(unavailable.length > 0 ? { unavailable: unavailable.map((route) => route.name) } : {}),
    });
  });

  app.get("/metrics", async (_request, reply) => {
    reply.header("content-type", ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
}

/** A local model's grammar threads, once any has started: how many, what they hold, how often one was replaced and why. */
function grammarOf(backend: ModelBackend): { grammar?: Record<string, unknown> } {
  const grammar = backend.kind === "local" ? backend.engine?.stats?.grammar : null;
  if (!grammar || (grammar.numThreads === 0 && grammar.numRestarts === 0)) return {};
  return {
    grammar: {
      threads: grammar.numThreads, compiling: grammar.numCompiling, matchers: grammar.numMatchers, restarts: grammar.numRestarts, last_failure: grammar.lastFailure,
    },
  };
}
