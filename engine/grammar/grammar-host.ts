/**
 * The engine thread's side of one grammar thread: requests by id, answered in order, each with
 * a deadline. A request that misses its deadline, or a compile that traps inside xgrammar's
 * WASM, terminates the thread: a WASM module that trapped, or that is stuck in a compile, can't
 * be trusted or stopped any other way. The pool (grammar-pool.ts) then starts another.
 */
import type { Worker } from "node:worker_threads";
import { startWorker } from "../common/ts-worker.ts";
import type { FromGrammar, GrammarWorkerData, ToGrammar } from "./grammar-protocol.ts";
import { GrammarError, paramOf, type GrammarSpec } from "../common/grammar-spec.ts";

interface Pending {
  resolve: (message: FromGrammar) => void;
  reject: (err: Error) => void;
  /** How long the thread may work on it once it is at the head of the queue; the error it then fails with. */
  deadline: { ms: number; error: () => Error };
  timer?: NodeJS.Timeout;
}

export class GrammarHost {
  private nextId = 1;
  /** In the order sent, which is the order the thread answers them. */
  private readonly pending = new Map<number, Pending>();
  private dead: Error | null = null;
  onDeath: ((reason: Error) => void) | null = null;

  private constructor(private readonly worker: Worker) {
    worker.on("message", (message: FromGrammar) => {
      if (message.op === "ready" || message.op === "fatal") return;
      const waiting = this.pending.get(message.id);
      this.pending.delete(message.id);
      clearTimeout(waiting?.timer);
      this.armHead();
      if (!waiting) return;
      if (message.op !== "failed") return waiting.resolve(message);
      waiting.reject(message.grammar ? new GrammarError(message.message, message.param ?? undefined) : new Error(message.message));
      // NOTE: a trap leaves the WASM heap in an unknown state; every later call on it fails or hangs.
      if (message.poisoned) this.kill(new Error(`the grammar thread was restarted after xgrammar failed: ${message.message}`));
    });
    worker.on("error", (err) => this.fail(err));
    worker.on("exit", (code) => this.fail(new Error(`the grammar thread exited (${code})`)));
  }

  static start(data: GrammarWorkerData): Promise<GrammarHost> {
    const worker = startWorker(new URL("./grammar-worker.ts", import.meta.url), { workerData: data });
    return new Promise((resolve, reject) => {
      const onMessage = (message: FromGrammar) => {
        if (message.op === "ready") {
          worker.off("message", onMessage);
          resolve(new GrammarHost(worker));
        } else if (message.op === "fatal") {
          reject(new Error(`the grammar thread failed to start: ${message.message}`));
        }
      };
      worker.on("message", onMessage);
      worker.once("error", reject);
    });
  }

  get alive(): boolean {
    return this.dead === null;
  }

  /** Compiles (or takes from the thread's cache) and makes the sequence's matcher, within `timeoutMs` of the thread starting on it. */
  async open(seqKey: string, spec: GrammarSpec, timeoutMs: number): Promise<{ compileMs: number; cached: boolean }> {
    const answer = await this.request({ op: "open", id: 0, seqKey, spec }, {
      ms: timeoutMs,
      error: () => new GrammarError(`compiling the request's grammar took longer than ${timeoutMs / 1000} s (--grammar-compile-timeout); simplify the schema`, paramOf(spec)),
    });
    if (answer.op !== "opened") throw new Error("the grammar thread answered out of turn");
    return { compileMs: answer.compileMs, cached: answer.cached };
  }

  async advance(rows: readonly { seqKey: string; tokens: readonly number[] }[], timeoutMs: number): Promise<{ masks: Int32Array[]; rejected: boolean[] }> {
    const answer = await this.request({ op: "advance", id: 0, rows: rows.map((r) => ({ seqKey: r.seqKey, tokens: [...r.tokens] })) }, {
      ms: timeoutMs, error: () => new Error(`the grammar thread gave no masks within ${timeoutMs / 1000} s and was restarted`),
    });
    if (answer.op !== "advanced") throw new Error("the grammar thread answered out of turn");
    return { masks: answer.masks, rejected: answer.rejected };
  }

  close(seqKey: string): void {
    if (!this.dead) this.worker.postMessage({ op: "close", seqKey } satisfies ToGrammar);
  }

  /** Stops the thread at once, failing whatever it still owes. */
  kill(reason: Error): void {
    this.fail(reason);
    void this.worker.terminate();
  }

  async terminate(): Promise<void> {
    this.fail(new Error("the grammar thread was stopped"));
    await this.worker.terminate();
  }

  private fail(reason: Error): void {
    if (this.dead) return;
    this.dead = reason;
    for (const waiting of this.pending.values()) {
      clearTimeout(waiting.timer);
      waiting.reject(reason);
    }
    this.pending.clear();
    this.onDeath?.(reason);
  }

  private request(message: ToGrammar & { id: number }, deadline: Pending["deadline"]): Promise<FromGrammar> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, deadline });
      this.worker.postMessage({ ...message, id });
      this.armHead();
    });
  }

  /** NOTE: the thread works on one request at a time, in order, so a deadline runs only while its request is at the head. */
  private armHead(): void {
    const head = this.pending.values().next().value;
    if (!head || head.timer) return;
    head.timer = setTimeout(() => {
      const error = head.deadline.error();
      head.reject(error);
      this.kill(error);
    }, head.deadline.ms);
  }
}
