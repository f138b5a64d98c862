/** Reading a tokenmill server's Prometheus metrics, for benchmarks that report what the server counted. */

/** The sum of every series of a metric (all label sets) in a /metrics text; 0 when absent. */
export function metricTotal(text: string, name: string): number {
  return text.split("\n").filter((line) => line.startsWith(name) && /[\s{]/.test(line[name.length] ?? "")).reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
}

/** The metrics text of a server ("" when it has none or can't be reached). */
export function fetchMetrics(baseUrl: string): Promise<string> {
  return fetch(`${baseUrl}/metrics`).then((r) => (r.ok ? r.text() : ""), () => "");
}
