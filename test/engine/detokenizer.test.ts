/**
 * Incremental detokenization with the real Qwen3 tokenizer: the deltas add up to the
 * full decode however the tokens arrive, never carry half a character, and stop strings
 * cut the output without a client ever seeing text that is later cut.
 */
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { IncrementalDetokenizer, type DecodeFn, type DetokenizerOptions } from "../../engine/text/detokenizer.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { ModelTokenizer } from "../../models/tokenizer.ts";

const FFFD = "\uFFFD";
/** Rare CJK characters, emoji and ZWJ sequences: the tokenizer splits each into several byte-level tokens. */
const MULTI_BYTE_TEXT = "龘靐齉𠀀𪚥 👩‍👩‍👧‍👦🧑🏽‍🚀 ꙮ 𓀀 鱻麤，你好世界！🎉🎉 naïve café";

let tokenizer: ModelTokenizer;
let decode: DecodeFn;
beforeAll(() => {
  tokenizer = ModelTokenizer.load(readCheckpoint(ensureDefaultModel()));
  decode = (tokenIds, skipSpecialTokens) => tokenizer.decode(tokenIds, skipSpecialTokens);
});

interface Run {
  deltas: string[];
  flushed: string;
  stopped: boolean;
  stopReason?: string;
}

/** Pushes `tokenIds` in chunks of the given sizes (cycled), then flushes. */
function detokenize(tokenIds: number[], chunkSizes: number[], options: Partial<DetokenizerOptions> = {}, decodeFn = decode): Run {
  const detokenizer = new IncrementalDetokenizer(decodeFn, { skipSpecialTokens: false, ...options });
  const run: Run = { deltas: [], flushed: "", stopped: false };
  for (let start = 0, i = 0; start < tokenIds.length; i++) {
    const size = chunkSizes.length ? chunkSizes[i % chunkSizes.length] : 1;
    const delta = detokenizer.push(tokenIds.slice(start, start + size));
    start += size;
    run.deltas.push(delta.text);
    if (run.stopped) expect(delta).toEqual({ text: "", stopped: true, stopReason: run.stopReason });
    run.stopped = delta.stopped;
    run.stopReason = delta.stopReason;
  }
  run.flushed = detokenizer.flush();
  expect(detokenizer.outputText).toBe(run.deltas.join("") + run.flushed);
  return run;
}

const output = (run: Run) => run.deltas.join("") + run.flushed;
const chunkSizes = fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 1, maxLength: 8 });

describe("IncrementalDetokenizer: deltas add up to the full decode", () => {
  it("for random token ids in random chunks, whenever the full decode is clean", () => {
    let numChecked = 0;
    fc.assert(fc.property(
      fc.array(fc.integer({ min: 0, max: 151_700 }), { maxLength: 40 }), chunkSizes, fc.boolean(),
      (tokenIds, sizes, skipSpecialTokens) => {
        const full = decode(tokenIds, skipSpecialTokens);
        if (full.includes(FFFD)) return;
        numChecked++;
        expect(output(detokenize(tokenIds, sizes, { skipSpecialTokens }))).toBe(full);
      },
    ), { numRuns: 300 });
    expect(numChecked).toBeGreaterThan(50);
  });

  it("for encoded random text in random chunks, with no U+FFFD in any delta", () => {
    const text = fc.oneof(
      fc.string({ unit: "grapheme", maxLength: 30 }),
      fc.string({ unit: "binary", maxLength: 30 }),
      fc.string({ unit: fc.constantFrom(...MULTI_BYTE_TEXT), maxLength: 30 }),
    );
    fc.assert(fc.property(text, chunkSizes, (s, sizes) => {
      const tokenIds = tokenizer.encode(s, false);
      if (decode(tokenIds, false) !== s || s.includes(FFFD)) return;
      const run = detokenize(tokenIds, sizes);
      expect(output(run)).toBe(s);
      for (const delta of run.deltas) expect(delta).not.toContain(FFFD);
    }), { numRuns: 300 });
  });

  it("with special tokens kept or skipped", () => {
    const tokenIds = tokenizer.encode("<|im_start|>assistant\nHi there<|im_end|>", false);
    expect(output(detokenize(tokenIds, [1]))).toBe("<|im_start|>assistant\nHi there<|im_end|>");
    expect(output(detokenize(tokenIds, [1], { skipSpecialTokens: true }))).toBe("assistant\nHi there");
  });
});

describe("IncrementalDetokenizer: multi-byte characters", () => {
  it("holds back characters split across tokens until they are whole", () => {
    const tokenIds = tokenizer.encode(MULTI_BYTE_TEXT, false);
    expect(tokenIds.filter((id) => decode([id], false).includes(FFFD)).length).toBeGreaterThan(5);
    const run = detokenize(tokenIds, [1]);
    for (const delta of run.deltas) expect(delta).not.toContain(FFFD);
    expect(run.deltas.filter((d) => d === "").length).toBeGreaterThan(5);
    expect(output(run)).toBe(MULTI_BYTE_TEXT);
    expect(run.flushed).toBe("");
  });

  it("emits an unfinished character at flush", () => {
    const tokenIds = tokenizer.encode("ab龘", false);
    const truncated = tokenIds.slice(0, -1);
    const run = detokenize(truncated, [1]);
    expect(run.deltas.join("")).toBe("ab");
    expect(run.flushed).toBe(decode(truncated, false).slice(2));
    expect(run.flushed).toContain(FFFD);
  });
});

