/**
 * The engine as its callers see it: `add(request, signal)` gives an async iterable of
 * outputs, and `abort` stops a request. All state lives on the engine thread.
 *
 * The facade supervises that thread: if it dies, the requests it held fail (ENGINE_FAILED)
 * and a new thread is started with backoff, while new requests are refused with
 * ENGINE_RESTARTING. Nothing else is lost: the facade, its listeners and callers stay.
 */
import type { Worker } from "node:worker_threads";
import { checkRequest } from "../core/check-request.ts";
import { EngineError } from "../common/engine-error.ts";
import type { AdapterInfo, EngineInfo, EngineOptions } from "./engine-options.ts";
import type { FromEngine, ToEngine } from "./engine-protocol.ts";
import type { EngineStatsSnapshot } from "../core/engine-stats.ts";
import { OutputStream } from "./output-stream.ts";
import type { EngineOutput, EngineRequest } from "../common/request.ts";
import { startWorker } from "../common/ts-worker.ts";

/** running: serving; restarting: the thread died and a new one is on its way; stopped: shut down. */
export type EngineState = "running" | "restarting" | "stopped";

/** What happened to the engine thread, for logs and metrics. */
export type EngineEvent =
  | { type: "died"; reason: string; numFailedRequests: number; restartInMs: number }
  | { type: "restarted"; loadMs: number }
  | { type: "restart-failed"; reason: string; restartInMs: number };

/** Restart delays: doubling from the first, capped; a thread that ran this long resets them. */
export const RESTART_BACKOFF = { firstMs: 500, maxMs: 30_000, resetAfterMs: 60_000 };

export class Engine {
  private readonly streams = new Map<string, OutputStream>();
  private latestStats: EngineStatsSnapshot | null = null;
  private readonly statsListeners: ((stats: EngineStatsSnapshot) => void)[] = [];
  private readonly eventListeners: ((event: EngineEvent) => void)[] = [];
  private currentState: EngineState = "running";
  private numRecentRestarts = 0;
  private runningSinceMs = performance.now();
  private restartTimer: NodeJS.Timeout | null = null;
  /** Deaths of the engine thread since the facade started. */
  numRestarts = 0;
  /** The LoRA adapters loaded, by name: a restarted thread loads them again. */
  private readonly loadedAdapters = new Map<string, AdapterInfo>();
  private readonly adapterReplies = new Map<number, { resolve: (message: Extract<FromEngine, { type: "adapter" }>) => void; reject: (err: Error) => void }>();
  private nextAdapterId = 0;

  private constructor(private worker: Worker, readonly info: EngineInfo, private readonly options: EngineOptions) {
    for (const adapter of info.adapters) this.loadedAdapters.set(adapter.name, adapter);
    this.attach(worker);
  }

  /** The LoRA adapters requests may name (EngineRequest.adapter). */
  get adapters(): AdapterInfo[] {
    return [...this.loadedAdapters.values()];
  }

  /**
   * Reads the PEFT adapter at `path` and serves it as `name`, without rebuilding the graph.
   * Rejects with EngineError INVALID_REQUEST naming why for an adapter that can't be served
   * (another base model's shapes, DoRA, a rank above --max-lora-rank, a name in use, ...).
   */
  async loadAdapter(name: string, path: string): Promise<AdapterInfo> {
    if (this.loadedAdapters.has(name)) throw new EngineError("INVALID_REQUEST", `a LoRA adapter named ${name} is already loaded`, "lora_name");
    const reply = await this.askAdapter((id) => ({ type: "load-adapter", id, name, path }));
    this.loadedAdapters.set(name, reply.info!);
    return reply.info!;
  }

  /** Stops serving an adapter (requests already admitted finish under it); false: none of that name was loaded. */
  async unloadAdapter(name: string): Promise<boolean> {
    if (!this.loadedAdapters.has(name)) return false;
    // NOTE: forgotten at once, so no new request names it while the thread hears of it.
    this.loadedAdapters.delete(name);
    const reply = await this.askAdapter((id) => ({ type: "unload-adapter", id, name }));
    return reply.unloaded ?? false;
  }

