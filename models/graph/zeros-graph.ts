/**
 * A one-node graph that makes a float16 tensor of zeros of any 4-d shape: run with its output on
 * the device, it allocates the device-resident KV pool without a host copy of it.
 */
import { DataType, OnnxGraph } from "./onnx-graph.ts";

export const ZEROS_GRAPH_IO = { shape: "shape", zeros: "zeros" } as const;

export function float16ZerosGraph(): Uint8Array {
  // NOTE: no weights, so nothing is ever written to the external-data path.
  const g = new OnnxGraph("unused.data", DataType.FLOAT16);
  const shape = g.input(ZEROS_GRAPH_IO.shape, DataType.INT64, [4]);
  g.output(ZEROS_GRAPH_IO.zeros, g.op("Expand", [g.constFloat([0], []), shape]), DataType.FLOAT16, ["d0", "d1", "d2", "d3"]);
  return g.finish("float16_zeros");
}
