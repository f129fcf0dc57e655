"""Embedding quality: checks per generation, the live like-rate, alerts, history and the HTML report."""

from twotower.monitor.checks import ALERTS, Alert, GenerationCheck, Thresholds, check_vectors, inhibit
from twotower.monitor.run import LiveStats, QualityReport, history, like_rate, monitor_version, post_webhook

__all__ = [
    "ALERTS",
    "Alert",
    "GenerationCheck",
    "LiveStats",
    "QualityReport",
    "Thresholds",
    "check_vectors",
    "history",
    "inhibit",
    "like_rate",
    "monitor_version",
    "post_webhook",
]
