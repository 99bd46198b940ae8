"""The random-input check on label-only exports: how often labels change on random inputs and on real ones.

A classifier exported with only its label (an ArgMax after the logits) has no float output, so a data-free
``compress`` counts how many of its labels changed on the 4 random inputs it draws
(:func:`onnx_alds.checks.random_output_change`) and warns only when every one did. For each reference
classifier present (the MNIST ResNet, EfficientNet-Lite0), with an ArgMax appended as its only output, and
each ``--keep-flops``, data-free ALDS at rank multiple 16 (the CLI's default): the check's count, the share
of labels changed on ``--random`` further random inputs (seed 1, not the check's), and on the held-out
inputs (the 500 MNIST test digits; EfficientNet-Lite0's 300 ``agreement.npz`` crops).

    python tools/label_check_bench.py [--models mnist-resnet efficientnet-lite0] [--keep 0.9 0.7 0.5]
        [--random 64]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/_tool.py, tools/accuracy_bench.py

from _tool import run_tool  # noqa: E402  (first: an interrupt while numpy loads is one line, as in run_tool)
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from accuracy_bench import _load, find_models, outputs  # noqa: E402
from onnx_alds import compress  # noqa: E402
from onnx_alds.argtypes import fraction, positive_int  # noqa: E402
from onnx_alds.inputs import random_inputs  # noqa: E402


def label_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with ArgMax over its first output's axis 1 as its only output, ``label`` int64 ``[N]``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("ArgMax", [logits], ["label"], axis=1, keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    return model


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist-resnet", "efficientnet-lite0"])
    parser.add_argument("--keep", nargs="+", type=fraction, default=[0.9, 0.7, 0.5], help="--keep-flops values")
    parser.add_argument("--random", type=positive_int, default=64, help="further random inputs (default 64)")
    args = parser.parse_args(argv)
    print(f"{'model':<20} {'keep':>5} {'check (4)':>10} {'random':>7} {'held-out':>9} {'warned':>7}")
    for entry in find_models(args.models):
        model = onnx.load(str(entry["model"]))
        labelled = label_only(model)
        held = _load(entry["held_out"])
        held.pop("labels", None)
        name = model.graph.input[0].name
        shape = tuple(d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim)
        noise = random_inputs(model, args.random, input_shapes={name: shape}, seed=1).arrays
        before = {"random": outputs(model, noise).argmax(1), "held": outputs(model, held).argmax(1)}
        for keep in args.keep:
            result = compress(labelled, keep_flops=keep)
            (_, changed, compared), = result.report.random_changed_values
            warned = any("values of output 'label' changed" in w for w in result.report.warnings)
            compressed = onnx.ModelProto.FromString(result.model.SerializeToString())
            del compressed.graph.output[:]  # (the logits again, to reuse the float runner)
            compressed.graph.output.append(model.graph.output[0])
            after = {"random": outputs(compressed, noise).argmax(1), "held": outputs(compressed, held).argmax(1)}
            print(f"{entry['name']:<20} {keep:>5} {f'{changed} of {compared}':>10} "
                  f"{np.mean(after['random'] != before['random']):>7.3f} "
                  f"{np.mean(after['held'] != before['held']):>9.3f} {'yes' if warned else 'no':>7}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
