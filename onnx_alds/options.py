"""The options of a compression, grouped into small frozen values that each step receives whole.

``compress`` still takes its keyword arguments (scripts and tests call it that way); they are turned
into these groups first, and every step gets only the group it uses:

- :class:`Budget`: what to meet (``--keep-params``, ``--keep-flops`` or ``--keep-latency``);
- :class:`SearchOptions`: how the allocation searches (method, error measure, rank multiple, groups,
  order, seed, layers to leave out);
- :class:`DataAwareOptions`: calibration inputs and the data-aware refinements;
- :class:`SpeedOptions`: where latency is measured (provider, threads, batch) and how (tables, cache).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from .argtypes import check_count, check_number, check_switch, check_threads
from .errors import BudgetError, InputDataError
from .layers import ORDERS, POINTWISE_FIRST, SPATIAL_FIRST

AUTO_ORDER = "auto"  # per k×k conv, the order the latency tables say is faster
ORDER_CHOICES = ORDERS + (AUTO_ORDER,)
TARGETS = ("params", "flops", "latency")
PRUNE_MODES = ("off", "combined", "only")  # hidden-channel pruning (onnx_alds.prune)
METHODS = ("alds", "svd", "svd-energy", "l-rank", "damage")  # damage: needs calibration (onnx_alds.damage)


@dataclass(frozen=True)
class Budget:
    """The fraction of the model's weights (``params``), MACs (``flops``) or measured time (``latency``) to keep."""

    target: str
    keep: float

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise BudgetError(f"unknown budget target '{self.target}'; choose one of: {', '.join(TARGETS)}")
        flag = self.flag
        keep = self.keep
        if isinstance(keep, (str, bytes)):
            raise BudgetError(f"{flag} {keep!r} is a string; give a number, the fraction to keep in (0, 1]")
        if isinstance(keep, np.ndarray) and keep.shape == () and keep.dtype.kind in "iuf":
            keep = keep[()]  # a 0-d array (np.float32(x) arithmetic often gives one)
        if isinstance(keep, np.floating) and keep.dtype.itemsize < 8:
            keep = float(str(keep))  # np.float32(0.3) is 0.3 asked, not 0.30000001192092896
        if keep is not None and (isinstance(keep, (bool, np.bool_)) or not isinstance(keep, numbers.Real)):
            raise BudgetError(f"{flag} {keep!r} is a {type(keep).__name__}; give a float, the fraction to keep in "
                              f"(0, 1], e.g. {flag} 0.5")
        if keep is None or not math.isfinite(keep) or not 0.0 < keep <= 1.0:
            raise BudgetError(f"{flag} {keep} is out of range; give the fraction to keep, in (0, 1], e.g. {flag} 0.5")
        object.__setattr__(self, "keep", float(keep))

    @property
    def flag(self) -> str:
        return f"--keep-{self.target}"

    @classmethod
    def from_keywords(cls, keep_params: Optional[float] = None, keep_flops: Optional[float] = None,
                      keep_latency: Optional[float] = None) -> "Budget":
        given = [(target, value) for target, value in
                 (("params", keep_params), ("flops", keep_flops), ("latency", keep_latency)) if value is not None]
        if len(given) != 1:
            raise BudgetError("give exactly one target: keep_params (--keep-params), keep_flops (--keep-flops) "
                              "or keep_latency (--keep-latency)")
        return cls(*given[0])


