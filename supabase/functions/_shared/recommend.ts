// Recommendations, as src/twotower/serve/recommend.py answers them, statement for statement: round trip 1 reads the
// user's recent likes and nopes with the features of those videos (and which model version is active, and the
// running experiment); the user tower runs here; round trip 2 is one pgvector query over the version's generation
// with the filters and the exclusion of seen videos, topped up by an exact backfill so that `limit` videos come back
// when that many exist.
// Without a model the linear model answers a user with likes, and popularity a user without history.

import { type Sql } from "./db.ts";
import { Params, PREPARED } from "./db.ts";
import { type Experiment } from "./experiment.ts";
import { userStats, type VideoRow } from "./features.ts";
import { type Model } from "./model.ts";

export type Algorithm = "two_tower" | "linear" | "popularity";

export interface Filters {
  exclude_tags: string[];
  include_tags: string[];
  makers: string[];
  max_price: number | null;
  released_after: string | null; // microseconds since 1970 (a naive date-time is UTC), as a decimal string
}

export const NO_FILTERS: Filters = {
  exclude_tags: [],
  include_tags: [],
  makers: [],
  max_price: null,
  released_after: null,
};

export interface History {
  likes: VideoRow[]; // most recent first
  nopes: VideoRow[];
  nLikes: number;
  nNopes: number;
  active: string | null; // the model version active as this was read
  experiment: Experiment | null; // the experiment running then
}

/** A video's tag or performer names as an array, sorted as the Python API's answers list them. */
const LISTS = (column: "tags" | "performers") => {
  const [link, table, key] = column === "tags"
    ? ["video_tags", "tags", "tag_id"]
    : ["video_performers", "performers", "performer_id"];
  return `COALESCE((SELECT array_agg(x.name ORDER BY x.name) FROM ${link} j JOIN ${table} x ON x.id = j.${key} ` +
    `WHERE j.video_id = v.id), '{}') AS ${column}`;
};

// the tag and performer names of the history's videos in one aggregate each (not a subquery per video), sorted by
// code point as Python's sorted() sorts them in the item table
const NAMES = (link: string, table: string, key: string) => `
    SELECT j.video_id, array_agg(x.name ORDER BY x.name COLLATE "C") AS names
    FROM ${link} j JOIN ${table} x ON x.id = j.${key} WHERE j.video_id IN (SELECT video_id FROM recent) GROUP BY 1`;

const HISTORY = `
WITH counts AS (
    SELECT count(*) FILTER (WHERE decision_type = 'like') AS likes,
           count(*) FILTER (WHERE decision_type = 'nope') AS nopes
    FROM user_video_decisions WHERE user_id = $1::uuid
), recent AS (
    (SELECT video_id, decision_type, created_at FROM user_video_decisions
     WHERE user_id = $1::uuid AND decision_type = 'like' ORDER BY created_at DESC LIMIT $2::int)
    UNION ALL
    (SELECT video_id, decision_type, created_at FROM user_video_decisions
     WHERE user_id = $1::uuid AND decision_type = 'nope' ORDER BY created_at DESC LIMIT $3::int)
), tagged AS (${NAMES("video_tags", "tags", "tag_id")}
), performed AS (${NAMES("video_performers", "performers", "performer_id")}
), running AS (
    SELECT id::text AS id, control_version, candidate_version, share, hash_key FROM experiments
    WHERE status = 'running' LIMIT 1
)
SELECT c.likes::float8 AS n_likes, c.nopes::float8 AS n_nopes, r.decision_type, r.video_id::text AS id,
       v.id IS NOT NULL AS found, v.maker, v.label, v.series, v.director, v.price::float8 AS price,
       v.duration_seconds::float8 AS duration_seconds,
       extract(epoch FROM v.product_released_at)::float8 AS product_released_at,
       v.review_count::float8 AS review_count, v.review_average::float8 AS review_average,
       COALESCE(tg.names, '{}') AS tags, COALESCE(pf.names, '{}') AS performers,
       (SELECT version FROM model_versions WHERE status = 'active') AS active,
       x.id AS experiment_id, x.control_version AS experiment_control, x.candidate_version AS experiment_candidate,
       x.share AS experiment_share, x.hash_key AS experiment_key
FROM counts c LEFT JOIN recent r ON true LEFT JOIN videos v ON v.id = r.video_id
LEFT JOIN tagged tg ON tg.video_id = r.video_id LEFT JOIN performed pf ON pf.video_id = r.video_id
LEFT JOIN running x ON true
ORDER BY r.created_at DESC NULLS LAST`;

/** Round trip 1: the user's most recent likes and nopes (their features as rows), totals, the active version and
 * the running experiment. */
