"""Output-damage tables: how far each layer's factorization moves the model's outputs, measured.

Per-layer relative error is the wrong currency when layers differ in how much of their error
reaches the output (docs/DATA_AWARE.md: on EfficientNet-Lite0 halving one layer's weights moves the
logits by 9 % for one layer and 92 % for another). This module measures it, as the output-aware
allocations of the literature do (BALF, arXiv 2509.25136; LEMS; SVD-LLM v2), with forward passes only:

- **Damage.** For layer ``ℓ`` factorized alone (every other layer dense) with data-aware factors
  (whitened SVD + decoder refit, :func:`onnx_alds.data_aware.data_aware_factors`) at groups ``g`` and
  rank ``r``, ``d_ℓ(g, r)`` is the relative squared change of the graph outputs on a small fixed
  subset of the calibration inputs, ``‖ŷ − y‖² / ‖y‖²`` per float output, averaged over the outputs.
  Squared errors of independent layers add, so ``Σ_ℓ d_ℓ`` predicts the whole model's relative
  squared output error and ``sqrt(Σ_ℓ d_ℓ)`` its relative output error (the report prints both).
- **A few ranks, interpolated.** Each ``(ℓ, g)`` is measured at ``points`` ranks (sizes spaced
  geometrically from 1/16 to 3/4 of the layer's dense size); ranks below the smallest measured one are
  not offered (no extrapolation downward). Between them the layer's own whitened error table
  ``ε_ℓ(g, r)`` (relative RMS error of the layer's output) gives the shape: ``d = s(r)·ε(r)²`` with the
  ratio ``s = d/ε²`` interpolated linearly in ``r`` between the measured ranks and held constant
  above the largest; the result is made non-increasing in ``r``, never below a measurement at a larger
  rank, and is 0 at full rank.
- **One session, batched.** The model is run by one ONNX Runtime session in which the weight of every
  candidate layer is a graph input: a probe feeds the dense product of the factors (the same function
  as the factor pair, up to float rounding) for one layer and the original weights for the others.
  Cost: ``1 + Σ_ℓ |G_ℓ|·points`` runs of the model on ``samples`` inputs (``G_ℓ``: the measured group
  counts), plus one whitened decomposition per probe; no session is built per probe.
- **Cached.** Tables are kept in memory per (model, layers, calibration subset, settings), so a
  sweep over budgets measures once (:func:`clear_cache` empties it).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx

from .allocate import DENSE, LayerChoice, Option
from .errors import InputDataError
from .layers import POINTWISE_FIRST, Layer, constant_array, folded_weight, iter_graphs
from .model_io import graph_inputs
from .spectra import ErrorTable

PROBE_PREFIX = "onnx_alds_probe_weight_"


@dataclass(frozen=True)
class DamageCurve:
    """Predicted damage of one layer at one group count for every allowed rank (ascending), and the
    ranks where it was measured with what was measured there."""

    groups: int
    ranks: np.ndarray
    sizes: np.ndarray  # weights kept at each rank
    damage: np.ndarray  # predicted relative squared output error at each rank
    measured_ranks: np.ndarray
    measured_damage: np.ndarray
    order: Optional[str] = None


@dataclass(frozen=True)
class DamageTable:
    """One layer's damage curves (one per measured group count); dense is damage 0."""

    layer: str
    dense_size: int
    curves: tuple[DamageCurve, ...]


@dataclass(frozen=True)
class DamageCost:
    """What measuring the tables cost: model runs, samples per run, seconds; ``cached`` when reused."""

    runs: int
    samples: int
    seconds: float
    cached: bool = False
    out_of_sample: bool = False  # the probed factors were fitted without the probe inputs
    # layers whose probes say nothing: they made the outputs NaN or infinite (a product past float16's
    # range), or the layer's input is zero on every calibration input; their options are not offered
    unpriced: tuple[str, ...] = ()


def unpriced_damage_note(layers: Sequence[str]) -> str:
    """The report's note for :attr:`DamageCost.unpriced`."""
    count = f"{len(layers)} layer{'s' if len(layers) != 1 else ''}"
    return (f"--method damage: the factorized options of {count} could not be priced (first: "
            f"'{layers[0]}': its input is zero on every calibration input, or a probe made the outputs NaN or "
            "infinite, a product past the range of the model's float type) and are not offered (a layer with none "
            "left stays dense)")


