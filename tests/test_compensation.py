"""Both-factor compensation (alternating least squares) and the per-channel affine correction."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import small_cnn
from onnx_alds import compress
from onnx_alds.decompose import affine_correction, alternate_factors, decompose, refit_decoder, whitening_factor
from onnx_alds.errors import InputDataError
from onnx_alds.inputs import InputSet


def _objective(weight, factors, samples):
    return float(np.linalg.norm((weight - factors.dense()) @ samples) ** 2)


def _correlated(rng, dims, count):
    mix = rng.standard_normal((dims, dims)) * (0.8 ** np.arange(dims))  # strongly correlated, decaying energy
    return mix @ rng.standard_normal((dims, count))


@pytest.mark.parametrize("groups", [2, 4])
def test_alternating_least_squares_lowers_the_output_error_for_groups(groups):
    rng = np.random.default_rng(groups)
    weight = rng.standard_normal((16, 24))
    x = _correlated(rng, 24, 400)
    moment = x @ x.T / x.shape[1]
    width = 24 // groups
    whitening = [whitening_factor(moment[i * width:(i + 1) * width, i * width:(i + 1) * width]) for i in range(groups)]
    seed = refit_decoder(weight, decompose(weight, groups, 2, whitening), moment)
    better = alternate_factors(weight, seed, moment, rounds=1)
    assert better.encoder.shape == seed.encoder.shape and better.decoder.shape == seed.decoder.shape
    before, after = _objective(weight, seed, x), _objective(weight, better, x)
    assert after < before * (1 - 1e-3)  # grouped factors coupled by the moment: a real gain
    more = alternate_factors(weight, better, moment, rounds=2)
    assert _objective(weight, more, x) <= after * (1 + 1e-9)  # never increases


def test_alternating_least_squares_keeps_the_optimal_single_group_factors():
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((10, 12))
    x = _correlated(rng, 12, 300)
    moment = x @ x.T / x.shape[1]
    seed = refit_decoder(weight, decompose(weight, 1, 3, [whitening_factor(moment)]), moment)
    again = alternate_factors(weight, seed, moment, rounds=1)
    assert _objective(weight, again, x) == pytest.approx(_objective(weight, seed, x), rel=1e-6)


def test_affine_correction_matches_each_channel_mean_and_variance():
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((6, 9))
    x = _correlated(rng, 9, 2000) + 0.5
    approx = decompose(weight, 1, 2).dense()
    moment, mean = x @ x.T / x.shape[1], x.mean(axis=1)
    scale, shift = affine_correction(weight, approx, moment, mean, moment, mean)
    y, y_hat = weight @ x, scale[:, None] * (approx @ x) + shift[:, None]
    np.testing.assert_allclose(y_hat.mean(axis=1), y.mean(axis=1), atol=1e-8)
    inside = (scale > 0.5) & (scale < 2.0)  # the clipped channels keep the guard's scale
    assert inside.any()
    np.testing.assert_allclose(y_hat.var(axis=1)[inside], y.var(axis=1)[inside], rtol=1e-6)


def _calibration(seed, count):
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((count, 3, 4, 4)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3) + 0.05 * rng.standard_normal((count, 3, 32, 32)).astype(
        np.float32)


def test_compress_with_both_compensations_runs_and_says_so():
    model = small_cnn(seed=0, width=8)
    calibration = InputSet({"input": _calibration(0, 16)}, source="test")
    result = compress(model, keep_flops=0.5, calibration=calibration, both_factors=1, affine_correction=True,
                      max_groups=4)
    assert "affine" in result.report.data_aware_steps and "both-factors x1" in result.report.data_aware_steps
    assert any(note.startswith("--affine-correction: the error figures are of the factors before it")
               for note in result.report.notes)  # the error column is not the corrected layer's
    plain = compress(model, keep_flops=0.5, calibration=calibration, max_groups=4)
    assert [(r.groups, r.rank) for r in result.report.layers] == [(r.groups, r.rank) for r in plain.report.layers]
    with pytest.raises(InputDataError, match="--affine-correction needs calibration"):
        compress(model, keep_flops=0.5, affine_correction=True)
    with pytest.raises(InputDataError, match="--both-factors needs calibration"):
        compress(model, keep_flops=0.5, both_factors=1)


@pytest.mark.parametrize("method", ["alds", "damage"])
@pytest.mark.parametrize("correction", ["bias_correction", "affine_correction"])
def test_corrections_that_add_a_bias_stay_inside_a_params_budget(correction, method):
    """A MatMul has no bias: the correction's shift adds ``f`` weights per factorized layer, which the
    allocation did not count (keep 0.61 written for --keep-params 0.6, exit 0)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.layers import iter_total_params

    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.standard_normal((32, 96)).astype(np.float32), "A"),
               numpy_helper.from_array((rng.standard_normal((96, 80)) / 10).astype(np.float32), "W")]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "A"], ["h"], name="mix"),
                               helper.make_node("MatMul", ["h", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 80])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    calibration = InputSet({"x": rng.standard_normal((256, 32)).astype(np.float32)})
    result = compress(model, keep_params=0.6, rank_multiple=1, calibration=calibration, method=method,
                      **{correction: True})
    stored = sum(iter_total_params(result.model))
    total = sum(iter_total_params(model))
    assert any(row.groups for row in result.report.layers)
    assert any(node.op_type == "Add" for node in result.model.graph.node)  # the shift is there, as an Add
    assert stored / total <= 0.6 and result.report.achieved == pytest.approx(stored / total)
    onnx.checker.check_model(result.model, full_check=True)
    from onnx_alds.plan import make_plan  # a plan's totals count the shift too (they left it out)

    plan = make_plan(model, keep_params=0.6, rank_multiple=1, calibration=calibration, method=method,
                     **{correction: True})
    assert plan.totals["params_after"] == stored


