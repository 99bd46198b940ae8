"""Input statistics from ONNX Runtime against a plain numpy im2col reference."""

from __future__ import annotations

import itertools
from typing import Iterator, Mapping

import numpy as np
import onnx
import pytest

from conftest import conv_model, gemm_model, matmul_model, run_model, small_cnn
from onnx_alds.calibrate import (CalibrationLimits, collect_second_moments, collect_statistics,
                                independent_waves)
from onnx_alds.errors import InputDataError
from onnx_alds.layers import constant_tensors, find_layers, folded_weight


class FakeInputs:
    """The two members of ``InputSet`` that calibration relies on."""

    def __init__(self, arrays: Mapping[str, np.ndarray], source: str = "test data") -> None:
        self.arrays = dict(arrays)
        self.source = source

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        count = next(iter(self.arrays.values())).shape[0]
        for start in range(0, count, batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.arrays.items()}


def _same_pads(size: int, k: int, s: int, d: int, mode: str) -> tuple[int, int]:
    out = -(-size // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
    small, large = total // 2, total - total // 2
    return (small, large) if mode == "SAME_UPPER" else (large, small)


def reference_patches(x: np.ndarray, kernel, strides, pads, dilations, auto_pad=None) -> np.ndarray:
    """Loop-by-loop im2col: one row per (sample, output position), columns (channel, kernel offset)."""
    dims = len(kernel)
    spatial = x.shape[2:]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [_same_pads(spatial[i], kernel[i], strides[i], dilations[i], auto_pad) for i in range(dims)]
        begin, end = [p[0] for p in pairs], [p[1] for p in pairs]
    elif auto_pad == "VALID":
        begin = end = [0] * dims
    else:
        begin, end = list(pads[:dims]), list(pads[dims:])
    out = [(spatial[i] + begin[i] + end[i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(dims)]
    rows = []
    for n in range(x.shape[0]):
        for position in itertools.product(*[range(o) for o in out]):
            row = []
            for c in range(x.shape[1]):
                for offset in itertools.product(*[range(k) for k in kernel]):
                    where = [position[i] * strides[i] - begin[i] + offset[i] * dilations[i] for i in range(dims)]
                    inside = all(0 <= where[i] < spatial[i] for i in range(dims))
                    row.append(float(x[(n, c, *where)]) if inside else 0.0)
            rows.append(row)
    return np.array(rows)


CONV_CASES = [
    dict(kernel=(3, 3), spatial=(9, 8), strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2)),
    dict(kernel=(2, 3), spatial=(7, 9), strides=(1, 2), pads=(0, 1, 1, 0), dilations=(2, 1)),
    dict(kernel=(3,), spatial=(11,), strides=(2,), pads=(1, 2), dilations=(2,)),
    dict(kernel=(3, 3), spatial=(7, 8), strides=(2, 2), auto_pad="SAME_UPPER"),
    dict(kernel=(4, 3), spatial=(7, 8), strides=(2, 3), auto_pad="SAME_LOWER"),
    dict(kernel=(3,), spatial=(10,), strides=(3,), auto_pad="VALID"),
    dict(kernel=(2, 2, 3), spatial=(4, 5, 5), strides=(1, 2, 1), pads=(1, 0, 1, 0, 1, 1), dilations=(1, 1, 2)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c['kernel'])}d-{c.get('auto_pad', 'pads')}")
def test_conv_moments_match_numpy_im2col(case):
    dims = len(case["kernel"])
    model = conv_model(in_channels=3, out_channels=20, batch=5, **case)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, *case["spatial"])).astype(np.float32) + 0.5
    layer = find_layers(model, {})[0]
    stats = collect_statistics(model, [layer], FakeInputs({"x": x}), batch_size=2)[layer.name]
    patches = reference_patches(x.astype(np.float64), case["kernel"], case.get("strides", (1,) * dims),
                                case.get("pads", (0,) * 2 * dims), case.get("dilations", (1,) * dims),
                                case.get("auto_pad"))
    assert stats.count == patches.shape[0]
    np.testing.assert_allclose(stats.second_moment, patches.T @ patches / len(patches), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.mean, patches.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.fourth_moment, np.mean(np.sum(patches ** 2, axis=1) ** 2), rtol=1e-6)
    # the column order is the folded weight's: W·mean(patch) + b is the mean of ONNX Runtime's output
    weight = folded_weight(layer, constant_tensors(model))
    bias = onnx.numpy_helper.to_array(constant_tensors(model)["conv.bias"]).astype(np.float64)
    y = run_model(model, {"x": x})[0].astype(np.float64)
    np.testing.assert_allclose(weight @ stats.mean + bias, y.mean(axis=tuple(i for i in range(y.ndim) if i != 1)),
                               rtol=1e-4, atol=1e-4)


