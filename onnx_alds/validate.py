"""Compare a compressed model with its original in ONNX Runtime, Polygraphy style.

Both models run on the same :class:`~onnx_alds.inputs.InputSet`, batch by batch, on one provider.
Every graph output gets a *kind*, chosen from its shape on the first batch (or stated with
``output_kinds`` / ``--output-kind NAME=KIND``), and the kind decides its figures and its default
tolerances (``o`` = original, ``c`` = compressed, ``i`` = sample; an output whose first dim is the
batch is split into samples along it, any other output is one sample per batch):

* every kind: ``abs`` — max ``|c - o|`` over all elements; ``rel`` — relative L2 error
  ``‖c_i - o_i‖₂ / ‖o_i‖₂`` (max and mean over samples); ``cos`` — cosine similarity of ``c_i``
  and ``o_i`` (min and mean over samples; not measured where a sample is one value: only its sign);
  integer, boolean and string outputs, whatever their kind: the fraction of values that differ;
* ``classifier`` (2-D float ``[N, C]``, C ≥ 2, unless a TopK's values, every row sorted past chance, or named
  as boxes or a regression head):
  ``top1`` — fraction of samples with the same arg-max class; ``top5`` — fraction whose original
  class is among the compressed model's 5 highest (C > 5; a class tied with others counts behind
  them, unless it is the compressed arg-max);
  with labels, top-1 accuracy of both models and the drop (the first classifier output);
* ``embedding`` (2-D float ``[N, D]`` whose rows have unit L2 norm or whose name says embedding /
  pooler; a 3-D ``[N, T, D]`` output only when stated, mean-pooled over T, weighted by an input named
  ``attention_mask`` when there is one): ``nn`` — fraction of samples whose nearest other sample
  (cosine similarity, over the whole evaluation set) is the same by both models;
* ``sequence`` (3-D float ``[N, T, C]``, C ≥ 2): ``pos`` — fraction of positions with the same
  arg-max over C; ``seq`` — fraction of samples whose whole arg-max sequence is identical (neither
  measured when T = 0);
* ``dense`` (4-D float ``[N, C, H, W]``, channel axis 1; ``[N, H, W, C]`` where the graph shows channels last,
  regression where a Transpose leaves the layout unclear: :func:`output_channel_axes`): ``iou`` — with C = 1
  the IoU of the binary masks ``value > 0.5`` (every original value in [0, 1]: probabilities) or
  ``value > 0`` (else: logits, i.e. sigmoid > 0.5); with C > 1 the mean over classes of the IoU of the
  channel arg-max maps; the intersections and unions are summed over the whole evaluation set; an output not
  stated dense whose masks
  hold one value at every pixel of every sample in the original is judged as ``regression`` (its IoU would
  say nothing of the model);
* ``regression`` (anything else): ``rel`` and ``cos`` only.

Tolerances: an output fails when a figure it has misses a stated limit, or, where no limit for that
figure was stated, the default limit of its kind (:data:`DEFAULT_TOLERANCES`); ``figures_only=True``
checks nothing. An output the graph lists twice is compared once. Memory stays bounded by one
batch of outputs plus, for embeddings, the embedding vectors of the evaluation set.
``validate_and_bench`` adds a latency comparison and a one-line summary for ``compress --validate``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from .argtypes import (check_count, check_number, check_switch, fraction, non_negative_float, positive_int,
                       random_seed, thread_count)
from .checks import batch_coupling_nodes, raise_if_out_of_resources, random_nodes, value_sized_outputs
from . import _callable_module
from .errors import (InputDataError, RandomInputsError, UnsupportedModelError, ValidationFailedError,
                     runtime_error_text)
from .inputs import (InputSet, add_input_arguments, as_input_set, conform_inputs, dim_name_clash, first_occurrences,
                     inputs_from_args, one_sample_at_a_time, with_prefixed_flags)
from .model_io import fixed_batch, graph_inputs, load_model, same_weights, structure_of
from .report import json_safe, library_versions, write_json
from .runtime import PROVIDERS, import_onnxruntime, make_session

log = logging.getLogger(__name__)

ModelArg = Union[str, os.PathLike, onnx.ModelProto]

CLASSIFIER, EMBEDDING, SEQUENCE, DENSE, REGRESSION = "classifier", "embedding", "sequence", "dense", "regression"
SORTED_ROWS = "every row sorted"  # 2-D outputs that are not a classifier's scores (detect_kind)
ALL_ZEROS = "every sample's output is all zeros in both models"  # (a failure only where no other output compares)
EXACT_COMPARISON = "compared element by element"  # integer and boolean outputs (detect_kind)
KINDS = (CLASSIFIER, EMBEDDING, SEQUENCE, DENSE, REGRESSION)
NORM_TOLERANCE = 1e-3  # rows with |‖x‖₂ - 1| ≤ this are unit-norm; probability rows sum to 1 within it
# a word of the name says embedding or pooler (emb, text_embeds, sentenceEmbedding, pooler_output), not a word
# that holds those letters (member_logits, unembed_logits, spooler)
EMBEDDING_NAME = re.compile(r"(?<![A-Za-z])(?i:embed|pooler|embs?(?![a-z]))"
                            r"|(?<=[a-z0-9])(?:Embed|Pooler|Embs?(?![a-z]))")
# a decoder's key/value cache (present.0.key, past_key_values.3.value, kv_cache): its last axis is a head's
# features, whose arg-max (sequence) or channel arg-max (dense) says nothing
CACHE_NAME = re.compile(r"present|past_key|key_values|kv_?cache", re.IGNORECASE)
# boxes and regression heads ([N, Q, 4] boxes, SSD's mbox_loc, [N, 3] offsets): an arg-max over their values
# means nothing. Anywhere in the name (boundingbox, bboxreg, regressor); 'reg' as a word only (register).
# A classifier named 'inbox_logits' is then judged by its relative error, stricter than top-1, never looser.
REGRESSION_NAME = re.compile(r"box|coord|regress|delta|offset|(?<![a-z])reg(?![a-z])", re.IGNORECASE)


def _names_value_map(name: str) -> bool:
    """Whether an output's name says a depth, disparity or optical flow map ([N, H, W], [N, 1, H, W],
    [N, 2, H, W]: values whose scale matters, not class scores or a mask): a word of it (snake_case, camelCase,
    dotted) starts with ``depth`` (not ``depthwise``) or ``disparit``, ends with ``depth(s)`` (``invdepth``,
    ``monodepth``), or is ``disp(s)``, ``dispmap``, ``flow`` or ``flows``."""
    words = [word.lower() for word in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", name)]
    return any((word.startswith("depth") and word != "depthwise") or word.endswith(("depth", "depths"))
               or word.startswith("disparit") or word in ("flow", "flows", "disp", "disps", "dispmap")
               for word in words)


def _names_regression(name: str) -> bool:
    """Whether an output's name says boxes or a regression head (:data:`REGRESSION_NAME`)."""
    return bool(REGRESSION_NAME.search(name))
MIN_NN_SAMPLES = 3  # with 2 samples each one's nearest neighbour is the other: agreement says nothing
ATTENTION_MASK = "attention_mask"


