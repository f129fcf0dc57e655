// What the three functions share: one worker's context (settings, database client, authenticator, model holder,
// served log) and the request logic of src/twotower/serve/queries.py (recommend, embed_user, embed_items).

import { authConfig, Authenticator, type Principal } from "./auth.ts";
import { connect, type Sql } from "./db.ts";
import { parseItemsRequest, ValidationError, type VideoRow } from "./features.ts";
import { names, parseDateTime } from "./validate.ts";
import { HttpError, invalid, unavailable } from "./http.ts";
import { type Arm } from "./experiment.ts";
import { type Model, ModelHolder, type Tower } from "./model.ts";
import {
  type Algorithm,
  cut,
  type Filters,
  linear,
  loadHistory,
  Popularity,
  twoTower,
  userEmbedding,
} from "./recommend.ts";
import { ServedLog } from "./served.ts";
import { openStore } from "./store.ts";

export const MAX_LIMIT = 100;
const DEFAULT_WINDOW = { likes: 50, nopes: 20 }; // the history read before a worker knows its model's window

export interface Context {
  sql: Sql;
  auth: Authenticator;
  holder: ModelHolder;
  popularity: Popularity;
  served: ServedLog;
}

let context: Context | null = null;

/** The worker's context, made on first use (a missing setting is a clear 500, not a crash of the worker). */
export function getContext(towers: Tower[]): Context {
  if (context) return context;
  const url = Deno.env.get("SUPABASE_DB_URL") || Deno.env.get("DATABASE_URL");
  try {
    if (!url) throw new Error("SUPABASE_DB_URL is not set");
    const sql = connect(url);
    context = {
      sql,
      auth: new Authenticator(authConfig()),
      holder: new ModelHolder(openStore(), towers),
      popularity: new Popularity(),
      served: ServedLog.fromEnv(sql),
    };
  } catch (error) {
    // the details (a malformed SUPABASE_DB_URL's message quotes the URL, password and all) go to the log only,
    // with every piece of the URL's user-info hidden
    console.error(`configuration error: ${hideUserInfo(String((error as Error)?.message ?? error), url ?? "")}`);
    throw new HttpError(500, "config_error", "the function is not configured; see its logs");
  }
  return context;
}

/** `text` with the URL's user-info (user and password, as written and percent-decoded) replaced by `***`. */
function hideUserInfo(text: string, url: string): string {
  const info = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)@/i.exec(url)?.[1] ?? "";
  let out = text.replaceAll(url, "***");
  for (const piece of [info, ...info.split(/[:@]/)].filter((p) => p.length >= 3)) {
    out = out.replaceAll(piece, "***");
    try {
      out = out.replaceAll(decodeURIComponent(piece), "***");
    } catch { /* not percent-encoded text */ }
  }
  return out;
}

export async function authenticate(ctx: Context, request: Request): Promise<Principal> {
  return await ctx.auth.authenticate(request.headers.get("authorization"));
}

export interface Answer {
  recommendations: Record<string, unknown>[];
  total_count: number;
  algorithm: Algorithm;
  model_version: string | null;
  experiment_arm: Arm | null;
  fallback_reason?: string;
}

/** The user's recommendations: two-tower from their history, popularity for a user without history; without a
 * model (none active, or it cannot be loaded) the linear model for a user with likes; during an experiment, from the
 * model of the user's arm. The answer is logged (with its experiment and arm) for the live like-rate and the
 * experiment's measurement, after the response. */
export async function recommend(
  ctx: Context,
  user: string,
  limit: number,
  excludeLiked: boolean,
  f: Filters,
): Promise<Answer> { // prettier-ignore
  const known = [ctx.holder.current, ctx.holder.candidate].filter((m) => m !== null);
  const window = known.length
    ? { likes: Math.max(...known.map((m) => m.maxLikes)), nopes: Math.max(...known.map((m) => m.maxNopes)) }
    : DEFAULT_WINDOW; // the larger of the models that may answer: one read serves either arm
  let history = await loadHistory(ctx.sql, user, window.likes, window.nopes);
  const { model, reason, experiment, arm } = await ctx.holder.answering(user, history.active, history.experiment);
  const answer = (rows: Record<string, unknown>[], algorithm: Algorithm, version: string | null): Answer => {
    const out: Answer = {
      recommendations: rows.map(edgeVideo),
      total_count: rows.length,
      algorithm,
      model_version: version,
      experiment_arm: arm,
      ...(reason ? { fallback_reason: reason } : {}),
    };
    ctx.served.record(user, rows.map((r) => String(r.id)), version, algorithm, experiment, arm);
    return out;
  };
  if (model) {
    if (model.maxLikes > window.likes || model.maxNopes > window.nopes) {
      history = await loadHistory(ctx.sql, user, model.maxLikes, model.maxNopes);
    }
    history = cut(history, model.maxLikes, model.maxNopes);
    if (history.nLikes + history.nNopes > 0) {
      const vector = await userEmbedding(model, history);
      const rows = await twoTower(ctx.sql, model, vector, user, limit, excludeLiked, f);
      return answer(rows, "two_tower", model.version);
    }
    return answer(await ctx.popularity.recommend(ctx.sql, user, limit, excludeLiked, f), "popularity", model.version);
  }
  if (history.nLikes > 0) return answer(await linear(ctx.sql, user, limit, excludeLiked, f), "linear", null);
  return answer(await ctx.popularity.recommend(ctx.sql, user, limit, excludeLiked, f), "popularity", null);
}

