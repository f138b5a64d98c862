/**
 * Builds the paged-KV decoder graph: one step for B sequences of new tokens.
 *
 * Rows are flattened (N tokens) for every per-token op; only attention sees sequences.
 * graph-io.ts names and shapes the inputs and outputs, and step-attention.ts declares the ones
 * of its KV pool: a host pool the runner copies each step's K/V into (CPU), or a device pool
 * that PagedAttention updates in place (WebGPU).
 */
import type { ModelConfig } from "../config.ts";
import {
  FLOAT_LINEARS, type LinearOptions, type QuantizedInitializer, type WeightSource,
  addQuantizedWeight, addWeight, fusedLinears, gatherQuantizedRows, linear, matMulNBits, quantizedMatMul, rmsNorm, rope, ropeCaches, ropeTables,
} from "./layers.ts";
import { GRAPH_INPUTS, GRAPH_OUTPUTS, TOP_LOGPROBS, loraInputNames } from "./graph-io.ts";
import { moduleShape, type LoraModule } from "../lora/adapter.ts";
import { DataType, OnnxGraph } from "./onnx-graph.ts";
import { stepAttention, tokenDimsOf, type StepAttentionOptions } from "./step-attention.ts";

export interface DecoderGraphOptions {
  linears: LinearOptions;
  attention: StepAttentionOptions;
  /** Host pool: rotate q and k with ONNX's RotaryEmbedding op over cos/sin caches (default), or with plain ops over per-step tables. */
  ropeOp?: boolean;
  /** LoRA adapter slots: every projection of every layer takes each slot's A and B as inputs (graph-io.ts). */
  lora?: { slots: number; rank: number; layout?: "stacked" | "gather" };
}

export const HOST_POOL_GRAPH: DecoderGraphOptions = { linears: FLOAT_LINEARS, attention: { kind: "host-pool", ropeInside: false } };

/**
 * Adds the whole decoder to `g`, reading weights from `weights` one tensor at a time. Weights
 * and activations take g's float type; the logits tail is float32 in every graph.
 */
