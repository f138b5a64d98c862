/**
 * A request's attempts, one per backend it is tried on: each implements what a route sees of
 * the request (backends/admitted.ts) and counts the usage it bills. Their scope
 * (request-scope.ts) admits, abandons and settles them.
 *
 * NOTE: every engine request ends with its usage: on its last output (finished or aborted) or
 * on the error it fails with. A reader that stops early (the client left) would miss it, so an
 * attempt reads each unfinished engine request to its end, after aborting it, before settling
 * (engine-run.ts).
 */
import { setMaxListeners } from "node:events";
import { NO_USAGE, addUsage, type Outcome, type Usage } from "../../service/settlement.ts";
import type { LocalBackend, ModelBackend, UpstreamBackend } from "../backends/model-backend.ts";
import { defaultMaxTokens, type EngineOutput, type EngineRequest, type PromptTokenizer, type RequestUsage, type ServingEngine } from "../common/engine-api.ts";
import { checkUsage, type CheckedUpstreamUsage } from "../upstream/upstream-stream.ts";
import type { Admitted, UpstreamAdmitted } from "../backends/admitted.ts";
import { EngineRun } from "./engine-run.ts";
import type { RequestScope } from "./request-scope.ts";

/** What the scope sees of an attempt. */
export interface Attempt {
  readonly backend: ModelBackend;
  readonly usage: Usage;
  /** What the client was given, by the outcome (a client that left is billed what it was sent). */
  billable(outcome: Outcome): Usage;
  /** Stops what the attempt still runs, frees its backend's place (at once), and resolves once its work has ended. */
  close(): Promise<void>;
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
export class LocalAttempt extends AttemptBase<LocalBackend> implements Admitted, Attempt {
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
    // NOTE: a LoRA adapter's requests run on its base model's engine, under the adapter.
    const engineRequest = { ...request, priority: scope.priority ?? request.priority, ...(backend.adapter ? { adapter: backend.adapter } : {}) };
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
export class UpstreamAttempt extends AttemptBase<UpstreamBackend> implements UpstreamAdmitted, Attempt {
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
