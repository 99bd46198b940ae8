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
    from onnx_alds.errors import ModelLoadError

    def out_of_threads(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: "
                           "pthread_create failed: Resource temporarily unavailable")

    monkeypatch.setattr(runtime, "make_session", out_of_threads)
    with pytest.raises(ModelLoadError, match="could not start its threads .* not the model at fault"):
        check_input_model(small_cnn(width=8))
