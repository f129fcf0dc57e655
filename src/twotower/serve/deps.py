"""Typed dependencies of the routes: the shared service, the authenticated caller, the service role, the loaded
model (``Annotated[..., Depends(...)]`` aliases, as in FastAPI's full-stack template)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request

from twotower.errors import ModelUnavailable
from twotower.serve import schemas as s
from twotower.serve.auth import Principal
from twotower.serve.runtime import LoadedModel
from twotower.serve.service import Service

__all__ = [
    "RESPONSES",
    "Admin",
    "Caller",
    "Model",
    "ServiceDep",
    "get_service",
    "loaded_model",
    "principal",
    "service_role",
]

_ERRORS = {"model": s.ErrorOut}
# the documented error answers of every API route (the body is always {"error": code, "message": ...})
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _ERRORS, 401: _ERRORS, 403: _ERRORS, 404: _ERRORS, 413: _ERRORS, 422: _ERRORS, 431: _ERRORS, 503: _ERRORS,
}  # fmt: skip
NOT_READY: dict[int | str, dict[str, Any]] = {503: _ERRORS}


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def principal(service: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller of the request, from its bearer token (401 without a valid one)."""
    return service.auth.authenticate(authorization)


Caller = Annotated[Principal, Depends(principal)]


def service_role(caller: Caller) -> Principal:
    """The caller, who must hold the service role (403 otherwise)."""
    caller.require_service()
    return caller


Admin = Annotated[Principal, Depends(service_role)]


def loaded_model(service: ServiceDep) -> LoadedModel:
    """The model version answering now (503 while none is loaded)."""
    model = service.model
    if model is None:
        raise ModelUnavailable("no model is loaded (deploy one with `twotower deploy`)")
    return model


Model = Annotated[LoadedModel, Depends(loaded_model)]
