/**
 * The block pool and the KV-cache manager's use of it: exact block ids, reference counts,
 * the least-recently-freed order of the free queue, and the prefix cache's hashes.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type Block, BlockPool, NULL_BLOCK_ID } from "../../engine/kv-cache/block-pool.ts";
import { blockHash } from "../../engine/kv-cache/block-hash.ts";
import { KvCacheManager } from "../../engine/kv-cache/kv-cache-manager.ts";
import { BLOCK_SIZE, makeSequence, tokens } from "../helpers/core-fakes.ts";

/** The pool's private state, for corrupting it on purpose. */
interface PoolInternals {
  blocks: Block[];
  freeQueue: Map<number, Block>;
  cached: Map<string, Block>;
}

const internals = (pool: BlockPool) => pool as unknown as PoolInternals;

/** A pool that runs checkIntegrity() after every method call. */
function checkedPool(numBlocks: number): BlockPool {
  const pool = new BlockPool(numBlocks);
  return new Proxy(pool, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== "function" || property === "checkIntegrity") return value;
      return (...args: unknown[]) => {
        const result: unknown = value.apply(target, args);
        target.checkIntegrity();
        return result;
      };
    },
  });
}

function checkedKv(numBlocks: number, enablePrefixCaching = true): { pool: BlockPool; kv: KvCacheManager } {
  const pool = checkedPool(numBlocks);
  return { pool, kv: new KvCacheManager(pool, BLOCK_SIZE, enablePrefixCaching) };
}

describe("BlockPool", () => {
  it("hands out blocks 1, 2, 3… in order and never the null block", () => {
    const pool = checkedPool(6);
    expect(pool.numUsableBlocks).toBe(5);
    expect(pool.freeBlockIds()).toEqual([1, 2, 3, 4, 5]);
    expect(pool.allocate(2)).toEqual([1, 2]);
    expect(pool.allocate(3)).toEqual([3, 4, 5]);
    expect(pool.numFreeBlocks).toBe(0);
    expect(pool.refCountOf(NULL_BLOCK_ID)).toBe(0);
    pool.checkIntegrity();
  });

  it("refuses an allocation it can't satisfy, changing nothing", () => {
    const pool = checkedPool(4);
    pool.allocate(2);
    expect(pool.canAllocate(2)).toBe(false);
    expect(pool.allocate(2)).toBeNull();
    expect(pool.freeBlockIds()).toEqual([3]);
    expect(pool.allocate(0)).toEqual([]);
    pool.checkIntegrity();
  });

  it("rejects a pool without a usable block", () => {
    expect(() => new BlockPool(1)).toThrow(/at least 2 blocks, got 1/);
  });

  it("counts references: touch adds one, free drops one, a block is free only at zero", () => {
    const pool = checkedPool(4);
    const [a] = pool.allocate(1)!;
    pool.cache(a, "h", [1, 2, 3, 4]);
    pool.touch([a]);
    expect(pool.refCountOf(a)).toBe(2);
    pool.free([a]);
    expect(pool.refCountOf(a)).toBe(1);
    expect(pool.freeBlockIds()).not.toContain(a);
    pool.free([a]);
    expect(pool.refCountOf(a)).toBe(0);
    expect(pool.freeBlockIds()).toEqual([2, 3, a]);
    expect(() => pool.free([a])).toThrow(/block 1 freed with refCount 0/);
    pool.checkIntegrity();
  });

  it("reports usage as the share of usable blocks in use", () => {
    const pool = checkedPool(5);
    expect(pool.usage).toBe(0);
    pool.allocate(1);
    expect(pool.usage).toBe(0.25);
    pool.allocate(3);
    expect(pool.usage).toBe(1);
  });

  it("confirms a cache hit by comparing tokens, not by the hash alone", () => {
    const pool = checkedPool(4);
    const [a] = pool.allocate(1)!;
    pool.cache(a, "h", [1, 2, 3, 4]);
    expect(pool.lookup("h", [1, 2, 3, 4])?.blockId).toBe(a);
    expect(pool.lookup("h", [1, 2, 3, 5])).toBeNull();
    expect(pool.lookup("h", [1, 2, 3])).toBeNull();
    expect(pool.lookup("other", [1, 2, 3, 4])).toBeNull();
  });

  it("keeps the first block cached under a hash; a second block with the same hash stays uncached", () => {
    const pool = checkedPool(4);
    const [a, b] = pool.allocate(2)!;
    pool.cache(a, "h", [1, 2, 3, 4]);
    pool.cache(b, "h", [1, 2, 3, 4]);
    expect(pool.lookup("h", [1, 2, 3, 4])?.blockId).toBe(a);
    pool.free([a]);
    pool.allocate(1); // takes block 3, the least recently freed
    expect(pool.lookup("h", [1, 2, 3, 4])?.blockId).toBe(a);
    pool.checkIntegrity();
  });

  it("keeps a freed block's hash until the block is handed out again, least recently freed first", () => {
    const pool = checkedPool(5);
    const ids = pool.allocate(4)!;
    expect(ids).toEqual([1, 2, 3, 4]);
    ids.forEach((id) => pool.cache(id, `h${id}`, [id, id, id, id]));
    pool.free([3]);
    pool.free([1]);
    pool.free([4]);
    expect(pool.freeBlockIds()).toEqual([3, 1, 4]);
    for (const id of [3, 1, 4]) expect(pool.lookup(`h${id}`, [id, id, id, id])?.blockId).toBe(id);

    expect(pool.allocate(1)).toEqual([3]);
    expect(pool.lookup("h3", [3, 3, 3, 3])).toBeNull();
    expect(pool.lookup("h1", [1, 1, 1, 1])?.blockId).toBe(1);

    expect(pool.allocate(2)).toEqual([1, 4]);
    expect(pool.lookup("h1", [1, 1, 1, 1])).toBeNull();
    expect(pool.lookup("h4", [4, 4, 4, 4])).toBeNull();
    expect(pool.lookup("h2", [2, 2, 2, 2])?.blockId).toBe(2);
    pool.checkIntegrity();
  });

  it("touch() on a free cached block takes it out of the free queue, so it is not evicted", () => {
    const pool = checkedPool(5);
    const ids = pool.allocate(4)!;
    pool.cache(1, "h1", [1, 1, 1, 1]);
    pool.free(ids);
    expect(pool.freeBlockIds()).toEqual([1, 2, 3, 4]);
    pool.touch([1]);
    expect(pool.refCountOf(1)).toBe(1);
    expect(pool.freeBlockIds()).toEqual([2, 3, 4]);
    expect(pool.allocate(3)).toEqual([2, 3, 4]);
    expect(pool.lookup("h1", [1, 1, 1, 1])?.blockId).toBe(1);
    pool.checkIntegrity();
    pool.free([1]);
    expect(pool.freeBlockIds()).toEqual([1]);
    pool.checkIntegrity();
  });

});

