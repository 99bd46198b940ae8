"""The Python API's arguments: a value of the wrong type or range is one OnnxAldsError naming it, before any
work starts; nothing the caller asked for is silently ignored."""

import json
from decimal import Decimal

import numpy as np
import onnx
import pytest

from conftest import small_cnn

from onnx_alds import analyze, compress
from onnx_alds.bench import bench
from onnx_alds.errors import BudgetError, InputDataError, ModelLoadError
from onnx_alds.inputs import InputSet, load_inputs
from onnx_alds.model_io import open_model
from onnx_alds.options import SpeedOptions
from onnx_alds.plan import apply_plan, make_plan
from onnx_alds.validate import validate


def _calibration(count: int = 8, size: int = 32) -> InputSet:
    return InputSet({"input": np.random.default_rng(0).standard_normal((count, 3, size, size)).astype(np.float32)})


@pytest.mark.parametrize("reason", [None, "", "  ", 3, False])
def test_keep_dense_needs_a_reason_in_words(reason):
    # a None reason read as "compressible": the layer the caller asked to keep dense was factorized
    with pytest.raises(BudgetError, match=r"keep_dense\['fc'\]"):
        compress(small_cnn(), keep_params=0.6, keep_dense={"fc": reason})


def test_keep_dense_with_a_reason_keeps_the_layer():
    result = compress(small_cnn(), keep_params=0.6, keep_dense={"fc": "the classifier"})
    fc = next(layer for layer in result.report.layers if layer.name == "fc")
    assert fc.params_after == fc.params_before and "the classifier" in (fc.skip_reason or "")


@pytest.mark.parametrize("workers", [2.0, "2", True, 0])
def test_calibration_workers_must_be_a_count(workers):
    with pytest.raises(InputDataError, match="calibration_workers"):
        compress(small_cnn(), keep_params=0.6, calibration=_calibration(), calibration_workers=workers)


def test_speed_options_without_a_timed_budget_are_refused():
    with pytest.raises(InputDataError, match="speed=SpeedOptions"):
        compress(small_cnn(), keep_params=0.6, speed=SpeedOptions(batch=4))


@pytest.mark.parametrize("keep", [Decimal("0.5"), "0.5", True])
def test_budget_of_the_wrong_type_is_named_as_such(keep):
    with pytest.raises(BudgetError, match="give a float|is a string"):
        compress(small_cnn(), keep_params=keep)


def test_budget_as_a_zero_dim_array_is_its_number():
    by_array = compress(small_cnn(), keep_params=np.array(0.6))
    by_float = compress(small_cnn(), keep_params=0.6)
    assert by_array.model.SerializeToString() == by_float.model.SerializeToString()


@pytest.mark.parametrize("seed", ["1", True, 1.0])
def test_seed_must_be_an_integer(seed):
    with pytest.raises(BudgetError, match="seed="):
        compress(small_cnn(), keep_params=0.6, seed=seed)


def test_input_shapes_must_agree_with_the_calibration_arrays():
    model = small_cnn()  # input [N, 3, 32, 32]; dynamic spatial dims below
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    with pytest.raises(InputDataError, match="calibration arrays are 3x32x32 per sample for 'input'"):
        compress(model, keep_flops=0.6, input_shapes={"input": (1, 3, 16, 16)}, calibration=_calibration())
    compress(model, keep_flops=0.6, input_shapes={"input": (1, 3, 32, 32)}, calibration=_calibration())


@pytest.mark.parametrize("labels, match", [([0.5] * 8, "float64"), (np.zeros((8, 2), np.int64), r"shape \(8, 2\)"),
                                           ([1] * 7, "7 labels for 8 samples")])
def test_input_set_labels_are_one_integer_per_sample(labels, match):
    with pytest.raises(InputDataError, match=match):
        InputSet(_calibration().arrays, labels=labels)


