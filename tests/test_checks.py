"""The input and output checks of onnx_alds.checks."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def test_output_check_refuses_nan_where_the_original_is_finite():
    """A compressed model whose output turned NaN (a division by a zero scale) ran with the right shapes
    and dtypes, so the check passed it."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model
    from onnx_alds.checks import check_input_model, check_output_model
    from onnx_alds.errors import InternalCheckError

    def model(weight):
        return make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(weight.astype(np.float32), "w")])

    original = model(np.eye(4))
    found = check_input_model(original)
    assert "y" in found.finite_outputs
    check_output_model(model(2 * np.eye(4)), original, found)  # finite: passes
    with pytest.raises(InternalCheckError, match="NaN or infinite values in output 'y'"):
        check_output_model(model(np.full((4, 4), np.nan)), original, found)


def test_onnx_runtime_out_of_threads_is_not_blamed_on_the_model(monkeypatch):
    """With the machine out of threads, ONNX Runtime's pthread_create failure read "ONNX Runtime refuses the
    model ... fix the model or export it again"."""
    from conftest import small_cnn
    from onnx_alds import runtime
    from onnx_alds.checks import check_input_model
    from onnx_alds.errors import RuntimeResourceError

    def out_of_threads(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: "
                           "/onnxruntime_src/onnxruntime/core/platform/posix/env.cc:327 onnxruntime::{anonymous}::"
                           "PosixThread::PosixThread(const char*, int, unsigned int (*)(int, Eigen::ThreadPoolInterface"
                           "*), Eigen::ThreadPoolInterface*, const onnxruntime::ThreadOptions&) pthread_create failed, "
                           "error code: 11 error msg: Resource temporarily unavailable")

    monkeypatch.setattr(runtime, "make_session", out_of_threads)
    with pytest.raises(RuntimeResourceError, match="could not get threads or memory .* the model is not at fault"):
        check_input_model(small_cnn(width=8))


def test_probe_note_with_every_dim_given_does_not_ask_for_them():
    """Every dynamic dim was given, the shapes did not fit together (an int input broadcast against a float
    one), and the note said "dynamic dims set to 1 ... give every dynamic dim with --input-shape"."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.checks import check_input_model

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
                               helper.make_node("Add", ["x", "mf"], ["s"]),
                               helper.make_node("MatMul", ["s", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["A", 64]),
                               helper.make_tensor_value_info("m", TensorProto.INT64, ["B"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["A", 64])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    found = check_input_model(model, input_shapes={"x": (2, 64), "m": (3,)})
    note = next(note for note in found.notes if "could not run the model on probe inputs" in note)
    assert "at the input shapes x:2x64 m:3, non-float inputs 0" in note and "fit together" in note \
        and "set to 1" not in note


def test_runtime_errors_keep_the_node_and_the_cause():
    """ONNX Runtime's ``file.h:84 onnxruntime::Class::Function(args)`` prefix took the whole 200 characters
    quoted: the node and the cause ("cannot be reshaped ... requested shape") were cut off."""
    from onnx_alds.errors import runtime_error_text

    text = ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Reshape node. "
            "Name:'/layer/Reshape' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/"
            "reshape_helper.h:84 onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, "
            "onnxruntime::TensorShapeVector&, bool) size != 0 && (input_shape_size % size) == 0 was false. The input "
            "tensor cannot be reshaped to the requested shape. Input shape:{1,6}, requested shape:{4,-1}")
    assert runtime_error_text(RuntimeError(text)) == (
        "Reshape node '/layer/Reshape': size != 0 && (input_shape_size % size) == 0 was false. The input tensor "
        "cannot be reshaped to the requested shape. Input shape:{1,6}, requested shape:{4,-1}")
    assert runtime_error_text(RuntimeError("plain failure")) == "plain failure"
    fused = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running FusedConv node. "
             "Name:'conv4' Status Message: Invalid input shape: {1}")
    assert runtime_error_text(RuntimeError(fused)) == (  # (the user's model has a Conv named conv4)
        "node 'conv4' (run as ONNX Runtime's FusedConv, fused from it): Invalid input shape: {1}")


def test_a_model_onnx_runtime_cannot_run_is_refused_naming_the_node():
    """The whole refusal, end to end, on a Reshape that cannot work at the model's only shape."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model
    from onnx_alds.checks import check_input_model
    from onnx_alds.errors import ModelLoadError

    model = make_model([helper.make_node("Gemm", ["x", "w"], ["a"], transB=1, name="fc"),
                        helper.make_node("Reshape", ["a", "shape"], ["y"], name="reshape_that_fails")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["A", "B"])],
                       [numpy_helper.from_array(np.ones((6, 8), np.float32), "w"),
                        numpy_helper.from_array(np.array([4, -1], np.int64), "shape")])
    with pytest.raises(ModelLoadError, match=r"Reshape node 'reshape_that_fails': .*requested shape:\{4,-1\}"):
        check_input_model(model)


