"""Export: each tower to its own ONNX file, with the feature JSON and a manifest; parity validation."""

from twotower.export.onnx_export import ITEM_INPUTS, USER_INPUTS, export_model
from twotower.export.validate import ValidationReport, validate_model

__all__ = ["ITEM_INPUTS", "USER_INPUTS", "ValidationReport", "export_model", "validate_model"]
