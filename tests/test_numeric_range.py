"""Weights and outputs at the edges of their type's range: float16 factors whose middle tensor could overflow,
float64 weights too small for the float64 arithmetic, and validate's figures on outputs far from 1."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model

from onnx_alds import compress
from onnx_alds.decompose import GroupedFactors
from onnx_alds.inputs import InputSet


def _averaging_gemm(dtype: int = TensorProto.FLOAT16, width: int = 64) -> onnx.ModelProto:
    """``y = x Wᵀ`` with ``W`` about ones/width (one strong direction, σ₁ ≈ 1) plus a little noise."""
    rng = np.random.default_rng(1)
    weight = np.ones((width, width)) / width + rng.standard_normal((width, width)) * 1e-4
    numpy_type = helper.tensor_dtype_to_np_dtype(dtype)
    node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1, name="fc")
    return make_model([node], [helper.make_tensor_value_info("x", dtype, ["N", width])],
                      [helper.make_tensor_value_info("y", dtype, ["N", width])],
                      [numpy_helper.from_array(weight.astype(numpy_type), "W"),
                       numpy_helper.from_array(np.zeros(width, numpy_type), "b")])


def test_float16_factors_keep_the_middle_tensor_in_range():
    # inputs of 1e4 fit float16 and so does the output (their mean); the middle value √σ·vᵀx of the evenly
    # split factors was 8e4, past float16's 65504: Inf in every output where float16 is computed as float16
    from onnx.reference import ReferenceEvaluator

    model = _averaging_gemm()
    x = (1e4 * (1 + 0.05 * np.random.default_rng(2).standard_normal((16, 64)))).astype(np.float16)
    result = compress(model, keep_params=0.5, rank_multiple=1)
    before = ReferenceEvaluator(model).run(None, {"x": x})[0].astype(np.float64)
    after = ReferenceEvaluator(result.model).run(None, {"x": x})[0].astype(np.float64)
    assert np.isfinite(before).all() and np.isfinite(after).all()
    assert np.linalg.norm(after - before) / np.linalg.norm(before) < 0.01


def test_balancing_changes_no_product_and_bounds_every_encoder_row():
    from onnx_alds.rewrite import FLOAT16_MAX, balanced_for_float16

    rng = np.random.default_rng(0)
    for groups, rank in ((1, 4), (2, 3)):
        encoder = rng.standard_normal((groups * rank, 40)) * 3.0  # row sums far above the weight's
        decoder = rng.standard_normal((24, groups * rank)) * 0.01
        factors = GroupedFactors(groups, rank, encoder, decoder)
        balanced = balanced_for_float16(factors)
        np.testing.assert_array_equal(balanced.dense(), factors.dense())  # powers of two: exact
        bound = max(np.abs(factors.dense()).sum(axis=1).max(), 1.0)  # (|e_k·x| ≤ max|x| is in range too)
        assert np.abs(balanced.encoder).sum(axis=1).max() <= bound
        assert np.abs(balanced.decoder).max() < FLOAT16_MAX / 2


def test_balancing_leaves_factors_already_in_bounds():
    from onnx_alds.rewrite import balanced_for_float16

    rng = np.random.default_rng(0)
    factors = GroupedFactors(1, 2, rng.standard_normal((2, 8)) * 0.01, rng.standard_normal((5, 2)) * 10)
    assert balanced_for_float16(factors) is factors


def test_float16_factors_of_a_subnormal_weight_keep_its_precision():
    """A float16 weight of subnormals (below 2⁻¹⁴), exactly rank 2: the singular values went to the encoder, all
    subnormal (largest 4e-6, about 6 significant bits), the decoder's largest 2: output 2 % off, error 0.0000."""
    import onnxruntime as ort

    from onnx_alds.rewrite import FLOAT16_SMALLEST_NORMAL, balanced_for_float16

    rng = np.random.default_rng(0)
    weight = (rng.integers(1, 9, (64, 2)) @ rng.integers(-3, 4, (2, 48)) * 2.0 ** -24).astype(np.float16)  # exact
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 48])],
                       [numpy_helper.from_array(weight, "W")])
    x = (rng.standard_normal((64, 64)) * 100).astype(np.float16)
    result = compress(model, keep_params=0.5, rank_multiple=1)
    before, after = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0].astype(np.float64) for m in (model, result.model))
    assert np.linalg.norm(after - before) / np.linalg.norm(before) < 2e-3  # float16 rounding of y: about 5e-4
    factors = GroupedFactors(1, 2, rng.standard_normal((2, 16)) * 1e-6, rng.standard_normal((8, 2)))
    lifted = balanced_for_float16(factors)
    np.testing.assert_array_equal(lifted.dense(), factors.dense())  # powers of two: exact
    assert np.abs(lifted.encoder).max(axis=1).min() >= FLOAT16_SMALLEST_NORMAL
    assert np.abs(lifted.encoder).sum(axis=1).max() <= max(np.abs(factors.dense()).sum(axis=1).max(), 1.0)


