"""validate: figures on identical, perturbed and hand-made models, output kinds, default tolerances,
opt-in labels, and exit paths."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnx_alds.cli import main
from onnx_alds.errors import InputDataError, ProviderError, UnsupportedModelError, ValidationFailedError
from onnx_alds.inputs import InputSet, load_inputs
from onnx_alds.plan import calibration_overlap
from onnx_alds.validate import (DEFAULT_TOLERANCES, OutputComparison, Tolerances, add_validate_arguments,
                                compare_output, nearest_neighbour_agreement, run_validate_command, summary_line,
                                validate, validate_and_bench)

OPSET = 17


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _classifier(noise: float = 0.0, seed: int = 0) -> onnx.ModelProto:
    """Conv(3→8, 3x3) → Relu → Flatten → Gemm(512→10); ``noise`` perturbs every weight."""
    rng = np.random.default_rng(seed)
    conv_w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    fc_w = rng.standard_normal((512, 10)).astype(np.float32) * 0.05
    fc_b = rng.standard_normal(10).astype(np.float32) * 0.1
    if noise:
        noisy = np.random.default_rng(seed + 1)
        conv_w = conv_w + noise * noisy.standard_normal(conv_w.shape).astype(np.float32)
        fc_w = fc_w + noise * noisy.standard_normal(fc_w.shape).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "conv1.weight"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                  [numpy_helper.from_array(conv_w, "conv1.weight"), numpy_helper.from_array(fc_w, "fc.weight"),
                   numpy_helper.from_array(fc_b, "fc.bias")])


def _swap_model(swap: bool) -> onnx.ModelProto:
    """logits = x @ P on 6 classes; P swaps classes 0 and 1 when ``swap``, else is the identity."""
    perm = np.eye(6, dtype=np.float32)
    if swap:
        perm[[0, 1]] = perm[[1, 0]]
    return _matmul(perm, ["N", 6], "logits")


def _matmul(weight: np.ndarray, x_dims: list, out: str = "y", *, normalize: bool = False,
            sigmoid: bool = False, out_dims: Optional[list] = None) -> onnx.ModelProto:
    """``out = x @ weight`` (optionally L2-normalized along the last axis, or through a sigmoid)."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm" if normalize or sigmoid else out], name="mm")]
    if normalize:
        nodes.append(helper.make_node("LpNormalization", ["mm"], [out], name="norm", axis=-1, p=2))
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["mm"], [out], name="sig"))
    dims = out_dims if out_dims is not None else [*x_dims[:-1], weight.shape[1]]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, dims)],
                  [numpy_helper.from_array(weight.astype(np.float32), "W")])


def _conv1x1(weight: np.ndarray, bias: Optional[np.ndarray] = None, *, sigmoid: bool = False) -> onnx.ModelProto:
    """``y = Conv1x1(x)`` on an NCHW map (optionally through a sigmoid): a dense-map output."""
    cout, cin = weight.shape
    inits = [numpy_helper.from_array(weight.reshape(cout, cin, 1, 1).astype(np.float32), "W")]
    inputs = ["x", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "B"))
        inputs.append("B")
    nodes = [helper.make_node("Conv", inputs, ["c" if sigmoid else "y"], name="conv")]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["y"], name="sig"))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, 5, 5])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cout, 5, 5])], inits)


def _four_class(weight_seed: int, noise: float = 0.0) -> onnx.ModelProto:
    """A 4-class linear classifier on 8 features; ``noise`` perturbs the weight."""
    weight = np.random.default_rng(weight_seed).standard_normal((8, 4))
    weight = weight + noise * np.random.default_rng(99).standard_normal((8, 4))
    return _matmul(weight, ["N", 8], "logits")


