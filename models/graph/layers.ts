/** The decoder's building blocks as ONNX subgraphs on flattened token rows. */
import type { ModelConfig, RopeScaling } from "../config.ts";
import { DataType, type OnnxGraph } from "./onnx-graph.ts";
import { bitsOf, quantizeBlockwise, type Quantization, type QuantizedWeight } from "./quantize.ts";

export interface NamedTensor {
  data: Float32Array;
  shape: number[];
}

/** Where the builder reads weights from, by Hugging Face name, as float32. */
export interface WeightSource {
  read(name: string): NamedTensor;
}

export function addWeight(g: OnnxGraph, weights: WeightSource, name: string): string {
  const { data, shape } = weights.read(name);
  return g.weight(name, data, shape);
}

/** x / sqrt(mean(x²) + eps) * w over the last axis. */
export function rmsNorm(g: OnnxGraph, weights: WeightSource, x: string, name: string, config: ModelConfig): string {
  return g.op("RMSNormalization", [x, addWeight(g, weights, name)], { axis: -1, epsilon: { f: config.rmsNormEps } });
}

/** How the big linears are stored and computed: float, or block-quantized through MatMulNBits. */
export interface LinearOptions {
  quantization: Quantization;
  blockSize: number;
  /** Run q/k/v as one matmul, and gate/up as one (fusedLinears). */
  fuse: boolean;
}

export const FLOAT_LINEARS: LinearOptions = { quantization: "none", blockSize: 32, fuse: false };

/**
 * A Hugging Face Linear (weight [out, in], y = x Wᵀ + b) on [N, in] rows: a Gemm, or a
 * com.microsoft MatMulNBits over block-quantized weights, with accuracy_level 4 so that ORT
 * quantizes the activations to int8 and runs its integer (VNNI) kernels.
 */
export function linear(g: OnnxGraph, weights: WeightSource, x: string, prefix: string, bias: boolean, options: LinearOptions = FLOAT_LINEARS): string {
  const b = bias ? addWeight(g, weights, `${prefix}.bias`) : null;
  return linearOf(g, x, `${prefix}.weight`, weights.read(`${prefix}.weight`), b, options);
}

/**
 * Linears that read the same input (q/k/v, gate/up) as one: their weights stacked by rows
 * into one [Σn, k] matmul, whose output is split back into one [N, n_i] tensor each.
 */
export function fusedLinears(g: OnnxGraph, weights: WeightSource, x: string, prefixes: string[], bias: boolean, options: LinearOptions): string[] {
  const parts = prefixes.map((prefix) => weights.read(`${prefix}.weight`));
  const k = parts[0].shape[1];
  if (parts.some((part) => part.shape[1] !== k)) throw new Error(`cannot fuse ${prefixes.join(", ")}: input widths ${parts.map((p) => p.shape[1]).join(", ")}`);
  const sizes = parts.map((part) => part.shape[0]);
  const n = sizes.reduce((a, b) => a + b, 0);
  const name = prefixes.join("+");
  const b = bias ? g.weight(`${name}.bias`, concatFloats(prefixes.map((prefix) => weights.read(`${prefix}.bias`).data)), [n]) : null;
  const y = linearOf(g, x, `${name}.weight`, { data: concatFloats(parts.map((part) => part.data)), shape: [n, k] }, b, options);
  return g.opN("Split", [y, g.constInt64(sizes)], sizes.length, { axis: -1 });
}

/** x Wᵀ (+ b) for a weight [n, k]: a Gemm on the float weight, or MatMulNBits on its blocks. */
function linearOf(g: OnnxGraph, x: string, name: string, weight: NamedTensor, b: string | null, options: LinearOptions): string {
  const [n, k] = weight.shape;
  if (options.quantization === "none") {
    const w = g.weight(name, weight.data, weight.shape);
    return g.op("Gemm", b ? [x, w, b] : [x, w], { transB: 1 });
  }
  const y = quantizedMatMul(g, x, name, weight.data, n, k, bitsOf(options.quantization), options.blockSize);
  return b ? g.op("Add", [y, b]) : y;
}

function concatFloats(arrays: Float32Array[]): Float32Array {
  const out = new Float32Array(arrays.reduce((sum, a) => sum + a.length, 0));
  let offset = 0;
  for (const a of arrays) {
    out.set(a, offset);
    offset += a.length;
  }
  return out;
}

/** A weight [n, k] stored as block-quantized codes and scales, in MatMulNBits' layout. */
export interface QuantizedInitializer {
  /** uint8 [n, blocks, blobSize]. */
  packed: string;
  /** float [n·blocks], MatMulNBits' layout; null when only gathered rows are read (an untied embedding). */
  scales: string | null;
  n: number;
  k: number;
  bits: 4 | 8;
  blockSize: number;
  /** The codes and scales themselves, for ops that want the scales in another shape. */
  values: QuantizedWeight;
}

/**
 * @param matMul whether MatMulNBits reads it (its scales are then written in that layout); an
 * untied embedding is only gathered from, and an initializer no node reads makes ORT warn at every load.
 */
export function addQuantizedWeight(
  g: OnnxGraph, name: string, weight: Float32Array, n: number, k: number, bits: 4 | 8, blockSize: number, matMul = true,
): QuantizedInitializer {
  const values = quantizeBlockwise(weight, n, k, bits, blockSize);
  const packed = g.weight(`${name}.q${bits}`, values.packed, [n, values.numBlocks, values.blobSize], DataType.UINT8);
  const scales = matMul ? g.weight(`${name}.scales`, values.scales, [n * values.numBlocks]) : null;
  return { packed, scales, n, k, bits, blockSize, values };
}

