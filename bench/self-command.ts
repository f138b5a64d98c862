/**
 * How to run this tokenmill's own command line as a child process: in the bundle, its compiled
 * bin/tokenmill.js on the same Node; in the source tree, bin/tokenmill.ts through tsx.
 */
import { fileURLToPath } from "node:url";

const COMPILED = import.meta.url.endsWith(".js");

export function tokenmillCommand(args: string[]): { command: string; args: string[]; cwd: string } {
  const bin = fileURLToPath(new URL(COMPILED ? "../bin/tokenmill.js" : "../bin/tokenmill.ts", import.meta.url));
  return { command: process.execPath, args: [...(COMPILED ? [] : ["--import", "tsx"]), bin, ...args], cwd: fileURLToPath(new URL("..", import.meta.url)) };
}
