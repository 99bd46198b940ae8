"""ONNX Runtime sessions on a named provider, with no silent fallback.

``onnxruntime`` is an optional dependency (extras ``[cpu]`` / ``[gpu]``); everything that runs a
model goes through :func:`make_session`, which checks that the provider asked for is the one the
session really uses.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import onnx

from .errors import ProviderError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def import_onnxruntime() -> Any:
    """Import onnxruntime or raise a clear error naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ProviderError(
            "onnxruntime is not installed; install onnx-alds[cpu] (or onnx-alds[gpu] for CUDA)"
        ) from None
    return onnxruntime


def make_session(model: Union[str, os.PathLike, onnx.ModelProto, bytes], provider: str = "cpu", *,
                 threads: Optional[int] = None, provider_options: Optional[dict] = None,
                 enable_profiling: bool = False, spinning: bool = True) -> Any:
    """An ``InferenceSession`` that is guaranteed to run on ``provider`` (``cpu``, ``cuda``, ``tensorrt``).

    ``spinning=False`` stops idle intra-op threads from busy-waiting: needed when several sessions
    take turns on the same cores (interleaved benchmarks), where a spinning idle session steals the
    cores of the one being timed.

    Raises :class:`ProviderError` when the provider is unknown, not compiled into the installed
    onnxruntime, or fails to load (onnxruntime would otherwise fall back to CPU without a word).
    """
    ort = import_onnxruntime()
    if provider not in PROVIDERS:
        raise ProviderError(f"unknown provider '{provider}'; choose one of: {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted not in available:
        raise ProviderError(
            f"provider '{provider}' is not available in this onnxruntime (it has: {', '.join(available)}); "
            + ("install onnx-alds[gpu] (onnxruntime-gpu) in an environment without onnxruntime"
               if provider != "cpu" else "reinstall onnxruntime")
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.enable_profiling = enable_profiling
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else (
        model if isinstance(model, bytes) else str(model))
    providers: list = [(wanted, provider_options or {})]
    if wanted != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")  # for the ops the accelerator lacks; checked below
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:
        raise ProviderError(f"onnxruntime could not create a '{provider}' session: {str(exc).splitlines()[0]}") from None
    if session.get_providers()[0] != wanted:
        raise ProviderError(
            f"onnxruntime fell back from '{provider}' to {session.get_providers()[0]} "
            "(the provider failed to load: check the CUDA/cuDNN libraries); refusing to run on another provider"
        )
    return session
