"""Liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from twotower.serve import queries
from twotower.serve import schemas as s
from twotower.serve.deps import NOT_READY, ServiceDep
from twotower.serve.http import error_response

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", response_model=s.ReadyOut, responses=NOT_READY)
def readyz(service: ServiceDep) -> Response:
    """Ready to answer: the database responds and the active model version is loaded (or none is active, and
    the fallbacks answer). 503 with the reason while the model loads or after it failed to load."""
    queries.ping(service)
    state = service.models.readiness()
    if not state.ready:
        return error_response(503, "not_ready", state.reason or "not ready", {"Retry-After": "1"})
    body: dict[str, Any] = {"status": "ready", "model_version": state.serving, "active_version": state.active,
            "algorithm": "two_tower" if state.serving else "fallback", "note": state.reason}  # fmt: skip
    if service.replicas is not None:  # a replica down or behind does not make the server unready: the primary reads
        body["replicas"] = service.replicas.status()
    return JSONResponse(body)


@router.get("/metrics", include_in_schema=False)
def metrics(service: ServiceDep) -> Response:
    for replica in service.replicas.status() if service.replicas is not None else []:
        lag = replica["lag_seconds"]
        service.metrics.replica_lag.labels(replica["name"]).set(-1 if lag is None else lag)
        service.metrics.replica_usable.labels(replica["name"]).set(1 if replica["usable"] else 0)
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
