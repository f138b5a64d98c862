/**
 * Runs batch jobs in the server's idle capacity. Each line is sent through the server's own
 * request path (fastify's inject, in process), as its batch's key, so that routes, fallback,
 * data residency, limits and budgets apply to it as to any request. Its lines run at the batch
 * priority tier and price, a window of them at a time, so they never fill the queue:
 * interactive requests keep their latency and the batch soaks up what is left.
 *
 * Durability: a batch's lines and results are in the database. A line's ledger row has an id of
 * its own (batch_ID_LINE), so a line re-run after a crash replaces its row: billed once. A
 * replica runs a batch while it holds its lease, renewed as it works; a replica that dies stops
 * renewing, and another takes the batch over, giving back the holds the dead one's lines had.
 */
import { randomBytes } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { BatchStore, parseBatchFile, type Batch, type BatchLine } from "../../service/batches.ts";
import type { FileStore } from "../../service/files.ts";
import type { ServerMetrics } from "../http/metrics.ts";

export interface BatchRunnerOptions {
  batches: BatchStore;
  files: FileStore;
  /** This replica's name (its lease's owner). */
  replica: string;
  /** The secret the auth hook takes from the runner alone (http/auth.ts). */
  internalSecret: string;
  /** Lines of one batch in flight at once (--batch-concurrency). */
  concurrency: number;
  /** At most this many requests in a batch's input file (--max-batch-lines). */
  maxLines: number;
  /** How long an output or error file is kept (--batch-file-retention). */
  fileRetentionMs: number;
  leaseMs?: number;
  pollMs?: number;
  metrics: ServerMetrics;
  /** Gives back the holds a dead replica's lines of this batch left (Meters.releaseHoldsOf). */
  releaseHolds?: (requestIdPrefix: string, replica: string) => Promise<number>;
  log?: { warn(details: object, message: string): void; error(details: object, message: string): void };
}

export const DEFAULT_LEASE_MS = 15_000;

export class BatchRunner {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  private lastCleanupMs = 0;

  constructor(private readonly app: FastifyInstance, private readonly options: BatchRunnerOptions) {}

  start(): void {
    this.timer = setInterval(() => this.wake(), this.options.pollMs ?? 500);
    this.timer.unref();
    this.wake();
  }

  /** Looks for work now (a batch was just created here), unless a run is under way; the poll finds the rest. */
  wake(): void {
    if (this.running || this.stopped || !this.timer) return;
    this.running = this.tick().catch((err: unknown) => this.options.log?.error({ err }, "the batch runner failed")).finally(() => (this.running = null));
  }

  /** Stops taking work and waits for the lines in flight (whose batch another start, or replica, resumes). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.running;
  }

  private async tick(): Promise<void> {
    const { batches, files, replica } = this.options;
    const nowMs = Date.now();
    if (nowMs - this.lastCleanupMs > 60_000) {
      this.lastCleanupMs = nowMs;
      await files.deleteExpired(nowMs);
    }
    const claimed = await batches.claim(replica, this.leaseMs);
    if (!claimed) return;
    const { batch, previousOwner } = claimed;
    if (previousOwner && previousOwner !== replica) {
      const released = (await this.options.releaseHolds?.(`batch_${batch.id}_`, previousOwner)) ?? 0;
      this.options.log?.warn({ batch: batch.id, from: previousOwner, released }, "took over a batch whose replica stopped renewing its lease");
    }
    await this.run(batch);
  }

  private get leaseMs(): number {
    return this.options.leaseMs ?? DEFAULT_LEASE_MS;
  }

  private async run(start: Batch): Promise<void> {
    const { batches, files } = this.options;
    let batch = start;
    if (batch.status === "validating") {
      const content = await files.content(batch.inputFileId, null);
      const { lines, errors } = content === null
        ? { lines: [], errors: [{ code: "file_not_found", message: `The input file ${batch.inputFileId} no longer exists.`, param: "input_file_id", line: 0 }] }
        : parseBatchFile(content, batch.endpoint, this.options.maxLines);
      if (errors.length > 0) {
        await batches.setStatus(batch, "failed", { errors: JSON.stringify(errors) });
        return;
      }
      await batches.addLines(batch.id, lines);
      batch = await batches.setStatus(batch, "in_progress");
    }
    if (batch.status === "in_progress" || batch.status === "cancelling") batch = await this.runLines(batch);
    if (batch.status === "finalizing" || batch.status === "cancelling") await this.finalize(batch);
  }

  /** Runs the batch's pending lines, a window at a time, until none is left, it is cancelled, it expires, or its lease is lost. */
  private async runLines(start: Batch): Promise<Batch> {
    const { batches } = this.options;
    const inFlight = new Map<number, Promise<void>>();
    let batch = start;
    let renewedMs = Date.now();
    let expired = false;
    for (;;) {
      const current = (await batches.get(batch.id))!;
      if (current.status === "cancelling") batch = current;
      expired = Date.now() > current.expiresMs;
      const stopping = batch.status === "cancelling" || expired || this.stopped;
      if (Date.now() - renewedMs > this.leaseMs / 3) {
        if (!(await batches.renew(batch.id, this.options.replica, this.leaseMs))) {
          // NOTE: another replica took the batch over (this one was too slow to renew): let it finish the batch.
          await Promise.all(inFlight.values());
          return (await batches.get(batch.id))!;
        }
        renewedMs = Date.now();
      }
      if (!stopping) {
        const room = this.options.concurrency - inFlight.size;
        const lines = room > 0 ? await batches.pendingLines(batch.id, room, new Set(inFlight.keys())) : [];
        for (const line of lines) {
          const done = this.runLine(batch, line).finally(() => inFlight.delete(line.line));
          inFlight.set(line.line, done);
        }
        const { total, completed, failed } = current.counts;
        this.options.metrics.batchQueueDepth.set({ replica: this.options.replica }, Math.max(0, total - completed - failed - inFlight.size));
        if (lines.length === 0 && inFlight.size === 0) break;
      } else if (inFlight.size === 0) {
        break;
      }
      if (inFlight.size > 0) await Promise.race([...inFlight.values(), new Promise((r) => setTimeout(r, 200))]);
    }
    if (this.stopped && batch.status !== "cancelling" && !expired) return batch;
    if (batch.status === "cancelling") return batch;
    if (expired) {
      await this.finalize(batch, "expired");
      return (await batches.get(batch.id))!;
    }
    return batches.setStatus(batch, "finalizing");
  }

