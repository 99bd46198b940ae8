"""resnet50: a ResNet-50 v1.5-shaped ONNX model with seeded random weights, built with
onnx.helper (no torch).

Topology: torchvision's ``resnet50`` (v1.5: stride on the 3x3 conv of each bottleneck) with
BatchNorm already folded into the convs (every Conv has a bias): conv1 7x7/2 + ReLU + MaxPool
3x3/2, bottleneck stages [3, 4, 6, 3] at widths 64/128/256/512 (x4 expansion), a 1x1 downsample
conv on the first block of each stage, GlobalAveragePool, Flatten, Gemm 2048 -> 1000.
53 Conv (49 in the main path + 4 downsample) + 1 Gemm, 25,530,472 weights (25,502,912
without the biases).

Weights: He-normal (std sqrt(2 / fan_in)), the last conv of each residual branch scaled by
0.2 so that activations stay finite and O(1-10) through the 16 residual additions; biases
N(0, 0.01). RANDOM WEIGHTS: good for speed and scale tests only, meaningless for accuracy
(random matrices have flat singular-value spectra).

``build_resnet50(seed=0, batch="N")`` returns the ``onnx.ModelProto``; ``batch`` is an int for
a static batch or a string for a symbolic (dynamic) batch dimension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4
RESIDUAL_GAIN = 0.2


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []

    def weight(self, name: str, shape: tuple, std: float) -> str:
        arr = self.rng.standard_normal(size=shape, dtype=np.float32) * np.float32(std)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def conv(self, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1, gain: float = 1.0,
             relu: bool = True) -> str:
        fan_in = cin * k * k
        w = self.weight(f"{name}.weight", (cout, cin, k, k), gain * np.sqrt(2.0 / fan_in))
        b = self.weight(f"{name}.bias", (cout,), 0.01)
        out = f"{name}.out"
        pad = k // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, w, b], [out], name=name, kernel_shape=[k, k], strides=[stride, stride],
            pads=[pad, pad, pad, pad], dilations=[1, 1], group=1))
        if relu:
            self.nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"], name=f"{name}.relu"))
            out = f"{name}.relu"
        return out

    def bottleneck(self, x: str, name: str, cin: int, width: int, stride: int) -> str:
        cout = width * EXPANSION
        y = self.conv(x, f"{name}.conv1", cin, width, 1)
        y = self.conv(y, f"{name}.conv2", width, width, 3, stride)
        y = self.conv(y, f"{name}.conv3", width, cout, 1, gain=RESIDUAL_GAIN, relu=False)
        if stride != 1 or cin != cout:
            x = self.conv(x, f"{name}.downsample", cin, cout, 1, stride, relu=False)
        s = f"{name}.add"
        self.nodes.append(helper.make_node("Add", [y, x], [s], name=s))
        self.nodes.append(helper.make_node("Relu", [s], [f"{name}.out"], name=f"{name}.relu"))
        return f"{name}.out"


def build_resnet50(seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """ResNet-50 v1.5 topology (BN folded) with seeded He-normal random weights."""
    b = _Builder(seed)
    x = b.conv("input", "conv1", 3, 64, 7, 2)
    b.nodes.append(helper.make_node("MaxPool", [x], ["maxpool.out"], name="maxpool", kernel_shape=[3, 3],
                                    strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "maxpool.out", 64
    for si, (width, blocks, stride) in enumerate(STAGES, start=1):
        for bi in range(blocks):
            x = b.bottleneck(x, f"layer{si}.{bi}", cin, width, stride if bi == 0 else 1)
            cin = width * EXPANSION
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["avgpool.out"], name="avgpool"))
    b.nodes.append(helper.make_node("Flatten", ["avgpool.out"], ["flatten.out"], name="flatten", axis=1))
    fc_w = b.weight("fc.weight", (1000, 2048), np.sqrt(1.0 / 2048))
    fc_b = b.weight("fc.bias", (1000,), 0.01)
    b.nodes.append(helper.make_node("Gemm", ["flatten.out", fc_w, fc_b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes, "resnet50_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1000])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnx-alds models/resnet50.py")
    model.ir_version = 8  # readable by every ONNX Runtime that supports opset 17
    model.doc_string = ("ResNet-50 v1.5 topology, BatchNorm folded, RANDOM He-normal weights "
                        f"(seed {seed}): for speed and scale tests only")
    helper.set_model_props(model, {"weights": "random", "seed": str(seed)})
    return model


def build(out_dir: Path, seed: int = 0) -> dict:
    from .common import Timer, check_model, env_info, model_summary, ort_session, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    model = build_resnet50(seed)
    path = out_dir / "model.onnx"
    onnx.save(model, str(path))
    check_model(path)
    rng = np.random.default_rng(seed + 1)
    calib = rng.standard_normal((8, 3, 224, 224), dtype=np.float32)
    x = rng.standard_normal((4, 3, 224, 224), dtype=np.float32)
    np.savez(out_dir / "calibration.npz", input=calib)
    np.savez(out_dir / "eval.npz", input=x)
    sess = ort_session(path)
    t = Timer()
    logits = sess.run(None, {"input": x[:1]})[0]
    first_run_s = t()
    info = {
        "name": "resnet50",
        "description": "ResNet-50 v1.5 topology (torchvision), BatchNorm folded into conv biases",
        "weights": f"RANDOM (He-normal, seed {seed}; residual-branch last conv x{RESIDUAL_GAIN}): "
        "for speed and scale only, accuracy is meaningless",
        "task": "none (no labels); compare compressed vs original logits only as a sanity check",
        "input": {"name": "input", "shape": ["N", 3, 224, 224], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["N", 1000]},
        "data": {"calibration": "8 standard-normal inputs (key 'input')",
                 "eval": "4 standard-normal inputs (key 'input')"},
        "check": {"onnx_checker_full": True, "ort_batch1_seconds": first_run_s,
                  "logits_finite": bool(np.isfinite(logits).all()), "logits_std": float(logits.std())},
        "build_seconds": timer(),
        "model": model_summary(path),
        "env": env_info(),
    }
    write_json(out_dir / "info.json", info)
    print(f"resnet50: {info['model']['weights']:,} weights, {info['model']['weighted_nodes']}, "
          f"logits std {logits.std():.3g}, {info['build_seconds']} s")
    return info
