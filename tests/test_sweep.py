"""tools/sweep.py on a tiny model built here: compress → validate → bench → JSON/CSV → plots → RESULTS.md."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]


def _load_sweep():
    spec = importlib.util.spec_from_file_location("sweep_under_test", ROOT / "tools" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep_under_test"] = module
    spec.loader.exec_module(module)
    return module


sweep = _load_sweep()


def tiny_classifier(path: Path) -> onnx.ModelProto:
    """Conv 8→32 3x3 → Relu → Conv 32→32 3x3 → Relu → GAP → Flatten → Gemm 32→5, dynamic batch."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32),
                                       name)

    inits = [weight("w1", 32, 8, 3, 3), weight("w2", 32, 32, 3, 3), weight("w3", 5, 32),
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
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


@pytest.fixture()
def tiny_spec(tmp_path):
    model_path = tmp_path / "tiny" / "model.onnx"
    model_path.parent.mkdir()
    model = tiny_classifier(model_path)
    rng = np.random.default_rng(1)
    x_eval = rng.standard_normal((40, 8, 12, 12)).astype(np.float32)
    import onnxruntime as ort

    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x_eval})[0]
    labels = np.argmax(logits, axis=1).astype(np.int64)
    labels[:4] = (labels[:4] + 1) % 5  # the original is not perfect: accuracy 0.9
    np.savez(tmp_path / "tiny" / "eval.npz", input=x_eval, labels=labels)
    np.savez(tmp_path / "tiny" / "calibration.npz", input=rng.standard_normal((16, 8, 12, 12)).astype(np.float32))
    spec = sweep.ModelSpec("tiny", model_path, tmp_path / "tiny" / "calibration.npz",
                           [sweep.EvalSet("eval", tmp_path / "tiny" / "eval.npz", "accuracy")],
                           quality_metric="accuracy", bench_batches=(1, 4))
    return {"tiny": spec}


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_end_to_end(tmp_path, tiny_spec):
    out, results, work = tmp_path / "results", tmp_path / "RESULTS.md", tmp_path / "work"
    argv = ["--models", "tiny", "--methods", "alds", "svd+data", "--keeps", "0.5", "0.8",
            "--rank-multiple", "1", "4", "--out", str(out), "--results-md", str(results), "--work", str(work),
            "--quick", "--bench-target-s", "0.02", "--per-layer"]
    assert sweep.main(argv, specs=tiny_spec) == 0

    data = json.loads((out / "sweep.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * 2 * 2
    assert {r["method"] for r in rows} == {"alds", "svd+data"}
    assert {r["data_aware"] for r in rows} == {True, False}
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, rows
    for row in ok:
        assert 0 < row["achieved_keep"] <= 1
        assert row["accuracy_original"] == pytest.approx(0.9)
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["agreement"] <= 1
        assert row["compress_s"] > 0
        assert row["ideal_speedup"] == pytest.approx(1 / row["achieved_keep"])
        for slot in ("small", "large"):
            assert row[f"speedup_{slot}"] > 0
            assert row[f"efficiency_{slot}"] == pytest.approx(row[f"speedup_{slot}"] / row["ideal_speedup"])
        assert row["batch_small"] == 1 and row["batch_large"] == 4
    assert data["per_layer"] and data["per_layer"][0]["rows"]
    assert data["environment"]["machine"]["cpu"]
    assert data["runs"][-1]["command"].startswith("python tools/sweep.py")

    with open(out / "sweep.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert tuple(table[0].keys()) == sweep.CSV_COLUMNS
    assert {"accuracy", "speedup_small", "efficiency_large", "achieved_keep"} <= set(table[0])

    for name in ("tiny-quality.png", "tiny-speedup.png"):
        assert _png(out / name) and (out / name).stat().st_size < 200_000

    text = results.read_text()
    assert "## tiny" in text and "tiny-quality.png" in text and "tiny-speedup.png" in text
    assert "CPU:" in text and "python tools/sweep.py" in text
    assert "keep 0.5" in text and "svd+data" in text

    # --report regenerates the same files from the JSON alone; a subset re-run merges by key
    results.unlink()
    assert sweep.main(["--report", "--out", str(out), "--results-md", str(results)], specs=tiny_spec) == 0
    assert "## tiny" in results.read_text()
    assert sweep.main(["--models", "tiny", "--methods", "alds", "--keeps", "0.5", "--rank-multiple", "1",
                       "--out", str(out), "--results-md", str(results), "--work", str(work), "--quick",
                       "--no-bench", "--no-plots"], specs=tiny_spec) == 0
    merged = json.loads((out / "sweep.json").read_text())
    assert len(merged["rows"]) == len(rows)
    again = [r for r in merged["rows"] if (r["method"], r["keep"], r["rank_multiple"]) == ("alds", 0.5, 1)][0]
    assert again.get("speedup_small") is not None  # the older timing is kept on an accuracy-only re-run
    assert len(merged["runs"]) == 2


def test_neighbour_metrics():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 8))
    same = sweep.neighbour_metrics(a, a.copy())
    assert same == pytest.approx({"nn_top1": 1.0, "nn_top10": 1.0, "spearman": 1.0})
    noisy = sweep.neighbour_metrics(a, a + 3 * rng.standard_normal(a.shape))
    assert noisy["nn_top1"] < 1.0 and noisy["spearman"] < 1.0


def test_skips_data_aware_without_calibration(tmp_path, tiny_spec):
    spec = tiny_spec["tiny"]
    spec.data_aware = False
    spec.skip_note = "no data here"
    out = tmp_path / "r"
    assert sweep.main(["--models", "tiny", "--methods", "alds", "svd+data", "--keeps", "0.6", "--rank-multiple", "1",
                       "--out", str(out), "--results-md", str(tmp_path / "R.md"), "--work", str(tmp_path / "w"),
                       "--no-bench", "--no-plots"], specs=tiny_spec) == 0
    data = json.loads((out / "sweep.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["alds"]
    assert data["skipped"] == [{"model": "tiny", "method": "svd+data", "reason": "no data here"}]
    assert "no data here" in (tmp_path / "R.md").read_text()

    # rows of a run made elsewhere (e.g. one model per process) merge into another record
    merged_out = tmp_path / "merged"
    assert sweep.main(["--merge-from", str(out / "sweep.json"), "--out", str(merged_out),
                       "--results-md", str(tmp_path / "M.md"), "--no-plots"], specs=tiny_spec) == 0
    merged = json.loads((merged_out / "sweep.json").read_text())
    assert [r["method"] for r in merged["rows"]] == ["alds"] and merged["runs"] == data["runs"]
    assert (merged_out / "sweep.csv").exists() and "## tiny" in (tmp_path / "M.md").read_text()


def test_layer_probe_on_the_bundled_model(tmp_path):
    spec = importlib.util.spec_from_file_location("layer_probe_under_test", ROOT / "tools" / "layer_probe.py")
    layer_probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layer_probe)
    from onnx_alds.demo import CALIBRATION, EVALUATION, MODEL, bundled

    out = tmp_path / "probe.json"
    layers = ["/layers/layers.0/conv1/Conv", "/layers/layers.2/conv2/Conv"]
    assert layer_probe.main(["--model", str(bundled(MODEL)), "--calibration", str(bundled(CALIBRATION)),
                             "--held-out", str(bundled(EVALUATION)), "--eval-limit", "64", "--layers", *layers,
                             "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [row["layer"] for row in rows] == layers
    for row in rows:
        assert row["rank"] > 0 and 0.0 < row["layer_error"] < 1.0
        assert 0.0 <= row["agreement"] <= 1.0 and row["output_error"] > 0.0


def test_sweep_with_pruning_records_the_narrowed_blocks(tmp_path, tiny_spec):
    out = tmp_path / "results"
    argv = ["--models", "tiny", "--methods", "alds+data+prune", "alds+data+pruneonly", "--keeps", "0.5",
            "--rank-multiple", "4", "--out", str(out), "--results-md", str(tmp_path / "RESULTS.md"),
            "--work", str(tmp_path / "work"), "--quick", "--no-bench", "--no-plots"]
    assert sweep.main(argv, specs=tiny_spec) == 0
    rows = {row["method"]: row for row in json.loads((out / "sweep.json").read_text())["rows"]}
    for method in ("alds+data+prune", "alds+data+pruneonly"):
        row = rows[method]
        assert row["status"] == "ok", row
        assert row["macs_kept"] <= 0.5 * 1.01
        (block,) = row["blocks"]
        assert block["block"] == "conv1" and block["width_after"] < block["width_before"] == 32
        assert 0 <= row["agreement"] <= 1
    assert rows["alds+data+pruneonly"]["layers_factorized"] == 0


def test_a_limited_set_records_how_its_samples_are_chosen():
    """Limited sets took their first samples before and spread ones now: a sweep resumed across that change kept
    rows measured on the old prefix (all '0' digits for MNIST) beside new ones. The identity of a limited set
    says how it is chosen; an unlimited one is unchanged."""
    from onnx_alds.sweep import DataSource, _Hashes

    hashes = _Hashes()
    assert DataSource(random=8, seed=0, limit=4).identity(hashes)["selection"] == "spread"
    assert "selection" not in DataSource(random=8, seed=0).identity(hashes)


def test_a_sweep_with_no_model_says_so(tmp_path):
    """tools/sweep.py with every model unbuilt said '0 combinations skipped: no variant' after naming the skip."""
    from onnx_alds.errors import InputDataError
    from onnx_alds.sweep import run_sweep

    with pytest.raises(InputDataError, match="no model to compress"):
        run_sweep([], ["alds"], [0.5], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_csv_is_written_all_or_nothing(tmp_path):
    """An interrupt during the third row left sweep.csv with its header and one row."""
    from onnx_alds.sweep import write_csv

    path = tmp_path / "sweep.csv"
    write_csv([{"variant": "a", "status": "ok"}], path, columns=("variant", "status"))
    before = path.read_bytes()

    class Interrupting:
        def __str__(self):
            raise KeyboardInterrupt

    rows = [{"variant": "b", "status": "ok"}, {"variant": Interrupting(), "status": "ok"}]
    with pytest.raises(KeyboardInterrupt):
        write_csv(rows, path, columns=("variant", "status"))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]


def test_a_worker_that_dies_while_starting_is_one_error_and_its_data_file_goes(monkeypatch):
    """The models' data went down each worker's start-up pipe: a worker killed meanwhile (the OOM killer)
    left the parent blocked for good, deaf to Ctrl-C. The workers now read it from a file; one that dies
    starting is an EngineError."""
    import pickle

    from onnx_alds.sweep import EngineError, LocalEngine

    def unreadable(obj, stream, protocol=None):
        stream.write(b"not a pickle")  # each worker's pickle.load fails: its start-up dies

    monkeypatch.setattr(pickle, "dump", unreadable)
    engine = LocalEngine(workers=2, threads=1)
    try:
        with pytest.raises(EngineError, match="a sweep worker process died while starting"):
            engine.start({})
        folder = engine._data_dir
    finally:
        engine.close()
    assert folder is not None and not os.path.exists(folder)


def test_a_plot_with_nothing_current_to_show_is_removed(tmp_path):
    """A rerun without timings (--no-bench, other validation data) redrew the quality plot but left the
    earlier speedup plot, showing figures no row held any more."""
    pytest.importorskip("matplotlib")
    from onnx_alds.sweep import write_plots

    row = dict(model="m", method="alds", rank_multiple=16, status="ok", macs_kept=0.5, achieved_keep=0.5,
               quality_metric="agreement", agreement=0.9)
    timed = dict(row, speedup_small=1.5, batch_small=1)
    assert sorted(p.name for p in write_plots([timed], tmp_path)) == ["m-quality.png", "m-speedup.png"]
    assert [p.name for p in write_plots([row], tmp_path)] == ["m-quality.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-quality.png"]
    write_plots([dict(row, status="error")], tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_speedup_timed_on_a_busy_machine_is_marked_noisy(tmp_path):
    """A speedup of 3.09x at an ideal of 1.44x, timed while its spread was 185 %, stood in the summary table and
    the plot like any other figure."""
    from onnx_alds.sweep import noisy_timing, summary_table

    row = dict(model="m", method="alds", keep=0.5, rank_multiple=16, status="ok", macs_kept=0.7, achieved_keep=0.7,
               quality_metric="agreement", quality=0.9, agreement=0.9, batch_small=1, batch_large=32,
               speedup_small=1.3, spread_small=0.05, spread_original_small=0.04,
               speedup_large=3.09, spread_large=1.85, spread_original_large=0.05)
    quiet = dict(row, method="svd", speedup_large=1.4, spread_large=0.1, spread_original_large=None)
    busy_original = dict(row, method="svd+data", speedup_large=1.4, spread_large=0.1, spread_original_large=0.3)
    assert [noisy_timing(r, "large") for r in (row, quiet, busy_original)] == [True, False, True]
    assert not noisy_timing(row, "small")
    table = summary_table([row, quiet, busy_original])
    assert "3.09 (b32, noisy)" in table and "1.40 (b32)" in table and "1.40 (b32, noisy)" in table
    assert table.splitlines()[-1].startswith("2 speedups marked noisy: a timing spread (p90 − p10) over 20 %")
    assert "marked noisy" not in summary_table([quiet])
    if importlib.util.find_spec("matplotlib") is not None:  # (the plot marks them too, and is still written)
        from onnx_alds.sweep import write_plots

        assert sorted(p.name for p in write_plots([row, quiet], tmp_path)) == ["m-quality.png", "m-speedup.png"]


@pytest.mark.parametrize("grid, message", [
    (dict(keeps=0.5), "keeps=0.5: give a list of values"),
    (dict(methods="alds"), "methods='alds': give a list of values"),
    (dict(keeps=[]), "keeps is empty"),
    (dict(seeds=[-1]), r"seeds\[0\]=-1"),
    (dict(rank_multiples=[4, 0]), r"rank_multiples\[1\]=0"),
    (dict(rank_multiples=[4.0]), r"rank_multiples\[0\]=4.0"),
    (dict(keeps=[1.5]), "out of range"),
    (dict(keeps=[0.8, 0.80000000001]), r"name the same variant \(flops0.8\)"),  # (one id: a result was lost)
])
def test_the_grid_is_checked_before_any_work(tmp_path, grid, message):
    # a scalar budget raised a bare TypeError, and bad seeds or rank multiples made the output folder and
    # stored "error" rows
    from onnx_alds.errors import OnnxAldsError
    from onnx_alds.sweep import SweepModel, run_sweep

    arguments = {"methods": ["alds"], "keeps": [0.5], **grid}
    with pytest.raises(OnnxAldsError, match=message):
        run_sweep([SweepModel("m", str(tmp_path / "absent.onnx"), ())], out=tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


def test_the_grid_takes_numpy_numbers():
    from onnx_alds.sweep import _checked_grid

    methods, keeps, multiples, seeds = _checked_grid("flops", ("alds",), [np.float32(0.75), np.int64(1)],
                                                     (np.int64(16),), [np.uint32(7)])
    assert (methods, keeps, multiples, seeds) == (["alds"], [0.75, 1.0], [16], [7])
    assert all(type(value) is float for value in keeps) and all(type(v) is int for v in multiples + seeds)


def test_more_local_workers_than_cpus_are_refused(tmp_path, capsys):
    """--engine local --workers 100 on 2 CPUs started 100 processes (each holding the models) with no word;
    the Ray engine refuses more workers than its cluster's CPUs, and so does the local one."""
    import os

    from onnx_alds.sweep import EngineError, LocalEngine

    cpus = len(os.sched_getaffinity(0))
    with pytest.raises(EngineError, match=rf"--workers {cpus + 1} starts {cpus + 1} processes.*this machine has "
                                          rf"{cpus} CPUs; give at most --workers {cpus}"):
        LocalEngine(workers=cpus + 1)
    assert LocalEngine(workers=cpus).workers == cpus


def test_a_sweep_folder_on_a_read_only_file_system_names_o(tmp_path, monkeypatch):
    """sweep -o on a read-only mount said "Read-only file system (...); fix the path or free the resource" after
    loading the models; compress, plan and bench name -o and a writable path, and so does the sweep, first."""
    import errno

    from onnx_alds import model_io
    from onnx_alds.errors import OutputPathError
    from onnx_alds.sweep import _check_writable_folder

    _check_writable_folder(tmp_path / "new" / "sweep")  # writable: nothing said
    real_open = open

    def read_only(path, *args, **kwargs):  # (the probe file a read-only file system refuses)
        if str(path).endswith(".probe"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(model_io, "open", read_only, raising=False)
    with pytest.raises(OutputPathError, match=r"cannot write the sweep folder -o '.*sweep' \(Read-only file system "
                                              r"in '.*'\); choose a writable -o path"):
        _check_writable_folder(tmp_path / "new" / "sweep")


def test_one_sweep_at_a_time_writes_in_a_folder(tmp_path, monkeypatch):
    """Two sweeps on one -o folder: a variant's model of one landed beside the row and report of the other, both
    exit 0. A sweep holds a lock on its folder, and a second one there is refused at once; other writes into
    the folder do not wait for it (a lock on every write's folder stalled them for 60 s)."""
    import subprocess
    import textwrap

    from onnx_alds import model_io
    from onnx_alds.errors import OutputPathError
    from onnx_alds.model_io import folder_lock, write_file_atomically
    from onnx_alds.sweep import SweepModel, run_sweep

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        handle = os.open({str(tmp_path)!r}, os.O_RDONLY)
        fcntl.flock(handle, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputPathError, match="busy here"):
            with folder_lock(tmp_path, busy="busy here"):
                pass
        with pytest.raises(OutputPathError, match="another onnx-alds sweep is writing in .*; wait for it to finish"):
            run_sweep([SweepModel("m", str(tmp_path / "absent.onnx"), ())], ["alds"], [0.5], out=tmp_path,
                      bench=False)
        # two sweeps that both found the folder missing: the one refused removed the other's new folder, and a
        # third then took a lock on the folder made again
        monkeypatch.setattr(model_io, "first_missing_folder", lambda folder: Path(folder))
        with pytest.raises(OutputPathError, match="another onnx-alds sweep"):
            run_sweep([SweepModel("m", str(tmp_path / "absent.onnx"), ())], ["alds"], [0.5], out=tmp_path,
                      bench=False)
        assert tmp_path.is_dir()
        write_file_atomically(tmp_path / "a.json", b"{}")  # (not a sweep: written at once)
        assert (tmp_path / "a.json").read_bytes() == b"{}"
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path, busy="busy here"):  # (free again)
        pass
    (tmp_path / "gone").mkdir()  # a folder its holder removed, and another made again, is no lock to take
    real_fstat = os.fstat
    monkeypatch.setattr(model_io.os, "fstat", lambda handle: os.stat_result((0, 1, 2) + tuple(real_fstat(handle))[3:]))
    with pytest.raises(OutputPathError, match="busy here"):
        with folder_lock(tmp_path / "gone", busy="busy here"):
            pass
