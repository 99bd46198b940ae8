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
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .errors import (InternalCheckError, ModelLoadError, OnnxAldsError, RuntimeResourceError, UnsupportedModelError,
                     first_line, one_line, runtime_error_text)
from .model_io import (TensorStore, check_input_shapes, checkable_copy, fixed_batch, graph_inputs, has_stubs,
                       model_bytes, opset_version, show_input_shapes, sized_inputs)

log = logging.getLogger(__name__)

MIN_OPSET = 7  # the oldest ai.onnx opset ONNX Runtime runs
_RUNTIME_LIMIT = 1 << 30  # models above this many bytes are not loaded into ONNX Runtime by the checks
_RUN_LIMIT = 1 << 27  # ... nor run on sample inputs above this many bytes
# what ONNX Runtime says when it has no schema, kernel or opset for an op of another domain (a custom op):
# a model it cannot run for that reason is accepted with a note, not refused
CUSTOM_OP_UNKNOWN = ("is not a registered function/op", "ValidateOpsetForDomain", "No Op registered",
                     "Could not find an implementation")
_DIRECT_CHECK_BYTES = 1 << 26  # larger models go to onnx.checker as a small copy (see _onnx_check)
_PROTOBUF_LIMIT = 2**31 - 2**26


@dataclass
class InputCheck:
    """What the input check found: notes for the report and whether ONNX Runtime ran the model."""

    notes: list[str] = field(default_factory=list)
    runtime_outputs: Optional[dict[str, tuple[tuple[int, ...], str]]] = None  # name → (shape, dtype) on probe inputs
    runtime_loads: bool = False
    probe_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # --input-shape dims used by the probe
    sample_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the calibration arrays' (batch 1)
    finite_outputs: frozenset = frozenset()  # float outputs finite (and far from overflow) on the probe inputs
    probe_where: Optional[str] = None  # where the probe ran at sizes the tool chose ("dynamic dims set to 64")


def _unknown_default_domain_op(model: onnx.ModelProto) -> Optional[str]:
    """The first op of the standard domain (main graph or subgraphs) that ONNX does not define, or None."""
    from .layers import iter_graphs

    for _, graph in iter_graphs(model.graph):
        for node in graph.node:
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
                return node.op_type
    return None


def check_input_model(model: onnx.ModelProto, store: Optional[TensorStore] = None,
                      input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                      sample_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> InputCheck:
    """Refuse a model that is not valid ONNX, with one line naming what is wrong (raises
    :class:`ModelLoadError` / :class:`UnsupportedModelError`); return notes and runtime facts.

    ``store``: ``model`` is light (:func:`onnx_alds.model_io.open_model`); its weights are not read
    by onnx.checker, and ONNX Runtime reads them itself. ``sample_shapes``: full shapes of inputs whose
    dynamic dims ``input_shapes`` leaves open, as the calibration arrays give them (batch 1): where the
    probe at dynamic dims of 1 fails, it is tried there first (:func:`_probe_elsewhere`)."""
    _check_structure(model)
    result = InputCheck(probe_shapes=check_input_shapes(model, input_shapes))
    result.sample_shapes = dict(sample_shapes or {})
    default_domain = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if len(set(default_domain)) > 1:  # the same version twice (skl2onnx writes that) is one opset
        raise ModelLoadError(f"the model imports the ai.onnx opset {len(default_domain)} times "
                             f"({', '.join(map(str, default_domain))}); keep one entry and export it again")
    opset = opset_version(model)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"the model uses opset {opset}, older than {MIN_OPSET}, which ONNX Runtime no longer runs; convert it "
            "first, e.g. onnx.version_converter.convert_version(model, 13)")
    size = model_bytes(model, store)
    try:
        checked = _onnx_check(model, store, size, full_check=False)
    except RuntimeResourceError:
        raise
    except Exception as exc:
        unknown = _unknown_default_domain_op(model)
        if unknown is not None:
            raise ModelLoadError(
                f"the model uses '{unknown}' in the standard ai.onnx domain, where ONNX has no such op (ONNX Runtime "
                "writes its internal ops there when it saves a session optimized at level EXTENDED or above); give "
                "the model as exported, or one saved at ORT_ENABLE_BASIC") from None
        raise ModelLoadError(f"the model is not valid ONNX (onnx.checker: {one_line(exc)}); fix the model "
                             "or export it again") from None
    if not checked:
        result.notes.append("model over 2 GB: onnx.checker skipped on the input")
    _refuse_dilated_same_padding(model)
    from .shapes import static_copy

    stub = static_copy(model, {}, stub_weights=True)
    try:
        shape_inference.infer_shapes(stub, check_type=True, strict_mode=True)
    except Exception as exc:
        message = first_line(exc)
        if "No Op registered" in message or "schema" in message.lower():
            result.notes.append(f"shape inference does not know every op ({message[:120]})")
        else:
            raise ModelLoadError(f"the model is inconsistent (shape inference: {message}); "
                                 + _inconsistency_fix(stub)) from None
    if size > _RUNTIME_LIMIT:
        result.notes.append("model over 1 GB: not loaded into ONNX Runtime by the checks")
        return result
    try:
        from .runtime import make_session

        session = make_session(model, "cpu", store=store, prepack=False)
    except ImportError:
        return result
    except ModelLoadError:  # a path ONNX Runtime cannot take: said as it is
        raise
    except Exception as exc:
        message = first_line(exc)
        if "not installed" in message:
            return result
        custom = sorted({node.domain for node in model.graph.node if node.domain not in ("", "ai.onnx", "ai.onnx.ml")})
        # no kernel (or no schema, or no opset, for another domain's op) is no reason to refuse: anything
        # else (a type error, an invalid graph) is a model ONNX Runtime cannot run, custom ops or not
        reason = runtime_error_text(exc)
        if "NOT_IMPLEMENTED" in message or "NotImplemented" in message or "not supported" in reason or (
                custom and any(sign in message for sign in CUSTOM_OP_UNKNOWN)):  # a kernel ONNX Runtime lacks
            result.notes.append(f"ONNX Runtime (CPU) cannot load the input model ({reason}); the output is "
                                "checked by onnx.checker only")
            return result
        raise_if_out_of_resources(exc)
        raise ModelLoadError(f"ONNX Runtime refuses the model ({reason}); {_runtime_refusal_fix()}") from None
    result.runtime_loads = True
    if size <= _RUN_LIMIT:
        result.runtime_outputs = _probe_run(session, model, result)
    return result


