/**
 * The block pool: reference-counted KV blocks, and the prefix cache's index of full
 * blocks by hash.
 *
 * NOTE: the free queue is a Map, whose insertion order gives least-recently-freed
 * first and whose delete takes O(1) from the middle, which a cache hit on a free
 * block needs. Freed blocks keep their hash until they are handed out again.
 */
export interface Block {
  readonly blockId: number;
  refCount: number;
  /** Set once the block is full and cached. */
  hash: string | null;
  tokenIds: readonly number[] | null;
}

export const NULL_BLOCK_ID = 0;

export class BlockPool {
  private readonly blocks: Block[];
  private readonly freeQueue = new Map<number, Block>();
  private readonly cached = new Map<string, Block>();

  constructor(readonly numBlocks: number) {
    if (numBlocks < 2) throw new Error(`the KV pool needs at least 2 blocks, got ${numBlocks}`);
    this.blocks = Array.from({ length: numBlocks }, (_, blockId) => ({ blockId, refCount: 0, hash: null, tokenIds: null }));
    // Block 0 is the null block (padding slot); it is never handed out.
    for (const block of this.blocks.slice(1)) this.freeQueue.set(block.blockId, block);
  }

  /** Usable blocks: all but the null block. */
  get numUsableBlocks(): number {
    return this.numBlocks - 1;
  }

  get numFreeBlocks(): number {
    return this.freeQueue.size;
  }

  get usage(): number {
    return 1 - this.numFreeBlocks / this.numUsableBlocks;
  }

  canAllocate(n: number): boolean {
    return n <= this.freeQueue.size;
  }

  /** Takes n blocks, least recently freed first, evicting their cached hashes. Null: not enough. */
  allocate(n: number): number[] | null {
    if (!this.canAllocate(n)) return null;
    const ids: number[] = [];
    for (const block of this.freeQueue.values()) {
      if (ids.length === n) break;
      ids.push(block.blockId);
    }
    for (const blockId of ids) {
      const block = this.blocks[blockId];
      this.freeQueue.delete(blockId);
      this.evict(block);
      block.refCount = 1;
    }
    return ids;
  }

  /** A cached block by hash, confirmed by its tokens. */
  lookup(hash: string, tokenIds: readonly number[]): Block | null {
    const block = this.cached.get(hash);
    if (!block || !block.tokenIds || !sameTokens(block.tokenIds, tokenIds)) return null;
    return block;
  }

  /** Takes a reference on cached blocks (a prefix hit), pulling free ones out of the free queue. */
  touch(blockIds: readonly number[]): void {
    for (const blockId of blockIds) {
      const block = this.blocks[blockId];
      if (block.refCount === 0) this.freeQueue.delete(blockId);
      block.refCount++;
    }
  }

  /** Marks a full block as cached under `hash`; a block already cached under that hash wins. */
  cache(blockId: number, hash: string, tokenIds: readonly number[]): void {
    const block = this.blocks[blockId];
    if (block.hash !== null || this.cached.has(hash)) return;
    block.hash = hash;
    block.tokenIds = tokenIds;
    this.cached.set(hash, block);
  }

  /**
   * Drops one reference on each block. Blocks reaching zero join the free queue in the
   * given order, so callers pass a sequence's blocks tail first: its tail is evicted first.
   */
  free(blockIds: readonly number[]): void {
    for (const blockId of blockIds) {
      const block = this.blocks[blockId];
      if (block.refCount <= 0) throw new Error(`block ${blockId} freed with refCount ${block.refCount}`);
      if (--block.refCount === 0) this.freeQueue.set(blockId, block);
    }
  }

  refCountOf(blockId: number): number {
    return this.blocks[blockId].refCount;
  }

  /** The free queue's order, least recently freed first (tests assert eviction order on it). */
  freeBlockIds(): number[] {
    return [...this.freeQueue.keys()];
  }


  checkIntegrity(): void {
    let numUsed = 0;
    for (const block of this.blocks.slice(1)) {
      if (block.refCount < 0) throw new Error(`block ${block.blockId} has refCount ${block.refCount}`);
      const isFree = this.freeQueue.has(block.blockId);
      if (isFree !== (block.refCount === 0)) throw new Error(`block ${block.blockId}: refCount ${block.refCount} but free=${isFree}`);
      if (!isFree) numUsed++;
    }
    if (numUsed + this.freeQueue.size !== this.numUsableBlocks) {
      throw new Error(`free (${this.freeQueue.size}) + used (${numUsed}) != total (${this.numUsableBlocks})`);
    }
    for (const [hash, block] of this.cached) {
      if (block.hash !== hash) throw new Error(`cache index for ${hash} points at block ${block.blockId} with hash ${block.hash}`);
    }
  }

  private evict(block: Block): void {
    if (block.hash !== null) this.cached.delete(block.hash);
    block.hash = null;
    block.tokenIds = null;
  }
}

function sameTokens(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
