"""Structured width reduction: drop hidden channels of a block and refit its consumer by least squares.

A *block* is a producer (Conv with ``group = 1``, Gemm, or MatMul ``x @ W``, with a constant weight) whose
output channels reach exactly one consumer with a constant weight (Conv ``group = 1``, Gemm, MatMul
``x @ W``) through ops that act on each channel alone: bias ``Add``/``Sub``/``Mul``/``Div`` by
per-channel or scalar constants, ``BatchNormalization``, ``Relu``/``Clip``/``Sigmoid``/``HardSwish``/
``Gelu``/``Erf``-based GELU (``Div, Erf, Add, Mul, Mul``: binary ops whose two operands are both inside
the block are fine), ``Pad`` on the spatial axes, and depthwise ``Conv`` (``group`` = its channels).
Nothing else may read the hidden tensors, and none of them may be a graph output. The inverted-residual
block (1x1 expand → depthwise → 1x1 project) and the transformer feed-forward block (MatMul up → GELU →
MatMul down) are blocks. Whatever breaks one of these conditions (a residual Add into the hidden tensor,
a Reshape, a Concat, a second reader) makes the producer *not prunable*, with the reason.

Pruning keeps ``w`` of the block's ``c`` hidden channels: the producer loses output rows (and bias
entries), the ops between lose the same channels (a depthwise conv's ``group`` shrinks to ``w``), and the
consumer loses the input columns and is *refitted*: with ``h`` its input vectors (``d = c·κ``), ``C =
E[h hᵀ]``, ``μ = E[h]`` measured on the calibration inputs in ONNX Runtime
(:func:`onnx_alds.calibrate.collect_statistics`, the consumer treated as a layer whose input moment is
needed), and the kept columns ``K``, the ridge least-squares fit of the original block output
``y = W h + b`` on ``[h_K; 1]``::

    [W'  b'] = ([W  b] · C̄[:, K̄] + λ [W_K  0]) · (C̄[K̄, K̄] + λ)⁻¹,   C̄ = E[[h; 1][h; 1]ᵀ],  K̄ = K ∪ {1}

(``λ = 1e-6 · mean diag C[K, K]`` on the channel part): the ridge pulls the kept columns toward their own
weights ``W_K``, not toward zero, so a kept channel the calibration never activates keeps its weights, and
dropping channels whose weights are zero changes nothing. Without a place for the consumer's bias (a MatMul
whose output is not added to a constant) the fit is on ``h_K`` alone.

Channel choice (which ``K``): greedy forward selection of whole channels by the output energy they
explain after the refit. With ``S`` the residual second moment (``C − μμᵀ`` to start with, as the bias
absorbs the mean) and ``G = W S``, the channel ``j`` (columns ``J``) explains ``tr(G_J S_JJ⁻¹ G_Jᵀ)``;
the ``m`` best (``m`` the rank multiple) are added, then ``S ← S − S_{:J} S_JJ⁻¹ S_{J:}``,
``G ← G − G_J S_JJ⁻¹ S_{J:}``. The residual ``E‖y − ŷ‖² = ⟨W, G⟩`` after each step is the block's
relative output error at that width (``sqrt(⟨W, G⟩ / E‖y‖²)``, the relative RMS error of the consumer's
output on the calibration inputs, the same scale as the data-aware ``frobenius`` error of a low-rank
layer); the sets are nested, so one pass gives every width. This is column-subset selection with a
least-squares reconstruction, as in He, Zhang, Sun, "Channel Pruning for Accelerating Very Deep Neural
Networks" (ICCV 2017: LASSO selection, then least squares), AIMET's channel pruning (greedy selection
plus data-driven reconstruction), and Kwon et al., "A Fast Post-Training Pruning Framework for
Transformers" (NeurIPS 2022: mask search, then a least-squares refit of the layer after the mask).

Allocation on its own (:func:`allocate_widths`): the min-max of the block errors under the budget, with
each block's cost linear in its width (producer, consumer and the ops between, in weights or MACs);
:func:`compress_pruned` adds the low-rank layers outside the blocks to the same min-max (the
``frobenius`` data-aware tables), then factorizes them with :func:`onnx_alds.compress` on the pruned model.
:func:`width_options` gives the same widths as plain option records (covered layers, cost, error) for a
set-partitioning allocator.

With ``--method damage`` (:func:`joint_damage_widths`) the widths come from the output-damage integer
program instead: the layers outside the blocks bring their *measured* damage tables
(:mod:`onnx_alds.damage`), every block its narrower widths with the modelled damage ``(s_b·ε_b(w))²``
(:func:`damage_width_options`; or, with ``width_damage="measured"``, measured at a few widths per block,
:func:`measured_width_damage`), and :func:`onnx_alds.allocate.allocate_options` picks the least total
damage under the budget; the low-rank step then re-measures its layers on the pruned model.
"""

from __future__ import annotations

import copy
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Collection, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import BudgetError, InputDataError, UnsupportedModelError, ratio_at_least
from .layers import (FLOAT_TYPES, Layer, constant_tensors, element_bits, evaluate_constant_graph, iter_total_params,
                     overridable_initializers, trained_tensors, use_counts)

__all__ = ["Block", "NotPrunable", "WidthCurve", "BlockReport", "WidthOption", "find_blocks", "width_curve",
           "refit_consumer", "prune_model", "allocate_widths", "width_options", "damage_width_options",
           "block_sensitivities", "measured_width_damage", "sequential_prune", "compress_pruned",
           "joint_damage_widths", "PRUNE_MODES", "WIDTH_DAMAGE"]

PRUNE_MODES = ("off", "combined", "only")  # off; widths and low-rank in one min-max; widths alone
UNARY_OPS = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
             "Gelu", "Softplus", "Softsign", "Identity", "Neg", "Abs", "Exp", "Sqrt", "Reciprocal", "Mish", "Floor",
             "Ceil", "Round", "ThresholdedRelu")
BINARY_OPS = ("Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min", "Pow")
MAX_BETWEEN = 32  # ops between producer and consumer
MAX_COLUMNS = 4096  # consumer input width (c·κ) the greedy selection accepts
RIDGE = 1e-6
WIDTH_DAMAGE = ("probe", "measured")  # how the output-damage program prices a block's widths


@dataclass(frozen=True)
class Block:
    """A prunable block: ``producer`` (and any ``partners``) → per-channel ops (``between``, graph order) →
    ``consumer``.

    ``width``: hidden channels ``c``. ``axis``: the channel axis of the hidden tensors (1 for Conv, -1
    for Gemm/MatMul). ``bias``: where the consumer's bias lives: ``("input", node)`` (Conv/Gemm input
    2, added when missing), ``("add", node name, slot)`` (a MatMul followed by an Add of a constant),
    or None. ``fixed_params``/``channel_params``: weights of the block that do not / do scale with the
    width (one hidden channel costs ``channel_params``); same for MACs at the resolved input shape."""

    name: str
    producer: Layer
    consumer: Layer
    between: tuple[str, ...]
    width: int
    axis: int
    bias: Optional[tuple]
    fixed_params: int
    channel_params: int
    fixed_macs: Optional[int]
    channel_macs: Optional[int]
    layers: tuple[str, ...]  # Conv/Gemm/MatMul nodes in the block (producer, depthwise convs, consumer)
    added_bias: int = 0  # weights a narrowed block's refit adds: a Conv/Gemm consumer without a bias gets one
    heads: int = 1  # attention heads the hidden channels are split into (channel c = head·(c/heads) + dim)
    # per channel, the per-channel constants other nodes read too: narrowing adds their sliced copy and the
    # original stays (it is counted with the rest of the model)
    shared_channel_params: int = 0
    # a gated block's other producers (SwiGLU's gate beside its up projection): their output channels are
    # multiplied element by element with the producer's on the way to the consumer, and narrowed with them
    partners: tuple[Layer, ...] = ()
    # ops between that read the hidden channels on the last axis: a conv block's tensors transposed to NHWC
    # and back (Keras and TensorFlow exports)
    channels_last: tuple[str, ...] = ()

    def params(self, width: int) -> int:
        narrowed = width < self.width
        return (self.fixed_params + width * self.channel_params
                + (self.added_bias + width * self.shared_channel_params if narrowed else 0))

    def macs(self, width: int) -> Optional[int]:
        return None if self.channel_macs is None else self.fixed_macs + width * self.channel_macs


@dataclass(frozen=True)
class NotPrunable:
    """A producer whose hidden channels cannot be pruned, and why."""

    producer: str
    reason: str


@dataclass(frozen=True)
class WidthCurve:
    """One block's widths (ascending, the last is the full width), the relative RMS output error of
    the consumer at each (measured on the calibration moments), and the channel order (the first
    ``w`` entries are the channels kept at width ``w``)."""

    block: str
    widths: np.ndarray
    errors: np.ndarray
    order: np.ndarray

    def error(self, width: int) -> float:
        index = int(np.searchsorted(self.widths, width))
        if index >= len(self.widths) or self.widths[index] != width:
            raise KeyError(f"width {width} is not an allowed width of block '{self.block}'")
        return float(self.errors[index])

    def kept(self, width: int) -> np.ndarray:
        return np.sort(self.order[:width])


@dataclass(frozen=True)
class BlockReport:
    """A block in the report: hidden width before and after, its weights and MACs, its error."""

    name: str
    producer: str
    consumer: str
    between: tuple[str, ...]
    width_before: int
    width_after: int
    params_before: int
    params_after: int
    macs_before: Optional[int]
    macs_after: Optional[int]
    error: float


@dataclass(frozen=True)
class WidthOption:
    """One width of one block as a set-partitioning option: it covers the block's Conv/Gemm/MatMul
    nodes (``covers``), costs ``params``/``macs`` (those nodes plus the per-channel ops between), and
    has relative RMS output error ``error`` at the consumer's output (calibration inputs)."""

    block: str
    covers: tuple[str, ...]
    width: int
    params: int
    macs: Optional[int]
    error: float


# ---------------------------------------------------------------------------------------------- finding


class _Graph:
    """Look-ups over the main graph: users, producers, constants (evaluated through constant ops)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.nodes = {node.name: node for node in graph.node}
        self.name_counts = Counter(node.name for node in graph.node)
        self.producers = {out: node for node in graph.node for out in node.output if out}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in dict.fromkeys(node.input):
                if name:
                    self.users.setdefault(name, []).append(node)
        self.uses = Counter(name for node in graph.node for name in node.input if name)
        self.uses.update(value.name for value in graph.output)
        self.subgraph_readers: dict[str, list[str]] = {}  # name -> main-graph nodes whose subgraphs read it
        for node in graph.node:  # names read inside subgraphs, at every depth, count as uses
            inner: Counter = Counter()
            for attribute in node.attribute:
                for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                    use_counts(sub, inner)
            self.uses.update(inner)
            for name in inner:
                self.subgraph_readers.setdefault(name, []).append(node.name)
        self.outputs = {value.name for value in graph.output}
        overridable = overridable_initializers(model)
        self.tensors = {name: tensor for name, tensor in constant_tensors(model).items() if name not in overridable}
        self.inputs = {value.name for value in graph.input} - set(self.tensors)
        self._values: dict[str, Optional[np.ndarray]] = {}

    def escapes(self, name: str) -> bool:
        """Whether ``name`` is a graph output or is read inside a subgraph (uses the block finder cannot see)."""
        return name in self.outputs or name in self.subgraph_readers

    def read_beyond(self, name: str, nodes: set) -> bool:
        """Whether anything but the main-graph nodes named ``nodes`` reads ``name`` (or it :meth:`escapes`)."""
        return self.escapes(name) or any(reader.name not in nodes for reader in self.users.get(name, []))

    def stays_stored(self, name: str, nodes: set) -> bool:
        """Whether the stored data that the constant ``name`` is computed from stays in the file once the nodes
        named ``nodes`` no longer read it: something else reads it, or a tensor of its chain of constant ops
        (``Identity``, ``Cast`` ...; each node's first input, the data) is read beyond the chain."""
        if self.read_beyond(name, nodes):
            return True
        node = self.producers.get(name)
        return node is not None and bool(node.input) and self.stays_stored(node.input[0], {node.name})

    def constant(self, name: str) -> Optional[np.ndarray]:
        """The value of ``name`` if it is computed from constants alone (None otherwise)."""
        if not name:
            return None
        if name not in self._values:
            self._values[name] = self._evaluate(name)
        return self._values[name]

    def stored_types(self, name: str) -> tuple[set[int], bool]:
        """The element types of the initializers whose data (each chain node's first input) ``name`` is
        computed from, and whether the chain dequantizes (``DequantizeLinear``)."""
        types: set[int] = set()
        dequantizes = False
        pending, seen = [name], set()
        while pending:
            tensor = pending.pop()
            if not tensor or tensor in seen:
                continue
            seen.add(tensor)
            if tensor in self.tensors:
                types.add(self.tensors[tensor].data_type)
                continue
            node = self.producers.get(tensor)
            if node is None:
                continue
            dequantizes = dequantizes or node.op_type == "DequantizeLinear"
            pending.extend(node.input[:1])
        return types, dequantizes

    def _evaluate(self, name: str) -> Optional[np.ndarray]:
        if name in self.tensors:
            return numpy_helper.to_array(self.tensors[name])
        chain: list[onnx.NodeProto] = []
        pending, seen = [name], set()
        while pending:
            tensor = pending.pop()
            if not tensor or tensor in self.tensors or tensor in seen:
                continue
            seen.add(tensor)
            node = self.producers.get(tensor)
            if node is None or len(chain) > 40 or node.op_type in ("Shape", "Size", "RandomNormal", "RandomUniform",
                                                                     "RandomNormalLike", "RandomUniformLike"):
                return None
            if node.attribute and any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                      for a in node.attribute):
                return None
            if node not in chain:
                chain.append(node)
            pending.extend(node.input)
        order = [node for node in self.model.graph.node if node in chain]
        leaves = sorted({i for node in order for i in node.input if i in self.tensors})
        inits = []
        for leaf in leaves:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(self.tensors[leaf])
            tensor.name = leaf
            inits.append(tensor)
        graph = onnx.helper.make_graph(order, "constant", [], [onnx.helper.make_empty_tensor_value_info(name)], inits)
        probe = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import),
                                       ir_version=max(self.model.ir_version, 4))
        return evaluate_constant_graph(probe)


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


# the reasons a layer is not factorized that still let it be pruned: every other reason (excluded, shared,
# returned as a graph output, overridable, trained, quantized, not float, ...) keeps its block whole
_PRUNABLE_REASONS = ("factorization would not shrink it", "depthwise conv", "grouped conv")


def _layer_problem(layer: Layer, role: str) -> Optional[str]:
    if layer.subgraph:
        return f"the {role} sits inside {layer.subgraph}"
    if layer.weight_first:
        return f"the {role} '{layer.name}' is a MatMul with the weight first"
    if layer.skip_reason and not layer.skip_reason.startswith(_PRUNABLE_REASONS):
        return f"the {role} '{layer.name}': {layer.skip_reason}"
    return None


def _per_channel_constant(value: np.ndarray, axis: int, rank: Optional[int], width: int) -> bool:
    """Whether a constant operand broadcasts per channel (or is a scalar) on a hidden tensor."""
    shape = value.shape
    if axis == -1:
        return all(d == 1 for d in shape[:-1]) and (not shape or shape[-1] in (1, width))
    if rank is None or len(shape) > rank:
        return False
    aligned = (1,) * (rank - len(shape)) + tuple(shape)
    return all(d == 1 for i, d in enumerate(aligned) if i != axis) and aligned[axis] in (1, width)


