/** A GrammarSession that starts the grammar thread on first use, so servers that never constrain pay nothing. */
import type { GrammarSession } from "../core/grammar-session.ts";
import { GrammarHost } from "./grammar-host.ts";
import type { GrammarWorkerData } from "./grammar-protocol.ts";
import type { GrammarSpec } from "./grammar-spec.ts";

export class LazyGrammar implements GrammarSession {
  private host: Promise<GrammarHost> | null = null;
  private started: GrammarHost | null = null;

  constructor(private readonly data: GrammarWorkerData) {}

  async open(seqKey: string, spec: GrammarSpec): Promise<void> {
    this.host ??= GrammarHost.start(this.data).then((host) => (this.started = host));
    await (await this.host).open(seqKey, spec);
  }

  advance(rows: readonly { seqKey: string; tokens: readonly number[] }[]): Promise<{ masks: Int32Array[]; rejected: boolean[] }> {
    if (!this.started) return Promise.reject(new Error("the grammar thread is not running"));
    return this.started.advance(rows);
  }

  close(seqKey: string): void {
    // NOTE: a close can only follow an open, which started the host (it queues behind the open on the same thread).
    void this.host?.then((host) => host.close(seqKey));
  }

  async terminate(): Promise<void> {
    await (await this.host?.catch(() => null))?.terminate();
  }
}
