// Supabase JWT bearer auth, as src/twotower/serve/auth.py: HS256 only with the project secret, RS256/ES256 only with
// a key of the project's JWKS (the algorithm is pinned by the key that verifies it; "none" and anything else are
// refused); `exp` required, `nbf` and `iss` checked, the audience checked; the user is the token's `sub` and nothing
// else, and the service role (`role: service_role`) is needed for the service routes.

import { createRemoteJWKSet, decodeProtectedHeader, errors, type JWTPayload, jwtVerify } from "jose";
import { forbidden, HttpError, unauthorized, unavailable } from "./http.ts";

export const SERVICE_ROLE = "service_role";
const ASYMMETRIC = ["RS256", "ES256"];
// what jose says of a JWKS endpoint that answers with something other than keys (an error page, a 5xx)
const JWKS_DOWN = ["Expected 200 OK", "Failed to parse the JSON Web Key Set"];
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface AuthConfig {
  secret?: string;
  jwksUrl?: string;
  audience: string;
  issuer?: string;
}

export class Principal {
  constructor(readonly userId: string | null, readonly role: string, readonly claims: JWTPayload) {}

  get isService(): boolean {
    return this.role === SERVICE_ROLE;
  }

  requireUser(): string {
    if (this.userId === null) throw forbidden("this route acts for a user: call it with the user's access token");
    return this.userId;
  }

  requireService(): void {
    if (!this.isService) throw forbidden("this route needs the service role");
  }
}

/** The configuration from the environment: TWOTOWER_JWT_SECRET (or SUPABASE_JWT_SECRET) for HS256, and
 * TWOTOWER_JWT_JWKS_URL for RS256/ES256, by default the project's own JWKS under SUPABASE_URL. */
export function authConfig(env: { get(name: string): string | undefined } = Deno.env): AuthConfig {
  const supabase = env.get("SUPABASE_URL");
  return {
    secret: env.get("TWOTOWER_JWT_SECRET") || env.get("SUPABASE_JWT_SECRET") || undefined,
    jwksUrl: env.get("TWOTOWER_JWT_JWKS_URL") ||
      (supabase ? `${supabase.replace(/\/+$/, "")}/auth/v1/.well-known/jwks.json` : undefined),
    audience: env.get("TWOTOWER_JWT_AUDIENCE") || "authenticated",
    issuer: env.get("TWOTOWER_JWT_ISSUER") || undefined,
  };
}

export class Authenticator {
  private readonly secret?: Uint8Array;
  private readonly jwks?: ReturnType<typeof createRemoteJWKSet>;

  constructor(private readonly config: AuthConfig) {
    if (config.secret) this.secret = new TextEncoder().encode(config.secret);
    if (config.jwksUrl) {
      this.jwks = createRemoteJWKSet(new URL(config.jwksUrl), { timeoutDuration: 5000, cacheMaxAge: 300_000 });
    }
    if (!this.secret && !this.jwks) {
      throw new Error("no way to verify tokens: set TWOTOWER_JWT_SECRET and/or TWOTOWER_JWT_JWKS_URL");
    }
  }

  async authenticate(authorization: string | null): Promise<Principal> {
    if (!authorization) throw unauthorized("missing bearer token (Authorization: Bearer <access token>)");
    const space = authorization.indexOf(" ");
    const scheme = space < 0 ? authorization : authorization.slice(0, space);
    const token = space < 0 ? "" : authorization.slice(space + 1).trim();
    if (scheme.toLowerCase() !== "bearer" || !token) {
      throw unauthorized("expected an Authorization: Bearer <access token> header");
    }
    const claims = await this.verify(token);
    const role = String(claims.role || "authenticated");
    let userId: string | null = null;
    if (claims.sub !== undefined && claims.sub !== null) {
      const sub = String(claims.sub).toLowerCase();
      if (!UUID.test(sub)) throw unauthorized("the token's sub is not a user id (uuid)");
      userId = sub;
    }
    if (userId === null && role !== SERVICE_ROLE) throw unauthorized("the token has no sub");
    return new Principal(userId, role, claims);
  }

  private async verify(token: string): Promise<JWTPayload & { role?: unknown }> {
    let alg: unknown;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      throw unauthorized("malformed token");
    }
    const options = { algorithms: [String(alg)], issuer: this.config.issuer, requiredClaims: ["exp"] };
    let payload: JWTPayload;
    try {
      if (alg === "HS256" && this.secret) {
        payload = (await jwtVerify(token, this.secret, options)).payload;
      } else if (ASYMMETRIC.includes(String(alg)) && this.jwks) {
        payload = (await jwtVerify(token, this.jwks, options)).payload;
      } else {
        throw unauthorized(`token algorithm ${JSON.stringify(alg ?? null)} is not accepted`);
      }
    } catch (error) {
      throw this.refusal(error);
    }
    this.checkAudience(payload);
    return payload;
  }

  private refusal(error: unknown): HttpError {
    if (error instanceof HttpError) return error;
    if (error instanceof errors.JWTExpired) return unauthorized("token expired");
    if (error instanceof errors.JWKSTimeout || error instanceof errors.JWKSInvalid) {
      return unavailable("auth_unavailable", "the token keys (JWKS) cannot be fetched right now; retry shortly");
    }
    if (error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys) {
      return unauthorized(`no signing key for this token (${(error as Error).message})`);
    }
    const message = String((error as Error)?.message ?? "");
    if (error instanceof errors.JOSEError && !JWKS_DOWN.some((m) => message.startsWith(m))) {
      return unauthorized(`invalid token (${message})`);
    }
    if (error instanceof errors.JOSEError) { // the JWKS endpoint answered, but not with keys: an outage, not the token
      return unavailable("auth_unavailable", "the token keys (JWKS) are unusable right now; retry shortly");
    }
    if (error instanceof TypeError || (error as Error)?.name === "TypeError") {
      // fetch of the JWKS failed (connection refused, DNS): the keys cannot be had right now
      return unavailable("auth_unavailable", "the token keys (JWKS) cannot be fetched right now; retry shortly");
    }
    return unauthorized(`invalid token (${String((error as Error)?.message ?? error)})`);
  }

  private checkAudience(claims: JWTPayload): void {
    const aud = claims.aud;
    if (aud === undefined || aud === null) {
      if ((claims as { role?: unknown }).role === SERVICE_ROLE) return; // Supabase's service key has no audience
      throw unauthorized("the token has no audience");
    }
    const audiences = typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud : [];
    if (!audiences.includes(this.config.audience)) throw unauthorized("the token is for another audience");
  }
}
