/**
 * Conversions between float32 and the two 16-bit float formats found in checkpoints:
 * IEEE 754 binary16 (`F16`) and bfloat16 (`BF16`). All narrowing rounds to nearest, ties to even.
 *
 * These run over every weight of a checkpoint (hundreds of millions of values), so they work
 * on raw bits through typed-array views: a 65,536-entry table for F16 → F32, shifts otherwise.
 */

let halfTable: Float32Array | null = null;

/** Every binary16 bit pattern decoded once (256 KiB), so widening is one lookup per value. */
function float16Table(): Float32Array {
  if (halfTable) return halfTable;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) table[h] = decodeHalf(h);
  halfTable = table;
  return table;
}

function decodeHalf(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/**
 * Widens binary16 bit patterns to float32 (exact).
 *
 * NOTE: `out` may share its buffer with `u16` when the 16-bit values sit in the upper half of
 * `out`'s bytes (`u16` starts at byte `2 * n` of `out`): the forward loop writes element `i`
 * over source elements `≤ i` only, which were already read. The safetensors reader uses this to
 * avoid a second buffer for multi-GiB tensors.
 */
export function float16ToFloat32(u16: Uint16Array, out = new Float32Array(u16.length)): Float32Array {
  const table = float16Table();
  for (let i = 0; i < u16.length; i++) out[i] = table[u16[i]];
  return out;
}

/** Widens bfloat16 bit patterns to float32 (exact: bfloat16 is the top half of a float32). */
export function bfloat16ToFloat32(u16: Uint16Array, out = new Float32Array(u16.length)): Float32Array {
  // NOTE: same in-place contract as float16ToFloat32.
  const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < u16.length; i++) bits[i] = u16[i] << 16;
  return out;
}

const F16_MIN_NORMAL_AS_F32 = 113 << 23; // 2^-14
const F16_OVERFLOW_AS_F32 = 143 << 23; // 2^16: everything from here on is inf or nan
const F32_INF = 0x7f800000;

/** Narrows float32 to binary16 bit patterns, rounding to nearest even; overflow goes to ±inf. */
export function float32ToFloat16(f32: Float32Array): Uint16Array {
  const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < bits.length; i++) out[i] = encodeHalf(bits[i]);
  return out;
}

function encodeHalf(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const abs = u & 0x7fffffff;
  if (abs >= F16_OVERFLOW_AS_F32) {
    // Keep a nan quiet and carry the top of its payload.
    return sign | (abs > F32_INF ? 0x7e00 | ((abs >>> 13) & 0x3ff) : 0x7c00);
  }
  if (abs >= F16_MIN_NORMAL_AS_F32) {
    // NOTE: rebias the exponent and add 0xfff plus the lowest kept bit, so that the carry out of
    // the 13 dropped bits rounds to nearest even. A carry into exponent 31 yields inf, as it should.
    const odd = (abs >>> 13) & 1;
    return sign | ((abs - (112 << 23) + 0xfff + odd) >>> 13);
  }
  return sign | subnormalHalf(abs);
}

/** The binary16 subnormal (or zero, or smallest normal after rounding) nearest to a small float32. */
function subnormalHalf(abs: number): number {
  const exponent = abs >>> 23;
  // Values below 2^-25 round to zero; this also covers float32 subnormals (exponent 0).
  if (exponent < 102) return 0;
  const mantissa = (abs & 0x7fffff) | 0x800000;
  // value = mantissa * 2^(exponent - 150) = (mantissa >> shift) * 2^-24
  const shift = 126 - exponent;
  const kept = mantissa >>> shift;
  const rest = mantissa & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept;
}

/** Narrows float32 to bfloat16 bit patterns, rounding to nearest even; nan stays nan. */
export function float32ToBfloat16(f32: Float32Array): Uint16Array {
  const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i];
    if ((u & 0x7fffffff) > F32_INF) {
      // NOTE: truncating could clear every mantissa bit and turn nan into inf; force it quiet.
      out[i] = (u >>> 16) | 0x40;
    } else {
      out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}