/** x Wᵀ through MatMulNBits, with accuracy_level 4: int8 activations, so ORT runs its integer (VNNI) kernels. */
export function matMulNBits(g: OnnxGraph, x: string, w: QuantizedInitializer): string {
  if (w.scales === null) throw new Error(`${w.packed} was written without MatMulNBits' scales`);
  return g.microsoftOp("MatMulNBits", [x, w.packed, w.scales], { K: w.k, N: w.n, bits: w.bits, block_size: w.blockSize, accuracy_level: 4 });
}

/** x Wᵀ for a float weight [n, k], stored block-quantized and computed by MatMulNBits with int8 activations. */
export function quantizedMatMul(g: OnnxGraph, x: string, name: string, weight: Float32Array, n: number, k: number, bits: 4 | 8, blockSize: number): string {
  return matMulNBits(g, x, addQuantizedWeight(g, name, weight, n, k, bits, blockSize));
}

/**
 * Rows `indices` of an int8 block-quantized table, dequantized, as […indices, k]: com.microsoft
 * GatherBlockQuantized reading the same codes MatMulNBits reads (its uint8 default zero
 * point, 128, is MatMulNBits' too), so a tied embedding and LM head share one copy.
 */
export function gatherQuantizedRows(g: OnnxGraph, w: QuantizedInitializer, indices: string): string {
  if (w.bits !== 8) throw new Error("gatherQuantizedRows reads int8 tables only");
  const { numBlocks, scales } = w.values;
  const blockScales = g.weight(`${w.packed}.scales.gather`, scales, [w.n, numBlocks, 1]);
  const rows = g.microsoftOp("GatherBlockQuantized", [w.packed, indices, blockScales], { gather_axis: 0, quantize_axis: 2, block_size: w.blockSize, bits: 8 });
  // [...indices, blocks, blockSize] → [...indices, k], dropping the last block's padding.
  const flat = g.op("Reshape", [rows, g.constInt64([-1, numBlocks * w.blockSize])]);
  return numBlocks * w.blockSize === w.k ? flat : g.op("Slice", [flat, g.constInt64([0]), g.constInt64([w.k]), g.constInt64([1])]);
}

/**
 * cos and sin of position × inv_freq, duplicated over both halves: [N, 1, head_dim]. The
 * angles are float32 in every graph (in float16, position 8000 would keep 3 digits); only
 * cos and sin take the graph's float type.
 */
export function ropeTables(g: OnnxGraph, config: ModelConfig, positionIds: string): { cos: string; sin: string } {
  const invFreq = ropeInvFreq(config.headDim, config.ropeTheta, config.ropeScaling);
  const positions = g.op("Cast", [g.op("Reshape", [positionIds, g.constInt64([-1, 1, 1])])], { to: DataType.FLOAT });
  const half = g.op("Mul", [positions, g.constFloat32(invFreq, [1, 1, invFreq.length])]);
  const angles = g.op("Concat", [half, half], { axis: -1 });
  return { cos: g.toFloatType(g.op("Cos", [angles])), sin: g.toFloatType(g.op("Sin", [angles])) };
}

/**
 * cos and sin of every position below max_position_embeddings × inv_freq, [positions, head_dim / 2]
 * weights (float16 by default): the rotary caches of com.microsoft PagedAttention, which rotates
 * q and k itself at each token's position, and of the RotaryEmbedding op. Computed in float64
 * here, rounded once.
 */
export function ropeCaches(g: OnnxGraph, config: ModelConfig, dataType: number = DataType.FLOAT16): { cos: string; sin: string } {
  const invFreq = ropeInvFreq(config.headDim, config.ropeTheta, config.ropeScaling);
  const numPositions = config.maxPositionEmbeddings;
  const cos = new Float32Array(numPositions * invFreq.length);
  const sin = new Float32Array(numPositions * invFreq.length);
  for (let p = 0; p < numPositions; p++) {
    for (let j = 0; j < invFreq.length; j++) {
      cos[p * invFreq.length + j] = Math.cos(p * invFreq[j]);
      sin[p * invFreq.length + j] = Math.sin(p * invFreq[j]);
    }
  }
  const dims = [numPositions, invFreq.length];
  return { cos: g.weight("rope.cos_cache", cos, dims, dataType), sin: g.weight("rope.sin_cache", sin, dims, dataType) };
}

/** HF's rotate-half RoPE on [N, heads, head_dim]: x·cos + rotate_half(x)·sin. */
export function rope(g: OnnxGraph, x: string, cos: string, sin: string): string {
  const [x1, x2] = g.opN("Split", [x], 2, { axis: -1, num_outputs: 2 });
  const rotated = g.op("Concat", [g.op("Neg", [x2]), x1], { axis: -1 });
  return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])]);
}

/** inv_freq[j] = θ^(-2j/d), adjusted for linear or Llama 3 scaling. */
export function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling): Float32Array {
  const invFreq = Float32Array.from({ length: headDim / 2 }, (_, j) => 1 / Math.pow(theta, (2 * j) / headDim));
  if (scaling.type === "linear") return invFreq.map((f) => f / scaling.factor);
  if (scaling.type !== "llama3") return invFreq;
  const { factor, lowFreqFactor = 1, highFreqFactor = 4, originalMaxPositionEmbeddings = 8192 } = scaling;
  const lowFreqWavelen = originalMaxPositionEmbeddings / lowFreqFactor;
  const highFreqWavelen = originalMaxPositionEmbeddings / highFreqFactor;
  return invFreq.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) return f;
    if (wavelen > lowFreqWavelen) return f / factor;
    const smooth = (originalMaxPositionEmbeddings / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}
