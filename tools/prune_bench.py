"""Low-rank vs hidden-channel pruning vs both, side by side, on the reference models (docs/PRUNING.md).

For every model (``models/cache/<name>/`` with ``model.onnx``, ``calibration.npz`` and ``eval.npz``) and
every ``--keep`` value (fraction of MACs kept), compress with each variant, all data-aware on the same
calibration inputs:

- ``low-rank``: data-aware ALDS (``compress(..., calibration=cal)``, the default error measure);
- ``prune``: hidden widths alone (``prune="only"``: greedy channel selection + least-squares refit);
- ``combined``: widths of the prunable blocks and low-rank factors of the other layers in one min-max
  (``prune=True``);
- ``damage``: low-rank by the output-damage allocator (``method="damage"``);
- ``damage+prune``: widths and low-rank options in one output-damage integer program
  (``method="damage", prune="combined"``);

and measure on the held-out inputs (never the calibration ones):

- classifiers: top-1 agreement with the original on ``eval.npz`` (and on ``agreement.npz`` when present);
- sentence embeddings (MiniLM): the fraction of held-out sentences whose nearest neighbour (cosine, self
  excluded) among the others is unchanged, and the mean cosine to the original embedding;
- ``--time KEEP``: at that budget, every variant's whole-model CPU latency against the original
  (:func:`onnx_alds.bench.bench`, interleaved, median), next to the ideal speedup the MACs allow
  (``1 / achieved``); the load average is printed with it (the box is shared).

    python tools/prune_bench.py [--models efficientnet-lite0 minilm] [--keep 0.7 0.5]
        [--variants low-rank prune combined damage damage+prune] [--rank-multiple 16] [--time 0.5]
        [--calibration calibration|pool] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from accuracy_bench import embedding_scores, outputs  # noqa: E402
from data_aware_bench import _load_npz  # noqa: E402
from onnx_alds import compress  # noqa: E402
from onnx_alds.inputs import InputSet  # noqa: E402

VARIANTS = {
    "low-rank": dict(),
    "prune": dict(prune="only"),
    "combined": dict(prune="combined"),
    "damage": dict(method="damage"),
    "damage+prune": dict(method="damage", prune="combined"),
}


def held_out_sets(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    sets = {}
    for name in ("eval", "agreement"):
        path = folder / f"{name}.npz"
        if path.exists():
            arrays = _load_npz(path)
            arrays.pop("labels", None)
            sets[name] = arrays
    return sets


def scores(kind: str, references: dict, model: onnx.ModelProto, sets: dict) -> dict[str, float]:
    result = {}
    for name, arrays in sets.items():
        out = outputs(model, arrays)
        if kind == "embedding":
            result[f"nn_{name}"], result[f"cos_{name}"] = embedding_scores(references[name], out)
        else:
            result[f"agree_{name}"] = float(np.mean(out.argmax(axis=1) == references[name].argmax(axis=1)))
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["efficientnet-lite0", "minilm"])
    parser.add_argument("--keep", nargs="*", type=float, default=[0.7, 0.5])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rank-multiple", type=int, default=16)
    parser.add_argument("--time", type=float, default=None, metavar="KEEP",
                        help="time the whole models compressed at this keep (must be one of --keep)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model (bench)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for timing (default: cores)")
    parser.add_argument("--save", default=None, metavar="DIR", help="also write each compressed model there")
    parser.add_argument("--calibration", default="calibration", metavar="NAME",
                        help="calibration inputs: models/cache/<model>/NAME.npz (default calibration; 'pool' is the "
                             "larger unlabeled pool of `python -m models.pools`, disjoint from the held-out sets)")
    parser.add_argument("--json", default=None, help="write all rows to this file")
    args = parser.parse_args(argv)

    rows = []
    for name in args.models:
        folder = ROOT / "models" / "cache" / name
        if not (folder / "model.onnx").exists():
            print(f"skip {name}: no models/cache/{name}/model.onnx", file=sys.stderr)
            continue
        info = json.loads((folder / "info.json").read_text()) if (folder / "info.json").exists() else {}
        kind = "embedding" if "embedding" in info.get("task", "") else "classifier"
        model = onnx.load(str(folder / "model.onnx"))
        cal = _load_npz(folder / f"{args.calibration}.npz")
        cal.pop("labels", None)
        calibration = InputSet(cal, source=f"{args.calibration}.npz ({len(next(iter(cal.values())))} samples)")
        sets = held_out_sets(folder)
        references = {key: outputs(model, arrays) for key, arrays in sets.items()}
        counts = ", ".join(f"{key} {len(next(iter(a.values())))}" for key, a in sets.items())
        print(f"\n## {name} ({kind}): held out {counts}; {len(calibration)} calibration inputs; "
              f"rank multiple {args.rank_multiple}", flush=True)
        timed = []
        # MACs counted at one sample of the calibration inputs' shape (MiniLM: 64 tokens)
        shapes = {key: (1,) + tuple(value.shape[1:]) for key, value in cal.items()}
        for keep in args.keep:
            for variant in args.variants:
                started = time.perf_counter()
                try:
                    result = compress(model, keep_flops=keep, calibration=calibration, input_shapes=shapes,
                                      rank_multiple=args.rank_multiple, **VARIANTS[variant])
                except Exception as exc:  # a bench keeps going; the failure is printed in the table
                    print(f"{variant:<10} {keep:>5.2f} failed: {str(exc).splitlines()[0][:200]}", flush=True)
                    rows.append(dict(model=name, variant=variant, keep=keep, error=str(exc)))
                    continue
                seconds = time.perf_counter() - started
                report = result.report
                row = dict(model=name, variant=variant, keep=keep, achieved=report.achieved, seconds=seconds,
                           max_error=report.max_error,
                           factorized=sum(1 for layer in report.layers if layer.groups),
                           pruned=[(b.name, b.width_before, b.width_after) for b in report.pruned],
                           **scores(kind, references, result.model, sets))
                rows.append(row)
                figures = "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith(("agree", "nn", "cos")))
                narrowed = sum(1 for _, before, after in row["pruned"] if after < before)
                print(f"{variant:<10} keep {keep:.2f} achieved {report.achieved:.3f}  {figures}  "
                      f"factorized {row['factorized']}, blocks narrowed {narrowed}/{len(row['pruned'])}, "
                      f"max error {report.max_error:.3f}, {seconds:.0f} s", flush=True)
                if args.save:
                    Path(args.save).mkdir(parents=True, exist_ok=True)
                    onnx.save(result.model, str(Path(args.save) / f"{name}-{variant}-{keep}.onnx"))
                if args.time is not None and abs(keep - args.time) < 1e-9:
                    timed.append((variant, result.model, report.achieved))
        if timed:
            from onnx_alds.bench import bench

            load = os.getloadavg()
            report = bench([model] + [m for _, m, _ in timed], provider="cpu", batch_sizes=(1,), runs=args.runs,
                           threads=args.threads, input_shapes=shapes, names=["original"] + [v for v, _, _ in timed])
            after = os.getloadavg()
            print(f"timing at keep {args.time} (CPU, batch 1, {report.threads} threads, load average "
                  f"{load[0]:.1f} before, {after[0]:.1f} after):")
            original_ms = report.timings[0].median_ms
            print(f"  original: median {original_ms:.2f} ms")
            for (variant, _, achieved), timing in zip(timed, report.timings[1:]):
                ideal = 1.0 / achieved
                print(f"  {variant:<10} median {timing.median_ms:.2f} ms, speedup {timing.speedup:.2f}x, "
                      f"MAC ideal {ideal:.2f}x, {timing.speedup / ideal:.0%} of it", flush=True)
                for row in rows:
                    if row.get("model") == name and row.get("variant") == variant and row.get("keep") == args.time:
                        row.update(median_ms=timing.median_ms, original_ms=original_ms, speedup=timing.speedup,
                                   ideal_speedup=ideal, load_average=[load[0], after[0]])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
