/**
 * The third part of a step (schedule → execute → process outputs): what the runner returned,
 * applied to each scheduled sequence, as vLLM's update_from_output does.
 *
 * Per sequence, in order: progress and its newly full blocks into the prefix cache; an
 * embedding's pooling (pooling.ts); prompt logprobs; the n copies forked once the prompt is
 * computed; then, once the sequence has caught up, one sample (under its grammar's mask and the
 * UTF-8 guard), its grammar tokens, stats, text, one stop check, and finish with usage.
 */
import type { EngineOutput, FinishReason, PromptLogprob, RequestUsage } from "../common/request.ts";
import { Utf8Guard } from "../grammar/utf8-guard.ts";
import type { KvCacheManager } from "../kv-cache/kv-cache-manager.ts";
import { rowOf, type SequenceRows } from "../runner/step-rows.ts";
import { promptLogprobsFromRows, withTokenStrings } from "../sampling/logprobs.ts";
import { sampleRow, type LogitsNeed } from "../sampling/sampler.ts";
import type { TextCodec } from "../text/text-codec.ts";
import type { EngineStats } from "./engine-stats.ts";
import { poolStep } from "./pooling.ts";
import type { ScheduledSequence } from "./scheduler.ts";
import type { Sequence } from "./sequence.ts";

/** What the processor asks of the engine core: the request-level bookkeeping it owns. */
export interface OutputHost {
  /** Once copy 0 of an n > 1 request has its prompt computed, the other copies share its blocks. */
  promptComputed(seq: Sequence): void;
  /** Finishes one sequence; once its request has none left, returns the request's usage. */
  finish(seq: Sequence): RequestUsage | null;
}

export interface OutputProcessorOptions {
  vocabSize: number;
  hiddenSize: number;
  maxModelLen: number;
  eosTokenIds: readonly number[];
}

export class OutputProcessor {
  private guard: Utf8Guard | null = null;

  constructor(
    private readonly kv: KvCacheManager, private readonly stats: EngineStats, private readonly host: OutputHost,
    private readonly options: OutputProcessorOptions, private readonly codec: TextCodec | null,
  ) {}

  /** Applies one sequence's rows; returns its output for this step, if it has one. */
  process({ seq, numNewTokens }: ScheduledSequence, rows: SequenceRows, need: LogitsNeed, mask: Int32Array | null): EngineOutput | null {
    const start = seq.numComputedTokens;
    seq.numComputedTokens += numNewTokens;
    this.kv.cacheFullBlocks(seq);
    if (seq.pooling) return this.pooled(seq, numNewTokens, rows);
    if (seq.promptLogprobs && start < seq.numPromptTokens) {
      const found = promptLogprobsFromRows(rows.full!, this.options.vocabSize, start, seq.promptTokenIds, seq.sampling.logprobs ?? 0);
      for (const [position, entry] of found) seq.promptLogprobs.set(position, entry);
    }
    if (seq.numComputedTokens >= seq.numPromptTokens) this.host.promptComputed(seq);
    if (seq.numComputedTokens < seq.numTokens) return null;
    return this.sampled(seq, rows, need, mask);
  }

  private sampled(seq: Sequence, rows: SequenceRows, need: LogitsNeed, mask: Int32Array | null): EngineOutput {
    const isFirst = seq.outputTokenIds.length === 0;
    if (seq.grammarKey !== null && !mask) throw new Error("a constrained sequence reached sampling without its grammar's mask");
    const allowedMask = mask && this.codec ? this.utf8Guard().restrict(mask, seq.outputTokenIds.at(-1)) : mask;
    const history = { promptTokenIds: seq.promptTokenIds, outputTokenIds: seq.outputTokenIds, allowedMask };
    const sample = sampleRow(rowOf(rows, rows.numRows - 1, this.options.vocabSize), need, seq.sampling, history, seq.rng);
    seq.appendToken(sample.tokenId);
    if (seq.grammarKey !== null) seq.grammarTokens.push(sample.tokenId);
    this.stats.observeToken(seq, isFirst);
    const delta = seq.detokenizer?.push([sample.tokenId]) ?? { text: "", stopped: false, stopReason: undefined };
    const stop = delta.stopped ? { finishReason: "stop" as const, stopReason: delta.stopReason } : this.checkStop(seq, sample.tokenId);
    let text = delta.text;
    let usage: RequestUsage | null = null;
    if (stop) {
      if (!delta.stopped) text += seq.detokenizer?.flush() ?? "";
      usage = this.host.finish(seq);
    }
    return {
      requestId: seq.requestId,
      index: seq.index,
      newTokenIds: [sample.tokenId],
      text,
      ...(seq.sampling.logprobs !== undefined ? { logprobs: [withTokenStrings(sample, this.codec)] } : {}),
      ...(stop ?? {}),
      ...(isFirst ? { numCachedTokens: seq.numCachedTokens ?? 0, numPromptTokens: seq.numPromptTokens } : {}),
      ...(isFirst && seq.promptLogprobs ? { promptLogprobs: this.promptLogprobsOf(seq) } : {}),
      ...(usage ? { usage } : {}),
    };
  }

  /** An embedding sequence: once its prompt is computed, it finishes with the pooled embedding. */
  private pooled(seq: Sequence, numNewTokens: number, rows: SequenceRows): EngineOutput | null {
    const embedding = poolStep(seq, numNewTokens, rows, this.options.hiddenSize);
    if (!embedding) return null;
    this.stats.observePooled(seq);
    const usage = this.host.finish(seq)!;
    return {
      requestId: seq.requestId, index: 0, newTokenIds: [], text: "", finishReason: "stop",
      numCachedTokens: 0, numPromptTokens: seq.numPromptTokens, embedding, usage,
    };
  }

  /** The one stop check after a token: a stop token (EOS or the request's), max_tokens, or the end of the context. */
  private checkStop(seq: Sequence, tokenId: number): { finishReason: FinishReason; stopReason?: number } | null {
    if (seq.stopTokenIds.has(tokenId)) return { finishReason: "stop", ...(this.options.eosTokenIds.includes(tokenId) ? {} : { stopReason: tokenId }) };
    if (seq.outputTokenIds.length >= seq.maxTokens || seq.numTokens >= this.options.maxModelLen) return { finishReason: "length" };
    return null;
  }

  private promptLogprobsOf(seq: Sequence): PromptLogprob[] {
    return seq.promptTokenIds.map((tokenId, position) => {
      const entry = seq.promptLogprobs!.get(position);
      if (entry) return withTokenStrings(entry, this.codec);
      const strings = this.codec ? { token: this.codec.tokenText(tokenId), bytes: [...this.codec.tokenBytes(tokenId)] } : {};
      return { tokenId, ...strings, logprob: null, top: null };
    });
  }

  /** Built on the first constrained sample (a pass over the vocabulary's bytes). */
  private utf8Guard(): Utf8Guard {
    return (this.guard ??= new Utf8Guard(this.codec!, this.options.vocabSize));
  }
}
