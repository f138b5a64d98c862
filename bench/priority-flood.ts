/**
 * Priority tiers under load: interactive requests' time to first token on an idle server,
 * then while a flood of batch requests fills every slot, with tiers (the chat key interactive,
 * the bulk key batch) and, side by side, without (both standard). The goal: interactive TTFT
 * at p99 under the flood within 2x of idle.
 */
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { startServer } from "../server/serve.ts";
import type { EngineOptions } from "../engine/index.ts";
import type { GenerationDefaults } from "../models/index.ts";
import { latencyStats, ttftMsOf } from "./metrics.ts";
import { fetchMetrics, metricTotal } from "./server-metrics.ts";
import { sendRequest, type ClientOptions, type RequestResult } from "./sse-client.ts";
import type { BenchRequest } from "./workload.ts";

export interface FloodOptions {
  engineOptions: EngineOptions;
  model: string;
  defaults: GenerationDefaults;
  /** Interactive requests per phase, sent one every `gapMs`. */
  numInteractive: number;
  gapMs: number;
  /** Batch requests in the flood (all at once), and their output length. */
  numFlood: number;
  floodOutputLen: number;
  interactiveOutputLen: number;
  prompt: (i: number) => BenchRequest;
}

export interface FloodPhase {
  name: string;
  p50Ms: number;
  p99Ms: number;
  /** Requests with no first token within TIMEOUT_MS (counted at TIMEOUT_MS, so the percentiles are lower bounds). */
  timedOut: number;
}

/** How long an interactive request may wait for its first token (without tiers it waits for the whole flood). */
export const TIMEOUT_MS = 10_000;

const ADMIN = "bench-admin";

export async function measurePriorityFlood(options: FloodOptions): Promise<FloodPhase[]> {
  const server = await startServer({
    models: [{ name: options.model, engineOptions: options.engineOptions, defaults: options.defaults, maxQueuedRequests: 100_000 }], host: "127.0.0.1", port: 0,
    shutdownTimeoutMs: 1000, bodyLimitBytes: 64 * 1024 * 1024, logger: false, db: { url: "sqlite::memory:", replica: "bench", ledger: false }, adminKeys: [ADMIN],
  });
  try {
    await server.ready;
    const key = async (name: string, priority: string) => {
      const response = await fetch(`${server.url}/v1/admin/keys`, {
        method: "POST", headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" }, body: JSON.stringify({ name, priority }),
      });
      return ((await response.json()) as { secret: string }).secret;
    };
    const keys = { interactive: await key("chat", "interactive"), batch: await key("bulk", "batch"), standard: await key("plain", "standard") };
    const client = (apiKey: string, outputLen: number): ClientOptions => ({
      baseUrl: server.url, model: options.model, apiKey, ignoreEos: true, temperature: 0, extraBody: { max_tokens: outputLen },
    });
    const chat = (apiKey: string): ClientOptions => ({ ...client(apiKey, options.interactiveOutputLen), timeoutMs: TIMEOUT_MS });
    const interactive = async (apiKey: string): Promise<RequestResult[]> => {
      const results: Promise<RequestResult>[] = [];
      for (let i = 0; i < options.numInteractive; i++) {
        results.push(sendRequest({ ...options.prompt(i), outputLen: options.interactiveOutputLen }, chat(apiKey)));
        await sleep(options.gapMs);
      }
      return Promise.all(results);
    };
    const phase = (name: string, results: RequestResult[]): FloodPhase => {
      const ttfts = results.map((r) => (r.tokenTimesMs.length > 0 ? ttftMsOf(r) : TIMEOUT_MS));
      const stats = latencyStats(ttfts, [99]);
      return { name, p50Ms: stats.medianMs, p99Ms: stats.percentilesMs[99], timedOut: results.filter((r) => r.tokenTimesMs.length === 0).length };
    };
    const flooded = async (chatKey: string, floodKey: string) => {
      const stop = new AbortController();
      const flood = Array.from({ length: options.numFlood }, (_, i) =>
        sendRequest({ ...options.prompt(options.numInteractive + i), outputLen: options.floodOutputLen }, client(floodKey, options.floodOutputLen), stop.signal));
      // NOTE: the flood fills every slot and its prefills are done before the first interactive request.
      const started = performance.now();
      while (performance.now() - started < 60_000 && metricTotal(await fetchMetrics(server.url), "tokenmill_requests_running") < options.engineOptions.maxNumSeqs) await sleep(20);
      await sleep(200);
      const results = await interactive(chatKey);
      stop.abort();
      await Promise.all(flood);
      await sleep(200);
      return results;
    };
    await interactive(keys.interactive); // warm-up
    const idle = phase("idle server", await interactive(keys.interactive));
    const withTiers = phase("batch flood, chat interactive", await flooded(keys.interactive, keys.batch));
    const withoutTiers = phase("batch flood, both standard (no tiers)", await flooded(keys.standard, keys.standard));
    return [idle, withTiers, withoutTiers];
  } finally {
    await server.close();
  }
}
