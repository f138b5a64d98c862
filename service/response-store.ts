/**
 * The Responses API's store: a response made with store: true is kept, for its key only, until
 * its retention ends, so that GET /v1/responses/{id} returns it, previous_response_id continues
 * its conversation, and item_reference names one of its output items. Kept in the service's
 * database (shared by replicas), or in memory when the server has none (--db none).
 */
import type { Kysely } from "kysely";
import type { Database } from "./store/database.ts";

export interface StoredResponse {
  id: string;
  keyId: string;
  createdMs: number;
  /** The response object as the client got it. */
  response: Record<string, unknown>;
  /** The conversation through this response's output (chat messages), for a continuation. */
  conversation: unknown[];
  /** Output items by id. */
  items: { id: string; item: unknown }[];
}

export interface ResponseStore {
  put(stored: StoredResponse, retentionMs: number): Promise<void>;
  /** The key's response; null when absent, expired or another key's. */
  get(id: string, keyId: string, nowMs?: number): Promise<StoredResponse | null>;
  /** An output item of one of the key's live responses. */
  item(id: string, keyId: string, nowMs?: number): Promise<unknown>;
  delete(id: string, keyId: string): Promise<boolean>;
  /** Drops what has expired; returns how many responses. */
  purge(nowMs?: number): Promise<number>;
}

export class SqlResponseStore implements ResponseStore {
  constructor(private readonly db: Kysely<Database>) {}

  async put(stored: StoredResponse, retentionMs: number): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.insertInto("stored_responses").values({
        id: stored.id, key_id: stored.keyId, created_ms: stored.createdMs, expires_ms: stored.createdMs + retentionMs,
        response: JSON.stringify(stored.response), conversation: JSON.stringify(stored.conversation),
      }).execute();
      for (const item of stored.items) {
        await trx.insertInto("stored_response_items").values({ id: item.id, response_id: stored.id, key_id: stored.keyId, item: JSON.stringify(item.item) }).execute();
      }
    });
  }

  async get(id: string, keyId: string, nowMs = Date.now()): Promise<StoredResponse | null> {
    const row = await this.db.selectFrom("stored_responses").selectAll().where("id", "=", id).where("key_id", "=", keyId).where("expires_ms", ">", nowMs).executeTakeFirst();
    if (!row) return null;
    const items = await this.db.selectFrom("stored_response_items").select(["id", "item"]).where("response_id", "=", id).execute();
    return {
      id, keyId, createdMs: Number(row.created_ms), response: JSON.parse(row.response) as Record<string, unknown>,
      conversation: JSON.parse(row.conversation) as unknown[], items: items.map((i) => ({ id: i.id, item: JSON.parse(i.item) as unknown })),
    };
  }

  async item(id: string, keyId: string, nowMs = Date.now()): Promise<unknown> {
    const row = await this.db.selectFrom("stored_response_items").innerJoin("stored_responses", "stored_responses.id", "stored_response_items.response_id")
      .select("stored_response_items.item").where("stored_response_items.id", "=", id).where("stored_response_items.key_id", "=", keyId)
      .where("stored_responses.expires_ms", ">", nowMs).executeTakeFirst();
    return row ? JSON.parse(row.item) as unknown : null;
  }

  async delete(id: string, keyId: string): Promise<boolean> {
    return this.db.transaction().execute(async (trx) => {
      const result = await trx.deleteFrom("stored_responses").where("id", "=", id).where("key_id", "=", keyId).executeTakeFirst();
      if (Number(result.numDeletedRows) === 0) return false;
      await trx.deleteFrom("stored_response_items").where("response_id", "=", id).execute();
      return true;
    });
  }

  async purge(nowMs = Date.now()): Promise<number> {
    return this.db.transaction().execute(async (trx) => {
      const expired = await trx.selectFrom("stored_responses").select("id").where("expires_ms", "<=", nowMs).execute();
      if (expired.length === 0) return 0;
      const ids = expired.map((r) => r.id);
      await trx.deleteFrom("stored_response_items").where("response_id", "in", ids).execute();
      await trx.deleteFrom("stored_responses").where("id", "in", ids).execute();
      return ids.length;
    });
  }
}

export class MemoryResponseStore implements ResponseStore {
  private readonly responses = new Map<string, { stored: StoredResponse; expiresMs: number }>();

  async put(stored: StoredResponse, retentionMs: number): Promise<void> {
    this.responses.set(stored.id, { stored: structuredClone(stored), expiresMs: stored.createdMs + retentionMs });
  }

  async get(id: string, keyId: string, nowMs = Date.now()): Promise<StoredResponse | null> {
    const entry = this.responses.get(id);
    return entry && entry.stored.keyId === keyId && entry.expiresMs > nowMs ? structuredClone(entry.stored) : null;
  }

  async item(id: string, keyId: string, nowMs = Date.now()): Promise<unknown> {
    for (const { stored, expiresMs } of this.responses.values()) {
      if (stored.keyId !== keyId || expiresMs <= nowMs) continue;
      const found = stored.items.find((i) => i.id === id);
      if (found) return structuredClone(found.item);
    }
    return null;
  }

  async delete(id: string, keyId: string): Promise<boolean> {
    const entry = this.responses.get(id);
    if (!entry || entry.stored.keyId !== keyId) return false;
    return this.responses.delete(id);
  }

  async purge(nowMs = Date.now()): Promise<number> {
    let n = 0;
    for (const [id, { expiresMs }] of this.responses) {
      if (expiresMs <= nowMs) n += Number(this.responses.delete(id));
    }
    return n;
  }
}
