"""Latency tables: the measured time of every candidate option of every layer, on the deployment's
provider and batch, cached on disk.

For one layer (a Conv/Gemm/MatMul at its resolved input shape, batch included) the table holds the
time of the dense layer and of its factorized pairs ``(order, g, r)``, each built as a single-layer
model (the dense node with random weights of the layer's shapes; the pair through the same
:func:`onnx_alds.rewrite.rewrite_model` that compression uses) and timed in ONNX Runtime
**interleaved with the dense layer** (:func:`onnx_alds.bench.time_interleaved`, the round-robin
loop of ``onnx-alds bench``): a pair's figure is its time over the dense layer's in the same loop,
times the layer's dense time, so that machine drift between loops cancels. Each time is the fastest
of the loop's rounds (other processes only slow runs down: see :class:`OrtTimer`); a loop runs at
least ``runs`` rounds and at least ``min_time_s`` seconds (4x that for the whole model's loop).

Only what the allocation can use is measured, in two loops per layer:

1. the dense layer and the smallest rank of every ``(order, g)``; an ``(order, g)`` whose smallest
   rank is not faster than the dense layer is dropped whole (a larger rank only adds work);
2. the dense layer and a coarse grid of ranks (``grid`` ranks per ``(order, g)``, evenly spaced
   over the allowed ranks, so aligned to the rank multiple) of the ``(order, g)`` that are left;
   the ranks between are interpolated linearly.

Every figure is cached as JSON under ``$ONNX_ALDS_CACHE/latency`` (default
``~/.cache/onnx-alds/latency``), one file per layer, keyed by the op, its shapes and attributes,
the provider, threads, batch, ONNX Runtime version and CPU model or GPU name: a second run, or a
second model with layers of the same shapes, measures nothing. The time of the whole dense model
(for the ops that do not change) is cached the same way, keyed by the model's structure.

:class:`Timer` is what times a set of single-layer models; tests pass a fake one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .allocate import DENSE, Allocation, LayerCosts, allocate_lrank, allocate_minmax, minimum_cost
from .errors import BudgetError, InputDataError, RandomInputsError, first_line, ratio_at_least
from .layers import POINTWISE_FIRST, SPATIAL_FIRST, Layer, find_layers
from .spectra import ErrorTable

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # part of every key: bump it when the way of measuring changes (2: fastest round; 3: model scale)
ENV_CACHE = "ONNX_ALDS_CACHE"
Option = tuple[str, int]  # (order, groups)


# --------------------------------------------------------------------------------------------------
# Where the cache lives


def cache_dir(explicit: Optional[os.PathLike] = None) -> Path:
    """``explicit``, else ``$ONNX_ALDS_CACHE/latency``, else ``$XDG_CACHE_HOME/onnx-alds/latency``
    (``~/.cache/onnx-alds/latency``)."""
    try:
        if explicit:
            return Path(explicit).expanduser()
        root = os.environ.get(ENV_CACHE)
        if root:  # '~' expanded: a Docker ENV or a systemd Environment= line passes it through unexpanded
            return Path(root).expanduser() / "latency"
        xdg = os.path.expanduser(os.environ.get("XDG_CACHE_HOME", ""))
        if os.path.isabs(xdg):  # the XDG spec: a relative value is ignored
            return Path(xdg) / "onnx-alds" / "latency"
        return _home() / ".cache" / "onnx-alds" / "latency"
    except RuntimeError:  # no home folder: $HOME unset (or empty) and no passwd entry (docker -u, DynamicUser ...)
        raise InputDataError(f"the latency tables' cache needs a folder, and there is no home folder to find one "
                             f"in (or a '~user' that does not exist); set {ENV_CACHE}=/a/writable/folder") from None


def _home() -> Path:
    """The home folder: ``$HOME``, or where it is unset or empty (``HOME=`` reads as ``/`` in Python), the
    user's passwd entry; RuntimeError when there is none."""
    if os.environ.get("HOME") or os.name == "nt":  # (Windows: USERPROFILE)
        return Path.home()
    try:
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError, OSError):
        home = ""
    if not os.path.isabs(home):
        raise RuntimeError("no home folder")
    return Path(home)


class LatencyCache:
    """One JSON file per key in a folder; unreadable files count as missing, writes are atomic."""

    unwritable: set[Path] = set()  # folders whose last write failed: said once, not once per measurement

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str, fields: Optional[Mapping[str, Any]] = None,
             valid: Optional[Callable[[dict], bool]] = None) -> Optional[dict]:
        """The entry stored under ``key``, or None when it is missing, unreadable, of another version, made
        for other ``fields`` (a file copied in under another layer's name) or not of the layout ``valid``
        accepts (an edited or foreign file): each is measured again."""
        path = self.path(key)
        try:
            if not path.is_file():  # missing, or a FIFO or device under that name (reading it would not end)
                return None
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deep to parse
            return None
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return None
        if fields is not None and data.get("key") != json.loads(json.dumps(fields, sort_keys=True, default=str)):
            return None
        try:
            return data if valid is None or valid(data) else None
        except (TypeError, ValueError, AttributeError, KeyError):
            return None

    def save(self, key: str, data: dict) -> None:
        from .model_io import write_file_atomically

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_file_atomically(self.path(key), json.dumps(data, indent=1, sort_keys=True).encode())
        except OSError as exc:  # a read-only cache only costs the next run its measurements
            if self.folder not in LatencyCache.unwritable:
                LatencyCache.unwritable.add(self.folder)
                log.warning("latency cache not written (%s): %s; measurements are not kept until it can be",
                            self.folder, exc)
        else:  # (tried again every time: a folder fixed while the process runs is used again)
            LatencyCache.unwritable.discard(self.folder)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _layer_entry_ok(entry: dict) -> bool:
    """A layer table entry: ``dense_us`` numbers, ``options`` of ``"<order>/g<g>/r<r>": {us, ratio}``."""
    options = entry["options"]
    return (isinstance(entry["dense_us"], list) and all(_number(v) and v > 0 for v in entry["dense_us"])
            and isinstance(options, dict) and all(
                isinstance(k, str) and re.fullmatch(r".+/g\d+/r\d+", k) and isinstance(v, dict)
                and _number(v["us"]) and _number(v["ratio"]) and v["ratio"] > 0 for k, v in options.items()))


def _model_entry_ok(entry: dict) -> bool:
    """A whole-model entry: ``us`` and ``layers_us`` (layer key → microseconds)."""
    return (_number(entry["us"]) and entry["us"] > 0 and isinstance(entry["layers_us"], dict)
            and all(_number(v) and v > 0 for v in entry["layers_us"].values()))


