"""The compression pass end to end through the Python API: invariants of the output model."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_alds
from conftest import make_model, matmul_model, random_feeds, run_model, small_cnn
from onnx_alds.errors import BudgetError, UnsupportedModelError
from onnx_alds.model_io import load_model, save_model


def test_compress_keeps_interface_and_metadata(cnn):
    before = cnn.SerializeToString()
    result = onnx_alds.compress(cnn, keep_flops=0.5)
    model = result.model
    assert cnn.SerializeToString() == before, "the caller's model must not be modified"
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.graph.input[0].type == cnn.graph.input[0].type  # dynamic dim 'N' kept
    assert model.graph.output[0].type == cnn.graph.output[0].type
    assert list(model.opset_import) == list(cnn.opset_import)
    assert model.ir_version == cnn.ir_version
    assert model.doc_string == "small test CNN" and model.model_version == 3
    props = {p.key: p.value for p in model.metadata_props}
    assert props["author"] == "tests"
    assert props["onnx_alds.method"] == "alds" and props["onnx_alds.target"] == "keep_flops=0.5"
    report = result.report
    assert abs(report.achieved - 0.5) <= 0.005 and report.achieved <= 0.5
    factorized = [layer for layer in report.layers if layer.groups]
    assert factorized, "at half the MACs some layer must be factorized"
    node_names = {node.name for node in model.graph.node}
    for layer in factorized:
        assert {f"{layer.name}.enc", f"{layer.name}.dec"} <= node_names
        assert layer.name not in node_names
    # MACs counted by the report match the weights of the written model
    weights = {init.name: init for init in model.graph.initializer}
    conv0 = next(layer for layer in factorized if layer.op == "Conv")
    enc = weights[f"{conv0.name}.weight.enc"]
    assert enc.dims[0] == conv0.groups * conv0.rank
    feeds = random_feeds(cnn, shapes={"input": (3, 3, 32, 32)})
    assert run_model(model, feeds)[0].shape == (3, 10)


@pytest.mark.parametrize("method", onnx_alds.METHODS)
@pytest.mark.parametrize("target", ["params", "flops"])
def test_every_method_meets_the_target(method, target):
    # width 32: one rank step of a g = 16 layer is well under 1 % of the model (at width 16 it is not)
    keep = {"keep_params": 0.6} if target == "params" else {"keep_flops": 0.6}
    if method == "damage":  # it measures output damage: it needs calibration inputs
        from onnx_alds.inputs import InputSet

        images = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
        keep["calibration"] = InputSet({"input": images}, source="test images")
    report = onnx_alds.compress(small_cnn(width=32), method=method, **keep).report
    assert report.method == method
    assert 0.99 * 0.6 <= report.achieved <= 0.6 + 1e-9
    if method != "alds":
        assert all(layer.groups in (0, 1) for layer in report.layers)


def test_same_seed_gives_byte_identical_files(cnn, tmp_path):
    first = onnx_alds.compress(cnn, keep_params=0.4, seed=3).model
    second = onnx_alds.compress(cnn, keep_params=0.4, seed=3).model
    a, b = save_model(first, tmp_path / "a.onnx"), save_model(second, tmp_path / "b.onnx")
    assert a.read_bytes() == b.read_bytes()


def test_rank_multiple(cnn):
    report = onnx_alds.compress(small_cnn(width=32), keep_flops=0.5, rank_multiple=16).report
    ranks = [layer.rank for layer in report.layers if layer.groups]
    assert ranks and all(rank % 16 == 0 for rank in ranks)
    assert report.achieved <= 0.5


def test_impossible_target_names_smallest_ratio(cnn):
    with pytest.raises(BudgetError, match=r"smallest reachable ratio is 0\.\d+"):
        onnx_alds.compress(cnn, keep_params=0.001)


@pytest.mark.parametrize("keep", [0.0, 1.5, -0.2, float("nan")])
def test_out_of_range_target(cnn, keep):
    with pytest.raises(BudgetError, match="out of range"):
        onnx_alds.compress(cnn, keep_flops=keep)


def test_keep_everything_changes_nothing(cnn):
    result = onnx_alds.compress(cnn, keep_params=1.0)
    assert all(layer.groups == 0 for layer in result.report.layers)
    feeds = random_feeds(cnn, shapes={"input": (2, 3, 32, 32)})
    assert np.array_equal(run_model(cnn, feeds)[0], run_model(result.model, feeds)[0])


@pytest.mark.parametrize("target", ["keep_params", "keep_flops"])
def test_keep_everything_keeps_exactly_low_rank_weights_dense(target):
    """Exactly low-rank weights tie at error 0 from their true rank up: keep 1.0 factorized every layer (0.59
    kept) and warned that no plan closer to the budget existed."""
    rng = np.random.default_rng(0)
    dims = [512, 2048, 512]
    weights = [((rng.standard_normal((dims[i], 32)) @ rng.standard_normal((32, dims[i + 1])))
                / np.sqrt(32 * dims[i])).astype(np.float32) for i in range(2)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"),
             helper.make_node("MatMul", ["h", "w1"], ["y"], name="fc1")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 512])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 512])],
                       [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    result = onnx_alds.compress(model, rank_multiple=16, **{target: 1.0})
    assert not any(layer.groups for layer in result.report.layers) and result.report.achieved == 1.0
    assert not result.report.warnings
    assert onnx_alds.compress(model, rank_multiple=16, **{target: 0.9}).report.achieved < 0.9  # lossless cuts


def test_transformer_matmul_needs_input_shape_for_flops():
    model = matmul_model(in_features=64, out_features=96, leading=("batch", "seq"))
    with pytest.raises(UnsupportedModelError, match=r"--input-shape x:"):
        onnx_alds.compress(model, keep_flops=0.5)
    result = onnx_alds.compress(model, keep_flops=0.5, input_shapes={"x": (2, 7, 64)})
    assert [node.op_type for node in result.model.graph.node] == ["MatMul", "MatMul"]
    out = run_model(result.model, {"x": np.ones((3, 5, 64), np.float32)})[0]
    assert out.shape == (3, 5, 96)
    assert onnx_alds.compress(model, keep_params=0.5).report.achieved <= 0.5


def _mixed_model() -> onnx.ModelProto:
    """Layers that must be skipped, each for its own reason, and one that can be factorized."""
    rng = np.random.default_rng(0)
    w = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(w(16, 8, 3, 3), "big.weight"), numpy_helper.from_array(w(16, 1, 3, 3), "dw.weight"),
             numpy_helper.from_array(w(16, 16), "shared.weight"), numpy_helper.from_array(w(1, 16), "tiny.weight"),
             numpy_helper.from_array(w(16, 16, 3, 3), "skip.weight")]
    nodes = [
        helper.make_node("Conv", ["x", "big.weight"], ["a"], name="big", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "dw.weight"], ["b"], name="dw", group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", "skip.weight"], ["b2"], name="skipme", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["b2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "shared.weight"], ["g"], name="mm1"),
        helper.make_node("MatMul", ["g", "shared.weight"], ["h"], name="mm2"),
        helper.make_node("MatMul", ["h", "f_dyn"], ["i"], name="dynamic"),
        helper.make_node("Gemm", ["i", "tiny.weight"], ["y"], name="tiny", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8]),
              helper.make_tensor_value_info("f_dyn", TensorProto.FLOAT, [16, 16])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])]
    return make_model(nodes, inputs, outputs, inits)


def test_skip_reasons_are_reported():
    model = _mixed_model()
    report = onnx_alds.compress(model, keep_params=0.9, exclude=["skip*"]).report
    reasons = {layer.name: layer.skip_reason for layer in report.layers}
    assert reasons["big"] is None
    assert "depthwise" in reasons["dw"]
    assert "excluded" in reasons["skipme"]
    assert "shared by 2" in reasons["mm1"] and "shared by 2" in reasons["mm2"]
    assert "not a constant" in reasons["dynamic"]
    assert "would not shrink" in reasons["tiny"]


def test_nothing_to_compress_is_an_error():
    model = _mixed_model()
    with pytest.raises(UnsupportedModelError, match="nothing to compress"):
        onnx_alds.compress(model, keep_params=0.9, exclude=["big", "skip*"])


def test_external_data_model_loads_and_saves(cnn, tmp_path):
    source = tmp_path / "ext.onnx"
    onnx.save_model(cnn, str(source), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    result = onnx_alds.compress(str(source), keep_params=0.5)
    out = save_model(result.model, tmp_path / "out.onnx", protect=[source], external_data=True)
    assert (tmp_path / "out.onnx.data").exists()
    reloaded = load_model(out)
    feeds = random_feeds(cnn, shapes={"input": (1, 3, 32, 32)})
    assert np.allclose(run_model(reloaded, feeds)[0], run_model(result.model, feeds)[0])


def test_analyze_reports_layers_and_floor(cnn):
    report = onnx_alds.analyze(cnn)
    assert [layer.name for layer in report.layers] == ["conv0", "conv1", "conv2", "conv3", "fc"]
    assert report.macs_total == sum(layer.macs for layer in report.layers)
    assert 0 < report.min_keep_flops < 0.2
    conv1 = report.layers[1]
    assert conv1.candidate_groups[0] == 1 and conv1.errors_at_rank_fraction["0.5"] < conv1.errors_at_rank_fraction["0.25"]


def test_float16_weights_keep_their_type():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 16, 3, 3)).astype(np.float16)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 16, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 32, 8, 8])],
                       [numpy_helper.from_array(weight, "w")])
    result = onnx_alds.compress(model, keep_params=0.5)
    types = {init.name: init.data_type for init in result.model.graph.initializer}
    assert types == {"w.enc": TensorProto.FLOAT16, "w.dec": TensorProto.FLOAT16}
    onnx.checker.check_model(result.model, full_check=True)
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float16)
    assert run_model(result.model, {"x": x})[0].dtype == np.float16


def test_model_over_the_protobuf_limit_is_saved_as_external_data(cnn, tmp_path, monkeypatch):
    """The 2 GB switch, exercised with a lowered limit (a real 2 GB model is too heavy for CI)."""
    import onnx_alds.model_io as model_io

    result = onnx_alds.compress(cnn, keep_params=0.5)
    monkeypatch.setattr(model_io, "_PROTOBUF_LIMIT", 10_000)
    out = save_model(result.model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > 10_000
    assert out.stat().st_size < 10_000
    feeds = random_feeds(cnn, shapes={"input": (1, 3, 32, 32)})
    assert np.array_equal(run_model(load_model(out), feeds)[0], run_model(result.model, feeds)[0])
    import os
    import stat

    mask = os.umask(0o022)
    try:  # the weights file is as readable as the model (it was 0600: a serving user could not read it)
        save_model(result.model, tmp_path / "again.onnx")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "again.onnx.data").stat().st_mode) == 0o644


def test_a_one_file_model_written_over_an_external_one_removes_its_old_weights(cnn, tmp_path, monkeypatch):
    """The first run's '<out>.data' (possibly GBs) stayed beside a model that no longer read it; a '.data'
    file the old model did not reference is the user's and stays, and so does that of a model onnx-alds did not
    write."""
    import onnx_alds.model_io as model_io
    from onnx_alds.errors import OutputPathError

    result = onnx_alds.compress(cnn, keep_params=0.5)
    with monkeypatch.context() as patch:
        patch.setattr(model_io, "_PROTOBUF_LIMIT", 10_000)
        save_model(result.model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").exists()
    save_model(result.model, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx.data").exists()
    (tmp_path / "out.onnx.data").write_bytes(b"the user's own file")
    save_model(result.model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").read_bytes() == b"the user's own file"
    # a model onnx-alds did not write (no onnx_alds metadata): its data file is the user's, which other models
    # may read from elsewhere (a parent folder, a name without .onnx): it was deleted; the model is the user's
    # too, and is not written over at all
    (tmp_path / "out.onnx.data").unlink()
    onnx.save(cnn, str(tmp_path / "out.onnx"), save_as_external_data=True, location="out.onnx.data",
              size_threshold=0)
    kept = (tmp_path / "out.onnx.data").read_bytes(), (tmp_path / "out.onnx").read_bytes()
    with pytest.raises(OutputPathError, match="existing ONNX model that is not an onnx-alds output"):
        save_model(result.model, tmp_path / "out.onnx")
    assert ((tmp_path / "out.onnx.data").read_bytes(), (tmp_path / "out.onnx").read_bytes()) == kept


@pytest.mark.parametrize("offset", ["-4", "abc"])
def test_broken_external_data_entries_are_one_error(cnn, tmp_path, offset):
    """A negative or non-numeric external data offset was a ValueError traceback in every command."""
    from onnx_alds.errors import ModelLoadError

    onnx.save(cnn, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.bin", size_threshold=0)
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    entry = next(e for t in model.graph.initializer for e in t.external_data if e.key == "offset")
    entry.value = offset
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelLoadError, match="external data"):
        load_model(tmp_path / "m.onnx")


def test_exclude_pattern_matching_nothing_is_an_error():
    from onnx_alds.errors import InputDataError

    with pytest.raises(InputDataError, match=r"--exclude 'conv_typo\*' matches no Conv/Gemm/MatMul"):
        onnx_alds.compress(small_cnn(), keep_params=0.9, exclude=["conv_typo*"])


def test_input_shape_given_twice_is_an_error():
    from onnx_alds.errors import InputDataError
    from onnx_alds.model_io import parse_input_shapes

    assert parse_input_shapes(["x:1x3", "x:1x3"]) == {"x": (1, 3)}
    with pytest.raises(InputDataError, match="gives input 'x' twice"):
        parse_input_shapes(["x:1x3", "x:2x3"])


def test_deep_cut_warning_reads_an_error_not_the_uniform_baselines_rank_fraction():
    """--method svd measures 1 - r/full (the share of rank cut), which says nothing of the layer error: an
    exactly low-rank layer cut to its rank has error 0 and a rank fraction near 1."""
    from conftest import small_cnn

    model = small_cnn(width=32)
    frobenius = onnx_alds.compress(model, keep_params=0.2, error_measure="frobenius", rank_multiple=1).report
    assert frobenius.max_error > 0.5 and any("the plan cuts deep" in w for w in frobenius.warnings)
    uniform = onnx_alds.compress(model, keep_params=0.2, method="svd", rank_multiple=1).report
    assert uniform.error_measure == "rank-fraction" and uniform.max_error > 0.5
    assert not any("the plan cuts deep" in w for w in uniform.warnings)  # (its outputs may have moved far)


def test_exclude_of_a_name_with_glob_characters_means_that_name():
    """'layer[0]' copied from a report names the node 'layer[0]'; as a glob it matched 'layer0' instead,
    and the named layer was factorized."""
    from conftest import small_cnn

    model = small_cnn(width=32)
    names = [node.name for node in model.graph.node if node.op_type == "Conv"]
    model.graph.node[[n.name for n in model.graph.node].index(names[1])].name = "layer[0]"
    model.graph.node[[n.name for n in model.graph.node].index(names[2])].name = "layer0"
    rows = {row.name: row for row in onnx_alds.compress(model, keep_params=0.5, exclude=["layer[0]"],
                                                         rank_multiple=1).report.layers}
    assert rows["layer[0]"].skip_reason == "excluded by the user (--exclude)"
    assert rows["layer0"].skip_reason is None
    glob = {row.name: row for row in onnx_alds.compress(model, keep_params=0.5, exclude=["layer?"],
                                                        rank_multiple=1).report.layers}
    assert glob["layer0"].skip_reason == "excluded by the user (--exclude)" and glob["layer[0]"].skip_reason is None


def test_unreachable_budget_names_the_reason_that_holds_the_most_first():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(8)
    def weight(name, rows, cols):
        return numpy_helper.from_array(rng.standard_normal((rows, cols)).astype(np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "small"], ["a"], name="small_layer"),
             helper.make_node("MatMul", ["a", "shared"], ["b"], name="first_use"),
             helper.make_node("MatMul", ["b", "shared"], ["c"], name="second_use"),
             helper.make_node("MatMul", ["c", "free"], ["y"], name="free_layer")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                              [weight("small", 8, 128), weight("shared", 128, 128), weight("free", 128, 64)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(BudgetError, match=r"layers left dense hold \d+% of them \(weight is shared by 2 uses; "
                                          r"excluded by the user"):
        onnx_alds.compress(model, keep_params=0.3, exclude=["small_layer"], rank_multiple=1)


def test_generated_node_names_never_take_a_name_the_user_gave():
    """A nameless MatMul was called 'MatMul_0' although a later node had that name; the user's node was
    renamed in the written model and --exclude MatMul_0 left the wrong layer dense."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.layers import node_names

    rng = np.random.default_rng(9)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="MatMul_0"),
             helper.make_node("Identity", ["y"], ["z"], name="dup"), helper.make_node("Identity", ["z"], ["out"],
                                                                                    name="dup")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 64])],
                              [numpy_helper.from_array(rng.standard_normal((64, 256)).astype(np.float32), "w1"),
                               numpy_helper.from_array(rng.standard_normal((256, 64)).astype(np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert node_names(model) == ["MatMul_0_1", "Relu_1", "MatMul_0", "dup", "dup_1"]
    del model.graph.node[3:]  # ONNX Runtime refuses two nodes of one name
    model.graph.output[0].name = "y"
    result = onnx_alds.compress(model, keep_params=0.7, exclude=["MatMul_0"], rank_multiple=8)
    rows = {row.name: row for row in result.report.layers}
    assert rows["MatMul_0"].skip_reason == "excluded by the user (--exclude)" and rows["MatMul_0_1"].groups
    assert "MatMul_0" in {node.name for node in result.model.graph.node}


def test_the_floor_analyze_prints_is_one_compress_accepts():
    """analyze rounded the smallest reachable ratio to nearest (0.44184... printed 0.4418), and compress
    refused the figure a user copied from it."""
    import re

    from conftest import small_cnn

    model = small_cnn(width=16)
    text = onnx_alds.analyze(model, rank_multiple=16).format()
    for flag, keyword in (("params", "keep_params"), ("flops", "keep_flops")):
        floor = float(re.search(rf"smallest reachable --keep-{flag} ([0-9.]+)", text).group(1))
        assert onnx_alds.compress(model, rank_multiple=16, **{keyword: floor}).report.achieved <= floor


def test_analyze_marks_a_layer_no_aligned_rank_shrinks_as_compress_does():
    """A 32x16 MatMul at rank multiple 16 (rank 16 takes 768 weights, more than its 512) was listed as
    factorizable, counted in the factorizable totals, while compress refused it as unreachable."""
    model = matmul_model(in_features=32, out_features=16, leading=(4,))
    row = onnx_alds.analyze(model, rank_multiple=16).layers[0]
    assert row.candidate_groups == () and "rank 16 (the rank multiple) would take 768 weights" in row.skip_reason
    assert row.errors_at_rank_fraction  # the spectrum is still shown
    report = onnx_alds.analyze(model, rank_multiple=16)
    assert report.params_compressible == 0 and report.min_keep_params == 1.0
    with pytest.raises(BudgetError):
        onnx_alds.compress(model, keep_params=0.9, rank_multiple=16)
    shrinkable = onnx_alds.analyze(model, rank_multiple=4)
    assert shrinkable.layers[0].candidate_groups == (1,) and shrinkable.params_compressible == 512


def test_analyze_shows_no_groups_for_a_product_of_constants():
    weights = [numpy_helper.from_array(np.ones((4, 8), np.float32), "U"),
               numpy_helper.from_array(np.ones((8, 6), np.float32), "V")]
    nodes = [helper.make_node("MatMul", ["U", "V"], ["W"], name="uv"),
             helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], weights)
    rows = {row.name: row for row in onnx_alds.analyze(model, rank_multiple=1).layers}
    assert rows["uv"].candidate_groups == () and rows["uv"].skip_reason


def test_a_product_with_a_run_time_tensor_shows_its_macs():
    """An attention-score MatMul (q @ qᵀ) was listed with MACs 0 while its MACs were in the total."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["q"], name="proj"),
             helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "qt"], ["s"], name="scores")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 64])],
                       [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 32, 32])], [weight])
    report = onnx_alds.analyze(model)
    rows = {row.name: row for row in report.layers}
    assert rows["scores"].macs == 32 * 64 * 32 and rows["scores"].params == 0
    assert sum(row.macs for row in report.layers) == report.macs_total


def test_a_hard_linked_data_file_is_refused_with_the_fix(tmp_path):
    """A data file with a second hard link (cp -l, rsync --link-dest, link caches): onnx refuses to read it and
    every command said "check the data files", no fix."""
    import os

    from onnx_alds.errors import ModelLoadError

    onnx.save(small_cnn(), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    os.link(tmp_path / "m.onnx.data", tmp_path / "backup.data")
    for call in (lambda: load_model(tmp_path / "m.onnx"), lambda: onnx_alds.analyze(str(tmp_path / "m.onnx"))):
        with pytest.raises(ModelLoadError, match=r"file 'm.onnx.data' \(tensor '.*'\) has 2 hard links, .*give it one "
                                                 r"link, e.g. cp '.*m.onnx.data' '.*m.onnx.data.copy' && mv"):
            call()


def test_a_symlinked_data_file_is_refused_with_the_fix(cnn, tmp_path):
    """A Hugging Face cache snapshot links its data file; onnx refuses to read through links, and the
    commands said so in three different ways, none naming a fix (analyze even went on)."""
    import os

    from onnx_alds.errors import ModelLoadError

    (tmp_path / "blobs").mkdir()
    (tmp_path / "snap").mkdir()
    onnx.save(cnn, str(tmp_path / "blobs" / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    os.replace(tmp_path / "blobs" / "m.onnx", tmp_path / "snap" / "m.onnx")
    os.symlink(tmp_path / "blobs" / "m.onnx.data", tmp_path / "snap" / "m.onnx.data")
    for call in (lambda: load_model(tmp_path / "snap" / "m.onnx"),
                 lambda: onnx_alds.analyze(str(tmp_path / "snap" / "m.onnx"))):
        with pytest.raises(ModelLoadError, match=r"is or goes through a symbolic link, .*\(cp -L\)"):
            call()
    # the data file in a linked folder (location 'w/m.data', 'w' a link): onnx's own message before
    (tmp_path / "real").mkdir()
    (tmp_path / "sub" / "w").mkdir(parents=True)
    onnx.save(small_cnn(), str(tmp_path / "sub" / "m.onnx"), save_as_external_data=True, location="w/m.data",
              size_threshold=0)  # (the fixture's tensors went external above)
    os.replace(tmp_path / "sub" / "w" / "m.data", tmp_path / "real" / "m.data")
    (tmp_path / "sub" / "w").rmdir()
    os.symlink(tmp_path / "real", tmp_path / "sub" / "w")
    with pytest.raises(ModelLoadError, match=r"'w/m.data' .* is or goes through a symbolic link"):
        load_model(tmp_path / "sub" / "m.onnx")
    # a folder where the data file should be: it was called missing
    os.remove(tmp_path / "sub" / "w")
    (tmp_path / "sub" / "w" / "m.data").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"'w/m.data' of 'm.onnx' is a folder, not a file"):
        load_model(tmp_path / "sub" / "m.onnx")


def test_external_data_without_length_entries_reads_each_tensor_alone(cnn, tmp_path):
    """``length`` is optional in external data entries: onnx's loader then read from the offset to the end of
    the file, so the first tensor got the whole file and ONNX Runtime refused the model."""
    from onnx_alds.model_io import open_model

    expected = {t.name: numpy_helper.to_array(t) for t in cnn.graph.initializer}
    onnx.save(onnx.ModelProto.FromString(cnn.SerializeToString()), str(tmp_path / "m.onnx"),
              save_as_external_data=True, location="w.bin", size_threshold=0)  # (onnx.save moves the data out)
    stripped = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for tensor in stripped.graph.initializer:
        kept = [(e.key, e.value) for e in tensor.external_data if e.key != "length"]
        del tensor.external_data[:]
        for key, value in kept:
            tensor.external_data.add(key=key, value=value)
    (tmp_path / "m.onnx").write_bytes(stripped.SerializeToString())
    loaded = {t.name: numpy_helper.to_array(t) for t in load_model(tmp_path / "m.onnx").graph.initializer}
    assert all(np.array_equal(loaded[name], value) for name, value in expected.items())
    opened = open_model(str(tmp_path / "m.onnx"))
    light = {t.name: numpy_helper.to_array(opened.store.load(t)) for t in opened.model.graph.initializer}
    assert all(np.array_equal(light[name], value) for name, value in expected.items())
    onnx_alds.compress(str(tmp_path / "m.onnx"), keep_params=0.5)


def test_api_misuse_is_one_clear_error(cnn):
    """Library callers got raw numpy/attribute errors, a float32 keep refused as "0.5 is out of range", a
    batch of 0 reported as met at 0.0, and one string taken as a list of its characters."""
    from onnx_alds.errors import InputDataError, OnnxAldsError
    from onnx_alds.validate import validate

    before = cnn.SerializeToString()
    assert onnx_alds.compress(cnn, keep_params=np.float32(0.5)).report.achieved <= 0.5
    cases = [(dict(keep_params="0.5"), "is a string"),
             (dict(keep_flops=0.5, input_shapes={"input": [0, 3, 32, 32]}), "every dim must be at least 1"),
             (dict(keep_flops=0.5, input_shapes={"input": [-1, 3, 32, 32]}), "every dim must be at least 1"),
             (dict(keep_params=0.5, exclude="conv0"), "is one string; give a list"),
             (dict(keep_params=0.5, keep_dense=["conv0"]), "keep_dense maps node names"),
             (dict(keep_params=0.5, rank_multiple=2.5), "rank_multiple=2.5"),
             (dict(keep_params=0.5, calibration={"input": np.zeros((2, 3, 32, 32), np.float32)}),
              "calibration is a dict; give an onnx_alds.inputs.InputSet")]
    for keywords, message in cases:
        with pytest.raises(OnnxAldsError, match=re.escape(message)):
            onnx_alds.compress(cnn, **keywords)
    with pytest.raises(InputDataError, match="inputs is a dict"):
        validate(cnn, cnn, inputs={"input": np.zeros((2, 3, 32, 32), np.float32)})
    assert cnn.SerializeToString() == before


def test_api_values_of_the_wrong_type_are_one_clear_error(cnn):
    """Values of the wrong type escaped as raw TypeError/AttributeError/ValueError from inside numpy, fnmatch
    or dataclasses, and non-integers were truncated (a dim of 32.5 planned at 32, both_factors=1.5 ran one
    round)."""
    from onnx_alds.errors import OnnxAldsError
    from onnx_alds.inputs import InputSet
    from onnx_alds.options import DataAwareOptions, SearchOptions, SpeedOptions
    from onnx_alds.validate import validate

    x = np.zeros((4, 3, 32, 32), np.float32)
    calibration = InputSet({"input": x})
    cases = [(dict(keep_flops=0.5, input_shapes={"input": "1x3x32x32"}), "give a sequence of integers"),
             (dict(keep_flops=0.5, input_shapes=["input:1x3x32x32"]), "give a dict of input name to dims"),
             (dict(keep_flops=0.5, input_shapes={"input": (1, 3, 32.5, 32)}), "give a sequence of integers"),
             (dict(keep_flops=0.5, input_shapes={"input": (1, 3, None, 32)}), "give a sequence of integers"),
             (dict(keep_flops=0.5, input_shapes={"input": (1, 3, 2**63, 32)}), "has a dim above 2147483647"),
             (dict(keep_params=0.5, exclude=[1]), "give a list of node or weight names"),
             (dict(budget=("params", 0.5)), "give an onnx_alds.options.Budget"),
             (dict(keep_params=0.5, search={"rank_multiple": 16}), "give an onnx_alds.options.SearchOptions"),
             (dict(keep_params=0.5, calibration=calibration, both_factors=1.5), "both_factors=1.5: give an integer"),
             (dict(keep_params=0.5, calibration=calibration, calibration_batch_size="4"), "batch_size='4'")]
    for keywords, message in cases:
        with pytest.raises(OnnxAldsError, match=re.escape(message)):
            onnx_alds.compress(cnn, **keywords)
    for make, message in ((lambda: InputSet({"input": x.tolist()}), "input 'input' is a list; give numpy arrays"),
                          (lambda: SpeedOptions(threads="1"), "threads='1': give an integer"),
                          (lambda: SpeedOptions(batch=1.5), "batch=1.5: give an integer"),
                          (lambda: DataAwareOptions(refit="yes"), "refit='yes': give True or False"),
                          (lambda: SearchOptions(exclude=5), "give a list of node or weight names"),
                          (lambda: validate(cnn, cnn, inputs=calibration, rtol="1e-3"), "rtol='1e-3': give a number")):
        with pytest.raises(OnnxAldsError, match=re.escape(message)):
            make()
    assert SearchOptions(exclude=None).exclude == () and SearchOptions(exclude=(p for p in ["a"])).exclude == ("a",)
    speed = SpeedOptions(threads=np.int64(1), batch=np.int64(2), runs=np.int64(3))  # numpy ints: accepted, as ints
    assert (type(speed.threads), type(speed.batch), type(speed.runs)) == (int, int, int)
    assert type(DataAwareOptions(calibration=calibration, batch_size=np.int32(4)).batch_size) is int
    assert onnx_alds.compress(cnn, keep_params=0.5, exclude=None).report.achieved <= 0.5


def test_a_misspelt_keep_dense_name_is_refused(cnn):
    """keep_dense={'Conv0': ...} (the node is 'conv0') was ignored without a word: the layer the user meant to
    keep was factorized (exclude refuses such a name)."""
    from onnx_alds.errors import InputDataError

    name = onnx_alds.analyze(cnn).layers[0].name
    with pytest.raises(InputDataError, match=f"keep_dense names '{name.upper()}', which is no Conv/Gemm/MatMul node"):
        onnx_alds.compress(cnn, keep_params=0.5, keep_dense={name.upper(): "head"})
    kept = onnx_alds.compress(cnn, keep_params=0.5, keep_dense={name: "head"}).report
    layer = next(layer for layer in kept.layers if layer.name == name)
    assert layer.groups == 0 and layer.skip_reason == "head"


def test_api_input_sets_are_checked_as_an_npz_is(cnn, tmp_path):
    """An InputSet given to the API was checked less than the same arrays in an .npz: a stray array was ignored
    and float64 arrays failed inside ONNX Runtime, where the .npz path refuses the one and casts the other."""
    from onnx_alds.errors import InputDataError
    from onnx_alds.inputs import InputSet, load_inputs
    from onnx_alds.validate import validate

    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32))
    with pytest.raises(InputDataError, match="the calibration InputSet has array 'mask', which is not a graph input"):
        onnx_alds.compress(cnn, keep_params=0.5, calibration=InputSet({"input": x.astype(np.float32), "mask": x}))
    with pytest.raises(InputDataError, match="the validation InputSet has rank 3|array 'input' in the validation "
                                             "InputSet has rank 3"):
        validate(cnn, cnn, inputs=InputSet({"input": x[:, 0]}))
    cast = onnx_alds.compress(cnn, keep_params=0.5, calibration=InputSet({"input": x}, source="mine"))
    np.savez(tmp_path / "c.npz", input=x)
    from_file = onnx_alds.compress(cnn, keep_params=0.5, calibration=load_inputs(cnn, npz=tmp_path / "c.npz"))
    assert cast.model.SerializeToString() == from_file.model.SerializeToString()
    assert "'input' float64 cast to float32" in cast.report.calibration
    unnamed = onnx_alds.compress(cnn, keep_params=0.5, calibration=InputSet({"input": x.astype(np.float32)}))
    assert unnamed.report.calibration == "arrays given in Python (8 samples)"  # was "" (printed "calibration: )")


def test_plan_edits_are_checked_when_made():
    """with_layer took option='factorised' (applied as dense without a word) and rank='8'; an unknown layer was a
    bare KeyError, and apply_plan given a path failed on a str attribute."""
    from onnx_alds.plan import PlanError, apply_plan, make_plan

    model = small_cnn(width=16)
    plan = make_plan(model, keep_flops=0.5)
    name = next(layer.name for layer in plan.layers if layer.option == "factorized")
    for changes, message in ((dict(option="factorised"), 'option "factorised" is not one of'),
                             (dict(rank="8"), "expected an integer")):
        with pytest.raises(PlanError, match=message):
            plan.with_layer(name, **changes)
    with pytest.raises(PlanError, match="the plan has no layer 'nosuch'"):
        plan.with_layer("nosuch", option="dense")
    with pytest.raises(KeyError):  # still a look-up by name
        plan.layer("nosuch")
    with pytest.raises(PlanError, match="plan is a str; give a Plan"):
        apply_plan(model, "plan.json")
    assert plan.with_layer(name, option="dense").layer(name).option == "dense"


@pytest.mark.parametrize("stored", ["float16", "int8", "int4"])
def test_weight_stored_narrower_than_computed_is_noted(stored):
    """A mixed-precision export (float16 initializer → Cast → float32 MatMul): the factors are stored as
    float32, so halving the weight count did not shrink the file; the report said nothing. An int8 or int4
    weight Cast to float grew the file (int4: 2 kB to 6 kB) with no word."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((64, 8)) @ rng.standard_normal((8, 64)) / 8
    element, opset = {"float16": (TensorProto.FLOAT16, 17), "int8": (TensorProto.INT8, 17),
                      "int4": (TensorProto.INT4, 21)}[stored]
    if stored == "float16":
        weight = numpy_helper.from_array(values.astype(np.float16), "W16")
    else:
        bound = 7 if stored == "int4" else 127
        ints = np.clip(np.round(values / np.abs(values).max() * bound), -bound, bound).astype(int)
        weight = helper.make_tensor("W16", element, list(ints.shape), ints.reshape(-1).tolist())
    graph = helper.make_graph(
        [helper.make_node("Cast", ["W16"], ["W"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
         helper.make_node("MatMul", ["y", "V"], ["z"], name="plain")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 64])],
        [weight, numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "V")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    result = onnx_alds.compress(model, keep_params=0.75, rank_multiple=8, exclude=["plain"])
    note = [n for n in result.report.notes if f"stored as {stored} and Cast to the float" in n]
    assert note and note[0].startswith("1 factorized layer reads a weight") and "'mm'" in note[0]
    ratio = {"float16": 2, "int8": 4, "int4": 8}[stored]
    assert f"{ratio}x the bytes per weight" in note[0] and f"under 1/{ratio}" in note[0]
    # (keep 0.75 of 64·64 is over 1/ratio of it: the layer's bytes grow, which a warning says, not a note alone)
    row = next(row for row in result.report.layers if row.name == "mm")
    grows = row.groups and row.params_after * 32 > row.params_before * {"float16": 16, "int8": 8, "int4": 4}[stored]
    warned = [w for w in result.report.warnings if "now takes more bytes than the" in w]
    assert bool(warned) == bool(grows) and (not warned or "keep it dense (--exclude)" in warned[0]), (row, warned)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    assert run_model(result.model, {"x": x})[0].shape == (4, 64)
    plain = onnx_alds.compress(small_cnn(), keep_params=0.5, rank_multiple=1)
    assert not [n for n in plain.report.notes if "Cast to the" in n]


def test_products_of_run_time_tensors_keep_their_macs_in_the_report():
    """Attention scores (``q @ kᵀ``, both at run time) are counted in the MACs and left as they are, but
    the report counted them as 0 after compression: achieved 0.42 printed for a true 0.495, with a
    warning that the model was cut more than asked."""
    rng = np.random.default_rng(0)
    tokens, dim, heads = 32, 64, 4
    nodes = [helper.make_node("MatMul", ["x", "W"], ["q"], name="proj"),
             helper.make_node("Reshape", ["q", "shape"], ["q4"], name="rs"),
             helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3], name="tr1"),
             helper.make_node("Transpose", ["q4"], ["kh"], perm=[0, 2, 3, 1], name="tr2"),
             helper.make_node("MatMul", ["qh", "kh"], ["y"], name="scores")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, heads, tokens, tokens])],
        [numpy_helper.from_array(rng.standard_normal((dim, dim)).astype(np.float32), "W"),
         numpy_helper.from_array(np.array([1, tokens, heads, dim // heads], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = onnx_alds.compress(model, keep_flops=0.75, rank_multiple=1).report
    scores = next(row for row in report.layers if row.name == "scores")
    assert scores.macs_after == scores.macs_before == tokens * tokens * dim
    rank = next(row.rank for row in report.layers if row.name == "proj")
    assert report.macs_after == 2 * tokens * dim * rank + tokens * tokens * dim
    assert report.achieved == pytest.approx(report.macs_after / report.macs_before) and report.achieved <= 0.75
    assert not any("below the requested" in w for w in report.warnings)


def test_analyze_names_the_input_still_dynamic():
    """With --input-shape for one of two dynamic inputs, analyze said 'input shapes are dynamic ... (give
    --input-shape to count them)' without naming the input still missing."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"], name="mm"), helper.make_node("Add", ["b", "b"], ["z"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 32, 16]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "T", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", "T", 16])],
        [numpy_helper.from_array(np.ones((16, 8), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    notes = onnx_alds.analyze(model, input_shapes={"a": (1, 32, 16)}).notes
    assert ("MACs not counted: input 'b' [N, T, 16] has dynamic dims; give them with --input-shape b:1xTx16 (for "
            "T: the size you run the model at, a number)") in notes  # (the T as such is refused by the parser)
    from onnx_alds.errors import UnsupportedModelError
    from onnx_alds.model_io import resolve_input_shapes

    model.graph.input[1].name = "feat x"  # a name with a space: the suggestion is quoted for the shell
    with pytest.raises(UnsupportedModelError, match="--input-shape 'feat x:1xTx16'"):
        resolve_input_shapes(model, {"a": (1, 32, 16)}, batch_default=1)
    # an unnamed dim is D, not N (the batch dim's usual name: "x:1xNx16 (each N: ...)" read as the batch)
    unnamed = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                      ["N", None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]))
    with pytest.raises(UnsupportedModelError, match=r"x:NxDx16 \(for N, D: the size you run the model at"):
        resolve_input_shapes(unnamed, {}, batch_default=None)
    # a dim named with the separator x or X (torch's legacy "x_dynamic_axes_2") is D: "1xx_dynamic_axes_2x16" was
    # unreadable and its placeholders came out as ", _dynamic_a, es_2"; several such dims are D1, D2, ... (one "D"
    # read as one size), and never a dim's own name
    unnamed.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "x_dynamic_axes_2"
    with pytest.raises(UnsupportedModelError, match=r"x:1xDx16 \(for D: the size you run the model at"):
        resolve_input_shapes(unnamed, {}, batch_default=1)
    wide = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, ["N", "context", "MAX_LEN", None, "D", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]))
    with pytest.raises(UnsupportedModelError, match=r"x:1xD1xD2xD3xDx16 \(for D1, D2, D3, D: the size you run"):
        resolve_input_shapes(wide, {}, batch_default=1)


def test_a_rank_multiple_no_layer_can_use_is_refused_before_calibration(monkeypatch):
    """The refusal came after the calibration pass (a 6400-wide layer's moment: 22 s and 1.4 GB) although
    the shapes alone decide it."""
    import onnx_alds.calibrate as calibrate
    from onnx_alds.inputs import random_inputs

    model = matmul_model(in_features=24, out_features=8, leading=("N",))
    calibration = random_inputs(model, 16)

    def no_pass(*args, **kwargs):
        raise AssertionError("calibration ran before the shapes were checked")

    monkeypatch.setattr(calibrate, "collect_statistics", no_pass)
    with pytest.raises(BudgetError, match=r"--rank-multiple 16 leaves no layer a rank that would shrink it \(the "
                                          r"largest rank that shrinks the one factorizable layer is 5\)"):
        onnx_alds.compress(model, keep_params=0.5, rank_multiple=16, calibration=calibration)


def test_a_weight_from_constant_value_floats_is_folded_like_one_from_value():
    """``Constant(value_floats) → Reshape(Constant(value_ints)) → MatMul`` was refused as 'computed from
    constants by Constant nodes, which onnx-alds does not fold', while the same weight as ``Constant(value)``
    was compressed. Exactly rank 4: the factorized model reproduces the original."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((32, 4)) @ rng.standard_normal((4, 24)) / 4).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["flat"], value_floats=weight.reshape(-1).tolist()),
             helper.make_node("Constant", [], ["shape"], value_ints=[32, 24]),
             helper.make_node("Reshape", ["flat", "shape"], ["W"]),
             helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 24])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = onnx_alds.compress(model, keep_params=0.6, rank_multiple=1)
    row = next(r for r in result.report.layers if r.name == "mm")
    assert row.groups == 1 and row.rank >= 4 and row.params_before == 32 * 24
    x = rng.standard_normal((5, 32)).astype(np.float32)
    np.testing.assert_allclose(run_model(result.model, {"x": x})[0], x @ weight, rtol=1e-4, atol=1e-5)
    assert not [n for n in result.model.graph.node if n.op_type == "Constant"]  # the folded chain is gone


def test_a_weight_the_model_also_returns_is_named_for_it():
    """A weight that is also a graph output stays dense, but the reason read 'weight is shared by 2 uses'
    with one node reading it."""
    from onnx_alds.errors import UnsupportedModelError

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8]),
                               helper.make_tensor_value_info("W", TensorProto.FLOAT, [16, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match=r"weight is also a graph output"):
        onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)


def test_an_overridable_weight_behind_a_transpose_is_named_for_it():
    """An initializer listed as a graph input (IR 4 on: callers may override it) read through a Transpose
    stays dense, but the reason read 'not a constant (computed at run time by a Transpose node)'."""
    from onnx_alds.errors import UnsupportedModelError

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((48, 64)).astype(np.float32), "Wt")
    graph = helper.make_graph([helper.make_node("Transpose", ["Wt"], ["W"], perm=[1, 0]),
                               helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 48]),
                               helper.make_tensor_value_info("Wt", TensorProto.FLOAT, [48, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    with pytest.raises(UnsupportedModelError, match=r"weight is also a graph input \(callers may override it\)"):
        onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)


def test_a_budget_finer_than_the_printed_digits_is_shown_as_asked():
    """--keep-params 0.99999 was printed as 'target: keep params 1.0000'."""
    result = onnx_alds.compress(small_cnn(), keep_params=0.99999, rank_multiple=1)
    assert "target: keep params 1.0000 (0.99999 asked)" in result.report.format()
    finer = onnx_alds.compress(small_cnn(), keep_params=0.9999999, rank_multiple=1).report.format()
    assert "(0.9999999 asked)" in finer  # was "(1 asked)"
    assert "asked" not in onnx_alds.compress(small_cnn(), keep_params=0.5, rank_multiple=1).report.format()


def test_a_dead_branch_is_left_out_of_the_layers_totals_and_plan():
    """A Gemm whose output reaches no graph output was listed as factorized (its MACs in the total, its error the
    max error, part of the budget), while the written model dropped it: the report's MACs, layer count and the
    plan's promised weights disagreed with the file."""
    from onnx_alds.layers import iter_total_params
    from onnx_alds.plan import make_plan

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 100)).astype(np.float32), "w_dead")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "w1"], ["y"], name="fc1"),
             helper.make_node("MatMul", ["x", "w_dead"], ["d"], name="dead_fc"),
             helper.make_node("Relu", ["d"], ["dead_relu_out"], name="dead_relu")]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    result = onnx_alds.compress(model, keep_params=0.6, rank_multiple=1)
    report = result.report
    assert [layer.name for layer in report.layers] == ["fc0", "fc1"]
    assert any(note.startswith("2 nodes reach no graph output (first: 'dead_fc'; 3200 weights)")
               for note in report.notes), report.notes
    assert report.params_before == 2 * 64 * 32 and report.params_after == sum(iter_total_params(result.model))
    assert report.macs_before == 2 * 64 * 32
    assert make_plan(model, keep_params=0.6, rank_multiple=1).totals["params_after"] == report.params_after
    assert model.graph.node[3].name == "dead_fc"  # the caller's model is not changed


