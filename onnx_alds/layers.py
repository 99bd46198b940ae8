"""Find the layers that can be factorized: Conv, Gemm and MatMul nodes with a constant weight.

Every candidate node becomes a :class:`Layer`; those that cannot or should not be factorized carry a
``skip_reason`` in plain English, so nothing is dropped silently. The folded weight matrix ``W``
(``f × c·κ``, mapping inputs to outputs) is read on demand by :func:`folded_weight`.
"""

from __future__ import annotations

import fnmatch
import heapq
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Collection, Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .decompose import candidate_groups, pointwise_matrix
from .errors import InputDataError, ModelLoadError

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
# ops that only move, reshape or cast a constant: a weight behind a chain of them is a constant too
FOLDABLE_OPS = ("Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
SUBGRAPH_OPS = ("If", "Loop", "Scan")
LAYER_OPS = ("Conv", "Gemm", "MatMul")
STANDARD_OP_DOMAINS = ("", "ai.onnx")
QUANTIZED = ("quantized layers: compress the float model first, then quantize it (onnx-alds then ONNX Runtime's "
             "quantization tools)")
ORT_FUSED = ("ONNX Runtime's fused or layout ops: compress the model saved before ONNX Runtime's graph optimizations "
             "(or optimized at level BASIC), then let ONNX Runtime optimize the result")
ORT_TRANSFORMER_FUSED = ("ONNX Runtime's fused transformer ops (onnxruntime.transformers' optimizer): compress the "
                         "model before that optimizer, then run the optimizer on the result (it fuses Attention "
                         "only where the q, k, v and output projections stay dense: keep them with --exclude)")
# every op whose MACs count in the total: (domain, op) -> (how to count, data input, weight input, why it is
# left as it is: None for the layers onnx-alds changes and ConvTranspose, which has its own note)
COUNTED_OPS: dict[tuple[str, str], tuple[str, int, int, Optional[str]]] = {
    ("", "Conv"): ("conv", 0, 1, None),
    ("", "Gemm"): ("gemm", 0, 1, None),
    ("", "MatMul"): ("matmul", 0, 1, None),
    ("", "ConvTranspose"): ("conv-transpose", 0, 1, None),
    ("", "ConvInteger"): ("conv", 0, 1, QUANTIZED),
    ("", "QLinearConv"): ("conv", 0, 3, QUANTIZED),
    ("", "MatMulInteger"): ("matmul", 0, 1, QUANTIZED),
    ("", "QLinearMatMul"): ("matmul", 0, 3, QUANTIZED),
    ("com.microsoft", "QLinearConv"): ("conv", 0, 3, QUANTIZED),
    ("com.microsoft", "QGemm"): ("gemm", 0, 3, QUANTIZED),
    ("com.microsoft", "MatMulIntegerToFloat"): ("matmul", 0, 1, QUANTIZED),
    ("com.microsoft", "DynamicQuantizeMatMul"): ("matmul", 0, 1, QUANTIZED),
    ("com.microsoft", "MatMulNBits"): ("n-bits", 0, 1, QUANTIZED),
    ("com.microsoft", "FusedConv"): ("conv", 0, 1, ORT_FUSED),
    ("com.microsoft", "FusedGemm"): ("gemm", 0, 1, ORT_FUSED),
    ("com.microsoft", "FusedMatMul"): ("matmul", 0, 1, ORT_FUSED),
    ("com.microsoft", "TransposeMatMul"): ("matmul", 0, 1, ORT_FUSED),  # (FusedMatMul's older name)
    ("com.microsoft", "FusedMatMulActivation"): ("matmul", 0, 1, ORT_FUSED),
    ("com.microsoft", "MatMulInteger16"): ("matmul", 0, 1, QUANTIZED),
    ("com.microsoft", "NhwcConv"): ("conv-nhwc", 0, 1, ORT_FUSED),
    ("com.microsoft", "NhwcFusedConv"): ("conv-nhwc", 0, 1, ORT_FUSED),
    ("com.microsoft", "ConvTransposeWithDynamicPads"): ("conv-transpose", 0, 1, ORT_FUSED),
    ("com.microsoft.nchwc", "Conv"): ("conv", 0, 1, ORT_FUSED),
    ("com.microsoft", "Attention"): ("attention", 0, 1, ORT_TRANSFORMER_FUSED),
    ("com.microsoft", "QAttention"): ("attention", 0, 1, QUANTIZED),
    ("com.microsoft", "GemmFastGelu"): ("matmul", 0, 1, ORT_TRANSFORMER_FUSED),
    ("", "Attention"): ("scaled-dot-product", 0, 1, None),  # (opset 23: Q, K, V of run-time tensors, no weight)
    # ONNX Runtime's attention over run-time Q, K, V (no weight; key absent when Q, K, V come packed in query)
    ("com.microsoft", "MultiHeadAttention"): ("attention-heads", 0, 0, None),
    ("com.microsoft", "GroupQueryAttention"): ("attention-heads", 0, 0, None),
}
# ONNX Runtime's ops that compute products (attention, mixtures of experts, packed or block-quantized weights)
# whose MACs onnx-alds does not count: named in a note, so that the total says what it leaves out
UNCOUNTED_COMPUTE_OPS = frozenset({
    ("com.microsoft", op) for op in (
        "AttnLSTM", "CDist", "DecoderAttention", "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention",
        "DynamicQuantizeLSTM", "DynamicSparseAttention", "GatedDeltaNet", "GemmFloat8", "LinearAttention",
        "LongformerAttention", "MatMulBlockQuantizedFp4Weight", "MatMulBlockQuantizedFp8Weight", "MatMulBnb4",
        "MatMulFpQ4", "MatMulNBitsMlp", "MatMulNBitsQLoRA", "MatMulNBitsQkv", "MatMulPacked", "MoE", "MoEPacked",
        "PackedAttention", "PackedMultiHeadAttention", "PagedAttention", "QMoE", "QOrderedAttention",
        "QOrderedLongformerAttention", "QOrderedMatMul", "SparseAttention", "SparsePagedAttention",
        "SparseToDenseMatMul", "WordConvEmbedding")})
# classical-ML ops (skl2onnx, onnxmltools) that hold their coefficients in attributes, not initializers
ML_MODEL_OPS = ("LinearClassifier", "LinearRegressor", "SVMClassifier", "SVMRegressor", "TreeEnsembleClassifier",
                "TreeEnsembleRegressor", "TreeEnsemble")
ML_MODEL = ("classical ML ops: their coefficients are attributes, which onnx-alds neither changes nor counts "
            "among the weights")
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
    weight_first: bool = False  # MatMul(W, x): y = W @ x, the weight is the first input
    weight_type: int = onnx.TensorProto.FLOAT  # element type of the (folded) weight tensor
    subgraph: Optional[str] = None  # where a node inside If/Loop/Scan sits ("If_0/then_branch"), else None
    run_macs: Optional[int] = None  # a node whose "weight" is computed at run time: its MACs, from the shapes
    output_rank: Optional[int] = None  # rank of the node's output at the resolved input shape (None: not known)

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
        if self.run_macs is not None:
            return self.run_macs
        return None if self.positions is None else self.params * self.positions

    @property
    def compressible(self) -> bool:
        return self.skip_reason is None


def iter_graphs(graph: onnx.GraphProto, path: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graph and every subgraph nested in its nodes (If/Loop/Scan bodies), with their paths
    (``""`` for the main graph, ``"If_0/then_branch"`` for a branch), parents before children."""
    yield path, graph
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for sub in subgraphs:
                where = f"{node.name or node.op_type}/{attribute.name}"
                yield from iter_graphs(sub, f"{path}/{where}" if path else where)


def node_names(model: onnx.ModelProto) -> list[str]:
    """The unique name of every node of the model, subgraphs included, in :func:`iter_graphs` order (what
    :func:`ensure_node_names` sets): its own (the first node of a name keeps it), else ``<op>_<index>``
    or, for a repeated name, ``<name>_<k>``, never a name that another node already has."""
    nodes = [node for _, graph in iter_graphs(model.graph) for node in graph.node]
    taken = {node.name for node in nodes if node.name}
    given: set[str] = set()
    names = []
    for index, node in enumerate(nodes):
        name = node.name
        if not name or name in given:
            base, suffix = name or f"{node.op_type}_{index}", 1
            name = base
            while name in taken:
                name, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(name)
        given.add(name)
        names.append(name)
    return names


def ensure_node_names(model: onnx.ModelProto) -> dict[str, str]:
    """Give every node of the model, subgraphs included, a unique name (:func:`node_names`), in place.
    Returns each name given → the node's own name ("" or a repeated one), for the nodes renamed."""
    nodes = [node for _, graph in iter_graphs(model.graph) for node in graph.node]
    given = {}
    for node, name in zip(nodes, node_names(model)):
        if node.name != name:
            given[name] = node.name
            node.name = name
    return given


_CONSTANT_LISTS = {"value_float": (np.float32, False), "value_floats": (np.float32, True),
                   "value_int": (np.int64, False), "value_ints": (np.int64, True)}


def constant_node_value(node: onnx.NodeProto) -> Optional[onnx.TensorProto]:
    """The tensor a standard ``Constant`` node gives: its ``value``, or its ``value_float(s)`` /
    ``value_int(s)`` as a float32 / int64 tensor (a scalar or 1-D, as the ONNX spec says); None for other
    nodes and for strings and sparse values."""
    if node.op_type != "Constant" or not is_standard(node) or not node.attribute or not node.output:
        return None
    attribute = node.attribute[0]
    if attribute.ref_attr_name:  # (inside a function: the value is the call's attribute, not stored here)
        return None
    if attribute.name == "value":
        return attribute.t
    if attribute.name not in _CONSTANT_LISTS:
        return None
    dtype, listed = _CONSTANT_LISTS[attribute.name]
    value = onnx.helper.get_attribute_value(attribute)
    return numpy_helper.from_array(np.asarray(list(value) if listed else value, dtype=dtype), node.output[0])


def overridable_initializers(model: onnx.ModelProto) -> set[str]:
    """Initializers a graph input of the same name lets callers override at run time (IR 4 or newer); at IR 3
    every initializer is listed as an input, which onnx-alds reads as constants, as ONNX Runtime does."""
    if model.ir_version < 4:
        return set()
    return {value.name for value in model.graph.input} & {init.name for init in model.graph.initializer}


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and outputs of ``Constant`` nodes holding a tensor, by name (subgraphs included)."""
    tensors: dict[str, onnx.TensorProto] = {}
    for _, graph in iter_graphs(model.graph):
        for init in graph.initializer:
            tensors.setdefault(init.name, init)
        for node in graph.node:
            value = constant_node_value(node) if node.op_type == "Constant" else None
            if value is not None:
                tensors.setdefault(node.output[0], value)
    return tensors


def weight_constants(model: onnx.ModelProto, load: Optional[Callable[[onnx.TensorProto], onnx.TensorProto]] = None
                     ) -> tuple[dict[str, onnx.TensorProto], dict[str, str]]:
    """:func:`constant_tensors` plus the weights of Conv/Gemm/MatMul nodes that reach them through a
    chain of :data:`FOLDABLE_OPS` on constants (``Identity`` as PyTorch shares constants, ``Cast``,
    ``Transpose``, ``Reshape`` ...), evaluated once by onnx's reference evaluator.

    Returns the tensors by name and, for each folded weight, the op types of its chain ("Identity").
    Nothing in the model changes: the factorized pair gets new initializers, a dense layer keeps its chain.
    ``load``: gives the complete tensor for a light model's stub (the chain's inputs are evaluated).
    """
    tensors = constant_tensors(model)
    # an initializer also listed as a graph input (IR >= 4) may be overridden: not a constant to fold
    overridable = overridable_initializers(model)
    foldable = {name: tensor for name, tensor in tensors.items() if name not in overridable}
    producers = {output: node for _, graph in iter_graphs(model.graph) for node in graph.node
                 for output in node.output if output}
    folded: dict[str, str] = {}
    for _, graph in iter_graphs(model.graph):
        for node in graph.node:
            if not is_layer_node(node):
                continue
            for slot in (1, 0) if node.op_type == "MatMul" else (1,):
                name = node.input[slot]
                if name in tensors or name not in producers:
                    continue
                chain = _constant_chain(name, producers, foldable)
                if chain:
                    value = _evaluate_chain(model, chain, foldable, name, load)
                    if value is not None:
                        tensors[name] = value
                        folded[name] = " → ".join(n.op_type for n in chain)
    return tensors, folded


_FOUR_BIT_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1")
                   if hasattr(onnx.TensorProto, name)}


def element_bits(element_type: int) -> int:
    """Bits per element of an ONNX tensor type (4 for int4/uint4/float4, numpy's item size otherwise)."""
    if element_type in _FOUR_BIT_TYPES:
        return 4
    return 8 * onnx.helper.tensor_dtype_to_np_dtype(element_type).itemsize


def widened_weights(model: onnx.ModelProto, layers: Sequence["Layer"]) -> dict[str, int]:
    """Of ``layers``, those whose weight is folded from a narrower type than the layer computes in (a
    float16 initializer ``Cast`` to float32 by a mixed-precision export; an int8, float8 or int4 one Cast to
    float): layer name → the element type the weight is stored as. Their factors are stored in the layer's
    type, not the narrower one."""
    tensors = constant_tensors(model)
    producers = {output: node for _, graph in iter_graphs(model.graph) for node in graph.node
                 for output in node.output if output}
    widened = {}
    for layer in layers:
        if layer.weight in tensors:
            continue  # stored as it is used
        chain = _constant_chain(layer.weight, producers, tensors)
        bits = element_bits(layer.weight_type)
        # the data each chain node moves or casts is its first input (the others: shapes, axes)
        narrow = [tensors[node.input[0]].data_type for node in chain if node.input and node.input[0] in tensors
                  and element_bits(tensors[node.input[0]].data_type) < bits]
        if narrow:
            widened[layer.name] = narrow[0]
    return widened


def _constant_chain(name: str, producers: Mapping[str, onnx.NodeProto],
                    tensors: Mapping[str, onnx.TensorProto]) -> list[onnx.NodeProto]:
    """The foldable nodes (first to last) that compute ``name`` from constants only, or []."""
    chain: list[onnx.NodeProto] = []
    pending = [name]
    while pending:
        tensor = pending.pop()
        if tensor in tensors or not tensor:
            continue
        node = producers.get(tensor)
        if node is None or node.op_type not in FOLDABLE_OPS or not is_standard(node) or len(chain) > 16:
            return []
        chain.append(node)
        pending.extend(node.input)
    return chain[::-1]


def _evaluate_chain(model: onnx.ModelProto, chain: Sequence[onnx.NodeProto],
                    tensors: Mapping[str, onnx.TensorProto], name: str,
                    load: Optional[Callable[[onnx.TensorProto], onnx.TensorProto]] = None
                    ) -> Optional[onnx.TensorProto]:
    inputs = {i for node in chain for i in node.input if i and i in tensors}
    inits = []
    for i in sorted(inputs):
        tensor = onnx.TensorProto()
        tensor.CopyFrom(load(tensors[i]) if load is not None else tensors[i])
        tensor.name = i
        inits.append(tensor)
    graph = onnx.helper.make_graph(list(chain), "fold", [], [onnx.helper.make_empty_tensor_value_info(name)], inits)
    probe = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
    value = evaluate_constant_graph(probe)
    if value is None:  # the chain is not evaluable (bad attributes ...): the weight stays non-constant
        return None
    return numpy_helper.from_array(value, name)


def evaluate_constant_graph(probe: onnx.ModelProto) -> Optional[np.ndarray]:
    """The first output of ``probe``, a model with no inputs (a constant chain), or None where it cannot be
    evaluated. ONNX Runtime first: the values the model computes where it is run (onnx's reference evaluator
    differs on some casts: float to int4 truncates and saturates there, ONNX Runtime rounds and wraps); the
    reference evaluator where ONNX Runtime is not installed or lacks a kernel (bfloat16 arithmetic on the
    CPU, for one)."""
    from onnx.reference import ReferenceEvaluator

    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # a chain ONNX Runtime cannot run is evaluated below
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {})[0])
    except Exception:
        pass
    try:
        return np.asarray(ReferenceEvaluator(probe).run(None, {})[0])
    except Exception:
        return None


