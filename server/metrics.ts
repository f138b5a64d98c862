/**
 * Prometheus metrics (prom-client), fed by the engine's stats snapshots. Names follow
 * DESIGN.md: Prometheus style, units in the name.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { EngineStatsSnapshot } from "./backends/engine-api.ts";

const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly running = this.gauge("tokenmill_requests_running", "Sequences in the running batch.");
  private readonly waiting = this.gauge("tokenmill_requests_waiting", "Sequences waiting to be scheduled.");
  private readonly kvUsage = this.gauge("tokenmill_kv_cache_usage_ratio", "Fraction of KV cache blocks in use (0-1).");
  private readonly prefixQueries = this.counter("tokenmill_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.");
  private readonly prefixHits = this.counter("tokenmill_prefix_cache_hits_total", "Prompt tokens served from the prefix cache.");
  private readonly promptTokens = this.counter("tokenmill_prompt_tokens_total", "Prompt tokens processed.");
  private readonly generationTokens = this.counter("tokenmill_generation_tokens_total", "Tokens generated.");
  private readonly preemptions = this.counter("tokenmill_num_preemptions_total", "Sequences preempted for lack of KV blocks.");
  private readonly ttft = this.histogram("tokenmill_time_to_first_token_seconds", "Time to first token.");
  private readonly itl = this.histogram("tokenmill_inter_token_latency_seconds", "Time between consecutive tokens of a sequence.");
  private readonly e2e = this.histogram("tokenmill_e2e_request_latency_seconds", "Time from arrival to finish of a sequence.");
  private readonly engineRestarts = this.counter("tokenmill_engine_restarts_total", "Times the engine thread died and was restarted.");
  readonly requests = new Counter({
    name: "tokenmill_http_requests_total", help: "HTTP requests by route and status.", labelNames: ["route", "status"], registers: [this.registry],
  });
  private last: EngineStatsSnapshot | null = null;

  /** Applies one snapshot: gauges are set, counters advance by the difference, samples are observed. */
  observe(stats: EngineStatsSnapshot): void {
    this.running.set(stats.numRunning);
    this.waiting.set(stats.numWaiting);
    this.kvUsage.set(stats.kvCacheUsage);
    const delta = (key: keyof EngineStatsSnapshot) => (stats[key] as number) - ((this.last?.[key] as number | undefined) ?? 0);
    this.prefixQueries.inc(delta("numPrefixQueryTokens"));
    this.prefixHits.inc(delta("numPrefixHitTokens"));
    this.promptTokens.inc(delta("numPromptTokens"));
    this.generationTokens.inc(delta("numGenerationTokens"));
    this.preemptions.inc(delta("numPreemptions"));
    for (const s of stats.ttftSeconds) this.ttft.observe(s);
    for (const s of stats.interTokenSeconds) this.itl.observe(s);
    for (const s of stats.e2eSeconds) this.e2e.observe(s);
    this.last = stats;
  }

  /** A dead engine thread: count it, and count the next thread's counters from zero. */
  observeEngineDeath(): void {
    this.engineRestarts.inc();
    this.last = null;
  }

  private gauge(name: string, help: string): Gauge {
    return new Gauge({ name, help, registers: [this.registry] });
  }

  private counter(name: string, help: string): Counter {
    return new Counter({ name, help, registers: [this.registry] });
  }

  private histogram(name: string, help: string): Histogram {
    return new Histogram({ name, help, buckets: LATENCY_BUCKETS, registers: [this.registry] });
  }
}