def test_input_set_labels_as_a_list_of_ids_are_taken():
    labels = [1, 2, 3, 4, 5, 6, 7, 8]
    inputs = InputSet(_calibration().arrays, labels=labels)
    assert inputs.labels.dtype == np.int64 and inputs.labels.tolist() == labels


def test_validate_with_list_labels_measures_accuracy():
    model = small_cnn()
    inputs = _calibration()
    labels = np.argmax(_run(model, inputs), axis=1).tolist()
    report = validate(model, model, inputs=InputSet(inputs.arrays, labels=labels), max_accuracy_drop=0.01)
    assert report.passed


def _run(model, inputs):
    from conftest import run_model

    return run_model(model, dict(inputs.arrays))[0]


@pytest.mark.parametrize("keywords, match", [
    (dict(batch_sizes=4), "batch_sizes=4"), (dict(batch_sizes=(2.5,)), "batch size"),
    (dict(runs=2.5), "runs"), (dict(warmup=-1), "warmup"), (dict(seed=-1), "seed"),
    (dict(feeds={}), "feeds"), (dict(layer_runs=0), "layer_runs")])
def test_bench_arguments_are_checked(keywords, match):
    with pytest.raises(InputDataError, match=match):
        bench([small_cnn()], runs=keywords.pop("runs", 3), min_time_s=0, **keywords)


def test_bench_feeds_must_name_the_inputs():
    feeds = {"image": np.zeros((2, 3, 32, 32), np.float32)}
    with pytest.raises(InputDataError, match="feeds has no array for input 'input'"):
        bench([small_cnn()], batch_sizes=(2,), runs=3, min_time_s=0, feeds=feeds)


def test_bench_takes_a_generator_of_models():
    report = bench((m for m in [small_cnn(), small_cnn(1)]), runs=3, warmup=1, min_time_s=0)
    assert len(report.timings) == 2


@pytest.mark.parametrize("keywords, match", [
    (dict(rank_fractions=(float("nan"),)), "rank_fractions"), (dict(rank_fractions=(1.5, -0.5)), "rank_fractions"),
    (dict(rank_fractions=()), "rank_fractions"), (dict(rank_multiple="16"), "rank_multiple"),
    (dict(rank_multiple=2.5), "rank_multiple"), (dict(max_groups=0), "max-groups"),
    (dict(rank_fractions=(0.25, 0.2500001)), "rank_fractions gives 0.25 twice")])  # (one column was lost)
def test_analyze_checks_what_compress_checks(keywords, match):
    with pytest.raises(BudgetError, match=match):
        analyze(small_cnn(), **keywords)


def test_load_inputs_takes_a_model_path(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), str(path))
    inputs = load_inputs(str(path), random=3)
    assert inputs.arrays["input"].shape == (3, 3, 32, 32)
    with pytest.raises(ModelLoadError):
        load_inputs(str(tmp_path / "missing.onnx"), random=3)
    for keywords in (dict(random=1.5), dict(random=3, limit=2.5), dict(random=3, seed=-2)):
        with pytest.raises(InputDataError):
            load_inputs(small_cnn(), **keywords)


def test_make_plan_takes_compress_keywords_and_names_unknown_ones():
    plan = make_plan(small_cnn(), keep_params=0.6, calibration=_calibration(), calibration_workers=1)
    assert apply_plan(small_cnn(), plan, _calibration(), calibration_workers=1).model is not None
    with pytest.raises(InputDataError, match=r"make_plan\(\) got unknown option\(s\) keep_param;"):
        make_plan(small_cnn(), keep_param=0.6)


