"""Reports: what was found, chosen and achieved, as frozen values that print as tables and save as JSON."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from .errors import ratio_at_least


def library_versions() -> dict[str, str]:
    """Versions of this tool and the libraries that shape its output."""
    import numpy
    import onnx
    import onnx_graphsurgeon
    import scipy

    from . import __version__

    versions = {"onnx_alds": __version__, "onnx": onnx.__version__, "onnx_graphsurgeon": onnx_graphsurgeon.__version__,
                "numpy": numpy.__version__, "scipy": scipy.__version__, "python": platform.python_version()}
    try:
        import onnxruntime
        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


@dataclass(frozen=True)
class LayerReport:
    """One Conv/Gemm/MatMul node before and after (``groups == 0``: left dense)."""

    name: str
    op: str
    weight_shape: tuple[int, ...]
    groups: int
    rank: int
    params_before: int
    params_after: int
    macs_before: Optional[int]
    macs_after: Optional[int]
    error: float
    skip_reason: Optional[str]
    order: Optional[str] = None  # "spatial-first" or "pointwise-first" when factorized
    # with latency tables (--keep-latency, --order auto, --speed-check): the layer's time alone in
    # microseconds, dense and as decided (measured at a grid rank, else interpolated between two)
    time_dense_us: Optional[float] = None
    time_us: Optional[float] = None
    time_measured: Optional[bool] = None
    # --method damage: the predicted relative squared output error of the chosen option (onnx_alds.damage)
    predicted_damage: Optional[float] = None
    weight: Optional[str] = None  # the initializer the layer multiplies (a plan records it: onnx_alds.plan)


@dataclass(frozen=True)
class CompressionReport:
    """Per layer decisions and totals of one compression."""

    layers: tuple[LayerReport, ...]
    method: str
    data_aware: bool
    calibration: Optional[str]
    target: str  # "params" or "flops"
    requested: float
    achieved: float
    params_before: int
    params_after: int
    macs_before: Optional[int]
    macs_after: Optional[int]
    max_error: float
    error_measure: str
    search: str
    seed: int
    rank_multiple: int
    seconds: dict[str, float]
    notes: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=library_versions)
    # data-aware compression only: the steps applied ("whitened", "refit", "sequential",
    # "bias-correction") and the number of calibration samples
    data_aware_steps: tuple[str, ...] = ()
    calibration_samples: Optional[int] = None
    # what may harm the model: cuts deep without calibration data, layers at a tiny fraction of their rank
    warnings: tuple[str, ...] = ()
    # latency tables: provider, batch, the whole model's time, what the tables cost (onnx_alds.latency)
    latency: Optional[dict] = None
    # --method damage: sqrt of the summed predicted damages, the predicted relative output error
    predicted_output_error: Optional[float] = None
    # --prune (onnx_alds.prune): per pruned block, the hidden width before and after (prune.BlockReport)
    pruned: tuple = ()
    # without calibration: the outputs' mean relative change on a few random inputs, measured
    # (onnx_alds.checks.random_output_change: the largest over the float outputs; None: not measured)
    random_output_change: Optional[float] = None
    random_samples: Optional[int] = None
    random_output: Optional[str] = None  # the output of that figure, where several were compared
    random_sizes: Optional[str] = None  # the input sizes the tool chose for it, where dims were dynamic, and how
    # on those random inputs, per output of integers, booleans or strings (labels): (output, values that changed,
    # values compared), as validate counts them
    random_changed_values: tuple = ()
    # --prune: every producer whose hidden width cannot be pruned, and why: (producer node, reason) pairs
    not_prunable: tuple = ()

    @property
    def most_changed_labels(self) -> Optional[tuple[str, int, int]]:
        """The entry of :attr:`random_changed_values` with the largest share of values changed (None: none)."""
        return max(self.random_changed_values, key=lambda row: row[1] / row[2], default=None)

    def to_dict(self) -> dict:
        """Every field; each layer also gets ``note``, the table's note column (why it is kept dense: its
        ``skip_reason``, or the allocation or the plan; "pointwise-first"; "" otherwise)."""
        data = asdict(self)
        for row, layer in zip(data["layers"], self.layers):
            row["note"] = self.layer_note(layer)
        return data

    def save_json(self, path: Union[str, Path]) -> None:
        write_json(self.to_dict(), path)

    def layer_note(self, layer: LayerReport) -> str:
        """The note the table prints for ``layer``."""
        if layer.skip_reason:
            return layer.skip_reason
        if layer.groups == 0:
            return "kept dense by the plan" if self.search.startswith("plan") else "kept dense by the allocation"
        return "pointwise-first" if layer.order == "pointwise-first" else ""

    def format(self) -> str:
        """The plan per layer and the totals, as printed by ``onnx-alds compress``."""
        timed = any(layer.time_dense_us is not None for layer in self.layers)
        cut = self.error_measure == "rank-fraction"  # --method svd: the share of the rank cut, not an error
        # --sensitivity: each layer's figure is scaled by its sensitivity weight (the estimated output error)
        weighted = "sensitivity" in self.data_aware_steps and not self.pruned
        column = ("rank cut" if cut else "error") + (" × s" if weighted else "")
        squared = self.error_measure.startswith("output damage")  # (relative squared errors: 5e-05 is no 0.0000)
        rows = [("layer", "op", "weight", "g", "rank", "params", "MACs", column, "note")]
        if timed:
            rows[0] = rows[0][:-1] + ("time µs", "note")
        for layer in self.layers:
            time_cell = (() if not timed else (_time_cell(layer),))
            rows.append((
                layer.name, layer.op, "x".join(map(str, layer.weight_shape)),
                "-" if layer.groups == 0 else str(layer.groups), "-" if layer.groups == 0 else str(layer.rank),
                f"{_si(layer.params_before)} -> {_si(layer.params_after)}",
                f"{_si(layer.macs_before)} -> {_si(layer.macs_after)}",
                f"{layer.error:.4g}" if weighted or squared else f"{layer.error:.4f}", *time_cell,  # (weights: 1e-7)
                self.layer_note(layer),
            ))
        lines = [format_table(rows), ""]
        ratio_params = self.params_after / self.params_before if self.params_before else 1.0
        data = ""
        if self.data_aware:
            steps = ", ".join(self.data_aware_steps)
            data = f" (data-aware{': ' + steps if steps else ''}; calibration: {self.calibration})"
        lines.append(f"method: {self.method}{data}, "
                     f"error: {self.error_measure}, search: {self.search}, seed {self.seed}")
        measured = (self.latency or {}).get("measured_ratio") if self.target == "latency" else None
        achieved = (f"{self.achieved:.4f}" if math.isfinite(self.achieved) else
                    "not predicted (a decision has no recorded time: edited, or its time removed; bench the model)")
        asked = "" if round(self.requested, 4) == self.requested else f" ({self.requested!r} asked)"  # 0.99999
        lines.append(f"target: keep {self.target} {self.requested:.4f}{asked}, achieved {achieved}"
                     + ((f" predicted by the tables, {measured:.4f} measured on the whole model"
                         if measured is not None else " predicted by the tables (not measured on the whole "
                         "model)") if self.target == "latency" and math.isfinite(self.achieved)
                        else ""))
        lines.append(f"weights: {_si(self.params_before)} -> {_si(self.params_after)} ({ratio_params:.4f} kept)")
        if self.macs_before:
            lines.append(f"MACs:    {_si(self.macs_before)} -> {_si(self.macs_after)} "
                         f"({(self.macs_after or 0) / self.macs_before:.4f} kept)")
        factorized = sum(1 for layer in self.layers if layer.groups)
        products = sum(1 for layer in self.layers if not layer.params_before and not layer.groups)  # (Q·Kᵀ)
        lines.append(f"layers factorized: {factorized} of {len(self.layers) - products}"
                     + (f" (and {products} product{'s' if products > 1 else ''} of run-time tensors, with no weight)"
                        if products else "") + ", "
                     + (f"largest {column} {self.max_error:.4g}" if weighted else
                        f"largest rank cut {self.max_error:.4f} (1 - rank / full rank: --method svd measures no error)"
                        if cut else f"max error {self.max_error:{'.4g' if squared else '.4f'}}"))
        if weighted:
            lines.append(f"({column}: each layer's {'rank cut' if cut else 'error'} times its sensitivity weight s, "
                         "the estimated output error the allocation balanced)")
        if self.predicted_output_error is not None:  # (with --prune: the widths' and ranks' together)
            lines.append(f"predicted output damage: sum {self.predicted_output_error ** 2:.4g} (relative squared "
                         f"output error), predicted relative output error {self.predicted_output_error:.4f}"
                         + (" (in-sample for the pruned widths: see the notes)" if self.pruned else ""))
        if self.random_output_change is not None:
            inputs = "random input" if self.random_samples == 1 else "random inputs"
            sizes = f" {self.random_sizes} (give --input-shape for your sizes)" if self.random_sizes else ""
            lines.append(f"outputs on {self.random_samples} {inputs} (not real data){sizes}: mean relative change "
                         f"{self.random_output_change:.3f} from the original's"
                         + (f" (the largest, of '{self.random_output}')" if self.random_output else "")
                         + " (1: as far as outputs of zeros)")
        if self.random_changed_values:
            name, changed, compared = self.most_changed_labels
            inputs = "random input" if self.random_samples == 1 else "random inputs"
            sizes = (f" {self.random_sizes} (give --input-shape for your sizes)"
                     if self.random_sizes and self.random_output_change is None else "")
            lines.append(f"labels on {self.random_samples} {inputs} (not real data){sizes}: {changed} of {compared} "
                         f"values of output '{name}' changed from the original's"
                         + (" (the most, of the outputs of integers or strings)"
                            if len(self.random_changed_values) > 1 else ""))
        if self.pruned:  # --prune (onnx_alds.prune)
            narrowed = [block for block in self.pruned if block.width_after < block.width_before]
            lines.append(f"blocks pruned: {len(narrowed)} of {len(self.pruned)}" + (
                " (hidden width before -> after, relative output error): " + ", ".join(
                    f"{block.name} {block.width_before}->{block.width_after} ({block.error:.3f})" for block in narrowed)
                if narrowed else ""))
        lines.append("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
                     + f", total {sum(self.seconds.values()):.2f} s")
        if self.latency:
            lines.extend(_latency_lines(self.latency))
        lines.extend(f"note: {note}" for note in self.notes)
        lines.extend(f"warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


@dataclass(frozen=True)
class LayerAnalysis:
    """One Conv/Gemm/MatMul node as ``analyze`` sees it."""

    name: str
    op: str
    weight_shape: tuple[int, ...]
    params: int
    macs: Optional[int]
    candidate_groups: tuple[int, ...]
    errors_at_rank_fraction: dict[str, float]  # "0.25" -> spectral error at g = 1
    skip_reason: Optional[str]


@dataclass(frozen=True)
class AnalysisReport:
    """Every layer with its size and spectra summary, and the model's totals."""

    layers: tuple[LayerAnalysis, ...]
    params_total: int
    params_compressible: int
    macs_total: Optional[int]
    macs_compressible: Optional[int]
    min_keep_params: float
    min_keep_flops: Optional[float]
    notes: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=library_versions)

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: Union[str, Path]) -> None:
        write_json(self.to_dict(), path)

    def format(self) -> str:
        fractions = sorted({k for layer in self.layers for k in layer.errors_at_rank_fraction})
        header = ("layer", "op", "weight", "params", "MACs", "groups") + tuple(f"err@{f}" for f in fractions) + ("note",)
        rows = [header]
        for layer in self.layers:
            rows.append((layer.name, layer.op, "x".join(map(str, layer.weight_shape)) or "?", _si(layer.params),
                         _si(layer.macs), ",".join(map(str, layer.candidate_groups)) or "-",
                         *(f"{layer.errors_at_rank_fraction[f]:.3f}" if f in layer.errors_at_rank_fraction else "-"
                           for f in fractions),
                         layer.skip_reason or ""))
        lines = [format_table(rows), ""]
        lines.append(f"weights: {_si(self.params_total)} total, {_si(self.params_compressible)} in factorizable layers"
                     f" (smallest reachable --keep-params {ratio_at_least(self.min_keep_params)})")
        if self.macs_total:
            lines.append(f"MACs:    {_si(self.macs_total)} total, {_si(self.macs_compressible)} in factorizable layers"
                         f" (smallest reachable --keep-flops {ratio_at_least(self.min_keep_flops)})")
        lines.append("err@x: relative spectral error sigma_{r+1}/sigma_1 at rank x*min(f, c*k), g = 1")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _time_cell(layer: LayerReport) -> str:
    """``dense -> decided`` in µs; ``~`` marks a time interpolated between measured ranks."""
    if layer.time_dense_us is None:
        return "-"
    if layer.groups == 0 or layer.time_us is None:
        return f"{layer.time_dense_us:.0f}" + ("" if layer.groups == 0 else " -> ?")
    return f"{layer.time_dense_us:.0f} -> {'' if layer.time_measured else '~'}{layer.time_us:.0f}"


