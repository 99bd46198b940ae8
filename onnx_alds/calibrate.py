"""Input statistics of every layer, measured by running the model in ONNX Runtime (CPU).

For a layer with folded weight ``W`` (``f × c·κ``, columns channel-major, then kernel positions in
C order, exactly as ``weight.reshape(f, c·κ)``), the *vectors the weight multiplies* are

- Conv: the unfolded (im2col) patches of its input, one per output position and sample, honouring
  ``strides``, ``pads``/``auto_pad`` (``SAME_UPPER``, ``SAME_LOWER``, ``VALID``) and ``dilations``
  in 1-D, 2-D and 3-D; zero padding contributes zeros to a patch;
- Gemm: the rows of ``A`` (the columns when ``transA = 1``);
- MatMul: the rows of ``x`` flattened over all leading dims.

Over the ``n`` vectors of the calibration set we accumulate

- the second moment ``C = E[x xᵀ] = (1/n) Σ x xᵀ`` and the mean ``μ = E[x]``;
- for sequential calibration, where ``x̃`` is what the layer sees in a model whose earlier layers are
  already compressed and ``x`` what it sees in the original model (the same samples), the moments of
  ``x̃`` (``C̃``, ``μ̃``) and the cross moment ``M = E[x x̃ᵀ]``.

How it runs. One ONNX Runtime session per model and pass with every needed layer input added as a
graph output (layers that share an input are served once). The calibration set is streamed in runs of
``batch_size`` samples, regrouped into runs of exactly ``B`` samples when the model fixes its batch to
``B`` (a remainder that does not fill a run is left out, with a note). After each run the returned
tensors are processed one layer at a time and dropped. Patches are never materialized for a whole
run: they are built in chunks of at most ``CHUNK_ELEMENTS`` numbers.

Bounds (:class:`CalibrationLimits`, defaults measured in docs/DATA_AWARE.md):

- *position sampling*: a Conv (or a MatMul over a sequence) whose input gives more than
  ``positions_per_sample`` vectors per sample contributes that many, drawn uniformly without
  replacement, seeded by (``seed``, layer name, index of the sample in the calibration set): the same
  samples give the same vectors whatever the batching; the estimate of ``C`` stays unbiased;
- *precision*: float32 (and float16) activations are multiplied and the ``d × d`` sums accumulated in
  float32 within a shard of ``shard_runs`` runs (half the memory of float64 while ONNX Runtime holds
  the model; measured error in docs/DATA_AWARE.md); each shard's sums are converted to float64 and
  added in shard order to float64 totals; means and ‖x‖⁴ sums stay float64; float64 activations, a
  layer input whose largest value is outside ``FLOAT32_PRODUCTS`` (its squares would underflow to zero
  or overflow to infinity in float32), or ``float32=False``, keep everything in float64;
- *shards*: the runs are cut into shards of ``shard_runs`` runs, whose sums (:class:`StatisticSums`)
  are computed from zero and added in order: in this process, or on Ray actors inside
  :func:`calibration_workers`, with the same bits. :func:`collect_statistic_sums`,
  :func:`merge_statistic_sums` and :func:`finalize_statistics` do the same by hand;
- *moment memory*: a layer whose float64 moment (``8·(c·κ)²`` bytes, twice with a cross moment) would
  exceed ``moment_bytes`` gets no statistics; it is named in a note and decomposed data-free;
- *activation memory*: one run's fetched layer inputs plus ONNX Runtime's intermediate tensors (sized
  by shape inference at batch 1 before any run) must fit ``activation_bytes``: the run batch of a
  dynamic-batch model is lowered to fit, and when the layer inputs of one sample (or of the fixed
  batch) still do not fit, the layers are split into several passes over the data; a single layer
  input larger than the limit for one run is an error naming the layer and the size.

Cost. Time: the model's forward pass over the calibration set (once per pass), plus for each layer
``n·(c·κ)²`` multiply-adds for its Gram matrix with ``n ≤ samples × positions_per_sample``, plus one
``d × d`` conversion and addition per shard. Memory: the float64 totals (per layer at most
``moment_bytes``), one shard's sums (half that in float32 mode; with Ray workers, up to two shards per
worker in flight), one run's activations (within ``activation_bytes`` down to one sample), ONNX Runtime's session, and one
patch chunk.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import os
import re
import signal
import sys
import zlib
from collections import deque
from contextlib import contextmanager
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from .errors import InputDataError, OnnxAldsError, UnsupportedModelError, runtime_error_text
from .inputs import dim_name_clash, one_sample_at_a_time
from .layers import Layer, constant_node_value
from .model_io import fixed_batch, graph_inputs

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_ELEMENTS",
    "CalibrationLimits",
    "DEFAULT_LIMITS",
    "LayerStatistics",
    "Unfolder",
    "unfolder_for",
    "fixed_batch",
    "calibration_runs",
    "collect_statistics",
    "collect_statistic_sums",
    "merge_statistic_sums",
    "finalize_statistics",
    "StatisticSums",
    "calibration_workers",
    "CalibrationWorkers",
    "collect_second_moments",
    "independent_waves",
]

CHUNK_ELEMENTS = 1 << 22  # numbers per patch chunk (16 MiB in float32, 32 MiB in float64)
MIB = 1 << 20
CONSTANT_TOLERANCE = 1e-9  # an input whose variance is below this fraction of its second moment is constant
# vectors whose total variance is below this fraction of their energy are one point (float32 sums round at ~1e-7)
ONE_POINT_TOLERANCE = 1e-5
# where the vectors' largest distance from the first one is tracked: one point when it is below this fraction
# of that vector's norm (float32 activations of identical samples differ at ~1e-7)
ONE_POINT_DEVIATION = 1e-5


@dataclass(frozen=True)
class CalibrationLimits:
    """Bounds on the time and memory of calibration (see the module docstring).

    ``positions_per_sample``: at most this many vectors (output positions) per sample and layer;
    None takes them all. ``moment_bytes``: the largest float64 moment kept per layer (over it the layer
    is decomposed data-free, with a note). ``activation_bytes``: the most bytes of layer inputs and
    intermediate tensors one run may hold. ``seed``: the position sampling's seed. ``float32``: float32
    products and sums for float32 activations (else float64).
    ``progress``: show tqdm bars (None: when stderr is a terminal). ``shard_runs``: runs per shard
    of the calibration set; each shard's sums start from zero (float32 in float32 mode) and the shards
    are added in order in float64, which fixes the result whatever computes the shards.
    """

    positions_per_sample: Optional[int] = 1024
    moment_bytes: int = 512 * MIB
    activation_bytes: int = 512 * MIB
    seed: int = 0
    float32: bool = True
    progress: Optional[bool] = None
    shard_runs: int = 4

    def __post_init__(self) -> None:
        if self.positions_per_sample is not None and self.positions_per_sample < 1:
            raise InputDataError(f"got {self.positions_per_sample} positions per sample; give a positive count or None")
        if self.moment_bytes < 1 or self.activation_bytes < 1:
            raise InputDataError("calibration memory limits must be positive byte counts")
        if self.shard_runs < 1:
            raise InputDataError(f"got {self.shard_runs} runs per calibration shard; give a positive count such as 4")

    def show_progress(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else bool(self.progress)


DEFAULT_LIMITS = CalibrationLimits()


@dataclass(frozen=True)
class LayerStatistics:
    """Moments of the vectors a layer's folded weight multiplies (see the module docstring).

    ``second_moment`` (``d × d``) and ``mean`` (``d``) describe what the layer sees in the model that
    was run (the compressed prefix under sequential calibration); ``cross`` (``E[x x̃ᵀ]``) and
    ``reference_mean`` (``E[x]``) are set only when a reference (original) model was run beside it.
    ``positions_per_sample`` is the sampling bound when positions were sampled for this layer, else None.
    """

    count: int
    second_moment: np.ndarray
    mean: np.ndarray
    cross: Optional[np.ndarray] = None
    reference_mean: Optional[np.ndarray] = None
    fourth_moment: Optional[float] = None  # E[‖x̃‖⁴], for the shrinkage estimate
    shrinkage: float = 0.0  # the weight α of the identity target, once :meth:`shrunk` applied it
    positions_per_sample: Optional[int] = None
    # max ‖x̃ − a‖ / ‖a‖ over the vectors, ``a`` the first one seen (float64; None: not tracked)
    deviation: Optional[float] = None

    @property
    def one_point(self) -> bool:
        """Whether the layer saw one vector, or the same vector every time (identical calibration
        samples of a model without spatial positions): the data show a point and no spread, and
        Ledoit–Wolf's estimate of the error of ``C`` is then 0, not large. No direction of the metric
        can be trusted: :meth:`shrinkage_weight` is 1 (the data-free metric)."""
        if self.count < 2:
            return True
        if self.deviation is not None:  # measured directly: no cancellation in C − μμᵀ (inputs of 1000 ± 2)
            return self.deviation <= ONE_POINT_DEVIATION
        trace = float(np.trace(self.second_moment))
        spread = trace - float(np.sum(np.asarray(self.mean, np.float64) ** 2))
        return spread <= ONE_POINT_TOLERANCE * trace

    def shrinkage_weight(self) -> float:
        """Ledoit–Wolf weight ``α`` of the scaled identity in ``α·μI + (1 − α)·C`` (0 when unknown).

        With ``n`` vectors, ``C`` their second moment, ``μ = tr C / d``, ``δ² = ‖C − μI‖²`` and
        ``β² = (E‖x‖⁴ − ‖C‖²) / n`` (the estimated squared error of ``C`` itself), ``α = min(β², δ²) / δ²``.
        Few vectors for many dimensions (a Gemm after global pooling calibrated on 48 samples: 48
        vectors in 1280 dimensions) give a large ``α``; many give ``α ≈ 0``. Overlapping conv patches are
        not independent, so for a Conv this underestimates ``α``; it is there for the starved layers.
        """
        if self.count >= 1 and self.one_point:
            return 1.0
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

    def shrunk(self, *, centered: bool = False) -> "LayerStatistics":
        """The same statistics with ``C``, ``M`` shrunk toward ``μI`` by :meth:`shrinkage_weight`
        (means unchanged): the whitening then cannot trust directions the data has not shown.

        ``centered``: shrink the covariance ``C − m mᵀ`` (``m`` the mean) instead and add ``m mᵀ`` back,
        so that ``[[C, m], [mᵀ, 1]]`` stays positive semi-definite, as a least-squares fit with a bias
        (the pruning refit) needs; shrinking ``C`` itself makes that system indefinite when the mean is
        large against the spread (after a ReLU), and the fit then blows up. Centered, an input that was
        exactly zero, or constant, on every calibration vector (a dead channel, or one that a bias or an
        Exp moved off zero) keeps zero variance: the identity target would give it a variance it never
        had, and dropping it (its mean goes to the bias) would look like an error."""
        alpha = self.shrinkage_weight()
        if alpha <= 0.0:
            return self
        if centered and self.one_point:  # no spread to shrink: μI around the mean, so the bias fit stays definite
            size = self.second_moment.shape[0]
            eye = float(np.trace(self.second_moment)) / size * np.eye(size)
            mean = np.asarray(self.mean, np.float64).reshape(-1)
            target = mean if self.reference_mean is None else np.asarray(self.reference_mean, np.float64).reshape(-1)
            return replace(self, second_moment=eye + np.outer(mean, mean),
                           cross=None if self.cross is None else eye + np.outer(target, mean), shrinkage=1.0)
        if centered:  # constant inputs (dead channels, or a bias where one was dead before) keep no variance
            second = np.diag(np.asarray(self.second_moment, np.float64))
            variance = second - np.asarray(self.mean, np.float64).reshape(-1) ** 2
            live = variance > CONSTANT_TOLERANCE * second
        else:
            live = np.ones(self.second_moment.shape[0], bool)

        def shrink(matrix: np.ndarray, left: Optional[np.ndarray] = None, right: Optional[np.ndarray] = None
                   ) -> np.ndarray:
            outer = None if left is None else np.outer(left.reshape(-1), right.reshape(-1))
            result = (1.0 - alpha) * (matrix if outer is None else matrix - outer)
            spread = float(np.trace(matrix if outer is None else matrix - outer)) / max(int(live.sum()), 1)
            result[np.flatnonzero(live), np.flatnonzero(live)] += alpha * spread
            return result if outer is None else result + outer

        mean = np.asarray(self.mean, dtype=np.float64) if centered else None
        target = mean if self.reference_mean is None or not centered else np.asarray(self.reference_mean, np.float64)
        return replace(self, second_moment=shrink(self.second_moment, mean, mean),
                       cross=None if self.cross is None else shrink(self.cross, target, mean), shrinkage=alpha)


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
    columns: bool = False  # MatMul with the weight first (y = W @ x): the vectors are x's columns (axis -2)

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

    def conv_output(self, spatial: Sequence[int]) -> list[int]:
        """Output size per spatial axis of the Conv for an input of size ``spatial``."""
        begin, end = self.conv_pads(spatial)
        return [(spatial[i] + begin[i] + end[i] - ((self.kernel[i] - 1) * self.dilations[i] + 1)) // self.strides[i] + 1
                for i in range(len(self.kernel))]

    def vectors_per_sample(self, shape: Sequence[int]) -> int:
        """Vectors one sample (index along the first axis) of an input of ``shape`` gives: a Conv's
        output positions, a MatMul's rows over the dims between the first and the last; 1 otherwise
        (a Gemm's rows, a 2-D MatMul input: nothing to sample)."""
        if self.op == "Conv" and len(shape) == len(self.kernel) + 2:
            return max(0, int(np.prod([max(0, o) for o in self.conv_output(shape[2:])])))
        if self.op == "MatMul" and len(shape) >= 3:
            return int(np.prod(shape[1:-2])) * int(shape[-1]) if self.columns else int(np.prod(shape[1:-1]))
        return 1

    def rows(self, x: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS,
             dtype: np.dtype = np.float64) -> Iterator[np.ndarray]:
        """All the vectors as ``(m, cols)`` chunks of ``dtype``; the chunking depends on ``x.shape`` only."""
        if self.op == "Conv":
            yield from self._conv_rows(x, chunk_elements, dtype)
            return
        matrix = self._matrix(x)
        step = max(1, chunk_elements // self.cols)
        for start in range(0, matrix.shape[0], step):
            yield np.asarray(matrix[start:start + step], dtype=dtype)

    def sampled_rows(self, x: np.ndarray, picks: Sequence[np.ndarray], chunk_elements: int = CHUNK_ELEMENTS,
                     dtype: np.dtype = np.float64) -> Iterator[np.ndarray]:
        """The vectors at the flat positions ``picks[i]`` of sample ``i`` (in that order), as chunks.

        Conv positions index the output grid in C order; MatMul positions the rows of one sample.
        """
        sample = np.concatenate([np.full(len(p), i, dtype=np.intp) for i, p in enumerate(picks)])
        flat = np.concatenate([np.asarray(p, dtype=np.intp) for p in picks])
        step = max(1, chunk_elements // self.cols)
        if self.op == "MatMul":
            vectors = np.swapaxes(x, -1, -2) if self.columns else x
            per_sample = vectors.reshape(x.shape[0], -1, vectors.shape[-1])
            for start in range(0, len(flat), step):
                yield np.asarray(per_sample[sample[start:start + step], flat[start:start + step]], dtype=dtype)
            return
        if self.op != "Conv":
            raise UnsupportedModelError(f"a {self.op} input has one vector per sample: nothing to sample")
        self._check_conv(x)
        dims = len(self.kernel)
        spatial = x.shape[2:]
        begin, _ = self.conv_pads(spatial)
        out = self.conv_output(spatial)
        offsets = list(itertools.product(*[range(k) for k in self.kernel]))
        channels = x.shape[1]
        for start in range(0, len(flat), step):
            where = np.unravel_index(flat[start:start + step], out)
            who = sample[start:start + step]
            block = np.empty((len(who), channels, len(offsets)), dtype=dtype)
            for index, offset in enumerate(offsets):
                inside = np.ones(len(who), dtype=bool)
                coords = []
                for axis in range(dims):
                    at = where[axis] * self.strides[axis] - begin[axis] + offset[axis] * self.dilations[axis]
                    inside &= (at >= 0) & (at < spatial[axis])
                    coords.append(np.clip(at, 0, spatial[axis] - 1))
                values = x[(who, slice(None), *coords)]  # (m, channels): advanced indices around a slice
                block[:, :, index] = values
                if not inside.all():
                    block[~inside, :, index] = 0
            yield block.reshape(len(who), channels * len(offsets))

    def _matrix(self, x: np.ndarray) -> np.ndarray:
        if self.op == "Gemm":
            matrix = x.T if self.trans_a else x
        elif self.columns:
            matrix = np.swapaxes(x, -1, -2).reshape(-1, x.shape[-2]) if x.ndim >= 2 else x.reshape(1, -1)
        else:
            matrix = x.reshape(-1, x.shape[-1]) if x.ndim >= 1 else x.reshape(1, 1)
        if matrix.ndim != 2 or matrix.shape[1] != self.cols:
            if self.op == "Gemm" and self.trans_a or self.columns and x.ndim == 2:  # (its first axis is contracted)
                how = "transposed (transA=1)" if self.op == "Gemm" else "with the weight first (W @ x)"
                raise UnsupportedModelError(
                    f"a {self.op} that takes its input {how} multiplies the weight along that input's first axis "
                    f"(its {self.cols} numbers), the axis calibration stacks samples on (here {x.shape}), so the "
                    "model cannot be run on stacked samples: compress it without calibration (data-free)")
            raise UnsupportedModelError(
                f"a {self.op} input of shape {x.shape} does not give vectors of {self.cols} numbers; "
                "check the model's input shapes")
        return matrix

    def _check_conv(self, x: np.ndarray) -> None:
        dims = len(self.kernel)
        if x.ndim != dims + 2:
            raise UnsupportedModelError(f"a Conv input of shape {x.shape} does not fit its {dims}-D kernel; "
                                        "check the model")
        if x.shape[1] * int(np.prod(self.kernel)) != self.cols:
            raise UnsupportedModelError(
                f"a Conv input of shape {x.shape} gives patches of {x.shape[1] * int(np.prod(self.kernel))} numbers, "
                f"but the weight takes {self.cols} (grouped conv?); check the model")

    def _conv_rows(self, x: np.ndarray, chunk_elements: int, dtype: np.dtype) -> Iterator[np.ndarray]:
        self._check_conv(x)
        dims = len(self.kernel)
        samples, channels = x.shape[:2]
        spatial = x.shape[2:]
        begin, end = self.conv_pads(spatial)
        out = self.conv_output(spatial)
        if min(out) < 1:
            return
        padded = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)))
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
                patches = np.empty((s1 - s0, channels, kernel_size, *shape), dtype=dtype)
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
        return Unfolder("MatMul", layer.cols, columns=layer.weight_first)
    raise UnsupportedModelError(f"layer '{layer.name}' is a {layer.op}; only Conv, Gemm and MatMul have input statistics")


