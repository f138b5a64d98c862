/** Messages between the engine facade (any thread) and the engine thread. */
import type { EngineErrorCode } from "../common/engine-error.ts";
import type { AdapterInfo, EngineInfo } from "./engine-options.ts";
import type { EngineStatsSnapshot } from "../core/engine-stats.ts";
import type { EngineOutput, RequestUsage } from "../common/request.ts";
import type { CheckedRequest } from "../core/check-request.ts";

export type ToEngine =
  /** Checked by the facade (checkRequest) before it is posted: the thread takes it as is. */
  | { type: "add"; request: CheckedRequest }
  | { type: "abort"; requestId: string }
  | { type: "shutdown" }
  /** Reads a PEFT adapter from `path` and serves it as `name`; answered by an "adapter" message with the same id. */
  | { type: "load-adapter"; id: number; name: string; path: string }
  | { type: "unload-adapter"; id: number; name: string }
  /** Only honoured when the engine was started with faultInjection (tests). */
  | { type: "inject-fault" };

export type FromEngine =
  | { type: "ready"; info: EngineInfo }
  | { type: "outputs"; outputs: EngineOutput[]; stats: EngineStatsSnapshot }
  | { type: "rejected"; requestId: string; code: EngineErrorCode; message: string; param?: string; usage?: RequestUsage }
  | { type: "fatal"; code: EngineErrorCode; message: string }
  /** The answer to a load-adapter (info) or unload-adapter (unloaded) message, or why it failed. */
  | { type: "adapter"; id: number; info?: AdapterInfo; unloaded?: boolean; error?: { code: EngineErrorCode; message: string; param?: string } };
