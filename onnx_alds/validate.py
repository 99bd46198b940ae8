"""Compare a compressed model with its original in ONNX Runtime, Polygraphy style.

Both models run on the same :class:`~onnx_alds.inputs.InputSet`, batch by batch, on one provider.
For every graph output the figures are (``o`` = original, ``c`` = compressed, ``i`` = sample; an
output whose first dim is the batch is split into samples along it, any other output is one sample
per batch):

* ``abs``  — max absolute error ``max |c - o|`` over all elements of all samples;
* ``rel``  — max over samples of the relative L2 error ``‖c_i - o_i‖₂ / ‖o_i‖₂`` (``rel_mean``: its
  mean); an error relative to the size of the whole output, so near-zero elements do not blow it up;
* ``cos``  — the cosine similarity of ``c_i`` and ``o_i`` (min and mean over samples);
* for classifier-shaped outputs (2-D float, second dim ≥ 2): ``top1`` — fraction of samples whose
  arg-max class is the same; ``top5`` — fraction whose original arg-max class is among the compressed
  model's 5 highest (only with more than 5 classes); with labels, the top-1 accuracy of both models
  and the drop (original minus compressed, as a fraction: 0.01 = one point).

Tolerances (each optional; none given means figures only): an output passes when ``abs ≤ atol``,
``rel ≤ rtol``, ``top1 ≥ min_top1_agreement`` (classifier outputs) and ``drop ≤ max_accuracy_drop``
(the first classifier output, with labels). ``validate_and_bench`` adds a latency comparison and a
one-line summary for ``compress --validate``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import onnx

from .argtypes import fraction, non_negative_float, positive_int
from .errors import InputDataError, UnsupportedModelError, ValidationFailedError
from .inputs import InputSet, add_input_arguments, inputs_from_args
from .model_io import graph_inputs, load_model
from .report import json_safe, write_json
from .runtime import PROVIDERS, import_onnxruntime, make_session

log = logging.getLogger(__name__)

ModelArg = Union[str, os.PathLike, onnx.ModelProto]


@dataclass(frozen=True)
class Tolerances:
    """The limits a user stated; None means not checked."""

    rtol: Optional[float] = None
    atol: Optional[float] = None
    min_top1_agreement: Optional[float] = None
    max_accuracy_drop: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("rtol", "atol", "max_accuracy_drop"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise InputDataError(f"got {name}={value}; a tolerance must be ≥ 0")
        if self.min_top1_agreement is not None and not 0 <= self.min_top1_agreement <= 1:
            raise InputDataError(f"got min_top1_agreement={self.min_top1_agreement}; give a fraction in [0, 1]")

    @property
    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def describe(self) -> str:
        parts = [f"{name.replace('_', '-')}={value:g}" for name, value in asdict(self).items() if value is not None]
        return ", ".join(parts) if parts else "none given"


@dataclass(frozen=True)
class OutputComparison:
    """Every figure for one graph output (definitions in the module docstring)."""

    name: str
    shape: tuple[int, ...]
    samples: int
    max_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    min_cosine: float
    mean_cosine: float
    top1_agreement: Optional[float] = None
    top5_agreement: Optional[float] = None
    accuracy_original: Optional[float] = None
    accuracy_compressed: Optional[float] = None
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def accuracy_drop(self) -> Optional[float]:
        if self.accuracy_original is None or self.accuracy_compressed is None:
            return None
        return self.accuracy_original - self.accuracy_compressed

    def line(self, tolerances: Tolerances) -> str:
        """``PASSED | Output: 'logits' | rel=… abs=… cos=… top1=… (tolerance …)``."""
        figures = [f"rel={self.max_rel_error:.3g} (mean {self.mean_rel_error:.3g})", f"abs={self.max_abs_error:.3g}",
                   f"cos={self.min_cosine:.6f}"]
        if self.top1_agreement is not None:
            figures.append(f"top1={self.top1_agreement:.4f}")
        if self.top5_agreement is not None:
            figures.append(f"top5={self.top5_agreement:.4f}")
        if self.accuracy_drop is not None:
            figures.append(f"acc={self.accuracy_original:.4f}->{self.accuracy_compressed:.4f} "
                           f"(drop {self.accuracy_drop:+.4f})")
        verdict = "PASSED" if self.passed else "FAILED"
        text = f"{verdict} | Output: '{self.name}' | {' '.join(figures)} (tolerance {tolerances.describe()})"
        if self.failures:
            text += " | " + "; ".join(self.failures)
        return text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["failures"] = list(self.failures)
        data["accuracy_drop"] = self.accuracy_drop
        data["passed"] = self.passed
        return json_safe(data)


@dataclass(frozen=True)
class ValidationReport:
    """The comparison of two models on one input set."""

    original: str
    compressed: str
    outputs: tuple[OutputComparison, ...]
    tolerances: Tolerances
    samples: int
    input_source: str
    random_inputs: bool
    has_labels: bool
    provider: str
    provider_name: str
    batch_size: int
    onnxruntime_version: str
    notes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    @property
    def classifier(self) -> Optional[OutputComparison]:
        """The first classifier-shaped output, or None."""
        return next((o for o in self.outputs if o.top1_agreement is not None), None)

    def lines(self) -> list[str]:
        """The per-output lines and the final verdict, ready to print."""
        lines = [f"validating {self.compressed} against {self.original} on {self.provider} "
                 f"({self.samples} samples from {self.input_source}, batch {self.batch_size})"]
        lines += [f"note: {note}" for note in self.notes]
        lines += [output.line(self.tolerances) for output in self.outputs]
        if self.passed:
            suffix = "" if self.tolerances.any else " (no tolerances given: figures only)"
            lines.append(f"PASSED{suffix}")
        else:
            failed = sum(not o.passed for o in self.outputs)
            lines.append(f"FAILED | {failed} of {len(self.outputs)} output(s) missed a tolerance")
        return lines

    def failure_message(self) -> str:
        """One line naming the first output and tolerance that failed, with the fix."""
        failed = [o for o in self.outputs if not o.passed]
        if not failed:
            return ""
        first = failed[0]
        more = f" (and {sum(len(o.failures) for o in failed) - 1} more)" if sum(len(o.failures) for o in failed) > 1 else ""
        return f"output '{first.name}': {first.failures[0]}{more}; relax the tolerance or compress less"

    def raise_if_failed(self) -> None:
        """Raise :class:`ValidationFailedError` (one line) when a tolerance was missed."""
        if not self.passed:
            raise ValidationFailedError(f"validation failed: {self.failure_message()}")

    def to_dict(self) -> dict[str, Any]:
        data = {
            "original": self.original,
            "compressed": self.compressed,
            "passed": self.passed,
            "tolerances": asdict(self.tolerances),
            "samples": self.samples,
            "input_source": self.input_source,
            "random_inputs": self.random_inputs,
            "has_labels": self.has_labels,
            "provider": self.provider,
            "provider_name": self.provider_name,
            "batch_size": self.batch_size,
            "onnxruntime_version": self.onnxruntime_version,
            "notes": list(self.notes),
            "outputs": [o.to_dict() for o in self.outputs],
        }
        return json_safe(data)




def _describe(model: ModelArg, fallback: str) -> str:
    return fallback if isinstance(model, onnx.ModelProto) else str(model)


def effective_batch_size(model: onnx.ModelProto, requested: int, samples: int) -> tuple[int, list[str]]:
    """The batch size to run ``model`` at: ``requested`` unless an input fixes its first dim."""
    fixed = {spec.dims[0] for spec in graph_inputs(model) if spec.dims and isinstance(spec.dims[0], int)}
    if not fixed:
        return requested, []
    if len(fixed) > 1:
        raise UnsupportedModelError(
            f"the model's inputs fix different first dims ({sorted(fixed)}); export it with one batch dim"
        )
    batch = fixed.pop()
    if samples % batch:
        raise InputDataError(f"the model fixes the batch to {batch}, but there are {samples} samples; give a multiple of {batch}")
    notes = [f"the model fixes the batch to {batch}; ran at batch {batch}"] if batch != requested else []
    return batch, notes


def _per_sample(chunks: list[np.ndarray], batch_lengths: list[int]) -> np.ndarray:
    """Stack one output's per-batch arrays into (samples, features) float64."""
    if all(c.ndim >= 1 and c.shape[0] == n for c, n in zip(chunks, batch_lengths)):
        joined = np.concatenate(chunks, axis=0)
        return joined.reshape(joined.shape[0], -1).astype(np.float64)
    sizes = {c.size for c in chunks}
    if len(sizes) == 1:
        return np.stack([c.reshape(-1) for c in chunks]).astype(np.float64)
    return np.concatenate([c.reshape(-1) for c in chunks])[None, :].astype(np.float64)


