/** What every route shares: the model registry, the metrics, and who hears each request's settlement. */
import type { VerifiedKey } from "../../service/keys.ts";
import type { LevelStatus, LimitTicket } from "../../service/limits/limiter.ts";
import type { AdmitListener, SettleListener, Usage } from "../../service/settlement.ts";
import type { PriceTier } from "../../service/prices.ts";
import type { LedgerHealth } from "../../service/ledger.ts";
import type { ModelRegistry } from "../backends/model-registry.ts";
import type { LoraAdapters } from "../backends/lora-adapters.ts";
import type { ServerMetrics } from "./metrics.ts";

export type { GenerationDefaults } from "../common/engine-api.ts";
export type { ServerLimits } from "../backends/model-backend.ts";

type LimitCaller = { keyId: string; key: VerifiedKey | null; admin: boolean };

export interface ServerContext {
  /** Whether the server is serving anonymously right now (no key exists yet), for /health's warning. */
  anonymous?: () => Promise<boolean>;
  /** A usage's cost in micro-USD at the model's price in effect at a time; null when the model has no price (or there is no store). */
  costOf?: (model: string, usage: Usage, atMs: number, tier: PriceTier) => Promise<number | null>;
  /** Admits a request under its key's limits (null: the key has none); throws LimitExceeded. */
  limits?: {
    admit(caller: LimitCaller, requestId: string, startedMs: number, tier: PriceTier): Promise<LimitTicket | null>;
    /** The caller's effective limits at each level (its key's, its team's) and where it stands on each, for GET /v1/key; null: it has none. */
    status(caller: LimitCaller): Promise<LevelStatus[] | null>;
  };
  /** Whether the ledger commits now: while it can't, new requests are refused (503), so none is served unbilled. */
  ledgerHealth?: () => LedgerHealth;
  models: ModelRegistry;
  /** The LoRA adapters served as models (loaded and unloaded at run time by the admin API); none: no adapters. */
  adapters?: LoraAdapters;
  metrics: ServerMetrics;
  /** The server's log, for faults that don't fail a request (an upstream's unbelievable usage). */
  log?: { warn(details: object, message: string): void };
  /** Called as each request is admitted. */
  readonly admitListeners: AdmitListener[];
  /** Called once per admitted request, however it ended (see admission). */
  readonly settleListeners: SettleListener[];
}