  private askAdapter(message: (id: number) => ToEngine): Promise<Extract<FromEngine, { type: "adapter" }>> {
    if (this.currentState !== "running") return Promise.reject(new EngineError(this.currentState === "restarting" ? "ENGINE_RESTARTING" : "ENGINE_DEAD", `the engine is ${this.currentState}`));
    const id = this.nextAdapterId++;
    return new Promise((resolve, reject) => {
      this.adapterReplies.set(id, {
        resolve: (reply) => (reply.error ? reject(new EngineError(reply.error.code, reply.error.message, reply.error.param)) : resolve(reply)),
        reject,
      });
      this.post(message(id));
    });
  }

  /** Starts the engine thread and resolves once the model is loaded. */
  static async start(options: EngineOptions): Promise<Engine> {
    const { worker, info } = await spawnWorker(options);
    return new Engine(worker, info, options);
  }

  get state(): EngineState {
    return this.currentState;
  }

  get isAlive(): boolean {
    return this.currentState === "running";
  }

  get stats(): EngineStatsSnapshot | null {
    return this.latestStats;
  }

  /** Called with every stats snapshot (each carries the latency samples since the last). A restarted thread's counters start from zero. */
  onStats(listener: (stats: EngineStatsSnapshot) => void): void {
    this.statsListeners.push(listener);
  }

  /** Called when the engine thread dies, restarts, or fails to restart. */
  onEvent(listener: (event: EngineEvent) => void): void {
    this.eventListeners.push(listener);
  }

  /**
   * Submits a request. A request the engine can never run (see checkRequest) throws here at
   * once. The iterable ends after every sequence has finished; aborting the signal aborts the request.
   */
  /** Throws what add() would for a request the engine can never run (see checkRequest), and runs nothing. */
  check(unchecked: EngineRequest): void {
    checkRequest(unchecked, this.info);
    this.checkAdapter(unchecked);
  }

  private checkAdapter(request: EngineRequest): void {
    if (request.adapter !== undefined && !this.loadedAdapters.has(request.adapter)) throw new EngineError("INVALID_REQUEST", `no LoRA adapter named ${request.adapter} is loaded`, "model");
  }

  add(unchecked: EngineRequest, signal?: AbortSignal): AsyncIterable<EngineOutput> {
    if (this.currentState === "restarting") throw new EngineError("ENGINE_RESTARTING", "the engine thread is restarting after a fault; retry shortly");
    if (this.currentState === "stopped") throw new EngineError("ENGINE_DEAD", "the engine has stopped");
    const request = checkRequest(unchecked, this.info);
    this.checkAdapter(request);
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

  /**
   * For tests only: makes the engine thread throw outside any step, as a bug would.
   * Does nothing unless the engine was started with `faultInjection`.
   */
  injectFault(): void {
    if (this.options.faultInjection && this.isAlive) this.post({ type: "inject-fault" });
  }

  async shutdown(): Promise<void> {
    if (this.currentState === "stopped") return;
    const wasRunning = this.currentState === "running";
    this.currentState = "stopped";
    if (this.restartTimer) clearTimeout(this.restartTimer);
    for (const stream of this.streams.values()) stream.fail(new EngineError("ENGINE_DEAD", "the engine has stopped", undefined, stream.deliveredUsage));
    this.streams.clear();
    for (const reply of this.adapterReplies.values()) reply.reject(new EngineError("ENGINE_DEAD", "the engine has stopped"));
    this.adapterReplies.clear();
    if (!wasRunning) return;
    this.post({ type: "shutdown" });
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => void this.worker.terminate().then(() => resolve()), 5000);
      this.worker.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private attach(worker: Worker): void {
    worker.on("message", (message: FromEngine) => {
      if (worker === this.worker && this.currentState === "running") this.onMessage(message);
    });
    worker.on("error", (err) => this.onDeath(worker, `the engine thread failed: ${err.message}`));
    worker.on("exit", (code) => this.onDeath(worker, `the engine thread exited (code ${code})`));
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
      this.streams.get(message.requestId)?.fail(new EngineError(message.code, message.message, message.param, message.usage));
      this.streams.delete(message.requestId);
    } else if (message.type === "adapter") {
      this.adapterReplies.get(message.id)?.resolve(message);
      this.adapterReplies.delete(message.id);
    } else if (message.type === "fatal") {
      this.onDeath(this.worker, message.message);
    }
  }