def test_dead_nodes_inside_a_branch_and_names_of_dead_nodes():
    """A dead MatMul inside an If branch was counted in the totals and given budget (its outer weight too),
    then dropped from the file; --exclude or keep_dense naming a dead node was refused as matching nothing; a
    model whose only layer is dead was said to have no Conv/Gemm/MatMul."""
    from onnx_alds.errors import UnsupportedModelError

    rng = np.random.default_rng(1)
    branch = lambda name, extra: helper.make_graph(  # noqa: E731
        [helper.make_node("MatMul", ["a", f"{name}_w"], [f"{name}_y"], name=f"{name}_mm")] + extra, name, [],
        [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), f"{name}_w")])
    dead_in_branch = [helper.make_node("MatMul", ["a", "outer_dead_w"], ["unused"], name="then_dead_mm")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch("then", dead_in_branch),
                              else_branch=branch("else", []))]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((32, 512)).astype(np.float32), "outer_dead_w"),
         numpy_helper.from_array(np.array(True), "cond")]), opset_imports=[helper.make_opsetid("", 17)])
    report = onnx_alds.compress(model, keep_params=0.9, rank_multiple=1).report
    assert "then_dead_mm" not in [layer.name for layer in report.layers]
    assert report.params_before == 3 * 32 * 32 + 1
    assert onnx_alds.compress(model, keep_params=0.9, rank_multiple=1, exclude=["then_dead*"]).report
    assert onnx_alds.compress(model, keep_params=0.9, rank_multiple=1, keep_dense={"then_dead_mm": "x"}).report
    only_dead = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["d"], name="dead_mm"), helper.make_node("Relu", ["x"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w")]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="no Conv/Gemm/MatMul node reaches a graph output .*'dead_mm'"):
        onnx_alds.compress(only_dead, keep_params=0.5)


def test_a_model_over_its_budget_is_blamed_on_a_plan_only_when_a_plan_was_applied():
    """Plain compress (no plan) said "above the plan's requested 0.6 ... (entries or the budget edited)"."""
    from onnx_alds.api import budget_gap

    plain, applied = budget_gap(0.7, 0.6, 16, "rank")[1], budget_gap(0.7, 0.6, 16, "rank", applied=True)[0]
    assert "plan" not in plain and "the written model holds more than the allocation counted" in plain
    assert "the plan's requested 0.6" in applied and "edited" in applied


def test_exclude_matches_a_weight_as_stored_behind_a_transpose():
    """tf2onnx stores conv kernels as HWIO initializers and Transposes them to OIHW: the initializer's name
    (what a viewer shows as the weight) was "matches no Conv/Gemm/MatMul node or weight name"."""
    model = small_cnn(width=32)
    conv = next(node for node in model.graph.node if node.op_type == "Conv" and node.name)
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    hwio = numpy_helper.to_array(init).transpose(2, 3, 1, 0)
    model.graph.initializer.remove(init)
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(hwio), "kernel_hwio:0"))
    model.graph.node.insert(0, helper.make_node("Transpose", ["kernel_hwio:0"], [conv.input[1]],
                                                name="kernel_to_oihw", perm=[3, 2, 0, 1]))
    rows = {row.name: row for row in onnx_alds.compress(model, keep_params=0.6, exclude=["kernel_hwio:0"],
                                                         rank_multiple=1).report.layers}
    assert rows[conv.name].skip_reason == "excluded by the user (--exclude)"
    assert sum(1 for row in rows.values() if row.groups) >= 2


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_before_opset_11_stays_exact_and_within_the_weight_budget(trans_a, trans_b):
    """Before opset 11 a Gemm needs C: the encoder got a zero bias of length r per layer, which the budget did
    not count (--keep-params 0.5 wrote 0.5023). Now the encoder is a MatMul (αEᵀ folded), or, with transA,
    a Gemm with one broadcast zero."""
    from conftest import gemm_model
    from onnx_alds.layers import iter_total_params

    model = gemm_model(in_features=40, out_features=30, rows=6, trans_a=trans_a, trans_b=trans_b, alpha=0.5)
    rng = np.random.default_rng(4)
    weight = next(t for t in model.graph.initializer if t.name == "fc.weight")
    low = (rng.standard_normal((weight.dims[0], 3)) @ rng.standard_normal((3, weight.dims[1]))).astype(np.float32)
    weight.CopyFrom(numpy_helper.from_array(low, "fc.weight"))
    full_rank = onnx.ModelProto()
    full_rank.CopyFrom(model)
    model.opset_import[0].version = full_rank.opset_import[0].version = 9
    onnx.checker.check_model(model, full_check=True)
    result = onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)
    feeds = random_feeds(model)
    np.testing.assert_allclose(run_model(result.model, feeds)[0], run_model(model, feeds)[0], rtol=1e-4, atol=1e-4)
    # 0.48 of 1230 weights leaves 560.4 for the pair after the bias: rank 8 (8 x 70) with 0.4 to spare
    result = onnx_alds.compress(full_rank, keep_params=0.48, rank_multiple=1)
    stored = sum(iter_total_params(result.model))
    assert stored == result.report.params_after and stored <= 0.48 * sum(iter_total_params(full_rank))
    assert result.report.achieved <= 0.48


