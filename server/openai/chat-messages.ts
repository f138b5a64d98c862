/** API chat messages as the chat template reads them. */
import type { ChatMessage } from "../common/engine-api.ts";
import type { ChatMessageInput } from "./schemas.ts";

export function toChatMessage(message: ChatMessageInput): ChatMessage {
  const text = (content: ChatMessageInput["content"]) =>
    content == null ? "" : typeof content === "string" ? content : content.map((part) => part.text).join("");
  const out: ChatMessage = { role: message.role === "developer" ? "system" : message.role, content: text(message.content) };
  if ("name" in message && message.name) out.name = message.name;
  if ("tool_calls" in message && message.tool_calls) {
    // NOTE: chat templates (Qwen's among them) read tool call arguments as objects.
    out.tool_calls = message.tool_calls.map((call) => ({ ...call, function: { name: call.function.name, arguments: parseArguments(call.function.arguments) } }));
  }
  if ("tool_call_id" in message) out.tool_call_id = message.tool_call_id;
  return out;
}

function parseArguments(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
