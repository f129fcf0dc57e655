// Runs the exported towers with onnxruntime-node and writes their outputs, for `twotower validate`.
// usage: node check_towers.cjs MODEL_DIR FEEDS.json OUTPUT.json   (onnxruntime-node found through NODE_PATH)
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const ort = require("onnxruntime-node");

function tensor(spec) {
  const size = spec.dims.reduce((a, b) => a * b, 1);
  if (spec.data.length !== size) throw new Error(`expected ${size} values, got ${spec.data.length}`);
  if (spec.dtype === "int64") return new ort.Tensor("int64", BigInt64Array.from(spec.data, BigInt), spec.dims);
  if (spec.dtype === "float32") return new ort.Tensor("float32", Float32Array.from(spec.data), spec.dims);
  throw new Error(`unsupported dtype ${spec.dtype}`);
}

async function main() {
  const [modelDir, feedsPath, outputPath] = process.argv.slice(2);
  if (!outputPath) throw new Error("usage: node check_towers.cjs MODEL_DIR FEEDS.json OUTPUT.json");
  const feeds = JSON.parse(fs.readFileSync(feedsPath, "utf8"));
  const result = { onnxruntime_node: require("onnxruntime-node/package.json").version, towers: {} };
  for (const [tower, inputs] of Object.entries(feeds)) {
    const session = await ort.InferenceSession.create(path.join(modelDir, `${tower}_tower.onnx`));
    const feed = {};
    for (const [name, spec] of Object.entries(inputs)) feed[name] = tensor(spec);
    const output = (await session.run(feed))[session.outputNames[0]];
    result.towers[tower] = { dims: output.dims, data: Array.from(output.data) };
  }
  fs.writeFileSync(outputPath, JSON.stringify(result));
}

main().catch((err) => {
  process.stderr.write(`${err && err.message ? err.message : err}\n`);
  process.exit(1);
});
