"""The results sweep of the reference models: a thin layer over ``onnx-alds sweep`` (onnx_alds/sweep.py).

What lives here is what is specific to the four reference models and to ``docs/RESULTS.md``: which
models (built into ``models/cache/<name>/`` by ``python -m models.build NAME``), their calibration and
held-out files and which figure is each model's quality, the default grid, the per-layer timings and
the generated ``docs/RESULTS.md``. The grid itself (compress, validate, time; resumable; on the local or
the Ray engine) is :func:`onnx_alds.sweep.run_sweep`, the same code ``onnx-alds sweep`` runs.

For each model, method (``alds``, ``svd``, ``svd-energy``, ``l-rank``; ``+data`` with the model's
``calibration.npz``; ``/g1``, ``/pw``, ``+sc`` … as ``onnx-alds sweep --methods`` reads them), budget
(``--keeps``, fractions of MACs) and rank multiple:

1. compress (the wall time of ``compress`` is recorded);
2. validate on the model's held-out data (never the calibration data):
   - ``mnist-resnet``: accuracy on ``eval.npz`` (1000 test digits) and top-1 agreement;
   - ``efficientnet-lite0``: accuracy on ``eval.npz`` (20 labelled photos) and top-1 agreement on
     ``agreement.npz`` (300 crops of natural photos);
   - ``minilm``: cosine similarity of the embeddings on ``eval.npz`` (300 sentences) and nearest-neighbour
     ranking preservation (:func:`onnx_alds.sweep.neighbour_metrics`);
   - ``resnet50`` (random weights): speed only (a relative-error sanity figure on 4 random inputs);
3. time on CPU, after every compress/validate task has ended, on this machine: per model and budget the
   original and every variant of that budget in one interleaved round-robin run, at batch 1 and a larger
   batch; ideal is ``1/achieved``, efficiency is measured/ideal. With ``--per-layer`` the variants at
   keep 0.5 are also timed layer by layer.

The compressed variants and one row file per variant are kept in ``--work`` (default
``$TMP/onnx-alds-sweep``): a second run, or a run after an interrupted one, redoes only what is missing.
Results merge into ``OUT/sweep.json`` (rows keyed by model, method, keep, rank multiple: running a
subset replaces only those rows), then ``OUT/sweep.csv``, ``OUT/<model>-quality.png``,
``OUT/<model>-speedup.png`` and ``docs/RESULTS.md`` are rewritten from the JSON; rows measured on other
validation data than the model's latest full run (their ``data_id``) stay in the JSON and CSV but are left out
of the tables and plots, and RESULTS.md says so.

    python tools/sweep.py                                   # everything (about 17 min on 2 cores)
    python tools/sweep.py --models mnist-resnet --no-bench  # accuracy only, one model
    python tools/sweep.py --engine ray --workers 4          # compress + validate on Ray actors
    python tools/sweep.py --bench-only                      # (re)time the variants (computing missing ones)
    python tools/sweep.py --report                          # rewrite CSV, plots and RESULTS.md from the JSON
    python tools/sweep.py --quick                           # small eval sets, short timings (docs/results/quick)

Skipped on purpose: data-aware methods on ``resnet50`` (random weights and random "calibration" inputs
make whitening meaningless); every skip is listed in the JSON and in RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

from _tool import check_known, check_output_folder, keep_ratio, positive_float  # noqa: E402
import numpy as np  # noqa: E402
from onnx_alds.argtypes import positive_int, thread_count  # noqa: E402
from onnx_alds.bench import bench  # noqa: E402
from onnx_alds.errors import InputDataError, OnnxAldsError  # noqa: E402
from onnx_alds.model_io import same_file  # noqa: E402
from onnx_alds.sweep import (DataSource, EvalSpec, SweepModel, environment, load_average, make_engine,  # noqa: E402
                             parse_method, run_sweep)
from onnx_alds.sweep import neighbour_metrics  # noqa: E402,F401  (the MiniLM figures; re-exported for the tests)
from onnx_alds.sweep import write_plots as _write_plots  # noqa: E402

DEFAULT_MODELS = ("mnist-resnet", "efficientnet-lite0", "minilm", "resnet50")
RESULTS = ROOT / "docs" / "results"  # the published results; a --quick run writes to RESULTS / "quick"
DEFAULT_KEEPS = (0.3, 0.5, 0.7, 0.9)
DEFAULT_RANK_MULTIPLES = (1, 16)

# the methods the results know, in the order the tables list them (``onnx-alds sweep --methods`` names:
# a base method with modifiers, see onnx_alds.sweep.MODIFIERS)
METHODS = (
    "alds", "svd", "svd-energy", "l-rank", "alds+data", "svd+data",
    # further data-aware variants, not in the default sweep (pick them with --methods)
    "svd-energy+data", "l-rank+data", "alds+data+seq", "alds+data+sens", "alds+data/frob",
    # the min-max allocation without grouping (max_groups=1): dense g = 1 pairs, which ONNX Runtime's
    # CPU kernels run much faster than grouped convolutions
    "alds/g1", "alds+data/g1",
    # pointwise-first pairs (1x1 then k×k) for the k×k stride-1 convs; "+sc": --speed-check on CPU at the
    # model's first bench batch size
    "alds/pw", "alds+data/pw", "alds+data/pw+sc",
    # output damage, and hidden-channel pruning (docs/PRUNING.md): widths alone, widths with low-rank
    "damage+data", "alds+data+pruneonly", "alds+data+prune", "damage+data+prune",
)
for _name in METHODS:
    parse_method(_name)  # every name is one onnx-alds sweep understands
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


def sweep_model(spec: ModelSpec) -> SweepModel:
    """The reference model as ``onnx-alds sweep`` takes it."""
    calibration = None
    if spec.data_aware and spec.calibration is not None and spec.calibration.exists():
        calibration = DataSource(npz=str(spec.calibration))
    return SweepModel(name=spec.name, path=str(spec.model), calibration=calibration,
                      evals=tuple(EvalSpec(e.label, DataSource(npz=str(e.npz), limit=e.limit), e.kind)
                                  for e in spec.evals),
                      quality_metric=spec.quality_metric,
                      input_shapes=spec.input_shapes, bench_batches=tuple(spec.bench_batches),
                      data_aware=spec.data_aware, skip_note=spec.skip_note)


# ------------------------------------------------------------------------------------------------
# Per-layer timings (after the sweep, on this machine, one variant at a time)


def row_key(row: dict[str, Any]) -> tuple:
    return row["model"], row["method"], float(row["keep"]), int(row["rank_multiple"])


def per_layer_timings(spec: ModelSpec, rows: list[dict[str, Any]], *, threads: int, quick: bool,
                      log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every factorized pair of the variants of :data:`PER_LAYER_METHODS` at keep 0.5 against its original node."""
    layer_results = []
    for row in rows:
        if (row.get("status") != "ok" or row["method"] not in PER_LAYER_METHODS or abs(row["keep"] - 0.5) > 1e-9
                or not row.get("variant") or not Path(row["variant"]).exists()):
            continue
        report = bench([str(spec.model), row["variant"]], provider="cpu", batch_sizes=(spec.bench_batches[0],),
                       threads=threads, warmup=2, runs=3, min_time_s=0.0, per_layer=True,
                       layer_runs=10 if quick else 30, input_shapes=spec.input_shapes,
                       names=["original", f"{row['method']}/m{row['rank_multiple']}"])
        plan = {p["layer"]: p for p in row.get("plan", [])}
        for comparison in report.layers:
            layer_rows = []
            for timing in comparison.rows:
                entry = plan.get(timing.layer, {})
                ideal = entry["macs_before"] / entry["macs_after"] if entry.get("macs_after") else None
                layer_rows.append(dict(layer=timing.layer, op=timing.op_type, input_shape=list(timing.input_shape),
                                       groups=entry.get("groups"), rank=entry.get("rank"), shape=entry.get("shape"),
                                       original_us=timing.original_us, pair_us=timing.pair_us, speedup=timing.speedup,
                                       ideal=ideal, efficiency=timing.speedup / ideal if ideal else None))
            layer_results.append(dict(model=spec.name, method=row["method"], keep=row["keep"],
                                      rank_multiple=row["rank_multiple"], batch=comparison.batch_size,
                                      load=load_average(), rows=layer_rows, skipped=list(comparison.skipped)))
            slow = [r for r in layer_rows if r["speedup"] < 1.0]
            log(f"  per layer {spec.name} {row['method']}/m{row['rank_multiple']}: {len(layer_rows)} layers, "
                f"{len(slow)} not faster")
    return layer_results




