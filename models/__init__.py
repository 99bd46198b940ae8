"""Offline builders of the project's reference models (see models/README.md).

Nothing in here is imported by the core package ``onnx_alds``. Only the torch-based
builders import torch, and only inside their ``build`` functions, so ``models.resnet50``
and this package import without torch.

Usage::

    python -m models.build NAME [--out models/cache]
"""

from __future__ import annotations

# name -> module (relative to this package) exposing ``build(out_dir: Path) -> dict``
BUILDERS = {
    "mnist-resnet": "mnist_resnet",
    "efficientnet-lite0": "efficientnet_lite0",
    "minilm": "minilm",
    "resnet50": "resnet50",
}

__all__ = ["BUILDERS"]
