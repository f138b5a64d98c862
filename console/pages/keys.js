// Keys and teams: create a key (its secret shown once, with a copy button), set limits, revoke,
// and see each key's last use; create teams and see their limits.
import { useEffect, useState } from "../vendor/preact-hooks.js";
import { Empty, Problem, Time, api, html, tokens, usd } from "../lib.js";

const number = (text) => (text === "" ? undefined : Number(text));

function limitsText(k) {
  return [k.rpm && `${tokens(k.rpm)} rpm`, k.tpm && `${tokens(k.tpm)} tpm`, k.max_parallel && `${k.max_parallel} at once`,
    k.budget_usd !== null && k.budget_usd !== undefined && `${usd(k.budget_usd)} per ${k.budget_period ?? "month"}`,
    k.token_quota && `${tokens(k.token_quota)} tokens per ${k.quota_period ?? "month"}`,
    ...Object.entries(k.model_budgets ?? {}).map(([m, b]) => `${m}: ${b.budget_usd !== null ? usd(b.budget_usd) : `${tokens(b.token_quota)} tokens`} per ${b.period}`),
    k.data_residency === "local" && "data stays local"].filter(Boolean).join(", ") || "none";
}

function CreatedSecret({ created, onDone }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    await navigator.clipboard.writeText(created.secret);
    setCopied(true);
  };
  return html`<div class="panel" role="status" data-testid="new-secret">
    <p><strong>Key “${created.name}” created.</strong> Copy its secret now: it is not shown again.</p>
    <p class="secret" data-testid="secret">${created.secret}</p>
    <p class="row"><button type="button" onClick=${copy}>${copied ? "Copied" : "Copy the secret"}</button>
      <button type="button" class="secondary" onClick=${onDone}>Done</button></p>
  </div>`;
}

function LimitsEditor({ item, path, onSaved }) {
  const [form, setForm] = useState({ budget_usd: item.budget_usd ?? "", rpm: item.rpm ?? "", tpm: item.tpm ?? "" });
  const [error, setError] = useState(null);
  const save = async (event) => {
    event.preventDefault();
    try {
      const value = (v) => (v === "" ? null : Number(v));
      await api(path, { method: "PATCH", body: { budget_usd: value(form.budget_usd), rpm: value(form.rpm), tpm: value(form.tpm) } });
      onSaved();
    } catch (err) {
      setError(err.message);
    }
  };
  const field = (name, label) => html`<label>${label}<input name=${name} inputmode="decimal" size="8" value=${form[name]} onInput=${(e) => setForm({ ...form, [name]: e.target.value })} /></label>`;
  return html`<form class="row" onSubmit=${save} aria-label=${`Limits of ${item.name}`}>
    ${field("budget_usd", "Budget (USD/month)")} ${field("rpm", "RPM")} ${field("tpm", "TPM")}
    <button type="submit">Save limits</button>${error && html`<span class="error" role="alert">${error}</span>`}</form>`;
}

