"""Distillation (onnx_alds.distill): the torch interpreter, what trains, write-back, verification, the CLI.

Everything that trains needs the ``[distill]`` extra (torch); those tests skip cleanly without it.
The missing-extra error is tested with torch hidden, so it runs either way.
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_alds import compress
from onnx_alds.errors import InputDataError, UnsupportedModelError
from onnx_alds.inputs import InputSet

from conftest import make_model, small_cnn


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _images(count: int, seed: int = 0) -> InputSet:
    rng = np.random.default_rng(seed)
    # smooth random images: more like real inputs than white noise
    x = rng.standard_normal((count, 3, 8, 8)).astype(np.float32)
    x = np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)
    return InputSet({"input": np.ascontiguousarray(x)}, None, "test images")


@pytest.fixture(scope="module")
def pair():
    """A small CNN, its data-free svd compression keeping 35 % of the weights, and 24 inputs."""
    original = small_cnn(width=8)
    compressed = compress(original, keep_params=0.35, method="svd").model
    return original, compressed, _images(24)


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    from onnx_alds.runtime import make_session

    return make_session(model, "cpu", threads=1).run(None, feeds)


# --------------------------------------------------------------------------------------------------
# the missing extra


def write_pair(tmp_path, original, compressed, inputs) -> list:
    """``a.onnx`` (original), ``b.onnx`` (compressed) and ``x.npz`` (the inputs) in ``tmp_path``; the two paths."""
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    onnx.save(original, str(paths[0]))
    onnx.save(compressed, str(paths[1]))
    np.savez(tmp_path / "x.npz", **inputs.arrays)
    return paths


def test_missing_torch_is_one_clear_error(monkeypatch, pair, tmp_path, capsys):
    from onnx_alds import distill as module
    from onnx_alds.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(module.DistillError, match=r"onnx-alds\[distill\]"):
        module.import_torch()
    original, compressed, inputs = pair
    paths = write_pair(tmp_path, original, compressed, inputs)
    code = main(["distill", str(paths[0]), str(paths[1]), "--inputs", str(tmp_path / "x.npz"),
                 "-o", str(tmp_path / "out.onnx"), "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and "onnx-alds[distill]" in err[0]
    assert not (tmp_path / "out.onnx").exists()


# --------------------------------------------------------------------------------------------------
# the interpreter


def _op_zoo() -> onnx.ModelProto:
    """A transformer-ish graph exercising the shape arithmetic exporters leave behind."""
    rng = np.random.default_rng(0)
    f = lambda *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3)  # noqa: E731
    inits = []

    def init(name, array):
        tensor = array if isinstance(array, onnx.TensorProto) else numpy_helper.from_array(np.asarray(array))
        tensor.name = name
        inits.append(tensor)
        return name

    init("emb", numpy_helper.to_array(f(20, 8)))
    init("w1", numpy_helper.to_array(f(8, 8)))
    init("w2", numpy_helper.to_array(f(8, 6)))
    init("ln_s", np.ones(8, np.float32))
    init("ln_b", np.zeros(8, np.float32))
    init("axes0", np.array([0], np.int64))
    init("two", np.array(2.0, np.float32))
    init("minus1", np.array([-1], np.int64))
    init("starts", np.array([1], np.int64))
    init("start2", np.array([2], np.int64))
    init("ends", np.array([2**62], np.int64))
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "ids"], ["e"], name="gather"),
        n("LayerNormalization", ["e", "ln_s", "ln_b"], ["ln"], name="ln", axis=-1, epsilon=1e-5),
        n("MatMul", ["ln", "w1"], ["h"], name="mm1"),
        n("Div", ["h", "two"], ["hd"], name="div"),
        n("Erf", ["hd"], ["he"], name="erf"),
        n("Mul", ["h", "he"], ["g"], name="mul"),
        n("Shape", ["g"], ["shape"], name="shape"),
        n("Slice", ["shape", "start2", "ends"], ["tail"], name="slice"),
        n("Concat", ["minus1", "tail"], ["newshape"], name="concat", axis=0),
        n("Reshape", ["g", "newshape"], ["flat"], name="reshape"),
        n("Transpose", ["flat"], ["t"], name="transpose", perm=[1, 0]),
        n("Transpose", ["t"], ["tt"], name="transpose2", perm=[1, 0]),
        n("Softmax", ["tt"], ["sm"], name="softmax", axis=-1),
        n("Cast", ["mask"], ["maskf"], name="cast", to=TensorProto.FLOAT),
        n("Unsqueeze", ["maskf", "minus1"], ["mask3"], name="unsq"),
        n("Reshape", ["sm", "shape"], ["sm3"], name="reshape2"),
        n("Mul", ["sm3", "mask3"], ["masked"], name="mask_mul"),
        n("ReduceSum", ["masked", "starts"], ["pooled"], name="rsum", keepdims=0),
        n("MatMul", ["pooled", "w2"], ["y0"], name="mm2"),
        n("Clip", ["y0", "", "two"], ["y1"], name="clip"),
        n("Sigmoid", ["y1"], ["y2"], name="sigmoid"),
        n("Sqrt", ["y2"], ["out"], name="sqrt"),
    ]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "L"]),
              helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "L"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 6])]
    return make_model(nodes, inputs, outputs, inits)


def _pools() -> onnx.ModelProto:
    """Pooling with ceil_mode and end-only pads (a window would start in the padding: ONNX Runtime drops it,
    and torch, padded by hand, did not: 6x6 for 5x5), and a Clip whose min is above its max."""
    rng = np.random.default_rng(4)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             n("MaxPool", ["a"], ["m"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1],
               ceil_mode=1),
             n("AveragePool", ["a"], ["v"], name="avgpool", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 2, 2],
               ceil_mode=1, count_include_pad=1),
             n("Clip", ["m", "hi", "lo"], ["c"], name="clip"),
             n("Add", ["c", "v"], ["y"], name="add")]
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) / 5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0.5, np.float32), "hi"),
             numpy_helper.from_array(np.array(-0.5, np.float32), "lo")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])], inits)


@pytest.mark.parametrize("which", ["cnn", "zoo", "mnist", "pools"])
def test_interpreter_matches_onnxruntime(torch, which):
    from onnx_alds.distill import torch_graph

    rng = np.random.default_rng(3)
    if which == "cnn":
        model = small_cnn(width=8)
        feeds = {"input": rng.standard_normal((4, 3, 32, 32)).astype(np.float32)}
    elif which == "pools":
        model = _pools()
        feeds = {"x": rng.standard_normal((2, 3, 10, 10)).astype(np.float32)}
    elif which == "zoo":
        model = _op_zoo()
        mask = np.ones((3, 7), np.int64)
        mask[1, 4:] = 0
        feeds = {"ids": rng.integers(0, 20, (3, 7)).astype(np.int64), "mask": mask}
    else:
        from pathlib import Path

        import onnx_alds

        model = onnx.load(str(Path(onnx_alds.__file__).parent / "data" / "mnist_resnet.onnx"))
        feeds = {"input": np.load(Path(onnx_alds.__file__).parent / "data" / "mnist_eval.npz")["input"][:8]}
    expected = _ort(model, feeds)[0]
    with torch.no_grad():
        got = torch_graph(model)({k: torch.from_numpy(v) for k, v in feeds.items()})
    got = got[model.graph.output[0].name].numpy()
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-5 * max(1.0, np.max(np.abs(expected)))


def test_unsupported_op_names_the_op(torch, pair):
    from onnx_alds.distill import distill, torch_graph

    original, compressed, inputs = pair
    odd = onnx.ModelProto()
    odd.CopyFrom(compressed)
    last = odd.graph.output[0].name
    odd.graph.node.append(helper.make_node("Hardmax", [last], ["hard"], name="the_hardmax"))
    odd.graph.output[0].name = "hard"
    with pytest.raises(UnsupportedModelError, match="Hardmax.*the_hardmax"):
        torch_graph(odd)
    original_odd = onnx.ModelProto()
    original_odd.CopyFrom(original)
    original_odd.graph.node.append(helper.make_node("Hardmax", [last], ["hard"], name="the_hardmax"))
    original_odd.graph.output[0].name = "hard"
    with pytest.raises(UnsupportedModelError, match="op Hardmax.*; compress without --distill"):
        distill(original_odd, odd, inputs, steps=1, progress=False)
    custom = onnx.ModelProto()
    custom.CopyFrom(compressed)
    custom.graph.node.append(helper.make_node("FusedThing", [last], ["z"], name="fused", domain="com.example"))
    with pytest.raises(UnsupportedModelError, match="com.example::FusedThing"):
        torch_graph(custom)


def test_input_sets_are_checked_against_the_model(torch, pair):
    """A dict of arrays for the inputs was an AttributeError from inside distill; a stray array went unseen."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    with pytest.raises(InputDataError, match="the training inputs are a dict; give an onnx_alds.inputs.InputSet"):
        distill(original, compressed, dict(inputs.arrays), steps=1, progress=False)
    stray = InputSet({**inputs.arrays, "mask": inputs.arrays["input"]})
    with pytest.raises(InputDataError, match="the held-out InputSet has array 'mask', which is not a graph input"):
        distill(original, compressed, inputs, held_out_inputs=stray, steps=1, progress=False)