export function buildDecoderGraph(g: OnnxGraph, config: ModelConfig, weights: WeightSource, onLayer?: (layer: number) => void, options: DecoderGraphOptions = HOST_POOL_GRAPH): void {
  const { linears } = options;
  const { hiddenSize, numHeads, numKvHeads } = config;
  const tokenDims = tokenDimsOf(options.attention.kind);
  const inputIds = g.input(GRAPH_INPUTS.inputIds, DataType.INT64, tokenDims);
  const attention = stepAttention(g, config, inputIds, options.attention);
  const positionIds = attention.ropeInside ? null : g.input(GRAPH_INPUTS.positionIds, DataType.INT64, tokenDims);
  const logitsIndices = g.input(GRAPH_INPUTS.logitsIndices, DataType.INT64, ["num_logits"]);
  const invTemperature = g.input(GRAPH_INPUTS.invTemperature, DataType.FLOAT, ["num_logits"]);
  const hiddenIndices = g.input(GRAPH_INPUTS.hiddenIndices, DataType.INT64, ["num_hidden"]);

  const embed = g.scoped("embed", () => embeddingTable(g, weights, config, linears));
  let x = g.scoped("embed", () => typeof embed === "string"
    ? g.op("Reshape", [g.op("Gather", [embed, inputIds], { axis: 0 }), g.constInt64([-1, hiddenSize])])
    : gatherQuantizedRows(g, embed, inputIds));

  // NOTE: LoRA: each projection's output gains ((x·Aᵀ) ⊙ lora_rows)·Bᵀ over all slots at once (graph-io.ts); no per-row gather.
  const { lora } = options;
  // NOTE: the slots' width is the step's: the runner feeds slots 1…k (k the highest a row uses), 0 when none (then the host graph skips the delta).
  const gather = lora?.layout === "gather";
  const loraRows = lora ? g.input(GRAPH_INPUTS.loraRows, DataType.FLOAT, ["num_rows", gather ? 1 : "lora_width"]) : null;
  const slotIndex = gather ? g.input(GRAPH_INPUTS.loraSlotIndex, DataType.INT64, ["num_rows"]) : null;
  // NOTE: not on a device: ORT runs If on the CPU, and each projection's y would cross to it and back.
  const anyAdapter = loraRows && !gather && options.attention.kind === "host-pool" ? g.op("Greater", [g.op("Gather", [g.op("Shape", [loraRows]), g.constInt64([1], [])], { axis: 0 }), g.constInt64([0], [])]) : null;
  const adapted = (layer: number, module: string, x: string, y: string, widths: { inFeatures: number; outFeatures: number }) => {
    if (!lora || !loraRows) return y;
    const names = loraInputNames(layer, module);
    const a = g.input(names.a, DataType.FLOAT, ["lora_width", widths.inFeatures]);
    const b = g.input(names.b, DataType.FLOAT, ["lora_width", widths.outFeatures]);
    if (slotIndex) {
      // Each row's own slot: A and B gathered per row ([rows, R, in], [rows, R, out]), a batched GEMV each, base rows masked.
      const rowA = g.op("Gather", [g.op("Reshape", [a, g.constInt64([-1, lora.rank, widths.inFeatures])]), slotIndex], { axis: 0 });
      const rowB = g.op("Gather", [g.op("Reshape", [b, g.constInt64([-1, lora.rank, widths.outFeatures])]), slotIndex], { axis: 0 });
      const down = g.op("MatMul", [g.op("Unsqueeze", [g.toFloat32(x), g.constInt64([1])]), g.op("Transpose", [rowA], { perm: [0, 2, 1] })]);
      const up = g.op("Reshape", [g.op("MatMul", [down, rowB]), g.constInt64([-1, widths.outFeatures])]);
      return g.op("Add", [y, g.toFloatType(g.op("Mul", [up, loraRows]))]);
    }
    const withDelta = (h: OnnxGraph) => {
      const down = h.op("Mul", [h.op("Gemm", [h.toFloat32(x), a], { transB: 1 }), loraRows]);
      return h.op("Add", [y, h.toFloatType(h.op("MatMul", [down, b]))]);
    };
    if (!anyAdapter) return withDelta(g);
    // NOTE: a step without adapters (width 0) skips the delta whole, through an If: adding a zero delta still cost a pass over y.
    const dims = ["num_rows", widths.outFeatures];
    return g.op("If", [anyAdapter], { then_branch: { graph: g.branch(withDelta, g.floatType, dims) }, else_branch: { graph: g.branch((h) => h.op("Identity", [y]), g.floatType, dims) } });
  };
  const widths = (module: LoraModule) => moduleShape(config, module);

  const rotated = positionIds === null ? (heads: string) => heads
    : options.attention.kind === "host-pool" && (options.ropeOp ?? true) ? ropeOp(g, config, inputIds, positionIds)
      : ropeOps(g, config, positionIds);
  for (let layer = 0; layer < config.numLayers; layer++) {
    const p = `model.layers.${layer}`;
    const h = g.scoped("norm", () => rmsNorm(g, weights, x, `${p}.input_layernorm.weight`, config));
    const [qRows, kRows, v] = g.scoped("qkv_proj", () => projections(g, weights, h, ["q", "k", "v"].map((n) => `${p}.self_attn.${n}_proj`), config.qkvBias, linears)
      .map((y, i) => adapted(layer, `${"qkv"[i]}_proj`, h, y, widths(`${"qkv"[i]}_proj` as LoraModule))));
    const q = rotated(headNorm(g, weights, config, p, qRows, "q", numHeads), numHeads);
    const k = rotated(headNorm(g, weights, config, p, kRows, "k", numKvHeads), numKvHeads);
    const attnRows = attention.attend(layer, q, k, v);
    x = g.op("Add", [x, g.scoped("o_proj", () => adapted(layer, "o_proj", attnRows, linear(g, weights, attnRows, `${p}.self_attn.o_proj`, config.oBias, linears), widths("o_proj")))]);

    const h2 = g.scoped("norm", () => rmsNorm(g, weights, x, `${p}.post_attention_layernorm.weight`, config));
    const [gate, up] = g.scoped("mlp_proj", () => projections(g, weights, h2, [`${p}.mlp.gate_proj`, `${p}.mlp.up_proj`], config.mlpBias, linears)
      .map((y, i) => adapted(layer, i === 0 ? "gate_proj" : "up_proj", h2, y, widths(i === 0 ? "gate_proj" : "up_proj"))));
    const act = g.scoped("mlp_act", () => g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up]));
    x = g.op("Add", [x, g.scoped("mlp_proj", () => adapted(layer, "down_proj", act, linear(g, weights, act, `${p}.mlp.down_proj`, config.mlpBias, linears), widths("down_proj")))]);
    onLayer?.(layer);
  }

  // The final norm's rows: those the logits are taken of, and those returned as hidden states (embeddings).
  const finalNorm = g.scoped("norm", () => addWeight(g, weights, "model.norm.weight"));
  const normedRows = (indices: string) => g.scoped("norm", () =>
    g.op("RMSNormalization", [g.op("Gather", [x, indices], { axis: 0 }), finalNorm], { axis: -1, epsilon: { f: config.rmsNormEps } }));
  const normed = normedRows(logitsIndices);
  g.output(GRAPH_OUTPUTS.hidden, g.toFloat32(normedRows(hiddenIndices)), DataType.FLOAT, ["num_hidden", hiddenSize]);
  const logits = g.scoped("lm_head", () => g.toFloat32(lmHeadLogits(g, weights, config, normed, embed, linears)));
  logitsTail(g, config, logits, invTemperature, options.attention.kind === "device-pool");
}

