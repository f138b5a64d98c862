// A read-only view of the signed-in (non-admin) key: its limits, where it stands, and its use this month.
import { useEffect, useState } from "../vendor/preact-hooks.js";
import { Meter, Problem, api, html, tokens, usd } from "../lib.js";

export function MyKeyPage() {
  const [state, setState] = useState({ loading: true });
  useEffect(() => {
    api("/v1/key").then((key) => setState({ key })).catch((error) => setState({ error }));
  }, []);
  if (state.error) return html`<h1>My key</h1><${Problem} error=${state.error} />`;
  if (state.loading) return html`<h1>My key</h1><p class="loading">Loading…</p>`;
  const { key } = state;
  const standing = (limits) => Object.entries(limits).map(([name, s]) => html`<tr><td>${name}</td><td>${s.used !== undefined
    ? html`<${Meter} used=${s.used} limit=${s.limit} money=${name === "budget_usd"} />` : `${tokens(s.remaining)} of ${tokens(s.limit)} left`}</td></tr>`);
  return html`<section aria-labelledby="key-title">
    <h1 id="key-title">My key: ${key.name ?? key.id}</h1>
    <dl class="totals">
      <div><dt>Requests this month</dt><dd>${tokens(key.usage.num_model_requests)}</dd></div>
      <div><dt>Input tokens</dt><dd>${tokens(key.usage.input_tokens)}</dd></div>
      <div><dt>Output tokens</dt><dd>${tokens(key.usage.output_tokens)}</dd></div>
      <div><dt>Cost</dt><dd>${usd(key.usage.cost)}</dd></div>
    </dl>
    <h2>Limits</h2>
    ${Object.keys(key.limits).length === 0 ? html`<p class="empty">This key has no limits of its own.</p>` : html`<table><tbody>${standing(key.limits)}</tbody></table>`}
    ${key.team && html`<h2>Team ${key.team.name}</h2>${Object.keys(key.team.limits).length === 0 ? html`<p class="empty">The team sets no limits.</p>` : html`<table><tbody>${standing(key.team.limits)}</tbody></table>`}`}
  </section>`;
}