def test_an_output_whose_first_dim_is_not_the_batch_is_refused_by_name(torch, pair):
    """Logits transposed to ``[C, N]``: a traceback (np.concatenate in the teacher runs); a scalar second
    output: "running the original model on the inputs failed ...; check the input arrays" (the inputs blamed)."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    last = original.graph.output[0].name
    for case in ("transposed", "scalar"):
        models = []
        for model in (original, compressed):
            odd = onnx.ModelProto()
            odd.CopyFrom(model)
            if case == "transposed":
                odd.graph.node.append(helper.make_node("Transpose", [last], ["t"], name="flip", perm=[1, 0]))
                odd.graph.output[0].name = "t"
                del odd.graph.output[0].type.tensor_type.shape.dim[:]
            else:
                odd.graph.node.append(helper.make_node("ReduceMean", [last], ["score"], name="mean", keepdims=0))
                odd.graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, []))
            models.append(odd)
        name = "t" if case == "transposed" else "score"
        with pytest.raises(UnsupportedModelError, match=rf"distillation compares the output '{name}' sample by "
                                                        r"sample, but its first dim is not the batch"):
            distill(models[0], models[1], inputs, steps=1, progress=False)


def test_an_output_masked_with_minus_inf_is_refused_by_what_is_not_finite(torch, pair):
    """Logits with a class masked by -inf: the mask was trained as the factor pair's bias ("--lr 0.01: Adam's
    steps for 'mask' ... overflow; give a smaller --lr such as 0.01", the value given), or, after a dense
    layer, ONNX Runtime and the interpreter were said to disagree (NaN differences)."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    last = original.graph.output[0].name
    classes = original.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    mask = np.zeros((1, classes), np.float32)
    mask[0, 0] = -np.inf
    models = []
    for model in (original, compressed):
        masked = onnx.ModelProto()
        masked.CopyFrom(model)
        masked.graph.initializer.append(numpy_helper.from_array(mask, "mask"))
        masked.graph.node.append(helper.make_node("Add", [last, "mask"], ["masked"], name="apply_mask"))
        masked.graph.output[0].name = "masked"
        models.append(masked)
    with pytest.raises(InputDataError, match=r"(output 'masked'|tensor 'mask').* NaN or infinite"):
        distill(models[0], models[1], inputs, steps=1, progress=False)
    # the mask read by the factor pair's last node, as its bias: named as such
    from onnx_alds.distill import _check_step_sizes

    with pytest.raises(InputDataError, match=r"tensor 'mask', which distillation would train .* NaN or infinite"):
        _check_step_sizes(models[1], ["mask"], 0.01)


# --------------------------------------------------------------------------------------------------
# what trains


def test_factor_tensors_are_found_by_difference(pair):
    from onnx_alds.distill import factor_tensors

    original, compressed, _ = pair
    found = factor_tensors(original, compressed)
    before = {t.name for t in original.graph.initializer}
    new = [t.name for t in compressed.graph.initializer if t.name not in before]
    assert list(found.factors) == new and new
    # the decoders' biases: the original biases, now read by the .dec nodes
    assert set(found.biases) <= before and found.biases
    decoders = {n.input[2] for n in compressed.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2
                and n.input[1] in set(new)}
    assert set(found.biases) == decoders
    produced = {o for n in original.graph.node for o in n.output}
    assert found.points and set(found.points) <= produced


def test_matching_points_are_kept_when_the_spatial_dims_are_dynamic(torch, pair, tmp_path):
    """Shape inference names the dims it cannot size anew in each model (unk__2 / unk__6): every matching point
    was dropped, so --intermediate-weight changed nothing on a model exported with dynamic H and W."""
    from onnx_alds.distill import distill, factor_tensors

    original, compressed, inputs = pair
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(original)
    for index, name in ((2, "H"), (3, "W")):
        dynamic.graph.input[0].type.tensor_type.shape.dim[index].dim_param = name
    small = compress(dynamic, keep_params=0.35, method="svd", input_shapes={"input": (1, 3, 32, 32)}).model
    found = factor_tensors(dynamic, small)
    assert found.points and found.points == factor_tensors(original, compressed).points
    result = distill(dynamic, small, inputs, steps=2, progress=False, intermediate_weight=1.0)
    assert result.report.matching_points == len(found.points)


def test_matmul_bias_add_is_trained():
    from onnx_alds.distill import factor_tensors

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 12)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Add", ["h", "b"], ["y"], name="bias")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 12])], inits)
    small = compress(model, keep_params=0.5, method="svd").model
    assert factor_tensors(model, small).biases == ("b",)


# --------------------------------------------------------------------------------------------------
# training, write-back, verification


@pytest.fixture(scope="module")
def distilled(pair):
    pytest.importorskip("torch")
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    return distill(original, compressed, inputs, steps=60, eval_every=10, patience=100, batch_size=8, lr=0.03,
                   seed=0, progress=False)


def test_write_back_changes_only_factor_values(pair, distilled):
    from onnx_alds.distill import factor_tensors

    original, compressed, _ = pair
    tuned = distilled.model
    trainable = set(factor_tensors(original, compressed).trainable)
    assert [n.SerializeToString() for n in tuned.graph.node] == [n.SerializeToString() for n in compressed.graph.node]
    assert tuned.graph.input == compressed.graph.input and tuned.graph.output == compressed.graph.output
    assert tuned.opset_import == compressed.opset_import
    assert [t.name for t in tuned.graph.initializer] == [t.name for t in compressed.graph.initializer]
    changed = 0
    for new, old in zip(tuned.graph.initializer, compressed.graph.initializer):
        if new.name in trainable:
            assert new.data_type == old.data_type and list(new.dims) == list(old.dims)
            changed += new.SerializeToString() != old.SerializeToString()
        else:
            assert new.SerializeToString() == old.SerializeToString(), new.name
    assert changed == len(trainable)
    onnx.checker.check_model(tuned, full_check=True)


def test_written_model_reproduces_the_student(torch, pair, distilled):
    from onnx_alds.distill import torch_graph

    feeds = {"input": _images(6, seed=9).arrays["input"]}
    expected = _ort(distilled.model, feeds)[0]
    with torch.no_grad():
        got = torch_graph(distilled.model)({"input": torch.from_numpy(feeds["input"])})["logits"].numpy()
    assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected))
    assert distilled.report.verify_max_diff <= 1e-4


def test_distillation_lowers_held_out_loss(distilled):
    report = distilled.report
    assert report.steps == 60
    assert report.loss_after < 0.5 * report.loss_before, (report.loss_before, report.loss_after)
    assert report.cosine_after > report.cosine_before
    assert report.curve[0]["step"] == 0 and report.curve[-1]["step"] == 60
    assert "distillation: 60 steps" in report.format()


def test_same_seed_same_model(torch, pair):
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    runs = [distill(original, compressed, inputs, steps=4, eval_every=2, batch_size=4, seed=5, progress=False)
            for _ in range(2)]
    assert runs[0].model.SerializeToString() == runs[1].model.SerializeToString()
    other = distill(original, compressed, inputs, steps=4, eval_every=2, batch_size=4, seed=6, progress=False)
    assert other.model.SerializeToString() != runs[0].model.SerializeToString()


