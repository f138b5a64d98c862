/**
 * A small builder for ONNX graphs on top of onnx-proto.
 *
 * Weights are streamed to an external-data file as they are added, so building a
 * multi-GiB model never holds all of its weights in memory at once.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import { basename } from "node:path";
import onnxProto from "onnx-proto";
import { float32ToFloat16 } from "../weights/float-formats.ts";

const { onnx } = onnxProto;
export const DataType = onnx.TensorProto.DataType;
export type Dim = number | string;
type GraphProto = InstanceType<typeof onnx.GraphProto>;
/** Integers are INT attributes; write floats as `{ f: 1e-6 }`; `{ graph }` is a subgraph (If branches). */
export type Attr = number | string | number[] | boolean | { f: number } | { floats: number[] } | { graph: GraphProto };

/** NOTE: ORT memory-maps external data; page-aligned offsets let it do so without copies. */
const EXTERNAL_ALIGN_BYTES = 4096;

export class OnnxGraph {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly initializers: InstanceType<typeof onnx.TensorProto>[] = [];
  private readonly inputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly outputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private dataFd: number | null = null;
  /** Whether a com.microsoft op was used (the model then imports that domain). */
  private usesMicrosoftOps = false;
  private dataOffset = 0;
  /** The role prefixed to node names ("attention/n_MatMul_12"), so a profile can group the step's time by role. */
  private currentScope = "";

  /**
   * @param dataPath where external weights go; its basename is recorded in the graph.
   * @param floatType the element type of float weights, float constants and activations:
   *   FLOAT, or FLOAT16 for device graphs (float32 data is narrowed as it is written).
   * @param names the counter for fresh names, shared with subgraphs so that no name repeats.
   */
  constructor(private readonly dataPath: string, readonly floatType: number = DataType.FLOAT, private readonly names = { next: 0 }) {}

  /**
   * A subgraph for an If branch, built by `build`. It may read any value of this graph by
   * name; its one output is what `build` returns.
   */
  branch(build: (branch: OnnxGraph) => string, elemType: number, dims: Dim[]): GraphProto {
    const branch = new OnnxGraph(this.dataPath, this.floatType, this.names);
    const result = branch.op("Identity", [build(branch)]);
    return onnx.GraphProto.create({
      name: this.freshName("branch"), node: branch.nodes, initializer: branch.initializers, output: [valueInfo(result, elemType, dims)],
    });
  }

