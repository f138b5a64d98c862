/**
 * POST /v1/embeddings on the real server and the random-weights default model, through the
 * real clients: the openai SDK (float, base64 — its default — and dimensions), the Vercel AI
 * SDK's embedMany and LangChain's OpenAIEmbeddings. The vectors equal the reference forward
 * pass's pooled hidden state; one text alone equals the same text in a batch of 32; bad inputs
 * get OpenAI's 400s; usage as each client reports it equals the ledger's rows.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createOpenAI } from "@ai-sdk/openai";
import { OpenAIEmbeddings } from "@langchain/openai";
import { embedMany } from "ai";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import type { RunningServer } from "../../server/serve.ts";
import { openStore } from "../../service/store/open-store.ts";
import { referenceEmbedding } from "../reference/forward.ts";
import { maxAbsDiff, referenceHiddenFor, seededTokens } from "../helpers/runner.ts";
import { startTestServer } from "../helpers/server.ts";

const MODEL = "tiny-embed";
const KEY = "sk-embeddings";
const DB = `sqlite:${join(mkdtempSync(join(tmpdir(), "tokenmill-embeddings-")), "ledger.db")}`;
const VOCAB = 151643;
let server: RunningServer;
let client: OpenAI;
/** Input tokens each client was told, by x-request-id. */
const told = new Map<string, number>();
let numRequests = 0;

beforeAll(async () => {
  server = await startTestServer({ modelId: MODEL, apiKeys: [KEY], db: { url: DB, replica: "embeddings" } });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
}, 120_000);
afterAll(() => server?.close());

async function embed(params: OpenAI.EmbeddingCreateParams): Promise<OpenAI.CreateEmbeddingResponse> {
  const id = `embeddings-${numRequests++}`;
  const response = await client.embeddings.create(params, { headers: { "x-request-id": id } });
  told.set(id, response.usage.prompt_tokens);
  return response;
}

const norm = (v: readonly number[]) => Math.hypot(...v);

async function post(body: unknown): Promise<{ status: number; json: { error?: { message: string; type: string; param: string | null; code: string | null } } }> {
  const response = await fetch(`${server.url}/v1/embeddings`, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: response.status, json: await response.json() as { error?: { message: string; type: string; param: string | null; code: string | null } } };
}

describe("embeddings, openai SDK", () => {
  it("equal the reference forward pass's last-token pooled hidden state to 1e-4", async () => {
    const dir = ensureDefaultModel();
    const inputs = [seededTokens(21, VOCAB, 7), seededTokens(3, VOCAB, 8), seededTokens(40, VOCAB, 9)];
    const response = await embed({ model: MODEL, input: inputs, encoding_format: "float" });
    expect(response).toMatchObject({ object: "list", model: MODEL, usage: { prompt_tokens: 64, total_tokens: 64 } });
    let worst = 0;
    for (const [i, tokens] of inputs.entries()) {
      expect(response.data[i]).toMatchObject({ object: "embedding", index: i });
      worst = Math.max(worst, maxAbsDiff(response.data[i].embedding, referenceEmbedding(referenceHiddenFor(dir, tokens), "last")));
    }
    console.log(`default model embeddings vs reference: max |Δ| ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-4);
  });

  it("gives one text alone the same vector as in a batch of 32", async () => {
    const texts = Array.from({ length: 32 }, (_, i) => `Document ${i}: ${"about rivers and hills ".repeat(1 + (i % 5))}`);
    const batch = await embed({ model: MODEL, input: texts, encoding_format: "float" });
    expect(batch.data.map((d) => d.index)).toEqual(texts.map((_, i) => i));
    let worst = 0;
    for (const i of [0, 13, 31]) {
      const [alone] = (await embed({ model: MODEL, input: texts[i], encoding_format: "float" })).data;
      worst = Math.max(worst, maxAbsDiff(alone.embedding, batch.data[i].embedding));
    }
    console.log(`one text alone vs in a batch of 32: max |Δ| ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-5);
    // Different texts get different vectors, or the comparison means nothing.
    expect(maxAbsDiff(batch.data[0].embedding, batch.data[1].embedding)).toBeGreaterThan(0.01);
  });

  it("sends base64 (the SDK's default) that decodes to the float vector, and truncates then renormalizes to dimensions", async () => {
    const input = ["The quick brown fox.", "Jumps over the lazy dog."];
    const floats = await embed({ model: MODEL, input, encoding_format: "float" });
    const base64 = await embed({ model: MODEL, input });
    for (const [i, d] of base64.data.entries()) {
      expect(d.embedding).toEqual(floats.data[i].embedding);
      expect(norm(d.embedding)).toBeCloseTo(1, 5);
    }
    const raw = await post({ model: MODEL, input: "The quick brown fox.", encoding_format: "base64" });
    const bytes = Buffer.from((raw.json as unknown as { data: { embedding: string }[] }).data[0].embedding, "base64");
    expect(Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4))).toEqual(floats.data[0].embedding);
    const short = await embed({ model: MODEL, input, dimensions: 16, encoding_format: "float" });
    for (const [i, d] of short.data.entries()) {
      const head = floats.data[i].embedding.slice(0, 16);
      expect(d.embedding).toHaveLength(16);
      expect(maxAbsDiff(d.embedding, head.map((x) => x / norm(head)))).toBeLessThan(1e-6);
    }
  });

  it("answers bad input with OpenAI's 400s, and keeps serving", async () => {
    const tokenized = await (await fetch(`${server.url}/tokenize`, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body: JSON.stringify({ model: MODEL, prompt: "x" }) })).json() as { max_model_len: number };
    const maxModelLen = tokenized.max_model_len;
    const cases: [unknown, string | null, string | null][] = [
      [{ model: MODEL, input: "" }, "input", null],
      [{ model: MODEL, input: [] }, "input", null],
      [{ model: MODEL, input: [[1, 2], [VOCAB + 1000]] }, "input", null],
      [{ model: MODEL, input: 42 }, "input", null],
      [{ model: MODEL, input: Array.from({ length: 2049 }, () => "x") }, "input", null],
      [{ model: MODEL, input: "x", dimensions: 0 }, "dimensions", null],
      [{ model: MODEL, input: "x", dimensions: 100_000 }, "dimensions", null],
      [{ model: MODEL, input: "x", encoding_format: "int8" }, "encoding_format", null],
      [{ model: MODEL, input: seededTokens(maxModelLen + 1, VOCAB, 1) }, "input", "context_length_exceeded"],
      [{ model: MODEL, input: ["fine", " word".repeat(maxModelLen + 1)] }, "input", "context_length_exceeded"],
    ];
    for (const [body, param, code] of cases) {
      const { status, json } = await post(body);
      expect({ body: JSON.stringify(body).slice(0, 80), status, type: json.error?.type, param: json.error?.param, code: json.error?.code ?? null })
        .toEqual({ body: JSON.stringify(body).slice(0, 80), status: 400, type: "invalid_request_error", param, code });
    }
    // The early cutoff names the context length itself, as the engine's check does.
    expect((await post({ model: MODEL, input: " word".repeat(maxModelLen + 1) })).json.error?.message).toMatch(new RegExp(`maximum context length is ${maxModelLen} tokens`));
    expect((await post({ model: "no-such-model", input: "x" })).status).toBe(404);
    // A prompt that fills the whole context is an embedding's to take (it generates nothing).
    expect((await embed({ model: MODEL, input: seededTokens(maxModelLen, VOCAB, 2), encoding_format: "float" })).usage.prompt_tokens).toBe(maxModelLen);
    expect((await embed({ model: MODEL, input: "still here", encoding_format: "float" })).data).toHaveLength(1);
  });
});

