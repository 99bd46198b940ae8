"""Small test models built in code (seeded, opset 17) and helpers to run them in ONNX Runtime."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def make_model(nodes, inputs, outputs, initializers, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_model(*, in_channels: int = 8, out_channels: int = 12, kernel: Sequence[int] = (3, 3),
               spatial: Sequence[int] = (9, 9), strides: Optional[Sequence[int]] = None,
               pads: Optional[Sequence[int]] = None, dilations: Optional[Sequence[int]] = None,
               auto_pad: Optional[str] = None, bias: bool = True, batch: int = 2, seed: int = 0) -> onnx.ModelProto:
    """One Conv layer (1-D, 2-D or 3-D by the length of ``kernel``)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out_channels, in_channels, *kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "conv.weight")]
    inputs = ["x", "conv.weight"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32), "conv.bias"))
        inputs.append("conv.bias")
    attrs = {"kernel_shape": list(kernel)}
    if strides is not None:
        attrs["strides"] = list(strides)
    if pads is not None:
        attrs["pads"] = list(pads)
    if dilations is not None:
        attrs["dilations"] = list(dilations)
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    node = helper.make_node("Conv", inputs, ["y"], name="conv", **attrs)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_channels, *spatial])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (2 + len(kernel)))
    return make_model([node], [x], [y], inits)


def gemm_model(*, in_features: int = 10, out_features: int = 7, rows: int = 5, trans_a: int = 0, trans_b: int = 0,
               alpha: float = 1.0, beta: float = 1.0, bias: Optional[str] = "vector", seed: int = 0) -> onnx.ModelProto:
    """One Gemm with constant B; ``bias`` is None, "vector" (f,) or "matrix" (rows, f)."""
    rng = np.random.default_rng(seed)
    b_shape = (out_features, in_features) if trans_b else (in_features, out_features)
    inits = [numpy_helper.from_array(rng.standard_normal(b_shape).astype(np.float32), "fc.weight")]
    inputs = ["a", "fc.weight"]
    if bias is not None:
        c_shape = (out_features,) if bias == "vector" else (rows, out_features)
        inits.append(numpy_helper.from_array(rng.standard_normal(c_shape).astype(np.float32), "fc.bias"))
        inputs.append("fc.bias")
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    a_shape = [in_features, rows] if trans_a else [rows, in_features]
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])
    return make_model([node], [a], [y], inits)


def matmul_model(*, in_features: int = 10, out_features: int = 6, leading: Sequence = (4,),
                 seed: int = 0) -> onnx.ModelProto:
    """``y = x @ W`` with ``x`` of shape ``(*leading, in_features)``; leading dims may be names."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((in_features, out_features)).astype(np.float32), "proj.weight")]
    node = helper.make_node("MatMul", ["x", "proj.weight"], ["y"], name="proj")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [*leading, in_features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (len(leading) + 1))
    return make_model([node], [x], [y], inits)


def small_cnn(seed: int = 0, width: int = 16) -> onnx.ModelProto:
    """A 4-conv classifier with a Gemm head, dynamic batch, 3x32x32 input."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    channels = [3, width, 2 * width, 2 * width, 4 * width]
    for i in range(4):
        cin, cout = channels[i], channels[i + 1]
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}.out"],
                                      name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      strides=[2, 2] if i % 2 else [1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}.out"], [f"relu{i}"], name=f"relu{i}"))
        x = f"relu{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    w = (rng.standard_normal((10, 4 * width)) / np.sqrt(4 * width)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "fc.weight"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])]
    model = make_model(nodes, inputs, outputs, inits)
    model.doc_string = "small test CNN"
    model.model_version = 3
    helper.set_model_props(model, {"author": "tests"})
    return model


def run_model(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # full-rank checks compare float32 rounding only: keep graph rewrites out of the comparison
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 1, shapes: Optional[dict] = None) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = shapes[value.name] if shapes and value.name in shapes else \
            [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


@pytest.fixture
def cnn() -> onnx.ModelProto:
    return small_cnn()


@pytest.fixture
def cnn_path(tmp_path, cnn):
    path = tmp_path / "cnn.onnx"
    onnx.save(cnn, str(path))
    return path
