/**
 * A validated API body becomes an EngineRequest, once, here: sampling defaults and the vLLM
 * extensions. The engine checks the result against its own limits (context, vocabulary).
 */
import { randomUUID } from "node:crypto";
import { EngineError, type EngineRequest, type GenerationDefaults, type GrammarSpec } from "../common/engine-api.ts";
import type { ChatCompletionRequest, CompletionRequest } from "./schemas.ts";

type SamplingBody = ChatCompletionRequest | CompletionRequest;

export interface RequestShape {
  /** Undefined: what the context leaves (the engine settles it). */
  maxTokens: number | null | undefined;
  /** Top alternatives per generated token; undefined: no logprobs. */
  logprobs?: number;
  promptLogprobs?: number;
  /** The grammar the output must follow (see structured-outputs.ts). */
  grammar?: GrammarSpec;
}

export function toEngineRequest(body: SamplingBody, promptTokenIds: number[], defaults: GenerationDefaults, shape: RequestShape): EngineRequest {
  const stop = body.stop == null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop;
  return {
    requestId: randomUUID(),
    promptTokenIds,
    maxTokens: shape.maxTokens ?? undefined,
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
    ...(shape.grammar ? { grammar: shape.grammar } : {}),
  };
}

/** The engine calls a chat request's prompt "prompt"; the chat API calls it "messages" (the Responses API "input"). */
export function inMessages(err: unknown, param: "messages" | "input" = "messages"): unknown {
  if (!(err instanceof EngineError) || err.param !== "prompt") return err;
  return new EngineError(err.code, err.message.replace(/\bthe prompt\b/g, `the ${param}`), param, err.usage);
}
