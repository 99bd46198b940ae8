"""Check the input model once, before any work, and the output model before it is written.

Input: ``onnx.checker`` and strict shape inference (a model that fails them is refused with one line
that says what is wrong), then a load in ONNX Runtime when it is installed (a model it cannot load,
e.g. a custom op or a type without a CPU kernel, is accepted with a note: it is valid ONNX).

Output: ``onnx.checker`` (full check), the graph inputs and outputs (names, element types, dims)
equal to the input's, and, when ONNX Runtime ran the input, the output loads and runs there too on
the same seeded inputs with outputs of the same shapes and types. A miss raises
:class:`~onnx_alds.errors.InternalCheckError`: the tool never writes a model it could not verify.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import shape_inference

from .errors import InternalCheckError, ModelLoadError, UnsupportedModelError
from .model_io import graph_inputs, opset_version

log = logging.getLogger(__name__)

MIN_OPSET = 7  # the oldest ai.onnx opset ONNX Runtime runs
_RUNTIME_LIMIT = 1 << 30  # models above this many bytes are not loaded into ONNX Runtime by the checks
_RUN_LIMIT = 1 << 27  # ... nor run on sample inputs above this many bytes
_PROTOBUF_LIMIT = 2**31 - 2**26


@dataclass
class InputCheck:
    """What the input check found: notes for the report and whether ONNX Runtime ran the model."""

    notes: list[str] = field(default_factory=list)
    runtime_outputs: Optional[dict[str, tuple[tuple[int, ...], str]]] = None  # name → (shape, dtype) on probe inputs
    runtime_loads: bool = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:240]


def check_input_model(model: onnx.ModelProto) -> InputCheck:
    """Refuse a model that is not valid ONNX, with one line naming what is wrong (raises
    :class:`ModelLoadError` / :class:`UnsupportedModelError`); return notes and runtime facts."""
    result = InputCheck()
    _check_text_fields(model)
    default_domain = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if len(default_domain) > 1:
        raise ModelLoadError(f"the model imports the ai.onnx opset {len(default_domain)} times "
                             f"({', '.join(map(str, default_domain))}); keep one entry and export it again")
    opset = opset_version(model)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"the model uses opset {opset}, older than {MIN_OPSET}, which ONNX Runtime no longer runs; convert it "
            "first, e.g. onnx.version_converter.convert_version(model, 13)")
    size = model.ByteSize()
    if size < _PROTOBUF_LIMIT:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise ModelLoadError(f"the model is not valid ONNX (onnx.checker: {_first_line(exc)}); fix the model "
                                 "or export it again") from None
    else:
        result.notes.append("model over 2 GB: onnx.checker skipped on the input")
    from .shapes import static_copy

    stub = static_copy(model, {}, stub_weights=True)
    try:
        shape_inference.infer_shapes(stub, check_type=True, strict_mode=True)
    except Exception as exc:
        message = _first_line(exc)
        if "No Op registered" in message or "schema" in message.lower():
            result.notes.append(f"shape inference does not know every op ({message[:120]})")
        else:
            raise ModelLoadError(f"the model is inconsistent (shape inference: {message}); fix the model or export "
                                 "it again (stale value_info can be dropped with onnx-simplifier)") from None
    if size > _RUNTIME_LIMIT:
        result.notes.append("model over 1 GB: not loaded into ONNX Runtime by the checks")
        return result
    try:
        from .runtime import make_session

        session = make_session(model, "cpu")
    except ImportError:
        return result
    except Exception as exc:
        message = _first_line(exc)
        if "not installed" in message:
            return result
        custom = sorted({node.domain for node in model.graph.node if node.domain not in ("", "ai.onnx", "ai.onnx.ml")})
        if "NOT_IMPLEMENTED" in message or "NotImplemented" in message or custom:
            result.notes.append(f"ONNX Runtime (CPU) cannot load the input model ({message[:160]}); the output is "
                                "checked by onnx.checker only")
            return result
        raise ModelLoadError(f"ONNX Runtime refuses the model ({message.split(': ', 1)[-1][:200]}); fix the model "
                             "or export it again") from None
    result.runtime_loads = True
    if size <= _RUN_LIMIT:
        result.runtime_outputs = _probe_run(session, model, refuse=_only_batch_dynamic(model))
    return result


def _only_batch_dynamic(model: onnx.ModelProto) -> bool:
    """True when every dynamic input dim is a first (batch) dim: then the probe inputs are real shapes."""
    return all(all(isinstance(d, int) for d in spec.dims[1:]) for spec in graph_inputs(model))


def _check_text_fields(model: onnx.ModelProto) -> None:
    """Refuse names that are not UTF-8 (protobuf hands them over as bytes, or raises, when read) and
    sparse tensor attributes (not carried through the rewrite)."""
    from .layers import iter_graphs

    def text(*values) -> None:
        if any(isinstance(value, bytes) for value in values):
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "not UTF-8")

    try:
        for _, graph in iter_graphs(model.graph):
            for node in graph.node:
                text(node.name, node.op_type, node.domain, *node.input, *node.output)
                for attribute in node.attribute:
                    text(attribute.name)
                    if attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
                        raise UnsupportedModelError(
                            f"node '{node.name}' holds a sparse tensor attribute, which onnx-alds cannot carry "
                            "through its rewrite yet; make it dense first")
            for value in list(graph.input) + list(graph.output) + list(graph.value_info) + list(graph.initializer):
                text(value.name)
        for entry in model.metadata_props:
            text(entry.key, entry.value)
    except UnicodeDecodeError:
        raise ModelLoadError("the model holds names that are not valid UTF-8 (the file is corrupt); "
                             "export it again") from None


def _probe_feeds(model: onnx.ModelProto) -> Optional[dict[str, np.ndarray]]:
    """Seeded inputs at the declared dims (dynamic dims set to 1), or None when a type has no sample."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in graph_inputs(model):
        shape = tuple(d if isinstance(d, int) else 1 for d in spec.dims)
        if int(np.prod(shape)) > 1 << 24:
            return None
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = np.zeros(shape, spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = np.ones(shape, spec.dtype)
        else:
            return None
    return feeds


def _run_quietly(session, feeds: dict[str, np.ndarray]) -> list:
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.log_severity_level = 4  # the error is reported by the caller, once
    return session.run(None, feeds, options)


def _probe_run(session, model: onnx.ModelProto, *, refuse: bool) -> Optional[dict[str, tuple[tuple[int, ...], str]]]:
    """Run the model once on seeded inputs; ``refuse``: a failure means the model cannot run at all."""
    feeds = _probe_feeds(model)
    if feeds is None:
        return None
    try:
        values = _run_quietly(session, feeds)
    except Exception as exc:
        message = _first_line(exc).split("Status Message: ")[-1]
        if refuse:
            raise ModelLoadError(f"ONNX Runtime cannot run the model ({message[:200]}); fix the model or export "
                                 "it again") from None
        log.info("probe run of the input model failed (dynamic dims set to 1): %s", message)
        return None
    names = [output.name for output in session.get_outputs()]
    return {name: (tuple(np.shape(value)), str(np.asarray(value).dtype)) for name, value in zip(names, values)}


def _value_signature(value: onnx.ValueInfoProto) -> tuple:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim) \
        if tensor.HasField("shape") else None
    return value.name, value.type.WhichOneof("value"), tensor.elem_type, dims


