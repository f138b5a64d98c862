/** What every route shares: the engine (once loaded), the tokenizer pool, limits and metrics. */
import type { FastifyBaseLogger } from "fastify";
import type { PromptTokenizer, ServingEngine } from "./backends/engine-api.ts";
import type { GenerationDefaults } from "../models/index.ts";
import type { ServerMetrics } from "./metrics.ts";

export interface ServerLimits {
  /** Sequences the engine runs at once (--max-num-seqs). */
  maxNumSeqs: number;
  /** Sequences that may wait beyond those (--max-queued-requests). */
  maxQueuedRequests: number;
}

/** Sampling defaults from the model's generation_config.json, for fields a request leaves out. */
export type { GenerationDefaults } from "../models/index.ts";

export interface ServerContext {
  /** The served model's id, as /v1/models lists it. */
  modelId: string;
  /** Null while the model loads. */
  engine: ServingEngine | null;
  tokenizer: PromptTokenizer | null;
  maxModelLen: number;
  vocabSize: number;
  limits: ServerLimits;
  defaults: GenerationDefaults;
  metrics: ServerMetrics;
  /** How tool calls in this model's output are written; undefined: they are not parsed. */
  toolCallParser?: "hermes";
  /** Sequences admitted and not yet finished. */
  numInFlight: number;
  /** Aborts every in-flight request (shutdown past its deadline). */
  readonly inFlightControllers: Set<AbortController>;
  log?: FastifyBaseLogger;
}
