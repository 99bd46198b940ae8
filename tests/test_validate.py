"""validate: figures on identical, perturbed and hand-made models, tolerances and exit paths."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_alds.errors import InputDataError, ProviderError, ValidationFailedError
from onnx_alds.inputs import InputSet, load_inputs
from onnx_alds.validate import (Tolerances, add_validate_arguments, compare_output, run_validate_command,
                                summary_line, validate, validate_and_bench)

OPSET = 17


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
    graph = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(conv_w, "conv1.weight"), numpy_helper.from_array(fc_w, "fc.weight"),
         numpy_helper.from_array(fc_b, "fc.bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _swap_model(swap: bool) -> onnx.ModelProto:
    """logits = x @ P on 6 classes; P swaps classes 0 and 1 when ``swap``, else is the identity."""
    perm = np.eye(6, dtype=np.float32)
    if swap:
        perm[[0, 1]] = perm[[1, 0]]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "P"], ["logits"], name="mm")], "swap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 6])], [numpy_helper.from_array(perm, "P")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.fixture()
def saved(tmp_path):
    original, perturbed = tmp_path / "model.onnx", tmp_path / "model.small.onnx"
    onnx.save(_classifier(), original)
    onnx.save(_classifier(noise=0.02), perturbed)
    return original, perturbed


def test_identical_models_pass_with_zero_error():
    model = _classifier()
    data = load_inputs(model, random=20)
    report = validate(model, _classifier(), inputs=data, rtol=0.0, atol=0.0, min_top1_agreement=1.0, batch_size=8)
    (out,) = report.outputs
    assert report.passed and out.max_abs_error == 0.0 and out.max_rel_error == 0.0
    assert out.top1_agreement == 1.0 and out.top5_agreement == 1.0 and out.min_cosine == pytest.approx(1.0)
    assert out.samples == 20 and out.shape == (10,)
    assert report.lines()[-1] == "PASSED"
    assert report.lines()[-2].startswith("PASSED | Output: 'logits' | rel=0")
    assert any("random" in note for note in report.notes)


def test_known_disagreements_top1_top5_and_accuracy():
    x = np.full((4, 6), -1.0, np.float32)
    for i, cls in enumerate([0, 1, 2, 3]):
        x[i, cls] = 5.0
        x[i, 5] = 4.0 - i * 0.1  # runner-up class 5
    data = InputSet({"x": x}, labels=np.array([0, 1, 2, 3]), source="hand-made")
    report = validate(_swap_model(False), _swap_model(True), inputs=data, max_accuracy_drop=0.1)
    (out,) = report.outputs
    assert out.top1_agreement == 0.5  # samples of class 0 and 1 flip
    assert out.top5_agreement == 1.0  # the original class is still in the compressed top 5
    assert out.accuracy_original == 1.0 and out.accuracy_compressed == 0.5 and out.accuracy_drop == 0.5
    assert not report.passed and "accuracy drop=0.5000 > max-accuracy-drop=0.1" in report.failure_message()
    with pytest.raises(ValidationFailedError, match="^validation failed: output 'logits'"):
        report.raise_if_failed()


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


def test_loose_tolerance_passes_through_the_command(saved, capsys):
    original, perturbed = saved
    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    args = parser.parse_args([str(original), str(perturbed), "--random", "8", "--rtol", "10", "--batch-size", "3"])
    assert run_validate_command(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "PASSED"


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


def test_validate_and_bench_summary(saved):
    original, perturbed = saved
    inputs = load_inputs(_classifier(), random=8)
    report, timing, summary = validate_and_bench(
        original, perturbed, inputs=inputs, provider="cpu", min_top1_agreement=0.0, batch=1, weights_kept=0.48,
        macs_kept=0.5, bench_options={"runs": 3, "warmup": 1, "min_time_s": 0.0})
    assert report.passed and timing.timing(0, 1).speedup == 1.0
    assert summary.startswith("summary: weights kept 0.48, MACs kept 0.50, speedup ")
    assert "x on cpu (batch 1), top-1 agreement " in summary and summary.endswith("(not real data)")


def test_summary_without_classifier_reports_cosine():
    original = np.ones((2, 1))
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
