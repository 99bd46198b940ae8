"""``onnx-alds sweep``: compress × validate (× bench) over models, budgets, methods and rank multiples.

The grid is written once (this module's driver); *how* the per-variant work runs is an engine:

* ``local`` (default): in this process, one variant after another (``--workers 1``), or a pool of
  ``--workers N`` processes on this machine. No Ray needed.
* ``ray``: Ray actors (``pip install onnx-alds[ray]``) on the cluster ``--address`` names, or on a
  local Ray instance. Each actor builds its ONNX Runtime sessions itself, with
  ``intra_op_num_threads`` = the CPUs Ray gave it.

The work for one variant is a pure function of (the model and its data, the variant): it compresses,
validates on the held-out data and returns the row and the model's bytes (:func:`run_variant`). The
driver writes ``DIR/models/<variant id>.onnx`` and ``DIR/rows/<variant id>.json``; a variant whose row
file exists with the same fingerprint (model and data content, variant, library version) is not
redone, so an interrupted sweep resumes where it stopped.

Identical results whatever the engine, apart from timings: every worker runs compression with one
BLAS thread (OpenBLAS gives other bits with another thread count; measured, and one thread is also the
faster setting next to ONNX Runtime's spinning threads), the data is loaded once by the driver and
shipped to the workers as is, and rows hold no paths, engine or worker details.

Latency is measured after every compress/validate task has ended and the workers are gone, on the
driver, one interleaved :func:`onnx_alds.bench.bench` run per model and budget (the original and every
variant of that budget), so no timing runs next to other work of the sweep. ``--no-bench`` skips it and
the record says the variants were not timed. Variants with ``+sc`` (``--speed-check``) time layers while
they compress, so they also run on the driver, one at a time, after the parallel phase.

Outputs in ``DIR``: ``sweep.json`` (every row, the skipped combinations, one record per run with the
engine and the phase times), ``sweep.csv`` (one line per variant), ``<model>-quality.png`` and
``<model>-speedup.png`` (with matplotlib, the ``[plots]`` extra), ``models/`` and ``rows/``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import json
import logging
import math
import numbers
import os
import platform
import re
import socket
import sys
import time
import traceback
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from .argtypes import check_count, check_seed
from .errors import (BudgetError, InputDataError, OnnxAldsError, OutputPathError, UnsupportedModelError,
                     runtime_error_text)
from .options import seed_takes_effect

log = logging.getLogger(__name__)

__all__ = [
    "MethodSpec", "parse_method", "DataSource", "EvalSpec", "SweepModel", "Variant", "VariantTask",
    "ModelData", "WorkerState", "run_variant", "neighbour_metrics", "Engine", "LocalEngine", "RayEngine",
    "make_engine", "SweepResult", "run_sweep", "without_timings", "CSV_COLUMNS", "TIMING_FIELDS",
    "add_sweep_arguments", "run_sweep_command", "EngineError",
]

BLAS_THREADS = 1  # numpy/scipy threads during compression, in every engine (see the module docstring)
VALIDATION_BATCH = 32
ROWS_DIR, MODELS_DIR = "rows", "models"


class EngineError(OnnxAldsError):
    """The engine cannot run (Ray missing or unreachable)."""


# ------------------------------------------------------------------------------------------------
# Methods: a base method of onnx_alds.compress with modifiers, e.g. "alds+data/pw"

# modifier -> (keyword arguments of compress, what it means); "data" and "speed_check" are the sweep's own
MODIFIERS: dict[str, tuple[dict[str, Any], str]] = {
    "+data": (dict(data=True), "data-aware: the calibration set (--calibration …)"),
    "+seq": (dict(sequential=True), "--sequential (needs +data)"),
    "+bc": (dict(bias_correction=True), "--bias-correction (needs +data)"),
    "+sens": (dict(sensitivity=True), "--sensitivity (needs +data)"),
    "/frob": (dict(error_measure="frobenius"), "--error frobenius"),
    "/g1": (dict(max_groups=1), "--max-groups 1: the min-max allocation without grouping"),
    "/pw": (dict(order="pointwise-first"), "--order pointwise-first"),
    "+sc": (dict(speed_check=True), "--speed-check on the CPU at the first --bench-batch (runs on the driver)"),
    "+prune": (dict(prune="combined"), "--prune: hidden widths and low-rank in one allocation (needs +data)"),
    "+pruneonly": (dict(prune="only"), "--prune only: hidden widths alone (needs +data)"),
}


@dataclass(frozen=True)
class MethodSpec:
    """A method name of the sweep and the :func:`onnx_alds.compress` options it stands for."""

    name: str
    options: Mapping[str, Any]
    data: bool = False
    speed_check: bool = False


DATA_ONLY_METHODS = ("damage",)  # methods that exist only with calibration data


def parse_method(name: str) -> MethodSpec:
    """``alds``, ``svd+data``, ``alds+data/pw+sc``, ``damage+data+prune``, …: a method of ``onnx-alds
    compress`` followed by modifiers (``+data``, ``+seq``, ``+bc``, ``+sens``, ``/frob``, ``/g1``, ``/pw``,
    ``+sc``, ``+prune``, ``+pruneonly``)."""
    from .api import METHODS

    match = re.fullmatch(r"([a-z-]+)((?:[+/][a-z0-9]+)*)", name)
    base = match.group(1) if match else None
    if base not in METHODS:
        raise BudgetError(f"unknown method '{name}'; give one of {', '.join(METHODS)}, optionally followed by "
                          f"modifiers {' '.join(MODIFIERS)} (e.g. alds+data/pw)")
    options: dict[str, Any] = {"method": base}
    tokens = re.findall(r"[+/][a-z0-9]+", match.group(2))
    for token in tokens:
        if token not in MODIFIERS:
            raise BudgetError(f"unknown modifier '{token}' in method '{name}'; choose from {' '.join(MODIFIERS)}")
        if tokens.count(token) > 1:
            raise BudgetError(f"method '{name}' gives {token} twice; give each modifier once")
        clash = set(MODIFIERS[token][0]) & {key for other in tokens if other != token for key in MODIFIERS[other][0]}
        if clash:
            raise BudgetError(f"method '{name}': {token} and another modifier both set {sorted(clash)[0]}; keep one")
        options.update(MODIFIERS[token][0])
    data = bool(options.pop("data", False))
    speed_check = bool(options.pop("speed_check", False))
    if not data and any(options.get(k) for k in ("sequential", "bias_correction", "sensitivity", "prune")):
        raise BudgetError(f"method '{name}': +seq, +bc, +sens, +prune and +pruneonly need calibration data; add +data")
    if options.get("prune") and speed_check:
        raise BudgetError(f"method '{name}': +sc times low-rank layers only; drop +sc or the pruning modifier")
    low_rank = [token for token in tokens if token not in ("+data", "+pruneonly")]
    if options.get("prune") == "only" and (base != "alds" or low_rank):
        raise BudgetError(f"method '{name}': +pruneonly narrows widths alone, so the low-rank method and modifiers "
                          f"change nothing (as compress --prune only refuses --method); write it alds+data+pruneonly")
    if options.get("prune") == "combined" and base == "svd":
        from .prune import SVD_WITH_WIDTHS

        raise BudgetError(f"method '{name}': {SVD_WITH_WIDTHS}")
    if not data and base in DATA_ONLY_METHODS:
        raise BudgetError(f"method '{name}' needs calibration data; write it {base}+data and give --calibration")
    message = _without_effect(options, data)
    if message:
        raise BudgetError(f"method '{name}': {message} (the same as a method without that modifier)")
    return MethodSpec(name, options, data, speed_check)


def _without_effect(options: Mapping[str, Any], data: bool) -> Optional[str]:
    """compress's refusal of an option that changes nothing (options.without_effect), for a sweep method."""
    from dataclasses import fields
    from types import SimpleNamespace

    from .options import DataAwareOptions, SearchOptions, without_effect

    search = SearchOptions(**{key: value for key, value in options.items()
                              if key in {f.name for f in fields(SearchOptions)}})
    data_fields = {f.name: f.default for f in fields(DataAwareOptions)}  # (no calibration: not a DataAwareOptions)
    return without_effect(search, SimpleNamespace(**{**data_fields, **{key: value for key, value in options.items()
                                                                      if key in data_fields}}), calibrated=data)


# ------------------------------------------------------------------------------------------------
# What to sweep: models with their data, variants


@dataclass(frozen=True)
class DataSource:
    """One input set: an .npz, a folder of images (with a preprocessing) or N random samples."""

    npz: Optional[str] = None
    images: Optional[str] = None
    preprocess: Any = "imagenet"           # a preset name or an onnx_alds.inputs.Preprocess
    random: Optional[int] = None
    seed: int = 0
    limit: Optional[int] = None
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None
    labels_file: Optional[str] = None       # --labels FILE
    labels_from_filenames: bool = False     # --labels-from-filenames

    def __post_init__(self) -> None:
        for flag, path in (("an .npz", self.npz), ("an image folder", self.images), ("a labels file", self.labels_file)):
            if path is not None and not Path(path).exists():
                raise InputDataError(f"'{path}' does not exist; give {flag} that does (check the path)")

    def load(self, model: onnx.ModelProto):
        from .inputs import load_inputs

        labels: dict[str, Any] = {}  # passed only when asked for: not every version of load_inputs takes them
        if self.labels_file is not None:
            labels["labels_file"] = self.labels_file
        if self.labels_from_filenames:
            labels["labels_from_filenames"] = True
        return load_inputs(model, npz=self.npz, images=self.images, preprocess=self.preprocess,
                           random=self.random, input_shapes=self.input_shapes, seed=self.seed, limit=self.limit,
                           progress=False, **labels)

    def identity(self, hashes: "_Hashes") -> dict[str, Any]:
        """What the data is, by content where it is a file (for the resume fingerprint)."""
        if self.npz is not None:
            what: dict[str, Any] = {"npz": hashes.file(self.npz)}
        elif self.images is not None:
            from .inputs import image_files

            preprocess = self.preprocess if isinstance(self.preprocess, str) else asdict(self.preprocess)
            what = {"images": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in image_files(self.images)],
                    "preprocess": preprocess}
        else:
            what = {"random": self.random, "seed": self.seed}
        if self.limit is not None:  # which samples a limited set holds: evenly spaced (the first ones before
            what.update(selection="spread")  # inputs.spread_indices), so rows of the old prefix are not resumed
        what.update(limit=self.limit, input_shapes={k: list(v) for k, v in (self.input_shapes or {}).items()},
                    labels_file=hashes.file(self.labels_file) if self.labels_file else None,
                    labels_from_filenames=self.labels_from_filenames)
        return what


EVAL_KINDS = ("auto", "accuracy", "agreement", "embedding", "sanity")


@dataclass(frozen=True)
class EvalSpec:
    """A held-out set and the figures taken on it (of the model's first output).

    ``accuracy``: labels are true classes (accuracy of both models, drop, top-1/top-5 agreement);
    ``agreement``: top-1/top-5 agreement with the original; ``embedding``: cosine similarity and
    nearest-neighbour ranking preservation (:func:`neighbour_metrics`); ``sanity``: relative error;
    ``auto``: ``accuracy`` for a classifier-shaped output with labels, ``agreement`` without labels,
    else cosine and relative error.
    """

    label: str
    source: DataSource
    kind: str = "auto"


@dataclass(frozen=True)
class SweepModel:
    """A model of the sweep, its data and how it is timed."""

    name: str
    path: str
    evals: tuple[EvalSpec, ...]
    calibration: Optional[DataSource] = None
    quality_metric: Optional[str] = None       # the row field called "quality"; None: from the first eval set
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None
    bench_batches: tuple[int, ...] = (1, 32)
    data_aware: bool = True                     # False: skip the +data methods (with skip_note)
    skip_note: str = ""


@dataclass(frozen=True)
class Variant:
    """One cell of the grid."""

    model: str
    method: str
    target: str          # "flops" or "params"
    keep: float
    rank_multiple: int
    seed: int = 0

    @property
    def id(self) -> str:
        """A stable file-name-safe id: ``<model>.<method>.<target><keep>.m<rank multiple>[.s<seed>]``."""
        text = f"{self.model}.{self.method}.{self.target}{self.keep:g}.m{self.rank_multiple}"
        text += f".s{self.seed}" if self.seed else ""
        return re.sub(r"[^A-Za-z0-9+.=_-]", "_", text)  # "alds+data/pw" → "alds+data_pw"


