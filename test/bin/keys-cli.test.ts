/** `tokenmill keys` as an operator runs it: create prints the secret once, list shows state and usage, update, revoke. */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.ts";

const dir = mkdtempSync(join(tmpdir(), "tokenmill-keys-"));
const db = `sqlite:${join(dir, "keys.db")}`;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("tokenmill keys", () => {
  it("creates, lists, updates and revokes keys, and stores no secret", () => {
    const created = runCli(["keys", "create", "--name", "team-a", "--models", "m1,m2", "--metadata", '{"team":"a"}', "--db", db, "--json"]);
    expect(created.status, created.stderr).toBe(0);
    const key = JSON.parse(created.stdout) as { id: string; secret: string; models: string[] };
    expect(key.secret).toMatch(/^tm-/);
    expect(key.models).toEqual(["m1", "m2"]);
    for (const file of readdirSync(dir)) expect(readFileSync(join(dir, file)).includes(key.secret.slice(8))).toBe(false);

    const listed = runCli(["keys", "list", "--db", db]);
    expect(listed.stdout).toMatch(new RegExp(`${key.id}\\s+tm-.{5}…\\s+team-a\\s+active .*models m1,m2\\s+priority standard\\s+this month: 0 requests`));
    expect(listed.stdout).not.toContain(key.secret);
    expect(runCli(["keys", "update", key.id, "--name", "team-b", "--models", "all", "--priority", "batch", "--db", db]).stdout).toMatch(/team-b\s+active .*models all\s+priority batch/);
    expect(runCli(["keys", "revoke", key.id, "--db", db]).status).toBe(0);
    expect(runCli(["keys", "list", "--db", db]).stdout).toMatch(/team-b\s+revoked/);
    const again = runCli(["keys", "revoke", key.id, "--db", db]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/no live key/);
    const limited = JSON.parse(runCli(["keys", "create", "--name", "limited", "--rpm", "60", "--tpm", "90000", "--max-parallel", "4", "--budget-usd", "12.50",
      "--budget-period", "week", "--token-quota", "1000000", "--db", db, "--json"]).stdout) as { id: string; limits: Record<string, unknown> };
    expect(limited.limits).toEqual({ rpm: 60, tpm: 90000, maxParallel: 4, budgetMicroUsd: 12_500_000, budgetPeriod: "week", tokenQuota: 1_000_000, quotaPeriod: null });
    expect(runCli(["keys", "list", "--db", db]).stdout).toMatch(/limited .*limits rpm 60, tpm 90000, max-parallel 4, budget \$12\.50\/week, quota 1000000 tokens\/month/);
    const cleared = runCli(["keys", "update", limited.id, "--rpm", "none", "--budget-usd", "none", "--tpm", "100", "--db", db]);
    expect(cleared.stdout).toMatch(/limits tpm 100, max-parallel 4, quota 1000000 tokens\/month$/m);
    const bad = runCli(["keys", "create", "--db", db]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/needs --name/);
  });
});

describe("tokenmill teams", () => {
  it("creates, lists, updates and deletes teams; keys join them by name; the rules hold", () => {
    const created = runCli(["teams", "create", "--name", "search", "--models", "m1,m2", "--budget-usd", "100", "--rpm", "600", "--member-budget-usd", "5",
      "--model-budget", "m1=20/day", "--model-quota", "m2=5000", "--data-residency", "local", "--priority", "interactive", "--db", db, "--json"]);
    expect(created.status, created.stderr).toBe(0);
    const team = JSON.parse(created.stdout) as { id: string; modelLimits: unknown; memberBudget: unknown; dataResidency: string };
    expect(team).toMatchObject({
      dataResidency: "local", memberBudget: { budgetMicroUsd: 5_000_000, budgetPeriod: null },
      modelLimits: { m1: { budgetMicroUsd: 20_000_000, budgetPeriod: "day", tokenQuota: null }, m2: { tokenQuota: 5000, quotaPeriod: "month", budgetMicroUsd: null } },
    });
    expect(runCli(["teams", "create", "--name", "search", "--db", db]).stderr).toMatch(/A team named "search" exists already/);
    const key = JSON.parse(runCli(["keys", "create", "--name", "svc", "--team", "search", "--models", "m1", "--db", db, "--json"]).stdout) as { id: string; teamId: string };
    expect(key.teamId).toBe(team.id);
    expect(runCli(["keys", "create", "--name", "outside", "--team", "search", "--models", "m3", "--db", db]).stderr).toMatch(/m3 is not/);
    expect(runCli(["keys", "create", "--name", "lost", "--team", "nope", "--db", db]).stderr).toMatch(/no team with id or name nope/);
    const line = runCli(["keys", "list", "--team", "search", "--db", db]).stdout.trim();
    expect(line.startsWith(key.id)).toBe(true);
    expect(line).toContain(`svc  active`);
    expect(line).toContain(`team ${team.id}  models m1  priority (the team's)`);
    const listed = runCli(["teams", "list", "--db", db]).stdout;
    expect(listed).toMatch(/search\s+models m1,m2\s+priority interactive\s+data local\s+member budget \$5\.00\/month\s+limits rpm 600, budget \$100\.00\/month, m1 budget \$20\.00\/day, m2 quota 5000 tokens\/month\s+keys 1\s+this month: 0 requests/);
    expect(runCli(["teams", "update", "search", "--rpm", "none", "--model-budget", "none", "--name", "search-2", "--db", db]).stdout).toMatch(/search-2 .*limits budget \$100\.00\/month$/m);
    const refused = runCli(["teams", "delete", "search-2", "--db", db]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/still has 1 live key/);
    expect(runCli(["keys", "update", key.id, "--team", "none", "--db", db]).status).toBe(0);
    expect(runCli(["teams", "delete", team.id, "--db", db]).stdout).toMatch(/deleted/);
    expect(runCli(["teams", "list", "--db", db]).stdout).toMatch(/\(no teams\)/);
    expect(runCli(["keys", "create", "--name", "x", "--model-budget", "m1=5/day", "--model-quota", "m1=100/week", "--db", db]).stderr).toMatch(/share one period/);
  });
});

