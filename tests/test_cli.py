"""The command line: exit codes, one-line errors, no partial output, files written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_alds.cli import build_parser, main


EARLIER_JSON = '{"versions": {"onnx_alds": "0.1"}}'  # an earlier onnx-alds JSON output: replaced, not refused


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_compress_writes_model_and_report(cnn_path, tmp_path, capsys):
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    code, stdout, _ = run_cli("compress", cnn_path, "-o", out, "--keep-flops", "0.5", "--report", report,
                           "--rank-multiple", "1", capsys=capsys)  # the small test CNN has 8-16 channels
    assert code == 0
    assert "achieved" in stdout and "max error" in stdout
    onnx.checker.check_model(str(out), full_check=True)
    data = json.loads(report.read_text())
    assert data["target"] == "flops" and data["requested"] == 0.5
    assert abs(data["achieved"] - 0.5) < 0.005
    assert {"name", "op", "weight_shape", "groups", "rank", "params_before", "params_after", "macs_before",
            "macs_after", "error", "skip_reason"} <= set(data["layers"][0])
    assert data["versions"]["onnx_alds"]


def test_truncated_file(cnn_path, tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(cnn_path.read_bytes()[:200])
    out = tmp_path / "out.onnx"
    code, _, err = run_cli("compress", broken, "-o", out, "--keep-flops", "0.5", capsys=capsys)
    assert_one_line_error(code, err, "broken.onnx", "truncated or not ONNX")
    assert not out.exists()


def test_not_onnx_file(tmp_path, capsys):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    out = tmp_path / "out.onnx"
    code, _, err = run_cli("compress", text, "-o", out, "--keep-params", "0.5", capsys=capsys)
    assert_one_line_error(code, err, "notes.onnx")
    assert not out.exists()


def test_missing_file(tmp_path, capsys):
    code, _, err = run_cli("analyze", tmp_path / "nope.onnx", capsys=capsys)
    assert_one_line_error(code, err, "does not exist")


def test_nothing_to_compress(tmp_path, capsys):
    from conftest import make_model
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [])
    path, out = tmp_path / "relu.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(path))
    code, _, err = run_cli("compress", path, "-o", out, "--keep-params", "0.5", capsys=capsys)
    assert_one_line_error(code, err, "nothing to compress")
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_keep_flops_out_of_range(cnn_path, tmp_path, capsys, value):
    out = tmp_path / "out.onnx"
    code, _, err = run_cli("compress", cnn_path, "-o", out, "--keep-flops", value, capsys=capsys)
    assert_one_line_error(code, err, f"--keep-flops {float(value)}", "(0, 1]")
    assert not out.exists()


def test_output_equal_to_input(cnn_path, capsys):
    before = cnn_path.read_bytes()
    code, _, err = run_cli("compress", cnn_path, "-o", cnn_path, "--keep-flops", "0.5", capsys=capsys)
    assert_one_line_error(code, err, "is one of the inputs")
    assert cnn_path.read_bytes() == before


def test_two_outputs_on_one_path_are_named_as_outputs(cnn_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, err = run_cli("compress", cnn_path, "-o", out, "--report", out, "--keep-flops", "0.5", capsys=capsys)
    assert_one_line_error(code, err, f"--report '{out}' is also the -o file; give each output its own path")
    assert not out.exists()


def test_outputs_inside_an_input_image_folder_are_refused(cnn_path, tmp_path, capsys):
    """An output named inside --calibration-images DIR overwrote an image (and next runs read it as data)."""
    import numpy as np
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(images / "a.png")
    before = (images / "a.png").read_bytes()
    code, _, err = run_cli("compress", cnn_path, "-o", images / "a.png", "--keep-flops", "0.5",
                           "--calibration-images", images, "--preprocess", "imagenet", "--resize", "32", "--crop", "32",
                           capsys=capsys)
    assert_one_line_error(code, err, f"-o '{images / 'a.png'}' is an image in the input folder")
    code, _, err = run_cli("sweep", cnn_path, "-o", images, "--keep-flops", "0.5", "--images", images,
                           "--preprocess", "imagenet", "--resize", "32", "--crop", "32", capsys=capsys)
    assert_one_line_error(code, err, f"-o '{images}' is the image folder whose images are read as data")
    assert (images / "a.png").read_bytes() == before and sorted(p.name for p in images.iterdir()) == ["a.png"]


def test_folders_named_like_option_values_are_no_input_folders(cnn_path, tmp_path, capsys, monkeypatch):
    """Every existing path among the option values counted as an input folder: with a folder 'alds' (the
    method) or 'imagenet' (the default --preprocess) in the working directory, -o inside it was refused."""
    monkeypatch.chdir(tmp_path)
    for name in ("alds", "imagenet"):
        (tmp_path / name).mkdir()
        code, _, err = run_cli("compress", cnn_path, "-o", f"{name}/small.onnx", "--keep-flops", "0.6",
                               "--rank-multiple", "4", "--method", "alds", capsys=capsys)
        assert code == 0, err
        assert (tmp_path / name / "small.onnx").exists()


def test_output_on_the_input_models_external_data_is_refused(tmp_path, capsys):
    """-o naming the file that holds the input model's weights would destroy the input (it did, with exit 0)."""
    from conftest import small_cnn
    from onnx_alds.errors import OutputPathError
    from onnx_alds.model_io import save_model

    model_path, data = tmp_path / "model.onnx", tmp_path / "weights.bin"
    onnx.save(small_cnn(width=16), str(model_path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    before = data.read_bytes()
    for flag in ("-o", "--report"):
        args = ["-o", str(tmp_path / "out.onnx"), "--report", str(data)] if flag == "--report" else ["-o", str(data)]
        code, _, err = run_cli("compress", str(model_path), *args, "--keep-flops", "0.6", "--rank-multiple", "4",
                               capsys=capsys)
        assert_one_line_error(code, err, f"{flag} '{data}' is the external data file of the input model")
    assert data.read_bytes() == before and onnx.load(str(model_path)) is not None
    # a model written with external data whose data file would be the input's: refused before writing
    onnx.save(small_cnn(width=16), str(model_path), save_as_external_data=True, location="out.onnx.data",
              size_threshold=0)
    with pytest.raises(OutputPathError, match="weights in '.*out.onnx.data', which is the external data file"):
        save_model(small_cnn(width=16), tmp_path / "out.onnx", protect=[model_path], external_data=True)


def test_impossible_target_message(cnn_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, err = run_cli("compress", cnn_path, "-o", out, "--keep-params", "0.001", capsys=capsys)
    assert_one_line_error(code, err, "smallest reachable ratio")
    assert not out.exists()


def test_usage_error_exits_2(cnn_path, tmp_path, capsys):
    code, _, _ = run_cli("compress", cnn_path, "-o", tmp_path / "o.onnx", capsys=capsys)  # no target
    assert code == 2
    code, _, _ = run_cli("compress", cnn_path, "-o", tmp_path / "o.onnx", "--keep-flops", "0.5", "--method", "x",
                         capsys=capsys)
    assert code == 2
    code, _, err = run_cli("validate", cnn_path, cnn_path, capsys=capsys)  # no input source: exit 1 before
    assert code == 2 and "one of the arguments --inputs --images --random is required" in err
    # an abbreviation is not a flag: `--rank 8` was read as --rank-multiple 8
    code, _, err = run_cli("compress", cnn_path, "-o", tmp_path / "o.onnx", "--keep-flops", "0.5", "--rank", "8",
                           capsys=capsys)
    assert code == 2 and "unrecognized arguments: --rank 8" in err and not (tmp_path / "o.onnx").exists()


def test_analyze_prints_table_and_json(cnn_path, tmp_path, capsys):
    out = tmp_path / "analysis.json"
    code, stdout, _ = run_cli("analyze", cnn_path, "--json", out, capsys=capsys)
    assert code == 0
    assert "conv1" in stdout and "smallest reachable --keep-flops" in stdout
    data = json.loads(out.read_text())
    assert [layer["name"] for layer in data["layers"]][:2] == ["conv0", "conv1"]


def test_console_script_runs(cnn_path, tmp_path):
    """The installed entry point, as a user calls it."""
    out = tmp_path / "small.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnx_alds.cli", "compress", str(cnn_path), "-o", str(out),
                           "--keep-params", "0.5", "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "wrote" in proc.stdout


def test_thread_counts_beyond_the_machine_are_refused(cnn_path, capsys):
    """``bench --threads 10000`` started 10 000 ONNX Runtime threads (16 GB resident) before timing anything."""
    import os

    from onnx_alds.bench import bench
    from onnx_alds.errors import InputDataError

    too_many = 4 * (os.cpu_count() or 1) + 1
    with pytest.raises(SystemExit) as exited:
        main(["bench", str(cnn_path), "--threads", str(too_many)])
    assert exited.value.code == 2 and f"got {too_many} threads" in capsys.readouterr().err
    with pytest.raises(InputDataError, match=f"got {too_many} threads"):
        bench([str(cnn_path)], threads=too_many, runs=1, warmup=0)


@pytest.mark.parametrize("flags, message", [
    (["--latency-rounds", "2"], "--latency-rounds has no effect without --keep-latency F"),
    (["--calibration-workers", "2"], "--calibration-workers has no effect without calibration inputs"),
    (["--distill-steps", "10"], "--distill-steps has no effect without --distill"),
    (["--calibration-random", "4", "--damage-points", "3"], "--damage-points has no effect without --method damage"),
    (["--calibration-random", "4", "--prune", "only", "--both-factors"],
     "--both-factors has no effect with --prune only"),
    (["--calibration-random", "4", "--prune", "only", "--method", "svd"], "--method has no effect with --prune only"),
    (["--calibration-random", "4", "--prune", "only", "--order", "auto"], "--order has no effect with --prune only"),
    (["--calibration-random", "8", "--prune", "--no-refit"], "--no-refit cannot be used with --prune"),
    (["--calibration-random", "4", "--both-factors", "1000"], "--both-factors 1000 is too many rounds"),
    (["--no-refit"], "--no-refit has no effect without calibration inputs"),
    (["--no-shrinkage"], "--no-shrinkage has no effect without calibration inputs"),
    (["--min-top1-agreement", "0.99"], "--min-top1-agreement has no effect without --validate|"
                                       "--min-top1-agreement has no effect in plan"),
    (["--validate-random", "4"], "--validate-random has no effect without --validate|"
                                 "--validate-random has no effect in plan"),
    (["--figures-only"], "--figures-only has no effect without --validate|--figures-only has no effect in plan"),
    (["--provider", "cuda"], "--provider has no effect without --validate, --keep-latency|"
                             "--provider has no effect without --keep-latency, --order auto or --speed-check;"),
    (["--threads", "1"], "--threads has no effect without --validate, --keep-latency|"
                         "--threads has no effect without --keep-latency, --order auto or --speed-check;"),
    (["--order", "auto", "--speed-check"], "--speed-check has no effect with --keep-latency or --order auto"),
])
def test_flags_without_effect_are_errors(tmp_path, capsys, flags, message):
    from conftest import small_cnn

    onnx.save(small_cnn(width=16), str(tmp_path / "m.onnx"))
    for command in (["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx")],
                    ["plan", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "plan.json")]):
        if command[0] == "plan" and any(flag.startswith("--distill") or flag == "--prune" for flag in flags):
            continue  # plan has neither --distill nor --prune
        code = main([*command, "--keep-flops", "0.5", "--rank-multiple", "4", *flags])
        error = capsys.readouterr().err
        assert code == 1 and any(error.startswith(f"error: {m}") for m in message.split("|")), error
        assert error.count("\n") == 1
        assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "plan.json").exists()