def test_a_data_file_another_model_reads_is_neither_removed_nor_overwritten(cnn, tmp_path, monkeypatch):
    """'b.onnx' and 'c.onnx' both read 'b.onnx.data': writing a model over 'b.onnx' removed the data file (or,
    with external data, overwrote it) and 'c.onnx' could no longer be loaded."""
    import onnx_alds.model_io as model_io
    from onnx_alds.errors import OutputPathError

    def save_external(model):  # (onnx.save_model moves the tensors out of the proto it is given: a copy)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, str(tmp_path / "b.onnx"), save_as_external_data=True, location="b.onnx.data",
                        size_threshold=0)

    earlier = onnx_alds.compress(cnn, keep_params=0.7).model  # (an earlier output: replaced, its data file kept)
    save_external(earlier)
    other = onnx.load(str(tmp_path / "b.onnx"), load_external_data=False)
    for tensor in other.graph.initializer:  # the same file, named as './b.onnx.data'
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "./b.onnx.data"
    onnx.save(other, str(tmp_path / "c.onnx"))
    before = (tmp_path / "b.onnx.data").read_bytes()
    result = onnx_alds.compress(cnn, keep_params=0.5)
    save_model(result.model, tmp_path / "b.onnx")
    assert (tmp_path / "b.onnx.data").read_bytes() == before
    onnx.checker.check_model(onnx.load(str(tmp_path / "c.onnx")))
    with monkeypatch.context() as patch:
        patch.setattr(model_io, "_PROTOBUF_LIMIT", 10_000)
        (tmp_path / "b.onnx.data").unlink()  # (onnx appends to a data file that exists)
        save_external(earlier)
        with pytest.raises(OutputPathError, match="c.onnx' reads too"):
            save_model(result.model, tmp_path / "b.onnx")
    assert (tmp_path / "b.onnx.data").read_bytes() == before