def _dropout_mlp(training: bool, opset: int = 17):
    """Gemm → Relu → Dropout(training_mode) → Gemm, as torch's TrainingMode.TRAINING export writes it."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(0.3, np.float32), "ratio"),
             numpy_helper.from_array(np.array(training), "training")]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["a"], transB=1, name="fc1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r", "ratio", "training"], ["d"], name="drop"),
             helper.make_node("Gemm", ["d", "w2"], ["y"], transB=1, name="fc2")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits, opset=opset)


def test_random_nodes_found_and_calibration_refused():
    """A Dropout left in training mode (a TrainingMode.TRAINING export): ``--sequential`` fitted the factors to
    two different dropout draws and reported max error 0.0000 for an output moved by 41 %. Calibration of
    such a model is refused; data-free compression and validation say the outputs are random."""
    from onnx import TensorProto, helper

    import onnx_alds
    from onnx_alds.checks import random_nodes
    from onnx_alds.errors import InputDataError
    from onnx_alds.inputs import random_inputs
    from onnx_alds.validate import validate

    active, inactive = _dropout_mlp(True), _dropout_mlp(False)
    assert random_nodes(active) == ["'drop' (Dropout in training mode)"] and random_nodes(inactive) == []
    generator = _dropout_mlp(False)
    generator.graph.node.append(helper.make_node("RandomNormalLike", ["y"], ["noise"], name="noise"))
    generator.graph.output.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["N", 8]))
    assert random_nodes(generator) == ["'noise' (RandomNormalLike)"]
    passed_on = _dropout_mlp(True)  # training_mode reaching the Dropout through an Identity (was not seen)
    passed_on.graph.node.insert(0, helper.make_node("Identity", ["training"], ["training.copy"], name="copy"))
    passed_on.graph.node[3].input[2] = "training.copy"
    assert random_nodes(passed_on) == ["'drop' (Dropout in training mode)"]
    calibration = random_inputs(active, 64)
    for options in (dict(), dict(sequential=True), dict(prune="combined")):
        with pytest.raises(InputDataError, match=r"outputs are random at run time \(1 nodes, first: 'drop'"):
            onnx_alds.compress(active, keep_params=0.5, rank_multiple=1, calibration=calibration, **options)
    assert onnx_alds.compress(inactive, keep_params=0.5, rank_multiple=1, calibration=calibration,
                              sequential=True).report.layers
    result = onnx_alds.compress(active, keep_params=0.5, rank_multiple=1)  # data-free: the weights alone
    assert any("1 nodes draw random values at run time (first: 'drop' (Dropout in training mode);" in note
               for note in result.report.notes)
    report = validate(active, result.model, inputs=calibration, figures_only=True)
    assert any("the original has 1 random nodes (first: 'drop' (Dropout in training mode))" in note
               for note in report.notes)


def test_runtime_error_text_keeps_messages_without_a_signature():
    """A status message whose text has parentheses but no C++ signature before it kept nothing at all."""
    from onnx_alds.errors import runtime_error_text

    text = ("Non-zero status code returned while running FusedConv node. Name:'conv' Status Message: conv.cc:275 "
            "Compute Conv : bias must be a 1D tensor of size output_channels (16)")
    assert runtime_error_text(RuntimeError(text)) == (
        "node 'conv' (run as ONNX Runtime's FusedConv, fused from it): conv.cc:275 Compute Conv : bias must be a 1D "
        "tensor of size output_channels (16)")
    signature = ("Status Message: /src/core/framework/op_kernel.cc:87 virtual OrtValue* "
                 "onnxruntime::OpKernelContext::OutputMLValue(int, const onnxruntime::TensorShape&) Shape mismatch")
    assert runtime_error_text(RuntimeError(signature)) == "Shape mismatch"


def test_a_float16_transpose_into_matmul_does_not_crash_onnx_runtime(tmp_path):
    """fp16 ``Transpose(perm 1,0,2) → MatMul(constant)`` (every fp16 attention export) killed analyze, compress,
    validate and bench with SIGSEGV, no message: ONNX Runtime's NCHWc pass crashes on it. Run in a child
    process, so that a crash fails this test instead of ending the suite."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((64, 192)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
         helper.make_node("Transpose", ["x16"], ["t"], perm=[1, 0, 2]),
         helper.make_node("MatMul", ["t", "W"], ["m"], name="proj"),
         helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "N", 192])], [numpy_helper.from_array(weight, "W")])
    path = tmp_path / "fp16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    for command in (["analyze", str(path)], ["bench", str(path), "--runs", "2", "--warmup", "1", "--min-time", "0"]):
        done = subprocess.run([sys.executable, "-m", "onnx_alds.cli", *command, "--input-shape", "x:2x12x64"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command[0], done.returncode, done.stderr[-300:])


def test_a_refusal_names_an_unnamed_node_by_its_op_and_output():
    """A Constant without a name holding a sparse value was refused as "node '' holds a sparse tensor
    attribute": nothing a user could search the model for."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds import analyze
    from onnx_alds.errors import UnsupportedModelError

    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0], np.float32), "v"),
                                       numpy_helper.from_array(np.array([3], np.int64), "i"), [8])
    nodes = [helper.make_node("Constant", [], ["bias"], sparse_value=sparse),
             helper.make_node("Add", ["x", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    with pytest.raises(UnsupportedModelError, match=r"node Constant \(unnamed, output 'bias'\) holds a sparse"):
        analyze(model)


def test_only_models_that_compute_in_float16_lose_the_nchwc_pass():
    """The NCHWc pass speeds up float32 convolutions: a mixed-precision export that stores float16 weights
    and casts them to float32 keeps it; a model that computes in float16 leaves it out."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.runtime import _computes_in_float16

    weight = numpy_helper.from_array(np.zeros((4, 4), np.float16), "W16")
    stored = helper.make_graph([helper.make_node("Cast", ["W16"], ["W"], to=TensorProto.FLOAT),
                                helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    computed = helper.make_graph([helper.make_node("MatMul", ["x", "W16"], ["y"])], "g",
                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])], [weight])
    cast_input = helper.make_graph([helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
                                    helper.make_node("Relu", ["x32"], ["y"])], "g",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    assert not _computes_in_float16(helper.make_model(stored))
    assert not _computes_in_float16(helper.make_model(cast_input))  # float16 in, float32 compute
    assert _computes_in_float16(helper.make_model(computed))


def _eight_positions(folder) -> str:
    """A model that adds a table of 8 positions to x (N, T, 16): it runs at T = 8 only. Returns its path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("Add", ["x", "pos"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 16])],
                       [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "pos"),
                        numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")])
    path = str(folder / "m.onnx")
    onnx.save(model, path)
    return path


def test_input_shapes_that_do_not_fit_are_named_not_the_model(tmp_path, capsys):
    """A model with 8 position rows run at --input-shape x:1x20x16: the error said to fix or re-export the
    model, which is fine; the dims given are what does not fit."""
    from onnx_alds.cli import main

    path = _eight_positions(tmp_path)
    assert main(["compress", path, "-o", str(tmp_path / "o.onnx"), "--keep-flops", "0.5",
                 "--input-shape", "x:1x20x16"]) == 1
    err = capsys.readouterr().err
    assert "cannot run the model at the input shapes given (x:1x20x16" in err
    assert "check that the --input-shape values fit the model" in err and "export it again" not in err


def test_bench_and_validate_name_the_input_shapes_that_do_not_fit(tmp_path, capsys):
    """bench said "give --input-shape" with one given; validate --random said only "give real inputs"."""
    from onnx_alds.cli import main

    path = _eight_positions(tmp_path)
    assert main(["bench", path, "--input-shape", "x:1x20x16"]) == 1
    assert "check that the --input-shape values given (x:1x20x16) fit the model" in capsys.readouterr().err
    assert main(["validate", path, path, "--random", "4", "--input-shape", "x:1x20x16"]) == 1
    assert "random inputs (x: 4x20x16) do not fit this model: check any --input-shape given" in capsys.readouterr().err


def test_a_full_temporary_folder_is_not_called_an_invalid_model(monkeypatch):
    """On a full disk the checker's temporary copy could not be written, and the model was "not valid ONNX
    (onnx.checker: [Errno 27] File too large); fix the model or export it again"."""
    import errno
    from pathlib import Path

    from conftest import small_cnn
    from onnx_alds.checks import check_input_model
    from onnx_alds.errors import RuntimeResourceError

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def limited(*_args, **_kwargs):  # ulimit -f: another folder would not help (the advice was to move TMPDIR)
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr("onnx_alds.checks._DIRECT_CHECK_BYTES", 0)  # checked through the temporary copy
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(RuntimeResourceError, match="temporary folder .* failed \\(No space left on device\\); free "
                                                   "space there or point TMPDIR"):
        check_input_model(small_cnn())
    monkeypatch.setattr(Path, "write_bytes", limited)
    with pytest.raises(RuntimeResourceError, match="failed \\(File too large\\); raise the limit on the size of files "
                                                   "a process may write \\(ulimit -f\\)"):
        check_input_model(small_cnn())


def test_an_onnx_runtime_internal_op_in_the_standard_domain_is_named_as_such():
    """A model saved by ONNX Runtime at level EXTENDED holds e.g. SimplifiedLayerNormalization in the ai.onnx
    domain: 'not valid ONNX ... export it again' did not say why, nor which model to give instead."""
    import onnx_alds
    from onnx_alds.errors import ModelLoadError

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("SimplifiedLayerNormalization", ["h", "g"], ["y"], name="ln", axis=-1, epsilon=1e-5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w"),
                               numpy_helper.from_array(np.ones(16, np.float32), "g")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match="'SimplifiedLayerNormalization' in the standard ai.onnx domain.*"
                                             "ORT_ENABLE_BASIC"):
        onnx_alds.compress(model, keep_params=0.6)


@pytest.mark.parametrize("dims", [[1, 16, 40], [1, 16, "T"]], ids=["fixed", "dynamic"])
def test_a_dilated_conv_with_same_padding_is_refused_naming_it(dims):
    """auto_pad SAME_UPPER with dilation 2: ONNX Runtime runs it at no shape. Fixed dims: the error named
    ONNX Runtime's internal node ('y_nchwc'); dynamic dims: a note, and a model written with exit 0."""
    import onnx_alds
    from conftest import make_model
    from onnx_alds.errors import ModelLoadError

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], auto_pad="SAME_UPPER", dilations=[2], name="dilated"),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"], name="pointwise")]
    inits = [numpy_helper.from_array(rng.standard_normal((32, 16, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 32, 1)).astype(np.float32), "w2")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims[:1] + [32, dims[2]])], inits)
    with pytest.raises(ModelLoadError, match=r"Conv 'dilated' has dilations \[2\] with auto_pad SAME_UPPER, which "
                                             r"ONNX Runtime does not run"):
        onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)


