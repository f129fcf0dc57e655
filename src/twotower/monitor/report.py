"""The HTML quality report of one generation: one self-contained file (inline CSS, PNGs as data URIs, no external
URL, no JS library) that can be mailed, archived as a CI artefact, or opened from disk.

matplotlib is imported inside :func:`render_report` only, and drawn with the Agg canvas directly (no pyplot, no
global backend switch), so ``import twotower.monitor`` stays light and serving never imports it.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from twotower.errors import InputError
from twotower.monitor.report_experiment import experiment_section, latest_experiment
from twotower.monitor.run import QualityReport, history

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from twotower.monitor.experiment import CheckResult

__all__ = ["render_report"]

_DPI = 90
_SIZE = (5.0, 3.0)
_SCATTER_POINTS = 3000  # the projection sample is ≤ 5000 rows; fewer points keep the PNG small and as readable
_SERIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("mean pairwise cosine", "mean_pairwise_cosine", ("mean_pairwise_cosine",)),
    ("effective rank", "effective_rank", ("effective_rank",)),
    ("missing share", "missing_share", ("missing_share",)),
    ("like-rate", "like_rate", ("live", "like_rate")),
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 62rem;
       padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .25rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .25rem; }
.status { display: inline-block; padding: .1rem .6rem; border-radius: .3rem; color: #fff; font-size: 1rem;
          vertical-align: middle; }
.status.passed { background: #1a7f37; }
.status.alert { background: #cf222e; }
.status.neutral { background: #59636e; }
.meta { color: #59636e; margin-top: 0; }
.alerts { border: 2px solid #cf222e; background: #ffebe9; border-radius: .4rem; padding: .5rem 1rem; }
.alerts.none { border-color: #1a7f37; background: #dafbe1; }
.alerts li { margin: .4rem 0; }
.alerts .name { font-weight: 700; font-family: ui-monospace, monospace; }
.alerts .numbers { color: #59636e; font-size: .9rem; }
table { border-collapse: collapse; font-size: .92rem; }
th, td { text-align: left; padding: .2rem .8rem .2rem 0; border-bottom: 1px solid #eaeef2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, monospace; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; }
figcaption { color: #59636e; font-size: .9rem; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; padding: .5rem 1rem; border-radius: .4rem; }
.note { color: #59636e; font-style: italic; }
"""

# on load: how many images decoded, as data-images="<loaded>/<total>" on <body>, and a visible warning if not all
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, loaded = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { loaded++; }
  }
  document.body.dataset.images = loaded + "/" + imgs.length;
  if (loaded < imgs.length) {
    var w = document.getElementById("image-warning");
    w.textContent = (imgs.length - loaded) + " of " + imgs.length + " plots failed to load.";
    w.hidden = false;
  }
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, key: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if key.endswith(("_share", "_rate")):
            return f"{value:.3%}"
        return f"{value:.4g}"
    return str(value)


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _png(draw: Callable[[Axes], None], size: tuple[float, float] = _SIZE) -> str:
    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig.add_subplot())
    return _encode(fig)


