"""bench: interleaved timings, provider checks, per-layer pairs and the JSON record (no timing thresholds)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_alds.bench import (add_bench_arguments, bench, factorized_pairs, round_robin_order, run_bench_command,
                             time_interleaved)
from onnx_alds.errors import InputDataError, ProviderError, UnsupportedModelError

OPSET = 17
FAST = {"runs": 5, "warmup": 1, "min_time_s": 0.0}


def _model(factorized: bool, seed: int = 0) -> onnx.ModelProto:
    """Conv(3→16, 3x3) 'conv1' → Relu → Flatten → Gemm(1024→10) 'fc'.

    ``factorized``: conv1 becomes 'conv1.enc' (3→4, 3x3) + 'conv1.dec' (4→16, 1x1) and fc becomes
    'fc.enc' (1024→8) + 'fc.dec' (8→10, with the bias), as the compressor names them.
    """
    rng = np.random.default_rng(seed)
    weights, nodes = [], []
    if factorized:
        weights += [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv1.weight.enc"),
                    numpy_helper.from_array(rng.standard_normal((16, 4, 1, 1)).astype(np.float32), "conv1.weight.dec"),
                    numpy_helper.from_array(rng.standard_normal((1024, 8)).astype(np.float32), "fc.weight.enc"),
                    numpy_helper.from_array(rng.standard_normal((8, 10)).astype(np.float32), "fc.weight.dec")]
        nodes += [helper.make_node("Conv", ["x", "conv1.weight.enc"], ["c.enc"], name="conv1.enc", pads=[1, 1, 1, 1]),
                  helper.make_node("Conv", ["c.enc", "conv1.weight.dec"], ["c"], name="conv1.dec")]
    else:
        weights += [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "conv1.weight"),
                    numpy_helper.from_array(rng.standard_normal((1024, 10)).astype(np.float32), "fc.weight")]
        nodes.append(helper.make_node("Conv", ["x", "conv1.weight"], ["c"], name="conv1", pads=[1, 1, 1, 1]))
    weights.append(numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fc.bias"))
    nodes += [helper.make_node("Relu", ["c"], ["r"], name="relu1"),
              helper.make_node("Flatten", ["r"], ["f"], name="flatten")]
    if factorized:
        nodes += [helper.make_node("Gemm", ["f", "fc.weight.enc"], ["f.enc"], name="fc.enc"),
                  helper.make_node("Gemm", ["f.enc", "fc.weight.dec", "fc.bias"], ["logits"], name="fc.dec")]
    else:
        nodes.append(helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc"))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_bench_figures_and_speedup_of_first_is_one():
    report = bench([_model(False), _model(True)], batch_sizes=(1, 4), threads=1, **FAST)
    assert report.models == ("model[0]", "model[1]") and report.batch_sizes == (1, 4)
    assert len(report.timings) == 4
    for timing in report.timings:
        assert timing.median_ms > 0 and timing.p10_ms <= timing.median_ms <= timing.p90_ms
        assert timing.runs == 5  # interleaved rounds: every model ran in every round
        assert timing.throughput == pytest.approx(timing.batch_size / (timing.median_ms / 1e3))
    for batch in (1, 4):
        assert report.speedup(0, batch) == 1.0
        assert report.speedup(1, batch) == pytest.approx(report.timing(0, batch).median_ms /
                                                         report.timing(1, batch).median_ms)
    assert report.threads == 1 and report.provider_name == "CPUExecutionProvider"


def test_rounds_are_interleaved_and_rotate():
    assert round_robin_order(3, 0) == [0, 1, 2] and round_robin_order(3, 1) == [1, 2, 0]
    calls: list[int] = []
    runners = [lambda i=i: calls.append(i) for i in range(2)]
    times = time_interleaved(runners, warmup=1, runs=3, min_time_s=0.0)
    assert calls == [0, 1, 0, 1, 1, 0, 0, 1]  # warm-up round, then rounds starting at 0, 1, 0
    assert [len(t) for t in times] == [3, 3]


def test_cuda_with_cpu_only_onnxruntime_is_a_provider_error():
    with pytest.raises(ProviderError, match="provider 'cuda' is not available .*install onnx-alds\\[gpu\\]"):
        bench([_model(False)], provider="cuda", **FAST)


def test_fixed_batch_refuses_other_batch_sizes():
    model = _model(False)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(InputDataError, match="fixes the batch to 1; bench it with --batch 1"):
        bench([model], batch_sizes=(2,), **FAST)
    # of two models with an input of that name, the one that fixes it is named
    with pytest.raises(InputDataError, match="^model\\[1\\]: input 'x' fixes the batch to 1"):
        bench([_model(False), model], batch_sizes=(2,), **FAST)


def test_per_layer_one_row_per_pair():
    original, compressed = _model(False), _model(True)
    assert factorized_pairs(original, compressed) == [("conv1", "conv1.enc", "conv1.dec"), ("fc", "fc.enc", "fc.dec")]
    report = bench([original, compressed], threads=1, per_layer=True, layer_runs=3, **FAST)
    (comparison,) = report.layers
    assert [row.layer for row in comparison.rows] == ["conv1", "fc"] and not comparison.skipped
    conv, fc = comparison.rows
    assert conv.op_type == "Conv" and conv.input_shape == (1, 3, 8, 8) and conv.pair_nodes == ("conv1.enc", "conv1.dec")
    assert fc.input_shape == (1, 1024)
    for row in comparison.rows:
        assert row.original_us > 0 and row.pair_us > 0 and row.speedup == pytest.approx(row.original_us / row.pair_us)
    assert any(line.strip().startswith("conv1 ") for line in report.lines())


def test_per_layer_with_a_compressed_model_first_names_the_mix_up():
    """Said "no factorized layers (no nodes named <layer>.enc / <layer>.dec)" of a model that has them, when
    the first model given was not the original."""
    compressed = _model(True)
    report = bench([compressed, compressed], threads=1, per_layer=True, layer_runs=3, **FAST)
    (comparison,) = report.layers
    assert not comparison.rows and comparison.skipped == (
        "its 2 factorized layers (first: 'conv1') have no node of that name in the first model; give the original "
        "(uncompressed) model first",)
    assert not any("no factorized layers" in line for line in report.lines())


def test_per_layer_names_the_layers_factorized_inside_subgraphs():
    """Layers factorized inside an If branch were left out without a word ("no factorized layers")."""
    from onnx_alds import compress

    rng = np.random.default_rng(5)
    branches = {}
    for branch in ("then", "else"):
        product = helper.make_node("MatMul", ["x", f"w_{branch}"], [f"y_{branch}"], name=f"{branch}_mm")
        body = helper.make_graph([product], branch, [],
                                 [helper.make_tensor_value_info(f"y_{branch}", TensorProto.FLOAT, None)])
        branches[f"{branch}_branch"] = body
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], name="branch", **branches)]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w_then"),
                               numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w_else"),
                               numpy_helper.from_array(np.float32(0), "zero")])
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    compressed = compress(original, keep_params=0.5, method="svd").model
    report = bench([original, compressed], threads=1, per_layer=True, layer_runs=3, **FAST)
    (comparison,) = report.layers
    assert not comparison.rows and sorted(skip.split(":")[0] for skip in comparison.skipped) == ["else_mm", "then_mm"]
    assert "inside the subgraph branch/then_branch" in " ".join(comparison.skipped)
    assert not any("no factorized layers" in line for line in report.lines())


def test_per_layer_needs_two_models():
    with pytest.raises(InputDataError, match="two or more models"):
        bench([_model(False)], per_layer=True, **FAST)


def test_command_writes_json(tmp_path, capsys):
    original, compressed = tmp_path / "m.onnx", tmp_path / "m.small.onnx"
    onnx.save(_model(False), original)
    onnx.save(_model(True), compressed)
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args([str(original), str(compressed), "--batch", "1", "2", "--runs", "3", "--warmup", "1",
                              "--min-time", "0", "--threads", "1", "--per-layer", "--json", str(out)])
    assert run_bench_command(args) == 0
    printed = capsys.readouterr().out
    assert "m.small.onnx" in printed and "speedup" in printed
    data = json.loads(out.read_text())
    assert data["provider"] == "cpu" and data["threads"] == 1 and data["batch_sizes"] == [1, 2]
    assert data["machine"]["cpu"] and data["machine"]["physical_cores"] >= 1
    assert data["versions"]["onnxruntime"] and len(data["timings"]) == 4
    assert [row["layer"] for row in data["layers"][0]["rows"]] == ["conv1", "fc"]


@pytest.mark.parametrize("speedup, verdict", [(1.5, "faster"), (1.005, "about the same"), (0.99, "about the same"),
                                              (0.8, "NOT faster")])
def test_layer_line_verdict(speedup, verdict):
    from onnx_alds.bench import LayerTiming

    line = LayerTiming("conv", "Conv", (1, 3, 8, 8), ("a", "b"), 10.0, 10.0 / speedup, speedup).line()
    assert line.endswith(verdict)


def test_noisy_timings_are_said_to_be_uncertain():
    """A spread of 98 % printed a 2.05x speedup with no word that the machine was busy."""
    from dataclasses import replace

    from onnx_alds.bench import BenchReport, Timing

    quiet = Timing("a.onnx", 1, 100, 1.0, 0.98, 1.03, 1.0, 0.97, 0.05, 1000.0, 1.0)
    noisy = replace(quiet, model="b.onnx", spread=0.98, speedup=2.05)
    report = BenchReport(("a.onnx", "b.onnx"), "cpu", "CPUExecutionProvider", {}, 1, (1,), 1, (quiet, noisy), (),
                         {"cpu": "test"}, {})
    assert any(line.startswith("note: 1 timing spread over 20 %") and "largest 98 %" in line
               for line in report.lines())
    assert not any(line.startswith("note:") for line in replace(report, timings=(quiet,)).lines())
    # in the JSON too (bench --json and the demo's report had "notes": [] beside the 2.05x)
    assert any(note.startswith("1 timing spread over 20 %") for note in report.to_dict()["notes"])


def test_a_file_that_is_not_a_model_is_one_error_line(tmp_path, capsys):
    """The default batch is read from the first model: a junk file there was a protobuf DecodeError traceback."""
    from onnx_alds.cli import main

    junk = tmp_path / "junk.onnx"
    junk.write_text("junk")
    assert main(["bench", str(junk)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_inputs_fixing_different_batches_are_one_error():
    """x fixed at 4 and s at 1: bench said "use --batch 4", then with --batch 4 "use --batch 1", and so on."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["s"], ["t"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8]),
                                    helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8]),
                               helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for batch in (1, 4):
        with pytest.raises(UnsupportedModelError, match=r"inputs fix different first dims \(\[1, 4\]\)"):
            bench([model], batch_sizes=(batch,), **FAST)


