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
