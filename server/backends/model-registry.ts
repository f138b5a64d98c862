/**
 * The models the server serves, by the name clients send as `model`. Every route resolves
 * `body.model` here, /v1/models lists it, and nothing else assumes there is only one.
 */
import { modelNotFound } from "../http/api-error.ts";
import type { ModelBackend } from "./model-backend.ts";

export class ModelRegistry {
  private readonly backends = new Map<string, ModelBackend>();

  register(backend: ModelBackend): void {
    if (this.backends.has(backend.id)) throw new Error(`the model name ${backend.id} is served twice`);
    this.backends.set(backend.id, backend);
  }

  /** The backend serving `model`; a 404 model_not_found for any other name. */
  resolve(model: string): ModelBackend {
    const backend = this.backends.get(model);
    if (!backend) throw modelNotFound(model);
    return backend;
  }

  list(): ModelBackend[] {
    return [...this.backends.values()];
  }
}