def test_compressing_twice_keeps_the_earlier_steps_and_drops_their_stale_keys():
    """The second step's target is a fraction of its input: the earlier step's method and target stay
    in the metadata (its calibration digests too: its factors were fitted to those samples), its other keys
    go, and distill, given the first original, says the model was compressed twice."""
    from onnx_alds.distill import _check_pair_order
    from onnx_alds.inputs import load_inputs

    cnn = small_cnn(width=16)
    once = onnx_alds.compress(cnn, keep_params=0.8, calibration=load_inputs(cnn, random=8, seed=0)).model
    twice = onnx_alds.compress(once, keep_params=0.8, method="svd").model
    props = {p.key: p.value for p in twice.metadata_props}
    assert props["onnx_alds.earlier_steps"] == "alds (data-aware) keep_params=0.8"
    assert props["onnx_alds.method"] == "svd" and props["onnx_alds.seed"] == "0"
    before = {p.key: p.value for p in once.metadata_props}
    assert props["onnx_alds.calibration_samples"] == before["onnx_alds.calibration_samples"]
    assert props["author"] == "tests"
    with pytest.raises(UnsupportedModelError, match="it was itself compressed before: alds"):
        _check_pair_order(cnn, twice)
    _check_pair_order(once, twice)  # its own original


def test_the_dynamic_dims_error_lists_only_the_inputs_that_need_a_shape():
    """input_ids [batch, seq] and attention_mask [batch, seq]: the error asked for both, while input_ids alone
    sizes the mask (its dims are named alike)."""
    from onnx_alds.errors import UnsupportedModelError
    from onnx_alds.model_io import resolve_input_shapes

    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "mask"], ["y"])], "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "seq"]) for name in ("ids", "mask")]
        + [helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])])
    model = helper.make_model(graph)
    with pytest.raises(UnsupportedModelError) as caught:
        resolve_input_shapes(model, None, batch_default=1)
    message = str(caught.value)
    assert "--input-shape ids:1xseq --input-shape other:1xwidth" in message and "mask:" not in message.split("give")[1]
    assert "(for seq, width: the size you run the model at, a number)" in message
    assert message.endswith("(the other input takes the sizes of the dims named alike)")
    shapes, _ = resolve_input_shapes(model, {"ids": (1, 7), "other": (1, 3)}, batch_default=1)
    assert shapes["mask"] == (1, 7)


