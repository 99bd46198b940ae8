"""What the latency tables cost, and what ``--keep-latency`` buys, on ResNet-50 and the MNIST ResNet.

    python tools/bench_latency.py [--models resnet50 mnist] [--keep 0.5] [--repeats 3] [--json FILE]
                                  [--provider cpu|cuda] [--batch NAME=N ...]

Per model, on ``--provider`` (CPU: the physical cores as intra-op threads by default), at its
deployment batch (ResNet-50: 1, MNIST ResNet: 32; ``--batch NAME=N`` changes one, and may be given
twice for one model to measure two batches):

1. **table cost, cold**: ``make_plan(keep_latency=K, order="auto", rank_multiple=16)`` with an empty
   latency cache (a fresh temporary folder): the seconds the latency tables took (the report's
   ``latency tables`` step; spectra and allocation are not in it), how many single-layer models were
   timed, in how many interleaved loops;
2. **table cost, warm**: the same again with the cache it filled (a second run measures nothing);
3. the plan applied (``apply_plan``), and ``compress(keep_flops=K)`` with the same rank multiple, in
   spatial-first order (the default) and pointwise-first order, for comparison;
4. **whole-model speedup**: the original and the three compressed models timed with
   ``onnx_alds.bench`` (interleaved, ``--runs`` rounds, ``--repeats`` times; the median over repeats
   of the speedup of medians, and of the speedup of the fastest rounds, with each repeat's figures:
   on a loaded machine the fastest rounds are the ones other processes did not slow down);
5. **layers slower than dense**: in the plan (each factorized layer's table time against its dense
   time: none by construction), and re-measured by ``onnx_alds.bench.compare_layers`` (every pair of
   the applied model against its original node, extracted and timed again, interleaved).

The load average is recorded before and after each step: on a shared 2-core machine timings move
with what else runs. The MNIST model is compressed data-aware with its 48 bundled calibration digits
and its accuracy on the 500 bundled test digits is printed next to the speed (speed does not depend
on the weights' values). ResNet-50 (random weights, speed only) is built into models/cache/resnet50
when missing (``python -m models.build resnet50``, onnx + numpy only).

A model that fails is recorded (``failures`` in the JSON) and the others go on; the exit status is 1 when
any failed (``--provider cuda`` without a GPU: every one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import platform
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
from onnx_alds.argtypes import positive_int, thread_count  # noqa: E402
from onnx_alds.errors import OnnxAldsError  # noqa: E402

MODELS = {
    "resnet50": {"path": ROOT / "models/cache/resnet50/model.onnx", "batch": 1},
    "mnist": {"path": ROOT / "onnx_alds/data/mnist_resnet.onnx", "batch": 32,
              "calibration": ROOT / "onnx_alds/data/mnist_calibration.npz",
              "eval": ROOT / "onnx_alds/data/mnist_eval.npz"},
}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def ensure_resnet50(path: Path) -> None:
    if path.exists():
        return
    import onnx

    from models.resnet50 import build_resnet50

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_resnet50(), str(path))


def accuracy(model, eval_path: Path) -> float:
    import onnxruntime as ort

    data = np.load(eval_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString() if hasattr(model, "SerializeToString") else str(model),
                                   options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: data[name][i:i + 100]})[0]
                             for i in range(0, len(data[name]), 100)])
    return float(np.mean(np.argmax(logits, axis=1) == data["labels"]))


def provider_agreement(models: dict, provider: str, batch: int) -> dict:
    """Relative L2 difference (||a - b|| / ||b||, every output) of each model's outputs on ``provider``
    against the same model on the CPU, on one seeded random batch: the provider computes what the CPU
    computes (CUDA convs may use TF32, so the original model's figure is the scale to read the others by)."""
    from onnx_alds.bench import timing_feeds
    from onnx_alds.model_io import load_model
    from onnx_alds.runtime import make_session

    figures = {}
    for label, model in models.items():
        model = load_model(model)
        feeds = timing_feeds(model, batch, None)
        device = make_session(model, provider).run(None, feeds)
        host = make_session(model, "cpu").run(None, feeds)
        figures[label] = max(float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                                   / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-30))
                             for a, b in zip(device, host))
    return figures


