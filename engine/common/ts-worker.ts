/**
 * Starts a worker thread from a module URL. A `.ts` module is loaded through tsx's
 * loader, registered inside the worker.
 *
 * NOTE: Node 20 does not pass `--import tsx` hooks on to worker threads, so the worker
 * registers tsx itself before importing its module.
 */
import { Worker, type WorkerOptions } from "node:worker_threads";

export function startWorker(moduleUrl: URL, options: WorkerOptions = {}): Worker {
  if (!moduleUrl.pathname.endsWith(".ts")) return new Worker(moduleUrl, options);
  const tsxApi = import.meta.resolve("tsx/esm/api");
  const bootstrap = `import(${JSON.stringify(tsxApi)}).then(({ register }) => { register(); return import(${JSON.stringify(moduleUrl.href)}); })`;
  return new Worker(bootstrap, { ...options, eval: true });
}
