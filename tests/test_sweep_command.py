"""``onnx-alds sweep``: the grid, resumability, and identical results with the local and the Ray engine."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

from onnx_alds.cli import main  # noqa: E402
from onnx_alds.errors import BudgetError  # noqa: E402
from onnx_alds.sweep import CSV_COLUMNS, is_timing_field, parse_method, without_timings  # noqa: E402


def tiny_model(path: Path) -> onnx.ModelProto:
    """Conv 4→16 3x3 → Relu → Conv 16→16 3x3 → Relu → GAP → Flatten → Gemm 16→5, dynamic batch."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32),
                                       name)

    inits = [weight("w1", 16, 4, 3, 3), weight("w2", 16, 16, 3, 3), weight("w3", 5, 16),
             numpy_helper.from_array(np.zeros(5, np.float32), "b3")]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The model, held-out inputs with labels (the original scores 0.9) and calibration inputs."""
    import onnxruntime as ort

    root = tmp_path_factory.mktemp("tiny")
    model = tiny_model(root / "tiny.onnx")
    rng = np.random.default_rng(1)
    x_eval = rng.standard_normal((40, 4, 8, 8)).astype(np.float32)
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x_eval})[0]
    labels = np.argmax(logits, axis=1).astype(np.int64)
    labels[:4] = (labels[:4] + 1) % 5
    np.savez(root / "eval.npz", input=x_eval, labels=labels)
    np.savez(root / "calibration.npz", input=rng.standard_normal((16, 4, 8, 8)).astype(np.float32))
    return root


def sweep_args(tiny: Path, out: Path, *extra: str) -> list[str]:
    """2 budgets × 2 methods (one data-free, one data-aware)."""
    # (the tiny model has 16 channels: rank multiple 1; a list flag in ``extra`` replaces the default, as a
    # list flag is given once)
    defaults = {"--keep-flops": ["0.5", "0.8"], "--methods": ["alds", "svd+data"], "--rank-multiple": ["1"]}
    return ["sweep", str(tiny / "tiny.onnx"), *[part for flag, values in defaults.items() if flag not in extra
                                                for part in (flag, *values)],
            "--inputs", str(tiny / "eval.npz"), "--calibration", str(tiny / "calibration.npz"), "-o", str(out),
            "--no-progress", *extra]


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def written(out: Path) -> dict[str, int]:
    """mtime of every file of rows/ and models/."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for folder in ("rows", "models")
            for p in sorted((out / folder).iterdir())}


