/**
 * The engine loop's body, free of threads. A step is three named parts: the scheduler's
 * schedule() → the runner's execute (step(), with the grammar masks computed beside it) → the
 * output processor (output-processor.ts). The core owns the requests: admission, aborts,
 * failures, the n copies and finishing. The engine thread owns one EngineCore; tests drive it
 * directly with a fake runner.
 */
import { IncrementalDetokenizer } from "../text/detokenizer.ts";
import { EngineError, StepFailure } from "../common/engine-error.ts";
import { BlockPool } from "../kv-cache/block-pool.ts";
import { KvCacheManager } from "../kv-cache/kv-cache-manager.ts";
import { checkRequest, type CheckedRequest } from "./check-request.ts";
import type { EngineOutput, EngineRequest, RequestUsage } from "../common/request.ts";
import type { StepRunner, StepSequence } from "../runner/step-runner.ts";
import { logitsNeedOf, type LogitsNeed } from "../sampling/sampler.ts";
import type { SequenceRows } from "../runner/step-rows.ts";
import { OutputProcessor } from "./output-processor.ts";
import { type ScheduledSequence, Scheduler } from "./scheduler.ts";
import { Sequence } from "./sequence.ts";
import { EngineStats, type LoraState } from "./engine-stats.ts";
import type { TextCodec } from "../text/text-codec.ts";
import { GrammarError } from "../common/grammar-spec.ts";
import { AdapterSlots, type ServedAdapter } from "./adapter-slots.ts";
import type { LoraAdapter } from "../../models/index.ts";
import type { GrammarSession } from "../common/grammar-session.ts";

export interface EngineCoreOptions {
  blockSize: number;
  numBlocks: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  maxModelLen: number;
  eosTokenIds: readonly number[];
  /** How long a batch-tier request may wait before it is admitted as standard. */
  batchMaxWaitMs?: number;
  /** At most this many batch-tier sequences per step while higher tiers are about. */
  batchStepSeqs?: number;
  enablePrefixCaching?: boolean;
  /** Constrains outputs to requests' grammars; none: such requests are refused. */
  grammar?: GrammarSession | null;
}

export class EngineCore {
  readonly scheduler: Scheduler;
  readonly kv: KvCacheManager;
  readonly stats = new EngineStats();
  /** The runner's LoRA slots, filled on demand; null: its graph has none. */
  readonly adapterSlots: AdapterSlots | null;
  /** The LoRA adapters requests may name, by name (more than there are slots, as may be). */
  private readonly adapters = new Map<string, ServedAdapter>();
  private numAdapterLoads = 0;
  private readonly pendingAdds: Sequence[] = [];
  private readonly pendingAborts = new Set<string>();
  private readonly sequences = new Map<string, Sequence[]>();
  /** Copies 1..n-1 of a request, waiting for copy 0's prompt to be computed so they can share its blocks. */
  private readonly pendingForks = new Map<string, Sequence[]>();
  /** Requests whose grammar failed to compile, to fail at the next step. */
  private readonly grammarFailures = new Map<string, EngineError>();
  /** Called when a request becomes ready outside a step (its grammar compiled), so an idle loop runs again. */
  onWake: (() => void) | null = null;
  private readonly outputs: OutputProcessor;

  /** @param codec turns tokens into text; without one, outputs carry token ids only. */
  constructor(private readonly runner: StepRunner, private readonly options: EngineCoreOptions, private readonly codec: TextCodec | null = null) {
    this.kv = new KvCacheManager(new BlockPool(options.numBlocks), options.blockSize, options.enablePrefixCaching ?? true);
    this.adapterSlots = runner.lora ? new AdapterSlots(runner.lora) : null;
    this.scheduler = new Scheduler(this.kv, options, this.adapterSlots);
    this.outputs = new OutputProcessor(this.kv, this.stats, { promptComputed: (seq) => this.forkCopies(seq), finish: (seq) => this.finish(seq) }, {
      vocabSize: runner.vocabSize, hiddenSize: runner.hiddenSize, maxModelLen: options.maxModelLen, eosTokenIds: options.eosTokenIds,
    }, codec);
    const grammar = options.grammar;
    if (grammar?.state) this.stats.grammarState = () => grammar.state!();
    if (this.adapterSlots) this.stats.loraState = () => this.loraState();
  }

