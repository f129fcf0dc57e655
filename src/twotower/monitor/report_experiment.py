"""The online-experiment section of the HTML quality report: the running (or last) experiment measured now (nothing
recorded, no guardrail: the report only reads), its arms, the like-rate difference with the fixed-horizon and the
always-valid 95% intervals, and the verdict. Every string from the database is escaped."""

from __future__ import annotations

import html
from typing import Any

import psycopg

from twotower.monitor.experiment import CheckResult, measure
from twotower.monitor.stats import Z95
from twotower.registry.experiments import ARMS, latest
from twotower.settings import Settings

__all__ = ["experiment_section", "latest_experiment"]

_VERDICT_CLASS = {"candidate_better": "passed", "candidate_worse": "alert"}


def latest_experiment(conn: psycopg.Connection[Any], settings: Settings) -> CheckResult | None:
    """The running experiment, or the last one, measured now (None when none has been run)."""
    found = latest(conn)
    return None if found is None else measure(conn, found, settings)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _count(value: int) -> str:
    return f"{value:,}"


def _rate(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" + (f" ± {Z95 * se:.4f}" if se is not None else "")


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _pair(pair: Any) -> str:
    return "—" if not pair else f"[{pair[0]:+.4f}, {pair[1]:+.4f}]"


def experiment_section(result: CheckResult | None) -> str:
    """``<h2>Online experiment …`` with its table and verdict; empty without an experiment."""
    if result is None:
        return ""
    exp, comp = result.experiment, result.comparison
    stopped = ""
    if exp.stopped_at is not None:
        stopped = (f" · stopped {_e(exp.stopped_at.isoformat(timespec='seconds'))} by {_e(exp.stopped_by or '-')}: "
                   f"{_e(exp.stop_reason or 'no reason given')}")  # fmt: skip
    parts = [
        f'<h2 id="experiment">Online experiment #{exp.id}: <code>{_e(exp.candidate_version)}</code> vs '
        f"<code>{_e(exp.control_version)}</code></h2>",
        f'<p class="meta">candidate <code>{_e(exp.candidate_version)}</code> answers {exp.share:.1%} of the users, '
        f"control <code>{_e(exp.control_version)}</code> the rest · <strong>{_e(exp.status)}</strong> since "
        f"{_e(exp.started_at.isoformat(timespec='seconds'))} by {_e(exp.started_by or '-')}{stopped}</p>",
        "<table><thead><tr><th>arm</th><th>version</th><th>users</th><th>exposures</th><th>swipes</th>"
        "<th>swipes/exposure</th><th>like-rate ± 1.96·se</th></tr></thead><tbody>",
    ]
    for arm in ARMS:
        s = result.arms[arm]
        cells = [_count(s.users), _count(s.exposures), _count(s.decisions), _rate(s.decision_rate),
                 _rate(s.like_rate, s.like_rate_se)]  # fmt: skip
        parts.append(f"<tr><td>{arm}</td><td><code>{_e(exp.version(arm))}</code></td>"
                     + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>")  # fmt: skip
    parts.append("</tbody></table>")
    parts.append(
        f"<p>Like-rate difference (candidate − control): <strong>{_e(_signed(comp.difference))}</strong>; "
        f"95% interval {_e(_pair(comp.ci95))} (valid for one look), always-valid 95% interval "
        f"{_e(_pair(comp.always_valid))} (valid at every look).</p>"
    )
    parts.append(
        f'<p>Verdict: <span class="status {_VERDICT_CLASS.get(comp.verdict, "neutral")}">{_e(comp.verdict)}</span> '
        f'— {_e(comp.reason)} <span class="meta">(measured {_e(result.checked_at.isoformat(timespec="seconds"))}'
        ", not recorded)</span></p>"
    )
    return "\n".join(parts)
