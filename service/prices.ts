/**
 * Prices in three tiers (uncached input, cached input, output), per model, each with the time
 * it takes effect, so a price change never rewrites past cost. Money is integer micro-USD.
 *
 * The one rounding rule: a request's cost is
 *   (uncached × input + cached × cached_input + output × output_price) / 1,000,000
 * with prices in micro-USD per million tokens, computed exactly in integers and rounded half
 * up, once, on the total. A worst-case hold (a budget's reservation before a request runs)
 * prices every prompt token at the dearer input tier and rounds up, so that it is never below
 * the cost the request settles at. Both are computed here, and nowhere else.
 *
 * The batch tier (a batch job's requests) pays the price less its batch discount (the price's
 * own, else the server's, 50% by default): the numerator times (100 − discount), over 10^8,
 * still one rounding.
 */
import type { Kysely } from "kysely";
import type { Usage } from "./settlement.ts";
import type { Database, PriceTable } from "./store/database.ts";

/** How long a replica may price with what it last read (another may have changed a price). */
export const PRICE_REFRESH_MS = 5000;

export interface Price {
  model: string;
  effectiveMs: number;
  /** micro-USD per million tokens. */
  inputPerMtok: number;
  cachedInputPerMtok: number;
  outputPerMtok: number;
  /** The batch tier's discount, percent (0-100); null or absent: the server's. */
  batchDiscountPercent?: number | null;
}

/** standard: a request as sent; batch: one of a batch job's (at the batch discount). */
export type PriceTier = "standard" | "batch";

/** The batch discount when neither the price nor the server sets one (OpenAI's and Anthropic's batch APIs are half price). */
export const DEFAULT_BATCH_DISCOUNT_PERCENT = 50;

/** What share of the price a tier pays, as a fraction over 100. */
function tierShare(price: Price, tier: PriceTier, serverDiscount: number): bigint {
  return tier === "batch" ? BigInt(100 - (price.batchDiscountPercent ?? serverDiscount)) : 100n;
}

/** Exact: integers in, one rounding (half up) out. */
export function costMicroUsd(usage: Usage, price: Price, tier: PriceTier = "standard", serverDiscount = DEFAULT_BATCH_DISCOUNT_PERCENT): number {
  const uncached = BigInt(usage.promptTokens - usage.cachedPromptTokens);
  const numerator = (uncached * BigInt(price.inputPerMtok) + BigInt(usage.cachedPromptTokens) * BigInt(price.cachedInputPerMtok)
    + BigInt(usage.completionTokens) * BigInt(price.outputPerMtok)) * tierShare(price, tier, serverDiscount);
  return Number((numerator + 50_000_000n) / 100_000_000n);
}

/** The most a request of `promptTokens` and at most `outputTokens` can cost: every prompt token at the dearer input tier, rounded up. */
export function worstCaseMicroUsd(promptTokens: number, outputTokens: number, price: Price, tier: PriceTier = "standard", serverDiscount = DEFAULT_BATCH_DISCOUNT_PERCENT): number {
  const numerator = (BigInt(promptTokens) * BigInt(Math.max(price.inputPerMtok, price.cachedInputPerMtok)) + BigInt(outputTokens) * BigInt(price.outputPerMtok))
    * tierShare(price, tier, serverDiscount);
  return Number((numerator + 99_999_999n) / 100_000_000n);
}

/** "0.15" USD per million tokens as micro-USD per million tokens (150000), exactly: no binary fractions on the way. */
export function microUsdPerMtok(usdText: string): number {
  const match = /^\s*(\d+)(?:\.(\d{0,6}))?\s*$/.exec(usdText);
  if (!match) throw new Error(`"${usdText}" is not a price in USD per million tokens (up to 6 decimals)`);
  return Number(match[1]) * 1_000_000 + Number((match[2] ?? "").padEnd(6, "0"));
}

export class PriceBook {
  private cache: { prices: Price[]; untilMs: number } | null = null;
  /** Models billed at another's price while they have none (priceLike). */
  private readonly parents = new Map<string, string>();

  /** @param batchDiscountPercent the server's batch discount (--batch-discount), for prices that set none. */
  constructor(private readonly db: Kysely<Database>, readonly batchDiscountPercent = DEFAULT_BATCH_DISCOUNT_PERCENT) {}