def find_blocks(model: onnx.ModelProto, layers: Sequence[Layer], shapes: Sequence[Mapping[str, tuple]] = (), *,
                split_heads: bool = False, dims_read: Collection[str] = ()) -> tuple[list[Block], list[NotPrunable]]:
    """The prunable blocks of ``model``'s main graph and, for every other candidate producer, why not.

    ``layers``: the model's Conv/Gemm/MatMul nodes (:func:`onnx_alds.layers.find_layers`; positions set
    when the input shapes were resolved). A producer is a Conv with ``group = 1``, a Gemm with
    ``transA = 0`` or a MatMul ``x @ W`` with a constant 2-D weight; grouped and depthwise convs are
    never producers (they are ops between or left alone). ``shapes``: concrete tensor shapes at two or
    more input shapes (:func:`block_shapes`): a Reshape target's -1 (an inferred head count or width)
    counts only where every one shows the axis it stands for, and attention's ``P @ V`` only where they
    show ``P`` has two axes or more; without them such blocks are refused. ``split_heads``: follow
    channels split into attention heads (``--prune-heads``; off: such a split ends the block with that
    reason). ``dims_read``: weights whose dims a Shape/Size node read (folded to constants of the full dims,
    :func:`onnx_alds.layers.fold_weight_shapes`): a block that would narrow one is refused. Blocks find their
    nodes by name: a block with an unnamed node or one whose name another node
    shares is refused (the pipeline names every node first: :func:`onnx_alds.layers.ensure_node_names`).
    Returns blocks in graph order.
    """
    graph = _Graph(model)
    by_name = {layer.name: layer for layer in layers if not layer.subgraph}
    trained = trained_tensors(model)
    blocks: list[Block] = []
    refused: list[NotPrunable] = []
    for node in model.graph.node:
        layer = by_name.get(node.name)
        if layer is None or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        if node.op_type == "Conv" and int(_attr(node, "group", 1)) != 1:
            continue  # depthwise / grouped: not a producer
        found = _block_from(node, layer, graph, by_name, tuple(shapes), split_heads)
        if isinstance(found, Block) and (hit := _trained_input(found, graph, trained)):
            found = f"'{hit}', which the block changes, is trained on device (the model's training_info uses it)"
        if isinstance(found, Block) and (read := next((layer.weight for layer in (found.producer, *found.partners,
                                                                                 found.consumer)
                                                       if layer.weight in dims_read), None)):
            found = (f"a Shape/Size node reads the dims of '{read}' (kept as a constant of its full dims): narrowing "
                     "the block would leave that constant stale")
        if isinstance(found, Block):
            if any(set(other.layers) == set(found.layers) for other in blocks):
                continue  # a gated block found again from its gate
            taken = [other for other in blocks if set(other.layers) & set(found.layers)]
            if taken:  # a layer in two blocks (a chain): the costs and refits would interact
                refused.append(NotPrunable(layer.name, f"'{sorted(set(taken[0].layers) & set(found.layers))[0]}' "
                                                       f"is already in the block of '{taken[0].name}'"))
            else:
                blocks.append(found)
        elif found is not None:
            refused.append(NotPrunable(layer.name, found))
    return blocks, refused


def _trained_input(block: Block, graph: _Graph, trained: set[str]) -> Optional[str]:
    """The first tensor the pruning would slice or replace (an input of the producer, the ops between, the
    consumer or its bias Add) that on-device training binds, else None."""
    names = [block.producer.name, *(layer.name for layer in block.partners), *block.between, block.consumer.name]
    if block.bias is not None and block.bias[0] == "add":
        names.append(block.bias[1])
    return next((name for node in names for name in graph.nodes[node].input if name in trained), None)


def _producer_problem(node: onnx.NodeProto, producer: Layer, graph: _Graph, role: str = "producer"
                      ) -> Optional[str]:
    """Why ``node`` cannot be a block's producer (``role``: "producer", or "gate" for a gated block's other
    producer), else None."""
    problem = _layer_problem(producer, role)
    if problem:
        return problem
    if node.op_type == "Gemm" and _attr(node, "transA", 0):
        return f"the {role} is a Gemm with transA = 1"
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        bias = graph.constant(node.input[2])
        if bias is None or not _per_channel_constant(bias, -1, 2, producer.out_features):
            return f"the {role}'s bias C is not a per-channel constant"
    if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] and graph.constant(node.input[2]) is None:
        maker = graph.producers.get(node.input[2])
        expanded = maker is not None and maker.op_type == "Expand"
        return f"the {role}'s bias is not a constant" + (
            f" (computed by Expand '{maker.name}': torch's dynamo exporter with optimize=False builds a bias-free "
            "Conv's zero bias so; export with optimize=True)" if expanded else "")
    return None


def _transposed_channels(node: onnx.NodeProto, axis: int, rank: Optional[int]):
    """Where a Transpose of a conv block's hidden tensor (rank ``rank``, channels on ``axis``: 1, or -1 for the
    last) puts the channels: 1 or -1, or the reason it is not followed (a rank not known, the batch axis
    moved, the channels to another axis)."""
    perm = _attr(node, "perm", None)
    if rank is None:
        return "whose rank is not known"
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(perm) != list(range(rank)) or perm[0] != 0:
        return f"which moves the batch axis (perm {perm})"
    moved = perm.index(1 if axis == 1 else rank - 1)
    if moved == 1:
        return 1
    if moved == rank - 1:
        return -1
    return f"which moves the channels to axis {moved} (perm {perm})"


def _gate_producer(tensor: str, graph: _Graph, layers: Mapping[str, Layer], node: onnx.NodeProto
                   ) -> Optional[onnx.NodeProto]:
    """The one Conv/Gemm/MatMul node with a constant weight (other than ``node``) that ``tensor`` is computed
    from through ops of run-time inputs (SwiGLU's ``silu(x @ W_gate)``), else None: a graph input, more than
    one such node, or a longer way than :data:`MAX_BETWEEN` ops (a residual or another branch)."""
    seen: set[str] = set()
    pending, found = [tensor], []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        maker = graph.producers.get(name)
        if maker is None or len(seen) > MAX_BETWEEN:
            return None
        grouped = maker.op_type == "Conv" and int(_attr(maker, "group", 1)) != 1  # (a depthwise conv on the way)
        if maker.op_type in ("Conv", "Gemm", "MatMul") and maker.name in layers and len(maker.input) > 1 \
                and graph.constant(maker.input[1]) is not None and not grouped:
            found.append(maker)
            continue
        if grouped:
            pending.append(maker.input[0])
            continue
        pending.extend(name for name in maker.input if name and graph.constant(name) is None)
    return found[0] if len(found) == 1 and found[0] is not node else None


def _block_from(node: onnx.NodeProto, producer: Layer, graph: _Graph, layers: Mapping[str, Layer],
                shapes: Sequence[Mapping[str, tuple]], split_heads: bool = False,
                partners: Sequence[onnx.NodeProto] = ()):
    """The block ``node`` produces, or the reason it is not prunable (None: a last layer, not a producer).
    ``partners``: a gated block's other producers, whose outputs join the producer's element by element
    (tried when the block's ops read a tensor such a producer computes)."""
    if graph.constant(producer.weight) is None:
        return None  # not a layer with a weight (attention's activation products): not a producer
    problem = _producer_problem(node, producer, graph)
    if problem:
        return problem
    if node.op_type == "Conv":
        axis, rank = 1, len(producer.weight_shape)
    else:
        axis, rank = -1, 2 if node.op_type == "Gemm" else None
    width = producer.out_features
    partner_layers = tuple(layers[partner.name] for partner in partners)
    for partner, layer in zip(partners, partner_layers):
        problem = _producer_problem(partner, layer, graph, "gate")
        if problem:
            return problem
        if (partner.op_type == "Conv") != (node.op_type == "Conv"):
            return (f"the gate '{partner.name}' is a {partner.op_type} and the producer a {node.op_type} (their "
                    "channels lie on other axes)")
        if layer.out_features != width:
            return (f"the gate '{partner.name}' has {layer.out_features} output channel"
                    f"{'s' if layer.out_features != 1 else ''} and the hidden width is {width}; a gate must have "
                    "the hidden width")
    hidden = node.output[0]
    seeds = [hidden] + [partner.output[0] for partner in partners]
    region_tensors = set(seeds)
    region_nodes: list[onnx.NodeProto] = []
    consumer: Optional[onnx.NodeProto] = None
    # per hidden tensor: its head axis (negative; None while the channels are one axis) and its rank where
    # it matters (a Gemm's 2-D output, for BatchNormalization); reshapes of a MatMul/Gemm producer's
    # channels-last tensor may split the channels into heads and merge them back (attention's V → output)
    states: dict[str, tuple[Optional[int], Optional[int]]] = {seed: (None, rank) for seed in seeds}
    # a conv block's tensors whose channels a Transpose moved to the last axis (NHWC), and the ops reading them
    last_axis: set[str] = set()
    heads: Optional[int] = None
    weighted: set[str] = set()  # MatMul nodes whose first input (attention weights) is read from outside
    pending = list(seeds)
    while pending:
        tensor = pending.pop(0)
        if tensor in graph.outputs:
            if tensor in seeds:
                return f"the hidden tensor '{tensor}' is a graph output"
            joining = graph.producers.get(tensor)
            joined = [name for name in (joining.input if joining is not None else ())
                      if name and name not in region_tensors and graph.constant(name) is None]
            if joined:  # (an Add of two branches read as one block's tensors until the block was complete)
                return (f"'{joining.op_type}' node '{joining.name}' joins '{joined[0]}' to the hidden channels of "
                        f"'{hidden}' (a residual or another branch), and its output is the graph output '{tensor}'")
            return (f"the hidden channels of '{hidden}'" + "".join(f" and '{seed}'" for seed in seeds[1:])
                    + f" reach the graph output '{tensor}' through per-channel ops")
        head_axis, tensor_rank = states[tensor]
        tensor_axis = -1 if tensor in last_axis else axis  # (where this tensor holds the channels)
        for user in graph.users.get(tensor, []):
            if user in region_nodes or user is consumer:
                continue
            if user.op_type == "Transpose" and axis == 1 and user.domain in ("", "ai.onnx"):
                moved_to = _transposed_channels(user, tensor_axis, tensor_rank)
                if isinstance(moved_to, str):
                    return f"'{tensor}' is read by Transpose '{user.name}', {moved_to}"
                region_nodes.append(user)
                if len(region_nodes) > MAX_BETWEEN:
                    return f"more than {MAX_BETWEEN} ops between the producer and a consumer"
                out = user.output[0]
                region_tensors.add(out)
                states[out] = (None, tensor_rank)
                if moved_to == -1:
                    last_axis.add(out)
                pending.append(out)
                continue
            if user.op_type == "Shape" and user.domain in ("", "ai.onnx") and axis == -1 and head_axis is None:
                reason = _shape_reader(user, tensor, graph, shapes)  # reads dims pruning leaves, or follows it
                if reason:
                    return reason
                continue
            moved = _head_move(user, tensor, graph, head_axis, width, heads, shapes, split_heads) if axis == -1 \
                else None
            if isinstance(moved, str):
                return moved
            if moved is not None:
                kind, next_state = "between", moved
                if moved[0] is not None and head_axis is None:
                    heads = width // int(_target_tail(graph, user.input[1])[-1])
                if user.op_type == "MatMul":
                    weighted.add(user.name)
            else:
                kind = _classify(user, tensor, graph, tensor_axis, tensor_rank, width if head_axis is None else 1)
                next_state = (head_axis, _broadcast_rank(user, tensor_rank, graph))
                if kind == "between" and tensor_axis == -1 and axis == 1:
                    last_axis.update(out for out in user.output if out)
                if kind == "consumer" and head_axis is not None:
                    return f"'{tensor}' is read by {user.op_type} '{user.name}' while its channels are split into heads"
            if kind == "consumer":
                if consumer is not None:
                    return _outside_input(region_nodes, region_tensors, graph, weighted) or (
                        f"the hidden channels reach two layers ('{consumer.name}' and '{user.name}'); "
                        "only one consumer can be refitted")
                consumer = user
            elif kind == "between":
                region_nodes.append(user)
                if len(region_nodes) > MAX_BETWEEN:
                    return f"more than {MAX_BETWEEN} ops between the producer and a consumer"
                for out in user.output:
                    if out:
                        region_tensors.add(out)
                        states[out] = next_state
                        pending.append(out)
            else:
                return kind
        if any(sub_use for sub_use in _subgraph_reads(graph, tensor)):
            return f"the hidden tensor '{tensor}' is read inside a subgraph"
    if consumer is None:
        return "the hidden channels reach no Conv/Gemm/MatMul with a constant weight"
    joining = _outside_read(region_nodes, region_tensors, graph, weighted)
    outside = _outside_text(joining)
    if outside and not partners and heads is None:  # a gated block (up ⊙ act(gate)): the gate's producer joins
        gate = _gate_producer(joining[1], graph, layers, node) if joining[0].op_type == "Mul" else None
        if gate is not None:
            gated = _block_from(node, producer, graph, layers, shapes, split_heads, (gate,))
            return gated if isinstance(gated, Block) else f"{outside}; as a gated block with '{gate.name}': {gated}"
    if outside:
        return outside
    inner = next((graph.nodes[name] for name in weighted if graph.nodes[name].input[0] in region_tensors), None)
    if inner is not None:
        return (f"MatMul '{inner.name}' multiplies the hidden channels by weights computed from them "
                f"('{inner.input[0]}')")
    crossed = next((n for n in region_nodes if n.op_type != "Transpose"
                    and len({i in last_axis for i in n.input if i in region_tensors}) > 1), None)
    if crossed is not None:
        return (f"'{crossed.op_type}' node '{crossed.name}' joins hidden tensors with the channels on axis 1 and on "
                "the last axis")
    mixed = next((n for n in region_nodes if len({states[i][0] for i in n.input if i in region_tensors}) > 1), None)
    if mixed is not None:
        return (f"'{mixed.op_type}' node '{mixed.name}' joins hidden tensors whose channels are split into heads "
                "with ones that are not")
    if states[consumer.input[0]][0] is not None:
        return f"the consumer '{consumer.name}' reads the hidden channels while they are split into heads"
    data_input = consumer.input[0]
    if data_input not in region_tensors:
        return f"the consumer '{consumer.name}' reads the hidden channels on its weight input"
    other_read = next((name for name in consumer.input[1:] if name in region_tensors), None)
    if other_read is not None:
        slot = list(consumer.input).index(other_read, 1)
        return (f"the consumer '{consumer.name}' also reads the hidden channels ('{other_read}') on its "
                f"{'weight' if slot == 1 else 'bias'} input")
    if consumer.op_type == "Gemm" and float(_attr(consumer, "alpha", 1.0)) == 0.0:
        return f"the consumer '{consumer.name}' is a Gemm with alpha = 0 (its weight is not used)"
    consumer_layer = layers.get(consumer.name)
    if consumer_layer is None:
        return f"the consumer '{consumer.name}' has no constant weight"
    problem = _layer_problem(consumer_layer, "consumer")
    if problem:
        return problem
    if consumer_layer.in_channels != width:
        return f"the consumer '{consumer.name}' takes {consumer_layer.in_channels} channels, the producer gives {width}"
    if consumer_layer.cols > MAX_COLUMNS:
        return f"the consumer '{consumer.name}' has {consumer_layer.cols} inputs (over {MAX_COLUMNS} for the selection)"
    bias = _consumer_bias(consumer, graph, consumer_layer.out_features)
    named = [node, *region_nodes, consumer] + ([graph.nodes[bias[1]]] if bias and bias[0] == "add" else [])
    unnamed = next((n for n in named if not n.name or graph.name_counts[n.name] > 1), None)
    if unnamed is not None:  # blocks and the rewrite find their nodes by name
        return (f"the {unnamed.op_type} node {unnamed.name!r} in the block has no name of its own (name the graph's "
                "nodes first: onnx_alds.layers.ensure_node_names)")
    ordered = tuple(n.name for n in graph.model.graph.node if n in region_nodes)
    depthwise = [layers[n.name] for n in region_nodes if n.op_type == "Conv" and n.name in layers]
    for layer in depthwise:
        problem = _layer_problem(layer, "depthwise conv")
        if problem:
            return problem
    products = [layers[n.name] for n in region_nodes if n.op_type == "MatMul" and n.name in layers]  # P @ V
    costs = _block_costs(node, producer, consumer, consumer_layer, region_nodes, depthwise, graph, width, products,
                         tuple(zip(partners, partner_layers)))
    fixed_params, channel_params, fixed_macs, channel_macs, shared_channel_params = costs
    names = ((producer.name,) + tuple(layer.name for layer in partner_layers) + tuple(layer.name for layer in depthwise)
             + (consumer_layer.name,))
    added_bias = consumer_layer.out_features if bias is not None and bias[0] == "input" and not _has_bias(consumer) \
        else 0  # the refit writes the kept channels' mean into a new bias
    holder = graph.nodes[bias[1]] if bias is not None and bias[0] == "add" else consumer
    slot = bias[2] if bias is not None and bias[0] == "add" else 2
    old_bias = holder.input[slot] if bias is not None and slot < len(holder.input) else ""
    if old_bias and graph.stays_stored(old_bias, {holder.name}):  # shared (directly or through constant ops
        added_bias += int(np.prod(np.shape(graph.constant(old_bias))))  # such as Identity): the refit's goes beside
    channels_last = tuple(n.name for n in graph.model.graph.node if n in region_nodes and n.op_type != "Transpose"
                          and any(i in last_axis for i in n.input))
    return Block(producer.name, producer, consumer_layer, ordered, width, axis, bias, fixed_params, channel_params,
                 fixed_macs, channel_macs, names, added_bias, heads or 1, shared_channel_params, partner_layers,
                 channels_last)