@dataclass(frozen=True)
class SearchOptions:
    """How the allocation searches: ``order`` is ``spatial-first``, ``pointwise-first`` or ``auto``
    (per k×k stride-1 conv, decided by the latency tables); ``keep_dense``: node names to leave dense,
    each with the reason to report."""

    method: str = "alds"
    error_measure: Optional[str] = None
    rank_multiple: int = 1
    max_groups: int = 16
    order: str = SPATIAL_FIRST
    seed: int = 0
    exclude: tuple[str, ...] = ()
    keep_dense: Mapping[str, str] = field(default_factory=dict, hash=False)
    prune: str = "off"  # --prune (onnx_alds.prune): "off", "combined" (widths + low-rank) or "only" (widths)
    prune_heads: bool = False  # --prune-heads: blocks may follow channels split into attention heads

    def __post_init__(self) -> None:
        from .spectra import ERROR_MEASURES

        if self.method not in METHODS:
            raise BudgetError(f"unknown method '{self.method}'; choose one of: {', '.join(METHODS)}")
        if self.error_measure is not None and self.error_measure not in ERROR_MEASURES:
            raise BudgetError(f"unknown error measure '{self.error_measure}'; "
                              f"choose one of: {', '.join(ERROR_MEASURES)}")
        for name, value in (("rank_multiple", self.rank_multiple), ("max_groups", self.max_groups)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise BudgetError(f"{name}={value!r}: give a positive integer such as 16")
        if isinstance(self.exclude, (str, bytes, os.PathLike)):
            raise BudgetError(f"exclude={self.exclude!r} is one string; give a list of names or patterns, e.g. "
                              f"[{str(self.exclude)!r}]")
        exclude = () if self.exclude is None else tuple(self.exclude) if isinstance(self.exclude, Iterable) else None
        if exclude is None or not all(isinstance(pattern, str) for pattern in exclude):
            raise BudgetError(f"exclude={self.exclude!r}: give a list of node or weight names (or glob patterns), "
                              "e.g. ['fc', '*/head/*']")
        if self.keep_dense is not None and not isinstance(self.keep_dense, Mapping):
            raise BudgetError("keep_dense maps node names to the reason each stays dense, e.g. {'fc': 'head'}; "
                              f"got {type(self.keep_dense).__name__}")
        if self.keep_dense and not all(isinstance(name, str) for name in self.keep_dense):
            raise BudgetError(f"keep_dense={self.keep_dense!r}: its keys are node names (strings), e.g. "
                              "{'fc': 'head'}")
        for name, reason in (self.keep_dense or {}).items():  # (a None reason would read as "compressible")
            if not isinstance(reason, str) or not reason.strip():
                raise BudgetError(f"keep_dense[{name!r}]={reason!r}: give the reason the layer stays dense, as "
                                  f"text, e.g. {{{name!r}: 'head'}}")
        if self.rank_multiple < 1:
            raise BudgetError(f"--rank-multiple {self.rank_multiple} is out of range; "
                              "give a positive integer such as 16")
        if self.max_groups < 1:
            raise BudgetError(f"--max-groups {self.max_groups} is out of range; give a positive integer such as 16")
        if isinstance(self.seed, (bool, np.bool_)) or not isinstance(self.seed, (int, np.integer)):
            raise BudgetError(f"seed={self.seed!r}: give an integer in [0, 2**32), e.g. 0")
        if not 0 <= int(self.seed) < 2**32:
            raise BudgetError(f"--seed {self.seed} is out of range; give an integer in [0, 2**32), e.g. --seed 0")
        if self.order not in ORDER_CHOICES:
            raise BudgetError(f"unknown order '{self.order}'; choose one of: {', '.join(ORDER_CHOICES)}")
        if self.prune is not None and not isinstance(self.prune, (bool, np.bool_, str)):
            raise BudgetError(f"prune={self.prune!r}: give one of: {', '.join(PRUNE_MODES)} (or True / False)")
        prune = {True: "combined", False: "off", None: "off"}.get(self.prune, self.prune)  # --prune
        if prune not in PRUNE_MODES:
            raise BudgetError(f"unknown prune mode '{self.prune}'; choose one of: {', '.join(PRUNE_MODES)}")
        object.__setattr__(self, "prune", prune)
        if not isinstance(self.prune_heads, (bool, np.bool_)):
            raise BudgetError(f"prune_heads={self.prune_heads!r}: give True or False")
        if self.prune_heads and prune == "off":
            raise BudgetError("--prune-heads narrows attention heads of prunable blocks and needs --prune (or "
                              "--prune only); add one, or drop --prune-heads")
        object.__setattr__(self, "prune_heads", bool(self.prune_heads))
        for name in ("rank_multiple", "max_groups", "seed"):  # numpy ints: plain ints (reports and plans are JSON)
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "exclude", exclude)
        object.__setattr__(self, "keep_dense", dict(self.keep_dense or {}))

    @property
    def groups_searched(self) -> int:
        """The largest group count the method uses (only ``alds`` and ``damage`` search groups)."""
        return self.max_groups if self.method in ("alds", "damage") else 1


