/**
 * A serving plan: a served name and how it is served (what the config file calls a route; the
 * code says "plan", so that "route" means an HTTP route): its targets in order, the failures
 * that move a request on to the next target (fallback), and when a request skips a busy local
 * model for another target (burst). A request moves on only while nothing of its response has
 * reached the client.
 */
import { BackendUnavailable, FALLBACK_REASONS, type FallbackReason } from "../common/api-error.ts";
import { EngineError } from "../common/engine-api.ts";
import type { ModelBackend } from "./model-backend.ts";

export interface BurstRule {
  /** Where requests overflow to. */
  to: ModelBackend;
  /** Burst while the route's first (local) model has more than this many sequences waiting. */
  waitingOver?: number;
  /** Or while its estimated time to first token is over this. */
  ttftOverMs?: number;
}

export interface PlanRules {
  /** The failures that move a request on to the next target (default: all of them). */
  fallbackOn: ReadonlySet<FallbackReason>;
  burst: BurstRule | null;
}

export class ServingPlan {
  readonly rules: PlanRules;

  constructor(readonly name: string, readonly targets: readonly ModelBackend[], rules: Partial<PlanRules> = {}) {
    if (targets.length === 0) throw new Error(`the route ${name} has no targets`);
    this.rules = { fallbackOn: rules.fallbackOn ?? new Set(FALLBACK_REASONS), burst: rules.burst ?? null };
  }

  /** Whether a request bound to local models (data residency) can be served here at all. */
  get hasLocal(): boolean {
    return this.targets.some((target) => target.kind === "local");
  }

  /**
   * The targets to try for a request arriving now, in order. While the burst rule holds, its
   * target goes first; it is always tried last otherwise, so that nothing either could serve is refused.
   * A request bound to local models (`localOnly`) gets the local targets alone, and never bursts.
   */
  plan(localOnly = false): { targets: ModelBackend[]; burst: boolean } {
    if (localOnly) return { targets: this.targets.filter((target) => target.kind === "local"), burst: false };
    const { burst } = this.rules;
    if (!burst) return { targets: [...this.targets], burst: false };
    const rest = this.targets.filter((target) => target !== burst.to);
    return this.bursting() ? { targets: [burst.to, ...rest], burst: true } : { targets: [...rest, burst.to], burst: false };
  }

  private bursting(): boolean {
    const { burst } = this.rules;
    const first = this.targets[0];
    if (!burst || first.kind !== "local") return false;
    return (burst.waitingOver !== undefined && first.numWaiting > burst.waitingOver)
      || (burst.ttftOverMs !== undefined && first.estimatedTtftMs > burst.ttftOverMs);
  }
}

/** Why a failure may be made good by another target; null: it may not (the request's own fault, a key's limit). */
export function fallbackReasonOf(err: unknown): FallbackReason | null {
  if (err instanceof BackendUnavailable) return err.reason;
  if (err instanceof EngineError) {
    if (err.code === "ENGINE_RESTARTING" || err.code === "ENGINE_DEAD" || err.code === "ENGINE_FAILED") return "engine_down";
  }
  return null;
}
