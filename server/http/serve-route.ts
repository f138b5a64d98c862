/**
 * Serves one request along its route: each target in the route's plan in turn, until one
 * serves it. A target's failure moves the request on only when the route's rules allow that
 * failure, nothing of the response has reached the client, and the client is still there;
 * otherwise the error goes to the client as it is (the last target's, when every one failed).
 */
import type { LocalBackend, UpstreamBackend } from "../backends/model-backend.ts";
import { fallbackReasonOf, type Route } from "../backends/route.ts";
import type { ServerContext } from "../server-context.ts";
import type { Admitted, RequestScope, UpstreamAdmitted } from "./admission.ts";

export interface TargetHandlers<T> {
  local(admitted: Admitted, backend: LocalBackend): Promise<T>;
  upstream(admitted: UpstreamAdmitted, backend: UpstreamBackend): Promise<T>;
}

export async function serveRoute<T>(ctx: ServerContext, route: Route, scope: RequestScope, handlers: TargetHandlers<T>): Promise<T> {
  const { targets, burst } = route.plan();
  if (burst) ctx.metrics.bursts.inc({ route: route.name, to: targets[0].id });
  for (let i = 0; ; i++) {
    const target = targets[i];
    try {
      if (target.kind === "local") return await handlers.local(await scope.local(target), target);
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
