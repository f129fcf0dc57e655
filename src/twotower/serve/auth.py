"""Supabase-style JWT bearer auth: HS256 with the project secret, RS256/ES256 through JWKS.

The algorithm is pinned by the key that verifies it: HS256 only ever with the configured secret, RS256/ES256
only with a key from the JWKS; ``alg: none`` and anything else are refused. The user id is the token's ``sub``
and nothing else; the service role (``role: service_role``) is needed for admin and batch routes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from twotower.errors import AuthUnavailable, ConfigError, Forbidden, Unauthorized
from twotower.settings import Settings

__all__ = ["SERVICE_ROLE", "Authenticator", "Forbidden", "Principal", "Unauthorized", "mint_token"]

SERVICE_ROLE = "service_role"
_ASYMMETRIC = ("RS256", "ES256")


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID | None
    role: str
    claims: dict[str, Any]

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE

    def require_user(self) -> uuid.UUID:
        if self.user_id is None:
            raise Forbidden("this route acts for a user: call it with the user's access token")
        return self.user_id

    def require_service(self) -> None:
        if not self.is_service:
            raise Forbidden("this route needs the service role")


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300, timeout=5) \
            if settings.jwt_jwks_url else None  # fmt: skip
        if self.secret is None and self.jwks is None:
            raise ConfigError("no way to verify tokens: set TWOTOWER_JWT_SECRET and/or TWOTOWER_JWT_JWKS_URL")

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing bearer token (Authorization: Bearer <access token>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("expected an Authorization: Bearer <access token> header")
        claims = self._verify(token.strip())
        role = str(claims.get("role") or "authenticated")
        sub = claims.get("sub")
        user_id = None
        if sub is not None:
            try:
                user_id = uuid.UUID(str(sub))
            except ValueError:
                raise Unauthorized("the token's sub is not a user id (uuid)") from None
        if user_id is None and role != SERVICE_ROLE:
            raise Unauthorized("the token has no sub")
        return Principal(user_id, role, claims)

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        key: Any
        if alg == "HS256" and self.secret is not None:
            key = self.secret
        elif alg in _ASYMMETRIC and self.jwks is not None:
            try:
                signing_key = self.jwks.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError:
                raise AuthUnavailable("the token keys (JWKS) cannot be fetched right now; retry shortly") from None
            except jwt.PyJWKClientError as exc:
                raise Unauthorized(f"no signing key for this token ({exc})") from None
            except (jwt.PyJWKSetError, ValueError):  # a JWKS that is not JSON, or has no usable key
                raise AuthUnavailable("the token keys (JWKS) are unusable right now; retry shortly") from None
            if signing_key.algorithm_name != alg:  # an RSA key's kid with alg ES256, or the other way round
                raise Unauthorized(f"token algorithm {alg} does not match its key")
            key = signing_key.key
        else:
            raise Unauthorized(f"token algorithm {alg!r} is not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], issuer=self.issuer,
                options={"require": ["exp"], "verify_aud": False},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise Unauthorized(f"invalid token ({exc})") from None
        self._check_audience(claims)
        return claims

    def _check_audience(self, claims: dict[str, Any]) -> None:
        aud = claims.get("aud")
        if aud is None:
            if claims.get("role") == SERVICE_ROLE:  # Supabase's service key carries no audience
                return
            raise Unauthorized("the token has no audience")
        audiences = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
        if self.audience not in audiences:
            raise Unauthorized("the token is for another audience")


def mint_token(settings: Settings, seconds: int, *, user: uuid.UUID | None = None, **claims: Any) -> str:
    """An HS256 token signed with ``TWOTOWER_JWT_SECRET`` that this API accepts, as the auth provider would sign
    it: a user's (``sub``, ``aud``, ``role: authenticated``) or, without ``user``, one with ``claims`` only
    (e.g. ``role=SERVICE_ROLE``); ``iss`` when an issuer is configured. For the demo and the try page."""
    if settings.jwt_secret is None:
        raise AuthUnavailable("TWOTOWER_JWT_SECRET is not set: no token can be signed")
    body: dict[str, Any] = {"exp": int(time.time()) + seconds}
    if user is not None:
        body.update(sub=str(user), aud=settings.jwt_audience, role="authenticated")
    body.update(claims)
    if settings.jwt_issuer:
        body["iss"] = settings.jwt_issuer
    return jwt.encode(body, settings.jwt_secret.get_secret_value(), algorithm="HS256")
