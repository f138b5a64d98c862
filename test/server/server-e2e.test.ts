/** The real server on the real tiny model, driven by the official openai SDK and by LangChain. */
import { ChatOpenAI } from "@langchain/openai";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../server/serve.ts";
import { startTestServer } from "../helpers/server.ts";
import { webgpuAvailable } from "../helpers/webgpu.ts";
import { until } from "../helpers/until.ts";

const MODEL = "tokenmill-tiny-qwen3";
type ErrorBody = { error: { message: string; type: string; param: string | null; code: string | null } };
let server: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  server = await startTestServer();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(async () => server.close());

const ask = (content: string, extra: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming> = {}) =>
  client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content }], max_tokens: 12, temperature: 0, ...extra });

async function metric(name: string, from: RunningServer = server): Promise<number> {
  const text = await (await fetch(`${from.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{model="${MODEL}"} `));
  return Number(line?.split(" ")[1]);
}

/** Streams a long answer and aborts after `after` chunks, as a client that leaves; returns the chunks received. */
async function leaveMidStream(sdk: OpenAI, after: number): Promise<number> {
  const controller = new AbortController();
  const stream = await sdk.chat.completions.create(
    { model: MODEL, messages: [{ role: "user", content: "go on forever" }], max_tokens: 4000, stream: true },
    { signal: controller.signal },
  );
  let received = 0;
  try {
    for await (const _chunk of stream) {
      // NOTE: break at once: chunks the SDK already holds would still be yielded after the abort.
      if (++received === after) {
        controller.abort();
        break;
      }
    }
  } catch {
    // The SDK may end the iteration quietly or throw an abort error; either is the client leaving.
  }
  return received;
}

