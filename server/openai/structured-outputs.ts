/**
 * Which grammar, if any, a request's output must follow: OpenAI's response_format (json_schema,
 * json_object), vLLM's guided_json / guided_regex / guided_choice / guided_grammar and
 * structured_outputs, or a tool_choice that forces a call ("required", or a named function).
 * At most one may be given; a forced call needs the tools it names.
 */
import type { GrammarSpec, ToolSpec } from "../common/engine-api.ts";
import { invalidRequest } from "../common/api-error.ts";
import type { ChatCompletionRequest, CompletionRequest } from "./schemas.ts";

type Body = Pick<CompletionRequest, "response_format" | "guided_json" | "guided_regex" | "guided_choice" | "guided_grammar" | "structured_outputs">;

export function grammarOf(body: Body & Partial<Pick<ChatCompletionRequest, "tools" | "tool_choice" | "parallel_tool_calls">>): GrammarSpec | undefined {
  const found: { param: string; spec: GrammarSpec }[] = [];
  const format = body.response_format;
  if (format?.type === "json_object") found.push({ param: "response_format", spec: { type: "json_object" } });
  if (format?.type === "json_schema") {
    const schema = format.json_schema.schema;
    found.push({ param: "response_format", spec: schema === undefined || schema === null ? { type: "json_object" } : { type: "json_schema", schema } });
  }
  if (body.guided_json != null) found.push({ param: "guided_json", spec: { type: "json_schema", schema: jsonSchemaOf(body.guided_json, "guided_json") } });
  if (body.guided_regex != null) found.push({ param: "guided_regex", spec: { type: "regex", pattern: body.guided_regex } });
  if (body.guided_choice != null) found.push({ param: "guided_choice", spec: { type: "choice", choices: body.guided_choice } });
  if (body.guided_grammar != null) found.push({ param: "guided_grammar", spec: { type: "ebnf", grammar: body.guided_grammar } });
  const structured = body.structured_outputs;
  if (structured) {
    if (structured.json != null) found.push({ param: "structured_outputs.json", spec: { type: "json_schema", schema: jsonSchemaOf(structured.json, "structured_outputs.json") } });
    if (structured.regex != null) found.push({ param: "structured_outputs.regex", spec: { type: "regex", pattern: structured.regex } });
    if (structured.choice != null) found.push({ param: "structured_outputs.choice", spec: { type: "choice", choices: structured.choice } });
    if (structured.grammar != null) found.push({ param: "structured_outputs.grammar", spec: { type: "ebnf", grammar: structured.grammar } });
    if (structured.json_object) found.push({ param: "structured_outputs.json_object", spec: { type: "json_object" } });
  }
  const forced = forcedToolCalls(body);
  if (forced) found.push({ param: "tool_choice", spec: forced });
  if (found.length > 1) {
    throw invalidRequest(`give one output constraint, not several: ${found.map((f) => f.param).join(", ")}`, found[1].param);
  }
  // NOTE: strict functions under auto constrain only when nothing else does (a response_format wins).
  return found[0]?.spec ?? strictToolCalls(body);
}

/** Whether the request forces a tool call (and so its output is a call, whatever the model's parser config). */
export function forcesToolCall(body: Partial<Pick<ChatCompletionRequest, "tool_choice">>): boolean {
  return body.tool_choice === "required" || (typeof body.tool_choice === "object" && body.tool_choice !== null);
}

/** Whether a grammar writes the output's tool calls in Qwen's format (forced, or strict functions under auto). */
export function grammarWritesToolCalls(body: Partial<Pick<ChatCompletionRequest, "tools" | "tool_choice">>): boolean {
  return forcesToolCall(body) || (body.tool_choice !== "none" && (body.tools ?? []).some((t) => t.function.strict));
}

function forcedToolCalls(body: Partial<Pick<ChatCompletionRequest, "tools" | "tool_choice" | "parallel_tool_calls">>): GrammarSpec | undefined {
  if (!forcesToolCall(body)) return undefined;
  const tools = body.tools ?? [];
  if (tools.length === 0) throw invalidRequest("tool_choice forces a tool call, but the request has no tools", "tool_choice");
  const specs: ToolSpec[] = tools.map((t) => ({ name: t.function.name, parameters: t.function.parameters ?? { type: "object" } }));
  const choice = body.tool_choice;
  if (typeof choice === "object" && choice !== null) {
    const named = specs.find((t) => t.name === choice.function.name);
    if (!named) throw invalidRequest(`tool_choice names the function "${choice.function.name}", which is not among the request's tools`, "tool_choice.function.name");
    return { type: "tool_calls", tools: [named], parallel: false };
  }
  return { type: "tool_calls", tools: specs, parallel: body.parallel_tool_calls ?? true };
}

/**
 * tool_choice auto (or absent) with a strict function: the text stays free, but a call the
 * model starts must be well formed, with a strict function's arguments valid against its
 * schema (a non-strict one's a JSON object).
 */
function strictToolCalls(body: Partial<Pick<ChatCompletionRequest, "tools" | "tool_choice" | "parallel_tool_calls">>): GrammarSpec | undefined {
  const tools = body.tools ?? [];
  if (body.tool_choice === "none" || !tools.some((t) => t.function.strict)) return undefined;
  return {
    type: "tool_calls", optional: true, parallel: body.parallel_tool_calls ?? true,
    tools: tools.map((t) => ({ name: t.function.name, parameters: t.function.strict ? (t.function.parameters ?? { type: "object" }) : { type: "object" } })),
  };
}

function jsonSchemaOf(value: Record<string, unknown> | string, param: string): Record<string, unknown> {
  if (typeof value !== "string") return value;
  try {
    const parsed = JSON.parse(value) as unknown;
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) return parsed as Record<string, unknown>;
  } catch {
    // refused below
  }
  throw invalidRequest(`${param} must be a JSON schema (an object, or a string holding one)`, param);
}
