/**
 * The one record every request leaves behind, however it ended: the seam where the service
 * layer (keys, ledger, limits) takes over. The server settles each admitted request exactly
 * once; nothing here knows HTTP or the engine.
 */
import type { MeterChange } from "./limits/meters.ts";
import type { PriceTier } from "./prices.ts";

/** Tokens, exact: the prompt (once, whatever n), the part of it served from the prefix cache, and everything generated. */
export interface Usage {
  promptTokens: number;
  cachedPromptTokens: number;
  completionTokens: number;
}

/**
 * - finished: the response went out whole;
 * - rejected: refused with a 4xx (nothing or little ran);
 * - errored: a fault of the server's (5xx);
 * - aborted: the server cut it off (shutdown past its timeout);
 * - disconnected: the client left before the end.
 */
export type Outcome = "finished" | "rejected" | "errored" | "aborted" | "disconnected";

export interface Settlement {
  /** Made by the server at admission, unique: what the ledger keys its row by. */
  id: string;
  /** The HTTP request id (x-request-id, which a client may choose: never a key for money). */
  requestId: string;
  /** The API key the request was made with ("anonymous" when the server has none). */
  keyId: string;
  /** The model that served it (its price applies): a local model's or an upstream model's served name. */
  model: string;
  /** Where it ran: "local:MODEL" or "upstream:PROVIDER" (absent in rows from before routing). */
  backend?: string;
  /** The name the client asked for, when that was a route or an alias rather than the model itself. */
  route?: string;
  /** The route, e.g. "/v1/chat/completions". */
  endpoint: string;
  /** The key's team, when it has one. */
  teamId?: string | null;
  /** "local" when the request was bound to local models (data residency). */
  residency?: "local" | null;
  /** batch: a batch job's request, priced at the batch discount; absent: standard. */
  tier?: PriceTier;
  startedMs: number;
  finishedMs: number;
  /** Time to the first generated token; null when none was generated. */
  ttftMs: number | null;
  outcome: Outcome;
  usage: Usage;
  /** The error the client was given, for rejected and errored requests. */
  error?: { status: number; code: string | null };
  /** What the request holds of its key's limits, replaced at settlement by what it used. */
  reservations?: Reservations | null;
}

/** A request's holds on its key's budget, quota and parallel limit (see limits/limiter.ts). */
export interface Reservations {
  readonly holdsAny: boolean;
  /** The meter changes that settle the holds, given the usage and its cost. */
  changes(usage: Usage, costMicroUsd: number): MeterChange[];
  /** After the settlement is committed (rate buckets, alerts). */
  settled(settlement: Settlement): Promise<void>;
}

/** May return a promise: the request's last bytes wait for it (the ledger's write being durable). */
export type SettleListener = (settlement: Settlement) => void | Promise<void>;

/** What is known of a request when it is admitted: the ledger writes it as in flight. */
export type Admission = Pick<Settlement, "id" | "requestId" | "keyId" | "model" | "backend" | "route" | "endpoint" | "teamId" | "residency" | "tier" | "startedMs">;

export type AdmitListener = (admission: Admission) => void;

export const NO_USAGE: Usage = { promptTokens: 0, cachedPromptTokens: 0, completionTokens: 0 };

export function addUsage(a: Usage, b: Usage): Usage {
  return {
    promptTokens: a.promptTokens + b.promptTokens,
    cachedPromptTokens: a.cachedPromptTokens + b.cachedPromptTokens,
    completionTokens: a.completionTokens + b.completionTokens,
  };
}
