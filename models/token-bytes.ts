/**
 * The raw bytes of a vocabulary entry, for logprobs (`bytes` in OpenAI's API): a token can
 * hold part of a multi-byte character, which no string can show.
 *
 * - Byte-level BPE (GPT-2, Llama 3, Qwen): each byte is stored as one printable character
 *   (bytes_to_unicode), so the bytes are that table read backwards.
 * - SentencePiece (Llama 2, Mistral): "▁" stands for a space and "<0xNN>" for a raw byte.
 */
const encoder = new TextEncoder();

export type VocabStyle = "byte-level" | "sentencepiece" | "plain";

let byteLevelDecoder: Map<string, number> | null = null;

/** GPT-2's bytes_to_unicode, inverted: printable character → byte. */
function byteLevelTable(): Map<string, number> {
  if (byteLevelDecoder) return byteLevelDecoder;
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const table = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const code = printable.includes(b) ? b : 256 + extra++;
    table.set(String.fromCodePoint(code), b);
  }
  byteLevelDecoder = table;
  return table;
}

export function vocabStyleOf(tokenizerJson: { decoder?: { type?: string; decoders?: { type?: string }[] } | null }): VocabStyle {
  const decoder = tokenizerJson.decoder;
  const types = [decoder?.type, ...(decoder?.decoders ?? []).map((d) => d.type)];
  if (types.includes("ByteLevel")) return "byte-level";
  if (types.includes("ByteFallback") || types.includes("Metaspace")) return "sentencepiece";
  return "plain";
}

/** The bytes a vocabulary entry stands for. Special tokens are their own text. */
export function tokenBytes(token: string, style: VocabStyle, isSpecial: boolean): Uint8Array {
  if (isSpecial || style === "plain") return encoder.encode(token);
  if (style === "byte-level") {
    const table = byteLevelTable();
    const chars = [...token];
    if (chars.every((c) => table.has(c))) return Uint8Array.from(chars, (c) => table.get(c)!);
    return encoder.encode(token);
  }
  const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(token);
  if (byte) return Uint8Array.of(parseInt(byte[1], 16));
  return encoder.encode(token.replaceAll("\u2581", " "));
}