@dataclass(frozen=True)
class VariantTask:
    """What a worker needs besides the model's data: the variant and how to compress it."""

    variant: Variant
    method: MethodSpec
    model: SweepModel
    fingerprint: str
    data_id: str = ""  # the model file and validation data its figures are measured on (:func:`data_identity`)
    calibration_id: Optional[str] = None  # a data-aware variant's calibration set (:func:`calibration_identity`)


# ------------------------------------------------------------------------------------------------
# The per-variant work (runs in the workers)


@dataclass(frozen=True)
class ModelData:
    """A model and its input sets, loaded once by the driver and shipped to every worker unchanged."""

    name: str
    model_bytes: bytes
    calibration: Any                              # InputSet or None
    evals: tuple[tuple[EvalSpec, Any], ...]       # (spec, InputSet)
    notes: tuple[str, ...] = ()                   # about the data, for every row (samples left out ...)


@dataclass
class VariantOutcome:
    row: dict[str, Any]
    model_bytes: Optional[bytes] = None
    report: Optional[dict[str, Any]] = None
    crashed: bool = False
    seconds: float = 0.0                          # wall time of the task in the worker
    started: float = 0.0                          # when it started (time.time() in the worker)
    cpu_seconds: float = 0.0                      # CPU time of the worker process (all its threads) in the task
    worker: int = 0                               # the worker's process id


class WorkerState:
    """What a worker keeps between variants: parsed models, the original's outputs per eval set."""

    def __init__(self, threads: Optional[int] = None) -> None:
        self.threads = threads
        self._protos: dict[str, onnx.ModelProto] = {}
        self._reference: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._data: dict[str, ModelData] = {}

    def data(self, name: str, fetch: Callable[[], ModelData]) -> ModelData:
        if name not in self._data:
            self._data[name] = fetch()
        return self._data[name]

    def proto(self, data: ModelData) -> onnx.ModelProto:
        if data.name not in self._protos:
            proto = onnx.ModelProto()
            proto.ParseFromString(data.model_bytes)
            self._protos[data.name] = proto
        return self._protos[data.name]

    def reference(self, data: ModelData, label: str, inputs) -> dict[str, np.ndarray]:
        key = (data.name, label)
        if key not in self._reference:
            self._reference[key] = model_outputs(data.model_bytes, inputs, threads=self.threads)
        return self._reference[key]


def model_outputs(model: Union[bytes, onnx.ModelProto], inputs, batch_size: int = VALIDATION_BATCH,
                  threads: Optional[int] = None) -> dict[str, np.ndarray]:
    """The output a sweep compares (the first float tensor output of ``model``, else the first tensor
    output: sequences and maps, e.g. a classifier's ZipMap, are left out) on ``inputs`` (CPU), one row
    per sample, concatenated over batches. Raises :class:`UnsupportedModelError` when the model has no
    tensor output, or when that output's first dim is not the batch (a scalar, a ``[C, N]`` output):
    its values cannot be told apart by sample, and joining them would compare the wrong things."""
    from .inputs import dim_name_clash
    from .runtime import FLOAT_TENSOR_TYPES, make_session
    from .validate import effective_batch_size

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else model
    batch_size = effective_batch_size(proto, batch_size, len(inputs))[0]  # a model that fixes its batch runs at it
    session = make_session(model, "cpu", threads=threads)
    tensors = [o for o in session.get_outputs() if o.type.startswith("tensor(")]
    names = [o.name for o in tensors if o.type in FLOAT_TENSOR_TYPES] + \
        [o.name for o in tensors if o.type not in FLOAT_TENSOR_TYPES]
    if not names:
        raise UnsupportedModelError("the model has no tensor output to compare; export it with tensor outputs "
                                    "(for skl2onnx: options={'zipmap': False})")
    name, chunks = names[0], []
    for feed in inputs.batches(batch_size):
        try:
            value = np.asarray(session.run([name], feed)[0])
        except Exception as exc:  # (ONNX Runtime's own error types): one line, not a crashed variant
            raise InputDataError(f"running the model on the evaluation inputs failed ({runtime_error_text(exc)}); "
                                 "check that the arrays match the model's inputs (dtype, shape, value range)"
                                 f"{dim_name_clash(session, feed)}") from None
        samples = len(next(iter(feed.values())))
        if value.ndim == 0 or value.shape[0] != samples:
            raise UnsupportedModelError(
                f"sweep compares the output '{name}' sample by sample, but its first dim is not the batch (shape "
                f"{list(value.shape)} for a batch of {samples}); compare such a model with onnx-alds validate (one "
                "sample per batch), or export it with the batch as the first dim of its first output")
        chunks.append(value)
    return {name: np.concatenate(chunks, axis=0)}


def _flat(array: np.ndarray) -> np.ndarray:
    """One row per sample: float64 for numbers; labels, strings and flags as they are (compared for equality)."""
    rows = array.reshape(array.shape[0], -1)
    return rows.astype(np.float64) if np.issubdtype(array.dtype, np.floating) else rows


def neighbour_metrics(original: np.ndarray, compressed: np.ndarray, k: int = 10) -> dict[str, float]:
    """Nearest-neighbour ranking preservation among the samples (cosine similarity, self excluded).

    ``nn_top1``: fraction of samples whose nearest neighbour is unchanged; ``nn_top10``: mean overlap
    of the ``k`` nearest neighbour sets; ``spearman``: rank correlation of all pairwise similarities.
    """
    def unit(x):
        x = _flat(x)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)

    a, b = unit(original), unit(compressed)
    sim_a, sim_b = a @ a.T, b @ b.T
    n = len(a)
    np.fill_diagonal(sim_a, -np.inf)
    np.fill_diagonal(sim_b, -np.inf)
    top1 = float(np.mean(np.argmax(sim_a, axis=1) == np.argmax(sim_b, axis=1)))
    k = min(k, n - 1)
    near_a = np.argsort(-sim_a, axis=1, kind="stable")[:, :k]
    near_b = np.argsort(-sim_b, axis=1, kind="stable")[:, :k]
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(near_a, near_b)])) if k > 0 else 1.0
    upper = np.triu_indices(n, 1)
    from scipy.stats import spearmanr

    rho = float(spearmanr(sim_a[upper], sim_b[upper]).statistic) if len(upper[0]) > 1 else 1.0
    return {"nn_top1": top1, "nn_top10": overlap, "spearman": rho}


def _resolved_kind(kind: str, name: str, reference: np.ndarray, labels, samples: int) -> str:
    """``kind`` of an eval set, ``auto`` resolved as validate resolves it (:func:`onnx_alds.validate.detect_kind`:
    an embedding by its unit rows or its name, an output whose first dim is not the batch is no classifier)."""
    from .validate import CLASSIFIER, EMBEDDING, detect_kind

    if kind != "auto":
        return kind
    found, _ = detect_kind(name, reference, batched=reference.ndim > 0 and reference.shape[0] == samples)
    if found == CLASSIFIER:
        return "accuracy" if labels is not None else "agreement"
    return "embedding" if found == EMBEDDING else "output"


def evaluate(state: WorkerState, data: ModelData, compressed: bytes) -> dict[str, Any]:
    """The quality figures of ``compressed`` on every held-out set of ``data``, on its first float output
    (the first tensor output when none is float: labels and strings then count as equal or not)."""
    from .validate import Tolerances, compare_output

    row: dict[str, Any] = {}
    for spec, inputs in data.evals:
        reference = state.reference(data, spec.label, inputs)
        outputs = model_outputs(compressed, inputs, threads=state.threads)
        first = next(iter(reference))
        ref, new = _flat(reference[first]), _flat(outputs[first])
        kind = _resolved_kind(spec.kind, first, reference[first], inputs.labels, len(inputs))
        if not np.issubdtype(ref.dtype, np.floating):  # no float output: predicted labels, equal or not
            kind = "labels"
        classifier = kind in ("accuracy", "agreement", "sanity") and ref.shape[1] >= 2
        labels = inputs.labels if kind == "accuracy" else None
        comparison = compare_output(first, ref, new, classifier=classifier, labels=labels,
                                    tolerances=Tolerances(), check_accuracy=labels is not None)
        if kind == "accuracy":
            row["accuracy"] = comparison.accuracy_compressed
            row["accuracy_original"] = comparison.accuracy_original
            row["accuracy_drop"] = comparison.accuracy_drop
            row.setdefault("agreement", comparison.top1_agreement)
            row.setdefault("agreement_top5", comparison.top5_agreement)
            row["eval_samples"] = comparison.samples
        elif kind == "agreement":
            row["agreement"] = comparison.top1_agreement
            row["agreement_top5"] = comparison.top5_agreement
            row["agreement_samples"] = comparison.samples
        elif kind == "embedding":
            row["cos_mean"] = comparison.mean_cosine
            row["cos_min"] = comparison.min_cosine
            row.update(neighbour_metrics(ref, new))
            row["eval_samples"] = comparison.samples
        elif kind == "labels":
            row["agreement"] = comparison.mean_cosine  # for labels: 1 - the fraction of values that differ
            row["eval_samples"] = comparison.samples
        elif kind == "sanity":
            row["rel_error_mean"] = comparison.mean_rel_error
            row["agreement"] = comparison.top1_agreement
            row["eval_samples"] = comparison.samples
        else:  # "output": not a classifier
            row["cos_mean"] = comparison.mean_cosine
            row["cos_min"] = comparison.min_cosine
            row["rel_error_mean"] = comparison.mean_rel_error
            row["eval_samples"] = comparison.samples
    return row


def _original_quality(row: dict[str, Any], metric: str) -> Optional[float]:
    if metric == "accuracy":
        return row.get("accuracy_original")
    return {"agreement": 1.0, "cos_mean": 1.0, "cos_min": 1.0, "nn_top1": 1.0, "nn_top10": 1.0, "spearman": 1.0,
            "rel_error_mean": 0.0}.get(metric)


def quality_metric(model: SweepModel, figures: Mapping[str, Any]) -> str:
    """The row field plotted as quality: the model's own, else the first of accuracy, agreement,
    nn_top1, cos_mean that the validation measured."""
    if model.quality_metric:
        return model.quality_metric
    return next((name for name in ("accuracy", "agreement", "nn_top1", "cos_mean") if figures.get(name) is not None),
                "rel_error_mean")


def base_row(task: VariantTask) -> dict[str, Any]:
    variant = task.variant
    row = dict(variant_id=variant.id, model=variant.model, method=variant.method, data_aware=task.method.data,
               target=variant.target, keep=float(variant.keep), rank_multiple=int(variant.rank_multiple),
               seed=int(variant.seed))
    if task.model.quality_metric:
        row["quality_metric"] = task.model.quality_metric
    return row


