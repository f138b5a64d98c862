/**
 * The benchmark client's pure parts: vLLM's metric definitions on hand-built results, the
 * synthetic workload, SSE parsing across arbitrary splits, the reports and the sweep plot.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { computeMetrics, percentile } from "../../bench/metrics.ts";
import { sweepPlotSvg } from "../../bench/plot.ts";
import { toJson, toMarkdown } from "../../bench/report.ts";
import type { RequestResult } from "../../bench/sse-client.ts";
import { SseParser } from "../../bench/sse-parser.ts";
import { buildWorkload, type BenchTokenizer } from "../../bench/workload.ts";

function makeResult(overrides: Partial<RequestResult>): RequestResult {
  const tokenTimesMs = overrides.tokenTimesMs ?? [];
  return {
    success: true, startMs: 0, tokenTimesMs, endMs: tokenTimesMs[tokenTimesMs.length - 1] ?? 0,
    generatedText: "", numOutputTokens: tokenTimesMs.length, numPromptTokens: 0, ...overrides,
  };
}

/** TTFT 100/50/300, ITL [20,30,40]+[20], E2EL 190/70/300, TPOT 30/20/(none), plus one failure. */
const RESULTS = [
  makeResult({ startMs: 0, tokenTimesMs: [100, 120, 150, 190], numPromptTokens: 10 }),
  makeResult({ startMs: 10, tokenTimesMs: [60, 80], numPromptTokens: 20 }),
  makeResult({ startMs: 0, tokenTimesMs: [300], numPromptTokens: 30 }),
  makeResult({ success: false, error: "HTTP 500", numPromptTokens: 40, numOutputTokens: 0 }),
];

describe("computeMetrics", () => {
  const metrics = computeMetrics(RESULTS, 2, { percentiles: [50, 90, 99] });

  it("counts completed requests and their tokens, failures excluded", () => {
    expect(metrics).toMatchObject({
      completed: 3, failed: 1, totalInputTokens: 60, totalOutputTokens: 7, durationS: 2,
      requestThroughput: 1.5, outputThroughput: 3.5, totalTokenThroughput: 33.5, requestGoodput: null,
    });
  });

  it("summarizes TTFT with numpy's mean, median, population std and linear percentiles", () => {
    expect(metrics.ttft.meanMs).toBe(150);
    expect(metrics.ttft.medianMs).toBe(100);
    expect(metrics.ttft.stdMs).toBeCloseTo(Math.sqrt(35000 / 3), 10);
    expect(metrics.ttft.percentilesMs[50]).toBe(100);
    expect(metrics.ttft.percentilesMs[90]).toBeCloseTo(260, 10);
    expect(metrics.ttft.percentilesMs[99]).toBeCloseTo(296, 10);
  });

  it("takes TPOT per request over requests with more than one token", () => {
    expect(metrics.tpot.meanMs).toBe(25);
    expect(metrics.tpot.percentilesMs[90]).toBeCloseTo(29, 10);
  });

  it("pools ITL gaps over requests and measures E2EL to the last token", () => {
    expect(metrics.itl.meanMs).toBe(27.5);
    expect(metrics.itl.medianMs).toBe(25);
    expect(metrics.itl.percentilesMs[90]).toBeCloseTo(37, 10);
    expect(metrics.itl.percentilesMs[99]).toBeCloseTo(39.7, 10);
    expect(metrics.e2el.meanMs).toBeCloseTo(560 / 3, 10);
    expect(metrics.e2el.medianMs).toBe(190);
  });

  it("uses the output count from usage for TPOT, not the number of chunks", () => {
    const bundled = makeResult({ tokenTimesMs: [100, 200], numOutputTokens: 11 });
    expect(computeMetrics([bundled], 1, { percentiles: [] }).tpot.meanMs).toBe(10);
  });

  it("counts requests that meet every SLO, inclusive, a one-token request having TPOT 0", () => {
    const goodput = (slo: object) => computeMetrics(RESULTS, 2, { percentiles: [], goodput: slo }).requestGoodput;
    expect(goodput({ ttftMs: 100 })).toBe(1);
    expect(goodput({ tpotMs: 25 })).toBe(1);
    expect(goodput({ ttftMs: 100, tpotMs: 25 })).toBe(0.5);
    expect(goodput({ e2elMs: 1000 })).toBe(1.5);
    expect(goodput({})).toBeNull();
  });

  it("reports zeros, not NaN, when nothing succeeded", () => {
    const empty = computeMetrics([RESULTS[3]], 1, { percentiles: [99] });
    expect(empty).toMatchObject({ completed: 0, failed: 1, totalOutputTokens: 0, requestThroughput: 0 });
    expect(empty.ttft).toEqual({ meanMs: 0, medianMs: 0, stdMs: 0, percentilesMs: { 99: 0 } });
  });
});

