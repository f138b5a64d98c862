/** A throwaway PostgreSQL server for a test file (bench/postgres.ts, which benches that need a shared ledger use too). */
export { startPostgres, type TestPostgres } from "../../bench/postgres.ts";
