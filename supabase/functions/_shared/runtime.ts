// The ONNX runtime the towers run on, chosen once per worker by TWOTOWER_EDGE_ONNX:
// - "ts" (the default): onnx.ts, an exact executor of the towers' graphs in TypeScript. No WebAssembly runtime in the
//   process: ~80 MB RSS with the 100k user tower, against ~300 MB with ONNX Runtime Web (bench/edge.py), whose
//   WebAssembly initialisation (~115 MB) and V8's optimised recompilation of it (~80 MB) no code can avoid;
// - "native": the edge runtime's own ONNX Runtime, where it exposes one (Supabase's edge runtime does, under
//   `globalThis[Symbol.for("onnxruntime")]`, the hook transformers.js uses; not a stable API yet);
// - "web": ONNX Runtime Web (WebAssembly, one thread), imported only then.
// Each is checked against Python's ONNX Runtime by tests/edge/ (within 1e-5; the executor within 2.4e-7).

import type * as Ort from "onnxruntime-web";
import { OnnxSession } from "./onnx.ts";

export type TensorType = "float32" | "int64";

export interface TensorLike {
  type: TensorType;
  data: Float32Array | BigInt64Array;
  dims: readonly number[];
}

export interface Session {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Record<string, TensorLike>): Promise<Record<string, TensorLike>>;
  release(): Promise<void>;
}

type OrtModule = typeof Ort;

const SESSION_OPTIONS: Ort.InferenceSession.SessionOptions = {
  executionProviders: ["wasm"],
  graphOptimizationLevel: "all",
  enableCpuMemArena: false,
  enableMemPattern: false,
  executionMode: "sequential",
};

type Runtime = { name: string; create(bytes: Uint8Array): Promise<Session> };

let chosen: Promise<Runtime> | null = null;

function ortRuntime(name: string, ort: OrtModule, options: Ort.InferenceSession.SessionOptions): Runtime {
  return {
    name,
    async create(bytes: Uint8Array): Promise<Session> {
      const session = await ort.InferenceSession.create(bytes, options);
      return {
        inputNames: session.inputNames,
        outputNames: session.outputNames,
        release: () => session.release(),
        async run(feeds: Record<string, TensorLike>): Promise<Record<string, TensorLike>> {
          const tensors: Record<string, Ort.Tensor> = {};
          for (const [key, t] of Object.entries(feeds)) tensors[key] = new ort.Tensor(t.type, t.data, t.dims);
          const out = await session.run(tensors);
          const result: Record<string, TensorLike> = {};
          for (const [key, t] of Object.entries(out)) {
            result[key] = { type: t.type as TensorType, data: t.data as Float32Array, dims: t.dims };
          }
          return result;
        },
      };
    },
  };
}

async function choose(): Promise<Runtime> {
  const wanted = Deno.env.get("TWOTOWER_EDGE_ONNX") || "ts";
  if (wanted === "ts") {
    return {
      name: "ts",
      create: (bytes) =>
        Promise.resolve(OnnxSession.create(bytes)).then((session) => ({
          inputNames: session.inputNames,
          outputNames: session.outputNames,
          run: (feeds) => Promise.resolve(session.run(feeds as never) as Record<string, TensorLike>),
          release: () => Promise.resolve(), // plain typed arrays: the garbage collector frees them
        })),
    };
  }
  if (wanted === "native") {
    const native = (globalThis as Record<symbol, unknown>)[Symbol.for("onnxruntime")] as OrtModule | undefined;
    if (!native?.InferenceSession) {
      throw new Error("TWOTOWER_EDGE_ONNX=native, but this runtime exposes no ONNX Runtime (use ts or web)");
    }
    return ortRuntime("native", native, {});
  }
  if (wanted === "web") {
    const ort = await import("onnxruntime-web");
    ort.env.wasm.numThreads = 1; // an edge worker has one core; threads would only add memory
    ort.env.logLevel = "error";
    return ortRuntime("web", ort, SESSION_OPTIONS);
  }
  throw new Error(`TWOTOWER_EDGE_ONNX=${wanted}: expected ts, native or web`);
}

/** Which runtime runs the towers in this worker. */
export async function runtimeName(): Promise<string> {
  chosen ??= choose();
  return (await chosen).name;
}

/** A session of one ONNX model (its bytes, already verified). */
export async function createSession(bytes: Uint8Array): Promise<Session> {
  chosen ??= choose();
  return await (await chosen).create(bytes);
}
