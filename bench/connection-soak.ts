/**
 * The connection checks of test/connections-e2e.test.ts, for as many rounds as asked, against
 * real `tokenmill serve` processes on loopback (drained with SIGTERM, as operators stop them):
 * - idle: a 50-socket pool idle 6 s, then 50 concurrent chats; counts resets;
 * - drain: 20 chats of 80 tokens in flight on a pooled socket each, 10 more written as SIGTERM
 *   lands, 10 more after it; counts the in-flight requests that got no 200 and every reset;
 * - oversized: 20 bodies of 24 MiB against an 8 MiB limit beside 24 small chats; counts 413s.
 *
 *   node --import tsx bench/connection-soak.ts [--idle-rounds 20] [--drains 10] [--oversized-rounds 3]
 */
import { parseArgs } from "node:util";
import { readCheckpoint } from "../models/checkpoint.ts";
import { ensureDefaultModel } from "../models/synthetic/default-model.ts";
import { drainRound, idleRound, oversizedRound, PooledClient } from "./connection-checks.ts";
import { serveProcess, type Serving } from "./serve-process.ts";

const { values } = parseArgs({ options: { "idle-rounds": { type: "string", default: "20" }, drains: { type: "string", default: "10" }, "oversized-rounds": { type: "string", default: "3" } } });
const [idleRounds, drains, oversizedRounds] = [values["idle-rounds"], values.drains, values["oversized-rounds"]].map(Number);
const model = readCheckpoint(ensureDefaultModel()).name;


function serve(args: string[] = []): Promise<Serving> {
  return serveProcess(["--db", "none", "--kv-cache-memory", "512MiB", "--max-num-seqs", "64", ...args]);
}

const report: Record<string, unknown> = {};
if (idleRounds > 0) {
  const server = await serve();
  const client = new PooledClient(server.url, 50);
  let resets = 0;
  let requests = 0;
  for (let round = 0; round < idleRounds; round++) {
    const result = await idleRound(client, model, { idleMs: 6000, concurrency: 50 });
    resets += result.resets;
    requests += result.statuses.length + result.resets;
  }
  client.close();
  server.child.kill("SIGTERM");
  await server.exited;
  report.idle = { rounds: idleRounds, requests, resets };
}
if (drains > 0) {
  let inFlightLost = 0;
  let resets = 0;
  const seen: Record<string, number> = {};
  for (let run = 0; run < drains; run++) {
    const server = await serve(["--shutdown-timeout", "30"]);
    const result = await drainRound(server.url, model, {
      inFlight: 20, maxTokens: 80, closeAfterMs: 400, justSent: 10, lateRequests: 10,
      close: async () => {
        server.child.kill("SIGTERM");
        await server.exited;
      },
    });
    inFlightLost += result.inFlight.filter((s) => s !== 200).length;
    for (const s of [...result.inFlight, ...result.justSent, ...result.late]) {
      seen[String(s)] = (seen[String(s)] ?? 0) + 1;
      if (s === "reset") resets++;
    }
  }
  report.drain = { runs: drains, inFlightLost, resets, outcomes: seen };
}
if (oversizedRounds > 0) {
  const server = await serve(["--max-body-size", "8MiB"]);
  let got413 = 0;
  let sent = 0;
  for (let round = 0; round < oversizedRounds; round++) {
    const result = await oversizedRound(server.url, model, { numOversized: 20, oversizedBytes: 24 * 1024 * 1024, numSmall: 24 });
    got413 += result.oversized.filter((s) => s === 413).length;
    sent += result.oversized.length;
  }
  server.child.kill("SIGTERM");
  await server.exited;
  report.oversized = { rounds: oversizedRounds, sent, got413 };
}
console.log(JSON.stringify(report, null, 2));
