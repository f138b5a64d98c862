/** Where generated files go: `TOKENMILL_CACHE_DIR`, or `.cache/` at the project root (git-ignored). */
import { fileURLToPath } from "node:url";
import { join } from "node:path";

export function cacheDir(...parts: string[]): string {
  const root = process.env.TOKENMILL_CACHE_DIR ?? fileURLToPath(new URL("../.cache", import.meta.url));
  return join(root, ...parts);
}
