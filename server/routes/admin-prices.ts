/**
 * The admin API for prices: GET /v1/admin/prices (every price, with the time it took effect)
 * and POST /v1/admin/prices (a new price for a model, now or from effective_at). USD per
 * million tokens in, integer micro-USD stored; past rows keep the price they were made at.
 */
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { microUsdPerMtok, type Price, type PriceBook } from "../../service/prices.ts";
import { noStore } from "../common/api-error.ts";
import { parseBody } from "../common/parse-body.ts";

/** USD per million tokens, as a JSON number or a decimal string, up to 6 decimals (1e-7 is refused, never rounded to 0). */
const usd = z.union([z.number().nonnegative(), z.string()]).transform((value, ctx) => {
  try {
    return microUsdPerMtok(String(value));
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message });
    return z.NEVER;
  }
});

/** How far back effective_at may be (a clock a little behind): a price can't be put in effect for requests already billed. */
const EFFECTIVE_AT_SLACK_MS = 5 * 60_000;

const setPrice = z.object({
  model: z.string().min(1).max(256), input: usd, cached_input: usd, output: usd,
  /** The batch tier's discount on this price, percent; absent: the server's (--batch-discount). */
  batch_discount: z.number().int().min(0).max(100).nullish(),
  effective_at: z.number().int().positive().max(253_402_300_799).optional()
    .refine((at) => at === undefined || at * 1000 >= Date.now() - EFFECTIVE_AT_SLACK_MS, {
      message: "effective_at is in the past: a new price takes effect now or later (past requests keep the price they were billed at)",
    }),
}).strict();

const perMtok = (micro: number) => micro / 1_000_000;

export function priceBody(price: Price) {
  return {
    object: "price", model: price.model, effective_at: Math.floor(price.effectiveMs / 1000),
    input: perMtok(price.inputPerMtok), cached_input: perMtok(price.cachedInputPerMtok), output: perMtok(price.outputPerMtok), unit: "USD per 1M tokens",
    batch_discount: price.batchDiscountPercent ?? null,
  };
}

export function registerAdminPriceRoutes(app: FastifyInstance, prices: PriceBook | null): void {
  const book = () => prices ?? (() => { throw noStore("price store"); })();

  app.get("/v1/admin/prices", async () => ({ object: "list", data: (await book().list()).map(priceBody) }));

  app.post("/v1/admin/prices", async (request, reply) => {
    const body = parseBody(setPrice, request.body);
    const price = await book().set({
      model: body.model, inputPerMtok: body.input, cachedInputPerMtok: body.cached_input, outputPerMtok: body.output, batchDiscountPercent: body.batch_discount ?? null,
      effectiveMs: body.effective_at === undefined ? undefined : body.effective_at * 1000,
    });
    return reply.status(201).send(priceBody(price));
  });
}