describe("percentile", () => {
  it("interpolates linearly between ranks like numpy.percentile", () => {
    // numpy.percentile([1, 2, 3, 4], [0, 25, 50, 90, 100]) → [1, 1.75, 2.5, 3.7, 4]
    expect([0, 25, 50, 90, 100].map((p) => percentile([1, 2, 3, 4], p))).toEqual([1, 1.75, 2.5, 3.7, 4].map((v) => expect.closeTo(v, 12)));
    expect(percentile([7], 99)).toBe(7);
    expect(percentile([], 50)).toBe(0);
  });
});

/** Each id is a word like "<12>", so text round-trips exactly. */
const wordTokenizer: BenchTokenizer = {
  vocabSize: 1000, firstSpecialId: 900,
  decode: (ids) => ids.map((id) => `<${id}>`).join(""),
  encode: (text) => (text.match(/<\d+>/g) ?? []).map((w) => Number(w.slice(1, -1))),
};

/** Ids decode to one or two letters and a doubled letter encodes as one token, so lengths drift. */
const mergingTokenizer: BenchTokenizer = {
  vocabSize: 16,
  decode: (ids) => ids.map((id) => (id < 8 ? letter(id) : letter(id) + letter(id + 3))).join(""),
  encode: (text) => (text.match(/(.)\1|./gs) ?? []).map((t) => t.charCodeAt(0) - 97),
};

function letter(id: number): string {
  return String.fromCharCode(97 + (id % 8));
}

describe("buildWorkload", () => {
  it("gives exact lengths inside the range-ratio bounds and ids below the first special id", () => {
    const requests = buildWorkload({ numPrompts: 2000, inputLen: 100, outputLen: 20, rangeRatio: 0.5, prefixLen: 8, seed: 3 }, wordTokenizer);
    const inner = requests.map((r) => r.promptLen - 8);
    const outputs = requests.map((r) => r.outputLen);
    expect(requests.every((r) => Array.isArray(r.prompt) && r.prompt.length === r.promptLen)).toBe(true);
    expect([Math.min(...inner), Math.max(...inner)]).toEqual([50, 150]);
    expect([Math.min(...outputs), Math.max(...outputs)]).toEqual([10, 30]);
    const ids = requests.flatMap((r) => r.prompt as number[]);
    expect(ids.every((id) => Number.isInteger(id) && id >= 0 && id < 900)).toBe(true);
    expect(ids.some((id) => id >= 850)).toBe(true);
  });

  it("keeps lengths fixed at range ratio 0, honours maxTokenId, and never asks for 0 output tokens", () => {
    const requests = buildWorkload({ numPrompts: 50, inputLen: 7, outputLen: 0.4, maxTokenId: 5 }, wordTokenizer);
    expect(requests.every((r) => r.promptLen === 7 && r.outputLen === 1)).toBe(true);
    expect(Math.max(...requests.flatMap((r) => r.prompt as number[]))).toBeLessThan(5);
  });

  it("shares one prefix across prompts, ids or text", () => {
    const ids = buildWorkload({ numPrompts: 20, inputLen: 10, outputLen: 4, prefixLen: 16, seed: 1 }, wordTokenizer);
    const prefix = (ids[0].prompt as number[]).slice(0, 16);
    expect(ids.every((r) => (r.prompt as number[]).slice(0, 16).join() === prefix.join())).toBe(true);
    expect(ids.some((r) => (r.prompt as number[])[16] !== (ids[0].prompt as number[])[16])).toBe(true);

    const texts = buildWorkload({ numPrompts: 20, inputLen: 10, outputLen: 4, prefixLen: 16, seed: 1, promptFormat: "text" }, wordTokenizer);
    const shared = commonPrefix(texts.map((r) => r.prompt as string));
    expect(wordTokenizer.encode(shared)).toHaveLength(16);
    const unshared = buildWorkload({ numPrompts: 20, inputLen: 10, outputLen: 4, seed: 1, promptFormat: "text" }, wordTokenizer);
    expect(wordTokenizer.encode(commonPrefix(unshared.map((r) => r.prompt as string)))).toHaveLength(0);
  });

  it("draws each prompt's prefix from --shared-prefixes distinct ones, about evenly, and one prefix gives the workload it always gave", () => {
    const requests = buildWorkload({ numPrompts: 1600, inputLen: 4, outputLen: 2, prefixLen: 12, sharedPrefixes: 16, seed: 5 }, wordTokenizer);
    const prefixes = requests.map((r) => (r.prompt as number[]).slice(0, 12).join());
    const counts = [...new Set(prefixes)].map((p) => prefixes.filter((q) => q === p).length);
    expect(counts).toHaveLength(16);
    for (const count of counts) expect(count).toBeGreaterThan(50);
    expect(requests.every((r) => r.promptLen === 16)).toBe(true);
    const one = buildWorkload({ numPrompts: 20, inputLen: 10, outputLen: 4, prefixLen: 16, seed: 1 }, wordTokenizer);
    expect(buildWorkload({ numPrompts: 20, inputLen: 10, outputLen: 4, prefixLen: 16, sharedPrefixes: 1, seed: 1 }, wordTokenizer)).toEqual(one);
    expect(() => buildWorkload({ numPrompts: 1, inputLen: 1, outputLen: 1, sharedPrefixes: 0 }, wordTokenizer)).toThrow(/sharedPrefixes/);
  });

  it("fits text prompts to the target length when decoding and encoding disagree", () => {
    const requests = buildWorkload({ numPrompts: 100, inputLen: 40, outputLen: 4, prefixLen: 10, promptFormat: "text", seed: 9 }, mergingTokenizer);
    for (const r of requests) {
      expect(typeof r.prompt).toBe("string");
      expect(mergingTokenizer.encode(r.prompt as string)).toHaveLength(r.promptLen);
      expect(r.promptLen).toBe(50);
    }
  });

  it("is deterministic for a seed, differs across seeds, and draws the same lengths for ids and text", () => {
    const opts = { numPrompts: 10, inputLen: 30, outputLen: 10, rangeRatio: 0.3, prefixLen: 4, promptFormat: "text" as const };
    expect(buildWorkload({ ...opts, seed: 5 }, wordTokenizer)).toEqual(buildWorkload({ ...opts, seed: 5 }, wordTokenizer));
    expect(buildWorkload({ ...opts, seed: 6 }, wordTokenizer)).not.toEqual(buildWorkload({ ...opts, seed: 5 }, wordTokenizer));
    const lengths = (format: "ids" | "text") => buildWorkload({ ...opts, promptFormat: format }, mergingTokenizer).map((r) => [r.promptLen, r.outputLen]);
    expect(lengths("text")).toEqual(lengths("ids"));
  });

  it("rejects options that could give empty prompts or a bad ratio", () => {
    expect(() => buildWorkload({ numPrompts: 1, inputLen: 1, outputLen: 1, rangeRatio: 1 }, wordTokenizer)).toThrow(RangeError);
    expect(() => buildWorkload({ numPrompts: 1, inputLen: 1, outputLen: 1, rangeRatio: 0.5 }, wordTokenizer)).toThrow(/empty/);
  });
});

