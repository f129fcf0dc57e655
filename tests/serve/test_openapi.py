"""The OpenAPI schema declares every answer of the service-role routes (no route returns an undeclared dict), and a
declared body is the dict the route built, unchanged (no app server or database needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.support.api import serve_settings
from twotower.registry.store import valid_version
from twotower.serve import admin_schemas as a
from twotower.serve import create_app
from twotower.serve import schemas as s
from twotower.serve.console import ServingFigures
from twotower.serve.http import Metrics


def _openapi(tmp_path: Path) -> dict[str, Any]:
    # create_app connects to nothing (the service starts with the app's lifespan)
    return create_app(serve_settings("postgresql://twotower@127.0.0.1:1/none", tmp_path)).openapi()


def _ref(operation: dict[str, Any]) -> str | None:
    schema = operation["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref") or schema.get("items", {}).get("$ref")  # a model, or a list of one
    return ref if isinstance(ref, str) else None


def test_every_admin_route_declares_its_answer(tmp_path: Path) -> None:
    schema = _openapi(tmp_path)
    components = schema["components"]["schemas"]
    admin = {f"{method.upper()} {path}": op for path, ops in schema["paths"].items()
             if path.startswith("/v1/admin/") or path == "/readyz" for method, op in ops.items()}  # fmt: skip
    assert len(admin) >= 14 and "GET /v1/admin/versions" in admin and "POST /v1/admin/experiment/stop" in admin
    undeclared = sorted(route for route, op in admin.items() if _ref(op) is None)
    assert not undeclared, f"routes without a response model: {undeclared}"
    for route, op in admin.items():
        body = components[str(_ref(op)).rsplit("/", 1)[1]]
        assert body.get("properties") and "additionalProperties" not in body, (route, body)


def test_a_declared_body_is_the_dict_as_built() -> None:
    """The models keep every key, its place and its number type: 2 stays 2, not 2.0."""
    metrics = Metrics.create()
    metrics.answers.labels("two_tower").inc(3)
    figures = ServingFigures(metrics).figures()
    assert json.dumps(a.ServingOut.model_validate(figures).model_dump(mode="json")) == json.dumps(figures)
    point = {"created_at": "2026-01-02T03:04:05Z", "passed": True, "mean_pairwise_cosine": 0.25, "effective_rank": 12,
             "missing_share": 0, "live.like_rate": None}  # fmt: skip
    dumped = a.TrendPointOut.model_validate(point).model_dump(mode="json", by_alias=True)
    assert json.dumps(dumped) == json.dumps(point)
    for recorded in (a.AlertOut, a.RecordedLiveOut):  # read back from jsonb, which orders keys shortest first
        assert list(recorded.model_fields) == sorted(recorded.model_fields, key=lambda k: (len(k), k))


def test_the_api_takes_the_version_names_the_registry_takes() -> None:
    names = ["a", "v1.2_rc-3", "A" * 128, "A" * 129, "-a", ".a", "_a", "a b", "a/b", "", "é", "a:b", "9", "v1\n"]
    for name in names:
        # pydantic's (Rust) regex: ``$`` is the end of the text, Python's ``\Z``
        api = re.search(s.VERSION_PATTERN.replace("$", r"\Z"), name) is not None and len(name) <= s.VERSION_MAX_LENGTH
        assert api == valid_version(name), name
