/**
 * The prefix cache's key for a full block: a hash of its tokens chained to its parent's.
 *
 *   tokens   [t0 … t15][t16 … t31][t32 t33]       blockSize 16
 *   hashes    h0 = H("", t0..t15)   h1 = H(h0, t16..t31)   (the partial block is never hashed)
 *
 * NOTE: a hit is still confirmed by comparing tokens (BlockPool.lookup), so a collision can
 * never serve another prompt's KV.
 */
import { createHash } from "node:crypto";

export function blockHash(parentHash: string, tokenIds: readonly number[]): string {
  return createHash("sha256").update(parentHash).update(Int32Array.from(tokenIds)).digest("base64url");
}

/**
 * A prompt's affinity key for routing across replicas: the chained hash of its first
 * `numBlocks` full blocks (fewer when it has fewer), as the prefix cache hashes them; null
 * when it has no full block. Prompts with the same key share those blocks' KV.
 */
export function prefixAffinityKey(tokenIds: readonly number[], blockSize: number, numBlocks: number): string | null {
  const full = Math.min(numBlocks, Math.floor(tokenIds.length / blockSize));
  let hash: string | null = null;
  for (let i = 0; i < full; i++) hash = blockHash(hash ?? "", tokenIds.slice(i * blockSize, (i + 1) * blockSize));
  return hash;
}
