/**
 * A Hugging Face checkpoint folder: its config, tokenizer files, chat template and
 * generation defaults. Weights are opened separately, by the graph builder.
 */
import { existsSync, readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { readModelConfig, tokenIdList, type ModelConfig } from "./config.ts";
import { ModelError } from "./model-error.ts";

export interface GenerationDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
}

export interface Checkpoint {
  dir: string;
  /** The folder name: the model id unless --served-model-name says otherwise. */
  name: string;
  config: ModelConfig;
  tokenizerJson: string;
  tokenizerConfig: Record<string, unknown>;
  chatTemplate: string | null;
  /** EOS ids from generation_config.json and config.json (the tokenizer's eos token is added by the tokenizer). */
  eosTokenIds: number[];
  generationDefaults: GenerationDefaults;
}

export function readCheckpoint(dir: string): Checkpoint {
  const abs = resolve(dir);
  if (!existsSync(abs)) throw new ModelError("MISSING_FILE", `model folder ${abs} does not exist`);
  const config = readModelConfig(abs);
  const tokenizerJson = join(abs, "tokenizer.json");
  if (!existsSync(tokenizerJson)) throw new ModelError("MISSING_FILE", `${abs} has no tokenizer.json`);
  const tokenizerConfig = readJson(join(abs, "tokenizer_config.json")) ?? {};
  const generation = readJson(join(abs, "generation_config.json")) ?? {};
  const eosTokenIds = [...new Set([...tokenIdList(generation.eos_token_id), ...config.eosTokenIds])];
  return {
    dir: abs,
    name: basename(abs),
    config,
    tokenizerJson,
    tokenizerConfig,
    chatTemplate: chatTemplateOf(abs, tokenizerConfig),
    eosTokenIds,
    generationDefaults: {
      temperature: numberOrUndefined(generation.temperature),
      topP: numberOrUndefined(generation.top_p),
      topK: numberOrUndefined(generation.top_k),
      minP: numberOrUndefined(generation.min_p),
      repetitionPenalty: numberOrUndefined(generation.repetition_penalty),
    },
  };
}

function chatTemplateOf(dir: string, tokenizerConfig: Record<string, unknown>): string | null {
  const jinjaFile = join(dir, "chat_template.jinja");
  if (existsSync(jinjaFile)) return readFileSync(jinjaFile, "utf8");
  const template = tokenizerConfig.chat_template;
  if (typeof template === "string") return template;
  if (Array.isArray(template)) {
    const named = template.find((t) => (t as { name?: string }).name === "default") ?? template[0];
    return typeof named?.template === "string" ? named.template : null;
  }
  return null;
}

function readJson(path: string): Record<string, unknown> | null {
  if (!existsSync(path)) return null;
  try {
    return JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch (err) {
    throw new ModelError("BAD_CONFIG", `cannot parse ${path}: ${(err as Error).message}`);
  }
}

function numberOrUndefined(value: unknown): number | undefined {
  return typeof value === "number" ? value : undefined;
}