  /**
   * Serves a LoRA adapter under `name`: requests naming it run under it. Nothing is written to
   * a slot until a request needs it. Throws EngineError for an engine without slots, a rank the
   * slots can't hold, or a name already served.
   */
  loadAdapter(name: string, weights: LoraAdapter): void {
    const slots = this.runner.lora;
    if (!slots) throw new EngineError("INVALID_REQUEST", "this engine has no LoRA slots: start it with --enable-lora (and --max-loras, --max-lora-rank)");
    if (this.adapters.has(name)) throw new EngineError("INVALID_REQUEST", `a LoRA adapter named ${name} is already loaded`, "lora_name");
    if (weights.maxRank > slots.rank) {
      throw new EngineError("INVALID_REQUEST", `the LoRA adapter ${name} has rank ${weights.maxRank}, above --max-lora-rank ${slots.rank}; restart with a larger --max-lora-rank`, "lora_path");
    }
    this.adapters.set(name, { name, cacheKey: `lora:${name}#${++this.numAdapterLoads}`, weights });
  }

  /** Stops serving an adapter: new requests can't name it; those already admitted finish under it. Returns whether it was loaded. */
  unloadAdapter(name: string): boolean {
    const adapter = this.adapters.get(name);
    if (!adapter) return false;
    this.adapters.delete(name);
    this.adapterSlots?.release(adapter, this.scheduler.slotsInUse());
    return true;
  }

  /** The adapters' state for the lora_requests_info gauge: those of running and of waiting sequences, and the slots. */
  private loraState(): LoraState {
    const namesOf = (seqs: readonly Sequence[]) => [...new Set(seqs.flatMap((seq) => (seq.adapter ? [seq.adapter.name] : [])))];
    return {
      maxLoras: this.adapterSlots!.numSlots, running: namesOf(this.scheduler.running), waiting: namesOf(this.scheduler.waiting),
      loaded: [...this.adapters.keys()], inSlots: this.adapterSlots!.names, numSlotLoads: this.adapterSlots!.numLoads,
    };
  }

  /** Checks a request (checkRequest) and queues it for the next step; throws EngineError for requests that can never run. */
  add(unchecked: EngineRequest): void {
    this.admit(checkRequest(unchecked, { ...this.options, vocabSize: this.runner.vocabSize }));
  }

  /**
   * Queues a request already checked against this engine's limits. NOTE: the engine thread's
   * path: the facade checks each request once, in its caller's thread, so that a request that
   * can never run is refused at once; the thread takes it as checked.
   */
  admit(request: CheckedRequest): void {
    if (this.sequences.has(request.requestId)) throw new EngineError("INVALID_REQUEST", `request id ${request.requestId} is already in use`);
    if (request.grammar && !this.options.grammar) throw new EngineError("INVALID_REQUEST", "this engine has no grammar engine, so it can't constrain outputs", "response_format");
    // NOTE: a grammar ends with a stop token, ignore_eos or not.
    const stop = new Set([...(request.stopTokenIds ?? []), ...(request.ignoreEos && !request.grammar ? [] : this.options.eosTokenIds)]);
    const n = request.n ?? 1;
    const adapter = request.adapter === undefined ? null : this.adapters.get(request.adapter);
    if (adapter === undefined) throw new EngineError("INVALID_REQUEST", `no LoRA adapter named ${request.adapter} is loaded`, "model");
    const seqs = Array.from({ length: n }, (_, index) => this.makeSequence(request, index, stop));
    for (const seq of seqs) seq.adapter = adapter;
    this.sequences.set(request.requestId, seqs);
    if (n > 1) this.pendingForks.set(request.requestId, seqs.slice(1));
    if (request.grammar) this.openGrammar(request.requestId, request.grammar, seqs);
    else this.pendingAdds.push(seqs[0]);
  }

