/**
 * The service's tables, as Kysely sees them. Money is integer micro-USD and times are epoch
 * milliseconds, so SQLite and PostgreSQL hold identical values.
 */
/** The columns keys and teams both have (owner-columns.ts reads and writes them). */
export interface OwnerColumns {
  /** JSON array of model names it may use; null: every model. */
  models: string | null;
  /** JSON object, the caller's own. */
  metadata: string | null;
  /** The scheduling tier of its requests; null: standard (a key's: its team's, else standard). */
  priority: string | null;
  /** Limits (null: none; a key's: the server's default, if any): requests and tokens per minute, requests in flight. */
  rpm: number | null;
  tpm: number | null;
  max_parallel: number | null;
  /** Spend per budget_period (day, week, month; null: month). */
  budget_micro_usd: number | null;
  budget_period: string | null;
  /** Tokens per quota_period. */
  token_quota: number | null;
  quota_period: string | null;
  /** JSON: per-model budgets and quotas (limits/model-limits.ts); null: none. */
  model_limits: string | null;
  /** local: its requests never go to an upstream provider; null: any. */
  data_residency: string | null;
}

export interface ApiKeyTable extends OwnerColumns {
  id: string;
  name: string;
  /** What the key starts with, for people to tell keys apart ("tm-Ab12Cd…"). */
  prefix: string;
  /** SHA-256 of the secret, hex. The secret itself is never stored. */
  secret_hash: string;
  created_ms: number;
  expires_ms: number | null;
  revoked_ms: number | null;
  last_used_ms: number | null;
  /** The team the key belongs to; null: none. */
  team_id: string | null;
}

/** A team: keys share its limits, on top of their own. */
export interface TeamTable extends OwnerColumns {
  id: string;
  name: string;
  created_ms: number;
  /** The budget each of its keys has when the key sets none (a per-member cap). */
  member_budget_micro_usd: number | null;
  member_budget_period: string | null;
}

/** What a key has used and has reserved (by requests in flight) of one meter in one period. */
export interface KeyMeterTable {
  /** Whose meter: a key's id (key_…) or a team's (team_…). */
  key_id: string;
  /** usd (micro-USD, a budget), tokens (a token quota), parallel (requests in flight; period 0). */
  meter: string;
  period_start_ms: number;
  used: number;
  reserved: number;
}

/** One request's hold on a meter (its key's or its team's), so that a crash of its replica can give it back. */
export interface LimitHoldTable {
  request_id: string;
  /** A key's id or a team's. */
  owner_id: string;
  meter: string;
  period_start_ms: number;
  amount: number;
  replica: string;
}

/** A token bucket shared by replicas (PostgreSQL): its level when last touched. */
export interface RateBucketTable {
  key_id: string;
  /** requests or tokens. */
  kind: string;
  tokens: number;
  updated_ms: number;
}

/** Each budget alert fired, once per key, meter, period and threshold. */
export interface BudgetAlertTable {
  key_id: string;
  meter: string;
  period_start_ms: number;
  threshold: number;
  fired_ms: number;
  replica: string;
  /** When its webhook was delivered; null: not (yet), or no webhook. */
  delivered_ms: number | null;
  /** The alert as its webhook sends it (JSON). */
  payload: string;
}

/** in_flight at admission; then completed, stopped (the client left), aborted (the server cut it), error; interrupted (left in_flight by a crash). */
export type LedgerStatus = "in_flight" | "completed" | "stopped" | "aborted" | "error" | "interrupted";

export interface UsageLedgerTable {
  /** The server's own id for the request. */
  request_id: string;
  /** The x-request-id the response carried (a client may choose it), to find a request's row. */
  http_request_id: string | null;
  key_id: string;
  /** The model that served the request (its price is the row's). */
  model: string;
  /** Where it ran: local:MODEL or upstream:PROVIDER; null in rows from before routing. */
  backend: string | null;
  /** The name the client asked for, when a route or alias; null: the model itself. */
  route: string | null;
  endpoint: string;
  status: LedgerStatus;
  uncached_input_tokens: number;
  cached_input_tokens: number;
  output_tokens: number;
  cost_micro_usd: number;
  started_ms: number;
  finished_ms: number | null;
  /** Time to the first generated token, when there was one. */
  ttft_ms: number | null;
  replica: string;
  /** The key's team when the request was made; null: none. */
  team_id?: string | null;
  /** local when the request was bound to stay on local models (data residency); null: not. */
  residency?: string | null;
  /** batch for a batch job's request (priced at the batch discount); null: the standard tier. */
  tier?: string | null;
}

/** USD per million tokens, in micro-USD (so $0.15/Mtok is 150000), from effective_ms on. */
export interface PriceTable {
  model: string;
  effective_ms: number;
  input_micro_usd_per_mtok: number;
  cached_input_micro_usd_per_mtok: number;
  output_micro_usd_per_mtok: number;
  /** The batch tier's discount on this price, percent; null: the server's (--batch-discount). */
  batch_discount_percent?: number | null;
}

/** An uploaded file (purpose batch) or a batch's output or error file (purpose batch_output). */
export interface FileTable {
  id: string;
  /** The key that uploaded it (or ran the batch that wrote it). */
  key_id: string;
  purpose: string;
  filename: string;
  bytes: number;
  created_ms: number;
  expires_ms: number | null;
  /** UTF-8 text (JSONL). */
  content: string;
}

/** A batch job and its progress; its lines are in batch_lines. */
export interface BatchTable {
  id: string;
  key_id: string;
  endpoint: string;
  input_file_id: string;
  completion_window: string;
  /** validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled. */
  status: string;
  metadata: string | null;
  created_ms: number;
  expires_ms: number;
  /** JSON: when it entered each status ({"in_progress": ms, ...}). */
  times: string;
  total: number;
  completed: number;
  failed: number;
  output_file_id: string | null;
  error_file_id: string | null;
  /** JSON: OpenAI's errors.data, for a batch that failed validation. */
  errors: string | null;
  /** The replica that runs it, until lease_until_ms: another takes it over after. */
  lease_owner: string | null;
  lease_until_ms: number | null;
}

/** One request of a batch: pending until run, then done (a response) or error. */
export interface BatchLineTable {
  batch_id: string;
  line: number;
  custom_id: string;
  /** The request's body (JSON). */
  body: string;
  status: string;
  /** The output or error file's line for it (JSON), once run. */
  result: string | null;
}

/** A Responses API response kept for GET and previous_response_id (store: true), until expires_ms. */
export interface StoredResponseTable {
  id: string;
  key_id: string;
  created_ms: number;
  expires_ms: number;
  /** The response object, JSON. */
  response: string;
  /** The conversation up to and including this response's output, as JSON: what a continuation starts from. */
  conversation: string;
}

/** Each output item of a stored response, for item_reference. */
export interface StoredResponseItemTable {
  id: string;
  response_id: string;
  key_id: string;
  item: string;
}

export interface Database {
  api_keys: ApiKeyTable;
  usage_ledger: UsageLedgerTable;
  prices: PriceTable;
  key_meters: KeyMeterTable;
  limit_holds: LimitHoldTable;
  teams: TeamTable;
  rate_buckets: RateBucketTable;
  budget_alerts: BudgetAlertTable;
  stored_responses: StoredResponseTable;
  files: FileTable;
  batches: BatchTable;
  batch_lines: BatchLineTable;
  stored_response_items: StoredResponseItemTable;
}
