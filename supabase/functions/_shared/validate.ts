// The item-embedding request body, validated as pydantic validates ItemsIn (src/twotower/serve/schemas.py), and
// the Python conversions the features need: float(str), datetime parsing and datetime.timestamp().
import { canonicalUuid } from "./vocab.ts";

/** A request pydantic would answer with 422. */
export class ValidationError extends Error {
  constructor(readonly field: string, detail: string) {
    super(`${field}: ${detail}`);
    this.name = "ValidationError";
  }
}

/** One video of an item request or of a database row: what the feature pipeline reads. */
export interface VideoRow {
  id?: string | null;
  title?: string;
  tags?: string[] | null;
  performers?: string[] | null;
  maker?: string | null;
  label?: string | null;
  series?: string | null;
  director?: string | null;
  price?: number | string | null;
  duration_seconds?: number | string | null;
  review_count?: number | string | null;
  review_average?: number | string | null;
  /** A number is Unix seconds; a string an ISO 8601 date-time (UTC without an offset); a Date is exact to 1 ms. */
  product_released_at?: string | number | Date | null;
}

// -- Python's float(str) ------------------------------------------------------------------------------------------
const PY_SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_FLOAT = /^[+-]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?$/;
const PY_SPECIAL = /^([+-]?)(inf|infinity|nan)$/i;
const PY_STRIP = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, "g");

/** `float(text)` as Python computes it (ASCII digits), NaN where Python raises ValueError. */
export function pyFloat(text: string): number {
  const s = text.replace(PY_STRIP, "");
  if (PY_FLOAT.test(s)) return Number(s.replaceAll("_", ""));
  const special = PY_SPECIAL.exec(s);
  if (!special) return NaN;
  return special[2].toLowerCase() === "nan" ? NaN : special[1] === "-" ? -Infinity : Infinity;
}

// -- date-times ---------------------------------------------------------------------------------------------------
const MIN_SECONDS = -62135596800n; // 0001-01-01T00:00:00Z
const MAX_SECONDS = 253402300799n; // 9999-12-31T23:59:59Z
const MILLION = 1000000n;
// pydantic (speedate): a date, or date [Tt _] HH:MM[:SS[.,fraction]] [Z | ±HH[:]MM]; rows also take Postgres'
// offsets (±HH, ±HH:MM:SS)
const ISO =
  /^(\d{4})-(\d{2})-(\d{2})(?:[Tt _](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?)?)?$/;
const UNIX = /^[+-]?(?:\d+\.?\d*|\.\d+)$/;

/** A parsed date-time: microseconds since the epoch (the wall clock taken as UTC when `naive`). */
export interface DateTime {
  micros: bigint;
  naive: boolean;
}

function daysFromCivil(y: number, m: number, d: number): number {
  y -= m <= 2 ? 1 : 0;
  const era = Math.floor(y / 400), yoe = y - era * 400;
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1;
  return era * 146097 + yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy - 719468;
}

function parseUnix(s: string): DateTime | null {
  let sec: bigint, us = 0n;
  if (!s.includes(".")) {
    const t = BigInt(s);
    if (t >= 1n << 63n || t < -(1n << 63n)) return null;
    const ms = t > 20000000000n || t < -20000000000n; // speedate: beyond 2e10 it is milliseconds
    sec = ms ? t / 1000n : t;
    us = ms ? (t % 1000n) * 1000n : 0n;
  } else {
    const f = Number(s), whole = Math.floor(f);
    let frac = Math.round((f - whole) * 1e6);
    sec = BigInt(whole);
    if (frac === 1e6) [sec, frac] = [sec + 1n, 0];
    if (sec > 20000000000n || sec < -20000000000n) {
      [sec, us] = [sec / 1000n, (sec % 1000n) * 1000n + BigInt(Math.round(frac / 1000))];
    } else us = BigInt(frac);
  }
  if (us < 0n) [sec, us] = [sec - 1n, us + MILLION];
  return sec < MIN_SECONDS || sec > MAX_SECONDS ? null : { micros: sec * MILLION + us, naive: false };
}

/** An ISO 8601 date-time as pydantic parses one (`strict`: only its forms, and Unix-time strings), or null. */
export function parseDateTime(s: string, strict: boolean): DateTime | null {
  const m = ISO.exec(s);
  if (!m) return strict && UNIX.test(s) ? parseUnix(s) : null;
  const [y, mo, d, h, mi, se] = [1, 2, 3, 4, 5, 6].map((i) => Number(m[i] ?? 0));
  const dim = [31, y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > dim[mo - 1] || h > 23 || mi > 59 || se > 59) return null;
  let offset = 0;
  if (m[9]) {
    const [oh, om, os] = [Number(m[10]), Number(m[11] ?? 0), Number(m[12] ?? 0)];
    if (strict && (m[11] === undefined || m[12] !== undefined)) return null;
    if (oh > 23 || om > 59 || os > 59) return null;
    offset = (m[9] === "-" ? -1 : 1) * (oh * 3600 + om * 60 + os);
  }
  const us = BigInt((m[7] ?? "").slice(0, 6).padEnd(6, "0"));
  const seconds = BigInt(daysFromCivil(y, mo, d)) * 86400n + BigInt(h * 3600 + mi * 60 + se - offset);
  return { micros: seconds * MILLION + us, naive: !m[8] && !m[9] };
}

/** `n / 10**6` for Python ints: correctly rounded. */
export function microsToSeconds(n: bigint): number {
  const a = n < 0n ? -n : n;
  let r: number;
  if (a < 1n << 53n) r = Number(a) / 1e6; // both exact: one rounding
  else {
    const q = (a << 64n) / MILLION, rem = (a << 64n) % MILLION;
    r = Number((q << 1n) | (rem ? 1n : 0n)) / 2 ** 65; // a sticky bit, then an exact power of two
  }
  return n < 0n ? -r : r;
}