def run_variant(task: VariantTask, data: ModelData, state: WorkerState) -> VariantOutcome:
    """Compress one variant and validate it: the row (no timing figures yet) and the model's bytes.

    A budget the model cannot reach (or any other user-facing error) is a row with ``status: error``;
    anything else that goes wrong is a crash, not recorded as done (a later run retries it).
    """
    from threadpoolctl import threadpool_limits

    from .api import compress

    started, wall, cpu = time.perf_counter(), time.time(), time.process_time()
    row = base_row(task)
    spec = task.method
    model = task.model

    def done(outcome: VariantOutcome) -> VariantOutcome:
        outcome.seconds, outcome.started, outcome.worker = time.perf_counter() - started, wall, os.getpid()
        outcome.cpu_seconds = time.process_time() - cpu
        return outcome

    try:
        options = dict(spec.options)
        run: Callable[..., Any] = compress
        if spec.speed_check:
            from functools import partial

            from .speed import compress_speed_checked

            run = partial(compress_speed_checked, provider="cpu", threads=state.threads, batch=model.bench_batches[0])
        target = {"keep_flops" if task.variant.target == "flops" else "keep_params": task.variant.keep}
        tick = time.perf_counter()
        try:
            with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
                result = run(state.proto(data), rank_multiple=task.variant.rank_multiple, seed=task.variant.seed,
                             input_shapes=model.input_shapes, calibration=data.calibration if spec.data else None,
                             **target, **options)
        except OnnxAldsError as exc:
            row.update(status="error", error=str(exc))
            return done(VariantOutcome(row))
        compress_s = time.perf_counter() - tick
        report = result.report
        if getattr(result, "store", None) is not None:  # a light result: its dense weights read from the store
            from .model_io import materialize

            materialize(result.model, result.store)
        model_bytes = result.model.SerializeToString()
        macs_kept = (report.macs_after / report.macs_before) if report.macs_before and report.macs_after else None
        row.update(status="ok", achieved_keep=report.achieved,
                   params_kept=report.params_after / report.params_before if report.params_before else None,
                   macs_kept=macs_kept, layers_factorized=sum(1 for layer in report.layers if layer.groups),
                   layers_total=len(report.layers), max_error=report.max_error,
                   ideal_speedup=1.0 / macs_kept if macs_kept else None,
                   notes=[f"warning: {warning}" for warning in report.warnings] + list(report.notes)
                   + list(data.notes),
                   plan=[dict(layer=l.name, op=l.op, shape=list(l.weight_shape), groups=l.groups, rank=l.rank,
                              macs_before=l.macs_before, macs_after=l.macs_after, error=l.error)
                         for l in report.layers if l.groups],
                   blocks=[dict(block=b.name, width_before=b.width_before, width_after=b.width_after, error=b.error)
                           for b in report.pruned or () if b.width_after < b.width_before],
                   onnx_sha256=hashlib.sha256(model_bytes).hexdigest(),
                   model_file=f"{MODELS_DIR}/{task.variant.id}.onnx")
        tick = time.perf_counter()
        try:
            row.update(evaluate(state, data, model_bytes))
        except OnnxAldsError as exc:  # held-out inputs or outputs the figures cannot be computed on: said, not a crash
            row.update(status="error", error=f"evaluating the compressed model: {exc}")
            return done(VariantOutcome(row))
        metric = quality_metric(model, row)
        row["quality_metric"] = metric
        row["quality"] = row.get(metric)
        row["quality_original"] = _original_quality(row, metric)
        row["compress_s"] = compress_s
        row["compress_seconds_by_step"] = dict(report.seconds)
        row["validate_s"] = time.perf_counter() - tick
        return done(VariantOutcome(row, model_bytes, report.to_dict()))
    except Exception as exc:  # a bug or a broken environment: report it, keep the sweep going
        lines = traceback.format_exception_only(type(exc), exc)
        row.update(status="crashed", error=lines[-1].strip() if lines else type(exc).__name__)
        if isinstance(exc, MemoryError):
            row.update(memory=True, error=f"out of memory ({row['error'][:160]})")
        log.debug("variant %s crashed:\n%s", task.variant.id, traceback.format_exc())
        return done(VariantOutcome(row, crashed=True))


# ------------------------------------------------------------------------------------------------
# Engines: where run_variant runs


def _cap_default_session_threads(threads: int) -> None:
    """In a worker process: sessions that ask for no thread count (the calibration runs inside
    ``compress``) get ``threads`` instead of ONNX Runtime's default of every physical core, so that
    workers sharing a machine do not oversubscribe it. Only ever called in processes the engines own."""
    from . import runtime

    original = runtime.make_session
    if getattr(original, "_sweep_capped", False):
        return

    def make_session(model, provider="cpu", **kwargs):
        if kwargs.get("threads") is None:
            kwargs["threads"] = threads
        return original(model, provider, **kwargs)

    make_session._sweep_capped = True  # type: ignore[attr-defined]
    runtime.make_session = make_session


class Engine:
    """Runs variant tasks; yields ``(task, outcome)`` as they finish (in any order)."""

    name = "engine"
    workers = 1

    def start(self, data: Mapping[str, ModelData]) -> None:
        """Get the workers ready and give them the models' data."""

    def run(self, tasks: Sequence[VariantTask]) -> Iterator[tuple[VariantTask, VariantOutcome]]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop every worker: nothing of the sweep runs after this returns."""

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "workers": self.workers}


# local process pool: the worker's state lives in module globals of the worker process
_POOL_STATE: Optional[WorkerState] = None
_POOL_DATA: dict[str, ModelData] = {}
_POOL_RUNNING: Optional[str] = None  # a folder holding one file per task running in a worker (its variant id)


def _pool_init(threads: int, data_path: str) -> None:
    """A worker's set-up: its thread cap, and the models' data read from ``data_path`` (written by
    :meth:`LocalEngine.start`; read from a file, not sent down the start-up pipe: a worker killed while a
    large start-up message was written to it left the parent blocked for good, deaf to Ctrl-C)."""
    import pickle

    global _POOL_STATE, _POOL_DATA, _POOL_RUNNING
    _cap_default_session_threads(threads)
    _POOL_STATE = WorkerState(threads=threads)
    _POOL_RUNNING = os.path.join(os.path.dirname(data_path), "running")
    with open(data_path, "rb") as stream:
        _POOL_DATA = pickle.load(stream)  # (this run's own file)


def _marker(task: VariantTask) -> str:
    """The file name that marks ``task`` as running in a worker (its variant id, hashed: any characters)."""
    return hashlib.sha256(task.variant.id.encode()).hexdigest()[:16]


def _pool_run(task: VariantTask) -> VariantOutcome:
    """Run ``task``, its variant id marked as running meanwhile: when a worker dies, the tasks still marked
    are those that were running (one of them killed it), the others only waited."""
    assert _POOL_STATE is not None and _POOL_RUNNING is not None
    marker = os.path.join(_POOL_RUNNING, _marker(task))
    with open(marker, "w"):
        pass
    try:
        return run_variant(task, _POOL_DATA[task.model.name], _POOL_STATE)
    finally:
        os.unlink(marker)


def _pool_ready() -> bool:
    from . import api, validate  # noqa: F401  (import the heavy modules before the timed phase)

    return True


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (once per process) with its leak warning off: workers stopped
    mid-task (an interrupt, a dead worker's pool) leave the pool's semaphores to it, which it removes, and
    its "leaked semaphore objects" warning followed the command's own error line."""
    import sys
    from multiprocessing import resource_tracker

    ignore = "ignore::UserWarning:multiprocessing.resource_tracker"
    sys.warnoptions.append(ignore)  # (the tracker is started with this interpreter's -W options)
    try:
        resource_tracker.ensure_running()
    finally:
        sys.warnoptions.remove(ignore)


@contextlib.contextmanager
def _spawning_workers() -> Iterator[None]:
    """Spawn worker processes that a Ctrl-C in the terminal does not reach: SIGINT is blocked in this
    thread while they are spawned, a mask they keep through exec, so the interrupt stops this process
    alone, which stops them (:meth:`LocalEngine.close`), instead of every worker printing a traceback
    mid-import. A SIGINT or SIGTERM that arrives meanwhile is held and raised as KeyboardInterrupt on
    leaving, once every spawned worker is known to the pool (raised mid-spawn, one would be orphaned)."""
    import signal
    import threading

    from .signals import held_signals

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    with held_signals(("SIGINT", "SIGTERM")) as caught:  # (one ignored, as in a background job, stays so)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending SIGINT is recorded from here on
    if caught:
        raise KeyboardInterrupt


class LocalEngine(Engine):
    """This machine: in this process (``workers=1``) or a pool of ``workers`` spawned processes, each
    with ``threads`` ONNX Runtime threads (default: the physical cores divided among the workers)."""

    name = "local"

    def __init__(self, workers: int = 1, threads: Optional[int] = None) -> None:
        from .bench import logical_cpus, physical_cores

        self.workers = max(1, int(workers))
        cpus = logical_cpus()
        if self.workers > cpus:  # (as the Ray engine refuses more workers than its cluster's CPUs)
            raise EngineError(f"--workers {self.workers} starts {self.workers} processes, each holding the models "
                              f"and their data, and this machine has {cpus} CPUs; give at most --workers {cpus}")
        self.threads = threads or max(1, physical_cores() // self.workers)
        self._pool = None
        self._pool_size = 0
        self._data_dir: Optional[str] = None  # the models' data the workers read at start-up
        self._futures: list = []
        self._state: Optional[WorkerState] = None
        self._data: Mapping[str, ModelData] = {}

    def start(self, data: Mapping[str, ModelData]) -> None:
        self._data = data
        if self.workers == 1:
            self._state = WorkerState(threads=self.threads)
            return
        import pickle
        import tempfile

        self._data_dir = tempfile.mkdtemp(prefix="onnx-alds-sweep-")
        os.mkdir(os.path.join(self._data_dir, "running"))
        with open(os.path.join(self._data_dir, "data.pickle"), "wb") as stream:
            pickle.dump(dict(data), stream, protocol=pickle.HIGHEST_PROTOCOL)
        self._new_pool(self.workers)

    def _new_pool(self, workers: int) -> None:
        """Start a pool of ``workers`` spawned processes (each has read the models' data) as the engine's
        pool; raises :class:`EngineError` when one dies while starting."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        assert self._data_dir is not None
        _quiet_resource_tracker()
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_pool_init,
                                   initargs=(self.threads, os.path.join(self._data_dir, "data.pickle")))
        self._pool, self._pool_size = pool, workers
        with _spawning_workers():  # these submits spawn the workers
            self._futures = [pool.submit(_pool_ready) for _ in range(workers)]
        try:
            for future in self._futures:
                future.result()
        except BrokenProcessPool:
            self._stop_pool()
            raise EngineError(f"a sweep worker process died while starting (killed, or out of memory: each of the "
                              f"{self.workers} workers holds the models and their data); run with fewer --workers"
                              ) from None

    def run(self, tasks: Sequence[VariantTask]) -> Iterator[tuple[VariantTask, VariantOutcome]]:
        """The tasks' outcomes as they finish. A worker that dies (killed, out of memory) breaks the pool and
        every task it held: those that were running then each run again alone, in a pool of one worker (the
        one that kills its worker every time is reported crashed), and those that only waited go back to a
        pool of ``workers``."""
        if self._pool is None:
            assert self._state is not None
            for task in tasks:
                yield task, run_variant(task, self._data[task.model.name], self._state)
            return
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        assert self._data_dir is not None
        running = os.path.join(self._data_dir, "running")
        waiting, suspects = list(tasks), []
        while waiting or suspects:
            alone = bool(suspects)  # first the tasks that were running at a break, one at a time
            group = [suspects.pop(0)] if alone else waiting
            if not alone:
                waiting = []
            size = 1 if alone else self.workers
            if self._pool is None or self._pool_size != size:
                self._stop_pool()
                try:
                    self._new_pool(size)
                except EngineError as exc:  # a worker died starting again: these tasks are reported
                    for task in group:
                        yield task, self._crashed(task, exc)
                    continue
            futures = {self._pool.submit(_pool_run, task): task for task in group}
            self._futures = list(futures)
            broken, pool_broke = [], False
            for future in as_completed(futures):
                task = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:
                    pool_broke = True
                    if alone:  # alone in its pool: it killed its worker
                        yield task, self._crashed(task, exc, alone=True)
                    else:
                        broken.append(task)
                    continue
                except Exception as exc:  # the task could not be sent or its result read back
                    outcome = self._crashed(task, exc)
                yield task, outcome
            if pool_broke:
                self._stop_pool()
            if broken:
                marked = set(os.listdir(running))
                for name in marked:
                    os.unlink(os.path.join(running, name))
                was_running = [task for task in broken if _marker(task) in marked]
                suspects += was_running or broken  # (none marked: every one of them, to be sure)
                waiting += [task for task in broken if task not in suspects]

    @staticmethod
    def _crashed(task: VariantTask, exc: BaseException, alone: bool = False) -> VariantOutcome:
        row = dict(base_row(task), status="crashed", error=(
            "its worker process died with it running alone (killed, or out of memory)" if alone
            else f"worker process failed: {exc}"))
        if alone:
            row["memory"] = True
        return VariantOutcome(row, crashed=True)

    def _stop_pool(self) -> None:
        """Stop the pool's workers now (the pool's own handles: shutdown() forgets them; Python 3.14's
        terminate_workers() does this) and forget it."""
        if self._pool is None:
            return
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
        self._pool = None
        self._futures = []

    def close(self) -> None:
        if self._data_dir is not None:
            import shutil

            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
        if self._pool is None:
            return
        if all(future.done() for future in self._futures):
            self._pool.shutdown(wait=True)
            self._pool = None
            self._futures = []
        else:  # interrupted: the workers do not take SIGINT (start()), so they are stopped here
            self._stop_pool()

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "workers": self.workers, "threads_per_worker": self.threads,
                "mode": "in-process" if self.workers == 1 else "process pool"}


def import_ray():
    """``ray``, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise EngineError("--engine ray needs Ray, which is not installed; install it with "
                          "pip install 'onnx-alds[ray]' (or run with --engine local)") from None
    return ray