def compare_output(name: str, original: np.ndarray, compressed: np.ndarray, *, classifier: bool,
                   labels: Optional[np.ndarray], tolerances: Tolerances, check_accuracy: bool,
                   shape: tuple[int, ...] = ()) -> OutputComparison:
    """Figures and tolerance checks for one output given as (samples, features) arrays."""
    if original.shape != compressed.shape:
        raise UnsupportedModelError(
            f"output '{name}' has shape {original.shape} in the original and {compressed.shape} in the compressed "
            "model; compare a model with one compressed from it"
        )
    diff = compressed - original
    tiny = np.finfo(np.float64).tiny
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    diff_norm = np.linalg.norm(diff, axis=1)
    ref_norm = np.linalg.norm(original, axis=1)
    cmp_norm = np.linalg.norm(compressed, axis=1)
    rel = np.where(diff_norm == 0, 0.0, diff_norm / np.maximum(ref_norm, tiny))
    rel = np.where((ref_norm == 0) & (diff_norm > 0), np.inf, rel)
    both_zero = (ref_norm == 0) & (cmp_norm == 0)
    cosine = np.where(both_zero, 1.0, np.sum(original * compressed, axis=1) / np.maximum(ref_norm * cmp_norm, tiny))
    top1 = top5 = acc_o = acc_c = None
    if classifier:
        pred_o = np.argmax(original, axis=1)
        pred_c = np.argmax(compressed, axis=1)
        top1 = float(np.mean(pred_o == pred_c))
        if original.shape[1] > 5:
            top5_c = np.argpartition(-compressed, 5, axis=1)[:, :5]
            top5 = float(np.mean(np.any(top5_c == pred_o[:, None], axis=1)))
        if labels is not None and check_accuracy:
            if labels.min() < 0 or labels.max() >= original.shape[1]:
                raise InputDataError(
                    f"labels range over {labels.min()}..{labels.max()}, but output '{name}' has {original.shape[1]} "
                    "classes; give class ids in [0, classes)"
                )
            acc_o = float(np.mean(pred_o == labels))
            acc_c = float(np.mean(pred_c == labels))
    failures = []
    if tolerances.atol is not None and not max_abs <= tolerances.atol:
        failures.append(f"abs={max_abs:.3g} > atol={tolerances.atol:g}")
    max_rel = float(np.max(rel)) if rel.size else 0.0
    if tolerances.rtol is not None and not max_rel <= tolerances.rtol:
        failures.append(f"rel={max_rel:.3g} > rtol={tolerances.rtol:g}")
    if top1 is not None and tolerances.min_top1_agreement is not None and top1 < tolerances.min_top1_agreement:
        failures.append(f"top1={top1:.4f} < min-top1-agreement={tolerances.min_top1_agreement:g}")
    if acc_o is not None and tolerances.max_accuracy_drop is not None and acc_o - acc_c > tolerances.max_accuracy_drop:
        failures.append(f"accuracy drop={acc_o - acc_c:.4f} > max-accuracy-drop={tolerances.max_accuracy_drop:g}")
    return OutputComparison(
        name=name, shape=shape, samples=int(original.shape[0]), max_abs_error=max_abs, max_rel_error=max_rel,
        mean_rel_error=float(np.mean(rel)) if rel.size else 0.0,
        min_cosine=float(np.min(cosine)) if cosine.size else 1.0,
        mean_cosine=float(np.mean(cosine)) if cosine.size else 1.0,
        top1_agreement=top1, top5_agreement=top5, accuracy_original=acc_o, accuracy_compressed=acc_c,
        failures=tuple(failures),
    )