/** Python's `datetime.timestamp()` on a machine whose local time is UTC: an aware time's is
 * `(self - epoch).total_seconds()`; a naive one's `float(seconds) + microsecond / 1e6`, and an error (NaN here)
 * before 0001-01-02, where the local-time probe one day earlier leaves year 1. */
export function pyTimestamp(dt: DateTime): number {
  if (!dt.naive) return microsToSeconds(dt.micros);
  let sec = dt.micros / MILLION, us = dt.micros % MILLION;
  if (us < 0n) [sec, us] = [sec - 1n, us + MILLION];
  return sec < MIN_SECONDS + 86400n ? NaN : Number(sec) + Number(us) / 1e6;
}

// -- ItemsIn ------------------------------------------------------------------------------------------------------
const WHITE_SPACE = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const STRIP = new RegExp(`^[${WHITE_SPACE}]+|[${WHITE_SPACE}]+$`, "g");
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;
const ITEM_FIELDS = new Set([
  "id",
  "title",
  "tags",
  "performers",
  "maker",
  "label",
  "series",
  "director",
  "price",
  "duration_seconds",
  "product_released_at",
  "review_count",
  "review_average",
]); // prettier-ignore

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const codePoints = (s: string): number => {
  let n = 0;
  for (const _ of s) n++;
  return n;
};

function name(v: unknown, field: string): string {
  if (typeof v !== "string") throw new ValidationError(field, "expected a string");
  const s = v.replace(STRIP, ""); // Name strips white space first
  const n = codePoints(s);
  if (n < 1) throw new ValidationError(field, "must not be empty or only white space");
  if (n > 200) throw new ValidationError(field, "at most 200 characters");
  if (CONTROL.test(s)) throw new ValidationError(field, "must not contain control characters");
  return s;
}

export function names(v: unknown, field: string, max: number): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new ValidationError(field, "expected a list of names");
  if (v.length > max) throw new ValidationError(field, `at most ${max} names`);
  return v.map((x, i) => name(x, `${field}[${i}]`));
}

function number(v: unknown, field: string, max: number, integer: boolean): number | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== "number") throw new ValidationError(field, integer ? "expected an integer" : "expected a number");
  if (integer && Number.isFinite(v) && !Number.isInteger(v)) throw new ValidationError(field, "expected an integer");
  if (!(v >= 0 && v <= max)) throw new ValidationError(field, `must be between 0 and ${max}`);
  return v === 0 ? (integer ? 0 : v) : v; // an int has no -0
}

function item(v: unknown, at: string): VideoRow {
  if (!isObject(v)) throw new ValidationError(at, "expected an object");
  for (const key of Object.keys(v)) {
    if (!ITEM_FIELDS.has(key)) throw new ValidationError(`${at}.${key}`, "unknown field");
  }
  let id: string | null = null;
  if (v.id !== undefined && v.id !== null) {
    id = typeof v.id === "string" ? canonicalUuid(v.id) : null;
    if (id === null) throw new ValidationError(`${at}.id`, "expected a UUID");
  }
  if (v.title !== undefined && typeof v.title !== "string") {
    throw new ValidationError(`${at}.title`, "expected a string");
  }
  if (typeof v.title === "string" && codePoints(v.title) > 1000) {
    throw new ValidationError(`${at}.title`, "at most 1000 characters");
  }
  const one = (f: string) => (v[f] === undefined || v[f] === null ? null : name(v[f], `${at}.${f}`));
  let released: number | null = null;
  const r = v.product_released_at;
  if (r !== undefined && r !== null) {
    const dt = typeof r === "string" ? parseDateTime(r, true) : null;
    if (dt === null) throw new ValidationError(`${at}.product_released_at`, "expected an ISO 8601 date-time string");
    released = pyTimestamp(dt);
    if (Number.isNaN(released)) released = null; // Python's timestamp() raised: the value is missing
  }
  return {
    id,
    title: (v.title as string | undefined) ?? "",
    tags: names(v.tags, `${at}.tags`, 200),
    performers: names(v.performers, `${at}.performers`, 100),
    maker: one("maker"),
    label: one("label"),
    series: one("series"),
    director: one("director"),
    price: number(v.price, `${at}.price`, 1e9, false),
    duration_seconds: number(v.duration_seconds, `${at}.duration_seconds`, 1e7, true),
    product_released_at: released,
    review_count: number(v.review_count, `${at}.review_count`, 1e9, true),
    review_average: number(v.review_average, `${at}.review_average`, 5, false),
  };
}

/** The videos of an item-embedding request (`{"videos": [...]}`, 1 to 1000), or a ValidationError. Names come back
 * stripped, ids canonical, `product_released_at` as Unix seconds (exactly Python's `timestamp()`). */
export function parseItemsRequest(body: unknown): VideoRow[] {
  if (!isObject(body)) throw new ValidationError("body", "expected a JSON object");
  for (const key of Object.keys(body)) {
    if (key !== "videos") throw new ValidationError(key, "unknown field");
  }
  const videos = body.videos;
  if (videos === undefined) throw new ValidationError("videos", "field required");
  if (!Array.isArray(videos)) throw new ValidationError("videos", "expected a list");
  if (videos.length < 1 || videos.length > 1000) throw new ValidationError("videos", "between 1 and 1000 videos");
  return videos.map((v, i) => item(v, `videos[${i}]`));
}