def test_a_misspelled_keyword_is_a_type_error_from_every_function():
    """make_plan raised an InputDataError for a keyword it does not take where compress, analyze, validate
    and bench raise Python's TypeError: a script catching one kind missed the other."""
    from onnx_alds import analyze
    from onnx_alds.bench import bench
    from onnx_alds.validate import validate

    calls = [lambda: compress(small_cnn(), keep_params=0.6, rankmultiple=16),
             lambda: make_plan(small_cnn(), keep_params=0.6, rankmultiple=16),
             lambda: analyze(small_cnn(), rankmultiple=16),
             lambda: validate(small_cnn(), small_cnn(), inputs=_calibration(), tol=1),
             lambda: bench([small_cnn()], batch=4)]
    for call in calls:
        with pytest.raises(TypeError, match="rankmultiple|tol|batch"):
            call()


def test_validate_of_a_light_result_says_how_to_get_the_weights(tmp_path):
    model = small_cnn(width=48)  # conv3's weight is over the light-model threshold, and stays dense
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(width=48), str(path), save_as_external_data=True, location="cnn.data", size_threshold=0)
    result = compress(open_model(str(path)), keep_params=0.8, exclude=["conv3"])
    with pytest.raises(ModelLoadError, match="materialize"):
        validate(model, result.model, inputs=_calibration(4))
    stub = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ModelLoadError, match="external file 'cnn.data'"):
        validate(stub, model, inputs=_calibration(4))


