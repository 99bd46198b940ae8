"""Calibration statistics as mergeable sums: shards merged give the one-pass statistics, and Ray
workers give the same bits as this process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_alds.calibrate import (CalibrationLimits, StatisticSums, calibration_workers, collect_statistic_sums,
                                 collect_statistics, finalize_statistics, merge_statistic_sums)
from onnx_alds.errors import InputDataError, UnsupportedModelError
from onnx_alds.layers import find_layers
from test_calibrate import FakeInputs

pytest.importorskip("onnxruntime")

FIELDS = ("second_moment", "mean", "cross", "reference_mean", "fourth_moment")


def conv_matmul_gemm(seed: int = 0) -> onnx.ModelProto:
    """x (N,3,8,8) → Conv 3→6 3×3 pad 1 → Relu → (N,6,64) → MatMul 64→10 → (N,60) → Gemm 60→5; dynamic batch."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32) / 5, "conv.w"),
             numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32) / 8, "mm.w"),
             numpy_helper.from_array(rng.standard_normal((60, 5)).astype(np.float32) / 8, "fc.w"),
             numpy_helper.from_array(np.array([0, 6, 64], np.int64), "shape3"),
             numpy_helper.from_array(np.array([0, 60], np.int64), "shape2")]
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape3"], ["r3"], name="flat3"),
             helper.make_node("MatMul", ["r3", "mm.w"], ["m"], name="mm"),
             helper.make_node("Reshape", ["m", "shape2"], ["m2"], name="flat2"),
             helper.make_node("Gemm", ["m2", "fc.w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "cmg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def setup():
    model = conv_matmul_gemm()
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    assert sorted(layer.op for layer in layers) == ["Conv", "Gemm", "MatMul"]
    x = np.random.default_rng(1).standard_normal((21, 3, 8, 8)).astype(np.float32)
    return model, layers, x


def assert_same(got, want, exact=True):
    assert set(got) == set(want)
    for name in want:
        assert got[name].count == want[name].count
        assert got[name].positions_per_sample == want[name].positions_per_sample
        for field in FIELDS:
            a, b = getattr(got[name], field), getattr(want[name], field)
            assert (a is None) == (b is None), (name, field)
            if a is None:
                continue
            if exact:
                assert np.array_equal(a, b), (name, field)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * float(np.max(np.abs(b))), err_msg=f"{name} {field}")


def shard_sums(model, layers, x, bounds, **kwargs):
    return [collect_statistic_sums(model, layers, FakeInputs({"x": x[a:b]}), first_sample=a, **kwargs)
            for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("float32", [True, False])
@pytest.mark.parametrize("with_reference", [False, True])
def test_shards_on_shard_boundaries_merge_to_the_same_bits(setup, float32, with_reference):
    model, layers, x = setup
    # 16 positions of the conv's 64 sampled; 2 runs of 4 samples per shard: shards of 8 samples
    limits = CalibrationLimits(positions_per_sample=16, shard_runs=2, float32=float32)
    reference = model if with_reference else None
    want = collect_statistics(model, layers, FakeInputs({"x": x}), batch_size=4, limits=limits, reference=reference)
    parts = shard_sums(model, layers, x, [0, 8, 16, 21], batch_size=4, limits=limits, reference=reference)
    assert [part["fc"].count for part in parts] == [8, 8, 5]  # a Gemm gives one vector per sample
    assert [part["conv"].count for part in parts] == [8 * 16, 8 * 16, 5 * 16]
    merged = merge_statistic_sums(parts)
    assert_same(finalize_statistics(merged), want)
    assert want["conv"].positions_per_sample == 16 and want["mm"].positions_per_sample is None
    # merging left the parts alone: merging again gives the same
    assert_same(finalize_statistics(merge_statistic_sums(parts)), want)
    # shrinkage on merged sums: the Gemm sees 21 vectors in 60 dimensions, so it is shrunk
    shrunk_want = want["fc"].shrunk()
    assert shrunk_want.shrinkage > 0.05
    assert np.array_equal(finalize_statistics(merged)["fc"].shrunk().second_moment, shrunk_want.second_moment)


def test_other_shards_differ_only_in_summation_order(setup):
    model, layers, x = setup
    limits = CalibrationLimits(positions_per_sample=16, shard_runs=2)
    want = collect_statistics(model, layers, FakeInputs({"x": x}), batch_size=4, limits=limits)
    parts = shard_sums(model, layers, x, [0, 5, 6, 13, 21], batch_size=3, limits=limits)
    got = finalize_statistics(merge_statistic_sums(parts))
    assert_same(got, want, exact=False)  # same vectors (sampling seeded by the sample's index), other sums
    # the sampled conv positions follow the sample index: a wrong first_sample gives other vectors
    shifted = merge_statistic_sums([collect_statistic_sums(model, layers, FakeInputs({"x": x[a:b]}), first_sample=0,
                                                           batch_size=3, limits=limits)
                                    for a, b in [(0, 5), (5, 6), (6, 13), (13, 21)]])
    assert not np.allclose(finalize_statistics(shifted)["conv"].second_moment, want["conv"].second_moment, rtol=1e-4)
    # and the one-pass result still matches the full-data (unsampled) sums only approximately: it is an estimate
    full = collect_statistics(model, layers, FakeInputs({"x": x}), batch_size=4,
                              limits=CalibrationLimits(positions_per_sample=None))
    assert full["conv"].count == 21 * 64 and full["conv"].positions_per_sample is None


def test_shard_size_changes_only_rounding(setup):
    model, layers, x = setup
    one = collect_statistics(model, layers, FakeInputs({"x": x}), batch_size=2, limits=CalibrationLimits(shard_runs=1))
    many = collect_statistics(model, layers, FakeInputs({"x": x}), batch_size=2, limits=CalibrationLimits(shard_runs=99))
    assert_same(one, many, exact=False)
    with pytest.raises(InputDataError, match="runs per calibration shard"):
        CalibrationLimits(shard_runs=0)


def test_merge_refuses_other_layers_and_finalize_refuses_empty(setup):
    model, layers, x = setup
    part = collect_statistic_sums(model, layers, FakeInputs({"x": x[:4]}))
    paired = collect_statistic_sums(model, layers, FakeInputs({"x": x[:4]}), reference=model)
    with pytest.raises(UnsupportedModelError, match="cannot merge"):
        part["fc"].copy().merge(part["mm"])
    with pytest.raises(UnsupportedModelError, match="cannot merge"):
        part["fc"].copy().merge(paired["fc"])
    empty = StatisticSums(0, np.zeros((2, 2)), np.zeros(2), 0.0)
    with pytest.raises(UnsupportedModelError, match="saw no input vectors"):
        finalize_statistics({"empty": empty})
    broken = StatisticSums(1, np.full((2, 2), np.inf), np.zeros(2), 0.0)
    with pytest.raises(InputDataError, match="inf/NaN"):
        finalize_statistics({"broken": broken})
    with pytest.raises(InputDataError, match="give an integer ≥ 1"):
        with calibration_workers(0):
            pass


def test_one_worker_needs_no_ray(setup, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    model, layers, x = setup
    with calibration_workers(1) as record:
        got = collect_statistics(model, layers, FakeInputs({"x": x}), batch_size=4)
    assert [t["first_sample"] for t in record.timeline] == [0, 16]  # shards of 4 runs of 4 samples
    assert {t["worker"] for t in record.timeline} == {os.getpid()}
    assert_same(got, collect_statistics(model, layers, FakeInputs({"x": x}), batch_size=4))
    with pytest.raises(InputDataError, match=r"pip install 'onnx-alds\[ray\]'"):
        with calibration_workers(2):
            pass


@pytest.mark.slow  # a local Ray instance: 11-16 s on the shared 2-core VM
def test_ray_workers_give_the_same_bits(setup, tmp_path):
    ray = pytest.importorskip("ray")
    from onnx_alds import compress

    model, layers, x = setup
    limits = CalibrationLimits(positions_per_sample=16, shard_runs=1)
    data = FakeInputs({"x": x})
    local = collect_statistics(model, layers, data, batch_size=4, limits=limits)
    local_paired = collect_statistics(model, layers, data, batch_size=4, limits=limits, reference=model)
    local_model = compress(model, keep_params=0.5, calibration=data, calibration_batch_size=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with calibration_workers(2) as record:
            on_ray = collect_statistics(model, layers, data, batch_size=4, limits=limits)  # 6 shards on 2 actors
            on_ray_paired = collect_statistics(model, layers, data, batch_size=4, limits=limits, reference=model)
        # summed in shard order; each call's shards on its two actors, never in this process
        assert [t["first_sample"] for t in record.timeline] == [0, 4, 8, 12, 16, 20] * 2
        for call in (record.timeline[:6], record.timeline[6:]):
            assert len({t["worker"] for t in call}) == 2 and os.getpid() not in {t["worker"] for t in call}
        assert all(t["cpu_s"] > 0 for t in record.timeline)
        ray_model = compress(model, keep_params=0.5, calibration=data, calibration_batch_size=2, calibration_workers=2)
        assert ray.is_initialized()  # joined the test's instance and left it running
    finally:
        ray.shutdown()
    assert_same(on_ray, local)
    assert_same(on_ray_paired, local_paired)
    assert ray_model.model.SerializeToString() == local_model.model.SerializeToString()
    assert ray_model.report.layers == local_model.report.layers


@pytest.mark.slow  # a local Ray instance started and stopped in a child process: about 10 s
def test_a_sigterm_after_ray_stops_reaches_the_command_line_handler():
    """ray.shutdown() left SIGTERM at the default action below Python, from a moment into it: a sweep on
    Ray killed as it stopped Ray or wrote its record ended with exit 143, no message and no sweep.json."""
    pytest.importorskip("ray")
    script = textwrap.dedent("""
        import ctypes, os, signal, threading, time
        import ray
        from onnx_alds.calibrate import init_ray, shutdown_ray

        def handler(number, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, handler)
        libc = ctypes.CDLL(None)
        action = ctypes.create_string_buffer(256)

        def native_handler():  # what the kernel runs on SIGTERM: 0 is the default action (exit 143)
            libc.sigaction(signal.SIGTERM, None, action)
            return ctypes.cast(action, ctypes.POINTER(ctypes.c_void_p))[0]

        init_ray(ray, None, include_dashboard=False, log_to_driver=False, num_cpus=1)
        seen, stopping = set(), True

        def watch():
            while stopping:
                seen.add(native_handler())
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        shutdown_ray(ray)
        stopping = False
        watcher.join()
        print("default action during shutdown" if None in seen or 0 in seen else "kept", flush=True)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            print("handled")
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_ADDRESS="")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0 and done.stdout.split() == ["kept", "handled"], (done.stdout, done.stderr[-2000:])


def test_a_failed_ray_worker_is_one_error_line():
    """A worker that dies (e.g. it imported another copy of the package) surfaces as an OnnxAldsError,
    not as Ray's traceback; a worker's own OnnxAldsError is raised as it is."""
    from onnx_alds.calibrate import _RayShards
    from onnx_alds.errors import InputDataError, OnnxAldsError

    class Died(Exception):
        pass

    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("wrapped")
            self.cause = cause

    class FakeRay:
        def __init__(self, exc):
            self.exc = exc

        def get(self, ref):
            raise self.exc

    shards = _RayShards.__new__(_RayShards)
    shards.ray = FakeRay(Died("Traceback ...\nCan't get attribute '_Plan' on <module>"))
    with pytest.raises(OnnxAldsError, match=r"a calibration worker failed \(Died: Can't get attribute '_Plan'"):
        shards._get(1, None)
    shards.ray = FakeRay(Wrapped(InputDataError("bad data in shard")))
    with pytest.raises(InputDataError, match="bad data in shard"):
        shards._get(1, None)


@pytest.mark.parametrize("interrupt", [SystemExit(15), KeyboardInterrupt()])
def test_an_interrupt_while_ray_starts_stops_it_and_is_the_command_lines(interrupt):
    """SIGTERM while ray.init ran hit Ray's own handler (sys.exit(15)): exit 15, no message, and Ray's agents
    left running; Ctrl-C there left them running too."""
    from onnx_alds.calibrate import init_ray

    class Ray:
        stopped = False

        def init(self, **options):
            raise interrupt

        def shutdown(self):
            Ray.stopped = True

    with pytest.raises(KeyboardInterrupt):
        init_ray(Ray(), None)
    assert Ray.stopped


def test_another_exit_while_ray_starts_is_left_as_it_is():
    from onnx_alds.calibrate import init_ray

    class Ray:
        def init(self, **options):
            raise SystemExit(3)

    with pytest.raises(SystemExit) as caught:
        init_ray(Ray(), None)
    assert caught.value.code == 3


def test_ray_failing_to_start_after_an_interrupt_reports_the_interrupt():
    """SIGTERM to the process group (timeout, docker stop) reached Ray's processes too: ray.init then failed
    ("the current node timed out during startup") and that was reported, exit 1, instead of the interrupt."""
    import signal

    from onnx_alds.calibrate import init_ray

    class Ray:
        stopped = False

        def init(self, **options):
            signal.raise_signal(signal.SIGTERM)  # held while Ray starts
            raise RuntimeError("The current node timed out during startup")

        def shutdown(self):
            Ray.stopped = True

    with pytest.raises(KeyboardInterrupt):
        init_ray(Ray(), None)
    assert Ray.stopped