@dataclass(frozen=True)
class Tolerances:
    """Limits on the figures; None means not checked (see :func:`effective_tolerances` for defaults)."""

    rtol: Optional[float] = None
    atol: Optional[float] = None
    min_top1_agreement: Optional[float] = None
    max_accuracy_drop: Optional[float] = None
    max_mean_rel: Optional[float] = None
    min_mean_cosine: Optional[float] = None
    min_nn_agreement: Optional[float] = None
    min_position_agreement: Optional[float] = None
    min_sequence_agreement: Optional[float] = None
    min_iou: Optional[float] = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is None:
                continue
            check_number(name, value)
            if name == "min_mean_cosine":
                if not -1 <= value <= 1:
                    raise InputDataError(f"got min_mean_cosine={value}; give a cosine in [-1, 1]")
            elif name.startswith("min_"):
                if not 0 <= value <= 1:
                    raise InputDataError(f"got {name}={value}; give a fraction in [0, 1]")
            elif not value >= 0:
                raise InputDataError(f"got {name}={value}; a tolerance must be ≥ 0")

    @property
    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def stated(self) -> dict[str, float]:
        """The limits that are set, by field name."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    def describe(self) -> str:
        parts = [f"{_flag(name)}={value:g}" for name, value in self.stated().items()]
        return ", ".join(parts) if parts else "none given"


TOLERANCE_NAMES = tuple(f.name for f in fields(Tolerances))

# Defaults that mean "the compressed model still does its job" (docs/VALIDATE_AND_BENCH.md gives the
# reasons and the measurements behind each value). A stated limit replaces the default of its figure.
DEFAULT_TOLERANCES: dict[str, Tolerances] = {
    CLASSIFIER: Tolerances(min_top1_agreement=0.90, min_mean_cosine=0.90),
    EMBEDDING: Tolerances(min_mean_cosine=0.95, min_nn_agreement=0.70),
    SEQUENCE: Tolerances(min_position_agreement=0.90, min_mean_cosine=0.90),
    DENSE: Tolerances(min_iou=0.80, min_mean_cosine=0.90),
    REGRESSION: Tolerances(max_mean_rel=0.10),
}


def _flag(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class _Check:
    """One tolerance: which figure it limits, how the figure prints, and which kinds have the figure."""

    tolerance: str
    figure: str
    label: str
    upper: bool  # True: figure ≤ limit; False: figure ≥ limit
    kinds: tuple[str, ...] = KINDS
    fmt: str = ".4f"


CHECKS: tuple[_Check, ...] = (
    _Check("atol", "max_abs_error", "abs", True, fmt=".3g"),
    _Check("rtol", "max_rel_error", "rel", True, fmt=".3g"),
    _Check("max_mean_rel", "mean_rel_error", "mean rel", True, fmt=".3g"),
    _Check("min_mean_cosine", "mean_cosine", "mean cos", False),
    _Check("min_top1_agreement", "top1_agreement", "top1", False, (CLASSIFIER,)),
    _Check("max_accuracy_drop", "accuracy_drop", "accuracy drop", True, (CLASSIFIER,)),
    _Check("min_nn_agreement", "nn_agreement", "nn", False, (EMBEDDING,)),
    _Check("min_position_agreement", "position_agreement", "pos", False, (SEQUENCE,)),
    _Check("min_sequence_agreement", "sequence_agreement", "seq", False, (SEQUENCE,)),
    _Check("min_iou", "iou", "iou", False, (DENSE,)),
)
_CHECK_BY_NAME = {check.tolerance: check for check in CHECKS}


@dataclass(frozen=True)
class AppliedTolerance:
    """One limit checked on one output: its value, whether it is a default, the figure and the verdict."""

    name: str
    limit: float
    default: bool
    value: float
    passed: bool

    def describe(self) -> str:
        return f"{_flag(self.name)}={self.limit:g}"

    def failure(self, kind: str) -> str:
        """``top1=0.2500 < min-top1-agreement=0.9 (default for classifier outputs)``."""
        check = _CHECK_BY_NAME[self.name]
        if math.isnan(self.value):  # (no figure is above or below a NaN: say where it comes from)
            return (f"{check.label}=nan, not within {self.describe()}: one model gives NaN or Inf "
                    "where the other does not")
        text = f"{check.label}={self.value:{check.fmt}} {'>' if check.upper else '<'} {self.describe()}"
        return text + (f" (default for {kind} outputs)" if self.default else "")


@dataclass(frozen=True)
class OutputComparison:
    """Every figure for one graph output (definitions in the module docstring)."""

    name: str
    shape: tuple[int, ...]
    samples: int
    max_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    min_cosine: Optional[float]  # None: one value per sample, whose cosine is only its sign
    mean_cosine: Optional[float]
    top1_agreement: Optional[float] = None
    top5_agreement: Optional[float] = None
    accuracy_original: Optional[float] = None
    accuracy_compressed: Optional[float] = None
    failures: tuple[str, ...] = ()
    kind: str = REGRESSION
    kind_reason: str = ""
    nn_agreement: Optional[float] = None
    position_agreement: Optional[float] = None
    sequence_agreement: Optional[float] = None
    iou: Optional[float] = None
    iou_rule: Optional[str] = None
    applied: tuple[AppliedTolerance, ...] = ()
    unchecked: tuple[str, ...] = ()
    compared_exactly: bool = False  # integer, boolean or string values: rel is the fraction that differ

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def accuracy_drop(self) -> Optional[float]:
        if self.accuracy_original is None or self.accuracy_compressed is None:
            return None
        return self.accuracy_original - self.accuracy_compressed

    @property
    def compared(self) -> bool:
        """Whether any value was compared (not: no batch of one size in both models, or no value left: NaN in
        both, all zeros in both)."""
        return not (self.samples == 0 or (self.max_abs_error != self.max_abs_error
                                          and self.max_rel_error != self.max_rel_error))

    def figures(self) -> str:
        """``rel=… (mean …) abs=… cos=… (mean …)`` and the figures of the output's kind; for integer and
        boolean outputs ``differ=… (mean …)``, the fraction of values that differ (``rel`` holds it)."""
        if not self.compared:
            return "not compared"
        if self.compared_exactly:
            parts = [f"differ={self.max_rel_error:.3g} (mean {self.mean_rel_error:.3g})"]
        else:
            cosine = ("cos=n/a" if self.min_cosine is None  # (one value per sample)
                      else f"cos={self.min_cosine:.6f} (mean {self.mean_cosine:.6f})")
            parts = [f"rel={self.max_rel_error:.3g} (mean {self.mean_rel_error:.3g})", f"abs={self.max_abs_error:.3g}",
                     cosine]
        if self.top1_agreement is not None:
            parts.append(f"top1={self.top1_agreement:.4f}")
        if self.top5_agreement is not None:
            parts.append(f"top5={self.top5_agreement:.4f}")
        if self.accuracy_drop is not None:
            parts.append(f"acc={self.accuracy_original:.4f}->{self.accuracy_compressed:.4f} "
                         f"(drop {self.accuracy_drop:+.4f})")
        if self.kind == EMBEDDING:
            parts.append("nn=n/a" if self.nn_agreement is None else f"nn={self.nn_agreement:.4f}")
        if self.position_agreement is not None:
            parts.append(f"pos={self.position_agreement:.4f} seq={self.sequence_agreement:.4f}")
        elif self.kind == SEQUENCE:  # (no positions: T = 0)
            parts.append("pos=n/a seq=n/a")
        if self.iou is not None:
            parts.append(f"iou={self.iou:.4f}")
        return " ".join(parts)

    def tolerance_text(self) -> str:
        """``tolerance rtol=0.5; default min-top1-agreement=0.9, …`` or ``figures only``."""
        stated = [t.describe() for t in self.applied if not t.default]
        defaults = [t.describe() for t in self.applied if t.default]
        parts = []
        if stated:
            parts.append("tolerance " + ", ".join(stated))
        if defaults:
            parts.append(f"default for {self.kind}: " + ", ".join(defaults))
        parts += list(self.unchecked)
        return "; ".join(parts) if parts else ("no tolerance could be checked" if self.failures else "figures only")

    def line(self) -> str:
        """``PASSED | Output: 'logits' (classifier) | rel=… cos=… top1=… | default for classifier: …``."""
        verdict = "PASSED" if self.passed else "FAILED"
        if not self.applied and not self.failures:
            verdict = "FIGURES"
        text = f"{verdict} | Output: '{self.name}' ({self.kind}) | {self.figures()} | {self.tolerance_text()}"
        if self.failures:
            text += " | " + "; ".join(self.failures)
        return text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["failures"] = list(self.failures)
        data["accuracy_drop"] = self.accuracy_drop
        data["passed"] = self.passed
        data["tolerances"] = [
            {"name": t.name, "flag": f"--{_flag(t.name)}", "limit": t.limit, "default": t.default,
             "value": t.value, "passed": t.passed} for t in self.applied]
        del data["applied"]
        data["unchecked"] = list(self.unchecked)
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
    figures_only: bool = False

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    @property
    def classifier(self) -> Optional[OutputComparison]:
        """The first classifier output, or None."""
        return next((o for o in self.outputs if o.kind == CLASSIFIER), None)

    @property
    def uses_defaults(self) -> bool:
        """True when a default tolerance was checked on some output."""
        return any(t.default for o in self.outputs for t in o.applied)

    def kinds_line(self) -> str:
        """``output kinds: 'logits' classifier (2-D float [N, 10]) (by shape on the first batch; …)``."""
        kinds = "; ".join(f"'{o.name}' {o.kind} ({o.kind_reason})" for o in self.outputs)
        return f"output kinds: {kinds} (by shape on the first batch unless stated; set with --output-kind NAME=KIND)"

    def lines(self) -> list[str]:
        """The header, notes, output kinds, per-output lines and the final verdict, ready to print."""
        lines = [f"validating {self.compressed} against {self.original} on {self.provider} "
                 f"({self.samples} samples from {self.input_source}, batch {self.batch_size})"]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(self.kinds_line())
        lines += [output.line() for output in self.outputs]
        if not self.passed:
            failed = sum(not o.passed for o in self.outputs)
            lines.append(f"FAILED | {failed} of {len(self.outputs)} output(s) missed a tolerance")
        elif self.figures_only:
            lines.append("FIGURES ONLY (--figures-only: no tolerance checked)")
        elif self.uses_defaults:
            lines.append("PASSED (default tolerances where none was stated: see each line; "
                         "docs/VALIDATE_AND_BENCH.md explains them)")
        else:
            lines.append("PASSED")
        return lines

    def failure_message(self) -> str:
        """One line naming the first output and tolerance that failed, with the fix."""
        failed = [o for o in self.outputs if not o.passed]
        if not failed:
            return ""
        first = failed[0]
        total = sum(len(o.failures) for o in failed)
        more = f" (and {total - 1} more)" if total > 1 else ""
        missed = min((t for t in first.applied if not t.passed), key=lambda t: t.default, default=None)
        if missed is None:  # a failure that is no tolerance: a value-sized output of another size, or no value
            fix = ("; compare the outputs before that step (scores, boxes), or check nothing (--figures-only)"
                   if first.failures[0].startswith("size differs") else "")
            return f"output '{first.name}': {first.failures[0]}{more}{fix}"
        if missed.default:
            fix = (f"compress less, state your own limit (--{_flag(missed.name)} X) or check nothing "
                   "(--figures-only)")
            if first.kind in ("sequence", "dense") and first.kind_reason != "--output-kind":  # read off the shape
                fix += f"; if '{first.name}' is not a {first.kind} output, say what it is (--output-kind {first.name}=KIND)"
            elif SORTED_ROWS in first.kind_reason:
                fix += (f"; if '{first.name}' holds a classifier's scores, say so (--output-kind "
                        f"{first.name}={CLASSIFIER})")
        else:
            fix = "relax the tolerance or compress less"
        return f"output '{first.name}': {first.failures[0]}{more}; {fix}"

    def raise_if_failed(self) -> None:
        """Raise :class:`ValidationFailedError` (one line) when a tolerance was missed."""
        if not self.passed:
            raise ValidationFailedError(f"validation failed: {self.failure_message()}")

    def save_json(self, path) -> None:
        """Write :meth:`to_dict` as strict JSON, atomically (an existing file only where it is an earlier
        onnx-alds report: :func:`onnx_alds.report.write_json`), as ``validate --json`` writes it."""
        from .report import write_json

        write_json(self.to_dict(), path)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "original": self.original,
            "compressed": self.compressed,
            "passed": self.passed,
            "figures_only": self.figures_only,
            "tolerances": asdict(self.tolerances),
            "default_tolerances": {kind: tol.stated() for kind, tol in DEFAULT_TOLERANCES.items()},
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
            "versions": library_versions(),  # (also what marks the file as onnx-alds's, to be replaced later)
        }
        if self.figures_only:  # nothing was checked: a script reading "passed" must not read a pass
            data["passed"] = None
            for output in data["outputs"]:
                output["passed"] = None
        return json_safe(data)


def _describe(model: ModelArg, fallback: str) -> str:
    return fallback if isinstance(model, onnx.ModelProto) else str(model)


def effective_batch_size(model: onnx.ModelProto, requested: int, samples: int) -> tuple[int, int, list[str]]:
    """The batch size to run ``model`` at (``requested`` unless an input fixes its first dim), how many of
    the ``samples`` to run, and notes. Where the model fixes its batch, the samples past the last whole
    batch are not run (a note says so, as calibration does); fewer than one batch is an InputDataError."""
    batch = fixed_batch(model)
    if batch is None:
        return requested, samples, []
    if samples < batch:
        raise InputDataError(f"the model fixes the batch to {batch}, but there are {samples} samples; "
                             f"give at least {batch}")
    notes = [f"the model fixes the batch to {batch}; ran at batch {batch}"] if batch != requested else []
    if samples % batch:
        left = samples % batch
        notes.append(f"the last {left} of {samples} samples {'does' if left == 1 else 'do'} not fill a batch of "
                     f"{batch} and {'was' if left == 1 else 'were'} not compared; give a multiple of {batch} to use "
                     "them all")
    return batch, samples - samples % batch, notes


# --------------------------------------------------------------------------------------------------
# Output kinds


def _shape_text(array: np.ndarray) -> str:
    return "[" + ", ".join(["N", *(str(d) for d in array.shape[1:])]) + "]"


def detect_kind(name: str, array: np.ndarray, batched: bool = True, topk_values: bool = False) -> tuple[str, str]:
    """The kind of an output from its first batch in the original model, and the reason in words;
    ``topk_values``: the graph computes it as a TopK's values (:func:`topk_value_outputs`)."""
    if not batched:
        return REGRESSION, "first dim is not the batch"
    if not np.issubdtype(array.dtype, np.floating):
        return REGRESSION, f"{array.dtype} values, {EXACT_COMPARISON}: rel and 1 - cos are the fraction that differ"
    shape = _shape_text(array)
    if array.ndim >= 3 and CACHE_NAME.search(name):
        return REGRESSION, f"{array.ndim}-D float {shape}, name says a key/value cache"
    if array.ndim == 3 and _names_regression(name):
        return REGRESSION, f"3-D float {shape}, name says boxes or a regression head"
    if array.ndim >= 3 and _names_value_map(name):
        return REGRESSION, f"{array.ndim}-D float {shape}, name says a depth, disparity or flow map"
    if topk_values and array.ndim in (2, 3):
        return REGRESSION, (f"{array.ndim}-D float {shape}, {SORTED_ROWS} (a TopK's values): its arg-max is a fixed "
                            "column, so an agreement of arg-maxes would be 1 for any model")
    if array.ndim == 2 and array.shape[1] >= 2:
        rows = array.astype(np.float64)
        if np.all((rows >= 0) & (rows <= 1)) and np.all(np.abs(rows.sum(axis=1) - 1) <= NORM_TOLERANCE):
            return CLASSIFIER, f"2-D float {shape}, rows are probabilities"
        if EMBEDDING_NAME.search(name):  # (before the boxes: a bbox_embedding is an embedding)
            return EMBEDDING, f"2-D float {shape}, name says embedding"
        if _names_regression(name):  # (before unit rows: unit quaternions, normalized boxes)
            return REGRESSION, f"2-D float {shape}, name says boxes or a regression head"
        if np.all(np.abs(np.linalg.norm(rows, axis=1) - 1) <= NORM_TOLERANCE):
            return EMBEDDING, f"2-D float {shape}, rows of unit L2 norm"
        if _sorted_beyond_chance(rows):
            return REGRESSION, (f"2-D float {shape}, {SORTED_ROWS} (a sort's values?): its arg-max is a fixed column, "
                                "so top-1 agreement would be 1 for any model")
        return CLASSIFIER, f"2-D float {shape}"
    if array.ndim == 3 and array.shape[2] >= 2:
        return SEQUENCE, f"3-D float {shape}"
    if array.ndim == 4:
        return DENSE, f"4-D float {shape}, channels on axis 1"
    return REGRESSION, f"{array.ndim}-D float {shape}"


SORTED_BY_CHANCE = 1e-3  # rows of scores in random order are all sorted with at most this probability


def _sorted_beyond_chance(rows: np.ndarray) -> bool:
    """Whether every row is monotone (non-increasing or non-decreasing) along axis 1 where scores in random
    order would rarely be: ``R`` rows of ``C`` distinct values are all monotone with probability
    ``(2 / C!)^R``, which must be ≤ :data:`SORTED_BY_CHANCE` (C = 3 needs 7 rows, C = 5 two, C ≥ 7 one; with
    2 columns every row is monotone). Such rows are TopK values or a sort's output, whose arg-max is always
    the first or last column, not a classifier's scores."""
    rows = rows[np.ptp(rows, axis=1) > 0]  # (a constant row, zeros on a padded input, is no sign of a sort)
    count, classes = rows.shape
    if classes < 3 or count * (math.lgamma(classes + 1) - math.log(2)) < -math.log(SORTED_BY_CHANCE):
        return False
    steps = np.diff(rows, axis=1)
    return bool(np.all(np.all(steps <= 0, axis=1) | np.all(steps >= 0, axis=1)))


TOPK_PASSTHROUGH = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze")  # keep a TopK's row order


def topk_value_outputs(model: onnx.ModelProto) -> frozenset[str]:
    """Graph outputs that are a TopK's values (its first output, through :data:`TOPK_PASSTHROUGH` ops): sorted
    along the last axis by construction, whatever the batch shows."""
    producers = {out: node for node in model.graph.node for out in node.output if out}
    found = set()
    for output in model.graph.output:
        name, node = output.name, producers.get(output.name)
        while node is not None and node.op_type in TOPK_PASSTHROUGH and node.input:
            name, node = node.input[0], producers.get(node.input[0])
        if node is not None and node.op_type == "TopK" and node.output[0] == name:
            found.add(output.name)
    return frozenset(found)


_CLASS_AXIS_DEPTH = 64  # ops walked back from an output at most