@dataclass(frozen=True)
class DataAwareOptions:
    """Calibration inputs (an :class:`onnx_alds.inputs.InputSet`; None: data-free) and the data-aware steps."""

    calibration: Any = field(default=None, compare=False)
    batch_size: int = 16
    refit: bool = True
    sequential: bool = False
    bias_correction: bool = False
    sensitivity: bool = False
    shrinkage: bool = True
    # both-factor compensation: rounds of alternating least squares of encoder and decoder (0: off)
    both_factors: int = 0
    # per-output-channel affine correction: each channel's mean and variance matched to the original's
    affine_correction: bool = False
    # --method damage: calibration inputs per probe run, ranks measured per group count, largest g measured
    damage_samples: int = 8
    damage_points: int = 4
    damage_max_groups: int = 1

    def __post_init__(self) -> None:
        check_count("batch_size", self.batch_size)
        for name in ("both_factors", "damage_samples", "damage_points", "damage_max_groups"):
            check_count(name, getattr(self, name), 0)
        for name in ("refit", "sequential", "bias_correction", "sensitivity", "shrinkage", "affine_correction"):
            check_switch(name, getattr(self, name))
            object.__setattr__(self, name, bool(getattr(self, name)))
        for name in ("batch_size", "both_factors", "damage_samples", "damage_points", "damage_max_groups"):
            object.__setattr__(self, name, int(getattr(self, name)))  # numpy ints: plain ints (plans are JSON)
        if self.both_factors < 0 or self.damage_samples < 1 or self.damage_points < 1 or self.damage_max_groups < 1:
            raise InputDataError(f"got both-factor rounds {self.both_factors}, damage samples {self.damage_samples}, "
                                 f"points {self.damage_points}, max groups {self.damage_max_groups}; give rounds >= 0 "
                                 "and positive counts (e.g. --both-factors 1 --damage-samples 8 --damage-points 3)")
        if self.both_factors > MAX_BOTH_FACTOR_ROUNDS:
            raise InputDataError(f"--both-factors {self.both_factors} is too many rounds; give at most "
                                 f"{MAX_BOTH_FACTOR_ROUNDS} (one is usually enough: docs/ACCURACY.md)")
        if self.calibration is None and (self.sequential or self.bias_correction or self.sensitivity
                                         or self.both_factors or self.affine_correction):
            flag = ("--sequential" if self.sequential else
                    "bias correction" if self.bias_correction else "sensitivity weighting" if self.sensitivity
                    else "--both-factors" if self.both_factors else "--affine-correction")
            raise InputDataError(f"{flag} needs calibration data; give calibration inputs "
                                 "(--calibration FILE.npz, --calibration-images DIR or --calibration-random N)")
        if self.calibration is not None:  # (repeats are left out against the model: api._Prepared)
            from .inputs import as_input_set

            calibration = as_input_set(self.calibration, "calibration")  # (an object with its members: checked)
            object.__setattr__(self, "calibration", calibration)

    @property
    def enabled(self) -> bool:
        return self.calibration is not None


MAX_BOTH_FACTOR_ROUNDS = 10  # each round re-solves every layer's factors; more rounds only over-fit