def test_operating_system_errors_are_one_line(cnn_path, tmp_path, capsys):
    """A path part longer than the file system allows raised OSError (File name too long) as a traceback."""
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / ("a" * 300 + ".onnx")),
                           "--keep-params", "0.5", capsys=capsys)
    assert_one_line_error(code, err, "File name too long")
    assert list(tmp_path.iterdir()) == [cnn_path]


def test_a_json_name_as_long_as_allowed_is_written(cnn_path, tmp_path, capsys):
    """The JSON went to '.<name>.tmp' first, 5 characters longer than the name: a legal 250-character name
    failed after all the work."""
    target = tmp_path / ("f" * 250 + ".json")
    code, _, err = run_cli("analyze", str(cnn_path), "--json", str(target), capsys=capsys)
    assert code == 0, err
    assert json.loads(target.read_text())["layers"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cnn_path.name, target.name])


@pytest.mark.parametrize("argv", [["analyze", ""], ["compress", "{model}", "-o", "", "--keep-params", "0.5"],
                                  ["bench", "{model}", "--json", " "]])
def test_empty_values_are_usage_errors(cnn_path, capsys, argv):
    """``-o ''`` (an unset $OUT) read as the current folder: "'.' is a folder"."""
    with pytest.raises(SystemExit) as exited:
        main([arg.format(model=cnn_path) for arg in argv])
    assert exited.value.code == 2 and "empty value" in capsys.readouterr().err


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_sigterm_ends_a_run_as_ctrl_c_does(cnn_path, tmp_path, capsys, monkeypatch, stop):
    """SIGTERM (timeout, a CI cancel) killed the process in its write phase and left temporary files; so did
    SIGHUP (a closed terminal, a dropped ssh session), with exit 129."""
    import os
    import signal
    import threading
    import time

    import onnx_alds.api

    def slow_compress(*args, **kwargs):
        time.sleep(20)

    number = getattr(signal, stop)
    monkeypatch.setattr(onnx_alds.api, "compress", slow_compress)
    ignored = signal.signal(number, signal.SIG_DFL)  # (a run under nohup ignores SIGHUP, and so does the CLI then)
    try:
        timer = threading.Timer(0.5, os.kill, (os.getpid(), number))
        timer.start()
        code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "out.onnx"), "--keep-params", "0.5",
                               "--report", str(tmp_path / "r.json"), capsys=capsys)
        timer.cancel()
        assert signal.getsignal(number) == signal.SIG_DFL  # restored for the caller
    finally:
        signal.signal(number, ignored)
    assert code == 130 and err.startswith("error: interrupted")
    assert list(tmp_path.iterdir()) == [cnn_path]


def test_bench_times_the_batch_of_the_input_shape_given(tmp_path, capsys):
    """``bench --input-shape input:4x3x32x32`` timed batch 1: the --batch default replaced the dim given."""
    from conftest import small_cnn

    model = tmp_path / "m.onnx"
    onnx.save(small_cnn(width=8), str(model))
    code, _, err = run_cli("bench", str(model), "--input-shape", "input:4x3x32x32", "--runs", "2", "--warmup", "0",
                           "--min-time", "0", "--json", str(tmp_path / "b.json"), capsys=capsys)
    assert code == 0, err
    timings = json.loads((tmp_path / "b.json").read_text())["timings"]
    assert {row["batch_size"] for row in timings} == {4}


def test_huge_random_batches_are_refused_before_allocating(cnn_path):
    from onnx_alds.bench import bench
    from onnx_alds.errors import InputDataError

    with pytest.raises(InputDataError, match="would take .* GiB; ask for a smaller batch"):
        bench([str(cnn_path)], batch_sizes=(10 ** 11,), runs=1, warmup=0)


