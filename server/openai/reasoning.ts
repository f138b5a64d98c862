/**
 * Reasoning in generated text, split out of the answer as vLLM's reasoning parsers do
 * (`--reasoning-parser qwen3|deepseek_r1`):
 * - qwen3: reasoning is a leading `<think>…</think>` block (Qwen3 writes the `<think>` itself;
 *   with enable_thinking off its template closes an empty block in the prompt, so the output
 *   has none);
 * - deepseek_r1: the template opens `<think>` in the prompt, so the output starts in the
 *   reasoning (a leading `<think>` is dropped) and it ends at `</think>`.
 * Reasoning never closed (cut off by max_tokens) is all reasoning, streamed or not. The text
 * streamed in pieces splits exactly as the whole text does (a property test checks it).
 */
export const REASONING_PARSERS = ["qwen3", "deepseek_r1"] as const;
export type ReasoningParser = (typeof REASONING_PARSERS)[number];

const OPEN = "<think>";
const CLOSE = "</think>";

export interface ReasoningSplit {
  reasoning: string;
  content: string;
}

/** The whole output, split. */
export function splitReasoning(parser: ReasoningParser, text: string): ReasoningSplit {
  const stream = new ReasoningStream(parser);
  const a = stream.push(text);
  const b = stream.finish();
  return { reasoning: a.reasoning + b.reasoning, content: a.content + b.content };
}

/** Splits an output as it streams, holding back only what may be the start of a tag. */
export class ReasoningStream {
  /**
   * undecided: at the start (is there a leading <think>?); reasoning; separator: just past
   * </think>, where the blank lines a model writes belong to neither part; content.
   */
  private state: "undecided" | "reasoning" | "separator" | "content" = "undecided";
  private pending = "";

  constructor(private readonly parser: ReasoningParser) {}

  /** Whether text pushed now would be reasoning (for counting reasoning tokens). */
  get inReasoning(): boolean {
    return this.state === "reasoning" || (this.state === "undecided" && this.parser === "deepseek_r1");
  }

  push(text: string): ReasoningSplit {
    this.pending += text;
    const out: ReasoningSplit = { reasoning: "", content: "" };
    for (;;) {
      switch (this.state) {
        case "content":
          out.content += this.pending;
          this.pending = "";
          return out;
        case "separator": {
          const rest = this.pending.replace(/^\s+/, "");
          this.pending = rest;
          if (rest.length === 0) return out;
          this.state = "content";
          continue;
        }
        case "undecided": {
          const lead = this.pending.trimStart();
          if (lead.startsWith(OPEN)) {
            this.pending = lead.slice(OPEN.length);
            this.state = "reasoning";
            continue;
          }
          // Could still become "<think>": wait for more.
          if (OPEN.startsWith(lead)) return out;
          this.state = this.parser === "deepseek_r1" ? "reasoning" : "content";
          continue;
        }
        case "reasoning": {
          const at = this.pending.indexOf(CLOSE);
          if (at >= 0) {
            out.reasoning += this.pending.slice(0, at);
            this.pending = this.pending.slice(at + CLOSE.length);
            this.state = "separator";
            continue;
          }
          const keep = partialLength(this.pending, CLOSE);
          out.reasoning += this.pending.slice(0, this.pending.length - keep);
          this.pending = this.pending.slice(this.pending.length - keep);
          return out;
        }
      }
    }
  }

  /** At the end of the output: what was held back. */
  finish(): ReasoningSplit {
    const held = this.pending;
    this.pending = "";
    if (this.state === "content") return { reasoning: "", content: held };
    if (this.state === "separator") return { reasoning: "", content: "" };
    if (this.state === "undecided" && this.parser === "qwen3") return { reasoning: "", content: held };
    return { reasoning: held, content: "" };
  }
}

/** The length of the longest suffix of `text` that is a proper prefix of `tag`. */
function partialLength(text: string, tag: string): number {
  for (let n = Math.min(tag.length - 1, text.length); n > 0; n--) {
    if (tag.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}