def _attention(einsum: bool, dynamic: bool) -> onnx.ModelProto:
    """x [b, t, 32] -> q, k projections -> scores q·kᵀ (a MatMul with a Transpose, or an Einsum) -> output
    projection of the scores' row sums; weights of rank 32 (random)."""
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), name)
               for name in ("Wq", "Wk", "Wo")]
    if einsum:
        scores = [helper.make_node("Einsum", ["q", "k"], ["s"], name="scores", equation="btd,bsd->bts")]
    else:
        scores = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kT"),
                  helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores")]
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k_proj"), *scores,
             helper.make_node("MatMul", ["s", "q"], ["v"], name="mix"),
             helper.make_node("MatMul", ["v", "Wo"], ["y"], name="o_proj")]
    dims = ["b", "t", 32] if dynamic else [1, 16, 32]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_products_of_two_run_time_tensors_are_listed_and_named_where_they_hold_the_floor():
    """analyze listed attention's Q·Kᵀ MatMul only when the input shapes were known (6 rows or 8 for one
    model); an Einsum between run-time tensors left its MACs out of the total without a note; an unreachable
    --keep-flops did not say that such products (and ConvTranspose) hold part of the floor."""
    listed = [row.name for row in onnx_alds.analyze(_attention(False, dynamic=True)).layers]
    assert listed == [row.name for row in onnx_alds.analyze(_attention(False, dynamic=False)).layers]
    assert {"scores", "mix"} <= set(listed)
    notes = onnx_alds.analyze(_attention(True, dynamic=False)).notes
    assert any("1 Einsum nodes between run-time tensors (first: 'scores')" in note for note in notes)
    assert not any("Einsum" in note for note in onnx_alds.analyze(_attention(False, dynamic=False)).notes)
    with pytest.raises(BudgetError, match=r"2 layers left dense hold 25% of them \(weight is not a constant"):
        onnx_alds.compress(_attention(False, dynamic=False), keep_flops=0.2, rank_multiple=1)  # floor 0.297
    rng = np.random.default_rng(4)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W"),
               numpy_helper.from_array(rng.standard_normal((16, 8, 2, 2)).astype(np.float32), "T")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("ConvTranspose", ["c", "T"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="up")]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], weights)
    upsampling = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(BudgetError, match=r"; 31% of the MACs are in nodes that are not factorizable layers "
                                          r"\(ConvTranspose\), left as they are"):
        onnx_alds.compress(upsampling, keep_flops=0.3, rank_multiple=1)