def test_chunking_does_not_change_the_result():
    import onnx_alds.calibrate as calibrate

    model = conv_model(in_channels=4, out_channels=20, kernel=(3, 3), spatial=(9, 9), strides=(2, 2),
                       pads=(1, 1, 1, 1), batch=3)
    x = np.random.default_rng(0).standard_normal((3, 4, 9, 9)).astype(np.float32)
    layer = find_layers(model, {})[0]
    exact = CalibrationLimits(float32=False)  # float64 products: chunking alone must change nothing
    whole = collect_second_moments(model, [layer], FakeInputs({"x": x}), batch_size=3, limits=exact)[layer.name]
    unfolder = calibrate.unfolder_for(layer, model.graph.node[0])
    chunks = list(unfolder.rows(x, chunk_elements=50))  # forces one output row per chunk
    assert len(chunks) == 3 * 5
    stacked = np.concatenate(chunks)
    np.testing.assert_allclose(stacked.T @ stacked / len(stacked), whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_moments_respect_trans_a(trans_a):
    model = gemm_model(in_features=10, out_features=30, rows=6, trans_a=trans_a, trans_b=1)
    a = np.random.default_rng(1).standard_normal((10, 6) if trans_a else (6, 10)).astype(np.float32)
    layer = find_layers(model, {})[0]
    # one "sample" here is the whole A (its first axis is not a batch axis): one batch holds it all
    moment = collect_second_moments(model, [layer], FakeInputs({"a": a}), batch_size=100)[layer.name]
    rows = (a.T if trans_a else a).astype(np.float64)
    np.testing.assert_allclose(moment, rows.T @ rows / 6, rtol=1e-6)


def test_matmul_moments_flatten_leading_dims():
    model = matmul_model(in_features=10, out_features=30, leading=("N", 3, 4))
    x = np.random.default_rng(2).standard_normal((5, 3, 4, 10)).astype(np.float32)
    layer = find_layers(model, {})[0]
    stats = collect_statistics(model, [layer], FakeInputs({"x": x}), batch_size=2)[layer.name]
    rows = x.reshape(-1, 10).astype(np.float64)
    assert stats.count == 60
    # float32 products: exact to about 1e-6 of the moment's scale (entries near 0 are not relatively exact)
    np.testing.assert_allclose(stats.second_moment, rows.T @ rows / 60, rtol=1e-6, atol=1e-6)


def test_shared_inputs_and_cross_moment_with_itself():
    model = small_cnn(width=8)
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    plain = collect_statistics(model, layers, FakeInputs({"input": x}), batch_size=4)
    paired = collect_statistics(model, layers, FakeInputs({"input": x}), batch_size=4, reference=model)
    for layer in layers:
        # float32 sums: x xᵀ may take BLAS's symmetric kernel (syrk) and x x̃ᵀ the general one, which add in
        # another order; both are exact to about 1e-6 of the moment's scale
        np.testing.assert_allclose(paired[layer.name].cross, plain[layer.name].second_moment, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(paired[layer.name].reference_mean, plain[layer.name].mean, rtol=1e-6, atol=1e-6)
    # a graph input that a layer multiplies directly is read from the feed
    first = plain[layers[0].name]
    assert first.second_moment.shape == (27, 27)


def test_waves_split_dependent_layers_only():
    model = small_cnn(width=8)
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    waves = independent_waves(model, layers)
    assert [[layer.name for layer in wave] for wave in waves] == [[layer.name] for layer in layers]
    # two layers reading the same tensor share a wave
    assert len(independent_waves(model, [layers[1], layers[1]])) == 1


def test_bad_calibration_data_is_one_line_input_error():
    model = small_cnn(width=8)
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    with pytest.raises(InputDataError, match="lacks the graph input"):
        collect_second_moments(model, layers, FakeInputs({"image": np.zeros((2, 3, 32, 32), np.float32)}))
    with pytest.raises(InputDataError, match="failed"):
        collect_second_moments(model, layers, FakeInputs({"input": np.zeros((2, 3, 16), np.float32)}))
    with pytest.raises(InputDataError, match="no samples"):
        collect_second_moments(model, layers, FakeInputs({"input": np.zeros((0, 3, 32, 32), np.float32)}))
    with pytest.raises(InputDataError, match="batch size"):
        collect_second_moments(model, layers, FakeInputs({"input": np.zeros((2, 3, 32, 32), np.float32)}),
                               batch_size=0)


# --------------------------------------------------------------------------------------------------
# Fixed batch, bounds (position sampling, float32, moment and activation limits), notes, progress


def _with_fixed_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose inputs and outputs fix the first dim to ``batch`` (as exports without dynamic axes do)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in list(copy.graph.input) + list(copy.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    return copy


def _assert_same_statistics(got, want, names) -> None:
    """Equal within float32 product rounding (about 1e-6 of each moment's scale)."""
    for name in names:
        scale = float(np.abs(want[name].second_moment).max())
        assert got[name].count == want[name].count, name
        np.testing.assert_allclose(got[name].second_moment, want[name].second_moment, rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(got[name].mean, want[name].mean, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("batch", [1, 2])
def test_fixed_batch_model_gives_the_statistics_of_a_dynamic_batch_run(batch):
    dynamic = small_cnn(width=8)
    fixed = _with_fixed_batch(dynamic, batch)
    layers = [layer for layer in find_layers(dynamic, {}) if layer.compressible]
    x = np.random.default_rng(4).standard_normal((7, 3, 32, 32)).astype(np.float32)
    used = 7 // batch * batch
    limits = CalibrationLimits(positions_per_sample=100)  # conv0-conv2 have 256-1024 positions: sampled
    notes: list[str] = []
    got = collect_statistics(fixed, layers, FakeInputs({"input": x}), batch_size=16, limits=limits, notes=notes)
    want = collect_statistics(dynamic, layers, FakeInputs({"input": x[:used]}), batch_size=16, limits=limits)
    _assert_same_statistics(got, want, [layer.name for layer in layers])
    assert got["conv0"].positions_per_sample == 100 and got["conv0"].count == used * 100
    assert f"the model fixes its first dim to {batch}: calibration ran on inputs of {batch} rows" in notes
    if batch == 2:
        assert "calibration used 6 of 7 samples (the last 1 does not fill a batch of 2)" in " ".join(notes)
    else:
        assert not any("do not fill a batch" in note for note in notes)


def test_fixed_batch_larger_than_the_calibration_set_is_one_line_error():
    fixed = _with_fixed_batch(small_cnn(width=8), 4)
    layers = [layer for layer in find_layers(fixed, {}) if layer.compressible]
    x = np.zeros((3, 3, 32, 32), np.float32)
    with pytest.raises(InputDataError, match="fixes the batch to 4, but the calibration set holds only 3 samples"):
        collect_statistics(fixed, layers, FakeInputs({"input": x}))


def _smooth_images(count: int, size: int, seed: int) -> np.ndarray:
    """Piecewise-smooth fields plus a little noise: correlated neighbouring pixels, like photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((count, 3, size // 8, size // 8)).astype(np.float32)
    return (np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
            + 0.2 * rng.standard_normal((count, 3, size, size)).astype(np.float32))


def test_position_sampling_is_deterministic_and_close_to_the_full_moment():
    model = conv_model(in_channels=3, out_channels=16, kernel=(3, 3), spatial=(64, 64), pads=(1, 1, 1, 1), batch=8)
    layer = find_layers(model, {})[0]
    x = _smooth_images(8, 64, seed=0)
    exact = dict(float32=False)
    full = collect_statistics(model, [layer], FakeInputs({"x": x}),
                              limits=CalibrationLimits(positions_per_sample=None, **exact))[layer.name]
    limits = CalibrationLimits(positions_per_sample=256, **exact)
    first = collect_statistics(model, [layer], FakeInputs({"x": x}), batch_size=3, limits=limits)[layer.name]
    again = collect_statistics(model, [layer], FakeInputs({"x": x}), batch_size=8, limits=limits)[layer.name]
    other = collect_statistics(model, [layer], FakeInputs({"x": x}),
                               limits=CalibrationLimits(positions_per_sample=256, seed=1, **exact))[layer.name]
    # the same positions whatever the batching (keyed by the sample's index), other ones with another seed
    np.testing.assert_array_equal(first.second_moment, again.second_moment)
    assert not np.array_equal(first.second_moment, other.second_moment)
    assert first.count == 8 * 256 and full.count == 8 * 64 * 64 and first.positions_per_sample == 256
    # Tolerance: the standard error of a second moment estimated from n Gaussian vectors is
    # E‖Ĉ − C‖²_F = ((tr C)² + ‖C‖²_F) / n; sampling without replacement from the full set only lowers it.
    # Three standard errors, computed from the full moment itself (about 0.18 here).
    c = full.second_moment
    standard_error = np.sqrt((np.trace(c) ** 2 + np.sum(c * c)) / first.count) / np.linalg.norm(c)
    for sampled in (first, other):
        assert np.linalg.norm(sampled.second_moment - c) / np.linalg.norm(c) < 3 * standard_error
        # the mean's standard error is sqrt(tr Cov / n) ≤ sqrt(tr C / n)
        assert np.linalg.norm(sampled.mean - full.mean) < 3 * np.sqrt(np.trace(c) / first.count)
    # at or above the number of positions nothing is sampled: the full statistics, bit for bit
    all_of_them = collect_statistics(model, [layer], FakeInputs({"x": x}),
                                     limits=CalibrationLimits(positions_per_sample=64 * 64, **exact))[layer.name]
    np.testing.assert_array_equal(all_of_them.second_moment, c)
    assert all_of_them.positions_per_sample is None


def test_sampled_patches_match_numpy_im2col_rows():
    case = dict(kernel=(3, 3), spatial=(9, 8), strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2))
    model = conv_model(in_channels=3, out_channels=20, batch=2, **case)
    layer = find_layers(model, {})[0]
    import onnx_alds.calibrate as calibrate

    unfolder = calibrate.unfolder_for(layer, model.graph.node[0])
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 8)).astype(np.float32)
    patches = reference_patches(x.astype(np.float64), case["kernel"], case["strides"], case["pads"], case["dilations"])
    per_sample = patches.shape[0] // 2
    assert unfolder.vectors_per_sample(x.shape) == per_sample
    picks = [np.array([0, 3, per_sample - 1]), np.array([1, 2])]
    rows = np.concatenate(list(unfolder.sampled_rows(x, picks, chunk_elements=30)))
    np.testing.assert_array_equal(rows, patches[[0, 3, per_sample - 1, per_sample + 1, per_sample + 2]])


def test_float32_products_stay_within_1e_6_of_float64():
    model = small_cnn(width=8)
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    x = _smooth_images(6, 32, seed=2)
    single = collect_statistics(model, layers, FakeInputs({"input": x}), limits=CalibrationLimits(float32=True))
    double = collect_statistics(model, layers, FakeInputs({"input": x}), limits=CalibrationLimits(float32=False))
    for layer in layers:
        a, b = single[layer.name].second_moment, double[layer.name].second_moment
        assert np.linalg.norm(a - b, 2) / np.linalg.norm(b, 2) < 1e-6, layer.name
        assert a.dtype == np.float64


def test_moment_over_the_limit_is_left_out_with_a_note_without_allocating_it():
    import tracemalloc

    model = gemm_model(in_features=25088, out_features=16, rows=4, trans_b=1)
    small = matmul_model(in_features=10, out_features=6, leading=("N", 3))
    layer = find_layers(model, {})[0]
    a = np.random.default_rng(0).standard_normal((4, 25088)).astype(np.float32)
    notes: list[str] = []
    limits = CalibrationLimits(moment_bytes=64 << 20)  # 64 MiB: d ≤ 2896 in float64
    tracemalloc.start()
    try:
        stats = collect_statistics(model, [layer], FakeInputs({"a": a}), limits=limits, notes=notes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats == {}
    assert peak < 64 << 20  # the moment alone would be 25088² · 8 B = 4.7 GiB
    assert any("'fc'" in note and "25088 inputs: 4.7 GiB" in note and "data-free" in note for note in notes), notes
    # a layer under the limit still gets its statistics under the same limits
    small_layer = find_layers(small, {})[0]
    kept = collect_statistics(small, [small_layer], FakeInputs({"x": np.ones((2, 3, 10), np.float32)}), limits=limits)
    assert kept[small_layer.name].count == 6


def test_activation_limit_lowers_the_batch_then_splits_passes_with_the_same_statistics():
    import re

    model = small_cnn(width=8)
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    x = _smooth_images(5, 32, seed=3)
    want = collect_statistics(model, layers, FakeInputs({"input": x}))
    # one sample fetches relu0..relu3 and flat (8·32² + 16·16² + 16·16² + 32·8² + 32 floats, 64.1 KiB); ONNX
    # Runtime's intermediates (conv outputs, pooling) come on top of that
    fetched = 4 * (8 * 1024 + 16 * 256 + 16 * 256 + 32 * 64 + 32)
    lowered: list[str] = []
    got = collect_statistics(model, layers, FakeInputs({"input": x}), batch_size=16,
                             limits=CalibrationLimits(activation_bytes=6 * fetched), notes=lowered)
    _assert_same_statistics(got, want, [layer.name for layer in layers])
    ran = re.search(r"calibration ran at batch (\d+) instead of 16", " ".join(lowered))
    assert ran and 1 <= int(ran.group(1)) < 6, lowered
    split: list[str] = []
    largest = 4 * 8 * 1024  # relu0 for one sample: no run can fetch less
    got = collect_statistics(model, layers, FakeInputs({"input": x}),
                             limits=CalibrationLimits(activation_bytes=largest), notes=split)
    _assert_same_statistics(got, want, [layer.name for layer in layers])
    passes = re.search(r"calibration made (\d+) passes over the data", " ".join(split))
    assert passes and int(passes.group(1)) >= 2, split


def _huge_activation_model(rows: int) -> onnx.ModelProto:
    """x (N, 8, 16, 16) → Resize ×(rows/16) along H → Conv 3x3: the Conv's input is N × 8 × rows × 16."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    rng = np.random.default_rng(0)
    scales = numpy_helper.from_array(np.array([1, 1, rows / 16, 1], np.float32), "scales")
    weight = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["tall"], name="resize", mode="nearest"),
             helper.make_node("Conv", ["tall", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)], [scales, weight])


class UntouchableInputs(FakeInputs):
    """Fails the test if calibration reads any data."""

    def batches(self, batch_size: int):
        raise AssertionError("calibration read the data before refusing")


def test_a_million_row_activation_is_refused_fast_before_any_data_is_read():
    import time

    model = _huge_activation_model(rows=1 << 20)  # 8 × 1048576 × 16 float32: 512 MiB for one sample
    layer = find_layers(model, {})[0]
    tick = time.perf_counter()
    with pytest.raises(InputDataError) as caught:
        collect_statistics(model, [layer], UntouchableInputs({"x": np.zeros((1, 8, 16, 16), np.float32)}),
                           limits=CalibrationLimits(activation_bytes=256 << 20))
    assert time.perf_counter() - tick < 10
    message = str(caught.value)
    assert "\n" not in message
    assert "layer 'conv'" in message and "512 MiB for one sample" in message and "256 MiB" in message


def test_a_million_position_graph_input_is_sampled_and_bounded():
    # the fuzz case's shape (x: N × 8 × 1048576 × 10), scaled to 65536 rows to keep the test light:
    # 655 360 positions per sample, of which 1024 are used
    model = conv_model(in_channels=8, out_channels=16, kernel=(3, 3), spatial=(65536, 10), pads=(1, 1, 1, 1),
                       batch=2)
    layer = find_layers(model, {})[0]
    x = np.random.default_rng(0).standard_normal((2, 8, 65536, 10)).astype(np.float32)
    stats = collect_statistics(model, [layer], FakeInputs({"x": x}))[layer.name]
    assert stats.count == 2 * 1024 and stats.positions_per_sample == 1024
    assert np.isfinite(stats.second_moment).all()


def test_progress_bar_shows_on_request_and_stays_quiet_otherwise(capsys):
    model = small_cnn(width=8)
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    x = np.zeros((4, 3, 32, 32), np.float32)
    collect_statistics(model, layers, FakeInputs({"input": x}), batch_size=2, limits=CalibrationLimits(progress=True))
    assert "calibration" in capsys.readouterr().err
    collect_statistics(model, layers, FakeInputs({"input": x}), batch_size=2)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_random_calibration_is_labelled_in_the_notes():
    model = small_cnn(width=8)
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    data = FakeInputs({"input": np.zeros((2, 3, 32, 32), np.float32)}, source="random (2 samples; not real data)")
    data.is_random = True
    notes: list[str] = []
    collect_statistics(model, layers, data, notes=notes)
    assert any(note.startswith("calibration on random inputs, not data") for note in notes)
    real: list[str] = []
    collect_statistics(model, layers, FakeInputs({"input": np.zeros((2, 3, 32, 32), np.float32)}), notes=real)
    assert not any("random inputs" in note for note in real)


def test_the_moments_do_not_depend_on_the_scale_of_the_activations():
    """Moments were summed in float32 whatever the values: activations of ~1e-24 squared to zero (the layer
    was decomposed data-free with no note) and ~1e19 overflowed ("sees inf/NaN in its input", which it did
    not). Layer inputs outside float32's safe range are summed in float64."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds import compress
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(2)
    first = rng.standard_normal((64, 64))
    second = rng.standard_normal((64, 8)) @ rng.standard_normal((8, 64))
    calibration = InputSet({"x": rng.standard_normal((32, 64)).astype(np.float32)}, source="t")

    def model(scale: float) -> onnx.ModelProto:
        nodes = [helper.make_node("Gemm", ["x", "w0"], ["h"], transB=1, name="gemm0"),
                 helper.make_node("Gemm", ["h", "w1"], ["y"], transB=1, name="gemm1")]
        return helper.make_model(helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
            [numpy_helper.from_array((first * scale).astype(np.float32), "w0"),
             numpy_helper.from_array(second.astype(np.float32), "w1")]), opset_imports=[helper.make_opsetid("", 17)])

    rows = {}
    for scale in (1.0, 1e-25, 1e18):
        report = compress(model(scale), keep_params=0.6, rank_multiple=1, calibration=calibration).report
        rows[scale] = [(layer.groups, layer.rank, round(layer.error, 4)) for layer in report.layers]
    assert rows[1e-25] == rows[1.0] == rows[1e18], rows


def _sequence_first(reduced: bool) -> onnx.ModelProto:
    """x [T, N, 64] (sequence first) → (x + mean over T) → MatMul, or (mean over T) → MatMul → [N, 64] when
    ``reduced``: axis 0 is time, not samples."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    rng = np.random.default_rng(0)
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    weight = numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w")
    if reduced:
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
                 helper.make_node("MatMul", ["m", "w"], ["y"], name="mm")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])
    else:
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
                 helper.make_node("Add", ["x", "m"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["y"], name="mm")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "N", 64])
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 64])], [out],
                      [axes, weight], opset=18)


