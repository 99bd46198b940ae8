"""Data-aware decomposition: factors fitted to what each layer sees on calibration inputs.

Every group is decomposed in the metric of its input second moment (``W_i L_i``,
``L_i L_iᵀ = E[x_i x_iᵀ]``); each decoder is optionally refit by least squares on the full second
moment; sequential mode fits each layer to the inputs produced by the already-compressed layers
before it; bias correction adds the mean output error to each decoder's bias; sensitivity weighting
(experimental) scales each layer's error table by its measured effect on the model output.
Every model run goes through :func:`onnx_alds.calibrate.calibration_runs` (a fixed batch runs at that
batch); a layer that calibration left without statistics (its moment over the memory limit, named in
a note) gets data-free factors, with a note. The maths is in :mod:`onnx_alds.decompose` and
docs/DATA_AWARE.md.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx

from .allocate import LayerChoice
from .decompose import (GroupedFactors, affine_correction, alternate_factors, bias_shift, decompose,
                        patch_decoder_to_pointwise, patch_encoder, pixel_moment, pointwise_decoder_to_patch,
                        pointwise_matrix, refit_decoder, sequential_target, whitening_factor)
from .errors import InputDataError
from .layers import POINTWISE_FIRST, Layer, folded_weight
from .model_io import fixed_batch, graph_inputs
from .rewrite import Rewrite, rewrite_model
from .runtime import float_output_names, make_session
from .spectra import ErrorTable


def whitening_factors(second_moment: np.ndarray, groups: Sequence[int]) -> dict[int, list[np.ndarray]]:
    """Per candidate ``g`` (and ``g = 1``), the Cholesky factor of each group's block of the input second moment."""
    return {g: _group_whitening(second_moment, g) for g in sorted(set(groups) | {1})}


def _group_whitening(second_moment: np.ndarray, groups: int) -> list[np.ndarray]:
    """The Cholesky factor of each of the ``groups`` diagonal blocks of ``second_moment``."""
    width = second_moment.shape[0] // groups
    return [whitening_factor(second_moment[i * width:(i + 1) * width, i * width:(i + 1) * width])
            for i in range(groups)]


# (moment, groups, factors) of the last whitening while reusing_whitening() is active, else None
_LAST_WHITENING: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("last_whitening", default=None)


@contextmanager
def reusing_whitening() -> Iterator[None]:
    """Within the block, factoring the same moment array at the same ``g`` again (the damage tables factor one
    layer at several ranks in a row) reuses the last whitening factors instead of another Cholesky of a
    ``c·κ × c·κ`` moment; the factors are dropped on exit."""
    token = _LAST_WHITENING.set([])
    try:
        yield
    finally:
        _LAST_WHITENING.reset(token)


def sample_count(calibration, model: Optional[onnx.ModelProto] = None) -> Optional[int]:
    """The calibration samples used: all of them, or the whole batches of a ``model`` that fixes its batch
    (the remainder is left out, with a note); None for a set of unknown length."""
    try:
        count = int(len(calibration))
    except TypeError:
        return None
    batch = fixed_batch(model) if model is not None else None
    return count - count % batch if batch else count


def float_outputs(proto: onnx.ModelProto, session, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """Every float graph output over the runs ``feeds``, each flattened and joined (float64); outputs of
    other types (labels, strings, sequences) are left out. Empty when the model has no float output."""
    names = [spec.name for spec in graph_inputs(proto)]
    wanted = float_output_names(session)
    if not wanted:
        return []
    runs = [session.run(wanted, {name: feed[name] for name in names}) for feed in feeds]
    return [np.concatenate([np.asarray(run[i], dtype=np.float64).ravel() for run in runs]) for i in range(len(wanted))]


def reference_outputs(proto: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], what: str
                      ) -> list[np.ndarray]:
    """:func:`float_outputs` of the original model, which the sensitivity probes are measured against;
    raises :class:`InputDataError` (:func:`check_finite_outputs`) where one is NaN or Inf."""
    session = make_session(proto, "cpu")
    reference = float_outputs(proto, session, feeds)
    check_finite_outputs(float_output_names(session), reference, what)
    return reference


