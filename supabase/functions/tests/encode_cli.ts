// The parity tests' driver (tests/edge/test_features_parity.py): reads {"features": <features.json>, "rows": [...]}
// or {"features": ..., "request": <ItemsIn body>} from stdin and prints the features (float32 values as decimals
// that round-trip) or {"error": "validation", "message": ...}. {"features": ..., "requests": [...]} prints
// {"results": [one of those per request]}; {"stats": [[likes, nopes], ...]} the userStats; {"log1p": [...]} log1p.
import {
  FeaturePipeline,
  log1p,
  parseItemsRequest,
  userStats,
  ValidationError,
  type VideoRow,
} from "../_shared/features.ts";

const input = JSON.parse(await new Response(Deno.stdin.readable).text());
const floats = (a: Float32Array) => Array.from(a); // a float32 widened to float64 prints exactly
const ints = (a: BigInt64Array) => Array.from(a, Number);

function run(): unknown {
  if (input.stats) return { stats: input.stats.map(([l, n]: [number, number]) => floats(userStats(l, n))) };
  if (input.log1p) return { log1p: input.log1p.map(log1p) };
  const pipeline = FeaturePipeline.fromJson(input.features);
  if (input.requests) return { results: input.requests.map((r: unknown) => encode(pipeline, { request: r })) };
  return encode(pipeline, input);
}

function encode(pipeline: FeaturePipeline, input: { rows?: VideoRow[]; request?: unknown }): unknown {
  let rows: VideoRow[];
  try {
    rows = "request" in input ? parseItemsRequest(input.request) : input.rows!;
  } catch (e) {
    if (e instanceof ValidationError) return { error: "validation", message: e.message };
    throw e;
  }
  const f = pipeline.transform(rows);
  return {
    n: f.n,
    itemId: ints(f.itemId),
    tags: ints(f.tags),
    performers: ints(f.performers),
    categorical: ints(f.categorical),
    numeric: floats(f.numeric),
  };
}

console.log(JSON.stringify(run()));
