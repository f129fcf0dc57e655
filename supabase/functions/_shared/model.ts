// The model a function answers with: the active version's towers and features.json from the artifact store
// (checksums verified), run by the worker's ONNX runtime (runtime.ts). Every request reads which version is
// active (in the same round trip as the user's history); a promoted version or a rollback is loaded beside the one
// answering and swapped in with one assignment, so no request fails and none waits, except the very first of a
// worker. A version that cannot be loaded (a missing or corrupt file) is retried after a minute; meanwhile the
// previous version or the fallbacks answer, and the answer says which.
//
// While an experiment runs against the version answering (read in the same round trip), its candidate is loaded
// beside it the same way, and a user of the candidate arm is answered by it (src/twotower/serve/runtime.py
// ModelHolder.answering): until it is loaded, or when it cannot be, that user gets the active version and the answer
// is recorded outside the experiment. It is dropped when the experiment stops, or becomes the active version at
// once when it is promoted.

import { type Arm, arm as armOf, type Experiment } from "./experiment.ts";
import { FeaturePipeline, type ItemFeatures } from "./features.ts";
import { createSession, runtimeName, type Session, type TensorLike } from "./runtime.ts";
import { type ArtifactStore, fetchVersion } from "./store.ts";

const RETRY_FAILED_MS = 60_000;
const RELEASE_AFTER_MS = 30_000; // a replaced model's sessions outlive the requests that were using them (5 s max)
const ITEM_INPUTS = ["item_id", "tags", "performers", "categorical", "numeric"] as const;
export type Tower = "user" | "item";
const FILES: Record<Tower, string> = { user: "user_tower.onnx", item: "item_tower.onnx" };

export class Model {
  constructor(
    readonly version: string,
    readonly dim: number,
    readonly maxLikes: number,
    readonly maxNopes: number,
    readonly pipeline: FeaturePipeline,
    private readonly sessions: Partial<Record<Tower, Session>>,
  ) {}

  /** Free the runtime's memory of the towers (ONNX Runtime Web's WebAssembly heap is not garbage collected). */
  release(): void {
    for (const session of Object.values(this.sessions)) {
      session?.release().catch((error) => console.warn(`releasing a session: ${error}`));
    }
  }

  private session(tower: Tower): Session {
    const session = this.sessions[tower];
    if (!session) throw new Error(`the ${tower} tower is not loaded in this function`);
    return session;
  }

  /** The user tower on a history: `likes` then `nopes` rows of `table` (most recent first), with the stats. */
  async embedUser(table: ItemFeatures, nLikes: number, nNopes: number, stats: Float32Array): Promise<Float32Array> {
    const feed: Record<string, TensorLike> = {};
    const side = (prefix: string, start: number, n: number) => {
      const slots = Math.max(n, 1); // no history: one masked padding slot (the towers take any length >= 1)
      const rows = n === 0 ? [-1] : Array.from({ length: n }, (_, i) => start + i);
      const width = {
        item_id: 1,
        tags: this.pipeline.maxTags,
        performers: this.pipeline.maxPerformers,
        categorical: 4,
        numeric: this.pipeline.numericWidth,
      } as const; // prettier-ignore
      for (const field of ITEM_INPUTS) {
        const w = width[field];
        const source = fieldOf(table, field);
        const out = field === "numeric" ? new Float32Array(slots * w) : new BigInt64Array(slots * w);
        rows.forEach((row, i) => {
          if (row >= 0) (out as Float32Array).set((source as Float32Array).subarray(row * w, (row + 1) * w), i * w);
        });
        const dims = field === "item_id" ? [1, slots] : [1, slots, w];
        feed[`${prefix}_${field}`] = { type: field === "numeric" ? "float32" : "int64", data: out, dims };
      }
      feed[`${prefix}_mask`] = {
        type: "float32",
        data: new Float32Array(slots).fill(n === 0 ? 0 : 1),
        dims: [1, slots],
      };
    };
    side("like", 0, nLikes);
    side("nope", nLikes, nNopes);
    feed.stats = { type: "float32", data: stats, dims: [1, stats.length] };
    const session = this.session("user");
    const out = await session.run(feed);
    return new Float32Array(out[session.outputNames[0]].data as Float32Array);
  }

  /** Item-tower embeddings of encoded videos, `[n][dim]`. */
  async embedItems(features: ItemFeatures): Promise<Float32Array[]> {
    const n = features.n;
    const session = this.session("item");
    const out = await session.run({
      item_id: { type: "int64", data: features.itemId, dims: [n] },
      tags: { type: "int64", data: features.tags, dims: [n, this.pipeline.maxTags] },
      performers: { type: "int64", data: features.performers, dims: [n, this.pipeline.maxPerformers] },
      categorical: { type: "int64", data: features.categorical, dims: [n, 4] },
      numeric: { type: "float32", data: features.numeric, dims: [n, this.pipeline.numericWidth] },
    });
    const data = out[session.outputNames[0]].data as Float32Array;
    return Array.from({ length: n }, (_, i) => data.slice(i * this.dim, (i + 1) * this.dim));
  }
}

