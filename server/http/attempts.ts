/**
 * A request's attempts, one per backend it is tried on: what a route sees of the request
 * (Admitted, UpstreamAdmitted), and the usage each attempt bills. Their scope (request-scope.ts)
 * admits, abandons and settles them.
 *
 * NOTE: every engine request ends with its usage: on its last output (finished or aborted) or
 * on the error it fails with. A reader that stops early (the client left) would miss it, so an
 * attempt reads each unfinished engine request to its end, after aborting it, before settling
 * (engine-run.ts).
 */
import { setMaxListeners } from "node:events";
import { NO_USAGE, addUsage, type Outcome, type Usage } from "../../service/settlement.ts";
import type { LocalBackend, ModelBackend, UpstreamBackend } from "../backends/model-backend.ts";
import { defaultMaxTokens, type EngineOutput, type EngineRequest, type PromptTokenizer, type RequestUsage, type ServingEngine } from "../backends/engine-api.ts";
import { checkUsage, type CheckedUpstreamUsage } from "../upstream/upstream-stream.ts";
import { EngineRun } from "./engine-run.ts";
import type { RequestScope } from "./request-scope.ts";

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
