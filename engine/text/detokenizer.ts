/**
 * Incremental detokenization of one sequence, as in vLLM and TGI: turns the token ids a
 * request generates into text deltas that are safe to send, and applies stop strings.
 *
 * Each push decodes a short window of tokens twice, so a token costs O(1), not O(length):
 *
 * ```
 *   tokens:  ... | p p p p | r r | n n      p = tokens[prefixOffset, readOffset)
 *                ^prefixOffset   ^readOffset r/n = tokens not yet turned into text
 *
 *   prefixText = decode(tokens[prefixOffset, readOffset))
 *   windowText = decode(tokens[prefixOffset, end))
 *   delta      = windowText.slice(prefixText.length)
 * ```
 *
 * Decoding the new tokens together with a few earlier ones keeps what the decoder does
 * to a sequence's start (a stripped leading space, say) out of the delta. When the delta
 * is emitted, the window slides: prefixOffset = readOffset, readOffset = end.
 */

/** Decodes token ids; gets `skipSpecialTokens` from the detokenizer's options. */
export type DecodeFn = (tokenIds: readonly number[], skipSpecialTokens: boolean) => string;

export interface DetokenizerOptions {
  skipSpecialTokens: boolean;
  /** Stop strings: the output ends before the first one that appears in it. */
  stop?: readonly string[];
  /** Keep the stop string that ended the output (default false, as in OpenAI's API). */
  includeStopStrInOutput?: boolean;
  /** The prompt: its last tokens give the first output tokens their context. */
  promptTokenIds?: readonly number[];
}

export interface DetokenizerDelta {
  /** New text, safe to send: it is never taken back or cut later. */
  text: string;
  stopped: boolean;
  /** The stop string that ended the output. */
  stopReason?: string;
}

/** How many prompt tokens precede the first output tokens in the window. */
const PROMPT_CONTEXT_TOKENS = 5;
const REPLACEMENT_CHAR = "\uFFFD";

export class IncrementalDetokenizer {
  private readonly tokenIds: number[];
  private prefixOffset = 0;
  private readOffset: number;
  /** Decoded text not sent yet: it may be the start of a stop string. */
  private heldText = "";
  private emittedText = "";
  private readonly stop: readonly string[];
  private stopString: string | undefined;

  constructor(private readonly decode: DecodeFn, private readonly options: DetokenizerOptions) {
    this.tokenIds = options.promptTokenIds ? options.promptTokenIds.slice(-PROMPT_CONTEXT_TOKENS) : [];
    this.readOffset = this.tokenIds.length;
    this.stop = (options.stop ?? []).filter((s) => s.length > 0);
  }

  get stopped(): boolean {
    return this.stopString !== undefined;
  }

  /** The text sent so far: the sum of every delta. */
  get outputText(): string {
    return this.emittedText;
  }

  /** Adds generated tokens; returns the text that became safe to send. Tokens after a stop are ignored. */
  push(tokenIds: readonly number[]): DetokenizerDelta {
    if (this.stopped || tokenIds.length === 0) return this.result("");
    for (const tokenId of tokenIds) this.tokenIds.push(tokenId);
    const prefixText = this.decodeRange(this.prefixOffset, this.readOffset);
    const windowText = this.decodeRange(this.prefixOffset, this.tokenIds.length);
    // NOTE: a trailing U+FFFD is usually a multi-byte character whose remaining bytes are
    // in tokens still to come, so nothing is emitted until the window decodes cleanly.
    if (windowText.length <= prefixText.length || windowText.endsWith(REPLACEMENT_CHAR)) return this.result("");
    this.prefixOffset = this.readOffset;
    this.readOffset = this.tokenIds.length;
    return this.append(windowText.slice(prefixText.length), false);
  }

  /** Ends the sequence: returns everything still held back, an unfinished character included. */
  flush(): string {
    if (this.stopped) return "";
    const prefixText = this.decodeRange(this.prefixOffset, this.readOffset);
    const windowText = this.decodeRange(this.prefixOffset, this.tokenIds.length);
    this.prefixOffset = this.readOffset = this.tokenIds.length;
    return this.append(windowText.slice(prefixText.length), true).text;
  }

  private decodeRange(start: number, end: number): string {
    return end > start ? this.decode(this.tokenIds.slice(start, end), this.options.skipSpecialTokens) : "";
  }

  /**
   * Adds decoded text and emits what is safe. NOTE: a stop string never starts inside
   * emitted text (that part would have been held back), so only the held text is searched.
   */
  private append(newText: string, final: boolean): DetokenizerDelta {
    this.heldText += newText;
    const match = this.findStop();
    if (match) {
      this.stopString = match.stop;
      return this.emit(match.index + (this.options.includeStopStrInOutput ? match.stop.length : 0));
    }
    return this.emit(final ? this.heldText.length : this.heldText.length - this.stopPrefixLength());
  }

  private emit(numChars: number): DetokenizerDelta {
    const text = this.heldText.slice(0, numChars);
    this.heldText = this.heldText.slice(numChars);
    this.emittedText += text;
    return this.result(text);
  }

  private result(text: string): DetokenizerDelta {
    return { text, stopped: this.stopped, ...(this.stopString !== undefined && { stopReason: this.stopString }) };
  }

  /** The earliest stop string in the held text. */
  private findStop(): { index: number; stop: string } | null {
    let best: { index: number; stop: string } | null = null;
    for (const stop of this.stop) {
      const index = this.heldText.indexOf(stop);
      if (index >= 0 && (!best || index < best.index)) best = { index, stop };
    }
    return best;
  }

  /** The longest end of the held text that is the start of a stop string: it may yet become one. */
  private stopPrefixLength(): number {
    let held = 0;
    for (const stop of this.stop) {
      for (let n = Math.min(stop.length - 1, this.heldText.length); n > held; n--) {
        if (this.heldText.endsWith(stop.slice(0, n))) {
          held = n;
          break;
        }
      }
    }
    return held;
  }
}