/** A recommended video as the app's edge function returns it (schemas.py EdgeVideoOut). */
function edgeVideo(r: Record<string, unknown>): Record<string, unknown> {
  return {
    id: r.id,
    title: r.title,
    thumbnail_url: r.thumbnail_url ?? null,
    maker: r.maker ?? null,
    price: r.price ?? null,
    performers: r.performers ?? [],
    tags: r.tags ?? [],
    similarity_score: Number(r.similarity_score),
  };
}

/** The model that is active now, or 503 as the Python API answers without one. */
export async function activeModel(ctx: Context): Promise<Model> {
  const rows = await ctx.sql`SELECT version FROM model_versions WHERE status = 'active'`;
  const { model } = await ctx.holder.choose(rows.length ? rows[0].version : null);
  if (!model) throw unavailable("model_unavailable", "no model is loaded (deploy one with `twotower deploy`)");
  return model;
}

async function generationTable(sql: Sql, table: string, version: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(version)));
  const prefix = `${table}_g${Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("").slice(0, 16)}_`;
  const rows = await sql.unsafe(
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid " +
      "WHERE i.inhparent = to_regclass($1) AND c.relname LIKE $2 ORDER BY c.relname DESC LIMIT 1",
    [table, prefix.replaceAll("_", "\\_") + "%"],
  );
  return rows.length ? String(rows[0].relname) : table;
}

/** The caller's embedding from their decisions now, stored for the active version (queries.py embed_user). */
export async function embedUser(ctx: Context, user: string): Promise<Record<string, unknown>> {
  const model = await activeModel(ctx);
  const history = await loadHistory(ctx.sql, user, model.maxLikes, model.maxNopes);
  const vector = await userEmbedding(model, history);
  const table = await generationTable(ctx.sql, "user_embeddings", model.version);
  const name = `"${table.replaceAll('"', '""')}"`;
  await ctx.sql.unsafe(
    `INSERT INTO ${name} (model_version, user_id, embedding) VALUES ($1, $2::uuid, $3::vector) ON CONFLICT ` +
      "(model_version, user_id) DO UPDATE SET embedding = EXCLUDED.embedding, updated_at = now()",
    [model.version, user, `[${Array.from(vector).join(",")}]`],
  );
  return { model_version: model.version, dimension: model.dim, embedding: Array.from(vector) };
}

/** Item-tower embeddings of up to 1,000 videos from their metadata (queries.py embed_items). */
export async function embedItems(ctx: Context, body: unknown): Promise<Record<string, unknown>> {
  let rows: VideoRow[];
  try {
    rows = parseItemsRequest(body);
  } catch (error) {
    if (error instanceof ValidationError) throw invalid(error.message);
    throw error;
  }
  const model = await activeModel(ctx);
  const vectors = await model.embedItems(model.pipeline.transform(rows));
  return { model_version: model.version, dimension: model.dim, embeddings: vectors.map((v) => Array.from(v)) };
}

function filters(value: unknown): Filters {
  if (value === undefined) {
    return { exclude_tags: [], include_tags: [], makers: [], max_price: null, released_after: null };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalid("filters: Input should be a valid dictionary or object to extract fields from");
  }
  const f = value as Record<string, unknown>;
  const known = ["exclude_tags", "include_tags", "makers", "max_price", "released_after"];
  const extra = Object.keys(f).find((k) => !known.includes(k));
  if (extra) throw invalid(`filters.${extra}: Extra inputs are not permitted`);
  const price = f.max_price ?? null;
  if (price !== null && (typeof price !== "number" || !(price >= 0 && price <= 1e9))) {
    throw invalid("filters.max_price: Input should be a number between 0 and 1e9");
  }
  const after = f.released_after ?? null;
  const parsed = typeof after === "string" ? parseDateTime(after, true) : null;
  if (after !== null && parsed === null) {
    throw invalid("filters.released_after: expected an ISO 8601 date-time string");
  }
  try {
    return {
      exclude_tags: names(f.exclude_tags, "filters.exclude_tags", 100),
      include_tags: names(f.include_tags, "filters.include_tags", 100),
      makers: names(f.makers, "filters.makers", 100),
      max_price: price as number | null,
      released_after: parsed === null ? null : String(parsed.micros), // microseconds since 1970 (UTC if naive)
    };
  } catch (error) {
    if (error instanceof ValidationError) throw invalid(error.message);
    throw error;
  }
}

/** The app's request: `limit` (1-100, default 20), `exclude_liked` (default true), the optional `filters` of
 * /v1/recommendations; other fields are ignored, as the app's function did. */
export function parseRecommendationsRequest(body: unknown): { limit: number; excludeLiked: boolean; f: Filters } {
  if (body === undefined) throw invalid("body: Field required");
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw invalid("body: Input should be a valid dictionary or object to extract fields from");
  }
  const b = body as Record<string, unknown>;
  const limit = "limit" in b ? b.limit : 20;
  if (typeof limit !== "number" || !Number.isInteger(limit)) throw invalid("limit: Input should be a valid integer");
  if (limit < 1 || limit > MAX_LIMIT) throw invalid(`limit: Input should be between 1 and ${MAX_LIMIT}`);
  const excludeLiked = "exclude_liked" in b ? b.exclude_liked : true;
  if (typeof excludeLiked !== "boolean") throw invalid("exclude_liked: Input should be a valid boolean");
  return { limit, excludeLiked, f: filters(b.filters) };
}