def test_the_host_torch_state_is_put_back(torch, pair):
    """distill seeds torch and turns deterministic algorithms on: the caller's generator, switch and warn-only
    setting are as they were afterwards."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        distill(original, compressed, inputs, steps=2, eval_every=2, batch_size=4, progress=False)
        assert torch.equal(torch.rand(3), expected)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_verification_failure_writes_nothing(torch, pair, monkeypatch, tmp_path, capsys):
    """A student that disagrees with ONNX Runtime (here: a broken Relu) is refused with one line."""
    from onnx_alds import distill as module
    from onnx_alds.cli import main

    original, compressed, inputs = pair
    monkeypatch.setitem(module.OPS, "Relu", lambda torch, F, node, x: x)
    with pytest.raises(module.DistillError, match="disagree") as caught:
        module.distill(original, compressed, inputs, steps=1, progress=False)
    assert re.search(r"first at node '[^']+' \(op Relu\)", str(caught.value))  # where the two part
    paths = write_pair(tmp_path, original, compressed, inputs)
    code = main(["distill", str(paths[0]), str(paths[1]), "--inputs", str(tmp_path / "x.npz"),
                 "-o", str(tmp_path / "out.onnx"), "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "disagree" in err[0]
    assert not (tmp_path / "out.onnx").exists()


def _mlp(half_output: bool = False) -> onnx.ModelProto:
    """x (N, 32) -> MatMul -> Tanh -> MatMul -> y (N, 16); ``half_output``: y cast to float16 ('y16')."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 64)) / 6).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((64, 16)) / 8).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="l1"), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["y"], name="l2")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    if half_output:
        nodes.append(helper.make_node("Cast", ["y"], ["y16"], to=TensorProto.FLOAT16))
        out = helper.make_tensor_value_info("y16", TensorProto.FLOAT16, ["N", 16])
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])], [out], inits)


@pytest.mark.parametrize("stored", [TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.INT4])
def test_frozen_constants_of_types_numpy_holds_only_through_ml_dtypes_are_read(torch, stored):
    """A mixed-precision export stores a frozen weight as bfloat16 (or float8, int4) and casts it to float:
    torch.from_numpy refused the array (a TypeError traceback)."""
    from onnx.helper import make_tensor

    from onnx_alds.distill import distill

    model = _mlp()
    values = np.clip(np.round(np.random.default_rng(3).standard_normal(16) * 2), -4, 4).astype(np.float32)
    model.graph.initializer.append(make_tensor("b_low", stored, [16], values.tolist()))
    model.graph.node.append(helper.make_node("Cast", ["b_low"], ["b"], to=TensorProto.FLOAT))
    model.graph.node.append(helper.make_node("Add", ["y", "b"], ["z"]))
    model.graph.output[0].name = "z"
    model.opset_import[0].version = 21
    model.ir_version = 10
    rng = np.random.default_rng(1)
    inputs = InputSet({"x": rng.standard_normal((40, 32)).astype(np.float32)}, source="samples")
    compressed = compress(model, keep_params=0.5, rank_multiple=1).model
    result = distill(model, compressed, inputs, steps=3, augment=False, progress=False)
    assert result.report.steps == 3


def test_a_float16_output_of_small_spread_still_trains(torch):
    """Outputs cast to float16 with a spread below 1/65504: the squared error over the output's variance was
    computed in float16 and overflowed, the gradients were inf and nothing trained (best step 0, the
    factors written back unchanged)."""
    from onnx_alds.distill import distill

    model = _mlp(half_output=True)
    for tensor in model.graph.initializer:  # outputs of about 1e-3: variance about 1e-6
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) / 30, tensor.name))
    rng = np.random.default_rng(2)
    inputs = InputSet({"x": rng.standard_normal((64, 32)).astype(np.float32)}, source="samples")
    compressed = compress(model, keep_params=0.5, rank_multiple=1).model
    report = distill(model, compressed, inputs, steps=30, augment=False, progress=False).report
    assert report.best_step > 0 and report.loss_after < report.loss_before


def test_verification_tolerance_follows_the_output_dtype(torch):
    """A float16 output rounds to 4.9e-4 of its scale: one rounding flip between ONNX Runtime and torch
    failed the 1e-4 tolerance ('disagree on output y16'), at random, before or after training."""
    from onnx_alds.distill import DistillError, _verify, distill

    y = np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16)
    y16 = y.astype(np.float16)
    flipped = y16.copy()
    flipped[0, 0] = np.nextafter(flipped[0, 0], np.float16(0))  # one ulp: 4.9e-4 of the scale

    class Session:
        def __init__(self, values):
            self.values = values

        def run(self, names, feed):
            return [self.values[n] for n in names]

    def student(feeds, names):
        return {"y": torch.from_numpy(y), "y16": torch.from_numpy(flipped)}

    feed = {"x": np.zeros((4, 1), np.float32)}
    worst, limits = _verify(student, Session({"y": y, "y16": y16}), feed, ["y", "y16"], 1e-4, when="test")
    assert 1e-4 < worst < 1e-3 and limits == {"y": 1e-4, "y16": 2 * float(np.finfo(np.float16).eps)}
    off = y.copy()
    off[0, 0] += 1e-3  # float32 keeps the tight tolerance
    with pytest.raises(DistillError, match="disagree on output 'y' .* > 0.0001\\)"):
        _verify(student, Session({"y": off, "y16": y16}), feed, ["y", "y16"], 1e-4, when="test")
    # end to end: a float32 model whose output is cast to float16
    original = _mlp(half_output=True)
    x = np.random.default_rng(1).standard_normal((40, 32)).astype(np.float32)
    inputs = InputSet({"x": x}, None, "vectors")
    small = compress(original, keep_params=0.5, rank_multiple=1, calibration=inputs).model
    report = distill(original, small, inputs, steps=3, augment=False, progress=False).report
    assert report.verify_tolerance == 2 * float(np.finfo(np.float16).eps)
    assert any("'y16'" in note and "twice its resolution" in note for note in report.notes)


def test_report_json_is_strict_after_a_diverging_run(distilled, tmp_path):
    """A diverging run's NaN losses were written as bare NaN, which strict JSON parsers refuse."""
    import dataclasses
    import json

    curve = distilled.report.curve + (dict(step=99, seconds=1.0, train_loss=float("nan"), held_out_loss=float("inf"),
                                           agreement=0.5, cosine=float("nan")),)
    report = dataclasses.replace(distilled.report, curve=curve, loss_after=float("nan"))
    report.save_json(tmp_path / "r.json")

    def refuse(constant):
        raise ValueError(constant)

    data = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    assert data["loss_after"] is None and data["curve"][-1]["train_loss"] is None
    assert data["curve"][-1]["held_out_loss"] is None and data["curve"][-1]["agreement"] == 0.5
    assert report.to_dict()["loss_after"] is None


def test_rejects_a_model_that_is_not_its_compression(torch, pair):
    from onnx_alds.distill import distill

    original, _, inputs = pair
    with pytest.raises(UnsupportedModelError, match="no factor tensors"):
        distill(original, original, inputs, steps=1, progress=False)
    # the same architecture with other weights (another checkpoint): not the compressed model's original
    # (the check reads the tensors the compression left alone: here conv0's weight)
    compressed = compress(original, keep_params=0.35, method="svd", exclude=["conv0"]).model
    with pytest.raises(UnsupportedModelError, match="'conv0.weight' differs from the original's"):
        distill(small_cnn(seed=1, width=8), compressed, inputs, steps=1, progress=False)


