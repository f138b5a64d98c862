/**
 * OpenAI's Responses API request, parsed at the edge, and its translation to the chat request
 * the rest of the server runs: instructions, input items (messages, function calls and their
 * outputs, item references to stored items) and the previous response's conversation become
 * chat messages; tools, tool_choice and text.format their chat forms.
 */
import { z } from "zod";
import { invalidRequest } from "../common/api-error.ts";
import { parseBody } from "../common/parse-body.ts";
import { chatCompletionRequest, type ChatCompletionRequest } from "../openai/schemas.ts";

const part = z.object({ type: z.string(), text: z.string().optional() }).loose();
const item = z.object({ type: z.string().optional(), role: z.string().optional() }).loose();

export const responsesRequest = z.object({
  model: z.string().min(1),
  input: z.union([z.string(), z.array(item)]),
  instructions: z.string().nullish(),
  max_output_tokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  tools: z.array(z.object({
    type: z.string(), name: z.string().min(1).optional(), description: z.string().nullish(),
    parameters: z.record(z.string(), z.unknown()).nullish(), strict: z.boolean().nullish(),
  }).loose()).nullish(),
  tool_choice: z.union([z.enum(["none", "auto", "required"]), z.object({ type: z.literal("function"), name: z.string().min(1) }).loose()]).nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  text: z.object({
    format: z.discriminatedUnion("type", [
      z.object({ type: z.literal("text") }).loose(),
      z.object({ type: z.literal("json_object") }).loose(),
      z.object({ type: z.literal("json_schema"), name: z.string().min(1).max(64), schema: z.record(z.string(), z.unknown()), strict: z.boolean().nullish(), description: z.string().nullish() }).loose(),
    ]).nullish(),
  }).loose().nullish(),
  stream: z.boolean().nullish(),
  store: z.boolean().nullish(),
  previous_response_id: z.string().min(1).nullish(),
  // NOTE: OpenAI's bounds: 16 pairs, keys of 64 characters, values of 512. Stored responses keep their metadata.
  metadata: z.record(z.string().max(64), z.string().max(512)).refine((m) => Object.keys(m).length <= 16, { message: "metadata has at most 16 keys" }).nullish(),
  user: z.string().nullish(),
  reasoning: z.object({ effort: z.enum(["none", "minimal", "low", "medium", "high", "xhigh"]).nullish(), summary: z.enum(["auto", "concise", "detailed"]).nullish() }).loose().nullish(),
  truncation: z.enum(["auto", "disabled"]).nullish(),
  background: z.boolean().nullish().refine((b) => b !== true, { message: "background responses are not served: tokenmill answers in the foreground (stream: true streams it)" }),
}).loose();

export type ResponsesRequest = z.infer<typeof responsesRequest>;

type ChatMessage = Record<string, unknown>;

/** The text of a message's content: a string, or its text parts. */
function textOf(content: unknown, where: string): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) throw invalidRequest(`${where}: content must be a string or a list of text parts`, where);
  return content.map((p, i) => {
    const parsed = part.safeParse(p);
    if (!parsed.success || !["input_text", "output_text", "text"].includes(parsed.data.type) || typeof parsed.data.text !== "string") {
      throw invalidRequest(`${where}.${i}: tokenmill serves text parts (input_text, output_text), not ${parsed.success ? parsed.data.type : "this"}`, `${where}.${i}`);
    }
    return parsed.data.text;
  }).join("");
}

/**
 * Input items as chat messages. `lookup` resolves an item_reference to a stored item (null: none).
 * Consecutive function calls become one assistant message with several tool calls.
 */
export async function inputMessages(input: ResponsesRequest["input"], lookup: (id: string) => Promise<unknown>): Promise<ChatMessage[]> {
  if (typeof input === "string") return [{ role: "user", content: input }];
  const out: ChatMessage[] = [];
  const add = async (raw: unknown, where: string): Promise<void> => {
    const it = raw as Record<string, unknown>;
    const type = it.type ?? "message";
    if (type === "item_reference") {
      const found = typeof it.id === "string" ? await lookup(it.id) : null;
      if (!found) throw invalidRequest(`${where}: no stored item ${String(it.id)} (store: true keeps a response's items for this key)`, where);
      return add(found, where);
    }
    if (type === "message") {
      const role = it.role === "developer" ? "system" : it.role;
      if (role !== "user" && role !== "assistant" && role !== "system") throw invalidRequest(`${where}.role: one of user, assistant, system, developer`, `${where}.role`);
      return void out.push({ role, content: textOf(it.content, `${where}.content`) });
    }
    if (type === "function_call") {
      const call = { id: String(it.call_id), type: "function", function: { name: String(it.name), arguments: typeof it.arguments === "string" ? it.arguments : JSON.stringify(it.arguments ?? {}) } };
      const last = out.at(-1);
      if (last?.role === "assistant" && Array.isArray(last.tool_calls)) return void last.tool_calls.push(call);
      return void out.push({ role: "assistant", content: null, tool_calls: [call] });
    }
    if (type === "function_call_output") {
      return void out.push({ role: "tool", tool_call_id: String(it.call_id), content: typeof it.output === "string" ? it.output : JSON.stringify(it.output) });
    }
    if (type === "reasoning") return;
    throw invalidRequest(`${where}.type: tokenmill serves message, function_call, function_call_output, reasoning and item_reference items, not ${String(type)}`, `${where}.type`);
  };
  for (const [i, it] of input.entries()) await add(it, `input.${i}`);
  return out;
}

/** The chat request a Responses request runs as. */
export function toChatRequest(body: ResponsesRequest, messages: ChatMessage[]): ChatCompletionRequest {
  const tools = body.tools?.map((tool, i) => {
    if (tool.type !== "function" || !tool.name) throw invalidRequest(`tools.${i}: tokenmill serves function tools, not ${tool.type}`, `tools.${i}.type`);
    return { type: "function", function: { name: tool.name, description: tool.description ?? undefined, parameters: tool.parameters ?? undefined, strict: tool.strict ?? undefined } };
  });
  const choice = body.tool_choice;
  const format = body.text?.format;
  return parseBody(chatCompletionRequest, {
    model: body.model,
    messages: [...(body.instructions ? [{ role: "system", content: body.instructions }] : []), ...messages],
    ...(body.max_output_tokens != null ? { max_tokens: body.max_output_tokens } : {}),
    ...(body.temperature != null ? { temperature: body.temperature } : {}),
    ...(body.top_p != null ? { top_p: body.top_p } : {}),
    ...(tools && tools.length > 0 ? { tools } : {}),
    ...(choice ? { tool_choice: typeof choice === "string" ? choice : { type: "function", function: { name: choice.name } } } : {}),
    ...(body.parallel_tool_calls != null ? { parallel_tool_calls: body.parallel_tool_calls } : {}),
    ...(format && format.type !== "text"
      ? { response_format: format.type === "json_object" ? { type: "json_object" } : { type: "json_schema", json_schema: { name: format.name, schema: format.schema, strict: format.strict ?? undefined } } }
      : {}),
    stream: body.stream ?? false,
  });
}
