// Each function's handler called as Supabase calls it (a Request in, a Response out), with no database behind it:
// what it must answer before and without one — CORS, methods, limits, auth, malformed and hostile bodies, and a
// 503 (never a 500) when the database cannot be reached. tests/edge/ runs them against a real database beside the
// Python API.

import { deepStrictEqual as assertEquals, match as assertMatch } from "node:assert/strict";
import { generateKeyPair, SignJWT } from "jose";

const SECRET = "deno-tests-secret-0123456789abcdef0123456";
Deno.env.set("TWOTOWER_JWT_SECRET", SECRET);
Deno.env.set("SUPABASE_DB_URL", "postgresql://postgres@127.0.0.1:9/nowhere"); // nothing listens on port 9
Deno.env.set("TWOTOWER_ARTIFACT_STORE", "/nonexistent/store");
Deno.env.set("TWOTOWER_DB_CONNECT_TIMEOUT", "2");
// the project's JWKS endpoint in an outage: an error page instead of keys
const jwks = Deno.serve(
  { port: 0, hostname: "127.0.0.1", onListen: () => {} },
  () => new Response("<html>502 Bad Gateway</html>", { status: 502, headers: { "Content-Type": "text/html" } }),
);
Deno.env.set("TWOTOWER_JWT_JWKS_URL", `http://127.0.0.1:${jwks.addr.port}/auth/v1/.well-known/jwks.json`);

const { handler: recommendations } = await import("../two_tower_recommendations/handler.ts");
const { handler: userEmbedding } = await import("../user_embedding/handler.ts");
const { handler: itemEmbedding } = await import("../item_embedding/handler.ts");
const HANDLERS = { recommendations, userEmbedding, itemEmbedding };
const USER = "8b0c1d9e-4f7a-4c3b-9a55-2d1e0f6a7b8c";

async function sign(claims: Record<string, unknown>, secret = SECRET, exp: number | null = 3600): Promise<string> {
  let jwt = new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" });
  if (exp !== null) jwt = jwt.setExpirationTime(Math.floor(Date.now() / 1000) + exp);
  return await jwt.sign(new TextEncoder().encode(secret));
}

const user = () => sign({ sub: USER, aud: "authenticated", role: "authenticated" });
const service = () => sign({ role: "service_role", iss: "supabase" });

async function call(
  handler: (r: Request) => Promise<Response>,
  init: { method?: string; token?: string; body?: BodyInit; headers?: Record<string, string> } = {},
): Promise<[number, Record<string, unknown>, Headers]> {
  const headers: Record<string, string> = { "Content-Type": "application/json", ...init.headers };
  if (init.token) headers.Authorization = `Bearer ${init.token}`;
  const response = await handler(
    new Request("http://127.0.0.1/", { method: init.method ?? "POST", headers, body: init.body }),
  );
  const text = await response.text();
  return [response.status, text ? JSON.parse(text) : {}, response.headers];
}

function assertError(got: [number, Record<string, unknown>, Headers], status: number, code: string): void {
  assertEquals([got[0], got[1].error], [status, code], JSON.stringify(got[1]));
  assertEquals(Object.keys(got[1]).sort(), ["error", "message"]);
}

Deno.test("every function answers CORS preflight and refuses other methods with 405 JSON", async () => {
  for (const handler of Object.values(HANDLERS)) {
    const [status, , headers] = await call(handler, { method: "OPTIONS" });
    assertEquals(status, 204);
    assertEquals(headers.get("access-control-allow-origin"), "*");
    assertError(await call(handler, { method: "GET" }), 405, "method_not_allowed");
  }
});