def test_bench_feeds_batch_is_a_real_inputs_and_a_failing_feed_is_named_as_the_callers():
    """An overridable initializer listed first among the feeds set the batch (1 for 4: throughput 4x low); a
    feed of the wrong dims was blamed on "random timing inputs"."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), helper.make_node("Mul", ["h", "scale"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
                                           helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W"),
                               numpy_helper.from_array(np.ones(1, np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"scale": np.full(1, 2, np.float32), "x": rng.standard_normal((4, 16)).astype(np.float32)}
    with pytest.raises(InputDataError, match="got batch sizes \\[1\\] and inputs of batch 4"):
        bench([model], batch_sizes=(1,), runs=3, min_time_s=0, feeds=feeds)
    report = bench([model], batch_sizes=(4,), runs=3, warmup=1, min_time_s=0, feeds=feeds)
    assert report.timings[0].batch_size == 4
    bad = {"x": rng.standard_normal((4, 8)).astype(np.float32)}
    with pytest.raises(InputDataError, match="running the model on the given feeds failed"):
        bench([model], batch_sizes=(4,), runs=3, warmup=1, min_time_s=0, feeds=bad)


def test_calibration_workers_without_calibration_is_refused_before_ray_starts():
    for call in (lambda: compress(small_cnn(), keep_params=0.6, calibration_workers=2),
                 lambda: make_plan(small_cnn(), keep_params=0.6, calibration_workers=2),
                 lambda: apply_plan(small_cnn(), make_plan(small_cnn(), keep_params=0.6), calibration_workers=2)):
        with pytest.raises(InputDataError, match="calibration_workers has no effect without calibration"):
            call()


def test_a_layer_no_rank_of_the_multiple_shrinks_says_so():
    result = compress(small_cnn(), keep_params=0.8, rank_multiple=16)
    fc = next(row for row in result.report.layers if row.name == "fc")  # 10x64: rank 16 keeps 1184 of 640
    assert fc.skip_reason == "rank 16 (the rank multiple) would take 1184 weights, more than its 640"


def test_bench_feeds_batch_comes_from_the_batched_inputs_and_scalar_feeds_are_taken():
    """An input without a batch dim listed first ('s' [16]) set the batch to 16 for feeds of batch 4 (samples/s 4x
    high); a scalar input (an If's cond) could not be fed at all."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    then = helper.make_graph([helper.make_node("Add", ["h", "s"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 16])])
    other = helper.make_graph([helper.make_node("Sub", ["h", "s"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 16])])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("s", TensorProto.FLOAT, [16]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"s": np.ones(16, np.float32), "x": rng.standard_normal((4, 16)).astype(np.float32),
             "cond": np.array(True)}
    with pytest.raises(InputDataError, match="got batch sizes \\[16\\] and inputs of batch 4"):
        bench([model], batch_sizes=(16,), runs=3, min_time_s=0, feeds=feeds)
    assert bench([model], batch_sizes=(4,), runs=3, warmup=1, min_time_s=0, feeds=feeds).timings[0].batch_size == 4


def test_calibration_given_twice_is_named_before_the_workers():
    from onnx_alds.options import DataAwareOptions

    with pytest.raises(BudgetError, match="not both"):
        compress(small_cnn(), keep_params=0.6, calibration=_calibration(), data=DataAwareOptions(),
                 calibration_workers=2)


@pytest.mark.parametrize("keywords, match", [
    (dict(method="svd", error_measure="frobenius"), "error_measure='frobenius' has no effect with method='svd'"),
    (dict(method="l-rank", error_measure="spectral"), "error_measure='spectral' has no effect with method='l-rank'"),
    (dict(method="svd", max_groups=2), "max_groups=2 has no effect with method='svd'"),
    (dict(method="svd-energy", seed=7), "seed=7 has no effect with method='svd-energy'"),  # the same weights
    (dict(method="l-rank", seed=7), "seed=7 has no effect with method='l-rank'"),
    (dict(prune="only", seed=7, calibration=_calibration()), "seed=7 has no effect with prune='only'"),
    (dict(refit=False), "refit=False has no effect without calibration inputs"),
    (dict(shrinkage=False), "shrinkage=False has no effect without calibration inputs"),
    (dict(calibration_batch_size=4), "calibration_batch_size=4 has no effect without calibration inputs"),
    (dict(damage_samples=4, calibration=_calibration()), "damage_samples=4 has no effect without method='damage'"),
    (dict(prune="only", method="svd", calibration=_calibration()), "method='svd' has no effect with prune='only'"),
    (dict(prune="only", both_factors=1, calibration=_calibration()), "both_factors=1 has no effect with prune='only'"),
])
def test_an_option_that_changes_nothing_is_refused_as_the_command_line_refuses_it(keywords, match):
    # the report said 'rank-fraction' for error_measure='frobenius' with svd: the caller's choice was dropped
    for function in (compress, make_plan):
        with pytest.raises(InputDataError, match=match.replace("(", r"\(")):
            function(small_cnn(), keep_params=0.6, **keywords)


def test_a_light_result_is_neither_saved_nor_compressed_without_its_store(tmp_path):
    """save_model(result.model, path) wrote a file whose weights pointed to 'onnx-alds-in-memory' (exit 0, a model
    nothing loads); compress(result.model) read another store's tensor at the stub's index."""
    from onnx_alds.model_io import save_model

    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(width=48), str(path))  # conv3's weight is over the light-model threshold
    result = compress(open_model(str(path)), keep_params=0.8, exclude=["conv3"])
    with pytest.raises(ModelLoadError, match="store=result.store"):
        save_model(result.model, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(ModelLoadError, match="a light result of compress"):
        compress(result.model, keep_params=0.9)
    save_model(result.model, tmp_path / "out.onnx", store=result.store)
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)
    with pytest.raises(ModelLoadError, match="writes an onnx.ModelProto"):
        save_model(str(path), tmp_path / "other.onnx")


@pytest.mark.parametrize("calibration, match", [
    (lambda x: InputSet({0: x}), "input set key 0 .int. is no graph input name"),
    (lambda x: InputSet({"input": x}, source=5), "source=5: give where the data came from in words"),
])
def test_an_input_set_of_the_wrong_keys_is_named(calibration, match):
    x = _calibration().arrays["input"]
    with pytest.raises(InputDataError, match=match):
        compress(small_cnn(), keep_params=0.6, calibration=calibration(x))


