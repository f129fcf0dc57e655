"""The operator console's API (service role, every route): versions and rollback, quality trend, serving
figures, jobs and syncs, user and video lookups. The page itself is ``/console`` (routes/pages.py)."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BeforeValidator, Field

from twotower.serve import admin_schemas as a
from twotower.serve import console
from twotower.serve import schemas as s
from twotower.serve.deps import RESPONSES, Admin, ServiceDep

log = logging.getLogger("twotower.serve")
router = APIRouter(tags=["console"], responses={**RESPONSES, 409: {"model": s.ErrorOut}})
Limit = Annotated[int, Query(ge=1, le=s.MAX_LIMIT), BeforeValidator(s.whole_number)]


class RollbackIn(s.Strict):
    version: s.Version | None = Field(
        default=None, description="The version to activate (default: the most recently retired one)."
    )


def _figures(request: Request) -> console.ServingFigures:
    figures: console.ServingFigures = request.app.state.figures
    return figures


@router.get("/v1/admin/versions", response_model=a.VersionsOut)
def versions(_: Admin, service: ServiceDep) -> dict[str, Any]:
    """The active version, every version with its gate figures, and the deploy/rollback history (service role)."""
    return console.versions(service)


@router.post("/v1/admin/rollback", response_model=a.RollbackOut)
def rollback(body: RollbackIn, caller: Admin, service: ServiceDep) -> dict[str, Any]:
    """Activate a retired version (default: the last one) and load it now; 409 when none can be (service role)."""
    actor = f"console:{caller.user_id or caller.role}"  # recorded with the switch (model_deployments.actor)
    done = console.roll_back(service, body.version, actor)
    log.warning("rollback to %s (was %s) by %s", done["active"], done["previous"], actor)
    return done


@router.get("/v1/admin/quality/trend", response_model=a.QualityTrendOut)
def quality_trend(_: Admin, service: ServiceDep) -> dict[str, Any]:
    """The active version's latest quality check (alerts, the live like-rate it measured) and a few figures of
    each of its last 50 checks (service role)."""
    return console.quality_trend(service)


@router.get("/v1/admin/serving", response_model=a.ServingOut)
def serving(_: Admin, figures: Annotated[console.ServingFigures, Depends(_figures)]) -> dict[str, Any]:
    """This process's requests/s, p50/p99 of the serving routes and answers by algorithm (service role)."""
    return figures.figures()


@router.get("/v1/admin/jobs", response_model=a.JobsOut)
def jobs(_: Admin, service: ServiceDep) -> dict[str, Any]:
    """The last 20 batch jobs with their progress, and the catalog syncs (service role)."""
    return console.jobs(service)


@router.get("/v1/admin/users/{user_id}", response_model=a.UserLookupOut)
def user(user_id: Annotated[uuid.UUID, Path()], _: Admin, service: ServiceDep, limit: Limit = 20) -> dict[str, Any]:
    """A user's last 50 swipes, their counts, and the feed they would get now, with scores (service role)."""
    return console.user_lookup(service, user_id, limit)


@router.get("/v1/admin/videos/{video_id}", response_model=a.VideoLookupOut)
def video(video_id: Annotated[uuid.UUID, Path()], _: Admin, service: ServiceDep, limit: Limit = 10) -> dict[str, Any]:
    """A video's metadata and its nearest neighbours in the active generation (service role)."""
    return console.video_lookup(service, video_id, limit)