def test_a_batch_given_by_input_shape_and_replaced_by_batch_is_said(tmp_path, capsys):
    """bench --input-shape x:3x... --batch 2 timed batch 2 with no word about the 3."""
    path = tmp_path / "m.onnx"
    onnx.save(_model(False), path)
    name = _model(False).graph.input[0].name
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    args = parser.parse_args([str(path), "--input-shape", f"{name}:3x3x8x8", "--batch", "2", "--runs", "2",
                              "--warmup", "1", "--min-time", "0", "--threads", "1"])
    assert run_bench_command(args) == 0
    assert "note: the input shapes give batch 3; timed at batch 2 instead" in capsys.readouterr().out
    args = parser.parse_args([str(path), "--input-shape", f"{name}:3x3x8x8", "--runs", "2", "--warmup", "1",
                              "--min-time", "0", "--threads", "1"])
    assert run_bench_command(args) == 0
    assert "note: --input-shape" not in capsys.readouterr().out


def test_per_layer_finds_the_pairs_of_nodes_named_like_their_outputs():
    """A node named as its output tensor ('conv' → 'conv') got the encoder node 'conv.enc.1' (the middle tensor
    had taken 'conv.enc'), and ``--per-layer`` found "no factorized layers". Node and value names are
    separate namespaces."""
    from onnx_alds import compress

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal((32 * 8 * 8, 10)).astype(np.float32), "fc_w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["conv"], ["flat"], name="flat"),
             helper.make_node("MatMul", ["flat", "fc_w"], ["fc"], name="fc")]
    graph = helper.make_graph(nodes, "named", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("fc", TensorProto.FLOAT, [1, 10])], weights)
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    compressed = compress(original, keep_params=0.5, rank_multiple=1).model
    names = {node.name for node in compressed.graph.node}
    assert {"conv.enc", "conv.dec"} <= names and "conv.enc.1" not in names
    report = bench([original, compressed], threads=1, per_layer=True, layer_runs=3, **FAST)
    (comparison,) = report.layers
    assert "conv" in [row.layer for row in comparison.rows]