def test_an_object_with_the_input_set_members_is_checked_as_an_input_set():
    class Samples:  # no .source: an AttributeError deep in compress; a list in .arrays: a ValueError
        def __init__(self, arrays):
            self.arrays = arrays

        def batches(self, size):
            yield from InputSet(self.arrays).batches(size)

    x = _calibration().arrays["input"]
    taken = compress(small_cnn(), keep_params=0.6, calibration=Samples({"input": x}))
    same = compress(small_cnn(), keep_params=0.6, calibration=InputSet({"input": x}))
    assert taken.model.graph.SerializeToString() == same.model.graph.SerializeToString()
    with pytest.raises(InputDataError, match="input 'input' is a list"):
        compress(small_cnn(), keep_params=0.6, calibration=Samples({"input": x.tolist()}))


def test_numpy_integers_give_a_report_json_can_write():
    import json

    report = compress(small_cnn(), keep_params=0.6, rank_multiple=np.int64(2), seed=np.int64(3)).report
    assert type(report.rank_multiple) is int and type(report.seed) is int
    json.dumps(report.to_dict())
    plan = make_plan(small_cnn(), keep_params=0.6)
    name = next(d.name for d in plan.layers if d.option != "dense")
    edited = plan.with_layer(name, rank=np.int64(3))
    assert type(edited.layer(name).rank) is int
    json.dumps(apply_plan(small_cnn(), edited).report.to_dict())


def test_a_float32_budget_is_the_number_written():
    report = compress(small_cnn(), keep_params=np.float32(0.6)).report
    assert report.requested == 0.6 and "asked" not in report.format()


@pytest.mark.parametrize("keywords, match", [
    (dict(calibration_batch_size=0, calibration=_calibration()), "calibration_batch_size"),
])
def test_range_errors_name_the_keyword_given(keywords, match):
    with pytest.raises(InputDataError, match=match):
        compress(small_cnn(), keep_params=0.6, **keywords)


def test_an_empty_model_path_is_named_as_empty():
    with pytest.raises(ModelLoadError, match="the model path is empty"):
        compress("", keep_params=0.6)


def test_distill_options_are_checked_as_the_other_functions_check_theirs():
    from onnx_alds.distill import DistillSettings, distill

    for keywords, match in ((dict(settings=DistillSettings(steps=2), seed=1), "not both"),
                            (dict(step=2), r"distill\(\) got unknown option\(s\) step;"),
                            (dict(settings={"steps": 2}), "give an onnx_alds.distill.DistillSettings")):
        with pytest.raises(InputDataError, match=match):
            distill(small_cnn(), small_cnn(), _calibration(), **keywords)
    with pytest.raises(TypeError, match="unknown option"):
        distill(small_cnn(), small_cnn(), _calibration(), step=2)


def test_a_light_results_model_is_read_with_its_own_store_only(tmp_path):
    """save_model(model, store=another result's store) wrote that store's tensors into the model (a checker
    failure, or same-shape weights swapped silently); materialize(model, None) kept the stub."""
    from onnx_alds.model_io import materialize, save_model

    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(width=48), str(path))
    first = compress(open_model(str(path)), keep_params=0.8, exclude=["conv3"])
    second = compress(open_model(str(path)), keep_params=0.8, exclude=["conv3"])
    with pytest.raises(ModelLoadError, match="held by the store of another result"):
        save_model(first.model, tmp_path / "out.onnx", store=second.store)
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(ModelLoadError, match="store=result.store"):
        materialize(onnx.ModelProto().__class__.FromString(first.model.SerializeToString()), None)


def test_validate_takes_an_object_with_the_input_set_members_as_compress_does():
    class Samples:
        def __init__(self, arrays):
            self.arrays = arrays

        def batches(self, size):
            yield from InputSet(self.arrays).batches(size)

    x = _calibration(8).arrays["input"]
    report = validate(small_cnn(), small_cnn(), inputs=Samples({"input": x}))
    assert report.passed and report.samples == 8


def test_bench_takes_batch_sizes_from_a_generator():
    """The argument checks used the generator up: nothing was timed, no word."""
    report = bench([small_cnn()], batch_sizes=(b for b in (1, 2)), runs=2, warmup=1, min_time_s=0)
    assert [t.batch_size for t in report.timings] == [1, 2]