def run_cli(*args, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture()
def saved(tmp_path):
    original, perturbed = tmp_path / "model.onnx", tmp_path / "model.small.onnx"
    onnx.save(_classifier(), original)
    onnx.save(_classifier(noise=0.02), perturbed)
    return original, perturbed


@pytest.fixture()
def chance(tmp_path):
    """A 4-class classifier, a good compression of it (1 % weight noise) and a broken one (weights
    replaced by unrelated ones: its predictions agree with the original's about as often as chance, 0.25)."""
    paths = {name: tmp_path / f"{name}.onnx" for name in ("original", "good", "broken")}
    onnx.save(_four_class(0), paths["original"])
    onnx.save(_four_class(0, noise=0.01), paths["good"])
    onnx.save(_four_class(7), paths["broken"])
    return paths


@pytest.fixture()
def no_sessions(monkeypatch):
    """Make creating an ONNX Runtime session fail the test: proves that a check comes before any run."""
    created = []

    def refuse(*args, **kwargs):
        created.append(args)
        raise AssertionError("a session was created")

    monkeypatch.setattr("onnx_alds.validate.make_session", refuse)
    return created


# --- figures and stated tolerances -------------------------------------------------------------------


def test_identical_models_pass_with_zero_error():
    model = _classifier()
    data = load_inputs(model, random=20)
    report = validate(model, _classifier(), inputs=data, rtol=0.0, atol=0.0, min_top1_agreement=1.0, batch_size=8)
    (out,) = report.outputs
    assert report.passed and out.max_abs_error == 0.0 and out.max_rel_error == 0.0
    assert out.top1_agreement == 1.0 and out.top5_agreement == 1.0 and out.min_cosine == pytest.approx(1.0)
    assert out.samples == 20 and out.shape == (10,) and out.kind == "classifier"
    # the three stated limits, plus the classifier's default cosine floor (no cosine limit was stated)
    assert [(t.name, t.default) for t in out.applied] == [
        ("rtol", False), ("atol", False), ("min_top1_agreement", False), ("min_mean_cosine", True)]
    assert report.lines()[-1].startswith("PASSED (default tolerances where none was stated")
    assert report.lines()[-2].startswith("PASSED | Output: 'logits' (classifier) | rel=0")
    assert report.lines()[-2].endswith(
        "| tolerance rtol=0, atol=0, min-top1-agreement=1; default for classifier: min-mean-cosine=0.9")
    assert any("random" in note for note in report.notes)


def test_known_disagreements_top1_top5_and_accuracy():
    x = np.tile(-1.0 - 0.01 * np.arange(6, dtype=np.float32), (4, 1))  # distinct scores: no ties
    for i, cls in enumerate([0, 1, 2, 3]):
        x[i, cls] = 5.0
        x[i, 5] = 4.0 - i * 0.1  # runner-up class 5
    data = InputSet({"x": x}, labels=np.array([0, 1, 2, 3]), source="hand-made")
    report = validate(_swap_model(False), _swap_model(True), inputs=data, max_accuracy_drop=0.1)
    (out,) = report.outputs
    assert out.top1_agreement == 0.5  # samples of class 0 and 1 flip
    assert out.top5_agreement == 1.0  # the original class is still in the compressed top 5
    assert out.accuracy_original == 1.0 and out.accuracy_compressed == 0.5 and out.accuracy_drop == 0.5
    # the stated limit is named first; the default top-1 and cosine floors of a classifier fail too
    assert not report.passed and report.failure_message() == (
        "output 'logits': accuracy drop=0.5000 > max-accuracy-drop=0.1 (and 2 more); relax the tolerance or "
        "compress less")
    with pytest.raises(ValidationFailedError, match="^validation failed: output 'logits'"):
        report.raise_if_failed()


def test_top5_agreement_is_never_below_top1_when_scores_tie():
    """1000 tied scores: argmax and argpartition broke the tie differently, and an identical model scored
    top-1 1.0 with top-5 0.0."""
    scores = np.zeros((3, 1000), np.float32)
    scores[2, 7] = 1.0
    out = compare_output("y", scores, scores.copy(), classifier=True, labels=None, tolerances=Tolerances(),
                         check_accuracy=False)
    assert out.top1_agreement == 1.0 and out.top5_agreement == 1.0
    moved = scores.copy()
    moved[2, 7], moved[2, :6] = -1.0, 0.5  # class 7 drops below five others: out of the top 5
    out = compare_output("y", scores, moved, classifier=True, labels=None, tolerances=Tolerances(),
                         check_accuracy=False)
    assert out.top5_agreement == pytest.approx(2 / 3)


def test_top5_counts_a_class_tied_with_many_others_as_behind_them():
    """A saturated softmax (one 1, the rest exactly 0) that gives the original class 0 scored top-5 1.0:
    its 0 tied the fifth-highest 0."""
    original = np.eye(10, dtype=np.float32)[[3, 8]]
    compressed = np.eye(10, dtype=np.float32)[[0, 0]]  # the original classes get probability 0
    out = compare_output("p", original, compressed, classifier=True, labels=None, tolerances=Tolerances(),
                         check_accuracy=False)
    assert out.top1_agreement == 0.0 and out.top5_agreement == 0.0
    near = compressed.copy()
    near[0, 3] = 0.1  # the second highest: in the top 5
    out = compare_output("p", original, near, classifier=True, labels=None, tolerances=Tolerances(),
                         check_accuracy=False)
    assert out.top5_agreement == 0.5


def test_bool_outputs_that_flip_have_an_absolute_error():
    """A flipped bool output read abs=0 and passed --atol (bools are not numpy numbers)."""
    original = np.array([[True, False], [False, False]])
    flipped = np.array([[False, False], [False, True]])
    out = compare_output("flag", original, flipped, classifier=False, labels=None, tolerances=Tolerances(atol=0.5),
                         check_accuracy=False)
    assert out.max_abs_error == 1.0 and not out.passed


def test_nan_outputs_show_nan_errors_not_zero():
    """The largest absolute error of NaN outputs read "abs=0" (Python's max drops a NaN)."""
    original = np.array([[3.0, 4.0], [1.0, 0.0]])
    compressed = np.array([[np.nan, 4.0], [1.0, 0.0]])
    out = compare_output("y", original, compressed, classifier=False, labels=None, tolerances=Tolerances(atol=0.1),
                         check_accuracy=False)
    assert np.isnan(out.max_abs_error) and out.failures
    # "abs=nan > atol=0.1" read as a comparison; the failure says where the NaN comes from
    assert out.failures == ("abs=nan, not within atol=0.1: one model gives NaN or Inf where the other does not",)


def test_nan_values_of_the_original_that_the_compressed_model_shares_are_set_aside():
    """A model against itself with a NaN output value (Log of a negative): top1 1.0 but top5 0.0, mean
    cosine NaN, and the advice to compress less; the NaN is the original's own."""
    original = np.array([[1.0, np.nan, 3.0, 0.5, 0.1, 2.0], [0.2, 0.1, np.inf, 0.3, 0.4, 0.5]])
    out = compare_output("y", original, original.copy(), classifier=True, labels=None, tolerances=Tolerances(),
                         check_accuracy=False)
    assert out.top1_agreement == 1.0 and out.top5_agreement == 1.0 and out.mean_cosine == pytest.approx(1.0)
    assert out.max_abs_error == 0.0 and not out.failures
    other = original.copy()
    other[0, 1] = 5.0  # a NaN the compressed model does not share stays in the figures
    assert np.isnan(compare_output("y", original, other, classifier=True, labels=None, tolerances=Tolerances(),
                                   check_accuracy=False).max_abs_error)


def test_an_output_whose_every_value_both_models_give_as_nan_has_no_figures_and_fails():
    """Every value NaN in both models read rel=0 cos=1 and passed (the set-aside values compared as 0); a
    sample whose values are all set aside has no figure of its own."""
    original = np.full((3, 4), np.nan)
    out = compare_output("y", original, original.copy(), classifier=False, labels=None, tolerances=Tolerances(rtol=0.5),
                         check_accuracy=False)
    assert np.isnan(out.mean_cosine) and np.isnan(out.max_rel_error) and not out.passed
    assert "nothing to compare" in out.failures[0]
    partly = np.array([[np.nan, np.nan], [3.0, 4.0]])
    compressed = np.array([[np.nan, np.nan], [4.0, 3.0]])
    out = compare_output("y", partly, compressed, classifier=False, labels=None, tolerances=Tolerances(),
                         check_accuracy=False)
    assert out.mean_cosine == pytest.approx(24 / 25) and out.mean_rel_error == pytest.approx(np.sqrt(2) / 5)


def test_relative_error_and_cosine_definitions():
    original = np.array([[3.0, 4.0], [1.0, 0.0]])
    compressed = np.array([[3.3, 4.4], [1.0, 1.0]])
    out = compare_output("y", original, compressed, classifier=False, labels=None, tolerances=Tolerances(rtol=0.5),
                         check_accuracy=False)
    assert out.max_abs_error == pytest.approx(1.0)
    # sample 0: ‖(0.3, 0.4)‖ / ‖(3, 4)‖ = 0.1; sample 1: ‖(0, 1)‖ / ‖(1, 0)‖ = 1
    assert out.max_rel_error == pytest.approx(1.0) and out.mean_rel_error == pytest.approx(0.55)
    assert out.mean_cosine == pytest.approx((1.0 + 1 / np.sqrt(2)) / 2)
    assert out.failures == ("rel=1 > rtol=0.5",)
    assert out.kind == "regression" and out.top1_agreement is None  # compare_output applies no defaults
    assert [t.name for t in out.applied] == ["rtol"]


def test_tight_rtol_fails_through_the_command(saved, tmp_path, capsys):
    original, perturbed = saved
    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    report_path = tmp_path / "report.json"
    args = parser.parse_args([str(original), str(perturbed), "--random", "16", "--rtol", "1e-6",
                              "--json", str(report_path)])
    with pytest.raises(ValidationFailedError, match="rel=.* > rtol=1e-06"):
        run_validate_command(args)
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith("FAILED | Output: 'logits'")
    assert printed[-1] == "FAILED | 1 of 1 output(s) missed a tolerance"
    data = json.loads(report_path.read_text())
    assert data["passed"] is False and data["provider"] == "cpu" and data["onnxruntime_version"]
    assert data["random_inputs"] is True and data["outputs"][0]["max_rel_error"] > 1e-6


def test_loose_stated_tolerances_pass_through_the_command(saved, capsys):
    original, perturbed = saved
    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    # every default of a classifier overridden: top-1 and cosine floors of 0 cannot fail
    args = parser.parse_args([str(original), str(perturbed), "--random", "8", "--rtol", "10", "--batch-size", "3",
                              "--min-top1-agreement", "0", "--min-mean-cosine", "0"])
    assert run_validate_command(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "PASSED"  # every limit stated: no default applied


def test_accuracy_drop_without_labels_is_an_input_error():
    model = _classifier()
    with pytest.raises(InputDataError, match="needs labels"):
        validate(model, model, inputs=load_inputs(model, random=4), max_accuracy_drop=0.01)


def test_cuda_with_cpu_only_onnxruntime_is_a_provider_error():
    model = _classifier()
    with pytest.raises(ProviderError, match="provider 'cuda' is not available"):
        validate(model, model, inputs=load_inputs(model, random=2), provider="cuda")


def test_fixed_batch_model_runs_at_its_batch():
    model = _classifier()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    report = validate(model, model, inputs=load_inputs(model, random=3), batch_size=32)
    assert report.batch_size == 1 and report.samples == 3 and report.passed


# --- default tolerances ------------------------------------------------------------------------------


def test_default_tolerances_fail_a_model_at_chance(chance, capsys):
    code, out, err = run_cli("validate", chance["original"], chance["broken"], "--random", "200", capsys=capsys)
    assert code == 1
    line = _one_error_line(err)
    assert line.startswith("error: validation failed: output 'logits': top1=")
    assert "< min-top1-agreement=0.9 (default for classifier outputs)" in line and "--figures-only" in line
    (output_line,) = [row for row in out.splitlines() if "Output: 'logits'" in row]
    assert output_line.startswith("FAILED | Output: 'logits' (classifier)")
    assert "default for classifier: min-top1-agreement=0.9, min-mean-cosine=0.9" in output_line
    top1 = float(output_line.split("top1=")[1].split()[0])
    assert 0.1 < top1 < 0.45  # unrelated weights on 4 classes: about chance (0.25)


def test_default_tolerances_pass_a_good_compression(chance, tmp_path, capsys):
    report_path = tmp_path / "v.json"
    code, out, err = run_cli("validate", chance["original"], chance["good"], "--random", "200",
                             "--json", report_path, capsys=capsys)
    assert code == 0, err
    assert out.splitlines()[-1].startswith("PASSED (default tolerances")
    data = json.loads(report_path.read_text())
    (output,) = data["outputs"]
    assert output["kind"] == "classifier" and output["top1_agreement"] >= 0.9 and output["mean_cosine"] >= 0.9
    assert [(t["flag"], t["limit"], t["default"], t["passed"]) for t in output["tolerances"]] == [
        ("--min-top1-agreement", 0.9, True, True), ("--min-mean-cosine", 0.9, True, True)]
    assert data["figures_only"] is False and data["default_tolerances"]["embedding"] == {
        "min_mean_cosine": 0.95, "min_nn_agreement": 0.7}


def test_a_stated_limit_replaces_only_its_own_default(chance):
    model, broken = onnx.load(str(chance["original"])), onnx.load(str(chance["broken"]))
    report = validate(model, broken, inputs=load_inputs(model, random=100), min_top1_agreement=0.0)
    (out,) = report.outputs
    assert [(t.name, t.default) for t in out.applied] == [("min_top1_agreement", False), ("min_mean_cosine", True)]
    assert out.failures and out.failures[0].startswith("mean cos=")  # the default cosine floor still fails it


def test_figures_only_prints_figures_and_exits_0(chance, capsys):
    code, out, err = run_cli("validate", chance["original"], chance["broken"], "--random", "50", "--figures-only",
                             capsys=capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[-2].startswith("FIGURES | Output: 'logits' (classifier) | rel=") and "top1=" in lines[-2]
    assert lines[-2].endswith("| figures only")
    assert lines[-1] == "FIGURES ONLY (--figures-only: no tolerance checked)"


def test_figures_only_with_a_tolerance_is_an_error(chance, capsys, no_sessions):
    code, _, err = run_cli("validate", chance["original"], chance["broken"], "--random", "5", "--figures-only",
                           "--rtol", "0.1", capsys=capsys)
    assert code == 1 and "--figures-only checks nothing" in _one_error_line(err)
    assert not no_sessions


def test_regression_default_catches_a_scale_error_that_cosine_misses():
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((4, 1))
    original, scaled = _matmul(weight, ["N", 4]), _matmul(1.5 * weight, ["N", 4])
    report = validate(original, scaled, inputs=load_inputs(original, random=10))
    (out,) = report.outputs
    assert out.kind == "regression" and out.kind_reason == "2-D float [N, 1]"
    # c = 1.5 o: every sample's relative error is exactly 0.5 (a cosine would be exactly 1; of one value per
    # sample none is measured at all)
    assert out.mean_rel_error == pytest.approx(0.5) and out.min_cosine is None
    assert out.failures == ("mean rel=0.5 > max-mean-rel=0.1 (default for regression outputs)",)


# --- output kinds ------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _nn_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Nearest neighbour by cosine over the full similarity matrix, self excluded."""
    sa, sb = _unit(a) @ _unit(a).T, _unit(b) @ _unit(b).T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    return float(np.mean(np.argmax(sa, axis=1) == np.argmax(sb, axis=1)))


def test_embedding_by_unit_norm_nn_over_the_whole_set_across_batches():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((8, 6))
    noisy = weight + 0.6 * rng.standard_normal((8, 6))
    original, compressed = _matmul(weight, ["N", 8], normalize=True), _matmul(noisy, ["N", 8], normalize=True)
    x = rng.standard_normal((15, 8)).astype(np.float32)
    report = validate(original, compressed, inputs=InputSet({"x": x}, source="t"), batch_size=4)
    (out,) = report.outputs
    assert out.kind == "embedding" and "unit L2 norm" in out.kind_reason
    expected = _nn_reference(x @ weight, x @ noisy)
    per_batch = np.mean([_nn_reference((x @ weight)[i:i + 5], (x @ noisy)[i:i + 5]) for i in range(0, 15, 5)])
    assert expected != pytest.approx(per_batch)  # the figure below can only match by using the whole set
    assert out.nn_agreement == pytest.approx(expected)
    assert out.mean_cosine == pytest.approx(float(np.mean(np.sum(_unit(x @ weight) * _unit(x @ noisy), axis=1))),
                                            abs=1e-6)
    assert out.top1_agreement is None and f"nn={expected:.4f}" in out.line()
    assert "default for embedding: min-mean-cosine=0.95, min-nn-agreement=0.7" in out.line()


def test_embedding_by_name_and_its_summary():
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((8, 6))
    original = _matmul(weight, ["N", 8], "sentence_embedding")
    report = validate(original, original, inputs=load_inputs(original, random=6))
    (out,) = report.outputs
    assert out.kind == "embedding" and out.kind_reason == "2-D float [N, 6], name says embedding"
    assert out.nn_agreement == 1.0 and report.passed
    line = summary_line(report, 1.5, provider="cpu", batch=1)
    assert line == ("summary: speedup 1.50x on cpu (batch 1), mean cosine 1.0000, nearest-neighbour agreement 1.00, "
                    "on random inputs (not real data)")


def test_nn_needs_three_samples():
    original = _matmul(np.random.default_rng(6).standard_normal((8, 6)), ["N", 8], "embeddings")
    (out,) = validate(original, original, inputs=load_inputs(original, random=2)).outputs
    assert out.nn_agreement is None and "nn=n/a" in out.line()
    assert out.unchecked == ("min-nn-agreement not checked (needs ≥ 3 samples)",)
    assert [t.name for t in out.applied] == ["min_mean_cosine"]  # the other default is still checked
    with pytest.raises(InputDataError, match="--min-nn-agreement needs at least 3 samples, got 2"):
        validate(original, original, inputs=load_inputs(original, random=2), min_nn_agreement=0.5)


def test_output_kind_given_twice_with_different_kinds(chance, capsys):
    code, _, err = run_cli("validate", chance["original"], chance["good"], "--random", "4", "--output-kind",
                           "logits=classifier", "--output-kind", "logits=regression", capsys=capsys)
    assert code == 1 and "gives 'logits' two kinds" in _one_error_line(err)


def test_probability_rows_stay_a_classifier():
    weight = np.random.default_rng(2).standard_normal((8, 4))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Softmax", ["mm"], ["probs"], axis=1)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                   [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])],
                   [numpy_helper.from_array(weight.astype(np.float32), "W")])
    (out,) = validate(model, model, inputs=load_inputs(model, random=5)).outputs
    assert out.kind == "classifier" and out.kind_reason == "2-D float [N, 4], rows are probabilities"


def test_sequence_position_and_whole_sequence_agreement():
    swap = np.eye(3)
    swap[[0, 1]] = swap[[1, 0]]  # classes 0 and 1 trade places: a position flips where its arg-max is 0 or 1
    original, compressed = _matmul(np.eye(3), ["N", 5, 3]), _matmul(swap, ["N", 5, 3])
    x = np.random.default_rng(1).standard_normal((6, 5, 3)).astype(np.float32)
    x[0, :, 2] = 9.0  # sample 0: class 2 everywhere, identical sequences
    report = validate(original, compressed, inputs=InputSet({"x": x}, source="t"), batch_size=4)
    (out,) = report.outputs
    assert out.kind == "sequence" and out.kind_reason == "3-D float [N, 5, 3]"
    differ = np.argmax(x, axis=2) != np.argmax(x @ swap, axis=2)
    assert out.position_agreement == pytest.approx(1 - differ.mean())
    assert out.sequence_agreement == pytest.approx(np.mean(~differ.any(axis=1)))
    assert 0 < out.sequence_agreement < 1 and out.position_agreement < 0.9
    assert f"pos={out.position_agreement:.4f} < min-position-agreement=0.9 (default for sequence outputs)" \
        in out.failures
    # a 3-D hidden state reads as a sequence by its shape: the failure line says how to name its kind
    assert report.failure_message().endswith("if 'y' is not a sequence output, say what it is (--output-kind y=KIND)")
    stated = validate(original, compressed, inputs=InputSet({"x": x}, source="t"), batch_size=4,
                      output_kinds={"y": "sequence"})
    assert "--output-kind y=KIND" not in stated.failure_message()


def test_dense_multiclass_iou_of_argmax_maps():
    swap = np.eye(3)
    swap[[1, 2]] = swap[[2, 1]]  # channels 1 and 2 swap: class 0 pixels keep their label
    original, compressed = _conv1x1(np.eye(3)), _conv1x1(swap)
    x = np.random.default_rng(2).standard_normal((4, 3, 5, 5)).astype(np.float32)
    report = validate(original, compressed, inputs=InputSet({"x": x}, source="t"), batch_size=3)
    (out,) = report.outputs
    assert out.kind == "dense" and out.kind_reason == "4-D float [N, 3, 5, 5], channels on axis 1"
    map_o, map_c = np.argmax(x, axis=1), np.argmax(np.einsum("dc,nchw->ndhw", swap, x), axis=1)
    ious = [np.sum((map_o == k) & (map_c == k)) / np.sum((map_o == k) | (map_c == k)) for k in range(3)]
    assert ious[0] == 1.0 and ious[1] == 0.0  # a class whose pixels all moved scores 0
    assert out.iou == pytest.approx(np.mean(ious)) and "arg-max over 3 channels" in out.iou_rule
    assert any(f.startswith("iou=") for f in out.failures)


@pytest.mark.parametrize("sigmoid, threshold", [(True, 0.5), (False, 0.0)])
def test_dense_binary_mask_threshold_follows_the_value_range(sigmoid, threshold):
    original = _conv1x1(np.eye(1), np.zeros(1), sigmoid=sigmoid)
    shifted = _conv1x1(np.eye(1), np.full(1, 0.3), sigmoid=sigmoid)  # pre-activation + 0.3: the mask grows
    x = np.random.default_rng(4).standard_normal((3, 1, 5, 5)).astype(np.float32)
    (out,) = validate(original, shifted, inputs=InputSet({"x": x}, source="t")).outputs
    # probabilities (sigmoid) are thresholded at 0.5, logits at 0: both are "pre-activation > 0"; the
    # wrong rule would give IoU 1 (probabilities > 0 everywhere) or a different ratio
    expected = np.sum(x > 0) / np.sum(x > -0.3)
    assert out.kind == "dense" and out.iou == pytest.approx(expected) and expected < 1
    assert f"value > {threshold:g}" in out.iou_rule


def test_non_float_and_unbatched_outputs_are_regression():
    nodes = [helper.make_node("ArgMax", ["x"], ["cls"], axis=1, keepdims=0),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
                    helper.make_tensor_value_info("total", TensorProto.FLOAT, [])], [])
    report = validate(model, model, inputs=load_inputs(model, random=10), batch_size=4)
    kinds = {o.name: (o.kind, o.kind_reason, o.samples) for o in report.outputs}
    assert kinds["cls"][0] == "regression" and kinds["cls"][1].startswith("int64 values, compared element by element")
    assert kinds["cls"][2] == 10 and kinds["total"] == ("regression", "first dim is not the batch", 3)
    # labels are compared by equality: the fraction that differ, never an infinite relative error
    shifted = _model([helper.make_node("Neg", ["x"], ["negx"]),
                      helper.make_node("ArgMin", ["negx"], ["cls"], axis=1, keepdims=0, select_last_index=0),
                      helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                     [helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
                      helper.make_tensor_value_info("total", TensorProto.FLOAT, [])], [])
    x = np.array([[0, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 3], [1, 1, 0, 0]], np.float32)  # last: a tie
    same = validate(model, shifted, inputs=InputSet({"x": x}, source="t")).outputs[0]
    assert same.mean_rel_error == 0 and same.passed
    other = _model([helper.make_node("ArgMin", ["x"], ["cls"], axis=1, keepdims=0),
                    helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
                    helper.make_tensor_value_info("total", TensorProto.FLOAT, [])], [])
    differ = validate(model, other, inputs=InputSet({"x": x}, source="t")).outputs[0]
    expected = np.mean(np.argmax(x, axis=1) != np.argmin(x, axis=1))
    assert differ.mean_rel_error == pytest.approx(expected) and 0 < expected <= 1 and np.isfinite(differ.max_rel_error)
    assert differ.figures().startswith("differ=") and "abs=" not in differ.figures()


# --- --output-kind -----------------------------------------------------------------------------------


def test_output_kind_flag_overrides_the_shape(chance, capsys):
    code, out, _ = run_cli("validate", chance["original"], chance["good"], "--random", "20",
                           "--output-kind", "logits=regression", capsys=capsys)
    assert code == 0
    (line,) = [row for row in out.splitlines() if "Output: 'logits'" in row]
    assert line.startswith("PASSED | Output: 'logits' (regression)") and "top1=" not in line
    assert "default for regression: max-mean-rel=0.1" in line
    assert "'logits' regression (--output-kind)" in out


def test_output_kind_embedding_mean_pools_3d_with_the_attention_mask():
    rng = np.random.default_rng(8)
    weight, noisy = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))

    def model(w):
        nodes = [helper.make_node("MatMul", ["x", "W"], ["hidden"]),
                 helper.make_node("Identity", ["attention_mask"], ["mask_out"])]
        return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4]),
                              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", 5])],
                      [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", 5, 6]),
                       helper.make_tensor_value_info("mask_out", TensorProto.INT64, ["N", 5])],
                      [numpy_helper.from_array(w.astype(np.float32), "W")])

    x = rng.standard_normal((7, 5, 4)).astype(np.float32)
    mask = (rng.random((7, 5)) < 0.6).astype(np.int64)
    mask[:, 0] = 1
    inputs = InputSet({"x": x, "attention_mask": mask}, source="t")
    default = {o.name: o for o in validate(model(weight), model(noisy), inputs=inputs).outputs}
    assert default["hidden"].kind == "sequence" and default["mask_out"].kind == "regression"
    report = validate(model(weight), model(noisy), inputs=inputs, output_kinds={"hidden": "embedding"}, batch_size=3)
    out = report.outputs[0]
    assert out.kind == "embedding" and "weighted by input 'attention_mask'" in out.kind_reason

    def pooled(w):
        return np.einsum("ntd,nt->nd", x @ w, mask) / mask.sum(axis=1, keepdims=True)

    cosine = np.sum(_unit(pooled(weight)) * _unit(pooled(noisy)), axis=1)
    assert out.mean_cosine == pytest.approx(cosine.mean(), abs=1e-6)
    assert out.nn_agreement == pytest.approx(_nn_reference(pooled(weight), pooled(noisy)))


