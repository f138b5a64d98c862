/**
 * NOTE: xgrammar checks UTF-8 structure (a lead byte needs its continuations) but not the
 * ranges of the byte after E0, ED, F0 and F4, so it lets through overlong forms, surrogates and
 * code points above U+10FFFF (seen: F4 92 8C 82 inside a JSON string on random weights), which
 * are invalid UTF-8 and so invalid JSON. The guard removes, from a grammar's mask, every token
 * with such a sequence inside it (or a byte UTF-8 never has), and after a token that ends in
 * one of those lead bytes, every token whose first byte is out of its range.
 */
import type { TextCodec } from "../text/text-codec.ts";

/** The range the byte after a lead byte must be in, when it is narrower than 80–BF. */
function secondByteRange(lead: number): [number, number] | null {
  if (lead === 0xe0) return [0xa0, 0xbf];
  if (lead === 0xed) return [0x80, 0x9f];
  if (lead === 0xf0) return [0x90, 0xbf];
  if (lead === 0xf4) return [0x80, 0x8f];
  return null;
}

const neverValid = (byte: number) => byte === 0xc0 || byte === 0xc1 || byte >= 0xf5;

export class Utf8Guard {
  /** Tokens that can never appear in valid UTF-8 text, as a mask of disallowed bits. */
  private readonly bad: Int32Array;
  private readonly firstByte: Uint8Array;
  private readonly lastByte: Uint8Array;

  constructor(codec: TextCodec, vocabSize: number) {
    this.bad = new Int32Array(Math.ceil(vocabSize / 32));
    this.firstByte = new Uint8Array(vocabSize);
    this.lastByte = new Uint8Array(vocabSize);
    for (let id = 0; id < vocabSize; id++) {
      let bytes: Uint8Array;
      try {
        bytes = codec.tokenBytes(id);
      } catch {
        continue;
      }
      if (bytes.length === 0) continue;
      this.firstByte[id] = bytes[0];
      this.lastByte[id] = bytes[bytes.length - 1];
      let invalid = false;
      for (let i = 0; i < bytes.length && !invalid; i++) {
        if (neverValid(bytes[i])) invalid = true;
        const range = i + 1 < bytes.length ? secondByteRange(bytes[i]) : null;
        if (range && (bytes[i + 1] < range[0] || bytes[i + 1] > range[1])) invalid = true;
      }
      if (invalid) this.bad[id >> 5] |= 1 << (id & 31);
    }
  }

  /** The mask without the tokens that would make the output invalid UTF-8 after `previousToken` (a copy; the mask itself untouched). */
  restrict(mask: Int32Array, previousToken: number | undefined): Int32Array {
    const out = this.restricted(mask, previousToken);
    // NOTE: never leave nothing to sample (the grammar's own mask then stands).
    return out.some((w) => w !== 0) ? out : mask;
  }

  private restricted(mask: Int32Array, previousToken: number | undefined): Int32Array {
    const out = new Int32Array(mask.length);
    for (let w = 0; w < mask.length; w++) out[w] = mask[w] & ~this.bad[w];
    const range = previousToken === undefined ? null : secondByteRange(this.lastByte[previousToken]);
    if (range) {
      for (let w = 0; w < out.length; w++) {
        let bits = out[w];
        while (bits !== 0) {
          const bit = 31 - Math.clz32(bits & -bits);
          const id = (w << 5) + bit;
          const first = this.firstByte[id];
          if (first < range[0] || first > range[1]) out[w] &= ~(1 << bit);
          bits &= bits - 1;
        }
      }
    }
    return out;
  }
}
