/**
 * Request bodies, parsed at the edge by zod. A parsed body is a ChatCompletionRequest or a
 * CompletionRequest; nothing past this file validates again.
 *
 * Unknown fields are accepted and ignored, as OpenAI and vLLM do, so newer clients work.
 */
import { z } from "zod";

export const tokenId = z.number().int().nonnegative();

/** Sampling fields shared by both endpoints, including vLLM's extensions. */
const sampling = {
  model: z.string().min(1),
  n: z.number().int().min(1).max(16).default(1),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: z.number().int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  seed: z.number().int().nullish(),
  stop: z.union([z.string().min(1, "a stop string can't be empty"), z.array(z.string().min(1, "a stop string can't be empty")).max(4)]).nullish(),
  stop_token_ids: z.array(tokenId).nullish(),
  max_tokens: z.number().int().min(1).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  repetition_penalty: z.number().gt(0).max(10).nullish(),
  logit_bias: z.record(z.string().regex(/^\d+$/, "logit_bias keys must be token ids"), z.number().min(-100).max(100)).nullish(),
  user: z.string().nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  ignore_eos: z.boolean().nullish(),
  skip_special_tokens: z.boolean().nullish(),
  include_stop_str_in_output: z.boolean().nullish(),
  // Structured outputs: OpenAI's response_format, and vLLM's fields for users moving from vLLM.
  response_format: z.discriminatedUnion("type", [
    z.object({ type: z.literal("text") }).loose(),
    z.object({ type: z.literal("json_object") }).loose(),
    z.object({
      type: z.literal("json_schema"),
      json_schema: z.object({
        name: z.string().min(1).max(64), description: z.string().nullish(), strict: z.boolean().nullish(),
        schema: z.union([z.record(z.string(), z.unknown()), z.boolean()]).nullish(),
      }).loose(),
    }).loose(),
  ]).nullish(),
  guided_json: z.union([z.record(z.string(), z.unknown()), z.string()]).nullish(),
  guided_regex: z.string().min(1).nullish(),
  guided_choice: z.array(z.string().min(1)).min(1).nullish(),
  guided_grammar: z.string().min(1).nullish(),
  structured_outputs: z.object({
    json: z.union([z.record(z.string(), z.unknown()), z.string()]).nullish(), regex: z.string().min(1).nullish(),
    choice: z.array(z.string().min(1)).min(1).nullish(), grammar: z.string().min(1).nullish(), json_object: z.boolean().nullish(),
  }).loose().nullish(),
};

const textPart = z.object({ type: z.literal("text"), text: z.string() });
const content = z.union([z.string(), z.array(textPart)]);

const message = z.discriminatedUnion("role", [
  z.object({ role: z.literal("system"), content, name: z.string().optional() }),
  z.object({ role: z.literal("developer"), content, name: z.string().optional() }),
  z.object({ role: z.literal("user"), content, name: z.string().optional() }),
  z.object({
    role: z.literal("assistant"),
    content: content.nullish(),
    name: z.string().optional(),
    tool_calls: z.array(z.object({
      id: z.string(), type: z.literal("function"),
      function: z.object({ name: z.string(), arguments: z.string() }),
    })).nullish(),
  }),
  z.object({ role: z.literal("tool"), content, tool_call_id: z.string() }),
]);

export const chatCompletionRequest = z.object({
  ...sampling,
  messages: z.array(message).min(1),
  max_completion_tokens: z.number().int().min(1).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  tools: z.array(z.object({
    type: z.literal("function"),
    function: z.object({
      name: z.string().min(1), description: z.string().nullish(), strict: z.boolean().nullish(),
      parameters: z.record(z.string(), z.unknown()).nullish(),
    }).loose(),
  })).nullish(),
  tool_choice: z.union([
    z.enum(["none", "auto", "required"]),
    z.object({ type: z.literal("function"), function: z.object({ name: z.string().min(1) }).loose() }).loose(),
  ]).nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  add_generation_prompt: z.boolean().nullish(),
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
}).loose().refine((body) => !body.top_logprobs || body.logprobs, {
  message: "top_logprobs requires logprobs to be true", path: ["top_logprobs"],
});

export const completionRequest = z.object({
  ...sampling,
  prompt: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(tokenId).min(1),
    z.array(z.array(tokenId).min(1)).min(1),
  ]),
  echo: z.boolean().nullish(),
  logprobs: z.number().int().min(0).max(20).nullish(),
  suffix: z.null().optional(),
}).loose();

export type ChatCompletionRequest = z.infer<typeof chatCompletionRequest>;
export type CompletionRequest = z.infer<typeof completionRequest>;
export type ChatMessageInput = ChatCompletionRequest["messages"][number];