def test_written_json_files_get_the_usual_file_mode(cnn_path, tmp_path, capsys):
    """JSON outputs were made by mkstemp with mode 0600 (and an existing 0644 report became 0600)."""
    import os
    import stat

    mask = os.umask(0o022)
    try:
        report = tmp_path / "r.json"
        report.write_text(EARLIER_JSON)
        os.chmod(report, 0o644)
        code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "s.onnx"), "--keep-params", "0.5",
                               "--report", str(report), capsys=capsys)
        assert code == 0, err
        code, _, err = run_cli("analyze", str(cnn_path), "--json", str(tmp_path / "a.json"), capsys=capsys)
        assert code == 0, err
    finally:
        os.umask(mask)
    for name in ("r.json", "a.json", "s.onnx"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


@pytest.mark.parametrize("argv", [["compress", "{model}", "-o", "{out}", "--keep-params", "0.5", "--preprocess", "mnist"],
                                  ["validate", "{model}", "{model}", "--random", "4", "--layout", "NHWC"],
                                  ["compress", "{model}", "-o", "{out}", "--keep-params", "0.5",
                                   "--calibration-random", "8", "--scale", "1/255"]])
def test_preprocessing_flags_without_an_image_folder_are_errors(cnn_path, tmp_path, capsys, argv):
    """``--layout NHWC`` with random or .npz inputs was ignored: a user could think it transposed them."""
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(*[arg.format(model=cnn_path, out=out) for arg in argv], capsys=capsys)
    assert_one_line_error(code, err, "has no effect without an image folder")
    assert not out.exists()


def test_dash_is_not_an_output_file(cnn_path, tmp_path, capsys, monkeypatch):
    """``-o -`` wrote a file literally named '-'."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("compress", str(cnn_path), "-o", "-", "--keep-params", "0.5", capsys=capsys)
    assert_one_line_error(code, err, "writes files, not standard output")
    assert not (tmp_path / "-").exists()


def test_validate_and_sweep_refuse_a_model_over_the_protobuf_limit_up_front(cnn_path, tmp_path, capsys, monkeypatch):
    """Over 2 GB, compress --validate and sweep serialized the whole model (15 GB peak) and ended in a
    protobuf EncodeError traceback; the limit is lowered here as in the external-data tests."""
    import onnx_alds.model_io as model_io

    monkeypatch.setattr(model_io, "_PROTOBUF_LIMIT", 10_000)
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "s.onnx"), "--keep-params", "0.5",
                           "--validate", capsys=capsys)
    assert_one_line_error(code, err, "over protobuf's 2 GB limit", "onnx-alds validate ORIGINAL OUTPUT")
    code, _, err = run_cli("sweep", str(cnn_path), "--keep-params", "0.5", "--methods", "alds", "--random", "4",
                           "-o", str(tmp_path / "sw"), "--no-bench", "--no-plots", "--no-progress", capsys=capsys)
    assert code == 1 and "over protobuf's 2 GB limit" in err
    assert not (tmp_path / "s.onnx").exists()
    # calibration runs the model with extra outputs, serialized whole: an EncodeError traceback before
    for command in (["compress", str(cnn_path), "-o", str(tmp_path / "s.onnx")],
                    ["plan", str(cnn_path), "-o", str(tmp_path / "p.json")]):
        code, _, err = run_cli(*command, "--keep-params", "0.5", "--calibration-random", "8", capsys=capsys)
        assert_one_line_error(code, err, "over protobuf's 2 GB limit", "data-free")
    assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "p.json").exists()


def test_an_output_name_with_no_room_for_its_weights_file_is_refused_first(cnn_path, tmp_path, capsys,
                                                                           monkeypatch):
    """A legal 255-byte -o name failed only after all the work, when its '<name>.data' was written; and a
    model far below the 2 GB limit, never written with a weights file, was refused such a name."""
    import onnx_alds.model_io as model_io

    name = "m" * 250 + ".onnx"
    code, _, _ = run_cli("compress", str(cnn_path), "-o", str(tmp_path / name), "--keep-params", "0.5", "-q",
                         capsys=capsys)
    assert code == 0 and (tmp_path / name).is_file()
    monkeypatch.setattr(model_io, "_PROTOBUF_LIMIT", 10_000)  # a model that may be written with external data
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / ("n" * 250 + ".onnx")),
                           "--keep-params", "0.5", capsys=capsys)
    assert_one_line_error(code, err, "is too long for its weights file")


def _fixed_batch_gemm(tmp_path, batch: int = 5):
    """A Gemm on an input that fixes its batch to ``batch`` (an export at batch 5)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((20, 3)) @ rng.standard_normal((3, 24))).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="g", transB=1)], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 20])],
                              [numpy_helper.from_array(weight, "B"),
                               numpy_helper.from_array(rng.standard_normal(20).astype(np.float32), "C")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "fixed.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((32, 24)).astype(np.float32))
    return path


@pytest.mark.parametrize("flags", [["--validate"], ["--validate", "--validate-random", "10"],
                                   ["--calibration-random", "64"], ["--validate", "--calibration", "c.npz"]])
def test_fixed_batch_model_runs_at_its_batch_by_default(tmp_path, capsys, flags):
    """A model that fixes its batch to 5: ``--validate`` alone failed (64 random samples: "ask for a multiple
    of 5"), then asked for a --bench-batch nobody gave; 64 random calibration samples were refused while a
    32-row .npz was read with its remainder left out, and validating on that .npz was refused. Sets are
    now cut to whole batches everywhere, with a note, and timing runs at the model's batch."""
    path = _fixed_batch_gemm(tmp_path)
    flags = [str(tmp_path / flag) if flag.endswith(".npz") else flag for flag in flags]
    code, stdout, err = run_cli("compress", path, "-o", tmp_path / "o.onnx", "--keep-params", "0.5",
                                "--rank-multiple", "1", *flags, capsys=capsys)
    assert code == 0, err
    if "--validate" in flags:
        assert "(batch 5)" in stdout  # the summary line's timing batch
        # (the model is validated before it is written: the line named it "<compressed model>")
        assert f"validating {tmp_path / 'o.onnx'} (before it is written) against {path}" in stdout
        assert stdout.index("validating ") < stdout.index("wrote ")  # (said in the order it happened)
    if "c.npz" in " ".join(flags):
        assert "the last 2 of 32 samples do not fill a batch of 5" in stdout


def test_fixed_batch_bench_and_too_few_random_samples(tmp_path, capsys):
    path = _fixed_batch_gemm(tmp_path)
    code, stdout, err = run_cli("bench", path, "--runs", "3", "--min-time", "0", capsys=capsys)
    assert code == 0, err
    assert "batch 5 " in stdout
    code, _, err = run_cli("compress", path, "-o", tmp_path / "o.onnx", "--keep-params", "0.5",
                           "--calibration-random", "3", capsys=capsys)
    assert_one_line_error(code, err, "fixes the batch to 5; ask for at least 5 samples")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("command", ["validate", "compress", "sweep", "distill"])
def test_negative_seed_is_a_usage_error(cnn_path, tmp_path, capsys, command):
    """``validate --random 8 --seed -1`` ended in numpy's ValueError traceback; every --seed now takes an
    integer in [0, 2**32) and says so."""
    argv = {"validate": ["validate", cnn_path, cnn_path, "--random", "8"],
            "compress": ["compress", cnn_path, "-o", tmp_path / "o.onnx", "--keep-flops", "0.5"],
            "sweep": ["sweep", cnn_path, "--keep-flops", "0.5", "--random", "8", "-o", tmp_path / "sw"],
            "distill": ["distill", cnn_path, cnn_path, "-o", tmp_path / "d.onnx", "--random", "8"]}[command]
    code, _, err = run_cli(*argv, "--seed", "-1", capsys=capsys)
    assert code == 2 and "--seed: got -1; give an integer in [0, 2**32)" in err
    assert not any((tmp_path / name).exists() for name in ("o.onnx", "sw", "d.onnx"))


def test_random_inputs_refuse_a_negative_seed(cnn):
    from onnx_alds.errors import InputDataError
    from onnx_alds.inputs import random_inputs

    with pytest.raises(InputDataError, match=r"seed -1 is out of range"):
        random_inputs(cnn, 4, seed=-1)


def test_sweep_flags_without_effect_are_errors(cnn_path, tmp_path, capsys):
    """--rebench/--bench-time/--bench-batch with --no-bench, --cpus-per-worker without Ray, and
    --preprocess (even its default value, given) without images were silently ignored."""
    base = ["sweep", cnn_path, "--keep-flops", "0.5", "--random", "8", "-o", tmp_path / "sw"]
    for extra, message in [(["--no-bench", "--rebench"], "--rebench has no effect with --no-bench"),
                           (["--no-bench", "--bench-time", "5"], "--bench-time has no effect with --no-bench"),
                           (["--no-bench", "--bench-batch", "1", "32"], "--bench-batch has no effect with --no-bench"),
                           (["--cpus-per-worker", "1"], "--cpus-per-worker is for --engine ray"),
                           (["--preprocess", "imagenet"], "--preprocess has no effect without an image folder")]:
        code, _, err = run_cli(*base, *extra, capsys=capsys)
        assert_one_line_error(code, err, message)
    assert not (tmp_path / "sw").exists()


def test_explicit_flags_include_defaults_given():
    from onnx_alds.cli import build_parser, explicit_flags

    parser = build_parser()
    args = parser.parse_args(["bench", "m.onnx", "--runs", "100", "--threads", "1"])
    assert explicit_flags(args.command_parser, ["m.onnx", "--runs", "100", "--threads", "1"]) == {
        "models", "runs", "threads"}
    assert args.command_parser.get_default("runs") == 100  # the defaults are back after the second parse


@pytest.mark.parametrize("flags,message", [
    (["--method", "svd", "--error", "frobenius"], "--error has no effect with --method svd"),
    (["--method", "l-rank", "--max-groups", "4"], "--max-groups has no effect with --method l-rank"),
    (["--method", "svd", "--seed", "7"], "--seed has no effect with --method svd"),
    (["--prune", "only", "--calibration-random", "16", "--seed", "7"], "--seed has no effect with --prune only"),
    (["--method", "damage", "--calibration-random", "16", "--sensitivity"],
     "--sensitivity has no effect with --method damage"),
    (["--method", "damage", "--calibration-random", "16", "--max-groups", "2"],
     "--max-groups has no effect with --method damage"),
    (["--prune", "only", "--calibration-random", "16", "--sequential"], "--sequential has no effect with --prune only"),
    (["--prune", "only", "--calibration-random", "16", "--bias-correction"],
     "--bias-correction has no effect with --prune only"),
    (["--prune", "only", "--calibration-random", "16", "--method", "alds"],  # the default value, given
     "--method has no effect with --prune only"),
])
def test_flags_the_method_ignores_are_errors(cnn_path, tmp_path, capsys, flags, message):
    """Each of these wrote a model byte-identical to the one without the flag, exit 0."""
    code, _, err = run_cli("compress", cnn_path, "-o", tmp_path / "o.onnx", "--keep-flops", "0.5",
                           "--rank-multiple", "1", *flags, capsys=capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "o.onnx").exists()


def test_a_repeated_exclude_adds_to_the_first(tmp_path, capsys):
    """`--exclude conv0 --exclude conv1` left conv0 out of the exclusions (argparse kept the last list)."""
    report = tmp_path / "r.json"
    code, _, err = run_cli("compress", _cnn_file(tmp_path), "-o",
                           tmp_path / "o.onnx", "--keep-params", "0.8", "--rank-multiple", "1", "--exclude", "conv0",
                           "--exclude", "conv1", "--report", report, capsys=capsys)
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(report.read_text())["layers"]}
    assert not rows["conv0"]["groups"] and not rows["conv1"]["groups"]
    assert "excluded" in (rows["conv0"]["skip_reason"] or "") and "excluded" in (rows["conv1"]["skip_reason"] or "")


def _cnn_file(tmp_path):
    from conftest import small_cnn

    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(width=16), str(path))
    return path


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_flag_before_or_after_the_command(cnn_path, where):
    """-v is accepted on either side of the command (a user adds it at the end of the line they ran)."""
    command = ["compress", str(cnn_path), "-o", "small.onnx", "--keep-flops", "0.5"]
    argv = ["-v", *command] if where == "before" else [*command, "-v"]
    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args(command).verbose is False


def test_an_unvalidated_model_comes_with_the_command_that_measures_it(cnn_path, tmp_path, capsys):
    """Data-free compression printed 'max error 0.75' and exit 0 for a model at chance accuracy, with no word
    that nothing had run its outputs: the line after 'wrote' names the validate command."""
    out = tmp_path / "my model.onnx"
    code, stdout, _ = run_cli("compress", cnn_path, "-o", out, "--keep-flops", "0.5", "--rank-multiple", "1",
                              capsys=capsys)
    assert code == 0
    assert "the weights alone" in stdout and f"onnx-alds validate {cnn_path} '{out}' --inputs" in stdout
    code, stdout, _ = run_cli("compress", cnn_path, "-o", out, "--keep-flops", "0.5", "--rank-multiple", "1",
                              "--validate", "--figures-only", capsys=capsys)
    assert code == 0 and "onnx-alds validate" not in stdout
    code, stdout, _ = run_cli("compress", cnn_path, "-o", out, "--keep-flops", "0.5", "--rank-multiple", "1",
                              "--calibration-random", "64", capsys=capsys)
    assert code == 0 and "from the calibration inputs" in stdout