def step(record: dict, name: str, function):
    """Run ``function`` and record its wall time and the load before and after."""
    before = load()
    tick = time.perf_counter()
    value = function()
    record[name] = {"wall_s": round(time.perf_counter() - tick, 2), "load_before": before, "load_after": load()}
    print(f"  {name}: {record[name]['wall_s']:.1f} s (load {before} -> {record[name]['load_after']})", flush=True)
    return value


def bench_model(name: str, keep: float, batch: int, runs: int, repeats: int, threads, layer_runs: int,
                provider: str = "cpu") -> dict:
    from onnx_alds import compress
    from onnx_alds.bench import bench, compare_layers, provider_options_for
    from onnx_alds.errors import BudgetError
    from onnx_alds.inputs import load_inputs
    from onnx_alds.model_io import load_model
    from onnx_alds.options import SpeedOptions
    from onnx_alds.plan import apply_plan, make_plan

    spec = MODELS[name]
    path = spec["path"]
    if name == "resnet50":
        ensure_resnet50(path)
    calibration = None
    if spec.get("calibration"):
        calibration = load_inputs(load_model(path), npz=spec["calibration"])
    record: dict = {"model": name, "path": str(path.relative_to(ROOT)), "batch": batch, "keep": keep,
                    "provider": provider,
                    "calibration": None if calibration is None else str(spec["calibration"].relative_to(ROOT))}
    print(f"{name}: batch {batch}, keep {keep}, provider {provider}", flush=True)
    common = dict(rank_multiple=16, calibration=calibration)
    with tempfile.TemporaryDirectory(prefix="onnx-alds-latency-") as cache:
        speed = SpeedOptions(provider=provider, batch=batch, threads=threads, cache_dir=cache)
        keep_latency = keep
        tick = time.perf_counter()
        try:
            cold = step(record, "plan (cold cache)", lambda: make_plan(str(path), keep_latency=keep, order="auto",
                                                                       speed=speed, **common))
        except BudgetError as exc:  # e.g. launch-bound layers on a GPU: plan at the smallest reachable ratio
            reachable = re.search(r"smallest reachable ratio is ([0-9.]+)", str(exc))
            if reachable is None:
                raise
            record["keep_latency_unreachable"] = str(exc)
            record["unreachable_attempt_s"] = round(time.perf_counter() - tick, 2)  # the cold tables were built here
            keep_latency = math.ceil(float(reachable.group(1)) * 100) / 100 + 0.01
            print(f"  {exc}\n  planning at --keep-latency {keep_latency} instead", flush=True)
            cold = step(record, "plan (cold cache)", lambda: make_plan(str(path), keep_latency=keep_latency,
                                                                       order="auto", speed=speed, **common))
        record["keep_latency"] = keep_latency
        warm = step(record, "plan (warm cache)", lambda: make_plan(str(path), keep_latency=record["keep_latency"],
                                                                   order="auto", speed=speed, **common))
    for label, plan in (("cold", cold), ("warm", warm)):
        latency = plan.report.latency
        if label == "cold" and "unreachable_attempt_s" in record:
            latency = dict(latency, table_seconds=record["unreachable_attempt_s"])  # tables + allocation
        record[f"table_{label}"] = {"seconds": round(latency["table_seconds"], 3), "timings": latency["timings"],
                                    "loops": latency["loops"], "layers": latency["layers_timed"],
                                    "layer_shapes_measured": latency["layer_shapes_measured"],
                                    "layer_shapes_cached": latency["layer_shapes_cached"]}
    record["predicted"] = {k: cold.report.latency.get(k) for k in ("model_us", "predicted_us", "predicted_speedup",
                                                                   "rest_us", "whole_model_check", "whole_model_note",
                                                                   "measured_speedup")}
    record["plan_warm_equals_cold"] = [d.__dict__ for d in cold.layers] == [d.__dict__ for d in warm.layers]
    applied = step(record, "apply", lambda: apply_plan(str(path), cold, calibration=calibration))
    variants = {"keep-latency (auto order)": applied}
    with tempfile.TemporaryDirectory(prefix="onnx-alds-latency-") as cache:
        auto_speed = SpeedOptions(provider=provider, batch=batch, threads=threads, cache_dir=cache)
        for label, order, speed_options in (("keep-flops", "spatial-first", None),
                                            ("keep-flops pointwise-first", "pointwise-first", None),
                                            ("keep-flops auto order", "auto", auto_speed)):
            try:
                variants[label] = step(record, f"compress {label}", lambda: compress(
                    str(path), keep_flops=keep, order=order, speed=speed_options, **common))
            except BudgetError as exc:  # auto order drops every option slower than dense: may not reach keep
                print(f"  {label}: {exc}", flush=True)
                record.setdefault("variant_errors", {})[label] = str(exc)
    record["variants"] = {}
    for label, result in variants.items():
        report = result.report
        record["variants"][label] = {"macs_kept": report.macs_after / report.macs_before,
                                     "params_kept": report.params_after / report.params_before,
                                     "max_error": report.max_error,
                                     "factorized": sum(1 for row in report.layers if row.groups)}
        if spec.get("eval"):
            record["variants"][label]["accuracy"] = accuracy(result.model, spec["eval"])
    if spec.get("eval"):
        record["original_accuracy"] = accuracy(path, spec["eval"])
    if provider != "cpu":
        record["provider_vs_cpu_rel_l2"] = step(record, f"{provider} vs cpu outputs", lambda: provider_agreement(
            {"original": str(path), **{label: result.model for label, result in variants.items()}}, provider, batch))
        print(f"  {provider} vs cpu, relative L2 of the outputs: {record['provider_vs_cpu_rel_l2']}", flush=True)
    speedups: dict[str, list[float]] = {label: [] for label in variants}
    fastest: dict[str, list[float]] = {label: [] for label in variants}
    for repeat in range(repeats):
        report = step(record, f"bench {repeat + 1}", lambda: bench([str(path)] + [r.model for r in variants.values()],
                                                                   provider=provider, batch_sizes=(batch,), runs=runs,
                                                                   threads=threads,
                                                                   names=["original"] + list(variants)))
        for index, label in enumerate(variants, start=1):
            speedups[label].append(round(report.speedup(index, batch), 3))
            fastest[label].append(round(report.timing(0, batch).min_ms / report.timing(index, batch).min_ms, 3))
        record.setdefault("original_ms", []).append(round(report.timing(0, batch).median_ms, 3))
        record["machine"] = report.machine
        record["versions"] = report.versions
    for label in variants:
        record["variants"][label]["speedups"] = speedups[label]
        record["variants"][label]["speedup"] = statistics.median(speedups[label])
        record["variants"][label]["speedups_min"] = fastest[label]
        record["variants"][label]["speedup_min"] = statistics.median(fastest[label])
    planned_slower = [row.name for row in applied.report.layers
                      if row.groups and row.time_us is not None and row.time_us >= row.time_dense_us]
    record["planned_layers_slower"] = planned_slower
    rows = step(record, "per-layer re-measure", lambda: compare_layers(
        load_model(path), applied.model, model_name="keep-latency", provider=provider, batch=batch, input_shapes=None,
        threads=threads, provider_options=provider_options_for(provider), warmup=3, runs=layer_runs))
    record["remeasured_layers"] = len(rows.rows)
    record["remeasured_slower"] = [(row.layer, round(row.speedup, 3)) for row in rows.rows if row.speedup < 1.0]
    record["remeasured_pairs"] = [(row.layer, round(row.original_us, 1), round(row.pair_us, 1)) for row in rows.rows]
    return record


