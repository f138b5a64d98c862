/**
 * OpenAI's Files and Batches APIs: POST/GET /v1/files, GET /v1/files/{id}[/content], DELETE
 * /v1/files/{id}; POST/GET /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel. A
 * key sees its own files and batches; the admin key sees all. The batches themselves run in
 * server/batch/batch-runner.ts.
 */
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { BATCH_ENDPOINTS, COMPLETION_WINDOWS, parseBatchFile, type Batch, type BatchEndpoint, type BatchStore } from "../../service/batches.ts";
import type { FileStore, StoredFile } from "../../service/files.ts";
import type {} from "@fastify/multipart";
import { batchNotFound, fileNotFound, invalidRequest, noStore } from "../common/api-error.ts";
import { parseBody } from "../common/parse-body.ts";
import type { Caller } from "../http/auth.ts";

export interface BatchRouteOptions {
  files: FileStore | null;
  batches: BatchStore | null;
  /** --max-batch-file-bytes and --max-batch-lines. */
  maxFileBytes: number;
  maxLines: number;
  /** Tells this replica's runner a batch is waiting (it starts at once instead of at its next poll). */
  onCreated?: () => void;
}

const seconds = (ms: number | null | undefined) => (ms === null || ms === undefined ? null : Math.floor(ms / 1000));

export function fileBody(file: StoredFile) {
  return { id: file.id, object: "file", bytes: file.bytes, created_at: seconds(file.createdMs), expires_at: seconds(file.expiresMs), filename: file.filename, purpose: file.purpose, status: "processed", status_details: null };
}

export function batchBody(batch: Batch) {
  const at = (status: keyof Batch["times"]) => seconds(batch.times[status]);
  return {
    id: batch.id, object: "batch", endpoint: batch.endpoint, errors: batch.errors ? { object: "list", data: batch.errors } : null,
    input_file_id: batch.inputFileId, completion_window: batch.completionWindow, status: batch.status,
    output_file_id: batch.outputFileId, error_file_id: batch.errorFileId, created_at: seconds(batch.createdMs),
    in_progress_at: at("in_progress"), expires_at: seconds(batch.expiresMs), finalizing_at: at("finalizing"), completed_at: at("completed"),
    failed_at: at("failed"), expired_at: at("expired"), cancelling_at: at("cancelling"), cancelled_at: at("cancelled"),
    request_counts: batch.counts, metadata: batch.metadata,
  };
}

const createBatch = z.object({
  input_file_id: z.string().min(1),
  endpoint: z.enum(BATCH_ENDPOINTS as unknown as [BatchEndpoint, ...BatchEndpoint[]]),
  completion_window: z.enum(Object.keys(COMPLETION_WINDOWS) as [string, ...string[]]),
  metadata: z.record(z.string().max(64), z.string().max(512)).refine((m) => Object.keys(m).length <= 16, "metadata takes at most 16 pairs").nullish(),
}).strict();
const listQuery = z.object({ after: z.string().optional(), limit: z.coerce.number().int().min(1).max(100).default(20), purpose: z.string().optional() }).loose();

/** The key whose files and batches a caller sees: its own, or everyone's for the admin (null). */
const ownerOf = (caller: Caller) => (caller.admin ? null : caller.keyId);

