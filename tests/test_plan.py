"""The plan as a value: plan → JSON → apply equals compress; edited plans apply; stale plans are errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import onnx
import pytest

import onnx_alds
from conftest import run_model, random_feeds, small_cnn
from fake_timer import FakeTimer, two_order_cnn
from onnx_alds.cli import main
from onnx_alds.inputs import random_inputs
from onnx_alds.model_io import save_model
from onnx_alds.options import SpeedOptions
from onnx_alds.plan import Plan, PlanError, apply_plan, make_plan


def same_bytes(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    return a.SerializeToString() == b.SerializeToString()


def round_trip(plan: Plan) -> Plan:
    return Plan.from_json(plan.to_json())


@pytest.mark.parametrize("options", [
    dict(keep_flops=0.5),
    dict(keep_params=0.4, method="svd", rank_multiple=4),
    dict(keep_flops=0.6, order="pointwise-first", exclude=["conv3"]),
])
def test_plan_json_apply_equals_compress(options):
    model = small_cnn(width=32)
    plan = round_trip(make_plan(model, **options))
    assert any(layer.option == "factorized" for layer in plan.layers)
    assert same_bytes(apply_plan(model, plan).model, onnx_alds.compress(model, **options).model)


def test_data_aware_plan_round_trip():
    model = small_cnn(width=16)
    calibration = random_inputs(model, 8, input_shapes={"input": (1, 3, 32, 32)}, seed=0)
    options = dict(keep_flops=0.5, calibration=calibration)
    plan = round_trip(make_plan(model, **options))
    assert plan.data_aware and plan.options["data"]["samples"] == 8
    applied = apply_plan(model, plan, calibration=calibration)
    assert same_bytes(applied.model, onnx_alds.compress(model, **options).model)
    with pytest.raises(PlanError, match="data-aware .* give calibration inputs"):
        apply_plan(model, plan)
    # data_aware edited to false: the data-aware decisions applied data-free, said (it was silent)
    data = plan.to_dict()
    data["options"]["data"]["data_aware"] = False
    notes = apply_plan(model, Plan.from_dict(data)).report.notes
    assert any(note.startswith("the plan was made data-aware (calibrated on ") and "applied data-free" in note
               for note in notes)


def test_latency_plan_round_trip_measures_nothing_on_apply(tmp_path):
    model = two_order_cnn()
    timer = FakeTimer(group_penalty=50.0, pointwise=lambda channels: 0.5 if channels == 32 else 2.0)
    options = dict(keep_latency=0.6, rank_multiple=8, order="auto",
                   speed=SpeedOptions(batch=4, timer=timer, cache_dir=str(tmp_path)))
    plan = round_trip(make_plan(model, **options))
    assert plan.options["budget"] == {"target": "latency", "keep": 0.6}
    calls = timer.calls
    applied = apply_plan(model, plan)
    assert timer.calls == calls, "apply reads the plan; it measures nothing"
    assert same_bytes(applied.model, onnx_alds.compress(model, **options).model)
    rows = {row.name: row for row in applied.report.layers}
    assert rows["conv1"].order == plan.layer("conv1").order
    assert applied.report.latency["predicted_speedup"] == pytest.approx(plan.totals["latency"]["predicted_speedup"])
    edited = apply_plan(model, plan.with_layer("conv3", rank=4)).report  # a rank no table measured
    assert "achieved not predicted (a decision has no recorded time: edited" in edited.format()  # was "achieved nan"
    # the whole-model measurement the plan was accepted on is reported for its decisions as they were (apply
    # printed the tables' prediction alone, and a note that the plan cost less than the budget allowed)
    measured = plan.totals["latency"]["measured_ratio"]
    assert measured is not None and applied.report.latency["measured_ratio"] == measured
    assert f"{measured:.4f} measured on the whole model" in applied.report.format()
    assert "measured when the plan was made" in applied.report.format()
    assert not any(note.startswith("achieved ") for note in applied.report.notes)
    assert "measured_ratio" not in edited.latency
    # a factorized layer whose (optional) "predicted" was removed counted as dense: "achieved 0.85" printed
    # for a model with that layer factorized, 1.00 with every layer's removed
    factorized = next(row.name for row in applied.report.layers if row.groups)
    data = json.loads(plan.to_json())
    for entry in data["layers"]:
        if entry["name"] == factorized:
            del entry["predicted"]
    unknown = apply_plan(model, Plan.from_dict(data)).report
    assert math.isnan(unknown.achieved) and "achieved not predicted" in unknown.format()
    assert next(row for row in unknown.layers if row.name == factorized).groups


def test_edited_plan_applies_and_shows_the_edit():
    model = small_cnn(width=32)
    plan = make_plan(model, keep_flops=0.5)
    factorized = [layer for layer in plan.layers if layer.option == "factorized"]
    assert len(factorized) >= 2
    dense_name, rank_name = factorized[0].name, factorized[1].name
    new_rank = factorized[1].rank // 2 or 1
    edited = round_trip(plan.with_layer(dense_name, option="dense").with_layer(rank_name, rank=new_rank))
    result = apply_plan(model, edited)
    rows = {row.name: row for row in result.report.layers}
    assert rows[dense_name].groups == 0 and rows[dense_name].params_after == rows[dense_name].params_before
    assert rows[rank_name].rank == new_rank
    assert rows[rank_name].error > factorized[1].predicted.error  # recomputed for the lower rank
    names = {node.name for node in result.model.graph.node}
    assert dense_name in names and f"{dense_name}.enc" not in names
    weights = {init.name: init for init in result.model.graph.initializer}
    enc = next(node for node in result.model.graph.node if node.name == f"{rank_name}.enc")
    assert weights[enc.input[1]].dims[0] == factorized[1].groups * new_rank
    feeds = random_feeds(model, shapes={"input": (2, 3, 32, 32)})
    assert run_model(result.model, feeds)[0].shape == (2, 10)
    assert "plan (2 layers edited)" == result.report.search
    # the edit, not the allocation, kept the layer dense; and a plan edited above its budget says so
    assert "kept dense by the plan" in result.report.format()
    denser = apply_plan(model, round_trip(plan.with_layer(dense_name, option="dense"))).report
    assert denser.achieved > 0.5 * 1.001
    assert any("above the plan's requested 0.5" in warning for warning in denser.warnings)


def test_stale_plans_are_clear_errors():
    plan = make_plan(small_cnn(width=16), keep_flops=0.5)
    with pytest.raises(PlanError, match=r"layer 'conv0' is a Conv with weight 32x3x3x3 in the model but a Conv with "
                                        r"weight 16x3x3x3 in the plan .*onnx-alds plan"):
        apply_plan(small_cnn(width=32), plan)
    renamed = small_cnn(width=16)
    renamed.graph.node[0].name = "stem"
    with pytest.raises(PlanError, match="layer 'conv0' of the plan is not in the model"):
        apply_plan(renamed, plan)
    fewer = Plan.from_dict(dict(plan.to_dict(), layers=plan.to_dict()["layers"][1:]))
    with pytest.raises(PlanError, match="layer 'conv0' of the model has no entry in the plan"):
        apply_plan(small_cnn(width=16), fewer)
    with pytest.raises(PlanError, match=r"inputs resolve to input:1x3x32x32, the plan was made at input:1x3x48x48"):
        moved = Plan.from_dict(dict(plan.to_dict(), model={"inputs": {"input": [1, 3, 48, 48]}}))
        apply_plan(small_cnn(width=16), moved)
    factorized = next(layer for layer in plan.layers if layer.option == "factorized")
    with pytest.raises(PlanError, match=f"layer '{factorized.name}': rank 100000 .* does not shrink it"):
        apply_plan(small_cnn(width=16), plan.with_layer(factorized.name, rank=100000))
    with pytest.raises(PlanError, match="groups 3 is not a candidate"):
        apply_plan(small_cnn(width=16), plan.with_layer(factorized.name, groups=3))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(extra=1), r"the plan: unknown key 'extra'"),
    (lambda d: d["layers"][0].update(colour="red"), r"layers\[0\] \('conv0'\): unknown key 'colour'"),
    (lambda d: d["layers"][1].update(option="fast"), r'option "fast" is not one of factorized, dense, skipped'),
    (lambda d: d["options"]["search"].update(order="sideways"), r"unknown order 'sideways'"),
    (lambda d: d["options"]["budget"].update(keep=1.5), r"--keep-flops 1.5 is out of range"),
    (lambda d: d.update(version=2), r"plan version 2"),
    (lambda d: d["layers"][0].pop("weight_shape"), r"missing key 'weight_shape'"),
    (lambda d: d["layers"].append(dict(d["layers"][0])), r"layer 'conv0' appears twice"),
    (lambda d: d["options"]["data"].update(affine_correction="maybe"), r'options.data.affine_correction: got "maybe"'),
    (lambda d: d["options"]["data"].update(both_factors=-7), r"both_factors -7 is out of range"),
    (lambda d: d["options"]["data"].update(both_factors=True), r"options.data.both_factors: got true"),
    (lambda d: d["options"]["data"].update(damage_points=0), r"damage_points|points 0"),
    (lambda d: d["options"]["search"].update(rank_multiple="8"), r'options.search.rank_multiple: got "8"; give a '
                                                                 r"whole number"),
    (lambda d: d["options"]["search"].update(prune=None), r"options.search.prune: got null; give one of off, "
                                                          r"combined, only"),
    (lambda d: d["options"]["search"].update(prune=False), r"options.search.prune: got false"),
    (lambda d: d["layers"][0].update(option="factorized", groups=1, rank=-3, order="spatial-first"),
     r"rank: expected an integer >= 1, got -3"),
    (lambda d: d["options"]["search"].update(prune_heads="yes"), r'options.search.prune_heads: got "yes"; give '
                                                                 r"true or false"),
    (lambda d: d["options"]["search"].update(exclude="conv0"), r'options.search.exclude: got "conv0"; give an array'),
    (lambda d: d["options"]["budget"].update(keep="0.6"), r'options.budget.keep: expected a finite number, got "0.6"'),
    (lambda d: d["options"]["budget"].update(keep=10 ** 400), r"options.budget.keep: expected a finite number, got "
                                                              r"1000000000.*\.\.\."),
    (lambda d: d["model"].update(weights=5), r"model.weights: got 5; give the digest string or null"),
    (lambda d: d["options"]["data"].update(samples="lots"), r'options.data.samples: got "lots"; give the sample count'),
    (lambda d: d["totals"].update(latency="x"), r"totals.latency: "),
    (lambda d: d["totals"].update(latency={"model_us": "x"}), r"totals.latency.model_us: expected a finite number"),
    (lambda d: d["totals"].update(latency={"model_us": -5}), r"totals.latency.model_us: expected a positive time"),
    (lambda d: d["options"]["budget"].update(target="latency"), r"options.budget.target is latency but the plan "
                                                                r"records no model time"),
])
def test_unknown_keys_and_bad_values_are_refused(edit, message):
    data = make_plan(small_cnn(width=16), keep_flops=0.5).to_dict()
    edit(data)
    with pytest.raises(PlanError, match=message):
        Plan.from_json(json.dumps(data))


def test_cli_output_folders_are_refused_with_a_file_name_of_their_kind(tmp_path, capsys):
    """plan -o FOLDER suggested "model.small.onnx" for the plan, and plan/apply --report FOLDER and analyze
    --json FOLDER were called "-o"."""
    model_path = tmp_path / "cnn.onnx"
    save_model(small_cnn(width=32), model_path)
    folder = tmp_path / "out"
    folder.mkdir()
    common = ["--keep-flops", "0.5", "--rank-multiple", "8"]
    assert main(["plan", str(model_path), "-o", str(folder), *common]) == 1
    assert f"-o '{folder}' is a folder; give a file name in it (such as plan.json)" in capsys.readouterr().err
    assert main(["plan", str(model_path), "-o", str(tmp_path / "p.json"), "--report", str(folder), *common]) == 1
    assert f"--report '{folder}' is a folder; give a file name in it (such as report.json)" in capsys.readouterr().err
    assert main(["analyze", str(model_path), "--json", str(folder)]) == 1
    assert f"--json '{folder}' is a folder; give a file name in it (such as analysis.json)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx", "out"]


def test_cli_plan_then_apply_equals_compress(tmp_path, capsys):
    model_path = tmp_path / "cnn.onnx"
    save_model(small_cnn(width=32), model_path)
    common = ["--keep-flops", "0.5", "--rank-multiple", "8"]
    assert main(["plan", str(model_path), "-o", str(tmp_path / "plan.json"), *common]) == 0
    assert "wrote" in capsys.readouterr().out
    spaced = tmp_path / "my plan.json"  # the printed apply command can be pasted (it was unquoted)
    assert main(["plan", str(model_path), "-o", str(spaced), *common]) == 0
    assert f"onnx-alds apply {model_path} '{spaced}' -o OUT" in capsys.readouterr().out
    assert main(["apply", str(model_path), str(tmp_path / "plan.json"), "-o", str(tmp_path / "applied.onnx"),
                 "--report", str(tmp_path / "applied.json")]) == 0
    assert main(["compress", str(model_path), "-o", str(tmp_path / "compressed.onnx"), *common]) == 0
    assert (tmp_path / "applied.onnx").read_bytes() == (tmp_path / "compressed.onnx").read_bytes()
    data = json.loads((tmp_path / "plan.json").read_text())
    data["layers"][1]["option"] = "dense"
    (tmp_path / "edited.json").write_text(json.dumps(data))
    assert main(["apply", str(model_path), str(tmp_path / "edited.json"), "-o", str(tmp_path / "edited.onnx")]) == 0
    assert "differs from what the plan predicted" in capsys.readouterr().out
    data["layers"][0]["name"] = "nowhere"
    (tmp_path / "stale.json").write_text(json.dumps(data))
    assert main(["apply", str(model_path), str(tmp_path / "stale.json"), "-o", str(tmp_path / "stale.onnx")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: the plan does not fit this model: layer 'nowhere'") and error.count("\n") == 1
    assert not (tmp_path / "stale.onnx").exists()


def test_plan_for_another_model_is_named_before_calibration(tmp_path, capsys):
    """A data-aware plan applied to another model without calibration: the mismatch is the error, not
    the missing calibration; a data-free plan given calibration inputs is refused, not silently data-free."""
    from conftest import matmul_model

    model = small_cnn(width=16)
    calibration = random_inputs(model, 8, input_shapes={"input": (1, 3, 32, 32)}, seed=0)
    aware = make_plan(model, keep_flops=0.5, calibration=calibration)
    with pytest.raises(PlanError, match=r"does not fit this model: layer 'conv0' of the plan is not in the model"):
        apply_plan(matmul_model(), aware)
    free = make_plan(model, keep_flops=0.5)
    with pytest.raises(PlanError, match="the plan is data-free, so calibration inputs would not be used"):
        apply_plan(model, free, calibration=calibration)
    save_model(model, tmp_path / "m.onnx")
    (tmp_path / "free.json").write_text(free.to_json())
    code = main(["apply", str(tmp_path / "m.onnx"), str(tmp_path / "free.json"), "-o", str(tmp_path / "out.onnx"),
                 "--calibration-random", "4"])
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("error: the plan is data-free") and not (tmp_path / "out.onnx").exists()


def test_plan_carries_the_data_aware_refinements():
    """--both-factors and --affine-correction act at apply time: the plan must hold them, so that apply
    gives the model compress gives."""
    model = small_cnn(width=16)
    calibration = random_inputs(model, 8, input_shapes={"input": (1, 3, 32, 32)}, seed=0)
    options = dict(keep_flops=0.5, calibration=calibration, affine_correction=True, both_factors=1, max_groups=4)
    plan = round_trip(make_plan(model, **options))
    assert plan.options["data"]["affine_correction"] is True and plan.options["data"]["both_factors"] == 1
    assert same_bytes(apply_plan(model, plan, calibration=calibration).model,
                      onnx_alds.compress(model, **options).model)
    plain = apply_plan(model, round_trip(make_plan(model, keep_flops=0.5, calibration=calibration, max_groups=4)),
                       calibration=calibration).model
    assert not same_bytes(plain, onnx_alds.compress(model, **options).model), "the refinements change the factors"


def test_apply_with_other_calibration_says_so():
    from onnx_alds.inputs import InputSet

    model = small_cnn(width=16)
    drawn = random_inputs(model, 16, input_shapes={"input": (1, 3, 32, 32)}, seed=0).arrays["input"]
    made_on = InputSet({"input": drawn[:8]}, source="first.npz (8 samples)")
    other = InputSet({"input": drawn[8:]}, source="second.npz (8 samples)")
    plan = round_trip(make_plan(model, keep_flops=0.5, calibration=made_on))
    assert not any("calibration differs" in note for note in apply_plan(model, plan, calibration=made_on).report.notes)
    notes = apply_plan(model, plan, calibration=other).report.notes
    assert any("calibration differs from the plan's (second.npz (8 samples), the plan was made on first.npz" in note
               for note in notes)
    renamed = InputSet({"input": drawn[:8]}, source="copy.npz (8 samples)")  # the same data under another name
    assert not any("calibration differs" in note for note in apply_plan(model, plan, calibration=renamed).report.notes)
    same_name = InputSet({"input": drawn[8:]}, source="first.npz (8 samples)")  # other data, the same file name
    notes = apply_plan(model, plan, calibration=same_name).report.notes
    assert any("calibration differs from the plan's (first.npz (8 samples): same name, other data)" in note
               for note in notes)


def test_apply_to_a_model_with_other_weight_values_warns():
    """Same layers and shapes, other values (a fine-tuned copy): the plan's ranks were chosen for the other
    weights; applying it said nothing. The same weights under another path or a JSON round trip do not warn;
    a plan without the digest (older plans) applies without the check."""
    model, tuned = small_cnn(width=16, seed=0), small_cnn(width=16, seed=1)
    plan = round_trip(make_plan(model, keep_flops=0.5))
    assert len(plan.model["weights"]) == 64
    assert not any("weights differ" in w for w in apply_plan(model, plan).report.warnings)
    assert any("the model's weights differ from those the plan was made on" in w
               for w in apply_plan(tuned, plan).report.warnings)
    data = plan.to_dict()
    del data["model"]["weights"]
    assert not any("weights differ" in w for w in apply_plan(tuned, Plan.from_json(json.dumps(data))).report.warnings)
    calibration = _feeds()
    pruning = round_trip(make_plan(residual_feed_forward(), keep_flops=0.7, calibration=calibration, prune="only"))
    warnings = apply_plan(residual_feed_forward(seed=17), pruning, calibration=calibration).report.warnings
    assert any("weights differ" in w for w in warnings)


def test_a_model_whose_constants_are_only_renamed_or_an_empty_one_added_is_not_said_to_differ():
    """A Reshape target renamed, or an empty Resize roi that a newer opset's export adds: 'the model's weights
    differ ... its predicted errors do not hold here', while the weights were the same. A plan written with
    the earlier digest (names included) still matches its model."""
    from onnx import numpy_helper

    from onnx_alds.plan import weights_digest

    model = small_cnn(width=16, seed=0)
    plan = round_trip(make_plan(model, keep_flops=0.5))
    renamed = small_cnn(width=16, seed=0)
    bias = next(t for t in renamed.graph.initializer if len(t.dims) == 1)  # a constant no layer multiplies
    old = bias.name
    bias.name = old + "_renamed"
    for node in renamed.graph.node:
        node.input[:] = [bias.name if name == old else name for name in node.input]
    renamed.graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), "roi"))
    assert weights_digest(renamed) == weights_digest(model) != weights_digest(renamed, scheme="named")
    assert not any("weights differ" in w for w in apply_plan(renamed, plan).report.warnings)
    earlier = plan.to_dict()
    for scheme in ("named", "unnamed", "readers"):  # plans written before 2026-12, early in 2026-12, up to stop 41
        earlier["model"]["weights"] = weights_digest(model, scheme=scheme)
        applied = apply_plan(model, Plan.from_json(json.dumps(earlier))).report
        assert not any("weights differ" in w for w in applied.warnings)



def test_two_layers_weights_swapped_are_said_to_differ():
    """Two layers of one shape with their weights swapped (names kept): the plan applied without the "weights
    differ" warning, since the digest was the set of the constants' values."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.plan import weights_digest

    def chain(swap: bool, named: bool = True, through_identity: bool = False) -> onnx.ModelProto:
        rng = np.random.default_rng(5)
        values = [rng.standard_normal((32, 32)).astype(np.float32) for _ in range(2)]
        if swap:
            values.reverse()
        read = ["W1.read", "W2.read"] if through_identity else ["W1", "W2"]
        nodes = [helper.make_node("Identity", [name], [name + ".read"]) for name in ("W1", "W2")
                 if through_identity]
        nodes += [helper.make_node("MatMul", ["x", read[0]], ["h"], name="fc1" if named else ""),
                  helper.make_node("MatMul", ["h", read[1]], ["y"], name="fc2" if named else "")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                                  [numpy_helper.from_array(values[0], "W1"), numpy_helper.from_array(values[1], "W2")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert weights_digest(chain(True), scheme="unnamed") == weights_digest(chain(False), scheme="unnamed")
    for layout in (dict(), dict(named=False), dict(through_identity=True)):  # (unnamed nodes, weights read
        assert weights_digest(chain(True, **layout)) != weights_digest(chain(False, **layout))  # through chains)
    plan = round_trip(make_plan(chain(False), keep_params=0.6, rank_multiple=1))
    assert not any("weights differ" in w for w in apply_plan(chain(False), plan).report.warnings)
    assert any("weights differ" in w for w in apply_plan(chain(True), plan).report.warnings)


def test_the_same_stored_kernel_read_through_another_transpose_is_said_to_differ():
    """A HWIO kernel (tf2onnx, Paddle's transpose_y) read through Transpose perm [3, 2, 0, 1] in one model and
    [2, 3, 0, 1] in another: the layers multiply other weights (in and out channels swapped), yet the digest,
    of the stored constants alone, matched and apply gave no "weights differ" warning. An Identity or Cast
    added on the way still matches."""
    from onnx import TensorProto, helper, numpy_helper

    def model(perm, extra: str = "") -> onnx.ModelProto:
        kernel = np.random.default_rng(7).standard_normal((3, 3, 16, 16)).astype(np.float32)
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=perm)]
        read = "kt"
        if extra:
            nodes.append(helper.make_node(extra, ["kt"], ["kx"], **({"to": TensorProto.FLOAT} if extra == "Cast"
                                                                     else {})))
            read = "kx"
        nodes.append(helper.make_node("Conv", ["x", read], ["y"], name="conv", pads=[1, 1, 1, 1]))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
                                  [numpy_helper.from_array(kernel, "k")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    plan = round_trip(make_plan(model([3, 2, 0, 1]), keep_params=0.6, rank_multiple=1))
    for same in (model([3, 2, 0, 1]), model([3, 2, 0, 1], "Identity"), model([3, 2, 0, 1], "Cast")):
        assert not any("weights differ" in w for w in apply_plan(same, plan).report.warnings)
    assert any("weights differ" in w for w in apply_plan(model([2, 3, 0, 1]), plan).report.warnings)


# --------------------------------------------------------------------------------------------------
# Pruning plans: block widths beside the layers' decisions


def residual_feed_forward(seed: int = 16, dim: int = 32, hidden: int = 96) -> onnx.ModelProto:
    """x @ W_in (decaying spectrum: worth factorizing; not prunable, as the residual reads it) → MatMul up →
    Relu → MatMul down (a prunable block) → Add the residual."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    rng = np.random.default_rng(seed)
    u, _, vt = np.linalg.svd(rng.standard_normal((dim, dim)))
    weights = {"w_in": (u * 0.7 ** np.arange(dim)) @ vt, "w1": rng.standard_normal((dim, hidden)) * dim ** -0.5,
               "w2": rng.standard_normal((hidden, dim)) * hidden ** -0.5}
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h"], name="in"),
             helper.make_node("MatMul", ["h", "w1"], ["a"], name="up"), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["f"], name="down"),
             helper.make_node("Add", ["h", "f"], ["y"], name="residual")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dim])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])],
                      [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()])


def _feeds(samples: int = 128):
    import numpy as np

    from onnx_alds.inputs import InputSet

    return InputSet({"x": np.random.default_rng(3).standard_normal((samples, 32)).astype(np.float32)},
                    source="test inputs")


@pytest.mark.parametrize("options", [dict(keep_params=0.5, prune="combined"), dict(keep_flops=0.6, prune="only"),
                                     dict(keep_params=0.5, prune="combined", method="damage")],
                         ids=["combined", "only", "damage-combined"])
def test_pruning_plan_round_trip_applies_as_compress(options):
    model, calibration = residual_feed_forward(), _feeds()
    options = dict(options, calibration=calibration, rank_multiple=4)
    plan = round_trip(make_plan(model, **options))
    (block,) = plan.blocks
    assert (block.name, block.producer, block.consumer, block.width_before) == ("up", "up", "down", 96)
    assert block.width < 96 and block.predicted.width == block.width and not block.edited
    layers = {layer.name: layer for layer in plan.layers}
    assert layers["up"].option == layers["down"].option == "skipped"
    assert layers["up"].weight_shape == (32, 96), "the plan names the model's shapes, before pruning"
    assert (layers["in"].option == "factorized") == (options["prune"] == "combined")
    applied = apply_plan(model, plan, calibration=calibration)
    assert same_bytes(applied.model, onnx_alds.compress(model, **options).model)
    assert applied.report.search == "plan" and applied.report.pruned[0].width_after == block.width


def test_edited_block_width_applies_and_bad_edits_are_clear_errors():
    model, calibration = residual_feed_forward(), _feeds()
    plan = round_trip(make_plan(model, keep_params=0.5, prune="combined", calibration=calibration, rank_multiple=4))
    (block,) = plan.blocks

    def with_width(width: int) -> Plan:
        return Plan.from_dict(dict(plan.to_dict(), blocks=[dict(plan.to_dict()["blocks"][0], width=width)]))

    wider = apply_plan(model, with_width(block.width + 8), calibration=calibration)
    assert wider.report.pruned[0].width_after == block.width + 8
    assert wider.report.pruned[0].error < block.predicted.error
    weights = {init.name: init for init in wider.model.graph.initializer}
    up = next(node for node in wider.model.graph.node if node.name == "up")
    assert list(weights[up.input[1]].dims) == [32, block.width + 8]
    full = apply_plan(model, with_width(96).with_layer("up", option="dense").with_layer("down", option="dense"),
                      calibration=calibration)
    assert full.report.pruned[0].width_after == 96 and full.report.params_after > wider.report.params_after
    with pytest.raises(PlanError, match=r"block 'up': width 50 is not one of its widths \(4, 8, 12, 16, 20, 24, "
                                        r"\.\.\., 96: multiples of the rank multiple"):
        apply_plan(model, with_width(50), calibration=calibration)
    with pytest.raises(PlanError, match=r"blocks\[0\] \('up'\).width: 97 is more than its width_before \(96, "):
        with_width(97)
    factorized_in_block = plan.with_layer("down", option="factorized", groups=1, rank=8, order="spatial-first")
    with pytest.raises(PlanError, match=f"layer 'down' is factorized but its block 'up' is narrowed to {block.width}"):
        apply_plan(model, factorized_in_block, calibration=calibration)
    no_blocks = Plan.from_dict(dict(plan.to_dict(), blocks=[]))
    with pytest.raises(PlanError, match="block 'up' of the model has no entry in the plan's blocks"):
        apply_plan(model, no_blocks, calibration=calibration)
    other = dict(plan.to_dict()["blocks"][0], producer="in")
    with pytest.raises(PlanError, match="block 'up' is up -> down of width 96 in the model but in -> down"):
        apply_plan(model, Plan.from_dict(dict(plan.to_dict(), blocks=[other])), calibration=calibration)
    off = plan.to_dict()
    off["options"]["search"]["prune"] = "off"
    with pytest.raises(PlanError, match="the plan has blocks but options.search.prune is off"):
        Plan.from_dict(off)
    only = round_trip(make_plan(model, keep_flops=0.6, prune="only", calibration=calibration, rank_multiple=4))
    with pytest.raises(PlanError, match="layer 'in' is factorized in a plan that prunes only"):
        apply_plan(model, only.with_layer("in", option="factorized", groups=1, rank=8, order="spatial-first"),
                   calibration=calibration)
    with pytest.raises(PlanError, match="data-aware .* give calibration inputs"):
        apply_plan(model, plan)


def test_cli_pruning_plan_then_apply_equals_compress(tmp_path, capsys):
    import numpy as np

    model_path, data = tmp_path / "ffn.onnx", tmp_path / "calibration.npz"
    save_model(residual_feed_forward(), model_path)
    np.savez(data, x=_feeds().arrays["x"])
    common = ["--keep-params", "0.5", "--prune", "--rank-multiple", "4", "--calibration", str(data)]
    assert main(["plan", str(model_path), "-o", str(tmp_path / "plan.json"), *common]) == 0
    assert json.loads((tmp_path / "plan.json").read_text())["blocks"][0]["width"] < 96
    assert main(["apply", str(model_path), str(tmp_path / "plan.json"), "-o", str(tmp_path / "applied.onnx"),
                 "--calibration", str(data)]) == 0
    assert main(["compress", str(model_path), "-o", str(tmp_path / "compressed.onnx"), *common]) == 0
    assert (tmp_path / "applied.onnx").read_bytes() == (tmp_path / "compressed.onnx").read_bytes()
    capsys.readouterr()
    plan = json.loads((tmp_path / "plan.json").read_text())
    plan["blocks"][0]["width"] = 96
    (tmp_path / "edited.json").write_text(json.dumps(plan))
    assert main(["apply", str(model_path), str(tmp_path / "edited.json"), "-o", str(tmp_path / "edited.onnx"),
                 "--calibration", str(data)]) == 0
    edited = "1 block width differs from what the plan predicted (edited; first: 'up' width 96)"
    assert edited in capsys.readouterr().out


def test_plan_of_a_model_without_node_names_applies_to_it():
    """Unnamed nodes get names when the model is prepared; the first check compared the plan's names with
    the raw (empty) ones and refused the model the plan was made for."""
    model = small_cnn(width=32)
    for node in model.graph.node:
        node.name = ""
    plan = round_trip(make_plan(model, keep_flops=0.5))
    assert any(layer.option == "factorized" for layer in plan.layers)
    assert same_bytes(apply_plan(model, plan).model, onnx_alds.compress(model, keep_flops=0.5).model)
    other = small_cnn(width=32)
    for node in other.graph.node:
        node.name = f"renamed_{node.name}"
    with pytest.raises(PlanError, match="another model, or renamed nodes"):
        apply_plan(other, plan)


def test_damage_prune_when_no_layer_outside_the_blocks_can_shrink_at_the_rank_multiple():
    """At rank multiple 16 the 32x32 layer outside the block has no rank that shrinks it: the joint
    allocation prunes the block alone (the low-rank step refused the whole run)."""
    model, calibration = residual_feed_forward(), _feeds()
    result = onnx_alds.compress(model, keep_params=0.7, prune="combined", method="damage", rank_multiple=16,
                                calibration=calibration)
    assert result.report.achieved <= 0.7 * 1.01 and result.report.pruned[0].width_after < 96
    assert not any(row.groups for row in result.report.layers)


def test_plan_text_with_a_repeated_key_a_bom_or_deep_nesting(tmp_path):
    """An edit that added "rank" and left the old one applied the last value silently; a UTF-8 BOM (as
    Notepad saves) was "not JSON"; deep nesting raised RecursionError."""
    plan = make_plan(small_cnn(width=16), keep_flops=0.5)
    text = plan.to_json()
    assert Plan.from_json("\ufeff" + text).layers == plan.layers
    path = tmp_path / "bom.json"
    path.write_bytes("\ufeff".encode() + text.encode())
    assert Plan.load(path).layers == plan.layers
    repeated = text.replace('"groups":', '"rank": 4, "groups":', 1)
    with pytest.raises(PlanError, match=r"the key 'rank' appears twice in one entry"):
        Plan.from_json(repeated)
    with pytest.raises(PlanError, match="nested too deeply"):
        Plan.from_json("[" * 100_000 + "]" * 100_000)


def test_plan_applies_to_the_same_network_exported_with_dynamic_sizes():
    """A plan made on a fixed-size export, applied to the same network with dynamic height and width:
    the advice was "--input-shape", a flag apply does not take; the plan's shapes are used."""
    model = small_cnn(width=16)
    plan = round_trip(make_plan(model, keep_flops=0.5, rank_multiple=8))
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    for index, name in ((2, "H"), (3, "W")):
        dim = dynamic.graph.input[0].type.tensor_type.shape.dim[index]
        dim.ClearField("dim_value")
        dim.dim_param = name
    applied = apply_plan(dynamic, plan)
    feeds = random_feeds(model)
    assert run_model(applied.model, feeds)[0].shape == run_model(model, feeds)[0].shape
    assert run_model(applied.model, feeds)[0].tolist() == run_model(apply_plan(model, plan).model, feeds)[0].tolist()


def test_applied_plan_advice_is_about_the_plan_not_compress_flags():
    """Edited ranks far below the plan's budget: apply repeated compress's advice (--exclude, lower
    --rank-multiple), flags apply does not take."""
    model = small_cnn(width=32)
    data = make_plan(model, keep_flops=0.5, rank_multiple=8).to_dict()
    for layer in data["layers"]:
        if layer["option"] == "factorized":
            layer["rank"], layer["groups"] = 1, 1
    result = apply_plan(model, Plan.from_dict(data))
    said = " ".join(result.report.warnings + result.report.notes)
    assert "well below the plan's requested 0.5" in said and "in the plan" in said
    assert "--exclude" not in said and "--rank-multiple" not in said


def test_a_dense_entry_switched_to_factorized_needs_no_order():
    """Setting "option": "factorized" with groups and rank on a dense entry failed with "order None is
    not one of ..."; the order defaults to the ALDS pair (spatial-first)."""
    model = small_cnn(width=32)
    data = make_plan(model, keep_flops=0.5, rank_multiple=8).to_dict()
    entry = next(layer for layer in data["layers"] if layer["option"] == "dense" and layer["op"] == "Conv"
                 and layer["weight_shape"][0] >= 16)
    entry.update(option="factorized", groups=1, rank=8)
    entry.pop("order", None)
    plan = Plan.from_dict(data)
    assert plan.layer(entry["name"]).order == "spatial-first"
    result = apply_plan(model, plan)
    assert {row.name: row.rank for row in result.report.layers}[entry["name"]] == 8


def test_plan_equals_itself_after_json_and_api_misuse_is_a_plan_error():
    """A plan read back from its JSON compared unequal (its input dims came back as tuples, were lists);
    with_layer(foo=1) and apply_plan(None, plan) were bare TypeErrors."""
    from onnx_alds.errors import ModelLoadError

    model = small_cnn(width=32)
    plan = make_plan(model, keep_flops=0.5)
    assert round_trip(plan) == plan
    name = next(layer.name for layer in plan.layers if layer.option == "factorized")
    with pytest.raises(PlanError, match="cannot change foo of a layer decision"):
        plan.with_layer(name, foo=1)
    with pytest.raises(PlanError, match="cannot change weight_shape"):
        plan.with_layer(name, weight_shape=(1, 2))
    with pytest.raises(ModelLoadError, match="the model is of type NoneType; give the path of an .onnx file"):
        apply_plan(None, plan)
    with pytest.raises(ModelLoadError, match="the model is of type int"):
        onnx_alds.compress(3, keep_flops=0.5)


def test_an_unedited_plan_applied_warns_as_compress_does():
    """apply of an unedited plan said its decisions "(as edited)" cut more than its budget and advised
    editing the plan, while plan had said the rank steps of 16 were too coarse."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W1"], ["h"], pads=[1] * 4, name="c1"),
         helper.make_node("Relu", ["h"], ["h2"]), helper.make_node("Conv", ["h2", "W2"], ["y"], pads=[1] * 4, name="c2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 16, 16])],
        [numpy_helper.from_array(rng.standard_normal((64, 32, 3, 3)).astype(np.float32), "W1"),
         numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compressed = onnx_alds.compress(model, keep_flops=0.55, rank_multiple=16).report
    assert any("with rank steps of 16 (--rank-multiple), the plan with the smallest largest error" in w
               for w in compressed.warnings)
    applied = apply_plan(model, round_trip(make_plan(model, keep_flops=0.55, rank_multiple=16))).report
    as_planned = [w.replace("so lower --rank-multiple", "so make the plan again with a lower --rank-multiple")
                  .replace("give a few hundred real inputs (--calibration FILE.npz or --calibration-images DIR)",
                           "make a data-aware plan (onnx-alds plan ... --calibration FILE.npz or --calibration-images "
                           "DIR with a few hundred real inputs)")
                  for w in compressed.warnings]  # (apply takes no --rank-multiple nor calibration for a data-free plan)
    assert list(applied.warnings) == as_planned and not any("as edited" in w for w in applied.warnings)


def test_a_plan_of_a_model_whose_dims_stay_dynamic(tmp_path):
    """``W @ x`` with x of [b, 48, t]: compress ran (MACs not counted, with a note) but plan refused the model
    ('dynamic dims; give them with --input-shape'), though compress is plan then apply. The plan keeps the
    dims by name and applies to the same file as compress writes."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.plan import Plan, apply_plan, make_plan

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((40, 4)) @ rng.standard_normal((4, 48))).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["W", "x"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 48, "t"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 40, "t"])],
                              [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plan = make_plan(model, keep_params=0.5, rank_multiple=1)
    assert plan.model["inputs"] == {"x": ("b", 48, "t")}
    plan.save(tmp_path / "plan.json")
    applied = apply_plan(model, Plan.load(tmp_path / "plan.json"))
    compressed = onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)
    assert applied.model.SerializeToString() == compressed.model.SerializeToString()
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for dim, value in zip(fixed.graph.input[0].type.tensor_type.shape.dim, (1, 48, 5)):
        dim.dim_value = value
    with pytest.raises(onnx_alds.errors.OnnxAldsError, match="the plan was made at x:bx48xt"):
        apply_plan(fixed, plan)


