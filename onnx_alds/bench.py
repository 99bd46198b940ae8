"""Latency of models in ONNX Runtime, measured so that speedups can be trusted.

* All models of one call are timed in the same loop, **interleaved**: each round runs every model
  once, the starting model rotating from round to round, so machine drift (other processes, clocks,
  heat) hits every model alike. Speedup = median latency of the first model / median of the other.
* Warm-up runs first (each model, interleaved too), then at least ``runs`` timed rounds and at least
  ``min_time_s`` seconds of them. Figures per model and batch size: median, p10, p90, mean, min,
  spread ``(p90 - p10) / median`` and throughput ``batch / median`` (samples per second).
* CPU: ``threads`` intra-op threads (default: the physical cores), recorded in the report. Idle
  intra-op threads do not spin (``session.intra_op.allow_spinning = 0``): with spinning, the idle
  sessions of an interleaved run busy-wait on the cores of the one being timed (measured on the demo
  model at batch 32, 2 threads: median 9.4 ms and p90/p10 spread 83 % with spinning, 5.3 ms and 5 %
  without).
* CUDA / TensorRT: inputs are copied to the device once and bound with IO binding (``OrtValue`` on
  ``cuda:0``), outputs are bound to the device, so no host↔device copy is timed;
  ``cudnn_conv_algo_search`` is ``EXHAUSTIVE`` by default (no slow fallback kernel), and the default
  warm-up is longer (50 runs) so the algorithm search finishes before timing. ``run_with_iobinding``
  returns after ONNX Runtime has synchronized the provider's stream (its default run option
  ``disable_synchronize_execution_providers=0``); ``synchronize_outputs()`` is called inside the timed
  region as well, so each timing ends when the GPU is done.
* Per layer (``per_layer=True``): for every original node ``X`` that a compressed model replaced by
  nodes named ``X.enc`` and ``X.dec``, the original node and the pair (with anything between them)
  are extracted into single-layer models at the shapes shape inference gives, and timed interleaved
  the same way. (ONNX Runtime's profiler was tried first: its graph optimizations fuse and rename
  nodes, e.g. ``conv1`` + ``relu1`` become ``r_nchwc``, so its per-node times cannot be matched to
  layers by name reliably.)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper, shape_inference

from .argtypes import non_negative_int, positive_int, seconds, thread_count
from . import _callable_module
from .errors import (InputDataError, OnnxAldsError, ProviderError, RandomInputsError, UnsupportedModelError,
                     runtime_error_text)
from .inputs import index_bounds, random_array
from .model_io import (checked_dims, fixed_batch, graph_inputs, load_model, parse_input_shapes, resolve_input_shapes,
                       show_input_shapes, structure_of)
from .runtime import PROVIDERS, import_onnxruntime, make_session

log = logging.getLogger(__name__)

ModelArg = Union[str, os.PathLike, onnx.ModelProto]
DEVICE_PROVIDERS = ("cuda", "tensorrt")
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


@dataclass(frozen=True)
class Timing:
    """Latency of one model at one batch size, in milliseconds."""

    model: str
    batch_size: int
    runs: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    spread: float
    throughput: float
    speedup: float

    @property
    def measured_spread(self) -> Optional[float]:
        """``spread``, or None for one run (which has none; 0.0 would read as a perfectly quiet machine)."""
        return self.spread if self.runs > 1 else None

    def line(self) -> str:
        spread = self.measured_spread
        return (f"{self.model:<32} batch {self.batch_size:<4} median {self.median_ms:9.3f} ms  "
                f"p10 {self.p10_ms:9.3f}  p90 {self.p90_ms:9.3f}  "
                f"spread {'   n/a' if spread is None else format(spread, '6.1%')}  "
                f"{self.throughput:10.1f} samples/s  speedup {self.speedup:5.2f}x  ({self.runs} runs)")


@dataclass(frozen=True)
class LayerTiming:
    """One factorized layer: the original node against its ``.enc``/``.dec`` pair, in microseconds."""

    layer: str
    op_type: str
    input_shape: tuple[int, ...]
    pair_nodes: tuple[str, ...]
    original_us: float
    pair_us: float
    speedup: float

    def line(self) -> str:
        # within 2 % is a tie at the precision these timings have (and "1.00x faster" reads oddly)
        verdict = "faster" if self.speedup >= 1.02 else ("about the same" if self.speedup > 0.98 else "NOT faster")
        return (f"{self.layer:<40} {self.op_type:<8} {self.original_us:10.1f} µs -> {self.pair_us:10.1f} µs  "
                f"{self.speedup:5.2f}x  {verdict}")


@dataclass(frozen=True)
class LayerComparison:
    """Per-layer timings of one compressed model against the first model."""

    model: str
    batch_size: int
    rows: tuple[LayerTiming, ...]
    skipped: tuple[str, ...] = ()


NOISY_SPREAD = 0.2  # a p90/p10 spread above this says other work shares the machine (docs/VALIDATE_AND_BENCH.md)


@dataclass(frozen=True)
class BenchReport:
    """Every figure of one benchmark run."""

    models: tuple[str, ...]
    provider: str
    provider_name: str
    provider_options: dict = field(hash=False)
    threads: Optional[int]
    batch_sizes: tuple[int, ...]
    warmup: int
    timings: tuple[Timing, ...]
    layers: tuple[LayerComparison, ...]
    machine: dict = field(hash=False)
    versions: dict = field(hash=False)
    notes: tuple[str, ...] = ()
    # per model, the shape of every input it was fed at each batch size ({model: {batch: {input: dims}}}):
    # dynamic dims as they were resolved (--input-shape, dims named alike), so that the run can be repeated
    input_shapes: dict = field(default_factory=dict, hash=False)

    def timing(self, model_index: int, batch_size: int) -> Timing:
        """The timing of ``models[model_index]`` at ``batch_size``."""
        name = self.models[model_index]
        for entry in self.timings:
            if entry.model == name and entry.batch_size == batch_size:
                return entry
        raise KeyError(f"no timing for model {model_index} at batch {batch_size}")

    def speedup(self, model_index: int, batch_size: int) -> float:
        """Speedup of ``models[model_index]`` against ``models[0]`` at ``batch_size``."""
        return self.timing(model_index, batch_size).speedup

    def all_notes(self) -> list[str]:
        """The notes, and one about noisy timings where any spread over :data:`NOISY_SPREAD` (in the JSON
        too: a script reading the speedups should see the caveat the console shows)."""
        notes = list(self.notes)
        noisy = [t for t in self.timings if t.spread > NOISY_SPREAD]
        if noisy:
            notes.append(f"{len(noisy)} timing{'s' if len(noisy) > 1 else ''} spread over {NOISY_SPREAD * 100:.0f} % "
                         f"(p90 − p10 of the median; largest {max(t.spread for t in noisy) * 100:.0f} %): other work "
                         "shares the machine, so speedups are uncertain by about that much; time again on a quiet "
                         "machine")
        return notes

    def lines(self) -> list[str]:
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        lines = [f"bench on {self.provider} ({self.provider_name}{threads}), "
                 f"{self.machine.get('cpu', '?')}" + (f", GPU {self.machine['gpu']}" if self.machine.get("gpu") else "")]
        lines += [t.line() for t in self.timings]
        lines += [f"note: {note}" for note in self.all_notes()]
        for comparison in self.layers:
            lines.append(f"per layer: {comparison.model} against {self.models[0]} (batch {comparison.batch_size})")
            lines += ["  " + row.line() for row in comparison.rows]
            lines += [f"  skipped: {reason}" for reason in comparison.skipped]
            if not comparison.rows and not comparison.skipped:
                lines.append("  no factorized layers (no nodes named <layer>.enc / <layer>.dec)")
        return lines

    def save_json(self, path) -> None:
        """Write :meth:`to_dict` as strict JSON, atomically, as ``bench --json`` writes it
        (:func:`onnx_alds.report.write_json`)."""
        from .report import write_json

        write_json(self.to_dict(), path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "provider": self.provider,
            "provider_name": self.provider_name,
            "provider_options": dict(self.provider_options),
            "threads": self.threads,
            "batch_sizes": list(self.batch_sizes),
            "warmup": self.warmup,
            "notes": self.all_notes(),
            "timings": [dict(asdict(t), spread=t.measured_spread) for t in self.timings],
            "layers": [{"model": c.model, "batch_size": c.batch_size, "skipped": list(c.skipped),
                        "rows": [dict(asdict(r), input_shape=list(r.input_shape), pair_nodes=list(r.pair_nodes))
                                 for r in c.rows]} for c in self.layers],
            "input_shapes": {model: {str(batch): {name: list(dims) for name, dims in shapes.items()}
                                     for batch, shapes in by_batch.items()}
                             for model, by_batch in self.input_shapes.items()},
            "machine": dict(self.machine),
            "versions": dict(self.versions),
        }


# --------------------------------------------------------------------------------------------------
# Machine description


def logical_cpus() -> int:
    """Logical CPUs available to this process (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores available to this process (from /proc/cpuinfo; logical CPUs where unknown)."""
    logical = logical_cpus()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return logical
    cores = set()
    physical_id = core_id = None
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical_id = value.strip()
        elif key == "core id":
            core_id = value.strip()
        elif not line.strip():
            if core_id is not None:
                cores.add((physical_id, core_id))
            physical_id = core_id = None
    return max(1, min(len(cores), logical)) if cores else logical


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, GPU name (via nvidia-smi, when present), OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            result = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20, check=False)
            gpu = result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            gpu = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(), "gpu": gpu,
            "os": platform.platform(), "python": sys.version.split()[0]}


def versions() -> dict[str, str]:
    """Versions of onnxruntime, onnx, numpy and onnx-alds."""
    from . import __version__

    ort = import_onnxruntime()
    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "onnx_alds": __version__}


# --------------------------------------------------------------------------------------------------
# Timing machinery


def round_robin_order(n_models: int, round_index: int) -> list[int]:
    """The order in which the models run in round ``round_index``: all of them, start rotating."""
    start = round_index % n_models
    return [(start + k) % n_models for k in range(n_models)]


class _Runner:
    """One session bound to fixed inputs; ``__call__`` runs it once (synchronously)."""

    def __init__(self, session: Any, feeds: dict[str, np.ndarray], provider: str) -> None:
        self.session = session
        self.feeds = feeds
        self.binding = None
        if provider in DEVICE_PROVIDERS:
            ort = import_onnxruntime()
            binding = session.io_binding()
            self._device_values = []
            for name, array in feeds.items():
                value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
                self._device_values.append(value)  # keep the device buffers alive
                binding.bind_ortvalue_input(name, value)
            for output in session.get_outputs():
                binding.bind_output(output.name, "cuda", 0)
            self.binding = binding

    def __call__(self) -> None:
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
        else:
            self.session.run(None, self.feeds)


def time_interleaved(runners: Sequence[Any], *, warmup: int, runs: int, min_time_s: float,
                     max_rounds: Optional[int] = None) -> list[list[float]]:
    """Seconds per run of each runner, timed in rotating round-robin rounds (see module docstring).
    Raises :class:`InputDataError` when a runner fails (the random timing inputs do not fit the model)."""
    try:
        return _time_rounds(runners, warmup=warmup, runs=runs, min_time_s=min_time_s, max_rounds=max_rounds)
    except OnnxAldsError:
        raise
    except Exception as exc:  # a run failed: one line, not a traceback
        from .checks import raise_if_out_of_resources

        raise_if_out_of_resources(exc, "time it at a smaller batch (bench --batch, compress --bench-batch), or when "
                                       "other jobs have finished")
        reason = f"running the model on random timing inputs failed ({runtime_error_text(exc)})"
        raise RandomInputsError(f"{reason}; the inputs need values, shapes or a batch random data lacks (an op "
                                "inside may fix the batch): give --input-shape, another batch (bench --batch, "
                                "compress --bench-batch), or time it with your own harness", reason) from None


def _runs(runner: Any) -> bool:
    """Whether one run of ``runner`` succeeds."""
    try:
        runner()
    except Exception:
        return False
    return True


MAX_ROUNDS = 1_000_000  # of --min-time: about 10 s of a 10 µs model, and the times of a million runs in memory


def _time_rounds(runners: Sequence[Any], *, warmup: int, runs: int, min_time_s: float,
                 max_rounds: Optional[int]) -> list[list[float]]:
    for round_index in range(warmup):
        for index in round_robin_order(len(runners), round_index):
            runners[index]()
    times: list[list[float]] = [[] for _ in runners]
    limit = max_rounds if max_rounds is not None else MAX_ROUNDS  # --min-time is honoured up to this many rounds
    started = time.perf_counter()
    round_index = 0
    while round_index < runs or (time.perf_counter() - started < min_time_s and round_index < limit):
        for index in round_robin_order(len(runners), round_index):
            tick = time.perf_counter()
            runners[index]()
            times[index].append(time.perf_counter() - tick)
        round_index += 1
    return times


def _stats(model: str, batch: int, seconds: Sequence[float], reference_median: Optional[float]) -> Timing:
    values = np.asarray(seconds) * 1e3
    median = float(np.median(values))
    p10, p90 = (float(v) for v in np.percentile(values, [10, 90]))
    return Timing(model=model, batch_size=batch, runs=len(values), median_ms=median, p10_ms=p10, p90_ms=p90,
                  mean_ms=float(np.mean(values)), min_ms=float(np.min(values)),
                  spread=(p90 - p10) / median if median > 0 else 0.0,
                  throughput=batch / (median / 1e3) if median > 0 else float("inf"),
                  speedup=(reference_median / median) if reference_median and median > 0 else 1.0)


def _labels(models: Sequence[ModelArg]) -> list[str]:
    names = [Path(m).name if not isinstance(m, onnx.ModelProto) else f"model[{i}]" for i, m in enumerate(models)]
    if len(set(names)) != len(names):
        names = [str(m) if not isinstance(m, onnx.ModelProto) else f"model[{i}]" for i, m in enumerate(models)]
    if len(set(names)) != len(names):
        names = [f"{name} #{i}" for i, name in enumerate(names)]
    return names


def default_batch(model: Union[str, os.PathLike, onnx.ModelProto],
                  input_shapes: Optional[dict[str, Sequence[int]]] = None) -> int:
    """The batch to time at when none is given: the one the graph inputs fix (a model exported at batch 5
    runs at nothing else; :func:`onnx_alds.model_io.fixed_batch`), else the first dim that ``--input-shape``
    gives every input it names, else 1. ``model``: a proto or a path (opened light: large weights are not read; a file that
    is not a model is the load's one-line :class:`ModelLoadError`)."""
    if not isinstance(model, onnx.ModelProto):
        from .model_io import open_model

        model = open_model(model).model
    fixed = fixed_batch(model)
    if fixed is not None:  # the inputs with a dynamic first dim take it too
        return fixed
    given = {dims[0] for dims in (input_shapes or {}).values() if dims}
    return int(given.pop()) if len(given) == 1 else 1


def timing_feeds(model: onnx.ModelProto, batch: int, input_shapes: Optional[dict[str, Sequence[int]]],
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for timing: shapes from the model and ``input_shapes``, first dim set to ``batch``."""
    shapes, _ = resolve_input_shapes(model, input_shapes, batch_default=batch)
    fixed_batch(model)  # inputs fixing different first dims: one error, not a --batch for each
    rng = np.random.default_rng(seed)
    bounds = index_bounds(model, shapes)
    feeds = {}
    for spec in graph_inputs(model):
        shape = list(shapes[spec.name])
        if shape:
            declared = spec.dims[0]
            if isinstance(declared, int) and declared != batch:
                raise InputDataError(
                    f"input '{spec.name}' fixes the batch to {declared}; bench it with --batch {declared} "
                    "(--bench-batch with compress) or export the model with a dynamic batch dim"
                )
            shape[0] = batch
        try:
            feeds[spec.name] = random_array(spec.name, spec.dtype, tuple(shape), rng, high=bounds.get(spec.name))
        except RandomInputsError as exc:  # (no .npz to give: timing feeds random inputs only)
            raise RandomInputsError(f"{exc.reason}; timing runs on random inputs only, so onnx-alds cannot time this "
                                    "model: time it with your own harness", exc.reason) from None
    return feeds


def provider_options_for(provider: str, cudnn_conv_algo_search: str = "EXHAUSTIVE",
                         extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Provider options used for timing (CUDA: the conv algorithm search mode)."""
    if cudnn_conv_algo_search not in CONV_ALGO_SEARCH:
        raise InputDataError(
            f"unknown cudnn_conv_algo_search '{cudnn_conv_algo_search}'; choose one of: {', '.join(CONV_ALGO_SEARCH)}"
        )
    options: dict[str, Any] = {}
    if provider == "cuda":
        options["cudnn_conv_algo_search"] = cudnn_conv_algo_search
    options.update(extra or {})
    return options


def _check_bench_arguments(*, batch_sizes, runs, warmup, layer_runs, seed, threads, min_time_s, feeds) -> None:
    """Raise :class:`InputDataError` for a ``bench`` argument of the wrong type or range (a float count is
    refused, not truncated)."""
    from .argtypes import check_count, check_number, check_seed, check_threads

    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Iterable):
        raise InputDataError(f"batch_sizes={batch_sizes!r}: give a list of batch sizes, e.g. (1, 32)")
    if not list(batch_sizes):
        raise InputDataError("batch_sizes is empty; give one or more batch sizes ≥ 1, e.g. (1, 32)")
    for batch in batch_sizes:
        check_count("batch size", batch)
    repeated = next((batch for batch, count in Counter(int(b) for b in batch_sizes).items() if count > 1), None)
    if repeated is not None:  # (it was timed twice)
        raise InputDataError(f"batch size {repeated} is given twice; give each batch size once")
    check_count("runs", runs)
    check_count("warmup", warmup, 0, optional=True)
    check_count("layer_runs", layer_runs, optional=True)
    check_seed("seed", seed)
    check_threads(threads)
    check_number("min_time_s", min_time_s)
    if not 0 <= min_time_s < math.inf:
        raise InputDataError(f"got min_time_s={min_time_s}; give a finite min_time_s ≥ 0 (seconds)")
    if feeds is not None:
        if not isinstance(feeds, Mapping) or not feeds:
            what = ("an InputSet: give its .arrays" if hasattr(feeds, "arrays") else
                    f"a {type(feeds).__name__}" if not isinstance(feeds, Mapping) else "empty")
            raise InputDataError(f"feeds is {what}; give a dict of graph input name to array, batch first, or None "
                                 "for random inputs")
        odd = next((name for name, array in feeds.items() if not isinstance(array, np.ndarray)), None)
        if odd is not None:
            raise InputDataError(f"feeds['{odd}'] is a {type(feeds[odd]).__name__}; give numpy arrays, batch first")


def _fed_batch(feeds: Mapping[str, np.ndarray], model: onnx.ModelProto) -> int:
    """The batch of ``feeds``: the first dim of the graph inputs whose first dim is dynamic (else of every input
    with a first dim), not an overridable default's nor a fixed-size input's. Raises :class:`InputDataError`
    when they disagree."""
    specs = [spec for spec in graph_inputs(model) if spec.dims]
    batched = [spec for spec in specs if not isinstance(spec.dims[0], int)] or specs
    sizes = {spec.name: int(feeds[spec.name].shape[0]) for spec in batched if feeds[spec.name].ndim}
    if len(set(sizes.values())) != 1:
        shown = ", ".join(f"'{name}' {size}" for name, size in sizes.items()) or "none"
        raise InputDataError(f"the feeds' batch is not clear (first dims of the batched inputs: {shown}); give "
                             "arrays whose batch inputs share their first dim")
    return next(iter(sizes.values()))


def _check_feeds_fit(feeds: Mapping[str, np.ndarray], protos: Sequence[onnx.ModelProto], names: Sequence[str]) -> None:
    """Raise :class:`InputDataError` when ``feeds`` lacks a graph input of a model or has a name none has."""
    for name, proto in zip(names, protos):
        wanted = [spec.name for spec in graph_inputs(proto)]
        missing = [key for key in wanted if key not in feeds]
        unknown = [key for key in feeds if key not in {value.name for value in proto.graph.input}]
        if missing or unknown:
            problem = (f"has no array for input '{missing[0]}'" if missing else
                       f"has '{unknown[0]}', which is not an input")
            raise InputDataError(f"feeds {problem} of {name} (its inputs: {', '.join(wanted)}); give one array per "
                                 "graph input, keyed by name")


def bench(models: Sequence[ModelArg], *, provider: str = "cpu", batch_sizes: Optional[Sequence[int]] = None,
          threads: Optional[int] = None, warmup: Optional[int] = None, runs: int = 100, min_time_s: float = 1.0,
          input_shapes: Optional[dict[str, Sequence[int]]] = None, per_layer: bool = False,
          cudnn_conv_algo_search: str = "EXHAUSTIVE", provider_options: Optional[dict[str, Any]] = None,
          seed: int = 0, layer_runs: Optional[int] = None, names: Optional[Sequence[str]] = None,
          feeds: Optional[Mapping[str, np.ndarray]] = None) -> BenchReport:
    """Time ``models`` (paths or ``ModelProto``) interleaved on ``provider`` at each batch size.

    ``warmup`` defaults to 10 runs on CPU and 50 on CUDA/TensorRT; ``threads`` to the physical cores
    on CPU. With ``per_layer``, every model after the first is compared layer by layer with the first.
    ``names`` labels the models in the report (default: file names, ``model[i]`` for protos).
    ``batch_sizes`` None: the batch of ``feeds``, else :func:`default_batch` (the one the first model fixes,
    else the first dim ``input_shapes`` gives, else 1), as ``onnx-alds bench`` without ``--batch``.
    ``feeds`` (input name → array, batch first): time every model on these inputs instead of random ones;
    ``batch_sizes`` must then be their batch alone. ``seed``: of the random inputs; ``layer_runs``: timed
    runs per layer with ``per_layer`` (default ``max(10, runs // 2)``); ``provider_options``: passed to
    ONNX Runtime's provider (e.g. ``{"device_id": 1}``); ``cudnn_conv_algo_search``: CUDA's convolution
    algorithm search. Times are in milliseconds per run.
    Raises :class:`ProviderError` when the provider is not available, :class:`InputDataError` for an
    argument of the wrong type or range.
    """
    if isinstance(models, (str, os.PathLike, onnx.ModelProto)):  # one model, not a sequence of its characters
        models = [models]
    if isinstance(models, (bytes, bytearray)):  # (iterated, its bytes were taken for models of type int)
        raise InputDataError("models is bytes; give model paths or onnx.ModelProto values (onnx.load_from_string "
                             "reads serialized bytes)")
    if isinstance(names, str):  # (one string was split into its characters)
        raise InputDataError(f"names={names!r} is one string; give one name per model, e.g. names=[{names!r}]")
    if not isinstance(models, Iterable):
        raise InputDataError(f"models={models!r}; give a list of model paths or onnx.ModelProto values")
    models = list(models)  # (a generator, a tuple)
    if not models:
        raise InputDataError("no models to bench; give at least one .onnx file")
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        raise InputDataError(f"input_shapes is a {type(input_shapes).__name__}; give a dict of input name to dims, "
                             "e.g. {'input': (1, 3, 224, 224)}")
    if input_shapes is not None:  # (as ints: a numpy array of dims has no truth value below)
        input_shapes = {name: checked_dims(name, dims) for name, dims in input_shapes.items()}
    if not isinstance(provider, str) or provider not in PROVIDERS:
        raise ProviderError(f"unknown provider {provider!r}; give one of: {', '.join(PROVIDERS)} (one name)")
    if cudnn_conv_algo_search != "EXHAUSTIVE" and provider != "cuda":
        raise InputDataError(f"cudnn_conv_algo_search={cudnn_conv_algo_search!r} has no effect with provider "
                             f"'{provider}' (it sets the CUDA provider's conv search); drop it")
    if provider_options and provider == "cpu":  # (ONNX Runtime's CPU provider takes no options: ignored there)
        raise InputDataError(f"provider_options={provider_options!r} have no effect with provider 'cpu' (ONNX "
                             "Runtime's CPU provider takes none); drop them")
    if isinstance(batch_sizes, Iterable) and not isinstance(batch_sizes, (str, bytes)):
        batch_sizes = tuple(batch_sizes)  # (a generator was used up by the checks: nothing was timed)
    _check_bench_arguments(batch_sizes=(1,) if batch_sizes is None else batch_sizes, runs=runs, warmup=warmup,
                           layer_runs=layer_runs, seed=seed,
                           threads=threads, min_time_s=min_time_s, feeds=feeds)
    if per_layer and len(models) < 2:
        raise InputDataError("--per-layer compares compressed models with the first one; give two or more models")
    if warmup is None:
        warmup = 50 if provider in DEVICE_PROVIDERS else 10
    if provider == "cpu" and threads is None:
        threads = physical_cores()
    options = provider_options_for(provider, cudnn_conv_algo_search, provider_options)
    # the graphs (paths opened light: ONNX Runtime reads the weights from the files); --per-layer extracts layers
    protos = [load_model(m) if per_layer else structure_of(m)[0] for m in models]
    if feeds is not None:
        _check_feeds_fit(feeds, protos, names if names is not None else _labels(models))
        fed_batch = _fed_batch(feeds, protos[0])
        batch_sizes = (fed_batch,) if batch_sizes is None else batch_sizes
        if [int(b) for b in batch_sizes] != [fed_batch]:
            raise InputDataError(f"got batch sizes {list(batch_sizes)} and inputs of batch {fed_batch}; give the "
                                 "inputs' batch alone")
    shape_batches = sorted({int(dims[0]) for dims in (input_shapes or {}).values() if dims})
    if batch_sizes is None:  # (an input shape of batch 4 times batch 4, not 1)
        batch_sizes = (default_batch(protos[0], input_shapes),)
    other_batches = [batch for batch in shape_batches if batch not in {int(b) for b in batch_sizes}]
    sessions = [make_session(m, provider, threads=threads, provider_options=options, spinning=False,
                             what=f"model {index + 1} ({m if isinstance(m, (str, os.PathLike)) else 'given'})")
                for index, m in enumerate(models)]  # (a path, or the caller's own proto)
    if names is not None and (len(names) != len(models) or len(set(names)) != len(names)):
        raise InputDataError(f"got {len(names)} names for {len(models)} models; give one distinct name per model")
    names = list(names) if names is not None else _labels(models)
    timings: list[Timing] = []
    fed: dict[str, dict[int, dict[str, list[int]]]] = {name: {} for name in names}
    for batch in batch_sizes:
        runners = []
        for name, session, proto in zip(names, sessions, protos):
            try:
                runners.append(_Runner(session, timing_feeds(proto, int(batch), input_shapes, seed)
                                       if feeds is None else dict(feeds), provider))
            except InputDataError as exc:  # say which model: several may have an input of that name
                if len(protos) == 1:
                    raise
                raise (exc.named(name) if isinstance(exc, RandomInputsError) else
                       InputDataError(f"{name}: {exc}")) from None
        for name, runner in zip(names, runners):
            fed[name][int(batch)] = {key: [int(d) for d in np.shape(value)] for key, value in runner.feeds.items()}
        log.info("timing %d model(s) at batch %d: %d warm-up, ≥ %d runs", len(models), batch, warmup, runs)
        try:
            times = time_interleaved(runners, warmup=warmup, runs=runs, min_time_s=min_time_s)
        except InputDataError as exc:  # say which model and batch
            failing = next((name for name, runner in zip(names, runners) if not _runs(runner)), None)
            where = f"{failing} at batch {batch}" if failing else f"batch {batch}"
            if isinstance(exc, RandomInputsError) and feeds is not None:  # the caller's own arrays failed
                exc = InputDataError(exc.reason.replace("random timing inputs", "the given feeds", 1)
                                     + "; give arrays of the inputs' dtypes and shapes")
            elif isinstance(exc, RandomInputsError) and input_shapes:  # the dims given may not fit
                exc = RandomInputsError(f"{exc.reason}; check that the --input-shape values given "
                                        f"({show_input_shapes(input_shapes, ' ')}) fit the model", exc.reason)
            raise (exc.named(where) if isinstance(exc, RandomInputsError) else
                   InputDataError(f"{where}: {exc}")) from None
        reference = float(np.median(np.asarray(times[0]) * 1e3))  # computed as _stats does: exactly 1.0 for model 0
        timings += [_stats(name, int(batch), t, reference) for name, t in zip(names, times)]
    layers = []
    if per_layer:
        first_batch = int(batch_sizes[0])
        for name, proto in zip(names[1:], protos[1:]):
            layers.append(compare_layers(protos[0], proto, model_name=name, provider=provider, batch=first_batch,
                                         input_shapes=input_shapes, threads=threads, provider_options=options,
                                         warmup=warmup, runs=layer_runs or max(10, runs // 2), seed=seed))
    ort = import_onnxruntime()
    # inputs are fed by name: their set, types and fixed dims (past the batch) tell whether the work compares
    signatures = [{spec.name: (str(spec.dtype), tuple(d if isinstance(d, int) else None for d in spec.dims[1:]))
                   for spec in graph_inputs(proto)} for proto in protos]
    notes = tuple(f"{name} takes other inputs than {names[0]} ({_show_inputs(signature)} against "
                  f"{_show_inputs(signatures[0])}): its speedup compares different work"
                  for name, signature in zip(names[1:], signatures[1:]) if signature != signatures[0])
    if other_batches and feeds is None:  # the input shape's first dim is the batch, and batch_sizes times others
        notes += (f"the input shapes give batch {other_batches[0]}; timed at batch "
                  f"{' '.join(str(int(b)) for b in batch_sizes)} instead (the first dim of every input is set to "
                  "each batch size)",)
    return BenchReport(models=tuple(names), provider=provider, provider_name=PROVIDERS[provider],
                       provider_options=options, threads=threads, batch_sizes=tuple(int(b) for b in batch_sizes),
                       warmup=warmup, timings=tuple(timings), layers=tuple(layers), machine=machine_info(),
                       versions=dict(versions(), onnxruntime_device=ort.get_device()), notes=notes,
                       input_shapes=fed)


# --------------------------------------------------------------------------------------------------
# Per-layer timings


def factorized_pairs(original: onnx.ModelProto, compressed: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """``(layer, enc_node, dec_node)`` for every original node ``layer`` replaced by one pair of new nodes named
    ``layer.enc``/``layer.dec``, or ``layer.enc.1``/``layer.dec.2`` where the rewrite found those names taken
    (:class:`onnx_alds.rewrite.Names`); nodes of those names the original has already are not a pair."""
    original_names = {node.name for node in original.graph.node}
    kept = {node.name for node in compressed.graph.node}
    new = [name for name in kept if name not in original_names]
    pairs = []
    for node in original.graph.node:
        if not node.name or node.name in kept:
            continue
        ends = [[name for name in new if _pair_end(name, node.name) == end] for end in ("enc", "dec")]
        if all(len(found) == 1 for found in ends):
            pairs.append((node.name, ends[0][0], ends[1][0]))
    return pairs


_PAIR_SUFFIX = r"\.(enc|dec)(\.[0-9]+)?"  # a half of a pair the rewrite made: .enc/.dec, .N where the name was taken


def _pair_end(name: str, layer: str) -> Optional[str]:
    """``"enc"`` or ``"dec"`` when node ``name`` is a half of the pair the rewrite made of node ``layer``
    (``layer.enc``, or ``layer.enc.N`` where that name was taken), else None."""
    match = re.fullmatch(re.escape(layer) + _PAIR_SUFFIX, name)
    return match.group(1) if match else None


def _replaces(name: str, layer: str) -> bool:
    """Whether node ``name`` is one the rewrite made of node ``layer``: ``layer.enc``/``layer.dec`` with an optional
    ``.N`` (a name that was taken), or a node made of one of those in turn (``layer.enc.dec``)."""
    return re.match(re.escape(layer) + _PAIR_SUFFIX + r"(\.|$)", name) is not None


def _compressed_again(original: onnx.ModelProto, compressed: onnx.ModelProto, paired: set[str]) -> list[str]:
    """A note for every original node whose factors were factorized again (``X.enc.enc``, ``X.enc.dec``,
    ``X.dec``: a compressed model compressed once more), which no single pair stands for."""
    original_names = {node.name for node in original.graph.node}
    names = [node.name for node in compressed.graph.node if node.name not in original_names]  # (the new ones)
    notes = []
    for node in original.graph.node:
        if not node.name or node.name in paired:
            continue
        longer = [name for name in original_names if name.startswith(f"{node.name}.")]  # (fc.enc of the original)
        chain = [name for name in names if _replaces(name, node.name) and _pair_end(name, node.name) is None
                 and not any(_replaces(name, other) for other in longer)]
        if chain:
            parts = sorted(set(chain) | {f"{node.name}.{end}" for end in ("enc", "dec")} & set(names))
            notes.append(f"{node.name}: factorized more than once ({', '.join(parts)}); not timed per layer (the "
                         "whole-model timings include it)")
    return notes


def _show_inputs(signature: Mapping[str, tuple]) -> str:
    """``x float32 [N, 3, 32, 32]``, one per input (``?`` for a dynamic dim), or ``none``."""
    shown = []
    for name, (dtype, dims) in sorted(signature.items()):
        shown.append(f"{name} {dtype} [" + ", ".join(["N"] + ["?" if d is None else str(d) for d in dims]) + "]")
    return ", ".join(shown) or "none"


def _with_concrete_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A shape-inferred copy of ``model`` whose graph inputs have the concrete ``shapes``; tensors that
    shape inference cannot size (e.g. behind dynamic Pad nodes) are sized by one ONNX Runtime run."""
    from .shapes import static_copy, tensor_shapes

    inferred = shape_inference.infer_shapes(static_copy(model, shapes), data_prop=True)
    types = _value_types(inferred)
    unknown = {t for node in inferred.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")
               for t in node.input if t and _concrete_shape(types.get(t)) is None}
    if unknown:
        sized = tensor_shapes(model, shapes, unknown)
        for name in sorted(unknown & set(sized)):
            old = types.get(name)
            elem = old.tensor_type.elem_type if old is not None and old.tensor_type.elem_type else onnx.TensorProto.FLOAT
            inferred.graph.value_info.append(helper.make_tensor_value_info(name, elem, list(sized[name])))
    return inferred


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    types = {}
    # graph inputs last: an input passed through as an output keeps its concrete type, not the output's
    for value in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        types[value.name] = value.type
    for init in model.graph.initializer:
        types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
    return types


def _concrete_shape(type_proto: Optional[onnx.TypeProto]) -> Optional[tuple[int, ...]]:
    if type_proto is None or not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = type_proto.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def extract_nodes(model: onnx.ModelProto, inferred: onnx.ModelProto, nodes: list[onnx.NodeProto],
                  name: str) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """A standalone model of ``nodes`` (in order): outside tensors become inputs, weights are copied."""
    produced = {out for node in nodes for out in node.output if out}
    consumed = [inp for node in nodes for inp in node.input if inp]
    initializers = {init.name: init for init in model.graph.initializer}
    types = _value_types(inferred)
    inputs, input_shapes, inits, seen = [], {}, [], set()
    for tensor in consumed:
        if tensor in produced or tensor in seen:
            continue
        seen.add(tensor)
        if tensor in initializers:
            inits.append(initializers[tensor])
            continue
        shape = _concrete_shape(types.get(tensor))
        if shape is None:
            raise UnsupportedModelError(f"shape of '{tensor}' (input of {name}) is unknown; give --input-shape")
        elem = types[tensor].tensor_type.elem_type
        inputs.append(helper.make_tensor_value_info(tensor, elem, list(shape)))
        input_shapes[tensor] = shape
    last = nodes[-1]
    outputs = []
    for tensor in last.output:
        if not tensor:
            continue
        elem = types[tensor].tensor_type.elem_type if tensor in types else onnx.TensorProto.FLOAT
        outputs.append(helper.make_tensor_value_info(tensor, elem, None))
    graph = helper.make_graph(list(nodes), name, inputs, outputs, inits)
    extracted = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return extracted, input_shapes


def _pair_nodes(compressed: onnx.ModelProto, enc: str, dec: str) -> list[onnx.NodeProto]:
    """The nodes from ``enc`` to ``dec`` inclusive: those downstream of enc and upstream of dec."""
    nodes = list(compressed.graph.node)
    index = {node.name: i for i, node in enumerate(nodes)}
    start, end = index[enc], index[dec]
    if start > end:
        raise UnsupportedModelError(f"node '{enc}' comes after '{dec}'; the compressed graph is not sorted")
    downstream = set(nodes[start].output)
    chosen = {start}
    for i in range(start + 1, end + 1):
        if any(t in downstream for t in nodes[i].input):
            downstream.update(nodes[i].output)
            chosen.add(i)
    upstream = set(nodes[end].input)
    keep = {end, start}
    for i in range(end - 1, start, -1):
        if i in chosen and any(t in upstream for t in nodes[i].output):
            upstream.update(nodes[i].input)
            keep.add(i)
    return [nodes[i] for i in sorted(keep)]


def compare_layers(original: onnx.ModelProto, compressed: onnx.ModelProto, *, model_name: str, provider: str,
                   batch: int, input_shapes: Optional[dict[str, Sequence[int]]], threads: Optional[int],
                   provider_options: dict[str, Any], warmup: int, runs: int, seed: int = 0) -> LayerComparison:
    """Time every factorized layer of ``compressed`` against the original node, extracted and interleaved."""
    from .api import _inline_functions
    from .layers import ensure_node_names, iter_graphs

    # a copy, named as compress names it: local functions holding layers inlined, then unnamed nodes named
    original = _inline_functions(load_model(original), [])
    ensure_node_names(original)
    pairs = factorized_pairs(original, compressed)
    rows: list[LayerTiming] = []
    skipped = [f"{node.name[:-len('.enc')]}: factorized inside the subgraph {path}, where no single-layer model "
               "can be cut out; not timed per layer (the whole-model timings include it)"
               for path, graph in iter_graphs(compressed.graph) if path for node in graph.node
               if node.name.endswith(".enc")]
    skipped += _compressed_again(original, compressed, {layer for layer, _, _ in pairs})
    if not pairs:
        if skipped:
            return LayerComparison(model_name, batch, (), tuple(skipped))
        encoders = sorted(node.name[:-len(".enc")] for node in compressed.graph.node if node.name.endswith(".enc"))
        if encoders:  # factorized, but the first model is not the one it was made from
            return LayerComparison(model_name, batch, (), (
                f"its {len(encoders)} factorized layers (first: '{encoders[0]}') have no node of that name in the "
                "first model; give the original (uncompressed) model first",))
        return LayerComparison(model_name, batch, (), ())
    shapes_o, _ = resolve_input_shapes(original, input_shapes, batch_default=batch)
    shapes_o = {k: (batch,) + tuple(v[1:]) if v else v for k, v in shapes_o.items()}
    shapes_c, _ = resolve_input_shapes(compressed, input_shapes, batch_default=batch)
    shapes_c = {k: (batch,) + tuple(v[1:]) if v else v for k, v in shapes_c.items()}
    inferred_o = _with_concrete_inputs(original, shapes_o)
    inferred_c = _with_concrete_inputs(compressed, shapes_c)
    by_name = {node.name: node for node in original.graph.node}
    rng = np.random.default_rng(seed)
    for layer, enc, dec in pairs:
        node = by_name[layer]
        try:
            single, single_shapes = extract_nodes(original, inferred_o, [node], f"{layer}.original")
            pair, pair_shapes = extract_nodes(compressed, inferred_c, _pair_nodes(compressed, enc, dec), f"{layer}.pair")
        except UnsupportedModelError as exc:
            skipped.append(f"{layer}: {exc}")
            continue
        types_o = {v.name: v for v in single.graph.input}
        feeds_o = {n: random_array(n, onnx.helper.tensor_dtype_to_np_dtype(types_o[n].type.tensor_type.elem_type), s, rng)
                   for n, s in single_shapes.items()}
        types_p = {v.name: v for v in pair.graph.input}
        feeds_p = {n: feeds_o[n] if n in feeds_o and feeds_o[n].shape == s else
                   random_array(n, onnx.helper.tensor_dtype_to_np_dtype(types_p[n].type.tensor_type.elem_type), s, rng)
                   for n, s in pair_shapes.items()}
        try:
            runners = [_Runner(make_session(single, provider, threads=threads, provider_options=provider_options,
                                            spinning=False),
                               feeds_o, provider),
                       _Runner(make_session(pair, provider, threads=threads, provider_options=provider_options,
                                            spinning=False),
                               feeds_p, provider)]
        except OnnxAldsError as exc:
            log.warning("per-layer timing of %s skipped: %s", layer, exc)
            skipped.append(f"{layer}: {exc}")
            continue
        times = time_interleaved(runners, warmup=warmup, runs=runs, min_time_s=0.0)
        original_us, pair_us = (float(np.median(t)) * 1e6 for t in times)
        first_input = next(iter(single_shapes.values()), ())
        rows.append(LayerTiming(layer=layer, op_type=node.op_type, input_shape=tuple(first_input),
                                pair_nodes=tuple(n.name for n in _pair_nodes(compressed, enc, dec)),
                                original_us=original_us, pair_us=pair_us,
                                speedup=original_us / pair_us if pair_us > 0 else float("inf")))
    return LayerComparison(model_name, batch, tuple(rows), tuple(skipped))


# --------------------------------------------------------------------------------------------------
# Command line








def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``onnx-alds bench``."""
    parser.add_argument("models", metavar="MODEL", nargs="+", help="models to time; speedups are against the first")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                        help="ONNX Runtime execution provider (no fallback: an unavailable one is an error)")
    parser.add_argument("--batch", type=positive_int, nargs="+", default=None, metavar="N",
                        help="batch sizes (default: the batch the first model fixes, else the batch dim of --input-shape "
                             "where every input gives the same, else 1)")
    parser.add_argument("--threads", type=thread_count, default=None, metavar="N",
                        help="CPU intra-op threads (default: physical cores)")
    parser.add_argument("--runs", type=positive_int, default=100, metavar="N", help="minimum timed runs per model (default 100)")
    parser.add_argument("--warmup", type=non_negative_int, default=None, metavar="N",
                        help="warm-up runs per model (default 10 on CPU, 50 on CUDA/TensorRT)")
    parser.add_argument("--min-time", type=seconds, default=1.0, metavar="S",
                        help="keep timing for at least this many seconds (default 1; a million rounds at most)")
    parser.add_argument("--cudnn-conv-algo-search", choices=CONV_ALGO_SEARCH, default=None,
                        help="CUDA conv algorithm search, with --provider cuda (default EXHAUSTIVE)")
    parser.add_argument("--per-layer", action="store_true",
                        help="time each factorized layer (<layer>.enc/.dec) against the original node")
    parser.add_argument("--input-shape", action="append", metavar="NAME:DIMS", default=None,
                        help="dims of dynamic inputs; the first dim is replaced by each --batch size (without --batch it is the batch)")
    parser.add_argument("--json", metavar="FILE", default=None, help="write every figure as JSON")


def run_bench_command(args: argparse.Namespace) -> int:
    """Run ``onnx-alds bench``: print the timings (and per-layer rows), write --json, return 0."""
    from .report import write_json

    if args.cudnn_conv_algo_search is not None and args.provider != "cuda":
        raise InputDataError(f"--cudnn-conv-algo-search has no effect with --provider {args.provider} (it sets "
                             "the CUDA provider's conv search); add --provider cuda or drop it")
    shapes = parse_input_shapes(args.input_shape)
    batches = args.batch or [default_batch(args.models[0], shapes)]  # x:4x64 times batch 4, not 1
    report = bench(args.models, provider=args.provider, batch_sizes=tuple(batches), threads=args.threads,
                   warmup=args.warmup, runs=args.runs, min_time_s=args.min_time,
                   input_shapes=shapes, per_layer=args.per_layer,
                   cudnn_conv_algo_search=args.cudnn_conv_algo_search or "EXHAUSTIVE")
    args.written_files = []  # what an interrupt from here on leaves written (cli names it)
    for line in report.lines():
        print(line)
    if args.json:
        write_json(report.to_dict(), args.json, also=lambda: args.written_files.append(str(args.json)))
    return 0


__all__ = ["Timing", "LayerTiming", "LayerComparison", "BenchReport", "bench", "compare_layers",
           "default_batch", "factorized_pairs", "round_robin_order", "time_interleaved", "physical_cores", "machine_info",
           "versions", "add_bench_arguments", "run_bench_command"]

_callable_module(__name__, "bench")  # onnx_alds.bench(...) calls bench(...)
