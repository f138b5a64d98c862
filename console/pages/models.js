// Models: each served name with its targets, state and price; the local engines' live load
// (running, waiting, KV-cache use, prefix hits, tok/s) and the upstreams' breakers. Admins see
// all of it, refreshed every 2 s; other keys see the names they may use.
import { useEffect, useState } from "../vendor/preact-hooks.js";
import { Empty, Problem, api, html, percent, session, tokens, usd } from "../lib.js";

export function ModelsPage() {
  const admin = session()?.admin;
  const [state, setState] = useState({ loading: true });
  useEffect(() => {
    let live = true;
    const load = () => Promise.all([api("/v1/models"), admin ? api("/v1/admin/engines") : null, admin ? api("/v1/admin/prices") : null])
      .then(([models, engines, prices]) => live && setState({ models: models.data, engines: engines?.data ?? [], routes: engines?.routes ?? [], prices: prices?.data ?? [] }))
      .catch((error) => live && setState({ error }));
    load();
    const timer = setInterval(load, 2000);
    return () => { live = false; clearInterval(timer); };
  }, []);
  if (state.error) return html`<h1>Models</h1><${Problem} error=${state.error} />`;
  if (state.loading) return html`<h1>Models</h1><p class="loading">Loading…</p>`;
  const engine = (id) => state.engines.find((e) => e.id === id);
  const price = (id) => state.prices.find((p) => p.model === id);
  const priceText = (p) => (p ? `${usd(p.input)} / ${usd(p.cached_input)} / ${usd(p.output)} per Mtok` : "no price");
  const locals = state.engines.filter((e) => e.kind === "local");
  const upstreams = state.engines.filter((e) => e.kind === "upstream");
  return html`<section aria-labelledby="models-title">
    <h1 id="models-title">Models</h1>
    ${state.models.length === 0 ? html`<${Empty}>No model is served to this key.</${Empty}>` : html`
      <table data-testid="served"><thead><tr><th>Served name</th><th>Targets</th><th>Backend</th><th>State</th>${admin && html`<th>Price (input / cached / output)</th>`}</tr></thead>
        <tbody>${state.models.map((m) => {
          const targets = m.targets ?? [m.id];
          const route = state.routes.find((r) => r.name === m.id);
          return html`<tr><td>${m.id}</td><td>${targets.join(" → ")}${route?.burst_to ? ` (bursts to ${route.burst_to})` : ""}</td>
            <td>${targets.map((t) => engine(t)?.backend ?? m.owned_by).join(", ")}</td><td>${targets.map((t) => engine(t)?.state ?? "—").join(", ")}</td>
            ${admin && html`<td>${targets.map((t) => priceText(price(t))).join("; ")}</td>`}</tr>`;
        })}</tbody></table>`}
    ${admin && html`
      <h2>Local engines</h2>
      ${locals.length === 0 ? html`<${Empty}>No local model.</${Empty}>` : html`
        <table data-testid="engines"><thead><tr><th>Model</th><th>State</th><th class="num">Running</th><th class="num">Waiting</th><th class="num">KV cache</th><th class="num">Prefix hits</th><th class="num">Output tok/s</th><th class="num">Generated</th></tr></thead>
          <tbody>${locals.map((e) => html`<tr><td>${e.id}</td><td>${e.state}</td><td class="num">${tokens(e.running)}</td><td class="num">${tokens(e.waiting)}</td>
            <td class="num">${percent(e.kv_cache_usage)}</td><td class="num">${percent(e.prefix_cache_hit_rate)}</td>
            <td class="num">${e.generation_tokens_per_second === null || e.generation_tokens_per_second === undefined ? "—" : e.generation_tokens_per_second.toFixed(1)}</td>
            <td class="num">${tokens(e.generation_tokens)}</td></tr>`)}</tbody></table>`}
      <h2>Upstream providers</h2>
      ${upstreams.length === 0 ? html`<${Empty}>No upstream provider is configured.</${Empty}>` : html`
        <table data-testid="upstreams"><thead><tr><th>Model</th><th>Provider</th><th>Breaker</th><th class="num">In flight</th></tr></thead>
          <tbody>${upstreams.map((e) => html`<tr><td>${e.id}</td><td>${e.provider}</td><td class=${e.state === "breaker_closed" ? "ok" : "error"}>${e.state.replace("breaker_", "")}</td><td class="num">${e.in_flight}</td></tr>`)}</tbody></table>`}`}
  </section>`;
}