def _encode(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="{uri}" alt="{_e(alt)}" width="{int(_SIZE[0] * _DPI)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _norms_plot(norms: npt.NDArray[np.float32]) -> str:
    values = norms.astype(np.float64)
    # at least 1 ± 0.01 wide: float noise around 1 is one bar, not an axis of 0.99999994, 0.99999995, ...
    lo, hi = min(float(values.min()), 0.99), max(float(values.max()), 1.01)

    def draw(ax: Axes) -> None:
        ax.hist(values, bins=np.linspace(lo, hi, 51).tolist(), color="#0969da")
        ax.axvline(1.0, color="#cf222e", linewidth=1, linestyle="--")
        ax.set_yscale("log")  # a few off-norm rows stay visible next to 100k good ones
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.set_xlabel("L2 norm")
        ax.set_ylabel("rows (log)")
        ax.set_title("norms", fontsize=10)

    return _img(_png(draw), "histogram of the embedding norms", f"L2 norms of {len(norms):,} rows (unit vectors: 1)")


def _overlap_plot(overlaps: npt.NDArray[np.float32], k: int | None) -> str:
    def draw(ax: Axes) -> None:
        # overlap@K takes the values 0, 1/K, ..., 1: one bar each
        bins = (np.linspace(-0.5 / k, 1 + 0.5 / k, k + 2) if k else np.linspace(0, 1, 21)).tolist()
        ax.hist(overlaps.astype(np.float64), bins=bins, color="#8250df")
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel(f"neighbour overlap@{k}" if k else "neighbour overlap")
        ax.set_ylabel("queries")
        ax.set_title("neighbourhoods vs the previous generation", fontsize=10)

    mean = float(overlaps.mean())
    return _img(_png(draw), "histogram of the neighbour overlap with the previous generation",
                f"{len(overlaps):,} queries, mean overlap {mean:.3f}")  # fmt: skip


def _projection_plot(projection: npt.NDArray[np.float32]) -> str:
    points = projection
    if len(points) > _SCATTER_POINTS:
        rows = np.random.default_rng(0).choice(len(points), size=_SCATTER_POINTS, replace=False)
        points = points[np.sort(rows)]

    def draw(ax: Axes) -> None:
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.4, color="#0969da", linewidths=0, rasterized=True)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title("2-D PCA projection of a sample", fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")

    caption = f"{len(points):,} unit vectors (of a {len(projection):,}-row sample), first two principal axes"
    return _img(_png(draw), "2-D PCA projection of a sample of the embeddings", caption)


def _dig(metrics: Any, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(metrics, Mapping):
            return None
        metrics = metrics.get(key)
    if isinstance(metrics, bool) or not isinstance(metrics, int | float) or not math.isfinite(metrics):
        return None
    return float(metrics)


def _timeline(report: QualityReport, past: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``past`` plus this report, unless it is already among them (it is once recorded)."""
    points = [p for p in past if isinstance(p, Mapping)]
    ids = {p.get("id") for p in points}
    if report.report_id is None or report.report_id not in ids:
        current = report.as_json()
        current["metrics"] = {**report.check.metrics, "live": report.live.as_json()}
        current["created_at"] = report.created_at
        current["id"] = report.report_id
        points.append(current)
    return points


def _history_plot(points: Sequence[Mapping[str, Any]]) -> str:
    times = [p.get("created_at") for p in points]
    use_dates = all(isinstance(t, datetime) for t in times)
    xs: list[Any] = times if use_dates else list(range(len(points)))
    fig = Figure(figsize=(_SIZE[0] * 1.6, _SIZE[1] * 1.4), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (title, key, path) in zip(axes, _SERIES, strict=True):
        values = [_dig(p.get("metrics"), path) for p in points]
        x = [xv for xv, v in zip(xs, values, strict=True) if v is not None]
        y = [v for v in values if v is not None]
        failed = [xv for xv, v, p in zip(xs, values, points, strict=True) if v is not None and p.get("passed") is False]
        failed_y = [v for v, p in zip(values, points, strict=True) if v is not None and p.get("passed") is False]
        ax.plot(x, y, marker="o", markersize=3, linewidth=1, color="#0969da")
        if failed:
            ax.plot(failed, failed_y, linestyle="none", marker="o", markersize=5, color="#cf222e")
        if not y:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="#59636e")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if key.endswith(("_share", "_rate")):
            ax.yaxis.set_major_formatter(_percent())
    if use_dates:
        fig.autofmt_xdate()
    else:
        for ax in axes[2:]:
            ax.set_xlabel("report", fontsize=8)
    return _img(_encode(fig), "quality metrics over time", f"{len(points)} reports, oldest first (red: with alerts)")


def _percent() -> Any:
    return PercentFormatter(xmax=1.0, decimals=1)


def _neighbours(metrics: Mapping[str, Any]) -> int | None:
    drift = metrics.get("drift")
    if isinstance(drift, Mapping):
        for key in drift:
            match = re.fullmatch(r"neighbour_overlap_at_(\d+)", str(key))
            if match and int(match.group(1)) > 0:
                return int(match.group(1))
    return None


def render_report(report: QualityReport, past: list[dict[str, Any]], experiment: CheckResult | None = None) -> str:
    """One self-contained HTML document: status, alerts, metrics, and plots of the norms, the neighbour overlap
    with the previous generation, a 2-D projection, and the metrics over time (``past``: :func:`history`); and the
    running or last online experiment when there is one (``experiment``: :func:`latest_experiment`)."""
    check = report.check
    metrics = check.metrics
    status = "passed" if report.passed else "ALERT"
    title = f"Embedding quality: {report.version} — {status}"

    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>Embedding quality: <code>{_e(report.version)}</code> "
        f'<span class="status {"passed" if report.passed else "alert"}">{_e(status)}</span></h1>',
        f'<p class="meta">compared with: {_e(report.previous) if report.previous else "no previous generation"}'
        f" · checked {_e(report.created_at.isoformat(timespec='seconds'))} in {report.seconds:.1f} s"
        + (f" · report #{_e(report.report_id)}" if report.report_id is not None else "")
        + "</p>",
        '<p id="image-warning" class="warning" hidden></p>',
    ]

    if check.alerts:
        parts.append(f'<h2>Alerts ({len(check.alerts)})</h2><div class="alerts"><ul>')
        for a in check.alerts:
            parts.append(
                f'<li><span class="name">{_e(a.name)}</span>: {_e(a.message)}<br><span class="numbers">value '
                f"{_e(_number(a.value))} vs threshold {_e(_number(a.threshold))}</span></li>"
            )
        parts.append("</ul></div>")
    else:
        parts.append('<h2>Alerts</h2><div class="alerts none"><p>No alerts: every check passed.</p></div>')

    parts.append("<h2>Metrics</h2><table><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>")
    for name, value in _flatten(metrics):
        parts.append(f'<tr><td>{_e(name)}</td><td class="num">{_e(_number(value, name))}</td></tr>')
    for name, value in report.live.as_json().items():
        parts.append(f'<tr><td>live.{_e(name)}</td><td class="num">{_e(_number(value, name))}</td></tr>')
    parts.append("</tbody></table>")

    parts.append('<h2>Distributions</h2><div class="plots">')
    if len(check.norms):
        parts.append(_norms_plot(check.norms))
    else:
        parts.append('<p class="note">No finite embeddings: no norms to plot.</p>')
    if len(check.overlaps):
        parts.append(_overlap_plot(check.overlaps, _neighbours(metrics)))
    else:
        parts.append('<p class="note">Neighbour overlap: no previous generation to compare with.</p>')
    if len(check.projection):
        parts.append(_projection_plot(check.projection))
    else:
        parts.append('<p class="note">No projection: fewer than two finite embeddings.</p>')
    parts.append("</div>")

    parts.append("<h2>Over time</h2>")
    points = _timeline(report, past)
    if len(points) >= 2:
        parts.append(_history_plot(points))
    else:
        parts.append(f'<p class="note">Only {len(points)} report so far: the trend needs at least two.</p>')

    if experiment is not None:
        parts.append(experiment_section(experiment))
    parts.append(f"<script>{_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(db: Any, report: QualityReport, path: Path) -> None:
    """Render ``report`` with its version's history and write it to ``path`` (InputError if it cannot be written)."""
    with db.direct() as conn:
        past = history(conn, report.version)
        experiment = latest_experiment(conn, db.settings)
    try:
        path.write_text(render_report(report, past, experiment), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the report to {path}: {exc.strerror}") from None
