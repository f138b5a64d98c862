/** What every route shares: the model registry, the metrics, and who hears each request's settlement. */
import type { AdmitListener, SettleListener, Usage } from "../service/settlement.ts";
import type { ModelRegistry } from "./backends/model-registry.ts";
import type { ServerMetrics } from "./metrics.ts";

export type { GenerationDefaults } from "../models/index.ts";
export type { ServerLimits } from "./backends/model-backend.ts";

export interface ServerContext {
  /** Whether the server is serving anonymously right now (no key exists yet), for /health's warning. */
  anonymous?: () => Promise<boolean>;
  /** A usage's cost in micro-USD at the model's price in effect at a time; null when the model has no price (or there is no store). */
  costOf?: (model: string, usage: Usage, atMs: number) => Promise<number | null>;
  models: ModelRegistry;
  metrics: ServerMetrics;
  /** Called as each request is admitted. */
  readonly admitListeners: AdmitListener[];
  /** Called once per admitted request, however it ended (see admission). */
  readonly settleListeners: SettleListener[];
}