export async function loadHistory(sql: Sql, user: string, maxLikes: number, maxNopes: number): Promise<History> {
  const rows = await sql.unsafe(HISTORY, [user, maxLikes, maxNopes], PREPARED);
  const history: History = { likes: [], nopes: [], nLikes: 0, nNopes: 0, active: null, experiment: null };
  for (const r of rows) {
    history.nLikes = Number(r.n_likes);
    history.nNopes = Number(r.n_nopes);
    history.active = r.active ?? null;
    history.experiment ??= r.experiment_id == null ? null : { // the same on every row
      id: Number(r.experiment_id),
      control: r.experiment_control,
      candidate: r.experiment_candidate,
      share: Number(r.experiment_share),
      hashKey: r.experiment_key,
    };
    if (!r.decision_type) continue;
    // a video deleted meanwhile is a padding row, as the Python item table has it
    const row: VideoRow | null = r.found ? (r as unknown as VideoRow) : null;
    (r.decision_type === "like" ? history.likes : history.nopes).push(row ?? { padding: true } as VideoRow);
  }
  return history;
}

/** The history cut to a model's window (a history read with a larger one keeps its most recent rows). */
export function cut(history: History, maxLikes: number, maxNopes: number): History {
  return { ...history, likes: history.likes.slice(0, maxLikes), nopes: history.nopes.slice(0, maxNopes) };
}

/** The user tower on a history (the same inputs as training: most recent first, stats over all decisions). */
export async function userEmbedding(model: Model, history: History): Promise<Float32Array> {
  const rows = [...history.likes, ...history.nopes];
  const table = model.pipeline.transform(rows.filter((r) => !(r as { padding?: boolean }).padding));
  const padded = padRows(model, table, rows);
  return await model.embedUser(
    padded,
    history.likes.length,
    history.nopes.length,
    userStats(history.nLikes, history.nNopes),
  ); // prettier-ignore
}

function padRows(model: Model, table: ReturnType<Model["pipeline"]["transform"]>, rows: VideoRow[]) {
  if (table.n === rows.length) return table;
  const p = model.pipeline;
  const n = rows.length;
  const out = {
    n,
    itemId: new BigInt64Array(n),
    tags: new BigInt64Array(n * p.maxTags),
    performers: new BigInt64Array(n * p.maxPerformers),
    categorical: new BigInt64Array(n * 4),
    numeric: new Float32Array(n * p.numericWidth),
  };
  let j = 0;
  rows.forEach((row, i) => {
    if ((row as { padding?: boolean }).padding) return;
    out.itemId[i] = table.itemId[j];
    out.tags.set(table.tags.subarray(j * p.maxTags, (j + 1) * p.maxTags), i * p.maxTags);
    out.performers.set(table.performers.subarray(j * p.maxPerformers, (j + 1) * p.maxPerformers), i * p.maxPerformers);
    out.categorical.set(table.categorical.subarray(j * 4, (j + 1) * 4), i * 4);
    out.numeric.set(table.numeric.subarray(j * p.numericWidth, (j + 1) * p.numericWidth), i * p.numericWidth);
    j += 1;
  });
  return out;
}

const META = `v.id::text AS id, v.title, v.thumbnail_url, v.maker, v.price::float8 AS price,
    ${LISTS("tags")}, ${LISTS("performers")}`;

function conditions(f: Filters, user: string | null, excludeLiked: boolean, p: Params): string {
  const parts = ["v.is_active"];
  const tagged = (param: string) =>
    `EXISTS (SELECT 1 FROM video_tags ft JOIN tags t ON t.id = ft.tag_id WHERE ft.video_id = v.id AND t.name = ANY(${param}))`;
  if (f.exclude_tags.length) parts.push(`NOT ${tagged(p.add(f.exclude_tags, "text[]"))}`);
  if (f.include_tags.length) parts.push(tagged(p.add(f.include_tags, "text[]")));
  if (f.makers.length) parts.push(`v.maker = ANY(${p.add(f.makers, "text[]")})`);
  if (f.max_price !== null) parts.push(`v.price <= ${p.add(f.max_price, "float8")}`);
  if (f.released_after !== null) { // microseconds since 1970, exactly
    parts.push(
      `v.product_released_at >= 'epoch'::timestamptz + ${p.add(f.released_after, "int8")} * interval '1 microsecond'`,
    );
  }
  if (user !== null) {
    const kinds = excludeLiked ? "" : " AND d.decision_type = 'nope'";
    parts.push(
      `NOT EXISTS (SELECT 1 FROM user_video_decisions d WHERE d.user_id = ${
        p.add(user, "uuid")
      } AND d.video_id = v.id${kinds})`,
    );
  }
  return parts.join(" AND ");
}

