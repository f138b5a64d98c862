/**
 * Anthropic's Messages API request, parsed at the edge, and its translation to the chat
 * request the rest of the server runs: system and messages become chat messages (tool_use
 * blocks become tool calls, tool_result blocks tool messages), tools and tool_choice their
 * OpenAI forms, thinking the template's enable_thinking.
 */
import { z } from "zod";
import { invalidRequest } from "../common/api-error.ts";
import { parseBody } from "../common/parse-body.ts";
import { chatCompletionRequest, type ChatCompletionRequest } from "../openai/schemas.ts";

const textBlock = z.object({ type: z.literal("text"), text: z.string() }).loose();
const toolUseBlock = z.object({ type: z.literal("tool_use"), id: z.string().min(1), name: z.string().min(1), input: z.unknown() }).loose();
const toolResultBlock = z.object({
  type: z.literal("tool_result"), tool_use_id: z.string().min(1),
  content: z.union([z.string(), z.array(textBlock)]).optional(), is_error: z.boolean().optional(),
}).loose();
const thinkingBlock = z.object({ type: z.enum(["thinking", "redacted_thinking"]) }).loose();
const otherBlock = z.object({ type: z.string() }).loose();
const block = z.union([textBlock, toolUseBlock, toolResultBlock, thinkingBlock, otherBlock]);

export const messagesRequest = z.object({
  model: z.string().min(1),
  max_tokens: z.number().int().min(1),
  messages: z.array(z.object({ role: z.enum(["user", "assistant"]), content: z.union([z.string(), z.array(block)]) }).loose()).min(1),
  system: z.union([z.string(), z.array(textBlock)]).optional(),
  stop_sequences: z.array(z.string().min(1)).max(4).optional(),
  temperature: z.number().min(0).max(1).optional(),
  top_p: z.number().gt(0).max(1).optional(),
  top_k: z.number().int().min(0).optional(),
  stream: z.boolean().optional(),
  tools: z.array(z.object({ name: z.string().min(1), description: z.string().optional(), input_schema: z.record(z.string(), z.unknown()) }).loose()).optional(),
  tool_choice: z.discriminatedUnion("type", [
    z.object({ type: z.literal("auto"), disable_parallel_tool_use: z.boolean().optional() }).loose(),
    z.object({ type: z.literal("any"), disable_parallel_tool_use: z.boolean().optional() }).loose(),
    z.object({ type: z.literal("tool"), name: z.string().min(1), disable_parallel_tool_use: z.boolean().optional() }).loose(),
    z.object({ type: z.literal("none") }).loose(),
  ]).optional(),
  // NOTE: enabled or adaptive turns the template's thinking on; as Anthropic, enabled takes a budget of at least 1,024 tokens.
  thinking: z.object({ type: z.enum(["enabled", "disabled", "adaptive"]), budget_tokens: z.number().int().min(1024).optional() }).loose()
    .refine((t) => t.type !== "enabled" || t.budget_tokens !== undefined, { message: "thinking.type enabled needs budget_tokens (at least 1024)", path: ["budget_tokens"] })
    .optional(),
  metadata: z.object({ user_id: z.string().nullish() }).loose().optional(),
}).loose();

export type MessagesRequest = z.infer<typeof messagesRequest>;

/** count_tokens takes the prompt's fields only. */
export const countTokensRequest = messagesRequest.omit({ max_tokens: true });

type Block = z.infer<typeof block>;
const textOf = (content: string | { text: string }[] | undefined) => (content === undefined ? "" : typeof content === "string" ? content : content.map((b) => b.text).join(""));

/** The chat messages of a Messages request. */
export function chatMessagesOf(body: Pick<MessagesRequest, "system" | "messages">): ChatCompletionRequest["messages"] {
  const out: Record<string, unknown>[] = [];
  const system = textOf(body.system);
  if (system) out.push({ role: "system", content: system });
  body.messages.forEach((message, i) => {
    if (typeof message.content === "string") return void out.push({ role: message.role, content: message.content });
    const blocks = message.content as Block[];
    let text = "";
    const toolCalls: unknown[] = [];
    for (const [j, b] of blocks.entries()) {
      if (b.type === "text") text += (b as { text: string }).text;
      else if (b.type === "tool_use" && message.role === "assistant") {
        const use = b as z.infer<typeof toolUseBlock>;
        toolCalls.push({ id: use.id, type: "function", function: { name: use.name, arguments: JSON.stringify(use.input ?? {}) } });
      } else if (b.type === "tool_result" && message.role === "user") {
        const result = b as z.infer<typeof toolResultBlock>;
        out.push({ role: "tool", tool_call_id: result.tool_use_id, content: (result.is_error ? "Error: " : "") + textOf(result.content) });
      } else if (b.type !== "thinking" && b.type !== "redacted_thinking") {
        throw invalidRequest(`messages.${i}.content.${j}: tokenmill serves text, tool_use and tool_result blocks, not ${b.type}`, `messages.${i}.content.${j}.type`);
      }
    }
    if (message.role === "assistant") out.push({ role: "assistant", content: text || null, ...(toolCalls.length > 0 ? { tool_calls: toolCalls } : {}) });
    else if (text) out.push({ role: "user", content: text });
  });
  return out as ChatCompletionRequest["messages"];
}

/** The chat request a Messages request runs as (validated as every chat request is). */
export function toChatRequest(body: MessagesRequest): ChatCompletionRequest {
  const choice = body.tool_choice;
  const parallel = choice && "disable_parallel_tool_use" in choice && choice.disable_parallel_tool_use ? { parallel_tool_calls: false } : {};
  return parseBody(chatCompletionRequest, {
    model: body.model,
    messages: chatMessagesOf(body),
    max_tokens: body.max_tokens,
    ...(body.stop_sequences ? { stop: body.stop_sequences } : {}),
    ...(body.temperature !== undefined ? { temperature: body.temperature } : {}),
    ...(body.top_p !== undefined ? { top_p: body.top_p } : {}),
    ...(body.top_k !== undefined ? { top_k: body.top_k } : {}),
    ...(body.tools ? { tools: toolsOf(body) } : {}),
    ...(choice ? { tool_choice: choice.type === "any" ? "required" : choice.type === "tool" ? { type: "function", function: { name: choice.name } } : choice.type, ...parallel } : {}),
    ...(body.thinking ? { chat_template_kwargs: { enable_thinking: body.thinking.type !== "disabled" } } : {}),
    stream: body.stream ?? false,
  });
}

export function toolsOf(body: Pick<MessagesRequest, "tools">): ChatCompletionRequest["tools"] {
  return body.tools?.map((tool) => ({ type: "function" as const, function: { name: tool.name, description: tool.description, parameters: tool.input_schema } }));
}