@pytest.mark.parametrize("stale", [True, False])
def test_an_inconsistent_model_is_told_to_drop_its_value_info_only_where_that_is_the_fix(stale):
    """Every refusal said 'stale value_info can be dropped with onnx-simplifier' (not installed), also for
    models whose value_info was fine."""
    import onnx_alds
    from onnx_alds.errors import ModelLoadError

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"])]
    declared = [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 99 if stale else 16])]
    output = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16 if stale else 99])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              output, [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")],
                              value_info=declared)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError) as caught:
        onnx_alds.compress(model, keep_params=0.6)
    message = str(caught.value)
    assert "model is inconsistent" in message and "simplifier" not in message
    assert ("del model.graph.value_info[:]" in message) == stale


def _sliced_by_values(bounds_from: str) -> onnx.ModelProto:
    """x [N,32] → MatMul → logits [N,10]; 'crop' = logits[:, :end], where 'end' comes from ``bounds_from``:
    "argmax" (1 + the largest arg-max: the values), "shape" (the logits' width, read with Shape), or "input"
    (an integer graph input)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"], name="mm")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])]
    if bounds_from == "argmax":
        nodes += [helper.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0),
                  helper.make_node("ReduceMax", ["am"], ["mx"], keepdims=1),
                  helper.make_node("Add", ["mx", "one"], ["end"])]
    elif bounds_from == "shape":
        nodes += [helper.make_node("Shape", ["logits"], ["dims"]),
                  helper.make_node("Gather", ["dims", "one"], ["end"], axis=0)]
    else:
        inputs.append(helper.make_tensor_value_info("end", TensorProto.INT64, [1]))
    nodes.append(helper.make_node("Slice", ["logits", "zero", "end", "one"], ["crop"]))
    graph = helper.make_graph(
        nodes, "crop", inputs, [helper.make_tensor_value_info("crop", TensorProto.FLOAT, ["N", "M"])],
        [numpy_helper.from_array(rng.standard_normal((32, 10)).astype(np.float32), "W"),
         numpy_helper.from_array(np.array([1], np.int64), "one"),
         numpy_helper.from_array(np.array([0], np.int64), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_size_argument_computed_from_the_values_makes_an_output_value_sized():
    """A Slice whose end came from an arg-max made compress stop with "this is a bug in onnx-alds" (the
    compressed model's output had another width); sizes read off shapes or given as an integer input do not
    move with the values and keep the exact shape check."""
    from onnx_alds.checks import value_sized_outputs

    assert value_sized_outputs(_sliced_by_values("argmax")) == {"crop": "Slice with bounds computed at run time"}
    assert value_sized_outputs(_sliced_by_values("shape")) == {}
    assert value_sized_outputs(_sliced_by_values("input")) == {}


def test_a_model_with_a_value_sized_slice_compresses(tmp_path):
    from onnx_alds import compress

    path = tmp_path / "crop.onnx"
    onnx.save(_sliced_by_values("argmax"), path)
    result = compress(path, keep_params=0.3, rank_multiple=1)
    assert result.report.layers[0].groups and result.report.layers[0].rank < 10
    onnx.checker.check_model(result.model, full_check=True)


def test_a_size_computed_from_values_inside_an_if_branch_makes_the_output_value_sized():
    """The same Slice inside an If's branch was missed (only NonZero-like ops, Loop and TopK were looked for
    in bodies): compress wrote the model and validate blamed the pairing for the widths that differed."""
    from onnx_alds.checks import value_sized_outputs

    base = _sliced_by_values("argmax")
    sliced = [node for node in base.graph.node if node.op_type != "MatMul"]
    then_branch = helper.make_graph(sliced, "then", [], [helper.make_tensor_value_info("crop", TensorProto.FLOAT,
                                                                                        None)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["logits"], ["same"])], "else", [],
                                    [helper.make_tensor_value_info("same", TensorProto.FLOAT, None)])
    nodes = [base.graph.node[0], helper.make_node("Size", ["x"], ["size"]),
             helper.make_node("Greater", ["size", "zero_scalar"], ["always"]),
             helper.make_node("If", ["always"], ["out"], then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(nodes, "if", list(base.graph.input),
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "M"])],
                              list(base.graph.initializer) + [numpy_helper.from_array(np.array(0, np.int64),
                                                                                      "zero_scalar")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    assert value_sized_outputs(model) == {"out": "Slice with bounds computed at run time"}
    # a branch that slices by a constant stays exact
    constant = onnx.ModelProto()
    constant.CopyFrom(model)
    branch = next(a.g for a in constant.graph.node[3].attribute if a.name == "then_branch")
    branch.node[-1].input[2] = "one"
    assert value_sized_outputs(constant) == {}


def test_an_if_on_a_computed_condition_between_branches_of_declared_different_shapes_is_value_sized():
    from onnx_alds.checks import value_sized_outputs

    def model(widths: tuple[int, int]) -> onnx.ModelProto:
        branches = {}
        for name, width in zip(("then_branch", "else_branch"), widths):
            out = f"{name}_out"
            branches[name] = helper.make_graph(
                [helper.make_node("Slice", ["logits", "zero", f"end{width}", "one"], [out])], name, [],
                [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", width])])
        nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"]),
                 helper.make_node("ReduceSum", ["logits"], ["total"], keepdims=0),
                 helper.make_node("Greater", ["total", "zero_f"], ["positive"]),
                 helper.make_node("If", ["positive"], ["out"], **branches)]
        inits = [numpy_helper.from_array(np.ones((32, 10), np.float32), "W"),
                 numpy_helper.from_array(np.array(0, np.float32), "zero_f"),
                 numpy_helper.from_array(np.array([0], np.int64), "zero"),
                 numpy_helper.from_array(np.array([1], np.int64), "one")] + [
            numpy_helper.from_array(np.array([w], np.int64), f"end{w}") for w in set(widths)]
        graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", None])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert value_sized_outputs(model((4, 7))) == {
        "out": "If with a computed condition between branches of different shapes"}
    assert value_sized_outputs(model((4, 4))) == {}


def test_the_random_input_check_takes_one_value_per_sample_over_all_samples():
    """An output of one number per sample: the mean of |z − y| / |y| over samples was dominated by samples near 0
    (3.46 for a model whose outputs moved 0.43), and the report warned that the outputs moved far. It is now the
    relative change of all samples' values at once."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model, run_model
    from onnx_alds import compress
    from onnx_alds.checks import RANDOM_SAMPLES
    from onnx_alds.inputs import random_inputs

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("ReduceSum", ["h", "axes"], ["y"], keepdims=1)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                       [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
                        numpy_helper.from_array(np.array([1], np.int64), "axes")])
    result = compress(model, keep_params=0.5, rank_multiple=1)
    x = random_inputs(model, RANDOM_SAMPLES, input_shapes={"x": (1, 64)}, seed=0).arrays["x"]
    y = np.concatenate([run_model(model, {"x": row[None]})[0] for row in x]).astype(np.float64)
    z = np.concatenate([run_model(result.model, {"x": row[None]})[0] for row in x]).astype(np.float64)
    assert result.report.random_output_change == pytest.approx(np.linalg.norm(z - y) / np.linalg.norm(y), rel=1e-4)