def _onnx_check(model: onnx.ModelProto, store: Optional[TensorStore], size: int, *, full_check: bool) -> bool:
    """``onnx.checker`` on the model; False when skipped (too large to check).

    A small model is checked as it is. A light or large one is checked as a small copy whose large
    tensors are external data (:func:`onnx_alds.model_io.checkable_copy`, which checks the size of
    their data itself) written with empty stand-in data files to a temporary folder: the checker
    reads the graph, not the weights, so neither the whole model nor a serialized copy of it (two,
    with the checker's own) is ever held.
    """
    if size < _DIRECT_CHECK_BYTES and not has_stubs(model):
        onnx.checker.check_model(model, full_check=full_check)
        return True
    light, locations = checkable_copy(model, store)
    if light.ByteSize() >= _PROTOBUF_LIMIT:
        return False
    import tempfile
    from pathlib import Path

    try:
        folder = tempfile.TemporaryDirectory(prefix="onnx-alds-check-")
    except OSError as exc:
        raise _temporary_copy_failed(exc, tempfile.gettempdir()) from None
    with folder:
        root = Path(folder.name).resolve()
        try:
            for location in locations:
                stand_in = (root / location).resolve()
                if stand_in.is_relative_to(root) and stand_in != root:  # else the checker names the bad location
                    stand_in.parent.mkdir(parents=True, exist_ok=True)
                    stand_in.touch()
            path = root / "model.onnx"
            path.write_bytes(light.SerializeToString())
        except OSError as exc:  # a full temporary folder is not the model's fault
            raise _temporary_copy_failed(exc, str(root.parent)) from None
        del light
        onnx.checker.check_model(str(path), full_check=full_check)
    return True


def _temporary_copy_failed(exc: OSError, where: str) -> RuntimeResourceError:
    import errno

    fix = ("raise the limit on the size of files a process may write (ulimit -f), which another folder does not "
           "change" if exc.errno == errno.EFBIG else "free space there or point TMPDIR to another folder")
    return RuntimeResourceError(f"writing the small copy of the model that onnx.checker reads, in the temporary folder "
                                f"'{where}', failed ({exc.strerror or exc}); {fix}, and run again")