def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)



# ------------------------------------------------------------------------------------------------
# Outputs: JSON (the record), CSV, plots, RESULTS.md


def merge_json(path: Path, rows: list[dict], skipped: list[dict], layers: list[dict], meta: dict) -> dict:
    """Merge new rows (by key) into ``path`` and return the merged record (not yet written)."""
    return merge_record(json.loads(path.read_text()) if path.exists() else {}, rows, skipped, layers, meta)


SAME_MODEL_FIELDS = ("onnx_sha256", "data_id")  # a row's model and data: its timings belong to them


def merge_record(record: dict, rows: list[dict], skipped: list[dict], layers: list[dict], meta: dict) -> dict:
    """Merge new rows (by key) into the sweep record ``record``: the merged record (a new one)."""
    data: dict[str, Any] = {"rows": [], "skipped": [], "per_layer": [], "runs": []}
    data.update(record)
    merged = {row_key(r): r for r in data["rows"]}
    for row in rows:
        old = merged.get(row_key(row), {})
        # a re-run without timing keeps the older timing figures only when it wrote the same model from the same
        # data (a rebuilt model's row kept the other model's timings: "a row never mixes two runs' timings")
        same = all(old.get(field) == row.get(field) for field in SAME_MODEL_FIELDS)
        merged[row_key(row)] = row if "ms_small" in row or "ms_small" not in old or not same else {**old, **row}
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




