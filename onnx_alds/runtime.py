"""ONNX Runtime sessions on a named provider, with no silent fallback.

``onnxruntime`` is an optional dependency (extras ``[cpu]`` / ``[gpu]``); everything that runs a
model goes through :func:`make_session`, which checks that the provider asked for is the one the
session really uses.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional, Union

import onnx

from .errors import ModelLoadError, ProviderError, interrupted, one_line, runtime_error_text

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def import_onnxruntime() -> Any:
    """Import onnxruntime or raise a clear error naming the extra to install."""
    try:
        import onnxruntime
    except ImportError as exc:
        if interrupted(exc):  # Ctrl-C or SIGTERM during the import, not a missing package
            raise KeyboardInterrupt from None
        raise ProviderError(
            "onnxruntime is not installed; install onnx-alds[cpu] (or onnx-alds[gpu] for CUDA)"
        ) from None
    return onnxruntime


def _checker_failure(model: Any) -> Optional[str]:
    """onnx.checker's complaint about ``model`` (a path or ModelProto) on one line, or None when it
    passes or cannot be checked (bytes, a light model whose weights are elsewhere)."""
    if not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        return None
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model))
    except Exception as exc:  # onnx.checker.ValidationError, or a file it cannot read
        return one_line(exc)
    return None


def make_session(model: Union[str, os.PathLike, onnx.ModelProto, bytes], provider: str = "cpu", *,
                 threads: Optional[int] = None, provider_options: Optional[dict] = None,
                 enable_profiling: bool = False, spinning: bool = True, store: Any = None,
                 prepack: bool = True, copy_of: Optional[str] = None, what: Optional[str] = None) -> Any:
    """An ``InferenceSession`` that is guaranteed to run on ``provider`` (``cpu``, ``cuda``, ``tensorrt``).

    ``spinning=False`` stops idle intra-op threads from busy-waiting: needed when several sessions
    take turns on the same cores (interleaved benchmarks), where a spinning idle session steals the
    cores of the one being timed.

    ``store`` (a :class:`onnx_alds.model_io.TensorStore`): ``model`` is a light model whose stubs
    ONNX Runtime reads itself (from the model's data files, or from the held tensors without a copy
    of the model). ``prepack=False`` keeps ONNX Runtime from making a packed copy of every weight
    (the checks only load and run the model once).

    ``copy_of`` (the step an instrumented copy is for, e.g. "data-aware compression (calibration)"):
    ``model`` is the package's own copy of the user's model (extra outputs, weights as inputs); when
    ONNX Runtime cannot load it, the error says that ONNX Runtime cannot run the user's model for that
    step (onnx.checker's view of the copy, whose added outputs carry no shape, would blame the user's
    model for the package's edits).

    ``what`` names the model in errors ("the original model", "the compressed model"): a model the CPU
    provider cannot run is then an error with the fix (callers that go on without ONNX Runtime leave it out).

    Raises :class:`ProviderError` when the provider is unknown, not compiled into the installed
    onnxruntime, or fails to load (onnxruntime would otherwise fall back to CPU without a word), or no
    session can be made (on the CPU: an op or element type it lacks); :class:`ModelLoadError` when ONNX
    Runtime cannot load the model (with ``copy_of``: the copy) and onnx.checker finds it invalid, or
    ``copy_of`` is given.
    """
    ort = import_onnxruntime()
    if not isinstance(provider, str) or provider not in PROVIDERS:
        raise ProviderError(f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted not in available:
        raise ProviderError(
            f"provider '{provider}' is not available in this onnxruntime (it has: {', '.join(available)}); "
            + ("install onnx-alds[gpu] (onnxruntime-gpu) in an environment without onnxruntime"
               if provider != "cpu" else "reinstall onnxruntime")
        )
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: every error reaches the caller as an exception, once
    if threads is not None:
        from .argtypes import check_threads

        check_threads(threads)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.enable_profiling = enable_profiling
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    held: list = []
    if store is not None and isinstance(model, onnx.ModelProto):
        source = _light_source(ort, model, store, options, held)
    else:
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else (
            model if isinstance(model, bytes) else str(model))
    if isinstance(source, str):
        _check_utf8_path(source)
    providers: list = [(wanted, provider_options or {})]
    if wanted != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")  # for the ops the accelerator lacks; checked below
    # ONNX Runtime's NCHWc layout pass (CPU, fp32 convolutions only) kills the process with SIGSEGV on
    # float16 graphs that transpose into a MatMul (every fp16 attention export; onnxruntime 1.32): it does
    # nothing for float16 models, so it is left out of their CPU sessions
    extra = {"disabled_optimizers": ["NchwcTransformer"]} if provider == "cpu" and _computes_in_float16(model) else {}
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers, **extra)
    except Exception as exc:
        if copy_of is not None:
            raise ModelLoadError(f"{copy_of} runs the model in ONNX Runtime ({provider}), which cannot load it "
                                 f"({runtime_error_text(exc)}); give a model ONNX Runtime can run, or do "
                                 f"without {copy_of}") from None
        invalid = None if store is not None else _checker_failure(model)  # an invalid model said as such
        if invalid:
            raise ModelLoadError(f"the model is not valid ONNX (onnx.checker: {invalid}); fix the model or export "
                                 "it again") from None
        fix = ("; give a model it can run (it lacks an op or element type the model uses, e.g. a float64 Conv: "
               "export in float32)") if provider == "cpu" and what else ""  # (the provider is there: the model)
        if "external data into raw data" in str(exc):  # (a shape tensor stored outside: saved with size_threshold=0)
            fix = ("; ONNX Runtime reads the small tensors that ops use as shapes only from the model file: save it "
                   "with them inline (onnx.save(model, path, save_as_external_data=True, size_threshold=1024)), "
                   "or compress it first: onnx-alds writes them inline")
        raise ProviderError(f"onnxruntime could not create a '{provider}' session"
                            f"{f' for {what}' if what else ''}: {str(exc).splitlines()[0]}{fix}") from None
    if held:
        session._onnx_alds_held = held  # ONNX Runtime reads these arrays in place: keep them alive
    if session.get_providers()[0] != wanted:
        raise ProviderError(
            f"onnxruntime fell back from '{provider}' to {session.get_providers()[0]} "
            "(the provider failed to load: check the CUDA/cuDNN libraries); refusing to run on another provider"
        )
    return session


def _check_utf8_path(path: str) -> None:
    """ONNX Runtime takes paths as UTF-8: one that a non-UTF-8 locale decoded with surrogates (a UTF-8 file
    name under LC_ALL=C) is refused by its binding with a message about argument types. Raises ModelLoadError
    naming the path and the fix instead."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ModelLoadError(f"the path {path.encode('utf-8', 'backslashreplace').decode()!r} cannot be handed to "
                             "ONNX Runtime in this locale (its file names are not UTF-8): run in a UTF-8 locale "
                             "(e.g. LC_ALL=C.UTF-8) or use an ASCII path") from None


