// HTTP plumbing shared by the functions: the API's error bodies ({"error": code, "message": ...}) and status
// codes, body and header limits, CORS for browser callers, and one wrapper that turns any failure into a JSON 4xx/5xx
// (never a stack trace).

export const MAX_BODY_BYTES = Number(Deno.env.get("TWOTOWER_SERVE_MAX_BODY_BYTES") ?? 1 << 20);
const MAX_HEADER_BYTES = 16 << 10;

export const CORS: Record<string, string> = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
  "Access-Control-Allow-Methods": "POST, OPTIONS",
};

/** An answer other than 200, with the Python API's code and status (see src/twotower/errors.py). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export const unauthorized = (message: string) =>
  new HttpError(401, "unauthorized", message, { "WWW-Authenticate": "Bearer" });
export const forbidden = (message: string) => new HttpError(403, "forbidden", message);
export const invalid = (message: string) => new HttpError(422, "invalid_request", message);
export const unavailable = (code: string, message: string) => new HttpError(503, code, message, { "Retry-After": "1" });

export function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...CORS, "Content-Type": "application/json", ...headers },
  });
}

export function errorResponse(error: HttpError): Response {
  return json({ error: error.code, message: error.message }, error.status, error.headers);
}

/** The request's body: 413 over the limit, whether or not Content-Length is sent. */
export async function readBody(request: Request, limit = MAX_BODY_BYTES): Promise<Uint8Array> {
  const tooLarge = new HttpError(413, "payload_too_large", `request bodies are limited to ${limit} bytes`);
  const declared = request.headers.get("content-length");
  if (declared !== null && (!/^\d+$/.test(declared) || Number(declared) > limit)) throw tooLarge;
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (request.body) {
    for await (const chunk of request.body) {
      size += chunk.byteLength;
      if (size > limit) throw tooLarge;
      chunks.push(chunk);
    }
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  return bytes;
}

/** The request's JSON body (`undefined` when there is none): 413 over the limit, 400 when it is not UTF-8 JSON.
 * Read before the caller is authenticated, as the Python API does. */
export async function readJson(request: Request, limit = MAX_BODY_BYTES): Promise<unknown> {
  const bytes = await readBody(request, limit);
  if (bytes.byteLength === 0) return undefined; // a missing body: the route's validation says what it lacks (422)
  if (nesting(bytes) > MAX_NESTING) {
    throw new HttpError(400, "malformed_json", "the request body is not valid JSON (UTF-8, nested less deeply)");
  }
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new HttpError(400, "malformed_json", "the request body is not valid JSON");
  }
}

const MAX_NESTING = 900; // Python's json module gives up near 1,000 levels: the same bodies are refused

/** The deepest nesting of arrays and objects in a JSON text (strings skipped). */
function nesting(bytes: Uint8Array): number {
  let depth = 0, deepest = 0, inString = false;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (inString) {
      if (b === 0x5c) i++; // a backslash escapes the next byte
      else if (b === 0x22) inString = false;
    } else if (b === 0x22) inString = true;
    else if (b === 0x5b || b === 0x7b) deepest = Math.max(deepest, ++depth);
    else if (b === 0x5d || b === 0x7d) depth--;
  }
  return deepest;
}

function headerBytes(request: Request): number {
  let size = 0;
  for (const [name, value] of request.headers) size += name.length + value.length;
  return size;
}

export type Handler = (request: Request) => Promise<Response>;

/** A function's entry point: POST only (and CORS preflight), limits, and every error as a JSON body. */
export function handle(route: Handler): Handler {
  return async (request: Request): Promise<Response> => {
    try {
      if (request.method === "OPTIONS") return new Response(null, { status: 204, headers: CORS });
      if (headerBytes(request) > MAX_HEADER_BYTES) {
        throw new HttpError(431, "headers_too_large", `request headers are limited to ${MAX_HEADER_BYTES} bytes`);
      }
      if (request.method !== "POST") {
        throw new HttpError(405, "method_not_allowed", "Method Not Allowed", { Allow: "POST, OPTIONS" });
      }
      return await route(request);
    } catch (error) {
      return failure(error);
    }
  };
}

// SQLSTATE classes as psycopg sorts them: what the Python API answers for each (its handlers in serve/http.py)
const UNAVAILABLE_CLASSES = ["08", "53", "54", "55", "57", "58", "40"]; // OperationalError: retry shortly
const SOCKET_ERRORS = [
  "ECONNREFUSED",
  "ECONNRESET",
  "ENOENT",
  "ETIMEDOUT",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EPIPE",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
]; // prettier-ignore

/** The JSON answer to a failure: ours as they are; the database's by SQLSTATE class; anything else a 500 whose
 * details go to the log only. */
function failure(error: unknown): Response {
  if (error instanceof HttpError) return errorResponse(error);
  const e = error as { code?: unknown; name?: unknown; message?: unknown };
  const code = typeof e?.code === "string" ? e.code : "";
  if (code === "57014") return errorResponse(unavailable("timeout", "the query took too long; retry shortly"));
  if (/^22[0-9A-Z]{3}$/.test(code)) {
    return errorResponse(invalid("a value in the request is out of range for the database"));
  }
  if (
    UNAVAILABLE_CLASSES.some((c) => code.startsWith(c)) || SOCKET_ERRORS.includes(code) ||
    e?.name === "ConnectionRefused"
  ) {
    console.warn(`database unavailable: ${code} ${String(e?.message ?? "").slice(0, 200)}`);
    return errorResponse(unavailable("database_unavailable", "the database is unavailable; retry shortly"));
  }
  console.error("unexpected error:", error);
  return errorResponse(new HttpError(500, "internal_error", "the function failed; see its logs"));
}

/** Serve a function as Supabase does (`Deno.serve`); locally, PORT picks the port on 127.0.0.1. */
export function serve(handler: Handler): void {
  const port = Deno.env.get("PORT");
  if (port) Deno.serve({ port: Number(port), hostname: "127.0.0.1", onListen: () => {} }, handler);
  else Deno.serve(handler);
}