def _work_dtype(array: np.ndarray, limits: CalibrationLimits) -> np.dtype:
    """float32 for float32/float16 activations when ``limits.float32`` and their products stay well inside
    float32's range, else float64 (activations of ~1e-20 square to below float32's smallest normal number,
    and ~1e19 to beyond its largest: the moments would be zeros or infinities)."""
    if limits.float32 and array.dtype in (np.float32, np.float16):  # (inf or NaN: float64, whose sums say so)
        largest = float(max(np.max(array), -np.min(array))) if array.size else 0.0  # (no |x| copy)
        if largest == 0.0 or FLOAT32_PRODUCTS[0] <= largest <= FLOAT32_PRODUCTS[1]:
            return np.dtype(np.float32)
    return np.dtype(np.float64)


FLOAT32_PRODUCTS = (1e-12, 1e15)  # the largest activation's range whose moments are summed in float32


@dataclass
class StatisticSums:
    """The running sums of one layer's input vectors: what :class:`LayerStatistics` is made of, but
    additive, so that sums over disjoint shards of the calibration set can be merged.

    ``count`` vectors ``x̃`` (``d`` numbers each) gave ``gram = Σ x̃x̃ᵀ`` (``d × d``), ``total = Σ x̃``
    (``d``) and ``fourth = Σ ‖x̃‖⁴``; with a reference model run beside it (sequential calibration),
    ``cross = Σ x x̃ᵀ`` (``d × d``) and ``reference_total = Σ x`` (``d``), ``x`` what the original
    model's layer sees on the same samples. All float64. ``positions_per_sample`` is the sampling bound
    when positions were sampled in any of the merged parts, else None.
    """

    count: int
    gram: np.ndarray
    total: np.ndarray
    fourth: float
    cross: Optional[np.ndarray] = None
    reference_total: Optional[np.ndarray] = None
    positions_per_sample: Optional[int] = None
    anchor: Optional[np.ndarray] = None  # the first vector seen (float64)
    distance: float = 0.0  # the largest ‖x̃ − anchor‖ (an upper bound after merges)

    def merge(self, other: "StatisticSums") -> "StatisticSums":
        """Add ``other``'s sums to these, in place (float64); returns ``self``. Merging the parts of a
        calibration set in a fixed order gives the same bits whatever computed the parts.

        Raises :class:`UnsupportedModelError` when the two are not sums of the same layer's vectors
        (other dimension, or one with cross moments and one without)."""
        if other.gram.shape != self.gram.shape or (other.cross is None) != (self.cross is None):
            raise UnsupportedModelError(
                f"cannot merge the statistic sums of a {other.gram.shape[0]}-input layer"
                f"{' with' if other.cross is not None else ' without'} cross moments into those of a "
                f"{self.gram.shape[0]}-input layer{' with' if self.cross is not None else ' without'}; "
                "merge the sums of the same layers, collected the same way")
        self.count += other.count
        self.gram += other.gram
        self.total += other.total
        self.fourth += other.fourth
        if self.cross is not None:
            self.cross += other.cross
            self.reference_total += other.reference_total
        if self.positions_per_sample is None:
            self.positions_per_sample = other.positions_per_sample
        if self.anchor is None:
            self.anchor, self.distance = other.anchor, max(self.distance, other.distance)
        elif other.anchor is not None:  # ‖x − a‖ ≤ ‖x − b‖ + ‖b − a‖ for the other part's vectors
            self.distance = max(self.distance,
                                other.distance + float(np.linalg.norm(other.anchor - self.anchor)))
        return self

    def copy(self) -> "StatisticSums":
        """A deep copy (merging into it leaves this one unchanged)."""
        return StatisticSums(self.count, self.gram.copy(), self.total.copy(), self.fourth,
                             None if self.cross is None else self.cross.copy(),
                             None if self.reference_total is None else self.reference_total.copy(),
                             self.positions_per_sample, None if self.anchor is None else self.anchor.copy(),
                             self.distance)

    def finite(self) -> bool:
        """Whether every sum is finite (an activation beyond float32 makes a float32 product inf)."""
        return bool(np.isfinite(self.total).all() and np.isfinite(self.gram).all() and np.isfinite(self.fourth)
                    and (self.cross is None or np.isfinite(self.cross).all()))

    def finalize(self, in_place: bool = False) -> LayerStatistics:
        """The moments: sums divided by ``count`` (``E[x̃x̃ᵀ]``, ``E[x̃]``, ``E[‖x̃‖⁴]``, ``E[x x̃ᵀ]``, ``E[x]``).

        ``in_place``: divide the ``d × d`` sums where they are (no second copy; these sums are then
        spent). Raises :class:`UnsupportedModelError` when ``count`` is 0."""
        if self.count < 1:
            raise UnsupportedModelError("these statistic sums hold no input vectors; nothing to average")
        n = float(self.count)

        def mean_of(total: np.ndarray) -> np.ndarray:
            if in_place:
                total /= n
                return total
            return total / n

        return LayerStatistics(
            self.count, mean_of(self.gram), self.total / n, None if self.cross is None else mean_of(self.cross),
            None if self.reference_total is None else self.reference_total / n, self.fourth / n,
            positions_per_sample=self.positions_per_sample, deviation=self.deviation())

    def deviation(self) -> Optional[float]:
        """The largest distance of a vector from the first one, relative to that one's norm (None: not tracked)."""
        if self.anchor is None:
            return None
        return self.distance / max(float(np.linalg.norm(self.anchor)), 1e-300)


