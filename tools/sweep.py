"""The results sweep: every reference model × method × budget × rank multiple, compressed, validated, timed.

For each reference model found in ``models/cache/<name>/`` (built by ``python -m models.build NAME``),
each method and each ``--keep-flops`` budget:

1. compress with :func:`onnx_alds.compress` (data-free methods ``alds``, ``svd``, ``svd-energy``,
   ``l-rank``; data-aware ``alds+data``, ``svd+data``, … with the model's ``calibration.npz``), at every
   ``--rank-multiple``; the wall time of ``compress`` is recorded;
2. validate on the model's held-out data (never the calibration data): the original model's outputs are
   computed once per model, the compressed one's once per variant, and compared with
   :func:`onnx_alds.validate.compare_output` (the figures ``onnx-alds validate`` prints):
   - ``mnist-resnet``: accuracy on ``eval.npz`` (1000 test digits) and top-1 agreement;
   - ``efficientnet-lite0``: accuracy on ``eval.npz`` (20 labelled photos) and top-1 agreement on
     ``agreement.npz`` (300 crops of natural photos);
   - ``minilm``: cosine similarity of the embeddings on ``eval.npz`` (300 sentences) and nearest-neighbour
     ranking preservation: the fraction of sentences whose top-1 neighbour (self excluded) is unchanged,
     the mean overlap of the top-10 neighbour sets, the Spearman correlation of all pairwise similarities;
   - ``resnet50`` (random weights): speed only (a relative-error sanity figure on 4 random inputs);
3. time on CPU with :func:`onnx_alds.bench.bench`: per model and budget, the original and every variant
   of that budget in one interleaved round-robin run, at batch 1 and a larger batch; the speedup is the
   original's median over the variant's; ideal is ``1/achieved`` (MACs of Conv/Gemm/MatMul), efficiency
   is measured/ideal. The load average is recorded with every timing. With ``--per-layer`` the variants
   at keep 0.5 are also timed layer by layer (each factorized pair against its original node).

Results merge into ``OUT/sweep.json`` (rows keyed by model, method, keep, rank multiple: running a
subset replaces only those rows), then ``OUT/sweep.csv``, ``OUT/<model>-quality.png``,
``OUT/<model>-speedup.png`` and ``docs/RESULTS.md`` are rewritten from the JSON.

    python tools/sweep.py                                   # everything (about 25 min on 2 cores)
    python tools/sweep.py --models mnist-resnet --no-bench  # accuracy only, one model
    python tools/sweep.py --bench-only                      # (re)time the variants already in the JSON
    python tools/sweep.py --report                          # rewrite CSV, plots and RESULTS.md from the JSON
    python tools/sweep.py --quick                           # small eval sets, short timings

Skipped on purpose: data-aware methods on ``resnet50`` (random weights and random "calibration" inputs
make whitening meaningless); every skip is listed in the JSON and in RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from onnx_alds import compress  # noqa: E402
from onnx_alds.bench import bench, machine_info  # noqa: E402
from onnx_alds.errors import OnnxAldsError  # noqa: E402
from onnx_alds.inputs import InputSet, load_inputs  # noqa: E402
from onnx_alds.runtime import make_session  # noqa: E402
from onnx_alds.speed import compress_speed_checked  # noqa: E402
from onnx_alds.validate import Tolerances, compare_output  # noqa: E402

DEFAULT_MODELS = ("mnist-resnet", "efficientnet-lite0", "minilm", "resnet50")
DEFAULT_KEEPS = (0.3, 0.5, 0.7, 0.9)
DEFAULT_RANK_MULTIPLES = (1, 16)

# name -> compress() keyword arguments; "data": use the model's calibration set
METHODS: dict[str, dict[str, Any]] = {
    "alds": dict(method="alds"),
    "svd": dict(method="svd"),
    "svd-energy": dict(method="svd-energy"),
    "l-rank": dict(method="l-rank"),
    "alds+data": dict(method="alds", data=True),
    "svd+data": dict(method="svd", data=True),
    # further data-aware variants, not in the default sweep (pick them with --methods)
    "svd-energy+data": dict(method="svd-energy", data=True),
    "l-rank+data": dict(method="l-rank", data=True),
    "alds+data+seq": dict(method="alds", data=True, sequential=True),
    "alds+data+sens": dict(method="alds", data=True, sensitivity=True),
    "alds+data/frob": dict(method="alds", data=True, error_measure="frobenius"),
    # the min-max allocation without grouping (max_groups=1): dense g = 1 pairs, which ONNX Runtime's
    # CPU kernels run much faster than grouped convolutions
    "alds/g1": dict(method="alds", max_groups=1),
    "alds+data/g1": dict(method="alds", data=True, max_groups=1),
    # pointwise-first pairs (1x1 then k×k) for the k×k stride-1 convs; "+sc": --speed-check on CPU at the
    # model's first bench batch size
    "alds/pw": dict(method="alds", order="pointwise-first"),
    "alds+data/pw": dict(method="alds", data=True, order="pointwise-first"),
    "alds+data/pw+sc": dict(method="alds", data=True, order="pointwise-first", speed_check=True),
}
DEFAULT_METHODS = ("alds", "svd", "svd-energy", "l-rank", "alds+data", "svd+data", "alds/g1", "alds/pw",
                   "alds+data/pw")
PER_LAYER_METHODS = ("alds", "svd", "alds/pw")  # timed layer by layer at keep 0.5 with --per-layer
DATA_FREE = ("alds", "svd", "svd-energy", "l-rank")

CSV_COLUMNS = (
    "model", "method", "data_aware", "keep", "rank_multiple", "status", "achieved_keep", "params_kept",
    "layers_factorized", "layers_total", "max_error", "compress_s",
    "quality_metric", "quality", "quality_original",
    "accuracy", "accuracy_original", "accuracy_drop", "agreement", "agreement_top5",
    "cos_mean", "cos_min", "nn_top1", "nn_top10", "spearman", "rel_error_mean",
    "ideal_speedup",
    "batch_small", "ms_original_small", "ms_small", "speedup_small", "efficiency_small",
    "batch_large", "ms_original_large", "ms_large", "speedup_large", "efficiency_large",
    "bench_load", "error",
)


# ------------------------------------------------------------------------------------------------
# Reference models


@dataclass
class EvalSet:
    """One held-out input file and how to read it."""

    label: str            # "eval", "agreement"
    npz: Path
    kind: str             # "accuracy": labels are true classes; "agreement": labels are the original's top-1;
                          # "embedding": no labels, ranking metrics; "sanity": random inputs, error only
    limit: Optional[int] = None


@dataclass
class ModelSpec:
    """A reference model: its file, data and how the sweep treats it."""

    name: str
    model: Path
    calibration: Optional[Path]
    evals: list[EvalSet]
    quality_metric: str                     # the row field plotted as "quality"
    input_shapes: Optional[dict[str, list[int]]] = None
    bench_batches: tuple[int, int] = (1, 32)
    data_aware: bool = True
    skip_note: str = ""
    extra_metrics: tuple[str, ...] = ()     # further row fields to plot beside quality


def reference_specs(root: Path = ROOT, quick: bool = False) -> dict[str, ModelSpec]:
    """The four reference models, as built into ``models/cache/``."""
    cache = root / "models" / "cache"
    small = (lambda n: n) if not quick else (lambda n: min(n, 100))
    return {
        "mnist-resnet": ModelSpec(
            "mnist-resnet", cache / "mnist-resnet" / "model.onnx", cache / "mnist-resnet" / "calibration.npz",
            [EvalSet("eval", cache / "mnist-resnet" / "eval.npz", "accuracy", small(1000))],
            quality_metric="accuracy", extra_metrics=("agreement",)),
        "efficientnet-lite0": ModelSpec(
            "efficientnet-lite0", cache / "efficientnet-lite0" / "model.onnx",
            cache / "efficientnet-lite0" / "calibration.npz",
            [EvalSet("eval", cache / "efficientnet-lite0" / "eval.npz", "accuracy"),
             EvalSet("agreement", cache / "efficientnet-lite0" / "agreement.npz", "agreement", small(300))],
            quality_metric="agreement", extra_metrics=("accuracy",)),
        "minilm": ModelSpec(
            "minilm", cache / "minilm" / "model.onnx", cache / "minilm" / "calibration.npz",
            [EvalSet("eval", cache / "minilm" / "eval.npz", "embedding", small(300))],
            quality_metric="nn_top1", extra_metrics=("cos_mean", "nn_top10"),
            input_shapes={"input_ids": [1, 64], "attention_mask": [1, 64]}),
        "resnet50": ModelSpec(
            "resnet50", cache / "resnet50" / "model.onnx", None,
            [EvalSet("eval", cache / "resnet50" / "eval.npz", "sanity")],
            quality_metric="rel_error_mean", bench_batches=(1, 16), data_aware=False,
            skip_note="data-aware methods skipped: random weights and standard-normal 'calibration' inputs "
                      "make whitened statistics meaningless; this model is for speed and scale only"),
    }


# ------------------------------------------------------------------------------------------------
# Evaluation


def run_outputs(model: onnx.ModelProto, inputs: InputSet, batch_size: int = 32,
                threads: Optional[int] = None) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` on ``inputs``, concatenated over batches."""
    session = make_session(model, "cpu", threads=threads)
    names = [o.name for o in session.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in inputs.batches(batch_size):
        for name, value in zip(names, session.run(names, feed)):
            chunks[name].append(np.asarray(value))
    return {n: np.concatenate(c, axis=0) for n, c in chunks.items()}


def _flat(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0], -1).astype(np.float64)


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
    near_a = np.argsort(-sim_a, axis=1)[:, :k]
    near_b = np.argsort(-sim_b, axis=1)[:, :k]
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(near_a, near_b)])) if k > 0 else 1.0
    upper = np.triu_indices(n, 1)
    from scipy.stats import spearmanr

    rho = float(spearmanr(sim_a[upper], sim_b[upper]).statistic) if len(upper[0]) > 1 else 1.0
    return {"nn_top1": top1, "nn_top10": overlap, "spearman": rho}


