// Online experiments as src/twotower/registry/experiments.py runs them: while one runs, a user's arm is a keyed hash
// of their id, HMAC-SHA256 under the experiment's random key (UTF-8) over the id's 16 bytes, its first 8 bytes (a
// big-endian unsigned integer) / 2^64 against the share. The same in every process, Python or Deno, with no table.

export type Arm = "control" | "candidate";

/** The running experiment, as the request's first round trip reads it (everything the arms need). */
export interface Experiment {
  id: number;
  control: string; // the version it compares against: the active one when it started
  candidate: string;
  share: number; // of the users in the candidate arm
  hashKey: string;
}

const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/** The 16 bytes of a UUID (Python's `uuid.UUID.bytes`). */
export function uuidBytes(user: string): Uint8Array<ArrayBuffer> {
  if (!UUID.test(user)) throw new Error(`not a uuid: ${JSON.stringify(user)}`);
  const hex = user.replaceAll("-", "");
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** The UUID as an integer modulo 10,000 (Python's `user.int % 10_000`: the served log's sample). */
export function uuidMod10000(user: string): number {
  if (!UUID.test(user)) throw new Error(`not a uuid: ${JSON.stringify(user)}`);
  return Number(BigInt(`0x${user.replaceAll("-", "")}`) % 10_000n);
}

// the imported HMAC keys, one per experiment key (one experiment runs at a time: a handful at most, ever, per worker)
const keys = new Map<string, Promise<CryptoKey>>();
const MAX_KEYS = 8;

function hmacKey(key: string): Promise<CryptoKey> {
  let found = keys.get(key);
  if (found === undefined) {
    if (keys.size >= MAX_KEYS) keys.clear();
    const bytes = new TextEncoder().encode(key);
    found = crypto.subtle.importKey("raw", bytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    found.catch(() => keys.delete(key)); // not kept: the next request tries again (and fails the same way)
    keys.set(key, found);
  }
  return found;
}

/** The user's place in [0, 1) for the experiment keyed `key` (experiments.py `bucket`, exactly: the integer's
 * conversion to a double rounds to nearest, ties to even, in both languages, and the division by 2^64 is exact). */
export async function bucket(key: string, user: string): Promise<number> {
  const mac = await crypto.subtle.sign("HMAC", await hmacKey(key), uuidBytes(user));
  return Number(new DataView(mac).getBigUint64(0, false)) / 2 ** 64;
}

/** The user's arm in `experiment` (experiments.py `Experiment.arm`). */
export async function arm(experiment: Experiment, user: string): Promise<Arm> {
  return (await bucket(experiment.hashKey, user)) < experiment.share ? "candidate" : "control";
}
