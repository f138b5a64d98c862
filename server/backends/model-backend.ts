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

/** What a local model's served names share: its engine thread, tokenizer, queue and latency. A LoRA adapter shares its base model's. */
class EngineSeat {
  engine: ServingEngine | null = null;
  tokenizer: PromptTokenizer | null = null;
  numInFlight = 0;
  readonly inFlightControllers = new Set<AbortController>();
  ttftEwmaMs: number | null = null;
}

/**
 * A model served by an engine thread in this process, or a LoRA adapter served over one (its
 * `base`): a served name of its own (listed, allowed per key, priced and metered under it),
 * running on its base's engine, queue and limits. Its engine and tokenizer are null while it loads.
 */
export class LocalBackend {
  readonly kind = "local";
  /** The base model, for a LoRA adapter; null for a model. */
  readonly base: LocalBackend | null;
  /** The adapter's name in the engine (EngineRequest.adapter); null for a model. */
  readonly adapter: string | null;
  limits: ServerLimits;
  readonly defaults: GenerationDefaults;
  readonly toolCallParser?: "hermes";
  readonly reasoningParser?: ReasoningParser;
  readonly pooling: Pooling;
  readonly task: ModelTask;
  private readonly seat: EngineSeat;

  constructor(readonly id: string, options: LocalBackendOptions, adapterOf?: LocalBackend) {
    this.limits = options.limits;
    this.defaults = options.defaults;
    this.toolCallParser = options.toolCallParser;
    this.reasoningParser = options.reasoningParser;
    this.pooling = options.pooling ?? "last";
    this.task = options.task ?? "both";
    this.base = adapterOf ?? null;
    this.adapter = adapterOf ? id : null;
    this.seat = adapterOf ? adapterOf.seat : new EngineSeat();
  }

  /** A LoRA adapter served as `name` on `base`'s engine, with its parsers and defaults. */
  static adapterOf(base: LocalBackend, name: string): LocalBackend {
    return new LocalBackend(name, base, base);
  }

  get engine(): ServingEngine | null {
    return this.seat.engine;
  }

  set engine(engine: ServingEngine | null) {
    this.seat.engine = engine;
  }

  get tokenizer(): PromptTokenizer | null {
    return this.seat.tokenizer;
  }

  set tokenizer(tokenizer: PromptTokenizer | null) {
    this.seat.tokenizer = tokenizer;
  }

  /** Sequences admitted and not yet finished (on the engine: an adapter counts with its base). */
  get numInFlight(): number {
    return this.seat.numInFlight;
  }

  set numInFlight(n: number) {
    this.seat.numInFlight = n;
  }

  /** Aborts each in-flight request (shutdown past its deadline). */
  get inFlightControllers(): Set<AbortController> {
    return this.seat.inFlightControllers;
  }

  /** Whether it serves generation, or embeddings (--task). */
  serves(kind: "generate" | "embed"): boolean {
    return this.task === "both" || this.task === kind;
  }

  /** What the ledger's backend column says: the engine it ran on. */
  get label(): string {
    return `local:${(this.base ?? this).id}`;
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
    return this.numInFlight === 0 ? 0 : (this.seat.ttftEwmaMs ?? 0);
  }

  observeTtft(ms: number): void {
    const seat = this.seat;
    seat.ttftEwmaMs = seat.ttftEwmaMs === null ? ms : seat.ttftEwmaMs + TTFT_EWMA_WEIGHT * (ms - seat.ttftEwmaMs);
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