const VERSION = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Round trip 2 (recommend.py ann_query): the version and the limit are literals (a validated name, an int <= 100),
 * so the statement is prepared once per (version, limit) and its plan knows the limit. */
export async function twoTower(
  sql: Sql,
  model: Model,
  vector: Float32Array,
  user: string,
  limit: number,
  excludeLiked: boolean,
  f: Filters,
): Promise<Record<string, unknown>[]> { // prettier-ignore
  if (!VERSION.test(model.version) || !Number.isInteger(limit)) throw new Error("invalid version or limit");
  const p = new Params();
  const where = conditions(f, user, excludeLiked, p);
  const q = p.add(`[${Array.from(vector).join(",")}]`);
  const total = p.add(limit, "int");
  const d = model.dim;
  const distance = `e.embedding::vector(${d}) <#> (${q})::vector(${d})`;
  const version = `'${model.version}'`;
  const query = `
WITH ann AS MATERIALIZED (
    SELECT e.video_id, ${distance} AS distance
    FROM video_embeddings e JOIN videos v ON v.id = e.video_id
    WHERE e.model_version = ${version} AND ${where}
    ORDER BY ${distance}
    LIMIT ${limit}
), backfill AS MATERIALIZED (
    SELECT e.video_id, (${distance}) + 0 AS distance
    FROM video_embeddings e JOIN videos v ON v.id = e.video_id
    WHERE (SELECT count(*) FROM ann) < ${total} AND e.model_version = ${version} AND ${where}
      AND e.video_id NOT IN (SELECT video_id FROM ann)
    ORDER BY 2
    LIMIT ${limit}
), picked AS (
    SELECT * FROM ann UNION ALL SELECT * FROM backfill ORDER BY distance LIMIT ${limit}
)
SELECT ${META}, -p.distance AS similarity_score
FROM picked p JOIN videos v ON v.id = p.video_id
ORDER BY p.distance`;
  return await sql.unsafe(query, p.values as never[], PREPARED);
}

const LIST_QUERY = (where: string, ids: string, scores: string, limit: string) => `
WITH cand AS (
    SELECT c.video_id, c.ord, c.score
    FROM unnest(${ids}, ${scores}) WITH ORDINALITY AS c(video_id, score, ord)
), hit AS MATERIALIZED (
    SELECT c.video_id, c.ord, c.score FROM cand c JOIN videos v ON v.id = c.video_id
    WHERE ${where} ORDER BY c.ord LIMIT ${limit}
), backfill AS MATERIALIZED (
    SELECT v.id AS video_id, 1e12::float8 AS ord, 0.0::float8 AS score FROM videos v
    WHERE (SELECT count(*) FROM hit) < ${limit} AND ${where} AND v.id NOT IN (SELECT video_id FROM hit)
    ORDER BY random() LIMIT ${limit}
), picked AS (
    SELECT * FROM hit UNION ALL SELECT * FROM backfill ORDER BY ord LIMIT ${limit}
)
SELECT ${META}, p.score AS similarity_score FROM picked p JOIN videos v ON v.id = p.video_id ORDER BY p.ord`;

/** These candidates in order, filtered, topped up with random eligible videos (recommend.py ``listed``). */
export async function listed(
  sql: Sql,
  candidates: [string, number][],
  user: string | null,
  limit: number,
  excludeLiked: boolean,
  f: Filters,
): Promise<Record<string, unknown>[]> { // prettier-ignore
  const p = new Params();
  const where = conditions(f, user, excludeLiked, p);
  const ids = p.add(candidates.map((c) => c[0]), "uuid[]");
  const scores = p.add(candidates.map((c) => c[1]), "float8[]");
  return await sql.unsafe(LIST_QUERY(where, ids, scores, p.add(limit, "int")), p.values as never[], PREPARED);
}

const LINEAR_CANDIDATES = `
WITH liked AS (
    SELECT video_id FROM user_video_decisions WHERE user_id = $1::uuid AND decision_type = 'like'
    ORDER BY created_at DESC LIMIT 50
), profile AS (
    SELECT vt.tag_id, count(*)::float8 AS w FROM liked JOIN video_tags vt USING (video_id) GROUP BY vt.tag_id
), scored AS (
    SELECT vt.video_id, sum(p.w) AS s FROM profile p JOIN video_tags vt USING (tag_id) GROUP BY vt.video_id
)
SELECT s.video_id::text AS id, s.s / sqrt(greatest((SELECT count(*) FROM video_tags x WHERE x.video_id = s.video_id), 1))
       / greatest((SELECT sum(w) FROM profile), 1) AS score
FROM scored s ORDER BY score DESC, s.video_id LIMIT $2::int`;