export function KeysPage() {
  const [state, setState] = useState({ loading: true });
  const [created, setCreated] = useState(null);
  const [editing, setEditing] = useState(null);
  const [form, setForm] = useState({ name: "", team_id: "", budget_usd: "", rpm: "" });
  const [teamForm, setTeamForm] = useState({ name: "", budget_usd: "" });
  const [error, setError] = useState(null);
  const load = () => Promise.all([api("/v1/admin/keys"), api("/v1/admin/teams")]).then(([keys, teams]) => setState({ keys: keys.data, teams: teams.data })).catch((err) => setState({ error: err }));
  useEffect(() => { load(); }, []);
  const create = async (event) => {
    event.preventDefault();
    setError(null);
    try {
      const key = await api("/v1/admin/keys", { method: "POST", body: { name: form.name, team_id: form.team_id || undefined, budget_usd: number(form.budget_usd), rpm: number(form.rpm) } });
      setCreated(key);
      setForm({ name: "", team_id: "", budget_usd: "", rpm: "" });
      await load();
    } catch (err) {
      setError(err.message);
    }
  };
  const createTeam = async (event) => {
    event.preventDefault();
    setError(null);
    try {
      await api("/v1/admin/teams", { method: "POST", body: { name: teamForm.name, budget_usd: number(teamForm.budget_usd) } });
      setTeamForm({ name: "", budget_usd: "" });
      await load();
    } catch (err) {
      setError(err.message);
    }
  };
  const revoke = async (key) => {
    if (!confirm(`Revoke the key “${key.name}”? Its requests are refused from now on.`)) return;
    await api(`/v1/admin/keys/${key.id}`, { method: "DELETE" });
    await load();
  };
  if (state.error) return html`<h1>Keys</h1><${Problem} error=${state.error} />`;
  if (state.loading) return html`<h1>Keys</h1><p class="loading">Loading…</p>`;
  const teamName = (id) => state.teams.find((t) => t.id === id)?.name ?? id;
  return html`<section aria-labelledby="keys-title">
    <h1 id="keys-title">Keys</h1>
    ${created && html`<${CreatedSecret} created=${created} onDone=${() => setCreated(null)} />`}
    <form class="panel row" onSubmit=${create} aria-label="Create a key">
      <label>Name<input name="name" required value=${form.name} onInput=${(e) => setForm({ ...form, name: e.target.value })} /></label>
      ${state.teams.length > 0 && html`<label>Team<select name="team_id" value=${form.team_id} onChange=${(e) => setForm({ ...form, team_id: e.target.value })}>
        <option value="">none</option>${state.teams.map((t) => html`<option value=${t.id}>${t.name}</option>`)}</select></label>`}
      <label>Budget (USD/month)<input name="budget_usd" inputmode="decimal" size="8" value=${form.budget_usd} onInput=${(e) => setForm({ ...form, budget_usd: e.target.value })} /></label>
      <label>RPM<input name="rpm" inputmode="numeric" size="6" value=${form.rpm} onInput=${(e) => setForm({ ...form, rpm: e.target.value })} /></label>
      <button type="submit">Create key</button>
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${state.keys.length === 0 ? html`<${Empty}>No keys yet: the server serves anonymously until the first one exists.</${Empty}>` : html`
      <table data-testid="keys"><thead><tr><th>Name</th><th>Prefix</th><th>Team</th><th>State</th><th>Created</th><th>Last used</th><th>Limits</th><th><span class="visually-hidden">Actions</span></th></tr></thead>
        <tbody>${state.keys.map((k) => html`<tr data-key-id=${k.id}>
          <td>${k.name}</td><td class="mono">${k.prefix}</td><td>${k.team_id ? teamName(k.team_id) : "—"}</td>
          <td>${k.revoked_at ? html`<span class="error">revoked</span>` : k.expires_at && k.expires_at * 1000 < Date.now() ? "expired" : html`<span class="ok">active</span>`}</td>
          <td><${Time} seconds=${k.created_at} /></td><td><${Time} seconds=${k.last_used_at} /></td>
          <td>${limitsText(k)}${editing === k.id && html`<${LimitsEditor} item=${k} path=${`/v1/admin/keys/${k.id}`} onSaved=${() => { setEditing(null); load(); }} />`}</td>
          <td>${!k.revoked_at && html`<div class="row"><button type="button" class="secondary" onClick=${() => setEditing(editing === k.id ? null : k.id)}>Limits</button>
            <button type="button" class="danger" onClick=${() => revoke(k)} aria-label=${`Revoke ${k.name}`}>Revoke</button></div>`}</td></tr>`)}</tbody></table>`}
    <h2>Teams</h2>
    <form class="panel row" onSubmit=${createTeam} aria-label="Create a team">
      <label>Team name<input name="team_name" required value=${teamForm.name} onInput=${(e) => setTeamForm({ ...teamForm, name: e.target.value })} /></label>
      <label>Budget (USD/month)<input name="team_budget_usd" inputmode="decimal" size="8" value=${teamForm.budget_usd} onInput=${(e) => setTeamForm({ ...teamForm, budget_usd: e.target.value })} /></label>
      <button type="submit">Create team</button>
    </form>
    ${state.teams.length === 0 ? html`<${Empty}>No teams. A team's limits bind all its keys at once.</${Empty}>` : html`
      <table data-testid="teams"><thead><tr><th>Name</th><th class="num">Keys</th><th>Models</th><th>Limits</th></tr></thead>
        <tbody>${state.teams.map((t) => html`<tr><td>${t.name} <span class="mono">${t.id}</span></td><td class="num">${t.num_keys}</td><td>${t.models?.join(", ") ?? "all"}</td><td>${limitsText(t)}</td></tr>`)}</tbody></table>`}
  </section>`;
}