def record(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def assert_same_results(a: Path, b: Path) -> None:
    """Rows, CSV lines, model files and compression reports identical, timings aside."""
    rows_a, rows_b = record(a)["rows"], record(b)["rows"]
    assert [r["variant_id"] for r in rows_a] == [r["variant_id"] for r in rows_b]
    assert [without_timings(r) for r in rows_a] == [without_timings(r) for r in rows_b]
    strip = lambda rows: [{k: v for k, v in r.items() if not is_timing_field(k)} for r in rows]  # noqa: E731
    assert strip(csv_rows(a / "sweep.csv")) == strip(csv_rows(b / "sweep.csv"))
    models = sorted(p.name for p in (a / "models").glob("*.onnx"))
    assert models and models == sorted(p.name for p in (b / "models").glob("*.onnx"))
    for name in models:
        assert (a / "models" / name).read_bytes() == (b / "models" / name).read_bytes(), name
        reports = [json.loads((d / "models" / name.replace(".onnx", ".report.json")).read_text()) for d in (a, b)]
        for report in reports:
            report.pop("seconds")
        assert reports[0] == reports[1], name


def test_sweep_writes_rows_and_resumes(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = run(sweep_args(tiny, out, "--rank-multiple", "1", "4", "--bench-batch", "1", "4",
                                       "--bench-time", "0.05"), capsys)
    assert code == 0, err
    assert "8 variants (0 done before, 8 to compute) on engine local" in stdout
    data = record(out)
    rows = data["rows"]
    assert len(rows) == 8 and len({r["variant_id"] for r in rows}) == 8
    assert {(r["method"], r["keep"], r["rank_multiple"]) for r in rows} == {
        (m, k, rm) for m in ("alds", "svd+data") for k in (0.5, 0.8) for rm in (1, 4)}
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok
    for row in ok:
        assert 0 < row["achieved_keep"] <= 1 and row["ideal_speedup"] == pytest.approx(1 / row["achieved_keep"])
        assert row["accuracy_original"] == pytest.approx(0.9) and 0 <= row["accuracy"] <= 1
        assert row["quality_metric"] == "accuracy" and row["quality"] == row["accuracy"]
        assert row["data_aware"] == (row["method"] == "svd+data")
        model = out / row["model_file"]
        onnx.checker.check_model(str(model), full_check=True)
        assert row["batch_small"] == 1 and row["batch_large"] == 4 and row["speedup_small"] > 0
        assert row["efficiency_large"] == pytest.approx(row["speedup_large"] / row["ideal_speedup"])
    assert data["runs"][-1]["timing"].startswith("serial on the driver")
    assert data["runs"][-1]["engine"]["engine"] == "local"
    table = csv_rows(out / "sweep.csv")
    assert len(table) == 8 and tuple(table[0]) == CSV_COLUMNS
    if importlib.util.find_spec("matplotlib"):
        assert (out / "tiny-quality.png").exists() and (out / "tiny-speedup.png").exists()

    # the same command again: nothing is recompressed, validated, timed or rewritten
    before = written(out)
    code, stdout, err = run(sweep_args(tiny, out, "--rank-multiple", "1", "4", "--bench-batch", "1", "4",
                                       "--bench-time", "0.05"), capsys)
    assert code == 0, err
    assert "8 variants (8 done before, 0 to compute)" in stdout and "timed tiny" not in stdout
    assert written(out) == before
    again = record(out)
    assert again["rows"] == rows and len(again["runs"]) == 2 and again["runs"][-1]["computed"] == 0

    # a larger grid computes only what is new; an unreachable budget is a finished row (status error)
    code, stdout, err = run(sweep_args(tiny, out, "--rank-multiple", "1", "--keep-flops", "0.5", "0.8", "0.01",
                                       "--no-bench"), capsys)
    assert code == 0, err
    assert "6 variants (4 done before, 2 to compute)" in stdout
    bad = [r for r in record(out)["rows"] if r["keep"] == 0.01]
    assert len(bad) == 2 and all(r["status"] == "error" and "cannot be reached" in r["error"] for r in bad)
    code, stdout, _ = run(sweep_args(tiny, out, "--rank-multiple", "1", "--keep-flops", "0.01", "--no-bench"), capsys)
    assert "2 variants (2 done before, 0 to compute)" in stdout


def test_changed_inputs_are_redone(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"

    def args(samples: int) -> list[str]:
        return ["sweep", str(tiny / "tiny.onnx"), "--keep-flops", "0.6", "--random", str(samples), "-o", str(out),
                "--rank-multiple", "1", "--no-bench", "--no-plots", "--no-progress"]

    assert run(args(8), capsys)[0] == 0
    row = record(out)["rows"][0]
    assert row["quality_metric"] == "agreement" and "accuracy" not in row  # random inputs: no labels
    code, stdout, _ = run(args(8), capsys)
    assert code == 0 and "1 variant (1 done before, 0 to compute)" in stdout
    code, stdout, _ = run(args(9), capsys)  # other validation data: the fingerprint differs
    assert code == 0 and "1 variant (0 done before, 1 to compute)" in stdout
    assert record(out)["rows"][0]["agreement_samples"] == 9


def test_rows_of_other_validation_data_are_named_and_left_out_of_the_plots(tiny, tmp_path, capsys, monkeypatch):
    """One budget measured on 8 random samples, another on 9, into one folder: sweep.csv and the plot
    joined them in one line with nothing to tell them apart. Each row now names its data (``data_id``);
    rows of other data are listed, named in a note, and left out of the plots."""
    import onnx_alds.sweep as sweep_module

    out = tmp_path / "sweep"
    plotted: list = []
    monkeypatch.setattr(sweep_module, "write_plots", lambda rows, folder, **_: plotted.append(list(rows)) or [])

    def args(keep: str, samples: int) -> list[str]:
        return ["sweep", str(tiny / "tiny.onnx"), "--keep-flops", keep, "--random", str(samples), "-o", str(out),
                "--rank-multiple", "1", "--no-bench", "--no-progress"]

    assert run(args("0.5", 8), capsys)[0] == 0
    code, stdout, _ = run(args("0.7", 9), capsys)
    assert code == 0
    rows = record(out)["rows"]
    assert len(rows) == 2 and len({row["data_id"] for row in rows}) == 2
    assert "note: 1 stored rows of tiny were measured on other validation data" in stdout
    assert [row["keep"] for row in plotted[-1]] == [0.7]
    assert {line["data_id"] for line in csv_rows(out / "sweep.csv")} == {row["data_id"] for row in rows}
    code, stdout, _ = run(args("0.7", 9), capsys)  # the same data again: no note for the rows of this data
    assert code == 0 and "1 variant (1 done before, 0 to compute)" in stdout
    assert [row["keep"] for row in plotted[-1]] == [0.7]


def test_replaced_model_file_is_redone(tiny, tmp_path, capsys):
    """A stored model that is not the one its row measured (replaced or edited since) is made again."""
    out = tmp_path / "sweep"
    args = ["sweep", str(tiny / "tiny.onnx"), "--keep-flops", "0.6", "--random", "8", "-o", str(out),
            "--rank-multiple", "1", "--no-bench", "--no-plots", "--no-progress"]
    assert run(args, capsys)[0] == 0
    row = record(out)["rows"][0]
    stored = out / row["model_file"]
    made = stored.read_bytes()
    stored.write_bytes((tiny / "tiny.onnx").read_bytes())  # e.g. copied over by hand
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "1 variant (0 done before, 1 to compute)" in stdout
    assert stored.read_bytes() == made
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "1 variant (1 done before, 0 to compute)" in stdout
    report = stored.with_name(stored.name[:-len(".onnx")] + ".report.json")
    report.unlink()  # its report deleted: it was counted as done and never written again
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "1 variant (0 done before, 1 to compute)" in stdout and report.is_file()


def test_changed_external_data_is_redone(tiny, tmp_path, capsys):
    """The weights of an external-data model live in its ``.data`` file: new weights under the same
    ``.onnx`` bytes were 'done before', and the sweep kept figures of the old weights (exit 0)."""
    from onnx.external_data_helper import convert_model_to_external_data

    folder = tmp_path / "model"
    folder.mkdir()

    def save(seed: int) -> None:
        model = tiny_model(tmp_path / "plain.onnx")
        for init in model.graph.initializer:
            values = numpy_helper.to_array(init)
            noise = np.random.default_rng(seed).standard_normal(values.shape).astype(values.dtype)
            init.CopyFrom(numpy_helper.from_array(values + 0.1 * noise, init.name))
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
        (folder / "m.onnx.data").unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save(model, str(folder / "m.onnx"))

    save(0)
    out = tmp_path / "sweep"
    args = ["sweep", str(folder / "m.onnx"), "--keep-flops", "0.6", "--random", "8", "-o", str(out),
            "--rank-multiple", "1", "--no-bench", "--no-plots", "--no-progress"]
    assert run(args, capsys)[0] == 0
    graph_bytes = (folder / "m.onnx").read_bytes()
    save(1)
    assert (folder / "m.onnx").read_bytes() == graph_bytes  # only the weights changed
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "1 variant (0 done before, 1 to compute)" in stdout
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "1 variant (1 done before, 0 to compute)" in stdout


def test_image_folder_inputs(tmp_path, capsys):
    """--images with a preprocessing, on the bundled MNIST model; a changed image folder is redone."""
    from PIL import Image

    from onnx_alds.demo import MODEL, bundled

    images, out = tmp_path / "digits", tmp_path / "sweep"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(images / f"d{index}.png")
    args = ["sweep", str(bundled(MODEL)), "--keep-flops", "0.6", "--images", str(images), "--preprocess", "mnist",
            "-o", str(out), "--no-bench", "--no-plots", "--no-progress"]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    row = record(out)["rows"][0]
    assert row["status"] == "ok" and row["model"] == "mnist_resnet" and row["agreement_samples"] == 6
    assert "1 variant (1 done before, 0 to compute)" in run(args, capsys)[1]
    Image.fromarray(np.zeros((28, 28), np.uint8), mode="L").save(images / "d6.png")
    assert "1 variant (0 done before, 1 to compute)" in run(args, capsys)[1]


def test_local_process_pool_matches_in_process(tiny, tmp_path, capsys):
    serial, pool = tmp_path / "serial", tmp_path / "pool"
    assert run(sweep_args(tiny, serial, "--no-bench", "--no-plots"), capsys)[0] == 0
    code, stdout, err = run(sweep_args(tiny, pool, "--no-bench", "--no-plots", "--workers", "2"), capsys)
    assert code == 0, err
    assert record(pool)["runs"][-1]["engine"]["mode"] == "process pool"
    assert_same_results(serial, pool)


def test_rows_fitted_to_another_calibration_set_are_named_and_left_out_of_the_plots(tiny, tmp_path, capsys):
    """A budget redone with another calibration set sat beside rows fitted to the first one with the same
    data_id, no note, and one line in the plot; the rows and the CSV did not say which set each used."""
    out = tmp_path / "out"
    args = ["sweep", str(tiny / "tiny.onnx"), "--keep-flops", "0.5", "0.8", "--methods", "svd+data", "--inputs",
            str(tiny / "eval.npz"), "--calibration", str(tiny / "calibration.npz"), "-o", str(out), "--rank-multiple",
            "1", "--no-progress", "--no-bench", "--no-plots"]
    assert run(args, capsys)[0] == 0
    first = {row["keep"]: row["calibration_id"] for row in record(out)["rows"]}
    other = tmp_path / "other.npz"
    x = np.load(tiny / "calibration.npz")["input"]
    np.savez(other, input=x[::-1].copy() * 0.5)
    args[args.index("0.8")] = "0.5"  # (0.5 twice: one variant)
    args[args.index(str(tiny / "calibration.npz"))] = str(other)
    code, stdout, _ = run(args, capsys)
    rows = {row["keep"]: row["calibration_id"] for row in record(out)["rows"]}
    assert code == 0 and rows[0.8] == first[0.8] and rows[0.5] != first[0.5] and rows[0.5]
    assert "1 stored data-aware rows of tiny were fitted to another calibration set" in stdout
    header = (out / "sweep.csv").read_text().splitlines()[0].split(",")
    assert "calibration_id" in header and "seed" in header
    # a run with no calibration names no set to plot: the rows of two sets were drawn as one line, no note
    plain = args[:args.index("--calibration")] + args[args.index("--calibration") + 2:]
    plain[plain.index("svd+data")] = "svd"
    code, stdout, _ = run(plain, capsys)
    assert code == 0 and "the 2 stored data-aware rows of tiny were fitted to 2 calibration sets and this run " \
                         "gave none" in stdout


def test_validating_on_calibration_samples_is_refused(tiny, tmp_path, capsys):
    """--inputs and --calibration the same file: every data-aware row scored in-sample (agreement 1.000)
    as if on held-out data, with no note (SWEEP.md: held-out data, never the calibration set)."""
    args = sweep_args(tiny, tmp_path / "out", "--no-bench", "--no-plots")
    args[args.index("--inputs") + 1] = str(tiny / "calibration.npz")
    code, _, err = run(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "holds" in lines[0] and "samples from the calibration set" in lines[0]
    assert not (tmp_path / "out").exists()


def test_validating_on_the_samples_an_earlier_run_fitted_the_model_to_is_refused(tiny, tmp_path, capsys):
    """A model compressed with --calibration A, swept with --inputs A (and its own --calibration B): every row
    scored in-sample, exit 0, with no note, where validate on the same pair says "in-sample and optimistic"."""
    code, _, _ = run(["compress", str(tiny / "tiny.onnx"), "-o", str(tmp_path / "d1.onnx"), "--keep-flops", "0.6",
                      "--rank-multiple", "1", "--calibration", str(tiny / "calibration.npz"), "-q"], capsys)
    assert code == 0
    args = sweep_args(tiny, tmp_path / "out", "--no-bench", "--no-plots")
    args[1] = str(tmp_path / "d1.onnx")
    args[args.index("--inputs") + 1] = str(tiny / "calibration.npz")
    args[args.index("--calibration") + 1] = str(tiny / "eval.npz")
    code, _, err = run(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "that the model itself was calibrated or trained on" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_worker_killed_mid_sweep_takes_only_its_own_variant(tiny, tmp_path, capsys, monkeypatch):
    """One worker SIGKILLed (the OOM killer) broke the process pool: every variant not yet finished was
    reported crashed, started or not, and the command exited 1. They run again in a new pool now."""
    from onnx_alds import sweep

    real_run, killed = sweep.LocalEngine.run, []

    def run_and_kill_a_worker(self, tasks):
        for task, outcome in real_run(self, tasks):
            if not killed and self._pool is not None:
                victim = next(iter(self._pool._processes.values()))
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(victim.pid)
            yield task, outcome

    monkeypatch.setattr(sweep.LocalEngine, "run", run_and_kill_a_worker)
    serial, pool = tmp_path / "serial", tmp_path / "pool"
    assert run(sweep_args(tiny, serial, "--no-bench", "--no-plots"), capsys)[0] == 0
    code, _, err = run(sweep_args(tiny, pool, "--no-bench", "--no-plots", "--workers", "2"), capsys)
    assert killed and code == 0, err
    assert_same_results(serial, pool)


def test_a_variant_that_kills_its_worker_every_time_is_the_only_one_reported(tiny, tmp_path, capsys, monkeypatch):
    """After a worker died the tasks that only waited were retried too, and after a second break every
    remaining one ran alone, one worker for the rest of the sweep. Now the tasks running at the break run
    alone; the one that kills its worker every time is the one reported crashed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('ONNX_ALDS_TEST_KILL'):\n"
        "    import onnx_alds.sweep as sweep\n"
        "    real = sweep.run_variant\n"
        "    def run_variant(task, *args, **kwargs):\n"
        "        if os.environ['ONNX_ALDS_TEST_KILL'] in task.variant.id:\n"
        "            os.kill(os.getpid(), 9)\n"
        "        return real(task, *args, **kwargs)\n"
        "    sweep.run_variant = run_variant\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("ONNX_ALDS_TEST_KILL", "tiny.alds.flops0.5")
    code, _, err = run(sweep_args(tiny, tmp_path / "out", "--no-bench", "--no-plots", "--workers", "2"), capsys)
    assert code == 1 and "1 variant(s) crashed (first: tiny.alds.flops0.5" in err
    assert "died with it running alone" in err
    rows = record(tmp_path / "out")["rows"]
    assert len(rows) == 3 and all(row["status"] == "ok" for row in rows)


def test_ray_engine_matches_local(tiny, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert run(sweep_args(tiny, local, "--no-bench", "--no-plots"), capsys)[0] == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, stdout, err = run(sweep_args(tiny, on_ray, "--engine", "ray", "--no-bench", "--no-plots"), capsys)
        assert ray.is_initialized()  # the engine joined the test's instance and left it running
    finally:
        ray.shutdown()
    assert code == 0, err
    assert "on engine ray" in stdout
    run_record = record(on_ray)["runs"][-1]
    assert run_record["engine"]["engine"] == "ray" and run_record["engine"]["workers"] == 2
    assert run_record["timing"].startswith("not timed")
    assert_same_results(local, on_ray)


def test_ray_asks_that_cannot_be_met_are_one_line_errors_not_hangs(tiny, tmp_path, capsys):
    """More workers or CPUs per worker than the cluster has waited forever; so did an address nothing
    listens on."""
    ray = pytest.importorskip("ray")
    code, _, err = run(sweep_args(tiny, tmp_path / "a", "--engine", "ray", "--address", "127.0.0.1:1"), capsys)
    assert code == 1 and "cannot reach Ray at 127.0.0.1:1" in err
    # the same address from RAY_ADDRESS hung (the check read --address only); so did the calibration workers
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ADDRESS", "127.0.0.1:1")
        code, _, err = run(sweep_args(tiny, tmp_path / "env", "--engine", "ray"), capsys)
        assert code == 1 and "nothing answers at 127.0.0.1:1 (from RAY_ADDRESS)" in err and "check RAY_ADDRESS" in err
        from onnx_alds.calibrate import calibration_workers
        from onnx_alds.errors import InputDataError

        with pytest.raises(InputDataError, match=r"nothing answers at 127.0.0.1:1 \(from RAY_ADDRESS\)"):
            with calibration_workers(2):
                pass
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, _, err = run(sweep_args(tiny, tmp_path / "b", "--engine", "ray", "--workers", "3", "--no-bench"), capsys)
        assert code == 1 and "--workers 3 with --cpus-per-worker 1 needs 3 CPUs, the Ray cluster has 2" in err
        code, _, err = run(sweep_args(tiny, tmp_path / "c", "--engine", "ray", "--cpus-per-worker", "4", "--no-bench"),
                           capsys)
        assert code == 1 and "--cpus-per-worker 4 is more than the Ray cluster's 2 CPUs" in err
    finally:
        ray.shutdown()


def test_missing_ray_is_one_line_error(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, _, err = run(sweep_args(tiny, tmp_path / "out", "--engine", "ray"), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "pip install 'onnx-alds[ray]'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_data_aware_methods_without_calibration_are_skipped(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, _ = run(["sweep", str(tiny / "tiny.onnx"), "--keep-flops", "0.6", "--methods", "alds", "alds+data",
                           "--inputs", str(tiny / "eval.npz"), "-o", str(out), "--rank-multiple", "1", "--no-bench",
                           "--no-plots", "--no-progress"], capsys)
    assert code == 0
    data = record(out)
    assert [r["method"] for r in data["rows"]] == ["alds"]
    assert data["skipped"][0]["method"] == "alds+data" and "calibration" in data["skipped"][0]["reason"]


def test_parse_method():
    spec = parse_method("alds+data/pw+sc")
    assert spec.data and spec.speed_check
    assert dict(spec.options) == {"method": "alds", "order": "pointwise-first"}
    assert dict(parse_method("alds/g1").options) == {"method": "alds", "max_groups": 1}
    assert dict(parse_method("alds+data+seq").options) == {"method": "alds", "sequential": True}
    for bad in ("pca", "alds+foo", "alds+seq", "alds data"):
        with pytest.raises(BudgetError):
            parse_method(bad)
    for bad, message in (("svd/g1", "max_groups=1 has no effect with method='svd'"),  # svd keeps one group
                         ("l-rank/frob", "error_measure='frobenius' has no effect with method='l-rank'"),
                         ("damage+data+sens", "sensitivity=True has no effect with method='damage'")):
        with pytest.raises(BudgetError, match=message):
            parse_method(bad)
    assert parse_method("damage+data").data
    assert dict(parse_method("damage+data+prune").options) == {"method": "damage", "prune": "combined"}
    assert dict(parse_method("alds+data+pruneonly").options) == {"method": "alds", "prune": "only"}
    with pytest.raises(BudgetError, match="[+]prune and [+]pruneonly need calibration data; add [+]data"):
        parse_method("alds+prune")
    with pytest.raises(BudgetError, match="[+]sc times low-rank layers only"):
        parse_method("alds+data+prune+sc")
    with pytest.raises(BudgetError, match="gives [+]prune twice; give each modifier once"):
        parse_method("alds+data+prune+prune")
    with pytest.raises(BudgetError, match="[+]prune and another modifier both set prune; keep one"):
        parse_method("alds+data+prune+pruneonly")
    with pytest.raises(BudgetError, match="needs calibration data; write it damage[+]data and give --calibration"):
        parse_method("damage")
    # widths alone: another method or a low-rank modifier changed nothing (the models were alds+data+pruneonly's)
    for same in ("svd+data+pruneonly", "l-rank+data/frob/pw+pruneonly", "alds+data+seq+pruneonly"):
        with pytest.raises(BudgetError, match="[+]pruneonly narrows widths alone.*write it alds[+]data[+]pruneonly"):
            parse_method(same)


def test_sweep_resolves_output_kinds_as_validate_does():
    """A sentence embedding and a detector's (N·H·W, 6) output were scored as classifiers ("agreement")."""
    from onnx_alds.sweep import _resolved_kind

    rng = np.random.default_rng(0)
    assert _resolved_kind("auto", "sentence_embedding", rng.standard_normal((8, 64)), None, 8) == "embedding"
    assert _resolved_kind("auto", "boxes", rng.standard_normal((8 * 16, 6)), None, 8) == "output"
    assert _resolved_kind("auto", "logits", rng.standard_normal((8, 10)), None, 8) == "agreement"
    assert _resolved_kind("auto", "logits", rng.standard_normal((8, 10)), np.zeros(8, int), 8) == "accuracy"
    assert _resolved_kind("embedding", "logits", rng.standard_normal((8, 10)), None, 8) == "embedding"


def _quick(tiny: Path, out: Path, *keeps: str, methods=("alds",), extra=()) -> list[str]:
    multiple = [] if "--rank-multiple" in extra else ["--rank-multiple", "1"]  # (a list flag is given once)
    return ["sweep", str(tiny / "tiny.onnx"), "--keep-flops", *keeps, "--methods", *methods, "--inputs",
            str(tiny / "eval.npz"), "-o", str(out), *multiple, "--no-bench", "--no-plots", "--no-progress", *extra]


def test_a_sweep_with_no_usable_variant_exits_1(tiny, tmp_path, capsys):
    """Every budget unreachable, or every combination skipped: exit 0 before, so a script could not tell."""
    code, _, err = run(_quick(tiny, tmp_path / "a", "0.01", "0.02"), capsys)
    assert code == 1 and err.startswith("error: no variant produced a model (2 failed; first: ") and err.count("\n") == 1
    assert len(record(tmp_path / "a")["rows"]) == 2  # the rows are written all the same
    code, _, err = run(_quick(tiny, tmp_path / "b", "0.6", methods=("svd+data",)), capsys)
    assert code == 1 and err.startswith("error: the sweep has no variant to run (1 combination skipped: no "
                                        "calibration")
    assert not (tmp_path / "b").exists()  # refused before anything is written (an empty sweep.json was left)
    code, _, err = run(_quick(tiny, tmp_path / "c", "0.01", "0.6"), capsys)
    assert code == 0, err  # one usable variant is a result


def test_repeated_values_are_one_variant_and_a_failed_start_leaves_no_folder(tiny, tmp_path, capsys):
    argv = _quick(tiny, tmp_path / "a", "0.6", "0.6", methods=("alds", "alds"), extra=("--rank-multiple", "1", "1"))
    argv.insert(2, str(tiny / "tiny.onnx"))  # the same model twice
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "1 variant (0 done before, 1 to compute)" in stdout and len(record(tmp_path / "a")["rows"]) == 1
    code, _, err = run(_quick(tiny, tmp_path / "b" / "c" / "d", "0.0"), capsys)
    assert code == 1 and "out of range" in err
    assert not (tmp_path / "b").exists()


def test_odd_files_in_the_sweep_folder_are_recomputed_or_named(tiny, tmp_path, capsys):
    """A row file that is a JSON list, lacks its keys or is not UTF-8 raised a traceback on resume; a
    folder where a row file belongs is one error line."""
    out = tmp_path / "sweep"
    assert run(_quick(tiny, out, "0.6", "0.8"), capsys)[0] == 0
    rows = sorted((out / "rows").glob("*.json"))
    rows[0].write_text("[]")
    rows[1].write_bytes(b"\xff\xfe not utf-8")
    (out / "rows" / "stray.json").write_text('{"row": {"model": "x"}}')
    code, stdout, err = run(_quick(tiny, out, "0.6", "0.8"), capsys)
    assert code == 0, err
    assert "2 variants (0 done before, 2 to compute)" in stdout and len(record(out)["rows"]) == 2
    rows[0].unlink()
    rows[0].mkdir()
    (out / "models" / rows[0].name.replace(".json", ".onnx")).unlink()
    code, _, err = run(_quick(tiny, out, "0.6", "0.8"), capsys)
    assert code == 1 and err.startswith(f"error: '{rows[0]}' is a folder where the sweep keeps a file")


def test_a_missing_inputs_or_calibration_file_is_one_error_line(tiny, tmp_path, capsys):
    """sweep hashed the file for its fingerprint first: FileNotFoundError's traceback."""
    for flags in (["--inputs", str(tmp_path / "none.npz")], ["--random", "8", "--calibration", str(tmp_path / "no.npz")]):
        code, _, err = run(["sweep", str(tiny / "tiny.onnx"), "--keep-flops", "0.6", "--methods", "alds+data",
                            "-o", str(tmp_path / "out"), "--no-bench", "--no-plots", "--no-progress", *flags], capsys)
        assert code == 1 and err.startswith("error: '") and "does not exist" in err and err.count("\n") == 1


def test_ray_start_keeps_the_command_lines_signal_handlers():
    """``ray.init`` installs its own SIGTERM handler (a native stack dump, exit 15): a SIGTERM to
    ``sweep --engine ray`` or ``compress --calibration-workers 2`` skipped the clean-up and its
    ``error: interrupted`` line. :func:`onnx_alds.calibrate.init_ray` puts this process's handlers back."""
    import signal

    from onnx_alds.calibrate import init_ray

    class FakeRay:  # replaces the handlers as Ray's init does
        def init(self, address=None, **options):
            self.address = address
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def ours(signum, frame):
        raise KeyboardInterrupt

    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGTERM, ours)
        ray = FakeRay()
        init_ray(ray, "auto", log_to_driver=False)
        assert ray.address == "auto"
        assert signal.getsignal(signal.SIGTERM) is ours
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _save_fixed_batch_gemm(path: Path) -> None:
    """A Gemm 64 → 10 whose input fixes the batch to 4."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 10])],
                              [numpy_helper.from_array(rng.standard_normal((10, 64)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_fixed_batch_model_sweeps_at_its_batch(tmp_path, capsys):
    """Every variant of a model exported at batch 4 crashed ("Got: 32 Expected: 4"): the sweep ran the
    held-out set in batches of 32. It runs whole batches of the model's batch now, as validate does."""
    _save_fixed_batch_gemm(tmp_path / "fixed.onnx")
    out = tmp_path / "sweep"
    code, _, err = run(["sweep", str(tmp_path / "fixed.onnx"), "--keep-params", "0.5", "--random", "18", "-o", str(out),
                        "--rank-multiple", "1", "--no-bench", "--no-plots", "--no-progress"], capsys)
    assert code == 0, err
    (row,) = record(out)["rows"]
    assert row["status"] == "ok" and row["agreement_samples"] == 16  # 18 asked: whole batches of 4


def test_inputs_the_figures_cannot_use_make_error_rows_not_crashes(tiny, tmp_path, capsys):
    """Labels beyond the model's classes were found after compressing and reported as a crash, with the
    advice to run the command again (which fails the same way). Where the graph declares the class count
    they are refused before any variant is computed, naming the file and the model; where it does not,
    every variant is an error row."""
    arrays = dict(np.load(tiny / "eval.npz"))
    np.savez(tmp_path / "bad.npz", input=arrays["input"], labels=arrays["labels"] + 7)
    command = ["--keep-flops", "0.6", "--methods", "svd", "--inputs", str(tmp_path / "bad.npz"), "-o",
               str(tmp_path / "out"), "--rank-multiple", "1", "--no-bench", "--no-plots", "--no-progress"]
    code, _, err = run(["sweep", str(tiny / "tiny.onnx"), *command], capsys)
    assert code == 1 and "bad.npz" in err and "for model 'tiny': labels range over 7..11 (first outside: sample 1, class id " \
        in err and "but output 'logits' has 5 classes" in err
    assert not (tmp_path / "out").exists()
    undeclared = onnx.load(str(tiny / "tiny.onnx"))
    undeclared.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.save(undeclared, str(tmp_path / "tiny.onnx"))
    code, _, err = run(["sweep", str(tmp_path / "tiny.onnx"), *command], capsys)
    assert code == 1 and "evaluating the compressed model: labels range over" in err and "crashed" not in err
    (row,) = record(tmp_path / "out")["rows"]
    assert row["status"] == "error"


def test_bench_batches_a_fixed_batch_model_cannot_take_are_refused_before_computing(tmp_path, capsys):
    """The sweep compressed and validated every variant, then stopped at the timing phase."""
    _save_fixed_batch_gemm(tmp_path / "fixed.onnx")
    code, _, err = run(["sweep", str(tmp_path / "fixed.onnx"), "--keep-params", "0.5", "--random", "8", "-o",
                        str(tmp_path / "out"), "--rank-multiple", "1", "--bench-batch", "1", "8", "--no-plots",
                        "--no-progress"], capsys)
    assert code == 1 and "--bench-batch 1 8: model" in err and "fixes its batch to 4" in err
    assert not (tmp_path / "out").exists()


def test_output_paths_blocked_by_a_file_or_folder_are_named_before_computing(tiny, tmp_path, capsys):
    """A file at DIR/models gave "File exists ('o1/models')"; a folder at a row's path was found after its
    variant was computed, leaving the model behind."""
    blocked = tmp_path / "o1"
    blocked.mkdir()
    (blocked / "models").write_text("not a folder")
    command = ["--keep-flops", "0.6", "--methods", "svd", "--random", "8", "--rank-multiple", "1", "--no-bench",
               "--no-plots", "--no-progress"]
    code, _, err = run(["sweep", str(tiny / "tiny.onnx"), "-o", str(blocked), *command], capsys)
    assert code == 1 and "models' is a file where the sweep keeps a folder" in err
    folder = tmp_path / "o2"
    (folder / "rows" / "tiny.svd.flops0.6.m1.json").mkdir(parents=True)
    code, _, err = run(["sweep", str(tiny / "tiny.onnx"), "-o", str(folder), *command], capsys)
    assert code == 1 and "tiny.svd.flops0.6.m1.json' is a folder where the sweep keeps a file" in err
    assert not (folder / "models").exists()
    plots = tmp_path / "o3"  # a folder at a plot's path was found after every variant had run
    (plots / "tiny-quality.png").mkdir(parents=True)
    code, _, err = run(["sweep", str(tiny / "tiny.onnx"), "-o", str(plots),
                        *[flag for flag in command if flag != "--no-plots"]], capsys)
    assert code == 1 and "tiny-quality.png' is a folder where the sweep keeps a file" in err
    assert not (plots / "models").exists()


def test_timing_a_fixed_batch_model_with_two_seeds_writes_its_record(tmp_path, capsys):
    """Timed (the default), a model fixing batch 4 failed after every variant was computed ("input 'x' fixes
    the batch to 4; bench it with --batch 4"): the timing used batches 1 and 32. With two seeds, the variants
    of a method had one name ("got 3 names for 3 models"). Neither wrote sweep.json."""
    _save_fixed_batch_gemm(tmp_path / "fixed.onnx")
    out = tmp_path / "sweep"
    code, _, err = run(["sweep", str(tmp_path / "fixed.onnx"), "--keep-params", "0.5", "--methods", "alds", "--seed",
                        "0", "1", "--random", "16", "-o", str(out), "--rank-multiple", "1", "--bench-time", "0.2",
                        "--no-plots", "--no-progress"], capsys)
    assert code == 0, err
    rows = record(out)["rows"]
    assert len(rows) == 2 and all(row["batch_small"] == 4 and row["ms_small"] > 0 for row in rows)


def test_a_fixed_batch_models_left_out_samples_and_the_compression_warnings_are_in_the_rows(tmp_path, capsys):
    """10 samples on a model fixing batch 4 were validated on 8 without a word (validate notes it), and the
    compression's warnings (a plan well below the budget) were not in the row's notes."""
    _save_fixed_batch_gemm(tmp_path / "fixed.onnx")
    np.savez(tmp_path / "ten.npz", x=np.random.default_rng(5).standard_normal((10, 64)).astype(np.float32))
    out = tmp_path / "sweep"
    code, _, err = run(["sweep", str(tmp_path / "fixed.onnx"), "--keep-params", "0.6", "--methods", "svd",
                        "--inputs", str(tmp_path / "ten.npz"), "-o", str(out), "--rank-multiple", "4", "--no-bench",
                        "--no-plots", "--no-progress"], capsys)
    assert code == 0, err
    [row] = record(out)["rows"]
    assert row["agreement_samples"] == 8
    assert any(note.startswith("the model fixes its batch: validated on 8 of the 10 samples") for note in row["notes"])
    import onnx_alds

    warned = onnx_alds.compress(str(tmp_path / "fixed.onnx"), keep_params=0.6, method="svd",
                                rank_multiple=4).report.warnings  # (well below the budget: rank steps of 4)
    assert warned and all(f"warning: {warning}" in row["notes"] for warning in warned)


MARK = b'"environment": {"versions": {"onnx_alds": "0"}}'  # what says a sweep.json is onnx-alds's


@pytest.mark.parametrize("damage", [b'{"runs": 5, ' + MARK + b"}", b'{"skipped": [{"x": 1}], ' + MARK + b"}",
                                    b'{"skipped": [{"model": [1], "method": "alds"}], ' + MARK + b"}"])
def test_a_damaged_sweep_record_is_started_again_with_a_note(tiny, tmp_path, capsys, damage):
    """A sweep.json of onnx-alds's that is not a sweep record (runs not a list, a skipped entry without its
    keys) was a traceback on every later sweep into that folder."""
    out = tmp_path / "sweep"
    assert run(_quick(tiny, out, "0.6"), capsys)[0] == 0
    (out / "sweep.json").write_bytes(damage)
    rows = sorted((out / "rows").glob("*.json"))
    rows[0].write_bytes(b"[" * 100000 + b"]" * 100000)  # a row file nested too deep: computed again
    code, stdout, err = run(_quick(tiny, out, "0.6"), capsys)
    assert code == 0, err
    assert "start again (the rows come from the row files)" in stdout
    data = record(out)
    assert len(data["rows"]) == 1 and len(data["runs"]) == 1


@pytest.mark.parametrize("name, content, kind", [
    ("sweep.json", b"\xff\xfe not utf-8", "file of another kind"), ("sweep.json", b"[1, 2]", "JSON file not written"),
    ("sweep.json", b"null", "file of another kind"), ("sweep.json", b"[" * 100000 + b"]" * 100000, "another kind"),
    ("sweep.json", b"PK\x03\x04 data", "zip archive"), ("sweep.json", b"\x93NUMPY data", "numpy data file"),
    ("sweep.csv", b"#!/bin/sh\necho hi\n", "another kind"),
    ("sweep.csv", b"a,b\n1,2\n", "file of another kind")])
def test_a_users_file_at_a_sweep_file_name_is_not_overwritten(tiny, tmp_path, capsys, name, content, kind):
    """A user's script, data or JSON at sweep.json / sweep.csv in the sweep's folder was replaced
    with exit 0 (compress refuses the same); the sweep's own files are replaced on a second run."""
    out = tmp_path / "sweep"
    assert run(_quick(tiny, out, "0.6"), capsys)[0] == 0  # its own files: replaced by the next run
    assert run(_quick(tiny, out, "0.6"), capsys)[0] == 0
    (out / name).write_bytes(content)
    code, _, err = run(_quick(tiny, out, "0.6"), capsys)
    assert code == 1 and err.count("\n") == 1 and kind in err and "give another output folder" in err, err
    assert (out / name).read_bytes() == content


def test_model_names_that_the_file_name_rules_change_stay_apart():
    """'net é.onnx' and 'net ü.onnx' both became 'net__': a later sweep into the same folder replaced the first
    model's rows without a word. ASCII names keep the names earlier sweeps stored their rows under."""
    from onnx_alds.sweep import _model_names

    first, second = _model_names(["a/net é.onnx"]), _model_names(["a/net ü.onnx"])
    assert first != second and first[0].startswith("net__-")
    assert _model_names(["model.v1.onnx", "resnet v2.onnx"]) == ["model_v1", "resnet_v2"]


def test_model_names_of_one_file_do_not_depend_on_the_order_given(tmp_path):
    """a/model, b/model, c/a/model were named a-model-0, b-model-1, a-model-2, and in another order
    'a-model-0' meant another file (its rows recomputed and overwritten). Enough folders to tell them apart."""
    from onnx_alds.sweep import _model_names

    paths = [str(tmp_path / "a" / "model.onnx"), str(tmp_path / "b" / "model.onnx"),
             str(tmp_path / "c" / "a" / "model.onnx")]
    forward = dict(zip(paths, _model_names(paths)))
    backward = dict(zip(paths[::-1], _model_names(paths[::-1])))
    assert forward == backward and len(set(forward.values())) == 3
    assert forward[paths[1]] == "b-model" and forward[paths[2]] == "c-a-model"
    assert _model_names(paths[:2]) == ["a-model", "b-model"]  # the names earlier sweeps stored rows under
    # a folder-prefixed name that meets another file's stem ('s1/model' and 's1-model'): those two get their
    # path's digest; the others keep their names (all three were numbered by position)
    clash = [str(tmp_path / "s1" / "model.onnx"), str(tmp_path / "s2" / "model.onnx"), str(tmp_path / "s1-model.onnx")]
    forward = dict(zip(clash, _model_names(clash)))
    assert forward == dict(zip(clash[::-1], _model_names(clash[::-1]))) and len(set(forward.values())) == 3
    assert forward[clash[1]] == "s2-model"


def test_the_compared_output_must_be_batch_first_and_other_outputs_are_not_fetched():
    """The sweep joined every output's batches on axis 0: a ``[C, N]`` logits output was compared as if its
    rows were samples (cos 0.64 reported for a model validate measured at 0.999), and a scalar second output
    crashed every variant ("zero-dimensional arrays cannot be concatenated"), though only the first float
    output is compared."""
    from onnx_alds.errors import UnsupportedModelError
    from onnx_alds.inputs import InputSet
    from onnx_alds.sweep import model_outputs

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "w")
    x = InputSet({"x": rng.standard_normal((40, 8)).astype(np.float32)})

    def model(extra_nodes, outputs):
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["pre"])] + extra_nodes, "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])], outputs, [w])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        return proto

    transposed = model([helper.make_node("Transpose", ["pre"], ["logits"], perm=[1, 0])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [5, "N"])])
    with pytest.raises(UnsupportedModelError, match=r"output 'logits' .* first dim is not the batch \(shape \[5, "):
        model_outputs(transposed, x, batch_size=16)
    scalar = model([helper.make_node("Identity", ["pre"], ["logits"]),
                    helper.make_node("ReduceMean", ["pre"], ["score"], keepdims=0)],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
                    helper.make_tensor_value_info("score", TensorProto.FLOAT, [])])
    outputs = model_outputs(scalar, x, batch_size=16)
    assert list(outputs) == ["logits"] and outputs["logits"].shape == (40, 5)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_workers_are_spawned_without_sigint_and_an_interrupt_waits_until_they_are_known():
    """A Ctrl-C while the pool spawned its workers printed a traceback from every worker mid-import, and one
    raised between a worker's start and the pool's record of it orphaned that worker. Spawned inside
    ``_spawning_workers`` a process has SIGINT blocked; the interrupt is raised on leaving, not inside."""
    from onnx_alds.sweep import _spawning_workers

    probe = "import signal; print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))"
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # (ignored where tests run in the background)
    try:
        inside = []
        with pytest.raises(KeyboardInterrupt):
            with _spawning_workers():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                inside.append(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                             text=True).stdout.strip())
        assert inside == ["True"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job ignores it: so do its workers' spawns
        with _spawning_workers():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    outside = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    assert outside == "False"


def test_a_ray_connection_refused_mentions_token_authentication(tiny, tmp_path, capsys, monkeypatch):
    """A cluster started with token authentication refused a client without RAY_AUTH_MODE: the error said only
    "Failed to connect ...; check --address" (the cause was in Ray's log)."""
    pytest.importorskip("ray")
    import onnx_alds.calibrate as calibrate
    from onnx_alds import sweep

    def refused(ray, address, **options):
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6390\nmore of Ray's text")

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(calibrate, "init_ray", refused)
    monkeypatch.setattr(sweep, "_check_reachable", lambda address: None)
    code, _, err = run(sweep_args(tiny, tmp_path / "a", "--engine", "ray", "--address", "192.0.2.2:6390"), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1
    assert "Failed to connect" in lines[0] and "set RAY_AUTH_MODE=token" in lines[0]


def test_a_model_file_replaced_while_the_sweep_runs_is_not_timed_as_its_original(tiny, tmp_path, capsys,
                                                                                  monkeypatch):
    """The variants were made from the file as it was at the start, but timing read the path again: a file
    replaced meanwhile was timed as their original (speedups 0.43-0.86x against another model, exit 0)."""
    import onnx_alds.sweep as sweep_module

    path = tmp_path / "m.onnx"
    shutil.copy(tiny / "tiny.onnx", path)
    made = sweep_module.run_variant

    def replacing(task, data, state):
        outcome = made(task, data, state)
        other = onnx.load(str(path))
        other.doc_string = "re-exported"
        onnx.save(other, str(path))
        return outcome

    monkeypatch.setattr(sweep_module, "run_variant", replacing)
    args = ["sweep", str(path), "--keep-flops", "0.5", "--methods", "alds", "--inputs", str(tiny / "eval.npz"),
            "-o", str(tmp_path / "out"), "--rank-multiple", "1", "--no-progress", "--no-plots", "--bench-batch", "1",
            "--bench-time", "0.05"]
    code, _, err = run(args, capsys)
    assert code == 1 and "changed while the sweep ran" in err and f"'{path}'" in err
    monkeypatch.setattr(sweep_module, "run_variant", made)
    code, stdout, err = run(args, capsys)  # the file as it is now: computed again and timed
    assert code == 0 and "1 variant (0 done before, 1 to compute)" in stdout
    assert record(tmp_path / "out")["rows"][0]["ms_small"] > 0


def test_a_batch_this_run_does_not_time_keeps_no_earlier_timing(tiny, tmp_path, capsys):
    """Timed at batches 1 and 4, then again with --bench-batch 2: the row held batch 2 from this run beside
    batch 4 from the earlier one, and the summary printed both as if measured together."""
    out = tmp_path / "out"
    base = ["sweep", str(tiny / "tiny.onnx"), "--keep-flops", "0.5", "--methods", "alds", "--inputs",
            str(tiny / "eval.npz"), "-o", str(out), "--rank-multiple", "1", "--no-progress", "--no-plots",
            "--bench-time", "0.05", "--bench-batch"]
    assert run(base + ["1", "4"], capsys)[0] == 0
    (row,) = record(out)["rows"]
    assert row["batch_small"] == 1 and row["batch_large"] == 4 and row["ms_large"] > 0
    code, stdout, _ = run(base + ["2"], capsys)
    (row,) = record(out)["rows"]
    assert code == 0 and row["batch_small"] == 2 and row["ms_small"] > 0
    assert not [key for key in row if key.endswith("_large")]
    assert "(b4)" not in stdout


def test_a_limit_above_the_sample_count_is_noted(tiny, tmp_path, capsys):
    """--limit 100000 on a set of 40 samples validated on all 40 without a word."""
    def args(out: Path, limit: str) -> list[str]:
        return ["sweep", str(tiny / "tiny.onnx"), "--keep-flops", "0.5", "--methods", "alds", "--inputs",
                str(tiny / "eval.npz"), "-o", str(out), "--rank-multiple", "1", "--no-progress", "--no-plots",
                "--no-bench", "--limit", limit]

    assert run(args(tmp_path / "o1", "100000"), capsys)[0] == 0
    notes = record(tmp_path / "o1")["rows"][0]["notes"]
    assert any("--limit 100000 is more than the 40 samples" in note for note in notes)
    assert not any(str(tiny) in note for note in notes)  # (rows hold no paths outside the sweep's folder)
    assert run(args(tmp_path / "o2", "20"), capsys)[0] == 0
    assert not any("--limit" in note for note in record(tmp_path / "o2")["rows"][0].get("notes", []))


def test_seeds_make_one_variant_per_budget_for_methods_without_random_starts(tiny, tmp_path, capsys):
    """--seed 0 1 with svd made two variants per budget of the same model (svd has no random starts)."""
    out = tmp_path / "out"
    args = ["sweep", str(tiny / "tiny.onnx"), "--keep-flops", "0.5", "--methods", "alds", "svd", "--inputs",
            str(tiny / "eval.npz"), "-o", str(out), "--rank-multiple", "1", "--no-progress", "--no-plots",
            "--no-bench", "--seed", "3", "5"]
    code, stdout, _ = run(args, capsys)
    rows = record(out)["rows"]
    assert code == 0 and sorted((row["method"], row["seed"]) for row in rows) == [("alds", 3), ("alds", 5),
                                                                                  ("svd", 0)]
    assert all(row["status"] == "ok" for row in rows)
    assert "tiny / svd: the seed has no effect" in stdout and "alds: the seed" not in stdout


def test_an_address_that_accepts_but_is_not_ray_is_one_error_line(tiny, tmp_path, capsys, monkeypatch):
    """A port that accepts TCP but is not a Ray GCS (a plain listener, an HTTP server) hung forever in
    ``ray.init``, which retries it."""
    pytest.importorskip("ray")
    import socket
    import threading

    import onnx_alds.calibrate as calibrate

    monkeypatch.setattr(calibrate, "RAY_PROBE_SECONDS", 1.0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        start = time.monotonic()
        code, _, err = run(sweep_args(tiny, tmp_path / "a", "--engine", "ray", "--address", address), capsys)
        assert time.monotonic() - start < 10
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"error: cannot reach Ray at {address}: it accepts connections")
    assert "ray://host:10001" in lines[0] and not (tmp_path / "a").exists()


def test_an_interrupt_while_ray_starts_is_not_held_for_ever():
    """SIGINT and SIGTERM are held while ``ray.init`` runs; one that keeps retrying an address held them for
    good. After a grace period the interrupt is raised anyway."""
    script = """
import os, signal, threading, time
import onnx_alds.calibrate as calibrate
calibrate.RAY_INTERRUPT_GRACE_SECONDS = 0.5
started = threading.Event()
class StuckRay:
    stopped = False
    def init(self, address=None, **options):
        started.set()
        while True:
            time.sleep(0.05)
    def shutdown(self):
        StuckRay.stopped = True
# (a SIGINT ignored by the process that started this one stays ignored here; sent before init_ray holds it, on a
# loaded machine, it was lost and ray.init never interrupted: sent once ray.init runs, to a default handler)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, lambda *a: None)
threading.Thread(target=lambda: started.wait(20) and os.kill(os.getpid(), signal.SIGINT), daemon=True).start()
start = time.monotonic()
try:
    calibrate.init_ray(StuckRay(), None)
except KeyboardInterrupt:
    print("interrupted", StuckRay.stopped, time.monotonic() - start < 5)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["interrupted", "True", "True"], result.stderr


def test_a_variant_whose_row_turns_to_an_error_loses_its_earlier_model(tiny, tmp_path, capsys):
    """A model file changed so that its budget is now unreachable: the row became an error, but the earlier
    model and its report stayed in ``models/``, no longer named by ``sweep.json``."""
    path = tmp_path / "m.onnx"
    shutil.copy(tiny / "tiny.onnx", path)
    out = tmp_path / "sweep"
    args = ["sweep", str(path), "--keep-flops", "0.6", "--random", "8", "-o", str(out), "--rank-multiple", "1",
            "--no-bench", "--no-plots", "--no-progress"]
    assert run(args, capsys)[0] == 0
    assert sorted(p.name for p in (out / "models").iterdir()) == ["m.alds.flops0.6.m1.onnx",
                                                                  "m.alds.flops0.6.m1.report.json"]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))  # nothing to factorize
    code, _, err = run(args, capsys)
    rows = record(out)["rows"]
    assert code == 1 and [row["status"] for row in rows] == ["error"], err
    assert list((out / "models").iterdir()) == []


def test_threads_with_ray_and_no_bench_is_refused(tiny, tmp_path, capsys):
    """``--threads`` sets the local workers' and the timing's threads: with ``--engine ray --no-bench`` it was
    silently ignored (with ``+sc`` variants, run on the driver with ``--threads`` threads, it still counts)."""
    code, _, err = run(sweep_args(tiny, tmp_path / "a", "--engine", "ray", "--no-bench", "--threads", "2"), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "--threads has no effect with --engine ray and --no-bench" in lines[0]
    assert not (tmp_path / "a").exists()


def test_a_ray_client_address_without_ray_client_installed_says_what_to_install(tiny, tmp_path, capsys,
                                                                                monkeypatch):
    """``--address ray://…`` (docs/SWEEP.md's example) needs ``ray[client]``, which the ``[ray]`` extra does
    not install."""
    pytest.importorskip("ray")
    monkeypatch.setitem(sys.modules, "grpc", None)  # (Ray Client runs on grpc: as if not installed)
    code, _, err = run(sweep_args(tiny, tmp_path / "a", "--engine", "ray", "--address", "ray://127.0.0.1:1"), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "pip install 'ray[client]'" in lines[0], err


def test_input_errors_of_a_multi_model_sweep_name_the_model(tiny, tmp_path, capsys):
    """With several models, an error about the inputs (``--inputs`` arrays that do not fit one of them) did not
    say which model it was about."""
    other = tmp_path / "other.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(other))
    code, _, err = run(["sweep", str(tiny / "tiny.onnx"), str(other), "--keep-flops", "0.5", "--inputs",
                        str(tiny / "eval.npz"), "-o", str(tmp_path / "a"), "--rank-multiple", "1", "--no-bench",
                        "--no-progress"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: model '{other}': "), err


def test_a_sweep_folder_that_is_a_link_to_nothing_is_named(tiny, tmp_path, capsys):
    """sweep -o on a dangling link said "File exists ('dangling'); fix the path or free the resource"."""
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    code, _, err = run(sweep_args(tiny, tmp_path / "dangling", "--no-bench", "--no-plots"), capsys)
    assert code == 1 and "-o '" in err and "is a link to nothing; the sweep writes a folder" in err, err
