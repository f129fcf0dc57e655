// The ONNX executor's parity driver (tests/edge/test_onnx_executor.py): reads {"model": <path of a .onnx file>,
// "feeds": [{<input>: {"type": "float32" | "int64", "data": [...], "dims": [...]}}, ...]} from stdin and prints
// {"outputs": [{<output>: {"data": [...], "dims": [...]}}, ...]}, one per feed (float32 values widened to float64
// print exactly), or {"error": <message>} when the model cannot be loaded.
import { OnnxSession, type OnnxTensor } from "../_shared/onnx.ts";

interface Feed {
  type: "float32" | "int64";
  data: number[];
  dims: number[];
}

const input = JSON.parse(await new Response(Deno.stdin.readable).text());
let session: OnnxSession;
try {
  session = OnnxSession.create(Deno.readFileSync(input.model));
} catch (e) {
  console.log(JSON.stringify({ error: (e as Error).message }));
  Deno.exit(0);
}
const tensor = (f: Feed): OnnxTensor =>
  f.type === "float32"
    ? { type: "float32", data: Float32Array.from(f.data), dims: f.dims }
    : { type: "int64", data: BigInt64Array.from(f.data, BigInt), dims: f.dims };
const outputs = (input.feeds as Record<string, Feed>[]).map((feed) => {
  const out = session.run(Object.fromEntries(Object.entries(feed).map(([k, f]) => [k, tensor(f)])));
  return Object.fromEntries(
    Object.entries(out).map(([k, t]) => [k, { data: Array.from(t.data, Number), dims: t.dims }]),
  );
});
console.log(JSON.stringify({ outputs }));