def _computes_in_float16(model: Union[str, os.PathLike, onnx.ModelProto, bytes]) -> bool:
    """Whether the main graph computes in float16: a float16 input, weight or Cast result read by anything
    but a Cast (a mixed-precision export that stores weights, or takes inputs, as float16 and casts them to
    the float32 it computes in does not). A file is read once per version, without its external data."""
    if isinstance(model, onnx.ModelProto):
        return _graph_computes_in_float16(model.graph)
    if isinstance(model, bytes):
        try:
            return _graph_computes_in_float16(onnx.load_from_string(model).graph)
        except Exception:  # noqa: BLE001 - ONNX Runtime says what is wrong with the bytes
            return False
    try:
        stat = os.stat(model)
    except OSError:  # ONNX Runtime says what is wrong with the path
        return False
    return _file_computes_in_float16(os.path.realpath(model), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _file_computes_in_float16(path: str, mtime_ns: int, size: int) -> bool:
    """:func:`_computes_in_float16` of a file version (a bench times each model at every batch size)."""
    try:
        return _graph_computes_in_float16(onnx.load(path, load_external_data=False).graph)
    except Exception:  # noqa: BLE001 - ONNX Runtime says what is wrong with the file
        return False


def _graph_computes_in_float16(graph: onnx.GraphProto) -> bool:
    half = onnx.TensorProto.FLOAT16
    halves = {tensor.name for tensor in graph.initializer if tensor.data_type == half}
    halves.update(value.name for value in graph.input if value.type.tensor_type.elem_type == half)
    halves.update(node.output[0] for node in graph.node if node.op_type == "Cast" and node.output
                  and any(a.name == "to" and a.i == half for a in node.attribute))
    return any(node.op_type != "Cast" and halves.intersection(node.input) for node in graph.node)


FLOAT_TENSOR_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)")