describe("embeddings, other clients", () => {
  it("the Vercel AI SDK's embedMany gets every vector, in order, with exact usage", async () => {
    const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY });
    const values = ["sunny day", "rainy night", "windy morning"];
    const id = `embeddings-ai-${numRequests++}`;
    const { embeddings, usage } = await embedMany({ model: openai.embedding(MODEL), values, headers: { "x-request-id": id }, maxRetries: 0 });
    told.set(id, usage.tokens);
    const expected = await embed({ model: MODEL, input: values, encoding_format: "float" });
    expect(usage.tokens).toBe(expected.usage.prompt_tokens);
    expect(embeddings).toEqual(expected.data.map((d) => d.embedding));
  });

  it("LangChain's OpenAIEmbeddings embeds documents and a query", async () => {
    const id = `embeddings-langchain-${numRequests++}`;
    const embeddings = new OpenAIEmbeddings({ model: MODEL, apiKey: KEY, configuration: { baseURL: `${server.url}/v1`, defaultHeaders: { "x-request-id": id } } });
    const docs = ["first document", "second document"];
    const vectors = await embeddings.embedDocuments(docs);
    const expected = await embed({ model: MODEL, input: docs, encoding_format: "float" });
    expect(vectors).toEqual(expected.data.map((d) => d.embedding));
    told.set(id, expected.usage.prompt_tokens);
    const query = await new OpenAIEmbeddings({ model: MODEL, apiKey: KEY, dimensions: 8, configuration: { baseURL: `${server.url}/v1` } }).embedQuery("first document");
    expect(query).toHaveLength(8);
    expect(norm(query)).toBeCloseTo(1, 5);
  });
});

describe("embeddings, the ledger", () => {
  it("holds exactly the input tokens each client was told, as uncached input with no output", async () => {
    await server.close();
    const store = await openStore(DB);
    try {
      const rows = await store.db.selectFrom("usage_ledger").selectAll().where("endpoint", "=", "/v1/embeddings").execute();
      for (const [id, tokens] of told) {
        const row = rows.find((r) => r.http_request_id === id);
        expect(row, id).toBeDefined();
        expect([row!.uncached_input_tokens, row!.cached_input_tokens, row!.output_tokens, row!.status]).toEqual([tokens, 0, 0, "completed"]);
      }
      // Bad inputs are refused before anything runs: their rows, if any, bill nothing.
      for (const row of rows.filter((r) => r.status === "error")) expect(row.uncached_input_tokens + row.output_tokens).toBe(0);
    } finally {
      await store.close();
    }
  });
});
