// The console's shell: sign-in, navigation by the URL's hash, and the pages.
import { render } from "./vendor/preact.js";
import { useEffect, useState } from "./vendor/preact-hooks.js";
import { ApiError, api, html, session, signIn, signOut } from "./lib.js";
import { UsagePage } from "./pages/usage.js";
import { BudgetsPage } from "./pages/budgets.js";
import { KeysPage } from "./pages/keys.js";
import { ModelsPage } from "./pages/models.js";
import { PlaygroundPage } from "./pages/playground.js";
import { MyKeyPage } from "./pages/my-key.js";

const ADMIN_PAGES = [["usage", "Usage", UsagePage], ["budgets", "Budgets", BudgetsPage], ["keys", "Keys", KeysPage], ["models", "Models", ModelsPage], ["playground", "Playground", PlaygroundPage]];
const KEY_PAGES = [["key", "My key", MyKeyPage], ["models", "Models", ModelsPage], ["playground", "Playground", PlaygroundPage]];

function SignIn({ onSignedIn }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      // The admin key opens the admin API; any other key that the server takes gets a read-only view of itself.
      let admin = true;
      try {
        await api("/v1/admin/keys", { key });
      } catch (err) {
        if (!(err instanceof ApiError) || (err.status !== 403 && err.status !== 401 && err.status !== 404)) throw err;
        admin = false;
        await api("/v1/key", { key });
      }
      signIn(key, admin);
      onSignedIn();
    } catch (err) {
      setError(err.status === 401 ? "The server does not know this key." : err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="signin">
    <h1>tokenmill console</h1>
    <form class="panel" onSubmit=${submit}>
      <label>API key (the admin key, or your own key for a view of it alone)
        <input type="password" name="key" autocomplete="off" required value=${key} onInput=${(e) => setKey(e.target.value)} autofocus />
      </label>
      <p class="row"><button type="submit" disabled=${busy}>Sign in</button></p>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <p class="empty">The key stays in this browser tab (session storage) and is sent only to this server.</p>
    </form>
  </main>`;
}

function App() {
  const [signedIn, setSignedIn] = useState(session());
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const onHash = () => setHash(location.hash);
    addEventListener("hashchange", onHash);
    return () => removeEventListener("hashchange", onHash);
  }, []);
  if (!signedIn) return html`<${SignIn} onSignedIn=${() => setSignedIn(session())} />`;
  const pages = signedIn.admin ? ADMIN_PAGES : KEY_PAGES;
  const wanted = hash.replace(/^#\/?/, "").split("?")[0];
  const known = ADMIN_PAGES.concat(KEY_PAGES).find(([id]) => id === wanted);
  const current = pages.find(([id]) => id === wanted) ?? (known ? null : pages[0]);
  useEffect(() => {
    document.title = `${current ? current[1] : "Admin only"} · tokenmill console`;
  });
  return html`<div>
    <header>
      <span class="brand">tokenmill</span>
      <nav aria-label="Console pages">
        ${pages.map(([id, title]) => html`<a href=${`#/${id}`} aria-current=${current?.[0] === id ? "page" : undefined}>${title}</a>`)}
      </nav>
      <span class="who">${signedIn.admin ? "admin" : "key view"}
        <button type="button" onClick=${() => { signOut(); setSignedIn(null); }}>Sign out</button></span>
    </header>
    <main id="main">
      ${current ? html`<${current[2]} key=${current[0]} />` : html`<h1>Admin only</h1><p class="error" role="alert">This page needs the admin key.</p>`}
    </main>
  </div>`;
}

const root = document.getElementById("app");
root.textContent = "";
render(html`<${App} />`, root);