def float_output_names(session: Any) -> list[str]:
    """The outputs of an ONNX Runtime session that are float tensors (not labels, strings or sequences)."""
    return [out.name for out in session.get_outputs() if out.type in FLOAT_TENSOR_TYPES]


def _light_source(ort: Any, model: onnx.ModelProto, store: Any, options: Any, held: list) -> bytes:
    """The bytes of a small copy of ``model``, with ``options`` set so that ONNX Runtime finds the
    data of its large tensors: the model's folder for data files, external initializers for tensors
    held in memory (no serialized copy of them). Falls back to the complete model where that cannot
    work (onnxruntime before 1.19, a held tensor inside a subgraph or of a type numpy cannot hand over)."""
    from onnx import numpy_helper

    from .model_io import handover_copy, has_stubs, materialize

    light, handed = handover_copy(model, store)
    if not handed and not has_stubs(model):
        return model.SerializeToString()
    unused = _unused_initializers(light)  # ONNX Runtime drops them before it takes the handed-over values
    if unused:
        kept = [tensor for tensor in light.graph.initializer if tensor.name not in unused]
        del light.graph.initializer[:]
        light.graph.initializer.extend(kept)
        if light.ir_version < 4:  # IR 3 lists every initializer as an input: the unused ones go from both
            inputs = [value for value in light.graph.input if value.name not in unused]
            del light.graph.input[:]
            light.graph.input.extend(inputs)
        handed = [(name, tensor) for name, tensor in handed if name not in unused]
    version = tuple(int(part) for part in ort.__version__.split(".")[:2] if part.isdigit())
    names, values = [], []
    try:
        if version < (1, 19):
            raise ValueError("no external initializer folder before onnxruntime 1.19")
        if any(store.original(tensor) is not None for graph in _subgraphs(model.graph) for tensor in graph.initializer):
            raise ValueError("held tensors inside subgraphs")
        for name, tensor in handed:
            array = numpy_helper.to_array(tensor)
            if array.dtype.kind not in "fiub" or array.dtype.itemsize not in (1, 2, 4, 8) \
                    or array.dtype.name.startswith(("bfloat", "float8")):
                raise ValueError(f"{array.dtype} cannot be handed over to onnxruntime as it is")
            values.append(ort.OrtValue.ortvalue_from_numpy(array))
            held.append(array)
            names.append(name)
    except Exception:  # noqa: BLE001 - any of the reasons above: hand over the complete model
        held.clear()
        complete = onnx.ModelProto()
        complete.CopyFrom(model)
        return materialize(complete, store).SerializeToString()
    if store.base_dir is not None:
        _check_utf8_path(str(store.base_dir))
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(store.base_dir))
    if names:
        options.add_external_initializers(names, values)
    return light.SerializeToString()


def _unused_initializers(model: onnx.ModelProto) -> set[str]:
    """Main-graph initializers that nothing reads (no node at any depth, no graph output) and that are
    not overridable graph inputs (IR 4 on; IR 3 lists every initializer as an input)."""
    from .layers import overridable_initializers, unused_initializers

    return unused_initializers(model) - overridable_initializers(model)


def _subgraphs(graph: onnx.GraphProto):
    for node in graph.node:
        for attribute in node.attribute:
            subs = [attribute.g] if attribute.HasField("g") else []
            for sub in subs + list(attribute.graphs):
                yield sub
                yield from _subgraphs(sub)
