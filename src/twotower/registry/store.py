"""Artifact stores: where model versions live. Versions are immutable; checksums are verified on load.

A version is a directory of files (ONNX towers, features.json, tower_config.json, model.safetensors,
manifest.json). ``manifest.json`` carries the sha256 of every other file and is written last, so a version
whose manifest is present is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from twotower.errors import ArtifactError, ConfigError, InputError, NotFound

if TYPE_CHECKING:
    from twotower.settings import Settings

__all__ = [
    "ArtifactStore", "LocalStore", "S3Store", "fetch", "open_store", "sha256", "verify_directory",
]  # fmt: skip

MANIFEST = "manifest.json"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def valid_version(version: str) -> bool:
    """Letters, digits, '.', '_' and '-', at most 128, starting with a letter or digit (as the schema checks)."""
    return _VERSION.fullmatch(version) is not None  # (``match`` with ``$`` took "v1\n")


def _check_version(version: str) -> str:
    if not valid_version(version):
        raise InputError(f"invalid version {version!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    return version


def _files(directory: Path) -> dict[str, str]:
    """The manifest's checksums; every listed file must exist."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST} (run `twotower export` first)")
    try:
        checksums: dict[str, str] = json.loads(path.read_text())["checksums"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a valid manifest ({exc})") from None
    for name in checksums:
        if "/" in name or name.startswith(".") or not (directory / name).is_file():
            raise ArtifactError(f"{directory}: the manifest lists {name!r}, which is missing")
    return checksums


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_directory(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest's sha256; return the manifest."""
    for name, expected in _files(directory).items():
        actual = sha256(directory / name)
        if actual != expected:
            raise ArtifactError(
                f"{directory / name}: checksum mismatch (expected {expected[:12]}…, got {actual[:12]}…); "
                "the artifact was modified or corrupted"
            )
    manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    return manifest


class ArtifactStore(Protocol):
    """Where versions are kept. ``put`` refuses an existing version; ``get`` verifies checksums."""

    def put(self, version: str, directory: Path) -> str: ...
    def get(self, version: str, target: Path) -> Path: ...
    def exists(self, version: str) -> bool: ...
    def versions(self) -> list[str]: ...
    def uri(self, version: str) -> str: ...
    def manifest(self, version: str) -> dict[str, Any]: ...


class LocalStore:
    """A directory: ``<root>/<version>/...``; a version appears atomically (rename of a finished copy)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def uri(self, version: str) -> str:
        return str((self.root / _check_version(version)).absolute())

    def exists(self, version: str) -> bool:
        return (self.root / _check_version(version) / MANIFEST).is_file()

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{MANIFEST}"))

    def put(self, version: str, directory: Path) -> str:
        checksums = _files(directory)
        verify_directory(directory)
        if self.exists(version):
            raise ArtifactError(f"version {version} already exists in {self.root} (versions are immutable)")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.root))
        try:
            for name in (*checksums, MANIFEST):
                shutil.copy2(directory / name, staging / name)
            os.rename(staging, self.root / version)
        except FileExistsError:
            raise ArtifactError(f"version {version} already exists in {self.root} (versions are immutable)") from None
        except OSError as exc:
            raise ArtifactError(f"cannot store version {version} in {self.root}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.uri(version)

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.root / _check_version(version) / MANIFEST
        if not path.is_file():
            raise NotFound(f"version {version} is not in {self.root}")
        return _read_manifest(path)

    def get(self, version: str, target: Path) -> Path:
        source = self.root / _check_version(version)
        if not (source / MANIFEST).is_file():
            raise NotFound(f"version {version} is not in {self.root}")
        target.mkdir(parents=True, exist_ok=True)
        for name in (*_files(source), MANIFEST):
            shutil.copy2(source / name, target / name)
        verify_directory(target)
        return target


class S3Store:
    """Any S3-compatible store (AWS, MinIO, Supabase Storage's S3 endpoint): ``s3://bucket/prefix/<version>/``."""

    def __init__(self, bucket: str, prefix: str = "twotower", client: Any = None, **client_kwargs: Any) -> None:
        import boto3  # lazy: 0.4 s of CLI/serving start; S3 only

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", **client_kwargs)

    def _key(self, version: str, name: str) -> str:
        return f"{self.prefix}/{_check_version(version)}/{name}" if self.prefix else f"{version}/{name}"

    def uri(self, version: str) -> str:
        return f"s3://{self.bucket}/{self._key(version, '')}"

    def exists(self, version: str) -> bool:
        from botocore.exceptions import ClientError  # lazy: 0.08 s of CLI/serving start; S3 only

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(version, MANIFEST))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise ArtifactError(f"cannot reach s3://{self.bucket}: {exc}") from None
        return True

    def versions(self) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        found = set()
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""):
            for obj in page.get("Contents", []):
                parts = obj["Key"].split("/")
                if parts[-1] == MANIFEST and len(parts) >= 2:
                    found.add(parts[-2])
        return sorted(found)

    def put(self, version: str, directory: Path) -> str:
        from botocore.exceptions import BotoCoreError, ClientError  # lazy: 0.08 s of CLI/serving start; S3 only

        checksums = _files(directory)
        verify_directory(directory)
        if self.exists(version):
            raise ArtifactError(f"version {version} already exists in s3://{self.bucket} (versions are immutable)")
        try:  # the manifest last: a version without one is an incomplete upload, invisible to readers
            for name in (*checksums, MANIFEST):
                self.client.upload_file(str(directory / name), self.bucket, self._key(version, name))
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactError(f"upload of version {version} to s3://{self.bucket} failed: {exc}") from None
        return self.uri(version)

    def manifest(self, version: str) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError  # lazy: 0.08 s of CLI/serving start; S3 only

        with tempfile.TemporaryDirectory() as tmp:
            try:
                self.client.download_file(self.bucket, self._key(version, MANIFEST), str(Path(tmp) / MANIFEST))
            except (BotoCoreError, ClientError) as exc:
                raise ArtifactError(f"cannot read the manifest of {version} in s3://{self.bucket}: {exc}") from None
            return _read_manifest(Path(tmp) / MANIFEST)

    def get(self, version: str, target: Path) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError  # lazy: 0.08 s of CLI/serving start; S3 only

        if not self.exists(version):
            raise NotFound(f"version {version} is not in s3://{self.bucket}/{self.prefix}")
        target.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(version, MANIFEST), str(target / MANIFEST))
            for name in _manifest_names(target):
                self.client.download_file(self.bucket, self._key(version, name), str(target / name))
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactError(f"download of version {version} from s3://{self.bucket} failed: {exc}") from None
        verify_directory(target)
        return target


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a valid manifest ({exc})") from None
    return manifest