def print_summary(records: list[dict]) -> None:
    labels = list(dict.fromkeys(label for r in records for label in r["variants"]))
    print("\n| model | batch | table cold (s, timings) | table warm (s) | predicted (whole-model check) | " +
          " | ".join(labels) + " | planned slower | re-measured slower |")
    print("|---" * (7 + len(labels)) + "|")
    for r in records:
        cells = [f"{v['speedup']:.2f}x ({', '.join(f'{s:.2f}' for s in v['speedups'])}); fastest runs "
                 f"{v['speedup_min']:.2f}x ({', '.join(f'{s:.2f}' for s in v['speedups_min'])}); "
                 f"{v['speedup'] * v['macs_kept']:.0%} of ideal 1/MACs kept ({1 / v['macs_kept']:.2f}x)"
                 + (f", acc {v['accuracy']:.3f}" if "accuracy" in v else "") if v else "unreachable"
                 for v in (r["variants"].get(label) for label in labels)]
        rounds = r["predicted"].get("whole_model_check") or []
        check = "; ".join(f"budget {x['budget']:.3f}: predicted {1 / x['predicted']:.2f}x, measured "
                          f"{1 / x['measured']:.2f}x" for x in rounds)
        print(f"| {r['model']} | {r['batch']} (keep-latency {r.get('keep_latency', r['keep'])}) | {r['table_cold']['seconds']:.1f} ({r['table_cold']['timings']}) | "
              f"{r['table_warm']['seconds']:.2f} | {r['predicted']['predicted_speedup']:.2f}x ({check}) | "
              + " | ".join(cells)
              + f" | {len(r['planned_layers_slower'])} | {len(r['remeasured_slower'])} of {r['remeasured_layers']} |")


