/** Hermes-format tool calls in generated text: parsed whole, and streamed in any chunking. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ToolCallStream, parseToolCalls } from "../../server/openai/tool-calls.ts";

const CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>';

describe("parseToolCalls", () => {
  it("turns each block into a call with JSON-string arguments, and keeps the rest as content", () => {
    const { content, toolCalls } = parseToolCalls(`Let me check.\n${CALL}\n${CALL.replace("Paris", "Oslo")}`);
    expect(content).toBe("Let me check.");
    expect(toolCalls.map((c) => [c.type, c.function.name, JSON.parse(c.function.arguments)])).toEqual([
      ["function", "get_weather", { city: "Paris" }],
      ["function", "get_weather", { city: "Oslo" }],
    ]);
    expect(new Set(toolCalls.map((c) => c.id)).size).toBe(2);
    expect(toolCalls[0].id).toMatch(/^call_/);
  });

  it("leaves text without calls, and blocks that aren't JSON calls, untouched", () => {
    expect(parseToolCalls("just text")).toEqual({ content: "just text", toolCalls: [] });
    const broken = "<tool_call>{not json}</tool_call>";
    expect(parseToolCalls(broken)).toEqual({ content: broken, toolCalls: [] });
  });
});

describe("ToolCallStream", () => {
  it("gives the same content and calls however the text is chunked (property)", () => {
    const texts = fc.constantFrom("plain answer, no tools", `Sure. ${CALL}`, `${CALL}${CALL}`, "a < b and <tool but no call", `<tool_call>{oops}</tool_call> after`);
    fc.assert(fc.property(texts, fc.array(fc.nat(), { maxLength: 12 }), (text, cuts) => {
      const points = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b);
      const pieces = [0, ...points, text.length].slice(1).map((end, i, ends) => text.slice(i === 0 ? 0 : ends[i - 1], end));
      const stream = new ToolCallStream();
      let streamed = "";
      for (const piece of pieces) streamed += stream.push(piece);
      const held = stream.finish();
      const whole = parseToolCalls(text);
      expect(held.toolCalls.map((c) => c.function)).toEqual(whole.toolCalls.map((c) => c.function));
      if (whole.toolCalls.length === 0) expect(streamed + held.content).toBe(text);
      else expect(`${streamed}${held.content}`.trim()).toBe(whole.content);
    }), { numRuns: 300 });
  });

  it("never sends a piece of an opening tag as content", () => {
    const stream = new ToolCallStream();
    expect(stream.push("Hello <tool")).toBe("Hello ");
    expect(stream.push("_ca")).toBe("");
    expect(stream.push("t is a word")).toBe("<tool_cat is a word");
  });
});
