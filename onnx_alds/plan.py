"""The plan as a value: per layer, what to do (factorize at ``(g, r)`` in an order, or keep dense),
per prunable block the hidden width to keep (plans made with ``--prune``), with what was predicted;
written as JSON by ``onnx-alds plan`` and applied by ``onnx-alds apply``.

``compress`` is :func:`make_plan` then :func:`apply_plan` (in memory, without the JSON round trip),
so a plan applied to the model it was made for gives the byte-identical model ``compress`` gives
with the same options. A user may edit a plan (set a layer's ``"option"`` to ``"dense"``, change a
``"rank"``, ``"groups"`` or ``"order"``) and apply it: apply recomputes the edited layers' predicted
errors from their spectra (their predicted time is unknown: the report says so), or a block's
``"width"`` (one of the block's allowed widths: multiples of the rank multiple, or the full width). A
sweep can make plans on one machine and apply them on others.

A pruning plan is made by running the pruning compression (:func:`onnx_alds.prune.compress_pruned`:
the low-rank step is planned on the pruned model, so making it costs what ``compress --prune`` costs).
Applying it recalibrates, chooses the kept channels and refits at the plan's widths, then applies the
plan's low-rank decisions to the pruned model.

A plan names the model it was made for: the resolved input shapes, per layer its name, op, weight
shape and weight count, and a digest of the model's constants. Applying it to a model whose layers or
shapes differ, or reading a plan with keys this version does not know, is an error that names the layer
or key and the fix; applying it to a model with the same layers but other weight values is a warning
(the ranks were chosen for the other values).

The JSON (``"format": "onnx-alds plan"``, ``"version": 1``)::

    {"format", "version", "tool", "model": {"inputs", "params", "layers", "weights"},
     "options": {"budget", "search", "data", "speed", "input_shapes"},
     "totals": {...what was predicted for the whole model...},
     "layers": [{"name", "op", "weight_shape", "params", "option", "groups", "rank", "order", "reason", "weight",
                 "predicted": {"option", "groups", "rank", "order", "error", "cost", "time_dense_us",
                               "time_us", "time_measured"}}, ...],
     "blocks": [{"name", "producer", "consumer", "width_before", "width",
                 "predicted": {"width", "error", "params", "macs"}}, ...]}

``option`` is ``factorized``, ``dense`` or ``skipped`` (cannot be factorized, or in a narrowed block;
``reason`` says why). ``predicted.cost`` is in the budget's unit: weights, MACs or microseconds.
``blocks`` (pruning plans only): ``width`` is the hidden width to keep, ``predicted.error`` the block's
relative RMS output error at the predicted width (calibration inputs).
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper

from .allocate import DENSE, Allocation, LayerChoice
from .errors import InputDataError, OnnxAldsError
from .inputs import value_bytes
from .latency import predicted_model_us
from .layers import (ORDERS, POINTWISE_FIRST, SPATIAL_FIRST, Layer, chain_source, check_exclude_patterns,
                     iter_graphs, with_order)
from .options import (GROUP_KEYWORDS, PRUNE_MODES, Budget, CompressOptions, DataAwareOptions, SearchOptions,
                      SpeedOptions, compress_options, refuse_group_and_keyword, refuse_without_effect, with_pruning)

PLAN_FORMAT = "onnx-alds plan"
PLAN_VERSION = 1
FACTORIZED, KEPT_DENSE, SKIPPED = "factorized", "dense", "skipped"
# options.search fields that choose the decisions or check them (totals.searched: an edit would change what is
# accepted or said, not the decisions, which are applied as written)
SEARCHED_KEYS = ("method", "seed", "prune", "prune_heads", "error_measure", "rank_multiple", "max_groups", "order")
FITTED_KEYS = ("refit", "sequential", "bias_correction", "shrinkage", "both_factors", "affine_correction",
               "sensitivity")  # options.data fields the plan's decisions and predicted errors were made with
OPTIONS = (FACTORIZED, KEPT_DENSE, SKIPPED)


class PlanError(OnnxAldsError):
    """A plan that cannot be read, or that does not fit the model it is applied to."""


class _UnknownLayer(PlanError, KeyError):
    """No layer of that name in the plan (a KeyError as well, as a look-up by name)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return PlanError.__str__(self)


@dataclass(frozen=True)
class Predicted:
    """What the plan predicted for one layer's decision when it was made."""

    option: str
    groups: int
    rank: int
    order: Optional[str]
    error: float
    cost: Optional[float]
    time_dense_us: Optional[float] = None
    time_us: Optional[float] = None
    time_measured: Optional[bool] = None


@dataclass(frozen=True)
class LayerDecision:
    """One Conv/Gemm/MatMul node: what identifies it, and what to do with it."""

    name: str
    op: str
    weight_shape: tuple[int, ...]
    params: int
    option: str
    groups: int = 0
    rank: int = 0
    order: Optional[str] = None
    reason: Optional[str] = None
    predicted: Optional[Predicted] = None
    weight: Optional[str] = None  # the weight's initializer (tells apart unnamed nodes that moved); None: not checked

    @property
    def in_narrowed_block(self) -> bool:
        """A layer of a block the plan narrowed, set to dense or skipped (the block's width decides its shape)."""
        return (self.option in (KEPT_DENSE, SKIPPED) and self.predicted is not None
                and self.predicted.option in (KEPT_DENSE, SKIPPED) and (self.reason or "").startswith("pruned block "))

    @property
    def edited(self) -> bool:
        """Whether the decision differs from what was predicted (a user changed it)."""
        p = self.predicted
        if p is None:
            return True
        if self.option != p.option:
            return not self.in_narrowed_block  # (a narrowed block's layer is unfactorized either way)
        return self.option == FACTORIZED and (self.groups, self.rank, self.order) != (p.groups, p.rank, p.order)


@dataclass(frozen=True)
class PredictedWidth:
    """What the plan predicted for one block's width when it was made."""

    width: int
    error: float
    params: Optional[int] = None
    macs: Optional[int] = None


@dataclass(frozen=True)
class BlockDecision:
    """One prunable block (producer → per-channel ops → consumer, :mod:`onnx_alds.prune`): its hidden
    width before pruning and the width to keep."""

    name: str
    producer: str
    consumer: str
    width_before: int
    width: int
    predicted: Optional[PredictedWidth] = None

    @property
    def edited(self) -> bool:
        """Whether the width differs from what was predicted (a user changed it)."""
        return self.predicted is None or self.width != self.predicted.width