@dataclass(frozen=True)
class SpeedOptions:
    """Where and how layer latency is measured (``--keep-latency``, ``--order auto``, ``--speed-check``).

    ``provider``/``threads``/``batch``: the deployment the tables describe (threads None: the
    physical cores on CPU; batch None: the batch the model fixes, else that of the input shapes, else 1,
    :func:`onnx_alds.bench.default_batch`). ``grid``: measured ranks per (order, groups), interpolated between.
    ``cache_dir`` None: ``$ONNX_ALDS_CACHE`` or ``~/.cache/onnx-alds/latency``. ``prune_slow``: with a
    params or MACs budget, drop every option measured slower than ``dense / min_speedup`` (what
    ``--speed-check`` does now). ``model_rounds``: with ``--keep-latency``, at most that many rounds of
    allocating, building and timing the whole model against the dense one until the *measured* ratio
    meets the budget (:func:`onnx_alds.latency.settle_latency`; 0: trust the tables' prediction).
    ``timer``: how a set of single-layer models is timed (tests inject a fake; default
    :class:`onnx_alds.latency.OrtTimer`).
    """

    provider: str = "cpu"
    threads: Optional[int] = None
    batch: Optional[int] = None
    runs: int = 15
    warmup: Optional[int] = None
    grid: int = 4
    cache_dir: Optional[str] = None
    prune_slow: bool = False
    min_speedup: float = 1.0
    model_rounds: int = 3
    timer: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        from .runtime import PROVIDERS

        if not isinstance(self.provider, str) or self.provider not in PROVIDERS:
            raise InputDataError(f"unknown provider {self.provider!r}; choose one of: {', '.join(PROVIDERS)}")
        check_threads(self.threads)
        check_count("batch", self.batch, optional=True)
        check_count("warmup", self.warmup, 0, optional=True)
        for name in ("runs", "grid", "model_rounds"):
            check_count(name, getattr(self, name), 0)
        check_switch("prune_slow", self.prune_slow)
        check_number("min_speedup", self.min_speedup)
        for name in ("threads", "batch", "runs", "warmup", "grid", "model_rounds"):  # numpy ints: plain ints
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise InputDataError(f"cache_dir={self.cache_dir!r}: give a folder path")
        missing = [name for name in ("identity", "time_layers", "time_model", "time_ratio")
                   if self.timer is not None and not hasattr(self.timer, name)]
        if missing:  # (a wrong object failed deep inside the latency tables, as an AttributeError)
            raise InputDataError(f"timer={self.timer!r} has no {', '.join(missing)}: give an object with "
                                 "the members of onnx_alds.latency.Timer (as OrtTimer has), or None")
        if (self.batch is not None and self.batch < 1) or self.runs < 1 or self.grid < 2:
            raise InputDataError(f"got batch {self.batch}, runs {self.runs}, grid {self.grid}; give batch >= 1, "
                                 "runs >= 1 and a grid of at least 2 ranks")
        if self.model_rounds < 0:
            raise InputDataError(f"got {self.model_rounds} whole-model rounds; give 0 (off) or a positive count such as 3")
        if not self.min_speedup > 0:
            raise InputDataError(f"got min_speedup {self.min_speedup}; give a positive factor such as 1.0")


@dataclass(frozen=True)
class CompressOptions:
    """Every option of one compression, in its groups."""

    budget: Budget
    search: SearchOptions = SearchOptions()
    data: DataAwareOptions = DataAwareOptions()
    speed: Optional[SpeedOptions] = None
    input_shapes: Optional[Mapping[str, tuple[int, ...]]] = field(default=None, hash=False)

    @property
    def measures_latency(self) -> bool:
        """Whether the allocation needs latency tables."""
        return (self.budget.target == "latency" or self.search.order == AUTO_ORDER
                or (self.speed is not None and self.speed.prune_slow))


def with_pruning(search: SearchOptions, prune=None, prune_heads: bool = False) -> SearchOptions:
    """``search`` with ``compress``'s ``prune`` and ``prune_heads`` keywords applied (``prune`` off or None
    keeps the group's own mode; True is "combined"). Raises :class:`BudgetError` for heads without pruning."""
    off = prune is None or (isinstance(prune, (bool, np.bool_)) and not prune) or (isinstance(prune, str)
                                                                                and prune == "off")
    mode = search.prune if off else prune  # (0 is no mode: refused by SearchOptions, as 1 is)
    return replace(search, prune=mode, prune_heads=bool(prune_heads) or search.prune_heads)


