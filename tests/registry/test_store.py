"""One contract, every artifact store: the local directory and S3 (a real S3 HTTP server, moto, on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from twotower.errors import ArtifactError, InputError, NotFound
from twotower.registry import ArtifactStore, LocalStore, S3Store


def _s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    )  # fmt: skip


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "registry")
    endpoint = request.getfixturevalue("s3_endpoint")
    client = _s3_client(endpoint)
    bucket = f"models-{tmp_path.name.lower().replace('_', '-')[:40]}"
    client.create_bucket(Bucket=bucket)
    return S3Store(bucket, prefix="twotower", client=client)


def _artifact(directory: Path, payload: bytes = b"onnx bytes") -> Path:
    directory.mkdir(parents=True)
    files = {"item_tower.onnx": payload, "user_tower.onnx": payload[::-1], "features.json": b"{}"}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    checksums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    (directory / "manifest.json").write_text(json.dumps({"version": directory.name, "checksums": checksums}))
    return directory


def _tamper(store: ArtifactStore, version: str, name: str) -> None:
    if isinstance(store, LocalStore):
        (store.root / version / name).write_bytes(b"evil")
    else:
        assert isinstance(store, S3Store)
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{version}/{name}", Body=b"evil")


def test_put_get_roundtrip(store: ArtifactStore, tmp_path: Path) -> None:
    source = _artifact(tmp_path / "v1")
    assert not store.exists("v1") and store.versions() == []
    uri = store.put("v1", source)
    assert "v1" in uri and store.exists("v1") and store.versions() == ["v1"]
    got = store.get("v1", tmp_path / "out")
    for name in ("item_tower.onnx", "user_tower.onnx", "features.json", "manifest.json"):
        assert (got / name).read_bytes() == (source / name).read_bytes()


def test_versions_are_immutable(store: ArtifactStore, tmp_path: Path) -> None:
    store.put("v1", _artifact(tmp_path / "a"))
    with pytest.raises(ArtifactError, match="immutable"):
        store.put("v1", _artifact(tmp_path / "b", payload=b"other"))
    assert (store.get("v1", tmp_path / "out") / "item_tower.onnx").read_bytes() == b"onnx bytes"


def test_tampered_artifact_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    store.put("v1", _artifact(tmp_path / "a"))
    _tamper(store, "v1", "user_tower.onnx")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        store.get("v1", tmp_path / "out")


def test_incomplete_or_corrupt_source_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    source = _artifact(tmp_path / "a")
    (source / "features.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        store.put("v1", source)
    source = _artifact(tmp_path / "b")
    (source / "item_tower.onnx").write_bytes(b"changed after export")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        store.put("v2", source)
    assert store.versions() == []


def test_unknown_and_invalid_versions(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        store.get("nope", tmp_path / "out")
    with pytest.raises(InputError):
        store.exists("../etc")
