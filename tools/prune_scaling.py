"""How the cost of ``compress --prune`` grows with the number of prunable blocks, against low-rank alone.

Builds chains of residual feed-forward blocks (MatMul 32 → 64, erf GELU, MatMul 64 → 32, residual Add;
random weights, dynamic batch), compresses each with ``--keep-params 0.5 --rank-multiple 8
--calibration-random 16``, once data-aware low-rank and once with ``--prune``, and prints the wall
seconds of each command (a child process, so the figures include loading).

    python tools/prune_scaling.py [--blocks 25 50 100 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/_tool.py

from _tool import run_tool  # noqa: E402  (first: an interrupt while numpy loads is one line, as in run_tool)
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_alds.argtypes import positive_int  # noqa: E402


def residual_ffn_chain(blocks: int, path: str, width: int = 32, hidden: int = 64) -> None:
    """``blocks`` residual feed-forward blocks on an ``[N, width]`` input, saved to ``path``."""
    rng = np.random.default_rng(0)

    def constant(value, name: str) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    inits = [constant(np.sqrt(2.0), "sqrt2"), constant(0.5, "half"), constant(1.0, "one")]
    nodes, x = [], "x"
    for i in range(blocks):
        p = f"b{i}_"
        inits += [constant(rng.standard_normal((width, hidden)) / np.sqrt(width), p + "w1"),
                  constant(0.1 * rng.standard_normal(hidden), p + "b1"),
                  constant(0.3 * rng.standard_normal((hidden, width)) / np.sqrt(hidden), p + "w2"),
                  constant(np.zeros(width), p + "b2")]
        nodes += [helper.make_node("MatMul", [x, p + "w1"], [p + "m1"], name=p + "up"),
                  helper.make_node("Add", [p + "m1", p + "b1"], [p + "a1"]),
                  helper.make_node("Div", [p + "a1", "sqrt2"], [p + "d"]),
                  helper.make_node("Erf", [p + "d"], [p + "e"]),
                  helper.make_node("Add", [p + "e", "one"], [p + "e1"]),
                  helper.make_node("Mul", [p + "a1", p + "e1"], [p + "g0"]),
                  helper.make_node("Mul", [p + "g0", "half"], [p + "g"]),
                  helper.make_node("MatMul", [p + "g", p + "w2"], [p + "m2"], name=p + "down"),
                  helper.make_node("Add", [p + "m2", p + "b2"], [p + "a2"]),
                  helper.make_node("Add", [x, p + "a2"], [p + "out"])]
        x = p + "out"
    graph = helper.make_graph(nodes, "residual_ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=positive_int, nargs="+", default=[25, 50, 100, 200])
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="onnx-alds-prune-scaling-")
    try:
        measure(args.blocks, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def measure(block_counts: list[int], folder: str) -> None:
    """Build each chain in ``folder``, compress it both ways and print the seconds."""
    load = os.getloadavg()[0]
    print(f"load average at start {load:.1f}")
    for blocks in block_counts:
        path = os.path.join(folder, f"chain{blocks}.onnx")
        residual_ffn_chain(blocks, path)
        for variant, extra in (("low-rank", []), ("--prune", ["--prune"])):
            command = [sys.executable, "-m", "onnx_alds.cli", "compress", path, "-o", path + ".out.onnx",
                       "--keep-params", "0.5", "--rank-multiple", "8", "--calibration-random", "16", "-q", *extra]
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            status = "ok" if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.strip()[-160:]}"
            print(f"blocks {blocks:4d}  {variant:8s}  {seconds:7.1f} s  {status}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(run_tool(main, kept="the chains measured so far are printed above; the temporary models were removed"))