def _only_batch_dynamic(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """True when every dynamic input dim is a first (batch) dim or given by ``shapes`` (--input-shape):
    then the probe inputs have real shapes, and a failed run means the model cannot run."""
    return all(spec.name in shapes or all(isinstance(d, int) for d in spec.dims[1:]) for spec in graph_inputs(model))


_DATA_FIELDS = {"raw_data", "string_data"}  # tensor payloads: bytes by design, not names


def _non_utf8(message) -> bool:
    """True when any string field of ``message`` (recursively, tensor payloads aside) is not UTF-8:
    protobuf then hands it over as bytes, or raises when it is read."""
    for descriptor, value in message.ListFields():
        if descriptor.name in _DATA_FIELDS:
            continue
        if descriptor.type == descriptor.TYPE_STRING:
            values = value if descriptor.is_repeated else [value]
            if any(isinstance(item, bytes) for item in values):
                return True
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            items = value if descriptor.is_repeated else [value]
            if descriptor.message_type.name == "TensorProto":
                items = [item for item in items if item.ByteSize() < 1 << 16]  # names of large tensors: below
            if any(_non_utf8(item) for item in items):
                return True
    return False


def _shadowed_name(graph: onnx.GraphProto, outer: set[str]) -> Optional[tuple[str, str]]:
    """(node, name) of the first If/Loop/Scan body that defines a name an enclosing graph defines."""
    defined = {value.name for value in graph.input} | {init.name for init in graph.initializer} | \
        {out for node in graph.node for out in node.output if out}
    scope = outer | defined
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                inner = {value.name for value in sub.input} | {init.name for init in sub.initializer} | \
                    {out for n in sub.node for out in n.output if out}
                clash = sorted(inner & scope)
                if clash:
                    return node.name or node.op_type, clash[0]
                found = _shadowed_name(sub, scope)
                if found:
                    return found
    return None


def _check_structure(model: onnx.ModelProto) -> None:
    """Refuse what onnx.checker lets through but nothing downstream can handle: names that are not
    UTF-8, function-attribute references outside a function, sparse tensors (not carried through the
    rewrite), graph inputs or outputs without a tensor type, a graph without outputs."""
    from .layers import iter_graphs

    try:
        broken = _non_utf8(model) or any(isinstance(init.name, bytes) for _, graph in iter_graphs(model.graph)
                                         for init in graph.initializer)
    except UnicodeDecodeError:
        broken = True
    if broken:
        raise ModelLoadError("the model holds names or text that are not valid UTF-8 (the file is corrupt); "
                             "export it again")
    if not model.graph.output:
        raise ModelLoadError("the model declares no graph outputs, so it computes nothing; export it again")
    for value in model.graph.input:
        if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.elem_type:
            raise UnsupportedModelError(f"graph input '{value.name}' is not a typed tensor; onnx-alds feeds tensor "
                                        "inputs with an element type (fix or re-export the model)")
    for value in model.graph.output:  # sequences and maps (a classifier's ZipMap) are carried, not compared
        kind = value.type.WhichOneof("value")
        if kind is None or (kind == "tensor_type" and not value.type.tensor_type.elem_type):
            raise UnsupportedModelError(f"graph output '{value.name}' has no type; onnx-alds needs typed outputs "
                                        "(fix or re-export the model)")
    shadowed = _shadowed_name(model.graph, set())
    if shadowed:
        raise UnsupportedModelError(f"a subgraph of node '{shadowed[0]}' defines '{shadowed[1]}' again, a name its "
                                    "outer graph already defines; onnx-alds needs every name unique across nested "
                                    "graphs (its rewrite maps tensors by name): rename it and export again")
    for _, graph in iter_graphs(model.graph):
        if graph.sparse_initializer:
            raise UnsupportedModelError(f"the model holds sparse initializers ('{graph.sparse_initializer[0].values.name}'"
                                        "), which onnx-alds cannot carry through its rewrite yet; make them dense first")
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.ref_attr_name:
                    raise ModelLoadError(f"attribute '{attribute.name}' of node {_node_label(node)} refers to a "
                                         f"function attribute ('{attribute.ref_attr_name}') outside any function; "
                                         "fix the model")
                if attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
                    raise UnsupportedModelError(
                        f"node {_node_label(node)} holds a sparse tensor attribute, which onnx-alds cannot carry "
                        "through its rewrite yet; make it dense first")


def _node_label(node: onnx.NodeProto) -> str:
    """``'name'``, or for a node without a name its op and first output (what a user can find it by)."""
    if node.name:
        return f"'{node.name}'"
    return f"{node.op_type} (unnamed, output '{node.output[0] if node.output else ''}')"


def _type_words(dtype: np.dtype) -> str:
    return "strings" if dtype.kind in "OUS" else f"values of type {dtype}"


def _probe_feeds(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> Optional[dict[str, np.ndarray]]:
    """Seeded inputs at the declared dims (``shapes`` where given, other dynamic dims set to 1, or to the value
    of a dim named by an expression of them: :func:`onnx_alds.model_io.sized_inputs`), or None when a type has
    no sample."""
    rng = np.random.default_rng(0)
    feeds = {}
    sized = sized_inputs(graph_inputs(model), 1, given={name: dims for name, dims in shapes.items() if dims})
    for spec in graph_inputs(model):
        shape = sized[spec.name]
        if math.prod(shape) > 1 << 24:
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


_RESOURCE_SIGNS = ("pthread_create", "Resource temporarily unavailable", "bad_alloc", "Failed to allocate memory")


def raise_if_out_of_resources(exc: BaseException, fix: str = "retry when other jobs have finished, or with "
                                                            "fewer threads") -> None:
    """Raise :class:`RuntimeResourceError` when ONNX Runtime failed for want of threads or memory (the
    machine's state, not the model's fault nor a bug); its whole message is searched (the sign can sit
    past the first line's length). ``fix``: what to do, said after the cause."""
    text = " ".join(str(exc).split())
    found = [text.index(sign) for sign in _RESOURCE_SIGNS if sign in text]
    if found:
        raise RuntimeResourceError(f"ONNX Runtime could not get threads or memory ({text[min(found):][:160]}): the "
                                   f"machine is out of them, the model is not at fault; {fix}") from None


RANDOM_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial")


def random_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes whose outputs are random at run time, as ``'name' (Op)``: the random generators and a
    ``Dropout`` in training mode (``training_mode`` a constant true with a ratio above 0, opset 12 on; or
    ``is_test=0`` before opset 7), as ``torch.onnx.export(..., training=TrainingMode.TRAINING)`` writes it."""
    from .layers import constant_tensors, is_standard, iter_graphs

    constants = constant_tensors(model)
    producers = {output: node for _, graph in iter_graphs(model.graph) for node in graph.node for output in node.output}
    opset = opset_version(model)

    def value(name: str, default: float) -> float:
        if not name:
            return default
        while name not in constants and name in producers and producers[name].op_type in ("Identity", "Cast"):
            name = producers[name].input[0]  # a constant passed on (Identity(True), Cast to bool)
        tensor = constants.get(name)
        return float(numpy_helper.to_array(tensor).ravel()[0]) if tensor is not None and \
            int(np.prod(tensor.dims)) == 1 else float("nan")  # not a constant: unknown

    found = []
    for _, graph in iter_graphs(model.graph):
        for node in graph.node:
            if not is_standard(node):
                continue
            random = node.op_type in RANDOM_OPS
            if node.op_type == "Dropout":
                if opset >= 12:
                    training = value(node.input[2] if len(node.input) > 2 else "", 0.0)
                    ratio = value(node.input[1] if len(node.input) > 1 else "", 0.5)
                    random = training == 1.0 and not ratio == 0.0
                elif opset < 7:
                    random = not any(a.name == "is_test" and a.i for a in node.attribute)
            if random:
                found.append(f"'{node.name or node.output[0]}' ({node.op_type}"
                             + (" in training mode)" if node.op_type == "Dropout" else ")"))
    return found


# ops whose output for one sample depends on the others run with it: a quantization scale taken over the whole
# tensor (onnxruntime.quantization.quantize_dynamic writes DynamicQuantizeLinear; com.microsoft fuses it into
# DynamicQuantizeMatMul), and batch norm in training mode (batch statistics)
BATCH_COUPLING_OPS = {("", "DynamicQuantizeLinear"): "takes its quantization scale over each whole run",
                      ("com.microsoft", "DynamicQuantizeMatMul"): "takes its quantization scale over each whole run",
                      ("", "BatchNormalization"): "normalizes with the statistics of each whole run (training mode)"}


def batch_coupling_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes through which a sample's outputs depend on the other samples run with it, as ``'name' (Op)
    WHAT`` (:data:`BATCH_COUPLING_OPS`; a BatchNormalization only with ``training_mode=1``)."""
    from .layers import iter_graphs

    found = []
    for _, graph in iter_graphs(model.graph):
        for node in graph.node:
            domain = "" if node.domain in ("", "ai.onnx") else node.domain
            what = BATCH_COUPLING_OPS.get((domain, node.op_type))
            if what is None or (node.op_type == "BatchNormalization"
                                and not any(a.name == "training_mode" and a.i for a in node.attribute)):
                continue
            found.append(f"'{node.name or node.output[0]}' ({node.op_type}) {what}")
    return found


def _runtime_refusal_fix() -> str:
    """The fix for a model ONNX Runtime refuses or cannot run: the model's, unless ONNX Runtime's own
    environment variables (``ORT_*``, e.g. ``ORT_LOAD_CONFIG_FROM_MODEL``) are set, which change how it
    loads and runs any model: then those first."""
    settings = sorted(name for name in os.environ if name.startswith("ORT_"))
    if settings:
        return (f"ONNX Runtime's environment variables are set ({', '.join(settings)}): unset them and run "
                "again; if it still fails, fix the model or export it again")
    return "fix the model or export it again"


def _inconsistency_fix(stub: onnx.ModelProto) -> str:
    """What to do about a model shape inference refuses: where the graph passes without its ``value_info``
    (the intermediate shapes an exporter or a tool declared), drop them; else export it again."""
    if not stub.graph.value_info:
        return "fix the model or export it again"
    bare = onnx.ModelProto()
    bare.CopyFrom(stub)
    del bare.graph.value_info[:]
    try:
        shape_inference.infer_shapes(bare, check_type=True, strict_mode=True)
    except Exception:  # noqa: BLE001 - inconsistent without them too
        return "fix the model or export it again"
    return ("its value_info (the intermediate shapes it declares) disagrees with its ops: drop them (del "
            "model.graph.value_info[:] in Python, then onnx.save) or export it again")


def _refuse_dilated_same_padding(model: onnx.ModelProto) -> None:
    """A Conv with ``auto_pad`` SAME_UPPER/SAME_LOWER and a dilation above 1 is valid ONNX that ONNX Runtime
    never runs (its pads are computed for dilation 1 only), whatever the input shapes: refused naming the
    node (ONNX Runtime's own error names its internal copy, or is hidden by dynamic dims). Raises
    :class:`ModelLoadError`."""
    from .layers import is_standard, iter_graphs

    for _, graph in iter_graphs(model.graph):
        for node in graph.node:
            if node.op_type != "Conv" or not is_standard(node):
                continue
            attrs = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
            pad = attrs.get("auto_pad", b"NOTSET")
            pad = pad.decode() if isinstance(pad, bytes) else str(pad)
            dilations = list(attrs.get("dilations", []))
            if pad in ("SAME_UPPER", "SAME_LOWER") and any(d != 1 for d in dilations):
                raise ModelLoadError(
                    f"Conv '{node.name or node.output[0]}' has dilations {dilations} with auto_pad {pad}, which "
                    "ONNX Runtime does not run (it computes SAME pads for dilation 1 only); export it with explicit "
                    "pads (at stride 1, (kernel - 1) · dilation per axis, split between both sides)")


def _first_dim_that_runs(session, model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> Optional[int]:
    """A first dim (2, 4 or 8) at which the model runs where it failed at 1, its inputs' dynamic first dim
    set to it and every other dim as in ``shapes``; None when it fails at each (or no input's first dim is
    dynamic)."""
    dynamic = [spec for spec in graph_inputs(model) if spec.dims and not isinstance(spec.dims[0], int)
               and spec.name in shapes]
    if not dynamic:
        return None
    for size in (2, 4, 8):
        feeds = _probe_feeds(model, {**shapes, **{spec.name: (size, *shapes[spec.name][1:]) for spec in dynamic}})
        if feeds is None:
            return None
        try:
            _run_quietly(session, feeds)
        except Exception:  # noqa: BLE001 - not at this size either
            continue
        return size
    return None


def _probe_run(session, model: onnx.ModelProto, found: InputCheck) -> Optional[dict[str, tuple[tuple[int, ...], str]]]:
    """Run the model once on seeded inputs; refuse it when they have the model's real shapes."""
    # refuse only when the probe inputs are surely legal: real shapes and float values (integer inputs
    # may need values a zero probe lacks: lengths, positions ...)
    refuse = _only_batch_dynamic(model, found.probe_shapes) and all(
        spec.dtype.kind == "f" for spec in graph_inputs(model))
    feeds = _probe_feeds(model, found.probe_shapes)
    if feeds is None:
        return None
    try:
        empty = None if refuse else _unsafe_sizes(model, {name: feed.shape for name, feed in feeds.items()},
                                                  largest=None, inferred=False)
        if empty is not None:  # dims the tool set to 1 (ONNX Runtime's kernels can divide by an empty size: the
            raise RuntimeError(f"not run: {empty}")  # process killed, no message; at the model's own shapes: its run)
        values = _run_quietly(session, feeds)
    except Exception as exc:
        message = runtime_error_text(exc)
        if refuse:
            given = {spec.name: found.probe_shapes[spec.name] for spec in graph_inputs(model)
                     if spec.name in found.probe_shapes and not all(isinstance(d, int) for d in spec.dims[1:])}
            if given:  # dims the user chose (--input-shape) took part: they may be what does not fit
                raise ModelLoadError(f"ONNX Runtime cannot run the model at the input shapes given "
                                     f"({show_input_shapes(given, ' ')}: "
                                     f"{message}); check that the --input-shape values fit the model") from None
            runs_at = None if message.startswith("not run: ") else _first_dim_that_runs(session, model,
                                                                                        found.probe_shapes)
            if runs_at is not None:  # the first dim the tool set to 1 is no free batch (samples × time steps)
                chosen = {spec.name: found.probe_shapes[spec.name] for spec in graph_inputs(model)
                          if spec.name in found.probe_shapes and not isinstance(spec.dims[0], int)}
                runs = {name: (runs_at, *dims[1:]) for name, dims in chosen.items()}
                raise ModelLoadError(
                    f"ONNX Runtime cannot run the model with its dynamic first dim set to 1 "
                    f"({show_input_shapes(chosen, ' ')}: {message}), but it runs at {runs_at}: that dim is no free "
                    "batch (e.g. samples × time steps); give the sizes the model needs with --input-shape, e.g. "
                    + " ".join(f"--input-shape {shape}" for shape in show_input_shapes(runs, ' ').split(' '))
                ) from None
            raise ModelLoadError(f"ONNX Runtime cannot run the model ({message}); {_runtime_refusal_fix()}") from None
        raise_if_out_of_resources(exc)
        quoted = first_line(RuntimeError(message), 300)  # (its first line, as the refusals above quote it)
        if _only_batch_dynamic(model, found.probe_shapes):  # every dim was given: only the values can be at fault
            shapes = {spec.name: feeds[spec.name].shape for spec in graph_inputs(model) if spec.name in feeds}
            found.notes.append(f"ONNX Runtime could not run the model on probe inputs (at the input shapes "
                               f"{show_input_shapes(shapes, ' ')}, non-float inputs 0: {quoted}); the output is not "
                               "run-checked: check that these shapes fit together (--input-shape sets them) and "
                               "that ONNX Runtime runs the model on real inputs (onnx-alds validate)")
            return None
        elsewhere, tried = _probe_elsewhere(session, model, found)
        if elsewhere is None:
            found.notes.append(f"ONNX Runtime could not run the model on probe inputs (dynamic dims set to 1, "
                               f"non-float inputs 0: {quoted}); {'; '.join(tried)}: the output is not run-checked "
                               "(give every dynamic dim with --input-shape to check it)")
            return None
        shapes, values, where = elsewhere
        dynamic = {spec.name: shapes[spec.name] for spec in graph_inputs(model)
                   if not all(isinstance(d, int) for d in spec.dims[1:])}
        found.probe_shapes = shapes  # (the checks after compression run there too)
        found.probe_where = where.replace("its dynamic dims after the first", "dynamic dims") + (
            ", where the pre-check ran")
        found.notes.append(f"ONNX Runtime could not run the model with its dynamic dims set to 1 ({quoted}); it ran "
                           f"at {show_input_shapes(dynamic, ' ')} ({where}), where the output is run-checked (give "
                           "--input-shape to check it at the sizes you run it at)")
    names = [output.name for output in session.get_outputs()]
    found.finite_outputs = frozenset(name for name, value in zip(names, values) if _well_finite(value))
    return {name: _shape_and_type(value) for name, value in zip(names, values)}


PROBE_SIZES = (64, 224)  # dynamic dims after the first, tried where 1 does not run (a UNet halves H and W)


def _probe_elsewhere(session, model: onnx.ModelProto, found: InputCheck
                     ) -> tuple[Optional[tuple[dict[str, tuple[int, ...]], list, str]], list[str]]:
    """Where the probe at dynamic dims of 1 failed: the shapes, outputs and a few words on where of the first
    run that works, at the calibration arrays' sizes (``found.sample_shapes``), else with every dynamic dim
    after the first at each of :data:`PROBE_SIZES` (the first dim stays 1; ``found.probe_shapes`` as given),
    or None when none runs; and what became of each size tried (run and failed, or not run and why)."""
    specs = graph_inputs(model)
    tries = []
    if found.sample_shapes:
        tries.append(({spec.name: tuple(found.probe_shapes.get(spec.name) or found.sample_shapes.get(spec.name)
                                        or (d if isinstance(d, int) else 1 for d in spec.dims)) for spec in specs},
                      "the calibration arrays' sizes"))
    for size in PROBE_SIZES:
        tries.append((sized_inputs(specs, size, given=found.probe_shapes), f"its dynamic dims after the first set to "
                                                                            f"{size}"))
    tried = []
    for shapes, where in tries:
        feeds = _probe_feeds(model, shapes)
        unsafe = "too large" if feeds is None else _unsafe_sizes(model, shapes)
        if unsafe is not None:
            tried.append(f"at {where} not run ({unsafe})")
            continue
        try:
            return (shapes, _run_quietly(session, feeds), where), tried
        except Exception:  # noqa: BLE001 - not at these sizes either (out of memory there too: sizes we chose)
            tried.append(f"at {where} it failed too")
    return None, tried


PROBE_TENSOR_LIMIT = 1 << 27  # elements: a tensor larger than this at a size the tool chose is no probe of it


def _unsafe_sizes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], *,
                  largest: Optional[int] = PROBE_TENSOR_LIMIT, inferred: bool = True, complete: bool = False,
                  total: Optional[int] = None) -> Optional[str]:
    """Why not to run the model at ``shapes``, by ONNX shape inference there (weights stubbed, bodies included):
    a tensor it sizes empty along an axis after the second (a pool wider than its input: ONNX Runtime's
    kernels can divide by the empty size and kill the process), or of more than ``largest`` elements
    (attention over every pixel at 224 × 224); with ``inferred``, shape inference failing there; with
    ``complete``, a node output it cannot size (a size it cannot follow can empty a tensor unseen); with
    ``total``, node outputs holding more than ``total`` elements together. None when none of these."""
    from .layers import iter_graphs
    from .shapes import known_shapes, static_copy

    try:
        graph = shape_inference.infer_shapes(static_copy(model, shapes, stub_weights=True), data_prop=True).graph
    except Exception as exc:  # noqa: BLE001 - shapes that do not fit together
        return f"shape inference fails there: {first_line(exc, 120)}" if inferred else None
    bodies = [body for _, body in iter_graphs(graph)]
    sized = known_shapes([value for body in bodies for value in list(body.value_info) + list(body.output)])
    for name, dims in sized.items():  # (a pool inside an If branch too)
        if 0 in dims[2:]:  # (no channels is legal and runs: an empty weight's output, [1, 0, 6, 6])
            return f"tensor '{name}' would be empty, {'x'.join(map(str, dims))}"
        if largest is not None and math.prod(dims) > largest:
            return f"tensor '{name}' would hold {math.prod(dims):.3g} values"
    produced = [name for body in bodies for node in body.node for name in node.output if name]
    unsized = next((name for name in produced if name not in sized), None) if complete else None
    if unsized is not None:
        return f"shape inference cannot size tensor '{unsized}' there"
    if total is not None:
        held = sum(math.prod(sized[name]) for name in set(produced) if name in sized)
        if held > total:
            return f"its tensors would hold {held:.3g} values together"
    return None


VALUE_SIZED_OPS = ("NonZero", "NonMaxSuppression", "Compress", "Unique")  # output size: a count of values
_REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
# op → (input positions, what they are): the inputs whose values set the output's shape
SIZE_ARGUMENTS: dict[str, tuple[tuple[int, ...], str]] = {
    "Reshape": ((1,), "a shape"), "Expand": ((1,), "a shape"), "ConstantOfShape": ((0,), "a shape"),
    "Tile": ((1,), "repeats"), "Range": ((0, 1, 2), "limits"), "Slice": ((1, 2, 3, 4), "bounds"),
    "Pad": ((1, 3), "pads"), "Resize": ((2, 3), "scales or sizes"), "Upsample": ((1,), "scales"),
    "TopK": ((1,), "a k"), "OneHot": ((1,), "a depth"), "Split": ((1,), "split sizes"),
    "SplitToSequence": ((1,), "split sizes"), "Squeeze": ((1,), "axes"), "Unsqueeze": ((1,), "axes"),
    "CenterCropPad": ((1,), "a shape"), "Col2Im": ((1, 2), "a shape"), "MaxUnpool": ((2,), "a shape"),
    "DFT": ((1,), "a length"), "STFT": ((2, 3), "a frame length"), "AffineGrid": ((1,), "a size"),
    "BlackmanWindow": ((0,), "a size"), "HannWindow": ((0,), "a size"), "HammingWindow": ((0,), "a size"),
    "MelWeightMatrix": ((0, 1), "a size"),
    **{op: ((1,), "axes") for op in _REDUCE_OPS}}
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                          onnx.TensorProto.BFLOAT16})


