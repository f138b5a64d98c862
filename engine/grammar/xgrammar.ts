/**
 * Loads @mlc-ai/web-xgrammar. NOTE: its UMD bundle does not load through ESM import or
 * require in this "type": "module" package; compiled as a CommonJS module it does (about
 * 30 ms here, plus the WASM start).
 */
import { readFileSync } from "node:fs";
import Module, { createRequire } from "node:module";
import { dirname } from "node:path";
import type * as Xgrammar from "@mlc-ai/web-xgrammar";

export type XgrammarModule = typeof Xgrammar;

let loaded: XgrammarModule | null = null;

export function loadXgrammar(): XgrammarModule {
  if (loaded) return loaded;
  const path = createRequire(import.meta.url).resolve("@mlc-ai/web-xgrammar");
  const ModuleClass = Module as unknown as {
    new (id: string): { filename: string; paths: string[]; exports: unknown; _compile(code: string, filename: string): void };
    _nodeModulePaths(dir: string): string[];
  };
  const module = new ModuleClass(path);
  module.filename = path;
  module.paths = ModuleClass._nodeModulePaths(dirname(path));
  module._compile(readFileSync(path, "utf8"), path);
  loaded = module.exports as XgrammarModule;
  return loaded;
}
