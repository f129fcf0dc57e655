"""Online experiments (service role): look at the running or last one, start one, stop it (optionally promoting
the candidate). The console's experiment panel calls these."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from pydantic import Field

from twotower.serve import admin_schemas as a
from twotower.serve import experiments
from twotower.serve import schemas as s
from twotower.serve.deps import RESPONSES, Admin, ServiceDep

log = logging.getLogger("twotower.serve")
router = APIRouter(tags=["experiments"], responses={**RESPONSES, 409: {"model": s.ErrorOut}})


class ExperimentIn(s.Strict):
    candidate: s.Version = Field(
        description="A deployed version that is not active (deploy --candidate), a retired one, or the active one "
        "(an A/A test)."
    )
    share: float = Field(default=0.1, gt=0, lt=1, description="Share of the users answered by the candidate.")


class StopIn(s.Strict):
    promote: bool = Field(default=False, description="Make the candidate the active version.")


@router.get("/v1/admin/experiment", response_model=a.ExperimentViewOut)
def experiment(_: Admin, service: ServiceDep) -> dict[str, Any]:
    """The running experiment (or the last one): per arm users, exposures, swipes and like-rate with its interval,
    the difference with a fixed-horizon and an always-valid 95% interval, the verdict, and its looks over time
    (service role). Each call is a look: recorded, and the guardrail applies."""
    return experiments.experiment_view(service)


@router.post("/v1/admin/experiment", response_model=a.ExperimentStartedOut)
def start(body: ExperimentIn, caller: Admin, service: ServiceDep) -> dict[str, Any]:
    """Start an experiment: ``share`` of the users get the candidate (service role; 409 when one is running or the
    version cannot be a candidate)."""
    actor = f"console:{caller.user_id or caller.role}"
    started = experiments.start_experiment(service, body.candidate, body.share, actor)
    log.warning("experiment %s started by %s", started["experiment"]["id"], actor)
    return started


@router.post("/v1/admin/experiment/stop", response_model=a.ExperimentStoppedOut)
def stop(body: StopIn, caller: Admin, service: ServiceDep) -> dict[str, Any]:
    """Stop the running experiment; with ``promote`` its candidate becomes active (service role)."""
    actor = f"console:{caller.user_id or caller.role}"
    stopped = experiments.stop_experiment(service, body.promote, actor)
    log.warning("experiment %s %s by %s", stopped["experiment"]["id"], stopped["experiment"]["status"], actor)
    return stopped
