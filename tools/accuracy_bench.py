"""Accuracy without retraining: every method side by side on the reference models, in one run.

For each model present, each calibration size, each ``--keep-flops`` and each method, compress and
measure on held-out inputs (never the calibration ones):

- classifiers (EfficientNet-Lite0, the MNIST ResNet): ``agree`` = top-1 agreement with the original
  (EfficientNet-Lite0: the 300 crops of ``agreement.npz``; MNIST: the 500 test digits), ``acc`` = top-1
  accuracy on true labels where the held-out file has them;
- sentence embedders (all-MiniLM-L6-v2, ``eval.npz``, 300 sentences): ``nn`` = fraction of sentences
  whose nearest neighbour among the others is unchanged, ``cos`` = mean cosine of each compressed
  embedding to the original one.

Also printed: the achieved MAC ratio, the compression's seconds (and of it, the damage tables'), and
the predicted relative output error where the method predicts it (``damage``) and the measured one on
the held-out inputs (``out err`` = ‖ŷ − y‖ / ‖y‖ over all held-out outputs).

Methods (``--methods``): ``svd+da`` (data-aware uniform rank: the floor no method may fall below),
``alds+da`` (data-aware ALDS: whitened, shrinkage, refit, frobenius error; the data-aware default),
``damage`` (least measured output damage, :mod:`onnx_alds.damage`), and any of them followed by
``+seq`` (sequential calibration), ``+both`` (both-factor compensation, one round), ``+affine``
(per-channel affine correction), ``+bias`` (bias correction), ``/g4`` (damage measured for g ≤ 4), ``/pw``
(k×k convs pointwise-first, ``--order pointwise-first``);
``alds`` and ``svd`` are data-free (no calibration: ``rand`` is then the outputs' mean relative change on
the few random inputs compress measures, :func:`onnx_alds.checks.random_output_change`, the figure its
warning of a broken model reads).

    python tools/accuracy_bench.py [--models efficientnet-lite0 minilm mnist-resnet] [--keep 0.8 0.7]
        [--methods svd+da alds+da damage damage+both damage+affine] [--calibration-sizes 48]
        [--rank-multiple 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _tool import check_known, check_measured, check_not_empty, check_output_file, keep_ratio  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx_alds import compress  # noqa: E402
from onnx_alds.argtypes import positive_int  # noqa: E402
from onnx_alds.errors import OnnxAldsError  # noqa: E402
from onnx_alds.inputs import InputSet, spread_indices  # noqa: E402
from onnx_alds.runtime import make_session  # noqa: E402

BASES = {"svd+da": dict(method="svd"), "alds+da": dict(method="alds"), "damage": dict(method="damage"),
         "alds": dict(method="alds", data_free=True), "svd": dict(method="svd", data_free=True)}
MODIFIERS = {"+seq": dict(sequential=True), "+both": dict(both_factors=1), "+affine": dict(affine_correction=True),
             "+bias": dict(bias_correction=True), "/g4": dict(damage_max_groups=4, max_groups=4),
             "/pw": dict(order="pointwise-first")}
DEFAULT_KEEP = {"efficientnet-lite0": [0.8, 0.7], "minilm": [0.7, 0.5], "mnist-resnet": [0.5]}  # the models known


def method_keywords(name: str) -> dict:
    """``damage+both/g4`` → compress keywords (one-line error for an unknown part)."""
    for base in sorted(BASES, key=len, reverse=True):
        if name.startswith(base):
            keywords, rest = dict(BASES[base]), name[len(base):]
            break
    else:
        raise SystemExit(f"error: unknown method '{name}'; start with one of {', '.join(BASES)}")
    while rest:
        for modifier in MODIFIERS:
            if rest.startswith(modifier):
                keywords.update(MODIFIERS[modifier])
                rest = rest[len(modifier):]
                break
        else:
            raise SystemExit(f"error: unknown modifier '{rest}' in '{name}'; use {' '.join(MODIFIERS)}")
    if keywords["method"] != "damage":  # /g4 on alds: the groups searched (compress refuses damage_* without damage)
        keywords.pop("damage_max_groups", None)
    return keywords


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def find_models(names: list[str]) -> list[dict]:
    """The named models (one of :data:`DEFAULT_KEEP`) present; one not built is skipped with a line saying how
    to build it."""
    check_known(names, DEFAULT_KEEP)
    cache, data = ROOT / "models" / "cache", ROOT / "onnx_alds" / "data"
    found = []
    for name in names:
        if name == "mnist-resnet":
            found.append(dict(name=name, model=data / "mnist_resnet.onnx", calibration=data / "mnist_calibration.npz",
                              held_out=data / "mnist_eval.npz", kind="classifier", true_labels=True))
            continue
        folder = cache / name
        if not (folder / "model.onnx").exists():
            print(f"skip {name}: no models/cache/{name}/model.onnx (build it: python -m models.build {name})",
                  file=sys.stderr)
            continue
        if name == "minilm":
            found.append(dict(name=name, model=folder / "model.onnx", calibration=folder / "calibration.npz",
                              held_out=folder / "eval.npz", kind="embedding", true_labels=False))
        else:
            held = folder / "agreement.npz" if (folder / "agreement.npz").exists() else folder / "eval.npz"
            found.append(dict(name=name, model=folder / "model.onnx", calibration=folder / "calibration.npz",
                              held_out=held, kind="classifier", true_labels=held.name == "eval.npz"))
    return found


def calibration_inputs(entry: dict, pool: bool) -> dict[str, np.ndarray]:
    """The model's calibration arrays (no labels), with ``pool.npz`` appended when ``pool``; a model without
    that file is an error (``--pool`` would change nothing)."""
    arrays = _load(entry["calibration"])
    arrays.pop("labels", None)
    if pool:
        path = entry["calibration"].parent / "pool.npz"
        if not path.is_file():
            raise OnnxAldsError(f"--pool: {entry['name']} has no {path.relative_to(ROOT)} (python -m models.pools "
                                "makes them for the models of models/cache); drop --pool or that model")
        extra = _load(path)
        arrays = {k: np.concatenate([v, extra[k]]) for k, v in arrays.items()}
    return arrays


def outputs(model: onnx.ModelProto, arrays: dict[str, np.ndarray], batch: int = 50) -> np.ndarray:
    session = make_session(model, "cpu")
    names = [i.name for i in session.get_inputs()]
    count = arrays[names[0]].shape[0]
    parts = [session.run(None, {n: arrays[n][s:s + batch] for n in names})[0] for s in range(0, count, batch)]
    return np.concatenate(parts).reshape(count, -1).astype(np.float64)


def embedding_scores(reference: np.ndarray, compressed: np.ndarray) -> tuple[float, float]:
    """(fraction of nearest neighbours unchanged, mean cosine to the original embedding)."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    ref, new = unit(reference), unit(compressed)
    cos = float(np.mean(np.sum(ref * new, axis=1)))

    def neighbours(x):
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return float(np.mean(neighbours(ref) == neighbours(new))), cos


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["efficientnet-lite0", "minilm", "mnist-resnet"])
    parser.add_argument("--keep", nargs="*", type=keep_ratio, default=None,
                        help="keep-flops values (default per model: EfficientNet 0.8 0.7, MiniLM 0.7 0.5, MNIST 0.5)")
    parser.add_argument("--methods", nargs="*", default=["svd+da", "alds+da", "damage"])
    parser.add_argument("--calibration-sizes", nargs="*", type=positive_int, default=[None],
                        help="use N calibration inputs, spread evenly over them (default: all)")
    parser.add_argument("--pool", action="store_true",
                        help="append models/cache/<name>/pool.npz (more unlabeled inputs, disjoint from the held-out "
                             "ones; python -m models.pools) after calibration.npz, for --calibration-sizes beyond 48")
    parser.add_argument("--rank-multiple", type=positive_int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write all rows to this file")
    args = parser.parse_args(argv)
    check_not_empty(models=args.models, keep=args.keep, methods=args.methods,
                    calibration_sizes=args.calibration_sizes)
    specs = {name: method_keywords(name) for name in args.methods}
    check_output_file(args.json, "--json")  # now, not after the whole run
    entries = find_models(args.models)
    calibrations = [calibration_inputs(entry, args.pool) for entry in entries]
    for entry, cal_all in zip(entries, calibrations):  # a size no model has would be skipped: refuse it now
        available = len(next(iter(cal_all.values())))
        beyond = [size for size in args.calibration_sizes if size is not None and size > available]
        if beyond:
            raise OnnxAldsError(f"--calibration-sizes {' '.join(map(str, beyond))}: {entry['name']} has only "
                                f"{available} calibration inputs" + ("" if args.pool else
                                                                     " (--pool adds models/cache/<name>/pool.npz)"))

    rows = []
    started_all = time.perf_counter()
    for entry, cal_all in zip(entries, calibrations):
        model = onnx.load(str(entry["model"]))
        held = _load(entry["held_out"])
        labels = held.pop("labels", None)
        reference = outputs(model, held)
        count = len(reference)
        base_acc = (float(np.mean(reference.argmax(1) == labels))
                    if entry["true_labels"] and labels is not None else None)
        available = len(next(iter(cal_all.values())))
        shapes = {name: (1, *array.shape[1:]) for name, array in cal_all.items()}  # MACs counted at batch 1
        print(f"\n## {entry['name']}: {count} held-out inputs ({entry['held_out'].name}), {available} calibration "
              f"inputs available; original accuracy {'-' if base_acc is None else f'{base_acc:.3f}'}; "
              f"rank multiple {args.rank_multiple}", flush=True)
        scores = ("nn", "cos") if entry["kind"] == "embedding" else ("agree", "acc")
        print(f"{'method':<22} {'cal':>4} {'keep':>5} {'achieved':>8} {scores[0]:>6} {scores[1]:>6} "
              f"{'pred err':>8} {'out err':>8} {'rand':>6} {'total s':>8} {'damage s':>8}")
        for size in args.calibration_sizes:
            cal = {k: v[spread_indices(len(v), size)] for k, v in cal_all.items()} if size else cal_all
            used = len(next(iter(cal.values())))
            calibration = InputSet(cal, source=f"{entry['calibration'].name} ({used} samples)")
            for keep in args.keep or DEFAULT_KEEP.get(entry["name"], [0.7, 0.5]):
                for name, spec in specs.items():
                    spec = dict(spec)
                    data_free = spec.pop("data_free", False)
                    if data_free and size != args.calibration_sizes[0]:
                        continue  # (no calibration: once per budget)
                    tick = time.perf_counter()
                    try:
                        result = compress(model, keep_flops=keep, calibration=None if data_free else calibration,
                                          rank_multiple=args.rank_multiple, input_shapes=shapes, **spec)
                    except Exception as exc:  # a bench keeps going; the failure is printed in the table
                        print(f"{name:<22} {used:>4} {keep:>5.2f} failed: {str(exc).splitlines()[0]}", flush=True)
                        rows.append(dict(model=entry["name"], method=name, keep=keep, calibration=used,
                                         error=str(exc)))
                        continue
                    total = time.perf_counter() - tick
                    new = outputs(result.model, held)
                    if entry["kind"] == "embedding":
                        first, second = embedding_scores(reference, new)
                    else:
                        first = float(np.mean(new.argmax(1) == reference.argmax(1)))
                        second = None if base_acc is None else float(np.mean(new.argmax(1) == labels))
                    report = result.report
                    out_err = float(np.linalg.norm(new - reference) / np.linalg.norm(reference))
                    damage_s = report.seconds.get("damage tables")
                    used_here = 0 if data_free else used
                    row = dict(model=entry["name"], method=name, keep=keep, calibration=used_here,
                               achieved=report.achieved, score=first, score2=second, score_names=scores,
                               predicted_output_error=report.predicted_output_error, output_error=out_err,
                               random_output_change=report.random_output_change, warnings=list(report.warnings),
                               total_seconds=total,
                               damage_seconds=damage_s, seconds=report.seconds, notes=list(report.notes),
                               plan=[(r.name, r.groups, r.rank) for r in report.layers if r.groups])
                    rows.append(row)
                    pred, moved = report.predicted_output_error, report.random_output_change
                    print(f"{name:<22} {used_here:>4} {keep:>5.2f} {report.achieved:>8.3f} {first:>6.3f} "
                          f"{'-' if second is None else f'{second:.3f}':>6} "
                          f"{'-' if pred is None else f'{pred:.3f}':>8} {out_err:>8.3f} "
                          f"{'-' if moved is None else f'{moved:.3f}':>6} {total:>8.1f} "
                          f"{'-' if damage_s is None else f'{damage_s:.1f}':>8}", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwhole run {time.perf_counter() - started_all:.0f} s, process max RSS {rss:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return check_measured(rows)


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the rows printed above are all that was measured (no --json file was written)"))
