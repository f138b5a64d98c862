/**
 * Block-wise symmetric weight quantization in the layout of ONNX Runtime's com.microsoft
 * MatMulNBits: a Linear weight [N, K] becomes, per output row and per block of `blockSize`
 * inputs, `bits`-bit codes q = round(w / scale) + 2^(bits-1) (the op's default zero point) and
 * one float scale = max|w| / (2^(bits-1) - 1). Codes are packed [N, blocks, blockSize·bits/8]
 * bytes, 4-bit codes two to a byte, the first in the low nibble. A last partial block is
 * padded with zeros.
 */
export type Quantization = "none" | "int8" | "int4";
export const QUANTIZATIONS: readonly Quantization[] = ["none", "int8", "int4"];
export const DEFAULT_QUANT_BLOCK_SIZE = 32;

export interface QuantizedWeight {
  packed: Uint8Array;
  scales: Float32Array;
  numBlocks: number;
  blobSize: number;
}

export const bitsOf = (quantization: Exclude<Quantization, "none">): 4 | 8 => (quantization === "int4" ? 4 : 8);

export function quantizeBlockwise(weight: Float32Array, n: number, k: number, bits: 4 | 8, blockSize: number): QuantizedWeight {
  if (weight.length !== n * k) throw new Error(`a [${n}, ${k}] weight has ${n * k} values, not ${weight.length}`);
  const numBlocks = Math.ceil(k / blockSize);
  const blobSize = (blockSize * bits) / 8;
  const packed = new Uint8Array(n * numBlocks * blobSize);
  const scales = new Float32Array(n * numBlocks);
  const zeroPoint = 1 << (bits - 1);
  const maxCode = (1 << bits) - 1;
  const qMax = zeroPoint - 1;
  for (let row = 0; row < n; row++) {
    for (let block = 0; block < numBlocks; block++) {
      const start = row * k + block * blockSize;
      const end = row * k + Math.min(k, (block + 1) * blockSize);
      let absMax = 0;
      for (let i = start; i < end; i++) absMax = Math.max(absMax, Math.abs(weight[i]));
      const scale = absMax / qMax;
      scales[row * numBlocks + block] = scale;
      const blob = (row * numBlocks + block) * blobSize;
      for (let j = 0; j < blockSize; j++) {
        const w = start + j < end ? weight[start + j] : 0;
        const code = scale === 0 ? zeroPoint : Math.min(maxCode, Math.max(0, Math.round(w / scale) + zeroPoint));
        if (bits === 8) packed[blob + j] = code;
        else packed[blob + (j >> 1)] |= (j & 1) === 0 ? code : code << 4;
      }
    }
  }
  return { packed, scales, numBlocks, blobSize };
}

/** The float weight a quantized one stands for (for tests): [N, K]. */
export function dequantize(q: QuantizedWeight, n: number, k: number, bits: 4 | 8, blockSize: number): Float32Array {
  const out = new Float32Array(n * k);
  const zeroPoint = 1 << (bits - 1);
  for (let row = 0; row < n; row++) {
    for (let col = 0; col < k; col++) {
      const block = Math.floor(col / blockSize);
      const j = col % blockSize;
      const blob = (row * q.numBlocks + block) * q.blobSize;
      const code = bits === 8 ? q.packed[blob + j] : (q.packed[blob + (j >> 1)] >> ((j & 1) * 4)) & 0xf;
      out[row * k + col] = (code - zeroPoint) * q.scales[row * q.numBlocks + block];
    }
  }
  return out;
}
