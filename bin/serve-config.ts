/**
 * `tokenmill serve --config FILE`: several local models, upstream providers and routes in
 * one YAML (or JSON) file, checked whole before anything loads. Keys are the command line's
 * flag names (kebab-case), so one vocabulary serves both; a local model takes every engine
 * flag, and the engine flags given on the command line are every model's defaults.
 */
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { readCheckpoint } from "../models/checkpoint.ts";
import { FALLBACK_REASONS } from "../server/common/api-error.ts";
import { REASONING_PARSERS, type ReasoningParser } from "../server/openai/reasoning.ts";
import type { LocalModelSpec, ProviderSpec, RouteSpec } from "../server/serve.ts";
import { microUsdPerMtok, type Price } from "../service/prices.ts";
import { POOLINGS, parseBytes, type Pooling } from "../engine/index.ts";
import { MODEL_TASKS, type ModelTask } from "../server/backends/model-backend.ts";
import { BALANCES } from "../server/upstream/replica-pool.ts";
import { ENGINE_FLAGS, engineOptionsFrom, loraModuleOf, modelDirFrom, readEngineFlags, type EngineFlagValues } from "./engine-flags.ts";
import { FlagError } from "./flags.ts";

export interface ServeConfig {
  models: LocalModelSpec[];
  providers: ProviderSpec[];
  routes: RouteSpec[];
  prices: Omit<Price, "effectiveMs">[];
}

const name = z.string().trim().min(1);
const flagScalar = z.union([z.string(), z.number(), z.boolean()]);
/** USD per million tokens, as numbers or strings ("0.15"). */
const usd = z.union([z.number().nonnegative(), z.string()]).transform((value) => microUsdPerMtok(String(value)));
const price = z.strictObject({ input: usd, "cached-input": usd, output: usd });
const size = z.union([z.number().int().positive(), z.string()]).transform((value, ctx) => {
  try {
    return parseBytes(String(value));
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message });
    return z.NEVER;
  }
});

/** Engine flags a model entry may set, besides its own keys (lora-modules is its own key: a list). */
const ENGINE_KEYS = Object.keys(ENGINE_FLAGS).filter((key) => key !== "model" && key !== "lora-modules");

/** A LoRA adapter of a model: NAME=PATH, or {name, path, price}. */
const loraModule = z.union([z.string(), z.strictObject({ name, path: z.string().min(1), price: price.optional() })]).transform((value, ctx) => {
  if (typeof value !== "string") return value;
  try {
    return loraModuleOf(value);
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message.replace(/^--lora-modules:? ?/, "") });
    return z.NEVER;
  }
});

const localModel = z.object({
  name,
  model: z.string().min(1).optional(),
  aliases: z.array(name).default([]),
  "kv-cache-share": z.number().gt(0).max(1).optional(),
  "max-queued-requests": z.number().int().nonnegative().optional(),
  "tool-call-parser": z.enum(["auto", "hermes", "none"]).optional(),
  "reasoning-parser": z.enum([...REASONING_PARSERS, "none"]).optional(),
  pooling: z.enum(POOLINGS).optional(),
  task: z.enum(MODEL_TASKS).optional(),
  price: price.optional(),
  "lora-modules": z.array(loraModule).optional(),
}).catchall(flagScalar).superRefine((entry, ctx) => {
  const own = new Set(["name", "model", "aliases", "kv-cache-share", "max-queued-requests", "tool-call-parser", "reasoning-parser", "pooling", "task", "price", "lora-modules", ...ENGINE_KEYS]);
  for (const key of Object.keys(entry)) {
    if (!own.has(key)) ctx.addIssue({ code: "custom", path: [key], message: `unknown key; a model takes name, model, aliases, kv-cache-share, max-queued-requests, tool-call-parser, reasoning-parser, pooling, task, price, lora-modules and the engine flags (${ENGINE_KEYS.join(", ")})` });
  }
  if (entry["kv-cache-share"] !== undefined && entry["kv-cache-memory"] !== undefined) {
    ctx.addIssue({ code: "custom", path: ["kv-cache-share"], message: "give kv-cache-share or kv-cache-memory, not both" });
  }
});

const upstreamModel = z.strictObject({
  name,
  upstream: name.optional(),
  aliases: z.array(name).default([]),
  "max-output-tokens": z.number().int().positive().optional(),
  price: price.optional(),
});