def test_a_plan_for_unnamed_nodes_that_moved_is_refused():
    """Unnamed nodes are named by position (MatMul_0, MatMul_1): the same graph with its two MatMuls listed in the
    other order got each other's decisions (a rank-6 cut meant for an exactly rank-2 weight on a full-rank one,
    output off by 26 %), exit 0."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 2)) @ rng.standard_normal((2, 64)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((64, 64)) / 8).astype(np.float32)

    def model(order: str) -> onnx.ModelProto:
        matmuls = {"a": helper.make_node("MatMul", ["x", "W1"], ["p"]), "b": helper.make_node("MatMul", ["x", "W2"], ["q"])}
        graph = helper.make_graph([matmuls[k] for k in order] + [helper.make_node("Add", ["p", "q"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
                                  [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    plan = round_trip(make_plan(model("ab"), keep_params=0.6, rank_multiple=1))
    assert {layer.weight for layer in plan.layers} == {"W1", "W2"}
    apply_plan(model("ab"), plan)  # the model it was made for
    with pytest.raises(PlanError, match="layer 'MatMul_0' multiplies weight 'W2' in the model but 'W1' in the plan "
                                        r"\(the model was re-exported, quantized, or its nodes reordered or renamed "
                                        r"since the plan was made\)"):
        apply_plan(model("ba"), plan)
    older = Plan.from_dict({**plan.to_dict(), "layers": [{k: v for k, v in layer.items() if k != "weight"}
                                                          for layer in plan.to_dict()["layers"]]})
    apply_plan(model("ab"), older)  # a plan without weights (an earlier version's) still applies


def test_an_edited_rank_off_the_default_multiple_is_named():
    """At the default rank multiple (16) no note named an edited rank of 17, though the README promises one."""
    plan = make_plan(small_cnn(width=32), keep_flops=0.5, rank_multiple=16)  # the CLI's default
    factorized = next(layer for layer in plan.layers if layer.option == "factorized")
    report = apply_plan(small_cnn(width=32), plan.with_layer(factorized.name, rank=17)).report
    assert any("has a rank that is not a multiple of 16" in note and f"'{factorized.name}', rank 17" in note
               and "in the plan align them" in note for note in report.notes)
    unedited = apply_plan(small_cnn(width=32), plan).report
    assert not any(re.search(r"not (a multiple|multiples) of 16", note) for note in unedited.notes)
    # at multiple 8 the plan's own ranks are off 16 too: the note names the edited rank first, and says so
    eight = make_plan(small_cnn(width=32), keep_flops=0.5, rank_multiple=8)
    factorized = [layer for layer in eight.layers if layer.option == "factorized"]
    assert len(factorized) >= 2 and all(layer.rank % 8 == 0 for layer in factorized)
    report = apply_plan(small_cnn(width=32), eight.with_layer(factorized[-1].name, rank=7)).report
    note = next(note for note in report.notes if "not multiples of 16" in note)
    assert f"(first: '{factorized[-1].name}', rank 7; 1 is off the plan's own rank multiple 8)" in note, note


def test_a_plans_input_shape_that_no_longer_fits_names_no_flag_apply_lacks():
    """apply of a plan made at input:1x3x64x64 on a model fixing 32x32 said "change only its dynamic dims, e.g.
    input:1x3x32x32", advice for --input-shape, which apply does not take."""
    plan = make_plan(small_cnn(width=16), keep_flops=0.5)
    data = plan.to_dict()
    data["options"]["input_shapes"] = {"input": [1, 3, 64, 64]}
    with pytest.raises(PlanError) as info:
        apply_plan(small_cnn(width=16), Plan.from_dict(data))
    message = str(info.value)
    assert "options.input_shapes" in message and message.endswith("make a new plan for it with onnx-alds plan")
    assert "--input-shape" not in message and "e.g. input:" not in message