def _digest(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# Timers


class Timer(Protocol):
    """Times single-layer models. ``identity`` is part of every cache key (provider, threads, ONNX
    Runtime version, device name): a timer for another deployment never reads this one's figures."""

    identity: Mapping[str, Any]

    def time_layers(self, models: Sequence[onnx.ModelProto]) -> list[float]:
        """Seconds per run of each model, timed together, interleaved; ``models[0]`` is the dense
        layer. All models have one input ``x`` of the same shape."""

    def time_model(self, model: onnx.ModelProto, store: Any, input_shapes: Mapping[str, tuple[int, ...]],
                   layers: Sequence[onnx.ModelProto], counts: Sequence[int]) -> list[float]:
        """Seconds per run of a whole model (``store``: its weights, when ``model`` is light) and of
        each single-layer model in ``layers`` (``counts``: how many of the model's layers each stands
        for), all timed in one interleaved loop; the model's figure on the same scale as the layers'."""

    def time_ratio(self, reference: onnx.ModelProto, candidate: onnx.ModelProto, store: Any,
                   input_shapes: Mapping[str, tuple[int, ...]]) -> float:
        """``candidate``'s time over ``reference``'s, both whole models timed interleaved on the same feeds."""


class OrtTimer:
    """:class:`Timer` in ONNX Runtime, with ``onnx-alds bench``'s machinery: sessions on exactly the
    provider asked for (no fallback), idle threads not spinning, device inputs bound once on CUDA."""

    def __init__(self, provider: str = "cpu", *, threads: Optional[int] = None, runs: int = 15,
                 warmup: Optional[int] = None, provider_options: Optional[dict] = None,
                 min_time_s: float = 0.5) -> None:
        """Each figure is the **fastest** of ``runs`` interleaved rounds: other processes only ever slow a
        run down, so on a shared machine the minimum is the stable estimate of the layer's own time
        (medians of consecutive loops moved 2-3x on a loaded 2-core machine; minimums by a few %)."""
        from .bench import DEVICE_PROVIDERS, machine_info, physical_cores, provider_options_for
        from .runtime import import_onnxruntime

        self.provider = provider
        self.threads = physical_cores() if threads is None and provider == "cpu" else threads
        self.runs = runs
        self.min_time_s = min_time_s
        self.warmup = warmup if warmup is not None else (20 if provider in DEVICE_PROVIDERS else 3)
        self.provider_options = provider_options_for(provider, extra=provider_options)
        machine = machine_info()
        # the CPU by its model name, its machine type (an ARM cpuinfo has no model name) and its core counts
        device = machine.get("gpu") if provider in DEVICE_PROVIDERS else (
            f"{machine.get('cpu')} ({platform.machine()}, {machine.get('physical_cores')} cores, "
            f"{machine.get('logical_cpus')} logical)")
        self.identity = {"provider": provider, "threads": self.threads, "onnxruntime": import_onnxruntime().__version__,
                         "device": device or "unknown", "provider_options": dict(self.provider_options)}

    def _session(self, model: onnx.ModelProto, store: Any = None):
        from .runtime import make_session

        return make_session(model, self.provider, threads=self.threads, provider_options=self.provider_options,
                            spinning=False, store=store, copy_of="a latency budget (--keep-latency, --order auto)")

    def time_layers(self, models: Sequence[onnx.ModelProto]) -> list[float]:
        from .bench import _Runner, time_interleaved
        from .inputs import random_array

        rng = np.random.default_rng(0)
        feeds: dict[str, np.ndarray] = {}
        runners = []
        for model in models:
            session = self._session(model)
            for value in session.get_inputs():
                if value.name not in feeds:
                    spec = next(v for v in model.graph.input if v.name == value.name)
                    dtype = helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type)
                    shape = tuple(d.dim_value for d in spec.type.tensor_type.shape.dim)
                    try:
                        feeds[value.name] = random_array(value.name, np.dtype(dtype), shape, rng)
                    except InputDataError as exc:  # (the layer model's own input name means nothing to a user)
                        raise InputDataError(f"timing one layer alone at the timing batch ({shape[0] if shape else 1}"
                                             f"): {exc}") from None
            runners.append(_Runner(session, {v.name: feeds[v.name] for v in session.get_inputs()}, self.provider))
        times = time_interleaved(runners, warmup=self.warmup, runs=self.runs, min_time_s=self.min_time_s)
        return [float(np.min(t)) for t in times]

    def time_model(self, model: onnx.ModelProto, store: Any, input_shapes: Mapping[str, tuple[int, ...]],
                   layers: Sequence[onnx.ModelProto], counts: Sequence[int]) -> list[float]:
        """The layers' figures are their fastest rounds, as in :meth:`time_layers`. A whole-model run
        lasts as long as all its layers' runs together and is slowed by other processes far more often
        than one short layer run, so its fastest round is not on the same scale: the model's figure is
        the median over rounds of (model run / the same round's layer runs, each counted for the layers
        it stands for) times the layers' fastest figures so counted. Runs of that ratio's two sides
        last alike, so other processes slow both alike."""
        from .bench import _Runner, time_interleaved
        from .inputs import random_array, random_feeds

        rng = np.random.default_rng(0)
        try:
            feeds = random_feeds(model, input_shapes, rng)
        except RandomInputsError as exc:  # (no .npz to give: the tables time random inputs only)
            raise RandomInputsError(f"{exc.reason}; --keep-latency times the whole model on random inputs only, so "
                                    "it cannot be used on it: give --keep-params or --keep-flops", exc.reason) from None
        runners = [_Runner(self._session(model, store), feeds, self.provider)]
        for layer in layers:
            session = self._session(layer)
            spec = layer.graph.input[0]
            shape = tuple(d.dim_value for d in spec.type.tensor_type.shape.dim)
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type))
            runners.append(_Runner(session, {spec.name: random_array(spec.name, dtype, shape, rng)}, self.provider))
        times = time_interleaved(runners, warmup=self.warmup, runs=self.runs, min_time_s=4 * self.min_time_s)
        fastest = [float(np.min(t)) for t in times[1:]]
        if not layers:
            return [float(np.min(times[0]))]
        weights = np.asarray(counts, dtype=np.float64)
        per_round = np.asarray(times[1:]).T @ weights  # Σ layers, round by round
        ratio = float(np.median(np.asarray(times[0]) / per_round))
        return [ratio * float(np.dot(weights, fastest))] + fastest

    def time_ratio(self, reference: onnx.ModelProto, candidate: onnx.ModelProto, store: Any,
                   input_shapes: Mapping[str, tuple[int, ...]]) -> float:
        """The median over interleaved rounds of (candidate run / the same round's reference run): two whole
        models with the same graph inputs (``store``: the weights both may reference), same feeds."""
        from .bench import _Runner, time_interleaved
        from .inputs import random_feeds

        feeds = random_feeds(reference, input_shapes, np.random.default_rng(0))
        runners = [_Runner(self._session(model, store), feeds, self.provider) for model in (reference, candidate)]
        times = time_interleaved(runners, warmup=self.warmup, runs=self.runs, min_time_s=4 * self.min_time_s)
        return float(np.median(np.asarray(times[1]) / np.asarray(times[0])))


# --------------------------------------------------------------------------------------------------
# One layer as a model of its own