def compress_options(*, keep_params: Optional[float] = None, keep_flops: Optional[float] = None,
                     keep_latency: Optional[float] = None, method: str = "alds",
                     error_measure: Optional[str] = None, rank_multiple: int = 1, exclude: Sequence[str] = (),
                     seed: int = 0, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                     max_groups: int = 16, calibration=None, calibration_batch_size: int = 16, refit: bool = True,
                     sequential: bool = False, bias_correction: bool = False, sensitivity: bool = False,
                     keep_dense: Optional[Mapping[str, str]] = None, order: str = SPATIAL_FIRST,
                     shrinkage: bool = True, budget: Optional[Budget] = None, search: Optional[SearchOptions] = None,
                     data: Optional[DataAwareOptions] = None, speed: Optional[SpeedOptions] = None,
                     both_factors: int = 0, affine_correction: bool = False, damage_samples: int = 8,
                     damage_points: int = 4, damage_max_groups: int = 1) -> CompressOptions:
    """:class:`CompressOptions` from ``compress``'s keyword arguments; a group given whole replaces
    the keywords it covers (giving both a group and one of its keywords is an error)."""
    defaults = dict(method="alds", error_measure=None, rank_multiple=1, exclude=(), seed=0, max_groups=16,
                    keep_dense=None, order=SPATIAL_FIRST)
    exclude = (() if exclude is None else tuple(exclude) if isinstance(exclude, Iterable)  # checked by SearchOptions
               and not isinstance(exclude, (str, bytes)) else exclude)
    given = dict(method=method, error_measure=error_measure, rank_multiple=rank_multiple, exclude=exclude,
                 seed=seed, max_groups=max_groups, keep_dense=keep_dense, order=order)
    data_defaults = dict(calibration=None, calibration_batch_size=16, refit=True, sequential=False,
                         bias_correction=False, sensitivity=False, shrinkage=True, both_factors=0,
                         affine_correction=False, damage_samples=8, damage_points=4, damage_max_groups=1)
    data_given = dict(calibration=calibration, calibration_batch_size=calibration_batch_size, refit=refit,
                      sequential=sequential, bias_correction=bias_correction, sensitivity=sensitivity,
                      shrinkage=shrinkage, both_factors=both_factors, affine_correction=affine_correction,
                      damage_samples=damage_samples, damage_points=damage_points, damage_max_groups=damage_max_groups)
    for name, value, kind in (("budget", budget, Budget), ("search", search, SearchOptions),
                              ("data", data, DataAwareOptions), ("speed", speed, SpeedOptions)):
        if value is not None and not isinstance(value, kind):
            raise BudgetError(f"{name}={value!r}: give an onnx_alds.options.{kind.__name__}(...), or its fields as "
                              "keywords")
    check_count("both_factors", both_factors, 0)
    check_count("calibration_batch_size", calibration_batch_size)
    if budget is None:
        budget = Budget.from_keywords(keep_params, keep_flops, keep_latency)
    elif any(value is not None for value in (keep_params, keep_flops, keep_latency)):
        raise BudgetError("give the budget once: budget=Budget(...) or one keep_* keyword, not both")
    if search is None:
        search = SearchOptions(**{key: value for key, value in given.items() if key != "keep_dense"},
                               keep_dense=keep_dense or {})
    else:
        _refuse_both("search", given, defaults)
    if data is None:
        data = DataAwareOptions(calibration=calibration, batch_size=calibration_batch_size, refit=refit,
                                sequential=sequential, bias_correction=bias_correction, sensitivity=sensitivity,
                                shrinkage=shrinkage, both_factors=both_factors,
                                affine_correction=affine_correction, damage_samples=damage_samples,
                                damage_points=damage_points, damage_max_groups=damage_max_groups)
    else:
        _refuse_both("data", data_given, data_defaults)
    timed = budget.target == "latency" or search.order == AUTO_ORDER
    if speed is None and timed:
        speed = SpeedOptions()
    elif speed is not None and not timed and not speed.prune_slow:  # (as the command line refuses --provider)
        raise InputDataError("speed=SpeedOptions(...) has no effect with a params or MACs budget: it sets where "
                             "latency is measured, for keep_latency, order='auto' or SpeedOptions(prune_slow=True); "
                             "give one of them or drop speed")
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        raise InputDataError(f"input_shapes={input_shapes!r}: give a dict of input name to dims, e.g. "
                             "{'input': (1, 3, 224, 224)}")
    shapes = None if input_shapes is None else dict(input_shapes)  # the dims: model_io.check_input_shapes
    return CompressOptions(budget, search, data, speed, shapes)


