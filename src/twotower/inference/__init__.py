"""Inference without PyTorch: the exported ONNX towers under ONNX Runtime, fed by the shared feature pipeline.

Used by deployment (building an embedding generation), batch jobs and the serving API alike.
"""

from twotower.inference.towers import OnnxTowers

__all__ = ["OnnxTowers"]
