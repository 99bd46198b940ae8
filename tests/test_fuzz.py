"""tools/fuzz.py: the classifier can fail (unit tests), mutants are reproducible, and a short seeded run
against the package finds no FAILURE outcome (hangs, tracebacks, invalid or refused outputs, changed I/O)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import onnx
import pytest

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_under_test", ROOT / "tools" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_under_test"] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()


def _seed(name: str) -> onnx.ModelProto:
    return fuzz.SEEDS[name]()


# ------------------------------------------------------------------ seeds and mutants


@pytest.mark.parametrize("name", list(fuzz.SEEDS))
def test_seed_is_a_valid_model_that_runs(name):
    model = _seed(name)
    onnx.checker.check_model(model, full_check=True)
    session = fuzz._session(model.SerializeToString())
    feeds = fuzz.make_feeds(model)
    assert feeds is not None
    session.run(None, feeds)


def test_mutants_are_deterministic_and_their_reproducers_rebuild_them():
    kinds = set()
    for index in range(60):
        first = fuzz.make_mutant(11, index, cli_rate=0.5)
        second = fuzz.make_mutant(11, index, cli_rate=0.5)
        assert first.data == second.data and first.meta() == second.meta()
        relaxed = [m for m in first.mutations if m.startswith("graph output dims made symbolic")]
        assert 1 <= len(first.mutations) - len(relaxed) <= 3 and len(relaxed) <= 1
        text = fuzz.reproducer_text(first.meta(), fuzz.result(fuzz.FAILURE, "TRACEBACK", "ValueError", "", "x"), 11)
        assert text.startswith("# Fuzz reproducer: TRACEBACK ValueError")
        assert fuzz.reproducer_bytes(text) == first.data, f"mutant {index}: {first.mutations}"
        kinds.add(first.call["api"])
    assert kinds == {"analyze", "compress"}


def test_call_code_and_cli_arguments_match():
    call = {"api": "compress", "kwargs": {"keep_flops": 0.5, "method": "svd", "rank_multiple": 16,
                                          "order": "pointwise-first", "bias_correction": True},
            "calibration": {"random": 4, "seed": 0}}
    assert fuzz.call_code(call) == ("onnx_alds.compress(MODEL, keep_flops=0.5, method='svd', rank_multiple=16, "
                                    "order='pointwise-first', bias_correction=True, "
                                    "calibration=load_inputs(onnx.load(MODEL), random=4, seed=0))")
    assert fuzz.cli_args(call, "m.onnx", "o.onnx") == [
        "compress", "m.onnx", "-o", "o.onnx", "--keep-flops", "0.5", "--method", "svd", "--order", "pointwise-first",
        "--rank-multiple", "16", "--calibration-random", "4", "--bias-correction"]


# ------------------------------------------------------------------ the classifier can fail


def _raise_inside(exc):
    raise exc


def test_a_raised_value_error_is_a_traceback():
    try:
        _raise_inside(ValueError("boom"))
    except ValueError as exc:
        outcome = fuzz.classify_exception(exc)
    assert outcome["outcome"] == fuzz.FAILURE and outcome["kind"] == "TRACEBACK" and outcome["exc"] == "ValueError"


def test_a_clean_onnx_alds_error_is_a_clean_error_and_an_empty_one_is_not():
    from onnx_alds.errors import BudgetError, ModelLoadError

    try:
        _raise_inside(BudgetError("--keep-params 2 is out of range"))
    except BudgetError as exc:
        assert fuzz.classify_exception(exc)["outcome"] == fuzz.CLEAN_ERROR
    try:  # a line break in a message (a tensor name holding one) reads as an escape: still one line
        _raise_inside(ModelLoadError("first line\nsecond line"))
    except ModelLoadError as exc:
        assert str(exc) == "first line\\nsecond line"
        assert fuzz.classify_exception(exc)["outcome"] == fuzz.CLEAN_ERROR
    try:
        _raise_inside(ModelLoadError(""))
    except ModelLoadError as exc:
        outcome = fuzz.classify_exception(exc)
    assert outcome["outcome"] == fuzz.FAILURE and outcome["kind"] == "BAD_MESSAGE"


def test_a_clean_error_from_the_package_names_its_frame():
    import onnx_alds
    from onnx_alds.errors import OnnxAldsError

    with pytest.raises(OnnxAldsError) as info:
        onnx_alds.compress(_seed("conv1d_bias"), keep_params=2.0)
    outcome = fuzz.classify_exception(info.value)
    assert outcome["outcome"] == fuzz.CLEAN_ERROR
    assert outcome["frame"].startswith("onnx_alds/")


def test_innermost_frame_is_the_deepest_package_frame():
    pkg = fuzz._package_dir()
    frames = [("/x/tools/fuzz.py", 1, "run"), (pkg + "api.py", 10, "compress"), (pkg + "rewrite.py", 20, "_pair"),
              ("/usr/lib/numpy/core.py", 5, "reshape")]
    assert fuzz.innermost_frame(frames) == "onnx_alds/rewrite.py:20 _pair"
    assert fuzz.frame_key("onnx_alds/rewrite.py:20 _pair") == "onnx_alds/rewrite.py:_pair"
    assert fuzz.innermost_frame([("/x/y.py", 1, "f")]) == ""


def test_a_known_invalid_model_is_invalid_output():
    model = _seed("conv1d_bias")
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].input[1] = "missing_weight"
    outcome = fuzz.check_output(model, broken)
    assert outcome["outcome"] == fuzz.FAILURE and outcome["kind"] == "INVALID_OUTPUT"


def test_changed_graph_outputs_are_io_changed():
    model = _seed("conv1d_bias")
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    changed.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    assert fuzz.check_output(model, changed)["kind"] == "IO_CHANGED"


def test_a_model_onnx_runtime_refuses_is_ort_refused():
    model = _seed("conv1d_bias")
    custom = onnx.ModelProto()
    custom.CopyFrom(model)
    custom.graph.node[0].domain, custom.graph.node[0].op_type = "custom.fuzz", "Foo"
    custom.opset_import.add(domain="custom.fuzz", version=1)
    assert fuzz.check_output(model, custom)["kind"] == "ORT_REFUSED"


def test_different_outputs_without_factorization_are_wrong_values():
    model = _seed("gemm_full")
    other = onnx.ModelProto()
    other.CopyFrom(model)
    fuzz.replace_tensor(other, "w", fuzz.W((24, 32), 99))
    assert fuzz.check_output(model, other) is None  # factorized layers may differ ...
    assert fuzz.check_output(model, other, dense_only=True)["kind"] == "WRONG_VALUES"  # ... dense ones may not


def test_the_same_model_is_ok_and_not_a_model_is_invalid():
    model = _seed("conv2d_chain")
    assert fuzz.check_output(model, model) is None
    assert fuzz.check_output(model, "model")["kind"] == "INVALID_OUTPUT"


def test_cli_classification():
    assert fuzz.classify_cli(0, "")["outcome"] == fuzz.OK
    assert fuzz.classify_cli(1, "error: cannot read 'm.onnx'\n")["outcome"] == fuzz.CLEAN_ERROR
    assert fuzz.classify_cli(1, "error: x\n", output_written=True)["kind"] == "CLI_STDERR"
    assert fuzz.classify_cli(1, "WARNING: something\nerror: x\n")["kind"] == "CLI_STDERR"
    pkg = fuzz._package_dir()
    traceback_text = (f'Traceback (most recent call last):\n  File "{pkg}cli.py", line 3, in main\n'
                      f'  File "{pkg}layers.py", line 97, in ensure_node_names\n'
                      "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff\n")
    outcome = fuzz.classify_cli(1, traceback_text)
    assert outcome["kind"] == "CLI_STDERR" and outcome["exc"] == "UnicodeDecodeError"
    assert outcome["frame"] == "onnx_alds/layers.py:97 ensure_node_names"
    assert fuzz.classify_cli(2, "usage: ...\n")["kind"] == "CLI_STDERR"
    assert fuzz.classify_cli(-11, "")["kind"] == "CRASH"


def test_grouping_blurs_names_and_numbers():
    a = {"kind": "ORT_REFUSED", "exc": "Fail", "frame": "",
         "message": "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. "
                    "Name:'conv.enc' Status Message: X num_dims does not match W num_dims. X: {1,8,32} W: {16}"}
    b = dict(a, message=a["message"].replace("conv.enc", "c2.enc").replace("{16}", "{24}"))
    assert fuzz.group_key(a) == fuzz.group_key(b)
    t1 = {"kind": "TRACEBACK", "exc": "KeyError", "frame": "onnx_alds/model_io.py:144 graph_inputs", "message": "0"}
    t2 = dict(t1, frame="onnx_alds/model_io.py:177 graph_inputs", message="'x'")
    assert fuzz.group_key(t1) == fuzz.group_key(t2)


# ------------------------------------------------------------------ the worker pool catches hangs and crashes


def test_pool_classifies_hangs_crashes_tracebacks_and_returned_models():
    good = _seed("conv1d_bias")
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    bad.graph.node[0].input[1] = "missing_weight"
    data = good.SerializeToString()
    tasks = [
        {"data": data, "call": {"api": "_test_raise"}},
        {"data": data, "call": {"api": "_test_clean"}},
        {"data": data, "call": {"api": "_test_sleep", "seconds": 30}},
        {"data": data, "call": {"api": "_test_crash"}},
        {"data": data, "call": {"api": "_test_return", "model": bad.SerializeToString()}},
        {"data": data, "call": {"api": "_test_return", "model": data}},
        {"data": data, "call": {"api": "analyze", "kwargs": {}}},
    ]
    outcomes = fuzz.run_tasks(tasks, jobs=2, timeout=2.0)
    got = [(o["outcome"], o["kind"]) for o in outcomes]
    assert got == [(fuzz.FAILURE, "TRACEBACK"), (fuzz.CLEAN_ERROR, ""), (fuzz.FAILURE, "HANG"), (fuzz.FAILURE, "CRASH"),
                   (fuzz.FAILURE, "INVALID_OUTPUT"), (fuzz.OK, ""), (fuzz.OK, "")], outcomes
    assert outcomes[2]["message"].startswith("timeout")


def test_cli_run_of_a_truncated_file_is_one_error_line(tmp_path):
    data = _seed("conv1d_bias").SerializeToString()[:40]
    model = tmp_path / "m.onnx"
    model.write_bytes(data)
    outcome = fuzz.run_cli({"api": "compress", "kwargs": {"keep_params": 0.5}, "calibration": None}, str(model),
                           str(tmp_path), 60.0, None)
    assert outcome["outcome"] == fuzz.CLEAN_ERROR, outcome
    assert outcome["message"].startswith("error: ")


# ------------------------------------------------------------------ the short seeded run


def test_short_seeded_run_finds_no_failures(tmp_path):
    summary = fuzz.run_fuzz(seed=0, mutants=500, jobs=2, timeout=15.0, cli_rate=0.0, out=tmp_path / "fuzz")
    assert sum(summary["outcomes"].values()) == 500
    assert summary["outcomes"][fuzz.OK] > 0 and summary["outcomes"][fuzz.CLEAN_ERROR] > 0
    assert summary["outcomes"][fuzz.FAILURE] == 0, "\n" + fuzz.format_summary(summary)
