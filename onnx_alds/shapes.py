"""Concrete tensor shapes at a given input shape: ONNX shape inference first, one ONNX Runtime run
for whatever inference could not resolve (e.g. convolutions behind dynamic Pad nodes)."""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Optional

import numpy as np
import onnx
from onnx import helper, shape_inference

from .errors import runtime_error_text
from .model_io import graph_inputs

log = logging.getLogger(__name__)


_STUB_ELEMENTS = 4096  # initializers above this size are weights, never shape constants


def static_copy(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]], *,
                 stub_weights: bool = False) -> onnx.ModelProto:
    """A copy with the input dims fixed; with ``stub_weights``, large initializers keep only their
    type and dims (shape inference needs no more), so the copy stays small even for huge models."""
    copy = onnx.ModelProto()
    if stub_weights:
        graph = model.graph
        copy.CopyFrom(onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                                      functions=model.functions))
        copy.graph.name = graph.name
        copy.graph.node.extend(graph.node)
        copy.graph.input.extend(graph.input)
        copy.graph.output.extend(graph.output)
        copy.graph.value_info.extend(graph.value_info)
        for init in graph.initializer:
            if int(np.prod(init.dims)) > _STUB_ELEMENTS:
                stub = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims,
                                        data_location=onnx.TensorProto.EXTERNAL)
                stub.external_data.add(key="location", value="not-loaded")
                copy.graph.initializer.append(stub)
            else:
                copy.graph.initializer.append(init)
    else:
        copy.CopyFrom(model)
    for value in copy.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    return copy


def known_shapes(values: Iterable[onnx.ValueInfoProto]) -> dict[str, tuple[int, ...]]:
    """The fully known shapes among ``values`` (name → dims)."""
    shapes = {}
    for value in values:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def tensor_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]],
                  needed: Iterable[str], store=None, run_errors: Optional[list[str]] = None
                  ) -> dict[str, tuple[int, ...]]:
    """Shapes of the ``needed`` tensors (and every other one inference found).

    Tensors that neither shape inference nor an ONNX Runtime run can size are missing from the
    result; callers decide whether that is an error. ``store``: ``model`` is light (see
    :func:`onnx_alds.model_io.open_model`). ``run_errors``: where given, a failed ONNX Runtime run at
    ``input_shapes`` appends its reason (node and message) to it.
    """
    stubbed = static_copy(model, input_shapes, stub_weights=True)
    try:
        inferred = shape_inference.infer_shapes(stubbed, data_prop=True)
    except Exception as exc:  # inference fails on some custom ops; ONNX Runtime may still run them
        log.info("shape inference failed (%s); using ONNX Runtime for shapes", exc)
        inferred = stubbed
    from .layers import iter_graphs

    shapes: dict[str, tuple[int, ...]] = {}
    for _, graph in iter_graphs(inferred.graph):  # subgraphs (If/Loop/Scan bodies) have their own value_info
        for name, shape in known_shapes(list(graph.input) + list(graph.value_info) + list(graph.output)).items():
            shapes.setdefault(name, shape)
        for init in graph.initializer:
            shapes.setdefault(init.name, tuple(int(d) for d in init.dims))
    # only main-graph tensors can be graph outputs of the probe (a body's tensors cannot)
    main = {name for node in model.graph.node for name in node.output} | {v.name for v in model.graph.input}
    missing = sorted((set(needed) - set(shapes)) & main)
    if missing:
        shapes.update(_shapes_from_runtime(static_copy(model, input_shapes), input_shapes, missing, store, run_errors))
    return shapes


def _shapes_from_runtime(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]],
                         names: list[str], store=None, run_errors: Optional[list[str]] = None
                         ) -> dict[str, tuple[int, ...]]:
    """Run the model once on zero inputs (masks of ones: an all-zero attention mask can empty a sequence cut to
    the mask's length) with ``names`` added as graph outputs."""
    try:
        from .runtime import make_session
    except ImportError:  # pragma: no cover - runtime.py itself always imports
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {output.name for output in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(helper.ValueInfoProto(name=name))
    try:
        session = make_session(probe, "cpu", store=store, prepack=False)
        feeds = {spec.name: (np.ones if "mask" in spec.name.lower() and spec.dtype.kind in "iub" else np.zeros)(
            input_shapes[spec.name], dtype=spec.dtype) for spec in graph_inputs(model)}  # (as random_inputs' masks)
        outputs = session.run(names, feeds)
    except Exception as exc:
        log.info("ONNX Runtime could not size %d tensors: %s", len(names), str(exc).splitlines()[0])
        if run_errors is not None:
            run_errors.append(runtime_error_text(exc))
        return {}
    return {name: tuple(int(d) for d in value.shape) for name, value in zip(names, outputs)}
