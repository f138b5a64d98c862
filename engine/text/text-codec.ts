/** What the engine needs of a tokenizer to turn tokens into text on its own thread. */
export interface TextCodec {
  decode(tokenIds: readonly number[], skipSpecialTokens: boolean): string;
  tokenText(tokenId: number): string;
  tokenBytes(tokenId: number): Uint8Array;
}
