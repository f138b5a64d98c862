/** The device-pool step layout (pure data): one PagedAttention query row per token, as packed-layout.ts draws it. */
import { describe, expect, it } from "vitest";
import { NULL_BLOCK, layoutPacked } from "../../engine/runner/onnx-device/packed-layout.ts";

describe("layoutPacked", () => {
  it("packs tokens without padding, one row per token with its position as its past, and the sequence's blocks", () => {
    const layout = layoutPacked([
      { tokenIds: [11, 12], numPastTokens: 16, blockTable: [7, 2, 99], logitsFrom: 1, invTemperature: 2 },
      { tokenIds: [13], numPastTokens: 40, blockTable: [4, 9, 5], logitsFrom: 0 },
    ], 16);
    expect(layout.numTokens).toBe(3);
    expect([...layout.inputIds]).toEqual([11n, 12n, 13n]);
    expect([...layout.positionIds]).toEqual([16n, 17n, 40n]);
    expect([...layout.cumulativeSequenceLength]).toEqual([0, 1, 2, 3]);
    expect([...layout.pastSeqlens]).toEqual([16, 17, 40]);
    // A's 18 tokens need 2 of its 3 blocks; the row is padded with the null block to B's 3.
    expect(layout.maxBlocks).toBe(3);
    expect([...layout.blockTable]).toEqual([7, 2, NULL_BLOCK, 7, 2, NULL_BLOCK, 4, 9, 5]);
    expect([...layout.logitsIndices]).toEqual([1n, 2n]);
    expect([...layout.invTemperature]).toEqual([2, 1]);
    expect(layout.maxKvLength).toBe(41);
  });

  it("asks for one ignored logits row when the step needs none, and refuses a table too short for the tokens", () => {
    expect([...layoutPacked([{ tokenIds: [1, 2], numPastTokens: 0, blockTable: [3], logitsFrom: 2 }], 16).logitsIndices]).toEqual([0n]);
    expect(() => layoutPacked([{ tokenIds: [1, 2], numPastTokens: 15, blockTable: [3], logitsFrom: 0 }], 16)).toThrow(/1 blocks for 17 tokens/);
  });
});
