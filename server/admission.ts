/**
 * Admission: a request may start only while the engine is ready and the waiting queue
 * has room. Returns a release function, called once, whatever way the request ends.
 */
import { ApiError, overloaded } from "./api-error.ts";
import type { PromptTokenizer, ServingEngine } from "./engine-api.ts";
import type { ServerContext } from "./server-context.ts";

export interface Admitted {
  engine: ServingEngine;
  tokenizer: PromptTokenizer;
  /** Fires when the client goes away or the server gives up on the request. */
  signal: AbortSignal;
  release(): void;
}

export function admit(ctx: ServerContext, numSequences: number, onClientGone: (abort: () => void) => void): Admitted {
  const { engine, tokenizer } = ctx;
  if (!engine || !tokenizer) throw overloaded("The model is still loading; try again shortly.", 5);
  if (!engine.isAlive) throw new ApiError(503, "The engine has stopped; the server cannot serve requests.", "server_error", null, "engine_dead", 5);
  const capacity = ctx.limits.maxNumSeqs + ctx.limits.maxQueuedRequests;
  if (ctx.numInFlight + numSequences > capacity) {
    throw overloaded(`The server is at capacity (${ctx.numInFlight} sequences in flight, limit ${capacity}); retry later.`, 1);
  }
  const controller = new AbortController();
  ctx.numInFlight += numSequences;
  ctx.inFlightControllers.add(controller);
  let released = false;
  onClientGone(() => controller.abort());
  return {
    engine,
    tokenizer,
    signal: controller.signal,
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
