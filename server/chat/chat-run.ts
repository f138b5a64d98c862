/**
 * What every chat-shaped endpoint (chat completions, Anthropic's Messages) shares on a local
 * model: the prompt from the chat template, the engine request, and the output split into
 * reasoning, answer and tool calls, streamed or whole.
 */
import type { EngineOutput, GrammarSpec } from "../common/engine-api.ts";
import type { LocalBackend } from "../backends/model-backend.ts";
import type { Admitted } from "../backends/admitted.ts";
import { toChatMessage } from "../openai/chat-messages.ts";
import { ReasoningStream, splitReasoning, type ReasoningParser } from "../openai/reasoning.ts";
import type { ChatCompletionRequest } from "../openai/schemas.ts";
import { grammarWritesToolCalls } from "../openai/structured-outputs.ts";
import { toEngineRequest } from "../openai/to-engine-request.ts";
import { ToolCallStream, parseToolCalls, type ToolCall } from "../openai/tool-calls.ts";

export interface ChatRun {
  outputs: AsyncIterator<EngineOutput>;
  /** Awaited before any byte is sent, so that an engine rejection still gets its HTTP status. */
  first: IteratorResult<EngineOutput>;
  numPromptTokens: number;
}

export async function startChat(admitted: Admitted, body: ChatCompletionRequest, grammar: GrammarSpec | undefined): Promise<ChatRun> {
  const { promptTokenIds } = await admitted.tokenizer.applyChatTemplate(body.messages.map(toChatMessage), {
    addGenerationPrompt: body.add_generation_prompt ?? true,
    tools: body.tools ?? undefined,
    kwargs: body.chat_template_kwargs ?? undefined,
    maxTokens: admitted.engine.info.maxModelLen,
  });
  const engineRequest = toEngineRequest(body, promptTokenIds, admitted.backend.defaults, {
    maxTokens: body.max_completion_tokens ?? body.max_tokens,
    logprobs: body.logprobs ? (body.top_logprobs ?? 0) : undefined,
    grammar,
  });
  const outputs = admitted.generate(engineRequest);
  return { outputs, first: await outputs.next(), numPromptTokens: promptTokenIds.length };
}

/**
 * Tool calls are parsed when the request offers tools and the server has a parser for this
 * model's format, and always when the request forces a call (its grammar writes that format).
 */
export function toolParsingFor(backend: LocalBackend, body: ChatCompletionRequest): boolean {
  if (grammarWritesToolCalls(body)) return true;
  return backend.toolCallParser === "hermes" && (body.tools?.length ?? 0) > 0 && body.tool_choice !== "none";
}

export interface SplitOutput {
  reasoning: string;
  content: string;
  toolCalls: ToolCall[];
}

/** A whole output, split. */
export function splitOutput(text: string, reasoningParser: ReasoningParser | undefined, parseTools: boolean): SplitOutput {
  const split = reasoningParser ? splitReasoning(reasoningParser, text) : { reasoning: "", content: text };
  const { content, toolCalls } = parseTools ? parseToolCalls(split.content) : { content: split.content, toolCalls: [] };
  return { reasoning: split.reasoning, content, toolCalls };
}

/** One sequence's output split as it streams: reasoning and answer as they come, tool calls at the end. */
export class OutputSplitter {
  private readonly reasoning: ReasoningStream | null;
  private readonly tools: ToolCallStream | null;

  constructor(reasoningParser: ReasoningParser | undefined, parseTools: boolean) {
    this.reasoning = reasoningParser ? new ReasoningStream(reasoningParser) : null;
    this.tools = parseTools ? new ToolCallStream() : null;
  }

  /** Whether the text pushed next would be reasoning. */
  get inReasoning(): boolean {
    return this.reasoning?.inReasoning ?? false;
  }

  /** The next piece of text; `last`: the sequence ends with it. */
  push(text: string, last: boolean): SplitOutput {
    let reasoning = "";
    let answer = text;
    if (this.reasoning) {
      const split = this.reasoning.push(text);
      const rest = last ? this.reasoning.finish() : { reasoning: "", content: "" };
      reasoning = split.reasoning + rest.reasoning;
      answer = split.content + rest.content;
    }
    if (!this.tools) return { reasoning, content: answer, toolCalls: [] };
    const content = this.tools.push(answer);
    if (!last) return { reasoning, content, toolCalls: [] };
    const held = this.tools.finish();
    return { reasoning, content: content + held.content, toolCalls: held.toolCalls };
  }
}
