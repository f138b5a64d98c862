/**
 * A pool of tokenizer worker threads (piscina), so that encoding long prompts and
 * rendering chat templates never block the HTTP thread. Each worker loads the model's
 * tokenizer once.
 */
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { Piscina } from "piscina";
import { ModelError, type ModelErrorCode } from "../models/model-error.ts";
import type { ChatMessage, ChatTemplateOptions } from "../models/tokenizer.ts";
import { EngineError } from "./engine-error.ts";
import type { TokenizerInfo, TokenizerTask, TokenizerTaskError, TokenizerTaskResult, TokenizerWorkerData } from "./tokenizer-worker.ts";

export interface TokenizerPoolOptions {
  /** Worker threads; by default one per spare core, at most 4. */
  threads?: number;
}

export interface ChatPrompt {
  /** The rendered chat template. */
  prompt: string;
  /** The prompt encoded without adding special tokens: the template already has them. */
  promptTokenIds: number[];
}

export class TokenizerPool {
  private constructor(private readonly pool: Piscina<TokenizerTask, TokenizerTaskResult>, readonly info: TokenizerInfo) {}

  /** Starts the workers and waits until one has loaded the tokenizer; a bad model folder rejects here. */
  static async start(modelDir: string, options: TokenizerPoolOptions = {}): Promise<TokenizerPool> {
    const threads = options.threads ?? Math.min(4, Math.max(1, availableParallelism() - 1));
    const workerData: TokenizerWorkerData = { modelDir };
    const pool = new Piscina<TokenizerTask, TokenizerTaskResult>({
      filename: fileURLToPath(new URL("./tokenizer-worker-bootstrap.mjs", import.meta.url)),
      minThreads: threads,
      maxThreads: threads,
      workerData,
    });
    // NOTE: without a listener, an error outside any task (a worker dying while idle) would crash the process; piscina replaces the worker.
    pool.on("error", () => {});
    try {
      const result = await pool.run({ kind: "info" });
      return new TokenizerPool(pool, unwrap(result, "info").info);
    } catch (err) {
      await pool.destroy();
      throw err;
    }
  }

  get numThreads(): number {
    return this.pool.maxThreads;
  }

  async encode(text: string, addSpecialTokens = true): Promise<number[]> {
    return unwrap(await this.pool.run({ kind: "encode", text, addSpecialTokens }), "tokenIds").tokenIds;
  }

  /** Renders the chat template and encodes the result. A template that rejects the messages rejects with INVALID_REQUEST. */
  async applyChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions = {}): Promise<ChatPrompt> {
    const task: TokenizerTask = {
      kind: "chat", messages, addGenerationPrompt: options.addGenerationPrompt ?? true, tools: options.tools, kwargs: options.kwargs,
    };
    const { prompt, tokenIds } = unwrap(await this.pool.run(task), "prompt");
    return { prompt, promptTokenIds: tokenIds };
  }

  async decode(tokenIds: readonly number[], skipSpecialTokens = false): Promise<string> {
    return unwrap(await this.pool.run({ kind: "decode", tokenIds, skipSpecialTokens }), "text").text;
  }

  /** Lets queued tasks finish, then stops the workers. */
  async close(): Promise<void> {
    await this.pool.close();
  }
}

type Success = Extract<TokenizerTaskResult, { ok: true }>;
type SuccessWith<K extends string> = Extract<Success, Record<K, unknown>>;

function unwrap<K extends string>(result: TokenizerTaskResult, key: K): SuccessWith<K> {
  if (!result.ok) throw toError(result.error);
  if (!(key in result)) throw new EngineError("RUNTIME_FAILED", `tokenizer worker returned no ${key}`);
  return result as SuccessWith<K>;
}

function toError(error: TokenizerTaskError): Error {
  switch (error.source) {
    case "model":
      return new ModelError(error.code as ModelErrorCode, error.message);
    case "template":
      return new EngineError("INVALID_REQUEST", error.message);
    case "internal":
      return new EngineError("RUNTIME_FAILED", `tokenizer worker: ${error.message}`);
  }
}