def use_counts(graph: onnx.GraphProto, counts: Counter) -> None:
    """Add to ``counts`` how many times each name is read in ``graph`` and its subgraphs, at every depth
    (node inputs and graph outputs)."""
    for node in graph.node:
        counts.update(name for name in node.input if name)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                use_counts(attribute.g, counts)
            for sub in attribute.graphs:
                use_counts(sub, counts)
    counts.update(output.name for output in graph.output)


def _main_graph_needs(model: onnx.ModelProto) -> list[set[int]]:
    """For each main-graph node, the indices of the nodes whose outputs it reads (its subgraphs' reads of
    outer names included)."""
    graph = model.graph
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    needs: list[set[int]] = []
    for node in graph.node:
        reads: Counter = Counter(name for name in node.input if name)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs):
                use_counts(sub, reads)
        needs.append({producer[name] for name in reads if name in producer})
    return needs


def in_topological_order(model: onnx.ModelProto) -> bool:
    """Whether every main-graph node comes after the nodes whose outputs it reads (:func:`sort_nodes`)."""
    return _in_order(_main_graph_needs(model))


def _in_order(needs: Sequence[set[int]]) -> bool:
    return all(before < index for index, earlier in enumerate(needs) for before in earlier)


def sort_nodes(model: onnx.ModelProto) -> bool:
    """Put the main graph's nodes in topological order, in place (a stable sort: nodes already in order keep
    it), as the ONNX spec requires and onnx.checker checks. ONNX Runtime sorts a main graph itself, and its
    float16 converter (``convert_float_to_float16(keep_io_types=True)``) writes input casts after their
    readers; it runs no unsorted If/Loop/Scan body, so those are left to onnx.checker to refuse. A node's
    subgraphs' reads of outer names count as its inputs. Returns whether the nodes were reordered. Raises
    :class:`ModelLoadError` when the nodes form a cycle (no order exists)."""
    graph = model.graph
    needs = _main_graph_needs(model)
    if _in_order(needs):
        return False
    readers: list[list[int]] = [[] for _ in graph.node]
    for index, earlier in enumerate(needs):
        for before in earlier:
            readers[before].append(index)
    waiting = [len(earlier) for earlier in needs]
    ready = [index for index, count in enumerate(waiting) if not count]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if not waiting[reader]:
                heapq.heappush(ready, reader)
    if len(order) < len(graph.node):
        stuck = graph.node[min(set(range(len(graph.node))) - set(order))]
        raise ModelLoadError(f"the model's nodes form a cycle (node '{stuck.name or stuck.op_type}' cannot be ordered: "
                             "it depends on its own output through other nodes, or on a node that does), which no "
                             "ONNX graph may have; fix the model or export it again")
    copies = [onnx.NodeProto() for _ in order]
    for copy, index in zip(copies, order):
        copy.CopyFrom(graph.node[index])
    del graph.node[:]
    graph.node.extend(copies)
    return True