class _RayWorker:
    """A Ray actor (wrapped with ``ray.remote`` by :class:`RayEngine`): one WorkerState per actor."""

    def __init__(self, threads: int) -> None:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        threads = max(1, int(cpus)) if cpus else threads  # ONNX Runtime threads = the CPUs Ray gave this actor
        _cap_default_session_threads(threads)
        self.state = WorkerState(threads=threads)

    def threads(self) -> int:
        return int(self.state.threads or 1)

    def ready(self) -> int:
        _pool_ready()
        return os.getpid()

    def run(self, task: VariantTask, data_ref: list) -> VariantOutcome:
        import ray

        data = self.state.data(task.model.name, lambda: ray.get(data_ref[0]))
        return run_variant(task, data, self.state)


ACTOR_START_SECONDS = 300  # Ray workers that have not started by then will not (too few CPUs in the cluster)


def _check_reachable(address: Optional[str]) -> None:
    """Refuse a ``--address host:port`` nothing listens on, or where something that is not Ray does:
    ``ray.init`` retries such an address forever."""
    from .calibrate import unreachable_ray

    reason = unreachable_ray(address)
    if reason and reason.startswith("it accepts"):
        raise EngineError(f"cannot reach Ray at {address}: {reason}; give the cluster's GCS address (host:6379 by "
                          "default) or its Ray Client address (ray://host:10001) with --address (or run with "
                          "--engine local)")
    if reason:
        raise EngineError(f"cannot reach Ray at {address} ({reason}); check --address (or run with --engine local)")


class RayEngine(Engine):
    """Ray actors, ``cpus_per_worker`` CPUs each (their ONNX Runtime thread count), ``workers`` of them
    (default: the cluster's CPUs divided by ``cpus_per_worker``). Joins the Ray instance the process
    already has, else ``ray.init(address)`` (``None``: ``RAY_ADDRESS`` or a new local instance), and
    shuts down only an instance it started."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None, cpus_per_worker: int = 1) -> None:
        self.ray = import_ray()
        self.address = address
        self.requested_workers = workers
        self.cpus_per_worker = max(1, int(cpus_per_worker))
        self.workers = workers or 0
        self._started_ray = False
        self._actors: list = []
        self._refs: dict[str, Any] = {}
        self._actor_class = None
        self._threads: list[int] = []

    def start(self, data: Mapping[str, ModelData]) -> None:
        from .calibrate import init_ray

        ray = self.ray
        if not ray.is_initialized():
            options: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False)
            if not (self.address or os.environ.get("RAY_ADDRESS")):
                options["include_dashboard"] = False  # a new local instance: no dashboard
            if (self.address or "").startswith("ray://") and importlib.util.find_spec("grpc") is None:
                raise EngineError(f"--address {self.address} is a Ray Client address, which needs "
                                  "pip install 'ray[client]' (the [ray] extra installs plain ray); install it, or "
                                  "give the cluster's GCS address (host:6379 by default)")
            _check_reachable(self.address)
            try:
                init_ray(ray, self.address, **options)
            except Exception as exc:
                flag = "--address" if self.address or not os.environ.get("RAY_ADDRESS") else "RAY_ADDRESS"
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                # a cluster started with token authentication refuses a client without it: Ray says only
                # "Failed to connect" (the cause is in its log)
                token = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token (and its token) "
                         "here too" if "connect" in text.lower() and not os.environ.get("RAY_AUTH_MODE") else "")
                raise EngineError(f"cannot start or reach Ray{' at ' + self.address if self.address else ''}: "
                                  f"{text}; check {flag}{token} (or run with --engine local)") from None
            self._started_ray = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if self.cpus_per_worker > cpus:
            raise EngineError(f"--cpus-per-worker {self.cpus_per_worker} is more than the Ray cluster's {cpus} CPUs, so "
                              f"no worker could start; give at most {cpus}")
        if not self.requested_workers:
            self.workers = max(1, cpus // self.cpus_per_worker)
        elif self.workers * self.cpus_per_worker > cpus:
            raise EngineError(f"--workers {self.workers} with --cpus-per-worker {self.cpus_per_worker} needs "
                              f"{self.workers * self.cpus_per_worker} CPUs, the Ray cluster has {cpus}; give at most "
                              f"{max(1, cpus // self.cpus_per_worker)} workers (or leave --workers out)")
        self._refs = {name: ray.put(value) for name, value in data.items()}
        self._actor_class = ray.remote(_RayWorker)
        self._actors = [self._new_actor() for _ in range(self.workers)]
        try:
            ray.get([actor.ready.remote() for actor in self._actors], timeout=ACTOR_START_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise EngineError(f"the {self.workers} Ray workers did not start within {ACTOR_START_SECONDS} s (the "
                              "cluster may not have the CPUs they ask for); give fewer --workers or run with "
                              "--engine local") from None
        self._threads = sorted(set(ray.get([actor.threads.remote() for actor in self._actors])))

    def _new_actor(self):
        return self._actor_class.options(num_cpus=self.cpus_per_worker).remote(self.cpus_per_worker)

    def run(self, tasks: Sequence[VariantTask]) -> Iterator[tuple[VariantTask, VariantOutcome]]:
        ray = self.ray
        from ray.exceptions import RayActorError, RayTaskError

        pending = deque(tasks)
        idle = list(self._actors)
        inflight: dict[Any, tuple[VariantTask, Any]] = {}
        while pending or inflight:
            while idle and pending:
                actor, task = idle.pop(), pending.popleft()
                inflight[actor.run.remote(task, [self._refs[task.model.name]])] = (task, actor)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                task, actor = inflight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayActorError as exc:  # the actor died (out of memory, killed): replace it
                    outcome = VariantOutcome(dict(base_row(task), status="crashed",
                                                  error=f"Ray actor died: {str(exc).splitlines()[0]}"), crashed=True)
                    self._actors.remove(actor)
                    actor = self._new_actor()
                    self._actors.append(actor)
                except RayTaskError as exc:
                    outcome = VariantOutcome(dict(base_row(task), status="crashed",
                                                  error=f"Ray task failed: {str(exc).splitlines()[0]}"), crashed=True)
                idle.append(actor)
                yield task, outcome

    def close(self) -> None:
        ray = self.ray
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self._refs = {}
        if self._started_ray and ray.is_initialized():
            from .calibrate import shutdown_ray

            shutdown_ray(ray)
            self._started_ray = False

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "workers": self.workers, "cpus_per_worker": self.cpus_per_worker,
                "threads_per_worker": self._threads[0] if len(self._threads) == 1 else self._threads,
                "address": self.address or "local or RAY_ADDRESS",
                "ray": getattr(self.ray, "__version__", "?")}


def make_engine(name: str, *, workers: Optional[int] = None, address: Optional[str] = None,
                threads: Optional[int] = None, cpus_per_worker: int = 1) -> Engine:
    if name == "local":
        if address:
            raise EngineError("--address is for --engine ray; drop it or add --engine ray")
        return LocalEngine(workers or 1, threads)
    if name == "ray":
        return RayEngine(address, workers, cpus_per_worker)
    raise EngineError(f"unknown engine '{name}'; choose local or ray")


# ------------------------------------------------------------------------------------------------
# The driver


class _Hashes:
    """Content hashes of files, computed once per run."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def file(self, path: Union[str, os.PathLike]) -> str:
        key = str(Path(path).resolve())
        if key not in self._cache:
            self._cache[key] = file_sha256(key)
        return self._cache[key]

    def external_data(self, model_path: Union[str, os.PathLike]) -> list[list[str]]:
        """``[location, sha256]`` of every external data file the model names (its weights live there:
        a changed ``.data`` file with the same ``.onnx`` is another model); missing files are left to the load."""
        from .model_io import _external_locations

        path = Path(model_path).resolve()
        stat = path.stat()
        return [[location, self.file(path.parent / location)]
                for location in _external_locations(str(path), stat.st_mtime_ns, stat.st_size)
                if (path.parent / location).is_file()]


def check_model_unchanged(model: SweepModel, hashes: _Hashes) -> None:
    """The model file (and its external data) still holds what ``hashes`` read at the start of the run: a
    file replaced while the sweep ran would be timed as the original of variants made from the old one.
    Raises ModelLoadError saying so."""
    from .errors import ModelLoadError

    fresh = _Hashes()
    try:
        same = (fresh.file(model.path) == hashes.file(model.path)
                and fresh.external_data(model.path) == hashes.external_data(model.path))
    except OSError:
        same = False
    if not same:
        raise ModelLoadError(f"model file '{model.path}' changed while the sweep ran: its variants were made from "
                             "the earlier contents and are not timed against the new one; run the sweep again (it "
                             "recomputes the variants of the file as it is then)")


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(model: SweepModel, method: MethodSpec, variant: Variant, hashes: _Hashes) -> str:
    """Everything a variant's row depends on, hashed: the resume check compares it."""
    from . import __version__

    what = dict(_measured_against(model, hashes), version=__version__, blas_threads=BLAS_THREADS,
                variant=[variant.method, variant.target, variant.keep, variant.rank_multiple, variant.seed],
                options=sorted((k, str(v)) for k, v in method.options.items()), data=method.data,
                speed_check=[method.speed_check, model.bench_batches[0]] if method.speed_check else None,
                calibration=model.calibration.identity(hashes) if method.data and model.calibration else None)
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def data_identity(model: SweepModel, hashes: _Hashes) -> str:
    """12 hex digits naming what a row's quality figures are measured against (:func:`_measured_against`).
    Rows of one model with another identity were measured on other data or another model file, and do not
    share a plot."""
    what = _measured_against(model, hashes)
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def calibration_identity(model: SweepModel, hashes: _Hashes) -> Optional[str]:
    """12 hex digits naming a model's calibration set by content (None without one): the data-aware rows of
    one model fitted to other calibration data do not share a plot either."""
    if model.calibration is None:
        return None
    what = model.calibration.identity(hashes)
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _measured_against(model: SweepModel, hashes: _Hashes) -> dict[str, Any]:
    """The model file (with its external data files, when it has any: a one-file model keeps the
    fingerprint it had), the validation sets, the input shapes and the quality metric, by content."""
    if not Path(model.path).exists():
        from .errors import ModelLoadError

        raise ModelLoadError(f"model file '{model.path}' does not exist; check the path")
    what = dict(model=hashes.file(model.path), evals=[[e.label, e.kind, e.source.identity(hashes)] for e in model.evals],
                input_shapes={k: list(v) for k, v in (model.input_shapes or {}).items()},
                quality_metric=model.quality_metric)
    external = hashes.external_data(model.path)
    if external:
        what["model_data"] = external
    return what


def _whole_batches(model: onnx.ModelProto, inputs, notes: Optional[list[str]] = None):
    """``inputs`` cut to whole batches of the batch the model fixes (as ``validate`` runs them); ``notes``
    gets a line saying how many samples were left out."""
    from .validate import effective_batch_size

    usable = effective_batch_size(model, VALIDATION_BATCH, len(inputs))[1]
    if usable < len(inputs) and notes is not None:
        notes.append(f"the model fixes its batch: validated on {usable} of the {len(inputs)} samples of "
                     f"{inputs.source} (the rest do not fill a batch)")
    return inputs.head(usable) if usable < len(inputs) else inputs


def _check_labels_fit(proto: onnx.ModelProto, inputs, name: str) -> None:
    """Labels must be class ids of the model's first output (the one a sweep evaluates) where the graph
    declares its class count: checked once here, before any variant is computed (each would fail)."""
    from .validate import _declared_output, check_label_range

    labels = getattr(inputs, "labels", None)
    if labels is None or not proto.graph.output:
        return
    rank, floating, classes = _declared_output(proto.graph.output[0])
    if rank == 2 and floating and classes is not None and classes >= 2:
        try:
            check_label_range(labels, proto.graph.output[0].name, classes)
        except InputDataError as exc:
            raise InputDataError(f"{inputs.source}, for model '{name}': {exc}") from None


def load_model_data(model: SweepModel, need_calibration: bool) -> ModelData:
    from .model_io import load_model, refuse_over_protobuf_limit

    refuse_over_protobuf_limit(model.path, "a sweep ships each model to its workers as one serialized copy")
    proto = load_model(model.path)
    calibration = model.calibration.load(proto) if need_calibration and model.calibration else None
    notes: list[str] = []
    loaded = [(spec, spec.source.load(proto)) for spec in model.evals]
    for spec, inputs in loaded:
        if spec.source.limit is not None and spec.source.limit > len(inputs):
            notes.append(f"--limit {spec.source.limit} is more than the {len(inputs)} samples of the held-out data: "
                         "validated on all of them")  # (rows hold no paths outside the sweep's folder)
    evals = tuple((spec, _whole_batches(proto, inputs, notes)) for spec, inputs in loaded)
    if not evals:
        raise InputDataError(f"model '{model.name}' has no held-out data to validate on; give --inputs, --images "
                             "or --random")
    for _, inputs in evals:
        _check_labels_fit(proto, inputs, model.name)
        _check_held_out(inputs, calibration, model.name, proto)
    return ModelData(model.name, proto.SerializeToString(), calibration, evals, tuple(notes))