describe("tokenmill usage", () => {
  it("prints the ledger's totals by key and model, and plots tokens per day by tier", async () => {
    const { openStore } = await import("../../service/store/open-store.ts");
    const { Ledger } = await import("../../service/ledger.ts");
    const usageDb = `sqlite:${join(dir, "usage.db")}`;
    const store = await openStore(usageDb);
    const ledger = new Ledger(store.db, "t");
    const now = Date.now();
    const { TeamStore } = await import("../../service/teams.ts");
    const team = await new TeamStore(store.db).create({ name: "usage-team" });
    const settle = (id: string, keyId: string, model: string, prompt: number, cached: number, completion: number, teamId: string | null = null) => ledger.settle({
      id, requestId: id, keyId, model, endpoint: "/v1/completions", startedMs: now - 3_600_000, finishedMs: now, ttftMs: 5, outcome: "finished",
      usage: { promptTokens: prompt, cachedPromptTokens: cached, completionTokens: completion }, teamId,
    });
    await Promise.all([settle("u1", "key_a", "m1", 10, 4, 7, team.id), settle("u2", "key_a", "m1", 20, 0, 3, team.id), settle("u3", "key_b", "m2", 5, 5, 1)]);
    await ledger.close();
    await store.close();
    const byTeam = runCli(["usage", "--by", "team", "--db", usageDb, "--json"]);
    expect(byTeam.status, byTeam.stderr).toBe(0);
    expect(JSON.parse(byTeam.stdout)).toEqual([
      { keyId: "(no team)", model: "m2", backend: "local", requests: 1, inputTokens: 5, cachedTokens: 5, outputTokens: 1, costUsd: 0 },
      { keyId: `usage-team ${team.id}`, model: "m1", backend: "local", requests: 2, inputTokens: 30, cachedTokens: 4, outputTokens: 10, costUsd: 0 },
    ]);
    expect(runCli(["usage", "--by", "team", "--team", "usage-team", "--db", usageDb]).stdout).toMatch(/\| team\s+\|[^\n]*\n[^\n]*\n\| usage-team team_\S+ \| m1 .*\| total/s);
    const json = runCli(["usage", "--db", usageDb, "--json"]);
    expect(json.status, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual([
      { keyId: "key_a", model: "m1", backend: "local", requests: 2, inputTokens: 30, cachedTokens: 4, outputTokens: 10, costUsd: 0 },
      { keyId: "key_b", model: "m2", backend: "local", requests: 1, inputTokens: 5, cachedTokens: 5, outputTokens: 1, costUsd: 0 },
    ]);
    const plot = join(dir, "usage.svg");
    const text = runCli(["usage", "--db", usageDb, "--since", new Date(now - 2 * 86_400_000).toISOString(), "--plot", plot]);
    expect(text.stdout).toMatch(/\| total\s+\|\s+\|\s+\|\s+3 \|\s+35 \|\s+9 \|\s+11 \|/);
    const svg = readFileSync(plot, "utf8");
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg).toContain("<title>output: 11</title>");
    expect(svg).toContain("<title>cached input: 9</title>");
  });
});