/** Rotates [N, heads, head_dim] rows at their positions. */
type Rotate = (heads: string, numHeads: number) => string;

/**
 * RoPE as one RotaryEmbedding op a rotation, over [B, S, heads·head_dim] with the cos/sin
 * caches as weights: 2 nodes a layer instead of ropeOps' 12, which at batch 1 is ORT's
 * per-node overhead as much as its math (bench/ab-step.ts, README "Quantized speed").
 */
function ropeOp(g: OnnxGraph, config: ModelConfig, inputIds: string, positionIds: string): Rotate {
  const caches = g.scoped("rope", () => ropeCaches(g, config, g.floatType));
  const tokensShape = g.scoped("rope", () => g.op("Concat", [g.op("Shape", [inputIds]), g.constInt64([-1])], { axis: 0 }));
  return (heads, numHeads) => g.scoped("rope", () => {
    const rows = g.op("Reshape", [heads, tokensShape]);
    const out = g.op("RotaryEmbedding", [rows, caches.cos, caches.sin, positionIds], { num_heads: numHeads, interleaved: 0 });
    return g.op("Reshape", [out, g.constInt64([-1, numHeads, config.headDim])]);
  });
}

/** RoPE as plain ops over this step's cos/sin tables (the device pool's --rope-before-attention, and an A/B baseline). */
function ropeOps(g: OnnxGraph, config: ModelConfig, positionIds: string): Rotate {
  const tables = g.scoped("rope", () => ropeTables(g, config, positionIds));
  return (heads) => g.scoped("rope", () => rope(g, heads, tables.cos, tables.sin));
}

/**
 * The outputs read from float32 logits [K, V]: the logits, their top log-softmax entries, and
 * probs = softmax(logits / T).
 *
 * NOTE: ONNX Runtime computes every node whether or not its output is fetched. On the host,
 * the probs softmax sits behind an If that only steps asking for probs take (the others get
 * an empty [0, 1] tensor). On a device the If would run on the CPU and copy the logits out
 * every step, and so would LogSoftmax (WebGPU has no kernel for it); there probs are always
 * computed, on the device, and the top entries are TopK of the logits minus ReduceLogSumExp.
 * Unfetched outputs stay on the device.
 */