function fieldOf(table: ItemFeatures, field: (typeof ITEM_INPUTS)[number]): BigInt64Array | Float32Array {
  return {
    item_id: table.itemId,
    tags: table.tags,
    performers: table.performers,
    categorical: table.categorical,
    numeric: table.numeric,
  }[field]; // prettier-ignore
}

export async function loadModel(store: ArtifactStore, version: string, towers: Tower[]): Promise<Model> {
  const names = ["features.json", ...towers.map((t) => FILES[t])];
  const { manifest, files } = await fetchVersion(store, version, names);
  const config = (manifest.tower_config ?? {}) as Record<string, unknown>;
  const dim = Number(manifest.embedding_dim);
  const maxLikes = Number(config.max_likes);
  const maxNopes = Number(config.max_nopes);
  if (!(dim > 0 && maxLikes > 0 && maxNopes > 0)) {
    throw new Error(`the manifest of ${version} lacks embedding_dim or tower_config`);
  }
  const pipeline = FeaturePipeline.fromJson(JSON.parse(new TextDecoder().decode(files.get("features.json"))));
  const sessions: Partial<Record<Tower, Session>> = {};
  for (const tower of towers) {
    const bytes = files.get(FILES[tower])!;
    files.delete(FILES[tower]);
    sessions[tower] = await createSession(bytes);
  }
  return new Model(version, dim, maxLikes, maxNopes, pipeline, sessions);
}

/** Which model answers: `model` (null: the fallbacks) and, when it is not the active version, why. */
export interface Choice {
  model: Model | null;
  reason: string | null;
}

/** ... for one user: and the experiment and arm to record with the answer (null, null outside an experiment, and
 * for a user of the candidate arm while the candidate cannot answer). */
export interface Answering extends Choice {
  experiment: number | null;
  arm: Arm | null;
}

type Loader = (store: ArtifactStore, version: string, towers: Tower[]) => Promise<Model>;

export class ModelHolder {
  current: Model | null = null;
  candidate: Model | null = null; // the running experiment's candidate, beside the current model
  private wanted: string | null = null; // the version the database said is active, at the last request
  private wantedCandidate: string | null = null; // the candidate of the experiment running at the last request
  private readonly loading = new Map<string, Promise<void>>(); // at most one load of a version at a time
  private candidateLoading: { version: string; done: Promise<void> } | null = null;
  private failed: { version: string; at: number; reason: string } | null = null;
  private candidateFailed: { version: string; at: number; reason: string } | null = null;
  loads = 0;
  candidateLoads = 0;

  constructor(
    private readonly store: ArtifactStore,
    private readonly towers: Tower[] = ["user"],
    private readonly firstWaitMs = Number(Deno.env.get("TWOTOWER_EDGE_MODEL_WAIT_MS") ?? 10_000),
    private readonly loader: Loader = loadModel,
  ) {}