_SHAPED_BY = {"ScatterND": 1, "ScatterElements": 1, "Scatter": 1}  # output shape: input 0's, whatever the indices
# (a Gather's output takes its indices' shape along the axis it gathers: a table cut to a computed length,
# indexed by positions, gives a tensor of the positions' size)


def value_sized_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Graph outputs whose size depends on the values computed, not only on the input shapes. Output name →
    the op that makes it so: a :data:`VALUE_SIZED_OPS` node (the non-zeros of a mask, the boxes kept by
    non-max suppression), a Loop (its trip count and condition may be computed), a node whose size argument
    (:data:`SIZE_ARGUMENTS`: a Slice's bounds, a TopK's k, a Reshape's shape ...) is computed from the
    values: from a float tensor the model computes from its inputs (an integer input used as a size, or
    sizes read off shapes with Shape/Size, stay as they are on both models), any of these in a body of a
    node on the way (If branches, Scan bodies, by the same rules), or an If whose condition is computed and
    whose branches declare outputs of different shapes. A compressed model computes slightly other values,
    so such an output can have another size than the original's on the same input."""
    sized = value_sized_tensors(model)
    return {output.name: sized[output.name] for output in model.graph.output if output.name in sized}


def value_sized_tensors(model: onnx.ModelProto, *, from_inputs: bool = False) -> dict[str, str]:
    """Every main-graph tensor whose size depends on the values computed (by the rules of
    :func:`value_sized_outputs`): tensor name → the op that makes it so. ``from_inputs``: a size argument
    computed from an input's values counts too (a sequence cut to the length an integer mask sums to)."""
    graph = model.graph
    computed = {i.name for i in graph.input if i.type.tensor_type.elem_type in _FLOAT_TYPES}  # values from floats
    float_constants = _float_constants(graph)
    input_valued = {i.name for i in graph.input} - float_constants  # values from the inputs' values
    return _sizes_from_values(graph, computed, input_valued, float_constants, from_inputs)


def _float_constants(graph: onnx.GraphProto) -> set[str]:
    """The graph's float initializers and float Constant outputs."""
    found = {init.name for init in graph.initializer if init.data_type in _FLOAT_TYPES}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and any(
                (a.type == onnx.AttributeProto.TENSOR and a.t.data_type in _FLOAT_TYPES)
                or a.name in ("value_float", "value_floats") for a in node.attribute):
            found.add(node.output[0])
    return found


def _sizes_from_values(graph: onnx.GraphProto, computed: set[str], input_valued: set[str],
                       float_constants: set[str], from_inputs: bool = False) -> dict[str, str]:
    """Tensor → why its size depends on the values, for :func:`value_sized_outputs`, walking ``graph`` in its
    (topological) order; ``computed`` (values from the model's float values) and ``input_valued`` (values
    from the inputs' values) grow as it goes, and a body sees its outer graph's sets."""
    sized: dict[str, str] = {}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        shaping = (inputs[:_SHAPED_BY[node.op_type]] if node.op_type in _SHAPED_BY else
                   inputs[1:2] if node.op_type in ("Gather", "GatherElements") else inputs)
        why = next((sized[name] for name in shaping if name in sized), None)
        bodies = [sub for attribute in node.attribute
                  for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs))]
        if node.op_type in ("Shape", "Size"):  # values: the input's shape
            from_values = outputs_valued = bool(why)
            why = None
        else:
            from_values = bool(bodies) or any(name in computed for name in inputs) or (
                any(name in input_valued for name in inputs) and any(name in float_constants for name in inputs))
            outputs_valued = from_values or any(name in input_valued for name in inputs)
            if why is None and node.op_type in VALUE_SIZED_OPS + ("Loop",):
                why = node.op_type
            elif why is None and node.op_type in SIZE_ARGUMENTS:
                positions, what = SIZE_ARGUMENTS[node.op_type]
                if any(p < len(node.input) and (node.input[p] in computed or (from_inputs and node.input[p] in
                                                                               input_valued)) for p in positions):
                    why = f"{node.op_type} with {what} computed at run time"
            for body in bodies if why is None else ():  # its formal inputs (a Loop's, a Scan's) come from values
                inner = _sizes_from_values(
                    body, computed | {i.name for i in body.input}, input_valued | {i.name for i in body.input},
                    float_constants | _float_constants(body), from_inputs)
                why = next(iter(inner.values()), None)
                if why:
                    break
            if why is None and node.op_type == "If" and node.input and node.input[0] in computed \
                    and _branch_shapes_differ(bodies):
                why = "If with a computed condition between branches of different shapes"
        for name in node.output:
            if not name:
                continue
            if from_values:
                computed.add(name)
            if outputs_valued:
                input_valued.add(name)
            if why:
                sized[name] = why
    return sized