describe("chat completions through the openai SDK", () => {
  it("answers a non-streamed request with content, finish_reason and usage", async () => {
    const completion = await ask("Hello there");
    expect(completion.object).toBe("chat.completion");
    expect(completion.model).toBe(MODEL);
    const [choice] = completion.choices;
    expect(choice.message.role).toBe("assistant");
    expect(choice.message.content!.length).toBeGreaterThan(0);
    expect(choice.finish_reason).toBe("length");
    expect(completion.usage).toMatchObject({ completion_tokens: 12, prompt_tokens_details: { cached_tokens: expect.any(Number) } });
    expect(completion.usage!.total_tokens).toBe(completion.usage!.prompt_tokens + 12);
  });

  it("streams the same text, role first, finish_reason last, then a usage chunk", async () => {
    const whole = await ask("Stream me");
    const stream = await client.chat.completions.create({
      model: MODEL, messages: [{ role: "user", content: "Stream me" }], max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks[0].choices[0].delta.role).toBe("assistant");
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    expect(text).toBe(whole.choices[0].message.content);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(whole.usage);
    expect(chunks.at(-2)!.choices[0].finish_reason).toBe("length");
  });

  it("n = 2 gives two choices; greedy copies agree", async () => {
    const completion = await ask("Two of them", { n: 2 });
    expect(completion.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(completion.choices[1].message.content).toBe(completion.choices[0].message.content);
    expect(completion.usage!.completion_tokens).toBe(24);
  });

  it("stops before a stop string", async () => {
    const full = (await ask("Say something", { max_tokens: 24 })).choices[0].message.content!;
    const stop = full.slice(10, 14);
    const stopped = await ask("Say something", { max_tokens: 24, stop: [stop, "never-appears"] });
    expect(stopped.choices[0].message.content).toBe(full.slice(0, full.indexOf(stop)));
    expect(stopped.choices[0].finish_reason).toBe("stop");
  });

  it("repeats a seeded sampled answer exactly, and differs with another seed", async () => {
    const sampled = (seed: number) => ask("Tell me a story", { temperature: 1, seed, max_tokens: 16 }).then((c) => c.choices[0].message.content);
    const [a, b, c] = await Promise.all([sampled(42), sampled(42), sampled(7)]);
    expect(b).toBe(a);
    expect(c).not.toBe(a);
  });

  it("samples with top_k from the graph's top entries, reproducibly with a seed", async () => {
    const sampled = (seed: number) => client.chat.completions.create({
      model: MODEL, messages: [{ role: "user", content: "Once more" }], max_tokens: 16, temperature: 0.7, top_p: 0.95, seed,
      // top_k is vLLM's extension; the openai SDK passes unknown body fields through.
      ...({ top_k: 20 } as object),
    }).then((c) => c.choices[0].message.content);
    const [a, b, c] = await Promise.all([sampled(1), sampled(1), sampled(2)]);
    expect(b).toBe(a);
    expect(c).not.toBe(a);
  });

  it("returns logprobs with top alternatives for every token", async () => {
    const completion = await ask("Logprobs please", { logprobs: true, top_logprobs: 3 });
    const content = completion.choices[0].logprobs!.content!;
    expect(content).toHaveLength(12);
    for (const entry of content) {
      expect(entry.logprob).toBeLessThanOrEqual(0);
      expect(entry.top_logprobs).toHaveLength(3);
      expect(entry.top_logprobs[0].logprob).toBeGreaterThanOrEqual(entry.logprob);
      expect(Array.isArray(entry.bytes)).toBe(true);
    }
    const bytes = content.flatMap((e) => e.bytes!);
    expect(new TextDecoder().decode(Uint8Array.from(bytes))).toBe(completion.choices[0].message.content);
  });

  it("reports a shared system prompt as cached_tokens", async () => {
    const system = "You are a meticulous assistant. ".repeat(12);
    const withSystem = (user: string) => client.chat.completions.create({
      model: MODEL, max_tokens: 2, messages: [{ role: "system", content: system }, { role: "user", content: user }],
    });
    await withSystem("first question");
    const second = await withSystem("a different second question");
    const cached = second.usage!.prompt_tokens_details!.cached_tokens!;
    expect(cached).toBeGreaterThanOrEqual(64);
    expect(cached % 16).toBe(0);
    expect(cached).toBeLessThan(second.usage!.prompt_tokens);
  });
});

describe("legacy completions", () => {
  it("accepts token ids, echoes the prompt and returns legacy logprobs", async () => {
    const completion = await client.completions.create({ model: MODEL, prompt: [9707, 11, 1879], max_tokens: 4, temperature: 0, echo: true, logprobs: 2 });
    const [choice] = completion.choices;
    expect(choice.text.startsWith("Hello, world")).toBe(true);
    const logprobs = choice.logprobs!;
    expect(logprobs.tokens).toHaveLength(7);
    expect(logprobs.token_logprobs![0]).toBeNull();
    expect(logprobs.tokens!.join("")).toBe(choice.text);
    expect(logprobs.text_offset).toEqual(logprobs.tokens!.map((_, i) => logprobs.tokens!.slice(0, i).join("").length));
    expect(completion.usage).toMatchObject({ prompt_tokens: 3, completion_tokens: 4 });
  });

  it("streams completions for several prompts", async () => {
    const stream = await client.completions.create({ model: MODEL, prompt: ["One", "Two"], max_tokens: 3, temperature: 0, stream: true });
    const byIndex = new Map<number, string>();
    for await (const chunk of stream) for (const c of chunk.choices) byIndex.set(c.index, (byIndex.get(c.index) ?? "") + c.text);
    expect([...byIndex.keys()].sort()).toEqual([0, 1]);
  });
});

describe("errors in OpenAI's shape", () => {
  it("rejects invalid parameters with 400 and names the parameter", async () => {
    const error = await ask("x", { temperature: 5 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect((error as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("temperature");
  });

  it("404s an unknown model", async () => {
    const error = await client.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "x" }] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    expect((error as InstanceType<typeof OpenAI.NotFoundError>).code).toBe("model_not_found");
  });

  it("400s a prompt plus max_tokens beyond the context, with the numbers", async () => {
    const error = await ask("x", { max_tokens: 9000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect((error as Error).message).toMatch(/maximum context length is 8192 tokens.*9000 in the completion/);
  });

  it("400s malformed JSON and 413s an oversized body, and keeps serving", async () => {
    const post = (body: string) => fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body });
    const malformed = await post("{\"model\": ");
    expect(malformed.status).toBe(400);
    expect(((await malformed.json()) as ErrorBody).error.type).toBe("invalid_request_error");
    const huge = await post(JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "x".repeat(2 * 1024 * 1024) }] }));
    expect(huge.status).toBe(413);
    expect(((await huge.json()) as ErrorBody).error.code).toBe("payload_too_large");
    expect((await ask("still there?")).choices).toHaveLength(1);
  });

  it("503s with Retry-After when the waiting queue is full", async () => {
    const saved = { ...server.ctx.models.local(MODEL).limits };
    server.ctx.models.local(MODEL).limits.maxNumSeqs = 1;
    server.ctx.models.local(MODEL).limits.maxQueuedRequests = 0;
    const controller = new AbortController();
    try {
      const busy = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "long" }], max_tokens: 2000, stream: true }, { signal: controller.signal });
      const response = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "x" }] }),
      });
      expect(response.status).toBe(503);
      expect(response.headers.get("retry-after")).toBeTruthy();
      expect(((await response.json()) as ErrorBody).error.code).toBe("overloaded");
      void busy;
    } finally {
      controller.abort();
      Object.assign(server.ctx.models.local(MODEL).limits, saved);
    }
  });
});

