/**
 * Compile times of the structured-output test grammars, cold and cached, on the default
 * model's vocabulary: `node --import tsx bench/grammar-compile-times.ts` (the README's figures).
 */
import { readFileSync } from "node:fs";
import { GrammarCore } from "../engine/grammar/grammar-core.ts";
import type { GrammarSpec } from "../engine/common/grammar-spec.ts";
import { readCheckpoint } from "../models/checkpoint.ts";
import { ensureDefaultModel } from "../models/synthetic/default-model.ts";

const WEATHER = { type: "object", properties: { city: { type: "string", maxLength: 10 }, unit: { enum: ["c", "f"] } }, required: ["city", "unit"], additionalProperties: false };
const TIME = { type: "object", properties: { zone: { type: "string", maxLength: 6 } }, required: ["zone"], additionalProperties: false };
const SPECS: Record<string, GrammarSpec> = {
  "the nested test schema (bench/schemas/pet.json)": { type: "json_schema", schema: JSON.parse(readFileSync(new URL("schemas/pet.json", import.meta.url), "utf8")) },
  json_object: { type: "json_object" },
  "a regex": { type: "regex", pattern: "[A-Z][a-z]{2,5}-[0-9]{3}" },
  "a choice of 3": { type: "choice", choices: ["red", "green", "blue sky"] },
  "a named tool": { type: "tool_calls", tools: [{ name: "get_weather", parameters: WEATHER }], parallel: false },
  "required, two tools": { type: "tool_calls", tools: [{ name: "get_weather", parameters: WEATHER }, { name: "get_time", parameters: TIME }], parallel: false },
};

const checkpoint = readCheckpoint(ensureDefaultModel());
let started = performance.now();
const core = await GrammarCore.create(checkpoint.tokenizerJson, checkpoint.config.vocabSize, checkpoint.eosTokenIds);
console.log(`grammar thread start (xgrammar, tokenizer info, compiler): ${(performance.now() - started).toFixed(0)} ms`);
console.log("| grammar | cold (ms) | cached (ms) |\n|---|---:|---:|");
for (const [name, spec] of Object.entries(SPECS)) {
  started = performance.now();
  await core.open("cold", spec);
  const cold = performance.now() - started;
  started = performance.now();
  await core.open("cached", spec);
  const cached = performance.now() - started;
  core.close("cold");
  core.close("cached");
  console.log(`| ${name} | ${cold.toFixed(0)} | ${cached.toFixed(2)} |`);
}
