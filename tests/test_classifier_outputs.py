"""Models whose outputs are not all float tensors, as scikit-learn exports (skl2onnx) write them: a label
first, string labels, a ZipMap sequence of maps, an opset imported twice."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model, run_model
from onnx_alds import compress
from onnx_alds.cli import main
from onnx_alds.inputs import InputSet
from onnx_alds.validate import validate

CLASSES = 10


def classifier(*, first: str = "label", zipmap: bool = True, strings: bool = True, seed: int = 31,
               hidden: int = 128, opset_twice: bool = False) -> onnx.ModelProto:
    """MLP 64 → hidden → ReLU → hidden → ReLU → 10 logits; outputs: an int64 (or string) label and the
    logits, plus a ZipMap of the probabilities; ``first`` names the output declared first."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)
             for name, shape in (("w1", (64, hidden)), ("w2", (hidden, hidden)), ("w3", (hidden, CLASSES)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "w3"], ["logits"], name="mm3"),
             helper.make_node("ArgMax", ["logits"], ["index"], axis=1, keepdims=0),
             helper.make_node("Identity", ["x"], ["echo"])]
    outputs = {"logits": helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES]),
               "echo": helper.make_tensor_value_info("echo", TensorProto.FLOAT, ["N", 64])}
    if strings:
        nodes.append(helper.make_node("CategoryMapper", ["index"], ["label"], domain="ai.onnx.ml",
                                      cats_int64s=list(range(CLASSES)), cats_strings=[f"c{i}" for i in range(CLASSES)]))
        outputs["label"] = helper.make_tensor_value_info("label", TensorProto.STRING, ["N"])
    else:
        nodes.append(helper.make_node("Identity", ["index"], ["label"]))
        outputs["label"] = helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])
    if zipmap:
        nodes += [helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
                  helper.make_node("ZipMap", ["probabilities"], ["zip"], domain="ai.onnx.ml",
                                   classlabels_int64s=list(range(CLASSES)))]
        outputs["zip"] = helper.make_value_info("zip", helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))))
    order = [first] + [name for name in ("label", "logits", "zip") if name != first and name in outputs]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [outputs[name] for name in order], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    if opset_twice:
        opsets.append(helper.make_opsetid("", 17))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _data(samples: int, seed: int) -> InputSet:
    return InputSet({"x": np.random.default_rng(seed).standard_normal((samples, 64)).astype(np.float32)},
                    source="test inputs")


def test_sensitivity_is_measured_on_every_float_output_not_the_first():
    """An input echoed as the first output never changes: the sensitivities, measured on the first output
    only, were all 0, every width looked free, and --prune cut to keep-flops 0.16 for 0.7 asked."""
    model = classifier(first="echo", zipmap=False, strings=False)
    result = compress(model, keep_flops=0.7, calibration=_data(256, 1), prune="only")
    assert result.report.achieved > 0.6
    note = next(n for n in result.report.notes if n.startswith("block sensitivities"))
    assert float(note.rsplit(" ", 1)[-1]) > 0.01
    result = compress(model, keep_flops=0.8, calibration=_data(256, 1), sensitivity=True, rank_multiple=8)
    assert result.report.achieved > 0.7


def test_sensitivity_with_a_layer_that_has_no_factorized_option(tmp_path):
    """The 64x10 head has no rank at multiple 16 below its dense size: IndexError before."""
    rng = np.random.default_rng(32)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)
             for name, shape in (("w1", (64, 128)), ("w2", (128, 64)), ("w3", (64, CLASSES)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "w3"], ["logits"], name="mm3")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    onnx.save(model, tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calibration.npz", x=_data(64, 2).arrays["x"])
    code = main(["compress", str(tmp_path / "mlp.onnx"), "-o", str(tmp_path / "small.onnx"), "--keep-flops", "0.8",
                 "--sensitivity", "--calibration", str(tmp_path / "calibration.npz"),
                 "--report", str(tmp_path / "report.json")])
    assert code == 0
    notes = json.loads((tmp_path / "report.json").read_text())["notes"]
    assert any(note.startswith("sensitivity weights") for note in notes)


def test_string_labels_and_zipmap_outputs_are_carried_and_not_compared():
    """A string label and a ZipMap (sequence of maps) output: compress refused the model ("not a typed
    tensor"), and validate, --prune, --sensitivity and --method damage tried to turn them into floats."""
    model = classifier(first="label", opset_twice=True)
    calibration = _data(128, 3)
    for options in ({"prune": "combined"}, {"sensitivity": True}, {"method": "damage"}):
        result = compress(model, keep_flops=0.7, calibration=calibration, **options)
        assert [o.name for o in result.model.graph.output] == ["label", "logits", "zip"]
        report = validate(model, result.model, inputs=_data(64, 4), figures_only=True)
        assert [o.name for o in report.outputs] == ["label", "logits"]
        assert any("'zip' (seq(map(int64,tensor(float))))" in note for note in report.notes)
        label = next(o for o in report.outputs if o.name == "label")
        logits = next(o for o in report.outputs if o.name == "logits")
        x = _data(64, 4).arrays["x"]
        predicted = np.argmax(run_model(result.model, {"x": x})[1], axis=1)
        expected = np.argmax(run_model(model, {"x": x})[1], axis=1)
        assert label.mean_rel_error == pytest.approx(float(np.mean(predicted != expected)))  # fraction that differ
        assert logits.top1_agreement == pytest.approx(float(np.mean(predicted == expected)))


def test_sweep_measures_the_float_output_and_counts_labels_as_equal_or_not(tmp_path):
    """The sweep's quality came from the first output: an int64 label first was compared as a float vector
    (cos_mean 1.000 with 35 % of the labels changed), and a string or ZipMap output crashed every row."""
    x = _data(40, 5).arrays["x"]
    np.savez(tmp_path / "eval.npz", x=x)
    labelled = classifier(first="label", strings=False, seed=33, hidden=64)
    only_strings = classifier(first="label", strings=True, seed=33, hidden=64)
    only_strings.graph.output.remove(next(o for o in only_strings.graph.output if o.name == "logits"))
    for name, model in (("labelled", labelled), ("strings", only_strings)):
        onnx.save(model, tmp_path / f"{name}.onnx")
    code = main(["sweep", str(tmp_path / "labelled.onnx"), str(tmp_path / "strings.onnx"), "--keep-flops", "0.6",
                 "--methods", "alds", "--inputs", str(tmp_path / "eval.npz"), "-o", str(tmp_path / "sweep"),
                 "--no-bench"])
    assert code == 0
    rows = {row["model"]: row for row in json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]}
    for name, model in (("labelled", labelled), ("strings", only_strings)):
        row = rows[name]
        assert row["status"] == "ok" and row["quality_metric"] == "agreement"
        written = onnx.load(tmp_path / "sweep" / "models" / f"{name}.alds.flops0.6.m16.onnx")
        logits = lambda m: run_model(m, {"x": x})[[o.name for o in m.graph.output].index("label")]  # noqa: E731
        assert row["quality"] == pytest.approx(float(np.mean(logits(written) == logits(model))))
    assert rows["labelled"]["quality"] < 1.0  # the compression moved some labels: the figure can tell
