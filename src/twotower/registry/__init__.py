"""The model registry: artifact stores (local directory, S3-compatible) with immutable, verified versions."""

from twotower.registry.store import ArtifactStore, LocalStore, S3Store, verify_directory

__all__ = ["ArtifactStore", "LocalStore", "S3Store", "verify_directory"]
