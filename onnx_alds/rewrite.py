"""Rewrite each chosen node into its factorized pair of ops (through onnx-graphsurgeon).

- Conv → ``<node>.enc``: Conv with ``group = g``, ``c → g·r`` channels and the original kernel,
  strides, pads, auto_pad and dilations; then ``<node>.dec``: 1x1 Conv ``g·r → f`` with the
  original bias. Pointwise-first: ``<node>.enc`` is a 1x1 Conv with ``group = g``, ``c → g·r``,
  and ``<node>.dec`` the original kernel, pads and dilations, ``g·r → f``, with the bias.
- Gemm → two Gemms: the first keeps ``transA`` and ``alpha``, the second adds ``beta·C``.
- MatMul → two MatMuls (activations of any rank).

- MatMul with the weight first (``y = W @ x``) → ``MatMul(dec, MatMul(enc, x))``.

New weights are named after the old one (``conv3.weight.enc`` / ``.dec``), the tensor between the
pair after the node's output (``<output>.enc``); a name the model already uses anywhere (a model
compressed before) gets a numeric suffix (``.enc.1``), so every name stays unique. The node's output
keeps its name, so graph outputs and consumers are untouched. Nodes inside If/Loop/Scan subgraphs are
rewritten in their own subgraph. Model-level fields that onnx-graphsurgeon does not carry (graph
inputs and outputs as declared, ``training_info``, functions, metadata ...) are restored, and for IR
version 3 every initializer is listed as a graph input, as that version requires.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from .decompose import GroupedFactors, pointwise_decoder_to_patch
from .layers import (POINTWISE_FIRST, Layer, constant_tensors, iter_graphs, overridable_initializers,
                     unused_initializers)
from .model_io import opset_version


@dataclass(frozen=True)
class Rewrite:
    """One node to replace, the factors that replace it, and an optional correction (length ``f``)
    added to the layer's output, folded into the decoder's bias where the bias is a constant."""

    layer: Layer
    factors: GroupedFactors
    bias_shift: Optional[np.ndarray] = None


class Names:
    """Every name a model uses, and fresh ones that collide with none of them: ``base``, else
    ``base.1``, ``base.2`` ... Node names and value names (tensors, initializers) are separate
    namespaces in ONNX and are kept apart here, so that a node named like its output tensor (common in
    hand-built graphs) still gets the pair ``<node>.enc``/``<node>.dec`` that ``bench --per-layer``
    looks for. Values are drawn from every graph and function of the model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.taken: set[str] = set()
        self.nodes_taken: set[str] = set()
        graphs = [graph for _, graph in iter_graphs(model.graph)]
        for info in model.training_info:
            graphs += [graph for _, graph in iter_graphs(info.initialization)]
            graphs += [graph for _, graph in iter_graphs(info.algorithm)]
        for graph in graphs:
            self.taken.update(value.name for value in list(graph.input) + list(graph.output) + list(graph.value_info))
            self.taken.update(init.name for init in graph.initializer)
            for node in graph.node:
                self.nodes_taken.add(node.name)
                self.taken.update(node.input)
                self.taken.update(node.output)
        for function in model.functions:
            for node in function.node:
                self.nodes_taken.add(node.name)
                self.taken.update(node.output)

    @staticmethod
    def _fresh(base: str, taken: set[str]) -> str:
        name, suffix = base, 0
        while name in taken:
            suffix += 1
            name = f"{base}.{suffix}"
        taken.add(name)
        return name

    def fresh(self, base: str) -> str:
        """A value (tensor or initializer) name no graph or function of the model uses."""
        return self._fresh(base, self.taken)

    def fresh_node(self, base: str) -> str:
        """A node name no graph or function of the model uses."""
        return self._fresh(base, self.nodes_taken)


FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
FLOAT16_SMALLEST_NORMAL = float(np.finfo(np.float16).tiny)  # 2^-14: below it float16 values are subnormal