@dataclass(frozen=True)
class LayerSpec:
    """What a layer's time depends on: op, attributes, shapes (batch included), element type."""

    op: str
    attributes: tuple[bytes, ...]  # serialized AttributeProtos, sorted by name
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    bias_shape: Optional[tuple[int, ...]]
    elem_type: int
    weight_first: bool
    opset: int

    def fields(self) -> dict[str, Any]:
        """The key's readable form (also written into the cache file)."""
        attributes = {}
        for raw in self.attributes:
            attribute = onnx.AttributeProto.FromString(raw)
            value = helper.get_attribute_value(attribute)
            attributes[attribute.name] = value.decode() if isinstance(value, bytes) else value
        return {"op": self.op, "attributes": attributes, "input": list(self.input_shape),
                "weight": list(self.weight_shape), "bias": None if self.bias_shape is None else list(self.bias_shape),
                "type": onnx.TensorProto.DataType.Name(self.elem_type), "weight_first": self.weight_first,
                "opset": self.opset}

    def dense_model(self) -> onnx.ModelProto:
        """The layer alone: input ``x``, output ``y``, random weights of its shapes."""
        rng = np.random.default_rng(0)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))
        fan_in = max(1, int(np.prod(self.weight_shape[1:])) if self.op == "Conv" else min(self.weight_shape))
        inits = [numpy_helper.from_array((rng.standard_normal(self.weight_shape) / np.sqrt(fan_in)).astype(dtype), "w")]
        inputs = ["w", "x"] if self.weight_first else ["x", "w"]
        if self.bias_shape is not None:
            inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(self.bias_shape)).astype(dtype), "b"))
            inputs.append("b")
        node = helper.make_node(self.op, inputs, ["y"], name="layer")
        node.attribute.extend(onnx.AttributeProto.FromString(raw) for raw in self.attributes)
        graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", self.elem_type,
                                                                                  list(self.input_shape))],
                                  [helper.make_tensor_value_info("y", self.elem_type, None)], inits)
        opset = helper.make_opsetid("", self.opset)
        model = helper.make_model(graph, opset_imports=[opset])
        model.ir_version = max(4, helper.find_min_ir_version_for([opset]))
        return model

    def option_model(self, order: str, groups: int, rank: int, dense: Optional[onnx.ModelProto] = None
                     ) -> onnx.ModelProto:
        """The factorized pair ``(order, groups, rank)`` with random factors, rewritten exactly as
        compression rewrites the layer."""
        from .decompose import GroupedFactors
        from .rewrite import Rewrite, rewrite_model

        dense = dense if dense is not None else self.dense_model()
        layer = find_layers(dense, {})[0]
        if order != layer.order:
            layer = replace(layer, order=order)
        rows, cols = layer.matrix_shape
        rng = np.random.default_rng(1)
        factors = GroupedFactors(groups, rank, 0.1 * rng.standard_normal((groups * rank, cols // groups)),
                                 0.1 * rng.standard_normal((rows, groups * rank)))
        return rewrite_model(dense, [Rewrite(layer, factors)])


def layer_spec(layer: Layer, node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]],
               constants: Mapping[str, onnx.TensorProto], opset: int) -> tuple[Optional[LayerSpec], Optional[str]]:
    """The spec of ``layer`` at the shapes given, or None and why it cannot be timed alone."""
    if layer.subgraph:
        return None, f"inside {layer.subgraph}"
    if layer.weight_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        return None, f"weight type {onnx.TensorProto.DataType.Name(layer.weight_type)}"
    input_shape = shapes.get(layer.input)
    if input_shape is None:
        return None, "input shape unknown at the timing batch"
    bias_shape = None
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
        bias = node.input[2]
        bias_shape = tuple(int(d) for d in constants[bias].dims) if bias in constants else shapes.get(bias)
        if bias_shape is None and node.op_type == "Conv" and layer.weight_shape:
            bias_shape = (int(layer.weight_shape[0]),)  # a Conv's bias is 1-D of its output channels (ONNX spec):
            # one computed at run time (the dynamo exporter's Expand(0, Shape(W)) zero bias) is timed as that
        if bias_shape is None:
            return None, "bias shape unknown"
    attributes = tuple(attribute.SerializeToString() for attribute in sorted(node.attribute, key=lambda a: a.name))
    return LayerSpec(node.op_type, attributes, tuple(int(d) for d in input_shape), tuple(layer.weight_shape),
                     bias_shape, layer.weight_type, layer.weight_first, opset), None


FINGERPRINT_VALUES_UP_TO = 4096  # initializers this small enter the model fingerprint with their values


def model_fingerprint(model: onnx.ModelProto) -> str:
    """A digest of the model's structure (nodes, attributes, initializer names, types and dims, inputs
    and outputs, opsets) and of the values of its small initializers (at most
    :data:`FINGERPRINT_VALUES_UP_TO` elements: Resize scales, Reshape targets, loop counts steer the run
    time), not of its weight values: what its run time depends on."""
    digest = hashlib.sha256()
    for opset in model.opset_import:
        digest.update(f"{opset.domain}:{opset.version};".encode())

    def visit(graph: onnx.GraphProto) -> None:
        for value in list(graph.input) + list(graph.output):
            digest.update(value.SerializeToString())
        for tensor in graph.initializer:
            digest.update(f"{tensor.name}:{tensor.data_type}:{list(tensor.dims)};".encode())
            if int(np.prod(tensor.dims)) <= FINGERPRINT_VALUES_UP_TO:
                digest.update(tensor.SerializeToString())
        for node in graph.node:
            digest.update(f"{node.domain}:{node.op_type}:{list(node.input)}:{list(node.output)};".encode())
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    for sub in attribute.graphs:
                        visit(sub)
                else:
                    digest.update(attribute.SerializeToString())

    visit(model.graph)
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# Tables


@dataclass(frozen=True)
class LatencyTable:
    """One layer's times in microseconds: the dense layer, and for each ``(order, groups)`` kept, the
    time of every allowed rank (measured at the grid ranks, interpolated between). ``(order, groups)``
    absent from ``options``: its smallest rank measured not faster than the dense layer."""

    layer: str
    dense_us: float
    options: Mapping[Option, tuple[np.ndarray, np.ndarray]] = field(hash=False)
    measured: Mapping[Option, tuple[int, ...]] = field(hash=False)
    key: str = ""  # the cache key of the layer's shapes and deployment

    def rescaled(self, dense_us: float) -> "LatencyTable":
        """The same table with the dense time ``dense_us`` (every option keeps its ratio to dense)."""
        scale = dense_us / self.dense_us if self.dense_us > 0 else 1.0
        options = {option: (ranks, times * scale) for option, (ranks, times) in self.options.items()}
        return replace(self, dense_us=dense_us, options=options)

    def time(self, order: str, groups: int, rank: int) -> Optional[float]:
        """Time of ``(order, groups, rank)`` (None: not a candidate, or slower than dense)."""
        entry = self.options.get((order, groups))
        if entry is None:
            return None
        ranks, times = entry
        return float(np.interp(rank, ranks, times))

    def is_measured(self, order: str, groups: int, rank: int) -> bool:
        return rank in self.measured.get((order, groups), ())

    def fastest(self) -> Optional[tuple[str, int, int, float]]:
        best = None
        for (order, groups), (ranks, times) in self.options.items():
            index = int(np.argmin(times))
            if best is None or times[index] < best[3]:
                best = (order, groups, int(ranks[index]), float(times[index]))
        return best


def grid_ranks(ranks: np.ndarray, points: int) -> list[int]:
    """Up to ``points`` ranks evenly spaced over ``ranks`` (first and last included)."""
    if len(ranks) <= points:
        return [int(r) for r in ranks]
    indices = np.unique(np.round(np.linspace(0, len(ranks) - 1, points)).astype(int))
    return [int(ranks[i]) for i in indices]


def _option_key(order: str, groups: int, rank: int) -> str:
    return f"{order}/g{groups}/r{rank}"


@dataclass
class TableStats:
    """What building the tables cost."""

    seconds: float = 0.0
    timings: int = 0  # single-layer models timed (the dense layer of each loop included)
    loops: int = 0
    layers_measured: int = 0  # distinct layer keys that needed any measurement
    layers_cached: int = 0  # distinct layer keys read from the cache alone
    model_cached: Optional[bool] = None


