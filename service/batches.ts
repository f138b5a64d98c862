/**
 * Batch jobs in the service's database: each batch, its lines (one request each) and their
 * results, so that a batch's progress survives a crash and any replica can finish it. A replica
 * runs a batch while it holds its lease (claim, renew); a dead replica's lease runs out and
 * another takes the batch over. Nothing here runs a request: server/batch/ does.
 */
import { randomBytes } from "node:crypto";
import { sql, type Kysely } from "kysely";
import type { BatchTable, Database } from "./store/database.ts";

export const BATCH_ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"] as const;
export type BatchEndpoint = (typeof BATCH_ENDPOINTS)[number];

export type BatchStatus = "validating" | "in_progress" | "finalizing" | "completed" | "failed" | "expired" | "cancelling" | "cancelled";
/** The statuses a runner still has work in. */
export const ACTIVE_STATUSES: readonly BatchStatus[] = ["validating", "in_progress", "finalizing", "cancelling"];

/** OpenAI's completion_window: the one it offers. */
export const COMPLETION_WINDOWS: Record<string, number> = { "24h": 24 * 3_600_000 };

export interface Batch {
  id: string;
  keyId: string;
  endpoint: BatchEndpoint;
  inputFileId: string;
  completionWindow: string;
  status: BatchStatus;
  metadata: Record<string, string> | null;
  createdMs: number;
  expiresMs: number;
  /** When it entered each status. */
  times: Partial<Record<BatchStatus, number>>;
  counts: { total: number; completed: number; failed: number };
  outputFileId: string | null;
  errorFileId: string | null;
  errors: LineError[] | null;
  leaseOwner: string | null;
  leaseUntilMs: number | null;
}

/** OpenAI's errors.data entry: a bad line of the input file. */
export interface LineError {
  code: string;
  message: string;
  param: string | null;
  line: number;
}

export interface BatchLine {
  line: number;
  customId: string;
  body: Record<string, unknown>;
}

/**
 * Checks an input file line by line, as OpenAI does: one JSON object per line, a unique
 * custom_id, method POST, url equal to the batch's endpoint, and a body. Lines are numbered
 * from 1. A file with any bad line fails its batch, every bad line named.
 */
export function parseBatchFile(content: string, endpoint: BatchEndpoint, maxLines: number): { lines: BatchLine[]; errors: LineError[] } {
  const lines: BatchLine[] = [];
  const errors: LineError[] = [];
  const seen = new Set<string>();
  const texts = content.split("\n");
  if (texts.at(-1)?.trim() === "") texts.pop();
  if (texts.length === 0) errors.push({ code: "empty_file", message: "The input file has no requests.", param: null, line: 0 });
  if (texts.length > maxLines) errors.push({ code: "too_many_requests", message: `The input file has ${texts.length} requests; a batch takes at most ${maxLines}.`, param: null, line: maxLines + 1 });
  texts.slice(0, maxLines).forEach((text, i) => {
    const line = i + 1;
    const bad = (code: string, message: string, param: string | null = null) => errors.push({ code, message, param, line });
    let request: unknown;
    try {
      request = JSON.parse(text);
    } catch {
      return bad("invalid_json_line", `Line ${line} is not valid JSON.`);
    }
    if (!request || typeof request !== "object" || Array.isArray(request)) return bad("invalid_request", `Line ${line} is not a JSON object.`);
    const { custom_id: customId, method, url, body } = request as Record<string, unknown>;
    if (typeof customId !== "string" || customId.length === 0) return bad("missing_required_parameter", `Line ${line} has no custom_id.`, "custom_id");
    if (seen.has(customId)) return bad("duplicate_custom_id", `Line ${line}'s custom_id "${customId}" is used by an earlier line; each must be unique.`, "custom_id");
    seen.add(customId);
    if (method !== "POST") return bad("invalid_method", `Line ${line}'s method must be POST.`, "method");
    if (url !== endpoint) return bad("mismatched_url", `Line ${line}'s url is ${JSON.stringify(url)}, but the batch's endpoint is ${endpoint}; every line must use it.`, "url");
    if (!body || typeof body !== "object" || Array.isArray(body)) return bad("missing_required_parameter", `Line ${line} has no body object.`, "body");
    lines.push({ line, customId, body: body as Record<string, unknown> });
  });
  return { lines, errors };
}

