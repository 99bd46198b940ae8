"""Helpers shared by the model builders: no torch at import time."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def initializer_names(model: onnx.ModelProto) -> set:
    names = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            names.update(node.output)
    return names


def count_weighted_nodes(model: onnx.ModelProto) -> dict:
    """Conv/Gemm/MatMul nodes whose weight (input 1) is a constant, by op type."""
    consts = initializer_names(model)
    counts = {op: 0 for op in WEIGHTED_OPS}
    for node in model.graph.node:
        if node.op_type in counts and len(node.input) > 1 and node.input[1] in consts:
            counts[node.op_type] += 1
    return counts


def count_weights(model: onnx.ModelProto) -> int:
    """Number of scalar values in all float initializers."""
    total = 0
    for t in model.graph.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            total += int(np.prod(t.dims)) if len(t.dims) else 1
    return total


def ort_session(path_or_bytes, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_batched(sess, feeds: dict, batch: int = 64) -> np.ndarray:
    """Run the first output of ``sess`` over ``feeds`` (arrays batch-first) in chunks."""
    n = len(next(iter(feeds.values())))
    outs = []
    for i in range(0, n, batch):
        outs.append(sess.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[0])
    return np.concatenate(outs, axis=0)


@contextlib.contextmanager
def silence_stdout():
    """Swallow Python-level prints (some model code prints debug lines in forward)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def setup_torch(seed: int, threads: int = 2):
    """Import torch and make it deterministic. Returns the torch module."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return torch


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def env_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("numpy", "onnx", "onnxruntime", "torch", "transformers"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    return info


def model_summary(path: Path) -> dict:
    model = onnx.load(str(path))
    return {
        "file_bytes": path.stat().st_size,
        "weights": count_weights(model),
        "weighted_nodes": count_weighted_nodes(model),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "inputs": {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input},
        "outputs": {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output},
    }


def check_model(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.t0, 2)


def package_file(dist_name: str, suffix: str) -> Path:
    """Locate a file shipped in an installed distribution without importing it."""
    import importlib.metadata as md

    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError as e:
        raise SystemExit(
            f"error: package {dist_name!r} is not installed; see models/requirements.txt"
        ) from e
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith(suffix):
            return Path(dist.locate_file(f))
    raise SystemExit(f"error: {suffix!r} not found in package {dist_name!r}")