def test_plan_prints_its_warnings_on_stderr_naming_apply_validate(tmp_path, capsys):
    """plan printed "check with --validate" (a flag it refuses) on stdout, where compress prints warnings on stderr."""
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(width=32), str(path))
    assert main(["plan", str(path), "-o", str(tmp_path / "p.json"), "--keep-flops", "0.05", "--rank-multiple", "1"]) == 0
    out, err = capsys.readouterr()
    assert "warning:" not in out
    assert "check with onnx-alds apply --validate" in err and "check with --validate" not in err


def test_plan_options_that_apply_would_ignore_or_flags_it_lacks_are_named(tmp_path):
    """A data-free plan edited to ``sequential: true`` applied as if it were not there; the plan's own exclude
    pattern or input name was refused as "--exclude ..." / "--input-shape names ...", flags apply does not take;
    a damage plan's groups error named max_groups (16) and not damage_max_groups (1), the limit that applied."""
    model = small_cnn(width=16)
    data = make_plan(model, keep_flops=0.5).to_dict()
    data["options"]["data"]["sequential"] = True
    with pytest.raises(PlanError, match="the plan is data-free, but its options.data sets sequential, which needs "
                                        "calibration data; set it back to false,"):
        apply_plan(model, Plan.from_dict(data))
    data = make_plan(model, keep_flops=0.5).to_dict()
    data["options"]["search"]["exclude"] = ["nosuch*"]
    with pytest.raises(PlanError, match="the plan's options.search.exclude 'nosuch\\*' matches no Conv/Gemm/MatMul"):
        apply_plan(model, Plan.from_dict(data))
    data = make_plan(model, keep_flops=0.5).to_dict()
    data["options"]["input_shapes"] = {"x": [1, 3, 32, 32]}
    with pytest.raises(PlanError, match="it names 'x', which is not a graph input") as info:
        apply_plan(model, Plan.from_dict(data))
    assert "--input-shape" not in str(info.value)
    calibration = random_inputs(model, 16, seed=0)
    plan = make_plan(model, keep_flops=0.5, method="damage", calibration=calibration)
    name = next(layer.name for layer in plan.layers if layer.option == "factorized")
    with pytest.raises(PlanError, match="options.data.damage_max_groups 1, the most groups damage measures"):
        apply_plan(model, plan.with_layer(name, groups=2), calibration=calibration)


