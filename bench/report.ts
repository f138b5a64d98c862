/**
 * Benchmark results as a Markdown table laid out like `vllm bench serve`'s summary, and as a
 * plain object with the field names of vLLM's result JSON, so existing tooling can read it.
 */
import type { BenchMetrics, LatencyStats } from "./metrics.ts";

const LATENCIES = [
  ["ttft", "TTFT (time to first token)"],
  ["tpot", "TPOT (time per output token, excl. 1st)"],
  ["itl", "ITL (inter-token latency)"],
  ["e2el", "E2EL (end-to-end latency)"],
] as const;

export function toMarkdown(metrics: BenchMetrics, title: string, endpoint = "completions"): string {
  // NOTE: an embeddings run, as vLLM reports one, has no generated tokens and one latency (E2EL).
  const embeddings = endpoint === "embeddings";
  const rows: [string, string][] = [
    ["Successful requests", String(metrics.completed)],
    ["Failed requests", String(metrics.failed)],
    ["Benchmark duration (s)", fixed(metrics.durationS)],
    ["Total input tokens", String(metrics.totalInputTokens)],
    ...(embeddings ? [] : [["Total generated tokens", String(metrics.totalOutputTokens)] as [string, string]]),
    ["Request throughput (req/s)", fixed(metrics.requestThroughput)],
    ...(metrics.requestGoodput === null ? [] : [["Request goodput (req/s)", fixed(metrics.requestGoodput)] as [string, string]]),
    ...(embeddings ? [] : [["Output token throughput (tok/s)", fixed(metrics.outputThroughput)] as [string, string]]),
    ["Total token throughput (tok/s)", fixed(metrics.totalTokenThroughput)],
  ];
  // The median is its own column, so a requested p50 would only repeat it.
  const tails = metrics.percentiles.filter((p) => p !== 50);
  const latencyHeader = ["Latency (ms)", "Mean", "Median", ...tails.map((p) => `P${p}`)];
  const latencyRows = LATENCIES.filter(([key]) => !embeddings || key === "e2el").map(([key, label]) => {
    const stats: LatencyStats = metrics[key];
    return [label, fixed(stats.meanMs), fixed(stats.medianMs), ...tails.map((p) => fixed(stats.percentilesMs[p]))];
  });
  return [
    `## ${title}`,
    "",
    table(["Metric", "Value"], rows),
    "",
    table(latencyHeader, latencyRows),
    "",
  ].join("\n");
}

/**
 * vLLM's result fields (`request_throughput`, `mean_ttft_ms`, `p99_itl_ms`, ...) after the
 * caller's `config` (already snake_case: model_id, request_rate, max_concurrency, ...).
 */
export function toJson(metrics: BenchMetrics, config: Record<string, unknown> = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {
    ...config,
    duration: metrics.durationS,
    completed: metrics.completed,
    failed: metrics.failed,
    total_input_tokens: metrics.totalInputTokens,
    total_output_tokens: metrics.totalOutputTokens,
    request_throughput: metrics.requestThroughput,
    request_goodput: metrics.requestGoodput,
    output_throughput: metrics.outputThroughput,
    total_token_throughput: metrics.totalTokenThroughput,
  };
  for (const [key] of LATENCIES) {
    const stats = metrics[key];
    out[`mean_${key}_ms`] = stats.meanMs;
    out[`median_${key}_ms`] = stats.medianMs;
    out[`std_${key}_ms`] = stats.stdMs;
    // NOTE: `${99}` is "99" and `${99.9}` is "99.9", the names vLLM gives its percentile fields.
    for (const p of metrics.percentiles) out[`p${p}_${key}_ms`] = stats.percentilesMs[p];
  }
  return out;
}

function fixed(value: number): string {
  return value.toFixed(2);
}

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(" | ")} |`;
  const rule = header.map((_, i) => (i === 0 ? "---" : "---:"));
  return [line(header), line(rule), ...rows.map(line)].join("\n");
}
