"""The scripts under tools/: bad input gives one ``error:`` line (or an argparse usage error) before any work,
never a traceback; --quick runs leave the published results alone; temporary folders are removed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool_under_test", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_model(path: Path) -> Path:
    """y = x @ W (16 × 16), dynamic batch."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run_tool(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, str(TOOLS / name), *args], capture_output=True, text=True,
                          env=environment, timeout=120)


DATA = ROOT / "onnx_alds" / "data"

# (tool, arguments with {tmp} for the test's folder, exit code, a piece of the message)
BAD_INPUT = [
    ("profile_nodes.py", ["{tmp}/missing.onnx"], 1, "does not exist"),
    ("profile_nodes.py", ["{tmp}/tiny.onnx", "--runs", "0"], 2, "argument --runs"),
    ("profile_nodes.py", ["{tmp}/tiny.onnx", "--batch", "0"], 2, "argument --batch"),
    ("bench_memory.py", ["{tmp}/missing.onnx"], 1, "does not exist"),
    ("bench_memory.py", ["{tmp}/tiny.onnx", "--out-dir", "{tmp}/nodir"], 1, "--out-dir"),
    ("bench_memory.py", ["{tmp}/tiny.onnx", "--json", "{tmp}"], 1, "is a folder"),
    ("build_large_model.py", ["{tmp}/x.onnx", "--dim", "8", "--hidden", "16", "--core", "0"], 2, "argument --core"),
    ("build_large_model.py", ["{tmp}/x.onnx", "--dim", "-4", "--hidden", "16"], 2, "argument --dim"),
    ("build_large_model.py", ["{tmp}/x.onnx", "--size", "-1"], 2, "argument --size"),
    ("accuracy_bench.py", ["--models", "nosuch"], 1, "choose from"),
    ("accuracy_bench.py", ["--models", "mnist-resnet", "--json", "{tmp}"], 1, "is a folder"),
    ("accuracy_bench.py", ["--calibration-sizes", "-5"], 2, "argument --calibration-sizes"),
    ("data_aware_bench.py", ["--eval-limit", "-450"], 2, "argument --eval-limit"),
    ("data_aware_bench.py", ["--models", "nosuch"], 1, "choose from"),
    ("layer_probe.py", ["--model", str(DATA / "mnist_resnet.onnx"), "--calibration", str(DATA / "mnist_calibration.npz"),
                        "--held-out", str(DATA / "mnist_eval.npz"), "--layers", "nosuch"], 1, "/fc/Gemm"),
    ("prune_bench.py", ["--keep", "0.5", "--time", "0.3"], 2, "--time 0.3 is not one of --keep"),
    ("prune_bench.py", ["--models", "nosuch"], 1, "choose from"),
    ("bench_latency.py", ["--batch", "foo"], 2, "argument --batch"),
    ("int8_compare.py", ["--report", "--out", "{tmp}/nodir"], 1, "--report"),
    ("sweep.py", ["--report", "--out", "{tmp}/nodir", "--results-md", "{tmp}/R.md"], 1, "--report"),
    ("parallel_efficiency.py", ["sweep", "{tmp}/a.json", "{tmp}/b.json"], 1, "a.json"),
    ("parallel_efficiency.py", ["sweep", "{tmp}/record.json", "{tmp}/record.json"], 1, "no task timeline"),
    ("fuzz.py", ["--mutants", "1", "--out", "{tmp}/tiny.onnx"], 1, "give a folder"),
    ("fuzz.py", ["--show", "-1"], 2, "argument --show"),
    ("fuzz.py", ["--timeout", "0", "--out", "{tmp}/fz"], 2, "argument --timeout"),
    ("fuzz.py", ["--jobs", "0", "--out", "{tmp}/fz"], 2, "argument --jobs"),
    ("bench_calibration.py", ["quality", "--positions", "0"], 2, "argument --positions"),
    ("equal_speed_accuracy.py", ["--keep-flops", "0"], 2, "argument --keep-flops"),
    ("distill_bench.py", ["--minutes", "0"], 2, "argument --minutes"),
    ("distill_bench.py", ["--report", "--out", "{tmp}/nothing"], 1, "--report"),
]


@pytest.mark.parametrize("tool, args, code, text", BAD_INPUT, ids=[f"{c[0]} {' '.join(c[1])}"[:60] for c in BAD_INPUT])
def test_bad_input_is_one_line_and_an_exit_code(tmp_path, tool, args, code, text):
    tiny_model(tmp_path / "tiny.onnx")
    (tmp_path / "record.json").write_text(json.dumps({"runs": [{"phases": {"tasks_s": 1.0}}]}))  # no timeline
    result = run_tool(tool, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    assert text in result.stderr
    if code == 1:
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "nodir").exists() and not (tmp_path / "nothing").exists()


