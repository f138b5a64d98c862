/**
 * The engine as its callers see it: `add(request, signal)` gives an async iterable of
 * outputs, and `abort` stops a request. All state lives on the engine thread.
 */
import type { Worker } from "node:worker_threads";
import { EngineError } from "./engine-error.ts";
import type { EngineInfo, EngineOptions } from "./engine-options.ts";
import type { FromEngine, ToEngine } from "./engine-protocol.ts";
import type { EngineStatsSnapshot } from "./engine-stats.ts";
import { OutputStream } from "./output-stream.ts";
import type { EngineOutput, EngineRequest } from "./request.ts";
import { startWorker } from "./ts-worker.ts";

export class Engine {
  private readonly streams = new Map<string, OutputStream>();
  private latestStats: EngineStatsSnapshot | null = null;
  private readonly statsListeners: ((stats: EngineStatsSnapshot) => void)[] = [];
  private deadReason: EngineError | null = null;

  private constructor(private readonly worker: Worker, readonly info: EngineInfo) {
    worker.on("message", (message: FromEngine) => this.onMessage(message));
    worker.on("error", (err) => this.die(new EngineError("ENGINE_DEAD", `the engine thread failed: ${err.message}`)));
    worker.on("exit", (code) => this.die(new EngineError("ENGINE_DEAD", `the engine thread exited (code ${code})`)));
  }

  /** Starts the engine thread and resolves once the model is loaded. */
  static start(options: EngineOptions): Promise<Engine> {
    const worker = startWorker(new URL("./engine-worker.ts", import.meta.url), { workerData: options });
    return new Promise((resolve, reject) => {
      const onMessage = (message: FromEngine) => {
        if (message.type === "ready") {
          cleanup();
          resolve(new Engine(worker, message.info));
        } else if (message.type === "fatal") {
          cleanup();
          void worker.terminate();
          reject(new EngineError(message.code, message.message));
        }
      };
      const onError = (err: Error) => {
        cleanup();
        reject(new EngineError("ENGINE_DEAD", `the engine thread failed to start: ${err.message}`));
      };
      const cleanup = () => {
        worker.off("message", onMessage);
        worker.off("error", onError);
      };
      worker.on("message", onMessage);
      worker.on("error", onError);
    });
  }

  get isAlive(): boolean {
    return this.deadReason === null;
  }

  get stats(): EngineStatsSnapshot | null {
    return this.latestStats;
  }

  /** Called with every stats snapshot (each carries the latency samples since the last). */
  onStats(listener: (stats: EngineStatsSnapshot) => void): void {
    this.statsListeners.push(listener);
  }

  /** Submits a request. The iterable ends after every sequence has finished; aborting the signal aborts the request. */
  add(request: EngineRequest, signal?: AbortSignal): AsyncIterable<EngineOutput> {
    if (this.deadReason) throw this.deadReason;
    if (this.streams.has(request.requestId)) throw new EngineError("INVALID_REQUEST", `request id ${request.requestId} is already in use`);
    const stream = new OutputStream(request.n ?? 1);
    this.streams.set(request.requestId, stream);
    if (signal) {
      if (signal.aborted) queueMicrotask(() => this.abort(request.requestId));
      else signal.addEventListener("abort", () => this.abort(request.requestId), { once: true });
    }
    this.post({ type: "add", request });
    return stream;
  }

  abort(requestId: string): void {
    if (this.streams.has(requestId) && this.isAlive) this.post({ type: "abort", requestId });
  }

  async shutdown(): Promise<void> {
    if (!this.isAlive) return;
    this.post({ type: "shutdown" });
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => void this.worker.terminate().then(() => resolve()), 5000);
      this.worker.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private post(message: ToEngine): void {
    this.worker.postMessage(message);
  }

  private onMessage(message: FromEngine): void {
    if (message.type === "outputs") {
      for (const output of message.outputs) {
        const stream = this.streams.get(output.requestId);
        if (stream?.push(output)) this.streams.delete(output.requestId);
      }
      this.latestStats = message.stats;
      for (const listener of this.statsListeners) listener(message.stats);
    } else if (message.type === "rejected") {
      this.streams.get(message.requestId)?.fail(new EngineError(message.code, message.message));
      this.streams.delete(message.requestId);
    } else if (message.type === "fatal") {
      this.die(new EngineError(message.code, message.message));
    }
  }

  private die(reason: EngineError): void {
    if (this.deadReason) return;
    this.deadReason = reason;
    for (const stream of this.streams.values()) stream.fail(reason);
    this.streams.clear();
  }
}
