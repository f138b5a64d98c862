/** Messages between the engine facade (any thread) and the engine thread. */
import type { EngineErrorCode } from "../common/engine-error.ts";
import type { EngineInfo } from "./engine-options.ts";
import type { EngineStatsSnapshot } from "../core/engine-stats.ts";
import type { EngineOutput, RequestUsage } from "../common/request.ts";
import type { CheckedRequest } from "../core/check-request.ts";

export type ToEngine =
  /** Checked by the facade (checkRequest) before it is posted: the thread takes it as is. */
  | { type: "add"; request: CheckedRequest }
  | { type: "abort"; requestId: string }
  | { type: "shutdown" }
  /** Only honoured when the engine was started with faultInjection (tests). */
  | { type: "inject-fault" };

export type FromEngine =
  | { type: "ready"; info: EngineInfo }
  | { type: "outputs"; outputs: EngineOutput[]; stats: EngineStatsSnapshot }
  | { type: "rejected"; requestId: string; code: EngineErrorCode; message: string; param?: string; usage?: RequestUsage }
  | { type: "fatal"; code: EngineErrorCode; message: string };