def cache_outputs_note(model: onnx.ModelProto) -> Optional[str]:
    """A note when the damage is measured over key/value cache outputs beside others (a decoder exported with
    its cache): the damage is the relative squared error of every float output together, and the caches,
    which pass the past keys and values through, hold most of the norm, so the logits' own error is larger
    than predicted (5.6x in-sample on a 2-layer transformers Llama export with a cache). None otherwise."""
    from .validate import CACHE_NAME

    names = [value.name for value in model.graph.output]
    caches = [name for name in names if CACHE_NAME.search(name)]
    if not caches or len(caches) == len(names):
        return None
    others = [name for name in names if name not in caches]
    count = f"{len(caches)} key/value cache output{'s' if len(caches) > 1 else ''}"
    return (f"--method damage measures the output error over every float output together, {count} included "
            f"(first: '{caches[0]}'), which carry the past through and hold much of the norm: "
            f"the error of '{others[0]}' alone can be several times the predicted one; validate it "
            "(onnx-alds validate) before trusting the figure")


_CACHE: dict[str, tuple[list[DamageTable], DamageCost]] = {}
_CACHE_SIZE = 8


def clear_cache() -> None:
    """Forget every measured table."""
    _CACHE.clear()


def _digest(proto: onnx.ModelProto, layers: Sequence[Layer], feeds: Sequence[Mapping[str, np.ndarray]],
            settings: tuple) -> str:
    sha = hashlib.sha1()
    sha.update(proto.graph.SerializeToString(deterministic=True))
    for layer in layers:
        sha.update(repr((layer.name, layer.order, layer.groups)).encode())
    for feed in feeds:
        for name in sorted(feed):
            sha.update(name.encode())
            sha.update(np.ascontiguousarray(feed[name]).tobytes())
    sha.update(repr(settings).encode())
    return sha.hexdigest()


def weight_in_node_layout(layer: Layer, matrix: np.ndarray) -> np.ndarray:
    """A patch-space ``f × c·κ`` matrix in the layout of the layer's weight tensor (Conv
    ``(f, c, k…)``, stored-transposed ``(c, f)``)."""
    if layer.stored_transposed:
        return np.ascontiguousarray(matrix.T)
    return np.ascontiguousarray(matrix.reshape(layer.weight_shape))


def factors_as_patch_matrix(layer: Layer, factors) -> np.ndarray:
    """The ``f × c·κ`` matrix the factor pair computes, for either order."""
    product = factors.dense()
    if layer.order != POINTWISE_FIRST:
        return product
    f, c, kernel = layer.out_features, layer.in_channels, layer.kernel
    return np.moveaxis(product.reshape(f, kernel, c), 2, 1).reshape(f, c * kernel)  # inverse of pointwise_matrix