def test_an_unreachable_budget_names_the_layers_no_rank_of_the_multiple_shrinks():
    """A MobileNetV3 export at --keep-flops 0.6: 'smallest reachable 0.9462 (... 1 layer left dense holds 17 %
    (depthwise conv ...))', silent on the 5 layers holding 62 % that rank 16 cannot shrink."""
    from onnx_alds.errors import BudgetError

    with pytest.raises(BudgetError) as refused:
        onnx_alds.compress(small_cnn(width=32), keep_flops=0.05, rank_multiple=16)
    message = str(refused.value)
    assert re.search(r"2 layers with no rank of the multiple 16 that shrinks them hold \d+% of them \(the largest, "
                     r"'conv0': rank 16 \(the rank multiple\) would take 944 weights, more than its 864\)", message)
    with pytest.raises(BudgetError) as finer:
        onnx_alds.compress(small_cnn(width=32), keep_flops=0.05, rank_multiple=8)
    assert "no rank of the multiple" not in str(finer.value)  # every layer shrinks at rank 8


def test_the_report_json_gives_each_layer_the_tables_note(tmp_path):
    """A layer the allocation kept dense had "skip_reason": null and no other word in --report's JSON, where
    the table said "kept dense by the allocation"."""
    import json

    result = onnx_alds.compress(small_cnn(), keep_params=0.9, exclude=["fc"])
    result.report.save_json(tmp_path / "report.json")
    rows = {row["name"]: row for row in json.loads((tmp_path / "report.json").read_text())["layers"]}
    table = result.report.format()
    dense = [name for name, row in rows.items() if row["groups"] == 0 and row["skip_reason"] is None]
    assert dense and all(rows[name]["note"] == "kept dense by the allocation" for name in dense)
    assert rows["fc"]["skip_reason"] and rows["fc"]["note"] == rows["fc"]["skip_reason"]
    assert all(row["note"] == "" for row in rows.values() if row["groups"])
    assert all(row["note"] in table for row in rows.values())


