/**
 * A tokenizer worker thread of the TokenizerPool: loads the model's tokenizer once, then
 * encodes, renders chat templates and decodes. Errors come back as values, so that one
 * bad request never takes a worker down.
 */
import { workerData } from "node:worker_threads";
import { readCheckpoint } from "../models/checkpoint.ts";
import { ModelError } from "../models/model-error.ts";
import { ModelTokenizer, type ChatMessage } from "../models/tokenizer.ts";

export interface TokenizerWorkerData {
  modelDir: string;
}

export type TokenizerTask =
  | { kind: "info" }
  | { kind: "encode"; text: string; addSpecialTokens: boolean }
  | { kind: "chat"; messages: ChatMessage[]; addGenerationPrompt: boolean; tools?: unknown[]; kwargs?: Record<string, unknown> }
  | { kind: "decode"; tokenIds: readonly number[]; skipSpecialTokens: boolean };

export interface TokenizerInfo {
  hasChatTemplate: boolean;
  eosTokenId: number | null;
}

/** Why a task failed. `source` says which error catalog `code` belongs to. */
export interface TokenizerTaskError {
  source: "model" | "template" | "internal";
  code?: string;
  message: string;
}

export type TokenizerTaskResult =
  | { ok: true; info: TokenizerInfo }
  | { ok: true; tokenIds: number[] }
  | { ok: true; prompt: string; tokenIds: number[] }
  | { ok: true; text: string }
  | { ok: false; error: TokenizerTaskError };

const loaded = loadTokenizer((workerData as TokenizerWorkerData).modelDir);

export default function runTokenizerTask(task: TokenizerTask): TokenizerTaskResult {
  if (loaded instanceof Error) return failure(loaded);
  const tokenizer = loaded;
  try {
    switch (task.kind) {
      case "info":
        return { ok: true, info: { hasChatTemplate: tokenizer.hasChatTemplate, eosTokenId: tokenizer.eosTokenId } };
      case "encode":
        return { ok: true, tokenIds: tokenizer.encode(task.text, task.addSpecialTokens) };
      case "chat": {
        const prompt = renderChat(tokenizer, task);
        return { ok: true, prompt, tokenIds: tokenizer.encode(prompt, false) };
      }
      case "decode":
        return { ok: true, text: tokenizer.decode(task.tokenIds, task.skipSpecialTokens) };
    }
  } catch (err) {
    return failure(err);
  }
}

function loadTokenizer(modelDir: string): ModelTokenizer | Error {
  try {
    return ModelTokenizer.load(readCheckpoint(modelDir));
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}

/** NOTE: an error thrown while rendering is the template rejecting these messages (jinja's raise_exception, a null content). */
function renderChat(tokenizer: ModelTokenizer, task: Extract<TokenizerTask, { kind: "chat" }>): string {
  try {
    return tokenizer.applyChatTemplate(task.messages, { addGenerationPrompt: task.addGenerationPrompt, tools: task.tools, kwargs: task.kwargs });
  } catch (err) {
    if (err instanceof ModelError) throw err;
    throw new TemplateError(`the chat template rejected the messages: ${(err as Error).message}`);
  }
}

class TemplateError extends Error {}

function failure(err: unknown): TokenizerTaskResult {
  if (err instanceof ModelError) return { ok: false, error: { source: "model", code: err.code, message: err.message } };
  const message = err instanceof Error ? err.message : String(err);
  return { ok: false, error: { source: err instanceof TemplateError ? "template" : "internal", message } };
}