def test_rejects_a_swapped_pair_and_a_compression_of_another_original(torch, pair):
    """Swapped, the original's dense weights were trained toward the compressed model (exit 0); a
    compression that replaced every weight of another checkpoint left the ancestry check nothing to
    compare. The compressed model records a digest of the weights it replaced."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    with pytest.raises(UnsupportedModelError, match="give ORIGINAL then COMPRESSED, in that order"):
        distill(compressed, original, inputs, steps=1, progress=False)
    other = small_cnn(seed=1, width=8)
    everything = compress(other, keep_params=0.35, method="svd").model  # no weight left to compare
    with pytest.raises(UnsupportedModelError, match="was not made from this original"):
        distill(original, everything, inputs, steps=1, progress=False)


def test_inputs_the_model_cannot_run_and_bad_flags_are_one_error(torch, pair):
    from onnx_alds.distill import DistillSettings, distill
    from onnx_alds.errors import InputDataError

    original, compressed, inputs = pair
    wrong = InputSet({"input": inputs.arrays["input"][:, :2]}, None, "two channels")  # the model takes three
    with pytest.raises(InputDataError, match=r"array 'input' in the training InputSet has shape \(24, 2, 32, 32\), "
                                             "but the model fixes dim 1 to 3"):
        distill(original, compressed, wrong, steps=1, progress=False)
    for flags in (dict(lr=float("inf")), dict(intermediate_weight=float("nan")), dict(seed=-5), dict(seed=2 ** 40),
                  dict(threads=10 ** 5)):
        with pytest.raises(InputDataError):
            DistillSettings(**flags)
    # a batch beyond the training set repeated samples in every step (100 000 exhausted memory)
    with pytest.raises(InputDataError, match="--batch-size 100000 is more than the .* training samples"):
        distill(original, compressed, inputs, steps=1, batch_size=100000, progress=False)


def test_a_huge_learning_rate_is_one_error_before_training(torch, pair, monkeypatch, tmp_path, capsys):
    """--lr 1e45 passed the 'positive, finite' check; lr × RMS then overflowed float32 in torch's Adam (a
    traceback in the first step)."""
    from onnx_alds import distill as module
    from onnx_alds.cli import main
    from onnx_alds.errors import InputDataError

    original, compressed, inputs = pair
    monkeypatch.setattr(module, "_teacher_session", lambda *a: pytest.fail("ran before the check"))
    for lr in (1e45, 1e300, 1e38):  # 1e38: finite as a step size, but Adam's first step is ten of them
        with pytest.raises(InputDataError, match=r"--lr .*overflow float32; give a smaller --lr"):
            module.distill(original, compressed, inputs, steps=1, lr=lr, progress=False)
    monkeypatch.undo()
    paths = write_pair(tmp_path, original, compressed, inputs)
    code = main(["distill", str(paths[0]), str(paths[1]), "--inputs", str(tmp_path / "x.npz"),
                 "-o", str(tmp_path / "out.onnx"), "--steps", "1", "--lr", "1e45"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: --lr 1e+45")
    assert not (tmp_path / "out.onnx").exists()


def test_the_default_batch_size_fits_a_few_samples(torch, pair, tmp_path, capsys):
    """compress --distill with fewer calibration samples than the default batch (16) failed after
    compressing, naming --batch-size, a flag compress does not have. The default batch is now at most
    the training samples (a note says so); a batch size given stays an error."""
    from onnx_alds.cli import main
    from onnx_alds.distill import distill
    from onnx_alds.errors import InputDataError

    original, compressed, _ = pair
    few = _images(12, seed=3)
    result = distill(original, compressed, few, steps=2, eval_every=1, progress=False)  # 10 train, 2 held out
    assert result.report.train_samples == 10 and result.report.settings["batch_size"] == 10
    assert any("batches of 10, not the default 16" in note for note in result.report.notes)
    with pytest.raises(InputDataError, match="--batch-size 16 is more than the 10 training samples"):
        distill(original, compressed, few, steps=2, batch_size=16, progress=False)
    paths = write_pair(tmp_path, original, compressed, few)
    code = main(["compress", str(paths[0]), "-o", str(tmp_path / "small.onnx"), "--keep-params", "0.5",
                 "--rank-multiple", "1", "--calibration", str(tmp_path / "x.npz"), "--distill",
                 "--distill-steps", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "batches of 10, not the default 16" in out and (tmp_path / "small.onnx").exists()
    common = ["distill", str(paths[0]), str(paths[1]), "--inputs", str(tmp_path / "x.npz"), "--steps", "1"]
    assert main(common + ["-o", str(tmp_path / "tuned.onnx")]) == 0
    capsys.readouterr()
    assert main(common + ["-o", str(tmp_path / "refused.onnx"), "--batch-size", "16"]) == 1
    assert "--batch-size 16 is more than the 10 training samples" in capsys.readouterr().err


def test_settings_of_the_wrong_type_are_one_error():
    """batch_size=4.5 was blamed on the inputs, steps=2.5 and steps=True ran, steps="10" and seed=1.5 were
    TypeErrors."""
    from onnx_alds.distill import DistillSettings
    from onnx_alds.errors import InputDataError

    for flags, wanted in ((dict(batch_size=4.5), r"batch_size=4.5 \(float\): give an integer"),
                          (dict(steps=2.5), r"steps=2.5 \(float\): give an integer"),
                          (dict(steps=True), r"steps=True \(bool\): give an integer"),
                          (dict(steps="10"), r"steps='10' \(str\): give an integer"),
                          (dict(seed=1.5), r"seed=1.5 \(float\): give an integer"),
                          (dict(lr="0.1"), r"lr='0.1' \(str\): give a number"),
                          (dict(minutes=True), r"minutes=True \(bool\): give a number"),
                          (dict(augment=1), r"augment=1 \(int\): give True or False"),
                          # each out-of-range setting named alone (one line named four, one of them no flag)
                          (dict(intermediate_weight=-1.0),
                           r"^intermediate_weight=-1.0 \(--intermediate-weight\): give a finite weight"),
                          (dict(patience=0), r"^patience=0 \(--patience\): give a positive number$")):
        with pytest.raises(InputDataError, match=wanted):
            DistillSettings(**flags)
    settings = DistillSettings(steps=np.int64(5), seed=np.uint32(3), batch_size=np.int32(4), lr=np.float32(0.5),
                               minutes=2, augment=np.bool_(False))
    assert (settings.steps, settings.seed, settings.batch_size, settings.minutes) == (5, 3, 4, 2.0)
    assert type(settings.steps) is int and type(settings.lr) is float and settings.augment is False


def test_a_fixed_batch_model_is_refused_before_anything_runs(torch, pair):
    """distill ran batches of 16 whatever the model fixed: ONNX Runtime's traceback."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    fixed = [onnx.ModelProto(), onnx.ModelProto()]
    for copy, model in zip(fixed, (original, compressed)):
        copy.CopyFrom(model)
        copy.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    name = original.graph.input[0].name  # (the hint names the model's own input, for both exporters)
    with pytest.raises(UnsupportedModelError, match="batch dim is free; this one fixes it to 1") as refused:
        distill(fixed[0], fixed[1], inputs, steps=1, progress=False)
    assert f"dynamic_shapes={{'{name}'" in str(refused.value) and f"dynamic_axes={{'{name}'" in str(refused.value)


def test_an_overridable_or_renamed_initializer_is_not_trained():
    """A bias that is also a graph input (callers set it) had its default retrained; a renamed
    initializer that no Conv/Gemm/MatMul reads as its weight was taken for a factor."""
    from onnx_alds.distill import factor_tensors

    original = small_cnn(width=8)
    compressed = compress(original, keep_params=0.35, method="svd").model
    renamed = onnx.ModelProto()
    renamed.CopyFrom(compressed)
    bias = next(node for node in renamed.graph.node if node.name.endswith(".dec")).input[2]
    renamed.graph.input.append(helper.make_tensor_value_info(bias, TensorProto.FLOAT, None))
    scale = numpy_helper.from_array(np.ones(1, np.float32), "renamed_scale")
    renamed.graph.initializer.append(scale)
    mul = renamed.graph.node[-1]
    renamed.graph.node.append(helper.make_node("Mul", [mul.output[0], "renamed_scale"], ["scaled"]))
    found = factor_tensors(original, renamed)
    assert bias not in found.biases and "renamed_scale" not in found.factors
    assert found.factors and set(found.factors) <= {name for node in renamed.graph.node for name in node.input[1:2]}


# --------------------------------------------------------------------------------------------------
# augmentation


