"""How long full ALDS takes on a ResNet-50-shaped model, step by step, and its peak memory.

    python tools/bench_compress_speed.py [--repeats 3] [--keep-flops 0.5] [--json out.json]

Builds the ResNet-50 v1.5 topology with random weights (models/resnet50.py, onnx.helper only),
saves it, then in a fresh process per repeat: load the file, compress (calibration-free ALDS, all
SVDs included), save the result. Prints the time split (load, spectra = SVDs, allocation, rewrite,
save), the wall time and the peak resident memory of that process; the median over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(model_path: str, output_path: str, keep_flops: float) -> dict:
    """Runs in the child process: one timed compression from file to file."""
    import resource

    import onnx_alds
    from onnx_alds.model_io import load_model, save_model

    started = time.perf_counter()
    model = load_model(model_path)
    load_file = time.perf_counter() - started
    result = onnx_alds.compress(model, keep_flops=keep_flops, input_shapes={"input": (1, 3, 224, 224)})
    tick = time.perf_counter()
    save_model(result.model, output_path, protect=[model_path])
    save = time.perf_counter() - tick
    wall = time.perf_counter() - started
    steps = {"load file": load_file, **{k if k != "load" else "analysis": v for k, v in result.report.seconds.items()},
             "save": save}
    return {"steps": steps, "wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "achieved": result.report.achieved, "max_error": result.report.max_error,
            "factorized": sum(1 for layer in result.report.layers if layer.groups)}


def main() -> int:
    from _tool import check_output_file, keep_ratio  # (also puts onnx_alds on the path)
    from onnx_alds.argtypes import positive_int
    from onnx_alds.errors import OnnxAldsError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--keep-flops", type=keep_ratio, default=0.5)
    parser.add_argument("--json", type=Path, help="write every run as JSON")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "OUT", "KEEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child[0], args.child[1], float(args.child[2]))))
        return 0
    check_output_file(args.json, "--json")

    sys.path.insert(0, str(ROOT))
    import onnx

    from models.resnet50 import build_resnet50

    with tempfile.TemporaryDirectory() as folder:
        model_path = os.path.join(folder, "resnet50.onnx")
        model = build_resnet50(seed=0)
        onnx.save(model, model_path)
        convs = sum(1 for node in model.graph.node if node.op_type == "Conv")
        weights = sum(int(__import__("numpy").prod(init.dims)) for init in model.graph.initializer)
        print(f"ResNet-50 (random weights): {convs} Conv, {weights / 1e6:.2f} M weights; "
              f"keep-flops {args.keep_flops}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
        runs = []
        for repeat in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--child", model_path, os.path.join(folder, "out.onnx"),
                                  str(args.keep_flops)], capture_output=True, text=True)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
                raise OnnxAldsError(f"run {repeat + 1}: the compress child failed: {last}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {repeat + 1}: wall {runs[-1]['wall_s']:.2f} s, peak {runs[-1]['peak_rss_mb']:.0f} MB")
    steps = {name: statistics.median(run["steps"][name] for run in runs) for name in runs[0]["steps"]}
    print("\nmedian time split: " + ", ".join(f"{name} {value:.2f} s" for name, value in steps.items()))
    print(f"median wall {statistics.median(r['wall_s'] for r in runs):.2f} s, "
          f"peak memory {max(r['peak_rss_mb'] for r in runs):.0f} MB, achieved keep-flops {runs[0]['achieved']:.4f}, "
          f"{runs[0]['factorized']} layers factorized, max error {runs[0]['max_error']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "median_steps": steps}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the runs printed above are all that was measured (no --json file was written)"))