def balanced_for_float16(factors: GroupedFactors) -> GroupedFactors:
    """The same product with each middle channel's encoder row ``e_k`` scaled by a power of two ``2⁻ⁿ`` and
    its decoder column by ``2ⁿ`` (exact in floating point), so that ``‖e_k‖₁`` is at most the largest
    row sum ``maxᵢ ‖wᵢ‖₁`` of the weight the factors represent, ``W ≈ D·E``, or 1 where that is larger.

    ``|e_k·x| ≤ ‖e_k‖₁·max|x|`` and ``|wᵢ·x| ≤ ‖wᵢ‖₁·max|x|``: the tensor between the pair then has no
    larger bound than the layer's own output or its input. With the singular values split evenly (√σ in each factor)
    ``‖e_k‖₁`` can exceed it by up to √(c·κ) (an input of 10⁴ per value through a 64-wide averaging row
    gives a middle value of 8·10⁴, past float16's 65504, while the output is 10⁴). A decoder column is
    raised only as far as its largest value stays below float16's largest / 2. Float16 factors only:
    bfloat16's range is float32's.

    Then a channel whose encoder row or decoder column holds only values below float16's smallest normal
    (2⁻¹⁴: subnormals keep fewer bits, and below 2⁻²⁴ nothing) gets the power of two that brings both
    maxima to their geometric mean (a weight of subnormals, exactly low rank, came out 2 % off), as far as
    the encoder's ``‖e_k‖₁`` stays within that bound and the decoder's largest value below float16's
    largest / 2."""
    encoder, decoder = factors.encoder, factors.decoder
    row_sums = np.zeros(decoder.shape[0])
    for group in range(factors.groups):  # maxᵢ ‖wᵢ‖₁ of D·E, one group's columns and 1024 rows at a time
        rows = slice(group * factors.rank, (group + 1) * factors.rank)
        for start in range(0, decoder.shape[0], 1024):
            row_sums[start:start + 1024] += np.abs(decoder[start:start + 1024, rows] @ encoder[rows]).sum(axis=1)
    bound = float(row_sums.max(initial=0.0))
    limit = max(bound, 1.0)  # ‖e_k‖₁ ≤ 1 bounds |e_k·x| by max|x|, which float16 holds too
    encoder_sums = np.abs(encoder).sum(axis=1)
    over = encoder_sums > limit
    decoder_max = np.abs(decoder).max(axis=0, initial=0.0)
    tiny = np.finfo(np.float64).tiny
    room = np.floor(np.log2(FLOAT16_MAX / 2 / np.maximum(decoder_max, tiny)))  # decoder may grow by 2^room
    steps = np.where(over, np.ceil(np.log2(np.where(over, encoder_sums, 1.0) / limit)), 0.0)
    steps = np.clip(np.minimum(steps, room), 0.0, None)  # encoder row k scaled by 2^-steps[k]
    encoder_max = np.abs(encoder).max(axis=1, initial=0.0) * np.exp2(-steps)
    low = ((np.minimum(encoder_max, decoder_max * np.exp2(steps)) < FLOAT16_SMALLEST_NORMAL)
           & (encoder_max > 0) & (decoder_max > 0) & (steps == 0))
    if low.any():  # lift the subnormal side, toward both maxima at their geometric mean
        want = np.round(0.5 * np.log2(np.where(low, decoder_max, 1.0) / np.where(low, encoder_max, 1.0)))
        grow = np.floor(np.log2(limit / np.maximum(encoder_sums, tiny)))  # encoder may grow by 2^grow
        steps = np.where(low, -np.clip(want, -room, np.maximum(grow, 0.0)), steps)
    if not steps.any():
        return factors
    scale = np.exp2(-steps)
    return replace(factors, encoder=encoder * scale[:, None], decoder=decoder / scale[None, :])


def _weight_dtype(layer: Layer) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(layer.weight_type))


def _conv_pair(node: gs.Node, rewrite: Rewrite, dtype: np.dtype, names: Names) -> list[gs.Node]:
    layer, factors = rewrite.layer, rewrite.factors
    x, y = node.inputs[0], node.outputs[0]
    spatial = layer.weight_shape[2:]
    width = layer.in_channels // factors.groups
    enc_weight = gs.Constant(names.fresh(f"{layer.weight}.enc"), factors.encoder.reshape(
        factors.groups * factors.rank, width, *spatial).astype(dtype))
    dec_weight = gs.Constant(names.fresh(f"{layer.weight}.dec"), factors.decoder.reshape(
        layer.out_features, factors.groups * factors.rank, *([1] * len(spatial))).astype(dtype))
    middle = gs.Variable(names.fresh(f"{y.name}.enc"), dtype=None)  # no declared type: value_info may be stale
    enc_attrs = dict(node.attrs)
    enc_attrs["group"] = factors.groups
    if "kernel_shape" in enc_attrs:
        enc_attrs["kernel_shape"] = list(spatial)
    dec_inputs = [middle, dec_weight] + list(node.inputs[2:3])
    return [
        gs.Node("Conv", names.fresh_node(f"{node.name}.enc"), enc_attrs, [x, enc_weight], [middle]),
        gs.Node("Conv", names.fresh_node(f"{node.name}.dec"), {"kernel_shape": [1] * len(spatial)}, dec_inputs, [y]),
    ]


