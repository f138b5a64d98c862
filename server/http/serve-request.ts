/**
 * The one path every endpoint serves a request by (serveRequest): the served name resolved to
 * its serving plan, the caller's access checked, the request admitted and settled under its
 * scope, once, however it ends; and tryTargets, each target of the plan in turn, until one serves
 * it. A target's failure moves the request on only when the plan's rules allow that failure,
 * nothing of the response has reached the client, and the client is still there; otherwise the
 * error goes to the client as it is (the last target's, when every one failed).
 */
import type { FastifyReply, FastifyRequest } from "fastify";
import type { UpstreamBackend } from "../backends/model-backend.ts";
import { fallbackReasonOf, type ServingPlan } from "../backends/serving-plan.ts";
import type { ServerContext } from "./server-context.ts";
import type { Admitted, UpstreamAdmitted } from "../backends/admitted.ts";
import { openRequest, type AdmitOptions, type RequestScope } from "./request-scope.ts";
import { checkModelAccess } from "./auth.ts";
import { isLocalOnly, priorityOf } from "../../service/keys.ts";
import { dataResidencyViolation, localTargetsDown, toApiError } from "../common/api-error.ts";
import { onClientGone, setRawHeaders } from "./http-helpers.ts";

export interface TargetHandlers<T> {
  local(admitted: Admitted): Promise<T>;
  upstream(admitted: UpstreamAdmitted, backend: UpstreamBackend): Promise<T>;
}

export async function tryTargets<T>(ctx: ServerContext, plan: ServingPlan, scope: RequestScope, handlers: TargetHandlers<T>): Promise<T> {
  const { targets, burst } = plan.plan(scope.localOnly);
  if (burst) ctx.metrics.bursts.inc({ route: plan.name, to: targets[0].id });
  for (let i = 0; ; i++) {
    const target = targets[i];
    try {
      if (target.kind === "local") return await handlers.local(await scope.local(target));
      return await handlers.upstream(await scope.upstream(target), target);
    } catch (err) {
      const reason = fallbackReasonOf(err);
      const next = targets[i + 1];
      if (!next || reason === null || !plan.rules.fallbackOn.has(reason) || scope.isCommitted || scope.signal.aborted) {
        // NOTE: a request bound to local models whose local targets are all down says so, where others would have gone upstream.
        if (!next && reason !== null && scope.localOnly && targets.length < plan.targets.length) throw localTargetsDown(plan.name, toApiError(err));
        throw err;
      }
      ctx.metrics.fallbacks.inc({ route: plan.name, from: target.id, to: next.id, reason });
      await scope.abandon();
    }
  }
}

/** What an endpoint's request runs at once and asks of a local model (see AdmitOptions); one sequence of generation by default. */
export type RouteRequest = { model: string; endpoint: string } & Partial<Pick<AdmitOptions, "numSequences" | "param" | "task">>;

/**
 * One request to a served name: the caller's access to `model` is checked, the request is
 * admitted and settled under its scope (once, however it ends), and the plan's targets serve
 * it by their handlers in turn.
 */
export async function serveRequest<T>(ctx: ServerContext, request: FastifyRequest, reply: FastifyReply, what: RouteRequest, handlers: TargetHandlers<T>): Promise<T> {
  const plan = ctx.models.resolve(what.model);
  checkModelAccess(request.caller, plan.name);
  const localOnly = request.caller.key !== null && isLocalOnly(request.caller.key);
  if (localOnly && !plan.hasLocal) throw dataResidencyViolation(plan.name);
  // NOTE: a batch line runs at the batch tier (its price and its scheduling), with an id of its own so a re-run replaces its ledger row.
  const { batchLine } = request.caller;
  const scope = openRequest(ctx, {
    requestId: request.id, caller: request.caller, setHeaders: setRawHeaders(reply), endpoint: what.endpoint,
    priority: batchLine ? "batch" : request.caller.key ? priorityOf(request.caller.key) : undefined,
    ...(batchLine ? { tier: "batch" as const, admissionId: `batch_${batchLine.batchId}_${batchLine.line}` } : {}),
    localOnly,
    numSequences: what.numSequences ?? 1, param: what.param, task: what.task, onClientGone: (abort) => onClientGone(reply, abort), route: plan.name,
  });
  try {
    return await tryTargets(ctx, plan, scope, handlers);
  } catch (err) {
    scope.fail(err);
    // NOTE: an error's response, too, goes out only once its ledger row is committed.
    await scope.settle();
    throw err;
  } finally {
    scope.release();
  }
}
