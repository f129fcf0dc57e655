// The ONNX operators (default domain, opset 18 semantics) that the exported towers use, on plain typed arrays.
// float32 tensors are Float32Array (each op computes in float64 and rounds once to float32 at its output, as
// ONNX Runtime's float32 kernels do, up to summation order); int64 tensors are Float64Array holding integers
// (indices and shapes, exact below 2^53); bool is Uint8Array.

import type { NodeProto } from "./onnx_proto.ts";

export type DType = "float32" | "float64" | "int64" | "int32" | "bool";
export type Data = Float32Array | Float64Array | Int32Array | Uint8Array;
export interface Tensor {
  type: DType;
  data: Data;
  dims: readonly number[];
}
/** An operator: its output, or its outputs in order (the several-output ones of MULTI_OUTPUT). */
type Op = (inputs: (Tensor | undefined)[], node: NodeProto) => Tensor | Tensor[];

/** TensorProto.DataType codes of the types above. */
export const DTYPES: Record<number, DType> = { 1: "float32", 6: "int32", 7: "int64", 9: "bool", 11: "float64" };

export function alloc(type: DType, n: number): Data {
  if (type === "float32") return new Float32Array(n);
  if (type === "int32") return new Int32Array(n);
  if (type === "bool") return new Uint8Array(n);
  return new Float64Array(n); // float64, int64
}

const size = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);
const isInt = (type: DType) => type === "int64" || type === "int32";

function strides(dims: readonly number[]): number[] {
  const s = new Array<number>(dims.length);
  for (let i = dims.length - 1, acc = 1; i >= 0; i--) {
    s[i] = acc;
    acc *= dims[i];
  }
  return s;
}

function attr(node: NodeProto, name: string, fallback: number): number {
  return node.attributes.get(name)?.i ?? node.attributes.get(name)?.f ?? fallback;
}

function need(inputs: (Tensor | undefined)[], i: number, node: NodeProto): Tensor {
  const t = inputs[i];
  if (!t) throw new Error(`ONNX ${node.opType} (${node.name}): input ${i} is missing`);
  return t;
}

/** The values of a small int64 (or int32) tensor, e.g. axes or a shape. */
function ints(t: Tensor | undefined): number[] {
  return t ? Array.from(t.data) : [];
}

function axis(a: number, rank: number, node: NodeProto): number {
  const r = a < 0 ? a + rank : a;
  if (r < 0 || r >= rank) throw new Error(`ONNX ${node.opType} (${node.name}): axis ${a} out of range`);
  return r;
}

/** Copies `src` read at `offset + Σ index[d]·stride[d]` over an output of `dims` (strides may be 0 or negative). */
function strided(src: Data, offset: number, stride: readonly number[], dims: readonly number[], out: Data): Data {
  const rank = dims.length, n = out.length;
  if (n === 0) return out;
  if (rank === 0) {
    out[0] = src[offset];
    return out;
  }
  const inner = dims[rank - 1], step = stride[rank - 1];
  const idx = new Array<number>(rank).fill(0);
  let base = offset;
  for (let o = 0; o < n; o += inner) {
    for (let j = 0, p = base; j < inner; j++, p += step) out[o + j] = src[p];
    for (let d = rank - 2; d >= 0; d--) {
      base += stride[d];
      if (++idx[d] < dims[d]) break;
      base -= stride[d] * dims[d];
      idx[d] = 0;
    }
  }
  return out;
}

function broadcastDims(a: readonly number[], b: readonly number[], node: NodeProto): number[] {
  const rank = Math.max(a.length, b.length);
  const out = new Array<number>(rank);
  for (let i = 0; i < rank; i++) {
    const x = a[a.length - rank + i] ?? 1, y = b[b.length - rank + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) {
      throw new Error(`ONNX ${node.opType} (${node.name}): shapes [${a}] and [${b}] do not broadcast`);
    }
    out[i] = x === 1 ? y : x;
  }
  return out;
}

/** `t` broadcast to `dims` (the same array when its shape already is `dims`). */
function expandTo(t: Tensor, dims: readonly number[]): Data {
  if (t.dims.length === dims.length && t.dims.every((d, i) => d === dims[i])) return t.data;
  const s = strides(t.dims), lead = dims.length - t.dims.length;
  const stride = dims.map((_, i) => (i < lead || t.dims[i - lead] === 1 ? 0 : s[i - lead]));
  return strided(t.data, 0, stride, dims, alloc(t.type, size(dims)));
}