const httpUrl = z.string().regex(/^https?:\/\/.+/, "an http:// or https:// URL");
const provider = z.strictObject({
  name,
  "base-url": httpUrl.optional(),
  /** Several base URLs serving the same models, in place of base-url. */
  replicas: z.array(httpUrl).min(1).optional(),
  balance: z.enum(BALANCES).default("round-robin"),
  "health-interval": z.number().positive().default(5),
  "load-factor": z.number().min(1).default(1.25),
  "load-slack": z.number().int().nonnegative().default(4),
  /** balance: prefix: the replicas' tokenizer (a checkpoint folder; default: the default model's), and the blocks of a request's key. */
  tokenizer: z.string().min(1).optional(),
  "prefix-blocks": z.number().int().positive().default(4),
  "block-size": z.number().int().positive().default(16),
  "api-key-env": z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "an environment variable's name").optional(),
  timeout: z.number().positive().default(60),
  "max-concurrency": z.number().int().positive().default(64),
  "max-retries": z.number().int().nonnegative().max(10).default(2),
  "breaker-failures": z.number().int().positive().default(5),
  "breaker-cooldown": z.number().positive().default(30),
  models: z.array(upstreamModel).min(1),
}).superRefine((p, ctx) => {
  if ((p["base-url"] === undefined) === (p.replicas === undefined)) ctx.addIssue({ code: "custom", path: ["base-url"], message: "give base-url or replicas (a list of base URLs), one of them" });
  if (new Set(p.replicas ?? []).size !== (p.replicas ?? []).length) ctx.addIssue({ code: "custom", path: ["replicas"], message: "a replica is listed twice" });
  if (p.replicas === undefined && p.balance !== "round-robin") ctx.addIssue({ code: "custom", path: ["balance"], message: "balance spreads requests over replicas: give replicas" });
  if (p.tokenizer !== undefined && p.balance !== "prefix") ctx.addIssue({ code: "custom", path: ["tokenizer"], message: "tokenizer is for balance: prefix" });
});

const route = z.strictObject({
  name,
  targets: z.array(name).min(1),
  "fallback-on": z.array(z.enum(FALLBACK_REASONS)).optional(),
  burst: z.strictObject({
    to: name,
    "waiting-over": z.number().int().nonnegative().optional(),
    "ttft-over": z.number().positive().optional(),
  }).refine((burst) => burst["waiting-over"] !== undefined || burst["ttft-over"] !== undefined, "a burst rule needs waiting-over or ttft-over").optional(),
});

const configFile = z.strictObject({
  "kv-cache-memory": size.optional(),
  models: z.array(localModel).default([]),
  providers: z.array(provider).default([]),
  routes: z.array(route).default([]),
});

type ConfigFile = z.infer<typeof configFile>;

/** The command line's per-model server flags, every local model's defaults. */
export interface ModelDefaults {
  maxQueuedRequests: number;
  toolCallParser: "auto" | "hermes" | "none";
  reasoningParser: ReasoningParser | "none";
  pooling: Pooling;
  task: ModelTask;
}

const MODEL_DEFAULTS: ModelDefaults = { maxQueuedRequests: 1024, toolCallParser: "auto", reasoningParser: "none", pooling: "last", task: "both" };