def _branch_shapes_differ(branches: Sequence[onnx.GraphProto]) -> bool:
    """Whether two If branches declare outputs of different shapes (both declared, a dim differing)."""
    if len(branches) != 2:
        return False
    shapes = [[tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in out.type.tensor_type.shape.dim)
               if out.type.tensor_type.HasField("shape") else None for out in branch.output] for branch in branches]
    return any(a is not None and b is not None and a != b for a, b in zip(*shapes))


def _shape_and_type(value) -> tuple:
    """An output's shape and element type as ONNX Runtime returns it: an array's; a sequence's (a list) as
    its length and each element's, which may differ in shape; a map's (a dict) as its keys' count."""
    if isinstance(value, (list, tuple)):
        elements = tuple(_shape_and_type(item) for item in value)
        return ((len(value),) + tuple(shape for shape, _ in elements), "sequence of " + ",".join(
            sorted({kind for _, kind in elements})))
    if isinstance(value, dict):
        return ((len(value),), "map")
    return tuple(np.shape(value)), str(np.asarray(value).dtype)


def _well_finite(value) -> bool:
    """A float tensor whose values are all finite and far from overflow (a compressed model that computes
    the same function cannot turn it into NaN or infinity)."""
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        return False
    if value.size == 0:
        return True
    with np.errstate(all="ignore"):
        return bool(np.isfinite(value).all() and np.abs(value).max() < 0.01 * float(np.finfo(value.dtype).max))


