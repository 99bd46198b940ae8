"""onnx-alds, then ONNX Runtime's static INT8 quantization (QDQ, per-channel weights): the chain of docs/INT8.md.

A small CNN built here (3 Conv with 32-64 channels + 1 Gemm, seeded) is compressed at keep-flops 0.5 with
rank multiple 16, then quantized with ``quantize_static`` (QDQ, per-channel int8 weights, int8
activations, MinMax over 16 random calibration inputs), as ``tools/int8_compare.py`` does. Checked: the
quantized model loads and runs in ONNX Runtime; every factor node (``<node>.enc`` / ``<node>.dec``)
reads its weight from a per-channel DequantizeLinear (one scale per output channel) and its activation
from a DequantizeLinear; its outputs stay close to the fp32 compressed model's.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("int8_compare_under_test", ROOT / "tools" / "int8_compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """3x16x16 input → Conv 3→32 (3x3) → Conv 32→64 (3x3) → Conv 64→64 (3x3, stride 2) → GAP → Gemm 64→10.

    Weights are seeded and given a decaying spectrum (as trained weights have), so a rank-16/32 factorization
    keeps most of each layer and the comparison below is about quantization, not about truncation."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i, (cin, cout, stride) in enumerate([(3, 32, 1), (32, 64, 1), (64, 64, 2)]):
        w = rng.standard_normal((cout, cin * 9))
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        w = (u * (s * np.exp(-np.arange(len(s)) / 8.0))) @ vt / np.sqrt(cin * 9) * 3.0
        inits += [numpy_helper.from_array(w.reshape(cout, cin, 3, 3).astype(np.float32), f"conv{i}.weight"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(cout)).astype(np.float32), f"conv{i}.bias")]
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}.out"], name=f"conv{i}",
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]),
                  helper.make_node("Relu", [f"conv{i}.out"], [f"relu{i}"], name=f"relu{i}")]
        x = f"relu{i}"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    inits += [numpy_helper.from_array((rng.standard_normal((10, 64)) / 8).astype(np.float32), "fc.weight"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias")]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(path_or_model, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_compressed_model_quantizes_static_qdq_per_channel(tmp_path):
    import onnx_alds
    from onnx_alds.inputs import InputSet

    tool = _tool()
    rng = np.random.default_rng(0)
    calibration = InputSet({"input": rng.standard_normal((16, 3, 16, 16)).astype(np.float32)}, source="random")
    held_out = {"input": rng.standard_normal((32, 3, 16, 16)).astype(np.float32)}

    result = onnx_alds.compress(tiny_cnn(), keep_flops=0.5, rank_multiple=16, calibration=calibration)
    alds = result.model
    factors = tool.factor_nodes(alds)
    assert len(factors) >= 4 and len(factors) % 2 == 0  # at least two layers became pairs
    alds_path = tmp_path / "alds.onnx"
    onnx.save(alds, str(alds_path))

    notes: list[str] = []
    pre = tool.pre_process(alds_path, tmp_path / "alds.pre.onnx", notes)
    qdq_path = tool.quantize_static_qdq(pre, tmp_path / "alds.int8.onnx", calibration, batch_size=4)
    assert not notes  # quant_pre_process ran without falling back

    qdq = onnx.load(str(qdq_path))
    onnx.checker.check_model(qdq)
    check = tool.check_qdq(alds, qdq, factors)
    assert check["problems"] == []
    for layer in check["layers"]:
        assert layer["quantized"], layer          # weight: int8 initializer → DequantizeLinear → same op
        assert layer["weight_dtype"] == "int8"
        assert layer["per_channel"], layer        # one scale per output channel of the factor
        assert layer["activation_dq"], layer      # activation input quantized too (full QDQ, not weight-only)
        # symmetric int8 per channel: rounding error uniform in ±scale/2, scale = max|w_row|/127, i.e. an RMS
        # error of max|w_row|/(127·√12) per weight; with max/RMS of a row ≤ 6 that is ≤ 1.4 % (measured
        # 0.6-1.1 % here, as for dense weights). A wrong axis (one scale per input channel) or a
        # per-tensor scale over factors of very different norms gives several times more.
        assert layer["weight_rel_error"] < 0.02, layer

    # the quantized model runs and stays close to the fp32 compressed model. Tolerance: relative RMS error
    # of the logits ≤ 0.05 and cosine ≥ 0.99 per sample. Int8 activations with MinMax ranges have a step of
    # range/255; the chain quantizes about eight activation tensors (the input, each pair's middle and
    # output, the head's input), each adding roughly step/√12 of noise: measured 1.2-1.7 % relative error
    # and cosine ≥ 0.999 over three seeds. 0.05 leaves room for ranges that 16 random calibration inputs set
    # too narrow and stays far below what a broken quantization gives (a wrong scale or axis: order 1).
    reference = _run(alds, held_out)
    quantized = _run(qdq_path, held_out)
    assert quantized.shape == reference.shape and np.all(np.isfinite(quantized))
    rel = np.linalg.norm(quantized - reference) / np.linalg.norm(reference)
    cos = np.sum(quantized * reference, axis=1) / (np.linalg.norm(quantized, axis=1) * np.linalg.norm(reference, axis=1))
    assert rel <= 0.05, rel
    assert cos.min() >= 0.99, cos.min()

    # ... and INT8 costs the factorized model about what it costs the dense one: the same quantization of the
    # original model (measured: 0.8-1.6 %; the chain's error was 1.1-1.4x it). 2.5x allows for the chain's
    # extra quantized tensors (the pairs' middles); a factor pair that quantized badly would be far above it.
    original_path = tmp_path / "original.onnx"
    onnx.save(tiny_cnn(), str(original_path))
    dense_q = tool.quantize_static_qdq(tool.pre_process(original_path, tmp_path / "original.pre.onnx", notes),
                                       tmp_path / "original.int8.onnx", calibration, batch_size=4)
    dense_ref, dense_out = _run(tiny_cnn(), held_out), _run(dense_q, held_out)
    dense_rel = np.linalg.norm(dense_out - dense_ref) / np.linalg.norm(dense_ref)
    assert rel <= 2.5 * dense_rel + 1e-3, (rel, dense_rel)
    dense_check = tool.check_qdq(tiny_cnn(), onnx.load(str(dense_q)),
                                 [n for n in tiny_cnn().graph.node if n.op_type in ("Conv", "Gemm")])
    factor_error = np.median([layer["weight_rel_error"] for layer in check["layers"]])
    dense_error = np.median([layer["weight_rel_error"] for layer in dense_check["layers"]])
    assert factor_error <= 2 * dense_error, (factor_error, dense_error)  # measured 0.0066 against 0.0063


def test_factor_check_reports_a_weight_left_in_float(tmp_path):
    """The check names the factor node whose weight was not quantized (excluded here on purpose)."""
    import onnx_alds
    from onnx_alds.inputs import InputSet

    tool = _tool()
    rng = np.random.default_rng(1)
    calibration = InputSet({"input": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)}, source="random")
    alds = onnx_alds.compress(tiny_cnn(), keep_flops=0.5, rank_multiple=16, calibration=calibration).model
    alds_path = tmp_path / "alds.onnx"
    onnx.save(alds, str(alds_path))
    factors = tool.factor_nodes(alds)
    left_out = factors[0].name

    from onnxruntime.quantization import QuantFormat, quantize_static

    names = tool.graph_input_names(alds)
    quantize_static(str(alds_path), str(tmp_path / "partial.onnx"), tool.calibration_reader(calibration, names, 4),
                    quant_format=QuantFormat.QDQ, per_channel=True, nodes_to_exclude=[left_out])
    check = tool.check_qdq(alds, onnx.load(str(tmp_path / "partial.onnx")), factors)
    assert [p for p in check["problems"] if p.startswith(left_out + ":")], check["problems"]
    assert sum(1 for layer in check["layers"] if layer["quantized"]) == len(factors) - 1
