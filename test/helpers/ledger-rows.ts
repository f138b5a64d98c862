/** Every row of the usage ledger in the database at `dbUrl`, read with a store of its own (the server's may be gone). */
import { openStore } from "../../service/store/open-store.ts";

export async function ledgerRows(dbUrl: string) {
  const store = await openStore(dbUrl);
  try {
    return await store.db.selectFrom("usage_ledger").selectAll().execute();
  } finally {
    await store.close();
  }
}