type Binary = "Add" | "Sub" | "Mul" | "Div" | "Min" | "Greater";

function binary(op: Binary, a: Tensor, b: Tensor, node: NodeProto): Tensor {
  if (a.type !== b.type) throw new Error(`ONNX ${op} (${node.name}): input types ${a.type} and ${b.type} differ`);
  const dims = broadcastDims(a.dims, b.dims, node);
  const n = size(dims);
  const out = alloc(op === "Greater" ? "bool" : a.type, n);
  // a broadcast scalar is read as one number; anything else is expanded to the output's shape first
  const as = a.data.length === 1 && n !== 1, bs = b.data.length === 1 && n !== 1;
  const x = as ? a.data : expandTo(a, dims), y = bs ? b.data : expandTo(b, dims);
  const x0 = x[0], y0 = y[0];
  const int = isInt(a.type);
  switch (op) {
    case "Add":
      for (let i = 0; i < n; i++) out[i] = (as ? x0 : x[i]) + (bs ? y0 : y[i]);
      break;
    case "Sub":
      for (let i = 0; i < n; i++) out[i] = (as ? x0 : x[i]) - (bs ? y0 : y[i]);
      break;
    case "Mul":
      for (let i = 0; i < n; i++) out[i] = (as ? x0 : x[i]) * (bs ? y0 : y[i]);
      break;
    case "Div":
      if (int) {
        for (let i = 0; i < n; i++) {
          const d = bs ? y0 : y[i];
          if (d === 0) throw new Error(`ONNX Div (${node.name}): integer division by zero`);
          out[i] = Math.trunc((as ? x0 : x[i]) / d);
        }
      } else for (let i = 0; i < n; i++) out[i] = (as ? x0 : x[i]) / (bs ? y0 : y[i]);
      break;
    case "Min":
      for (let i = 0; i < n; i++) {
        const p = as ? x0 : x[i], q = bs ? y0 : y[i];
        out[i] = p !== p || q !== q ? NaN : Math.min(p, q);
      }
      break;
    case "Greater":
      for (let i = 0; i < n; i++) out[i] = (as ? x0 : x[i]) > (bs ? y0 : y[i]) ? 1 : 0;
      break;
  }
  return { type: op === "Greater" ? "bool" : a.type, data: out, dims };
}

function unary(t: Tensor, f: (x: number) => number, node: NodeProto): Tensor {
  if (t.type !== "float32" && t.type !== "float64") throw new Error(`ONNX ${node.opType} (${node.name}): ${t.type}`);
  const out = alloc(t.type, t.data.length);
  for (let i = 0; i < out.length; i++) out[i] = f(t.data[i]);
  return { type: t.type, data: out, dims: t.dims };
}

/** erf in float64 (|error| < 1e-13): its Maclaurin series below 3, a continued fraction of erfc above. */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    const x2 = x * x;
    let term = x, sum = x;
    for (let k = 1; k < 80; k++) {
      term *= -x2 / k;
      const add = term / (2 * k + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return sum * 1.1283791670955126; // 2/√π
  }
  if (ax > 6) return Math.sign(x); // erfc(6) < 3e-17
  let f = ax;
  for (let k = 60; k >= 1; k--) f = ax + (k / 2) / f;
  const erfc = Math.exp(-ax * ax) / (1.7724538509055159 * f); // √π
  return x > 0 ? 1 - erfc : erfc - 1;
}

