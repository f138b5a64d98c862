/** The engine's error catalog: stable codes, no HTTP status (the server maps codes to statuses). */
export type EngineErrorCode =
  | "PROMPT_TOO_LONG"
  | "INVALID_REQUEST"
  | "OVERLOADED"
  | "RUNTIME_FAILED"
  | "CUDA_UNAVAILABLE"
  | "ENGINE_DEAD"
  | "ABORTED";

export class EngineError extends Error {
  constructor(readonly code: EngineErrorCode, message: string) {
    super(message);
    this.name = "EngineError";
  }
}