def _outside_input(region_nodes, region_tensors: set, graph: _Graph, weighted: set = frozenset()) -> Optional[str]:
    """Why the block is not closed: an op in it also reads a tensor the block does not compute (a residual).
    ``weighted``: MatMul nodes that multiply the hidden channels by outside weights (attention's ``P @ V``)."""
    return _outside_text(_outside_read(region_nodes, region_tensors, graph, weighted))


def _outside_text(found: Optional[tuple[onnx.NodeProto, str]]) -> Optional[str]:
    """:func:`_outside_input`'s reason for what :func:`_outside_read` found."""
    if found is None:
        return None
    between, name = found
    return (f"'{between.op_type}' node '{between.name}' also reads '{name}', which the block does not "
            "compute (a residual or another branch joins the hidden channels)")


def _outside_read(region_nodes, region_tensors: set, graph: _Graph, weighted: set = frozenset()
                  ) -> Optional[tuple[onnx.NodeProto, str]]:
    """The first op of the block that reads a tensor the block does not compute, and that tensor."""
    for between in region_nodes:
        for slot, name in enumerate(between.input):
            if (between.name in weighted and slot == 0) or (between.op_type == "Reshape" and slot == 1):
                continue  # attention weights; a target shape computed at run time (checked by _head_move)
            if name and name not in region_tensors and graph.constant(name) is None:
                return between, name
    return None


def _subgraph_reads(graph: _Graph, tensor: str) -> list[str]:
    """The main-graph nodes whose subgraphs read ``tensor`` (at any depth, body outputs included)."""
    return graph.subgraph_readers.get(tensor, [])


def _broadcast_rank(user: onnx.NodeProto, rank: Optional[int], graph: _Graph) -> Optional[int]:
    """The rank of ``user``'s output where the hidden tensor has ``rank``: a per-channel constant of more dims
    (``[1, 1, C]`` on a Gemm's ``[N, C]``) raises it, and an op that then reads axis 1 (BatchNormalization)
    reads another axis than the channels."""
    if rank is None or user.op_type not in BINARY_OPS:
        return rank
    constants = (graph.constant(name) for name in user.input)
    return max([rank] + [np.ndim(value) for value in constants if value is not None])


def _classify(user: onnx.NodeProto, tensor: str, graph: _Graph, axis: int, rank: Optional[int], width: int) -> str:
    """``consumer``, ``between``, or the reason the hidden tensor may not flow into ``user``."""
    op = user.op_type
    where = f"'{tensor}' is read by {op} '{user.name}'"
    if user.domain not in ("", "ai.onnx"):
        return f"{where}, an op of domain '{user.domain}' (not known to act per channel)"
    if op in ("Conv", "Gemm", "MatMul"):
        weight_slot = 1
        if len(user.input) < 2 or user.input[0] != tensor or tensor == user.input[1]:
            return f"{where} on its weight input"
        if tensor in user.input[2:]:
            return f"{where} on its bias input"
        weight = graph.constant(user.input[weight_slot])
        if weight is None:
            return f"{where}, whose weight is not a constant"
        if op == "Conv":
            group = int(_attr(user, "group", 1))
            if axis != 1:
                return f"{where}, whose channels are not on axis 1 (a Gemm/MatMul producer's, or transposed)"
            if group == width and weight.ndim >= 3 and weight.shape[0] == width and weight.shape[1] == 1:
                if len(user.input) > 2 and user.input[2] and graph.constant(user.input[2]) is None:
                    return f"{where}, a depthwise conv whose bias is not a constant"
                if graph.uses[user.input[1]] > 1:
                    return f"{where}, a depthwise conv whose weight is shared with another node"
                return "between"
            if group == width and weight.ndim >= 3 and weight.shape[1] == 1 and weight.shape[0] % width == 0:
                return (f"{where}, a depthwise conv with depth multiplier {weight.shape[0] // width} (several outputs "
                        "per hidden channel)")
            if group != 1:
                return f"{where}, a grouped conv (group={group})"
            return "consumer"
        if axis != -1:
            return f"{where} after a Conv producer (a Flatten/Reshape would be needed)"
        if op == "Gemm" and _attr(user, "transA", 0):
            return f"{where} with transA = 1"
        if weight.ndim != 2:
            return f"{where}, whose weight is not a 2-D matrix"
        return "consumer"
    if op in UNARY_OPS:
        return "between" if len([o for o in user.output if o]) == 1 else f"{where} with several outputs"
    if op == "Dropout":  # the identity at inference (old exports keep the node)
        mask = user.output[1] if len(user.output) > 1 else ""
        if mask and (graph.uses[mask] or mask in graph.outputs):
            return f"{where}, whose mask output is read"
        mode = graph.constant(user.input[2]) if len(user.input) > 2 and user.input[2] else np.zeros(())
        if mode is None or np.asarray(mode).any() or int(_attr(user, "is_test", 1)) == 0:
            return f"{where} in training mode (random at run time)"
        return "between"
    if op == "Cast":  # element by element; to a float type, so the consumer's refit stays linear in it
        return "between" if _attr(user, "to", 0) in FLOAT_TYPES else f"{where}, a Cast to a non-float type"
    if op == "Clip":
        if all(graph.constant(name) is not None and graph.constant(name).size == 1 for name in user.input[1:] if name):
            return "between"
        return f"{where} with bounds that are not constant scalars"
    if op in BINARY_OPS:
        if len(user.input) != 2:
            return f"{where} with {len(user.input)} inputs"
        for name in user.input:
            if name == tensor:
                continue
            value = graph.constant(name)
            if value is None:
                if name in graph.inputs or name not in graph.producers:
                    return f"{where}, together with '{name}', which the block does not compute"
                continue  # another tensor of the block (checked once the block is complete)
            if not _per_channel_constant(value, axis, rank, width):
                return f"{where} with a constant of shape {tuple(value.shape)}, not per channel"
        if op == "PRelu" and user.input[0] != tensor:
            return f"{where} as its slope"
        return "between"
    if op == "BatchNormalization":
        if len([o for o in user.output if o]) != 1 or user.input[0] != tensor:
            return f"{where} in training mode"
        if not (axis == 1 or rank == 2):
            return f"{where} on a tensor whose channel axis is not 1"
        if any(graph.constant(name) is None for name in user.input[1:5]):
            return f"{where} with statistics that are not constants"
        return "between"
    if op == "Pad":
        if axis != 1 or rank is None:
            return f"{where}, whose channels are not on axis 1 (a Gemm/MatMul output, or transposed)"
        if len(user.input) > 3 and user.input[3]:
            return f"{where} with an axes input"
        pads = graph.constant(user.input[1]) if len(user.input) > 1 else None
        if pads is None and _attr(user, "pads", None) is not None:
            pads = np.asarray(_attr(user, "pads", None))
        if pads is None:
            return f"{where} whose pads are not constant"
        pads = np.asarray(pads).reshape(-1)
        if len(pads) != 2 * rank or any(pads[i] != 0 or pads[rank + i] != 0 for i in (0, 1)):
            return f"{where} that pads the batch or channel axis"
        if len(user.input) > 2 and user.input[2] and graph.constant(user.input[2]) is None:
            return f"{where} with a value that is not constant"
        return "between"
    if op in ("Reshape", "Flatten", "Concat", "Transpose", "Split", "Slice", "Gather", "Squeeze", "Unsqueeze"):
        return f"{where}, which moves channels"
    if op in ("Add", "Sum"):
        return f"{where} (a residual or another tensor joins the hidden one)"
    if op.startswith("Reduce"):
        if _reduces_channels(user, graph, axis, rank):
            return f"{where}, a reduction over the channel axis (it mixes the channels)"
        return f"{where}, a reduction (not supported inside a block)"
    if op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
        return f"{where}, a pooling (per channel, but not supported inside a block)"
    if op == "InstanceNormalization":
        return f"{where}, an instance normalization (per channel, but not supported inside a block)"
    if op in ("Resize", "Upsample"):
        return f"{where}, a resize (per channel where it keeps the channel axis, but not supported inside a block)"
    if op in ("Shape", "Size"):
        return f"{where}, which reads the hidden tensor's shape"
    if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        return f"{where}, a quantization (not supported inside a block: prune the float model, then quantize it)"
    return f"{where}, which does not act per channel"


def _reduces_channels(user: onnx.NodeProto, graph: _Graph, axis: int, rank: Optional[int]) -> bool:
    """Whether a Reduce* node reduces over the hidden tensor's channel ``axis`` (1, or -1: the last): its axes
    (attribute, or input from opset 18) name it, or are absent (every axis, unless ``noop_with_empty_axes``);
    axes computed at run time, or that name the channels only at a rank not known, count as no (only the
    refusal's wording depends on it)."""
    axes = _attr(user, "axes", None)
    if axes is None and len(user.input) > 1 and user.input[1]:
        value = graph.constant(user.input[1])
        if value is None:
            return False
        axes = [int(a) for a in np.asarray(value).reshape(-1)]
    if axes is None or len(axes) == 0:
        return not _attr(user, "noop_with_empty_axes", 0)
    for item in axes:
        item = int(item)
        if axis == 1 and (item == 1 or (rank is not None and item == 1 - rank)):
            return True
        if axis == -1 and (item == -1 or (rank is not None and item == rank - 1)):
            return True
    return False


def _target_tail(graph: _Graph, name: str, data: str = "", width: Optional[int] = None) -> Optional[np.ndarray]:
    """The constant trailing entries of a Reshape target: the whole target when it is a constant, else the
    trailing constant pieces of a ``Concat`` (axis 0) whose leading pieces are computed at run time (the
    batch and sequence lengths read from ``Shape``, as Hugging Face exports write them). With ``width``, a
    last piece that is the last dim of the reshaped tensor ``data`` read at run time
    (:func:`_is_last_dim_of`, GPT-2's ``x.view(-1, x.size(-1))``) counts as that width. None when the last
    entry is neither."""
    value = graph.constant(name)
    if value is not None:
        return value.reshape(-1).astype(np.int64) if value.ndim == 1 else None
    node = graph.producers.get(name)
    if node is None or node.op_type != "Concat" or node.domain not in ("", "ai.onnx") \
            or int(_attr(node, "axis", 0)) not in (0, -1):
        return None
    tail: list[int] = []
    for piece in reversed(node.input):
        value = graph.constant(piece)
        if value is None and not tail and width is not None and _is_last_dim_of(graph, piece, data):
            tail = [int(width)]
            continue
        if value is None or value.ndim != 1:
            break
        tail = [int(v) for v in value] + tail
    return np.asarray(tail, dtype=np.int64) if tail else None


_VALUE_PASS_OPS = ("Squeeze", "Unsqueeze", "Identity", "Cast")  # shape values pass them unchanged
_SLICE_END = 2 ** 30  # a Slice end at least this large reaches the end of a shape vector


def _is_last_dim_of(graph: _Graph, name: str, tensor: str) -> bool:
    """Whether ``name`` is ``tensor``'s last dim read at run time: ``Shape(tensor)`` → ``Gather`` of index -1
    or ``Slice`` from -1 to the end → any ``Squeeze``/``Unsqueeze``/``Identity``/``Cast``."""
    node = graph.producers.get(name)
    while node is not None and node.op_type in _VALUE_PASS_OPS and node.domain in ("", "ai.onnx"):
        node = graph.producers.get(node.input[0])
    if node is None or node.op_type not in ("Gather", "Slice") or not node.input:
        return False
    shape = graph.producers.get(node.input[0])
    if shape is None or shape.op_type != "Shape" or not tensor or shape.input[0] != tensor or shape.attribute:
        return False
    return _shape_positions(node, graph, None) == "last"


