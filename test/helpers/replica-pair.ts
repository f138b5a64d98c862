/**
 * Two `tokenmill serve` processes on one throwaway PostgreSQL, for a describe block: the
 * default model priced at $1 per million output tokens (input free, so a request costs its
 * output tokens in micro-USD), the admin key, and alert webhooks to a receiver that keeps
 * every body. Made before the block's tests and stopped after them.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { ADMIN, MODEL, startWebhookReceiver } from "./limits.ts";
import { startPostgres, type TestPostgres } from "./postgres.ts";
import { serveProcess, type Serving } from "./serve-process.ts";

export interface ReplicaPair<Hook> {
  pg: TestPostgres;
  /** The processes' scratch folder. */
  dir: string;
  /** The two replicas; a test may replace one (restart it with serveProcess(pg.url, name, dir, args)). */
  replicas: Serving[];
  /** Every webhook body the receiver got, parsed. */
  hooks: Hook[];
  /** The serve flags both run with. */
  args: string[];
  urls(): string[];
}

export function replicaPair<Hook>(name: string): ReplicaPair<Hook> {
  const pair = { replicas: [], hooks: [], args: [], urls: () => pair.replicas.map((r) => r.url) } as unknown as ReplicaPair<Hook>;
  let receiver: Awaited<ReturnType<typeof startWebhookReceiver>> | undefined;
  beforeAll(async () => {
    pair.pg = await startPostgres();
    pair.dir = mkdtempSync(join(tmpdir(), `tokenmill-${name}-`));
    receiver = await startWebhookReceiver((body) => {
      pair.hooks.push(JSON.parse(body) as Hook);
      return 204;
    });
    pair.args = ["--price", `${MODEL}=0,0,1`, "--admin-key", ADMIN, "--alert-webhook", receiver.url];
    pair.replicas.push(...(await Promise.all([serveProcess(pair.pg.url, "a", pair.dir, pair.args), serveProcess(pair.pg.url, "b", pair.dir, pair.args)])));
  }, 120_000);
  afterAll(async () => {
    await Promise.all(pair.replicas.map((r) => r.stop()));
    receiver?.close();
    pair.pg?.stop();
    if (pair.dir) rmSync(pair.dir, { recursive: true, force: true });
  });
  return pair;
}