# the same, run in this process (a subprocess per case costs 1.5 s of imports): (tool, arguments, a piece of
# the message); every one exits 1 with one error line, before any work and without creating --out
BAD_INPUT_IN_PROCESS = [
    # a file that is not what the flag reads
    ("bench_memory.py", ["{tmp}/text.txt", "--keep-params", "0.5"], "as an ONNX model"),
    ("sweep.py", ["--merge-from", "{tmp}/text.txt", "--out", "{tmp}/nodir", "--results-md", "{tmp}/R.md"],
     "text.txt' is not a JSON file"),
    ("sweep.py", ["--merge-from", "{tmp}/missing.json", "--out", "{tmp}/nodir", "--results-md", "{tmp}/R.md"],
     "missing.json"),
    ("sweep.py", ["--merge-from", "{tmp}/record.json", "--out", "{tmp}/nodir", "--results-md", "{tmp}/R.md"],
     "has no 'rows'"),
    ("sweep.py", ["--notes", "{tmp}/MISSING.md", "--out", "{tmp}/nodir", "--results-md", "{tmp}/R.md"],
     "--notes"),
    ("sweep.py", ["--out", "{tmp}/nodir", "--work", "{tmp}/text.txt"], "--work '"),
    ("sweep.py", ["--out", "{tmp}/nodir", "--engine", "local", "--address", "1.2.3.4"], "--address"),
    ("prune_bench.py", ["--models", "mnist-resnet", "--keep", "0.5", "--variants", "prune", "--calibration", "eval"],
     "--calibration eval"),
    ("prune_bench.py", ["--models", "mnist-resnet", "--calibration", "agreement"], "--calibration agreement"),
    ("prune_bench.py", ["--models", "mnist-resnet", "--calibration", "./eval"], "--calibration ./eval"),
    ("prune_bench.py", ["--models", "mnist-resnet", "--calibration", "eval.npz"], "--calibration eval.npz"),
    ("int8_compare.py", ["--static-ops", "Bogus", "--out", "{tmp}/nodir", "--work", "{tmp}/nothing"], "Bogus"),
    ("int8_compare.py", ["--static-ops", "all", "Conv", "--out", "{tmp}/nodir", "--work", "{tmp}/nothing"],
     "'all' (every op ONNX Runtime quantizes) must be given alone"),
    ("int8_compare.py", ["--quick", "--models", "mnist-resnet", "--static-ops", "MatMul", "--out", "{tmp}/nodir",
                         "--work", "{tmp}/nothing"], "mnist-resnet has no MatMul node"),
    # contradictory flags, and flags that change nothing
    ("sweep.py", ["--no-bench", "--bench-only", "--out", "{tmp}/nodir"], "--bench-only"),
    ("bench_latency.py", ["--models", "mnist", "--batch", "resnet50=2"], "--batch resnet50=2"),
    ("layer_probe.py", ["--models", "mnist-resnet", "--calibration", str(DATA / "mnist_calibration.npz")],
     "--calibration only works with --model"),
    ("layer_probe.py", ["--model", str(DATA / "mnist_resnet.onnx"), "--calibration", str(DATA / "mnist_calibration.npz"),
                        "--held-out", str(DATA / "mnist_eval.npz"), "--models", "mnist-resnet"], "--models"),
    ("accuracy_bench.py", ["--models", "mnist-resnet", "--pool"], "--pool"),
    ("accuracy_bench.py", ["--models", "mnist-resnet", "--calibration-sizes", "100"], "--calibration-sizes 100"),
    ("accuracy_bench.py", ["--models"], "--models"),
    ("accuracy_bench.py", ["--models", "mnist-resnet", "--methods"], "--methods"),
    ("data_aware_bench.py", ["--models"], "--models"),
    ("data_aware_bench.py", ["--variants"], "--variants"),
]


@pytest.mark.parametrize("tool, args, text", BAD_INPUT_IN_PROCESS,
                         ids=[f"{c[0]} {' '.join(c[1])}"[:60] for c in BAD_INPUT_IN_PROCESS])
def test_bad_input_in_process_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, tool, args, text):
    (tmp_path / "text.txt").write_text("some text, not a model nor JSON\n")
    (tmp_path / "record.json").write_text(json.dumps({"runs": []}))  # JSON, but no sweep record
    module = load_tool(tool[:-3])
    from _tool import run_tool as run_main

    monkeypatch.setattr(sys, "argv", [tool, *(a.replace("{tmp}", str(tmp_path)) for a in args)])
    assert run_main(module.main) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert text in err
    assert not (tmp_path / "nodir").exists() and not (tmp_path / "nothing").exists()