describe("BlockPool.checkIntegrity on corrupted state", () => {
  function poolInUse(): BlockPool {
    const pool = checkedPool(6);
    pool.allocate(3);
    pool.cache(1, "h1", [1, 1, 1, 1]);
    pool.free([2]);
    pool.checkIntegrity();
    return pool;
  }

  it("fails on a negative reference count", () => {
    const pool = poolInUse();
    internals(pool).blocks[3].refCount = -1;
    expect(() => pool.checkIntegrity()).toThrow(/block 3 has refCount -1/);
    expect(() => pool.allocate(0)).toThrow(/block 3 has refCount -1/); // the checked pool checks after every call
  });

  it("fails when a used block sits in the free queue", () => {
    const pool = poolInUse();
    internals(pool).freeQueue.set(1, internals(pool).blocks[1]);
    expect(() => pool.checkIntegrity()).toThrow(/block 1: refCount 1 but free=true/);
  });

  it("fails when a free block leaks out of the free queue", () => {
    const pool = poolInUse();
    internals(pool).freeQueue.delete(2);
    expect(() => pool.checkIntegrity()).toThrow(/block 2: refCount 0 but free=false/);
  });

  it("fails when the null block is put in the free queue", () => {
    const pool = poolInUse();
    internals(pool).freeQueue.set(NULL_BLOCK_ID, internals(pool).blocks[NULL_BLOCK_ID]);
    expect(() => pool.checkIntegrity()).toThrow(/free \(\d+\) \+ used \(\d+\) != total \(5\)/);
  });

  it("fails when the cache index points at a block with another hash", () => {
    const pool = poolInUse();
    internals(pool).blocks[1].hash = "something else";
    expect(() => pool.checkIntegrity()).toThrow(/cache index for h1 points at block 1/);
  });
});

