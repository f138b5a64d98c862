// Playground: a served model, a key (the signed-in one by default), a streamed chat reply, and
// its usage and cost; a JSON schema box tries structured outputs.
import { useEffect, useState } from "../vendor/preact-hooks.js";
import { Empty, api, html, session, tokens, usd } from "../lib.js";

/** Streams a chat completion; calls onText with each piece; resolves with the final usage. */
async function stream(body, key, onText) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) throw new Error((await response.json().catch(() => null))?.error?.message ?? `HTTP ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const text = chunk.choices?.[0]?.delta?.content;
      if (text) onText(text);
      if (chunk.usage) usage = chunk.usage;
    }
  }
  return usage;
}

export function PlaygroundPage() {
  const [models, setModels] = useState(null);
  const [form, setForm] = useState({ model: "", key: "", system: "", prompt: "Hello! Tell me about rivers.", max_tokens: 64, temperature: 0.7, schema: "" });
  const [reply, setReply] = useState("");
  const [usage, setUsage] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    api("/v1/models").then((list) => {
      setModels(list.data);
      if (list.data.length > 0) setForm((f) => ({ ...f, model: list.data[0].id }));
    }).catch((err) => setError(err.message));
  }, []);
  const send = async (event) => {
    event.preventDefault();
    setReply("");
    setUsage(null);
    setError(null);
    setBusy(true);
    try {
      let responseFormat;
      if (form.schema.trim()) {
        try {
          responseFormat = { type: "json_schema", json_schema: { name: "playground", schema: JSON.parse(form.schema), strict: true } };
        } catch {
          throw new Error("The JSON schema is not valid JSON.");
        }
      }
      const messages = [...(form.system.trim() ? [{ role: "system", content: form.system }] : []), { role: "user", content: form.prompt }];
      const body = { model: form.model, messages, max_tokens: Number(form.max_tokens), temperature: Number(form.temperature), ...(responseFormat ? { response_format: responseFormat } : {}) };
      setUsage(await stream(body, form.key.trim() || session().key, (text) => setReply((r) => r + text)));
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  const set = (name) => (e) => setForm({ ...form, [name]: e.target.value });
  if (models && models.length === 0) return html`<h1>Playground</h1><${Empty}>No model is served to this key.</${Empty}>`;
  return html`<section aria-labelledby="playground-title">
    <h1 id="playground-title">Playground</h1>
    <form class="panel" onSubmit=${send}>
      <div class="row">
        <label>Model<select name="model" value=${form.model} onChange=${set("model")}>${(models ?? []).map((m) => html`<option value=${m.id}>${m.id}</option>`)}</select></label>
        <label>Key (blank: the one you signed in with)<input name="key" type="password" autocomplete="off" value=${form.key} onInput=${set("key")} /></label>
        <label>max_tokens<input name="max_tokens" type="number" min="1" size="6" value=${form.max_tokens} onInput=${set("max_tokens")} /></label>
        <label>temperature<input name="temperature" type="number" min="0" max="2" step="0.1" size="4" value=${form.temperature} onInput=${set("temperature")} /></label>
      </div>
      <label>System message<textarea name="system" value=${form.system} onInput=${set("system")}></textarea></label>
      <label>Your message<textarea name="prompt" required value=${form.prompt} onInput=${set("prompt")}></textarea></label>
      <label>JSON schema (optional: the reply then follows it)<textarea name="schema" class="mono" placeholder='{"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}' value=${form.schema} onInput=${set("schema")}></textarea></label>
      <p class="row"><button type="submit" disabled=${busy || !form.model}>${busy ? "Streaming…" : "Send"}</button></p>
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <h2>Reply</h2>
    <div class="reply" data-testid="reply" aria-live="polite">${reply || html`<span class="empty">The reply streams here.</span>`}</div>
    ${usage && html`<dl class="totals" data-testid="reply-usage">
      <div><dt>Prompt tokens</dt><dd data-testid="prompt-tokens">${tokens(usage.prompt_tokens)}</dd></div>
      <div><dt>of which cached</dt><dd>${tokens(usage.prompt_tokens_details?.cached_tokens ?? 0)}</dd></div>
      <div><dt>Completion tokens</dt><dd data-testid="completion-tokens">${tokens(usage.completion_tokens)}</dd></div>
      <div><dt>Cost</dt><dd data-testid="reply-cost">${usage.cost === undefined ? "no price" : usd(usage.cost)}</dd></div>
    </dl>`}
  </section>`;
}
