/**
 * A tokenizer worker thread of the TokenizerPool: loads the model's tokenizer once, then
 * encodes, renders chat templates and decodes. Errors come back as values, so that one
 * bad request never takes a worker down.
 */
import { workerData } from "node:worker_threads";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ModelError } from "../../models/model-error.ts";
import { ModelTokenizer, type ChatMessage } from "../../models/tokenizer.ts";

export interface TokenizerWorkerData {
  modelDir: string;
}

/** maxTokens: stop tokenizing (and fail with "too-long") once the prompt certainly has this many tokens or more. */
export type TokenizerTask =
  | { kind: "info" }
  | { kind: "encode"; text: string; addSpecialTokens: boolean; maxTokens?: number; contextLength?: number }
  | { kind: "chat"; messages: ChatMessage[]; addGenerationPrompt: boolean; tools?: unknown[]; kwargs?: Record<string, unknown>; maxTokens?: number; contextLength?: number }
  | { kind: "decode"; tokenIds: readonly number[]; skipSpecialTokens: boolean };

export interface TokenizerInfo {
  hasChatTemplate: boolean;
  eosTokenId: number | null;
}

/**
 * Why a task failed. `source` says which error catalog `code` belongs to: "input" is a bad
 * request (a token id outside the vocabulary), "too-long" a prompt of numTokensAtLeast tokens.
 */
export interface TokenizerTaskError {
  source: "model" | "template" | "input" | "too-long" | "internal";
  code?: string;
  message: string;
  numTokensAtLeast?: number;
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
  const { tokenizer, vocabSize } = loaded;
  try {
    switch (task.kind) {
      case "info":
        return { ok: true, info: { hasChatTemplate: tokenizer.hasChatTemplate, eosTokenId: tokenizer.eosTokenId } };
      case "encode":
        return encodeWithin(tokenizer, task.text, task.addSpecialTokens, task.maxTokens, task.contextLength);
      case "chat": {
        const prompt = renderChat(tokenizer, task);
        const encoded = encodeWithin(tokenizer, prompt, false, task.maxTokens, task.contextLength);
        return encoded.ok ? { ok: true, prompt, tokenIds: encoded.tokenIds } : encoded;
      }
      case "decode": {
        const bad = task.tokenIds.find((id) => id >= vocabSize);
        if (bad !== undefined) return { ok: false, error: { source: "input", message: `token id ${bad} is outside the vocabulary (0 to ${vocabSize - 1})` } };
        return { ok: true, text: tokenizer.decode(task.tokenIds, task.skipSpecialTokens) };
      }
    }
  } catch (err) {
    return failure(err);
  }
}

function encodeWithin(
  tokenizer: ModelTokenizer, text: string, addSpecialTokens: boolean, maxTokens: number | undefined, contextLength = maxTokens,
): Extract<TokenizerTaskResult, { tokenIds: number[] }> | Extract<TokenizerTaskResult, { ok: false }> {
  if (maxTokens === undefined) return { ok: true, tokenIds: tokenizer.encode(text, addSpecialTokens) };
  const encoded = tokenizer.encodeWithin(text, addSpecialTokens, maxTokens);
  if ("tokenIds" in encoded) return { ok: true, tokenIds: encoded.tokenIds };
  const message = `This model's maximum context length is ${contextLength} tokens. However, the prompt has at least ${encoded.numTokensAtLeast} tokens ` +
    "(tokenizing stopped there). Please reduce its length.";
  return { ok: false, error: { source: "too-long", message, numTokensAtLeast: encoded.numTokensAtLeast } };
}

function loadTokenizer(modelDir: string): { tokenizer: ModelTokenizer; vocabSize: number } | Error {
  try {
    const checkpoint = readCheckpoint(modelDir);
    return { tokenizer: ModelTokenizer.load(checkpoint), vocabSize: checkpoint.config.vocabSize };
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
