"""What the console and the admin API ask of experiments: the running (or last) one measured now, its recorded
looks over time, and start/stop for the service role (the switch is the registry's; this process reloads at once,
the others on the notification)."""

from __future__ import annotations

from typing import Any

import psycopg

from twotower.monitor.experiment import check_experiment, checks_over_time
from twotower.registry import experiments
from twotower.serve.service import Service

__all__ = ["experiment_view", "start_experiment", "stop_experiment"]


def experiment_view(service: Service) -> dict[str, Any]:
    """The running experiment, or the last one: its figures now (this look is recorded and applies the guardrail,
    as every look does), its looks over time, and what this process serves for each arm."""

    def work(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        found = experiments.latest(conn)
        if found is None:
            return {"experiment": None, "result": None, "points": [], "serving": None}
        result = check_experiment(conn, service.settings, experiment=found, actor="guardrail (console)")
        return {"experiment": result.experiment.as_json(), "result": result.as_json(),
                "points": checks_over_time(conn, found.id)}  # fmt: skip

    view = service.run(work)
    if view["result"] is not None and view["result"]["guardrail_stopped"] and service.holder is not None:
        service.holder.refresh()
    arms = service.holder.experiment if service.holder else None
    view["serving"] = None if arms is None else {
        "experiment_id": arms.definition.id, "candidate_loaded": arms.candidate is not None,
        "control": service.model.version if service.model else None,
        "candidate": arms.candidate.version if arms.candidate else None,
    }  # fmt: skip
    return view


def start_experiment(service: Service, candidate: str, share: float, actor: str) -> dict[str, Any]:
    started = service.run(lambda conn: experiments.start(conn, candidate, share, actor=actor))
    if service.holder is not None:
        service.holder.refresh()
    return {"experiment": started.as_json()}


def stop_experiment(service: Service, promote: bool, actor: str) -> dict[str, Any]:
    reason = "promoted from the console" if promote else "stopped from the console"
    stopped = service.run(lambda conn: experiments.stop(conn, promote=promote, reason=reason, actor=actor))
    if service.holder is not None:
        service.holder.refresh(force=promote)
    return {"experiment": stopped.as_json(), "serving": service.model.version if service.model else None}