def _conv_pointwise_first_pair(node: gs.Node, rewrite: Rewrite, dtype: np.dtype, names: Names) -> list[gs.Node]:
    layer, factors = rewrite.layer, rewrite.factors
    x, y = node.inputs[0], node.outputs[0]
    spatial = layer.weight_shape[2:]
    width = layer.in_channels // factors.groups
    channels = factors.groups * factors.rank
    enc_weight = gs.Constant(names.fresh(f"{layer.weight}.enc"), factors.encoder.reshape(
        channels, width, *([1] * len(spatial))).astype(dtype))
    dec_weight = gs.Constant(names.fresh(f"{layer.weight}.dec"), pointwise_decoder_to_patch(
        factors.decoder, layer.kernel).reshape(layer.out_features, channels, *spatial).astype(dtype))
    middle = gs.Variable(names.fresh(f"{y.name}.enc"), dtype=None)  # no declared type: value_info may be stale
    enc_attrs = {"kernel_shape": [1] * len(spatial), "group": factors.groups}
    dec_attrs = {key: value for key, value in node.attrs.items() if key != "group"}
    dec_inputs = [middle, dec_weight] + list(node.inputs[2:3])
    return [
        gs.Node("Conv", names.fresh_node(f"{node.name}.enc"), enc_attrs, [x, enc_weight], [middle]),
        gs.Node("Conv", names.fresh_node(f"{node.name}.dec"), dec_attrs, dec_inputs, [y]),
    ]


def _gemm_pair(node: gs.Node, rewrite: Rewrite, dtype: np.dtype, opset: int, names: Names) -> list[gs.Node]:
    factors, weight_name = rewrite.factors, rewrite.layer.weight
    x, y = node.inputs[0], node.outputs[0]
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    alpha = float(node.attrs.get("alpha", 1.0))
    # W ≈ D·E with E: (r, c), D: (f, r); Gemm uses B' = Wᵀ, stored transposed unless transB. Before opset 11
    # Gemm requires C: the encoder is then op(X)·(αEᵀ), a MatMul, which needs none (no zero C the budget does
    # not count), after a Transpose for transA
    matmul_encoder = opset < 11
    enc = factors.encoder.T * alpha if matmul_encoder else factors.encoder if trans_b else factors.encoder.T
    dec = factors.decoder if trans_b else factors.decoder.T
    enc_weight = gs.Constant(names.fresh(f"{weight_name}.enc"), np.ascontiguousarray(enc).astype(dtype))
    dec_weight = gs.Constant(names.fresh(f"{weight_name}.dec"), np.ascontiguousarray(dec).astype(dtype))
    middle = gs.Variable(names.fresh(f"{y.name}.enc"), dtype=None)  # no declared type: value_info may be stale
    dec_inputs: list = [middle, dec_weight]
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
        dec_inputs.append(node.inputs[2])
    elif opset < 11:  # C is required before opset 11 (a valid model has one): one zero, broadcast
        dec_inputs.append(gs.Constant(names.fresh(f"{weight_name}.dec.zero_bias"), np.zeros(1, dtype)))
    dec_attrs = {"transB": trans_b, "beta": float(node.attrs.get("beta", 1.0))}
    if opset < 7:  # before opset 7 a 1-D C broadcasts only when asked to
        dec_attrs["broadcast"] = 1
    if matmul_encoder:
        nodes = []
        if trans_a:
            x_t = gs.Variable(names.fresh(f"{x.name}.T"), dtype=None)
            nodes.append(gs.Node("Transpose", names.fresh_node(f"{node.name}.enc.transpose"), {"perm": [1, 0]},
                                 [x], [x_t]))
            x = x_t
        nodes.append(gs.Node("MatMul", names.fresh_node(f"{node.name}.enc"), {}, [x, enc_weight], [middle]))
    else:
        nodes = [gs.Node("Gemm", names.fresh_node(f"{node.name}.enc"),
                         {"transA": trans_a, "transB": trans_b, "alpha": alpha}, [x, enc_weight], [middle])]
    return nodes + [gs.Node("Gemm", names.fresh_node(f"{node.name}.dec"), dec_attrs, dec_inputs, [y])]