@pytest.mark.parametrize("stdout", ["ascii console", "closed", "stderr closed"])
def test_a_console_that_cannot_show_the_report_does_not_fail_the_run(cnn_path, tmp_path, stdout):
    """An ASCII (or cp1252) console: the 'α' of the calibration note was a UnicodeEncodeError traceback and
    exit 1 after the model and report were written. A closed stdout (a service started with '>&-') was an
    AttributeError traceback at the final flush."""
    import os
    import shlex

    out = tmp_path / "out.onnx"
    command = [sys.executable, "-m", "onnx_alds.cli", "compress", str(cnn_path), "-o", str(out), "--keep-flops",
               "0.5", "--rank-multiple", "1", "--calibration-random", "16"]
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    if stdout == "closed":
        done = subprocess.run(" ".join(map(shlex.quote, command)) + " >&-", shell=True, capture_output=False,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    elif stdout == "stderr closed":  # cron: the progress check asked a missing stderr whether it was a terminal
        done = subprocess.run(" ".join(map(shlex.quote, command)) + " 2>&-", shell=True, capture_output=False,
                              stdout=subprocess.PIPE, stderr=None, text=True, timeout=300)
        done.stderr = ""
    else:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert "\\u03b1" in done.stdout or "alpha" in done.stdout or "\\u" in done.stdout
    assert done.returncode == 0, done.stderr[-400:]
    assert "Traceback" not in done.stderr and out.exists()


def test_a_non_utf8_locale_with_non_ascii_paths(cnn_path, tmp_path):
    """LC_ALL=C (file names decoded as ASCII with surrogates): -o 'out_é.onnx' was a UnicodeEncodeError
    traceback; a model in a folder 'dír' was refused as 'ONNX Runtime refuses the model (incompatible
    function arguments)'. The first works; the second names the path and the locale."""
    import os
    import shutil

    folder = tmp_path / "dír"
    folder.mkdir()
    shutil.copy(cnn_path, folder / "model.onnx")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0")
    run = [sys.executable, "-m", "onnx_alds.cli"]
    done = subprocess.run(run + ["compress", str(cnn_path), "-o", str(tmp_path / "out_é.onnx"), "--keep-params", "0.5",
                                 "--rank-multiple", "1"], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr[-300:]
    assert (tmp_path / "out_é.onnx").exists()
    done = subprocess.run(run + ["analyze", str(folder / "model.onnx")], env=env, capture_output=True, timeout=300)
    assert done.returncode == 1 and b"cannot be handed to ONNX Runtime in this locale" in done.stderr, done.stderr


def test_the_command_line_starts_before_the_heavy_modules_load():
    """Ctrl-C in the first second and a half printed a KeyboardInterrupt traceback: `import onnx_alds` loaded
    numpy, scipy and onnx before main() could answer it. The API still loads on first use."""
    code = ("import sys, onnx_alds.cli; print(sorted(m for m in ('numpy', 'onnx', 'scipy', 'onnxruntime') "
            "if m in sys.modules)); import onnx_alds; print(onnx_alds.compress.__module__, "
            "onnx_alds.validate.validate.__name__, 'compress' in dir(onnx_alds))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "onnx_alds.api validate True"]  # (dir: tab completion)


def test_running_out_of_memory_is_one_error_line(cnn_path, tmp_path, capsys, monkeypatch):
    """Under a memory limit, numpy's ArrayMemoryError from the decomposition was a traceback."""
    import onnx_alds.api

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.2 GiB for an array with shape (16384, 16384) and data type float32")

    monkeypatch.setattr(onnx_alds.api, "_apply_step", no_memory)
    code, _, err = run_cli("compress", cnn_path, "-o", tmp_path / "out.onnx", "--keep-params", "0.5",
                           "--rank-multiple", "1", capsys=capsys)
    assert_one_line_error(code, err, "out of memory (Unable to allocate 1.2 GiB", "no output was written")
    assert not (tmp_path / "out.onnx").exists()


def test_sigterm_while_the_modules_load_is_answered_like_ctrl_c(monkeypatch, capsys):
    """SIGTERM during start-up (the commands' modules loading) ended the process with status 143 and no word:
    the handler was installed only after the parser was built."""
    import signal

    import onnx_alds.cli as cli

    seen = []

    def loading():
        seen.append(signal.getsignal(signal.SIGTERM))
        raise KeyboardInterrupt  # what the handler raises when SIGTERM arrives

    monkeypatch.setattr(cli, "build_parser", loading)
    assert cli.main(["analyze", "m.onnx"]) == 130
    assert len(seen) == 1 and seen[0] not in (signal.SIG_DFL, signal.SIG_IGN, None)  # a handler of the CLI's
    assert "error: interrupted; no output was written" in capsys.readouterr().err


def test_a_signal_while_the_modules_load_is_held_until_they_have(monkeypatch, capsys):
    """Raised inside a C extension's import, the interrupt broke it: numpy's ImportError traceback, a crash,
    or "onnxruntime is not installed". It is held until the modules are loaded, then answered."""
    import os
    import signal

    import onnx_alds.cli as cli

    import threading
    import time

    loaded = []
    threading.Thread(target=time.sleep, args=(2,), daemon=True).start()  # (the signal may reach another thread)

    def loading():
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-import
        time.sleep(0.2)
        loaded.append(True)  # ... and the import goes on to its end (the held signal is raised after it)

    monkeypatch.setattr(cli, "build_parser", loading)
    assert cli.main(["analyze", "m.onnx"]) == 130 and loaded == [True]
    assert "error: interrupted; no output was written" in capsys.readouterr().err


def test_an_import_broken_by_an_interrupt_is_an_interrupt_not_a_missing_package(monkeypatch):
    import builtins

    from onnx_alds.errors import interrupted
    from onnx_alds.runtime import import_onnxruntime

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "onnxruntime":
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ImportError("PyCapsule_Import could not import module datetime")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(KeyboardInterrupt):
        import_onnxruntime()
    assert not interrupted(ImportError("no module named onnxruntime"))


def test_an_interrupt_after_the_output_landed_names_what_was_written(cnn_path, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the table printed to a slow pipe said "no output was written" of a model and report on disk."""
    import onnx_alds.cli

    def interrupted(*args):  # the last line printed, after the files landed
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_alds.cli, "_validate_hint", interrupted)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(out), "--keep-params", "0.5", "--report", str(report),
                           capsys=capsys)
    assert code == 130 and out.exists() and report.exists()
    assert err.strip().splitlines()[-1] == (f"error: interrupted after {out} and {report} were written; the report "
                                            "on standard output may be cut short")


def test_an_interrupt_inside_a_lazy_import_is_an_interrupt(cnn_path, tmp_path, capsys, monkeypatch):
    """Python wraps an exception raised in a class's __set_name__ (a module loading lazily) in RuntimeError: a
    Ctrl-C landing there was a traceback, not 'interrupted' with status 130."""
    import onnx_alds.api

    def wrapped(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance 'options' in 'LatencyTable'") from exc

    monkeypatch.setattr(onnx_alds.api, "compress", wrapped)
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "out.onnx"), "--keep-params", "0.5",
                           capsys=capsys)
    assert code == 130 and err.strip() == "error: interrupted; no output was written"
    assert not (tmp_path / "out.onnx").exists()


def test_apply_names_only_the_timing_flag_it_has(cnn_path, tmp_path, capsys):
    """apply --threads 1 said to add --keep-latency, --order auto or --speed-check, flags apply does not take."""
    plan = tmp_path / "plan.json"
    assert main(["plan", str(cnn_path), "-o", str(plan), "--keep-params", "0.5", "-q"]) == 0
    capsys.readouterr()
    code, _, err = run_cli("apply", str(cnn_path), str(plan), "-o", str(tmp_path / "out.onnx"), "--threads", "1",
                           capsys=capsys)
    assert_one_line_error(code, err, "--threads has no effect without --validate; add it or drop --threads")


def test_apply_with_the_plan_and_the_model_swapped_says_so(cnn_path, tmp_path, capsys):
    """apply PLAN MODEL said only "'model.onnx' is not a plan (not UTF-8 JSON text)"."""
    plan = tmp_path / "plan.json"
    assert main(["plan", str(cnn_path), "-o", str(plan), "--keep-params", "0.5", "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "out.onnx"
    code, _, err = run_cli("apply", str(plan), str(cnn_path), "-o", str(out), capsys=capsys)
    assert_one_line_error(code, err, f"'{cnn_path}' is not a plan and '{plan}' looks like one: the model comes first; "
                                     f"onnx-alds apply {cnn_path} {plan} -o {out}")
    assert not out.exists()
    renamed = tmp_path / "plan.PLAN"  # (told by its content, not its suffix)
    renamed.write_bytes(plan.read_bytes())
    code, _, err = run_cli("apply", str(renamed), str(cnn_path), "-o", str(out), capsys=capsys)
    assert_one_line_error(code, err, f"'{renamed}' looks like one: the model comes first")


def test_an_error_naming_a_tensor_with_a_newline_stays_one_line(tmp_path, capsys):
    """A graph output named with control characters (a corrupted file) made the error message several lines."""
    from onnx import TensorProto, helper

    bad = "out\n\x08name"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], [bad])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [onnx.ValueInfoProto(name=bad)])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    code, _, err = run_cli("analyze", str(path), capsys=capsys)
    assert_one_line_error(code, err, "graph output 'out\\n\\x08name' has no type")


def test_input_errors_under_compress_name_compress_flags(tmp_path, capsys):
    """compress said "use --inputs FILE.npz" and "give --labels FILE", flags only validate has."""
    from conftest import small_cnn

    model = tmp_path / "m.onnx"
    onnx.save(small_cnn(width=16), str(model))
    nested = tmp_path / "nested"
    (nested / "cats").mkdir(parents=True)
    code, _, err = run_cli("compress", str(model), "-o", str(tmp_path / "o.onnx"), "--keep-flops", "0.9",
                           "--calibration-images", str(nested), capsys=capsys)
    assert_one_line_error(code, err, "its subfolders are not read: put the images in the folder itself")
    assert "--labels" not in err
    np.savez(tmp_path / "v.npz", input=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    code, _, err = run_cli("compress", str(model), "-o", str(tmp_path / "o.onnx"), "--keep-flops", "0.9", "--validate",
                           "--validate-inputs", str(tmp_path / "v.npz"), "--max-accuracy-drop", "0.01", capsys=capsys)
    assert_one_line_error(code, err, "--validate-labels FILE or --validate-labels-from-filenames")
    assert not (tmp_path / "o.onnx").exists()


def test_demo_refused_leaves_no_folder_and_a_failed_validation_is_one_error(tmp_path, capsys, monkeypatch):
    """demo --keep-flops 2 made its output folder before the budget was refused; a validation that failed
    (not timed: bench None) raised AttributeError writing demo_report.json."""
    out = tmp_path / "demo"
    code, _, err = run_cli("demo", "--out", str(out), "--keep-flops", "2", capsys=capsys)
    assert_one_line_error(code, err)
    assert not out.exists()

    import onnx_alds.validate as validate_module

    real = validate_module.validate_and_bench

    def failing(original, compressed, **kwargs):  # a limit no compressed model meets: failed, so not timed
        kwargs.update(rtol=1e-12, bench_options={"runs": 1, "warmup": 0, "min_time_s": 0})
        return real(original, compressed, **kwargs)

    monkeypatch.setattr(validate_module, "validate_and_bench", failing)
    code, stdout, err = run_cli("demo", "--out", str(out), capsys=capsys)
    line = err.strip().splitlines()[-1]  # (validate's advice named --figures-only, which demo does not take)
    assert code == 1 and line.startswith("error: the demo's validation failed: output 'logits'")
    assert "compress less (a --keep-flops above 0.5)" in line and "--figures-only" not in line
    report = json.loads((out / "demo_report.json").read_text())
    assert report["bench"] is None
    # it named the staging folder's copy (.onnx-alds-demo-XXXX/), gone once the run ended
    assert f"validating {out / 'mnist_resnet.alds.onnx'} against" in stdout
    assert report["validate"]["compressed"] == str(out / "mnist_resnet.alds.onnx")


def test_main_in_a_running_process_leaves_logging_and_warnings_as_they_were(cnn_path, tmp_path, capsys, monkeypatch):
    """main() left a RuntimeWarning filter and a root log handler bound to the stderr of its first call (a later
    log line then failed on a closed stream), and a second main(['-v', ...]) logged no INFO line."""
    import logging
    import warnings

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # (pytest's own capture handlers aside: a plain process)
    filters = list(warnings.filters)
    assert main(["analyze", str(cnn_path)]) == 0
    assert list(warnings.filters) == filters and root.handlers == []
    assert main(["-v", "bench", str(cnn_path), "--runs", "1", "--warmup", "0", "--min-time", "0",
                 "--threads", "1"]) == 0
    assert "info: timing 1 model(s)" in capsys.readouterr().err
    assert list(warnings.filters) == filters and root.handlers == []


def test_a_layer_named_with_a_newline_stays_on_its_table_row():
    from onnx_alds.report import format_table

    table = format_table([["layer", "op"], ["conv\nnext", "Conv"]])
    assert len(table.splitlines()) == 3 and "conv\\nnext" in table


def test_an_interrupt_just_after_a_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    """mkstemp made its file before the name reached the caller's try: a Ctrl-C at that moment left
    '.onnx-alds-probe-…' (or a pending report) in the output folder. Names are now chosen first and the
    files created inside the try."""
    import builtins

    import onnx_alds.model_io as model_io

    def open_then_interrupt(*args, **kwargs):
        handle = builtins.open(*args, **kwargs)
        handle.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(model_io, "open", open_then_interrupt, raising=False)
    with pytest.raises(KeyboardInterrupt):
        model_io.check_output_path(tmp_path / "out.onnx")
    with pytest.raises(KeyboardInterrupt):
        model_io.write_file_atomically(tmp_path / "report.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_a_one_value_flag_given_twice_with_different_values_is_a_usage_error(cnn_path, tmp_path, capsys):
    """`-o a.onnx -o b.onnx --keep-params 0.5 --keep-params 0.9` wrote only b.onnx at 0.9 (argparse keeps the
    last value without a word)."""
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "a.onnx"), "--keep-params", "0.5",
                           "--keep-params=0.9", capsys=capsys)
    assert code == 2 and "--keep-params is given twice (0.5 and 0.9); give it once" in err
    assert not (tmp_path / "a.onnx").exists()
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "a.onnx"), "--keep-params", "0.5",
                           f"-o{tmp_path / 'b.onnx'}", capsys=capsys)
    assert code == 2 and "is given twice" in err, err  # an attached short form
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "a.onnx"), "--keep-p", "0.9",
                           "--keep-params", "0.5", capsys=capsys)
    assert code == 2 and "unrecognized arguments: --keep-p 0.9" in err, err  # no abbreviation is a flag
    code, _, _ = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "a.onnx"), "--keep-params", "0.5",
                         "--keep-params", "0.5", "-q", capsys=capsys)
    assert code == 0  # the same value twice changes nothing


def test_an_unknown_flag_is_named_with_the_commands_own_usage(cnn_path, tmp_path, capsys):
    """`compress ... --bogus` printed the top-level usage line, not compress's, so the flags that exist were
    not shown."""
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "a.onnx"), "--keep-params", "0.5",
                           "--bogus", capsys=capsys)
    assert code == 2 and "onnx-alds compress: error: unrecognized arguments: --bogus" in err
    assert "--keep-params F" in err


def _disk_full(*_args, **_kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_file_and_plan_writes_both_files_or_neither(cnn_path, tmp_path, capsys, monkeypatch):
    """A full disk said "No space left on device" without a file (-o and --report may be on different
    disks); plan wrote plan.json and then failed on its --report, leaving the plan behind."""
    from onnx_alds.model_io import write_file_atomically
    from onnx_alds.report import CompressionReport

    monkeypatch.setattr("onnx_alds.model_io.os.replace", _disk_full)
    with pytest.raises(OSError) as raised:
        write_file_atomically(tmp_path / "out.json", b"{}")
    assert raised.value.filename == str(tmp_path / "out.json") and not list(tmp_path.glob(".onnx-alds-*"))
    monkeypatch.undo()
    monkeypatch.setattr(CompressionReport, "save_json", _disk_full)
    plan, report = tmp_path / "p.json", tmp_path / "r.json"
    code, _, err = run_cli("plan", cnn_path, "-o", plan, "--keep-flops", "0.7", "--report", report, capsys=capsys)
    assert_one_line_error(code, err, "No space left on device", str(report))
    assert not plan.exists() and not report.exists() and not list(tmp_path.glob(".onnx-alds-*"))


def test_a_demo_that_fails_midway_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """demo --out DIR on a full disk left DIR (and the model written before the failure) behind."""
    monkeypatch.setattr("onnx_alds.validate.validate_and_bench", _disk_full)
    out = tmp_path / "new" / "demo"
    code, _, err = run_cli("demo", "--out", out, capsys=capsys)
    assert code == 1 and "No space left on device" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["analyze", "plan", "compress"])
def test_a_report_print_that_fails_after_the_files_landed_names_them(command, cnn_path, tmp_path, capsys,
                                                                    monkeypatch):
    """stdout on a full disk: the files were written, then "error: No space left on device; fix the path"
    as if the write had failed."""
    class FullStdout:
        encoding = "utf-8"

        def write(self, text):
            _disk_full()

        def flush(self):
            pass

    out = tmp_path / ("a.json" if command == "analyze" else "p.json" if command == "plan" else "c.onnx")
    flags = {"analyze": ["--json", out], "plan": ["-o", out, "--keep-params", "0.5"],
             "compress": ["-o", out, "--keep-params", "0.5"]}[command]
    monkeypatch.setattr(sys, "stdout", FullStdout())
    code = main([command, str(cnn_path), *map(str, flags)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and out.exists()
    assert err[-1] == (f"error: writing the report to standard output failed (No space left on device); {out} "
                       "was written")


def test_an_interrupted_sweep_says_whether_any_variant_was_kept(tmp_path, capsys):
    """Interrupted before any variant finished, a sweep said "the variants finished so far are kept in the
    output folder" of a folder that did not exist."""
    import argparse

    from onnx_alds.cli import _interrupted

    args = argparse.Namespace(command="sweep", out=str(tmp_path / "sw"))
    assert _interrupted(args) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted before any variant finished; no output was written"
    (tmp_path / "sw" / "rows").mkdir(parents=True)
    (tmp_path / "sw" / "rows" / "m.alds.json").write_text("{}")
    _interrupted(args)
    assert "the variants finished so far are kept in the output folder" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_disk_before_any_file_is_named_as_such(cnn_path, tmp_path):
    """validate and bench print before they write: "No space left on device; fix the path" read as if their
    --json path had failed."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "onnx_alds.cli", "bench", str(cnn_path), "--json",
                               str(tmp_path / "b.json"), "--runs", "2", "--warmup", "1"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == ("error: writing the report to standard output failed (No space "
                                                    "left on device); no output was written")
    assert not (tmp_path / "b.json").exists()


def test_a_report_named_as_the_weights_file_of_the_output_is_refused_before_any_work(cnn_path, tmp_path, capsys):
    """--report o.onnx.data with an output written with external data: the report was renamed over the
    weights just written (exit 0, a model ONNX Runtime refuses)."""
    out = tmp_path / "o.onnx"
    code, _, err = run_cli("compress", cnn_path, "-o", out, "--keep-params", "0.9", "--rank-multiple", "1",
                           "--report", f"{out}.data", capsys=capsys)
    assert_one_line_error(code, err, f"--report '{out}.data' is also the weights file of -o")
    assert not out.exists() and not (tmp_path / "o.onnx.data").exists()


@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_an_output_path_ending_with_a_slash_is_a_folder_not_a_file(cnn_path, tmp_path, capsys, flag):
    """-o newdir/ wrote a file 'newdir' (Path() drops the slash), and -o old.onnx/ overwrote old.onnx."""
    from onnx_alds.errors import OutputPathError
    from onnx_alds.model_io import save_model

    old = tmp_path / "old.onnx"
    old.write_bytes(b"keep")
    paths = {"-o": tmp_path / "o.onnx", "--report": tmp_path / "r.json"}
    paths[flag] = f"{old}/"
    code, _, err = run_cli("compress", cnn_path, "-o", paths["-o"], "--report", paths["--report"], "--keep-params",
                           "0.9", "--rank-multiple", "1", capsys=capsys)
    assert_one_line_error(code, err, f"{flag} '{old}/' names a folder (it ends with '/'); give a file path")
    assert old.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx", "old.onnx"]
    with pytest.raises(OutputPathError, match="ends with '/'"):
        save_model(onnx.load(str(cnn_path)), f"{tmp_path}/new/")
    with pytest.raises(OutputPathError, match=r"ends with '\.'"):  # 'old.onnx/.' wrote old.onnx
        save_model(onnx.load(str(cnn_path)), f"{old}/.")
    assert not (tmp_path / "new").exists() and old.read_bytes() == b"keep"


def test_hard_linked_outputs_are_named_as_the_same_file(cnn_path, tmp_path, capsys):
    """-o and --report hard links of one file: refused as "-o 'r.json' is one of the inputs ('o.onnx')"."""
    report = tmp_path / "r.json"
    report.write_text("{}")
    os.link(report, tmp_path / "o.onnx")
    code, _, err = run_cli("compress", cnn_path, "-o", tmp_path / "o.onnx", "--report", report, "--keep-params",
                           "0.9", "--rank-multiple", "1", capsys=capsys)
    assert_one_line_error(code, err, f"--report '{report}' is also the -o file")


def test_a_file_written_over_keeps_its_permissions(cnn_path, tmp_path, capsys):
    """An output or report made private (chmod 600) became 644 when a run wrote over it (a new file renamed
    into place), unlike cp or sed -i."""
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code, _, _ = run_cli("compress", cnn_path, "-o", out, "--report", report, "--keep-params", "0.8",
                         "--rank-multiple", "1", capsys=capsys)  # an earlier run's outputs
    assert code == 0
    old_model = out.read_bytes()
    for path in (out, report):
        path.chmod(0o600)
    code, _, _ = run_cli("compress", cnn_path, "-o", out, "--report", report, "--keep-params", "0.9",
                         "--rank-multiple", "1", capsys=capsys)
    assert code == 0 and out.read_bytes() != old_model
    assert (out.stat().st_mode & 0o777, report.stat().st_mode & 0o777) == (0o600, 0o600)


def test_unreadable_inputs_are_named_as_unreadable(cnn_path, tmp_path, capsys, monkeypatch):
    """A model, data file or .npz the user may not read was called truncated or not ONNX ("export it again"),
    "SystemError : 13", or not an .npz ("save it with numpy.savez"); an .npz through a pipe the same."""
    import builtins

    from onnx_alds.errors import InputDataError, ModelLoadError
    from onnx_alds.inputs import load_inputs
    from onnx_alds.model_io import load_model

    model = onnx.load(str(cnn_path))
    real_open = builtins.open
    denied = {str(cnn_path)}

    def guarded_open(file, *args, **kwargs):
        if str(file) in denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(ModelLoadError, match=r"permission denied reading the model file .*; make it readable"):
        load_model(cnn_path)
    external = tmp_path / "ext.onnx"
    onnx.save(model, str(external), save_as_external_data=True, location="ext.data", size_threshold=0)
    denied = {str(tmp_path / "ext.data")}
    with pytest.raises(ModelLoadError, match=r"permission denied reading the external data file 'ext.data' of 'ext.onnx'"):
        load_model(external)
    monkeypatch.setattr(builtins, "open", real_open)
    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    with pytest.raises(InputDataError, match=r"is a pipe or device, not a file .*save it to a file"):
        load_inputs(model, npz=fifo)


def test_an_interrupt_between_the_model_and_weights_renames_waits_for_both(tmp_path, monkeypatch):
    """save_model with external data renames '<out>.data' into place, then '<out>': SIGTERM between the two
    left the earlier '<out>' reading the new weights (a model ONNX Runtime refuses), while the CLI said no
    output was written."""
    import signal

    import onnx_alds.model_io as model_io
    from conftest import small_cnn

    out = tmp_path / "o.onnx"
    model_io.save_model(small_cnn(width=8), out, external_data=True)
    real_replace, renamed = os.replace, []

    def replace_then_signal(source, target):
        real_replace(source, target)
        renamed.append(Path(target).name)
        if len(renamed) == 1:  # the weights have landed, the model not yet
            os.kill(os.getpid(), signal.SIGTERM)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    monkeypatch.setattr(model_io.os, "replace", replace_then_signal)
    try:
        with pytest.raises(KeyboardInterrupt):
            model_io.save_model(small_cnn(width=16), out, external_data=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert renamed == ["o.onnx.data", "o.onnx"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # the new model, whole
    assert session.get_inputs()[0].name == small_cnn(width=16).graph.input[0].name


def test_log_lines_read_as_the_commands_own_lines(cnn_path, tmp_path, capsys, monkeypatch):
    """An unwritable latency cache was said as "WARNING: latency cache not written" while every other line
    says "warning:": a grep for "warning:" missed it."""
    import logging

    from onnx_alds.cli import _LowerCaseLevels

    record = logging.LogRecord("onnx_alds.latency", logging.WARNING, __file__, 1, "latency cache not written", (), None)
    assert _LowerCaseLevels("%(levelname)s: %(message)s").format(record) == "warning: latency cache not written"


def test_a_signal_held_in_a_block_that_raises_is_still_delivered():
    """uninterrupted() dropped a SIGTERM that arrived inside a block which then raised (a failed rename)."""
    import signal

    from onnx_alds.signals import uninterrupted

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                raise OSError("the rename failed")
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("command, at", [("compress", "o.onnx"), ("compress", "r.json"), ("plan", "o.json"),
                                         ("plan", "r.json")])
def test_an_interrupt_held_over_the_final_renames_names_the_files_written(cnn_path, tmp_path, capsys, monkeypatch,
                                                                         command, at):
    """SIGTERM during the model's rename was delivered once the model had landed: the CLI said "no output was
    written" (the new model was there) and the report was never renamed into place; at the report's rename,
    the new model sat beside the earlier run's report; plan's JSON was not held at all."""
    import signal

    import onnx_alds.model_io as model_io

    out, report = tmp_path / ("o.onnx" if command == "compress" else "o.json"), tmp_path / "r.json"
    report.write_text('{"stale": true, "versions": {"onnx_alds": "0.1"}}')  # an earlier run's
    real_replace = os.replace

    def replace_with_signal(source, target):
        if Path(target).name == at:
            os.kill(os.getpid(), signal.SIGTERM)
        real_replace(source, target)

    monkeypatch.setattr(model_io.os, "replace", replace_with_signal)
    code, _, err = run_cli(command, cnn_path, "-o", out, "--report", report, "--keep-params", "0.9",
                           "--rank-multiple", "1", "-q", capsys=capsys)
    assert code == 130
    assert f"interrupted after {out} and {report} were written" in err
    assert json.loads(report.read_text())["achieved"] > 0
    if command == "compress":
        onnx.checker.check_model(str(out))


def test_a_file_at_the_outputs_weights_name_is_refused_before_any_work(cnn_path, tmp_path, capsys, monkeypatch):
    """A model that may be written with external data, and an unrelated '<-o>.data' file: refused only when the
    model was written, after the whole compression."""
    import onnx_alds.api
    import onnx_alds.model_io as model_io

    monkeypatch.setattr(model_io, "_PROTOBUF_LIMIT", 1000)  # (the CNN counts as a model past the 2 GB limit)
    (tmp_path / "o.onnx.data").write_bytes(b"another model's weights")

    def never(*args, **kwargs):
        raise AssertionError("compressed before the output path was checked")

    monkeypatch.setattr(onnx_alds.api, "compress", never)
    code, _, err = run_cli("compress", cnn_path, "-o", tmp_path / "o.onnx", "--keep-params", "0.9", capsys=capsys)
    assert_one_line_error(code, err, "which exists and is not the data of")
    assert (tmp_path / "o.onnx.data").read_bytes() == b"another model's weights"


def test_an_interrupted_demo_leaves_an_earlier_runs_files_as_they_were(tmp_path, capsys, monkeypatch):
    """A second demo into the same folder, interrupted after its model was written, removed the first run's
    model and compress report (written over, then unlinked) and kept a demo report describing them."""
    out = tmp_path / "demo"
    assert run_cli("demo", "--out", str(out), capsys=capsys)[0] == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert sorted(before) == ["compress_report.json", "demo_report.json", "mnist_resnet.alds.onnx"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("onnx_alds.validate.validate_and_bench", interrupted)
    code, _, err = run_cli("demo", "--out", str(out), "--keep-flops", "0.7", capsys=capsys)
    assert code == 130 and "no output was written" in err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_users_file_in_the_demo_folder_is_not_overwritten(tmp_path, capsys, monkeypatch):
    """demo --out DIR wrote its reports over a user's script and data at their names with exit 0; a second
    demo into the same folder still replaces the first run's files."""
    import onnx_alds.api

    out = tmp_path / "demo"
    out.mkdir()
    script = b"#!/bin/sh\necho my script\n"
    (out / "compress_report.json").write_bytes(script)

    def never(*args, **kwargs):
        raise AssertionError("compressed before the folder was checked")

    with monkeypatch.context() as patch:
        patch.setattr(onnx_alds.api, "compress", never)
        code, _, err = run_cli("demo", "--out", str(out), capsys=capsys)
        assert_one_line_error(code, err, "compress_report.json' is an existing file of another kind",
                              "give another --out folder")
        (out / "compress_report.json").write_bytes(b'{"my": "config"}')
        code, _, err = run_cli("demo", "--out", str(out), capsys=capsys)
        assert_one_line_error(code, err, "is an existing JSON file not written by onnx-alds")
    assert (out / "compress_report.json").read_bytes() == b'{"my": "config"}'
    (out / "compress_report.json").unlink()
    assert run_cli("demo", "--out", str(out), capsys=capsys)[0] == 0
    assert run_cli("demo", "--out", str(out), "--keep-flops", "0.7", capsys=capsys)[0] == 0  # its own: replaced
    assert json.loads((out / "demo_report.json").read_text())["compress"]["macs_after"] > 0


def test_a_file_is_judged_by_its_bytes_not_its_name(cnn_path, tmp_path, capsys):
    """Notes saved as notes.onnx were taken for a model and overwritten by compress -o, a user's JSON config by
    plan -o and --report; earlier validate and plan outputs are still replaced."""
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes")
    code, _, err = run_cli("compress", cnn_path, "--keep-flops", "0.8", "-o", str(notes), capsys=capsys)
    assert_one_line_error(code, err, "is an existing file of another kind, and compress would write an ONNX model")
    config = tmp_path / "config.json"
    config.write_text('{"learning_rate": 0.1}')
    for args in (["plan", cnn_path, "--keep-flops", "0.8", "-o", str(config)],
                 ["compress", cnn_path, "--keep-flops", "0.8", "-o", str(tmp_path / "s.onnx"), "--report",
                  str(config)]):
        code, _, err = run_cli(*args, capsys=capsys)
        assert_one_line_error(code, err, "is an existing JSON file not written by onnx-alds")
    assert notes.read_text() == "my notes" and config.read_text() == '{"learning_rate": 0.1}'
    small, result = tmp_path / "s.onnx", tmp_path / "v.json"
    assert run_cli("compress", cnn_path, "--keep-flops", "0.8", "-o", str(small), capsys=capsys)[0] == 0
    for _ in range(2):  # the second run replaces the first's report
        code, _, err = run_cli("validate", cnn_path, str(small), "--random", "4", "--json", str(result),
                               "--figures-only", capsys=capsys)
        assert code == 0, err
    assert "onnx_alds" in json.loads(result.read_text())["versions"]


def test_a_demo_in_a_folder_it_cannot_write_names_out(tmp_path, capsys, monkeypatch):
    """In a read-only working folder the demo said "Read-only file system ('onnx-alds-demo'); fix the path or
    free the resource", naming no flag, after compressing."""
    import onnx_alds.api

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == tmp_path else
                        real_access(path, mode, **kw))

    def never(*args, **kwargs):
        raise AssertionError("compressed before the folder was checked")

    monkeypatch.setattr(onnx_alds.api, "compress", never)
    code, _, err = run_cli("demo", "--out", str(tmp_path / "demo"), capsys=capsys)
    assert_one_line_error(code, err, "is not writable); give a writable folder with --out DIR")


def test_an_interrupt_right_after_the_renames_names_the_files_and_leaves_no_temporary_folder(cnn_path, tmp_path,
                                                                                              capsys, monkeypatch):
    """SIGINT while the temporary folder was removed, just after the renames: "no output was written" (both
    files were there, complete) and an empty '.onnx-alds-…' folder was left beside them."""
    import signal

    import onnx_alds.model_io as model_io

    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    real_rmdir = os.rmdir

    def rmdir_with_signal(path, *args, **kwargs):
        if Path(path).parent == tmp_path:  # the writer's temporary folder, beside the output
            os.kill(os.getpid(), signal.SIGTERM)
        real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(model_io.os, "rmdir", rmdir_with_signal)
    code, _, err = run_cli("compress", cnn_path, "-o", out, "--report", report, "--keep-params", "0.9",
                           "--rank-multiple", "1", "-q", capsys=capsys)
    assert code == 130 and f"interrupted after {out} and {report} were written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(cnn_path).name, "o.onnx", "r.json"])


@pytest.mark.parametrize("command", ["analyze", "validate", "bench"])
def test_an_interrupt_held_over_a_json_files_rename_names_it(cnn_path, tmp_path, capsys, monkeypatch, command):
    """validate --json and bench --json landed their file and said "no output was written"."""
    import signal

    import onnx_alds.model_io as model_io

    target = tmp_path / "out.json"
    real_replace = os.replace

    def replace_with_signal(source, destination):
        if Path(destination).name == target.name:
            os.kill(os.getpid(), signal.SIGTERM)
        real_replace(source, destination)

    monkeypatch.setattr(model_io.os, "replace", replace_with_signal)
    arguments = {"analyze": [cnn_path], "validate": [cnn_path, cnn_path, "--random", "4"],
                 "bench": [cnn_path, "--runs", "2", "--warmup", "1", "--min-time", "0", "--threads", "1"]}[command]
    code, _, err = run_cli(command, *arguments, "--json", target, capsys=capsys)
    assert code == 130 and f"interrupted after {target} was written" in err
    assert json.loads(target.read_text())


def test_a_removal_interrupted_before_the_signals_are_held_is_done_again(tmp_path):
    """An interrupt between the renames' end and the clean-up's handlers left the temporary folder behind."""
    from onnx_alds.model_io import removed_whole

    folder = tmp_path / ".onnx-alds-x"
    folder.mkdir()
    calls = []

    def remove():
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as a signal delivered before uninterrupted() held them
        folder.rmdir()

    with pytest.raises(KeyboardInterrupt):
        removed_whole(remove)
    assert not folder.exists() and len(calls) == 2


def test_sensitivity_weighted_figures_are_labelled_as_such(cnn_path, tmp_path, capsys):
    """--method svd --sensitivity printed weighted values under 'rank cut' (0.39 for a cut of 0.66)."""
    code, out, _ = run_cli("compress", cnn_path, "-o", tmp_path / "o.onnx", "--keep-params", "0.6", "--method", "svd",
                           "--calibration-random", "16", "--sensitivity", "--rank-multiple", "1", capsys=capsys)
    assert code == 0 and "rank cut × s" in out and "times its sensitivity weight s" in out


def test_a_model_taken_by_exclude_is_explained(cnn_path, capsys):
    """`analyze --exclude P model.onnx` said only "the following arguments are required: model"."""
    code, _, err = run_cli("analyze", "--exclude", "conv*", cnn_path, capsys=capsys)
    assert code == 2 and "required: model (--exclude takes every word after it as a pattern" in err
    assert run_cli("analyze", "--exclude", "conv*", "--", cnn_path, capsys=capsys)[0] == 0
    code, _, err = run_cli("analyze", capsys=capsys)  # no --exclude: no hint
    assert code == 2 and "required: model" in err and "--exclude" not in err.splitlines()[-1]


def test_a_model_file_whose_name_begins_with_a_dash_is_explained(cnn_path, tmp_path, capsys, monkeypatch):
    """`analyze -m.onnx` (a file named so) said only "the following arguments are required: model"."""
    import shutil

    shutil.copy(cnn_path, tmp_path / "-m.onnx")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("analyze", "-m.onnx", capsys=capsys)
    assert code == 2 and "'-m.onnx' is a file whose name begins with a dash, read as an option: write ./-m.onnx" in err
    assert run_cli("analyze", "./-m.onnx", capsys=capsys)[0] == 0
    code, _, err = run_cli("compress", "./-m.onnx", "-o", "-c.onnx", "--keep-params", "0.6", capsys=capsys)
    assert code == 2 and "'-c.onnx' begins with a dash and reads as an option: write -o ./-c.onnx, or -o=-c.onnx" in err
    code, _, err = run_cli("analyze", "--exclude", "conv*", capsys=capsys)  # no model given at all: none taken
    assert code == 2 and "required: model" in err and "takes every word" not in err


def test_the_closing_note_does_not_offer_a_validate_that_cannot_feed_the_model(tmp_path, capsys):
    # a bfloat16 graph input cannot be fed from Python: the note sent the user to a validate command that refuses
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "W")
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["xf", "W"], ["y"], name="fc")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])], [weight])
    onnx.save(model, tmp_path / "m.onnx")
    code, out, _ = run_cli("compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"),
                           "--keep-params", "0.5", "--rank-multiple", "1", capsys=capsys)
    assert code == 0 and (tmp_path / "out.onnx").exists()
    assert "onnx-alds validate" not in out and "graph input 'x' is bfloat16" in out