/** Reads and checks the file; `cli` are the command line's engine flags, and `defaults` its other per-model flags (every model's defaults). */
export function readServeConfig(path: string, cli: EngineFlagValues, env: NodeJS.ProcessEnv = process.env, defaults: ModelDefaults = MODEL_DEFAULTS): ServeConfig {
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(path, "utf8"));
  } catch (err) {
    throw new FlagError(`--config ${path}: ${(err as Error).message}`);
  }
  const parsed = configFile.safeParse(raw ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new FlagError(`--config ${path}: ${issue.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(/^\./, "") || "(top)"}: ${issue.message}`);
  }
  const file = parsed.data;
  const fail = (message: string) => new FlagError(`--config ${path}: ${message}`);
  checkNames(file, fail);
  const kvTotal = file["kv-cache-memory"] ?? parseBytes(String(cli["kv-cache-memory"] ?? "2GiB"));
  const fixed = file.models.reduce((sum, m) => sum + (m["kv-cache-share"] ?? 0), 0);
  if (fixed > 1) throw fail(`the models' kv-cache-share add up to ${fixed}, more than 1`);
  const unshared = file.models.filter((m) => m["kv-cache-share"] === undefined && m["kv-cache-memory"] === undefined).length;
  const threadsEach = Math.max(1, Math.floor(availableParallelism() / Math.max(1, file.models.length)));
  const models = file.models.map((entry, i): LocalModelSpec => {
    const values: Record<string, string | boolean | string[] | undefined> = { ...cli };
    for (const key of ENGINE_KEYS) {
      const value = entry[key];
      if (value !== undefined) values[key] = typeof value === "boolean" ? value : String(value);
    }
    const share = entry["kv-cache-share"] ?? (entry["kv-cache-memory"] === undefined ? (1 - fixed) / Math.max(1, unshared) : undefined);
    if (share !== undefined) values["kv-cache-memory"] = String(Math.floor(kvTotal * share));
    if (values.threads === undefined) values.threads = String(threadsEach);
    // NOTE: a model's own adapters replace the command line's.
    if (entry["lora-modules"] !== undefined) values["lora-modules"] = entry["lora-modules"].map(({ name: adapter, path: dir }) => JSON.stringify({ name: adapter, path: dir }));
    let flags;
    try {
      flags = readEngineFlags(values as EngineFlagValues);
    } catch (err) {
      throw fail(`models[${i}] (${entry.name}): ${(err as Error).message.replace(/^--/, "")}`);
    }
    const checkpoint = readCheckpoint(modelDirFrom({ model: entry.model }));
    return {
      name: entry.name, aliases: entry.aliases, engineOptions: engineOptionsFrom(flags, checkpoint), defaults: checkpoint.generationDefaults,
      maxQueuedRequests: entry["max-queued-requests"] ?? defaults.maxQueuedRequests,
      toolCallParser: toolCallParserFor(entry["tool-call-parser"] ?? defaults.toolCallParser, checkpoint.chatTemplate),
      reasoningParser: reasoningParserOf(entry["reasoning-parser"] ?? defaults.reasoningParser),
      pooling: entry.pooling ?? defaults.pooling, task: entry.task ?? defaults.task,
    };
  });
  const providers = file.providers.map((p): ProviderSpec => {
    const keyVar = p["api-key-env"];
    const apiKey = keyVar === undefined ? null : env[keyVar];
    if (apiKey === undefined || apiKey === "") throw fail(`provider ${p.name}: its api-key-env ${keyVar} is not set`);
    return {
      name: p.name, baseUrl: p["base-url"], replicas: p.replicas, balance: p.balance, healthIntervalMs: p["health-interval"] * 1000, loadFactor: p["load-factor"], loadSlack: p["load-slack"],
      prefix: p.balance === "prefix" ? { tokenizerDir: modelDirFrom({ model: p.tokenizer }), numBlocks: p["prefix-blocks"], blockSize: p["block-size"] } : undefined,
      apiKey, timeoutMs: p.timeout * 1000, maxConcurrency: p["max-concurrency"],
      retry: { maxRetries: p["max-retries"], baseDelayMs: 250, maxDelayMs: 4000, maxRetryAfterMs: 10_000 },
      breaker: { failureThreshold: p["breaker-failures"], cooldownMs: p["breaker-cooldown"] * 1000 },
      models: p.models.map((m) => ({ name: m.name, upstreamModel: m.upstream, maxOutputTokens: m["max-output-tokens"], aliases: m.aliases })),
    };
  });
  const routes = file.routes.map((r): RouteSpec => ({
    name: r.name, targets: r.targets, fallbackOn: r["fallback-on"],
    burst: r.burst ? { to: r.burst.to, waitingOver: r.burst["waiting-over"], ttftOverMs: r.burst["ttft-over"] === undefined ? undefined : r.burst["ttft-over"] * 1000 } : undefined,
  }));
  const adapters = file.models.flatMap((m) => m["lora-modules"] ?? []).map((a): { name: string; price?: z.infer<typeof price> } => ({ name: a.name, price: (a as { price?: z.infer<typeof price> }).price }));
  const priced = [...file.models, ...file.providers.flatMap((p) => p.models), ...adapters].flatMap((m) => (m.price ? [{
    model: m.name, inputPerMtok: m.price.input, cachedInputPerMtok: m.price["cached-input"], outputPerMtok: m.price.output,
  }] : []));
  return { models, providers, routes, prices: priced };
}

/** Every served name once; routes name models (local or upstream); a burst target is a model. */
function checkNames(file: ConfigFile, fail: (message: string) => FlagError): void {
  const models = new Set<string>();
  const seen = new Set<string>();
  const claim = (served: string, what: string) => {
    if (seen.has(served)) throw fail(`the name ${served} (${what}) is served twice`);
    seen.add(served);
  };
  for (const m of [...file.models, ...file.providers.flatMap((p) => p.models)]) {
    claim(m.name, "a model");
    models.add(m.name);
  }
  for (const m of [...file.models, ...file.providers.flatMap((p) => p.models)]) for (const alias of m.aliases) claim(alias, `an alias of ${m.name}`);
  for (const m of file.models) {
    for (const adapter of m["lora-modules"] ?? []) {
      claim(adapter.name, `a LoRA adapter of ${m.name}`);
      models.add(adapter.name);
    }
  }
  const providers = new Set<string>();
  for (const p of file.providers) {
    if (providers.has(p.name)) throw fail(`the provider ${p.name} is declared twice`);
    providers.add(p.name);
  }
  for (const r of file.routes) {
    claim(r.name, "a route");
    for (const target of r.targets) if (!models.has(target)) throw fail(`route ${r.name}: its target ${target} is not a model of the config`);
    if (r.burst && !models.has(r.burst.to)) throw fail(`route ${r.name}: its burst target ${r.burst.to} is not a model of the config`);
    if (r.burst && file.models.every((m) => m.name !== r.targets[0])) throw fail(`route ${r.name}: a burst rule needs a local model as the first target`);
  }
  if (seen.size === 0) throw fail("it serves nothing: give at least one model");
}

export const reasoningParserOf = (choice: ReasoningParser | "none"): ReasoningParser | undefined => (choice === "none" ? undefined : choice);

export function toolCallParserFor(choice: "auto" | "hermes" | "none", chatTemplate: string | null): "hermes" | undefined {
  if (choice === "hermes") return "hermes";
  if (choice === "none") return undefined;
  return chatTemplate?.includes("<tool_call>") ? "hermes" : undefined;
}
