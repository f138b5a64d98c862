/** `tokenmill serve` as its own process with a ledger and a replica id (bench/serve-process.ts does the starting). */
import { serveProcess as serve, type Serving } from "../../bench/serve-process.ts";

export type { Serving };

export function serveProcess(db: string, replica: string, dataDir: string, extraArgs: string[] = []): Promise<Serving> {
  return serve(["--db", db, "--replica-id", replica, "--kv-cache-memory", "256MiB", ...extraArgs], { name: `replica ${replica}`, env: { TOKENMILL_DATA_DIR: dataDir } });
}
