/**
 * Sequences' block tables on top of the block pool, with automatic prefix caching keyed by
 * chained block hashes (block-hash.ts). A sequence under a LoRA adapter chains its hashes from
 * the adapter's key (cacheSalt), so the same prompt under two adapters never shares blocks.
 */
import { blockHash } from "./block-hash.ts";
import type { BlockPool } from "./block-pool.ts";

/** What the KV-cache manager sees of a sequence: its tokens, its progress and its block table (the core's Sequence is one). */
export interface KvSequence {
  readonly numTokens: number;
  readonly numPromptTokens: number;
  /** The manager adds a cached prefix to it at admission, and sets a forked copy's. */
  numComputedTokens: number;
  blockIds: number[];
  blockHashes: string[];
  /** The first block's hash is chained from this (a LoRA adapter's key; "" for the base model). */
  readonly cacheSalt?: string;
  tokensIn(start: number, end: number): readonly number[];
}

export class KvCacheManager {
  numPrefixQueries = 0;
  numPrefixHits = 0;

  constructor(readonly pool: BlockPool, readonly blockSize: number, readonly enablePrefixCaching = true) {}

  /**
   * The cached blocks that cover the longest prefix of a sequence's tokens.
   * NOTE: the last token is always recomputed, since its logits are needed.
   */
  findCachedBlocks(seq: KvSequence): { blockIds: number[]; hashes: string[] } {
    const blockIds: number[] = [];
    const hashes: string[] = [];
    if (!this.enablePrefixCaching) return { blockIds, hashes };
    const maxBlocks = Math.floor((seq.numTokens - 1) / this.blockSize);
    let parent = seq.cacheSalt ?? "";
    for (let i = 0; i < maxBlocks; i++) {
      const tokenIds = seq.tokensIn(i * this.blockSize, (i + 1) * this.blockSize);
      const hash = blockHash(parent, tokenIds);
      const block = this.pool.lookup(hash, tokenIds);
      if (!block) break;
      blockIds.push(block.blockId);
      hashes.push(hash);
      parent = hash;
    }
    return { blockIds, hashes };
  }

  /**
   * Gives the sequence slots for `numNewTokens` more tokens, after taking the cached
   * prefix blocks `cached` (first admission only). Returns false, changing nothing,
   * when the pool can't hold them now.
   * NOTE: prefix-cache stats count here, on admission, not in findCachedBlocks: a sequence
   * that waits for blocks looks its prefix up again every step.
   */
  allocateSlots(seq: KvSequence, numNewTokens: number, cached?: { blockIds: number[]; hashes: string[] }): boolean {
    const cachedIds = cached?.blockIds ?? [];
    const numCachedTokens = cachedIds.length * this.blockSize;
    const numBlocksNeeded = Math.ceil((seq.numComputedTokens + numCachedTokens + numNewTokens) / this.blockSize);
    const numNewBlocks = Math.max(0, numBlocksNeeded - seq.blockIds.length - cachedIds.length);
    // Cached hits that sit in the free queue stop being free once touched.
    const numFreeHits = cachedIds.filter((id) => this.pool.refCountOf(id) === 0).length;
    if (!this.pool.canAllocate(numNewBlocks + numFreeHits)) return false;
    this.pool.touch(cachedIds);
    seq.blockIds.push(...cachedIds, ...this.pool.allocate(numNewBlocks)!);
    seq.blockHashes.push(...(cached?.hashes ?? []));
    seq.numComputedTokens += numCachedTokens;
    if (cached && this.enablePrefixCaching) {
      this.numPrefixQueries += seq.numTokens;
      this.numPrefixHits += numCachedTokens;
    }
    return true;
  }

  /** Registers the sequence's newly full, computed blocks in the prefix cache. */
  cacheFullBlocks(seq: KvSequence): void {
    if (!this.enablePrefixCaching) return;
    const numFull = Math.floor(seq.numComputedTokens / this.blockSize);
    for (let i = seq.blockHashes.length; i < numFull; i++) {
      const tokenIds = seq.tokensIn(i * this.blockSize, (i + 1) * this.blockSize);
      const hash = blockHash(i === 0 ? (seq.cacheSalt ?? "") : seq.blockHashes[i - 1], tokenIds);
      this.pool.cache(seq.blockIds[i], hash, tokenIds);
      seq.blockHashes.push(hash);
    }
  }

  /**
   * Gives `child` the parent's full prompt blocks (one more reference each), so the n copies
   * of a request share them. The child recomputes only the partial last block.
   */
  fork(parent: KvSequence, child: KvSequence): void {
    const numShared = Math.floor((parent.numPromptTokens - 1) / this.blockSize);
    child.blockIds = parent.blockIds.slice(0, numShared);
    child.blockHashes = parent.blockHashes.slice(0, numShared);
    this.pool.touch(child.blockIds);
    child.numComputedTokens = numShared * this.blockSize;
  }

  /** Releases a sequence's blocks, tail first so that its tail is evicted first. */
  free(seq: KvSequence): void {
    this.pool.free([...seq.blockIds].reverse());
    seq.blockIds = [];
    seq.blockHashes = [];
  }
}
