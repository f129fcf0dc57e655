"""Response bodies of the service-role routes (``/v1/admin/*``): what serve/console.py, experiments.py and queries.py
build, fields in the order of those dicts, and a number as computed (an integer is not made a float)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

from twotower.serve import schemas as s

# a number as it was computed or stored (jsonb): 2 stays 2 and 0.5 stays 0.5 (a float field would write 2.0)
Num = Annotated[int | float, WithJsonSchema({"type": "number"})]


class ReloadOut(BaseModel):
    changed: bool = Field(description="The active version changed and was loaded.")
    model_version: str | None


class AlertOut(BaseModel):
    """An alert of a recorded check (jsonb: its keys come shortest first, as these fields)."""

    name: str
    value: Num
    message: str
    threshold: Num


class LiveOut(BaseModel):
    """The live like-rate of what a version served over the last ``window_hours``."""

    window_hours: Num
    served: int
    decided: int
    liked: int
    like_rate: Num | None


class RecordedLiveOut(BaseModel):
    """``LiveOut`` as a check recorded it (jsonb: its keys come shortest first, as these fields)."""

    liked: int
    served: int
    decided: int
    like_rate: Num | None
    window_hours: Num


class QualityCheckOut(BaseModel):
    id: int
    passed: bool
    created_at: datetime
    alerts: list[AlertOut]


class QualityReportOut(BaseModel):
    id: int
    version: str | None
    passed: bool
    metrics: dict[str, Any] = Field(description="The check's figures (`twotower monitor`), as recorded.")
    alerts: list[AlertOut]
    created_at: datetime


class QualityOut(BaseModel):
    model_version: str
    latest: QualityReportOut | None
    history: list[QualityCheckOut]
    live: LiveOut


class VersionOut(BaseModel):
    version: str
    status: str
    embedding_dim: int
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    videos_embedded: int | None
    users_embedded: int | None
    error: str | None
    gate: dict[str, Any] | None = Field(description="The deploy's quality gate, as recorded (null: not gated).")
    rollback_target: bool


class DeploymentOut(BaseModel):
    id: int
    version: str
    previous_version: str | None
    action: str
    actor: str | None
    created_at: datetime


class VersionsOut(BaseModel):
    active: str | None
    serving: str | None
    versions: list[VersionOut]
    deployments: list[DeploymentOut]


class RollbackOut(BaseModel):
    active: str
    previous: str | None
    serving: str | None


class TrendLatestOut(BaseModel):
    id: int
    passed: bool
    created_at: datetime
    alerts: list[AlertOut]
    live: RecordedLiveOut | None


class TrendPointOut(BaseModel):
    created_at: datetime
    passed: bool
    mean_pairwise_cosine: Num | None
    effective_rank: Num | None
    missing_share: Num | None
    live_like_rate: Num | None = Field(alias="live.like_rate")


class QualityTrendOut(BaseModel):
    model_version: str | None
    latest: TrendLatestOut | None
    points: list[TrendPointOut]


class ServingOut(BaseModel):
    window_seconds: Num
    requests: int
    requests_per_second: Num
    p50_ms: Num | None
    p99_ms: Num | None
    answers: dict[str, int] = Field(description="Answers by algorithm since the process started.")
    share_by_algorithm: dict[str, Num]
    routes: list[str]


class JobOut(BaseModel):
    id: int
    kind: str
    model_version: str | None
    status: str
    total_chunks: int
    chunks_done: int
    rows_done: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class SyncOut(BaseModel):
    source: str
    watermark: datetime | None
    last_run_at: datetime | None
    last_summary: dict[str, Any] = Field(description="The last sync's summary, as recorded.")


class JobsOut(BaseModel):
    jobs: list[JobOut]
    syncs: list[SyncOut]


class SwipeOut(BaseModel):
    video_id: uuid.UUID
    decision_type: Literal["like", "nope"]
    created_at: datetime
    title: str
    thumbnail_url: str | None


class UserLookupOut(BaseModel):
    user_id: uuid.UUID
    recent: list[SwipeOut]
    likes: int
    nopes: int
    feed: s.RecommendationsOut


class CatalogVideoOut(BaseModel):
    id: uuid.UUID
    source: str
    external_id: str
    title: str
    description: str | None
    duration_seconds: int | None
    price: Num | None
    maker: str | None
    label: str | None
    series: str | None
    director: str | None
    product_released_at: datetime | None
    thumbnail_url: str | None
    product_url: str | None
    review_count: int | None
    review_average: Num | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    tags: list[str]
    performers: list[str]
    likes: int
    nopes: int


class VideoLookupOut(BaseModel):
    video: CatalogVideoOut
    neighbours: s.RecommendationsOut | None
    note: str | None = Field(description="Why there are no neighbours.")


class ExperimentOut(BaseModel):
    id: int
    control_version: str
    candidate_version: str
    share: Num
    status: str = Field(description="running, stopped, promoted or guardrail.")
    started_at: datetime
    stopped_at: datetime | None
    stop_reason: str | None
    started_by: str | None
    stopped_by: str | None


class ArmStatsOut(BaseModel):
    users: int
    exposures: int
    decisions: int
    likes: int
    like_rate: Num | None
    like_rate_se: Num | None
    decision_rate: Num | None
    decision_rate_se: Num | None


class ArmsOut(BaseModel):
    control: ArmStatsOut
    candidate: ArmStatsOut


class ComparisonOut(BaseModel):
    difference: Num | None = Field(description="Candidate minus control on the like-rate.")
    ci95: tuple[Num, Num] | None = Field(description="Fixed-horizon 95% interval (valid for one look only).")
    always_valid: tuple[Num, Num] | None = Field(description="Always-valid 95% interval (valid at every look).")
    log_lr: Num | None
    verdict: str = Field(description="collecting, inconclusive, candidate_better or candidate_worse.")
    reason: str


class ExperimentResultOut(BaseModel):
    experiment: ExperimentOut
    arms: ArmsOut
    comparison: ComparisonOut
    verdict: str
    checked_at: datetime
    guardrail_stopped: bool


class ExperimentPointOut(BaseModel):
    at: datetime
    verdict: str
    difference: Num | None
    always_valid: list[Num] | None
    control_like_rate: Num | None
    candidate_like_rate: Num | None
    control_like_rate_se: Num | None
    candidate_like_rate_se: Num | None
    control_users: int | None
    candidate_users: int | None


class ArmsServingOut(BaseModel):
    experiment_id: int
    candidate_loaded: bool
    control: str | None
    candidate: str | None


class ExperimentViewOut(BaseModel):
    experiment: ExperimentOut | None
    result: ExperimentResultOut | None
    points: list[ExperimentPointOut]
    serving: ArmsServingOut | None = Field(description="What this process serves for each arm (null: none runs).")


class ExperimentStartedOut(BaseModel):
    experiment: ExperimentOut


class ExperimentStoppedOut(BaseModel):
    experiment: ExperimentOut
    serving: str | None