function reduce(node: NodeProto, inputs: (Tensor | undefined)[], square: boolean): Tensor {
  const x = need(inputs, 0, node);
  const keep = attr(node, "keepdims", 1) !== 0;
  const given = inputs[1] ? ints(inputs[1]) : node.attributes.get("axes")?.ints ?? [];
  if (given.length === 0 && attr(node, "noop_with_empty_axes", 0) !== 0) return x;
  const rank = x.dims.length;
  const axes = new Set(given.length === 0 ? x.dims.map((_, i) => i) : given.map((a) => axis(a, rank, node)));
  const kept = x.dims.map((d, i) => (axes.has(i) ? 1 : d));
  const ks = strides(kept);
  const stride = x.dims.map((_, i) => (axes.has(i) ? 0 : ks[i]));
  const acc = new Float64Array(size(kept));
  const src = x.data, n = src.length;
  if (rank > 0 && n > 0) {
    const inner = x.dims[rank - 1], step = stride[rank - 1];
    const idx = new Array<number>(rank).fill(0);
    let base = 0;
    for (let o = 0; o < n; o += inner) {
      if (square) {
        for (let j = 0, p = base; j < inner; j++, p += step) acc[p] += src[o + j] * src[o + j];
      } else for (let j = 0, p = base; j < inner; j++, p += step) acc[p] += src[o + j];
      for (let d = rank - 2; d >= 0; d--) {
        base += stride[d];
        if (++idx[d] < x.dims[d]) break;
        base -= stride[d] * x.dims[d];
        idx[d] = 0;
      }
    }
  } else if (n > 0) acc[0] = square ? src[0] * src[0] : src[0];
  if (square) { for (let i = 0; i < acc.length; i++) acc[i] = Math.sqrt(acc[i]); }
  const out = alloc(x.type, acc.length);
  out.set(acc);
  return { type: x.type, data: out, dims: keep ? kept : x.dims.filter((_, i) => !axes.has(i)) };
}

function cast(x: Tensor, to: DType): Tensor {
  const out = alloc(to, x.data.length);
  const src = x.data;
  if (to === "bool") { for (let i = 0; i < src.length; i++) out[i] = src[i] !== 0 ? 1 : 0; }
  else if (isInt(to) && !isInt(x.type) && x.type !== "bool") {
    for (let i = 0; i < src.length; i++) out[i] = Math.trunc(src[i]);
  } else out.set(src); // Float32Array rounds; Int32Array wraps as C's int64→int32 narrowing does
  return { type: to, data: out, dims: x.dims };
}

/** out = A·Bᵀ (A [m, k], B [n, k]) on the 4×4 blocks of out; returns the rows done (their last n % 4 columns are not). */
function gemmNT(A: Float32Array, B: Float32Array, m: number, n: number, k: number, out: Float64Array): number {
  const m4 = m - (m % 4), n4 = n - (n % 4);
  for (let i = 0; i < m4; i += 4) {
    const a0 = i * k, a1 = a0 + k, a2 = a1 + k, a3 = a2 + k;
    for (let j = 0; j < n4; j += 4) {
      const b0 = j * k, b1 = b0 + k, b2 = b1 + k, b3 = b2 + k;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      for (let p = 0; p < k; p++) {
        const x0 = B[b0 + p], x1 = B[b1 + p], x2 = B[b2 + p], x3 = B[b3 + p];
        const v0 = A[a0 + p], v1 = A[a1 + p], v2 = A[a2 + p], v3 = A[a3 + p];
        s00 += v0 * x0, s01 += v0 * x1, s02 += v0 * x2, s03 += v0 * x3;
        s10 += v1 * x0, s11 += v1 * x1, s12 += v1 * x2, s13 += v1 * x3;
        s20 += v2 * x0, s21 += v2 * x1, s22 += v2 * x2, s23 += v2 * x3;
        s30 += v3 * x0, s31 += v3 * x1, s32 += v3 * x2, s33 += v3 * x3;
      }
      let o = i * n + j;
      out[o] = s00, out[o + 1] = s01, out[o + 2] = s02, out[o + 3] = s03, o += n;
      out[o] = s10, out[o + 1] = s11, out[o + 2] = s12, out[o + 3] = s13, o += n;
      out[o] = s20, out[o + 1] = s21, out[o + 2] = s22, out[o + 3] = s23, o += n;
      out[o] = s30, out[o + 1] = s31, out[o + 2] = s32, out[o + 3] = s33;
    }
  }
  return m4;
}

