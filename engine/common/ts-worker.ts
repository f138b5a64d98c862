/**
 * Starts a worker thread from a module URL. In the source tree a `.ts` module is loaded
 * through tsx's loader, registered inside the worker; compiled to JavaScript (the bundle,
 * `tokenmill bundle`), the same URL names the `.js` file beside this one, loaded as it is.
 *
 * NOTE: Node 20 does not pass `--import tsx` hooks on to worker threads, so the worker
 * registers tsx itself before importing its module.
 */
import { Worker, type WorkerOptions } from "node:worker_threads";

/** Whether this code runs compiled to JavaScript (the bundle) rather than as TypeScript through tsx. */
export const COMPILED = import.meta.url.endsWith(".js");

/** A module's URL as this build names it: `x.ts` in the source tree, `x.js` compiled. */
export function moduleFile(url: URL): URL {
  return COMPILED && url.pathname.endsWith(".ts") ? new URL(url.href.replace(/\.ts$/, ".js")) : url;
}

export function startWorker(moduleUrl: URL, options: WorkerOptions = {}): Worker {
  const url = moduleFile(moduleUrl);
  if (!url.pathname.endsWith(".ts")) return new Worker(url, options);
  const tsxApi = import.meta.resolve("tsx/esm/api");
  const bootstrap = `import(${JSON.stringify(tsxApi)}).then(({ register }) => { register(); return import(${JSON.stringify(url.href)}); })`;
  return new Worker(bootstrap, { ...options, eval: true });
}