def validate(original: ModelArg, compressed: ModelArg, *, inputs: InputSet, provider: str = "cpu",
             rtol: Optional[float] = None, atol: Optional[float] = None,
             min_top1_agreement: Optional[float] = None, max_accuracy_drop: Optional[float] = None,
             batch_size: int = 32, threads: Optional[int] = None,
             progress: Optional[bool] = None) -> ValidationReport:
    """Run both models on ``inputs`` with ``provider`` and compare every output.

    Returns the report whether or not it passed (see :meth:`ValidationReport.raise_if_failed`).
    Raises :class:`ProviderError` when the provider is not available (no silent CPU fallback) and
    :class:`InputDataError` when a tolerance cannot be checked (e.g. ``max_accuracy_drop`` without labels).
    """
    tolerances = Tolerances(rtol, atol, min_top1_agreement, max_accuracy_drop)
    if batch_size < 1:
        raise InputDataError(f"got batch size {batch_size}; the batch size must be ≥ 1")
    original_model = load_model(original)
    compressed_model = load_model(compressed)
    _check_same_interface(original_model, compressed_model)
    batch, notes = effective_batch_size(original_model, batch_size, len(inputs))
    if inputs.is_random:
        notes.append("inputs are random, not real data: agreement figures say little about accuracy")
    ort = import_onnxruntime()
    session_o = make_session(original if not isinstance(original, onnx.ModelProto) else original_model,
                             provider, threads=threads)
    session_c = make_session(compressed if not isinstance(compressed, onnx.ModelProto) else compressed_model,
                             provider, threads=threads)
    output_names = [o.name for o in session_o.get_outputs()]
    collected_o: dict[str, list[np.ndarray]] = {n: [] for n in output_names}
    collected_c: dict[str, list[np.ndarray]] = {n: [] for n in output_names}
    batch_lengths: list[int] = []
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    total = math.ceil(len(inputs) / batch)
    for feed in tqdm(inputs.batches(batch), total=total, desc="validate", unit="batch", disable=not show):
        batch_lengths.append(len(next(iter(feed.values()))))
        for name, value in zip(output_names, session_o.run(output_names, feed)):
            collected_o[name].append(np.asarray(value))
        for name, value in zip(output_names, session_c.run(output_names, feed)):
            collected_c[name].append(np.asarray(value))
    classifier_names = [n for n in output_names if _is_classifier(collected_o[n])]
    if tolerances.min_top1_agreement is not None and not classifier_names:
        raise InputDataError(
            "--min-top1-agreement needs a classifier-shaped output (2-D float, ≥ 2 classes) and the model has none; "
            "use --rtol/--atol"
        )
    if tolerances.max_accuracy_drop is not None and (inputs.labels is None or not classifier_names):
        raise InputDataError(
            "--max-accuracy-drop needs labels (an .npz 'labels' array or image names like cat_281.jpg) and a "
            "classifier-shaped output; give labeled inputs or use --min-top1-agreement"
        )
    outputs = []
    for name in output_names:
        per_o = _per_sample(collected_o[name], batch_lengths)
        per_c = _per_sample(collected_c[name], batch_lengths)
        shape = tuple(int(d) for d in collected_o[name][0].shape[1:])
        outputs.append(compare_output(
            name, per_o, per_c, classifier=name in classifier_names, labels=inputs.labels,
            tolerances=tolerances, check_accuracy=bool(classifier_names) and name == classifier_names[0], shape=shape,
        ))
    return ValidationReport(
        original=_describe(original, "<original model>"), compressed=_describe(compressed, "<compressed model>"),
        outputs=tuple(outputs), tolerances=tolerances, samples=len(inputs), input_source=inputs.source,
        random_inputs=inputs.is_random, has_labels=inputs.labels is not None, provider=provider,
        provider_name=PROVIDERS[provider], batch_size=batch, onnxruntime_version=ort.__version__,
        notes=tuple(notes),
    )


