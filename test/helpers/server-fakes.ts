/**
 * Fakes for server tests: a scriptable ServingEngine, a PromptTokenizer with one token per
 * character, and a ServerContext factory. No model, no engine thread, no ONNX Runtime.
 *
 * The fake vocabulary: a prompt token's id is its character's code, and generated token i
 * has id GENERATED_TOKEN_ID + i and text "t0", " t1", " t2", ... so a sequence of k tokens
 * reads "t0 t1 ... t(k-1)".
 */
import { checkRequest, type CheckedRequest } from "../../engine/core/check-request.ts";
import { EngineError, type EngineErrorCode } from "../../engine/common/engine-error.ts";
import type { EngineStatsSnapshot } from "../../engine/core/engine-stats.ts";
import type { EngineState } from "../../engine/thread/engine.ts";
import type { EngineOutput, EngineRequest, PositionLogprob, PromptLogprob, TokenLogprob } from "../../engine/common/request.ts";
import type { ChatMessage, ChatTemplateOptions } from "../../models/tokenizer.ts";
import type { PromptTokenizer, ServingEngine } from "../../server/common/engine-api.ts";
import { LocalBackend, type ServerLimits } from "../../server/backends/model-backend.ts";
import { ModelRegistry } from "../../server/backends/model-registry.ts";
import { ServerMetrics } from "../../server/http/metrics.ts";
import type { GenerationDefaults, ServerContext } from "../../server/http/server-context.ts";

export const MODEL_ID = "tiny";
export const MAX_MODEL_LEN = 64;
export const VOCAB_SIZE = 1000;
export const GENERATED_TOKEN_ID = 900;

/** What the fake engine does with one request. */
export type FakeScript =
  | { kind: "generate" }
  /** Emit `pieces` (one output each, sequence 0), then nothing until the signal aborts; then finish every sequence with "abort". */
  | { kind: "hang"; pieces?: string[] }
  /** Fail before any output, as the engine does when a step throws. */
  | { kind: "fail"; code: EngineErrorCode; message?: string }
  /** One output per piece of text, the last one finishing with `finishReason` (default "stop"). */
  | { kind: "say"; pieces: string[]; finishReason?: "stop" | "length" };

export const tokenTextOf = (i: number) => (i === 0 ? "t0" : ` t${i}`);

/** The text of a sequence of `numTokens` generated tokens. */
export const generatedText = (numTokens: number) => Array.from({ length: numTokens }, (_, i) => tokenTextOf(i)).join("");

export const FAKE_HIDDEN_SIZE = 8;

/** The fake engine's embedding of a prompt: unit length, and different for different prompts. */
export function fakeEmbedding(promptTokenIds: readonly number[]): Float32Array {
  const v = Array.from({ length: FAKE_HIDDEN_SIZE }, (_, i) => promptTokenIds.reduce((sum, t, p) => sum + Math.sin(t * (i + 1) + p), 0) + 0.1);
  const norm = Math.hypot(...v);
  return Float32Array.from(v, (x) => x / norm);
}

export class FakeEngine implements ServingEngine {
  state: EngineState = "running";
  /** The engine's limits, checked by the engine's own checkRequest, as the real engine checks them. */
  readonly info = { maxModelLen: MAX_MODEL_LEN, vocabSize: VOCAB_SIZE, hiddenSize: FAKE_HIDDEN_SIZE, blockSize: 16, numBlocks: 1 << 20 };
  /** Every request add() received, in order, and the signal it came with. */
  readonly requests: EngineRequest[] = [];
  readonly signals: (AbortSignal | undefined)[] = [];
  /** How many "hang" requests have had all their pieces read by the route and now wait for their abort. */
  numHanging = 0;
  /** Reported as numCachedTokens on each request's first output. */
  numCachedTokens = 0;
  private readonly scripts: FakeScript[] = [];
  private readonly statsListeners: ((stats: EngineStatsSnapshot) => void)[] = [];

  /** Queues scripts for the next add() calls, one each; after them, requests generate normally. */
  script(...scripts: FakeScript[]): this {
    this.scripts.push(...scripts);
    return this;
  }

