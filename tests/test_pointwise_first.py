"""Pointwise-first order: 1x1 conv to ``g·r`` channels, then the k×k conv (the ``f·κ × c`` unfolding)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import conv_model, gemm_model, random_feeds, run_model, small_cnn
from onnx_alds import compress
from onnx_alds.calibrate import LayerStatistics
from onnx_alds.cli import main
from onnx_alds.data_aware import data_aware_factors, layer_bias_shift
from onnx_alds.decompose import (decompose, max_rank, patch_decoder_to_pointwise, patch_encoder, pixel_moment,
                                 pointwise_decoder_to_patch, pointwise_matrix)
from onnx_alds.errors import BudgetError
from onnx_alds.layers import POINTWISE_FIRST, SPATIAL_FIRST, constant_tensors, ensure_node_names, find_layers, \
    folded_weight, with_order
from onnx_alds.rewrite import Rewrite, rewrite_model
from onnx_alds.shapes import tensor_shapes
from test_calibrate import FakeInputs


def _layers(model: onnx.ModelProto, max_groups: int = 16):
    ensure_node_names(model)
    dims = {value.name: tuple(d.dim_value for d in value.type.tensor_type.shape.dim) for value in model.graph.input}
    needed = {name for node in model.graph.node for name in (node.input[0], node.output[0])}
    return find_layers(model, tensor_shapes(model, dims, needed), max_groups=max_groups)


def _pointwise_at_full_rank(model: onnx.ModelProto, groups: int) -> onnx.ModelProto:
    (layer,) = _layers(model)
    assert layer.pointwise_first_ok
    layer = with_order(layer, POINTWISE_FIRST, max_groups=16)
    rows, cols = layer.matrix_shape
    matrix = folded_weight(layer, constant_tensors(model))
    assert matrix.shape == (rows, cols) == (layer.out_features * layer.kernel, layer.in_channels)
    return rewrite_model(model, [Rewrite(layer, decompose(matrix, groups, max_rank(rows, cols, groups)))])


def _max_rel_error(original, rewritten, feeds) -> float:
    expected, actual = run_model(original, feeds)[0], run_model(rewritten, feeds)[0]
    return float(np.max(np.abs(expected - actual)) / np.max(np.abs(expected)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({
    "kernel": st.sampled_from([(3, 3), (5, 5), (1, 3), (3, 1), (5, 3)]),
    "dilation": st.sampled_from([(1, 1), (2, 2), (1, 3)]),
    "padding": st.sampled_from(["centred", "SAME_UPPER", "SAME_LOWER"]),
    "bias": st.booleans(),
    "groups": st.sampled_from([1, 2, 4, 8]),
    "out_channels": st.sampled_from([4, 12, 16]),
}))
def test_full_rank_pointwise_first_reproduces_the_conv(config):
    assume(not (config["padding"].startswith("SAME") and config["dilation"] != (1, 1)))
    kernel, dilation = config["kernel"], config["dilation"]
    reach = [(k - 1) * d for k, d in zip(kernel, dilation)]
    pads = None if config["padding"] != "centred" else [r // 2 for r in reach] + [r - r // 2 for r in reach]
    auto_pad = config["padding"] if config["padding"].isupper() else None
    model = conv_model(in_channels=8, out_channels=config["out_channels"], kernel=kernel, spatial=(13, 12),
                       pads=pads, dilations=dilation, auto_pad=auto_pad, bias=config["bias"])
    rewritten = _pointwise_at_full_rank(model, config["groups"])
    onnx.checker.check_model(rewritten, full_check=True)
    encoder, decoder = rewritten.graph.node
    enc_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in encoder.attribute}
    dec_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in decoder.attribute}
    assert enc_attrs["kernel_shape"] == [1, 1] and enc_attrs["group"] == config["groups"]
    assert dec_attrs["kernel_shape"] == list(kernel) and "group" not in dec_attrs
    assert _max_rel_error(model, rewritten, random_feeds(model)) <= 1e-5


@pytest.mark.parametrize("kernel,spatial,pads", [((3,), (20,), (1, 1)), ((3, 3, 3), (6, 7, 5), (1,) * 6)])
def test_full_rank_pointwise_first_in_1d_and_3d(kernel, spatial, pads):
    model = conv_model(in_channels=8, out_channels=6, kernel=kernel, spatial=spatial, pads=pads)
    rewritten = _pointwise_at_full_rank(model, 2)
    assert _max_rel_error(model, rewritten, random_feeds(model)) <= 1e-5


@pytest.mark.parametrize("options,reason", [
    (dict(strides=(2, 2), pads=[1, 1, 1, 1]), "a strided conv would run its 1x1 encoder at the input resolution"),
    (dict(kernel=(1, 1)), "a 1x1 conv has one unfolding"),
    (dict(kernel=(3, 3)), "unpadded: the output is smaller than the input"),
])
def test_only_stride_1_size_keeping_kxk_convs_are_eligible(options, reason):
    (layer,) = _layers(conv_model(in_channels=8, out_channels=8, spatial=(9, 9), **options))
    assert not layer.pointwise_first_ok, reason
    with pytest.raises(ValueError, match="pointwise-first"):
        with_order(layer, POINTWISE_FIRST, max_groups=16)
    (gemm,) = _layers(gemm_model())
    assert not gemm.pointwise_first_ok


@pytest.mark.parametrize("options,eligible", [
    (dict(pads=[1, 1, 1, 1]), True), (dict(auto_pad="SAME_UPPER"), True), (dict(auto_pad="SAME_LOWER"), True),
    (dict(pads=[2, 0, 0, 2]), True), (dict(kernel=(3, 5), pads=[1, 2, 1, 2]), True),
    (dict(pads=[2, 2, 2, 2], dilations=(2, 2)), True), (dict(pads=[1, 1, 1, 1], dilations=(2, 2)), False),
    (dict(pads=[1, 1, 0, 0]), False), (dict(), False), (dict(auto_pad="VALID"), False),
    (dict(strides=(2, 2), pads=[1, 1, 1, 1]), False)])
def test_size_keeping_is_read_from_the_attributes_when_shapes_are_unknown(options, eligible):
    """With symbolic H and W (no --input-shape) no conv took the pointwise-first order, although stride 1
    and pads summing to (k - 1)·dilation keep the size whatever it is."""
    model = conv_model(in_channels=8, out_channels=8, spatial=("H", "W"), **options)
    ensure_node_names(model)
    (layer,) = find_layers(model, {}, max_groups=16)  # no shape known
    assert layer.pointwise_first_ok is eligible
    if eligible:  # and at full rank the pair is the conv at any size
        layer = with_order(layer, POINTWISE_FIRST, max_groups=16)
        matrix = folded_weight(layer, constant_tensors(model))
        rewritten = rewrite_model(model, [Rewrite(layer, decompose(matrix, 1, max_rank(*matrix.shape, 1)))])
        for size in ((9, 9), (5, 12)):
            feeds = {"x": np.random.default_rng(0).standard_normal((2, 8, *size)).astype(np.float32)}
            assert _max_rel_error(model, rewritten, feeds) <= 1e-5


def test_unfoldings_and_moments_agree_with_their_definitions():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 4, 3, 2))  # f, c, k1, k2
    matrix = pointwise_matrix(weight)
    for o, c, i, j in [(0, 0, 0, 0), (4, 3, 2, 1), (2, 1, 1, 0)]:
        assert matrix[o * 6 + i * 2 + j, c] == weight[o, c, i, j]
    decoder = rng.standard_normal((5 * 6, 7))
    patch = pointwise_decoder_to_patch(decoder, 6)
    assert patch.shape == (5, 42) and patch[3, 2 * 6 + 5] == decoder[3 * 6 + 5, 2]
    np.testing.assert_array_equal(patch_decoder_to_pointwise(patch, 6), decoder)
    patches = rng.standard_normal((4 * 6, 50))  # index channel·κ + position
    moment = patches @ patches.T / 50
    pixels = patches.reshape(4, 6, 50).transpose(0, 2, 1).reshape(4, 300)  # every position's pixel as a sample
    np.testing.assert_allclose(pixel_moment(moment, 6), pixels @ pixels.T / 300, rtol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("sequential", [False, True])
def test_data_aware_pointwise_first_full_rank_is_exact(groups, sequential):
    model = conv_model(in_channels=8, out_channels=6, spatial=(9, 9), pads=[1, 1, 1, 1])
    (layer,) = _layers(model)
    layer = with_order(layer, POINTWISE_FIRST, max_groups=16)
    weight = folded_weight(layer, constant_tensors(model), patch=True)
    rng = np.random.default_rng(groups)
    samples = rng.standard_normal((72, 400))
    moment = samples @ samples.T / 400
    cross = (moment, samples.mean(axis=1)) if sequential else (None, None)
    stat = LayerStatistics(400, moment, samples.mean(axis=1), *cross)
    rank = max_rank(*layer.matrix_shape, groups)
    for refit in (False, True):
        factors = data_aware_factors(weight, groups, rank, stat, refit=refit, layer=layer)
        dense = pointwise_decoder_to_patch(factors.decoder, 9) @ patch_encoder(factors, 9)
        # sequential: W' = W M C̃⁻¹ uses the damped C̃ (δ = 1e-6), exact only up to that damping
        np.testing.assert_allclose(dense, weight, rtol=1e-6, atol=1e-4 if sequential else 1e-6)


def test_pointwise_first_refit_and_bias_shift_in_patch_space():
    model = conv_model(in_channels=8, out_channels=6, spatial=(9, 9), pads=[1, 1, 1, 1])
    (layer,) = _layers(model)
    layer = with_order(layer, POINTWISE_FIRST, max_groups=16)
    weight = folded_weight(layer, constant_tensors(model), patch=True)
    rng = np.random.default_rng(3)
    samples = rng.standard_normal((72, 500)) + 0.5
    stat = LayerStatistics(500, samples @ samples.T / 500, samples.mean(axis=1))
    plain = data_aware_factors(weight, 1, 3, stat, refit=False, layer=layer)
    refit = data_aware_factors(weight, 1, 3, stat, refit=True, layer=layer)

    def error(factors):
        approx = pointwise_decoder_to_patch(factors.decoder, 9) @ patch_encoder(factors, 9)
        return float(np.linalg.norm((weight - approx) @ samples))

    assert error(refit) <= error(plain) + 1e-9
    shift = layer_bias_shift(layer, weight, refit, stat)
    approx = pointwise_decoder_to_patch(refit.decoder, 9) @ patch_encoder(refit, 9)
    residual = (weight - approx) @ samples
    np.testing.assert_allclose(shift, residual.mean(axis=1), rtol=1e-9, atol=1e-9)


def test_compress_pointwise_first_rewrites_the_eligible_convs(tmp_path):
    model = small_cnn(seed=0, width=16)
    result = compress(model, keep_flops=0.5, order=POINTWISE_FIRST)
    onnx.checker.check_model(result.model, full_check=True)
    assert abs(result.report.achieved - 0.5) <= 0.01
    orders = {row.name: row.order for row in result.report.layers if row.groups}
    assert orders.get("conv0", POINTWISE_FIRST) == POINTWISE_FIRST  # stride 1 (if factorized)
    assert orders.get("conv2", POINTWISE_FIRST) == POINTWISE_FIRST
    assert orders.get("conv1", SPATIAL_FIRST) == SPATIAL_FIRST  # stride 2 stays spatial-first
    assert POINTWISE_FIRST in orders.values()
    kernels = {node.name: [a.ints for a in node.attribute if a.name == "kernel_shape"][0]
               for node in result.model.graph.node if node.op_type == "Conv"}
    for name, order in orders.items():
        if name.startswith("conv"):
            assert list(kernels[f"{name}.enc"]) == ([1, 1] if order == POINTWISE_FIRST else [3, 3])
    again = compress(model, keep_flops=0.5, order=POINTWISE_FIRST)
    assert again.model.SerializeToString() == result.model.SerializeToString()


def test_data_aware_pointwise_first_beats_data_free():
    from test_data_aware import _calibration, _relative_error

    model = small_cnn(seed=0, width=16)
    calibration, held_out = _calibration(0, 48), _calibration(1, 32)
    free = compress(model, keep_flops=0.4, order=POINTWISE_FIRST)
    aware = compress(model, keep_flops=0.4, order=POINTWISE_FIRST, calibration=FakeInputs({"input": calibration}),
                     sequential=True, bias_correction=True)
    onnx.checker.check_model(aware.model, full_check=True)
    assert POINTWISE_FIRST in {row.order for row in aware.report.layers}
    assert _relative_error(model, aware.model, held_out) < 0.7 * _relative_error(model, free.model, held_out)


def test_unknown_order_is_a_budget_error():
    with pytest.raises(BudgetError, match="unknown order 'sideways'"):
        compress(small_cnn(), keep_flops=0.5, order="sideways")


def test_cli_order_flag_and_report(tmp_path, cnn_path, capsys):
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    assert main(["compress", str(cnn_path), "-o", str(out), "--keep-flops", "0.5", "--order", "pointwise-first",
                 "--report", str(report), "--rank-multiple", "1"]) == 0  # the small test CNN has 8-16 channels
    assert "pointwise-first" in capsys.readouterr().out
    rows = json.loads(report.read_text())["layers"]
    assert {row["order"] for row in rows if row["groups"]} <= {POINTWISE_FIRST, SPATIAL_FIRST}
    assert any(row["order"] == POINTWISE_FIRST for row in rows)
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(cnn_path), "-o", str(out), "--keep-flops", "0.5", "--order", "sideways"])
    assert exc.value.code == 2


def test_the_report_names_the_convs_that_stay_spatial_first():
    """The note counted the convs that could go pointwise-first ("2 of 4 k×k convs"), one of them left dense by
    the allocation: it counts what was decided, as the report's rows say."""
    result = compress(small_cnn(seed=0, width=16), keep_flops=0.5, order=POINTWISE_FIRST)
    (note,) = [n for n in result.report.notes if n.startswith("order pointwise-first")]
    convs = [row for row in result.report.layers if row.op == "Conv"]  # (every conv of small_cnn is 3x3)
    factorized = [row for row in convs if row.groups]
    first = [row for row in factorized if row.order == POINTWISE_FIRST]
    assert 0 < len(first) < len(factorized) < len(convs)  # the case: some of each
    assert note.startswith(f"order pointwise-first: {len(first)} of the {len(factorized)} factorized k×k convs are "
                           f"pointwise-first; the other {len(factorized) - len(first)} spatial-first (first: 'conv1'")
    assert note.endswith(f"; {len(convs) - len(factorized)} more k×k conv stays dense (the allocation's choice)")


