// The console's shared pieces: Preact with htm, the API client (the signed-in key as a bearer
// token, kept in this tab's session storage only), and formatters for money, tokens and times.
import { h } from "./vendor/preact.js";
import htm from "./vendor/htm.js";

export const html = htm.bind(h);

const STORAGE = "tokenmill.console";

/** The signed-in key and whether it is the admin's; null when signed out. */
export function session() {
  const text = sessionStorage.getItem(STORAGE);
  return text ? JSON.parse(text) : null;
}

export function signIn(key, admin) {
  sessionStorage.setItem(STORAGE, JSON.stringify({ key, admin }));
}

export function signOut() {
  sessionStorage.removeItem(STORAGE);
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code ?? null;
  }
}

/** A JSON API call with the signed-in key (or `key`); throws ApiError with the API's message. */
export async function api(path, { method = "GET", body, key } = {}) {
  const secret = key ?? session()?.key;
  const response = await fetch(path, {
    method,
    headers: { ...(secret ? { authorization: `Bearer ${secret}` } : {}), ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

/** Every bucket of a paged usage or costs report (it follows next_page). */
export async function pages(path) {
  const buckets = [];
  let url = path;
  for (let i = 0; i < 100; i++) {
    const page = await api(url);
    buckets.push(...page.data);
    if (!page.has_more) break;
    url = `${path}&page=${page.next_page}`;
  }
  return buckets;
}

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

/** Tokens and counts with thousands separators. */
export const tokens = (n) => (n === null || n === undefined ? "—" : integer.format(n));

/** USD with enough digits for a fraction of a cent, and at least the cents: $12.50, $0.075, $0.000015. */
export function usd(value) {
  if (value === null || value === undefined) return "—";
  return `$${value.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 6 })}`;
}

export const percent = (x) => (x === null || x === undefined || Number.isNaN(x) ? "—" : `${(x * 100).toFixed(1)}%`);

/** A time in the browser's zone, with UTC on hover. */
export function Time({ seconds, dateOnly = false }) {
  if (seconds === null || seconds === undefined) return html`<span>never</span>`;
  const date = new Date(seconds * 1000);
  const local = dateOnly ? date.toLocaleDateString() : date.toLocaleString();
  return html`<time datetime=${date.toISOString()} title=${`${date.toISOString().replace("T", " ").slice(0, 19)} UTC`}>${local}</time>`;
}

/** A spend or use against its limit, as a bar and the figures. */
export function Meter({ used, limit, money }) {
  const share = limit > 0 ? used / limit : 0;
  const text = money ? `${usd(used)} of ${usd(limit)}` : `${tokens(used)} of ${tokens(limit)}`;
  return html`<div class="row" style="align-items:center">
    <div class=${`bar${share >= 1 ? " over" : ""}`} role="meter" aria-valuemin="0" aria-valuemax=${limit} aria-valuenow=${used} aria-label=${text}>
      <span style=${`width:${Math.min(100, share * 100).toFixed(1)}%`}></span>
    </div>
    <span>${text} (${percent(share)})</span>
  </div>`;
}

/** A page's error or empty state. */
export const Problem = ({ error }) => html`<p class="error" role="alert">${error.status === 403 || error.status === 401 ? "This page needs the admin key." : error.message}</p>`;
export const Empty = ({ children }) => html`<p class="empty">${children}</p>`;
