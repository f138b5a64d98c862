/**
 * The graph with LoRA slots against the independent reference forward pass on merged weights
 * (W + scale·B·A), per family, to 1e-4: a mixed batch where one row runs the base model and
 * the others each their own adapter, in one step, in prefill and decode; an empty slot, or a
 * step fed no slot at all, adds nothing; an adapter loaded over another replaces it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { OnnxRunner } from "../../engine/runner/onnx-host/onnx-runner.ts";
import { parseModelConfig } from "../../models/config.ts";
import { readLoraAdapter, type LoraModule } from "../../models/lora/adapter.ts";
import { writeRandomLoraAdapter } from "../../models/synthetic/lora-adapter.ts";
import { fullLogits, loadRunner, maxAbsDiff, referenceFor, referenceWithAdapter, seededTokens } from "../helpers/runner.ts";
import { FAMILY_MODELS, tinyCheckpoint } from "../helpers/tiny-models.ts";

const TOLERANCE = 1e-4;
const scratch = mkdtempSync(join(tmpdir(), "tokenmill-lora-graph-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe.each(FAMILY_MODELS.filter((spec) => ["llama-untied-bias", "mistral-window", "qwen3-qknorm"].includes(spec.name)))("LoRA slots on $name", (spec) => {
  const dir = tinyCheckpoint(spec);
  const base = parseModelConfig(spec.config, spec.name);
  const vocab = spec.config.vocab_size as number;
  let runner: OnnxRunner;
  afterAll(async () => runner?.release());

  const adapter = (seed: number, rank: number, targets?: LoraModule[]) => {
    const path = join(scratch, `${spec.name}-${seed}`);
    writeRandomLoraAdapter(path, base, { rank, alpha: 2 * rank, seed, targetModules: targets, std: 0.2 });
    return readLoraAdapter(path, base, `adapter-${seed}`);
  };

  it("runs the base model and two adapters in one batch, each row as the reference on its own merged weights, in prefill and decode", async () => {
    runner = await loadRunner(dir, 4, 96, undefined, { maxLoras: 2, maxLoraRank: 4 });
    const first = adapter(11, 4);
    const second = adapter(12, 2, ["q_proj", "v_proj", "o_proj", "down_proj"]);
    runner.lora!.load(1, first);
    runner.lora!.load(2, second);
    const tokens = [seededTokens(9, vocab, 1), seededTokens(9, vocab, 2), seededTokens(9, vocab, 3)];
    const expected = [referenceFor(dir, tokens[0]), referenceWithAdapter(dir, tokens[1], first), referenceWithAdapter(dir, tokens[2], second)];
    // The adapters change the logits, so the comparison below can fail.
    expect(maxAbsDiff(referenceFor(dir, tokens[1])[8], expected[1][8])).toBeGreaterThan(1e-2);
    const tables = [[1, 2, 3], [4, 5, 6], [7, 8, 9]];
    const prefill = await fullLogits(runner, tokens.map((t, b) => ({ tokenIds: t.slice(0, 6), numPastTokens: 0, blockTable: tables[b], logitsFrom: 5, loraSlot: b })));
    prefill.forEach((logits, b) => expect(maxAbsDiff(logits, expected[b][5]), `sequence ${b} prefill`).toBeLessThan(TOLERANCE));
    for (let p = 6; p < 9; p++) {
      const step = await fullLogits(runner, tokens.map((t, b) => ({ tokenIds: [t[p]], numPastTokens: p, blockTable: tables[b], logitsFrom: 0, loraSlot: b })));
      step.forEach((logits, b) => expect(maxAbsDiff(logits, expected[b][p]), `sequence ${b} position ${p}`).toBeLessThan(TOLERANCE));
    }
  });

  it("adds nothing from an empty or cleared slot, and a slot reloaded runs its new adapter", async () => {
    const tokens = seededTokens(7, vocab, 4);
    const plain = referenceFor(dir, tokens);
    runner.lora!.clear(2);
    const [cleared] = await fullLogits(runner, [{ tokenIds: tokens, numPastTokens: 0, blockTable: [10, 11], logitsFrom: 6, loraSlot: 2 }]);
    expect(maxAbsDiff(cleared, plain[6])).toBeLessThan(TOLERANCE);
    // A step whose rows use no slot is fed slots of width 0.
    const [none] = await fullLogits(runner, [{ tokenIds: tokens, numPastTokens: 0, blockTable: [14, 15], logitsFrom: 6 }]);
    expect(maxAbsDiff(none, plain[6])).toBeLessThan(TOLERANCE);
    const third = adapter(13, 3);
    runner.lora!.load(1, third);
    const [reloaded] = await fullLogits(runner, [{ tokenIds: tokens, numPastTokens: 0, blockTable: [12, 13], logitsFrom: 6, loraSlot: 1 }]);
    expect(maxAbsDiff(reloaded, referenceWithAdapter(dir, tokens, third)[6])).toBeLessThan(TOLERANCE);
    expect(() => runner.lora!.load(3, third)).toThrow(/LoRA slot 3 is not one of 1…2/);
    expect(() => runner.lora!.load(1, adapter(14, 8))).toThrow(/rank 8, above --max-lora-rank 4/);
  });
});