function commonPrefix(texts: string[]): string {
  let end = 0;
  while (texts.every((t) => end < t.length && t[end] === texts[0][end])) end++;
  return texts[0].slice(0, end);
}

describe("SseParser", () => {
  interface StreamCase {
    events: string[][];
    newline: string;
    comments: boolean;
    finalBlank: boolean;
  }
  const unit = fc.oneof(fc.constantFrom("a", " ", ":", "é", "🙂", "{", "\""), fc.string({ unit: "grapheme", minLength: 1, maxLength: 1 }));
  const line = fc.string({ unit, maxLength: 12 }).filter((s) => !/[\r\n]/.test(s));
  const stream: fc.Arbitrary<StreamCase> = fc.record({
    events: fc.array(fc.array(line, { minLength: 1, maxLength: 3 }), { maxLength: 6 }),
    newline: fc.constantFrom("\n", "\r\n", "\r"),
    comments: fc.boolean(),
    finalBlank: fc.boolean(),
  });

  /** Events end with a blank line; the last may lack it, as when a server just closes. */
  function serialize({ events, newline, comments, finalBlank }: StreamCase): string {
    const blocks = events.map((lines) => [
      ...(comments ? [": ping"] : []),
      "event: message",
      ...lines.map((l) => `data: ${l}`),
    ].join(newline) + newline);
    const text = blocks.join(newline);
    return finalBlank || events.length === 0 ? text + newline : text;
  }

  it("yields the same events for any split of the bytes", () => {
    fc.assert(fc.property(stream, fc.array(fc.nat(), { maxLength: 8 }), (s, cuts) => {
      const bytes = new TextEncoder().encode(serialize(s));
      const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
      const parser = new SseParser();
      const got: string[] = [];
      let from = 0;
      for (const to of [...points, bytes.length]) {
        got.push(...parser.push(bytes.subarray(from, to)));
        from = to;
      }
      got.push(...parser.end());
      expect(got).toEqual(s.events.map((lines) => lines.join("\n")));
    }), { numRuns: 300 });
  });

  it("reads an OpenAI stream fed one character at a time", () => {
    const parser = new SseParser();
    const text = `data: {"a":1}\n\n: keep-alive\n\ndata: [DONE]\n\n`;
    const got = [...text].flatMap((ch) => parser.push(ch));
    expect(got).toEqual([`{"a":1}`, "[DONE]"]);
  });
});