def test_the_alignment_note_says_the_chosen_rank_multiple_does_not_align():
    """With --rank-multiple 4 the note advised "--rank-multiple 16 aligns them" as if the flag given had been
    ignored; it now says the run's multiple does not."""
    notes = onnx_alds.compress(small_cnn(), keep_params=0.5, rank_multiple=4).report.notes
    note = next(note for note in notes if re.search(r"not (a multiple|multiples) of 16", note))
    assert "--rank-multiple 16 aligns them; this run's 4 does not" in note
    plain = onnx_alds.compress(small_cnn(), keep_params=0.5, rank_multiple=1).report.notes
    assert any(note.endswith("(--rank-multiple 16 aligns them)") for note in plain)


def test_a_data_free_result_is_measured_on_random_inputs_and_a_broken_one_warned():
    """Data-free EfficientNet-Lite0 at keep-flops 0.9 (max layer error 0.16) kept 0.17 top-1 agreement and
    MiniLM at 0.9 0.63 nearest neighbours with no warning: the per-layer errors were far below the deep-cut
    threshold. The outputs' change on a few random inputs is measured, reported, and warned of from 0.5."""
    from conftest import matmul_model

    model = matmul_model(in_features=64, out_features=48, leading=("N",), seed=3)
    mild = onnx_alds.compress(model, keep_params=0.95, rank_multiple=1).report
    assert mild.random_output_change is not None and mild.random_output_change < 0.5
    assert mild.random_samples == 4 and "random-input check" in mild.seconds
    assert f"mean relative change {mild.random_output_change:.3f}" in mild.format()
    assert not any("moved far" in warning for warning in mild.warnings)
    deep = onnx_alds.compress(model, keep_params=0.1, rank_multiple=1).report
    assert deep.random_output_change >= 0.5
    assert any(f"the outputs moved far from the original's (mean relative change {deep.random_output_change:.2f} "
               "on 4 random inputs)" in warning for warning in deep.warnings)
    # measured against the model: zero where the compressed model computes the same function
    from onnx_alds.checks import check_input_model, random_output_change

    found = check_input_model(model, None, {"x": (1, 64)})
    assert random_output_change(model, model, found).change == 0.0
    from onnx_alds.inputs import load_inputs

    calibration = load_inputs(model, random=64)
    calibrated = onnx_alds.compress(model, keep_params=0.5, rank_multiple=1, calibration=calibration).report
    assert calibrated.random_output_change is None and "random-input check" not in calibrated.seconds


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_the_random_input_check_runs_at_a_fixed_batch(batch):
    """A model that fixes its batch (1, as torch.onnx.export gives by default, or 8) got no figure and no note:
    4 random inputs at once did not fit it."""
    from conftest import matmul_model

    model = matmul_model(in_features=64, out_features=48, leading=(batch,), seed=3)
    report = onnx_alds.compress(model, keep_params=0.1, rank_multiple=1).report
    assert report.random_output_change is not None and report.random_output_change >= 0.5
    assert report.random_samples == batch * -(-4 // batch)
    assert any("moved far" in warning for warning in report.warnings)


def test_the_random_input_check_reports_the_worst_output_and_stops_at_its_time(monkeypatch):
    """Averaged over outputs, two outputs the compression leaves as they are hid a broken one (0.380 reported
    where the logits moved 1.14); a check that cannot run says so in a note."""
    import onnx_alds.checks as checks
    from conftest import make_model

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["x"], ["kept1"]),
             helper.make_node("Neg", ["x"], ["kept2"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48])]
                       + [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 64])
                          for name in ("kept1", "kept2")],
                       [numpy_helper.from_array(rng.standard_normal((64, 48)).astype(np.float32), "w")])
    report = onnx_alds.compress(model, keep_params=0.1, rank_multiple=1).report
    assert report.random_output == "y" and report.random_output_change >= 0.5 and report.random_samples == 4
    assert "(the largest, of 'y')" in report.format()
    assert any("of output 'y' on 4 random inputs" in warning for warning in report.warnings)
    monkeypatch.setattr(checks, "RANDOM_CHECK_SECONDS", 0.0)  # one batch (of one sample) is always run
    assert onnx_alds.compress(model, keep_params=0.1, rank_multiple=1).report.random_samples == 1
    strings = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
                          helper.make_node("Identity", ["s"], ["s_out"])],
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
                          helper.make_tensor_value_info("s", TensorProto.STRING, ["N"])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48]),
                          helper.make_tensor_value_info("s_out", TensorProto.STRING, ["N"])],
                         [numpy_helper.from_array(rng.standard_normal((64, 48)).astype(np.float32), "w")])
    notes = onnx_alds.compress(strings, keep_params=0.5, rank_multiple=1).report.notes
    assert any(note.startswith("the outputs were not compared on random inputs: ") for note in notes), notes
    assert ("the outputs were not compared on random inputs: graph input 's' holds strings, of which the checks "
            "draw no sample") in " ".join(notes)  # (it said only "ONNX Runtime did not run the original")


def test_the_random_input_check_runs_beside_a_dynamic_input_and_counts_outputs_zero_in_the_original():
    """A model fixing batch 8 on one input and not on another got no figure (and advice compress has no flag
    for); an output zero in the original and not in the compressed model was left out of the figure."""
    from conftest import make_model

    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.standard_normal((64, 48)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Add", ["h", "extra"], ["y"])]
    mixed = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64]),
                               helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 48])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 48])], [weight])
    report = onnx_alds.compress(mixed, keep_params=0.1, rank_multiple=1).report
    assert report.random_samples == 8 and report.random_output_change >= 0.5
    # 'gate' = h * scale, scale 0 in the original: a compressed model whose gate moved off zero was left out
    from onnx_alds.checks import check_input_model, random_output_change

    def gated(scale: float) -> onnx.ModelProto:
        return make_model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                           helper.make_node("Mul", ["h", "scale"], ["gate"])],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 48]) for name in ("h", "gate")],
                          [weight, numpy_helper.from_array(np.array(scale, np.float32), "scale")])

    found = check_input_model(gated(0.0), None, {"x": (1, 64)})
    checked = random_output_change(gated(1.0), gated(0.0), found)
    assert checked.output == "gate" and checked.change == float("inf") and checked.outputs == 2