describe("lifecycle", () => {
  it("a client that aborts mid-stream frees its sequence", async () => {
    expect(await leaveMidStream(client, 5)).toBe(5);
    for (let i = 0; i < 50 && (await metric("tokenmill_requests_running")) > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await metric("tokenmill_requests_running")).toBe(0);
    expect(await metric("tokenmill_kv_cache_usage_ratio")).toBe(0);
    expect(server.ctx.models.local(MODEL).numInFlight).toBe(0);
  });

  it("a client that leaves a whole (non-streamed) request frees it, and the request is counted as 499, not as served", async () => {
    const counted = async (status: string) => {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith(`tokenmill_http_requests_total{route="/v1/chat/completions",status="${status}"}`));
      return Number(line?.split(" ")[1] ?? 0);
    };
    const [left, served] = [await counted("499"), await counted("200")];
    const controller = new AbortController();
    const pending = fetch(`${server.url}/v1/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json" }, signal: controller.signal,
      body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "take your time" }], max_tokens: 4000, ignore_eos: true }),
    }).catch(() => null);
    for (let i = 0; i < 100 && (await metric("tokenmill_requests_running")) === 0; i++) await new Promise((r) => setTimeout(r, 20));
    controller.abort();
    await pending;
    for (let i = 0; i < 50 && server.ctx.models.local(MODEL).numInFlight > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(server.ctx.models.local(MODEL).numInFlight).toBe(0);
    expect(await counted("499")).toBe(left + 1);
    expect(await counted("200")).toBe(served);
  });

  it("/tokenize counts what chat completions bill as prompt tokens, and /detokenize reverses it", async () => {
    const messages = [{ role: "user", content: "How many tokens is this?" }];
    const post = (path: string, body: object) => fetch(`${server.url}${path}`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: MODEL, ...body }),
    }).then((r) => r.json() as Promise<Record<string, unknown>>);
    const counted = await post("/tokenize", { messages });
    const completion = await client.chat.completions.create({ model: MODEL, messages: messages as OpenAI.ChatCompletionMessageParam[], max_tokens: 1 });
    expect(counted.count).toBe(completion.usage!.prompt_tokens);
    const text = await post("/tokenize", { prompt: "Hello, world" });
    expect(text.tokens).toEqual([9707, 11, 1879]);
    expect(await post("/detokenize", { tokens: text.tokens })).toEqual({ prompt: "Hello, world" });
  });

  it("/health is 200 and /metrics exports the engine's counters", async () => {
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    expect(await metric("tokenmill_generation_tokens_total")).toBeGreaterThan(0);
    expect(await metric("tokenmill_prefix_cache_hits_total")).toBeGreaterThan(0);
  });

  it("/metrics exports the gauges the Kubernetes inference gateway's endpoint picker scrapes, under vLLM's names, and they follow the engine", async () => {
    const gateway = async () => {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      const value = (name: string) => Number(text.split("\n").find((l) => l.startsWith(`${name}{model_name="${MODEL}"} `))?.split(" ")[1]);
      const own = Number(text.split("\n").find((l) => l.startsWith(`tokenmill_kv_cache_usage_ratio{model="${MODEL}"} `))?.split(" ")[1]);
      return { text, waiting: value("vllm:num_requests_waiting"), running: value("vllm:num_requests_running"), kv: value("vllm:kv_cache_usage_perc"), own };
    };
    // NOTE: earlier tests' aborted requests leave the batch on the engine's next turn: wait for it, then read.
    await until(async () => (await gateway()).running === 0, { everyMs: 20, what: "an idle engine" });
    const idle = await gateway();
    expect(idle).toMatchObject({ waiting: 0, running: 0, kv: 0 });
    const info = server.ctx.models.local(MODEL).engine!.info as unknown as { blockSize: number; numBlocks: number };
    expect(idle.text).toContain(`vllm:cache_config_info{model_name="${MODEL}",block_size="${info.blockSize}",num_gpu_blocks="${info.numBlocks}",cache_dtype="float32"} 1`);
    for (const name of ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:cache_config_info"]) expect(idle.text).toContain(`# TYPE ${name} gauge`);
    const controller = new AbortController();
    const pending = fetch(`${server.url}/v1/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json" }, signal: controller.signal,
      body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "keep going" }], max_tokens: 4000, ignore_eos: true }),
    }).catch(() => null);
    try {
      await until(async () => (await gateway()).running === 1, { everyMs: 20, what: "vllm:num_requests_running to show the request" });
      const busy = await gateway();
      expect(busy.kv).toBeGreaterThan(0);
      expect(busy.kv).toBeLessThanOrEqual(1);
      // The same scrape: both names carry the same value (a later scrape would see the request grown).
      expect(busy.kv).toBe(busy.own);
    } finally {
      controller.abort();
      await pending;
    }
    await until(async () => (await gateway()).running === 0, { everyMs: 20, what: "the request to leave the batch" });
  });
});

describe.skipIf(!(await webgpuAvailable()))("the server on --device webgpu, through the openai SDK", () => {
  let gpuServer: RunningServer;
  let gpu: OpenAI;
  beforeAll(async () => {
    gpuServer = await startTestServer({ device: "webgpu" });
    gpu = new OpenAI({ baseURL: `${gpuServer.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(async () => gpuServer.close());

  it("streams what it answers whole, with the same usage, and bills a shared system prompt as cached", async () => {
    const system = "You are a meticulous assistant. ".repeat(12);
    const messages = (user: string): OpenAI.ChatCompletionMessageParam[] => [{ role: "system", content: system }, { role: "user", content: user }];
    const whole = await gpu.chat.completions.create({ model: MODEL, messages: messages("first"), max_tokens: 8, temperature: 0 });
    expect(whole.usage).toMatchObject({ completion_tokens: 8 });
    const stream = await gpu.chat.completions.create({ model: MODEL, messages: messages("first"), max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe(whole.choices[0].message.content);
    expect(chunks.at(-1)!.usage!.completion_tokens).toBe(8);
    const second = await gpu.chat.completions.create({ model: MODEL, messages: messages("a different second question"), max_tokens: 2 });
    expect(second.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThanOrEqual(64);
  }, 300_000);

  it("frees the sequence of a client that aborts mid-stream", async () => {
    expect(await leaveMidStream(gpu, 3)).toBe(3);
    for (let i = 0; i < 100 && (await metric("tokenmill_requests_running", gpuServer)) > 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await metric("tokenmill_requests_running", gpuServer)).toBe(0);
    expect(await metric("tokenmill_kv_cache_usage_ratio", gpuServer)).toBe(0);
  }, 300_000);
});

describe("LangChain", () => {
  it("ChatOpenAI streams from the server unchanged", async () => {
    const chat = new ChatOpenAI({ model: MODEL, apiKey: "unused", configuration: { baseURL: `${server.url}/v1` }, maxTokens: 8, temperature: 0 });
    let text = "";
    for await (const chunk of await chat.stream("Hello from LangChain")) text += chunk.content;
    const direct = await ask("Hello from LangChain", { max_tokens: 8 });
    expect(text).toBe(direct.choices[0].message.content);
  });
});
