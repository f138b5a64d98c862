/**
 * The ledger on its own: how many request rows a second it commits (each an in-flight insert
 * and a final upsert, batched as the server batches them), on any --db.
 */
import { randomUUID } from "node:crypto";
import { startService } from "../service/service.ts";

export interface LedgerThroughput {
  numRequests: number;
  seconds: number;
  requestsPerSecond: number;
  rowsWrittenPerSecond: number;
  numBatches: number;
}

export async function measureLedger(dbUrl: string, numRequests: number): Promise<LedgerThroughput> {
  const service = await startService({ dbUrl, replica: `bench-${randomUUID().slice(0, 8)}` });
  const ledger = service.ledger!;
  const started = performance.now();
  const settled: Promise<void>[] = [];
  for (let i = 0; i < numRequests; i++) {
    const id = randomUUID();
    const admission = { id, requestId: id, keyId: "bench", model: "bench", endpoint: "/v1/completions", startedMs: Date.now() };
    ledger.admit(admission);
    settled.push(ledger.settle({
      ...admission, finishedMs: Date.now(), ttftMs: 5, outcome: "finished", usage: { promptTokens: 128, cachedPromptTokens: 32, completionTokens: 64 },
    }));
  }
  await Promise.all(settled);
  const seconds = (performance.now() - started) / 1000;
  const result = {
    numRequests, seconds, requestsPerSecond: numRequests / seconds, rowsWrittenPerSecond: ledger.numWritten / seconds, numBatches: ledger.numBatches,
  };
  await service.close();
  return result;
}
