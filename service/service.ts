/**
 * The service layer as a server starts it: the store, its keys and its ledger, with the
 * ledger's crash recovery done before the first request.
 */
import { hostname } from "node:os";
import { KeyStore } from "./keys.ts";
import { Ledger } from "./ledger.ts";
import { PriceBook, type Price } from "./prices.ts";
import { openStore, type Store, type StoreOptions } from "./store/open-store.ts";

export interface ServiceOptions extends StoreOptions {
  /** --db URL. */
  dbUrl: string;
  /** Meter requests into the ledger (off with --no-ledger). */
  ledger?: boolean;
  /** This replica's name in a fleet sharing one database (default: the host name). */
  replica?: string;
  onLedgerError?: (err: unknown) => void;
  /** --price: prices to put in effect now (unless the same price already is). */
  prices?: Omit<Price, "effectiveMs">[];
}

export interface Service {
  store: Store;
  keys: KeyStore;
  ledger: Ledger | null;
  prices: PriceBook;
  /** Rows a crash of this replica had left in flight, now interrupted. */
  numInterrupted: number;
  close(): Promise<void>;
}

export async function startService(options: ServiceOptions): Promise<Service> {
  const store = await openStore(options.dbUrl, options);
  const keys = new KeyStore(store.db);
  const prices = new PriceBook(store.db);
  for (const price of options.prices ?? []) await prices.set(price);
  const ledger = options.ledger === false ? null : new Ledger(store.db, options.replica ?? hostname(), options.onLedgerError, (model, atMs) => prices.priceAt(model, atMs));
  const numInterrupted = ledger ? await ledger.markInterrupted() : 0;
  return {
    store, keys, ledger, prices, numInterrupted,
    async close() {
      await ledger?.close();
      await store.close();
    },
  };
}