def _shared_uses(name: str, uses: Counter, producers: Mapping[str, onnx.NodeProto]) -> int:
    """How many nodes read the weight ``name`` or the data it is computed from through a chain of
    :data:`FOLDABLE_OPS` (``W → Identity → A`` and ``W → Identity → B`` share ``W``): the largest use count
    along the chain. A shared weight factorized per use would be stored once per use."""
    most, tensor, seen = uses[name], name, 0
    while tensor in producers and producers[tensor].op_type in FOLDABLE_OPS and is_standard(producers[tensor]) \
            and seen < 16:
        tensor, seen = producers[tensor].input[0], seen + 1
        most = max(most, uses[tensor])
    return most


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def is_standard(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is an op of the standard ONNX domain (its op type then means what ONNX says)."""
    return node.domain in STANDARD_OP_DOMAINS


def op_key(node: onnx.NodeProto) -> tuple[str, str]:
    """``(domain, op type)``, the standard domain spelled ``""``."""
    return ("" if node.domain in STANDARD_OP_DOMAINS else node.domain), node.op_type


def is_layer_node(node: onnx.NodeProto) -> bool:
    """A Conv, Gemm or MatMul of the standard ONNX domain with a weight input: what onnx-alds may change.
    An op of the same name in another domain means something else (ONNX Runtime's
    ``com.microsoft.nchwc`` Conv reads blocked layouts; a vendor's MatMul may not be a product at all)."""
    return node.op_type in LAYER_OPS and is_standard(node) and len(node.input) >= 2


def is_counted_node(node: onnx.NodeProto) -> bool:
    """A node whose MACs count in the model's total (:data:`COUNTED_OPS`, its weight input present)."""
    spec = COUNTED_OPS.get(op_key(node))
    return spec is not None and len(node.input) > spec[2] and bool(node.input[spec[2]])


def counted_inputs(node: onnx.NodeProto) -> tuple[str, str]:
    """The data and weight inputs of a counted node (:func:`is_counted_node`)."""
    _, data, weight, _ = COUNTED_OPS[op_key(node)]
    return node.input[data], node.input[weight]


def macs_tensors(node: onnx.NodeProto) -> tuple[str, ...]:
    """The tensors whose shapes :func:`node_macs` reads: the counted inputs and the first output, the ONNX
    ``Attention`` op's past keys (input 4), and ONNX Runtime's MultiHeadAttention and GroupQueryAttention's
    key, past key and present key."""
    past = (node.input[4],) if op_key(node) == ("", "Attention") and len(node.input) > 4 and node.input[4] else ()
    if COUNTED_OPS[op_key(node)][0] == "attention-heads":  # (the past key: MultiHeadAttention's input 6, else 3)
        index = 6 if node.op_type == "MultiHeadAttention" else 3
        past = tuple(name for name in (node.input[1] if len(node.input) > 1 else "",
                                       node.input[index] if len(node.input) > index else "",
                                       node.output[1] if len(node.output) > 1 else "") if name)
    return (node.output[0], *counted_inputs(node), *past)


CUSTOM_LAYER = "ops of another domain named like ONNX layers, whose meaning onnx-alds does not know; MACs not counted"


def unchanged_ops_note(model: onnx.ModelProto) -> str:
    """What the model's layers that onnx-alds leaves as they are (quantized, ONNX Runtime's fused ones,
    other domains' Conv/Gemm/MatMul) are, and what to do instead, e.g. ``"QLinearConv ×4 (quantized
    layers: compress the float model first ...)"``; "" when there are none."""
    by_why: dict[str, Counter] = {}
    graphs = [graph for _, graph in iter_graphs(model.graph)]
    constants = {init.name for graph in graphs for init in graph.initializer} | {
        node.output[0] for graph in graphs for node in graph.node if node.op_type == "Constant" and node.output}
    for graph in graphs:
        for node in graph.node:
            spec = COUNTED_OPS.get(op_key(node))
            why = spec[3] if spec is not None else (CUSTOM_LAYER if node.op_type in LAYER_OPS and op_key(node)[0]
                                                    else None)
            if why == ORT_FUSED and spec[0] in ("matmul", "gemm") and not constants.intersection(node.input[:2]):
                why = None  # a product of two run-time tensors (attention scores): nothing was hidden from onnx-alds
            if node.domain == "ai.onnx.ml" and node.op_type in ML_MODEL_OPS:
                why = ML_MODEL
            if why is not None:
                name = node.op_type if not op_key(node)[0] else f"{node.domain}::{node.op_type}"
                by_why.setdefault(why, Counter())[name] += 1
    return "; ".join(", ".join(f"{op} ×{count}" for op, count in sorted(ops.items())) + f" ({why})"
                     for why, ops in by_why.items())


def unused_initializers(model: onnx.ModelProto) -> set[str]:
    """Names of the main graph's initializers that nothing reads (no node at any depth, no graph output)."""
    used: Counter = Counter()
    use_counts(model.graph, used)
    return {tensor.name for tensor in model.graph.initializer if not used[tensor.name]}


def fold_weight_shapes(model: onnx.ModelProto) -> dict[str, str]:
    """Replace, in place, each main-graph ``Shape``/``Size`` node that reads an initializer (not an
    :func:`overridable_initializers` one) by a ``Constant`` node of the same name and output holding that
    shape or size: such a node reads only the weight's dims, not its values (torch's dynamo exporter without
    its optimizer builds a bias-free Conv's zero bias from ``Shape(weight)``), so the weight stays a layer's
    own. Returns the replaced nodes' names (or op types) → the weight each read, in graph order: the
    constants hold the full dims, so width pruning leaves those weights alone. Shape's ``start``/``end``
    (opset 15) as the ONNX spec says: negatives count from the end, clamped. Below opset 9, whose
    ``Constant`` holds no int64, the value is an initializer instead (listed as a graph input too at IR 3)
    and the node goes."""
    from .model_io import opset_version

    overridable = overridable_initializers(model)  # (fed at run time: its dims may change)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer if tensor.name not in overridable}
    folded: dict[str, str] = {}
    gone: list[int] = []  # (nodes replaced by initializers)
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("Shape", "Size") or not is_standard(node) or len(node.input) != 1 \
                or node.input[0] not in initializers or len(node.output) != 1:
            continue
        dims = [int(d) for d in initializers[node.input[0]].dims]
        if node.op_type == "Size":
            value = np.array(int(np.prod(dims, dtype=np.int64)), np.int64)
        else:
            start = next((a.i for a in node.attribute if a.name == "start"), 0)
            end = next((a.i for a in node.attribute if a.name == "end"), len(dims))
            value = np.array(dims[slice(*(min(max(i + len(dims) if i < 0 else i, 0), len(dims))
                                         for i in (start, end)))], np.int64)
        folded[node.name or f"{node.op_type}_{index}"] = node.input[0]
        tensor = numpy_helper.from_array(value, node.output[0])
        if opset_version(model) >= 9:
            node.CopyFrom(onnx.helper.make_node("Constant", [], list(node.output), name=node.name, value=tensor))
            continue
        model.graph.initializer.append(tensor)
        if model.ir_version < 4:
            model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, value.shape))
        gone.append(index)
    for index in reversed(gone):
        del model.graph.node[index]
    return folded


