"""Rewrite each chosen node into its factorized pair of ops (through onnx-graphsurgeon).

- Conv → ``<node>.enc``: Conv with ``group = g``, ``c → g·r`` channels and the original kernel,
  strides, pads, auto_pad and dilations; then ``<node>.dec``: 1x1 Conv ``g·r → f`` with the
  original bias. Pointwise-first: ``<node>.enc`` is a 1x1 Conv with ``group = g``, ``c → g·r``,
  and ``<node>.dec`` the original kernel, pads and dilations, ``g·r → f``, with the bias.
- Gemm → two Gemms: the first keeps ``transA`` and ``alpha``, the second adds ``beta·C``.
- MatMul → two MatMuls (activations of any rank).

New weights are named after the old one (``conv3.weight.enc`` / ``.dec``), the tensor between the
pair after the node's output (``<output>.enc``). The node's output keeps its name, so graph outputs
and consumers are untouched. Model-level fields that onnx-graphsurgeon does not carry are restored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .decompose import GroupedFactors, pointwise_decoder_to_patch
from .layers import POINTWISE_FIRST, Layer
from .model_io import opset_version


@dataclass(frozen=True)
class Rewrite:
    """One node to replace, the factors that replace it, and an optional correction (length ``f``)
    added to the layer's output, folded into the decoder's bias where the bias is a constant."""

    layer: Layer
    factors: GroupedFactors
    bias_shift: Optional[np.ndarray] = None


def _weight_dtype(tensor: gs.Tensor) -> np.dtype:
    if isinstance(tensor, gs.Constant):
        return np.dtype(tensor.values.dtype)
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is not None and producer.op == "Constant":
        return np.dtype(producer.attrs["value"].values.dtype)
    raise ValueError(f"weight '{tensor.name}' is not a constant")


def _conv_pair(node: gs.Node, rewrite: Rewrite, dtype: np.dtype) -> list[gs.Node]:
    layer, factors = rewrite.layer, rewrite.factors
    x, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
    spatial = layer.weight_shape[2:]
    width = layer.in_channels // factors.groups
    enc_weight = gs.Constant(f"{weight.name}.enc", factors.encoder.reshape(
        factors.groups * factors.rank, width, *spatial).astype(dtype))
    dec_weight = gs.Constant(f"{weight.name}.dec", factors.decoder.reshape(
        layer.out_features, factors.groups * factors.rank, *([1] * len(spatial))).astype(dtype))
    middle = gs.Variable(f"{y.name}.enc", dtype=y.dtype)
    enc_attrs = dict(node.attrs)
    enc_attrs["group"] = factors.groups
    if "kernel_shape" in enc_attrs:
        enc_attrs["kernel_shape"] = list(spatial)
    dec_inputs = [middle, dec_weight] + list(node.inputs[2:3])
    return [
        gs.Node("Conv", f"{node.name}.enc", enc_attrs, [x, enc_weight], [middle]),
        gs.Node("Conv", f"{node.name}.dec", {"kernel_shape": [1] * len(spatial)}, dec_inputs, [y]),
    ]


def _conv_pointwise_first_pair(node: gs.Node, rewrite: Rewrite, dtype: np.dtype) -> list[gs.Node]:
    layer, factors = rewrite.layer, rewrite.factors
    x, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
    spatial = layer.weight_shape[2:]
    width = layer.in_channels // factors.groups
    channels = factors.groups * factors.rank
    enc_weight = gs.Constant(f"{weight.name}.enc", factors.encoder.reshape(
        channels, width, *([1] * len(spatial))).astype(dtype))
    dec_weight = gs.Constant(f"{weight.name}.dec", pointwise_decoder_to_patch(factors.decoder, layer.kernel).reshape(
        layer.out_features, channels, *spatial).astype(dtype))
    middle = gs.Variable(f"{y.name}.enc", dtype=y.dtype)
    enc_attrs = {"kernel_shape": [1] * len(spatial), "group": factors.groups}
    dec_attrs = {key: value for key, value in node.attrs.items() if key != "group"}
    dec_inputs = [middle, dec_weight] + list(node.inputs[2:3])
    return [
        gs.Node("Conv", f"{node.name}.enc", enc_attrs, [x, enc_weight], [middle]),
        gs.Node("Conv", f"{node.name}.dec", dec_attrs, dec_inputs, [y]),
    ]


def _gemm_pair(node: gs.Node, rewrite: Rewrite, dtype: np.dtype, opset: int) -> list[gs.Node]:
    factors = rewrite.factors
    x, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
    trans_b = int(node.attrs.get("transB", 0))
    # W ≈ D·E with E: (r, c), D: (f, r); Gemm uses B' = Wᵀ, stored transposed unless transB.
    enc = factors.encoder if trans_b else factors.encoder.T
    dec = factors.decoder if trans_b else factors.decoder.T
    enc_weight = gs.Constant(f"{weight.name}.enc", np.ascontiguousarray(enc).astype(dtype))
    dec_weight = gs.Constant(f"{weight.name}.dec", np.ascontiguousarray(dec).astype(dtype))
    middle = gs.Variable(f"{y.name}.enc", dtype=y.dtype)
    enc_inputs: list = [x, enc_weight]
    dec_inputs: list = [middle, dec_weight]
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
        dec_inputs.append(node.inputs[2])
    elif opset < 11:  # C is required before opset 11
        dec_inputs.append(gs.Constant(f"{weight.name}.dec.zero_bias", np.zeros(factors.decoder.shape[0], dtype)))
    if opset < 11:
        enc_inputs.append(gs.Constant(f"{weight.name}.enc.zero_bias", np.zeros(factors.rank, dtype)))
    enc_attrs = {"transA": int(node.attrs.get("transA", 0)), "transB": trans_b,
                 "alpha": float(node.attrs.get("alpha", 1.0))}
    dec_attrs = {"transB": trans_b, "beta": float(node.attrs.get("beta", 1.0))}
    return [
        gs.Node("Gemm", f"{node.name}.enc", enc_attrs, enc_inputs, [middle]),
        gs.Node("Gemm", f"{node.name}.dec", dec_attrs, dec_inputs, [y]),
    ]


def _matmul_pair(node: gs.Node, rewrite: Rewrite, dtype: np.dtype) -> list[gs.Node]:
    factors = rewrite.factors
    x, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
    enc_weight = gs.Constant(f"{weight.name}.enc", np.ascontiguousarray(factors.encoder.T).astype(dtype))
    dec_weight = gs.Constant(f"{weight.name}.dec", np.ascontiguousarray(factors.decoder.T).astype(dtype))
    middle = gs.Variable(f"{y.name}.enc", dtype=y.dtype)
    return [
        gs.Node("MatMul", f"{node.name}.enc", {}, [x, enc_weight], [middle]),
        gs.Node("MatMul", f"{node.name}.dec", {}, [middle, dec_weight], [y]),
    ]


def _shift_output(dec: gs.Node, rewrite: Rewrite, shift: np.ndarray, dtype: np.dtype) -> list[gs.Node]:
    """Add ``shift`` to the decoder's output: into its constant bias (Conv) or ``C`` (Gemm, as
    ``shift/beta``), else through an ``Add`` node, which is returned."""
    layer = rewrite.layer
    name = f"{layer.weight}.dec.bias"
    bias = dec.inputs[2] if len(dec.inputs) > 2 else None
    scale = 1.0
    if layer.op == "Gemm":
        scale = float(dec.attrs.get("beta", 1.0))
    foldable = layer.op in ("Conv", "Gemm") and scale != 0.0 and (bias is None or isinstance(bias, gs.Constant))
    if foldable:
        value = shift / scale if bias is None else np.asarray(bias.values, np.float64) + shift / scale
        constant = gs.Constant(name, np.asarray(value).astype(dtype))
        if bias is None:
            dec.inputs.append(constant)
        else:
            dec.inputs[2] = constant
        return []
    y = dec.outputs[0]
    middle = gs.Variable(f"{y.name}.nobias", dtype=y.dtype)
    dec.outputs[0] = middle
    spatial = len(layer.weight_shape) - 2 if layer.op == "Conv" else 0
    constant = gs.Constant(name, shift.reshape(-1, *([1] * spatial)).astype(dtype))
    return [gs.Node("Add", f"{layer.name}.bias", {}, [middle, constant], [y])]


def rewrite_model(model: onnx.ModelProto, rewrites: Sequence[Rewrite]) -> onnx.ModelProto:
    """A new model with every node in ``rewrites`` replaced by its factorized pair."""
    if not rewrites:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    opset = opset_version(model)
    graph = gs.import_onnx(model)
    nodes = {node.name: node for node in graph.nodes}
    for rewrite in rewrites:
        node = nodes[rewrite.layer.name]
        dtype = _weight_dtype(node.inputs[1])
        if node.op == "Conv" and rewrite.layer.order == POINTWISE_FIRST:
            pair = _conv_pointwise_first_pair(node, rewrite, dtype)
        elif node.op == "Conv":
            pair = _conv_pair(node, rewrite, dtype)
        elif node.op == "Gemm":
            pair = _gemm_pair(node, rewrite, dtype, opset)
        else:
            pair = _matmul_pair(node, rewrite, dtype)
        if rewrite.bias_shift is not None:
            alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
            pair += _shift_output(pair[-1], rewrite, alpha * np.asarray(rewrite.bias_shift, np.float64), dtype)
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.extend(pair)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    new = gs.export_onnx(graph, do_type_check=False)
    _restore_model_fields(new, model)
    return new


def _restore_model_fields(new: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Carry over what onnx-graphsurgeon's export drops or changes."""
    new.ir_version = original.ir_version
    del new.opset_import[:]
    new.opset_import.extend(original.opset_import)
    new.producer_name = original.producer_name
    new.producer_version = original.producer_version
    new.domain = original.domain
    new.model_version = original.model_version
    new.doc_string = original.doc_string
    new.graph.name = original.graph.name
    new.graph.doc_string = original.graph.doc_string
    del new.metadata_props[:]
    new.metadata_props.extend(original.metadata_props)
    if not new.functions and original.functions:
        new.functions.extend(original.functions)


def add_provenance(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Add (or replace) ``onnx_alds.*`` keys in ``metadata_props``."""
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