@pytest.mark.parametrize("text", ["nan", "-0.5", "2"])
def test_a_fraction_flag_out_of_range_is_asked_for_as_a_fraction(text):
    import argparse

    from onnx_alds.argtypes import fraction

    with pytest.raises(argparse.ArgumentTypeError, match=r"give a fraction in \[0, 1\]"):
        fraction(text)


def test_a_model_without_an_opset_import_is_told_so(cnn_path, tmp_path, capsys):
    """A valid graph whose opset_import is empty was called "truncated or not ONNX"."""
    model = onnx.load(cnn_path)
    del model.opset_import[:]
    onnx.save(model, tmp_path / "no_opset.onnx")
    code, _, err = run_cli("analyze", tmp_path / "no_opset.onnx", capsys=capsys)
    assert_one_line_error(code, err, "no_opset.onnx", "imports no opset (its opset_import is empty")


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_signal_during_the_teardown_after_the_output_landed_exits_with_the_commands_code(cnn_path, tmp_path, stop):
    """A signal in the ~0.4 s after 'wrote ...' (the interpreter's exit) killed the process by the signal's
    default action (status -15, no message; SIGINT a traceback) though every output was written. Here the
    signal arrives while the exit runs the atexit functions."""
    import subprocess

    script = ("import atexit, os, signal, sys, time\n"
              f"atexit.register(lambda: (os.kill(os.getpid(), signal.{stop}), time.sleep(3)))\n"
              "from onnx_alds.cli import main\n"
              f"sys.argv = ['onnx-alds', 'compress', {str(cnn_path)!r}, '-o', {str(tmp_path / 'out.onnx')!r}, "
              "'--keep-params', '0.5', '--rank-multiple', '1']\n"
              "sys.exit(main())\n")
    import signal

    # (the signal at its default in the child: a suite run in the background ignores SIGINT, and so would it)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"},
                          preexec_fn=lambda: signal.signal(getattr(signal, stop), signal.SIG_DFL))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote" in done.stdout + done.stderr and (tmp_path / "out.onnx").is_file()
    assert "Traceback" not in done.stderr


