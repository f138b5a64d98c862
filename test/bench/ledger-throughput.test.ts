/** The ledger bench measures real work: at each level its requests are reserved, settled and billed, exactly. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LEDGER_LEVELS, measureLedger } from "../../bench/ledger-throughput.ts";
import { openStore } from "../../service/store/open-store.ts";

describe("npm run bench -- --ledger-writes", () => {
  it("writes every row and, with limits, settles every reservation at the key and the team", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-ledger-bench-"));
    const url = `sqlite:${join(dir, "t.db")}`;
    try {
      for (const levels of LEDGER_LEVELS) expect(await measureLedger(url, 40, levels)).toMatchObject({ levels, numRequests: 40 });
      const store = await openStore(url);
      try {
        expect((await store.db.selectFrom("usage_ledger").select("status").execute()).filter((r) => r.status === "completed")).toHaveLength(120);
        // 96 uncached input tokens at $1/M, 32 cached at $0.5/M and 64 output at $2/M: 240 micro-USD each.
        const meters = await store.db.selectFrom("key_meters").selectAll().execute();
        const owners = meters.map((m) => `${m.key_id.replace(/_[^_]+$/, "")} ${m.meter} ${Number(m.used)} ${Number(m.reserved)}`).sort();
        expect(owners).toEqual(["key_bench usd 9600 0", "key_bench usd 9600 0", "team_bench usd 9600 0"]);
        expect(await store.db.selectFrom("limit_holds").selectAll().execute()).toEqual([]);
      } finally {
        await store.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
