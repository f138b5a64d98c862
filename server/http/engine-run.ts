import { EngineError, type EngineOutput, type RequestUsage } from "../common/engine-api.ts";
import { ApiError, requestAborted } from "../common/api-error.ts";

/** One engine request's outputs, counted exactly once whoever reads them: the route, or release() draining what is left. */
export class EngineRun {
  private ended = false;
  private outputs: Promise<AsyncIterator<EngineOutput>> | null = null;

  constructor(
    /** Starts the engine request (after its reservation), on the first read. */
    private readonly start: () => Promise<AsyncIterator<EngineOutput>>,
    private readonly count: (usage: RequestUsage | undefined, output?: EngineOutput, byRoute?: boolean) => void,
  ) {}

  /**
   * The route's view. NOTE: the engine ends an aborted sequence with finish_reason "abort". A
   * client that left reads nothing more; one still reading was cut off by the server, and must
   * not be told its request finished.
   */
  reader(signal: AbortSignal, fail: (err: unknown) => void): AsyncIterator<EngineOutput> {
    return {
      next: async () => {
        const next = await this.next(true).catch((err: unknown) => {
          fail(err);
          throw err;
        });
        if (!next.done && next.value.finishReason === "abort") {
          const reason = signal.reason instanceof ApiError ? signal.reason : requestAborted();
          fail(reason);
          throw reason;
        }
        return next;
      },
    };
  }

  /** Reads to the end, so that the usage on the last output (or on the error) is counted. */
  async drain(): Promise<void> {
    // NOTE: never read: it never started, and must not start now.
    if (!this.outputs) this.ended = true;
    while (!this.ended) await this.next().catch(() => undefined);
  }

  private async next(byRoute = false): Promise<IteratorResult<EngineOutput>> {
    if (this.ended) return { done: true, value: undefined };
    try {
      const next = await (await (this.outputs ??= this.start())).next();
      if (next.done) this.ended = true;
      else this.count(next.value.usage, next.value, byRoute);
      return next;
    } catch (err) {
      this.ended = true;
      if (err instanceof EngineError) this.count(err.usage);
      throw err;
    }
  }
}
