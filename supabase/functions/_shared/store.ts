// The artifact stores the Python side writes (src/twotower/registry/store.py): a local directory
// `<root>/<version>/<file>`, or an S3-compatible store `s3://bucket/prefix/<version>/<file>` (AWS, MinIO, Supabase
// Storage's S3 endpoint). A version's files are read into memory and each checked against the sha256 that
// `manifest.json` lists for it (WebCrypto) before anything uses it.

import { AwsClient } from "aws4fetch";

const VERSION = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const MANIFEST = "manifest.json";
const MAX_FILE_BYTES = 256 << 20;

export class ArtifactError extends Error {}

export interface ArtifactStore {
  read(version: string, name: string): Promise<Uint8Array>;
  describe(): string;
}

function checkedKey(version: string, name: string): string {
  if (!VERSION.test(version)) throw new ArtifactError(`invalid version ${JSON.stringify(version)}`);
  if (name.includes("/") || name.startsWith(".")) throw new ArtifactError(`refusing file name ${name}`);
  return `${version}/${name}`;
}

export class LocalStore implements ArtifactStore {
  constructor(private readonly root: string) {}

  describe(): string {
    return this.root;
  }

  async read(version: string, name: string): Promise<Uint8Array> {
    const path = `${this.root.replace(/\/+$/, "")}/${checkedKey(version, name)}`;
    try {
      return await Deno.readFile(path);
    } catch (error) {
      throw new ArtifactError(`cannot read ${path}: ${(error as Error).message}`);
    }
  }
}

export interface S3Config {
  bucket: string;
  prefix: string;
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export class S3Store implements ArtifactStore {
  private readonly client: AwsClient;

  constructor(private readonly config: S3Config) {
    this.client = new AwsClient({
      accessKeyId: config.accessKeyId,
      secretAccessKey: config.secretAccessKey,
      sessionToken: config.sessionToken,
      service: "s3",
      region: config.region,
      retries: 2,
    });
  }

  describe(): string {
    return `s3://${this.config.bucket}/${this.config.prefix}`;
  }

  async read(version: string, name: string): Promise<Uint8Array> {
    const key = this.config.prefix ? `${this.config.prefix}/${checkedKey(version, name)}` : checkedKey(version, name);
    const path = [this.config.bucket, ...key.split("/")].map(encodeURIComponent).join("/");
    const url = `${this.config.endpoint.replace(/\/+$/, "")}/${path}`; // path-style: every S3-compatible store has it
    let response: Response;
    try {
      response = await this.client.fetch(url, { method: "GET", signal: AbortSignal.timeout(60_000) });
    } catch (error) {
      throw new ArtifactError(`cannot reach s3://${this.config.bucket}: ${(error as Error).message}`);
    }
    if (!response.ok) {
      await response.body?.cancel();
      throw new ArtifactError(`s3://${this.config.bucket}/${key}: HTTP ${response.status}`);
    }
    const declared = Number(response.headers.get("content-length") ?? 0);
    if (declared > MAX_FILE_BYTES) throw new ArtifactError(`s3://${this.config.bucket}/${key} is too large`);
    return new Uint8Array(await response.arrayBuffer());
  }
}

/** The configured store: TWOTOWER_ARTIFACT_STORE, a directory or s3://bucket/prefix (as the Python side reads it),
 * with TWOTOWER_S3_ENDPOINT_URL, TWOTOWER_S3_REGION and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. */
export function openStore(env: { get(name: string): string | undefined } = Deno.env): ArtifactStore {
  const where = env.get("TWOTOWER_ARTIFACT_STORE");
  if (!where) throw new ArtifactError("TWOTOWER_ARTIFACT_STORE is not set (a directory or s3://bucket/prefix)");
  if (where.startsWith("s3://")) {
    const rest = where.slice(5);
    const slash = rest.indexOf("/");
    const bucket = slash < 0 ? rest : rest.slice(0, slash);
    const prefix = slash < 0 ? "" : rest.slice(slash + 1).replace(/^\/+|\/+$/g, "");
    const region = env.get("TWOTOWER_S3_REGION") || env.get("AWS_REGION") || "us-east-1";
    const endpoint = env.get("TWOTOWER_S3_ENDPOINT_URL") || `https://s3.${region}.amazonaws.com`;
    const accessKeyId = env.get("AWS_ACCESS_KEY_ID");
    const secretAccessKey = env.get("AWS_SECRET_ACCESS_KEY");
    if (!bucket) throw new ArtifactError(`TWOTOWER_ARTIFACT_STORE=${where}: expected s3://bucket/prefix`);
    if (!accessKeyId || !secretAccessKey) {
      throw new ArtifactError("an s3:// store needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
    }
    const sessionToken = env.get("AWS_SESSION_TOKEN") || undefined;
    return new S3Store({ bucket, prefix, endpoint, region, accessKeyId, secretAccessKey, sessionToken });
  }
  if (where.includes("://")) {
    throw new ArtifactError(`TWOTOWER_ARTIFACT_STORE=${where}: use a directory or s3://bucket/prefix`);
  }
  return new LocalStore(where);
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

export interface Artifacts {
  manifest: Record<string, unknown>;
  files: Map<string, Uint8Array>;
}

/** The manifest and these files of a version, each verified against the manifest's sha256. */
export async function fetchVersion(store: ArtifactStore, version: string, names: string[]): Promise<Artifacts> {
  let manifest: Record<string, unknown>;
  try {
    manifest = JSON.parse(new TextDecoder().decode(await store.read(version, MANIFEST)));
  } catch (error) {
    if (error instanceof ArtifactError) throw error;
    throw new ArtifactError(`the manifest of ${version} is not valid JSON`);
  }
  const checksums = (manifest?.checksums ?? {}) as Record<string, unknown>;
  if (manifest?.version !== version) throw new ArtifactError(`the manifest of ${version} names another version`);
  const files = new Map<string, Uint8Array>();
  await Promise.all(names.map(async (name) => {
    const expected = checksums[name];
    if (typeof expected !== "string") throw new ArtifactError(`the manifest of ${version} has no checksum of ${name}`);
    const bytes = await store.read(version, name);
    const actual = await sha256(bytes);
    if (actual !== expected) {
      throw new ArtifactError(
        `${version}/${name}: checksum mismatch (expected ${expected.slice(0, 12)}…, got ${actual.slice(0, 12)}…); ` +
          "the artifact was modified or corrupted",
      );
    }
    files.set(name, bytes);
  }));
  return { manifest, files };
}
