// What the functions served, appended to `served_recommendations` as the Python API's ServedLog does
// (src/twotower/serve/served.py): one row per answer (its videos as an array, the model version, the algorithm, the
// experiment and arm), for a stable sample of users by their id (TWOTOWER_MONITOR_SERVED_SAMPLE, default 0.1; for a
// user inside an experiment at least TWOTOWER_EXPERIMENT_SERVED_SAMPLE, default 1.0), so that the monitor's live
// like-rate and an experiment's measurement count the edge's traffic too.
//
// A request only appends to an in-memory buffer: a timer writes it a second later with one parameterised INSERT per
// 500 rows, after the response (on Supabase the write is handed to `EdgeRuntime.waitUntil`, so the worker is not
// shut down before it). The buffer is bounded: when the database is slow or down the oldest rows are dropped (and
// counted) rather than slowing requests or growing; a failed write is retried with the next flush. Once an hour one
// writer (an advisory lock shared with the Python servers) prunes rows older than
// TWOTOWER_MONITOR_SERVED_RETENTION_DAYS (default 14).

import { PREPARED, type Sql } from "./db.ts";
import { uuidMod10000 } from "./experiment.ts";

export interface ServedRow {
  served_at: string; // ISO 8601, UTC
  user_id: string;
  video_ids: string[];
  model_version: string | null;
  algorithm: string;
  experiment_id: number | null;
  arm: string | null;
}

// one statement for any number of rows: the rows as one JSON array (text), expanded in the database
const INSERT = `
INSERT INTO served_recommendations (served_at, user_id, video_ids, model_version, algorithm, experiment_id, arm)
SELECT r.served_at, r.user_id, r.video_ids, r.model_version, r.algorithm, r.experiment_id, r.arm
FROM jsonb_to_recordset($1::text::jsonb) AS r(served_at timestamptz, user_id uuid, video_ids uuid[],
     model_version text, algorithm text, experiment_id bigint, arm text)`;
const ROWS_PER_INSERT = 500;
// locks.lock_key("prune served") of src/twotower/db/locks.py (blake2b of "twotower:prune served", 8 bytes, signed):
// one pruner at a time among the Python servers and the functions
export const PRUNE_LOCK = "3443145134166118783";
const PRUNE_EVERY_MS = 3_600_000;

interface Env {
  get(name: string): string | undefined;
}

/** A share in [0, 1] from the environment; the default (and a warning) when it is not one. */
function share(env: Env, name: string, fallback: number): number {
  const raw = env.get(name);
  if (raw === undefined || raw.trim() === "") return fallback;
  const value = Number(raw);
  if (!(value >= 0 && value <= 1)) {
    console.warn(`${name}=${JSON.stringify(raw)} is not a number between 0 and 1: using ${fallback}`);
    return fallback;
  }
  return value;
}

type WaitUntil = (promise: Promise<unknown>) => void;

/** Supabase's `EdgeRuntime.waitUntil` (keeps the worker until the promise settles), where the runtime has it. */
function edgeWaitUntil(): WaitUntil | null {
  const runtime = (globalThis as { EdgeRuntime?: { waitUntil?: WaitUntil } }).EdgeRuntime;
  return typeof runtime?.waitUntil === "function" ? runtime.waitUntil.bind(runtime) : null;
}

export class ServedLog {
  private rows: ServedRow[] = [];
  private pending: Promise<void> | null = null; // the scheduled flush
  private failed = false; // the last flush failed: the next answer schedules the retry
  private prunedAt = -Infinity;
  written = 0;
  dropped = 0;

  constructor(
    private readonly sql: Sql,
    readonly sample = 0.1,
    readonly experimentSample = 1.0,
    private readonly options: {
      intervalMs?: number;
      maxRows?: number;
      retentionDays?: number;
      waitUntil?: WaitUntil | null;
    } = {},
  ) {}

  static fromEnv(sql: Sql, env: Env = Deno.env): ServedLog {
    const days = Number(env.get("TWOTOWER_MONITOR_SERVED_RETENTION_DAYS") ?? 14);
    return new ServedLog(
      sql,
      share(env, "TWOTOWER_MONITOR_SERVED_SAMPLE", 0.1),
      share(env, "TWOTOWER_EXPERIMENT_SERVED_SAMPLE", 1.0),
      { retentionDays: Number.isInteger(days) && days >= 1 ? days : 14, waitUntil: edgeWaitUntil() },
    );
  }

