// A small, exact executor of the ONNX graphs that the towers export to (src/twotower/export/onnx_export.py:
// opset 18, the dynamo exporter), in TypeScript: no WebAssembly runtime in the process. It runs the graph's nodes in
// order on typed arrays (the operators of onnx_ops.ts), freeing each intermediate after its last use; the
// initializers are copied out of the model's bytes, which are then free.
// `OnnxSession.create` throws, naming them, on operators or types it does not implement.

import { alloc, type Data, DTYPES, MULTI_OUTPUT, OPS, type Tensor } from "./onnx_ops.ts";
import { decodeModel, type NodeProto, type TensorProto } from "./onnx_proto.ts";

export { erf } from "./onnx_ops.ts";

/** A tensor as onnxruntime's: `data` flat in row-major order, `dims` its shape. */
export type OnnxTensor =
  | { type: "float32"; data: Float32Array; dims: readonly number[] }
  | { type: "int64"; data: BigInt64Array; dims: readonly number[] };

const BYTES: Record<string, number> = { float32: 4, int32: 4, int64: 8, float64: 8, bool: 1 };
const MIN_OPSET = 13; // axes as inputs (Squeeze, Unsqueeze, ReduceSum), Clip's bounds as inputs

function initializer(t: TensorProto): Tensor {
  const type = DTYPES[t.dataType];
  if (!type) throw new Error(`ONNX initializer ${t.name}: unsupported data type ${t.dataType}`);
  if (t.external) throw new Error(`ONNX initializer ${t.name}: external data is not supported`);
  const n = t.dims.reduce((a, b) => a * b, 1);
  let data: Data;
  if (t.raw) {
    const raw = t.raw;
    if (raw.length !== n * BYTES[type]) {
      throw new Error(`ONNX initializer ${t.name}: ${raw.length} bytes for [${t.dims}]`);
    }
    // a copy of its own: no view keeps the model's bytes (all of them, the other towers' files' too) alive
    if (type === "float32") data = new Float32Array(raw.slice().buffer);
    else if (type === "float64") data = new Float64Array(raw.slice().buffer);
    else if (type === "int32") data = new Int32Array(raw.slice().buffer);
    else if (type === "bool") data = raw.slice();
    else {
      const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
      data = new Float64Array(n);
      for (let i = 0; i < n; i++) data[i] = Number(view.getBigInt64(i * 8, true));
    }
  } else {
    const values = type === "float32"
      ? t.floatData
      : type === "int64"
      ? t.int64Data
      : type === "float64"
      ? t.doubleData
      : t.int32Data; // int32 and bool
    if (values.length !== n) throw new Error(`ONNX initializer ${t.name}: ${values.length} values for [${t.dims}]`);
    data = alloc(type, n);
    data.set(values);
  }
  return { type, data, dims: t.dims };
}

export class OnnxSession {
  private constructor(
    readonly inputNames: string[],
    readonly outputNames: string[],
    private readonly inputTypes: Map<string, string>,
    private readonly nodes: NodeProto[],
    private readonly initializers: Map<string, Tensor>,
    private readonly frees: string[][], // the values last read by each node
  ) {}