def test_a_plan_that_keeps_more_than_its_budget_says_so(tmp_path):
    """An edited budget (0.5 to 0.1), or a rank edited together with its 'predicted' (a search-and-replace), was
    applied without a word: the report said 'target 0.1, achieved 0.48'."""
    model = small_cnn(width=16)
    plan = make_plan(model, keep_params=0.5)
    unedited = apply_plan(model, plan).report
    assert not [line for line in unedited.notes + unedited.warnings if "above the plan's requested" in line]
    data = plan.to_dict()
    data["options"]["budget"]["keep"] = 0.1
    warnings = apply_plan(model, Plan.from_dict(data)).report.warnings  # (a budget not met: a warning)
    assert any("above the plan's requested 0.1" in warning for warning in warnings)
    data = plan.to_dict()
    entry = max((layer for layer in data["layers"] if layer["option"] == "factorized"), key=lambda e: e["params"])
    for decision in (entry, entry["predicted"]):  # dense, 'predicted' included
        decision.update(option="dense", groups=0, rank=0, order=None)
    warnings = apply_plan(model, Plan.from_dict(data)).report.warnings
    assert any("above the plan's requested 0.5" in warning for warning in warnings)
    path = tmp_path / "m.onnx"  # a path to another model: refused as a ModelProto is
    renamed = small_cnn(width=16)
    for node in renamed.graph.node:
        node.name = "other_" + node.name
    onnx.save(renamed, str(path))
    with pytest.raises(PlanError, match="of the plan is not in the model"):
        apply_plan(str(path), plan)


