/** The reasoning parsers: known outputs split as vLLM's do, and any chunking of a stream splits as the whole text. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { REASONING_PARSERS, ReasoningStream, splitReasoning } from "../../server/openai/reasoning.ts";

describe("reasoning parsers", () => {
  it.each([
    ["qwen3", "<think>\nLet me see.\n</think>\n\nThe answer is 4.", { reasoning: "\nLet me see.\n", content: "The answer is 4." }],
    ["qwen3", "The answer is 4.", { reasoning: "", content: "The answer is 4." }],
    ["qwen3", "  <think>cut off by max_tokens", { reasoning: "cut off by max_tokens", content: "" }],
    ["qwen3", "a <think> later is not reasoning</think>", { reasoning: "", content: "a <think> later is not reasoning</think>" }],
    ["deepseek_r1", "Let me see.</think>\n\nThe answer is 4.", { reasoning: "Let me see.", content: "The answer is 4." }],
    ["deepseek_r1", "<think>Let me see.</think>4", { reasoning: "Let me see.", content: "4" }],
    ["deepseek_r1", "still thinking", { reasoning: "still thinking", content: "" }],
    ["deepseek_r1", "done</think>", { reasoning: "done", content: "" }],
  ] as const)("%s splits %j", (parser, text, expected) => {
    expect(splitReasoning(parser, text)).toEqual(expected);
  });

  it("splits a stream cut anywhere exactly as the whole text", () => {
    const pieces = fc.constantFrom("<think>", "</think>", "<", "</", "think", "thi", ">", "\n", " ", "\n\n", "a", "bc", "é", "<tool_call>");
    fc.assert(fc.property(fc.constantFrom(...REASONING_PARSERS), fc.array(pieces, { maxLength: 16 }), fc.array(fc.nat(), { maxLength: 10 }), (parser, parts, cuts) => {
      const text = parts.join("");
      const points = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b);
      const stream = new ReasoningStream(parser);
      let reasoning = "";
      let content = "";
      let at = 0;
      for (const point of [...points, text.length]) {
        const out = stream.push(text.slice(at, point));
        reasoning += out.reasoning;
        content += out.content;
        at = point;
      }
      const rest = stream.finish();
      expect({ reasoning: reasoning + rest.reasoning, content: content + rest.content }).toEqual(splitReasoning(parser, text));
    }));
  });
});