@dataclass
class LoadedModel:
    spec: ModelSpec
    proto: onnx.ModelProto
    calibration: Optional[InputSet]
    evals: list[tuple[EvalSet, InputSet, dict[str, np.ndarray]]] = field(default_factory=list)


def load_reference(spec: ModelSpec) -> LoadedModel:
    """The model, its calibration set and the original's outputs on every held-out set (computed once)."""
    proto = onnx.load(str(spec.model))
    calibration = None
    if spec.data_aware and spec.calibration is not None and spec.calibration.exists():
        calibration = load_inputs(proto, npz=spec.calibration)
    loaded = LoadedModel(spec, proto, calibration)
    for entry in spec.evals:
        inputs = load_inputs(proto, npz=entry.npz, limit=entry.limit)
        loaded.evals.append((entry, inputs, run_outputs(proto, inputs)))
    return loaded


def evaluate(loaded: LoadedModel, compressed: onnx.ModelProto) -> dict[str, Any]:
    """The quality figures of ``compressed`` on every held-out set of ``loaded``."""
    row: dict[str, Any] = {}
    for entry, inputs, reference in loaded.evals:
        outputs = run_outputs(compressed, inputs)
        first = next(iter(reference))
        ref, new = _flat(reference[first]), _flat(outputs[first])
        is_classifier = entry.kind in ("accuracy", "agreement", "sanity") and ref.shape[1] >= 2
        comparison = compare_output(first, ref, new, classifier=is_classifier, labels=inputs.labels,
                                    tolerances=Tolerances(), check_accuracy=inputs.labels is not None)
        if entry.kind == "accuracy":
            row["accuracy"] = comparison.accuracy_compressed
            row["accuracy_original"] = comparison.accuracy_original
            row["accuracy_drop"] = comparison.accuracy_drop
            row.setdefault("agreement", comparison.top1_agreement)
            row.setdefault("agreement_top5", comparison.top5_agreement)
            row["eval_samples"] = comparison.samples
        elif entry.kind == "agreement":
            row["agreement"] = comparison.top1_agreement
            row["agreement_top5"] = comparison.top5_agreement
            row["agreement_samples"] = comparison.samples
        elif entry.kind == "embedding":
            row["cos_mean"] = comparison.mean_cosine
            row["cos_min"] = comparison.min_cosine
            row.update(neighbour_metrics(ref, new))
            row["eval_samples"] = comparison.samples
        else:
            row["rel_error_mean"] = comparison.mean_rel_error
            row["agreement"] = comparison.top1_agreement
            row["eval_samples"] = comparison.samples
    return row