def test_a_plan_whose_budget_was_raised_is_not_blamed_on_the_rank_multiple():
    """options.budget.keep edited from 0.5 to 0.9: the warning said the rank steps made it, and that plans
    closer to the budget have a larger error."""
    model = small_cnn(width=16)
    data = make_plan(model, keep_params=0.5).to_dict()
    data["options"]["budget"]["keep"] = 0.9
    report = apply_plan(model, Plan.from_dict(data)).report
    gap = next(w for w in report.warnings if "well below" in w)
    assert "the plan's requested 0.9: its decisions (as edited) cut more than its budget" in gap
    assert "lower --rank-multiple" not in gap and report.search == "plan (budget edited)"


def test_an_unedited_pruning_plan_applied_warns_as_its_compression_did():
    """apply of an unedited --prune plan said its decisions "(as edited)" cut more than its budget, where the
    compression had said the width steps were too coarse."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 8)) @ rng.standard_normal((8, 128))).astype(np.float32) * 0.1
    w2 = rng.standard_normal((128, 32)).astype(np.float32) * 0.1
    model = make_model([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                        helper.make_node("MatMul", ["r", "w2"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
                       [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")], opset=13)
    calibration = InputSet({"x": np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)})
    options = dict(keep_params=0.6, prune="only", calibration=calibration, rank_multiple=16)
    compressed = onnx_alds.compress(model, **options).report.warnings
    applied = apply_plan(model, round_trip(make_plan(model, **options)), calibration=calibration).report.warnings
    gap = [w for w in applied if "well below" in w]
    assert gap and gap == [w.replace("so lower --rank-multiple", "so make the plan again with a lower --rank-multiple")
                           for w in compressed if "well below" in w] and "as edited" not in gap[0]


def test_a_plan_timed_with_more_threads_than_this_machine_has_loads_and_applies(tmp_path):
    """A plan made with --threads 16 on a larger machine was refused here ("got 16 threads; give 1 to 8"), by
    Plan.load and apply, though applying it times nothing; a thread count that is no count is still refused."""
    model = small_cnn(width=16)
    data = make_plan(model, keep_flops=0.5).to_dict()
    data["options"]["speed"] = {"provider": "cpu", "threads": 4096, "batch": 1}
    (tmp_path / "plan.json").write_text(json.dumps(data))
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.compress_options().speed.threads == 4096 and round_trip(plan) == plan
    assert same_bytes(apply_plan(model, plan).model, onnx_alds.compress(model, keep_flops=0.5).model)
    for threads, shown in ((0, "0"), (-2, "-2"), (2.5, "2.5"), ("4", '"4"'), (True, "true")):
        data["options"]["speed"]["threads"] = threads
        with pytest.raises(PlanError, match=f"options.speed.threads: got {re.escape(shown)}; give a positive whole "
                                            "number"):
            Plan.from_json(json.dumps(data))


def test_the_pointwise_first_note_of_an_applied_plan_counts_its_decisions():
    """apply said "order pointwise-first: 1 of 4 k×k convs" (the search's option) for a plan whose pointwise-first
    layer was edited to spatial-first, and counted other convs than compress did."""
    model = small_cnn(width=32)
    plan = make_plan(model, keep_flops=0.5, order="pointwise-first", rank_multiple=8)
    first = [layer.name for layer in plan.layers if layer.order == "pointwise-first"]
    factorized = [layer.name for layer in plan.layers if layer.option == "factorized" and layer.op == "Conv"]
    assert first and len(factorized) == 4

    def note(applied: Plan) -> str:
        (text,) = [n for n in apply_plan(model, applied).report.notes if n.startswith("order pointwise-first")]
        return text

    assert note(plan).startswith(f"order pointwise-first: the plan applies {len(first)} of its 4 factorized k×k "
                                 "convs pointwise-first")
    edited = plan
    for name in first:
        edited = edited.with_layer(name, order="spatial-first", groups=1, rank=8)
    edited = round_trip(edited.with_layer("conv0", option="dense"))
    assert note(edited) == ("order pointwise-first: the plan applies 0 of its 3 factorized k×k convs pointwise-first; "
                            "the other 3 spatial-first, as its decisions say (first: 'conv1'); 1 more k×k conv stays "
                            "dense")


def test_an_edited_budget_target_is_an_edit():
    """options.budget.target edited from flops to params (a search-and-replace, which changes every
    "target": "flops") was applied as the plan: "search: plan", and a gap warning that spoke of an allocation
    under that budget, which never ran."""
    model = small_cnn(width=32)
    plan = make_plan(model, keep_flops=0.5, rank_multiple=8)
    text = plan.to_json().replace('"target": "flops"', '"target": "params"')
    report = apply_plan(model, Plan.from_json(text)).report
    assert report.search == "plan (budget edited)" and report.target == "params"
    assert plan.totals["target"] == "flops" and text.count('"target": "params"') == 2  # the budget's and the totals'
    data = plan.to_dict()  # a plan without totals.target (made before it was recorded): told by its ratios
    del data["totals"]["target"]
    data["options"]["budget"]["target"] = "params"
    assert apply_plan(model, Plan.from_dict(data)).report.search == "plan (budget edited)"
    data["options"]["budget"]["target"] = "flops"
    assert apply_plan(model, Plan.from_dict(data)).report.search == "plan"
    gap = [w for w in apply_plan(model, Plan.from_json(text.replace('"keep": 0.5', '"keep": 0.9'))).report.warnings
           if "well below" in w]
    assert gap and "well below the plan's requested 0.9: its decisions (as edited)" in gap[0]


def test_a_layer_set_skipped_is_an_edit(tmp_path, capsys):
    """A factorized layer set to "skipped" was no edit ("search: plan", no note), where "dense" was one."""
    model = small_cnn(width=16)
    plan = make_plan(model, keep_flops=0.5, rank_multiple=8)
    name = next(layer.name for layer in plan.layers if layer.option == "factorized")
    skipped = plan.with_layer(name, option="skipped")
    result = apply_plan(model, skipped)
    assert result.report.search == "plan (1 layer edited)"
    assert {row.name: row.skip_reason for row in result.report.layers}[name] == "skipped in the plan"
    save_model(model, tmp_path / "m.onnx")
    (tmp_path / "p.json").write_text(skipped.to_json())
    assert main(["apply", str(tmp_path / "m.onnx"), str(tmp_path / "p.json"), "-o", str(tmp_path / "o.onnx")]) == 0
    assert f"1 layer differs from what the plan predicted (edited; first: '{name}' skipped)" in capsys.readouterr().out


def test_block_width_edits_are_counted_on_the_search_line():
    """A plan whose only edit was a block width said "search: plan", and with a layer edited too "plan (1 layers
    edited)"; the edit note was there, the search line ignored it."""
    model, calibration = residual_feed_forward(), _feeds()
    pruning = round_trip(make_plan(model, keep_params=0.5, prune="combined", calibration=calibration, rank_multiple=4))
    (block,) = pruning.blocks
    wider = Plan.from_dict(dict(pruning.to_dict(), blocks=[dict(pruning.to_dict()["blocks"][0], width=96)]))
    assert apply_plan(model, wider, calibration=calibration).report.search == "plan (1 block width edited)"
    assert pruning.layer("in").option == "factorized"
    both = wider.with_layer("in", option="dense")
    assert apply_plan(model, both, calibration=calibration).report.search == \
        "plan (1 layer edited, 1 block width edited)"
    only = round_trip(make_plan(model, keep_flops=0.6, prune="only", calibration=calibration, rank_multiple=4))
    wider = Plan.from_dict(dict(only.to_dict(), blocks=[dict(only.to_dict()["blocks"][0], width=96)]))
    assert apply_plan(model, wider, calibration=calibration).report.search == "plan (1 block width edited)"


def test_with_layer_refuses_a_new_name_as_a_plan_error():
    """with_layer(layer, name="x") was a bare TypeError (two values for its own argument)."""
    plan = make_plan(small_cnn(width=16), keep_flops=0.5)
    with pytest.raises(PlanError, match="cannot change name of a layer decision"):
        plan.with_layer("conv1", name="renamed")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(options=None), r"options: expected an object, got null"),
    (lambda d: d.update(layers={}), r"layers: expected an array, got an object"),
    (lambda d: d["layers"].__setitem__(0, "conv0"), r"layers\[0\]: expected an object, got a string"),
    (lambda d: d["options"]["budget"].update(target=None), r"options.budget.target: got null;"),
    (lambda d: d["layers"][1].update(option=True), r"option true is not one of"),
    (lambda d: d["model"].update(inputs=[1, 2]), r"model.inputs: expected an object, got an array"),
    (lambda d: d["totals"].update(latency=3), r"totals.latency: expected an object, got a number"),
])
def test_plan_errors_name_json_types_not_python_ones(edit, message):
    """A plan's reader said "expected an object, got NoneType", "got None", "got True": Python's words for
    JSON's null, true, array and object."""
    data = make_plan(small_cnn(width=16), keep_flops=0.5).to_dict()
    edit(data)
    with pytest.raises(PlanError, match=message) as info:
        Plan.from_json(json.dumps(data))
    assert not re.search(r"NoneType|\bNone\b|\bTrue\b|\bdict\b|\blist\b|\bstr\b", str(info.value))


