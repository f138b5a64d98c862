/**
 * Teams across two `tokenmill serve` processes on one PostgreSQL: a team's budget and RPM limit
 * are shared by its keys whichever replica each request reaches (never twice the limit), a
 * key's budget inside the team's still binds, and each team alert fires once between them,
 * across a restart of one of them.
 */
import { describe, expect, it } from "vitest";
import { replicaPair } from "../helpers/replica-pair.ts";
import { createKey, statuses } from "../helpers/limits.ts";
import { serveProcess } from "../helpers/serve-process.ts";
import { createTeam, ledgerOf, spread } from "../helpers/teams.ts";

describe("teams across two replicas on one PostgreSQL", () => {
  const pair = replicaPair<{ level: string; team_id: string | null; threshold: number }>("team-replicas");
  const { replicas, hooks, urls } = pair;

  it("a team budget B shared by 3 keys: 30 concurrent requests over both replicas serve exactly what B pays for", async () => {
    const team = await createTeam(urls()[0], { name: "shared-team", budget_usd: "0.00008", budget_period: "day" });
    const keys = await Promise.all([0, 1, 2].map((i) => createKey(urls()[i % 2], { name: `shared-${i}`, team_id: team.id })));
    const answers = await spread(urls(), keys.map((k) => k.secret), 30, { max_tokens: 8, ignore_eos: true });
    expect(statuses(answers)).toEqual([...Array(10).fill("200"), ...Array(20).fill("429 insufficient_quota")].sort());
    await new Promise((r) => setTimeout(r, 100));
    expect(await ledgerOf(pair.pg.url, { teamId: team.id })).toMatchObject({ served: 10, costMicroUsd: 80, rows: 30 });
  });

  it("a key budget inside the team's binds across both replicas too", async () => {
    const team = await createTeam(urls()[0], { name: "nested-team", budget_usd: "0.00008", budget_period: "day" });
    const small = await createKey(urls()[1], { name: "nested-small", team_id: team.id, budget_usd: "0.000024", budget_period: "day" });
    const other = await createKey(urls()[0], { name: "nested-other", team_id: team.id });
    const answers = await Promise.all([
      spread(urls(), [small.secret], 10, { max_tokens: 8, ignore_eos: true }),
      spread(urls(), [other.secret], 10, { max_tokens: 8, ignore_eos: true }),
    ]);
    const served = answers.map((a) => a.filter((x) => x.status === 200).length);
    expect(served[0]).toBeLessThanOrEqual(3);
    expect(served[0] + served[1]).toBe(10);
    expect(await ledgerOf(pair.pg.url, { keyId: small.id })).toMatchObject({ costMicroUsd: served[0] * 8 });
    expect(await ledgerOf(pair.pg.url, { teamId: team.id })).toMatchObject({ served: 10, costMicroUsd: 80 });
  });

  it("a team's RPM limit is shared by its keys on both replicas: R of 3R simultaneous requests", async () => {
    const team = await createTeam(urls()[0], { name: "rpm-team", rpm: 5 });
    const keys = await Promise.all([0, 1, 2].map((i) => createKey(urls()[0], { name: `rpm-${i}`, team_id: team.id })));
    const answers = await spread(urls(), keys.map((k) => k.secret), 15, { max_tokens: 1 });
    expect(statuses(answers)).toEqual([...Array(5).fill("200"), ...Array(10).fill("429 rate_limit_exceeded")].sort());
  });

  it("fires each team alert once between the replicas, across a restart of one", async () => {
    // A budget of 10 one-token requests: 5 fire 50%, 8 fire 80%, 10 fire 100%.
    const team = await createTeam(urls()[0], { name: "alerting-team", budget_usd: "0.00001", budget_period: "day" });
    const keys = await Promise.all([0, 1].map((i) => createKey(urls()[0], { name: `alerting-${i}`, team_id: team.id })));
    const teamHooks = () => hooks.filter((h) => h.level === "team" && h.team_id === team.id).map((h) => h.threshold).sort((a, b) => a - b);
    const waitFor = async (n: number) => {
      for (let i = 0; i < 100 && teamHooks().length < n; i++) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 300));
    };
    const first = await spread(urls(), keys.map((k) => k.secret), 6, { max_tokens: 1, ignore_eos: true });
    expect(first.every((a) => a.status === 200)).toBe(true);
    await waitFor(1);
    expect(teamHooks()).toEqual([50]);
    await replicas[0].stop();
    replicas[0] = await serveProcess(pair.pg.url, "a", pair.dir, pair.args);
    const second = await spread(urls(), keys.map((k) => k.secret), 4, { max_tokens: 1, ignore_eos: true });
    expect(second.every((a) => a.status === 200)).toBe(true);
    await waitFor(3);
    expect(teamHooks()).toEqual([50, 80, 100]);
  }, 120_000);
});
