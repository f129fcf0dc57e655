"""Swipes and embeddings."""

from __future__ import annotations

from fastapi import APIRouter

from twotower.serve import queries
from twotower.serve import schemas as s
from twotower.serve.deps import RESPONSES, Admin, Caller, Model, ServiceDep

router = APIRouter(responses=RESPONSES)


@router.post("/v1/decisions", response_model=s.DecisionOut, status_code=201, tags=["decisions"])
def decide(body: s.DecisionIn, caller: Caller, service: ServiceDep) -> s.DecisionOut:
    """Record the caller's swipe (a second swipe on the same video replaces the first)."""
    return queries.decide(service, caller.require_user(), body)


@router.post("/v1/embeddings/user", response_model=s.EmbeddingOut, tags=["embeddings"])
def embed_user(caller: Caller, service: ServiceDep, model: Model) -> s.EmbeddingOut:
    """Compute the caller's embedding from their decisions now, store it for the active version, return it."""
    return queries.embed_user(service, model, caller.require_user())


@router.post("/v1/embeddings/items", response_model=s.ItemsOut, tags=["embeddings"])
def embed_items(body: s.ItemsIn, _: Admin, model: Model) -> s.ItemsOut:
    """Item-tower embeddings of up to 1,000 videos from their metadata (service role)."""
    return queries.embed_items(model, body)
