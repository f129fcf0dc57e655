"""The JavaScript check: the same feeds through onnxruntime-node, so a JS client (an edge function, a browser
bundle) is known to compute what Python computes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from twotower.errors import InputError

__all__ = ["JsUnavailable", "NodeRuntime", "find_node_runtime", "run_towers_in_node"]

SCRIPT = "check_towers.cjs"


class JsUnavailable(Exception):
    """Node.js or onnxruntime-node is not there; the message says which (the check is skipped)."""


@dataclass(frozen=True)
class NodeRuntime:
    node: str
    node_modules: Path
    version: str


def find_node_runtime(node_modules: Path | None = None) -> NodeRuntime:
    """``node`` on PATH and an ``onnxruntime-node`` package under ``node_modules`` (default:
    ``TWOTOWER_NODE_MODULES``). Raises ``JsUnavailable`` with the reason when either is missing."""
    node = shutil.which("node")
    if node is None:
        raise JsUnavailable("node is not on PATH")
    if node_modules is None:
        env = os.environ.get("TWOTOWER_NODE_MODULES")
        if not env:
            raise JsUnavailable(
                "onnxruntime-node location unknown: set TWOTOWER_NODE_MODULES to a node_modules directory "
                "where `npm install onnxruntime-node` was run"
            )
        node_modules = Path(env)
    package = node_modules / "onnxruntime-node" / "package.json"
    if not package.is_file():
        raise JsUnavailable(f"onnxruntime-node is not installed under {node_modules}")
    return NodeRuntime(node, node_modules.absolute(), json.loads(package.read_text())["version"])


def _spec(array: npt.NDArray[Any]) -> dict[str, Any]:
    dtype = {np.dtype(np.int64): "int64", np.dtype(np.float32): "float32"}[array.dtype]
    return {"dtype": dtype, "dims": list(array.shape), "data": array.ravel().tolist()}


def run_towers_in_node(
    runtime: NodeRuntime, model_dir: Path, feeds: dict[str, dict[str, npt.NDArray[Any]]], timeout: float = 120
) -> dict[str, npt.NDArray[np.float32]]:
    """Run ``{"item": feed, "user": feed}`` through ``<tower>_tower.onnx`` in Node; the outputs by tower."""
    script = files("twotower.export").joinpath("js", SCRIPT)
    with tempfile.TemporaryDirectory(prefix="twotower-js-") as tmp:
        feeds_path, out_path = Path(tmp) / "feeds.json", Path(tmp) / "out.json"
        feeds_path.write_text(json.dumps({t: {n: _spec(a) for n, a in f.items()} for t, f in feeds.items()}))
        env = {**os.environ, "NODE_PATH": str(runtime.node_modules)}
        try:
            proc = subprocess.run(
                [runtime.node, str(script), str(model_dir.absolute()), str(feeds_path), str(out_path)],
                env=env, capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise JsUnavailable(f"onnxruntime-node did not answer within {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise InputError(f"onnxruntime-node failed on {model_dir}: {proc.stderr.strip()[-500:]}")
        result = json.loads(out_path.read_text())
    return {
        tower: np.asarray(out["data"], dtype=np.float32).reshape(out["dims"]) for tower, out in result["towers"].items()
    }