@pytest.mark.parametrize("keywords, match", [
    (dict(keep_latency=0.5, speed=SpeedOptions(prune_slow=True, timer=None)), "prune_slow=True. has no effect with keep_latency"),
    (dict(keep_params=0.6, order="auto", speed=SpeedOptions(prune_slow=True)), "prune_slow=True. has no effect with keep_latency"),
    (dict(keep_latency=0.5, speed=SpeedOptions(min_speedup=1.2)), r"min_speedup=1.2\) has no effect without prune_slow"),
    (dict(keep_params=0.6, method="damage", damage_max_groups=4, max_groups=2), "damage_max_groups=4 is more than max_groups=2"),
])
def test_speed_and_damage_options_that_change_nothing_are_refused(keywords, match):
    if keywords.get("method") == "damage":
        keywords["calibration"] = _calibration()
    with pytest.raises(InputDataError, match=match):
        compress(small_cnn(), **keywords)


def test_svd_beside_block_widths_is_refused():
    from onnx_alds.sweep import parse_method

    with pytest.raises(BudgetError, match="method 'svd' .--method svd. measures no error"):
        compress(small_cnn(), keep_params=0.6, method="svd", prune="combined", calibration=_calibration())
    with pytest.raises(BudgetError, match="measures no error"):
        parse_method("svd+data+prune")


def test_an_input_set_source_of_none_is_no_source():
    assert InputSet({"input": _calibration(2).arrays["input"]}, source=None).source.startswith("arrays given in Python")


@pytest.mark.parametrize("function", [compress, make_plan])
@pytest.mark.parametrize("group, keyword", [("search", {"rank_multiple": 1}), ("search", {"method": "alds"}),
                                            ("data", {"refit": True}), ("search", {"prune": "off"}),
                                            ("search", {"prune_heads": False})])
def test_a_keyword_given_beside_its_group_is_refused_even_at_its_default(function, group, keyword):
    # a keyword equal to its default was dropped without a word, the group's value used
    from onnx_alds.options import DataAwareOptions, SearchOptions

    grouped = {"search": SearchOptions(rank_multiple=4, method="svd"),
               "data": DataAwareOptions(calibration=_calibration(), refit=False)}[group]
    name = next(iter(keyword))
    with pytest.raises(BudgetError, match=f"give '{name}' inside {group}=... or as a keyword, not both"):
        function(small_cnn(), keep_params=0.6, **{group: grouped}, **keyword)


def test_a_group_alone_and_keywords_alone_still_work():
    from onnx_alds.options import SearchOptions

    by_group = compress(small_cnn(), keep_params=0.6, search=SearchOptions(rank_multiple=4))
    by_keyword = compress(small_cnn(), keep_params=0.6, rank_multiple=4)
    assert by_group.model.SerializeToString() == by_keyword.model.SerializeToString()


def test_with_layer_groups_a_matmul_cannot_take_is_a_plan_error():
    # the in-memory edit kept the dense layer's order None, which sent apply to the Conv-only order path: an
    # "internal check" failure blaming onnx-alds where the same edit in a plan file was a PlanError
    from conftest import matmul_model
    from onnx_alds.plan import PlanError

    model = matmul_model(in_features=64, out_features=48, leading=(4,))
    edited = make_plan(model, keep_params=0.9, rank_multiple=1).with_layer("proj", option="factorized", groups=2,
                                                                             rank=8)
    assert edited.layer("proj").order is not None  # read back as a plan file is
    with pytest.raises(PlanError, match="groups 2 is not a candidate under"):
        apply_plan(model, edited)


def test_plan_from_dict_takes_tuples_and_numpy_integers():
    from onnx_alds.plan import Plan

    plan = make_plan(small_cnn(), keep_params=0.6)
    data = plan.to_dict()
    layer = next(entry for entry in data["layers"] if entry["option"] == "factorized")
    layer["weight_shape"] = tuple(layer["weight_shape"])
    layer["rank"] = np.int64(layer["rank"])
    again = Plan.from_dict(data)
    assert again.to_dict() == plan.to_dict()


