"""Tables for people, JSON for files."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from tests.evaluation.helpers import FixedScorer, make_split
from twotower.evaluation import PROTOCOL, EvalResult, describe_split, evaluate, render_slices, render_table, to_json
from twotower.evaluation.split import Split


@pytest.fixture
def results() -> tuple[Split, list[EvalResult]]:
    split = make_split(2, {0: [0], 1: [1]}, {0: [2], 1: [3]})
    good = evaluate(FixedScorer([[0, 0, 2, 1], [0, 0, 1, 2]], name="good"), split, ks=(1, 20))
    bad = evaluate(FixedScorer([[0, 0, 1, 2], [0, 0, 2, 1]], name="bad"), split, ks=(1, 20))
    return split, [good, bad]


def _text(table: object) -> str:
    console = Console(record=True, width=250)
    console.print(table)
    return console.export_text()


def test_tables(results: tuple[Split, list[EvalResult]]) -> None:
    _, (good, bad) = results
    text = _text(render_table([good, bad]))
    assert "all (2 users)" in text and "recall@20" in text and "coverage@1" in text
    good_line = next(line for line in text.splitlines() if "good" in line)
    assert "1.0000" in good_line  # recall@1
    assert "precision" not in _text(render_table([good], metrics=["recall@1", "mrr"]))
    slices = _text(render_slices([good, bad], metric="recall@1"))
    assert "warm_items" in slices and "(0 users)" in slices and "–" in slices  # no warm test likes
    with pytest.raises(ValueError, match="unknown slice"):
        render_table([good], slice="everyone")


def test_json_is_serialisable_and_complete(results: tuple[Split, list[EvalResult]]) -> None:
    split, found = results
    info = describe_split(split, 4)
    assert info["train_likes"] == 2 and info["test_likes"] == 2 and info["users_evaluated"] == 2
    report = json.loads(json.dumps(to_json(found, info), allow_nan=False))
    assert report["protocol"] == PROTOCOL
    assert report["split"]["items"] == 4
    assert set(report["models"]) == {"good", "bad"}
    good = report["models"]["good"]
    assert good["metrics"]["all"]["recall@1"] == 1.0 and good["users"]["all"] == 2
    assert good["metrics"]["warm_items"]["mrr"] is None and good["auc_method"] == "exact"