def measure_table(name: str, spec: LayerSpec, wants: Mapping[Option, np.ndarray], timer: Timer,
                  cache: LatencyCache, identity: Mapping[str, Any], *, grid: int, stats: TableStats,
                  memo: dict) -> LatencyTable:
    """The latency table of one layer for the ``(order, groups) → allowed ranks`` in ``wants``."""
    key_fields = {"version": CACHE_VERSION, "layer": spec.fields(), "timer": dict(identity)}
    key = _digest(key_fields)
    entry = memo.get(key) or cache.load(key, key_fields, _layer_entry_ok) or {
        "version": CACHE_VERSION, "key": key_fields, "dense_us": [], "options": {}}
    measured_now = False
    dense_model: list[onnx.ModelProto] = []

    def run(options: list[tuple[str, int, int]]) -> None:
        nonlocal measured_now
        if not dense_model:
            dense_model.append(spec.dense_model())
        models = [dense_model[0]] + [spec.option_model(o, g, r, dense_model[0]) for o, g, r in options]
        seconds = timer.time_layers(models)
        stats.timings += len(models)
        stats.loops += 1
        entry["dense_us"].append(seconds[0] * 1e6)
        for (o, g, r), value in zip(options, seconds[1:]):
            entry["options"][_option_key(o, g, r)] = {"us": value * 1e6, "ratio": value / seconds[0]}
        measured_now = True

    def ratio(o: str, g: int, r: int) -> Optional[float]:
        found = entry["options"].get(_option_key(o, g, r))
        return None if found is None else float(found["ratio"])

    wanted = {option: np.asarray(ranks, dtype=np.int64) for option, ranks in wants.items() if len(ranks)}
    first = [(o, g, int(ranks[0])) for (o, g), ranks in sorted(wanted.items()) if ratio(o, g, int(ranks[0])) is None]
    if first or not entry["dense_us"]:
        run(first)
    alive = {option: ranks for option, ranks in wanted.items() if ratio(*option, int(ranks[0])) < 1.0}
    rest = [(o, g, r) for (o, g), ranks in sorted(alive.items()) for r in grid_ranks(ranks, grid)
            if ratio(o, g, r) is None]
    if rest:
        run(rest)
    if measured_now:
        stats.layers_measured += 1
        cache.save(key, entry)
    elif key not in memo:
        stats.layers_cached += 1
    memo[key] = entry
    dense_us = float(np.min(entry["dense_us"]))
    options: dict[Option, tuple[np.ndarray, np.ndarray]] = {}
    measured: dict[Option, tuple[int, ...]] = {}
    for (o, g), ranks in alive.items():
        points = sorted((int(k.rsplit("/r", 1)[1]), float(v["ratio"])) for k, v in entry["options"].items()
                        if k.startswith(f"{o}/g{g}/r"))
        xs = np.array([p[0] for p in points], dtype=np.float64)
        ys = np.array([p[1] for p in points], dtype=np.float64)
        options[(o, g)] = (ranks, np.interp(ranks, xs, ys) * dense_us)
        measured[(o, g)] = tuple(int(r) for r in ranks if int(r) in set(xs.astype(int).tolist()))
    return LatencyTable(name, dense_us, options, measured, key)


def measure_model(model: onnx.ModelProto, store: Any, input_shapes: Mapping[str, tuple[int, ...]],
                  specs: Mapping[str, LayerSpec], counts: Mapping[str, int], timer: Timer, cache: LatencyCache,
                  identity: Mapping[str, Any], stats: TableStats) -> tuple[float, dict[str, float]]:
    """Median microseconds of the whole model at ``input_shapes`` and of each dense layer (``specs``, by
    layer key), timed in one interleaved loop so that the time left to the ops that do not change
    (model − layers) is not skewed by drift between loops; cached by the model's structure."""
    key_fields = {"version": CACHE_VERSION, "model": model_fingerprint(model),
                  "inputs": {name: list(shape) for name, shape in sorted(input_shapes.items())},
                  "layers": {key: counts[key] for key in sorted(specs)}, "timer": dict(identity)}
    key = "model-" + _digest(key_fields)
    entry = cache.load(key, key_fields, _model_entry_ok)
    if entry is not None and set(entry["layers_us"]) == set(specs):
        stats.model_cached = True
        return float(entry["us"]), {k: float(v) for k, v in entry["layers_us"].items()}
    keys = sorted(specs)
    seconds = timer.time_model(model, store, input_shapes, [specs[k].dense_model() for k in keys],
                               [counts[k] for k in keys])
    stats.model_cached = False
    stats.timings += len(seconds)
    stats.loops += 1
    layers_us = {k: value * 1e6 for k, value in zip(keys, seconds[1:])}
    cache.save(key, {"version": CACHE_VERSION, "key": key_fields, "us": seconds[0] * 1e6, "layers_us": layers_us})
    return seconds[0] * 1e6, layers_us


# --------------------------------------------------------------------------------------------------
# The step between the error tables and the allocation


