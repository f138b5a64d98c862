/** The decoder's building blocks as ONNX subgraphs on flattened token rows. */
import type { ModelConfig, RopeScaling } from "../config.ts";
import { DataType, type OnnxGraph } from "./onnx-graph.ts";
import { bitsOf, quantizeBlockwise, type Quantization } from "./quantize.ts";

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
}

export const FLOAT_LINEARS: LinearOptions = { quantization: "none", blockSize: 32 };

/**
 * A Hugging Face Linear (weight [out, in], y = x Wᵀ + b) on [N, in] rows: a Gemm, or a
 * com.microsoft MatMulNBits over block-quantized weights, with accuracy_level 4 so that ORT
 * quantizes the activations to int8 and runs its integer (VNNI) kernels.
 */
export function linear(g: OnnxGraph, weights: WeightSource, x: string, prefix: string, bias: boolean, options: LinearOptions = FLOAT_LINEARS): string {
  const b = bias ? addWeight(g, weights, `${prefix}.bias`) : null;
  if (options.quantization === "none") {
    const w = addWeight(g, weights, `${prefix}.weight`);
    return g.op("Gemm", b ? [x, w, b] : [x, w], { transB: 1 });
  }
  const { data, shape: [n, k] } = weights.read(`${prefix}.weight`);
  const y = quantizedMatMul(g, x, `${prefix}.weight`, data, n, k, bitsOf(options.quantization), options.blockSize);
  return b ? g.op("Add", [y, b]) : y;
}

/** x Wᵀ for a float weight [n, k], stored block-quantized and computed by MatMulNBits with int8 activations. */
export function quantizedMatMul(g: OnnxGraph, x: string, name: string, weight: Float32Array, n: number, k: number, bits: 4 | 8, blockSize: number): string {
  const q = quantizeBlockwise(weight, n, k, bits, blockSize);
  const packed = g.weight(`${name}.q${bits}`, q.packed, [n, q.numBlocks, q.blobSize], DataType.UINT8);
  const scales = g.weight(`${name}.scales`, q.scales, [n * q.numBlocks]);
  return g.microsoftOp("MatMulNBits", [x, packed, scales], { K: k, N: n, bits, block_size: blockSize, accuracy_level: 4 });
}

/** cos and sin of position × inv_freq, duplicated over both halves: [N, 1, head_dim]. */
export function ropeTables(g: OnnxGraph, config: ModelConfig, positionIds: string): { cos: string; sin: string } {
  const invFreq = ropeInvFreq(config.headDim, config.ropeTheta, config.ropeScaling);
  const positions = g.op("Cast", [g.op("Reshape", [positionIds, g.constInt64([-1, 1, 1])])], { to: 1 });
  const half = g.op("Mul", [positions, g.constFloat(invFreq, [1, 1, invFreq.length])]);
  const angles = g.op("Concat", [half, half], { axis: -1 });
  return { cos: g.op("Cos", [angles]), sin: g.op("Sin", [angles]) };
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
