/**
 * The models the server serves, as the routes see them: a local engine thread in this process
 * (LocalBackend), or a model of an OpenAI-compatible upstream provider (UpstreamBackend).
 * Both sit in one registry, under the same keys, limits and ledger.
 */
import type { GenerationDefaults } from "../../models/index.ts";
import type { ReasoningParser } from "../openai/reasoning.ts";
import type { UpstreamProvider } from "../upstream/upstream-provider.ts";
import type { Pooling, PromptTokenizer, ServingEngine } from "../common/engine-api.ts";

/** What a local model serves (--task): generation (chat, completions, Responses, Messages), embeddings, or both. */
export type ModelTask = "generate" | "embed" | "both";
export const MODEL_TASKS = ["generate", "embed", "both"] as const satisfies readonly ModelTask[];

export interface ServerLimits {
  /** Sequences the engine runs at once (--max-num-seqs). */
  maxNumSeqs: number;
  /** Sequences that may wait beyond those (--max-queued-requests). */
  maxQueuedRequests: number;
}

export interface LocalBackendOptions {
  limits: ServerLimits;
  /** Sampling defaults from the model's generation_config.json, for fields a request leaves out. */
  defaults: GenerationDefaults;
  /** How tool calls in this model's output are written; undefined: they are not parsed. */
  toolCallParser?: "hermes";
  /** How reasoning in this model's output is marked (--reasoning-parser); undefined: it is left in the content. */
  reasoningParser?: ReasoningParser;
  /** How embeddings pool the final hidden states (--pooling; default last). */
  pooling?: Pooling;
  /** What it serves (--task; default both). */
  task?: ModelTask;
}

/** Weight of the newest request in a backend's running TTFT average. */
const TTFT_EWMA_WEIGHT = 0.2;

/** A model served by an engine thread in this process. Its engine and tokenizer are null while it loads. */
export class LocalBackend {
  readonly kind = "local";
  engine: ServingEngine | null = null;
  tokenizer: PromptTokenizer | null = null;
  /** Sequences admitted and not yet finished. */
  numInFlight = 0;
  /** Aborts each in-flight request (shutdown past its deadline). */
  readonly inFlightControllers = new Set<AbortController>();
  limits: ServerLimits;
  readonly defaults: GenerationDefaults;
  readonly toolCallParser?: "hermes";
  readonly reasoningParser?: ReasoningParser;
  readonly pooling: Pooling;
  readonly task: ModelTask;
  /** A running average of the TTFT of this model's last requests, in ms; null before the first. */
  private ttftEwmaMs: number | null = null;

  constructor(readonly id: string, options: LocalBackendOptions) {
    this.limits = options.limits;
    this.defaults = options.defaults;
    this.toolCallParser = options.toolCallParser;
    this.reasoningParser = options.reasoningParser;
    this.pooling = options.pooling ?? "last";
    this.task = options.task ?? "both";
  }

  /** Whether it serves generation, or embeddings (--task). */
  serves(kind: "generate" | "embed"): boolean {
    return this.task === "both" || this.task === kind;
  }

  /** What the ledger's backend column says. */
  get label(): string {
    return `local:${this.id}`;
  }

  /** The context length, as the engine decided it; null until the engine has loaded. */
  get maxModelLen(): number | null {
    return this.engine?.info.maxModelLen ?? null;
  }

  /** Sequences admitted beyond those the engine runs at once: the queue a new request joins. */
  get numWaiting(): number {
    return Math.max(0, this.numInFlight - this.limits.maxNumSeqs);
  }

  /**
   * What a request admitted now may expect to wait for its first token: the running average of
   * the last requests' TTFT while the model is busy, 0 while it is idle (so an average from a
   * past flood does not keep sending requests elsewhere once the flood is gone).
   */
  get estimatedTtftMs(): number {
    return this.numInFlight === 0 ? 0 : (this.ttftEwmaMs ?? 0);
  }

  observeTtft(ms: number): void {
    this.ttftEwmaMs = this.ttftEwmaMs === null ? ms : this.ttftEwmaMs + TTFT_EWMA_WEIGHT * (ms - this.ttftEwmaMs);
  }
}

export interface UpstreamBackendOptions {
  /** The provider's own name for the model (default: the served name). */
  upstreamModel?: string;
  /**
   * The most tokens a request may generate when it sets no max_tokens, for holding budget
   * before the call (the upstream's own limit is unknown here). Default 4096.
   */
  maxOutputTokens?: number;
}

/** A model of an upstream provider, served under its own name. */
export class UpstreamBackend {
  readonly kind = "upstream";
  readonly upstreamModel: string;
  readonly maxOutputTokens: number;
  /** Requests admitted to it and not yet settled. */
  numInFlight = 0;
  readonly inFlightControllers = new Set<AbortController>();

  constructor(readonly id: string, readonly provider: UpstreamProvider, options: UpstreamBackendOptions = {}) {
    this.upstreamModel = options.upstreamModel ?? id;
    this.maxOutputTokens = options.maxOutputTokens ?? 4096;
  }

  get label(): string {
    return `upstream:${this.provider.name}`;
  }
}

export type ModelBackend = LocalBackend | UpstreamBackend;
