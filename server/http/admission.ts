/**
 * Admission and settlement: a request may start only while its model's engine is ready and
 * the waiting queue has room; whatever way it then ends, `release()` settles it exactly once,
 * with the exact usage of every engine request it ran.
 *
 * NOTE: every engine request ends with its usage: on its last output (finished or aborted) or
 * on the error it fails with. A reader that stops early (the client left) would miss it, so
 * release() reads each unfinished engine request to its end, after aborting it, before settling.
 */
import { randomUUID } from "node:crypto";
import type { ApiKey } from "../../service/keys.ts";
import { LimitExceeded } from "../../service/limits/limiter.ts";
import { NO_USAGE, addUsage, type Outcome, type Settlement, type Usage } from "../../service/settlement.ts";
import type { ModelBackend } from "../backends/model-backend.ts";
import { EngineError, type EngineOutput, type EngineRequest, type Priority, type PromptTokenizer, type RequestUsage, type ServingEngine } from "../backends/engine-api.ts";
import type { ServerContext } from "../server-context.ts";
import { ApiError, clientClosedRequest, engineRestarting, invalidRequest, overloaded, requestAborted, toApiError } from "./api-error.ts";

export interface Admitted {
  backend: ModelBackend;
  engine: ServingEngine;
  tokenizer: PromptTokenizer;
  /** Fires when the client goes away or the server gives up on the request. */
  signal: AbortSignal;
  /**
   * Runs one engine request under this admission. A request the server aborted (shutdown)
   * throws the abort's reason instead of ending like a finished one. Its usage is counted
   * from its last output, or from the error it failed with.
   */
  generate(request: EngineRequest): AsyncIterator<EngineOutput>;
  /** What the engine requests run so far have used, summed. */
  readonly usage: Usage;
  /** That usage's cost in micro-USD at the model's price when the request started; null when it has none. */
  cost(): Promise<number | null>;
  /** Records what the client is told went wrong; the first error counts. */
  fail(err: unknown): void;
  /**
   * Frees the request's place and settles it (once; later calls return the same promise) as
   * soon as its engine requests have ended; resolves when every settle listener is done (the
   * ledger row committed). A route awaits it before its last bytes, so that a client that saw
   * the end of its response is in the ledger even if the process is killed right after.
   */
  settle(): Promise<void>;
  /** settle(), for the paths that have nothing to wait for (finally blocks). */
  release(): void;
}

export interface AdmitOptions {
  /** The HTTP request id, for the settlement. */
  requestId: string;
  /** Who the request is from: its key's id for the ledger, the key for its limits. */
  caller: { keyId: string; key: ApiKey | null; admin: boolean };
  /** Hears the x-ratelimit-* headers for the response, after each take from the key's buckets. */
  setHeaders?(headers: Record<string, string>): void;
  /** Its scheduling tier (standard by default). */
  priority?: Priority;
  endpoint: string;
  /** What the request runs at once: n, times the prompts of a completions request. */
  numSequences: number;
  /** The field that multiplies them, named in the 400 when they could never all fit. */
  param?: string;
  /** Calls `abort` when the client goes away. */
  onClientGone(abort: () => void): void;
}

