"""Embedding generations in pgvector: a version's video and user vectors, written in bulk or re-embedded in place,
and their HNSW index. Used by the deploy pipeline, the catalog sync, batch jobs and training's publish step."""