def _probe_model(proto: onnx.ModelProto, layers: Sequence[Layer]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``proto`` whose layers take their weight from a new graph input each (main graph only)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    nodes = {node.name: node for node in probe.graph.node}
    names: dict[str, str] = {}
    for i, layer in enumerate(layers):
        node = nodes.get(layer.name)
        if node is None or layer.subgraph:
            continue
        name = f"{PROBE_PREFIX}{i}"
        node.input[0 if layer.weight_first else 1] = name
        shape = list(layer.weight_shape)
        probe.graph.input.append(onnx.helper.make_tensor_value_info(name, layer.weight_type, shape))
        names[layer.name] = name
    used = {name for _, graph in iter_graphs(probe.graph) for node in graph.node for name in node.input}
    kept = [init for init in probe.graph.initializer if init.name in used or init.name in {o.name for o in probe.graph.output}]
    if len(kept) != len(probe.graph.initializer):
        dropped = {init.name for init in probe.graph.initializer} - {init.name for init in kept}
        del probe.graph.initializer[:]
        probe.graph.initializer.extend(kept)
        # a dropped weight listed as a graph input too (every initializer of an IR 3 model) goes with it,
        # else ONNX Runtime asks for it as a required input
        inputs = [value for value in probe.graph.input if value.name not in dropped]
        del probe.graph.input[:]
        probe.graph.input.extend(inputs)
    return probe, names


def _outputs(session, feed: Mapping[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(value, dtype=np.float64) for value in session.run(list(names), dict(feed))]


def relative_damage(reference: Sequence[Sequence[np.ndarray]], outputs: Sequence[Sequence[np.ndarray]]) -> float:
    """Relative squared error per float output (summed over the runs), averaged over the outputs."""
    values = []
    for index in range(len(reference[0])):
        num = sum(float(np.sum((out[index] - ref[index]) ** 2)) for ref, out in zip(reference, outputs))
        den = sum(float(np.sum(ref[index] ** 2)) for ref in reference)
        values.append(num / den if den > 0 else (0.0 if num == 0 else np.inf))
    return float(np.mean(values))


def probed_samples(feed: Mapping[str, np.ndarray]) -> int:
    """The samples in one run's feed (its first array's first dim)."""
    return int(next(iter(feed.values())).shape[0]) if feed else 0


def statistics_beside_probes(proto: onnx.ModelProto, layers: Sequence[Layer], calibration,
                             feeds: Sequence[Mapping[str, np.ndarray]], *, batch_size: int = 16,
                             shrinkage: bool = True, centered: bool = False) -> tuple[Optional[dict], int]:
    """Calibration statistics of ``layers`` fitted out of sample: on the calibration inputs after the first
    ones, which ``feeds`` (the probe runs) hold, so that what the probes measure is not what the factors or
    refits were fitted to. Ledoit–Wolf shrunk when ``shrinkage`` (``centered``: shrink the covariance, for
    a fit with a bias). Returns the statistics by layer name, or None when less than one run of other
    inputs is left (a fixed batch whole) or the set has no arrays to split, and the samples the probes
    use. One statistics pass (:func:`onnx_alds.calibrate.collect_statistics`)."""
    from .model_io import fixed_batch

    used = sum(probed_samples(feed) for feed in feeds)
    arrays = getattr(calibration, "arrays", None)
    if not arrays or len(next(iter(arrays.values()))) - used < (fixed_batch(proto) or 1):
        return None, used
    from .calibrate import collect_statistics
    from .inputs import InputSet

    rest = InputSet({name: array[used:] for name, array in arrays.items()}, source="damage fit")
    fitted = collect_statistics(proto, list(layers), rest, batch_size=batch_size,
                                notes=[])  # (its notes repeat the calibration's)
    return {name: (value.shrunk(centered=centered) if shrinkage else value) for name, value in fitted.items()}, used


PROBE_FRACTIONS = (1 / 16, 3 / 4)  # the smallest and largest fraction of the dense size probed


def probe_ranks(ranks: np.ndarray, sizes: np.ndarray, dense_size: int, points: int) -> np.ndarray:
    """Up to ``points`` distinct ranks whose sizes are spaced geometrically from 1/16 to 3/4 of the
    dense size (one point: 1/4); the smallest allowed rank when nothing is that small."""
    if len(ranks) == 0:
        return ranks
    low, high = PROBE_FRACTIONS
    fractions = np.geomspace(low, high, points) if points > 1 else np.array([0.25])
    picks = np.clip(np.searchsorted(sizes, dense_size * fractions, side="right") - 1, 0, len(ranks) - 1)
    return np.unique(ranks[picks])


def interpolate_damage(ranks: np.ndarray, table_errors: np.ndarray, measured_ranks: np.ndarray,
                       measured_damage: np.ndarray) -> np.ndarray:
    """Predicted damage at every rank: ``s(r)·ε(r)²`` with ``s = d/ε²`` interpolated linearly between
    the measured ranks (held constant outside them), then made non-increasing in rank.

    Where ``ε = 0`` at a measured rank (nothing discarded) the measurement itself is used there."""
    errors_sq = np.asarray(table_errors, dtype=np.float64) ** 2
    where = np.searchsorted(ranks, measured_ranks)
    eps = errors_sq[where]
    ratio = np.where(eps > 0, measured_damage / np.where(eps > 0, eps, 1.0), 0.0)
    ratio = np.maximum(ratio, 0.0)
    if np.all(eps <= 0):
        predicted = np.interp(ranks, measured_ranks, measured_damage)
    else:
        valid = eps > 0
        predicted = np.interp(ranks, measured_ranks[valid], ratio[valid]) * errors_sq
    predicted = np.where(errors_sq > 0, predicted, 0.0)
    predicted[where] = np.asarray(measured_damage, dtype=np.float64)
    predicted = np.minimum.accumulate(np.maximum(predicted, 0.0))
    return np.maximum.accumulate(predicted[::-1])[::-1]  # and never below a measurement at a larger rank


def measure_damage_tables(proto: onnx.ModelProto, layers: Sequence[Layer], tables: Sequence[ErrorTable],
                          constants: Mapping, stats: Mapping, calibration, *, samples: int = 8, points: int = 4,
                          max_groups: int = 1, refit: bool = True, factor_fn=None,
                          batch_size: int = 16, out_of_sample: bool = True,
                          shrinkage: bool = True) -> tuple[list[DamageTable], DamageCost]:
    """The damage table of every layer (see the module docstring).

    ``tables``: each layer's whitened error table with the ``frobenius`` measure (relative RMS output
    error of the layer), which shapes the interpolation. ``stats``: calibration statistics by layer
    name (:class:`onnx_alds.calibrate.LayerStatistics`); a layer without them is measured with
    data-free factors. ``samples``: calibration inputs run per probe (the first ones; whole batches
    when the model fixes its batch). ``points``: ranks measured per group count. ``max_groups``: the
    group counts measured (and hence offered to the allocation) are the layer's candidates up to it.
    ``factor_fn(layer, matrix, groups, rank, stat)``: the factors to probe (default whitened + refit).
    ``out_of_sample`` (default): the probed factors are fitted to statistics of the *other* calibration
    inputs (one extra statistics pass; Ledoit–Wolf shrunk when ``shrinkage``), so that a layer with few
    input vectors for its dimension (a classifier after global pooling) is not judged on the very
    inputs it was fitted to, which would hide its damage; with no other inputs left, ``stats`` is used.

    Returns the tables and the cost. Raises :class:`InputDataError` when the calibration set is empty
    or the model has no float output.
    """
    from .calibrate import calibration_runs
    from .data_aware import NO_FLOAT_OUTPUT, check_finite_outputs, data_aware_factors, reusing_whitening
    from .decompose import decompose
    from .runtime import float_output_names, make_session

    if samples < 1 or points < 1 or max_groups < 1:
        raise InputDataError(f"got damage samples {samples}, points {points}, max groups {max_groups}; "
                             "give positive counts, e.g. 8 samples, 3 points, max groups 1")
    feeds = list(calibration_runs(calibration, proto, min(samples, batch_size) if batch_size else samples,
                                  limit=samples))
    if not feeds:
        raise InputDataError("the calibration set holds no samples; give at least one calibration input")
    names = [spec.name for spec in graph_inputs(proto)]
    feeds = [{name: feed[name] for name in names} for feed in feeds]
    settings = (samples, points, max_groups, refit, factor_fn is None, out_of_sample, shrinkage,
                tuple((t.dense_size, tuple((o.groups, len(o.ranks)) for o in t.options)) for t in tables))
    arrays = getattr(calibration, "arrays", None)
    if arrays:  # the probed factors are fitted to the other inputs: they are part of what was measured
        fitting = {name: np.asarray(array) for name, array in arrays.items()}
        settings += (tuple((name, array.shape) for name, array in sorted(fitting.items())),
                     hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes() for _, a in sorted(fitting.items())))
                     .hexdigest())
    else:
        settings += (id(calibration),)  # no arrays to read: never reuse another set's tables
    key = _digest(proto, layers, feeds, settings)
    if key in _CACHE:
        cached_tables, cost = _CACHE[key]
        return cached_tables, replace(cost, cached=True)

    started = time.perf_counter()
    fitted, used = (statistics_beside_probes(proto, [layer for layer in layers if layer.name in stats], calibration,
                                             feeds, batch_size=batch_size, shrinkage=shrinkage)
                    if out_of_sample else (None, sum(probed_samples(feed) for feed in feeds)))
    held_out = fitted is not None
    stats = fitted if held_out else stats
    probe, inputs = _probe_model(proto, layers)
    session = make_session(probe, "cpu")
    originals: dict[str, np.ndarray] = {}
    for layer in layers:
        if layer.name in inputs:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(layer.weight_type)
            originals[inputs[layer.name]] = np.ascontiguousarray(constant_array(constants, layer.weight).astype(dtype))
    float_names = float_output_names(session)
    if not float_names:
        raise InputDataError(f"--method damage {NO_FLOAT_OUTPUT.format(what='layer')}; use --method alds")

    def run_all(weights: Mapping[str, np.ndarray]) -> list[list[np.ndarray]]:
        return [_outputs(session, {**feed, **weights}, float_names) for feed in feeds]

    reference = run_all(originals)
    check_finite_outputs(float_names, [np.concatenate([run[i].ravel() for run in reference])
                                       for i in range(len(float_names))], "--method damage")
    runs = 1
    unpriced: list[str] = []
    factor = factor_fn or (lambda layer, matrix, g, r, stat: data_aware_factors(matrix, g, r, stat, refit=refit,
                                                                                layer=layer))
    results = []
    with reusing_whitening():  # (a layer is factored at several ranks in a row: one Cholesky per layer and g)
        for layer, table in zip(layers, tables):
            if layer.name not in inputs:
                results.append(DamageTable(layer.name, table.dense_size, ()))
                continue
            stat = stats.get(layer.name)
            if stat is not None and not np.any(np.asarray(stat.second_moment)):  # zero inputs: every option looks free
                unpriced.append(layer.name)
                results.append(DamageTable(layer.name, table.dense_size, ()))
                continue
            matrix = folded_weight(layer, constants, patch=True)
            dtype = originals[inputs[layer.name]].dtype
            curves = []
            for option in table.options:
                if option.groups > max_groups or len(option.ranks) == 0:
                    continue
                measured = probe_ranks(option.ranks, option.sizes, table.dense_size, points)
                damage = []
                for rank in measured:
                    if stat is not None:
                        factors = factor(layer, matrix, option.groups, int(rank), stat)
                    else:
                        factors = decompose(folded_weight(layer, constants), option.groups, int(rank))
                    approx = weight_in_node_layout(layer, factors_as_patch_matrix(layer, factors)).astype(dtype)
                    outputs = run_all({**originals, inputs[layer.name]: approx})
                    runs += 1
                    damage.append(relative_damage(reference, outputs))
                measured_damage = np.array(damage)
                if not np.all(np.isfinite(measured_damage)):  # no finite price: the option is not offered
                    unpriced.append(layer.name)
                    continue
                predicted = interpolate_damage(option.ranks, option.errors, measured, measured_damage)
                offered = option.ranks >= measured[0]  # no extrapolation below the smallest measured rank
                curves.append(DamageCurve(option.groups, option.ranks[offered], option.sizes[offered],
                                          predicted[offered], measured, measured_damage, option.order))
            results.append(DamageTable(layer.name, table.dense_size, tuple(curves)))
            del matrix
    cost = DamageCost(runs, used, time.perf_counter() - started, out_of_sample=held_out,
                      unpriced=tuple(dict.fromkeys(unpriced)))
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (results, cost)
    return results, cost


