"""Accuracy at the same measured speedup: a MACs budget against a latency budget (docs/LATENCY.md).

    python tools/equal_speed_accuracy.py [--models mnist efficientnet-lite0] [--keep-flops 0.5]
                                         [--runs 40] [--repeats 3] [--json FILE]

Per model, on the CPU at its deployment batch (MNIST ResNet: 32, EfficientNet-Lite0: 1), data-aware on
its calibration inputs, rank multiple 16:

1. ``compress(keep_flops=K, order="auto")`` and its whole-model speedup ``S`` measured against the
   original (:func:`onnx_alds.bench.bench`, interleaved rounds, median of ``--repeats`` benches);
2. ``compress(keep_latency=1/S, order="auto")``: a latency budget asked for the very speedup the MACs
   budget measured (the whole-model check moves its budget until the measured ratio meets it), and its
   speedup measured the same way, in the same benches as the first; where ``1/S`` is below what the
   latency tables reach, the smallest reachable ratio instead (said in the output and the record's
   ``note``: that row is not at the same speed);
3. the quality of both on held-out inputs: MNIST accuracy on its 500 bundled test digits,
   EfficientNet-Lite0 top-1 agreement with the original on its 300 held-out crops.

The issue's target: at the same measured speedup the latency budget is never less accurate. Timings
move with what else runs: the load average is recorded with every bench.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _tool import check_output_file, keep_ratio  # noqa: E402
import numpy as np  # noqa: E402
from onnx_alds.argtypes import positive_int  # noqa: E402

REACHABLE = re.compile(r"cannot be reached: the smallest reachable ratio is (\d+(?:\.\d+)?)")  # latency.py's message
MODELS = {
    "mnist": dict(path=ROOT / "onnx_alds/data/mnist_resnet.onnx", batch=32,
                  calibration=ROOT / "onnx_alds/data/mnist_calibration.npz",
                  held_out=ROOT / "onnx_alds/data/mnist_eval.npz", labels=True),
    "efficientnet-lite0": dict(path=ROOT / "models/cache/efficientnet-lite0/model.onnx", batch=1,
                               calibration=ROOT / "models/cache/efficientnet-lite0/calibration.npz",
                               held_out=ROOT / "models/cache/efficientnet-lite0/agreement.npz", labels=False),
}


def quality(model, spec: dict, reference: np.ndarray) -> float:
    """Accuracy against the true labels (MNIST) or top-1 agreement with the original's predictions."""
    from accuracy_bench import outputs

    with np.load(spec["held_out"]) as data:
        arrays = {key: data[key] for key in data.files}
    labels = arrays.pop("labels")
    predicted = outputs(model, arrays).argmax(axis=1)
    return float(np.mean(predicted == (labels if spec["labels"] else reference)))


