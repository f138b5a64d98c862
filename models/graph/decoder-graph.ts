/**
 * Builds the paged-KV decoder graph: one step for B sequences of up to S new tokens.
 *
 * Rows are flattened (N = B*S) for every per-token op; only attention sees [B, S, ...].
 * graph-io.ts names and shapes the inputs and outputs.
 *
 * Per layer, attention reads the past K/V gathered by slot from the pool, and the step's own
 * K/V (paged-attention.ts); the runner copies the step's K/V into the pool afterwards.
 */
import type { ModelConfig } from "../config.ts";
import {
  FLOAT_LINEARS, type LinearOptions, type QuantizedInitializer, type WeightSource,
  addQuantizedWeight, addWeight, fusedLinears, gatherQuantizedRows, linear, matMulNBits, quantizedMatMul, rmsNorm, rope, ropeTables,
} from "./layers.ts";
import { GRAPH_INPUTS, GRAPH_OUTPUTS, TOP_LOGPROBS, poolInputNames, presentOutputNames } from "./graph-io.ts";
import { DataType, OnnxGraph } from "./onnx-graph.ts";
import { pagedAttention } from "./paged-attention.ts";

/** Adds the whole decoder to `g`, reading weights from `weights` one tensor at a time. */
export function buildDecoderGraph(g: OnnxGraph, config: ModelConfig, weights: WeightSource, onLayer?: (layer: number) => void, linears: LinearOptions = FLOAT_LINEARS): void {
  const { hiddenSize, numHeads, numKvHeads, headDim } = config;
  const kvWidth = numKvHeads * headDim;
  const inputIds = g.input(GRAPH_INPUTS.inputIds, DataType.INT64, ["batch", "seq"]);
  const positionIds = g.input(GRAPH_INPUTS.positionIds, DataType.INT64, ["batch", "seq"]);
  const pastSlots = g.input(GRAPH_INPUTS.pastSlots, DataType.INT64, ["batch", "past"]);
  const mask = g.input(GRAPH_INPUTS.attentionMask, DataType.FLOAT, ["batch", 1, "seq", "total"]);
  const logitsIndices = g.input(GRAPH_INPUTS.logitsIndices, DataType.INT64, ["num_logits"]);
  const invTemperature = g.input(GRAPH_INPUTS.invTemperature, DataType.FLOAT, ["num_logits"]);

  const batchSeqShape = g.op("Shape", [inputIds]);
  const kvRowsShape = g.op("Concat", [batchSeqShape, g.constInt64([kvWidth])], { axis: 0 });

  const embed = g.scoped("embed", () => embeddingTable(g, weights, linears));
  let x = g.scoped("embed", () => typeof embed === "string"
    ? g.op("Reshape", [g.op("Gather", [embed, inputIds], { axis: 0 }), g.constInt64([-1, hiddenSize])])
    : gatherQuantizedRows(g, embed, inputIds));

  const { cos, sin } = g.scoped("rope", () => ropeTables(g, config, positionIds));
  for (let layer = 0; layer < config.numLayers; layer++) {
    const p = `model.layers.${layer}`;
    const h = g.scoped("norm", () => rmsNorm(g, weights, x, `${p}.input_layernorm.weight`, config));
    const [qRows, kRows, v] = g.scoped("qkv_proj", () => projections(g, weights, h, ["q", "k", "v"].map((n) => `${p}.self_attn.${n}_proj`), config.qkvBias, linears));
    const q = g.scoped("rope", () => rope(g, headNorm(g, weights, config, p, qRows, "q", numHeads), cos, sin));
    const k = g.scoped("rope", () => rope(g, headNorm(g, weights, config, p, kRows, "k", numKvHeads), cos, sin));

    const pool = poolInputNames(layer);
    g.input(pool.key, DataType.FLOAT, [numKvHeads, "num_slots", headDim]);
    g.input(pool.value, DataType.FLOAT, [numKvHeads, "num_slots", headDim]);
    const present = presentOutputNames(layer);
    g.output(present.key, g.op("Reshape", [k, kvRowsShape]), DataType.FLOAT, ["batch", "seq", kvWidth]);
    g.output(present.value, g.op("Reshape", [v, kvRowsShape]), DataType.FLOAT, ["batch", "seq", kvWidth]);
    const attnRows = g.scoped("attention", () => pagedAttention(g, config, { q, k, v, poolKey: pool.key, poolValue: pool.value, pastSlots, mask, batchSeqShape }));
    x = g.op("Add", [x, g.scoped("o_proj", () => linear(g, weights, attnRows, `${p}.self_attn.o_proj`, config.oBias, linears))]);

    const h2 = g.scoped("norm", () => rmsNorm(g, weights, x, `${p}.post_attention_layernorm.weight`, config));
    const [gate, up] = g.scoped("mlp_proj", () => projections(g, weights, h2, [`${p}.mlp.gate_proj`, `${p}.mlp.up_proj`], config.mlpBias, linears));
    const act = g.scoped("mlp_act", () => g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up]));
    x = g.op("Add", [x, g.scoped("mlp_proj", () => linear(g, weights, act, `${p}.mlp.down_proj`, config.mlpBias, linears))]);
    onLayer?.(layer);
  }

  const last = g.scoped("norm", () => g.op("Gather", [x, logitsIndices], { axis: 0 }));
  const normed = g.scoped("norm", () => rmsNorm(g, weights, last, "model.norm.weight", config));
  const logits = g.scoped("lm_head", () => lmHeadLogits(g, weights, config, normed, embed, linears));
  g.output(GRAPH_OUTPUTS.logits, logits, DataType.FLOAT, ["num_logits", config.vocabSize]);
  // The top entries of each row's log-softmax: enough for greedy decoding and logprobs without copying the logits out.
  const topN = Math.min(TOP_LOGPROBS, config.vocabSize);
  const [topValues, topIndices] = g.scoped("logits_tail", () => g.opN("TopK", [g.op("LogSoftmax", [logits], { axis: -1 }), g.constInt64([topN])], 2, { axis: -1, largest: 1, sorted: 1 }));
  g.output(GRAPH_OUTPUTS.topLogprobs, topValues, DataType.FLOAT, ["num_logits", topN]);
  g.output(GRAPH_OUTPUTS.topIds, topIndices, DataType.INT64, ["num_logits", topN]);
  // Sampling weights at each row's temperature, so temperature sampling needs no exp over the vocabulary in JavaScript.
  // NOTE: ONNX Runtime computes every node whether or not its output is fetched, so the softmax sits behind an If
  // that only steps asking for probs take; the others get an empty [0, 1] tensor.
  const wantProbs = g.input(GRAPH_INPUTS.wantProbs, DataType.BOOL, []);
  const probs = g.op("If", [wantProbs], {
    then_branch: { graph: g.branch((b) => b.op("Softmax", [b.op("Mul", [logits, b.op("Unsqueeze", [invTemperature, b.constInt64([1])])])], { axis: -1 }), DataType.FLOAT, ["num_logits", config.vocabSize]) },
    else_branch: { graph: g.branch((b) => b.constFloat([], [0, 1]), DataType.FLOAT, [0, 1]) },
  });
  g.output(GRAPH_OUTPUTS.probs, probs, DataType.FLOAT, ["num_logits", "vocab_or_1"]);
}

/**
 * The token embedding: the float table, or in quantized graphs int8 blocks whatever the
 * layers' bits (GatherBlockQuantized dequantizes just the rows it gathers).
 */
function embeddingTable(g: OnnxGraph, weights: WeightSource, linears: LinearOptions): string | QuantizedInitializer {
  const name = "model.embed_tokens.weight";
  if (linears.quantization === "none") return addWeight(g, weights, name);
  const { data, shape: [n, k] } = weights.read(name);
  return addQuantizedWeight(g, name, data, n, k, 8, linears.blockSize);
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
