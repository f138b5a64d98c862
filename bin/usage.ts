/**
 * `tokenmill usage`: what was used and what it cost, from the ledger, as a table by key (or by
 * team, --by team) and model over --since/--until; with --plot FILE.svg, tokens per day by tier.
 */
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { startService } from "../service/service.ts";
import { defaultDbUrl } from "../service/store/open-store.ts";
import { usageByBucket, type UsageGroup } from "../service/usage-report.ts";
import { FlagError, dbUrlFlag, enumFlag, flagValue } from "./flags.ts";

export const USAGE_HELP = `tokenmill usage [--by key|team] [--team T] [--since DATE] [--until DATE] [--plot FILE.svg] [--json] [--db URL]
  --by key|team               one row per key (default) or per team, and model and backend
  --team T                    only the requests of team T's keys (its id or name)
  --since DATE (30 days ago)  --until DATE (now): which requests, by start time
  --plot FILE.svg             tokens per day, by tier (input, cached input, output)`;

const DAY_MS = 86_400_000;

export async function usageCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      db: { type: "string", default: defaultDbUrl() }, since: { type: "string" }, until: { type: "string" },
      plot: { type: "string" }, json: { type: "boolean", default: false }, help: { type: "boolean", short: "h" },
      by: { type: "string", default: "key" }, team: { type: "string" },
    },
  });
  if (values.help) return void console.log(USAGE_HELP);
  const untilMs = dateOf("until", values.until) ?? Date.now();
  const sinceMs = dateOf("since", values.since) ?? untilMs - 30 * DAY_MS;
  if (untilMs <= sinceMs) throw new FlagError("--until must be after --since");
  const by = flagValue("by", values.by, enumFlag("key", "team"));
  const service = await startService({ dbUrl: flagValue("db", values.db, dbUrlFlag), ledger: false });
  try {
    const team = values.team === undefined ? undefined : await service.teams.find(values.team);
    if (team === null) throw new FlagError(`no team with id or name ${values.team} (see teams list)`);
    const teamId = team?.id;
    // Whole days from the first midnight (UTC) at or before --since.
    const startMs = Math.floor(sinceMs / DAY_MS) * DAY_MS;
    const groups = await usageByBucket(service.store.db, { startMs: sinceMs, endMs: untilMs, bucketWidth: "1d", groupBy: [by === "team" ? "team_id" : "api_key_id", "model", "backend"], teamId });
    const names = new Map((await service.teams.list()).map((t) => [t.id, t.name]));
    const rows = totalsBy(groups, by === "team" ? (g) => (g.teamId === null ? "(no team)" : `${names.get(g.teamId) ?? "(deleted)"} ${g.teamId}`) : (g) => g.keyId ?? "");
    if (values.json) console.log(JSON.stringify(rows));
    else console.log(table(rows, by));
    if (values.plot) {
      const daily = await usageByBucket(service.store.db, { startMs, endMs: untilMs, bucketWidth: "1d", teamId });
      writeFileSync(values.plot, dailyPlotSvg(daily, startMs, untilMs));
      console.log(`plot: ${values.plot}`);
    }
  } finally {
    await service.close();
  }
}

interface Row {
  /** The key's id, or the team's name and id (--by team). */
  keyId: string;
  model: string;
  backend: string;
  requests: number;
  inputTokens: number;
  cachedTokens: number;
  outputTokens: number;
  costUsd: number;
}

function totalsBy(groups: UsageGroup[], ownerOf: (g: UsageGroup) => string): Row[] {
  const rows = new Map<string, Row>();
  for (const g of groups) {
    const owner = ownerOf(g);
    const id = `${owner}\u0000${g.model}\u0000${g.backend}`;
    const row = rows.get(id) ?? { keyId: owner, model: g.model ?? "", backend: g.backend ?? "", requests: 0, inputTokens: 0, cachedTokens: 0, outputTokens: 0, costUsd: 0 };
    row.requests += g.numRequests;
    row.inputTokens += g.inputTokens;
    row.cachedTokens += g.inputCachedTokens;
    row.outputTokens += g.outputTokens;
    row.costUsd += g.costMicroUsd / 1e6;
    rows.set(id, row);
  }
  return [...rows.values()].sort((a, b) => a.keyId.localeCompare(b.keyId) || a.model.localeCompare(b.model) || a.backend.localeCompare(b.backend));
}