  /** The request waits, unscheduled, while its grammar compiles (other requests' steps go on); it then joins the queue, or fails. */
  private openGrammar(requestId: string, spec: NonNullable<EngineRequest["grammar"]>, seqs: Sequence[]): void {
    const grammar = this.options.grammar!;
    for (const seq of seqs) seq.grammarKey = `${requestId}#${seq.index}`;
    const settled = (failure: EngineError | null) => {
      if (this.sequences.get(requestId) !== seqs) return; // aborted meanwhile
      if (failure) this.grammarFailures.set(requestId, failure);
      else this.pendingAdds.push(seqs[0]);
      this.onWake?.();
    };
    // NOTE: the grammar session bounds each compile (--grammar-compile-timeout) and says so in its GrammarError.
    Promise.all(seqs.map((seq) => grammar.open(seq.grammarKey!, spec))).then(() => settled(null), (err: unknown) => settled(
      err instanceof EngineError ? err : err instanceof GrammarError ? new EngineError("INVALID_REQUEST", `invalid grammar: ${err.message}`, err.param)
        : new EngineError("RUNTIME_FAILED", `the grammar engine failed: ${err instanceof Error ? err.message : String(err)}`),
    ));
  }

  private makeSequence(request: CheckedRequest, index: number, stop: ReadonlySet<number>): Sequence {
    const seq = Sequence.fromRequest(request, index, stop);
    if (this.codec) {
      const codec = this.codec;
      seq.detokenizer = new IncrementalDetokenizer((ids, skip) => codec.decode(ids, skip), {
        skipSpecialTokens: request.skipSpecialTokens ?? true,
        stop: request.stop,
        includeStopStrInOutput: request.includeStopStrInOutput,
        promptTokenIds: request.promptTokenIds,
      });
    }
    if (request.promptLogprobs !== undefined && index === 0) seq.promptLogprobs = new Map();
    return seq;
  }

  /** Marks a request aborted; its blocks are freed at the start of the next step. */
  abort(requestId: string): void {
    if (this.sequences.has(requestId)) this.pendingAborts.add(requestId);
  }

  get hasWork(): boolean {
    return this.scheduler.hasWork || this.pendingAdds.length > 0 || this.pendingAborts.size > 0 || this.grammarFailures.size > 0;
  }

  async step(): Promise<EngineOutput[]> {
    const outputs = this.applyPending();
    const [failed] = this.grammarFailures;
    if (failed) {
      this.grammarFailures.delete(failed[0]);
      this.failRequests([failed[0]], failed[1], outputs);
    }
    const { scheduled, preempted } = this.scheduler.schedule();
    this.stats.numPreemptions += preempted.length;
    if (scheduled.length > 0) {
      const needs = scheduled.map(({ seq }) => stepNeedOf(seq));
      // NOTE: the grammar threads accept the last tokens and compute the next masks while the model runs.
      const masking = this.startMasks(scheduled);
      const hidden = scheduled.some(({ seq }) => seq.pooling !== null);
      const logits = await this.runner.step(scheduled.map(withSlot), { fullLogits: needs.includes("logits"), probs: needs.includes("probs"), hidden })
        .catch((err: unknown) => this.failStep(scheduled, err, outputs));
      const { masks, failed: failedAlone } = await masking();
      this.processAll(scheduled, logits, needs, outputs, masks, failedAlone);
    }
    // NOTE: also after a step that only aborted, so the gauges don't keep a freed request.
    this.stats.observeStep(this.scheduler, this.kv);
    return outputs;
  }