def test_rank_groups_or_order_on_a_dense_or_skipped_entry_are_refused():
    """A rank and groups set on a dense entry were silently ignored (the layer stayed dense, no note); an order
    of "garbage" on one was accepted. What the plan wrote for the entry (a factorized layer set to dense keeps
    its rank) and null stay accepted."""
    model = small_cnn(width=16)
    plan = make_plan(model, keep_flops=0.5, rank_multiple=8)
    data = plan.to_dict()
    dense = next(i for i, layer in enumerate(data["layers"]) if layer["option"] == "dense")
    name = data["layers"][dense]["name"]
    for option in ("dense", "skipped"):
        changed = json.loads(json.dumps(data))
        changed["layers"][dense].update(option=option, rank=8, groups=1)
        with pytest.raises(PlanError, match=rf"layers\[{dense}\] \('{name}'\): groups 1 and rank 8 on a "
                                            rf"\"{option}\" layer would be ignored \(it stays dense\); set "
                                            r"\"option\": \"factorized\" to factorize it, or set groups and rank "
                                            "to null"):
            Plan.from_dict(changed)
    changed = json.loads(json.dumps(data))
    changed["layers"][dense]["order"] = "garbage"
    with pytest.raises(PlanError, match=r"order \"garbage\" is not one of spatial-first, pointwise-first"):
        Plan.from_dict(changed)
    changed["layers"][dense]["order"] = "pointwise-first"
    with pytest.raises(PlanError, match=r"order \"pointwise-first\" on a \"dense\" layer would be ignored"):
        Plan.from_dict(changed)
    with pytest.raises(PlanError, match="rank 8 on a \"dense\" layer would be ignored"):
        plan.with_layer(name, rank=8)
    changed = json.loads(json.dumps(data))
    changed["layers"][dense].update(rank=None, groups=None)
    factorized = next(layer for layer in changed["layers"] if layer["option"] == "factorized")
    factorized["option"] = "dense"  # its groups, rank and order as the plan wrote them
    edited = Plan.from_dict(changed)
    assert edited.layer(factorized["name"]).edited and edited.layer(name).rank == 0
    rows = {row.name: row for row in apply_plan(model, edited).report.layers}
    assert rows[factorized["name"]].groups == 0


