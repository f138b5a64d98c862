/**
 * Migrations, in order, as Kysely's Migrator runs them: plain, dialect-neutral schema builder
 * calls, so the one list serves SQLite and PostgreSQL. Never edit a landed migration; add one.
 */
import { type Kysely, type Migration, type MigrationProvider } from "kysely";

const MIGRATIONS: Record<string, Migration> = {
  "001_keys_and_ledger": {
    async up(db: Kysely<unknown>) {
      await db.schema.createTable("api_keys")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("prefix", "text", (c) => c.notNull())
        .addColumn("secret_hash", "text", (c) => c.notNull().unique())
        .addColumn("models", "text")
        .addColumn("metadata", "text")
        .addColumn("created_ms", "bigint", (c) => c.notNull())
        .addColumn("expires_ms", "bigint")
        .addColumn("revoked_ms", "bigint")
        .addColumn("last_used_ms", "bigint")
        .execute();
      await db.schema.createTable("usage_ledger")
        .addColumn("request_id", "text", (c) => c.primaryKey())
        .addColumn("http_request_id", "text")
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("model", "text", (c) => c.notNull())
        .addColumn("endpoint", "text", (c) => c.notNull())
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("uncached_input_tokens", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("cached_input_tokens", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("output_tokens", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("cost_micro_usd", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("started_ms", "bigint", (c) => c.notNull())
        .addColumn("finished_ms", "bigint")
        .addColumn("ttft_ms", "bigint")
        .addColumn("replica", "text", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("usage_ledger_key_time").on("usage_ledger").columns(["key_id", "started_ms"]).execute();
      await db.schema.createIndex("usage_ledger_status").on("usage_ledger").column("status").execute();
    },
  },
  "002_prices": {
    async up(db: Kysely<unknown>) {
      await db.schema.createTable("prices")
        .addColumn("model", "text", (c) => c.notNull())
        .addColumn("effective_ms", "bigint", (c) => c.notNull())
        .addColumn("input_micro_usd_per_mtok", "bigint", (c) => c.notNull())
        .addColumn("cached_input_micro_usd_per_mtok", "bigint", (c) => c.notNull())
        .addColumn("output_micro_usd_per_mtok", "bigint", (c) => c.notNull())
        .addPrimaryKeyConstraint("prices_pk", ["model", "effective_ms"])
        .execute();
    },
  },
  "003_key_priority": {
    async up(db: Kysely<unknown>) {
      await db.schema.alterTable("api_keys").addColumn("priority", "text").execute();
    },
  },
};

export const migrationProvider: MigrationProvider = { getMigrations: async () => MIGRATIONS };