def output_channel_axes(model: onnx.ModelProto) -> dict[str, tuple[Optional[int], str]]:
    """Where the graph puts the channels of each 4-D graph output: ``name -> (axis, evidence)`` with axis 1
    or 3, or ``None`` where the graph rearranges the output's axes (a Transpose) on the way from where they
    are set and the walk cannot follow it. Walking back from the output through element-wise ops (pruning's
    per-channel ops, :data:`onnx_alds.prune.UNARY_OPS`, and Cast, Clip …; Add, Mul, Concat … of computed
    tensors that agree), ops that keep every axis where it is (Resize, Slice, Pad, pooling), Transposes and
    one-operand Einsums of any rank (their perms composed) and Reshapes (Flatten, Squeeze, Unsqueeze: by the
    inferred shapes, the axis of the same size with as many elements after it, as row-major order keeps
    it), the channel axis is where a Softmax or LogSoftmax normalizes, a Conv or ConvTranspose writes its
    channels (axis 1) or a MatMul with a constant right-hand weight its features (the last axis, unless its
    input's channels are on another axis, which it keeps: a channels-first map's spatial axis mixed). Outputs
    with no evidence either way are left out (read with channels on axis 1)."""
    from .prune import BINARY_OPS, UNARY_OPS

    # element by element on their first input (the layout stays); then of several inputs
    passthrough = UNARY_OPS + ("Cast", "Clip", "Log", "Dropout", "Sign", "PRelu", "Shrink", "Resize", "Upsample",
                               "Slice", "Pad", "MaxPool", "AveragePool", "LpPool")
    joins = BINARY_OPS + ("Sum", "Mean", "Concat", "Where")
    producers = {out: node for node in model.graph.node for out in node.output if out}
    constants = {t.name for t in model.graph.initializer} | {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 13)
    default_axis = -1 if opset >= 13 else 1  # (Softmax's axis when not written: the last from opset 13)
    memo: dict[str, Optional[tuple[int, str]]] = {}
    inferred: list[dict[str, list[Any]]] = []

    def dims_of(name: str) -> Optional[list[Any]]:
        """The inferred dims of a tensor (ints, dim names, or None where not known); None: no shape."""
        if not inferred:
            from .shapes import static_copy

            try:  # (on a copy whose large weights are stubs: inference reads their dims only)
                graph = onnx.shape_inference.infer_shapes(static_copy(model, {}, stub_weights=True),
                                                          strict_mode=False).graph
                values = list(graph.value_info) + list(graph.input) + list(graph.output)
            except Exception:  # noqa: BLE001 - any failure only means the shapes are not known
                values = []
            inferred.append({value.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                          for d in value.type.tensor_type.shape.dim]
                             for value in values if value.type.tensor_type.HasField("shape")})
        return inferred[0].get(name)

    def rank_of(name: str) -> Optional[int]:
        dims = dims_of(name)
        return None if dims is None else len(dims)

    def reshaped_axis(node: onnx.NodeProto, axis: int) -> Optional[int]:
        """Where a Reshape (Flatten, Squeeze, Unsqueeze) puts the input's axis ``axis``: the output axis of the
        same dim with the same count of elements after it (row-major order, so the index along it is kept);
        None where the inferred shapes do not tell."""
        before, after = dims_of(node.input[0]), dims_of(node.output[0])
        if not before or not after or not -len(before) <= axis < len(before):
            return None
        axis %= len(before)

        def suffix(dims: list, start: int) -> Optional[int]:
            rest = dims[start:]
            return int(np.prod(rest)) if all(isinstance(d, int) and d > 0 for d in rest) else None

        size, tail = before[axis], suffix(before, axis + 1)
        if size is None or tail is None:
            return None
        return next((j for j in range(len(after)) if after[j] == size and suffix(after, j + 1) == tail), None)

    def einsum_axis(node: onnx.NodeProto, axis: int) -> Optional[int]:
        """Where a one-operand Einsum (``nchw->nhwc``) puts the operand's axis ``axis``; None otherwise."""
        equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "").replace(" ", "")
        operand, arrow, result = equation.partition("->")
        if not arrow or "," in operand or "." in equation or not -len(operand) <= axis < len(operand):
            return None
        letter = operand[axis % len(operand)]
        return result.index(letter) if result.count(letter) == 1 and operand.count(letter) == 1 else None

    def moved(inner: Optional[tuple[int, str]], axis: Optional[int], how: str = "transposed"
              ) -> Optional[tuple[int, str]]:
        if inner is None or axis is None:
            return None
        return axis, inner[1] if inner[1].endswith(f", {how}") else f"{inner[1]}, {how}"

    def channel_axis(name: str, depth: int) -> Optional[tuple[int, str]]:
        """The channel axis of the tensor ``name`` (from its start, or negative: from its end, where its rank
        is not known) and what says so, or None (not known)."""
        if name in memo:
            return memo[name]
        memo[name] = None  # (a cycle cannot be followed)
        node = producers.get(name)
        found: Optional[tuple[int, str]] = None
        if node is None or depth > _CLASS_AXIS_DEPTH or node.domain not in ("", "ai.onnx"):
            pass
        elif node.op_type in ("Softmax", "LogSoftmax"):
            axis = next((a.i for a in node.attribute if a.name == "axis"), default_axis)
            found = (axis, f"a {node.op_type} over it")
        elif node.op_type in ("Conv", "ConvTranspose"):
            found = (1, f"a {node.op_type}'s channels")
        elif node.op_type == "MatMul" and len(node.input) == 2:
            inner = channel_axis(node.input[0], depth + 1)
            rank = rank_of(node.input[0])
            last = inner is not None and (inner[0] == -1 or (rank is not None and inner[0] % rank == rank - 1))
            if node.input[1] in constants:  # x @ W: its features on the last axis; x's other axes stay
                found = inner if inner is not None and not last else (-1, "a MatMul's features")
            elif node.input[0] in constants:  # W @ x mixes the second-last axis: an axis before it stays
                found = inner if inner is not None and rank is not None and inner[0] % rank < rank - 2 else None
            else:
                found = (-1, "a MatMul's features")
        elif node.op_type == "Transpose" and node.input:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            inner = channel_axis(node.input[0], depth + 1)
            rank = len(perm) if perm is not None else rank_of(node.input[0])
            if perm is None and rank is not None:
                perm = list(range(rank))[::-1]
            if inner is not None and perm is not None and -len(perm) <= inner[0] < len(perm):
                found = moved(inner, perm.index(inner[0] % len(perm)))
        elif node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") and node.input:
            inner = channel_axis(node.input[0], depth + 1)
            axis = None if inner is None else reshaped_axis(node, inner[0])
            before, after = dims_of(node.input[0]) or [], dims_of(node.output[0]) or []
            kept = axis is not None and len(before) == len(after) and axis == inner[0] % len(before)
            found = inner if kept else moved(inner, axis, "reshaped")  # (kept in place: nothing to name)
        elif node.op_type == "Einsum" and len(node.input) == 1:
            inner = channel_axis(node.input[0], depth + 1)
            found = None if inner is None else moved(inner, einsum_axis(node, inner[0]))
        elif node.op_type in passthrough and node.input:
            found = channel_axis(node.input[0], depth + 1)
        elif node.op_type in joins:
            seen = {channel_axis(i, depth + 1) for i in node.input if i and i not in constants}
            rank = rank_of(node.output[0])
            axes = {item[0] % rank if rank else item[0] for item in seen if item is not None}
            found = next((item for item in seen if item is not None), None) if len(axes) == 1 else None
        memo[name] = found
        return found

    def rearranged_on_the_way(name: str) -> Optional[str]:
        """The first Transpose (or one-operand Einsum) that moves axes between the output and the ops that set
        its layout."""
        queue, seen = [name], {name}
        while queue:
            node = producers.get(queue.pop(0))
            if node is None or node.op_type in ("Conv", "ConvTranspose", "Softmax", "LogSoftmax", "MatMul", "Gemm"):
                continue
            if node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                if perm is None or perm != sorted(perm):
                    return node.name or node.output[0]
            if node.op_type == "Einsum" and len(node.input) == 1:
                return node.name or node.output[0]
            for value in node.input:
                if value and value not in constants and value not in seen and len(seen) < 4 * _CLASS_AXIS_DEPTH:
                    seen.add(value)
                    queue.append(value)
        return None

    result: dict[str, tuple[Optional[int], str]] = {}
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim if output.type.HasField("tensor_type") else ()
        if output.type.tensor_type.HasField("shape") and len(dims) != 4:
            continue
        found = channel_axis(output.name, 0)
        if found is not None and -4 <= found[0] < 4 and found[0] % 4 in (1, 3):
            result[output.name] = (found[0] % 4, found[1])
        elif found is not None:  # on axis 2 (rows and channels swapped), or not an axis of a 4-D output
            where = f"on axis {found[0] % 4}" if -4 <= found[0] < 4 else "outside its 4 axes"
            result[output.name] = (None, f"the graph puts its channels {where} ({found[1]}), where neither "
                                         "a [N, C, H, W] nor a [N, H, W, C] reading finds them")
        elif found is None:
            transpose = rearranged_on_the_way(output.name)
            if transpose is not None:
                result[output.name] = (None, f"the Transpose '{transpose}' rearranges its axes on the way and "
                                             "the graph does not show where its channels end up")
    return result


def channels_last_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """4-D graph outputs whose channels are on the last axis (NHWC: Keras and TensorFlow exports), and the
    graph's evidence for it (:func:`output_channel_axes`)."""
    return {name: f"the graph puts its channels on the last axis ({why})"
            for name, (axis, why) in output_channel_axes(model).items() if axis == 3}


_KIND_NEEDS = {
    CLASSIFIER: "a 2-D float output [N, C] with C ≥ 2",
    EMBEDDING: "a 2-D or 3-D float output ([N, D] or [N, T, D])",
    SEQUENCE: "a 3-D float output [N, T, C] with C ≥ 2",
    DENSE: "a float output of rank ≥ 3 with channels on axis 1 ([N, C, H, W])",
}


def _kind_fits(kind: str, rank: Optional[int], floating: Optional[bool], last: Optional[int]) -> bool:
    """Whether a stated kind fits an output of this rank, dtype and last dim (None: not known)."""
    if kind == REGRESSION:
        return True
    if floating is False:
        return False
    if rank is None:
        return True
    if kind == CLASSIFIER:
        return rank == 2 and (last is None or last >= 2)
    if kind == EMBEDDING:
        return rank in (2, 3)
    if kind == SEQUENCE:
        return rank == 3 and (last is None or last >= 2)
    return rank >= 3


def _check_stated_kind(name: str, kind: str, rank: Optional[int], floating: Optional[bool], last: Optional[int],
                       described: str) -> None:
    if not _kind_fits(kind, rank, floating, last):
        raise InputDataError(
            f"--output-kind {name}={kind} needs {_KIND_NEEDS[kind]}, but output '{name}' is {described}; "
            "choose another kind"
        )


def _declared_output(value: onnx.ValueInfoProto) -> tuple[Optional[int], Optional[bool], Optional[int]]:
    """(rank, is float, last dim) as the graph declares them; None where not declared."""
    tensor = value.type.tensor_type
    floating = None
    if tensor.elem_type:
        floating = np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type), np.floating)
    if not tensor.HasField("shape"):
        return None, floating, None
    dims = tensor.shape.dim
    last = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value > 0 else None
    return len(dims), floating, last


def check_output_kinds(model: onnx.ModelProto, output_kinds: Mapping[str, str]) -> None:
    """Stated kinds must name graph outputs, be known kinds and fit the declared rank and dtype."""
    outputs = {o.name: o for o in model.graph.output}
    for name, kind in output_kinds.items():
        if kind not in KINDS:
            raise InputDataError(f"unknown output kind '{kind}' for '{name}'; choose one of: {', '.join(KINDS)}")
        if name not in outputs:
            raise InputDataError(
                f"--output-kind names '{name}', which is not a graph output; outputs are: {', '.join(outputs)}"
            )
        which = outputs[name].type.WhichOneof("value")
        if which not in (None, "tensor_type"):  # sequences, maps, optionals: validate does not compare them
            raise InputDataError(
                f"--output-kind {name}={kind}: output '{name}' is a {which.replace('_type', '')}, not a tensor; "
                "validate compares tensor outputs only (it reports this one as not compared): drop the flag")
        rank, floating, last = _declared_output(outputs[name])
        described = f"declared {'float' if floating else 'non-float'} of rank {rank}" + (
            f", last dim {last}" if last is not None else "")
        _check_stated_kind(name, kind, rank, floating, last, described)


