import type { EngineOutput, RequestUsage } from "./request.ts";

/** The engine's error catalog: stable codes, no HTTP status (the server maps codes to statuses). */
export type EngineErrorCode =
  | "PROMPT_TOO_LONG"
  | "INVALID_REQUEST"
  | "RUNTIME_FAILED"
  | "CUDA_UNAVAILABLE"
  | "WEBGPU_UNAVAILABLE"
  | "ENGINE_DEAD"
  /** The engine thread died while holding the request; a new thread is starting. */
  | "ENGINE_FAILED"
  /** The engine thread is restarting after a fault: retry shortly. */
  | "ENGINE_RESTARTING"
  /** Every grammar thread is busy with other grammars, or the request's grammar thread was restarted: retry shortly. */
  | "GRAMMAR_BUSY";

export class EngineError extends Error {
  /**
   * @param param the request field at fault, in the OpenAI API's names (e.g. "logit_bias"), when one is.
   * @param usage what the request had used when it failed, if it had started.
   */
  constructor(readonly code: EngineErrorCode, message: string, readonly param?: string, readonly usage?: RequestUsage) {
    super(message);
    this.name = "EngineError";
  }
}

/**
 * A step the runner could not run. Its sequences have been finished and their blocks freed;
 * the engine goes on with everyone else.
 */
export class StepFailure extends EngineError {
  /**
   * @param outputs what the step had already produced for other requests (aborts), still to be delivered.
   * @param usages what each failed request had used.
   */
  constructor(
    readonly requestIds: string[], cause: unknown, readonly outputs: EngineOutput[] = [], readonly usages: ReadonlyMap<string, RequestUsage> = new Map(),
    /** Requests that failed for a cause of their own (a late grammar mask), not the step's. */
    private readonly causes: ReadonlyMap<string, unknown> = new Map(),
  ) {
    const { code, message, param } = errorOf(cause);
    super(code, message, param);
    this.name = "StepFailure";
  }

  /** What one failed request is told. */
  errorFor(requestId: string): { code: EngineErrorCode; message: string; param?: string } {
    const cause = this.causes.get(requestId);
    return cause === undefined ? { code: this.code, message: this.message, param: this.param } : errorOf(cause);
  }
}

/** NOTE: a request's own fault (an EngineError, such as a grammar that doesn't compile) keeps its code and message. */
function errorOf(cause: unknown): { code: EngineErrorCode; message: string; param?: string } {
  const own = cause instanceof EngineError && !(cause instanceof StepFailure) ? cause : null;
  return { code: own?.code ?? "RUNTIME_FAILED", message: own ? own.message : `the model step failed: ${cause instanceof Error ? cause.message : String(cause)}`, param: own?.param };
}
