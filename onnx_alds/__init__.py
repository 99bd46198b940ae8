"""onnx-alds: compress exported ONNX models by grouped low-rank decomposition (ALDS)."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import METHODS, CompressionResult, analyze, compress  # noqa: E402
from .errors import OnnxAldsError  # noqa: E402

__all__ = ["__version__", "METHODS", "CompressionResult", "OnnxAldsError", "analyze", "compress"]
