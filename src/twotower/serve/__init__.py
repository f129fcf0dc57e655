"""The serving API: FastAPI + ONNX Runtime + pgvector (never imports torch)."""

from twotower.serve.app import create_app, serving_session

__all__ = ["create_app", "serving_session"]