def original_quality(loaded: LoadedModel) -> dict[str, Any]:
    """The original model's own figures (accuracy on labelled sets; 1.0 for agreement-type figures)."""
    out: dict[str, Any] = {}
    for entry, inputs, reference in loaded.evals:
        if entry.kind == "accuracy" and inputs.labels is not None:
            ref = _flat(next(iter(reference.values())))
            out["accuracy"] = float(np.mean(np.argmax(ref, axis=1) == inputs.labels))
    out.update(agreement=1.0, cos_mean=1.0, nn_top1=1.0, nn_top10=1.0, rel_error_mean=0.0)
    return out


# ------------------------------------------------------------------------------------------------
# The sweep


def row_key(row: dict[str, Any]) -> tuple:
    return (row["model"], row["method"], float(row["keep"]), int(row["rank_multiple"]))


def variant_path(work: Path, model: str, method: str, keep: float, rank_multiple: int) -> Path:
    return work / model / f"{method.replace('+', '_').replace('/', '_')}-k{keep:g}-m{rank_multiple}.onnx"


def load_average() -> Optional[float]:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def compress_variant(loaded: LoadedModel, method: str, keep: float, rank_multiple: int, seed: int = 0):
    """(result, seconds) of one compression; raises OnnxAldsError when the budget cannot be met."""
    options = dict(METHODS[method])
    data = options.pop("data", False)
    run = compress
    if options.pop("speed_check", False):
        run = partial(compress_speed_checked, provider="cpu", batch=loaded.spec.bench_batches[0])
    started = time.perf_counter()
    result = run(loaded.proto, keep_flops=keep, rank_multiple=rank_multiple, seed=seed,
                 input_shapes=loaded.spec.input_shapes, calibration=loaded.calibration if data else None, **options)
    return result, time.perf_counter() - started