def _manifest_names(directory: Path) -> list[str]:
    try:
        names = list(json.loads((directory / MANIFEST).read_text())["checksums"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{directory / MANIFEST}: not a valid manifest ({exc})") from None
    bad = [n for n in names if "/" in n or n.startswith(".")]
    if bad:
        raise ArtifactError(f"{directory / MANIFEST}: refusing file names {bad}")
    return names


def open_store(settings: Settings) -> LocalStore | S3Store:
    """The configured store: ``TWOTOWER_ARTIFACT_STORE`` (a directory or ``s3://bucket/prefix``)."""
    where = settings.artifact_store
    if not where:
        return LocalStore((settings.data_dir / "artifacts").expanduser().absolute())
    if where.startswith("s3://"):
        bucket, _, prefix = where[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"TWOTOWER_ARTIFACT_STORE={where!r}: expected s3://bucket/prefix")
        from botocore.config import Config  # lazy: 0.08 s of CLI/serving start; S3 only

        return S3Store(
            bucket, prefix, endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
        )  # fmt: skip
    if "://" in where:
        raise ConfigError(f"TWOTOWER_ARTIFACT_STORE={where!r}: use a directory or s3://bucket/prefix")
    return LocalStore(Path(where).expanduser().absolute())


def fetch(store: ArtifactStore, version: str, cache_dir: Path) -> Path:
    """A verified local copy of a stored version (re-verified when already cached)."""
    target = cache_dir / version
    if (target / "manifest.json").is_file():
        with suppress(ArtifactError):
            verify_directory(target)
            return target
        shutil.rmtree(target, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=cache_dir))  # several processes may fetch at once
    try:
        store.get(version, staging)
        try:
            staging.rename(target)
        except OSError:  # another process put it there first: theirs is as good (verified) as ours
            verify_directory(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