  /**
   * Asks the grammar session for the masks of the constrained sequences that sample this step;
   * the returned function waits for them. NOTE: the session answers every row within its
   * deadline; a row without a mask fails its own request (`failed`), never the step.
   */
  private startMasks(scheduled: ScheduledSequence[]): () => Promise<{ masks: Map<Sequence, Int32Array>; failed: Map<string, unknown> }> {
    const masks = new Map<Sequence, Int32Array>();
    const failed = new Map<string, unknown>();
    const constrained = scheduled.filter(({ seq, numNewTokens }) => seq.grammarKey !== null && seq.numComputedTokens + numNewTokens >= seq.numTokens);
    if (constrained.length === 0) return async () => ({ masks, failed });
    const maskStart = performance.now();
    let maskEnd = maskStart;
    const masking = this.options.grammar!.advance(constrained.map(({ seq }) => ({ seqKey: seq.grammarKey!, tokens: seq.grammarTokens.splice(0) })))
      .finally(() => (maskEnd = performance.now()));
    return async () => {
      const ranMs = performance.now();
      const rows = await masking;
      this.stats.numGrammarSteps++;
      this.stats.grammarMaskSeconds += (maskEnd - maskStart) / 1000;
      this.stats.grammarWaitSeconds += Math.max(0, maskEnd - ranMs) / 1000;
      constrained.forEach(({ seq }, i) => {
        const row = rows[i];
        if ("error" in row) failed.set(seq.requestId, row.error);
        else if (row.rejected) failed.set(seq.requestId, new Error("the grammar refused a token sampled under its own mask"));
        else masks.set(seq, row.mask);
      });
      return { masks, failed };
    };
  }

  /**
   * Applies the step's rows to each sequence through the output processor. A request whose
   * processing throws (a fault in sampling or text, never the user's input) fails alone: the
   * others keep their outputs.
   */
  private processAll(scheduled: ScheduledSequence[], logits: SequenceRows[], needs: LogitsNeed[], outputs: EngineOutput[], masks: ReadonlyMap<Sequence, Int32Array>, failed: Map<string, unknown>): void {
    scheduled.forEach((entry, i) => {
      if (failed.has(entry.seq.requestId)) return;
      try {
        const output = this.outputs.process(entry, logits[i], needs[i], masks.get(entry.seq) ?? null);
        if (output) outputs.push(output);
      } catch (err) {
        failed.set(entry.seq.requestId, err);
      }
    });
    if (failed.size === 0) return;
    const delivered = outputs.filter((output) => !failed.has(output.requestId));
    this.failRequests([...failed.keys()], [...failed.values()][0], delivered, failed);
  }

  /** Ends every request with a sequence in the failed step, frees their blocks, and says which. */
  private failStep(scheduled: ScheduledSequence[], cause: unknown, outputs: EngineOutput[]): never {
    this.failRequests([...new Set(scheduled.map(({ seq }) => seq.requestId))], cause, outputs);
  }

  private failRequests(requestIds: string[], cause: unknown, outputs: EngineOutput[], causes: ReadonlyMap<string, unknown> = new Map()): never {
    const usages = new Map<string, RequestUsage>();
    for (const requestId of requestIds) {
      this.pendingForks.delete(requestId);
      const seqs = this.sequences.get(requestId) ?? [];
      for (const seq of seqs) if (seq.status !== "finished") this.scheduler.finish(seq);
      this.closeGrammars(seqs);
      if (seqs.length > 0) usages.set(requestId, usageOf(seqs));
      this.sequences.delete(requestId);
    }
    this.stats.observeStep(this.scheduler, this.kv);
    throw new StepFailure(requestIds, cause, outputs, usages, causes);
  }

  private closeGrammars(seqs: readonly Sequence[]): void {
    closeGrammarsOf(this.options.grammar, seqs);
  }

  checkIntegrity(): void {
    this.kv.pool.checkIntegrity();
  }

  private applyPending(): EngineOutput[] {
    const outputs: EngineOutput[] = [];
    for (const seq of this.pendingAdds.splice(0)) this.scheduler.add(seq);
    for (const requestId of this.pendingAborts) {
      this.pendingForks.delete(requestId);
      const seqs = this.sequences.get(requestId) ?? [];
      const open = seqs.filter((seq) => seq.status !== "finished");
      this.closeGrammars(seqs);
      open.forEach((seq, i) => {
        this.scheduler.finish(seq);
        const last = i === open.length - 1;
        outputs.push({ requestId, index: seq.index, newTokenIds: [], text: "", finishReason: "abort", ...(last ? { usage: usageOf(seqs) } : {}) });
      });
      this.sequences.delete(requestId);
    }
    this.pendingAborts.clear();
    return outputs;
  }