def sweep_accuracy(loaded: LoadedModel, methods: Sequence[str], keeps: Sequence[float],
                   rank_multiples: Sequence[int], work: Path, log: Callable[[str], None] = print,
                   checkpoint: Optional[Callable[[list], None]] = None) -> tuple[list, list]:
    """Compress and validate every variant of one model; saves each compressed model under ``work``.

    ``checkpoint(rows)`` is called after every row (the CLI writes ``OUT/sweep.partial.json``, which
    ``--merge-from`` accepts, so an interrupted run keeps what it measured).
    """
    rows, skipped = [], []
    spec = loaded.spec
    for method in methods:
        data = METHODS[method].get("data", False)
        if data and loaded.calibration is None:
            skipped.append({"model": spec.name, "method": method,
                            "reason": spec.skip_note or "no calibration data for this model"})
            continue
        for rank_multiple in rank_multiples:
            for keep in keeps:
                row: dict[str, Any] = dict(model=spec.name, method=method, data_aware=bool(data), keep=float(keep),
                                           rank_multiple=int(rank_multiple), quality_metric=spec.quality_metric)
                try:
                    result, seconds = compress_variant(loaded, method, keep, rank_multiple)
                except OnnxAldsError as exc:
                    row.update(status="error", error=str(exc))
                    log(f"  {spec.name} {method} keep {keep} m{rank_multiple}: {exc}")
                    rows.append(row)
                    continue
                report = result.report
                path = variant_path(work, spec.name, method, keep, rank_multiple)
                path.parent.mkdir(parents=True, exist_ok=True)
                onnx.save(result.model, str(path))
                factorized = sum(1 for layer in report.layers if layer.groups)
                row.update(status="ok", achieved_keep=report.achieved,
                           params_kept=report.params_after / report.params_before,
                           layers_factorized=factorized, layers_total=len(report.layers),
                           max_error=report.max_error, compress_s=seconds,
                           ideal_speedup=1.0 / report.achieved if report.achieved > 0 else None,
                           compress_seconds_by_step=dict(report.seconds), notes=list(report.notes),
                           plan=[dict(layer=l.name, op=l.op, shape=list(l.weight_shape), groups=l.groups,
                                      rank=l.rank, macs_before=l.macs_before, macs_after=l.macs_after,
                                      error=l.error) for l in report.layers if l.groups],
                           variant=str(path))
                row.update(evaluate(loaded, result.model))
                row["quality"] = row.get(spec.quality_metric)
                row["quality_original"] = original_quality(loaded).get(spec.quality_metric)
                log(f"  {spec.name:<18} {method:<12} keep {keep:<4g} m{rank_multiple:<3} achieved "
                    f"{report.achieved:.3f}  {spec.quality_metric} {_fmt(row['quality'])}  "
                    f"({seconds:.1f} s)", flush=True)
                rows.append(row)
                if checkpoint is not None:
                    checkpoint(rows)
    return rows, skipped


def bench_settings(quick: bool, target_s: Optional[float] = None) -> dict[str, float]:
    """Per timed group (original + variants of one budget, one batch size): target seconds and limits."""
    target = target_s if target_s is not None else (1.0 if quick else 5.0)
    return dict(target_s=target, min_runs=3 if quick else 5, max_runs=200, warmup=1 if quick else 2)


def sweep_bench(loaded: LoadedModel, rows: list[dict[str, Any]], *, threads: int, quick: bool,
                per_layer: bool, target_s: Optional[float] = None,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time every variant in ``rows`` (one model) against the original, one interleaved run per budget."""
    settings = bench_settings(quick, target_s)
    spec = loaded.spec
    layer_results = []
    by_keep: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("variant") and Path(row["variant"]).exists():
            by_keep.setdefault(float(row["keep"]), []).append(row)
    for keep, group in sorted(by_keep.items()):
        models = [str(spec.model)] + [r["variant"] for r in group]
        names = ["original"] + [f"{r['method']}/m{r['rank_multiple']}" for r in group]
        for slot, batch in zip(("small", "large"), spec.bench_batches):
            probe = bench([str(spec.model)], provider="cpu", batch_sizes=(batch,), threads=threads, warmup=1,
                          runs=1, min_time_s=0.0, input_shapes=_bench_shapes(spec))
            per_run = probe.timing(0, batch).median_ms / 1e3
            runs = int(min(settings["max_runs"], max(settings["min_runs"],
                                                     settings["target_s"] / max(per_run * len(models), 1e-6))))
            before = load_average()
            report = bench(models, provider="cpu", batch_sizes=(batch,), threads=threads,
                           warmup=int(settings["warmup"]), runs=runs, min_time_s=0.0,
                           input_shapes=_bench_shapes(spec), names=names)
            after = load_average()
            original_ms = report.timing(0, batch).median_ms
            for index, row in enumerate(group, start=1):
                timing = report.timing(index, batch)
                row[f"batch_{slot}"] = batch
                row[f"ms_original_{slot}"] = original_ms
                row[f"ms_{slot}"] = timing.median_ms
                row[f"spread_{slot}"] = timing.spread
                row[f"runs_{slot}"] = timing.runs
                row[f"speedup_{slot}"] = timing.speedup
                ideal = row.get("ideal_speedup")
                row[f"efficiency_{slot}"] = timing.speedup / ideal if ideal else None
                loads = [x for x in (before, after) if x is not None]
                row["bench_load"] = max(loads) if loads else None
            log(f"  {spec.name:<18} keep {keep:<4g} batch {batch:<3} original {original_ms:8.2f} ms, {runs} runs, "
                f"load {before}->{after}: " + ", ".join(f"{n} {report.timing(i, batch).speedup:.2f}x"
                                                        for i, n in enumerate(names[1:], start=1)))
        if per_layer and abs(keep - 0.5) < 1e-9:
            for row in group:
                if row["method"] not in PER_LAYER_METHODS:
                    continue
                report = bench([str(spec.model), row["variant"]], provider="cpu", batch_sizes=(spec.bench_batches[0],),
                               threads=threads, warmup=2, runs=3, min_time_s=0.0, per_layer=True,
                               layer_runs=10 if quick else 30, input_shapes=_bench_shapes(spec),
                               names=["original", f"{row['method']}/m{row['rank_multiple']}"])
                plan = {p["layer"]: p for p in row.get("plan", [])}
                for comparison in report.layers:
                    layer_rows = []
                    for timing in comparison.rows:
                        entry = plan.get(timing.layer, {})
                        ideal = (entry["macs_before"] / entry["macs_after"]
                                 if entry.get("macs_after") else None)
                        layer_rows.append(dict(layer=timing.layer, op=timing.op_type, input_shape=list(timing.input_shape),
                                               groups=entry.get("groups"), rank=entry.get("rank"),
                                               shape=entry.get("shape"), original_us=timing.original_us,
                                               pair_us=timing.pair_us, speedup=timing.speedup, ideal=ideal,
                                               efficiency=timing.speedup / ideal if ideal else None))
                    layer_results.append(dict(model=spec.name, method=row["method"], keep=keep,
                                              rank_multiple=row["rank_multiple"], batch=comparison.batch_size,
                                              load=load_average(), rows=layer_rows, skipped=list(comparison.skipped)))
                    slow = [r for r in layer_rows if r["speedup"] < 1.0]
                    log(f"  per layer {spec.name} {row['method']}/m{row['rank_multiple']}: {len(layer_rows)} layers, "
                        f"{len(slow)} not faster")
    return layer_results


def _bench_shapes(spec: ModelSpec) -> Optional[dict[str, list[int]]]:
    """Input shapes for timing: the model's own (the batch dim is set by bench)."""
    return spec.input_shapes


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ------------------------------------------------------------------------------------------------
# Outputs: JSON (the record), CSV, plots, RESULTS.md


def environment() -> dict[str, Any]:
    import onnxruntime
    import scipy

    from onnx_alds import __version__

    info = machine_info()
    return dict(machine=info, versions={"onnx_alds": __version__, "onnxruntime": onnxruntime.__version__,
                                        "onnx": onnx.__version__, "numpy": np.__version__,
                                        "scipy": scipy.__version__, "python": platform.python_version()})


def merge_json(path: Path, rows: list[dict], skipped: list[dict], layers: list[dict], meta: dict) -> dict:
    """Merge new rows (by key) into ``path`` and return the merged record (not yet written)."""
    data: dict[str, Any] = {"rows": [], "skipped": [], "per_layer": [], "runs": []}
    if path.exists():
        data.update(json.loads(path.read_text()))
    merged = {row_key(r): r for r in data["rows"]}
    for row in rows:
        old = merged.get(row_key(row), {})
        # a re-run without timing keeps the older timing figures only when nothing else changed
        merged[row_key(row)] = row if "ms_small" in row or "ms_small" not in old else {**old, **row}
    data["rows"] = sorted(merged.values(), key=lambda r: (r["model"], r["method"], r["rank_multiple"], r["keep"]))
    skip_keys = {(s["model"], s["method"]) for s in skipped}
    data["skipped"] = [s for s in data["skipped"] if (s["model"], s["method"]) not in skip_keys] + skipped
    layer_keys = {(x["model"], x["method"], x["keep"], x["rank_multiple"]) for x in layers}
    data["per_layer"] = [x for x in data["per_layer"]
                         if (x["model"], x["method"], x["keep"], x["rank_multiple"]) not in layer_keys] + layers
    data["runs"] = data["runs"] + [meta]
    return data


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1) + "\n")
    tmp.replace(path)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()
                             if k in CSV_COLUMNS and v is not None})