function gemm(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const a = need(inputs, 0, node), b = need(inputs, 1, node), c = inputs[2];
  const ta = attr(node, "transA", 0) !== 0, tb = attr(node, "transB", 0) !== 0;
  const alpha = attr(node, "alpha", 1), beta = attr(node, "beta", 1);
  if (a.dims.length !== 2 || b.dims.length !== 2) throw new Error(`ONNX Gemm (${node.name}): inputs must be 2-D`);
  const [m, k] = ta ? [a.dims[1], a.dims[0]] : a.dims;
  const [k2, n] = tb ? [b.dims[1], b.dims[0]] : b.dims;
  if (k !== k2) throw new Error(`ONNX Gemm (${node.name}): [${a.dims}] × [${b.dims}] do not match`);
  const A = a.data, B = b.data, acc = new Float64Array(m * n), out = alloc(a.type, m * n);
  // element (i, p) of A is A[i·ai + p·ap]; (p, j) of B is B[p·bp + j·bj]
  const ai = ta ? 1 : k, ap = ta ? m : 1, bp = tb ? 1 : n, bj = tb ? k : 1;
  const C = c ? expandTo(c, [m, n]) : undefined;
  const done = !ta && tb && A instanceof Float32Array && B instanceof Float32Array ? gemmNT(A, B, m, n, k, acc) : 0;
  for (let i = 0; i < m; i++) {
    for (let j = i < done ? n - (n % 4) : 0; j < n; j++) {
      let s = 0;
      for (let p = 0, pa = i * ai, pb = j * bj; p < k; p++, pa += ap, pb += bp) s += A[pa] * B[pb];
      acc[i * n + j] = s;
    }
  }
  for (let o = 0; o < m * n; o++) out[o] = alpha * acc[o] + (C ? beta * C[o] : 0);
  return { type: a.type, data: out, dims: [m, n] };
}

function gather(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = need(inputs, 0, node), ix = need(inputs, 1, node);
  const ax = axis(attr(node, "axis", 0), x.dims.length, node);
  const outer = size(x.dims.slice(0, ax)), len = x.dims[ax], inner = size(x.dims.slice(ax + 1));
  const idx = ix.data, out = alloc(x.type, outer * idx.length * inner);
  const src = x.data;
  for (let o = 0, w = 0; o < outer; o++) {
    for (let q = 0; q < idx.length; q++, w += inner) {
      let r = idx[q];
      if (r < 0) r += len;
      if (!(r >= 0 && r < len)) throw new Error(`ONNX Gather (${node.name}): index ${idx[q]} out of [0, ${len})`);
      const from = (o * len + r) * inner;
      if (inner === 1) out[w] = src[from];
      else out.set(src.subarray(from, from + inner), w);
    }
  }
  return { type: x.type, data: out, dims: [...x.dims.slice(0, ax), ...ix.dims, ...x.dims.slice(ax + 1)] };
}

function slice(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = need(inputs, 0, node);
  const starts = ints(need(inputs, 1, node)), ends = ints(need(inputs, 2, node));
  const rank = x.dims.length;
  const axes = inputs[3] ? ints(inputs[3]).map((a) => axis(a, rank, node)) : starts.map((_, i) => i);
  const steps = inputs[4] ? ints(inputs[4]) : starts.map(() => 1);
  const dims = [...x.dims], s = strides(x.dims), stride = [...s];
  let offset = 0;
  axes.forEach((a, i) => {
    const d = x.dims[a], step = steps[i];
    if (step === 0) throw new Error(`ONNX Slice (${node.name}): step 0`);
    let start = starts[i] < 0 ? starts[i] + d : starts[i];
    let end = ends[i] < 0 ? ends[i] + d : ends[i];
    if (step > 0) {
      start = Math.min(Math.max(start, 0), d);
      end = Math.min(Math.max(end, 0), d);
    } else {
      start = Math.min(Math.max(start, 0), d - 1);
      end = Math.min(Math.max(end, -1), d - 1);
    }
    dims[a] = Math.max(0, Math.ceil((end - start) / step));
    offset += start * s[a];
    stride[a] = s[a] * step;
  });
  return { type: x.type, data: strided(x.data, offset, stride, dims, alloc(x.type, size(dims))), dims };
}

function reshape(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = need(inputs, 0, node), shape = ints(need(inputs, 1, node));
  const allowzero = attr(node, "allowzero", 0) !== 0;
  const dims = shape.map((d, i) => (d === 0 && !allowzero ? x.dims[i] : d));
  const minus = dims.indexOf(-1);
  if (minus >= 0) {
    const rest = size(dims.filter((_, i) => i !== minus));
    dims[minus] = rest === 0 ? 0 : x.data.length / rest;
  }
  if (size(dims) !== x.data.length || dims.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new Error(`ONNX Reshape (${node.name}): [${x.dims}] cannot become [${shape}]`);
  }
  return { type: x.type, data: x.data, dims };
}