def _load_naming_model(model: SweepModel, need_calibration: bool, several: bool) -> ModelData:
    """:func:`load_model_data`; with ``several`` models, an input or calibration error that does not name its
    model gets the model's path in front."""
    try:
        return load_model_data(model, need_calibration)
    except InputDataError as exc:
        text = Exception.__str__(exc)
        if several and str(model.path) not in text and f"'{model.name}'" not in text:
            exc.args = (f"model '{model.path}': {text}",) + exc.args[1:]
        raise


def _check_held_out(inputs, calibration, name: str, proto: onnx.ModelProto) -> None:
    """The validation data must not hold calibration samples the variants are fitted to (those used: whole
    batches of a model that fixes its batch), nor samples an earlier run fitted the model itself to (its
    metadata's sample digests), or they score in-sample, as if on held-out data: raises InputDataError
    saying how many it holds."""
    from .data_aware import sample_count
    from .plan import calibration_overlap, sample_digests

    earlier = calibration_overlap(proto, inputs)  # a model compressed (or distilled) before, on these samples
    if earlier is not None and earlier[0]:
        raise InputDataError(f"the held-out data of model '{name}' ({inputs.source}) holds {earlier[0]} of its "
                             f"{earlier[1]} samples that the model itself was calibrated or trained on (an earlier "
                             "onnx-alds run, in its metadata): every variant would score in-sample on them; give "
                             "validation data that run did not use")
    if calibration is None:
        return
    calibrated = set(sample_digests(calibration, sample_count(calibration, proto)))
    shared = sum(digest in calibrated for digest in sample_digests(inputs))
    if shared:
        raise InputDataError(f"the held-out data of model '{name}' ({inputs.source}) holds {shared} of its "
                             f"{len(inputs)} samples from the calibration set ({calibration.source}): variants "
                             "fitted to them would score in-sample; give validation data the calibration does not "
                             "hold (--inputs/--images other than --calibration/--calibration-images)")


TIMING_FIELDS = ("compress_s", "compress_seconds_by_step", "validate_s", "bench_load", "bench_threads")
_TIMING_PREFIXES = ("batch_", "ms_", "spread_", "runs_", "speedup_", "efficiency_")


def is_timing_field(key: str) -> bool:
    return key in TIMING_FIELDS or key.startswith(_TIMING_PREFIXES)