class _Accumulator:
    """Running sums for one layer over one shard: Σ x̃x̃ᵀ, Σ x̃, Σ ‖x̃‖⁴ and, with a reference, Σ x x̃ᵀ and Σ x.

    The ``d × d`` sums take the dtype of the first chunk (float32 in float32 mode: half the memory
    while the model runs), allocated at the first chunk; vector sums and the count stay float64/int.
    :meth:`sums` hands them over in float64.
    """

    def __init__(self, layer: Layer, unfolder: Unfolder, cross: bool, limits: CalibrationLimits) -> None:
        self.cols = layer.cols
        self.unfolder = unfolder
        self.limits = limits
        self.key = zlib.crc32(layer.name.encode("utf-8"))
        self.with_cross = cross
        self.sampled = False
        self.count = 0
        self.fourth = 0.0
        self.gram: Optional[np.ndarray] = None
        self.cross: Optional[np.ndarray] = None
        self.total = np.zeros(self.cols)
        self.reference_total = np.zeros(self.cols) if cross else None
        self.anchor: Optional[np.ndarray] = None
        self.distance = 0.0

    def picks(self, first_sample: int, samples: int, positions: int) -> list[np.ndarray]:
        """Sorted flat positions of each sample, seeded by (seed, layer, index of the sample in the set)."""
        keep = int(self.limits.positions_per_sample or positions)
        chosen = []
        for index in range(first_sample, first_sample + samples):
            rng = np.random.default_rng([self.limits.seed, self.key, index])
            chosen.append(np.sort(rng.choice(positions, size=keep, replace=False)))
        return chosen

    def add(self, seen: np.ndarray, reference: Optional[np.ndarray], first_sample: int) -> None:
        """Fold one run's layer input (``seen``; ``reference`` from the original model) into the sums;
        ``first_sample`` is the index in the calibration set of the run's first sample."""
        if reference is not None and reference.shape != seen.shape:
            raise UnsupportedModelError(
                f"the compressed model gives a layer input of shape {seen.shape}, the original {reference.shape}; "
                "the rewrite changed a tensor shape: report this as a bug")
        dtype = _work_dtype(seen, self.limits)
        if reference is not None and dtype != np.float64:
            dtype = _work_dtype(reference, self.limits)
        positions = self.unfolder.vectors_per_sample(seen.shape)
        limit = self.limits.positions_per_sample
        if limit is not None and positions > limit and seen.ndim >= 3:
            self.sampled = True
            picks = self.picks(first_sample, seen.shape[0], positions)
            rows = self.unfolder.sampled_rows(seen, picks, dtype=dtype)
            references = (itertools.repeat(None) if reference is None
                          else self.unfolder.sampled_rows(reference, picks, dtype=dtype))
        else:
            rows = self.unfolder.rows(seen, dtype=dtype)
            references = itertools.repeat(None) if reference is None else self.unfolder.rows(reference, dtype=dtype)
        for chunk, ref in zip(rows, references):
            if self.gram is None:
                self.gram = np.zeros((self.cols, self.cols), dtype=chunk.dtype)
                self.cross = np.zeros((self.cols, self.cols), dtype=chunk.dtype) if self.with_cross else None
            elif self.gram.dtype != chunk.dtype and chunk.dtype == np.float64:  # a run outside float32's range
                self.gram = self.gram.astype(np.float64)
                self.cross = None if self.cross is None else self.cross.astype(np.float64)
            self.count += chunk.shape[0]
            if self.anchor is None and chunk.shape[0]:
                self.anchor = chunk[0].astype(np.float64)
            if chunk.shape[0]:
                offset = chunk - self.anchor.astype(chunk.dtype)  # in the chunk's type: no float64 copy of it
                self.distance = max(self.distance, float(np.sqrt(np.einsum("ij,ij->i", offset, offset).max())))
            norms = np.einsum("ij,ij->i", chunk, chunk).astype(np.float64)
            self.fourth += float(np.sum(norms * norms))
            self.gram += chunk.T @ chunk
            self.total += chunk.sum(axis=0, dtype=np.float64)
            if ref is not None:
                self.cross += ref.T @ chunk
                self.reference_total += ref.sum(axis=0, dtype=np.float64)

    def sums(self) -> StatisticSums:
        """The sums in float64 (a float32 ``d × d`` sum is converted and released; call it once)."""
        gram, self.gram = self.gram, None
        cross, self.cross = self.cross, None
        if gram is None:  # no vector seen
            gram = np.zeros((self.cols, self.cols))
            cross = np.zeros((self.cols, self.cols)) if self.with_cross else None
        return StatisticSums(self.count, np.asarray(gram, dtype=np.float64), self.total, self.fourth,
                             None if cross is None else np.asarray(cross, dtype=np.float64),
                             self.reference_total,
                             self.limits.positions_per_sample if self.sampled else None, self.anchor, self.distance)


