"""PyTorch towers → ONNX (dynamic batch and history length), plus ``manifest.json`` with checksums."""

from __future__ import annotations

import json
import logging
import platform
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from twotower.errors import InputError
from twotower.inference.towers import ITEM_INPUTS, ITEM_ONNX, USER_INPUTS, USER_ONNX
from twotower.model.towers import TwoTowerModel
from twotower.model.weights import load_model
from twotower.registry.store import sha256

__all__ = ["ITEM_INPUTS", "ITEM_ONNX", "MANIFEST", "USER_INPUTS", "USER_ONNX", "export_model", "sha256"]

MANIFEST = "manifest.json"
OPSET = 18


class _ItemTower(nn.Module):
    def __init__(self, model: TwoTowerModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, item_id: Tensor, tags: Tensor, performers: Tensor, categorical: Tensor, numeric: Tensor
    ) -> Tensor:
        return self.model.item_tower(item_id, tags, performers, categorical, numeric)


class _UserTower(nn.Module):
    def __init__(self, model: TwoTowerModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        like_item_id: Tensor, like_tags: Tensor, like_performers: Tensor, like_categorical: Tensor,
        like_numeric: Tensor, like_mask: Tensor,
        nope_item_id: Tensor, nope_tags: Tensor, nope_performers: Tensor, nope_categorical: Tensor,
        nope_numeric: Tensor, nope_mask: Tensor, stats: Tensor,
    ) -> Tensor:  # fmt: skip
        return self.model.user_tower(
            like_item_id, like_tags, like_performers, like_categorical, like_numeric, like_mask,
            nope_item_id, nope_tags, nope_performers, nope_categorical, nope_numeric, nope_mask, stats,
        )  # fmt: skip


def _examples(model: TwoTowerModel, batch: int = 2) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    cfg = model.cfg

    def items(*lead: int) -> tuple[Tensor, ...]:
        return (
            torch.ones(*lead, dtype=torch.int64),
            torch.ones(*lead, cfg.max_tags, dtype=torch.int64),
            torch.ones(*lead, cfg.max_performers, dtype=torch.int64),
            torch.ones(*lead, 4, dtype=torch.int64),
            torch.zeros(*lead, cfg.numeric_width),
        )

    user = (
        *items(batch, cfg.max_likes), torch.ones(batch, cfg.max_likes),
        *items(batch, cfg.max_nopes), torch.ones(batch, cfg.max_nopes),
        torch.zeros(batch, cfg.stats_width),
    )  # fmt: skip
    return items(batch), user


def _export(module: nn.Module, args: tuple[Tensor, ...], names: tuple[str, ...], output: str, path: Path,
            dynamic: dict[str, dict[int, Any]]) -> None:  # fmt: skip
    # the exporter logs that torchvision ops are not registered: irrelevant here, and noise on stderr
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations of internals), not about our model
        program = torch.onnx.export(
            module.eval(),
            args,
            input_names=list(names),
            output_names=[output],
            dynamic_shapes=tuple(dynamic.get(n, {}) for n in names),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise InputError("the ONNX exporter returned no program")
    program.save(str(path))


def export_model(model_dir: Path) -> dict[str, Any]:
    """Write ``item_tower.onnx``, ``user_tower.onnx`` and ``manifest.json`` into a model directory."""
    model = load_model(model_dir)
    model.encoder.fused = False  # plain gathers: the same sums, supported by every ONNX runtime
    item_args, user_args = _examples(model)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    likes = torch.export.Dim("likes", min=1, max=4096)
    nopes = torch.export.Dim("nopes", min=1, max=4096)
    item_dyn = {n: {0: batch} for n in ITEM_INPUTS}
    user_dyn: dict[str, dict[int, Any]] = {"stats": {0: batch}}
    for name in USER_INPUTS[:-1]:
        user_dyn[name] = {0: batch, 1: likes if name.startswith("like_") else nopes}
    _export(_ItemTower(model), item_args, ITEM_INPUTS, "item_embedding", model_dir / ITEM_ONNX, item_dyn)
    _export(_UserTower(model), user_args, USER_INPUTS, "user_embedding", model_dir / USER_ONNX, user_dyn)

    training = json.loads((model_dir / "training.json").read_text()) if (model_dir / "training.json").is_file() else {}
    evaluation = (
        json.loads((model_dir / "evaluation.json").read_text()) if (model_dir / "evaluation.json").is_file() else {}
    )
    files = [ITEM_ONNX, USER_ONNX, "features.json", "tower_config.json", "model.safetensors"]
    import onnx  # lazy: 1.3 s after torch, for `validate` and `deploy` too, which import twotower.export
    import onnxruntime  # lazy: read only for the manifest's library versions, beside onnx

    manifest: dict[str, Any] = {
        "format_version": 1,
        "version": training.get("version", model_dir.name),
        "embedding_dim": model.cfg.embedding_dim,
        "tower_config": model.cfg.to_json(),
        "inputs": {"item": list(ITEM_INPUTS), "user": list(USER_INPUTS)},
        "outputs": {"item": "item_embedding", "user": "user_embedding"},
        "opset": OPSET,
        "training_window": training.get("window", {}),
        "data": training.get("data", {}),
        "metrics": {
            "best_valid_recall_at_20": training.get("best_valid_recall_at_20"),
            "evaluation": evaluation.get("models", {}),
        },
        "checksums": {name: sha256(model_dir / name) for name in files if (model_dir / name).is_file()},
        "libraries": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