def test_image_augmenter_keeps_shape_dtype_and_is_seeded(torch):
    from onnx_alds.distill import ImageAugmenter, make_augmenter

    model = small_cnn(width=8)
    arrays = _images(10).arrays
    augmenter = make_augmenter(model, arrays)
    assert isinstance(augmenter, ImageAugmenter) and augmenter.layout == "NCHW"
    a = augmenter.batch(np.random.default_rng(1), 7)["input"]
    b = augmenter.batch(np.random.default_rng(1), 7)["input"]
    assert a.shape == (7, 3, 32, 32) and a.dtype == np.float32 and np.array_equal(a, b)
    assert np.all(np.isfinite(a))


def test_float16_inputs_augment_to_finite_values(torch):
    """The std of a float16 image set was summed in float16 and overflowed: 69 % of the augmented values
    were inf/NaN, and distill blamed its interpreter."""
    from onnx_alds.distill import NoiseAugmenter, make_augmenter

    pixels = (np.random.default_rng(0).uniform(0, 255, (40, 3, 64, 64))).astype(np.float16)
    image = make_augmenter(small_cnn(width=8), {"input": pixels})
    noise = NoiseAugmenter({"v": pixels.reshape(40, -1)}, ["v"])
    for augmenter, name in ((image, "input"), (noise, "v")):
        batch = augmenter.batch(np.random.default_rng(1), 8)[name]
        assert batch.dtype == np.float16 and np.all(np.isfinite(batch)), type(augmenter).__name__


def test_token_augmenter_makes_valid_sentences():
    from onnx_alds.distill import TokenAugmenter, make_augmenter

    rng = np.random.default_rng(0)
    count, width = 12, 16
    lengths = rng.integers(5, width + 1, count)
    ids = np.zeros((count, width), np.int64)
    mask = np.zeros((count, width), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = np.concatenate([[101], rng.integers(1000, 2000, n - 2), [102]])
        mask[i, :n] = 1
    model = make_model([helper.make_node("Identity", ["input_ids"], ["out"], name="id")],
                       [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "L"]),
                        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "L"])],
                       [helper.make_tensor_value_info("out", TensorProto.INT64, ["B", "L"])], [])
    augmenter = make_augmenter(model, {"input_ids": ids, "attention_mask": mask})
    assert isinstance(augmenter, TokenAugmenter) and augmenter.pad == 0 and augmenter.note is None
    # left-padded sentences: resampled whole, and a note says why (the report said "resampling only", no more)
    left = make_augmenter(model, {"input_ids": ids[:, ::-1].copy(), "attention_mask": mask[:, ::-1].copy()})
    assert not isinstance(left, TokenAugmenter) and "'attention_mask' is not right-padded" in left.note
    batch = augmenter.batch(np.random.default_rng(2), 40)
    new_ids, new_mask = batch["input_ids"], batch["attention_mask"]
    assert new_ids.shape[1] <= width and new_ids.dtype == np.int64
    for row, m in zip(new_ids, new_mask):
        n = int(m.sum())
        assert np.all(m[:n] == 1) and np.all(m[n:] == 0)
        assert row[0] == 101 and row[n - 1] == 102 and np.all(row[n:] == 0)
        assert np.all((row[1:n - 1] >= 1000) & (row[1:n - 1] < 2000))


def _sentences(count: int = 20, width: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (101 ... 102, then padding 0) and their int mask, lengths 5 to ``width``."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((count, width), np.int64)
    mask = np.zeros((count, width), np.int64)
    for i, n in enumerate(rng.integers(5, width + 1, count)):
        ids[i, :n] = np.concatenate([[101], rng.integers(1000, 2000, n - 2), [102]])
        mask[i, :n] = 1
    return ids, mask


def _input_stub(specs) -> onnx.ModelProto:
    """A model with just these graph inputs (name, ONNX type), dims (B, S)."""
    return helper.make_model(helper.make_graph(
        [], "g", [helper.make_tensor_value_info(n, t, ["B", "S"]) for n, t in specs], []))


def test_token_augmenter_keeps_positions_types_and_masks():
    """position_ids became all zeros (every other int input got its first value along the row), and a
    float 0/1 mask beside int64 ids got noise (0.93/0.02: padding no longer masked)."""
    from onnx_alds.distill import Augmenter, NoiseAugmenter, TokenAugmenter, _held_out_set, DistillSettings
    from onnx_alds.distill import make_augmenter

    ids, mask = _sentences()
    count, width = ids.shape
    positions = np.tile(np.arange(width), (count, 1))
    types = np.repeat(np.arange(count)[:, None] % 2, width, axis=1)  # one value per sentence
    segments = np.where(mask == 1, 1, 0)  # one value per sentence, padding 0
    arrays = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "token_type_ids": types,
              "segment_ids": segments}
    model = _input_stub([(name, TensorProto.INT64) for name in arrays])
    augmenter = make_augmenter(model, arrays)
    assert isinstance(augmenter, TokenAugmenter) and augmenter.spans and augmenter.note is None
    batch = augmenter.batch(np.random.default_rng(0), 40)
    used = batch["input_ids"].shape[1]
    assert np.array_equal(batch["position_ids"], np.tile(np.arange(used), (40, 1)))
    assert np.all(batch["token_type_ids"] == batch["token_type_ids"][:, :1])
    assert np.array_equal(batch["segment_ids"], batch["attention_mask"])
    views = _held_out_set(arrays, DistillSettings(views=2), augmenter)  # as wide as the samples, same rules
    assert np.array_equal(views["position_ids"], np.tile(np.arange(width), (3 * count, 1)))
    # a float 0/1 mask is the ids' attention mask, not noisy data
    floats = make_augmenter(_input_stub([("ids", TensorProto.INT64), ("mask", TensorProto.FLOAT)]),
                            {"ids": ids, "mask": mask.astype(np.float32)})
    assert isinstance(floats, TokenAugmenter)
    batch = floats.batch(np.random.default_rng(1), 40)
    assert batch["mask"].dtype == np.float32 and np.isin(batch["mask"], (0.0, 1.0)).all()
    assert np.all(np.diff(batch["mask"], axis=1) <= 0) and np.all(batch["ids"][batch["mask"] == 0] == 0)
    # positions that follow each sentence (RoBERTa: padding 1, then 2, 3 ...) cannot be made for a new
    # sentence: no spans or splices, only swaps, every other input as given; and the report says so
    roberta = np.where(mask == 1, np.cumsum(mask, axis=1) + 1, 1)
    swaps = make_augmenter(model, dict(arrays, position_ids=roberta))
    assert isinstance(swaps, TokenAugmenter) and not swaps.spans and "'position_ids'" in swaps.note
    batch = swaps.batch(np.random.default_rng(2), 60)
    rows = np.random.default_rng(2).integers(0, count, size=60)  # the samples the batch starts from
    used = batch["input_ids"].shape[1]
    assert np.array_equal(batch["position_ids"], roberta[rows, :used])
    assert np.array_equal(batch["attention_mask"], mask[rows, :used])
    assert np.array_equal(batch["token_type_ids"], types[rows, :used])
    kept = batch["attention_mask"] == 1
    assert np.array_equal(batch["input_ids"] == 0, ~kept) and (batch["input_ids"] != ids[rows, :used]).any()
    assert "no spans or splices" in swaps.describe()
    # noise only where the values are data: never on a mask (float 0/1 or named *mask*)
    x = np.random.default_rng(3).standard_normal((count, 8)).astype(np.float32)
    noisy = make_augmenter(_input_stub([("x", TensorProto.FLOAT), ("valid", TensorProto.FLOAT),
                                        ("pad_mask", TensorProto.FLOAT)]),
                           {"x": x, "valid": mask.astype(np.float32), "pad_mask": x * 0 - 1e4})
    assert isinstance(noisy, NoiseAugmenter) and noisy.float_names == ["x"]
    batch = noisy.batch(np.random.default_rng(4), 10)
    assert np.isin(batch["valid"], (0.0, 1.0)).all() and np.all(batch["pad_mask"] == -1e4)
    # a left-padded mask is not rebuilt (the augmenter makes right-padded sentences): resampling only
    left = make_augmenter(_input_stub([("input_ids", TensorProto.INT64), ("attention_mask", TensorProto.INT64)]),
                          {"input_ids": ids[:, ::-1].copy(), "attention_mask": mask[:, ::-1].copy()})
    assert type(left) is Augmenter


