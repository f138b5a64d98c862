/**
 * The names the server serves, as clients send them as `model`: each model (local or
 * upstream), its aliases, and each route (an ordered list of models with fallback and burst
 * rules). Every route resolves `body.model` here, /v1/models lists it, and nothing else
 * assumes there is only one model.
 */
import { modelInUse, modelNotFound } from "../common/api-error.ts";
import type { LocalBackend, ModelBackend } from "./model-backend.ts";
import { ServingPlan, type PlanRules } from "./serving-plan.ts";

export class ModelRegistry {
  private readonly backends = new Map<string, ModelBackend>();
  private readonly routes = new Map<string, ServingPlan>();

  /** Serves a model under its own name, as a route of one. */
  register(backend: ModelBackend): void {
    this.claim(backend.id);
    this.backends.set(backend.id, backend);
    this.routes.set(backend.id, new ServingPlan(backend.id, [backend]));
  }

  /**
   * Stops serving a model's name (a LoRA adapter unloaded at run time). Refused with a 409
   * while a route or alias still names it.
   */
  unregister(name: string): void {
    const backend = this.backend(name);
    for (const [served, route] of this.routes) {
      if (served !== name && route.targets.includes(backend)) throw modelInUse(name, served);
    }
    this.backends.delete(name);
    this.routes.delete(name);
  }

  /** Serves `name` as another name of a model or route already registered. */
  alias(name: string, target: string): void {
    const route = this.routes.get(target);
    if (!route) throw new Error(`the alias ${name} names ${target}, which is not served`);
    this.claim(name);
    this.routes.set(name, new ServingPlan(name, route.targets, route.rules));
  }

  /** Serves `name` by its targets, in order, under the rules. */
  route(name: string, targets: string[], rules: Partial<PlanRules> = {}): void {
    const backends = targets.map((target) => {
      const backend = this.backends.get(target);
      if (!backend) throw new Error(`the route ${name} names ${target}, which is not a served model`);
      return backend;
    });
    if (rules.burst && this.backends.get(rules.burst.to.id) !== rules.burst.to) throw new Error(`the route ${name} bursts to ${rules.burst.to.id}, which is not a served model`);
    this.claim(name);
    this.routes.set(name, new ServingPlan(name, backends, rules));
  }

  /** The route serving `model`; a 404 model_not_found for any other name. */
  resolve(model: string): ServingPlan {
    const route = this.routes.get(model);
    if (!route) throw modelNotFound(model);
    return route;
  }

  /** Whether `name` is served (a model, alias or route). */
  has(name: string): boolean {
    return this.routes.has(name);
  }

  /** The model registered under `name` (tests and the tokenizer routes). */
  backend(name: string): ModelBackend {
    const backend = this.backends.get(name);
    if (!backend) throw modelNotFound(name);
    return backend;
  }

  /** The local model registered under `name`. */
  local(name: string): LocalBackend {
    const backend = this.backend(name);
    if (backend.kind !== "local") throw new Error(`${name} is not a local model`);
    return backend;
  }

  /** Every model, once each. */
  list(): ModelBackend[] {
    return [...this.backends.values()];
  }

  /** Every served name: models, aliases and routes. */
  names(): ServingPlan[] {
    return [...this.routes.values()];
  }

  private claim(name: string): void {
    if (this.routes.has(name)) throw new Error(`the model name ${name} is served twice`);
  }
}
