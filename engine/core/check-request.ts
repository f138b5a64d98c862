/**
 * The engine's limits on a request, checked here once, where the engine is entered: the
 * prompt against the vocabulary and the context, the token ids it names, max_tokens against
 * what the context and the KV cache leave. A request without max_tokens gets what the context
 * leaves. The server maps the errors to HTTP and checks none of this itself.
 */
import { EngineError } from "../common/engine-error.ts";
import type { EngineRequest } from "../common/request.ts";
import { defaultMaxTokens } from "./context-length.ts";
import { checkGrammarBounds } from "../grammar/grammar-bounds.ts";
import { GrammarError } from "../common/grammar-spec.ts";

export interface RequestLimits {
  maxModelLen: number;
  vocabSize: number;
  blockSize: number;
  numBlocks: number;
}

/** A request that passed the checks, with max_tokens settled. */
export type CheckedRequest = EngineRequest & { maxTokens: number };

export function checkRequest(request: EngineRequest, limits: RequestLimits): CheckedRequest {
  const { maxModelLen, vocabSize, blockSize, numBlocks } = limits;
  const numPrompt = request.promptTokenIds.length;
  if (numPrompt === 0) throw new EngineError("INVALID_REQUEST", "the prompt is empty", "prompt");
  const outside = (id: number) => !Number.isInteger(id) || id < 0 || id >= vocabSize;
  const vocabulary = `outside the vocabulary (0 to ${vocabSize - 1})`;
  const badToken = request.promptTokenIds.find(outside);
  if (badToken !== undefined) throw new EngineError("INVALID_REQUEST", `token id ${badToken} is ${vocabulary}`, "prompt");
  const badBias = [...(request.sampling.logitBias?.keys() ?? [])].find(outside);
  if (badBias !== undefined) throw new EngineError("INVALID_REQUEST", `logit_bias names token id ${badBias}, ${vocabulary}`, "logit_bias");
  const badStop = request.stopTokenIds?.find(outside);
  if (badStop !== undefined) throw new EngineError("INVALID_REQUEST", `stop_token_ids names token id ${badStop}, ${vocabulary}`, "stop_token_ids");
  if (request.pooling) return checkPooling(request, limits);
  if (request.grammar) checkGrammar(request.grammar);
  if (numPrompt >= maxModelLen) {
    throw new EngineError("PROMPT_TOO_LONG",
      `This model's maximum context length is ${maxModelLen} tokens, but the prompt has ${numPrompt}, leaving no room to generate. Please shorten the prompt.`, "prompt");
  }
  const maxTokens = request.maxTokens ?? defaultMaxTokens(numPrompt, maxModelLen);
  if (numPrompt + maxTokens > maxModelLen) {
    throw new EngineError("PROMPT_TOO_LONG",
      `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${numPrompt + maxTokens} tokens ` +
        `(${numPrompt} in the prompt, ${maxTokens} in the completion: max_tokens is ${maxTokens}). Please reduce the length of the prompt or completion.`, "max_tokens");
  }
  const numBlocksNeeded = Math.ceil((numPrompt + maxTokens) / blockSize);
  if (numBlocksNeeded > numBlocks - 1) {
    throw new EngineError("PROMPT_TOO_LONG",
      `the prompt (${numPrompt} tokens) plus max_tokens (${maxTokens}) needs ${numBlocksNeeded} KV blocks but the cache holds ${numBlocks - 1}; raise --kv-cache-memory`, "max_tokens");
  }
  return { ...request, maxTokens };
}

/** A pooling (embedding) request computes its prompt and nothing more: it may fill the context. */
function checkPooling(request: EngineRequest, limits: RequestLimits): CheckedRequest {
  const { maxModelLen, blockSize, numBlocks } = limits;
  const numPrompt = request.promptTokenIds.length;
  if (numPrompt > maxModelLen) {
    throw new EngineError("PROMPT_TOO_LONG",
      `This model's maximum context length is ${maxModelLen} tokens, but the input has ${numPrompt}. Please shorten the input.`, "input");
  }
  if (request.grammar) throw new EngineError("INVALID_REQUEST", "an embedding request can't carry a grammar", "response_format");
  const numBlocksNeeded = Math.ceil(numPrompt / blockSize);
  if (numBlocksNeeded > numBlocks - 1) {
    throw new EngineError("PROMPT_TOO_LONG",
      `the input (${numPrompt} tokens) needs ${numBlocksNeeded} KV blocks but the cache holds ${numBlocks - 1}; raise --kv-cache-memory`, "input");
  }
  return { ...request, maxTokens: 0, n: 1 };
}

/** A grammar too big or too deep to compile in time is refused here, before any thread tries. */
function checkGrammar(grammar: NonNullable<EngineRequest["grammar"]>): void {
  try {
    checkGrammarBounds(grammar);
  } catch (err) {
    if (err instanceof GrammarError) throw new EngineError("INVALID_REQUEST", `invalid grammar: ${err.message}`, err.param);
    throw err;
  }
}
