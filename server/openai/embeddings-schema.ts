/**
 * OpenAI's POST /v1/embeddings request, and the encodings of its answer: each input is a
 * string or token ids, up to 2048 of them; dimensions truncates the vector and renormalizes it
 * (as text-embedding-3 and Matryoshka models do); base64 is the float32 little-endian bytes.
 */
import { z } from "zod";
import { tokenId } from "./schemas.ts";

/** OpenAI's limit on inputs in one request. */
export const MAX_EMBEDDING_INPUTS = 2048;

export const embeddingRequest = z.object({
  model: z.string().min(1),
  input: z.union([
    z.string(),
    z.array(z.string()).min(1).max(MAX_EMBEDDING_INPUTS),
    z.array(tokenId).min(1),
    z.array(z.array(tokenId).min(1)).min(1).max(MAX_EMBEDDING_INPUTS),
  ]),
  encoding_format: z.enum(["float", "base64"]).nullish(),
  dimensions: z.number().int().positive().nullish(),
  user: z.string().nullish(),
}).loose();

export type EmbeddingRequest = z.infer<typeof embeddingRequest>;

/** The request's inputs, one per embedding: a string, or one list of token ids. */
export function embeddingInputs(input: EmbeddingRequest["input"]): (string | number[])[] {
  if (typeof input === "string") return [input];
  if (typeof input[0] === "number") return [input as number[]];
  return input as (string | number[])[];
}

/** The first `dimensions` values, scaled back to unit length; the whole vector when dimensions is unset. */
export function truncated(embedding: Float32Array, dimensions: number | null | undefined): Float32Array {
  if (!dimensions || dimensions >= embedding.length) return embedding;
  const head = embedding.subarray(0, dimensions);
  let norm = 0;
  for (const x of head) norm += x * x;
  const scale = norm > 0 ? 1 / Math.sqrt(norm) : 0;
  return Float32Array.from(head, (x) => x * scale);
}

/** An embedding as the client asked for it: a list of numbers, or base64 of its float32 little-endian bytes. */
export function encoded(embedding: Float32Array, format: "float" | "base64"): number[] | string {
  if (format === "float") return Array.from(embedding);
  const bytes = Buffer.alloc(embedding.length * 4);
  embedding.forEach((x, i) => bytes.writeFloatLE(x, i * 4));
  return bytes.toString("base64");
}