def test_output_kind_that_does_not_fit_errors_before_running(chance, capsys, no_sessions):
    code, _, err = run_cli("validate", chance["original"], chance["good"], "--random", "4",
                           "--output-kind", "logits=sequence", capsys=capsys)
    assert "--output-kind logits=sequence needs a 3-D float output" in _one_error_line(err) and code == 1
    code, _, err = run_cli("validate", chance["original"], chance["good"], "--random", "4",
                           "--output-kind", "probs=classifier", capsys=capsys)
    assert "'probs', which is not a graph output" in _one_error_line(err) and code == 1
    assert not no_sessions
    code, _, _ = run_cli("validate", chance["original"], chance["good"], "--random", "4",
                         "--output-kind", "logits=histogram", capsys=capsys)
    assert code == 2  # an unknown kind is a usage error


def test_a_stated_tolerance_without_its_kind_is_an_error():
    original = _matmul(np.eye(3), ["N", 5, 3])
    with pytest.raises(InputDataError, match=r"--min-top1-agreement needs a classifier output and the model has "
                                              r"none \(output kinds: y=sequence\)"):
        validate(original, original, inputs=load_inputs(original, random=4), min_top1_agreement=0.9)


def test_nearest_neighbour_blocks_match_the_full_matrix():
    rng = np.random.default_rng(9)
    a = rng.standard_normal((40, 5))
    b = a + 0.5 * rng.standard_normal((40, 5))
    assert nearest_neighbour_agreement(a, b) == pytest.approx(_nn_reference(a, b))
    assert nearest_neighbour_agreement(a, a) == 1.0


def test_nearest_neighbours_of_embeddings_with_a_common_component_are_found_in_float64():
    """float32 cosines of embeddings sharing a large offset (every pair above 0.999) let rounding pick the
    neighbour: 0.078 agreement reported where float64 cosines of the same float32 outputs give 0.203."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16))
    a = (x @ rng.standard_normal((16, 16)) + 3e4).astype(np.float32)
    b = (x @ rng.standard_normal((16, 16)) + 3e4).astype(np.float32)
    assert nearest_neighbour_agreement(a, b) == pytest.approx(_nn_reference(a.astype(np.float64),
                                                                            b.astype(np.float64)))
    # copies of one sample: any copy is the nearest neighbour (rounding picked one, and agreement fell to 0.23)
    copies = np.repeat(rng.standard_normal((8, 16)), 5, axis=0)
    noisy = copies * (1 + 1e-6 * rng.standard_normal(copies.shape))
    assert nearest_neighbour_agreement(copies, noisy) == 1.0


# --- labels are opt-in -------------------------------------------------------------------------------


def _image_classifier() -> onnx.ModelProto:
    """x [N, 3, 4, 4] → GlobalAveragePool → Flatten → MatMul → logits [N, 4]."""
    weight = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "W"], ["logits"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                  [numpy_helper.from_array(weight, "W")])


@pytest.fixture()
def photos(tmp_path):
    """A model and 8 camera-style images IMG_2030.png … IMG_2037.png: the numbers are not classes."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(folder / f"IMG_{2030 + i}.png")
    model = tmp_path / "m.onnx"
    onnx.save(_image_classifier(), model)
    return model, folder


def test_image_names_give_no_labels_by_default(photos, capsys):
    model, folder = photos
    code, out, err = run_cli("validate", model, model, "--images", folder, "--preprocess", "custom", capsys=capsys)
    assert code == 0, err
    (line,) = [row for row in out.splitlines() if "Output: 'logits'" in row]
    assert "acc=" not in line and "top1=1.0000" in line


def test_labels_from_filenames_with_bad_names_errors_before_any_model_runs(photos, capsys, no_sessions):
    model, folder = photos
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "holiday.png")
    code, _, err = run_cli("validate", model, model, "--images", folder, "--preprocess", "custom",
                           "--labels-from-filenames", capsys=capsys)
    assert code == 1 and "'holiday.png' has no class id" in _one_error_line(err)
    assert not no_sessions


def test_labels_out_of_the_class_range_error_before_any_model_runs(photos, capsys, no_sessions):
    model, folder = photos
    code, _, err = run_cli("validate", model, model, "--images", folder, "--preprocess", "custom",
                           "--labels-from-filenames", capsys=capsys)
    line = _one_error_line(err)  # the first sample outside the range is named
    assert code == 1 and re.search(r"labels range over 2030\.\.2037 \(first outside: sample 1, class id 20\d\d\), "
                                   r"but output 'logits' has 4 classes; give class ids in \[0, 4\)", line)
    assert not no_sessions


def test_labels_file_gives_accuracy(photos, tmp_path, capsys):
    model, folder = photos
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"IMG_{2030 + i}.png,{i % 4}\n" for i in range(8)))
    code, out, err = run_cli("validate", model, model, "--images", folder, "--preprocess", "custom",
                             "--labels", labels, "--max-accuracy-drop", "0", capsys=capsys)
    assert code == 0, err
    (line,) = [row for row in out.splitlines() if "Output: 'logits'" in row]
    assert "(drop +0.0000)" in line and "tolerance max-accuracy-drop=0" in line


# --- compress --validate and the summary ---------------------------------------------------------------


def test_validate_and_bench_summary(saved):
    original, perturbed = saved
    inputs = load_inputs(_classifier(), random=8)
    report, timing, summary = validate_and_bench(
        original, perturbed, inputs=inputs, provider="cpu", min_top1_agreement=0.0, min_mean_cosine=0.0, batch=1,
        weights_kept=0.48, macs_kept=0.5, bench_options={"runs": 3, "warmup": 1, "min_time_s": 0.0})
    assert report.passed and timing.timing(0, 1).speedup == 1.0
    assert summary.startswith("summary: weights kept 0.48, MACs kept 0.50, speedup ")
    assert "x on cpu (batch 1), top-1 agreement " in summary and summary.endswith("(not real data)")


def test_summary_without_classifier_reports_cosine():
    original = np.ones((2, 3))
    out = compare_output("emb", original, original, classifier=False, labels=None, tolerances=Tolerances(),
                         check_accuracy=False)
    from onnx_alds.validate import ValidationReport

    report = ValidationReport("a", "b", (out,), Tolerances(), 2, "npz", False, False, "cpu", "CPUExecutionProvider",
                              1, "1.0")
    assert summary_line(report, 2.0, provider="cpu", batch=1) == \
        "summary: speedup 2.00x on cpu (batch 1), min cosine 1.0000, max rel error 0"


def test_compress_validate_flags_and_summary():
    from onnx_alds.inputs import add_input_arguments
    from onnx_alds.validate import add_validation_arguments, validate_from_args

    parser = argparse.ArgumentParser()
    add_input_arguments(parser, prefix="calibration-")
    parser.add_argument("--validate", action="store_true")
    add_validation_arguments(parser)
    args = parser.parse_args(["--validate", "--calibration-random", "4", "--min-top1-agreement", "1.0"])
    summary = validate_from_args(_classifier(), _classifier(noise=0.05), args)
    assert "calibration inputs" in summary.validation.input_source and summary.validation.random_inputs
    assert not summary.passed and summary.line.endswith("on random inputs (not real data), FAILED")
    assert isinstance(summary.failure, ValidationFailedError)
    assert summary.text.splitlines()[-1] == summary.line
    args = parser.parse_args(["--validate", "--validate-random", "6"])
    summary = validate_from_args(_classifier(), _classifier(), args)
    assert summary.passed and summary.failure is None and summary.validation.samples == 6
    assert summary.bench.models == ("original", "compressed")
    assert summary.validation.uses_defaults  # the same defaults as validate


def test_compress_validate_uses_the_default_tolerances(chance):
    from onnx_alds.inputs import add_input_arguments
    from onnx_alds.validate import add_validation_arguments, validate_from_args

    parser = argparse.ArgumentParser()
    add_input_arguments(parser, prefix="calibration-")
    add_validation_arguments(parser)
    model, broken = onnx.load(str(chance["original"])), onnx.load(str(chance["broken"]))
    summary = validate_from_args(model, broken, parser.parse_args(["--validate-random", "100"]))
    assert not summary.passed and "(default for classifier outputs)" in str(summary.failure)
    summary = validate_from_args(model, broken, parser.parse_args(["--validate-random", "100", "--figures-only"]))
    assert summary.passed and summary.validation.figures_only


def test_default_table_is_what_the_docs_state():
    """docs/VALIDATE_AND_BENCH.md lists the defaults with their reasons: the code and the docs agree."""

    docs = (Path(__file__).resolve().parents[1] / "docs" / "VALIDATE_AND_BENCH.md").read_text()
    table = docs[docs.index("| kind | default tolerances |"):]
    documented = {}
    for kind in DEFAULT_TOLERANCES:
        row = next(line for line in table.splitlines() if line.startswith(f"| {kind} | "))
        pairs = re.findall(r"`--([a-z0-9-]+) ([0-9.]+)`", row)
        documented[kind] = {flag.replace("-", "_"): float(value) for flag, value in pairs}
    assert documented == {kind: tol.stated() for kind, tol in DEFAULT_TOLERANCES.items()}
    assert documented["classifier"] == {"min_top1_agreement": 0.9, "min_mean_cosine": 0.9}


def test_models_with_inputs_of_other_shapes_are_named_not_the_data():
    """An RGB 8x8 classifier against one taking 1x8x8: the error blamed the random inputs."""
    from onnx_alds.errors import UnsupportedModelError

    other = _classifier()
    other.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    with pytest.raises(UnsupportedModelError, match=r"'x' is float32 \[N, 3, 8, 8\] in the original and float32 "
                                                    r"\[N, 1, 8, 8\] in the other"):
        validate(_classifier(), other, inputs=InputSet({"x": np.zeros((2, 3, 8, 8), np.float32)}, source="t"))


def test_out_of_memory_in_validation_names_the_batch_size():
    """ONNX Runtime out of memory at the default batch of 32 (a 2048-token attention model) was told
    'random inputs do not fit this model: give real inputs'."""
    from onnx_alds.errors import RuntimeResourceError
    from onnx_alds.validate import _run_validation

    class Session:
        def run(self, names, feed):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running MatMul "
                               "node. Name:'sc0' Status Message: /src/bfc_arena.cc:360\nFailed to allocate memory "
                               "for requested buffer of size 2147483648")

    with pytest.raises(RuntimeResourceError, match=r"Failed to allocate memory .*--batch-size N below 32"):
        _run_validation(Session(), ["y"], {"x": np.zeros((32, 4), np.float32)}, "compressed", random=True)


def test_a_model_with_a_string_input_is_validated_and_timed_on_real_inputs():
    """compress --validate --validate-inputs REAL.npz on a model with a string input (a scikit-learn
    encoder) failed after all the work, asking for the .npz it had been given: the timing that follows
    validation feeds random inputs, and no random string can be made. It times on the validation inputs
    (untimed, with a note, when there are fewer of them than the batch)."""
    from onnx_alds.inputs import InputSet
    from onnx_alds.validate import validate_and_bench

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("LabelEncoder", ["s"], ["code"], domain="ai.onnx.ml", keys_strings=["red", "blue"],
                              values_int64s=[1, 2], default_int64=0),
             helper.make_node("Cast", ["code"], ["codef"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["h", "codef"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
                                           helper.make_tensor_value_info("s", TensorProto.STRING, ["N", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 2)],
                              ir_version=8)
    inputs = InputSet({"x": rng.standard_normal((20, 16)).astype(np.float32),
                       "s": rng.choice(["red", "blue", "cyan"], (20, 1))})
    report, timing, line = validate_and_bench(model, model, inputs=inputs, bench_options={"runs": 1, "min_time_s": 0})
    assert report.passed and timing is not None  # timed on the validation inputs, and said so
    assert "timed on the first 1 validation input(s): random timing inputs do not fit (cannot make random data" in line
    fewer = validate_and_bench(model, model, inputs=inputs.head(1), batch=2,  # fewer inputs than the batch
                               bench_options={"runs": 1, "min_time_s": 0})
    assert fewer[1] is None and "not timed (timing feeds random inputs: cannot make random data" in fewer[2]


def test_atol_fails_a_string_output_whose_labels_changed():
    """Class names from a LabelEncoder: the largest absolute difference of strings read 0, so --atol 0
    passed a model whose labels changed on most samples (a bool or int output failed it)."""
    from onnx_alds.inputs import InputSet
    from onnx_alds.validate import validate

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"]),
             helper.make_node("ArgMax", ["logits"], ["cls"], axis=1, keepdims=0),
             helper.make_node("LabelEncoder", ["cls"], ["label"], domain="ai.onnx.ml", keys_int64s=list(range(8)),
                              values_strings=[f"c{k}" for k in range(8)], default_string="?")]

    def model(weight: np.ndarray) -> onnx.ModelProto:
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                                  [helper.make_tensor_value_info("label", TensorProto.STRING, ["N"])],
                                  [numpy_helper.from_array(weight.astype(np.float32), "W")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                       helper.make_opsetid("ai.onnx.ml", 3)], ir_version=8)

    original, changed = model(rng.standard_normal((16, 8))), model(rng.standard_normal((16, 8)))
    inputs = InputSet({"x": rng.standard_normal((40, 16)).astype(np.float32)})
    assert not validate(original, changed, inputs=inputs, atol=0.0, max_mean_rel=1.0).passed
    assert validate(original, original, inputs=inputs, atol=0.0, max_mean_rel=1.0).passed