def _is_classifier(chunks: list[np.ndarray]) -> bool:
    first = chunks[0]
    return first.ndim == 2 and np.issubdtype(first.dtype, np.floating) and first.shape[1] >= 2


def _check_same_interface(original: onnx.ModelProto, compressed: onnx.ModelProto) -> None:
    names_o = [spec.name for spec in graph_inputs(original)]
    names_c = [spec.name for spec in graph_inputs(compressed)]
    if sorted(names_o) != sorted(names_c):
        raise UnsupportedModelError(
            f"the models take different inputs ({', '.join(names_o)} vs {', '.join(names_c)}); "
            "compare a model with one compressed from it"
        )
    outs_o = sorted(o.name for o in original.graph.output)
    outs_c = sorted(o.name for o in compressed.graph.output)
    if outs_o != outs_c:
        raise UnsupportedModelError(
            f"the models have different outputs ({', '.join(outs_o)} vs {', '.join(outs_c)}); "
            "compare a model with one compressed from it"
        )


# --------------------------------------------------------------------------------------------------
# compress --validate


def validate_and_bench(original_path: ModelArg, compressed_path: ModelArg, *, inputs: InputSet,
                       provider: str = "cpu", rtol: Optional[float] = None, atol: Optional[float] = None,
                       min_top1_agreement: Optional[float] = None, max_accuracy_drop: Optional[float] = None,
                       batch: int = 1, weights_kept: Optional[float] = None, macs_kept: Optional[float] = None,
                       input_shapes: Optional[dict[str, Sequence[int]]] = None, threads: Optional[int] = None,
                       bench_options: Optional[dict[str, Any]] = None) -> tuple[ValidationReport, Any, str]:
    """Validate, then benchmark the pair at ``batch``, and make the one-line summary.

    Returns ``(validation_report, bench_report, summary)``; the caller prints them and then calls
    ``validation_report.raise_if_failed()``. ``bench_options`` passes extra keywords to
    :func:`onnx_alds.bench.bench` (``runs``, ``warmup``, ``min_time_s``).
    """
    from .bench import bench

    names = None
    if isinstance(original_path, onnx.ModelProto) or isinstance(compressed_path, onnx.ModelProto):
        names = ["original", "compressed"]
    report = validate(original_path, compressed_path, inputs=inputs, provider=provider, rtol=rtol, atol=atol,
                      min_top1_agreement=min_top1_agreement, max_accuracy_drop=max_accuracy_drop, threads=threads)
    timing = bench([original_path, compressed_path], provider=provider, batch_sizes=(batch,), threads=threads,
                   input_shapes=input_shapes, names=names, **(bench_options or {}))
    speedup = timing.speedup(1, batch)
    return report, timing, summary_line(report, speedup, provider=provider, batch=batch,
                                        weights_kept=weights_kept, macs_kept=macs_kept)


