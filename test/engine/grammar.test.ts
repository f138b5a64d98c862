/**
 * The grammar layer on its own: schema checks that name what can't be enforced, xgrammar #800's
 * bounded strings rewritten to legal JSON, canonical cache keys, the compiled-grammar cache
 * and matchers over the default model's real vocabulary, and the mask as the first logits
 * processor (disallowed tokens never sampled, logprobs still the model's).
 */
import { beforeAll, describe, expect, it } from "vitest";
import { GrammarCore } from "../../engine/grammar/grammar-core.ts";
import { MAX_STRING_LENGTH_BOUND, checkSchema, fixBoundedStrings } from "../../engine/grammar/grammar-source.ts";
import { GrammarError, grammarKey } from "../../engine/common/grammar-spec.ts";
import { Utf8Guard } from "../../engine/grammar/utf8-guard.ts";
import { sampleToken } from "../../engine/sampling/sampler.ts";
import { Prng } from "../../models/prng.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ModelTokenizer } from "../../models/tokenizer.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { GREEDY } from "../../engine/index.ts";

const allowed = (mask: Int32Array, id: number) => (mask[id >> 5] & (1 << (id & 31))) !== 0;

describe("schema checks", () => {
  it.each([
    [{ allOf: [{ type: "object" }] }, /"allOf" at #/],
    [{ type: "object", properties: { a: { type: "string", pattern: "x+", maxLength: 3 } } }, /"pattern" together with "minLength"\/"maxLength" at #\/properties\/a/],
    [{ type: "array", items: { type: "string", maxLength: MAX_STRING_LENGTH_BOUND + 1 } }, /"maxLength": 33 .* at #\/items/],
  ])("refuses %j, naming the feature and where", (schema, message) => {
    expect(() => checkSchema(schema, "response_format.json_schema.schema")).toThrow(GrammarError);
    expect(() => checkSchema(schema, "p")).toThrow(message);
  });
  it("lets everything else through, enum values and defaults included", () => {
    expect(() => checkSchema({ type: "object", properties: { a: { type: "string", maxLength: 32 }, b: { enum: [{ allOf: 1 }] } }, default: { allOf: [] } }, "p")).not.toThrow();
  });
});

describe("xgrammar #800", () => {
  it("rewrites length-bounded strings to legal JSON characters and escapes", () => {
    expect(fixBoundedStrings('s ::= "\\"" [^"\\\\\\r\\n]{2,10} "\\""')).toBe('s ::= "\\"" ([^"\\\\\\0-\\x1f] | "\\\\" ["\\\\/bfnrt]){2,10} "\\""');
    expect(fixBoundedStrings('s ::= [a-z]{1,2}')).toBe('s ::= [a-z]{1,2}');
  });
});

describe("grammar keys", () => {
  it("are the same whatever the order of a schema's keys", () => {
    expect(grammarKey({ type: "json_schema", schema: { type: "object", properties: { a: {}, b: {} } } }))
      .toBe(grammarKey({ schema: { properties: { b: {}, a: {} }, type: "object" }, type: "json_schema" } as never));
  });
});

describe("the grammar core on the default model's vocabulary", () => {
  let core: GrammarCore;
  let tokenizer: ModelTokenizer;
  beforeAll(async () => {
    const checkpoint = readCheckpoint(ensureDefaultModel());
    tokenizer = ModelTokenizer.load(checkpoint);
    core = await GrammarCore.create(checkpoint.tokenizerJson, 151936, checkpoint.eosTokenIds);
  }, 60_000);

  it("compiles once per spec, and each sequence's matcher follows its own tokens", async () => {
    const spec = { type: "choice" as const, choices: ["yes", "no"] };
    expect((await core.open("a", spec)).cached).toBe(false);
    expect((await core.open("b", spec)).cached).toBe(true);
    const [yes] = tokenizer.encode("yes", false);
    const [no] = tokenizer.encode("no", false);
    const [maybe] = tokenizer.encode("maybe", false);
    const first = await core.advance([{ seqKey: "a", tokens: [] }, { seqKey: "b", tokens: [] }]);
    for (const mask of first.masks) {
      expect(allowed(mask, yes)).toBe(true);
      expect(allowed(mask, no)).toBe(true);
      expect(allowed(mask, maybe)).toBe(false);
    }
    const next = await core.advance([{ seqKey: "a", tokens: [yes] }, { seqKey: "b", tokens: [maybe] }]);
    expect(next.rejected).toEqual([false, true]);
    // After "yes", only a stop token may follow.
    expect(allowed(next.masks[0], 151645)).toBe(true);
    expect(allowed(next.masks[0], no)).toBe(false);
    core.close("a");
    core.close("b");
    expect(core.numMatchers).toBe(0);
  });

  it("strict functions under auto: free text, but a call once started must be well formed", async () => {
    const spec = { type: "tool_calls" as const, optional: true, parallel: true, tools: [{ name: "f", parameters: { type: "object", properties: { a: { type: "integer" } }, required: ["a"], additionalProperties: false } }] };
    const accepts = (text: string) => core.acceptsText(spec, text);
    expect(await accepts("just some text")).toBe(true);
    expect(await accepts('sure <tool_call>\n{"name": "f", "arguments": {"a": 12}}\n</tool_call>')).toBe(true);
    expect(await accepts('sure <tool_call>\n{"name": "g"')).toBe(false);
    expect(await accepts('sure <tool_call>\n{"name": "f", "arguments": {"a": "x"')).toBe(false);
  });

  it("refuses a regex that does not parse with a GrammarError", async () => {
    await expect(core.open("bad", { type: "regex", pattern: "(unclosed" })).rejects.toThrow(GrammarError);
  });
});

describe("the UTF-8 guard (what xgrammar lets through)", () => {
  const bytes = [[0x61], [0xf4], [0x92, 0x8c], [0x8c], [0xf4, 0x92], [0xc0], [0xed, 0xa0], [0xe2, 0x82, 0xac]];
  const codec = { tokenBytes: (id: number) => Uint8Array.from(bytes[id]), decode: () => "", tokenText: () => "" };
  const guard = new Utf8Guard(codec, bytes.length);
  const ids = (mask: Int32Array) => bytes.map((_, id) => id).filter((id) => allowed(mask, id));
  it("drops tokens that are never valid UTF-8 (C0, F4 92, a surrogate), always", () => {
    expect(ids(guard.restrict(Int32Array.from([0xff]), 0))).toEqual([0, 1, 2, 3, 7]);
  });
  it("after a lead byte with a narrow range (F4: 80–8F), drops tokens whose first byte is outside it", () => {
    expect(ids(guard.restrict(Int32Array.from([0xff]), 1))).toEqual([3]);
  });
  it("never leaves nothing to sample", () => {
    expect(ids(guard.restrict(Int32Array.from([0b100]), 1))).toEqual([2]);
  });
});

describe("the mask in sampling", () => {
  it("makes disallowed tokens unsampleable, greedy or not, and leaves logprobs raw", () => {
    const logits = Float32Array.from([5, 1, 0, 4]);
    const mask = Int32Array.from([0b0110]); // tokens 1 and 2
    const history = { promptTokenIds: [], outputTokenIds: [], allowedMask: mask };
    expect(sampleToken(logits, { ...GREEDY, logprobs: 0 }, history, new Prng(1)).tokenId).toBe(1);
    for (let seed = 0; seed < 50; seed++) expect([1, 2]).toContain(sampleToken(logits, { ...GREEDY, temperature: 2 }, history, new Prng(seed)).tokenId);
    const raw = sampleToken(logits, { ...GREEDY, logprobs: 1 }, history, new Prng(1));
    const logSumExp = Math.log([5, 1, 0, 4].reduce((s, x) => s + Math.exp(x), 0));
    expect(raw.logprob).toBeCloseTo(1 - logSumExp, 5);
    expect(raw.top[0].tokenId).toBe(0);
    expect(Array.from(logits)).toEqual([5, 1, 0, 4]);
  });

  it("samples only allowed tokens whether few (sampled among alone) or many (over the masked vocabulary)", () => {
    const vocab = 20_000;
    const logits = Float32Array.from({ length: vocab }, (_, i) => Math.sin(i) * 3);
    for (const step of [2, 7, 4001]) {
      const mask = new Int32Array(Math.ceil(vocab / 32));
      for (let id = 0; id < vocab; id += step) mask[id >> 5] |= 1 << (id & 31);
      const history = { promptTokenIds: [], outputTokenIds: [5], allowedMask: mask };
      let best = 0;
      for (let id = 0; id < vocab; id += step) if (logits[id] > logits[best]) best = id;
      expect(sampleToken(logits, GREEDY, history, new Prng(1)).tokenId).toBe(best);
      for (let seed = 0; seed < 20; seed++) {
        const params = { ...GREEDY, temperature: 1.5, topP: 0.9, topK: 50, repetitionPenalty: 1.2 };
        expect(sampleToken(logits, params, history, new Prng(seed)).tokenId % step).toBe(0);
      }
    }
  });
});