def test_a_finished_command_line_process_fails_when_its_output_cannot_be_written(tmp_path):
    """tools/fuzz.py --list-seeds > /dev/full ended with exit 0 and nothing written (the exit's flush failed in
    silence); a signal while that flush was blocked on a full pipe gave a 'reentrant call' traceback."""
    import subprocess

    script = ("import signal, sys\n"
              "from onnx_alds.signals import ScriptExit\n"
              "exit = ScriptExit()\n"
              "print('x' * 1000)\n"
              "if sys.argv[1] == 'signal':\n"
              "    exit.flushing = True\n"
              "    exit.handler(signal.SIGTERM, None)\n"
              "exit.exit(0)\n")
    buffered = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}  # (as a shell's)
    with open(os.devnull if not os.path.exists("/dev/full") else "/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", script, "flush"], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60, env=buffered)
    if os.path.exists("/dev/full"):
        assert done.returncode == 1 and "error: writing standard output failed" in done.stderr
    cut = subprocess.run([sys.executable, "-c", script, "signal"], capture_output=True, text=True, timeout=60)
    assert cut.returncode == 130 and cut.stderr.startswith("error: interrupted while writing standard output")
    assert "Traceback" not in cut.stderr


def test_an_output_name_of_the_longest_legal_length_is_written_beside_a_report(cnn_path, tmp_path, capsys):
    """-o of a 255-byte name with --report: the check of the weights file '<-o>.data' (260 bytes) raised
    "File name too long" about a file the user never named."""
    name = "a" * 250 + ".onnx"
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / name), "--report", str(tmp_path / "r.json"),
                           "--keep-params", "0.5", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / name).is_file() and (tmp_path / "r.json").is_file()