def refuse_without_effect(options: CompressOptions) -> None:
    """Raise :class:`InputDataError` for an option of ``options`` that would change nothing (see
    :func:`without_effect`); ``compress`` and ``make_plan`` call it once the pruning mode is set."""
    message = without_effect(options.search, options.data, calibrated=options.data.calibration is not None,
                             budget=options.budget, speed=options.speed)
    if message:
        raise InputDataError(message)


def seed_takes_effect(method: str, prune: str = "off") -> bool:
    """Whether the allocation's seed changes anything: only ALDS's search over groups has random starts
    (:func:`onnx_alds.allocate.allocate_minmax`); pruning alone factorizes nothing."""
    return method == "alds" and prune != "only"


def without_effect(search: SearchOptions, data: DataAwareOptions, *, calibrated: bool,
                   budget: Optional[Budget] = None, speed: Optional[SpeedOptions] = None) -> Optional[str]:
    """The first option set away from its default that would change nothing beside the others, as a
    one-line message naming the keywords (``compress`` raises it, as the command line refuses such flags:
    ``cli.check_flags_take_effect``), or None. ``calibrated``: whether calibration inputs are given."""
    method, pruned_only = search.method, search.prune == "only"
    if pruned_only:
        for name, changed in (("method", method != "alds"), ("error_measure", search.error_measure is not None),
                              ("order", search.order != SPATIAL_FIRST), ("max_groups", search.max_groups != 16),
                              ("both_factors", data.both_factors != 0), ("affine_correction", data.affine_correction),
                              ("sequential", data.sequential), ("bias_correction", data.bias_correction),
                              ("sensitivity", data.sensitivity), ("seed", search.seed != 0)):
            if changed:
                return (f"{name}={_value(search, data, name)!r} has no effect with prune='only' (no layer is "
                        "factorized); drop one of them")
    if data.bias_correction and data.affine_correction:
        return ("bias_correction=True has no effect with affine_correction=True (its per-channel mean and variance "
                "replace the bias correction's shift); drop one of them")
    if search.error_measure is not None and method != "alds":
        return (f"error_measure={search.error_measure!r} has no effect with method={method!r} (it allocates by its "
                "own measure); drop one of them")
    if search.seed != 0 and not seed_takes_effect(method):
        return (f"seed={search.seed} has no effect with method={method!r} (only ALDS's group search has random "
                "starts); drop one of them")
    if search.max_groups != 16 and not (method == "alds" or (method == "damage" and data.damage_max_groups > 1)):
        return (f"max_groups={search.max_groups} has no effect with method={method!r} (" +
                ("damage_max_groups sets the group counts measured" if method == "damage" else "it keeps one group")
                + "); drop one of them")
    if method != "damage":
        for name, default in (("damage_samples", 8), ("damage_points", 4), ("damage_max_groups", 1)):
            if getattr(data, name) != default:
                return f"{name}={getattr(data, name)} has no effect without method='damage'; add it or drop {name}"
    elif data.sensitivity:
        return ("sensitivity=True has no effect with method='damage' (the damage tables measure each layer's "
                "effect on the outputs); drop one of them")
    if not calibrated:
        for name, changed in (("calibration_batch_size", data.batch_size != 16), ("refit", not data.refit),
                              ("shrinkage", not data.shrinkage)):
            if changed:
                return (f"{name}={_value(search, data, name)!r} has no effect without calibration inputs; give "
                        f"calibration=... or drop {name}")
    if method == "damage" and data.damage_max_groups > search.max_groups:
        return (f"damage_max_groups={data.damage_max_groups} is more than max_groups={search.max_groups} (the group "
                "counts measured stop at max_groups); give at most that, or raise max_groups")
    timed = budget is not None and (budget.target == "latency" or search.order == AUTO_ORDER)
    if speed is not None and speed.prune_slow and (timed or pruned_only):
        return ("SpeedOptions(prune_slow=True) has no effect with " + ("prune='only' (no layer is factorized)" if
                pruned_only else "keep_latency or order='auto' (their latency tables already drop every option not "
                "measured faster than its dense layer)") + "; drop prune_slow")
    if speed is not None and speed.min_speedup != 1.0 and not speed.prune_slow:
        return (f"SpeedOptions(min_speedup={speed.min_speedup}) has no effect without prune_slow=True (it is the "
                "speedup an option must reach to stay a candidate); add prune_slow=True or drop min_speedup")
    if speed is not None and budget is not None and budget.target != "latency" and speed.model_rounds != 3:
        return (f"SpeedOptions(model_rounds={speed.model_rounds}) has no effect without keep_latency (the rounds "
                "time the whole model against a latency budget); drop model_rounds")
    return None


