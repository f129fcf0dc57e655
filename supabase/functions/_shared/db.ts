// The database: a direct Postgres connection from SUPABASE_DB_URL (postgres.js), with the session settings of the
// Python server's request path (src/twotower/serve/service.py serving_session): HNSW iterative scans, its
// ef_search, generic plans, a statement timeout. Parameterised statements only.

import postgres from "postgres";

export type Sql = postgres.Sql<Record<PropertyKey, never>>;

/** A client for `url` (postgres:// or postgresql://; a `host=/socket/dir` query parameter, as libpq and the
 * embedded server write it, is a Unix socket). */
export function connect(url: string, env: { get(name: string): string | undefined } = Deno.env): Sql {
  const parsed = new URL(url.replace(/^postgres(ql)?:\/\/([^/?#]*@)?(?=[/?#])/, (m) => `${m}localhost`));
  const options: postgres.Options<Record<PropertyKey, never>> = {
    max: Number(env.get("TWOTOWER_EDGE_DB_POOL_SIZE") ?? 3),
    idle_timeout: 60,
    connect_timeout: Number(env.get("TWOTOWER_DB_CONNECT_TIMEOUT") ?? 5),
    prepare: env.get("TWOTOWER_DB_PREPARE") !== "false", // false behind a transaction-mode pooler
    onnotice: () => {},
    connection: {
      application_name: "twotower edge",
      statement_timeout: env.get("TWOTOWER_SERVE_STATEMENT_TIMEOUT_MS") ?? "5000",
      "hnsw.iterative_scan": "relaxed_order",
      "hnsw.ef_search": env.get("TWOTOWER_SERVE_EF_SEARCH") ?? "40",
      plan_cache_mode: "force_generic_plan",
    } as Record<string, string>,
  };
  const socket = parsed.searchParams.get("host");
  if (socket?.startsWith("/")) {
    options.host = socket;
    parsed.searchParams.delete("host");
  }
  return postgres(parsed.toString(), options) as unknown as Sql;
}

/** For `sql.unsafe`: a named prepared statement (postgres.js leaves those unprepared, which costs a Describe round
 * trip on every call); the statements are few (the version and the limit are their only literals). */
export const PREPARED = { prepare: true } as const;

/** Positional parameters of one statement: `p.add(value)` is `$n`. */
export class Params {
  readonly values: unknown[] = [];

  add(value: unknown, cast = ""): string {
    this.values.push(value);
    return `$${this.values.length}${cast ? `::${cast}` : ""}`;
  }
}
