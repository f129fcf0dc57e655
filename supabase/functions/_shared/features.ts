// The feature pipeline of src/twotower/features (pipeline.py, numeric.py, catalog.py, history.py) for the edge
// functions: the same int64 codes and the same float32 bits as Python for the same features.json and videos.
import { canonicalUuid, uuidFromInt, Vocabulary, type VocabularyJson } from "./vocab.ts";
import { microsToSeconds, parseDateTime, pyFloat, type VideoRow } from "./validate.ts";

export { parseItemsRequest, ValidationError, type VideoRow } from "./validate.ts";

export const FORMAT_VERSION = 1;
export const NUMERIC_FIELDS = ["price", "duration_seconds", "recency_years", "review_count", "review_average"] as const;
export const CATEGORICAL_FIELDS = ["maker", "label", "series", "director"] as const;
const YEAR = 365.25 * 24 * 3600;

export interface NormalizerJson {
  name: string;
  transform: "log1p" | "identity";
  mean: number;
  std: number;
  clip: number;
}

/** features.json, format_version 1 (FeaturePipeline.to_json). */
export interface FeaturesJson {
  format_version: 1;
  reference_time: number;
  max_tags: number;
  max_performers: number;
  items: VocabularyJson;
  tags: VocabularyJson;
  performers: VocabularyJson;
  categorical: Record<(typeof CATEGORICAL_FIELDS)[number], VocabularyJson>;
  numeric: Record<(typeof NUMERIC_FIELDS)[number], NormalizerJson>;
}

/** What the item tower eats, row-major as onnxruntime tensors take it (int64 as BigInt64Array). */
export interface ItemFeatures {
  n: number;
  itemId: BigInt64Array; // [n]
  tags: BigInt64Array; // [n, maxTags]
  performers: BigInt64Array; // [n, maxPerformers]
  categorical: BigInt64Array; // [n, 4]: maker, label, series, director
  numeric: Float32Array; // [n, 10]: 5 normalised values, then their 5 missing flags
}

// -- numpy's log1p ------------------------------------------------------------------------------------------------
// np.log1p calls the C library's. Math.log1p (fdlibm) differs from it in the last bit for ~3 % of inputs, so this is
// glibc's dbl-64/s_log1p.c as x86-64 runs it (the FMA build its ifunc picks on any CPU with FMA), with an exact fma.
const F64 = new Float64Array(1), U32 = new Uint32Array(F64.buffer); // little-endian: U32[1] is the high word
const highWord = (d: number) => (F64[0] = d, U32[1] | 0);
const withHighWord = (d: number, v: number) => (F64[0] = d, U32[1] = v >>> 0, F64[0]);
const fromWords = (h: number, l: number) => (U32[1] = h, U32[0] = l, F64[0]);
const [LN2_HI, LN2_LO, LP1, LP2, LP3, LP4, LP5, LP6, LP7, TWO_THIRDS] = [
  [0x3fe62e42, 0xfee00000],
  [0x3dea39ef, 0x35793c76],
  [0x3fe55555, 0x55555593],
  [0x3fd99999, 0x9997fa04],
  [0x3fd24924, 0x94229359],
  [0x3fcc71c5, 0x1d8e78af],
  [0x3fc74664, 0x96cb03de],
  [0x3fc39a09, 0xd078c69f],
  [0x3fc2f112, 0xdf3e5244],
  [0x3fe55555, 0x55555555],
].map(([h, l]) => fromWords(h, l)); // prettier-ignore

function mantissa(x: number): [bigint, number] { // x = m * 2**e exactly
  F64[0] = x;
  const exp = (U32[1] >>> 20) & 0x7ff;
  const m = (BigInt(U32[1] & 0xfffff) << 32n) | BigInt(U32[0]) | (exp ? 1n << 52n : 0n);
  return [U32[1] >>> 31 ? -m : m, exp ? exp - 1075 : -1074];
}

/** `a * b + c` with one rounding (finite, normal results: all that log1p needs). */
export function fma(a: number, b: number, c: number): number {
  if (!Number.isFinite(a * b) || !Number.isFinite(c) || a === 0 || b === 0 || c === 0) return a * b + c;
  const [ma, ea] = mantissa(a), [mb, eb] = mantissa(b), [mc, ec] = mantissa(c);
  const e = Math.min(ea + eb, ec);
  const n = ((ma * mb) << BigInt(ea + eb - e)) + (mc << BigInt(ec - e));
  if (n === 0n) return 0;
  let an = n < 0n ? -n : n, scale = e;
  const extra = an.toString(2).length - 55; // keep 55 bits and a sticky bit: Number() then rounds once
  if (extra > 0) {
    const sticky = an & ((1n << BigInt(extra)) - 1n) ? 1n : 0n;
    an = (an >> BigInt(extra)) | sticky;
    scale += extra;
  }
  let r = Number(an);
  for (; scale > 600; scale -= 600) r *= 2 ** 600;
  for (; scale < -600; scale += 600) r *= 2 ** -600;
  r *= 2 ** scale;
  return n < 0n ? -r : r;
}

