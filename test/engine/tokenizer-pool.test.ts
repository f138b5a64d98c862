/**
 * The tokenizer pool gives the same results as the main-thread tokenizer, keeps working
 * after a request the chat template rejects, and leaves the main thread free.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EngineError } from "../../engine/common/engine-error.ts";
import { TokenizerPool } from "../../engine/text/tokenizer-pool.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { ModelError } from "../../models/model-error.ts";
import { ModelTokenizer, type ChatMessage } from "../../models/tokenizer.ts";

const TEXTS = ["Hello, world!", "你好世界 😀🎉 naïve café", "<|im_start|>user\nhi<|im_end|>", "  leading and trailing  ", "x"];
const CONVERSATION: ChatMessage[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "What is 2+2?" },
  { role: "assistant", content: "4" },
  { role: "user", content: "And 龘 + 😀?" },
];
const TOOLS = [{ type: "function", function: { name: "add", description: "Adds", parameters: { type: "object", properties: { a: { type: "number" } } } } }];
/** NOTE: Qwen3's template calls `content.startswith` on user messages, so a null content makes it throw. */
const REJECTED: ChatMessage[] = [{ role: "user", content: null }];

let pool: TokenizerPool;
let tokenizer: ModelTokenizer;
beforeAll(async () => {
  const dir = ensureDefaultModel();
  tokenizer = ModelTokenizer.load(readCheckpoint(dir));
  pool = await TokenizerPool.start(dir, { threads: 2 });
});
afterAll(async () => pool?.close());

describe("TokenizerPool", () => {
  it("reports the tokenizer's facts", () => {
    expect(pool.info).toEqual({ hasChatTemplate: true, eosTokenId: tokenizer.eosTokenId });
    // Two for ordinary tasks, and the large-task lane's one.
    expect(pool.numThreads).toBe(3);
  });

  it("encodes and decodes like the main-thread tokenizer", async () => {
    for (const text of TEXTS) {
      for (const addSpecialTokens of [true, false]) {
        expect(await pool.encode(text, addSpecialTokens)).toEqual(tokenizer.encode(text, addSpecialTokens));
      }
      const tokenIds = tokenizer.encode(text);
      for (const skipSpecialTokens of [true, false]) {
        expect(await pool.decode(tokenIds, skipSpecialTokens)).toBe(tokenizer.decode(tokenIds, skipSpecialTokens));
      }
    }
    expect(await pool.decode([])).toBe("");
  });

  it("renders chat templates like the main-thread tokenizer, with tools and template variables", async () => {
    const cases = [
      { addGenerationPrompt: true },
      { addGenerationPrompt: false },
      { tools: TOOLS },
      { kwargs: { enable_thinking: false } },
    ];
    for (const options of cases) {
      const prompt = tokenizer.applyChatTemplate(CONVERSATION, options);
      expect(await pool.applyChatTemplate(CONVERSATION, options)).toEqual({ prompt, promptTokenIds: tokenizer.encode(prompt, false) });
    }
    const { prompt } = await pool.applyChatTemplate(CONVERSATION, { tools: TOOLS, kwargs: { enable_thinking: false } });
    expect(prompt).toContain('"name": "add"');
    expect(prompt.endsWith("<|im_start|>assistant\n<think>\n\n</think>\n\n")).toBe(true);
  });

  it("answers many concurrent calls, each with its own result", async () => {
    const calls = Array.from({ length: 120 }, (_, i) => {
      const text = `${TEXTS[i % TEXTS.length]} #${i}`;
      switch (i % 3) {
        case 0: return pool.encode(text).then((ids) => expect(ids).toEqual(tokenizer.encode(text)));
        case 1: return pool.decode(tokenizer.encode(text)).then((s) => expect(s).toBe(text));
        default: {
          const messages: ChatMessage[] = [{ role: "user", content: text }];
          return pool.applyChatTemplate(messages).then((r) => expect(r.prompt).toBe(tokenizer.applyChatTemplate(messages)));
        }
      }
    });
    await Promise.all(calls);
  });

  it("rejects messages the template rejects with INVALID_REQUEST, and keeps working", async () => {
    const results = await Promise.allSettled([
      ...Array.from({ length: 6 }, () => pool.applyChatTemplate(REJECTED)),
      pool.encode("still here"),
    ]);
    for (const result of results.slice(0, -1)) {
      expect(result.status).toBe("rejected");
      const error = (result as PromiseRejectedResult).reason;
      expect(error).toBeInstanceOf(EngineError);
      expect(error.code).toBe("INVALID_REQUEST");
      expect(error.message).toMatch(/^the chat template rejected the messages: /);
    }
    expect(results.at(-1)).toEqual({ status: "fulfilled", value: tokenizer.encode("still here") });
    expect(await pool.applyChatTemplate(CONVERSATION)).toEqual({
      prompt: tokenizer.applyChatTemplate(CONVERSATION),
      promptTokenIds: tokenizer.encode(tokenizer.applyChatTemplate(CONVERSATION), false),
    });
  });

  it("does not block the main thread while it encodes long texts", async () => {
    const longText = (i: number) => `Document ${i}: ${"The quick brown fox jumps over the lazy dog, 你好世界. ".repeat(1500)}`;
    const tickMs = 5;
    let numTicks = 0;
    let maxGapMs = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      maxGapMs = Math.max(maxGapMs, now - last);
      last = now;
      numTicks++;
    }, tickMs);
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => pool.encode(longText(i))));
    const elapsedMs = performance.now() - started;
    clearInterval(timer);

    expect(results[7]).toEqual(tokenizer.encode(longText(7)));
    expect(results.every((ids) => ids.length > 20_000)).toBe(true);
    // NOTE: the 50 encodes take seconds of CPU; on the main thread they would leave no tick at all.
    expect(elapsedMs).toBeGreaterThan(500);
    expect(numTicks).toBeGreaterThan(elapsedMs / tickMs / 4);
    expect(maxGapMs).toBeLessThan(250);
  });
});