@dataclass(frozen=True)
class SpeedInfo:
    """The latency tables of one compression and what they cost; summarized in the report."""

    provider: str
    threads: Optional[int]
    batch: int
    identity: Mapping[str, Any] = field(hash=False)
    tables: Mapping[str, LatencyTable] = field(hash=False)
    orders: Mapping[str, str] = field(hash=False)  # each timed layer's own order (a choice without one has it)
    model_us: Optional[float]  # the whole dense model (latency budgets only)
    stats: TableStats = field(hash=False)
    cache_dir: str
    untimed: Mapping[str, str] = field(hash=False, default_factory=dict)  # layer -> why no table
    settle: tuple = ()  # the whole-model check's rounds (SettleRound), --keep-latency only
    settle_note: str = ""
    settle_measured: Optional[float] = None  # the measured ratio (compressed / dense) of the decisions kept
    slow_dropped: tuple[int, int, int] = ()  # params/MACs budgets: ranks dropped as no faster than dense, of, layers
    proportional: bool = False  # predictions take the layers at the whole model's scale (needs_proportional)

    def layer_times(self, name: str, groups: int, rank: int, order: Optional[str]
                    ) -> Optional[tuple[float, Optional[float], bool]]:
        """(dense µs, decided µs, whether measured at that rank) for the report, None without a table."""
        table = self.tables.get(name)
        if table is None:
            return None
        if groups == 0:
            return table.dense_us, table.dense_us, True
        order = order or self.orders.get(name, SPATIAL_FIRST)
        return table.dense_us, table.time(order, groups, rank), table.is_measured(order, groups, rank)

    def predicted_us(self, decisions: Mapping[str, Any]) -> Optional[float]:
        """The whole model's time predicted for ``decisions`` (layer -> LayerChoice), by
        :func:`predicted_model_us` from the timed layers' dense times and their times as decided."""
        if self.model_us is None:
            return None
        dense = decided = 0.0
        for name, table in self.tables.items():
            dense += table.dense_us
            choice = decisions.get(name)
            if choice is None or choice.groups == 0:
                decided += table.dense_us
                continue
            value = table.time(choice.order or self.orders.get(name, SPATIAL_FIRST), choice.groups, choice.rank)
            if value is None:
                return None
            decided += value
        return predicted_model_us(self.model_us, dense, decided, self.proportional)

    def achieved(self, decisions: Mapping[str, Any]) -> float:
        predicted = self.predicted_us(decisions)
        return predicted / self.model_us if predicted is not None and self.model_us else float("nan")

    def summary(self, decisions: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        dense = sum(table.dense_us for table in self.tables.values())
        data: dict[str, Any] = {
            "provider": self.provider, "threads": self.threads, "batch": self.batch,
            "device": self.identity.get("device"), "onnxruntime": self.identity.get("onnxruntime"),
            "layers_timed": len(self.tables), "layers_dense_us": dense, "model_us": self.model_us,
            "table_seconds": self.stats.seconds, "timings": self.stats.timings, "loops": self.stats.loops,
            "layer_shapes_measured": self.stats.layers_measured, "layer_shapes_cached": self.stats.layers_cached,
            "model_time_cached": self.stats.model_cached, "cache_dir": self.cache_dir,
            "untimed": dict(self.untimed),
        }
        if self.slow_dropped:
            data["slow_ranks_dropped"], data["candidate_ranks"], data["layers_with_slow_ranks"] = self.slow_dropped
        if self.settle:
            data["whole_model_check"] = [{"budget": r.budget, "predicted": r.predicted, "measured": r.measured}
                                         for r in self.settle]
            data["whole_model_note"] = self.settle_note
            data["measured_ratio"] = self.settle_measured
            data["measured_speedup"] = 1.0 / self.settle_measured if self.settle_measured else None
        predicted = self.predicted_us(decisions or {})
        if predicted is not None and self.model_us:
            data.update(rest_us=self.model_us - dense, predicted_us=predicted,
                        predicted_speedup=self.model_us / predicted if predicted > 0 else None)
        if self.proportional:
            data["proportional"] = True
        return data


def layer_shapes_at_batch(model: onnx.ModelProto, store: Any, input_shapes: Optional[Mapping[str, Sequence[int]]],
                          batch: int, layers: Sequence[Layer]) -> tuple[dict[str, tuple[int, ...]], dict]:
    """Graph input shapes with the first dim set to ``batch``, and the shapes of the layers' tensors there."""
    from .model_io import fixed_batch, graph_inputs, resolve_input_shapes
    from .shapes import tensor_shapes

    resolved, _ = resolve_input_shapes(model, input_shapes, batch_default=batch)
    fixed_batch(model)  # inputs fixing different first dims: one error, not a --bench-batch for each
    declared = {spec.name: spec.dims for spec in graph_inputs(model)}
    inputs = {}
    for name, shape in resolved.items():
        if shape and isinstance(declared[name][0], int) and declared[name][0] != batch:
            raise InputDataError(f"input '{name}' fixes the batch to {declared[name][0]}; time it with --bench-batch "
                                 f"{declared[name][0]} or export the model with a dynamic batch dim")
        inputs[name] = (batch,) + tuple(shape[1:]) if shape else tuple(shape)
    needed = {name for layer in layers for name in (layer.input, layer.output)}
    return inputs, tensor_shapes(model, inputs, needed, store)


def _timer_for(speed) -> Timer:
    if speed.timer is not None:
        return speed.timer
    return OrtTimer(speed.provider, threads=speed.threads, runs=speed.runs, warmup=speed.warmup)


def tag_order(table: ErrorTable, order: str) -> ErrorTable:
    """The table with every option marked with ``order`` (one layer's table may then hold both orders)."""
    return replace(table, options=tuple(replace(option, order=order) for option in table.options))


def merge_orders(first: ErrorTable, second: ErrorTable) -> ErrorTable:
    """One table with the options of both (already tagged) tables."""
    return replace(first, options=first.options + second.options)


def build_tables(model: onnx.ModelProto, store: Any, layers: Sequence[Layer], tables: Sequence[ErrorTable],
                 constants: Mapping, speed, *, input_shapes: Optional[Mapping[str, Sequence[int]]],
                 with_model: bool) -> SpeedInfo:
    """Latency tables of ``layers`` for the options of their error ``tables`` (an option's order is
    its tag, else the layer's own order), and the whole model's time when ``with_model``."""
    from .model_io import opset_version

    started = time.perf_counter()
    timer = _timer_for(speed)
    identity = dict(timer.identity, batch=speed.batch)
    cache = LatencyCache(cache_dir(speed.cache_dir))
    stats = TableStats()
    inputs, shapes = layer_shapes_at_batch(model, store, input_shapes, speed.batch, layers)
    nodes = {node.name: node for node in model.graph.node}
    opset = opset_version(model)
    result: dict[str, LatencyTable] = {}
    untimed: dict[str, str] = {}
    memo: dict = {}
    specs: dict[str, LayerSpec] = {}
    counts: dict[str, int] = {}
    for layer, table in zip(layers, tables):
        node = nodes.get(layer.name)
        spec, why = (None, f"inside {layer.subgraph}") if node is None else \
            layer_spec(layer, node, shapes, constants, opset)
        if spec is None:
            untimed[layer.name] = why or "cannot be timed alone"
            continue
        wants = {(option.order or layer.order, option.groups): option.ranks for option in table.options}
        result[layer.name] = measure_table(layer.name, spec, wants, timer, cache, identity, grid=speed.grid,
                                           stats=stats, memo=memo)
        specs[result[layer.name].key] = spec
        counts[result[layer.name].key] = counts.get(result[layer.name].key, 0) + 1
    model_us = None
    if with_model:  # the model and every dense layer in one loop: one time scale for the rest and the layers
        model_us, dense_us = measure_model(model, store, inputs, specs, counts, timer, cache, identity, stats)
        result = {name: table.rescaled(dense_us[table.key]) for name, table in result.items()}
    stats.seconds = time.perf_counter() - started
    return SpeedInfo(speed.provider, timer.identity.get("threads"), speed.batch, timer.identity, result,
                     {layer.name: layer.order for layer in layers}, model_us, stats, str(cache.folder), untimed,
                     proportional=model_us is not None and needs_proportional(model_us, result))


def option_times(layer: Layer, table: ErrorTable, latency: Optional[LatencyTable]) -> list[np.ndarray]:
    """Per option of ``table``, the time of each rank (inf where the option is slower than dense or
    the layer has no latency table)."""
    times = []
    for option in table.options:
        entry = None if latency is None else latency.options.get((option.order or layer.order, option.groups))
        if entry is None:
            times.append(np.full(len(option.ranks), np.inf))
        else:
            ranks, values = entry
            times.append(np.interp(option.ranks, ranks, values))
    return times


def prune_slow(layer: Layer, table: ErrorTable, latency: Optional[LatencyTable], min_speedup: float) -> ErrorTable:
    """``table`` without the ranks measured slower than ``dense / min_speedup`` (all of them without a table)."""
    if latency is None:
        return replace(table, options=())
    options = []
    for option, times in zip(table.options, option_times(layer, table, latency)):
        keep = times * min_speedup < latency.dense_us
        if keep.any():
            options.append(replace(option, ranks=option.ranks[keep], sizes=option.sizes[keep],
                                   errors=option.errors[keep], residuals=option.residuals[keep]))
    return replace(table, options=tuple(options))


def faster_order(layer: Layer, table: ErrorTable, latency: Optional[LatencyTable]) -> str:
    """The order whose pairs are faster for this layer: mean time over the ranks both orders measure at
    ``g = 1`` (the smallest rank of each when they share none); spatial-first on a tie or without data."""
    if latency is None:
        return layer.order
    spatial = latency.options.get((SPATIAL_FIRST, 1))
    pointwise = latency.options.get((POINTWISE_FIRST, 1))
    if pointwise is None:
        return SPATIAL_FIRST
    if spatial is None:
        return POINTWISE_FIRST
    common = np.intersect1d(spatial[0], pointwise[0])
    if len(common):
        a = float(np.mean(np.interp(common, *spatial)))
        b = float(np.mean(np.interp(common, *pointwise)))
    else:
        a, b = float(spatial[1][0]), float(pointwise[1][0])
    return POINTWISE_FIRST if b < a else SPATIAL_FIRST


def only_order(table: ErrorTable, order: str) -> ErrorTable:
    return replace(table, options=tuple(option for option in table.options if option.order == order))


def latency_costs(layers: Sequence[Layer], tables: Sequence[ErrorTable], info: SpeedInfo) -> list[LayerCosts]:
    """:class:`LayerCosts` in microseconds for every layer (a layer without a latency table can only
    stay dense: its options cost infinitely much)."""
    costs = []
    for layer, table in zip(layers, tables):
        latency = info.tables.get(layer.name)
        dense = latency.dense_us if latency is not None else 0.0
        costs.append(LayerCosts(dense, tuple(option_times(layer, table, latency))))
    return costs


def allocate_latency(tables: Sequence[ErrorTable], costs: Sequence[LayerCosts], info: SpeedInfo, keep: float,
                     method: str, seed: int) -> Allocation:
    """The allocation under ``keep`` × the whole model's measured time: the layers' options must fit
    in what is left once the ops that do not change (model time − the layers' dense times) are paid."""
    model_us = float(info.model_us or 0.0)
    dense = sum(c.dense for c in costs)
    fixed = model_us - dense  # ops that do not change; negative when single layers carry more overhead
    budget = layers_budget_us(keep, model_us, dense, info.proportional)
    scales = [1.0] * len(tables)
    cheapest = minimum_cost(tables, scales, costs)
    if budget < cheapest * (1 - 1e-9) - 1e-9:
        reachable = predicted_model_us(model_us, dense, cheapest, info.proportional) / model_us if model_us > 0 \
            else float("nan")
        slow = sum(1 for c in costs if not any(np.any(np.asarray(times) < c.dense) for times in c.options))
        where = f"at batch {info.batch} on {info.provider}"
        untimed = dict(info.untimed)
        if untimed:  # (a layer that could not be timed alone has no options: it is not slow, it is unmeasured)
            first = next(iter(untimed))
            where += (f" ({len(untimed)} of them could not be timed alone and stay dense: first '{first}', "
                      f"{untimed[first]})")
        if slow == len(costs):
            reason = (f"none of the {len(costs)} factorizable layers has a factorization measured faster than its "
                      f"dense layer {where}")
            fix = "nothing here runs faster factorized: time another batch (--bench-batch) or provider, or use --keep-flops"
        else:
            reason = (f"{slow} of {len(costs)} factorizable layers have no factorization measured faster than their "
                      f"dense layer {where}; every other layer at its fastest measured option" if slow else
                      "every layer at its fastest measured option")
            fix = "ask for at least that, or lower --rank-multiple (smaller rank steps may run faster)"
        raise BudgetError(
            f"--keep-latency {keep} cannot be reached: the smallest reachable ratio is {ratio_at_least(reachable)} "
            f"as the latency tables predict it (layers timed alone; the whole model, measured, can save less) "
            f"({reason}; the dense model takes {model_us:.1f} µs, "
            + (f"of which {fixed:.1f} µs in ops that do not change" if fixed >= 0 else
               f"less than its layers timed alone, {dense:.1f} µs: single-layer times overstate here")
            + f"); {fix}")
    budget = max(budget, cheapest)  # (the smallest ratio, converted back to µs, can round to just under the floor)
    if method == "l-rank":
        return allocate_lrank(tables, scales, budget, costs=costs)
    return allocate_minmax(tables, scales, budget, search_groups=method == "alds", seed=seed, costs=costs)


def smallest_keep_latency(tables: Sequence[ErrorTable], costs: Sequence[LayerCosts], info: SpeedInfo) -> float:
    """The smallest ``--keep-latency`` the tables can reach: every layer at its fastest option."""
    model_us = float(info.model_us or 0.0)
    cheapest = minimum_cost(tables, [1.0] * len(tables), costs)
    return predicted_model_us(model_us, sum(c.dense for c in costs), cheapest, info.proportional) / model_us \
        if model_us > 0 else float("nan")


def predicted_model_us(model_us: float, dense_us: float, decided_us: float, proportional: bool = False) -> float:
    """The whole model's predicted time (µs) when its timed layers, ``dense_us`` in all timed alone and
    dense, take ``decided_us`` as decided: the ops that do not change (``model_us − dense_us``, negative
    when a layer alone carries overheads it does not have in the model) plus ``decided_us``. With
    ``proportional`` (:func:`needs_proportional`: that sum would fall to zero or below for the tables'
    cheapest decisions, as when another process slowed the layers' runs more than the model's), or where
    it is zero or below, the layers' times are taken at the whole model's scale instead,
    ``decided_us × model_us / dense_us``, which is never negative (docs/LATENCY.md)."""
    additive = model_us - dense_us + decided_us
    if (proportional or additive <= 0) and dense_us > 0:  # (a plan recorded before plans said "proportional")
        return decided_us * model_us / dense_us
    return additive


def layers_budget_us(keep: float, model_us: float, dense_us: float, proportional: bool = False) -> float:
    """The timed layers' time (µs, alone) at which :func:`predicted_model_us` is ``keep × model_us``."""
    if proportional and dense_us > 0:
        return keep * dense_us
    return keep * model_us - (model_us - dense_us)


def needs_proportional(model_us: float, tables: Mapping[str, "LatencyTable"]) -> bool:
    """Whether the ops that do not change (model − the layers' dense times) are so negative that the
    tables' cheapest decisions (every layer at its fastest time) would predict a whole model of no time."""
    dense = sum(table.dense_us for table in tables.values())
    cheapest = sum(min([table.dense_us] + [float(np.min(times)) for _, times in table.options.values()])
                   for table in tables.values())
    return dense > model_us and model_us - dense + cheapest <= 0


@dataclass(frozen=True)
class SettleRound:
    """One round of the whole-model check: the fraction the allocation was given, the whole-model time
    ratio the latency tables predict for its decisions, and the ratio measured (compressed / dense)."""

    budget: float
    predicted: float
    measured: float


SETTLE_TOLERANCE = 0.02  # a measured ratio within 2 % of --keep-latency ends the whole-model check


DOUBTFUL_SAVING = 0.2  # a whole model measured over 20 % faster than the tables predict is timed again


def _contradicted(round_: SettleRound, others: Sequence[SettleRound], margin: float) -> list[int]:
    """The indices of ``others`` whose measurement contradicts ``round_``'s by more than ``margin``: a plan
    cut deeper (smaller budget) measured slower than a gentler one, or the reverse (a busy machine)."""
    return [index for index, other in enumerate(others)
            if (other.budget - round_.budget) * (other.measured - round_.measured) < 0
            and abs(other.measured - round_.measured) > margin]


def _proportional_step(round_: "SettleRound", keep: float) -> float:
    """The next budget from one round, assuming the measured saving is proportional to the predicted one;
    a round that saved nothing (a few small pairs cost more than they save) cuts deeper by its overshoot."""
    saved = 1.0 - round_.measured
    if saved <= 0:
        return round_.budget - (round_.measured - keep)
    return 1.0 - (1.0 - keep) * (1.0 - round_.budget) / saved


def settle_latency(allocate: Callable[[float], Allocation], build: Callable[[Allocation], onnx.ModelProto],
                   names: Sequence[str], info: SpeedInfo, keep: float, smallest: float, *, reference: onnx.ModelProto,
                   store: Any, input_shapes: Mapping[str, tuple[int, ...]], timer: Timer, rounds: int,
                   cache: Optional[LatencyCache] = None, identity: Optional[Mapping[str, Any]] = None,
                   tolerance: float = SETTLE_TOLERANCE
                   ) -> tuple[Allocation, tuple[SettleRound, ...], SettleRound, str]:
    """Meet ``keep`` in the *measured* whole-model time, not only in the tables' prediction.

    The tables add single-layer times; the model as a whole saves less or more than their sum predicts
    (layout reorders between a pair's two convs, caches, the time of ops between layers). Each round
    allocates at a budget ``b`` (first ``keep``), builds the model of those decisions (``build``; any
    factor values: time does not depend on them), and times it interleaved against the dense model
    (``timer.time_ratio``), giving the measured ratio ``m``. The next budget assumes the measured saving
    is proportional to the predicted one, ``b' = 1 − (1 − keep)(1 − b)/(1 − m)``, then a secant step
    through the last two rounds (a round that measured no saving at all moves the budget down by its
    overshoot, ``b' = b − (m − keep)``: a deeper cut can run faster where a gentle one does not); never
    below ``smallest`` (:func:`smallest_keep_latency`). It stops
    within ``tolerance × keep`` or after ``rounds`` rounds and returns the decisions of the round with
    the largest budget whose measured ratio is within tolerance of (or under) ``keep``, else those of
    the fastest round, the rounds, the round kept and a sentence saying what was measured. Raises
    :class:`BudgetError` when even the fastest round measured no faster than the dense model. With a
    ``cache``, each measured ratio is stored under both models' structure, the inputs and the timer's
    ``identity``, so a second run of the same plan times nothing.

    A figure in doubt is timed twice more and the median of the three kept (and stored): a round measured
    over :data:`DOUBTFUL_SAVING` faster than the tables predict, a round that contradicts another by more
    than the tolerance (a deeper plan slower than a gentler one), and the earlier round it contradicts; a
    cached single figure too (a figure from a busy machine would be reused by every later run), not a cached
    median of three, which is final. The round whose decisions are kept is always a median of three.
    """
    reference_print = model_fingerprint(reference)

    from_cache: set[str] = set()  # figures read from the cache of an earlier run
    stored_here: set[str] = set()  # figures this run stored (a later round building the same model reads them)
    medians: dict[str, float] = {}  # figures that are medians of three timings (this run's, or cached as such)
    timed_three: set[str] = set()  # the figures this run timed three times

    def fields_of(candidate: onnx.ModelProto) -> dict:
        """The cache fields of ``candidate``'s figure."""
        return {"version": CACHE_VERSION, "reference": reference_print, "candidate": model_fingerprint(candidate),
                "inputs": {name: list(shape) for name, shape in sorted(input_shapes.items())},
                "timer": dict(identity or timer.identity)}

    def key_of(fields: Mapping[str, Any]) -> str:
        return "ratio-" + _digest(fields)

    def ratio(candidate: onnx.ModelProto, fields: Mapping[str, Any], doubted: Optional[float] = None) -> float:
        """The measured ratio (from the cache when stored); ``doubted``: a figure of this plan in doubt, then
        timed twice more and the median of the three kept (and stored as such), unless a median of three is
        known already (this run's, or the cache's: it is final, so a second run times nothing). ``fields``:
        the cache fields of the round this model was first built for (a second build of the same decisions
        can name its nodes otherwise, and so have another fingerprint)."""
        key = key_of(fields)
        if doubted is not None and key in medians:
            return medians[key]
        entry = cache.load(key, fields, lambda data: _number(data["ratio"]) and data["ratio"] > 0) \
            if cache is not None else None
        if entry is not None and entry.get("median_of_three"):
            medians[key] = entry["ratio"]
        if entry is not None and (doubted is None or key in medians):
            if key not in stored_here:
                from_cache.add(key)
            return entry["ratio"]
        value = float(timer.time_ratio(reference, candidate, store, input_shapes))
        if doubted is not None:
            value = float(np.median([doubted, value, float(timer.time_ratio(reference, candidate, store,
                                                                            input_shapes))]))
            medians[key] = value
            timed_three.add(key)
        if cache is not None:
            cache.save(key, {"version": CACHE_VERSION, "key": fields, "ratio": value,
                             "median_of_three": doubted is not None})
            stored_here.add(key)
        return value

    def is_median(index: int) -> bool:
        """Whether round ``index``'s figure is a median of three timings already."""
        return index in keys and key_of(keys[index]) in medians

    tried: list[tuple[Allocation, SettleRound]] = []
    keys: dict[int, dict] = {}  # each timed round's figure's cache fields (medians: which are medians of three)
    dense_rounds = 0  # rounds whose plan kept every layer dense (counted as 1, not timed)
    budget = keep
    stopped = ""  # why the rounds ended before --latency-rounds, outside the tolerance (said in the report)
    for _ in range(max(rounds, 1)):
        try:
            allocation = allocate(budget)
        except BudgetError as exc:
            if not tried:
                raise
            stopped = (f"the next budget, {budget:.3f}, cannot be allocated ({first_line(exc, 160)})")
            break  # a moved budget the tables cannot meet after all: keep what was measured
        decisions = dict(zip(names, allocation.choices))
        if allocation.choices and all(choice.groups == DENSE for choice in allocation.choices):  # the dense model
            tried.append((allocation, SettleRound(budget, 1.0, 1.0)))  # (timing it measures noise, which
            dense_rounds += 1  # moved the budget: --keep-latency 1 measured 1.048 and cut 8 of 10 layers)
            if abs(1.0 - keep) <= tolerance * keep:
                break
            following = float(min(max(_proportional_step(tried[-1][1], keep), smallest), 1.0))
            if any(abs(following - r.budget) < 1e-4 for _, r in tried):
                stopped = f"the next budget, {following:.3f}, was tried already"
                break
            budget = following
            continue
        same = next((index for index, (earlier, _) in enumerate(tried) if allocation.choices
                     and earlier.choices == allocation.choices), None)
        if same is not None:  # the same decisions at another budget: a fixed point (its figure is no new round)
            stopped = (f"the next budget, {budget:.3f}, gives the decisions of round {same + 1} again (the "
                       "tables' steps are that coarse there)")
            break
        model = build(allocation)
        keys[len(tried)] = fields_of(model)
        current = SettleRound(budget, info.achieved(decisions), ratio(model, keys[len(tried)]))
        saved_much_more = 1 - current.measured > 2 * (1 - current.predicted) + tolerance * keep
        if not (1 - DOUBTFUL_SAVING) * current.predicted <= current.measured <= (1 + DOUBTFUL_SAVING) * \
                current.predicted or saved_much_more or _contradicted(current, [r for _, r in tried], tolerance * keep):
            current = replace(current, measured=ratio(model, keys[len(tried)], doubted=current.measured))
        for index in _contradicted(current, [r for _, r in tried], tolerance * keep):
            if not is_median(index):  # (an earlier round this one contradicts may be the outlier)
                earlier, round_ = tried[index]
                built = build(earlier)
                tried[index] = (earlier, replace(round_, measured=ratio(built, keys.get(index) or fields_of(built),
                                                                        doubted=round_.measured)))
        tried.append((allocation, current))
        measured = current.measured
        if abs(measured - keep) <= tolerance * keep:
            break
        following = None  # a secant through the last two rounds where they differ by more than noise (two
        # figures within the tolerance gave a slope near 0 and a step to the smallest budget)
        if len(tried) >= 2 and abs(tried[-1][1].measured - tried[-2][1].measured) > tolerance * keep:
            (_, last), (_, before) = tried[-1], tried[-2]
            slope = (last.measured - before.measured) / (last.budget - before.budget) \
                if last.budget != before.budget else 0.0
            following = last.budget + (keep - last.measured) / slope if slope > 0 else None
        if following is None:
            following = _proportional_step(tried[-1][1], keep)
        following = float(min(max(following, smallest), 1.0))
        if any(abs(following - r.budget) < 1e-4 for _, r in tried):  # (the smallest reachable, or a fixed point)
            stopped = (f"the next budget, {following:.3f}, was tried already"
                       + (" (the smallest the tables reach)" if following <= smallest + 1e-4 else ""))
            break
        budget = following
    while True:  # the figure the report states is a median of three: one timing on a busy machine flattered
        # a plan by 19 % (0.405 measured at 0.4995 predicted, inside the doubt band; bench measured it at 0.50)
        within = [index for index, (_, r) in enumerate(tried) if r.measured <= keep * (1 + tolerance)]
        index = max(within, key=lambda i: tried[i][1].budget) if within else \
            min(range(len(tried)), key=lambda i: tried[i][1].measured)
        allocation, round_ = tried[index]
        if is_median(index) or all(choice.groups == DENSE for choice in allocation.choices):
            break
        tried[index] = (allocation, replace(round_, measured=ratio(build(allocation), keys[index],
                                                                   doubted=round_.measured)))
    record = tuple(r for _, r in tried)
    retimed = [index for index in keys if key_of(keys[index]) in timed_three]
    cached = sum(key_of(keys[index]) in from_cache for index in keys)
    how = "".join([f"; {len(retimed)} of them timed three times (the median kept: the round kept, and any whose "
                   "first figure contradicted the tables or another round)" if retimed else "",
                   f"; {dense_rounds} kept every layer dense (the original model: 1, not timed)" if dense_rounds
                   else "",
                   f"; {cached} read from the cache of an earlier run" if cached else ""])
    good = [(a, r) for a, r in tried if r.measured <= keep * (1 + tolerance)]
    if good:
        allocation, chosen = max(good, key=lambda item: item[1].budget)
        dense = bool(allocation.choices) and all(choice.groups == DENSE for choice in allocation.choices)
        opening = (f"every layer kept dense, the original model (1 of the dense time, not timed; asked {keep:g})"
                   if dense else f"measured {chosen.measured:.3f} of the dense time (asked {keep:g})")
        said = (f"whole-model check: {opening} after {len(tried)} round{'s' if len(tried) > 1 else ''}{how}; the "
                f"allocation's budget was {chosen.budget:.3f}")
        closest = min(tried, key=lambda item: abs(item[1].measured - keep))[1]
        if chosen.measured < keep * (1 - 5 * tolerance):  # cut far deeper than asked
            noisy = any(a.budget < b.budget and a.measured > b.measured for a in record for b in record)
            said += ("; well under the budget" + (f": round {record.index(closest) + 1} measured "
                                                  f"{closest.measured:.3f} at budget {closest.budget:.3f}"
                                                  if closest is not chosen else "")
                     + (", and a deeper plan measured slower than a gentler one (a busy machine); time again on a "
                        "quiet machine (clear $ONNX_ALDS_CACHE)" if noisy else "")
                     + ("" if stopped else (" or give" if noisy else "; give") + " more --latency-rounds to come "
                        "closer"))
        if stopped and abs(chosen.measured - keep) > tolerance * keep:
            said += f"; the rounds stopped there because {stopped}"
    else:
        allocation, chosen = min(tried, key=lambda item: item[1].measured)
        unchanged = all(choice.groups == DENSE for choice in allocation.choices)  # every layer dense: noise
        if chosen.measured >= 1.0 and not unchanged:  # the plan would make the model slower: refuse it
            raise BudgetError(
                f"--keep-latency {keep:g} cannot be reached in measurement: every plan tried ran no faster than "
                f"the original model (the fastest measured {chosen.measured:.3f} of its time after {len(tried)} "
                f"round{'s' if len(tried) > 1 else ''}; the tables predicted {chosen.predicted:.3f}); ask for a "
                "larger --keep-latency, or time on a quieter machine (measured ratios are cached: clear "
                "$ONNX_ALDS_CACHE to measure again)")
        said = (f"whole-model check: --keep-latency {keep:g} not reached in measurement: the fastest plan found "
                f"measured {chosen.measured:.3f} of the dense time (predicted {chosen.predicted:.3f}) after "
                f"{len(tried)} round{'s' if len(tried) > 1 else ''}{how}; the ops that do not change or the layers' "
                "pairs save less than the tables predict (see docs/LATENCY.md)"
                + (f"; more --latency-rounds (now {rounds}) may come closer" if len(tried) >= rounds else "")
                + (f"; the rounds stopped there because {stopped}" if stopped else ""))
    return allocation, record, chosen, said


def pointwise_table(layer: Layer, constants: Mapping, moments: Mapping, *, measure: str, rank_multiple: int,
                    max_groups: int) -> ErrorTable:
    """The error table of a k×k stride-1 conv decomposed pointwise-first, as ``compress`` builds it."""
    from .data_aware import layer_moment, whitening_factors
    from .layers import folded_weight, with_order
    from .spectra import error_table, layer_spectra

    ordered = with_order(layer, POINTWISE_FIRST, max_groups=max_groups, channel_multiple=rank_multiple)
    whitening = (whitening_factors(layer_moment(ordered, moments[layer.name]), ordered.groups)
                 if layer.name in moments else None)
    spectra = layer_spectra(folded_weight(ordered, constants), ordered.groups, whitening)
    rows, cols = ordered.matrix_shape
    return error_table(spectra, rows, cols, groups=ordered.groups, measure=measure, rank_multiple=rank_multiple)


def speed_step(prepared, chosen: Sequence[Layer], tables: Sequence[ErrorTable], options, *, moments: Mapping,
               measure: str, weights: Optional[Sequence[float]] = None
               ) -> tuple[list[ErrorTable], Optional[list[LayerCosts]], SpeedInfo]:
    """Between the error tables and the allocation: with ``--order auto`` add each k×k stride-1 conv's
    pointwise-first options, measure the latency tables, and return the tables the allocation reads,
    the latency costs (``--keep-latency``; None otherwise) and the tables' summary.

    With a latency budget both orders stay (the allocation picks per layer by error per µs and drops
    every option not faster than dense); with a params or MACs budget each layer keeps the order the
    tables say is faster (``auto``) and only the ranks faster than ``dense / min_speedup``.
    """
    from .options import AUTO_ORDER

    search, speed = options.search, options.speed
    auto = search.order == AUTO_ORDER
    tables = list(tables)
    if auto:
        for index, layer in enumerate(chosen):
            spatial = tag_order(tables[index], SPATIAL_FIRST)
            if layer.pointwise_first_ok and layer.order == SPATIAL_FIRST:
                pointwise = pointwise_table(layer, prepared.constants, moments, measure=measure,
                                            rank_multiple=search.rank_multiple, max_groups=search.groups_searched)
                if weights is not None:
                    from .data_aware import scaled_table

                    pointwise = scaled_table(pointwise, weights[index])
                spatial = merge_orders(spatial, tag_order(pointwise, POINTWISE_FIRST))
            tables[index] = spatial
    latency = options.budget.target == "latency"
    info = build_tables(prepared.model, prepared.store, chosen, tables, prepared.constants, speed,
                        input_shapes=options.input_shapes, with_model=latency)
    if latency:
        return tables, latency_costs(chosen, tables, info), info
    pruned, dropped, candidates, layers_hit = [], 0, 0, 0
    for layer, table in zip(chosen, tables):
        found = info.tables.get(layer.name)
        if auto:
            table = only_order(table, faster_order(layer, table, found))
        kept = table if found is None else prune_slow(layer, table, found, speed.min_speedup)
        before, after = (sum(len(option.ranks) for option in t.options) for t in (table, kept))
        candidates, dropped, layers_hit = candidates + before, dropped + before - after, layers_hit + (after < before)
        pruned.append(kept)
    return pruned, None, replace(info, slow_dropped=(dropped, candidates, layers_hit))


__all__ = ["CACHE_VERSION", "Timer", "OrtTimer", "LayerSpec", "LatencyTable", "LatencyCache", "SpeedInfo", "TableStats",
           "cache_dir", "layer_spec", "model_fingerprint", "grid_ranks", "measure_table", "measure_model",
           "build_tables", "option_times", "prune_slow", "faster_order", "latency_costs", "allocate_latency",
           "smallest_keep_latency", "SettleRound", "SETTLE_TOLERANCE", "settle_latency",
           "tag_order", "merge_orders", "only_order", "pointwise_table", "speed_step"]
