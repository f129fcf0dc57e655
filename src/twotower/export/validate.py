"""``twotower validate``: PyTorch vs ONNX Runtime on real rows from the database and on edge cases.

The ONNX side runs through ``OnnxTowers`` with numpy inputs, exactly as batch jobs and the serving API feed it,
so the check covers the feature gathering as well as the exported graphs. When Node.js and onnxruntime-node
are there, the same feeds also run in JavaScript.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import psycopg
import torch

from twotower.db import Database
from twotower.errors import InputError
from twotower.export.js_check import JsUnavailable, find_node_runtime, run_towers_in_node
from twotower.features.catalog import load_catalog
from twotower.features.decisions import load_decision_log, sample_users
from twotower.features.examples import Histories, UserBatch
from twotower.features.history import STATS_WIDTH, HistoryConfig
from twotower.features.pipeline import ItemFeatures
from twotower.features.vocab import OOV
from twotower.inference.towers import OnnxTowers
from twotower.model.weights import load_model
from twotower.train.tables import FeatureTables

__all__ = ["MAX_ABS_DIFF", "MIN_COSINE", "TowerCheck", "ValidationReport", "validate_model"]

MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.9999
JS_ROWS = 64


@dataclass
class TowerCheck:
    name: str
    rows: int
    max_abs_diff: float
    min_cosine: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_DIFF and self.min_cosine >= MIN_COSINE


@dataclass
class ValidationReport:
    checks: list[TowerCheck] = field(default_factory=list)
    top20_identical: float = 0.0  # share of sampled users whose top-20 lists are the same (up to exact ties)
    top20_exact: float = 0.0  # ... the same item for item, ties included
    users: int = 0
    js_skipped: str | None = None  # why the JavaScript check did not run
    js_runtime: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and self.top20_identical == 1.0


def _compare(name: str, ref: npt.NDArray[np.float32], got: npt.NDArray[np.float32]) -> TowerCheck:
    if ref.shape != got.shape:
        return TowerCheck(name, int(ref.shape[0]), float("inf"), -1.0)
    diff = float(np.abs(ref - got).max()) if ref.size else 0.0
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = (ref * got).sum(axis=1) / np.where(denom > 0, denom, 1.0)
    return TowerCheck(name, int(ref.shape[0]), diff, float(cosine.min()) if cosine.size else 1.0)


TIE = 1e-6  # scores closer than this are a tie: which of two tied videos comes first is arbitrary


def _top20_agreement(ref: npt.NDArray[np.float32], got: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Share of users whose top-20 lists agree (up to ties in the reference scores), and agree exactly.

    Videos with identical features (e.g. two new videos with the same tags and maker) get the same score;
    float rounding decides their order differently in each runtime, which is not a disagreement.
    """
    k = min(20, ref.shape[1])
    top_ref = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    top_got = np.argsort(-got, axis=1, kind="stable")[:, :k]
    exact = (top_ref == top_got).all(axis=1)
    ref_scores_ref = np.take_along_axis(ref, top_ref, axis=1)
    ref_scores_got = np.take_along_axis(ref, top_got, axis=1)  # the reference's scores of the ONNX list
    same = np.abs(ref_scores_ref - ref_scores_got).max(axis=1, initial=0.0) <= TIE
    return float(same.mean()), float(exact.mean())


def _unknown_tags(features: ItemFeatures) -> ItemFeatures:
    """Every tag and performer replaced by the out-of-vocabulary id (videos from after training)."""
    return ItemFeatures(
        features.item_id, np.where(features.tags > 0, OOV, 0), np.where(features.performers > 0, OOV, 0),
        features.categorical, features.numeric,
    )  # fmt: skip


def _sample_videos(conn: psycopg.Connection[Any], n: int, seed: int) -> list[uuid.UUID]:
    """``n`` videos at random (the same for a seed), by one pass over the ids."""
    rows = conn.execute(
        "SELECT id FROM videos ORDER BY md5(id::text || %s), id LIMIT %s", (str(seed), max(n, 0))
    ).fetchall()
    return [r[0] for r in rows]


def _edge_batches(
    cfg_likes: int, cfg_nopes: int, pad: int, n_items: int, rng: np.random.Generator
) -> list[tuple[str, UserBatch]]:
    empty = UserBatch(
        np.full((2, cfg_likes), pad), np.zeros((2, cfg_likes), np.float32),
        np.full((2, cfg_nopes), pad), np.zeros((2, cfg_nopes), np.float32),
        np.zeros((2, STATS_WIDTH), np.float32),
    )  # fmt: skip
    full = rng.integers(0, n_items, (4, cfg_likes))
    long = UserBatch(
        full, np.ones_like(full, np.float32), full[:, :cfg_nopes], np.ones((4, cfg_nopes), np.float32),
        np.ones((4, STATS_WIDTH), np.float32),
    )  # fmt: skip
    return [("user tower, empty history", empty), ("user tower, full history", long)]