def _value_signature(value: onnx.ValueInfoProto) -> tuple:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim) \
        if tensor.HasField("shape") else None
    return value.name, value.type.WhichOneof("value"), tensor.elem_type, dims


def check_output_model(new: onnx.ModelProto, original: onnx.ModelProto, found: InputCheck,
                       store: Optional[TensorStore] = None) -> None:
    """Raise :class:`InternalCheckError` unless ``new`` is valid, keeps ``original``'s interface and
    (when ONNX Runtime ran the original) loads and runs in ONNX Runtime with the same output shapes.
    ``store``: ``new`` is light (its dense weights are read through it)."""
    def fail(what: str) -> None:
        raise InternalCheckError(f"the compressed model {what}; this is a bug in onnx-alds: please report it "
                                 "with the model. Nothing was written")

    def declared_inputs(model: onnx.ModelProto) -> list[tuple]:
        """IR >= 4: every graph input (an initializer listed there is an overridable input);
        IR 3 lists every initializer as an input, so only the others count there."""
        initializers = {init.name for init in model.graph.initializer} if model.ir_version < 4 else set()
        return [_value_signature(v) for v in model.graph.input if v.name not in initializers]

    inputs_before, inputs_after = declared_inputs(original), declared_inputs(new)
    if inputs_before != inputs_after:
        fail("changed the graph inputs")
    if [_value_signature(v) for v in original.graph.output] != [_value_signature(v) for v in new.graph.output]:
        fail("changed the graph outputs")
    size = model_bytes(new, store)
    try:
        _onnx_check(new, store, size, full_check=True)
    except RuntimeResourceError:
        raise
    except Exception as exc:
        fail(f"fails onnx.checker ({first_line(exc)})")
    if not found.runtime_loads or size > _RUNTIME_LIMIT:
        return
    from .runtime import make_session

    try:
        session = make_session(new, "cpu", store=store, prepack=False)
    except Exception as exc:
        raise_if_out_of_resources(exc)
        fail(f"does not load in ONNX Runtime ({first_line(exc)})")
    if found.runtime_outputs is None:
        return
    feeds = _probe_feeds(new, found.probe_shapes)
    try:
        values = _run_quietly(session, feeds)
    except Exception as exc:
        raise_if_out_of_resources(exc)
        fail(f"does not run in ONNX Runtime on inputs the original runs on ({first_line(exc)})")
    names = [output.name for output in session.get_outputs()]
    value_sized = value_sized_outputs(original)
    for name, value in zip(names, values):
        expected = found.runtime_outputs.get(name)
        got = _shape_and_type(value)
        if name in value_sized and isinstance(value, np.ndarray) and expected is not None:
            # its size varies with the values (value_sized_outputs): its rank and type are checked
            expected, got = ((f"of rank {len(expected[0])}", expected[1]), (f"of rank {len(got[0])}", got[1]))
        if expected is not None and expected != got:
            fail(f"gives output '{name}' as {got[1]} {got[0]} where the original gives {expected[1]} {expected[0]}")
        if name in found.finite_outputs and isinstance(value, np.ndarray) and not np.isfinite(value).all():
            fail(f"gives NaN or infinite values in output '{name}' where the original's are finite")


RANDOM_SAMPLES = 4  # random inputs on which a data-free result's outputs are compared with the original's
RANDOM_CHECK_SECONDS = 5.0  # after this long, no further batch is run (one always is)


