// Budgets: each key's and team's spend and tokens against its budgets and quotas (the very
// meters enforcement reads), the alert thresholds, and the alerts that fired.
import { useEffect, useState } from "../vendor/preact-hooks.js";
import { Empty, Meter, Problem, Time, api, html, usd } from "../lib.js";

function limitCells(budget) {
  const cells = [];
  const b = budget.limits.budget_usd;
  const q = budget.limits.token_quota;
  if (b) cells.push(html`<div>budget per ${b.period}: <${Meter} used=${b.used} limit=${b.limit} money=${true} /></div>`);
  if (q) cells.push(html`<div>tokens per ${q.period}: <${Meter} used=${q.used} limit=${q.limit} /></div>`);
  for (const [model, limits] of Object.entries(budget.model_limits ?? {})) {
    if (limits.budget_usd) cells.push(html`<div>${model}, per ${limits.budget_usd.period}: <${Meter} used=${limits.budget_usd.used} limit=${limits.budget_usd.limit} money=${true} /></div>`);
    if (limits.token_quota) cells.push(html`<div>${model} tokens, per ${limits.token_quota.period}: <${Meter} used=${limits.token_quota.used} limit=${limits.token_quota.limit} /></div>`);
  }
  return cells;
}

export function BudgetsPage() {
  const [state, setState] = useState({ loading: true });
  useEffect(() => {
    Promise.all([api("/v1/admin/budgets"), api("/v1/admin/alerts")]).then(([budgets, alerts]) => setState({ budgets: budgets.data, alerts })).catch((error) => setState({ error }));
  }, []);
  if (state.error) return html`<h1>Budgets</h1><${Problem} error=${state.error} />`;
  if (state.loading) return html`<h1>Budgets</h1><p class="loading">Loading…</p>`;
  const limited = state.budgets.filter((b) => limitCells(b).length > 0);
  return html`<section aria-labelledby="budgets-title">
    <h1 id="budgets-title">Budgets</h1>
    <p>Alerts fire at ${state.alerts.thresholds.map((t) => `${t}%`).join(", ")} of each budget and quota, once per period (<span class="mono">--alert-thresholds</span>).</p>
    ${limited.length === 0 ? html`<${Empty}>No key or team has a budget or a token quota yet. Set one on the Keys page.</${Empty}>` : html`
      <table data-testid="budgets"><thead><tr><th>Level</th><th>Name</th><th>Spend and use against limits</th></tr></thead>
        <tbody>${limited.map((b) => html`<tr><td>${b.level}</td><td>${b.name ?? b.id} <span class="mono">${b.id}</span></td><td>${limitCells(b)}</td></tr>`)}</tbody></table>`}
    <h2>Alerts that fired</h2>
    ${state.alerts.data.length === 0 ? html`<${Empty}>No alert has fired.</${Empty}>` : html`
      <table data-testid="alerts"><thead><tr><th>When</th><th>Who</th><th>Limit</th><th class="num">Threshold</th><th class="num">Used</th><th>Webhook</th></tr></thead>
        <tbody>${state.alerts.data.map((a) => html`<tr>
          <td><${Time} seconds=${Date.parse(a.fired_at) / 1000} /></td>
          <td>${a.level === "team" ? `team ${a.team_name ?? a.team_id}` : `key ${a.key_name ?? a.key_id}`}</td>
          <td>${a.limit_type}${a.model ? ` (${a.model})` : ""} per ${a.period}</td><td class="num">${a.threshold}%</td>
          <td class="num">${a.limit_type === "budget" ? `${usd(a.used)} of ${usd(a.limit)}` : `${a.used} of ${a.limit}`}</td>
          <td>${a.delivered_at ? html`<span class="ok">delivered</span>` : "not delivered (or no webhook)"}</td></tr>`)}</tbody></table>`}
  </section>`;
}