def test_the_summary_of_a_label_output_gives_its_agreement_not_a_cosine():
    """An ArgMax-only model: the summary said 'min cosine 0.0000, max rel error 1' for class ids that agree
    on 35 % of the samples; it names the output's agreement."""
    from onnx_alds.inputs import InputSet
    from onnx_alds.validate import summary_line, validate

    rng = np.random.default_rng(1)

    def model(weight: np.ndarray) -> onnx.ModelProto:
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["logits"]),
                                   helper.make_node("ArgMax", ["logits"], ["cls"], axis=1, keepdims=0)], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                                  [helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"])],
                                  [numpy_helper.from_array(weight.astype(np.float32), "W")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    weight = rng.standard_normal((16, 8))
    inputs = InputSet({"x": rng.standard_normal((64, 16)).astype(np.float32)})
    report = validate(model(weight), model(weight + 0.8 * rng.standard_normal((16, 8))), inputs=inputs,
                      figures_only=True)
    agreement = 1.0 - report.outputs[0].mean_rel_error
    line = summary_line(report, None, provider="cpu", batch=1)
    assert f"'cls' agreement {agreement:.2f}" in line and "cosine" not in line and 0.0 < agreement < 1.0


def test_a_check_no_output_can_take_says_so_instead_of_naming_a_refused_kind():
    """--max-accuracy-drop on an ArgMax-only model told the user to set --output-kind NAME=classifier, which is
    then refused (class ids are not a 2-D float output); with scores among the outputs it names that one."""
    from onnx_alds.inputs import InputSet
    from onnx_alds.validate import validate

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["cls"], axis=1, keepdims=0)]
    weight = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W")
    inputs = InputSet({"x": rng.standard_normal((20, 16)).astype(np.float32)},
                      labels=rng.integers(0, 8, 20))
    ids_only = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"])], [weight]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputDataError, match=r"no output can be one .*scores or logits") as caught:
        validate(ids_only, ids_only, inputs=inputs, max_accuracy_drop=0.1)
    assert "--output-kind" not in str(caught.value)
    both = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 8])], [weight]),
        opset_imports=[helper.make_opsetid("", 17)])
    report = validate(both, both, inputs=inputs, max_accuracy_drop=0.1)  # scores [N, 8] read as a classifier
    assert report.passed


def test_an_output_kind_for_a_non_tensor_output_is_an_error():
    """--output-kind zm=classifier on a ZipMap (sequence of maps) output was accepted and changed nothing."""
    from onnx_alds.validate import check_output_kinds

    zipped = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph([helper.make_node("ZipMap", ["x"], ["zm"], domain="ai.onnx.ml",
                                                classlabels_int64s=[0, 1, 2])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_value_info("zm", zipped)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    with pytest.raises(InputDataError, match=r"output 'zm' is a sequence, not a tensor.*drop the flag"):
        check_output_kinds(model, {"zm": "classifier"})


def test_shared_minus_inf_logits_do_not_decide_the_arg_max_figures():
    """A class masked to -inf in both models' log-probabilities was set to 0 for the figures, became the arg-max
    of both (log-probabilities are below 0), and validate printed top1=1.0000 for a model agreeing on 0.1."""
    rng = np.random.default_rng(3)
    original = rng.standard_normal((200, 10)) - 5.0
    compressed = rng.standard_normal((200, 10)) - 5.0  # unrelated
    original[:, 0] = compressed[:, 0] = -np.inf
    truth = float(np.mean(np.argmax(original, 1) == np.argmax(compressed, 1)))
    result = compare_output("logprobs", original, compressed, classifier=True, labels=None,
                            tolerances=Tolerances(), check_accuracy=False)
    assert result.top1_agreement == pytest.approx(truth) and truth < 0.3
    sequence = compare_output("tokens", original.reshape(20, 10, 10), compressed.reshape(20, 10, 10),
                              classifier=False, labels=None, tolerances=Tolerances(), check_accuracy=False,
                              kind="sequence")
    assert sequence.position_agreement == pytest.approx(truth)


def _two_outputs(order: tuple[str, str] = ("logits", "feat"), logits_type: int = TensorProto.FLOAT,
                 logits_dims: Optional[list] = None, batch="N") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
             helper.make_node("Cast", ["mm"], ["logits"], to=logits_type),
             helper.make_node("ReduceSum", ["mm"], ["feat"], keepdims=1, axes=[1]) if OPSET < 13 else
             helper.make_node("ReduceMax", ["mm"], ["feat"], keepdims=1)]
    outputs = {"logits": helper.make_tensor_value_info("logits", logits_type, logits_dims or ["N", 10]),
               "feat": helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 1])}
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
                  [outputs[name] for name in order],
                  [numpy_helper.from_array(rng.standard_normal((16, 10)).astype(np.float32), "W")])


@pytest.mark.parametrize("other,message", [
    (dict(order=("feat", "logits")), "list their outputs in a different order \\(logits, feat vs feat, logits\\)"),
    (dict(logits_type=TensorProto.DOUBLE), "'logits' is FLOAT \\[N, 10\\] in the original and DOUBLE \\[N, 10\\]"),
    (dict(logits_dims=["N", 7]), "'logits' is FLOAT \\[N, 10\\] in the original and FLOAT \\[N, 7\\]"),
    (dict(batch=1), "'x' is float32 \\[N, 16\\] in the original and float32 \\[1, 16\\] in the other"),
], ids=["output-order", "output-type", "output-shape", "batch-fixed"])
def test_an_interface_that_differs_is_an_error_not_a_pass(other, message):
    """Outputs in another order (session.run(None, ...) then returns another tensor first), of another type or
    declared shape, and a batch the compressed model fixes, all passed (exit 0)."""
    inputs = InputSet({"x": np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)})
    with pytest.raises(Exception, match=message) as info:
        validate(_two_outputs(), _two_outputs(**other), inputs=inputs, batch_size=1)
    assert "compare a model with one compressed from it" in str(info.value)
    validate(_two_outputs(), _two_outputs(), inputs=inputs)  # the same interface passes the check


def test_inputs_in_another_order_are_an_error():
    def model(order):
        values = {name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4]) for name in "ab"}
        return _model([helper.make_node("Add", ["a", "b"], ["y"])], [values[n] for n in order],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [])
    inputs = InputSet({name: np.ones((4, 4), np.float32) for name in "ab"})
    with pytest.raises(Exception, match="list their inputs in a different order \\(a, b vs b, a\\)"):
        validate(model("ab"), model("ba"), inputs=inputs)


def test_samples_where_the_original_output_is_zero_are_measured_against_the_outputs_scale():
    """A ReLU score that is exactly 0 on some samples: any difference there gave rel = inf, and no tolerance
    (not even --max-mean-rel 1e30) could pass a model off by 1e-4."""
    rng = np.random.default_rng(2)
    original = np.maximum(rng.standard_normal((100, 1)), 0.0) * [1.0, 2.0]  # two values per sample: a cosine
    compressed = original + 1e-4
    result = compare_output("score", original, compressed, classifier=False, labels=None,
                            tolerances=Tolerances(max_mean_rel=0.01), check_accuracy=False)
    zero = original[:, 0] == 0
    norms, diff = np.linalg.norm(original, axis=1), 1e-4 * np.sqrt(2)
    scale = float(np.mean(norms[~zero]))
    assert zero.sum() > 20 and result.passed
    expected = np.concatenate([diff / norms[~zero], np.full(zero.sum(), diff / scale)])
    assert result.mean_rel_error == pytest.approx(float(np.mean(expected)), rel=1e-6)  # zero samples: over the scale
    assert result.min_cosine == pytest.approx(1.0)  # the zero samples have no cosine
    every_zero = compare_output("score", np.zeros((5, 2)), np.full((5, 2), 1e-4), classifier=False, labels=None,
                                tolerances=Tolerances(max_mean_rel=0.01), check_accuracy=False)
    assert every_zero.max_rel_error == np.inf and not every_zero.passed
    assert every_zero.min_cosine == every_zero.mean_cosine == 0.0  # not a perfect 1.0 that no sample has


def test_summary_never_rounds_an_agreement_up_to_one(tmp_path):
    """The compress --validate summary printed 'top-1 agreement 1.00, FAILED' for 0.998 against a 0.999 floor."""
    from onnx_alds.validate import _share_format
    assert _share_format(500)(499 / 500) == "0.998" and _share_format(10)(9 / 10) == "0.90"
    assert _share_format(2000)(1999 / 2000) == "0.9995"


def test_compress_validate_times_on_the_validation_inputs_when_random_ones_do_not_fit():
    """Ids that reach a 10-row table through a Mul (no bound is followed through it): random timing ids overflow
    it, and compress --validate failed as a whole ("running the model on random timing inputs failed … give
    --input-shape") after a passing validation. It now times on the validation inputs and says so."""
    from onnx_alds import compress

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Mul", ["ids", "two"], ["ids1"]), helper.make_node("Gather", ["E", "ids1"], ["e"], axis=0),
             helper.make_node("MatMul", ["e", "W"], ["out"], name="mm")]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])],
                   [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 64])],
                   [numpy_helper.from_array(rng.standard_normal((10, 64)).astype(np.float32), "E"),
                    numpy_helper.from_array(np.array(2, np.int64), "two"),
                    numpy_helper.from_array((rng.standard_normal((64, 8)) @ rng.standard_normal((8, 64)))
                                            .astype(np.float32), "W")])
    compressed = compress(model, keep_params=0.5, rank_multiple=1).model
    inputs = InputSet({"ids": rng.integers(0, 5, (40, 3))})
    report, timing, summary = validate_and_bench(model, compressed, inputs=inputs, output_kinds={"out": "regression"},
                                                 threads=1, bench_options={"runs": 3, "warmup": 1, "min_time_s": 0})
    assert report.passed and timing is not None and timing.speedup(1, 1) > 0
    assert "timed on the first 1 validation input(s): random timing inputs do not fit" in summary


def test_an_output_whose_rows_match_the_batch_by_chance_is_named_with_a_fix_that_works():
    """An output of 32 fixed rows with batches of 32 (40 samples): the error said "run with --batch-size that
    divides the sample count", which neither explains it (3 does not divide 40 and passes) nor exists under
    compress --validate. It says what happened and that a multiple of the batch size avoids it."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("ReduceMean", ["h"], ["r"], axes=[0], keepdims=1),
             helper.make_node("Add", ["C", "r"], ["y"])]
    inits = [numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "C")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["R", 64])], inits)
    x = rng.standard_normal((40, 64)).astype(np.float32)
    with pytest.raises(Exception, match=r"output 'y' had 32 rows on the first batch, as many as its samples, .* on a "
                                        r"batch of 8; give a number of samples that is a multiple of 32"):
        validate(model, model, inputs=InputSet({"x": x}))
    assert validate(model, model, inputs=InputSet({"x": x[:32]})).passed  # the fix works
    # declared [32, 64] beside an input of dynamic batch: the first axis is not the batch, whatever the batch size
    # (it was read as one, and a [3, N] output as a 3-class classifier at batch 3)
    declared = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 64])], inits)
    report = validate(declared, declared, inputs=InputSet({"x": x}))
    assert report.passed and report.outputs[0].kind == "regression" and report.outputs[0].samples == 2
    # a stale declaration (an export that fixed the output's dims: [1, 64] for [N, 64]) is not believed
    stale = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits[:1])
    assert validate(stale, stale, inputs=InputSet({"x": x})).outputs[0].samples == 40


def test_messages_for_compress_name_its_flag_once_and_an_unnamed_node_as_unnamed():
    """Under compress --validate the random-inputs hint read "(--validate-inputs FILE.npz, or --validate-inputs
    with compress)"; ONNX Runtime's failures on unnamed nodes were quoted as "Gather node ''"."""
    from onnx_alds.errors import runtime_error_text
    from onnx_alds.inputs import with_prefixed_flags

    message = "random inputs do not fit this model: give real inputs (--inputs FILE.npz)"
    assert with_prefixed_flags(message, "validate-").endswith("give real inputs (--validate-inputs FILE.npz)")
    failure = RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running "
                           "Gather node. Name:'' Status Message: indices element out of data bounds")
    assert runtime_error_text(failure).startswith("an unnamed Gather node: indices element out of data bounds")


def test_compressed_scores_that_are_nan_agree_on_nothing():
    """NaN logits in the compressed model scored top-5 1.0 (no score was >= a NaN, so the original's class
    counted as in the top 5) and could match a label through argmax's first NaN."""
    scores = np.arange(30, dtype=np.float32).reshape(3, 10)
    broken = scores.copy()
    broken[1:] = np.nan
    out = compare_output("y", scores, broken, classifier=True, labels=np.array([9, 0, 0]), tolerances=Tolerances(),
                         check_accuracy=True)
    assert out.top1_agreement == pytest.approx(1 / 3) and out.top5_agreement == pytest.approx(1 / 3)
    assert out.accuracy_compressed == pytest.approx(1 / 3)


def test_rows_without_a_prediction_are_misses_or_left_out():
    """Shared NaN rows gave the compressed model a higher accuracy than the same model (argmax of a NaN row is
    its first NaN, class 0); a compressed row of +Inf in every class counted as a top-1 and top-5 hit."""
    scores = np.tile(np.arange(10, dtype=np.float32), (4, 1))  # class 9 everywhere
    shared = scores.copy()
    shared[:2] = np.nan
    labels = np.array([0, 0, 9, 9])
    out = compare_output("y", shared, shared.copy(), classifier=True, labels=labels, tolerances=Tolerances(),
                         check_accuracy=True)
    # the two rows the original has no prediction on are wrong for accuracy, and left out of agreement (a
    # model compared with itself failed its default top-1 limit on them)
    assert out.accuracy_original == out.accuracy_compressed == 0.5 and out.top1_agreement == 1.0
    assert out.top5_agreement == 1.0
    saturated = scores.copy()
    saturated[:2] = np.inf
    out = compare_output("y", scores, saturated, classifier=True, labels=labels, tolerances=Tolerances(),
                         check_accuracy=True)
    assert out.top1_agreement == 0.5 and out.top5_agreement == 0.5 and out.accuracy_compressed == 0.5