def without_timings(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row without the fields that are measured times (these differ from run to run)."""
    return {k: v for k, v in row.items() if not is_timing_field(k)}


CSV_COLUMNS = (
    "variant_id", "model", "method", "data_aware", "target", "keep", "rank_multiple", "seed", "status",
    "achieved_keep",
    "params_kept", "macs_kept", "layers_factorized", "layers_total", "max_error",
    "quality_metric", "quality", "quality_original",
    "accuracy", "accuracy_original", "accuracy_drop", "agreement", "agreement_top5",
    "cos_mean", "cos_min", "nn_top1", "nn_top10", "spearman", "rel_error_mean",
    "ideal_speedup", "onnx_sha256", "compress_s", "validate_s",
    "batch_small", "ms_original_small", "ms_small", "spread_original_small", "spread_small", "speedup_small",
    "efficiency_small",
    "batch_large", "ms_original_large", "ms_large", "spread_original_large", "spread_large", "speedup_large",
    "efficiency_large",
    "bench_load", "data_id", "calibration_id", "error",
)


def _check_not_folder(path: Path) -> None:
    if path.is_dir():
        raise OutputPathError(f"'{path}' is a folder where the sweep keeps a file; remove it and run again")


def _json_dump(data: Any, path: Path) -> None:
    from .report import json_safe

    _write_bytes((json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n").encode(), path)


def _write_bytes(data: bytes, path: Path) -> None:
    from .model_io import write_file_atomically

    _check_not_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, data)


def _save_figure(fig, path: Path) -> None:
    """``fig`` as a PNG at ``path``, all or nothing."""
    import io

    from .model_io import write_file_atomically

    image = io.BytesIO()
    fig.savefig(image, dpi=80, format="png")
    write_file_atomically(path, image.getvalue())


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str] = CSV_COLUMNS) -> None:
    """The rows as CSV, written all or nothing (an interrupt left a header and one row)."""
    import io

    from .model_io import write_file_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()
                         if k in columns and v is not None})
    write_file_atomically(path, text.getvalue().encode("utf-8"))


class RowStore:
    """``DIR/rows/<id>.json`` (the fingerprint and the row) and ``DIR/models/<id>.onnx``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows_dir = out / ROWS_DIR
        self.models_dir = out / MODELS_DIR

    def path(self, variant_id: str) -> Path:
        return self.rows_dir / f"{variant_id}.json"

    def model_path(self, variant_id: str) -> Path:
        return self.models_dir / f"{variant_id}.onnx"

    def load(self, variant_id: str) -> Optional[dict[str, Any]]:
        return _read_entry(self.path(variant_id))

    def check_layout(self, variant_ids: Sequence[str], models: Sequence[str] = ()) -> None:
        """Before anything is computed: the folders it keeps are folders (or absent) and the files it will
        write for ``variant_ids`` (and the plots of ``models``) are not folders, and sweep.json, sweep.csv and
        the plots are absent or the sweep's own (not a user's file at their names). Raises OutputPathError
        naming the path."""
        from .model_io import refuse_foreign_file

        for folder in (self.rows_dir, self.models_dir):
            if folder.exists() and not folder.is_dir():
                raise OutputPathError(f"'{folder}' is a file where the sweep keeps a folder; move it away and run "
                                      "again")
        kinds = {"sweep.json": "onnx-alds report", "sweep.csv": "onnx-alds CSV table"}
        kinds.update({f"{model}-{kind}.png": "onnx-alds plot" for model in models for kind in ("quality", "speedup")})
        for name, kind in kinds.items():  # (a user's script or data at one of these names is not overwritten)
            _check_not_folder(self.out / name)
            refuse_foreign_file(self.out / name, kind, flag="the sweep's file", command="sweep",
                                csv_header=",".join(CSV_COLUMNS),
                                fix="give another output folder (or move the file away)")
        for variant_id in variant_ids:
            for path in (self.path(variant_id), self.model_path(variant_id),
                         self.models_dir / f"{variant_id}.report.json"):
                _check_not_folder(path)

    def done(self, task: VariantTask) -> Optional[dict[str, Any]]:
        """The stored row of a finished variant with this fingerprint, else None."""
        entry = self.load(task.variant.id)
        if not entry or entry.get("fingerprint") != task.fingerprint:
            return None
        row = entry["row"]
        if row.get("status") == "ok" and not (self._model_intact(task.variant.id, row.get("onnx_sha256"))
                                              and (self.models_dir / f"{task.variant.id}.report.json").is_file()):
            return None  # the model or its report gone or changed: compressed again
        return row

    def _model_intact(self, variant_id: str, sha256: Optional[str]) -> bool:
        """The stored model file exists and is the one the row measured (its SHA-256, when recorded):
        a model replaced or edited since is compressed and measured again."""
        path = self.model_path(variant_id)
        if not path.is_file():
            return False
        return not sha256 or file_sha256(path) == sha256

    def save(self, task: VariantTask, outcome: VariantOutcome) -> None:
        """Write the variant's model, report and row; a row that is now an error removes the model and report an
        earlier run wrote for it (before the row: an interrupt in between leaves an ok row without its model,
        which is computed again)."""
        variant_id = task.variant.id
        if outcome.model_bytes is None and outcome.row.get("status") != "ok":
            for path in (self.model_path(variant_id), self.models_dir / f"{variant_id}.report.json"):
                path.unlink(missing_ok=True)
        if outcome.model_bytes is not None:
            _write_bytes(outcome.model_bytes, self.model_path(variant_id))
        if outcome.report is not None:
            _json_dump(outcome.report, self.models_dir / f"{variant_id}.report.json")
        self.update(variant_id, task.fingerprint, outcome.row)

    def update(self, variant_id: str, fingerprint_: str, row: Mapping[str, Any]) -> None:
        _json_dump({"fingerprint": fingerprint_, "row": dict(row)}, self.path(variant_id))

    def all_rows(self) -> list[dict[str, Any]]:
        return [entry["row"] for entry in map(_read_entry, sorted(self.rows_dir.glob("*.json"))) if entry]


ROW_KEYS = ("model", "method", "rank_multiple", "keep")  # what every stored row holds (row_sort_key reads them)


def _read_entry(path: Path) -> Optional[dict[str, Any]]:
    """A stored row file, ``{"fingerprint": ..., "row": {...}}``, or None when it is missing or is not
    one (truncated, not UTF-8, another JSON value, a folder): that variant is computed again."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # (a folder, unreadable, not UTF-8, not JSON, nested too deep)
        return None
    row = entry.get("row") if isinstance(entry, dict) else None
    return entry if isinstance(row, dict) and all(key in row for key in ROW_KEYS) else None


def row_sort_key(row: Mapping[str, Any]) -> tuple:
    return (row["model"], row.get("target", "flops"), row["method"], row["rank_multiple"], row["keep"],
            row.get("seed", 0))


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the rows of this grid, what it skipped, how long each phase took."""

    rows: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    computed: int
    reused: int
    crashed: list[dict[str, Any]]
    timed: bool
    run: dict[str, Any] = field(default_factory=dict)


def bench_settings(target_s: float) -> dict[str, float]:
    """Per timed group (original + variants of one budget, one batch size): target seconds and limits."""
    quick = target_s < 2
    return dict(target_s=target_s, min_runs=3 if quick else 5, max_runs=200, warmup=1 if quick else 2)


def load_average() -> Optional[float]:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def bench_rows(model: SweepModel, rows: list[dict[str, Any]], out: Path, *, threads: int, target_s: float,
               rebench: bool = False, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time the variants in ``rows`` (one model) against the original, one interleaved run per budget and
    batch size (onnx_alds.bench); a budget whose variants all have timings at these batch sizes is left
    as it is unless ``rebench``. Returns the rows it timed."""
    from .bench import bench

    settings = bench_settings(target_s)
    slots = list(zip(("small", "large"), model.bench_batches[:2]))
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok" and (out / row["model_file"]).exists():
            groups.setdefault((row["target"], float(row["keep"])), []).append(row)
    timed = []
    for (target, keep), group in sorted(groups.items()):
        current = all(row.get(f"batch_{slot}") == batch and row.get(f"ms_{slot}") is not None
                      for row in group for slot, batch in slots)
        if current and not rebench:
            continue
        models = [model.path] + [str(out / row["model_file"]) for row in group]
        labels = [f"{row['method']}/m{row['rank_multiple']}" for row in group]
        if len(set(labels)) < len(labels):  # several seeds of one method: told apart by the seed
            labels = [f"{label}/s{row.get('seed')}" for label, row in zip(labels, group)]
        if len(set(labels)) < len(labels):
            labels = [str(row.get("id", index)) for index, row in enumerate(group)]
        names = ["original"] + labels
        stale = {f"{prefix}{slot}" for prefix in _TIMING_PREFIXES + ("ms_original_", "spread_original_")
                 for slot in ("small", "large")
                 if slot not in dict(slots)}
        for row in group:  # an earlier run's timing at a batch this run does not time would sit beside this one's
            for key in stale:
                row.pop(key, None)
        for slot, batch in slots:
            probe = bench([model.path], provider="cpu", batch_sizes=(batch,), threads=threads, warmup=1, runs=1,
                          min_time_s=0.0, input_shapes=model.input_shapes)
            per_run = probe.timing(0, batch).median_ms / 1e3
            runs = int(min(settings["max_runs"], max(settings["min_runs"],
                                                     settings["target_s"] / max(per_run * len(models), 1e-6))))
            before = load_average()
            report = bench(models, provider="cpu", batch_sizes=(batch,), threads=threads,
                           warmup=int(settings["warmup"]), runs=runs, min_time_s=0.0,
                           input_shapes=model.input_shapes, names=names)
            after = load_average()
            original_ms, original_spread = report.timing(0, batch).median_ms, report.timing(0, batch).measured_spread
            loads = [x for x in (before, after) if x is not None]
            for index, row in enumerate(group, start=1):
                timing = report.timing(index, batch)
                ideal = row.get("ideal_speedup")
                row.update({f"batch_{slot}": batch, f"ms_original_{slot}": original_ms, f"ms_{slot}": timing.median_ms,
                            f"spread_original_{slot}": original_spread,
                            f"spread_{slot}": timing.measured_spread, f"runs_{slot}": timing.runs,
                            f"speedup_{slot}": timing.speedup,
                            f"efficiency_{slot}": timing.speedup / ideal if ideal else None,
                            "bench_load": max(loads) if loads else None, "bench_threads": threads})
            say(f"  timed {model.name} keep-{target} {keep:g} batch {batch}: original {original_ms:.2f} ms, "
                f"{runs} runs, load {_fmt(before, 1)}->{_fmt(after, 1)}: "
                + ", ".join(f"{n} {report.timing(i, batch).speedup:.2f}x" for i, n in enumerate(names[1:], start=1)))
        timed += group
    return timed


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _variant_line(row: Mapping[str, Any], seeds: bool = False) -> str:
    """A variant's progress line; ``seeds``: the sweep has several, and the line names the row's."""
    head = f"  {row['model']:<18} {row['method']:<14} keep {row['keep']:<4g} m{row['rank_multiple']:<3}" + (
        f" seed {row.get('seed', 0)}" if seeds else "")
    if row.get("status") != "ok":
        return f"{head} {row.get('status')}: {row.get('error')}"
    return (f"{head} achieved {row['achieved_keep']:.3f}  {row.get('quality_metric')} {_fmt(row.get('quality'))}  "
            f"({row.get('compress_s', 0):.1f} s)")


def environment() -> dict[str, Any]:
    import scipy

    from . import __version__
    from .bench import machine_info

    versions = {"onnx_alds": __version__, "onnx": onnx.__version__, "numpy": np.__version__,
                "scipy": scipy.__version__, "python": platform.python_version()}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return dict(machine=machine_info(), versions=versions)


def _checked_grid(target: str, methods: Sequence[str], keeps: Sequence[float], rank_multiples: Sequence[int],
                  seeds: Sequence[int]) -> tuple[list[str], list[float], list[int], list[int]]:
    """The grid's values as lists, each checked before any work as the command line checks its flags: a
    list (not one value or a string) of at least one entry; budgets fractions in (0, 1] (numpy's floats
    too), rank multiples integers ≥ 1, seeds integers in [0, 2**32). Raises :class:`InputDataError` or
    :class:`BudgetError` naming the argument."""
    lists = []
    for name, given, example in (("methods", methods, "'alds'"), ("keeps", keeps, "0.5"),
                                 ("rank_multiples", rank_multiples, "1"), ("seeds", seeds, "0")):
        if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
            raise InputDataError(f"{name}={given!r}: give a list of values, e.g. {name}=[{example}]")
        listed = list(given)
        if not listed:
            raise InputDataError(f"{name} is empty; give at least one value, e.g. {name}=[{example}]")
        lists.append(listed)
    methods, keeps, rank_multiples, seeds = lists
    for method in methods:
        if not isinstance(method, str):
            raise InputDataError(f"methods: {method!r} is not a method name; give names such as 'alds' or 'svd'")
    for keep in keeps:
        if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or not (
                math.isfinite(keep) and 0.0 < keep <= 1.0):
            raise BudgetError(f"--keep-{target} {keep!r} is out of range; give fractions to keep in (0, 1], e.g. 0.5")
    named: dict[str, float] = {}  # a variant's id holds its keep as {:g}: two keeps written alike are one variant
    for keep in dict.fromkeys(float(keep) for keep in keeps):
        if f"{keep:g}" in named:
            raise BudgetError(f"--keep-{target} {named[f'{keep:g}']!r} and {keep!r} name the same variant "
                              f"({target}{keep:g}); give budgets that differ in their first 6 digits")
        named[f"{keep:g}"] = keep
    for index, rank_multiple in enumerate(rank_multiples):
        check_count(f"rank_multiples[{index}]", rank_multiple)
    for index, seed in enumerate(seeds):
        check_seed(f"seeds[{index}]", seed)
    return methods, [float(keep) for keep in keeps], [int(m) for m in rank_multiples], [int(s) for s in seeds]


def run_sweep(models: Sequence[SweepModel], methods: Sequence[str], keeps: Sequence[float], *, out: Union[str, Path],
              target: str = "flops", rank_multiples: Sequence[int] = (1,), seeds: Sequence[int] = (0,),
              engine: Optional[Engine] = None, bench: bool = True, rebench: bool = False,
              bench_threads: Optional[int] = None, bench_target_s: float = 5.0, plots: bool = True,
              progress: Optional[bool] = None, command: str = "", say: Optional[Callable[[str], None]] = None
              ) -> SweepResult:
    """Compress, validate and (unless ``bench=False``) time every variant of the grid; resumable.

    Writes ``out/rows``, ``out/models``, ``out/sweep.json``, ``out/sweep.csv`` and the plots; returns the
    rows of this grid (with the stored rows of variants done before). ``engine`` defaults to the local
    in-process engine; it is started only when something is left to compute and closed before timing.
    One sweep at a time writes in ``out`` (:func:`onnx_alds.model_io.folder_lock`): a second one started
    there meanwhile is an :class:`OutputPathError` (two mixed a variant's model with another's row).
    """
    from .model_io import first_missing_folder, folder_lock, remove_if_no_files

    out = Path(out)
    created = first_missing_folder(out)
    with contextlib.suppress(OSError):  # (a path that cannot be a folder: the layout check says why)
        out.mkdir(parents=True, exist_ok=True)
    busy = (f"another onnx-alds sweep is writing in '{out}' (a process holds a lock on the folder); wait for it to "
            "finish, or give another -o")
    lock = folder_lock(out, busy=busy) if out.is_dir() else contextlib.nullcontext()  # (none: _run_sweep says why)
    with lock:
        try:
            return _run_sweep(models, methods, keeps, out=out, target=target, rank_multiples=rank_multiples,
                              seeds=seeds, engine=engine, bench=bench, rebench=rebench, bench_threads=bench_threads,
                              bench_target_s=bench_target_s, plots=plots, progress=progress, command=command,
                              say=say)
        except BaseException:  # (under the lock: a sweep refused it removes nothing, the one holding it may)
            remove_if_no_files(created)  # the folders made for the lock, where nothing was written
            raise


def _run_sweep(models: Sequence[SweepModel], methods: Sequence[str], keeps: Sequence[float], *, out: Path,
               target: str, rank_multiples: Sequence[int], seeds: Sequence[int], engine: Optional[Engine],
               bench: bool, rebench: bool, bench_threads: Optional[int], bench_target_s: float, plots: bool,
               progress: Optional[bool], command: str, say: Optional[Callable[[str], None]]) -> SweepResult:
    """:func:`run_sweep`'s work, under its lock of ``out``."""
    from tqdm import tqdm

    from .bench import physical_cores

    out = Path(out)
    started = time.time()
    load_start = load_average()
    show = sys.stderr.isatty() if progress is None else progress
    bar: Optional[Any] = None

    def emit(text: str) -> None:
        if say is not None:
            say(text)
        elif bar is not None and show:
            bar.write(text)
        else:
            print(text, flush=True)

    if target not in ("flops", "params"):
        raise BudgetError(f"unknown target '{target}'; choose flops or params")
    methods, keeps, rank_multiples, seeds = _checked_grid(target, methods, keeps, rank_multiples, seeds)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InputDataError(f"two models of the sweep have the same name ({', '.join(names)}); name them apart")
    specs = {name: parse_method(name) for name in methods}
    # a value given twice is one variant (two copies would write the same files at once)
    methods, keeps = list(dict.fromkeys(methods)), list(dict.fromkeys(float(keep) for keep in keeps))
    rank_multiples, seeds = list(dict.fromkeys(rank_multiples)), list(dict.fromkeys(seeds))
    hashes = _Hashes()
    store = RowStore(out)
    tasks: list[VariantTask] = []
    skipped: list[dict[str, Any]] = []
    current = {model.name: data_identity(model, hashes) for model in models}
    calibrations = {model.name: calibration_identity(model, hashes) for model in models}
    seedless: set[tuple[str, str]] = set()
    for model in models:
        for method in methods:
            spec = specs[method]
            if spec.data and (not model.data_aware or model.calibration is None):
                reason = model.skip_note or ("no calibration data for this model (give --calibration FILE.npz, "
                                             "--calibration-images DIR or --calibration-random N)")
                skipped.append({"model": model.name, "method": method, "reason": reason})
                continue
            seeded = seed_takes_effect(spec.options.get("method", "alds"), spec.options.get("prune", "off"))
            if not seeded and seeds != [0] and (model.name, method) not in seedless:
                seedless.add((model.name, method))
                emit(f"  {model.name} / {method}: the seed has no effect (only ALDS's group search has random "
                     "starts): one variant per budget, seed 0")
            for rank_multiple in rank_multiples:
                for keep in keeps:
                    for seed in (seeds if seeded else [0]):
                        variant = Variant(model.name, method, target, float(keep), int(rank_multiple), int(seed))
                        tasks.append(VariantTask(variant, spec, model, fingerprint(model, spec, variant, hashes),
                                                 current[model.name],
                                                 calibrations[model.name] if spec.data else None))
    if not tasks:  # every combination skipped: refused before anything is written
        if not skipped:
            raise InputDataError("the sweep has no variant to run: no model to compress (check the model paths and "
                                 "the messages above)")
        raise InputDataError(f"the sweep has no variant to run ({len(skipped)} combination"
                             f"{'s' if len(skipped) != 1 else ''} skipped: "
                             f"{skipped[0]['reason']})")
    out.mkdir(parents=True, exist_ok=True)
    for entry in skipped:
        emit(f"  skip {entry['model']} / {entry['method']}: {entry['reason']}")
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        row = store.done(task)
        if row is not None:
            if row.get("data_id") != task.data_id or row.get("calibration_id") != task.calibration_id:
                row["data_id"] = task.data_id  # stored before rows named their data: the fingerprint matched
                row["calibration_id"] = task.calibration_id
                store.update(task.variant.id, task.fingerprint, row)
            results[task.variant.id] = row
        else:
            todo.append(task)
    store.check_layout([task.variant.id for task in todo], [model.name for model in models] if plots else [])
    reused = len(tasks) - len(todo)
    parallel = [t for t in todo if not t.method.speed_check]
    serial = [t for t in todo if t.method.speed_check]
    engine = engine or LocalEngine()
    phases: dict[str, float] = {}
    crashed: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    phase_start = time.time()
    skipped_text = f", {len(skipped)} combination{'s' if len(skipped) != 1 else ''} skipped" if skipped else ""
    emit(f"sweep: {len(tasks)} variant{'s' if len(tasks) != 1 else ''} ({reused} done before, {len(todo)} to "
         f"compute) on engine {engine.name}{skipped_text}")
    bar = tqdm(total=len(tasks), initial=reused, desc="sweep", unit="variant", disable=not show, leave=False)

    def record(task: VariantTask, outcome: VariantOutcome) -> None:
        if outcome.started:
            timeline.append(dict(variant=task.variant.id, worker=outcome.worker,
                                 start_s=round(outcome.started - phase_start, 3), seconds=round(outcome.seconds, 3),
                                 cpu_s=round(outcome.cpu_seconds, 3)))
        if outcome.crashed:
            crashed.append(outcome.row)
        else:
            outcome.row["data_id"] = task.data_id
            outcome.row["calibration_id"] = task.calibration_id
            store.save(task, outcome)
        results[task.variant.id] = outcome.row
        emit(_variant_line(outcome.row, seeds=len(seeds) > 1))
        bar.update(1)

    try:
        if todo:
            needed = {t.model.name for t in todo}
            tick = time.perf_counter()
            data = {m.name: _load_naming_model(m, any(t.method.data for t in todo if t.model.name == m.name),
                                               len(models) > 1)
                    for m in models if m.name in needed}
            for m in models:
                if m.name in needed:  # loaded as hashed: the rows name these contents (data_id, fingerprint)
                    check_model_unchanged(m, hashes)
            phases["load_s"] = time.perf_counter() - tick
            if parallel:
                tick = time.perf_counter()
                try:
                    engine.start(data)
                    phases["engine_start_s"] = time.perf_counter() - tick
                    tick, phase_start = time.perf_counter(), time.time()
                    for task, outcome in engine.run(parallel):
                        record(task, outcome)
                    phases["tasks_s"] = time.perf_counter() - tick
                finally:
                    engine.close()
            if serial:  # speed-checked variants time layers while compressing: on the driver, one at a time
                tick = time.perf_counter()
                state = WorkerState(threads=bench_threads or physical_cores())
                for task in serial:
                    record(task, run_variant(task, data[task.model.name], state))
                phases["serial_tasks_s"] = time.perf_counter() - tick
    finally:
        bar.close()
    phases["task_busy_s"] = sum(entry["seconds"] for entry in timeline)
    phases["task_cpu_s"] = sum(entry["cpu_s"] for entry in timeline)
    rows = sorted((results[t.variant.id] for t in tasks), key=row_sort_key)
    ok_rows = [r for r in rows if r.get("status") == "ok"]
    host = socket.gethostname()
    if bench and ok_rows:
        tick = time.perf_counter()
        threads = bench_threads or physical_cores()
        by_id = {t.variant.id: t for t in tasks}
        for model in models:
            check_model_unchanged(model, hashes)
            timed = bench_rows(model, [r for r in ok_rows if r["model"] == model.name], out, threads=threads,
                               target_s=bench_target_s, rebench=rebench, say=emit)
            for row in timed:
                store.update(row["variant_id"], by_id[row["variant_id"]].fingerprint, row)
        phases["bench_s"] = time.perf_counter() - tick
        timing_note = (f"serial on the driver ({host}, {threads} threads) after every task had ended: one interleaved "
                       "run per model, budget and batch size")
    elif bench:
        timing_note = "nothing to time (no variant compressed)"
    else:
        timing_note = "not timed (--no-bench); timings of earlier runs, if any, are kept in their rows"
    emit(f"timing: {timing_note}")
    run = dict(command=command, started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
               seconds=time.time() - started, load_start=load_start, load_end=load_average(),
               engine=engine.describe(), variants=len(tasks), computed=len(todo) - len(crashed), reused=reused,
               crashed=len(crashed), phases=phases, timing=timing_note, bench=bool(bench), timeline=timeline)
    write_record(out, store, skipped, run, plots=plots, say=emit, current=current, calibrations=calibrations)
    return SweepResult(rows=rows, skipped=skipped, computed=len(todo) - len(crashed), reused=reused, crashed=crashed,
                       timed=bool(bench and ok_rows), run=run)


def write_record(out: Path, store: RowStore, skipped: list[dict[str, Any]], run: dict[str, Any], *, plots: bool,
                 say: Callable[[str], None] = print, current: Optional[Mapping[str, str]] = None,
                 calibrations: Optional[Mapping[str, Optional[str]]] = None) -> dict[str, Any]:
    """``sweep.json`` (every stored row, the skipped combinations, the runs), ``sweep.csv`` and the plots.

    ``current``: this run's :func:`data_identity` per model; stored rows of those models with another one
    (measured on other validation data or another model file) stay in ``sweep.json`` and ``sweep.csv``
    with their ``data_id``, are left out of the plots, and a line says so; ``calibrations``: this run's
    :func:`calibration_identity` per model, and so for data-aware rows fitted to another calibration set."""
    path = out / "sweep.json"
    record: dict[str, Any] = {"rows": [], "skipped": [], "runs": []}
    record.update(_previous_record(path, say))
    record["rows"] = sorted(store.all_rows(), key=row_sort_key)
    keys = {(s["model"], s["method"]) for s in skipped}
    record["skipped"] = [s for s in record.get("skipped", []) if (s["model"], s["method"]) not in keys] + skipped
    record["runs"] = list(record.get("runs", [])) + [run]
    record["environment"] = environment()
    _json_dump(record, path)
    write_csv(record["rows"], out / "sweep.csv")
    other = [row for row in record["rows"] if current and row["model"] in current
             and row.get("data_id") != current[row["model"]]]
    for model in sorted({row["model"] for row in other}):
        count = sum(row["model"] == model for row in other)
        say(f"note: {count} stored rows of {model} were measured on other validation data or another model file "
            f"(this run's data_id {current[model]}); sweep.json and sweep.csv list them with their data_id, the plots "
            "leave them out")
    fitted = [row for row in record["rows"] if row.get("calibration_id") and all(row is not seen for seen in other)]
    for model in sorted({row["model"] for row in fitted}):
        rows = [row for row in fitted if row["model"] == model]
        reference = (calibrations or {}).get(model)
        if reference:
            refitted = [row for row in rows if row["calibration_id"] != reference]
            if refitted:
                say(f"note: {len(refitted)} stored data-aware rows of {model} were fitted to another calibration set "
                    f"(this run's calibration_id {reference}); sweep.json and sweep.csv list them with their "
                    "calibration_id, the plots leave them out")
        elif len({row["calibration_id"] for row in rows}) > 1:  # this run names no set to plot
            refitted = rows
            say(f"note: the {len(rows)} stored data-aware rows of {model} were fitted to "
                f"{len({row['calibration_id'] for row in rows})} calibration sets and this run gave none; sweep.json "
                "and sweep.csv list them with their calibration_id, the plots leave them out (run again with the "
                "calibration set to plot)")
        else:
            refitted = []
        other += refitted
    if plots:
        try:
            left_out = {id(row) for row in other}
            write_plots([row for row in record["rows"] if id(row) not in left_out], out)
        except ImportError:
            say("plots: skipped (matplotlib is not installed: pip install 'onnx-alds[plots]')")
    return record


def _previous_record(path: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The skipped combinations and the runs an earlier ``sweep.json`` holds (its rows come from the row
    files). A file that is not such a record (truncated, not UTF-8, edited) is started again, with a note."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        problem = f"not readable JSON ({type(exc).__name__})"
    else:
        skipped = data.get("skipped", []) if isinstance(data, dict) else None
        runs = data.get("runs", []) if isinstance(data, dict) else None
        if (isinstance(skipped, list) and isinstance(runs, list)
                and all(isinstance(s, dict) and isinstance(s.get("model"), str) and isinstance(s.get("method"), str)
                        for s in skipped)):
            return {key: value for key, value in data.items() if key != "rows"}
        problem = "not a sweep record"
    say(f"note: {path} was {problem}: its skipped combinations and run history start again (the rows come from "
        "the row files)")
    return {}


def _default_style(method: str, index: int) -> tuple[str, str, str]:
    markers = "os^vDPX*"
    return (f"C{index % 10}", "--" if "+data" in method else "-", markers[index % len(markers)])


def write_plots(rows: Sequence[Mapping[str, Any]], out: Path, *, method_order: Sequence[str] = (),
                style: Optional[Callable[[str, int], tuple[str, str, str]]] = None,
                reference: Optional[Callable[[str, str], Optional[float]]] = None) -> list[Path]:
    """Per model: quality vs MACs kept (a line per method and rank multiple) and, when timed, speedup vs
    MACs kept with the ideal ``1/kept``. ``style(method, index)`` gives (colour, line style, marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = style or _default_style
    order = list(method_order)

    def position(method: str) -> int:
        return order.index(method) if method in order else len(order)

    def line(axis, points, method: str, multiple: int, index: int) -> None:
        color, linestyle, marker = style(method, index)
        axis.plot(*zip(*points), color=color, linestyle=linestyle, marker=marker, markersize=5 if multiple > 1 else 4,
                  markerfacecolor="none" if multiple > 1 else color, linewidth=1.0 if multiple > 1 else 1.5,
                  alpha=0.7 if multiple > 1 else 1.0, label=f"{method} m{multiple}")

    def kept(row: Mapping[str, Any]) -> Optional[float]:
        return row.get("macs_kept") if row.get("macs_kept") is not None else row.get("achieved_keep")

    written = []
    for model in sorted({r["model"] for r in rows}):
        ok = [r for r in rows if r["model"] == model and r.get("status") == "ok" and kept(r) is not None]
        if not ok:  # an earlier run's plots of this model would show figures no row holds now
            for kind in ("quality", "speedup"):
                (out / f"{model}-{kind}.png").unlink(missing_ok=True)
            continue
        metric = ok[0].get("quality_metric") or "agreement"
        metrics = [metric] + [m for m in ("accuracy", "agreement", "cos_mean", "nn_top10")
                              if m != metric and any(r.get(m) is not None for r in ok)][:1]
        variants = sorted({(r["method"], r["rank_multiple"]) for r in ok}, key=lambda v: (position(v[0]), v[0], v[1]))
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
        for axis, name in zip(axes[0], metrics):
            for index, (method, multiple) in enumerate(variants):
                points = sorted((kept(r), r[name]) for r in ok
                                if (r["method"], r["rank_multiple"]) == (method, multiple) and r.get(name) is not None)
                if points:
                    line(axis, points, method, multiple, index)
            if reference is not None:
                original = reference(model, name)
            elif name == "accuracy":
                original = next((r["accuracy_original"] for r in ok if r.get("accuracy_original") is not None), None)
            else:
                original = _original_quality({}, name)
            if original is not None:
                axis.axhline(original, color="grey", linewidth=0.8, label="original")
            axis.set_xlabel("MACs kept (achieved)")
            axis.set_ylabel(name)
            axis.set_title(f"{model}: {name}")
            axis.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / f"{model}-quality.png"
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
        timed = [r for r in ok if r.get("speedup_small") is not None]
        if not timed:  # (an earlier run's speedup plot shows timings no row holds now)
            (out / f"{model}-speedup.png").unlink(missing_ok=True)
            continue
        slots = [s for s in ("small", "large") if any(r.get(f"speedup_{s}") is not None for r in timed)]
        fig, axes = plt.subplots(1, len(slots), figsize=(5.2 * len(slots), 3.8), squeeze=False)
        for axis, slot in zip(axes[0], slots):
            for index, (method, multiple) in enumerate(variants):
                points = sorted((kept(r), r[f"speedup_{slot}"]) for r in timed
                                if (r["method"], r["rank_multiple"]) == (method, multiple)
                                and r.get(f"speedup_{slot}") is not None)
                if points:
                    line(axis, points, method, multiple, index)
            noisy = [(kept(r), r[f"speedup_{slot}"]) for r in timed
                     if r.get(f"speedup_{slot}") is not None and noisy_timing(r, slot)]
            if noisy:
                from .bench import NOISY_SPREAD

                axis.scatter(*zip(*noisy), s=80, facecolors="none", edgecolors="red", linewidths=1.2, zorder=3,
                             label=f"noisy timing (spread > {NOISY_SPREAD * 100:.0f} %)")
            xs = np.linspace(max(0.2, min(kept(r) for r in timed) * 0.95), 1.0, 50)
            axis.plot(xs, 1 / xs, color="black", linewidth=1, label="ideal 1/keep")
            axis.axhline(1.0, color="grey", linewidth=0.8)
            batch = next(r[f"batch_{slot}"] for r in timed if r.get(f"batch_{slot}") is not None)
            axis.set_xlabel("MACs kept (achieved)")
            axis.set_ylabel("measured speedup (ORT CPU)")
            axis.set_title(f"{model}: batch {batch}")
            axis.grid(alpha=0.3)
            if noisy and axis is not axes[0][0]:  # (the first axis's legend names every line)
                axis.legend(handles=axis.collections[-1:], fontsize=6)
        axes[0][0].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / f"{model}-speedup.png"
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# Command line


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``onnx-alds sweep``."""
    from .argtypes import any_float, positive_int, random_seed, seconds, thread_count
    from .inputs import add_input_arguments

    parser.add_argument("models", metavar="MODEL", nargs="+", help="ONNX models to sweep (never modified)")
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="folder for sweep.json, sweep.csv, the plots, models/ and rows/ (a second run resumes)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--keep-flops", type=any_float, nargs="+", metavar="F",
                        help="budgets: fractions of the Conv/Gemm/MatMul multiply-accumulates to keep")
    target.add_argument("--keep-params", type=any_float, nargs="+", metavar="F",
                        help="budgets: fractions of the model's weights to keep")
    parser.add_argument("--methods", nargs="+", default=["alds"], metavar="M",
                        help="methods: alds, svd, svd-energy, l-rank, damage (needs +data), each optionally with "
                             "modifiers " + " ".join(MODIFIERS) + " (e.g. alds+data/pw: data-aware, pointwise-first; "
                             "damage+data+prune: hidden widths and ranks by output damage)")
    parser.add_argument("--rank-multiple", nargs="+", type=positive_int, default=[16], metavar="N",
                        dest="rank_multiples", help="rank multiples, as onnx-alds compress --rank-multiple (16: what "
                                                    "ONNX Runtime's fast CPU kernels need; 1: the finest steps)")
    parser.add_argument("--seed", nargs="+", type=random_seed, default=[0], metavar="N", dest="seeds",
                        help="seeds of the allocation")
    import inspect

    labels = {"labels": True} if "labels" in inspect.signature(add_input_arguments).parameters else {}
    add_input_arguments(parser, **labels)  # --labels FILE / --labels-from-filenames where inputs.py has them
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="validate on N held-out samples only, spread evenly over the set")
    add_input_arguments(parser, "calibration-", preprocess=False, input_shape=False)
    engine = parser.add_argument_group("engine")
    engine.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local (default: this process, or --workers processes) or ray (Ray actors)")
    engine.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster to join (default: RAY_ADDRESS, else a new local Ray instance)")
    engine.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="parallel workers (local default 1; ray default: the cluster's CPUs / --cpus-per-worker)")
    engine.add_argument("--cpus-per-worker", type=positive_int, default=1, metavar="N",
                        help="CPUs (and ONNX Runtime threads) per Ray actor (default 1)")
    timing = parser.add_argument_group("timing (on the driver, after every task has ended)")
    timing.add_argument("--no-bench", action="store_true", help="compress and validate only; do not time")
    timing.add_argument("--rebench", action="store_true", help="time again budgets whose variants are already timed")
    timing.add_argument("--bench-batch", type=positive_int, nargs="+", default=None, metavar="N",
                        help="one or two batch sizes to time (default 1 32; a model that fixes its batch: that one)")
    timing.add_argument("--bench-time", type=seconds, default=5.0, metavar="S",
                        help="seconds per timed group: the original and the variants of one budget (default 5)")
    timing.add_argument("--threads", type=thread_count, default=None, metavar="N",
                        help="ONNX Runtime threads for timing and for the local engine (default: physical cores)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _model_names(paths: Sequence[str]) -> list[str]:
    """The names the sweep files a model's rows and variants under: the file's stem (with as many of its
    folders' names as tell it apart when two stems repeat, whatever the order the models are given in), in
    the characters a file name keeps everywhere. A stem with other than ASCII
    characters ('net é') gets a short digest of its file name, so that it never falls on another model's name
    ('net ü') in this sweep or a later one into the same folder; ASCII stems keep the names earlier sweeps
    stored their rows under ('model.v1' → 'model_v1')."""
    stems = [Path(p).stem for p in paths]
    names = []
    for path, stem in zip(paths, stems):
        name = stem
        if stems.count(stem) > 1:  # as many of its folders as tell it from the others of that stem
            folders = {other: Path(other).resolve().parent.parts for other, s in zip(paths, stems) if s == stem}
            mine = folders[path]
            depth = next((k for k in range(1, len(mine) + 1) if all(
                theirs[-k:] != mine[-k:] for other, theirs in folders.items() if other != path)), len(mine))
            name = "-".join([part for part in mine[-depth:] if part != "/"] + [stem])
        safe = re.sub(r"[^A-Za-z0-9+=_-]", "_", name)
        if not name.isascii():
            safe += "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:6]
        names.append(safe)
    counts = Counter(names)  # a folder-prefixed name met another model's stem: those get their path's digest
    return [name if counts[name] == 1 else
            f"{name}-{hashlib.sha256(str(Path(path).resolve()).encode('utf-8', 'surrogatepass')).hexdigest()[:6]}"
            for name, path in zip(names, paths)]


def models_from_args(args: argparse.Namespace) -> list[SweepModel]:
    from .inputs import preprocess_from_args
    from .model_io import parse_input_shapes

    shapes = parse_input_shapes(getattr(args, "input_shape", None)) or None
    preprocess = preprocess_from_args(args)
    if args.inputs is None and args.images is None and args.random is None:
        source = DataSource(random=64, seed=0, limit=args.limit, input_shapes=shapes)
    else:
        source = DataSource(npz=args.inputs, images=args.images, preprocess=preprocess, random=args.random,
                            seed=0, limit=args.limit, input_shapes=shapes, labels_file=getattr(args, "labels", None),
                            labels_from_filenames=bool(getattr(args, "labels_from_filenames", False)))
    calibration = None
    if args.calibration is not None or args.calibration_images is not None or args.calibration_random is not None:
        calibration = DataSource(npz=args.calibration, images=args.calibration_images, preprocess=preprocess,
                                 random=args.calibration_random, seed=1, input_shapes=shapes)
    if args.bench_batch is not None and len(args.bench_batch) > 2:
        raise InputDataError(f"--bench-batch takes one or two batch sizes, got {len(args.bench_batch)}")
    paths = list({Path(path).resolve(): path for path in reversed(args.models)}.values())[::-1]  # each file once
    if args.bench_batch is not None and not args.no_bench:  # checked now: timing comes after every variant
        for path in paths:
            fixed = _default_bench_batches(path)
            if len(fixed) == 1 and set(args.bench_batch) != set(fixed):
                raise InputDataError(
                    f"--bench-batch {' '.join(map(str, args.bench_batch))}: model '{path}' fixes its batch to "
                    f"{fixed[0]}, so it can only be timed at that batch; give --bench-batch {fixed[0]}, or leave the "
                    "flag out (each model is then timed at the batch it fixes, others at 1 and 32)")
    return [SweepModel(name=name, path=path, evals=(EvalSpec("eval", source),), calibration=calibration,
                       input_shapes=shapes, bench_batches=tuple(args.bench_batch or _default_bench_batches(path)))
            for name, path in zip(_model_names(paths), paths)]


def _default_bench_batches(path: str) -> tuple[int, ...]:
    """1 and 32, or the batch the model fixes (timed at any other, it would be refused after every variant
    was computed)."""
    from .model_io import fixed_batch

    try:
        fixed = fixed_batch(onnx.load(str(path), load_external_data=False))
    except Exception:  # an unreadable or odd model: the loading step says what is wrong with it
        return (1, 32)
    return (fixed,) if fixed else (1, 32)


def _check_writable_folder(out: Path) -> None:
    """Raise :class:`OutputPathError` when the sweep's folder ``out`` (or, not there yet, its nearest existing
    parent, where it would be made) cannot be written: a read-only file system or folder, said before any work."""
    from .model_io import unwritable_folder

    existing = out.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = unwritable_folder(existing)
    if problem is not None:
        raise OutputPathError(f"cannot write the sweep folder -o '{out}' ({problem} in '{existing}'); "
                              "choose a writable -o path")


def run_sweep_command(args: argparse.Namespace) -> int:
    """Run ``onnx-alds sweep``; exit 1 (after writing what finished) when a variant crashed."""
    import shlex

    from .cli import given_flags

    for method in args.methods:
        parse_method(method)
    flags = given_flags(args)
    for dest in ("rebench", "bench_batch", "bench_time"):
        if args.no_bench and dest in flags:
            flag = "--" + dest.replace("_", "-")
            raise InputDataError(f"{flag} has no effect with --no-bench (nothing is timed); drop one of them")
    if (args.engine == "ray" and args.no_bench and "threads" in flags
            and not any(parse_method(method).speed_check for method in args.methods)):
        raise InputDataError("--threads has no effect with --engine ray and --no-bench (Ray workers take "
                             "--cpus-per-worker threads and nothing is timed); drop --threads, or use "
                             "--cpus-per-worker")
    if args.engine != "ray" and "cpus_per_worker" in flags:
        raise InputDataError("--cpus-per-worker is for --engine ray (local workers take --threads); drop it or add "
                             "--engine ray")
    given = any(getattr(args, name, None) is not None
                for name in ("calibration", "calibration_images", "calibration_random"))
    if given and not any("+data" in method for method in args.methods):
        raise InputDataError("calibration data is given but no method uses it; add a data-aware method such as "
                             "alds+data to --methods, or drop the calibration flag")
    out = Path(args.out)
    if out.is_symlink() and not out.exists():
        raise OutputPathError(f"-o '{out}' is a link to nothing; the sweep writes a folder: give a folder path")
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"-o '{out}' is a file; the sweep writes a folder: give a folder path")
    _check_writable_folder(out)
    if args.engine == "ray":
        import_ray()  # fail fast, before loading anything
    models = models_from_args(args)
    engine = make_engine(args.engine, workers=args.workers, address=args.address, threads=args.threads,
                         cpus_per_worker=args.cpus_per_worker)
    target, keeps = ("flops", args.keep_flops) if args.keep_flops is not None else ("params", args.keep_params)
    launcher = Path(sys.argv[0]).name if sys.argv else ""
    command = shlex.join(["onnx-alds"] + sys.argv[1:]) if launcher in ("onnx-alds", "cli.py", "__main__.py") \
        else shlex.join(sys.argv)
    from .model_io import first_missing_folder, remove_if_no_files

    created = first_missing_folder(out)  # the first folder of -o that this run makes, removed again if left empty
    try:
        result = run_sweep(models, args.methods, keeps, out=args.out, target=target,
                           rank_multiples=args.rank_multiples, seeds=args.seeds, engine=engine,
                           bench=not args.no_bench, rebench=args.rebench, bench_threads=args.threads,
                           bench_target_s=args.bench_time, plots=not args.no_plots,
                           progress=False if args.no_progress else None, command=command)
    except BaseException:
        remove_if_no_files(created)
        raise
    print(summary_table(result.rows))
    print(f"done in {result.run['seconds']:.1f} s: {result.computed} computed, {result.reused} done before"
          + (f", {len(result.crashed)} crashed" if result.crashed else "")
          + f"; wrote {Path(args.out) / 'sweep.json'}, sweep.csv"
          + ("" if args.no_plots or importlib.util.find_spec("matplotlib") is None
             or not any(Path(args.out).glob("*.png")) else ", plots"))  # (none where no row is ok)
    if result.crashed:
        first = result.crashed[0]
        memory = any(row.get("memory") for row in result.crashed)
        raise OnnxAldsError(f"{len(result.crashed)} variant(s) crashed (first: {first['variant_id']}: "
                            f"{first['error']}); run the same command again to retry them"
                            + ("; where memory ran out, with fewer --workers or more memory" if memory else ""))
    failed = [row for row in result.rows if row.get("status") != "ok"]
    if len(failed) == len(result.rows):
        raise BudgetError(f"no variant produced a model ({len(failed)} failed; first: {failed[0].get('variant_id')}: "
                          f"{failed[0].get('error', failed[0].get('status'))}); the rows are in {args.out}")
    return 0


