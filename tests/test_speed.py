"""Speed-checked compression: layers measured slower stay dense and the budget is reallocated."""

from __future__ import annotations

import pytest

import onnx_alds.speed as speed
from conftest import small_cnn
from onnx_alds.bench import LayerComparison, LayerTiming
from onnx_alds.errors import BudgetError


def fake_comparison(slow: set[str]):
    """Stands in for the timing: the named layers' pairs 'measured' 0.5x, the others 2x."""
    def compare(original, compressed, **_):
        names = {node.name[:-4] for node in compressed.graph.node if node.name.endswith(".enc")}
        rows = tuple(LayerTiming(name, "Conv", (1,), (f"{name}.enc", f"{name}.dec"), 100.0,
                                 200.0 if name in slow else 50.0, 0.5 if name in slow else 2.0)
                     for name in sorted(names))
        return LayerComparison("compressed", 1, rows)
    return compare


def test_slow_layer_kept_dense_and_budget_reallocated(monkeypatch):
    model = small_cnn(width=32)
    unchecked = {layer.name: layer for layer in speed.compress(model, keep_flops=0.7).report.layers}
    monkeypatch.setattr(speed, "compare_layers", fake_comparison({"conv2"}))
    result = speed.compress_speed_checked(model, keep_flops=0.7)
    layers = {layer.name: layer for layer in result.report.layers}
    assert unchecked["conv2"].groups and layers["conv2"].groups == 0
    assert "measured 0.50x on cpu" in layers["conv2"].skip_reason
    assert 0.95 * 0.7 <= result.report.achieved <= 0.7
    others = ("conv1", "conv3")  # they absorbed conv2's share of the cut
    assert sum(layers[n].macs_after for n in others) < sum(unchecked[n].macs_after for n in others)
    assert any("round 2" in note and "0 not" in note for note in result.report.notes)


def test_unreachable_after_speed_check_says_why(monkeypatch):
    monkeypatch.setattr(speed, "compare_layers", fake_comparison({"conv1", "conv2", "conv3"}))
    with pytest.raises(BudgetError, match="measured not faster when factorized"):
        speed.compress_speed_checked(small_cnn(width=32), keep_flops=0.5)


def test_real_timing_runs(tmp_path):
    result = speed.compress_speed_checked(small_cnn(width=32), keep_flops=0.9, runs=3, rounds=1)
    assert any(note.startswith("speed check round 1") for note in result.report.notes)
    assert "speed_check" in result.report.seconds
