/**
 * Which database errors mean "the store can't be reached or written now" (PostgreSQL down or
 * restarting, a dropped connection, a full disk, a locked or unwritable SQLite file), as
 * opposed to a fault in the query itself. The first kind is waited out: the ledger keeps the
 * rows and retries, and requests get a 503 with Retry-After meanwhile.
 */

/** PostgreSQL's SQLSTATE classes and codes for a server that is going away or not there yet. */
const PG_UNAVAILABLE = [/^08/, /^57P0[1-4]$/, /^53/, /^58/];
const NODE_UNAVAILABLE = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENOTFOUND", "EAI_AGAIN", "ENOSPC", "EIO"]);
const SQLITE_UNAVAILABLE = /^SQLITE_(FULL|IOERR|BUSY|LOCKED|CANTOPEN|READONLY|PROTOCOL)/;
/**
 * NOTE: SQLite rolls a transaction back by itself on SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY and
 * SQLITE_NOMEM; Kysely's own rollback then fails with "cannot rollback - no transaction is
 * active", and that error is the one thrown, hiding the first.
 */
const MESSAGES = /cannot rollback - no transaction is active|Connection terminated|connection .*(closed|ended|terminated)|terminating connection|timeout exceeded when trying to connect|Client has encountered a connection error|database or disk is full|disk I\/O error|the database system is (starting up|shutting down|in recovery mode)/i;

export function isStoreUnavailable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && (NODE_UNAVAILABLE.has(code) || SQLITE_UNAVAILABLE.test(code) || PG_UNAVAILABLE.some((p) => p.test(code)))) return true;
    if (e instanceof AggregateError && e.errors.some(isStoreUnavailable)) return true;
    if (e instanceof Error && MESSAGES.test(e.message)) return true;
  }
  return false;
}