function table(rows: Row[], by: "key" | "team"): string {
  const head = [by, "model", "backend", "requests", "input tokens", "of which cached", "output tokens", "cost (USD)"];
  const body = rows.map((r) => [r.keyId, r.model, r.backend, String(r.requests), String(r.inputTokens), String(r.cachedTokens), String(r.outputTokens), r.costUsd.toFixed(6)]);
  const total = ["total", "", "", ...[3, 4, 5, 6].map((i) => String(body.reduce((s, r) => s + Number(r[i]), 0))), rows.reduce((s, r) => s + r.costUsd, 0).toFixed(6)];
  const all = [head, ...body, total];
  const widths = head.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ")} |`;
  return [line(head), `|${widths.map((w, i) => (i < 3 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`, ...body.map(line), line(total)].join("\n");
}

/** Tokens per day, three bars a day (uncached input, cached input, output), as one self-contained SVG. */
export function dailyPlotSvg(daily: UsageGroup[], startMs: number, endMs: number): string {
  const days = Array.from({ length: Math.max(1, Math.ceil((endMs - startMs) / DAY_MS)) }, (_, i) => startMs + i * DAY_MS);
  const tiers = [
    { label: "input (uncached)", color: "#1f77b4", value: (g: UsageGroup) => g.inputTokens - g.inputCachedTokens },
    { label: "cached input", color: "#2ca02c", value: (g: UsageGroup) => g.inputCachedTokens },
    { label: "output", color: "#ff7f0e", value: (g: UsageGroup) => g.outputTokens },
  ];
  const valueAt = (day: number, tier: number) => tiers[tier].value(daily.find((g) => g.bucketStartMs === day) ?? { inputTokens: 0, inputCachedTokens: 0, outputTokens: 0 } as UsageGroup);
  const max = Math.max(1, ...days.flatMap((d) => tiers.map((_, t) => valueAt(d, t))));
  const [width, height, left, top, plotHeight] = [Math.max(480, 80 + days.length * 36), 360, 70, 50, 240];
  const slot = (width - left - 20) / days.length;
  const bar = slot / 4;
  const y = (v: number) => top + plotHeight - (v / max) * plotHeight;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${left}" y="24" font-size="14">tokens per day, by tier</text>`,
    `<line x1="${left}" y1="${top + plotHeight}" x2="${width - 20}" y2="${top + plotHeight}" stroke="#333"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotHeight}" stroke="#333"/>`,
    `<text x="${left - 6}" y="${top + 4}" text-anchor="end">${max}</text>`,
    `<text x="${left - 6}" y="${top + plotHeight + 4}" text-anchor="end">0</text>`,
  ];
  days.forEach((day, d) => {
    tiers.forEach((tier, t) => {
      const v = valueAt(day, t);
      parts.push(`<rect x="${(left + d * slot + bar * (t + 0.5)).toFixed(1)}" y="${y(v).toFixed(1)}" width="${bar.toFixed(1)}" height="${(top + plotHeight - y(v)).toFixed(1)}" fill="${tier.color}"><title>${tier.label}: ${v}</title></rect>`);
    });
    parts.push(`<text x="${(left + d * slot + slot / 2).toFixed(1)}" y="${top + plotHeight + 16}" text-anchor="middle">${new Date(day).toISOString().slice(5, 10)}</text>`);
  });
  tiers.forEach((tier, t) => parts.push(`<rect x="${left + t * 150}" y="${height - 28}" width="12" height="12" fill="${tier.color}"/><text x="${left + t * 150 + 18}" y="${height - 18}">${tier.label}</text>`));
  parts.push("</svg>");
  return parts.join("\n");
}

function dateOf(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) throw new FlagError(`--${flag} takes a date such as 2026-11-01; got "${text}"`);
  return ms;
}
