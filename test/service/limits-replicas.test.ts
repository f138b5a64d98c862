/**
 * Two `tokenmill serve` processes on one PostgreSQL, sharing keys: together they allow exactly
 * a key's budget and RPM limit (never twice it), their x-ratelimit headers count down one
 * shared bucket, and each alert's webhook fires once between them.
 */
import { describe, expect, it } from "vitest";
import { replicaPair } from "../helpers/replica-pair.ts";
import { openStore } from "../../service/store/open-store.ts";
import { burst, chat, createKey, statuses } from "../helpers/limits.ts";

describe("limits across two replicas on one PostgreSQL", () => {
  const pair = replicaPair<{ key_id: string; threshold: number }>("limit-replicas");
  const { hooks, urls } = pair;

  it("a budget of B with requests reserving c serves exactly B/c of 3·B/c sent to both, and the ledger's spend is B", async () => {
    const key = await createKey(urls()[0], { name: "shared-budget", budget_usd: "0.00004" });
    const answers = await burst(urls(), key.secret, 15, { max_tokens: 8, ignore_eos: true });
    expect(statuses(answers)).toEqual([...Array(5).fill("200"), ...Array(10).fill("429 insufficient_quota")].sort());
    await new Promise((r) => setTimeout(r, 100));
    const store = await openStore(pair.pg.url);
    try {
      const rows = await store.db.selectFrom("usage_ledger").selectAll().where("key_id", "=", key.id).execute();
      expect(rows.filter((r) => r.status === "completed")).toHaveLength(5);
      expect(rows.reduce((sum, r) => sum + Number(r.cost_micro_usd), 0)).toBe(40);
      expect(new Set(rows.filter((r) => r.status === "completed").map((r) => r.replica)).size).toBeGreaterThanOrEqual(1);
    } finally {
      await store.close();
    }
  });

  it("an RPM limit of R admits exactly R of 3R simultaneous requests sent to both", async () => {
    const key = await createKey(urls()[0], { name: "shared-rpm", rpm: 5 });
    const answers = await burst(urls(), key.secret, 15, { max_tokens: 1 });
    expect(statuses(answers)).toEqual([...Array(5).fill("200"), ...Array(10).fill("429 rate_limit_exceeded")].sort());
  });

  it("counts one bucket down, whichever replica answers", async () => {
    const key = await createKey(urls()[0], { name: "shared-headers", rpm: 4 });
    const seen: string[] = [];
    for (let i = 0; i < 5; i++) {
      const answer = await chat(urls()[i % 2], key.secret, { max_tokens: 1 });
      seen.push(`${answer.status} ${answer.headers.get("x-ratelimit-remaining-requests")}`);
    }
    expect(seen).toEqual(["200 3", "200 2", "200 1", "200 0", "429 0"]);
  });

  it("fires each alert's webhook once between them, however their settlements interleave", async () => {
    const key = await createKey(urls()[0], { name: "shared-alerts", budget_usd: "0.00001", budget_period: "day" });
    const answers = await burst(urls(), key.secret, 10, { max_tokens: 1, ignore_eos: true });
    expect(answers.every((a) => a.status === 200)).toBe(true);
    for (let i = 0; i < 100 && hooks.filter((h) => h.key_id === key.id).length < 3; i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 300));
    expect(hooks.filter((h) => h.key_id === key.id).map((h) => h.threshold).sort()).toEqual([100, 50, 80]);
  });
});
