/**
 * A pool of tokenizer worker threads (piscina), so that encoding long prompts and
 * rendering chat templates never block the HTTP thread. Each worker loads the model's
 * tokenizer once.
 *
 * Two lanes: tasks over LARGE_TASK_CHARS characters run on a lane of their own, so that a
 * few megabyte-sized prompts never hold every worker while small requests wait behind them.
 */
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { Piscina } from "piscina";
import { ModelError, type ModelErrorCode } from "../../models/model-error.ts";
import type { ChatMessage, ChatTemplateOptions } from "../../models/tokenizer.ts";
import { EngineError } from "../common/engine-error.ts";
import type { TokenizerInfo, TokenizerTask, TokenizerTaskError, TokenizerTaskResult, TokenizerWorkerData } from "./tokenizer-worker.ts";
import { COMPILED, moduleFile } from "../common/ts-worker.ts";

export interface TokenizerPoolOptions {
  /** Worker threads for ordinary tasks; by default one per spare core, at most 4. */
  threads?: number;
  /** Worker threads for large tasks (default 1). */
  largeThreads?: number;
}

/** Tasks with more text than this (characters) take the large lane. */
export const LARGE_TASK_CHARS = 32 * 1024;

/** Stop tokenizing once a prompt certainly has maxTokens tokens or more; it then fails with PROMPT_TOO_LONG. */
export interface EncodeLimit {
  maxTokens?: number;
  /** The context length the error names (default maxTokens: a prompt that fills the context leaves no room to generate). */
  contextLength?: number;
}

export interface ChatPrompt {
  /** The rendered chat template. */
  prompt: string;
  /** The prompt encoded without adding special tokens: the template already has them. */
  promptTokenIds: number[];
}

type Lane = Piscina<TokenizerTask, TokenizerTaskResult>;

export class TokenizerPool {
  private constructor(private readonly small: Lane, private readonly large: Lane, readonly info: TokenizerInfo) {}

  /** Starts the workers and waits until one has loaded the tokenizer; a bad model folder rejects here. */
  static async start(modelDir: string, options: TokenizerPoolOptions = {}): Promise<TokenizerPool> {
    const threads = options.threads ?? Math.min(4, Math.max(1, availableParallelism() - 1));
    const small = startLane(modelDir, threads);
    const large = startLane(modelDir, options.largeThreads ?? 1);
    try {
      const [result] = await Promise.all([small.run({ kind: "info" }), large.run({ kind: "info" })]);
      return new TokenizerPool(small, large, unwrap(result, "info").info);
    } catch (err) {
      await Promise.all([small.destroy(), large.destroy()]);
      throw err;
    }
  }

  get numThreads(): number {
    return this.small.maxThreads + this.large.maxThreads;
  }

  /** Encodes a raw prompt; with a limit, a longer one fails fast with PROMPT_TOO_LONG (param "prompt"). */
  async encode(text: string, addSpecialTokens = true, limit: EncodeLimit = {}): Promise<number[]> {
    const result = await this.run({ kind: "encode", text, addSpecialTokens, maxTokens: limit.maxTokens, contextLength: limit.contextLength }, text.length);
    return unwrap(result, "tokenIds", "prompt").tokenIds;
  }

  /**
   * Renders the chat template and encodes the result. A template that rejects the messages
   * rejects with INVALID_REQUEST; with a limit, a longer prompt with PROMPT_TOO_LONG (param "messages").
   */
  async applyChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions & EncodeLimit = {}): Promise<ChatPrompt> {
    const task: TokenizerTask = {
      kind: "chat", messages, addGenerationPrompt: options.addGenerationPrompt ?? true, tools: options.tools, kwargs: options.kwargs,
      maxTokens: options.maxTokens, contextLength: options.contextLength,
    };
    const { prompt, tokenIds } = unwrap(await this.run(task, textSizeOf(messages) + textSizeOf(options.tools) + textSizeOf(options.kwargs)), "prompt", "messages");
    return { prompt, promptTokenIds: tokenIds };
  }

  /** Token ids outside the model's vocabulary reject with INVALID_REQUEST. */
  async decode(tokenIds: readonly number[], skipSpecialTokens = false): Promise<string> {
    return unwrap(await this.run({ kind: "decode", tokenIds, skipSpecialTokens }, tokenIds.length * 4), "text", "tokens").text;
  }

  /** Lets queued tasks finish, then stops the workers. */
  async close(): Promise<void> {
    await Promise.all([this.small.close(), this.large.close()]);
  }

  private run(task: TokenizerTask, size: number): Promise<TokenizerTaskResult> {
    return (size > LARGE_TASK_CHARS ? this.large : this.small).run(task);
  }
}

function startLane(modelDir: string, threads: number): Lane {
  const workerData: TokenizerWorkerData = { modelDir };
  const lane: Lane = new Piscina<TokenizerTask, TokenizerTaskResult>({
    // NOTE: compiled, piscina imports the worker itself; in the source tree, a bootstrap registers tsx first.
    filename: fileURLToPath(COMPILED ? moduleFile(new URL("./tokenizer-worker.ts", import.meta.url)) : new URL("./tokenizer-worker-bootstrap.mjs", import.meta.url)),
    minThreads: threads,
    maxThreads: threads,
    workerData,
  });
  // NOTE: without a listener, an error outside any task (a worker dying while idle) would crash the process; piscina replaces the worker.
  lane.on("error", () => {});
  return lane;
}

/** The characters of text in a value (strings, nested in arrays and objects), counted without building a copy. */
export function textSizeOf(value: unknown): number {
  let size = 0;
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const item = stack.pop();
    if (typeof item === "string") size += item.length;
    else if (Array.isArray(item)) stack.push(...item);
    else if (item && typeof item === "object") for (const [key, child] of Object.entries(item)) stack.push(key, child);
  }
  return size;
}

type Success = Extract<TokenizerTaskResult, { ok: true }>;
type SuccessWith<K extends string> = Extract<Success, Record<K, unknown>>;

/** @param param the request field the task's input came from, for errors about it. */
function unwrap<K extends string>(result: TokenizerTaskResult, key: K, param?: string): SuccessWith<K> {
  if (!result.ok) throw toError(result.error, param);
  if (!(key in result)) throw new EngineError("RUNTIME_FAILED", `tokenizer worker returned no ${key}`);
  return result as SuccessWith<K>;
}

function toError(error: TokenizerTaskError, param: string | undefined): Error {
  switch (error.source) {
    case "model":
      return new ModelError(error.code as ModelErrorCode, error.message);
    case "template":
      return new EngineError("INVALID_REQUEST", error.message);
    case "input":
      return new EngineError("INVALID_REQUEST", error.message, param);
    case "too-long":
      return new EngineError("PROMPT_TOO_LONG", error.message, param);
    case "internal":
      return new EngineError("RUNTIME_FAILED", `tokenizer worker: ${error.message}`);
  }
}