  check(unchecked: EngineRequest): void {
    checkRequest(unchecked, this.info);
  }

  add(unchecked: EngineRequest, signal?: AbortSignal): AsyncIterable<EngineOutput> {
    const request = checkRequest(unchecked, this.info);
    this.requests.push(request);
    this.signals.push(signal);
    return withUsage(request, request.pooling ? 0 : this.numCachedTokens, this.run(request, this.scripts.shift() ?? { kind: "generate" }, signal));
  }

  onStats(listener: (stats: EngineStatsSnapshot) => void): void {
    this.statsListeners.push(listener);
  }

  stats: EngineStatsSnapshot | null = null;

  emitStats(stats: EngineStatsSnapshot): void {
    this.stats = stats;
    for (const listener of this.statsListeners) listener(stats);
  }

  private async *run(request: CheckedRequest, script: FakeScript, signal?: AbortSignal): AsyncGenerator<EngineOutput> {
    const n = request.n ?? 1;
    const first = (index: number): Partial<EngineOutput> => ({
      numPromptTokens: request.promptTokenIds.length,
      numCachedTokens: this.numCachedTokens,
      ...(index === 0 && request.promptLogprobs !== undefined ? { promptLogprobs: promptLogprobsOf(request) } : {}),
    });
    if (script.kind === "fail") throw new EngineError(script.code, script.message ?? `fake ${script.code}`);
    if (request.pooling && script.kind !== "hang") {
      yield { requestId: request.requestId, index: 0, newTokenIds: [], text: "", finishReason: "stop", numPromptTokens: request.promptTokenIds.length, numCachedTokens: 0, embedding: fakeEmbedding(request.promptTokenIds) };
      return;
    }
    if (script.kind === "say") {
      for (const [i, text] of script.pieces.entries()) {
        const last = i === script.pieces.length - 1;
        yield {
          ...(i === 0 ? first(0) : {}), requestId: request.requestId, index: 0, newTokenIds: [GENERATED_TOKEN_ID + i], text,
          ...(last ? { finishReason: script.finishReason ?? "stop" } : {}),
        };
      }
      return;
    }
    if (script.kind === "hang") {
      for (const [i, text] of (script.pieces ?? []).entries()) {
        yield { ...(i === 0 ? first(0) : {}), requestId: request.requestId, index: 0, newTokenIds: [GENERATED_TOKEN_ID + i], text };
      }
      this.numHanging++;
      await abortOf(signal);
      for (let index = 0; index < n; index++) yield { ...aborted(request, index), ...first(index) };
      return;
    }
    for (let i = 0; i < request.maxTokens; i++) {
      for (let index = 0; index < n; index++) {
        if (signal?.aborted) {
          yield aborted(request, index);
          continue;
        }
        yield {
          ...(i === 0 ? first(index) : {}),
          requestId: request.requestId,
          index,
          newTokenIds: [GENERATED_TOKEN_ID + i],
          text: tokenTextOf(i),
          ...(request.sampling.logprobs !== undefined ? { logprobs: [generatedLogprob(i, request.sampling.logprobs)] } : {}),
          ...(i === request.maxTokens - 1 ? { finishReason: "length" as const } : {}),
        };
      }
      if (signal?.aborted) return;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
}

/** The engine's contract: the request's last output (its n-th finish) carries its usage. */
async function* withUsage(request: CheckedRequest, numCachedTokens: number, outputs: AsyncGenerator<EngineOutput>): AsyncGenerator<EngineOutput> {
  let numCompletionTokens = 0;
  let numFinished = 0;
  for await (const output of outputs) {
    numCompletionTokens += output.newTokenIds.length;
    if (output.finishReason && ++numFinished === (request.n ?? 1)) {
      yield { ...output, usage: { numPromptTokens: request.promptTokenIds.length, numCachedPromptTokens: numCachedTokens, numCompletionTokens } };
    } else {
      yield output;
    }
  }
}

function aborted(request: EngineRequest, index: number): EngineOutput {
  return { requestId: request.requestId, index, newTokenIds: [], text: "", finishReason: "abort" };
}

function abortOf(signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) resolve();
    else signal?.addEventListener("abort", () => resolve(), { once: true });
  });
}