@dataclass(frozen=True)
class Plan:
    """Per-layer decisions (and, for a pruning plan, per-block widths) for one model, with the options
    they were made under."""

    model: Mapping[str, Any]
    options: Mapping[str, Any]
    layers: tuple[LayerDecision, ...]
    totals: Mapping[str, Any] = field(default_factory=dict)
    tool: Mapping[str, Any] = field(default_factory=dict)
    blocks: tuple[BlockDecision, ...] = ()
    report: Any = field(default=None, compare=False, repr=False)  # the CompressionReport of make_plan

    # ---- JSON

    def to_dict(self) -> dict[str, Any]:
        from .report import json_safe

        layers = []
        for layer in self.layers:
            entry = asdict(layer)
            entry["weight_shape"] = list(layer.weight_shape)
            layers.append(entry)
        data = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "tool": dict(self.tool), "model": dict(self.model),
                "options": dict(self.options), "totals": dict(self.totals), "layers": layers}
        if self.blocks:
            data["blocks"] = [asdict(block) for block in self.blocks]
        return json_safe(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    def save(self, path: Union[str, Path], *, also: Optional[Callable[[], None]] = None) -> None:
        """Write the plan as JSON, atomically (``also``: run with the rename, :func:`onnx_alds.model_io.landed`)."""
        from .report import write_json

        write_json(self.to_dict(), path, also=also)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> "Plan":
        """Read a plan from JSON text; a key given twice in one object (an edit that left the old value
        behind) is an error, not the last value silently. Raises PlanError."""
        def unique_keys(pairs: list) -> dict:
            keys = [key for key, _ in pairs]
            repeated = _first_repeated(keys)
            if repeated is not None:
                raise PlanError(f"{source}: the key {repeated!r} appears twice in one entry "
                                f"({', '.join(map(repr, keys[:4]))}{', ...' if len(keys) > 4 else ''}); keep one")
            return dict(pairs)

        if isinstance(text, (bytes, bytearray)):  # (json.loads takes bytes too; removeprefix did not)
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PlanError(f"{source} is not UTF-8 text ({exc}); give a file written by onnx-alds plan") from None
        if not isinstance(text, str):
            raise PlanError(f"the plan is a {type(text).__name__}; give its JSON text (str or bytes), or use Plan.load")
        try:
            data = json.loads(text.removeprefix("\ufeff"), object_pairs_hook=unique_keys)  # (a BOM: Notepad's UTF-8)
        except ValueError as exc:
            raise PlanError(f"{source} is not JSON ({exc}); give a file written by onnx-alds plan") from None
        except RecursionError:
            raise PlanError(f"{source} is nested too deeply to be a plan; give a file written by onnx-alds plan"
                            ) from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Plan":
        from .model_io import path_argument

        path = path_argument(path, "the plan's path")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PlanError(f"'{path}' is not a plan (not UTF-8 JSON text); give a file written by onnx-alds plan") from None
        except OSError as exc:
            raise PlanError(f"cannot read the plan '{path}' ({exc.strerror or exc}); give a file written by "
                            "onnx-alds plan") from None
        return cls.from_json(text, str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> "Plan":
        """Read a plan strictly: every key known, every value of the right kind."""
        other = _other_output(data)
        if other is not None:
            raise PlanError(f"{source} is {other}, not a plan; give a file written by onnx-alds plan (onnx-alds plan "
                            "MODEL -o PLAN.json)")
        reader = _Reader(source)
        if isinstance(data, dict) and "format" in data and data["format"] != PLAN_FORMAT:  # (before its keys)
            raise PlanError(f"{source}: format is {_short(data['format'])}, not {_short(PLAN_FORMAT)}; give a file "
                            "written by onnx-alds plan")
        top = reader.mapping(data, "the plan", required=("format", "version", "model", "options", "layers"),
                             optional=("tool", "totals", "blocks"))
        if top["version"] != PLAN_VERSION or isinstance(top["version"], bool):
            raise PlanError(f"{source}: plan version {_short(top['version'])}; this onnx-alds reads version "
                            f"{PLAN_VERSION} (make the plan again with this version)")
        model = reader.mapping(top["model"], "model", required=("inputs",), optional=("params", "layers", "weights"))
        if model.get("weights") is not None and not isinstance(model["weights"], str):
            raise reader.fail("model.weights", f"got {_short(model['weights'])}; give the digest string or null")
        inputs = reader.mapping(model["inputs"], "model.inputs", free=True)
        model = dict(model, inputs={name: reader.dims(dims, f"model.inputs.{name}", named=True)
                                    for name, dims in inputs.items()})
        options = reader.options(top["options"])
        layers = reader.list(top["layers"], "layers")
        decisions = tuple(reader.layer(entry, index) for index, entry in enumerate(layers))
        duplicate = _first_repeated(decision.name for decision in decisions)
        if duplicate is not None:
            raise PlanError(f"{source}: layer '{duplicate}' appears twice; keep one entry per layer")
        blocks = tuple(reader.block(entry, index) for index, entry in enumerate(reader.list(top.get("blocks", []),
                                                                                            "blocks")))
        duplicate = _first_repeated(block.name for block in blocks)
        if duplicate is not None:
            raise PlanError(f"{source}: block '{duplicate}' appears twice; keep one entry per block")
        if blocks and options["search"].get("prune", "off") == "off":
            raise PlanError(f"{source}: the plan has blocks but options.search.prune is off; set it to combined or "
                            "only, or remove the blocks")
        totals = reader.mapping(top.get("totals") or {}, "totals", optional=_TOTALS_KEYS)
        searched = totals.get("searched")
        if searched is not None:  # what made the decisions: editing it would change the report, not them
            searched = reader.mapping(searched, "totals.searched", optional=SEARCHED_KEYS + ("data",))
            if searched.get("data") is not None:
                reader.mapping(searched["data"], "totals.searched.data", optional=FITTED_KEYS)
            for key in SEARCHED_KEYS:
                if key in searched and searched[key] != options["search"].get(key):
                    raise PlanError(f"{source}: options.search.{key} is {_short(options['search'].get(key))} but "
                                    f"totals.searched.{key}, what made the decisions, is {_short(searched[key])}: a "
                                    "plan's decisions are applied as written, whatever made them, so that edit "
                                    "would change only what the report says; make the two the same and edit the "
                                    "layers (option, rank, groups) instead, or make a new plan with that setting")
            fitted = searched.get("data")
            if isinstance(fitted, dict) and options["data"].get("data_aware"):  # (a data-free plan: checked on apply)
                for key in FITTED_KEYS:
                    if key in fitted and fitted[key] != options["data"].get(key):
                        raise PlanError(f"{source}: options.data.{key} is {_short(options['data'].get(key))} but "
                                        f"the plan was made with {_short(fitted[key])} (totals.searched.data.{key}): "
                                        "its decisions and predicted errors were chosen with that setting; set it "
                                        "back, or make a new plan with the new setting")
        latency = totals.get("latency")
        if latency is not None:  # the recorded times are read back into the report
            latency = reader.mapping(latency, "totals.latency", free=True)
            reader.number(latency.get("model_us"), "totals.latency.model_us", positive=True)
            reader.number(latency.get("layers_dense_us"), "totals.latency.layers_dense_us")
            _check_measured_figures(reader, latency)
        if options["budget"]["target"] == "latency" and not (latency and latency.get("model_us")):
            raise PlanError(f"{source}: options.budget.target is latency but the plan records no model time "
                            "(totals.latency.model_us); make the plan again with --keep-latency, or set the "
                            "target to params or flops")
        tool = reader.mapping(top.get("tool") or {}, "tool", free=True)
        plan = cls(model, options, decisions, totals, tool, blocks)
        _check_recorded_times(plan, source)
        return plan

    # ---- options and edits

    def compress_options(self, calibration=None) -> CompressOptions:
        """The options the plan was made under, with ``calibration`` for a data-aware plan."""
        o = self.options
        search = dict(o["search"])
        search["exclude"] = tuple(search.get("exclude") or ())
        data = dict(o["data"] or {})
        data.pop("calibration", None)
        data.pop("calibration_digest", None)
        data.pop("samples", None)
        data_aware = bool(data.pop("data_aware", False))
        data["sensitivity"] = False  # it weighed the allocation only: the decisions are in the plan
        if calibration is None and data_aware:
            source = o["data"].get("calibration")
            raise PlanError("the plan is data-aware (" + (f"calibrated on {source}" if source else "data_aware is true")
                            + "); give calibration inputs (--calibration FILE.npz, --calibration-images DIR or "
                            "--calibration-random N)")
        if not data_aware and calibration is not None:
            raise PlanError("the plan is data-free, so calibration inputs would not be used; apply it without them, "
                            "or make a data-aware plan with onnx-alds plan ... --calibration ...")
        if not data_aware:
            needs_data = [key for key in ("sequential", "bias_correction", "both_factors", "affine_correction")
                          if data.get(key)]
            if needs_data:
                raise PlanError(f"the plan is data-free, but its options.data sets {needs_data[0]}, which needs "
                                f"calibration data; set it back to {0 if needs_data[0] == 'both_factors' else 'false'}, "
                                "or make a data-aware plan with onnx-alds plan ... --calibration ...")
            data = {key: value for key, value in data.items() if key in ("batch_size", "refit", "shrinkage")}
        speed = _speed_options(o["speed"]) if o.get("speed") else None
        shapes = o.get("input_shapes")
        return CompressOptions(Budget(**o["budget"]), SearchOptions(**search),
                               DataAwareOptions(calibration=calibration, **data), speed,
                               None if shapes is None else {k: tuple(v) for k, v in shapes.items()})

    def input_shapes_for(self, model: onnx.ModelProto) -> Optional[dict[str, tuple[int, ...]]]:
        """The input shapes to apply the plan at: the plan's ``options.input_shapes``, else the shapes
        it was made at (``model.inputs``) for the model's inputs with dynamic dims besides the batch
        (the same network exported with dynamic sizes). Raises PlanError when they do not fit the model."""
        from .errors import UnsupportedModelError
        from .model_io import graph_inputs, resolve_input_shapes

        given = self.options.get("input_shapes")
        if given:
            shapes = {name: tuple(dims) for name, dims in given.items()}
            where = "options.input_shapes"
        else:
            planned = self.model.get("inputs", {})
            shapes = {spec.name: tuple(planned[spec.name]) for spec in graph_inputs(model)
                      if spec.name in planned and not all(isinstance(d, int) for d in spec.dims[1:])
                      and all(isinstance(d, int) for d in planned[spec.name])}  # (made with dims left dynamic)
            where = "model.inputs"
        try:
            resolve_input_shapes(model, shapes or None, batch_default=1)
        except UnsupportedModelError:  # dims left dynamic, as the plan was made (checked layer by layer later)
            return shapes or None
        except OnnxAldsError as exc:  # (its fix speaks of --input-shape, which apply does not take: the problem alone)
            problem = re.sub(r"--input-shape (gives|names)", r"it \1", str(exc).split("; ")[0])
            raise PlanError(f"the plan does not fit this model's inputs (the plan's {where}: "
                            f"{_show_shapes(shapes) or 'none'}): {problem}; make a new plan for it with onnx-alds "
                            "plan") from None
        return shapes or None

    def check_layer_names(self, model: onnx.ModelProto) -> None:
        """Raise :class:`PlanError` when no layer of the plan names a node of ``model`` (a plan made for
        another model): checked before anything else is read, so that the error says that first (the
        layer-by-layer check comes with the rewrite)."""
        from .layers import node_names

        if model.functions or not self.layers:
            return  # layers inside functions are named when inlined: the full check comes later
        nodes = set(node_names(model))  # unnamed nodes as they are named when the model is prepared
        missing = [decision.name for decision in self.layers if decision.name not in nodes]
        if len(missing) == len(self.layers):
            raise PlanError(f"the plan does not fit this model: layer '{missing[0]}' of the plan is not in the model "
                            f"({len(missing)} of {len(self.layers)} missing: another model, or renamed nodes); make a "
                            "new plan for it with onnx-alds plan")

    def layer(self, name: str) -> LayerDecision:
        """The decision of the layer called ``name``; raises :class:`PlanError` (a ``KeyError`` too) naming
        the plan's layers when there is none."""
        for decision in self.layers:
            if decision.name == name:
                return decision
        known = ", ".join(d.name for d in self.layers[:5]) + (", ..." if len(self.layers) > 5 else "")
        raise _UnknownLayer(f"the plan has no layer '{name}' (its layers: {known})")

    def with_layer(self, name: str, /, **changes) -> "Plan":
        """The plan with one layer's decision changed (``option="dense"``, ``rank=32`` ...), checked as a
        plan file is (an unknown option or a rank of the wrong type is a :class:`PlanError`, and so is a
        change of what identifies the layer: its ``name``, ``op``, ``weight_shape`` ...)."""
        self.layer(name)
        unknown = sorted(set(changes) - {"option", "groups", "rank", "order", "reason"})
        if unknown:
            raise PlanError(f"cannot change {', '.join(unknown)} of a layer decision (what identifies the layer, or "
                            "not a field); change its option, groups, rank, order or reason")
        changes = {key: int(value) if isinstance(value, np.integer) else value  # plain ints: plans are JSON
                   for key, value in changes.items()}
        changed = replace(self, layers=tuple(replace(d, **changes) if d.name == name else d for d in self.layers),
                          report=None)  # read back as a plan file is: checked, and its defaults filled in (order)
        return Plan.from_dict(changed.to_dict(), source=f"the plan with layer '{name}' changed")  # raises PlanError

    @property
    def data_aware(self) -> bool:
        return bool((self.options.get("data") or {}).get("data_aware"))

    @property
    def edited_layers(self) -> tuple[LayerDecision, ...]:
        """The layers whose decision differs from what the plan predicted (set dense or skipped included)."""
        return tuple(decision for decision in self.layers if decision.edited)

    @property
    def edited_blocks(self) -> tuple[BlockDecision, ...]:
        """The blocks whose width differs from what the plan predicted."""
        return tuple(block for block in self.blocks if block.edited)

    @property
    def budget_edited(self) -> bool:
        """Whether ``options.budget`` (its keep or its target) differs from the budget the search ran under
        (``totals.requested``, and the target whose ratio ``totals.achieved`` is, else ``totals.target``: a
        search-and-replace of the target changes that too; not known, not edited, where the plan tells neither)."""
        budget, totals = self.options["budget"], self.totals
        planned_target = _searched_target(totals) or totals.get("target")
        return ((totals.get("requested") is not None and totals["requested"] != budget["keep"])
                or (planned_target is not None and planned_target != budget["target"]))

    def search_name(self) -> str:
        """"plan", or what was edited in it: "plan (2 layers edited, 1 block width edited, budget edited)"."""
        layers, blocks = len(self.edited_layers), len(self.edited_blocks)
        edits = ([f"{layers} layer{'s' if layers > 1 else ''} edited"] if layers else []) + (
            [f"{blocks} block width{'s' if blocks > 1 else ''} edited"] if blocks else []) + (
            ["budget edited"] if self.budget_edited else [])
        return "plan" + (f" ({', '.join(edits)})" if edits else "")


# --------------------------------------------------------------------------------------------------
# Strict reading


_TOTALS_KEYS = ("requested", "target", "achieved", "params_before", "params_after", "macs_before", "macs_after",
                "max_error", "error_measure", "search", "latency", "searched")  # every version's (all optional)
_SEARCH_KEYS = ("method", "error_measure", "rank_multiple", "max_groups", "order", "seed", "exclude")
_SEARCH_OPTIONAL = ("prune", "prune_heads")  # absent in plans of earlier versions: no pruning, no heads
_DATA_KEYS = ("data_aware", "calibration", "calibration_digest", "samples", "batch_size", "refit", "sequential",
              "bias_correction", "sensitivity", "shrinkage", "both_factors", "affine_correction", "damage_samples",
              "damage_points", "damage_max_groups")
_DATA_BOOLS = ("data_aware", "refit", "sequential", "bias_correction", "sensitivity", "shrinkage", "affine_correction")
_DATA_INTS = ("batch_size", "both_factors", "damage_samples", "damage_points", "damage_max_groups")
_SPEED_KEYS = ("provider", "threads", "batch", "runs", "warmup", "grid", "prune_slow", "min_speedup", "model_rounds")
_LAYER_KEYS = ("name", "op", "weight_shape", "params", "option", "groups", "rank", "order", "reason", "predicted",
               "weight")
_PREDICTED_KEYS = ("option", "groups", "rank", "order", "error", "cost", "time_dense_us", "time_us", "time_measured")
_PREDICTED_WIDTH_KEYS = ("width", "error", "params", "macs")


def _speed_options(speed: Mapping[str, Any]) -> SpeedOptions:
    """A plan's ``options.speed``, its thread count as recorded: a plan made on a machine with more CPUs
    than this one applies here (apply times nothing; ``SpeedOptions`` refuses more threads than CPUs)."""
    options = SpeedOptions(**dict(speed, threads=None))
    if speed.get("threads") is not None:
        object.__setattr__(options, "threads", int(speed["threads"]))  # (frozen: as its __post_init__ sets it)
    return options


def _show_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    from .model_io import show_input_shapes

    return show_input_shapes(dict(sorted(shapes.items())))


def _finite(value: Union[int, float]) -> bool:
    """Whether ``value`` is a finite float (an integer too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _short(value: Any, limit: int = 40) -> str:
    """``value`` as JSON writes it (null, true, "text"), cut at ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # (not a JSON value: a plan built in Python)
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_kind(value: Any) -> str:
    """What ``value`` is, in JSON's words: an object, an array, a string, a number, null, true or false."""
    if value is None or isinstance(value, bool):
        return _short(value)
    kinds = ((dict, "an object"), ((list, tuple), "an array"), (str, "a string"), ((int, float), "a number"))
    return next((kind for types, kind in kinds if isinstance(value, types)), type(value).__name__)


def _check_measured_figures(reader: "_Reader", latency: Mapping[str, Any]) -> None:
    """A plan's whole-model figures are read back into the report as measured: ``measured_ratio`` must be the
    figure of one of its ``whole_model_check`` rounds and ``measured_speedup`` its inverse (a hand-edited
    ratio was printed as measured while the rounds beside it said otherwise)."""
    ratio = reader.number(latency.get("measured_ratio"), "totals.latency.measured_ratio")
    speedup = reader.number(latency.get("measured_speedup"), "totals.latency.measured_speedup")
    if ratio is None:
        if speedup is not None:
            raise reader.fail("totals.latency.measured_speedup", "is given without totals.latency.measured_ratio; "
                                                                 "figures measured are not edited: remove it")
        return
    rounds = latency.get("whole_model_check")
    measured = [r.get("measured") for r in rounds if isinstance(r, dict)] if isinstance(rounds, list) else []
    if not any(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isclose(m, ratio, rel_tol=1e-9)
               for m in measured):
        raise reader.fail("totals.latency.measured_ratio", f"{ratio:g} is not the figure of any round of "
                                                           "totals.latency.whole_model_check; figures measured are "
                                                           "not edited: make the plan again")
    if speedup is not None and not math.isclose(speedup, 1.0 / ratio, rel_tol=1e-6):
        raise reader.fail("totals.latency.measured_speedup", f"{speedup:g} is not 1 / measured_ratio "
                                                             f"({1.0 / ratio:g}); figures measured are not edited: "
                                                             "make the plan again")


def _check_recorded_times(plan: "Plan", source: str) -> None:
    """A latency plan's recorded layer times (``predicted.time_us``, ``time_dense_us``) must give the
    ``totals.achieved`` they were searched to, where no decision or width was edited: they are measurements,
    read back into the report as the tables' prediction (an edited time was printed as one)."""
    achieved = plan.totals.get("achieved")
    if (plan.options["budget"]["target"] != "latency" or not isinstance(achieved, (int, float))
            or isinstance(achieved, bool) or plan.edited_layers or plan.edited_blocks
            or any(block.width < block.width_before for block in plan.blocks)):
        return
    recomputed = _PlanTimes(plan).achieved({decision.name: decision for decision in plan.layers})
    if math.isfinite(recomputed) and not math.isclose(recomputed, achieved, rel_tol=1e-6, abs_tol=1e-9):
        raise PlanError(f"{source}: the layers' recorded times (predicted.time_us, time_dense_us) give a predicted "
                        f"{recomputed:.4f} of the model's time, but totals.achieved is {achieved:.4f}: times are "
                        "measurements, not edits; restore them, or make the plan again (edit a layer's option, rank "
                        "or groups instead)")


def _searched_target(totals: Mapping[str, Any]) -> Optional[str]:
    """The budget target a plan was searched under, where its totals tell: params or flops, whose ratio
    ``achieved`` is (one of them alone); else None."""
    achieved = totals.get("achieved")
    if not isinstance(achieved, (int, float)) or isinstance(achieved, bool):
        return None
    fits = [target for target, after, before in (("params", "params_after", "params_before"),
                                                 ("flops", "macs_after", "macs_before"))
            if all(isinstance(totals.get(key), (int, float)) for key in (after, before)) and totals[before]
            and math.isclose(achieved, totals[after] / totals[before], rel_tol=1e-9)]
    return fits[0] if len(fits) == 1 else None


def _first_repeated(names) -> Optional[str]:
    """The first of ``names`` that occurs more than once, or None."""
    names = list(names)
    counts = Counter(names)
    return next((name for name in names if counts[name] > 1), None)


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> PlanError:
        return PlanError(f"{self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str, *, required: Sequence[str] = (), optional: Sequence[str] = (),
                free: bool = False) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {_json_kind(value)}")
        if not free:
            unknown = [key for key in value if key not in required and key not in optional]
            if unknown:
                known = ", ".join(tuple(required) + tuple(optional))
                raise self.fail(where, f"unknown key '{unknown[0]}' (known: {known}); remove it or make the plan "
                                       "again with onnx-alds plan")
        missing = [key for key in required if key not in value]
        if missing:
            raise self.fail(where, f"missing key '{missing[0]}'; make the plan again with onnx-alds plan")
        return dict(value)

    def list(self, value: Any, where: str) -> list:
        if not isinstance(value, (list, tuple)):  # (a tuple: a plan's dict built in Python)
            raise self.fail(where, f"expected an array, got {_json_kind(value)}")
        return list(value)

    def integer(self, value: Any, where: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:  # (numpy's too)
            raise self.fail(where, f"expected an integer >= {minimum}, got {_short(value)}")
        return int(value)

    def number(self, value: Any, where: str, *, optional: bool = True, positive: bool = False) -> Optional[float]:
        """A finite number (``positive``: above 0, as a time is), or None where ``optional``."""
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise self.fail(where, f"expected a finite number, got {_short(value)}")
        if positive and not 0 < value < 1e300:
            raise self.fail(where, f"expected a positive time in µs, got {_short(value)}")
        return float(value)

    def dims(self, value: Any, where: str, named: bool = False) -> tuple:
        """A list of dims; ``named``: a dynamic dim may stay a name (a plan made with dims left dynamic), not a
        number written as a string ("28" would print as 28 and never match the model's 28)."""
        dims = self.list(value, where)
        for d in dims:
            if named and isinstance(d, str) and d.strip().lstrip("+-").isdigit():
                raise self.fail(where, f"got the string {_short(d)}; give a size as a number ({d.strip()}), a "
                                       "dynamic dim as its name")
        return tuple(d if named and isinstance(d, str) and d else self.integer(d, where) for d in dims)

    def options(self, value: Any) -> dict:
        options = self.mapping(value, "options", required=("budget", "search", "data"),
                               optional=("speed", "input_shapes"))
        budget = self.mapping(options["budget"], "options.budget", required=("target", "keep"))
        if not isinstance(budget["target"], str):
            raise self.fail("options.budget.target", f"got {_short(budget['target'])}; give params, flops or latency")
        self.number(budget["keep"], "options.budget.keep", optional=False)
        search = self.mapping(options["search"], "options.search", required=_SEARCH_KEYS, optional=_SEARCH_OPTIONAL)
        data = self.mapping(options["data"], "options.data", optional=_DATA_KEYS)
        speed = options.get("speed")
        if speed is not None:
            speed = self.mapping(speed, "options.speed", optional=_SPEED_KEYS)
            threads = speed.get("threads")  # the machine the plan was timed on: any count (apply times nothing)
            if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
                raise self.fail("options.speed.threads", f"got {_short(threads)}; give a positive whole number "
                                                         "(the threads the plan was timed with) or null")
        shapes = options.get("input_shapes")
        if shapes is not None:
            shapes = {name: list(self.dims(dims, f"options.input_shapes.{name}"))
                      for name, dims in self.mapping(shapes, "options.input_shapes", free=True).items()}
        kinds = {"method": str, "order": str, "rank_multiple": int, "max_groups": int, "seed": int}
        for key, kind in kinds.items():  # JSON types first: the option classes compare and do arithmetic
            if isinstance(search[key], bool) or not isinstance(search[key], kind):
                raise self.fail(f"options.search.{key}", f"got {_short(search[key])}; give a "
                                f"{'whole number' if kind is int else 'string'}")
        if search["error_measure"] is not None and not isinstance(search["error_measure"], str):
            raise self.fail("options.search.error_measure",
                            f"got {_short(search['error_measure'])}; give a string or null")
        if not isinstance(search["exclude"], list) or not all(isinstance(p, str) for p in search["exclude"]):
            raise self.fail("options.search.exclude", f"got {_short(search['exclude'])}; give an array of strings")
        if "prune" in search and search["prune"] not in PRUNE_MODES:  # null or false would silently mean "off"
            raise self.fail("options.search.prune",
                            f"got {_short(search['prune'])}; give one of {', '.join(PRUNE_MODES)}")
        if "prune_heads" in search and not isinstance(search["prune_heads"], bool):
            raise self.fail("options.search.prune_heads", f"got {_short(search['prune_heads'])}; give true or false")
        digest = data.get("calibration_digest")
        if digest is not None and not isinstance(digest, str):
            raise self.fail("options.data.calibration_digest", f"got {_short(digest)}; give the digest string or null")
        samples = data.get("samples")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 0):
            raise self.fail("options.data.samples", f"got {_short(samples)}; give the sample count or null")
        for key, value in data.items():  # JSON types first: a string where a switch belongs is not "off"
            if key in _DATA_BOOLS and not isinstance(value, bool):
                raise self.fail(f"options.data.{key}", f"got {_short(value)}; give true or false")
            if key in _DATA_INTS and (isinstance(value, bool) or not isinstance(value, int)):
                raise self.fail(f"options.data.{key}", f"got {_short(value)}; give a whole number")
        try:  # the values: the option classes check them
            DataAwareOptions(**{key: value for key, value in data.items()
                                if key not in ("data_aware", "calibration", "calibration_digest", "samples",
                                               "sequential", "bias_correction", "sensitivity", "both_factors",
                                               "affine_correction")})
            if data.get("both_factors", 0) < 0 or data.get("both_factors", 0) > 10:
                raise PlanError(f"both_factors {data['both_factors']} is out of range; give 0 to 10 rounds")
            Budget(**budget)
            SearchOptions(**{key: value for key, value in search.items() if key != "exclude"})
            if speed is not None:
                _speed_options(speed)
        except (OnnxAldsError, TypeError) as exc:
            raise self.fail("options", str(exc)) from None
        return {"budget": budget, "search": search, "data": data, "speed": speed, "input_shapes": shapes}

    def layer(self, entry: Any, index: int) -> LayerDecision:
        where = f"layers[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where += f" ('{entry['name']}')"
        required = ("name", "op", "weight_shape", "option")
        entry = self.mapping(entry, where, required=required,
                             optional=tuple(k for k in _LAYER_KEYS if k not in required))
        if not isinstance(entry["name"], str) or not isinstance(entry["op"], str):
            raise self.fail(where, "name and op must be strings")
        option = entry["option"]
        if option not in OPTIONS:
            raise self.fail(where, f"option {_short(option)} is not one of {', '.join(OPTIONS)}")
        predicted = entry.get("predicted")
        if predicted is not None:
            p = self.mapping(predicted, f"{where}.predicted", required=("option",),
                             optional=tuple(k for k in _PREDICTED_KEYS if k != "option"))
            measured = p.get("time_measured")
            if measured is not None and not isinstance(measured, bool):
                raise self.fail(f"{where}.predicted.time_measured", f"expected true or false, got {_short(measured)}")
            predicted = Predicted(p["option"], self.integer(p.get("groups", 0), f"{where}.predicted.groups"),
                                  self.integer(p.get("rank", 0), f"{where}.predicted.rank"), p.get("order"),
                                  self.number(p.get("error", 0.0), f"{where}.predicted.error") or 0.0,
                                  self.number(p.get("cost"), f"{where}.predicted.cost"),
                                  self.number(p.get("time_dense_us"), f"{where}.predicted.time_dense_us",
                                              positive=True),
                                  self.number(p.get("time_us"), f"{where}.predicted.time_us", positive=True), measured)
        order = entry.get("order")
        if option == FACTORIZED:  # a factorized layer needs both
            missing = [key for key in ("groups", "rank") if key not in entry]
            if missing:
                raise self.fail(where, f"missing key {' and '.join(repr(k) for k in missing)}: a factorized layer "
                                "needs its groups and rank")
            unset = [key for key in ("groups", "rank") if entry[key] in (0, None) and not isinstance(entry[key], bool)]
            if unset:  # (a dense or skipped entry's 0s, left when switching it to factorized)
                raise self.fail(where, f"{' and '.join(unset)} {_short(entry[unset[0]])}: a factorized layer needs "
                                f"its groups and rank (at least 1; the groups are one of the layer's candidates)")
            groups = self.integer(entry.get("groups", 0), f"{where}.groups", minimum=1)
            rank = self.integer(entry.get("rank", 0), f"{where}.rank", minimum=1)
            if order is None:  # a dense entry switched to factorized keeps no order: the ALDS pair
                order = SPATIAL_FIRST
        else:  # a dense or skipped one has none (null or 0), or those the plan wrote for it (set to dense)
            groups, rank = (0 if entry.get(key) is None else self.integer(entry[key], f"{where}.{key}")
                            for key in ("groups", "rank"))
        if order is not None and order not in ORDERS:
            raise self.fail(where, f"order {_short(order)} is not one of {', '.join(ORDERS)}")
        if option != FACTORIZED:
            written = (predicted.groups, predicted.rank, predicted.order) if predicted is not None else (0, 0, None)
            ignored = [(key, value) for key, value, was in zip(("groups", "rank", "order"), (groups, rank, order),
                                                                written) if value not in (0, None) and value != was]
            if ignored:
                keys = " and ".join(k for k, _ in ignored)
                reason = entry.get("reason") if option == SKIPPED and isinstance(entry.get("reason"), str) else None
                raise self.fail(where, " and ".join(f"{key} {_short(value)}" for key, value in ignored)
                                + f" on a \"{option}\" layer would be ignored (it stays dense"
                                + (f": {reason}); set {keys} to null (\"option\": \"factorized\" only where that "
                                   "reason allows it)" if reason else
                                   f"); set \"option\": \"factorized\" to factorize it, or set {keys} to null"))
        reason = entry.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise self.fail(f"{where}.reason", "expected a string or null")
        weight = entry.get("weight")
        if weight is not None and not isinstance(weight, str):
            raise self.fail(f"{where}.weight", "expected a string or null")
        return LayerDecision(entry["name"], entry["op"], self.dims(entry["weight_shape"], f"{where}.weight_shape"),
                             self.integer(entry.get("params", 0), f"{where}.params"), option, groups, rank,
                             order if option == FACTORIZED else None, reason, predicted, weight)

    def block(self, entry: Any, index: int) -> BlockDecision:
        where = f"blocks[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where += f" ('{entry['name']}')"
        required = ("name", "producer", "consumer", "width_before", "width")
        entry = self.mapping(entry, where, required=required, optional=("predicted",))
        if not all(isinstance(entry[key], str) for key in ("name", "producer", "consumer")):
            raise self.fail(where, "name, producer and consumer must be strings")
        before = self.integer(entry["width_before"], f"{where}.width_before", minimum=1)
        width = self.integer(entry["width"], f"{where}.width", minimum=1)
        if width > before:
            raise self.fail(f"{where}.width", f"{width} is more than its width_before ({before}, the block's full width "
                                              f"as the plan says); give a width of at most {before}, or check "
                                              "width_before")
        predicted = entry.get("predicted")
        if predicted is not None:
            p = self.mapping(predicted, f"{where}.predicted", required=("width",),
                             optional=tuple(k for k in _PREDICTED_WIDTH_KEYS if k != "width"))
            params, macs = p.get("params"), p.get("macs")
            predicted = PredictedWidth(self.integer(p["width"], f"{where}.predicted.width", minimum=1),
                                       self.number(p.get("error", 0.0), f"{where}.predicted.error") or 0.0,
                                       None if params is None else self.integer(params, f"{where}.predicted.params"),
                                       None if macs is None else self.integer(macs, f"{where}.predicted.macs"))
        return BlockDecision(entry["name"], entry["producer"], entry["consumer"], before, width, predicted)


# --------------------------------------------------------------------------------------------------
# Making a plan


def _options_dict(options: CompressOptions, calibration_source: Optional[str],
                  samples: Optional[int]) -> dict[str, Any]:
    search, data, speed = options.search, options.data, options.speed
    return {
        "budget": {"target": options.budget.target, "keep": options.budget.keep},
        "search": {"method": search.method, "error_measure": search.error_measure,
                   "rank_multiple": search.rank_multiple, "max_groups": search.max_groups, "order": search.order,
                   "seed": search.seed, "exclude": list(search.exclude), "prune": search.prune,
                   "prune_heads": search.prune_heads},
        "data": {"data_aware": data.enabled, "calibration": calibration_source,
                 "calibration_digest": calibration_digest(data.calibration), "samples": samples,
                 "batch_size": data.batch_size, "refit": data.refit, "sequential": data.sequential,
                 "bias_correction": data.bias_correction, "sensitivity": data.sensitivity,
                 "shrinkage": data.shrinkage, "both_factors": data.both_factors,
                 "affine_correction": data.affine_correction, "damage_samples": data.damage_samples,
                 "damage_points": data.damage_points, "damage_max_groups": data.damage_max_groups},
        "speed": None if speed is None else {key: getattr(speed, key) for key in _SPEED_KEYS},
        "input_shapes": {name: list(dims) for name, dims in (options.input_shapes or {}).items()},  # (as the CLI's)
    }


def calibration_digest(calibration) -> Optional[str]:
    """SHA-256 of a calibration set's arrays (names, types, shapes and values, in name order); None when
    there is no set or it holds no arrays in memory. A plan keeps it, so that applying the plan to other
    data under the same file name is noticed."""
    import hashlib

    arrays = getattr(calibration, "arrays", None)
    if not arrays:
        return None
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(value_bytes(array))
    return digest.hexdigest()


SAMPLE_DIGEST_CHARS = 12  # hex digits of SHA-256 kept per sample: 48 bits, no chance match among thousands
SAMPLE_DIGESTS_KEPT = 4096  # calibration samples whose digests a compressed model keeps (the first ones)


def sample_digests(inputs, limit: Optional[int] = None) -> list[str]:
    """One short digest per sample of an :class:`~onnx_alds.inputs.InputSet` (the first ``limit``): SHA-256
    of that sample's row of every input (name, type, shape and values, in name order), its first
    ``SAMPLE_DIGEST_CHARS`` hex digits. A compressed model keeps its calibration samples' digests, so that
    validation or distillation on some of the same samples is noticed (:func:`calibration_overlap`)."""
    import hashlib

    arrays = getattr(inputs, "arrays", None)
    if not arrays:
        return []
    count = len(next(iter(arrays.values())))
    digests = []
    for index in range(count if limit is None else min(count, limit)):
        digest = hashlib.sha256()
        for name in sorted(arrays):
            row = np.ascontiguousarray(arrays[name][index])
            digest.update(f"{name}|{row.dtype.str}|{row.shape}|".encode())
            digest.update(value_bytes(row))
        digests.append(digest.hexdigest()[:SAMPLE_DIGEST_CHARS])
    return digests


def _digest_list(kept: str) -> list[str]:
    """The sample digests a ``CALIBRATION_SAMPLES_KEY`` value holds, in order."""
    return [kept[i:i + SAMPLE_DIGEST_CHARS] for i in range(0, len(kept), SAMPLE_DIGEST_CHARS)]


def kept_sample_digests(inputs, earlier: str = "") -> str:
    """The ``CALIBRATION_SAMPLES_KEY`` value a model keeps: the digests of the first ``SAMPLE_DIGESTS_KEPT``
    samples of ``inputs`` (None: none) it was fitted to, then the ``earlier`` steps' (a compressed model
    compressed again, or distilled), each once, at most four steps' worth."""
    ours = sample_digests(inputs, SAMPLE_DIGESTS_KEPT) if inputs is not None else []
    return "".join(list(dict.fromkeys(ours + _digest_list(earlier)))[:4 * SAMPLE_DIGESTS_KEPT])


def calibration_overlap(model: onnx.ModelProto, inputs) -> Optional[tuple[int, int]]:
    """``(in_calibration, total)``: how many of the samples of ``inputs`` are samples ``model`` was calibrated
    on (the digests compress wrote into its metadata: the first ``SAMPLE_DIGESTS_KEPT`` samples' of each step,
    and the whole set's, which tells a larger set, or a model written before samples were kept); None when
    ``model`` keeps no calibration digest."""
    from .api import CALIBRATION_DIGEST_KEY, CALIBRATION_SAMPLES_KEY

    props = {entry.key: entry.value for entry in model.metadata_props}
    kept, whole = props.get(CALIBRATION_SAMPLES_KEY), props.get(CALIBRATION_DIGEST_KEY)
    if not kept and not whole:
        return None
    total, seen = len(inputs), 0
    if kept:
        calibrated = set(_digest_list(kept))
        seen = sum(digest in calibrated for digest in sample_digests(inputs))
        if seen == total or total <= SAMPLE_DIGESTS_KEPT or not whole:  # (every sample of the set was kept)
            return seen, total
    return (total, total) if calibration_digest(inputs) == whole else (seen, total)


def planned_inputs(model: onnx.ModelProto, input_shapes) -> dict[str, tuple]:
    """The input shapes a plan is made (and applied) at: resolved as compress resolves them, or, where dims
    stay dynamic (compress then runs without counting MACs), the declared dims with the dynamic ones by
    name (``("batch", "sequence")``). Raises InputDataError for ``input_shapes`` that do not fit."""
    from .errors import UnsupportedModelError
    from .model_io import graph_inputs, resolve_input_shapes

    try:
        inputs, _ = resolve_input_shapes(model, input_shapes, batch_default=1)
        return {name: tuple(dims) for name, dims in inputs.items()}
    except UnsupportedModelError:  # dynamic dims besides the batch, not given
        given = dict(input_shapes or {})
        return {spec.name: tuple(given[spec.name]) if spec.name in given else
                tuple(d if isinstance(d, int) else str(d or "?") for d in spec.dims) for spec in graph_inputs(model)}


# the current digest of weights first, then earlier plans' ones
DIGEST_SCHEMES = ("transposes", "readers", "unnamed", "named")


def weights_digest(model, *, scheme: str = "transposes") -> str:
    """SHA-256 of a model's constants (initializers and Constant nodes, subgraphs included: types, shapes and
    values; empty ones hold nothing and are left out), whatever their names and order, each bound to the
    Conv/Gemm/MatMul inputs that read it (node name and input index) and to the permutations of the Transpose
    nodes on the way (a stored HWIO kernel read through another perm is another weight). A plan keeps it, so
    that applying the plan to a model whose weights changed (same names and shapes; two layers' weights
    swapped; the same constant transposed otherwise) is noticed, and a model whose constants are only renamed
    (or re-exported with an empty Resize roi more, or an Identity or Cast on the way) is not.
    ``scheme``: "transposes" (this one); "readers" (plans of 2026-12 up to stop 41: the Transpose perms left
    out); "unnamed" (plans of early 2026-12: no readers, so a swap went unnoticed); "named" (plans written
    before 2026-12: names included, every constant)."""
    return weights_digests(model, (scheme,))[scheme]


def weights_digests(model, schemes: Sequence[str] = DIGEST_SCHEMES) -> dict[str, str]:
    """:func:`weights_digest` of each of ``schemes``, every constant read once."""
    import hashlib

    from .layers import chain_source, constant_tensors, is_layer_node, iter_graphs
    from .model_io import open_model

    opened = open_model(model)
    tensors = constant_tensors(opened.model)
    readers: dict[str, list[str]] = {}
    transposed: dict[str, list[str]] = {}  # the same, each with the Transpose perms on the way
    if "readers" in schemes or "transposes" in schemes:
        for path, graph in iter_graphs(opened.model.graph):
            producers = {output: node for node in graph.node for output in node.output}
            for position, node in enumerate(graph.node):
                if not is_layer_node(node):
                    continue
                reader = node.name or f"{path}#{position}"  # (an unnamed node: by its place, as plans name it)
                for index, name in enumerate(node.input):
                    source = chain_source(name, producers)  # (through Identity, Transpose, Cast ...)
                    if source in tensors:
                        readers.setdefault(source, []).append(f"{reader}:{index}")
                        perms = "".join(f"T{perm}" for perm in _chain_perms(name, source, producers))
                        transposed.setdefault(source, []).append(f"{reader}:{index}{perms}")
    named = hashlib.sha256()  # one running hash over the constants in name order
    parts: dict[str, list[bytes]] = {"unnamed": [], "readers": [], "transposes": []}  # one per constant, sorted
    for name, tensor in sorted(tensors.items()):
        array = np.ascontiguousarray(numpy_helper.to_array(opened.store.load(tensor)))
        head = f"{tensor.data_type}|{array.shape}|".encode()
        if "named" in schemes:
            named.update(f"{name}|".encode() + head)
            named.update(value_bytes(array))
        if array.size and set(schemes) & {"unnamed", "readers", "transposes"}:
            content = hashlib.sha256(head + bytes(value_bytes(array))).digest()
            parts["unnamed"].append(content)
            for scheme, bound in (("readers", readers), ("transposes", transposed)):
                read_by = "|".join(sorted(bound.get(name, ()))).encode()
                parts[scheme].append(hashlib.sha256(read_by + b"|" + content).digest() if read_by else content)
    digests = {"named": named.hexdigest()}
    for scheme, hashes in parts.items():
        digest = hashlib.sha256()
        for part in sorted(hashes):
            digest.update(part)
        digests[scheme] = digest.hexdigest()
    return {scheme: digests[scheme] for scheme in schemes}


def _chain_perms(name: str, source: str, producers: Mapping[str, onnx.NodeProto]) -> list[str]:
    """The perms of the Transpose nodes between the constant ``source`` and the layer input ``name`` (the chain
    :func:`onnx_alds.layers.chain_source` follows), from the constant on; a perm that keeps the order is left
    out, and so is a Transpose without one (it reverses the axes: the same for every model that has it)."""
    perms: list[str] = []
    while name != source:
        node = producers[name]
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm is None or perm != sorted(perm):
                perms.append(str(perm) if perm is not None else "reversed")
        name = node.input[0]
    return perms[::-1]


def recorded_weights(model: onnx.ModelProto, layers: Sequence[Any]) -> dict[str, str]:
    """Each layer's weight name -> the tensor a plan records for it: the initializer (or Constant output) the
    node reads through Identity, Cast, Transpose, Reshape ... (:func:`onnx_alds.layers.chain_source`), so that
    a model simplified by removing or adding such a chain still matches its plan."""
    producers = {output: node for _, graph in iter_graphs(model.graph) for node in graph.node
                 for output in node.output}  # (names are unique across a model's graphs: SSA)
    return {layer.weight: chain_source(layer.weight, producers) for layer in layers if getattr(layer, "weight", None)}


def _plan_from(options: CompressOptions, model: onnx.ModelProto, report, weights: Optional[str]) -> Plan:
    """The plan of a planned compression (or a pruning compression), from its report rows and blocks;
    ``weights`` the :func:`weights_digest` of the model as given."""
    from . import __version__

    unit = {"params": "params_after", "flops": "macs_after", "latency": "time_us"}[options.budget.target]
    sources = recorded_weights(model, report.layers)
    layers = []
    for row in report.layers:
        option = SKIPPED if row.skip_reason else (FACTORIZED if row.groups else KEPT_DENSE)
        order = row.order if option == FACTORIZED else None
        cost = getattr(row, unit)
        predicted = Predicted(option, row.groups, row.rank if row.groups else 0, order, float(row.error),
                              None if cost is None else float(cost), row.time_dense_us, row.time_us,
                              row.time_measured)
        layers.append(LayerDecision(row.name, row.op, tuple(row.weight_shape), row.params_before, option, row.groups,
                                    row.rank if row.groups else 0, order, row.skip_reason, predicted,
                                    sources.get(row.weight, row.weight)))
    inputs = planned_inputs(model, options.input_shapes)
    data = options.data
    options_dict = _options_dict(options, None if data.calibration is None else str(data.calibration.source),
                                 report.calibration_samples)
    totals = {"requested": report.requested, "target": options.budget.target, "achieved": report.achieved,
              "params_before": report.params_before, "params_after": report.params_after,
              "macs_before": report.macs_before, "macs_after": report.macs_after, "max_error": report.max_error,
              "error_measure": report.error_measure, "search": report.search, "latency": report.latency,
              "searched": {**{key: options_dict["search"].get(key) for key in SEARCHED_KEYS},
                           "data": {key: options_dict["data"].get(key) for key in FITTED_KEYS}}}
    blocks = tuple(BlockDecision(b.name, b.producer, b.consumer, b.width_before, b.width_after,
                                 PredictedWidth(b.width_after, float(b.error), b.params_after, b.macs_after))
                   for b in report.pruned or ())
    return Plan({"inputs": {name: tuple(dims) for name, dims in inputs.items()}, "params": report.params_before,
                 "layers": len(layers), "weights": weights}, options_dict, tuple(layers), totals,
                {"onnx_alds": __version__}, blocks, report=report)


def make_plan(model, **options) -> Plan:
    """The plan ``compress(model, **options)`` would apply (same keywords, grouped options included):
    every layer's decision and its predicted error and cost. Nothing is rewritten."""
    from .api import (_alignment_notes, _compression_report, _harm_warnings, _plan_step, check_compress_keywords,
                      check_workers_have_calibration)
    from .model_io import open_model

    check_compress_keywords("make_plan", options)
    refuse_group_and_keyword(options, {group: options.get(group) for group in GROUP_KEYWORDS})
    workers = options.pop("calibration_workers", 1)
    check_workers_have_calibration(workers, options.get("calibration"), options.get("data"))
    if workers != 1:  # the same call inside the workers' context, as compress does
        from .calibrate import calibration_workers

        with calibration_workers(workers):
            return make_plan(model, **options)
    prune, prune_heads = options.pop("prune", "off"), options.pop("prune_heads", False)
    compress_opts = compress_options(**options)
    compress_opts = replace(compress_opts, search=with_pruning(compress_opts.search, prune, prune_heads))
    refuse_without_effect(compress_opts)  # as the command line refuses flags that change nothing
    opened = open_model(model)  # read once: the steps below and the digest share it
    if compress_opts.search.prune != "off":  # the pruning compression, its report made a plan
        from .prune import compress_pruned

        result = compress_pruned(opened, compress_opts, compress_opts.search.prune)
        return _plan_from(compress_opts, opened.model, result.report, weights_digest(opened))
    planned = _plan_step(opened, compress_opts)
    budget, search, data = compress_opts.budget, compress_opts.search, compress_opts.data
    report = _compression_report(planned.prepared, planned.chosen, planned.allocation, target=budget.target,
                                 keep=budget.keep, method=search.method, measure=planned.measure, seed=search.seed,
                                 rank_multiple=search.rank_multiple, seconds=planned.seconds,
                                 calibration=None if data.calibration is None else str(data.calibration.source),
                                 speed=planned.speed)
    report = _as_written(report, planned, budget, search.rank_multiple)
    if planned.damage is not None:  # (the errors are the damage tables', as compress names them)
        from .api import with_damage_figures

        report = with_damage_figures(report, planned.damage)
    if data.enabled:
        from .api import data_aware_steps
        from .data_aware import sample_count

        report = replace(report, calibration_samples=sample_count(data.calibration, planned.prepared.model),
                         data_aware_steps=data_aware_steps(data), notes=report.notes + tuple(planned.calibration_notes))
    report = replace(report, notes=report.notes + _alignment_notes(report, search.rank_multiple),
                     warnings=_harm_warnings(report, planned.prepared, data.enabled, planned.stats)
                     + planned.warnings)
    return _plan_from(planned.options, planned.prepared.model, report, weights_digest(opened))


def _as_written(report, planned, budget: Budget, rank_multiple: int):
    """``report`` with the weight count the written model will hold, as compress reports it after writing
    (:func:`onnx_alds.api._apply_step`): the allocation counts each factorized layer's weight, the rewrite
    drops that weight's source with the other constants only its chain reads (a Reshape's shape ...), and
    adds the output shift of ``--bias-correction`` / ``--affine-correction``."""
    from .api import _correction_bias_params, with_written_params

    factorized = [layer for layer, choice in zip(planned.chosen, planned.allocation.choices) if choice.groups != DENSE]
    written = (report.params_after + sum(layer.params for layer in factorized)
               - _dropped_constants(planned.prepared.model, factorized))
    data = planned.options.data
    if data.calibration is not None and (data.bias_correction or data.affine_correction):  # each layer's shift
        written += sum(_correction_bias_params(planned.prepared.model, factorized))
    return with_written_params(report, written, budget.target, budget.keep, rank_multiple)


def _dropped_constants(model: onnx.ModelProto, factorized: Sequence[Layer]) -> int:
    """Weight elements (initializers and Constant nodes, every graph) nothing reads once ``factorized`` no
    longer read their weights: the weights' sources and the constants of the chains that computed them,
    which the rewrite's cleanup drops (what nothing else reads stays)."""
    from .layers import constant_node_value, iter_graphs, use_counts

    graphs = [graph for _, graph in iter_graphs(model.graph)]
    reads: Counter = Counter()
    use_counts(model.graph, reads)  # (every depth)
    producers = {output: node for graph in graphs for node in graph.node for output in node.output if output}
    initializers = {tensor.name: tensor for graph in graphs for tensor in graph.initializer}
    pending = []
    for layer in factorized:
        reads[layer.weight] -= 1
        pending.append(layer.weight)
    dropped, gone = 0, set()
    while pending:
        name = pending.pop()
        if reads[name] > 0 or name in gone:
            continue
        gone.add(name)
        node = producers.get(name)
        if node is not None:
            if any(reads[output] > 0 for output in node.output if output) or id(node) in gone:
                continue
            gone.add(id(node))
            value = constant_node_value(node) if node.op_type == "Constant" else None
            dropped += 0 if value is None else int(np.prod(value.dims)) if value.dims else 1
            for source in node.input:
                if source:
                    reads[source] -= 1
                    pending.append(source)
        elif name in initializers:
            dims = initializers[name].dims
            dropped += int(np.prod(dims)) if dims else 1
    return dropped


# --------------------------------------------------------------------------------------------------
# Applying a plan


def apply_plan(model, plan: Plan, calibration=None, *, calibration_workers: int = 1):
    """The model with the plan's decisions applied (data-aware factors from ``calibration`` when the
    plan is data-aware): a :class:`onnx_alds.api.CompressionResult`, as ``compress`` returns.
    ``calibration_workers``: as for ``compress`` (Ray actors for the calibration statistics)."""
    from .api import _apply_step, _plan_step, check_workers_have_calibration
    from .model_io import OpenedModel

    check_workers_have_calibration(calibration_workers, calibration)
    if calibration_workers != 1:
        from .calibrate import calibration_workers as workers_context

        with workers_context(calibration_workers):
            return apply_plan(model, plan, calibration)
    if not isinstance(plan, Plan):
        raise PlanError(f"plan is a {type(plan).__name__}; give a Plan (Plan.load(path) reads a plan file)")
    if isinstance(model, OpenedModel):
        proto = model.model
    elif isinstance(model, onnx.ModelProto):
        proto = model
    else:  # a path: the light model's graph tells the layers and inputs (its large weights stay where they are)
        from .model_io import open_model

        proto = open_model(model).model
    plan.check_layer_names(proto)
    options = plan.compress_options(calibration)
    if not proto.functions:  # (patterns may name nodes of functions, inlined later)
        try:
            check_exclude_patterns(proto, options.search.exclude)
        except InputDataError as exc:  # the pattern is the plan's: apply takes no --exclude
            raise PlanError(str(exc).replace("--exclude", "the plan's options.search.exclude", 1)) from None
    options = replace(options, input_shapes=plan.input_shapes_for(proto))
    if options.search.prune != "off":
        from .prune import compress_pruned

        result = compress_pruned(model, options, options.search.prune, decisions=_PruneDecisions(plan, options))
        if result.report.search.startswith("plan"):  # every edit, block widths too (without a low-rank step: "plan")
            result = replace(result, report=replace(result.report, search=plan.search_name()))
    else:
        result = _apply_step(_plan_step(model, options, decisions=_Decisions(plan, options)))
    if (plan.options.get("search") or {}).get("method") == "damage" and options.search.prune == "off" \
            and any(layer.groups for layer in result.report.layers):  # (with --prune: the plan's own figures)
        result = replace(result, report=replace(result.report, notes=result.report.notes + (
            "the plan's ranks were chosen by measured output damage (method damage), whose tables apply does not "
            "measure again: the errors reported here are each layer's own relative error "
            f"({result.report.error_measure}); the plan's report holds the predicted damage",)))
    planned_weights = plan.model.get("weights")
    if planned_weights and planned_weights not in weights_digests(model).values():
        result = replace(result, report=replace(result.report, warnings=result.report.warnings + (
            "the model's weights differ from those the plan was made on (same layers and shapes, other values): "
            "its ranks and widths were chosen for the other weights, so its predicted errors do not hold here "
            "(the errors reported are this model's); make a new plan for this model with onnx-alds plan",)))
    planned_on = (plan.options.get("data") or {}).get("calibration")
    planned_digest = (plan.options.get("data") or {}).get("calibration_digest")
    if not plan.data_aware and (planned_on or planned_digest):  # data_aware edited to false
        result = replace(result, report=replace(result.report, notes=result.report.notes + (
            f"the plan was made data-aware (calibrated on {planned_on or 'data'}) and is applied data-free "
            "(options.data.data_aware edited to false): its ranks were chosen for factors fitted to that data; "
            "the errors reported are the weights' own",)))
    fitted = calibration
    if calibration is not None and planned_on:  # the set as compress fitted it, whose digest and source the plan
        from .inputs import calibration_as_fitted  # keeps

        try:
            fitted = calibration_as_fitted(proto, calibration)
        except OnnxAldsError:  # (the step itself refused it already, or took it as it is)
            fitted = calibration
    given_digest = calibration_digest(fitted) if calibration is not None and planned_digest else None
    if calibration is not None and planned_on and (
            given_digest != planned_digest if given_digest is not None else str(fitted.source) != planned_on):
        same_name = str(fitted.source) == planned_on
        result = replace(result, report=replace(result.report, notes=result.report.notes + (
            f"calibration differs from the plan's ({calibration.source}"
            f"{': same name, other data' if same_name else f', the plan was made on {planned_on}'}): the "
            "factors are fitted to the inputs given now, the ranks were chosen on the plan's",)))
    return result


def _skipped_reason(reason: Optional[str]) -> str:
    """Why a layer the plan skipped, which this model and the plan's options let be factorized, stays dense:
    the plan's reason, but for those its options gave, which no longer hold (an exclude pattern edited
    away; a pruned block's width, which the block's own note gives where it is still narrowed)."""
    if not reason:
        return "skipped in the plan"
    if reason.startswith("excluded by the user"):
        return "skipped in the plan (excluded when it was made; options.search.exclude no longer names it)"
    if reason.startswith("pruned block "):
        return "skipped in the plan (in a block it narrowed when it was made)"
    return reason


class _Decisions:
    """A plan bound to the model it is applied to (what :func:`onnx_alds.api._plan_step` asks of it)."""

    def __init__(self, plan: Plan, options: CompressOptions, pruned: frozenset = frozenset()) -> None:
        self.plan = plan
        self.options = options
        self.by_name = {decision.name: decision for decision in plan.layers}
        self.pruned = pruned  # layers of narrowed blocks: their shapes were checked before pruning

    def _error(self, message: str) -> PlanError:
        return PlanError(f"the plan does not fit this model: {message}")

    def check(self, prepared, input_shapes, *, calibrated: bool = False) -> dict[str, str]:
        """Every layer of the model in the plan and the other way round, with the same op and weight
        shape, at the same input shapes, and every layer the plan factorizes factorizable (with calibration
        inputs, ``calibrated``: by data-aware factors too); returns the layers to keep dense as the plan
        skipped them."""
        from .api import _uncalibrated_reason

        fix = "make a new plan for it with onnx-alds plan"
        inputs = planned_inputs(prepared.model, input_shapes)
        planned = {name: tuple(dims) for name, dims in self.plan.model.get("inputs", {}).items()}
        if inputs != planned:
            raise self._error(f"its inputs resolve to {_show_shapes(inputs) or 'none'}, the plan was made at "
                              f"{_show_shapes(planned) or 'no inputs'}; {fix}")
        model_layers = {layer.name: layer for layer in prepared.layers}
        sources = recorded_weights(prepared.model, prepared.layers)
        for decision in self.plan.layers:
            layer = model_layers.get(decision.name)
            if layer is None:
                raise self._error(f"layer '{decision.name}' of the plan is not in the model (another model, or a "
                                  f"renamed node); {fix}")
            run_time = layer.params == 0 and not layer.compressible  # (Q·Kᵀ: its operand's shape follows the inputs)
            if layer.op != decision.op or (tuple(layer.weight_shape) != tuple(decision.weight_shape)
                                           and decision.name not in self.pruned and not run_time):
                raise self._error(
                    f"layer '{decision.name}' is a {layer.op} with weight {'x'.join(map(str, layer.weight_shape))} "
                    f"in the model but a {decision.op} with weight {'x'.join(map(str, decision.weight_shape))} in "
                    f"the plan (the model changed since the plan was made); {fix}")
            why = layer.skip_reason if not layer.compressible else _uncalibrated_reason(layer) if calibrated else None
            if decision.option == FACTORIZED and why:
                undo = ("remove the pattern that names it from \"options\".\"search\".\"exclude\", set its "
                        "\"option\" to \"dense\"," if why.startswith("excluded by the user") else
                        "set its \"option\" to \"dense\"")  # (apply takes no --exclude: the plan's patterns rule)
                raise self._error(f"layer '{decision.name}' is factorized in the plan but cannot be factorized in "
                                  f"this model ({why}); {undo} or {fix}")
            if decision.name in self.pruned:
                continue
            # the initializer itself (through Identity, Cast, Transpose ...), as plans record it, or the name the
            # node reads (plans made before they recorded the initializer)
            if decision.weight is not None and decision.weight not in (layer.weight, sources.get(layer.weight)):
                raise self._error(
                    f"layer '{decision.name}' multiplies weight '{sources.get(layer.weight, layer.weight)}' in the "
                    f"model but '{decision.weight}' in the plan (the model was re-exported, quantized, or its nodes "
                    f"reordered or renamed since the plan was made); {fix}")
            if decision.params and layer.params != decision.params:
                raise self._error(f"layer '{decision.name}' holds {layer.params} weights in the model but "
                                  f"{decision.params} in the plan ("
                                  + (f"here: {layer.skip_reason}" if layer.skip_reason else
                                     "its params edited, or another model") + f"); {fix}")
        # (a product of two run-time tensors has no weight, so no decision: plans made before such products were
        # listed as layers hold no entry for them)
        missing = [name for name, layer in model_layers.items() if name not in self.by_name
                   and not (layer.params == 0 and not layer.compressible)]
        if missing:
            raise self._error(f"layer '{missing[0]}' of the model has no entry in the plan ({len(missing)} missing); "
                              f"{fix}")
        return {decision.name: _skipped_reason(decision.reason) for decision in self.plan.layers
                if decision.option == SKIPPED and model_layers[decision.name].compressible}

    def ordered(self, prepared, chosen: Sequence[Layer], *, max_groups: int, channel_multiple: int):
        """The factorized layers in the plan's order, their groups checked against the candidates."""
        ordered = {}
        for layer in chosen:
            decision = self.by_name[layer.name]
            if decision.option != FACTORIZED:
                continue
            target = layer
            if decision.order not in (None, layer.order):  # (None: the layer's own order, as a plan file reads)
                if decision.order == POINTWISE_FIRST and not layer.pointwise_first_ok:
                    raise self._error(f"layer '{layer.name}' cannot be factorized pointwise-first (it is not a k×k "
                                      "conv with stride 1 whose output keeps its input's size); set its \"order\" "
                                      f"to \"{SPATIAL_FIRST}\"")
                target = with_order(layer, decision.order, max_groups=max_groups, channel_multiple=channel_multiple)
            if decision.groups not in target.groups:
                search = self.options.search
                limit = (f"max_groups {search.max_groups}" if search.method != "damage" else
                         f"max_groups {search.max_groups}, and options.data.damage_max_groups "
                         f"{self.options.data.damage_max_groups}, the most groups damage measures")
                order = f" {decision.order or layer.order}" if layer.op == "Conv" else ""  # (a Conv's order)
                raise self._error(f"layer '{layer.name}': groups {decision.groups} is not a candidate"
                                  f"{order} under the plan's options (method {search.method}, "
                                  f"rank_multiple {search.rank_multiple}, {limit}); "
                                  f"candidates: {', '.join(map(str, target.groups))}")
            if target is not layer:
                ordered[layer.name] = target
        if not ordered:
            return prepared, list(chosen)
        return (replace(prepared, layers=[ordered.get(layer.name, layer) for layer in prepared.layers]),
                [ordered.get(layer.name, layer) for layer in chosen])

    def keeps_dense(self, name: str) -> bool:
        """Whether the plan keeps layer ``name`` dense (its error table is then not read)."""
        return self.by_name[name].option != FACTORIZED

    def allocation(self, chosen: Sequence[Layer], tables) -> Allocation:
        """The plan's decisions as an allocation, errors read from the tables (edited ranks included)."""
        choices = []
        for layer, table in zip(chosen, tables):
            decision = self.by_name[layer.name]
            predicted = decision.predicted
            if decision.option != FACTORIZED:
                choices.append(LayerChoice(DENSE, 0, float(layer.params), 0.0))
                continue
            try:
                error = table.error(decision.groups, decision.rank)
            except KeyError:
                option = next((o for o in table.options if o.groups == decision.groups), None)
                largest = int(option.ranks[-1]) if option is not None and len(option.ranks) else 0
                raise self._error(f"layer '{layer.name}': rank {decision.rank} with {decision.groups} groups "
                                  f"{'does not shrink it' if decision.rank > largest else 'is not a valid rank'} "
                                  f"(ranks 1 to {largest} do); lower the rank or set \"option\": \"dense\"") from None
            cost = predicted.cost if predicted is not None and not decision.edited and predicted.cost is not None \
                else float("nan")
            choices.append(LayerChoice(decision.groups, decision.rank, cost, error, layer.order))
        max_error = max((choice.error for choice in choices), default=0.0)
        # every edit of the plan (layers set skipped, block widths, its own budget: a pruning plan's low-rank
        # stage runs under a share of it), not only of the layers allocated here
        return Allocation(tuple(choices), float("nan"), float(sum(c.cost for c in choices)), max_error,
                          self.plan.search_name())

    def order_note(self, spatial: Sequence[Layer]) -> str:
        """The note of a plan searched pointwise-first, on its decisions as applied: how many of the
        factorized k×k convs among ``spatial`` (the model's k×k convs that may be factorized) it applies
        pointwise-first."""
        factorized = [layer for layer in spatial if self.by_name[layer.name].option == FACTORIZED]
        first = [layer for layer in factorized if self.by_name[layer.name].order == POINTWISE_FIRST]
        other = [layer for layer in factorized if layer not in first]
        dense = len(spatial) - len(factorized)
        return (f"order pointwise-first: the plan applies {len(first)} of its {len(factorized)} factorized k×k convs "
                "pointwise-first" + (f"; the other {len(other)} spatial-first, as its decisions say (first: "
                                     f"'{other[0].name}')" if other else "")
                + (f"; {dense} more k×k conv{'s stay' if dense > 1 else ' stays'} dense" if dense else ""))

    def times(self):
        """The plan's recorded layer times for the report (None when it has none)."""
        latency = self.plan.totals.get("latency")
        if not latency and not any(d.predicted and d.predicted.time_dense_us is not None for d in self.plan.layers):
            return None
        return _PlanTimes(self.plan)


class _PruneDecisions:
    """A pruning plan bound to the model it is applied to (what :func:`onnx_alds.prune.compress_pruned`
    asks of it): the layers checked on the model before pruning, the blocks' widths, and the low-rank
    decisions for the pruned model."""

    def __init__(self, plan: Plan, options: CompressOptions) -> None:
        self.plan = plan
        self.options = options
        self.layers = _Decisions(plan, options)

    @property
    def edited(self) -> bool:
        """Whether a block's width, a layer's decision or the budget differs from what the plan predicted."""
        return self.plan.search_name() != "plan"

    def _error(self, message: str) -> PlanError:
        return PlanError(f"the plan does not fit this model: {message}")

    @property
    def factorizes(self) -> bool:
        """Whether any layer of the plan is factorized (the low-rank step runs on the pruned model)."""
        return any(decision.option == FACTORIZED for decision in self.plan.layers)

    def check(self, prepared, input_shapes) -> None:
        self.layers.check(prepared, input_shapes, calibrated=True)  # (pruning is data-aware)
        if self.options.search.prune == "only" and self.factorizes:
            first = next(d.name for d in self.plan.layers if d.option == FACTORIZED)
            raise PlanError(f"layer '{first}' is factorized in a plan that prunes only (prune: only); set its "
                            "\"option\" to \"dense\", or make the plan with --prune combined")

    def widths(self, analysis) -> list[int]:
        """The plan's width of every block the model has, checked: same blocks, same full widths, widths
        the block allows, and no layer of a narrowed block factorized."""
        fix = "make a new plan for it with onnx-alds plan --prune"
        planned = {block.name: block for block in self.plan.blocks}
        widths = []
        for block, curve in zip(analysis.blocks, analysis.curves):
            decision = planned.pop(block.name, None)
            if decision is None:
                raise self._error(f"block '{block.name}' of the model has no entry in the plan's blocks; {fix}")
            if (decision.producer, decision.consumer, decision.width_before) != (block.producer.name,
                                                                                 block.consumer.name, block.width):
                raise self._error(f"block '{block.name}' is {block.producer.name} -> {block.consumer.name} of width "
                                  f"{block.width} in the model but {decision.producer} -> {decision.consumer} of width "
                                  f"{decision.width_before} in the plan; {fix}")
            allowed = [int(w) for w in curve.widths]
            if decision.width not in allowed:
                shown = ", ".join(map(str, allowed)) if len(allowed) <= 8 else \
                    f"{', '.join(map(str, allowed[:6]))}, ..., {allowed[-1]}"
                step = (f"multiples of {int(np.lcm(block.heads, self.options.search.rank_multiple))}: every one of its "
                        f"{block.heads} attention heads keeps the same number of dims, at the rank multiple"
                        if block.heads > 1 else "multiples of the rank multiple")
                raise PlanError(f"block '{block.name}': width {decision.width} is not one of its widths ({shown}: "
                                f"{step}, and the full width); give one of them")
            if decision.width < block.width:
                factorized = [name for name in block.layers if self.layers.by_name.get(name) is not None
                              and self.layers.by_name[name].option == FACTORIZED]
                if factorized:
                    raise PlanError(f"layer '{factorized[0]}' is factorized but its block '{block.name}' is narrowed "
                                    f"to {decision.width}; set the layer's \"option\" to \"dense\" or the "
                                    f"block's width to {block.width}")
            widths.append(decision.width)
        if planned:
            name = next(iter(planned))
            raise self._error(f"block '{name}' of the plan is not a prunable block of the model (with these "
                              f"calibration inputs); {fix}")
        return widths

    def low_rank(self, options: CompressOptions, narrowed) -> _Decisions:
        """The plan's layer decisions for the low-rank step on the pruned model."""
        return _Decisions(self.plan, options, frozenset(narrowed))


class _PlanTimes:
    """Layer times as recorded in a plan: known for the decisions as planned, unknown for edited ones."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.latency = dict(plan.totals.get("latency") or {})

    def layer_times(self, name: str, groups: int, rank: int, order: Optional[str]):
        decision = next((d for d in self.plan.layers if d.name == name), None)
        p = decision.predicted if decision is not None else None
        if p is None or p.time_dense_us is None:
            return None
        if groups == 0:
            return p.time_dense_us, p.time_dense_us, True
        if not decision.edited:
            return p.time_dense_us, p.time_us, bool(p.time_measured)
        return p.time_dense_us, None, False

    def predicted_us(self, decisions) -> Optional[float]:
        model_us = self.latency.get("model_us")
        if model_us is None:
            return None
        change = 0.0
        for decision in self.plan.layers:
            groups = decisions[decision.name].groups if decision.name in decisions else 0
            times = self.layer_times(decision.name, groups, 0, None)
            if times is None:
                if groups:  # factorized, with no time recorded (its "predicted" removed): not predictable
                    return None
                continue
            dense, value, _ = times
            if value is None:
                return None
            change += value - dense
        dense_all = float(self.latency.get("layers_dense_us") or 0.0)
        return predicted_model_us(float(model_us), dense_all, dense_all + change,
                                  bool(self.latency.get("proportional")))

    def achieved(self, decisions) -> float:
        predicted = self.predicted_us(decisions)
        model_us = self.latency.get("model_us")
        return predicted / model_us if predicted is not None and model_us else float("nan")

    def summary(self, decisions=None) -> dict:
        keep = ("provider", "threads", "batch", "device", "onnxruntime", "model_us", "layers_timed", "layers_dense_us",
                "slow_ranks_dropped", "candidate_ranks", "layers_with_slow_ranks",  # (the search's speed filter)
                "proportional")
        data = {key: self.latency.get(key) for key in keep}
        data.update(source="the plan", table_seconds=None, untimed={})
        unedited = not self.plan.edited_layers and not self.plan.edited_blocks
        if unedited and self.latency.get("measured_ratio") is not None:  # the decisions the plan measured, as they were
            data.update({key: self.latency.get(key) for key in ("whole_model_check", "whole_model_note",
                                                                 "measured_ratio", "measured_speedup")})
            data["source"] = "the plan (the whole model measured when it was made)"
        predicted = self.predicted_us(decisions or {})
        if predicted is not None and data.get("model_us"):
            data.update(rest_us=data["model_us"] - (data.get("layers_dense_us") or 0.0), predicted_us=predicted,
                        predicted_speedup=data["model_us"] / predicted if predicted > 0 else None)
        return data


# --------------------------------------------------------------------------------------------------
# Command line


def add_apply_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``onnx-alds apply``."""
    from .inputs import add_input_arguments
    from .validate import add_validation_arguments

    parser.add_argument("model", help="ONNX model file the plan was made for (never modified)")
    parser.add_argument("plan", help="plan JSON written by onnx-alds plan (edited or not)")
    parser.add_argument("-o", "--output", required=True, help="where to write the compressed model")
    parser.add_argument("--report", metavar="FILE.json", help="write the per-layer result and totals as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the totals")
    add_input_arguments(parser, prefix="calibration-", input_shape=False)
    parser.add_argument("--validate", action="store_true",
                        help="after applying, validate and benchmark against the original (validate options below)")
    add_validation_arguments(parser)


def run_plan_command(args: argparse.Namespace) -> int:
    """``onnx-alds plan``: the compress flags, the plan written to ``-o`` instead of a model."""
    from .cli import check_flags_take_effect, compress_keywords
    from .inputs import inputs_from_args
    from .model_io import advice_path, check_output_path, open_model

    check_flags_take_effect(args, writes_model=False)
    if getattr(args, "validate", False):
        raise PlanError("plan writes a plan, not a model: validate after onnx-alds apply (apply --validate)")
    output = Path(args.output)
    check_output_path(output, protect=[args.model])
    if args.report:
        check_output_path(Path(args.report), protect=[args.model, args.output], flag="--report")
    model = open_model(args.model)
    calibration = inputs_from_args(model.model, args, prefix="calibration-", required=False)
    workers = getattr(args, "calibration_workers", 1)
    if workers != 1:  # the statistics' shards on Ray actors, as compress does (same bits)
        from .calibrate import calibration_workers

        with calibration_workers(workers):
            plan = make_plan(model, **compress_keywords(args, calibration))
    else:
        plan = make_plan(model, **compress_keywords(args, calibration))
    from .cli import write_together

    args.written_files = []  # what an interrupt or a failed print from here on leaves written (cli names it)
    write_together(lambda also: plan.save(output, also=also), output, plan.report, args.report,  # both or neither
                   written=args.written_files)
    # warnings on stderr, as compress prints them; their "--validate" belongs to apply here
    text = "\n".join(line for line in plan.report.format().splitlines() if not line.startswith("warning: "))
    for warning in plan.report.warnings:
        print(f"warning: {warning}".replace("check with --validate", "check with onnx-alds apply --validate"),
              file=sys.stderr)
    print(text if not args.quiet else text.split("\n\n", 1)[-1])
    print(f"wrote {output} (apply it with: onnx-alds apply {advice_path(args.model)} "
          f"{advice_path(output)} -o OUT" + (" --calibration ..." if plan.data_aware else "") + ")")
    return 0


def _other_output(data: Any) -> Optional[str]:
    """What other onnx-alds output ``data`` (a JSON file's contents) is, in a few words: a report (compress
    --report, validate --json, distill, sweep.json), a sweep's row file; None for anything else."""
    from .model_io import json_output_kind

    if not isinstance(data, dict) or data.get("format") == PLAN_FORMAT:
        return None
    if set(data) == {"fingerprint", "row"}:
        return "a sweep's row file (one variant's record, under the sweep folder's rows/)"
    if set(data) >= {"rows", "environment"}:
        return "a sweep's summary (sweep.json)"
    if json_output_kind(data) == "onnx-alds report":
        return "an onnx-alds report (the JSON of compress --report, validate, analyze, bench or distill)"
    if "format" not in data and len(set(data) & {"version", "model", "options", "layers"}) < 2:
        shown = ", ".join(repr(key) for key in list(data)[:4]) + (", ..." if len(data) > 4 else "")
        return f"a JSON file of another kind (its keys: {shown or 'none'})"
    return None


def _is_a_plan(path: Path) -> bool:
    """Whether ``path`` holds a plan (a small file that :meth:`Plan.load` reads): apply's arguments swapped."""
    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return False
        Plan.load(path)
    except (OSError, OnnxAldsError):
        return False
    return True


def run_apply_command(args: argparse.Namespace) -> int:
    """``onnx-alds apply``: read the plan, check it against the model, rewrite, write (and validate)."""
    from .cli import check_flags_take_effect, write_result
    from .inputs import inputs_from_args
    from .model_io import advice_path, check_output_path, open_model, refuse_over_protobuf_limit

    check_flags_take_effect(args)
    check_output_path(Path(args.output), protect=[args.model, args.plan])
    if args.report:
        check_output_path(Path(args.report), protect=[args.model, args.output, args.plan], flag="--report")
    try:
        plan = Plan.load(args.plan)
    except PlanError:
        if _is_a_plan(Path(args.model)):
            raise PlanError(f"'{args.plan}' is not a plan and '{args.model}' looks like one: the model comes first; "
                            f"onnx-alds apply {advice_path(args.plan)} {advice_path(args.model)} -o "
                            f"{advice_path(args.output)}") from None
        raise
    model = open_model(args.model)
    if args.validate:  # before the work
        refuse_over_protobuf_limit(model, "--validate holds the original and the compressed model in memory")
    plan.check_layer_names(model.model)
    args.seed = plan.options["search"]["seed"]  # --calibration-random draws as when the plan was made
    shapes = plan.input_shapes_for(model.model)
    args.input_shape = [f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items()] if shapes else None
    try:
        calibration = inputs_from_args(model.model, args, prefix="calibration-", required=False)
    except InputDataError as error:  # the shapes are the plan's: apply takes no --input-shape
        if "--input-shape asks for" not in str(error):
            raise
        raise InputDataError(str(error).replace("but --input-shape asks for", "but the plan was made at").replace(
            "another --input-shape", "a plan made at another --input-shape")) from None
    result = apply_plan(model, plan, calibration=calibration)
    edited, blocks = plan.edited_layers, plan.edited_blocks
    if not isinstance(plan.totals.get("searched"), dict):  # (removed, or a plan of an older onnx-alds)
        result = replace(result, report=replace(result.report, notes=result.report.notes + (
            "the plan records no totals.searched (what made its decisions): its options.search (method, seed, "
            "rank multiple ...) are reported as written, unchecked",)))
    narrowed = {block.name for block in plan.blocks if block.width < block.width_before}
    dense = [d for d in plan.layers if d.option == KEPT_DENSE and d.in_narrowed_block
             and (found := re.match(r"pruned block '(.*)': ", d.reason or "")) and found.group(1) in narrowed]
    if dense:  # (set to dense in a plan whose block is narrowed: the width says what it becomes)
        result = replace(result, report=replace(result.report, notes=result.report.notes + (
            f"{len(dense)} {'layer' if len(dense) == 1 else 'layers'} set to dense in the plan "
            f"{'is' if len(dense) == 1 else 'are'} in a block the plan narrows (first: '{dense[0].name}', "
            f"{dense[0].reason}): {'it stays' if len(dense) == 1 else 'they stay'} narrowed, unfactorized; to keep "
            "a layer whole, set its block's width (blocks) to the full width",)))
    if blocks:
        result = replace(result, report=replace(result.report, notes=result.report.notes + (
            f"{len(blocks)} block {'width differs' if len(blocks) == 1 else 'widths differ'} from what the plan "
            f"predicted (edited; first: '{blocks[0].name}' "
            f"width {blocks[0].width})",)))
    if edited:
        first = edited[0]
        result = replace(result, report=replace(result.report, notes=result.report.notes + (
            f"{len(edited)} {'layer differs' if len(edited) == 1 else 'layers differ'} from what the plan predicted "
            f"(edited; first: '{first.name}' "
            f"{first.option}{f' g={first.groups} r={first.rank} {first.order}' if first.option == FACTORIZED else ''}"
            "): their errors are recomputed; the times of those factorized are unknown (a dense layer's is the "
            "plan's)",)))
    return write_result(args, result)


__all__ = ["Plan", "LayerDecision", "Predicted", "BlockDecision", "PredictedWidth", "PlanError", "make_plan",
           "apply_plan", "PLAN_FORMAT", "PLAN_VERSION", "add_apply_arguments", "run_plan_command", "run_apply_command"]
