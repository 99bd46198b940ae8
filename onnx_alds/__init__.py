"""onnx-alds: compress exported ONNX models by grouped low-rank decomposition (ALDS)."""

from __future__ import annotations

__version__ = "0.1.0"
