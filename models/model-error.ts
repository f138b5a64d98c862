/** Errors about model files, with stable codes and no HTTP status. */
export type ModelErrorCode =
  | "BAD_CONFIG"
  | "UNSUPPORTED_MODEL"
  | "BAD_WEIGHTS"
  | "MISSING_FILE"
  | "BAD_TOKENIZER"
  | "UNSUPPORTED_DTYPE";

export class ModelError extends Error {
  constructor(readonly code: ModelErrorCode, message: string) {
    super(message);
    this.name = "ModelError";
  }
}
