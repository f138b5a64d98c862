/** The Responses store, in the database and in memory: per key, until its retention, purged after. */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { MemoryResponseStore, SqlResponseStore, type ResponseStore, type StoredResponse } from "../../service/response-store.ts";
import { openStore, type Store } from "../../service/store/open-store.ts";

const opened: Store[] = [];
afterAll(async () => {
  for (const store of opened) await store.close();
});

const stores: [string, () => Promise<ResponseStore>][] = [
  ["sqlite", async () => {
    const store = await openStore(`sqlite:${join(mkdtempSync(join(tmpdir(), "tokenmill-rs-")), "db.sqlite")}`);
    opened.push(store);
    return new SqlResponseStore(store.db);
  }],
  ["memory", async () => new MemoryResponseStore()],
];

const stored = (id: string, keyId: string, createdMs: number): StoredResponse => ({
  id, keyId, createdMs, response: { id, object: "response", output: [{ id: `msg_${id}`, type: "message" }] },
  conversation: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello" }], items: [{ id: `msg_${id}`, item: { id: `msg_${id}`, type: "message" } }],
});

describe.each(stores)("response store (%s)", (_name, make) => {
  it("keeps a response for its key only, until its retention, and purges it after", async () => {
    const store = await make();
    await store.put(stored("a", "key1", 1000), 500);
    await store.put(stored("b", "key1", 1200), 5000);
    expect(await store.get("a", "key1", 1499)).toMatchObject({ id: "a", keyId: "key1", conversation: [{ role: "user" }, { role: "assistant" }] });
    expect(await store.get("a", "key2", 1499)).toBeNull();
    expect(await store.item("msg_a", "key1", 1499)).toEqual({ id: "msg_a", type: "message" });
    expect(await store.item("msg_a", "key2", 1499)).toBeNull();
    expect(await store.get("a", "key1", 1500)).toBeNull();
    expect(await store.item("msg_a", "key1", 1500)).toBeNull();
    expect(await store.purge(1500)).toBe(1);
    expect(await store.get("b", "key1", 1500)).not.toBeNull();
    expect(await store.delete("b", "key2")).toBe(false);
    expect(await store.delete("b", "key1")).toBe(true);
    expect(await store.get("b", "key1", 1500)).toBeNull();
    expect(await store.item("msg_b", "key1", 1500)).toBeNull();
  });
});
