/**
 * LoRA adapters as served names: each adapter a local model engine serves (--lora-modules,
 * a config file's lora-modules, or POST /v1/admin/adapters at run time) is a model of its own
 * in the registry, listed with its `parent`, allowed per key, priced on its own (at its base's
 * price while it has none: PriceBook.priceLike) and metered in the ledger under its name. Its
 * requests run on the base model's engine, under the adapter (LocalBackend.adapter).
 */
import type { AdapterInfo } from "../common/engine-api.ts";
import { adapterBaseLoading, adapterNotFound, invalidRequest, modelNotFound, toApiError } from "../common/api-error.ts";
import { LocalBackend } from "./model-backend.ts";
import type { ModelRegistry } from "./model-registry.ts";

/** Who bills a model at another's price while it has none of its own (the service's PriceBook). */
export interface PriceParents {
  priceLike(model: string, parent: string | null): void;
}

/** An adapter as the admin API shows it. */
export interface AdapterCard {
  id: string;
  object: "lora_adapter";
  parent: string;
  path: string;
  rank: number;
  target_modules: string[];
  base_model_name_or_path: string | null;
}

export class LoraAdapters {
  constructor(private readonly models: ModelRegistry, private readonly prices: PriceParents | null = null) {}

  /** Registers an adapter the base's engine loaded (at start: its --lora-modules). */
  serve(base: LocalBackend, name: string): LocalBackend {
    const adapter = LocalBackend.adapterOf(base, name);
    this.models.register(adapter);
    this.prices?.priceLike(name, base.id);
    return adapter;
  }

  /**
   * Loads the PEFT adapter at `path` into `baseName`'s engine (default: the one local model
   * with LoRA slots) and serves it as `name`. A 400 names why an adapter can't be served (its
   * shapes are another base's, DoRA, its rank, a name in use); a 503 while the engine loads.
   */
  async load(name: string, path: string, baseName?: string): Promise<AdapterCard> {
    if (this.models.has(name)) throw invalidRequest(`The name \`${name}\` is already served; unload it first, or pick another.`, "lora_name", "lora_name_in_use");
    const base = this.baseFor(baseName);
    const engine = base.engine;
    if (!engine?.loadAdapter) throw adapterBaseLoading(`The model \`${base.id}\` is`);
    let info: AdapterInfo;
    try {
      info = await engine.loadAdapter(name, path);
    } catch (err) {
      throw toApiError(err);
    }
    // NOTE: a name taken while the engine read the adapter (a model can't be; another load of the same name fails in the engine).
    this.serve(base, name);
    return cardOf(base.id, info);
  }

  /** Stops serving an adapter: new requests get 404; those admitted finish under it. */
  async unload(name: string): Promise<void> {
    const backend = this.models.has(name) ? this.models.backend(name) : null;
    if (!backend) throw adapterNotFound(name);
    if (backend.kind !== "local" || !backend.base) throw invalidRequest(`\`${name}\` is a model, not a LoRA adapter; only adapters are unloaded.`, "lora_name");
    this.models.unregister(name);
    this.prices?.priceLike(name, null);
    await backend.base.engine?.unloadAdapter?.(name);
  }

  /** Every adapter served, by base model. */
  list(): AdapterCard[] {
    return this.models.list().flatMap((backend) => {
      if (backend.kind !== "local" || backend.base !== null) return [];
      const served = new Set(this.models.list().filter((b) => b.kind === "local" && b.base === backend).map((b) => b.id));
      return (backend.engine?.adapters ?? []).filter((info) => served.has(info.name)).map((info) => cardOf(backend.id, info));
    });
  }

  private baseFor(baseName: string | undefined): LocalBackend {
    if (baseName !== undefined) {
      if (!this.models.has(baseName)) throw modelNotFound(baseName);
      const base = this.models.backend(baseName);
      if (base.kind !== "local" || base.base) throw invalidRequest(`\`${baseName}\` is not a local model; an adapter's base_model is a model this server runs.`, "base_model");
      if (base.engine && !base.engine.info.lora) throw invalidRequest(`The model \`${baseName}\` was started without LoRA slots; restart it with --enable-lora (and --max-loras, --max-lora-rank).`, "base_model");
      return base;
    }
    const locals = this.models.list().filter((b): b is LocalBackend => b.kind === "local" && b.base === null);
    const withSlots = locals.filter((b) => b.engine?.info.lora);
    if (withSlots.length === 1) return withSlots[0];
    if (withSlots.length === 0) {
      if (locals.some((b) => !b.engine)) throw adapterBaseLoading("The models are");
      throw invalidRequest("No model of this server has LoRA slots; start it with --enable-lora (and --max-loras, --max-lora-rank).", "base_model");
    }
    throw invalidRequest(`Several models have LoRA slots (${withSlots.map((b) => b.id).join(", ")}); say which with base_model.`, "base_model");
  }
}

function cardOf(parent: string, info: AdapterInfo): AdapterCard {
  return { id: info.name, object: "lora_adapter", parent, path: info.path, rank: info.rank, target_modules: info.targetModules, base_model_name_or_path: info.baseModel };
}