def test_a_report_written_over_the_model_through_a_link_is_refused(cnn_path, tmp_path, capsys):
    """The same file under two names (a symbolic link) is one output: found by comparing the files."""
    (tmp_path / "out.onnx").write_bytes(b"")
    (tmp_path / "link.json").symlink_to(tmp_path / "out.onnx")
    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "out.onnx"), "--report",
                           str(tmp_path / "link.json"), "--keep-params", "0.5", capsys=capsys)
    assert_one_line_error(code, err, "is also the -o file")


@pytest.mark.parametrize("command, flags, repeated", [
    ("compress", ["--calibration-random", "8", "--prune", "only", "--prune", "combined"], "--prune"),
    ("compress", ["--calibration-random", "8", "--both-factors", "2", "--both-factors", "3"], "--both-factors"),
    ("bench", ["--batch", "2", "--batch", "4"], "--batch"),
    ("sweep", ["--keep-flops", "0.6", "--keep-flops", "0.7", "--methods", "svd", "-o", "OUT"], "--keep-flops"),
])
def test_a_flag_with_an_optional_value_or_a_list_given_twice_is_a_usage_error(cnn_path, tmp_path, capsys, command,
                                                                            flags, repeated):
    """`--prune only --prune combined` pruned combined, `bench --batch 2 --batch 4` timed batch 4 only and a
    sweep's second --keep-flops dropped the first's values, each with exit 0."""
    flags = [str(tmp_path / "sweep") if flag == "OUT" else flag for flag in flags]
    output = ["-o", str(tmp_path / "a.onnx"), "--keep-params", "0.5"] if command == "compress" else []
    code, _, err = run_cli(command, str(cnn_path), *output, *flags, capsys=capsys)
    assert code == 2 and f"{repeated} is given twice; give it once" in err, err
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "sweep").exists()