  /** Once copy 0 of an n > 1 request has its prompt computed, the other copies share its full blocks. */
  private forkCopies(parent: Sequence): void {
    const copies = this.pendingForks.get(parent.requestId);
    if (!copies || parent.index !== 0) return;
    this.pendingForks.delete(parent.requestId);
    for (const copy of copies) {
      this.kv.fork(parent, copy);
      copy.numCachedTokens = parent.numCachedTokens;
    }
    this.scheduler.addFirst(copies);
  }

  /** Finishes one sequence; once its request has no sequence left, returns the request's usage. */
  private finish(seq: Sequence): RequestUsage | null {
    this.scheduler.finish(seq);
    this.closeGrammars([seq]);
    this.stats.observeFinish(seq);
    const siblings = this.sequences.get(seq.requestId) ?? [];
    if (!siblings.every((s) => s.status === "finished")) return null;
    this.sequences.delete(seq.requestId);
    return usageOf(siblings);
  }
}

/** Frees the grammar matchers of sequences that are done. */
function closeGrammarsOf(grammar: GrammarSession | null | undefined, seqs: readonly Sequence[]): void {
  for (const seq of seqs) {
    if (seq.grammarKey === null || !grammar) continue;
    grammar.close(seq.grammarKey);
    seq.grammarKey = null;
  }
}

/** What a request used, from its sequences: the prompt once, and every sequence's tokens. */
function usageOf(seqs: readonly Sequence[]): RequestUsage {
  return {
    numPromptTokens: seqs[0].numPromptTokens,
    numCachedPromptTokens: seqs[0].numCachedTokens ?? 0,
    numCompletionTokens: seqs.reduce((sum, s) => sum + s.outputTokenIds.length, 0),
  };
}


/**
 * What the step must fetch for this sequence, decided here once: the step fetches by it and
 * the sampler reads by it. Prompt logprobs read every prompt row's raw logits; otherwise the
 * sampling params say.
 */
function stepNeedOf(seq: Sequence): LogitsNeed {
  if (seq.pooling) return "top";
  return seq.promptLogprobs && seq.numComputedTokens < seq.numPromptTokens ? "logits" : logitsNeedOf(seq.sampling, seq.grammarKey !== null);
}

/** A scheduled sequence as the runner takes it, with its LoRA slot when it runs under an adapter. */
function withSlot(scheduled: ScheduledSequence): StepSequence {
  const step = toStepSequence(scheduled);
  return scheduled.seq.loraSlot === 0 ? step : { ...step, loraSlot: scheduled.seq.loraSlot };
}

function toStepSequence({ seq, numNewTokens }: ScheduledSequence): StepSequence {
  const start = seq.numComputedTokens;
  const reachesEnd = start + numNewTokens === seq.numTokens;
  const invTemperature = seq.sampling.temperature > 0 ? 1 / seq.sampling.temperature : 1;
  if (seq.pooling) {
    // No logits rows: mean pooling reads every row's hidden state, last pooling the prompt's last one.
    const hiddenFrom = seq.pooling === "mean" ? 0 : reachesEnd ? numNewTokens - 1 : numNewTokens;
    return { tokenIds: seq.tokensIn(start, start + numNewTokens), numPastTokens: start, blockTable: seq.blockIds, logitsFrom: numNewTokens, hiddenFrom };
  }
  if (seq.promptLogprobs && start < seq.numPromptTokens) {
    return { tokenIds: seq.tokensIn(start, start + numNewTokens), numPastTokens: start, blockTable: seq.blockIds, logitsFrom: 0, invTemperature };
  }
  return {
    tokenIds: seq.tokensIn(start, start + numNewTokens),
    numPastTokens: start,
    blockTable: seq.blockIds,
    logitsFrom: reachesEnd ? numNewTokens - 1 : numNewTokens,
    invTemperature,
  };
}