def drop_dead_nodes(model: onnx.ModelProto) -> tuple[list[str], int]:
    """Remove, in place, the nodes whose outputs nothing reads (no node at any depth of their graph, no output
    of their graph), repeatedly, in the main graph and in every If/Loop/Scan body, and the initializers only
    they read; the written model drops them anyway (onnx-graphsurgeon's cleanup), so the totals, the layers
    and the budget leave them out from the start. Returns the removed nodes' names (or op types) and the
    number of weight elements removed with them."""
    removed: list[str] = []
    elements = 0  # the weights removed: dead Constant nodes' and (below) orphaned initializers'
    graphs = list(iter_graphs(model.graph))
    order = {node.name or node.op_type: index for index, node in
             enumerate(node for _, graph in graphs for node in graph.node)}
    unread_before = {}  # per graph path: its own initializers nothing read (the user's: they stay)
    for path, graph in graphs:
        used: Counter = Counter()
        use_counts(graph, used)
        unread_before[path] = {tensor.name for tensor in graph.initializer if not used[tensor.name]}
    for _, graph in reversed(graphs):  # bodies first: a dead If goes after its branches
        while True:
            used = Counter()
            use_counts(graph, used)
            dead = [index for index, node in enumerate(graph.node)
                    if node.output and not any(used[name] for name in node.output if name)]
            if not dead:
                break
            for index in reversed(dead):
                removed.append(graph.node[index].name or graph.node[index].op_type)
                value = constant_node_value(graph.node[index])
                elements += int(np.prod(value.dims)) if value is not None else 0
                del graph.node[index]
    if not removed:
        return [], 0
    removed.sort(key=order.get)  # in graph order
    for path, graph in iter_graphs(model.graph):  # (the node names are unique: the paths are too)
        used = Counter()
        use_counts(graph, used)
        unread = {tensor.name for tensor in graph.initializer if not used[tensor.name]}
        orphans = unread - unread_before.get(path, set())
        elements += sum(int(np.prod(tensor.dims)) for tensor in graph.initializer if tensor.name in orphans)
        kept = [tensor for tensor in graph.initializer if tensor.name not in orphans]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return removed, elements


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> Optional[int]:
    """Multiply-accumulates of a node of :data:`COUNTED_OPS` (Conv, ConvTranspose, Gemm, MatMul, their
    quantized and ONNX Runtime-fused forms), from its tensor shapes; None if unknown or not counted."""
    if not is_counted_node(node):
        return None
    kind = COUNTED_OPS[op_key(node)][0]
    data_name, weight_name = counted_inputs(node)
    data, weight, output = shapes.get(data_name), shapes.get(weight_name), shapes.get(node.output[0])
    if kind == "conv":
        if weight is None or output is None or len(output) < 2:
            return None
        return int(np.prod(weight)) * output[0] * int(np.prod(output[2:]))
    if kind == "conv-nhwc":  # ONNX Runtime's channels-last conv: output [N, H, W, M]
        if weight is None or output is None or len(output) < 2:
            return None
        return int(np.prod(weight)) * output[0] * int(np.prod(output[1:-1]))
    if kind == "attention-heads":
        return _attention_heads_macs(node, shapes)
    if kind == "conv-transpose":  # every input position meets every weight element once
        if weight is None or data is None or len(data) < 2:
            return None
        return int(np.prod(weight)) * data[0] * int(np.prod(data[2:]))
    if kind == "scaled-dot-product":  # ONNX Attention (opset 23): Q Kᵀ, then the scores times V, over every key
        # (the past ones included): every element of Q, and of the output, meets every key once
        if data is None or weight is None or output is None or len(data) not in (3, 4) or len(weight) != len(data):
            return None
        keys = weight[1] if len(weight) == 3 else weight[2]
        past = shapes.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if len(node.input) > 4 and node.input[4] and (past is None or len(past) != 4):
            return None
        keys += past[2] if past else 0
        return (int(np.prod(data)) + int(np.prod(output))) * int(keys)
    if kind == "attention":  # [B, S, H] × packed Q/K/V weight [H, 3H'], then scores and context (2·B·S²·H')
        if data is None or weight is None or len(data) != 3 or len(weight) != 2:
            return None
        batch, sequence, hidden = data
        return batch * sequence * hidden * weight[1] + 2 * batch * sequence * sequence * (weight[1] // 3)
    if output is None:
        return None
    if kind == "n-bits":  # the weight is packed: its inner size is the attribute K
        return int(np.prod(output)) * int(_attr(node, "K", 0)) or None
    if data is None or not data:
        return None
    inner = data[-1]
    if _attr(node, "transA", 0):  # Gemm, FusedMatMul
        inner = data[0] if kind == "gemm" else (data[-2] if len(data) > 1 else data[0])
    return int(np.prod(output)) * int(inner)


def _attention_heads_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> Optional[int]:
    """MACs of ONNX Runtime's MultiHeadAttention or GroupQueryAttention (ContribOperators.md): Q Kᵀ and the
    scores times V, every query position against all T keys: ``T · (B·S·N·H_qk + B·S·N·H_v)``, the query's
    elements (``[B, S, N·H_qk]``; the Q part of a packed query: ``[B, S, N, 3, H]``, or GroupQueryAttention's
    ``[B, S, (N + 2·N_kv)·H]`` without a key) and the output's (``[B, S, N·H_v]``; the query's Q part where
    the output's shape is not known: equal head sizes). T: the present key's length ``[B, N, T, H]`` where it is
    an output (with a KV buffer shared between past and present, the buffer's length: an upper bound), else
    the key's (``[B, L, D]``, ``[B, N, L, H]``, packed ``[B, L, N, 2, H]``; the query's length without a key)
    plus the past key's; None where a shape is not known."""
    query = shapes.get(node.input[0])
    has_key = len(node.input) > 1 and bool(node.input[1])
    if query is None or len(query) not in (3, 5):
        return None
    if has_key or len(query) == 5:  # (a 5-D query packs Q, K and V: its Q part is a third)
        q_elements = int(np.prod(query)) // (3 if len(query) == 5 else 1)
    elif node.op_type == "GroupQueryAttention":  # Q, K, V packed in the last dim: N + 2·N_kv heads of H
        heads, kv_heads = int(_attr(node, "num_heads", 0)), int(_attr(node, "kv_num_heads", 0))
        if heads <= 0 or kv_heads <= 0:
            return None
        q_elements = int(np.prod(query)) * heads // (heads + 2 * kv_heads)
    else:
        return None
    output = shapes.get(node.output[0])
    out_elements = int(np.prod(output)) if output is not None and len(output) == 3 else q_elements
    present = shapes.get(node.output[1]) if len(node.output) > 1 and node.output[1] else None
    if present is not None and len(present) == 4:
        return int(present[2]) * (q_elements + out_elements)
    key = shapes.get(node.input[1]) if has_key else None
    if not has_key:
        keys = int(query[1])  # (Q, K, V packed in the query: as many keys as queries)
    elif key is None:
        return None
    elif len(key) in (3, 5):
        keys = int(key[1])
    elif len(key) == 4:
        keys = int(key[2])
    else:
        return None
    index = 6 if node.op_type == "MultiHeadAttention" else 3
    if len(node.input) > index and node.input[index]:
        past = shapes.get(node.input[index])
        if past is None or len(past) != 4:
            return None
        keys += int(past[2])
    return keys * (q_elements + out_elements)


def uncounted_compute_ops(model: onnx.ModelProto) -> Counter:
    """``domain::op -> count`` of the nodes of :data:`UNCOUNTED_COMPUTE_OPS` (at any depth)."""
    return Counter(f"{node.domain}::{node.op_type}" for _, graph in iter_graphs(model.graph) for node in graph.node
                   if op_key(node) in UNCOUNTED_COMPUTE_OPS)


def _positions(op: str, output_shape: Optional[tuple[int, ...]], out_features: int = 0, *,
               weight_first: bool = False) -> Optional[int]:
    """How many output vectors of length ``f`` one run computes."""
    if output_shape is None:
        return None
    if op == "Conv":
        return int(output_shape[0] * np.prod(output_shape[2:])) if len(output_shape) >= 2 else None
    if weight_first:  # y = W @ x: (..., f, n), one vector per column
        return int(np.prod(output_shape)) // out_features if out_features else 0
    return int(np.prod(output_shape[:-1])) if len(output_shape) > 1 else 1


def find_layers(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], *,
                exclude: Sequence[str] = (), max_groups: int = 16, channel_multiple: int = 1,
                constants: Optional[Mapping[str, onnx.TensorProto]] = None) -> list[Layer]:
    """Every Conv/Gemm/MatMul node of the model with its weight, in graph order; nodes inside
    If/Loop/Scan subgraphs follow the main graph's, with their ``subgraph`` path.

    ``exclude`` holds glob patterns matched against node and weight names; ``channel_multiple``
    restricts the candidate group counts (see :func:`onnx_alds.decompose.candidate_groups`);
    ``constants`` (default :func:`weight_constants`) maps weight names to their tensors.
    """
    if constants is None:
        constants = weight_constants(model)[0]
    exclude = literal_where_named(model, exclude)
    uses: Counter = Counter()
    use_counts(model.graph, uses)
    trained = trained_tensors(model)
    producers = {output: node for _, graph in iter_graphs(model.graph) for node in graph.node for output in node.output}
    overridable = overridable_initializers(model)  # (a default that callers may override)
    ambiguous = names_defined_twice(model)
    returned = {value.name for _, graph in iter_graphs(model.graph) for value in graph.output}
    readers: Optional[dict[str, list[onnx.NodeProto]]] = None  # built when a weight turns out shared
    layers = []
    for path, graph in iter_graphs(model.graph):
        for node in graph.node:
            if not is_layer_node(node):
                continue
            layer = _describe(node, constants, uses, shapes, exclude, max_groups, channel_multiple, producers)
            if layer is None:
                continue
            if (layer.compressible or (layer.skip_reason or "").startswith("weight is shared")) and \
                    (clash := _ambiguous_source(layer.weight, producers, ambiguous)):
                layer = replace(layer, skip_reason=f"'{clash}' (what its weight is read from) is defined in more than "
                                                   "one subgraph, so which one it reads is not known by name: give "
                                                   "each subgraph's tensors their own names to compress it")
            if not layer.compressible and (not layer.params or not (layer.out_features and layer.in_channels)
                                           or layer.weight not in constants) \
                    and (counted := node_macs(node, shapes)):  # a product with a run-time tensor, a batched weight
                layer = replace(layer, run_macs=counted)  # or one constants compute (its params: what is stored)
            if is_constant_product(node, producers, constants):
                layer = replace(layer, skip_reason="both operands are constants (ONNX Runtime computes the product "
                                "once, when it loads the model): not a layer, no MACs at run time", run_macs=0,
                                params=0)  # (its weights count where the product is read as a weight)
            if (layer.skip_reason or "").startswith("weight is shared by"):
                readers = readers if readers is not None else _readers(model)
                layer = replace(layer, skip_reason=layer.skip_reason + _other_reader_text(node, layer.weight,
                                                                                          producers, readers, returned))
            if (layer.skip_reason or "").startswith("weight is shared") and layer.weight in returned \
                    and uses[layer.weight] == 2:  # read by this node and returned: not shared with another layer
                layer = replace(layer, skip_reason="weight is also a graph output (the model returns it as it is)")
            if (layer.skip_reason or "").startswith("weight is not a constant (computed at run time") and \
                    chain_source(layer.weight, producers) in overridable:  # W (a graph input) → Transpose → layer
                layer = replace(layer, skip_reason=None)
            if layer.compressible and chain_source(layer.weight, producers) in overridable:
                layer = replace(layer, skip_reason="weight is also a graph input (callers may override it): "
                                                     "re-export without keep_initializers_as_inputs, or drop it "
                                                     "from the graph inputs, to compress it")
            if layer.compressible and (layer.weight in trained or trained.intersection(node.input[1:])):
                what = "weight" if layer.weight in trained else "bias"
                layer = replace(layer, skip_reason=f"{what} is trained on device (the model's training_info uses it)")
            layers.append(replace(layer, subgraph=path or None))
    check_exclude_patterns(model, exclude)
    return layers