def _value(search: SearchOptions, data: DataAwareOptions, name: str):
    name = "batch_size" if name == "calibration_batch_size" else name
    return getattr(search, name) if hasattr(search, name) else getattr(data, name)


def _refuse_both(group: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    changed = [key for key, value in given.items() if value is not defaults[key] and value != defaults[key]]
    if changed:
        raise BudgetError(f"give '{changed[0]}' inside {group}=... or as a keyword, not both")


GROUP_KEYWORDS: Mapping[str, tuple[str, ...]] = {
    "search": ("method", "error_measure", "rank_multiple", "exclude", "seed", "max_groups", "keep_dense", "order",
               "prune", "prune_heads"),
    "data": ("calibration", "calibration_batch_size", "refit", "sequential", "bias_correction", "sensitivity",
             "shrinkage", "both_factors", "affine_correction", "damage_samples", "damage_points",
             "damage_max_groups"),
}  # compress's keywords that each group holds (its fields under these names)


def refuse_group_and_keyword(given: Iterable[str], groups: Mapping[str, Any]) -> None:
    """Raise :class:`BudgetError` when a caller gave a group (``search=``, ``data=``, not None) and, by name, a
    keyword that group holds, even one equal to its default (``given``: the keyword names the caller passed).
    :func:`compress_options` alone sees only values, so a keyword given at its default would be dropped."""
    given = set(given)
    for group, value in groups.items():
        both = [name for name in GROUP_KEYWORDS[group] if name in given]
        if value is not None and both:
            raise BudgetError(f"give '{both[0]}' inside {group}=... or as a keyword, not both")


def refuses_group_and_keyword(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a function taking compress's keywords so that a group and one of its keywords given by name
    together is an error (:func:`refuse_group_and_keyword`); its signature and docstring are kept."""
    @functools.wraps(function)
    def checked(*args: Any, **keywords: Any) -> Any:
        refuse_group_and_keyword(keywords, {group: keywords.get(group) for group in GROUP_KEYWORDS})
        return function(*args, **keywords)

    return checked


__all__ = ["AUTO_ORDER", "ORDER_CHOICES", "TARGETS", "METHODS", "Budget", "SearchOptions", "DataAwareOptions",
           "SpeedOptions", "CompressOptions", "compress_options", "refuse_without_effect", "GROUP_KEYWORDS",
           "refuse_group_and_keyword", "refuses_group_and_keyword",
           "without_effect", "POINTWISE_FIRST", "SPATIAL_FIRST"]