def test_a_sequence_first_input_is_not_cut_into_runs_as_if_its_time_steps_were_samples():
    """x [T=40, N, 64] whose time steps mix: calibration fed runs of 16, 16 and 8 time steps and called them
    "40 samples", with no word; outputs that follow axis 0 and change when it is split are refused, outputs that
    reduce over it are named in a note, and one run (a batch size of at least the sample count) is accepted."""
    from onnx_alds import compress
    from onnx_alds.inputs import InputSet

    x = np.random.default_rng(1).standard_normal((40, 24, 64)).astype(np.float32)
    with pytest.raises(InputDataError, match=r"the calibration samples are not independent: output 'y' of the first "
                                             r"4 samples run together and in runs of 2 and 2 differs by .*export the "
                                             r"model batch-first"):
        compress(_sequence_first(False), keep_params=0.5, rank_multiple=1, calibration=InputSet({"x": x}))
    result = compress(_sequence_first(False), keep_params=0.5, rank_multiple=1, calibration=InputSet({"x": x}),
                      calibration_batch_size=40)
    assert result.report.achieved <= 0.5
    reduced = compress(_sequence_first(True), keep_params=0.5, rank_multiple=1, calibration=InputSet({"x": x}))
    assert any(note.startswith("no float output of the model follows the calibration samples (runs of 4, 2 and 2")
               for note in reduced.report.notes)
    batch_first = compress(matmul_model(in_features=64, out_features=64, leading=("N",)), keep_params=0.5,
                           rank_multiple=1, calibration=InputSet({"x": x[:, 0]}))
    assert not any("calibration samples" in note for note in batch_first.report.notes)


