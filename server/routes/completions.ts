/** POST /v1/completions: the legacy completions API, with token-id prompts, echo and legacy logprobs. */
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply } from "fastify";
import type { Admitted } from "../backends/admitted.ts";
import { serveRequest } from "../http/serve-request.ts";
import { proxyToUpstream } from "../http/upstream-proxy.ts";
import type { GrammarSpec } from "../common/engine-api.ts";
import { grammarOf } from "../openai/structured-outputs.ts";
import { Choices, openAiUsage, type ChoiceState } from "../openai/choices.ts";
import type { EngineOutput } from "../common/engine-api.ts";
import { toEngineRequest } from "../openai/to-engine-request.ts";
import { nowSeconds } from "../http/http-helpers.ts";
import { parseBody } from "../common/parse-body.ts";
import { legacyLogprobs } from "../openai/legacy-logprobs.ts";
import { completionRequest, type CompletionRequest } from "../openai/schemas.ts";
import type { ServerContext } from "../http/server-context.ts";
import { SseStream } from "../http/sse.ts";

/** NOTE: as in OpenAI's and vLLM's completions API, max_tokens defaults to 16. */
const DEFAULT_MAX_TOKENS = 16;

interface PromptRun {
  promptText: string;
  choices: Choices;
  outputs: AsyncIterator<EngineOutput>;
  first: IteratorResult<EngineOutput>;
}

export function registerCompletions(app: FastifyInstance, ctx: ServerContext): void {
  app.post("/v1/completions", async (request, reply) => {
    const body = parseBody(completionRequest, request.body);
    const prompts = promptsOf(body.prompt);
    const grammar = grammarOf(body);
    const what = { model: body.model, endpoint: "/v1/completions", numSequences: body.n * prompts.length, param: prompts.length > 1 ? "prompt" : "n" };
    return serveRequest(ctx, request, reply, what, {
      local: (admitted) => serveLocal(reply, body, prompts, grammar, admitted),
      upstream: (admitted) => proxyToUpstream(admitted, reply, {
        path: "/completions", body: request.body as Record<string, unknown>, stream: body.stream === true,
        includeUsage: body.stream_options?.include_usage === true, promptText: JSON.stringify(body.prompt),
        maxTokens: (body.max_tokens ?? DEFAULT_MAX_TOKENS) * body.n * prompts.length,
      }),
    });
  });
}

async function serveLocal(reply: FastifyReply, body: CompletionRequest, prompts: (string | number[])[], grammar: GrammarSpec | undefined, admitted: Admitted): Promise<unknown> {
  const runs = await Promise.all(prompts.map((prompt, i) => startRun(admitted, body, prompt, i * body.n, grammar)));
  const head = { id: `cmpl-${randomUUID()}`, object: "text_completion", created: nowSeconds(), model: admitted.backend.id };
  if (body.stream) return await streamCompletions(reply, body, head, runs, admitted);
  for (const run of runs) {
    for (let next = run.first; !next.done; next = await run.outputs.next()) run.choices.add(next.value);
  }
  const response = {
    ...head,
    choices: runs.flatMap((run) => run.choices.choices.map((c) => choiceBody(body, run, c))),
    usage: openAiUsage(admitted.usage, await admitted.cost()),
  };
  await admitted.settle();
  return response;
}

function promptsOf(prompt: CompletionRequest["prompt"]): (string | number[])[] {
  if (typeof prompt === "string") return [prompt];
  if (prompt.length > 0 && typeof prompt[0] === "number") return [prompt as number[]];
  return prompt as (string | number[])[];
}

async function startRun(admitted: Admitted, body: CompletionRequest, prompt: string | number[], indexOffset: number, grammar: GrammarSpec | undefined): Promise<PromptRun> {
  const promptTokenIds = typeof prompt === "string" ? await admitted.tokenizer.encode(prompt, true, { maxTokens: admitted.engine.info.maxModelLen }) : prompt;
  const echoLogprobs = body.echo && body.logprobs != null;
  const engineRequest = toEngineRequest(body, promptTokenIds, admitted.backend.defaults, {
    maxTokens: body.max_tokens ?? DEFAULT_MAX_TOKENS,
    logprobs: body.logprobs ?? undefined,
    promptLogprobs: echoLogprobs ? (body.logprobs ?? 0) : undefined,
    grammar,
  });
  // NOTE: the engine checks the prompt (empty, outside the vocabulary, too long) as it takes it, before the prompt is decoded for echo.
  const outputs = admitted.generate(engineRequest);
  const promptText = !body.echo ? "" : typeof prompt === "string" ? prompt : await admitted.tokenizer.decode(prompt, false);
  const first = await outputs.next();
  return { promptText, choices: new Choices(body.n, indexOffset), outputs, first };
}

function choiceBody(body: CompletionRequest, run: PromptRun, choice: ChoiceState) {
  return {
    index: choice.index,
    text: run.promptText + choice.text,
    logprobs: body.logprobs == null ? null : legacyLogprobs(body.echo ? run.choices.promptLogprobs ?? null : null, choice.logprobs, 0),
    finish_reason: choice.finishReason,
    stop_reason: choice.stopReason,
  };
}

async function streamCompletions(reply: FastifyReply, body: CompletionRequest, head: object, runs: PromptRun[], admitted: Admitted): Promise<void> {
  admitted.commit();
  reply.hijack();
  const sse = new SseStream(reply.raw);
  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choices: unknown[], usage?: unknown) => ({ ...head, object: "text_completion", choices, ...(includeUsage ? { usage: usage ?? null } : {}) });
  await sse.settledRun(admitted, async () => {
    await Promise.all(runs.map(async (run) => {
      const offsets = new Map<number, number>();
      for (let next = run.first; !next.done && !sse.closed; next = await run.outputs.next()) {
        const output = next.value;
        const choice = run.choices.add(output);
        const isFirst = !offsets.has(output.index);
        const prefix = isFirst ? run.promptText : "";
        const offset = offsets.get(output.index) ?? 0;
        const promptLogprobs = isFirst && body.echo ? run.choices.promptLogprobs ?? null : null;
        const logprobs = body.logprobs == null ? null : legacyLogprobs(promptLogprobs, output.logprobs ?? [], offset);
        offsets.set(output.index, offset + prefix.length + output.text.length);
        await sse.send(chunk([{
          index: choice.index, text: prefix + output.text, logprobs,
          finish_reason: output.finishReason ? choice.finishReason : null,
          ...(output.finishReason ? { stop_reason: choice.stopReason } : {}),
        }]));
      }
    }));
    if (includeUsage) await sse.send(chunk([], openAiUsage(admitted.usage, await admitted.cost())));
  });
}