def _matmul_pair(node: gs.Node, rewrite: Rewrite, dtype: np.dtype, names: Names) -> list[gs.Node]:
    layer, factors = rewrite.layer, rewrite.factors
    y = node.outputs[0]
    x = node.inputs[1] if layer.weight_first else node.inputs[0]
    middle = gs.Variable(names.fresh(f"{y.name}.enc"), dtype=None)  # no declared type: value_info may be stale
    enc_name, dec_name = names.fresh(f"{layer.weight}.enc"), names.fresh(f"{layer.weight}.dec")
    enc_node, dec_node = names.fresh_node(f"{node.name}.enc"), names.fresh_node(f"{node.name}.dec")
    if layer.weight_first:  # y = W @ x ≈ D @ (E @ x)
        enc_weight = gs.Constant(enc_name, np.ascontiguousarray(factors.encoder).astype(dtype))
        dec_weight = gs.Constant(dec_name, np.ascontiguousarray(factors.decoder).astype(dtype))
        return [gs.Node("MatMul", enc_node, {}, [enc_weight, x], [middle]),
                gs.Node("MatMul", dec_node, {}, [dec_weight, middle], [y])]
    enc_weight = gs.Constant(enc_name, np.ascontiguousarray(factors.encoder.T).astype(dtype))
    dec_weight = gs.Constant(dec_name, np.ascontiguousarray(factors.decoder.T).astype(dtype))
    return [gs.Node("MatMul", enc_node, {}, [x, enc_weight], [middle]),
            gs.Node("MatMul", dec_node, {}, [middle, dec_weight], [y])]


def kept_biases(model: onnx.ModelProto) -> frozenset[str]:
    """The constants a bias-correction shift is never folded into (it goes through an ``Add``): initializers
    also listed as graph inputs (IR >= 4: defaults callers may override) and tensors more than one node input
    reads, in any graph (a bias two layers share: a shift folded into it would be a copy per layer, which the
    budget does not count)."""
    readers = Counter(name for _, graph in iter_graphs(model.graph) for node in graph.node for name in node.input
                      if name)
    return frozenset(overridable_initializers(model) | {name for name, count in readers.items() if count > 1})


def shift_folds_into_bias(op: str, beta: float, has_bias: bool, bias_is_fixed_constant: bool) -> bool:
    """Whether :func:`_shift_output` adds a layer's output shift into its own bias input (a Conv's bias,
    a Gemm's ``C`` as ``shift/beta``) rather than through an ``Add`` node: the op has one, ``beta`` is not
    0, and the bias is absent or an initializer that callers cannot override and no other node reads (an
    output of a ``Constant`` node, a graph input, or a bias shared by two layers is none of these)."""
    return op in ("Conv", "Gemm") and beta != 0.0 and (not has_bias or bias_is_fixed_constant)


def shift_added_weights(out_features: int, bias_dims: Optional[Sequence[int]]) -> int:
    """The weights the output shift of ``--bias-correction`` / ``--affine-correction`` adds to a factorized
    layer with ``out_features`` outputs: ``bias_dims`` are the dims of the bias it folds into
    (:func:`shift_folds_into_bias`), which grows to their broadcast with ``[out_features]`` (a Gemm's ``C``
    of ``[M, 1]`` becomes ``[M, N]``); ``None`` where the shift is a new constant of ``out_features``
    values (no bias, a MatMul, an ``Add`` node)."""
    if bias_dims is None:
        return out_features
    dims = tuple(int(d) for d in bias_dims)
    return int(np.prod(np.broadcast_shapes(dims, (out_features,)))) - int(np.prod(dims))