@dataclass(frozen=True)
class RandomCheck:
    """The outputs of a data-free result on random inputs (:func:`random_output_change`): ``change`` is the
    largest over the float outputs of the mean relative change ``‖y' − y‖₂ / ‖y‖₂`` per sample (None: not
    measured, ``reason`` says why), ``output`` the output it is of, ``outputs`` how many were compared,
    ``samples`` on how many random inputs."""

    change: Optional[float]
    samples: int = 0
    output: Optional[str] = None
    outputs: int = 0
    reason: Optional[str] = None
    fix: str = "measure the model with validate"  # what the report says to do when not measured
    sizes: Optional[str] = None  # where the tool chose the dynamic dims: "at x:1x64x32, dynamic dims set to 64"
    # per output of integers, booleans or strings (labels): (output, values that changed, values compared)
    changed: tuple[tuple[str, int, int], ...] = ()


def random_output_change(new: onnx.ModelProto, original: onnx.ModelProto, found: InputCheck,
                         store: Optional[TensorStore] = None) -> RandomCheck:
    """How far ``new``'s outputs moved from ``original``'s on :data:`RANDOM_SAMPLES` random inputs
    (:func:`onnx_alds.inputs.random_inputs`: standard normal floats, ids over their tables, masks of ones) at
    the checked input shapes, a batch at a time (a model that fixes its batch at that batch, else 1, else, where
    that fails, at the first dim ``--input-shape`` gives, each batch then one sample; no batch after
    :data:`RANDOM_CHECK_SECONDS`, the first always): per float output the mean over samples of
    ``‖y' − y‖₂ / ‖y‖₂`` (a sample all zeros in both models left out, one all zeros in the original alone
    taken over the output's mean norm on the others, as validate does; an output whose first dim is not the
    batch is one sample per batch; an output of one value per sample is taken over all samples' values at
    once, since one number's relative change says only how near 0 it is), and the largest over the outputs,
    so that an output left as it is does not hide a broken one. 1 is as far as outputs of zeros; not real
    data, but a data-free result that lost its original's predictions moved several times more than one that
    kept them (docs/ACCURACY.md). Outputs of integers, booleans or strings (a classifier's labels) are
    counted instead, as validate counts them: how many of their values changed (``changed``; every value of a
    batch whose output changed shape, as a value-sized NonZero's can); a ZipMap's
    sequence of maps is compared as the float tensor of its values, keys in order.
    One model's ONNX Runtime session at a time (the original's, then ``new``'s: no second copy of the
    weights held). ``store``: the models' dense weights are read through it (stubs)."""
    if found.runtime_loads and found.runtime_outputs is None and model_bytes(original, store) > _RUN_LIMIT:
        return RandomCheck(None, reason=f"the model is over the checks' run limit of {_RUN_LIMIT >> 20} MiB (loaded "
                                        "in ONNX Runtime to check it, not run)")
    if not found.runtime_loads or found.runtime_outputs is None:
        unfed = next((spec for spec in graph_inputs(original) if spec.dtype.kind not in "fiub"), None)
        if unfed is not None:  # (a string input: the checks draw no sample of it)
            return RandomCheck(None, reason=f"graph input '{unfed.name}' holds {_type_words(unfed.dtype)}, of which "
                                            "the checks draw no sample")
        return RandomCheck(None, reason="ONNX Runtime did not run the original in the checks")
    if model_bytes(original, store) > _RUNTIME_LIMIT:
        return RandomCheck(None, reason=f"the model is over the checks' limit of {_RUNTIME_LIMIT >> 30} GiB")
    scalar = next((spec.name for spec in graph_inputs(original) if not spec.dims), None)
    if scalar is not None:  # (validate stacks samples batch first too: it cannot feed one either)
        return RandomCheck(None, reason=f"graph input '{scalar}' is a scalar (rank 0), which no batch of samples "
                                        "feeds", fix=f"to measure the outputs with validate, export '{scalar}' with "
                                                     "shape [1] or [N]")
    import time

    from .inputs import random_inputs
    from .runtime import make_session

    def outputs(model: onnx.ModelProto, batches: Optional[int]) -> tuple[list[str], list[list]]:
        """The model's outputs on the first ``batches`` batches (None: as many as the time allows)."""
        session = make_session(model, "cpu", store=store, prepack=False)
        started, results = time.perf_counter(), []
        for start in range(0, count, batch):
            if len(results) == batches or (batches is None and results
                                           and time.perf_counter() - started >= RANDOM_CHECK_SECONDS):
                break
            results.append(_run_quietly(session, {name: array[start:start + batch] for name, array in arrays.items()}))
        return [output.name for output in session.get_outputs()], results

    given = {dims[0] for dims in found.probe_shapes.values() if dims}  # (--input-shape's first dim, else 1)
    try:
        batches = [max(fixed_batch(original) or 1, 1)]
    except UnsupportedModelError as exc:  # inputs fixing different first dims: no batch of samples feeds them
        return RandomCheck(None, reason=f"random inputs could not be run ({first_line(exc)})")
    if len(given) == 1 and given != {batches[0]}:  # a model that runs only at the first dim given (a Gemm whose
        batches.append(given.pop())  # input's first axis is its K): tried there once batch 1 fails
    tries = [(shapes, where, batch) for shapes, where in _random_check_sizes(original, found) for batch in batches]
    for index, (shapes, where, batch) in enumerate(tries):
        try:
            count = batch * math.ceil(RANDOM_SAMPLES / batch)
            arrays = {name: np.asarray(array) for name, array in
                      random_inputs(original, count, input_shapes=shapes, seed=0).arrays.items()}
            names, before = outputs(original, None)
            _, after = outputs(new, len(before))
            break
        except Exception as exc:  # (an input no random sample fits: no figure, and the reason)
            if where is None:
                raise_if_out_of_resources(exc)  # (at sizes the tool chose, it tries the next)
            if index == len(tries) - 1:  # (our own InputDataError whole: it says why)
                why = first_line(exc, 400) if isinstance(exc, OnnxAldsError) else runtime_error_text(exc)
                if where is None:
                    return RandomCheck(None, reason=f"random inputs could not be run ({why})")
                return RandomCheck(None, reason=f"random inputs could not be run at the sizes the tool chose (last "
                                                f"{where}: {why}); give every dynamic dim with --input-shape to run "
                                                "the check")
    # samples: one per row of the batch, or one per batch where the model only ran at the first dim given
    done = batch * len(before) if batch == batches[0] else len(before)
    ratios: dict[str, list[float]] = {}
    away_from_zero: dict[str, list[float]] = {}
    scale: dict[str, list[float]] = {}
    single: dict[str, list[np.ndarray]] = {}  # outputs of one value per sample: (original, new) values
    unbounded: list[str] = []  # float outputs holding Inf or NaN in the original
    changed: dict[str, list[int]] = {}  # labels: values changed, values compared
    for values_o, values_c in zip(before, after):
        for name, y, z in zip(names, values_o, values_c):
            y, z = _map_values(y), _map_values(z)
            if isinstance(y, np.ndarray) and y.dtype.kind in "iubUSO" and (y.size or np.size(z)):
                counts = changed.setdefault(name, [0, 0])
                if y.shape == np.shape(z):
                    counts[0] += int(np.count_nonzero(y != z))
                    counts[1] += int(y.size)
                else:  # (a value-sized output, NonZero's or TopK's of another k: its values no longer pair up)
                    counts[0] += max(int(y.size), int(np.size(z)))
                    counts[1] += max(int(y.size), int(np.size(z)))
                continue
            if isinstance(y, np.ndarray) and y.dtype.kind == "f" and y.size and not np.isfinite(y).all():
                unbounded.append(name)
            if isinstance(y, np.ndarray) and y.dtype.kind == "f" and y.size and y.shape == np.shape(z):
                rows = len(y) if y.ndim and len(y) == batch else 1
                y, z = (np.asarray(v, np.float64).reshape(rows, -1) for v in (y, z))
                if y.shape[1] == 1:  # |z − y| / |y| of one number is no direction, only how near 0 it is
                    single.setdefault(name, []).append(np.stack([y[:, 0], z[:, 0]]))
                    continue
                norms, moved = np.linalg.norm(y, axis=1), np.linalg.norm(z - y, axis=1)
                with np.errstate(all="ignore"):
                    ratios.setdefault(name, []).extend((moved / norms)[np.isfinite(norms) & (norms > 0)].tolist())
                # a sample all zeros in the original only: its change over the output's mean norm, below
                away_from_zero.setdefault(name, []).extend(moved[(norms == 0) & (moved > 0)].tolist())
                scale.setdefault(name, []).extend(norms[np.isfinite(norms) & (norms > 0)].tolist())
    for name, changes in away_from_zero.items():  # (as validate measures them; inf where every sample was zeros)
        reference = float(np.mean(scale[name])) if scale.get(name) else 0.0
        ratios[name].extend(change / reference if reference > 0 else math.inf for change in changes)
    means = {name: float(np.mean(values)) if np.all(np.isfinite(values)) else math.inf
             for name, values in ratios.items() if values}
    for name, pairs in single.items():  # one value per sample: the relative change of the values of all samples
        y, z = np.concatenate(pairs, axis=1)
        norm, moved = float(np.linalg.norm(y)), float(np.linalg.norm(z - y))
        if np.isfinite(norm) and np.isfinite(moved) and (norm > 0 or moved > 0):
            means[name] = moved / norm if norm > 0 else math.inf
    labels = tuple((name, counts[0], counts[1]) for name, counts in changed.items())
    if not means and unbounded:
        return RandomCheck(None, samples=done, changed=labels, sizes=where,
                           reason=f"the original's outputs hold Inf or NaN on the random inputs (first: "
                                  f"'{unbounded[0]}'), which no relative change measures")
    if not means:
        if not any(isinstance(value, np.ndarray) and value.dtype.kind == "f" for value in map(_map_values, before[0])):
            shown = ", ".join(f"'{name}' {_output_kind(value)}" for name, value in list(zip(names, before[0]))[:3])
            return RandomCheck(None, samples=done, changed=labels, sizes=where,
                               reason=f"the model has no float tensor output to compare (its outputs: {shown})")
        return RandomCheck(None, samples=done, changed=labels, sizes=where,
                           reason="no float output with a non-zero value to compare")
    worst = max(means, key=lambda name: means[name])
    return RandomCheck(means[worst], samples=done, output=worst, outputs=len(means), sizes=where, changed=labels)


