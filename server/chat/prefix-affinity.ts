/**
 * The prefix balance's affinity key for a request on its way to a replica pool: its prompt as
 * the replicas' engine will see it (the chat template applied by the model's own tokenizer, or
 * a completion's prompt), cut into full KV blocks and hashed as the engine's prefix cache does
 * (engine's prefixAffinityKey). A body the key can't be made from (a malformed one, an
 * embeddings input) gets null: the pool then sends it to the least loaded replica.
 */
import { chatCompletionRequest, type ChatCompletionRequest } from "../openai/schemas.ts";
import { toChatMessage } from "../openai/chat-messages.ts";
import { prefixAffinityKey, type PromptTokenizer } from "../common/engine-api.ts";

export interface PrefixAffinityOptions {
  /** The KV cache's block size on the replicas (tokenmill's default is 16). */
  blockSize: number;
  /** How many leading full blocks make the key. */
  numBlocks: number;
}

export function prefixAffinity(tokenizer: PromptTokenizer, options: PrefixAffinityOptions): (path: string, body: Record<string, unknown>) => Promise<string | null> {
  return async (path, body) => {
    try {
      const tokenIds = await promptTokens(tokenizer, path, body);
      return tokenIds ? prefixAffinityKey(tokenIds, options.blockSize, options.numBlocks) : null;
    } catch {
      return null;
    }
  };
}

async function promptTokens(tokenizer: PromptTokenizer, path: string, body: Record<string, unknown>): Promise<readonly number[] | null> {
  if (path === "/chat/completions") {
    const parsed = chatCompletionRequest.safeParse(body);
    if (!parsed.success) return null;
    const chat: ChatCompletionRequest = parsed.data;
    // NOTE: the same options chat-run.ts renders with, so the key is made of the tokens the replica will cache.
    const { promptTokenIds } = await tokenizer.applyChatTemplate(chat.messages.map(toChatMessage), {
      addGenerationPrompt: chat.add_generation_prompt ?? true, tools: chat.tools ?? undefined, kwargs: chat.chat_template_kwargs ?? undefined,
    });
    return promptTokenIds;
  }
  if (path === "/completions") {
    const prompt = body.prompt;
    if (typeof prompt === "string") return tokenizer.encode(prompt);
    if (Array.isArray(prompt) && prompt.every((t) => typeof t === "number")) return prompt as number[];
    if (Array.isArray(prompt) && typeof prompt[0] === "string") return tokenizer.encode(prompt[0]);
    return null;
  }
  return null;
}