  /** Whether `user`'s answers are logged (served.py `sampled`: by the id's integer modulo 10,000). */
  sampled(user: string, experiment: number | null = null): boolean {
    const share = experiment === null ? this.sample : Math.max(this.sample, this.experimentSample);
    return uuidMod10000(user) < share * 10_000;
  }

  /** Note an answer (served.py `record`); never throws, never waits. */
  record(
    user: string,
    videos: string[],
    version: string | null,
    algorithm: string,
    experiment: number | null = null,
    arm: string | null = null,
  ): void { // prettier-ignore
    try {
      if (!videos.length || !this.sampled(user, experiment)) return;
      const max = this.options.maxRows ?? 10_000;
      if (this.rows.length >= max) {
        this.rows.splice(0, this.rows.length - max + 1);
        this.dropped += 1;
      }
      this.rows.push({
        served_at: new Date().toISOString(),
        user_id: user,
        video_ids: videos,
        model_version: version,
        algorithm,
        experiment_id: experiment,
        arm,
      });
      this.schedule();
    } catch (error) {
      console.warn(`served log: ${(error as Error)?.message ?? error}`);
    }
  }

  /** A flush `intervalMs` from now, unless one is due already (what arrives meanwhile goes with it). */
  private schedule(): void {
    if (this.pending !== null) return;
    this.pending = new Promise<void>((resolve) => setTimeout(resolve, this.options.intervalMs ?? 1000))
      .then(() => this.flush())
      .then((n) => n > 0 ? this.prune() : undefined)
      .catch((error) => console.warn(`served log: ${(error as Error)?.message ?? error}`))
      .finally(() => {
        this.pending = null;
        if (this.rows.length && !this.failed) this.schedule(); // arrived during the write
      });
    this.options.waitUntil?.(this.pending);
  }

  /** Until the scheduled flushes are done (tests; a worker's shutdown). */
  async settled(): Promise<void> {
    while (this.pending !== null) await this.pending;
  }

  /** Write the buffer now; the number of rows written (0 when the database failed: they are kept, as many as fit,
   * for the next flush, which the next answer schedules). */
  async flush(): Promise<number> {
    const rows = this.rows;
    this.rows = [];
    let written = 0;
    try {
      for (let i = 0; i < rows.length; i += ROWS_PER_INSERT) {
        await this.sql.unsafe(INSERT, [JSON.stringify(rows.slice(i, i + ROWS_PER_INSERT))], PREPARED);
        written = Math.min(rows.length, i + ROWS_PER_INSERT);
      }
      this.failed = false;
    } catch (error) {
      this.failed = true;
      const left = rows.slice(written);
      const keep = Math.max(0, (this.options.maxRows ?? 10_000) - this.rows.length);
      this.dropped += Math.max(0, left.length - keep);
      this.rows = [...left.slice(Math.max(0, left.length - keep)), ...this.rows];
      console.warn(`could not write ${left.length} served rows (${(error as Error)?.message ?? error}); will retry`);
    }
    this.written += written;
    return written;
  }

  /** Delete rows older than the retention, once an hour per worker, by one writer at a time (served.py `_prune`). */
  private async prune(): Promise<void> {
    if (Date.now() - this.prunedAt < PRUNE_EVERY_MS) return;
    this.prunedAt = Date.now();
    try {
      await this.sql.begin(async (tx) => {
        await tx.unsafe("SET LOCAL statement_timeout = 30000");
        const [lock] = await tx.unsafe("SELECT pg_try_advisory_xact_lock($1::int8) AS taken", [PRUNE_LOCK], PREPARED);
        if (!lock?.taken) return; // another process is pruning
        await tx.unsafe(
          "DELETE FROM served_recommendations WHERE served_at < now() - make_interval(days => $1::int)",
          [this.options.retentionDays ?? 14],
          PREPARED,
        );
      });
    } catch (error) {
      console.warn(`could not prune served_recommendations: ${(error as Error)?.message ?? error}`);
    }
  }
}