function logitsTail(g: OnnxGraph, config: ModelConfig, logits: string, invTemperature: string, onDevice: boolean): void {
  g.output(GRAPH_OUTPUTS.logits, logits, DataType.FLOAT, ["num_logits", config.vocabSize]);
  const topN = Math.min(TOP_LOGPROBS, config.vocabSize);
  const topK = (x: string) => g.opN("TopK", [x, g.constInt64([topN])], 2, { axis: -1, largest: 1, sorted: 1 });
  const [topValues, topIndices] = g.scoped("logits_tail", () => {
    if (!onDevice) return topK(g.op("LogSoftmax", [logits], { axis: -1 }));
    const { values, ids, logSumExp } = chunkedTopK(g, logits, config.vocabSize, topN);
    return [g.op("Sub", [values, logSumExp]), ids];
  });
  g.output(GRAPH_OUTPUTS.topLogprobs, topValues, DataType.FLOAT, ["num_logits", topN]);
  g.output(GRAPH_OUTPUTS.topIds, topIndices, DataType.INT64, ["num_logits", topN]);
  const probsOf = (b: OnnxGraph) => b.op("Softmax", [b.op("Mul", [logits, b.op("Unsqueeze", [invTemperature, b.constInt64([1])])])], { axis: -1 });
  const probs = onDevice ? g.scoped("logits_tail", () => probsOf(g)) : g.op("If", [g.input(GRAPH_INPUTS.wantProbs, DataType.BOOL, [])], {
    then_branch: { graph: g.branch(probsOf, DataType.FLOAT, ["num_logits", config.vocabSize]) },
    else_branch: { graph: g.branch((b) => b.constFloat32([], [0, 1]), DataType.FLOAT, [0, 1]) },
  });
  g.output(GRAPH_OUTPUTS.probs, probs, DataType.FLOAT, ["num_logits", "vocab_or_1"]);
}

/** Vocabulary entries per chunk in chunkedTopK. */
const TOPK_CHUNK = 64;

/**
 * The top n of each row of x [K, V], and each row's log-sum-exp [K, 1], by way of chunks of
 * TOPK_CHUNK entries: the n chunks with the highest maxima hold the top n entries (each of those
 * lies in a chunk whose maximum is at least the n-th value, and at most n chunks have one), so
 * TopK runs over V / 64 maxima and then over n·64 candidates instead of over V; and the
 * log-sum-exp is that of the chunks' log-sum-exps.
 *
 * NOTE: ONNX Runtime 1.30's WebGPU TopK and row reductions run one row per workgroup: on
 * lavapipe TopK takes 507 ms for one 151,936-wide row and this 20 ms (bench/webgpu-kernels.ts);
 * over chunks, the rows are many and short. Ties may come out in another order than
 * TopK's (lower index first); the runner sorts the n entries again.
 */
