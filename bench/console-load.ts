/**
 * How long each console page takes to load in Chromium, with a ledger of 10,000 rows (20 keys,
 * 3 teams, 30 days), and whether the Usage page's totals equal the usage API's:
 *
 *   node --import tsx bench/console-load.ts [--rows 10000] [--runs 3] [--screenshot docs/console-usage.png]
 *
 * A page's load is from navigation to its data on screen (its table, totals or form), median of
 * --runs fresh loads. Needs Debian's chromium (as the console's tests do).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_ENGINE_OPTIONS } from "../engine/index.ts";
import { readCheckpoint } from "../models/checkpoint.ts";
import { ensureDefaultModel } from "../models/synthetic/default-model.ts";
import { startServer } from "../server/serve.ts";
import { launchChromium } from "./chromium.ts";

const { values } = parseArgs({ options: { rows: { type: "string", default: "10000" }, runs: { type: "string", default: "3" }, screenshot: { type: "string" } } });
const ADMIN = "console-load-admin";
const dir = mkdtempSync(join(tmpdir(), "tokenmill-console-load-"));
const checkpoint = readCheckpoint(ensureDefaultModel());
const MODEL = checkpoint.name;
const server = await startServer({
  models: [{ name: MODEL, engineOptions: { ...DEFAULT_ENGINE_OPTIONS, modelDir: checkpoint.dir, kvCacheMemoryBytes: 64 * 1024 ** 2, intraOpThreads: 1 }, defaults: checkpoint.generationDefaults, maxQueuedRequests: 64 }],
  host: "127.0.0.1", port: 0, shutdownTimeoutMs: 5000, bodyLimitBytes: 1024 * 1024, tokenizerThreads: 1, adminKeys: [ADMIN],
  db: { url: `sqlite:${join(dir, "t.db")}`, replica: "bench", prices: [{ model: MODEL, inputPerMtok: 150_000, cachedInputPerMtok: 75_000, outputPerMtok: 600_000 }] },
});
const admin = async (path: string, body?: unknown) => (await fetch(`${server.url}${path}`, {
  method: body ? "POST" : "GET", headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" }, body: body ? JSON.stringify(body) : undefined,
})).json() as Promise<Record<string, unknown> & { id: string }>;
try {
  await server.ready;
  const teams: { id: string }[] = [];
  for (let t = 0; t < 3; t++) teams.push(await admin("/v1/admin/teams", { name: `team-${t}`, budget_usd: 1000 }));
  const keys: { id: string; team_id?: unknown }[] = [];
  for (let k = 0; k < 20; k++) keys.push(await admin("/v1/admin/keys", { name: `key-${k}`, team_id: teams[k % 3].id, budget_usd: 100 }));
  // The rows go straight into the ledger's table, as 30 days of settled requests would have left them.
  const { openStore } = await import("../service/store/open-store.ts");
  const store = await openStore(`sqlite:${join(dir, "t.db")}`);
  const numRows = Number(values.rows);
  const nowMs = Date.now();
  const rows = Array.from({ length: numRows }, (_, i) => {
    const key = keys[i % keys.length];
    const input = 50 + (i % 400);
    const cached = i % 3 === 0 ? Math.floor(input / 2) : 0;
    const output = 20 + (i % 200);
    return {
      request_id: `bench-${i}`, http_request_id: null, key_id: key.id, team_id: String(key.team_id), model: MODEL, backend: `local:${MODEL}`, route: null,
      endpoint: "/v1/chat/completions", status: "completed" as const, uncached_input_tokens: input - cached, cached_input_tokens: cached, output_tokens: output,
      cost_micro_usd: Math.ceil(((input - cached) * 150_000 + cached * 75_000 + output * 600_000) / 1e6), started_ms: nowMs - Math.floor((i / numRows) * 29 * 86_400_000) - 60_000,
      finished_ms: nowMs, ttft_ms: 20, replica: "bench", residency: null,
    };
  });
  for (let i = 0; i < rows.length; i += 500) await store.db.insertInto("usage_ledger").values(rows.slice(i, i + 500)).execute();
  await store.close();

  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(`${server.url}/console/`);
    await page.getByLabel(/API key/).fill(ADMIN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { level: 1, name: "Usage" }).waitFor();
    const ready: Record<string, string> = {
      usage: "figure.chart canvas", budgets: "[data-testid=budgets]", keys: "[data-testid=keys]", models: "[data-testid=engines]", playground: "select[name=model] option",
    };
    let load = 0;
    console.log(`console page loads with ${numRows} ledger rows, 20 keys, 3 teams (median of ${values.runs}):`);
    for (const [name, selector] of Object.entries(ready)) {
      const times: number[] = [];
      for (let r = 0; r < Number(values.runs); r++) {
        const started = performance.now();
        await page.goto(`${server.url}/console/?load=${++load}#/${name}`);
        await page.locator(selector).first().waitFor({ state: "attached", timeout: 60_000 });
        times.push(performance.now() - started);
      }
      times.sort((a, b) => a - b);
      console.log(`  ${name.padEnd(10)} ${times[Math.floor((times.length - 1) / 2)].toFixed(0)} ms`);
    }
    // The Usage page's totals against the usage API's, for its default range (7 days).
    await page.goto(`${server.url}/console/?load=${++load}#/usage`);
    await page.locator("figure.chart canvas").first().waitFor();
    const shown = Number((await page.getByTestId("total-output").textContent())!.replace(/[^\d]/g, ""));
    const start = Math.floor((Date.now() / 1000 - 7 * 86_400) / 86_400) * 86_400 + 86_400;
    const report = await admin(`/v1/organization/usage/completions?start_time=${start}&limit=7`) as unknown as { data: { results: { output_tokens: number }[] }[] };
    const api = report.data.flatMap((b) => b.results).reduce((s, r) => s + r.output_tokens, 0);
    console.log(`usage page output tokens ${shown}, usage API ${api}: ${shown === api ? "equal" : "DIFFERENT"}`);
    if (values.screenshot) {
      await page.screenshot({ path: values.screenshot });
      console.log(`screenshot: ${values.screenshot}`);
    }
  } finally {
    await browser.close();
  }
} finally {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
}
