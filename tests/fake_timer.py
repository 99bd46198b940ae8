"""A fake :class:`onnx_alds.latency.Timer` for the tests: deterministic times from MACs, call counts."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model
from onnx_alds.layers import node_macs


class FakeTimer:
    """Time = MACs × a per-node factor + 1 µs per node; counts what it was asked to time.

    - a Conv with ``group > 1`` costs ``group_penalty`` times more per MAC;
    - a k×k Conv with few output channels is slow per MAC (``1 + 32 / outputs``), as ONNX Runtime's CPU
      kernels are;
    - a pointwise-first pair (1x1 conv first, then k×k) is multiplied by ``pointwise(c)`` (``c`` its inputs);
    - a pair with ``slow(inputs, outputs)`` takes 10 times longer.
    """

    identity = {"provider": "fake", "threads": 1, "onnxruntime": "fake", "device": "fake"}

    def __init__(self, *, group_penalty: float = 1.0, pointwise=lambda channels: 1.0, rest_us: float = 10.0,
                 slow=lambda inputs, outputs: False):
        self.group_penalty = group_penalty
        self.pointwise = pointwise
        self.slow = slow  # (inputs, outputs) of a pair -> its time x 10
        self.rest_us = rest_us
        self.calls = 0
        self.models = 0
        self.ratios = 0  # whole-model comparisons (time_ratio)
        self.whole_model_node_us = 0.0

    def seconds(self, model: onnx.ModelProto, shapes=None) -> float:
        inferred = onnx.shape_inference.infer_shapes(model) if shapes is None else None
        if shapes is None:
            shapes = {}
            for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
                dims = value.type.tensor_type.shape.dim
                if dims and all(d.HasField("dim_value") for d in dims):
                    shapes[value.name] = tuple(d.dim_value for d in dims)
        for init in model.graph.initializer:
            shapes.setdefault(init.name, tuple(init.dims))
        total = 0.0
        layer_nodes = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
        for node in layer_nodes:
            macs = node_macs(node, shapes) or 0
            factor = 1.0
            if node.op_type == "Conv":
                weight = shapes[node.input[1]]
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                factor *= self.group_penalty if group > 1 else 1.0
                if int(np.prod(weight[2:])) > 1:
                    factor *= 1.0 + 32.0 / weight[0]
            total += macs * factor * 1e-12 + 1e-6
        convs = [node for node in layer_nodes if node.op_type == "Conv"]
        if len(convs) == 2:
            first = shapes[convs[0].input[1]]
            second = shapes[convs[1].input[1]]
            if int(np.prod(first[2:])) == 1 and int(np.prod(second[2:])) > 1:
                total *= self.pointwise(shapes[convs[0].input[0]][1])
            if self.slow(shapes[convs[0].input[0]][1], second[0]):
                total *= 10.0
        return total

    def time_layers(self, models):
        self.calls += 1
        self.models += len(models)
        return [self.seconds(model) for model in models]

    def time_model(self, model, store, input_shapes, layers, counts):
        from onnx_alds.model_io import materialize
        from onnx_alds.shapes import tensor_shapes

        self.calls += 1
        complete = onnx.ModelProto()
        complete.CopyFrom(model)
        materialize(complete, store)
        names = {t for node in complete.graph.node for t in list(node.input) + list(node.output)}
        shapes = tensor_shapes(complete, input_shapes, names)
        total = 0.0
        for node in complete.graph.node:
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                total += FakeTimer.seconds(self, _one_node(complete, node), dict(shapes))
        return [total + self.rest_us * 1e-6] + [self.seconds(layer) for layer in layers]

    def time_ratio(self, reference, candidate, store, input_shapes):
        """Whole models: their layers' times, the rest, and ``whole_model_node_us`` per Conv/Gemm/MatMul
        node, a cost that single-layer timings do not see (as layout reorders between a pair's convs)."""
        self.ratios += 1

        def whole(model):
            nodes = sum(node.op_type in ("Conv", "Gemm", "MatMul") for node in model.graph.node)
            return self.time_model(model, store, input_shapes, [], [])[0] + self.whole_model_node_us * 1e-6 * nodes

        calls = self.calls
        value = whole(candidate) / whole(reference)
        self.calls = calls  # time_model's count is for the tables
        return value


def _one_node(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    inits = [init for init in model.graph.initializer if init.name in node.input]
    graph = helper.make_graph([node], "one", [], [], inits)
    return helper.make_model(graph, opset_imports=list(model.opset_import))


def two_order_cnn(seed: int = 0) -> onnx.ModelProto:
    """input 3ch 16x16 → conv0 3→32 → conv1 32→32 (k×k, stride 1) → conv2 32→64 stride 2 →
    conv3 64→64 (k×k, stride 1) → GAP → fc: two convs that may go pointwise-first, with different inputs."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    specs = [(3, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1)]
    for i, (cin, cout, stride) in enumerate(specs):
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"),
                  numpy_helper.from_array(np.zeros(cout, np.float32), f"conv{i}.bias")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}.out"],
                                      name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride] * 2))
        nodes.append(helper.make_node("Relu", [f"conv{i}.out"], [f"relu{i}"], name=f"relu{i}"))
        x = f"relu{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    inits += [numpy_helper.from_array((rng.standard_normal((10, 64)) / 8).astype(np.float32), "fc.weight"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    return make_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