@pytest.mark.parametrize("op", ["NonZero", "Compress"])
def test_outputs_whose_size_depends_on_the_values_do_not_block_compress_or_validate(op):
    """A model returning the non-zeros of a mask (or the rows a mask keeps, as detection heads do) could not
    be compressed ("... gives output 'kept' as int64 (2, 6) where the original gives (2, 5); this is a bug in
    onnx-alds"), and validate said to "compare a model with one compressed from it"."""
    from onnx_alds import compress
    from onnx_alds.validate import validate

    rng = np.random.default_rng(3)
    tail = ([helper.make_node("NonZero", ["positive"], ["kept"])] if op == "NonZero" else
            [helper.make_node("ReduceMax", ["positive_f"], ["any"], axes=[1], keepdims=0),
             helper.make_node("Cast", ["any"], ["row_kept"], to=TensorProto.BOOL),
             helper.make_node("Compress", ["logits", "row_kept"], ["kept"], axis=0)])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="m1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="m2"),
             helper.make_node("Greater", ["logits", "threshold"], ["positive"]),
             helper.make_node("Cast", ["positive"], ["positive_f"], to=TensorProto.FLOAT), *tail]
    kept_type = TensorProto.INT64 if op == "NonZero" else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "masks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8]),
         helper.make_tensor_value_info("kept", kept_type, [2, "K"] if op == "NonZero" else ["K", 8])],
        [numpy_helper.from_array((rng.standard_normal((16, 64)) / 4).astype(np.float32), "w1"),
         numpy_helper.from_array((rng.standard_normal((64, 8)) / 8).astype(np.float32), "w2"),
         numpy_helper.from_array(np.array(1.2, np.float32), "threshold")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    small = compress(model, keep_params=0.45, method="svd", rank_multiple=4).model
    inputs = InputSet({"x": rng.standard_normal((64, 16)).astype(np.float32)})
    report = validate(model, small, inputs=inputs, figures_only=True, batch_size=8)
    assert [output.name for output in report.outputs] == ["logits", "kept"] and report.passed
    note = next(note for note in report.notes if note.startswith("output 'kept': its size depends on the values"))
    assert f"({op})" in note
    # a size that differs is a difference: checked, the output fails whatever its figures on the other batches
    checked = validate(model, small, inputs=inputs, batch_size=8)
    kept = checked.outputs[1]
    assert not checked.passed and not kept.passed and "size differs from the original's on" in kept.failures[-1]
    if kept.samples == 0:  # no batch compared: the line said "rel=nan ... cos=nan | no tolerance checked"
        assert "| not compared | no tolerance could be checked |" in kept.line() and "nan" not in kept.line()
    assert "nan" not in OutputComparison(name="y", shape=(2,), samples=0, max_abs_error=float("nan"),
                                         max_rel_error=float("nan"), mean_rel_error=float("nan"),
                                         min_cosine=float("nan"), mean_cosine=float("nan"),
                                         failures=("size differs",)).line()


def test_a_topk_with_a_computed_k_and_a_loop_are_value_sized_a_constant_k_is_not():
    """compress called a data-dependent TopK or Loop trip count "a bug in onnx-alds" (the outputs' sizes
    moved with the compressed values)."""
    from onnx_alds.checks import value_sized_outputs

    def topk(k_from: str) -> onnx.ModelProto:
        nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
                 helper.make_node("Cast", ["total"], ["k_scalar"], to=TensorProto.INT64),
                 helper.make_node("Reshape", ["k_scalar", "one"], ["k_computed"]),
                 helper.make_node("TopK", ["x", k_from], ["values", "indices"])]
        graph = helper.make_graph(nodes, "topk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                                  [helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, "K"])],
                                  [numpy_helper.from_array(np.array([1], np.int64), "one"),
                                   numpy_helper.from_array(np.array([3], np.int64), "k_fixed")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert value_sized_outputs(topk("k_computed")) == {"values": "TopK with a k computed at run time"}
    assert value_sized_outputs(topk("k_fixed")) == {}
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Identity", ["x"], ["slice"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("slice", TensorProto.FLOAT, [1, 8])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Cast", ["total"], ["trips"], to=TensorProto.INT64),
             helper.make_node("Loop", ["trips", "", ], ["stacked"], body=body)]
    graph = helper.make_graph(nodes, "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("stacked", TensorProto.FLOAT, ["T", 1, 8])])
    assert value_sized_outputs(helper.make_model(graph)) == {"stacked": "Loop"}


def test_figures_only_json_says_nothing_passed():
    """--figures-only checks nothing: its JSON said "passed": true (report and every output) for a model far
    outside the default limits, which a script reading "passed" took for a pass."""
    from onnx_alds.validate import validate

    rng = np.random.default_rng(0)

    def model(weight):
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["logits"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8])],
                                  [numpy_helper.from_array(weight.astype(np.float32), "W")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    weight = rng.standard_normal((16, 8))
    inputs = InputSet({"x": rng.standard_normal((64, 16)).astype(np.float32)})
    other = model(rng.standard_normal((16, 8)))
    data = validate(model(weight), other, inputs=inputs, figures_only=True).to_dict()
    assert data["passed"] is None and data["outputs"][0]["passed"] is None
    assert validate(model(weight), other, inputs=inputs).to_dict()["passed"] is False


def test_validating_on_the_calibration_inputs_themselves_is_said_to_be_in_sample():
    import onnx_alds
    from conftest import small_cnn

    model = small_cnn(width=8)
    calibration = load_inputs(model, random=8, seed=0)
    compressed = onnx_alds.compress(model, keep_params=0.6, calibration=calibration).model
    same = validate(model, compressed, inputs=InputSet(calibration.arrays, None, "the same arrays"), figures_only=True)
    assert any("the validation inputs are the ones the compressed model was calibrated or trained on" in n for n in same.notes)
    other = validate(model, compressed, inputs=load_inputs(model, random=8, seed=1), figures_only=True)
    assert not any("calibrated on" in n for n in other.notes)


def test_validation_samples_some_of_which_the_model_was_calibrated_on_are_counted():
    """Validating on the first 8 of the 16 calibration samples, or on random inputs drawn as the calibration
    was (same seed), gave figures 400 times better than on new inputs with no in-sample note: the note
    needed the very same set, and random inputs never got it."""
    import onnx_alds
    from conftest import small_cnn

    model = small_cnn(width=8)
    calibration = load_inputs(model, random=16, seed=0)
    compressed = onnx_alds.compress(model, keep_params=0.6, calibration=calibration).model
    half = InputSet({n: a[:8] for n, a in calibration.arrays.items()}, None, "half")
    notes = validate(model, compressed, inputs=half, figures_only=True).notes
    assert any("the validation inputs are the ones the compressed model was calibrated or trained on" in n for n in notes)
    mixed = InputSet({n: np.concatenate([a[:3], load_inputs(model, random=5, seed=9).arrays[n]])
                      for n, a in calibration.arrays.items()}, None, "mixed")
    notes = validate(model, compressed, inputs=mixed, figures_only=True).notes
    assert any(n.startswith("3 of the 8 validation samples are ones the compressed model was calibrated or trained on")
               for n in notes), notes
    redrawn = validate(model, compressed, inputs=load_inputs(model, random=16, seed=0), figures_only=True).notes
    assert any("inputs are random" in n for n in redrawn)
    assert any("the validation inputs are the ones the compressed model was calibrated or trained on" in n for n in redrawn)


def test_calibration_digests_hold_the_samples_used_by_every_step():
    """A model fixing its batch to 4 calibrated on 22 samples used 20, but the digests held all 22 (2 unused
    samples were called in-sample); a second compression dropped the first step's digests (validating on the
    samples the first step was fitted to gave no note)."""
    import onnx_alds
    from conftest import small_cnn

    fixed = small_cnn(width=8)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    rng = np.random.default_rng(0)
    calibration = InputSet({"input": rng.standard_normal((22, 3, 32, 32)).astype(np.float32)}, None, "22 samples")
    compressed = onnx_alds.compress(fixed, keep_params=0.7, calibration=calibration, rank_multiple=1).model
    tail = InputSet({n: a[20:] for n, a in calibration.arrays.items()}, None, "the two left out")
    assert calibration_overlap(compressed, tail) == (0, 2)
    assert calibration_overlap(compressed, calibration) == (20, 22)

    model = small_cnn(width=8)
    first = load_inputs(model, random=8, seed=3)
    once = onnx_alds.compress(model, keep_params=0.8, calibration=first, rank_multiple=1).model
    twice = onnx_alds.compress(once, keep_params=0.9, rank_multiple=1).model  # data-free second step
    assert calibration_overlap(twice, first) == (8, 8)
    second = load_inputs(model, random=8, seed=4)
    other = onnx_alds.compress(once, keep_params=0.9, calibration=second, rank_multiple=1).model
    assert calibration_overlap(other, first) == (8, 8) and calibration_overlap(other, second) == (8, 8)


def test_compress_validate_random_does_not_redraw_the_random_calibration(tmp_path, monkeypatch):
    """compress --calibration-random 16 --validate --validate-random 8 drew the validation samples with the
    calibration's seed: the first 8 calibration samples, validated in-sample."""
    import onnx_alds.validate as validate_module
    from conftest import small_cnn

    seen = {}
    real = validate_module.validate_and_bench

    def spy(original, compressed, *, inputs, **kwargs):
        seen["inputs"] = inputs
        return real(original, compressed, inputs=inputs, **kwargs)

    monkeypatch.setattr(validate_module, "validate_and_bench", spy)
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(width=8), path)
    assert main(["compress", str(path), "-o", str(tmp_path / "c.onnx"), "--keep-params", "0.9",
                 "--rank-multiple", "1", "--calibration-random", "16", "--validate", "--validate-random", "8", "--figures-only"]) == 0
    calibration = load_inputs(small_cnn(width=8), random=16, seed=0)
    validation = seen["inputs"]
    assert len(validation) == 8
    for name, array in calibration.arrays.items():
        assert not any(np.array_equal(row, other) for row in validation.arrays[name] for other in array)


def _batch_one_reshape_model() -> onnx.ModelProto:
    """Conv on a dynamic-batch input, then a Reshape to [1, 8, 16]: the model runs one sample at a time."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("Reshape", ["c", "to"], ["t"], name="to_tokens"),
             helper.make_node("MatMul", ["t", "m"], ["y"], name="proj")]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 8, 16], np.int64), "to"),
             numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "m")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_a_model_that_runs_one_sample_at_a_time_is_told_to_use_batch_size_one():
    """A Reshape to [1, ...] behind a dynamic batch: calibration and validation failed with 'check that the
    arrays match the model's inputs', while --calibration-batch-size 1 / --batch-size 1 run it."""
    from onnx_alds import compress

    model = _batch_one_reshape_model()
    inputs = InputSet({"x": np.random.default_rng(0).standard_normal((8, 8, 4, 4)).astype(np.float32)})
    with pytest.raises(InputDataError, match="runs on one sample at a time .*: give --calibration-batch-size 1$"):
        compress(model, keep_params=0.7, calibration=inputs, rank_multiple=1)
    small = compress(model, keep_params=0.7, calibration=inputs, rank_multiple=1, calibration_batch_size=1).model
    with pytest.raises(InputDataError, match="give onnx-alds validate --batch-size 1 .compress --validate has no"):
        validate(model, small, inputs=inputs)
    assert validate(model, small, inputs=inputs, batch_size=1, figures_only=True).outputs


def test_a_model_compared_with_itself_is_said_to_be_so():
    model = _batch_one_reshape_model()
    inputs = InputSet({"x": np.random.default_rng(0).standard_normal((4, 8, 4, 4)).astype(np.float32)})
    report = validate(model, model, inputs=inputs, batch_size=1)
    assert any("compares a model with itself" in note for note in report.notes)


def test_compress_validate_times_a_dynamic_sequence_at_the_validation_inputs_length(tmp_path, capsys):
    """compress --validate --validate-inputs FILE.npz on a model with a dynamic sequence dim compressed and
    validated, then failed in the timing ("has dynamic dims; give them with --input-shape"): nothing written."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 32])],
        [numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "W1"),
         numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "W2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "val.npz", x=rng.standard_normal((16, 8, 32)).astype(np.float32))
    code = main(["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--keep-params", "0.6",
                 "--rank-multiple", "8", "--validate", "--validate-inputs", str(tmp_path / "val.npz"),
                 "--figures-only"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (tmp_path / "o.onnx").exists() and "speedup" in out


def test_timing_batch_applies_to_an_input_whose_shape_was_given(tmp_path):
    """compress --validate --bench-batch 3 --input-shape x:4x64 on a model whose inputs share the named dim
    'batch' ended, after the work, with "--input-shape gives the dim 'batch' 4 for 'x' and 3 for 'y'"."""
    from conftest import make_model

    from onnx_alds.inputs import InputSet
    from onnx_alds.validate import validate_and_bench

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "W")
    nodes = [helper.make_node("Add", ["x", "y"], ["s"]), helper.make_node("MatMul", ["s", "W"], ["z"], name="fc")]
    model = make_model(nodes, [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 64])
                               for name in ("x", "y")],
                       [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 64])], [weight])
    rng = np.random.default_rng(1)
    inputs = InputSet({name: rng.standard_normal((6, 64)).astype(np.float32) for name in ("x", "y")})
    report, timing, line = validate_and_bench(model, model, inputs=inputs, batch=3, input_shapes={"x": (4, 64)},
                                              bench_options={"runs": 1, "min_time_s": 0})
    assert report.passed and timing is not None and "(batch 3)" in line


@pytest.mark.parametrize("name, shape", [("present.0.key", (2, 6, 64)), ("present_value_3", (2, 4, 6, 16)),
                                         ("past_key_values.1.value", (2, 4, 6, 16)), ("kv_cache", (2, 6, 64))])
def test_a_key_value_cache_output_is_compared_as_regression(name, shape):
    """A decoder's present.* outputs were judged as sequences (arg-max over a head's 64 features) or dense maps:
    every KV-cache model failed --validate by default."""
    from onnx_alds.validate import detect_kind

    kind, reason = detect_kind(name, np.random.default_rng(0).standard_normal(shape))
    assert kind == "regression" and "key/value cache" in reason
    assert detect_kind("logits", np.zeros((2, 6, 64)))[0] == "sequence"  # other 3-D outputs as before


def test_the_summary_names_the_outputs_that_failed_when_it_shows_another():
    """"position agreement 1.000, sequence agreement 1.00 ... FAILED": the figures were the first output's, the
    failure another's."""
    from conftest import make_model

    rng = np.random.default_rng(0)
    scores, feature = rng.standard_normal((8, 10)), rng.standard_normal((8, 1))

    def model(scale: float) -> onnx.ModelProto:
        nodes = [helper.make_node("MatMul", ["x", "A"], ["scores"]), helper.make_node("MatMul", ["x", "B"], ["feat"])]
        return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10]),
                           helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 1])],
                          [numpy_helper.from_array(scores.astype(np.float32), "A"),
                           numpy_helper.from_array((feature * scale).astype(np.float32), "B")])

    inputs = InputSet({"x": rng.standard_normal((16, 8)).astype(np.float32)})
    report = validate(model(1.0), model(2.0), inputs=inputs)
    line = summary_line(report, None, provider="cpu", batch=1)
    assert "top-1 agreement 1.00" in line and line.endswith("FAILED (on 'feat'; the figures shown are those of 'scores')")


def test_validate_reads_external_weights_from_their_files_and_compares_them_for_the_same_model_note(tmp_path,
                                                                                                    monkeypatch):
    """validate loaded every weight of both models into memory (load_model) on top of ONNX Runtime's own copies:
    a 2.25 GB model against itself peaked at 14.3 GB (9.5 GB now). Paths are now opened light; the note that
    both models are the same is then decided from the weights' bytes, not from the graphs' stubs alone."""
    import onnx_alds.model_io
    from onnx_alds.validate import validate

    def build(folder: Path, seed: int) -> Path:
        folder.mkdir()
        weight = np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32)
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                                  [numpy_helper.from_array(weight, "W")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save_model(model, str(folder / "m.onnx"), save_as_external_data=True, location="m.data",
                        size_threshold=0)
        return folder / "m.onnx"

    first, same, other = build(tmp_path / "a", 0), build(tmp_path / "b", 0), build(tmp_path / "c", 1)
    loaded = []
    real_load = onnx_alds.model_io._load_external_data
    monkeypatch.setattr(onnx_alds.model_io, "_load_external_data",
                        lambda proto, path: (loaded.append(path), real_load(proto, path)))
    inputs = InputSet({"x": np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)}, source="test")
    itself = validate(first, same, inputs=inputs, figures_only=True)
    assert any("same graph and weights" in note for note in itself.notes)
    assert itself.outputs[0].max_abs_error == 0
    differs = validate(first, other, inputs=inputs, figures_only=True)
    assert not any("same graph and weights" in note for note in differs.notes)  # same stubs, other bytes
    assert differs.outputs[0].max_abs_error > 0.1
    assert loaded == []  # no model's weights were loaded whole


