/**
 * Calendar periods in UTC, for budgets and quotas: a day starts at 00:00 UTC, a week on Monday
 * (ISO 8601), a month on its 1st. A request belongs to the period it started in.
 */
export type Period = "day" | "week" | "month";
export const PERIODS: readonly Period[] = ["day", "week", "month"];

const DAY_MS = 86_400_000;

export function periodStartMs(period: Period, atMs: number): number {
  const at = new Date(atMs);
  const dayStart = Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate());
  if (period === "day") return dayStart;
  if (period === "week") return dayStart - ((at.getUTCDay() + 6) % 7) * DAY_MS;
  return Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), 1);
}

/** When the period holding `atMs` ends (the next one's start). */
export function periodEndMs(period: Period, atMs: number): number {
  const start = periodStartMs(period, atMs);
  if (period === "day") return start + DAY_MS;
  if (period === "week") return start + 7 * DAY_MS;
  const at = new Date(start);
  return Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + 1, 1);
}

/** A duration as OpenAI writes its x-ratelimit-reset-* headers: "12ms", "1s", "6m0s", "1h2m3s". */
export function durationText(ms: number): string {
  const rounded = Math.max(0, Math.ceil(ms));
  if (rounded < 1000) return `${rounded}ms`;
  const totalSeconds = Math.ceil(rounded / 1000);
  const hours = Math.floor(totalSeconds / 3600);
  const minutes = Math.floor((totalSeconds % 3600) / 60);
  const seconds = totalSeconds % 60;
  if (hours > 0) return `${hours}h${minutes}m${seconds}s`;
  if (minutes > 0) return `${minutes}m${seconds}s`;
  return `${seconds}s`;
}
