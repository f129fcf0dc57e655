"""One model version's ONNX towers, loaded from a verified artifact directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from twotower.errors import ArtifactError
from twotower.features.examples import UserBatch
from twotower.features.history import HistoryConfig
from twotower.features.pipeline import FeaturePipeline, ItemFeatures
from twotower.registry.store import verify_directory

__all__ = ["ITEM_INPUTS", "ITEM_ONNX", "USER_INPUTS", "USER_ONNX", "OnnxTowers"]

ITEM_INPUTS = ("item_id", "tags", "performers", "categorical", "numeric")
USER_INPUTS = (
    *(f"like_{n}" for n in ITEM_INPUTS),
    "like_mask",
    *(f"nope_{n}" for n in ITEM_INPUTS),
    "nope_mask",
    "stats",
)
ITEM_ONNX, USER_ONNX = "item_tower.onnx", "user_tower.onnx"


def _item_arrays(features: ItemFeatures) -> tuple[npt.NDArray[Any], ...]:
    return features.item_id, features.tags, features.performers, features.categorical, features.numeric


class OnnxTowers:
    """Item and user towers of one version. ``verify`` checks every file against the manifest's sha256 first."""

    def __init__(self, directory: Path, *, verify: bool = True, threads: int = 0) -> None:

        if verify:
            self.manifest: dict[str, Any] = verify_directory(directory)
        else:
            try:
                self.manifest = json.loads((directory / "manifest.json").read_text())
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{directory}: no readable manifest.json ({exc})") from None
        self.directory = directory
        self.version: str = self.manifest["version"]
        self.dim: int = int(self.manifest["embedding_dim"])
        tower = self.manifest["tower_config"]
        self.history = HistoryConfig(int(tower["max_likes"]), int(tower["max_nopes"]))
        self.pipeline = FeaturePipeline.load(directory / "features.json")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (one per core)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.item_session = ort.InferenceSession(
                str(directory / ITEM_ONNX), options, providers=["CPUExecutionProvider"]
            )
            self.user_session = ort.InferenceSession(
                str(directory / USER_ONNX), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{directory}: ONNX Runtime cannot load the towers ({exc})") from None

    def embed_items(self, features: ItemFeatures, batch_size: int = 4096) -> npt.NDArray[np.float32]:
        """``[n, dim]`` item-tower embeddings of these (transformed) videos."""
        out = []
        for i in range(0, len(features), batch_size):
            part = features.take(np.arange(i, min(i + batch_size, len(features))))
            out.append(self.item_session.run(None, self.item_inputs(part))[0])
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, self.dim), np.float32)

    def item_inputs(self, features: ItemFeatures) -> dict[str, npt.NDArray[Any]]:
        """Feed for the item tower."""
        return dict(zip(ITEM_INPUTS, _item_arrays(features), strict=True))

    def user_inputs(self, table: ItemFeatures, batch: UserBatch) -> dict[str, npt.NDArray[Any]]:
        """Feed for the user tower. ``table`` is the item-feature table with its padding row last."""
        like = _item_arrays(table.take(batch.like_rows))
        nope = _item_arrays(table.take(batch.nope_rows))
        arrays = (*like, batch.like_mask, *nope, batch.nope_mask, batch.stats)
        return dict(zip(USER_INPUTS, arrays, strict=True))

    def embed_users(self, table: ItemFeatures, batch: UserBatch, batch_size: int = 1024) -> npt.NDArray[np.float32]:
        """``[B, dim]`` user-tower embeddings; ``table`` has the padding row last (``with_padding_row``)."""
        out = [
            self.user_session.run(None, self.user_inputs(table, batch.slice(i, i + batch_size)))[0]
            for i in range(0, len(batch), batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, self.dim), np.float32)