def summary_line(report: ValidationReport, speedup: Optional[float], *, provider: str, batch: int,
                 weights_kept: Optional[float] = None, macs_kept: Optional[float] = None) -> str:
    """``summary: weights kept 0.48, MACs kept 0.50, speedup 1.83x on cpu (batch 1), top-1 agreement 0.97``."""
    parts = []
    if weights_kept is not None:
        parts.append(f"weights kept {weights_kept:.2f}")
    if macs_kept is not None:
        parts.append(f"MACs kept {macs_kept:.2f}")
    if speedup is not None:
        parts.append(f"speedup {speedup:.2f}x on {provider} (batch {batch})")
    head = report.classifier
    if head is not None:
        parts.append(f"top-1 agreement {head.top1_agreement:.2f}")
        if head.accuracy_drop is not None:
            parts.append(f"accuracy {head.accuracy_original:.3f} -> {head.accuracy_compressed:.3f} "
                         f"(drop {head.accuracy_drop:+.3f})")
    elif report.outputs:
        parts.append(f"min cosine {min(o.min_cosine for o in report.outputs):.4f}")
        parts.append(f"max rel error {max(o.max_rel_error for o in report.outputs):.3g}")
    if report.random_inputs:
        parts.append("on random inputs (not real data)")
    if not report.passed:
        parts.append("FAILED")
    return "summary: " + ", ".join(parts)


@dataclass(frozen=True, eq=False)
class ValidateSummary:
    """What ``compress --validate`` prints: the validation, the timings and the one-line summary."""

    validation: ValidationReport
    bench: Any
    line: str

    @property
    def passed(self) -> bool:
        return self.validation.passed

    @property
    def failure(self) -> Optional[ValidationFailedError]:
        """The error to raise when a tolerance was missed, else None."""
        if self.passed:
            return None
        return ValidationFailedError(f"validation failed: {self.validation.failure_message()}")

    @property
    def text(self) -> str:
        """Validation lines, timing lines and the summary line."""
        return "\n".join(self.validation.lines() + self.bench.lines() + [self.line])