export function registerBatchRoutes(app: FastifyInstance, options: BatchRouteOptions): void {
  const files = () => options.files ?? (() => { throw noStore("file store"); })();
  const batches = () => options.batches ?? (() => { throw noStore("batch store"); })();

  app.post("/v1/files", async (request) => {
    if (!request.isMultipart()) throw invalidRequest("Upload a file as multipart/form-data, with the fields file and purpose.", "file");
    let purpose: string | null = null;
    let upload: { filename: string; content: string } | null = null;
    for await (const part of request.parts({ limits: { fileSize: options.maxFileBytes, files: 1 } })) {
      if (part.type === "file") {
        const buffer = await part.toBuffer().catch((err: { code?: string }) => {
          if (err.code === "FST_REQ_FILE_TOO_LARGE") throw invalidRequest(`The file is larger than the server takes (${options.maxFileBytes} bytes; --max-batch-file-bytes).`, "file", "file_too_large");
          throw err;
        });
        upload = { filename: part.filename, content: buffer.toString("utf8") };
      } else if (part.fieldname === "purpose") {
        purpose = String(part.value);
      }
    }
    if (!upload) throw invalidRequest("The upload has no file field.", "file");
    if (purpose !== "batch") throw invalidRequest(`purpose must be "batch" (the only purpose tokenmill takes files for); got ${JSON.stringify(purpose)}.`, "purpose");
    // NOTE: what can be checked before a batch names its endpoint is checked now, each bad line named.
    const urls = new Set<string>();
    for (const text of upload.content.split("\n")) {
      try {
        const url = (JSON.parse(text) as { url?: unknown }).url;
        if (typeof url === "string") urls.add(url);
      } catch {
        // reported below
      }
    }
    const endpoint = urls.size === 1 ? ([...urls][0] as BatchEndpoint) : "/v1/chat/completions";
    const checked = parseBatchFile(upload.content, endpoint, options.maxLines);
    const seenHere = checked.errors.filter((e) => e.code !== "mismatched_url" || urls.size > 1 || !BATCH_ENDPOINTS.includes(endpoint));
    if (seenHere.length > 0) {
      const first = seenHere[0];
      throw invalidRequest(`The file is not a valid batch input: ${seenHere.slice(0, 5).map((e) => `line ${e.line}: ${e.message}`).join(" ")}${seenHere.length > 5 ? ` (and ${seenHere.length - 5} more)` : ""}`, "file", first.code);
    }
    return fileBody(await files().create({ keyId: request.caller.keyId, purpose: "batch", filename: upload.filename, content: upload.content }));
  });

  app.get("/v1/files", async (request) => {
    const query = parseBody(listQuery, request.query);
    return { object: "list", data: (await files().list(ownerOf(request.caller), query.purpose)).map(fileBody), has_more: false };
  });

  app.get<{ Params: { id: string } }>("/v1/files/:id", async (request) => {
    const file = await files().get(request.params.id, ownerOf(request.caller));
    if (!file) throw fileNotFound(request.params.id);
    return fileBody(file);
  });

  app.get<{ Params: { id: string } }>("/v1/files/:id/content", async (request, reply) => {
    const content = await files().content(request.params.id, ownerOf(request.caller));
    if (content === null) throw fileNotFound(request.params.id);
    return reply.type("application/jsonl").send(content);
  });

  app.delete<{ Params: { id: string } }>("/v1/files/:id", async (request) => {
    if (!(await files().delete(request.params.id, ownerOf(request.caller)))) throw fileNotFound(request.params.id);
    return { id: request.params.id, object: "file", deleted: true };
  });

  app.post("/v1/batches", async (request) => {
    const body = parseBody(createBatch, request.body);
    const file = await files().get(body.input_file_id, ownerOf(request.caller));
    if (!file) throw fileNotFound(body.input_file_id);
    if (file.purpose !== "batch") throw invalidRequest(`The file ${file.id} is not a batch input (its purpose is ${file.purpose}).`, "input_file_id");
    const batch = await batches().create({
      keyId: request.caller.keyId, endpoint: body.endpoint, inputFileId: file.id, completionWindow: body.completion_window, metadata: body.metadata ?? null,
    });
    options.onCreated?.();
    return batchBody(batch);
  });

  app.get("/v1/batches", async (request) => {
    const query = parseBody(listQuery, request.query);
    const page = await batches().list(ownerOf(request.caller), query.limit + 1, query.after);
    const data = page.slice(0, query.limit).map(batchBody);
    return { object: "list", data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: page.length > query.limit };
  });

  app.get<{ Params: { id: string } }>("/v1/batches/:id", async (request) => {
    const batch = await batches().get(request.params.id, ownerOf(request.caller));
    if (!batch) throw batchNotFound(request.params.id);
    return batchBody(batch);
  });

  app.post<{ Params: { id: string } }>("/v1/batches/:id/cancel", async (request) => {
    const batch = await batches().cancel(request.params.id, ownerOf(request.caller));
    if (!batch) throw batchNotFound(request.params.id);
    return batchBody(batch);
  });
}