def _element_type(model: onnx.ModelProto, layer: Layer) -> int:
    """The activation's element type: Conv/Gemm/MatMul require it to equal the weight's."""
    for tensor in model.graph.initializer:
        if tensor.name == layer.weight:
            return tensor.data_type
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == layer.weight \
                and (value := constant_node_value(node)) is not None:
            return value.data_type
    # a weight computed by constant ops (W → Cast/Identity/Transpose → layer): the type of its folded value
    return layer.weight_type or onnx.TensorProto.FLOAT


def _session_with_outputs(model: onnx.ModelProto, tensors: Mapping[str, int], threads: Optional[int] = None):
    """A CPU session of ``model`` that also returns ``tensors`` (name → element type), with ``threads``
    intra-op threads (None: ONNX Runtime's default)."""
    from .runtime import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {output.name for output in probe.graph.output}
    feeds = {spec.name for spec in graph_inputs(probe)}
    for name, elem_type in tensors.items():
        if name not in present and name not in feeds:
            probe.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
    return make_session(probe, "cpu", threads=threads, copy_of="data-aware compression (calibration)")


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
        shared = next((spec for spec in graph_inputs(model) if spec.dims and isinstance(spec.dims[0], str)
                       and spec.dims[0] in spec.dims[1:]), None)  # adj [nodes, nodes]: rows are no samples
        hint = (f"; input '{shared.name}' repeats its first dim '{shared.dims[0]}', so batches cut along it break "
                "it: give --calibration-batch-size equal to that dim (one whole graph per run) and arrays of whole "
                "graphs" if shared is not None else "") + dim_name_clash(session, feeds)
        if shared is None and not hint:
            hint = one_sample_at_a_time(session, fetch, feeds, "--calibration-batch-size")
        raise InputDataError(f"running the model on the calibration data failed ({runtime_error_text(exc)}); "
                             "check that the calibration arrays match the model's inputs (dtype, shape, value range: "
                             "ids inside their tables); random inputs (--calibration-random) cannot fit every model: "
                             f"give real ones (--calibration FILE.npz){hint}") from None
    result = dict(zip(fetch, values))
    result.update({name: np.asarray(feeds[name]) for name in wanted if name in feeds})
    return result


def _samples(batch: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(batch.values())).shape[0]) if batch else 0