def test_the_plans_weight_count_is_the_written_models_with_weights_behind_reshape_chains():
    """Weights stored flat (fp16) behind Cast → Reshape: plan said 11410 weights where apply, compress and the
    file said 11402 (the Reshape shapes, which the rewrite drops with the chains)."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.layers import iter_total_params

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((32, 4)) @ rng.standard_normal((4, 16 * 9)) / 12).astype(np.float16)
    w2 = (rng.standard_normal((32, 4)) @ rng.standard_normal((4, 32)) / 6).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w1flat"], ["w1c"], to=TensorProto.FLOAT),
         helper.make_node("Reshape", ["w1c", "w1shape"], ["w1"]),
         helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1] * 4, name="conv"),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Reshape", ["w2flat", "w2shape"], ["w2"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="pointwise")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])],
        [numpy_helper.from_array(w1.reshape(32, -1), "w1flat"), numpy_helper.from_array(np.array([32, 16, 3, 3]),
                                                                                          "w1shape"),
         numpy_helper.from_array(w2.reshape(-1), "w2flat"), numpy_helper.from_array(np.array([32, 32, 1, 1]),
                                                                                    "w2shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plan = make_plan(model, keep_params=0.5, rank_multiple=4)
    compressed = onnx_alds.compress(model, keep_params=0.5, rank_multiple=4)
    written = int(sum(iter_total_params(compressed.model)))
    assert compressed.report.params_after == written
    assert plan.totals["params_after"] == plan.report.params_after == written
    assert plan.totals["achieved"] == pytest.approx(written / plan.totals["params_before"])
    assert apply_plan(model, round_trip(plan)).report.params_after == written


def test_skip_reasons_that_edits_made_stale_are_not_repeated():
    """A layer the plan skipped as excluded (--exclude), the pattern then removed from options.search.exclude:
    the report still said "excluded by the user (--exclude)"; the layers of a pruned block widened back to its
    full width still said "pruned block 'up': hidden width 96 -> 40"."""
    model = small_cnn(width=16)
    data = make_plan(model, keep_flops=0.5, exclude=["conv2"]).to_dict()
    assert next(layer for layer in data["layers"] if layer["name"] == "conv2")["reason"].startswith("excluded")
    data["options"]["search"]["exclude"] = []
    rows = {row.name: row for row in apply_plan(model, Plan.from_dict(data)).report.layers}
    assert rows["conv2"].groups == 0 and rows["conv2"].skip_reason == (
        "skipped in the plan (excluded when it was made; options.search.exclude no longer names it)")
    model, calibration = residual_feed_forward(), _feeds()
    pruning = make_plan(model, keep_params=0.5, prune="combined", calibration=calibration, rank_multiple=4).to_dict()
    assert pruning["blocks"][0]["width"] < 96 and pruning["layers"][1]["reason"].startswith("pruned block 'up'")
    pruning["blocks"][0]["width"] = 96
    rows = {row.name: row for row in apply_plan(model, Plan.from_dict(pruning), calibration=calibration).report.layers}
    assert rows["up"].skip_reason == rows["down"].skip_reason == (
        "skipped in the plan (in a block it narrowed when it was made)")


def test_an_excluded_layer_edited_to_factorized_names_the_plans_exclude_list():
    """A layer excluded when the plan was made, edited to "factorized": the error said to set it dense or make a
    new plan, never that removing its pattern from options.search.exclude (apply takes no --exclude) lets it."""
    model = small_cnn(width=16)
    data = make_plan(model, keep_flops=0.5, exclude=["conv2"]).to_dict()
    conv2 = next(layer for layer in data["layers"] if layer["name"] == "conv2")
    conv2.update(option="factorized", groups=1, rank=4, order="spatial-first", reason=None)
    with pytest.raises(PlanError, match='remove the pattern that names it from "options"."search"."exclude"'):
        apply_plan(model, Plan.from_dict(data))
    data["options"]["search"]["exclude"] = []  # what the error says: then it is applied as edited
    rows = {row.name: row for row in apply_plan(model, Plan.from_dict(data)).report.layers}
    assert (rows["conv2"].groups, rows["conv2"].rank) == (1, 4)


def test_a_weight_first_matmul_edited_to_factorized_in_a_data_aware_plan_is_applied_as_edited():
    """A weight-first MatMul (y = W·x) edited to "factorized" in a data-aware plan was left dense with exit 0
    (data-aware factors did not cover it), then refused; its calibration columns fit it now."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("W1", (32, 32)), ("Wl", (16, 8)), ("W2", (32, 32)))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("MatMul", ["Wl", "h"], ["l"], name="left"),  # [16, 8] @ [N, 8, 32]
             helper.make_node("MatMul", ["l", "W2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 32])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calibration = random_inputs(model, 16, seed=1)
    plan = make_plan(model, keep_params=0.7, rank_multiple=1, calibration=calibration)
    edited = plan.with_layer("left", option="factorized", groups=1, rank=4)
    rows = {row.name: row for row in apply_plan(model, edited, calibration=calibration).report.layers}
    assert rows["left"].groups == 1 and rows["left"].rank == 4


def test_an_order_edit_is_named_and_a_size_written_as_a_string_is_refused(tmp_path, capsys):
    """An edit of the order alone read "(edited; first: 'conv1' factorized g=1 r=16)"; an input dim edited to
    the string "16" was taken for a dim name: "resolve to x:1x3x16x16, the plan was made at x:1x3x16x16"."""
    model = two_order_cnn()
    plan = make_plan(model, keep_flops=0.5, rank_multiple=8)
    layer = next(d for d in plan.layers if d.option == "factorized" and d.order == "spatial-first"
                 and model_conv_kernel(model, d.name) > 1)
    edited = plan.with_layer(layer.name, order="pointwise-first", groups=1, rank=8)
    save_model(model, tmp_path / "m.onnx")
    (tmp_path / "p.json").write_text(edited.to_json())
    assert main(["apply", str(tmp_path / "m.onnx"), str(tmp_path / "p.json"), "-o", str(tmp_path / "o.onnx")]) == 0
    assert (f"(edited; first: '{layer.name}' factorized g=1 r=8 pointwise-first)"
            in capsys.readouterr().out)
    data = json.loads(plan.to_json())
    name, dims = next(iter(data["model"]["inputs"].items()))
    data["model"]["inputs"][name] = [dims[0], str(dims[1])] + dims[2:]
    with pytest.raises(PlanError, match=rf"model.inputs.{name}: got the string \"{dims[1]}\"; give a size as a "
                                        rf"number \({dims[1]}\)"):
        Plan.from_dict(data)


def model_conv_kernel(model: onnx.ModelProto, name: str) -> int:
    node = next(n for n in model.graph.node if n.name == name)
    return int(np.prod(next(a.ints for a in node.attribute if a.name == "kernel_shape")))


def test_a_plan_without_entries_for_products_of_run_time_tensors_applies():
    """Plans made before attention's Q·Kᵀ products were listed as layers hold no entry for them: such a plan
    was refused ("layer 'scores' of the model has no entry in the plan")."""
    from test_compress import _attention

    model = _attention(False, dynamic=True)
    plan = make_plan(model, keep_params=0.6, rank_multiple=1)
    data = json.loads(plan.to_json())
    products = [entry["name"] for entry in data["layers"] if entry["params"] == 0]
    assert products == ["scores", "mix"]
    data["layers"] = [entry for entry in data["layers"] if entry["params"] != 0]
    earlier = apply_plan(model, Plan.from_dict(data))
    assert same_bytes(earlier.model, apply_plan(model, plan).model)
    data["layers"] = [entry for entry in data["layers"] if entry["name"] != "q_proj"]  # a layer with a weight
    with pytest.raises(PlanError, match="layer 'q_proj' of the model has no entry in the plan"):
        apply_plan(model, Plan.from_dict(data))


def test_an_unedited_plans_budget_gap_advice_is_about_making_the_plan():
    """apply said "(lower --rank-multiple to get closer)", a flag apply does not take."""
    from onnx_alds.api import budget_gap

    warning, _ = budget_gap(0.4, 0.6, 16, "rank", from_plan=True)
    _, note = budget_gap(0.598, 0.6, 16, "rank", from_plan=True)
    _, again = budget_gap(0.585, 0.6, 16, "rank", from_plan=True)
    assert "make the plan again with a lower --rank-multiple" in warning
    assert note is None and "make the plan again with a lower --rank-multiple to get closer" in again
    assert "so lower --rank-multiple" in budget_gap(0.4, 0.6, 16, "rank")[0]  # compress: its own flag


def test_apply_calibration_of_another_size_is_told_the_plan_fixes_the_shape(tmp_path, capsys):
    """"... but --input-shape asks for x:1x6x64; make them agree (..., or another --input-shape)": apply takes no
    --input-shape; the shape is the plan's."""
    from conftest import matmul_model

    save_model(matmul_model(in_features=64, out_features=64, leading=("N", "T")), tmp_path / "m.onnx")
    assert main(["plan", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "plan.json"), "--keep-params", "0.5",
                 "--rank-multiple", "8", "--input-shape", "x:1x6x64", "--calibration-random", "8"]) == 0
    np.savez(tmp_path / "short.npz", x=np.random.default_rng(0).standard_normal((8, 4, 64)).astype(np.float32))
    capsys.readouterr()
    assert main(["apply", str(tmp_path / "m.onnx"), str(tmp_path / "plan.json"), "-o", str(tmp_path / "out.onnx"),
                 "--calibration", str(tmp_path / "short.npz")]) == 1
    error = capsys.readouterr().err
    assert "but the plan was made at x:1x6x64" in error and "a plan made at another --input-shape" in error
    assert "--input-shape asks" not in error and not (tmp_path / "out.onnx").exists()


def test_a_data_aware_plan_reports_its_steps_as_compress_does():
    """plan printed "method: alds (data-aware; calibration: ...)" where compress and apply name the steps."""
    calibration = random_inputs(small_cnn(width=16), 16)
    plan = make_plan(small_cnn(width=16), keep_flops=0.5, calibration=calibration, bias_correction=True)
    compressed = onnx_alds.compress(small_cnn(width=16), keep_flops=0.5, calibration=calibration,
                                    bias_correction=True)
    assert plan.report.data_aware_steps == compressed.report.data_aware_steps
    assert "bias-correction" in plan.report.data_aware_steps and "refit" in plan.report.data_aware_steps


def _two_matmuls(chain: str = "", seed: int = 7) -> onnx.ModelProto:
    """x[B, 32] → MatMul W1 [32, 48] → Relu → MatMul W2 [48, 16]; ``chain`` 'identity' reads W1 through an
    Identity (as an export before simplification), 'quantized' through DequantizeLinear of an int8 copy."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1, w2 = rng.standard_normal((32, 48)).astype(np.float32), rng.standard_normal((48, 16)).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(w2, "W2")]
    if chain == "quantized":
        scale = float(np.abs(w1).max() / 127)
        inits += [numpy_helper.from_array(np.round(w1 / scale).astype(np.int8), "W1_q"),
                  numpy_helper.from_array(np.array(scale, np.float32), "W1_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["W1_q", "W1_scale"], ["W1_read"]))
    elif chain == "identity":
        inits.append(numpy_helper.from_array(w1, "W1"))
        nodes.append(helper.make_node("Identity", ["W1"], ["W1_read"]))
    else:
        inits.append(numpy_helper.from_array(w1, "W1"))
    first = "W1" if not chain else "W1_read"
    nodes += [helper.make_node("MatMul", ["x", first], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["a"]),
              helper.make_node("MatMul", ["a", "W2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("made_on, applied_to", [("identity", ""), ("", "identity")])
def test_a_plan_applies_across_an_identity_chain_added_or_removed(made_on, applied_to):
    """A simplifier removes the Identity between an initializer and its MatMul (or an export adds one): the plan
    recorded the Identity's output as the layer's weight, and was refused as 'nodes reordered or renamed'."""
    plan = round_trip(make_plan(_two_matmuls(made_on), keep_params=0.5, rank_multiple=1))
    assert {layer.weight for layer in plan.layers} == {"W1", "W2"}  # the initializers themselves
    applied = apply_plan(_two_matmuls(applied_to), plan)
    direct = onnx_alds.compress(_two_matmuls(applied_to), keep_params=0.5, rank_multiple=1)
    assert [(r.name, r.groups, r.rank) for r in applied.report.layers] == \
        [(r.name, r.groups, r.rank) for r in direct.report.layers]


def test_a_plan_applied_to_a_quantized_copy_names_the_quantization():
    """A float model's plan applied to its QDQ copy was refused as 'nodes reordered or renamed' (nothing was):
    the factorized layer now reads a quantized weight, and the refusal says so."""
    plan = make_plan(_two_matmuls(), keep_params=0.5, rank_multiple=1)
    assert any(layer.name == "fc1" and layer.option == "factorized" for layer in plan.layers)
    with pytest.raises(PlanError, match=r"layer 'fc1' is factorized in the plan but cannot be factorized in this "
                                        r"model \(quantized weight \(DequantizeLinear\)"):
        apply_plan(_two_matmuls("quantized"), plan)


def test_hand_edited_layer_entries_are_refused_for_what_they_are():
    """A factorized entry without 'rank' read "rank: expected an integer >= 1, got 0"; a layer's params edited
    applied silently (the docs call them identifying); a rank set on a layer skipped as quantized was told to
    set "option": "factorized", which was then refused."""
    plan = make_plan(_two_matmuls(), keep_params=0.5, rank_multiple=1).to_dict()
    factorized = next(i for i, layer in enumerate(plan["layers"]) if layer["option"] == "factorized")
    no_rank = json.loads(json.dumps(plan))
    del no_rank["layers"][factorized]["rank"]
    with pytest.raises(PlanError, match=r"missing key 'rank': a factorized layer needs its groups and rank"):
        Plan.from_dict(no_rank)
    switched = json.loads(json.dumps(plan))  # a skipped entry (groups and rank 0) switched to factorized
    switched["layers"][factorized].update(groups=0, rank=8)
    with pytest.raises(PlanError, match=r"groups 0: a factorized layer needs its groups and rank \(at least 1"):
        Plan.from_dict(switched)
    edited = json.loads(json.dumps(plan))
    edited["layers"][factorized]["params"] = 5
    with pytest.raises(PlanError, match=r"holds \d+ weights in the model but 5 in the plan"):
        apply_plan(_two_matmuls(), Plan.from_dict(edited))
    quantized = make_plan(_two_matmuls("quantized"), keep_params=0.8, rank_multiple=1).to_dict()
    skipped = next(layer for layer in quantized["layers"] if layer["option"] == "skipped")
    skipped["rank"] = 8
    with pytest.raises(PlanError) as refused:
        Plan.from_dict(quantized)
    assert "quantized weight" in str(refused.value) and "to factorize it" not in str(refused.value)


@pytest.mark.parametrize("key, value", [("method", "svd"), ("seed", 5), ("prune", "only")])
def test_an_edited_search_option_is_refused_not_reported_as_applied(key, value):
    """options.search.method set to svd (or seed to 5, prune to only) applied the same decisions, while the
    report printed "method: svd ... seed 5" and the model's metadata onnx_alds.method=svd."""
    plan = make_plan(_two_matmuls(), keep_params=0.5, rank_multiple=1, max_groups=1).to_dict()
    assert plan["totals"]["searched"]["method"] == plan["options"]["search"]["method"]
    edited = json.loads(json.dumps(plan))
    edited["options"]["search"][key] = value
    with pytest.raises(PlanError, match=rf"options.search.{key} is .* but totals.searched.{key}, what made the "
                                        r"decisions, is .*a plan's decisions are applied as written"):
        Plan.from_dict(edited)
    edited = json.loads(json.dumps(plan))  # the record edited instead: the same refusal, in the same words
    edited["totals"]["searched"][key] = value
    with pytest.raises(PlanError, match=rf"options.search.{key} is .* but totals.searched.{key}"):
        Plan.from_dict(edited)
    assert apply_plan(_two_matmuls(), Plan.from_dict(plan)).report.method == plan["options"]["search"]["method"]


@pytest.mark.parametrize("made_with_identity", [True, False])
def test_a_plan_matches_a_branch_layer_across_an_identity_chain(made_with_identity):
    """Layers inside If branches reading an outer initializer through an Identity of the branch: the plan
    recorded the Identity's output ('else_wid'), and a copy without the Identity was refused."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = {name: (rng.standard_normal((64, 64)) * 0.1).astype(np.float32) for name in ("Wa", "Wb")}

    def build(identity: bool) -> onnx.ModelProto:
        def branch(tag: str, weight: str) -> onnx.GraphProto:
            nodes, source = [], weight
            if identity:
                nodes.append(helper.make_node("Identity", [weight], [f"{tag}_wid"], name=f"{tag}_id"))
                source = f"{tag}_wid"
            nodes.append(helper.make_node("MatMul", ["x", source], [f"{tag}_y"], name=f"{tag}_mm"))
            return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}_y", TensorProto.FLOAT,
                                                                                    [4, 64])])
        graph = helper.make_graph(
            [helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("then", "Wa"),
                              else_branch=branch("else", "Wb"))], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64]),
             helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
            [numpy_helper.from_array(value, name) for name, value in weights.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    plan = round_trip(make_plan(build(made_with_identity), keep_params=0.6, rank_multiple=8))
    assert {layer.weight for layer in plan.layers} == {"Wa", "Wb"}
    applied = apply_plan(build(not made_with_identity), plan)
    assert sorted((r.name, r.rank) for r in applied.report.layers if r.groups) == \
        sorted((layer.name, layer.rank) for layer in plan.layers if layer.option == "factorized")


def test_notes_name_only_factorized_layers_so_a_plan_applied_says_what_compress_says():
    """compress noted the calibration shrinkage of the bundled ResNet's classifier, which its plan keeps dense
    (so a plan applied, which measures only the layers it factorizes, left the note out of the same model)."""
    from onnx_alds import compress
    from onnx_alds.demo import CALIBRATION, MODEL, bundled
    from onnx_alds.inputs import load_inputs

    model = str(bundled(MODEL))
    calibration = load_inputs(model, npz=bundled(CALIBRATION))
    direct = compress(model, keep_flops=0.5, rank_multiple=16, calibration=calibration)
    applied = apply_plan(model, make_plan(model, keep_flops=0.5, rank_multiple=16, calibration=calibration),
                         calibration)
    assert direct.model.SerializeToString() == applied.model.SerializeToString()
    dense = [row.name for row in direct.report.layers if row.groups == 0]
    assert "/fc/Gemm" in dense
    assert not any(name in note for name in dense for note in direct.report.notes if "shrinkage" in note)
    assert direct.report.notes == applied.report.notes


def test_a_plans_measured_figures_and_fitting_options_are_not_edited(tmp_path):
    """Edits apply accepted without a word: totals.latency.measured_ratio 0.45 was printed as measured (its
    rounds said 0.622) and silenced the budget warning; options.search.rank_multiple 1 made groups the search
    never had acceptable; options.data.sequential/both_factors changed the factors of a plan still called
    'plan'; an unknown key in totals passed."""
    model = two_order_cnn()
    timer = FakeTimer(group_penalty=50.0, pointwise=lambda channels: 0.5 if channels == 32 else 2.0)
    plan = make_plan(model, keep_latency=0.6, rank_multiple=8, order="auto",
                     speed=SpeedOptions(batch=4, timer=timer, cache_dir=str(tmp_path)))
    data = plan.to_dict()
    assert data["totals"]["latency"]["measured_ratio"] is not None
    Plan.from_dict(json.loads(json.dumps(data)))  # unedited: accepted
    edited = json.loads(json.dumps(data))
    edited["totals"]["latency"]["measured_ratio"] = 0.45
    with pytest.raises(PlanError, match="totals.latency.measured_ratio: 0.45 is not the figure of any round"):
        Plan.from_dict(edited)
    edited = json.loads(json.dumps(data))
    edited["totals"]["latency"]["measured_speedup"] = 9.9
    with pytest.raises(PlanError, match="measured_speedup: 9.9 is not 1 / measured_ratio"):
        Plan.from_dict(edited)
    # a layer's recorded time edited (its decision as planned) was printed as the tables' prediction (0.12, 8x)
    edited = json.loads(json.dumps(data))
    timed = next(layer for layer in edited["layers"] if layer["option"] == "factorized")
    timed["predicted"]["time_us"] = 1e-3
    with pytest.raises(PlanError, match=r"the layers' recorded times \(predicted.time_us, time_dense_us\) give a "
                                        r"predicted 0\.\d+ of the model's time, but totals.achieved is"):
        Plan.from_dict(edited)
    for key, value in (("rank_multiple", 1), ("max_groups", 8), ("error_measure", "frobenius")):
        edited = json.loads(json.dumps(data))
        edited["options"]["search"][key] = value
        with pytest.raises(PlanError, match=f"options.search.{key} is .* but totals.searched.{key}"):
            Plan.from_dict(edited)
    for where, place in (("totals", lambda d: d["totals"]), ("totals.searched", lambda d: d["totals"]["searched"]),
                         ("totals.searched.data", lambda d: d["totals"]["searched"]["data"])):
        edited = json.loads(json.dumps(data))
        place(edited)["foo"] = 1
        with pytest.raises(PlanError, match=f"{where}: unknown key 'foo'"):
            Plan.from_dict(edited)
    small = small_cnn(width=16)
    calibration = random_inputs(small, 16, seed=0)
    data = make_plan(small, keep_flops=0.5, calibration=calibration).to_dict()
    for key, value in (("sequential", True), ("both_factors", 2), ("refit", False)):
        edited = json.loads(json.dumps(data))
        edited["options"]["data"][key] = value
        with pytest.raises(PlanError, match=f"options.data.{key} is .* but the plan was made with"):
            Plan.from_dict(edited)


def test_a_narrowed_blocks_layer_set_to_dense_is_no_edit_and_says_what_it_stays(tmp_path, capsys):
    """A layer of a narrowed block edited from "skipped" to "dense" was applied as it was (narrowed), while the
    report said "1 layer edited" and listed it as dense. Dense or skipped, the block's width decides it: no
    edit, and a note says the layer stays narrowed and how to keep it whole."""
    model, calibration = residual_feed_forward(), _feeds()
    plan = make_plan(model, keep_params=0.5, prune="combined", calibration=calibration, rank_multiple=4)
    data = plan.to_dict()
    (block,) = [b for b in data["blocks"] if b["width"] < b["width_before"]]
    layer = next(entry for entry in data["layers"] if entry["name"] == block["consumer"])
    assert layer["option"] == "skipped"
    layer["option"] = "dense"
    edited = Plan.from_dict(data)
    assert not edited.edited_layers
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", **calibration.arrays)
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    (tmp_path / "edited.json").write_text(json.dumps(data))
    assert main(["apply", str(tmp_path / "m.onnx"), str(tmp_path / "plan.json"), "-o", str(tmp_path / "a.onnx"),
                 "--calibration", str(tmp_path / "cal.npz"), "-q"]) == 0
    capsys.readouterr()
    assert main(["apply", str(tmp_path / "m.onnx"), str(tmp_path / "edited.json"), "-o", str(tmp_path / "b.onnx"),
                 "--calibration", str(tmp_path / "cal.npz")]) == 0
    out = capsys.readouterr().out
    assert "edited" not in out and f"(first: '{block['consumer']}', pruned block '{block['name']}'" in out
    assert "stays narrowed, unfactorized" in out
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    block["width"] = block["width_before"]  # the block kept whole: the dense layer is whole, no note
    (tmp_path / "whole.json").write_text(json.dumps(data))
    assert main(["apply", str(tmp_path / "m.onnx"), str(tmp_path / "whole.json"), "-o", str(tmp_path / "c.onnx"),
                 "--calibration", str(tmp_path / "cal.npz")]) == 0
    assert "stays narrowed" not in capsys.readouterr().out


def test_a_plan_without_its_searched_record_says_its_options_are_unchecked(tmp_path, capsys):
    """Deleting "totals" let an edit of options.search.seed through (refused with totals in place), and the
    written model recorded seed 7 for decisions seed 0 made, without a word."""
    model = small_cnn(width=16)
    data = make_plan(model, keep_flops=0.5).to_dict()
    save_model(model, tmp_path / "m.onnx")
    del data["totals"]
    data["options"]["search"]["seed"] = 7
    (tmp_path / "plan.json").write_text(json.dumps(data))
    assert main(["apply", str(tmp_path / "m.onnx"), str(tmp_path / "plan.json"), "-o", str(tmp_path / "o.onnx")]) == 0
    assert "the plan records no totals.searched (what made its decisions)" in capsys.readouterr().out


def test_applying_a_plan_with_its_own_calibration_holding_repeats_is_not_other_data():
    """The plan keeps the digest of the set compress fitted (repeats left out); apply compared it with the raw
    set's, and said "calibration differs from the plan's" for the very file the plan was made on."""
    from onnx_alds.inputs import InputSet

    model = small_cnn(width=16)
    x = np.random.default_rng(0).standard_normal((12, 3, 32, 32)).astype(np.float32)
    x[5] = x[2]  # a repeated sample
    calibration = InputSet({"input": x}, source="cal.npz")
    plan = make_plan(model, keep_params=0.6, rank_multiple=8, calibration=calibration)
    notes = apply_plan(model, plan, calibration=calibration).report.notes
    assert not any(note.startswith("calibration differs") for note in notes), notes
    other = InputSet({"input": x[::-1].copy()}, source="cal.npz")
    assert any("same name, other data" in note for note in apply_plan(model, plan, calibration=other).report.notes)


def test_a_plan_made_in_python_is_the_same_file_as_the_command_lines(tmp_path):
    """The API wrote ``options.input_shapes: null`` where the command line writes ``{}``: the same options gave
    two different plan files."""
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(width=32), str(path))
    assert main(["plan", str(path), "-o", str(tmp_path / "cli.json"), "--keep-flops", "0.6"]) == 0
    make_plan(str(path), keep_flops=0.6, rank_multiple=16).save(tmp_path / "api.json")
    cli, api = (json.loads((tmp_path / name).read_text()) for name in ("cli.json", "api.json"))
    for data in (cli, api):
        data["model"].pop("path", None)
        data.pop("tool", None)
    assert api == cli and api["options"]["input_shapes"] == {}