def check_finite_outputs(names: Sequence[str], outputs: Sequence[np.ndarray], what: str) -> None:
    """Raise :class:`InputDataError` when an original float output is NaN or Inf on the calibration inputs:
    how much a layer moves the outputs cannot be measured there."""
    for name, value in zip(names, outputs):
        if not np.all(np.isfinite(value)):
            raise InputDataError(f"the model's output '{name}' is NaN or Inf on the calibration inputs, so {what} "
                                 "cannot measure how much a layer moves it; give inputs on which the outputs are "
                                 "finite, or compress without it")


def output_change(reference: Sequence[np.ndarray], changed: Sequence[np.ndarray]) -> float:
    """Relative change ``‖y' − y‖ / ‖y‖`` of each float output, averaged over the outputs."""
    return float(np.mean([np.linalg.norm(new - old) / max(float(np.linalg.norm(old)), 1e-30)
                          for old, new in zip(reference, changed)]))


def floored_sensitivities(weights: Sequence[float]) -> list[float]:
    """Sensitivities with a floor of 1e-3 of the largest: a layer whose probe did not move the outputs at
    all (a change the few probe inputs did not show) then still ranks by its own error, and is not cut
    to nothing as if free."""
    top = max(weights, default=0.0)
    if top <= 0.0:
        return [1.0] * len(weights)
    return [max(float(weight), 1e-3 * top) for weight in weights]


NO_FLOAT_OUTPUT = ("measures how much each {what} moves the model's float outputs, and this model has none (its "
                   "outputs are labels, strings or sequences)")


SENSITIVITY_INPUT_BYTES = 1 << 24  # the sensitivity probes run at most this much input per layer (16 MiB)
# a probe whose own (layer or block) error is at most this measures float rounding and the refit's ridge, not
# how far the layer's error reaches the outputs: the ratio of two noises (e.g. 1e-7 / 2e-6) is no weight
PROBE_ERROR_FLOOR = 1e-3


