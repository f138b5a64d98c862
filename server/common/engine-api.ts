/**
 * What the server uses of the engine and the models, through their public entry points
 * only, and the interfaces it needs (so tests can hand it fakes).
 */
import type { AdapterInfo, ChatMessage, ChatTemplateOptions, EngineOutput, EngineRequest, EngineState, EngineStatsSnapshot } from "../../engine/index.ts";

export {
  Engine, EngineError, GREEDY, POOLINGS, TokenizerPool, defaultMaxTokens, prefixAffinityKey,
  type AdapterInfo, type ChatMessage, type EngineEvent, type EngineOptions, type EngineState, type EngineOutput, type EngineRequest, type EngineStatsSnapshot,
  type GrammarSpec, type Pooling, type Priority, type RequestUsage, type ToolSpec,
} from "../../engine/index.ts";
export { ModelError, type GenerationDefaults } from "../../models/index.ts";

/** The engine as the HTTP layer sees it. */
export interface ServingEngine {
  /** running, restarting (after its thread died), or stopped. */
  readonly state: EngineState;
  /** The engine's own limits, decided once by the engine: the server reads them, never re-derives them. */
  readonly info: { maxModelLen: number; vocabSize: number; hiddenSize: number; lora?: { maxLoras: number; maxLoraRank: number } | null };
  /** Throws EngineError at once for a request the engine can never run (context, vocabulary); the server maps it. */
  add(request: EngineRequest, signal?: AbortSignal): AsyncIterable<EngineOutput>;
  /** Throws the EngineError add() would throw for a request the engine can never run; runs nothing. */
  check(request: EngineRequest): void;
  onStats(listener: (stats: EngineStatsSnapshot) => void): void;
  /** The latest stats snapshot (null before the first). */
  readonly stats: EngineStatsSnapshot | null;
  /** The adapters loaded (an engine with LoRA slots: --enable-lora; info.lora says how many). */
  readonly adapters?: AdapterInfo[];
  /** Serves the PEFT adapter at `path` as `name` (EngineError INVALID_REQUEST naming why it can't). */
  loadAdapter?(name: string, path: string): Promise<AdapterInfo>;
  /** False: no adapter of that name was loaded. */
  unloadAdapter?(name: string): Promise<boolean>;
}

/** Prompt building, which runs off the HTTP thread. */
export interface PromptTokenizer {
  /** With maxTokens, a prompt of that many tokens or more fails fast with PROMPT_TOO_LONG. */
  encode(text: string, addSpecialTokens?: boolean, limit?: { maxTokens?: number; contextLength?: number }): Promise<number[]>;
  applyChatTemplate(messages: ChatMessage[], options?: ChatTemplateOptions & { maxTokens?: number }): Promise<{ prompt: string; promptTokenIds: number[] }>;
  decode(tokenIds: readonly number[], skipSpecialTokens?: boolean): Promise<string>;
}