/** numpy's `log1p` (glibc 2.36 x86-64, FMA build): bit for bit on 400,001 sampled inputs. */
export function log1p(x: number): number {
  let f = 0, c = 0, u: number, hu = 0, k = 1;
  const hx = highWord(x), ax = hx & 0x7fffffff;
  if (hx < 0x3fda827a) {
    if (ax >= 0x3ff00000) return x === -1 ? -Infinity : NaN;
    if (ax < 0x3e200000) return ax < 0x3c900000 ? x : x - x * x * 0.5;
    if (hx > 0 || hx <= (0xbfd2bec3 | 0)) [k, f, hu] = [0, x, 1];
  } else if (hx >= 0x7ff00000) return x + x;
  if (k !== 0) {
    if (hx < 0x43400000) {
      u = 1 + x;
      hu = highWord(u);
      k = (hu >> 20) - 1023;
      c = (k > 0 ? 1 - (u - x) : x - (u - 1)) / u;
    } else [u, hu, k, c] = [x, highWord(x), (highWord(x) >> 20) - 1023, 0];
    hu &= 0xfffff;
    if (hu < 0x6a09e) u = withHighWord(u, hu | 0x3ff00000);
    else [k, u, hu] = [k + 1, withHighWord(u, hu | 0x3fe00000), (0x100000 - hu) >> 2];
    f = u - 1;
  }
  const hfsq = 0.5 * f * f;
  if (hu === 0) {
    if (f === 0) return k === 0 ? 0 : fma(k, LN2_HI, fma(k, LN2_LO, c));
    const R = hfsq * fma(-TWO_THIRDS, f, 1);
    return k === 0 ? f - R : fma(k, LN2_HI, -((R - fma(k, LN2_LO, c)) - f));
  }
  const s = f / (2 + f), z = s * s, z2 = z * z, z4 = z2 * z2, z6 = z4 * z2;
  const R = fma(z6, fma(z, LP7, LP6), fma(z4, fma(z, LP5, LP4), fma(z, LP1, z2 * fma(z, LP3, LP2))));
  if (k === 0) return f - (hfsq - s * (hfsq + R));
  return fma(k, LN2_HI, -((hfsq - (s * (hfsq + R) + fma(k, LN2_LO, c))) - f));
}

// -- the pipeline -------------------------------------------------------------------------------------------------
const LOG1P_MEMO = new Map<number, number>(); // prices, durations and counts repeat: the exact log1p is costly
const LOG1P_MEMO_SIZE = 1 << 16;

function memoLog1p(x: number): number {
  let y = LOG1P_MEMO.get(x);
  if (y === undefined) {
    y = log1p(x);
    if (LOG1P_MEMO.size >= LOG1P_MEMO_SIZE) LOG1P_MEMO.clear();
    LOG1P_MEMO.set(x, y);
  }
  return y;
}

class Normalizer {
  constructor(readonly log: boolean, readonly mean: number, readonly std: number, readonly clip: number) {}

  /** Normalizer.apply: [value, missing flag] in float64, cast to float32 by the caller. */
  apply(raw: number): [number, number] {
    let v = Number.isFinite(raw) ? raw : NaN;
    if (this.log) v = memoLog1p(Math.max(v, 0)); // np.clip(v, 0, None): NaN stays NaN, -0 becomes +0
    const missing = Number.isNaN(v);
    const z = ((missing ? this.mean : v) - this.mean) / this.std;
    return [Math.min(Math.max(z, -this.clip), this.clip), missing ? 1 : 0];
  }
}

const need = (ok: boolean, what: string) => {
  if (!ok) throw new Error(`features.json: ${what}`);
};
const finite = (v: unknown, what: string): number => {
  need(typeof v === "number" && Number.isFinite(v), `${what} must be a finite number`);
  return v as number;
};

function num(v: unknown): number { // Catalog.from_rows' num(): NaN for what float() refuses
  if (typeof v === "number") return v;
  if (typeof v === "string") return pyFloat(v);
  if (typeof v === "boolean") return v ? 1 : 0;
  return NaN;
}

