"""``twotower validate``: PyTorch vs ONNX Runtime on real rows from the database and on edge cases."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from twotower.db import Database
from twotower.errors import InputError
from twotower.export.onnx_export import ITEM_INPUTS, ITEM_ONNX, USER_INPUTS, USER_ONNX
from twotower.features.catalog import load_catalog
from twotower.features.history import HistoryConfig
from twotower.features.pipeline import FeaturePipeline
from twotower.features.vocab import OOV
from twotower.model.weights import load_model
from twotower.train.data import load_decision_log
from twotower.train.examples import Histories, UserBatch
from twotower.train.tables import FeatureTables

__all__ = ["TowerCheck", "ValidationReport", "validate_model"]

MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.9999


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
    top20_identical: float = 0.0  # share of sampled users whose top-20 lists are the same
    users: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and self.top20_identical == 1.0


def _compare(name: str, ref: npt.NDArray[np.float32], got: npt.NDArray[np.float32]) -> TowerCheck:
    diff = float(np.abs(ref - got).max()) if ref.size else 0.0
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = (ref * got).sum(axis=1) / np.where(denom > 0, denom, 1.0)
    return TowerCheck(name, int(ref.shape[0]), diff, float(cosine.min()) if cosine.size else 1.0)


def _session(path: Path) -> object:
    import onnxruntime as ort

    if not path.is_file():
        raise InputError(f"{path}: missing (run `twotower export {path.parent}` first)")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InputError(f"{path}: ONNX Runtime cannot load it ({exc})") from None


def validate_model(
    db: Database, model_dir: Path, *, max_items: int = 2000, max_users: int = 300, seed: int = 0
) -> ValidationReport:
    model = load_model(model_dir)
    cfg = model.cfg
    pipeline = FeaturePipeline.load(model_dir / "features.json")
    item_sess, user_sess = _session(model_dir / ITEM_ONNX), _session(model_dir / USER_ONNX)
    with db.direct() as conn:
        catalog = load_catalog(conn)
        log = load_decision_log(conn, catalog.ids)
    if len(catalog) == 0:
        raise InputError("the catalog is empty: nothing to validate on")
    rng = np.random.default_rng(seed)
    features = pipeline.transform(catalog)
    tables = FeatureTables(features, torch.device("cpu"), cfg.history_tags, cfg.history_performers)
    rows = np.sort(rng.choice(len(catalog), min(max_items, len(catalog)), replace=False))
    item_in = tables.items(torch.from_numpy(rows))
    # edge case: every tag and performer unknown to the vocabulary
    oov = (item_in[0], torch.where(item_in[1] > 0, OOV, 0), torch.where(item_in[2] > 0, OOV, 0), *item_in[3:])

    report = ValidationReport()
    with torch.no_grad():
        items_ref = []
        items_got = []
        for name, inputs in (("item tower", item_in), ("item tower, unknown tags", oov)):
            ref = model.item_tower(*inputs).numpy()
            got = item_sess.run(None, dict(zip(ITEM_INPUTS, (t.numpy() for t in inputs), strict=True)))[0]  # type: ignore[attr-defined]
            report.checks.append(_compare(name, ref, got))
            items_ref.append(ref)
            items_got.append(got)

        hist = Histories(log, np.ones(len(log), dtype=bool), len(catalog), HistoryConfig(cfg.max_likes, cfg.max_nopes))
        users = np.sort(rng.choice(log.n_users, min(max_users, log.n_users), replace=False)).astype(np.int64)
        batches: list[tuple[str, UserBatch]] = []
        if users.size:
            batches.append(("user tower", hist.batch(users)))
        empty = UserBatch(
            np.full((2, cfg.max_likes), len(catalog)), np.zeros((2, cfg.max_likes), np.float32),
            np.full((2, cfg.max_nopes), len(catalog)), np.zeros((2, cfg.max_nopes), np.float32),
            np.zeros((2, cfg.stats_width), np.float32),
        )  # fmt: skip
        batches.append(("user tower, empty history", empty))
        full = np.sort(rng.integers(0, len(catalog), (4, cfg.max_likes)))
        long = UserBatch(
            full, np.ones_like(full, np.float32), full[:, : cfg.max_nopes], np.ones((4, cfg.max_nopes), np.float32),
            np.ones((4, cfg.stats_width), np.float32),
        )  # fmt: skip
        batches.append(("user tower, full history", long))
        for name, batch in batches:
            user_in = tables.user_inputs(batch, full_width=True)
            ref = model.user_tower(*user_in).numpy()
            got = user_sess.run(None, dict(zip(USER_INPUTS, (t.numpy() for t in user_in), strict=True)))[0]  # type: ignore[attr-defined]
            report.checks.append(_compare(name, ref, got))
            if name == "user tower":
                k = min(20, rows.size)
                top_ref = np.argsort(-(ref @ items_ref[0].T), axis=1, kind="stable")[:, :k]
                top_got = np.argsort(-(got @ items_got[0].T), axis=1, kind="stable")[:, :k]
                report.users = int(ref.shape[0])
                report.top20_identical = float((top_ref == top_got).all(axis=1).mean())
    if not report.users:
        report.top20_identical = 1.0  # no users to rank for: nothing can disagree
    return report
