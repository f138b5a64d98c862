/**
 * The ONNX Runtime WebGPU kernel measurements behind the README's GPU section, each on a
 * one-op (or few-op) graph: `node --import tsx bench/webgpu-kernels.ts`.
 *
 * 1. PagedAttention on a 39-token prefill (4 heads over 2 KV heads of 32, blocks of 16) against
 *    a float64 reference: as one query of 39 tokens, and as 39 one-token rows (packed-layout.ts).
 * 2. TopK over [K, 151936] against chunkedTopK, the device graph's top-20, at K = 1 and 32.
 */
import { DataType, OnnxGraph } from "../models/graph/onnx-graph.ts";
import { chunkedTopK } from "../models/graph/decoder-graph.ts";
import { float16ZerosGraph } from "../models/index.ts";
import { createSession, floatTensor, int64Tensor, ort } from "../engine/runner/onnx-host/onnx-session.ts";

const H = 4, KH = 2, D = 32, NB = 16, BS = 16, L = 39;
const BLOCKS = [5, 9, 2, 11];

function pagedAttentionGraph(): Uint8Array {
  const g = new OnnxGraph("unused.data");
  const half = (x: string) => g.op("Cast", [x], { to: DataType.FLOAT16 });
  const [q, k, v] = [["q", H], ["k", KH], ["v", KH]].map(([name, heads]) => half(g.input(name as string, DataType.FLOAT, ["T", (heads as number) * D])));
  const caches = ["kc", "vc"].map((name) => g.input(name, DataType.FLOAT16, [NB, BS, KH, D]));
  const lengths = ["cu", "past"].map((name) => g.input(name, DataType.INT32, [name]));
  const table = g.input("bt", DataType.INT32, ["B", "M"]);
  const out = g.microsoftOp("PagedAttention", [q, k, v, ...caches, ...lengths, table], { num_heads: H, kv_num_heads: KH });
  g.output("out", g.op("Cast", [out], { to: DataType.FLOAT }), DataType.FLOAT, ["T", H * D]);
  return g.finish("paged_attention");
}

let seed = 1;
const uniform = (n: number) => Float32Array.from({ length: n }, () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1);

/** Causal attention of token t over keys 0..t in float64, [H·D]. */
function reference(Q: Float32Array, K: Float32Array, V: Float32Array, t: number): Float64Array {
  const out = new Float64Array(H * D);
  for (let h = 0; h < H; h++) {
    const kh = Math.floor(h / (H / KH));
    const scores = Array.from({ length: t + 1 }, (_, j) => {
      let dot = 0;
      for (let x = 0; x < D; x++) dot += Q[t * H * D + h * D + x] * K[j * KH * D + kh * D + x];
      return dot / Math.sqrt(D);
    });
    const max = Math.max(...scores);
    const weights = scores.map((s) => Math.exp(s - max));
    const sum = weights.reduce((a, b) => a + b);
    for (let x = 0; x < D; x++) out[h * D + x] = weights.reduce((acc, w, j) => acc + (w / sum) * V[j * KH * D + kh * D + x], 0);
  }
  return out;
}

async function pagedAttentionPrefill(): Promise<void> {
  const zeros = await createSession(float16ZerosGraph(), { device: "webgpu", preferredOutputLocation: "gpu-buffer" });
  const session = await createSession(pagedAttentionGraph(), { device: "webgpu" });
  const [Q, K, V] = [uniform(L * H * D), uniform(L * KH * D), uniform(L * KH * D)];
  for (const layout of ["one query of 39 tokens", "39 one-token rows"]) {
    const cache = async () => (await zeros.run({ shape: int64Tensor(BigInt64Array.from([NB, BS, KH, D], BigInt), [4]) })).zeros;
    const [kc, vc] = [await cache(), await cache()];
    const rows = layout.startsWith("one") ? 1 : L;
    const int32 = (values: number[], dims: number[]) => new ort.Tensor("int32", Int32Array.from(values), dims);
    const out = await session.run({
      q: floatTensor(Q, [L, H * D]), k: floatTensor(K, [L, KH * D]), v: floatTensor(V, [L, KH * D]), kc, vc,
      cu: int32(rows === 1 ? [0, L] : Array.from({ length: L + 1 }, (_, i) => i), [rows + 1]),
      past: int32(rows === 1 ? [0] : Array.from({ length: L }, (_, i) => i), [rows]),
      bt: int32(Array.from({ length: rows }, () => BLOCKS).flat(), [rows, BLOCKS.length]),
    });
    const got = out.out.data as Float32Array;
    const errors = Array.from({ length: L }, (_, t) => {
      const want = reference(Q, K, V, t);
      return Math.max(...Array.from(want, (w, x) => Math.abs(w - got[t * H * D + x])));
    });
    console.log(`PagedAttention, ${layout}: max error tokens 0-7 ${Math.max(...errors.slice(0, 8)).toExponential(1)}, tokens 8-38 ${Math.max(...errors.slice(8)).toExponential(1)}`);
    kc.dispose();
    vc.dispose();
  }
  await session.release();
  await zeros.release();
}

async function topK(): Promise<void> {
  const V = 151936;
  for (const variant of ["TopK", "chunkedTopK"]) {
    const g = new OnnxGraph("unused.data");
    const x = g.input("x", DataType.FLOAT, ["K", V]);
    const [values] = variant === "TopK" ? g.opN("TopK", [x, g.constInt64([20])], 2, { axis: -1 }) : [chunkedTopK(g, x, V, 20).values];
    g.output("y", values, DataType.FLOAT, ["K", 20]);
    const session = await createSession(g.finish(variant), { device: "webgpu" });
    for (const rows of [1, 32]) {
      const feeds = { x: floatTensor(uniform(rows * V), [rows, V]) };
      await session.run(feeds);
      const started = performance.now();
      await session.run(feeds);
      console.log(`${variant} over [${rows}, ${V}]: ${(performance.now() - started).toFixed(0)} ms`);
    }
    await session.release();
  }
}

await pagedAttentionPrefill();
await topK();
process.exit(0);