def layer_sensitivities(proto: onnx.ModelProto, chosen: Sequence[Layer], tables: Sequence[ErrorTable],
                        constants: Mapping, stats: Mapping, calibration, *, samples: int = 16) -> list[float]:
    """``s_ℓ = e_ℓ / ε_ℓ`` per layer (see :func:`compress`, option ``sensitivity``), probed at about half
    the layer's size, or at a lower rank where the error there is below :data:`PROBE_ERROR_FLOOR`.

    Runs up to ``samples`` calibration inputs (whole fixed batches when the model fixes its batch);
    a layer without statistics (over the moment limit) is probed with data-free factors.
    """
    from .calibrate import DEFAULT_LIMITS, calibration_runs

    arrays = getattr(calibration, "arrays", None) or {}
    per_sample = sum(int(np.asarray(a[:1]).nbytes) for a in arrays.values()) or 1
    samples = max(1, min(samples, SENSITIVITY_INPUT_BYTES // per_sample))  # one probe run per layer: keep it small
    feeds = list(calibration_runs(calibration, proto, samples, limit=samples))
    if not feeds:
        raise InputDataError("the calibration set holds no samples; give at least one calibration input")
    reference = reference_outputs(proto, feeds, "--sensitivity")
    if not reference:
        raise InputDataError(f"--sensitivity {NO_FLOAT_OUTPUT.format(what='layer')}; drop --sensitivity")
    weights = []
    for layer, table in zip(_layer_progress(chosen, "sensitivity", DEFAULT_LIMITS.show_progress()), tables):
        if not table.options or len(table.options[0].ranks) == 0:
            weights.append(1.0)  # no factorized option: nothing to weigh
            continue
        option = table.options[0]
        half = int(np.searchsorted(option.sizes, 0.5 * table.dense_size, side="right")) - 1
        index = min(max(half, 0), len(option.ranks) - 1)
        while index > 0 and option.errors[index] <= PROBE_ERROR_FLOOR:  # (a layer exactly of low rank)
            index -= 1
        if option.errors[index] <= PROBE_ERROR_FLOOR:
            weights.append(1.0)  # every rank is (nearly) exact: its error times any weight stays ~0
            continue
        groups, rank = option.groups, int(option.ranks[index])
        predicted = float(option.errors[index])
        if layer.name in stats:
            factors = data_aware_factors(folded_weight(layer, constants, patch=True), groups, rank, stats[layer.name],
                                         refit=True, layer=layer)
        else:
            factors = decompose(folded_weight(layer, constants), groups, rank)
        probe = rewrite_model(proto, [Rewrite(layer, factors)])
        measured = output_change(reference, float_outputs(proto, make_session(probe, "cpu"), feeds))
        weights.append(measured / predicted if predicted > 0 else 1.0)
    return floored_sensitivities(weights)


def _layer_progress(items: Sequence, description: str, show: bool):
    """A tqdm bar over layers when ``show`` (and there are several), else the items."""
    if not show or len(items) < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="layer", leave=False)


def scaled_table(table: ErrorTable, weight: float) -> ErrorTable:
    """The same table with every error multiplied by ``weight``."""
    options = tuple(replace(option, errors=option.errors * weight) for option in table.options)
    return replace(table, options=options)


def layer_moment(layer: Layer, second_moment: np.ndarray) -> np.ndarray:
    """The moment that whitens the layer's matrix: the patch moment, or the pixel moment pointwise-first."""
    return pixel_moment(second_moment, layer.kernel) if layer.order == POINTWISE_FIRST else second_moment


def data_aware_factors(matrix: np.ndarray, groups: int, rank: int, stat, *, refit: bool,
                       layer: Optional[Layer] = None, both_factors: int = 0) -> GroupedFactors:
    """Whitened factors of one layer (sequential when ``stat`` carries a cross moment), optionally refitted.

    ``matrix`` is the patch-space ``f × c·κ`` weight whatever the order; ``layer`` gives the order
    (spatial-first when None). ``both_factors``: rounds of alternating least squares of encoder and
    decoder after the refit (:func:`onnx_alds.decompose.alternate_factors`; spatial-first only).
    """
    factors = _whitened_factors(matrix, groups, rank, stat, refit=refit, layer=layer)
    if both_factors and (layer is None or layer.order != POINTWISE_FIRST):
        factors = alternate_factors(matrix, factors, stat.second_moment, stat.cross, rounds=both_factors)
    return factors


def patch_product(layer: Layer, factors: GroupedFactors) -> np.ndarray:
    """The ``f × c·κ`` patch-space matrix the factor pair computes, for either order."""
    if layer.order != POINTWISE_FIRST:
        return factors.dense()
    return pointwise_decoder_to_patch(factors.decoder, layer.kernel) @ patch_encoder(factors, layer.kernel)


def layer_affine(layer: Layer, matrix: np.ndarray, factors: GroupedFactors, reference, stat
                 ) -> tuple[GroupedFactors, np.ndarray]:
    """Per-output-channel affine correction (:func:`onnx_alds.decompose.affine_correction`) folded
    into the factors: decoder rows scaled, and the shift to add to the decoder's bias.

    ``reference``: the original model's statistics of the layer input; ``stat``: what the compressed
    layer sees (the same object without sequential calibration)."""
    scale, shift = affine_correction(matrix, patch_product(layer, factors), reference.second_moment, reference.mean,
                                     stat.second_moment, stat.mean)
    rows = np.repeat(scale, layer.kernel) if layer.order == POINTWISE_FIRST else scale
    return replace(factors, decoder=factors.decoder * rows[:, None]), shift


def _whitened_factors(matrix: np.ndarray, groups: int, rank: int, stat, *, refit: bool,
                      layer: Optional[Layer] = None) -> GroupedFactors:
    target = matrix if stat.cross is None else sequential_target(matrix, stat.second_moment, stat.cross)
    pointwise = layer is not None and layer.order == POINTWISE_FIRST
    if pointwise:
        target = pointwise_matrix(target.reshape(layer.out_features, layer.in_channels, layer.kernel))
    moment = stat.second_moment if layer is None else layer_moment(layer, stat.second_moment)
    last = _LAST_WHITENING.get()
    if last and last[0] is moment and last[1] == groups:
        whitening = last[2]
    else:
        whitening = _group_whitening(moment, groups)
        if last is not None:
            last[:] = [moment, groups, whitening]
    factors = decompose(target, groups, rank, whitening)
    if refit and pointwise:
        refitted = refit_decoder(matrix, factors, stat.second_moment, stat.cross,
                                 encoder=patch_encoder(factors, layer.kernel))
        factors = replace(factors, decoder=patch_decoder_to_pointwise(refitted.decoder, layer.kernel))
    elif refit:
        factors = refit_decoder(matrix, factors, stat.second_moment, stat.cross)
    return factors


def layer_bias_shift(layer: Layer, matrix: np.ndarray, factors: GroupedFactors, stat) -> np.ndarray:
    """:func:`bias_shift` in patch space for either order."""
    if layer.order != POINTWISE_FIRST:
        return bias_shift(matrix, factors, stat.mean, stat.reference_mean)
    return bias_shift(matrix, factors, stat.mean, stat.reference_mean, encoder=patch_encoder(factors, layer.kernel),
                      decoder=pointwise_decoder_to_patch(factors.decoder, layer.kernel))


def data_aware_rewrite(proto: onnx.ModelProto, plan: Sequence[tuple[Layer, LayerChoice]], constants: Mapping,
                       stats: Mapping, calibration, *, refit: bool, sequential: bool, bias_correction: bool,
                       batch_size: int, seconds: dict[str, float], notes: list[str],
                       shrinkage: bool = True, limits=None, both_factors: int = 0,
                       affine: bool = False) -> onnx.ModelProto:
    """Rewrite ``plan`` with data-aware factors; see :func:`onnx_alds.compress` for each option's maths.

    Sequential: layers go in *waves* (consecutive layers none of which feeds another of the wave);
    before each wave the model with every earlier layer rewritten is run on the calibration set, and
    the wave's layers are fitted to what they now see. A layer without statistics (its moment is over
    ``limits.moment_bytes``; calibration named it in a note) gets data-free factors.
    ``limits``: :class:`~onnx_alds.calibrate.CalibrationLimits` (default ``DEFAULT_LIMITS``).
    """
    from tqdm import tqdm

    from .calibrate import DEFAULT_LIMITS, collect_statistics, independent_waves

    limits = limits if limits is not None else DEFAULT_LIMITS
    rewrites: list[Rewrite] = []
    layers = [layer for layer, _ in plan]
    choices = {layer.name: choice for layer, choice in plan}
    waves = independent_waves(proto, layers) if sequential else [layers]
    spent = 0.0
    data_free: list[str] = []
    unpaired: list[str] = []  # sequential: no cross moment (over the limit), fitted to the original statistics
    bar = tqdm(total=len(layers), desc="factorize", unit="layer", leave=False,
               disable=not limits.show_progress() or len(layers) < 2)
    for wave in waves:
        wave_stats = stats
        if sequential and rewrites:
            tick = time.perf_counter()
            prefix = rewrite_model(proto, rewrites)
            wave_notes: list[str] = []
            wave_stats = collect_statistics(prefix, wave, calibration, batch_size=batch_size, reference=proto,
                                            limits=limits, notes=wave_notes)
            notes.extend(note for note in wave_notes
                         if note not in notes and not note.startswith("calibration: no input statistics"))
            if shrinkage:
                wave_stats = {name: value.shrunk() for name, value in wave_stats.items()}
            for layer in wave:
                if layer.name not in wave_stats and layer.name in stats:
                    unpaired.append(layer.name)
                    wave_stats[layer.name] = stats[layer.name]
            spent += time.perf_counter() - tick
        for layer in wave:
            bar.update(1)
            choice = choices[layer.name]
            stat = wave_stats.get(layer.name)
            if stat is None:
                data_free.append(layer.name)
                rewrites.append(Rewrite(layer, decompose(folded_weight(layer, constants), choice.groups, choice.rank)))
                continue
            matrix = folded_weight(layer, constants, patch=True)
            factors = data_aware_factors(matrix, choice.groups, choice.rank, stat, refit=refit, layer=layer,
                                         both_factors=both_factors)
            shift = layer_bias_shift(layer, matrix, factors, stat) if bias_correction else None
            if affine:  # matches the mean too: it replaces the bias correction's shift
                factors, shift = layer_affine(layer, matrix, factors, stats.get(layer.name, stat), stat)
            rewrites.append(Rewrite(layer, factors, bias_shift=shift))
    bar.close()
    if data_free:
        notes.append(f"{len(data_free)} factorized layer(s) had no input statistics and got data-free factors "
                     f"(first: '{data_free[0]}')")
    if unpaired:
        notes.append(f"sequential calibration: {len(unpaired)} layer(s) whose cross moment would exceed the memory "
                     f"limit were fitted to the original model's statistics (first: '{unpaired[0]}')")
    if sequential:
        seconds["sequential"] = spent
        notes.append(f"sequential calibration: {len(waves)} waves of independent layers, "
                     f"{max(0, len(waves) - 1)} extra calibration passes; the per-layer errors shown are the "
                     "allocation's (from the original model's statistics), not measured on the factors refitted "
                     "to the compressed model's inputs")
    return rewrite_model(proto, rewrites)
