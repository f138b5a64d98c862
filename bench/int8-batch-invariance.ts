/**
 * Whether int8 greedy output depends on the batch a request runs in: one request alone, then
 * three rounds of 12 identical requests arriving 7 ms apart (so that batches of every size form),
 * all greedy with 24 tokens; prints how many distinct texts each round gave (1: batch-invariant).
 *
 *   node --import tsx bench/int8-batch-invariance.ts [--quantization int8|int4|none]
 */
import { parseArgs } from "node:util";
import OpenAI from "openai";
import { DEFAULT_ENGINE_OPTIONS } from "../engine/index.ts";
import { readCheckpoint } from "../models/checkpoint.ts";
import { ensureDefaultModel } from "../models/synthetic/default-model.ts";
import { startServer } from "../server/serve.ts";
const { values } = parseArgs({ options: { quantization: { type: "string", default: "int8" } } });
const quantization = values.quantization as "int8" | "int4" | "none";
const checkpoint = readCheckpoint(ensureDefaultModel());
const server = await startServer({ models: [{ name: "b", engineOptions: { ...DEFAULT_ENGINE_OPTIONS, modelDir: checkpoint.dir, kvCacheMemoryBytes: 128 * 1024 ** 2, intraOpThreads: 1, quantization, maxNumSeqs: 16 }, defaults: checkpoint.generationDefaults, maxQueuedRequests: 64 }], host: "127.0.0.1", port: 0, shutdownTimeoutMs: 1000, bodyLimitBytes: 1 << 20, db: null });
await server.ready;
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "x" });
const ask = async (): Promise<string | null> => {
  const body = { model: "b", messages: [{ role: "user" as const, content: "The same question for everyone." }], max_tokens: 24, temperature: 0, ignore_eos: true };
  return (await client.chat.completions.create(body as OpenAI.ChatCompletionCreateParamsNonStreaming)).choices[0].message.content;
};
const alone = await ask();
for (let round = 0; round < 3; round++) {
  const texts = await Promise.all(Array.from({ length: 12 }, (_, i) => new Promise((r) => setTimeout(r, i * 7)).then(ask)));
  console.log(`${quantization}: round ${round + 1}: distinct texts (alone included):`, new Set([alone, ...texts]).size);
}
await server.close();