export function chunkedTopK(g: OnnxGraph, x: string, width: number, n: number): { values: string; ids: string; logSumExp: string } {
  const c = (values: number[]) => g.constInt64(values);
  const numChunks = Math.ceil(width / TOPK_CHUNK);
  if (numChunks <= n) {
    const [values, ids] = g.opN("TopK", [x, c([n])], 2, { axis: -1, largest: 1, sorted: 1 });
    return { values, ids, logSumExp: g.op("ReduceLogSumExp", [x, c([-1])], { keepdims: 1 }) };
  }
  const padded = numChunks * TOPK_CHUNK === width ? x
    : g.op("Pad", [x, c([0, 0, 0, numChunks * TOPK_CHUNK - width]), g.constFloat32([-Infinity], [])], { mode: "constant" });
  const chunks = g.op("Reshape", [padded, c([-1, TOPK_CHUNK])]);
  const perChunk = (op: string) => g.op("Reshape", [g.op(op, [chunks, c([1])], { keepdims: 0 }), c([-1, numChunks])]);
  const logSumExp = g.op("ReduceLogSumExp", [perChunk("ReduceLogSumExp"), c([-1])], { keepdims: 1 });
  const [, bestChunks] = g.opN("TopK", [perChunk("ReduceMax"), c([n])], 2, { axis: -1, largest: 1, sorted: 1 });
  // Row r's chunk j is row r·numChunks + j of `chunks`.
  const numRows = g.op("Squeeze", [g.op("Slice", [g.op("Shape", [x]), c([0]), c([1])]), c([0])]);
  const rows = g.op("Range", [g.constInt64([0], []), numRows, g.constInt64([1], [])]);
  const chunkRows = g.op("Add", [bestChunks, g.op("Unsqueeze", [g.op("Mul", [rows, g.constInt64([numChunks], [])]), c([1])])]);
  const candidates = g.op("Reshape", [g.op("Gather", [chunks, chunkRows], { axis: 0 }), c([-1, n * TOPK_CHUNK])]);
  const [values, positions] = g.opN("TopK", [candidates, c([n])], 2, { axis: -1, largest: 1, sorted: 1 });
  const chunkOf = g.op("GatherElements", [bestChunks, g.op("Div", [positions, g.constInt64([TOPK_CHUNK], [])])], { axis: 1 });
  const ids = g.op("Add", [g.op("Mul", [chunkOf, g.constInt64([TOPK_CHUNK], [])]), g.op("Mod", [positions, g.constInt64([TOPK_CHUNK], [])])]);
  return { values, ids, logSumExp };
}

/**
 * The token embedding: the float table, or in quantized graphs int8 blocks whatever the
 * layers' bits (GatherBlockQuantized dequantizes just the rows it gathers).
 */
function embeddingTable(g: OnnxGraph, weights: WeightSource, config: ModelConfig, linears: LinearOptions): string | QuantizedInitializer {
  const name = "model.embed_tokens.weight";
  if (linears.quantization === "none") return addWeight(g, weights, name);
  const { data, shape: [n, k] } = weights.read(name);
  return addQuantizedWeight(g, name, data, n, k, 8, linears.blockSize, config.tieWordEmbeddings);
}

/**
 * The LM head: float, or (quantized graphs) int8 blocks through MatMulNBits whatever the
 * layers' bits, since its errors land on the logits directly. A tied head reads the
 * embedding's own table, float or quantized.
 */
function lmHeadLogits(g: OnnxGraph, weights: WeightSource, config: ModelConfig, normed: string, embed: string | QuantizedInitializer, linears: LinearOptions): string {
  if (typeof embed !== "string") {
    if (config.tieWordEmbeddings) return matMulNBits(g, normed, embed);
    const { data, shape: [n, k] } = weights.read("lm_head.weight");
    return quantizedMatMul(g, normed, "lm_head.weight", data, n, k, 8, linears.blockSize);
  }
  return g.op("Gemm", [normed, config.tieWordEmbeddings ? embed : addWeight(g, weights, "lm_head.weight")], { transB: 1 });
}

/** Linears on one input: fused into one matmul, or (linears.fuse off) one each. */
function projections(g: OnnxGraph, weights: WeightSource, x: string, prefixes: string[], bias: boolean, linears: LinearOptions): string[] {
  if (linears.fuse) return fusedLinears(g, weights, x, prefixes, bias, linears);
  return prefixes.map((prefix) => linear(g, weights, x, prefix, bias, linears));
}

/** Projected q or k rows reshaped to [N, heads, head_dim], with the Qwen3 per-head norm. */
function headNorm(g: OnnxGraph, weights: WeightSource, config: ModelConfig, layerPrefix: string, projected: string, which: "q" | "k", numHeads: number): string {
  const heads = g.op("Reshape", [projected, g.constInt64([-1, numHeads, config.headDim])]);
  return config.qkNorm ? g.scoped("norm", () => rmsNorm(g, weights, heads, `${layerPrefix}.self_attn.${which}_norm.weight`, config)) : heads;
}
