/**
 * Serves one request along its route: each target in the route's plan in turn, until one
 * serves it. A target's failure moves the request on only when the route's rules allow that
 * failure, nothing of the response has reached the client, and the client is still there;
 * otherwise the error goes to the client as it is (the last target's, when every one failed).
 */
import type { FastifyReply, FastifyRequest } from "fastify";
import type { UpstreamBackend } from "../backends/model-backend.ts";
import { fallbackReasonOf, type Route } from "../backends/route.ts";
import type { ServerContext } from "../server-context.ts";
import { openRequest, type AdmitOptions, type Admitted, type RequestScope, type UpstreamAdmitted } from "./request-scope.ts";
import { checkModelAccess } from "./auth.ts";
import { onClientGone, setRawHeaders } from "./http-helpers.ts";

export interface TargetHandlers<T> {
  local(admitted: Admitted): Promise<T>;
  upstream(admitted: UpstreamAdmitted, backend: UpstreamBackend): Promise<T>;
}

export async function serveRoute<T>(ctx: ServerContext, route: Route, scope: RequestScope, handlers: TargetHandlers<T>): Promise<T> {
  const { targets, burst } = route.plan();
  if (burst) ctx.metrics.bursts.inc({ route: route.name, to: targets[0].id });
  for (let i = 0; ; i++) {
    const target = targets[i];
    try {
      if (target.kind === "local") return await handlers.local(await scope.local(target));
      return await handlers.upstream(await scope.upstream(target), target);
    } catch (err) {
      const reason = fallbackReasonOf(err);
      const next = targets[i + 1];
      if (!next || reason === null || !route.rules.fallbackOn.has(reason) || scope.isCommitted || scope.signal.aborted) throw err;
      ctx.metrics.fallbacks.inc({ route: route.name, from: target.id, to: next.id, reason });
      await scope.abandon();
    }
  }
}

/** What a route's request runs at once and asks of a local model (see AdmitOptions); one sequence of generation by default. */
export type RouteRequest = { model: string; endpoint: string } & Partial<Pick<AdmitOptions, "numSequences" | "param" | "task">>;

/**
 * One request to a served name: the caller's access to `model` is checked, the request is
 * admitted and settled under its scope (once, however it ends), and the route's targets serve
 * it by their handlers in turn.
 */
export async function serveOnRoute<T>(ctx: ServerContext, request: FastifyRequest, reply: FastifyReply, what: RouteRequest, handlers: TargetHandlers<T>): Promise<T> {
  const route = ctx.models.resolve(what.model);
  checkModelAccess(request.caller, route.name);
  const scope = openRequest(ctx, {
    requestId: request.id, caller: request.caller, setHeaders: setRawHeaders(reply), priority: request.caller.key?.priority, endpoint: what.endpoint,
    numSequences: what.numSequences ?? 1, param: what.param, task: what.task, onClientGone: (abort) => onClientGone(reply, abort), route: route.name,
  });
  try {
    return await serveRoute(ctx, route, scope, handlers);
  } catch (err) {
    scope.fail(err);
    // NOTE: an error's response, too, goes out only once its ledger row is committed.
    await scope.settle();
    throw err;
  } finally {
    scope.release();
  }
}
