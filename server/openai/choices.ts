/** Folds engine outputs into per-choice results, and usage into OpenAI's shape: shared by both endpoints. */
import type { Usage } from "../../service/settlement.ts";
import type { EngineOutput } from "../common/engine-api.ts";

type Logprob = NonNullable<EngineOutput["logprobs"]>[number];

export interface ChoiceState {
  index: number;
  text: string;
  tokenIds: number[];
  logprobs: Logprob[];
  /** Never "abort": an aborted request throws instead of finishing (see admission). */
  finishReason: string | null;
  stopReason: string | number | null;
}

export interface OpenAiUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  /** USD, when the model has a price. */
  cost?: number;
}

export class Choices {
  readonly choices: ChoiceState[];
  promptLogprobs: EngineOutput["promptLogprobs"] | null = null;

  constructor(n: number, private readonly indexOffset = 0) {
    this.choices = Array.from({ length: n }, (_, i) => ({
      index: indexOffset + i, text: "", tokenIds: [], logprobs: [], finishReason: null, stopReason: null,
    }));
  }

  /** Applies one output and returns its choice. */
  add(output: EngineOutput): ChoiceState {
    const choice = this.choices[output.index];
    choice.text += output.text;
    choice.tokenIds.push(...output.newTokenIds);
    if (output.logprobs) choice.logprobs.push(...output.logprobs);
    if (output.finishReason) choice.finishReason = output.finishReason;
    if (output.stopReason !== undefined) choice.stopReason = output.stopReason;
    if (output.promptLogprobs) this.promptLogprobs = output.promptLogprobs;
    return choice;
  }

}

/**
 * The engine's exact usage (the one the request is settled with) in OpenAI's shape, with its
 * cost in USD (as OpenRouter adds it) when the model has a price. OpenAI clients ignore the extra field.
 */
export function openAiUsage(usage: Usage, costMicroUsd: number | null = null): OpenAiUsage {
  const { promptTokens, completionTokens, cachedPromptTokens } = usage;
  return {
    prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: cachedPromptTokens },
    ...(costMicroUsd !== null ? { cost: costMicroUsd / 1_000_000 } : {}),
  };
}

