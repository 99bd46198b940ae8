"""The Python API: ``analyze`` and ``compress``, composing the pipeline steps.

``load → layers → spectra → error tables → allocate → rewrite → (save)``; each step is a module of
its own. ``compress`` returns the new model with its report and never writes files: the CLI does.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import math
import numbers
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx

from . import __version__
from .argtypes import check_count
from .allocate import DENSE, Allocation, LayerChoice, allocate_lrank, allocate_minmax, minimum_cost
from .data_aware import (data_aware_rewrite, layer_moment, layer_sensitivities, sample_count, scaled_table,
                         whitening_factors)
from .decompose import GroupedFactors, decompose
from .errors import (BudgetError, InputDataError, UnknownOptionError, UnsupportedModelError,
                     ratio_at_least)
from .layers import (ALSO_READ_BY, COUNTED_OPS, ORDERS, POINTWISE_FIRST, SPATIAL_FIRST, Layer, StoredConstants,
                     chain_source, check_exclude_patterns, drop_dead_nodes, element_bits, ensure_node_names,
                     find_layers,
                     fold_weight_shapes, folded_weight, in_topological_order, is_constant_product,
                     is_counted_node, is_layer_node, is_standard, iter_graphs, iter_total_params,
                     literal_where_named, macs_tensors, node_macs, op_key, sort_nodes, stored_sources,
                     unchanged_ops_note, uncounted_compute_ops, weight_constants, widened_weights, with_order)
from .checks import (InputCheck, batch_coupling_nodes, check_input_model, check_output_model, random_nodes,
                     random_output_change)
from .model_io import (GRAPH_DIGEST_KEY, ModelLike, OpenedModel, TensorStore, graph_digest, graph_inputs, materialize,
                       open_model, refuse_over_protobuf_limit, resolve_input_shapes, show_input_shapes)
from .inputs import calibration_as_fitted, check_sample_dims, dominant_sample_warning
from .options import (AUTO_ORDER, METHODS as _METHODS, CompressOptions, compress_options, refuse_without_effect,
                      refuses_group_and_keyword, with_pruning)
from .report import AnalysisReport, CompressionReport, LayerAnalysis, LayerReport
from .rewrite import (REPLACED_DIGEST_KEY, Rewrite, add_provenance, kept_biases, replaced_digest, rewrite_model,
                      shift_added_weights, shift_folds_into_bias)
from .shapes import tensor_shapes
from .spectra import ERROR_MEASURES, ErrorTable, error_table, layer_spectra

log = logging.getLogger(__name__)

METHODS = _METHODS  # defined with the option groups (onnx_alds.options)
DATA_AWARE_ERROR_MEASURE = "frobenius"  # the default error measure with calibration data (measured)


@dataclass(frozen=True)
class CompressionResult:
    """The compressed model and what was done to it.

    ``store`` is None (``model`` is complete) unless ``compress`` was given an
    :class:`onnx_alds.model_io.OpenedModel`: then ``model`` is light, its dense weights still stubs
    read through ``store``; ``save_model(result.model, path, store=result.store)`` writes it tensor
    by tensor, ``materialize(result.model, result.store)`` completes it in memory.
    """

    model: onnx.ModelProto
    report: CompressionReport
    store: Optional[TensorStore] = None


@dataclass(frozen=True)
class _Prepared:
    model: onnx.ModelProto
    layers: list[Layer]
    params_total: int
    macs_total: Optional[int]
    notes: list[str]
    constants: Mapping[str, onnx.TensorProto]  # weights by name, folded Identity/Cast chains included
    original: onnx.ModelProto  # the model as loaded, before functions were inlined
    input_check: InputCheck  # what the up-front check found (ONNX Runtime facts for the output check)
    store: Optional[TensorStore] = None  # where the light model's large weights are read from
    unchanged_ops: str = ""  # quantized or ONNX Runtime-fused layers, left as they are (layers.unchanged_ops_note)
    random_nodes: tuple[str, ...] = ()  # nodes whose outputs are random at run time (checks.random_nodes)
    # the name given to each unnamed or repeated node -> its own (written back by restore_node_names)
    generated_names: Mapping[str, str] = field(default_factory=dict)
    dead: tuple[str, ...] = ()  # nodes removed as reaching no graph output (layers.drop_dead_nodes)
    dims_read: frozenset = frozenset()  # weights whose dims a Shape/Size node read (layers.fold_weight_shapes)
    warnings: list[str] = field(default_factory=list)  # about the inputs given (one calibration sample dominating)

    def with_checked_calibration(self, options: CompressOptions) -> CompressOptions:
        """``options`` with its calibration inputs checked against the model and cast to its input types
        (:func:`onnx_alds.inputs.conform_inputs`); refused for a model whose outputs are random."""
        self.refuse_random_for_calibration()
        refuse_over_protobuf_limit(OpenedModel(self.model, self.store), "data-aware compression runs it in ONNX "
                                   "Runtime with extra outputs, which needs it serialized whole",
                                   fix="compress it data-free (without calibration)")
        calibration = calibration_as_fitted(self.model, options.data.calibration)
        given = {name: dims for name, dims in (options.input_shapes or {}).items() if name in calibration.arrays}
        check_sample_dims(calibration, given, "the calibration arrays are",
                          "give calibration inputs of that size, or other input_shapes")
        from .calibrate import check_sample_axis

        note = check_sample_axis(self.model, calibration, options.data.batch_size, store=self.store)
        if note and note not in self.notes:
            self.notes.append(note)
        coupling = batch_coupling_nodes(self.model)
        if coupling and len(calibration) > options.data.batch_size:  # (coupled too little for check_sample_axis)
            self.notes.append(f"node {coupling[0]}, so each sample's values depend on the others in its calibration "
                              f"run (runs of {options.data.batch_size}, of {len(calibration)} samples): give all the "
                              f"samples in one run (--calibration-batch-size {len(calibration)})"
                              + (", or calibrate the model from before its quantization"
                                 if "quantization" in coupling[0] else ""))
        dominant = dominant_sample_warning(calibration)
        if dominant and dominant not in self.warnings:
            self.warnings.append(dominant)
        return replace(options, data=replace(options.data, calibration=calibration))

    def check_keep_dense(self, keep_dense: Mapping[str, str]) -> None:
        """Every name in ``keep_dense`` must be a Conv/Gemm/MatMul node of the model (or one of the nodes
        dropped as reaching no output): a misspelt one would leave the layer the user meant to keep
        factorized. Raises :class:`InputDataError`."""
        names = {layer.name for layer in self.layers}
        unknown = sorted(name for name in keep_dense if name not in names and name not in self.dead)
        if unknown:
            raise InputDataError(f"keep_dense names '{unknown[0]}', which is no Conv/Gemm/MatMul node of the model; "
                                 f"check the name (layers: {', '.join(repr(n) for n in sorted(names)[:5])}"
                                 f"{', ...' if len(names) > 5 else ''})")

    def refuse_random_for_calibration(self) -> None:
        """Calibration statistics of a model whose outputs are random would fit the factors to noise (and
        ``--sequential`` to two different draws): an InputDataError naming the first random node."""
        if self.random_nodes:
            raise InputDataError(
                f"the model's outputs are random at run time ({len(self.random_nodes)} nodes, first: "
                f"{self.random_nodes[0]}): calibration would measure noise; export it in inference mode "
                "(model.eval(), torch.onnx.export(..., training=TrainingMode.EVAL)) or compress it data-free")


def _progress(items: Sequence, description: str, unit: str = "layer"):
    """A tqdm progress bar on a terminal, the plain sequence otherwise."""
    if not sys.stderr.isatty() or len(items) < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit=unit, leave=False)


def _calibration_shapes(model: onnx.ModelProto, given: Optional[Mapping[str, Sequence[int]]],
                        hints: Optional[Mapping[str, Sequence[int]]]) -> dict[str, tuple[int, ...]]:
    """The ``hints`` (one calibration sample's dims, batch 1) for the inputs ``given`` leaves out whose
    declared dims after the first are dynamic and of the hint's rank; a first dim the model fixes stays its own
    (fed whole: ``[3, N, 64]`` is no batch of samples)."""
    chosen = {}
    for spec in graph_inputs(model):
        hint = (hints or {}).get(spec.name)
        if hint is None or spec.name in (given or {}) or len(hint) != len(spec.dims) or \
                all(isinstance(d, int) for d in spec.dims[1:]):
            continue
        if all(not isinstance(d, int) or d == h for d, h in zip(spec.dims[1:], hint[1:])):
            first = spec.dims[0] if spec.dims and isinstance(spec.dims[0], int) and spec.dims[0] > 0 else hint[0]
            chosen[spec.name] = (int(first), *(int(d) for d in hint[1:]))
    return chosen


def _value_sized_macs_note(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto]) -> list[str]:
    """A note when layers' input sizes depend on the values of the inputs (tokens routed to experts by TopK and
    NonZero, a sequence cut to the length of a mask): their MACs are those of one run on probe inputs."""
    from .checks import value_sized_tensors

    sized = value_sized_tensors(model, from_inputs=True)
    hit = [(node, sized[name]) for node in nodes for name in macs_tensors(node) if name in sized]
    if not hit:
        return []
    node, why = hit[0]
    count = len({id(node) for node, _ in hit})
    return [f"the MACs of {count} layer(s) (first: '{node.name}') depend on the values of the inputs (their input's "
            f"size follows a {why}): counted on one run on probe inputs (zeros, masks of ones), they and a "
            "--keep-flops budget hold for such inputs, not for every input"]


def calibration_shape_hints(calibration: Any) -> dict[str, tuple[int, ...]]:
    """One sample's dims of each calibration array (``(1, *dims)``), which size the dynamic dims no
    ``--input-shape`` gives where MACs are counted; empty without arrays."""
    arrays = getattr(calibration, "arrays", None) or {}
    return {name: (1, *np.shape(array)[1:]) for name, array in arrays.items()}


def _prepare(model: ModelLike, *, input_shapes: Optional[Mapping[str, Sequence[int]]], exclude: Sequence[str],
             max_groups: int, need_macs: bool, channel_multiple: int = 1, complete: bool = False,
             shape_hints: Optional[Mapping[str, Sequence[int]]] = None) -> _Prepared:
    """The light model (:func:`onnx_alds.model_io.open_model`: large weights stay where they are and
    are read one at a time), checked, with its layers; ``complete``: every weight loaded in memory
    (the data-aware steps run the model in ONNX Runtime); ``shape_hints``: one sample's dims of each input as
    the calibration arrays give them, which size the dynamic dims ``input_shapes`` leaves open where MACs are
    needed (said in a note)."""
    opened = open_model(model)
    original, store = opened.model, opened.store
    try:
        probe_shapes = resolve_input_shapes(original, input_shapes, batch_default=1)[0]
    except UnsupportedModelError:  # dynamic dims without --input-shape: the probe sets them to 1 and says so
        probe_shapes = dict(input_shapes or {})
    reordered = not in_topological_order(original)
    if reordered:
        if isinstance(model, OpenedModel):  # the caller's own: sorted on a copy
            scratch = onnx.ModelProto()
            scratch.CopyFrom(original)
            original = scratch
        sort_nodes(original)
    input_check = check_input_model(original, store, probe_shapes,
                                    sample_shapes=_calibration_shapes(original, input_shapes, shape_hints))
    notes: list[str] = list(input_check.notes)
    if reordered:
        notes.append("the main graph's nodes were not in topological order: sorted on onnx-alds's copy, as the ONNX "
                     "spec requires (ONNX Runtime sorts a main graph itself; its float16 converter writes input casts "
                     "after their readers)")
    proto = _inline_functions(original, notes)
    if proto is original and isinstance(model, OpenedModel):  # the caller's own: named and loaded on a copy
        proto = onnx.ModelProto()
        proto.CopyFrom(original)
    if complete:
        materialize(proto, store)
    generated = ensure_node_names(proto)  # layers, plans and reports need every node named: undone when written
    check_exclude_patterns(proto, exclude)  # (a pattern may name a node about to go as dead)
    literal = literal_where_named(proto, exclude)  # a node renamed for a repeated name is still the user's node
    exclude = tuple(exclude) + tuple(glob.escape(given) for given, own in generated.items()
                                     if own and any(fnmatch.fnmatchcase(own, pattern) for pattern in literal))
    shaped = fold_weight_shapes(proto)
    if shaped:
        notes.append(f"{len(shaped)} Shape/Size nodes read a weight's dims only (first: '{next(iter(shaped))}'): "
                     "replaced by constants, so that weight is not counted as shared")
    dead, dead_weights = drop_dead_nodes(proto)
    if dead:
        notes.append(f"{len(dead)} nodes reach no graph output (first: '{dead[0]}'; {dead_weights} weights): left "
                     "out of the totals and of the written model")
        exclude = [pattern for pattern in exclude if _matches_a_layer(proto, pattern)]
    shapes: dict[str, tuple[int, ...]] = {}
    run_errors: list[str] = []  # why an ONNX Runtime run at the resolved sizes failed, if it did
    from_calibration = False
    try:
        try:
            resolved, shape_notes = resolve_input_shapes(proto, input_shapes, batch_default=1)
        except UnsupportedModelError:
            hinted = _calibration_shapes(proto, input_shapes, shape_hints)
            if not hinted:
                raise
            resolved, shape_notes = resolve_input_shapes(proto, {**hinted, **(input_shapes or {})}, batch_default=1,
                                                         empty=set(hinted))  # (a KV cache's past of length 0)
            from_calibration = True
            shape_notes = list(shape_notes) + [
                f"MACs counted at the calibration arrays' sizes ({show_input_shapes(hinted, ' ')}): the model's "
                "dims there are dynamic; give --input-shape to count them at other sizes"]
        notes += shape_notes
    except UnsupportedModelError as exc:
        if need_macs:
            raise
        resolved = None
        notes.append(f"MACs not counted: {exc}")  # names the input still dynamic and the --input-shape to give
    layer_ops = [n for _, graph in iter_graphs(proto.graph) for n in graph.node if is_counted_node(n)]
    if resolved is not None:
        needed = {name for node in layer_ops for name in macs_tensors(node)}
        shapes = tensor_shapes(proto, resolved, needed, store, run_errors)
        notes += _value_sized_macs_note(proto, layer_ops)
    constants, folded = weight_constants(proto, load=store.load)
    constants = StoredConstants(constants, store)
    layers = find_layers(proto, shapes, exclude=exclude, max_groups=max_groups, channel_multiple=channel_multiple,
                         constants=constants)
    usable = {layer.weight for layer in layers if layer.compressible}  # (a shared or excluded one stays as it is)
    folded = {name: chain for name, chain in folded.items() if name in usable}
    if folded:
        notes.append(f"{len(folded)} weights reach their layer through constant ops, folded for factorization "
                     f"({', '.join(sorted(set(folded.values())))}; first: '{sorted(folded)[0]}')")
    inside = [layer for layer in layers if layer.subgraph]
    if inside:
        notes.append(f"{len(inside)} Conv/Gemm/MatMul nodes sit inside If/Loop/Scan subgraphs (first: "
                     f"'{inside[0].name}' in {inside[0].subgraph}); their MACs count once per node")
    transposed = [node for node in layer_ops if node.op_type == "ConvTranspose"]
    if transposed:
        notes.append(f"{len(transposed)} ConvTranspose nodes (first: '{transposed[0].name}') are left as they are; "
                     "their MACs count in the total")
    unchanged = unchanged_ops_note(proto)
    if unchanged:
        notes.append(f"left as they are (their MACs count in the total where known): {unchanged}")
    all_einsums = [node for _, graph in iter_graphs(proto.graph) for node in graph.node if node.op_type == "Einsum"]
    einsums = [node for node in all_einsums if any(name in constants for name in node.input)]
    if einsums:
        notes.append(f"{len(einsums)} {EINSUM_NOTE} (first: '{einsums[0].name}') are left as "
                     "they are (Einsum is not factorized): their weights count in the totals, their MACs do not")
    products = [node for node in all_einsums if not any(name in constants for name in node.input)]
    if products:  # (attention written with torch.einsum; exported as MatMul, the same product counts)
        notes.append(f"{len(products)} Einsum nodes between run-time tensors (first: '{products[0].name}') are left "
                     "as they are: their MACs do not count in the total (MACs are those of Conv, ConvTranspose, "
                     "Gemm, MatMul and Attention)")
    recurrent = [node for _, graph in iter_graphs(proto.graph) for node in graph.node
                 if node.op_type in ("LSTM", "GRU", "RNN")]
    if recurrent:
        notes.append(f"{len(recurrent)} recurrent nodes (LSTM/GRU/RNN; first: '{recurrent[0].name}') are left as they "
                     "are: their weights count in the totals, their MACs do not (MACs are those of Conv, "
                     "ConvTranspose, Gemm, MatMul and Attention)")
    uncounted = uncounted_compute_ops(proto)
    if uncounted:
        one = sum(uncounted.values()) == 1
        notes.append(f"{', '.join(f'{op} ×{count}' for op, count in sorted(uncounted.items()))} (ONNX Runtime "
                     f"op{'' if one else 's'} whose products onnx-alds does not size) {'is' if one else 'are'} left "
                     f"as {'it is' if one else 'they are'}: {'its' if one else 'their'} weights count in the totals, "
                     f"{'its' if one else 'their'} MACs do not")
    macs_total: Optional[int] = None
    if resolved is not None:
        producers = {out: node for _, graph in iter_graphs(proto.graph) for node in graph.node for out in node.output}
        per_node = [0 if is_constant_product(node, producers, constants) else node_macs(node, shapes)
                    for node in layer_ops]  # (a product of constants runs once, when ONNX Runtime loads the model)
        unsized = [macs is None and COUNTED_OPS[op_key(node)][0] in ("scaled-dot-product", "attention-heads")
                   for node, macs in zip(layer_ops, per_node)]
        attention = [node for node, left_out in zip(layer_ops, unsized) if left_out]
        if attention:  # (attention over run-time tensors: no weight, nothing to factorize: its MACs are left out,
            # said, not refused)
            per_node = [0 if left_out else macs for macs, left_out in zip(per_node, unsized)]
            ops = "/".join(sorted({node.op_type for node in attention}))
            notes.append(f"shape inference cannot tell the shapes of {len(attention)} {ops} node"
                         f"{'s' if len(attention) > 1 else ''} (first: '{attention[0].name or attention[0].output[0]}')"
                         ": their MACs are not counted in the total")
        unknown = [node for node, macs in zip(layer_ops, per_node) if macs is None]
        if unknown:
            message = _unsized_message(proto, unknown, need_macs, run_errors[:1], resolved, from_calibration)
            if need_macs:
                raise UnsupportedModelError(message)
            notes.append(message)
        else:
            macs_total = int(sum(per_node))
    renamed = [layer.name for layer in layers if layer.name in generated]
    if renamed:  # the report and plans need a name for each; the written model keeps the node's own
        notes.append(f"{len(renamed)} Conv/Gemm/MatMul nodes have no name of their own (or a repeated one; first: "
                     f"'{renamed[0]}'): the report and plans call them <op>_<position in the graph>, or "
                     "<name>_<k>; the written model keeps their own (empty or repeated) names")
    randoms = tuple(random_nodes(proto))
    if randoms:
        notes.append(f"{len(randoms)} nodes draw random values at run time (first: {randoms[0]}; ONNX Runtime's "
                     "graph optimizations may drop them, other runtimes will not): export the model in inference mode")
    return _Prepared(proto, layers, int(sum(iter_total_params(proto))), macs_total, notes, constants, original,
                     input_check, store, unchanged, randoms, MappingProxyType(generated), tuple(dead),
                     frozenset(shaped.values()))


STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training")


def _inline_functions(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """The model with its model-local functions inlined (onnx's inliner) when any of them holds a
    Conv/Gemm/MatMul, so those layers can be found and factorized; else the model itself."""
    local = {(function.domain, function.name) for function in model.functions}
    holds_layers = any(is_layer_node(node) for function in model.functions for node in _nodes_within(function.node))
    if not local or not holds_layers:
        return model
    from onnx import inliner

    given = model
    reachable = _called_functions(given)
    _refuse_what_the_inliner_misreads(given, reachable)
    model = _with_default_attributes(model)  # (onnx's inliner drops a function attribute's default: pads lost)
    model = _with_unchanged_function_opsets(model)
    model, doc_strings = _marked_function_constants(model)
    try:  # convert_version: a function importing another ai.onnx opset than the model's is converted, not skipped
        try:
            inlined = inliner.inline_local_functions(model, convert_version=True)
        except Exception:  # converting needs the type of every call's input and output: state the initializers'
            typed = _hoist_subgraph_types(onnx.shape_inference.infer_shapes(_with_initializer_types(model)))
            inlined = _without_added_value_info(  # (and infer the rest, on a copy), then drop what was added
                inliner.inline_local_functions(typed, convert_version=True), model)
    except Exception as exc:
        raise UnsupportedModelError(f"cannot inline the model's local functions ({str(exc).splitlines()[0][:160]}); "
                                    "export the model without functions (e.g. torch.onnx.export(..., dynamo=False))")
    _drop_repeated_constants(inlined)
    uncalled = [function for function in given.functions if (function.domain, function.name) not in reachable]
    kept = [f for f in inlined.functions if (f.domain, f.name) in reachable]  # (what the inliner left: refused below)
    del inlined.functions[:]
    inlined.functions.extend(kept + uncalled)  # those nothing calls, with the functions only they call: as given
    called = {(node.domain, node.op_type) for _, graph in iter_graphs(inlined.graph) for node in graph.node}
    left = [f for f in inlined.functions
            if (f.domain, f.name) in called and any(map(is_layer_node, _nodes_within(f.node)))]
    if left:
        raise UnsupportedModelError(f"onnx's inliner left the model-local function '{left[0].domain}::{left[0].name}'"
                                    ", which holds a Conv/Gemm/MatMul, in place; export the model without functions "
                                    "(e.g. torch.onnx.export(..., dynamo=False))")
    notes.append(f"inlined the calls of {len(reachable)} model-local functions so that their "
                 "layers can be factorized" + (f" ({len(uncalled)} that nothing calls are kept as they are)"
                                               if uncalled else "")
                 + "; their layers are named as the inliner leaves them (a named node: its name in the function "
                 "with a call number appended, e.g. MatMul_12__3), not by the call's path")
    shared = _share_inlined_constants(model, inlined)
    for _, graph in iter_graphs(inlined.graph):  # the markers go, the doc strings the file had come back
        for node in graph.node:
            if node.doc_string in doc_strings:
                node.doc_string = doc_strings[node.doc_string]
    if shared:
        notes.append(f"{shared} constants of functions called more than once are stored once, as in the file (a layer "
                     "reading one counts as sharing its weight)")
    return inlined


def _with_unchanged_function_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each local function that imports another ai.onnx opset than the model's relabeled to the
    model's where every ai.onnx op of its body has the same definition in both (``onnx.defs``: the same
    ``since_version``): inlined, its nodes then mean what they meant, and the inliner has nothing to convert
    (its conversion needs every value's type, which nested functions' bodies do not state). Functions whose
    ops did change keep their opset, for the inliner to convert."""
    model_opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    if model_opset is None:
        return model

    def schema_version(op: str, opset: int) -> Optional[int]:
        try:
            return onnx.defs.get_schema(op, opset, "").since_version
        except Exception:  # noqa: BLE001 - not an ai.onnx op at that opset: leave the function as it is
            return None

    relabeled = None
    for index, function in enumerate(model.functions):
        own = [entry for entry in function.opset_import if entry.domain in ("", "ai.onnx")]
        if len(own) != 1 or own[0].version == model_opset:
            continue
        ops = {node.op_type for node in _nodes_within(function.node) if node.domain in ("", "ai.onnx")}
        if all((since := schema_version(op, own[0].version)) is not None and since == schema_version(op, model_opset)
               for op in ops):
            if relabeled is None:
                relabeled = onnx.ModelProto()
                relabeled.CopyFrom(model)
            next(entry for entry in relabeled.functions[index].opset_import
                 if entry.domain in ("", "ai.onnx")).version = model_opset
    return model if relabeled is None else relabeled


def _called_functions(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """The ``(domain, name)`` of every local function the graph calls, directly or through other functions."""
    by_key = {(function.domain, function.name): function for function in model.functions}
    reachable: set[tuple[str, str]] = set()
    pending = [(node.domain, node.op_type) for node in _nodes_within(model.graph.node)]
    while pending:
        key = pending.pop()
        if key in by_key and key not in reachable:
            reachable.add(key)
            pending += [(node.domain, node.op_type) for node in _nodes_within(by_key[key].node)]
    return reachable


def _refuse_what_the_inliner_misreads(model: onnx.ModelProto, reachable: set[tuple[str, str]]) -> None:
    """Raise :class:`UnsupportedModelError` for the called (``reachable``) local functions whose inlining onnx's
    inliner (or the counting of what the file stores) gets wrong: overloads (IR 10: the calls of one name are
    told apart by ``overload``, and defaults were taken from the wrong one), a layer reading a tensor attribute
    (each call's weight: one attribute read twice was counted twice, equal ones of two calls once), and an
    attribute forwarded without a default to a call whose function gives it one, by a function that some call
    leaves it out of (the inliner drops the attribute, and the inner default with it: a Conv lost its pads)."""
    fix = "export the model without functions (e.g. torch.onnx.export(..., dynamo=False))"
    called = [f for f in model.functions if (f.domain, f.name) in reachable]
    overloaded = next((f for f in called if f.overload), None)
    if overloaded is not None:
        raise UnsupportedModelError(f"the model-local function '{overloaded.domain}::{overloaded.name}' has overloads "
                                    f"('{overloaded.overload}'), which onnx-alds cannot inline faithfully; {fix}")
    defaults = {(f.domain, f.name): {a.name for a in f.attribute_proto} for f in model.functions}
    absent = _possibly_absent_attributes(model, called, defaults)
    for function in called:
        nodes = list(_nodes_within(function.node))
        for node in nodes:
            for attribute in node.attribute:
                if not attribute.ref_attr_name:
                    continue
                if node.op_type == "Constant" and is_standard(node) and attribute.type in (
                        onnx.AttributeProto.TENSOR, onnx.AttributeProto.SPARSE_TENSOR) \
                        and _feeds_a_layer(node.output[0], nodes):
                    raise UnsupportedModelError(
                        f"the model-local function '{function.domain}::{function.name}' takes a weight as a tensor "
                        f"attribute ('{attribute.ref_attr_name}'), which onnx-alds cannot count as the file stores "
                        f"it; {fix}")
                if attribute.name in defaults.get((node.domain, node.op_type), ()) and \
                        attribute.ref_attr_name in absent[(function.domain, function.name)]:  # (absent: no default)
                    raise UnsupportedModelError(
                        f"the model-local function '{function.domain}::{function.name}' forwards its attribute "
                        f"'{attribute.ref_attr_name}' to '{node.op_type}', whose default for '{attribute.name}' onnx's "
                        f"inliner drops when a call leaves it out; give '{function.name}' the same default, set it at "
                        f"every call, or {fix}")


def _possibly_absent_attributes(model: onnx.ModelProto, called: Sequence[onnx.FunctionProto],
                                defaults: Mapping[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[str]]:
    """Per called function, its attributes without a default that some call may leave out: a call that does
    not set it, or sets it by reference to an attribute of its own function that may be absent in turn
    (H(r) -> F(p=@r) -> G(q=@p): a call of H without r leaves q out)."""
    absent: dict[tuple[str, str], set[str]] = {(f.domain, f.name): set() for f in called}
    sites = [(None, node) for node in _nodes_within(model.graph.node)] + [
        ((f.domain, f.name), node) for f in called for node in _nodes_within(f.node)]
    names = {(f.domain, f.name): list(f.attribute) + [a.name for a in f.attribute_proto] for f in called}
    grew = True
    while grew:
        grew = False
        for where, call in sites:
            key = (call.domain, call.op_type)
            if key not in absent:
                continue
            given = {a.name: a for a in call.attribute}
            for name in names[key]:
                if name in defaults.get(key, ()) or name in absent[key]:
                    continue
                attribute = given.get(name)
                if attribute is None or (attribute.ref_attr_name and where is not None
                                         and attribute.ref_attr_name in absent[where]):
                    absent[key].add(name)
                    grew = True
    return absent


def _feeds_a_layer(name: str, nodes: Sequence[onnx.NodeProto]) -> bool:
    """Whether a Conv/Gemm/MatMul among ``nodes`` reads ``name`` or a tensor computed from it."""
    reached, grew = {name}, True
    while grew:
        grew = False
        for node in nodes:
            if any(tensor in reached for tensor in node.input):
                if is_layer_node(node):
                    return True
                new = set(node.output) - reached
                reached |= new
                grew = grew or bool(new)
    return False


def _nodes_within(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """``nodes`` and every node of their If/Loop/Scan bodies, at any depth."""
    for node in nodes:
        yield node
        for attribute in node.attribute:
            for body in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                yield from _nodes_within(body.node)


def _with_default_attributes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose calls of its local functions set every attribute that the function gives a
    default (``attribute_proto``) and the call leaves out: onnx's inliner drops those defaults (a Conv whose
    ``pads`` came from one lost its padding)."""
    defaults = {(function.domain, function.name): list(function.attribute_proto) for function in model.functions}
    if not any(defaults.values()):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    bodies = list(_nodes_within(copy.graph.node)) + [node for function in copy.functions
                                                       for node in _nodes_within(function.node)]
    for node in bodies:
        given = {attribute.name for attribute in node.attribute}
        node.attribute.extend(default for default in defaults.get((node.domain, node.op_type), ())
                              if default.name not in given)
    return copy


_SOURCE_MARK = "onnx-alds: function constant "


def _marked_function_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` whose functions' Constant nodes carry a doc string naming them (the inliner copies
    it to each call's copy, so that :func:`_share_inlined_constants` merges copies of one node, never two
    constants that only hold equal values), and the doc strings they had, by mark."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    doc_strings = {}
    for function in copy.functions:
        for index, node in enumerate(_nodes_within(function.node)):
            if node.op_type == "Constant" and is_standard(node) and not any(a.ref_attr_name for a in node.attribute):
                mark = f"{_SOURCE_MARK}{function.domain}::{function.name}#{index}"  # (a call's attribute: its own)
                doc_strings[mark] = node.doc_string
                node.doc_string = mark
    return copy, doc_strings


def _with_initializer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graphs state each initializer's type in ``value_info`` (onnx's converting
    inliner asks the type of every value a call reads, and shape inference does not add initializers')."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for _, graph in iter_graphs(copy.graph):
        stated = {value.name for value in graph.value_info} | {value.name for value in graph.input}
        graph.value_info.extend(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                                for init in graph.initializer if init.name not in stated)
    return copy


def _hoist_subgraph_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the typed values of its If/Loop/Scan bodies (value_info, outputs) also stated in the main
    graph's ``value_info``, in place: onnx's converting inliner looks types up there only (a call inside a
    branch failed with "Type unknown for else_y"). Names are unique across scopes, so nothing clashes."""
    stated = {value.name for value in model.graph.value_info} | {value.name for value in model.graph.input} | {
        value.name for value in model.graph.output}
    for index, (_, graph) in enumerate(iter_graphs(model.graph)):
        if index == 0:
            continue
        for value in list(graph.value_info) + list(graph.output) + list(graph.input):
            if value.name not in stated and value.type.HasField("tensor_type"):
                model.graph.value_info.append(value)
                stated.add(value.name)
    return model


def _drop_repeated_constants(model: onnx.ModelProto) -> None:
    """Remove, in place, a Constant node that defines a name a Constant before it already defines with the
    same value: onnx's converting inliner copies a main-graph Constant read by a call into the call's body,
    which would define the name twice (and count its weight twice)."""
    main: dict[str, bytes] = {}  # the main graph's definitions, visible in every subgraph; siblings' are not
    for index, (_, graph) in enumerate(iter_graphs(model.graph)):
        defined, keep = {}, []
        for node in graph.node:
            if node.op_type == "Constant" and is_standard(node) and len(node.output) == 1:
                value = b"".join(attribute.SerializeToString() for attribute in node.attribute)
                if value in (defined.get(node.output[0]), main.get(node.output[0])):
                    continue
                defined.setdefault(node.output[0], value)
            keep.append(node)
        if index == 0:
            main = defined
        if len(keep) != len(graph.node):
            del graph.node[:]
            graph.node.extend(keep)


def _without_added_value_info(model: onnx.ModelProto, before: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with only the ``value_info`` entries whose names ``before`` had (in any graph), in place."""
    kept = {value.name for _, graph in iter_graphs(before.graph) for value in graph.value_info}
    kept_main = {value.name for value in before.graph.value_info}  # (subgraphs' types were hoisted to it)
    for index, (_, graph) in enumerate(iter_graphs(model.graph)):
        entries = [value for value in graph.value_info if value.name in (kept_main if index == 0 else kept)]
        del graph.value_info[:]
        graph.value_info.extend(entries)
    return model


def _share_inlined_constants(original: onnx.ModelProto, inlined: onnx.ModelProto) -> int:
    """Make the inliner's per-call copies of a function's Constant node (those of one mark of
    :func:`_marked_function_constants`, holding the same value) one node again, in place: the
    copies (in the main graph or in If/Loop/Scan bodies) go, one Constant at the top of the main graph
    takes their place, and their readers read it. The file stores a function's constant once; without
    this, each call's copy would count (and be written) once more, and a weight shared by the calls would
    be factorized once per call. Returns how many copies were removed."""
    before = {name for _, graph in iter_graphs(original.graph) for node in graph.node for name in node.output}
    graph_outputs = {value.name for _, graph in iter_graphs(inlined.graph) for value in graph.output}
    copies: dict[tuple[str, bytes], list[onnx.NodeProto]] = {}
    for _, graph in iter_graphs(inlined.graph):
        for node in graph.node:
            if (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1
                    and node.output[0] not in before and node.output[0] not in graph_outputs
                    and node.doc_string.startswith(_SOURCE_MARK)):  # copies of one function node, same value
                key = (node.doc_string, b"".join(attribute.SerializeToString() for attribute in node.attribute))
                copies.setdefault(key, []).append(node)
    renamed: dict[str, str] = {}
    hoisted = []
    for group in (group for group in copies.values() if len(group) > 1):
        renamed.update((node.output[0], group[0].output[0]) for node in group)
        shared = onnx.NodeProto()
        shared.CopyFrom(group[0])
        hoisted.append(shared)
    if not renamed:
        return 0
    for _, graph in iter_graphs(inlined.graph):
        nodes = [node for node in graph.node
                 if not (node.op_type == "Constant" and len(node.output) == 1 and node.output[0] in renamed)]
        del graph.node[:]
        graph.node.extend(nodes)
        for node in graph.node:
            for index, name in enumerate(node.input):
                if name in renamed:
                    node.input[index] = renamed[name]
    nodes = hoisted + list(inlined.graph.node)  # defined before any reader, visible in every body
    del inlined.graph.node[:]
    inlined.graph.node.extend(nodes)
    return len(renamed) - len(hoisted)


def _unsized_message(model: onnx.ModelProto, unknown: Sequence[onnx.NodeProto], need_macs: bool = True,
                     run_errors: Sequence[str] = (), sizes: Optional[Mapping[str, Sequence[int]]] = None,
                     from_calibration: bool = False) -> str:
    """Why Conv/Gemm/MatMul nodes could not be sized, and what works instead (an error when the budget
    needs MACs; else a note that MACs are not counted). ``run_errors``: why ONNX Runtime failed to run the
    model at ``sizes`` (input name → full dims), the calibration arrays' sizes where ``from_calibration``."""
    custom = [node for _, graph in iter_graphs(model.graph) for node in graph.node if node.domain not in STANDARD_DOMAINS]
    first = f"'{unknown[0].name}'"
    inside_only = False  # every unsized node sits in a subgraph: --input-shape would not help
    if custom:
        ops = sorted({f"{node.domain}::{node.op_type}" for node in custom})
        why = (f"the model uses the custom op {', '.join(ops[:3])} (node '{custom[0].name}'), whose output shapes "
               "neither ONNX shape inference nor ONNX Runtime knows")
        instead = "use --keep-params instead of --keep-flops"
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            why = "ONNX Runtime is not installed to measure them in one run"
            instead = "install onnxruntime (onnx-alds[cpu]), or use --keep-params"
        else:
            inner = {node.name for path, graph in iter_graphs(model.graph) if path for node in graph.node}
            inside_only = all(node.name in inner for node in unknown)
            if inside_only:
                why = ("they sit inside If/Loop/Scan subgraphs whose tensor shapes shape inference cannot give "
                       "(a loop-carried value)")
                instead = "use --keep-params instead of --keep-flops"
            elif run_errors and sizes is not None:
                where = "the calibration arrays' sizes" if from_calibration else "the input shape"
                why = (f"shape inference cannot tell their shapes, and ONNX Runtime does not run the model at {where} "
                       f"({show_input_shapes(sizes, ' ')}: {run_errors[0]})")
                instead = ("give inputs of a size the model runs at" + (
                    " (calibration arrays of another size, or --input-shape)" if from_calibration else
                    " (--input-shape)") + ", or use --keep-params")
            else:
                why = "neither shape inference nor an ONNX Runtime run gives their shapes"
                instead = "check --input-shape, or use --keep-params"
    if not need_macs:
        instead = ("MACs are not counted (give --input-shape to count them)"
                   if not custom and not inside_only else "MACs are not counted")
    return f"cannot size {len(unknown)} Conv/Gemm/MatMul nodes (first: {first}): {why}; {instead}"


def _measure_for(method: str, error_measure: str) -> str:
    if method == "svd":
        return "rank-fraction"
    if method == "svd-energy":
        return "frobenius"
    if method == "l-rank":
        return "frobenius"  # l-rank decides on absolute residual energy; this measure is only reported
    if method == "damage":
        return "frobenius"  # shapes the interpolation between measured ranks (onnx_alds.damage)
    return error_measure


@refuses_group_and_keyword
def compress(model: ModelLike, *, keep_params: Optional[float] = None, keep_flops: Optional[float] = None,
             method: str = "alds", error_measure: Optional[str] = None, rank_multiple: int = 1,
             exclude: Sequence[str] = (), seed: int = 0, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
             max_groups: int = 16, calibration=None, calibration_batch_size: int = 16, refit: bool = True,
             sequential: bool = False, bias_correction: bool = False, sensitivity: bool = False,
             keep_dense: Optional[Mapping[str, str]] = None, order: str = SPATIAL_FIRST,
             shrinkage: bool = True, keep_latency: Optional[float] = None, budget=None, search=None, data=None,
             speed=None, both_factors: int = 0, affine_correction: bool = False, damage_samples: int = 8,
             damage_points: int = 4, damage_max_groups: int = 1, prune="off", prune_heads: bool = False,
             calibration_workers: int = 1) -> CompressionResult:
    """Factorize the model's Conv/Gemm/MatMul layers under one budget and return the new model.

    The budget, exactly one of: ``keep_params`` (fraction of the model's weights to keep, in (0, 1]),
    ``keep_flops`` (fraction of the multiply-accumulates of its Conv/Gemm/MatMul layers at the input
    shape) or ``keep_latency`` (fraction of its measured time, with ``speed``). ``exclude``: node or
    weight names, or glob patterns, to leave dense. ``seed``: integer in [0, 2**32) for the randomized
    parts (ALDS's search, random inputs). ``input_shapes``: input name → dims, for dynamic dims
    (``{"input": (1, 3, 224, 224)}``). ``max_groups``: the largest group count ``g`` searched.
    ``calibration_batch_size``: samples per calibration run of ONNX Runtime. ``prune_heads``: with
    ``prune``, blocks may narrow whole attention heads. Raises :class:`onnx_alds.errors.BudgetError`
    (a budget or option out of range, a budget below what the layers can reach),
    :class:`onnx_alds.errors.InputDataError` (calibration or shapes that do not fit the model),
    :class:`onnx_alds.errors.ModelLoadError` and :class:`onnx_alds.errors.UnsupportedModelError`.

    ``model``: a path (read lightly: external data stays on disk and each weight is read when its
    layer needs it, docs/LARGE_MODELS.md), a ModelProto (neither copied whole nor modified), or an
    :class:`onnx_alds.model_io.OpenedModel` (then the result is light too: see :class:`CompressionResult`).

    ``calibration``: an :class:`onnx_alds.inputs.InputSet` (an object with its ``.arrays`` and ``.batches(n)``
    is taken as the InputSet of its arrays); when given, compression is data-aware (see docs/DATA_AWARE.md):

    - the error tables come from whitened spectra (``W_i L_i``, ``C_i = L_i L_iᵀ`` the input second
      moment of group ``i``), i.e. they measure relative output error on the calibration inputs;
    - every layer is decomposed in the metric of its own inputs (whitened SVD);
    - ``refit`` (default on): each decoder is refitted by least squares on the full input second moment,
      ``A = W C Bᵀ (B C Bᵀ)⁻¹``, which restores the cross-group correlation per-group whitening ignores;
    - ``sequential``: the allocation keeps the original model's statistics, but each layer's factors
      are fitted to the inputs produced by the already-compressed layers before it (``x̃``): the
      whitened decomposition of ``W M C̃⁻¹`` in the metric ``C̃``, refit ``A = W M Bᵀ (B C̃ Bᵀ)⁻¹``;
    - ``bias_correction``: add ``E[W x − A B x̃]`` (per output channel, averaged over positions) to
      each decoder's bias.
    - ``shrinkage`` (default on): every measured second moment is shrunk toward a scaled identity by
      the Ledoit–Wolf weight (:meth:`onnx_alds.calibrate.LayerStatistics.shrinkage_weight`), so that a
      layer with few input vectors for its dimension (a classifier Gemm after global pooling) is not
      fitted to the calibration samples alone.

    - ``sensitivity``: weight each layer's error table by how strongly that layer's error reaches the
      model's output: ``s_ℓ = e_ℓ / ε_ℓ`` with ``e_ℓ`` the relative change of the first graph output on
      (up to 16) calibration inputs when layer ``ℓ`` alone is factorized (``g = 1``, about half its
      weights, data-aware factors) and ``ε_ℓ`` its table error there; the min-max then balances
      ``s_ℓ·ε_ℓ``, i.e. estimated output error, instead of per-layer error. Costs one run per layer.

    ``error_measure`` None (default) means ``spectral`` data-free and ``frobenius`` data-aware: on
    whitened spectra the relative Frobenius residual is the relative RMS output error on the
    calibration inputs, of ``W x`` without the layer's bias (exact for ``g = 1`` with ``shrinkage=False``; with the default moment shrinkage it
    is that error under the shrunk moment, a regularized estimate that differs from the in-sample figure
    where the calibration vectors are few for the layer's input), which measured best on
    EfficientNet-Lite0 (docs/DATA_AWARE.md).

    ``rank_multiple``: every rank is a multiple of it, and so are a Conv's channels per group
    (``g = 1`` excepted). ``keep_dense``: node names to leave dense, each with the reason to report.

    ``order``: ``spatial-first`` (ALDS: k×k conv to ``g·r`` channels, then 1x1) or ``pointwise-first``
    (1x1 conv to ``g·r`` channels, then k×k; the grouped decomposition of the ``f·κ × c`` unfolding),
    which applies to every k×k Conv with stride 1 whose output keeps its input's size; the others stay
    spatial-first. Same MACs per rank when ``c = f``; measured faster on ONNX Runtime's CPU kernels
    where the spatial-first encoder would have few output channels (docs/RESULTS.md).

    - ``both_factors`` (rounds, default 0): alternating least squares of encoder and decoder on the
      layer's input statistics after the refit (:func:`onnx_alds.decompose.alternate_factors`).
    - ``affine_correction``: match each compressed layer's per-output-channel mean and variance to the
      original's on the calibration statistics, folded into decoder rows and bias
      (:func:`onnx_alds.decompose.affine_correction`); it replaces ``bias_correction``'s shift.

    ``method="damage"`` (needs ``calibration``; docs/ACCURACY.md): each layer's effect on the model
    output is measured (:mod:`onnx_alds.damage`: the layer alone factorized at ``damage_points`` ranks
    per group count ``g ≤ damage_max_groups``, ``damage_samples`` calibration inputs per run, relative
    squared output error), and an integer program (:func:`onnx_alds.allocate.allocate_options`) picks
    the options with the least total predicted damage that meet the budget (params or MACs).

    ``refit``, ``sequential``, ``bias_correction`` and ``sensitivity`` shape data-aware compression
    only; ``sequential``, ``bias_correction``, ``sensitivity``, ``both_factors``, ``affine_correction``
    and ``method="damage"`` need ``calibration``.

    ``keep_latency``: keep that fraction of the whole model's time measured in ONNX Runtime on
    ``speed`` (:class:`onnx_alds.options.SpeedOptions`: provider, threads, batch; default CPU, batch 1)
    instead of weights or MACs; ``order="auto"`` lets the latency tables decide each k×k conv's order
    (docs/LATENCY.md). The options also come grouped: ``budget``, ``search``, ``data``, ``speed``
    (:mod:`onnx_alds.options`); a group replaces the keywords it holds. ``compress`` is
    :func:`onnx_alds.plan.make_plan` then :func:`onnx_alds.plan.apply_plan`, without the round trip.

    ``prune`` (``--prune``, needs ``calibration``): ``True``/``"combined"`` also narrows the hidden width
    of prunable blocks (1x1 expand → depthwise → 1x1 project; MatMul → GELU → MatMul) with a
    least-squares refit of each block's consumer, in one min-max with the low-rank layers; ``"only"``
    prunes widths alone (:func:`onnx_alds.prune.compress_pruned`, docs/PRUNING.md).

    ``calibration_workers``: more than 1 computes the calibration statistics' shards on that many Ray
    actors (:func:`onnx_alds.calibrate.calibration_workers`, the ``[ray]`` extra; docs/SWEEP.md): the
    same bits as 1 (default: in this process, no Ray).
    """
    check_workers_have_calibration(calibration_workers, calibration, data)
    if calibration_workers != 1:  # the same call inside the workers' context
        keywords = dict(locals(), calibration_workers=1)
        from .calibrate import calibration_workers as workers_context

        with workers_context(calibration_workers):
            return compress.__wrapped__(**keywords)  # (every keyword by name: the group check is done)
    options = compress_options(keep_params=keep_params, keep_flops=keep_flops, keep_latency=keep_latency,
                               method=method, error_measure=error_measure, rank_multiple=rank_multiple,
                               exclude=exclude, seed=seed, input_shapes=input_shapes, max_groups=max_groups,
                               calibration=calibration, calibration_batch_size=calibration_batch_size, refit=refit,
                               sequential=sequential, bias_correction=bias_correction, sensitivity=sensitivity,
                               keep_dense=keep_dense, order=order, shrinkage=shrinkage, budget=budget, search=search,
                               data=data, speed=speed, both_factors=both_factors,
                               affine_correction=affine_correction, damage_samples=damage_samples,
                               damage_points=damage_points, damage_max_groups=damage_max_groups)
    options = replace(options, search=with_pruning(options.search, prune, prune_heads))  # --prune, --prune-heads
    refuse_without_effect(options)  # as the command line refuses flags that change nothing
    if options.search.prune != "off":  # (onnx_alds.prune)
        from .prune import compress_pruned

        return compress_pruned(model, options, options.search.prune)
    return _apply_step(_plan_step(model, options))


def check_workers_have_calibration(workers, calibration, data=None) -> None:
    """Raise :class:`InputDataError` for a worker count that is no count, or more than one without calibration
    inputs (``calibration``, or those of the ``data`` group), whose statistics are all the workers compute
    (checked before Ray starts, as the CLI refuses ``--calibration-workers`` without calibration; both given
    is compress_options' error)."""
    check_count("calibration_workers", workers)
    if workers != 1 and calibration is None and getattr(data, "calibration", None) is None:
        raise InputDataError("calibration_workers has no effect without calibration inputs (the workers compute "
                             "their statistics); give calibration=... or drop calibration_workers")


def check_compress_keywords(function: str, keywords: Mapping[str, Any]) -> None:
    """Raise :class:`UnknownOptionError` naming ``function`` for a keyword that :func:`compress` does not take
    (``make_plan`` passes compress's keywords on)."""
    import inspect

    known = [name for name in inspect.signature(compress).parameters if name != "model"]
    unknown = sorted(set(keywords) - set(known))
    if unknown:
        raise UnknownOptionError(f"{function}() got unknown option(s) {', '.join(unknown)}; it takes compress's "
                                 f"keywords: {', '.join(known)}")


@dataclass(frozen=True)
class _Planned:
    """What planning hands to the rewrite: the prepared model, the layers and their decisions."""

    model: ModelLike  # as the caller gave it (a light OpenedModel is saved by the caller)
    options: CompressOptions
    prepared: _Prepared
    chosen: list[Layer]
    allocation: Allocation
    stats: Mapping
    calibration_notes: list[str]
    seconds: dict[str, float]
    measure: str
    sensitivity_note: Optional[str]
    speed: object = None  # onnx_alds.latency.SpeedInfo, or a plan's recorded times (onnx_alds.plan)
    damage: Optional[dict] = None  # --method damage: the tables' cost and the predicted total (onnx_alds.damage)
    warnings: tuple[str, ...] = ()  # found while planning (--order auto's cost in error), shown with the report's


def nothing_to_compress(layers: Sequence[Layer], what: str = "factorizable", unchanged_ops: str = "",
                        dead: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    """The message for a model none of whose Conv/Gemm/MatMul nodes can be changed, with the reasons
    (``unchanged_ops``: the quantized or fused layers, :func:`onnx_alds.layers.unchanged_ops_note`;
    ``dead``: the nodes left out as reaching no graph output; ``notes``: the model's notes, whose Einsum
    note is the reason when there is no layer)."""
    einsum = next((note for note in notes if EINSUM_NOTE in note), None)
    if einsum and not layers:  # a model whose linear layers are all Einsum nodes
        return (f"nothing to compress: no Conv/Gemm/MatMul node; {einsum}; export the linear layers as MatMul or "
                "Gemm (torch.nn.Linear, not torch.einsum) to compress them")
    transposed = next((note for note in notes if note.split(" (first: ")[0].endswith(" ConvTranspose nodes")), None)
    if transposed and not layers:  # (a decoder or upsampler made of ConvTranspose alone)
        return (f"nothing to compress: no Conv/Gemm/MatMul node; the model's {transposed.split(' are left')[0]} "
                "are not factorized (onnx-alds factorizes Conv, Gemm and MatMul)")
    reasons = sorted({layer.skip_reason for layer in layers if layer.skip_reason})
    if dead and not layers and not unchanged_ops:  # (quantized or fused layers are the reason, dead nodes or not)
        return (f"nothing to compress: no Conv/Gemm/MatMul node reaches a graph output ({len(dead)} "
                f"node{'s' if len(dead) > 1 else ''} reach{'' if len(dead) > 1 else 'es'} none, first: '{dead[0]}')")
    if unchanged_ops:
        return ("nothing to compress: " + (f"{len(layers)} Conv/Gemm/MatMul nodes, none {what}" if layers else
                                           "no Conv/Gemm/MatMul node") + f"; the model's layers are {unchanged_ops}")
    return (f"nothing to compress: {len(layers)} Conv/Gemm/MatMul nodes, none {what}"
            + (f" ({'; '.join(reasons[:3])})" if reasons else " (the model has no Conv, Gemm or MatMul with a weight)"))


def _matches_a_layer(model: onnx.ModelProto, pattern: str) -> bool:
    try:
        check_exclude_patterns(model, [pattern])
    except InputDataError:
        return False
    return True


def _plan_step(model: ModelLike, options: CompressOptions, decisions=None) -> _Planned:
    """Load, layers, calibration statistics, error tables, latency tables and the allocation; or,
    applying a plan (``decisions``, :mod:`onnx_alds.plan`), the plan's decisions checked against the model."""
    budget, search, data = options.budget, options.search, options.data
    method, error_measure, rank_multiple = search.method, search.error_measure, search.rank_multiple
    exclude, seed, max_groups, order = search.exclude, search.seed, search.max_groups, search.order
    keep_dense = dict(search.keep_dense)
    calibration, calibration_batch_size, refit = data.calibration, data.batch_size, data.refit
    sequential, bias_correction, sensitivity = data.sequential, data.bias_correction, data.sensitivity
    shrinkage, input_shapes = data.shrinkage, options.input_shapes
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    target, keep = budget.target, budget.keep
    if method not in METHODS:
        raise BudgetError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)}")
    if error_measure is None:
        error_measure = DATA_AWARE_ERROR_MEASURE if calibration is not None else "spectral"
    if error_measure not in ERROR_MEASURES:
        raise BudgetError(f"unknown error measure '{error_measure}'; choose one of: {', '.join(ERROR_MEASURES)}")
    if rank_multiple < 1:
        raise BudgetError(f"--rank-multiple {rank_multiple} is out of range; give a positive integer such as 16")
    if max_groups < 1:
        raise BudgetError(f"--max-groups {max_groups} is out of range; give a positive integer such as 16")
    if order not in ORDERS + (AUTO_ORDER,):
        raise BudgetError(f"unknown order '{order}'; choose one of: {', '.join(ORDERS + (AUTO_ORDER,))}")
    if calibration is None and (sequential or bias_correction or sensitivity):
        flag = "--sequential" if sequential else ("bias correction" if bias_correction else "sensitivity weighting")
        raise InputDataError(f"{flag} needs calibration data; give calibration inputs "
                             "(--calibration FILE.npz, --calibration-images DIR or --calibration-random N)")
    if method == "damage" and calibration is None:
        raise InputDataError("--method damage measures each layer's effect on the outputs and needs calibration "
                             "data; give --calibration FILE.npz (or --calibration-images DIR), or use --method alds")
    if method == "damage" and (target == "latency" or order == AUTO_ORDER):
        raise BudgetError("--method damage allocates under --keep-params or --keep-flops with one order; "
                          "use --method alds with --keep-latency or --order auto")
    searched = (max_groups if method == "alds" else min(max_groups, data.damage_max_groups) if method == "damage"
                else 1)
    prepared = _prepare(model, input_shapes=input_shapes, exclude=exclude,
                        max_groups=searched, need_macs=target == "flops",
                        channel_multiple=rank_multiple, complete=calibration is not None,
                        shape_hints=calibration_shape_hints(calibration))
    proto, layers = prepared.model, prepared.layers
    if not any(layer.compressible for layer in layers):  # (before the calibration is run: its errors would hide it)
        raise UnsupportedModelError(nothing_to_compress(layers, unchanged_ops=prepared.unchanged_ops,
                                                        dead=prepared.dead, notes=prepared.notes))
    if calibration is not None:
        options = prepared.with_checked_calibration(options)
        data, calibration = options.data, options.data.calibration
    if options.speed is not None and options.speed.batch is None:  # the batch the model fixes, else the shapes'
        from .bench import default_batch

        options = replace(options, speed=replace(options.speed, batch=default_batch(proto, input_shapes)))
    prepared.check_keep_dense(keep_dense)
    if decisions is not None:  # the model must be the one the plan was made for; its skipped layers stay dense
        keep_dense.update(decisions.check(prepared, input_shapes, calibrated=calibration is not None))
    if keep_dense:
        layers = [replace(layer, skip_reason=keep_dense[layer.name])
                  if layer.name in keep_dense and layer.compressible else layer for layer in layers]
        prepared = replace(prepared, layers=layers)
    if calibration is not None:
        layers = [replace(layer, skip_reason=_uncalibrated_reason(layer)) if layer.compressible
                  and _uncalibrated_reason(layer) else layer for layer in layers]
        prepared = replace(prepared, layers=layers)
    pointwise_spatial: list[Layer] = []  # --order pointwise-first: the k×k convs it may apply to
    if order == POINTWISE_FIRST:
        layers = [_pointwise_first_if_it_shrinks(layer, max_groups=searched, rank_multiple=rank_multiple)
                  for layer in layers]
        spatial = [layer for layer in layers if layer.compressible and layer.op == "Conv" and layer.kernel > 1]
        notes = list(prepared.notes)
        if decisions is not None and spatial:  # a plan applied: its decisions as applied, not the search's option
            notes.append(decisions.order_note(spatial))
        elif spatial:  # said once the allocation has decided which of them are factorized
            pointwise_spatial = spatial
        else:  # the flag changes nothing on this model: say so
            notes.append("order pointwise-first: the model has no k×k conv to factorize, so the order changes "
                         "nothing (it applies to k×k convs with stride 1 whose output keeps the input's size)")
        prepared = replace(prepared, layers=layers, notes=notes)
    chosen = [layer for layer in layers if layer.compressible]
    if not chosen:
        raise UnsupportedModelError(nothing_to_compress(layers, unchanged_ops=prepared.unchanged_ops,
                                                        dead=prepared.dead, notes=prepared.notes))
    if decisions is not None:  # each layer in the plan's order
        prepared, chosen = decisions.ordered(prepared, chosen, max_groups=searched,
                                             channel_multiple=rank_multiple)
    else:  # from the shapes alone, before any calibration pass or damage table
        least = None
        if target in ("params", "flops") and (target == "params" or prepared.macs_total):
            total, scales, fixed, _ = _layer_budget(prepared, chosen, target, keep)
            least = _least_reachable(chosen, scales, fixed) / total
            least = None if least < keep else least  # (a smaller multiple reaches the budget: that is the advice)
        _check_rank_multiple(chosen, rank_multiple, prepared.unchanged_ops,
                             unreachable=None if least is None else (f"--keep-{target} {keep:g}", least,
                                                                     "weights" if target == "params" else "MACs"))
    seconds["load"] = time.perf_counter() - started

    moments: dict[str, np.ndarray] = {}
    stats: dict = {}
    calibration_notes: list[str] = []  # fixed batch, samples left out, sampling, layers left data-free
    if calibration is not None:
        from .calibrate import collect_statistics

        tick = time.perf_counter()
        stats = collect_statistics(proto, chosen, calibration, batch_size=calibration_batch_size,
                                   notes=calibration_notes)
        if shrinkage:
            for name in list(stats):  # one layer at a time: never two copies of every moment
                stats[name] = stats[name].shrunk()
        moments = {name: value.second_moment for name, value in stats.items()}
        seconds["calibration"] = time.perf_counter() - tick

    tick = time.perf_counter()
    constants = prepared.constants
    measure = _measure_for(method, error_measure)
    tables: list[ErrorTable] = []
    for layer in _progress(chosen, "spectra"):
        if decisions is not None and not sensitivity and decisions.keeps_dense(layer.name):
            tables.append(None)  # (a plan's dense layer reads no table: its spectrum would cost the time of SVDs)
            continue
        matrix = folded_weight(layer, constants)
        whitening = (whitening_factors(layer_moment(layer, moments[layer.name]), layer.groups)
                     if layer.name in moments else None)
        spectra = layer_spectra(matrix, layer.groups, whitening)
        rows, cols = layer.matrix_shape
        tables.append(error_table(spectra, rows, cols, groups=layer.groups, measure=measure,
                                  rank_multiple=rank_multiple if decisions is None else 1))  # a plan may edit ranks
        del matrix, whitening, spectra  # one layer's float64 weight at a time
    seconds["spectra"] = time.perf_counter() - tick
    sensitivity_note: Optional[str] = None
    if sensitivity:
        tick = time.perf_counter()
        weights = layer_sensitivities(proto, chosen, tables, constants, stats, calibration)
        tables = [scaled_table(table, weight) for table, weight in zip(tables, weights)]
        seconds["sensitivity"] = time.perf_counter() - tick
        largest = np.argsort(weights)[::-1][:3]
        sensitivity_note = ("sensitivity weights (output error per unit layer error), largest: "
                            + ", ".join(f"{chosen[i].name} {weights[i]:.3g}" for i in largest))

    if target == "params" and calibration is not None and (data.bias_correction or data.affine_correction):
        tables = [table if table is None else _with_added_bias(table, extra)
                  for table, extra in zip(tables, _correction_bias_params(proto, chosen))]
    speed_info = costs = None
    one_order_tables = tables  # each conv in its own order: what --order auto is compared with
    if decisions is None and options.measures_latency:  # latency tables (onnx_alds.latency)
        from .latency import speed_step

        tables, costs, speed_info = speed_step(prepared, chosen, tables, options, moments=moments, measure=measure,
                                               weights=weights if sensitivity else None)
        seconds["latency tables"] = speed_info.stats.seconds
    tick = time.perf_counter()
    order_warning: Optional[str] = None
    if decisions is not None:
        allocation, speed_info = decisions.allocation(chosen, tables), decisions.times()
    elif target == "latency":
        from .latency import allocate_latency

        allocation = allocate_latency(tables, costs, speed_info, keep, method, seed)
        if options.speed.model_rounds:
            allocation, speed_info = _settle_latency(prepared, chosen, tables, costs, speed_info, options)
    elif method == "damage":
        from .damage import cache_outputs_note, measure_damage_tables, unpriced_damage_note

        damage_tables, damage_cost = measure_damage_tables(
            proto, chosen, tables, constants, stats, calibration, samples=data.damage_samples,
            points=data.damage_points, max_groups=searched, refit=refit, batch_size=calibration_batch_size,
            factor_fn=_damage_factor_fn(data), shrinkage=shrinkage)
        seconds["damage tables"] = 0.0 if damage_cost.cached else damage_cost.seconds
        if damage_cost.unpriced:
            calibration_notes.append(unpriced_damage_note(damage_cost.unpriced))
        if (caches := cache_outputs_note(proto)) is not None:
            calibration_notes.append(caches)
        tick = time.perf_counter()
        allocation, damage_info = _allocate_damage(prepared, chosen, damage_tables, target, keep, rank_multiple,
                                                   unpriced=damage_cost.unpriced)
        damage_info.update(runs=damage_cost.runs, samples=damage_cost.samples, seconds=damage_cost.seconds,
                           cached=damage_cost.cached, out_of_sample=damage_cost.out_of_sample)
    else:
        slow_note = _slow_layers_note(chosen, one_order_tables, tables, options.speed, target) \
            if speed_info is not None else ""
        allocation = _allocate(prepared, chosen, tables, target, keep, method, seed, rank_multiple, slow_note)
        if order == AUTO_ORDER and speed_info is not None and measure != "rank-fraction":
            order_warning = _auto_order_warning(prepared, chosen, one_order_tables, speed_info, options, allocation)
    seconds["allocation"] = time.perf_counter() - tick
    prepared, chosen = _with_chosen_orders(prepared, chosen, allocation, max_groups=searched,
                                           channel_multiple=rank_multiple)
    if pointwise_spatial:  # (the convs no rank of the multiple shrinks are skipped, as a plan lists them)
        shrinkable = {layer.name for layer, table in zip(chosen, tables) if any(len(o.ranks) for o in table.options)}
        prepared = replace(prepared, notes=list(prepared.notes) + [_pointwise_first_note(
            [layer for layer in pointwise_spatial if layer.name in shrinkable],
            _allocation_factorized(chosen, allocation))])
    return _Planned(model, options, prepared, chosen, allocation, stats, calibration_notes, seconds, measure,
                    sensitivity_note, speed_info, damage=damage_info if method == "damage" and decisions is None
                    else None, warnings=(order_warning,) if order_warning else ())


def data_aware_steps(data) -> tuple[str, ...]:
    """The data-aware steps a compression with ``data`` (:class:`onnx_alds.options.DataAwareOptions`) takes, in the
    words of the report's ``method:`` line: whitened, shrinkage, refit, sequential, bias-correction ..."""
    return (("whitened",) + (("shrinkage",) if data.shrinkage else ()) + (("refit",) if data.refit else ())
            + (("sequential",) if data.sequential else ()) + (("bias-correction",) if data.bias_correction else ())
            + ((f"both-factors x{data.both_factors}",) if data.both_factors else ())
            + (("affine",) if data.affine_correction else ()) + (("sensitivity",) if data.sensitivity else ()))


def _correction_bias_params(proto: onnx.ModelProto, layers: Sequence[Layer]) -> list[int]:
    """The weights ``--bias-correction`` / ``--affine-correction`` add to each layer when it is factorized,
    by the rewrite's own rule (:func:`onnx_alds.rewrite.shift_folds_into_bias`,
    :func:`onnx_alds.rewrite.shift_added_weights`): ``f`` values for a new bias, the growth of a bias the
    shift folds into (none for a Conv's or Gemm's own ``[f]``, ``M·N − M`` for a Gemm ``C`` of ``[M, 1]``)."""
    nodes = {node.name: node for _, graph in iter_graphs(proto.graph) for node in graph.node}
    initializers = {init.name: tuple(init.dims) for _, graph in iter_graphs(proto.graph) for init in graph.initializer}
    kept = kept_biases(proto)  # (the shift goes through an Add for them: f values)
    added = []
    for layer in layers:
        node = nodes.get(layer.name)
        bias = node.input[2] if node is not None and len(node.input) > 2 else ""
        beta = float(next((a.f for a in node.attribute if a.name == "beta"), 1.0)) \
            if node is not None and layer.op == "Gemm" else 1.0
        fixed = bias in initializers and bias not in kept
        folds = shift_folds_into_bias(layer.op, beta, bool(bias), fixed)
        added.append(shift_added_weights(layer.out_features, initializers[bias] if folds and bias else None))
    return added


def _with_added_bias(table: ErrorTable, extra: int) -> ErrorTable:
    """``table`` with ``extra`` weights added to every factorized option's size (the dense layer is implicit)."""
    if not extra:
        return table
    return replace(table, options=tuple(replace(option, sizes=option.sizes + extra) for option in table.options))


def _settle_latency(prepared: _Prepared, chosen: list[Layer], tables, costs, speed_info, options: CompressOptions):
    """The allocation whose whole model, timed against the dense one, meets ``--keep-latency``
    (:func:`onnx_alds.latency.settle_latency`), and the speed summary with the rounds."""
    from .latency import (LatencyCache, _timer_for, allocate_latency, cache_dir, layer_shapes_at_batch,
                          settle_latency, smallest_keep_latency)

    search, speed = options.search, options.speed
    groups_searched = search.max_groups if search.method == "alds" else 1
    rng = np.random.default_rng(0)

    def build(allocation: Allocation) -> onnx.ModelProto:  # the decisions' graph; factor values do not matter
        ordered, layers = _with_chosen_orders(prepared, chosen, allocation, max_groups=groups_searched,
                                              channel_multiple=search.rank_multiple)
        rewrites = []
        for layer, choice in zip(layers, allocation.choices):
            if choice.groups != DENSE:
                rows, cols = layer.matrix_shape
                width = choice.groups * choice.rank
                encoder = rng.standard_normal((width, cols // choice.groups)) / np.sqrt(cols // choice.groups)
                decoder = rng.standard_normal((rows, width)) / np.sqrt(width)
                rewrites.append(Rewrite(layer, GroupedFactors(choice.groups, choice.rank, encoder, decoder)))
        return rewrite_model(ordered.model, rewrites)

    keep = options.budget.keep
    inputs, _ = layer_shapes_at_batch(prepared.model, prepared.store, options.input_shapes, speed.batch, chosen)
    allocation, rounds, kept, note = settle_latency(
        lambda budget: allocate_latency(tables, costs, speed_info, budget, search.method, search.seed), build,
        [layer.name for layer in chosen], speed_info, keep, smallest_keep_latency(tables, costs, speed_info),
        reference=prepared.model, store=prepared.store, input_shapes=inputs, timer=_timer_for(speed),
        rounds=speed.model_rounds, cache=LatencyCache(cache_dir(speed.cache_dir)),
        identity=dict(speed_info.identity, batch=speed.batch))
    untimed = all(choice.groups == 0 for choice in allocation.choices)  # every layer dense: the original, not timed
    return allocation, replace(speed_info, settle=rounds, settle_note=note,
                               settle_measured=None if untimed else kept.measured)


def _damage_factor_fn(data):
    """The factors the damage probes measure: those the rewrite will write (both-factor rounds included)."""
    if not data.both_factors:
        return None
    from .data_aware import data_aware_factors

    return lambda layer, matrix, groups, rank, stat: data_aware_factors(
        matrix, groups, rank, stat, refit=data.refit, layer=layer, both_factors=data.both_factors)


def _finer_ranks_reach(chosen: Sequence[Layer], scales: Sequence[float], fixed: float, total: float,
                       keep: float) -> bool:
    """Whether a lower ``--rank-multiple`` could reach ``keep``: every factorizable layer at rank 1 (a pair
    costs ``f + c·κ`` per output position, the least any rank and group count costs) with what stays fixed
    under ``keep · total`` (else the advice to lower it would not help: shared or excluded layers hold the rest)."""
    return _least_reachable(chosen, scales, fixed) < keep * total


def _least_reachable(chosen: Sequence[Layer], scales: Sequence[float], fixed: float) -> float:
    """The least any rank and group count reaches, in the budget's unit: every factorizable layer at rank 1
    (``f + c·κ`` per output position) plus what stays fixed."""
    return fixed + sum(scale * (layer.out_features + layer.cols) for layer, scale in zip(chosen, scales))


def _layer_budget(prepared: _Prepared, chosen: Sequence[Layer], target: str,
                  keep: float) -> tuple[float, list[float], float, float]:
    """The model's total in the budget's unit (weights, or MACs), each layer's scale to that unit
    (1, or its output positions), what stays fixed (layers not factorized, other weights), and what the
    factorizable layers may cost: the target less what stays fixed."""
    if target == "params":
        total = float(prepared.params_total)
        scales = [1.0] * len(chosen)
    else:
        total = float(prepared.macs_total or 0)
        scales = [float(layer.positions or 0) for layer in chosen]
    fixed = total - sum(layer.params * scale for layer, scale in zip(chosen, scales))
    return total, scales, fixed, keep * total - fixed


def _allocate_damage(prepared: _Prepared, chosen: Sequence[Layer], damage_tables, target: str, keep: float,
                     rank_multiple: int, unpriced: Sequence[str] = ()) -> tuple[Allocation, dict]:
    """The least-damage allocation under the budget (:func:`onnx_alds.allocate.allocate_options`);
    ``unpriced``: the layers whose options the tables could not price (named when the budget is out of reach)."""
    from .allocate import LayerChoice, allocate_options
    from .damage import damage_options

    total, scales, fixed, budget = _layer_budget(prepared, chosen, target, keep)
    options = damage_options(chosen, damage_tables, scales, target)
    cheapest = sum(min(o.costs[target] for o in options if o.layers == (layer.name,)) for layer in chosen)
    if budget < cheapest - 1e-9:
        one = len(unpriced) == 1
        dense = (f"; {len(unpriced)} of the {len(chosen)} layers stay{'s' if one else ''} dense: "
                 f"{'its' if one else 'their'} options could not be priced "
                 f"(first: '{unpriced[0]}': its input is zero on every calibration input, or a probe made the outputs "
                 "NaN or infinite), so give calibration inputs that reach them or compress without --method damage"
                 if unpriced else "")
        raise BudgetError(f"--keep-{target} {keep} cannot be reached with --method damage: the smallest reachable "
                          f"ratio is {ratio_at_least((fixed + cheapest) / total)} (every layer at its lowest "
                          f"measured rank{unreachable_because(prepared, target, rank_multiple)}{dense}); ask "
                          "for at least that" + (f", or lower --rank-multiple (now {rank_multiple})"
                                                 if rank_multiple > 1
                                                 and _finer_ranks_reach(chosen, scales, fixed, total, keep) else ""))
    result = allocate_options(options, {target: budget}, layers=[layer.name for layer in chosen])
    picked = {option.layers[0]: option.payload for option in result.chosen}
    choices = tuple(picked.get(layer.name, LayerChoice(DENSE, 0, 0.0, 0.0)) for layer in chosen)
    allocation = Allocation(choices, budget, float(sum(choice.cost for choice in choices)),
                            max((choice.error for choice in choices), default=0.0),
                            f"damage integer program ({result.status}, {result.candidates} options)")
    return allocation, dict(predicted_damage=result.damage, predicted_output_error=float(np.sqrt(result.damage)),
                            options=result.candidates, status=result.status)


def _with_chosen_orders(prepared: _Prepared, chosen: list[Layer], allocation: Allocation, *, max_groups: int,
                        channel_multiple: int) -> tuple[_Prepared, list[Layer]]:
    """Every layer in the order of its choice, where its table held both orders (``--order auto``)."""
    ordered = {layer.name: with_order(layer, choice.order, max_groups=max_groups, channel_multiple=channel_multiple)
               for layer, choice in zip(chosen, allocation.choices)
               if choice.groups != DENSE and choice.order is not None and choice.order != layer.order}
    if not ordered:
        return prepared, chosen
    return (replace(prepared, layers=[ordered.get(layer.name, layer) for layer in prepared.layers]),
            [ordered.get(layer.name, layer) for layer in chosen])


def _downstream_of(model: onnx.ModelProto, sources: set[str]) -> set[str]:
    """The main graph's tensors computed from any of ``sources`` (nodes in graph order, which is topological)."""
    reached = set(sources)
    for node in model.graph.node:
        if any(name in reached for name in node.input):
            reached.update(out for out in node.output if out)
    return reached


def refuse_unshrunk_interpolation(fits: Sequence[tuple[str, int, int]], option: str, what: str) -> None:
    """``fits``: ``(name, calibration vectors, inputs)`` of the refits to come. Without moment shrinkage, a
    refit across inputs other than the ones it reproduces (``--sequential``'s behind a factorized layer, a
    pruned block's kept channels) on fewer vectors than inputs interpolates the calibration set: its error
    there is about 0 and held-out outputs can be off by more than the outputs themselves. Raises
    InputDataError."""
    starved = [(name, count, size) for name, count, size in fits if count < size]
    if starved:
        name, count, size = starved[0]
        raise InputDataError(
            f"--no-shrinkage with {option}: {len(starved)} {what} would be refitted on fewer calibration vectors than "
            f"their inputs (first: '{name}', {count} vectors for {size}); without shrinkage such a fit interpolates "
            "the calibration inputs (error about 0 there, held-out outputs far off): give more calibration inputs "
            f"(at least {size} vectors) or drop --no-shrinkage")


def _apply_step(planned: _Planned) -> CompressionResult:
    """The rewrite of the planned decisions, the checks of the output and the report."""
    model, prepared, chosen, allocation = planned.model, planned.prepared, planned.chosen, planned.allocation
    proto, constants, stats, seconds = prepared.model, prepared.constants, planned.stats, planned.seconds
    calibration_notes, measure, sensitivity_note = planned.calibration_notes, planned.measure, planned.sensitivity_note
    budget, search, data = planned.options.budget, planned.options.search, planned.options.data
    target, keep, method, seed, rank_multiple = budget.target, budget.keep, search.method, search.seed, \
        search.rank_multiple
    calibration, calibration_batch_size, refit = data.calibration, data.batch_size, data.refit
    sequential, bias_correction, shrinkage = data.sequential, data.bias_correction, data.shrinkage
    tick = time.perf_counter()
    plan = [(layer, choice) for layer, choice in zip(chosen, allocation.choices) if choice.groups != DENSE]
    if calibration is not None and sequential and not shrinkage:  # (a layer no factorized layer feeds sees x̃ = x)
        changed = _downstream_of(proto, {layer.output for layer, _ in plan})
        refuse_unshrunk_interpolation([(layer.name, stats[layer.name].count, layer.matrix_shape[1])
                                       for layer, _ in plan if layer.name in stats and layer.input in changed],
                                      "--sequential", "layers")
    extra_notes: list[str] = list(calibration_notes)
    if calibration is None:  # one layer's weight and factors in float64 at a time (the rewrite pulls them)
        rewrites = (Rewrite(layer, decompose(folded_weight(layer, constants), choice.groups, choice.rank))
                    for layer, choice in plan)
        new_model = rewrite_model(proto, rewrites)
    else:
        new_model = data_aware_rewrite(proto, plan, constants, stats, calibration, refit=refit,
                                        sequential=sequential, bias_correction=bias_correction,
                                        batch_size=calibration_batch_size, seconds=seconds, notes=extra_notes,
                                        shrinkage=shrinkage, both_factors=data.both_factors,
                                        affine=data.affine_correction)
    data_aware = calibration is not None
    restore_node_names(new_model, prepared)
    stamp_provenance(new_model, prepared, method + (" (data-aware)" if data_aware else ""), target, keep, seed,
                     calibration)
    check_output_model(new_model, prepared.original, prepared.input_check, prepared.store)
    # data-free: how far the outputs moved on random inputs (the one measured sign of a broken model)
    measuring = time.perf_counter()
    moved = None if calibration is not None else random_output_change(new_model, prepared.original,
                                                                      prepared.input_check, prepared.store)
    measuring = time.perf_counter() - measuring
    light = isinstance(model, OpenedModel)  # the caller (the CLI) saves the light model itself
    if not light:
        materialize(new_model, prepared.store)
    seconds["rewrite"] = time.perf_counter() - tick - seconds.get("sequential", 0.0) - measuring  # (on their own)
    if moved is not None and (moved.change is not None or moved.changed):  # (one that could not run takes no time)
        seconds["random-input check"] = measuring
    report = _compression_report(prepared, chosen, allocation, target=target, keep=keep, method=method,
                                 measure=measure, seed=seed, rank_multiple=rank_multiple, seconds=seconds,
                                 calibration=None if calibration is None else str(calibration.source),
                                 speed=planned.speed)
    report = with_written_params(report, int(sum(iter_total_params(new_model))), target, keep, rank_multiple,
                                 applied=_edited_plan(allocation.search),
                                 from_plan=allocation.search.startswith("plan"))
    if moved is not None and moved.change is not None:
        report = replace(report, random_output_change=moved.change, random_samples=moved.samples,
                         random_output=moved.output if moved.outputs > 1 else None, random_sizes=moved.sizes)
    elif moved is not None and moved.changed:  # labels only: counted, with no float figure beside them
        report = replace(report, random_samples=moved.samples, random_sizes=moved.sizes)
    elif moved is not None:
        report = replace(report, notes=report.notes + (f"the outputs were not compared on random inputs: "
                                                       f"{moved.reason}; {moved.fix}",))
    if moved is not None and moved.changed:
        report = replace(report, random_changed_values=moved.changed)
    if data_aware:
        steps = data_aware_steps(data)
        factorized = {layer.name for layer, _ in plan}  # (a plan applied measures no other layer)
        shrunk = sorted(((value.shrinkage, name, value.count) for name, value in stats.items() if name in factorized),
                        reverse=True)
        if shrinkage and shrunk and shrunk[0][0] >= 0.01:
            extra_notes.append("moment shrinkage toward a scaled identity (Ledoit-Wolf weight α; large where the calibration "
                               "vectors are few or alike for the dimension): " + ", ".join(
                f"{name} α={alpha:.2f} ({count} vectors)" for alpha, name, count in shrunk[:3] if alpha >= 0.01))
        silent = sorted(name for name, value in stats.items()
                        if name in factorized and not np.any(value.second_moment))
        if silent:
            extra_notes.append(f"{len(silent)} layers read an input that is zero on every calibration input (first: "
                               f"'{silent[0]}'): the calibration says nothing of them, so their error figures are "
                               "the data-free ones; give calibration inputs that reach them")
        extra_notes += [sensitivity_note] if sensitivity_note else []
        grouped = [row for row in report.layers if row.groups > 1]
        if data.both_factors and not grouped and not data.sequential:
            extra_notes.append(f"--both-factors {data.both_factors} changed nothing: every factorized layer has one "
                               "group, where the whitened factors are already the least-squares optimum (the "
                               "rounds act between groups, or with --sequential)")
        if data.affine_correction:
            extra_notes.append("--affine-correction: the error figures are of the factors before it; matching each "
                               "channel's mean and variance moves a layer's output away from its least-squares fit "
                               "on purpose, so its error on the calibration inputs grows; --validate measures the model")
        report = replace(report, data_aware_steps=steps, notes=report.notes + tuple(extra_notes),
                         calibration_samples=sample_count(calibration, proto))
    if planned.damage is not None:
        report = with_damage_figures(report, planned.damage)
    widened_note, widened_warning = _widened_note(proto, [layer for layer, _ in plan], report.layers)
    report = replace(report, notes=report.notes + _alignment_notes(report, rank_multiple) + widened_note
                     + _ir3_inputs_note(proto, new_model) + _dropped_annotations_note(proto, new_model),
                     warnings=tuple(prepared.warnings) + _harm_warnings(report, prepared, data_aware, stats)
                     + planned.warnings
                     + widened_warning)
    return CompressionResult(new_model, report, store=prepared.store if light else None)


IR3_NOTE = "IR version"  # how the two notes below start and what they hold (the pruning step replaces them)
ANNOTATIONS_NOTE = "quantization annotations of the graph"


DAMAGE_MEASURE = "output damage (relative squared output error, measured)"


def with_damage_figures(report: CompressionReport, info: Mapping[str, Any]) -> CompressionReport:
    """``report`` of a ``--method damage`` allocation (its layers' errors are the chosen options' damage) with
    the error measure named, each row's predicted damage, the predicted output error and the tables' cost."""
    fit = ("factors fitted to the other inputs" if info["out_of_sample"] else
           "in-sample: no calibration input (no full batch, where the model fixes it) is left beside the "
           "probed ones to fit the factors to, so the damage is underestimated; give more inputs than "
           "--damage-samples")
    return replace(report, predicted_output_error=info["predicted_output_error"], error_measure=DAMAGE_MEASURE,
                   layers=tuple(replace(row, predicted_damage=row.error) for row in report.layers),
                   notes=report.notes + (f"damage tables: {info['runs']} model runs on {info['samples']} "
                                         f"calibration inputs ({fit}), {info['seconds']:.1f} s"
                                         + (" (measured before, reused)" if info["cached"] else "")
                                         + f"; {info['options']} options; predicted total relative output "
                                         f"error {info['predicted_output_error']:.4f}",))


def _ir3_inputs_note(proto: onnx.ModelProto, new_model: onnx.ModelProto) -> tuple[str, ...]:
    """IR 3 lists every initializer as a graph input, which the ONNX spec reads as an overridable default;
    onnx-alds reads them as constants, as ONNX Runtime does. A note names the weights whose input entries
    went with them (the factorized weights, and those behind a Cast or Transpose chain that was folded);
    ONNX Runtime refuses a feed for such an input before and after ("Invalid input name")."""
    if proto.ir_version >= 4:
        return ()
    kept = {value.name for value in new_model.graph.input}
    replaced = [value.name for value in proto.graph.input if value.name not in kept]
    if not replaced:
        return ()
    return (f"{IR3_NOTE} {proto.ir_version} lists every initializer as a graph input; onnx-alds reads them as "
            f"constants, as ONNX Runtime does: the inputs of the {len(replaced)} replaced weights (first: "
            f"'{replaced[0]}') give way to those of their factors or narrowed copies (ONNX Runtime takes no feed "
            "for either; export at IR 4 or newer to say which inputs are meant to be overridable)",)


def with_written_params(report: CompressionReport, stored: int, target: str, keep: float, rank_multiple: int, *,
                        applied: bool = False, from_plan: bool = False) -> CompressionReport:
    """``report`` with ``stored``, the weights the written file holds (a bias copy, a chain's constants
    dropped ...), as its weights after: the achieved ratio of a params budget and its "achieved" note follow
    (:func:`budget_gap`)."""
    if stored == report.params_after:
        return report
    report = replace(report, params_after=stored,
                     achieved=stored / report.params_before if target == "params" else report.achieved)
    gap_note = budget_gap(report.achieved, keep, rank_multiple, "rank", applied=applied, from_plan=from_plan)[1]
    return replace(report, notes=tuple(note for note in report.notes if not note.startswith("achieved "))
                   + ((gap_note,) if gap_note else ()))


def _dropped_annotations_note(proto: onnx.ModelProto, new_model: onnx.ModelProto) -> tuple[str, ...]:
    """A note naming the graph's quantization annotations that went with the tensors they annotated
    (a factorized weight is two new tensors, which no annotation describes)."""
    kept = {annotation.tensor_name for annotation in new_model.graph.quantization_annotation}
    dropped = [annotation.tensor_name for annotation in proto.graph.quantization_annotation
               if annotation.tensor_name not in kept]
    if not dropped:
        return ()
    return (f"{len(dropped)} {ANNOTATIONS_NOTE} (first: '{dropped[0]}') named tensors that are factorized or "
            "narrowed now and went with them; quantize the compressed model again if you use them",)


def _widened_note(proto: onnx.ModelProto, factorized: Sequence[Layer], rows: Sequence[LayerReport] = ()
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(notes, warnings) when factorized layers read a weight stored in a narrower type than they compute in
    (:func:`onnx_alds.layers.widened_weights`): their factors take the wider type; a warning where the factors
    of such a layer (its report row in ``rows``) take more bytes than the weight it replaces."""
    widened = widened_weights(proto, factorized)
    if not widened:
        return (), ()
    name, stored_as = next(iter(widened.items()))
    computes_in = next(layer.weight_type for layer in factorized if layer.name == name)

    def type_name(element_type: int) -> str:
        return onnx.TensorProto.DataType.Name(element_type).lower()

    ratio = element_bits(computes_in) // element_bits(stored_as)
    layers = "1 factorized layer reads" if len(widened) == 1 else f"{len(widened)} factorized layers read"
    note = (f"{layers} a weight stored as {type_name(stored_as)} and Cast to the "
            f"{type_name(computes_in)} they compute in (first: '{name}'); their factors are stored as "
            f"{type_name(computes_in)}, {ratio}x the bytes per weight: the file shrinks by less than the weight "
            f"count says, and grows unless under 1/{ratio} of the weights are kept",)
    by_name, types = {row.name: row for row in rows}, {layer.name: layer.weight_type for layer in factorized}
    grown = []  # (the factors' bytes above the stored weight's)
    for layer, stored in widened.items():
        row = by_name.get(layer)
        if row is not None and row.groups and \
                row.params_after * element_bits(types[layer]) > row.params_before * element_bits(stored):
            grown.append(row)
    if not grown:
        return note, ()
    first = grown[0]
    return note, (f"{len(grown)} factorized layer{'s' if len(grown) > 1 else ''} (first: '{first.name}') now "
                  f"take{'' if len(grown) > 1 else 's'} more bytes than the {type_name(widened[first.name])} weight "
                  f"{'they replace' if len(grown) > 1 else 'it replaces'} ({first.params_before:,} weights of "
                  f"{element_bits(widened[first.name])} bits became {first.params_after:,} of "
                  f"{element_bits(types[first.name])}): the file grows there; keep "
                  f"{'them' if len(grown) > 1 else 'it'} dense (--exclude), or quantize after compressing "
                  "(docs/INT8.md)",)


def restore_node_names(new_model: onnx.ModelProto, prepared: _Prepared) -> None:
    """Nodes that were unnamed (or shared a name) get their own names back: the names given to them for the
    layers, plans and reports are not written into the user's model."""
    for _, graph in iter_graphs(new_model.graph):
        for node in graph.node:
            if node.name in prepared.generated_names:
                node.name = prepared.generated_names[node.name]


NEGLIGIBLE_ERROR = 1e-4  # a layer's predicted error below which a thin rank is no harm (an exactly low-rank weight)
EINSUM_NOTE = "Einsum nodes with a constant operand"  # in the note, and quoted by the error for Einsums only
CALIBRATION_DIGEST_KEY = "onnx_alds.calibration_digest"  # the calibration set's digest, read by validate, distill
CALIBRATION_SAMPLES_KEY = "onnx_alds.calibration_samples"  # its first samples' digests, read by validate, distill
EARLIER_STEPS_KEY = "onnx_alds.earlier_steps"  # the method and target of each earlier onnx-alds step, first first


def stamp_provenance(new_model: onnx.ModelProto, prepared: _Prepared, method: str, target: str, keep: float,
                     seed: int, calibration=None) -> None:
    """Write how ``new_model`` was made into its ``metadata_props`` (version, method, budget, seed), the
    digest of the weights it replaced (:func:`onnx_alds.rewrite.replaced_digest`) and of the ``calibration``
    set it was fitted to (:func:`onnx_alds.plan.calibration_digest`, and its samples':
    :func:`onnx_alds.plan.sample_digests`), read by validate and distill. A model that
    onnx-alds compressed before keeps the method and target of each earlier step (``EARLIER_STEPS_KEY``):
    the target of this step is a fraction of its input, not of the first original. The samples' digests are
    those of the samples used (whole batches of a model that fixes its batch), and the earlier steps' too
    (their factors or refits were fitted to theirs)."""
    from .plan import calibration_digest, kept_sample_digests

    used = calibration
    count = sample_count(calibration, prepared.original) if calibration is not None else None
    if count is not None and count < len(calibration) and hasattr(calibration, "head"):
        used = calibration.head(count)
    digest = calibration_digest(used) if used is not None else None
    before = {entry.key: entry.value for entry in prepared.original.metadata_props}
    samples = kept_sample_digests(used if digest else None, before.get(CALIBRATION_SAMPLES_KEY, ""))
    calibrated = ({CALIBRATION_DIGEST_KEY: digest or before.get(CALIBRATION_DIGEST_KEY)}
                  if digest or before.get(CALIBRATION_DIGEST_KEY) else {})
    if samples:
        calibrated[CALIBRATION_SAMPLES_KEY] = samples
    earlier = "; ".join(step for step in (before.get(EARLIER_STEPS_KEY), " ".join(
        before[key] for key in ("onnx_alds.method", "onnx_alds.target") if key in before)
        + (" distilled" if "onnx_alds.distill" in before else "")) if step)
    kept = [entry for entry in new_model.metadata_props if not entry.key.startswith("onnx_alds.")]
    del new_model.metadata_props[:]  # the earlier step's keys describe it, not this model: summed up above
    new_model.metadata_props.extend(kept)
    add_provenance(new_model, calibrated | ({EARLIER_STEPS_KEY: earlier} if earlier else {}) | {
        "onnx_alds.version": __version__,
        "onnx_alds.method": method,
        "onnx_alds.target": f"keep_{target}={keep}",
        "onnx_alds.seed": str(seed),
        REPLACED_DIGEST_KEY: replaced_digest(prepared.original, new_model,
                                             prepared.store.load if prepared.store is not None else None),
        GRAPH_DIGEST_KEY: graph_digest(new_model),  # (what tells this output from another tool's edit of it)
    })


FAST_RANK_MULTIPLE = 16  # ONNX Runtime's blocked CPU conv kernels need channel counts that are multiples of it
DEEP_CUT_ERROR = 0.5  # a predicted layer error above this, without calibration, usually breaks the model
MOVED_LABELS = 1.0  # the share of a label output's values that changed on random inputs from this on: warned
# (measured: labels flip on noise far more than on data, docs/ACCURACY.md, so only "every one changed" warns)
MOVED_OUTPUTS = 0.5  # a mean relative output change on random inputs from this on: predictions lost (measured:
# docs/ACCURACY.md, "Without calibration")
TINY_RANK_FRACTION = 0.05  # a layer kept at under 5 % of its full rank (a classifier or vocabulary head ...)


def _alignment_notes(report: CompressionReport, rank_multiple: int) -> tuple[str, ...]:
    unaligned = [row for row in report.layers if row.groups and row.rank % FAST_RANK_MULTIPLE]
    applied = report.search.startswith("plan")  # a saved plan's ranks may be edited off any multiple
    if not unaligned or (rank_multiple % FAST_RANK_MULTIPLE == 0 and not applied):
        return ()
    fix = (f"ranks that are multiples of {FAST_RANK_MULTIPLE} in the plan align them"
           if applied else f"--rank-multiple {FAST_RANK_MULTIPLE} aligns them" + (
               f"; this run's {rank_multiple} does not" if rank_multiple > 1 else ""))
    # a plan's own ranks are multiples of its rank multiple: those off it are edits, named first
    edited = [row for row in unaligned if applied and rank_multiple > 1 and row.rank % rank_multiple]
    first = (edited or unaligned)[0]
    one = len(unaligned) == 1
    which = " has a rank that is not a multiple" if one else "s have ranks that are not multiples"
    off = (f"; {len(edited)} {'is' if len(edited) == 1 else 'are'} off the plan's own rank multiple {rank_multiple}"
           if edited and rank_multiple % FAST_RANK_MULTIPLE and not (one and len(edited) == 1) else "")
    return (f"{len(unaligned)} factorized layer{which} of {FAST_RANK_MULTIPLE} (first: "
            f"'{first.name}', rank {first.rank}{off}): ONNX Runtime's fast CPU kernels skip such channel "
            f"counts, so fewer MACs may not run faster ({fix})",)


OVERSHOOT_WARNING = 0.1  # a plan this far (relative) below the requested keep is a warning, not a note
OVER_BUDGET = 1 + 1e-9  # an achieved ratio above keep times this is over the budget (a hard cap), and said


def _edited_plan(search: str) -> bool:
    """Whether a report's ``search`` is a saved plan applied with edited entries or budget ("plan (2 layers
    edited)", "plan (budget edited)"):
    its budget gap is the edits' doing; an unedited plan's is the rank steps', as when it was made."""
    return search.startswith("plan (")


def budget_gap(achieved: float, keep: float, rank_multiple: int, steps: str, *, applied: bool = False,
               from_plan: bool = False, speed_filtered: bool = False) -> tuple[Optional[str], Optional[str]]:
    """``(warning, note)`` for a plan below the requested ``keep`` (``steps``: "rank", "width" or "width and
    rank"): more than :data:`OVERSHOOT_WARNING` below with coarse steps (``rank_multiple > 1``) is a
    warning, the model being cut more than asked; more than 1 % below, a note; else neither. Above ``keep``:
    a note for compress (constants still read stay beside their replacements), a warning for a saved plan
    whose decisions keep more than its budget.
    ``applied``: a saved plan's edited decisions (or a plan with an edited budget) were applied, so the
    advice is about the plan;
    ``from_plan``: a saved plan was applied (a plan keeping more than its budget was edited);
    ``speed_filtered``: the latency tables dropped options no faster than dense (--order auto, --speed-check),
    which then make the steps coarse."""
    unit = {"rank": "a rank or a group count", "width": "one channel"}.get(steps, "a rank, a group count or a channel")
    lower = "make the plan again with a lower --rank-multiple" if from_plan else "lower --rank-multiple"
    gap = keep - achieved
    if achieved > keep * OVER_BUDGET and not (applied or from_plan):
        return None, (f"achieved {achieved:.4f}, above the requested {keep:g}: the written model holds more than "
                      "the allocation counted (constants that other nodes still read stay beside their "
                      "replacements)")
    if achieved > keep * OVER_BUDGET:  # a saved plan's decisions keep more than its budget: edited, or the budget was
        return (f"achieved {achieved:.4f}, above the plan's requested {keep:g}: its decisions keep more than its "
                "budget (entries or the budget edited), so the written model does not meet it; lower ranks or widths "
                "in the plan, or set its budget to what they keep"), None
    if applied:
        if gap > OVERSHOOT_WARNING * keep:
            return (f"achieved {achieved:.4f}, well below the plan's requested {keep:g}: its decisions (as edited) "
                    "cut more than its budget; raise ranks or widths in the plan, or set entries to \"dense\""), None
        return None, (f"achieved {achieved:.4f} is more than 1 % below the plan's requested {keep:g}"
                      if gap > 0.01 * keep else None)
    if gap > OVERSHOOT_WARNING * keep and speed_filtered:
        return (f"achieved {achieved:.4f}, well below the requested {keep:g}: the latency tables kept only the "
                "options measured faster than their dense layer (--order auto, --speed-check), and among them the "
                "plan with the smallest largest error under the budget is this one; the model is cut more than "
                "asked, so drop --order auto and --speed-check, or ask for the figure achieved knowingly"), None
    if gap > OVERSHOOT_WARNING * keep and rank_multiple > 1:
        return (f"achieved {achieved:.4f}, well below the requested {keep:g}: with {steps} steps of {rank_multiple} "
                "(--rank-multiple), the plan with the smallest largest error under the budget is this one (no plan "
                f"closer to the budget has a smaller largest error); the model is cut more than asked, so {lower} "
                "or ask for the figure achieved knowingly"), None
    if gap > 0.01 * keep:
        why = (f"the {steps} steps are too coarse here ({lower} to get closer)" if rank_multiple > 1
               else "the plan with the smallest error costs less than the budget allows (each layer's options cost "
                    f"in steps of {unit})")
        return None, f"achieved {achieved:.4f} is more than 1 % below the requested {keep}: {why}"
    return None, None


def _harm_warnings(report: CompressionReport, prepared: _Prepared, data_aware: bool,
                   stats: Optional[Mapping] = None) -> tuple[str, ...]:
    """Say, before anything is written, when a plan is likely to break the model (``stats``: the
    calibration statistics by layer, whose vector counts are checked against each layer's inputs)."""
    warnings = []
    applied = report.search.startswith("plan")  # a saved plan applied: the advice is about its entries
    full_rank = {layer.name: min(layer.matrix_shape) for layer in prepared.layers}
    tiny = [row for row in report.layers if row.groups and full_rank.get(row.name, 0) >= 32
            and row.rank * row.groups < TINY_RANK_FRACTION * full_rank[row.name]
            and not row.error <= NEGLIGIBLE_ERROR]  # (a weight of that rank, or near it, loses nothing)
    if tiny:
        warnings.append(f"{len(tiny)} {'layer keeps' if len(tiny) == 1 else 'layers keep'} under "
                        f"{TINY_RANK_FRACTION:.0%} of {'its' if len(tiny) == 1 else 'their'} full rank (" + ", ".join(
            f"'{row.name}' rank {row.rank * row.groups} of {full_rank[row.name]}" for row in tiny[:3])
            + "): a layer this thin (a classifier or vocabulary head above all) rarely survives; leave it dense with "
            + ("\"option\": \"dense\" in the plan" if applied else "--exclude"))
    measured = (report.latency or {}).get("measured_ratio") if report.target == "latency" else None
    # a measured latency plan is judged by what it measured (below), not by the tables' prediction
    overshoot = None if measured is not None else \
        budget_gap(report.achieved, report.requested, report.rank_multiple, "rank",
                   applied=_edited_plan(report.search), from_plan=report.search.startswith("plan"),
                   speed_filtered=bool((report.latency or {}).get("slow_ranks_dropped")))[0]
    if overshoot:
        warnings.append(overshoot)
    from .latency import SETTLE_TOLERANCE

    if measured is not None and measured > report.requested * (1 + SETTLE_TOLERANCE):
        when = " when the plan was made" if str(report.latency.get("source", "")).startswith("the plan") else ""
        warnings.append(f"--keep-latency {report.requested:g} not reached in measurement: the model written measured "
                        f"{measured:.3f} of the dense model's time{when} ("
                        + (f"the tables predicted {report.achieved:.3f}" if math.isfinite(report.achieved) else
                           "no prediction: a layer's time is not recorded") + "); the "
                        "ops that do not change or the layers' pairs save less here than timed alone")
    inputs = {layer.name: layer.matrix_shape[1] for layer in prepared.layers}
    starved = [(row.name, stats[row.name].count, inputs[row.name]) for row in report.layers
               if row.groups and stats and row.name in stats and row.name in inputs
               and stats[row.name].count < inputs[row.name]]
    if starved:
        name, count, size = starved[0]
        prior = ("rest on the shrinkage prior" if stats[name].shrinkage > 0 else
                 "see only the directions the calibration inputs span (no shrinkage)")
        warnings.append(f"{len(starved)} factorized {'layer was' if len(starved) == 1 else 'layers were'} fitted "
                        "on fewer calibration vectors than their inputs "
                        f"(first: '{name}', {count} vectors for {size}): their factors and reported errors {prior}, "
                        "and held-out errors can be larger (more so with --sequential); give more calibration inputs")
    deep = report.error_measure != "rank-fraction" and report.max_error > DEEP_CUT_ERROR
    moved = report.random_output_change is not None and not report.random_output_change < MOVED_OUTPUTS
    flipped = report.most_changed_labels
    flipped = flipped if flipped is not None and not flipped[1] / flipped[2] < MOVED_LABELS else None
    if not data_aware and (deep or moved or flipped):
        # (rank-fraction, the uniform svd baseline's measure, is the share of rank cut, not an error)
        signs = ([f"the plan cuts deep (largest predicted layer error {report.max_error:.2f})"] if deep else []) + (
            [f"the outputs moved far from the original's (mean relative change {report.random_output_change:.2f} "
             + (f"of output '{report.random_output}' " if report.random_output else "")
             + f"on {report.random_samples} random inputs)"] if moved else []) + (
            [f"{flipped[1]} of {flipped[2]} values of output '{flipped[0]}' changed on {report.random_samples} "
             "random inputs"] if flipped else [])
        warnings.append(f"no calibration data, and {' and '.join(signs)}: expect a large accuracy loss; " + (
                            "make a data-aware plan (onnx-alds plan ... --calibration FILE.npz or "
                            "--calibration-images DIR with a few hundred real inputs)" if applied else
                            "give a few hundred real inputs (--calibration FILE.npz or --calibration-images DIR)")
                        + " and check with --validate")
    return tuple(warnings)


def _uncalibrated_reason(layer: Layer) -> Optional[str]:
    """Why calibration cannot measure this layer's inputs (None when it can)."""
    if layer.subgraph:
        return f"inside {layer.subgraph}: calibration cannot read its inputs (compress data-free to factorize it)"
    return None


def _allocation_factorized(chosen: Sequence[Layer], allocation: Allocation) -> set[str]:
    """The names of the layers ``allocation`` factorizes (groups > 0)."""
    return {layer.name for layer, choice in zip(chosen, allocation.choices) if choice.groups}


def _pointwise_first_note(spatial: Sequence[Layer], factorized: set[str]) -> str:
    """--order pointwise-first's note on what was decided: how many of the factorized k×k convs go
    pointwise-first, why the others cannot (strided, output size not the input's, or too few input channels
    for a rank of the multiple to shrink them that way), and how many stay dense."""
    chosen = [layer for layer in spatial if layer.name in factorized]
    first = [layer for layer in chosen if layer.order == POINTWISE_FIRST]
    other = [layer for layer in chosen if layer.order != POINTWISE_FIRST]
    dense = len(spatial) - len(chosen)
    if not chosen:
        return (f"order pointwise-first: no k×k conv is factorized here ({dense} kept dense by the allocation), so "
                "the order changes nothing")
    note = f"order pointwise-first: {len(first)} of the {len(chosen)} factorized k×k convs are pointwise-first"
    if other:
        why = ("strided, or its output is not the input's size" if not other[0].pointwise_first_ok
               else "too few input channels for a rank of the multiple to shrink it pointwise-first")
        note += f"; the other {len(other)} spatial-first (first: '{other[0].name}': {why})"
    if dense:
        note += f"; {dense} more k×k conv{'s stay' if dense > 1 else ' stays'} dense (the allocation's choice)"
    return note


def _pointwise_first_if_it_shrinks(layer: Layer, *, max_groups: int, rank_multiple: int) -> Layer:
    """``layer`` pointwise-first where it can be and a rank of ``rank_multiple`` shrinks it that way; else
    as it is (an RGB stem conv: 3 input channels leave pointwise-first no useful rank, spatial-first has)."""
    if not layer.pointwise_first_ok:
        return layer
    ordered = with_order(layer, POINTWISE_FIRST, max_groups=max_groups, channel_multiple=rank_multiple)
    rows, cols = ordered.matrix_shape
    return ordered if ordered.groups and (rows * cols - 1) // (rows + cols) >= rank_multiple else layer


def _check_rank_multiple(chosen: Sequence[Layer], rank_multiple: int, unchanged_ops: str = "",
                         unreachable: Optional[tuple[str, float, str]] = None) -> None:
    """Refuse a rank multiple that leaves no layer a rank to use, from the shapes alone (before any data is
    read): no layer's ``g = 1`` pair at rank ``rank_multiple`` is smaller than it (grouped pairs cost more per
    rank), which is when every error table would be empty (:func:`onnx_alds.spectra.error_table`).
    ``unchanged_ops``: the quantized or fused layers left as they are, named in the error (a model saved by
    ONNX Runtime at level ALL keeps only its small head factorizable: a smaller multiple is not the fix);
    ``unreachable``: (the budget flag, the least ratio any rank reaches, its unit) where no smaller multiple reaches
    the budget either, so the advice is a larger keep."""
    largest = max(((f * c - 1) // (f + c) for f, c in (layer.matrix_shape for layer in chosen)),
                  default=0)  # the largest r with r·(f + c) < f·c (always below min(f, c))
    if rank_multiple > 1 and rank_multiple > largest:
        others = (f"; the model's other layers stay as they are: {unchanged_ops}" if unchanged_ops else "")
        which = "the one factorizable layer" if len(chosen) == 1 else "any factorizable layer"
        fix = (f"use a smaller multiple, e.g. --rank-multiple {max(1, 2 ** int(np.log2(max(1, largest))))}"
               if unreachable is None else
               f"and no smaller multiple reaches {unreachable[0]} either (every factorizable layer at rank 1 keeps "
               f"{unreachable[1]:.{4 if unreachable[1] < 0.999 else 7}f} of the {unreachable[2]}): ask for a keep "
               "above that, with a smaller multiple (at rank 1, --rank-multiple 1)")
        raise BudgetError(f"--rank-multiple {rank_multiple} leaves no layer a rank that would shrink it (the largest "
                          f"rank that shrinks {which} is {largest}{others}); {fix}")


def _slow_layers_note(chosen: Sequence[Layer], unfiltered: Sequence[ErrorTable], tables: Sequence[ErrorTable],
                      speed: Any, target: str) -> str:
    """Why the lowest reachable ratio is high when the latency tables removed options: how many layers
    had a factorization (``unfiltered``) and have none left (``tables``) that measured faster than their
    dense layer (a layer no rank shrinks had none to remove and is not counted)."""
    stuck = [layer.name for layer, before, after in zip(chosen, unfiltered, tables)
             if any(len(o.ranks) for o in before.options) and not any(len(o.ranks) for o in after.options)]
    if not stuck:
        return ""
    return (f"; {len(stuck)} of {len(chosen)} factorizable layers have no factorization measured faster than "
            f"their dense layer on {speed.provider} at batch {speed.batch} (--order auto and --speed-check keep "
            "only faster options) and stay dense" + ("" if target == "latency" else
                                                    " (without --order auto and --speed-check they may be factorized)"))


def unreachable_because(prepared: _Prepared, target: str, rank_multiple: int = 1) -> str:
    """What keeps a budget out of reach beyond the layers' lowest ranks, for its error message: the layers
    left dense (their share of the total, the reasons holding the most), the layers no rank of
    ``rank_multiple`` shrinks (:func:`no_shrinking_rank`), the weights outside every layer, and the ops that
    stay as they are; each part starts with "; ", empty when none applies."""
    total = float(prepared.params_total if target == "params" else prepared.macs_total or 0)
    if total <= 0:
        return ""
    skipped = [layer for layer in prepared.layers if not layer.compressible]
    # a weight shared by several layers is stored, and counted, once (also when each reads it through
    # its own Identity/Cast/Transpose chain)
    producers = {output: node for _, graph in iter_graphs(prepared.model.graph) for node in graph.node
                 for output in node.output}
    counted = (list({chain_source(layer.weight, producers): layer for layer in skipped}.values())
               if target == "params" else skipped)

    def cost(layer: Layer) -> float:
        return layer.params if target == "params" else (layer.macs or 0)

    counted = [layer for layer in counted if cost(layer) > 0]  # (a product of constants runs no MACs)
    held = sum(cost(layer) for layer in counted)
    if target == "params":  # what the file stores for them, each stored constant once (one int8 tensor behind
        constants = prepared.constants  # two DequantizeLinear nodes, U and V in two products)
        sources = set().union(*(stored_sources(chain_source(layer.weight, producers), producers, constants)
                                for layer in counted))
        held = min(held, sum(int(np.prod(constants[name].dims, dtype=np.int64)) for name in sources)) \
            if sources else held
    why = ""
    if counted and held:
        by_reason: dict[str, float] = {}  # the reasons that hold the most first
        for layer in counted:  # (one reason for the layers sharing a weight, whichever other reader each names)
            reason = layer.skip_reason.split(ALSO_READ_BY)[0].split(" (through ")[0]  # (one reason, however reached)
            by_reason[reason] = by_reason.get(reason, 0) + cost(layer)
        reasons = sorted(by_reason, key=lambda reason: -by_reason[reason])
        left = sum(1 for layer in skipped if cost(layer) > 0)
        why = (f"; {left} {'layer' if left == 1 else 'layers'} left dense "
               f"{'holds' if left == 1 else 'hold'} {held / total:.0%} of them ({'; '.join(reasons[:2])}"
               f"{'; ...' if len(reasons) > 2 else ''})")
    unshrinkable = [(layer, reason) for layer in prepared.layers if layer.compressible and cost(layer) > 0
                    and (reason := no_shrinking_rank(layer, rank_multiple))]
    if unshrinkable:
        first, reason = max(unshrinkable, key=lambda item: cost(item[0]))
        share = sum(cost(layer) for layer, _ in unshrinkable) / total
        why += (f"; {len(unshrinkable)} {'layer' if len(unshrinkable) == 1 else 'layers'} with no rank of the "
                f"multiple {rank_multiple} that shrinks {'it' if len(unshrinkable) == 1 else 'them'} "
                f"{'holds' if len(unshrinkable) == 1 else 'hold'} {share:.0%} of them (the largest, "
                f"'{first.name}': {reason})")
    if target == "params":
        outside = total - sum(layer.params for layer in prepared.layers)
        if outside > 0.05 * total:
            why += (f"; {outside / total:.0%} of the weights are outside the layers' weight matrices (embeddings, "
                    "biases, norms, other ops' weights, batched or loop-carried weights)")
    else:
        outside = total - sum(layer.macs or 0 for layer in prepared.layers)
        if outside > 0.05 * total:
            ops = sorted({node.op_type for _, graph in iter_graphs(prepared.model.graph) for node in graph.node
                          if is_counted_node(node) and not is_layer_node(node)})
            why += (f"; {outside / total:.0%} of the MACs are in nodes that are not factorizable layers"
                    + (f" ({', '.join(ops)})" if ops else "") + ", left as they are")
    if prepared.unchanged_ops:
        why += f"; the model's other layers stay as they are: {prepared.unchanged_ops}"
    return why


def _allocate(prepared: _Prepared, chosen: Sequence[Layer], tables: Sequence[ErrorTable], target: str,
              keep: float, method: str, seed: int, rank_multiple: int = 1, slow_note: str = "") -> Allocation:
    """Budget of the factorizable layers (the target less what stays fixed), then the allocation.
    ``slow_note``: why options are missing (layers the latency tables left with none), for the error."""
    total, scales, fixed, budget = _layer_budget(prepared, chosen, target, keep)
    if keep >= 1.0:  # keep everything: every layer dense (exactly low-rank weights would tie at error 0 lower)
        dense = tuple(LayerChoice(DENSE, 0, float(layer.params) * scale, 0.0) for layer, scale in zip(chosen, scales))
        return Allocation(dense, budget, float(sum(choice.cost for choice in dense)), 0.0, "keep 1: every layer dense")
    cheapest = minimum_cost(tables, scales)
    if budget < cheapest - 1e-9:
        raise BudgetError(
            f"--keep-{target} {keep} cannot be reached: the smallest reachable ratio is "
            f"{ratio_at_least((fixed + cheapest) / total)} (every factorizable layer at its lowest rank"
            f"{unreachable_because(prepared, target, rank_multiple)}{slow_note}); "
            "ask for at least that" + (f", or lower --rank-multiple (now {rank_multiple}; 1 gives the finest steps)"
                                       if rank_multiple > 1 and _finer_ranks_reach(chosen, scales, fixed, total, keep)
                                       else "")
        )
    if method == "l-rank":
        return allocate_lrank(tables, scales, budget)
    return allocate_minmax(tables, scales, budget, search_groups=method == "alds", seed=seed)


AUTO_ORDER_HARM = 2.0  # --order auto's largest predicted layer error this many times spatial-first's: a warning


def _auto_order_warning(prepared: _Prepared, chosen: Sequence[Layer], one_order_tables: Sequence[ErrorTable],
                        speed_info, options: CompressOptions, allocation: Allocation) -> Optional[str]:
    """Under a params or MACs budget ``--order auto`` gives each k×k conv the order its pairs time faster,
    whatever that order costs in error. The warning, when the largest predicted layer error is more than
    :data:`AUTO_ORDER_HARM` times what the same budget allocates with every conv in its own order (the
    same options, the same drop of options not faster than dense); None otherwise, or when that budget
    cannot be reached without the switched orders."""
    from .latency import prune_slow

    switched = [layer.name for layer, choice in zip(chosen, allocation.choices)
                if choice.groups != DENSE and choice.order == POINTWISE_FIRST]
    if not switched:
        return None
    tables = [table if speed_info.tables.get(layer.name) is None
              else prune_slow(layer, table, speed_info.tables[layer.name], options.speed.min_speedup)
              for layer, table in zip(chosen, one_order_tables)]
    budget, search = options.budget, options.search
    try:
        own = _allocate(prepared, chosen, tables, budget.target, budget.keep, search.method, search.seed,
                        search.rank_multiple)
    except BudgetError:
        return None
    if allocation.max_error <= max(AUTO_ORDER_HARM * own.max_error, 0.01):  # (0.01: both negligible)
        return None
    convs = "k×k conv" if len(switched) == 1 else f"{len(switched)} k×k convs"
    return (f"--order auto gave {convs} the pointwise-first order because it times faster "
            f"(first: '{switched[0]}'); under --keep-{budget.target} that raises the largest predicted layer error to "
            f"{allocation.max_error:.3g}, against {own.max_error:.3g} with --order spatial-first: expect less "
            "accuracy; use --order spatial-first, or give the budget in time (--keep-latency), where each conv's "
            "order is chosen by error per µs")


def _compression_report(prepared: _Prepared, chosen: Sequence[Layer], allocation: Allocation, *, target: str,
                        keep: float, method: str, measure: str, seed: int, rank_multiple: int,
                        seconds: dict[str, float], calibration: Optional[str], speed=None) -> CompressionReport:
    decisions = {layer.name: choice for layer, choice in zip(chosen, allocation.choices)}
    rows = []
    params_saved = macs_saved = 0
    for layer in prepared.layers:
        choice = decisions.get(layer.name)
        groups, rank, error = (choice.groups, choice.rank, choice.error) if choice else (DENSE, 0, 0.0)
        matrix_rows, matrix_cols = layer.matrix_shape
        params_after = layer.params if groups == DENSE else rank * (groups * matrix_rows + matrix_cols)
        if groups == DENSE:  # as it is (a product of two run-time tensors has no params but has MACs)
            macs_after = layer.macs
        else:
            macs_after = None if layer.positions is None else params_after * layer.positions
        params_saved += layer.params - params_after
        if layer.macs is not None and macs_after is not None:
            macs_saved += layer.macs - macs_after
        times = speed.layer_times(layer.name, groups, rank, layer.order) if speed is not None else None
        reason = layer.skip_reason
        if reason is None and groups == DENSE:
            reason = no_shrinking_rank(layer, rank_multiple)
        rows.append(LayerReport(layer.name, layer.op, layer.weight_shape, groups, rank, layer.params, params_after,
                                layer.macs, macs_after, error, reason,
                                order=layer.order if groups != DENSE else None, weight=layer.weight,
                                **(dict(zip(("time_dense_us", "time_us", "time_measured"), times)) if times else {})))
    params_after_total = prepared.params_total - params_saved
    macs_after_total = None if prepared.macs_total is None else prepared.macs_total - macs_saved
    achieved = (params_after_total / prepared.params_total if target == "params"
                else speed.achieved(decisions) if target == "latency"
                else (macs_after_total or 0) / float(prepared.macs_total or 1))
    notes = list(prepared.notes)
    latency = speed.summary(decisions) if speed is not None else None
    measured = target == "latency" and (latency or {}).get("measured_ratio") is not None  # said by the whole-model check
    gap_note = None if measured else budget_gap(achieved, keep, rank_multiple, "rank",  # its warning: _harm_warnings
                                                applied=_edited_plan(allocation.search),
                                                from_plan=allocation.search.startswith("plan"))[1]
    if gap_note:
        notes.append(gap_note)
    return CompressionReport(
        layers=tuple(rows), method=method, data_aware=calibration is not None, calibration=calibration,
        target=target, requested=keep, achieved=achieved, params_before=prepared.params_total,
        params_after=params_after_total, macs_before=prepared.macs_total, macs_after=macs_after_total,
        max_error=allocation.max_error, error_measure=measure, search=allocation.search, seed=seed,
        rank_multiple=rank_multiple, seconds=dict(seconds), notes=tuple(notes), latency=latency)


def no_shrinking_rank(layer: Layer, rank_multiple: int) -> Optional[str]:
    """Why no rank aligned to ``rank_multiple`` (> 1) shrinks ``layer`` at any of its candidate group counts (rank
    ``m`` at ``g`` groups takes ``m·(g·f + c·κ)`` weights, at least its own), else None."""
    rows, cols = layer.matrix_shape
    if rank_multiple > 1 and layer.groups and all(rank_multiple * (g * rows + cols) >= layer.params
                                                  for g in layer.groups):
        taken = rank_multiple * (rows + cols)
        return (f"rank {rank_multiple} (the rank multiple) would take {taken} weights, "
                f"{'as many as' if taken == layer.params else 'more than'} its {layer.params}")
    return None


def analyze(model: ModelLike, *, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
            exclude: Sequence[str] = (), max_groups: int = 16,
            rank_fractions: Sequence[float] = (0.25, 0.5, 0.75), rank_multiple: int = 1) -> AnalysisReport:
    """Every Conv/Gemm/MatMul layer: size, MACs, candidate groups, spectral error at a few ranks.

    ``rank_multiple`` restricts the candidate groups and the smallest reachable ratios as ``compress``
    with the same value would (the CLI's default is 16, as for ``compress``)."""
    from .options import SearchOptions

    exclude = SearchOptions(rank_multiple=rank_multiple, max_groups=max_groups, exclude=exclude).exclude  # checks
    if isinstance(rank_fractions, (str, bytes)) or not isinstance(rank_fractions, Iterable):
        raise BudgetError(f"rank_fractions={rank_fractions!r}: give fractions of the full rank in (0, 1], "
                          "e.g. (0.25, 0.5, 0.75)")
    rank_fractions = tuple(rank_fractions)
    odd = [f for f in rank_fractions if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 < f <= 1]
    if odd or not rank_fractions:
        raise BudgetError(f"rank_fractions {'has ' + repr(odd[0]) if odd else 'is empty'}; give fractions of the "
                          "full rank in (0, 1], e.g. (0.25, 0.5)")
    # each fraction's column (and dict key) is its text
    same = next((key for key, count in Counter(f"{fraction:g}" for fraction in rank_fractions).items() if count > 1),
                None)
    if same is not None:
        raise BudgetError(f"rank_fractions gives {same} twice (as printed: fractions that differ by less than 6 digits "
                          "print alike); give each fraction once")
    prepared = _prepare(model, input_shapes=input_shapes, exclude=exclude, max_groups=max_groups, need_macs=False,
                        channel_multiple=rank_multiple)
    constants = prepared.constants
    rows = []
    # a layer no aligned rank shrinks is not factorizable at this rank multiple (as compress reports it)
    unshrinkable = {layer.name: reason for layer in prepared.layers
                    if layer.compressible and (reason := no_shrinking_rank(layer, rank_multiple))}
    compressible = [layer for layer in prepared.layers if layer.compressible and layer.name not in unshrinkable]
    tables = []
    for layer in prepared.layers:
        errors: dict[str, float] = {}
        if layer.compressible:  # (the spectral errors of a layer no aligned rank shrinks are shown too)
            spectra = layer_spectra(folded_weight(layer, constants), layer.groups)
            spectrum = spectra[1][0]
            limit = len(spectrum)
            for fraction in rank_fractions:
                rank = max(1, int(round(fraction * limit)))
                errors[f"{fraction:g}"] = float(spectrum[rank] / spectrum[0]) if rank < limit and spectrum[0] > 0 else 0.0
        if layer.compressible and layer.name not in unshrinkable:
            tables.append(error_table(spectra, layer.out_features, layer.cols, groups=layer.groups,
                                      rank_multiple=rank_multiple))
        candidate = layer.compressible and layer.name not in unshrinkable
        rows.append(LayerAnalysis(layer.name, layer.op, layer.weight_shape, layer.params, layer.macs,
                                  layer.groups if candidate else (), errors,
                                  layer.skip_reason or unshrinkable.get(layer.name)))
    params_compressible = sum(layer.params for layer in compressible)
    min_params = prepared.params_total - params_compressible + minimum_cost(tables, [1.0] * len(tables))
    macs_compressible = min_flops = None
    if prepared.macs_total:
        scales = [float(layer.positions or 0) for layer in compressible]
        macs_compressible = int(sum(layer.params * s for layer, s in zip(compressible, scales)))
        min_flops = (prepared.macs_total - macs_compressible + minimum_cost(tables, scales)) / prepared.macs_total
    return AnalysisReport(tuple(rows), prepared.params_total, params_compressible, prepared.macs_total,
                          macs_compressible, min_params / prepared.params_total if prepared.params_total else 1.0,
                          min_flops, tuple(prepared.notes))
