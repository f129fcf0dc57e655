"""ONNX export and parity validation against PyTorch, on a model trained on real database rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import psycopg
import pytest
from onnx import numpy_helper
from psycopg.conninfo import make_conninfo

from tests.support.db import create_db, drop_db
from twotower.db import Database
from twotower.export import export_model, validate_model
from twotower.registry.store import sha256
from twotower.settings import Settings
from twotower.synth import SynthConfig, generate
from twotower.train.run import TrainOptions, train


@pytest.fixture(scope="module")
def trained(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    name = create_db(pg_server, template_db)
    url = make_conninfo(pg_server, dbname=name)
    with psycopg.connect(url) as conn, conn.transaction():
        generate(conn, SynthConfig(videos=800, users=200, decisions=10_000, seed=3, tastes=6))
    out = tmp_path_factory.mktemp("models")
    with Database.open(Settings(database_url=url, data_dir=out), migrate=False) as db:
        result = train(db, TrainOptions(epochs=1, batch_size=512, output_dir=out, refit=False, version="x1"))
        export_model(result.directory)
    yield url, result.directory
    drop_db(pg_server, name)


def _db(url: str, tmp_path: Path) -> Database:
    return Database.open(Settings(database_url=url, data_dir=tmp_path), migrate=False)


def test_export_writes_towers_and_manifest(trained: tuple[str, Path]) -> None:
    _, model_dir = trained
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["version"] == "x1" and manifest["embedding_dim"] == 64
    assert manifest["tower_config"]["embedding_dim"] == 64 and manifest["training_window"]
    for name, digest in manifest["checksums"].items():
        assert sha256(model_dir / name) == digest
    for name in ("item_tower.onnx", "user_tower.onnx"):
        onnx.checker.check_model(str(model_dir / name))


def test_onnx_matches_pytorch(trained: tuple[str, Path], tmp_path: Path) -> None:
    url, model_dir = trained
    with _db(url, tmp_path) as db:
        report = validate_model(db, model_dir)
    assert report.ok, report
    assert {c.name for c in report.checks} >= {"item tower", "user tower", "user tower, empty history"}
    assert all(c.max_abs_diff <= 1e-4 and c.min_cosine >= 0.9999 for c in report.checks)
    assert report.top20_identical == 1.0 and report.users == 200


def test_tampered_tower_fails_validation(trained: tuple[str, Path], tmp_path: Path) -> None:
    url, model_dir = trained
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    model = onnx.load(str(broken / "user_tower.onnx"))
    weights = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(weights).copy()
    values += 0.05
    weights.CopyFrom(numpy_helper.from_array(values, weights.name))
    onnx.save(model, str(broken / "user_tower.onnx"))
    result = subprocess.run(
        [sys.executable, "-m", "twotower", "validate", str(broken)],
        env={"DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "do not match PyTorch" in result.stderr and "FAIL" in result.stdout


def test_cli_validate_ok_and_missing_export(trained: tuple[str, Path], tmp_path: Path) -> None:
    url, model_dir = trained
    env = {"DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "twotower", "validate", str(model_dir)], env=env,
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "100.0%" in ok.stdout
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "user_tower.onnx").unlink()
    missing = subprocess.run([sys.executable, "-m", "twotower", "validate", str(bare)], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 65 and "twotower export" in missing.stderr


def test_javascript_towers_agree_with_python(trained: tuple[str, Path], tmp_path: Path, node_modules: Path) -> None:
    url, model_dir = trained
    with _db(url, tmp_path) as db:
        report = validate_model(db, model_dir, js="require", node_modules=node_modules)
    js = [c for c in report.checks if "JavaScript" in c.name]
    assert {c.name for c in js} == {"item tower (JavaScript)", "user tower (JavaScript)"}
    assert all(c.rows > 0 and c.max_abs_diff <= 1e-4 and c.min_cosine >= 0.9999 for c in js), js
    assert report.ok and report.js_runtime and report.js_runtime.startswith("onnxruntime-node")


def test_javascript_check_skipped_with_reason(trained: tuple[str, Path], tmp_path: Path) -> None:
    url, model_dir = trained
    env = {"DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin",
           "TWOTOWER_NODE_MODULES": str(tmp_path / "nowhere")}  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "twotower", "validate", str(model_dir)], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "JavaScript check skipped" in run.stdout
    required = subprocess.run([sys.executable, "-m", "twotower", "validate", str(model_dir), "--js", "require"],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert required.returncode == 65 and "JavaScript check cannot run" in required.stderr


def test_every_user_tower_variant_exports_with_parity(tmp_path: Path) -> None:
    """Separate history IDs and learned history pooling export as plain ONNX ops, for any history length."""
    import onnxruntime as ort
    import torch

    from twotower.export.onnx_export import _examples, _export, _UserTower
    from twotower.inference.towers import USER_INPUTS
    from twotower.model import TowerConfig, TwoTowerModel

    cfg = TowerConfig(n_items=300, n_tags=40, n_performers=20, n_categorical=(5, 5, 5, 5), max_likes=8, max_nopes=4,
                      history_ids=True, history_pooling="learned", history_dropout=0.3)  # fmt: skip
    torch.manual_seed(0)
    model = TwoTowerModel(cfg).eval()
    with torch.no_grad():
        model.like_score.weight.normal_()
        model.recency_slope.fill_(0.7)
    model.encoder.fused = False
    _, user_args = _examples(model)
    likes, nopes = torch.export.Dim("likes", min=1, max=4096), torch.export.Dim("nopes", min=1, max=4096)
    dyn: dict[str, dict[int, object]] = {"stats": {0: torch.export.Dim("batch", min=1, max=1 << 20)}}
    for name in USER_INPUTS[:-1]:
        dyn[name] = {0: dyn["stats"][0], 1: likes if name.startswith("like_") else nopes}
    _export(_UserTower(model), user_args, USER_INPUTS, "user_embedding", tmp_path / "user.onnx", dyn)  # type: ignore[arg-type]
    session = ort.InferenceSession(str(tmp_path / "user.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)

    def hist(b: int, n: int) -> list[torch.Tensor]:
        return [torch.randint(0, 300, (b, n), generator=g), torch.randint(0, 40, (b, n, cfg.max_tags), generator=g),
                torch.randint(0, 20, (b, n, cfg.max_performers), generator=g),
                torch.randint(0, 5, (b, n, 4), generator=g), torch.randn(b, n, cfg.numeric_width, generator=g),
                (torch.rand(b, n, generator=g) < 0.8).float()]  # fmt: skip

    for b, h in ((3, 8), (2, 60)):  # the configured history length, and a longer one than training saw
        args = (*hist(b, h), *hist(b, 4), torch.rand(b, cfg.stats_width, generator=g))
        with torch.no_grad():
            ref = model.user_tower(*args).numpy()
        got = session.run(None, {n: a.numpy() for n, a in zip(USER_INPUTS, args, strict=True)})[0]
        assert np.abs(ref - got).max() <= 1e-4
