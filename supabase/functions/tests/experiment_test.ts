// Experiments and the served log without a database: the arm's HMAC bucket against vectors computed with Python's
// twotower.registry.experiments.bucket, the served log's sample and writes (a fake client), and the model holder
// following an experiment (a fake loader). tests/edge/test_experiments.py runs them against a real database beside
// the Python API.

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { type Sql } from "../_shared/db.ts";
import { arm, bucket, type Experiment, uuidBytes, uuidMod10000 } from "../_shared/experiment.ts";
import { type FeaturePipeline } from "../_shared/features.ts";
import { Model, ModelHolder, type Tower } from "../_shared/model.ts";
import { ServedLog } from "../_shared/served.ts";
import { type ArtifactStore } from "../_shared/store.ts";

// (hash key, user, bucket): `bucket(key, uuid.UUID(user))` printed by Python (repr, shortest round-trip digits)
const VECTORS: [string, string, number][] = [
  ["00112233445566778899aabbccddeeff", "8b0c1d9e-4f7a-4c3b-9a55-2d1e0f6a7b8c", 0.8344511858763348],
  ["k", "00000000-0000-0000-0000-000000000000", 0.4660595461857007],
  ["5f2c0e1d9a8b7c6d5e4f3a2b1c0d9e8f", "ffffffff-ffff-ffff-ffff-ffffffffffff", 0.5535650782673172],
  ["ключ-日本", "123e4567-e89b-12d3-a456-426614174000", 0.4611475115014061], // the key as UTF-8
  ["a".repeat(100), "6ba7b810-9dad-11d1-80b4-00c04fd430c8", 0.014840527696013435], // a key longer than a block
  ["e3b0c44298fc1c149afbf4c8996fb924", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", 0.5137417010743002],
];

Deno.test("the arm's bucket is Python's, bit for bit", async () => {
  for (const [key, user, expected] of VECTORS) {
    assertEquals(await bucket(key, user), expected, `${key} ${user}`);
    assertEquals(await bucket(key, user.toUpperCase()), expected); // the same id, however it is written
  }
  const experiment = (share: number): Experiment => ({ id: 1, control: "b", candidate: "a", share, hashKey: "k" });
  const user = VECTORS[1][1]; // bucket 0.4660595461857007
  assertEquals(await arm(experiment(0.4660595461857007), user), "control"); // the candidate: below the share
  assertEquals(await arm(experiment(0.4660595461857008), user), "candidate");
  assertEquals(Array.from(uuidBytes("00010203-0405-0607-0809-0a0b0c0d0e0f")), Array.from({ length: 16 }, (_, i) => i));
});

Deno.test("the served log samples users as Python's ServedLog (user.int % 10000 < share * 10000)", () => {
  // Python: uuid.UUID(u).int % 10_000
  const mods: [string, number][] = [
    ["8b0c1d9e-4f7a-4c3b-9a55-2d1e0f6a7b8c", 1292],
    ["ffffffff-ffff-ffff-ffff-ffffffffffff", 1455],
    ["123e4567-e89b-12d3-a456-426614174000", 1168],
    ["6ba7b810-9dad-11d1-80b4-00c04fd430c8", 3704],
    ["3f2504e0-4f89-11d3-9a0c-0305e82c3301", 5089],
  ];
  for (const [user, mod] of mods) assertEquals(uuidMod10000(user), mod, user);
  const log = new ServedLog(null as unknown as Sql, 0.1, 1.0);
  const at = (n: number) => `00000000-0000-0000-0000-${n.toString(16).padStart(12, "0")}`;
  assertEquals([log.sampled(at(999)), log.sampled(at(1000)), log.sampled(at(10_999))], [true, false, true]);
  assertEquals(log.sampled(at(9999), 7), true); // inside an experiment: max(0.1, 1.0)
  const half = new ServedLog(null as unknown as Sql, 0.2, 0.5);
  assertEquals([half.sampled(at(4999), 3), half.sampled(at(5000), 3), half.sampled(at(1999))], [true, false, true]);
  assertEquals(half.sampled(at(2000)), false);
  const none = new ServedLog(null as unknown as Sql, 0, 0.5);
  assertEquals([none.sampled(at(0)), none.sampled(at(0), 1)], [false, true]);
});

/** A postgres.js client that keeps the statements and their parameters, failing while `down`. */
function fakeSql() {
  const calls: { query: string; params: unknown[] }[] = [];
  const state = { down: false };
  const unsafe = (query: string, params: unknown[] = []) => {
    if (state.down) return Promise.reject(Object.assign(new Error("connection refused"), { code: "ECONNREFUSED" }));
    calls.push({ query, params });
    return Promise.resolve(query.includes("pg_try_advisory_xact_lock") ? [{ taken: true }] : []);
  };
  const sql = { unsafe, begin: (fn: (tx: unknown) => Promise<unknown>) => fn({ unsafe }) };
  return { sql: sql as unknown as Sql, calls, state };
}

Deno.test("the served log writes sampled answers in one statement per flush, bounded, never throwing", async () => {
  const { sql, calls, state } = fakeSql();
  const log = new ServedLog(sql, 0.1, 1.0, { intervalMs: 10, maxRows: 3 });
  const inside = "00000000-0000-0000-0000-0000000003e7"; // 999: in the 10% sample
  const outside = "00000000-0000-0000-0000-0000000003e8"; // 1000: only inside an experiment
  log.record(inside, ["v1", "v2"], "b", "two_tower");
  log.record(outside, ["v3"], "b", "two_tower"); // not sampled
  log.record(outside, ["v4"], "a", "two_tower", 12, "candidate");
  log.record(inside, [], "b", "popularity"); // nothing served: nothing logged
  await log.settled();
  const inserts = calls.filter((c) => c.query.includes("INSERT INTO served_recommendations"));
  assertEquals(inserts.length, 1);
  const rows = JSON.parse(String(inserts[0].params[0]));
  assertEquals(
    rows.map((r: Record<string, unknown>) => [r.user_id, r.video_ids, r.model_version, r.experiment_id, r.arm]),
    [[inside, ["v1", "v2"], "b", null, null], [outside, ["v4"], "a", 12, "candidate"]],
  );
  assert(!Number.isNaN(Date.parse(rows[0].served_at)));
  assertEquals(calls.filter((c) => c.query.startsWith("DELETE FROM served_recommendations")).length, 1); // pruned
  assertEquals(log.written, 2);

  state.down = true; // the database is down: the rows wait (as many as fit), the request never sees it
  for (let i = 0; i < 5; i++) log.record(inside, [`w${i}`], "b", "two_tower");
  await log.settled();
  assertEquals([log.written, log.dropped], [2, 2]); // 5 rows, 3 kept
  state.down = false;
  log.record(inside, ["w5"], "b", "two_tower"); // the next answer schedules the retry
  await log.settled();
  const last = JSON.parse(String(calls.at(-1)!.params[0])).map((r: { video_ids: string[] }) => r.video_ids[0]);
  assertEquals(last, ["w3", "w4", "w5"]); // the oldest dropped
  assertEquals([log.written, log.dropped], [5, 3]);
});

Deno.test("the served log's settings come from the environment, a bad one falls back to the default", () => {
  const env = (vars: Record<string, string>) => ({ get: (name: string) => vars[name] });
  const sql = null as unknown as Sql;
  const set = ServedLog.fromEnv(
    sql,
    env({ TWOTOWER_MONITOR_SERVED_SAMPLE: "0.25", TWOTOWER_EXPERIMENT_SERVED_SAMPLE: "0.5" }),
  );
  assertEquals([set.sample, set.experimentSample], [0.25, 0.5]);
  const defaults = ServedLog.fromEnv(sql, env({}));
  assertEquals([defaults.sample, defaults.experimentSample], [0.1, 1.0]);
  const bad = ServedLog.fromEnv(sql, env({ TWOTOWER_MONITOR_SERVED_SAMPLE: "lots" }));
  assertEquals(bad.sample, 0.1);
});

// -- the holder ---------------------------------------------------------------------------------------------------

const STORE: ArtifactStore = { read: () => Promise.reject(new Error("unused")), describe: () => "fake" };

/** A loader of fake models: a load takes `ms`; versions in `broken` fail. */
function fakeLoader(ms = 20, broken: string[] = []) {
  const loaded: string[] = [];
  const loader = async (_store: ArtifactStore, version: string, _towers: Tower[]) => {
    await new Promise((resolve) => setTimeout(resolve, ms));
    if (broken.includes(version)) throw new Error(`checksum mismatch for ${version}`);
    loaded.push(version);
    return new Model(version, 8, 50, 20, {} as FeaturePipeline, {});
  };
  return { loader, loaded };
}

const running = (candidate = "a", id = 5): Experiment => ({ id, control: "b", candidate, share: 0.5, hashKey: "k" });

async function usersByArm(experiment: Experiment): Promise<{ control: string; candidate: string }> {
  const found: Record<string, string> = {};
  for (let i = 0; Object.keys(found).length < 2; i++) {
    const user = `00000000-0000-4000-8000-${i.toString(16).padStart(12, "0")}`;
    found[await arm(experiment, user)] ??= user;
  }
  return found as { control: string; candidate: string };
}

const seen = (a: { model: { version: string } | null; experiment: number | null; arm: string | null }) => [
  a.model?.version ?? null,
  a.experiment,
  a.arm,
];

Deno.test({
  name: "the holder answers each arm from its model, the control until the candidate is loaded, and drops it",
  sanitizeOps: false, // a dropped model's release timer
  fn: async () => {
    const { loader, loaded } = fakeLoader();
    const holder = new ModelHolder(STORE, ["user"], 1000, loader);
    const experiment = running();
    const { control, candidate } = await usersByArm(experiment);
    assertEquals(seen(await holder.answering(control, "b", null)), ["b", null, null]); // no experiment yet
    // started: the candidate loads in the background; meanwhile its arm gets the control, outside the experiment
    assertEquals(seen(await holder.answering(candidate, "b", experiment)), ["b", null, null]);
    assertEquals(seen(await holder.answering(control, "b", experiment)), ["b", 5, "control"]);
    await new Promise((resolve) => setTimeout(resolve, 60));
    assertEquals(seen(await holder.answering(candidate, "b", experiment)), ["a", 5, "candidate"]);
    assertEquals(seen(await holder.answering(control, "b", experiment)), ["b", 5, "control"]);
    // an experiment against another version than the active one does not apply
    assertEquals(seen(await holder.answering(candidate, "b", { ...experiment, control: "c" })), ["b", null, null]);
    assertEquals(holder.candidate, null); // ... and its candidate is not kept
    assertEquals(seen(await holder.answering(candidate, "b", experiment)), ["b", null, null]); // loading again
    await new Promise((resolve) => setTimeout(resolve, 60));
    assertEquals(seen(await holder.answering(candidate, "b", experiment)), ["a", 5, "candidate"]);
    // stopped: everyone from the active version, the candidate dropped
    assertEquals(seen(await holder.answering(candidate, "b", null)), ["b", null, null]);
    assertEquals(holder.candidate, null);
    assertEquals(loaded, ["b", "a", "a"]);
    // an A/A test: both arms from the active version, labelled
    const aa = { ...experiment, candidate: "b", id: 6 };
    const pair = await usersByArm(aa);
    assertEquals(seen(await holder.answering(pair.candidate, "b", aa)), ["b", 6, "candidate"]);
    assertEquals(seen(await holder.answering(pair.control, "b", aa)), ["b", 6, "control"]);
    assertEquals(loaded, ["b", "a", "a"]);
  },
});

Deno.test({
  name: "a worker's first request waits for the candidate too; a promoted candidate answers at once",
  sanitizeOps: false,
  fn: async () => {
    const { loader, loaded } = fakeLoader();
    const holder = new ModelHolder(STORE, ["user"], 1000, loader);
    const experiment = running();
    const { control, candidate } = await usersByArm(experiment);
    assertEquals(seen(await holder.answering(candidate, "b", experiment)), ["a", 5, "candidate"]);
    assertEquals(seen(await holder.answering(control, "b", experiment)), ["b", 5, "control"]);
    // promoted (the experiment stops, its candidate becomes the active version): no second load of it
    const promoted = await holder.answering(control, "a", null);
    assertEquals([seen(promoted), promoted.reason], [["a", null, null], null]);
    assertEquals(loaded.sort(), ["a", "b"]);
  },
});

Deno.test({
  name: "a candidate that cannot be loaded leaves its arm to the active version, recorded outside the experiment",
  sanitizeOps: false,
  fn: async () => {
    const { loader } = fakeLoader(5, ["a"]);
    const holder = new ModelHolder(STORE, ["user"], 1000, loader);
    const experiment = running();
    const { control, candidate } = await usersByArm(experiment);
    assertEquals(seen(await holder.answering(candidate, "b", experiment)), ["b", null, null]);
    await new Promise((resolve) => setTimeout(resolve, 30));
    assertEquals(seen(await holder.answering(candidate, "b", experiment)), ["b", null, null]);
    assertEquals(seen(await holder.answering(control, "b", experiment)), ["b", 5, "control"]);
  },
});
