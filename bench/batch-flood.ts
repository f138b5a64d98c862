/**
 * Batch jobs under measurement, on an in-process server with a ledger (`npm run bench --
 * --with-batch N`):
 * - throughput: the workload sent as requests at --max-concurrency, then the same workload as
 *   one batch run --max-concurrency lines at a time, on an otherwise idle server; the ratio of
 *   their output tok/s;
 * - priority: interactive requests' time to first token on the idle server, then while a batch
 *   of N requests runs; the ratio of their p99.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import type { EngineOptions } from "../engine/index.ts";
import type { GenerationDefaults } from "../models/index.ts";
import { startServer } from "../server/serve.ts";
import { runLoad } from "./load-generator.ts";
import { computeMetrics, latencyStats, ttftMsOf } from "./metrics.ts";
import { sendRequest, type RequestResult } from "./sse-client.ts";
import type { BenchRequest } from "./workload.ts";

export interface BatchBenchOptions {
  engineOptions: EngineOptions;
  model: string;
  defaults: GenerationDefaults;
  /** The throughput workload (sent directly, then as a batch). */
  workload: BenchRequest[];
  /** Requests in flight at once: the load's concurrency and the batch's (--batch-concurrency). */
  concurrency: number;
  /** The batch that runs while interactive requests are timed, and the interactive requests (one every gapMs). */
  floodSize: number;
  floodRequest: (i: number) => BenchRequest;
  numInteractive: number;
  gapMs: number;
  interactiveOutputLen: number;
}

export interface BatchBenchResult {
  directTokS: number;
  batchTokS: number;
  idle: { p50Ms: number; p99Ms: number };
  duringBatch: { p50Ms: number; p99Ms: number; batchLinesDone: number };
}

const TIMEOUT_MS = 30_000;

export async function measureBatch(options: BatchBenchOptions): Promise<BatchBenchResult> {
  const dir = mkdtempSync(join(tmpdir(), "tokenmill-batch-bench-"));
  const server = await startServer({
    models: [{ name: options.model, engineOptions: options.engineOptions, defaults: options.defaults, maxQueuedRequests: 100_000 }], host: "127.0.0.1", port: 0,
    shutdownTimeoutMs: 1000, bodyLimitBytes: 64 * 1024 * 1024, logger: false, db: { url: `sqlite:${join(dir, "bench.db")}`, replica: "bench" },
    batch: { concurrency: options.concurrency },
  });
  try {
    await server.ready;
    // NOTE: plain fetch, not the openai SDK: the bench ships in the bundle, which carries no devDependency.
    const call = async <T>(path: string, init?: RequestInit): Promise<T> => {
      const response = await fetch(`${server.url}${path}`, init);
      if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
      return (await response.json()) as T;
    };
    type Batch = { id: string; status: string; request_counts: { completed: number; failed: number } };
    const client = {
      batches: {
        retrieve: (id: string) => call<Batch>(`/v1/batches/${id}`),
        cancel: (id: string) => call<Batch>(`/v1/batches/${id}/cancel`, { method: "POST" }),
      },
    };
    const line = (r: BenchRequest, i: number) => ({ custom_id: `r${i}`, method: "POST", url: "/v1/completions", body: { model: options.model, prompt: r.prompt, max_tokens: r.outputLen, ignore_eos: true, temperature: 0 } });
    const submit = async (requests: BenchRequest[]) => {
      const form = new FormData();
      form.append("purpose", "batch");
      form.append("file", new Blob([requests.map((r, i) => JSON.stringify(line(r, i))).join("\n")]), "bench.jsonl");
      const file = await call<{ id: string }>("/v1/files", { method: "POST", body: form });
      return call<Batch>("/v1/batches", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ input_file_id: file.id, endpoint: "/v1/completions", completion_window: "24h" }),
      });
    };
    const load = { baseUrl: server.url, model: options.model, endpoint: "completions" as const, ignoreEos: true, temperature: 0 };

    // Warm-up, then the workload sent directly at the concurrency, then the same as a batch.
    await runLoad(options.workload.slice(0, options.concurrency), { ...load, maxConcurrency: options.concurrency });
    const direct = await runLoad(options.workload, { ...load, maxConcurrency: options.concurrency });
    const directTokS = computeMetrics(direct.results, direct.durationS, { percentiles: [99] }).outputThroughput;
    const started = performance.now();
    const batch = await submit(options.workload);
    let done = batch;
    while (!["completed", "failed", "cancelled", "expired"].includes(done.status)) {
      await sleep(20);
      done = await client.batches.retrieve(batch.id);
    }
    const seconds = (performance.now() - started) / 1000;
    if (done.status !== "completed" || done.request_counts.failed > 0) throw new Error(`the throughput batch ended ${done.status} with ${done.request_counts.failed} failed lines`);
    const outputTokens = options.workload.reduce((sum, r) => sum + r.outputLen, 0);
    const batchTokS = outputTokens / seconds;

    const interactive = async (): Promise<{ p50Ms: number; p99Ms: number }> => {
      const results: Promise<RequestResult>[] = [];
      for (let i = 0; i < options.numInteractive; i++) {
        results.push(sendRequest({ ...options.floodRequest(i), outputLen: options.interactiveOutputLen }, { ...load, extraBody: { max_tokens: options.interactiveOutputLen }, timeoutMs: TIMEOUT_MS }));
        await sleep(options.gapMs);
      }
      const ttfts = (await Promise.all(results)).map((r) => (r.tokenTimesMs.length > 0 ? ttftMsOf(r) : TIMEOUT_MS));
      const stats = latencyStats(ttfts, [99]);
      return { p50Ms: stats.medianMs, p99Ms: stats.percentilesMs[99] };
    };
    await interactive();
    const idle = await interactive();
    const flood = await submit(Array.from({ length: options.floodSize }, (_, i) => options.floodRequest(options.numInteractive + i)));
    for (let i = 0; i < 3000 && (await client.batches.retrieve(flood.id)).request_counts.completed < options.concurrency; i++) await sleep(20);
    const during = await interactive();
    const batchLinesDone = (await client.batches.retrieve(flood.id)).request_counts.completed;
    await client.batches.cancel(flood.id);
    return { directTokS, batchTokS, idle, duringBatch: { ...during, batchLinesDone } };
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