  /** One line through the server's own request path, as the batch's key; its result is recorded once. */
  private async runLine(batch: Batch, line: BatchLine): Promise<void> {
    const requestId = `batch_req_${randomBytes(12).toString("base64url")}`;
    // NOTE: a batch answers whole responses: a line asking to stream gets the response unstreamed.
    const { stream: _stream, stream_options: _options, ...body } = line.body;
    const response = await this.app.inject({
      method: "POST", url: batch.endpoint, payload: body,
      headers: {
        "content-type": "application/json", "x-request-id": requestId, "x-tokenmill-internal": this.options.internalSecret,
        "x-tokenmill-key-id": batch.keyId, "x-tokenmill-batch-line": `${batch.id}:${line.line}`,
      },
    });
    let parsed: unknown;
    try {
      parsed = JSON.parse(response.body);
    } catch {
      parsed = { error: { message: response.body.slice(0, 1000), type: "server_error", param: null, code: null } };
    }
    const ok = response.statusCode >= 200 && response.statusCode < 300;
    const result = JSON.stringify({
      id: requestId, custom_id: line.customId, response: { status_code: response.statusCode, request_id: requestId, body: parsed },
      error: ok ? null : { code: (parsed as { error?: { code?: string } }).error?.code ?? String(response.statusCode), message: (parsed as { error?: { message?: string } }).error?.message ?? "" },
    });
    if (await this.options.batches.finishLine(batch.id, line.line, ok, result)) this.options.metrics.batchRequests.inc({ status: ok ? "completed" : "failed" });
  }

  /** Writes the output and error files from the recorded results, and ends the batch (completed, or as cancelled or expired). */
  private async finalize(batch: Batch, ending?: "expired"): Promise<void> {
    const { batches, files } = this.options;
    const status = ending ?? (batch.status === "cancelling" ? "cancelled" : "completed");
    const [done, errors] = await Promise.all([batches.results(batch.id, "done"), batches.results(batch.id, "error")]);
    if (status === "expired") {
      // As OpenAI does, the requests an expired batch never ran are in its error file, with code batch_expired.
      for (const line of await batches.pendingLines(batch.id, Number.MAX_SAFE_INTEGER, new Set())) {
        errors.push(JSON.stringify({ id: `batch_req_${randomBytes(12).toString("base64url")}`, custom_id: line.customId, response: null, error: { code: "batch_expired", message: "This request could not be executed before the completion window expired." } }));
      }
    }
    const expiresMs = Date.now() + this.options.fileRetentionMs;
    const write = async (lines: string[], name: string) => (lines.length === 0 ? null
      : (await files.create({ keyId: batch.keyId, purpose: "batch_output", filename: `${batch.id}_${name}.jsonl`, content: `${lines.join("\n")}\n`, expiresMs })).id);
    const outputFileId = await write(done, "output");
    const errorFileId = await write(errors, "error");
    await batches.setStatus(batch, status, { output_file_id: outputFileId, error_file_id: errorFileId });
    this.options.metrics.batchQueueDepth.set({ replica: this.options.replica }, 0);
  }
}
