/**
 * Builds the paged-KV decoder graph: one step for B sequences of up to S new tokens.
 *
 * Rows are flattened (N = B*S) for every per-token op; only attention sees [B, S, ...].
 * graph-io.ts names and shapes the inputs and outputs.
 *
 * Per layer, attention reads [past K/V gathered by slot ‖ the step's own K/V].
 */
import type { ModelConfig } from "../config.ts";
import { FLOAT_LINEARS, type LinearOptions, type WeightSource, addWeight, linear, quantizedMatMul, rmsNorm, rope, ropeTables } from "./layers.ts";
import { GRAPH_INPUTS, GRAPH_OUTPUTS, TOP_LOGPROBS, poolInputNames, presentOutputNames } from "./graph-io.ts";
import { DataType, OnnxGraph } from "./onnx-graph.ts";

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
  const attnShape = (width: number) => g.op("Concat", [batchSeqShape, g.constInt64([width])], { axis: 0 });
  const pastShape = g.op("Concat", [g.op("Shape", [pastSlots]), g.constInt64([kvWidth])], { axis: 0 });
  const qAttnShape = attnShape(numHeads * headDim);
  const kvAttnShape = attnShape(kvWidth);

  const embed = addWeight(g, weights, "model.embed_tokens.weight");
  let x = g.op("Reshape", [g.op("Gather", [embed, inputIds], { axis: 0 }), g.constInt64([-1, hiddenSize])]);

  const { cos, sin } = ropeTables(g, config, positionIds);
  for (let layer = 0; layer < config.numLayers; layer++) {
    const p = `model.layers.${layer}`;
    const h = rmsNorm(g, weights, x, `${p}.input_layernorm.weight`, config);
    const q = rope(g, headProjection(g, weights, config, p, h, "q", numHeads, linears), cos, sin);
    const k = rope(g, headProjection(g, weights, config, p, h, "k", numKvHeads, linears), cos, sin);
    const v = linear(g, weights, h, `${p}.self_attn.v_proj`, config.qkvBias, linears);

    const newK = g.op("Reshape", [k, kvAttnShape]);
    const newV = g.op("Reshape", [v, kvAttnShape]);
    const pool = poolInputNames(layer);
    g.input(pool.key, DataType.FLOAT, ["num_slots", numKvHeads, headDim]);
    g.input(pool.value, DataType.FLOAT, ["num_slots", numKvHeads, headDim]);
    const pastK = g.op("Reshape", [g.op("Gather", [pool.key, pastSlots], { axis: 0 }), pastShape]);
    const pastV = g.op("Reshape", [g.op("Gather", [pool.value, pastSlots], { axis: 0 }), pastShape]);
    const allK = g.op("Concat", [pastK, newK], { axis: 1 });
    const allV = g.op("Concat", [pastV, newV], { axis: 1 });
    const present = presentOutputNames(layer);
    g.output(present.key, newK, DataType.FLOAT, ["batch", "seq", kvWidth]);
    g.output(present.value, newV, DataType.FLOAT, ["batch", "seq", kvWidth]);

    const attn = g.op("Attention", [g.op("Reshape", [q, qAttnShape]), allK, allV, mask], {
      q_num_heads: numHeads, kv_num_heads: numKvHeads, scale: { f: 1 / Math.sqrt(headDim) },
    });
    const attnRows = g.op("Reshape", [attn, g.constInt64([-1, numHeads * headDim])]);
    x = g.op("Add", [x, linear(g, weights, attnRows, `${p}.self_attn.o_proj`, config.oBias, linears)]);

    const h2 = rmsNorm(g, weights, x, `${p}.post_attention_layernorm.weight`, config);
    const gate = linear(g, weights, h2, `${p}.mlp.gate_proj`, config.mlpBias, linears);
    const up = linear(g, weights, h2, `${p}.mlp.up_proj`, config.mlpBias, linears);
    const act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up]);
    x = g.op("Add", [x, linear(g, weights, act, `${p}.mlp.down_proj`, config.mlpBias, linears)]);
    onLayer?.(layer);
  }

  const last = g.op("Gather", [x, logitsIndices], { axis: 0 });
  const normed = rmsNorm(g, weights, last, "model.norm.weight", config);
  const logits = lmHeadLogits(g, weights, config, normed, embed, linears);
  g.output(GRAPH_OUTPUTS.logits, logits, DataType.FLOAT, ["num_logits", config.vocabSize]);
  // The top entries of each row's log-softmax: enough for greedy decoding and logprobs without copying the logits out.
  const topN = Math.min(TOP_LOGPROBS, config.vocabSize);
  const [topValues, topIndices] = g.opN("TopK", [g.op("LogSoftmax", [logits], { axis: -1 }), g.constInt64([topN])], 2, { axis: -1, largest: 1, sorted: 1 });
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
 * The LM head: float, or (quantized graphs) int8 blocks through MatMulNBits whatever the
 * layers' bits, since its errors land on the logits directly. A tied embedding keeps its float
 * table for the input Gather, beside the quantized copy.
 */
function lmHeadLogits(g: OnnxGraph, weights: WeightSource, config: ModelConfig, normed: string, embed: string, linears: LinearOptions): string {
  const name = config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  if (linears.quantization === "none") return g.op("Gemm", [normed, config.tieWordEmbeddings ? embed : addWeight(g, weights, name)], { transB: 1 });
  const { data, shape: [n, k] } = weights.read(name);
  return quantizedMatMul(g, normed, `lm_head_of.${name}`, data, n, k, 8, linears.blockSize);
}

/** q or k: projection, reshape to [N, heads, head_dim], and the Qwen3 per-head norm. */
function headProjection(
  g: OnnxGraph, weights: WeightSource, config: ModelConfig, layerPrefix: string, h: string, which: "q" | "k", numHeads: number, linears: LinearOptions,
): string {
  const projected = linear(g, weights, h, `${layerPrefix}.self_attn.${which}_proj`, config.qkvBias, linears);
  const heads = g.op("Reshape", [projected, g.constInt64([-1, numHeads, config.headDim])]);
  return config.qkNorm ? rmsNorm(g, weights, heads, `${layerPrefix}.self_attn.${which}_norm.weight`, config) : heads;
}
