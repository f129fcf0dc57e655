// Vocabularies (src/twotower/features/vocab.py): index 0 is padding, 1 out-of-vocabulary, tokens[i] is i + 2.

export const PAD = 0;
export const OOV = 1;

export interface VocabularyJson {
  name: string;
  min_count?: number;
  tokens: string[];
}

export class Vocabulary {
  readonly #index = new Map<string, number>();

  constructor(readonly name: string, readonly tokens: readonly string[]) {
    tokens.forEach((t, i) => this.#index.set(t, i + 2)); // a repeated token keeps its last index, as a dict does
  }

  static fromJson(data: unknown, what: string): Vocabulary {
    const d = data as VocabularyJson | null;
    if (typeof d !== "object" || d === null || !Array.isArray(d.tokens)) {
      throw new Error(`features.json: ${what} is not a vocabulary ({"name", "tokens": [...]})`);
    }
    return new Vocabulary(String(d.name), d.tokens.map(String));
  }

  get size(): number {
    return this.tokens.length + 2;
  }

  encode(token: string | null | undefined): number {
    if (!token) return PAD;
    return this.#index.get(token) ?? OOV;
  }

  /** Row `i` of `out` (width `width`, starting at `i * width`): known tokens first, then OOV ones, padded with 0. */
  encodeListInto(values: readonly string[], width: number, out: BigInt64Array, offset: number): void {
    const known: number[] = [];
    const oov: number[] = [];
    for (const v of values) {
      if (!v) continue;
      const code = this.encode(v);
      (code === OOV ? oov : known).push(code);
    }
    const codes = known.concat(oov);
    for (let j = 0; j < width && j < codes.length; j++) out[offset + j] = BigInt(codes[j]);
  }
}

const HYPHENATED = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const SIMPLE = /^[0-9a-fA-F]{32}$/;

/** The lowercase hyphenated form of a UUID written as pydantic accepts it (hyphenated, 32 hex digits,
 * `{hyphenated}`, `urn:uuid:hyphenated`; hex digits in either case), or null. */
export function canonicalUuid(value: string): string | null {
  let body = value;
  if (value.length === 45 && value.startsWith("urn:uuid:")) body = value.slice(9);
  else if (value.length === 38 && value[0] === "{" && value[37] === "}") body = value.slice(1, 37);
  else if (value.length === 32) {
    if (!SIMPLE.test(value)) return null;
    const v = value.toLowerCase();
    return `${v.slice(0, 8)}-${v.slice(8, 12)}-${v.slice(12, 16)}-${v.slice(16, 20)}-${v.slice(20)}`;
  }
  return HYPHENATED.test(body) ? body.toLowerCase() : null;
}

/** `str(uuid.UUID(int=i))`: what Python gives a row without an id. */
export function uuidFromInt(i: number): string {
  return `00000000-0000-0000-0000-${i.toString(16).padStart(12, "0")}`;
}
