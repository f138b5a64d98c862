/** A request's outputs as an async iterable: pushed by the engine, pulled by the caller. */
import type { EngineError } from "../common/engine-error.ts";
import type { EngineOutput, RequestUsage } from "../common/request.ts";

export class OutputStream implements AsyncIterable<EngineOutput> {
  private readonly buffered: EngineOutput[] = [];
  private waiter: (() => void) | null = null;
  private error: EngineError | null = null;
  private numUnfinished: number;
  private readonly delivered: RequestUsage = { numPromptTokens: 0, numCachedPromptTokens: 0, numCompletionTokens: 0 };

  constructor(numSequences: number) {
    this.numUnfinished = numSequences;
  }

  get done(): boolean {
    return this.numUnfinished === 0;
  }

  /** Returns true once every sequence has finished. */
  push(output: EngineOutput): boolean {
    this.buffered.push(output);
    this.delivered.numCompletionTokens += output.newTokenIds.length;
    if (output.numPromptTokens !== undefined && output.index === 0) {
      this.delivered.numPromptTokens = output.numPromptTokens;
      this.delivered.numCachedPromptTokens = output.numCachedTokens ?? 0;
    }
    if (output.finishReason) this.numUnfinished--;
    this.wake();
    return this.done;
  }

  /** What the outputs pushed so far add up to: the usage of a request whose engine thread died. */
  get deliveredUsage(): RequestUsage {
    return { ...this.delivered };
  }

  fail(error: EngineError): void {
    this.error = error;
    this.wake();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<EngineOutput> {
    for (;;) {
      while (this.buffered.length > 0) yield this.buffered.shift()!;
      if (this.done) return;
      if (this.error) throw this.error;
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = null;
    }
  }

  private wake(): void {
    this.waiter?.();
  }
}
