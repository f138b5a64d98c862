/**
 * A validated API body becomes an EngineRequest, once, here: sampling defaults, the
 * context-length check, and the vLLM extensions.
 */
import { randomUUID } from "node:crypto";
import { invalidRequest } from "../http/api-error.ts";
import type { EngineRequest } from "../backends/engine-api.ts";
import type { ChatCompletionRequest, CompletionRequest } from "./schemas.ts";
import type { ServerContext } from "../server-context.ts";

type SamplingBody = ChatCompletionRequest | CompletionRequest;

export interface RequestShape {
  /** Where the prompt came from, for error messages: "messages" or "prompt". */
  promptParam: "messages" | "prompt";
  maxTokens: number | null | undefined;
  /** Top alternatives per generated token; undefined: no logprobs. */
  logprobs?: number;
  promptLogprobs?: number;
}

export function toEngineRequest(body: SamplingBody, promptTokenIds: number[], ctx: ServerContext, shape: RequestShape): EngineRequest {
  const maxTokens = checkContext(promptTokenIds.length, shape, ctx.maxModelLen);
  const stop = body.stop == null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop;
  const { defaults } = ctx;
  return {
    requestId: randomUUID(),
    promptTokenIds,
    maxTokens,
    n: body.n,
    sampling: {
      temperature: body.temperature ?? defaults.temperature ?? 1,
      topP: body.top_p ?? defaults.topP ?? 1,
      topK: body.top_k ?? defaults.topK ?? 0,
      minP: body.min_p ?? defaults.minP ?? 0,
      seed: body.seed ?? undefined,
      presencePenalty: body.presence_penalty ?? 0,
      frequencyPenalty: body.frequency_penalty ?? 0,
      repetitionPenalty: body.repetition_penalty ?? defaults.repetitionPenalty ?? 1,
      logitBias: body.logit_bias ? new Map(Object.entries(body.logit_bias).map(([id, bias]) => [Number(id), bias])) : undefined,
      logprobs: shape.logprobs,
    },
    stop,
    stopTokenIds: body.stop_token_ids ?? undefined,
    ignoreEos: body.ignore_eos ?? false,
    skipSpecialTokens: body.skip_special_tokens ?? true,
    includeStopStrInOutput: body.include_stop_str_in_output ?? false,
    promptLogprobs: shape.promptLogprobs,
  };
}

/** Returns max_tokens, defaulting to what the context leaves; throws a 400 with the numbers when it doesn't fit. */
function checkContext(numPromptTokens: number, shape: RequestShape, maxModelLen: number): number {
  const where = shape.promptParam === "messages" ? "messages" : "prompt";
  if (numPromptTokens >= maxModelLen) {
    throw invalidRequest(
      `This model's maximum context length is ${maxModelLen} tokens. However, your ${where} resulted in ${numPromptTokens} tokens. Please reduce the length of the ${where}.`,
      shape.promptParam, "context_length_exceeded",
    );
  }
  if (shape.maxTokens == null) return maxModelLen - numPromptTokens;
  if (numPromptTokens + shape.maxTokens > maxModelLen) {
    throw invalidRequest(
      `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${numPromptTokens + shape.maxTokens} tokens ` +
        `(${numPromptTokens} in the ${where}, ${shape.maxTokens} in the completion). Please reduce the length of the ${where} or completion.`,
      "max_tokens", "context_length_exceeded",
    );
  }
  return shape.maxTokens;
}