_STYLE = {"alds": ("C0", "-", "o"), "svd": ("C1", "-", "s"), "svd-energy": ("C2", "-", "^"),
          "l-rank": ("C3", "-", "v"), "alds+data": ("C0", "--", "o"), "svd+data": ("C1", "--", "s"),
          "alds/g1": ("C4", "-", "D"), "alds+data/g1": ("C4", "--", "D"), "alds/pw": ("C5", "-", "P"),
          "alds+data/pw": ("C5", "--", "P"), "alds+data/pw+sc": ("C6", ":", "X")}


def _style(method: str, index: int):
    return _STYLE.get(method, (f"C{4 + index % 6}", ":", "d"))


def _line(axis, points, method: str, multiple: int, index: int) -> None:
    """One method's curve: colour per method, dashed when data-aware, hollow markers for rank multiple > 1."""
    color, line, marker = _style(method, index)
    axis.plot(*zip(*points), color=color, linestyle=line, marker=marker, markersize=5 if multiple > 1 else 4,
              markerfacecolor="none" if multiple > 1 else color, linewidth=1.0 if multiple > 1 else 1.5,
              alpha=0.7 if multiple > 1 else 1.0, label=f"{method} m{multiple}")


def write_plots(data: dict, out: Path) -> list[Path]:
    """Per model: quality vs MACs kept (one line per method and rank multiple); speedup vs MACs kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    models = sorted({r["model"] for r in data["rows"]})
    for model in models:
        rows = [r for r in data["rows"] if r["model"] == model and r.get("status") == "ok"]
        if not rows:
            continue
        metric = rows[0]["quality_metric"]
        metrics = [metric] + [m for m in ("accuracy", "agreement", "cos_mean", "nn_top10")
                              if m != metric and any(r.get(m) is not None for r in rows)][:1]
        variants = sorted({(r["method"], r["rank_multiple"]) for r in rows},
                          key=lambda v: (list(METHODS).index(v[0]) if v[0] in METHODS else 99, v[1]))
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
        for axis, name in zip(axes[0], metrics):
            for index, (method, multiple) in enumerate(variants):
                points = sorted((r["achieved_keep"], r[name]) for r in rows
                                if (r["method"], r["rank_multiple"]) == (method, multiple) and r.get(name) is not None)
                if not points:
                    continue
                _line(axis, points, method, multiple, index)
            reference = original_reference(data, model, name)
            if reference is not None:
                axis.axhline(reference, color="grey", linewidth=0.8, label="original")
            axis.set_xlabel("MACs kept (achieved)")
            axis.set_ylabel(name)
            axis.set_title(f"{model}: {name}")
            axis.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / f"{model}-quality.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
        timed = [r for r in rows if r.get("speedup_small") is not None]
        if timed:
            slots = [s for s in ("small", "large") if any(r.get(f"speedup_{s}") is not None for r in timed)]
            fig, axes = plt.subplots(1, len(slots), figsize=(5.2 * len(slots), 3.8), squeeze=False)
            for axis, slot in zip(axes[0], slots):
                for index, (method, multiple) in enumerate(variants):
                    points = sorted((r["achieved_keep"], r[f"speedup_{slot}"]) for r in timed
                                    if (r["method"], r["rank_multiple"]) == (method, multiple)
                                    and r.get(f"speedup_{slot}") is not None)
                    if not points:
                        continue
                    _line(axis, points, method, multiple, index)
                xs = np.linspace(max(0.2, min(r["achieved_keep"] for r in timed) * 0.95), 1.0, 50)
                axis.plot(xs, 1 / xs, color="black", linewidth=1, label="ideal 1/keep")
                axis.axhline(1.0, color="grey", linewidth=0.8)
                batch = next(r[f"batch_{slot}"] for r in timed if r.get(f"batch_{slot}") is not None)
                axis.set_xlabel("MACs kept (achieved)")
                axis.set_ylabel("measured speedup (ORT CPU)")
                axis.set_title(f"{model}: batch {batch}")
                axis.grid(alpha=0.3)
            axes[0][0].legend(fontsize=6, ncol=2)
            fig.tight_layout()
            path = out / f"{model}-speedup.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            written.append(path)
    return written


def original_reference(data: dict, model: str, metric: str) -> Optional[float]:
    for row in data["rows"]:
        if row["model"] == model and metric == "accuracy" and row.get("accuracy_original") is not None:
            return row["accuracy_original"]
    return {"agreement": 1.0, "cos_mean": 1.0, "nn_top1": 1.0, "nn_top10": 1.0}.get(metric)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


QUALITY_COLUMNS = {
    "mnist-resnet": (("accuracy", "acc"), ("accuracy_drop", "drop"), ("agreement", "agree")),
    "efficientnet-lite0": (("agreement", "agree (300)"), ("accuracy", "acc (20 photos)")),
    "minilm": (("nn_top1", "NN top-1 kept"), ("nn_top10", "top-10 overlap"), ("cos_mean", "cos mean"),
               ("cos_min", "cos min")),
    "resnet50": (("rel_error_mean", "rel. error"),),
}


def render_results(data: dict, out: Path, results_md: Path, *, command: str, notes_md: Optional[Path] = None) -> str:
    """RESULTS.md from the merged JSON: machine, command, per model quality and speed tables, plots."""
    env = data.get("environment", {})
    machine, versions = env.get("machine", {}), env.get("versions", {})
    rel = os.path.relpath(out, results_md.parent)
    lines = ["# Results: ALDS and baselines on the reference models", "",
             "Generated by `python tools/sweep.py --report` from "
             f"[`{rel}/sweep.json`]({rel}/sweep.json) (every figure; also [`sweep.csv`]({rel}/sweep.csv)). "
             "Do not edit the generated sections by hand; the discussion comes from "
             f"`{os.path.relpath(notes_md, results_md.parent) if notes_md else 'docs/results/notes.md'}`.", "",
             "## Machine and command", "",
             f"- CPU: {machine.get('cpu', '?')}, {machine.get('logical_cpus', '?')} logical CPUs "
             f"({machine.get('physical_cores', '?')} physical cores), {machine.get('os', '?')}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
             "- timing: ONNX Runtime CPU execution provider, 2 intra-op threads, median of interleaved "
             "round-robin runs; the original and all variants of one budget are timed in the same run",
             ]
    for run in data.get("runs", []):
        lines.append(f"- run {run.get('started', '?')}: `{run.get('command', '?')}` "
                     f"({run.get('seconds', 0):.0f} s, load average {_fmt(run.get('load_start'), 1)} at start, "
                     f"{_fmt(run.get('load_end'), 1)} at end)")
    lines.append(f"- this file: `{command}`; the whole sweep: `python tools/sweep.py --per-layer` (runs made in "
                 "parallel or per model are combined with `--merge-from OTHER/sweep.json`)")
    lines.append("")
    if notes_md is not None and notes_md.exists():
        lines += [notes_md.read_text().rstrip(), ""]
    for model in sorted({r["model"] for r in data["rows"]}, key=lambda m: (DEFAULT_MODELS + (m,)).index(m)):
        rows = [r for r in data["rows"] if r["model"] == model]
        ok = [r for r in rows if r.get("status") == "ok"]
        lines += [f"## {model}", ""]
        quality = QUALITY_COLUMNS.get(model, ((rows[0]["quality_metric"], rows[0]["quality_metric"]),))
        original = {k: original_reference(data, model, k) for k, _ in quality}
        if any(v is not None for v in original.values()):
            lines.append("Original model: " + ", ".join(f"{label} {_fmt(original[k])}" for k, label in quality
                                                         if original[k] is not None) + ".")
            lines.append("")
        keeps = sorted({r["keep"] for r in rows})
        multiples = sorted({r["rank_multiple"] for r in rows})
        main = quality[0]
        for multiple in multiples:
            table = []
            for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
                cells = [method]
                for keep in keeps:
                    match = [r for r in rows if r["method"] == method and r["keep"] == keep
                             and r["rank_multiple"] == multiple]
                    if not match:
                        cells.append("")
                    elif match[0].get("status") != "ok":
                        cells.append("n/a")
                    else:
                        cells.append(f"{_fmt(match[0].get(main[0]))} ({match[0]['achieved_keep']:.2f})")
                table.append(cells)
            lines += [f"**{main[1]}** (achieved MACs kept in brackets; n/a: budget not reachable at this rank "
                      f"multiple), rank multiple {multiple}:", "",
                      markdown_table(["method"] + [f"keep {k:g}" for k in keeps], table), ""]
        detail = []
        for r in sorted(ok, key=lambda r: (list(METHODS).index(r["method"]) if r["method"] in METHODS else 99,
                                           r["rank_multiple"])):
            if r["keep"] != 0.5:
                continue
            detail.append([r["method"], r["rank_multiple"], f"{r['achieved_keep']:.3f}"]
                          + [_fmt(r.get(k)) for k, _ in quality]
                          + [_fmt(r.get("compress_s"), 1)])
        if detail:
            lines += ["All figures at keep-flops 0.5:", "",
                      markdown_table(["method", "m", "MACs kept"] + [label for _, label in quality] + ["compress s"],
                                     detail), ""]
        timed = [r for r in ok if r.get("speedup_small") is not None]
        if timed:
            b1 = timed[0].get("batch_small")
            b2 = next((r.get("batch_large") for r in timed if r.get("batch_large")), None)
            speed = []
            for r in sorted(timed, key=lambda r: (r["keep"], r["rank_multiple"], list(METHODS).index(r["method"])
                                                   if r["method"] in METHODS else 99)):
                speed.append([f"{r['keep']:g}", r["method"], r["rank_multiple"], f"{r['achieved_keep']:.3f}",
                              f"{r['ideal_speedup']:.2f}",
                              f"{_fmt(r.get('ms_original_small'), 2)} → {_fmt(r.get('ms_small'), 2)}",
                              f"{_fmt(r.get('speedup_small'), 2)}× ({_pct(r.get('efficiency_small'))})",
                              f"{_fmt(r.get('ms_original_large'), 1)} → {_fmt(r.get('ms_large'), 1)}",
                              f"{_fmt(r.get('speedup_large'), 2)}× ({_pct(r.get('efficiency_large'))})",
                              _fmt(r.get("bench_load"), 1)])
            lines += [f"Measured speed (median ms, speedup and % of ideal), batch {b1} and batch {b2}:", "",
                      markdown_table(["keep", "method", "m", "MACs kept", "ideal", f"ms b{b1}", f"speedup b{b1}",
                                      f"ms b{b2}", f"speedup b{b2}", "load"], speed), ""]
        for entry in [x for x in data.get("per_layer", []) if x["model"] == model]:
            rows_l = entry["rows"]
            outliers = [x for x in rows_l if x.get("efficiency") is not None and x["efficiency"] < 0.7]
            lines += [f"Per layer, {entry['method']} m{entry['rank_multiple']} at keep {entry['keep']:g} "
                      f"(batch {entry['batch']}, load {_fmt(entry.get('load'), 1)}): {len(rows_l)} factorized layers, "
                      f"{sum(1 for x in rows_l if x['speedup'] < 1)} not faster than the dense node, "
                      f"{len(outliers)} below 70 % of their ideal"
                      + (f"; {len(entry['skipped'])} layers not timed (first: {entry['skipped'][0]})"
                         if entry.get("skipped") else "") + ".", ""]
            if outliers:
                worst = sorted(outliers, key=lambda x: x["efficiency"])[:8]
                lines += [markdown_table(["layer", "op", "weight", "g", "rank", "µs dense → pair", "speedup", "ideal"],
                                         [[x["layer"], x["op"], "x".join(map(str, x.get("shape") or [])), x.get("groups"),
                                           x.get("rank"), f"{x['original_us']:.0f} → {x['pair_us']:.0f}",
                                           f"{x['speedup']:.2f}", _fmt(x.get("ideal"), 2)] for x in worst]), ""]
        for name in (f"{model}-quality.png", f"{model}-speedup.png"):
            if (out / name).exists():
                lines += [f"![{name}]({rel}/{name})", ""]
    skipped = data.get("skipped", [])
    if skipped:
        lines += ["## Skipped combinations", ""]
        seen = set()
        for s in skipped:
            if (s["model"], s["method"]) in seen:
                continue
            seen.add((s["model"], s["method"]))
            lines.append(f"- {s['model']} / {s['method']}: {s['reason']}")
        lines.append("")
    text = "\n".join(lines)
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(text)
    return text


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def write_outputs(data: dict, out: Path, results_md: Optional[Path], command: str,
                  notes_md: Optional[Path] = None, plots: bool = True) -> None:
    write_json(data, out / "sweep.json")
    write_csv(data["rows"], out / "sweep.csv")
    if plots:
        write_plots(data, out)
    if results_md is not None:
        render_results(data, out, results_md, command=command, notes_md=notes_md)


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--keeps", nargs="+", type=float, default=list(DEFAULT_KEEPS))
    parser.add_argument("--rank-multiple", nargs="+", type=int, default=list(DEFAULT_RANK_MULTIPLES),
                        dest="rank_multiples")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--results-md", type=Path, default=ROOT / "docs" / "RESULTS.md")
    parser.add_argument("--notes", type=Path, default=None,
                        help="markdown inserted into RESULTS.md after the machine section "
                             "(default: OUT/notes.md when it exists)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onnx-alds-sweep",
                        help="where compressed variants are kept between runs (for --bench-only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="100 eval samples, about 1 s per timed group")
    parser.add_argument("--bench-target-s", type=float, default=None,
                        help="seconds per timed group (original + the variants of one budget at one batch size); "
                             "default 5 (1 with --quick)")
    parser.add_argument("--no-bench", action="store_true", help="compress and validate only")
    parser.add_argument("--bench-only", action="store_true",
                        help="time the variants already in the JSON (recompressing the missing ones)")
    parser.add_argument("--per-layer", action="store_true",
                        help="also time " + ", ".join(PER_LAYER_METHODS) + " at keep 0.5 layer by layer")
    parser.add_argument("--no-plots", action="store_true", help="leave the PNG plots as they are")
    parser.add_argument("--report", action="store_true", help="only rewrite CSV, plots and RESULTS.md from the JSON")
    parser.add_argument("--merge-from", nargs="+", type=Path, default=None, metavar="JSON",
                        help="merge the rows of other sweep.json files (e.g. per-model runs made in parallel) "
                             "into OUT/sweep.json, then rewrite the outputs")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, specs: Optional[dict[str, ModelSpec]] = None) -> int:
    args = parse_args(argv)
    command = "python tools/sweep.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    notes_md = args.notes or (out / "notes.md")
    if args.merge_from:
        for source in args.merge_from:
            other = json.loads(Path(source).read_text())
            data = merge_json(out / "sweep.json", other["rows"], other.get("skipped", []), other.get("per_layer", []),
                              {})
            data["runs"] = data["runs"][:-1] + other.get("runs", [])
            data["environment"] = other.get("environment", data.get("environment"))
            write_json(data, out / "sweep.json")
        args.report = True
    if args.report:
        data = json.loads((out / "sweep.json").read_text())
        write_outputs(data, out, args.results_md, command, notes_md, plots=not args.no_plots)
        print(f"wrote {args.results_md}, {out}/sweep.csv and plots")
        return 0
    specs = specs or reference_specs(args.root, quick=args.quick)
    started = time.time()
    load_start = load_average()
    all_rows, all_skipped, all_layers = [], [], []
    existing = json.loads((out / "sweep.json").read_text())["rows"] if (out / "sweep.json").exists() else []
    for name in args.models:
        spec = specs.get(name)
        if spec is None or not spec.model.exists():
            print(f"skip {name}: no {spec.model if spec else name} (build it: python -m models.build {name})",
                  file=sys.stderr)
            continue
        print(f"{name}: loading and running the original on the held-out data", flush=True)
        loaded = load_reference(spec)
        if args.bench_only:
            rows = [dict(r) for r in existing if r["model"] == name and r["method"] in args.methods
                    and r["keep"] in args.keeps and r["rank_multiple"] in args.rank_multiples and r.get("status") == "ok"]
            for row in rows:
                path = variant_path(args.work, name, row["method"], row["keep"], row["rank_multiple"])
                if not path.exists():
                    result, _ = compress_variant(loaded, row["method"], row["keep"], row["rank_multiple"])
                    path.parent.mkdir(parents=True, exist_ok=True)
                    onnx.save(result.model, str(path))
                row["variant"] = str(path)
            skipped = []
        else:
            done = list(all_rows)
            rows, skipped = sweep_accuracy(
                loaded, args.methods, args.keeps, args.rank_multiples, args.work,
                checkpoint=lambda rows: write_json({"rows": done + rows, "skipped": [], "per_layer": [], "runs": []},
                                                   out / "sweep.partial.json"))
        if not args.no_bench:
            all_layers += sweep_bench(loaded, rows, threads=args.threads, quick=args.quick, per_layer=args.per_layer,
                                      target_s=args.bench_target_s)
        all_rows += rows
        all_skipped += skipped
    meta = dict(command=command, started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
                seconds=time.time() - started, load_start=load_start, load_end=load_average(),
                quick=args.quick, bench=not args.no_bench)
    data = merge_json(out / "sweep.json", all_rows, all_skipped, all_layers, meta)
    data["environment"] = environment()
    write_outputs(data, out, args.results_md, command, notes_md, plots=not args.no_plots)
    (out / "sweep.partial.json").unlink(missing_ok=True)
    print(f"done in {meta['seconds']:.0f} s: {len(all_rows)} rows; wrote {out}/sweep.json, sweep.csv, plots, "
          f"{args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