  /** Sets a model's price from `effectiveMs` on (now by default); an identical current price is left alone. */
  async set(price: Omit<Price, "effectiveMs"> & { effectiveMs?: number }, nowMs = Date.now()): Promise<Price> {
    const current = await this.ownPriceAt(price.model, nowMs);
    const effectiveMs = price.effectiveMs ?? nowMs;
    if (current && price.effectiveMs === undefined && samePrice(current, price)) return current;
    const row: PriceTable = {
      model: price.model, effective_ms: effectiveMs, input_micro_usd_per_mtok: price.inputPerMtok,
      cached_input_micro_usd_per_mtok: price.cachedInputPerMtok, output_micro_usd_per_mtok: price.outputPerMtok,
      batch_discount_percent: price.batchDiscountPercent ?? null,
    };
    await this.db.insertInto("prices").values(row).onConflict((oc) => oc.columns(["model", "effective_ms"]).doUpdateSet(row)).execute();
    this.cache = null;
    return toPrice(row);
  }

  async list(): Promise<Price[]> {
    return (await this.db.selectFrom("prices").selectAll().orderBy("model").orderBy("effective_ms").execute()).map(toPrice);
  }

  /** What `usage` costs at `model`'s price in effect at `atMs` (a request's start), in micro-USD; null when the model has no price. */
  async costAt(model: string, usage: Usage, atMs: number, tier: PriceTier = "standard"): Promise<number | null> {
    const price = await this.priceAt(model, atMs);
    return price ? costMicroUsd(usage, price, tier, this.batchDiscountPercent) : null;
  }

  /** The worst-case hold for a request on `model` at `atMs` (see worstCaseMicroUsd); null when the model has no price. */
  async worstCaseAt(model: string, promptTokens: number, outputTokens: number, atMs: number, tier: PriceTier = "standard"): Promise<number | null> {
    const price = await this.priceAt(model, atMs);
    return price ? worstCaseMicroUsd(promptTokens, outputTokens, price, tier, this.batchDiscountPercent) : null;
  }

  /**
   * Bills `model` at `parent`'s price whenever it has none of its own (a LoRA adapter and its
   * base model); null: no longer. A price set for `model` always wins.
   */
  priceLike(model: string, parent: string | null): void {
    if (parent === null) this.parents.delete(model);
    else this.parents.set(model, parent);
  }

  /** The price in effect for `model` at `atMs` (its own, else its parent's: priceLike), or null when none is set. */
  async priceAt(model: string, atMs = Date.now()): Promise<Price | null> {
    const own = await this.ownPriceAt(model, atMs);
    const parent = this.parents.get(model);
    return own ?? (parent === undefined ? null : await this.ownPriceAt(parent, atMs));
  }

  private async ownPriceAt(model: string, atMs: number): Promise<Price | null> {
    const nowMs = Date.now();
    if (!this.cache || this.cache.untilMs <= nowMs) this.cache = { prices: await this.list(), untilMs: nowMs + PRICE_REFRESH_MS };
    let found: Price | null = null;
    for (const price of this.cache.prices) if (price.model === model && price.effectiveMs <= atMs) found = price;
    return found;
  }
}

function samePrice(a: Omit<Price, "effectiveMs">, b: Omit<Price, "effectiveMs">): boolean {
  return a.inputPerMtok === b.inputPerMtok && a.cachedInputPerMtok === b.cachedInputPerMtok && a.outputPerMtok === b.outputPerMtok
    && (a.batchDiscountPercent ?? null) === (b.batchDiscountPercent ?? null);
}

function toPrice(row: PriceTable): Price {
  return {
    model: row.model, effectiveMs: Number(row.effective_ms), inputPerMtok: Number(row.input_micro_usd_per_mtok),
    cachedInputPerMtok: Number(row.cached_input_micro_usd_per_mtok), outputPerMtok: Number(row.output_micro_usd_per_mtok),
    batchDiscountPercent: row.batch_discount_percent === null || row.batch_discount_percent === undefined ? null : Number(row.batch_discount_percent),
  };
}