def test_min_time_is_honoured_however_fast_the_model():
    """Rounds stopped at 20 × runs, so --min-time 5 timed 2 ms of a fast model."""
    import time as clock

    calls: list[int] = []
    started = clock.perf_counter()
    times = time_interleaved([lambda: calls.append(0)], warmup=0, runs=1, min_time_s=0.05)
    assert clock.perf_counter() - started >= 0.05 and len(times[0]) > 20


def test_a_cuda_only_flag_on_the_cpu_is_an_error(tmp_path, capsys):
    """--cudnn-conv-algo-search HEURISTIC on the CPU provider was accepted and did nothing."""
    from onnx_alds.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(_model(False), str(path))
    assert main(["bench", str(path), "--cudnn-conv-algo-search", "HEURISTIC", "--runs", "1", "--min-time", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --cudnn-conv-algo-search has no effect with --provider cpu") and err.count("\n") == 1


def test_an_invalid_model_is_said_to_be_invalid_not_a_provider_failure(tmp_path, capsys):
    """bench of a model reading an undefined tensor printed ONNX Runtime's raw text as a provider error."""
    from onnx_alds.cli import main

    graph = helper.make_graph([helper.make_node("Relu", ["zz"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), str(path))
    assert main(["bench", str(path), "--runs", "1", "--min-time", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the model is not valid ONNX (onnx.checker:") and "export it again" in err


def test_an_endless_min_time_is_refused():
    """--min-time inf (and bench(min_time_s=inf)) timed for ever once the round cap was lifted."""
    from onnx_alds.argtypes import seconds

    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        seconds("inf")
    with pytest.raises(InputDataError, match="finite min_time_s"):
        bench([_model(False)], runs=1, min_time_s=float("inf"))


def test_per_layer_names_the_original_as_compress_does_through_local_functions():
    """A layer inside a model-local function is named by its place in the inlined graph ('MatMul_2'); per-layer
    named the original without inlining, where 'MatMul_2' was another node, and timed that one instead."""
    from onnx_alds import compress

    rng = np.random.default_rng(1)
    block = helper.make_function("local", "Block", ["a", "w"], ["b"],
                                 [helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Relu", ["m"], ["b"])],
                                 opset_imports=[helper.make_opsetid("", OPSET)])
    nodes = [helper.make_node("Block", ["x", "Wa"], ["h1"], domain="local"),
             helper.make_node("Block", ["h1", "Wg"], ["h2"], domain="local"),
             helper.make_node("MatMul", ["h2", "Wf"], ["y"])]
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) / 8, name)
               for name, shape in (("Wa", (64, 48)), ("Wg", (48, 40)), ("Wf", (40, 16)))]
    graph = helper.make_graph(nodes, "fn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], weights)
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("local", 1)],
                                 functions=[block])
    compressed = compress(original, keep_params=0.6, rank_multiple=1).model
    report = bench([original, compressed], threads=1, per_layer=True, layer_runs=3, **FAST)
    rows = {row.layer: row for row in report.layers[0].rows}
    assert "MatMul_2" in rows and rows["MatMul_2"].input_shape == (1, 48)  # the inlined Wg MatMul, not the last


def test_per_layer_times_a_layer_fed_by_an_input_that_is_also_an_output():
    """An input also listed as a graph output (passed through): the output's dynamic declared type replaced the
    input's concrete one, and the layer was skipped as "shape unknown" even with --input-shape."""
    from onnx_alds import compress

    rng = np.random.default_rng(2)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64]),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "features"])],
                              [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")])
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    compressed = compress(original, keep_params=0.5, rank_multiple=1).model
    (comparison,) = bench([original, compressed], threads=1, per_layer=True, layer_runs=3, **FAST).layers
    assert [row.layer for row in comparison.rows] == ["mm"] and not comparison.skipped


def test_models_taking_other_inputs_get_a_note_beside_their_speedup():
    """bench of two unrelated models printed "speedup 31.14x" as if they did the same work."""
    other = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["ids"], ["out"])], "other",
        [helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])]), opset_imports=[helper.make_opsetid("", OPSET)])
    report = bench([_model(False), other], threads=1, **FAST)
    assert report.notes == ("model[1] takes other inputs than model[0] (ids float32 [N, 4] against x float32 "
                            "[N, 3, 8, 8]): its speedup compares different work",)
    assert "note: model[1] takes other inputs" in "\n".join(report.lines())
    assert bench([_model(False), _model(True)], threads=1, **FAST).notes == ()

    def two_inputs(order: str, width: int = 4) -> onnx.ModelProto:  # fed by name: the order does not matter
        values = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", width]) for n in "xz"}
        return helper.make_model(helper.make_graph(
            [helper.make_node("Add", ["x", "z"], ["y"])], "g", [values[n] for n in order],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])]),
            opset_imports=[helper.make_opsetid("", OPSET)])
    assert bench([two_inputs("xz"), two_inputs("zx")], threads=1, **FAST).notes == ()
    assert bench([two_inputs("xz"), two_inputs("xz", width=64)], threads=1, **FAST).notes  # same names, other dims