def test_a_scalar_input_is_named_and_validate_is_not_offered_as_the_way_to_measure():
    """A scalar input (a temperature): the note quoted the input refusal cut at 160 characters ("(or as a constant
    )") and sent the user to validate, which refuses the model for the same input."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model
    from onnx_alds import compress

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Mul", ["h", "t"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32]),
                               helper.make_tensor_value_info("t", TensorProto.FLOAT, [])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
                       [numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32),
                                                "w")])
    report = compress(model, keep_params=0.5, rank_multiple=1).report
    assert report.random_output_change is None
    assert ("the outputs were not compared on random inputs: graph input 't' is a scalar (rank 0), which no batch of "
            "samples feeds; to measure the outputs with validate, export 't' with shape [1] or [N]") in report.notes


def test_a_first_dim_that_is_not_a_batch_names_input_shape(tmp_path, capsys):
    """A model whose rows are samples × time steps (it regroups 4 rows per sample) failed on the probe at a
    first dim of 1 with 'fix the model or export it again'; the model is fine, the dims the tool chose are
    not: the error names them and --input-shape."""
    from conftest import make_model
    from onnx_alds.cli import main

    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                        helper.make_node("Reshape", ["h", "shape"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                       [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w"),
                        numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")])
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    assert main(["compress", path, "-o", str(tmp_path / "o.onnx"), "--keep-params", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "with its dynamic first dim set to 1 (x:1x16: " in err and "but it runs at 4" in err, err
    assert "give the sizes the model needs with --input-shape, e.g. --input-shape x:4x16" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()
    assert main(["compress", path, "-o", str(tmp_path / "o.onnx"), "--keep-params", "0.5", "--rank-multiple", "1",
                 "--input-shape", "x:4x16"]) == 0


def _trans_a_gemm(first_dim="K") -> onnx.ModelProto:
    """Gemm(transA=1) on an input [K, M]: the input's first axis is the contraction axis (K = 96, exactly rank 8)."""
    from conftest import make_model

    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((96, 8)) @ rng.standard_normal((8, 80)) / 10).astype(np.float32)
    return make_model([helper.make_node("Gemm", ["a", "B", "C"], ["y"], transA=1, beta=0.5, name="gemm")],
                      [helper.make_tensor_value_info("a", TensorProto.FLOAT, [first_dim, "M"])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 80])],
                      [numpy_helper.from_array(weight, "B"),
                       numpy_helper.from_array(rng.standard_normal(80).astype(np.float32), "C")])


def test_the_random_input_check_runs_at_the_first_dim_input_shape_gives():
    """The data-free check fed first dim 1 whatever --input-shape gave: a model that runs only at the given
    first dim (a transposed Gemm's contraction axis) was reported 'not compared on random inputs'."""
    from onnx_alds import compress

    result = compress(_trans_a_gemm(), keep_params=0.5, rank_multiple=8, input_shapes={"a": (96, 4)})
    assert result.report.random_output_change is not None and result.report.random_output_change < 1e-5
    assert "random-input check" in result.report.format()
    assert not any("not compared on random inputs" in note for note in result.report.notes)


def test_a_check_that_could_not_run_is_not_on_the_timing_line():
    """'random-input check 0.01 s' was on the time line of a run whose note said the check could not run."""
    from conftest import make_model
    from onnx_alds import compress

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((32, 4)) @ rng.standard_normal((4, 32))).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                        helper.make_node("Mul", ["h", "t"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 32]),
                        helper.make_tensor_value_info("t", TensorProto.FLOAT, [])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 32])],
                       [numpy_helper.from_array(weight, "W")])
    report = compress(model, keep_params=0.5, rank_multiple=4).report  # a scalar input: no random inputs drawn
    assert any("not compared on random inputs" in note for note in report.notes)
    assert "random-input check" not in report.format()


def test_calibrating_a_layer_that_contracts_the_sample_axis_says_why_it_cannot():
    """Calibration of a transposed Gemm on its input's first axis said 'a Gemm input of shape (16, 4) does not
    give vectors of 96 numbers; check the model's input shapes', though the shapes were right."""
    from onnx_alds import compress
    from onnx_alds.errors import UnsupportedModelError
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(4)
    calibration = InputSet({"a": rng.standard_normal((96, 4)).astype(np.float32)}, source="test inputs")
    with pytest.raises(UnsupportedModelError, match="transposed .transA=1. multiplies the weight along that "
                                                    "input's first axis.*compress it without calibration"):
        compress(_trans_a_gemm(), keep_params=0.5, rank_multiple=8, input_shapes={"a": (96, 4)},
                 calibration=calibration)