describe("KvCacheManager on the pool", () => {
  it("gives a sequence ceil(tokens / blockSize) blocks and frees them tail first", () => {
    const { pool, kv } = checkedKv(8);
    const seq = makeSequence({ prompt: tokens(9) });
    expect(kv.allocateSlots(seq, 9)).toBe(true);
    expect(seq.blockIds).toEqual([1, 2, 3]);
    seq.numComputedTokens = 9;
    expect(kv.allocateSlots(seq, 3)).toBe(true);
    expect(seq.blockIds).toEqual([1, 2, 3]);
    expect(kv.allocateSlots(seq, 4)).toBe(true);
    expect(seq.blockIds).toEqual([1, 2, 3, 4]);
    kv.free(seq);
    expect(seq.blockIds).toEqual([]);
    expect(pool.freeBlockIds()).toEqual([5, 6, 7, 4, 3, 2, 1]);
    pool.checkIntegrity();
  });

  it("hashes full computed blocks only, each chained to its parent", () => {
    const { pool, kv } = checkedKv(8);
    const prompt = tokens(10);
    const seq = makeSequence({ prompt });
    kv.allocateSlots(seq, 10);
    seq.numComputedTokens = 7;
    kv.cacheFullBlocks(seq);
    const h0 = blockHash("", prompt.slice(0, 4));
    expect(seq.blockHashes).toEqual([h0]);
    seq.numComputedTokens = 10;
    kv.cacheFullBlocks(seq);
    const h1 = blockHash(h0, prompt.slice(4, 8));
    expect(seq.blockHashes).toEqual([h0, h1]);
    expect(h1).not.toBe(blockHash("", prompt.slice(4, 8)));
    expect(pool.lookup(h0, prompt.slice(0, 4))?.blockId).toBe(1);
    expect(pool.lookup(h1, prompt.slice(4, 8))?.blockId).toBe(2);
  });

  it("finds a finished sequence's freed blocks for a sequence sharing its prefix, and takes them back from the free queue", () => {
    const { pool, kv } = checkedKv(5);
    const first = makeSequence({ prompt: tokens(9) });
    kv.allocateSlots(first, 9);
    first.numComputedTokens = 9;
    kv.cacheFullBlocks(first);
    kv.free(first);
    expect(pool.freeBlockIds()).toEqual([4, 3, 2, 1]);

    const second = makeSequence({ prompt: [...tokens(8), 20, 21, 22, 23, 24, 25, 26, 27] });
    const cached = kv.findCachedBlocks(second);
    expect(cached.blockIds).toEqual([1, 2]);
    expect(kv.allocateSlots(second, 8, cached)).toBe(true);
    expect(second.blockIds).toEqual([1, 2, 4, 3]);
    expect(second.numComputedTokens).toBe(8);
    expect(second.blockHashes).toEqual(cached.hashes);
    expect(pool.numFreeBlocks).toBe(0);
    pool.checkIntegrity();
  });

  it("counts free cached hits against the pool: returns false and changes nothing when they don't all fit", () => {
    const { pool, kv } = checkedKv(5);
    const first = makeSequence({ prompt: tokens(9) });
    kv.allocateSlots(first, 9);
    first.numComputedTokens = 9;
    kv.cacheFullBlocks(first);
    kv.free(first);

    const second = makeSequence({ prompt: [...tokens(8), ...tokens(9, 20)] });
    const cached = kv.findCachedBlocks(second);
    expect(cached.blockIds).toEqual([1, 2]);
    expect(kv.allocateSlots(second, 9, cached)).toBe(false);
    expect(second.blockIds).toEqual([]);
    expect(second.numComputedTokens).toBe(0);
    expect(pool.freeBlockIds()).toEqual([4, 3, 2, 1]);
    expect(pool.refCountOf(1)).toBe(0);
    pool.checkIntegrity();
  });

  it("shares a cached block between two live sequences with a reference count of 2", () => {
    const { pool, kv } = checkedKv(8);
    const first = makeSequence({ prompt: tokens(6) });
    kv.allocateSlots(first, 6);
    first.numComputedTokens = 6;
    kv.cacheFullBlocks(first);
    const second = makeSequence({ prompt: tokens(7) });
    const cached = kv.findCachedBlocks(second);
    kv.allocateSlots(second, 3, cached);
    expect(second.blockIds).toEqual([1, 3]);
    expect(pool.refCountOf(1)).toBe(2);
    kv.free(first);
    expect(pool.refCountOf(1)).toBe(1);
    expect(pool.freeBlockIds()).toEqual([4, 5, 6, 7, 2]);
    kv.free(second);
    expect(pool.freeBlockIds()).toEqual([4, 5, 6, 7, 2, 3, 1]);
    pool.checkIntegrity();
  });

  it("finds nothing when prefix caching is off", () => {
    const { kv } = checkedKv(8, false);
    const first = makeSequence({ prompt: tokens(9) });
    kv.allocateSlots(first, 9);
    first.numComputedTokens = 9;
    kv.cacheFullBlocks(first);
    expect(first.blockHashes).toEqual([]);
    kv.free(first);
    expect(kv.findCachedBlocks(makeSequence({ prompt: tokens(9) })).blockIds).toEqual([]);
  });
});