# --------------------------------------------------------------------------------------------------
# Figures


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def nearest_neighbour_agreement(original: np.ndarray, compressed: np.ndarray) -> float:
    """Fraction of samples whose nearest other sample by cosine similarity is the same for both.

    ``original`` and ``compressed`` are ``(samples, dims)`` embeddings; a neighbour tied with the original's
    nearest (within :data:`NN_TIE`: copies of one sample) agrees; the cosines are computed in float64
    (embeddings sharing a large common component have cosines within float32's rounding of each other), and
    the similarity matrix in row blocks of at most ~8 M entries, so memory stays bounded by the embeddings.
    """
    a, b = _unit_rows(original.astype(np.float64)), _unit_rows(compressed.astype(np.float64))
    n = len(a)
    block = max(1, min(n, (1 << 23) // max(n, 1)))
    matches = 0
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = np.arange(stop - start)
        sim_a, sim_b = a[start:stop] @ a.T, b[start:stop] @ b.T
        sim_a[rows, rows + start] = -np.inf
        sim_b[rows, rows + start] = -np.inf
        chosen = np.argmax(sim_b, axis=1)  # a neighbour tied for nearest in the original counts (repeated samples)
        matches += int(np.sum(sim_a[rows, chosen] >= sim_a.max(axis=1) - NN_TIE))
    return matches / n


NN_TIE = 1e-12  # original cosines this close are the same neighbour (copies of one sample), not a near tie


class _Accumulator:
    """Running figures of one output over the batches: memory bounded by one batch (plus embeddings)."""

    def __init__(self, name: str, kind: str, reason: str, *, batched: bool, labels: Optional[np.ndarray],
                 shape: tuple[int, ...]) -> None:
        self.name, self.kind, self.reason, self.batched, self.shape = name, kind, reason, batched, shape
        self.labels = labels  # all labels of the set, for the first classifier output only
        self.samples = 0
        self.max_abs = 0.0
        self.rel: list[np.ndarray] = []
        self.cos: list[np.ndarray] = []
        self.top1 = self.top5 = self.correct_o = self.correct_c = 0
        self.unpredicted = 0  # classifier rows where the original has no prediction (left out of top1/top5)
        self.classes = 0
        self.embeddings_o: list[np.ndarray] = []
        self.embeddings_c: list[np.ndarray] = []
        self.pooled_with_mask = False
        self.positions = self.position_matches = self.sequence_matches = 0
        self.binary = False  # dense with one channel: counts for the thresholds (0.5, 0), else per class
        self.cells = 0  # dense: mask cells seen (pixels of every sample)
        self.original_on: Optional[np.ndarray] = None  # dense: the original's mask cells on (per threshold / class)
        self.channels_last = False  # dense: channels on the last axis (NHWC), read there
        self.intersection: Optional[np.ndarray] = None
        self.union: Optional[np.ndarray] = None
        self.labels_checked = False
        self.original_min, self.original_max = math.inf, -math.inf
        self.shared_nonfinite = 0  # NaN/Inf values of the original that the compressed model gives too
        self.both_zero = 0  # samples whose output is all zeros in both models: no figure of their own
        self.empty_samples = 0  # samples whose output holds no values at all (a zero-length dim)
        self.float_values = 0  # float values seen (when all are shared NaN/Inf, nothing was compared)
        # samples whose original output is all zeros but the compressed one's is not: their relative error is
        # taken against the output's mean norm over the other samples (dividing by 0 would fail any tolerance)
        self.zero_reference: list[np.ndarray] = []
        self.reference_norm_sum, self.reference_count = 0.0, 0
        self.compared_exactly = False  # integer, boolean or string values (:meth:`_add_exact`)
        self.single_values = True  # every float sample so far holds one value: its cosine is only its sign
        # the original's first sample's values, and how far any other sample's moved from them (relative):
        # an original that gives the same output for every input makes every figure say nothing
        self.first_row: Optional[np.ndarray] = None
        self.input_spread = 0.0

    def add(self, original: np.ndarray, compressed: np.ndarray,
            feed: Optional[Mapping[str, np.ndarray]] = None) -> None:
        """Fold one batch (``original`` and ``compressed`` outputs of the same inputs) into the figures."""
        if original.shape != compressed.shape:
            raise UnsupportedModelError(
                f"output '{self.name}' has shape {original.shape} in the original and {compressed.shape} in the "
                "compressed model; compare a model with one compressed from it"
            )
        start = self.samples
        numbers = all(np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_ for a in (original, compressed))
        floats = numbers and np.issubdtype(original.dtype, np.floating)
        o = original.astype(np.float64, copy=False) if numbers else original
        c = compressed.astype(np.float64, copy=False) if numbers else compressed
        raw_o, raw_c = o, c  # the arg-max figures read the values as they are (a masked class's -inf included)
        aside = None  # per sample: every value set aside (nothing of it compared)
        if floats and o.size:
            self.float_values += o.size
            o, c, shared = self._set_aside_shared_nonfinite(o, c)
            if shared is not None:
                aside = (shared.reshape(shared.shape[0], -1) if self.batched else shared.reshape(1, -1)).all(axis=1)
        if numbers and o.size:
            self.max_abs = float(np.max([self.max_abs, np.max(np.abs(c - o))]))  # (NaN stays NaN: max() drops it)
        elif o.size and np.any(original != compressed):  # strings: no distance; a differing one is beyond any atol
            self.max_abs = math.inf
        if not floats:
            self._add_exact(original, compressed)  # labels, strings, flags: a distance means nothing
            return
        if self.kind == EMBEDDING:
            o, c = self._embedding_rows(o, feed), self._embedding_rows(c, feed)
            self.embeddings_o.append(o.astype(np.float32))
            self.embeddings_c.append(c.astype(np.float32))
        rows_o = o.reshape(o.shape[0], -1) if self.batched else o.reshape(1, -1)
        rows_c = c.reshape(rows_o.shape)
        self.samples += rows_o.shape[0]
        self.single_values &= rows_o.shape[1] == 1
        self._add_spread(rows_o)
        self._add_rel_cos(rows_o, rows_c, skip=aside if aside is not None and len(aside) == rows_o.shape[0] else None)
        if self.kind == CLASSIFIER:
            self._add_classifier(raw_o.reshape(rows_o.shape), raw_c.reshape(rows_o.shape), start)
        elif self.kind == SEQUENCE:
            pred_o, pred_c = np.argmax(raw_o, axis=-1), np.argmax(raw_c, axis=-1)
            same = pred_o == pred_c
            self.positions += same.size
            self.position_matches += int(np.sum(same))
            self.sequence_matches += int(np.sum(np.all(same.reshape(same.shape[0], -1), axis=1)))
        elif self.kind == DENSE:
            if self.channels_last:
                raw_o, raw_c = np.moveaxis(raw_o, -1, 1), np.moveaxis(raw_c, -1, 1)
            self._add_dense(raw_o, raw_c)

    def _add_spread(self, rows: np.ndarray) -> None:
        """Fold one batch's rows of the original into :attr:`input_spread`: the largest ``‖row − first‖ /
        ‖first‖`` over the samples, ``first`` the first sample's row (rows of another size: left out)."""
        if self.first_row is None and len(rows) and rows.shape[1] and np.all(np.isfinite(rows[0])):
            self.first_row = rows[0].copy()
        if self.first_row is None or rows.shape[1] != self.first_row.shape[0]:
            return
        norm = float(np.linalg.norm(self.first_row))
        with np.errstate(all="ignore"):
            moved = np.linalg.norm(rows - self.first_row, axis=1)
        self.input_spread = max(self.input_spread, float(np.nanmax(moved, initial=0.0)) / norm if norm > 0 else
                                math.inf if np.any(moved > 0) else 0.0)

    def _set_aside_shared_nonfinite(self, o: np.ndarray, c: np.ndarray
                                    ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Where the original is NaN or Inf and the compressed model gives the same value (it is the
        original's own, not the compression's), both read 0: the figures compare the rest, and
        :attr:`shared_nonfinite` counts them for a note. A non-finite value the compressed model does not
        share stays, and fails the figures. Also returns the mask of the values set aside (None: none)."""
        shared = ~np.isfinite(o) & ((np.isnan(o) & np.isnan(c)) | (o == c))
        if not shared.any():
            return o, c, None
        self.shared_nonfinite += int(shared.sum())
        return np.where(shared, 0.0, o), np.where(shared, 0.0, c), shared

    def _add_exact(self, original: np.ndarray, compressed: np.ndarray) -> None:
        """Labels, indices, strings, flags: the fraction of entries that differ per sample."""
        self.compared_exactly = True
        rows_o = original.reshape(original.shape[0], -1) if self.batched else original.reshape(1, -1)
        rows_c = compressed.reshape(rows_o.shape)
        self.samples += rows_o.shape[0]
        differ = (rows_o != rows_c).mean(axis=1) if rows_o.shape[1] else np.zeros(rows_o.shape[0])
        self.rel.append(differ)
        self.cos.append(1.0 - differ)

    def _embedding_rows(self, x: np.ndarray, feed: Optional[Mapping[str, np.ndarray]]) -> np.ndarray:
        if x.ndim == 2:
            return x
        mask = None if feed is None else feed.get(ATTENTION_MASK)
        if mask is not None and mask.shape == x.shape[:2]:
            weights = mask.astype(np.float64)[:, :, None]
            self.pooled_with_mask = True
            return (x * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return x.mean(axis=1)

    def _add_rel_cos(self, o: np.ndarray, c: np.ndarray, skip: Optional[np.ndarray] = None) -> None:
        """Relative error and cosine per row; rows in ``skip`` (every value a NaN or Inf both models share)
        have no figure of their own."""
        if skip is not None and skip.any():
            o, c = o[~skip], c[~skip]
        tiny = np.finfo(np.float64).tiny
        # each row over its largest magnitude (both models'), so that the sums of squares neither underflow
        # (float64 values below about 1e-154) nor overflow (above 1e154); the norms are scaled back where kept
        largest = np.maximum(np.abs(o).max(axis=1, initial=0.0), np.abs(c).max(axis=1, initial=0.0))
        scale = np.where(np.isfinite(largest) & (largest > 0), largest, 1.0)[:, None]
        o, c = o / scale, c / scale
        diff_norm = np.linalg.norm(c - o, axis=1)
        ref_norm = np.linalg.norm(o, axis=1)
        cmp_norm = np.linalg.norm(c, axis=1)
        zero = (ref_norm == 0) & (diff_norm > 0)  # no relative error or cosine of its own: set aside
        nonzero = ref_norm > 0
        self.reference_norm_sum += float(np.sum((ref_norm * scale[:, 0])[nonzero]))
        self.reference_count += int(np.sum(nonzero))
        self.zero_reference.append((diff_norm * scale[:, 0])[zero])
        if o.shape[1] == 0:  # rows of no values (an input of a zero-length dim): nothing compared, no figure
            self.empty_samples += len(o)
            return
        both_zero = (ref_norm == 0) & (cmp_norm == 0)  # equal, on an input that says nothing
        self.both_zero += int(both_zero.sum())
        keep = ~zero & ~both_zero
        self.rel.append((diff_norm / np.maximum(ref_norm, tiny))[keep])
        self.cos.append((np.sum(o * c, axis=1) / np.maximum(ref_norm * cmp_norm, tiny))[keep])

    @property
    def zero_reference_samples(self) -> int:
        """Samples whose original output is all zeros and the compressed one's is not."""
        return int(sum(len(d) for d in self.zero_reference))

    @property
    def reference_scale(self) -> float:
        """The mean norm of the original's output over the samples where it is not all zeros (0: none)."""
        return self.reference_norm_sum / self.reference_count if self.reference_count else 0.0

    def _zero_reference_rel(self) -> np.ndarray:
        """The relative errors of the samples whose original output is all zeros: their difference's norm over
        :attr:`reference_scale` (inf when every sample of the original is zeros)."""
        diff = np.concatenate(self.zero_reference) if self.zero_reference else np.zeros(0)
        scale = self.reference_scale
        return diff / scale if scale > 0 else np.full(diff.shape, np.inf)

    def _add_classifier(self, o: np.ndarray, c: np.ndarray, start: int) -> None:
        self.classes = o.shape[1]
        # a class the original scores NaN (its own, shared or not) is never its prediction; a NaN of the
        # compressed model that the original lacks leaves that sample agreeing on nothing
        o_read = np.where(np.isnan(o), -np.inf, o)
        c_read = np.where(np.isnan(c) & np.isnan(o), -np.inf, c)
        broken = np.isnan(c_read).any(axis=1)
        c_read = np.where(np.isnan(c_read), -np.inf, c_read)
        known_o, known_c = _has_prediction(o_read), _has_prediction(c_read) & ~broken
        pred_o, pred_c = np.argmax(o_read, axis=1), np.argmax(c_read, axis=1)
        self.unpredicted += int(np.sum(~known_o))  # the original has no prediction there: nothing to agree with
        self.top1 += int(np.sum((pred_o == pred_c) & known_o & known_c))
        if self.classes > 5:
            # the original's class scores above all but at most 4 other classes, ties counted against it (a
            # saturated output's run of equal zeros is no hit), or is the compressed model's top-1 (top-5 >= top-1)
            score = c_read[np.arange(len(c_read)), pred_o][:, None]
            others_at_least = np.sum(c_read >= score, axis=1) - 1
            self.top5 += int(np.sum(((others_at_least < 5) | (pred_o == pred_c)) & known_o & known_c))
        if self.labels is not None:
            if not self.labels_checked:
                check_label_range(self.labels, self.name, self.classes)
                self.labels_checked = True
            labels = self.labels[start:start + len(pred_o)]
            self.correct_o += int(np.sum((pred_o == labels) & known_o))
            self.correct_c += int(np.sum((pred_c == labels) & known_c))

    def _add_dense(self, o: np.ndarray, c: np.ndarray) -> None:
        channels = o.shape[1]
        self.binary = channels == 1
        if self.binary:
            if o.size:
                self.original_min = min(self.original_min, float(o.min()))
                self.original_max = max(self.original_max, float(o.max()))
            inter, union = [], []
            for threshold in (0.5, 0.0):
                mask_o, mask_c = o > threshold, c > threshold
                inter.append(int(np.sum(mask_o & mask_c)))
                union.append(int(np.sum(mask_o | mask_c)))
            batch_inter, batch_union = np.asarray(inter, np.int64), np.asarray(union, np.int64)
            batch_on = np.asarray([int(np.sum(o > threshold)) for threshold in (0.5, 0.0)], np.int64)
        else:
            map_o, map_c = np.argmax(o, axis=1).ravel(), np.argmax(c, axis=1).ravel()
            batch_inter = np.bincount(map_o[map_o == map_c], minlength=channels)
            batch_on = np.bincount(map_o, minlength=channels)
            batch_union = batch_on + np.bincount(map_c, minlength=channels) - batch_inter
        self.cells += int(o.size if self.binary else map_o.size)
        self.original_on = batch_on if self.original_on is None else self.original_on + batch_on
        self.intersection = batch_inter if self.intersection is None else self.intersection + batch_inter
        self.union = batch_union if self.union is None else self.union + batch_union

    def settle_kind(self) -> None:
        """Judge a dense output by its values (as regression) where the original's masks hold one value at
        every pixel of every sample (every value above the threshold, none, or one class everywhere): the IoU
        then tells nothing of the model (1 for any scale where the compressed model's masks are the same, near
        1 where a few pixels differ), so a value map not named as one (a depth or disparity map: positive
        everywhere) passed at 3x; a kind stated with --output-kind stays."""
        if self.kind != DENSE or self.reason in ("--output-kind", "given") or self.original_on is None:
            return
        if self.binary:
            pick = 0 if self.original_min >= 0 and self.original_max <= 1 else 1
            threshold = "0.5" if pick == 0 else "0"
            on = int(self.original_on[pick])
            if 0 < on < self.cells:
                return
            held = f"every value above {threshold}" if on else f"no value above {threshold}"
        else:
            present = np.flatnonzero(self.original_on > 0)
            if len(present) != 1:
                return
            held = f"channel {int(present[0])} the arg-max at every pixel"
        self.kind = REGRESSION
        self.reason += (f"; judged as regression: in the original its masks hold {held} at every pixel of every "
                        "sample, where the IoU tells nothing of the model (a value map: depth, disparity?); state "
                        f"--output-kind {self.name}=dense to keep the IoU")

    def _iou(self) -> tuple[Optional[float], Optional[str]]:
        if self.intersection is None or self.union is None:
            return None, None
        if self.binary:
            probabilities = self.original_min >= 0 and self.original_max <= 1
            pick = 0 if probabilities else 1
            rule = ("mask = value > 0.5 (original values in [0, 1]: probabilities)" if probabilities
                    else "mask = value > 0, i.e. sigmoid > 0.5 (original values outside [0, 1]: logits)")
            union = int(self.union[pick])
            return (1.0 if union == 0 else int(self.intersection[pick]) / union), rule
        present = self.union > 0
        rule = f"mean over the classes present of the IoU of the arg-max over {len(self.union)} channels"
        if not np.any(present):
            return 1.0, rule
        return float(np.mean(self.intersection[present] / self.union[present])), rule

    def _single_values(self) -> bool:
        """Float samples of one value each ([N], [N, 1], a scalar per batch): no cosine, only a relative error."""
        return self.single_values and self.float_values > 0

    def _unmeasured(self, figure: str) -> Optional[str]:
        """Why ``figure`` has no value on this output, where the data say why (None: not known)."""
        if figure == "mean_cosine" and self._single_values():
            return "one value per sample: its cosine is only the sign"
        if figure == "nn_agreement":
            return f"needs ≥ {MIN_NN_SAMPLES} samples"
        if figure in ("position_agreement", "sequence_agreement") and self.samples and not self.positions:
            return "no positions: T = 0"
        return None

    def result(self, limits: Mapping[str, tuple[float, bool]]) -> OutputComparison:
        """The figures, checked against ``limits`` (tolerance name → (limit, is default))."""
        rel = np.concatenate(self.rel + [self._zero_reference_rel()]) if self.rel else np.zeros(0)
        cos = np.concatenate(self.cos) if self.cos else np.zeros(0)
        # (every sample zero in the original and not in the compressed model: no direction agrees, cosine 0)
        no_cosine = 0.0 if self.zero_reference_samples else 1.0
        figures: dict[str, Any] = dict(
            max_abs_error=self.max_abs, max_rel_error=float(np.max(rel)) if rel.size else 0.0,
            mean_rel_error=float(np.mean(rel)) if rel.size else 0.0,
            min_cosine=float(np.min(cos)) if cos.size else no_cosine,
            mean_cosine=float(np.mean(cos)) if cos.size else no_cosine)
        if self._single_values():
            figures["min_cosine"] = figures["mean_cosine"] = None
        reason = self.reason
        nothing = None  # why no value is left to compare
        if self.float_values and self.shared_nonfinite >= self.float_values:
            nothing = (f"every value is NaN or Inf in both models ({self.shared_nonfinite} values): nothing to "
                       "compare; give inputs on which the original computes finite outputs")
        elif self.both_zero and not any(len(rows) for rows in self.rel) and not self.zero_reference_samples:
            nothing = (f"{ALL_ZEROS} ({self.both_zero} samples): nothing to compare; give inputs on which the "
                       "original's output is not zero")
        elif self.empty_samples and not any(len(rows) for rows in self.rel) and not self.zero_reference_samples:
            nothing = (f"the output holds no values on any sample ({self.empty_samples} samples, a zero-length dim): "
                       "nothing to compare; give inputs whose dims make it hold values")
        if nothing:
            figures = {name: math.nan for name in figures}
            return OutputComparison(
                name=self.name, shape=self.shape, samples=self.samples, kind=self.kind, kind_reason=reason,
                compared_exactly=self.compared_exactly, failures=(nothing,) if limits else (), **figures)
        if self.kind == CLASSIFIER and self.samples:
            graded = self.samples - self.unpredicted
            figures["top1_agreement"] = self.top1 / graded if graded else math.nan
            if self.classes > 5:
                figures["top5_agreement"] = self.top5 / graded if graded else math.nan
            if self.labels is not None:
                figures["accuracy_original"] = self.correct_o / self.samples
                figures["accuracy_compressed"] = self.correct_c / self.samples
        elif self.kind == EMBEDDING:
            if self.samples >= MIN_NN_SAMPLES:
                figures["nn_agreement"] = nearest_neighbour_agreement(np.concatenate(self.embeddings_o),
                                                                      np.concatenate(self.embeddings_c))
            if self.embeddings_o and len(self.shape) == 2:
                reason += (f"; mean-pooled over axis 1 weighted by input '{ATTENTION_MASK}'" if self.pooled_with_mask
                           else "; mean-pooled over axis 1")
        elif self.kind == SEQUENCE and self.positions:  # (no positions, T = 0: nothing to agree on, not measured)
            figures["position_agreement"] = self.position_matches / self.positions
            figures["sequence_agreement"] = self.sequence_matches / self.samples
        elif self.kind == DENSE:
            figures["iou"], figures["iou_rule"] = self._iou()
        applied, unchecked = [], []
        for name, (limit, default) in limits.items():
            check = _CHECK_BY_NAME[name]
            if self.kind not in check.kinds:
                continue
            value = figures.get(check.figure)
            if check.figure == "accuracy_drop" and "accuracy_original" in figures:
                value = figures["accuracy_original"] - figures["accuracy_compressed"]
            if value is None:
                why = self._unmeasured(check.figure)
                if default or why:
                    unchecked.append(f"{_flag(name)} not checked ({why or 'not available'})")
                continue
            passed = value <= limit if check.upper else value >= limit
            applied.append(AppliedTolerance(name, limit, default, float(value), bool(passed)))
        missed = sorted((t for t in applied if not t.passed), key=lambda t: t.default)  # stated limits first
        failures = tuple(t.failure(self.kind) for t in missed)
        return OutputComparison(
            name=self.name, shape=self.shape, samples=self.samples, failures=failures, kind=self.kind,
            kind_reason=reason, applied=tuple(applied), unchecked=tuple(unchecked),
            compared_exactly=self.compared_exactly, **figures)


def check_label_range(labels: np.ndarray, output: str, classes: int) -> None:
    """Labels must be class ids of ``output`` (in ``[0, classes)``)."""
    outside = (labels < 0) | (labels >= classes)
    if len(labels) and outside.any():
        first = int(np.argmax(outside))  # (the sample's place: its line in a plain labels file, its image in order)
        raise InputDataError(
            f"labels range over {labels.min()}..{labels.max()} (first outside: sample {first + 1}, class id "
            f"{labels[first]}), but output '{output}' has {classes} classes; give class ids in [0, {classes})"
        )


def effective_tolerances(stated: Tolerances, kind: str, *, figures_only: bool = False) -> dict[str, tuple[float, bool]]:
    """The limits checked on an output of ``kind``: every stated one, plus the kind's defaults for the
    figures without a stated limit; ``{name: (limit, is_default)}``; nothing with ``figures_only``."""
    if figures_only:
        return {}
    limits = {name: (value, True) for name, value in DEFAULT_TOLERANCES[kind].stated().items()}
    limits.update({name: (value, False) for name, value in stated.stated().items()})
    return {name: limits[name] for name in TOLERANCE_NAMES if name in limits}


def _has_prediction(scores: np.ndarray) -> np.ndarray:
    """Per row of class scores (NaN already read as -Inf): whether its arg-max is a prediction, i.e. not
    several classes tied at an infinite top (every class -Inf, or +Inf in more than one)."""
    top = scores.max(axis=1, keepdims=True) if scores.size else np.zeros((len(scores), 1))
    return ~(np.isinf(top[:, 0]) & (np.sum(scores == top, axis=1) > 1))


def compare_output(name: str, original: np.ndarray, compressed: np.ndarray, *, classifier: bool,
                   labels: Optional[np.ndarray], tolerances: Tolerances, check_accuracy: bool,
                   shape: tuple[int, ...] = (), kind: Optional[str] = None) -> OutputComparison:
    """Figures of one output given as whole arrays, checked against ``tolerances`` only (no defaults).

    ``kind`` (default: classifier when ``classifier`` else regression) picks the figures;
    ``labels`` are used when ``check_accuracy`` and the kind is classifier.
    """
    kind = kind or (CLASSIFIER if classifier else REGRESSION)
    if kind not in KINDS:
        raise InputDataError(f"unknown output kind '{kind}'; choose one of: {', '.join(KINDS)}")
    _check_stated_kind(name, kind, original.ndim, bool(np.issubdtype(original.dtype, np.floating)),
                       original.shape[-1] if original.ndim else None, f"of shape {original.shape}")
    use_labels = labels if (check_accuracy and kind == CLASSIFIER) else None
    accumulator = _Accumulator(name, kind, "given", batched=True, labels=use_labels,
                               shape=shape or tuple(original.shape[1:]))
    accumulator.add(np.asarray(original), np.asarray(compressed))
    return accumulator.result({n: (v, False) for n, v in tolerances.stated().items()})


# --------------------------------------------------------------------------------------------------
# validate


def _run_validation(session, names: Sequence[str], feed: Mapping[str, np.ndarray], which: str,
                    random: bool) -> list[np.ndarray]:
    """One batch through ``session``; a failure (an id past an embedding table, a shape the model
    refuses) is one :class:`InputDataError` naming the model and the fix, not a traceback."""
    try:
        return [np.asarray(v) for v in session.run(list(names), dict(feed))]
    except Exception as exc:
        batch = len(next(iter(feed.values()))) if feed else 0
        raise_if_out_of_resources(exc, f"run fewer samples at once: onnx-alds validate --batch-size N below {batch} "
                                        "(compress --validate has no such flag: compress without it, then validate "
                                        "the output)")
        shown = ", ".join(f"{key}: {'x'.join(map(str, np.shape(value)))}" for key, value in feed.items())
        fix = (f"random inputs ({shown}) do not fit this model: check any --input-shape given, or give real inputs "
               "(--inputs FILE.npz)" if random else
               "check that the arrays match the model's inputs (dtype, shape, "
               "value ranges such as token ids)")
        hint = dim_name_clash(session, feed) or one_sample_at_a_time(
            session, names, feed, "onnx-alds validate --batch-size")
        if hint.endswith("validate --batch-size 1"):
            hint += " (compress --validate has no such flag: compress without it, then validate the output)"
        raise InputDataError(f"running the {which} model on the validation inputs failed "
                             f"({runtime_error_text(exc)}); {fix}{hint}") from None


def validate(original: ModelArg, compressed: ModelArg, *, inputs: InputSet, provider: str = "cpu",
             rtol: Optional[float] = None, atol: Optional[float] = None,
             min_top1_agreement: Optional[float] = None, max_accuracy_drop: Optional[float] = None,
             max_mean_rel: Optional[float] = None, min_mean_cosine: Optional[float] = None,
             min_nn_agreement: Optional[float] = None, min_position_agreement: Optional[float] = None,
             min_sequence_agreement: Optional[float] = None, min_iou: Optional[float] = None,
             figures_only: bool = False, output_kinds: Optional[Mapping[str, str]] = None,
             batch_size: int = 32, threads: Optional[int] = None,
             progress: Optional[bool] = None) -> ValidationReport:
    """Run both models on ``inputs`` with ``provider`` and compare every output.

    Every output is checked against the stated tolerances and, for figures without a stated one, the
    defaults of its kind (:data:`DEFAULT_TOLERANCES`); ``figures_only`` checks nothing.
    ``output_kinds`` maps output names to kinds (:data:`KINDS`) instead of choosing by shape.
    Tolerances (None: the kind's default): ``rtol`` (the largest per-sample relative L2 error
    ``‖c − o‖ / ‖o‖``) and ``atol`` (the largest absolute element difference), each checked on its own
    (not numpy.allclose's combined elementwise test),
    ``min_top1_agreement`` and ``max_accuracy_drop`` (classifier outputs; the drop needs labels),
    ``max_mean_rel`` (mean relative error), ``min_mean_cosine`` (mean cosine per sample),
    ``min_nn_agreement`` (embeddings: nearest neighbour unchanged), ``min_position_agreement`` and
    ``min_sequence_agreement`` (token classifiers), ``min_iou`` (boxes); all fractions or numbers ≥ 0.
    ``batch_size``: samples per run; ``threads``: ONNX Runtime's threads (None: its default);
    ``progress``: a progress bar (None: only when stderr is a terminal).
    Returns the report whether or not it passed (see :meth:`ValidationReport.raise_if_failed`).
    Raises :class:`ProviderError` when the provider is not available (no silent CPU fallback) and
    :class:`InputDataError` when a tolerance cannot be checked (e.g. ``max_accuracy_drop`` without labels).
    """
    check_switch("figures_only", figures_only)  # ("False" would be true: a failing model passed)
    if progress is not None:
        check_switch("progress", progress)
    inputs = as_input_set(inputs)  # (an object with the InputSet's members is checked as one)
    stated = Tolerances(rtol, atol, min_top1_agreement, max_accuracy_drop, max_mean_rel, min_mean_cosine,
                        min_nn_agreement, min_position_agreement, min_sequence_agreement, min_iou)
    if figures_only and stated.any:
        raise InputDataError(f"--figures-only checks nothing, but tolerances were given ({stated.describe()}); "
                             "drop one or the other")
    check_count("batch_size", batch_size)
    output_kinds = dict(output_kinds or {})
    original_model, original_store = structure_of(original)  # (light: ONNX Runtime reads the weights itself)
    compressed_model, compressed_store = structure_of(compressed)
    check_same_interface(original_model, compressed_model)
    inputs = conform_inputs(original_model, inputs, "validation")
    check_output_kinds(original_model, output_kinds)
    if stated.max_accuracy_drop is not None and inputs.labels is None:
        raise InputDataError(
            "--max-accuracy-drop needs labels (an .npz 'labels' array, --labels FILE or --labels-from-filenames) "
            "and a classifier output; give labeled inputs or use --min-top1-agreement"
        )
    if stated.min_nn_agreement is not None and len(inputs) < MIN_NN_SAMPLES:
        raise InputDataError(f"--min-nn-agreement needs at least {MIN_NN_SAMPLES} samples, got {len(inputs)}; "
                             "give more inputs")
    _check_declared_label_range(original_model, inputs.labels, output_kinds)
    batch, usable, notes = effective_batch_size(original_model, batch_size, len(inputs))
    if usable < len(inputs):
        inputs = inputs.head(usable)
    if inputs.is_random:
        notes.append("inputs are random, not real data: agreement figures say little about accuracy")
    elif len(inputs) > 1 and (distinct := len(first_occurrences(
            inputs, unit := fixed_batch(original_model) or 1))) < len(inputs):  # (a fixed first dim: whole inputs)
        notes.append(f"the {len(inputs) // unit} {'samples' if unit == 1 else 'inputs'} hold {distinct // unit} "
                     f"distinct one(s), the others repeat them exactly: the figures rest on {distinct // unit}; give "
                     "distinct inputs")
    elif len(inputs) == 1:
        notes.append("one sample: the figures rest on it alone; give a few hundred inputs")
    in_sample = _calibrated_on(compressed_model, inputs)
    if in_sample:
        notes.append(in_sample)
    if same_weights(original_model, original_store, compressed_model, compressed_store):  # (validate m.onnx m.onnx)
        notes.append("the two models have the same graph and weights: every figure compares a model with itself")
    randoms = random_nodes(original_model)
    if not randoms:  # (random outputs differ run to run anyway)
        from .calibrate import check_sample_axis

        axis_note = check_sample_axis(original_model, inputs, batch, store=original_store, what="validation",
                                      flag="--batch-size of onnx-alds validate")
        if axis_note:
            notes.append(axis_note)
    else:
        notes.append(f"the original has {len(randoms)} random nodes (first: {randoms[0]}): ONNX Runtime's graph "
                     "optimizations may drop them, other runtimes draw new values each run; validate the models "
                     "exported in inference mode")
    coupling = batch_coupling_nodes(compressed_model)
    if coupling:  # (a compressed model quantized afterwards: its outputs are what it gives at this batch)
        notes.append(f"the compressed model's node {coupling[0]}, so its outputs depend on which samples run "
                     f"together: these figures hold for runs of {min(batch, len(inputs))} (--batch-size); validate "
                     "at the batch you deploy")
    ort = import_onnxruntime()
    session_o = make_session(original, provider, threads=threads, what="the original model")  # (a path, or a proto)
    session_c = make_session(compressed, provider, threads=threads, what="the compressed model")
    # each distinct output once, in the graph's order: a graph may list one output twice
    distinct = list({o.name: o for o in session_o.get_outputs()}.values())
    output_names = [o.name for o in distinct if o.type.startswith("tensor(")]
    others = [f"'{o.name}' ({o.type})" for o in distinct if not o.type.startswith("tensor(")]
    if others:
        if not output_names:
            raise UnsupportedModelError(f"the model has no tensor output to compare (outputs: {', '.join(others)}); "
                                        "export it with tensor outputs (for skl2onnx: options={'zipmap': False})")
        notes.append(f"not compared (not tensors): {', '.join(others)}")
    accumulators: dict[str, _Accumulator] = {}
    value_sized = value_sized_outputs(original_model)
    resized: dict[str, int] = {}  # value-sized outputs: batches on which the two sizes differ (not compared)
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    total = math.ceil(len(inputs) / batch)
    for feed in tqdm(inputs.batches(batch), total=total, desc="validate", unit="batch", disable=not show):
        count = len(next(iter(feed.values())))
        values_o = _run_validation(session_o, output_names, feed, "original", inputs.is_random)
        values_c = _run_validation(session_c, output_names, feed, "compressed", inputs.is_random)
        if not accumulators:
            accumulators = _start_accumulators(output_names, values_o, count, output_kinds, stated, inputs.labels,
                                               declared=_fixed_first_dims(original_model),
                                               topk_values=topk_value_outputs(original_model),
                                               layouts=output_channel_axes(original_model))
            first_count = count
        for name, value_o, value_c in zip(output_names, values_o, values_c):
            accumulator = accumulators[name]
            if accumulator.batched and (value_o.ndim == 0 or value_o.shape[0] != count):
                raise UnsupportedModelError(
                    f"output '{name}' had {first_count} rows on the first batch, as many as its samples, so its "
                    f"first dim was taken for the batch, but has shape {value_o.shape} on a batch of {count}; give "
                    f"a number of samples that is a multiple of {batch}, so that every batch has {batch}")
            if name in value_sized and value_o.shape != value_c.shape and value_o.ndim == value_c.ndim:
                resized[name] = resized.get(name, 0) + 1
                continue
            if value_o.shape != value_c.shape and (branch := _branch_on_the_way(original_model, name)):
                raise UnsupportedModelError(
                    f"output '{name}' has shape {value_o.shape} in the original and {value_c.shape} in the "
                    f"compressed model; an {branch} node on the way to it may give another size when the values "
                    "move a little (its branches do not declare their shapes): compare the outputs before it, or "
                    "check that the compressed model comes from the original")
            accumulator.add(value_o, value_c, feed)
    for name, count in resized.items():
        notes.append(f"output '{name}': its size depends on the values ({value_sized[name]}) and differs from the "
                     f"original's on {count} of {total} batches, whose values are not compared (compare the outputs "
                     "before that step, e.g. the scores)")
    outputs = []
    for name in output_names:
        accumulator = accumulators[name]
        if accumulator.samples or name not in resized:
            accumulator.settle_kind()
            output = accumulator.result(effective_tolerances(stated, accumulator.kind, figures_only=figures_only))
        else:  # another size on every batch: no figure
            output = OutputComparison(name, accumulator.shape, 0, math.nan, math.nan, math.nan, math.nan, math.nan,
                                      kind=accumulator.kind, kind_reason=accumulator.reason)
        if name in resized and not figures_only:  # a size that differs is a difference, whatever the figures say
            output = replace(output, failures=output.failures + (
                f"size differs from the original's on {resized[name]} of {total} batches ({value_sized[name]})",))
        outputs.append(output)
    if any(not (o.failures and o.failures[0].startswith(ALL_ZEROS)) for o in outputs):
        # an output zero on every input (an unused mask, a gate that stays shut) beside outputs compared: told, not
        # failed (only --figures-only, which checks nothing, would pass the run otherwise)
        outputs = [replace(o, failures=o.failures[1:], unchecked=o.unchecked + (o.failures[0],))
                   if o.failures and o.failures[0].startswith(ALL_ZEROS) else o for o in outputs]
    outputs = tuple(outputs)
    if inputs.labels is not None and not any(o.kind == CLASSIFIER for o in outputs):
        notes.append("labels were given but no output is a classifier: accuracy not measured")
    for name, accumulator in accumulators.items():
        if accumulator.samples > 1 and accumulator.first_row is not None and not accumulator.both_zero \
                and accumulator.input_spread < CONSTANT_OUTPUT_SPREAD:
            notes.append(f"output '{name}': the original's values barely change from input to input (no sample's "
                         f"moved more than {accumulator.input_spread:.2g} of the first's, relative), so relative "
                         "errors and agreement on it say little of the compression (a model that ignores its inputs, "
                         "or a large constant offset: then state an absolute limit, --atol)")
        if accumulator.shared_nonfinite >= accumulator.float_values > 0:
            notes.append(f"output '{name}': the original gives NaN or Inf at every value "
                         f"({accumulator.shared_nonfinite}), and the compressed model the same: there is nothing to "
                         "compare (no figures)")
        elif accumulator.shared_nonfinite:
            notes.append(f"output '{name}': the original gives NaN or Inf at {accumulator.shared_nonfinite} values "
                         "and the compressed model the same there; the figures compare the other values (a sample "
                         "with no other value has no figure of its own)")
        if accumulator.both_zero:
            notes.append(f"output '{name}': both models give all zeros on {accumulator.both_zero} sample(s), which "
                         "say nothing of the compression: rel and cos leave them out")
        if accumulator.unpredicted:
            notes.append(f"output '{name}': the original has no prediction on {accumulator.unpredicted} sample(s) "
                         "(every class NaN or -Inf, or +Inf in several): top-1 and top-5 agreement count the others")
        if accumulator.zero_reference_samples:
            scale = accumulator.reference_scale
            notes.append(f"output '{name}': the original's output is all zeros on {accumulator.zero_reference_samples}"
                         " sample(s) where the compressed model's is not; their relative error is the difference's "
                         + (f"norm over the output's mean norm on the other samples ({scale:.4g}), and they have no "
                            "cosine" if scale > 0 else "norm over 0 (inf): the original is zeros on every sample"))
    return ValidationReport(
        original=_describe(original, "<original model>"), compressed=_describe(compressed, "<compressed model>"),
        outputs=outputs, tolerances=stated, samples=len(inputs), input_source=inputs.source,
        random_inputs=inputs.is_random, has_labels=inputs.labels is not None, provider=provider,
        provider_name=PROVIDERS[provider], batch_size=batch, onnxruntime_version=ort.__version__,
        notes=tuple(notes), figures_only=figures_only,
    )


CONSTANT_OUTPUT_SPREAD = 1e-4  # an original output moving less than this across inputs (relative): noted

CALIBRATION_FALLBACK = "the calibration inputs"  # compress --validate without validation inputs: they say so


def _calibrated_on(compressed: onnx.ModelProto, inputs: InputSet) -> Optional[str]:
    """A note when ``inputs`` are, or hold some of, the samples ``compressed`` was calibrated on (the digests
    compress wrote into its metadata: :func:`onnx_alds.plan.calibration_overlap`): its factors were fitted
    to them, so the figures are in-sample, or partly."""
    from .plan import calibration_overlap

    if inputs.source.startswith(CALIBRATION_FALLBACK):  # compress --validate says so in the source
        return None
    overlap = calibration_overlap(compressed, inputs)
    if overlap is None or not overlap[0]:
        return None
    seen, total = overlap
    if seen == total:
        return ("the validation inputs are the ones the compressed model was calibrated or trained on (the same "
                "samples): its factors were fitted to them, so the figures are in-sample and optimistic; validate on "
                "inputs the compression did not see")
    return (f"{seen} of the {total} validation samples are ones the compressed model was calibrated or trained on "
            "(the same samples): its factors were fitted to them, so the figures are partly in-sample and "
            "optimistic; validate on inputs the compression did not see")


def _branch_on_the_way(model: onnx.ModelProto, output: str) -> Optional[str]:
    """The first If, Loop or Scan node ``output`` is computed through (its op type), or None: a size that
    differs between two models there may come from the values, not from a wrong pairing."""
    producers = {name: node for node in model.graph.node for name in node.output if name}
    pending, seen = [output], set()
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in ("If", "Loop", "Scan"):
            return node.op_type
        pending.extend(name for name in node.input if name)
    return None


def _fixed_first_dims(model: onnx.ModelProto) -> dict[str, int]:
    """The graph outputs whose declared first dim is a fixed number while every graph input's batch dim is
    dynamic (a ``[3, N]`` output of a ``[N, 8]`` input), with that number: where the output has it, its
    first axis is not the batch, whatever a batch's size happens to be (where it has another, the
    declaration is stale: an export that fixed the output's dims)."""
    if any(spec.dims and isinstance(spec.dims[0], int) for spec in graph_inputs(model)):
        return {}
    fixed = {}
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else ()
        if dims and dims[0].HasField("dim_value"):
            fixed[value.name] = int(dims[0].dim_value)
    return fixed


def _start_accumulators(names: Sequence[str], first: Sequence[np.ndarray], count: int,
                        output_kinds: Mapping[str, str], stated: Tolerances,
                        labels: Optional[np.ndarray], declared: Optional[Mapping[str, int]] = None,
                        topk_values: frozenset[str] = frozenset(),
                        layouts: Optional[Mapping[str, tuple[Optional[int], str]]] = None
                        ) -> dict[str, _Accumulator]:
    """Choose every output's kind on the first batch, check what was stated against it, and start;
    ``declared``: outputs whose first dim the model declares fixed (:func:`_fixed_first_dims`): where the
    first batch's output has that size, its first axis is not the batch; ``topk_values``: outputs that are a
    TopK's values (:func:`topk_value_outputs`); ``layouts``: the channel axis of 4-D outputs and why
    (:func:`output_channel_axes`): a dense one reads its channels on axis 3 where the graph puts them there,
    and one whose layout the graph leaves unclear is compared as regression."""
    layouts = layouts or {}
    declared = declared or {}
    unbatched = {name for name, value in zip(names, first) if value.ndim and value.shape[0] == declared.get(name)}
    kinds: dict[str, tuple[str, str, bool]] = {}
    for name, value in zip(names, first):
        batched = value.ndim >= 1 and value.shape[0] == count and name not in unbatched
        if name in output_kinds:
            kind = output_kinds[name]
            if kind != REGRESSION and not batched:
                why = ("the model declares its first dim fixed" if name in unbatched else
                       f"'{name}' has shape {value.shape} for a batch of {count}")
                raise InputDataError(f"--output-kind {name}={kind} needs the batch as the output's first dim, but "
                                     f"{why}; use regression")
            _check_stated_kind(name, kind, value.ndim, bool(np.issubdtype(value.dtype, np.floating)),
                               value.shape[-1] if value.ndim else None, f"{value.dtype} of shape {value.shape}")
            kinds[name] = (kind, "--output-kind", batched)
        else:
            kind, reason = detect_kind(name, value, batched, topk_values=name in topk_values)
            axis, why = layouts.get(name, (1, ""))
            if kind == DENSE and value.ndim == 4 and axis is None:
                kind, reason = REGRESSION, (f"4-D float {list(value.shape)}, but {why}: compared as regression "
                                            f"(--output-kind {name}=dense reads its channels on axis 1)")
            kinds[name] = (kind, reason, batched)
    present = {kind for kind, _, _ in kinds.values()}
    listing = ", ".join(f"{n}={k}" for n, (k, _, _) in kinds.items())
    for name in stated.stated():
        needed = _CHECK_BY_NAME[name].kinds
        if needed != KINDS and not present & set(needed):
            fits = [n for n, value in zip(names, first) if value.ndim >= 1 and value.shape[0] == count
                    and n not in unbatched
                    and _kind_fits(needed[0], value.ndim, bool(np.issubdtype(value.dtype, np.floating)),
                                   value.shape[-1])]
            fix = (f"set one with --output-kind {fits[0]}={needed[0]}" if fits else
                   f"no output can be one ({needed[0]} needs {_KIND_NEEDS[needed[0]]}): export such an output "
                   "(the scores or logits, not only the class ids)")
            raise InputDataError(
                f"--{_flag(name)} needs {'an' if needed[0][0] in 'aeiou' else 'a'} {needed[0]} output and the model "
                f"has none (output kinds: {listing}); "
                f"{fix}, or drop the flag"
            )
    first_classifier = next((n for n in names if kinds[n][0] == CLASSIFIER), None)
    accumulators = {name: _Accumulator(name, kind, reason, batched=batched,
                                       labels=labels if name == first_classifier else None,
                                       shape=tuple(int(d) for d in value.shape[1 if batched else 0:]))
                    for (name, (kind, reason, batched)), value in zip(kinds.items(), first)}
    for name, value in zip(names, first):
        accumulator = accumulators[name]
        axis, why = layouts.get(name, (1, ""))
        if accumulator.kind == DENSE and value.ndim == 4 and axis == 3:
            accumulator.channels_last = True
            accumulator.reason = (accumulator.reason.replace(", channels on axis 1", "")
                                  + f"; channels on axis 3: the graph puts its channels on the last axis ({why})")
    return accumulators


def _check_declared_label_range(model: onnx.ModelProto, labels: Optional[np.ndarray],
                                output_kinds: Mapping[str, str]) -> None:
    """Before any model runs: labels must fit the class count of the first output that will be the
    classifier, where the graph declares it (otherwise the check happens on the first batch)."""
    if labels is None:
        return
    for value in model.graph.output:
        rank, floating, last = _declared_output(value)
        stated = output_kinds.get(value.name)
        if stated is not None and stated != CLASSIFIER:
            continue
        if rank is None or floating is None:
            return  # not known before running: this output may be the classifier
        if rank == 2 and floating and (stated == CLASSIFIER or not EMBEDDING_NAME.search(value.name)):
            if last is None:
                return  # the class count is dynamic: checked on the first batch
            if last >= 2:
                check_label_range(labels, value.name, last)
                return


def _dims_differ(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Two declared shapes differ: another rank, a dim fixed to other sizes, or fixed in one and not the other."""
    return len(a) != len(b) or any((isinstance(x, int) or isinstance(y, int)) and x != y for x, y in zip(a, b))


def _dims_conflict(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Two declared output shapes cannot both hold: another rank, or a dim fixed to other sizes. A dim fixed in
    one and dynamic in the other is no conflict for an output (ONNX Runtime's quantization, float16 and
    optimizer tools fix the output dims their shape inference resolves): the sizes are compared when run."""
    return len(a) != len(b) or any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a, b))


def _show_dims(dims: Sequence[Any]) -> str:
    return f"[{', '.join(str(d) if isinstance(d, (int, str)) else '?' for d in dims)}]"


def _output_signature(value: onnx.ValueInfoProto) -> tuple[str, Optional[tuple[Any, ...]]]:
    """``(type, dims)`` of a graph output: the element type's name for a tensor (dims None when no shape is
    declared), the type's text for a sequence, map or optional."""
    if value.type.WhichOneof("value") != "tensor_type":
        return str(value.type).replace("\n", " ").strip(), None
    tensor = value.type.tensor_type
    kind = onnx.TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "untyped"
    if not tensor.HasField("shape"):
        return kind, None
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
    return kind, dims


def _name_difference(original: Sequence[str], other: Sequence[str]) -> str:
    """Which names one model has and the other lacks ("'logits' only in the original, 'scores' only in the
    other"), or the counts where the same names are listed a different number of times."""
    only_o = [name for name in dict.fromkeys(original) if name not in other]
    only_c = [name for name in dict.fromkeys(other) if name not in original]
    parts = ([f"{', '.join(repr(n) for n in only_o)} only in the original"] if only_o else []) + (
        [f"{', '.join(repr(n) for n in only_c)} only in the other"] if only_c else [])
    return ", ".join(parts) or f"{len(original)} listed in the original, {len(other)} in the other"


def check_same_interface(original: onnx.ModelProto, compressed: onnx.ModelProto,
                         hint: str = "compare a model with one compressed from it") -> None:
    """The compressed model takes and gives what the original does: the same inputs and outputs, in the same
    order (a caller that runs ``session.run(None, …)`` or reads ``get_inputs()[0]`` depends on it), with the
    same element types and declared shapes (for an output, dims that can both hold: :func:`_dims_conflict`).
    Raises :class:`UnsupportedModelError` naming the first difference,
    followed by ``hint`` (the fix)."""
    names_o = [spec.name for spec in graph_inputs(original)]
    names_c = [spec.name for spec in graph_inputs(compressed)]
    if sorted(names_o) != sorted(names_c):
        raise UnsupportedModelError(f"the models take different inputs ({_name_difference(names_o, names_c)}); {hint}")
    if names_o != names_c:
        raise UnsupportedModelError(
            f"the models list their inputs in a different order ({', '.join(names_o)} vs {', '.join(names_c)}); "
            f"{hint}")
    compressed_specs = {spec.name: spec for spec in graph_inputs(compressed)}
    for spec in graph_inputs(original):
        other = compressed_specs[spec.name]
        if spec.dtype != other.dtype or _dims_differ(spec.dims, other.dims):
            precision = spec.dtype != other.dtype and spec.dtype.kind == other.dtype.kind == "f"
            raise UnsupportedModelError(
                f"the models take different inputs: '{spec.name}' is {spec.dtype} {_show_dims(spec.dims)} in the "
                f"original and {other.dtype} {_show_dims(other.dims)} in the other; " + (
                    "the other model was converted to another float precision with its inputs (a float16 "
                    "conversion without keep_io_types): convert it with keep_io_types=True to compare the two, "
                    f"or {hint}" if precision else hint))
    outs_o = [o.name for o in original.graph.output]
    outs_c = [o.name for o in compressed.graph.output]
    if sorted(outs_o) != sorted(outs_c):
        raise UnsupportedModelError(f"the models have different outputs ({_name_difference(outs_o, outs_c)}); {hint}")
    if outs_o != outs_c:
        raise UnsupportedModelError(
            f"the models list their outputs in a different order ({', '.join(outs_o)} vs {', '.join(outs_c)}); "
            f"{hint}")
    for value, other in zip(original.graph.output, compressed.graph.output):
        (kind_o, dims_o), (kind_c, dims_c) = _output_signature(value), _output_signature(other)
        if kind_o != kind_c or (dims_o is not None and dims_c is not None and _dims_conflict(dims_o, dims_c)):
            def show(kind: str, dims: Optional[tuple[Any, ...]]) -> str:
                return kind if dims is None else f"{kind} {_show_dims(dims)}"

            raise UnsupportedModelError(
                f"the models give different outputs: '{value.name}' is {show(kind_o, dims_o)} in the original and "
                f"{show(kind_c, dims_c)} in the other; {hint}")


# --------------------------------------------------------------------------------------------------
# compress --validate


def validate_and_bench(original_path: ModelArg, compressed_path: ModelArg, *, inputs: InputSet,
                       provider: str = "cpu", rtol: Optional[float] = None, atol: Optional[float] = None,
                       min_top1_agreement: Optional[float] = None, max_accuracy_drop: Optional[float] = None,
                       max_mean_rel: Optional[float] = None, min_mean_cosine: Optional[float] = None,
                       min_nn_agreement: Optional[float] = None, min_position_agreement: Optional[float] = None,
                       min_sequence_agreement: Optional[float] = None, min_iou: Optional[float] = None,
                       figures_only: bool = False, output_kinds: Optional[Mapping[str, str]] = None,
                       batch: int = 1, weights_kept: Optional[float] = None, macs_kept: Optional[float] = None,
                       input_shapes: Optional[dict[str, Sequence[int]]] = None, threads: Optional[int] = None,
                       bench_options: Optional[dict[str, Any]] = None,
                       names: Optional[Sequence[str]] = None) -> tuple[ValidationReport, Any, str]:
    """Validate (stated tolerances plus the kinds' defaults, as :func:`validate`), then benchmark the
    pair at ``batch``, and make the one-line summary. ``names``: what the validation report calls the two
    models (default: as :func:`validate` does), e.g. the path a model validated in a staging folder is
    moved to (the timings name each by its file name).

    Returns ``(validation_report, bench_report, summary)``, ``bench_report`` None when the validation
    failed (not timed); the caller prints them and then calls ``validation_report.raise_if_failed()``.
    ``bench_options`` passes extra keywords to :func:`onnx_alds.bench.bench` (``runs``, ``warmup``,
    ``min_time_s``).
    """
    from .bench import bench

    in_memory = isinstance(original_path, onnx.ModelProto) or isinstance(compressed_path, onnx.ModelProto)
    bench_names = ["original", "compressed"] if in_memory else None  # (else bench names each by its file name)
    report = validate(original_path, compressed_path, inputs=inputs, provider=provider, rtol=rtol, atol=atol,
                      min_top1_agreement=min_top1_agreement, max_accuracy_drop=max_accuracy_drop,
                      max_mean_rel=max_mean_rel, min_mean_cosine=min_mean_cosine, min_nn_agreement=min_nn_agreement,
                      min_position_agreement=min_position_agreement, min_sequence_agreement=min_sequence_agreement,
                      min_iou=min_iou, figures_only=figures_only, output_kinds=output_kinds, threads=threads)
    if names is not None:
        report = replace(report, original=str(names[0]), compressed=str(names[1]))
    if not report.passed:  # nothing will be written: timing it would only make the user wait
        return report, None, summary_line(report, None, provider=provider, batch=batch, weights_kept=weights_kept,
                                          macs_kept=macs_kept)
    models, note = [original_path, compressed_path], ""
    # dims the model leaves dynamic are timed at the validation inputs' sizes (a sequence length the .npz
    # fixes), unless given: asking for --input-shape after the work was done lost it; every input at the
    # timing batch, those given included (inputs sharing a named batch dim must agree)
    given = {name: (batch, *tuple(dims)[1:]) for name, dims in (input_shapes or {}).items()}
    input_shapes = {**{name: (batch, *array.shape[1:]) for name, array in inputs.arrays.items()}, **given}
    empty = sorted(name for name, array in inputs.arrays.items() if name not in given and 0 in array.shape[1:])
    try:
        if empty:  # (a key/value cache of past length 0): random timing inputs are never empty
            shape = "x".join(map(str, inputs.arrays[empty[0]].shape))
            raise RandomInputsError(f"'{empty[0]}' is {shape}", f"the validation input '{empty[0]}' is {shape}, "
                                    "a zero-length dim that random inputs are not made with")
        timing = bench(models, provider=provider, batch_sizes=(batch,), threads=threads, input_shapes=input_shapes,
                       names=bench_names, **(bench_options or {}))
    except RandomInputsError as exc:  # (a string input, ids that overflow a table): time on the validation inputs
        reason = exc.reason
        if inputs.is_random or len(inputs) < batch:
            line = summary_line(report, None, provider=provider, batch=batch, weights_kept=weights_kept,
                                macs_kept=macs_kept)
            return report, None, line + f"\nnote: not timed (timing feeds random inputs: {reason})"
        feeds = next(inputs.batches(batch))
        timing = bench(models, provider=provider, batch_sizes=(batch,), threads=threads, names=bench_names,
                       feeds=feeds, **(bench_options or {}))
        note = f"\nnote: timed on the first {batch} validation input(s): random timing inputs do not fit ({reason})"
    speedup = timing.speedup(1, batch)
    return report, timing, summary_line(report, speedup, provider=provider, batch=batch,
                                        weights_kept=weights_kept, macs_kept=macs_kept) + note


def _share_format(samples: int):
    """A formatter of a share of ``samples`` (k / samples) with as many decimals as it takes to tell every
    share apart (at least 2), so that 499 of 500 reads 0.998 and never 1.00; None (nothing compared) is n/a."""
    digits = max(2, math.ceil(math.log10(max(samples, 1))))
    return lambda share: "n/a" if share is None else f"{share:.{digits}f}"  # (None: no sample compared)


def summary_line(report: ValidationReport, speedup: Optional[float], *, provider: str, batch: int,
                 weights_kept: Optional[float] = None, macs_kept: Optional[float] = None) -> str:
    """``summary: weights kept 0.48, MACs kept 0.50, speedup 1.83x on cpu (batch 1), top-1 agreement 0.97``.

    The quality figures are those of the first classifier output, else of the first embedding,
    sequence or dense output, else min cosine and max rel error over all outputs.
    """
    parts = []
    if weights_kept is not None:
        parts.append(f"weights kept {weights_kept:.2f}")
    if macs_kept is not None:
        parts.append(f"MACs kept {macs_kept:.2f}")
    if speedup is not None:
        parts.append(f"speedup {speedup:.2f}x on {provider} (batch {batch})")
    figured = [o for o in report.outputs if o.compared] or list(report.outputs)  # (all zeros in both: no figures)
    head = next((o for o in figured if o.kind == CLASSIFIER), None) or next(
        (o for o in figured if o.kind in (EMBEDDING, SEQUENCE, DENSE)), None)
    if head is not None and head.kind == CLASSIFIER:
        share = _share_format(head.samples)
        parts.append(f"top-1 agreement {share(head.top1_agreement)}")
        if head.accuracy_drop is not None:
            parts.append(f"accuracy {share(head.accuracy_original)} -> {share(head.accuracy_compressed)} "
                         f"(drop {head.accuracy_drop:+.3f})")
    elif head is not None and head.kind == EMBEDDING:
        parts.append("mean cosine n/a" if head.mean_cosine is None else f"mean cosine {head.mean_cosine:.4f}")
        if head.nn_agreement is not None:
            parts.append(f"nearest-neighbour agreement {_share_format(head.samples)(head.nn_agreement)}")
    elif head is not None and head.kind == SEQUENCE:
        if head.position_agreement is None:
            zeros = any(ALL_ZEROS in text for text in (*head.failures, *head.unchecked))  # (positions, no values)
            parts.append("position agreement n/a" + (" (no positions)" if head.samples and not zeros else ""))
        else:
            parts.append(f"position agreement {head.position_agreement:.3f}, "
                         f"sequence agreement {_share_format(head.samples)(head.sequence_agreement)}")
    elif head is not None and head.kind == DENSE:
        parts.append("IoU n/a" if head.iou is None else f"IoU {head.iou:.3f}")
    elif report.outputs:
        exact = [o for o in figured if o.compared_exactly]  # labels, flags: no distance
        measured = [o for o in figured if o not in exact]
        cosines = [o.min_cosine for o in measured if o.min_cosine is not None]  # (one value per sample: none)
        if cosines:
            parts.append(f"min cosine {min(cosines):.4f}")
        if measured:
            parts.append(f"max rel error {max(o.max_rel_error for o in measured):.3g}")
        parts += [f"'{o.name}' agreement {1.0 - o.mean_rel_error:.2f} (values equal, compared exactly)"
                  for o in exact[:3]]
    if report.random_inputs:
        parts.append("on random inputs (not real data)")
    if not report.passed:
        failed = [o for o in report.outputs if not o.passed]
        detail = ""
        if failed and len(report.outputs) > 1:  # which outputs failed, and whose figures the line shows
            named = ", ".join(repr(o.name) for o in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3
                                                                   else "")
            if head is not None:
                aside = f"; the figures shown are those of '{head.name}'" if head not in failed else ""
            else:  # (min cosine / max rel error over the outputs with figures)
                aside = "; the figures shown are those of the other outputs" if not any(
                    o.compared for o in failed) else ""
            detail = f" (on {named}{aside})"
        parts.append("FAILED" + detail)
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
        return "\n".join(self.validation.lines() + (self.bench.lines() if self.bench is not None else [])
                         + [self.line])


def add_validation_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``compress --validate``: validation inputs, provider, batch, tolerances.

    Validation inputs: ``--validate-inputs FILE.npz | --validate-images DIR | --validate-random N``
    (``--preprocess``/``--input-shape`` are shared with the calibration flags), with optional
    ``--validate-labels FILE | --validate-labels-from-filenames``. Without them the calibration
    inputs are used (the report notes it), else 64 random samples (labeled as random).
    """
    add_input_arguments(parser, "validate-", preprocess=False, input_shape=False, labels=True)
    group = parser.add_argument_group("validation (with --validate)")
    group.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                       help="ONNX Runtime provider for validation and timing (no fallback)")
    group.add_argument("--bench-batch", type=positive_int, default=None, metavar="N",
                       help="batch size of the speed comparison and of --keep-latency's and --order auto's tables "
                            "(default: the batch the model fixes, else that of --input-shape, else 1)")
    group.add_argument("--threads", type=thread_count, default=None, metavar="N",
                       help="CPU intra-op threads (default: physical cores for timing)")
    add_tolerance_arguments(parser)


def validate_from_args(original: ModelArg, compressed: ModelArg, args: argparse.Namespace, *,
                       report: Any = None, compressed_name: Optional[str] = None) -> ValidateSummary:
    """``compress --validate``: validate and bench ``compressed`` against ``original`` as the flags say.

    ``report`` (a CompressionReport) gives the weights and MACs kept for the summary line;
    ``compressed_name``: what to call an in-memory ``compressed`` (the path it is to be written to).
    """
    from .bench import default_batch
    from .model_io import parse_input_shapes

    original_model = load_model(original)
    seed = getattr(args, "seed", None) or 0
    if getattr(args, "calibration_random", None) is not None:  # the same seed would draw the calibration samples
        seed = (seed + 1) % 2**32
    inputs = inputs_from_args(original_model, args, "validate-", required=False, seed=seed)
    if inputs is None:
        inputs = inputs_from_args(original_model, args, "calibration-", required=False)
        if inputs is not None:
            inputs = InputSet(inputs.arrays, inputs.labels,
                              f"{CALIBRATION_FALLBACK} ({inputs.source}; optimistic: also used to compress)")
    if inputs is None:
        inputs = inputs_from_args(original_model, argparse.Namespace(**dict(vars(args), validate_random=64)),
                                  "validate-")
    weights_kept = macs_kept = None
    if report is not None:
        if getattr(report, "params_before", 0):
            weights_kept = report.params_after / report.params_before
        if getattr(report, "macs_before", 0):
            macs_kept = (report.macs_after or 0) / report.macs_before
    shapes = parse_input_shapes(getattr(args, "input_shape", None))
    try:
        validation, timing, line = validate_and_bench(
            original, compressed, inputs=inputs, provider=args.provider,
            batch=args.bench_batch or default_batch(original_model, shapes),
            weights_kept=weights_kept, macs_kept=macs_kept, input_shapes=shapes,
            threads=getattr(args, "threads", None), **tolerances_from_args(args))
    except InputDataError as exc:  # the messages name validate's flags: name compress's
        raise InputDataError(with_prefixed_flags(str(exc), "validate-")) from None
    if compressed_name is not None:
        validation = replace(validation, compressed=compressed_name)
    return ValidateSummary(validation, timing, line)


# --------------------------------------------------------------------------------------------------
# Command line


def output_kind_arg(text: str) -> tuple[str, str]:
    """``NAME=KIND`` for ``--output-kind`` (argparse turns an error into a usage error)."""
    name, sep, kind = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=KIND (e.g. logits=classifier)")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown kind '{kind}' in '{text}'; choose one of: {', '.join(KINDS)}")
    return name, kind


def add_tolerance_arguments(parser: argparse.ArgumentParser) -> None:
    """The tolerance flags, ``--figures-only`` and ``--output-kind`` (also for ``compress --validate``)."""
    group = parser.add_argument_group(
        "tolerances (exit 1 when one is missed; each output kind has defaults for the figures without a "
        "stated limit, see docs/VALIDATE_AND_BENCH.md)")
    group.add_argument("--rtol", type=non_negative_float, default=None, metavar="X",
                       help="max relative L2 error of any sample, ‖c−o‖/‖o‖")
    group.add_argument("--atol", type=non_negative_float, default=None, metavar="X", help="max absolute error of any element")
    group.add_argument("--max-mean-rel", type=non_negative_float, default=None, metavar="X",
                       help="max mean over samples of the relative L2 error (default 0.1 for regression outputs)")
    group.add_argument("--min-mean-cosine", type=fraction, default=None, metavar="F",
                       help="min mean over samples of the cosine similarity (default 0.9; 0.95 for embeddings)")
    group.add_argument("--min-top1-agreement", type=fraction, default=None, metavar="F",
                       help="classifiers: min fraction of samples with the same top-1 class (default 0.9)")
    group.add_argument("--max-accuracy-drop", type=fraction, default=None, metavar="F",
                       help="classifiers with labels: max drop of top-1 accuracy, as a fraction (0.01 = 1 point)")
    group.add_argument("--min-nn-agreement", type=fraction, default=None, metavar="F",
                       help="embeddings: min fraction of samples with the same nearest neighbour (default 0.7)")
    group.add_argument("--min-position-agreement", type=fraction, default=None, metavar="F",
                       help="sequences: min fraction of positions with the same arg-max (default 0.9)")
    group.add_argument("--min-sequence-agreement", type=fraction, default=None, metavar="F",
                       help="sequences: min fraction of samples whose whole arg-max sequence is the same")
    group.add_argument("--min-iou", type=fraction, default=None, metavar="F",
                       help="dense maps: min IoU of the compressed model's masks with the original's (default 0.8)")
    group.add_argument("--figures-only", action="store_true",
                       help="print the figures and check nothing (no default tolerances); exit 0")
    group.add_argument("--output-kind", action="append", type=output_kind_arg, default=None, metavar="NAME=KIND",
                       help=f"treat output NAME as KIND ({'|'.join(KINDS)}) instead of choosing by shape (repeatable)")


def tolerances_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The tolerance, ``figures_only`` and ``output_kinds`` keywords of :func:`validate` from parsed flags."""
    options: dict[str, Any] = {name: getattr(args, name, None) for name in TOLERANCE_NAMES}
    options["figures_only"] = bool(getattr(args, "figures_only", False))
    kinds: dict[str, str] = {}
    for name, kind in getattr(args, "output_kind", None) or ():
        if kinds.get(name, kind) != kind:
            raise InputDataError(f"--output-kind gives '{name}' two kinds ({kinds[name]} and {kind}); give one")
        kinds[name] = kind
    options["output_kinds"] = kinds
    return options


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``onnx-alds validate``."""
    parser.add_argument("original", metavar="ORIGINAL", help="the original .onnx model")
    parser.add_argument("compressed", metavar="COMPRESSED", help="the compressed .onnx model")
    add_input_arguments(parser, labels=True, required=True)
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                        help="ONNX Runtime execution provider (no fallback: an unavailable one is an error)")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="samples per run (default 32)")
    parser.add_argument("--threads", type=thread_count, default=None, metavar="N", help="CPU intra-op threads (default: ORT's)")
    parser.add_argument("--seed", type=random_seed, default=0, metavar="N", help="seed of --random inputs (default 0)")
    add_tolerance_arguments(parser)
    parser.add_argument("--json", metavar="FILE", default=None, help="write every figure as JSON")


def run_validate_command(args: argparse.Namespace) -> int:
    """Run ``onnx-alds validate``: print the report, write --json, return 0 or raise ValidationFailedError."""
    original = load_model(args.original)
    options = tolerances_from_args(args)
    inputs = inputs_from_args(original, args, required=True)
    report = validate(args.original, args.compressed, inputs=inputs, provider=args.provider,
                      batch_size=args.batch_size, threads=getattr(args, "threads", None), **options)
    args.written_files = []  # what an interrupt from here on leaves written (cli names it)
    for line in report.lines():
        print(line)
    if args.json:
        write_json(report.to_dict(), args.json, also=lambda: args.written_files.append(str(args.json)))
    report.raise_if_failed()
    return 0

_callable_module(__name__, "validate")  # onnx_alds.validate(...) calls validate(...)
