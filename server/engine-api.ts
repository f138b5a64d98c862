/**
 * What the server uses of the engine and the models, through their public entry points
 * only, and the interfaces it needs (so tests can hand it fakes).
 */
import type { ChatMessage, ChatTemplateOptions, EngineOutput, EngineRequest, EngineStatsSnapshot } from "../engine/index.ts";

export {
  Engine, EngineError, TokenizerPool,
  type ChatMessage, type EngineOptions, type EngineOutput, type EngineRequest, type EngineStatsSnapshot,
} from "../engine/index.ts";
export { ModelError } from "../models/index.ts";

/** The engine as the HTTP layer sees it. */
export interface ServingEngine {
  readonly isAlive: boolean;
  readonly info: { maxModelLen: number };
  add(request: EngineRequest, signal?: AbortSignal): AsyncIterable<EngineOutput>;
  onStats(listener: (stats: EngineStatsSnapshot) => void): void;
}

/** Prompt building, which runs off the HTTP thread. */
export interface PromptTokenizer {
  encode(text: string, addSpecialTokens?: boolean): Promise<number[]>;
  applyChatTemplate(messages: ChatMessage[], options?: ChatTemplateOptions): Promise<{ prompt: string; promptTokenIds: number[] }>;
  decode(tokenIds: readonly number[], skipSpecialTokens?: boolean): Promise<string>;
}