  input(name: string, elemType: number, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  output(name: string, value: string, elemType: number, dims: Dim[]): void {
    this.op("Identity", [value], {}, name);
    this.outputs.push(valueInfo(name, elemType, dims));
  }

  /** A small constant stored inside the graph. */
  constInt64(values: number[], dims: number[] = [values.length]): string {
    const name = this.freshName("const");
    const raw = new BigInt64Array(values.map((v) => BigInt(v)));
    this.initializers.push(onnx.TensorProto.create({ name, dims, dataType: DataType.INT64, rawData: bytesOf(raw) }));
    return name;
  }

  /** A small float constant, of the graph's float type. */
  constFloat(values: number[] | Float32Array, dims: number[] = [values.length]): string {
    return this.constOf(Float32Array.from(values), dims, this.floatType);
  }

  /** A small float32 constant, whatever the graph's float type (rope angles, the float32 logits tail). */
  constFloat32(values: number[] | Float32Array, dims: number[] = [values.length]): string {
    return this.constOf(Float32Array.from(values), dims, DataType.FLOAT);
  }

  /** x as the graph's float type: a Cast from float32, or x itself in a float32 graph. */
  toFloatType(x: string): string {
    return this.floatType === DataType.FLOAT ? x : this.op("Cast", [x], { to: this.floatType });
  }

  /** x (of the graph's float type) as float32. */
  toFloat32(x: string): string {
    return this.floatType === DataType.FLOAT ? x : this.op("Cast", [x], { to: DataType.FLOAT });
  }

  /**
   * A weight written to the external-data file. Float32 data without a dataType is stored as
   * the graph's float type.
   */
  weight(name: string, data: Float32Array | Uint16Array | Uint8Array, dims: number[], dataType?: number): string {
    const { values, type } = this.stored(data, dataType);
    const bytes = bytesOf(values);
    if (this.dataFd === null) this.dataFd = openSync(this.dataPath, "w");
    const padding = (EXTERNAL_ALIGN_BYTES - (this.dataOffset % EXTERNAL_ALIGN_BYTES)) % EXTERNAL_ALIGN_BYTES;
    if (padding > 0) writeSync(this.dataFd, new Uint8Array(padding));
    const offset = this.dataOffset + padding;
    writeSync(this.dataFd, bytes);
    this.dataOffset = offset + bytes.byteLength;
    this.initializers.push(onnx.TensorProto.create({
      name, dims, dataType: type,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: "location", value: basename(this.dataPath) },
        { key: "offset", value: String(offset) },
        { key: "length", value: String(bytes.byteLength) },
      ],
    }));
    return name;
  }

  /** Builds `build`'s nodes under the role `scope` (see currentScope); scopes do not nest. */
  scoped<T>(scope: string, build: () => T): T {
    const outer = this.currentScope;
    this.currentScope = scope;
    try {
      return build();
    } finally {
      this.currentScope = outer;
    }
  }

  /** Adds a node and returns its output name(s). */
  op(opType: string, inputs: string[], attrs: Record<string, Attr> = {}, outputName?: string): string {
    return this.opN(opType, inputs, 1, attrs, outputName ? [outputName] : undefined)[0];
  }

  /** An op of ONNX Runtime's com.microsoft domain (MatMulNBits). */
  microsoftOp(opType: string, inputs: string[], attrs: Record<string, Attr> = {}): string {
    this.usesMicrosoftOps = true;
    return this.opN(opType, inputs, 1, attrs, undefined, "com.microsoft")[0];
  }

  opN(opType: string, inputs: string[], numOutputs: number, attrs: Record<string, Attr> = {}, outputNames?: string[], domain = ""): string[] {
    const outputs = outputNames ?? Array.from({ length: numOutputs }, () => this.freshName(opType));
    this.nodes.push(onnx.NodeProto.create({
      opType, domain, input: inputs, output: outputs, name: this.freshName(`${this.currentScope ? `${this.currentScope}/` : ""}n_${opType}`),
      attribute: Object.entries(attrs).map(([key, value]) => attribute(key, value)),
    }));
    return outputs;
  }

  /** Serializes the model (opset 23, IR 10) and closes the external-data file. */
  finish(graphName: string): Uint8Array {
    if (this.dataFd !== null) closeSync(this.dataFd);
    this.dataFd = null;
    const model = onnx.ModelProto.create({
      irVersion: 10,
      producerName: "tokenmill",
      opsetImport: [{ domain: "", version: 23 }, ...(this.usesMicrosoftOps ? [{ domain: "com.microsoft", version: 1 }] : [])],
      graph: onnx.GraphProto.create({
        name: graphName, node: this.nodes, initializer: this.initializers, input: this.inputs, output: this.outputs,
      }),
    });
    return onnx.ModelProto.encode(model).finish();
  }

  private constOf(values: Float32Array, dims: number[], dataType: number): string {
    const name = this.freshName("const");
    const stored = this.stored(values, dataType);
    this.initializers.push(onnx.TensorProto.create({ name, dims, dataType: stored.type, rawData: bytesOf(stored.values) }));
    return name;
  }

  /** Float32 data narrowed to float16 where the element type asks for it. */
  private stored(data: Float32Array | Uint16Array | Uint8Array, dataType?: number): { values: ArrayBufferView; type: number } {
    if (!(data instanceof Float32Array)) return { values: data, type: dataType ?? DataType.FLOAT };
    const type = dataType ?? this.floatType;
    return { values: type === DataType.FLOAT16 ? float32ToFloat16(data) : data, type };
  }

  private freshName(prefix: string): string {
    return `${prefix}_${this.names.next++}`;
  }
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

function valueInfo(name: string, elemType: number, dims: Dim[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

function attribute(name: string, value: Attr) {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof value === "boolean") return { name, type: T.INT, i: value ? 1 : 0 };
  if (typeof value === "string") return { name, type: T.STRING, s: new TextEncoder().encode(value) };
  if (typeof value === "number") return { name, type: T.INT, i: value };
  if (Array.isArray(value)) return { name, type: T.INTS, ints: value };
  if ("f" in value) return { name, type: T.FLOAT, f: value.f };
  if ("graph" in value) return { name, type: T.GRAPH, g: value.graph };
  return { name, type: T.FLOATS, floats: value.floats };
}
