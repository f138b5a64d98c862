/**
 * Admission and settlement. A request opens one RequestScope: it is admitted under its key's
 * limits once, and settled exactly once, however it ends, with the exact usage of the backend
 * that served it. Within the scope it makes attempts, one backend at a time (see
 * backends/route.ts): a local attempt may start only while its model's engine is ready and its
 * queue has room; an upstream attempt only while its provider's breaker and cap allow. An
 * attempt given up for the next target (a fallback) is abandoned: its engine work is stopped
 * and its usage is not billed, since none of it reached the client.
 *
 * NOTE: every engine request ends with its usage: on its last output (finished or aborted) or
 * on the error it fails with. A reader that stops early (the client left) would miss it, so an
 * attempt reads each unfinished engine request to its end, after aborting it, before settling.
 */
import { randomUUID } from "node:crypto";
import { setMaxListeners } from "node:events";
import type { ApiKey } from "../../service/keys.ts";
import { LimitExceeded, type LimitTicket } from "../../service/limits/limiter.ts";
import { NO_USAGE, addUsage, type Admission, type Outcome, type Settlement, type Usage } from "../../service/settlement.ts";
import type { LocalBackend, ModelBackend, UpstreamBackend } from "../backends/model-backend.ts";
import { EngineError, defaultMaxTokens, type EngineOutput, type EngineRequest, type Priority, type PromptTokenizer, type RequestUsage, type ServingEngine } from "../backends/engine-api.ts";
import type { ServerContext } from "../server-context.ts";
import { checkUsage, type CheckedUpstreamUsage } from "../upstream/upstream-stream.ts";
import { ApiError, BackendUnavailable, clientClosedRequest, invalidRequest, engineDead, engineRestarting, modelLoading, overloaded, requestAborted, storeUnavailable, toApiError } from "./api-error.ts";

/** What a route sees of a request admitted to a local model. */
export interface Admitted {
  backend: LocalBackend;
  engine: ServingEngine;
  tokenizer: PromptTokenizer;
  /** Fires when the client goes away, the server gives up on the request, or the attempt is abandoned. */
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
  /** The response is about to start (a stream's first byte): from here on the request cannot fall back. */
  commit(): void;
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

/** What a route sees of a request admitted to an upstream model. */
export interface UpstreamAdmitted {
  backend: UpstreamBackend;
  signal: AbortSignal;
  /**
   * Holds the key's budget and tokens for the worst case before the call (a 429 when they have no room).
   * @param promptBytes the prompt's UTF-8 bytes: they bound its tokens (a byte-level BPE token is at least a byte).
   */
  reserve(promptBytes: number, maxTokens: number | null): Promise<void>;
  /** The usage object the upstream reported (undefined: none), checked field by field; a fault is logged. */
  report(usage: unknown, generates?: boolean): void;
  /** Counts content sent on to the client (the first one is the request's first token), and its text. */
  sent(numChunks: number, text?: string): void;
  /** What the client is told and billed: the upstream's count where it is sound, else what was seen (see UpstreamAttempt). */
  readonly usage: Usage;
  readonly reasoningTokens: number;
  /** Whether the upstream has reported a usage (sound or not). */
  readonly reported: boolean;
  cost(): Promise<number | null>;
  fail(err: unknown): void;
  commit(): void;
  settle(): Promise<void>;
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
  /** What the request runs at once: n, times the prompts of a completions request; for embeddings, what the model takes at once. */
  numSequences: number | ((backend: LocalBackend) => number);
  /** What it asks of a local model: generation (default) or embeddings; a model whose --task excludes it answers 400. */
  task?: "generate" | "embed";
  /** The field that multiplies them, named in the 400 when they could never all fit. */
  param?: string;
  /** Calls `abort` when the client goes away. */
  onClientGone(abort: () => void): void;
  /** The name the client asked for, when it is a route or alias rather than the serving model's own. */
  route?: string;
}

interface Attempt {
  readonly backend: ModelBackend;
  readonly usage: Usage;
  /** What the client was given, by the outcome (a client that left is billed what it was sent). */
  billable(outcome: Outcome): Usage;
  /** Stops what the attempt still runs, frees its backend's place (at once), and resolves once its work has ended. */
  close(): Promise<void>;
}

export class RequestScope {
  private readonly controller = new AbortController();
  private admission: Admission | null = null;
  private ticket: LimitTicket | null = null;
  private current: Attempt | null = null;
  private error: ApiError | null = null;
  private settling: Promise<void> | null = null;
  private committed = false;
  private firstTokenMs: number | null = null;

