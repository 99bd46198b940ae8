"""``--speed-check`` (a thin alias now): options measured slower than the dense layer are never candidates."""

from __future__ import annotations

import pytest

import onnx_alds.speed as speed
from conftest import small_cnn
from fake_timer import FakeTimer
from onnx_alds.errors import BudgetError


def test_slow_layer_kept_dense_and_budget_reallocated(tmp_path):
    model = small_cnn(width=32)
    unchecked = {layer.name: layer for layer in speed.compress(model, keep_flops=0.7).report.layers}
    assert unchecked["conv2"].groups, "without the check the allocation factorizes conv2"
    timer = FakeTimer(slow=lambda inputs, outputs: (inputs, outputs) == (64, 64))  # conv2's pairs: 10x slower
    result = speed.compress_speed_checked(model, keep_flops=0.7, timer=timer, cache_dir=str(tmp_path))
    layers = {layer.name: layer for layer in result.report.layers}
    assert layers["conv2"].groups == 0
    assert layers["conv2"].time_dense_us is not None  # the report shows what was measured
    assert 0.95 * 0.7 <= result.report.achieved <= 0.7
    others = ("conv1", "conv3")  # they absorbed conv2's share of the cut
    assert sum(layers[n].macs_after for n in others) < sum(unchecked[n].macs_after for n in others)
    for row in result.report.layers:
        if row.groups:
            assert row.time_us < row.time_dense_us


def test_unreachable_after_speed_check_says_why(tmp_path):
    timer = FakeTimer(slow=lambda inputs, outputs: True)
    with pytest.raises(BudgetError, match="smallest reachable ratio is 1.0000"):
        speed.compress_speed_checked(small_cnn(width=32), keep_flops=0.5, timer=timer, cache_dir=str(tmp_path))


def test_real_timing_runs(tmp_path):
    result = speed.compress_speed_checked(small_cnn(width=32), keep_flops=0.9, runs=3, cache_dir=str(tmp_path))
    assert result.report.latency["timings"] > 0
    assert "latency tables" in result.report.seconds
