/** `npm run bench` as a user runs it: an in-process tokenmill with every comparison, and a remote endpoint. */
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../server/serve.ts";
import { runCli, runCliAsync } from "../helpers/cli.ts";
import { startTestServer } from "../helpers/server.ts";

const SMALL = ["--num-prompts", "4", "--input-len", "16", "--output-len", "8", "--ignore-eos", "--kv-cache-memory", "64MiB"];

describe("tokenmill bench", () => {
  let server: RunningServer;
  beforeAll(async () => (server = await startTestServer()));
  afterAll(async () => server.close());

  it("reports vLLM's metrics, the ratios to the limit, to one-at-a-time serving and to another quantization, a sweep and its plot", () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-bench-"));
    const { status, stdout, stderr } = runCli([
      "bench", ...SMALL, "--max-concurrency", "2", "--compare-limit", "--compare-sequential", "--quantization", "int4", "--compare-quantization", "none", "--rounds", "1",
      "--sweep-concurrency", "1,2", "--plot", join(dir, "sweep.svg"), "--save-result", join(dir, "result.json"),
    ]);
    expect(status, stderr).toBe(0);
    expect(stdout).toContain("Output token throughput (tok/s)");
    expect(stdout).toMatch(/server \/ limit = \d/);
    const result = JSON.parse(readFileSync(join(dir, "result.json"), "utf8"));
    expect(result).toMatchObject({ completed: 4, failed: 0, total_output_tokens: 32, total_input_tokens: 64, max_concurrency: 2 });
    for (const key of ["mean_ttft_ms", "median_tpot_ms", "p90_itl_ms", "p99_e2el_ms", "request_throughput", "output_throughput", "total_token_throughput"]) {
      expect(result[key], key).toBeGreaterThan(0);
    }
    expect(result.server_to_limit_ratio).toBeGreaterThan(0);
    for (const key of ["limit_decode_step_ms", "decode_matmul_gflops", "gemm_gflops", "gemm_dram_gflops", "decode_gemm_share"]) expect(result[key], key).toBeGreaterThan(0);
    expect(stdout).toMatch(/decode_gemm_share = \d/);
    expect(result.server_to_sequential_ratio).toBeGreaterThan(0);
    expect(result.compare_quantization).toBe("none");
    expect(result.quantization_speedup).toBeGreaterThan(0);
    expect(result.compare_quantization_mean_ttft_ms).toBeGreaterThan(0);
    expect(result.quantization_ttft_speedup).toBeGreaterThan(0);
    expect(stdout).toMatch(/quantization_speedup = \d/);
    expect(result.sweep.map((p: { max_concurrency: number }) => p.max_concurrency)).toEqual([1, 2]);
    const svg = readFileSync(join(dir, "sweep.svg"), "utf8");
    expect(svg.startsWith("<svg")).toBe(true);
  });

  it("--peer llama.cpp: converts the checkpoint to GGUF, checks the F32 conversion against tokenmill's greedy tokens, and reports peer_ratio from one run", () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-bench-peer-"));
    const { status, stdout, stderr } = runCli(["bench", ...SMALL, "--max-concurrency", "2", "--rounds", "1", "--peer", "llama.cpp", "--save-result", join(dir, "result.json")]);
    expect(status, stderr).toBe(0);
    expect(stdout).toContain("peer check: llama.cpp on the F32 GGUF gives tokenmill's first 8 greedy tokens");
    expect(stdout).toMatch(/peer_ratio = \d/);
    const result = JSON.parse(readFileSync(join(dir, "result.json"), "utf8"));
    expect(result.peer).toMatchObject({ name: "llama.cpp", gguf_type: "F32", completed: 4 });
    expect(result.peer.output_throughput).toBeGreaterThan(0);
    expect(result.peer_ratio).toBeCloseTo(result.output_throughput / result.peer.output_throughput, 6);
    const int8 = runCli(["bench", ...SMALL, "--max-concurrency", "2", "--rounds", "1", "--quantization", "int8", "--peer", "llama.cpp", "--save-result", join(dir, "int8.json")]);
    expect(int8.status, int8.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(dir, "int8.json"), "utf8")).peer).toMatchObject({ gguf_type: "Q8_0", completed: 4 });
    const refused = runCli(["bench", ...SMALL, "--peer", "llama.cpp", "--endpoint", "chat"]);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(/--peer llama.cpp runs the model in this process on completions with token-id prompts/);
  });

  it("loads any OpenAI-compatible endpoint with --base-url, through the chat API too", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-bench-"));
    const { status, stderr } = await runCliAsync([
      "bench", ...SMALL, "--base-url", server.url, "--model", "tokenmill-tiny-qwen3", "--endpoint", "chat",
      "--request-rate", "20", "--goodput", "ttft:60000,tpot:60000", "--save-result", join(dir, "remote.json"),
    ]);
    expect(status, stderr).toBe(0);
    const result = JSON.parse(readFileSync(join(dir, "remote.json"), "utf8"));
    expect(result).toMatchObject({ completed: 4, failed: 0, total_output_tokens: 32, endpoint: "chat" });
    expect(result.request_goodput).toBeGreaterThan(0);
  });

  it("benchmarks embeddings: input tokens a second and E2EL, batched against one at a time", () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-bench-"));
    const { status, stdout, stderr } = runCli([
      "bench", ...SMALL, "--endpoint", "embeddings", "--max-concurrency", "4", "--compare-sequential", "--rounds", "1", "--save-result", join(dir, "embed.json"),
    ]);
    expect(status, stderr).toBe(0);
    expect(stdout).toContain("Total token throughput (tok/s)");
    expect(stdout).not.toContain("TTFT");
    const result = JSON.parse(readFileSync(join(dir, "embed.json"), "utf8"));
    expect(result).toMatchObject({ completed: 4, failed: 0, total_input_tokens: 64, total_output_tokens: 0, endpoint: "embeddings", throughput_measure: "total_token_throughput" });
    expect(result.total_token_throughput).toBeGreaterThan(0);
    expect(result.p99_e2el_ms).toBeGreaterThan(0);
    expect(result.server_to_sequential_ratio).toBeGreaterThan(0);
    expect(runCli(["bench", "--endpoint", "embeddings", "--compare-limit"]).stderr).toMatch(/--compare-limit measures generation/);
  });

  it("--compare-lora: adapters disabled, empty slots and adapters mixed, on two servers, round by round", () => {
    const dir = mkdtempSync(join(tmpdir(), "tokenmill-bench-"));
    const { status, stdout, stderr } = runCli(["bench", ...SMALL, "--max-concurrency", "4", "--rounds", "2", "--compare-lora", "2", "--max-lora-rank", "4", "--save-result", join(dir, "lora.json")]);
    expect(status, stderr).toBe(0);
    expect(stdout).toMatch(/LoRA: 4 requests \(16 in, 8 out\) at concurrency 4, 2 adapters of rank 4, 2 rounds/);
    expect(stdout).toMatch(/empty \/ disabled = \d+\.\d{3}; mixed \/ empty = \d+\.\d{3}/);
    const result = JSON.parse(readFileSync(join(dir, "lora.json"), "utf8"));
    expect(result.rounds).toHaveLength(2);
    for (const round of result.rounds) for (const arm of ["disabled", "empty", "mixed"]) expect(round[arm]).toBeGreaterThan(0);
    expect(runCli(["bench", "--compare-lora", "2", "--base-url", "http://127.0.0.1:9/v1"]).stderr).toMatch(/--compare-lora serves the model in this process/);
  });
});
