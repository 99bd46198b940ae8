#!/usr/bin/env python3
"""Seeded, structure-aware mutation fuzzer of onnx-alds (``analyze``, ``compress`` and the CLI).

    python tools/fuzz.py --seed 0 --mutants 300 --out DIR [--jobs N] [--timeout S] [--cli-rate P]

Each mutant is one of the small seed models below (built in code with ``onnx.helper``) with one to
three mutations applied (dims, attributes, dtypes, names, missing or duplicated tensors and nodes,
NaN/Inf weights, stale value_info, graph outputs, ir_version/opset, bytes of the serialized file).
Every mutation is a snippet of Python that the fuzzer executes to build the mutant, so the
reproducer written for a failure runs the very same code. Each mutant gets one call, ``analyze`` or
``compress`` with random but valid-looking options, in a worker process with a hard timeout, and
sometimes the same call through the CLI in a subprocess. The outcome is one of

- ``OK``: a report, or a model that passes ``onnx.checker.check_model(full_check=True)``, loads in
  ONNX Runtime, keeps the graph inputs' and outputs' names, element types and shapes, and runs on
  the same random inputs as the original (when the original runs);
- ``CLEAN_ERROR``: an ``OnnxAldsError`` with a one-line message (CLI: exit 1, stderr one ``error:`` line);
- ``FAILURE`` of a kind: HANG, CRASH, TRACEBACK, BAD_MESSAGE, INVALID_OUTPUT, ORT_REFUSED, IO_CHANGED,
  WRONG_VALUES, INPUT_MODIFIED, CLI_STDERR;
- ``UNCHECKED``: the harness itself could not finish its checks (rare; listed, never a failure).

Failures are grouped by (kind, exception type, innermost onnx_alds frame or the message's first
words); each group gets one standalone reproducer script (the simplest mutant seen) in the output
folder, next to ``summary.json`` and ``results.jsonl``. See docs/FUZZING.md.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import hashlib
import inspect
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

from _tool import check_output_folder, positive_float  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_alds.argtypes import fraction, non_negative_int, positive_int  # noqa: E402

OK, CLEAN_ERROR, FAILURE, UNCHECKED = "OK", "CLEAN_ERROR", "FAILURE", "UNCHECKED"
OUTCOMES = (OK, CLEAN_ERROR, FAILURE, UNCHECKED)
KINDS = ("HANG", "CRASH", "TRACEBACK", "BAD_MESSAGE", "INVALID_OUTPUT", "ORT_REFUSED", "IO_CHANGED",
         "WRONG_VALUES", "INPUT_MODIFIED", "CLI_STDERR")
METHODS = ("alds", "svd", "svd-energy", "l-rank")
LAYER_OPS = ("Conv", "Gemm", "MatMul")
MAX_FEED_ELEMENTS = 4_000_000
MAX_WEIGHT_ELEMENTS = 2_000_000


# ---------------------------------------------------------------------------------------------
# Helpers shared by the seeds, the mutation snippets and the reproducers (copied into each script
# by source, so keep them self-contained: numpy as np, onnx, TensorProto, helper, numpy_helper).
# ---------------------------------------------------------------------------------------------

def W(shape, seed, dtype=np.float32):
    """Seeded weights scaled like a trained layer's."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(dtype)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def vi(name, elem, dims):
    return helper.make_tensor_value_info(name, elem, dims)


