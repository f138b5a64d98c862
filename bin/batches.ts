/** `tokenmill batches`: list, show and cancel batch jobs in the service's database (the running server picks a cancel up). */
import { parseArgs } from "node:util";
import { BatchStore, type Batch } from "../service/batches.ts";
import { startService } from "../service/service.ts";
import { defaultDbUrl } from "../service/store/open-store.ts";
import { FlagError, dbUrlFlag, flagValue, intFlag } from "./flags.ts";

export const BATCHES_HELP = `tokenmill batches list [--limit N] [--key KEY_ID]
tokenmill batches show BATCH_ID
tokenmill batches cancel BATCH_ID
  --db URL                      sqlite:PATH or postgres://... (default: the server's)
  --json                        print JSON instead of text`;

export async function batchesCommand(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: { db: { type: "string", default: defaultDbUrl() }, limit: { type: "string", default: "20" }, key: { type: "string" }, json: { type: "boolean", default: false }, help: { type: "boolean", short: "h" } },
  });
  const [action, id] = positionals;
  if (values.help || !action) return void console.log(BATCHES_HELP);
  if (!["list", "show", "cancel"].includes(action)) throw new FlagError(`unknown batches action "${action}"; try list, show or cancel`);
  if (action !== "list" && !id) throw new FlagError(`batches ${action} takes a batch id (see batches list)`);
  const limit = flagValue("limit", values.limit, intFlag(1, 10_000));
  const service = await startService({ dbUrl: flagValue("db", values.db, dbUrlFlag), ledger: false });
  const print = (text: string, json: unknown) => console.log(values.json ? JSON.stringify(json) : text);
  try {
    const store = new BatchStore(service.store.db);
    if (action === "list") {
      const list = await store.list(values.key ?? null, limit);
      print(list.map(describe).join("\n") || "(no batches)", list);
    } else {
      const batch = action === "show" ? await store.get(id) : await store.cancel(id, null);
      if (!batch) throw new FlagError(`no batch with id ${id}`);
      const errors = batch.errors?.map((e) => `\n  line ${e.line}: ${e.code}: ${e.message}`).join("") ?? "";
      print(`${describe(batch)}${errors}`, batch);
    }
  } finally {
    await service.close();
  }
}

function describe(batch: Batch): string {
  const when = new Date(batch.createdMs).toISOString().replace("T", " ").slice(0, 19);
  const { total, completed, failed } = batch.counts;
  return `${batch.id}  ${batch.status}  ${batch.endpoint}  created ${when} UTC  key ${batch.keyId}  ${completed}/${total} done, ${failed} failed` +
    `${batch.outputFileId ? `  output ${batch.outputFileId}` : ""}${batch.errorFileId ? `  errors ${batch.errorFileId}` : ""}${batch.leaseOwner ? `  on ${batch.leaseOwner}` : ""}`;
}
