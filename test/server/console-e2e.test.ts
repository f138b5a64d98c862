/**
 * The web console in a real headless Chromium, against a real server with the default model
 * and a SQLite ledger: sign in with the admin key, create a key and copy its secret, use it
 * through the openai SDK, find its requests on the Usage page equal to the usage API's, revoke
 * it (the SDK then gets 401), stream a reply in the playground; and the console's auth: no key
 * shows only the sign-in page, an ordinary key gets no admin page. The Usage and Models pages
 * are screenshotted at 1280×800 into a temporary folder (CI's artifacts); the test asserts
 * what is on the page, not pixels.
 */
import { mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../server/serve.ts";
import { launchChromium } from "../../bench/chromium.ts";
import { ADMIN, MODEL, createKey } from "../helpers/limits.ts";
import { startTestServer } from "../helpers/server.ts";
import { testDatabase } from "../helpers/test-database.ts";

const SCREENSHOTS = join(tmpdir(), "tokenmill-console-screenshots");

describe("the web console in Chromium", () => {
  const database = testDatabase("sqlite", "console");
  let server: RunningServer;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  const errors: string[] = [];

  beforeAll(async () => {
    server = await startTestServer({
      db: { url: database.url, replica: "console", prices: [{ model: MODEL, inputPerMtok: 150_000, cachedInputPerMtok: 75_000, outputPerMtok: 600_000 }] }, adminKeys: [ADMIN],
    });
    await server.ready;
    // NOTE: once a key exists the server requires one (until then it serves anonymously, and any key would pass as "anonymous").
    await createKey(server.url, { name: "first" });
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.url });
    page = await context.newPage();
    page.on("pageerror", (err) => errors.push(err.message));
    mkdirSync(SCREENSHOTS, { recursive: true });
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  let loads = 0;
  /** Loads a page afresh (a new query string, so even the page already open is fetched again). */
  const open = async (hash: string, heading: string) => {
    await page.goto(`${server.url}/console/?load=${++loads}#/${hash}`);
    await page.getByRole("heading", { level: 1, name: heading }).waitFor();
  };

  it("without a key shows only the sign-in page, whatever page is asked for; the admin key signs in", async () => {
    await page.goto(`${server.url}/console/#/keys`);
    await page.getByLabel(/API key/).waitFor();
    expect(await page.locator("nav").count()).toBe(0);
    expect(await page.getByRole("heading", { name: "Keys" }).count()).toBe(0);
    await page.getByLabel(/API key/).fill("tm-not-a-key");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").waitFor();
    expect(await page.getByRole("alert").textContent()).toMatch(/does not know this key/);
    await page.getByLabel(/API key/).fill(ADMIN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { level: 1, name: "Keys" }).waitFor();
    expect(await page.locator("nav a").allTextContents()).toEqual(["Usage", "Budgets", "Keys", "Models", "Playground"]);
    // Nothing server-side: the key is in this tab's session storage alone.
    expect(await page.evaluate("Object.keys(sessionStorage)")).toEqual(["tokenmill.console"]);
    expect(await page.evaluate("document.cookie")).toBe("");
  });

  it("creates a key with its secret shown once and copied; the key works through the openai SDK; its requests show on the Usage page as the API counts them", async () => {
    await open("keys", "Keys");
    await page.getByLabel("Name", { exact: true }).fill("browser key");
    await page.getByRole("button", { name: "Create key" }).click();
    const secret = (await page.getByTestId("secret").textContent())!.trim();
    expect(secret).toMatch(/^tm-/);
    await page.getByRole("button", { name: "Copy the secret" }).click();
    expect(await page.evaluate("navigator.clipboard.readText()")).toBe(secret);
    await page.getByRole("button", { name: "Done" }).click();
    expect(await page.getByTestId("secret").count()).toBe(0);
    expect(await page.getByTestId("keys").textContent()).toContain("browser key");

    const sdk = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: secret, maxRetries: 0 });
    for (const content of ["one", "two", "three"]) await sdk.chat.completions.create({ model: MODEL, messages: [{ role: "user", content }], max_tokens: 5 });

    await open("usage", "Usage");
    const keyId = (await (await fetch(`${server.url}/v1/admin/keys`, { headers: { authorization: `Bearer ${ADMIN}` } })).json() as { data: { id: string; name: string }[] }).data.find((k) => k.name === "browser key")!.id;
    await page.getByLabel("Key").selectOption(keyId);
    await page.waitForFunction('document.querySelector("[data-testid=total-requests]")?.textContent === "3"');
    // The same range and filter through the usage API.
    const start = Math.floor((Date.now() / 1000 - 7 * 86_400) / 86_400) * 86_400 + 86_400;
    const report = await (await fetch(`${server.url}/v1/organization/usage/completions?start_time=${start}&limit=7&api_key_ids=${keyId}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json() as
      { data: { results: { input_tokens: number; output_tokens: number; input_cached_tokens: number; num_model_requests: number }[] }[] };
    const sum = (field: "input_tokens" | "output_tokens" | "input_cached_tokens" | "num_model_requests") => report.data.flatMap((b) => b.results).reduce((s, r) => s + r[field], 0);
    expect(sum("num_model_requests")).toBe(3);
    const shown = async (id: string) => Number((await page.getByTestId(id).textContent())!.replace(/[^\d]/g, ""));
    expect(await shown("total-requests")).toBe(sum("num_model_requests"));
    expect(await shown("total-input")).toBe(sum("input_tokens"));
    expect(await shown("total-cached")).toBe(sum("input_cached_tokens"));
    expect(await shown("total-output")).toBe(sum("output_tokens"));
    expect(await page.getByTestId("total-cost").textContent()).toMatch(/^\$0\.0000\d+/);
    await page.getByLabel("Key").selectOption("");
    await page.locator("figure.chart canvas").first().waitFor();
    await page.screenshot({ path: join(SCREENSHOTS, "usage.png") });

    await open("keys", "Keys");
    page.once("dialog", (dialog) => void dialog.accept());
    await page.getByRole("button", { name: "Revoke browser key" }).click();
    await page.locator(`tr[data-key-id="${keyId}"]`).getByText("revoked").waitFor();
    await expect(sdk.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "again" }], max_tokens: 2 })).rejects.toMatchObject({ status: 401 });
  });

  it("sets a key's limits, and shows its spend against its budget and the alerts that fired", async () => {
    // $0.60 per million output tokens: 5 output tokens cost $0.000003, so 2 requests pass 50% of $0.00001.
    const key = await createKey(server.url, { name: "budgeted in browser", budget_usd: "0.00001", budget_period: "day" });
    await open("keys", "Keys");
    await page.locator(`tr[data-key-id="${key.id}"]`).getByRole("button", { name: "Limits" }).click();
    await page.getByRole("form", { name: "Limits of budgeted in browser" }).getByLabel("RPM").fill("120");
    await page.getByRole("button", { name: "Save limits" }).click();
    await page.locator(`tr[data-key-id="${key.id}"]`).getByText("120 rpm").waitFor();
    const sdk = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key.secret, maxRetries: 0 });
    for (let i = 0; i < 2; i++) await sdk.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 5, ignore_eos: true } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    await new Promise((r) => setTimeout(r, 300));
    await open("budgets", "Budgets");
    // The figure the enforcement meter holds, as GET /v1/key reads it.
    const used = ((await (await fetch(`${server.url}/v1/key`, { headers: { authorization: `Bearer ${key.secret}` } })).json()) as { limits: { budget_usd: { used: number } } }).limits.budget_usd.used;
    expect(used).toBeGreaterThanOrEqual(0.000005);
    const shown = `$${used.toFixed(6)} of $0.00001 (${(used / 0.00001 * 100).toFixed(1)}%)`;
    expect(await page.getByTestId("budgets").textContent()).toContain(`budgeted in browser ${key.id}budget per day: ${shown}`);
    expect(await page.getByTestId("alerts").textContent()).toMatch(/key budgeted in browser\s*budget per day\s*50%/);
  });

  it("shows each served model with its state and price, and the engine's live load", async () => {
    await open("models", "Models");
    await page.getByTestId("engines").waitFor();
    expect(await page.getByTestId("served").textContent()).toMatch(new RegExp(`${MODEL}.*local:${MODEL}.*running.*\\$0\\.15 / \\$0\\.075 / \\$0\\.60 per Mtok`));
    expect(await page.getByTestId("engines").textContent()).toContain(MODEL);
    await page.screenshot({ path: join(SCREENSHOTS, "models.png") });
  });

  it("streams a reply in the playground and shows its usage and cost", async () => {
    await open("playground", "Playground");
    await page.getByLabel("max_tokens").fill("12");
    await page.getByRole("button", { name: "Send" }).click();
    await page.getByTestId("reply-usage").waitFor({ timeout: 60_000 });
    expect((await page.getByTestId("reply").textContent())!.length).toBeGreaterThan(0);
    expect(Number(await page.getByTestId("completion-tokens").textContent())).toBeGreaterThan(0);
    expect(await page.getByTestId("reply-cost").textContent()).toMatch(/^\$0\.0000\d+/);
    // A JSON schema makes the reply follow it.
    await page.getByLabel(/JSON schema/).fill('{"type": "object", "properties": {"answer": {"type": "string", "maxLength": 8}}, "required": ["answer"], "additionalProperties": false}');
    await page.getByLabel("max_tokens").fill("40");
    await page.getByRole("button", { name: "Send" }).click();
    await page.getByTestId("reply-usage").waitFor({ timeout: 60_000 });
    await page.getByRole("button", { name: "Send" }).waitFor();
    expect(Object.keys(JSON.parse((await page.getByTestId("reply").textContent())!) as object)).toEqual(["answer"]);
  });

  it("works from the keyboard, with a visible focus", async () => {
    await open("usage", "Usage");
    await page.locator("body").focus();
    await page.keyboard.press("Tab");
    expect(await page.evaluate("document.activeElement.textContent")).toBe("Usage");
    expect(await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")).toBe("solid");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { level: 1, name: "Keys" }).waitFor();
  });

  it("gives an ordinary key a view of itself alone: no admin page, and the APIs refuse it as before", async () => {
    const key = await createKey(server.url, { name: "ordinary", budget_usd: 2 });
    const other = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    try {
      const tab = await other.newPage();
      await tab.goto(`${server.url}/console/`);
      await tab.getByLabel(/API key/).fill(key.secret);
      await tab.getByRole("button", { name: "Sign in" }).click();
      await tab.getByRole("heading", { level: 1, name: /My key: ordinary/ }).waitFor();
      expect(await tab.locator("nav a").allTextContents()).toEqual(["My key", "Models", "Playground"]);
      await tab.goto(`${server.url}/console/#/keys`);
      await tab.getByRole("heading", { name: "Admin only" }).waitFor();
      const refused = await tab.evaluate(async (secret) => (await fetch("/v1/admin/keys", { headers: { authorization: `Bearer ${secret}` } })).status, key.secret);
      expect(refused).toBe(403);
    } finally {
      await other.close();
    }
    expect(errors).toEqual([]);
  });
});
