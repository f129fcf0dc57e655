"""The quality checks of one embedding generation, on arrays: what is wrong, by name, and the numbers behind it.

Every check turns into at most one named alert:

    nonfinite            rows with NaN or Inf
    dimension_mismatch   rows whose dimension is not the model's
    norm                 the towers emit unit vectors: rows whose L2 norm is off
    collapse             everything points one way: high mean pairwise cosine, or a very low effective rank
    duplicates           identical vectors for different videos
    coverage             active videos without an embedding
    stale                embeddings older than their video's last change
    drift                neighbourhoods changed beyond recognition vs the previous generation (overlap@K),
                         or the centroid moved far (after aligning the two generations' coordinates)
    like_rate            the live like-rate of served recommendations fell below the floor

Alerts that follow from another are inhibited, as an alert manager would: a collapse makes duplicates and drift
consequences, not causes. Rows of the wrong dimension or with NaN/Inf are left out of the other checks, so those
stay meaningful (and silent) when only some rows are broken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from twotower.settings import Settings

__all__ = ["ALERTS", "Alert", "GenerationCheck", "Thresholds", "check_vectors", "inhibit"]

FloatArray = npt.NDArray[np.float32]
ALERTS = ("nonfinite", "dimension_mismatch", "norm", "collapse", "duplicates", "coverage", "stale", "drift",
          "like_rate")  # fmt: skip
_INHIBITS = {
    # everything points one way: identical-looking vectors and scrambled neighbourhoods follow from it
    "collapse": {"duplicates", "drift"},
}


@dataclass(frozen=True)
class Thresholds:
    max_nonfinite: float = 0.0  # share of rows
    norm_tolerance: float = 0.01  # |norm - 1|
    max_bad_norm: float = 0.001  # share of rows outside the tolerance
    max_mean_cosine: float = 0.98
    min_effective_rank: float = 0.05  # share of the dimension
    max_duplicates: float = 0.001
    max_missing: float = 0.01
    max_stale: float = 0.05
    min_neighbour_overlap: float = 0.05
    max_centroid_shift: float = 1.0
    neighbours: int = 10
    min_like_rate: float = 0.0
    min_like_samples: int = 200

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            max_nonfinite=settings.monitor_max_nonfinite,
            norm_tolerance=settings.monitor_norm_tolerance,
            max_mean_cosine=settings.monitor_max_mean_cosine,
            min_effective_rank=settings.monitor_min_effective_rank,
            max_duplicates=settings.monitor_max_duplicates,
            max_missing=settings.monitor_max_missing,
            max_stale=settings.monitor_max_stale,
            min_neighbour_overlap=settings.monitor_min_neighbour_overlap,
            max_centroid_shift=settings.monitor_max_centroid_shift,
            min_like_rate=settings.monitor_min_like_rate,
            min_like_samples=settings.monitor_min_like_samples,
        )


@dataclass(frozen=True)
class Alert:
    name: str
    message: str
    value: float
    threshold: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerationCheck:
    """Metrics, alerts, and the samples the report plots."""

    metrics: dict[str, Any] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    norms: FloatArray = field(default_factory=lambda: np.zeros(0, np.float32))
    overlaps: FloatArray = field(default_factory=lambda: np.zeros(0, np.float32))  # one per drift query
    projection: FloatArray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # 2-D PCA of a sample

    @property
    def passed(self) -> bool:
        return not self.alerts

    def alert(self, name: str, message: str, value: float, threshold: float) -> None:
        self.alerts.append(Alert(name, message, float(value), float(threshold)))


def inhibit(alerts: Sequence[Alert]) -> list[Alert]:
    """Drop the alerts another one explains (see the module docstring)."""
    names = {a.name for a in alerts}
    hidden = set().union(*(_INHIBITS.get(n, set()) for n in names))
    return [a for a in alerts if a.name not in hidden]


def _effective_rank(sample: FloatArray) -> float:
    """exp(entropy of the normalised singular values): 1 for a line, the dimension for isotropic vectors."""
    if len(sample) < 2:
        return float("nan")
    s = np.linalg.svd(sample.astype(np.float64), compute_uv=False)
    p = s / s.sum() if s.sum() > 0 else s
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _duplicate_share(vectors: FloatArray, content: npt.NDArray[Any] | None = None) -> tuple[float, float]:
    """``(share of rows repeating an earlier row exactly (to 1e-6), share of them left unexplained)``.

    Videos whose content is identical (``content``: one key per row, e.g. a hash of what the item tower reads)
    get the same vector by design when the model has no ID embedding for them (cold items): those repeats are
    explained. A vector shared by videos of *different* content is not, and that is what the alert is about.
    """
    if len(vectors) < 2:
        return 0.0, 0.0
    rounded = np.ascontiguousarray(np.round(vectors, 6) + np.float32(0.0))  # + 0.0: -0.0 and 0.0 alike
    keys = rounded.view(np.dtype((np.void, rounded.dtype.itemsize * rounded.shape[1]))).ravel()
    _, group = np.unique(keys, return_inverse=True)
    repeated = 1.0 - (group.max() + 1) / len(keys)
    if content is None:
        return repeated, repeated
    # per group of identical vectors, each distinct content beyond the first is unexplained
    _, content_ids = np.unique(content, return_inverse=True)
    distinct_pairs = len(np.unique(np.stack([group.ravel(), content_ids.ravel()], axis=1), axis=0))
    return repeated, (distinct_pairs - (group.max() + 1)) / len(keys)


def _overlaps(new: FloatArray, old: FloatArray, queries: npt.NDArray[np.int64], k: int) -> FloatArray:
    """|top-k(new) ∩ top-k(old)| / k for each query row (the query itself excluded), by inner product."""
    out = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), 256):
        q = queries[start : start + 256]
        tops = []
        for table in (new, old):
            scores = table[q] @ table.T
            scores[np.arange(len(q)), q] = -np.inf
            tops.append(np.argpartition(-scores, k, axis=1)[:, :k])
        for i in range(len(q)):
            out[start + i] = len(np.intersect1d(tops[0][i], tops[1][i], assume_unique=True)) / k
    return out


def _aligned_centroid_shift(new: FloatArray, old: FloatArray, rng: np.random.Generator, sample: int = 20_000) -> float:
    """How far the centroid moved, after rotating the new generation onto the old one (orthogonal Procrustes on a
    sample): two trainings of the same model give embeddings in unrelated coordinates, so the raw shift would
    measure the arbitrary rotation, not drift."""
    rows = rng.choice(len(new), size=min(sample, len(new)), replace=False)
    a, b = new[rows].astype(np.float64), old[rows].astype(np.float64)
    # the rotation is fitted on centred rows: fitted on raw ones it would line the centroids up by construction
    u, _, vt = np.linalg.svd((a - a.mean(axis=0)).T @ (b - b.mean(axis=0)))
    rotation = u @ vt
    return float(np.linalg.norm(new.mean(axis=0, dtype=np.float64) @ rotation - old.mean(axis=0, dtype=np.float64)))


def check_vectors(
    vectors: FloatArray,
    dim: int,
    thresholds: Thresholds,
    *,
    dims: dict[int, int] | None = None,
    previous: tuple[FloatArray, FloatArray] | None = None,
    content: npt.NDArray[Any] | None = None,
    sample: int = 5000,
    queries: int = 500,
    seed: int = 0,
) -> GenerationCheck:
    """Check a generation's vectors (rows of dimension ``dim``).

    ``dims``: rows per stored dimension (from the database, where rows of another dimension cannot be loaded
    into one array). ``previous``: ``(new, old)`` rows of the videos both generations embed, aligned, for drift.
    ``content``: a key per row of what the item tower reads (equal keys: identical videos to the model).
    """
    t = thresholds
    rng = np.random.default_rng(seed)
    check = GenerationCheck()
    m = check.metrics
    n = len(vectors)
    m["rows"] = n
    m["dim"] = dim
    dims = dims if dims is not None else ({int(vectors.shape[1]): n} if n else {})
    wrong = sum(c for d, c in dims.items() if d != dim)
    m["rows_by_dim"] = {str(d): c for d, c in sorted(dims.items())}
    if wrong or (n and vectors.shape[1] != dim):
        total = sum(dims.values()) or n
        check.alert("dimension_mismatch", f"{wrong:,} of {total:,} embeddings are not {dim}-dimensional "
                    f"(found {', '.join(f'{d}: {c:,}' for d, c in sorted(dims.items()))})", wrong, 0)  # fmt: skip
        if n and vectors.shape[1] != dim:
            return check

    finite = np.isfinite(vectors).all(axis=1) if n else np.zeros(0, bool)
    m["nonfinite_share"] = float(1 - finite.mean()) if n else 0.0
    if m["nonfinite_share"] > t.max_nonfinite:
        check.alert("nonfinite", f"{int((~finite).sum()):,} embeddings ({m['nonfinite_share']:.2%}) contain NaN or "
                    "Inf", m["nonfinite_share"], t.max_nonfinite)  # fmt: skip
    good = vectors[finite]
    if len(good) == 0:
        return check

    norms = np.linalg.norm(good, axis=1).astype(np.float32)
    check.norms = norms
    m["norm"] = {
        "mean": float(norms.mean()), "std": float(norms.std()), "min": float(norms.min()),
        "p01": float(np.quantile(norms, 0.01)), "p50": float(np.median(norms)),
        "p99": float(np.quantile(norms, 0.99)), "max": float(norms.max()),
    }  # fmt: skip
    bad_norm = float((np.abs(norms - 1.0) > t.norm_tolerance).mean())
    m["bad_norm_share"] = bad_norm
    if bad_norm > t.max_bad_norm:
        check.alert("norm", f"{bad_norm:.2%} of embeddings have a norm outside 1 ± {t.norm_tolerance:g} (the towers "
                    f"emit unit vectors; mean norm {norms.mean():.4f})", bad_norm, t.max_bad_norm)  # fmt: skip

    unit = good / np.maximum(norms, 1e-12)[:, None]
    total = unit.sum(axis=0, dtype=np.float64)
    k = len(unit)
    m["mean_pairwise_cosine"] = float((total @ total - k) / (k * (k - 1))) if k > 1 else 0.0
    rows = rng.choice(k, size=min(sample, k), replace=False)
    m["effective_rank"] = _effective_rank(unit[rows])
    min_rank = max(1.0, t.min_effective_rank * dim)
    if m["mean_pairwise_cosine"] > t.max_mean_cosine or m["effective_rank"] < min_rank:
        check.alert("collapse", f"embeddings collapsed: mean pairwise cosine {m['mean_pairwise_cosine']:.3f} "
                    f"(max {t.max_mean_cosine:g}), effective rank {m['effective_rank']:.1f} of {dim} "
                    f"(min {min_rank:.1f})", m["mean_pairwise_cosine"], t.max_mean_cosine)  # fmt: skip
    centred = unit[rows] - unit[rows].mean(axis=0)
    if len(rows) >= 2:
        _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
        check.projection = (centred @ vt[:2].T.astype(np.float32)).astype(np.float32)

    m["duplicate_share"], unexplained = _duplicate_share(good, content[finite] if content is not None else None)
    m["unexplained_duplicate_share"] = unexplained
    if unexplained > t.max_duplicates:
        check.alert("duplicates", f"{unexplained:.2%} of embeddings repeat the vector of a video with different "
                    f"content ({m['duplicate_share']:.2%} repeat one at all)", unexplained,
                    t.max_duplicates)  # fmt: skip

    pairs = None
    if previous is not None and previous[0].shape[1:] == previous[1].shape[1:] == (dim,):
        ok = np.isfinite(previous[0]).all(axis=1) & np.isfinite(previous[1]).all(axis=1)
        pairs = (previous[0][ok], previous[1][ok])
    if pairs is not None and len(pairs[0]) > t.neighbours + 1:
        new, old = pairs
        q = rng.choice(len(new), size=min(queries, len(new)), replace=False).astype(np.int64)
        check.overlaps = _overlaps(new, old, q, t.neighbours)
        overlap = float(check.overlaps.mean())
        shift = _aligned_centroid_shift(new, old, rng)
        m["drift"] = {"compared": len(new), f"neighbour_overlap_at_{t.neighbours}": overlap, "centroid_shift": shift}
        if overlap < t.min_neighbour_overlap:
            check.alert("drift", f"neighbour overlap@{t.neighbours} with the previous generation is {overlap:.3f} "
                        f"(min {t.min_neighbour_overlap:g}): the neighbourhoods changed beyond recognition",
                        overlap, t.min_neighbour_overlap)  # fmt: skip
        elif shift > t.max_centroid_shift:
            check.alert("drift", f"the centroid moved {shift:.3f} from the previous generation's (max "
                        f"{t.max_centroid_shift:g})", shift, t.max_centroid_shift)  # fmt: skip
    check.metrics = _finite(m)
    return check


def _finite(value: Any) -> Any:
    """The metrics as JSON can hold them: NaN and Inf (at any depth) become None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
