/**
 * What ONNX Runtime's fp32 GEMM alone reaches on this machine, at the decode shape
 * (M = batch rows, K = hidden, N = intermediate), in the session options the runner uses:
 *
 * - cached: one weight [N, K] multiplied again and again, so it stays in the caches (the
 *   rate the decode_gemm_share is measured against);
 * - dram: a chain of distinct weights, 512 MiB of them, so every step streams its weights
 *   from memory as a model's decode step does.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createSession, floatTensor } from "../engine/runner/onnx-host/onnx-session.ts";
import { DataType, OnnxGraph } from "../models/graph/onnx-graph.ts";
import { Prng } from "../models/prng.ts";

export interface GemmRate {
  m: number;
  k: number;
  n: number;
  cachedGflops: number;
  dramGflops: number;
}

const DRAM_BYTES = 512 * 1024 * 1024;

export async function measureGemmRate(m: number, k: number, n: number, intraOpThreads?: number): Promise<GemmRate> {
  const cachedGflops = await rate(m, k, n, 1, 20, intraOpThreads);
  const pairs = Math.max(1, Math.round(DRAM_BYTES / (2 * n * k * 4)));
  const dramGflops = await rate(m, k, n, pairs, 3, intraOpThreads);
  return { m, k, n, cachedGflops, dramGflops };
}

/** GFLOP/s of `runs` runs of a chain of `pairs` × (x·Aᵀ: [M,K]→[M,N], then ·Bᵀ: back to [M,K]). */
async function rate(m: number, k: number, n: number, pairs: number, runs: number, intraOpThreads?: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), "tokenmill-gemm-"));
  try {
    const g = new OnnxGraph(join(dir, "gemm.onnx.data"));
    const noise = filler(new Prng(3), n * k);
    let x = g.input("x", DataType.FLOAT, [m, k]);
    for (let i = 0; i < pairs; i++) {
      x = g.op("Gemm", [x, g.weight(`a${i}`, noise, [n, k])], { transB: 1, alpha: { f: 1 / Math.sqrt(k) } });
      x = g.op("Gemm", [x, g.weight(`b${i}`, noise, [k, n])], { transB: 1, alpha: { f: 1 / Math.sqrt(n) } });
    }
    g.output("y", x, DataType.FLOAT, [m, k]);
    const path = join(dir, "gemm.onnx");
    writeFileSync(path, g.finish("gemm"));
    const session = await createSession(path, { device: "cpu", intraOpThreads });
    try {
      const feeds = { x: floatTensor(filler(new Prng(4), m * k), [m, k]) };
      await session.run(feeds);
      const started = performance.now();
      for (let r = 0; r < runs; r++) await session.run(feeds);
      const seconds = (performance.now() - started) / 1000 / runs;
      return (2 * 2 * pairs * m * n * k) / seconds / 1e9;
    } finally {
      await session.release();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function filler(rng: Prng, length: number): Float32Array {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = rng.next() - 0.5;
  return out;
}
