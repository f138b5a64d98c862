/**
 * --reasoning-parser on the real server through the openai SDK. The random-weights model never
 * thinks on its own, so a regex (structured outputs) makes it write a <think> block and then an
 * answer: the real engine, tokenizer and detokenizer produce the text the parser splits.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../server/serve.ts";
import { startTestServer } from "../helpers/server.ts";

let server: RunningServer;
let client: OpenAI;
const MODEL = "thinker";
const SHAPE = { structured_outputs: { regex: "<think>[a-z]{3,12}( [a-z]{3,12}){2,4}</think>\n\n[A-Z][a-z]{3,12}( [a-z]{3,12}){1,3}" } };

beforeAll(async () => {
  server = await startTestServer({ modelId: MODEL, reasoningParser: "qwen3" });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
}, 120_000);
afterAll(() => server?.close());

describe("reasoning parser (qwen3)", () => {
  it("splits <think>…</think> into reasoning_content, streamed exactly as whole", async () => {
    const body = { model: MODEL, messages: [{ role: "user" as const, content: "Think, then answer." }], max_tokens: 80, temperature: 0, ...SHAPE };
    const whole = await client.chat.completions.create(body as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const message = whole.choices[0].message as OpenAI.ChatCompletionMessage & { reasoning_content: string | null };
    expect(message.reasoning_content).toMatch(/^[a-z]{3,12}( [a-z]{3,12}){2,4}$/);
    expect(message.content).toMatch(/^[A-Z][a-z]{3,12}( [a-z]{3,12}){1,3}$/);
    expect(message.content).not.toContain("think>");

    const stream = await client.chat.completions.create({ ...body, stream: true } as OpenAI.ChatCompletionCreateParamsStreaming);
    let reasoning = "";
    let content = "";
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta as { content?: string | null; reasoning_content?: string } | undefined;
      reasoning += delta?.reasoning_content ?? "";
      content += delta?.content ?? "";
    }
    expect({ reasoning, content }).toEqual({ reasoning: message.reasoning_content, content: message.content });
  });

  it("leaves an answer with no <think> block as content, with reasoning_content null", async () => {
    const whole = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Just answer." }], max_tokens: 8, temperature: 0, ...SHAPE, structured_outputs: { regex: "[a-z]{3,9}" } } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const message = whole.choices[0].message as OpenAI.ChatCompletionMessage & { reasoning_content: string | null };
    expect(message.reasoning_content).toBeNull();
    expect(message.content).toMatch(/^[a-z]{3,9}$/);
  });
});