ALSO_READ_BY = ": also read by "  # a shared weight's reason names its other reader after this


def _readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes (of every graph) that read each tensor name."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for _, graph in iter_graphs(model.graph):
        for node in graph.node:
            for name in set(node.input):
                if name:
                    readers.setdefault(name, []).append(node)
    return readers


def _other_reader_text(node: onnx.NodeProto, weight: str, producers: Mapping[str, onnx.NodeProto],
                       readers: Mapping[str, list[onnx.NodeProto]], returned: Collection[str] = ()) -> str:
    """``": also read by Gather 'emb' ..."``: the first node other than ``node`` that reads ``weight`` or what
    it is computed from, past Identity/Cast/Transpose/Reshape nodes (another layer's chain is followed to the
    node at its end); a Gather is named as a tied embedding; else ``node`` itself reading it twice, or a
    graph output (``returned``) the chain reaches; empty when none is found."""
    chain, tensor = {id(node)}, weight
    names = [tensor]
    for _ in range(16):
        producer = producers.get(tensor)
        if producer is None or producer.op_type not in FOLDABLE_OPS or not is_standard(producer) or not producer.input:
            break
        chain.add(id(producer))
        tensor = producer.input[0]
        names.append(tensor)
    pending = [reader for name in names for reader in readers.get(name, []) if id(reader) not in chain
               and not (reader.op_type in FOLDABLE_OPS and reader.output and reader.output[0] in names)]
    seen: set[int] = set()
    while pending and len(seen) < 64:  # another chain of moves and casts: the nodes at its ends
        other = pending.pop(0)
        if id(other) in seen:
            continue
        seen.add(id(other))
        if other.op_type in FOLDABLE_OPS and is_standard(other) and other.output:
            pending.extend(readers.get(other.output[0], []))
            continue
        tied = " (a tied embedding: the head shares the embedding table)" if other.op_type == "Gather" else ""
        return f"{ALSO_READ_BY}{other.op_type} '{other.name or other.output[0]}'{tied}"
    if list(node.input).count(weight) > 1:  # Gemm(x, W, W)
        return f"{ALSO_READ_BY}the same node, as another of its inputs"
    output = next((name for name in names if name in returned), None)
    if output is None:  # through a chain of moves and casts to a graph output
        ends = [reader.output[0] for name in names for reader in readers.get(name, [])
                if id(reader) not in chain and reader.op_type in FOLDABLE_OPS and reader.output]
        output = next((name for name in ends if name in returned), None)
    return f": also returned as graph output '{output}'" if output is not None else ""