function concat(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const xs = inputs.filter((t): t is Tensor => !!t);
  const rank = xs[0].dims.length, ax = axis(attr(node, "axis", 0), rank, node);
  const dims = [...xs[0].dims];
  dims[ax] = xs.reduce((s, t) => s + t.dims[ax], 0);
  const outer = size(dims.slice(0, ax)), out = alloc(xs[0].type, size(dims));
  const blocks = xs.map((t) => size(t.dims.slice(ax)));
  for (let o = 0, w = 0; o < outer; o++) {
    xs.forEach((t, i) => {
      const bsz = blocks[i];
      out.set(t.data.subarray(o * bsz, (o + 1) * bsz), w);
      w += bsz;
    });
  }
  return { type: xs[0].type, data: out, dims };
}

function clip(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = need(inputs, 0, node);
  const lo = inputs[1] ? inputs[1].data[0] : -Infinity, hi = inputs[2] ? inputs[2].data[0] : Infinity;
  const out = alloc(x.type, x.data.length);
  for (let i = 0; i < out.length; i++) {
    const v = x.data[i];
    out[i] = v < lo ? lo : v > hi ? hi : v;
  }
  return { type: x.type, data: out, dims: x.dims };
}

function squeeze(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = need(inputs, 0, node);
  const axes = new Set(ints(inputs[1]).map((a) => axis(a, x.dims.length, node)));
  const dims = x.dims.filter((d, i) => (axes.size ? !axes.has(i) : d !== 1));
  for (const a of axes) {
    if (x.dims[a] !== 1) throw new Error(`ONNX Squeeze (${node.name}): axis ${a} of [${x.dims}] is not 1`);
  }
  return { type: x.type, data: x.data, dims };
}

function unsqueeze(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = need(inputs, 0, node);
  const rank = x.dims.length + ints(need(inputs, 1, node)).length;
  const axes = new Set(ints(inputs[1]).map((a) => axis(a, rank, node)));
  const dims: number[] = [];
  for (let i = 0, j = 0; i < rank; i++) dims.push(axes.has(i) ? 1 : x.dims[j++]);
  return { type: x.type, data: x.data, dims };
}

function shape(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = need(inputs, 0, node), r = x.dims.length;
  const norm = (v: number) => Math.min(Math.max(v < 0 ? v + r : v, 0), r);
  const start = norm(attr(node, "start", 0)), end = norm(attr(node, "end", r));
  const dims = x.dims.slice(start, Math.max(start, end));
  return { type: "int64", data: Float64Array.from(dims), dims: [dims.length] };
}

function range(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const [start, limit, delta] = [0, 1, 2].map((i) => need(inputs, i, node));
  const s = start.data[0], d = delta.data[0];
  const n = Math.max(0, Math.ceil((limit.data[0] - s) / d));
  const out = alloc(start.type, n);
  for (let i = 0; i < n; i++) out[i] = s + i * d;
  return { type: start.type, data: out, dims: [n] };
}

function expand(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = need(inputs, 0, node);
  const dims = broadcastDims(x.dims, ints(need(inputs, 1, node)), node);
  return { type: x.type, data: expandTo(x, dims), dims };
}

const isFloat = (t: Tensor) => t.type === "float32" || t.type === "float64";

function floats(t: Tensor, node: NodeProto): Tensor {
  if (!isFloat(t)) throw new Error(`ONNX ${node.opType} (${node.name}): ${t.type} inputs are not supported`);
  return t;
}