def test_parallel_efficiency_without_ray_says_what_to_install(tmp_path):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "ray.py").write_text("raise ImportError('No module named ray')\n")
    result = run_tool("parallel_efficiency.py", "calibration", "--model", str(tiny_model(tmp_path / "tiny.onnx")),
                      "--calibration", str(tmp_path / "none.npz"),
                      env={"PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), str(ROOT)])})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "onnx-alds[ray]" in result.stderr


@pytest.mark.parametrize("output", ["folder", "missing/x.onnx"])
def test_build_large_model_checks_its_output_before_writing_weights(tmp_path, output):
    (tmp_path / "folder").mkdir()
    result = run_tool("build_large_model.py", str(tmp_path / output), "--dim", "8", "--hidden", "16", "--layers", "1")
    assert result.returncode == 1 and result.stderr.startswith("error: "), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # no OUTPUT.data left behind


def test_quick_runs_write_beside_the_published_results(tmp_path):
    sweep, int8 = load_tool("sweep"), load_tool("int8_compare")
    results = ROOT / "docs" / "results"
    args = sweep.parse_args(["--quick"])
    assert args.out == results / "quick" and args.results_md == results / "quick" / "RESULTS.md"
    args = sweep.parse_args([])
    assert args.out == results and args.results_md == ROOT / "docs" / "RESULTS.md"
    args = sweep.parse_args(["--quick", "--out", str(tmp_path)])
    assert args.out == tmp_path and args.results_md == tmp_path / "RESULTS.md"
    assert int8.parse_args(["--quick"]).out == results / "quick"
    assert int8.parse_args([]).out == results
    assert int8.parse_args(["--quick", "--out", str(tmp_path)]).out == tmp_path


def test_results_tables_leave_out_rows_measured_on_other_data(tmp_path):
    sweep = load_tool("sweep")

    def row(keep, accuracy, data_id):
        return dict(model="tiny", method="alds", keep=keep, rank_multiple=1, status="ok", achieved_keep=keep,
                    quality_metric="accuracy", accuracy=accuracy, data_id=data_id)

    data = {"rows": [row(0.3, 0.812, "full"), row(0.5, 0.934, "full"), row(0.7, 0.456, "quick")],
            "runs": [dict(command="full run", quick=False, data_ids={"tiny": "full"}),
                     dict(command="quick run", quick=True, data_ids={"tiny": "quick"})],
            "skipped": [], "per_layer": []}
    text = sweep.render_results(data, tmp_path, tmp_path / "RESULTS.md", command="test")
    assert "0.812" in text and "0.934" in text and "0.456" not in text
    assert "1 row measured on other validation data" in text and "quick" in text


def test_int8_table_header_says_how_many_samples_were_used():
    int8 = load_tool("int8_compare")
    result = dict(model="mnist-resnet", evals=[dict(label="eval", limit=100)],
                  timing=dict(batch=32, runs=7, load_before=0.5, load_after=0.5),
                  rows=[dict(variant="fp32", size_bytes=1e6, size_ratio=1.0, accuracy=0.99, agreement=1.0,
                             ms=1.0, spread=0.1, speedup=1.0, p10_ms=0.9, eval_samples=100)])
    header = next(line for line in int8.markdown([result]).splitlines() if line.startswith("| variant"))
    assert "accuracy (100 digits)" in header and "500" not in header
    result["evals"], result["rows"][0]["eval_samples"] = [dict(label="eval", limit=None)], None
    assert "accuracy (500 digits)" in int8.markdown([result])  # a full run of the bundled 500 digits


def test_profile_nodes_leaves_no_temporary_folder(tmp_path, monkeypatch):
    profile_nodes = load_tool("profile_nodes")
    model = tiny_model(tmp_path / "tiny.onnx")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    rows = profile_nodes.profile(model, batch=2, runs=2, threads=1, dims=[])
    assert rows and list(scratch.iterdir()) == []


def test_prune_scaling_removes_its_models(tmp_path, monkeypatch):
    prune_scaling = load_tool("prune_scaling")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    monkeypatch.setattr(sys, "argv", ["prune_scaling.py", "--blocks", "1"])
    monkeypatch.setattr(prune_scaling.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=0, stderr=""))
    assert prune_scaling.main() == 0
    assert list(scratch.iterdir()) == []


def test_bench_memory_removes_its_folder_when_interrupted(tmp_path, monkeypatch):
    bench_memory = load_tool("bench_memory")
    model = tiny_model(tmp_path / "tiny.onnx")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_memory.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_memory.run_once(model, 0.5, [], tmp_path, keep_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_equal_speed_falls_back_to_the_smallest_reachable_keep_latency(monkeypatch):
    equal_speed = load_tool("equal_speed_accuracy")
    from onnx_alds.errors import BudgetError

    asked = []

    def compress(path, *, keep_flops=None, keep_latency=None, **kwargs):
        asked.append(keep_latency)
        if keep_latency is not None and keep_latency < 0.6123:
            raise BudgetError(f"--keep-latency {keep_latency} cannot be reached: the smallest reachable ratio is "
                              "0.6123 (every layer at its fastest measured option)")
        return SimpleNamespace(model=onnx.load(str(path)),
                               report=SimpleNamespace(macs_before=2, macs_after=1, latency={}))

    bench = SimpleNamespace(speedup=lambda index, batch: 2.0)  # 1 / 2.0 = 0.5: below what the tables reach
    monkeypatch.setattr("onnx_alds.compress", compress)
    monkeypatch.setattr("onnx_alds.bench.bench", lambda *args, **kwargs: bench)
    record = equal_speed.measure("mnist", 0.5, runs=1, repeats=1)
    assert asked == [None, 0.5, 0.6123]
    assert record["keep_latency"] == 0.6123 and record["keep_latency_asked"] == 0.5
    assert "smallest reachable" in record["note"] and "not at the same speed" in record["note"]


def test_sweep_without_matplotlib_writes_its_tables_and_says_plots_were_skipped(tmp_path, monkeypatch, capsys):
    """Without the [plots] extra, tools/sweep.py ran the whole sweep and ended in a ModuleNotFoundError
    traceback before RESULTS.md; onnx-alds sweep says 'plots: skipped'."""
    sweep = load_tool("sweep")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(sweep, "write_plots", lambda *a, **k: pytest.fail("plots drawn without matplotlib"))
    monkeypatch.setattr(sweep, "render_results", lambda data, out, results_md, **k: results_md.write_text("ok"))
    sweep.write_outputs({"rows": []}, tmp_path, tmp_path / "RESULTS.md", command="x")
    assert "plots: skipped (matplotlib is not installed" in capsys.readouterr().out
    assert (tmp_path / "RESULTS.md").read_text() == "ok" and (tmp_path / "sweep.json").exists()


def test_bench_latency_exits_1_when_a_model_failed_and_keeps_the_json(tmp_path, monkeypatch, capsys):
    """--provider cuda without a GPU: every model failed, the JSON held only failures, and the exit was 0."""
    bench_latency = load_tool("bench_latency")
    from onnx_alds.errors import ProviderError

    def no_gpu(name, *args, **kwargs):
        raise ProviderError("the CUDA provider is not available")

    monkeypatch.setattr(bench_latency, "bench_model", no_gpu)
    monkeypatch.setattr(sys, "argv", ["bench_latency.py", "--models", "mnist", "--json", str(tmp_path / "r.json")])
    assert bench_latency.main() == 1
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["records"] == [] and record["failures"][0]["model"] == "mnist"
    assert "error: 1 of 1 model runs failed" in capsys.readouterr().err


def fake_programs(folder: Path, **scripts: str) -> Path:
    """Executable shell scripts named by the keywords (``nvidia_smi`` → ``nvidia-smi``) in ``folder``."""
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return folder


def run_cuda_check(tmp_path: Path, path: str) -> subprocess.CompletedProcess:
    bash = next(p for p in ("/bin/bash", "/usr/bin/bash") if Path(p).exists())
    return subprocess.run([bash, str(TOOLS / "cuda_check.sh")], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={"PATH": path, "OUT": str(tmp_path / "out"), "HOME": str(tmp_path)})


@pytest.mark.parametrize("nvidia_smi", [None, "echo 'No devices were found'; exit 6", "exit 0"],
                         ids=["missing", "no devices", "lists none"])
def test_cuda_check_stops_at_once_without_a_gpu(tmp_path, nvidia_smi):
    programs = fake_programs(tmp_path / "bin", **({} if nvidia_smi is None else {"nvidia_smi": nvidia_smi}))
    result = run_cuda_check(tmp_path, str(programs))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "nvidia-smi" in result.stderr and not (tmp_path / "out").exists()


def test_cuda_check_stops_at_the_first_failing_step(tmp_path):
    programs = fake_programs(tmp_path / "bin", nvidia_smi="echo 'GPU 0: NVIDIA Test (UUID: GPU-0)'",
                             python3="echo 'no onnxruntime here' >&2; exit 3")
    result = run_cuda_check(tmp_path, f"{programs}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: step 'onnxruntime and its providers' failed (exit 3)" in result.stderr, result.stderr
    assert not (tmp_path / "out" / "bench_latency.txt").exists()  # the next steps did not run


def test_parallel_efficiency_skips_the_simulation_without_two_shards_on_a_worker(tmp_path):
    """One shard per worker (calibration --limit 8 at --batch 16): statistics.StatisticsError in simulated()."""
    def record(workers: int) -> Path:
        timeline = [dict(worker=f"w{w}", start_s=0.0, seconds=1.0, cpu_s=1.0) for w in range(workers)]
        path = tmp_path / f"w{workers}.json"
        path.write_text(json.dumps({"runs": [{"phases": {"tasks_s": 1.0}, "timeline": timeline}]}))
        return path

    result = run_tool("parallel_efficiency.py", "sweep", str(record(1)), str(record(2)), "--json", str(tmp_path / "pe.json"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "simulation skipped: it needs a worker that ran 2 shards or more" in result.stdout
    assert "CPU-time replay 0.50" in result.stdout and json.loads((tmp_path / "pe.json").read_text())["runs"]


def test_int8_static_quantization_that_quantizes_nothing_is_an_error(tmp_path):
    int8 = load_tool("int8_compare")
    from onnx_alds.errors import OnnxAldsError
    from onnx_alds.inputs import InputSet

    model = tiny_model(tmp_path / "tiny.onnx")
    calibration = InputSet({"x": np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)})
    with pytest.raises(OnnxAldsError, match="quantized no node"):
        int8.quantize_static_qdq(model, tmp_path / "qdq.onnx", calibration, op_types=("Conv",))
    assert not (tmp_path / "qdq.onnx").exists()  # no float model named int8 left behind
    assert int8.quantize_static_qdq(model, tmp_path / "qdq.onnx", calibration, op_types=("MatMul",)).exists()


def test_accuracy_bench_exits_1_when_every_run_failed(tmp_path, monkeypatch, capsys):
    accuracy_bench = load_tool("accuracy_bench")
    from onnx_alds.errors import BudgetError

    def unreachable(*args, **kwargs):
        raise BudgetError("--keep-flops 0.01 cannot be reached")

    monkeypatch.setattr(accuracy_bench, "compress", unreachable)
    assert accuracy_bench.main(["--models", "mnist-resnet", "--keep", "0.01", "--methods", "alds+da",
                                "--json", str(tmp_path / "rows.json")]) == 1
    assert "error: every run failed (1 of 1)" in capsys.readouterr().err
    assert json.loads((tmp_path / "rows.json").read_text())[0]["error"]


def test_data_aware_bench_exits_1_when_every_run_failed(tmp_path, monkeypatch, capsys):
    data_aware_bench = load_tool("data_aware_bench")
    from onnx_alds.errors import BudgetError

    def unreachable(*args, **kwargs):
        raise BudgetError("--keep-flops 0.001 cannot be reached")

    bundled = dict(name="mnist-resnet", model=DATA / "mnist_resnet.onnx", calibration=DATA / "mnist_calibration.npz",
                   held_out=DATA / "mnist_eval.npz", true_labels=True)
    monkeypatch.setattr(data_aware_bench, "find_models", lambda names: [bundled])
    monkeypatch.setattr(data_aware_bench, "run_variant", unreachable)
    assert data_aware_bench.main(["--keep", "0.001", "--variants", "alds", "alds+da", "--eval-limit", "50"]) == 1
    assert "error: every run failed (2 of 2)" in capsys.readouterr().err


def test_profile_nodes_names_its_own_flag_for_dynamic_dims(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "dynamic.onnx"))
    result = run_tool("profile_nodes.py", str(tmp_path / "dynamic.onnx"), "--runs", "1")
    assert result.returncode == 1 and result.stderr.startswith("error: "), result.stderr
    assert "--dim x:1xL" in result.stderr and "--input-shape" not in result.stderr


def test_sweep_that_fails_leaves_no_empty_out_folder(tmp_path, monkeypatch):
    sweep = load_tool("sweep")
    from onnx_alds.errors import OnnxAldsError

    def fails(*args, **kwargs):
        raise OnnxAldsError("compress failed")

    monkeypatch.setattr(sweep, "run_sweep", fails)
    specs = {"tiny": sweep.ModelSpec("tiny", tiny_model(tmp_path / "tiny.onnx"), None, [], "rel_error_mean")}
    with pytest.raises(OnnxAldsError):
        sweep.main(["--models", "tiny", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                    "--results-md", str(tmp_path / "R.md")], specs=specs)
    assert not (tmp_path / "out").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    with pytest.raises(OnnxAldsError):
        sweep.main(["--models", "tiny", "--out", str(tmp_path / "kept"), "--work", str(tmp_path / "work"),
                    "--results-md", str(tmp_path / "R.md")], specs=specs)
    assert (tmp_path / "kept").is_dir()


def test_prune_bench_checks_every_models_calibration_file_before_any_work(tmp_path, monkeypatch, capsys):
    """--models minilm mnist-resnet --calibration pool measured minilm, then failed on mnist's missing
    pool.npz and lost the row; a path that resolves to a held-out set was not refused either."""
    prune_bench = load_tool("prune_bench")
    from _tool import run_tool as run_main

    for name in ("minilm", "mnist-resnet"):
        folder = tmp_path / "models" / "cache" / name
        folder.mkdir(parents=True)
        tiny_model(folder / "model.onnx")
        np.savez(folder / "eval.npz", x=np.zeros((2, 16), np.float32))
    np.savez(tmp_path / "models" / "cache" / "minilm" / "pool.npz", x=np.zeros((2, 16), np.float32))
    monkeypatch.setattr(prune_bench, "ROOT", tmp_path)
    monkeypatch.setattr(prune_bench, "run_variant", lambda *a, **k: pytest.fail("measured before the check"))
    for calibration, text in [("pool", "mnist-resnet has no"), ("../minilm/../mnist-resnet/eval", "held-out")]:
        monkeypatch.setattr(sys, "argv", ["prune_bench.py", "--models", "minilm", "mnist-resnet", "--calibration",
                                          calibration, "--json", str(tmp_path / "rows.json")])
        assert run_main(prune_bench.main) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and text in err, err
        assert not (tmp_path / "rows.json").exists()


@pytest.mark.parametrize("record, text", [
    ({"rows": []}, "has no rows"),
    ({"rows": [{}]}, "rows[0] has no 'model'"),
    ({"rows": [1]}, "rows[0] is not an object"),
    ({"rows": [{"model": "tiny", "method": "alds", "keep": "half", "rank_multiple": 1}]}, "'keep' that is not"),
    ({"rows": [{"model": "tiny", "method": "alds", "keep": 0.5, "rank_multiple": 1}], "skipped": [{"model": "tiny"}]},
     "skipped[0] has no 'method'"),
], ids=["empty", "no model", "not an object", "keep text", "skipped"])
def test_sweep_merge_from_checks_every_row_before_writing(tmp_path, monkeypatch, capsys, record, text):
    """{"rows": []} or rows without 'model' passed read_sweep_json, then a traceback after sweep.json was written."""
    sweep = load_tool("sweep")
    from _tool import run_tool as run_main

    (tmp_path / "other.json").write_text(json.dumps(record))
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--no-plots", "--merge-from", str(tmp_path / "other.json"),
                                      "--out", str(tmp_path / "nodir"), "--results-md", str(tmp_path / "R.md")])
    assert run_main(sweep.main) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and text in err, err
    assert not (tmp_path / "nodir").exists() and not (tmp_path / "R.md").exists()


def test_parallel_efficiency_refuses_a_pair_without_a_run_on_several_workers(tmp_path, monkeypatch, capsys):
    """Two 1-worker records printed nothing and exited 0 (with --json written)."""
    parallel_efficiency = load_tool("parallel_efficiency")
    from _tool import run_tool as run_main

    timeline = [dict(worker="w0", start_s=float(i), seconds=1.0, cpu_s=1.0) for i in range(2)]
    (tmp_path / "one.json").write_text(json.dumps({"runs": [{"phases": {"tasks_s": 2.0}, "timeline": timeline}]}))
    monkeypatch.setattr(sys, "argv", ["parallel_efficiency.py", "sweep", str(tmp_path / "one.json"),
                                      str(tmp_path / "one.json"), "--json", str(tmp_path / "pe.json")])
    assert run_main(parallel_efficiency.main) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "1 worker" in captured.err and "one.json" in captured.err and not captured.out
    assert not (tmp_path / "pe.json").exists()


@pytest.mark.parametrize("model, calibration, held_out, text", [
    ("{tmp}/text.txt", "mnist_calibration.npz", "mnist_eval.npz", "as an ONNX model"),
    ("mnist_resnet.onnx", "mnist_calibration.npz", "{tmp}/text.txt", "as an .npz"),
    ("mnist_resnet.onnx", "mnist_calibration.npz", "{tmp}/other.npz", "has no array for graph input 'input'"),
    ("mnist_resnet.onnx", "{tmp}/other.npz", "mnist_eval.npz", "has no array for graph input 'input'"),
], ids=["model not onnx", "held-out not npz", "held-out lacks input", "calibration lacks input"])
def test_layer_probe_bad_files_are_one_line(tmp_path, monkeypatch, capsys, model, calibration, held_out, text):
    """A file that is no ONNX model, no .npz, or an .npz without the model's input gave a traceback."""
    layer_probe = load_tool("layer_probe")
    from _tool import run_tool as run_main

    (tmp_path / "text.txt").write_text("some text, not a model nor an npz\n")
    np.savez(tmp_path / "other.npz", x=np.zeros((2, 16), np.float32))
    files = [str(tmp_path / f[6:]) if f.startswith("{tmp}/") else str(DATA / f) for f in (model, calibration, held_out)]
    monkeypatch.setattr(sys, "argv", ["layer_probe.py", "--model", files[0], "--calibration", files[1],
                                      "--held-out", files[2], "--json", str(tmp_path / "rows.json")])
    monkeypatch.setattr(layer_probe, "compress", lambda *a, **k: pytest.fail("probed before the files were read"))
    assert run_main(layer_probe.main) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and text in err, err
    assert not (tmp_path / "rows.json").exists()


def test_int8_compare_checks_every_models_static_ops_before_the_first_is_measured(tmp_path, monkeypatch, capsys):
    """--models mnist-resnet minilm --static-ops Conv measured mnist-resnet, then minilm (no Conv) failed."""
    int8 = load_tool("int8_compare")
    from _tool import run_tool as run_main

    reference = int8.model_specs(quick=True)["mnist-resnet"]
    specs = {"first": reference, "later": SimpleNamespace(model=tiny_model(tmp_path / "tiny.onnx"))}
    monkeypatch.setattr(int8, "model_specs", lambda quick=False: specs)
    monkeypatch.setattr(int8, "run_model", lambda *a, **k: pytest.fail("measured before every model was checked"))
    monkeypatch.setattr(sys, "argv", ["int8_compare.py", "--quick", "--models", "first", "later", "--static-ops",
                                      "Conv", "--out", str(tmp_path / "nodir"), "--work", str(tmp_path / "nothing")])
    assert run_main(int8.main) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "later has no Conv node" in err and "MatMul" in err
    assert not (tmp_path / "nodir").exists() and not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_run_tool_ends_sigterm_and_sighup_as_an_interrupt(monkeypatch, capsys, name):
    """`timeout`, a CI cancel or a closed terminal ended every tool with exit 143 (129) and no message."""
    import signal

    monkeypatch.syspath_prepend(str(TOOLS))
    from _tool import run_tool as run_main

    number = getattr(signal, name)
    unhandled = []
    record = lambda *a: unhandled.append(a)  # noqa: E731  (without the fix: recorded, not fatal)
    previous = signal.signal(number, record)
    try:
        def main():
            signal.raise_signal(number)
            return 0

        assert run_main(main, kept="the rows so far are kept") == 130
        assert not unhandled
        err = capsys.readouterr().err
        assert err == "error: interrupted; the rows so far are kept\n", err
        assert signal.getsignal(number) is record  # the handler there was before, after
    finally:
        signal.signal(number, previous)


def sweep_data(model: str = "tiny") -> dict:
    row = dict(model=model, method="alds", keep=0.5, rank_multiple=1, status="ok", achieved_keep=0.5,
               quality_metric="rel_error_mean", rel_error_mean=0.1)
    return {"rows": [row], "skipped": [], "per_layer": [], "runs": []}


@pytest.mark.parametrize("step", ["write_csv", "write_plots", "render_results"])
def test_sweep_interrupted_while_writing_leaves_the_old_outputs_whole(tmp_path, monkeypatch, step):
    """A Ctrl-C or SIGTERM after sweep.json was written left the new sweep.json and sweep.csv with the old
    plots and RESULTS.md (or none): a set that did not belong together."""
    sweep = load_tool("sweep")
    out, results_md = tmp_path / "out", tmp_path / "docs" / "RESULTS.md"
    out.mkdir()
    old = {"sweep.json": "old json\n", "sweep.csv": "old csv\n", "tiny-quality.png": "old png",
           "gone-quality.png": "stale png", "notes.md": "the user's notes\n"}
    for name, text in old.items():
        (out / name).write_text(text)

    def fake_plots(data, folder):
        (folder / "tiny-quality.png").write_text("new png")
        (folder / "gone-quality.png").unlink(missing_ok=True)
        return [folder / "tiny-quality.png"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    data = sweep_data()  # model gone: in the record, with no row to plot now (its old plot is stale)
    data["rows"].append(dict(model="gone", method="alds", keep=0.5, rank_multiple=1, status="error", error="x",
                             quality_metric="rel_error_mean"))
    monkeypatch.setattr(sweep, "write_plots", fake_plots)
    monkeypatch.setattr(sweep, step, interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.write_outputs(data, out, results_md, command="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no RESULTS.md, no staging folder left
    assert {p.name: p.read_text() for p in out.iterdir()} == old

    monkeypatch.undo()
    sweep = load_tool("sweep")
    monkeypatch.setattr(sweep, "write_plots", fake_plots)
    sweep.write_outputs(data, out, results_md, command="x")  # uninterrupted: the whole new set
    assert sorted(p.name for p in out.iterdir()) == ["notes.md", "sweep.csv", "sweep.json", "tiny-quality.png"]
    assert json.loads((out / "sweep.json").read_text())["rows"][0]["model"] == "tiny"
    assert (out / "tiny-quality.png").read_text() == "new png"
    assert "](../out/tiny-quality.png)" in results_md.read_text()  # linked where it landed, not where it was drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "out"]


def old_record_and_another(tmp_path: Path) -> tuple[Path, str]:
    """``tmp_path/out`` holding the sweep record of model "old", ``tmp_path/other.json`` that of "new": the
    out folder and its record's text."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(sweep_data("old")))
    (tmp_path / "other.json").write_text(json.dumps(sweep_data("new")))
    return out, (out / "sweep.json").read_text()


def test_sweep_merge_from_interrupted_before_the_outputs_landed_changes_nothing(tmp_path, monkeypatch):
    sweep = load_tool("sweep")
    out, before = old_record_and_another(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "render_results", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.main(["--no-plots", "--merge-from", str(tmp_path / "other.json"), "--out", str(out),
                    "--results-md", str(tmp_path / "R.md")])
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"] and (out / "sweep.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "out"]


LOADS_NUMPY = sorted(p.name for p in TOOLS.glob("*.py") if re.search(r"^import numpy as np\b", p.read_text(), re.M))


@pytest.mark.parametrize("tool", LOADS_NUMPY)
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_an_interrupt_while_a_tool_loads_its_modules_is_one_line(tmp_path, tool, name):
    """A Ctrl-C in the first second, while numpy and onnx load (before run_tool), gave a KeyboardInterrupt
    traceback. A stand-in numpy sends the signal while it is being imported."""
    import signal

    (tmp_path / "numpy.py").write_text(f"import signal, time\nsignal.raise_signal(signal.{name})\ntime.sleep(20)\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    # (a test run in the background, as `pytest &` or under nohup, ignores SIGINT, and so would the tool: ignored
    # signals stay ignored, as documented; the tool is started as from a terminal)
    result = subprocess.run([sys.executable, str(TOOLS / tool), "--help"], capture_output=True, text=True,
                            env=environment, timeout=120,
                            preexec_fn=lambda: signal.signal(getattr(signal, name), signal.SIG_DFL))
    assert result.returncode == 130, result.stderr
    assert result.stderr == "error: interrupted; no output was written\n", result.stderr


def test_sweep_keeps_older_timings_only_for_the_same_model_and_data():
    """A re-run without timing on a rebuilt model (other weights: another onnx_sha256) kept the earlier model's
    ms_small and speedup in its row, and RESULTS.md printed them for a model never timed."""
    sweep = load_tool("sweep")
    key = {"model": "m", "method": "alds", "rank_multiple": 16, "keep": 0.5}
    timed = {**key, "status": "ok", "onnx_sha256": "a" * 64, "data_id": "d1", "ms_small": 1.0, "speedup_small": 2.0}
    record = {"rows": [timed], "skipped": [], "per_layer": [], "runs": []}
    rerun_same = {**key, "status": "ok", "onnx_sha256": "a" * 64, "data_id": "d1", "accuracy": 0.9}
    kept = sweep.merge_record(record, [rerun_same], [], [], {})["rows"][0]
    assert kept["ms_small"] == 1.0 and kept["accuracy"] == 0.9
    for changed in ({"onnx_sha256": "b" * 64}, {"data_id": "d2"}):
        row = sweep.merge_record(record, [{**rerun_same, **changed}], [], [], {})["rows"][0]
        assert "ms_small" not in row and "speedup_small" not in row


def test_sweep_leaves_the_users_own_pngs_in_out_alone(tmp_path, monkeypatch):
    """Every *.png in --out was copied into the staging folder and moved back: a symlink became a plain file,
    a hard link was broken, a file the user may not replace failed the landing halfway."""
    sweep = load_tool("sweep")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "photo.png").write_text("mine")
    (elsewhere / "real.png").write_text("real")
    (out / "link.png").symlink_to(elsewhere / "real.png")
    (elsewhere / "hard.png").write_text("hard")
    os.link(elsewhere / "hard.png", out / "hard.png")
    (out / "tiny-speedup.png").write_text("stale speedup")  # the sweep's own: no row of tiny is timed now
    before = {name: (out / name).lstat().st_ino for name in ("photo.png", "link.png", "hard.png")}
    user = {str(out / name) for name in before}

    def fake_plots(data, folder):
        (folder / "tiny-quality.png").write_text("new png")
        return [folder / "tiny-quality.png"]

    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if str(source) in user or str(target) in user:
            pytest.fail(f"the user's file moved: {source} -> {target}")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(sweep, "write_plots", fake_plots)
    monkeypatch.setattr(os, "replace", replace)
    for plots in (True, False):
        sweep.write_outputs(sweep_data(), out, tmp_path / "R.md", command="x", plots=plots)
        assert {name: (out / name).lstat().st_ino for name in before} == before
        assert (out / "link.png").is_symlink() and (out / "photo.png").read_text() == "mine"
        assert (elsewhere / "hard.png").stat().st_nlink == 2
    assert sorted(p.name for p in out.iterdir()) == ["hard.png", "link.png", "photo.png", "sweep.csv", "sweep.json",
                                                     "tiny-quality.png"]
    assert "tiny-quality.png" in (tmp_path / "R.md").read_text()  # --no-plots links the plot that is there


@pytest.mark.parametrize("case, text", [
    ("corrupt", "sweep.json' is not"), ("list", "sweep.json' is not"), ("md folder", "--results-md"),
    ("md is sweep.json", "--results-md"), ("md is sweep.csv", "--results-md"), ("out read-only", "--out"),
    ("md folder read-only", "--results-md"), ("report corrupt", "sweep.json' is not"),
])
def test_sweep_checks_its_outputs_before_any_work(tmp_path, monkeypatch, capsys, case, text):
    """A corrupt --out/sweep.json, a --results-md that is a folder or sweep.json itself, or a read-only --out
    were found only after every variant ran (a traceback, or a landing that failed halfway)."""
    sweep = load_tool("sweep")
    from _tool import run_tool as run_main

    out, md = tmp_path / "out", tmp_path / "docs" / "R.md"
    out.mkdir()
    (tmp_path / "docs").mkdir()
    if case in ("corrupt", "report corrupt"):
        (out / "sweep.json").write_text('{"rows": [')
    if case == "list":
        (out / "sweep.json").write_text("[]")
    if case == "md folder":
        md.mkdir()
    if case.startswith("md is "):
        md = out / case[6:]
    if case.endswith("read-only"):  # (tests may run as root: chmod would not stop them)
        denied = out if case == "out read-only" else md.parent
        real = sweep.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if Path(dir) == denied:
                raise PermissionError(13, "Permission denied", str(Path(dir) / "probe"))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(sweep.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("ran before the check"))
    specs = {"tiny": sweep.ModelSpec("tiny", tiny_model(tmp_path / "tiny.onnx"), None, [], "rel_error_mean")}
    argv = ["--no-plots", "--models", "tiny", "--out", str(out), "--work", str(tmp_path / "work"),
            "--results-md", str(md)] + (["--report"] if case.startswith("report") else [])
    monkeypatch.setattr(sys, "argv", ["sweep.py", *argv])
    assert run_main(lambda: sweep.main(argv, specs=specs)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and text in err, err
    assert ".sweep-" not in err and not (tmp_path / "work").exists()
    assert not [p for p in out.iterdir() if p.name != "sweep.json"]


def test_sweep_landing_errors_name_the_users_paths(tmp_path, monkeypatch, capsys):
    """A failure while the outputs landed named the internal OUT/.sweep-*.tmp folder."""
    sweep = load_tool("sweep")
    from _tool import run_tool as run_main

    out, md = tmp_path / "out", tmp_path / "R.md"
    out.mkdir()
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if Path(target).name == "sweep.csv":
            raise PermissionError(13, "Permission denied", str(source), None, str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    assert run_main(lambda: sweep.write_outputs(sweep_data(), out, md, command="x", plots=False)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert ".sweep-" not in err and str(out / "sweep.csv") in err, err
    monkeypatch.undo()
    import shutil

    def move(source, target, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(shutil, "move", move)
    assert run_main(lambda: sweep.write_outputs(sweep_data(), out, md, command="x", plots=False)) == 1
    err = capsys.readouterr().err
    assert ".sweep-" not in err and str(md) in err, err
    assert not [p for p in out.iterdir() if p.name.startswith(".sweep-")]


@pytest.mark.parametrize("sources, text", [
    (["{out}/sweep.json"], "is --out's own sweep.json"), (["{tmp}/other.json", "{tmp}/../{tmp_name}/other.json"], "twice"),
], ids=["own record", "twice"])
def test_sweep_merge_from_refuses_its_own_record_and_a_file_twice(tmp_path, monkeypatch, capsys, sources, text):
    """--merge-from OUT/sweep.json merged the record into itself (every run listed twice); the same file named
    twice did the same with its runs."""
    sweep = load_tool("sweep")
    from _tool import run_tool as run_main

    out, before = old_record_and_another(tmp_path)
    names = [s.format(out=out, tmp=tmp_path, tmp_name=tmp_path.name) for s in sources]
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--no-plots", "--merge-from", *names, "--out", str(out),
                                      "--results-md", str(tmp_path / "R.md")])
    assert run_main(sweep.main) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and text in err, err
    assert (out / "sweep.json").read_text() == before and not (tmp_path / "R.md").exists()


def test_sweep_without_plots_does_not_say_it_wrote_them(tmp_path, capsys):
    """--no-plots printed "wrote ..., sweep.csv and plots" with no PNG written."""
    sweep = load_tool("sweep")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "other.json").write_text(json.dumps(sweep_data("tiny")))
    assert sweep.main(["--no-plots", "--merge-from", str(tmp_path / "other.json"), "--out", str(out),
                       "--results-md", str(tmp_path / "R.md")]) == 0
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said.startswith("wrote ") and not said.endswith("and plots") and not list(out.glob("*.png"))


def test_a_tool_whose_output_pipe_closes_early_exits_quietly(tmp_path):
    """``python tools/fuzz.py --show 42 | head`` ended in a BrokenPipeError traceback; the command line exits quietly
    (status 141) when its reader goes, and so do the tools now."""
    script = tmp_path / "talk.py"
    script.write_text("import sys\nsys.path.insert(0, sys.argv[1])\nfrom _tool import run_tool\n\n"
                      "def main():\n    for _ in range(20000):\n        print('x' * 100)\n    return 0\n\n"
                      "sys.exit(run_tool(main, kept='nothing'))\n")
    reader = subprocess.Popen([sys.executable, str(script), str(Path(__file__).resolve().parents[1] / "tools")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.read(10)
    reader.stdout.close()
    err = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 141 and "Traceback" not in err, err
