/** The public entry point of engine/. */
export { Engine, RESTART_BACKOFF, type EngineEvent, type EngineState } from "./engine.ts";
export { EngineError, type EngineErrorCode } from "./engine-error.ts";
export { DEFAULT_ENGINE_OPTIONS, parseBytes, type EngineInfo, type EngineOptions } from "./engine-options.ts";
export type { EngineStatsSnapshot } from "./engine-stats.ts";
export { GREEDY, type EngineOutput, type EngineRequest, type FinishReason, type PositionLogprob, type PromptLogprob, type SamplingParams, type TokenLogprob } from "./request.ts";
export type { Device } from "./runner/onnx-session.ts";
export { TokenizerPool } from "./tokenizer-pool.ts";
export type { ChatMessage, ChatTemplateOptions } from "../models/tokenizer.ts";
