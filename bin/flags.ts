/**
 * Command-line flag values, validated with zod as the HTTP edge validates bodies: a bad
 * value stops the command at once with a message naming the flag and what it accepts.
 */
import { z } from "zod";
import { parseBytes } from "../engine/index.ts";

/** A flag's parser (from the string parseArgs gives) and, in words, what it accepts. */
export interface Flag<T> {
  schema: z.ZodType<T, string>;
  accepts: string;
}

export class FlagError extends Error {}

const integer = z.string().trim().regex(/^[+-]?\d+$/).transform(Number);
const decimal = z.string().trim().min(1).transform(Number);

export function intFlag(min: number, max = Number.MAX_SAFE_INTEGER): Flag<number> {
  const accepts = max === Number.MAX_SAFE_INTEGER ? `an integer ≥ ${min}` : `an integer from ${min} to ${max}`;
  return { schema: integer.pipe(z.number().int().min(min).max(max)), accepts };
}

/** A finite number in [min, max], or (min, max] with minExclusive. */
export function numberFlag(min: number, max = Number.MAX_VALUE, { minExclusive = false } = {}): Flag<number> {
  const range = minExclusive ? z.number().gt(min).max(max) : z.number().min(min).max(max);
  const low = minExclusive ? `> ${min}` : `≥ ${min}`;
  return { schema: decimal.pipe(range), accepts: max === Number.MAX_VALUE ? `a number ${low}` : `a number ${low} and ≤ ${max}` };
}

export const bytesFlag: Flag<number> = {
  schema: z.string().transform((text, ctx) => {
    try {
      const bytes = parseBytes(text);
      if (bytes > 0) return bytes;
    } catch {
      // reported below
    }
    ctx.addIssue({ code: "custom", message: "not a size" });
    return z.NEVER;
  }),
  accepts: "a size such as 2GiB, 512MiB or a number of bytes",
};

export function enumFlag<const T extends string>(...values: T[]): Flag<T> {
  return { schema: z.enum(values) as unknown as z.ZodType<T, string>, accepts: `one of ${values.join(", ")}` };
}

export function listFlag<T>(item: Flag<T>): Flag<T[]> {
  const schema = z.string().transform((text) => text.split(",").map((part) => part.trim())).pipe(z.array(item.schema).min(1));
  return { schema, accepts: `a comma-separated list, each ${item.accepts}` };
}

export const nonEmptyFlag: Flag<string> = { schema: z.string().trim().min(1), accepts: "a non-empty value" };

/** The flag's value, or throws FlagError naming the flag and what it accepts. */
export function flagValue<T>(name: string, raw: unknown, flag: Flag<T>): T {
  const parsed = flag.schema.safeParse(String(raw));
  if (!parsed.success) throw new FlagError(`--${name} takes ${flag.accepts}; got "${String(raw)}"`);
  return parsed.data;
}

/** As flagValue, for a flag that may be left out. */
export function optionalFlagValue<T>(name: string, raw: unknown, flag: Flag<T>): T | undefined {
  return raw === undefined ? undefined : flagValue(name, raw, flag);
}

export const dbUrlFlag: Flag<string> = {
  schema: z.string().trim().refine((url) => /^sqlite:.+/.test(url) || /^postgres(ql)?:\/\/.+/.test(url), "not a database URL"),
  accepts: "sqlite:PATH, postgres://USER@HOST:PORT/DB or none",
};

const DURATION_UNITS: Record<string, number> = { "": 1000, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A duration as milliseconds: seconds, or a number with s, m, h or d. */
export const durationFlag: Flag<number> = {
  schema: z.string().trim().regex(/^\d+(\.\d+)?[smhd]?$/).transform((text) => Math.round(Number(text.replace(/[smhd]$/, "")) * DURATION_UNITS[/[smhd]$/.exec(text)?.[0] ?? ""])).pipe(z.number().positive()),
  accepts: "a duration such as 30d, 12h, 15m or a number of seconds",
};
