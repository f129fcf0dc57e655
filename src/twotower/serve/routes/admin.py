"""Model versions and their quality (service role)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from twotower.registry.versions import list_versions
from twotower.serve import admin_schemas as a
from twotower.serve import queries
from twotower.serve import schemas as s
from twotower.serve.deps import RESPONSES, Admin, ServiceDep

router = APIRouter(tags=["admin"], responses=RESPONSES)


@router.get("/v1/admin/models", response_model=list[s.ModelOut])
def models(_: Admin, service: ServiceDep) -> list[s.ModelOut]:
    """Registered model versions (service role)."""
    versions = service.run(list_versions)
    return [
        s.ModelOut(version=v.version, status=v.status, embedding_dim=v.embedding_dim, created_at=v.created_at,
                   activated_at=v.activated_at, videos_embedded=v.videos_embedded)
        for v in versions
    ]  # fmt: skip


@router.get("/v1/admin/quality", response_model=a.QualityOut)
def quality(
    _: Admin, service: ServiceDep,
    model_version: Annotated[str | None, Query(max_length=s.VERSION_MAX_LENGTH, pattern=s.VERSION_PATTERN)] = None,
    history_limit: Annotated[int, Query(ge=0, le=1000), BeforeValidator(s.whole_number)] = 20,
) -> dict[str, Any]:  # fmt: skip
    """Embedding quality of a version (default: the active one): its latest check (`twotower monitor`), past
    checks, and the live like-rate of what was served (service role)."""
    return queries.quality(service, model_version, history_limit)


@router.post("/v1/admin/reload", response_model=a.ReloadOut)
def reload(_: Admin, service: ServiceDep) -> dict[str, Any]:
    """Check the active version now and load it if it changed (service role)."""
    changed = service.models.refresh(force=True)
    return {"changed": changed, "model_version": service.model.version if service.model else None}