def add_validation_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``compress --validate``: validation inputs, provider, batch, tolerances.

    Validation inputs: ``--validate-inputs FILE.npz | --validate-images DIR | --validate-random N``
    (``--preprocess``/``--input-shape`` are shared with the calibration flags). Without them the
    calibration inputs are used (the report notes it), else 64 random samples (labeled as random).
    """
    add_input_arguments(parser, "validate-", preprocess=False, input_shape=False)
    group = parser.add_argument_group("validation (with --validate)")
    group.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                       help="ONNX Runtime provider for validation and timing (no fallback)")
    group.add_argument("--bench-batch", type=positive_int, default=1, metavar="N",
                       help="batch size of the speed comparison (default 1)")
    group.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="CPU intra-op threads (default: physical cores for timing)")
    add_tolerance_arguments(parser)


def validate_from_args(original: ModelArg, compressed: ModelArg, args: argparse.Namespace, *,
                       report: Any = None) -> ValidateSummary:
    """``compress --validate``: validate and bench ``compressed`` against ``original`` as the flags say.

    ``report`` (a CompressionReport) gives the weights and MACs kept for the summary line.
    """
    from .model_io import parse_input_shapes

    original_model = load_model(original)
    inputs = inputs_from_args(original_model, args, "validate-", required=False)
    if inputs is None:
        inputs = inputs_from_args(original_model, args, "calibration-", required=False)
        if inputs is not None:
            inputs = InputSet(inputs.arrays, inputs.labels,
                              f"the calibration inputs ({inputs.source}; optimistic: also used to compress)")
    if inputs is None:
        inputs = inputs_from_args(original_model, argparse.Namespace(**dict(vars(args), validate_random=64)),
                                  "validate-")
    weights_kept = macs_kept = None
    if report is not None:
        if getattr(report, "params_before", 0):
            weights_kept = report.params_after / report.params_before
        if getattr(report, "macs_before", 0):
            macs_kept = (report.macs_after or 0) / report.macs_before
    validation, timing, line = validate_and_bench(
        original, compressed, inputs=inputs, provider=args.provider, batch=args.bench_batch,
        weights_kept=weights_kept, macs_kept=macs_kept,
        input_shapes=parse_input_shapes(getattr(args, "input_shape", None)), threads=getattr(args, "threads", None),
        **tolerances_from_args(args))
    return ValidateSummary(validation, timing, line)


# --------------------------------------------------------------------------------------------------
# Command line








def add_tolerance_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rtol``, ``--atol``, ``--min-top1-agreement``, ``--max-accuracy-drop`` (also for compress --validate)."""
    group = parser.add_argument_group("tolerances (each optional; exit 1 when one is missed)")
    group.add_argument("--rtol", type=non_negative_float, default=None, metavar="X",
                       help="max relative L2 error per sample, ‖c−o‖/‖o‖")
    group.add_argument("--atol", type=non_negative_float, default=None, metavar="X", help="max absolute error of any element")
    group.add_argument("--min-top1-agreement", type=fraction, default=None, metavar="F",
                       help="min fraction of samples whose top-1 class matches the original's")
    group.add_argument("--max-accuracy-drop", type=fraction, default=None, metavar="F",
                       help="max drop of top-1 accuracy against labels, as a fraction (0.01 = 1 point)")


def tolerances_from_args(args: argparse.Namespace) -> dict[str, Optional[float]]:
    """The tolerance keywords of :func:`validate` from parsed flags."""
    return {name: getattr(args, name, None) for name in ("rtol", "atol", "min_top1_agreement", "max_accuracy_drop")}


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``onnx-alds validate``."""
    parser.add_argument("original", metavar="ORIGINAL", help="the original .onnx model")
    parser.add_argument("compressed", metavar="COMPRESSED", help="the compressed .onnx model")
    add_input_arguments(parser)
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                        help="ONNX Runtime execution provider (no fallback: an unavailable one is an error)")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="samples per run (default 32)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help="CPU intra-op threads (default: ORT's)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of --random inputs (default 0)")
    add_tolerance_arguments(parser)
    parser.add_argument("--json", metavar="FILE", default=None, help="write every figure as JSON")




def run_validate_command(args: argparse.Namespace) -> int:
    """Run ``onnx-alds validate``: print the report, write --json, return 0 or raise ValidationFailedError."""
    original = load_model(args.original)
    inputs = inputs_from_args(original, args, required=True)
    report = validate(args.original, args.compressed, inputs=inputs, provider=args.provider,
                      batch_size=args.batch_size, threads=getattr(args, "threads", None), **tolerances_from_args(args))
    for line in report.lines():
        print(line)
    if args.json:
        write_json(report.to_dict(), args.json)
    report.raise_if_failed()
    return 0