def trained_tensors(model: onnx.ModelProto) -> set[str]:
    """The tensors on-device training (``training_info``) updates, re-initializes or reads: the keys of its
    update and initialization bindings and every input of its algorithm's and initialization's nodes. The
    compression must leave them (and the layers that read them) as they are, or the bindings dangle."""
    trained: set[str] = set()
    for info in model.training_info:
        trained.update(binding.key for binding in info.update_binding)
        trained.update(binding.key for binding in info.initialization_binding)
        for step in (info.algorithm, info.initialization):
            trained.update(name for _, graph in iter_graphs(step) for node in graph.node for name in node.input if name)
    return trained


def names_defined_twice(model: onnx.ModelProto) -> set[str]:
    """Tensor names that more than one graph of the model defines (as an initializer, a graph input or
    a node output): sibling If branches or Loop bodies may each hold their own ``W``, and a lookup by
    name cannot tell them apart (a name an enclosing graph defines again is refused by
    :mod:`onnx_alds.checks`)."""
    seen: set[str] = set()
    twice: set[str] = set()
    for _, graph in iter_graphs(model.graph):
        defined = {value.name for value in graph.input} | {init.name for init in graph.initializer} | \
            {out for node in graph.node for out in node.output if out}
        twice |= defined & seen
        seen |= defined
    return twice


def _walk_back(name: str, producers: Mapping[str, onnx.NodeProto], *, stop: Callable[[str], bool] = lambda _: False,
               limit: int = 64) -> Iterator[str]:
    """``name`` and the tensors its producers read, back through the graph, each once (at most ``limit``);
    a tensor where ``stop`` holds is yielded but not walked past."""
    seen: set[str] = set()
    pending = [name]
    while pending and len(seen) < limit:
        tensor = pending.pop()
        if not tensor or tensor in seen:
            continue
        seen.add(tensor)
        yield tensor
        node = producers.get(tensor)
        if node is not None and not stop(tensor):
            pending.extend(node.input)


def _ambiguous_source(name: str, producers: Mapping[str, onnx.NodeProto], ambiguous: set[str],
                      limit: int = 64) -> Optional[str]:
    """The first name in ``ambiguous`` among ``name`` and the tensors its producers read (at most
    ``limit`` of them), else None."""
    if not ambiguous:
        return None
    return next((tensor for tensor in _walk_back(name, producers, limit=limit) if tensor in ambiguous), None)


def literal_where_named(model: onnx.ModelProto, exclude: Sequence[str]) -> list[str]:
    """The ``--exclude`` patterns, each that is itself a node or weight name made literal: ``layer[0]``
    means the node named ``layer[0]``, not the glob that matches ``layer0``."""
    if not exclude:
        return list(exclude)
    names = {name for _, graph in iter_graphs(model.graph) for node in graph.node for name in [node.name, *node.input]}
    return ["".join(f"[{char}]" if char in "[]*?" else char for char in pattern) if pattern in names else pattern
            for pattern in exclude]


def check_exclude_patterns(model: onnx.ModelProto, exclude: Sequence[str]) -> None:
    """Every ``--exclude`` pattern must match a Conv/Gemm/MatMul node's name or one of its inputs' names
    (a weight's also as stored, behind Transpose/Reshape/Cast nodes: :func:`chain_source`); a pattern that
    matches none is a typo that would leave a layer factorized. Raises InputDataError."""
    if not exclude:
        return
    producers = {out: node for _, graph in iter_graphs(model.graph) for node in graph.node for out in node.output}
    names = [name for _, graph in iter_graphs(model.graph) for node in graph.node if is_layer_node(node)
             for name in [node.name, *node.input, *(chain_source(i, producers) for i in node.input[1:] if i)]
             if name]
    for pattern, literal in zip(exclude, literal_where_named(model, exclude)):
        if not any(fnmatch.fnmatchcase(name, literal) for name in names):
            example = next((node.name for _, graph in iter_graphs(model.graph) for node in graph.node
                            if is_layer_node(node) and node.name), None)
            raise InputDataError(f"--exclude '{pattern}' matches no Conv/Gemm/MatMul node or weight name; check the "
                                 "pattern (globs such as '*/fc/*' match whole names" +
                                 (f"; a layer's name: '{example}')" if example else ")"))


def _keeps_spatial_size(node: onnx.NodeProto, weight_shape: Sequence[int]) -> bool:
    """Whether a stride-1 Conv's output has its input's spatial size whatever that size is (shapes unknown):
    ``auto_pad`` SAME_UPPER/SAME_LOWER, or explicit pads summing to ``(k - 1)·dilation`` on every axis."""
    kernel = list(_attr(node, "kernel_shape", list(weight_shape[2:])))
    if not kernel:
        return False
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return True
    if auto_pad not in ("NOTSET", ""):  # VALID: smaller by k - 1
        return False
    dilations = list(_attr(node, "dilations", [1] * len(kernel)))
    pads = list(_attr(node, "pads", [0] * 2 * len(kernel)))
    if len(dilations) != len(kernel) or len(pads) != 2 * len(kernel):
        return False
    return all(pads[i] + pads[i + len(kernel)] == (k - 1) * d for i, (k, d) in enumerate(zip(kernel, dilations)))


def _weight_slot(node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto],
                 shapes: Mapping[str, tuple[int, ...]]) -> int:
    """1, or 0 for a MatMul whose constant is its first input (``y = W @ x``)."""
    if node.op_type == "MatMul" and node.input[1] not in constants and node.input[0] in constants:
        return 0
    return 1


def chain_source(name: str, producers: Mapping[str, onnx.NodeProto]) -> str:
    """The tensor a chain of :data:`FOLDABLE_OPS` (Identity, Cast, Transpose ...) computes ``name`` from
    (``name`` itself when no such node produces it)."""
    for _ in range(17):
        node = producers.get(name)
        if node is None or node.op_type not in FOLDABLE_OPS or not is_standard(node) or not node.input:
            break
        name = node.input[0]
    return name


FOLD_HINT = ("fold the constants first (save ONNX Runtime's model optimized at level BASIC, or use onnxslim or "
             "onnxsim), then compress")


def is_constant_product(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto],
                        constants: Mapping[str, onnx.TensorProto]) -> bool:
    """Whether both operands of a Conv/Gemm/MatMul node (Q, K, V and any past keys and values of an ONNX
    ``Attention``) are constants or computed from constants alone: the node is part of a constant subgraph,
    which ONNX Runtime computes once when it loads the model (a weight parametrized as ``U @ V``, exported
    without constant folding), so it is no layer and runs no MACs."""
    attention = op_key(node) == ("", "Attention")
    needed = 3 if attention else 2
    operands = [name for name in (*node.input[:3], *node.input[4:6]) if name] if attention else \
        [name for name in node.input[:2] if name]
    return len(operands) >= needed and all(_reads_only_constants(name, producers, constants) for name in operands)


def _producer_reason(name: str, producers: Mapping[str, onnx.NodeProto],
                     constants: Mapping[str, onnx.TensorProto]) -> str:
    node = producers.get(name)
    if node is None:
        return ("weight is an input of its graph (a graph input, or a Loop/Scan body's state or scan input), not a "
                "constant")
    quantizer = node
    while quantizer is not None and quantizer.op_type in FOLDABLE_OPS and is_standard(quantizer) \
            and quantizer.input:  # through moves and casts
        quantizer = producers.get(quantizer.input[0])
    if quantizer is not None and quantizer.op_type in ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear") \
            and quantizer.input and _reads_only_constants(quantizer.input[0], producers, constants):
        return (f"quantized weight ({quantizer.op_type}{'' if quantizer is node else ' → ' + node.op_type}): "
                "factorizing would undo the quantization; compress the float model first, then quantize it")
    unfolded = _constant_subgraph_ops(name, producers, constants)
    dequantized = _hand_dequantized(name, producers, constants) if unfolded else None
    if dequantized is not None:  # (folding it, as the hint below says, would make the int8 weight float32)
        return (f"quantized weight ({dequantized}: a dequantization written out): factorizing would undo the "
                "quantization; compress the float model first, then quantize it")
    foreign = [op for op in unfolded if "::" in op]
    if foreign:
        return (f"weight is computed from constants by {', '.join(foreign)}, an op of another domain that onnx-alds "
                "cannot evaluate: left as it is")
    if unfolded:
        return (f"weight is computed from constants by {', '.join(unfolded)} nodes, which onnx-alds does not fold "
                f"(e.g. a weight norm): {FOLD_HINT}")
    reshaped = _constant_reshaped_at_run_time(name, producers, constants)
    if reshaped is not None:
        return (f"weight is a constant given its shape at run time ({reshaped.op_type} by a run-time value, e.g. a "
                "shape computed from the input): re-export with the weight's shape fixed, or fold the shapes first "
                "(onnxsim with fixed input shapes), then compress")
    return (f"weight is not a constant (computed at run time by a {node.op_type} node): a product of two run-time "
            "tensors (as attention's Q·Kᵀ) has no weight to factorize")


