"""Full rank everywhere ⇒ the same function: factorized graphs reproduce the original in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import conv_model, gemm_model, matmul_model, random_feeds, run_model
from onnx_alds.decompose import decompose, max_rank
from onnx_alds.layers import constant_tensors, ensure_node_names, find_layers, folded_weight
from onnx_alds.rewrite import Rewrite, rewrite_model

RTOL = 1e-5  # float32 rounding of two products instead of one, relative to the output's largest value


def factorize_at_full_rank(model: onnx.ModelProto, groups: int = 1) -> onnx.ModelProto:
    ensure_node_names(model)
    layers = find_layers(model, {}, max_groups=1)
    constants = constant_tensors(model)
    rewrites = []
    for layer in layers:
        assert layer.skip_reason is None or "shrink" in layer.skip_reason, layer.skip_reason
        matrix = folded_weight(layer, constants)
        rank = max_rank(layer.out_features, layer.cols, groups)
        rewrites.append(Rewrite(layer, decompose(matrix, groups, rank)))
    return rewrite_model(model, rewrites)


def assert_same_outputs(original: onnx.ModelProto, rewritten: onnx.ModelProto, feeds: dict) -> None:
    onnx.checker.check_model(rewritten, full_check=True)
    expected = run_model(original, feeds)
    actual = run_model(rewritten, feeds)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        scale = float(np.max(np.abs(e))) or 1.0
        assert float(np.max(np.abs(e - a))) <= RTOL * scale * 10, float(np.max(np.abs(e - a))) / scale


def max_rel_error(original, rewritten, feeds) -> float:
    expected = run_model(original, feeds)[0]
    actual = run_model(rewritten, feeds)[0]
    return float(np.max(np.abs(expected - actual)) / np.max(np.abs(expected)))


conv2d = st.fixed_dictionaries({
    "kernel": st.sampled_from([(1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (5, 3)]),
    "stride": st.sampled_from([(1, 1), (2, 2), (1, 2), (3, 2)]),
    "dilation": st.sampled_from([(1, 1), (2, 2), (1, 3)]),
    "padding": st.sampled_from(["zero", "symmetric", "asymmetric", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    "bias": st.booleans(),
    "groups": st.sampled_from([1, 2, 4, 8]),
    "out_channels": st.sampled_from([4, 12, 16]),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv2d)
def test_conv2d_full_rank_matches(config):
    # ONNX Runtime itself rejects SAME_* auto_pad with dilation > 1, in the original as well
    assume(not (config["padding"].startswith("SAME") and config["dilation"] != (1, 1)))
    pads = {"zero": None, "symmetric": [1, 1, 1, 1], "asymmetric": [0, 2, 1, 0]}.get(config["padding"])
    auto_pad = config["padding"] if config["padding"].isupper() else None
    model = conv_model(in_channels=8, out_channels=config["out_channels"], kernel=config["kernel"], spatial=(21, 20),
                       strides=config["stride"], pads=pads, dilations=config["dilation"], auto_pad=auto_pad,
                       bias=config["bias"])
    rewritten = factorize_at_full_rank(model, config["groups"])
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops == ["Conv", "Conv"]
    encoder = rewritten.graph.node[0]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in encoder.attribute}["group"] == config["groups"]
    max_err = max_rel_error(model, rewritten, random_feeds(model))
    assert max_err <= 1e-5, max_err


@pytest.mark.parametrize("kernel,spatial,strides,pads,groups", [
    ((3,), (20,), (2,), (1, 2), 2),
    ((5,), (17,), (1,), None, 4),
    ((3, 3, 3), (6, 7, 5), (1, 2, 1), (1, 1, 1, 1, 0, 1), 2),
    ((1, 3, 1), (4, 5, 6), None, None, 1),
])
def test_conv_1d_3d_full_rank_matches(kernel, spatial, strides, pads, groups):
    model = conv_model(in_channels=8, out_channels=6, kernel=kernel, spatial=spatial, strides=strides, pads=pads)
    rewritten = factorize_at_full_rank(model, groups)
    assert [node.op_type for node in rewritten.graph.node] == ["Conv", "Conv"]
    assert max_rel_error(model, rewritten, random_feeds(model)) <= 1e-5


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0)])
@pytest.mark.parametrize("bias", [None, "vector", "matrix"])
def test_gemm_full_rank_matches(trans_a, trans_b, alpha, beta, bias):
    model = gemm_model(trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, bias=bias)
    rewritten = factorize_at_full_rank(model)
    assert [node.op_type for node in rewritten.graph.node] == ["Gemm", "Gemm"]
    assert max_rel_error(model, rewritten, random_feeds(model)) <= 1e-5


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_opset_9_needs_no_added_bias(trans_a):
    """Before opset 11 Gemm requires C: the encoder is a MatMul (after a Transpose for transA), which needs none,
    and the decoder Gemm keeps the layer's C; alpha is folded into the encoder."""
    model = gemm_model(bias="vector", trans_a=trans_a, alpha=0.5)
    model.opset_import[0].version = 9
    rewritten = factorize_at_full_rank(model)
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops == ["Transpose"] * trans_a + ["MatMul", "Gemm"]
    assert len(rewritten.graph.node[-1].input) == 3
    assert max_rel_error(model, rewritten, random_feeds(model)) <= 1e-5


@pytest.mark.parametrize("leading", [(4,), (2, 5), (2, 3, 4)])
def test_matmul_full_rank_matches(leading):
    model = matmul_model(leading=leading)
    rewritten = factorize_at_full_rank(model)
    assert [node.op_type for node in rewritten.graph.node] == ["MatMul", "MatMul"]
    assert max_rel_error(model, rewritten, random_feeds(model)) <= 1e-5


def test_truncated_rank_changes_outputs():
    """The comparison above can fail: dropping rank does change the outputs."""
    model = conv_model(in_channels=8, out_channels=12)
    ensure_node_names(model)
    layer = find_layers(model, {})[0]
    matrix = folded_weight(layer, constant_tensors(model))
    rewritten = rewrite_model(model, [Rewrite(layer, decompose(matrix, 1, 3))])
    assert max_rel_error(model, rewritten, random_feeds(model)) > 1e-2


def test_constant_node_weight_is_factorized():
    model = matmul_model()
    weight = model.graph.initializer.pop()
    constant = onnx.helper.make_node("Constant", [], [weight.name], name="w_const", value=weight)
    model.graph.node.insert(0, constant)
    rewritten = factorize_at_full_rank(model)
    assert [node.op_type for node in rewritten.graph.node] == ["MatMul", "MatMul"]
    assert max_rel_error(model, rewritten, random_feeds(model)) <= 1e-5
