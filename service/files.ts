/**
 * Files for the batch API, in the service's database (a table, on SQLite and PostgreSQL alike),
 * so that every replica sharing a PostgreSQL sees the same files and a batch can run on any of
 * them. A batch's input is at most --max-batch-file-bytes (default 64 MiB), held as text;
 * larger jobs are split into several batches, as OpenAI's limits (200 MB, 50,000 requests)
 * ask of its users too.
 */
import { randomBytes } from "node:crypto";
import type { Kysely } from "kysely";
import type { Database, FileTable } from "./store/database.ts";

/** What a file is for: batch (an upload) or batch_output (a batch's output or error file). */
export type FilePurpose = "batch" | "batch_output";

export interface StoredFile {
  id: string;
  keyId: string;
  purpose: FilePurpose;
  filename: string;
  bytes: number;
  createdMs: number;
  expiresMs: number | null;
}

export class FileStore {
  constructor(private readonly db: Kysely<Database>) {}

  async create(file: { keyId: string; purpose: FilePurpose; filename: string; content: string; expiresMs?: number | null }, nowMs = Date.now()): Promise<StoredFile> {
    const row: FileTable = {
      id: `file-${randomBytes(12).toString("base64url")}`, key_id: file.keyId, purpose: file.purpose, filename: file.filename,
      bytes: Buffer.byteLength(file.content), created_ms: nowMs, expires_ms: file.expiresMs ?? null, content: file.content,
    };
    await this.db.insertInto("files").values(row).execute();
    return toFile(row);
  }

  /** A key's files, newest first (the admin's: everyone's). */
  async list(keyId: string | null, purpose?: string, limit = 10_000): Promise<StoredFile[]> {
    let query = this.db.selectFrom("files").select(["id", "key_id", "purpose", "filename", "bytes", "created_ms", "expires_ms"]).orderBy("created_ms", "desc").limit(limit);
    if (keyId !== null) query = query.where("key_id", "=", keyId);
    if (purpose) query = query.where("purpose", "=", purpose);
    return (await query.execute()).map((row) => toFile({ ...row, content: "" }));
  }

  /** A file, if it exists and `keyId` may see it (null: the admin, who sees all). */
  async get(id: string, keyId: string | null): Promise<StoredFile | null> {
    const row = await this.db.selectFrom("files").select(["id", "key_id", "purpose", "filename", "bytes", "created_ms", "expires_ms"]).where("id", "=", id).executeTakeFirst();
    return row && (keyId === null || row.key_id === keyId) ? toFile({ ...row, content: "" }) : null;
  }

  async content(id: string, keyId: string | null): Promise<string | null> {
    const row = await this.db.selectFrom("files").select(["key_id", "content"]).where("id", "=", id).executeTakeFirst();
    return row && (keyId === null || row.key_id === keyId) ? row.content : null;
  }

  async delete(id: string, keyId: string | null): Promise<boolean> {
    let query = this.db.deleteFrom("files").where("id", "=", id);
    if (keyId !== null) query = query.where("key_id", "=", keyId);
    return Number((await query.executeTakeFirst()).numDeletedRows) > 0;
  }

  /** Deletes the files past their expiry; returns how many. */
  async deleteExpired(nowMs = Date.now()): Promise<number> {
    const result = await this.db.deleteFrom("files").where("expires_ms", "is not", null).where("expires_ms", "<=", nowMs).executeTakeFirst();
    return Number(result.numDeletedRows);
  }
}

function toFile(row: FileTable): StoredFile {
  return {
    id: row.id, keyId: row.key_id, purpose: row.purpose as FilePurpose, filename: row.filename, bytes: Number(row.bytes),
    createdMs: Number(row.created_ms), expiresMs: row.expires_ms === null ? null : Number(row.expires_ms),
  };
}