describe("TokenizerPool.start", () => {
  it("rejects a folder without a model", async () => {
    await expect(TokenizerPool.start("/nonexistent/model", { threads: 1 })).rejects.toThrowError(ModelError);
    await expect(TokenizerPool.start("/nonexistent/model", { threads: 1 })).rejects.toMatchObject({ code: "MISSING_FILE" });
  });

  it("answers a small task while large ones hold their own lane (order of completion, not timing)", async () => {
    const large = (i: number) => `Large ${i}: ${"Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(20_000)}`;
    const finished: string[] = [];
    const larges = Array.from({ length: 4 }, (_, i) => pool.encode(large(i)).then(() => finished.push(`large-${i}`)));
    // NOTE: a head start, not a wait on an event: under load the large tasks start later, which weakens the test but can't fail it.
    await new Promise((r) => setTimeout(r, 20));
    const started = performance.now();
    await pool.encode("a small prompt").then(() => finished.push("small"));
    const smallMs = performance.now() - started;
    await Promise.all(larges);
    console.log(`small encode answered in ${smallMs.toFixed(1)} ms behind four ${(large(0).length / 1e6).toFixed(1)} MB encodes`);
    expect(finished[0]).toBe("small");
  });

  it("stops tokenizing a prompt far beyond the limit, failing with PROMPT_TOO_LONG after counting about the limit", async () => {
    const huge = "All work and no play makes Jack a dull boy. ".repeat(150_000);
    const error = await pool.encode(huge, true, { maxTokens: 8192 }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(EngineError);
    expect(error).toMatchObject({ code: "PROMPT_TOO_LONG", param: "prompt" });
    const atLeast = Number(/at least (\d+) tokens/.exec((error as Error).message)![1]);
    // The whole text is about 1.5M tokens; tokenizing stopped a piece past the limit.
    expect(atLeast).toBeGreaterThanOrEqual(8192);
    expect(atLeast).toBeLessThan(8192 + 5000);
    const chatError = await pool.applyChatTemplate([{ role: "user", content: huge }], { maxTokens: 8192 }).catch((err: unknown) => err);
    expect(chatError).toMatchObject({ code: "PROMPT_TOO_LONG", param: "messages" });
  });

  it("encodes exactly a long but dense prompt that fits the limit, and a prompt under it", async () => {
    // 16 characters a token: long enough to be counted piecewise first (over 6 a token of the limit), yet it fits.
    const dense = `${" ".repeat(31)}x`.repeat(1000);
    expect(dense.length).toBeGreaterThan(6 * 4096);
    const exact = tokenizer.encode(dense, true);
    expect(exact.length).toBeLessThan(4096);
    expect(await pool.encode(dense, true, { maxTokens: 4096 })).toEqual(exact);
    expect(await pool.encode(TEXTS[1], false, { maxTokens: 8192 })).toEqual(tokenizer.encode(TEXTS[1], false));
  });

  it("refuses to decode token ids outside the model's vocabulary", async () => {
    const error = await pool.decode([9707, 151936]).catch((err: unknown) => err);
    expect(error).toMatchObject({ code: "INVALID_REQUEST", param: "tokens" });
    expect((error as Error).message).toMatch(/151936 is outside the vocabulary \(0 to 151935\)/);
    expect(await pool.decode([9707])).toBe("Hello");
  });
});