def test_the_random_input_check_stays_at_batch_1_where_the_model_runs_there():
    """With the first dim that --input-shape gives (a deployment batch of 2048, given to count MACs) the check
    ran two inferences of that batch (1.2 GB on MNIST); it tries batch 1 first, and the given dim only if that
    fails."""
    from conftest import small_cnn
    from onnx_alds import compress

    model = small_cnn(width=16)
    name = model.graph.input[0].name
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    report = compress(model, keep_flops=0.6, rank_multiple=4, input_shapes={name: (64, *dims[1:])}).report
    assert report.random_samples == 4 and report.random_output_change is not None


def _skip_unet(rank: int = 8) -> onnx.ModelProto:
    """x [N, 16, H, W] → stride-2 Conv (exactly rank ``rank``) → nearest Resize ×2 → Concat with x → 1x1 Conv:
    runs at even H, W only, so a probe with its dynamic dims at 1 fails (as a UNet's does)."""
    rng = np.random.default_rng(5)
    down = (rng.standard_normal((32, rank)) @ rng.standard_normal((rank, 16 * 9))).reshape(32, 16, 3, 3)
    head = rng.standard_normal((8, 48, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "down"], ["d"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["d", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Concat", ["u", "x"], ["c"], axis=1),
             helper.make_node("Conv", ["c", "head"], ["y"], kernel_shape=[1, 1])]
    inits = [numpy_helper.from_array(down.astype(np.float32), "down"),
             numpy_helper.from_array(head.astype(np.float32), "head"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    from conftest import make_model

    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, "H", "W"])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, "H", "W"])], inits)


def test_a_model_that_does_not_run_at_dims_of_1_is_checked_at_a_size_it_runs_at():
    """A UNet with dynamic H and W fails at 1x1; it was written with "the output is not run-checked" and no
    random-input figure. It is now probed at the calibration arrays' sizes, else at 64 (then 224)."""
    from onnx_alds import compress
    from onnx_alds.inputs import InputSet

    result = compress(_skip_unet(), keep_params=0.8)
    note = next(note for note in result.report.notes
                if "could not run the model with its dynamic dims set to 1" in note)
    assert "it ran at x:1x16x64x64 (its dynamic dims after the first set to 64)" in note
    assert result.report.random_output_change is not None and result.report.random_output_change < 1e-4
    assert result.report.random_sizes == "at x:1x16x64x64, dynamic dims set to 64, where the pre-check ran"
    calibration = InputSet({"x": np.random.default_rng(0).standard_normal((8, 16, 12, 20)).astype(np.float32)})
    result = compress(_skip_unet(), keep_params=0.8, calibration=calibration)
    assert any("it ran at x:1x16x12x20 (the calibration arrays' sizes)" in note for note in result.report.notes)
    # the MACs too are counted at the arrays' sizes under a params budget (they were "? -> ?")
    assert result.report.macs_before is not None and result.report.macs_before > 0


def test_the_probe_skips_sizes_where_a_tensor_would_be_empty_or_huge(tmp_path):
    """A pool of kernel 65 fails at 1 and, at 64, ONNX Runtime divided by the empty output and killed the
    process (SIGFPE, no message); attention over every pixel asked for 10 GB at 224. Sizes where shape
    inference finds an empty or very large tensor are not run: the pool model is checked at 224."""
    import subprocess
    import sys

    from conftest import make_model
    from onnx_alds.checks import _unsafe_sizes

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["a"], ["p"], kernel_shape=[65, 65]),
             helper.make_node("Conv", ["p", "w1"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, None, None])],
                       [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w0"),
                        numpy_helper.from_array(rng.standard_normal((8, 16, 1, 1)).astype(np.float32), "w1")])
    assert _unsafe_sizes(model, {"x": (1, 3, 64, 64)}) == "tensor 'p' would be empty, 1x16x0x0"
    assert _unsafe_sizes(model, {"x": (1, 3, 224, 224)}) is None
    huge = make_model([helper.make_node("MatMul", ["x", "x"], ["y"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", "S"])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", "S"])], [])
    assert _unsafe_sizes(huge, {"x": (1, 64, 64)}) is None
    assert _unsafe_sizes(huge, {"x": (1, 20000, 20000)}) == "tensor 'y' would hold 4e+08 values"

    def compressed(proto: onnx.ModelProto, name: str) -> str:
        """compress's output (a process of its own: a SIGFPE would end it, not the tests), exit 0 asserted."""
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
        done = subprocess.run([sys.executable, "-m", "onnx_alds.cli", "compress", str(tmp_path / f"{name}.onnx"),
                               "-o", str(tmp_path / f"{name}.out.onnx"), "--keep-params", "0.5", "--rank-multiple",
                               "1"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    assert "it ran at x:1x3x224x224 (its dynamic dims after the first set to 224)" in compressed(model, "pool")
    # a 2x2 pool: empty at dims of 1 already, where the first probe ran it (SIGFPE, exit 136)
    pooled = onnx.ModelProto()
    pooled.CopyFrom(model)
    pool = next(node for node in pooled.graph.node if node.op_type == "AveragePool")
    pool.op_type = "MaxPool"
    pool.attribute[0].ints[:] = [2, 2]
    assert "(not run: tensor 'p' would be empty, 1x16x0x0); it ran at x:1x3x64x64" in compressed(pooled, "pool2")


def test_macs_of_layers_sized_by_the_values_say_so():
    """Experts fed the tokens a router picks (NonZero/TopK) got their MACs from one run on zero inputs, where
    every token went to the same expert: the others counted 0 MACs and a --keep-flops budget never reached
    them, and nothing said the figures depend on the data."""
    from conftest import make_model
    from onnx_alds import compress

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["picked"]),
             helper.make_node("NonZero", ["picked"], ["where"]),
             helper.make_node("Squeeze", ["where", "axes0"], ["rows"]),
             helper.make_node("Gather", ["x", "rows"], ["routed"], axis=0),
             helper.make_node("MatMul", ["routed", "expert"], ["y"], name="expert"),
             helper.make_node("MatMul", ["x", "dense"], ["z"], name="dense")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 32])],
                       [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "expert"),
                        numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "dense"),
                        numpy_helper.from_array(np.array([1]), "axes"), numpy_helper.from_array(np.array([0]), "axes0"),
                        numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    notes = compress(model, keep_params=0.8, input_shapes={"x": (4, 32)}).report.notes
    assert any("the MACs of 1 layer(s) (first: 'expert') depend on the values of the inputs (their input's "
               "size follows a NonZero" in note for note in notes)