# --------------------------------------------------------------------------------------------------
# command line


def test_cli_distill_and_compress_distill(torch, pair, tmp_path, capsys):
    from onnx_alds.cli import main

    original, compressed, inputs = pair
    paths = write_pair(tmp_path, original, compressed, inputs)
    code = main(["distill", str(paths[0]), str(paths[1]), "--inputs", str(tmp_path / "x.npz"), "-o",
                 str(tmp_path / "tuned.onnx"), "--steps", "3", "--eval-every", "2", "--report",
                 str(tmp_path / "d.json")])
    out = capsys.readouterr().out
    assert code == 0 and "distillation: 3 steps" in out and (tmp_path / "tuned.onnx").exists()
    assert (tmp_path / "d.json").exists()
    code = main(["compress", str(paths[0]), "-o", str(tmp_path / "small.onnx"), "--keep-params", "0.5",
                 "--rank-multiple", "1", "--calibration", str(tmp_path / "x.npz"), "--distill", "--distill-steps", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "distillation: 3 steps" in out and "distilled: 3 steps" in out
    # the held-out figure says what it is of: the samples held out, and their augmented views where there are any
    assert re.search(r"held-out \S+ of output '\w+' \(on \d+ samples( \+ \d+ augmented views each)?\) ", out)
    tuned = onnx.load(str(tmp_path / "small.onnx"))
    assert any(p.key == "onnx_alds.distill" for p in tuned.metadata_props)
    # --distill-report is an output like the others: written with the model, not when validation fails
    common = ["compress", str(paths[0]), "--keep-params", "0.5", "--rank-multiple", "1", "--calibration",
              str(tmp_path / "x.npz"), "--distill", "--distill-steps", "2", "--distill-report",
              str(tmp_path / "distill.json"), "--validate", "--validate-inputs", str(tmp_path / "x.npz"),
              "--bench-batch", "1"]
    assert main(common + ["-o", str(tmp_path / "failed.onnx"), "--max-mean-rel", "1e-9"]) == 1
    assert "validation failed" in capsys.readouterr().err
    assert not (tmp_path / "failed.onnx").exists() and not (tmp_path / "distill.json").exists()
    assert main(common + ["-o", str(tmp_path / "passed.onnx"), "--figures-only"]) == 0
    assert (tmp_path / "passed.onnx").exists() and (tmp_path / "distill.json").exists()
    assert f"and {tmp_path / 'distill.json'}" in capsys.readouterr().out


def test_pruned_model_distills_without_its_hidden_tensors_as_points(torch):
    """A pruned block's hidden tensor keeps its name but not its width: it is no matching point, and a
    sliced BatchNormalization's statistics stay fixed (torch refuses gradients for them)."""
    from onnx_alds.distill import DistillSettings, distill, factor_tensors
    from test_prune import _inputs, inverted_residual

    model = inverted_residual(seed=0)
    calibration = _inputs(model)
    pruned = compress(model, keep_params=0.6, calibration=calibration, prune="only", rank_multiple=8).model
    found = factor_tensors(model, pruned)
    assert "bn.mean.pruned" not in found.trainable and "bn.var.pruned" not in found.trainable
    assert "expand.w.pruned" in found.trainable and "project.w.pruned" in found.trainable
    assert found.points == ("p",)  # the project conv's output, full width; not the narrowed hidden tensors
    result = distill(model, pruned, calibration, settings=DistillSettings(steps=20))
    assert result.report.matching_points == 1
    assert result.report.loss_after <= result.report.loss_before


def test_a_token_model_exported_at_one_length_trains_on_untrimmed_batches(torch):
    """The sequence dim is declared dynamic, but a Reshape holds the exported length: batches trimmed to
    their longest sentence made ONNX Runtime fail in the middle of training (a traceback)."""
    from onnx_alds.distill import distill

    rng = np.random.default_rng(0)
    length = 16
    inits = [numpy_helper.from_array(rng.standard_normal((100, 8)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((length * 8, 64)).astype(np.float32) / 10, "w1"),
             numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32) / 8, "w2"),
             numpy_helper.from_array(np.array([0, length * 8], np.int64), "shape"),
             numpy_helper.from_array(np.array([2], np.int64), "axis")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "axis"], ["mu"]),
             helper.make_node("Mul", ["e", "mu"], ["em"]),
             helper.make_node("Reshape", ["em", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["out"], name="fc2")]
    model = make_model(nodes, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"]),
                               helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 64])], inits)
    ids = rng.integers(1, 100, (64, length)).astype(np.int64)
    mask = np.ones((64, length), np.int64)
    for row in range(64):
        mask[row, rng.integers(4, length + 1):] = 0
    ids[mask == 0] = 0
    inputs = InputSet({"input_ids": ids, "attention_mask": mask}, None, "sentences")
    small = compress(model, keep_params=0.5, rank_multiple=1,
                     input_shapes={"input_ids": (1, length), "attention_mask": (1, length)}).model
    result = distill(model, small, inputs, steps=20, progress=False)
    assert result.report.steps == 20


def _sqrt_mlp() -> onnx.ModelProto:
    """x (N, 32) -> Sqrt -> MatMul -> Tanh -> MatMul -> y: NaN on negative inputs."""
    model = _mlp()
    nodes = list(model.graph.node)
    nodes[0].input[0] = "root"
    del model.graph.node[:]
    model.graph.node.extend([helper.make_node("Sqrt", ["x"], ["root"], name="root")] + nodes)
    return model


def test_outputs_not_finite_on_the_held_out_samples_or_their_views_are_named(torch):
    """Inputs in [0, 1] into a Sqrt: the augmentation's noise made the held-out views negative, and the
    run ended in "ONNX Runtime and the torch student disagree (max |diff| nan)", blaming the interpreter;
    a held-out sample on which the original is NaN did the same without augmentation."""
    from onnx_alds.distill import distill

    original = _sqrt_mlp()
    compressed = compress(original, keep_params=0.5, method="svd", rank_multiple=1).model
    rng = np.random.default_rng(4)
    inputs = InputSet({"x": rng.uniform(0.0, 1.0, (40, 32)).astype(np.float32)}, source="uniform")
    with pytest.raises(InputDataError, match="NaN or infinite on the augmented views of the held-out samples.*"
                                             "add --no-augment"):
        distill(original, compressed, inputs, steps=1, progress=False)
    held = InputSet({"x": np.concatenate([inputs.arrays["x"][:7], -np.ones((1, 32), np.float32)])}, source="held")
    with pytest.raises(InputDataError, match="NaN or infinite on 1 held-out samples"):
        distill(original, compressed, inputs, held_out_inputs=held, steps=1, augment=False, progress=False)
    distill(original, compressed, inputs, steps=1, augment=False, progress=False)


def test_held_out_samples_the_compression_was_calibrated_on_are_named(torch):
    """compress --calibration X then distill --inputs X (the README's two steps): the held-out split came
    from the samples the factors were fitted to; the report gave in-sample figures as held-out ones."""
    from onnx_alds.distill import distill

    original = _mlp()
    rng = np.random.default_rng(6)
    seen = InputSet({"x": rng.standard_normal((40, 32)).astype(np.float32)}, source="seen")
    other = InputSet({"x": rng.standard_normal((40, 32)).astype(np.float32)}, source="other")
    compressed = compress(original, keep_params=0.5, calibration=seen, rank_multiple=1).model

    def in_sample(inputs) -> bool:
        notes = distill(original, compressed, inputs, steps=1, progress=False).report.notes
        return any("calibrated or trained on (the same samples)" in note for note in notes)

    assert in_sample(seen) and not in_sample(other)


