"""Large models: weights read on demand, one layer at a time, no whole-model copies; the same bytes out.

The models here are small (a few MB, built by ``tools/build_large_model.py`` with external data) so
that the tests are fast; what is checked is the path a 2 GB model takes: the API and the CLI open a
model given by path without loading its external data, read each weight when its layer needs it,
and write the output tensor by tensor, with exactly the bytes the whole-model path writes.
``python tools/bench_memory.py`` measures the peak memory on real sizes (docs/LARGE_MODELS.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_alds
import onnx_alds.bench  # noqa: F401  (bound to the real load_model before any test patches it away)
import onnx_alds.model_io as model_io
import onnx_alds.validate  # noqa: F401
from conftest import random_feeds, run_model, small_cnn
from onnx_alds.cli import main
from onnx_alds.decompose import _argmax_magnitude, decompose
from onnx_alds.model_io import TensorStore, load_model, materialize, model_bytes, open_model, save_model

ROOT = Path(__file__).resolve().parents[1]


def _builder():
    spec = importlib.util.spec_from_file_location("build_large_model_under_test",
                                                  ROOT / "tools" / "build_large_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def chain_path(tmp_path) -> Path:
    """An 8 MB MatMul/Gemm chain (4 layers of 512x1024 float32) with its weights in ``chain.onnx.data``."""
    path = tmp_path / "chain.onnx"
    info = _builder().build(path, layers=4, dim=512, hidden=1024, core=32, noise=0.05, seed=0, quiet=True)
    assert info["bytes"] > 8e6
    return path


def _refuse_whole_model_loads(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the whole model was loaded")

    monkeypatch.setattr(onnx, "load_external_data_for_model", refuse)
    monkeypatch.setattr(model_io, "load_model", refuse)


def test_the_builder_writes_a_valid_chain_with_external_data(chain_path):
    model = onnx.load(str(chain_path), load_external_data=False)
    assert [node.op_type for node in model.graph.node] == ["MatMul", "Gemm", "Gemm", "MatMul"]
    weights = [t for t in model.graph.initializer if t.name.endswith(".weight")]
    assert all(t.data_location == TensorProto.EXTERNAL for t in weights)
    onnx.checker.check_model(str(chain_path), full_check=True)
    full = onnx.load(str(chain_path))
    x = np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)
    assert run_model(full, {"x": x})[0].shape == (2, 512)


def test_open_model_leaves_the_weights_on_disk(chain_path):
    opened = open_model(chain_path)
    data_bytes = (chain_path.parent / "chain.onnx.data").stat().st_size
    assert opened.model.ByteSize() < data_bytes / 100  # the light model holds no weight
    weights = [t for t in opened.model.graph.initializer if t.name.endswith(".weight")]
    assert weights and all(t.data_location == TensorProto.EXTERNAL for t in weights)
    assert abs(model_bytes(opened.model, opened.store) - load_model(chain_path).ByteSize()) < 1024
    full = {t.name: numpy_helper.to_array(t) for t in load_model(chain_path).graph.initializer}
    for tensor in weights:
        assert np.array_equal(opened.store.array(tensor), full[tensor.name])


def test_api_given_a_path_reads_one_weight_at_a_time(chain_path, monkeypatch):
    reads: list[str] = []
    array = TensorStore.array

    def counted(self, tensor):
        reads.append(tensor.name)
        return array(self, tensor)

    _refuse_whole_model_loads(monkeypatch)
    monkeypatch.setattr(TensorStore, "array", counted)
    result = onnx_alds.compress(str(chain_path), keep_params=0.5)
    assert result.store is None, "the API returns a complete model"
    assert sum(row.groups > 0 for row in result.report.layers) >= 2
    assert len(reads) >= 3 * 2 and all(name.endswith(".weight") for name in reads)  # layers, spectra, factors
    monkeypatch.undo()
    loaded = onnx_alds.compress(load_model(chain_path), keep_params=0.5).model  # the whole-model way
    assert result.model.SerializeToString() == loaded.SerializeToString()
    feeds = random_feeds(loaded, shapes={"x": (2, 512)})
    assert run_model(result.model, feeds)[0].shape == (2, 512)


def test_cli_writes_the_bytes_the_api_writes(chain_path, tmp_path, monkeypatch, capsys):
    reference = onnx_alds.compress(load_model(chain_path), keep_params=0.5, rank_multiple=16).model
    expected = save_model(reference, tmp_path / "expected.onnx").read_bytes()
    _refuse_whole_model_loads(monkeypatch)
    out = tmp_path / "out.onnx"
    assert main(["compress", str(chain_path), "-o", str(out), "--keep-params", "0.5", "--rank-multiple", "16"]) == 0
    assert out.read_bytes() == expected
    assert (chain_path.parent / "chain.onnx.data").exists() and not list(tmp_path.glob(".onnx-alds-*"))


def test_light_result_saves_like_the_complete_one(chain_path, tmp_path):
    options = dict(keep_params=0.8, exclude=["/layer0/*"])  # a dense layer and factorized ones
    light = onnx_alds.compress(open_model(chain_path), **options)
    assert light.store is not None and model_io.has_stubs(light.model), "dense layers stay on disk"
    complete = onnx_alds.compress(str(chain_path), **options)
    assert any(row.groups for row in complete.report.layers)
    for external in (False, True):
        folders = [tmp_path / f"{kind}{external}" for kind in ("light", "complete")]
        for folder in folders:
            folder.mkdir()
        a = save_model(light.model, folders[0] / "out.onnx", external_data=external, store=light.store)
        b = save_model(complete.model, folders[1] / "out.onnx", external_data=external)
        assert a.read_bytes() == b.read_bytes()
        assert sorted(p.name for p in folders[0].iterdir()) == sorted(p.name for p in folders[1].iterdir())
        if external:
            assert (folders[0] / "out.onnx.data").read_bytes() == (folders[1] / "out.onnx.data").read_bytes()
    assert materialize(light.model, light.store).SerializeToString() == complete.model.SerializeToString()


def test_a_light_result_read_from_a_file_is_refused_without_its_store(chain_path, tmp_path):
    """Its dense weights still read the input's data file: save_model without store= wrote a model naming
    'chain.onnx.data' beside the output (no such file; the checker refused it), and materialize(model, None)
    left them stubs."""
    light = onnx_alds.compress(open_model(chain_path), keep_params=0.8, exclude=["/layer0/*"])
    (tmp_path / "out").mkdir()
    with pytest.raises(model_io.ModelLoadError, match=r"holds no data of its own \(it reads 'chain.onnx.data'.*"
                                                      r"give store=result.store"):
        save_model(light.model, tmp_path / "out" / "small.onnx")
    assert not list((tmp_path / "out").iterdir())
    with pytest.raises(model_io.ModelLoadError, match="holds no data of its own"):
        materialize(light.model, None)
    save_model(light.model, tmp_path / "out" / "small.onnx", store=light.store)
    onnx.checker.check_model(str(tmp_path / "out" / "small.onnx"), full_check=True)
    # a model read without its external data, saved beside that data (as onnx.save would): written as it is
    stubs = onnx.load(str(chain_path), load_external_data=False)
    save_model(stubs, chain_path.parent / "beside.onnx")
    onnx.checker.check_model(str(chain_path.parent / "beside.onnx"), full_check=True)


def test_a_functions_constant_in_external_data_is_read_with_the_model(tmp_path):
    """A Constant of a model-local function (one with no layer, so not inlined) stored in the data file kept
    pointing at it: the written model failed onnx.checker ("this is a bug in onnx-alds", nothing written)."""
    rng = np.random.default_rng(0)
    add_c = helper.make_function("local", "AddC", ["x"], ["y"], [
        helper.make_node("Constant", [], ["C"], value=numpy_helper.from_array(
            rng.standard_normal((4, 256)).astype(np.float32), "C")),
        helper.make_node("Add", ["x", "C"], ["y"])], opset_imports=[helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W0"], ["a"], name="mm0"),
         helper.make_node("AddC", ["a"], ["b"], domain="local"),
         helper.make_node("MatMul", ["b", "W1"], ["y"], name="mm1")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
        [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
         for name, shape in (("W0", (128, 256)), ("W1", (256, 64)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[add_c])
    # every tensor of 1 kB or more in m.onnx.data, the function's Constant too (as onnx's own converter writes it)
    onnx.external_data_helper.convert_model_to_external_data(model, location="m.onnx.data", size_threshold=1024,
                                                             convert_attribute=True)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    stored = onnx.load(str(path), load_external_data=False).functions[0].node[0].attribute[0].t
    assert stored.data_location == TensorProto.EXTERNAL
    result = onnx_alds.compress(str(path), keep_params=0.6, rank_multiple=1)
    (tmp_path / "out").mkdir()  # (elsewhere: the data file is not beside it)
    out = save_model(result.model, tmp_path / "out" / "o.onnx", store=result.store)
    onnx.checker.check_model(str(out), full_check=True)
    written = onnx.load(str(out)).functions[0].node[0].attribute[0].t
    np.testing.assert_array_equal(numpy_helper.to_array(written),
                                  numpy_helper.to_array(add_c.node[0].attribute[0].t))
    assert run_model(onnx.load(str(out)), random_feeds(onnx.load(str(path))))[0].shape == (4, 64)


def _big_cnn() -> onnx.ModelProto:
    model = small_cnn(width=32)  # conv weights above 4096 elements: held by reference in the light model
    model.graph.node.append(helper.make_node(
        "Constant", [], ["unused_constant"], value=numpy_helper.from_array(np.ones((80, 80), np.float32), "c")))
    return model


@pytest.mark.parametrize("external", [False, True])
def test_saving_leaves_the_model_unchanged_and_writes_what_onnx_writes(tmp_path, external):
    model = _big_cnn()
    before = model.SerializeToString()
    ours = save_model(model, tmp_path / "ours.onnx", external_data=external)
    assert model.SerializeToString() == before, "save_model must not modify the caller's model"
    reference = tmp_path / "ref" / "ours.onnx"
    reference.parent.mkdir()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if external:
        onnx.save_model(copy, str(reference), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="ours.onnx.data", size_threshold=1024)
        assert (tmp_path / "ours.onnx.data").read_bytes() == (reference.parent / "ours.onnx.data").read_bytes()
    else:
        onnx.save_model(copy, str(reference))
    assert ours.read_bytes() == reference.read_bytes()


def test_streamed_single_file_is_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "_STREAM_BYTES", 0)  # written piece by piece even though small
    model = _big_cnn()
    assert save_model(model, tmp_path / "a.onnx").read_bytes() == model.SerializeToString()
    opened = open_model(model)  # in-memory stubs, written from the caller's tensors
    assert save_model(opened.model, tmp_path / "b.onnx", store=opened.store).read_bytes() == model.SerializeToString()


def test_api_given_a_proto_neither_copies_nor_modifies_it():
    model = _big_cnn()
    before = model.SerializeToString()
    opened = open_model(model)
    assert opened.model.ByteSize() < model.ByteSize() / 10  # stubs for the weights, no copy
    result = onnx_alds.compress(model, keep_params=0.5)
    assert model.SerializeToString() == before
    assert not model_io.has_stubs(result.model)
    onnx.checker.check_model(result.model, full_check=True)


def test_checks_run_on_a_light_copy_and_still_catch_a_bad_graph(chain_path):
    from onnx_alds.checks import check_input_model
    from onnx_alds.errors import ModelLoadError

    opened = open_model(chain_path)
    check_input_model(opened.model, opened.store)  # valid: checked without reading the weights
    opened.model.graph.node[1].input[0] = "nowhere"
    with pytest.raises(ModelLoadError, match="not valid ONNX|inconsistent|ONNX Runtime"):
        check_input_model(opened.model, opened.store)


def test_decomposition_memory_savings_keep_the_numbers():
    rng = np.random.default_rng(3)
    for _ in range(100):
        x = rng.integers(-3, 4, size=(9, 6)).astype(np.float64)
        assert np.array_equal(_argmax_magnitude(x), np.argmax(np.abs(x), axis=0))
    tall = rng.standard_normal((300, 80))  # right vectors: the induced left ones are reused
    factors = decompose(tall.T.copy().T, 1, 80)
    np.testing.assert_allclose(factors.dense(), tall, atol=1e-9)
    assert factors.encoder.flags.c_contiguous and factors.decoder.flags.c_contiguous


def test_writing_over_a_copy_of_the_input_keeps_the_inputs_data_file(chain_path, tmp_path, capsys):
    """``cp chain.onnx orig.onnx; compress orig.onnx -o chain.onnx``: the output was written over a model whose
    ``chain.onnx.data`` it took for its own old weights and deleted, though the input ``orig.onnx`` reads them."""
    import shutil

    original = tmp_path / "orig.onnx"
    data = chain_path.parent / "chain.onnx.data"
    before = data.read_bytes()
    shutil.copy(chain_path, original)  # a user's own model at -o: refused, nothing written
    assert main(["compress", str(original), "-o", str(chain_path), "--keep-params", "0.5", "-q"]) == 1
    assert "is an existing ONNX model that is not an onnx-alds output" in capsys.readouterr().err
    proto = onnx.load(str(chain_path), load_external_data=False)  # an earlier onnx-alds output there: replaced
    onnx.helper.set_model_props(proto, {"onnx_alds.version": "0"})
    onnx.save(proto, str(chain_path))  # (its weights stay in chain.onnx.data)
    shutil.copy(chain_path, original)
    assert main(["compress", str(original), "-o", str(chain_path), "--keep-params", "0.5", "-q"]) == 0
    assert data.read_bytes() == before
    onnx.checker.check_model(str(original), full_check=True)  # the input still loads with its weights


def test_an_unrelated_data_file_at_the_outputs_data_name_is_not_written_over(tmp_path):
    """A model written with external data put its weights in ``<-o name>.data`` over a file of that name that
    another model read (exit 0, the other model broken); the output written over earlier is still replaced."""
    from onnx_alds.errors import OutputPathError

    model = small_cnn()
    other = tmp_path / "other.onnx"
    onnx.save(small_cnn(), str(other), save_as_external_data=True, location="out.onnx.data", size_threshold=0)
    before = (tmp_path / "out.onnx.data").read_bytes()  # (onnx.save turned the model it saved into stubs)
    with pytest.raises(OutputPathError, match="which exists and is not the data of '.*out.onnx'"):
        save_model(model, tmp_path / "out.onnx", external_data=True)
    assert (tmp_path / "out.onnx.data").read_bytes() == before and not (tmp_path / "out.onnx").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.onnx", "out.onnx.data"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    save_model(model, fresh / "out.onnx", external_data=True)  # its own earlier output: written over
    save_model(small_cnn(seed=1), fresh / "out.onnx", external_data=True)
    onnx.checker.check_model(str(fresh / "out.onnx"), full_check=True)


def test_an_opened_model_passed_in_is_left_as_it_was(chain_path):
    """compress(opened) named the opened model's unnamed nodes and, with calibration, loaded its weights in place:
    a second call on the same object wrote another model, and the caller's light model held every weight."""
    from onnx_alds.inputs import InputSet

    model = onnx.load(str(chain_path))
    for node in model.graph.node:
        node.name = ""
    path = chain_path.parent / "unnamed.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="unnamed.onnx.data")
    opened = open_model(path)
    before = opened.model.SerializeToString()
    first = onnx_alds.compress(opened, keep_params=0.5).model.SerializeToString()
    assert opened.model.SerializeToString() == before
    assert onnx_alds.compress(opened, keep_params=0.5).model.SerializeToString() == first
    x = np.random.default_rng(0).standard_normal((16, 512)).astype(np.float32)
    onnx_alds.compress(opened, keep_params=0.5, calibration=InputSet({"x": x}))
    assert opened.model.SerializeToString() == before  # still light: no weight loaded into it