def _hand_dequantized(name: str, producers: Mapping[str, onnx.NodeProto],
                      constants: Mapping[str, onnx.TensorProto]) -> Optional[str]:
    """``"int8 → Cast → Mul"`` where ``name`` is an integer constant cast to float and scaled or shifted by
    constants (Mul, Div, Sub, Add of one computed operand; moves and casts between), as a dequantization
    written without DequantizeLinear reads; None otherwise."""
    ops: list[str] = []
    node = producers.get(name)
    for _ in range(17):
        if node is None or not node.input or not is_standard(node):
            return None
        if node.op_type == "Cast" and node.input[0] in constants:
            source = constants[node.input[0]]
            if source.data_type not in INTEGER_TYPES:
                return None
            return " → ".join([onnx.TensorProto.DataType.Name(source.data_type).lower(), "Cast", *reversed(ops)])
        if node.op_type in ("Mul", "Div", "Sub", "Add"):
            computed = [tensor for tensor in node.input if tensor not in constants]
            if len(computed) != 1:
                return None
            name = computed[0]
        elif node.op_type in FOLDABLE_OPS:
            name = node.input[0]
        else:
            return None
        ops.append(node.op_type)
        node = producers.get(name)
    return None


INTEGER_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
                           onnx.TensorProto.UINT16, onnx.TensorProto.INT4, onnx.TensorProto.UINT4})


RUN_TIME_SHAPE_OPS = ("Reshape", "Expand", "Tile", "Squeeze", "Unsqueeze", "Slice")  # data first, shape after


def _constant_reshaped_at_run_time(name: str, producers: Mapping[str, onnx.NodeProto],
                                   constants: Mapping[str, onnx.TensorProto]) -> Optional[onnx.NodeProto]:
    """The shape op (:data:`RUN_TIME_SHAPE_OPS`) on ``name``'s chain of data inputs (first inputs, through
    moves and casts) whose data is computed from constants alone while another of its inputs (a shape,
    axes, repeats) is not; None when there is none (an Add of a bias and a product is no weight)."""
    node = producers.get(name)
    for _ in range(17):
        if node is None or not node.input or not is_standard(node):
            return None
        if node.op_type in RUN_TIME_SHAPE_OPS and _reads_only_constants(node.input[0], producers, constants):
            others = [tensor for tensor in node.input[1:] if tensor]
            return node if others and not all(_reads_only_constants(t, producers, constants) for t in others) \
                else None
        if node.op_type not in FOLDABLE_OPS:
            return None
        node = producers.get(node.input[0])
    return None


def _reads_only_constants(name: str, producers: Mapping[str, onnx.NodeProto],
                          constants: Mapping[str, onnx.TensorProto]) -> bool:
    """Whether ``name`` is a constant or computed from constants alone (no graph input, no subgraph op)."""
    return _constant_walk(name, producers, constants) is not None


def _constant_subgraph_ops(name: str, producers: Mapping[str, onnx.NodeProto],
                           constants: Mapping[str, onnx.TensorProto]) -> list[str]:
    """The op types outside :data:`FOLDABLE_OPS` of the nodes that compute ``name`` when they read
    constants only (a constant subgraph); [] when anything it reads is computed from the graph inputs."""
    return _constant_walk(name, producers, constants) or []


def _constant_walk(name: str, producers: Mapping[str, onnx.NodeProto], constants: Mapping[str, onnx.TensorProto],
                   limit: int = 64) -> Optional[list[str]]:
    """The op types outside :data:`FOLDABLE_OPS` (another domain's as ``domain::Op``) of the nodes that
    compute ``name`` from constants alone, sorted; None when it reads a graph input, holds a subgraph op or
    takes more than ``limit`` tensors."""
    seen: set[str] = set()
    ops: list[str] = []
    pending = [name]
    while pending:
        tensor = pending.pop()
        if not tensor or tensor in constants or tensor in seen:
            continue
        seen.add(tensor)
        node = producers.get(tensor)
        if node is None or len(seen) > limit or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                    for a in node.attribute):
            return None
        op = node.op_type if is_standard(node) else f"{node.domain}::{node.op_type}"
        if op not in FOLDABLE_OPS and op not in ops:
            ops.append(op)
        pending.extend(node.input)
    return sorted(ops)


def stored_sources(name: str, producers: Mapping[str, onnx.NodeProto], constants: Mapping[str, onnx.TensorProto],
                   limit: int = 64) -> set[str]:
    """The constants that ``name`` is computed from (``name`` itself when it is one): what the file stores
    for it (an int8 weight and its scales behind DequantizeLinear; ``U`` and ``V`` of ``U @ V``)."""
    return {tensor for tensor in _walk_back(name, producers, stop=lambda tensor: tensor in constants, limit=limit)
            if tensor in constants}


def _stored_elements(name: str, producers: Mapping[str, onnx.NodeProto],
                     constants: Mapping[str, onnx.TensorProto]) -> int:
    """The elements of :func:`stored_sources`."""
    return sum(int(np.prod(constants[source].dims, dtype=np.int64))
               for source in stored_sources(name, producers, constants))


# the weight magnitudes the float64 arithmetic takes: Gram matrices sum squares of products, which overflow
# above the largest and underflow to zero below the smallest (float64's least normal is 2.2e-308)
LARGEST_WEIGHT = 1e100
SMALLEST_WEIGHT = 1e-100


def _value_problem(weight: np.ndarray) -> Optional[str]:
    """Why a weight's values cannot be factorized (NaN/Inf, or so large that its Gram matrix would
    overflow float64, or all so small, yet not all zero, that it would underflow to zero), else None."""
    values = weight.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)):
        return "weight holds NaN or Inf values"
    largest = float(np.abs(values).max()) if values.size else 0.0
    if largest > LARGEST_WEIGHT:
        return f"weight values up to {largest:.3g} are too large to factorize in float64 (their products overflow)"
    if 0.0 < largest < SMALLEST_WEIGHT:
        return (f"weight values are all below {largest:.3g} in magnitude: too small to factorize in float64 (their "
                "products underflow to zero)")
    return None


def _overflowing_cast(name: str, producers: Mapping[str, onnx.NodeProto],
                      constants: Mapping[str, onnx.TensorProto]) -> Optional[str]:
    """The reason for a weight whose stored values are finite and that a Cast on its way to the layer turns
    into Inf (float32 values above 65504 cast to float16), else None."""
    casts, tensor = [], name
    for _ in range(17):
        node = producers.get(tensor)
        if node is None or node.op_type not in FOLDABLE_OPS or not node.input:
            break
        if node.op_type == "Cast":
            casts.append(onnx.TensorProto.DataType.Name(_attr(node, "to", 0)))
        tensor = node.input[0]
    if not casts or tensor not in constants or not np.all(np.isfinite(constant_array(constants, tensor))):
        return None
    return (f"weight '{tensor}' is finite as stored but holds Inf after the graph's Cast to "
            f"{' then '.join(reversed(casts))} "
            "(values beyond the type's range): the layer computes with Inf weights; fix the export's casts")