def test_a_sequence_first_output_named_anew_by_the_exporter_is_compared_by_its_inferred_dim():
    """torch's legacy exporter, given dynamic axes as lists, names each value's dims anew ("x_dynamic_axes_1",
    "y_dynamic_axes_1"): the output then did not declare the inputs' first dim and a sequence-first model was
    cut into runs of time steps without a word. ONNX shape inference derives the output's first dim from the
    input's, so the output is compared; with the output's first dim unnamed, the same."""
    from onnx_alds import compress
    from onnx_alds.inputs import InputSet

    x = np.random.default_rng(1).standard_normal((40, 24, 64)).astype(np.float32)
    model = _sequence_first(False)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "x_dynamic_axes_1"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "y_dynamic_axes_1"
    with pytest.raises(InputDataError, match=r"the calibration samples are not independent: output 'y'"):
        compress(model, keep_params=0.5, rank_multiple=1, calibration=InputSet({"x": x}))
    model.graph.output[0].type.tensor_type.shape.dim[0].Clear()  # an unnamed first dim
    with pytest.raises(InputDataError, match=r"the calibration samples are not independent: output 'y'"):
        compress(model, keep_params=0.5, rank_multiple=1, calibration=InputSet({"x": x}))


def test_a_sequence_first_output_whose_first_dim_has_no_telling_name_gets_a_note_or_is_refused():
    """A sequence-first model whose output's first dim had no name to compare (dims unnamed, a flattened
    [T·N, C] output the exporter named anew, an output past an op shape inference does not know) was cut into
    runs of time steps with no word: such an output gets a note, a flattened one whose dim names the inputs'
    first dim in a product is refused, and rows stacked view by view ([x; -x]) stay silent."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.inputs import InputSet

    x = np.random.default_rng(1).standard_normal((40, 24, 64)).astype(np.float32)
    unnamed = _sequence_first(False)
    for value in (*unnamed.graph.input, *unnamed.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.Clear()
    flattened = _sequence_first(False)
    flattened.graph.node[-1].output[0] = "s3"
    flattened.graph.node.append(helper.make_node("Flatten", ["s3"], ["y"], axis=2))
    del flattened.graph.output[:]
    flattened.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["y_dynamic_axes_1", 64]))
    for model in (unnamed, flattened):
        report = compress(model, keep_params=0.5, rank_multiple=1, calibration=InputSet({"x": x})).report
        note = next(note for note in report.notes if note.startswith("output 'y' has"))
        assert "the first 4 samples run together and in runs of 2 and 2 give outputs that differ by" in note
        assert "--calibration-batch-size at least the sample count" in note
    flattened.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "T*N"
    with pytest.raises(InputDataError, match=r"the calibration samples are not independent: output 'y'"):
        compress(flattened, keep_params=0.5, rank_multiple=1, calibration=InputSet({"x": x}))
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w")
    views = make_model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Concat", ["x", "n"], ["v"], axis=0),
                        helper.make_node("MatMul", ["v", "w"], ["y"], name="mm")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])], [weight])
    report = compress(views, keep_params=0.6, rank_multiple=1, calibration=InputSet({"x": x[:, 0]})).report
    assert not any("calibration sample" in note for note in report.notes), report.notes


def test_outputs_that_number_the_samples_or_flatten_them_are_no_sign_of_a_sequence_axis():
    """A batch-first model whose output numbers its samples per run ([detections, 6] rows whose first column is
    the sample's index, as end-to-end detection exports write) was refused as "not independent"; a classifier
    flattened to [N·10] got the note that no output follows the samples. Only an output declaring the inputs'
    first dim is compared."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array(rng.standard_normal((64, 5)).astype(np.float32), "w")
    numbered = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["f"], name="mm"), helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
         helper.make_node("Range", ["start", "n", "step"], ["i"]), helper.make_node("Cast", ["i"], ["fi"], to=1),
         helper.make_node("Unsqueeze", ["fi", "one"], ["col"]), helper.make_node("Concat", ["col", "f"], ["y"], axis=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["detections", 6])],
        [weight, numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(0, np.int64),
         "start"), numpy_helper.from_array(np.array(1, np.int64), "step"),
         numpy_helper.from_array(np.array([1], np.int64), "one")])
    flattened = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["f"], name="mm"), helper.make_node("Reshape", ["f", "flat"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M"])],
        [weight, numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    x = rng.standard_normal((40, 64)).astype(np.float32)
    for model in (numbered, flattened):
        report = compress(model, keep_params=0.6, rank_multiple=1, calibration=InputSet({"x": x})).report
        assert not any("calibration samples" in note for note in report.notes), report.notes


def test_a_causal_sequence_first_input_is_refused_and_view_stacked_outputs_are_not():
    """A causal mix over T (a cumulative sum: the first half of a split run is unchanged by construction) was
    accepted when the refusal needed over half of the elements to move; a batch-first model whose output stacks
    two views of the batch ([x; -x] @ W, rows view by view) was refused when its rows were read as samples'."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w")
    causal = make_model([helper.make_node("CumSum", ["x", "axis"], ["c"]),
                         helper.make_node("MatMul", ["c", "w"], ["y"], name="mm")],
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 64])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "N", 64])],
                        [weight, numpy_helper.from_array(np.array(0, np.int64), "axis")])
    with pytest.raises(InputDataError, match="the calibration samples are not independent"):
        compress(causal, keep_params=0.6, rank_multiple=1,
                 calibration=InputSet({"x": rng.standard_normal((40, 4, 64)).astype(np.float32)}))
    views = make_model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Concat", ["x", "n"], ["v"], axis=0),
                        helper.make_node("MatMul", ["v", "w"], ["y"], name="mm")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["views", 64])], [weight])
    report = compress(views, keep_params=0.6, rank_multiple=1,
                      calibration=InputSet({"x": rng.standard_normal((40, 64)).astype(np.float32)})).report
    assert report.achieved <= 0.6


def test_a_model_onnx_runtime_cannot_run_is_refused_naming_the_step_that_runs_it():
    """A bfloat16 MatMul model (no such CPU kernel) with more calibration samples than one run, or with a latency
    budget, met ONNX Runtime's raw error in the sample-axis check or the latency tables: no word of the step
    that runs the model, no fix. With 8 samples the calibration session already said both."""
    from onnx import TensorProto, helper

    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.errors import ModelLoadError
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(0)

    def bfloat16(name, shape):
        bits = (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return helper.make_tensor(name, TensorProto.BFLOAT16, shape, bits.tobytes(), raw=True)

    model = make_model([helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
                        helper.make_node("MatMul", ["xb", "w1"], ["h"], name="mm1"),
                        helper.make_node("MatMul", ["h", "w2"], ["yb"], name="mm2"),
                        helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
                       [bfloat16("w1", (64, 128)), bfloat16("w2", (128, 32))])
    calibration = InputSet({"x": rng.standard_normal((32, 64)).astype(np.float32)}, source="t")
    with pytest.raises(ModelLoadError, match=r"data-aware compression \(calibration\) runs the model in ONNX Runtime "
                                             r"\(cpu\), which cannot load it .*give a model ONNX Runtime can run"):
        compress(model, keep_params=0.5, rank_multiple=8, calibration=calibration)
    with pytest.raises(ModelLoadError, match=r"a latency budget \(--keep-latency, --order auto\) runs the model"):
        compress(model, keep_latency=0.8, rank_multiple=8)