/** Admits a request, or throws the ApiError that refuses it (a 400 it could never fit, a 503 while the model can't take it, a 429 from its key's limits). */
export async function admit(ctx: ServerContext, backend: ModelBackend, options: AdmitOptions): Promise<Admitted> {
  const { numSequences } = options;
  const { engine, tokenizer, limits } = backend;
  const capacity = limits.maxNumSeqs + limits.maxQueuedRequests;
  if (numSequences > capacity) {
    throw invalidRequest(
      `This request needs ${numSequences} sequences at once, but the server holds at most ${capacity} ` +
        `(${limits.maxNumSeqs} running plus ${limits.maxQueuedRequests} queued); send fewer prompts or a smaller n.`,
      options.param ?? "n", "too_many_sequences",
    );
  }
  if (!engine || !tokenizer) throw overloaded("The model is still loading; try again shortly.", 5);
  if (engine.state === "restarting") throw engineRestarting();
  if (engine.state === "stopped") throw new ApiError(503, "The engine has stopped; the server cannot serve requests.", "server_error", null, "engine_dead", 5);
  if (backend.numInFlight + numSequences > capacity) {
    throw overloaded(`The server is at capacity (${backend.numInFlight} sequences in flight, limit ${capacity}); retry later.`, 1);
  }
  backend.numInFlight += numSequences;
  const admission = { id: randomUUID(), requestId: options.requestId, keyId: options.caller.keyId, model: backend.id, endpoint: options.endpoint, startedMs: Date.now() };
  let ticket: Awaited<ReturnType<NonNullable<ServerContext["limits"]>["admit"]>> = null;
  try {
    ticket = (await ctx.limits?.admit(options.caller, admission.id, admission.startedMs)) ?? null;
  } catch (err) {
    backend.numInFlight -= numSequences;
    if (err instanceof LimitExceeded) options.setHeaders?.(err.headers);
    throw toApiError(err);
  }
  if (ticket) options.setHeaders?.(ticket.headers());
  const controller = new AbortController();
  backend.inFlightControllers.add(controller);
  options.onClientGone(() => controller.abort(clientClosedRequest()));
  let usage = NO_USAGE;
  let error: ApiError | null = null;
  let settling: Promise<void> | null = null;
  const runs: EngineRun[] = [];
  let firstTokenMs: number | null = null;
  /** Tokens in the outputs the route read (and so sent on): what a client that left was given. */
  let numTokensRead = 0;
  for (const listener of ctx.admitListeners) listener(admission);
  const count = (used: RequestUsage | undefined, output?: EngineOutput, byRoute = false) => {
    if (firstTokenMs === null && output && output.newTokenIds.length > 0) firstTokenMs = Date.now();
    if (byRoute && output) numTokensRead += output.newTokenIds.length;
    if (used) usage = addUsage(usage, { promptTokens: used.numPromptTokens, cachedPromptTokens: used.numCachedPromptTokens, completionTokens: used.numCompletionTokens });
  };
  const fail = (err: unknown) => {
    error ??= toApiError(err);
  };
  const settle = (): Promise<void> => {
    if (settling) return settling;
    const outcome = outcomeOf(controller.signal, error);
    // NOTE: whatever the engine still runs for this request now has no reader (a later prompt failed, say): stop it.
    controller.abort();
    backend.numInFlight -= numSequences;
    backend.inFlightControllers.delete(controller);
    settling = Promise.all(runs.map((run) => run.drain())).then(async () => {
      const settlement: Settlement = {
        ...admission, finishedMs: Date.now(), ttftMs: firstTokenMs === null ? null : firstTokenMs - admission.startedMs, outcome,
        // NOTE: a client that left is billed the tokens it was sent (text held back for a stop string included),
        // not those the engine made before it noticed: what the ledger holds is what the client was told.
        usage: outcome === "disconnected" ? { ...usage, completionTokens: Math.min(usage.completionTokens, numTokensRead) } : usage, ...(error ? { error: { status: error.status, code: error.code } } : {}),
        ...(ticket ? { reservations: ticket } : {}),
      };
      // NOTE: a listener's fault must not crash the process or keep the others from hearing.
      const warn = (err: unknown) => process.emitWarning(`a settle listener failed: ${err instanceof Error ? err.message : String(err)}`);
      const pending: Promise<void>[] = [];
      for (const listener of ctx.settleListeners) {
        try {
          const result = listener(settlement);
          if (result) pending.push(result.catch(warn));
        } catch (err) {
          warn(err);
        }
      }
      await Promise.all(pending);
    });
    return settling;
  };
  return {
    backend,
    engine,
    tokenizer,
    signal: controller.signal,
    generate(request) {
      const engineRequest = { ...request, priority: options.priority ?? request.priority };
      // NOTE: the engine request starts only once the key's limits have room for its worst case (a 429 otherwise).
      const start = async () => {
        if (ticket) {
          const n = request.n ?? 1;
          const promptTokens = request.promptTokenIds.length;
          const remainder = Math.max(0, engine.info.maxModelLen - promptTokens);
          const worstPerSequence = Math.min(request.maxTokens ?? remainder, remainder);
          await ticket.reserveRun(backend.id, promptTokens, worstPerSequence * n, (request.maxTokens ?? 0) * n);
          options.setHeaders?.(ticket.headers());
        }
        return engine.add(engineRequest, controller.signal)[Symbol.asyncIterator]();
      };
      const run = new EngineRun(start, count);
      runs.push(run);
      return run.reader(controller.signal, fail);
    },
    get usage() {
      return usage;
    },
    cost: async () => (ctx.costOf ? ctx.costOf(backend.id, usage, admission.startedMs) : null),
    fail,
    release() {
      void settle();
    },
    settle,
  };
}

function outcomeOf(signal: AbortSignal, error: ApiError | null): Outcome {
  if (signal.aborted) return signal.reason instanceof ApiError && signal.reason.code === "client_closed_request" ? "disconnected" : "aborted";
  if (!error) return "finished";
  return error.status < 500 ? "rejected" : "errored";
}

/** One engine request's outputs, counted exactly once whoever reads them: the route, or release() draining what is left. */
class EngineRun {
  private ended = false;
  private outputs: Promise<AsyncIterator<EngineOutput>> | null = null;

  constructor(
    /** Starts the engine request (after its reservation), on the first read. */
    private readonly start: () => Promise<AsyncIterator<EngineOutput>>,
    private readonly count: (usage: RequestUsage | undefined, output?: EngineOutput, byRoute?: boolean) => void,
  ) {}

  /**
   * The route's view. NOTE: the engine ends an aborted sequence with finish_reason "abort". A
   * client that left reads nothing more; one still reading was cut off by the server, and must
   * not be told its request finished.
   */
  reader(signal: AbortSignal, fail: (err: unknown) => void): AsyncIterator<EngineOutput> {
    return {
      next: async () => {
        const next = await this.next(true).catch((err: unknown) => {
          fail(err);
          throw err;
        });
        if (!next.done && next.value.finishReason === "abort") {
          const reason = signal.reason instanceof ApiError ? signal.reason : requestAborted();
          fail(reason);
          throw reason;
        }
        return next;
      },
    };
  }

  /** Reads to the end, so that the usage on the last output (or on the error) is counted. */
  async drain(): Promise<void> {
    // NOTE: never read: it never started, and must not start now.
    if (!this.outputs) this.ended = true;
    while (!this.ended) await this.next().catch(() => undefined);
  }

  private async next(byRoute = false): Promise<IteratorResult<EngineOutput>> {
    if (this.ended) return { done: true, value: undefined };
    try {
      const next = await (await (this.outputs ??= this.start())).next();
      if (next.done) this.ended = true;
      else this.count(next.value.usage, next.value, byRoute);
      return next;
    } catch (err) {
      this.ended = true;
      if (err instanceof EngineError) this.count(err.usage);
      throw err;
    }
  }
}
