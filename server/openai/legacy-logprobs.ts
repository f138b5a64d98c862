/**
 * The completions API's legacy logprobs object:
 * { tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset }.
 * With echo, the prompt's tokens come first; the first prompt token has no logprob.
 */
import type { EngineOutput } from "../common/engine-api.ts";

type Logprob = NonNullable<EngineOutput["logprobs"]>[number];
type PromptLogprobs = EngineOutput["promptLogprobs"] | null;

export interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/** @param startOffset the character offset in the choice's text where these tokens begin. */
export function legacyLogprobs(promptLogprobs: PromptLogprobs, generated: Logprob[], startOffset: number): LegacyLogprobs {
  const out: LegacyLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  let offset = startOffset;
  const push = (token: string, logprob: number | null, top: Record<string, number> | null) => {
    out.tokens.push(token);
    out.token_logprobs.push(logprob);
    out.top_logprobs.push(top);
    out.text_offset.push(offset);
    offset += token.length;
  };
  for (const entry of promptLogprobs ?? []) push(entry.token ?? "", entry.logprob, entry.top ? topOf(entry.top) : null);
  for (const entry of generated) push(entry.token ?? "", entry.logprob, topOf(entry.top));
  return out;
}

function topOf(top: Logprob["top"]): Record<string, number> {
  return Object.fromEntries(top.map((t) => [t.token ?? String(t.tokenId), t.logprob]));
}
