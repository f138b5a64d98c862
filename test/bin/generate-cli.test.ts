/** `tokenmill generate` end to end on the real default model, checked against the reference forward pass. */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ensureDefaultModel } from "../../models/synthetic/default-model.ts";
import { readCheckpoint } from "../../models/checkpoint.ts";
import { ModelTokenizer } from "../../models/tokenizer.ts";
import { jsonLines, runCli } from "../helpers/cli.ts";
import { referenceFor } from "../helpers/runner.ts";

const PROMPT_IDS = [9707, 11, 1879];

function logSoftmaxAt(logits: Float32Array, tokenId: number): number {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  return logits[tokenId] - max - Math.log(sum);
}

function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

describe("tokenmill generate", () => {
  it("greedy --prompt-ids --json gives the reference's argmax tokens and log-softmax logprobs", () => {
    const { stdout, stderr, status } = runCli(["generate", "--prompt-ids", PROMPT_IDS.join(","), "--max-tokens", "10", "--temperature", "0", "--ignore-eos", "--json"]);
    expect(status, stderr).toBe(0);
    const [line] = jsonLines(stdout);
    const tokenIds = line.token_ids as number[];
    const logprobs = line.logprobs as number[];
    expect(tokenIds).toHaveLength(10);
    expect(logprobs).toHaveLength(10);

    const reference = referenceFor(ensureDefaultModel(), [...PROMPT_IDS, ...tokenIds]);
    tokenIds.forEach((tokenId, i) => {
      const logits = reference[PROMPT_IDS.length - 1 + i];
      expect(tokenId, `token ${i}`).toBe(argmax(logits));
      expect(logprobs[i]).toBeCloseTo(logSoftmaxAt(logits, tokenId), 3);
    });
    const tokenizer = ModelTokenizer.load(readCheckpoint(ensureDefaultModel()));
    expect(line.text).toBe(tokenizer.decode(tokenIds, true));
  });

  it("--prompts-file runs prompts concurrently and prints them in file order, each as if alone", () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-prompts-"));
    const prompts = ["Hello, world", "The capital of France is", "一二三四五六七八九十", "short"];
    writeFileSync(join(dir, "prompts.txt"), prompts.join("\n") + "\n");
    const common = ["--max-tokens", "8", "--temperature", "0", "--ignore-eos", "--json"];
    const batch = runCli(["generate", "--prompts-file", join(dir, "prompts.txt"), ...common]);
    expect(batch.status, batch.stderr).toBe(0);
    const lines = jsonLines(batch.stdout);
    expect(lines).toHaveLength(prompts.length);
    for (const [i, prompt] of prompts.entries()) {
      const alone = runCli(["generate", "--prompt", prompt, ...common]);
      expect(jsonLines(alone.stdout)[0].token_ids, prompt).toEqual(lines[i].token_ids);
    }
  });

  it("a seeded sampled run repeats exactly", () => {
    const args = ["generate", "--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "0.8", "--top-p", "0.9", "--seed", "5", "--json"];
    const first = jsonLines(runCli(args).stdout)[0];
    const second = jsonLines(runCli(args).stdout)[0];
    expect(second.token_ids).toEqual(first.token_ids);
  });

  it("bad flags fail with a clear message and exit 1", () => {
    const result = runCli(["generate", "--prompt-ids", "1,x,3"]);
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/--prompt-ids must be comma-separated token ids/);
    const missing = runCli(["generate", "--model", "/nonexistent/model", "--prompt", "hi"]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/does not exist/);
  });
});