def test_the_same_model_note_pairs_subgraph_tensors_in_order_and_holds_for_a_model_given_twice(tmp_path):
    """Two If models whose branches each hold an external 'W', one branch's differing: the note said "same graph
    and weights" (stubs were paired by name across the branches). A single-file model validated against itself,
    or a path against the same model loaded, lost the true note (each light copy's stubs named its own store)."""
    from onnx_alds.validate import validate

    rng = np.random.default_rng(5)
    q, r = (rng.standard_normal((80, 80)).astype(np.float32) for _ in range(2))  # (over the light-model threshold)

    def if_model(then_weight: np.ndarray, else_weight: np.ndarray) -> onnx.ModelProto:
        def branch(tag: str, weight: np.ndarray) -> onnx.GraphProto:
            return helper.make_graph([helper.make_node("MatMul", ["x", "W"], [f"{tag}_y"])], tag, [],
                                     [helper.make_tensor_value_info(f"{tag}_y", TensorProto.FLOAT, ["N", 80])],
                                     [numpy_helper.from_array(weight, "W")])
        graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                                   helper.make_node("Greater", ["s", "zero"], ["c"]),
                                   helper.make_node("If", ["c"], ["y"], then_branch=branch("then", then_weight),
                                                    else_branch=branch("else", else_weight))], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 80])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 80])],
                                  [numpy_helper.from_array(np.array(0, np.float32), "zero")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    paths = {}
    for name, weights in {"qq": (q, q), "qr": (q, r)}.items():
        (tmp_path / name).mkdir()
        paths[name] = tmp_path / name / "m.onnx"
        onnx.save_model(if_model(*weights), str(paths[name]), save_as_external_data=True, location="m.data",
                        size_threshold=0)
    negative = InputSet({"x": -np.abs(rng.standard_normal((8, 80))).astype(np.float32)}, source="test")  # else
    differs = validate(paths["qq"], paths["qr"], inputs=negative, figures_only=True)
    assert differs.outputs[0].max_abs_error > 0.1
    assert not any("same graph and weights" in note for note in differs.notes)
    single = tmp_path / "single.onnx"
    onnx.save(if_model(q, r), str(single))  # one file: its weights over the light-model threshold held in memory
    big = InputSet({"x": rng.standard_normal((4, 80)).astype(np.float32)}, source="test")
    for second in (single, onnx.load(str(single))):
        same = validate(single, second, inputs=big, figures_only=True)
        assert any("same graph and weights" in note for note in same.notes), type(second)


def test_bench_bounds_random_ids_by_a_large_int64_offset(tmp_path):
    """ids + an int64 offset of 5000 elements, then a 150-row Gather: bench drew ids past the table (the offset,
    over the light-model threshold, was a stub whose values it could not read) and failed with 'give
    --input-shape'."""
    from onnx_alds.bench import bench

    positions = 5000
    graph = helper.make_graph([helper.make_node("Add", ["ids", "offset"], ["shifted"]),
                               helper.make_node("Gather", ["table", "shifted"], ["e"]),
                               helper.make_node("ReduceMean", ["e"], ["y"], axes=[1], keepdims=0)], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", positions])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array(np.full((1, positions), 100, np.int64), "offset"),
                               numpy_helper.from_array(np.ones((150, 8), np.float32), "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    report = bench([tmp_path / "m.onnx"], batch_sizes=(2,), runs=3, warmup=1, min_time_s=0.0)
    assert report.timings and report.timings[0].median_ms > 0


# --- outputs whose shape misleads the figures ----------------------------------------------------------


def _topk_scores(weight_seed: int) -> onnx.ModelProto:
    """``scores`` = the 5 largest of ``x @ W`` (TopK values, sorted): rows of a classifier's shape, but sorted."""
    weight = np.random.default_rng(weight_seed).standard_normal((8, 12)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["s"]),
             helper.make_node("TopK", ["s", "k"], ["scores", "ids"], axis=1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                  [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])],
                  [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.array([5], np.int64), "k")])


def test_sorted_rows_are_no_classifier_so_a_broken_topk_model_fails():
    """TopK values were a classifier: their arg-max is always column 0, so top-1 agreement was 1 for any model."""
    inputs = InputSet({"x": np.random.default_rng(3).standard_normal((20, 8)).astype(np.float32)}, source="t")
    report = validate(_topk_scores(0), _topk_scores(7), inputs=inputs)
    (out,) = report.outputs
    assert out.kind == "regression" and "sorted" in out.kind_reason and out.top1_agreement is None
    assert not report.passed and "(default for regression outputs)" in out.failures[0]
    assert report.failure_message().endswith("say so (--output-kind scores=classifier)")
    assert "'scores' regression (2-D float [N, 5], every row sorted" in report.kinds_line()
    stated = validate(_topk_scores(0), _topk_scores(7), inputs=inputs, output_kinds={"scores": "classifier"})
    assert stated.outputs[0].kind == "classifier" and stated.outputs[0].top1_agreement == 1.0


def test_sorted_rows_are_told_from_chance_and_topk_values_are_known_by_the_graph():
    """A 3-class classifier's one row is sorted one time in three: sortedness alone counts only past chance
    (probability (2/C!)^R ≤ 1e-3); a TopK's values are known from the graph whatever the batch shows, as 2-D
    rows or as [N, T, k] positions."""
    from onnx_alds.validate import detect_kind, topk_value_outputs

    sorted_row = np.array([[3.0, 2.0, 1.0]], np.float32)
    assert detect_kind("logits", sorted_row)[0] == "classifier"
    assert detect_kind("logits", np.repeat(sorted_row, 7, axis=0))[0] == "regression"
    assert detect_kind("logits", np.repeat(sorted_row, 6, axis=0))[0] == "classifier"
    assert detect_kind("logits", np.zeros((8, 5), np.float32))[0] == "classifier"  # (constant rows: no sort)
    assert detect_kind("scores", sorted_row, topk_values=True)[0] == "regression"
    assert detect_kind("scores", np.zeros((2, 4, 3), np.float32), topk_values=True)[0] == "regression"
    assert topk_value_outputs(_topk_scores(0)) == {"scores"}
    flat = _topk_scores(0)
    flat.graph.node.append(helper.make_node("Identity", ["scores"], ["best"]))
    flat.graph.node.append(helper.make_node("Relu", ["scores"], ["positive"]))
    flat.graph.output.extend([helper.make_tensor_value_info("best", TensorProto.FLOAT, ["N", 5]),
                              helper.make_tensor_value_info("positive", TensorProto.FLOAT, ["N", 5])])
    assert topk_value_outputs(flat) == {"scores", "best"}
    one = InputSet({"x": np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32)}, source="t")
    assert validate(_topk_scores(0), _topk_scores(7), inputs=one).outputs[0].kind == "regression"


def test_an_output_listed_twice_is_compared_once():
    """A graph listing 'logits' twice: with labels a broadcast traceback, without them the samples doubled."""
    model = _four_class(0)
    model.graph.output.append(onnx.ValueInfoProto.FromString(model.graph.output[0].SerializeToString()))
    x = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    labels = np.argmax(x @ np.random.default_rng(0).standard_normal((8, 4)), axis=1)
    for given in (None, labels):
        report = validate(model, model, inputs=InputSet({"x": x}, labels=given, source="t"), batch_size=4)
        (out,) = report.outputs
        assert out.name == "logits" and out.samples == 10 and report.passed
        assert given is None or out.accuracy_original == 1.0


def test_a_sequence_with_no_positions_has_no_position_agreement():
    """x of shape [8, 0, 3]: pos=0.0000 failed a model compared with itself. No figure is made up (no position
    agreement), and nothing compared is no pass either (it printed PASSED with cos=1.000000 on no values)."""
    model = _matmul(np.eye(3), ["N", "T", 3])
    report = validate(model, model, inputs=InputSet({"x": np.zeros((8, 0, 3), np.float32)}, source="t"))
    (out,) = report.outputs
    assert not report.passed and out.kind == "sequence" and "nothing to compare" in out.failures[0]
    assert out.position_agreement is None and out.sequence_agreement is None and out.figures() == "not compared"
    assert "position agreement n/a" in summary_line(report, None, provider="cpu", batch=1)


def test_one_value_per_sample_has_no_cosine_only_a_relative_error():
    """An [N, 1] or [N] output's cosine is only the sign of each value: it was shown, checked and summarized."""
    def model(sign: float) -> onnx.ModelProto:
        weight = np.random.default_rng(5).standard_normal((4, 1)).astype(np.float32) * sign
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]),
                 helper.make_node("Squeeze", ["y", "axes"], ["total"])]
        return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1]),
                       helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"])],
                      [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.array([1], np.int64), "axes")])

    inputs = InputSet({"x": np.random.default_rng(6).standard_normal((12, 4)).astype(np.float32)}, source="t")
    report = validate(model(1.0), model(-1.0), inputs=inputs, min_mean_cosine=0.5)
    for out in report.outputs:
        assert out.min_cosine is None and out.mean_cosine is None and "cos=n/a" in out.figures()
        assert "min_mean_cosine" not in [t.name for t in out.applied]
        assert any(u.startswith("min-mean-cosine not checked (one value per sample") for u in out.unchecked)
        assert out.mean_rel_error == pytest.approx(2.0) and not out.passed  # the relative error still applies
    assert "min cosine" not in summary_line(report, None, provider="cpu", batch=1)


def test_integer_outputs_are_compared_by_differing_values_whatever_their_kind_path():
    """A stated kind, or a first dim that is not the batch, showed labels as rel= abs= cos=."""
    nodes = [helper.make_node("ArgMax", ["x"], ["cls"], axis=1, keepdims=0), helper.make_node("Shape", ["x"], ["shp"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
                    helper.make_tensor_value_info("shp", TensorProto.INT64, [2])], [])
    report = validate(model, model, inputs=load_inputs(model, random=6), output_kinds={"cls": "regression"})
    for out in report.outputs:
        assert out.figures().startswith("differ=0 ") and "cos=" not in out.figures(), out.figures()
    assert "'cls' agreement 1.00" in summary_line(report, None, provider="cpu", batch=1)


def test_a_renamed_output_or_input_is_named():
    """Two lists of names, sorted, were printed side by side: the one renamed output was left to be found."""
    from onnx_alds.errors import UnsupportedModelError
    from onnx_alds.validate import check_same_interface

    renamed = _topk_scores(0)
    renamed.graph.node[1].output[0] = "best"
    renamed.graph.output[0].name = "best"
    with pytest.raises(UnsupportedModelError, match=r"different outputs \('scores' only in the original, 'best' "
                                                    r"only in the other\)"):
        check_same_interface(_topk_scores(0), renamed)
    other_input = _topk_scores(0)
    other_input.graph.input[0].name = "pixels"
    other_input.graph.node[0].input[0] = "pixels"
    with pytest.raises(UnsupportedModelError, match=r"different inputs \('x' only in the original, 'pixels' only"):
        check_same_interface(_topk_scores(0), other_input)


def test_an_output_dim_fixed_by_onnx_runtimes_tools_is_no_interface_difference():
    """ONNX Runtime's quantization, float16 and optimizer tools fix output dims their shape inference resolves:
    validate refused the original against its own processed copy ("'y' is FLOAT [?, ?] in the original and
    FLOAT [?, 10] in the other"). An output dim dynamic in one model is compared when run; two fixed sizes, and
    an input fixed in one model only, are still differences, named with the dims' own names."""
    from onnx_alds.errors import UnsupportedModelError
    from onnx_alds.validate import check_same_interface

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 10)).astype(np.float32), "W")

    def model(x_dims, y_dims):
        return _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)], [weight])

    original = model(["n", 32], ["n", "k"])
    check_same_interface(original, model(["n", 32], ["n", 10]))
    inputs = InputSet({"x": np.random.default_rng(1).standard_normal((6, 32)).astype(np.float32)})
    assert validate(original, model(["n", 32], ["n", 10]), inputs=inputs).passed
    with pytest.raises(UnsupportedModelError, match=r"'y' is FLOAT \[n, 10\] in the original and FLOAT \[n, 12\]"):
        check_same_interface(model(["n", 32], ["n", 10]), model(["n", 32], ["n", 12]))
    with pytest.raises(UnsupportedModelError, match=r"'y' is FLOAT \[n, k\] in the original and FLOAT \[n, k, 1\]"):
        check_same_interface(original, model(["n", 32], ["n", "k", 1]))
    with pytest.raises(UnsupportedModelError, match=r"'x' is float32 \[n, 32\] in the original and float32 \[6, 32\]"):
        check_same_interface(original, model([6, 32], ["n", "k"]))


@pytest.mark.parametrize("name, shape", [("pred_boxes", (8, 20, 4)), ("bbox_reg", (8, 3)), ("reg", (8, 5)),
                                         ("box_deltas", (8, 6, 4))])
def test_boxes_and_regression_heads_are_no_classifier_or_sequence_by_their_name(name, shape):
    """DETR's pred_boxes [N, 20, 4] was a sequence (an arg-max over 4 coordinates: pos=0.70 FAILED a model
    with cos 0.9986) and a multi-task model's bbox_reg [N, 3] a classifier (top-1 over 3 offsets PASSED)."""
    from onnx_alds.validate import detect_kind

    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    kind, reason = detect_kind(name, values)
    assert kind == "regression" and "name says boxes or a regression head" in reason
    assert detect_kind("logits", values)[0] in ("classifier", "sequence")
    assert detect_kind("register_scores", values)[0] != "regression"  # ('reg' as a word only)
    for named in ("predBoxes", "PREDBOXES", "mbox_loc", "regressions", "regressor", "boundingbox", "bboxreg"):
        assert detect_kind(named, values)[0] == "regression", named
    unit = values / np.linalg.norm(values, axis=-1, keepdims=True)  # (unit quaternions, normalized boxes)
    assert detect_kind("quat_regression", unit)[0] == "regression"


def test_an_embedding_named_with_box_stays_an_embedding():
    """'bbox_embedding' with rows of unit norm was judged regression by its name and failed the regression
    default where its cosine 0.971 passed the embedding one."""
    from onnx_alds.validate import detect_kind

    rows = np.random.default_rng(0).standard_normal((8, 16))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    assert detect_kind("bbox_embedding", rows.astype(np.float32))[0] == "embedding"