@pytest.mark.parametrize("past", [0, 3])
def test_the_attention_op_of_opset_23_counts_its_products(past):
    """torch's exporter at opset 23 writes scaled-dot-product attention as the ONNX Attention op: its Q·Kᵀ and
    scores·V products (65536 of 1.65M MACs in a two-block model) were left out of the total with no note, so
    every --keep-flops budget was a fraction of a smaller total than the same model's at opset 18."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    tokens, width = 16, 64
    weights = [numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), name)
               for name in ("wq", "wk", "wv", "wo")]
    nodes = [helper.make_node("MatMul", ["x", f"w{p}"], [p], name=f"proj_{p}") for p in "qkv"]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, width])]
    attention_inputs = ["q", "k", "v"]
    outputs = ["a"]
    if past:
        attention_inputs += ["", "past_k", "past_v"]
        outputs += ["present_k", "present_v"]
        inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2, past, width // 2])
                   for name in ("past_k", "past_v")]
    nodes += [helper.make_node("Attention", attention_inputs, outputs, q_num_heads=2, kv_num_heads=2),
              helper.make_node("MatMul", ["a", "wo"], ["y"], name="proj_o")]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs,
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                               [1, tokens, width])], weights),
                              opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    projections = 4 * tokens * width * width
    products = 2 * tokens * width * (tokens + past)  # every element of Q and of the output meets every key
    analysis = onnx_alds.analyze(model)
    assert analysis.macs_total == projections + products
    result = onnx_alds.compress(model, keep_flops=0.7, rank_multiple=8)
    assert result.report.macs_after == pytest.approx(result.report.achieved * (projections + products), rel=1e-9)


def test_an_attention_op_of_unknown_shapes_or_constant_queries_is_counted_honestly():
    """An Attention op whose shapes shape inference cannot tell made --keep-flops refuse the model ("cannot size
    1 Conv/Gemm/MatMul nodes") though it holds no weight; one whose Q and K are constants was counted as a
    constant product (0 MACs) while V is computed at run time."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    tokens, width = 8, 32
    wv = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "wv")
    wo = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "wo")
    q = numpy_helper.from_array(rng.standard_normal((1, tokens, width)).astype(np.float32), "q")
    k = numpy_helper.from_array(rng.standard_normal((1, tokens, width)).astype(np.float32), "k")
    nodes = [helper.make_node("MatMul", ["x", "wv"], ["v"], name="proj_v"),
             helper.make_node("Attention", ["q", "k", "v"], ["a"], q_num_heads=2, kv_num_heads=2, name="attn"),
             helper.make_node("MatMul", ["a", "wo"], ["y"], name="proj_o")]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, width])], [wv, wo, q, k]),
        opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    assert onnx_alds.analyze(model).macs_total == 2 * tokens * width * width + 2 * tokens * width * tokens
    hidden = helper.make_node("Attention", ["q", "k", "v2"], ["a"], q_num_heads=2, kv_num_heads=2, name="attn")
    unknown = helper.make_model(helper.make_graph(
        [nodes[0], helper.make_node("Opaque", ["v"], ["v2"], domain="custom.ops"), hidden, nodes[2]], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, width])], [wv, wo, q, k]),
        opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("custom.ops", 1)])
    unknown.ir_version = 10
    analysis = onnx_alds.analyze(unknown)
    assert any("cannot tell the shapes of 1 Attention node (first: 'attn'): their MACs are not counted" in note
               for note in analysis.notes), analysis.notes


def test_a_model_of_convtranspose_alone_is_refused_naming_convtranspose():
    """A model whose only layer is a ConvTranspose was told "the model has no Conv, Gemm or MatMul with a
    weight", not that ConvTranspose is not factorized."""
    weight = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    model = make_model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 17, 17])],
                       [numpy_helper.from_array(weight, "w")])
    with pytest.raises(UnsupportedModelError, match=r"^nothing to compress: no Conv/Gemm/MatMul node; the model's 1 "
                       r"ConvTranspose nodes \(first: 'up'\) are not factorized"):
        onnx_alds.compress(model, keep_params=0.5)


def test_a_chain_of_hundreds_of_layers_before_a_last_node_is_rewritten():
    """300 MatMul layers in a chain, then a Softmax: graphsurgeon's toposort recursed once per node and raised
    RecursionError (a 1,800-line traceback) past about 250 layers; the pairs now take their nodes' places."""
    rng = np.random.default_rng(0)
    nodes, inits, name = [], [], "x"
    for i in range(300):
        nodes.append(helper.make_node("MatMul", [name, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        weight = rng.standard_normal((16, 2)) @ rng.standard_normal((2, 16)) / 4  # exactly rank 2
        inits.append(numpy_helper.from_array(weight.astype(np.float32), f"w{i}"))
        name = f"h{i}"
    nodes.append(helper.make_node("Softmax", [name], ["y"], axis=-1))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], inits)
    result = onnx_alds.compress(model, keep_params=0.5, rank_multiple=2)
    assert sum(layer.groups > 0 for layer in result.report.layers) == 300  # every layer factorized
    onnx.checker.check_model(result.model, full_check=True)  # (nodes in topological order)
    feeds = random_feeds(model)
    np.testing.assert_allclose(run_model(result.model, feeds)[0], run_model(model, feeds)[0], rtol=1e-4, atol=1e-6)


def test_api_arguments_of_the_wrong_kind_are_one_error_naming_them(tmp_path):
    """keep_dense=5, prune=[], input_shapes={'x': None}, provider=[], a None path: bare TypeErrors and
    ValueErrors from deep inside (options.py, model_io.py, pathlib) instead of one onnx-alds error naming the
    argument; onnx_alds.validate(...) and onnx_alds.bench(...), as the API is named, were modules."""
    from onnx_alds.errors import InputDataError, OutputPathError, ProviderError
    from onnx_alds.inputs import InputSet
    from onnx_alds.options import SpeedOptions
    from onnx_alds.plan import Plan, make_plan

    model = small_cnn()
    name = model.graph.input[0].name
    for keywords, error, words in (
            (dict(keep_dense=5), BudgetError, "keep_dense maps node names"),
            (dict(prune=[]), BudgetError, "prune=[]: give one of"),
            (dict(input_shapes={name: None}), InputDataError, f"the shape given for '{name}' is None"),
            (dict(input_shapes={name: 5}), InputDataError, f"the shape given for '{name}' is 5")):
        with pytest.raises(error, match=re.escape(words)):
            onnx_alds.compress(model, keep_params=0.5, **keywords)
    with pytest.raises(InputDataError, match="the input shapes are a str"):
        onnx_alds.analyze(model, input_shapes="input:1x3x32x32")
    with pytest.raises(InputDataError, match=r"unknown provider \[\]"):
        SpeedOptions(provider=[])
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    result = onnx_alds.compress(model, keep_params=0.7)
    with pytest.raises(ProviderError, match=r"unknown provider \[\]"):
        onnx_alds.validate(model, result.model, inputs=InputSet({name: x}), provider=[])
    for call in (lambda: Plan.load(None), lambda: make_plan(model, keep_params=0.7).save(None),
                 lambda: result.report.save_json(None), lambda: save_model(result.model, None)):
        with pytest.raises(OutputPathError, match=r"is None; give a file path \(a str or pathlib.Path\)"):
            call()
    report = onnx_alds.validate(model, result.model, inputs=InputSet({name: x}), figures_only=True)
    assert report.outputs and isinstance(report, onnx_alds.validate.ValidationReport)
    timed = onnx_alds.bench([model], batch_sizes=(1,), runs=1, warmup=0, min_time_s=0.0)
    for saved, path in ((report, tmp_path / "validate.json"), (timed, tmp_path / "bench.json")):
        saved.save_json(path)  # (as --json writes them; a script wrote their JSON by hand)
        assert json.loads(path.read_text()) == json.loads(json.dumps(saved.to_dict()))
    with pytest.raises(InputDataError, match="the input set's arrays are a list; give a dict"):
        InputSet([x])
    with pytest.raises(BudgetError, match="prune=0: give one of"):  # (0 == False: it was read as "off")
        onnx_alds.compress(model, keep_params=0.5, prune=0)
    for shapes, words in (((1, 64), "input_shapes is a tuple"), ({name: 64}, f"the shape given for '{name}' is 64")):
        with pytest.raises(InputDataError, match=re.escape(words)):
            onnx_alds.bench([model], input_shapes=shapes, runs=1, warmup=0, min_time_s=0.0)
    with pytest.raises(InputDataError, match="models=3; give a list"):
        onnx_alds.bench(3)
    with pytest.raises(OutputPathError, match="names a folder"):  # (bytes: the slash was lost, a file written)
        save_model(result.model, os.fsencode(str(tmp_path / "newdir")) + b"/")
    assert not (tmp_path / "newdir").exists()
    import inspect

    assert list(inspect.signature(onnx_alds.validate).parameters)[:2] == ["original", "compressed"]