def test_calibration_arrays_with_an_empty_past_count_the_macs():
    """A KV cache's past of length 0 (the first step's) in the calibration arrays: the MAC count at the arrays'
    sizes said "--input-shape gives 1x0x16 for 'past'; every dim must be at least 1", no flag given."""
    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Concat", ["past", "x"], ["kv"], axis=1),
             helper.make_node("ReduceSum", ["kv", "axes"], ["z"]),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 32]),
                               helper.make_tensor_value_info("past", TensorProto.FLOAT, ["N", "P", 32])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 32]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1, 32])],
                       [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w"),
                        numpy_helper.from_array(np.array([1]), "axes")])
    calibration = InputSet({"x": rng.standard_normal((64, 3, 32)).astype(np.float32),
                            "past": np.zeros((64, 0, 32), np.float32)})
    report = compress(model, keep_flops=0.8, calibration=calibration).report
    assert report.macs_before == 3 * 32 * 32
    assert any("MACs counted at the calibration arrays' sizes (x:1x3x32 past:1x0x32)" in note for note in report.notes)


def test_empty_axes_are_found_in_bodies_and_a_static_empty_past_still_runs():
    """A pool inside an If branch still killed the process at dims of 1 (the check read the main graph only);
    a static KV cache of past length 0, which ONNX Runtime runs, was refused as if it had failed."""
    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.checks import _unsafe_sizes, value_sized_tensors

    rng = np.random.default_rng(0)
    branch = helper.make_graph([helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2])], "then", [],
                               [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 16, "h", "w"])])
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=helper.make_graph(
                 [helper.make_node("Identity", ["a"], ["q"])], "else", [],
                 [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N", 16, "h", "w"])]))]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, "h", "w"])],
                       [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w"),
                        numpy_helper.from_array(np.array(True), "cond")])
    assert _unsafe_sizes(model, {"x": (1, 3, 1, 1)}, largest=None) == "tensor 'p' would be empty, 1x16x0x0"
    past = make_model([helper.make_node("Concat", ["past", "x"], ["kv"], axis=1),
                       helper.make_node("MatMul", ["kv", "w"], ["y"], name="proj")],
                      [helper.make_tensor_value_info("past", TensorProto.FLOAT, [1, 0, 32]),
                       helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 32])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32])],
                      [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w")])
    result = compress(past, keep_params=0.8)
    assert result.report.random_output_change is not None
    # a table cut to a computed length and indexed by positions is of the positions' size: no MACs note
    rotary = make_model([helper.make_node("ReduceMax", ["pos"], ["top"], keepdims=1),
                         helper.make_node("Add", ["top", "one"], ["end"]),
                         helper.make_node("Slice", ["table", "zero", "end"], ["cut"]),
                         helper.make_node("Gather", ["cut", "pos"], ["rows"], axis=0),
                         helper.make_node("MatMul", ["rows", "w"], ["y"], name="proj")],
                        [helper.make_tensor_value_info("pos", TensorProto.INT64, [8])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])],
                        [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "table"),
                         numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w"),
                         numpy_helper.from_array(np.array([1]), "one"), numpy_helper.from_array(np.array([0]), "zero")])
    sized = value_sized_tensors(rotary, from_inputs=True)
    assert "cut" in sized and "rows" not in sized and "y" not in sized


def test_macs_at_calibration_sizes_the_model_cannot_run_at_name_the_run_failure():
    """Calibration clips too short for a strided Conv front-end: --keep-flops said "neither shape inference nor an
    ONNX Runtime run gives their shapes; check --input-shape", hiding that the model fails at those sizes."""
    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.errors import UnsupportedModelError
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Unsqueeze", ["x", "one"], ["x3"]),
             helper.make_node("Conv", ["x3", "k"], ["c"], strides=[5], name="front"),
             helper.make_node("Reshape", ["c", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["y"], name="head")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                       [numpy_helper.from_array(np.array([1]), "one"),
                        numpy_helper.from_array(np.array([0, -1]), "flat"),
                        numpy_helper.from_array(rng.standard_normal((4, 1, 10)).astype(np.float32), "k"),
                        numpy_helper.from_array(rng.standard_normal((12, 8)).astype(np.float32), "w")])
    short = InputSet({"x": rng.standard_normal((16, 10)).astype(np.float32)})
    with pytest.raises(UnsupportedModelError) as caught:
        compress(model, keep_flops=0.8, calibration=short)
    message = str(caught.value)
    assert "ONNX Runtime does not run the model at the calibration arrays' sizes (x:1x10: " in message
    run_failure = message.split("(x:1x10: ")[1]
    assert "head" in run_failure and "MatMul" in run_failure and "check --input-shape" not in message
    fitting = InputSet({"x": rng.standard_normal((16, 20)).astype(np.float32)})  # 20 samples: 3 frames, as w expects
    assert compress(model, keep_flops=0.8, calibration=fitting).report.macs_before == 4 * 3 * 10 + 12 * 8


def test_the_random_check_runs_at_sizes_the_tool_chooses_where_dims_are_dynamic():
    """A data-free model with a dynamic sequence axis that runs at 1 (the probe's size) had no random-input check
    ("give them with --input-shape"), so the "outputs moved far" warning never fired without that flag. It now runs
    at 64 where the model runs there, else at 1, and the report says at which sizes."""
    from conftest import make_model
    from onnx_alds import compress

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w")
    sequence = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 32])], [weight])
    report = compress(sequence, keep_params=0.3, rank_multiple=1).report
    assert report.random_output_change is not None and report.random_output_change > 0.3  # a random weight cut deep
    assert report.random_sizes == "at x:1x64x32, dynamic dims set to 64"
    assert "outputs on 4 random inputs (not real data) at x:1x64x32, dynamic dims set to 64 (give --input-shape" \
        in report.format()
    one_step = make_model([helper.make_node("Reshape", ["x", "flat"], ["f"]),  # T must be 1: runs at 1 only
                           helper.make_node("MatMul", ["f", "w"], ["y"], name="mm")],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
                          [weight, numpy_helper.from_array(np.array([0, 32]), "flat")])
    report = compress(one_step, keep_params=1.0, rank_multiple=1).report
    assert report.random_output_change is not None and report.random_output_change < 1e-5  # nothing cut
    assert report.random_sizes == "at x:1x1x32, dynamic dims set to 1"
    given = compress(sequence, keep_params=0.3, rank_multiple=1, input_shapes={"x": (1, 5, 32)}).report
    assert given.random_output_change is not None and given.random_sizes is None  # the user's sizes: no words