def _shift_output(dec: gs.Node, rewrite: Rewrite, shift: np.ndarray, dtype: np.dtype, names: Names,
                  kept: frozenset = frozenset()) -> list[gs.Node]:
    """Add ``shift`` to the decoder's output: into its constant bias (Conv) or ``C`` (Gemm, as
    ``shift/beta``), else through an ``Add`` node, which is returned. A bias in ``kept`` (also a
    graph input, which callers may set, or read by other nodes too) is kept as it is, and the ``Add``
    carries the shift."""
    layer = rewrite.layer
    name = names.fresh(f"{layer.weight}.dec.bias")
    bias = dec.inputs[2] if len(dec.inputs) > 2 else None
    scale = float(dec.attrs.get("beta", 1.0)) if layer.op == "Gemm" else 1.0
    if shift_folds_into_bias(layer.op, scale, bias is not None,
                             bias is None or (isinstance(bias, gs.Constant) and bias.name not in kept)):
        value = shift / scale if bias is None else np.asarray(bias.values, np.float64) + shift / scale
        constant = gs.Constant(name, np.asarray(value).astype(dtype))
        if bias is None:
            dec.inputs.append(constant)
        else:
            dec.inputs[2] = constant
        return []
    y = dec.outputs[0]
    middle = gs.Variable(names.fresh(f"{y.name}.nobias"), dtype=None)  # no declared type: value_info may be stale
    dec.outputs[0] = middle
    spatial = len(layer.weight_shape) - 2 if layer.op == "Conv" else 0
    # y = W @ x: one row per output feature (a 1-D x gives a 1-D y: the shift as it is)
    trailing = 1 if layer.weight_first and layer.output_rank != 1 else 0
    constant = gs.Constant(name, shift.reshape(-1, *([1] * (spatial + trailing))).astype(dtype))
    return [gs.Node("Add", names.fresh_node(f"{layer.name}.bias"), {}, [middle, constant], [y])]


def _all_nodes(graph: gs.Graph) -> Iterator[tuple[gs.Node, gs.Graph]]:
    """Every node of ``graph`` and of the subgraphs in its nodes' attributes, with its own graph."""
    for node in graph.nodes:
        yield node, graph
        for value in node.attrs.values():
            subgraphs = [value] if isinstance(value, gs.Graph) else (
                [v for v in value if isinstance(v, gs.Graph)] if isinstance(value, list) else [])
            for sub in subgraphs:
                yield from _all_nodes(sub)


def rewrite_model(model: onnx.ModelProto, rewrites: Iterable[Rewrite]) -> onnx.ModelProto:
    """A new model with every node in ``rewrites`` replaced by its factorized pair.

    ``rewrites`` may be a generator: each is taken when its node is rewritten and its factors are
    converted to the weight's type at once, so that one layer's float64 factors are held at a time.
    The new weights reach onnx-graphsurgeon as stubs (type and dims) and enter the exported model
    one by one: no second copy of them is made. The original's weights are not copied either when
    ``model`` is light (:func:`onnx_alds.model_io.open_model`): its stubs stay stubs.
    """
    with _quiet_graphsurgeon():
        return _rewrite_model(model, rewrites)


def _rewrite_model(model: onnx.ModelProto, rewrites: Iterable[Rewrite]) -> onnx.ModelProto:
    graph: Optional[gs.Graph] = None
    values: dict[str, np.ndarray] = {}  # the new weights by name, in their final type, until export
    kept = kept_biases(model)
    pairs: dict[int, list] = {}  # id of a rewritten node → the nodes that take its place, in its place
    owners: dict[int, gs.Graph] = {}
    for rewrite in rewrites:
        if graph is None:
            opset = opset_version(model)
            names = Names(model)
            unnamed = _unnamed_tensor_attributes(model)
            graph = gs.import_onnx(model)
            _untype_unexportable(graph)
            nodes = {node.name: (node, owner) for node, owner in _all_nodes(graph)}
        node, owner = nodes[rewrite.layer.name]
        dtype = _weight_dtype(rewrite.layer)
        if dtype == np.float16:  # (the tensor between the pair could overflow where the output does not)
            rewrite = replace(rewrite, factors=balanced_for_float16(rewrite.factors))
        if node.op == "Conv" and rewrite.layer.order == POINTWISE_FIRST:
            pair = _conv_pointwise_first_pair(node, rewrite, dtype, names)
        elif node.op == "Conv":
            pair = _conv_pair(node, rewrite, dtype, names)
        elif node.op == "Gemm":
            pair = _gemm_pair(node, rewrite, dtype, opset, names)
        else:
            pair = _matmul_pair(node, rewrite, dtype, names)
        if rewrite.bias_shift is not None:
            alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
            pair += _shift_output(pair[-1], rewrite, alpha * np.asarray(rewrite.bias_shift, np.float64), dtype, names,
                                  kept)
        node.inputs.clear()
        node.outputs.clear()
        _defer_values(pair, values)
        pairs[id(node)] = pair
        owners[id(owner)] = owner
        del rewrite, pair  # this layer's float64 factors go before the next layer's are computed
    if graph is None:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    # each pair where its node was keeps the (sorted) order topological: no graphsurgeon toposort, which recurses
    # once per node of a chain (a RecursionError past about 250 layers)
    for owner in owners.values():
        owner.nodes = [new for node in owner.nodes for new in pairs.get(id(node), [node])]
    # the model's local functions are not rewritten (they are restored as they were): graphsurgeon's walk
    # into them from If/Loop/Scan bodies never ends
    graph.cleanup(remove_unused_graph_inputs=False, recurse_functions=False)
    new = gs.export_onnx(graph, do_type_check=False)
    del graph, nodes
    _clear_tensor_names(model, unnamed)  # graphsurgeon names Constant tensors in the model it read: undone
    _fill_values(new, values)
    _keep_unread_initializers(new, model)
    _hoist_outer_initializers(new, model)
    _restore_model_fields(new, model)
    _restore_node_fields(new, model)
    return new