@pytest.mark.parametrize("correction", ["bias_correction", "affine_correction"])
def test_a_bias_two_layers_share_takes_the_shift_through_an_add_inside_the_budget(correction):
    """Two Gemms reading one C: the shift was folded into a copy of C per layer, which the allocation counted
    once (0.6051 written for --keep-params 0.6, exit 0; a plan's totals said 0.5897)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.layers import iter_total_params
    from onnx_alds.plan import apply_plan, make_plan

    rng = np.random.default_rng(4)
    weights = [numpy_helper.from_array((rng.standard_normal((32, 24)) / 6).astype(np.float32), name)
               for name in ("W", "W7")] + [numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "C")]
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="gem"),
                               helper.make_node("Gemm", ["x", "W7", "C"], ["z"], name="gem7")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 24]) for name in "yz"],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    calibration = InputSet({"x": rng.standard_normal((200, 32)).astype(np.float32)})
    options = dict(keep_params=0.6, rank_multiple=1, calibration=calibration, **{correction: True})
    result = compress(model, **options)
    stored, total = sum(iter_total_params(result.model)), sum(iter_total_params(model))
    assert all(row.groups for row in result.report.layers)
    assert stored / total <= 0.6 and result.report.achieved == pytest.approx(stored / total)
    assert "C" in {init.name for init in result.model.graph.initializer}  # kept as it is, read by both
    plan = make_plan(model, **options)
    assert plan.totals["params_after"] == stored == sum(iter_total_params(apply_plan(model, plan, calibration).model))
    onnx.checker.check_model(result.model, full_check=True)


@pytest.mark.parametrize("bias", ["C[M,1]", "C[M,N]", "C[1]", "constant-node Conv bias"])
def test_correction_priced_as_the_rewrite_writes_it(bias):
    """The shift's weights are priced by the rewrite's rule: a Gemm ``C`` of ``[M, 1]`` grows to
    ``[M, N]`` (0.478 written for --keep-params 0.4, exit 0, when ``f`` was charged); one of ``[M, N]``
    takes the shift for nothing (``f`` charged cost the exact rank); a Conv bias from a ``Constant`` node
    gets an ``Add`` of ``f`` values (priced 0 before)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.layers import iter_total_params

    rng = np.random.default_rng(0)
    if bias.startswith("C["):
        m, k, n = 5, 24, 20
        weight = (rng.standard_normal((n, 3)) @ rng.standard_normal((3, k))).astype(np.float32)  # rank 3
        shape = {"C[M,1]": (m, 1), "C[M,N]": (m, n), "C[1]": (1,)}[bias]
        graph = helper.make_graph(
            [helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="g", transB=1, alpha=2.0, beta=0.5)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
            [numpy_helper.from_array(weight, "B"),
             numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "C")])
        calibration = InputSet({"x": rng.standard_normal((m, k)).astype(np.float32)})
    else:
        weight = rng.standard_normal((24, 16, 1, 1)).astype(np.float32)
        constant = helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(
            rng.standard_normal(24).astype(np.float32)))
        graph = helper.make_graph(
            [constant, helper.make_node("Conv", ["x", "W", "b"], ["y"], name="conv")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 4, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 24, 4, 4])],
            [numpy_helper.from_array(weight, "W")])
        calibration = InputSet({"x": rng.standard_normal((32, 16, 4, 4)).astype(np.float32)})
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    total = sum(iter_total_params(model))
    for keep in (0.4, 0.7):
        result = compress(model, keep_params=keep, rank_multiple=1, calibration=calibration, bias_correction=True)
        stored = sum(iter_total_params(result.model))
        assert stored / total <= keep + 1e-9 and result.report.achieved == pytest.approx(stored / total)
        onnx.checker.check_model(result.model, full_check=True)
    if bias == "C[M,N]":  # the shift costs nothing: the exact rank 3 fits 0.4 (rank 2 was chosen)
        assert compress(model, keep_params=0.4, rank_multiple=1, calibration=calibration,
                        bias_correction=True).report.layers[0].rank == 3