def _describe(node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto], uses: Counter,
              shapes: Mapping[str, tuple[int, ...]], exclude: Sequence[str], max_groups: int,
              channel_multiple: int, producers: Mapping[str, onnx.NodeProto]) -> Optional[Layer]:
    slot = _weight_slot(node, constants, shapes)
    weight_name, input_name = node.input[slot], node.input[1 - slot]
    tensor = constants.get(weight_name)
    if node.op_type == "Gemm" and tensor is None and node.input[1] not in constants and (
            node.input[0] in constants or _reads_only_constants(node.input[0], producers, constants)):
        # y = W·x: the constant is A (stored, or computed from constants: a Transpose of one)
        first = constants.get(node.input[0])
        dims = tuple(int(d) for d in first.dims) if first is not None else tuple(shapes.get(node.input[0], ()))
        return Layer(name=node.name, op=node.op_type, input=node.input[1], output=node.output[0], weight=node.input[0],
                     weight_shape=dims, out_features=0, in_channels=0, kernel=1,
                     params=_stored_elements(node.input[0], producers, constants), positions=None, groups=(),
                     skip_reason="the constant is the Gemm's first input A (y = A·B): left as it is",
                     weight_type=first.data_type if first is not None else onnx.TensorProto.FLOAT)
    shape = tuple(int(d) for d in tensor.dims) if tensor is not None else tuple(shapes.get(weight_name, ()))
    reason: Optional[str] = None
    if tensor is None and not shape:  # computed by an op whose output shape nothing knows: say by what
        reason = _producer_reason(weight_name, producers, constants)
    f = c = kernel = 0
    if reason is None and node.op_type == "Conv":
        if len(shape) >= 3:
            f, c, kernel = shape[0], shape[1], int(np.prod(shape[2:]))
        group = int(_attr(node, "group", 1))
        kernel_shape = _attr(node, "kernel_shape", None)
        in_shape = shapes.get(input_name)
        if len(shape) < 3 or (kernel_shape is not None and tuple(kernel_shape) != tuple(shape[2:])):
            reason = f"inconsistent Conv: kernel_shape {kernel_shape} does not match the weight {shape}"
        elif in_shape is not None and len(in_shape) != len(shape):
            reason = f"inconsistent Conv: a {len(in_shape)}-D input with a {len(shape)}-D weight"
        elif len(node.input) > 2 and node.input[2] in constants and \
                tuple(constants[node.input[2]].dims) != (shape[0],):
            reason = f"inconsistent Conv: bias of shape {tuple(constants[node.input[2]].dims)} for {shape[0]} outputs"
        elif group != 1:
            reason = ("depthwise conv" if c == 1 and group > 1 else f"grouped conv (group={group})") + \
                     " is left as it is"
    elif reason is None and node.op_type == "Gemm":
        if len(shape) == 2:
            f, c = (shape[0], shape[1]) if _attr(node, "transB", 0) else (shape[1], shape[0])
        kernel = 1
    elif reason is None:  # MatMul: y = x @ B with B of shape (c, f); weight first: y = W @ x with W of shape (f, c)
        if tensor is not None and len(shape) != 2:
            reason = f"weight is not a 2-D matrix (shape {shape})"
        elif len(shape) == 2:
            f, c = shape if slot == 0 else shape[::-1]
        kernel = 1
    if tensor is None:  # (a product of two activations, as attention's, is listed whether or not shapes are known)
        reason = reason or _producer_reason(weight_name, producers, constants)
    elif reason is None and 0 in shape:
        reason = f"empty weight (shape {'x'.join(map(str, shape))}): nothing to factorize"
    elif reason is None and tensor.data_type not in FLOAT_TYPES:
        reason = f"weight type {onnx.TensorProto.DataType.Name(tensor.data_type)} is not float"
    elif reason is None and (shared := _shared_uses(weight_name, uses, producers)) > 1:
        reason = f"weight is shared by {shared} uses" + (
            "" if uses[weight_name] > 1 else " (through Identity/Cast/Transpose/Reshape nodes)")
    elif reason is None:
        reason = _value_problem(constant_array(constants, weight_name))
        if reason and "NaN or Inf" in reason:
            reason = _overflowing_cast(weight_name, producers, constants) or reason
    # a depthwise/grouped conv is never factorized, but its exclusion still keeps it out of pruned blocks
    stored = chain_source(weight_name, producers)  # the initializer behind Transpose/Reshape/Cast ... (as saved)
    if (reason is None or reason.endswith("is left as it is")) and \
            any(fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(weight_name, p)
                or fnmatch.fnmatchcase(stored, p) for p in exclude):
        reason = "excluded by the user (--exclude)"
    groups: tuple[int, ...] = ()
    in_shape, out_shape = shapes.get(input_name), shapes.get(node.output[0])
    pointwise_ok = (node.op_type == "Conv" and kernel > 1 and reason is None
                    and all(s == 1 for s in _attr(node, "strides", [1]))
                    and (tuple(in_shape[2:]) == tuple(out_shape[2:]) if in_shape is not None and out_shape is not None
                         and len(in_shape) == len(out_shape) else _keeps_spatial_size(node, shape)))
    if reason is None and f and c:
        groups = candidate_groups(c, f, kernel, max_groups if node.op_type == "Conv" else 1,
                                  channel_multiple=channel_multiple)
        if not groups:
            reason = f"factorization would not shrink it ({f}x{c * kernel} weight)"
    # weights: the constant's elements (a batched 3-D one included), or where constants compute it (an int8
    # weight behind DequantizeLinear, a weight norm, U @ V) those the file stores for it; an operand computed
    # at run time has none
    if tensor is not None:
        params = f * c * kernel if f and c else int(np.prod(shape, dtype=np.int64))
    else:
        params = _stored_elements(weight_name, producers, constants) \
            if _reads_only_constants(weight_name, producers, constants) else 0
    return Layer(
        name=node.name, op=node.op_type, input=input_name, output=node.output[0], weight=weight_name,
        weight_shape=shape, out_features=f, in_channels=c, kernel=kernel, params=params,
        positions=_positions(node.op_type, shapes.get(node.output[0]), f, weight_first=slot == 0),
        groups=groups, skip_reason=reason, pointwise_first_ok=pointwise_ok, weight_first=slot == 0,
        output_rank=len(shapes[node.output[0]]) if node.output[0] in shapes else None,
        weight_type=tensor.data_type if tensor is not None else onnx.TensorProto.FLOAT,
        stored_transposed=(node.op_type == "MatMul" and slot == 1)
        or (node.op_type == "Gemm" and not _attr(node, "transB", 0)),
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
    weight = constant_array(constants, layer.weight).astype(np.float64)
    if layer.order == POINTWISE_FIRST and not patch:
        return pointwise_matrix(weight)
    if layer.stored_transposed:
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def constant_array(constants: Mapping[str, onnx.TensorProto], name: str) -> np.ndarray:
    """The value of constant ``name``; read on demand when ``constants`` can (a light model's weights,
    :class:`StoredConstants`), one tensor at a time."""
    read = getattr(constants, "array", None)
    return read(name) if read is not None else numpy_helper.to_array(constants[name])


class StoredConstants(dict):
    """Constants by name (as :func:`weight_constants` returns them) whose stubs are read through ``store``
    (:class:`onnx_alds.model_io.TensorStore`): ``constants[name]`` gives the tensor's name, type and
    dims, :meth:`array` its value."""

    def __init__(self, tensors: Mapping[str, onnx.TensorProto], store) -> None:
        super().__init__(tensors)
        self.store = store

    def array(self, name: str) -> np.ndarray:
        return self.store.array(self[name])


def iter_total_params(model: onnx.ModelProto) -> Iterator[int]:
    """Element counts of every numeric constant the model file holds (initializers and Constant nodes of
    the main graph, of every subgraph and of model-local functions not inlined; a name stored in two
    subgraphs counts twice)."""
    bodies = [graph.node for _, graph in iter_graphs(model.graph)]
    for function in model.functions:  # (their subgraphs, via a stand-in graph)
        bodies += [graph.node for _, graph in iter_graphs(onnx.helper.make_graph(function.node, "f", [], []))]
    for _, graph in iter_graphs(model.graph):
        for init in graph.initializer:
            yield int(np.prod(init.dims)) if init.dims else 1
    for nodes in bodies:
        for node in nodes:
            tensor = constant_node_value(node) if node.op_type == "Constant" else None
            if tensor is not None:
                yield int(np.prod(tensor.dims)) if tensor.dims else 1