  constructor(private readonly ctx: ServerContext, private readonly options: AdmitOptions) {
    options.onClientGone(() => this.controller.abort(clientClosedRequest()));
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Whether any of the response has reached the client: then it cannot fall back. */
  get isCommitted(): boolean {
    return this.committed;
  }

  /** Admits the request to a local model, or throws the ApiError that refuses it (a 400 it could never fit, a 503 while the model can't take it, a 429 from its key's limits). */
  async local(backend: LocalBackend): Promise<Admitted> {
    const task = this.options.task ?? "generate";
    if (!backend.serves(task)) {
      throw invalidRequest(task === "embed"
        ? `The model \`${backend.id}\` serves generation only (--task generate); it makes no embeddings.`
        : `The model \`${backend.id}\` serves embeddings only (--task embed); use /v1/embeddings.`, "model", "model_not_supported");
    }
    const numSequences = typeof this.options.numSequences === "function" ? this.options.numSequences(backend) : this.options.numSequences;
    const { engine, tokenizer, limits } = backend;
    const capacity = limits.maxNumSeqs + limits.maxQueuedRequests;
    if (numSequences > capacity) {
      // NOTE: a 400 for this model alone: a route may still have a target that holds it (hence "overloaded").
      throw new BackendUnavailable("overloaded", 400,
        `This request needs ${numSequences} sequences at once, but the server holds at most ${capacity} ` +
          `(${limits.maxNumSeqs} running plus ${limits.maxQueuedRequests} queued); send fewer prompts or a smaller n.`,
        "too_many_sequences", undefined, {}, this.options.param ?? "n");
    }
    if (!engine || !tokenizer) throw modelLoading();
    if (engine.state === "restarting") throw engineRestarting();
    if (engine.state === "stopped") throw engineDead();
    if (backend.numInFlight + numSequences > capacity) {
      throw overloaded(`The server is at capacity (${backend.numInFlight} sequences in flight, limit ${capacity}); retry later.`, 1);
    }
    backend.numInFlight += numSequences;
    try {
      await this.admitKey(backend);
    } catch (err) {
      backend.numInFlight -= numSequences;
      throw err;
    }
    const attempt = new LocalAttempt(this, backend, engine, tokenizer, numSequences);
    this.begin(attempt);
    return attempt;
  }

  /** Admits the request to an upstream model, or throws (its breaker open or cap reached: a 503; a 429 from the key's limits). */
  async upstream(backend: UpstreamBackend): Promise<UpstreamAdmitted> {
    const refused = backend.provider.refusal(backend.upstreamModel);
    if (refused) throw refused;
    backend.numInFlight++;
    try {
      await this.admitKey(backend);
    } catch (err) {
      backend.numInFlight--;
      throw err;
    }
    const attempt = new UpstreamAttempt(this, backend);
    this.begin(attempt);
    return attempt;
  }

  /** Gives an attempt up for the next target: its work stops, its usage is not billed, its error is forgotten. */
  async abandon(): Promise<void> {
    const attempt = this.current;
    this.current = null;
    this.error = null;
    this.firstTokenMs = null;
    if (attempt) {
      attempt.backend.inFlightControllers.delete(this.controller);
      await attempt.close();
    }
  }

  fail(err: unknown): void {
    this.error ??= toApiError(err);
  }

  commit(): void {
    this.committed = true;
  }

  /** Settles the request once (see Admitted.settle); a request no backend admitted has nothing to settle. */
  settle(): Promise<void> {
    if (this.settling) return this.settling;
    const outcome = outcomeOf(this.controller.signal, this.error);
    const attempt = this.current;
    // NOTE: whatever the engine still runs for this request now has no reader (a later prompt failed, say): stop it.
    this.controller.abort();
    attempt?.backend.inFlightControllers.delete(this.controller);
    const closing = attempt?.close() ?? Promise.resolve();
    this.settling = closing.then(async () => {
      const admission = this.admission;
      if (!admission || !attempt) return;
      const { error, ticket, firstTokenMs } = this;
      const ttftMs = firstTokenMs === null ? null : firstTokenMs - admission.startedMs;
      if (ttftMs !== null && attempt.backend.kind === "local") attempt.backend.observeTtft(ttftMs);
      const settlement: Settlement = {
        ...admission, model: attempt.backend.id, backend: attempt.backend.label, finishedMs: Date.now(), ttftMs, outcome,
        // NOTE: a client that left is billed the tokens it was sent (text held back for a stop string included),
        // not those the backend made before it noticed: what the ledger holds is what the client was told.
        // A client told its request failed (an error status, nothing of a response sent) is billed nothing.
        usage: error && !this.committed ? NO_USAGE : attempt.billable(outcome), ...(error ? { error: { status: error.status, code: error.code } } : {}),
        ...(ticket ? { reservations: ticket } : {}),
      };
      // NOTE: a listener's fault must not crash the process or keep the others from hearing.
      const warn = (err: unknown) => process.emitWarning(`a settle listener failed: ${err instanceof Error ? err.message : String(err)}`);
      const pending: Promise<void>[] = [];
      for (const listener of this.ctx.settleListeners) {
        try {
          const result = listener(settlement);
          if (result) pending.push(result.catch(warn));
        } catch (err) {
          warn(err);
        }
      }
      await Promise.all(pending);
    });
    return this.settling;
  }

  release(): void {
    void this.settle();
  }

  /** The serving model's price applied to a usage, at the request's start. */
  async costOf(backend: ModelBackend, usage: Usage): Promise<number | null> {
    return this.ctx.costOf ? this.ctx.costOf(backend.id, usage, this.admission?.startedMs ?? Date.now()) : null;
  }

  /** Reserves one run's worst case against the key's limits (none: nothing to hold). */
  async reserveRun(backend: ModelBackend, promptTokens: number, worstCompletion: number, maxTokens: number): Promise<void> {
    if (!this.ticket) return;
    await this.ticket.reserveRun(backend.id, promptTokens, worstCompletion, maxTokens);
    this.options.setHeaders?.(this.ticket.headers());
  }

  /** An upstream's fault that did not fail the request (a usage not believable): logged and counted. */
  upstreamFault(backend: UpstreamBackend, what: string): void {
    this.ctx.metrics.upstreamFaults.inc({ provider: backend.provider.name });
    this.ctx.log?.warn({ provider: backend.provider.name, model: backend.id, requestId: this.options.requestId }, `the upstream provider ${backend.provider.name} misbehaved: ${what}`);
  }

  get priority(): Priority | undefined {
    return this.options.priority;
  }

  firstToken(): void {
    this.firstTokenMs ??= Date.now();
  }

  /** The key's limits admit the request once, at its first attempt that a backend takes; the ledger then hears of it. */
  private async admitKey(backend: ModelBackend): Promise<void> {
    if (this.admission) return;
    const admission: Admission = {
      id: randomUUID(), requestId: this.options.requestId, keyId: this.options.caller.keyId, model: backend.id, backend: backend.label,
      ...(this.options.route && this.options.route !== backend.id ? { route: this.options.route } : {}),
      endpoint: this.options.endpoint, startedMs: Date.now(),
    };
    // NOTE: while the ledger can't commit, nothing new runs: it would be served unbilled.
    if (this.ctx.ledgerHealth?.().available === false) throw storeUnavailable();
    try {
      this.ticket = (await this.ctx.limits?.admit(this.options.caller, admission.id, admission.startedMs)) ?? null;
    } catch (err) {
      if (err instanceof LimitExceeded) this.options.setHeaders?.(err.headers);
      throw toApiError(err);
    }
    if (this.ticket) this.options.setHeaders?.(this.ticket.headers());
    this.admission = admission;
    for (const listener of this.ctx.admitListeners) listener(admission);
  }

  private begin(attempt: Attempt): void {
    this.current = attempt;
    attempt.backend.inFlightControllers.add(this.controller);
  }
}

/** Opens a request's scope; nothing is taken from any limit until a backend admits it. */
export function openRequest(ctx: ServerContext, options: AdmitOptions): RequestScope {
  return new RequestScope(ctx, options);
}

/** What both kinds of attempt share: their scope, their own abort, their usage, and the scope's settlement. */
abstract class AttemptBase<B extends ModelBackend> {
  protected readonly controller = new AbortController();
  readonly signal: AbortSignal;
  protected used = NO_USAGE;

