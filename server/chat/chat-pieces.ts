/**
 * The one piece stream every chat-shaped endpoint (chat completions, Responses, Messages)
 * builds its answer from, whichever backend serves: a chat run's output as pieces of
 * reasoning, answer and, at the end, tool calls, per choice. A local model's pieces come from
 * its engine outputs through an OutputSplitter per choice; an upstream model's from its
 * chat-completion chunks (upstream-chat.ts).
 */
import type { Usage } from "../../service/settlement.ts";
import type { Admitted } from "../backends/admitted.ts";
import { OutputSplitter, startChat, toolParsingFor, type ChatRun, type SplitOutput } from "./chat-run.ts";
import type { ChatCompletionRequest } from "../openai/schemas.ts";
import type { EngineOutput, GrammarSpec } from "../common/engine-api.ts";
import { inMessages } from "../openai/to-engine-request.ts";

export interface ChatPiece extends SplitOutput {
  /** Which of the request's n choices it belongs to (0 for Responses and Messages, which take n = 1). */
  index: number;
  /** The piece's raw text, before the split (what a whole answer is split from, at its end). */
  text: string;
  /** Tokens the piece carries (an upstream chunk counts as one). */
  numTokens: number;
  /** Their logprobs, when the request asked for them (local models). */
  logprobs?: PieceLogprob[];
  /** Set on the last piece: length, stop or tool_calls. */
  finishReason?: string | null;
  /** What stopped it, when the backend says: the stop string, or a stop token id. */
  stopReason?: string | number | null;
  /** Output tokens of this piece that were reasoning. */
  reasoningTokens: number;
}

export interface PieceRun {
  pieces: AsyncIterator<ChatPiece>;
  /** Awaited before any byte is sent, so that a rejection still gets its HTTP status. */
  first: IteratorResult<ChatPiece>;
  /** The prompt's tokens, and how many of them the prefix cache served, when known before the output (a local model); null otherwise. */
  numPromptTokens: number | null;
  numCachedPromptTokens: number | null;
}

export type PieceLogprob = NonNullable<EngineOutput["logprobs"]>[number];

/** What a translating endpoint needs of its attempt, local or upstream. */
export interface ChatAttempt {
  backend: { id: string };
  readonly usage: Usage;
  commit(): void;
  fail(err: unknown): void;
  settle(): Promise<void>;
}

/** Starts the chat run on a local model; a prompt the engine refuses names `param` (messages or input). */
export async function startLocalPieces(admitted: Admitted, chat: ChatCompletionRequest, grammar: GrammarSpec | undefined, param: "messages" | "input"): Promise<PieceRun> {
  let run: ChatRun;
  try {
    run = await startChat(admitted, chat, grammar);
  } catch (err) {
    throw inMessages(err, param);
  }
  const parseTools = toolParsingFor(admitted.backend, chat);
  const pieces = localPieces(run, () => new OutputSplitter(admitted.backend.reasoningParser, parseTools));
  // NOTE: the engine's first output says how much of the prompt the prefix cache served.
  const numCachedPromptTokens = run.first.done ? 0 : (run.first.value.numCachedTokens ?? 0);
  return { pieces, first: await pieces.next(), numPromptTokens: run.numPromptTokens, numCachedPromptTokens };
}

async function* localPieces(run: ChatRun, newSplitter: () => OutputSplitter): AsyncGenerator<ChatPiece> {
  const splitters = new Map<number, OutputSplitter>();
  for (let next = run.first; !next.done; next = await run.outputs.next()) {
    const output = next.value;
    let splitter = splitters.get(output.index);
    if (!splitter) splitters.set(output.index, (splitter = newSplitter()));
    const reasoningTokens = splitter.inReasoning ? output.newTokenIds.length : 0;
    const split = splitter.push(output.text, Boolean(output.finishReason));
    yield {
      ...split, index: output.index, text: output.text, numTokens: output.newTokenIds.length, ...(output.logprobs ? { logprobs: output.logprobs } : {}),
      finishReason: output.finishReason, stopReason: output.stopReason, reasoningTokens,
    };
  }
}

/**
 * Builds an answer from the run's pieces, then lets the run go, however the build ended (an
 * upstream run frees its provider's slot; a local one is drained by its admission).
 */
export async function endPieces<T>(run: PieceRun, build: () => Promise<T>): Promise<T> {
  try {
    return await build();
  } finally {
    await run.pieces.return?.(undefined);
  }
}
