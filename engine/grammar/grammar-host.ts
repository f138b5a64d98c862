/** The engine thread's side of the grammar thread: requests by id, answered in order. */
import type { Worker } from "node:worker_threads";
import { startWorker } from "../host/ts-worker.ts";
import type { GrammarSession } from "../core/grammar-session.ts";
import type { FromGrammar, GrammarWorkerData, ToGrammar } from "./grammar-protocol.ts";
import { GrammarError, type GrammarSpec } from "./grammar-spec.ts";

type Pending = { resolve: (message: FromGrammar) => void; reject: (err: Error) => void };

export class GrammarHost implements GrammarSession {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private dead: Error | null = null;

  private constructor(private readonly worker: Worker) {
    worker.on("message", (message: FromGrammar) => {
      if (message.op === "ready" || message.op === "fatal") return;
      const waiting = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (!waiting) return;
      if (message.op === "failed") waiting.reject(message.grammar ? new GrammarError(message.message, message.param ?? undefined) : new Error(message.message));
      else waiting.resolve(message);
    });
    const fail = (err: Error) => {
      this.dead = err;
      for (const waiting of this.pending.values()) waiting.reject(err);
      this.pending.clear();
    };
    worker.on("error", fail);
    worker.on("exit", (code) => fail(new Error(`the grammar thread exited (${code})`)));
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

  async open(seqKey: string, spec: GrammarSpec): Promise<void> {
    await this.request({ op: "open", id: 0, seqKey, spec });
  }

  async advance(rows: readonly { seqKey: string; tokens: readonly number[] }[]): Promise<{ masks: Int32Array[]; rejected: boolean[] }> {
    const answer = await this.request({ op: "advance", id: 0, rows: rows.map((r) => ({ seqKey: r.seqKey, tokens: [...r.tokens] })) });
    if (answer.op !== "advanced") throw new Error("the grammar thread answered out of turn");
    return { masks: answer.masks, rejected: answer.rejected };
  }

  close(seqKey: string): void {
    if (!this.dead) this.worker.postMessage({ op: "close", seqKey } satisfies ToGrammar);
  }

  async terminate(): Promise<void> {
    await this.worker.terminate();
  }

  private request(message: ToGrammar & { id: number }): Promise<FromGrammar> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id });
    });
  }
}