def _latency_lines(latency: dict) -> list[str]:
    """What the latency tables say and cost, as printed under the totals."""
    where = (f"{latency.get('provider')}, {latency.get('threads')} threads, batch {latency.get('batch')}"
             f" ({latency.get('device')}, onnxruntime {latency.get('onnxruntime')})")
    lines = [f"latency: {where}"]
    if latency.get("model_us") is not None:
        line = (f"latency: dense model {latency['model_us'] / 1e3:.3f} ms on the single-layer scale "
                "(docs/LATENCY.md)") + (
            ", measured when the plan was made" if str(latency.get("source", "")).startswith("the plan") else "")
        if latency.get("predicted_us") is not None:
            rest, speedup = latency["rest_us"], latency.get("predicted_speedup")
            line += (f", predicted {latency['predicted_us'] / 1e3:.3f} ms ("
                     + (f"{speedup:.2f}x; " if speedup is not None else "")
                     + (f"ops that do not change {rest / 1e3:.3f} ms)" if rest >= 0 else
                        f"the layers timed alone add up to {(latency['model_us'] - rest) / 1e3:.3f} ms, more than "
                        "the whole model: single-layer times overstate here, so the prediction is rough"
                        + ("; it takes them at the whole model's scale" if latency.get("proportional") else "")
                        + ")"))
        lines.append(line)
    if latency.get("whole_model_note"):
        lines.append("latency: " + latency["whole_model_note"]
                     + (f"; measured speedup {latency['measured_speedup']:.2f}x" if latency.get("measured_speedup")
                        else "")
                     + (" (measured when the plan was made; nothing is timed here)"
                        if str(latency.get("source", "")).startswith("the plan") else ""))
    if latency.get("table_seconds") is not None:
        lines.append(f"latency tables: {latency.get('layers_timed', 0)} layers, {latency.get('timings', 0)} "
                     f"single-layer timings in {latency.get('loops', 0)} loops, {latency['table_seconds']:.2f} s; "
                     f"layer shapes measured {latency.get('layer_shapes_measured', 0)}, from the cache "
                     f"{latency.get('layer_shapes_cached', 0)} ({latency.get('cache_dir')})")
    if latency.get("slow_ranks_dropped"):
        lines.append(f"latency: {latency['slow_ranks_dropped']} of {latency['candidate_ranks']} candidate ranks "
                     f"({latency['layers_with_slow_ranks']} layers) measured no faster than their dense layer and "
                     "were dropped (--order auto and --speed-check keep only faster options)")
    untimed = latency.get("untimed") or {}
    if untimed:
        first = next(iter(untimed))
        lines.append(f"latency: {len(untimed)} layers could not be timed alone (first: '{first}', {untimed[first]})")
    return lines


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned text columns, the first row as header (a name's control characters as escapes: a layer
    named with a newline stays on its row)."""
    from .errors import escape_controls

    rows = [[escape_controls(str(cell)) for cell in row] for row in rows]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _si(value: Optional[float]) -> str:
    if value is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


def json_safe(value):
    """Replace NaN/inf by None (strict JSON), numpy scalars and arrays by Python values."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data: dict, path: Union[str, Path], *, also: Optional[Callable[[], None]] = None) -> None:
    """Write ``data`` as indented strict JSON, atomically (``also``: run with the rename). An existing file at
    ``path`` is replaced only when it is an earlier onnx-alds output of the kind ``data`` is (a plan, a report);
    anything else raises :class:`~onnx_alds.errors.OutputPathError`, as on the command line."""
    from .model_io import check_output_path, json_output_kind, path_argument, refuse_foreign_file, write_file_atomically

    target = path_argument(path, "the JSON file's path")
    check_output_path(target, flag="the JSON file")
    kind = json_output_kind(data)
    if kind != "JSON file":
        refuse_foreign_file(target, kind, flag="the JSON file", command="onnx-alds")
    write_file_atomically(target, (json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n").encode(), also=also)