def _map_values(value):
    """A ZipMap output (a sequence of maps of one key set, as ONNX Runtime returns it: a list of dicts) as the
    float array of its values, one row per map and keys in order; any other value as it is."""
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        keys = sorted(value[0])
        if all(sorted(row) == keys for row in value):
            try:
                return np.asarray([[row[key] for key in keys] for row in value], np.float64)
            except (TypeError, ValueError):
                return value
    return value


def _output_kind(value) -> str:
    """An ONNX Runtime output in a few words: its dtype, "a sequence of maps" (ZipMap), "a sequence of
    tensors", or its Python type."""
    if isinstance(value, np.ndarray):
        return str(value.dtype)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "a sequence of maps"
    if isinstance(value, list):
        return "a sequence of tensors"
    return type(value).__name__


def _random_check_sizes(model: onnx.ModelProto, found: InputCheck
                        ) -> list[tuple[dict[str, tuple[int, ...]], Optional[str]]]:
    """The input sizes the random check tries, in order, each with the words that say where the tool chose them
    (None: the shapes the user gave). Where the checked shapes leave dims after the first dynamic (the probe
    ran there at 1): every such dim at each of :data:`PROBE_SIZES` where :func:`_sized_for_random_check`
    finds the run bounded, then at 1, where the probe ran; where the probe itself ran at sizes the tool chose
    (``found.probe_where``), there."""
    specs = graph_inputs(model)
    open_dims = [spec.name for spec in specs if spec.name not in found.probe_shapes
                 and any(not isinstance(d, int) for d in spec.dims[1:])]
    if not open_dims:
        if found.probe_where is None:
            return [(dict(found.probe_shapes), None)]
        dynamic = {spec.name: found.probe_shapes[spec.name] for spec in specs if spec.name in found.probe_shapes
                   and any(not isinstance(d, int) for d in spec.dims[1:])}
        return [(dict(found.probe_shapes), f"at {show_input_shapes(dynamic, ' ')}, {found.probe_where}")]

    def at(size: int) -> dict[str, tuple[int, ...]]:
        return sized_inputs(specs, size, given=found.probe_shapes)

    def words(size: int) -> str:
        return f"at {show_input_shapes({name: at(size)[name] for name in open_dims}, ' ')}, dynamic dims set to {size}"

    return [(at(size), words(size)) for size in PROBE_SIZES if _sized_for_random_check(model, at(size))] + [
        (at(1), words(1))]


RANDOM_CHECK_ELEMENTS = 1 << 25  # values of all tensors together, at most, at a size the random check chooses


def _sized_for_random_check(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether the random check may run the model at ``shapes``, sizes the tool chose and no run has tried
    (:func:`_unsafe_sizes`): shape inference there sizes every node output of the main graph and of every
    If/Loop/Scan body (a size it cannot follow can empty a tensor, on which some ONNX Runtime kernels crash the
    process; a branch can expand to any size), none empty after its second axis, and all of them together
    hold at most :data:`RANDOM_CHECK_ELEMENTS` values (attention over every pixel at 64 × 64 held 4.5 GB)."""
    return _unsafe_sizes(model, shapes, largest=None, complete=True, total=RANDOM_CHECK_ELEMENTS) is None