def current_data(data: dict) -> dict[str, str]:
    """Per model, the ``data_id`` (model file and validation data, :func:`onnx_alds.sweep.data_identity`) its
    figures are shown for: the one its latest full run recorded (a --quick run's only when no full run of
    the model recorded one), else the one most of its rows carry."""
    current: dict[str, str] = {}
    for run in sorted(data.get("runs", []), key=lambda run: not run.get("quick")):  # full runs last: they win
        current.update(run.get("data_ids") or {})
    for model in {row["model"] for row in data["rows"]} - set(current):
        ids = [row["data_id"] for row in data["rows"] if row["model"] == model and row.get("data_id")]
        if ids:
            current[model] = max(set(ids), key=ids.count)
    return current


def measured_on_other_data(data: dict) -> list[dict]:
    """The rows measured on other validation data or another model file than their model's
    :func:`current_data` (a --quick run's 100 samples beside a full run's, say): the tables and plots leave
    them out. Rows without a ``data_id`` predate it and are kept."""
    current = current_data(data)
    return [row for row in data["rows"] if row.get("data_id") and row["model"] in current
            and row["data_id"] != current[row["model"]]]


def shown_rows(data: dict) -> dict:
    """``data`` with only the rows measured on their model's :func:`current_data`."""
    other = {id(row) for row in measured_on_other_data(data)}
    return {**data, "rows": [row for row in data["rows"] if id(row) not in other]}


def write_plots(data: dict, out: Path) -> list[Path]:
    """Per model: quality vs MACs kept (one line per method and rank multiple); speedup vs MACs kept; rows
    measured on other data are left out (:func:`measured_on_other_data`)."""
    data = shown_rows(data)
    return _write_plots(data["rows"], out, method_order=METHODS, style=_style,
                        reference=lambda model, metric: original_reference(data, model, metric))


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


