/**
 * Tool calls in generated text, in the Hermes format Qwen2.5 and Qwen3 are trained on (what
 * vLLM's `--tool-call-parser hermes` reads):
 *
 *   <tool_call>
 *   {"name": "get_weather", "arguments": {"city": "Paris"}}
 *   </tool_call>
 *
 * A block whose JSON doesn't parse stays in the content, as text.
 */
import { randomUUID } from "node:crypto";

export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export interface ParsedToolCalls {
  content: string;
  toolCalls: ToolCall[];
}

const OPEN = "<tool_call>";
const BLOCK = /<tool_call>\s*([\s\S]*?)\s*<\/tool_call>/g;

export function parseToolCalls(text: string): ParsedToolCalls {
  const toolCalls: ToolCall[] = [];
  const content = text.replace(BLOCK, (block, json: string) => {
    const call = toolCallOf(json);
    if (!call) return block;
    toolCalls.push(call);
    return "";
  });
  return { content: toolCalls.length > 0 ? content.trim() : text, toolCalls };
}

function toolCallOf(json: string): ToolCall | null {
  try {
    const parsed = JSON.parse(json) as { name?: unknown; arguments?: unknown };
    if (typeof parsed.name !== "string") return null;
    const args = typeof parsed.arguments === "string" ? parsed.arguments : JSON.stringify(parsed.arguments ?? {});
    return { id: `call_${randomUUID().replaceAll("-", "").slice(0, 24)}`, type: "function", function: { name: parsed.name, arguments: args } };
  } catch {
    return null;
  }
}

/**
 * Streams content while holding back anything that may be a tool call: text from the first
 * `<tool_call>` on waits for the end of the sequence, and so does a tail that could be the
 * start of one.
 */
export class ToolCallStream {
  private pending = "";
  private inToolCalls = false;

  /** Returns the content that is safe to send now. */
  push(text: string): string {
    this.pending += text;
    if (this.inToolCalls) return "";
    const at = this.pending.indexOf(OPEN);
    if (at >= 0) {
      this.inToolCalls = true;
      const safe = this.pending.slice(0, at);
      this.pending = this.pending.slice(at);
      return safe;
    }
    const keep = partialOpenLength(this.pending);
    const safe = this.pending.slice(0, this.pending.length - keep);
    this.pending = this.pending.slice(this.pending.length - keep);
    return safe;
  }

  /** At the end of the sequence: what was held back, split into content and tool calls. */
  finish(): ParsedToolCalls {
    const held = this.pending;
    this.pending = "";
    return this.inToolCalls ? parseToolCalls(held) : { content: held, toolCalls: [] };
  }
}

/** The length of the longest suffix of `text` that is a proper prefix of "<tool_call>". */
function partialOpenLength(text: string): number {
  for (let n = Math.min(OPEN.length - 1, text.length); n > 0; n--) {
    if (OPEN.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}
