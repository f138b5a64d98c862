/**
 * The service layer as a server starts it: the store, its keys and its ledger, with the
 * ledger's crash recovery done before the first request.
 */
import { hostname } from "node:os";
import { KeyStore } from "./keys.ts";
import { Ledger } from "./ledger.ts";
import { openStore, type Store, type StoreOptions } from "./store/open-store.ts";

export interface ServiceOptions extends StoreOptions {
  /** --db URL. */
  dbUrl: string;
  /** Meter requests into the ledger (off with --no-ledger). */
  ledger?: boolean;
  /** This replica's name in a fleet sharing one database (default: the host name). */
  replica?: string;
  onLedgerError?: (err: unknown) => void;
}

export interface Service {
  store: Store;
  keys: KeyStore;
  ledger: Ledger | null;
  /** Rows a crash of this replica had left in flight, now interrupted. */
  numInterrupted: number;
  close(): Promise<void>;
}

export async function startService(options: ServiceOptions): Promise<Service> {
  const store = await openStore(options.dbUrl, options);
  const keys = new KeyStore(store.db);
  const ledger = options.ledger === false ? null : new Ledger(store.db, options.replica ?? hostname(), options.onLedgerError);
  const numInterrupted = ledger ? await ledger.markInterrupted() : 0;
  return {
    store, keys, ledger, numInterrupted,
    async close() {
      await ledger?.close();
      await store.close();
    },
  };
}
