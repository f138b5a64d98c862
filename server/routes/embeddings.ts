/**
 * POST /v1/embeddings: each input is one prefill-only engine request, pooled by the model's
 * --pooling and L2-normalized by the engine, batched by its scheduler with everyone else's
 * work. A request takes at most --max-num-seqs places at once, however many inputs it has,
 * and is admitted, limited and settled like any other (endpoint /v1/embeddings, no output
 * tokens). An upstream target gets the client's body, as chat requests do.
 */
import { randomUUID } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { GREEDY, type EngineRequest } from "../common/engine-api.ts";
import type { LocalBackend } from "../backends/model-backend.ts";
import type { Admitted } from "../backends/admitted.ts";
import { invalidRequest, requestAborted } from "../common/api-error.ts";
import { parseBody } from "../common/parse-body.ts";
import { serveRequest } from "../http/serve-request.ts";
import { embeddingInputs, embeddingRequest, encoded, truncated, type EmbeddingRequest } from "../openai/embeddings-schema.ts";
import { inMessages } from "../openai/to-engine-request.ts";
import { proxyToUpstream } from "../http/upstream-proxy.ts";
import type { ServerContext } from "../http/server-context.ts";

/** How many of a request's inputs run at once on a model: no more than it runs sequences. */
const windowOf = (backend: LocalBackend, numInputs: number) => Math.max(1, Math.min(numInputs, backend.limits.maxNumSeqs));

export function registerEmbeddings(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/embeddings", async (request, reply) => {
    const body = parseBody(embeddingRequest, request.body);
    const inputs = embeddingInputs(body.input);
    const what = { model: body.model, endpoint: "/v1/embeddings", task: "embed" as const, numSequences: (backend: LocalBackend) => windowOf(backend, inputs.length), param: "input" };
    return serveRequest(ctx, request, reply, what, {
      local: (admitted) => embedLocally(admitted, body, inputs),
      upstream: (admitted) => proxyToUpstream(admitted, reply, {
        path: "/embeddings", body: request.body as Record<string, unknown>, stream: false, includeUsage: false, promptText: JSON.stringify(body.input), maxTokens: 0,
      }),
    });
  });
}

async function embedLocally(admitted: Admitted, body: EmbeddingRequest, inputs: (string | number[])[]): Promise<unknown> {
  const { engine, tokenizer, backend } = admitted;
  const { maxModelLen, hiddenSize } = engine.info;
  if (body.dimensions && body.dimensions > hiddenSize) {
    throw invalidRequest(`dimensions is ${body.dimensions}, but the model's embeddings have ${hiddenSize}; ask for ${hiddenSize} or fewer.`, "dimensions");
  }
  // NOTE: every input is tokenized and checked before any runs, so a bad one costs nothing and fails the request whole.
  const requests = await Promise.all(inputs.map(async (input): Promise<EngineRequest> => {
    const promptTokenIds = typeof input === "string" ? await tokenizer.encode(input, true, { maxTokens: maxModelLen + 1, contextLength: maxModelLen }).catch((err: unknown) => Promise.reject(inMessages(err, "input"))) : input;
    return { requestId: randomUUID(), promptTokenIds, maxTokens: 0, sampling: GREEDY, pooling: backend.pooling };
  }));
  try {
    for (const request of requests) engine.check(request);
  } catch (err) {
    throw inMessages(err, "input");
  }
  const vectors = await runWindowed(admitted, requests, windowOf(backend, requests.length));
  const format = body.encoding_format ?? "float";
  const { promptTokens } = admitted.usage;
  const cost = await admitted.cost();
  const response = {
    object: "list",
    data: vectors.map((vector, index) => ({ object: "embedding", index, embedding: encoded(truncated(vector, body.dimensions), format) })),
    model: backend.id,
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens, ...(cost !== null ? { cost: cost / 1_000_000 } : {}) },
  };
  await admitted.settle();
  return response;
}

/** Runs the requests, `window` at a time, and returns their embeddings in order; the first failure stops the rest. */
async function runWindowed(admitted: Admitted, requests: EngineRequest[], window: number): Promise<Float32Array[]> {
  const vectors: Float32Array[] = [];
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (next < requests.length && !failed && !admitted.signal.aborted) {
      const i = next++;
      try {
        vectors[i] = await embeddingOf(admitted, requests[i]);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: window }, worker));
  if (admitted.signal.aborted) throw admitted.signal.reason ?? requestAborted();
  return vectors;
}

async function embeddingOf(admitted: Admitted, request: EngineRequest): Promise<Float32Array> {
  const outputs = admitted.generate(request);
  let embedding: Float32Array | undefined;
  for (let next = await outputs.next(); !next.done; next = await outputs.next()) embedding ??= next.value.embedding;
  if (!embedding) throw admitted.signal.reason ?? requestAborted();
  return embedding;
}