def render_results(data: dict, out: Path, results_md: Path, *, command: str, notes_md: Optional[Path] = None,
                   plots_dir: Optional[Path] = None, page: Optional[Path] = None) -> str:
    """RESULTS.md from the merged JSON: machine, command, per model quality and speed tables, plots (linked
    in ``out``; ``plots_dir``, default ``out``, is where they are now), written to ``results_md`` (its links
    are relative to ``page``, default ``results_md``: where it will be moved to). Rows measured on other data than
    their model's current data (:func:`measured_on_other_data`) are left out, and a line under the model's
    heading says how many."""
    other = measured_on_other_data(data)
    data = shown_rows(data)
    env = data.get("environment") or {}
    machine, versions = env.get("machine", {}), env.get("versions", {})
    home = (page or results_md).parent
    rel = os.path.relpath(out, home)
    lines = ["# Results: ALDS and baselines on the reference models", "",
             "Generated by `python tools/sweep.py --report` from "
             f"[`{rel}/sweep.json`]({rel}/sweep.json) (every figure; also [`sweep.csv`]({rel}/sweep.csv)). "
             "Do not edit the generated sections by hand; the discussion comes from "
             f"`{os.path.relpath(notes_md, home) if notes_md else 'docs/results/notes.md'}`.", "",
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
        left_out = [r for r in other if r["model"] == model]
        if left_out:
            ids = sorted({r["data_id"] for r in left_out})
            many = len(left_out) > 1
            lines += [f"{len(left_out)} row{'s' if many else ''} measured on other validation data or another model "
                      f"file (data_id {', '.join(ids)}; a --quick run's, say) {'are' if many else 'is'} left out of "
                      "these tables and plots; sweep.json and sweep.csv list them.", ""]
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
            if ((plots_dir or out) / name).exists():
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
    """sweep.json, sweep.csv, the plots (in ``out``, which exists) and ``results_md``, as one set: written
    into a temporary folder in ``out`` first, then renamed into place in one step that an interrupt (Ctrl-C,
    SIGTERM) waits for. An interrupt or a failure before it leaves ``out`` and ``results_md`` as they were,
    so the files there always belong together. Only the files this run writes are staged and landed, and the
    plots it owns that no row holds now (``<model>-quality.png``, ``<model>-speedup.png`` of a model in the
    record) removed; the user's other files in ``out`` (their own PNGs too) are never copied, moved or touched.
    A failure names the user's path (``out``'s file, ``results_md``), not the staging folder."""
    import shutil

    from onnx_alds.errors import OutputPathError, os_error_text
    from onnx_alds.signals import uninterrupted

    try:
        stage = Path(tempfile.mkdtemp(prefix=".sweep-", suffix=".tmp", dir=out))
    except OSError as exc:
        raise OutputPathError(f"--out '{out}': cannot write there: {os_error_text(exc)}") from None
    staged_md = stage / ".results-md.staged"  # (no name a plot or table of the sweep has)

    def users_path(name: Any) -> str:
        """The path the user knows for a file in the staging folder (or any other path as it is)."""
        if name is None:
            return ""
        path = Path(os.fsdecode(name))
        if path == staged_md and results_md is not None:
            return str(results_md)
        if path == stage:
            return str(out)
        if path.parent == stage:  # (write_json's temporary file stands for sweep.json)
            return str(out / ("sweep.json" if path.name == ".sweep.json.tmp" else path.name))
        return str(path)

    try:
        write_json(data, stage / "sweep.json")
        write_csv(data["rows"], stage / "sweep.csv")
        drawn = False
        if plots:
            import importlib.util

            if importlib.util.find_spec("matplotlib") is None:  # the [plots] extra, as onnx-alds sweep says
                print("plots: skipped (matplotlib is not installed: pip install 'onnx-alds[plots]')")
            else:
                write_plots(data, stage)
                drawn = True
        if results_md is not None:  # (plots not drawn now: those in out stay, and are linked)
            render_results(data, out, staged_md, command=command, notes_md=notes_md,
                           plots_dir=stage if drawn else out, page=results_md)
        files = sorted(path.name for path in stage.iterdir() if path.is_file() and path != staged_md)
        owned = {f"{model}-{kind}.png" for model in {row["model"] for row in data.get("rows", [])}
                 for kind in ("quality", "speedup")} if drawn else set()
        with uninterrupted():  # the whole set lands, or (interrupted before) none of it
            for name in files:
                os.replace(stage / name, out / name)
            for name in sorted(owned - set(files)):  # a model's stale plot: figures no row holds now
                (out / name).unlink(missing_ok=True)
            if results_md is not None:
                results_md.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(staged_md), str(results_md))  # (a rename unless on another file system)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        names = [Path(os.fsdecode(name)) for name in (exc.filename, exc.filename2) if name is not None]
        if not any(path == stage or stage in path.parents for path in names):
            raise  # (a file outside the staging folder: its own path is named already)
        where = users_path(exc.filename2) if exc.filename2 is not None else users_path(exc.filename)
        raise OutputPathError(f"cannot write '{where}': {exc.strerror or exc}; fix the path (its permissions, "
                              "free space) and run again") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--keeps", nargs="+", type=keep_ratio, default=list(DEFAULT_KEEPS))
    parser.add_argument("--rank-multiple", nargs="+", type=positive_int, default=list(DEFAULT_RANK_MULTIPLES),
                        dest="rank_multiples")
    parser.add_argument("--out", type=Path, default=None,
                        help="sweep.json, sweep.csv and the plots go here (default docs/results; with --quick "
                             "docs/results/quick, so that a smoke run leaves the published results alone)")
    parser.add_argument("--results-md", type=Path, default=None,
                        help="the generated results page (default docs/RESULTS.md; with --quick OUT/RESULTS.md)")
    parser.add_argument("--notes", type=Path, default=None,
                        help="markdown inserted into RESULTS.md after the machine section "
                             "(default: OUT/notes.md when it exists)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onnx-alds-sweep",
                        help="the sweep's own folder: compressed variants and one row file each; a later run "
                             "reuses every variant found there with the same inputs")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="where compress + validate run (onnx-alds sweep --engine); timing always runs here")
    parser.add_argument("--address", default=None, help="Ray cluster address (--engine ray)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="parallel workers (local default 1; ray default: the cluster's CPUs)")
    parser.add_argument("--threads", type=thread_count, default=2, help="ONNX Runtime threads for timing (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="100 eval samples, about 1 s per timed group; written to docs/results/quick unless --out")
    parser.add_argument("--bench-target-s", type=positive_float, default=None,
                        help="seconds per timed group (original + the variants of one budget at one batch size); "
                             "default 5 (1 with --quick)")
    parser.add_argument("--no-bench", action="store_true", help="compress and validate only")
    parser.add_argument("--bench-only", action="store_true",
                        help="time the variants again (computing those missing from --work first)")
    parser.add_argument("--per-layer", action="store_true",
                        help="also time " + ", ".join(PER_LAYER_METHODS) + " at keep 0.5 layer by layer")
    parser.add_argument("--no-plots", action="store_true", help="leave the PNG plots as they are")
    parser.add_argument("--report", action="store_true", help="only rewrite CSV, plots and RESULTS.md from the JSON")
    parser.add_argument("--merge-from", nargs="+", type=Path, default=None, metavar="JSON",
                        help="merge the rows of other sweep.json files (e.g. per-model runs made in parallel) "
                             "into OUT/sweep.json, then rewrite the outputs")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    if args.results_md is None:
        args.results_md = args.out / "RESULTS.md" if args.quick else ROOT / "docs" / "RESULTS.md"
    return args


def main(argv: Optional[Sequence[str]] = None, specs: Optional[dict[str, ModelSpec]] = None) -> int:
    args = parse_args(argv)
    command = "python tools/sweep.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out: Path = args.out
    check_output_folder(out, "--out")
    if args.no_bench and (args.bench_only or args.per_layer):
        raise OnnxAldsError(f"--no-bench with {'--bench-only' if args.bench_only else '--per-layer'}: the one says "
                            "time nothing, the other what to time; drop one of them")
    if args.notes is not None and not args.notes.is_file():
        raise InputDataError(f"--notes '{args.notes}' is not an existing file; give the markdown to insert into "
                             "RESULTS.md, or drop --notes (OUT/notes.md is read when it exists)")
    check_outputs(out, args.results_md)
    specs = specs or reference_specs(args.root, quick=args.quick)
    if not (args.report or args.merge_from):
        check_known(args.models, specs)
    if args.report and not args.merge_from and not (out / "sweep.json").is_file():
        raise InputDataError(f"--report: no '{out / 'sweep.json'}' to render; run the sweep first (without --report), "
                             "or give the --out of an earlier run")
    seen: list[Path] = []
    for source in args.merge_from or []:
        if same_file(source, out / "sweep.json"):
            raise InputDataError(f"--merge-from '{source}' is --out's own sweep.json (the record merged into); "
                                 "name only the other runs' sweep.json files")
        twin = next((earlier for earlier in seen if same_file(earlier, source)), None)
        if twin is not None:
            also = f" (also as '{twin}')" if str(twin) != str(source) else ""
            raise InputDataError(f"--merge-from names '{source}' twice{also}; name each file once")
        seen.append(source)
    merged = [(source, read_sweep_json(source)) for source in args.merge_from or []]  # every file read before writing
    engine = None
    if not (args.report or args.merge_from):
        check_output_folder(args.work, "--work")
        engine = make_engine(args.engine, workers=args.workers, address=args.address)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, specs, command, out, merged, engine)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed run leaves no empty --out behind
        raise


def check_outputs(out: Path, results_md: Optional[Path]) -> None:
    """Before any work: ``out`` and the folder of ``results_md`` can be written (a probe file is created and
    removed there, or in the nearest folder that exists), ``results_md`` is neither a folder nor a file the
    sweep writes in ``out``, and an existing ``out/sweep.json`` is a sweep record the run can merge into."""
    from onnx_alds.errors import OutputPathError

    if results_md is not None:
        if results_md.is_dir():
            raise OutputPathError(f"--results-md '{results_md}' is a folder; give the page's file name "
                                  f"(such as '{results_md / 'RESULTS.md'}')")
        for name in ("sweep.json", "sweep.csv"):
            if same_file(results_md, out / name):
                raise OutputPathError(f"--results-md '{results_md}' is the {name} this sweep writes in --out; "
                                      f"give another file (such as '{out / 'RESULTS.md'}')")
    for flag, folder in (("--out", out), ("--results-md", None if results_md is None else results_md.parent)):
        if folder is None:
            continue
        existing = Path(folder)
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        try:
            handle, probe = tempfile.mkstemp(prefix=".sweep-probe-", dir=existing)
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            where = f"'{folder}'" if existing == Path(folder) else f"'{folder}' (its folder '{existing}')"
            raise OutputPathError(f"{flag} {where} cannot be written ({exc.strerror or exc}); give a folder you "
                                  "may write to, or fix its permissions") from None
    record_path = out / "sweep.json"
    if record_path.exists():
        fix = "move it away (a new record is started) or give another --out"
        try:
            record = json.loads(record_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InputDataError(f"--out: '{record_path}' is not a readable sweep record ({reason}); {fix}") from None
        problem = record_problem(record, RECORD_CHECKS + (("runs", ()),))
        if problem:
            raise InputDataError(f"--out: '{record_path}' is not a sweep record ({problem}); {fix}")


def read_sweep_json(path: Path) -> dict:
    """The sweep record in ``path`` (a sweep.json); :class:`InputDataError` when it is not JSON or has no rows."""
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputDataError(f"--merge-from: '{path}' is not a JSON file ({exc}); give the sweep.json of a run") from None
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise InputDataError(f"--merge-from: '{path}' has no 'rows': it is not the sweep.json of a run")
    if not record["rows"]:
        raise InputDataError(f"--merge-from: '{path}' has no rows (an empty 'rows' list): nothing to merge")
    problem = record_problem(record)
    if problem:
        raise InputDataError(f"--merge-from: '{path}': {problem}: it is not the sweep.json of a run")
    return record


MERGE_KEYS = ("model", "method", "keep", "rank_multiple")  # what merge_json and the tables read of every row
# each list of a sweep record and the keys every entry of it needs
RECORD_CHECKS = (("rows", MERGE_KEYS), ("skipped", ("model", "method", "reason")), ("per_layer", MERGE_KEYS))


def record_problem(record: Any, checks: Sequence[tuple[str, Sequence[str]]] = RECORD_CHECKS) -> Optional[str]:
    """What makes ``record`` no sweep record (not an object, a list that is not one, its first bad entry), else
    None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for field, keys in checks:
        entries = record.get(field, [])
        if not isinstance(entries, list):
            return f"'{field}' is not a list"
        for index, entry in enumerate(entries):
            problem = _entry_problem(entry, keys)
            if problem:
                return f"{field}[{index}] {problem}"
    return None


def _entry_problem(entry: Any, keys: Sequence[str]) -> Optional[str]:
    """What is wrong with one row of a sweep record (None when nothing is)."""
    if not isinstance(entry, dict):
        return f"is not an object ({type(entry).__name__})"
    missing = [key for key in keys if key not in entry]
    if missing:
        return f"has no {', '.join(repr(key) for key in missing)}"
    for key in ("model", "method"):
        if key in keys and not isinstance(entry[key], str):
            return f"has a {key!r} that is not a string ({entry[key]!r})"
    if "keep" in keys and (isinstance(entry["keep"], bool) or not isinstance(entry["keep"], (int, float))):
        return f"has a 'keep' that is not a number ({entry['keep']!r})"
    if "rank_multiple" in keys and (isinstance(entry["rank_multiple"], bool)
                                    or not isinstance(entry["rank_multiple"], int)):
        return f"has a 'rank_multiple' that is not an integer ({entry['rank_multiple']!r})"
    return None


def _run(args: argparse.Namespace, specs: dict[str, ModelSpec], command: str, out: Path,
         merged: list[tuple[Path, dict]], engine) -> int:
    """The work of :func:`main`, once every flag and file has been checked and ``out`` exists."""
    notes_md = args.notes or (out / "notes.md")
    if args.merge_from or args.report:
        data = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").exists() else {}
        for source, other in merged:  # merged here, written with the rest (an interrupt leaves sweep.json as it was)
            data = merge_record(data, other["rows"], other.get("skipped", []), other.get("per_layer", []), {})
            data["runs"] = data["runs"][:-1] + other.get("runs", [])
            data["environment"] = other.get("environment", data.get("environment"))
        write_outputs(data, out, args.results_md, command, notes_md, plots=not args.no_plots)
        print(f"wrote {args.results_md}, {out}/sweep.csv" + ("" if args.no_plots else " and plots"))
        return 0
    chosen = []
    for name in args.models:
        spec = specs[name]
        if not spec.model.exists():
            print(f"skip {name}: no {spec.model} (build it: python -m models.build {name})", file=sys.stderr)
            continue
        chosen.append(spec)
    started = time.time()
    load_start = load_average()
    result = run_sweep([sweep_model(spec) for spec in chosen], args.methods, args.keeps, out=args.work,
                       rank_multiples=args.rank_multiples, engine=engine, bench=not args.no_bench,
                       rebench=args.bench_only, bench_threads=args.threads,
                       bench_target_s=args.bench_target_s if args.bench_target_s is not None else
                       (1.0 if args.quick else 5.0), plots=False, command=command)
    rows = []
    for row in result.rows:
        row = dict(row)
        if row.get("model_file"):
            row["variant"] = str(args.work / row["model_file"])
        rows.append(row)
    layers = []
    if args.per_layer and not args.no_bench:
        for spec in chosen:
            layers += per_layer_timings(spec, [r for r in rows if r["model"] == spec.name], threads=args.threads,
                                        quick=args.quick)
    meta = dict(command=command, started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
                seconds=time.time() - started, load_start=load_start, load_end=load_average(),
                quick=args.quick, bench=not args.no_bench, engine=result.run.get("engine"),
                timing=result.run.get("timing"), phases=result.run.get("phases"),
                computed=result.computed, reused=result.reused,
                data_ids={row["model"]: row["data_id"] for row in rows if row.get("data_id")})
    data = merge_json(out / "sweep.json", rows, result.skipped, layers, meta)
    data["environment"] = environment()
    write_outputs(data, out, args.results_md, command, notes_md, plots=not args.no_plots)
    print(f"done in {meta['seconds']:.0f} s: {len(rows)} rows ({result.computed} computed, {result.reused} reused "
          f"from {args.work}); wrote {out}/sweep.json, sweep.csv, {'' if args.no_plots else 'plots, '}"
          f"{args.results_md}")
    if result.crashed:
        first = result.crashed[0]
        print(f"error: {len(result.crashed)} variant(s) crashed (first: {first['variant_id']}: {first['error']}); "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the variants finished so far are kept in --work (the same command resumes)"))
