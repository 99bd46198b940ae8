"""Input statistics from ONNX Runtime against a plain numpy im2col reference."""

from __future__ import annotations

import itertools
from typing import Iterator, Mapping

import numpy as np
import onnx
import pytest

from conftest import conv_model, gemm_model, matmul_model, run_model, small_cnn
from onnx_alds.calibrate import collect_second_moments, collect_statistics, independent_waves
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
    whole = collect_second_moments(model, [layer], FakeInputs({"x": x}), batch_size=3)[layer.name]
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
    np.testing.assert_allclose(stats.second_moment, rows.T @ rows / 60, rtol=1e-6)


def test_shared_inputs_and_cross_moment_with_itself():
    model = small_cnn(width=8)
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    plain = collect_statistics(model, layers, FakeInputs({"input": x}), batch_size=4)
    paired = collect_statistics(model, layers, FakeInputs({"input": x}), batch_size=4, reference=model)
    for layer in layers:
        np.testing.assert_allclose(paired[layer.name].cross, plain[layer.name].second_moment, rtol=1e-10)
        np.testing.assert_allclose(paired[layer.name].reference_mean, plain[layer.name].mean, rtol=1e-10)
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
