"""Data-free vs data-aware compression, side by side, on the reference models.

For every model found (``models/cache/<name>/`` with ``model.onnx`` and ``calibration.npz``, else the
bundled demo asset in ``onnx_alds/data/``) and every ``--keep-flops`` value, compress with each variant
and measure on held-out inputs (never the calibration ones):

- ``agree``: top-1 agreement with the original model;
- ``acc``: top-1 accuracy where the held-out file has ``labels`` that are true labels;
- the compression's calibration time (statistics, plus the sequential passes) and its peak memory
  (``tracemalloc`` peak of Python/numpy allocations during ``compress``; the process's max RSS is
  printed once at the end, since ONNX Runtime's own buffers are not traced).

Variants (error measure ``spectral`` unless named): ``alds`` (data-free), ``svd+da`` (data-aware uniform
rank, whitened + refit), ``alds+w`` (data-aware ALDS, whitened only), ``alds+da`` (whitened + refit),
``alds+da+seq`` (plus sequential calibration), ``alds+da+seq+bias`` (plus bias correction) and
``alds+da/sqrt-g`` / ``alds+da/frob`` (data-aware ALDS with the √g or the relative-Frobenius error, which
on whitened spectra is the relative output RMS error), ``alds+da/frob+seq``, ``alds+da/frob-shrink`` (without
the moment shrinkage) and ``alds+da/frob/pw`` (pointwise-first pairs). ``--variants`` picks a subset.

    python tools/data_aware_bench.py [--models mnist-resnet efficientnet-lite0] [--keep 0.7 0.5 0.3]
        [--variants ...] [--eval-limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _tool import check_known, check_measured, check_not_empty, check_output_file, keep_ratio  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from models import BUILDERS  # noqa: E402
from onnx_alds import compress  # noqa: E402
from onnx_alds.argtypes import positive_int  # noqa: E402
from onnx_alds.inputs import InputSet, spread_indices  # noqa: E402
from onnx_alds.runtime import make_session  # noqa: E402

VARIANTS = {
    "alds": dict(method="alds"),
    "alds/sqrt-g": dict(method="alds", error_measure="spectral-sqrt-g"),
    "alds/frob": dict(method="alds", error_measure="frobenius"),
    "svd+da": dict(method="svd", data=True),
    "alds+w": dict(method="alds", data=True, refit=False, error_measure="spectral"),
    "alds+da": dict(method="alds", data=True, error_measure="spectral"),
    "alds+da+seq": dict(method="alds", data=True, sequential=True, error_measure="spectral"),
    "alds+da+seq+bias": dict(method="alds", data=True, sequential=True, bias_correction=True,
                             error_measure="spectral"),
    "alds+da/sqrt-g": dict(method="alds", data=True, error_measure="spectral-sqrt-g"),
    "alds+da/frob": dict(method="alds", data=True, error_measure="frobenius"),
    "alds+da/frob+seq": dict(method="alds", data=True, error_measure="frobenius", sequential=True),
    "alds+da+sens": dict(method="alds", data=True, sensitivity=True, error_measure="spectral"),
    "alds+da/frob+sens": dict(method="alds", data=True, error_measure="frobenius", sensitivity=True),
    "alds+da/frob-shrink": dict(method="alds", data=True, error_measure="frobenius", shrinkage=False),
    "alds+da/frob/pw": dict(method="alds", data=True, error_measure="frobenius", order="pointwise-first"),
}


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def find_models(names: Optional[list[str]]) -> list[dict]:
    """The reference models present: model, calibration arrays, held-out arrays (+ labels kind). A name that is
    no reference model (``models.BUILDERS``) is an error; one not built is skipped with its build command."""
    check_known(names or [], BUILDERS)
    found = []
    cache = ROOT / "models" / "cache"
    candidates = names or (sorted(p.name for p in cache.iterdir() if (p / "model.onnx").exists()) if cache.exists() else [])
    for name in candidates:
        folder = cache / name
        if not (folder / "model.onnx").exists() or not (folder / "calibration.npz").exists():
            print(f"skip {name}: no models/cache/{name}/model.onnx + calibration.npz (build it: python -m models.build "
                  f"{name})", file=sys.stderr)
            continue
        held = folder / "agreement.npz" if (folder / "agreement.npz").exists() else folder / "eval.npz"
        found.append(dict(name=name, model=folder / "model.onnx", calibration=folder / "calibration.npz",
                          held_out=held, true_labels=held.name == "eval.npz"))
    if not found and not names:
        data = ROOT / "onnx_alds" / "data"
        if (data / "mnist_resnet.onnx").exists():
            found.append(dict(name="mnist-resnet (bundled demo asset)", model=data / "mnist_resnet.onnx",
                              calibration=data / "mnist_calibration.npz", held_out=data / "mnist_eval.npz",
                              true_labels=True))
    return found


def outputs(model: onnx.ModelProto, arrays: dict[str, np.ndarray], batch: int = 50) -> np.ndarray:
    """The first graph output for every sample, flattened per sample (``count × k``)."""
    session = make_session(model, "cpu")
    names = [i.name for i in session.get_inputs()]
    count = arrays[names[0]].shape[0]
    parts = [session.run(None, {n: arrays[n][s:s + batch] for n in names})[0] for s in range(0, count, batch)]
    return np.concatenate(parts).reshape(count, -1)


def predictions(model: onnx.ModelProto, arrays: dict[str, np.ndarray], batch: int = 50) -> np.ndarray:
    return outputs(model, arrays, batch).argmax(axis=1)


def spread(arrays: dict[str, np.ndarray], limit: Optional[int]) -> dict[str, np.ndarray]:
    """``limit`` samples of every array, spread evenly over the set (a class-sorted file's first samples
    would be one class); all of them when ``limit`` is None."""
    if limit is None:
        return arrays
    return {k: v[spread_indices(len(v), limit)] for k, v in arrays.items()}


def run_variant(model: onnx.ModelProto, calibration: InputSet, keep: float, spec: dict) -> tuple:
    kwargs = {k: v for k, v in spec.items() if k != "data"}
    if spec.get("data"):
        kwargs["calibration"] = calibration
    tracemalloc.start()
    started = time.perf_counter()
    result = compress(model, keep_flops=keep, **kwargs)
    total = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, total, peak


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="names under models/cache (default: all present)")
    parser.add_argument("--keep", nargs="*", type=keep_ratio, default=[0.7, 0.5, 0.3])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--eval-limit", type=positive_int, default=None,
                        help="use N held-out inputs, spread evenly over the set")
    parser.add_argument("--calibration-limit", type=positive_int, default=None,
                        help="use N calibration inputs, spread evenly over the set")
    parser.add_argument("--json", type=Path, default=None, help="write all rows to this file")
    args = parser.parse_args(argv)
    check_not_empty(models=args.models, keep=args.keep, variants=args.variants)
    check_output_file(args.json, "--json")  # now, not after the whole run

    rows = []
    for entry in find_models(args.models):
        model = onnx.load(str(entry["model"]))
        cal = spread(_load_npz(entry["calibration"]), args.calibration_limit)
        held = spread(_load_npz(entry["held_out"]), args.eval_limit)
        labels = held.pop("labels", None)
        cal.pop("labels", None)
        calibration = InputSet(cal, source=f"{entry['calibration'].name} ({len(next(iter(cal.values())))} samples)")
        reference = predictions(model, held)
        count = len(reference)
        base_acc = None if labels is None or not entry["true_labels"] else float(np.mean(reference == labels))
        print(f"\n## {entry['name']}: {count} held-out inputs ({entry['held_out'].name}), "
              f"{len(calibration)} calibration inputs; original accuracy "
              f"{'-' if base_acc is None else f'{base_acc:.3f}'}", flush=True)
        print(f"{'variant':<18} {'keep':>5} {'achieved':>8} {'agree':>6} {'acc':>6} {'calib s':>8} {'total s':>8} {'peak MiB':>8}")
        for keep in args.keep:
            for name in args.variants:
                try:
                    result, total, peak = run_variant(model, calibration, keep, VARIANTS[name])
                except Exception as exc:  # a bench keeps going; the failure is printed in the table
                    print(f"{name:<18} {keep:>5.2f} failed: {str(exc).splitlines()[0]}", flush=True)
                    rows.append(dict(model=entry["name"], variant=name, keep=keep, error=str(exc)))
                    continue
                predicted = predictions(result.model, held)
                agree = float(np.mean(predicted == reference))
                acc = None if base_acc is None else float(np.mean(predicted == labels))
                seconds = result.report.seconds
                calib = seconds.get("calibration", 0.0) + seconds.get("sequential", 0.0)
                row = dict(model=entry["name"], variant=name, keep=keep, achieved=result.report.achieved,
                           agreement=agree, accuracy=acc, calibration_seconds=calib, total_seconds=total,
                           peak_traced_bytes=peak, held_out=count, calibration_samples=len(calibration),
                           max_error=result.report.max_error,
                           plan=[(r.name, r.groups, r.rank) for r in result.report.layers if r.groups])
                rows.append(row)
                print(f"{name:<18} {keep:>5.2f} {row['achieved']:>8.3f} {agree:>6.3f} "
                      f"{'-' if acc is None else f'{acc:.3f}':>6} {calib:>8.2f} {total:>8.2f} {peak / 2**20:>8.1f}",
                      flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess max RSS: {rss:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return check_measured(rows)


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the rows printed above are all that was measured (no --json file was written)"))
