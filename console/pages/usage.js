// Usage: tokens by tier and cost over a range, the prefix-cache hit rate, filtered by key,
// team, model and backend; totals from the same usage and costs APIs a script would call.
import { useEffect, useMemo, useRef, useState } from "../vendor/preact-hooks.js";
import uPlot from "../vendor/uplot.js";
import { Empty, Problem, Time, api, html, pages, percent, tokens, usd } from "../lib.js";

const RANGES = { "24h": { seconds: 86_400, width: "1h", limit: 24 }, "7d": { seconds: 7 * 86_400, width: "1d", limit: 7 }, "30d": { seconds: 30 * 86_400, width: "1d", limit: 31 } };

/** The range's start: whole hours or whole days (UTC), so buckets line up with the costs API's days. */
function startOf(range) {
  const { seconds, width } = RANGES[range];
  const step = width === "1h" ? 3600 : 86_400;
  return Math.floor((Date.now() / 1000 - seconds) / step) * step + step;
}

function query(params) {
  return Object.entries(params).filter(([, v]) => v !== "" && v !== undefined && v !== null).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
}

/**
 * Bars per bucket, stacked: each series is drawn as the running sum up to it, the tallest
 * first, so each tier shows as its own band; the legend and the hidden caption give each
 * tier's own figure.
 */
function Chart({ title, series, rows, money }) {
  const box = useRef(null);
  useEffect(() => {
    if (!box.current || rows.length === 0) return undefined;
    const xs = rows.map((r) => r.start);
    const stacked = series.map((_, i) => rows.map((r) => series.slice(0, i + 1).reduce((sum, s) => sum + r[s.field], 0)));
    const order = series.map((_, i) => i).reverse();
    const format = (v) => (v === null || v === undefined ? "—" : money ? usd(v) : tokens(v));
    const plot = new uPlot({
      title, width: Math.max(480, box.current.clientWidth - 16), height: 240,
      scales: { x: { time: true } },
      axes: [{}, { values: (_, ticks) => ticks.map((t) => format(t)), size: 80 }],
      series: [{}, ...order.map((i) => ({
        label: series[i].label, stroke: series[i].color, fill: series[i].color, width: 1, paths: uPlot.paths.bars({ size: [0.6, 40] }),
        value: (_u, _v, _si, at) => (at === null || at === undefined ? "—" : format(rows[at][series[i].field])),
      }))],
    }, [xs, ...order.map((i) => stacked[i])], box.current);
    return () => plot.destroy();
  }, [rows, series, title, money]);
  return html`<figure class="chart" aria-label=${title}><div ref=${box}></div>
    <figcaption class="visually-hidden">${title}: ${rows.map((r) => `${new Date(r.start * 1000).toISOString()} ${series.map((s) => `${s.label} ${r[s.field]}`).join(", ")}`).join("; ")}</figcaption></figure>`;
}

const TIERS = [
  { field: "uncached", label: "uncached input", color: "#1f4e79" },
  { field: "cached", label: "cached input", color: "#2f9e44" },
  { field: "output", label: "output", color: "#d9480f" },
];
const COST = [{ field: "cost", label: "cost (USD)", color: "#7048e8" }];

