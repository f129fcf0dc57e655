"""Measure an online experiment from what was served and swiped; record each look; the guardrail.

Exposures are the (user, video) pairs served to a user under the experiment (from ``served_recommendations``,
which every server process writes with the answer's arm); an exposure's outcome is the user's decision on that
video within ``experiment_outcome_hours`` of it being served. Per arm and per user: exposures, decisions, likes;
the statistics are in :mod:`twotower.monitor.stats`.

Every look (``experiment status``, the console, a server's periodic check, ``monitor``) is recorded in
``experiment_checks`` (the figures over time) and applies the guardrail: a candidate significantly worse than
control is stopped at once (status 'guardrail', the servers are notified and answer everyone with the active
version), and the alert goes to the log and the monitor's webhook.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from twotower.errors import NotFound
from twotower.monitor.run import post_json
from twotower.monitor.stats import ArmStats, Comparison, arm_stats, compare
from twotower.registry.experiments import ARMS, Experiment, latest, stop
from twotower.settings import Settings

__all__ = ["CheckResult", "check_experiment", "checks_over_time", "measure"]

log = logging.getLogger("twotower.monitor")

_PER_USER = """
WITH served AS (
    SELECT s.arm, s.user_id, v.video_id, min(s.served_at) AS served_at
    FROM served_recommendations s, unnest(s.video_ids) AS v (video_id)
    WHERE s.experiment_id = %(id)s AND s.arm IS NOT NULL
    GROUP BY 1, 2, 3
)
SELECT s.arm, s.user_id, count(*) AS exposures, count(d.video_id) AS decisions,
       count(*) FILTER (WHERE d.decision_type = 'like') AS likes
FROM served s LEFT JOIN user_video_decisions d
  ON d.user_id = s.user_id AND d.video_id = s.video_id
 AND d.created_at >= s.served_at - interval '1 minute'  -- the API's and the database's clocks differ
 AND d.created_at < s.served_at + make_interval(secs => %(window)s)
GROUP BY 1, 2
"""


@dataclass
class CheckResult:
    experiment: Experiment
    arms: dict[str, ArmStats]
    comparison: Comparison
    checked_at: datetime
    stopped: bool = False  # this look stopped it (the guardrail)

    @property
    def verdict(self) -> str:
        return self.comparison.verdict

    def as_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment.as_json(), "arms": {k: v.as_json() for k, v in self.arms.items()},
            "comparison": self.comparison.as_json(), "verdict": self.verdict, "checked_at": self.checked_at,
            "guardrail_stopped": self.stopped,
        }  # fmt: skip


def measure(conn: psycopg.Connection[Any], experiment: Experiment, settings: Settings) -> CheckResult:
    """Per-arm statistics and the comparison, now (nothing written)."""
    rows = conn.execute(_PER_USER, {"id": experiment.id, "window": settings.experiment_outcome_hours * 3600}).fetchall()
    arms: dict[str, ArmStats] = {}
    for arm in ARMS:
        counts = np.array([r[2:5] for r in rows if r[0] == arm], dtype=np.float64).reshape(-1, 3)
        arms[arm] = arm_stats(counts[:, 0], counts[:, 1], counts[:, 2])
    comparison = compare(arms["control"], arms["candidate"], tau=settings.experiment_mixture_sd,
                         alpha=settings.experiment_alpha, min_users=settings.experiment_min_users,
                         min_decisions=settings.experiment_min_decisions)  # fmt: skip
    return CheckResult(experiment, arms, comparison, datetime.now(UTC))


def check_experiment(
    conn: psycopg.Connection[Any], settings: Settings, *, experiment: Experiment | None = None, record: bool = True,
    actor: str = "guardrail",
) -> CheckResult:  # fmt: skip
    """Measure the running experiment (or the last one), record the look, and stop a running candidate that is
    significantly worse (with ``experiment_guardrail``). Raises NotFound when there has never been one."""
    experiment = experiment or latest(conn)
    if experiment is None:
        raise NotFound("no experiment has been run (start one with `twotower experiment start CANDIDATE`)")
    result = measure(conn, experiment, settings)
    if experiment.running and result.verdict == "candidate_worse" and settings.experiment_guardrail:
        comp = result.comparison
        reason = (f"guardrail: the candidate's like-rate is lower by {-(comp.difference or 0):.4f} "
                  f"(always-valid 95% interval {_interval(comp.always_valid)})")  # fmt: skip
        try:
            result.experiment = stop(conn, reason=reason, status="guardrail", actor=actor,
                                     experiment_id=experiment.id)  # fmt: skip
            result.stopped = True
        except NotFound:  # another process stopped it meanwhile
            pass
    if record and (experiment.running or result.stopped):  # a finished experiment's series ends at its stop
        body = result.as_json()
        conn.execute(
            "INSERT INTO experiment_checks (experiment_id, verdict, result) VALUES (%s, %s, %s)",
            (experiment.id, result.verdict, Jsonb(json.loads(json.dumps(body, default=str)))),
        )
    if result.stopped:
        _alert(result, settings)
    return result


def _interval(pair: tuple[float, float] | None) -> str:
    return "n/a" if pair is None else f"[{pair[0]:+.4f}, {pair[1]:+.4f}]"


def _alert(result: CheckResult, settings: Settings) -> None:
    exp = result.experiment
    body = {"event": "twotower.experiment_guardrail", "experiment_id": exp.id, "candidate": exp.candidate_version,
            "control": exp.control_version, "reason": exp.stop_reason,
            "arms": {k: v.as_json() for k, v in result.arms.items()},
            "comparison": result.comparison.as_json()}  # fmt: skip
    log.warning(json.dumps(body, default=str, ensure_ascii=False))
    if settings.monitor_webhook_url:
        post_json(settings.monitor_webhook_url, json.loads(json.dumps(body, default=str)))


def checks_over_time(conn: psycopg.Connection[Any], experiment_id: int, limit: int = 200) -> list[dict[str, Any]]:
    """The recorded looks at one experiment, oldest first (at most ``limit``, evenly thinned)."""
    rows = conn.execute(
        "SELECT created_at, verdict, result FROM experiment_checks WHERE experiment_id = %s ORDER BY created_at, id",
        (experiment_id,),
    ).fetchall()
    if len(rows) > limit:
        keep = np.unique(np.linspace(0, len(rows) - 1, limit).round().astype(int))
        rows = [rows[i] for i in keep]
    out = []
    for at, verdict, result in rows:
        arms = result.get("arms", {})
        comp = result.get("comparison", {})
        out.append({
            "at": at, "verdict": verdict, "difference": comp.get("difference"),
            "always_valid": comp.get("always_valid"),
            **{f"{arm}_like_rate": arms.get(arm, {}).get("like_rate") for arm in ARMS},
            **{f"{arm}_like_rate_se": arms.get(arm, {}).get("like_rate_se") for arm in ARMS},
            **{f"{arm}_users": arms.get(arm, {}).get("users") for arm in ARMS},
        })  # fmt: skip
    return out
