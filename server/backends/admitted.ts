/**
 * What a route (and the chat runs below it) sees of a request admitted to a backend: a local
 * model's engine, or an upstream provider. The request path (http/attempts.ts) implements them.
 */
import type { Usage } from "../../service/settlement.ts";
import type { EngineOutput, EngineRequest, PromptTokenizer, ServingEngine } from "../common/engine-api.ts";
import type { LocalBackend, UpstreamBackend } from "./model-backend.ts";

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