type PoolOp =
  | { kind: "allocate"; n: number }
  | { kind: "free"; pick: number }
  | { kind: "touch"; hash: number }
  | { kind: "cache"; pick: number; hash: number };

const poolOp: fc.Arbitrary<PoolOp> = fc.oneof(
  fc.record({ kind: fc.constant("allocate" as const), n: fc.integer({ min: 0, max: 5 }) }),
  fc.record({ kind: fc.constant("free" as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant("touch" as const), hash: fc.integer({ min: 0, max: 5 }) }),
  fc.record({ kind: fc.constant("cache" as const), pick: fc.nat(), hash: fc.integer({ min: 0, max: 5 }) }),
);

const tokensOfHash = (hash: number) => [hash, hash + 1, hash + 2, hash + 3];

describe("BlockPool under random operations", () => {
  it("matches a model of references, LRU free order and cached hashes, and keeps its integrity", () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: 9 }), fc.array(poolOp, { maxLength: 60 }), (numBlocks, ops) => {
        const pool = new BlockPool(numBlocks);
        const held: number[] = [];
        let freeQueue = Array.from({ length: numBlocks - 1 }, (_, i) => i + 1);
        const cachedBlock = new Map<number, number>();
        const hashOf = new Map<number, number>();

        for (const op of ops) {
          if (op.kind === "allocate") {
            const ids = pool.allocate(op.n);
            if (op.n > freeQueue.length) {
              expect(ids).toBeNull();
            } else {
              expect(ids).toEqual(freeQueue.slice(0, op.n));
              freeQueue = freeQueue.slice(op.n);
              for (const id of ids!) {
                const hash = hashOf.get(id);
                if (hash !== undefined) cachedBlock.delete(hash);
                hashOf.delete(id);
                held.push(id);
              }
            }
          } else if (op.kind === "free" && held.length > 0) {
            const [id] = held.splice(op.pick % held.length, 1);
            pool.free([id]);
            if (!held.includes(id)) freeQueue.push(id);
          } else if (op.kind === "touch") {
            const id = cachedBlock.get(op.hash);
            expect(pool.lookup(`h${op.hash}`, tokensOfHash(op.hash))?.blockId).toBe(id);
            if (id === undefined) continue;
            pool.touch([id]);
            freeQueue = freeQueue.filter((free) => free !== id);
            held.push(id);
          } else if (op.kind === "cache" && held.length > 0) {
            const id = held[op.pick % held.length];
            pool.cache(id, `h${op.hash}`, tokensOfHash(op.hash));
            if (!hashOf.has(id) && !cachedBlock.has(op.hash)) {
              hashOf.set(id, op.hash);
              cachedBlock.set(op.hash, id);
            }
          }

          pool.checkIntegrity();
          expect(pool.freeBlockIds()).toEqual(freeQueue);
          let numUsed = 0;
          for (let id = 1; id < numBlocks; id++) {
            const refs = held.filter((h) => h === id).length;
            expect(pool.refCountOf(id)).toBe(refs);
            if (refs > 0) numUsed++;
          }
          expect(pool.numFreeBlocks + numUsed).toBe(pool.numUsableBlocks);
          expect(held).not.toContain(NULL_BLOCK_ID);
        }
      }),
      { numRuns: 300 },
    );
  });
});