describe("IncrementalDetokenizer: the decode window", () => {
  it("decodes a window of a few tokens, not the whole output, on each push", () => {
    const tokenIds = tokenizer.encode(`${MULTI_BYTE_TEXT} The quick brown fox jumps over the lazy dog. `.repeat(20), false);
    let maxWindow = 0;
    const counting: DecodeFn = (ids, skip) => {
      maxWindow = Math.max(maxWindow, ids.length);
      return decode(ids, skip);
    };
    expect(tokenIds.length).toBeGreaterThan(400);
    expect(output(detokenize(tokenIds, [1], {}, counting))).toBe(decode(tokenIds, false));
    expect(maxWindow).toBeLessThanOrEqual(8);
  });

  it("diffs against earlier tokens, so a decoder that strips a leading space loses no spaces", () => {
    const stripping: DecodeFn = (ids) => ids.map((id) => ` w${id}`).join("").replace(/^ /, "");
    expect(detokenize([1, 2, 3], [1], {}, stripping).deltas).toEqual(["w1", " w2", " w3"]);
    expect(detokenize([1, 2, 3], [2], {}, stripping).deltas).toEqual(["w1 w2", " w3"]);
    expect(detokenize([4, 5], [1], { promptTokenIds: [1, 2, 3] }, stripping).deltas).toEqual([" w4", " w5"]);
  });

  it("continues the prompt's text when given the prompt", () => {
    const promptTokenIds = tokenizer.encode("Say: 龘", false);
    const tokenIds = tokenizer.encode(" hello 龘", false);
    expect(output(detokenize(tokenIds, [1], { promptTokenIds }))).toBe(" hello 龘");
  });
});

describe("IncrementalDetokenizer: stop strings", () => {
  it("truncates before the stop string and reports it", () => {
    const tokenIds = tokenizer.encode("Hello world. Stop here please", false);
    const run = detokenize(tokenIds, [1], { stop: ["Stop"] });
    expect(output(run)).toBe("Hello world. ");
    expect(run.stopped).toBe(true);
    expect(run.stopReason).toBe("Stop");
    expect(run.flushed).toBe("");
  });

  it("finds a stop string that spans token boundaries", () => {
    const tokenIds = tokenizer.encode("hello world and more", false);
    const stop = "lo wor";
    expect(tokenIds.every((id) => !decode([id], false).includes(stop))).toBe(true);
    const run = detokenize(tokenIds, [1], { stop: [stop] });
    expect(output(run)).toBe("hel");
    expect(run.stopReason).toBe(stop);
  });

  it("finds a stop string inside split multi-byte characters", () => {
    const run = detokenize(tokenizer.encode(MULTI_BYTE_TEXT, false), [1], { stop: ["𠀀𪚥"] });
    expect(output(run)).toBe("龘靐齉");
  });

  it("includes the stop string when asked", () => {
    const tokenIds = tokenizer.encode("Hello world. Stop here please", false);
    expect(output(detokenize(tokenIds, [1], { stop: ["Stop"], includeStopStrInOutput: true }))).toBe("Hello world. Stop");
  });

  it("stops at the earliest of several stop strings", () => {
    const tokenIds = tokenizer.encode("one two three four", false);
    const run = detokenize(tokenIds, [3], { stop: ["four", "two", "three"] });
    expect(output(run)).toBe("one ");
    expect(run.stopReason).toBe("two");
  });

  it("holds back a possible start of a stop string and releases it when it is not one", () => {
    const detokenizer = new IncrementalDetokenizer(decode, { skipSpecialTokens: false, stop: ["\n\n"] });
    const [hello, newline, world] = ["Hello", "\n", "World"].map((s) => tokenizer.encode(s, false));
    expect(detokenizer.push(hello).text).toBe("Hello");
    expect(detokenizer.push(newline).text).toBe("");
    expect(detokenizer.push(world).text).toBe("\nWorld");
    expect(detokenizer.push(newline).text).toBe("");
    expect(detokenizer.flush()).toBe("\n");
  });

  it("never sends text that a stop string later cuts", () => {
    const text = fc.string({ unit: fc.constantFrom(..."ab龘😀 \n"), minLength: 1, maxLength: 30 });
    fc.assert(fc.property(text, fc.nat(), fc.integer({ min: 1, max: 6 }), chunkSizes, (s, at, length, sizes) => {
      const tokenIds = tokenizer.encode(s, false);
      const chars = [...s];
      const start = at % chars.length;
      const stop = chars.slice(start, start + length).join("");
      const expected = s.slice(0, s.indexOf(stop));
      const run = detokenize(tokenIds, sizes, { stop: [stop, "never-there"] });
      let sent = "";
      for (const delta of run.deltas) {
        sent += delta;
        expect(expected.startsWith(sent)).toBe(true);
      }
      expect(output(run)).toBe(expected);
      expect(run.stopReason).toBe(stop);
    }), { numRuns: 300 });
  });
});