def test_digests_of_string_values_are_the_same_on_every_run():
    """An object array's buffer holds pointers: digests of string inputs and string constants changed from run to
    run, so apply warned "the model's weights differ from those the plan was made on" about the same file, and two
    identical compress runs wrote different bytes."""
    from onnx import helper, numpy_helper

    from onnx_alds.inputs import InputSet, first_occurrences
    from onnx_alds.plan import calibration_digest, sample_digests, weights_digests

    def strings(words):  # new str objects each call (no interned literals)
        return np.array(["".join(list(word)) + "" for word in words], dtype=object)

    one = InputSet({"cat": strings(["red", "blue", "red"]), "x": np.zeros((3, 2), np.float32)})
    two = InputSet({"cat": strings(["red", "blue", "red"]), "x": np.zeros((3, 2), np.float32)})
    other = InputSet({"cat": strings(["red", "blue", "green"]), "x": np.zeros((3, 2), np.float32)})
    assert calibration_digest(one) == calibration_digest(two) != calibration_digest(other)
    assert sample_digests(one) == sample_digests(two) and sample_digests(one)[0] == sample_digests(one)[2]
    assert first_occurrences(one) == [0, 1]

    def model(classes):
        table = numpy_helper.from_array(classes, "classes")
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])], [table])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert weights_digests(model(strings(["a1", "b2"]))) == weights_digests(model(strings(["a1", "b2"])))
    named = weights_digests(model(strings(["a1", "b2"])))["named"]
    assert named != weights_digests(model(strings(["a1", "b3"])))["named"]


def test_another_onnx_alds_output_given_as_the_plan_says_what_it_is(tmp_path, capsys):
    """A sweep.json, a sweep's row file or a compress report given to apply: "unknown key 'rows' ... remove it
    or make the plan again", as if the file were a plan with one key too many."""
    model = small_cnn()
    onnx.save(model, tmp_path / "m.onnx")
    assert main(["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "c.onnx"), "--keep-params", "0.7",
                 "--report", str(tmp_path / "report.json")]) == 0
    (tmp_path / "sweep.json").write_text(json.dumps({"rows": [], "skipped": [], "runs": [],
                                                     "environment": {"versions": {"onnx_alds": "0"}}}))
    (tmp_path / "row.json").write_text(json.dumps({"fingerprint": "0" * 64, "row": {"variant_id": "m.alds"}}))
    (tmp_path / "model.json").write_text(json.dumps({"irVersion": "8", "graph": {}}))  # (an ONNX model as JSON)
    capsys.readouterr()
    for name, what in (("report.json", "an onnx-alds report"), ("sweep.json", "a sweep's summary"),
                       ("row.json", "a sweep's row file"),
                       ("model.json", "a JSON file of another kind (its keys: 'irVersion',")):
        with pytest.raises(PlanError, match=f"{re.escape(what)} .*, not a plan; give a file written by onnx-alds plan"):
            Plan.load(tmp_path / name)
        assert main(["apply", str(tmp_path / "m.onnx"), str(tmp_path / name), "-o", str(tmp_path / "a.onnx")]) == 1
        assert f"{what}" in capsys.readouterr().err and not (tmp_path / "a.onnx").exists()
    with pytest.raises(PlanError, match='format is "other-tool", not "onnx-alds plan"'):  # (said "missing key 'model'")
        Plan.from_dict({"format": "other-tool", "settings": {}})


def test_a_plans_dense_layers_cost_no_spectrum(monkeypatch):
    """apply of a plan keeping every layer of a 384 MB model dense spent 94 s of its 104 s on the layers'
    spectra, which a dense layer never reads."""
    import onnx_alds.api as api

    model = small_cnn(width=32)
    plan = make_plan(model, keep_params=0.6)
    factorized = [layer.name for layer in plan.layers if layer.option == "factorized"]
    assert factorized and len(factorized) < len(plan.layers)
    read: list = []
    original = api.layer_spectra
    monkeypatch.setattr(api, "layer_spectra", lambda matrix, *a, **k: read.append(matrix.shape) or original(
        matrix, *a, **k))
    applied = apply_plan(model, round_trip(plan)).model
    assert len(read) == len(factorized)  # (one spectrum per factorized layer, none for the dense ones)
    assert same_bytes(applied, onnx_alds.compress(model, keep_params=0.6).model)


def test_a_data_aware_plan_applies_with_calibration_of_another_sequence_length():
    """A plan made on calibration sequences of 3 tokens, applied with sequences of 4: refused as "the model
    changed since the plan was made", naming attention's run-time Q·Kᵀ product, whose operand's shape follows
    the inputs (it is no layer)."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 16)) / 4).astype(np.float32), name)
             for name in ("wq", "wk", "wo")]
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
         helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
         helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
         helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),  # (run time × run time)
         helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
         helper.make_node("MatMul", ["p", "x"], ["mixed"], name="pv"),
         helper.make_node("MatMul", ["mixed", "wo"], ["y"], name="o_proj")], "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 16])], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    short, long = (InputSet({"x": rng.standard_normal((32, length, 16)).astype(np.float32)}) for length in (3, 4))
    plan = make_plan(model, keep_params=0.8, rank_multiple=1, calibration=short)
    assert "qk" in {layer.name for layer in plan.layers}  # (listed, kept dense: the shape check met it)
    result = apply_plan(model, round_trip(plan), calibration=long)
    assert any("calibration differs from the plan's" in note for note in result.report.notes)
    onnx.checker.check_model(result.model, full_check=True)