def test_a_model_random_inputs_cannot_feed_is_refused_without_asking_for_an_npz():
    """A string input: bench said "give real inputs in an .npz (--inputs FILE.npz ...)", a flag bench lacks."""
    from onnx_alds.bench import timing_feeds

    node = helper.make_node("Identity", ["tag"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("tag", TensorProto.STRING, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputDataError) as caught:
        timing_feeds(model, 1, None)
    assert "timing runs on random inputs only" in str(caught.value) and "--inputs" not in str(caught.value)


def test_the_api_times_the_batch_the_input_shapes_give_as_the_command_does():
    """bench(input_shapes={'x': (4, ...)}) timed batch 1 (its default batch_sizes) with no word; the command
    line times batch 4."""
    model = _model(False)
    name = model.graph.input[0].name
    report = bench([model], input_shapes={name: (4, 3, 8, 8)}, **FAST)
    assert [timing.batch_size for timing in report.timings] == [4] and not report.notes
    report = bench([model], input_shapes={name: (4, 3, 8, 8)}, batch_sizes=(2,), **FAST)
    assert [timing.batch_size for timing in report.timings] == [2]
    assert any("the input shapes give batch 4; timed at batch 2 instead" in note for note in report.notes)


def test_per_layer_names_the_layers_factorized_more_than_once():
    """A compressed model compressed again (X.enc.enc, X.enc.dec, X.dec): those layers were left out of the
    per-layer table with no word."""
    from conftest import small_cnn

    from onnx_alds import compress

    original = small_cnn(width=8)
    once = compress(original, keep_params=0.7, rank_multiple=1, method="svd").model
    twice = compress(once, keep_params=0.6, rank_multiple=1, method="svd").model
    again = {node.name.split(".")[0] for node in twice.graph.node if node.name.count(".") >= 2}
    assert again
    report = bench([original, twice], threads=1, per_layer=True, layer_runs=2, **FAST)
    (comparison,) = report.layers
    named = {row.layer for row in comparison.rows} | {note.split(":")[0] for note in comparison.skipped}
    assert again <= named and {node.name for node in once.graph.node if node.name.endswith(".enc")} != set()
    assert all("factorized more than once" in note for note in comparison.skipped if note.split(":")[0] in again)


def test_a_batch_size_given_twice_is_refused_and_one_run_shows_no_spread():
    """bench --batch 1 1 7 timed batch 1 twice; --runs 1 printed 'spread 0.0%', a perfectly quiet machine."""
    with pytest.raises(InputDataError, match="batch size 1 is given twice"):
        bench([_model(False)], batch_sizes=(1, 1, 7), **FAST)
    report = bench([_model(False)], batch_sizes=(1,), runs=1, warmup=0, min_time_s=0.0)
    assert "spread    n/a" in report.timings[0].line() and report.timings[0].runs == 1
    assert report.to_dict()["timings"][0]["spread"] is None  # the JSON said 0.0 where the text said n/a


def test_the_json_says_the_input_shapes_each_model_was_timed_at():
    """--input-shape ids:4x12 timed at a length the JSON did not keep: the run could not be repeated from it."""
    model = _model(False)
    name = model.graph.input[0].name
    data = bench([model, model], input_shapes={name: (3, 3, 8, 8)}, names=["a", "b"], **FAST).to_dict()
    assert data["input_shapes"] == {"a": {"3": {name: [3, 3, 8, 8]}}, "b": {"3": {name: [3, 3, 8, 8]}}}
    json.dumps(data)


@pytest.mark.parametrize("keywords, error, match", [
    (dict(provider=["cpu", "cuda"]), ProviderError, r"unknown provider \['cpu', 'cuda'\]"),
    (dict(provider_options={"foo": 1}), InputDataError, "have no effect with provider 'cpu'"),
    (dict(cudnn_conv_algo_search="HEURISTIC"), InputDataError, "has no effect with provider 'cpu'"),
])
def test_bench_refuses_provider_settings_it_cannot_apply(keywords, error, match):
    # a list raised a bare TypeError; CPU provider options and a CUDA search mode were taken and recorded as applied
    from conftest import small_cnn

    with pytest.raises(error, match=match):
        bench([small_cnn()], batch_sizes=(1,), runs=1, min_time_s=0, **keywords)


def test_pairs_renamed_around_names_the_model_had_are_found():
    """A MatMul 'fc' beside nodes already named 'fc.enc' (a Relu) and 'fc.dec' (a MatMul): its pair is
    'fc.enc.1'/'fc.dec.1', and --per-layer skipped 'fc' as "factorized more than once (fc.dec.1, fc.dec.dec,
    fc.dec.enc, fc.enc, fc.enc.1)", the untouched Relu and another layer's pair included."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model
    from onnx_alds import compress

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), name)
               for name in ("W", "W.enc", "W.dec")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="fc"),
             helper.make_node("Relu", ["y"], ["y.enc"], name="fc.enc"),
             helper.make_node("MatMul", ["y.enc", "W.enc"], ["z"], name="fc.dec"),
             helper.make_node("MatMul", ["z", "W.dec"], ["out"], name="fc2")]
    original = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 64])], weights)
    compressed = compress(original, keep_params=0.6, rank_multiple=8).model
    assert ("fc", "fc.enc.1", "fc.dec.1") in factorized_pairs(original, compressed)
    assert ("fc.dec", "fc.dec.enc", "fc.dec.dec") in factorized_pairs(original, compressed)
    # compressed again: each layer's note lists its own chain, not the nodes of 'fc.enc' or 'fc.dec' (prefixes)
    from onnx_alds.bench import _compressed_again

    again = compress(compressed, keep_params=0.7, rank_multiple=8).model
    notes = {note.split(":")[0]: note for note in _compressed_again(original, again, set())}
    assert "fc.enc.1.enc" in notes["fc"] and "fc.enc.enc" not in notes["fc"] and "fc.dec.enc" not in notes["fc"]
    assert "fc.dec.enc.enc" in notes["fc.dec"] and "fc.enc.1" not in notes["fc.dec"]


def test_a_timing_run_out_of_memory_says_so_not_that_the_inputs_are_wrong():
    """bench --batch 20000 under a memory limit said "the inputs need values or shapes random data lacks: give
    --input-shape"; ONNX Runtime had failed to allocate memory, and a smaller batch is the fix."""
    from onnx_alds.bench import time_interleaved
    from onnx_alds.errors import RuntimeResourceError

    def runner() -> None:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
                           "FusedConv node. Name:'/b/Conv' Status Message: Failed to allocate memory for requested "
                           "buffer of size 1310720000")

    with pytest.raises(RuntimeResourceError, match=r"could not get threads or memory .*smaller batch \(bench "
                                                   r"--batch, compress --bench-batch\)"):
        time_interleaved([runner], warmup=1, runs=1, min_time_s=0.0)


def test_bench_arguments_of_the_wrong_kind_are_named_short(tmp_path):
    """bench(feeds=InputSet) put the whole array repr (4,000+ characters) in its error, bench(bytes) said "the
    model is of type int", and names="ab" was split into two names."""
    from conftest import small_cnn
    from onnx_alds.inputs import InputSet

    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(width=8), str(path))
    inputs = InputSet({"input": np.zeros((4, 3, 32, 32), np.float32)}, source="t")
    for feeds, what in ((inputs, "feeds is an InputSet: give its .arrays"),
                        (inputs.arrays["input"], "feeds is a ndarray")):
        with pytest.raises(InputDataError) as caught:
            bench([str(path)], feeds=feeds, runs=1)
        assert str(caught.value).startswith(what) and len(str(caught.value)) < 200, str(caught.value)
    with pytest.raises(InputDataError, match="models is bytes"):
        bench(path.read_bytes(), runs=1)
    with pytest.raises(InputDataError, match=r"names='ab' is one string"):
        bench([str(path), str(path)], names="ab", runs=1)
