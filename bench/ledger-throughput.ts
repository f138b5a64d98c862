/**
 * The ledger on its own: how many request rows a second it commits (each an in-flight insert
 * and a final upsert, batched as the server batches them), on any --db. With limits, each
 * request also reserves its worst case before it "runs" (one transaction, as the server does
 * once its prompt is tokenized) and settles it in the ledger's transaction:
 * - none: no limit (the rows alone);
 * - key: a budget on the key;
 * - team: a budget on the key and on its team, reserved together.
 * The three run side by side in one call, so that their ratios hold on a noisy machine.
 */
import { randomUUID } from "node:crypto";
import { startService } from "../service/service.ts";

export type LedgerLevels = "none" | "key" | "team";
export const LEDGER_LEVELS: readonly LedgerLevels[] = ["none", "key", "team"];

export interface LedgerThroughput {
  levels: LedgerLevels;
  numRequests: number;
  seconds: number;
  requestsPerSecond: number;
  rowsWrittenPerSecond: number;
  numBatches: number;
}

/** Requests in flight at once: what a busy server has between admission and settlement. */
const IN_FLIGHT = 64;

export async function measureLedger(dbUrl: string, numRequests: number, levels: LedgerLevels = "none"): Promise<LedgerThroughput> {
  const service = await startService({ dbUrl, replica: `bench-${randomUUID().slice(0, 8)}`, prices: [{ model: "bench", inputPerMtok: 1_000_000, cachedInputPerMtok: 500_000, outputPerMtok: 2_000_000 }] });
  const ledger = service.ledger!;
  const run = randomUUID().slice(0, 8);
  const budget = { budgetMicroUsd: Number.MAX_SAFE_INTEGER, budgetPeriod: "month" as const };
  const limits = { rpm: null, tpm: null, maxParallel: null, tokenQuota: null, quotaPeriod: null, ...budget };
  const key = {
    keyId: `key_bench_${run}`, name: "bench", limits: levels === "none" ? { ...limits, budgetMicroUsd: null, budgetPeriod: null } : limits,
    team: levels === "team" ? { id: `team_bench_${run}`, name: "bench", limits, modelLimits: {} } : null,
  };
  const started = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < numRequests) {
      next++;
      const id = randomUUID();
      const admission = { id, requestId: id, keyId: key.keyId, teamId: key.team?.id ?? null, model: "bench", endpoint: "/v1/completions", startedMs: Date.now() };
      const ticket = await service.limiter.admit(key, id, admission.startedMs);
      ledger.admit(admission);
      await ticket?.reserveRun("bench", 128, 64, 64);
      await service.settle({
        ...admission, finishedMs: Date.now(), ttftMs: 5, outcome: "finished", usage: { promptTokens: 128, cachedPromptTokens: 32, completionTokens: 64 },
        reservations: ticket,
      });
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  const seconds = (performance.now() - started) / 1000;
  const result = {
    levels, numRequests, seconds, requestsPerSecond: numRequests / seconds, rowsWrittenPerSecond: ledger.numWritten / seconds, numBatches: ledger.numBatches,
  };
  await service.close();
  return result;
}
