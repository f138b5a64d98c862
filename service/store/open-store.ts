/**
 * Opens the service's database from `--db URL` and brings its schema up to date:
 * - `sqlite:PATH` (the default, under $TOKENMILL_DATA_DIR) or `sqlite::memory:`: one process,
 *   no server; WAL with synchronous=NORMAL (or FULL with `sync: "full"`);
 * - `postgres://…`: shared by several replicas.
 * Migrations take Kysely's migration lock, so two replicas starting at once are safe.
 */
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import SQLite from "better-sqlite3";
import { Kysely, Migrator, PostgresDialect, SqliteDialect } from "kysely";
import pg from "pg";
import type { Database } from "./database.ts";
import { migrationProvider } from "./migrations.ts";

export interface Store {
  db: Kysely<Database>;
  kind: "sqlite" | "postgres";
  close(): Promise<void>;
}

export interface StoreOptions {
  /** SQLite only: "normal" (the default; WAL keeps every commit but the last few on power loss) or "full". */
  sync?: "normal" | "full";
}

/** The default database: `$TOKENMILL_DATA_DIR/tokenmill.db`, with the data dir `.data/` in the working directory. */
export function defaultDbUrl(): string {
  return `sqlite:${join(process.env.TOKENMILL_DATA_DIR ?? ".data", "tokenmill.db")}`;
}

export async function openStore(url: string, options: StoreOptions = {}): Promise<Store> {
  const store = url.startsWith("postgres://") || url.startsWith("postgresql://") ? openPostgres(url) : openSqlite(url, options);
  try {
    await migrate(store.db);
  } catch (err) {
    await store.close();
    throw err;
  }
  return store;
}

function openSqlite(url: string, options: StoreOptions): Store {
  if (!url.startsWith("sqlite:")) throw new Error(`--db takes sqlite:PATH or postgres://...; got "${url}"`);
  const path = url.slice("sqlite:".length);
  if (path !== ":memory:") mkdirSync(dirname(resolve(path)), { recursive: true });
  const sqlite = new SQLite(path);
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma(`synchronous = ${options.sync === "full" ? "FULL" : "NORMAL"}`);
  // NOTE: another process may hold the write lock for a moment (a replica migrating, the CLI); wait rather than fail.
  sqlite.pragma("busy_timeout = 5000");
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
  return { db, kind: "sqlite", close: () => db.destroy() };
}

function openPostgres(url: string): Store {
  // NOTE: pg returns BIGINT as a string by default; every BIGINT here (tokens, micro-USD, epoch ms) fits a double exactly.
  const types = { getTypeParser: (oid: number, format?: string) => (oid === 20 ? Number : pg.types.getTypeParser(oid, format as "text")) };
  const pool = new pg.Pool({ connectionString: url, max: 10, types: types as unknown as pg.CustomTypesConfig });
  // NOTE: a client whose server went away emits "error": an idle one on the pool, a checked-out one (pg-pool takes its
  // listener off at checkout) on itself. Unheard, either crashes the process. Its query fails; the pool discards it on release.
  pool.on("error", () => {});
  pool.on("connect", (client) => client.on("error", () => {}));
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  return { db, kind: "postgres", close: () => db.destroy() };
}

async function migrate(db: Kysely<Database>): Promise<void> {
  const { error, results } = await new Migrator({ db, provider: migrationProvider }).migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === "Error")?.migrationName;
    throw new Error(`the database migration${failed ? ` ${failed}` : ""} failed: ${error instanceof Error ? error.message : String(error)}`);
  }
}