  /** The current thread died: fail what it held, and start a new one after the backoff. */
  private onDeath(worker: Worker, reason: string): void {
    if (worker !== this.worker || this.currentState !== "running") return;
    this.currentState = "restarting";
    this.numRestarts++;
    void worker.terminate();
    const numFailedRequests = this.streams.size;
    // NOTE: what the dead thread computed but never sent is unknowable; a failed request used what it was sent.
    for (const stream of this.streams.values()) {
      stream.fail(new EngineError("ENGINE_FAILED", `${reason}; the request was lost and the engine is restarting`, undefined, stream.deliveredUsage));
    }
    this.streams.clear();
    for (const reply of this.adapterReplies.values()) reply.reject(new EngineError("ENGINE_FAILED", `${reason}; the adapter was not loaded`));
    this.adapterReplies.clear();
    if (performance.now() - this.runningSinceMs > RESTART_BACKOFF.resetAfterMs) this.numRecentRestarts = 0;
    const restartInMs = this.nextDelayMs();
    this.emit({ type: "died", reason, numFailedRequests, restartInMs });
    this.scheduleRestart(restartInMs);
  }

  private nextDelayMs(): number {
    return Math.min(RESTART_BACKOFF.maxMs, RESTART_BACKOFF.firstMs * 2 ** this.numRecentRestarts++);
  }

  private scheduleRestart(delayMs: number): void {
    this.restartTimer = setTimeout(() => void this.restart(), delayMs);
  }

  private async restart(): Promise<void> {
    this.restartTimer = null;
    const started = performance.now();
    try {
      // NOTE: the new thread serves the adapters the old one had.
      const { worker } = await spawnWorker({ ...this.options, loraModules: this.adapters.map(({ name, path }) => ({ name, path })) });
      if (this.currentState === "stopped") return void worker.terminate();
      this.worker = worker;
      this.attach(worker);
      this.currentState = "running";
      this.runningSinceMs = performance.now();
      this.emit({ type: "restarted", loadMs: performance.now() - started });
    } catch (err) {
      if (this.currentState === "stopped") return;
      const restartInMs = this.nextDelayMs();
      this.emit({ type: "restart-failed", reason: err instanceof Error ? err.message : String(err), restartInMs });
      this.scheduleRestart(restartInMs);
    }
  }

  private emit(event: EngineEvent): void {
    for (const listener of this.eventListeners) listener(event);
  }
}

/** Starts an engine thread and waits for its model to load. */
function spawnWorker(options: EngineOptions): Promise<{ worker: Worker; info: EngineInfo }> {
  const worker = startWorker(new URL("./engine-worker.ts", import.meta.url), { workerData: options });
  return new Promise((resolve, reject) => {
    const onMessage = (message: FromEngine) => {
      if (message.type === "ready") {
        cleanup();
        resolve({ worker, info: message.info });
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
    const onExit = (code: number) => {
      cleanup();
      reject(new EngineError("ENGINE_DEAD", `the engine thread exited while starting (code ${code})`));
    };
    const cleanup = () => {
      worker.off("message", onMessage);
      worker.off("error", onError);
      worker.off("exit", onExit);
    };
    worker.on("message", onMessage);
    worker.on("error", onError);
    worker.on("exit", onExit);
  });
}
