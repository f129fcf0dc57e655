"""Evaluation: ranking metrics on the temporal split, per slice, and the baselines every model must beat."""

from twotower.evaluation.metrics import SLICES, EvalResult, evaluate, metric_names
from twotower.evaluation.ranking import top_k
from twotower.evaluation.report import PROTOCOL, describe_split, render_slices, render_table, to_json
from twotower.evaluation.scorers import (
    EASEScorer,
    LinearScorer,
    PopularityScorer,
    Scorer,
    served_linear,
    tag_matrix,
    train_likes_matrix,
)

__all__ = [
    "PROTOCOL",
    "SLICES",
    "EASEScorer",
    "EvalResult",
    "LinearScorer",
    "PopularityScorer",
    "Scorer",
    "describe_split",
    "evaluate",
    "metric_names",
    "render_slices",
    "render_table",
    "served_linear",
    "tag_matrix",
    "to_json",
    "top_k",
    "train_likes_matrix",
]
