"""Input statistics of every layer, measured by running the model in ONNX Runtime (CPU).

For a layer with folded weight ``W`` (``f × c·κ``, columns channel-major, then kernel positions in
C order, exactly as ``weight.reshape(f, c·κ)``), the *vectors the weight multiplies* are

- Conv: the unfolded (im2col) patches of its input, one per output position and sample, honouring
  ``strides``, ``pads``/``auto_pad`` (``SAME_UPPER``, ``SAME_LOWER``, ``VALID``) and ``dilations``
  in 1-D, 2-D and 3-D; zero padding contributes zeros to a patch;
- Gemm: the rows of ``A`` (the columns when ``transA = 1``);
- MatMul: the rows of ``x`` flattened over all leading dims.

Over the ``n`` vectors of the calibration set we accumulate (float64)

- the second moment ``C = E[x xᵀ] = (1/n) Σ x xᵀ`` and the mean ``μ = E[x]``;
- for sequential calibration, where ``x̃`` is what the layer sees in a model whose earlier layers are
  already compressed and ``x`` what it sees in the original model (the same samples), the moments of
  ``x̃`` (``C̃``, ``μ̃``) and the cross moment ``M = E[x x̃ᵀ]``.

How it runs. One ONNX Runtime session per model (per call) with every needed layer input added as a
graph output (layers that share an input are served once). The calibration set is streamed in batches
of ``batch_size`` samples; after each run the returned tensors are processed one layer at a time and
dropped. Patches are never materialized for a whole batch: they are built in chunks of at most
``CHUNK_ELEMENTS`` numbers (a slice of samples × output rows) and folded into ``C`` with one
``chunkᵀ chunk`` product each.

Cost. Time: the model's own forward pass over the calibration set, plus for each layer
``2·n·(c·κ)²`` flops for its Gram matrix (``n`` = samples × output positions), i.e. about
``2·c·κ/f`` times the layer's own MACs; sequential calibration runs the original and the partially
compressed model once more per *wave* of mutually independent layers. Memory: the statistics, one
``(c·κ)²`` float64 matrix per layer (two with a cross moment), plus one batch's worth of all requested
activations (``batch_size × Σ activation sizes``), plus one patch chunk (``CHUNK_ELEMENTS`` float64).
Nothing grows with the number of calibration samples.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from .errors import InputDataError, UnsupportedModelError
from .layers import Layer
from .model_io import graph_inputs

__all__ = [
    "CHUNK_ELEMENTS",
    "LayerStatistics",
    "Unfolder",
    "unfolder_for",
    "collect_statistics",
    "collect_second_moments",
    "independent_waves",
]

CHUNK_ELEMENTS = 1 << 22  # numbers per patch chunk (32 MiB in float64)


@dataclass(frozen=True)
class LayerStatistics:
    """Moments of the vectors a layer's folded weight multiplies (see the module docstring).

    ``second_moment`` and ``mean`` describe what the layer sees in the model that was run (the
    compressed prefix under sequential calibration); ``cross`` (``E[x x̃ᵀ]``) and ``reference_mean``
    (``E[x]``) are set only when a reference (original) model was run beside it.
    """

    count: int
    second_moment: np.ndarray
    mean: np.ndarray
    cross: Optional[np.ndarray] = None
    reference_mean: Optional[np.ndarray] = None
    fourth_moment: Optional[float] = None  # E[‖x̃‖⁴], for the shrinkage estimate
    shrinkage: float = 0.0  # the weight α of the identity target, once :meth:`shrunk` applied it

    def shrinkage_weight(self) -> float:
        """Ledoit–Wolf weight ``α`` of the scaled identity in ``α·μI + (1 − α)·C`` (0 when unknown).

        With ``n`` vectors, ``C`` their second moment, ``μ = tr C / d``, ``δ² = ‖C − μI‖²`` and
        ``β² = (E‖x‖⁴ − ‖C‖²) / n`` (the estimated squared error of ``C`` itself), ``α = min(β², δ²) / δ²``.
        Few vectors for many dimensions (a Gemm after global pooling calibrated on 48 samples: 48
        vectors in 1280 dimensions) give a large ``α``; many give ``α ≈ 0``. Overlapping conv patches are
        not independent, so for a Conv this underestimates ``α``; it is there for the starved layers.
        """
        if self.fourth_moment is None or self.count < 1:
            return 0.0
        moment = self.second_moment
        size = moment.shape[0]
        mu = float(np.trace(moment)) / size
        frob = float(np.sum(moment * moment))
        delta = frob - mu * mu * size  # ‖C − μI‖² = ‖C‖² − 2μ·tr C + μ²d, with tr C = μd
        beta = max(0.0, (self.fourth_moment - frob) / self.count)
        if delta <= 0.0:
            return 0.0
        return float(min(beta, delta) / delta)

    def shrunk(self) -> "LayerStatistics":
        """The same statistics with ``C``, ``M`` shrunk toward ``μI`` by :meth:`shrinkage_weight`
        (means unchanged): the whitening then cannot trust directions the data has not shown."""
        alpha = self.shrinkage_weight()
        if alpha <= 0.0:
            return self

        def shrink(matrix: np.ndarray) -> np.ndarray:
            size = matrix.shape[0]
            return (1.0 - alpha) * matrix + (alpha * float(np.trace(matrix)) / size) * np.eye(size)

        return replace(self, second_moment=shrink(self.second_moment),
                       cross=None if self.cross is None else shrink(self.cross), shrinkage=alpha)


@dataclass(frozen=True)
class Unfolder:
    """Turns one activation tensor into the rows (vectors) the folded weight multiplies."""

    op: str
    cols: int
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    pads: tuple[int, ...] = ()
    trans_a: bool = False

    def conv_pads(self, spatial: Sequence[int]) -> tuple[list[int], list[int]]:
        """(begin, end) zero padding per spatial axis for an input of size ``spatial``."""
        dims = len(self.kernel)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
                out = -(-size // s)
                total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
                small, large = total // 2, total - total // 2
                begin.append(small if self.auto_pad == "SAME_UPPER" else large)
                end.append(large if self.auto_pad == "SAME_UPPER" else small)
            return begin, end
        if self.auto_pad == "VALID":
            return [0] * dims, [0] * dims
        pads = list(self.pads) if self.pads else [0] * (2 * dims)
        return pads[:dims], pads[dims:]

    def rows(self, x: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        """The vectors as float64 ``(m, cols)`` chunks; the chunking depends on ``x.shape`` only."""
        if self.op == "Conv":
            yield from self._conv_rows(x, chunk_elements)
            return
        if self.op == "Gemm":
            matrix = x.T if self.trans_a else x
        else:
            matrix = x.reshape(-1, x.shape[-1]) if x.ndim >= 1 else x.reshape(1, 1)
        if matrix.ndim != 2 or matrix.shape[1] != self.cols:
            raise UnsupportedModelError(
                f"a {self.op} input of shape {x.shape} does not give vectors of {self.cols} numbers; "
                "check the model's input shapes")
        step = max(1, chunk_elements // self.cols)
        for start in range(0, matrix.shape[0], step):
            yield np.asarray(matrix[start:start + step], dtype=np.float64)

    def _conv_rows(self, x: np.ndarray, chunk_elements: int) -> Iterator[np.ndarray]:
        dims = len(self.kernel)
        if x.ndim != dims + 2:
            raise UnsupportedModelError(f"a Conv input of shape {x.shape} does not fit its {dims}-D kernel; "
                                        "check the model")
        samples, channels = x.shape[:2]
        spatial = x.shape[2:]
        begin, end = self.conv_pads(spatial)
        padded = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)))
        out = [(spatial[i] + begin[i] + end[i] - ((self.kernel[i] - 1) * self.dilations[i] + 1)) // self.strides[i] + 1
               for i in range(dims)]
        if min(out) < 1:
            return
        positions_per_row = int(np.prod(out[1:])) if dims > 1 else 1
        per_row = self.cols * positions_per_row  # numbers per (sample, first output index)
        rows_per_chunk = max(1, min(out[0], chunk_elements // max(1, per_row)))
        samples_per_chunk = max(1, chunk_elements // max(1, per_row * out[0])) if rows_per_chunk == out[0] else 1
        offsets = list(itertools.product(*[range(k) for k in self.kernel]))
        kernel_size = len(offsets)
        for s0 in range(0, samples, samples_per_chunk):
            s1 = min(samples, s0 + samples_per_chunk)
            for o0 in range(0, out[0], rows_per_chunk):
                o1 = min(out[0], o0 + rows_per_chunk)
                shape = [o1 - o0] + out[1:]
                patches = np.empty((s1 - s0, channels, kernel_size, *shape), dtype=np.float64)
                for index, offset in enumerate(offsets):
                    where: list = [slice(s0, s1), slice(None)]
                    for axis in range(dims):
                        first = offset[axis] * self.dilations[axis] + (o0 * self.strides[axis] if axis == 0 else 0)
                        count = shape[axis]
                        where.append(slice(first, first + (count - 1) * self.strides[axis] + 1, self.strides[axis]))
                    patches[:, :, index] = padded[tuple(where)]
                flat = patches.reshape(s1 - s0, channels * kernel_size, -1)
                yield np.ascontiguousarray(np.moveaxis(flat, 1, 2)).reshape(-1, channels * kernel_size)


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def unfolder_for(layer: Layer, node: onnx.NodeProto) -> Unfolder:
    """The :class:`Unfolder` of ``layer`` (its graph ``node`` gives the conv attributes)."""
    if layer.op == "Conv":
        kernel = tuple(int(k) for k in layer.weight_shape[2:])
        dims = len(kernel)
        return Unfolder("Conv", layer.cols, kernel=kernel,
                        strides=tuple(_attr(node, "strides", [1] * dims)),
                        dilations=tuple(_attr(node, "dilations", [1] * dims)),
                        auto_pad=str(_attr(node, "auto_pad", "NOTSET")),
                        pads=tuple(_attr(node, "pads", [0] * (2 * dims))))
    if layer.op == "Gemm":
        return Unfolder("Gemm", layer.cols, trans_a=bool(_attr(node, "transA", 0)))
    if layer.op == "MatMul":
        return Unfolder("MatMul", layer.cols)
    raise UnsupportedModelError(f"layer '{layer.name}' is a {layer.op}; only Conv, Gemm and MatMul have input statistics")


class _Accumulator:
    """Running sums for one layer: Σ x̃x̃ᵀ, Σ x̃, Σ ‖x̃‖⁴ and, with a reference, Σ x x̃ᵀ and Σ x."""

    def __init__(self, cols: int, cross: bool) -> None:
        self.count = 0
        self.fourth = 0.0
        self.gram = np.zeros((cols, cols))
        self.total = np.zeros(cols)
        self.cross = np.zeros((cols, cols)) if cross else None
        self.reference_total = np.zeros(cols) if cross else None

    def add(self, unfolder: Unfolder, seen: np.ndarray, reference: Optional[np.ndarray]) -> None:
        if reference is not None and reference.shape != seen.shape:
            raise UnsupportedModelError(
                f"the compressed model gives a layer input of shape {seen.shape}, the original {reference.shape}; "
                "the rewrite changed a tensor shape: report this as a bug")
        references = itertools.repeat(None) if reference is None else unfolder.rows(reference)
        for chunk, ref in zip(unfolder.rows(seen), references):
            self.count += chunk.shape[0]
            self.fourth += float(np.sum(np.einsum("ij,ij->i", chunk, chunk) ** 2))
            self.gram += chunk.T @ chunk
            self.total += chunk.sum(axis=0)
            if ref is not None:
                self.cross += ref.T @ chunk
                self.reference_total += ref.sum(axis=0)

    def result(self) -> LayerStatistics:
        n = float(self.count)
        return LayerStatistics(
            self.count, self.gram / n, self.total / n,
            None if self.cross is None else self.cross / n,
            None if self.reference_total is None else self.reference_total / n, self.fourth / n)


def _element_type(model: onnx.ModelProto, layer: Layer) -> int:
    """The activation's element type: Conv/Gemm/MatMul require it to equal the weight's."""
    for tensor in model.graph.initializer:
        if tensor.name == layer.weight:
            return tensor.data_type
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == layer.weight and node.attribute:
            return node.attribute[0].t.data_type
    return onnx.TensorProto.FLOAT


def _session_with_outputs(model: onnx.ModelProto, tensors: Mapping[str, int]):
    """A CPU session of ``model`` that also returns ``tensors`` (name → element type)."""
    from .runtime import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {output.name for output in probe.graph.output}
    feeds = {spec.name for spec in graph_inputs(probe)}
    for name, elem_type in tensors.items():
        if name not in present and name not in feeds:
            probe.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
    return make_session(probe, "cpu")


def _check_feeds(model: onnx.ModelProto, batch: Mapping[str, np.ndarray]) -> None:
    names = [spec.name for spec in graph_inputs(model)]
    missing = [name for name in names if name not in batch]
    if missing:
        raise InputDataError(
            f"the calibration data lacks the graph input(s) {', '.join(repr(m) for m in missing)} "
            f"(it has {', '.join(repr(k) for k in batch) or 'nothing'}); give one array per graph input, keyed by name")


def _run(session, model: onnx.ModelProto, batch: Mapping[str, np.ndarray], wanted: Sequence[str]) -> dict[str, np.ndarray]:
    feeds = {spec.name: batch[spec.name] for spec in graph_inputs(model)}
    fetch = [name for name in wanted if name not in feeds]
    try:
        values = session.run(fetch, feeds) if fetch else []
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputDataError(f"running the model on the calibration data failed ({first}); "
                             "check that the calibration arrays match the model's inputs (dtype, shape)") from None
    result = dict(zip(fetch, values))
    result.update({name: np.asarray(feeds[name]) for name in wanted if name in feeds})
    return result


def collect_statistics(model: onnx.ModelProto, layers: Sequence[Layer], inputs, *, batch_size: int = 16,
                       reference: Optional[onnx.ModelProto] = None) -> dict[str, LayerStatistics]:
    """Moments of every layer's input vectors over ``inputs`` (an :class:`~onnx_alds.inputs.InputSet`).

    ``model`` is run; ``reference`` (the original model, when ``model`` is partially compressed) is run
    beside it on the same batches to get the cross moments ``E[x x̃ᵀ]``. The node named like each
    layer is looked up in ``reference`` if given (it is unchanged there), otherwise in ``model``.
    """
    if batch_size < 1:
        raise InputDataError(f"got calibration batch size {batch_size}; give a positive batch size such as 16")
    if not layers:
        return {}
    source_graph = (reference if reference is not None else model).graph
    nodes = {node.name: node for node in source_graph.node}
    unfolders = {}
    for layer in layers:
        if layer.name not in nodes:
            raise UnsupportedModelError(f"layer '{layer.name}' is not a node of the model; pass layers found in it")
        unfolders[layer.name] = unfolder_for(layer, nodes[layer.name])
    tensors = {layer.input: _element_type(reference if reference is not None else model, layer) for layer in layers}
    wanted = list(tensors)
    session = _session_with_outputs(model, tensors)
    reference_session = None if reference is None else _session_with_outputs(reference, tensors)
    sums = {layer.name: _Accumulator(layer.cols, reference is not None) for layer in layers}
    batches = 0
    for batch in inputs.batches(batch_size):
        _check_feeds(model, batch)
        batches += 1
        seen = _run(session, model, batch, wanted)
        ref = None if reference_session is None else _run(reference_session, reference, batch, wanted)
        for layer in layers:
            sums[layer.name].add(unfolders[layer.name], seen[layer.input], None if ref is None else ref[layer.input])
        del seen, ref
    if batches == 0:
        raise InputDataError("the calibration set holds no samples; give at least one calibration input")
    empty = [name for name, acc in sums.items() if acc.count == 0]
    if empty:
        raise UnsupportedModelError(f"layer '{empty[0]}' saw no input vectors on the calibration data "
                                    "(its output is empty); exclude it with --exclude")
    return {name: acc.result() for name, acc in sums.items()}


def collect_second_moments(model: onnx.ModelProto, layers: Sequence[Layer], inputs, *,
                           batch_size: int = 16) -> dict[str, np.ndarray]:
    """``E[x xᵀ]`` (``cols × cols``, float64) of every layer's input vectors, by layer name."""
    stats = collect_statistics(model, layers, inputs, batch_size=batch_size)
    return {name: s.second_moment for name, s in stats.items()}