function releasedAt(v: unknown): number {
  if (v instanceof Date) return microsToSeconds(BigInt(v.getTime()) * 1000n); // NaN date: BigInt throws
  if (typeof v !== "string") return num(v);
  const dt = parseDateTime(v, false); // a database time: aware (UTC without an offset)
  return dt === null ? NaN : microsToSeconds(dt.micros);
}

export class FeaturePipeline {
  readonly numericWidth = 2 * NUMERIC_FIELDS.length;

  private constructor(
    readonly items: Vocabulary,
    readonly tags: Vocabulary,
    readonly performers: Vocabulary,
    readonly categorical: Vocabulary[], // in CATEGORICAL_FIELDS order
    readonly numeric: Normalizer[], // in NUMERIC_FIELDS order
    readonly referenceTime: number,
    readonly maxTags: number,
    readonly maxPerformers: number,
  ) {}

  /** From parsed features.json; throws an Error naming what is wrong. */
  static fromJson(data: unknown): FeaturePipeline {
    need(typeof data === "object" && data !== null && !Array.isArray(data), "expected a JSON object");
    const d = data as Record<string, unknown>;
    need(
      d.format_version === FORMAT_VERSION,
      `format version ${JSON.stringify(d.format_version)}, expected ${FORMAT_VERSION}`,
    );
    const width = (v: unknown, what: string) => {
      need(Number.isInteger(v) && (v as number) >= 0, `${what} must be a whole number`);
      return v as number;
    };
    const cat = (d.categorical ?? {}) as Record<string, unknown>;
    const numeric = (d.numeric ?? {}) as Record<string, Record<string, unknown> | undefined>;
    return new FeaturePipeline(
      Vocabulary.fromJson(d.items, "items"),
      Vocabulary.fromJson(d.tags, "tags"),
      Vocabulary.fromJson(d.performers, "performers"),
      CATEGORICAL_FIELDS.map((f) => Vocabulary.fromJson(cat[f], `categorical.${f}`)),
      NUMERIC_FIELDS.map((f) => {
        const n = numeric[f];
        need(typeof n === "object" && n !== null, `numeric.${f} is missing`);
        need(
          n!.transform === "log1p" || n!.transform === "identity",
          `numeric.${f}.transform must be log1p or identity`,
        );
        const [mean, std, clip] = ["mean", "std", "clip"].map((k) => finite(n![k], `numeric.${f}.${k}`));
        return new Normalizer(n!.transform === "log1p", mean, std, clip);
      }),
      finite(d.reference_time, "reference_time"),
      width(d.max_tags, "max_tags"),
      width(d.max_performers, "max_performers"),
    );
  }

  /** FeaturePipeline.transform(Catalog.from_rows(rows)). */
  transform(rows: readonly VideoRow[]): ItemFeatures {
    const n = rows.length, w = this.numericWidth, half = w / 2;
    const out: ItemFeatures = {
      n,
      itemId: new BigInt64Array(n),
      tags: new BigInt64Array(n * this.maxTags),
      performers: new BigInt64Array(n * this.maxPerformers),
      categorical: new BigInt64Array(n * CATEGORICAL_FIELDS.length),
      numeric: new Float32Array(n * w),
    };
    rows.forEach((r, i) => {
      const id = typeof r.id === "string" ? canonicalUuid(r.id) : null;
      out.itemId[i] = BigInt(this.items.encode(id ?? uuidFromInt(i)));
      this.tags.encodeListInto((r.tags ?? []).map(String), this.maxTags, out.tags, i * this.maxTags);
      const performers = (r.performers ?? []).map(String);
      this.performers.encodeListInto(performers, this.maxPerformers, out.performers, i * this.maxPerformers);
      CATEGORICAL_FIELDS.forEach((f, j) => {
        out.categorical[i * CATEGORICAL_FIELDS.length + j] = BigInt(this.categorical[j].encode(r[f] || null));
      });
      const raw = [
        num(r.price),
        num(r.duration_seconds),
        (this.referenceTime - releasedAt(r.product_released_at)) / YEAR,
        num(r.review_count),
        num(r.review_average),
      ];
      raw.forEach((v, j) => {
        [out.numeric[i * w + j], out.numeric[i * w + half + j]] = this.numeric[j].apply(v);
      });
    });
    return out;
  }
}

/** history.user_stats for one user: [log1p(likes) / 5, log1p(nopes) / 5, like ratio (0.5 without decisions)]. */
export function userStats(nLikes: number, nNopes: number): Float32Array {
  const total = nLikes + nNopes;
  return Float32Array.of(log1p(nLikes) / 5, log1p(nNopes) / 5, total > 0 ? nLikes / Math.max(total, 1) : 0.5);
}