def test_compress_distill_settings_are_named_by_compress_flags(tmp_path, capsys):
    """compress --distill --distill-minutes 0 said "--minutes 0.0", a flag compress does not have."""
    from onnx_alds.cli import main

    pytest.importorskip("torch")
    path = tmp_path / "m.onnx"
    onnx.save(_mlp(), str(path))
    with pytest.raises(SystemExit) as exited:  # a usage error, as every out-of-range flag
        main(["compress", str(path), "-o", str(tmp_path / "o.onnx"), "--keep-params", "0.5",
              "--calibration-random", "32", "--distill", "--distill-minutes", "0"])
    assert exited.value.code == 2
    assert "argument --distill-minutes: got 0.0; give a finite number > 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, wanted", [
    ("--steps", "0", "give an integer ≥ 1"), ("--batch-size", "0", "give an integer ≥ 1"),
    ("--minutes", "0", "give a finite number > 0"), ("--minutes", "inf", "give a finite number > 0"),
    ("--lr", "0", "give a finite number > 0"), ("--lr", "nan", "give a finite number > 0"),
    ("--held-out", "1", "give a finite number > 0 and < 1"), ("--held-out", "0", "give a finite number > 0 and < 1"),
    ("--intermediate-weight", "-1", "give a finite number ≥ 0"), ("--eval-every", "0", "give an integer ≥ 1"),
    ("--patience", "0", "give an integer ≥ 1"), ("--seed", "-1", "give an integer in [0, 2**32)")])
def test_every_out_of_range_distill_flag_is_a_usage_error(tmp_path, capsys, flag, value, wanted):
    """--steps 0 and --batch-size 0 exited 2 (argparse), --minutes 0, --lr 0, --held-out 1 and
    --intermediate-weight -1 exited 1 (the settings' own checks): each flag's type checks its range."""
    from onnx_alds.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["distill", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "-o", str(tmp_path / "o.onnx"),
              "--inputs", str(tmp_path / "x.npz"), flag, value])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"argument {flag}: got " in err and wanted in err


def test_an_endless_time_budget_is_refused():
    """distill --minutes inf was accepted: with no --steps, training never stopped (bench refused it)."""
    from onnx_alds.distill import DistillSettings

    for minutes in (math.inf, math.nan):
        with pytest.raises(InputDataError, match="give a positive, finite time budget"):
            DistillSettings(minutes=minutes)
    assert DistillSettings(minutes=0.5).minutes == 0.5


def test_an_augmenter_that_only_resamples_adds_no_held_out_views(torch):
    """"held out: 8 samples + 4 augmented views each" were 32 random copies of the 8 samples, weighting some
    of them up to 10 times in the held-out loss and the choice of the best step."""
    from onnx_alds.distill import Augmenter, DistillSettings, ImageAugmenter, _held_out_set

    held = {"x": np.arange(8 * 3 * 16 * 16, dtype=np.float32).reshape(8, 3, 16, 16)}
    assert _held_out_set(held, DistillSettings(views=4), Augmenter(held)) is held
    views = _held_out_set(held, DistillSettings(views=4), ImageAugmenter(held, "x", "NCHW"))
    assert len(views["x"]) == 40


def test_a_distilled_model_keeps_the_digests_of_the_samples_it_was_trained_on(torch):
    """validate on distill's own training samples gave no in-sample note: only the compression's calibration
    samples were recorded."""
    from onnx_alds.distill import distill
    from onnx_alds.plan import calibration_overlap

    original = _mlp()
    rng = np.random.default_rng(12)
    calibration = InputSet({"x": rng.standard_normal((16, 32)).astype(np.float32)}, source="calibration")
    training = InputSet({"x": rng.standard_normal((40, 32)).astype(np.float32)}, source="training")
    compressed = compress(original, keep_params=0.5, calibration=calibration, rank_multiple=1).model
    tuned = distill(original, compressed, training, steps=2, augment=False, progress=False).model
    trained = calibration_overlap(tuned, training)
    assert trained[0] >= 30 and calibration_overlap(tuned, calibration) == (16, 16)  # (a fifth is held out)


def _narrower_head(model: onnx.ModelProto, classes: int) -> onnx.ModelProto:
    """``model`` (the pair's compression) with its head cut to ``classes`` outputs."""
    narrow = onnx.ModelProto()
    narrow.CopyFrom(model)
    for tensor in narrow.graph.initializer:
        if tensor.name in ("fc.weight.dec", "fc.bias"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor)[:classes], tensor.name))
    narrow.graph.output[0].type.tensor_type.shape.dim[1].dim_value = classes
    return narrow