def test_the_random_check_falls_back_to_the_probe_size_where_dims_must_fit_together():
    """Inputs whose dynamic dims must fit together (a mask as long as past + new tokens) run at no size the tool
    sets for all dims alike but 1, where the probe ran (the mask's length given): the check runs there."""
    from conftest import make_model
    from onnx_alds import compress

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Concat", ["past", "x"], ["kv"], axis=1),
             helper.make_node("Add", ["kv", "mask"], ["masked"]),
             helper.make_node("MatMul", ["masked", "w"], ["y"], name="mm")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 32]),
                               helper.make_tensor_value_info("past", TensorProto.FLOAT, ["N", "P", 32]),
                               helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "L", 1])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L", 32])],
                       [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w")])
    report = compress(model, keep_params=0.5, rank_multiple=1,
                      input_shapes={"mask": (1, 2, 1)}).report  # (L = P + T = 2 at the probe's 1 and 1)
    assert report.random_output_change is not None and report.random_output_change > 0.1
    assert report.random_sizes == "at x:1x1x32 past:1x1x32, dynamic dims set to 1"


def test_calibration_sizes_keep_a_first_dim_the_model_fixes():
    """An input [3, N, 64] (a fixed first dim that is no batch) calibrated on arrays [6, 16, 64]: the arrays'
    sizes set the first dim to 1 ("--input-shape gives 1x16x64 for 'x', but the model declares it [3, N, 64]",
    a flag not given)."""
    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 2)) @ rng.standard_normal((2, 48))).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, "N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "N", 48])],
                       [numpy_helper.from_array(weight, "W")])
    calibration = InputSet({"x": rng.standard_normal((6, 16, 64)).astype(np.float32)})
    report = compress(model, keep_flops=0.8, calibration=calibration, rank_multiple=1).report
    assert report.macs_before == 3 * 16 * 64 * 48
    assert any("MACs counted at the calibration arrays' sizes (x:3x16x64)" in note for note in report.notes)


def test_the_random_check_chooses_no_size_shape_inference_cannot_bound():
    """At a size the tool chooses and no run has tried, a size computed through ops shape inference cannot follow
    can empty a tensor (ONNX Runtime's InstanceNormalization then crashed the process), and attention over every
    pixel held 4.5 GB: such models are checked at 1, where the pre-check ran."""
    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.checks import RANDOM_CHECK_ELEMENTS, _sized_for_random_check

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w")
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "one"], ["t"]),
             helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT), helper.make_node("Floor", ["tf"], ["tl"]),
             helper.make_node("Cast", ["tl"], ["end"], to=TensorProto.INT64),  # (a length inference cannot follow)
             helper.make_node("Slice", ["x", "zero", "end", "one"], ["cut"]),
             helper.make_node("MatMul", ["cut", "w"], ["y"], name="mm")]
    computed = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 32])],
                          [weight, numpy_helper.from_array(np.array([1]), "one"),
                           numpy_helper.from_array(np.array([0]), "zero")])
    assert not _sized_for_random_check(computed, {"x": (1, 64, 32)})
    report = compress(computed, keep_params=0.5, rank_multiple=1).report
    assert report.random_output_change is not None and report.random_sizes == "at x:1x1x32, dynamic dims set to 1"
    wide = make_model([helper.make_node("Expand", ["x", "to"], ["e"]), helper.make_node("ReduceSum", ["e", "axes"],
                                                                                        ["s"], keepdims=0),
                       helper.make_node("MatMul", ["s", "w"], ["y"], name="mm")],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 32, 1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 32])],
                      [weight, numpy_helper.from_array(np.array([1, 1, 1, 1 << 15]), "to"),
                       numpy_helper.from_array(np.array([3]), "axes")])
    assert 64 * 32 * (1 << 15) > RANDOM_CHECK_ELEMENTS and not _sized_for_random_check(wide, {"x": (1, 64, 32, 1)})
    assert _sized_for_random_check(wide, {"x": (1, 8, 32, 1)})


def test_the_random_check_sizes_if_bodies_too():
    """An If branch expanding to 8·T³ columns: the size check read the main graph only (the If's output a scalar)
    and chose 64, where ONNX Runtime asked for 17 GB and compress failed with an out-of-memory error."""
    from conftest import make_model
    from onnx_alds.checks import _sized_for_random_check

    def model(body_op: str) -> onnx.ModelProto:
        branch = helper.make_graph([helper.make_node(body_op, ["h"], ["a"]),
                                    helper.make_node("Cast", ["a"], ["b"], to=TensorProto.FLOAT),
                                    helper.make_node("ReduceSum", ["b"], ["o"], keepdims=0)], "branch", [],
                                   [helper.make_tensor_value_info("o", TensorProto.FLOAT, [])])
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                 helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                 helper.make_node("Greater", ["s", "zero"], ["c"]),
                 helper.make_node("If", ["c"], ["i"], then_branch=branch, else_branch=branch),
                 helper.make_node("Add", ["h", "i"], ["y"])]
        return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 32])],
                          [numpy_helper.from_array(np.eye(32, dtype=np.float32), "w"),
                           numpy_helper.from_array(np.float32(0), "zero")])

    assert _sized_for_random_check(model("Relu"), {"x": (1, 64, 32)})
    assert not _sized_for_random_check(model("NonZero"), {"x": (1, 64, 32)})  # a size only a run tells


def test_the_random_check_counts_the_labels_that_changed_where_no_output_is_a_float_tensor():
    """A classifier exported with only its label (ArgMax): the check said only that it had no float output, and
    a data-free result that changed most of the labels was written without a figure or a warning."""
    from conftest import make_model, run_model
    from onnx_alds import compress
    from onnx_alds.inputs import random_inputs

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 32))
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["scores"], name="mm"),
                        helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                       [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
                       [numpy_helper.from_array(weight.astype(np.float32), "w")])
    x = random_inputs(model, 4, input_shapes={"x": (1, 32)}, seed=0).arrays["x"]  # (the check's inputs)
    for keep, warned in ((0.9, False), (0.3, True)):
        result = compress(model, keep_params=keep, rank_multiple=1)
        report = result.report
        changed = int(np.count_nonzero(run_model(model, {"x": x})[0] != run_model(result.model, {"x": x})[0]))
        assert report.random_output_change is None and report.random_samples == 4
        assert report.random_changed_values == (("label", changed, 4),)
        assert f"labels on 4 random inputs (not real data): {changed} of 4 values of output 'label'" in report.format()
        assert not any("not compared on random inputs" in note for note in report.notes)
        assert any(f"{changed} of 4 values of output 'label' changed" in w for w in report.warnings) == warned
        assert (changed == 4) == warned  # (only where every label changed: 2 of 4 at 0.9, all 4 at 0.3)