Deno.test("every function refuses missing, malformed, expired, forged and unsigned tokens with 401", async () => {
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${btoa('{"alg":"none"}')}.${btoa(`{"sub":"${USER}","aud":"authenticated","exp":${now + 60}}`)}.`;
  const tokens = [
    undefined,
    "not-a-jwt",
    unsigned.replaceAll("=", ""),
    await sign({ sub: USER, aud: "authenticated" }, "another-secret-0123456789abcdef0123456"),
    await sign({ sub: USER, aud: "authenticated" }, SECRET, -10),
    await sign({ sub: USER, aud: "authenticated" }, SECRET, null),
    await sign({ sub: USER, aud: "someone-else" }),
    await sign({ sub: "alice", aud: "authenticated" }),
    await sign({ aud: "authenticated" }),
    await sign({ sub: USER, aud: "authenticated", nbf: now + 3600 }),
  ];
  for (const handler of Object.values(HANDLERS)) {
    for (const token of tokens) {
      const got = await call(handler, { token, body: '{"videos": [{"title": "x"}]}' });
      assertError(got, 401, "unauthorized");
      assertEquals(got[2].get("www-authenticate"), "Bearer");
    }
  }
});

Deno.test("the user functions need a user, the item function the service role (403)", async () => {
  assertError(await call(recommendations, { token: await service(), body: "{}" }), 403, "forbidden");
  assertError(await call(userEmbedding, { token: await service() }), 403, "forbidden");
  assertError(await call(itemEmbedding, { token: await user(), body: '{"videos": [{}]}' }), 403, "forbidden");
});

Deno.test("malformed and oversized bodies are 400 and 413 before anything else", async () => {
  for (const body of ["{", "not json", new Uint8Array([0xff, 0xfe, 0x7b, 0x7d])]) {
    assertError(await call(recommendations, { body }), 400, "malformed_json");
  }
  const big = `{"limit": 3, "pad": "${"x".repeat(2 << 20)}"}`;
  for (const handler of Object.values(HANDLERS)) {
    assertError(await call(handler, { token: await user(), body: big }), 413, "payload_too_large");
  }
  const headers = { "X-Pad": "y".repeat(20 << 10) };
  assertError(await call(recommendations, { token: await user(), body: "{}", headers }), 431, "headers_too_large");
});

Deno.test("invalid recommendation requests are 422 and name the field", async () => {
  const bad = [
    "",
    "null",
    "[]",
    '{"limit": 0}',
    '{"limit": 101}',
    '{"limit": "5"}',
    '{"limit": true}',
    '{"limit": 5.5}',
    '{"limit": null}',
    '{"exclude_liked": 1}',
    '{"filters": []}',
    '{"filters": {"evil": 1}}',
    '{"filters": {"max_price": -1}}',
    '{"filters": {"include_tags": ["\\u0000"]}}',
    '{"filters": {"include_tags": ["  "]}}',
    '{"filters": {"released_after": 20200101}}',
    `{"filters": {"makers": [${'"m",'.repeat(100)}"m"]}}`,
  ];
  for (const body of bad) {
    const got = await call(recommendations, { token: await user(), body });
    assertError(got, 422, "invalid_request");
    assertMatch(String(got[1].message), /^(body|limit|exclude_liked|filters)/);
  }
});

Deno.test("invalid item requests are 422", async () => {
  for (const body of ['{"videos": []}', '{"videos": [{"title": "x", "evil": 1}]}', '{"videos": [{"price": -1}]}']) {
    assertError(await call(itemEmbedding, { token: await service(), body }), 422, "invalid_request");
  }
});

Deno.test("a database that cannot be reached is a 503 with Retry-After, never a 500", async () => {
  const got = await call(recommendations, { token: await user(), body: '{"limit": 5}' });
  assertError(got, 503, "database_unavailable");
  assertEquals(got[2].get("retry-after"), "1");
  assertError(await call(userEmbedding, { token: await user() }), 503, "database_unavailable");
});

Deno.test("a JWKS endpoint in an outage is a 503 (retry), not a 401 that signs the user out", async () => {
  const { privateKey } = await generateKeyPair("RS256");
  const token = await new SignJWT({ sub: USER, aud: "authenticated", role: "authenticated" })
    .setProtectedHeader({ alg: "RS256", kid: "rsa-1" }).setExpirationTime("1h").sign(privateKey);
  const got = await call(recommendations, { token, body: '{"limit": 5}' });
  assertError(got, 503, "auth_unavailable");
  assertEquals(got[2].get("retry-after"), "1");
  await jwks.shutdown();
});
