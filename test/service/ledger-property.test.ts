/**
 * Exact to the token: random mixes of requests through the real server and the openai SDK
 * (streamed, whole, n > 1, a shared system prompt so that some prompt tokens are cached,
 * clients leaving at random points) leave a ledger whose per-key sums equal the usage the
 * clients were told, in all three tiers, with each row's cost the integer formula.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openStore, type Store } from "../../service/store/open-store.ts";
import type { RunningServer } from "../../server/serve.ts";
import { startPostgres, type TestPostgres } from "../helpers/postgres.ts";
import { startTestServer } from "../helpers/server.ts";

const MODEL = "tokenmill-tiny-qwen3";
const ADMIN = "admin-for-the-property";
const PRICE = { inputPerMtok: 150_000, cachedInputPerMtok: 75_000, outputPerMtok: 600_000 };
const SYSTEM = { role: "system" as const, content: "You answer briefly and precisely, citing nothing. ".repeat(6) };

interface Seen {
  /** The response's x-request-id, which the ledger row carries. */
  requestId: string;
  prompt: number;
  cached: number;
  completion: number;
  /**
   * Set for a client that left after reading this many chunks: its row may say stopped (with
   * at least these tokens) or, when the server had finished first, completed.
   */
  leftAfter?: number;
}

for (const kind of ["sqlite", "postgres"] as const) describe(`the ledger on ${kind}, exact to the token`, () => {
  let server: RunningServer;
  let dir: string;
  let pg: TestPostgres | null = null;
  let store: Store;
  let secret = "";
  let numRuns = 0;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tokenmill-property-"));
    if (kind === "postgres") pg = await startPostgres();
    const url = pg ? pg.url : `sqlite:${join(dir, "ledger.db")}`;
    server = await startTestServer({ db: { url, replica: "p", prices: [{ model: MODEL, ...PRICE }] }, adminKeys: [ADMIN] });
    store = await openStore(url);
  }, 60_000);
  afterAll(async () => {
    await server?.close();
    await store?.close();
    pg?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const request = fc.record({
    stream: fc.boolean(),
    n: fc.integer({ min: 1, max: 3 }),
    maxTokens: fc.integer({ min: 1, max: 12 }),
    shared: fc.boolean(),
    words: fc.array(fc.constantFrom("alpha", "beta", "gamma", "delta"), { minLength: 1, maxLength: 6 }),
    leaveAfter: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined }),
  });

  it("per-key sums equal what clients were told; every row's cost is the formula", async () => {
    await fc.assert(fc.asyncProperty(fc.array(request, { minLength: 1, maxLength: 6 }), async (specs) => {
      // Each run meters under a key of its own, so its sums are its own.
      const created = await fetch(`${server.url}/v1/admin/keys`, {
        method: "POST", headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" }, body: JSON.stringify({ name: `run-${numRuns++}` }),
      });
      const key = (await created.json()) as { id: string; secret: string };
      secret = key.secret;
      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: secret, maxRetries: 0 });
      const seen = await Promise.all(specs.map(async (spec): Promise<Seen> => {
        const messages = [...(spec.shared ? [SYSTEM] : []), { role: "user" as const, content: spec.words.join(" ") }];
        const params = { model: MODEL, messages, max_tokens: spec.maxTokens, n: spec.n, ignore_eos: true } as OpenAI.ChatCompletionCreateParamsNonStreaming;
        if (!spec.stream) {
          const { data, response } = await client.chat.completions.create(params).withResponse();
          const usage = data.usage!;
          return { requestId: response.headers.get("x-request-id")!, prompt: usage.prompt_tokens, cached: usage.prompt_tokens_details?.cached_tokens ?? 0, completion: usage.completion_tokens };
        }
        const controller = new AbortController();
        const { data: stream, response } = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } }, { signal: controller.signal }).withResponse();
        const requestId = response.headers.get("x-request-id")!;
        let numChunks = 0;
        let usage: OpenAI.CompletionUsage | null = null;
        try {
          for await (const chunk of stream) {
            if (chunk.usage) usage = chunk.usage;
            if (chunk.choices[0]?.delta.content !== undefined && !chunk.choices[0]?.delta.role) numChunks++;
            if (spec.leaveAfter !== undefined && numChunks >= spec.leaveAfter && numChunks < spec.n * spec.maxTokens) {
              controller.abort();
              break;
            }
          }
        } catch {
          // the client's own abort
        }
        if (usage) return { requestId, prompt: usage.prompt_tokens, cached: usage.prompt_tokens_details?.cached_tokens ?? 0, completion: usage.completion_tokens };
        return { requestId, prompt: -1, cached: -1, completion: numChunks, leftAfter: numChunks };
      }));
      // Every request settles (a client that left, once the engine has let go of it).
      let rows: Awaited<ReturnType<typeof readRows>> = [];
      for (let i = 0; i < 100; i++) {
        rows = await readRows(key.id);
        if (rows.length === specs.length && rows.every((r) => r.status !== "in_flight")) break;
        await new Promise((r) => setTimeout(r, 30));
      }
      expect(rows).toHaveLength(specs.length);
      for (const row of rows) {
        const expected = Math.floor((row.uncached_input_tokens * PRICE.inputPerMtok + row.cached_input_tokens * PRICE.cachedInputPerMtok + row.output_tokens * PRICE.outputPerMtok + 500_000) / 1e6);
        expect(row.cost_micro_usd).toBe(expected);
      }
      const rowOf = new Map(rows.map((r) => [r.http_request_id, r]));
      const told = seen.filter((s) => s.leftAfter === undefined);
      for (const s of told) expect(rowOf.get(s.requestId)?.status, s.requestId).toBe("completed");
      const sum = <T,>(xs: T[], f: (x: T) => number) => xs.reduce((a, x) => a + f(x), 0);
      const toldRows = told.map((s) => rowOf.get(s.requestId)!);
      // The key's sums over what clients were told, in all three tiers.
      expect(sum(toldRows, (r) => r.uncached_input_tokens)).toBe(sum(told, (s) => s.prompt - s.cached));
      expect(sum(toldRows, (r) => r.cached_input_tokens)).toBe(sum(told, (s) => s.cached));
      expect(sum(toldRows, (r) => r.output_tokens)).toBe(sum(told, (s) => s.completion));
      for (const s of seen.filter((x) => x.leftAfter !== undefined)) {
        const row = rowOf.get(s.requestId)!;
        expect(["stopped", "completed"]).toContain(row.status);
        expect(row.output_tokens).toBeGreaterThanOrEqual(s.leftAfter!);
      }
    }), { numRuns: 12 });
  });

  async function readRows(keyId: string) {
    return store.db.selectFrom("usage_ledger").selectAll().where("key_id", "=", keyId).execute();
  }
});