def damage_options(layers: Sequence[Layer], damage_tables: Sequence[DamageTable], scales: Sequence[float],
                   unit: str) -> list[Option]:
    """The :class:`~onnx_alds.allocate.Option` of every layer: dense (damage 0, full cost) and every
    measured ``(g, r)`` (cost = weights × ``scale``, in ``unit``), with a :class:`LayerChoice` payload."""
    options = []
    for layer, table, scale in zip(layers, damage_tables, scales):
        dense_cost = float(table.dense_size) * scale
        options.append(Option((layer.name,), "dense", {unit: dense_cost}, 0.0,
                              LayerChoice(DENSE, 0, dense_cost, 0.0)))
        for curve in table.curves:
            for rank, size, damage in zip(curve.ranks, curve.sizes, curve.damage):
                cost = float(size) * scale
                options.append(Option((layer.name,), "low-rank", {unit: cost}, float(damage),
                                      LayerChoice(curve.groups, int(rank), cost, float(damage), curve.order)))
    return options


__all__ = ["DamageCurve", "DamageTable", "DamageCost", "measure_damage_tables", "damage_options",
           "interpolate_damage", "probe_ranks", "clear_cache", "weight_in_node_layout", "factors_as_patch_matrix",
           "statistics_beside_probes", "probed_samples", "relative_damage"]