def test_both_factors_that_change_nothing_say_so():
    """--both-factors 2 on a plan whose factorized layers all have one group wrote the same model as without it,
    with no word."""
    model = small_cnn(seed=0, width=8)
    calibration = InputSet({"input": _calibration(0, 16)}, source="test")
    plain = compress(model, keep_flops=0.5, calibration=calibration, max_groups=1)
    both = compress(model, keep_flops=0.5, calibration=calibration, max_groups=1, both_factors=2)
    assert all(row.groups <= 1 for row in both.report.layers)
    assert both.model.SerializeToString() == plain.model.SerializeToString()  # (what the note says)
    assert any(note.startswith("--both-factors 2 changed nothing") for note in both.report.notes)
    grouped = compress(model, keep_flops=0.5, calibration=calibration, max_groups=4, both_factors=2)
    said = any(note.startswith("--both-factors 2 changed nothing") for note in grouped.report.notes)
    assert said == (not any(row.groups > 1 for row in grouped.report.layers))


@pytest.mark.parametrize("correction", ["bias_correction", "affine_correction"])
def test_a_correction_at_float32_rounding_level_is_not_written(correction):
    """An exactly rank-1 layer (error 0.0000) calibrated on inputs of ~1e15: the corrections added the rounding of
    W μ (a bias of ~1e6) as a mean error, and unit-scale inputs came out ~1e6 times wrong, exit 0."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model, run_model

    rng = np.random.default_rng(0)
    first = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
    rank_one = (np.outer(rng.standard_normal(64), rng.standard_normal(64)) / 8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "A"], ["a"], name="mm1"), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "B"], ["y"], name="mm2")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                       [numpy_helper.from_array(first, "A"), numpy_helper.from_array(rank_one, "B")])
    calibration = InputSet({"x": (rng.standard_normal((256, 64)) * 1e15).astype(np.float32)})
    result = compress(model, keep_params=0.6, rank_multiple=1, calibration=calibration, exclude=["mm1"],
                      **{correction: True})
    assert [layer.name for layer in result.report.layers if layer.rank] == ["mm2"]
    for x in (calibration.arrays["x"][:64], rng.standard_normal((64, 64)).astype(np.float32)):
        reference = run_model(model, {"x": x})[0].astype(np.float64)
        got = run_model(result.model, {"x": x})[0].astype(np.float64)
        assert np.linalg.norm(got - reference) / np.linalg.norm(reference) < 1e-5