export function UsagePage() {
  const [range, setRange] = useState("7d");
  const [filters, setFilters] = useState({ api_key_ids: "", team_id: "", models: "", backends: "" });
  const [choices, setChoices] = useState({ keys: [], teams: [], models: [], backends: [] });
  const [state, setState] = useState({ loading: true });
  useEffect(() => {
    Promise.all([api("/v1/admin/keys"), api("/v1/admin/teams"), api("/v1/admin/engines")]).then(([keys, teams, engines]) => setChoices({
      keys: keys.data, teams: teams.data, models: engines.data.map((e) => e.id), backends: [...new Set(engines.data.map((e) => e.backend))],
    })).catch(() => undefined);
  }, []);
  useEffect(() => {
    let live = true;
    setState({ loading: true });
    const { width, limit } = RANGES[range];
    const start = startOf(range);
    const common = query({ start_time: start, limit, ...filters });
    Promise.all([
      pages(`/v1/organization/usage/completions?bucket_width=${width}&${common}`),
      pages(`/v1/organization/costs?bucket_width=1d&${query({ start_time: Math.floor(start / 86_400) * 86_400, limit: 31, ...filters })}`),
    ]).then(([usage, costs]) => {
      if (!live) return;
      const rows = usage.map((b) => {
        const sum = (f) => b.results.reduce((s, r) => s + r[f], 0);
        return { start: b.start_time, input: sum("input_tokens"), cached: sum("input_cached_tokens"), uncached: sum("input_tokens") - sum("input_cached_tokens"), output: sum("output_tokens"), requests: sum("num_model_requests") };
      });
      const costRows = costs.map((b) => ({ start: b.start_time, cost: b.results.reduce((s, r) => s + r.amount.value, 0) }));
      setState({ rows, costRows });
    }).catch((error) => live && setState({ error }));
    return () => { live = false; };
  }, [range, filters]);
  const totals = useMemo(() => {
    if (!state.rows) return null;
    const sum = (f) => state.rows.reduce((s, r) => s + r[f], 0);
    return { requests: sum("requests"), input: sum("input"), cached: sum("cached"), output: sum("output"), cost: state.costRows.reduce((s, r) => s + r.cost, 0) };
  }, [state]);
  const select = (name, label, options) => html`<label>${label}
    <select name=${name} value=${filters[name]} onChange=${(e) => setFilters({ ...filters, [name]: e.target.value })}>
      <option value="">all</option>${options.map(([value, text]) => html`<option value=${value}>${text}</option>`)}
    </select></label>`;
  return html`<section aria-labelledby="usage-title">
    <h1 id="usage-title">Usage</h1>
    <form class="panel row" onSubmit=${(e) => e.preventDefault()}>
      <label>Range <select name="range" value=${range} onChange=${(e) => setRange(e.target.value)}>
        <option value="24h">last 24 hours (hourly)</option><option value="7d">last 7 days</option><option value="30d">last 30 days</option></select></label>
      ${select("api_key_ids", "Key", choices.keys.map((k) => [k.id, `${k.name} (${k.prefix})`]))}
      ${choices.teams.length > 0 && select("team_id", "Team", choices.teams.map((t) => [t.id, t.name]))}
      ${select("models", "Model", choices.models.map((m) => [m, m]))}
      ${select("backends", "Backend", choices.backends.map((b) => [b, b]))}
    </form>
    ${state.error ? html`<${Problem} error=${state.error} />` : state.loading ? html`<p class="loading">Loading…</p>` : html`
      <dl class="totals" data-testid="usage-totals">
        <div><dt>Requests</dt><dd data-testid="total-requests">${tokens(totals.requests)}</dd></div>
        <div><dt>Input tokens</dt><dd data-testid="total-input">${tokens(totals.input)}</dd></div>
        <div><dt>of which cached</dt><dd data-testid="total-cached">${tokens(totals.cached)}</dd></div>
        <div><dt>Output tokens</dt><dd data-testid="total-output">${tokens(totals.output)}</dd></div>
        <div><dt>Prefix-cache hit rate</dt><dd data-testid="hit-rate">${percent(totals.input > 0 ? totals.cached / totals.input : null)}</dd></div>
        <div><dt>Cost</dt><dd data-testid="total-cost">${usd(totals.cost)}</dd></div>
      </dl>
      ${totals.requests === 0 ? html`<${Empty}>No requests in this range${Object.values(filters).some(Boolean) ? " for these filters" : ""} yet.</${Empty}>` : html`
        <${Chart} title="Tokens by tier" series=${TIERS} rows=${state.rows} />
        <${Chart} title="Cost per day" series=${COST} rows=${state.costRows} money=${true} />
        <table><caption class="visually-hidden">Tokens and requests by bucket</caption>
          <thead><tr><th>${RANGES[range].width === "1h" ? "Hour" : "Day"}</th><th class="num">Requests</th><th class="num">Uncached input</th><th class="num">Cached input</th><th class="num">Output</th><th class="num">Hit rate</th></tr></thead>
          <tbody>${state.rows.filter((r) => r.requests > 0).map((r) => html`<tr>
            <td><${Time} seconds=${r.start} dateOnly=${RANGES[range].width === "1d"} /></td><td class="num">${tokens(r.requests)}</td><td class="num">${tokens(r.uncached)}</td>
            <td class="num">${tokens(r.cached)}</td><td class="num">${tokens(r.output)}</td><td class="num">${percent(r.input > 0 ? r.cached / r.input : null)}</td></tr>`)}</tbody>
        </table>`}`}
  </section>`;
}
