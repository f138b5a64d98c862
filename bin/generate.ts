/**
 * `tokenmill generate`: runs prompts through the real engine path offline and prints
 * one JSON line (or the text) per prompt, in input order.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { Engine, type EngineOutput, type SamplingParams } from "../engine/index.ts";
import { ENGINE_FLAGS, ENGINE_FLAGS_HELP, loadModel, readEngineFlags } from "./engine-flags.ts";
import { FlagError, flagValue, intFlag, numberFlag, optionalFlagValue } from "./flags.ts";

export const GENERATE_HELP = `tokenmill generate [options]
Prompts (one of):
  --prompt-ids 9707,11,1879     token ids
  --prompt "text"               raw text, encoded without a chat template
  --prompts-file FILE           one raw-text prompt per line (no empty lines), all run concurrently
Sampling:
  --max-tokens N (16)  --temperature T (1)  --top-p P (1)  --top-k K (off)  --min-p P (0)
  --seed N  --ignore-eos  --logprobs N (top alternatives to report)
Output:
  --json                        one JSON line per prompt: {"token_ids", "logprobs", "text"}
  --verbose, -v                 timings on stderr: load, graph build, time to first token
${ENGINE_FLAGS_HELP}`;

export async function generateCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...ENGINE_FLAGS,
      "prompt-ids": { type: "string" },
      prompt: { type: "string" },
      "prompts-file": { type: "string" },
      "max-tokens": { type: "string", default: "16" },
      temperature: { type: "string", default: "1" },
      "top-p": { type: "string", default: "1" },
      "top-k": { type: "string", default: "0" },
      "min-p": { type: "string", default: "0" },
      seed: { type: "string" },
      "ignore-eos": { type: "boolean", default: false },
      logprobs: { type: "string" },
      json: { type: "boolean", default: false },
      verbose: { type: "boolean", short: "v", default: false },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return void console.log(GENERATE_HELP);
  const startedMs = performance.now();
  const engineFlags = readEngineFlags(values);
  const sampling = samplingFrom(values);
  const maxTokens = flagValue("max-tokens", values["max-tokens"], intFlag(1));
  const promptTexts = readPromptTexts(values);
  const { tokenizer, engineOptions } = loadModel(values, engineFlags);
  const prompts = promptTexts.map((p) => (typeof p === "string" ? tokenizer.encode(p, false) : p));

  const engine = await Engine.start(engineOptions);
  const readyMs = performance.now();
  try {
    const results = await Promise.all(prompts.map(async (promptTokenIds) => {
      const outputs: EngineOutput[] = [];
      const request = { requestId: randomUUID(), promptTokenIds, maxTokens, sampling, ignoreEos: values["ignore-eos"] };
      const addedMs = performance.now();
      for await (const output of engine.add(request)) {
        if (outputs.length === 0 && values.verbose) console.error(`first token after ${(performance.now() - addedMs).toFixed(1)} ms`);
        outputs.push(output);
      }
      return outputs;
    }));
    if (values.verbose) {
      const { info } = engine;
      console.error(
        `${info.architecture} from ${info.modelDir}: ready in ${(readyMs - startedMs).toFixed(0)} ms ` +
          `(graph ${info.graphBuilt ? `built in ${info.graphBuildMs.toFixed(0)} ms` : "from cache"}, ` +
          `weights ${mib(info.weightsBytes)} MiB, ${info.numBlocks} KV blocks of ${info.blockSize} (${mib(info.kvCache.numBytes)} MiB), ` +
          `max model len ${info.maxModelLen}); ` +
          `start to last token ${(performance.now() - startedMs).toFixed(0)} ms`,
      );
    }
    for (const outputs of results) {
      const tokenIds = outputs.flatMap((o) => o.newTokenIds);
      const logprobs = outputs.flatMap((o) => (o.logprobs ?? []).map((l) => l.logprob));
      const text = tokenizer.decode(tokenIds, true);
      const finishReason = outputs.at(-1)?.finishReason;
      if (values.json) {
        const top = values.logprobs ? { top_logprobs: outputs.flatMap((o) => (o.logprobs ?? []).map((l) => l.top.map((t) => ({ token_id: t.tokenId, logprob: t.logprob })))) } : {};
        console.log(JSON.stringify({ token_ids: tokenIds, logprobs, text, finish_reason: finishReason, ...top }));
      } else {
        console.log(text);
      }
    }
  } finally {
    await engine.shutdown();
  }
}

/** The prompts as token ids or raw text (encoded once the model is loaded). */
function readPromptTexts(values: Record<string, unknown>): (string | number[])[] {
  const given = ["prompt-ids", "prompt", "prompts-file"].filter((k) => values[k] !== undefined);
  if (given.length !== 1) throw new FlagError("give exactly one of --prompt-ids, --prompt or --prompts-file");
  if (values["prompt-ids"] !== undefined) {
    const ids = String(values["prompt-ids"]).split(",").map((s) => (/^\s*\d+\s*$/.test(s) ? Number(s) : NaN));
    if (ids.some((id) => !Number.isInteger(id))) throw new FlagError(`--prompt-ids must be comma-separated token ids, got ${String(values["prompt-ids"])}`);
    return [ids];
  }
  if (values.prompt !== undefined) return [String(values.prompt)];
  const path = String(values["prompts-file"]);
  const lines = readFileSync(path, "utf8").replace(/\r?\n$/, "").split(/\r?\n/);
  // NOTE: an empty line is refused, not skipped: skipping would shift every later output off its line.
  const empty = lines.findIndex((line) => line.length === 0);
  if (empty >= 0) throw new FlagError(`--prompts-file ${path}: line ${empty + 1} is empty; each line is one prompt`);
  return lines;
}

function samplingFrom(values: Record<string, unknown>): SamplingParams {
  return {
    temperature: flagValue("temperature", values.temperature, numberFlag(0, 100)),
    topP: flagValue("top-p", values["top-p"], numberFlag(0, 1, { minExclusive: true })),
    topK: flagValue("top-k", values["top-k"], intFlag(-1)),
    minP: flagValue("min-p", values["min-p"], numberFlag(0, 1)),
    seed: optionalFlagValue("seed", values.seed, intFlag(Number.MIN_SAFE_INTEGER)),
    presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
    logprobs: optionalFlagValue("logprobs", values.logprobs, intFlag(0, 20)) ?? 0,
  };
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);