export class BatchStore {
  constructor(private readonly db: Kysely<Database>) {}

  async create(spec: { keyId: string; endpoint: BatchEndpoint; inputFileId: string; completionWindow: string; metadata: Record<string, string> | null }, nowMs = Date.now()): Promise<Batch> {
    const row: BatchTable = {
      id: `batch_${randomBytes(12).toString("base64url")}`, key_id: spec.keyId, endpoint: spec.endpoint, input_file_id: spec.inputFileId,
      completion_window: spec.completionWindow, status: "validating", metadata: spec.metadata ? JSON.stringify(spec.metadata) : null, created_ms: nowMs,
      expires_ms: nowMs + COMPLETION_WINDOWS[spec.completionWindow], times: "{}", total: 0, completed: 0, failed: 0,
      output_file_id: null, error_file_id: null, errors: null, lease_owner: null, lease_until_ms: null,
    };
    await this.db.insertInto("batches").values(row).execute();
    return toBatch(row);
  }

  /** A batch, if `keyId` may see it (null: the admin, who sees all). */
  async get(id: string, keyId: string | null = null): Promise<Batch | null> {
    const row = await this.db.selectFrom("batches").selectAll().where("id", "=", id).executeTakeFirst();
    return row && (keyId === null || row.key_id === keyId) ? toBatch(row) : null;
  }

  /** A key's batches (the admin's: all), newest first, after the cursor `after` (a batch id). */
  async list(keyId: string | null, limit: number, after?: string): Promise<Batch[]> {
    let query = this.db.selectFrom("batches").selectAll().orderBy("created_ms", "desc").orderBy("id", "desc").limit(limit);
    if (keyId !== null) query = query.where("key_id", "=", keyId);
    if (after) {
      const cursor = await this.db.selectFrom("batches").select(["created_ms", "id"]).where("id", "=", after).executeTakeFirst();
      if (cursor) query = query.where((eb) => eb.or([eb("created_ms", "<", cursor.created_ms), eb.and([eb("created_ms", "=", cursor.created_ms), eb("id", "<", cursor.id)])]));
    }
    return (await query.execute()).map(toBatch);
  }

  /** Asks a running batch to stop: validating or in_progress becomes cancelling (the runner then finishes it as cancelled). */
  async cancel(id: string, keyId: string | null, nowMs = Date.now()): Promise<Batch | null> {
    const batch = await this.get(id, keyId);
    if (!batch) return null;
    if (batch.status === "validating" || batch.status === "in_progress") {
      await this.db.updateTable("batches").set({ status: "cancelling", times: JSON.stringify({ ...batch.times, cancelling: nowMs }) })
        .where("id", "=", id).where("status", "in", ["validating", "in_progress"]).execute();
    }
    return this.get(id);
  }

  /**
   * Takes one active batch for `replica` for `leaseMs`: one whose lease is free or ran out (its
   * replica died), or its own. Returns it with the lease's previous owner, or null.
   */
  async claim(replica: string, leaseMs: number, nowMs = Date.now()): Promise<{ batch: Batch; previousOwner: string | null } | null> {
    const candidates = await this.db.selectFrom("batches").select(["id", "lease_owner"]).where("status", "in", [...ACTIVE_STATUSES])
      .where((eb) => eb.or([eb("lease_until_ms", "is", null), eb("lease_until_ms", "<", nowMs), eb("lease_owner", "=", replica)]))
      .orderBy("created_ms").limit(8).execute();
    for (const candidate of candidates) {
      // NOTE: one conditional UPDATE: of two replicas that saw the same free batch, one takes it.
      const result = await this.db.updateTable("batches").set({ lease_owner: replica, lease_until_ms: nowMs + leaseMs })
        .where("id", "=", candidate.id).where("status", "in", [...ACTIVE_STATUSES])
        .where((eb) => eb.or([eb("lease_until_ms", "is", null), eb("lease_until_ms", "<", nowMs), eb("lease_owner", "=", replica)]))
        .executeTakeFirst();
      if (Number(result.numUpdatedRows) === 1) return { batch: (await this.get(candidate.id))!, previousOwner: candidate.lease_owner };
    }
    return null;
  }

