"""Where a model's time goes in ONNX Runtime (CPU): median kernel time of every node, from its profiler.

The session runs at full optimization (the same as ``onnx-alds bench``), so node names are those of the
optimized graph (ONNX Runtime's blocked-layout convs end in ``_nchwc``; fused activations disappear into
their conv). Inputs are random: ``--batch`` samples, other dynamic dims from ``--dim``.

    python tools/profile_nodes.py MODEL.onnx [MODEL2.onnx ...] [--batch 32] [--runs 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _tool import run_tool  # noqa: E402  (first: an interrupt while numpy loads is one line, as in run_tool)
import numpy as np  # noqa: E402
from onnx_alds.argtypes import positive_int, thread_count  # noqa: E402
from onnx_alds.errors import OnnxAldsError  # noqa: E402
from onnx_alds.inputs import random_inputs  # noqa: E402
from onnx_alds.model_io import load_model, parse_input_shapes  # noqa: E402


def profile(path: Path, *, batch: int, runs: int, threads: int, dims: list[str]) -> list[tuple[str, str, float]]:
    """(node name, op type, median µs) per node, in the order the profiler first saw them."""
    import onnxruntime as ort

    model = load_model(path)
    try:
        feed = random_inputs(model, batch, input_shapes=parse_input_shapes(dims)).arrays
    except OnnxAldsError as exc:  # onnx_alds names its own flag: this tool's is --dim
        exc.args = tuple(a.replace("--input-shape", "--dim") if isinstance(a, str) else a for a in exc.args)
        raise
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    folder = tempfile.mkdtemp(prefix="onnx-alds-profile-")
    try:
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    times: dict[tuple[str, str], list[float]] = collections.OrderedDict()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            key = (event["name"][:-len("_kernel_time")], event["args"].get("op_name", ""))
            times.setdefault(key, []).append(float(event["dur"]))
    warm = max(1, runs // 10)  # the first runs include allocations
    return [(name, op, float(np.median(values[warm:] or values))) for (name, op), values in times.items()]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--runs", type=positive_int, default=100)
    parser.add_argument("--threads", type=thread_count, default=2)
    parser.add_argument("--dim", action="append", default=[], metavar="NAME:DIMS",
                        help="shape of a dynamic input, as --input-shape of onnx-alds")
    args = parser.parse_args(argv)
    for path in args.models:
        rows = profile(path, batch=args.batch, runs=args.runs, threads=args.threads, dims=args.dim)
        total = sum(us for _, _, us in rows) or 1.0
        print(f"\n## {path} (batch {args.batch}, {args.threads} threads, median of {args.runs} runs)")
        for name, op, us in rows:
            print(f"{us:10.0f} us  {100 * us / total:5.1f} %  {op:<18} {name}")
        print(f"{total:10.0f} us  total of node kernel times")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