/** The linear model: the user's liked-tag profile · each video's normalised tag vector. */
export async function linear(
  sql: Sql,
  user: string,
  limit: number,
  excludeLiked: boolean,
  f: Filters,
): Promise<Record<string, unknown>[]> { // prettier-ignore
  const rows = await sql.unsafe(LINEAR_CANDIDATES, [user, 20 * limit + 200], PREPARED);
  return await listed(sql, rows.map((r) => [r.id, Number(r.score)]), user, limit, excludeLiked, f);
}

/** Like counts of the most liked videos and a sample of active videos, read again every ~5 minutes. */
export class Popularity {
  private popular: [string, number][] = [];
  private sample: string[] = [];
  private due = 0;

  constructor(private readonly ttlMs = 300_000, private readonly top = 2000, private readonly size = 5000) {}

  private refreshing: Promise<void> | null = null;

  /** Read the counts again: one refresh at a time (concurrent requests share it), with a serial plan in a transaction
   * of its own and up to 30 s (the aggregate reads every like); a failure keeps the old counts and is retried in a
   * minute. Only the first one, with no counts yet, is waited for. */
  private refresh(sql: Sql): Promise<void> {
    this.refreshing ??= sql.begin(async (tx) => {
      await tx.unsafe("SET LOCAL max_parallel_workers_per_gather = 0");
      await tx.unsafe("SET LOCAL statement_timeout = 30000");
      const popular = await tx.unsafe(
        "SELECT d.video_id::text AS id, count(*)::float8 AS n FROM user_video_decisions d JOIN videos v ON v.id = d.video_id " +
          "WHERE d.decision_type = 'like' AND v.is_active GROUP BY d.video_id ORDER BY 2 DESC, 1 LIMIT $1::int",
        [this.top],
        PREPARED,
      );
      const sample = await tx.unsafe(
        "SELECT id::text AS id FROM videos WHERE is_active ORDER BY random() LIMIT $1::int",
        [this.size],
        PREPARED,
      );
      this.popular = popular.map((r) => [r.id, Number(r.n)]);
      this.sample = sample.map((r) => r.id);
      this.due = Date.now() + this.ttlMs * (0.9 + 0.2 * Math.random());
    }).catch((error) => {
      this.due = Date.now() + 60_000;
      if (!this.popular.length && !this.sample.length) throw error; // nothing to answer with: the request fails
      console.warn(`popularity refresh failed (keeping the last counts): ${error?.message ?? error}`);
    }).finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  /** About `k` candidates: popular videos sampled by sqrt-popularity (Gumbel top-k), a share `explore` of random
   * active videos mixed in; scores are popularity relative to the most liked video. */
  candidates(k: number, explore = 0.2): [string, number][] {
    const top = this.popular.length ? this.popular[0][1] : 1;
    const keys = this.popular.map(([id, c]) =>
      [0.5 * Math.log(c) - Math.log(-Math.log(Math.random() || 1e-12)), id, c / top] as const
    );
    keys.sort((a, b) => b[0] - a[0]);
    const nExplore = this.sample.length ? Math.max(1, Math.round(k * explore)) : 0;
    const picked = keys.slice(0, Math.max(0, k - nExplore)).map(([, id, s]) => [id, s] as [string, number]);
    const pool = [...this.sample];
    const exploreIds: string[] = [];
    for (let i = 0; i < Math.min(nExplore, pool.length); i++) {
      const j = i + Math.floor(Math.random() * (pool.length - i));
      [pool[i], pool[j]] = [pool[j], pool[i]];
      exploreIds.push(pool[i]);
    }
    const out: [string, number][] = [];
    const seen = new Set<string>();
    const every = nExplore ? Math.max(2, Math.round(1 / explore)) : 0;
    let e = 0;
    picked.forEach((item, i) => {
      if (every && i % every === every - 1 && e < exploreIds.length) {
        const id = exploreIds[e++];
        if (!seen.has(id)) out.push([id, 0]), seen.add(id);
      }
      if (!seen.has(item[0])) out.push(item), seen.add(item[0]);
    });
    for (const id of exploreIds.slice(e)) if (!seen.has(id)) out.push([id, 0]), seen.add(id);
    return out;
  }

  async recommend(
    sql: Sql,
    user: string | null,
    limit: number,
    excludeLiked: boolean,
    f: Filters,
  ): Promise<Record<string, unknown>[]> { // prettier-ignore
    if (Date.now() > this.due) {
      const refreshed = this.refresh(sql);
      if (!this.popular.length && !this.sample.length) await refreshed;
      else refreshed.catch(() => {}); // in the background: the last counts answer meanwhile
    }
    return await listed(sql, this.candidates(3 * limit), user, limit, excludeLiked, f);
  }
}
