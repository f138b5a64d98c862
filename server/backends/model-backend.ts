/**
 * A model the server serves, as the routes see it. Today every backend is a local engine
 * (LocalBackend); an upstream provider will be another kind behind the same registry.
 */
import type { GenerationDefaults } from "../../models/index.ts";
import type { PromptTokenizer, ServingEngine } from "./engine-api.ts";

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
}

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

  constructor(readonly id: string, options: LocalBackendOptions) {
    this.limits = options.limits;
    this.defaults = options.defaults;
    this.toolCallParser = options.toolCallParser;
  }

  /** The context length, as the engine decided it; null until the engine has loaded. */
  get maxModelLen(): number | null {
    return this.engine?.info.maxModelLen ?? null;
  }
}

export type ModelBackend = LocalBackend;