def test_samples_whose_output_is_zero_in_both_models_are_left_out_not_counted_as_agreeing():
    """An input that zeroes the output (a padded sentence, an all-zero mask) gave rel 0 and cosine 1 in both
    models, whatever the compression did: with every sample so, PASSED with nothing compared."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 6))
    original, compressed = _matmul(weight, ["N", 8]), _matmul(weight + 0.3 * rng.standard_normal((8, 6)), ["N", 8])
    x = rng.standard_normal((8, 8)).astype(np.float32)
    x[:3] = 0
    mixed = validate(original, compressed, inputs=InputSet({"x": x}, source="t"),
                     output_kinds={"y": "regression"}, figures_only=True)
    alone = validate(original, compressed, inputs=InputSet({"x": x[3:]}, source="t"),
                     output_kinds={"y": "regression"}, figures_only=True)
    assert mixed.outputs[0].mean_rel_error == pytest.approx(alone.outputs[0].mean_rel_error)
    assert mixed.outputs[0].mean_cosine == pytest.approx(alone.outputs[0].mean_cosine)
    assert any("both models give all zeros on 3 sample(s)" in note for note in mixed.notes)
    zeros = validate(original, compressed, inputs=InputSet({"x": np.zeros((4, 8), np.float32)}, source="t"),
                     output_kinds={"y": "regression"})
    assert not zeros.passed and "every sample's output is all zeros in both models (4 samples)" in \
        zeros.outputs[0].failures[0]


def test_a_set_of_one_sample_or_of_repeats_is_noted():
    """64 copies of one image, or one sample, were reported as "64 samples" / PASSED with no word."""
    model = _matmul(np.random.default_rng(0).standard_normal((8, 6)), ["N", 8])
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    repeated = validate(model, model, inputs=InputSet({"x": np.repeat(x, 4, axis=0)}, source="t"))
    assert any("the 12 samples hold 3 distinct one(s)" in note for note in repeated.notes)
    one = validate(model, model, inputs=InputSet({"x": x[:1]}, source="t"))
    assert any(note.startswith("one sample: the figures rest on it alone") for note in one.notes)
    distinct = validate(model, model, inputs=InputSet({"x": x}, source="t"))
    assert not any("distinct" in note or "one sample" in note for note in distinct.notes)


def test_a_stated_classifier_of_one_column_names_the_column_count():
    """`--output-kind y=classifier` on an [N, 1] output said "is declared float of rank 2", which is what a
    classifier needs; the fault is C = 1."""
    from onnx_alds.errors import InputDataError
    from onnx_alds.validate import check_output_kinds

    with pytest.raises(InputDataError, match=r"needs a 2-D float output \[N, C\] with C ≥ 2, but output 'y' is "
                                             r"declared float of rank 2, last dim 1"):
        check_output_kinds(_matmul(np.ones((8, 1)), ["N", 8]), {"y": "classifier"})


def test_an_output_zero_in_both_models_beside_outputs_compared_is_told_not_failed():
    """An auxiliary output that is zero on every input (an unused mask) failed the whole validation with
    "nothing to compare", and only --figures-only, which checks nothing, got past it."""
    def model(weight: np.ndarray) -> onnx.ModelProto:
        return _model([helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Mul", ["x", "zero"], ["z"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6]),
                       helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
                      [numpy_helper.from_array(weight.astype(np.float32), "W"),
                       numpy_helper.from_array(np.zeros(1, np.float32), "zero")])

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 6))
    report = validate(model(weight), model(weight + 0.01 * rng.standard_normal((8, 6))),
                      inputs=InputSet({"x": rng.standard_normal((16, 8)).astype(np.float32)}, source="t"))
    zero = next(o for o in report.outputs if o.name == "z")
    assert report.passed and not zero.failures and any("all zeros in both models" in u for u in zero.unchecked)
    assert "| not compared |" in zero.line() and "nan" not in zero.line()


def test_a_size_that_differs_after_an_if_names_the_if_not_the_pairing():
    """An If on a computed condition whose branches slice to 16 and 32 columns (shapes undeclared) said
    "compare a model with one compressed from it" when the condition flipped between the two models."""
    def model(threshold: float) -> onnx.ModelProto:
        branches = {name: helper.make_graph(
            [helper.make_node("Slice", ["y", "zero", end, "one"], [f"{name}_out"])], name, [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])
            for name, end in (("then_branch", "e16"), ("else_branch", "e32"))}
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("ReduceSum", ["y"], ["total"],
                                                                                 keepdims=0),
                 helper.make_node("Greater", ["total", "threshold"], ["cond"]),
                 helper.make_node("If", ["cond"], ["out"], **branches)]
        inits = [numpy_helper.from_array(np.ones((8, 32), np.float32), "W"),
                 numpy_helper.from_array(np.array(threshold, np.float32), "threshold"),
                 numpy_helper.from_array(np.array([0], np.int64), "zero"),
                 numpy_helper.from_array(np.array([1], np.int64), "one"),
                 numpy_helper.from_array(np.array([16], np.int64), "e16"),
                 numpy_helper.from_array(np.array([32], np.int64), "e32")]
        return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                      [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", None])], inits)

    inputs = InputSet({"x": np.ones((4, 8), np.float32)}, source="t")  # total = 4 * 8 * 32 = 1024
    with pytest.raises(UnsupportedModelError, match=r"output 'out' has shape \(4, 16\) in the original and \(4, 32\) "
                                                    r"in the compressed model; an If node on the way to it"):
        validate(model(0.0), model(1e6), inputs=inputs)


def test_compress_validate_times_a_key_value_cache_of_past_length_zero_on_the_validation_inputs():
    """Validation inputs with a past of length 0 (the first decoding step): compress --validate passed the
    validation, then refused the timing with "--input-shape gives 1x2x0x4 for 'past'; every dim must be at
    least 1", a flag never given. It now times on the validation inputs and says why."""
    from onnx_alds import compress

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Unsqueeze", ["h", "axes"], ["h4"]),
             helper.make_node("Concat", ["past", "h4"], ["present"], axis=2)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 64]),
                           helper.make_tensor_value_info("past", TensorProto.FLOAT, ["N", 2, "P", 64])],
                   [helper.make_tensor_value_info("present", TensorProto.FLOAT, ["N", 2, "T", 64])],
                   [numpy_helper.from_array((rng.standard_normal((64, 8)) @ rng.standard_normal((8, 64)))
                                            .astype(np.float32), "W"),
                    numpy_helper.from_array(np.array([2], np.int64), "axes")])
    compressed = compress(model, keep_params=0.5, rank_multiple=1).model
    inputs = InputSet({"x": rng.standard_normal((8, 2, 64)).astype(np.float32),
                       "past": np.zeros((8, 2, 0, 64), np.float32)})
    report, timing, summary = validate_and_bench(model, compressed, inputs=inputs, threads=1,
                                                 output_kinds={"present": "regression"},
                                                 bench_options={"runs": 3, "warmup": 1, "min_time_s": 0})
    assert report.passed and timing is not None and timing.speedup(1, 1) > 0
    assert "random timing inputs do not fit (the validation input 'past' is 8x2x0x64" in summary


def test_validation_refuses_to_cut_a_sequence_first_input_into_runs():
    """x [T=40, N, 64] whose time steps mix (x + mean over T): validate cut it into runs of 32 time steps and
    reported "40 samples", the original's own outputs changed by the cut. Refused, with the ways out; one run
    (batch_size at least the sample count) validates."""
    weight = numpy_helper.from_array((np.random.default_rng(0).standard_normal((64, 64)) / 8).astype(np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1), helper.make_node("Add", ["x", "m"], ["s"]),
             helper.make_node("MatMul", ["s", "w"], ["y"], name="mm")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "N", 64])], [weight])
    inputs = InputSet({"x": np.random.default_rng(1).standard_normal((40, 24, 64)).astype(np.float32)})
    with pytest.raises(InputDataError, match=r"the validation samples are not independent: output 'y' .* give all the "
                                             r"samples in one run \(--batch-size of onnx-alds validate at least the "
                                             r"sample count\)"):
        validate(model, model, inputs=inputs, output_kinds={"y": "regression"})
    assert validate(model, model, inputs=inputs, output_kinds={"y": "regression"}, batch_size=40).passed


def test_an_output_that_holds_no_values_is_not_a_pass():
    """Inputs of a zero-length dim ([32, 0, 64]) gave outputs of no values, and validate printed PASSED with
    rel=0 cos=1.000000 having compared nothing."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 64])], [weight])
    report = validate(model, model, inputs=InputSet({"x": np.zeros((32, 0, 64), np.float32)}))
    assert not report.passed
    assert "the output holds no values on any sample (32 samples, a zero-length dim): nothing to compare" \
        in report.outputs[0].failures[0]


@pytest.mark.parametrize("kind, dims", [("classifier", ["N", 6]), ("embedding", ["N", 6]),
                                        ("sequence", ["N", 3, 6]), ("dense", ["N", 6, 4, 4]),
                                        ("regression", ["N", 6])])
def test_the_summary_of_an_output_zero_in_both_models_says_n_a(kind, dims):
    """compress --validate on a model whose only output is all zeros (a random-init classifier with a zero head)
    died in the summary line formatting a top-1 agreement of None (TypeError); every kind's summary says
    n/a, and the validation fails with "nothing to compare"."""
    shape = [4 if isinstance(d, str) else d for d in dims]
    model = _model([helper.make_node("Mul", ["x", "zero"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
                   [numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    x = np.random.default_rng(0).standard_normal([8] + shape[1:]).astype(np.float32)
    report = validate(model, model, inputs=InputSet({"x": x}, source="t"), output_kinds={"y": kind})
    assert not report.passed and "nothing to compare" in report.outputs[0].failures[0]
    line = summary_line(report, None, provider="cpu", batch=8)
    assert line.startswith("summary: ") and "FAILED" in line and "None" not in line
    assert "(no positions)" not in line  # (it has positions; they are zeros)
    if kind == "sequence":  # T = 0: no positions, said so
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[1].dim_param = "T"
        empty = validate(model, model, inputs=InputSet({"x": x[:, :0]}, source="t"), output_kinds={"y": kind},
                         figures_only=True)
        assert "position agreement n/a (no positions)" in summary_line(empty, None, provider="cpu", batch=8)
    # beside an output with figures, the summary shows those (it showed the zero output's n/a)
    both = _model([helper.make_node("Mul", ["x", "zero"], ["y"]), helper.make_node("Relu", ["x"], ["r"]),
                   helper.make_node("ReduceSum", ["r", "axes"], ["c"], keepdims=0, noop_with_empty_axes=1)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims),
                   helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 6])],
                  [numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
                   numpy_helper.from_array(np.arange(2, len(dims), dtype=np.int64), "axes")])
    report = validate(both, both, inputs=InputSet({"x": x}, source="t"), output_kinds={"y": kind, "c": "classifier"},
                      figures_only=True)
    assert "top-1 agreement 1.00" in summary_line(report, None, provider="cpu", batch=8)


def test_depth_disparity_and_flow_maps_are_judged_by_their_values():
    """A [N, 1, H, W] depth map was a dense output: its mask (value > 0) was every pixel in both models, IoU 1
    for any model, and cosine ignores scale, so a model whose depth was three times the original's PASSED;
    GLPN's [N, H, W] predicted_depth was a sequence, judged by an arg-max over the image width. Outputs whose
    name says a depth, disparity or flow map are regression; the words are matched, not any substring."""
    from onnx_alds.validate import detect_kind

    rng = np.random.default_rng(0)
    positive = (rng.random((4, 1, 8, 8)) + 2).astype(np.float32)
    for name in ("depth", "predicted_depth", "predictedDepth", "disparity_map", "disp", "optical_flow", "opticalFlow"):
        assert detect_kind(name, positive)[0] == "regression", name
    assert detect_kind("predicted_depth", positive[:, 0])[0] == "regression"
    assert "name says a depth, disparity or flow map" in detect_kind("flow", positive)[1]
    for name in ("overflow", "flower_seg", "depthwise_feat", "mask"):  # (a segmentation mask stays dense)
        assert detect_kind(name, positive)[0] == "dense", name
    assert detect_kind("logits", positive[:, 0])[0] == "sequence"

    def model(scale: float) -> onnx.ModelProto:
        return _model([helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Softplus", ["m"], ["depth"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                      [helper.make_tensor_value_info("depth", TensorProto.FLOAT, ["N", 1, 8, 8])],
                      [numpy_helper.from_array(np.array([scale], np.float32), "s")])

    x = (rng.standard_normal((16, 1, 8, 8)) + 3).astype(np.float32)
    report = validate(model(1.0), model(3.0), inputs=InputSet({"x": x}, source="t"))
    assert not report.passed and report.outputs[0].kind == "regression"


def test_a_dense_output_whose_masks_are_one_value_everywhere_is_judged_by_its_values():
    """A one-channel map positive everywhere ('invdepth', 'out', …: no name says a depth map) has a mask of every
    pixel in both models: its IoU was 1 and a 3x copy PASSED; a map whose arg-max is one channel everywhere
    likewise. Such an output is judged as regression (said in its kind's reason); one whose masks vary keeps
    the IoU, and a stated dense kind stays dense. Names ending in depth (invdepth, monodepth) say a depth map."""
    from onnx_alds.validate import detect_kind

    for name in ("invdepth", "monoDepth", "dispmap", "disps"):
        assert detect_kind(name, np.ones((2, 1, 4, 4), np.float32))[0] == "regression", name
    assert detect_kind("display", np.ones((2, 1, 4, 4), np.float32))[0] == "dense"

    def model(scale: float, channels: int, shift: float) -> onnx.ModelProto:
        return _model([helper.make_node("Add", ["x", "b"], ["m"]), helper.make_node("Mul", ["m", "s"], ["out"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 8, 8])],
                      [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", channels, 8, 8])],
                      [numpy_helper.from_array(np.array([scale], np.float32), "s"),
                       numpy_helper.from_array(np.array([shift] + [0.0] * (channels - 1), np.float32)
                                               .reshape(channels, 1, 1), "b")])

    rng = np.random.default_rng(0)
    for channels, shift in ((1, 0.0), (2, 100.0)):  # (every value > 0; channel 0 the arg-max everywhere)
        x = (rng.random((16, channels, 8, 8)) + 1).astype(np.float32)
        inputs = InputSet({"x": x}, source="t")
        report = validate(model(1.0, channels, shift), model(3.0, channels, shift), inputs=inputs)
        output = report.outputs[0]
        assert not report.passed and output.kind == "regression", output
        assert "judged as regression: in the original its masks hold" in output.kind_reason
        stated = validate(model(1.0, channels, shift), model(3.0, channels, shift), inputs=inputs,
                          output_kinds={"out": "dense"})
        assert stated.outputs[0].kind == "dense" and stated.outputs[0].iou == 1.0
    # the copy's mask off at a few pixels (pushed below 0): the original's masks alone tell (it PASSED, iou 0.97)
    holes = np.zeros((1, 1, 8, 8), np.float32)
    holes[0, 0, :2, :2] = 100.0
    scaled = model(3.0, 1, 0.0)
    scaled.graph.node[-1].output[0] = "scaled"
    scaled.graph.node.append(helper.make_node("Sub", ["scaled", "holes"], ["out"]))
    scaled.graph.initializer.append(numpy_helper.from_array(holes, "holes"))
    x = (rng.random((16, 1, 8, 8)) + 1).astype(np.float32)
    report = validate(model(1.0, 1, 0.0), scaled, inputs=InputSet({"x": x}, source="t"))
    assert not report.passed and report.outputs[0].kind == "regression", report.outputs[0]
    varying = InputSet({"x": rng.standard_normal((16, 1, 8, 8)).astype(np.float32)}, source="t")
    report = validate(model(1.0, 1, 0.0), model(3.0, 1, 0.0), inputs=varying)
    assert report.outputs[0].kind == "dense" and report.outputs[0].iou == 1.0  # (signs kept: the IoU's own verdict)


def test_the_summary_names_a_failed_output_that_has_no_figures_beside_outputs_that_have():
    """A decoder validated on T = 0 failed on 'logits' (no values: nothing to compare) and the summary read
    "min cosine 1.0000, max rel error 0, FAILED": the caches' figures, no word of the output that failed."""
    model = _model([helper.make_node("Relu", ["x"], ["logits"]), helper.make_node("Relu", ["p"], ["cache"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 6]),
                    helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 5])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "T", 6]),
                    helper.make_tensor_value_info("cache", TensorProto.FLOAT, ["N", 5])], [])
    rng = np.random.default_rng(0)
    inputs = InputSet({"x": np.zeros((8, 0, 6), np.float32), "p": rng.standard_normal((8, 5)).astype(np.float32)},
                      source="t")
    report = validate(model, model, inputs=inputs, output_kinds={"cache": "regression"})
    assert not report.passed
    line = summary_line(report, None, provider="cpu", batch=8)
    assert line.endswith("FAILED (on 'logits'; the figures shown are those of the other outputs)"), line


