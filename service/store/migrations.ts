/**
 * Migrations, in order, as Kysely's Migrator runs them: plain, dialect-neutral schema builder
 * calls, so the one list serves SQLite and PostgreSQL. Never edit a landed migration; add one.
 */
import { sql, type Kysely, type Migration, type MigrationProvider } from "kysely";

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
  "004_key_limits": {
    async up(db: Kysely<unknown>) {
      // NOTE: one column per ALTER: SQLite adds no more at once.
      for (const [column, type] of [["rpm", "bigint"], ["tpm", "bigint"], ["max_parallel", "bigint"], ["budget_micro_usd", "bigint"], ["budget_period", "text"], ["token_quota", "bigint"], ["quota_period", "text"]] as const) {
        await db.schema.alterTable("api_keys").addColumn(column, type).execute();
      }
      await db.schema.createTable("key_meters")
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("meter", "text", (c) => c.notNull())
        .addColumn("period_start_ms", "bigint", (c) => c.notNull())
        .addColumn("used", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("reserved", "bigint", (c) => c.notNull().defaultTo(0))
        .addPrimaryKeyConstraint("key_meters_pk", ["key_id", "meter", "period_start_ms"])
        .execute();
      await db.schema.createTable("limit_reservations")
        .addColumn("request_id", "text", (c) => c.notNull())
        .addColumn("meter", "text", (c) => c.notNull())
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("period_start_ms", "bigint", (c) => c.notNull())
        .addColumn("amount", "bigint", (c) => c.notNull())
        .addColumn("replica", "text", (c) => c.notNull())
        .addPrimaryKeyConstraint("limit_reservations_pk", ["request_id", "meter"])
        .execute();
      await db.schema.createIndex("limit_reservations_replica").on("limit_reservations").column("replica").execute();
      await db.schema.createTable("rate_buckets")
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("tokens", "double precision", (c) => c.notNull())
        .addColumn("updated_ms", "bigint", (c) => c.notNull())
        .addPrimaryKeyConstraint("rate_buckets_pk", ["key_id", "kind"])
        .execute();
      await db.schema.createTable("budget_alerts")
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("meter", "text", (c) => c.notNull())
        .addColumn("period_start_ms", "bigint", (c) => c.notNull())
        .addColumn("threshold", "integer", (c) => c.notNull())
        .addColumn("fired_ms", "bigint", (c) => c.notNull())
        .addColumn("replica", "text", (c) => c.notNull())
        .addColumn("delivered_ms", "bigint")
        .addColumn("payload", "text", (c) => c.notNull())
        .addPrimaryKeyConstraint("budget_alerts_pk", ["key_id", "meter", "period_start_ms", "threshold"])
        .execute();
    },
  },
  "005_ledger_backend": {
    async up(db: Kysely<unknown>) {
      await db.schema.alterTable("usage_ledger").addColumn("backend", "text").execute();
      await db.schema.alterTable("usage_ledger").addColumn("route", "text").execute();
    },
  },
  "006_responses": {
    async up(db: Kysely<unknown>) {
      await db.schema.createTable("stored_responses")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("created_ms", "bigint", (c) => c.notNull())
        .addColumn("expires_ms", "bigint", (c) => c.notNull())
        .addColumn("response", "text", (c) => c.notNull())
        .addColumn("conversation", "text", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("stored_responses_expiry").on("stored_responses").column("expires_ms").execute();
      await db.schema.createTable("stored_response_items")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("response_id", "text", (c) => c.notNull())
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("item", "text", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("stored_response_items_response").on("stored_response_items").column("response_id").execute();
    },
  },
  "007_teams": {
    async up(db: Kysely<unknown>) {
      const limitColumns = [["rpm", "bigint"], ["tpm", "bigint"], ["max_parallel", "bigint"], ["budget_micro_usd", "bigint"], ["budget_period", "text"], ["token_quota", "bigint"], ["quota_period", "text"]] as const;
      let teams = db.schema.createTable("teams")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("name", "text", (c) => c.notNull().unique())
        .addColumn("models", "text")
        .addColumn("metadata", "text")
        .addColumn("priority", "text")
        .addColumn("created_ms", "bigint", (c) => c.notNull());
      for (const [column, type] of limitColumns) teams = teams.addColumn(column, type);
      await teams
        .addColumn("member_budget_micro_usd", "bigint")
        .addColumn("member_budget_period", "text")
        .addColumn("model_limits", "text")
        .addColumn("data_residency", "text")
        .execute();
      for (const column of ["team_id", "model_limits", "data_residency"]) await db.schema.alterTable("api_keys").addColumn(column, "text").execute();
      await db.schema.createIndex("api_keys_team").on("api_keys").column("team_id").execute();
      for (const column of ["team_id", "residency"]) await db.schema.alterTable("usage_ledger").addColumn(column, "text").execute();
      await db.schema.createIndex("usage_ledger_team_time").on("usage_ledger").columns(["team_id", "started_ms"]).execute();
      // A request now holds the same meter at two levels (its key's and its team's): the holds' key gains the owner.
      await db.schema.createTable("limit_holds")
        .addColumn("request_id", "text", (c) => c.notNull())
        .addColumn("owner_id", "text", (c) => c.notNull())
        .addColumn("meter", "text", (c) => c.notNull())
        .addColumn("period_start_ms", "bigint", (c) => c.notNull())
        .addColumn("amount", "bigint", (c) => c.notNull())
        .addColumn("replica", "text", (c) => c.notNull())
        .addPrimaryKeyConstraint("limit_holds_pk", ["request_id", "owner_id", "meter"])
        .execute();
      await db.schema.createIndex("limit_holds_replica").on("limit_holds").column("replica").execute();
      await sql`insert into limit_holds (request_id, owner_id, meter, period_start_ms, amount, replica)
        select request_id, key_id, meter, period_start_ms, amount, replica from limit_reservations`.execute(db);
      await db.schema.dropTable("limit_reservations").execute();
    },
  },
  "008_batches": {
    async up(db: Kysely<unknown>) {
      await db.schema.createTable("files")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("purpose", "text", (c) => c.notNull())
        .addColumn("filename", "text", (c) => c.notNull())
        .addColumn("bytes", "bigint", (c) => c.notNull())
        .addColumn("created_ms", "bigint", (c) => c.notNull())
        .addColumn("expires_ms", "bigint")
        .addColumn("content", "text", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("files_key").on("files").columns(["key_id", "created_ms"]).execute();
      await db.schema.createTable("batches")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("key_id", "text", (c) => c.notNull())
        .addColumn("endpoint", "text", (c) => c.notNull())
        .addColumn("input_file_id", "text", (c) => c.notNull())
        .addColumn("completion_window", "text", (c) => c.notNull())
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("metadata", "text")
        .addColumn("created_ms", "bigint", (c) => c.notNull())
        .addColumn("expires_ms", "bigint", (c) => c.notNull())
        .addColumn("times", "text", (c) => c.notNull())
        .addColumn("total", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("completed", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("failed", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("output_file_id", "text")
        .addColumn("error_file_id", "text")
        .addColumn("errors", "text")
        .addColumn("lease_owner", "text")
        .addColumn("lease_until_ms", "bigint")
        .execute();
      await db.schema.createIndex("batches_status").on("batches").column("status").execute();
      await db.schema.createTable("batch_lines")
        .addColumn("batch_id", "text", (c) => c.notNull())
        .addColumn("line", "bigint", (c) => c.notNull())
        .addColumn("custom_id", "text", (c) => c.notNull())
        .addColumn("body", "text", (c) => c.notNull())
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("result", "text")
        .addPrimaryKeyConstraint("batch_lines_pk", ["batch_id", "line"])
        .execute();
      await db.schema.createIndex("batch_lines_status").on("batch_lines").columns(["batch_id", "status", "line"]).execute();
      await db.schema.alterTable("usage_ledger").addColumn("tier", "text").execute();
      await db.schema.alterTable("prices").addColumn("batch_discount_percent", "bigint").execute();
    },
  },
};

export const migrationProvider: MigrationProvider = { getMigrations: async () => MIGRATIONS };
