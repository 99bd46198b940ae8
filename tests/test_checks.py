"""The input and output checks of onnx_alds.checks."""

import numpy as np
import pytest


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
    assert "at the input shapes given" in note and "fit together" in note and "set to 1" not in note
