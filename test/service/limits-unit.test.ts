/** The pure parts of per-key limits: UTC calendar periods, reset durations, token-bucket arithmetic, defaults. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { costMicroUsd, worstCaseMicroUsd } from "../../service/prices.ts";
import { NO_LIMITS, effectiveLimits } from "../../service/limits/key-limits.ts";
import { durationText, periodEndMs, periodStartMs } from "../../service/limits/periods.ts";
import { MemoryBuckets, msUntil } from "../../service/limits/rate-buckets.ts";

describe("periods", () => {
  const at = Date.parse("2026-12-02T15:30:00Z"); // a Wednesday
  it("start at UTC midnight, on Monday, on the 1st; and end where the next starts", () => {
    expect(new Date(periodStartMs("day", at)).toISOString()).toBe("2026-12-02T00:00:00.000Z");
    expect(new Date(periodStartMs("week", at)).toISOString()).toBe("2026-11-30T00:00:00.000Z");
    expect(new Date(periodStartMs("month", at)).toISOString()).toBe("2026-12-01T00:00:00.000Z");
    expect(new Date(periodEndMs("day", at)).toISOString()).toBe("2026-12-03T00:00:00.000Z");
    expect(new Date(periodEndMs("week", at)).toISOString()).toBe("2026-12-07T00:00:00.000Z");
    expect(new Date(periodEndMs("month", Date.parse("2026-12-31T23:59:59Z"))).toISOString()).toBe("2027-01-01T00:00:00.000Z");
  });
  it("a Sunday belongs to the week that began on the Monday before it; a Monday starts its own", () => {
    expect(new Date(periodStartMs("week", Date.parse("2026-12-06T23:00:00Z"))).toISOString()).toBe("2026-11-30T00:00:00.000Z");
    expect(new Date(periodStartMs("week", Date.parse("2026-12-07T00:00:00Z"))).toISOString()).toBe("2026-12-07T00:00:00.000Z");
  });
  it("write resets as OpenAI's headers do", () => {
    expect(durationText(12)).toBe("12ms");
    expect(durationText(0.2)).toBe("1ms");
    expect(durationText(1000)).toBe("1s");
    expect(durationText(360_000)).toBe("6m0s");
    expect(durationText(3_723_000)).toBe("1h2m3s");
  });
});

describe("token buckets in memory", () => {
  it("start full, take only what they hold, and refill continuously", async () => {
    let now = 0;
    const buckets = new MemoryBuckets(() => now);
    const bucket = { keyId: "k", kind: "requests" as const, perMinute: 60 };
    for (let i = 0; i < 60; i++) expect((await buckets.take(bucket, 1)).taken).toBe(true);
    const refused = await buckets.take(bucket, 1);
    expect(refused).toEqual({ taken: false, level: 0 });
    expect(msUntil(bucket, refused.level, 1)).toBe(1000);
    now = 999;
    expect((await buckets.take(bucket, 1)).taken).toBe(false);
    now = 1000;
    expect((await buckets.take(bucket, 1)).taken).toBe(true);
    now = 10 * 60_000;
    expect(await buckets.level(bucket)).toBe(60);
  });
  it("settle what an estimate got wrong: a refund caps at full, a charge may go below zero", async () => {
    let now = 0;
    const buckets = new MemoryBuckets(() => now);
    const bucket = { keyId: "k", kind: "tokens" as const, perMinute: 600 };
    await buckets.take(bucket, 100);
    await buckets.adjust(bucket, 1000);
    expect(await buckets.level(bucket)).toBe(600);
    await buckets.adjust(bucket, -700);
    expect(await buckets.level(bucket)).toBe(-100);
    expect((await buckets.take(bucket, 1)).taken).toBe(false);
    now = 11_000; // 110 tokens later
    expect((await buckets.take(bucket, 10)).taken).toBe(true);
    expect(await buckets.level(bucket)).toBeCloseTo(0, 9);
  });
  it("keep keys and kinds apart", async () => {
    const buckets = new MemoryBuckets(() => 0);
    await buckets.take({ keyId: "a", kind: "requests", perMinute: 1 }, 1);
    expect((await buckets.take({ keyId: "b", kind: "requests", perMinute: 1 }, 1)).taken).toBe(true);
    expect((await buckets.take({ keyId: "a", kind: "tokens", perMinute: 1 }, 1)).taken).toBe(true);
    expect((await buckets.take({ keyId: "a", kind: "requests", perMinute: 1 }, 1)).taken).toBe(false);
  });
});

describe("a key's limits over the defaults", () => {
  const defaults = { ...NO_LIMITS, rpm: 100, budgetMicroUsd: 5_000_000, budgetPeriod: "day" as const };
  it("take the key's value where it has one and the default elsewhere", () => {
    expect(effectiveLimits({ ...NO_LIMITS, rpm: 5 }, defaults)).toMatchObject({ rpm: 5, budgetMicroUsd: 5_000_000, budgetPeriod: "day", tpm: null });
  });
  it("keep a budget and its period together, a month when neither says", () => {
    expect(effectiveLimits({ ...NO_LIMITS, budgetMicroUsd: 1 }, defaults)).toMatchObject({ budgetMicroUsd: 1, budgetPeriod: "month" });
    expect(effectiveLimits({ ...NO_LIMITS, tokenQuota: 10 }, NO_LIMITS)).toMatchObject({ tokenQuota: 10, quotaPeriod: "month" });
    expect(effectiveLimits(NO_LIMITS, NO_LIMITS)).toEqual(NO_LIMITS);
  });
});

describe("money, decided in prices.ts", () => {
  it("a worst-case hold is never below the cost a request settles at, whatever its split between cached and uncached input", () => {
    const price = { model: "m", effectiveMs: 0, inputPerMtok: 150_001, cachedInputPerMtok: 75_003, outputPerMtok: 600_007 };
    fc.assert(fc.property(fc.nat(200_000), fc.nat(200_000), fc.nat(200_000), (prompt, cachedShare, output) => {
      const cached = Math.min(prompt, cachedShare);
      const worst = worstCaseMicroUsd(prompt, output, price);
      expect(worst).toBeGreaterThanOrEqual(costMicroUsd({ promptTokens: prompt, cachedPromptTokens: cached, completionTokens: output }, price));
      // Rounded up, not half up: one token over a whole micro-dollar still holds the next one.
      expect(worst - (prompt * 150_001 + output * 600_007) / 1e6).toBeLessThan(1);
    }));
    expect(costMicroUsd({ promptTokens: 1, cachedPromptTokens: 0, completionTokens: 0 }, { ...price, inputPerMtok: 500_000 })).toBe(1);
    expect(costMicroUsd({ promptTokens: 1, cachedPromptTokens: 0, completionTokens: 0 }, { ...price, inputPerMtok: 499_999 })).toBe(0);
    expect(worstCaseMicroUsd(1, 0, { ...price, inputPerMtok: 1, cachedInputPerMtok: 1 })).toBe(1);
  });
});

describe("the batch tier's price", () => {
  const price = { model: "m", effectiveMs: 0, inputPerMtok: 1_000_000, cachedInputPerMtok: 500_000, outputPerMtok: 2_000_000 };
  const usage = { promptTokens: 7, cachedPromptTokens: 2, completionTokens: 3 };
  it("is the price less the discount (the price's own, else the server's), rounded once, and its worst case never below it", () => {
    // Full: 5·1 + 2·0.5 + 3·2 = 12 micro-USD.
    expect(costMicroUsd(usage, price)).toBe(12);
    expect(costMicroUsd(usage, price, "batch")).toBe(6);
    expect(costMicroUsd(usage, price, "batch", 25)).toBe(9);
    expect(costMicroUsd(usage, { ...price, batchDiscountPercent: 90 }, "batch", 25)).toBe(1);
    expect(costMicroUsd({ promptTokens: 1, cachedPromptTokens: 0, completionTokens: 0 }, price, "batch")).toBe(1); // 0.5 rounds half up
    fc.assert(fc.property(fc.nat(10_000), fc.nat(10_000), fc.nat(10_000), fc.integer({ min: 0, max: 100 }), (prompt, cachedShare, output, discount) => {
      const cached = prompt === 0 ? 0 : cachedShare % (prompt + 1);
      const u = { promptTokens: prompt, cachedPromptTokens: cached, completionTokens: output };
      expect(worstCaseMicroUsd(prompt, output, price, "batch", discount)).toBeGreaterThanOrEqual(costMicroUsd(u, price, "batch", discount));
      expect(costMicroUsd(u, price, "batch", discount)).toBeLessThanOrEqual(costMicroUsd(u, price));
    }));
  });
});