def test_float64_weights_too_small_for_float64_products_stay_dense():
    # a weight of about 1e-170 squared underflows to zero: every direction fell under the cut, the factors were
    # all zeros (the output its bias alone) and the reported error was 0
    rng = np.random.default_rng(0)
    first = numpy_helper.from_array(rng.standard_normal((32, 16)) * 1e-170, "W1")
    second = numpy_helper.from_array(rng.standard_normal((16, 32)), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("MatMul", ["h", "W2"], ["y"], name="fc2")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 32])],
                       [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 32])], [first, second])
    result = compress(model, keep_params=0.8, rank_multiple=1)
    fc1 = next(layer for layer in result.report.layers if layer.name == "fc1")
    assert fc1.params_after == fc1.params_before and "too small" in (fc1.skip_reason or "")


def test_validate_figures_of_float64_outputs_below_1e_154():
    # the norms' sums of squares underflowed to 0: an all-zero compressed output read as "both zero", rel 0,
    # cosine 1, PASSED
    from onnx_alds.validate import validate

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 8))

    def scaled(scale: float) -> onnx.ModelProto:
        node = helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")
        return make_model([node], [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 8])],
                          [numpy_helper.from_array(weight * scale, "W")])

    inputs = InputSet({"x": rng.standard_normal((16, 8))})
    kinds = {"y": "regression"}
    report = validate(scaled(1e-170), scaled(0.0), inputs=inputs, output_kinds=kinds)
    output = report.outputs[0]
    assert not report.passed and output.max_rel_error == pytest.approx(1.0)
    same = validate(scaled(1e-170), scaled(1e-170 * (1 + 1e-3)), inputs=inputs, output_kinds=kinds)
    assert same.passed and same.outputs[0].max_rel_error == pytest.approx(1e-3, rel=1e-6)
    assert same.outputs[0].mean_cosine == pytest.approx(1.0)


@pytest.mark.parametrize("rank_of_weight, warned", [(1, False), (64, True)])
def test_thin_rank_warning_only_where_the_layer_loses_something(rank_of_weight, warned):
    # a weight of rank 1 kept at rank 1 (error 0) was told "a classifier or vocabulary head this thin rarely
    # survives"
    from conftest import matmul_model

    model = matmul_model(in_features=64, out_features=64, leading=(4,))
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((64, rank_of_weight)) @ rng.standard_normal((rank_of_weight, 64))
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), "proj.weight"))
    result = compress(model, keep_params=0.04, rank_multiple=1)
    assert next(layer for layer in result.report.layers if layer.name == "proj").rank == 1
    assert any("full rank (" in warning for warning in result.report.warnings) == warned


def test_the_random_check_says_the_originals_outputs_are_not_finite():
    """A weight near float32's largest: the original's outputs overflow to Inf on random inputs, and the note
    said "no float output with a non-zero value to compare"."""
    rng = np.random.default_rng(0)
    weight = np.outer(rng.standard_normal(64), rng.standard_normal(48))
    weight = (weight / np.abs(weight).max() * 3.0e38).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48])],
                       [numpy_helper.from_array(weight, "W")])
    report = compress(model, keep_params=0.5, rank_multiple=1).report
    assert report.random_output_change is None
    assert any("the outputs were not compared on random inputs: the original's outputs hold Inf or NaN on the random "
               "inputs (first: 'y')" in note for note in report.notes)