def test_the_random_check_compares_a_zipmap_as_the_floats_it_holds():
    """A scikit-learn classifier's label and ZipMap (a sequence of maps) outputs: no float tensor output, so no
    figure, though the maps hold the probabilities."""
    from conftest import run_model
    from onnx_alds import compress
    from onnx_alds.inputs import random_inputs
    from test_classifier_outputs import classifier

    model = classifier(first="label", strings=True, zipmap=True)
    model.graph.output.remove(next(o for o in model.graph.output if o.name == "logits"))
    result = compress(model, keep_params=0.5, rank_multiple=1)
    x = random_inputs(model, 4, input_shapes={"x": (1, 64)}, seed=0).arrays["x"]
    probabilities = [np.array([[row[key] for key in sorted(row)] for row in run_model(m, {"x": x})[1]])
                     for m in (model, result.model)]
    expected = np.mean(np.linalg.norm(probabilities[1] - probabilities[0], axis=1)
                       / np.linalg.norm(probabilities[0], axis=1))
    assert result.report.random_output_change == pytest.approx(expected, rel=1e-4)
    assert [row[0] for row in result.report.random_changed_values] == ["label"]



@pytest.mark.parametrize("dims", [["N", 32], ["N", "T", 32]])
def test_random_inputs_that_do_not_run_leave_a_note_naming_the_failure(dims):
    """An integer input used as a Reshape size: the probe's zeros run, random values do not. The note names ONNX
    Runtime's failure, and at sizes the tool chose the last one tried (no test covered a check where every try
    fails)."""
    from conftest import make_model
    from onnx_alds import compress

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Concat", ["n", "minus"], ["shape"], axis=0),
             helper.make_node("Reshape", ["h", "shape"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims),
                               helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["A", "B"])],
                       [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w"),
                        numpy_helper.from_array(np.array([-1]), "minus")])
    report = compress(model, keep_params=0.5, rank_multiple=1).report
    assert report.random_output_change is None
    note = next(note for note in report.notes if note.startswith("the outputs were not compared on random inputs"))
    assert "Reshape node 'Reshape_2': " in note and "cannot be reshaped to the requested shape" in note
    assert ("the sizes the tool chose (last at x:1x1x32, dynamic dims set to 1: " in note) == (len(dims) == 3)


def test_a_dim_named_by_an_expression_of_other_dims_is_sized_to_its_value():
    """A decoder with a cache: the attention mask's dim is named 'past_sequence+sequence', as Hugging Face
    exports name it. Every dynamic dim was set alike (1, then 64, 224), the mask never fitted the cache and the
    new tokens together, and the output was written not run-checked."""
    from conftest import make_model
    from onnx_alds import compress
    from onnx_alds.model_io import _dim_expression, graph_inputs, sized_inputs

    assert [_dim_expression(text, {"a": 3, "b": 5}) for text in
            ("a+b", "a + 1", "2*b", "b - a", "a-b", "a*", "x+1", "a b")] == [8, 4, 10, 2, None, None, None, None]
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 8)).astype(np.float32)
    model = make_model([helper.make_node("Concat", ["past", "x"], ["all"], axis=1),
                        helper.make_node("MatMul", ["all", "w"], ["h"], name="mm"),
                        helper.make_node("Unsqueeze", ["mask", "one"], ["m3"]),
                        helper.make_node("MatMul", ["m3", "h"], ["y"])],  # (the mask's length must be P + S)
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8]),
                        helper.make_tensor_value_info("past", TensorProto.FLOAT, ["batch", "past_sequence", 8]),
                        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "past_sequence+sequence"])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 8])],
                       [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([1], np.int64), "one")])
    assert sized_inputs(graph_inputs(model), 64, given={"x": (1, 5, 8)}) == {
        "x": (1, 5, 8), "past": (1, 64, 8), "mask": (1, 69)}
    from onnx_alds.model_io import resolve_input_shapes  # (--input-shape for two inputs sizes the third)

    shapes, notes = resolve_input_shapes(model, {"x": (1, 5, 8), "past": (1, 3, 8)}, batch_default=1)
    assert shapes["mask"] == (1, 8) and any("past_sequence+sequence=8" in note for note in notes)
    _, notes = resolve_input_shapes(model, {"x": (1, 5, 8), "past": (1, 3, 8), "mask": (1, 9)}, batch_default=1)
    assert any("dim 'past_sequence+sequence' is given as 9, where the sizes given for the names in it make 8" in note
               for note in notes)
    renamed = onnx.ModelProto.FromString(model.SerializeToString())  # (dims named with dots, in another script)
    for value, dims in zip(renamed.graph.input, (["b", "σ.len", 8], ["b", "past.len", 8], ["b", "past.len + σ.len"])):
        for dim, name in zip(value.type.tensor_type.shape.dim, dims):
            if isinstance(name, str):
                dim.dim_param = name
    assert sized_inputs(graph_inputs(renamed), 64)["mask"] == (1, 128)
    report = compress(model, keep_params=0.9, rank_multiple=1).report
    assert not any("not run-checked" in note for note in report.notes)
    assert report.random_output_change is not None and "past:1x64x8 mask:1x128" in report.random_sizes


def test_labels_of_a_value_sized_output_whose_size_changed_count_as_changed():
    """NonZero's indices: a random input whose count of non-zeros changed was left out of the label count, so
    "1 of 58 values changed" where 3 of the 4 inputs' outputs no longer had the original's size."""
    from conftest import make_model, run_model
    from onnx_alds import compress
    from onnx_alds.inputs import random_inputs

    weight = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                        helper.make_node("Greater", ["h", "zero"], ["positive"]),
                        helper.make_node("NonZero", ["positive"], ["nz"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                       [helper.make_tensor_value_info("nz", TensorProto.INT64, [2, "K"])],
                       [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.float32(0), "zero")])
    result = compress(model, keep_params=0.5, rank_multiple=1)
    x = random_inputs(model, 4, input_shapes={"x": (1, 16)}, seed=0).arrays["x"]
    changed = compared = reshaped = 0
    for row in x:
        y, z = (run_model(m, {"x": row[None]})[0] for m in (model, result.model))
        size = max(y.size, z.size)
        reshaped += y.shape != z.shape
        changed += int(np.count_nonzero(y != z)) if y.shape == z.shape else size
        compared += size
    assert reshaped  # (the test needs an input whose count changed)
    assert result.report.random_changed_values == (("nz", changed, compared),)


def test_products_of_run_time_tensors_are_not_counted_as_layers_in_the_summary():
    """'layers factorized: 13 of 19' for a decoder of 15 layers: the 4 attention products Q·Kᵀ and P·V, which
    have no weight, were counted among the layers."""
    from conftest import make_model
    from onnx_alds import compress

    weight = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["q"], name="proj"),
                        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
                        helper.make_node("MatMul", ["q", "xt"], ["y"], name="scores")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4])],
                       [numpy_helper.from_array(weight, "w")])
    text = compress(model, keep_params=0.5, rank_multiple=1).report.format()
    assert "layers factorized: 1 of 1 (and 1 product of run-time tensors, with no weight), " in text
