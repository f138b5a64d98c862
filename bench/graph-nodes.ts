/**
 * How many nodes a model's graph runs after ONNX Runtime's optimizer, by op type: the
 * per-node overhead of a small step is paid once for each.
 *
 *   node --import tsx bench/graph-nodes.ts --model qwen3-0.6b-random --quantization int4
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import onnxProto from "onnx-proto";
import { ensureGraph } from "../models/build-graph.ts";
import { QUANTIZATIONS, type Quantization } from "../models/graph/quantize.ts";
import { ort } from "../engine/runner/onnx-host/onnx-session.ts";
import { modelDirOf } from "./step-fixture.ts";

const { values } = parseArgs({ options: { model: { type: "string", default: "qwen3-0.6b-random" }, quantization: { type: "string", default: "none" } } });
const quantization = values.quantization as Quantization;
if (!QUANTIZATIONS.includes(quantization)) throw new Error(`--quantization takes ${QUANTIZATIONS.join("|")}`);
const graph = ensureGraph(modelDirOf(values.model!), { build: { quantization } });
const dir = mkdtempSync(join(tmpdir(), "tokenmill-graph-nodes-"));
try {
  const optimized = join(dir, "optimized.onnx");
  const session = await ort.InferenceSession.create(graph.graphPath, { executionProviders: ["cpu"], graphOptimizationLevel: "all", optimizedModelFilePath: optimized, logSeverityLevel: 3 });
  await session.release();
  const nodes = onnxProto.onnx.ModelProto.decode(readFileSync(optimized)).graph!.node!;
  const byOp = new Map<string, number>();
  for (const node of nodes) byOp.set(node.opType!, (byOp.get(node.opType!) ?? 0) + 1);
  console.log(`${nodes.length} nodes after ORT's optimizer: ${[...byOp].sort((a, b) => b[1] - a[1]).map(([op, n]) => `${op} ${n}`).join(", ")}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
