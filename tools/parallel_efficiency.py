"""Parallel efficiency of the sweep's compress + validate tasks and of sharded calibration, 1 → N workers.

Two measurements (docs/SWEEP.md, "Parallel efficiency"):

``calibration``: the calibration statistics of one model (``collect_statistics`` over an .npz set) with
Ray workers, ``--workers 1 2`` actors of one CPU and one ONNX Runtime thread each, on a local Ray instance
this script starts once (its start-up is not timed), ``--repeats`` times alternating; every result is
checked bit for bit against the in-process (no Ray) statistics. Per run it prints the wall time ``T``,
the wall-clock efficiency ``T(1)/(N·T(N))``, and the CPU-time replay ``C(1)/(N·max_w C_w(N))`` with
``C_w`` the summed CPU seconds of worker ``w``'s shards (the driver's own CPU time, reading the data and
summing, is printed beside it: it runs alongside the workers), plus a list-scheduling simulation at N = 2,
4, 8, 16 from the measured per-shard CPU times, also bounded by the driver's measured serial CPU time.

``sweep ONE/sweep.json MANY/sweep.json``: the same three figures for two ``onnx-alds sweep`` runs (1 and N
workers), from their run records (``phases.tasks_s``, the timeline's ``cpu_s`` per task).

    python tools/parallel_efficiency.py calibration --model models/cache/efficientnet-lite0/model.onnx \\
        --calibration models/cache/efficientnet-lite0/calibration.npz --batch 4 --shard-runs 1 --repeats 2
    python tools/parallel_efficiency.py calibration-json RUNS.json     # the figures again from --json
    python tools/parallel_efficiency.py sweep /tmp/eff/ray-w1/sweep.json /tmp/eff/ray-w2/sweep.json

Outputs go to stdout, and with ``--json FILE`` the raw runs (timelines included) to FILE.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tool import check_output_file  # noqa: E402
from onnx_alds.argtypes import positive_int  # noqa: E402
from onnx_alds.errors import InputDataError, OnnxAldsError  # noqa: E402


def load() -> float:
    return os.getloadavg()[0]


def simulate(durations: list[float], workers: int, per_worker: int, extra: float = 0.0, gap: float = 0.0,
             driver: float = 0.0) -> float:
    """Efficiency of greedy list scheduling (each free worker takes the next task) of ``workers·per_worker``
    tasks whose durations cycle through ``durations``, each worker's first task costing ``extra`` more and
    ``gap`` seconds between two tasks of a worker; serial time = the same work on one worker. ``driver``:
    seconds of serial driver work per task (reading and shipping the data, summing), which runs beside
    the workers: the parallel time is at least all of it."""
    count = workers * per_worker
    tasks = [durations[i % len(durations)] for i in range(count)]
    serial = sum(tasks) + extra + (count - 1) * gap
    free = [(0.0, w, True) for w in range(workers)]
    heapq.heapify(free)
    end = 0.0
    for duration in tasks:
        at, w, first = heapq.heappop(free)
        finish = at + duration + (extra if first else 0.0) + gap
        end = max(end, finish - gap)
        heapq.heappush(free, (finish, w, False))
    return serial / (workers * max(end, driver * count))


def per_worker(timeline: list[dict]) -> list[list[dict]]:
    tasks: dict = {}
    for task in sorted(timeline, key=lambda t: t["start_s"]):
        tasks.setdefault(task["worker"], []).append(task)
    return list(tasks.values())


def replay(one: list[dict], many: list[dict]) -> float:
    """CPU-time replay: the 1-worker run's total task CPU over N × the busiest worker's in the N-worker run."""
    groups = per_worker(many)
    return sum(t["cpu_s"] for t in one) / (len(groups) * max(sum(t["cpu_s"] for t in g) for g in groups))


def simulated(timeline: list[dict], driver: float = 0.0) -> dict[str, float]:
    groups = per_worker(timeline)
    later = [t["cpu_s"] for g in groups for t in g[1:]] or [t["cpu_s"] for g in groups for t in g]
    extra = statistics.mean(g[0]["cpu_s"] - statistics.median(t["cpu_s"] for t in g[1:]) for g in groups if len(g) > 1)
    gaps = [b["start_s"] - a["start_s"] - a["seconds"] for g in groups for a, b in zip(g, g[1:])]
    gap = max(0.0, statistics.median(gaps)) if gaps else 0.0
    return {f"N={n},{k}/worker": simulate(later, n, k, max(0.0, extra), gap, driver) for n in (2, 4, 8, 16)
            for k in (2, 4, 8)}


def read_record(path: str, keys: tuple[str, ...], what: str) -> dict:
    """The JSON object in ``path``; :class:`InputDataError` when it is not JSON or lacks one of ``keys``."""
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputDataError(f"'{path}' is not a JSON file ({exc}); give {what}") from None
    missing = [key for key in keys if not isinstance(record, dict) or key not in record]
    if missing:
        raise InputDataError(f"'{path}' has no '{missing[0]}': it is not {what}")
    return record


def calibration(args: argparse.Namespace) -> dict:
    try:
        import ray
    except ImportError:
        raise OnnxAldsError("the calibration measurement runs Ray workers, and Ray is not installed: "
                            "pip install 'onnx-alds[ray]'") from None
    import numpy as np
    import onnx

    from onnx_alds.calibrate import CalibrationLimits, calibration_workers, collect_statistics
    from onnx_alds.inputs import load_inputs
    from onnx_alds.layers import find_layers

    model = onnx.load(args.model)
    data = load_inputs(model, npz=args.calibration, limit=args.limit)
    layers = [layer for layer in find_layers(model, {}) if layer.compressible and layer.subgraph is None]
    limits = CalibrationLimits(shard_runs=args.shard_runs, progress=False)

    def collect():
        return collect_statistics(model, layers, data, batch_size=args.batch, limits=limits, notes=[])

    reference = collect()  # in this process, no Ray: the statistics every run must reproduce
    ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    runs = []
    try:
        for repeat in range(args.repeats):
            for workers in args.workers:
                start_load = load()
                with calibration_workers(workers, engine="ray") as record:
                    wall, cpu = time.perf_counter(), time.process_time()
                    got = collect()
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                same = all(np.array_equal(got[n].second_moment, reference[n].second_moment)
                           and np.array_equal(got[n].mean, reference[n].mean) for n in reference)
                runs.append(dict(repeat=repeat, workers=workers, wall_s=wall, driver_cpu_s=cpu, identical=same,
                                 load_start=start_load, load_end=load(), timeline=record.timeline))
                print(f"repeat {repeat} workers {workers}: {wall:.2f} s wall, shards {len(record.timeline)}, "
                      f"task CPU {sum(t['cpu_s'] for t in record.timeline):.2f} s, driver CPU {cpu:.2f} s, "
                      f"identical to in-process: {same}, load {start_load:.1f}-{load():.1f}", flush=True)
    finally:
        ray.shutdown()
    report(runs, "wall_s", "calibration")
    return dict(model=args.model, calibration=args.calibration, batch=args.batch, shard_runs=args.shard_runs,
                layers=len(layers), samples=len(data), runs=runs)


def report(runs: list[dict], wall_key: str, what: str) -> None:
    ones = [r for r in runs if r["workers"] == 1]
    for run in runs:
        if run["workers"] == 1:
            continue
        one = next(o for o in ones if o["repeat"] == run["repeat"])
        n = run["workers"]
        wall = one[wall_key] / (n * run[wall_key])
        cpu = replay(one["timeline"], run["timeline"])
        print(f"{what} repeat {run['repeat']}: N={n} wall-clock {wall:.2f}, CPU-time replay {cpu:.2f} "
              f"(load {run['load_start']:.1f}-{run['load_end']:.1f})")
        groups = per_worker(run["timeline"])
        if all(len(group) < 2 for group in groups):  # a worker's first shard carries its start-up: no later one
            print(f"   simulation skipped: it needs a worker that ran 2 shards or more (this run: "
                  f"{len(run['timeline'])} shard{'s' if len(run['timeline']) != 1 else ''} on {len(groups)} "
                  f"worker{'s' if len(groups) != 1 else ''})"
                  + ("; more samples or a smaller --batch make more shards" if what == "calibration" else ""))
            continue
        for label, driver in (("", 0.0), (" with the driver's serial work", run.get("driver_cpu_s", 0.0))):
            if label and not driver:
                continue
            sims = simulated(run["timeline"], driver / len(run["timeline"]))
            print(f"   simulated{label}:")
            for workers in (2, 4, 8, 16):
                print(f"     N={workers}: " + ", ".join(f"{k} tasks/worker {sims[f'N={workers},{k}/worker']:.2f}"
                                                    for k in (2, 4, 8)))


def sweep(args: argparse.Namespace) -> dict:
    runs = []
    what = ("the run record of an onnx-alds sweep (the sweep.json of `onnx-alds sweep --out DIR`; tools/sweep.py "
            "writes one in its --work folder)")
    for index, (one_path, many_path) in enumerate(zip(args.records[::2], args.records[1::2])):
        for path, workers in ((one_path, 1), (many_path, None)):
            record = read_record(path, ("runs",), what)
            run = record["runs"][-1] if record["runs"] else {}
            if not run.get("timeline") or "tasks_s" not in (run.get("phases") or {}):
                raise InputDataError(f"the last run in '{path}' has no task timeline: it is not {what}")
            runs.append(dict(repeat=index, workers=workers or len(per_worker(run["timeline"])),
                             tasks_s=run["phases"]["tasks_s"], timeline=run["timeline"],
                             load_start=run.get("load_start", float("nan")), load_end=run.get("load_end", float("nan"))))
        if runs[-1]["workers"] < 2:  # nothing to compare with the 1-worker run: the pair would print nothing
            raise InputDataError(f"the last run in '{many_path}' ran its tasks on 1 worker: give pairs ONE/sweep.json "
                                 "MANY/sweep.json, the second from a sweep on more than one worker")
    report(runs, "tasks_s", "sweep")
    return dict(runs=runs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    cal = sub.add_parser("calibration", help="sharded calibration statistics on 1 and N Ray actors")
    cal.add_argument("--model", required=True)
    cal.add_argument("--calibration", required=True, help=".npz calibration set")
    cal.add_argument("--limit", type=positive_int, default=None, help="use N samples, spread evenly over the set")
    cal.add_argument("--batch", type=positive_int, default=16)
    cal.add_argument("--shard-runs", type=positive_int, default=4)
    cal.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2])
    cal.add_argument("--repeats", type=positive_int, default=2)
    cal.add_argument("--json", type=Path, default=None)
    again = sub.add_parser("calibration-json", help="the figures again from a --json file of 'calibration'")
    again.add_argument("file")
    sw = sub.add_parser("sweep", help="from the run records of a 1-worker and an N-worker onnx-alds sweep")
    sw.add_argument("records", nargs="+", help="ONE/sweep.json MANY/sweep.json [more pairs]")
    sw.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.what == "calibration" and 1 not in args.workers:
        parser.error("--workers must include 1 (the baseline)")
    if args.what == "calibration" and max(args.workers) < 2:
        parser.error("--workers must include a count above 1 (1 alone is the baseline, compared with nothing)")
    if args.what == "sweep" and len(args.records) % 2:
        parser.error(f"give the run records in pairs, ONE/sweep.json MANY/sweep.json; got {len(args.records)} files")
    if args.what == "calibration-json":
        report(read_record(args.file, ("runs",), "a --json file of 'calibration'")["runs"], "wall_s", "calibration")
        return 0
    check_output_file(args.json, "--json")  # now, not after the runs
    result = calibration(args) if args.what == "calibration" else sweep(args)
    result["load_average_at_end"] = load()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the figures printed above are all that was measured (no --json file was written)"))
