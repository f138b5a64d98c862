/** Folds engine outputs into per-choice results and usage: shared by both endpoints. */
import type { EngineOutput } from "../backends/engine-api.ts";

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

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export class Choices {
  readonly choices: ChoiceState[];
  numPromptTokens = 0;
  numCachedTokens = 0;
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
    if (output.numPromptTokens !== undefined && output.index === 0) {
      this.numPromptTokens = output.numPromptTokens;
      this.numCachedTokens = output.numCachedTokens ?? 0;
    }
    if (output.promptLogprobs) this.promptLogprobs = output.promptLogprobs;
    return choice;
  }

  get numCompletionTokens(): number {
    return this.choices.reduce((sum, c) => sum + c.tokenIds.length, 0);
  }
}

export function usageOf(parts: Choices[]): Usage {
  const prompt = parts.reduce((sum, p) => sum + p.numPromptTokens, 0);
  const completion = parts.reduce((sum, p) => sum + p.numCompletionTokens, 0);
  const cached = parts.reduce((sum, p) => sum + p.numCachedTokens, 0);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, prompt_tokens_details: { cached_tokens: cached } };
}

