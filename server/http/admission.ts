/**
 * Admission: a request may start only while the engine is ready and the waiting queue
 * has room. Returns a release function, called once, whatever way the request ends.
 */
import { ApiError, clientClosedRequest, engineRestarting, invalidRequest, overloaded, requestAborted } from "./api-error.ts";
import type { EngineOutput, EngineRequest, PromptTokenizer, ServingEngine } from "../backends/engine-api.ts";
import type { ServerContext } from "../server-context.ts";

export interface Admitted {
  engine: ServingEngine;
  tokenizer: PromptTokenizer;
  /** Fires when the client goes away or the server gives up on the request. */
  signal: AbortSignal;
  /**
   * Runs one engine request under this admission. A request the server aborted (shutdown)
   * throws the abort's reason instead of ending like a finished one.
   */
  generate(request: EngineRequest): AsyncIterator<EngineOutput>;
  release(): void;
}

/**
 * @param numSequences what the request runs at once: n, times the prompts of a completions request.
 * @param param the field that multiplies them, named in the 400 when they could never all fit.
 */
export function admit(ctx: ServerContext, numSequences: number, onClientGone: (abort: () => void) => void, param = "n"): Admitted {
  const { engine, tokenizer } = ctx;
  const capacity = ctx.limits.maxNumSeqs + ctx.limits.maxQueuedRequests;
  if (numSequences > capacity) {
    throw invalidRequest(
      `This request needs ${numSequences} sequences at once, but the server holds at most ${capacity} ` +
        `(${ctx.limits.maxNumSeqs} running plus ${ctx.limits.maxQueuedRequests} queued); send fewer prompts or a smaller n.`,
      param, "too_many_sequences",
    );
  }
  if (!engine || !tokenizer) throw overloaded("The model is still loading; try again shortly.", 5);
  if (engine.state === "restarting") throw engineRestarting();
  if (engine.state === "stopped") throw new ApiError(503, "The engine has stopped; the server cannot serve requests.", "server_error", null, "engine_dead", 5);
  if (ctx.numInFlight + numSequences > capacity) {
    throw overloaded(`The server is at capacity (${ctx.numInFlight} sequences in flight, limit ${capacity}); retry later.`, 1);
  }
  const controller = new AbortController();
  ctx.numInFlight += numSequences;
  ctx.inFlightControllers.add(controller);
  let released = false;
  onClientGone(() => controller.abort(clientClosedRequest()));
  return {
    engine,
    tokenizer,
    signal: controller.signal,
    generate: (request) => untilAborted(engine.add(request, controller.signal), controller.signal),
    release() {
      if (released) return;
      released = true;
      // NOTE: whatever the engine still runs for this request now has no reader (a later prompt failed, say): stop it.
      controller.abort();
      ctx.numInFlight -= numSequences;
      ctx.inFlightControllers.delete(controller);
    },
  };
}

/**
 * NOTE: the engine ends an aborted sequence with finish_reason "abort". A client that left
 * reads nothing more; one still reading was cut off by the server, and must not be told its
 * request finished.
 */
async function* untilAborted(outputs: AsyncIterable<EngineOutput>, signal: AbortSignal): AsyncGenerator<EngineOutput> {
  for await (const output of outputs) {
    if (output.finishReason === "abort") throw signal.reason instanceof ApiError ? signal.reason : requestAborted();
    yield output;
  }
}