def validate_model(
    db: Database,
    model_dir: Path,
    *,
    max_items: int = 2000,
    max_users: int = 300,
    seed: int = 0,
    js: Literal["auto", "require", "skip"] = "auto",
    node_modules: Path | None = None,
) -> ValidationReport:
    model = load_model(model_dir)
    cfg = model.cfg
    if not (model_dir / "item_tower.onnx").is_file() or not (model_dir / "user_tower.onnx").is_file():
        raise InputError(f"{model_dir}: no ONNX towers (run `twotower export {model_dir}` first)")
    towers = OnnxTowers(model_dir, verify=False)  # parity is checked here; checksums at upload and load
    # what the checks read, not the whole database: a random sample of videos, a run of users (index probes),
    # their decisions and the videos those name. At 1M videos and 10M decisions, reading everything took
    # 211 s of a deploy (bench/scale.py, issue 31).
    with db.direct() as conn:
        sampled = _sample_videos(conn, max_items, seed)
        checked = sample_users(conn, max_users, seed)
        decided = conn.execute(
            "SELECT DISTINCT video_id FROM user_video_decisions WHERE user_id = ANY(%s)", [checked]
        ).fetchall()
        catalog = load_catalog(conn, [*sampled, *(r[0] for r in decided)])
        log = load_decision_log(conn, catalog.ids, users=checked)
    if len(catalog) == 0:
        raise InputError("the catalog is empty: nothing to validate on")
    rng = np.random.default_rng(seed)
    features = towers.pipeline.transform(catalog)
    table = features.with_padding_row()
    tables = FeatureTables(features, torch.device("cpu"), cfg.history_tags, cfg.history_performers)
    at = {video: i for i, video in enumerate(catalog.ids)}  # a sampled video deleted meanwhile is not there
    rows = np.array([at[v] for v in sampled if v in at], dtype=np.int64)

    report = ValidationReport()
    with torch.no_grad():
        sample = features.take(rows)
        item_ref = model.item_tower(*tables.items(torch.from_numpy(rows))).numpy()
        item_got = towers.embed_items(sample)
        report.checks.append(_compare("item tower", item_ref, item_got))
        oov = _unknown_tags(sample)
        oov_ref = model.item_tower(*(torch.from_numpy(a) for a in towers.item_inputs(oov).values())).numpy()
        report.checks.append(_compare("item tower, unknown tags", oov_ref, towers.embed_items(oov)))

        hist = Histories(log, np.ones(len(log), dtype=bool), len(catalog), HistoryConfig(cfg.max_likes, cfg.max_nopes))
        users = np.sort(rng.choice(log.n_users, min(max_users, log.n_users), replace=False)).astype(np.int64)
        batches: list[tuple[str, UserBatch]] = [("user tower", hist.batch(users))] if users.size else []
        batches += _edge_batches(cfg.max_likes, cfg.max_nopes, len(catalog), len(catalog), rng)
        user_refs: dict[str, npt.NDArray[np.float32]] = {}
        for name, batch in batches:
            ref = model.user_tower(*tables.user_inputs(batch)).numpy()
            got = towers.embed_users(table, batch)
            report.checks.append(_compare(name, ref, got))
            user_refs[name] = ref
            if name == "user tower":
                report.users = int(ref.shape[0])
                report.top20_identical, report.top20_exact = _top20_agreement(ref @ item_ref.T, got @ item_got.T)
    if not report.users:
        report.top20_identical = report.top20_exact = 1.0  # no users to rank for: nothing can disagree

    if js != "skip":
        try:
            runtime = find_node_runtime(node_modules)
        except JsUnavailable as exc:
            if js == "require":
                raise InputError(f"the JavaScript check cannot run: {exc}") from None
            report.js_skipped = str(exc)
        else:
            js_items = sample.take(np.arange(min(JS_ROWS, len(sample))))
            name, batch = batches[0]
            head = batch.slice(0, JS_ROWS)
            feeds = {"item": towers.item_inputs(js_items), "user": towers.user_inputs(table, head)}
            outputs = run_towers_in_node(runtime, model_dir, feeds)
            report.js_runtime = f"onnxruntime-node {runtime.version}"
            report.checks.append(_compare("item tower (JavaScript)", item_ref[: len(js_items)], outputs["item"]))
            report.checks.append(_compare(f"{name} (JavaScript)", user_refs[name][: len(head)], outputs["user"]))
    return report
