"""The TypeScript ONNX executor of the Edge Functions (supabase/functions/_shared/onnx.ts) against onnxruntime on
the exported towers (untrained, small vocabularies): the user tower on histories of several lengths (one item, a
few, full, all masked) and batches, the item tower on batches; single operators on the cases the towers do not
reach (broadcast and 1-D MatMul, Split's forms, LayerNormalization's optional outputs); and a clear error on an
operator it lacks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from tests.edge.conftest import deno
from twotower.export.onnx_export import export_model
from twotower.model.config import TowerConfig
from twotower.model.towers import TwoTowerModel
from twotower.model.weights import save_model

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "supabase" / "functions"
CLI = FUNCTIONS / "tests" / "onnx_cli.ts"
TOLERANCE = 1e-5
VOCAB = {"n_items": 3000, "n_tags": 300, "n_performers": 500, "n_categorical": (40, 120, 400, 20)}
# the defaults (learned pooling, no history IDs), and the other history options
CONFIGS = {
    "default": {},
    "history_ids_mean": {"history_ids": True, "history_pooling": "mean"},
    # the self-attention user encoder (MatMul, Transpose, Softmax, LayerNormalization, Split)
    "attention": {"user_encoder": "attention"},
    "attention_2_layers": {"user_encoder": "attention", "attention_layers": 2, "attention_heads": 4},
}


def run_cli(model: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    def tensor(a: np.ndarray) -> dict[str, Any]:
        return {"type": "float32" if a.dtype == np.float32 else "int64", "data": a.ravel().tolist(), "dims": a.shape}

    payload = {"model": str(model), "feeds": [{k: tensor(v) for k, v in f.items()} for f in feeds]}
    command = [str(deno()), "run", "--config", str(FUNCTIONS / "deno.json"), "--no-lock", f"--allow-read={model}"]
    done = subprocess.run([*command, str(CLI)], input=json.dumps(payload), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=list(CONFIGS))
def towers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[TowerConfig, Path]:
    torch.manual_seed(0)
    cfg = TowerConfig(**VOCAB, **CONFIGS[request.param])  # type: ignore[arg-type]
    model = TwoTowerModel(cfg)
    if cfg.history_pooling == "learned":  # untrained, these are zero: give the learned pooling something to weigh
        with torch.no_grad():
            model.like_score.weight.normal_(0, 0.5)
            model.like_score.weight[0].zero_()
            model.recency_slope.fill_(0.1)
    directory = tmp_path_factory.mktemp(f"towers_{request.param}")
    save_model(directory, model)
    export_model(directory)
    return cfg, directory


def items(cfg: TowerConfig, lead: tuple[int, ...], rng: np.random.Generator) -> dict[str, np.ndarray]:
    def ids(shape: tuple[int, ...], n: int) -> np.ndarray:
        a = rng.integers(1, n, size=shape)
        a[rng.random(shape) < 0.3] = 0  # padding
        return a.astype(np.int64)

    return {
        "item_id": ids(lead, cfg.n_items),
        "tags": ids((*lead, cfg.max_tags), cfg.n_tags),
        "performers": ids((*lead, cfg.max_performers), cfg.n_performers),
        "categorical": np.stack([ids(lead, n) for n in cfg.n_categorical], axis=-1),
        "numeric": rng.normal(size=(*lead, cfg.numeric_width)).astype(np.float32),
    }


def user_feeds(cfg: TowerConfig) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    shapes = [(1, 1, 1), (1, 7, 3), (1, cfg.max_likes, cfg.max_nopes), (1, 1, 1, "masked"), (4, 12, 5)] * 4
    feeds = []
    for batch, likes, nopes, *masked in shapes:
        feed: dict[str, np.ndarray] = {}
        for side, n in (("like", likes), ("nope", nopes)):
            for name, value in items(cfg, (batch, n), rng).items():
                feed[f"{side}_{name}"] = value
            mask = (rng.random((batch, n)) < 0.8).astype(np.float32)
            mask[:, 0] = 1.0
            feed[f"{side}_mask"] = np.zeros_like(mask) if masked else mask
        feed["stats"] = rng.random((batch, cfg.stats_width)).astype(np.float32)
        feeds.append(feed)
    return feeds


def max_difference(model: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    session = ort.InferenceSession(str(model))
    outputs = run_cli(model, feeds)["outputs"]
    assert len(outputs) == len(feeds)
    worst = 0.0
    for feed, output in zip(feeds, outputs, strict=True):
        (expected,) = session.run(None, feed)
        ((_, got),) = output.items()
        assert got["dims"] == list(expected.shape)
        assert np.isfinite(expected).all()
        worst = max(worst, float(np.abs(np.asarray(got["data"]).reshape(expected.shape) - expected).max()))
    return worst


def test_user_tower_matches_onnxruntime(towers: tuple[TowerConfig, Path]) -> None:
    cfg, directory = towers
    worst = max_difference(directory / "user_tower.onnx", user_feeds(cfg))
    print(f"user tower: max |TS - onnxruntime| = {worst:.3g}")
    assert worst <= TOLERANCE


def test_item_tower_matches_onnxruntime(towers: tuple[TowerConfig, Path]) -> None:
    cfg, directory = towers
    rng = np.random.default_rng(2)
    worst = max_difference(directory / "item_tower.onnx", [items(cfg, (n,), rng) for n in (1, 4, 300)])
    print(f"item tower: max |TS - onnxruntime| = {worst:.3g}")
    assert worst <= TOLERANCE


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Tanh", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "tanh.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    result = run_cli(path, [])
    assert "unsupported operators: Tanh" in result["error"]


F = TensorProto.FLOAT
# (node, input shapes (float32; an int64 input is given as values), output count): one node's graph each
OPERATOR_CASES: dict[str, tuple[Any, list[Any], int]] = {
    "matmul_broadcast_a": (helper.make_node("MatMul", ["x0", "x1"], ["y0"]), [(3, 4), (2, 5, 4, 6)], 1),
    "matmul_broadcast_both": (helper.make_node("MatMul", ["x0", "x1"], ["y0"]), [(2, 1, 3, 4), (1, 5, 4, 2)], 1),
    "matmul_vector_matrix": (helper.make_node("MatMul", ["x0", "x1"], ["y0"]), [(4,), (2, 4, 3)], 1),
    "matmul_matrix_vector": (helper.make_node("MatMul", ["x0", "x1"], ["y0"]), [(2, 3, 4), (4,)], 1),
    "matmul_vectors": (helper.make_node("MatMul", ["x0", "x1"], ["y0"]), [(4,), (4,)], 1),
    "transpose_default": (helper.make_node("Transpose", ["x0"], ["y0"]), [(2, 3, 4)], 1),
    "transpose_perm": (helper.make_node("Transpose", ["x0"], ["y0"], perm=[1, 2, 0, 3]), [(2, 3, 4, 5)], 1),
    "softmax_middle_axis": (helper.make_node("Softmax", ["x0"], ["y0"], axis=1), [(2, 7, 3)], 1),
    "softmax_large": (helper.make_node("Softmax", ["x0"], ["y0"]), [(3, 9)], 1),
    "layer_norm_stats": (
        helper.make_node("LayerNormalization", ["x0", "x1", "x2"], ["y0", "y1", "y2"], axis=1, epsilon=1e-3),
        [(2, 3, 4), (3, 4), (4,)],
        3,
    ),
    "layer_norm_no_bias": (helper.make_node("LayerNormalization", ["x0", "x1"], ["y0"]), [(2, 5, 6), (6,)], 1),
    "split_num_outputs_uneven": (
        helper.make_node("Split", ["x0"], ["y0", "y1", "y2"], axis=1, num_outputs=3),
        [(2, 8, 3)],
        3,
    ),
    "split_sizes_input": (helper.make_node("Split", ["x0", "s"], ["y0", "y1"], axis=-1), [(3, 7), [2, 5]], 2),
    "split_equal_opset13": (helper.make_node("Split", ["x0"], ["y0", "y1"]), [(4, 3)], 2),
}


@pytest.mark.parametrize("case", list(OPERATOR_CASES))
def test_operator_matches_onnxruntime(case: str, tmp_path: Path) -> None:
    node, shapes, outputs = OPERATOR_CASES[case]
    rng = np.random.default_rng(3)
    feed, inputs, initializers = {}, [], []
    for i, shape in enumerate(shapes):
        if isinstance(shape, list):  # int64 values, as an initializer
            initializers.append(helper.make_tensor("s", TensorProto.INT64, [len(shape)], shape))
            continue
        feed[f"x{i}"] = (rng.normal(size=shape) * (30 if case == "softmax_large" else 1)).astype(np.float32)
        inputs.append(helper.make_tensor_value_info(f"x{i}", F, list(shape)))
    result = [helper.make_tensor_value_info(f"y{i}", F, None) for i in range(outputs)]
    graph = helper.make_graph([node], case, inputs, result, initializer=initializers)
    path = tmp_path / f"{case}.onnx"
    opset = 13 if case.endswith("_opset13") else 18  # Split before 18: as many equal parts as outputs
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    (got,) = run_cli(path, [feed])["outputs"]
    expected = ort.InferenceSession(str(path)).run(None, feed)
    assert list(got) == [f"y{i}" for i in range(outputs)]
    for name, want in zip(got, expected, strict=True):
        assert got[name]["dims"] == list(want.shape), name
        assert np.abs(np.asarray(got[name]["data"]).reshape(want.shape) - want).max() <= TOLERANCE, name
