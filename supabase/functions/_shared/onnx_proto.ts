// A decoder of the parts of an ONNX ModelProto (onnx/onnx.proto, protobuf wire format) that the executor of
// onnx.ts needs: the graph's nodes, attributes, initializers, inputs and outputs. Tensor bytes (raw_data) stay
// views into the model's bytes: nothing large is copied here.

export interface TensorProto {
  name: string;
  dims: number[];
  dataType: number;
  raw?: Uint8Array; // a view into the model bytes
  floatData: number[];
  int32Data: number[];
  int64Data: number[];
  doubleData: number[];
  external: boolean;
}

export interface AttributeProto {
  name: string;
  type: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: TensorProto;
  floats: number[];
  ints: number[];
}

export interface NodeProto {
  name: string;
  opType: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  attributes: Map<string, AttributeProto>;
}

export interface ValueInfo {
  name: string;
  elemType: number; // TensorProto.DataType; 0 when not a tensor or not given
}

export interface GraphProto {
  name: string;
  nodes: NodeProto[];
  initializers: TensorProto[];
  inputs: ValueInfo[];
  outputs: ValueInfo[];
}

export interface ModelProto {
  graph: GraphProto;
  opsets: { domain: string; version: number }[];
}

const utf8 = new TextDecoder();
const TWO32 = 4294967296;

/** A protobuf reader over `bytes[start, end)`. */
class Reader {
  constructor(readonly bytes: Uint8Array, public pos: number, readonly end: number) {}

  get done(): boolean {
    return this.pos >= this.end;
  }

  /** A varint as a JS number; int64 two's complement negatives come out negative (exact within 2^53). */
  varint(): number {
    let lo = 0, hi = 0, shift = 0, b: number;
    do {
      if (this.pos >= this.end) throw new Error("ONNX model: truncated varint");
      b = this.bytes[this.pos++];
      if (shift < 28) lo |= (b & 0x7f) << shift;
      else if (shift === 28) {
        lo |= (b & 0x0f) << 28;
        hi |= (b & 0x7f) >> 4;
      } else if (shift < 64) hi |= (b & 0x7f) << (shift - 32);
      shift += 7;
    } while (b & 0x80);
    return (hi | 0) * TWO32 + (lo >>> 0);
  }

  tag(): [field: number, wire: number] {
    const t = this.varint();
    return [Math.floor(t / 8), t & 7];
  }

  sub(): Reader {
    const n = this.varint();
    if (this.pos + n > this.end) throw new Error("ONNX model: truncated field");
    const r = new Reader(this.bytes, this.pos, this.pos + n);
    this.pos += n;
    return r;
  }

  bytesField(): Uint8Array {
    const r = this.sub();
    return this.bytes.subarray(r.pos, r.end);
  }

  string(): string {
    return utf8.decode(this.bytesField());
  }

  private view(): DataView {
    return new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
  }

