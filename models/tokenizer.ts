/**
 * A model's tokenizer and chat template: @huggingface/tokenizers for the vocabulary,
 * @huggingface/jinja for the template.
 */
import { readFileSync } from "node:fs";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import type { Checkpoint } from "./checkpoint.ts";
import { ModelError } from "./model-error.ts";
import { tokenBytes, vocabStyleOf, type VocabStyle } from "./token-bytes.ts";

export interface ChatMessage {
  role: string;
  content: string | null;
  name?: string;
  tool_calls?: unknown[];
  tool_call_id?: string;
}

export interface ChatTemplateOptions {
  addGenerationPrompt?: boolean;
  tools?: unknown[];
  /** Extra variables for the template, e.g. enable_thinking. */
  kwargs?: Record<string, unknown>;
}

export class ModelTokenizer {
  private readonly template: Template | null;
  /** The tokenizer's own EOS token, if it names one. */
  readonly eosTokenId: number | null;

  private readonly vocabStyle: VocabStyle;
  private readonly specialTokenIds: ReadonlySet<number>;

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly checkpoint: Pick<Checkpoint, "tokenizerConfig" | "chatTemplate">,
    tokenizerJson: Parameters<typeof vocabStyleOf>[0] = {},
  ) {
    this.vocabStyle = vocabStyleOf(tokenizerJson);
    this.specialTokenIds = new Set([...tokenizer.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
    this.template = checkpoint.chatTemplate ? new Template(checkpoint.chatTemplate) : null;
    const eos = tokenString(checkpoint.tokenizerConfig.eos_token);
    this.eosTokenId = eos ? (tokenizer.token_to_id(eos) ?? null) : null;
  }

  static load(checkpoint: Pick<Checkpoint, "tokenizerJson" | "tokenizerConfig" | "chatTemplate">): ModelTokenizer {
    try {
      const json = JSON.parse(readFileSync(checkpoint.tokenizerJson, "utf8"));
      return new ModelTokenizer(new Tokenizer(json, checkpoint.tokenizerConfig), checkpoint, json);
    } catch (err) {
      throw new ModelError("BAD_TOKENIZER", `cannot load ${checkpoint.tokenizerJson}: ${(err as Error).message}`);
    }
  }

  encode(text: string, addSpecialTokens = true): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /**
   * Encodes `text` unless it certainly holds `maxTokens` tokens or more; then it stops early
   * and says how many it counted at least. A prompt far beyond the context (megabytes of it)
   * so costs about what a context-sized one does, not seconds of tokenizing.
   */
  encodeWithin(text: string, addSpecialTokens: boolean, maxTokens: number): { tokenIds: number[] } | { numTokensAtLeast: number } {
    if (text.length > maxTokens * EARLY_COUNT_CHARS_PER_TOKEN) {
      const counted = this.countAtLeast(text, maxTokens);
      if (counted >= maxTokens) return { numTokensAtLeast: counted };
    }
    return { tokenIds: this.encode(text, addSpecialTokens) };
  }

  /**
   * A lower bound on text's token count, from pieces encoded one at a time, stopping once it
   * reaches `stopAt`. Pieces end before a space that starts a word, where byte-level BPE
   * pre-tokenizers split anyway; each piece is allowed PIECE_SLACK tokens of difference
   * (a prefix token, a merge across the cut), so the bound never overstates.
   */
  private countAtLeast(text: string, stopAt: number): number {
    let counted = 0;
    for (let start = 0; start < text.length && counted < stopAt;) {
      const end = pieceEnd(text, start);
      counted += Math.max(0, this.tokenizer.encode(text.slice(start, end), { add_special_tokens: false }).ids.length - PIECE_SLACK);
      start = end;
    }
    return counted;
  }

  /** NOTE: the library throws on an empty list; an empty list decodes to "". */
  decode(tokenIds: readonly number[], skipSpecialTokens = false): string {
    if (tokenIds.length === 0) return "";
    return this.tokenizer.decode([...tokenIds], { skip_special_tokens: skipSpecialTokens });
  }

  /** The raw bytes a token stands for (it may be part of a multi-byte character). */
  tokenBytes(tokenId: number): Uint8Array {
    const token = this.tokenizer.id_to_token(tokenId);
    if (token === undefined) return new Uint8Array();
    return tokenBytes(token, this.vocabStyle, this.specialTokenIds.has(tokenId));
  }

  /** A token on its own as text, for logprobs; bytes that aren't whole characters show as U+FFFD. */
  tokenText(tokenId: number): string {
    return new TextDecoder().decode(this.tokenBytes(tokenId));
  }

  /** The lowest special token id: ids below it are ordinary vocabulary (for synthetic prompts). */
  get firstSpecialTokenId(): number | null {
    return this.specialTokenIds.size === 0 ? null : Math.min(...this.specialTokenIds);
  }

  get hasChatTemplate(): boolean {
    return this.template !== null;
  }

  applyChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (!this.template) throw new ModelError("BAD_TOKENIZER", "this model has no chat template; use /v1/completions");
    const config = this.checkpoint.tokenizerConfig;
    return this.template.render({
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? true,
      tools: options.tools,
      bos_token: tokenString(config.bos_token) ?? "",
      eos_token: tokenString(config.eos_token) ?? "",
      ...options.kwargs,
    });
  }
}

/** Texts longer than this many characters a token are counted piecewise before being encoded whole. */
const EARLY_COUNT_CHARS_PER_TOKEN = 6;
const PIECE_CHARS = 8192;
const PIECE_SLACK = 2;

/** Where a piece starting at `start` ends: before a space followed by a non-space, near PIECE_CHARS on. */
function pieceEnd(text: string, start: number): number {
  const target = start + PIECE_CHARS;
  if (target >= text.length) return text.length;
  for (let i = target; i < Math.min(text.length - 1, target + PIECE_CHARS); i++) {
    if (text[i] === " " && text[i - 1] !== " " && text[i + 1] !== " ") return i;
  }
  return target + PIECE_CHARS >= text.length ? text.length : target + PIECE_CHARS;
}

function tokenString(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  return null;
}
