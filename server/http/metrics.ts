/**
 * Prometheus metrics (prom-client), fed by each model's engine stats snapshots. Names follow
 * DESIGN.md: Prometheus style, units in the name; every engine metric has a `model` label.
 *
 * Beside them, the gauges the Kubernetes Gateway API Inference Extension's endpoint picker
 * scrapes by default, under vLLM's names and its `model_name` label, so that a tokenmill
 * Deployment can be an InferencePool's backend as it is (docs/deployment.md has the mapping).
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Usage } from "../../service/settlement.ts";
import type { EngineStatsSnapshot } from "../common/engine-api.ts";

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
  private readonly grammarSteps = this.counter("tokenmill_grammar_steps_total", "Steps with rows constrained by a grammar.");
  private readonly grammarMask = this.counter("tokenmill_grammar_mask_seconds_total", "Time the grammar thread spent on those steps' masks (it overlaps the model's step).");
  private readonly grammarWait = this.counter("tokenmill_grammar_wait_seconds_total", "Time those steps waited for their masks after the model had run.");
  private readonly engineRestarts = this.counter("tokenmill_engine_restarts_total", "Times the engine thread died and was restarted.");
  /** NOTE: keys never go into labels: their number is unbounded and their ids are the ledger's business. */
  private readonly billedTokens = new Counter({
    name: "tokenmill_billed_tokens_total", help: "Tokens settled, by model and price tier (input: uncached input; cached: cached input; output).",
    labelNames: ["model", "tier"], registers: [this.registry],
  });
  readonly budgetAlerts = new Counter({
    name: "tokenmill_budget_alerts_total", help: "Budget and token-quota alerts fired, by threshold (percent).", labelNames: ["threshold", "limit_type"], registers: [this.registry],
  });
  readonly rateLimited = new Counter({
    name: "tokenmill_rate_limited_requests_total", help: "Requests refused by a key's limit, by limit (rpm, tpm, max_parallel, budget, token_quota).", labelNames: ["limit"], registers: [this.registry],
  });
  readonly upstreamFaults = new Counter({
    name: "tokenmill_upstream_faults_total", help: "Upstream answers served despite a fault (a usage that was missing or not believable, replaced by what was seen), by provider.",
    labelNames: ["provider"], registers: [this.registry],
  });
  readonly ledgerAvailable = new Gauge({
    name: "tokenmill_ledger_available", help: "1 while the usage ledger commits; 0 while its database can't be reached or written (new requests get 503).", registers: [this.registry],
  });
  readonly requests = new Counter({
    name: "tokenmill_http_requests_total", help: "HTTP requests by route and status.", labelNames: ["route", "status"], registers: [this.registry],
  });
  readonly fallbacks = new Counter({
    name: "tokenmill_route_fallbacks_total", help: "Requests a target failed and the next target of their route took, by route, targets and reason.",
    labelNames: ["route", "from", "to", "reason"], registers: [this.registry],
  });
  readonly bursts = new Counter({
    name: "tokenmill_route_bursts_total", help: "Requests sent to a route's burst target because its local model was busy.", labelNames: ["route", "to"], registers: [this.registry],
  });
  readonly upstreamTries = new Counter({
    name: "tokenmill_upstream_tries_total", help: "Calls to upstream providers, retries included, by provider and result (HTTP status, timeout or error).",
    labelNames: ["provider", "result"], registers: [this.registry],
  });
  readonly replicaTries = new Counter({
    name: "tokenmill_upstream_replica_tries_total", help: "Calls to the replicas of a pooled provider, retries included, by provider, replica (host:port) and result.",
    labelNames: ["provider", "replica", "result"], registers: [this.registry],
  });
  readonly replicaHealthy = new Gauge({
    name: "tokenmill_upstream_replica_healthy", help: "1 while a pooled provider's replica passes its health check (it is in the pool), else 0.", labelNames: ["provider", "replica"], registers: [this.registry],
  });
  readonly replicaBreaker = new Gauge({
    name: "tokenmill_upstream_replica_breaker_open", help: "1 while the circuit breaker of a model on one replica of a pooled provider is open or half-open, else 0.",
    labelNames: ["provider", "replica", "model"], registers: [this.registry],
  });
  /** Batch lines finished, by status (completed: a 2xx response; failed: an error line). */
  readonly batchRequests = new Counter({ name: "tokenmill_batch_requests_total", help: "Batch job requests finished, by status (completed or failed).", labelNames: ["status"], registers: [this.registry] });
  /** Lines of the batch a replica is running that have not started yet. */
  readonly batchQueueDepth = new Gauge({ name: "tokenmill_batch_queue_depth", help: "Requests of the batch this replica runs that have not started yet.", labelNames: ["replica"], registers: [this.registry] });
  readonly upstreamBreaker = new Gauge({
    name: "tokenmill_upstream_breaker_open", help: "1 while the circuit breaker of an upstream provider's model (by its upstream name) is open or half-open (on a pooled provider: on every healthy replica), else 0.", labelNames: ["provider", "model"], registers: [this.registry],
  });
  /** A LoRA adapter's settled requests, by its base model, its name and how they ended. */
  readonly loraRequests = new Counter({
    name: "tokenmill_lora_requests_total", help: "Requests to a LoRA adapter, settled, by base model, adapter and outcome (finished, rejected, errored, aborted, disconnected).",
    labelNames: ["model", "adapter", "outcome"], registers: [this.registry],
  });
  private readonly loraSlotLoads = this.counter("tokenmill_lora_slot_loads_total", "LoRA adapters written into a slot (a slot's churn: more adapters in use than --max-loras).");
  private readonly loraAdapters = new Gauge({
    name: "tokenmill_lora_adapters", help: "LoRA adapters of a model, by state: loaded (servable), in_slot (a slot holds it), running (a running sequence uses it), waiting (a waiting sequence needs it).",
    labelNames: ["model", "state"], registers: [this.registry],
  });
  private readonly gateway = {
    waiting: new Gauge({ name: "vllm:num_requests_waiting", help: "Sequences waiting to be scheduled (tokenmill_requests_waiting, under vLLM's name).", labelNames: ["model_name"], registers: [this.registry] }),
    running: new Gauge({ name: "vllm:num_requests_running", help: "Sequences in the running batch (tokenmill_requests_running, under vLLM's name).", labelNames: ["model_name"], registers: [this.registry] }),
    kvUsage: new Gauge({ name: "vllm:kv_cache_usage_perc", help: "Fraction of KV cache blocks in use, 0-1 (tokenmill_kv_cache_usage_ratio, under vLLM's name).", labelNames: ["model_name"], registers: [this.registry] }),
    loraInfo: new Gauge({
      name: "vllm:lora_requests_info", help: "The LoRA adapters of running and waiting requests and the slots (--max-loras), in its labels; the value is when it was set (epoch seconds), as vLLM's.",
      labelNames: ["model_name", "max_lora", "running_lora_adapters", "waiting_lora_adapters"], registers: [this.registry],
    }),
    cacheConfig: new Gauge({ name: "vllm:cache_config_info", help: "The KV cache's configuration, in its labels (the value is 1).", labelNames: ["model_name", "block_size", "num_gpu_blocks", "cache_dtype"], registers: [this.registry] }),
  };
  /** Each model's last snapshot: counters advance by the difference from it. */
  private readonly last = new Map<string, EngineStatsSnapshot>();
  /** Each model's lora_requests_info labels now (a new set replaces the old series). */
  private readonly loraLabels = new Map<string, Record<string, string>>();

  /** Applies one snapshot of a model's engine: gauges are set, counters advance by the difference, samples are observed. */
  observe(model: string, stats: EngineStatsSnapshot): void {
    const labels = { model };
    this.running.set(labels, stats.numRunning);
    this.waiting.set(labels, stats.numWaiting);
    this.kvUsage.set(labels, stats.kvCacheUsage);
    this.gateway.waiting.set({ model_name: model }, stats.numWaiting);
    this.gateway.running.set({ model_name: model }, stats.numRunning);
    this.gateway.kvUsage.set({ model_name: model }, stats.kvCacheUsage);
    const last = this.last.get(model);
    const delta = (key: keyof EngineStatsSnapshot) => (stats[key] as number) - ((last?.[key] as number | undefined) ?? 0);
    this.prefixQueries.inc(labels, delta("numPrefixQueryTokens"));
    this.prefixHits.inc(labels, delta("numPrefixHitTokens"));
    this.promptTokens.inc(labels, delta("numPromptTokens"));
    this.generationTokens.inc(labels, delta("numGenerationTokens"));
    this.preemptions.inc(labels, delta("numPreemptions"));
    this.grammarSteps.inc(labels, delta("numGrammarSteps"));
    this.grammarMask.inc(labels, delta("grammarMaskSeconds"));
    this.grammarWait.inc(labels, delta("grammarWaitSeconds"));
    if (stats.lora) this.observeLora(model, stats.lora);
    for (const s of stats.ttftSeconds) this.ttft.observe(labels, s);
    for (const s of stats.interTokenSeconds) this.itl.observe(labels, s);
    for (const s of stats.e2eSeconds) this.e2e.observe(labels, s);
    this.last.set(model, stats);
  }

  private observeLora(model: string, lora: NonNullable<EngineStatsSnapshot["lora"]>): void {
    const labels = { model_name: model, max_lora: String(lora.maxLoras), running_lora_adapters: lora.running.join(","), waiting_lora_adapters: lora.waiting.join(",") };
    const previous = this.loraLabels.get(model);
    if (previous) this.gateway.loraInfo.remove(previous);
    this.gateway.loraInfo.set(labels, Date.now() / 1000);
    this.loraLabels.set(model, labels);
    const last = this.last.get(model)?.lora?.numSlotLoads ?? 0;
    this.loraSlotLoads.inc({ model }, Math.max(0, lora.numSlotLoads - last));
    const counts = { loaded: lora.loaded.length, in_slot: lora.inSlots.length, running: lora.running.length, waiting: lora.waiting.length };
    for (const [state, n] of Object.entries(counts)) this.loraAdapters.set({ model, state }, n);
  }

  /** Starts a model's series at zero, so that they exist before anything happens to it; `cache` is its KV cache's shape. */
  addModel(model: string, cache?: { blockSize: number; numBlocks: number; dtype: string }): void {
    const labels = { model };
    for (const gauge of [this.gateway.waiting, this.gateway.running, this.gateway.kvUsage]) gauge.set({ model_name: model }, 0);
    if (cache) this.gateway.cacheConfig.set({ model_name: model, block_size: String(cache.blockSize), num_gpu_blocks: String(cache.numBlocks), cache_dtype: cache.dtype }, 1);
    for (const counter of [this.prefixQueries, this.prefixHits, this.promptTokens, this.generationTokens, this.preemptions, this.engineRestarts, this.grammarSteps, this.grammarMask, this.grammarWait]) {
      counter.inc(labels, 0);
    }
    for (const gauge of [this.running, this.waiting, this.kvUsage]) gauge.set(labels, 0);
  }

  /** A settled request's tokens, in the three tiers prices have. */
  observeBilled(model: string, usage: Usage): void {
    this.billedTokens.inc({ model, tier: "input" }, usage.promptTokens - usage.cachedPromptTokens);
    this.billedTokens.inc({ model, tier: "cached" }, usage.cachedPromptTokens);
    this.billedTokens.inc({ model, tier: "output" }, usage.completionTokens);
  }

  /** A model's engine thread died: count it, and count the next thread's counters from zero. */
  observeEngineDeath(model: string): void {
    this.engineRestarts.inc({ model });
    this.last.delete(model);
  }

  private gauge(name: string, help: string): Gauge {
    return new Gauge({ name, help, labelNames: ["model"], registers: [this.registry] });
  }

  private counter(name: string, help: string): Counter {
    return new Counter({ name, help, labelNames: ["model"], registers: [this.registry] });
  }

  private histogram(name: string, help: string): Histogram {
    return new Histogram({ name, help, buckets: LATENCY_BUCKETS, labelNames: ["model"], registers: [this.registry] });
  }
}