  constructor(protected readonly scope: RequestScope, readonly backend: B) {
    this.signal = AbortSignal.any([scope.signal, this.controller.signal]);
    // NOTE: each engine request listens on it, and a request may run many (an embeddings batch of 2048): no leak, one request's.
    setMaxListeners(0, this.signal);
  }

  get usage(): Usage {
    return this.used;
  }

  cost(): Promise<number | null> {
    return this.scope.costOf(this.backend, this.usage);
  }

  fail(err: unknown): void {
    this.scope.fail(err);
  }

  commit(): void {
    this.scope.commit();
  }

  settle(): Promise<void> {
    return this.scope.settle();
  }
}

/** One local model's share of a request: its engine requests and their usage. */
class LocalAttempt extends AttemptBase<LocalBackend> implements Admitted, Attempt {
  private readonly runs: EngineRun[] = [];
  /** Tokens in the outputs the route read (and so sent on): what a client that left was given. */
  private numTokensRead = 0;
  private closed: Promise<void> | null = null;

  constructor(
    scope: RequestScope, backend: LocalBackend, readonly engine: ServingEngine, readonly tokenizer: PromptTokenizer,
    private readonly numSequences: number,
  ) {
    super(scope, backend);
  }

  generate(request: EngineRequest): AsyncIterator<EngineOutput> {
    const { engine, backend, scope } = this;
    const engineRequest = { ...request, priority: scope.priority ?? request.priority };
    // NOTE: the engine request starts only once the key's limits have room for its worst case (a 429 otherwise).
    const start = async () => {
      const n = request.n ?? 1;
      const promptTokens = request.promptTokenIds.length;
      const remainder = defaultMaxTokens(promptTokens, engine.info.maxModelLen);
      const worstPerSequence = Math.min(request.maxTokens ?? remainder, remainder);
      await scope.reserveRun(backend, promptTokens, worstPerSequence * n, (request.maxTokens ?? 0) * n);
      return engine.add(engineRequest, this.signal)[Symbol.asyncIterator]();
    };
    const run = new EngineRun(start, (used, output, byRoute) => this.count(used, output, byRoute));
    this.runs.push(run);
    return run.reader(this.signal, (err) => this.fail(err));
  }