def check_output_model(new: onnx.ModelProto, original: onnx.ModelProto, found: InputCheck) -> None:
    """Raise :class:`InternalCheckError` unless ``new`` is valid, keeps ``original``'s interface and
    (when ONNX Runtime ran the original) loads and runs in ONNX Runtime with the same output shapes."""
    def fail(what: str) -> None:
        raise InternalCheckError(f"the compressed model {what}; this is a bug in onnx-alds: please report it "
                                 "with the model. Nothing was written")

    inputs_before = [_value_signature(v) for v in original.graph.input if v.name in {s.name for s in graph_inputs(original)}]
    inputs_after = [_value_signature(v) for v in new.graph.input if v.name in {s.name for s in graph_inputs(new)}]
    if inputs_before != inputs_after:
        fail("changed the graph inputs")
    if [_value_signature(v) for v in original.graph.output] != [_value_signature(v) for v in new.graph.output]:
        fail("changed the graph outputs")
    if new.ByteSize() < _PROTOBUF_LIMIT:
        try:
            onnx.checker.check_model(new, full_check=True)
        except Exception as exc:
            fail(f"fails onnx.checker ({_first_line(exc)})")
    if not found.runtime_loads or new.ByteSize() > _RUNTIME_LIMIT:
        return
    from .runtime import make_session

    try:
        session = make_session(new, "cpu")
    except Exception as exc:
        fail(f"does not load in ONNX Runtime ({_first_line(exc)})")
    if found.runtime_outputs is None:
        return
    feeds = _probe_feeds(new)
    try:
        values = _run_quietly(session, feeds)
    except Exception as exc:
        fail(f"does not run in ONNX Runtime on inputs the original runs on ({_first_line(exc)})")
    names = [output.name for output in session.get_outputs()]
    for name, value in zip(names, values):
        expected = found.runtime_outputs.get(name)
        got = (tuple(np.shape(value)), str(np.asarray(value).dtype))
        if expected is not None and expected != got:
            fail(f"gives output '{name}' as {got[1]} {got[0]} where the original gives {expected[1]} {expected[0]}")