  /** Extends `replica`'s lease; false when another replica has taken the batch over. */
  async renew(id: string, replica: string, leaseMs: number, nowMs = Date.now()): Promise<boolean> {
    const result = await this.db.updateTable("batches").set({ lease_until_ms: nowMs + leaseMs }).where("id", "=", id).where("lease_owner", "=", replica).executeTakeFirst();
    return Number(result.numUpdatedRows) === 1;
  }

  /** Moves a batch to `status` (recording when), with the other fields given. */
  async setStatus(batch: Batch, status: BatchStatus, fields: Partial<Pick<BatchTable, "output_file_id" | "error_file_id" | "errors" | "total">> = {}, nowMs = Date.now()): Promise<Batch> {
    const current = (await this.get(batch.id))!;
    await this.db.updateTable("batches").set({ status, times: JSON.stringify({ ...current.times, [status]: nowMs }), ...fields, ...(TERMINAL.has(status) ? { lease_owner: null, lease_until_ms: null } : {}) })
      .where("id", "=", batch.id).execute();
    return (await this.get(batch.id))!;
  }

  /** Stores a validated file's lines (once: a re-run after a crash finds them there). */
  async addLines(batchId: string, lines: readonly BatchLine[]): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom("batch_lines").where("batch_id", "=", batchId).execute();
      for (let i = 0; i < lines.length; i += 200) {
        await trx.insertInto("batch_lines").values(lines.slice(i, i + 200).map((l) => ({
          batch_id: batchId, line: l.line, custom_id: l.customId, body: JSON.stringify(l.body), status: "pending", result: null,
        }))).execute();
      }
      await trx.updateTable("batches").set({ total: lines.length }).where("id", "=", batchId).execute();
    });
  }

  /** Up to `limit` lines not run yet, in order, skipping `skip` (those in flight). */
  async pendingLines(batchId: string, limit: number, skip: ReadonlySet<number>): Promise<BatchLine[]> {
    const rows = await this.db.selectFrom("batch_lines").select(["line", "custom_id", "body"]).where("batch_id", "=", batchId).where("status", "=", "pending")
      .orderBy("line").limit(limit + skip.size).execute();
    return rows.filter((r) => !skip.has(Number(r.line))).slice(0, limit).map((r) => ({ line: Number(r.line), customId: r.custom_id, body: JSON.parse(r.body) as Record<string, unknown> }));
  }

  /** Records a line's result (done or error) and counts it, once: a line already recorded is left alone. */
  async finishLine(batchId: string, line: number, ok: boolean, result: string): Promise<boolean> {
    return this.db.transaction().execute(async (trx) => {
      const updated = await trx.updateTable("batch_lines").set({ status: ok ? "done" : "error", result })
        .where("batch_id", "=", batchId).where("line", "=", line).where("status", "=", "pending").executeTakeFirst();
      if (Number(updated.numUpdatedRows) === 0) return false;
      await trx.updateTable("batches").set(ok ? { completed: sql`completed + 1` } : { failed: sql`failed + 1` }).where("id", "=", batchId).execute();
      return true;
    });
  }

  /** The recorded results of a status's lines (done: the output file; error: the error file), in line order. */
  async results(batchId: string, status: "done" | "error"): Promise<string[]> {
    const rows = await this.db.selectFrom("batch_lines").select("result").where("batch_id", "=", batchId).where("status", "=", status).orderBy("line").execute();
    return rows.map((r) => r.result!);
  }
}

const TERMINAL = new Set<BatchStatus>(["completed", "failed", "expired", "cancelled"]);

function toBatch(row: BatchTable): Batch {
  return {
    id: row.id, keyId: row.key_id, endpoint: row.endpoint as BatchEndpoint, inputFileId: row.input_file_id, completionWindow: row.completion_window,
    status: row.status as BatchStatus, metadata: row.metadata ? (JSON.parse(row.metadata) as Record<string, string>) : null,
    createdMs: Number(row.created_ms), expiresMs: Number(row.expires_ms), times: JSON.parse(row.times) as Batch["times"],
    counts: { total: Number(row.total), completed: Number(row.completed), failed: Number(row.failed) },
    outputFileId: row.output_file_id, errorFileId: row.error_file_id, errors: row.errors ? (JSON.parse(row.errors) as LineError[]) : null,
    leaseOwner: row.lease_owner, leaseUntilMs: row.lease_until_ms === null ? null : Number(row.lease_until_ms),
  };
}
