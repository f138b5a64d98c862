/**
 * Everything xgrammar holds, owned by one thread: the tokenizer info, the compiler, an LRU of
 * compiled grammars keyed by the canonical spec (disposing what it evicts once no matcher
 * uses it), and one matcher per constrained sequence.
 */
import { readFileSync } from "node:fs";
import type { CompiledGrammar, GrammarCompiler, GrammarMatcher, TokenizerInfo } from "@mlc-ai/web-xgrammar";
import { compileSpec } from "./grammar-source.ts";
import { grammarKey, type GrammarSpec } from "../common/grammar-spec.ts";
import { loadXgrammar, type XgrammarModule } from "./xgrammar.ts";

/** Compiled grammars kept for reuse. */
export const GRAMMAR_CACHE_SIZE = 64;

export interface AdvanceRow {
  seqKey: string;
  /** Tokens generated since the last advance, to accept first. */
  tokens: readonly number[];
}

export interface Advanced {
  /** One bitmask per row: bit i of word i >> 5 set when token i is allowed next. */
  masks: Int32Array[];
  /** A row whose matcher refused a token (never for tokens sampled under its mask). */
  rejected: boolean[];
}

interface Cached {
  compiled: CompiledGrammar;
  users: number;
  /** How long the compile took. */
  compileMs: number;
}

export class GrammarCore {
  private readonly cache = new Map<string, Cached>();
  private readonly matchers = new Map<string, { matcher: GrammarMatcher; key: string }>();
  private numTextChecks = 0;

  private constructor(private readonly xg: XgrammarModule, private readonly info: TokenizerInfo, private readonly compiler: GrammarCompiler) {}

  /** @param tokenizerJson a Hugging Face tokenizer.json; vocabSize is the model's (its logits' width). */
  static async create(tokenizerJson: string, vocabSize: number, stopTokenIds: readonly number[]): Promise<GrammarCore> {
    const xg = loadXgrammar();
    const tokenizer = JSON.parse(readFileSync(tokenizerJson, "utf8")) as {
      model: { vocab: Record<string, number> }; added_tokens?: { id: number; content: string }[]; decoder?: unknown;
    };
    const encoded = new Array<string>(vocabSize).fill("");
    for (const [token, id] of Object.entries(tokenizer.model.vocab)) if (id < vocabSize) encoded[id] = token;
    for (const added of tokenizer.added_tokens ?? []) if (added.id < vocabSize) encoded[added.id] = added.content;
    const info = await xg.TokenizerInfo.createTokenizerInfo(encoded, vocabTypeOf(tokenizer.decoder), false, vocabSize, [...stopTokenIds]);
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
    return new GrammarCore(xg, info, compiler);
  }

  /** Compiles the spec (or takes it from the cache) and gives the sequence a matcher; returns the compile's time (0 when cached). */
  async open(seqKey: string, spec: GrammarSpec): Promise<{ compileMs: number; cached: boolean }> {
    const key = grammarKey(spec);
    let entry = this.cache.get(key);
    const cached = entry !== undefined;
    if (entry) {
      this.cache.delete(key);
      this.cache.set(key, entry);
    } else {
      const started = performance.now();
      const compiled = await compileSpec(this.xg, this.compiler, spec);
      entry = { compiled, users: 0, compileMs: performance.now() - started };
      this.cache.set(key, entry);
      this.evict();
    }
    this.close(seqKey);
    entry.users++;
    this.matchers.set(seqKey, { matcher: await this.xg.GrammarMatcher.createGrammarMatcher(entry.compiled), key });
    return { compileMs: cached ? 0 : entry.compileMs, cached };
  }

  async advance(rows: readonly AdvanceRow[]): Promise<Advanced> {
    const masks: Int32Array[] = [];
    const rejected: boolean[] = [];
    for (const row of rows) {
      const held = this.matchers.get(row.seqKey);
      if (!held) throw new Error(`no grammar matcher for ${row.seqKey}`);
      rejected.push(!row.tokens.every((token) => held.matcher.acceptToken(token)));
      masks.push(await held.matcher.getNextTokenBitmask());
    }
    return { masks, rejected };
  }

  /** Whether the spec's grammar accepts `text` as (a prefix of) an output, with a matcher of its own. */
  async acceptsText(spec: GrammarSpec, text: string): Promise<boolean> {
    const seqKey = `accepts-text-${this.numTextChecks++}`;
    await this.open(seqKey, spec);
    try {
      return this.matchers.get(seqKey)!.matcher._acceptString(text);
    } finally {
      this.close(seqKey);
    }
  }

  close(seqKey: string): void {
    const held = this.matchers.get(seqKey);
    if (!held) return;
    held.matcher.dispose();
    this.matchers.delete(seqKey);
    const entry = this.cache.get(held.key);
    if (entry) entry.users--;
    this.evict();
  }

  get numMatchers(): number {
    return this.matchers.size;
  }

  private evict(): void {
    for (const [key, entry] of this.cache) {
      if (this.cache.size <= GRAMMAR_CACHE_SIZE) return;
      if (entry.users > 0) continue;
      entry.compiled.dispose();
      this.cache.delete(key);
    }
  }
}

/** xgrammar's vocabulary type from the tokenizer's decoder: byte-level BPE (GPT-2, Llama 3, Qwen), byte fallback (SentencePiece) or raw. */
function vocabTypeOf(decoder: unknown): string {
  const text = JSON.stringify(decoder ?? {});
  if (text.includes('"ByteLevel"')) return "byte_level";
  if (text.includes('"ByteFallback"')) return "byte_fallback";
  return "raw";
}