def measure(name: str, keep_flops: float, runs: int, repeats: int) -> dict:
    """The record of one model; when ``1 / S`` is below the smallest ``--keep-latency`` the latency tables
    reach, the latency budget is that smallest ratio instead, and the record's ``note`` says so."""
    import onnx

    from accuracy_bench import outputs
    from onnx_alds import compress
    from onnx_alds.bench import bench
    from onnx_alds.errors import BudgetError
    from onnx_alds.inputs import load_inputs
    from onnx_alds.model_io import load_model
    from onnx_alds.options import SpeedOptions

    spec = MODELS[name]
    original = load_model(spec["path"])
    calibration = load_inputs(original, npz=spec["calibration"])
    with np.load(spec["held_out"]) as data:
        arrays = {key: data[key] for key in data.files if key != "labels"}
    reference = outputs(onnx.load(str(spec["path"])), arrays).argmax(axis=1)
    record: dict = {"model": name, "batch": spec["batch"], "keep_flops": keep_flops}
    common = dict(calibration=calibration, rank_multiple=16, order="auto")

    def speedups(models: list) -> list[float]:
        figures = []
        for _ in range(repeats):
            report = bench([str(spec["path"])] + models, batch_sizes=(spec["batch"],), runs=runs,
                           names=["original"] + [f"m{i}" for i in range(len(models))])
            figures.append([round(report.speedup(i + 1, spec["batch"]), 3) for i in range(len(models))])
            record.setdefault("load", []).append(round(os.getloadavg()[0], 2))
        return [statistics.median(f[i] for f in figures) for i in range(len(models))]

    with tempfile.TemporaryDirectory(prefix="onnx-alds-equal-speed-") as cache:
        speed = SpeedOptions(batch=spec["batch"], cache_dir=cache)
        tick = time.perf_counter()
        flops = compress(spec["path"], keep_flops=keep_flops, speed=speed, **common)
        record["flops_seconds"] = round(time.perf_counter() - tick, 1)
        (flops_speedup,) = speedups([flops.model])
        asked = round(1 / flops_speedup, 3)
        tick = time.perf_counter()
        try:
            latency = compress(spec["path"], keep_latency=asked, speed=speed, **common)
            keep_latency = asked
        except BudgetError as exc:  # the tables cannot reach that speedup: ask for the most they can
            reachable = REACHABLE.search(str(exc))
            if reachable is None:  # not a table limit (every measured plan ran slower): nothing to fall back to
                raise
            keep_latency = float(reachable.group(1))
            record["keep_latency_asked"] = asked
            record["note"] = (f"--keep-latency {asked} (1 / the MACs budget's measured speedup) is below what the "
                              f"latency tables reach; used the smallest reachable, {keep_latency}: the latency "
                              "budget's model is timed slower than the MACs budget's, not at the same speed")
            print(f"{name}: {record['note']}", flush=True)
            latency = compress(spec["path"], keep_latency=keep_latency, speed=speed, **common)
        record["latency_seconds"] = round(time.perf_counter() - tick, 1)
    both = speedups([flops.model, latency.model])
    record["keep_latency"] = keep_latency
    record["macs_budget"] = {"speedup_alone": flops_speedup, "speedup": both[0], "macs_kept": flops.report.macs_after
                             / flops.report.macs_before, "quality": quality(flops.model, spec, reference)}
    record["latency_budget"] = {"speedup": both[1], "macs_kept": latency.report.macs_after / latency.report.macs_before,
                                "quality": quality(latency.model, spec, reference),
                                "whole_model_check": latency.report.latency.get("whole_model_check")}
    print(json.dumps(record, default=str), flush=True)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["mnist", "efficientnet-lite0"])
    parser.add_argument("--keep-flops", type=keep_ratio, default=0.5)
    parser.add_argument("--runs", type=positive_int, default=40, help="timed rounds per bench")
    parser.add_argument("--repeats", type=positive_int, default=3, help="benches per comparison (median speedup)")
    parser.add_argument("--json", type=Path, help="write the records as JSON")
    args = parser.parse_args()
    check_output_file(args.json, "--json")  # now, not after the whole run
    run = {"command": "python tools/equal_speed_accuracy.py " + " ".join(sys.argv[1:]),
           "load_start": round(os.getloadavg()[0], 2), "records": []}
    for name in args.models:
        run["records"].append(measure(name, args.keep_flops, args.runs, args.repeats))
    run["load_end"] = round(os.getloadavg()[0], 2)
    print("\n| model | batch | MACs budget: keep-flops, speedup, quality | latency budget: keep-latency, speedup, "
          "MACs kept, quality |\n|---|---|---|---|")
    for r in run["records"]:
        m, t = r["macs_budget"], r["latency_budget"]
        asked = f" (asked {r['keep_latency_asked']}: unreachable)" if "keep_latency_asked" in r else ""
        print(f"| {r['model']} | {r['batch']} | {r['keep_flops']}, {m['speedup']:.2f}x, {m['quality']:.3f} | "
              f"{r['keep_latency']}{asked}, {t['speedup']:.2f}x, {t['macs_kept']:.2f}, {t['quality']:.3f} |")
    for r in run["records"]:
        if r.get("note"):
            print(f"\n{r['model']}: {r['note']}")
    if args.json:
        args.json.write_text(json.dumps(run, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the records printed above are all that was measured (no --json file was "
                                 "written)"))
