/**
 * Synthetic prompts for serving benchmarks, after vLLM's random dataset: lengths drawn uniformly
 * around a mean, a random prefix shared by every prompt, and random token ids, sent either as ids
 * (exact lengths, for /v1/completions) or decoded to text (for any endpoint).
 */
import { Prng, deriveSeed } from "../models/prng.ts";
import type { Checkpoint } from "../models/checkpoint.ts";
import { ModelTokenizer } from "../models/tokenizer.ts";

/** What the workload needs from a tokenizer. `encode` must not add special tokens (BOS). */
export interface BenchTokenizer {
  readonly vocabSize: number;
  /** The lowest special-token id; random ids stay below it. Omit when specials sit elsewhere. */
  readonly firstSpecialId?: number;
  decode(ids: number[]): string;
  encode(text: string): number[];
}

export interface WorkloadOptions {
  numPrompts: number;
  /** Mean random tokens per prompt, not counting the shared prefix. */
  inputLen: number;
  outputLen: number;
  /** Lengths are uniform integers in [floor(len·(1−r)), ceil(len·(1+r))], as vLLM's --random-range-ratio. */
  rangeRatio?: number;
  /** Tokens of one random prefix prepended to every prompt. */
  prefixLen?: number;
  /** How many distinct prefixes of prefixLen tokens there are (default 1); each prompt takes one at random, as users of several system prompts do. */
  sharedPrefixes?: number;
  seed?: number;
  /** "ids": token-id arrays of exact length; "text": random ids decoded to text, length re-measured. */
  promptFormat?: "ids" | "text";
  /** Random ids are drawn from [0, maxTokenId); defaults to the first special id or the vocab size. */
  maxTokenId?: number;
}

export interface BenchRequest {
  prompt: string | number[];
  /** The served name it is sent to, where a run spreads requests over several (LoRA adapters); default: the run's model. */
  model?: string;
  /** Prompt tokens, prefix included: exact for ids, the re-encoded length for text. */
  promptLen: number;
  outputLen: number;
}

const MAX_FIT_ATTEMPTS = 32;

/** `numPrompts` requests, the same for the same options and seed. */
/** The model's own tokenizer, as the workload needs it. */
export function benchTokenizer(checkpoint: Checkpoint): BenchTokenizer {
  const tokenizer = ModelTokenizer.load(checkpoint);
  return {
    vocabSize: checkpoint.config.vocabSize,
    firstSpecialId: tokenizer.firstSpecialTokenId ?? undefined,
    decode: (ids) => tokenizer.decode(ids),
    encode: (text) => tokenizer.encode(text, false),
  };
}

export function buildWorkload(opts: WorkloadOptions, tokenizer: BenchTokenizer): BenchRequest[] {
  const { numPrompts, inputLen, outputLen, rangeRatio = 0, prefixLen = 0, sharedPrefixes = 1, seed = 0, promptFormat = "ids" } = opts;
  if (!Number.isInteger(sharedPrefixes) || sharedPrefixes < 1) throw new RangeError(`sharedPrefixes must be a whole number ≥ 1, got ${sharedPrefixes}`);
  if (!(rangeRatio >= 0 && rangeRatio < 1)) throw new RangeError(`rangeRatio must be in [0, 1), got ${rangeRatio}`);
  if (!Number.isInteger(numPrompts) || numPrompts < 0) throw new RangeError(`numPrompts must be a whole number, got ${numPrompts}`);
  const [inputLow, inputHigh] = lengthRange(inputLen, rangeRatio, 0);
  const [outputLow, outputHigh] = lengthRange(outputLen, rangeRatio, 1);
  if (prefixLen + inputLow < 1) throw new RangeError("prompts could be empty: raise inputLen or prefixLen, or lower rangeRatio");

  // NOTE: two streams, so that lengths stay the same whichever format draws extra ids to fit text.
  const lengthPrng = new Prng(deriveSeed(seed, "lengths"));
  const tokenPrng = new Prng(deriveSeed(seed, "tokens"));
  const idLimit = tokenIdLimit(opts, tokenizer);
  const randomIds = (n: number) => Array.from({ length: n }, () => Math.floor(tokenPrng.next() * idLimit));
  // NOTE: the first prefix is drawn first, as with one prefix; the others after it, so one prefix gives the workload it always gave.
  const prefixes = Array.from({ length: sharedPrefixes }, () => randomIds(prefixLen));
  const prefixTexts = promptFormat === "text" ? prefixes.map((ids) => tokenizer.decode(ids)) : [];
  const choicePrng = new Prng(deriveSeed(seed, "prefixes"));

  const requests: BenchRequest[] = [];
  for (let i = 0; i < numPrompts; i++) {
    const numInner = uniformInt(lengthPrng, inputLow, inputHigh);
    const numOutput = uniformInt(lengthPrng, outputLow, outputHigh);
    const innerIds = randomIds(numInner);
    const which = sharedPrefixes === 1 ? 0 : Math.floor(choicePrng.next() * sharedPrefixes);
    if (promptFormat === "ids") {
      requests.push({ prompt: [...prefixes[which], ...innerIds], promptLen: prefixLen + numInner, outputLen: numOutput });
    } else {
      requests.push({ ...fitText(tokenizer, prefixTexts[which], innerIds, prefixLen + numInner, randomIds), outputLen: numOutput });
    }
  }
  return requests;
}

function lengthRange(len: number, ratio: number, min: number): [number, number] {
  return [Math.max(min, Math.floor(len * (1 - ratio))), Math.max(min, Math.ceil(len * (1 + ratio)))];
}

function uniformInt(prng: Prng, low: number, high: number): number {
  return low + Math.floor(prng.next() * (high - low + 1));
}

function tokenIdLimit(opts: WorkloadOptions, tokenizer: BenchTokenizer): number {
  const limit = Math.min(opts.maxTokenId ?? Infinity, tokenizer.firstSpecialId ?? Infinity, tokenizer.vocabSize);
  if (!(limit >= 1)) throw new RangeError(`no token ids to draw from (limit ${limit})`);
  return limit;
}

/**
 * Text whose encoding has `targetLen` tokens and starts with `prefixText`.
 *
 * NOTE: decoding n random ids and encoding the text again rarely gives n tokens (merges, partial
 * UTF-8), so like vLLM we trim or extend the random tail and measure again. The prefix text is
 * decoded once and never trimmed, so every prompt shares it byte for byte.
 */
function fitText(
  tokenizer: BenchTokenizer, prefixText: string, innerIds: number[], targetLen: number,
  randomIds: (n: number) => number[],
): { prompt: string; promptLen: number } {
  let ids = innerIds;
  let prompt = "";
  let promptLen = 0;
  for (let attempt = 0; attempt < MAX_FIT_ATTEMPTS; attempt++) {
    prompt = prefixText + tokenizer.decode(ids);
    promptLen = tokenizer.encode(prompt).length;
    if (promptLen === targetLen) break;
    if (promptLen > targetLen) {
      if (ids.length === 0) break;
      ids = ids.slice(0, Math.max(0, ids.length - (promptLen - targetLen)));
    } else {
      ids = [...ids, ...randomIds(targetLen - promptLen)];
    }
  }
  return { prompt, promptLen };
}