  float(): number {
    const v = this.view().getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  double(): number {
    const v = this.view().getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.pos = this.sub().end;
    else if (wire === 5) this.pos += 4;
    else throw new Error(`ONNX model: unsupported protobuf wire type ${wire}`);
  }

  /** A repeated scalar field, packed (wire type 2) or not. */
  repeated(wire: number, out: number[], one: (r: Reader) => number): void {
    if (wire !== 2) {
      out.push(one(this));
      return;
    }
    const r = this.sub();
    while (!r.done) out.push(one(r));
  }
}

const varint = (r: Reader) => r.varint();
const float = (r: Reader) => r.float();
const double = (r: Reader) => r.double();

function tensor(r: Reader): TensorProto {
  const t: TensorProto = {
    name: "",
    dims: [],
    dataType: 0,
    floatData: [],
    int32Data: [],
    int64Data: [],
    doubleData: [],
    external: false,
  };
  while (!r.done) {
    const [field, wire] = r.tag();
    if (field === 1) r.repeated(wire, t.dims, varint);
    else if (field === 2) t.dataType = r.varint();
    else if (field === 4) r.repeated(wire, t.floatData, float);
    else if (field === 5) r.repeated(wire, t.int32Data, varint);
    else if (field === 7) r.repeated(wire, t.int64Data, varint);
    else if (field === 8) t.name = r.string();
    else if (field === 9) t.raw = r.bytesField();
    else if (field === 10) r.repeated(wire, t.doubleData, double);
    else if (field === 14) t.external = r.varint() === 1;
    else r.skip(wire);
  }
  return t;
}

function attribute(r: Reader): AttributeProto {
  const a: AttributeProto = { name: "", type: 0, floats: [], ints: [] };
  while (!r.done) {
    const [field, wire] = r.tag();
    if (field === 1) a.name = r.string();
    else if (field === 2) a.f = r.float();
    else if (field === 3) a.i = r.varint();
    else if (field === 4) a.s = r.bytesField();
    else if (field === 5) a.t = tensor(r.sub());
    else if (field === 7) r.repeated(wire, a.floats, float);
    else if (field === 8) r.repeated(wire, a.ints, varint);
    else if (field === 20) a.type = r.varint();
    else r.skip(wire);
  }
  return a;
}

function node(r: Reader): NodeProto {
  const n: NodeProto = { name: "", opType: "", domain: "", inputs: [], outputs: [], attributes: new Map() };
  while (!r.done) {
    const [field, wire] = r.tag();
    if (field === 1) n.inputs.push(r.string());
    else if (field === 2) n.outputs.push(r.string());
    else if (field === 3) n.name = r.string();
    else if (field === 4) n.opType = r.string();
    else if (field === 5) {
      const a = attribute(r.sub());
      n.attributes.set(a.name, a);
    } else if (field === 7) n.domain = r.string();
    else r.skip(wire);
  }
  return n;
}

/** ValueInfoProto: name=1, type=2 (TypeProto: tensor_type=1 (TypeProto.Tensor: elem_type=1)). */
function valueInfo(r: Reader): ValueInfo {
  const v: ValueInfo = { name: "", elemType: 0 };
  while (!r.done) {
    const [field, wire] = r.tag();
    if (field === 1) v.name = r.string();
    else if (field === 2) {
      const type = r.sub();
      while (!type.done) {
        const [f, w] = type.tag();
        if (f !== 1) {
          type.skip(w);
          continue;
        }
        const tt = type.sub();
        while (!tt.done) {
          const [g, x] = tt.tag();
          if (g === 1) v.elemType = tt.varint();
          else tt.skip(x);
        }
      }
    } else r.skip(wire);
  }
  return v;
}

function graph(r: Reader): GraphProto {
  const g: GraphProto = { name: "", nodes: [], initializers: [], inputs: [], outputs: [] };
  while (!r.done) {
    const [field, wire] = r.tag();
    if (field === 1) g.nodes.push(node(r.sub()));
    else if (field === 2) g.name = r.string();
    else if (field === 5) g.initializers.push(tensor(r.sub()));
    else if (field === 11) g.inputs.push(valueInfo(r.sub()));
    else if (field === 12) g.outputs.push(valueInfo(r.sub()));
    else r.skip(wire);
  }
  return g;
}

/** Decodes a serialized ModelProto. Throws on a truncated or malformed message, or one without a graph. */
export function decodeModel(bytes: Uint8Array): ModelProto {
  const r = new Reader(bytes, 0, bytes.length);
  let g: GraphProto | undefined;
  const opsets: { domain: string; version: number }[] = [];
  while (!r.done) {
    const [field, wire] = r.tag();
    if (field === 7) g = graph(r.sub());
    else if (field === 8) {
      const o = r.sub();
      const opset = { domain: "", version: 0 };
      while (!o.done) {
        const [f, w] = o.tag();
        if (f === 1) opset.domain = o.string();
        else if (f === 2) opset.version = o.varint();
        else o.skip(w);
      }
      opsets.push(opset);
    } else r.skip(wire);
  }
  if (r.pos !== r.end) throw new Error("ONNX model: truncated message");
  if (!g) throw new Error("ONNX model: no graph (is this an ONNX file?)");
  return { graph: g, opsets };
}