def test_api_arguments_of_the_wrong_kind_are_one_clear_error(tmp_path):
    """split_inputs(held_out=nan / "0.2" / 10 / True) raised from numpy or clamped silently, distill(callback=5)
    failed at the first evaluation, Plan.from_json(bytes) and SpeedOptions(timer=5) raised from deep inside."""
    from onnx_alds.distill import split_inputs
    from onnx_alds.inputs import InputSet
    from onnx_alds.options import SpeedOptions
    from onnx_alds.plan import Plan, PlanError, make_plan

    inputs = InputSet({"input": np.arange(10 * 3 * 32 * 32, dtype=np.float32).reshape(10, 3, 32, 32)}, source="t")
    for held_out in (float("nan"), "0.2", 10, True, -3, 0):
        with pytest.raises(InputDataError, match="held_out"):
            split_inputs(inputs, held_out=held_out)
    with pytest.raises(InputDataError, match="seed"):
        split_inputs(inputs, seed=-1)
    assert [len(part) for part in split_inputs(inputs, held_out=0.3)] == [7, 3]
    plan = make_plan(small_cnn(width=16), keep_params=0.6, rank_multiple=8)
    text = json.dumps(plan.to_dict())
    assert Plan.from_json(text.encode()).to_dict() == Plan.from_json(text).to_dict()
    with pytest.raises(PlanError, match="give its JSON text"):
        Plan.from_json(5)
    with pytest.raises(InputDataError, match=r"timer=5 has no identity, time_layers, time_model, time_ratio"):
        SpeedOptions(timer=5)
    pytest.importorskip("torch")
    from onnx_alds.distill import distill

    with pytest.raises(InputDataError, match="callback=5: give a function"):
        distill(small_cnn(width=8), small_cnn(width=8), inputs, callback=5, steps=1)


def test_the_api_writers_do_not_overwrite_a_users_files(tmp_path):
    """save_model, Plan.save and the reports' save_json judge an existing file as the command line does: a
    user's model, data or the input's own external data file is refused and left as it was."""
    from onnx_alds.errors import OutputPathError
    from onnx_alds.model_io import save_model

    source = small_cnn()
    onnx.save(small_cnn(), str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.weights",
              size_threshold=0)
    onnx.save(source, str(tmp_path / "mine.onnx"))
    np.savez(tmp_path / "data.npz", x=np.ones(3))
    users = {name: (tmp_path / name).read_bytes() for name in ("ext.onnx", "ext.weights", "mine.onnx", "data.npz")}
    result = compress(str(tmp_path / "ext.onnx"), keep_params=0.6)
    plan = make_plan(source, keep_params=0.6)
    for write, name in [(lambda p: save_model(result.model, p), "ext.weights"),
                        (lambda p: save_model(result.model, p), "mine.onnx"),
                        (lambda p: save_model(result.model, p), "data.npz"),
                        (result.report.save_json, "data.npz"), (result.report.save_json, "mine.onnx"),
                        (plan.save, "mine.onnx")]:
        with pytest.raises(OutputPathError, match="is an existing .* give another path"):
            write(tmp_path / name)
    assert {name: (tmp_path / name).read_bytes() for name in users} == users
    # earlier outputs of the same kind are replaced; a plain model over a plain model is the caller's to do
    save_model(result.model, tmp_path / "small.onnx")
    save_model(result.model, tmp_path / "small.onnx")
    save_model(source, tmp_path / "mine.onnx")
    plan.save(tmp_path / "plan.json")
    plan.save(tmp_path / "plan.json")
    result.report.save_json(tmp_path / "report.json")
    result.report.save_json(tmp_path / "report.json")
    with pytest.raises(OutputPathError, match="existing onnx-alds plan"):
        result.report.save_json(tmp_path / "plan.json")


