/** The public entry point of engine/. */
export { Engine, RESTART_BACKOFF, type EngineEvent, type EngineState } from "./thread/engine.ts";
export { EngineError, type EngineErrorCode } from "./common/engine-error.ts";
export { DEFAULT_ENGINE_OPTIONS, parseBytes, type AdapterInfo, type EngineInfo, type EngineOptions, type LoraModuleSpec } from "./thread/engine-options.ts";
export type { EngineStatsSnapshot } from "./core/engine-stats.ts";
export {
  GREEDY, POOLINGS, type EngineOutput, type EngineRequest, type FinishReason, type Pooling, type PositionLogprob, type Priority, type PromptLogprob, type RequestUsage, type SamplingParams,
  type TokenLogprob,
} from "./common/request.ts";
export { checkRequest, type RequestLimits } from "./core/check-request.ts";
export { defaultMaxTokens } from "./core/context-length.ts";
export { prefixAffinityKey } from "./kv-cache/block-hash.ts";
export { DEFAULT_BATCH_MAX_WAIT_MS } from "./core/scheduler.ts";
export { DEVICES, type Device } from "./runner/runner-registry.ts";
export type { GrammarSpec, ToolSpec } from "./common/grammar-spec.ts";
export { TokenizerPool } from "./text/tokenizer-pool.ts";
export type { ChatMessage, ChatTemplateOptions } from "../models/tokenizer.ts";
