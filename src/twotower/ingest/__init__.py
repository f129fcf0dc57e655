"""Getting data in: file importers (JSONL catalog, CSV decisions, MovieLens) and the bulk loader they share."""

from twotower.ingest.loader import DecisionLoadResult, VideoLoadResult, load_decisions, load_videos
from twotower.ingest.records import DecisionRecord, Problems, RowProblem, VideoRecord, user_uuid

__all__ = [
    "DecisionLoadResult",
    "DecisionRecord",
    "Problems",
    "RowProblem",
    "VideoLoadResult",
    "VideoRecord",
    "load_decisions",
    "load_videos",
    "user_uuid",
]