def test_an_output_another_tool_changed_is_the_users(tmp_path):
    """A compressed model quantized by ONNX Runtime keeps onnx-alds' metadata: it was taken for an earlier
    output and written over. The graph digest onnx-alds records tells the two apart; a re-save is still ours."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnx_alds.errors import OutputPathError
    from onnx_alds.model_io import existing_file_kind, save_model

    result = compress(small_cnn(), keep_params=0.6)
    save_model(result.model, tmp_path / "small.onnx")
    onnx.save(onnx.load(str(tmp_path / "small.onnx")), str(tmp_path / "resaved.onnx"))
    assert existing_file_kind(tmp_path / "resaved.onnx") == "onnx-alds model"
    quantize_dynamic(str(tmp_path / "small.onnx"), str(tmp_path / "small.int8.onnx"), weight_type=QuantType.QInt8)
    quantized = onnx.load(str(tmp_path / "small.int8.onnx"))
    assert any(entry.key.startswith("onnx_alds.") for entry in quantized.metadata_props)
    before = (tmp_path / "small.int8.onnx").read_bytes()
    with pytest.raises(OutputPathError, match="not an onnx-alds output \\(or was changed by another tool since\\)"):
        save_model(result.model, tmp_path / "small.int8.onnx")
    assert (tmp_path / "small.int8.onnx").read_bytes() == before
    save_model(result.model, tmp_path / "resaved.onnx")  # (an earlier output, re-saved by onnx: replaced)
    # edits that keep the node list: an attribute, the opset, an element type, a node inside a body
    edits = {"alpha": lambda m: next(n for n in m.graph.node if n.op_type == "Gemm").attribute.append(
                 onnx.helper.make_attribute("alpha", 2.0)),
             "opset": lambda m: m.opset_import[0].__setattr__("version", m.opset_import[0].version + 1),
             "output type": lambda m: m.graph.output[0].type.tensor_type.__setattr__("elem_type",
                                                                                   onnx.TensorProto.DOUBLE)}
    for name, change in edits.items():
        edited = onnx.load(str(tmp_path / "small.onnx"))
        change(edited)
        onnx.save(edited, str(tmp_path / "edited.onnx"))
        assert existing_file_kind(tmp_path / "edited.onnx") == "ONNX model", name


def test_a_graph_digest_of_another_rule_is_not_compared():
    """A release that digests graphs by another rule must not take every earlier output for another tool's:
    a digest of another rule version counts by the metadata alone."""
    from onnx_alds.model_io import GRAPH_DIGEST_KEY, is_onnx_alds_output

    model = compress(small_cnn(), keep_params=0.6).model
    entry = next(entry for entry in model.metadata_props if entry.key == GRAPH_DIGEST_KEY)
    assert entry.value.startswith("1:") and is_onnx_alds_output(model)
    entry.value = "1:" + "0" * 40
    assert not is_onnx_alds_output(model)
    entry.value = "99:" + "0" * 40
    assert is_onnx_alds_output(model)


def test_the_graph_digest_follows_functions_and_shape_constants_not_inferred_dims():
    """An edited model-local function and an edited Reshape shape were overwritten as earlier outputs; an
    output's dims filled in by shape inference, or an unused opset import ONNX Runtime adds, were refused."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_alds.model_io import graph_digest

    function = helper.make_function("local", "Act", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                                    [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("Act", ["x"], ["a"], domain="local"), helper.make_node("Reshape", ["a", "shape"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([-1, 2, 2]), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[function])
    digest = graph_digest(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    inferred.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert graph_digest(inferred) == digest
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    edited.functions[0].node[0].op_type = "Sigmoid"
    assert graph_digest(edited) != digest
    edited.CopyFrom(model)
    edited.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([-1, 4, 1]), "shape"))
    assert graph_digest(edited) != digest