def noisy_timing(row: Mapping[str, Any], slot: str) -> bool:
    """Whether the row's speedup at ``slot`` ("small", "large") rests on a timing, the compressed model's or
    the original's, whose p90 − p10 spread passed :data:`onnx_alds.bench.NOISY_SPREAD` of its median (other
    work shared the machine: the ratio of two such medians can be far off either way)."""
    from .bench import NOISY_SPREAD

    return any(row.get(key) is not None and row[key] > NOISY_SPREAD
               for key in (f"spread_{slot}", f"spread_original_{slot}"))


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per row; each speedup with the batch it was timed at (rows of models that fix their batch
    are timed at theirs) and "noisy" where :func:`noisy_timing` (then a line under the table says what to
    do), the seed where the sweep has more than one."""
    from .bench import NOISY_SPREAD
    from .report import format_table

    seeds = len({row.get("seed", 0) for row in rows}) > 1

    def speedup(row: Mapping[str, Any], slot: str) -> str:
        value = row.get(f"speedup_{slot}")
        return "-" if value is None else (f"{_fmt(value, 2)} (b{row.get(f'batch_{slot}')}"
                                          + (", noisy)" if noisy_timing(row, slot) else ")"))

    table = [("model", "method", "keep", "m") + (("seed",) if seeds else ()) + (
        "achieved", "quality", "speedup small batch", "speedup large batch", "status")]
    for row in rows:
        table.append((row["model"], row["method"], f"{row['keep']:g}", str(row["rank_multiple"]))
                     + ((str(row.get("seed", 0)),) if seeds else ())
                     + (_fmt(row.get("achieved_keep")),
                        f"{row.get('quality_metric', '')} {_fmt(row.get('quality'))}" if row.get("status") == "ok"
                        else "-",
                        speedup(row, "small"), speedup(row, "large"), row.get("status", "")))
    noisy = sum(noisy_timing(row, slot) for row in rows for slot in ("small", "large")
                if row.get(f"speedup_{slot}") is not None)
    return format_table(table) + (
        f"\n{noisy} speedup{'s' if noisy > 1 else ''} marked noisy: a timing spread (p90 − p10) over "
        f"{NOISY_SPREAD * 100:.0f} % of its median, so other work shared the machine and the figure can be far "
        "off; time again on a quiet machine (the same command with --rebench)" if noisy else "")
