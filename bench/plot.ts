/**
 * A concurrency sweep drawn as one self-contained SVG, no dependencies: output throughput on the
 * left, latencies on the right (log scale, since TTFT and TPOT differ by orders of magnitude),
 * both against concurrency on a log2 axis.
 */

export interface SweepPoint {
  concurrency: number;
  outputThroughput: number;
  meanTtftMs: number;
  meanTpotMs: number;
  p99E2elMs?: number;
}

interface Series {
  label: string;
  color: string;
  dashed?: boolean;
  values: (number | undefined)[];
}

interface Panel {
  left: number;
  title: string;
  yLabel: string;
  yTicks: number[];
  y: (v: number) => number;
  series: Series[];
}

const WIDTH = 1140;
const HEIGHT = 480;
const PANEL_WIDTH = 470;
const TOP = 70;
const PLOT_HEIGHT = 300;
/** Room between the extreme values and the frame, as a factor. */
const HEADROOM = 1.05;
const MIN_LABEL_GAP = 30;
const FONT = `font-family="Helvetica, Arial, sans-serif"`;

export function sweepPlotSvg(points: readonly SweepPoint[], title: string): string {
  const sorted = [...points].filter((p) => p.concurrency > 0).sort((a, b) => a.concurrency - b.concurrency);
  const concurrencies = sorted.map((p) => p.concurrency);
  const [xLow, xHigh] = log2Domain(concurrencies);
  const x = (left: number, c: number) => left + ((Math.log2(c) - xLow) / (xHigh - xLow)) * PANEL_WIDTH;

  const throughputTicks = linearTicks(Math.max(0, ...sorted.map((p) => p.outputThroughput)));
  const throughputMax = throughputTicks[throughputTicks.length - 1];
  const latencySeries: Series[] = [
    { label: "mean TTFT", color: "#d62728", values: sorted.map((p) => p.meanTtftMs) },
    { label: "mean TPOT", color: "#2ca02c", values: sorted.map((p) => p.meanTpotMs) },
  ];
  if (sorted.some((p) => p.p99E2elMs !== undefined)) {
    latencySeries.push({ label: "p99 E2EL", color: "#9467bd", dashed: true, values: sorted.map((p) => p.p99E2elMs) });
  }
  const latencyTicks = logTicks(latencySeries.flatMap((s) => s.values).filter((v): v is number => v !== undefined && v > 0));
  const [latencyLow, latencyHigh] = [Math.log10(latencyTicks[0]), Math.log10(latencyTicks[latencyTicks.length - 1])];

  const panels: Panel[] = [
    {
      left: 80, title: "Output throughput", yLabel: "tokens / s", yTicks: throughputTicks,
      y: (v) => TOP + PLOT_HEIGHT * (1 - v / throughputMax),
      series: [{ label: "output tok/s", color: "#1f77b4", values: sorted.map((p) => p.outputThroughput) }],
    },
    {
      left: 80 + PANEL_WIDTH + 90, title: "Latency", yLabel: "ms (log scale)", yTicks: latencyTicks,
      y: (v) => TOP + PLOT_HEIGHT * (1 - (Math.log10(v) - latencyLow) / (latencyHigh - latencyLow)),
      series: latencySeries,
    },
  ];
  const xTicks = [...new Set(concurrencies)];
  const body = panels.map((panel) => drawPanel(panel, concurrencies, xTicks, (c) => x(panel.left, c)));
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="#ffffff"/>`,
    `<text x="${WIDTH / 2}" y="32" text-anchor="middle" font-size="18" font-weight="bold" ${FONT}>${escapeXml(title)}</text>`,
    ...body,
    "</svg>",
    "",
  ].join("\n");
}

function drawPanel(panel: Panel, concurrencies: number[], xTicks: number[], x: (c: number) => number): string {
  const { left, y } = panel;
  const right = left + PANEL_WIDTH;
  const bottom = TOP + PLOT_HEIGHT;
  const out: string[] = [`<g>`];
  out.push(`<text x="${left + PANEL_WIDTH / 2}" y="${TOP - 14}" text-anchor="middle" font-size="15" ${FONT}>${panel.title}</text>`);
  for (const tick of panel.yTicks) {
    out.push(`<line x1="${left}" y1="${f(y(tick))}" x2="${right}" y2="${f(y(tick))}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${left - 8}" y="${f(y(tick) + 4)}" text-anchor="end" font-size="12" ${FONT}>${formatTick(tick)}</text>`);
  }
  let lastLabelX = -Infinity;
  for (const tick of xTicks) {
    out.push(`<line x1="${f(x(tick))}" y1="${TOP}" x2="${f(x(tick))}" y2="${bottom}" stroke="#f0f0f0"/>`);
    out.push(`<line x1="${f(x(tick))}" y1="${bottom}" x2="${f(x(tick))}" y2="${bottom + 5}" stroke="#333333"/>`);
    if (x(tick) - lastLabelX < MIN_LABEL_GAP) continue;
    lastLabelX = x(tick);
    out.push(`<text x="${f(x(tick))}" y="${bottom + 20}" text-anchor="middle" font-size="12" ${FONT}>${formatTick(tick)}</text>`);
  }
  out.push(`<rect x="${left}" y="${TOP}" width="${PANEL_WIDTH}" height="${PLOT_HEIGHT}" fill="none" stroke="#333333"/>`);
  out.push(`<text x="${left + PANEL_WIDTH / 2}" y="${bottom + 42}" text-anchor="middle" font-size="13" ${FONT}>concurrency (log2)</text>`);
  out.push(`<text transform="translate(${left - 58} ${TOP + PLOT_HEIGHT / 2}) rotate(-90)" text-anchor="middle" font-size="13" ${FONT}>${panel.yLabel}</text>`);
  for (const series of panel.series) out.push(...drawSeries(series, concurrencies, x, y));
  panel.series.forEach((series, i) => out.push(...drawLegendEntry(series, left + i * 150, bottom + 72)));
  out.push(`</g>`);
  return out.join("\n");
}

function drawSeries(series: Series, concurrencies: number[], x: (c: number) => number, y: (v: number) => number): string[] {
  const plotted = concurrencies
    .map((c, i) => ({ c, v: series.values[i] }))
    .filter((p): p is { c: number; v: number } => p.v !== undefined && Number.isFinite(y(p.v)));
  const dash = series.dashed ? ` stroke-dasharray="6 4"` : "";
  const path = plotted.map((p) => `${f(x(p.c))},${f(y(p.v))}`).join(" ");
  const out = [`<polyline points="${path}" fill="none" stroke="${series.color}" stroke-width="2"${dash}/>`];
  for (const p of plotted) {
    out.push(`<circle cx="${f(x(p.c))}" cy="${f(y(p.v))}" r="4" fill="${series.color}"><title>${escapeXml(series.label)} at concurrency ${p.c}: ${formatValue(p.v)}</title></circle>`);
  }
  return out;
}

function drawLegendEntry(series: Series, left: number, top: number): string[] {
  const dash = series.dashed ? ` stroke-dasharray="6 4"` : "";
  return [
    `<line x1="${left}" y1="${top}" x2="${left + 28}" y2="${top}" stroke="${series.color}" stroke-width="2"${dash}/>`,
    `<circle cx="${left + 14}" cy="${top}" r="4" fill="${series.color}"/>`,
    `<text x="${left + 36}" y="${top + 4}" font-size="13" ${FONT}>${escapeXml(series.label)}</text>`,
  ];
}

/** log2 of the concurrencies, padded so the markers clear the frame; one doubling either side of one value. */
function log2Domain(values: number[]): [number, number] {
  if (values.length === 0) return [0, 1];
  const low = Math.log2(Math.min(...values));
  const high = Math.log2(Math.max(...values));
  const pad = high === low ? 1 : 0.25;
  return [low - pad, high + pad];
}

/** 0 up to a round number at or above `max`, in about five steps of 1, 2, 2.5 or 5 × 10^k. */
function linearTicks(max: number): number[] {
  if (!(max > 0)) return [0, 1];
  max *= HEADROOM;
  const rough = max / 5;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= rough)!;
  return range(0, Math.ceil(max / step - 1e-9)).map((i) => i * step);
}

/** 1-2-5 ticks on a log axis from just below the smallest value to just above the largest. */
function logTicks(values: number[]): number[] {
  if (values.length === 0) return [1, 10];
  const [min, max] = [Math.min(...values) / HEADROOM, Math.max(...values) * HEADROOM];
  const low = Math.floor(Math.log10(min));
  const high = Math.ceil(Math.log10(max));
  const multiples = high - low > 3 ? [1] : [1, 2, 5];
  const ticks = range(low, high).flatMap((e) => multiples.map((m) => Number((m * 10 ** e).toPrecision(6))));
  const first = ticks.findLastIndex((t) => t <= min);
  const last = ticks.findIndex((t) => t >= max);
  return ticks.slice(first, last + 1);
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

function formatTick(v: number): string {
  if (v >= 1_000_000) return `${Number((v / 1_000_000).toPrecision(6))}M`;
  if (v >= 1000) return `${Number((v / 1000).toPrecision(6))}k`;
  return String(Number(v.toPrecision(6)));
}

function formatValue(v: number): string {
  return v >= 100 ? v.toFixed(0) : v.toPrecision(3);
}

function f(v: number): string {
  return v.toFixed(1);
}

function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}