def test_a_model_the_cpu_provider_cannot_run_is_named_with_the_fix():
    """validate of a float64 Conv model (ONNX Runtime's CPU provider has no such kernel) printed the raw
    ONNX Runtime error: neither which model nor what to do."""
    weight = np.random.default_rng(0).standard_normal((8, 4, 3, 3))
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                   [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 4, 6, 6])],
                   [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 8, 6, 6])],
                   [numpy_helper.from_array(weight, "w")])
    x = np.random.default_rng(1).standard_normal((4, 4, 6, 6))
    with pytest.raises(ProviderError, match=r"session for the original model: .*NOT_IMPLEMENTED.*; give a model it "
                                            r"can run \(.*export in float32\)"):
        validate(model, model, inputs=InputSet({"x": x}, source="t"))


def test_a_shape_tensor_stored_outside_the_model_file_is_told_the_fix(tmp_path):
    """A model saved with size_threshold=0 keeps its Reshape target in the data file, which ONNX Runtime does not
    read for shapes: validate passed ONNX Runtime's message on with no fix."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    target = numpy_helper.from_array(np.array([-1, 8], np.int64), "target")
    model = _model([helper.make_node("Reshape", ["x", "target"], ["r"]),
                    helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [weight, target])
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    inputs = InputSet({"x": np.ones((4, 8), np.float32)}, source="t")
    with pytest.raises(ProviderError, match=r"save it with them inline \(onnx.save\(model, path, "
                                            r"save_as_external_data=True, size_threshold=1024\)\)"):
        validate(str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), inputs=inputs)


def test_a_channels_last_segmentation_output_is_read_on_its_last_axis():
    """A Keras (channels_last) segmentation model's [N, H, W, C] output was read with its channels on axis 1 (H):
    a copy labelling 92 % of pixels as class 0 PASSED (iou 0.85 over rows). The graph says where the channels
    are (a Softmax over the last axis, a Transpose to NHWC); without such evidence axis 1 stays."""
    from onnx_alds.validate import channels_last_outputs

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal((5, 4, 1, 1))).astype(np.float32), "w")

    def model(shift: float, ending: str) -> onnx.ModelProto:
        bias = numpy_helper.from_array(np.array([shift, 0, 0, 0, 0], np.float32), "b")
        nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
                 helper.make_node("Conv", ["xc", "w", "b"], ["logits"], name="head"),
                 helper.make_node("Transpose", ["logits"], ["t"], perm=[0, 2, 3, 1])]
        if ending == "softmax":
            nodes.append(helper.make_node("Softmax", ["t"], ["probs"], axis=-1))
        else:
            nodes.append(helper.make_node("Identity", ["t"], ["probs"]))
        return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 16, 4])],
                      [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 16, 16, 5])], [weight, bias])

    inputs = InputSet({"x": rng.standard_normal((8, 16, 16, 4)).astype(np.float32)}, source="t")
    for ending, why in (("softmax", "(a Softmax over it)"), ("transpose", "(a Conv's channels, transposed)")):
        assert why in channels_last_outputs(model(0.0, ending))["probs"]
        report = validate(model(0.0, ending), model(2.0, ending), inputs=inputs)
        output = report.outputs[0]
        assert output.kind == "dense" and "channels on axis 3" in output.kind_reason
        assert not report.passed and output.iou < 0.8, output.iou
        assert validate(model(0.0, ending), model(0.0, ending), inputs=inputs).passed
    first = model(0.0, "softmax")
    first.graph.node[-1].attribute[0].i = 1  # a softmax over axis 1: channels first
    assert channels_last_outputs(first) == {}
    unwritten = model(0.0, "softmax")
    del unwritten.graph.node[-1].attribute[:]  # no axis written: the last from opset 13 (it was taken as unknown)
    assert "a Softmax over it" in channels_last_outputs(unwritten)["probs"]
    unwritten.opset_import[0].version = 12  # (before opset 13: axis 1, the flattened C·H·W)
    assert channels_last_outputs(unwritten) == {}
    # the channels-last tensor rearranged on the way (H and W swapped, then Softplus): the perms compose (the
    # output was read on axis 1 and a damaged copy PASSED with iou 1)
    swapped = model(0.0, "transpose")
    swapped.graph.node[-1].CopyFrom(helper.make_node("Transpose", ["t"], ["s"], perm=[0, 2, 1, 3]))
    swapped.graph.node.append(helper.make_node("Softplus", ["s"], ["probs"]))
    assert "transposed" in channels_last_outputs(swapped)["probs"]
    damaged = model(2.0, "transpose")
    damaged.graph.node[-1].CopyFrom(helper.make_node("Transpose", ["t"], ["s"], perm=[0, 2, 1, 3]))
    damaged.graph.node.append(helper.make_node("Softplus", ["s"], ["probs"]))
    assert not validate(swapped, damaged, inputs=inputs).passed
    back = model(0.0, "transpose")  # transposed to NHWC and back to NCHW: channels on axis 1
    back.graph.node[-1].CopyFrom(helper.make_node("Transpose", ["t"], ["probs"], perm=[0, 3, 1, 2]))
    assert channels_last_outputs(back) == {}


def test_a_channels_last_map_is_followed_through_ops_that_keep_its_axes():
    """An NHWC segmentation map that reached its output through Resize, Reshape or Slice, or an NCHW map whose
    width a constant MatMul resampled, was read with its channels on axis 1 (rows): a copy with one class's bias
    raised (38 % of pixels change class, mIoU 0.43) PASSED with iou 1.0. The walk follows ops that keep the
    axes where they are; where a Transpose rearranges the axes and the walk cannot follow what comes after,
    the output is compared as regression, not read on axis 1."""
    from onnx_alds.validate import output_channel_axes

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 3, 3, 3)).astype(np.float32) * 0.4
    w2 = rng.standard_normal((4, 32, 1, 1)).astype(np.float32) * 0.3
    flip = np.eye(16, dtype=np.float32)[::-1].copy()

    def model(bias0: float, ending: str) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                 numpy_helper.from_array(np.array([bias0, 10, 10, 10], np.float32), "b2"),
                 numpy_helper.from_array(np.array([1, 2, 2, 1], np.float32), "scales"),
                 numpy_helper.from_array(np.array([-1, 16, 16, 4], np.int64), "shape"),
                 numpy_helper.from_array(np.array([1, 1], np.int64), "starts"),
                 numpy_helper.from_array(np.array([15, 15], np.int64), "ends"),
                 numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                 numpy_helper.from_array(flip, "flip"),
                 numpy_helper.from_array(np.array([0, 4, 256], np.int64), "flat"),
                 numpy_helper.from_array(np.array([0, 16, 16, 4], np.int64), "grid"),
                 numpy_helper.from_array(np.array([0, 16, 16, 3], np.int64), "grid3"),
                 numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "head")]
        nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c1"], ["r1"]),
                 helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
                 helper.make_node("Transpose", ["c2"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc")]
        ends = {"resize": [helper.make_node("Resize", ["t", "", "scales"], ["seg"], mode="nearest")],
                "reshape": [helper.make_node("Reshape", ["t", "shape"], ["seg"])],
                "slice": [helper.make_node("Slice", ["t", "starts", "ends", "axes"], ["seg"])],
                "matmul": [helper.make_node("MatMul", ["c2", "flip"], ["seg"])],
                # a transformer's map: [N, C, H·W] transposed to tokens [N, H·W, C], back to a [N, H, W, C] grid
                "tokens": [helper.make_node("Reshape", ["c2", "flat"], ["f"]),
                           helper.make_node("Transpose", ["f"], ["tk"], perm=[0, 2, 1]),
                           helper.make_node("Reshape", ["tk", "grid"], ["seg"])],
                "einsum": [helper.make_node("Einsum", ["c2"], ["seg"], equation="nchw->nhwc")],
                "swapped": [helper.make_node("Transpose", ["c2"], ["seg"], perm=[0, 2, 1, 3])],  # channels on 2
                # a MatMul class head on the tokens (features last), then the grid
                "head": [helper.make_node("Reshape", ["c2", "flat"], ["f"]),
                         helper.make_node("Transpose", ["f"], ["tk"], perm=[0, 2, 1]),
                         helper.make_node("MatMul", ["tk", "head"], ["hd"]),
                         helper.make_node("Reshape", ["hd", "grid3"], ["seg"])],
                # a Reshape to a shape computed at run time: the walk cannot tell where the channels end up
                "computed": [helper.make_node("Shape", ["t"], ["s"]),
                             helper.make_node("Reshape", ["t", "s"], ["seg"])]}[ending]
        if ending in ("matmul", "tokens", "einsum", "head", "swapped"):
            nodes = nodes[:-1]
        return _model(nodes + ends, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                      [helper.make_tensor_value_info("seg", TensorProto.FLOAT, None)], inits)

    inputs = InputSet({"x": rng.standard_normal((16, 3, 16, 16)).astype(np.float32)}, source="t")
    for ending, axis in (("resize", 3), ("reshape", 3), ("slice", 3), ("matmul", 1), ("tokens", 3), ("einsum", 3),
                         ("head", 3)):
        assert output_channel_axes(model(10.0, ending))["seg"][0] == axis, ending
        report = validate(model(10.0, ending), model(11.5, ending), inputs=inputs)
        output = report.outputs[0]
        assert output.kind == "dense" and f"channels on axis {axis}" in output.kind_reason, output.kind_reason
        assert not report.passed and output.iou < 0.6, (ending, output.iou)
        assert validate(model(10.0, ending), model(10.0, ending), inputs=inputs).passed
    # channels on axis 2 (read on axis 1, an IoU over image rows): compared as regression, the axis named
    axis, why = output_channel_axes(model(10.0, "swapped"))["seg"]
    assert axis is None and why.startswith("the graph puts its channels on axis 2 (a Conv's channels, transposed)")
    assert validate(model(10.0, "swapped"), model(10.0, "swapped"), inputs=inputs).outputs[0].kind == "regression"
    axis, why = output_channel_axes(model(10.0, "computed"))["seg"]
    assert axis is None and "'to_nhwc'" in why
    report = validate(model(10.0, "computed"), model(10.0, "computed"), inputs=inputs)
    output = report.outputs[0]
    assert report.passed and output.kind == "regression" and "compared as regression" in output.kind_reason
    # stated dense, it is read on axis 1 as the user says
    stated = validate(model(10.0, "computed"), model(10.0, "computed"), inputs=inputs,
                      output_kinds={"seg": "dense"})
    assert stated.outputs[0].kind == "dense"


def test_embedding_names_are_words_of_the_name():
    """'emb', 'text_emb' and 'emb_0' were read as classifiers (distill measured arg-max agreement of a 16-d
    embedding); 'unembed_logits' and 'spooler_logits' as embeddings (no top-1): a word of the name decides."""
    from onnx_alds.validate import EMBEDDING_NAME

    for name in ("emb", "text_emb", "emb_0", "embs", "sentence_embedding", "image_embeds", "textEmbeds",
                 "pooler_output", "EMBEDDING", "x/emb", "bbox_embedding"):
        assert EMBEDDING_NAME.search(name), name
    for name in ("logits", "member_logits", "unembed_logits", "spooler_logits", "remb", "gemb", "femb_logits"):
        assert not EMBEDDING_NAME.search(name), name


@pytest.mark.parametrize("value", ["False", "no", 0.0, None])
def test_validate_switches_take_true_or_false(value):
    """validate(figures_only="False") checked nothing and passed a failing model ("False" is truthy); compress
    refuses such values for its switches, and so does validate."""
    model = _classifier()
    inputs = InputSet({"x": np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)}, source="t")
    with pytest.raises(InputDataError, match=r"figures_only=.*: give True or False"):
        validate(model, model, inputs=inputs, figures_only=value)


def test_a_float16_conversion_with_float16_inputs_is_named_as_such():
    """A model converted to float16 without keep_io_types takes float16 inputs: validate said only "compare a
    model with one compressed from it", which tells the user nothing of what differs or what to do."""
    from conftest import make_model
    from onnx_alds.validate import validate

    weight = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)

    def model(dtype: int) -> onnx.ModelProto:
        return make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                          [helper.make_tensor_value_info("x", dtype, ["N", 8])],
                          [helper.make_tensor_value_info("y", dtype, ["N", 8])],
                          [numpy_helper.from_array(weight.astype(helper.tensor_dtype_to_np_dtype(dtype)), "w")])

    inputs = InputSet({"x": np.ones((4, 8), np.float32)})
    with pytest.raises(UnsupportedModelError, match=r"'x' is float32 \[N, 8\] in the original and float16 \[N, 8\] "
                                                    r"in the other; the other model was converted to another float "
                                                    r"precision with its inputs .* keep_io_types=True"):
        validate(model(TensorProto.FLOAT), model(TensorProto.FLOAT16), inputs=inputs)


def test_an_original_whose_outputs_do_not_follow_its_inputs_is_noted():
    """A model built with default initialisation gave the same logits for every input: top-1 agreement and
    cosine 1.000 and PASSED at a cut that broke its layers (largest error 0.62), with no word."""
    from conftest import make_model
    from onnx_alds.validate import validate

    rng = np.random.default_rng(0)

    def model(scale: float) -> onnx.ModelProto:  # y = scale·(x W) + c
        return make_model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                           helper.make_node("Mul", ["h", "s"], ["hs"]), helper.make_node("Add", ["hs", "c"], ["y"])],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                          [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
                           numpy_helper.from_array(np.float32(scale), "s"),
                           numpy_helper.from_array(np.arange(1, 9, dtype=np.float32), "c")])

    inputs = InputSet({"x": rng.standard_normal((16, 8)).astype(np.float32)})
    for scale, noted in ((1e-9, True), (1.0, False)):
        flat = model(scale)
        notes = validate(flat, flat, inputs=inputs, figures_only=True).notes
        assert any("the original's values barely change from input to input" in n for n in notes) == noted