  release(): void {
    this.scope.release();
  }

  billable(outcome: Outcome): Usage {
    return outcome === "disconnected" ? { ...this.used, completionTokens: Math.min(this.used.completionTokens, this.numTokensRead) } : this.used;
  }

  close(): Promise<void> {
    if (this.closed) return this.closed;
    this.controller.abort();
    this.backend.numInFlight -= this.numSequences;
    this.closed = Promise.all(this.runs.map((run) => run.drain())).then(() => undefined);
    return this.closed;
  }

  private count(used: RequestUsage | undefined, output?: EngineOutput, byRoute = false): void {
    if (output && output.newTokenIds.length > 0) this.scope.firstToken();
    if (byRoute && output) this.numTokensRead += output.newTokenIds.length;
    if (used) this.used = addUsage(this.used, { promptTokens: used.numPromptTokens, cachedPromptTokens: used.numCachedPromptTokens, completionTokens: used.numCompletionTokens });
  }
}

/**
 * One upstream model's share of a request: the usage it reported, checked. A count that is
 * missing or not believable (negative, fractional, not a number, beyond any request) is the
 * upstream's fault, logged, and replaced by what was seen: the output chunks sent (one token
 * each from OpenAI-compatible servers, or the text's bytes / 4 for a whole body, whichever is
 * more) and the prompt's bytes / 4. The client is told the same usage the ledger holds.
 */
class UpstreamAttempt extends AttemptBase<UpstreamBackend> implements UpstreamAdmitted, Attempt {
  private checked: CheckedUpstreamUsage | null = null;
  private numChunksSent = 0;
  private numTextBytes = 0;
  private promptBytes = 0;
  private closed = false;

  async reserve(promptBytes: number, maxTokens: number | null): Promise<void> {
    this.promptBytes = promptBytes;
    await this.scope.reserveRun(this.backend, promptBytes, maxTokens ?? this.backend.maxOutputTokens, maxTokens ?? 0);
  }

  report(usage: unknown, generates = true): void {
    this.checked = checkUsage(usage, generates);
    if (this.checked.fault) this.scope.upstreamFault(this.backend, `its usage is not believable (${this.checked.fault}); billing what was seen instead`);
  }

  get reported(): boolean {
    return this.checked !== null;
  }

  sent(numChunks: number, text = ""): void {
    if (numChunks > 0) this.scope.firstToken();
    this.numChunksSent += numChunks;
    this.numTextBytes += Buffer.byteLength(text);
  }

  override get usage(): Usage {
    const checked = this.checked;
    const promptTokens = checked?.promptTokens ?? Math.ceil(this.promptBytes / 4);
    const completionTokens = checked?.completionTokens ?? Math.max(this.numChunksSent, Math.ceil(this.numTextBytes / 4));
    return { promptTokens, completionTokens, cachedPromptTokens: Math.min(checked?.cachedPromptTokens ?? 0, promptTokens) };
  }

  get reasoningTokens(): number {
    return Math.min(this.checked?.reasoningTokens ?? 0, this.usage.completionTokens);
  }

  /** A stream cut off before the upstream's count (the client left) is billed the chunks it was sent, and no input. */
  billable(outcome: Outcome): Usage {
    return this.checked || outcome !== "disconnected" ? this.usage : { ...NO_USAGE, completionTokens: this.numChunksSent };
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.controller.abort();
      this.backend.numInFlight--;
    }
    return Promise.resolve();
  }
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
