"""A model over the 2 GB protobuf limit loads, compresses, saves (as external data) and runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_alds
from onnx_alds.model_io import load_model, save_model

pytestmark = pytest.mark.slow


def test_model_over_2gb_round_trip(tmp_path):
    rows, width = 2_400_000, 256  # a 2.46 GB embedding table: over the protobuf limit
    table = np.zeros((rows, width), np.float32)
    table[:16] = np.random.default_rng(0).standard_normal((16, width))
    weight = np.random.default_rng(1).standard_normal((width, width)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("MatMul", ["emb", "proj.weight"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, width])],
                              [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "proj.weight")])
    del table
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source = tmp_path / "big.onnx"
    onnx.save_model(model, str(source), save_as_external_data=True, location="big.onnx.data")
    del model, graph

    result = onnx_alds.compress(str(source), keep_flops=0.5)
    assert [n.op_type for n in result.model.graph.node] == ["Gather", "MatMul", "MatMul"]
    out = save_model(result.model, tmp_path / "small.onnx", protect=[source])
    del result
    assert (tmp_path / "small.onnx.data").stat().st_size > 2 ** 31
    assert out.stat().st_size < 2 ** 20  # the graph alone; the tensors went to the data file
    onnx.checker.check_model(str(out), full_check=True)

    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ids = np.arange(8, dtype=np.int64)[None]
    y = session.run(None, {"ids": ids})[0]
    saved = {init.name: numpy_helper.to_array(init) for init in load_model(out).graph.initializer}
    embedded = saved["table"][ids]
    expected = embedded @ saved["proj.weight.enc"] @ saved["proj.weight.dec"]
    assert np.allclose(y, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(y, embedded @ weight, rtol=1e-2, atol=1e-2)  # rank was really cut