/** numpy's matmul: a 1-D input is a row (A) or a column (B) vector; the leading (batch) dims broadcast. */
function matmul(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const a = floats(need(inputs, 0, node), node), b = floats(need(inputs, 1, node), node);
  if (a.type !== b.type) throw new Error(`ONNX MatMul (${node.name}): input types ${a.type} and ${b.type} differ`);
  if (a.dims.length === 0 || b.dims.length === 0) throw new Error(`ONNX MatMul (${node.name}): scalar input`);
  const ad = a.dims.length === 1 ? [1, a.dims[0]] : a.dims, bd = b.dims.length === 1 ? [b.dims[0], 1] : b.dims;
  const m = ad[ad.length - 2], k = ad[ad.length - 1], k2 = bd[bd.length - 2], n = bd[bd.length - 1];
  if (k !== k2) throw new Error(`ONNX MatMul (${node.name}): [${a.dims}] × [${b.dims}] do not match`);
  const aLead = ad.slice(0, -2), bLead = bd.slice(0, -2);
  const lead = broadcastDims(aLead, bLead, node), batches = size(lead);
  // each input's offset for each batch of the output (0 strides along its broadcast dims)
  const offsets = (dims: readonly number[], block: number): number[] => {
    const s = strides(dims), shift = lead.length - dims.length;
    const stride = lead.map((_, i) => (i < shift || dims[i - shift] === 1 ? 0 : s[i - shift] * block));
    const out = new Array<number>(batches).fill(0), idx = new Array<number>(lead.length).fill(0);
    for (let q = 0, base = 0; q < batches; q++) {
      out[q] = base;
      for (let d = lead.length - 1; d >= 0; d--) {
        base += stride[d];
        if (++idx[d] < lead[d]) break;
        base -= stride[d] * lead[d];
        idx[d] = 0;
      }
    }
    return out;
  };
  const ao = offsets(aLead, m * k), bo = offsets(bLead, k * n);
  const A = a.data, B = b.data, out = alloc(a.type, batches * m * n), row = new Float64Array(n);
  for (let q = 0; q < batches; q++) {
    for (let i = 0; i < m; i++) {
      row.fill(0);
      for (let p = 0, pa = ao[q] + i * k, pb = bo[q]; p < k; p++, pb += n) {
        const v = A[pa + p];
        for (let j = 0; j < n; j++) row[j] += v * B[pb + j];
      }
      out.set(row, (q * m + i) * n);
    }
  }
  const dims = [...lead];
  if (a.dims.length > 1) dims.push(m);
  if (b.dims.length > 1) dims.push(n);
  return { type: a.type, data: out, dims };
}

function transpose(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = need(inputs, 0, node), rank = x.dims.length;
  const perm = node.attributes.get("perm")?.ints ?? x.dims.map((_, i) => rank - 1 - i);
  if (perm.length !== rank || new Set(perm.map((p) => axis(p, rank, node))).size !== rank) {
    throw new Error(`ONNX Transpose (${node.name}): perm [${perm}] for [${x.dims}]`);
  }
  const s = strides(x.dims), p = perm.map((a) => axis(a, rank, node));
  const dims = p.map((a) => x.dims[a]);
  return { type: x.type, data: strided(x.data, 0, p.map((a) => s[a]), dims, alloc(x.type, x.data.length)), dims };
}