def model_batch(text: str) -> tuple[str, int]:
    """``NAME=N`` of ``--batch``: a model of :data:`MODELS` and a batch size ≥ 1."""
    name, equals, value = text.partition("=")
    if name not in MODELS or not equals:
        raise argparse.ArgumentTypeError(f"got '{text}'; give NAME=N with NAME one of {', '.join(sorted(MODELS))}, "
                                         "e.g. mnist=32")
    return name, positive_int(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet50", "mnist"])
    parser.add_argument("--keep", type=keep_ratio, default=0.5)
    parser.add_argument("--batch", action="append", type=model_batch, default=[], metavar="NAME=N",
                        help="batch of one model")
    parser.add_argument("--runs", type=positive_int, default=40, help="timed rounds per whole-model bench")
    parser.add_argument("--repeats", type=positive_int, default=3, help="whole-model benches (median speedup reported)")
    parser.add_argument("--layer-runs", type=positive_int, default=15, help="rounds per re-measured layer pair")
    parser.add_argument("--threads", type=thread_count, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu",
                        help="ONNX Runtime provider of the tables, the plans and every timing")
    parser.add_argument("--json", type=Path, help="write every figure as JSON (rewritten after each model)")
    args = parser.parse_args()
    check_output_file(args.json, "--json")  # now, not after the first model
    unselected = [f"--batch {name}={batch}" for name, batch in args.batch if name not in args.models]
    if unselected:
        raise OnnxAldsError(f"{', '.join(unselected)}: {'that model is' if len(unselected) == 1 else 'those models are'} "
                            f"not in --models ({' '.join(args.models)}); add it to --models or drop the --batch")
    batches: dict[str, list[int]] = {}
    for name, batch in args.batch:
        batches.setdefault(name, []).append(batch)
    started = time.perf_counter()
    run = {"command": "python tools/bench_latency.py " + " ".join(sys.argv[1:]), "load_start": load(),
           "platform": platform.platform(), "records": []}
    for name in args.models:
        for batch in batches.get(name, [MODELS[name]["batch"]]):
            try:
                run["records"].append(bench_model(name, args.keep, batch, args.runs, args.repeats, args.threads,
                                                  args.layer_runs, provider=args.provider))
            except Exception as exc:  # one model's failure is a figure too: keep the others' results
                print(f"{name} at batch {batch}: {type(exc).__name__}: {exc}", flush=True)
                run.setdefault("failures", []).append({"model": name, "batch": batch,
                                                       "error": f"{type(exc).__name__}: {exc}"})
            if args.json:
                args.json.write_text(json.dumps(run, indent=1, default=str) + "\n")
    run["load_end"] = load()
    run["wall_s"] = round(time.perf_counter() - started, 1)
    if run["records"]:
        print_summary(run["records"])
    print(f"\nload average {run['load_start']} at start, {run['load_end']} at end; {run['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(run, indent=1, default=str) + "\n")
    failures = run.get("failures", [])
    if failures:
        attempted = len(run["records"]) + len(failures)
        print(f"error: {len(failures)} of {attempted} model runs failed ("
              + "; ".join(f"{f['model']} at batch {f['batch']}: {f['error'].splitlines()[0]}" for f in failures)[:400]
              + ")"
              + (f"; {args.json} holds the figures and the failures" if args.json else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the --json file (if given) holds the models finished before"))
