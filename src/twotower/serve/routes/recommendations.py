"""Recommendations: for the caller, the edge-function drop-in, and a video's neighbours."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BeforeValidator

from twotower.serve import queries
from twotower.serve import schemas as s
from twotower.serve.deps import RESPONSES, Caller, Model, ServiceDep

router = APIRouter(tags=["recommendations"], responses=RESPONSES)


@router.post("/v1/recommendations", response_model=s.RecommendationsOut)
def recommendations(body: s.RecommendationsIn, caller: Caller, service: ServiceDep) -> Response:
    """Videos for the caller, from their decisions so far: exactly ``limit`` unseen ones when that many exist."""
    answer = queries.recommend(service, caller.require_user(), body.limit, body.exclude_liked,
                               queries.filters(body.filters))  # fmt: skip
    return Response(answer.model_dump_json(), media_type="application/json")  # built and validated once


@router.post("/functions/v1/two_tower_recommendations", response_model=s.EdgeRecommendationsOut)
def edge_function(body: s.EdgeRecommendationsIn, caller: Caller, service: ServiceDep) -> s.EdgeRecommendationsOut:
    """Drop-in for the app's ``two_tower_recommendations`` edge function (supabase/functions/ runs the same in
    Supabase): same request and response, with the filters of /v1/recommendations."""
    answer = queries.recommend(service, caller.require_user(), body.limit, body.exclude_liked,
                               queries.filters(body.filters))  # fmt: skip
    return s.EdgeRecommendationsOut(
        recommendations=[s.EdgeVideoOut(**v.model_dump()) for v in answer.recommendations],
        total_count=answer.total_count, algorithm=answer.algorithm, model_version=answer.model_version,
        experiment_arm=answer.experiment_arm,
    )  # fmt: skip


@router.get("/v1/videos/{video_id}/similar", response_model=s.RecommendationsOut)
def similar(
    video_id: Annotated[uuid.UUID, Path()], caller: Caller, service: ServiceDep, model: Model,
    limit: Annotated[int, Query(ge=1, le=s.MAX_LIMIT), BeforeValidator(s.whole_number)] = 20,
) -> s.RecommendationsOut:  # fmt: skip
    """Videos closest to this one in the active model's embedding space."""
    if not caller.is_service:
        caller.require_user()
    return queries.similar(service, model, video_id, limit)