def _regroup(batches: Iterable[Mapping[str, np.ndarray]], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Runs of exactly ``size`` samples from batches of any size; the remainder, if any, comes last."""
    pending: list[Mapping[str, np.ndarray]] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += _samples(batch)
        while held >= size:
            joined = pending[0] if len(pending) == 1 else {
                name: np.concatenate([part[name] for part in pending]) for name in pending[0]}
            yield {name: array[:size] for name, array in joined.items()}
            rest = {name: array[size:] for name, array in joined.items()}
            held -= size
            pending = [rest] if held else []
    if held:
        yield pending[0] if len(pending) == 1 else {name: np.concatenate([part[name] for part in pending])
                                                    for name in pending[0]}


SAMPLE_AXIS_PROBE = 4  # samples run together and in two halves by check_sample_axis
SAMPLE_AXIS_TOLERANCE = 1e-2  # relative difference of whole and split runs read as samples interacting


def check_sample_axis(model: onnx.ModelProto, inputs, batch_size: int, *, store=None, what: str = "calibration",
                      flag: str = "--calibration-batch-size") -> Optional[str]:
    """Check that the ``what`` samples (axis 0 of every input, which ``what`` cuts into runs of
    ``batch_size``, set by ``flag``) are independent: the first :data:`SAMPLE_AXIS_PROBE` samples are run
    together and in two halves. An output whose first dim follows the samples (4, then 2 and 2, or a multiple of
    them), declared with the inputs' first dim's name (or so derived by ONNX shape inference), and whose values
    differ (relative L2 over :data:`SAMPLE_AXIS_TOLERANCE`) means axis 0 is no batch axis (a sequence-first
    ``[T, N, …]`` input whose time steps attend to each other): :class:`InputDataError`. No output
    following the samples returns a note (outputs that reduce over axis 0, or detections); None otherwise,
    and when nothing is split (a fixed batch, or no more samples than one run) or a run of fewer samples
    cannot run (nothing to tell)."""
    try:
        count = len(inputs)
    except TypeError:
        count = None
    if fixed_batch(model) is not None or (count is not None and count <= batch_size):
        return None
    first = next(iter(inputs.batches(SAMPLE_AXIS_PROBE)), None)
    size = _samples(first) if first else 0
    if size < 2:
        return None
    half = size // 2
    from .runtime import make_session

    try:
        session = make_session(model, "cpu", store=store, threads=1, prepack=False, **(
            {"copy_of": "data-aware compression (calibration)"} if what == "calibration" else
            {"what": "the original model"}))  # (the first run of the model: say what needs it)
        names = [output.name for output in session.get_outputs()]
        whole = session.run(None, first)
        parts = [session.run(None, {name: array[:half] for name, array in first.items()}),
                 session.run(None, {name: array[half:] for name, array in first.items()})]
    except OnnxAldsError:
        raise
    except Exception:  # (an input of another first dim, a table that needs whole runs): nothing to tell
        return None
    # an output is refused on only where its first dim is the inputs' first dim (the same name, as declared or
    # as shape inference derives it, alone or in a product: a flattened [T·N, C]); detections numbering their
    # samples per run have another name; an output whose first dim has no name to tell by (unnamed, or one the
    # exporter made up per value) gets a note. Rows stacked view by view ([x; -x], [2N, C]) are compared so too.
    split_dims = {spec.dims[0] for spec in graph_inputs(model) if spec.dims and isinstance(spec.dims[0], str)}
    declared = {value.name: value.type.tensor_type.shape.dim[0].dim_param for value in model.graph.output
                if value.type.HasField("tensor_type") and len(value.type.tensor_type.shape.dim)}
    inferred: Optional[dict[str, str]] = None
    followed = False
    unsure: list[tuple[str, float, int]] = []  # outputs that change, whose first dim's name cannot tell
    for name, together, *split in zip(names, whole, *parts):
        arrays = [np.asarray(together), *map(np.asarray, split)]
        if not all(a.dtype.kind == "f" and a.ndim >= 1 for a in arrays):
            continue
        rows = arrays[0].shape[0] // size  # per sample (a flattened output holds several)
        if not rows or [a.shape[0] for a in arrays] != [rows * size, rows * half, rows * (size - half)] or \
                len({a.shape[1:] for a in arrays}) != 1:
            continue
        followed = True
        change = _split_change(arrays, rows)
        if change is None or change <= SAMPLE_AXIS_TOLERANCE:
            continue
        dim = declared.get(name, "")
        if not _names_split_dim(dim, split_dims):  # e.g. torch's legacy exporter names each output's dims anew
            inferred = _inferred_first_dims(model) if inferred is None else inferred
            dim = inferred.get(name) or dim
        if _names_split_dim(dim, split_dims):
            from .checks import batch_coupling_nodes

            coupling = batch_coupling_nodes(model)
            if coupling:  # (axis 0 is the batch: the model itself mixes the samples of a run)
                raise InputDataError(
                    f"the {what} samples are not independent: output '{name}' of the first {size} samples run "
                    f"together and in runs of {half} and {size - half} differs by {change:.2g} (relative), because "
                    f"node {coupling[0]}, so each sample's outputs depend on the others in its run and {what}, "
                    f"which cuts the samples into runs of {batch_size}, would change them; give all the samples in "
                    f"one run ({flag} at least the sample count)" + (
                        ", or calibrate the model from before its quantization" if "quantization" in coupling[0]
                        else ""))
            raise InputDataError(
                f"the {what} samples are not independent: output '{name}' of the first {size} samples run "
                f"together and in runs of {half} and {size - half} differs by {change:.2g} (relative), so axis 0 of "
                f"the inputs is not a batch axis (a sequence-first [T, N, ...] input, or samples that interact: "
                f"batch norm in training mode, routing over the whole batch) and {what}, which cuts it into runs "
                f"of {batch_size}, would change what each run sees; give all the samples in one run ({flag} at "
                "least the sample count), or export the model batch-first (torch: batch_first=True) where axis 0 "
                "is time")
        if not dim or EXPORTER_DIM_NAME.fullmatch(dim):
            unsure.append((name, change, rows))
    if unsure:
        name, change, rows = unsure[0]
        return (f"output '{name}' has {rows if rows > 1 else 'one'} row{'s' if rows > 1 else ''} per {what} sample "
                f"and a first dim not named after the inputs' (unnamed, or named by the exporter), and the first "
                f"{size} samples run together and in runs of {half} and {size - half} give outputs that differ by "
                f"{change:.2g} (relative): its rows are not per sample, or the samples are not independent; if axis 0 "
                f"of the inputs is not the batch (a sequence-first [T, N, ...] input), {what}, which cuts it into "
                f"runs of {batch_size}, cuts sequences: export the model batch-first, or give all the samples in one "
                f"run ({flag} at least the sample count)")
    if followed or not any(np.asarray(a).dtype.kind == "f" for a in whole):
        return None
    return (f"no float output of the model follows the {what} samples (runs of {size}, {half} and {size - half} "
            f"samples give outputs of the same first dims): {what} cuts axis 0 of the inputs into runs of "
            f"{batch_size}; "
            "if that axis is not the batch (a sequence-first [T, N, ...] input), export the model batch-first or "
            f"give all the samples in one run ({flag})")


# dim names exporters make up per value, which say nothing of where the dim comes from: torch's legacy
# exporter given dynamic axes as lists (``y_dynamic_axes_1``), tf2onnx and ONNX Runtime's symbolic shape
# inference (``unk__12``)
EXPORTER_DIM_NAME = re.compile(r".*_dynamic_axes_\d+|unk__\d+")


def _names_split_dim(dim: str, split_dims: set) -> bool:
    """Whether the dim name ``dim`` is one of the inputs' first dims, alone or as a factor of a product
    (``seq*batch``, ``s0*s1``: a flattened output)."""
    return bool(dim) and (dim in split_dims or any(part.strip() in split_dims for part in re.split(r"[*·]", dim)))


def _split_change(arrays: Sequence[np.ndarray], rows: int) -> Optional[float]:
    """The relative L2 change of an output between one run of the samples (``arrays[0]``) and two runs
    (``arrays[1:]``, joined), reading its ``rows`` rows per sample sample by sample or view by view
    ([x; -x]: every sample's first rows, then every sample's second rows), whichever changes less; None
    where a value is not finite."""
    reference = arrays[0].astype(np.float64)
    if not all(np.all(np.isfinite(a)) for a in arrays):
        return None
    scale = max(float(np.linalg.norm(reference)), 1e-300)
    joined = np.concatenate(arrays[1:]).astype(np.float64)
    change = float(np.linalg.norm(joined - reference)) / scale
    if rows > 1:
        by_view = np.concatenate([a.reshape((rows, -1) + a.shape[1:]) for a in arrays[1:]], axis=1)
        change = min(change, float(np.linalg.norm(by_view.reshape(reference.shape) - reference)) / scale)
    return change


def _inferred_first_dims(model: onnx.ModelProto) -> dict[str, str]:
    """The name of each graph output's first dim as ONNX shape inference (with data propagation) derives
    it from the inputs' dims, the outputs' and intermediate values' declared shapes set aside; outputs
    whose first dim it cannot name are left out, and so is everything when inference fails."""
    from .shapes import static_copy

    bare = static_copy(model, {}, stub_weights=True)
    del bare.graph.value_info[:]
    for value in bare.graph.output:
        value.type.tensor_type.ClearField("shape")
    try:
        typed = onnx.shape_inference.infer_shapes(bare, data_prop=True)
    except Exception:  # custom ops, stubbed shape constants: nothing derived
        return {}
    return {value.name: value.type.tensor_type.shape.dim[0].dim_param for value in typed.graph.output
            if value.type.HasField("tensor_type") and len(value.type.tensor_type.shape.dim)
            and value.type.tensor_type.shape.dim[0].dim_param}


@dataclass
class _RunCount:
    """What :func:`calibration_runs` used: runs, samples used and samples left out."""

    runs: int = 0
    used: int = 0
    dropped: int = 0


def calibration_runs(inputs, model: onnx.ModelProto, batch_size: int, *, limit: Optional[int] = None,
                     count: Optional[_RunCount] = None) -> Iterator[dict[str, np.ndarray]]:
    """The calibration set as feeds for ``model``: runs of ``batch_size`` samples (the last may be
    smaller), or of exactly ``B`` when the model fixes its batch to ``B`` (a remainder smaller than ``B``
    is left out and counted in ``count.dropped``). ``limit`` stops after that many samples (rounded
    down to whole fixed batches, at least one)."""
    fixed = fixed_batch(model)
    size = fixed or batch_size
    if fixed and limit is not None:
        limit = max(fixed, limit // fixed * fixed)
    count = count if count is not None else _RunCount()
    for run in _regroup(inputs.batches(size), size):
        samples = _samples(run)
        if fixed and samples < fixed:
            count.dropped += samples
            return
        if limit is not None and count.used + samples > limit:
            samples = limit - count.used
            if samples <= 0:
                return
            run = {name: array[:samples] for name, array in run.items()}
        count.runs += 1
        count.used += samples
        yield run


def _plan_shapes(model: onnx.ModelProto, inputs, unit: int) -> Optional[dict[str, tuple[int, ...]]]:
    """Input shapes at batch ``unit``: the model's static dims, the first sample's where dynamic."""
    specs = graph_inputs(model)
    shapes: dict[str, tuple[int, ...]] = {}
    peek: Optional[Mapping[str, np.ndarray]] = None
    for spec in specs:
        if not spec.dims:
            return None
        rest = spec.dims[1:]
        if not all(isinstance(d, int) for d in rest):
            if peek is None:
                peek = next(iter(inputs.batches(1)), None)
            if peek is None or spec.name not in peek or np.asarray(peek[spec.name]).ndim != len(spec.dims):
                return None  # the run itself reports what is missing
            rest = tuple(np.asarray(peek[spec.name]).shape[1:])
        shapes[spec.name] = (unit, *[int(d) for d in rest])
    return shapes


def _activation_bytes(model: onnx.ModelProto, inputs, tensors: Mapping[str, int],
                      unit: int) -> tuple[dict[str, Optional[int]], int]:
    """Bytes of each fetched tensor for a run of ``unit`` samples (None where unknown), and of every
    other tensor shape inference sizes (ONNX Runtime's intermediates, 4 bytes a number; an upper bound,
    since it reuses buffers). Graph inputs cost nothing: their arrays are already in memory."""
    from .shapes import tensor_shapes

    feeds = {spec.name for spec in graph_inputs(model)}
    fetched = {name: elem for name, elem in tensors.items() if name not in feeds}
    if not fetched:
        return {}, 0
    shapes_in = _plan_shapes(model, inputs, unit)
    if shapes_in is None:
        return {name: None for name in fetched}, 0
    try:
        shapes = tensor_shapes(model, shapes_in, list(fetched))
    except Exception as exc:  # shape inference is a planning aid only: the run reports real problems
        log.info("could not size the calibration tensors (%s)", exc)
        return {name: None for name in fetched}, 0
    sizes: dict[str, Optional[int]] = {}
    for name, elem in fetched.items():
        shape = shapes.get(name)
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).itemsize if elem else 4
        sizes[name] = None if shape is None else int(np.prod(shape, dtype=np.float64)) * itemsize
    constants = {init.name for init in model.graph.initializer} | {
        output for node in model.graph.node if node.op_type == "Constant" for output in node.output}
    working = sum(int(np.prod(shape, dtype=np.float64)) * 4 for name, shape in shapes.items()
                  if name not in feeds and name not in constants)
    return sizes, working


def _mib(size: float) -> str:
    """``size`` bytes in GiB, MiB or KiB."""
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f} GiB"
    return f"{size / MIB:.0f} MiB" if size >= MIB else f"{size / 1024:.0f} KiB"


def _plan_passes(sizes: Mapping[str, Optional[int]], working: int, order: Sequence[str], unit: int, requested: int,
                 fixed: bool, limit: int, users: Mapping[str, str]) -> tuple[int, list[list[str]]]:
    """(samples per run, tensors per pass) so that one run's fetched tensors plus ONNX Runtime's
    ``working`` tensors (bytes per ``unit`` samples) stay within ``limit`` where the batch can make them."""
    known = {name: size for name, size in sizes.items() if size is not None}
    too_big = [(size, name) for name, size in known.items() if size > limit]
    if too_big:
        size, name = max(too_big)
        what = f"one run of the fixed batch of {unit}" if fixed else "one sample"
        raise InputDataError(
            f"the input of layer '{users[name]}' ('{name}') takes {_mib(size)} for {what}, over the calibration "
            f"activation limit of {_mib(limit)}; calibrate at a smaller input shape (--input-shape) or raise "
            "CalibrationLimits.activation_bytes")
    fetched = sum(known.values())
    total = fetched + working
    per_run = 1 if fixed else max(1, min(requested, limit // max(1, total)))
    budget = max(limit - working, max(known.values(), default=0))  # for the fetched tensors of one run
    if fetched <= budget:
        return per_run * unit, [list(order)]
    passes: list[list[str]] = []
    current: list[str] = []
    held = 0
    for name in order:
        size = known.get(name, 0)
        if current and held + size > budget:
            passes.append(current)
            current, held = [], 0
        current.append(name)
        held += size
    passes.append(current)
    return unit, passes


def _progress_bar(total: Optional[int], description: str, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="run", leave=False, disable=not show)


@dataclass
class _Plan:
    """What one calibration measures and how: the layers with statistics, their unfolders, the fetched
    tensors (name → element type) grouped into passes, the samples per run. Picklable (Ray ships it)."""

    measured: list
    unfolders: dict
    tensors: dict
    feeds: set
    passes: list
    per_run: int
    fixed: Optional[int]
    limits: CalibrationLimits
    with_reference: bool

    def pass_layers(self, index: int) -> list:
        wanted = set(self.passes[index])
        return [layer for layer in self.measured if layer.input in wanted]


def _prepare(model: onnx.ModelProto, layers: Sequence[Layer], inputs, batch_size: int,
             reference: Optional[onnx.ModelProto], limits: CalibrationLimits, said: list[str]) -> Optional[_Plan]:
    """The :class:`_Plan` (None when no layer gets statistics); what the limits changed goes to ``said``."""
    if batch_size < 1:
        raise InputDataError(f"got calibration batch size {batch_size}; give a positive batch size such as 16")
    if not layers:
        return None
    source = reference if reference is not None else model
    nodes = {node.name: node for node in source.graph.node}
    unfolders = {}
    for layer in layers:
        if layer.name not in nodes:
            raise UnsupportedModelError(f"layer '{layer.name}' is not a node of the model; pass layers found in it")
        unfolders[layer.name] = unfolder_for(layer, nodes[layer.name])
    copies = 2 if reference is not None else 1
    too_large = [layer for layer in layers if 8 * copies * layer.cols ** 2 > limits.moment_bytes]
    measured = [layer for layer in layers if layer not in too_large]
    if too_large:
        first = max(too_large, key=lambda layer: layer.cols)
        said.append(f"calibration: no input statistics for {len(too_large)} layer(s) whose input moment would exceed "
                    f"the {_mib(limits.moment_bytes)} limit ({', '.join(repr(l.name) for l in too_large[:3])}"
                    f"{', ...' if len(too_large) > 3 else ''}; '{first.name}' has {first.cols} inputs: "
                    f"{_mib(8 * copies * first.cols ** 2)}); they are decomposed data-free")
    if getattr(inputs, "is_random", False):
        said.append("calibration on random inputs, not data: the statistics describe noise, not what the layers see "
                    "in use; give real inputs (--calibration FILE.npz or --calibration-images DIR)")
    if not measured:
        return None
    tensors = {layer.input: _element_type(source, layer) for layer in measured}
    users = {}
    for layer in measured:
        users.setdefault(layer.input, layer.name)
    feeds = {spec.name for spec in graph_inputs(model)}
    fixed = fixed_batch(model)
    unit = fixed or 1
    sizes, working = _activation_bytes(model, inputs, tensors, unit)
    per_run, passes = _plan_passes(sizes, working, list(tensors), unit, batch_size, fixed is not None,
                                   limits.activation_bytes, users)
    if fixed is not None and fixed != batch_size:
        said.append(f"the model fixes its first dim to {fixed}: calibration ran on inputs of {fixed} rows")
    elif fixed is None and per_run < batch_size:
        per_sample = sum(size for size in sizes.values() if size) + working
        said.append(f"calibration ran at batch {per_run} instead of {batch_size}: one sample's layer inputs and "
                    f"intermediate tensors take about {_mib(per_sample)}, and a run stays within the "
                    f"{_mib(limits.activation_bytes)} activation limit")
    if len(passes) > 1:
        said.append(f"calibration made {len(passes)} passes over the data: one run's layer inputs would exceed the "
                    f"{_mib(limits.activation_bytes)} activation limit")
    return _Plan(measured, unfolders, tensors, feeds, passes, per_run, fixed, limits, reference is not None)


class _PassRunner:
    """The ONNX Runtime sessions of one pass (built here, ``threads`` intra-op threads) and the shard
    computation: the layer sums over a list of runs, each shard from fresh accumulators."""

    def __init__(self, plan: _Plan, model: onnx.ModelProto, reference: Optional[onnx.ModelProto], index: int,
                 threads: Optional[int] = None) -> None:
        self.plan, self.model, self.reference, self.index = plan, model, reference, index
        self.wanted = plan.passes[index]
        self.layers = plan.pass_layers(index)
        fetched = {name: plan.tensors[name] for name in self.wanted if name not in plan.feeds}
        # every wanted tensor a graph input: the feeds are the statistics, no session is needed
        self.session = _session_with_outputs(model, fetched, threads) if fetched else None
        self.reference_session = (None if reference is None or not fetched
                                  else _session_with_outputs(reference, fetched, threads))

    def timed_shard(self, runs: Sequence[Mapping[str, np.ndarray]], first_sample: int) -> tuple[dict, dict]:
        """:meth:`shard` and its timing: (sums, {start_s (epoch), seconds, cpu_s (this process, all
        threads), worker (pid), first_sample, runs}); the timing is also added to the current
        :func:`calibration_workers` record, if any, when it runs in that process."""
        wall, tick, cpu = time.time(), time.perf_counter(), time.process_time()
        sums = self.shard(runs, first_sample)
        timing = dict(start_s=wall, seconds=time.perf_counter() - tick, cpu_s=time.process_time() - cpu,
                      worker=os.getpid(), first_sample=first_sample, runs=len(runs), pass_index=self.index)
        record = _WORKERS.get()
        if record is not None:
            record.timeline.append(timing)
        return sums, timing

    def shard(self, runs: Sequence[Mapping[str, np.ndarray]], first_sample: int) -> dict[str, "_Accumulator"]:
        """The sums of this pass's layers over ``runs`` (consecutive, the first sample at index
        ``first_sample`` of the calibration set), as accumulators (float32 ``d × d`` sums in float32 mode)."""
        plan = self.plan
        sums = {layer.name: _Accumulator(layer, plan.unfolders[layer.name], plan.with_reference, plan.limits)
                for layer in self.layers}
        for batch in runs:
            _check_feeds(self.model, batch)
            seen = _run(self.session, self.model, batch, self.wanted)
            ref = None if self.reference is None else _run(self.reference_session, self.reference, batch, self.wanted)
            for layer in self.layers:
                sums[layer.name].add(seen[layer.input], None if ref is None else ref[layer.input], first_sample)
            first_sample += _samples(batch)
            del seen, ref
        return sums


def _shards(runs: Iterable[Mapping[str, np.ndarray]], size: int) -> Iterator[tuple[int, list]]:
    """(index of the first sample, ``size`` consecutive runs) over ``runs``; the last shard may be shorter.
    The boundaries depend on the runs only, never on who computes the shards."""
    first, shard, held = 0, [], 0
    for run in runs:
        shard.append(run)
        held += _samples(run)
        if len(shard) == size:
            yield first, shard
            first, shard, held = first + held, [], 0
    if shard:
        yield first, shard


class _LocalShards:
    """Runs the shards in this process, one after another (the default: no Ray)."""

    workers = 1

    def run_pass(self, plan: _Plan, model, reference, index: int,
                 shards: Iterable[tuple[int, list]]) -> Iterator[tuple[int, dict]]:
        runner = _PassRunner(plan, model, reference, index)
        for first, runs in shards:
            yield len(runs), runner.timed_shard(runs, first)[0]

    def close(self) -> None:
        pass


class _ShardActor:
    """A Ray actor (wrapped by :class:`_RayShards`): the model and plan once, the sessions of the pass
    it is asked for built inside it with ``intra_op_num_threads`` = the CPUs Ray assigned it."""

    def __init__(self, model_bytes: bytes, reference_bytes: Optional[bytes], plan: _Plan) -> None:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        self.threads = max(1, int(cpus)) if cpus else 1
        self.model = onnx.load_from_string(model_bytes)
        self.reference = None if reference_bytes is None else onnx.load_from_string(reference_bytes)
        self.plan = plan
        self.runner: Optional[_PassRunner] = None

    def shard(self, index: int, runs: list, first_sample: int) -> tuple[dict, dict]:
        """(sums, timing) of one shard (see :meth:`_PassRunner.timed_shard`); a new pass builds its sessions."""
        setup_wall, setup_cpu = time.perf_counter(), time.process_time()
        if self.runner is None or self.runner.index != index:
            self.runner = None  # one pass's sessions at a time
            self.runner = _PassRunner(self.plan, self.model, self.reference, index, threads=self.threads)
        setup_wall, setup_cpu = time.perf_counter() - setup_wall, time.process_time() - setup_cpu
        sums, timing = self.runner.timed_shard(runs, first_sample)
        # building the sessions (first shard of a pass on this actor) counts as the shard's work
        timing.update(seconds=timing["seconds"] + setup_wall, cpu_s=timing["cpu_s"] + setup_cpu,
                      start_s=timing["start_s"] - setup_wall, setup_cpu_s=setup_cpu)
        return sums, timing


class _RayShards:
    """Runs the shards on ``workers`` Ray actors (``cpus`` CPUs each) and hands their sums back in shard
    order; at most two shards per actor are in flight (bounded driver memory)."""

    def __init__(self, ray, workers: int, cpus: int, plan: _Plan, model, reference) -> None:
        self.ray = ray
        self.workers = workers
        model_ref = ray.put(model.SerializeToString())
        reference_ref = None if reference is None else ray.put(reference.SerializeToString())
        actor = ray.remote(_ShardActor).options(num_cpus=cpus)
        self.actors = [actor.remote(model_ref, reference_ref, plan) for _ in range(workers)]

    def run_pass(self, plan: _Plan, model, reference, index: int,
                 shards: Iterable[tuple[int, list]]) -> Iterator[tuple[int, dict]]:
        pending: deque = deque()
        for number, (first, runs) in enumerate(shards):
            actor = self.actors[number % len(self.actors)]
            pending.append((len(runs), actor.shard.remote(index, runs, first)))
            while len(pending) >= 2 * len(self.actors):
                yield self._get(*pending.popleft())
        while pending:
            yield self._get(*pending.popleft())

    def _get(self, count: int, ref) -> tuple[int, dict]:
        try:
            sums, timing = self.ray.get(ref)
        except Exception as exc:  # a worker's failure: its own error when it is ours, else one line saying what died
            cause = getattr(exc, "cause", None)
            if isinstance(cause, OnnxAldsError):
                raise cause from None
            first = next((line.strip() for line in reversed(str(exc).splitlines()) if line.strip()), type(exc).__name__)
            raise OnnxAldsError(f"a calibration worker failed ({type(exc).__name__}: {first[:200]}); check that the "
                                "Ray workers import the same onnx_alds as this process (run from a folder without "
                                "another copy of the package), or use --calibration-workers 1") from None
        record = _WORKERS.get()
        if record is not None:
            record.timeline.append(timing)
        return count, sums

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


@dataclass
class CalibrationWorkers:
    """What :func:`calibration_workers` yields: the setting, and ``timeline``, one dict per shard
    computed inside the context (``start_s`` epoch seconds, ``seconds``, ``cpu_s`` CPU seconds of the
    process that computed it, ``worker`` its pid, ``first_sample``, ``runs``, ``pass_index``), in the
    order the shards were summed."""

    count: int
    cpus: int
    address: Optional[str]
    engine: str = "local"
    timeline: list = field(default_factory=list)


_WORKERS: contextvars.ContextVar = contextvars.ContextVar("onnx_alds_calibration_workers", default=None)


def import_ray():
    """``ray``, or a one-line :class:`InputDataError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputDataError("more than one calibration worker needs Ray, which is not installed; install it with "
                             "pip install 'onnx-alds[ray]' (or use one worker)") from None
    return ray


RAY_PROBE_SECONDS = 5.0  # how long a Ray address may take to accept a connection, and then to answer as gRPC

# the HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, its client server) answers
# with a SETTINGS frame of its own
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def unreachable_ray(address: Optional[str]) -> Optional[str]:
    """Why a Ray ``address`` written ``host:port`` (``ray://`` prefix allowed) is not a Ray cluster: the socket
    error when nothing answers, or what it did when it accepts connections but does not answer as a gRPC server
    (Ray's GCS and its client server are) within :data:`RAY_PROBE_SECONDS`; None when it does, or the address
    is ``auto``, empty or not host:port (``ray.init`` then says what is wrong with it). ``ray.init`` retries
    an address that is not Ray forever."""
    import socket

    if not address or address == "auto":
        return None
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        connection = socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_PROBE_SECONDS)
    except OSError as exc:
        return str(exc.strerror or exc)
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        connection.close()
        return None  # (a TLS server answers only a TLS handshake: ray.init checks it)
    try:
        connection.settimeout(RAY_PROBE_SECONDS)
        connection.sendall(_HTTP2_PREFACE)
        answer = b""
        while len(answer) < 9:
            part = connection.recv(9 - len(answer))
            if not part:
                break
            answer += part
    except socket.timeout:
        return (f"it accepts connections but sent nothing back within {RAY_PROBE_SECONDS:g} s: not a Ray GCS "
                "or Ray client server")
    except OSError as exc:
        return f"it accepts connections but then failed: {exc.strerror or exc}"
    finally:
        connection.close()
    if len(answer) < 9 or answer[3] != 4:  # frame type 4: SETTINGS
        said = answer.split(b"\r\n", 1)[0].decode("ascii", "replace").strip()
        return ("it accepts connections but does not speak gRPC" + (f" (it answered '{said}')" if said else "")
                + ": not a Ray GCS or Ray client server")
    return None


def init_ray(ray, address: Optional[str], **options) -> None:
    """``ray.init(address, **options)``, keeping this process's SIGTERM and SIGINT handlers: Ray installs its
    own (a native stack dump and exit 15 on SIGTERM), which would bypass the command line's clean-up. A
    SIGINT or SIGTERM while Ray starts is held until it has, then Ray is stopped and KeyboardInterrupt
    raised. Raises ConnectionError first when ``address`` (or, without one, ``RAY_ADDRESS``) is ``host:port`` and
    nothing answers there: ``ray.init`` retries such an address forever."""
    target = address or os.environ.get("RAY_ADDRESS")
    reason = unreachable_ray(target)
    if reason:
        where = f"{target}{'' if address else ' (from RAY_ADDRESS)'}"
        raise ConnectionError(f"no Ray cluster at {where}: {reason}" if reason.startswith("it accepts")
                              else f"nothing answers at {where} ({reason})")

    # Ray's core worker installs a native crash handler in the driver that, on shutdown, leaves SIGTERM at
    # the default action for the second or so ray.shutdown() still takes: a SIGTERM then killed the
    # process (exit 143) before the command line could clean up. The driver started here goes without it.
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    kept = getattr(constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    if kept is not None:
        constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    # Ctrl-C and SIGTERM wait until ray.init returns: raised mid-start, they left Ray's agents running,
    # orphaned. Ray sets its own SIGTERM handlers while it starts (sys.exit(15); its node's clean-up), which
    # would not wait: they are not set here (the command line's handlers are put back after anyway).
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    set_handler = getattr(utils, "set_sigterm_handler", None)
    if callable(set_handler):
        utils.set_sigterm_handler = lambda handler: None
    try:
        with _held_while_starting() as caught:
            try:
                with _signal_handlers_kept():
                    ray.init(address=address, **options)
            except Exception:
                if not caught:
                    raise  # (else Ray failed to start because the signal reached its processes too: `timeout`
                    # and `docker stop` signal the whole process group; the interrupt is what to report)
        if caught:
            raise KeyboardInterrupt
    except (KeyboardInterrupt, SystemExit) as exc:
        # interrupted while Ray starts: what it started (its node, agents) is stopped, and the interrupt
        # raised as the command line's (exit 130 with its message)
        if isinstance(exc, SystemExit) and exc.code != signal.SIGTERM:
            raise
        with contextlib.suppress(Exception):
            shutdown_ray(ray)
        raise KeyboardInterrupt from None
    finally:
        if kept is not None:
            constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = kept
        if callable(set_handler):
            utils.set_sigterm_handler = set_handler


RAY_INTERRUPT_GRACE_SECONDS = 10.0  # how long an interrupt waits for ray.init to return before it is raised anyway


@contextmanager
def _held_while_starting():
    """SIGINT and SIGTERM recorded, not acted on, inside (yields the list); but when the block has not ended
    :data:`RAY_INTERRUPT_GRACE_SECONDS` after the first, KeyboardInterrupt is raised in it (``ray.init`` stuck
    retrying an address), and should even that not end it within 3 s (stuck outside Python), the process
    exits 130 with an ``error:`` line. Main thread only (elsewhere nothing is held)."""
    import threading

    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    done, overdue = threading.Event(), threading.Event()

    def watch() -> None:
        if done.wait(RAY_INTERRUPT_GRACE_SECONDS):
            return
        overdue.set()
        signal.pthread_kill(threading.main_thread().ident, caught[0])  # runs handler() at Python's next step
        if not done.wait(3.0):
            os.write(2, b"error: interrupted; Ray did not stop starting, so the process ends without its clean-up\n")
            os._exit(130)

    def handler(signum, frame) -> None:
        if overdue.is_set():
            raise KeyboardInterrupt
        caught.append(signum)
        if len(caught) == 1:
            threading.Thread(target=watch, name="onnx-alds-ray-interrupt", daemon=True).start()

    from .signals import signal_handlers

    try:
        with signal_handlers(("SIGINT", "SIGTERM"), handler):
            yield caught
    finally:
        done.set()


def shutdown_ray(ray) -> None:
    """``ray.shutdown()``, keeping this process's SIGTERM and SIGINT handlers: a core worker that installed
    its crash handler (a driver :func:`init_ray` did not start) leaves SIGTERM at the default action when it
    stops while Python still names the old handler, so a SIGTERM afterwards killed the process (exit 143)."""
    with _signal_handlers_kept():
        ray.shutdown()


@contextmanager
def _signal_handlers_kept():
    """Inside, Ray may replace the SIGTERM and SIGINT handlers (in Python or below it); they are set again
    on leaving (in the main thread only: elsewhere no handler can be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in kept.items():
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(number, handler)


@contextmanager
def calibration_workers(workers: int = 1, *, cpus_per_worker: int = 1, address: Optional[str] = None,
                        engine: Optional[str] = None):
    """Within this context, :func:`collect_statistics` (and so ``compress``, sequential calibration,
    pruning) runs its calibration shards on ``workers`` Ray actors of ``cpus_per_worker`` CPUs each
    (their ONNX Runtime threads); 1 (default): in this process, no Ray needed. ``engine``: ``"local"``
    or ``"ray"`` (None: ray for more than one worker); ``"ray"`` with one worker gives one actor (for
    measuring). Yields a :class:`CalibrationWorkers`, whose ``timeline`` lists the shards computed.

    The statistics are the same bits whatever ``workers`` is: the shards (``CalibrationLimits.shard_runs``
    runs each) and the order they are summed in do not depend on it (docs/SWEEP.md). Joins the Ray
    instance the process has, else ``ray.init(address)`` (None: ``RAY_ADDRESS`` or a new local instance,
    which is shut down on leaving). Raises :class:`InputDataError` for ``workers < 1``, ``cpus_per_worker
    < 1``, or ``workers > 1`` without Ray installed or reachable.
    """
    from .argtypes import check_count

    check_count("calibration_workers", workers)
    check_count("cpus_per_worker", cpus_per_worker)
    engine = engine or ("ray" if workers > 1 else "local")
    if engine not in ("local", "ray") or (engine == "local" and workers > 1):
        raise InputDataError(f"got calibration engine '{engine}' with {workers} worker(s); give local (one worker) or ray")
    started = False
    ray = None
    if engine == "ray":
        ray = import_ray()
        if not ray.is_initialized():
            options: dict = dict(logging_level=logging.WARNING, log_to_driver=False)
            if not (address or os.environ.get("RAY_ADDRESS")):
                options["include_dashboard"] = False
            try:
                init_ray(ray, address, **options)
            except Exception as exc:
                raise InputDataError(f"cannot start or reach Ray{' at ' + address if address else ''} for the "
                                     f"calibration workers: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                     ) from None
            started = True
    record = CalibrationWorkers(workers, cpus_per_worker, address, engine)
    token = _WORKERS.set(record)
    try:
        yield record
    finally:
        _WORKERS.reset(token)
        if started and ray.is_initialized():
            shutdown_ray(ray)


def _executor(plan: _Plan, model, reference):
    setting = _WORKERS.get()
    if setting is None or setting.engine == "local":
        return _LocalShards()
    return _RayShards(import_ray(), setting.count, setting.cpus, plan, model, reference)


def _merge_into(totals: dict[str, StatisticSums], part: dict) -> None:
    """Fold one shard's accumulators into ``totals``, one layer at a time (float64; the first part is taken)."""
    for name in list(part):
        sums = part.pop(name).sums()
        if name in totals:
            totals[name].merge(sums)
        else:  # arrays Ray hands back are read-only views of its object store
            writable = all(array.flags.writeable for array in (sums.gram, sums.total, sums.cross, sums.reference_total)
                           if array is not None)
            totals[name] = sums if writable else sums.copy()
        del sums


def collect_statistic_sums(model: onnx.ModelProto, layers: Sequence[Layer], inputs, *, batch_size: int = 16,
                           reference: Optional[onnx.ModelProto] = None, limits: Optional[CalibrationLimits] = None,
                           notes: Optional[list[str]] = None, first_sample: int = 0) -> dict[str, StatisticSums]:
    """The additive sums (:class:`StatisticSums`, float64) of every layer's input vectors over ``inputs``,
    a shard of a calibration set whose first sample has index ``first_sample`` in the whole set (it seeds
    the position sampling, so that a sample gives the same vectors in any shard).

    Sums of disjoint shards merged with :func:`merge_statistic_sums` and finalized with
    :func:`finalize_statistics` give what :func:`collect_statistics` gives on their union, up to the
    float summation order; bit for bit when every shard but the last holds ``limits.shard_runs`` whole
    runs (``shard_runs × batch_size`` samples; of the fixed batch for a fixed-batch model) and the
    shards are merged in order. Arguments and errors as for :func:`collect_statistics`; a shard that gives a
    layer no vector yields zero sums for it (the merged whole is checked by :func:`finalize_statistics`).
    """
    limits = limits if limits is not None else DEFAULT_LIMITS
    return _collect(model, layers, inputs, batch_size, reference, limits, notes, first_sample, whole=False)


def merge_statistic_sums(parts: Iterable[Mapping[str, StatisticSums]]) -> dict[str, StatisticSums]:
    """The sums of ``parts`` (each a result of :func:`collect_statistic_sums`, by layer name) added in the
    given order, in float64; the parts are left unchanged. A layer missing from some parts (over the
    moment limit) is summed over those that have it. Raises :class:`UnsupportedModelError` when two
    parts hold different kinds of sums for a layer (other width, cross moments in one only)."""
    merged: dict[str, StatisticSums] = {}
    for part in parts:
        for name, sums in part.items():
            if name in merged:
                merged[name].merge(sums)
            else:
                merged[name] = sums.copy()
    return merged


def finalize_statistics(sums: Mapping[str, StatisticSums]) -> dict[str, LayerStatistics]:
    """The :class:`LayerStatistics` of merged sums (the sums are left unchanged).

    Raises :class:`UnsupportedModelError` for a layer that saw no vector, :class:`InputDataError` for
    one whose sums are not finite."""
    _check_sums(sums)
    return {name: value.finalize() for name, value in sums.items()}


def _check_sums(sums: Mapping[str, StatisticSums]) -> None:
    empty = [name for name, value in sums.items() if value.count == 0]
    if empty:
        raise UnsupportedModelError(f"layer '{empty[0]}' saw no input vectors on the calibration data "
                                    "(its output is empty); exclude it with --exclude")
    broken = [name for name, value in sums.items() if not value.finite()]
    if broken:
        raise InputDataError(
            f"layer '{broken[0]}' sees inf/NaN (or values beyond float32) in its input on the "
            f"calibration data{f' (and {len(broken) - 1} more layers)' if len(broken) > 1 else ''}; check the "
            "model's weights and the calibration inputs, or compress data-free")


def collect_statistics(model: onnx.ModelProto, layers: Sequence[Layer], inputs, *, batch_size: int = 16,
                       reference: Optional[onnx.ModelProto] = None, limits: Optional[CalibrationLimits] = None,
                       notes: Optional[list[str]] = None) -> dict[str, LayerStatistics]:
    """Moments of every layer's input vectors over ``inputs`` (an :class:`~onnx_alds.inputs.InputSet`).

    ``model`` is run; ``reference`` (the original model, when ``model`` is partially compressed) is run
    beside it on the same batches to get the cross moments ``E[x x̃ᵀ]``. The node named like each
    layer is looked up in ``reference`` if given (it is unchanged there), otherwise in ``model``.
    ``limits`` (default :data:`DEFAULT_LIMITS`) bound time and memory; what they changed (fixed batch,
    samples left out, lowered batch, extra passes, sampled positions, layers left without statistics)
    is appended to ``notes`` as sentences. Layers over the moment limit are missing from the result.

    The set is cut into shards of ``limits.shard_runs`` runs; each shard's sums start from zero and are
    added in shard order in float64 (:class:`StatisticSums`), in this process or, inside
    :func:`calibration_workers`, on Ray actors: the same bits either way.
    """
    limits = limits if limits is not None else DEFAULT_LIMITS
    sums = _collect(model, layers, inputs, batch_size, reference, limits, notes, 0, whole=True)
    return {name: sums.pop(name).finalize(in_place=True) for name in list(sums)}


def _collect(model, layers, inputs, batch_size: int, reference, limits: CalibrationLimits,
             notes: Optional[list[str]], first_sample: int, whole: bool) -> dict[str, StatisticSums]:
    said: list[str] = []
    plan = _prepare(model, layers, inputs, batch_size, reference, limits, said)
    if plan is None:
        _flush(said, notes)
        return {}
    totals: dict[str, StatisticSums] = {}
    try:
        total = len(inputs)
    except TypeError:
        total = None
    per_run, fixed = plan.per_run, plan.fixed
    runs_per_pass = None if total is None else (total // per_run if fixed else -(-total // per_run))
    count = _RunCount()
    executor = _executor(plan, model, reference) if whole else _LocalShards()
    try:
        with _progress_bar(None if runs_per_pass is None else runs_per_pass * len(plan.passes), "calibration",
                           limits.show_progress()) as bar:
            for index in range(len(plan.passes)):
                count = _RunCount()
                runs = calibration_runs(inputs, model, per_run, count=count)
                shards = ((first_sample + first, group) for first, group in _shards(runs, limits.shard_runs))
                for done, part in executor.run_pass(plan, model, reference, index, shards):
                    _merge_into(totals, part)
                    bar.update(done)
    finally:
        executor.close()
    if count.runs == 0:
        if fixed and count.dropped:
            raise InputDataError(f"the model fixes the batch to {fixed}, but the calibration set holds only "
                                 f"{count.dropped} sample{'s' if count.dropped != 1 else ''}; give at least {fixed}")
        raise InputDataError("the calibration set holds no samples; give at least one calibration input")
    if count.dropped:
        said.append(f"the model fixes its first dim to {fixed}: calibration used {count.used} of "
                    f"{count.used + count.dropped} samples (the last {count.dropped} "
                    f"{'does' if count.dropped == 1 else 'do'} not fill a batch of {fixed})")
    if whole:
        empty = [name for name, value in totals.items() if value.count == 0]
        if empty:
            raise UnsupportedModelError(f"layer '{empty[0]}' saw no input vectors on the calibration data "
                                        "(its output is empty); exclude it with --exclude")
        broken = [layer for layer in plan.measured if layer.name in totals and not totals[layer.name].finite()]
        if broken:
            raise InputDataError(
                f"layer '{broken[0].name}' sees inf/NaN (or values beyond float32) in its input '{broken[0].input}' "
                f"on the calibration data{f' (and {len(broken) - 1} more layers)' if len(broken) > 1 else ''}; "
                "check the model's weights and the calibration inputs, or compress data-free")
    sampled = [name for name, value in totals.items() if value.positions_per_sample is not None]
    if sampled:
        said.append(f"calibration sampled {limits.positions_per_sample} positions per sample in {len(sampled)} "
                    f"layer(s) with more (first: '{sampled[0]}')")
    _flush(said, notes)
    return totals


def _flush(said: Sequence[str], notes: Optional[list[str]]) -> None:
    """Append the calibration notes to ``notes`` (skipping ones already there), or log them."""
    for note in said:
        if notes is None:
            log.warning("%s", note)
        elif note not in notes:
            notes.append(note)


def collect_second_moments(model: onnx.ModelProto, layers: Sequence[Layer], inputs, *,
                           batch_size: int = 16, limits: Optional[CalibrationLimits] = None) -> dict[str, np.ndarray]:
    """``E[x xᵀ]`` (``cols × cols``, float64) of every layer's input vectors, by layer name."""
    stats = collect_statistics(model, layers, inputs, batch_size=batch_size, limits=limits)
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