  /** The model that answers `user`, and the experiment and arm to record (runtime.py `answering`): `active` and
   * `running` as the request's first round trip read them. The experiment applies while its control is the version
   * answering; its candidate loads in the background (a worker's first requests wait for it as for the active
   * version, at most `firstWaitMs` in all). */
  async answering(user: string, active: string | null, running: Experiment | null): Promise<Answering> {
    const cold = this.current === null;
    const deadline = Date.now() + this.firstWaitMs;
    const follows = running !== null && running.control === active ? running : null;
    this.follow(follows, active);
    const choice = await this.choose(active);
    const model = choice.model;
    if (follows === null || model === null || model.version !== follows.control) {
      return { ...choice, experiment: null, arm: null };
    }
    const arm = await armOf(follows, user);
    if (arm === "control") return { ...choice, experiment: follows.id, arm };
    if (follows.candidate === model.version) return { ...choice, experiment: follows.id, arm }; // an A/A test
    const loading = this.candidateLoading;
    if (this.candidate?.version !== follows.candidate && cold && loading?.version === follows.candidate) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const left = Math.max(0, deadline - Date.now());
      await Promise.race([loading.done, new Promise((resolve) => timer = setTimeout(resolve, left))]);
      clearTimeout(timer);
    }
    const candidate = this.candidate as Model | null; // set by loadCandidate() meanwhile
    if (candidate?.version !== follows.candidate) return { ...choice, experiment: null, arm: null };
    return { model: candidate, reason: choice.reason, experiment: follows.id, arm };
  }

  /** Keep the candidate of `running` loaded (start loading it), or drop the one loaded when no experiment runs
   * against the active version any more; a candidate that became the active version is kept for choose(). */
  private follow(running: Experiment | null, active: string | null): void {
    const wanted = running === null || running.candidate === running.control ? null : running.candidate;
    this.wantedCandidate = wanted;
    const loaded = this.candidate;
    if (loaded !== null && loaded.version !== wanted && loaded.version !== active) {
      this.candidate = null;
      console.info(`candidate ${loaded.version} dropped: no experiment runs with it`);
      setTimeout(() => loaded.release(), RELEASE_AFTER_MS);
    }
    if (wanted === null || this.candidate?.version === wanted || this.candidateLoading?.version === wanted) return;
    const failed = this.candidateFailed;
    if (failed?.version === wanted && Date.now() - failed.at < RETRY_FAILED_MS) return;
    const done = this.loadCandidate(wanted);
    this.candidateLoading = { version: wanted, done };
  }

  private async loadCandidate(version: string): Promise<void> {
    const started = performance.now();
    try {
      const model = await this.loader(this.store, version, this.towers);
      if (this.wantedCandidate !== version) { // the experiment stopped while it loaded
        model.release();
        return;
      }
      const old = this.candidate;
      this.candidate = model;
      if (old !== null && old !== model && old !== this.current) setTimeout(() => old.release(), RELEASE_AFTER_MS);
      this.candidateFailed = null;
      this.candidateLoads += 1;
      console.info(`candidate ${version} loaded in ${Math.round(performance.now() - started)} ms`);
    } catch (error) {
      const reason = String((error as Error)?.message ?? error).slice(0, 300);
      this.candidateFailed = { version, at: Date.now(), reason };
      console.error(`cannot load candidate ${version}: ${reason} (its arm is answered by the active version)`);
    } finally {
      if (this.candidateLoading?.version === version) this.candidateLoading = null;
    }
  }

  /** The model for the version the database says is active now (`null`: none is). A worker's first requests wait
   * for their model at most `firstWaitMs` (then the fallbacks answer while it loads); later ones never wait. */
  async choose(active: string | null): Promise<Choice> {
    this.wanted = active;
    if (active === null) {
      this.swap(null); // no version is active: unload, the fallbacks answer
      return { model: null, reason: "no model version is active" };
    }
    if (this.current?.version === active) return { model: this.current, reason: null };
    if (this.candidate?.version === active) { // the experiment's candidate was promoted: it answers from now on
      const promoted = this.candidate;
      this.candidate = null;
      this.swap(promoted);
      this.failed = null;
      return { model: promoted, reason: null };
    }
    const failed = this.failed;
    if (failed?.version === active && Date.now() - failed.at < RETRY_FAILED_MS) {
      return { model: this.current, reason: `model ${active} failed to load: ${failed.reason}` };
    }
    let done = this.loading.get(active);
    if (done === undefined) {
      done = this.load(active);
      this.loading.set(active, done);
    }
    if (this.current !== null) return { model: this.current, reason: `loading model ${active}` };
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([done, new Promise((resolve) => timer = setTimeout(resolve, this.firstWaitMs))]);
    clearTimeout(timer);
    const loaded = this.current as Model | null; // set by load() meanwhile
    if (loaded?.version === active) return { model: loaded, reason: null };
    const why = this.failed?.version === active ? `failed to load: ${this.failed.reason}` : "is still loading";
    return { model: loaded, reason: `model ${active} ${why}` };
  }

  /** Answer with `model` from now on; the one it replaces is released once its requests are surely done. */
  private swap(model: Model | null): void {
    const old = this.current;
    this.current = model;
    if (old !== null && old !== model) setTimeout(() => old.release(), RELEASE_AFTER_MS);
  }

  private async load(version: string): Promise<void> {
    const started = performance.now();
    try {
      const model = await this.loader(this.store, version, this.towers);
      if (this.wanted !== version) { // rolled back (or unloaded) while it loaded: not this one after all
        model.release();
        return;
      }
      this.swap(model);
      this.failed = null;
      this.loads += 1;
      const ms = Math.round(performance.now() - started);
      console.info(`model ${version} loaded in ${ms} ms (ONNX runtime: ${await runtimeName()})`);
    } catch (error) {
      const reason = String((error as Error)?.message ?? error).slice(0, 300);
      this.failed = { version, at: Date.now(), reason };
      console.error(`cannot load model ${version}: ${reason} (keeping ${this.current?.version ?? "the fallbacks"})`);
    } finally {
      this.loading.delete(version);
    }
  }
}
