/** Where generated files go: `TOKENMILL_CACHE_DIR`, or `.cache/` at the project root (git-ignored). */
import { fileURLToPath } from "node:url";
import { join } from "node:path";

export function cacheDir(...parts: string[]): string {
  // NOTE: an empty TOKENMILL_CACHE_DIR counts as unset (else the cache would land in the working directory).
  const root = process.env.TOKENMILL_CACHE_DIR || fileURLToPath(new URL("../.cache", import.meta.url));
  return join(root, ...parts);
}