def independent_waves(model: onnx.ModelProto, layers: Sequence[Layer]) -> list[list[Layer]]:
    """Split ``layers`` (graph order) into consecutive waves in which no layer's input depends on
    the output of another layer of the same wave: a wave can be calibrated in one run of the model
    with every earlier wave compressed."""
    producers: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for output in node.output:
            producers[output] = node
    layer_outputs = {layer.output: layer.name for layer in layers}
    upstream_cache: dict[str, frozenset] = {}

    def upstream(tensor: str) -> frozenset:
        """Names of the layers whose outputs ``tensor`` depends on (iterative DFS, memoized)."""
        stack = [tensor]
        while stack:
            name = stack[-1]
            if name in upstream_cache:
                stack.pop()
                continue
            node = producers.get(name)
            parents = [] if node is None else [i for i in node.input if i]
            todo = [p for p in parents if p not in upstream_cache]
            if todo:
                stack.extend(todo)
                continue
            found = set()
            for parent in parents:
                found |= upstream_cache[parent]
            if name in layer_outputs:
                found.add(layer_outputs[name])
            upstream_cache[name] = frozenset(found)
            stack.pop()
        return upstream_cache[tensor]

    waves: list[list[Layer]] = []
    current: list[Layer] = []
    current_names: set[str] = set()
    for layer in layers:
        if current and upstream(layer.input) & current_names:
            waves.append(current)
            current, current_names = [], set()
        current.append(layer)
        current_names.add(layer.name)
    if current:
        waves.append(current)
    return waves
