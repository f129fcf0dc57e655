"""The HTML pages: ``/console`` (the operator console) and ``/try`` (the swipe demo, off unless
TWOTOWER_SERVE_TRY_PAGE), their static files, and the try page's demo sign-in. The pages are static shells with
no data and no secret: what they show comes from the API, called with the token the visitor pastes (console) or
the demo token (try), kept in session storage."""

from __future__ import annotations

import uuid
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response
from pydantic import BaseModel, Field

from twotower.errors import NotFound
from twotower.serve import schemas as s
from twotower.serve.auth import mint_token
from twotower.serve.deps import ServiceDep
from twotower.serve.service import Service

router = APIRouter(include_in_schema=False)

DEMO_NAMESPACE = uuid.UUID("6f1c2b9e-7d1a-4c55-9a39-2f3f1d0e8b10")  # demo users' ids: uuid5(namespace, "demo-<name>")
DEMO_TOKEN_SECONDS = 3600
_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
_FILES = {"console.html", "console.js", "try.html", "try.js", "pages.css", "common.js"}
# everything comes from this server; images may come from the catalog's thumbnail hosts
_CSP = ("default-src 'self'; img-src 'self' data: http: https:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")  # fmt: skip
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache"}  # fmt: skip


def _file(name: str) -> Response:
    body = resources.files("twotower.serve").joinpath("static", name).read_bytes()
    return Response(body, media_type=_TYPES[name.rsplit(".", 1)[1]], headers=_HEADERS)


def _try_on(service: ServiceDep) -> Service:
    """The service, while the try page is on (404 otherwise, before anything else of the request is looked at)."""
    if not service.settings.serve_try_page:
        raise NotFound("the try page is off (set TWOTOWER_SERVE_TRY_PAGE=true to serve it)")
    return service


TryOn = Annotated[Service, Depends(_try_on)]


@router.get("/console")
def console_page() -> Response:
    return _file("console.html")


@router.get("/try")
def try_page(_: TryOn) -> Response:
    return _file("try.html")


@router.get("/pages/{name}")
def static_file(name: Annotated[str, Path(max_length=64)]) -> Response:
    if name not in _FILES or name.endswith(".html"):
        raise NotFound(f"no page file {name!r}")
    return _file(name)


class DemoUserIn(s.Strict):
    name: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9-]*$",
                      description="A demo user's name: the same name is the same user.")  # fmt: skip


class DemoSessionOut(BaseModel):
    name: str
    user_id: str
    access_token: str
    expires_in: int = Field(description="Seconds.")


@router.post("/v1/try/session", response_model=DemoSessionOut)
def demo_session(service: TryOn, body: DemoUserIn) -> dict[str, Any]:
    """A short-lived access token for the demo user ``name`` (only while the try page is on). Demo users' ids are
    derived from their names in a namespace of their own: no real user's token can be had this way."""
    user = uuid.uuid5(DEMO_NAMESPACE, f"demo-{body.name}")  # create_app refuses the try page without a secret
    access = mint_token(service.settings, DEMO_TOKEN_SECONDS, user=user, demo=True)
    return {"name": body.name, "user_id": str(user), "access_token": access, "expires_in": DEMO_TOKEN_SECONDS}
