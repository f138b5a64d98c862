/**
 * A database for one describe block: a SQLite file in a scratch folder, or a throwaway
 * PostgreSQL (bench/postgres.ts). It is made before the block's own beforeAll hooks and
 * removed after its afterAll hooks (vitest runs after-hooks in reverse), so a server or store
 * the block opens on it is closed first. Call it at the top of the describe block.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { startPostgres, type TestPostgres } from "./postgres.ts";

export interface TestDatabase {
  /** sqlite:… or postgres://… */
  readonly url: string;
  /** The scratch folder (the SQLite file, and room for the block's own files). */
  readonly dir: string;
  /** The PostgreSQL server (kind postgres), to pause and resume; null for SQLite. */
  readonly pg: TestPostgres | null;
}

export function testDatabase(kind: "sqlite" | "postgres", name: string): TestDatabase {
  const db = { url: "", dir: "", pg: null as TestPostgres | null };
  beforeAll(async () => {
    db.dir = mkdtempSync(join(tmpdir(), `tokenmill-${name}-`));
    if (kind === "postgres") db.pg = await startPostgres();
    db.url = db.pg ? db.pg.url : `sqlite:${join(db.dir, "tokenmill.db")}`;
  }, 60_000);
  afterAll(() => {
    db.pg?.stop();
    if (db.dir) rmSync(db.dir, { recursive: true, force: true });
  });
  return db;
}
