"""Decomposition maths on random matrices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_alds.decompose import (candidate_groups, decompose, factorized_size, group_singular_values,
                                 split_columns, whitening_factor)
from onnx_alds.spectra import error_table, layer_spectra


@settings(max_examples=30, deadline=None)
@given(f=st.integers(2, 24), width=st.integers(1, 12), groups=st.sampled_from([1, 2, 3, 4]), seed=st.integers(0, 99))
def test_group_residual_norm_is_next_singular_value(f, width, groups, seed):
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((f, width * groups))
    limit = min(f, width)
    spectra = group_singular_values(matrix, groups)
    for rank in range(1, limit + 1):
        factors = decompose(matrix, groups, rank)
        assert factors.encoder.shape == (groups * rank, width)
        assert factors.decoder.shape == (f, groups * rank)
        residual = matrix - factors.dense()
        for i, block in enumerate(split_columns(residual, groups)):
            expected = spectra[i, rank] if rank < limit else 0.0
            assert np.linalg.norm(block, 2) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_signs_are_deterministic_and_sqrt_split_balanced():
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((16, 24))
    first, second = decompose(matrix, 2, 5), decompose(-(-matrix), 2, 5)
    assert np.array_equal(first.encoder, second.encoder)
    # √σ on both sides: column norms of A equal row norms of B
    assert np.allclose(np.linalg.norm(first.decoder, axis=0), np.linalg.norm(first.encoder, axis=1))
    pivots = np.argmax(np.abs(first.decoder[:, :5]), axis=0)
    assert np.all(first.decoder[pivots, np.arange(5)] > 0)


def test_bad_rank_and_groups_raise():
    matrix = np.ones((4, 6))
    with pytest.raises(ValueError, match="rank must be between 1 and"):
        decompose(matrix, 1, 5)
    with pytest.raises(ValueError, match="groups must be >= 1 and divide"):
        decompose(matrix, 4, 1)


def test_whitened_full_rank_reproduces_and_truncation_uses_input_metric():
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((8, 12))
    basis = rng.standard_normal((12, 3))  # inputs live in a 3-dimensional subspace
    inputs = basis @ rng.standard_normal((3, 500))
    moment = inputs @ inputs.T / inputs.shape[1]
    whitening = [whitening_factor(moment)]
    full = decompose(matrix, 1, 8, whitening)
    assert np.allclose(full.dense(), matrix, atol=1e-8)
    plain, whitened = decompose(matrix, 1, 3), decompose(matrix, 1, 3, whitening)
    plain_error = np.linalg.norm((matrix - plain.dense()) @ inputs)
    whitened_error = np.linalg.norm((matrix - whitened.dense()) @ inputs)
    assert whitened_error < 1e-3 * plain_error


def test_sizes_and_candidate_groups():
    assert factorized_size(64, 576, 4, 8) == 8 * (4 * 64 + 576)
    assert candidate_groups(64, 64, 9, 16) == (1, 2, 4, 8, 16)
    # a 1x1 conv with few outputs: g·f + c grows with g until rank 1 no longer shrinks it
    assert candidate_groups(6, 3, 1, 16) == (1, 2, 3)


def test_error_table_values():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((6, 8))
    spectra = layer_spectra(matrix, (1, 2))
    table = error_table(spectra, 6, 8, groups=(1, 2))
    sigma = spectra[1][0]
    one = table.option(1)
    assert list(one.ranks) == [r for r in range(1, 7) if r * (6 + 8) < 48]
    assert one.errors[0] == pytest.approx(sigma[1] / sigma[0])
    two = table.option(2)
    assert two.errors[0] == pytest.approx(max(spectra[2][0, 1], spectra[2][1, 1]) / sigma[0])
    sqrt_g = error_table(spectra, 6, 8, groups=(1, 2), measure="spectral-sqrt-g")
    assert sqrt_g.option(2).errors[0] == pytest.approx(np.sqrt(2) * two.errors[0])
    multiple = error_table(spectra, 6, 8, groups=(1,), rank_multiple=2)
    assert list(multiple.option(1).ranks) == [2]
    energy = error_table(spectra, 6, 8, groups=(1,), measure="frobenius")
    assert energy.option(1).errors[0] == pytest.approx(np.sqrt(np.sum(sigma[1:] ** 2) / np.sum(sigma ** 2)))


def test_shared_gram_spectra_equal_direct_ones():
    from onnx_alds.decompose import grouped_spectra

    rng = np.random.default_rng(2)
    for f, cols in [(8, 96), (64, 96), (200, 96)]:
        matrix = rng.standard_normal((f, cols))
        shared = grouped_spectra(matrix, (1, 2, 3, 4, 8, 16))
        for g, values in shared.items():
            direct = np.array([np.linalg.svd(b, compute_uv=False) for b in split_columns(matrix, g)])
            assert np.allclose(values, direct, rtol=1e-9, atol=1e-9 * direct.max())


def test_channel_multiple_restricts_groups():
    assert candidate_groups(64, 64, 9, 16, channel_multiple=16) == (1, 2, 4)
    assert candidate_groups(24, 64, 9, 16, channel_multiple=16) == (1,)


def test_whitening_factor_of_vanishing_inputs_is_finite():
    """Inputs of 1e-23 (activations that vanish deep in a long tanh chain) give moments of denormals:
    the Cholesky failed at every damping and compress ended in a LinAlgError traceback."""
    import onnx_alds
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.decompose import whitening_factor
    from onnx_alds.inputs import random_inputs

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("MatMul", ["xs", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array(np.array(1e-23, np.float32), "s"),
         numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = onnx_alds.compress(model, keep_params=0.6, calibration=random_inputs(model, 16))
    assert any(row.groups for row in result.report.layers)
    normal = rng.standard_normal((256, 32))
    c = normal.T @ normal / 256
    expected = np.linalg.cholesky(c + 1e-6 * np.mean(np.diag(c)) * np.eye(32))
    np.testing.assert_allclose(whitening_factor(c), expected, rtol=1e-10, atol=1e-12)  # as before otherwise



def test_compressions_in_several_threads_leave_the_callers_blas_threads_as_they_were():
    """Each eigensolve set BLAS to one thread and restored what it had found: threads overlapping (A sets 1,
    B finds 1, A restores, B restores 1) left the whole process on one BLAS thread after concurrent calls."""
    from concurrent.futures import ThreadPoolExecutor

    import scipy.linalg
    from threadpoolctl import threadpool_info

    from conftest import small_cnn
    from onnx_alds import compress, decompose

    def blas() -> list:
        return sorted({d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"})

    from onnx import TensorProto, helper, numpy_helper

    scipy.linalg.eigh(np.eye(3))  # loads scipy's BLAS, so that threadpoolctl sees it
    rng = np.random.default_rng(0)
    convs = helper.make_model(helper.make_graph(  # three 64-channel 3x3 convs: eigensolves of 576 × 576
        [helper.make_node("Conv", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}" if i < 2 else "y"],
                          pads=[1, 1, 1, 1], name=f"conv{i}") for i in range(3)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 8, 8])],
        [numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), f"w{i}") for i in range(3)]),
        opset_imports=[helper.make_opsetid("", 17)])
    models = [small_cnn(seed=seed, width=16) for seed in range(3)] + [convs]
    compress(models[0], keep_flops=0.5)
    before = blas()
    if before == [1]:
        pytest.skip("BLAS runs one thread here (one core, or a limit set outside): nothing to leave at 1")
    for _ in range(3):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: compress(models[i % 4], keep_flops=0.5), range(16)))
        assert blas() == before
    moment = np.random.default_rng(0).standard_normal((200, 200))
    moment = moment @ moment.T

    def mixed(_):  # eigensolves beside other threads' BLAS work
        for _ in range(20):
            decompose._eigh(moment)
            np.linalg.svd(moment)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(mixed, range(4)))
    assert blas() == before