/** Softmax along one axis (opset 13+), the max subtracted first; computed in float64. */
function softmax(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor {
  const x = floats(need(inputs, 0, node), node);
  const ax = axis(attr(node, "axis", -1), x.dims.length, node);
  const len = x.dims[ax], inner = size(x.dims.slice(ax + 1)), outer = size(x.dims.slice(0, ax));
  const src = x.data, out = alloc(x.type, src.length), e = new Float64Array(len);
  for (let o = 0; o < outer; o++) {
    for (let c = 0; c < inner; c++) {
      const base = o * len * inner + c;
      let max = -Infinity;
      for (let j = 0; j < len; j++) max = Math.max(max, src[base + j * inner]);
      let sum = 0;
      for (let j = 0; j < len; j++) {
        e[j] = Math.exp(src[base + j * inner] - max);
        sum += e[j];
      }
      for (let j = 0; j < len; j++) out[base + j * inner] = e[j] / sum;
    }
  }
  return { type: x.type, data: out, dims: x.dims };
}

/** LayerNormalization (opset 17) over the dims from `axis` on, in float64; its Mean and InvStdDev outputs too. */
function layerNorm(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor[] {
  const x = floats(need(inputs, 0, node), node), scale = need(inputs, 1, node), bias = inputs[2];
  const rank = x.dims.length, ax = axis(attr(node, "axis", -1), rank, node);
  const eps = attr(node, "epsilon", 1e-5), stash = attr(node, "stash_type", 1);
  if (stash !== 1 && node.outputs.slice(1).some(Boolean)) {
    throw new Error(`ONNX LayerNormalization (${node.name}): stash_type ${stash} with Mean/InvStdDev outputs`);
  }
  const norm = x.dims.slice(ax), len = size(norm), rows = size(x.dims.slice(0, ax));
  for (const t of bias ? [scale, bias] : [scale]) broadcastDims(norm, t.dims, node); // throws if they do not fit
  const S = expandTo(scale, norm), Bias = bias ? expandTo(bias, norm) : undefined;
  const src = x.data, out = alloc(x.type, src.length);
  const means = new Float32Array(rows), invs = new Float32Array(rows);
  for (let r = 0, o = 0; r < rows; r++, o += len) {
    let sum = 0;
    for (let j = 0; j < len; j++) sum += src[o + j];
    const mean = sum / len;
    let sq = 0;
    for (let j = 0; j < len; j++) sq += (src[o + j] - mean) * (src[o + j] - mean);
    const inv = 1 / Math.sqrt(sq / len + eps);
    for (let j = 0; j < len; j++) out[o + j] = (src[o + j] - mean) * inv * S[j] + (Bias ? Bias[j] : 0);
    means[r] = mean, invs[r] = inv;
  }
  const stat = [...x.dims.slice(0, ax), ...norm.map(() => 1)];
  return [
    { type: x.type, data: out, dims: x.dims },
    { type: "float32", data: means, dims: stat },
    { type: "float32", data: invs, dims: stat },
  ];
}

/** Split (opset 18): the sizes from the `split` input, else `num_outputs` (or as many outputs) parts, the last smaller. */
function split(node: NodeProto, inputs: (Tensor | undefined)[]): Tensor[] {
  const x = need(inputs, 0, node), ax = axis(attr(node, "axis", 0), x.dims.length, node), d = x.dims[ax];
  const count = node.outputs.length;
  let sizes: number[];
  if (inputs[1]) sizes = ints(inputs[1]);
  else {
    const parts = attr(node, "num_outputs", count);
    if (parts !== count) throw new Error(`ONNX Split (${node.name}): num_outputs ${parts} for ${count} outputs`);
    const each = Math.ceil(d / parts);
    sizes = Array.from({ length: parts }, (_, i) => Math.max(0, Math.min(each, d - i * each)));
  }
  if (sizes.length !== count || sizes.some((v) => v < 0) || sizes.reduce((a, b) => a + b, 0) !== d) {
    throw new Error(`ONNX Split (${node.name}): sizes [${sizes}] for axis ${ax} of [${x.dims}] and ${count} outputs`);
  }
  const s = strides(x.dims);
  let start = 0;
  return sizes.map((len) => {
    const dims = [...x.dims];
    dims[ax] = len;
    const t = { type: x.type, data: strided(x.data, start * s[ax], s, dims, alloc(x.type, size(dims))), dims };
    start += len;
    return t;
  });
}

const f32 = (f: (x: number) => number): Op => (inputs, node) => unary(need(inputs, 0, node), f, node);

export const OPS: Record<string, Op> = {
  Add: (i, n) => binary("Add", need(i, 0, n), need(i, 1, n), n),
  Sub: (i, n) => binary("Sub", need(i, 0, n), need(i, 1, n), n),
  Mul: (i, n) => binary("Mul", need(i, 0, n), need(i, 1, n), n),
  Div: (i, n) => binary("Div", need(i, 0, n), need(i, 1, n), n),
  Greater: (i, n) => binary("Greater", need(i, 0, n), need(i, 1, n), n),
  Min: (i, n) => i.slice(1).reduce((a: Tensor, b) => binary("Min", a, b!, n), need(i, 0, n)),
  Exp: f32(Math.exp),
  Log: f32(Math.log),
  Erf: f32(erf),
  ReduceSum: (i, n) => reduce(n, i, false),
  ReduceL2: (i, n) => reduce(n, i, true),
  Cast: (i, n) => {
    const to = DTYPES[attr(n, "to", 0)];
    if (!to) throw new Error(`ONNX Cast (${n.name}): unsupported target type ${attr(n, "to", 0)}`);
    return cast(need(i, 0, n), to);
  },
  Gemm: (i, n) => gemm(n, i),
  Gather: (i, n) => gather(n, i),
  Slice: (i, n) => slice(n, i),
  Reshape: (i, n) => reshape(n, i),
  Concat: (i, n) => concat(n, i),
  Clip: (i, n) => clip(n, i),
  Squeeze: (i, n) => squeeze(n, i),
  Unsqueeze: (i, n) => unsqueeze(n, i),
  Shape: (i, n) => shape(n, i),
  Range: (i, n) => range(n, i),
  Expand: (i, n) => expand(n, i),
  MatMul: (i, n) => matmul(n, i),
  Transpose: (i, n) => transpose(n, i),
  Softmax: (i, n) => softmax(n, i),
  LayerNormalization: (i, n) => layerNorm(n, i),
  Split: (i, n) => split(n, i),
};

/** The operators that may have more than one output (their Op returns them all, in order). */
export const MULTI_OUTPUT: ReadonlySet<string> = new Set(["LayerNormalization", "Split"]);