def test_a_conv_with_few_inputs_stays_spatial_first_where_pointwise_first_cannot_shrink_it():
    """An RGB stem conv (3 → 64, 3x3, stride 1) alone: pointwise-first leaves no rank of 8 that shrinks
    it, and the refusal advised --rank-multiple 2; spatial-first factorizes it at rank 8."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((64, 8)) @ rng.standard_normal((8, 27))).reshape(64, 3, 3, 3).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="stem", pads=[1] * 4)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 16, 16])],
                       [numpy_helper.from_array(weight, "w")])
    report = compress(model, keep_params=0.95, rank_multiple=8, order="pointwise-first").report
    (row,) = report.layers
    assert row.groups and row.order == "spatial-first" and row.rank % 8 == 0
    assert any("too few input channels" in note for note in report.notes)


def test_pointwise_first_on_a_model_without_kxk_convs_says_it_changes_nothing():
    """--order pointwise-first on an MLP was accepted without a word."""
    from conftest import gemm_model

    report = compress(gemm_model(in_features=64, out_features=64, rows=4), keep_params=0.5,
                      order="pointwise-first").report
    assert any(note.startswith("order pointwise-first: the model has no k×k conv") for note in report.notes)


def test_compress_and_apply_count_the_same_dense_kxk_convs():
    """compress counted a conv no rank of the multiple shrinks as "stays dense" (2 more), apply, whose plan lists
    it as skipped, did not (1 more); with nothing factorized the note read "0 of the 0 factorized k×k convs"."""
    import re

    from onnx_alds.plan import apply_plan, make_plan

    model = small_cnn(seed=0, width=16)
    plan = make_plan(model, keep_flops=0.6, order=POINTWISE_FIRST, rank_multiple=16)
    compressed = compress(model, keep_flops=0.6, order=POINTWISE_FIRST, rank_multiple=16).report
    applied = apply_plan(model, plan).report

    def dense_count(notes) -> int:
        (note,) = [n for n in notes if n.startswith("order pointwise-first")]
        found = re.search(r"(\d+) more k×k convs? stays? dense", note)
        return int(found.group(1)) if found else 0

    assert dense_count(compressed.notes) == dense_count(applied.notes)
    nothing = compress(model, keep_flops=0.999, order=POINTWISE_FIRST, rank_multiple=16).report
    (note,) = [n for n in nothing.notes if n.startswith("order pointwise-first")]
    assert "0 of the 0" not in note
