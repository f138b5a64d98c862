/**
 * A request's scope: admission and settlement. A request opens one RequestScope: it is admitted
 * under its key's limits once, and settled exactly once, however it ends, with the exact usage of
 * the backend that served it. Within the scope it makes attempts (attempts.ts), one backend at a
 * time (see backends/serving-plan.ts): a local attempt may start only while its model's engine is ready
 * and its queue has room; an upstream attempt only while its model's breaker and its provider's
 * cap allow. An attempt given up for the next target (a fallback) is abandoned: its engine work
 * is stopped and its usage is not billed, since none of it reached the client.
 */
import { randomUUID } from "node:crypto";
import type { VerifiedKey } from "../../service/keys.ts";
import type { PriceTier } from "../../service/prices.ts";
import { LimitExceeded, type LimitTicket } from "../../service/limits/limiter.ts";
import { NO_USAGE, type Admission, type Outcome, type Settlement, type Usage } from "../../service/settlement.ts";
import type { LocalBackend, ModelBackend, UpstreamBackend } from "../backends/model-backend.ts";
import type { Priority } from "../common/engine-api.ts";
import type { ServerContext } from "./server-context.ts";
import { ApiError, clientClosedRequest, dataResidencyViolation, tooManySequences, invalidRequest, engineDead, engineRestarting, modelLoading, overloaded, storeUnavailable, toApiError } from "../common/api-error.ts";
import type { Admitted, UpstreamAdmitted } from "../backends/admitted.ts";
import { LocalAttempt, UpstreamAttempt, type Attempt } from "./attempts.ts";


export interface AdmitOptions {
  /** The HTTP request id, for the settlement. */
  requestId: string;
  /** Who the request is from: its key's id for the ledger, the key for its limits. */
  caller: { keyId: string; key: VerifiedKey | null; admin: boolean };
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
  /** The caller's data must stay on this server (data residency): no upstream target may take it. */
  localOnly?: boolean;
  /** batch: a batch job's line (priced at the batch discount); default standard. */
  tier?: PriceTier;
  /** The settlement's id, where the caller fixes it (a batch line's, so a re-run after a crash replaces its ledger row). */
  admissionId?: string;
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

  get localOnly(): boolean {
    return this.options.localOnly ?? false;
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
      throw tooManySequences(
        `This request needs ${numSequences} sequences at once, but the server holds at most ${capacity} ` +
          `(${limits.maxNumSeqs} running plus ${limits.maxQueuedRequests} queued); send fewer prompts or a smaller n.`, this.options.param ?? "n");
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
    // NOTE: the plan never offers one to a local-only request (serving-plan.ts); this is the last line, should a path forget.
    if (this.localOnly) throw dataResidencyViolation(backend.id);
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
    return this.ctx.costOf ? this.ctx.costOf(backend.id, usage, this.admission?.startedMs ?? Date.now(), this.options.tier ?? "standard") : null;
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
      id: this.options.admissionId ?? randomUUID(), requestId: this.options.requestId, keyId: this.options.caller.keyId, model: backend.id, backend: backend.label,
      ...(this.options.route && this.options.route !== backend.id ? { route: this.options.route } : {}),
      endpoint: this.options.endpoint, startedMs: Date.now(),
      ...(this.options.caller.key?.team ? { teamId: this.options.caller.key.team.id } : {}),
      ...(this.localOnly ? { residency: "local" as const } : {}),
      ...(this.options.tier === "batch" ? { tier: "batch" as const } : {}),
    };
    // NOTE: while the ledger can't commit, nothing new runs: it would be served unbilled.
    if (this.ctx.ledgerHealth?.().available === false) throw storeUnavailable();
    try {
      this.ticket = (await this.ctx.limits?.admit(this.options.caller, admission.id, admission.startedMs, this.options.tier ?? "standard")) ?? null;
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

function outcomeOf(signal: AbortSignal, error: ApiError | null): Outcome {
  if (signal.aborted) return signal.reason instanceof ApiError && signal.reason.code === "client_closed_request" ? "disconnected" : "aborted";
  if (!error) return "finished";
  return error.status < 500 ? "rejected" : "errored";
}