def test_validate_seed_without_random_inputs_is_refused(cnn_path, tmp_path, capsys):
    """validate --inputs FILE.npz --seed 5 wrote the same figures as without --seed, exit 0."""
    np.savez(tmp_path / "x.npz", input=np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    code, _, err = run_cli("validate", str(cnn_path), str(cnn_path), "--inputs", str(tmp_path / "x.npz"), "--seed",
                           "5", capsys=capsys)
    assert_one_line_error(code, err, "--seed draws the --random inputs")
    code, _, err = run_cli("validate", str(cnn_path), str(cnn_path), "--random", "4", "--seed", "5", capsys=capsys)
    assert code == 0, err


def test_bias_correction_beside_affine_correction_is_refused(cnn_path, tmp_path, capsys):
    """--bias-correction --affine-correction wrote the model of --affine-correction alone, and the report listed
    bias-correction among the steps applied."""
    import onnx_alds
    from onnx_alds.errors import InputDataError
    from onnx_alds.inputs import load_inputs

    code, _, err = run_cli("compress", str(cnn_path), "-o", str(tmp_path / "a.onnx"), "--keep-params", "0.5",
                           "--calibration-random", "8", "--bias-correction", "--affine-correction", capsys=capsys)
    assert_one_line_error(code, err, "--bias-correction has no effect with --affine-correction")
    with pytest.raises(InputDataError, match="bias_correction=True has no effect with affine_correction=True"):
        onnx_alds.compress(str(cnn_path), keep_params=0.5, calibration=load_inputs(str(cnn_path), random=8),
                           bias_correction=True, affine_correction=True)


def test_a_failed_validation_keeps_the_plans_warnings(cnn_path, tmp_path, capsys):
    """compress --validate that failed said only "validation failed …; relax the tolerance or compress less": the
    warnings (the plan cut far below the budget, or deep without data) that explain it were dropped."""
    out = tmp_path / "o.onnx"
    code, _, err = run_cli("compress", cnn_path, "-o", out, "--keep-params", "0.2", "--rank-multiple", "1",
                           "--validate", "--validate-random", "8", "--min-mean-cosine", "0.99999", capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 1 and not out.exists()
    assert lines[-1].startswith("error: validation failed") and any(line.startswith("warning: ") for line in lines)


def test_an_existing_file_of_another_kind_is_not_overwritten(cnn_path, tmp_path, capsys):
    """plan -o precious.onnx wrote its JSON over a model, compress -o data.npz a model over a data set, and
    --report c.onnx JSON over a model, with exit 0: one swapped argument destroyed a file."""
    import shutil

    model = tmp_path / "precious.onnx"
    shutil.copy(cnn_path, model)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((2, 3), np.float32))
    before = model.read_bytes(), data.read_bytes()
    for args, fragment in (
            (["plan", cnn_path, "--keep-flops", "0.8", "-o", str(model)],
             "is an existing ONNX model that is not an onnx-alds output (or was changed by another tool since), and "
             "plan would write a plan over it"),
            (["compress", cnn_path, "--keep-flops", "0.8", "-o", str(data)],
             "is an existing zip archive (an .npz, a .pt ...), and compress would write an ONNX model"),
            (["compress", cnn_path, "--keep-flops", "0.8", "-o", str(tmp_path / "o.onnx"), "--report", str(model)],
             "--report '")):
        code, _, err = run_cli(*args, capsys=capsys)
        assert_one_line_error(code, err, fragment, "give another path (or remove the file first)")
    assert (model.read_bytes(), data.read_bytes()) == before and not (tmp_path / "o.onnx").exists()
    shutil.copy(cnn_path, tmp_path / "model_copy")  # a model under another name: known by its bytes
    code, _, err = run_cli("analyze", cnn_path, "--json", str(tmp_path / "model_copy"), capsys=capsys)
    assert_one_line_error(code, err, "is an existing ONNX model that is not an onnx-alds output (or was changed by "
                                     "another tool since), and analyze would write a JSON report over it")
    notes = tmp_path / "notes.txt"  # any other file (a script, notes) is not overwritten either
    notes.write_text("my notes")
    code, _, err = run_cli("compress", cnn_path, "--keep-flops", "0.8", "-o", str(notes), capsys=capsys)
    assert_one_line_error(code, err, "is an existing file of another kind, and compress would write an ONNX model")
    assert notes.read_text() == "my notes"
    (tmp_path / "empty.onnx").write_bytes(b"")  # an empty file holds nothing to lose
    code, _, err = run_cli("compress", cnn_path, "--keep-flops", "0.8", "-o", str(tmp_path / "empty.onnx"),
                           capsys=capsys)
    assert code == 0, err
    assert run_cli("plan", cnn_path, "--keep-flops", "0.9", "-o", str(tmp_path / "old.json"), capsys=capsys)[0] == 0
    # an earlier output of the same kind: overwritten as before
    code, _, err = run_cli("plan", cnn_path, "--keep-flops", "0.8", "-o", str(tmp_path / "old.json"), capsys=capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "old.json").read_text())["format"] == "onnx-alds plan"


def test_only_an_earlier_output_of_the_same_kind_is_replaced(cnn_path, tmp_path, capsys):
    """bench --json over a hand-edited plan, validate --json over a user's JSON that quotes a report, analyze
    --json over {"dependencies": {"onnx_alds": ...}}, compress -o over the user's own model: all replaced
    with exit 0. A validate report written before reports recorded versions is still replaced."""
    import shutil

    plan, small = tmp_path / "plan.json", tmp_path / "s.onnx"
    assert run_cli("plan", cnn_path, "--keep-flops", "0.8", "-o", plan, capsys=capsys)[0] == 0
    assert run_cli("compress", cnn_path, "--keep-flops", "0.8", "-o", small, "--report", tmp_path / "r.json",
                   capsys=capsys)[0] == 0
    quoting, deps, mine = tmp_path / "exp.json", tmp_path / "deps.json", tmp_path / "mine.onnx"
    quoting.write_text(json.dumps({"experiment": "a", "baseline": json.loads((tmp_path / "r.json").read_text())}))
    deps.write_text('{"dependencies": {"onnx_alds": "0.1"}}')
    shutil.copy(cnn_path, mine)
    before = {path: path.read_bytes() for path in (plan, quoting, deps, mine)}
    for args, fragment in (
            (["validate", cnn_path, small, "--random", "4", "--json", plan], "is an existing onnx-alds plan, and "
                                                                             "validate would write a JSON report"),
            (["validate", cnn_path, small, "--random", "4", "--json", quoting], "JSON file not written by onnx-alds"),
            (["analyze", cnn_path, "--json", deps], "JSON file not written by onnx-alds"),
            (["compress", cnn_path, "--keep-flops", "0.8", "-o", mine],
             "is an existing ONNX model that is not an onnx-alds output (or was changed by another tool since), and "
             "compress would write")):
        code, _, err = run_cli(*args, capsys=capsys)
        assert_one_line_error(code, err, fragment)
    assert all(path.read_bytes() == data for path, data in before.items())
    legacy = tmp_path / "old_validate.json"  # (an earlier version's validate --json: no versions)
    legacy.write_text(json.dumps({"original": "a.onnx", "passed": True, "tolerances": {}, "default_tolerances": {},
                                  "outputs": []}))
    code, _, err = run_cli("validate", cnn_path, small, "--random", "4", "--json", legacy, capsys=capsys)
    assert code == 0, err
    assert run_cli("compress", cnn_path, "--keep-flops", "0.7", "-o", small, capsys=capsys)[0] == 0  # its own


def test_file_kinds_by_their_bytes(tmp_path):
    """A PNG at a plot's name is the sweep's only when matplotlib wrote it; a sweep.csv only with its header."""
    from onnx_alds.model_io import existing_file_kind

    photo, plot, table = tmp_path / "m-quality.png", tmp_path / "p.png", tmp_path / "sweep.csv"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20 + b"tEXtSoftware\x00Matplotlib version3.9, https://matplotlib.org/")
    table.write_text("variant_id,model\n1,2\n")
    assert existing_file_kind(photo) == "PNG image" and existing_file_kind(plot) == "onnx-alds plot"
    assert existing_file_kind(table, csv_header="variant_id,model") == "onnx-alds CSV table"
    assert existing_file_kind(table, csv_header="variant_id,model,method") == "file of another kind"
    assert existing_file_kind(tmp_path / "none") is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_model_piped_to_a_command_that_reads_it_twice_is_refused_first(tmp_path, capsys):
    """``cat c.onnx | onnx-alds validate m.onnx /dev/stdin``: the second read of the pipe was empty, and the error
    blamed the file ("the model does not have an ir_version set properly"), after the work for --validate."""
    from conftest import small_cnn

    onnx.save(small_cnn(), tmp_path / "m.onnx")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for argv in (["validate", str(tmp_path / "m.onnx"), str(pipe), "--random", "2"], ["bench", str(pipe)],
                 ["compress", str(pipe), "-o", str(tmp_path / "c.onnx"), "--keep-params", "0.5", "--validate"]):
        assert main(argv) == 1
        assert capsys.readouterr().err.startswith(f"error: '{pipe}' is a pipe or device, which {argv[0]} reads more "
                                                  "than once; save the model to a file and give that path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "pipe"]


def test_a_name_too_long_asks_for_a_shorter_path():
    """An -o path near PATH_MAX (the OS takes it; the temporary name beside it does not) said "fix the path or
    free the resource", which has nothing to free."""
    import errno

    from onnx_alds.errors import os_error_text

    text = os_error_text(OSError(errno.ENAMETOOLONG, "File name too long", "/out/" + "a" * 300 + ".onnx"))
    assert text.endswith("; give a shorter path") and "free the resource" not in text
    assert "free the resource" in os_error_text(OSError(errno.ENOSPC, "No space left on device", "/out/m.onnx"))


def test_the_commands_the_tool_suggests_name_paths_a_shell_can_run(tmp_path, capsys, monkeypatch):
    """-o ./-x.onnx suggested "onnx-alds validate m.onnx -x.onnx ...", which the shell passes as a flag; a model
    read from <(cat m.onnx) was named as /dev/fd/63, gone once read."""
    from conftest import small_cnn

    from onnx_alds.model_io import advice_path

    monkeypatch.chdir(tmp_path)
    onnx.save(small_cnn(), "m.onnx")
    assert main(["compress", "m.onnx", "-o", "./-x.onnx", "--keep-params", "0.7"]) == 0
    assert "measure those: onnx-alds validate m.onnx ./-x.onnx --inputs" in capsys.readouterr().out
    assert advice_path("my model.onnx") == "'my model.onnx'"
    assert advice_path("/dev/stdin") == "MODEL.onnx"  # (redirected from a file, it is one only this once)
    if hasattr(os, "mkfifo"):
        os.mkfifo("pipe")
        assert advice_path("pipe") == "MODEL.onnx"