def _tensor_attributes(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor held in a node attribute (a Constant's value ...), subgraphs included, in a fixed order."""
    for _, graph in iter_graphs(model.graph):
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    yield attribute.t
                elif attribute.type == onnx.AttributeProto.TENSORS:
                    yield from attribute.tensors


def _unnamed_tensor_attributes(model: onnx.ModelProto) -> list[bool]:
    """For each tensor of :func:`_tensor_attributes`, whether it has no name."""
    return [not tensor.HasField("name") for tensor in _tensor_attributes(model)]


def _clear_tensor_names(model: onnx.ModelProto, unnamed: Sequence[bool]) -> None:
    """onnx-graphsurgeon's import names the tensors of Constant nodes after their outputs, in the model it
    reads: clear the names of those that had none (``unnamed`` from :func:`_unnamed_tensor_attributes`)."""
    for tensor, had_none in zip(_tensor_attributes(model), unnamed):
        if had_none:
            tensor.ClearField("name")


_EXPORTABLE_TYPES = ("tensor_type", "sequence_type", "sparse_tensor_type")


def _untype_unexportable(graph: gs.Graph) -> None:
    """onnx-graphsurgeon reads optional and map types but cannot export them (an UnboundLocalError in its
    exporter): such tensors go through it untyped; graph outputs and value_info get their declared types
    back from the original (:func:`_restore_model_fields`, :func:`_copy_graph_fields`)."""
    graphs = [graph] + [owner for _, owner in _all_nodes(graph)]
    for owner in {id(g): g for g in graphs}.values():
        tensors = list(owner.inputs) + list(owner.outputs)
        tensors += [t for node in owner.nodes for t in list(node.inputs) + list(node.outputs)]
        for tensor in tensors:
            if isinstance(tensor, gs.Variable) and getattr(tensor, "type", "tensor_type") not in _EXPORTABLE_TYPES:
                tensor.dtype = None


@contextlib.contextmanager
def _quiet_graphsurgeon() -> Iterator[None]:
    """onnx-graphsurgeon prints its warnings ('[W] ...') on standard output, into the report a user reads or
    parses; while it works for onnx-alds only its errors are let through."""
    severity = gs.logger.G_LOGGER.severity
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    try:
        yield
    finally:
        gs.logger.G_LOGGER.severity = severity


def _keep_unread_initializers(new: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Put back the main graph's initializers that no node read in the original: the export's cleanup drops
    them, but they are the user's (a graph input's default value, which callers may override; optimizer state
    and hyper-parameters that ``training_info`` reads and binds; a table of class names)."""
    unread = unused_initializers(original)
    present = {init.name for init in new.graph.initializer}
    new.graph.initializer.extend(init for init in original.graph.initializer
                                 if init.name in unread and init.name not in present)


_SUBGRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def _restore_node_fields(new: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """onnx-graphsurgeon's round trip keeps a node's op, inputs, outputs and the attributes it understands,
    and drops the rest: ``doc_string``, ``metadata_props``, ``overload`` (which of a model-local function's
    overloads it calls: losing it calls another function), attributes of kinds it does not read
    (``TYPE_PROTO``). Every node that was not replaced is written back as it was, but for its If/Loop/Scan
    bodies (as rewritten); subgraphs' and value_info's doc strings and metadata likewise. A node is matched
    by its graph's path, name, op and outputs; an ambiguous match is left as exported."""
    def key(path: str, node: onnx.NodeProto) -> tuple:
        return (path, node.name, node.domain, node.op_type, tuple(node.output))

    old_nodes: dict[tuple, list[onnx.NodeProto]] = {}
    old_graphs: dict[str, list[onnx.GraphProto]] = {}
    for path, graph in iter_graphs(original.graph):
        old_graphs.setdefault(path, []).append(graph)
        for node in graph.node:
            old_nodes.setdefault(key(path, node), []).append(node)
    # children first: a parent's attributes are copied with its bodies already restored
    for path, graph in reversed(list(iter_graphs(new.graph))):
        for node in graph.node:
            match = old_nodes.get(key(path, node), [])
            if len(match) == 1:
                _copy_node_fields(match[0], node)
        same = old_graphs.get(path, [])
        if len(same) == 1:
            _copy_graph_fields(same[0], graph, main=not path)


def _copy_node_fields(source: onnx.NodeProto, target: onnx.NodeProto) -> None:
    """``target`` becomes ``source`` as it was, byte for byte, but for its If/Loop/Scan bodies (as rewritten)
    and its inputs (as exported)."""
    bodies = {attribute.name: onnx.AttributeProto.FromString(attribute.SerializeToString())
              for attribute in target.attribute if attribute.type in _SUBGRAPH_ATTRIBUTES}
    inputs = list(target.input)
    target.CopyFrom(source)
    if inputs != list(target.input):
        del target.input[:]
        target.input.extend(inputs)
    for attribute in target.attribute:
        if attribute.name in bodies:
            attribute.CopyFrom(bodies[attribute.name])


def _copy_graph_fields(source: onnx.GraphProto, target: onnx.GraphProto, *, main: bool) -> None:
    """A subgraph's doc string and metadata (the main graph's: :func:`_restore_model_fields`), and the doc
    strings and metadata of the value_info entries kept under their names."""
    if not main:
        _copy_doc_string(source, target)
        if "metadata_props" in source.DESCRIPTOR.fields_by_name:
            target.ClearField("metadata_props")
            target.metadata_props.extend(source.metadata_props)
    old_infos = {value.name: value for value in list(source.value_info) + list(source.input) + list(source.output)}
    for value in list(target.value_info) + ([] if main else list(target.input) + list(target.output)):
        old = old_infos.get(value.name)
        if old is None:
            continue
        if not value.type.WhichOneof("value") and old.type.WhichOneof("value"):  # went through untyped
            value.type.CopyFrom(old.type)
        _copy_doc_string(old, value)
        if "metadata_props" in old.DESCRIPTOR.fields_by_name:
            value.ClearField("metadata_props")
            value.metadata_props.extend(old.metadata_props)


def _copy_doc_string(source, target) -> None:
    """The doc string as the source has it: set, or absent (not an explicit empty one)."""
    if source.HasField("doc_string"):
        target.doc_string = source.doc_string
    else:
        target.ClearField("doc_string")


def _hoist_outer_initializers(new: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """onnx-graphsurgeon's export moves a main-graph initializer read only inside If/Loop/Scan bodies into
    each body that reads it (a weight shared by two branches is then stored twice); put every such
    tensor back into the main graph, once. In an IR 3 model the new factors of a layer inside a body go
    to the main graph too, where they can be listed as graph inputs (IR 3 lists every initializer)."""
    outer = {init.name for init in original.graph.initializer}
    inner = {init.name for path, graph in iter_graphs(original.graph) if path for init in graph.initializer}
    present = {init.name for init in new.graph.initializer}
    for path, graph in iter_graphs(new.graph):
        if not path:
            continue
        moved = [init for init in graph.initializer
                 if init.name in outer or (original.ir_version < 4 and init.name not in inner)]
        if not moved:
            continue
        for init in moved:
            if init.name not in present:
                new.graph.initializer.append(init)
                present.add(init.name)
        hoisted = {init.name for init in moved}
        kept = [init for init in graph.initializer if init.name not in hoisted]
        del graph.initializer[:]
        graph.initializer.extend(kept)


_PENDING = "onnx-alds-pending"  # location of a new weight's stub between the rewrite and the export


def _defer_values(pair: Sequence[gs.Node], values: dict[str, np.ndarray]) -> None:
    """Move the arrays of the pair's new constants to ``values``, leaving stubs in the graph."""
    for node in pair:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) and isinstance(tensor._values, np.ndarray):
                array = tensor._values
                stub = onnx.TensorProto(name=tensor.name, dims=list(array.shape),
                                        data_type=gs.exporters.onnx_exporter.dtype_to_onnx(array.dtype),
                                        data_location=onnx.TensorProto.EXTERNAL)
                stub.external_data.add(key="location", value=_PENDING)
                values[tensor.name] = array
                tensor._values = gs.ir.tensor.LazyValues(stub)


def _fill_values(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Put the new weights into the exported model, one at a time, as onnx-graphsurgeon exports them."""
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    for _, graph in iter_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.name in values and tensor.external_data and tensor.external_data[0].value == _PENDING:
                tensor.CopyFrom(OnnxExporter.export_tensor_proto(gs.Constant(tensor.name, values.pop(tensor.name))))
    # what is left belonged to pairs that reach no graph output: the export's cleanup dropped them (as
    # it drops the original's dead nodes); a weight missing from a live pair fails the output checks


def _restore_model_fields(new: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Carry over what onnx-graphsurgeon's export drops or changes: every model field, and the
    graph's declared inputs and outputs exactly as they were (IR 3: initializers listed as inputs)."""
    for field in original.DESCRIPTOR.fields:  # every model-level field but the graph (no copy of weights)
        if field.name == "graph":
            continue
        new.ClearField(field.name)
        if field.is_repeated:
            getattr(new, field.name).extend(getattr(original, field.name))
        elif field.message_type is not None:
            if original.HasField(field.name):
                getattr(new, field.name).CopyFrom(getattr(original, field.name))
        else:
            setattr(new, field.name, getattr(original, field.name))
    new.graph.name = original.graph.name
    new.graph.doc_string = original.graph.doc_string
    new.graph.ClearField("sparse_initializer")
    new.graph.sparse_initializer.extend(original.graph.sparse_initializer)
    new.graph.ClearField("quantization_annotation")  # those of a replaced weight go (api notes them)
    new.graph.quantization_annotation.extend(original.graph.quantization_annotation)
    drop_stale_annotations(new, set(), inputs=original.graph.input)
    if hasattr(original.graph, "metadata_props"):
        new.graph.ClearField("metadata_props")
        new.graph.metadata_props.extend(original.graph.metadata_props)
    initializers = {init.name: init for init in new.graph.initializer}
    old_initializers = {init.name for init in original.graph.initializer}
    inputs = [value for value in original.graph.input
              if value.name not in old_initializers or value.name in initializers]
    if original.ir_version < 4:  # IR 3 requires every initializer to be a graph input
        listed = {value.name for value in inputs}
        for name, init in initializers.items():
            if name not in listed:
                inputs.append(onnx.helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    new.graph.ClearField("input")
    new.graph.input.extend(inputs)
    new.graph.ClearField("output")
    new.graph.output.extend(original.graph.output)


REPLACED_DIGEST_KEY = "onnx_alds.replaced_sha1"


def replaced_digest(original: onnx.ModelProto, new: onnx.ModelProto, load=None) -> str:
    """SHA-1 of the initializers and Constant nodes' values (:func:`onnx_alds.layers.constant_tensors`) of
    ``original`` that ``new`` no longer holds (the weights the compression replaced), by name and value: written into the compressed
    model's metadata, so that ``distill`` can tell whether an original is the one it was made from.
    ``load``: completes a light model's stub (:meth:`onnx_alds.model_io.TensorStore.load`)."""
    kept = constant_tensors(new)
    digest = hashlib.sha1()
    for name, tensor in sorted(constant_tensors(original).items()):
        if name in kept:
            continue
        full = load(tensor) if load is not None else tensor
        digest.update(name.encode() + b"\0" + numpy_helper.to_array(full).tobytes())
    return digest.hexdigest()


def drop_stale_annotations(model: onnx.ModelProto, narrowed: set[str], inputs=None) -> None:
    """Remove the graph's quantization annotations of tensors the model no longer defines (a factorized
    weight, a weight replaced by its sliced copy) or whose channels were cut (``narrowed``: per-channel
    parameters no longer fit); ``inputs``: the graph inputs to count (default: the model's own)."""
    graph = model.graph
    defined = ({value for node in graph.node for value in node.output} | {init.name for init in graph.initializer}
               | {value.name for value in (graph.input if inputs is None else inputs)})
    kept = [annotation for annotation in graph.quantization_annotation
            if annotation.tensor_name in defined and annotation.tensor_name not in narrowed]
    if len(kept) < len(graph.quantization_annotation):
        del graph.quantization_annotation[:]
        graph.quantization_annotation.extend(kept)


def add_provenance(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Add (or replace) ``onnx_alds.*`` keys in ``metadata_props``."""
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