def _dynamic_output(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    return copy


@pytest.mark.parametrize("classes", [1, 7])
def test_rejects_a_compressed_model_whose_outputs_have_another_shape(torch, pair, classes):
    """A [N, 1] head against the original's [N, 10] was broadcast into the loss: trained, written, exit 0,
    'cosine 0.54 -> 1.41'; [N, 7] was a numpy traceback. Declared shapes are compared as validate compares
    them, and the shapes the models give on the inputs where the declarations leave a dim open."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    with pytest.raises(UnsupportedModelError, match=rf"'logits' is FLOAT \[N, 10\] in the original and FLOAT "
                                                    rf"\[N, {classes}\] in the other"):
        distill(original, _narrower_head(compressed, classes), inputs, steps=2, progress=False)
    with pytest.raises(UnsupportedModelError, match=rf"output 'logits' has shape \(\d+, 10\) in the original and "
                                                    rf"\(\d+, {classes}\) in the compressed model"):
        distill(_dynamic_output(original), _dynamic_output(_narrower_head(compressed, classes)), inputs, steps=2,
                progress=False)


def test_split_inputs_names_a_dict_given_for_an_input_set():
    """'needs at least 2 input samples; got 1' for a dict of one array (its keys were counted)."""
    from onnx_alds.distill import split_inputs

    with pytest.raises(InputDataError, match="inputs is a dict; give an onnx_alds.inputs.InputSet"):
        split_inputs({"input": np.zeros((8, 3), np.float32)})


def test_inputs_cast_on_the_way_in_are_noted(torch, pair, tmp_path, capsys):
    """validate noted "'input' int64 cast to float32, integer values: are they preprocessed?"; distill
    cast the same arrays silently (its notes were [])."""
    from onnx_alds.cli import main
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    wide = InputSet({"input": inputs.arrays["input"][:8].astype(np.float64)}, None, "float64 images")
    result = distill(original, compressed, wide, steps=1, progress=False)
    assert "'input' float64 cast to float32" in result.report.notes
    paths = write_pair(tmp_path, original, compressed, inputs)
    np.savez(tmp_path / "x.npz", input=(inputs.arrays["input"][:8] * 10).astype(np.int64))
    code = main(["distill", str(paths[0]), str(paths[1]), "--inputs", str(tmp_path / "x.npz"), "-o",
                 str(tmp_path / "out.onnx"), "--steps", "1", "--report", str(tmp_path / "r.json")])
    cast = "'input' int64 cast to float32, integer values: are they preprocessed?"
    assert code == 0 and f"note: {cast}\n" in capsys.readouterr().out
    import json
    assert cast in json.loads((tmp_path / "r.json").read_text())["notes"]


def _renamed(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """``model`` with every node, initializer and inner tensor renamed, and no onnx-alds metadata: a model
    from elsewhere that takes and gives the same."""
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    del renamed.metadata_props[:]
    graph = renamed.graph
    keep = {v.name for v in list(graph.input) + list(graph.output)}
    new = {name: prefix + name for node in graph.node for name in list(node.input) + list(node.output)
           if name and name not in keep}
    for tensor in graph.initializer:
        tensor.name = new[tensor.name]
    for node in graph.node:
        node.name = prefix + node.name
        node.input[:] = [new.get(name, name) for name in node.input]
        node.output[:] = [new.get(name, name) for name in node.output]
    del graph.value_info[:]
    return renamed


def test_an_unrelated_compressed_model_is_refused(torch, pair):
    """A compressed model of another architecture (no weight, no node in common, its metadata stripped)
    was distilled against the MNIST ResNet with exit 0: it taught the student nothing of the original."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    other = _renamed(compress(small_cnn(seed=1, width=4), keep_params=0.35, method="svd").model, "other/")
    with pytest.raises(UnsupportedModelError, match=r"keeps no weight of the original .* and no onnx-alds metadata "
                                                    "ties it to it; give the compressed model"):
        distill(original, other, inputs, steps=1, progress=False)
    # the model compressed from it, its metadata stripped, still distills: its untouched nodes are the original's
    stripped = onnx.ModelProto()
    stripped.CopyFrom(compressed)
    del stripped.metadata_props[:]
    assert distill(original, stripped, inputs, steps=1, progress=False).report.steps == 1


def _gemm_mlp(seed: int) -> onnx.ModelProto:
    """x (N, 32) -> Gemm (bias) -> Relu -> Gemm (bias) -> y (N, 16), weights drawn from ``seed``: two seeds are
    two checkpoints of one architecture (the same names, shapes and nodes)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / 6).astype(np.float32), name)
             for name, shape in (("w1", (64, 32)), ("b1", (64,)), ("w2", (16, 64)), ("b2", (16,)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], inits)


def test_another_checkpoint_with_every_layer_factorized_and_no_metadata_is_refused(torch):
    """A checkpoint of the same architecture, every layer factorized and its metadata stripped, was distilled
    with exit 0 (starting from agreement 0): the only initializers both models held were the decoder biases,
    which distillation trains and so never compares, and a Relu of the same names counted as a kept node."""
    from onnx_alds.distill import distill

    other = compress(_gemm_mlp(seed=2), keep_params=0.5, method="svd", rank_multiple=4).model
    assert all(layer.groups for layer in compress(_gemm_mlp(seed=2), keep_params=0.5, method="svd",
                                                  rank_multiple=4).report.layers)
    del other.metadata_props[:]
    inputs = InputSet({"x": np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)}, source="t")
    with pytest.raises(UnsupportedModelError, match=r"keeps no weight of the original"):
        distill(_gemm_mlp(seed=1), other, inputs, steps=1, progress=False)


def test_a_model_without_float_outputs_is_refused_with_the_fix(torch):
    """"the model has no floating-point graph output to distill" said no fix."""
    from onnx_alds.distill import distill

    model = _gemm_mlp(seed=1)
    model.graph.node.append(helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    small = compress(model, keep_params=0.5, method="svd", rank_multiple=4).model
    inputs = InputSet({"x": np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)}, source="t")
    with pytest.raises(UnsupportedModelError, match=r"no floating-point graph output to distill .*export it with "
                                                    r"the float scores or logits as a graph output"):
        distill(model, small, inputs, steps=1, progress=False)


def test_a_fall_in_held_out_agreement_says_why_that_step_was_kept():
    """The step of lowest held-out loss is kept; its top-1 agreement can be lower than before training, and the
    report read as 'distillation made it worse' with no word on how the step was chosen."""
    from onnx_alds.distill import DistillReport

    fields = dict(steps=30, seconds=3.0, stop_reason="steps", best_step=20, train_samples=48, held_out_samples=16,
                  held_out_views=4, augmentation="noise", trainable_tensors=4, trainable_values=100, biases=2,
                  matching_points=0, loss_before=0.158, loss_after=0.122, agreement_kind="top-1",
                  agreement_before=0.7846, agreement_after=0.7538, cosine_before=0.9, cosine_after=0.95,
                  verify_max_diff=1e-6, verify_tolerance=1e-4, settings={}, curve=(), torch_version="x", threads=1)
    assert "the step kept is the one of lowest held-out loss, not of highest top-1" in DistillReport(**fields).format()
    fields.update(agreement_after=0.80)
    assert "lowest held-out loss" not in DistillReport(**fields).format()


def test_samples_whose_outputs_are_zero_in_both_models_agree_as_validate_counts_them():
    """A model whose outputs are all zero: the report said "cosine 0.0000 -> 0.0000" for identical outputs, where
    validate counts such a sample as agreeing exactly (cos 1)."""
    from onnx_alds.distill import _agreement

    zeros, rows = np.zeros((4, 3)), np.eye(4, 3)
    assert _agreement(zeros, zeros, "cosine") == (1.0, 1.0)
    assert _agreement(np.vstack([zeros[:2], rows[:2]]), np.vstack([zeros[:2], -rows[:2]]), "cosine")[1] == 0.0
    assert _agreement(np.eye(4), np.zeros((4, 4)), "cosine")[1] == 0.0  # one side zero: no direction agrees


def test_the_agreement_figure_names_its_output_and_skips_an_embedding(torch):
    """Outputs 'emb' (a 16-d embedding, by name) then 'logits': the report's "top-1 agreement" was the
    arg-max agreement of 'emb' (the first output), and did not say which output it was about."""
    from onnx_alds.distill import distill

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 64)) / 6).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((64, 16)) / 8).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal((64, 10)) / 8).astype(np.float32), "w3")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="l1"), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["emb"], name="l2"),
             helper.make_node("MatMul", ["t", "w3"], ["logits"], name="l3")]
    original = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                          [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 16]),
                           helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    compressed = compress(original, keep_params=0.5, method="svd").model
    inputs = InputSet({"x": rng.standard_normal((24, 32)).astype(np.float32)}, None, "t")
    report = distill(original, compressed, inputs, steps=4, eval_every=2, batch_size=8, seed=0, progress=False).report
    assert report.agreement_output == "logits" and report.agreement_kind == "top-1"
    assert "top-1 agreement of output 'logits'" in report.format()


def test_held_out_samples_that_are_training_samples_are_noted(torch, pair):
    """distill(original, compressed, train, held_out_inputs=train) gave no note: its held-out figures and early
    stopping rest on the samples it trains on."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    report = distill(original, compressed, inputs, held_out_inputs=inputs, steps=2, eval_every=1, batch_size=8,
                     seed=0, progress=False).report
    assert any(note.startswith("the held-out samples are training samples too") for note in report.notes)
    apart = distill(original, compressed, inputs.head(16), held_out_inputs=_images(8, seed=5), steps=2,
                    eval_every=1, batch_size=8, seed=0, progress=False).report
    assert not any("training samples too" in note for note in apart.notes)


def test_samples_that_repeat_others_are_left_out_before_the_split():
    """256 copies of one sample: distill split them into training and held-out copies of the same sample and
    reported the held-out loss falling 0.599 -> 0.0019, while the model got worse on real held-out data."""
    from onnx_alds.distill import split_inputs
    from onnx_alds.inputs import without_repeats

    same = InputSet({"input": np.zeros((256, 3), np.float32)}, None, "zeros")
    with pytest.raises(InputDataError, match=r"needs at least 2 distinct input samples \(one to train on, one held "
                                             r"out\); got 1 \(256 given, the others repeat it\)"):
        split_inputs(same)
    rows = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    train, held = split_inputs(InputSet({"input": np.concatenate([rows] * 4)}, None, "rows"))
    assert len(train) + len(held) == 40 and "120 repeats of other samples left out" in train.source
    seen = {row.tobytes() for row in train.arrays["input"]}
    assert not any(row.tobytes() in seen for row in held.arrays["input"])
    signed = InputSet({"input": np.array([[0.0, 1.0], [-0.0, 1.0], [2.0, 3.0]], np.float32)}, None, "signed zeros")
    assert len(without_repeats(signed)) == 2  # -0.0 equals 0.0


def test_distill_notes_the_repeats_it_left_out(torch, pair):
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    twice = InputSet({"input": np.concatenate([inputs.arrays["input"][:10]] * 2)}, None, "twice")
    result = distill(original, compressed, twice, steps=1, progress=False)
    assert "10 of the 20 input samples repeat others exactly and were left out (a repeat adds nothing to train on, " \
           "and a held-out sample that repeats a training one measures nothing held out)" in result.report.notes
    assert result.report.train_samples + result.report.held_out_samples == 10


def test_a_run_in_which_no_step_helped_warns_that_the_model_is_unchanged(torch, pair):
    """--lr 1000 or 1e30: every step raised the held-out loss, the model written held the input's values, and
    the only word was a note that "a smaller --lr may train faster"."""
    from onnx_alds.distill import distill

    original, compressed, inputs = pair
    result = distill(original, compressed, inputs, steps=3, lr=1e30, progress=False)
    assert result.report.best_step == 0
    assert result.report.warnings == ("no step lowered the held-out loss: the model written holds the compressed "
                                      "model's values as given; try a smaller learning rate (now 1e+30; onnx-alds "
                                      "distill --lr) or more steps",)
    assert "warning: no step lowered the held-out loss" in result.report.format()
