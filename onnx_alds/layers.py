"""Find the layers that can be factorized: Conv, Gemm and MatMul nodes with a constant weight.

Every candidate node becomes a :class:`Layer`; those that cannot or should not be factorized carry a
``skip_reason`` in plain English, so nothing is dropped silently. The folded weight matrix ``W``
(``f × c·κ``, mapping inputs to outputs) is read on demand by :func:`folded_weight`.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .decompose import candidate_groups, pointwise_matrix

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
LAYER_OPS = ("Conv", "Gemm", "MatMul")
SPATIAL_FIRST = "spatial-first"  # k×k conv c → g·r, then 1x1 g·r → f (ALDS)
POINTWISE_FIRST = "pointwise-first"  # 1x1 conv c → g·r, then k×k g·r → f
ORDERS = (SPATIAL_FIRST, POINTWISE_FIRST)


@dataclass(frozen=True)
class Layer:
    """One Conv/Gemm/MatMul node, its weight, size and cost, and why it is skipped (if it is)."""

    name: str
    op: str
    input: str  # the activation the weight multiplies
    output: str
    weight: str
    weight_shape: tuple[int, ...]
    out_features: int  # f
    in_channels: int  # c
    kernel: int  # κ, product of the kernel dims (1 for Gemm/MatMul)
    params: int  # f·c·κ
    positions: Optional[int]  # output positions per run at the resolved input shape
    groups: tuple[int, ...]  # candidate group counts
    skip_reason: Optional[str] = None
    stored_transposed: bool = False  # weight stored as (c, f): MatMul, and Gemm with transB = 0
    pointwise_first_ok: bool = False  # a k×k Conv with stride 1 and output size = input size
    order: str = SPATIAL_FIRST

    @property
    def cols(self) -> int:
        return self.in_channels * self.kernel

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """Shape of the matrix that is decomposed: ``f × c·κ``, or ``f·κ × c`` pointwise-first."""
        if self.order == POINTWISE_FIRST:
            return self.out_features * self.kernel, self.in_channels
        return self.out_features, self.cols

    @property
    def macs(self) -> Optional[int]:
        return None if self.positions is None else self.params * self.positions

    @property
    def compressible(self) -> bool:
        return self.skip_reason is None


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node of the main graph a unique name (``<op>_<index>``), in place."""
    seen: Counter = Counter()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while seen[name]:
            name = f"{name}_{seen[name]}"
        seen[name] += 1
        node.name = name


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and outputs of ``Constant`` nodes holding a tensor, by name."""
    tensors = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    return tensors


def _use_counts(graph: onnx.GraphProto, counts: Counter) -> None:
    for node in graph.node:
        counts.update(name for name in node.input if name)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _use_counts(attribute.g, counts)
            for sub in attribute.graphs:
                _use_counts(sub, counts)
    counts.update(output.name for output in graph.output)


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> Optional[int]:
    """Multiply-accumulates of any Conv/Gemm/MatMul node, from its tensor shapes (None if unknown)."""
    if node.op_type == "Conv":
        weight, output = shapes.get(node.input[1]), shapes.get(node.output[0])
        if weight is None or output is None:
            return None
        return int(np.prod(weight)) * output[0] * int(np.prod(output[2:]))
    if node.op_type in ("Gemm", "MatMul"):
        left, output = shapes.get(node.input[0]), shapes.get(node.output[0])
        if left is None or output is None or not left:
            return None
        inner = left[0] if node.op_type == "Gemm" and _attr(node, "transA", 0) else left[-1]
        return int(np.prod(output)) * int(inner)
    return None


def _positions(op: str, output_shape: Optional[tuple[int, ...]]) -> Optional[int]:
    if output_shape is None:
        return None
    if op == "Conv":
        return int(output_shape[0] * np.prod(output_shape[2:]))
    return int(np.prod(output_shape[:-1])) if len(output_shape) > 1 else 1


def find_layers(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], *,
                exclude: Sequence[str] = (), max_groups: int = 16, channel_multiple: int = 1) -> list[Layer]:
    """Every Conv/Gemm/MatMul node of the main graph with its weight, in graph order.

    ``exclude`` holds glob patterns matched against node and weight names; ``channel_multiple``
    restricts the candidate group counts (see :func:`onnx_alds.decompose.candidate_groups`).
    """
    constants = constant_tensors(model)
    uses: Counter = Counter()
    _use_counts(model.graph, uses)
    layers = []
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        layer = _describe(node, constants, uses, shapes, exclude, max_groups, channel_multiple)
        if layer is not None:
            layers.append(layer)
    return layers


def _describe(node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto], uses: Counter,
              shapes: Mapping[str, tuple[int, ...]], exclude: Sequence[str], max_groups: int,
              channel_multiple: int) -> Optional[Layer]:
    weight_name = node.input[1]
    tensor = constants.get(weight_name)
    shape = tuple(int(d) for d in tensor.dims) if tensor is not None else tuple(shapes.get(weight_name, ()))
    reason: Optional[str] = None
    f = c = kernel = 0
    if node.op_type == "Conv":
        if len(shape) >= 3:
            f, c, kernel = shape[0], shape[1], int(np.prod(shape[2:]))
        group = int(_attr(node, "group", 1))
        if group != 1:
            reason = ("depthwise conv" if c == 1 and group > 1 else f"grouped conv (group={group})") + \
                     " is left as it is"
    elif node.op_type == "Gemm":
        if len(shape) == 2:
            f, c = (shape[0], shape[1]) if _attr(node, "transB", 0) else (shape[1], shape[0])
        kernel = 1
    else:  # MatMul: y = x @ B with B of shape (c, f)
        if tensor is not None and len(shape) != 2:
            reason = f"weight is not a 2-D matrix (shape {shape})"
        elif len(shape) == 2:
            c, f = shape
        kernel = 1
    if tensor is None:
        if node.op_type == "MatMul" and weight_name not in shapes:
            return None  # a product of two activations (attention): not a weight layer
        reason = reason or "weight is not a constant (computed at run time)"
    elif reason is None and tensor.data_type not in FLOAT_TYPES:
        reason = f"weight type {onnx.TensorProto.DataType.Name(tensor.data_type)} is not float"
    elif reason is None and uses[weight_name] > 1:
        reason = f"weight is shared by {uses[weight_name]} uses"
    if reason is None and any(fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(weight_name, p)
                              for p in exclude):
        reason = "excluded by the user (--exclude)"
    groups: tuple[int, ...] = ()
    in_shape, out_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
    pointwise_ok = (node.op_type == "Conv" and kernel > 1 and reason is None
                    and all(s == 1 for s in _attr(node, "strides", [1]))
                    and in_shape is not None and out_shape is not None and len(in_shape) == len(out_shape)
                    and tuple(in_shape[2:]) == tuple(out_shape[2:]))
    if reason is None and f and c:
        groups = candidate_groups(c, f, kernel, max_groups if node.op_type == "Conv" else 1,
                                  channel_multiple=channel_multiple)
        if not groups:
            reason = f"factorization would not shrink it ({f}x{c * kernel} weight)"
    return Layer(
        name=node.name, op=node.op_type, input=node.input[0], output=node.output[0], weight=weight_name,
        weight_shape=shape, out_features=f, in_channels=c, kernel=kernel, params=f * c * kernel,
        positions=_positions(node.op_type, shapes.get(node.output[0])), groups=groups, skip_reason=reason,
        stored_transposed=node.op_type == "MatMul" or (node.op_type == "Gemm" and not _attr(node, "transB", 0)),
        pointwise_first_ok=pointwise_ok,
    )


def with_order(layer: Layer, order: str, *, max_groups: int, channel_multiple: int = 1) -> Layer:
    """The layer decomposed in ``order``, with its candidate groups for that order."""
    if order == layer.order:
        return layer
    if order == POINTWISE_FIRST and not layer.pointwise_first_ok:
        raise ValueError(f"layer '{layer.name}' cannot be factorized pointwise-first")
    ordered = replace(layer, order=order)
    rows, cols = ordered.matrix_shape
    groups = candidate_groups(layer.in_channels, rows, cols // layer.in_channels, max_groups,
                              channel_multiple=channel_multiple)
    return replace(ordered, groups=groups)


def folded_weight(layer: Layer, constants: Mapping[str, onnx.TensorProto], *, patch: bool = False) -> np.ndarray:
    """The matrix the layer's order decomposes (float64): ``f × (c·κ)``, mapping input patches to
    outputs, or ``f·κ × c`` pointwise-first (unless ``patch``, which always gives ``f × (c·κ)``)."""
    weight = numpy_helper.to_array(constants[layer.weight]).astype(np.float64)
    if layer.order == POINTWISE_FIRST and not patch:
        return pointwise_matrix(weight)
    if layer.stored_transposed:
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def iter_total_params(model: onnx.ModelProto) -> Iterator[int]:
    """Element counts of every numeric constant of the model (initializers and Constant nodes)."""
    for tensor in constant_tensors(model).values():
        yield int(np.prod(tensor.dims)) if tensor.dims else 1