describe("reports", () => {
  const metrics = computeMetrics(RESULTS, 2, { percentiles: [50, 90, 99], goodput: { ttftMs: 100 } });

  it("renders vLLM's summary rows and a latency table with median and tail columns", () => {
    const md = toMarkdown(metrics, "tiny run");
    expect(md).toContain("## tiny run");
    expect(md).toContain("| Successful requests | 3 |");
    expect(md).toContain("| Benchmark duration (s) | 2.00 |");
    expect(md).toContain("| Request goodput (req/s) | 1.00 |");
    expect(md).toContain("| Output token throughput (tok/s) | 3.50 |");
    expect(md).toContain("| Latency (ms) | Mean | Median | P90 | P99 |");
    expect(md).toContain("| TTFT (time to first token) | 150.00 | 100.00 | 260.00 | 296.00 |");
  });

  it("names JSON fields as vLLM's result file does", () => {
    const json = toJson(metrics, { model_id: "m", max_concurrency: 4 });
    expect(json).toMatchObject({
      model_id: "m", max_concurrency: 4, duration: 2, completed: 3, failed: 1,
      total_input_tokens: 60, total_output_tokens: 7, request_throughput: 1.5, request_goodput: 1,
      output_throughput: 3.5, total_token_throughput: 33.5,
      mean_ttft_ms: 150, median_ttft_ms: 100, p50_ttft_ms: 100, mean_tpot_ms: 25, mean_itl_ms: 27.5, median_e2el_ms: 190,
    });
    expect(json.p99_ttft_ms).toBeCloseTo(296, 10);
    expect(Object.keys(json)).toEqual(expect.arrayContaining(["std_itl_ms", "p90_e2el_ms", "p99_tpot_ms"]));
  });
});

describe("sweepPlotSvg", () => {
  const points = [1, 2, 4, 8, 16].map((c) => ({ concurrency: c, outputThroughput: 50 * c, meanTtftMs: 20 + c * c, meanTpotMs: 10 + c, p99E2elMs: 900 + 40 * c }));

  it("is well-formed XML with a marker per point and series, and escapes the title", () => {
    const svg = sweepPlotSvg(points, `in <512> & out "128"`);
    expectWellFormedXml(svg);
    expect(svg.startsWith("<svg xmlns=\"http://www.w3.org/2000/svg\"")).toBe(true);
    expect(svg).toContain("in &#60;512&#62; &#38; out &#34;128&#34;");
    expect(svg.match(/<circle [^>]*><title>/g)).toHaveLength(points.length * 4);
    expect(svg).toContain("<title>output tok/s at concurrency 16: 800</title>");
    expect(svg).toContain("<title>mean TTFT at concurrency 4: 36.0</title>");
    expect(svg).toContain("concurrency (log2)");
    expect(svg).not.toMatch(/NaN|Infinity|undefined/);
  });

  it("copes with a single point and without p99 E2EL", () => {
    const svg = sweepPlotSvg([{ concurrency: 4, outputThroughput: 10, meanTtftMs: 5, meanTpotMs: 1 }], "one");
    expectWellFormedXml(svg);
    expect(svg).not.toContain("p99 E2EL");
    expect(svg).not.toMatch(/NaN|Infinity|undefined/);
  });
});

/** Tags balance, attributes are quoted, and text holds no raw `<` or bare `&`. */
function expectWellFormedXml(xml: string): void {
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/gy;
  let at = 0;
  while (at < xml.length) {
    const next = xml.indexOf("<", at);
    const text = xml.slice(at, next === -1 ? xml.length : next);
    expect(text.replace(/&(#\d+|#x[0-9a-f]+|amp|lt|gt|quot|apos);/gi, "")).not.toMatch(/[&<>]/);
    if (next === -1) break;
    tag.lastIndex = next;
    const m = tag.exec(xml);
    expect(m, `bad tag at ${xml.slice(next, next + 40)}`).not.toBeNull();
    const [whole, closing, name, , selfClosing] = m!;
    if (closing) expect(stack.pop()).toBe(name);
    else if (!selfClosing) stack.push(name);
    at = next + whole.length;
  }
  expect(stack).toEqual([]);
}

describe("break-even price", () => {
  it("is the hour's price over the million tokens made in it", async () => {
    const { breakEvenUsdPerMtok } = await import("../../bench/run-bench.ts");
    // 1000 tok/s is 3.6 M tokens an hour: $3.60 an hour is $1 a million.
    expect(breakEvenUsdPerMtok(3.6, 1000)).toBeCloseTo(1, 12);
    expect(breakEvenUsdPerMtok(2, 25)).toBeCloseTo(2 / 0.09, 9);
  });
});