  /** Decodes and checks a model: its operators, their order, and its initializers. */
  static create(bytes: Uint8Array): OnnxSession {
    const { graph, opsets } = decodeModel(bytes);
    const opset = opsets.find((o) => o.domain === "" || o.domain === "ai.onnx")?.version ?? 0;
    if (opset < MIN_OPSET) throw new Error(`ONNX model: opset ${opset} is not supported (${MIN_OPSET} or later)`);
    const unsupported = new Set(
      graph.nodes
        .filter((n) => !(n.domain === "" || n.domain === "ai.onnx") || !Object.hasOwn(OPS, n.opType))
        .map((n) => (n.domain ? `${n.domain}.${n.opType}` : n.opType)),
    );
    if (unsupported.size) throw new Error(`ONNX model: unsupported operators: ${[...unsupported].join(", ")}`);
    const multi = graph.nodes.find((n) =>
      MULTI_OUTPUT.has(n.opType) ? !n.outputs.some(Boolean) : n.outputs.filter(Boolean).length !== 1
    );
    if (multi) throw new Error(`ONNX model: ${multi.opType} ${multi.name} has ${multi.outputs.length} outputs, not 1`);

    const initializers = new Map(graph.initializers.map((t) => [t.name, initializer(t)]));
    const inputs = graph.inputs.filter((v) => !initializers.has(v.name));
    const inputTypes = new Map(inputs.map((v) => [v.name, DTYPES[v.elemType] ?? "unknown"]));
    const outputNames = graph.outputs.map((v) => v.name);
    const known = new Set([...inputTypes.keys(), ...initializers.keys()]);
    const lastUse = new Map<string, number>();
    graph.nodes.forEach((node, i) => {
      for (const name of node.inputs) {
        if (!name) continue;
        if (!known.has(name)) {
          throw new Error(`ONNX model: ${node.opType} ${node.name} reads ${name} before it is made`);
        }
        if (!initializers.has(name)) lastUse.set(name, i);
      }
      for (const name of node.outputs) known.add(name);
    });
    for (const name of outputNames) {
      if (!known.has(name)) throw new Error(`ONNX model: no node makes the output ${name}`);
      lastUse.delete(name);
    }
    const frees = graph.nodes.map((): string[] => []);
    for (const [name, i] of lastUse) frees[i].push(name);
    // an output that no node reads (e.g. LayerNormalization's Mean), and is no graph output, goes at once
    const read = new Set([...lastUse.keys(), ...outputNames]);
    graph.nodes.forEach((node, i) => frees[i].push(...node.outputs.filter((name) => name && !read.has(name))));
    return new OnnxSession([...inputTypes.keys()], outputNames, inputTypes, graph.nodes, initializers, frees);
  }

  /** Runs the graph on `feeds` (every input, by name); returns every output. */
  run(feeds: Record<string, OnnxTensor>): Record<string, OnnxTensor> {
    const values = new Map<string, Tensor>();
    for (const name of this.inputNames) {
      const feed = feeds[name];
      if (!feed) throw new Error(`ONNX run: the input ${name} is missing`);
      const want = this.inputTypes.get(name);
      if (feed.type !== want) throw new Error(`ONNX run: the input ${name} is ${feed.type}, the model takes ${want}`);
      const n = feed.dims.reduce((a, b) => a * b, 1);
      if (feed.data.length !== n) {
        throw new Error(`ONNX run: ${name} has ${feed.data.length} values for [${feed.dims}]`);
      }
      const data = feed.type === "float32" ? feed.data : Float64Array.from(feed.data, Number);
      values.set(name, { type: feed.type, data, dims: [...feed.dims] });
    }
    const value = (name: string) => (name ? values.get(name) ?? this.initializers.get(name) : undefined);
    this.nodes.forEach((node, i) => {
      const result = OPS[node.opType](node.inputs.map(value), node);
      const results = Array.isArray(result) ? result : [result];
      node.outputs.forEach((name, k) => {
        if (!name) return; // an optional output left out
        if (!results[k]) throw new Error(`ONNX run: ${node.opType} ${node.name} makes no output ${k} (${name})`);
        values.set(name, results[k]);
      });
      for (const name of this.frees[i]) values.delete(name);
    });
    const out: Record<string, OnnxTensor> = {};
    for (const name of this.outputNames) {
      const t = value(name)!;
      const dims = [...t.dims];
      if (t.type === "float32") out[name] = { type: "float32", data: Float32Array.from(t.data), dims };
      else if (t.type === "int64") out[name] = { type: "int64", data: BigInt64Array.from(t.data, BigInt), dims };
      else throw new Error(`ONNX run: the output ${name} is ${t.type}, which is not supported`);
    }
    return out;
  }
}