function named(tokenId: number, token: string, logprob: number): TokenLogprob {
  return { tokenId, logprob, token, bytes: [...Buffer.from(token)] };
}

function generatedLogprob(i: number, numTop: number): PositionLogprob {
  const top = Array.from({ length: numTop }, (_, k) => named(GENERATED_TOKEN_ID + i + k, tokenTextOf(i + k), -(k + 1) / 10));
  return { ...named(GENERATED_TOKEN_ID + i, tokenTextOf(i), -0.1), top };
}

function promptLogprobsOf(request: EngineRequest): PromptLogprob[] {
  return request.promptTokenIds.map((tokenId, position) => {
    const token = String.fromCharCode(tokenId);
    if (position === 0) return { tokenId, token, logprob: null, top: null };
    return { ...named(tokenId, token, -1), top: [named(tokenId, token, -1)] };
  });
}

/** One token per UTF-16 unit (its code); the chat template writes one "role:content" line per message. */
export class FakeTokenizer implements PromptTokenizer {
  /** When set, every call rejects with it. */
  failWith: Error | null = null;

  async encode(text: string): Promise<number[]> {
    this.throwIfFailing();
    return Array.from(text, (_, i) => text.charCodeAt(i));
  }

  async applyChatTemplate(messages: ChatMessage[], _options?: ChatTemplateOptions): Promise<{ prompt: string; promptTokenIds: number[] }> {
    const prompt = chatPromptOf(messages);
    return { prompt, promptTokenIds: await this.encode(prompt) };
  }

  async decode(tokenIds: readonly number[]): Promise<string> {
    this.throwIfFailing();
    return String.fromCharCode(...tokenIds);
  }

  private throwIfFailing(): void {
    if (this.failWith) throw this.failWith;
  }
}

export const chatPromptOf = (messages: { role: string; content?: unknown }[]) =>
  messages.map((m) => `${m.role}:${typeof m.content === "string" ? m.content : ""}`).join("\n");

export interface BackendOverrides {
  engine?: ServingEngine | null;
  tokenizer?: PromptTokenizer | null;
  limits?: ServerLimits;
  defaults?: GenerationDefaults;
  toolCallParser?: "hermes";
  pooling?: "last" | "mean";
  task?: "generate" | "embed" | "both";
}

/** A ready server context serving MODEL_ID on a FakeEngine and a FakeTokenizer, unless overridden. */
export function makeContext(overrides: BackendOverrides = {}): ServerContext {
  const backend = new LocalBackend(MODEL_ID, {
    limits: overrides.limits ?? { maxNumSeqs: 8, maxQueuedRequests: 8 }, defaults: overrides.defaults ?? {}, toolCallParser: overrides.toolCallParser,
    pooling: overrides.pooling, task: overrides.task,
  });
  backend.engine = overrides.engine === undefined ? new FakeEngine() : overrides.engine;
  backend.tokenizer = overrides.tokenizer === undefined ? new FakeTokenizer() : overrides.tokenizer;
  const models = new ModelRegistry();
  models.register(backend);
  return { models, metrics: new ServerMetrics(), admitListeners: [], settleListeners: [] };
}

/** The context's one model. */
export const backendOf = (ctx: ServerContext): LocalBackend => ctx.models.local(MODEL_ID);

export function makeStats(overrides: Partial<EngineStatsSnapshot> = {}): EngineStatsSnapshot {
  return {
    numRunning: 0, numWaiting: 0, kvCacheUsage: 0,
    numPrefixQueryTokens: 0, numPrefixHitTokens: 0, numPreemptions: 0, numPromptTokens: 0, numGenerationTokens: 0, numGrammarSteps: 0, grammarMaskSeconds: 0, grammarWaitSeconds: 0, grammar: null, lora: null,
    ttftSeconds: [], interTokenSeconds: [], e2eSeconds: [],
    ...overrides,
  };
}