def _shape_positions(node: onnx.NodeProto, graph: _Graph, rank: Optional[int]) -> Optional[str]:
    """What a ``Gather``/``Slice`` of a shape vector picks: ``"last"`` (the last dim alone), ``"leading"``
    (only dims before the last; needs ``rank`` for non-negative indices), or None (anything else)."""
    if node.op_type == "Gather":
        index = graph.constant(node.input[1]) if len(node.input) > 1 else None
        if index is None or int(_attr(node, "axis", 0)) != 0 or index.size == 0:
            return None
        values = [int(v) for v in np.asarray(index).reshape(-1)]
        if values == [-1] or (rank is not None and values == [rank - 1]):
            return "last"
        if rank is not None and all(-rank <= v < -1 or 0 <= v < rank - 1 for v in values):
            return "leading"
        return None
    if node.op_type != "Slice" or len(node.input) < 3:
        return None
    starts, ends = graph.constant(node.input[1]), graph.constant(node.input[2])
    axes = graph.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else np.zeros(1, np.int64)
    steps = graph.constant(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
    if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or int(axes.reshape(-1)[0]) not in (0, -1) \
            or int(steps.reshape(-1)[0]) != 1:
        return None
    start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
    if start == -1 and end >= _SLICE_END:
        return "last"
    if rank is None:
        return None
    start = max(0, start + rank if start < 0 else start)
    end = min(rank, end + rank if end < 0 else end)
    return "leading" if end <= rank - 1 else ("last" if start == rank - 1 and end == rank else None)


def _shape_reader(user: onnx.NodeProto, tensor: str, graph: _Graph, shapes: Sequence[Mapping[str, tuple]]
                  ) -> Optional[str]:
    """Why ``Shape(tensor)`` of a channels-last hidden tensor keeps it out of a block (None: it does not).
    Its dims may be read where pruning does not change them, the dims before the last (``Gather``/``Slice``;
    the rank from ``shapes``), and the last dim only as the last piece of a ``Concat`` target of a Reshape
    of ``tensor`` itself (GPT-2's ``x.view(-1, x.size(-1))``), which then follows the kept width."""
    where = f"'{tensor}' is read by Shape '{user.name}'"
    if user.attribute or graph.escapes(user.output[0]):
        return f"{where}, which reads the hidden tensor's shape"
    ranks = {len(known[tensor]) for known in shapes if tensor in known}
    rank = next(iter(ranks)) if len(ranks) == 1 else None
    for reader in graph.users.get(user.output[0], []):
        picked = _shape_positions(reader, graph, rank) if reader.op_type in ("Gather", "Slice") and \
            reader.input[0] == user.output[0] and reader.domain in ("", "ai.onnx") else None
        if picked == "leading":
            continue
        if picked == "last" and _feeds_own_targets(reader.output[0], tensor, graph):
            continue
        return f"{where}, which reads the hidden tensor's shape ({reader.op_type} '{reader.name}' uses its width)"
    return None


def _feeds_own_targets(value: str, tensor: str, graph: _Graph) -> bool:
    """Whether the run-time width ``value`` reaches nothing but the last piece of Concat targets of
    Reshapes of ``tensor`` (through value-preserving ops)."""
    if graph.escapes(value):
        return False
    for user in graph.users.get(value, []):
        if user.op_type in _VALUE_PASS_OPS and user.domain in ("", "ai.onnx"):
            if not _feeds_own_targets(user.output[0], tensor, graph):
                return False
            continue
        if user.op_type != "Concat" or user.input[-1] != value or list(user.input).count(value) != 1:
            return False
        readers = graph.users.get(user.output[0], [])
        if not readers or graph.escapes(user.output[0]) or any(
                r.op_type != "Reshape" or r.input[0] != tensor or r.input[1] != user.output[0] for r in readers):
            return False
    return True


def _last_piece(graph: _Graph, concat: onnx.NodeProto) -> int:
    """The slot of a Concat target's last non-empty piece (the one holding the target's last entry)."""
    return max(slot for slot, piece in enumerate(concat.input) if graph.constant(piece) is None
               or graph.constant(piece).size)


def _head_move(user: onnx.NodeProto, tensor: str, graph: _Graph, head_axis: Optional[int], width: int,
               heads: Optional[int], shapes: Sequence[Mapping[str, tuple]], split_heads: bool = False):
    """How a MatMul/Gemm producer's hidden channels pass ``user`` when it reshapes or transposes them or
    multiplies them by attention weights: the next ``(head axis, rank)`` state, a reason they may not, or
    None when ``user`` is none of those ops (:func:`_classify` decides).

    Channels stay one last axis (``head_axis`` None) or are split into ``heads × dims`` (the last two axes
    after a Reshape whose target ends in ``heads, dims``; channel ``c = head·dims + dim``); a Transpose
    must keep the last axis last (it moves the head axis); ``P @ V`` (the hidden tensor the second
    operand, ``P`` computed outside) acts on each channel alone as long as the head axis is not the one
    it contracts (-2); a Reshape whose target ends in ``heads·dims`` on a tensor whose head axis is -2
    merges them back. The Reshape targets may be constants or a Concat with run-time leading pieces and
    constant trailing ones; the pruned model writes the new width (or dims) into them. A split whose
    target infers the heads (``…, -1, dims``) counts only where every shape set in ``shapes`` shows that
    axis holds exactly ``width/dims`` (else the axis could mix heads with other dims), one that infers the
    last axis (``…, -1``) only where they show it holds the width, and ``P @ V`` only where they show ``P``
    has two axes or more (a 1-D ``P`` drops an axis of ``V``)."""
    op = user.op_type
    if user.domain not in ("", "ai.onnx") or op not in ("Reshape", "Transpose", "MatMul"):
        return None
    where = f"'{tensor}' is read by {op} '{user.name}'"
    if op == "MatMul":
        if head_axis is None or len(user.input) != 2 or user.input[1] != tensor or user.input[0] == tensor:
            return None  # a consumer, or not a product with attention weights: _classify decides
        if head_axis == -2:
            return f"{where}, which sums over the head axis"
        ranks = {len(known[user.input[0]]) for known in shapes if user.input[0] in known}
        if not ranks or min(ranks) < 2:
            return f"{where}, whose first operand '{user.input[0]}' is not known to have two axes or more"
        return (head_axis, None)
    if op == "Transpose":
        perm = _attr(user, "perm", None)
        if perm is None or len(perm) < 2 or int(perm[-1]) != len(perm) - 1:
            return f"{where}, which moves channels"
        if head_axis is None:
            return (None, None)
        rank = len(perm)
        if rank + head_axis < 0:
            return f"{where}, whose rank is below the heads' axis"
        return (list(perm).index(rank + head_axis) - rank, None)
    if user.input[0] != tensor or len(user.input) < 2:
        return f"{where}, which moves channels"
    tail = _target_tail(graph, user.input[1], tensor, width if head_axis is None else None)
    if tail is None:
        return (f"{where}, whose target shape is not a constant and does not end in constants (computed at run "
                "time, or an overridable input)")
    if graph.constant(user.input[1]) is not None and len(tail) < 2:
        return f"{where}, which flattens every axis"
    if np.any(tail == 0) or np.sum(tail == -1) > 1:  # (without 0 entries, allowzero changes nothing)
        return f"{where}, whose target {tail.tolist()} copies (0) or infers (-1) a dimension"
    known = [every.get(user.output[0]) for every in shapes]
    inferred_width = int(tail[-1]) == -1 and bool(known) and all(k is not None and len(k) >= 1 and int(k[-1]) == width
                                                                for k in known)
    if int(tail[-1]) == -1 and not inferred_width:
        unsized = " (the model could not be sized at a second input shape)" if None in known else ""
        return (f"{where}, whose target infers its last axis (-1), which could not be checked to hold the width "
                f"at two input shapes{unsized}")
    if head_axis is None:
        if int(tail[-1]) == width or inferred_width:
            return (None, None)  # regroups the leading dims only (tf2onnx's Dense on a 3-D input)
        dims = int(tail[-1])
        if not split_heads:
            return (f"{where}, which splits the channels into several axes (attention heads, a feature map: "
                    "--prune-heads follows a split into heads that reach one consumer, attention's V)")
        if len(tail) < 2 or not 0 < dims < width or width % dims or heads not in (None, width // dims):
            return f"{where}, which moves channels"
        count = width // dims
        if int(tail[-2]) == -1:
            if not known or any(k is None or len(k) < 2 or int(k[-2]) != count for k in known):
                unsized = " (the model could not be sized at a second input shape)" if None in known else ""
                return (f"{where}, whose target infers the number of heads (-1) where it could not be checked to "
                        f"be {count}{unsized}")
        elif int(tail[-2]) != count:
            return f"{where}, which moves channels"
        return (-2, None)  # splits the channels into heads × dims (attention's V)
    if head_axis == -2 and (int(tail[-1]) == width or inferred_width):
        return (None, None)  # merges the heads back
    return f"{where}, which moves channels between heads"


def _consumer_bias(consumer: onnx.NodeProto, graph: _Graph, out_features: int) -> Optional[tuple]:
    if consumer.op_type == "Conv":
        if len(consumer.input) > 2 and consumer.input[2] and graph.constant(consumer.input[2]) is None:
            return None
        return ("input", consumer.name)
    if consumer.op_type == "Gemm":
        if float(_attr(consumer, "beta", 1.0)) == 0.0:
            return None
        if len(consumer.input) > 2 and consumer.input[2]:
            value = graph.constant(consumer.input[2])
            if value is None or not _per_channel_constant(value, -1, 2, out_features):
                return None
        return ("input", consumer.name)
    users = graph.users.get(consumer.output[0], [])
    if len(users) != 1 or graph.uses[consumer.output[0]] != 1 or users[0].op_type != "Add":
        return None
    add = users[0]
    other = 1 if add.input[0] == consumer.output[0] else 0
    if add.input[other] == consumer.output[0]:
        return None
    value = graph.constant(add.input[other])
    if value is None or not _per_channel_constant(value, -1, None, out_features):
        return None
    return ("add", add.name, other)


def _block_costs(node, producer: Layer, consumer: onnx.NodeProto, consumer_layer: Layer, region_nodes,
                 depthwise: Sequence[Layer], graph: _Graph, width: int, products: Sequence[Layer] = (),
                 partners: Sequence[tuple[onnx.NodeProto, Layer]] = ()):
    """Weights and MACs of the block: a part that does not depend on the width, one per hidden channel, and
    the per-channel weights of constants other nodes read too (narrowing adds their sliced copy; the
    original stays); ``products``: attention's ``P @ V`` inside the block, whose MACs scale with the
    channels too; ``partners``: a gated block's other producers (nodes and layers), narrowed with it."""
    own = {node.name, consumer.name, *(n.name for n in region_nodes), *(n.name for n, _ in partners)}
    sliced: dict[str, int] = {}  # per-channel constants of the block -> weights per channel
    for producing in (node, *(n for n, _ in partners)):
        if _has_bias(producing):
            sliced[producing.input[2]] = 1
    channel_params = producer.cols + sum(layer.cols for _, layer in partners) \
        + consumer_layer.out_features * consumer_layer.kernel
    fixed_params = consumer_layer.out_features if _has_bias(consumer) else 0
    fixed: dict[str, int] = {}  # constants that do not scale (Clip bounds ...), once each however many read them
    for between in region_nodes:
        if between.op_type == "Conv":
            channel_params += int(np.prod(graph.constant(between.input[1]).shape[1:]))
            if _has_bias(between):
                sliced[between.input[2]] = 1
            continue
        for name in between.input:
            value = graph.constant(name)
            if value is None:
                continue
            if value.size > 1 and value.size % width == 0 and between.op_type in BINARY_OPS + ("BatchNormalization",):
                sliced[name] = value.size // width
            elif between.op_type in BINARY_OPS + ("BatchNormalization", "Clip"):
                fixed[name] = int(value.size)
    fixed_params += sum(fixed.values())
    channel_params += sum(k for name, k in sliced.items() if not graph.read_beyond(name, own))
    shared_channel_params = sum(k for name, k in sliced.items() if graph.read_beyond(name, own))
    all_layers = [producer, consumer_layer, *depthwise, *(layer for _, layer in partners)]
    if any(layer.positions is None for layer in all_layers) or any(layer.macs is None for layer in products):
        return fixed_params, channel_params, None, None, shared_channel_params
    channel_macs = (producer.positions * producer.cols + sum(layer.positions * layer.cols for _, layer in partners)
                    + consumer_layer.positions * consumer_layer.out_features
                    * consumer_layer.kernel + sum(layer.positions * layer.kernel for layer in depthwise)
                    + sum(layer.macs // width for layer in products))
    return fixed_params, channel_params, 0, channel_macs, shared_channel_params


def _has_bias(node: onnx.NodeProto) -> bool:
    return node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and bool(node.input[2])


# ------------------------------------------------------------------------------------ selection and refit


def consumer_matrix(block: Block, graph: _Graph) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The consumer's folded weight ``W`` (``f × c·κ``, float64) and its effective bias ``b`` (length
    ``f``; zeros where the bias slot is empty, None without a bias slot)."""
    node = graph.nodes[block.consumer.name]
    weight = graph.constant(node.input[1]).astype(np.float64)
    if node.op_type == "Conv":
        matrix = weight.reshape(weight.shape[0], -1)
    elif node.op_type == "Gemm":
        matrix = (weight if _attr(node, "transB", 0) else weight.T) * float(_attr(node, "alpha", 1.0))
    else:
        matrix = weight.T
    f = matrix.shape[0]
    if block.bias is None:
        return matrix, None
    if block.bias[0] == "add":
        add = graph.nodes[block.bias[1]]
        value = graph.constant(add.input[block.bias[2]]).astype(np.float64)
        return matrix, np.broadcast_to(value.reshape(-1), (f,)).copy()
    if len(node.input) > 2 and node.input[2]:
        value = graph.constant(node.input[2]).astype(np.float64).reshape(-1)
        scale = float(_attr(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
        return matrix, np.broadcast_to(value, (f,)).copy() * scale
    return matrix, np.zeros(f)


def width_curve(block: Block, matrix: np.ndarray, bias: Optional[np.ndarray], stat, *, multiple: int = 1,
                name: Optional[str] = None) -> WidthCurve:
    """Greedy channel order and the relative RMS output error at every width that is a multiple of
    ``multiple`` (and at the full width), for one block (see the module docstring for the method).

    ``matrix``: the consumer's folded weight (``f × c·κ``); ``bias``: its bias or None (no bias slot:
    the fit ignores the mean); ``stat``: :class:`onnx_alds.calibrate.LayerStatistics` of the consumer's
    input (``second_moment`` ``c·κ × c·κ``, ``mean`` ``c·κ``). Cost: ``c/multiple`` rank-``multiple·κ``
    updates of a ``c·κ × c·κ`` matrix.
    """
    channels, kernel = block.width, matrix.shape[1] // block.width
    second = np.asarray(stat.second_moment, dtype=np.float64)
    mean = np.asarray(stat.mean, dtype=np.float64).reshape(-1)
    residual = second - np.outer(mean, mean) if bias is not None else second.copy()
    residual = (residual + residual.T) / 2
    total = float(np.sum((matrix @ second) * matrix))
    if bias is not None:
        total += 2.0 * float(bias @ (matrix @ mean)) + float(bias @ bias)
    total = max(total, 1e-300)
    start = residual.copy()
    # scale every column to unit variance (the selection does not change; outlier channels, e.g. a
    # transformer's massive activations, no longer swamp the downdates in rounding)
    scale = np.sqrt(np.maximum(np.diag(residual), 0.0))
    scale[scale <= 1e-12 * max(float(scale.max(initial=0.0)), 1e-300)] = 1.0
    residual = residual / np.outer(scale, scale)
    scaled = matrix * scale[None, :]
    ridge = RIDGE
    gram = scaled @ residual  # G = W S
    remaining = list(range(channels))
    order: list[int] = []
    widths: list[int] = []
    heads = max(1, int(block.heads))
    step = max(1, int(multiple))
    if heads > 1:  # every head keeps the same number of dims: steps of whole rows of heads
        step = int(np.lcm(step, heads))
    # channels the consumer does not read (all-zero weight columns) come last: within a step of the rank
    # multiple they could stand in for live channels they correlate with, which explain the output themselves
    silent = ~np.any(matrix.reshape(matrix.shape[0], channels, kernel) != 0, axis=(0, 2))
    while remaining:
        gains = _channel_gains(gram, residual, remaining, kernel, ridge)
        take = min(step, len(remaining))
        if len(order) + take < channels and (len(order) + take) % step:
            take = step - len(order) % step
        picks = _best_channels(np.asarray(remaining), gains, silent, take, heads, channels // heads)
        columns = np.concatenate([np.arange(j * kernel, (j + 1) * kernel) for j in picks])
        block_s = residual[np.ix_(columns, columns)] + ridge * np.eye(len(columns))
        try:
            transfer = np.linalg.solve(block_s, residual[columns])
        except np.linalg.LinAlgError:
            transfer = np.linalg.lstsq(block_s, residual[columns], rcond=None)[0]
        gram -= gram[:, columns] @ transfer
        residual -= residual[:, columns] @ transfer
        order += picks
        chosen = set(picks)
        remaining = [j for j in remaining if j not in chosen]
        widths.append(len(order))
    errors_array = _prefix_errors(matrix, start, np.asarray(order), kernel, np.asarray(widths)) / np.sqrt(total)
    errors_array[-1] = 0.0
    errors_array = np.minimum.accumulate(errors_array)
    return WidthCurve(name or block.name, np.asarray(widths, dtype=np.int64), errors_array,
                      np.asarray(order, dtype=np.int64))


def _best_channels(remaining: np.ndarray, gains: np.ndarray, silent: np.ndarray, take: int, heads: int,
                   dims: int) -> list[int]:
    """The ``take`` remaining channels of largest gain, ``take/heads`` from each head (channel ``c`` is in
    head ``c // dims``) when the channels are split into heads; silent channels only once no live one is
    left (of the head)."""
    picks: list[int] = []
    groups = [np.ones(len(remaining), dtype=bool)] if heads == 1 else \
        [remaining // dims == head for head in range(heads)]
    for members in groups:
        index = np.flatnonzero(members)
        score = gains[index]
        if not silent[remaining[index]].all():
            score = np.where(silent[remaining[index]], -np.inf, score)
        picks += [int(remaining[index[i]]) for i in np.argsort(-score, kind="stable")[:take // len(groups)]]
    return picks


def _prefix_errors(matrix: np.ndarray, moment: np.ndarray, order: np.ndarray, kernel: int,
                   widths: np.ndarray) -> np.ndarray:
    """RMS output error left after the least-squares refit on the first ``w`` channels of ``order``, for
    every ``w`` in ``widths``: with ``S_PP = L Lᵀ`` (Cholesky, channels in ``order``), keeping a prefix
    explains the prefix of the white variables, so the residual is the energy of the later columns of
    ``W_P L`` (exact, no accumulated rounding)."""
    columns = (order[:, None] * kernel + np.arange(kernel)[None, :]).reshape(-1)
    permuted = moment[np.ix_(columns, columns)]
    # the moment is positive semi-definite up to rounding (float32 sums, C − μμᵀ): clip the rounding's
    # negative eigenvalues, then a Cholesky with a jitter far below any error that matters
    values, vectors = np.linalg.eigh(permuted)
    top = max(float(values.max(initial=0.0)), 1e-300)
    permuted = (vectors * np.maximum(values, 0.0)) @ vectors.T
    jitter = 1e-12 * top
    for _ in range(8):
        try:
            factor = np.linalg.cholesky(permuted + jitter * np.eye(len(columns)))
            break
        except np.linalg.LinAlgError:
            jitter *= 10.0
    else:
        factor = np.linalg.qr((vectors * np.sqrt(np.maximum(values, 0.0))).T)[1].T
    energy = np.sum((matrix[:, columns] @ factor) ** 2, axis=0)
    tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
    return np.sqrt(np.maximum(tail[np.asarray(widths) * kernel], 0.0))


def _channel_gains(gram: np.ndarray, residual: np.ndarray, remaining: Sequence[int], kernel: int,
                   ridge: float) -> np.ndarray:
    """Output energy each remaining channel explains after the refit: ``tr(G_J S_JJ⁻¹ G_Jᵀ)``."""
    index = np.asarray(remaining)
    if kernel == 1:
        diag = np.diag(residual)[index] + ridge
        return np.sum(gram[:, index] ** 2, axis=0) / diag
    columns = (index[:, None] * kernel + np.arange(kernel)[None, :])  # (n, κ)
    blocks = residual[columns[:, :, None], columns[:, None, :]] + ridge * np.eye(kernel)
    g = gram[:, columns]  # (f, n, κ)
    solved = np.linalg.solve(blocks, np.transpose(g, (1, 2, 0)))  # (n, κ, f)
    return np.einsum("fnk,nkf->n", g, solved)


def refit_consumer(matrix: np.ndarray, bias: Optional[np.ndarray], stat, kept: np.ndarray, kernel: int
                   ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Ridge least-squares refit of the consumer on the kept channels, the ridge toward their own weights
    (module docstring).

    ``matrix`` ``f × c·κ``, ``bias`` ``f`` or None, ``kept`` channel indices (ascending). Returns the
    new folded weight ``f × w·κ`` and bias (None when ``bias`` is None). Raises nothing: a singular
    system falls back to the minimum-norm solution.
    """
    columns = (np.asarray(kept)[:, None] * kernel + np.arange(kernel)[None, :]).reshape(-1)
    second = np.asarray(stat.second_moment, dtype=np.float64)
    mean = np.asarray(stat.mean, dtype=np.float64).reshape(-1)
    # sequential statistics: x̃ (what the consumer sees with earlier blocks pruned) is regressed on, the
    # original x gives the target: E[x x̃ᵀ] (cross) and E[x] replace C and μ on the target side
    cross_moment = second if getattr(stat, "cross", None) is None else np.asarray(stat.cross, dtype=np.float64)
    target_mean = mean if getattr(stat, "reference_mean", None) is None else \
        np.asarray(stat.reference_mean, dtype=np.float64).reshape(-1)
    # relative to the kept channels' own energy, at any scale (an absolute floor swamped activations of
    # 1e-16, whose moments are 1e-32); all-silent channels: any ridge keeps their own weights
    energy = float(np.mean(np.diag(second)[columns])) if len(columns) else 0.0
    ridge = RIDGE * (energy if energy > 0 else 1.0)
    size = len(columns)
    prior = ridge * matrix[:, columns]  # the ridge pulls toward the kept columns' own weights
    if bias is None:
        system = second[np.ix_(columns, columns)] + ridge * np.eye(size)
        cross = matrix @ cross_moment[:, columns] + prior
    else:
        system = np.empty((size + 1, size + 1))
        system[:size, :size] = second[np.ix_(columns, columns)] + ridge * np.eye(size)
        system[:size, size] = system[size, :size] = mean[columns]
        system[size, size] = 1.0
        cross = np.empty((matrix.shape[0], size + 1))
        cross[:, :size] = matrix @ cross_moment[:, columns] + np.outer(bias, mean[columns]) + prior
        cross[:, size] = matrix @ target_mean + bias
    try:
        solution = np.linalg.solve(system.T, cross.T).T
    except np.linalg.LinAlgError:
        solution = np.linalg.lstsq(system.T, cross.T, rcond=None)[0].T
    if bias is None:
        return solution, None
    return solution[:, :size], solution[:, size]


# ----------------------------------------------------------------------------------------------- rewrite


@dataclass(frozen=True)
class _Decision:
    block: Block
    kept: np.ndarray  # ascending channel indices
    matrix: Optional[np.ndarray]  # refitted consumer weight (f × w·κ), None: slice only
    bias: Optional[np.ndarray]


def prune_model(model: onnx.ModelProto, decisions: Sequence[tuple[Block, np.ndarray, Optional[np.ndarray],
                                                                  Optional[np.ndarray]]],
                widened: Optional[dict[str, str]] = None) -> onnx.ModelProto:
    """A copy of ``model`` with each block narrowed to its kept channels.

    ``decisions``: ``(block, kept, matrix, bias)``: ``kept`` the ascending channel indices, ``matrix``
    the consumer's new folded weight (``f × len(kept)·κ``; None: the consumer's columns are only
    sliced) and ``bias`` its new bias (length ``f``, or None to keep the old one). Sliced weights are new
    initializers named after the old ones (``<name>.pruned``), in the type the graph computes them in; a
    rewritten constant that was computed from a narrower stored type or a ``DequantizeLinear`` goes into
    ``widened`` (its name → how it was stored, for the report's note); what no node reads any more is removed;
    a depthwise conv's ``group`` becomes the kept width; the value_info of the block's hidden tensors
    is dropped (shape inference redoes it). The input model is not modified.
    """
    from .rewrite import Names

    new = copy.deepcopy(model)
    graph = _Graph(new)
    stored = set(graph.tensors)
    names = Names(new)
    replaced: set[str] = set()
    added: list[onnx.TensorProto] = []

    def put(node: onnx.NodeProto, slot: int, value: np.ndarray, like: Optional[str]) -> None:
        old = node.input[slot] if slot < len(node.input) else ""
        dtype = np.float32
        if like and graph.constant(like) is not None:
            dtype = graph.constant(like).dtype
            if widened is not None and like not in stored and like not in widened:
                types, dequantizes = graph.stored_types(like)
                bits = 8 * np.dtype(dtype).itemsize
                narrow = sorted(onnx.TensorProto.DataType.Name(t).lower() for t in types if element_bits(t) < bits)
                if dequantizes or narrow:
                    widened[like] = "dequantized" if dequantizes else narrow[0]
        tensor = numpy_helper.from_array(np.ascontiguousarray(value.astype(dtype)),
                                         names.fresh(f"{old or like or node.name}.pruned"))
        added.append(tensor)
        graph.tensors[tensor.name] = tensor
        graph._values[tensor.name] = value.astype(dtype)
        while len(node.input) <= slot:
            node.input.append("")
        if old:
            replaced.add(old)
        node.input[slot] = tensor.name

    hidden_tensors: set[str] = set()
    clones: dict[str, list[onnx.NodeProto]] = {}  # copied Concat targets, by the original Concat's output
    for block, kept, matrix, bias in decisions:
        kept = np.sort(np.asarray(kept, dtype=np.int64))
        if len(kept) == block.width and matrix is None and bias is None:
            continue
        for producing in (block.producer, *block.partners):  # (a gated block's gate narrows with it)
            producer = graph.nodes[producing.name]
            hidden_tensors.add(producer.output[0])
            weight = graph.constant(producer.input[1])
            if producer.op_type == "Conv":
                put(producer, 1, weight[kept], producer.input[1])
            elif producer.op_type == "Gemm" and _attr(producer, "transB", 0):
                put(producer, 1, weight[kept], producer.input[1])
            else:
                put(producer, 1, weight[:, kept], producer.input[1])
            if _has_bias(producer):
                value = graph.constant(producer.input[2])
                if producer.op_type == "Conv":
                    put(producer, 2, value[kept], producer.input[2])
                elif value.ndim and value.shape[-1] == block.width:
                    put(producer, 2, value[..., kept], producer.input[2])
        for name in block.between:
            node = graph.nodes[name]
            hidden_tensors.update(out for out in node.output if out)
            if node.op_type == "Conv":
                put(node, 1, graph.constant(node.input[1])[kept], node.input[1])
                if _has_bias(node):
                    put(node, 2, graph.constant(node.input[2])[kept], node.input[2])
                for attribute in node.attribute:
                    if attribute.name == "group":
                        attribute.i = len(kept)
                continue
            if node.op_type == "Reshape":  # its target ends in the width, or in heads and dims (_head_move)
                copied = _narrow_target(node, graph, block, len(kept), put, names)
                if copied is not None:
                    clones.setdefault(copied[0], []).append(copied[1])
                continue
            if node.op_type == "BatchNormalization":
                for slot in range(1, 5):
                    put(node, slot, graph.constant(node.input[slot])[kept], node.input[slot])
                continue
            if node.op_type in BINARY_OPS:
                for slot, name_in in enumerate(node.input):
                    value = graph.constant(name_in)
                    if value is None or value.ndim == 0:
                        continue
                    axis = value.ndim - 1 if block.axis == -1 or name in block.channels_last else \
                        value.ndim - (len(block.producer.weight_shape) - 1)
                    if 0 <= axis < value.ndim and value.shape[axis] == block.width and block.width > 1:
                        put(node, slot, np.take(value, kept, axis=axis), name_in)
        consumer = graph.nodes[block.consumer.name]
        kernel = block.consumer.kernel
        columns = (kept[:, None] * kernel + np.arange(kernel)[None, :]).reshape(-1)
        weight = graph.constant(consumer.input[1]).astype(np.float64)
        if consumer.op_type == "Conv":
            folded = weight.reshape(weight.shape[0], -1)
            folded = folded[:, columns] if matrix is None else matrix
            put(consumer, 1, folded.reshape((weight.shape[0], len(kept)) + weight.shape[2:]), consumer.input[1])
        else:
            alpha = float(_attr(consumer, "alpha", 1.0)) if consumer.op_type == "Gemm" else 1.0
            folded = (weight if consumer.op_type == "Gemm" and _attr(consumer, "transB", 0) else weight.T)
            folded = folded[:, columns] if matrix is None else matrix / alpha
            stored = folded if consumer.op_type == "Gemm" and _attr(consumer, "transB", 0) else folded.T
            put(consumer, 1, stored, consumer.input[1])
        if bias is not None and block.bias is not None:
            if block.bias[0] == "add":
                add = graph.nodes[block.bias[1]]
                old = graph.constant(add.input[block.bias[2]])
                shape = old.shape if old.size == bias.size else (bias.size,)
                put(add, block.bias[2], bias.reshape(shape), add.input[block.bias[2]])
            else:
                scale = float(_attr(consumer, "beta", 1.0)) if consumer.op_type == "Gemm" else 1.0
                like = consumer.input[2] if len(consumer.input) > 2 and consumer.input[2] else consumer.input[1]
                put(consumer, 2, bias / scale, like)
    new.graph.initializer.extend(added)
    if clones:
        nodes = []
        for node in new.graph.node:
            nodes.append(node)
            nodes.extend(clones.get(node.output[0], []) if node.output else [])
        del new.graph.node[:]
        new.graph.node.extend(nodes)
    _drop_unused(new, replaced)
    _list_ir3_initializers(new)
    keep_info = [value for value in new.graph.value_info if value.name not in hidden_tensors]
    del new.graph.value_info[:]
    new.graph.value_info.extend(keep_info)
    return new


def _narrow_target(node: onnx.NodeProto, graph: _Graph, block: Block, width: int, put,
                   names) -> Optional[tuple[str, onnx.NodeProto]]:
    """Write the kept ``width`` into a Reshape target of ``block``: its last entry is the width (or, where
    the target splits the channels into heads, the dims per head). A constant target becomes a new
    initializer; a Concat target gets a new last piece, on a copy of the Concat when others read it.
    Returns the Concat's output and that copy (not yet in the graph: it goes right after the Concat), else
    None."""
    target = graph.constant(node.input[1])
    concat = graph.producers.get(node.input[1])
    if target is None and concat is not None and concat.op_type == "Concat" and _is_last_dim_of(
            graph, concat.input[_last_piece(graph, concat)], node.input[0]):
        return None  # the width read from the tensor's shape at run time follows the kept width by itself
    tail = _target_tail(graph, node.input[1])
    if int(tail[-1]) == -1:  # inferred (checked to be the width): follows the kept width by itself
        return None
    last = width if int(tail[-1]) == block.width else width // block.heads
    if target is not None:
        target = np.array(target, copy=True)
        target[-1] = last
        put(node, 1, target, node.input[1])
        return None
    concat, copied = graph.producers[node.input[1]], None
    if graph.uses[concat.output[0]] > 1:  # shared (the same target Concat for several reshapes): copy it
        clone = onnx.NodeProto()
        clone.CopyFrom(concat)
        clone.name = names.fresh_node(f"{concat.name or 'Concat'}.pruned")
        del clone.output[:]
        clone.output.append(names.fresh(f"{concat.output[0]}.pruned"))
        graph.uses[concat.output[0]] -= 1
        graph.uses[clone.output[0]] += 1
        node.input[1] = clone.output[0]
        copied = (concat.output[0], clone)
        concat = clone
    slot = _last_piece(graph, concat)
    piece = np.array(graph.constant(concat.input[slot]), copy=True)
    piece[-1] = last
    put(concat, slot, piece, concat.input[slot])
    return copied


def _drop_unused(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove what computed the replaced tensors ``candidates`` once nothing reads it any more: their
    initializers, Constant nodes, and the constant chains (``W → Identity/Transpose/Cast → weight``,
    ``q, scale → DequantizeLinear → bias``: every node of them computes from constants alone, as
    :meth:`_Graph.constant` evaluated) that fed them, back to the chain's own initializers."""
    graph = model.graph
    used: Counter = Counter()
    use_counts(graph, used)  # readers at every subgraph depth count
    declared = {value.name for value in graph.input}
    producers = {out: node for node in graph.node for out in node.output if out}
    dead: set[str] = set()
    dead_nodes: set[int] = set()  # id() of the removed nodes (protos are not hashable)
    pending = list(candidates)
    while pending:
        name = pending.pop()
        if name in dead or used[name] or (model.ir_version >= 4 and name in declared):
            continue
        node = producers.get(name)
        if node is not None:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                continue
            if any(used[out] for out in node.output if out) or id(node) in dead_nodes:
                continue
            dead_nodes.add(id(node))
            for value in node.input:  # the chain's inputs lose one reader each
                if value:
                    used[value] -= 1
                    pending.append(value)
        dead.add(name)
    if not dead:
        return
    kept = [init for init in graph.initializer if init.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [node for node in graph.node if id(node) not in dead_nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    if model.ir_version < 4:
        inputs = [value for value in graph.input if value.name not in dead]
        del graph.input[:]
        graph.input.extend(inputs)


def _list_ir3_initializers(new: onnx.ModelProto) -> None:
    """IR 3 needs every initializer listed as a graph input."""
    if new.ir_version >= 4:
        return
    listed = {value.name for value in new.graph.input}
    for init in new.graph.initializer:
        if init.name not in listed:
            new.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


# -------------------------------------------------------------------------------------------- allocation


def _block_cost(block: Block, width: int, target: str) -> float:
    if target == "params":
        return float(block.params(width))
    macs = block.macs(width)
    return float(macs or 0)


def allocate_widths(curves: Sequence[WidthCurve], blocks: Sequence[Block], budget: float, target: str,
                    extra: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> tuple[list[int], list[int], float]:
    """Min-max of the block errors (and of ``extra`` options) under ``budget``.

    ``budget``: the weights (``target = "params"``) or MACs (``"flops"``) the blocks and the extra
    items may use together. ``extra``: per other item (a low-rank layer) its options as ``(costs,
    errors)`` arrays, the dense option included (error 0). For the threshold ``ε`` each block takes its
    narrowest width and each item its cheapest option with error ``≤ ε``; the smallest ``ε`` among the
    finitely many table values whose total cost fits is found by bisection (exact: cost falls as ``ε``
    grows); budget left over then lowers the largest errors below ``ε`` (:func:`_spend_leftover`).
    Returns the widths, the chosen extra option indices and ``ε``. Raises
    :class:`onnx_alds.errors.BudgetError` when even the narrowest widths do not fit.
    """
    costs = [np.array([_block_cost(block, int(w), target) for w in curve.widths]) for block, curve in
             zip(blocks, curves)]
    tables = [(np.asarray(c, dtype=np.float64), np.asarray(e, dtype=np.float64)) for c, e in extra]
    thresholds = np.unique(np.concatenate([curve.errors for curve in curves] + [e for _, e in tables] + [[0.0]]))

    def pick(epsilon: float):
        """Option index per block and per extra item (cheapest with error ≤ ε), and their total cost."""
        indices, total = [], 0.0
        for curve, cost in zip(curves, costs):
            indices.append(int(np.argmax(curve.errors <= epsilon + 1e-15)))
            total += cost[indices[-1]]
        for cost, errors in tables:
            allowed = np.flatnonzero(errors <= epsilon + 1e-15)
            indices.append(int(allowed[np.argmin(cost[allowed])]))
            total += cost[indices[-1]]
        return indices, total

    low, high = 0, len(thresholds) - 1
    if pick(thresholds[high])[1] > budget + 1e-6:
        raise BudgetError("cannot fit the budget")
    while low < high:
        middle = (low + high) // 2
        if pick(thresholds[middle])[1] <= budget + 1e-6:
            high = middle
        else:
            low = middle + 1
    indices, total = pick(thresholds[low])
    items = [(cost, curve.errors) for cost, curve in zip(costs, curves)] + tables
    indices = _spend_leftover(items, indices, budget - total)
    widths = [int(curve.widths[i]) for curve, i in zip(curves, indices)]
    return widths, indices[len(curves):], float(thresholds[low])


def _spend_leftover(items: Sequence[tuple[np.ndarray, np.ndarray]], picks: list[int], leftover: float) -> list[int]:
    """After the min-max threshold, every item sits at its cheapest option under it, and budget may be
    left (error ties: several widths or ranks under the threshold). Spend it: the item with the largest
    error moves to its cheapest option with a smaller error that still fits, until none fits. No error
    grows, so the min-max stays."""
    picks = list(picks)
    while True:
        moved = False
        for i in sorted(range(len(items)), key=lambda k: -float(items[k][1][picks[k]])):
            cost, errors = items[i]
            better = np.flatnonzero((errors < errors[picks[i]] - 1e-15)
                                    & (cost - cost[picks[i]] <= leftover + 1e-6))
            if len(better):
                move = int(better[np.argmin(cost[better])])
                leftover -= float(cost[move] - cost[picks[i]])
                picks[i] = move
                moved = True
                break
        if not moved:
            return picks


def allocate_sum(items: Sequence[tuple[np.ndarray, np.ndarray]], budget: float) -> list[int]:
    """Greedy least total squared error under ``budget``: ``items`` are ``(costs, errors)`` per block or
    layer; every item starts at its costliest error-free option and, while the total is over ``budget``,
    the item whose move to a cheaper option adds the least squared error per unit of cost saved moves
    (to the best such option, not only the next one: curves need not be convex). Returns the option
    index per item. Raises :class:`BudgetError` when the cheapest options do not fit."""
    costs = [np.asarray(c, dtype=np.float64) for c, _ in items]
    damage = [np.asarray(e, dtype=np.float64) ** 2 for _, e in items]
    if sum(float(np.min(c)) for c in costs) > budget + 1e-6:
        raise BudgetError("cannot fit the budget")
    picks = [int(np.flatnonzero(d <= 1e-30)[np.argmax(c[d <= 1e-30])]) if np.any(d <= 1e-30) else int(np.argmax(c))
             for c, d in zip(costs, damage)]
    total = sum(float(c[p]) for c, p in zip(costs, picks))
    while total > budget + 1e-6:
        best, move, ratio = -1, -1, np.inf
        for i, (c, d) in enumerate(zip(costs, damage)):
            cheaper = np.flatnonzero(c < c[picks[i]] - 1e-9)
            if not len(cheaper):
                continue
            rates = np.maximum(d[cheaper] - d[picks[i]], 0.0) / (c[picks[i]] - c[cheaper])
            j = int(np.argmin(rates))
            if rates[j] < ratio:
                best, move, ratio = i, int(cheaper[j]), float(rates[j])
        if best < 0:
            raise BudgetError("cannot fit the budget")
        total += float(costs[best][move] - costs[best][picks[best]])
        picks[best] = move
    return picks


def width_options(blocks: Sequence[Block], curves: Sequence[WidthCurve]) -> list[WidthOption]:
    """Every width of every block as a set-partitioning option (:class:`WidthOption`): the option
    covers the block's Conv/Gemm/MatMul nodes; the full width (error 0) is the block's dense option."""
    return [WidthOption(block.name, block.layers, int(w), block.params(int(w)), block.macs(int(w)), float(e))
            for block, curve in zip(blocks, curves) for w, e in zip(curve.widths, curve.errors)]


def damage_width_options(blocks: Sequence[Block], curves: Sequence[WidthCurve],
                         weights: Optional[Sequence[float]] = None, units: Sequence[str] = ("params", "flops"),
                         damage: Optional[Sequence[np.ndarray]] = None):
    """The narrower widths of every block as :class:`onnx_alds.allocate.Option` values for the
    output-damage allocator (:func:`onnx_alds.allocate.allocate_options`, ``--method damage``).

    Each option covers the block's producer (a gated block's gate too) and consumer (``kind="width"``,
    ``payload=(block name, width)``); the full width is not offered (the layers' own dense options stand for
    it). ``costs`` per unit: those layers at width ``w`` plus the change of the ops between (a depthwise conv's
    ``w/c`` of its cost minus its full cost: those ops are not covered, so their full cost stays in the
    fixed part of the budget). The option's damage: ``damage[b]`` at each width of the curve when given
    (:func:`measured_width_damage`), else ``(s_b · ε_b(w))²``, the estimated relative squared output error
    (``weights`` ``s_b`` from :func:`block_sensitivities`; 1 without). Raises ImportError when
    :mod:`onnx_alds.allocate` has no ``Option`` (an older version)."""
    from .allocate import Option

    options = []
    for index, (block, curve) in enumerate(zip(blocks, curves)):
        weight = 1.0 if weights is None else float(weights[index])
        covered = (block.producer, *block.partners, block.consumer)
        between = block.params(block.width) - sum(layer.params for layer in covered)
        between_macs = None if block.macs(block.width) is None else \
            block.macs(block.width) - sum(layer.macs or 0 for layer in covered)
        predicted = (weight * curve.errors) ** 2 if damage is None else damage[index]
        for width, value in zip(curve.widths, predicted):
            if width >= block.width:
                continue
            costs = {}
            if "params" in units:
                costs["params"] = float(block.params(int(width)) - between)
            if "flops" in units and between_macs is not None:
                costs["flops"] = float(block.macs(int(width)) - between_macs)
            options.append(Option(tuple(layer.name for layer in covered), "width", costs,
                                  float(value), (block.name, int(width))))
    return options


def joint_damage_widths(proto: onnx.ModelProto, constants: Mapping, analysis: "PruneAnalysis",
                        weights: Sequence[float], candidates: Sequence[Layer], tables: Sequence, target: str,
                        total: float, keep: float, data, max_groups: int, *,
                        width_damage: str = "probe") -> tuple[list[int], dict]:
    """Block widths chosen together with the low-rank options of ``candidates`` (the factorizable layers
    outside the blocks) by the output-damage integer program (``--method damage --prune combined``).

    ``tables``: the candidates' whitened ``frobenius`` error tables; ``weights``: the blocks'
    sensitivities (:func:`block_sensitivities`); ``total``: the model's weights or MACs (``target``);
    ``data``: the :class:`onnx_alds.options.DataOptions` (damage samples, points, refit, shrinkage).
    ``width_damage``: ``"probe"`` prices the widths by ``(s_b·ε_b(w))²`` (``weights``), ``"measured"``
    by :func:`measured_width_damage` (``weights`` unused; its runs and seconds join the cost).
    Returns each block's width and what the allocation predicted (``predicted_damage``, its square root
    ``predicted_output_error``, ``options``, ``status``, the damage tables' ``runs`` and ``seconds``).
    Raises :class:`BudgetError` when no choice meets ``keep``."""
    from . import api
    from .allocate import Option, allocate_options
    from .damage import damage_options, measure_damage_tables

    blocks = analysis.blocks
    scales = [1.0 if target == "params" else float(layer.positions or 0) for layer in candidates]
    damage_tables, cost = measure_damage_tables(
        proto, candidates, tables, constants, analysis.stats, data.calibration, samples=data.damage_samples,
        points=data.damage_points, max_groups=min(max_groups, data.damage_max_groups), refit=data.refit,
        factor_fn=api._damage_factor_fn(data), batch_size=data.batch_size, shrinkage=data.shrinkage)
    options = damage_options(candidates, damage_tables, scales, target)
    runs, seconds = cost.runs, cost.seconds
    measured = None
    if width_damage == "measured":
        measured, width_cost = measured_width_damage(proto, analysis, data.calibration, samples=data.damage_samples,
                                                     points=data.damage_points, batch_size=data.batch_size,
                                                     shrinkage=data.shrinkage)
        runs, seconds = runs + width_cost["runs"], seconds + width_cost["seconds"]
        pricing = ("widths priced by their output damage measured at up to "
                   f"{data.damage_points} widths per block ("
                   + ("refits fitted to the other inputs" if width_cost["out_of_sample"] else
                      "in-sample: no other calibration input is left to fit the refits to, so the damage is "
                      "underestimated; give more inputs than --damage-samples") + ")")
    else:
        pricing = "widths priced by one sensitivity probe per block"
    options += damage_width_options(blocks, analysis.curves, weights, units=(target,), damage=measured)
    dense: dict[str, float] = {}
    for block in blocks:
        for layer in (block.producer, *block.partners, block.consumer):
            dense[layer.name] = float(layer.params if target == "params" else layer.macs or 0)
    options += [Option((name, ), "dense", {target: size}, 0.0, None) for name, size in dense.items()]
    covered = [layer.name for layer in candidates] + list(dense)
    fixed = total - sum(float(layer.params) * scale for layer, scale in zip(candidates, scales)) - sum(dense.values())
    budget = keep * total - fixed
    result = allocate_options(options, {target: budget}, layers=covered)
    chosen = {o.payload[0]: o.payload[1] for o in result.chosen if o.kind == "width"}
    widths = [int(chosen.get(block.name, block.width)) for block in blocks]
    return widths, dict(predicted_damage=result.damage, predicted_output_error=float(np.sqrt(result.damage)),
                        options=result.candidates, status=result.status, runs=runs, seconds=seconds,
                        pricing=pricing, unpriced=cost.unpriced)


# ---------------------------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class PruneAnalysis:
    """Blocks, the producers that are not prunable, the width curves and what the refit needs."""

    blocks: list[Block]
    refused: list[NotPrunable]
    curves: list[WidthCurve]
    matrices: list[tuple[np.ndarray, Optional[np.ndarray]]]
    stats: Mapping
    seconds: dict = field(default_factory=dict)


def analyze_blocks(model: onnx.ModelProto, layers: Sequence[Layer], calibration, *, multiple: int = 1,
                   batch_size: int = 16, notes: Optional[list[str]] = None, extra_layers: Sequence[Layer] = (),
                   shrinkage: bool = True, split_heads: bool = False, dims_read: Collection[str] = ()
                   ) -> PruneAnalysis:
    """Find the blocks (``split_heads``: :func:`find_blocks`), measure their consumers' input moments (and
    those of ``extra_layers``) in one calibration pass, and compute every block's width curve."""
    from .calibrate import collect_statistics

    seconds = {}
    blocks, refused = find_blocks(model, layers, block_shapes(model, calibration), split_heads=split_heads,
                                  dims_read=dims_read)
    tick = time.perf_counter()
    consumers = {block.consumer.name for block in blocks}
    measured = [block.consumer for block in blocks] + [layer for layer in extra_layers
                                                       if layer.name not in consumers]
    stats = collect_statistics(model, measured, calibration, batch_size=batch_size, notes=notes) if measured else {}
    if shrinkage:  # the refit fits a bias: the covariance is what may be shrunk (LayerStatistics.shrunk)
        stats = {name: value.shrunk(centered=name in consumers) for name, value in stats.items()}
    seconds["calibration"] = time.perf_counter() - tick
    tick = time.perf_counter()
    graph = _Graph(model)
    kept_blocks, curves, matrices = [], [], []
    for block in blocks:
        stat = stats.get(block.consumer.name)
        if stat is None:
            refused.append(NotPrunable(block.name, f"no calibration statistics for the consumer '{block.consumer.name}'"))
            continue
        if not np.any(np.asarray(stat.second_moment)):  # every width would look free
            refused.append(NotPrunable(block.name, "its hidden channels are zero on every calibration input, so the "
                                                   "calibration cannot tell which to keep"))
            continue
        matrix, bias = consumer_matrix(block, graph)
        curves.append(width_curve(block, matrix, bias, stat, multiple=multiple))
        kept_blocks.append(block)
        matrices.append((matrix, bias))
    seconds["width curves"] = time.perf_counter() - tick
    return PruneAnalysis(kept_blocks, refused, curves, matrices, stats, seconds)


def block_shapes(model: onnx.ModelProto, calibration) -> list[dict[str, tuple[int, ...]]]:
    """Concrete shapes of what :func:`find_blocks` must check before it follows run-time reshapes, heads and
    ``Shape`` readers: the outputs of the Reshapes whose target ends in ``-1, dims`` or ``-1`` (an inferred
    head count or width, as Hugging Face exports write them), the first operands of MatMuls whose second
    is not a constant (attention's ``P``) and the inputs of ``Shape`` nodes (their rank). One set at the
    first calibration sample's input shapes, one with every dynamic input dim one larger (a -1 that holds
    the heads at one shape may not at another); a set the model cannot be sized at is empty. Empty list
    without such a node. Shape inference, and an ONNX Runtime run on zero inputs where it cannot size
    them."""
    from .calibrate import calibration_runs
    from .model_io import graph_inputs
    from .shapes import tensor_shapes

    graph = _Graph(model)
    needed = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or not node.input:
            continue
        if node.op_type == "Shape":  # the rank of a tensor whose dims are read (Shape readers of a block)
            needed.append(node.input[0])
        elif len(node.input) < 2:
            continue
        elif node.op_type == "Reshape":
            tail = _target_tail(graph, node.input[1])
            if tail is not None and (int(tail[-1]) == -1 or len(tail) >= 2 and int(tail[-2]) == -1):
                needed.append(node.output[0])
        elif node.op_type == "MatMul" and graph.constant(node.input[1]) is None:
            needed.append(node.input[0])
    if not needed:
        return []
    first = next(iter(calibration_runs(calibration, model, 1, limit=1)), None)
    if first is None:
        return []
    at_first = {name: tuple(value.shape) for name, value in first.items()}
    larger, undeclared = dict(at_first), False
    for spec in graph_inputs(model):
        value = next((v for v in model.graph.input if v.name == spec.name), None)
        dims = list(value.type.tensor_type.shape.dim) if value is not None and value.type.HasField("tensor_type") \
            and value.type.tensor_type.HasField("shape") else None
        if spec.name in larger and (dims is None or len(dims) != len(larger[spec.name])):
            undeclared = True  # which dims may change is unknown: nothing is checked at a second shape
        elif spec.name in larger:
            larger[spec.name] = tuple(size + 1 if not dim.HasField("dim_value") else size
                                      for size, dim in zip(larger[spec.name], dims))
    sets = []
    for input_shapes in ([at_first] if larger == at_first and not undeclared else [at_first, larger]):
        shapes = tensor_shapes(model, input_shapes, needed)
        sets.append({name: shapes[name] for name in needed if name in shapes})
    if undeclared:
        sets[-1] = {}
    return sets


REFUSED_SHOWN = 5  # producers named in the report's "not prunable" note
PROBE_ERROR = 0.2  # the block error at which each block's effect on the model output is measured


def block_sensitivities(model: onnx.ModelProto, analysis: PruneAnalysis, calibration, *, samples: int = 16,
                        probe_error: float = PROBE_ERROR, batch_size: int = 16) -> list[float]:
    """Per block, how strongly its error reaches the model output: ``s_b = e_b / ε_b(w)``, with ``w`` the
    narrowest width whose block error ``ε_b`` is at most ``probe_error`` and above
    :data:`onnx_alds.data_aware.PROBE_ERROR_FLOOR` (else the width with the least error above
    ``probe_error``: a block whose redundant channels cost only rounding), and ``e_b`` the relative change
    of the float graph outputs (averaged over them) on the first ``samples`` calibration inputs when that
    block alone is pruned to ``w`` (refitted). One ONNX Runtime run per block; ``1.0`` where the block
    cannot be probed (only the full width reaches the error); empty when the model has no float output;
    floored at 1e-3 of the largest (:func:`onnx_alds.data_aware.floored_sensitivities`). The allocation
    then balances ``s_b·ε_b``, the estimated output error (as ``compress(..., sensitivity=True)`` does
    for low-rank layers)."""
    from .calibrate import calibration_runs
    from .data_aware import PROBE_ERROR_FLOOR, float_outputs, floored_sensitivities, output_change, reference_outputs
    from .runtime import make_session

    heads = list(calibration_runs(calibration, model, batch_size, limit=samples))  # a fixed batch runs whole
    if not heads:
        raise InputDataError("the calibration set holds fewer samples than the model's fixed batch; give at least "
                             "one full batch of calibration inputs")
    reference = reference_outputs(model, heads, "--prune's block sensitivity")
    if not reference:
        return []
    from .api import _progress

    weights = []
    for index, (block, curve) in enumerate(_progress(list(zip(analysis.blocks, analysis.curves)),
                                                     "block sensitivities", unit="block")):
        narrower = curve.widths < block.width
        below = np.flatnonzero((curve.errors <= probe_error) & narrower & (curve.errors > PROBE_ERROR_FLOOR))
        if not len(below):  # only widths that drop redundant channels (noise) are under probe_error: the next
            above = np.flatnonzero(narrower & (curve.errors > probe_error))  # narrower one, just above it
            below = above[np.argsort(curve.errors[above], kind="stable")[:1]]
        if not len(below):
            weights.append(1.0)
            continue
        width = int(curve.widths[below[0]])
        widths = [b.width for b in analysis.blocks]
        widths[index] = width
        probe = prune_model(model, decisions_for(analysis, widths))
        changed = float_outputs(probe, make_session(probe, "cpu"), heads)
        weights.append(output_change(reference, changed) / float(curve.errors[below[0]]))
    return floored_sensitivities(weights)


def measured_width_damage(model: onnx.ModelProto, analysis: PruneAnalysis, calibration, *, samples: int = 8,
                          points: int = 4, batch_size: int = 16,
                          shrinkage: bool = True) -> tuple[list[np.ndarray], dict]:
    """Each block's output damage at every width of its curve, measured at a few widths and interpolated
    (as :func:`onnx_alds.damage.measure_damage_tables` does for ranks; BALF / LEMS-style measured losses).

    Per block, ``points`` widths spaced geometrically from 1/16 to 3/4 of the full width
    (:func:`onnx_alds.damage.probe_ranks`) are each pruned *alone* (every other block at full width) and
    the relative squared change of the float graph outputs on the first ``samples`` calibration inputs is
    measured (``d = ‖ŷ − y‖² / ‖y‖²``, averaged over the outputs: the unit of the low-rank damage
    tables). Out of sample, as those tables: the probed consumers are refitted on statistics of the
    *other* calibration inputs (one extra statistics pass, shrunk when ``shrinkage``), so that a refit is
    not judged on the inputs it was fitted to; with less than one run of other inputs left (a fixed
    batch whole), on the whole set's (``out_of_sample`` False in the cost). Between the probes the
    block's own error curve gives the shape, ``d(w) = s(w)·ε(w)²`` with ``s = d/ε²`` interpolated
    linearly in ``w`` and held constant outside the measured widths (the narrowest widths are
    extrapolated with the ratio measured at the narrowest probe); non-increasing in ``w``, 0 at full
    width.

    Returns per block the damage at each of ``analysis.curves[b].widths`` and the cost (``runs``,
    ``seconds``, ``samples``, ``out_of_sample``). Raises :class:`InputDataError` when ``samples`` or
    ``points`` is below 1, the calibration set holds fewer samples than one batch, or the model has no
    float output; one ONNX Runtime session per probe."""
    from .api import _progress
    from .calibrate import calibration_runs
    from .damage import interpolate_damage, probe_ranks, relative_damage, statistics_beside_probes
    from .data_aware import NO_FLOAT_OUTPUT, float_outputs, reference_outputs
    from .runtime import make_session

    if samples < 1 or points < 1:
        raise InputDataError(f"got width damage samples {samples}, points {points}; give positive counts, e.g. "
                             "8 samples, 4 points")
    started = time.perf_counter()
    feeds = list(calibration_runs(calibration, model, min(samples, batch_size) if batch_size else samples,
                                  limit=samples))
    if not feeds:
        raise InputDataError("the calibration set holds fewer samples than the model's fixed batch; give at least "
                             "one full batch of calibration inputs")
    reference = reference_outputs(model, feeds, "--prune's width damage")
    if not reference:
        raise InputDataError(f"--method damage with --prune {NO_FLOAT_OUTPUT.format(what='block')}; "
                             "use --method alds")
    consumers = {block.consumer.name: block.consumer for block in analysis.blocks}
    fitted, used = statistics_beside_probes(model, list(consumers.values()), calibration, feeds,
                                            batch_size=batch_size, shrinkage=shrinkage, centered=True)
    held_out = fitted is not None
    if held_out:  # the probed consumers refitted on the other inputs' statistics
        analysis = replace(analysis, stats={**analysis.stats, **fitted})
    tables, runs = [], 1
    full = [block.width for block in analysis.blocks]
    for index, (block, curve) in enumerate(_progress(list(zip(analysis.blocks, analysis.curves)),
                                                     "width damage", unit="block")):
        narrower = curve.widths < block.width
        damage = np.zeros(len(curve.widths))
        if narrower.any():
            widths = curve.widths[narrower]
            measured = probe_ranks(widths, widths, block.width, points)
            values = []
            for width in measured:
                chosen = list(full)
                chosen[index] = int(width)
                probe = prune_model(model, decisions_for(analysis, chosen))
                changed = float_outputs(probe, make_session(probe, "cpu"), feeds)
                runs += 1
                values.append(relative_damage([reference], [changed]))
            damage[narrower] = interpolate_damage(widths, curve.errors[narrower], measured, np.array(values))
        tables.append(damage)
    return tables, dict(runs=runs, seconds=time.perf_counter() - started, samples=used, out_of_sample=held_out)


def weighted_curves(curves: Sequence[WidthCurve], weights: Sequence[float]) -> list[WidthCurve]:
    return [replace(curve, errors=curve.errors * weight) for curve, weight in zip(curves, weights)]


def widened_note(widened: Mapping[str, str]) -> list[str]:
    """A note naming the rewritten constants that were stored narrower than the graph computes them
    (``widened`` of :func:`prune_model`): their slices and refits are stored in the wider type."""
    if not widened:
        return []
    name, stored_as = next(iter(widened.items()))
    how = "a DequantizeLinear of a quantized constant" if stored_as == "dequantized" else f"stored as {stored_as}"
    return [f"{len(widened)} constants the pruning rewrote were computed from narrower stored values (first: "
            f"'{name}', {how}); their sliced or refitted values are stored in the type the graph computes in, "
            "so the file shrinks by less than the weight count says (it can grow)"]


def decisions_for(analysis: PruneAnalysis, widths: Sequence[int], *, refit: bool = True) -> list[tuple]:
    """``(block, kept, matrix, bias)`` for :func:`prune_model` at the given widths (full width: untouched)."""
    result = []
    for block, curve, (matrix, bias), width in zip(analysis.blocks, analysis.curves, analysis.matrices, widths):
        if width >= block.width:
            continue
        kept = curve.kept(int(width))
        if refit:
            new_matrix, new_bias = refit_consumer(matrix, bias, analysis.stats[block.consumer.name], kept,
                                                  block.consumer.kernel)
        else:
            new_matrix, new_bias = None, None
        result.append((block, kept, new_matrix, new_bias))
    return result


def sequential_prune(model: onnx.ModelProto, analysis: PruneAnalysis, widths: Sequence[int], calibration, *,
                     batch_size: int = 16, shrinkage: bool = True, notes: Optional[list[str]] = None,
                     refit: bool = True, widened: Optional[dict[str, str]] = None) -> onnx.ModelProto:
    """Prune the blocks one after the other (graph order), each consumer refitted on what it sees with the
    earlier blocks already pruned (``x̃``) against the original block output (``W x + b``): one calibration
    pass of the pruned and the original model per narrowed block
    (:func:`onnx_alds.calibrate.collect_statistics` with ``reference``), as the sequential data-aware
    low-rank step does. The channels kept are those chosen on the original statistics. ``widened`` as for
    :func:`prune_model`."""
    from .api import _progress
    from .calibrate import collect_statistics

    current = model
    for block, curve, (matrix, bias), width in _progress(
            list(zip(analysis.blocks, analysis.curves, analysis.matrices, widths)), "sequential refit", unit="block"):
        if width >= block.width:
            continue
        kept = curve.kept(int(width))
        if not refit:
            current = prune_model(current, [(block, kept, None, None)], widened)
            continue
        stat = collect_statistics(current, [block.consumer], calibration, batch_size=batch_size, reference=model,
                                  notes=notes).get(block.consumer.name)
        if stat is None:
            stat = analysis.stats[block.consumer.name]
        elif shrinkage:
            stat = stat.shrunk(centered=True)
        new_matrix, new_bias = refit_consumer(matrix, bias, stat, kept, block.consumer.kernel)
        current = prune_model(current, [(block, kept, new_matrix, new_bias)], widened)
    return current


def block_reports(analysis: PruneAnalysis, widths: Sequence[int]) -> tuple[BlockReport, ...]:
    return tuple(BlockReport(block.name, block.producer.name, block.consumer.name, block.between, block.width,
                             int(width), block.params(block.width), block.params(int(width)),
                             block.macs(block.width), block.macs(int(width)),
                             curve.error(int(width)) if width < block.width else 0.0)
                 for block, curve, width in zip(analysis.blocks, analysis.curves, widths))


def _low_rank_options(layers: Sequence[Layer], analysis: "PruneAnalysis", constants: Mapping, target: str,
                      rank_multiple: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], list]:
    """Each layer's low-rank options beside its blocks' widths: ``(costs, errors)`` (dense first, in the
    budget's unit) and its error table, from its whitened spectra on the calibration statistics."""
    from .data_aware import layer_moment, whitening_factors
    from .layers import folded_weight
    from .spectra import error_table, layer_spectra

    extra, tables = [], []
    for layer in layers:
        scale = 1.0 if target == "params" else float(layer.positions or 0)
        stat = analysis.stats.get(layer.name)
        whitening = (whitening_factors(layer_moment(layer, stat.second_moment), layer.groups)
                     if stat is not None else None)
        spectra = layer_spectra(folded_weight(layer, constants), layer.groups, whitening)
        rows, cols = layer.matrix_shape
        table = error_table(spectra, rows, cols, groups=layer.groups, measure="frobenius", rank_multiple=rank_multiple)
        tables.append(table)
        costs = [float(layer.params) * scale] + [float(s) * scale for option in table.options for s in option.sizes]
        errors = [0.0] + [float(e) for option in table.options for e in option.errors]
        extra.append((np.array(costs), np.array(errors)))
    return extra, tables


def _note_kind(note: str) -> str:
    """What a note is about, without its leading count ("3 weights reach their layer ..." and "1 weights
    reach ..." are one kind): the low-rank stage says again, of the pruned model, what the whole model's notes
    said."""
    return re.sub(r"^\d+ ", "", note)[:48]


SVD_WITH_WIDTHS = ("method 'svd' (--method svd) measures no error (it cuts every layer to the same share of its "
                   "rank), so its layers cannot stand beside block widths priced by their error (the report mixed "
                   "rank cuts into the errors); use method 'alds' (the default) or 'damage' with prune, or prune "
                   "'only'")


# the joint prediction's caveat: the widths' damage is measured on the inputs their consumers were refit to
JOINT_IN_SAMPLE = ("in-sample for the widths (their damage is measured on the calibration inputs their consumers "
                   "were refit to; held-out errors measured 2.4-2.6x it with 48 calibration inputs, docs/PRUNING.md): "
                   "validate on held-out inputs")


def compress_pruned(model, options, mode: str = "combined", *, sensitivity: bool = True, sequential: bool = True,
                    objective: str = "minmax", decisions=None, width_damage: str = "probe"):
    """``compress`` with hidden-channel pruning (``mode`` ``"only"``: widths alone; ``"combined"``: widths
    of the blocks and low-rank factors of the other layers, in one min-max; see the module docstring).

    Needs calibration inputs (``options.data.calibration``) and a params or MACs budget. Steps: find the
    blocks; one calibration pass for the consumers' (and, combined, every other factorizable layer's)
    input moments; width curves; the min-max threshold ``ε`` under the budget; prune and refit; then,
    combined, :func:`onnx_alds.compress` of the pruned model with the remaining budget and the pruned
    blocks' layers kept dense (it recalibrates on the pruned model). Returns a
    :class:`onnx_alds.api.CompressionResult` whose report has ``pruned`` (per block: width before and
    after) and the totals against the original model.

    ``sensitivity`` (default on): the block errors are weighted by their measured effect on the model
    output (:func:`block_sensitivities`) before the allocation. ``sequential`` (default on): each consumer
    is refitted on what it sees with the earlier blocks pruned (:func:`sequential_prune`). ``objective``:
    ``"minmax"`` (default) or ``"sum"`` (:func:`allocate_sum`, least total squared error; measured worse on
    EfficientNet-Lite0, docs/PRUNING.md). Other options (order, sequential or sensitivity of the
    low-rank step) apply to the low-rank step of ``"combined"``.

    ``width_damage`` (``--method damage`` with ``"combined"`` only): ``"probe"`` (default) prices each
    width in the output-damage program by ``(s_b·ε_b(w))²``, one sensitivity probe per block;
    ``"measured"`` measures each block's damage at ``damage_points`` widths and interpolates
    (:func:`measured_width_damage`; measured no better on the reference models, docs/PRUNING.md ninth run).

    ``decisions`` (applying a plan, :mod:`onnx_alds.plan`): the plan's layers are checked against the
    model, its block widths replace the allocation, and its low-rank decisions replace the low-rank
    step's allocation; calibration, channel choice and refit run as without a plan, so the model equals
    the one ``compress`` writes with the plan's options.

    Raises :class:`InputDataError` without calibration,
    :class:`BudgetError` for a latency budget or a target the blocks (and layers) cannot reach,
    :class:`UnsupportedModelError` when no block is prunable in ``"only"`` mode.
    """
    from . import api
    from .allocate import DENSE
    from .checks import check_output_model
    from .data_aware import NO_FLOAT_OUTPUT
    from .report import CompressionReport, LayerReport

    if objective not in ("minmax", "sum"):
        raise BudgetError(f"unknown pruning objective '{objective}'; choose minmax or sum")
    if width_damage not in WIDTH_DAMAGE:
        raise BudgetError(f"unknown width damage '{width_damage}'; choose one of: {', '.join(WIDTH_DAMAGE)}")
    if width_damage == "measured" and not (options.search.method == "damage" and mode == "combined"
                                           and objective == "minmax"):
        raise BudgetError("width_damage='measured' prices the widths in the output-damage integer program, which "
                          "only method 'damage' with prune 'combined' (objective minmax) runs; use those, or drop it")
    if mode not in PRUNE_MODES[1:]:
        raise BudgetError(f"unknown prune mode '{mode}'; choose one of: {', '.join(PRUNE_MODES)}")
    if mode == "combined" and options.search.method == "svd":
        raise BudgetError(SVD_WITH_WIDTHS)
    budget, search, data = options.budget, options.search, options.data
    if not data.refit:  # the width curves, the allocation and the report all price the refit
        raise InputDataError("--no-refit cannot be used with --prune: the widths are chosen, and their errors "
                             "reported, for a least-squares refit of each block's consumer; drop --no-refit")
    if data.calibration is None:
        raise InputDataError("pruning hidden channels needs calibration data (the refit is a least-squares fit on "
                             "them); give --calibration FILE.npz, --calibration-images DIR or --calibration-random N")
    if budget.target not in ("params", "flops"):
        raise BudgetError(f"pruning takes --keep-params or --keep-flops, not {budget.flag}")
    started = time.perf_counter()
    prepared = api._prepare(model, input_shapes=options.input_shapes, exclude=search.exclude,
                            max_groups=search.groups_searched, need_macs=budget.target == "flops",
                            channel_multiple=search.rank_multiple, complete=True,
                            shape_hints=api.calibration_shape_hints(data.calibration))
    options = prepared.with_checked_calibration(options)
    data, proto = options.data, prepared.model
    if decisions is not None:  # every layer of the plan in the model, same ops, shapes and input shapes
        decisions.check(prepared, options.input_shapes)
    notes: list[str] = list(prepared.notes)
    keep_dense = dict(search.keep_dense)
    prepared.check_keep_dense(keep_dense)
    layers = [replace(layer, skip_reason=keep_dense[layer.name]) if layer.name in keep_dense and layer.compressible
              else layer for layer in prepared.layers]
    seconds: dict[str, float] = {"load": time.perf_counter() - started}
    others = [layer for layer in layers if layer.compressible and api._uncalibrated_reason(layer) is None]
    analysis = analyze_blocks(proto, layers, data.calibration, multiple=search.rank_multiple,
                              batch_size=data.batch_size, notes=notes,
                              extra_layers=others if mode == "combined" else (), shrinkage=data.shrinkage,
                              split_heads=search.prune_heads, dims_read=prepared.dims_read)
    seconds.update(analysis.seconds)
    blocks = analysis.blocks
    if not blocks and not others:  # each layer's reason, those calibration cannot measure too
        reasons = [replace(layer, skip_reason=api._uncalibrated_reason(layer)) if layer.compressible else layer
                   for layer in layers]
        raise UnsupportedModelError(api.nothing_to_compress(reasons, "factorizable or prunable",
                                                            prepared.unchanged_ops, prepared.dead))
    if not blocks and mode == "only":
        kinds: dict[str, NotPrunable] = {}  # one example of each reason, names aside (heads, Split, residual ...)
        for refusal in analysis.refused:
            kinds.setdefault(re.sub(r"'[^']*'", "'…'", refusal.reason), refusal)
        shown = list(kinds.values())[:3]
        reasons = "; ".join(f"'{r.producer}': {r.reason}" for r in shown) + (
            f"; {len(analysis.refused) - len(shown)} more producers" if len(analysis.refused) > len(shown) else "")
        raise UnsupportedModelError("no prunable block (a producer whose channels reach one consumer through "
                                    f"per-channel ops){' (' + reasons + ')' if reasons else ''}; use --prune "
                                    "with low-rank, or no --prune")
    target = budget.target
    total = float(prepared.params_total if target == "params" else prepared.macs_total or 0)
    in_blocks = {name for block in blocks for name in block.layers}
    block_full = sum(_block_cost(block, block.width, target) for block in blocks)
    outside = [layer for layer in others if layer.name not in in_blocks]  # low-rank candidates when combined
    candidates = outside if mode == "combined" else []
    tick = time.perf_counter()
    extra, candidate_tables = _low_rank_options(candidates, analysis, prepared.constants, target, search.rank_multiple)
    seconds["spectra"] = time.perf_counter() - tick
    fixed = total - block_full - sum(float(costs[0]) for costs, _ in extra)
    available = budget.keep * total - fixed
    curves = analysis.curves
    joint = search.method == "damage" and mode == "combined" and bool(blocks) and objective == "minmax"
    weights = [1.0] * len(blocks)
    if sensitivity and blocks and decisions is None and not (joint and width_damage == "measured"):
        tick = time.perf_counter()
        weights = block_sensitivities(proto, analysis, data.calibration, batch_size=data.batch_size)
        seconds["sensitivity"] = time.perf_counter() - tick
        if weights:
            curves = weighted_curves(curves, weights)
            top = np.argsort(weights)[::-1][:3]
            notes.append("block sensitivities (output error per unit block error), largest: "
                         + ", ".join(f"{blocks[i].name} {weights[i]:.3g}" for i in top))
        else:
            weights = [1.0] * len(blocks)
            notes.append(f"block sensitivities not measured: the allocation {NO_FLOAT_OUTPUT.format(what='block')}; "
                         "widths are chosen by the block errors alone")
    joint_info: Optional[dict] = None  # the output-damage integer program's figures (joint widths and ranks)
    try:
        if decisions is not None:  # the plan's widths; its low-rank layers are decided by the plan below
            widths, joint = decisions.widths(analysis), False
            choices = []
            notes.append(f"widths{' and ranks' if mode == 'combined' else ''} from the plan")
        elif joint:  # widths and ranks in one output-damage integer program
            tick = time.perf_counter()
            widths, joint_info = joint_damage_widths(
                proto, prepared.constants, analysis, weights, candidates, candidate_tables, target, total,
                budget.keep, data, search.groups_searched, width_damage=width_damage)
            seconds["joint damage allocation"] = time.perf_counter() - tick
            notes.append(f"widths chosen with the low-rank options by the output-damage integer program "
                         f"({joint_info['options']} options, {joint_info['runs']} damage runs, status "
                         f"{joint_info['status']}; {joint_info['pricing']}): predicted relative output error "
                         f"{joint_info['predicted_output_error']:.3f}, {JOINT_IN_SAMPLE}")
            from .damage import cache_outputs_note, unpriced_damage_note

            if joint_info["unpriced"]:
                notes.append(unpriced_damage_note(joint_info["unpriced"]))
            if (caches := cache_outputs_note(proto)) is not None:
                notes.append(caches)
            # the low-rank step re-allocates on the pruned model, over the layers that have a rank that shrinks them
            choices = [int(any(len(option.ranks) for option in table.options)) for table in candidate_tables]
        elif objective == "sum":
            items = [(np.array([_block_cost(b, int(w), target) for w in c.widths]), c.errors)
                     for b, c in zip(blocks, curves)] + list(extra)
            picks = allocate_sum(items, available)
            widths = [int(c.widths[p]) for c, p in zip(curves, picks[:len(blocks)])]
            choices = picks[len(blocks):]
        else:
            widths, choices, _ = allocate_widths(curves, blocks, available, target, extra)
    except BudgetError:
        narrowest = sum(_block_cost(b, int(c.widths[0]), target) for b, c in zip(blocks, analysis.curves))
        smallest = fixed + narrowest + sum(float(np.min(costs)) for costs, _ in extra)
        hint = ""  # another mode that reaches it, named only when it does
        if mode != "combined" and outside:
            more, _ = _low_rank_options(outside, analysis, prepared.constants, target, search.rank_multiple)
            floor = (fixed - sum(float(costs[0]) for costs, _ in more) + narrowest
                     + sum(float(np.min(costs)) for costs, _ in more)) / total
            if floor <= budget.keep:
                hint = f", or use --prune (combined with low-rank: smallest ratio {ratio_at_least(floor)})"
        if not hint and decisions is None:  # low-rank alone, on the blocks' layers too
            alone, _ = _low_rank_options(others, analysis, prepared.constants, target, search.rank_multiple)
            floor = (total - sum(float(costs[0]) - float(np.min(costs)) for costs, _ in alone)) / total
            if floor <= budget.keep:
                hint = f", or compress without --prune (low-rank alone: smallest ratio {ratio_at_least(floor)})"
        # (--prune only factorizes nothing: what stays is all that lies outside the blocks, whatever its layers'
        # ranks could do)
        because = api.unreachable_because(prepared, target, search.rank_multiple) if mode == "combined" else (
            f"; everything outside the blocks stays as it is with --prune only: {fixed / total:.0%} of the total")
        if blocks:  # (their layers are narrowed, not factorized: their narrowest widths are part of the floor)
            because += (f"; the {len(blocks)} pruned blocks keep {narrowest / total:.1%} of the total at their "
                        "narrowest widths")
        elif analysis.refused:  # (combined: nothing to narrow, so the floor is low-rank's alone; say why)
            because += f"; no block is prunable (first: '{analysis.refused[0].producer}': {analysis.refused[0].reason})"
        raise BudgetError(f"{budget.flag} {budget.keep} cannot be reached by pruning"
                          f"{' and low-rank' if mode == 'combined' else ''}: the smallest reachable ratio is "
                          f"{ratio_at_least(smallest / total)}{' (' + because[2:] + ')' if because else ''}; ask "
                          "for at least that" + hint
                          + (f", or a smaller --rank-multiple (now {search.rank_multiple}: widths and ranks move in "
                             "steps of it)" if search.rank_multiple > 1 and (blocks or extra)
                             and fixed < budget.keep * total else "")) from None  # (what stays fixed: no step helps)
    if not data.shrinkage and data.refit:
        api.refuse_unshrunk_interpolation(
            [(block.name, analysis.stats[block.consumer.name].count, block.width * block.consumer.kernel)
             for block, width in zip(blocks, widths) if width < block.width and block.consumer.name in analysis.stats],
            "--prune", "blocks")
    tick = time.perf_counter()
    widened: dict[str, str] = {}
    if sequential:
        pruned = sequential_prune(proto, analysis, widths, data.calibration, batch_size=data.batch_size,
                                  shrinkage=data.shrinkage, notes=notes, refit=data.refit, widened=widened)
        if data.refit and sum(width < block.width for block, width in zip(blocks, widths)) > 1:
            notes.append("sequential refit: the pruned blocks' errors shown are the allocation's (from the original "
                         "model's statistics), not measured on the consumers refitted to the pruned model's inputs")
    else:
        pruned = prune_model(proto, decisions_for(analysis, widths, refit=data.refit), widened)
    seconds["prune"] = time.perf_counter() - tick
    notes.extend(widened_note(widened))
    reports = block_reports(analysis, widths)
    narrowed = {name for block, width in zip(blocks, widths) if width < block.width for name in block.layers}
    shown = analysis.refused[:REFUSED_SHOWN]
    refused_notes = ([f"not prunable ({len(analysis.refused)} producer{'s' if len(analysis.refused) > 1 else ''}): "
                      + "; ".join(
        f"'{r.producer}': {r.reason}" for r in shown)
        + (f"; and {len(analysis.refused) - len(shown)} more (every one in the report's not_prunable: --report "
           "FILE.json)" if len(analysis.refused) > len(shown) else "")]
        if analysis.refused else [])
    lowrank = [layer for layer, choice in zip(candidates, choices) if choice != 0]
    method = "prune" if mode == "only" else f"{search.method}+prune"
    result = None
    if lowrank if decisions is None else decisions.factorizes:
        pruned_prepared = api._prepare(pruned, input_shapes=options.input_shapes, exclude=search.exclude,
                                       max_groups=search.groups_searched, need_macs=target == "flops",
                                       channel_multiple=search.rank_multiple,
                                       shape_hints=api.calibration_shape_hints(options.data.calibration))
        now = float(pruned_prepared.params_total if target == "params" else pruned_prepared.macs_total or 0)
        keep_after = min(1.0, budget.keep * total / now)
        dense = dict(keep_dense)
        dense.update({name: "in a pruned block (its hidden width was cut)" for name in narrowed})
        stage = replace(options, budget=replace(budget, keep=keep_after),
                        search=replace(search, keep_dense=dense))
        try:
            result = api._apply_step(api._plan_step(
                pruned, stage, decisions=None if decisions is None else decisions.low_rank(stage, narrowed | {
                    name for block, width in zip(blocks, widths) if width < block.width for name in block.between})))
        except BudgetError as exc:  # its own budget is the rest of the user's, as a fraction of the pruned model
            raise BudgetError(f"{budget.flag} {budget.keep:g}: after the blocks were narrowed, the low-rank step "
                              f"could not cut the rest of the budget (keep {keep_after:.4f} of the pruned model; "
                              f"{str(exc).splitlines()[0]}); ask for a larger keep, or use --prune only") from exc
        if not any(row.groups for row in result.report.layers):
            result = None  # the low-rank step factorized nothing: the pruned model as it is (as a plan applies)
    if result is not None:
        report = result.report
        after_macs = report.macs_after
        for key, value in report.seconds.items():
            seconds[f"low-rank {key}"] = value
        new_model = result.model
        rows = report.layers
        # the stage's own "achieved … below the requested …" speaks of its internal sub-budget: the
        # note on the whole model's figures is made below
        said = {_note_kind(note) for note in notes}  # (the stage's count of the same thing, on the pruned model)
        extra_notes = [note.replace("; predicted total relative output error",  # (the whole model's is above)
                                    "; the low-rank step's own predicted relative output error, on the pruned model,")
                       for note in report.notes if _note_kind(note) not in said and not note.startswith("achieved ")]
        warnings = tuple(w for w in report.warnings if not w.startswith("achieved "))  # its sub-budget
        steps = report.data_aware_steps
        search_name, max_error = report.search, report.max_error
        measure = report.error_measure  # (--method damage: each factorized layer's predicted output damage)
        if joint:
            search_name = "output-damage integer program over widths and ranks, then " + search_name
    else:
        new_model = pruned
        check_output_model(new_model, prepared.original, prepared.input_check, prepared.store)
        after_macs = (None if prepared.macs_total is None else
                      prepared.macs_total - sum((r.macs_before or 0) - (r.macs_after or 0) for r in reports))
        rows = tuple(LayerReport(layer.name, layer.op, layer.weight_shape, DENSE, 0, layer.params, layer.params,
                                 layer.macs, layer.macs, 0.0, layer.skip_reason, weight=layer.weight)
                     for layer in layers)
        search_name = ("plan" if decisions is not None else
                       "output-damage integer program over widths and ranks" if joint else
                       "sum of block errors over widths" if objective == "sum" else "min-max over block widths")
        extra_notes, warnings, max_error = [], (), 0.0
        steps = ("channel-selection",) + (("refit",) if data.refit else ())
        measure = "frobenius"
    if measure != "frobenius" and narrowed:
        measure += "; a pruned block's rows: the block's relative output error"  # (the column holds both)
    # against the user's original and budget (the low-rank step stamped the pruned model and its sub-budget;
    # distill checks the replaced weights)
    narrowed_tensors = {name for block, width in zip(blocks, widths) if width < block.width  # (by the names
                        for node in new_model.graph.node
                        if node.name in (block.producer.name, *(p.name for p in block.partners)) + block.between
                        for name in node.output}  # the blocks know, before the user's own come back)
    from .rewrite import drop_stale_annotations

    drop_stale_annotations(new_model, narrowed_tensors)
    api.restore_node_names(new_model, prepared)
    api.stamp_provenance(new_model, prepared, method + " (data-aware)", target, budget.keep, search.seed,
                         data.calibration)
    # what the file holds: a refit's new bias for a consumer whose bias was shared adds a copy
    after_params = int(sum(iter_total_params(new_model)))
    block_errors = {r.name: r.error for r in reports}
    max_error = max([max_error] + [r.error for r in reports if r.width_after < r.width_before])
    rows = tuple(_pruned_row(row, blocks, widths, layers, block_errors) for row in rows)
    achieved = (after_params / prepared.params_total if target == "params"
                else (after_macs or 0) / float(prepared.macs_total or 1))
    factorized_any = any(row.groups for row in rows)
    step_kind = "width and rank" if narrowed and factorized_any else "width" if narrowed else "rank"
    overshoot, gap_note = api.budget_gap(achieved, budget.keep, search.rank_multiple, step_kind,
                                         applied=decisions is not None and decisions.edited,
                                         from_plan=decisions is not None)
    warnings = tuple(warnings) + ((overshoot,) if overshoot else ())
    if decisions is None and achieved > budget.keep * api.OVER_BUDGET:  # this warning says why, instead of the note
        gap_note = None
        why = ("the pruned model holds more than its widths were priced at" if mode == "only" else
               f"the widths left part of the budget to the low-rank step, which "
               f"{'factorized nothing' if not factorized_any else 'cut less'} on the pruned model")
        warnings += (f"achieved {achieved:.4f}, above the requested {budget.keep:g}: {why}; the model keeps more "
                     "than asked (ask for a smaller keep to land on the figure you need)",)
    extra_notes += [gap_note] if gap_note else []
    starved = [(block, analysis.stats[block.consumer.name].count) for block, width in zip(blocks, widths)
               if width < block.width and block.consumer.name in analysis.stats
               and analysis.stats[block.consumer.name].count < block.width * block.consumer.kernel]
    if starved:
        block, count = starved[0]
        warnings = tuple(warnings) + (
            f"{len(starved)} pruned {'block was' if len(starved) == 1 else 'blocks were'} refitted on fewer "
            "calibration vectors than their hidden channels "
            f"(first: '{block.name}', {count} vectors for {block.width * block.consumer.kernel}): the refit and its "
            "reported error rest on the shrinkage prior, and held-out errors can be several times larger; give "
            "more calibration inputs",)
    if search.prune_heads and not any(block.heads > 1 for block in blocks):
        # what attention's Q, K and V met (words outside the quoted names: not 'lm_head', not 'Reshape_1_output_0'),
        # a fused QKV's Split included
        words = ("head", "Reshape", "Transpose", "MatMul", "Shape", "Split")
        met = [r for r in analysis.refused if "shared" not in r.reason
               and any(word in re.sub(r"'[^']*'", "", r.reason) for word in words)]
        examples = "; ".join(f"'{r.producer}': {r.reason}" for r in met[:3])  # (V is rarely the first of a layer)
        warnings = tuple(warnings) + ("--prune-heads found no block whose channels split into attention heads"
                                      + (f" (e.g. {examples})" if examples else "")
                                      + "; the widths are those of --prune alone",)
    if mode == "combined" and decisions is None and not narrowed:
        first = f" (first: '{analysis.refused[0].producer}': {analysis.refused[0].reason})" if analysis.refused else ""
        warnings = tuple(warnings) + (f"--prune narrowed no block: {len(blocks)} prunable, {len(analysis.refused)} "
                                      f"producers not prunable{first}; the model is low-rank only",)
    from .data_aware import sample_count

    def stepwise(note: str) -> bool:  # (either step's IR 3 and annotations notes: said once, of the whole change)
        return note.startswith(api.IR3_NOTE) or api.ANNOTATIONS_NOTE in note

    extra_notes = [note for note in extra_notes if not stepwise(note)]
    notes = [note for note in notes if not stepwise(note)] \
        + list(api._ir3_inputs_note(prepared.model, new_model)) \
        + list(api._dropped_annotations_note(prepared.model, new_model))  # (of the user's model, not the step's)
    report = CompressionReport(
        layers=rows, method=method, data_aware=True, calibration=str(data.calibration.source), target=target,
        requested=budget.keep, achieved=achieved, params_before=prepared.params_total, params_after=after_params,
        macs_before=prepared.macs_total, macs_after=after_macs, max_error=max_error, error_measure=measure,
        search=search_name, seed=search.seed, rank_multiple=search.rank_multiple, seconds=seconds,
        notes=tuple(notes + extra_notes + refused_notes), data_aware_steps=tuple(steps) + ("prune",),
        calibration_samples=sample_count(data.calibration, prepared.model),
        warnings=tuple(prepared.warnings) + tuple(warnings), pruned=reports,
        not_prunable=tuple((refused.producer, refused.reason) for refused in analysis.refused),
        predicted_output_error=joint_info["predicted_output_error"] if joint_info else None)
    return api.CompressionResult(new_model, report)


def _pruned_row(row, blocks: Sequence[Block], widths: Sequence[int], layers: Sequence[Layer],
                errors: Mapping[str, float]):
    """A report row of a layer whose block was narrowed: its weights and MACs before pruning, the block's
    relative output error, and a note."""
    for block, width in zip(blocks, widths):
        if width >= block.width or (row.name not in block.layers and row.name not in block.between):
            continue
        original = {layer.name: layer for layer in layers}[row.name]
        note = f"pruned block '{block.name}': hidden width {block.width} -> {width}"
        if row.name in block.between and not original.params:  # attention's P @ V: no weights, MACs scale
            return replace(row, weight_shape=original.weight_shape, macs_before=original.macs,
                           macs_after=None if original.macs is None else original.macs // block.width * width,
                           skip_reason=f"{row.skip_reason}; {note}" if row.skip_reason else note,
                           weight=original.weight)
        # producer rows, consumer columns, a depthwise conv's channels (it is narrowed, not left as it is)
        after = original.params // block.width * width
        macs_after = None if original.positions is None else after * original.positions
        if row.groups:  # factorized after pruning (not expected: pruned layers are kept dense)
            return replace(row, skip_reason=note, weight=original.weight)
        return replace(row, weight_shape=original.weight_shape, params_before=original.params, params_after=after,
                       macs_before=original.macs, macs_after=macs_after, skip_reason=note,
                       error=float(errors.get(block.name, row.error)), weight=original.weight)
    return row