def build(nodes, inputs, outputs, inits, opset=17, ir=8):
    graph = helper.make_graph(nodes, "seed", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fuzz")
    model.ir_version = ir
    return model


def tensor(m, name):
    """The initializer, or the value of the Constant node, called name."""
    for t in m.graph.initializer:
        if t.name == name:
            return t
    for n in m.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return a.t
    raise KeyError(name)


def set_attr(n, name, value, kind=None):
    for i, a in enumerate(n.attribute):
        if a.name == name:
            del n.attribute[i]
            break
    n.attribute.append(helper.make_attribute(name, value, attr_type=kind))


def del_attr(n, name):
    for i, a in enumerate(n.attribute):
        if a.name == name:
            del n.attribute[i]
            return


def replace_tensor(m, name, array):
    """New data (and dims, dtype) for the tensor called name."""
    tensor(m, name).CopyFrom(numpy_helper.from_array(np.asarray(array), name))


def rename(m, old, new):
    """Rename a tensor everywhere in the main graph."""
    for n in m.graph.node:
        n.input[:] = [new if x == old else x for x in n.input]
        n.output[:] = [new if x == old else x for x in n.output]
    for values in (m.graph.input, m.graph.output, m.graph.value_info, m.graph.initializer):
        for v in values:
            if v.name == old:
                v.name = new


def set_nodes(m, nodes):
    """Replace the node list (copies, so removed messages stay valid)."""
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    del m.graph.node[:]
    m.graph.node.extend(nodes)


def set_shape(v, dims, elem=None):
    """Give the value info v the shape dims (ints, strings for dim_param, None for unknown; dims None: no shape)."""
    tt = v.type.tensor_type
    if elem is not None:
        tt.elem_type = elem
    if dims is None:
        tt.ClearField("shape")
        return
    tt.shape.SetInParent()
    del tt.shape.dim[:]
    for d in dims:
        dim = tt.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        elif d is not None:
            dim.dim_value = d


def to_float_type(m, dtype):
    """Every float tensor of the main graph (initializers, Constant values, inputs, outputs, value_info) to dtype."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    values = list(m.graph.initializer) + [a.t for n in m.graph.node if n.op_type == "Constant"
                                          for a in n.attribute if a.name == "value"]
    for t in values:
        if t.data_type in floats:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(dtype), t.name))
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if v.type.tensor_type.elem_type in floats:
            v.type.tensor_type.elem_type = elem


def io_signature(values):
    """(name, element type, dims) of graph inputs or outputs; dims are ints, dim_param strings or None."""
    result = []
    for v in values:
        tt = v.type.tensor_type
        dims = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
                    for d in tt.shape.dim]
        result.append((v.name, tt.elem_type if v.type.HasField("tensor_type") else None, dims))
    return result


def check(path, model):
    """What the fuzzer checks on a returned model: full checker, the same graph inputs/outputs, ONNX Runtime loads it."""
    import onnxruntime as ort

    onnx.checker.check_model(model, full_check=True)
    try:
        original = onnx.load(path)
    except Exception:
        original = None
    if original is not None:
        for what in ("input", "output"):
            before, after = io_signature(getattr(original.graph, what)), io_signature(getattr(model.graph, what))
            assert before == after, f"graph {what}s changed: {before} -> {after}"
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    print("checks passed: checker, graph inputs/outputs, ONNX Runtime load")


HELPERS = (W, init, vi, build, tensor, set_attr, del_attr, replace_tensor, rename, set_nodes, set_shape,
           to_float_type, io_signature, check)
PREAMBLE_IMPORTS = "import numpy as np\nimport onnx\nfrom onnx import TensorProto, helper, numpy_helper\n"


# ---------------------------------------------------------------------------------------------
# Seed models (each function's source becomes ``seed()`` in a reproducer).
# ---------------------------------------------------------------------------------------------

def seed_conv2d_bias():
    conv = helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    relu = helper.make_node("Relu", ["h"], ["y"], name="relu")
    return build([conv, relu], [vi("x", TensorProto.FLOAT, ["N", 8, 10, 10])],
                 [vi("y", TensorProto.FLOAT, ["N", 16, 10, 10])], [init("w", W((16, 8, 3, 3), 4)), init("b", W((16,), 5))])


def seed_conv2d_nobias():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                            strides=[1, 1], dilations=[1, 1], group=1)
    return build([conv], [vi("x", TensorProto.FLOAT, [2, 16, 8, 8])], [vi("y", TensorProto.FLOAT, [2, 32, 8, 8])],
                 [init("w", W((32, 16, 3, 3), 40))])


def seed_conv1d_bias():
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1], kernel_shape=[3])
    return build([conv], [vi("x", TensorProto.FLOAT, ["N", 8, 32])], [vi("y", TensorProto.FLOAT, ["N", 16, 32])],
                 [init("w", W((16, 8, 3), 1)), init("b", W((16,), 2))])


def seed_conv1d_strided_nobias():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[2], dilations=[2], pads=[2, 1])
    return build([conv], [vi("x", TensorProto.FLOAT, [2, 8, 40])], [vi("y", TensorProto.FLOAT, [2, 12, 18])],
                 [init("w", W((12, 8, 5), 3))])


def seed_conv3d_bias():
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv3d", pads=[1] * 6)
    return build([conv], [vi("x", TensorProto.FLOAT, [1, 4, 6, 6, 6])], [vi("y", TensorProto.FLOAT, [1, 8, 6, 6, 6])],
                 [init("w", W((8, 4, 3, 3, 3), 14)), init("b", W((8,), 15))])


def seed_conv2d_autopad_strided():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", auto_pad="SAME_UPPER", strides=[2, 2])
    return build([conv], [vi("x", TensorProto.FLOAT, [1, 6, 9, 9])], [vi("y", TensorProto.FLOAT, [1, 12, 5, 5])],
                 [init("w", W((12, 6, 3, 3), 6))])


def seed_depthwise_pointwise():
    nodes = [
        helper.make_node("Conv", ["x", "dw", "db"], ["h"], name="dw", group=16, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "pw"], ["y"], name="pw", kernel_shape=[1, 1]),
    ]
    return build(nodes, [vi("x", TensorProto.FLOAT, [1, 16, 8, 8])], [vi("y", TensorProto.FLOAT, [1, 32, 8, 8])],
                 [init("dw", W((16, 1, 3, 3), 41)), init("db", W((16,), 42)), init("pw", W((32, 16, 1, 1), 43))])


def seed_grouped_conv():
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="gconv", group=4, pads=[1, 1, 1, 1])
    return build([conv], [vi("x", TensorProto.FLOAT, [1, 16, 6, 6])], [vi("y", TensorProto.FLOAT, [1, 32, 6, 6])],
                 [init("w", W((32, 4, 3, 3), 44)), init("b", W((32,), 45))])


def seed_gemm_full():
    gemm = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=1, alpha=0.5, beta=2.0)
    return build([gemm], [vi("x", TensorProto.FLOAT, ["N", 32])], [vi("y", TensorProto.FLOAT, ["N", 24])],
                 [init("w", W((24, 32), 16)), init("c", W((24,), 17))])


def seed_gemm_transA_noC():
    gemm = helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transA=1)
    return build([gemm], [vi("x", TensorProto.FLOAT, [32, 4])], [vi("y", TensorProto.FLOAT, [4, 24])],
                 [init("w", W((32, 24), 18))])


def seed_gemm_opset9():
    gemm = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm")
    return build([gemm], [vi("x", TensorProto.FLOAT, [2, 32])], [vi("y", TensorProto.FLOAT, [2, 24])],
                 [init("w", W((32, 24), 19)), init("c", W((1, 24), 20))], opset=9, ir=4)


def seed_gemm_scalar_c():
    gemm = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", alpha=1.5)
    return build([gemm], [vi("x", TensorProto.FLOAT, [4, 32])], [vi("y", TensorProto.FLOAT, [4, 24])],
                 [init("w", W((32, 24), 46)), init("c", np.array(0.25, np.float32))])


def seed_matmul_2d():
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return build(nodes, [vi("x", TensorProto.FLOAT, ["N", 32])], [vi("y", TensorProto.FLOAT, ["N", 16])],
                 [init("w1", W((32, 24), 21)), init("w2", W((24, 16), 22))])


def seed_matmul_3d():
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Add", ["h", "b1"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"), helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return build(nodes, [vi("x", TensorProto.FLOAT, ["N", 7, 32])], [vi("y", TensorProto.FLOAT, ["N", 7, 16])],
                 [init("w1", W((32, 48), 47)), init("b1", W((48,), 48)), init("w2", W((48, 16), 49))])


def seed_matmul_weight_first():
    mm = helper.make_node("MatMul", ["w", "x"], ["y"], name="mm")
    return build([mm], [vi("x", TensorProto.FLOAT, [32, "N"])], [vi("y", TensorProto.FLOAT, [24, "N"])],
                 [init("w", W((24, 32), 50))])


def seed_matmul_chain():
    nodes, inits, sizes = [], [], [32, 64, 64, 32, 8]
    for i in range(4):
        src = "x" if i == 0 else f"r{i - 1}"
        dst = "y" if i == 3 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [src, f"w{i}"], [dst], name=f"mm{i}"))
        if i < 3:
            nodes.append(helper.make_node("Relu", [dst], [f"r{i}"], name=f"relu{i}"))
        inits.append(init(f"w{i}", W((sizes[i], sizes[i + 1]), 51 + i)))
    return build(nodes, [vi("x", TensorProto.FLOAT, [2, 32])], [vi("y", TensorProto.FLOAT, [2, 8])], inits)


def seed_residual_block():
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["h2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["h2", "x"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu2"),
    ]
    model = build(nodes, [vi("x", TensorProto.FLOAT, [1, 16, 8, 8])], [vi("y", TensorProto.FLOAT, [1, 16, 8, 8])],
                  [init("w1", W((16, 16, 3, 3), 55)), init("b1", W((16,), 56)), init("w2", W((16, 16, 3, 3), 57)),
                   init("b2", W((16,), 58))])
    return onnx.shape_inference.infer_shapes(model)


def seed_constant_weights():
    nodes = [
        helper.make_node("Constant", [], ["w"], name="cw", value=init("w", W((16, 8, 3, 3), 26))),
        helper.make_node("Conv", ["x", "w"], ["h"], name="conv"),
        helper.make_node("Flatten", ["h"], ["f"], name="flat"),
        helper.make_node("Constant", [], ["g"], name="cg", value=init("g", W((256, 12), 27))),
        helper.make_node("Gemm", ["f", "g"], ["y"], name="gemm"),
    ]
    return build(nodes, [vi("x", TensorProto.FLOAT, [1, 8, 6, 6])], [vi("y", TensorProto.FLOAT, [1, 12])], [])


def seed_fp16_conv_matmul():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["h"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "m"], ["y"], name="mm")]
    return build(nodes, [vi("x", TensorProto.FLOAT16, [1, 8, 4, 4])], [vi("y", TensorProto.FLOAT16, [1, 16])],
                 [init("w", W((16, 8, 3, 3), 28, np.float16)), init("b", W((16,), 29, np.float16)),
                  init("m", W((256, 16), 30, np.float16))])


def seed_fp16_gemm():
    gemm = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=1)
    return build([gemm], [vi("x", TensorProto.FLOAT16, ["N", 48])], [vi("y", TensorProto.FLOAT16, ["N", 32])],
                 [init("w", W((32, 48), 59, np.float16)), init("c", W((32,), 60, np.float16))])


def seed_fp64_gemm_matmul():
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["h"], name="gemm", transB=1),
             helper.make_node("MatMul", ["h", "m"], ["y"], name="mm")]
    return build(nodes, [vi("x", TensorProto.DOUBLE, [3, 32])], [vi("y", TensorProto.DOUBLE, [3, 16])],
                 [init("w", W((24, 32), 31, np.float64)), init("c", W((24,), 32, np.float64)),
                  init("m", W((24, 16), 33, np.float64))])


def seed_conv2d_chain():
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2"], ["h2"], name="c2", pads=[2, 2, 2, 2], dilations=[2, 2]),
        helper.make_node("Add", ["h2", "r1"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "w3", "b3"], ["h3"], name="c3"),
        helper.make_node("GlobalAveragePool", ["h3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [init("w1", W((16, 4, 3, 3), 7)), init("b1", W((16,), 8)), init("w2", W((16, 16, 3, 3), 9)),
             init("w3", W((12, 16, 1, 1), 10)), init("b3", W((12,), 11)), init("wf", W((10, 12), 12)),
             init("bf", W((10,), 13))]
    return build(nodes, [vi("x", TensorProto.FLOAT, [1, 4, 12, 12])], [vi("y", TensorProto.FLOAT, [1, 10])], inits)


def seed_shared_weight():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="mm2")]
    return build(nodes, [vi("x", TensorProto.FLOAT, [2, 32])], [vi("y", TensorProto.FLOAT, [2, 32])],
                 [init("w", W((32, 32), 61))])


def seed_weight_via_transpose():
    nodes = [helper.make_node("Transpose", ["wt"], ["w"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return build(nodes, [vi("x", TensorProto.FLOAT, ["N", 32])], [vi("y", TensorProto.FLOAT, ["N", 24])],
                 [init("wt", W((24, 32), 62))])


def seed_two_outputs():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2")]
    return build(nodes, [vi("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                 [vi("y", TensorProto.FLOAT, [1, 16, 6, 6]), vi("h", TensorProto.FLOAT, [1, 16, 6, 6])],
                 [init("w1", W((16, 8, 3, 3), 63)), init("w2", W((16, 16, 1, 1), 64)), init("b2", W((16,), 65))])


def seed_gemm_weight_as_a():
    gemm = helper.make_node("Gemm", ["w", "x"], ["y"], name="gemm", transB=1)
    return build([gemm], [vi("x", TensorProto.FLOAT, [5, 32])], [vi("y", TensorProto.FLOAT, [24, 5])],
                 [init("w", W((24, 32), 68))])


def seed_conv_in_if():
    then_graph = helper.make_graph([helper.make_node("Conv", ["x", "wa"], ["ya"], name="conv_then", pads=[1, 1])], "then",
                                   [], [vi("ya", TensorProto.FLOAT, [1, 16, 12])], [init("wa", W((16, 8, 3), 66))])
    else_graph = helper.make_graph([helper.make_node("Conv", ["x", "wb"], ["yb"], name="conv_else", pads=[1, 1])], "else",
                                   [], [vi("yb", TensorProto.FLOAT, [1, 16, 12])], [init("wb", W((16, 8, 3), 67))])
    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_graph, else_branch=else_graph)
    return build([node], [vi("c", TensorProto.BOOL, []), vi("x", TensorProto.FLOAT, [1, 8, 12])],
                 [vi("y", TensorProto.FLOAT, [1, 16, 12])], [])


def seed_mnist_resnet():
    import os
    import onnx_alds
    path = os.environ.get("FUZZ_MNIST") or os.path.join(os.path.dirname(onnx_alds.__file__), "data", "mnist_resnet.onnx")
    return onnx.load(path)


SEEDS: dict[str, Callable[[], onnx.ModelProto]] = {
    name[len("seed_"):]: fn for name, fn in list(globals().items()) if name.startswith("seed_") and callable(fn)}
# Relative sampling weights: the bundled MNIST ResNet is 100x larger than the others, so rarer.
SEED_WEIGHTS = {name: (0.25 if name == "mnist_resnet" else 1.0) for name in SEEDS}


# Sources read once, at import: a reproducer written at the end of a long run must not pick up
# an edit made to this file in the meantime.
_SOURCES = {fn.__name__: inspect.getsource(fn) for fn in (*HELPERS, *SEEDS.values())}


def seed_source(name: str) -> str:
    source = _SOURCES[SEEDS[name].__name__]
    return re.sub(r"^def seed_\w+\(", "def seed(", source, count=1)


# ---------------------------------------------------------------------------------------------
# Mutations: each generator looks at the model and returns (description, model code[, bytes code])
# with every random choice already made; the code acts on ``m`` (model) or ``b`` (serialized bytes).
# ---------------------------------------------------------------------------------------------

class Rand:
    def __init__(self, rng: np.random.Generator) -> None:
        self.g = rng

    def pick(self, seq):
        seq = list(seq)
        return seq[int(self.g.integers(len(seq)))]

    def int(self, lo: int, hi: Optional[int] = None) -> int:
        return int(self.g.integers(lo)) if hi is None else int(self.g.integers(lo, hi))

    def chance(self, p: float) -> bool:
        return float(self.g.random()) < p

    def weighted(self, items: dict):
        keys = list(items)
        p = np.array([items[k] for k in keys], float)
        return keys[int(self.g.choice(len(keys), p=p / p.sum()))]


MODEL_MUTATIONS: dict[str, tuple[float, Callable]] = {}
BYTES_MUTATIONS: dict[str, tuple[float, Callable]] = {}


def mutation(weight: float, stage: str = "model"):
    def register(fn):
        (MODEL_MUTATIONS if stage == "model" else BYTES_MUTATIONS)[fn.__name__[len("mut_"):]] = (weight, fn)
        return fn
    return register


def _init_names(m) -> set:
    return {t.name for t in m.graph.initializer}


def _constant_values(m) -> list[str]:
    names = [t.name for t in m.graph.initializer]
    names += [n.output[0] for n in m.graph.node if n.op_type == "Constant" and n.output
              and any(a.name == "value" for a in n.attribute)]
    return names


def _tensor_or_none(m, name):
    try:
        return tensor(m, name)
    except KeyError:
        return None


def _float_constants(m) -> list[str]:
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    return [n for n in _constant_values(m) if (t := _tensor_or_none(m, n)) is not None and t.data_type in floats
            and len(t.dims) >= 1 and t.data_location != TensorProto.EXTERNAL]


def _layer_nodes(m) -> list[int]:
    return [i for i, n in enumerate(m.graph.node) if n.op_type in LAYER_OPS]


def _weights(m) -> list[str]:
    consts = set(_constant_values(m))
    names = []
    for i in _layer_nodes(m):
        n = m.graph.node[i]
        for slot in ((0, 1) if n.op_type == "MatMul" else (1,)):
            if len(n.input) > slot and n.input[slot] in consts and n.input[slot] not in names:
                names.append(n.input[slot])
    return names


def _pick_weight(r: Rand, m, any_p: float = 0.25) -> Optional[str]:
    weights = [w for w in _weights(m) if _tensor_or_none(m, w) is not None]
    floats = _float_constants(m)
    pool = weights if weights and not r.chance(any_p) else (floats or weights)
    return r.pick(pool) if pool else None


def _real_inputs(m) -> list[int]:
    inits = _init_names(m)
    return [i for i, v in enumerate(m.graph.input) if v.name not in inits]


def _intermediates(m) -> list[str]:
    outputs = {o.name for o in m.graph.output}
    return [o for n in m.graph.node for o in n.output if o and o not in outputs]


def _all_tensors(m) -> list[str]:
    seen: list[str] = []
    for name in ([v.name for v in m.graph.input] + [t.name for t in m.graph.initializer]
                 + [o for n in m.graph.node for o in n.output] + [v.name for v in m.graph.output]):
        if name and name not in seen:
            seen.append(name)
    return seen


def _dims(v) -> Optional[list]:
    return io_signature([v])[0][2]


def _np_dtype_expr(dtype: np.dtype) -> str:
    return f"np.{np.dtype(dtype).name}"


ELEM_TYPES = {"FLOAT": TensorProto.FLOAT, "FLOAT16": TensorProto.FLOAT16, "DOUBLE": TensorProto.DOUBLE,
              "BFLOAT16": TensorProto.BFLOAT16, "INT64": TensorProto.INT64, "INT32": TensorProto.INT32,
              "INT8": TensorProto.INT8, "UINT8": TensorProto.UINT8, "BOOL": TensorProto.BOOL,
              "STRING": TensorProto.STRING, "UNDEFINED": TensorProto.UNDEFINED, "COMPLEX64": TensorProto.COMPLEX64,
              "FLOAT8E4M3FN": TensorProto.FLOAT8E4M3FN}


def _elem(r: Rand, names: Iterable[str]) -> tuple[str, int]:
    name = r.pick(names)
    return name, ELEM_TYPES[name]


def _random_dims(r: Rand, like: Optional[list]) -> list:
    base = list(like) if like else [1, 8, 4, 4]
    choice = r.pick(["one", "rank+", "rank-", "random", "zero", "param"])
    if choice == "one" and base:
        k = r.int(len(base))
        base[k] = r.pick([0, 1, 3, 17, 100000]) if not isinstance(base[k], int) or r.chance(0.5) else base[k] + r.pick([-1, 1, 5])
    elif choice == "rank+":
        base.insert(r.int(len(base) + 1), r.pick([1, 2, "N"]))
    elif choice == "rank-" and base:
        del base[r.int(len(base))]
    elif choice == "random":
        base = [r.pick([1, 2, 3, 8, 16, 24, "N", None]) for _ in range(r.int(0, 5))]
    elif choice == "zero" and base:
        base[r.int(len(base))] = 0
    else:
        base = [r.pick(["N", "M", "", None]) for _ in base]
    return base


DIM_VALUES = [0, 1, 2, 3, 100000, 1048576, 2**31 - 1, 2**40, -1, -5, "N", "", "batch", "-1", None]


@mutation(3)
def mut_input_dim(r, m):
    idx = [i for i in _real_inputs(m) if _dims(m.graph.input[i])]
    if not idx:
        return None
    i = r.pick(idx)
    v = m.graph.input[i]
    j = r.int(len(v.type.tensor_type.shape.dim))
    new = r.pick(DIM_VALUES)
    code = f"_d = m.graph.input[{i}].type.tensor_type.shape.dim[{j}]\n_d.Clear()\n"
    if isinstance(new, str):
        code += f"_d.dim_param = {new!r}"
    elif new is not None:
        code += f"_d.dim_value = {new}"
    return f"input {i} ({v.name}) dim {j} -> {new!r}", code


@mutation(2)
def mut_input_shape(r, m):
    idx = _real_inputs(m)
    if not idx:
        return None
    i = r.pick(idx)
    v = m.graph.input[i]
    choice = r.pick(["dims", "dims", "no shape", "type removed", "scalar", "unknown dims", "elem"])
    if choice == "type removed":
        return f"input[{i}] ({v.name}): type removed", f"m.graph.input[{i}].ClearField('type')"
    if choice == "elem":
        name, elem = _elem(r, ["FLOAT16", "DOUBLE", "INT64", "INT8", "BFLOAT16", "BOOL", "STRING", "UNDEFINED",
                               "COMPLEX64", "FLOAT8E4M3FN", "FLOAT"])
        return f"input[{i}] ({v.name}): element type -> {name}", f"m.graph.input[{i}].type.tensor_type.elem_type = {elem}"
    dims = {"no shape": None, "scalar": [], "unknown dims": [None] * len(_dims(v) or [1, 1])}.get(choice)
    if choice == "dims":
        dims = _random_dims(r, _dims(v))
    return f"input[{i}] ({v.name}): shape -> {dims!r}", f"set_shape(m.graph.input[{i}], {dims!r})"


@mutation(3)
def mut_output(r, m):
    outs = list(m.graph.output)
    choice = r.pick(["shape", "shape", "elem", "remove", "remove all", "add intermediate", "add typed intermediate",
                     "duplicate", "weight as output", "input as output", "no type", "rename to input"])
    if not outs and choice not in ("add intermediate", "add typed intermediate", "weight as output", "input as output"):
        return None
    i = r.int(len(outs)) if outs else 0
    if choice == "shape":
        dims = _random_dims(r, _dims(outs[i]))
        return f"graph output {i} ({outs[i].name}): shape -> {dims!r}", f"set_shape(m.graph.output[{i}], {dims!r})"
    if choice == "elem":
        name, elem = _elem(r, ["FLOAT16", "DOUBLE", "INT64", "FLOAT", "UNDEFINED", "BFLOAT16"])
        return (f"graph output {i} ({outs[i].name}): element type -> {name}",
                f"m.graph.output[{i}].type.tensor_type.elem_type = {elem}")
    if choice == "remove":
        return f"graph output {i} ({outs[i].name}) removed", f"del m.graph.output[{i}]"
    if choice == "remove all":
        return "every graph output removed", "del m.graph.output[:]"
    if choice in ("add intermediate", "add typed intermediate"):
        mids = _intermediates(m)
        if not mids:
            return None
        t = r.pick(mids)
        if choice == "add intermediate":
            return f"intermediate {t!r} added as a graph output (no type)", f"m.graph.output.add().name = {t!r}"
        dims = r.pick([None, [], [1, 16, 8, 8], ["N", 24]])
        return (f"intermediate {t!r} added as a graph output, FLOAT {dims!r}",
                f"m.graph.output.extend([vi({t!r}, TensorProto.FLOAT, {dims!r})])")
    if choice == "duplicate":
        return f"graph output {i} ({outs[i].name}) listed twice", f"m.graph.output.extend([m.graph.output[{i}]])"
    if choice == "weight as output":
        w = _pick_weight(r, m)
        if w is None:
            return None
        t = tensor(m, w)
        return (f"weight {w!r} also a graph output", f"m.graph.output.extend([vi({w!r}, {t.data_type}, {list(t.dims)!r})])")
    if choice == "input as output":
        idx = _real_inputs(m)
        if not idx:
            return None
        j = r.pick(idx)
        return (f"graph input {m.graph.input[j].name!r} also a graph output",
                f"m.graph.output.extend([m.graph.input[{j}]])")
    if choice == "no type":
        return f"graph output {i} ({outs[i].name}): type removed", f"m.graph.output[{i}].ClearField('type')"
    idx = _real_inputs(m)
    if not idx:
        return None
    j = r.pick(idx)
    return (f"graph output {i} renamed to graph input {m.graph.input[j].name!r} (producer unchanged)",
            f"m.graph.output[{i}].name = {m.graph.input[j].name!r}")


@mutation(3)
def mut_value_info(r, m):
    names = _intermediates(m) + [o.name for o in m.graph.output] + [m.graph.input[i].name for i in _real_inputs(m)]
    choice = r.pick(["add", "add", "contradicting pair", "ghost", "clear", "no type"])
    if choice == "clear":
        if not len(m.graph.value_info):
            return None
        return "value_info cleared", "del m.graph.value_info[:]"
    target = "ghost" if choice == "ghost" or not names else r.pick(names)
    elem_name, elem = _elem(r, ["FLOAT", "FLOAT", "FLOAT16", "DOUBLE", "INT64"])
    dims = _random_dims(r, r.pick([[1, 16, 8, 8], ["N", 24], [1, 12], [2, 16], None]) or None)
    dims = r.pick([dims, dims, None, []])
    if choice == "no type":
        return f"value_info {target}: no type", f"m.graph.value_info.add().name = {target!r}"
    code = f"m.graph.value_info.extend([vi({target!r}, {elem}, {dims!r})])"
    if choice == "contradicting pair":
        code += f"\nm.graph.value_info.extend([vi({target!r}, {TensorProto.FLOAT}, {[3, 5]!r})])"
    return f"value_info {target}: {elem_name} {dims!r}" + (" (and a second one)" if choice == "contradicting pair" else ""), code


@mutation(4)
def mut_weight_dims(r, m):
    name = _pick_weight(r, m)
    if name is None:
        return None
    t = tensor(m, name)
    dims = list(t.dims)
    dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
    if dtype.kind != "f" or t.data_type == TensorProto.BFLOAT16:
        return None
    seed = r.int(1000)
    choice = r.pick(["regen", "regen", "add dim", "drop dim", "dims only", "drop dim only", "append 1", "reshape", "scalar"])
    new = list(dims)
    if choice in ("regen", "dims only") and dims:
        k = r.int(len(dims))
        new[k] = r.pick([0, 1, 2, max(dims[k] - 1, 0), dims[k] + 1, 2 * dims[k], 3])
        if choice == "dims only":
            return f"weight {name}: dims[{k}] {dims[k]} -> {new[k]} (data unchanged)", f"tensor(m, {name!r}).dims[{k}] = {new[k]}"
    elif choice == "add dim":
        new.insert(r.int(len(new) + 1), r.pick([1, 2, 3]))
    elif choice in ("drop dim", "drop dim only") and dims:
        k = r.int(len(dims))
        del new[k]
        if choice == "drop dim only":
            return f"weight {name}: drop dim {k} (data unchanged)", f"del tensor(m, {name!r}).dims[{k}]"
    elif choice == "append 1":
        return f"weight {name}: trailing dim 1 appended (data unchanged)", f"tensor(m, {name!r}).dims.append(1)"
    elif choice == "reshape" and len(dims) >= 2:
        new = [dims[0], int(np.prod(dims[1:]))] if len(dims) > 2 else [int(np.prod(dims))]
        return (f"weight {name}: reshaped {dims} -> {new} (same data)",
                f"_t = tensor(m, {name!r})\ndel _t.dims[:]\n_t.dims.extend({new!r})")
    elif choice == "scalar":
        return f"weight {name}: scalar 0.5", f"replace_tensor(m, {name!r}, np.array(0.5, {_np_dtype_expr(dtype)}))"
    else:
        return None
    if int(np.prod(new)) > MAX_WEIGHT_ELEMENTS:
        return None
    return (f"weight {name}: dims -> {new} (data regenerated)",
            f"replace_tensor(m, {name!r}, W({tuple(new)!r}, {seed}, {_np_dtype_expr(dtype)}))")


@mutation(4)
def mut_weight_values(r, m):
    name = _pick_weight(r, m)
    if name is None:
        return None
    t = tensor(m, name)
    if t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
        return None
    size = int(np.prod(t.dims)) if len(t.dims) else 1
    kind = r.pick(["nan_all", "nan_one", "inf_all", "inf_one", "neg_inf_one", "huge_all", "huge_one", "zeros",
                   "denormal", "rank1", "constant", "zero_row", "low_rank"])
    k = r.int(max(size, 1))
    body = {
        "nan_all": "_a[...] = np.nan", "inf_all": "_a[...] = np.inf", "huge_all": "_a[...] = 3e38",
        "nan_one": f"_a.reshape(-1)[{k}] = np.nan", "inf_one": f"_a.reshape(-1)[{k}] = np.inf",
        "neg_inf_one": f"_a.reshape(-1)[{k}] = -np.inf", "huge_one": f"_a.reshape(-1)[{k}] = 3e38",
        "zeros": "_a[...] = 0", "denormal": "_a[...] = _a * 1e-40", "constant": "_a[...] = 1.0",
        "rank1": "_a[...] = np.outer(np.arange(1, _a.shape[0] + 1), np.ones(_a[0].size)).reshape(_a.shape)",
        "zero_row": "_a[0] = 0",
        "low_rank": ("_u = W((_a.shape[0], 2), 7)\n_v = W((2, _a[0].size), 8)\n_a[...] = (_u @ _v).reshape(_a.shape)"),
    }[kind]
    if kind in ("rank1", "zero_row", "low_rank") and (not len(t.dims) or t.dims[0] == 0):
        return None
    if size == 0 and kind.endswith("_one"):
        return None
    code = f"_a = numpy_helper.to_array(tensor(m, {name!r})).copy()\n{body}\nreplace_tensor(m, {name!r}, _a)"
    return f"weight {name}: {kind}", code


@mutation(3)
def mut_weight_dtype(r, m):
    name = _pick_weight(r, m)
    if name is None:
        return None
    t = tensor(m, name)
    choice = r.pick(["astype", "astype", "bfloat16", "relabel", "float_data", "external missing"])
    if choice == "astype":
        target = r.pick(["float16", "float64", "float32", "int8", "int32", "int64", "uint8"])
        conv = (f"(numpy_helper.to_array(tensor(m, {name!r})).astype(np.float64) * 20).round().clip(-100, 100)"
                f".astype(np.{target})"
                if target.startswith(("int", "uint")) else f"numpy_helper.to_array(tensor(m, {name!r})).astype(np.{target})")
        return f"weight {name}: dtype -> {target}", f"replace_tensor(m, {name!r}, {conv})"
    if choice == "bfloat16":
        return (f"weight {name}: dtype -> bfloat16",
                f"_a = numpy_helper.to_array(tensor(m, {name!r})).astype(np.float32)\n"
                f"tensor(m, {name!r}).CopyFrom(helper.make_tensor({name!r}, TensorProto.BFLOAT16, _a.shape, _a.reshape(-1)))")
    if choice == "relabel":
        label, elem = _elem(r, ["UNDEFINED", "DOUBLE", "FLOAT16", "INT8", "STRING", "FLOAT", "BFLOAT16", "COMPLEX64"])
        return f"weight {name}: data_type relabelled {label} (bytes unchanged)", f"tensor(m, {name!r}).data_type = {elem}"
    if choice == "float_data":
        if t.data_type != TensorProto.FLOAT or not t.raw_data:
            return None
        return (f"weight {name}: stored in float_data instead of raw_data",
                f"_t = tensor(m, {name!r})\n_a = numpy_helper.to_array(_t)\n_t.ClearField('raw_data')\n"
                f"_t.float_data.extend(_a.reshape(-1).tolist())")
    location = r.pick(["missing.bin", "/nonexistent/weights.bin", "../outside.bin"])
    return (f"weight {name}: external data at {location!r} (missing)",
            f"_t = tensor(m, {name!r})\n_t.ClearField('raw_data')\n_t.ClearField('float_data')\n"
            f"_t.data_location = TensorProto.EXTERNAL\n_e = _t.external_data.add()\n_e.key = 'location'\n"
            f"_e.value = {location!r}")


@mutation(1.5)
def mut_whole_model_dtype(r, m):
    target = r.pick(["float16", "float16", "float64"])
    return (f"whole model -> {target.upper()} (float initializers, Constant values, float inputs/outputs)",
            f"to_float_type(m, np.{target})")


CONV_ATTRS = ("strides", "pads", "dilations", "group", "kernel_shape", "auto_pad")


@mutation(5)
def mut_conv_attr(r, m):
    convs = [i for i, n in enumerate(m.graph.node) if n.op_type == "Conv"]
    if not convs:
        return None
    i = r.pick(convs)
    n = m.graph.node[i]
    w = _tensor_or_none(m, n.input[1]) if len(n.input) > 1 else None
    k = max(len(w.dims) - 2, 1) if w is not None else 2
    attr = r.pick(CONV_ATTRS + ("delete", "unknown"))
    desc = f"node {i} (Conv {n.name}): "
    at = f"m.graph.node[{i}]"
    if attr == "delete":
        if not len(n.attribute):
            return None
        name = r.pick([a.name for a in n.attribute])
        return desc + f"attribute {name} deleted", f"del_attr({at}, {name!r})"
    if attr == "unknown":
        return desc + "unknown attribute foo=1", f"set_attr({at}, 'foo', 1)"
    if attr == "auto_pad":
        value = r.pick(["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET", "same_upper", "BOGUS", ""])
        return desc + f"auto_pad = {value!r}", f"set_attr({at}, 'auto_pad', {value!r})"
    if attr == "group":
        value = r.pick([0, 1, 2, 3, 4, 8, 16, -1, 1000, 2.0, [2]])
        return desc + f"group = {value!r}", f"set_attr({at}, 'group', {value!r})"
    length = {"pads": 2 * k}.get(attr, k)
    if r.chance(0.2):
        length = r.pick([0, length - 1, length + 1, 2 * length + 1])
    pool = {"strides": [0, 1, 1, 2, 3, -1, 7], "pads": [0, 0, 1, 2, 5, -1, 100], "dilations": [0, 1, 1, 2, 3, -1],
            "kernel_shape": [0, 1, 2, 3, 5, 7]}[attr]
    if attr == "kernel_shape" and w is not None and r.chance(0.3):
        value = list(w.dims[2:])[::-1] or [1]
    else:
        value = [r.pick(pool) for _ in range(max(length, 0))]
    wrong = r.pick([None, None, None, "int", "floats"])
    if wrong == "int":
        single = value[0] if value else 1
        return desc + f"{attr} = {single} (INT, not INTS)", f"set_attr({at}, {attr!r}, {single})"
    if wrong == "floats":
        floats = [float(v) for v in value] or [1.0]
        return desc + f"{attr} = {floats!r} (FLOATS)", f"set_attr({at}, {attr!r}, {floats!r})"
    if not value:
        return desc + f"{attr} = [] (empty INTS)", f"set_attr({at}, {attr!r}, [], onnx.AttributeProto.INTS)"
    return desc + f"{attr} = {value!r}", f"set_attr({at}, {attr!r}, {value!r})"


@mutation(3)
def mut_gemm_attr(r, m):
    gemms = [i for i, n in enumerate(m.graph.node) if n.op_type == "Gemm"]
    if not gemms:
        return None
    i = r.pick(gemms)
    n = m.graph.node[i]
    at = f"m.graph.node[{i}]"
    desc = f"node {i} (Gemm {n.name}): "
    attr = r.pick(["transA", "transB", "alpha", "beta", "delete", "broadcast"])
    if attr in ("transA", "transB"):
        current = next((a.i for a in n.attribute if a.name == attr), 0)
        value = r.pick([1 - current, 1 - current, 2, -1, 1.0, [1]])
        return desc + f"{attr} = {value!r}", f"set_attr({at}, {attr!r}, {value!r})"
    if attr in ("alpha", "beta"):
        value = r.pick([[1.0], [1.0, 2.0], 2, "1", 0.0, -1.0, float("nan"), float("inf"), 1e-30, 1e30])
        literal = {"nan": "float('nan')", "inf": "float('inf')"}.get(repr(value), repr(value))
        return desc + f"{attr} = {value!r}", f"set_attr({at}, {attr!r}, {literal})"
    if attr == "broadcast":
        return desc + "broadcast = 1 (opset < 7 attribute)", f"set_attr({at}, 'broadcast', 1)"
    if not len(n.attribute):
        return None
    name = r.pick([a.name for a in n.attribute])
    return desc + f"attribute {name} deleted", f"del_attr({at}, {name!r})"


@mutation(2)
def mut_other_attr(r, m):
    if not len(m.graph.node):
        return None
    i = r.int(len(m.graph.node))
    n = m.graph.node[i]
    at = f"m.graph.node[{i}]"
    desc = f"node {i} ({n.op_type} {n.name}): "
    choice = r.pick(["unknown", "all deleted", "flatten axis", "transB on MatMul", "ref_attr"])
    if choice == "unknown":
        value = r.pick([1, 1.5, "x", [1, 2], [0.5]])
        return desc + f"unknown attribute extra = {value!r}", f"set_attr({at}, 'extra', {value!r})"
    if choice == "all deleted":
        if not len(n.attribute) or n.op_type == "Constant":
            return None
        return desc + "all attributes deleted", f"del {at}.attribute[:]"
    if choice == "flatten axis":
        flats = [j for j, x in enumerate(m.graph.node) if x.op_type == "Flatten"]
        if not flats:
            return None
        j = r.pick(flats)
        value = r.pick([0, 2, 3, -1, 7])
        return f"node {j} (Flatten): axis = {value}", f"set_attr(m.graph.node[{j}], 'axis', {value})"
    if choice == "transB on MatMul":
        mms = [j for j, x in enumerate(m.graph.node) if x.op_type == "MatMul"]
        if not mms:
            return None
        j = r.pick(mms)
        return f"node {j} (MatMul): attribute transB = 1", f"set_attr(m.graph.node[{j}], 'transB', 1)"
    if not len(n.attribute):
        return None
    a = r.pick([x.name for x in n.attribute])
    return (desc + f"attribute {a} refers to a function attribute (ref_attr_name)",
            f"_a = next(x for x in {at}.attribute if x.name == {a!r})\n_a.ref_attr_name = 'missing'")


RENAMES_FIXED = ["", "x" * 300, "x" * 5000, "onnx::Conv_0", "a b/c:d", "名前/重み", "\t", "0", "w.enc", "y.dec"]


def _new_name(r: Rand, m, old: str) -> str:
    others = [t for t in _all_tensors(m) if t != old] + [n.name for n in m.graph.node if n.name]
    choice = r.pick(["fixed", "other", "suffix", "suffix", "suffix2"])
    if choice == "fixed" or not others:
        return r.pick(RENAMES_FIXED + ["x" * 70000])
    other = r.pick(others)
    if choice == "other":
        return other
    if choice == "suffix":
        return other + r.pick([".enc", ".dec"])
    return other + r.pick([".enc.1", ".dec.bias", ".enc.zero_bias", ".dec.zero_bias", ".enc.enc"])


@mutation(4)
def mut_rename_tensor(r, m):
    names = _all_tensors(m)
    if not names:
        return None
    old = r.pick(names)
    new = _new_name(r, m, old)
    shown = new if len(new) < 40 else f"{new[:8]}...({len(new)} chars)"
    return f"tensor {old!r} renamed {shown!r} everywhere", f"rename(m, {old!r}, {new!r})"


@mutation(2)
def mut_rename_node(r, m):
    if not len(m.graph.node):
        return None
    i = r.int(len(m.graph.node))
    n = m.graph.node[i]
    new = _new_name(r, m, n.name)
    shown = new if len(new) < 40 else f"{new[:8]}...({len(new)} chars)"
    return f"node {i} ({n.op_type} {n.name!r}) renamed {shown!r}", f"m.graph.node[{i}].name = {new!r}"


@mutation(2)
def mut_non_utf8(r, m):
    """A string field made invalid UTF-8 in the serialized bytes (protobuf refuses it in Python)."""
    mark = f"Zq{r.int(10**8):08d}Xk"
    bad = b"\xff\xfe" + mark.encode()[2:]
    raw = f"b = b.replace({mark.encode()!r}, {bad!r})"
    target = r.pick(["tensor", "tensor", "node", "dim_param", "graph name", "doc_string", "metadata", "producer"])
    if target == "tensor":
        names = _all_tensors(m)
        if not names:
            return None
        old = r.pick(names)
        return f"tensor {old!r} renamed with non-UTF-8 bytes", f"rename(m, {old!r}, {mark!r})", raw
    if target == "node":
        if not len(m.graph.node):
            return None
        i = r.int(len(m.graph.node))
        return f"node {i} name non-UTF-8", f"m.graph.node[{i}].name = {mark!r}", raw
    if target == "dim_param":
        idx = [i for i in _real_inputs(m) if _dims(m.graph.input[i])]
        if not idx:
            return None
        i = r.pick(idx)
        return (f"input {i} dim 0 -> non-UTF-8 dim_param",
                f"_d = m.graph.input[{i}].type.tensor_type.shape.dim[0]\n_d.Clear()\n_d.dim_param = {mark!r}", raw)
    if target == "graph name":
        return "graph name non-UTF-8", f"m.graph.name = {mark!r}", raw
    if target == "doc_string":
        if not len(m.graph.node):
            return None
        return "node 0 doc_string non-UTF-8", f"m.graph.node[0].doc_string = {mark!r}", raw
    if target == "metadata":
        return "metadata_props value non-UTF-8", f"_p = m.metadata_props.add()\n_p.key = 'k'\n_p.value = {mark!r}", raw
    return "producer_name non-UTF-8", f"m.producer_name = {mark!r}", raw


@mutation(4)
def mut_remove(r, m):
    choice = r.pick(["initializer", "initializer", "node", "node", "graph input", "constant node"])
    if choice == "initializer":
        if not len(m.graph.initializer):
            return None
        name = r.pick([t.name for t in m.graph.initializer])
        return f"initializer {name} removed", f"m.graph.initializer.remove(tensor(m, {name!r}))"
    if choice == "node":
        if not len(m.graph.node):
            return None
        i = r.int(len(m.graph.node))
        n = m.graph.node[i]
        return f"node {i} ({n.op_type} {n.name}) removed", f"set_nodes(m, [n for k, n in enumerate(m.graph.node) if k != {i}])"
    if choice == "constant node":
        consts = [i for i, n in enumerate(m.graph.node) if n.op_type == "Constant"]
        if not consts:
            return None
        i = r.pick(consts)
        return f"node {i} (Constant) removed", f"set_nodes(m, [n for k, n in enumerate(m.graph.node) if k != {i}])"
    idx = _real_inputs(m)
    if not idx:
        return None
    i = r.pick(idx)
    return f"graph input {i} ({m.graph.input[i].name}) removed", f"del m.graph.input[{i}]"


@mutation(3)
def mut_duplicate(r, m):
    choice = r.pick(["initializer same", "initializer other values", "initializer other dims", "node", "node fresh outputs",
                     "graph input"])
    if choice.startswith("initializer"):
        if not len(m.graph.initializer):
            return None
        name = r.pick([t.name for t in m.graph.initializer])
        t = tensor(m, name)
        if choice == "initializer same":
            return f"initializer {name} duplicated", f"m.graph.initializer.extend([tensor(m, {name!r})])"
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        if dtype.kind != "f" or t.data_type == TensorProto.BFLOAT16:
            return None
        dims = list(t.dims)
        if choice == "initializer other dims":
            dims = dims + [2] if r.chance(0.5) else dims[:-1]
        if int(np.prod(dims)) > MAX_WEIGHT_ELEMENTS:
            return None
        return (f"initializer {name} duplicated with {'other values' if dims == list(t.dims) else f'dims {dims}'}",
                f"m.graph.initializer.extend([init({name!r}, W({tuple(dims)!r}, {r.int(1000)}, {_np_dtype_expr(dtype)}))])")
    if choice == "graph input":
        idx = _real_inputs(m)
        if not idx:
            return None
        i = r.pick(idx)
        return f"graph input {i} ({m.graph.input[i].name}) listed twice", f"m.graph.input.extend([m.graph.input[{i}]])"
    if not len(m.graph.node):
        return None
    i = r.int(len(m.graph.node))
    n = m.graph.node[i]
    if choice == "node":
        return (f"node {i} ({n.op_type} {n.name}) duplicated (same outputs)",
                f"set_nodes(m, list(m.graph.node[:{i + 1}]) + [m.graph.node[{i}]] + list(m.graph.node[{i + 1}:]))")
    return (f"node {i} ({n.op_type} {n.name}) duplicated with fresh outputs",
            f"_n = onnx.NodeProto.FromString(m.graph.node[{i}].SerializeToString())\n"
            f"_n.output[:] = [o + '_dup' for o in _n.output]\nm.graph.node.extend([_n])")


@mutation(2)
def mut_order(r, m):
    count = len(m.graph.node)
    if count < 2:
        return None
    if r.chance(0.3):
        return "node list reversed", "set_nodes(m, list(m.graph.node)[::-1])"
    i, j = sorted(r.g.choice(count, 2, replace=False).tolist())
    return (f"nodes {i} and {j} swapped",
            f"_n = list(m.graph.node)\n_n[{i}], _n[{j}] = _n[{j}], _n[{i}]\nset_nodes(m, _n)")


OP_SWAPS = {"Constant": ["Conv", "MatMul", "Gemm"], "Flatten": ["Conv", "Gemm", "MatMul"], "Relu": ["Conv", "MatMul", "Gemm"],
            "Conv": ["ConvTranspose", "Gemm", "MatMul", "ConvInteger"], "Gemm": ["MatMul", "Conv", "QGemm"],
            "MatMul": ["Gemm", "Conv", "MatMulInteger", "FusedMatMul"], "Add": ["MatMul", "Conv", "Sub"],
            "Transpose": ["Identity", "MatMul"]}


@mutation(3)
def mut_op_type(r, m):
    if not len(m.graph.node):
        return None
    i = r.int(len(m.graph.node))
    n = m.graph.node[i]
    new = r.pick(OP_SWAPS.get(n.op_type, ["Conv", "Identity", "MatMul"]))
    return f"node {i} ({n.op_type}) op_type -> {new}", f"m.graph.node[{i}].op_type = {new!r}"


@mutation(4)
def mut_node_inputs(r, m):
    if not len(m.graph.node):
        return None
    layers = _layer_nodes(m)
    i = r.pick(layers) if layers and r.chance(0.7) else r.int(len(m.graph.node))
    n = m.graph.node[i]
    at = f"m.graph.node[{i}]"
    desc = f"node {i} ({n.op_type} {n.name}): "
    choice = r.pick(["remove last", "remove first", "add existing", "add empty", "empty slot", "other tensor",
                     "nonexistent", "self cycle", "later output", "bias reshaped"])
    tensors = _all_tensors(m)
    if choice == "remove last" and len(n.input):
        return desc + f"input {n.input[-1]!r} removed", f"del {at}.input[-1]"
    if choice == "remove first" and len(n.input):
        return desc + f"input {n.input[0]!r} removed", f"del {at}.input[0]"
    if choice == "add existing" and tensors:
        t = r.pick(tensors)
        return desc + f"extra input {t!r}", f"{at}.input.append({t!r})"
    if choice == "add empty":
        return desc + "extra empty input ''", f"{at}.input.append('')"
    if choice == "empty slot" and len(n.input):
        k = r.int(len(n.input))
        return desc + f"input {k} -> ''", f"{at}.input[{k}] = ''"
    if choice == "other tensor" and len(n.input) and tensors:
        k = r.int(len(n.input))
        t = r.pick(tensors)
        return desc + f"input {k} -> {t!r}", f"{at}.input[{k}] = {t!r}"
    if choice == "nonexistent" and len(n.input):
        k = r.int(len(n.input))
        return desc + f"input {k} -> 'ghost' (nonexistent)", f"{at}.input[{k}] = 'ghost'"
    if choice == "self cycle" and len(n.input) and len(n.output):
        return f"cycle: node {i} input 0 <- node {i} output", f"{at}.input[0] = {at}.output[0]"
    if choice == "later output" and len(n.input) and i + 1 < len(m.graph.node) and len(m.graph.node[-1].output):
        return (f"node {i} input 0 <- output of the last node (cycle or wrong order)",
                f"{at}.input[0] = m.graph.node[-1].output[0]")
    if choice == "bias reshaped" and n.op_type in ("Conv", "Gemm") and len(n.input) > 2:
        b = _tensor_or_none(m, n.input[2])
        if b is None or b.data_type != TensorProto.FLOAT:
            return None
        shape = r.pick([(1, int(np.prod(b.dims)) if len(b.dims) else 1), (int(np.prod(b.dims) or 1) + 8,), (1,), ()])
        return (desc + f"bias {n.input[2]} -> shape {shape}",
                f"replace_tensor(m, {n.input[2]!r}, W({shape!r}, {r.int(1000)}))")
    return None


@mutation(2)
def mut_node_outputs(r, m):
    if not len(m.graph.node):
        return None
    i = r.int(len(m.graph.node))
    n = m.graph.node[i]
    at = f"m.graph.node[{i}]"
    desc = f"node {i} ({n.op_type} {n.name}): "
    choice = r.pick(["extra", "empty", "to input", "to weight", "domain", "domain"])
    if choice == "extra":
        return desc + "extra output 'extra_out'", f"{at}.output.append('extra_out')"
    if choice == "empty" and len(n.output):
        return desc + "output 0 -> ''", f"{at}.output[0] = ''"
    if choice == "to input" and len(n.output) and _real_inputs(m):
        name = m.graph.input[_real_inputs(m)[0]].name
        return desc + f"output 0 -> graph input {name!r}", f"{at}.output[0] = {name!r}"
    if choice == "to weight" and len(n.output) and len(m.graph.initializer):
        name = r.pick([t.name for t in m.graph.initializer])
        return desc + f"output 0 -> initializer {name!r}", f"{at}.output[0] = {name!r}"
    if choice == "domain":
        domain = r.pick(["ai.onnx", "com.microsoft", "custom.domain", "ai.onnx.ml"])
        return desc + f"domain -> {domain}", f"{at}.domain = {domain!r}"
    return None


@mutation(3)
def mut_weight_indirection(r, m):
    layers = [i for i in _layer_nodes(m) if len(m.graph.node[i].input) > 1]
    if not layers:
        return None
    i = r.pick(layers)
    n = m.graph.node[i]
    slot = 1
    w = n.input[slot]
    choice = r.pick(["Identity", "Transpose twice", "Cast", "Reshape", "shared", "Dropout"])
    new = f"{w}_via"
    prefix = "_n = list(m.graph.node)\n"
    if choice == "Identity":
        nodes = f"[helper.make_node('Identity', [{w!r}], [{new!r}], name='ident')]"
    elif choice == "Transpose twice":
        nodes = (f"[helper.make_node('Transpose', [{w!r}], ['{w}_t'], name='t1'), "
                 f"helper.make_node('Transpose', ['{w}_t'], [{new!r}], name='t2')]")
    elif choice == "Cast":
        nodes = f"[helper.make_node('Cast', [{w!r}], [{new!r}], name='cast', to=TensorProto.FLOAT)]"
    elif choice == "Dropout":
        nodes = f"[helper.make_node('Dropout', [{w!r}], [{new!r}], name='drop')]"
    elif choice == "Reshape":
        t = _tensor_or_none(m, w)
        if t is None:
            return None
        nodes = (f"[helper.make_node('Constant', [], ['{w}_shape'], name='shape', "
                 f"value=init('{w}_shape', np.array({list(t.dims)!r}, np.int64))), "
                 f"helper.make_node('Reshape', [{w!r}, '{w}_shape'], [{new!r}], name='reshape')]")
    else:
        others = [x for x in _weights(m) if x != w]
        if not others:
            return None
        other = r.pick(others)
        return (f"node {i} ({n.op_type} {n.name}) uses weight {other!r} instead of {w!r}",
                f"m.graph.node[{i}].input[{slot}] = {other!r}")
    return (f"node {i} ({n.op_type} {n.name}): weight {w!r} through {choice}",
            prefix + f"_n[{i}].input[{slot}] = {new!r}\nset_nodes(m, {nodes} + _n)")


@mutation(3)
def mut_initializer_form(r, m):
    choice = r.pick(["as graph input", "as graph input wrong shape", "to Constant value", "to Constant floats",
                     "to Constant sparse", "Constant to initializer", "sparse initializer"])
    if choice == "Constant to initializer":
        consts = [i for i, n in enumerate(m.graph.node)
                  if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)]
        if not consts:
            return None
        i = r.pick(consts)
        return (f"Constant node {i} -> initializer",
                f"_c = m.graph.node[{i}]\n_t = onnx.TensorProto()\n"
                f"_t.CopyFrom(next(a.t for a in _c.attribute if a.name == 'value'))\n"
                f"_t.name = _c.output[0]\nm.graph.initializer.extend([_t])\n"
                f"set_nodes(m, [n for k, n in enumerate(m.graph.node) if k != {i}])")
    if not len(m.graph.initializer):
        return None
    weights = [w for w in _weights(m) if w in _init_names(m)]
    name = r.pick(weights) if weights and r.chance(0.8) else r.pick([t.name for t in m.graph.initializer])
    t = tensor(m, name)
    if choice.startswith("as graph input"):
        dims = list(t.dims) if choice == "as graph input" else list(t.dims) + [1]
        return (f"initializer {name} also listed as a graph input{' with a wrong shape' if dims != list(t.dims) else ''}",
                f"m.graph.input.extend([vi({name!r}, {t.data_type}, {dims!r})])")
    if choice == "sparse initializer":
        if t.data_type != TensorProto.FLOAT:
            return None
        return (f"initializer {name} -> sparse_initializer",
                f"_a = numpy_helper.to_array(tensor(m, {name!r}))\nm.graph.initializer.remove(tensor(m, {name!r}))\n"
                f"_idx = np.flatnonzero(_a).astype(np.int64)\n"
                f"_s = helper.make_sparse_tensor(init({name!r}, _a.reshape(-1)[_idx]), init({name!r} + '_idx', _idx), "
                f"list(_a.shape))\n"
                f"m.graph.sparse_initializer.extend([_s])")
    remove = f"_arr = numpy_helper.to_array(tensor(m, {name!r}))\nm.graph.initializer.remove(tensor(m, {name!r}))\n"
    if choice == "to Constant value":
        node = f"helper.make_node('Constant', [], [{name!r}], value=init({name!r}, _arr))"
        label = "value"
    elif choice == "to Constant floats":
        if t.data_type != TensorProto.FLOAT:
            return None
        node = f"helper.make_node('Constant', [], [{name!r}], value_floats=[float(v) for v in _arr.reshape(-1)])"
        label = "floats"
    else:
        if t.data_type != TensorProto.FLOAT:
            return None
        node = (f"helper.make_node('Constant', [], [{name!r}], sparse_value=helper.make_sparse_tensor("
                f"init('v', _arr.reshape(-1)), init('i', np.arange(_arr.size, dtype=np.int64)), list(_arr.shape)))")
        label = "sparse"
    return (f"initializer {name} -> Constant node ({label})",
            remove + f"_c = {node}\nset_nodes(m, [_c] + list(m.graph.node))")


@mutation(4)
def mut_model_level(r, m):
    choice = r.pick(["ir_version", "ir_version", "opset", "opset", "remove opset", "second opset", "custom domain",
                     "metadata", "doc_string", "no graph name"])
    if choice == "ir_version":
        value = r.pick([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 99, 2**31 - 1])
        return f"ir_version -> {value}", f"m.ir_version = {value}"
    defaults = [k for k, o in enumerate(m.opset_import) if o.domain in ("", "ai.onnx")]
    if choice == "opset":
        value = r.pick([1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 18, 19, 20, 21, 22, 23, 24, 25, 99])
        if not defaults:
            return f"ai.onnx opset {value} added", f"m.opset_import.add(domain='', version={value})"
        return f"ai.onnx opset -> {value}", f"m.opset_import[{defaults[0]}].version = {value}"
    if choice == "remove opset":
        if not defaults:
            return None
        return "ai.onnx opset import removed", f"del m.opset_import[{defaults[0]}]"
    if choice == "second opset":
        value = r.pick([7, 11, 13, 17, 21])
        return f"second ai.onnx opset entry {value}", f"m.opset_import.add(domain='ai.onnx', version={value})"
    if choice == "custom domain":
        return "opset import com.microsoft 1 added", "m.opset_import.add(domain='com.microsoft', version=1)"
    if choice == "metadata":
        return ("metadata_props: duplicated key, empty key",
                "for _k, _v in (('k', '1'), ('k', '2'), ('', 'empty')):\n"
                "    _p = m.metadata_props.add()\n    _p.key = _k\n    _p.value = _v")
    if choice == "doc_string":
        return "model doc_string 1 MB", "m.doc_string = 'd' * 1000000"
    return "graph name empty", "m.graph.name = ''"


def relax_outputs(r, m):
    """Graph output dims made symbolic and value_info dropped, so that a shape-changing mutation stays valid ONNX."""
    if not len(m.graph.output) and not len(m.graph.value_info):
        return None
    return ("graph output dims made symbolic, value_info dropped",
            "for _o in m.graph.output:\n"
            "    if _o.type.tensor_type.HasField('shape'):\n"
            "        for _k, _d in enumerate(_o.type.tensor_type.shape.dim):\n"
            "            _d.Clear()\n"
            "            _d.dim_param = 'out' + str(_k)\n"
            "del m.graph.value_info[:]")


@mutation(3, stage="bytes")
def mut_truncate(r, b):
    if len(b) < 2:
        return None
    keep = r.pick([0, 1, r.int(1, len(b)), r.int(1, len(b)), len(b) - 1, len(b) // 2])
    return f"serialized bytes truncated to {keep} of {len(b)}", f"b = b[:{keep}]"


@mutation(3, stage="bytes")
def mut_flip(r, b):
    if not b:
        return None
    count = r.pick([1, 1, 2, 4, 8])
    lines = ["b = bytearray(b)"]
    for _ in range(count):
        lines.append(f"b[{r.int(len(b))}] ^= {r.int(1, 256)}")
    lines.append("b = bytes(b)")
    return f"{count} bytes flipped", "\n".join(lines)


@mutation(1, stage="bytes")
def mut_append(r, b):
    choice = r.pick(["garbage", "concatenated twice", "zero range"])
    if choice == "garbage":
        junk = bytes(r.int(256) for _ in range(r.int(1, 33)))
        return f"{len(junk)} garbage bytes appended", f"b = b + {junk!r}"
    if choice == "concatenated twice":
        return "serialized model concatenated with itself (protobuf merges: repeated fields doubled)", "b = b + b"
    if len(b) < 4:
        return None
    start = r.int(len(b) - 1)
    length = r.int(1, min(64, len(b) - start) + 1)
    return f"bytes {start}..{start + length} zeroed", f"b = b[:{start}] + bytes({length}) + b[{start + length}:]"


# ---------------------------------------------------------------------------------------------
# Mutants: seed + mutations, built by running the same code the reproducer holds.
# ---------------------------------------------------------------------------------------------

_BASE_NS: Optional[dict] = None


def _base_namespace() -> dict:
    global _BASE_NS
    if _BASE_NS is None:
        ns: dict = {"__name__": "fuzz_mutant"}
        exec(PREAMBLE_IMPORTS, ns)
        for fn in HELPERS:
            ns[fn.__name__] = fn
        _BASE_NS = ns
    return dict(_BASE_NS)


class Mutant:
    """One mutant: which seed, which mutations (descriptions and code), which call, and its bytes."""

    def __init__(self, index: int, seed_name: str, mutations: list[str], model_code: list[str], bytes_code: list[str],
                 data: bytes, call: dict, cli: bool) -> None:
        self.index, self.seed_name, self.mutations = index, seed_name, mutations
        self.model_code, self.bytes_code, self.data, self.call, self.cli = model_code, bytes_code, data, call, cli

    def meta(self) -> dict:
        return {"index": self.index, "seed": self.seed_name, "mutations": self.mutations, "model_code": self.model_code,
                "bytes_code": self.bytes_code, "call": self.call, "cli": self.cli}


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def _seed_model(name: str, cache: dict = {}) -> onnx.ModelProto:  # noqa: B006 (a deliberate cache)
    if name not in cache:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cache[name] = SEEDS[name]()
    return _copy(cache[name])


def _valid(data: bytes) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        return True
    except Exception:
        return False


def make_mutant(run_seed: int, index: int, *, cli_rate: float = 0.0, seeds: Optional[list[str]] = None,
                keep_invalid: float = 0.5, attempts: int = 4) -> Mutant:
    """Mutant ``index`` of run ``run_seed``: the same for any mutant count, job count or order.

    Most mutations make a model that ``onnx.checker`` rejects, and the tool refuses those at the door;
    to reach further in, an invalid mutant is kept with probability ``keep_invalid`` only, else
    another one is drawn (up to ``attempts`` draws, each from its own seeded stream).
    """
    for attempt in range(attempts):
        r = Rand(np.random.default_rng([run_seed, index, attempt]))
        mutant = _draw_mutant(r, index, cli_rate, seeds)
        if attempt == attempts - 1 or r.chance(keep_invalid) or _valid(mutant.data):
            return mutant
    raise AssertionError("unreachable")


def _draw_mutant(r: "Rand", index: int, cli_rate: float, seeds: Optional[list[str]]) -> Mutant:
    names = seeds or list(SEEDS)
    seed_name = r.weighted({n: SEED_WEIGHTS[n] for n in names})
    m = _seed_model(seed_name)
    ns = _base_namespace()
    wanted = int(r.g.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    mutations: list[str] = []
    model_code: list[str] = []
    bytes_code: list[str] = []
    byte_gens: list[Callable] = []
    model_weights = {k: w for k, (w, _) in MODEL_MUTATIONS.items()}
    tries = 0
    while len(mutations) + len(byte_gens) < wanted and tries < 30:
        tries += 1
        if not byte_gens and r.chance(0.08):
            byte_gens.append(BYTES_MUTATIONS[r.weighted({k: w for k, (w, _) in BYTES_MUTATIONS.items()})][1])
            continue
        gen = MODEL_MUTATIONS[r.weighted(model_weights)][1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = gen(r, m)
            except Exception:
                out = None
            if out is None:
                continue
            trial = _copy(m)
            try:
                exec(out[1], {**ns, "m": trial})
                trial.SerializeToString()
            except Exception:
                continue
        m = trial
        mutations.append(out[0])
        model_code.append(out[1])
        if len(out) > 2 and out[2]:
            bytes_code.append(out[2])
    if mutations and r.chance(0.35):  # keep many mutants valid ONNX, to reach past the tool's input checks
        out = relax_outputs(r, m)
        if out is not None:
            exec(out[1], {**ns, "m": m})
            mutations.append(out[0])
            model_code.append(out[1])
    b = m.SerializeToString()
    for code in bytes_code:
        scope = {**ns, "b": b}
        exec(code, scope)
        b = scope["b"]
    for gen in byte_gens:
        out = gen(r, b)
        if out is None:
            continue
        scope = {**ns, "b": b}
        exec(out[1], scope)
        b = scope["b"]
        mutations.append(out[0])
        bytes_code.append(out[1])
    call = choose_call(r, b)
    cli = r.chance(cli_rate)
    return Mutant(index, seed_name, mutations, model_code, bytes_code, b, call, cli)


def _local_parse(data: bytes) -> Optional[onnx.ModelProto]:
    """The mutant as onnx.load would read it (None when it cannot be parsed or has external data)."""
    try:
        model = onnx.load_from_string(data)
    except Exception:
        return None
    for t in _all_tensor_protos(model.graph):
        if t.data_location == TensorProto.EXTERNAL:
            return None
    return model


def _all_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes of the graph and its subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values
            yield from a.tensors
            if a.HasField("g"):
                yield from _all_tensor_protos(a.g)
            for g in a.graphs:
                yield from _all_tensor_protos(g)


def _static_batch(model: onnx.ModelProto) -> int:
    """The first graph input's first dim when it is fixed (and small), else 0."""
    inits = _init_names(model)
    for v in model.graph.input:
        if v.name not in inits:
            dims = _dims(v)
            if dims and isinstance(dims[0], int) and 0 < dims[0] <= 64:
                return dims[0]
            return 0
    return 0


def choose_call(r: Rand, data: bytes) -> dict:
    """A random but valid-looking call: analyze, or compress with options (calibration when the bytes parse)."""
    if r.chance(0.2):
        return {"api": "analyze", "kwargs": {}, "calibration": None}
    kwargs: dict[str, Any] = {}
    target = r.pick(["keep_params", "keep_flops"])
    kwargs[target] = r.pick([1.0, 1.0, 0.5, 0.5, 0.25, 0.1, round(float(r.g.uniform(0.05, 1.0)), 3)])
    kwargs["method"] = r.pick(METHODS)
    if r.chance(0.2):
        kwargs["rank_multiple"] = 16
    if r.chance(0.3):
        kwargs["order"] = "pointwise-first"
    calibration = None
    parsed = _local_parse(data) if r.chance(0.3) else None
    if parsed is not None:
        count = r.int(1, 9)
        batch = _static_batch(parsed)
        if batch and r.chance(0.8):  # a count the fixed batch divides, as a user would give
            count = batch * r.int(1, 3)
        calibration = {"random": count, "seed": 0}
        if r.chance(0.15):
            kwargs["bias_correction"] = True
        if r.chance(0.1):
            kwargs["sequential"] = True
        if r.chance(0.1):
            kwargs["refit"] = False
    if calibration is not None:
        if r.chance(0.05):
            kwargs["sensitivity"] = True
        if r.chance(0.05):
            kwargs["shrinkage"] = False
        if r.chance(0.1):
            kwargs["calibration_batch_size"] = r.pick([1, 3])
    if r.chance(0.1):
        kwargs["error_measure"] = r.pick(["spectral", "spectral-sqrt-g", "frobenius"])
    if r.chance(0.1) and kwargs["method"] == "alds":
        kwargs["max_groups"] = r.pick([1, 2, 3])
    if r.chance(0.05):
        kwargs["exclude"] = [r.pick(["conv*", "*", "mm1", "gemm", "w*"])]
    if r.chance(0.2):
        shapes = _concrete_shapes(_local_parse(data))
        if shapes:
            kwargs["input_shapes"] = shapes
    return {"api": "compress", "kwargs": kwargs, "calibration": calibration}


def _concrete_shapes(model: Optional[onnx.ModelProto]) -> dict:
    """input_shapes for the dynamic graph inputs (symbolic dims 2), as a user would pass with --input-shape."""
    shapes = {}
    if model is None:
        return shapes
    try:
        inits = _init_names(model)
        for v in model.graph.input:
            if not isinstance(v.name, str) or v.name in inits or not re.fullmatch(r"[\w.]+", v.name):
                continue
            dims = _dims(v)
            if dims and any(not isinstance(d, int) for d in dims):
                shapes[v.name] = [d if isinstance(d, int) and d > 0 else 2 for d in dims]
    except Exception:  # names that are not valid UTF-8 come back as bytes, or worse
        return {}
    return shapes


def call_code(call: dict, model: str = "MODEL") -> str:
    args = [model] + [f"{k}={v!r}" for k, v in call["kwargs"].items()]
    if call.get("calibration"):
        cal = call["calibration"]
        args.append(f"calibration=load_inputs(onnx.load({model}), random={cal['random']}, seed={cal['seed']})")
    return f"onnx_alds.{call['api']}({', '.join(args)})"


def cli_args(call: dict, model: str, output: str) -> list[str]:
    if call["api"] == "analyze":
        return ["analyze", model]
    kw = call["kwargs"]
    args = ["compress", model, "-o", output]
    for key in ("keep_params", "keep_flops"):
        if key in kw:
            args += [f"--{key.replace('_', '-')}", repr(kw[key])]
    args += ["--method", kw.get("method", "alds"), "--order", kw.get("order", "spatial-first"),
             "--rank-multiple", str(kw.get("rank_multiple", 1))]
    if call.get("calibration"):
        args += ["--calibration-random", str(call["calibration"]["random"])]
    if kw.get("bias_correction"):
        args.append("--bias-correction")
    if kw.get("sequential"):
        args.append("--sequential")
    if kw.get("refit") is False:
        args.append("--no-refit")
    if kw.get("sensitivity"):
        args.append("--sensitivity")
    if kw.get("shrinkage") is False:
        args.append("--no-shrinkage")
    if "calibration_batch_size" in kw:
        args += ["--calibration-batch-size", str(kw["calibration_batch_size"])]
    if "error_measure" in kw:
        args += ["--error", kw["error_measure"]]
    if "max_groups" in kw:
        args += ["--max-groups", str(kw["max_groups"])]
    for name, dims in kw.get("input_shapes", {}).items():
        args += ["--input-shape", f"{name}:{'x'.join(str(d) for d in dims)}"]
    if kw.get("exclude"):
        args += ["--exclude", *kw["exclude"]]
    return args


# ---------------------------------------------------------------------------------------------
# Classification (the worker side): exceptions, returned models, CLI runs.
# ---------------------------------------------------------------------------------------------

def strip_ort_location(text: str) -> str:
    """ONNX Runtime's ``/onnxruntime_src/FILE:LINE function(signature) [with ...]`` prefixes removed, so the
    reason that follows them survives truncation."""
    while True:
        start = text.find("/onnxruntime_src/")
        if start < 0:
            return text
        k = text.find(" ", start)
        if k < 0:
            return text[:start]
        j = k + 1
        paren = text.find("(", j)
        if paren < 0 or not re.fullmatch(r"[\w:<>,&* ~]+", text[j:paren]) or "::" not in text[j:paren]:
            text = text[:start] + text[k + 1:]
            continue
        depth = 0
        for j in range(paren, len(text)):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
        j += 1
        rest = text[j:].lstrip()
        if rest.startswith("[with"):
            close = rest.find("]")
            rest = rest[close + 1:].lstrip() if close >= 0 else rest
        text = text[:start] + rest


def _one_line(text: Any, limit: int = 400) -> str:
    text = " ".join(strip_ort_location(str(text)).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _package_dir() -> str:
    import onnx_alds

    return os.path.dirname(os.path.realpath(onnx_alds.__file__)) + os.sep


def innermost_frame(frames: Iterable[tuple[str, int, str]]) -> str:
    """``onnx_alds/file.py:LINE function`` of the innermost frame inside the package, '' if none."""
    pkg = _package_dir()
    found = ""
    for filename, line, name in frames:
        path = os.path.realpath(filename)
        if path.startswith(pkg):
            found = f"onnx_alds/{path[len(pkg):]}:{line} {name}"
    return found


def frame_key(frame: str) -> str:
    """The frame without its line number (lines move while the code is edited)."""
    return re.sub(r":\d+ ", ":", frame)


def result(outcome: str, kind: str = "", exc: str = "", frame: str = "", message: str = "", **extra) -> dict:
    return {"outcome": outcome, "kind": kind, "exc": exc, "frame": frame, "message": _one_line(message), **extra}


def classify_exception(exc: BaseException) -> dict:
    """CLEAN_ERROR for an OnnxAldsError with a one-line message; any other exception is a TRACEBACK."""
    from onnx_alds.errors import OnnxAldsError

    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    frame = innermost_frame(frames)
    name = type(exc).__name__
    if isinstance(exc, OnnxAldsError):
        text = str(exc)
        if text.strip() and "\n" not in text.strip():
            return result(CLEAN_ERROR, exc=name, frame=frame, message=text)
        return result(FAILURE, "BAD_MESSAGE", name, frame, f"{name} message is empty or not one line: {text[:300]!r}")
    return result(FAILURE, "TRACEBACK", name, frame, f"{name}: {exc}")


def _session(data: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def make_feeds(model: onnx.ModelProto, seed: int = 0) -> Optional[dict]:
    """Random inputs for the model's graph inputs (dynamic dims 1), or None when none can be made."""
    rng = np.random.default_rng(seed)
    inits = _init_names(model)
    feeds: dict[str, np.ndarray] = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        if v.name in feeds or not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            return None
        elem = v.type.tensor_type.elem_type
        if elem in (TensorProto.BFLOAT16, TensorProto.STRING, TensorProto.UNDEFINED) or elem >= TensorProto.FLOAT8E4M3FN:
            return None
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        except Exception:
            return None
        shape = []
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                if d.dim_value < 0:
                    return None
                shape.append(int(d.dim_value))
            else:
                shape.append(1)
        if math.prod(shape) > MAX_FEED_ELEMENTS:
            return None
        if dtype.kind == "f":
            feeds[v.name] = np.asarray(rng.standard_normal(shape)).astype(dtype)
        elif dtype.kind in "iu":
            feeds[v.name] = np.asarray(rng.integers(0, 3, shape)).astype(dtype)
        elif dtype.kind == "b":
            feeds[v.name] = np.asarray(rng.random(shape) < 0.5)
        else:
            return None
    return feeds


def _kernel_missing(message: str) -> bool:
    return "NOT_IMPLEMENTED" in message or "Could not find an implementation" in message


def check_output(reference: Optional[onnx.ModelProto], produced: Any, *, dense_only: bool = False,
                 phase: Callable[[str], None] = lambda name: None, depth: Optional[dict] = None) -> Optional[dict]:
    """None when the returned model is fine, else the FAILURE result (INVALID_OUTPUT, IO_CHANGED, ORT_REFUSED, WRONG_VALUES).

    ``reference``: the model as given to the tool (None when it could not be parsed). ``dense_only``:
    no layer was factorized, so the outputs must equal the original's.
    """
    depth = {} if depth is None else depth
    depth["checked"] = "checker"
    if not isinstance(produced, onnx.ModelProto):
        return result(FAILURE, "INVALID_OUTPUT", message=f"returned {type(produced).__name__}, not an onnx.ModelProto")
    phase("checker")
    try:
        onnx.checker.check_model(produced, full_check=True)
    except Exception as exc:
        return result(FAILURE, "INVALID_OUTPUT", type(exc).__name__, message=str(exc))
    if reference is not None:
        for what in ("input", "output"):
            before, after = io_signature(getattr(reference.graph, what)), io_signature(getattr(produced.graph, what))
            if before != after:
                return result(FAILURE, "IO_CHANGED", message=f"graph {what}s changed: {before} -> {after}")
    depth["checked"] = "loaded"
    phase("ort_load")
    try:
        data = produced.SerializeToString()
        session = _session(data)
    except Exception as exc:
        message = str(exc)
        if reference is not None and _kernel_missing(message):
            phase("reference")
            try:
                _session(reference.SerializeToString())
            except Exception as ref_exc:
                if _kernel_missing(str(ref_exc)):
                    return None  # ONNX Runtime has no kernel for the original either: not the tool's doing
        return result(FAILURE, "ORT_REFUSED", type(exc).__name__, message=message)
    if reference is None:
        return None
    feeds = make_feeds(reference)
    if feeds is None:
        return None
    phase("reference")
    try:
        expected = _session(reference.SerializeToString()).run(None, feeds)
    except Exception:
        return None  # the original does not run: loading the output was all we could ask
    phase("ort_run")
    depth["checked"] = "ran"
    try:
        got = session.run(None, feeds)
    except Exception as exc:
        return result(FAILURE, "ORT_REFUSED", type(exc).__name__, message=f"run on the original's inputs: {exc}")
    names = [o.name for o in produced.graph.output]
    for name, a, b in zip(names, expected, got):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return result(FAILURE, "IO_CHANGED", message=f"output {name!r} on the same inputs: {a.dtype}{list(a.shape)} "
                                                         f"-> {b.dtype}{list(b.shape)}")
        if a.dtype.kind != "f":
            continue
        with np.errstate(all="ignore"):
            if np.isfinite(a).all() and not np.isfinite(b).all():
                return result(FAILURE, "WRONG_VALUES", message=f"output {name!r} has NaN/Inf where the original's is finite")
            if dense_only and not np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-3, atol=1e-4, equal_nan=True):
                diff = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                return result(FAILURE, "WRONG_VALUES", message=f"no layer factorized but output {name!r} differs "
                                                               f"from the original's (max abs diff {diff:.3g})")
    return None


_TB_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def classify_cli(returncode: int, stderr: str, *, output_written: bool = False) -> dict:
    """OK / CLEAN_ERROR / FAILURE (CLI_STDERR) of one CLI run, from its exit code and stderr."""
    stderr = re.sub(r"\x1b\[[0-9;]*m", "", stderr)  # ONNX Runtime colours its log lines
    lines = [line for line in stderr.splitlines() if line.strip()]
    frames = [(f, int(n), fn) for f, n, fn in _TB_FRAME.findall(stderr)]
    frame = innermost_frame(frames)
    exc = ""
    if "Traceback (most recent call last)" in stderr and lines:
        exc = lines[-1].split(":", 1)[0].strip().rsplit(".", 1)[-1]
    if returncode == 0:
        return result(OK)
    if returncode == 1:
        if len(lines) == 1 and lines[0].startswith("error: "):
            if output_written:
                return result(FAILURE, "CLI_STDERR", message=f"exit 1 but the output file was written: {lines[0]}")
            return result(CLEAN_ERROR, message=lines[0])
        if exc:
            return result(FAILURE, "CLI_STDERR", exc, frame, f"exit 1; traceback on stderr: {lines[-1]}")
        return result(FAILURE, "CLI_STDERR", message=f"exit 1; stderr is not one 'error:' line ({len(lines)} lines): "
                                                     + " | ".join(lines[-3:]))
    tail = " | ".join(lines[-2:])
    if returncode < 0:
        return result(FAILURE, "CRASH", exc, frame, f"CLI killed by signal {-returncode}; stderr tail: {tail}")
    return result(FAILURE, "CLI_STDERR", exc, frame, f"exit {returncode}; stderr tail: {tail}")


# ---------------------------------------------------------------------------------------------
# The worker: one task at a time, reporting its phase to the parent (for timeouts and crashes).
# ---------------------------------------------------------------------------------------------

class HarnessError(Exception):
    """The harness's own step failed (never the tool's failure)."""


def _run_call(call: dict, path: str):
    import onnx_alds
    from onnx_alds.inputs import load_inputs

    api = call["api"]
    if api == "_test_raise":  # the harness's own tests
        raise ValueError("raised on purpose")
    if api == "_test_clean":
        from onnx_alds.errors import UnsupportedModelError
        raise UnsupportedModelError("refused on purpose")
    if api == "_test_sleep":
        time.sleep(call["seconds"])
        return None
    if api == "_test_crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if api == "_test_return":
        return onnx.load_from_string(call["model"]), bool(call.get("dense_only"))
    if api == "analyze":
        report = onnx_alds.analyze(path, **call["kwargs"])
        report.format()
        return None
    kwargs = dict(call["kwargs"])
    if call.get("calibration"):
        try:
            parsed = onnx.load(path)  # the harness's part of the call line, not the tool's
        except Exception as exc:
            raise HarnessError(f"onnx.load of the mutant failed: {type(exc).__name__}: {exc}") from None
        kwargs["calibration"] = load_inputs(parsed, **call["calibration"])
    compressed = onnx_alds.compress(path, **kwargs)
    compressed.report.format()
    compressed.report.to_dict()
    try:
        from onnx_alds.allocate import DENSE
        dense_only = all(row.groups == DENSE for row in compressed.report.layers)
    except Exception:
        dense_only = False
    return compressed.model, dense_only


def run_task(task: dict, workdir: str, timeout: float, send_phase: Callable[[str], None],
             dump_file=None) -> dict:
    """Run one mutant's call (and CLI run), classify it. ``dump_file``: where a hang's stack goes."""
    started = time.perf_counter()
    path = os.path.join(workdir, "mutant.onnx")
    with open(path, "wb") as handle:
        handle.write(task["data"])
    digest = hashlib.sha256(task["data"]).hexdigest()
    reference = _local_parse(task["data"])
    call = task["call"]
    send_phase("call")
    if dump_file is not None:
        dump_file.seek(0)
        dump_file.truncate()
        faulthandler.dump_traceback_later(timeout, exit=True, file=dump_file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            returned = _run_call(call, path)
        outcome = None
    except HarnessError as exc:
        returned = None
        outcome = result(UNCHECKED, "HARNESS", message=str(exc))
    except (Exception, SystemExit) as exc:  # SystemExit: a library calling sys.exit is a failure too
        returned = None
        outcome = classify_exception(exc)
    finally:
        if dump_file is not None:
            faulthandler.cancel_dump_traceback_later()
    with open(path, "rb") as handle:
        if hashlib.sha256(handle.read()).hexdigest() != digest:
            outcome = result(FAILURE, "INPUT_MODIFIED", message="the input model file was modified by the call")
    if outcome is None:
        outcome = result(OK, checked="report")
        if returned is not None:
            model, dense_only = returned
            depth: dict = {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bad = check_output(reference, model, dense_only=dense_only, phase=send_phase, depth=depth)
            outcome = bad if bad is not None else result(OK, checked=depth.get("checked", ""))
    if task.get("cli") and outcome["outcome"] != FAILURE and not call["api"].startswith("_test"):
        send_phase("cli")
        cli = run_cli(call, path, workdir, timeout, reference)
        if cli["outcome"] == FAILURE:
            cli["via"] = "cli"
            outcome = cli
    outcome["seconds"] = round(time.perf_counter() - started, 3)
    return outcome


def run_cli(call: dict, path: str, workdir: str, timeout: float, reference: Optional[onnx.ModelProto]) -> dict:
    output = os.path.join(workdir, "out.onnx")
    if os.path.exists(output):
        os.remove(output)
    command = [sys.executable, "-m", "onnx_alds.cli"] + cli_args(call, path, output)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(command, capture_output=True, timeout=timeout, env=env, cwd=workdir,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return result(FAILURE, "HANG", message=f"CLI: no answer after {timeout:g} s")
    stderr = proc.stderr.decode("utf-8", "replace")
    verdict = classify_cli(proc.returncode, stderr, output_written=os.path.exists(output))
    if verdict["outcome"] == OK and call["api"] == "compress":
        try:
            written = onnx.load(output)
        except Exception as exc:
            return result(FAILURE, "CLI_STDERR", message=f"exit 0 but the output cannot be read: {exc}")
        bad = check_output(reference, written)
        if bad is not None:
            bad["message"] = "CLI output: " + bad["message"]
            return bad
    return verdict


def _limit_memory(megabytes: int) -> None:
    if megabytes > 0:
        limit = megabytes * 2**20
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass


def _worker_main(conn, workdir: str, timeout: float, memory_mb: int) -> None:
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    os.chdir(workdir)  # whatever the tool or ONNX Runtime writes to the current folder stays in the scratch folder
    log = open(os.path.join(workdir, "worker.log"), "ab", buffering=0)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    dump = open(os.path.join(workdir, "dump.txt"), "w+")
    faulthandler.enable(file=dump)
    _limit_memory(memory_mb)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except Exception:
        pass
    try:
        import onnxruntime as ort
        ort.set_default_logger_severity(3)
    except Exception:
        pass
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            outcome = run_task(task, workdir, timeout, lambda name: conn.send(("phase", name)), dump)
        except Exception as exc:  # a harness bug: report it, never a tool failure
            outcome = result(UNCHECKED, "HARNESS", type(exc).__name__, message=f"harness error: {exc}")
        conn.send(("done", outcome))


# ---------------------------------------------------------------------------------------------
# The pool: N forked workers, per-phase deadlines, respawn after a hang or a crash.
# ---------------------------------------------------------------------------------------------

class _Worker:
    def __init__(self, ctx, slot: int, root: str, timeout: float, memory_mb: int) -> None:
        self.workdir = os.path.join(root, f"worker{slot}")
        os.makedirs(self.workdir, exist_ok=True)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, self.workdir, timeout, memory_mb), daemon=True)
        self.proc.start()
        child.close()
        self.task: Optional[dict] = None
        self.phase = "idle"
        self.since = 0.0
        self.call_started = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(5)
        self.conn.close()

    def dump(self) -> str:
        try:
            with open(os.path.join(self.workdir, "dump.txt")) as handle:
                return handle.read()
        except OSError:
            return ""


def _dump_frame(dump: str) -> str:
    """Innermost onnx_alds frame of a faulthandler dump (most recent call first)."""
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', dump)
    return innermost_frame([(f, int(n), fn) for f, n, fn in reversed(frames)])


def _died(worker: _Worker, timeout: float, killed: bool) -> dict:
    """The result of a task whose worker died (watchdog exit, kill on a deadline, or a crash)."""
    dump = worker.dump()
    phase = worker.phase
    frame = _dump_frame(dump)
    code = worker.proc.exitcode
    hung = killed or dump.startswith("Timeout")
    if phase in ("call", "cli", "start"):
        if hung:
            return result(FAILURE, "HANG", frame=frame, message=f"timeout: no answer after {timeout:g} s"
                                                                 + (f" (in {frame})" if frame else ""))
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return result(FAILURE, "CRASH", frame=frame,
                      message=f"worker died ({how}) in the call" + (f" at {frame}" if frame else ""))
    what = "hung" if hung else "crashed"
    if phase == "checker":
        return result(FAILURE, "INVALID_OUTPUT", message=f"onnx.checker {what} on the returned model")
    if phase in ("ort_load", "ort_run"):
        return result(FAILURE, "ORT_REFUSED", message=f"ONNX Runtime {what} on the returned model ({phase})")
    return result(UNCHECKED, "HARNESS", message=f"harness {what} in phase {phase}")


class Pool:
    """Run tasks in ``jobs`` forked workers; a call past ``timeout`` s is a HANG, a dead worker a CRASH."""

    def __init__(self, jobs: int, timeout: float, *, memory_mb: int = 4096, check_timeout: float = 60.0) -> None:
        self.jobs, self.timeout, self.memory_mb, self.check_timeout = max(1, jobs), timeout, memory_mb, check_timeout
        self.ctx = multiprocessing.get_context("fork")
        self.root = tempfile.mkdtemp(prefix="onnx-alds-fuzz-")

    def _deadline(self, w: _Worker) -> float:
        if w.phase in ("call", "start"):
            return w.since + self.timeout + 10.0
        if w.phase == "cli":
            return w.since + self.timeout + 15.0
        return w.since + self.check_timeout

    def run(self, tasks: Iterator[dict], on_result: Callable[[dict, dict], None]) -> None:
        # Import before forking, so that every (re)spawned worker starts warm.
        import onnx_alds  # noqa: F401
        import onnx_alds.inputs  # noqa: F401
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass
        workers = [_Worker(self.ctx, k, self.root, self.timeout, self.memory_mb) for k in range(self.jobs)]
        exhausted = False
        try:
            while True:
                for k, w in enumerate(workers):
                    if w.task is None and not exhausted:
                        task = next(tasks, None)
                        if task is None:
                            exhausted = True
                            break
                        w.task, w.phase, w.since = task, "start", time.monotonic()
                        w.call_started = w.since
                        w.conn.send(task)
                busy = [w for w in workers if w.task is not None]
                if not busy:
                    break
                now = time.monotonic()
                wait = max(0.0, min(self._deadline(w) for w in busy) - now)
                ready = multiprocessing.connection.wait([w.conn for w in busy], timeout=min(wait, 1.0))
                for conn in ready:
                    k = next(i for i, w in enumerate(workers) if w.conn is conn)
                    w = workers[k]
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):
                        w.proc.join(5)
                        outcome = _died(w, self.timeout, killed=False)
                        outcome["seconds"] = round(time.monotonic() - w.call_started, 3)
                        on_result(w.task, outcome)
                        w.kill()
                        workers[k] = _Worker(self.ctx, k, self.root, self.timeout, self.memory_mb)
                        continue
                    if message[0] == "phase":
                        w.phase, w.since = message[1], time.monotonic()
                        if message[1] == "call":
                            w.call_started = w.since
                    else:
                        on_result(w.task, message[1])
                        w.task, w.phase = None, "idle"
                now = time.monotonic()
                for k, w in enumerate(workers):
                    if w.task is not None and now > self._deadline(w):
                        w.kill()
                        outcome = _died(w, self.timeout, killed=True)
                        outcome["seconds"] = round(time.monotonic() - w.call_started, 3)
                        on_result(w.task, outcome)
                        workers[k] = _Worker(self.ctx, k, self.root, self.timeout, self.memory_mb)
        finally:
            for w in workers:
                try:
                    w.conn.send(None)
                except (OSError, ValueError):
                    pass
            for w in workers:
                w.proc.join(2)
                if w.proc.is_alive():
                    w.kill()
            shutil.rmtree(self.root, ignore_errors=True)


def run_tasks(tasks: list[dict], *, jobs: int = 2, timeout: float = 20.0, memory_mb: int = 4096) -> list[dict]:
    """Outcomes of ``tasks`` (dicts with ``data``, ``call`` and optionally ``cli``), in order."""
    tasks = [{"index": k, "seed": "", "mutations": [], "model_code": [], "bytes_code": [], "cli": False, **task}
             for k, task in enumerate(tasks)]
    outcomes: dict[int, dict] = {}
    Pool(jobs, timeout, memory_mb=memory_mb).run(iter(tasks), lambda task, outcome: outcomes.__setitem__(task["index"], outcome))
    return [outcomes[k] for k in range(len(tasks))]


# ---------------------------------------------------------------------------------------------
# Grouping failures, reproducers, the summary.
# ---------------------------------------------------------------------------------------------

def normalize_message(message: str) -> str:
    """The message with names, numbers and source locations blurred, for grouping."""
    text = message
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : ", "", text)
    text = re.sub(r"Non-zero status code returned while running (\S+) node\. Name:'[^']*' Status Message: ",
                  r"running \1: ", text)
    text = strip_ort_location(text)
    text = re.sub(r"\[ShapeInferenceError\] Inference error\(s\): ", "", text)
    text = re.sub(r"node name: [^)]*\)", "node)", text)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\d+", "N", text)
    return " ".join(text.split())


def group_key(outcome: dict) -> str:
    kind, exc, frame = outcome["kind"], outcome.get("exc", ""), outcome.get("frame", "")
    if kind in ("TRACEBACK", "BAD_MESSAGE") or (kind in ("HANG", "CRASH", "CLI_STDERR") and frame):
        return f"{kind}|{exc}|{frame_key(frame)}"
    words = " ".join(normalize_message(outcome.get("message", "")).split()[:12])
    return f"{kind}|{exc}|{words}"


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9]+", "_", text)).strip("_")[:limit]


def reproducer_name(number: int, outcome: dict) -> str:
    kind = outcome["kind"].lower()
    parts = [f"{number:02d}", kind]
    if outcome.get("exc"):
        parts.append(outcome["exc"])
    if outcome.get("frame"):
        parts.append(outcome["frame"].rsplit(" ", 1)[-1])
    else:
        parts.append(" ".join(normalize_message(outcome.get("message", "")).split()[:8]))
    return _slug("_".join(_slug(p) for p in parts if p), 90) + ".py"


def reproducer_text(meta: dict, outcome: dict, run_seed: int) -> str:
    where = outcome.get("frame") or _one_line(normalize_message(outcome.get("message", "")), 60)
    head = f"{outcome['kind']} {outcome.get('exc', '')}".replace("  ", " ").strip()
    call = meta["call"]
    lines = [f"# Fuzz reproducer: {head} at {where}; writes the mutant model to argv[1] "
             f"(add --compress to run the call{', --cli to run the CLI' if meta.get('cli') else ''}).",
             f"# Seed: {meta['seed']}; mutations:"]
    lines += [f"#   - {_one_line(d, 200)}" for d in meta["mutations"]] or ["#   - (none)"]
    lines.append(f"# Call: {call_code(call)}")
    if meta.get("cli"):
        lines.append(f"#   CLI: onnx-alds {' '.join(cli_args(call, 'MODEL', 'OUT'))}")
    lines.append(f"# Observed: {_one_line(outcome.get('message', ''), 600)}")
    lines.append(f"# Found by: python tools/fuzz.py --seed {run_seed} (mutant {meta['index']}); group: {group_key(outcome)}")
    body = [PREAMBLE_IMPORTS]
    body += [_SOURCES[fn.__name__] for fn in HELPERS]
    body.append(seed_source(meta["seed"]))
    mutant = ["def mutant():", "    m = seed()"]
    for code in meta["model_code"]:
        mutant += ["    " + line for line in code.splitlines()]
    mutant.append("    b = m.SerializeToString()")
    for code in meta["bytes_code"]:
        mutant += ["    " + line for line in code.splitlines()]
    mutant.append("    return b")
    body.append("\n".join(mutant) + "\n")
    run = ["if __name__ == \"__main__\":", "    import sys", "    MODEL = sys.argv[1]",
           "    with open(MODEL, 'wb') as handle:", "        handle.write(mutant())",
           "    if '--compress' in sys.argv[2:]:", "        import onnx_alds", "        from onnx_alds.inputs import load_inputs"]
    if call["api"] == "analyze":
        run += [f"        report = {call_code(call)}", "        print(report.format())"]
    else:
        run += [f"        result = {call_code(call)}", "        print(result.report.format())",
                "        check(MODEL, result.model)"]
    if meta.get("cli"):
        run += ["    if '--cli' in sys.argv[2:]:", "        import subprocess",
                f"        command = [sys.executable, '-m', 'onnx_alds.cli'] + {cli_args(call, 'MODEL', 'OUT')!r}",
                "        command = [MODEL if a == 'MODEL' else MODEL + '.out.onnx' if a == 'OUT' else a for a in command]",
                "        proc = subprocess.run(command, capture_output=True, text=True)",
                "        print('exit', proc.returncode)", "        print(proc.stderr, end='')"]
    return "\n".join(lines) + "\n\n" + "\n\n".join(body) + "\n\n" + "\n".join(run) + "\n"


def reproducer_bytes(text: str) -> bytes:
    """What a reproducer's ``mutant()`` returns (run in-process, for checking a reproducer's fidelity)."""
    scope: dict = {"__name__": "fuzz_reproducer"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(text, "<reproducer>", "exec"), scope)
        return scope["mutant"]()


def _rank(meta: dict) -> tuple:
    call = meta["call"]
    return (len(meta["mutations"]), bool(call.get("calibration")), len(call.get("kwargs", {})),
            SEED_WEIGHTS.get(meta["seed"], 1.0) < 1.0, bool(meta.get("cli")), meta["index"])


def run_fuzz(*, seed: int = 0, mutants: int = 300, start: int = 0, jobs: int = 2, timeout: float = 20.0,
             cli_rate: float = 0.1, out: Optional[os.PathLike] = None, memory_mb: int = 4096,
             seeds: Optional[list[str]] = None, progress: Optional[Callable[[int, int, dict], None]] = None) -> dict:
    """Fuzz ``mutants`` mutants (indexes start .. start+mutants-1); return the summary (and write it under ``out``)."""
    started = time.time()
    counts: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    groups: dict[str, dict] = {}
    records: list[dict] = []
    unchecked: list[dict] = []

    def tasks() -> Iterator[dict]:
        for index in range(start, start + mutants):
            try:
                m = make_mutant(seed, index, cli_rate=cli_rate, seeds=seeds)
            except Exception as exc:  # a harness bug: count it, keep going
                on_result({"index": index, "seed": "", "mutations": [], "model_code": [], "bytes_code": [],
                           "call": {"api": "none", "kwargs": {}}, "cli": False, "data": b""},
                          result(UNCHECKED, "HARNESS", type(exc).__name__,
                                 message=f"mutant generation failed: {type(exc).__name__}: {exc}"))
                continue
            yield {**m.meta(), "data": m.data}

    def on_result(task: dict, outcome: dict) -> None:
        meta = {k: v for k, v in task.items() if k != "data"}
        counts[outcome["outcome"]] += 1
        record = {"index": meta["index"], "seed": meta["seed"], "mutations": meta["mutations"],
                  "call": call_code(meta["call"]), "cli": meta["cli"], **outcome}
        records.append(record)
        if outcome["outcome"] == UNCHECKED:
            unchecked.append(record)
        if outcome["outcome"] == FAILURE:
            kinds[outcome["kind"]] += 1
            key = group_key(outcome)
            group = groups.setdefault(key, {"key": key, "count": 0, "meta": meta, "outcome": outcome, "data": task["data"]})
            group["count"] += 1
            if _rank(meta) < _rank(group["meta"]):
                group.update(meta=meta, outcome=outcome, data=task["data"])
        if progress is not None:
            progress(len(records), mutants, record)

    interrupted = False
    try:
        Pool(jobs, timeout, memory_mb=memory_mb).run(tasks(), on_result)
    except KeyboardInterrupt:  # Ctrl-C: write what finished (below), then stop as asked
        interrupted = True
    seconds = time.time() - started
    failures = []
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("[0-9][0-9]_*"):
            if old.suffix in (".py", ".onnx"):
                old.unlink()
    ordered = sorted(groups.values(), key=lambda g: (KINDS.index(g["outcome"]["kind"]) if g["outcome"]["kind"] in KINDS
                                                     else 99, g["key"]))
    for number, group in enumerate(ordered, 1):
        outcome, meta = group["outcome"], group["meta"]
        entry = {"id": number, "key": group["key"], "kind": outcome["kind"], "exc": outcome.get("exc", ""),
                 "frame": outcome.get("frame", ""), "message": outcome.get("message", ""), "count": group["count"],
                 "example": meta["index"], "seed": meta["seed"], "mutations": meta["mutations"],
                 "call": call_code(meta["call"]), "via": outcome.get("via", "api")}
        if meta.get("cli"):
            entry["cli"] = "onnx-alds " + " ".join(cli_args(meta["call"], "MODEL", "OUT"))
        if out_dir is not None:
            text = reproducer_text(meta, outcome, seed)
            path = out_dir / reproducer_name(number, outcome)
            path.write_text(text)
            (out_dir / (path.stem + ".onnx")).write_bytes(group["data"])
            entry["reproducer"] = str(path)
            try:
                entry["reproducer_faithful"] = reproducer_bytes(text) == group["data"]
            except Exception as exc:
                entry["reproducer_faithful"] = f"error: {exc}"
        failures.append(entry)
    summary = {
        "seed": seed, "start": start, "mutants": mutants, "jobs": jobs, "timeout": timeout, "cli_rate": cli_rate,
        "seconds": round(seconds, 1), "seconds_per_mutant": round(seconds / max(mutants, 1), 3),
        "outcomes": {k: counts.get(k, 0) for k in OUTCOMES}, "failure_kinds": dict(kinds),
        "ok_checked": dict(collections.Counter(r.get("checked", "") for r in records if r["outcome"] == OK)),
        "distinct_failures": len(failures), "failures": failures,
        "unchecked": [{k: r[k] for k in ("index", "seed", "mutations", "message")} for r in unchecked],
        "seeds": sorted({r["seed"] for r in records}),
    }
    if interrupted:
        summary["interrupted_after"] = len(records)  # mutants finished; the others were not run
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        with open(out_dir / "results.jsonl", "w") as handle:
            for record in sorted(records, key=lambda r: r["index"]):
                handle.write(json.dumps(record, default=str) + "\n")
    if interrupted:
        raise KeyboardInterrupt
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{summary['mutants']} mutants (seed {summary['seed']}, start {summary['start']}) in "
             f"{summary['seconds']:.1f} s ({summary['seconds_per_mutant'] * 1000:.0f} ms per mutant, "
             f"{summary['jobs']} jobs, timeout {summary['timeout']:g} s)",
             "outcomes: " + ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items())]
    if summary.get("ok_checked"):
        lines.append("OK by depth of check: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["ok_checked"].items()))
                     + " (report: analyze; ran: the output ran on the original's inputs)")
    if summary["failure_kinds"]:
        lines.append("failure kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["failure_kinds"].items())))
    lines.append(f"distinct failures: {summary['distinct_failures']}")
    current = None
    for f in summary["failures"]:
        if f["kind"] != current:
            current = f["kind"]
            lines.append(f"\n{current}")
        where = f["frame"] or ""
        lines.append(f"  [{f['id']:02d}] x{f['count']:<3d} {(f['exc'] + ' ') if f['exc'] else ''}{where}".rstrip())
        lines.append(f"        {_one_line(f['message'], 160)}")
        lines.append(f"        seed {f['seed']}: {'; '.join(_one_line(m, 60) for m in f['mutations'])}")
        if f.get("reproducer"):
            lines.append(f"        {f['reproducer']}")
    if summary["unchecked"]:
        lines.append(f"\nunchecked (harness could not finish its checks): {len(summary['unchecked'])}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="run seed (mutant i of a seed is always the same)")
    parser.add_argument("--mutants", type=positive_int, default=300, help="how many mutants")
    parser.add_argument("--start", type=non_negative_int, default=0, help="first mutant index (to continue a run)")
    parser.add_argument("--out", help="folder for the reproducers, summary.json, results.jsonl (required to run)")
    parser.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--timeout", type=positive_float, default=20.0,
                        help="seconds one call may take before it is a HANG")
    parser.add_argument("--cli-rate", type=fraction, default=0.1, help="fraction of mutants also run through the CLI")
    parser.add_argument("--memory-mb", type=non_negative_int, default=4096,
                        help="address-space limit per worker (0: none)")
    parser.add_argument("--seeds", help="comma-separated seed models (default: all); see --list-seeds")
    parser.add_argument("--list-seeds", action="store_true", help="print the seed models and mutation kinds and exit")
    parser.add_argument("--show", type=non_negative_int, metavar="INDEX", help="print mutant INDEX's reproducer and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    seeds = args.seeds.split(",") if args.seeds else None
    if seeds:
        unknown = [s for s in seeds if s not in SEEDS]
        if unknown:
            parser.error(f"unknown seeds {unknown}; choose from {', '.join(SEEDS)}")
    if args.list_seeds:
        print("seeds:", ", ".join(SEEDS))
        print("model mutations:", ", ".join(MODEL_MUTATIONS))
        print("bytes mutations:", ", ".join(BYTES_MUTATIONS))
        return 0
    if args.show is not None:
        m = make_mutant(args.seed, args.show, cli_rate=args.cli_rate, seeds=seeds)
        print(reproducer_text(m.meta(), result("NONE", "NONE", message="(not run)"), args.seed))
        return 0
    if not args.out:
        parser.error("--out DIR is required")
    check_output_folder(Path(args.out), "--out")  # now, not after the whole run
    try:
        import onnx_alds  # noqa: F401
        from onnx_alds.errors import OnnxAldsError  # noqa: F401
    except Exception as exc:
        print(f"error: cannot import onnx_alds ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    tty = sys.stderr.isatty() and not args.quiet

    def progress(done: int, total: int, record: dict) -> None:
        if tty:
            print(f"\r{done}/{total} mutants", end="", file=sys.stderr, flush=True)
        elif not args.quiet and (done % 100 == 0 or done == total):
            print(f"{done}/{total} mutants", file=sys.stderr, flush=True)

    summary = run_fuzz(seed=args.seed, mutants=args.mutants, start=args.start, jobs=args.jobs, timeout=args.timeout,
                       cli_rate=args.cli_rate, out=args.out, memory_mb=args.memory_mb, seeds=seeds, progress=progress)
    if tty:
        print(file=sys.stderr)
    print(format_summary(summary))
    print(f"\nwrote {Path(args.out) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the mutants finished so far are in --out (summary.json, results.jsonl, the "
                                 "reproducers); continue with --start"))
