/** Server-sent events on a hijacked reply: `data: {json}` frames, then `data: [DONE]`. */
import type { ServerResponse } from "node:http";
import { toApiError } from "../common/api-error.ts";

export class SseStream {
  private ended = false;

  constructor(private readonly res: ServerResponse, headers: Record<string, string> = {}) {
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
      "x-accel-buffering": "no",
      ...headers,
    });
  }

  /**
   * Runs a stream's body; however it ends, the request is settled (its ledger row committed)
   * before the last bytes: the error event when the body threw, `[DONE]` otherwise.
   */
  async settledRun(request: { fail(err: unknown): void; settle(): Promise<void> }, body: () => Promise<void>): Promise<void> {
    try {
      await body();
    } catch (err) {
      request.fail(err);
      await request.settle();
      return this.fail(err);
    }
    await request.settle();
    this.end();
  }

  get closed(): boolean {
    return this.ended || this.res.destroyed;
  }

  /** Writes one event; waits while the socket's buffer is full, so a slow client slows only itself. */
  async send(data: unknown): Promise<void> {
    if (this.closed) return;
    if (!this.res.write(`data: ${JSON.stringify(data)}\n\n`)) await this.drained();
  }

  private drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        this.res.off("drain", done);
        this.res.off("close", done);
        resolve();
      };
      this.res.on("drain", done);
      this.res.on("close", done);
    });
  }

  /** Writes one named event (`event: NAME`), as Anthropic's and the Responses API's streams are. */
  async event(name: string, data: unknown): Promise<void> {
    if (this.closed) return;
    if (!this.res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`)) await this.drained();
  }

  /** Ends a stream whose protocol has no `[DONE]`. */
  close(): void {
    if (this.closed) return;
    this.ended = true;
    this.res.end();
  }

  /**
   * Ends the stream with an error event in OpenAI's shape and no `[DONE]`, so that neither
   * the SDK nor a raw reader takes a cut-off stream for a finished one.
   */
  fail(err: unknown): void {
    if (this.closed) return;
    this.ended = true;
    this.res.end(`data: ${JSON.stringify(toApiError(err).body)}\n\n`);
  }

  end(): void {
    if (this.closed) return;
    this.ended = true;
    this.res.end("data: [DONE]\n\n");
  }
}
