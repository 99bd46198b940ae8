"""What the rewrite keeps of the user's model: every node field, attribute kind, unread initializer, the
state that on-device training binds, and outputs of non-tensor types (the onnx-graphsurgeon round trip)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_alds import compress
from onnx_alds.inputs import InputSet

RANK = 4


def _low_rank(rng, rows: int, cols: int) -> np.ndarray:
    return (rng.standard_normal((rows, RANK)) @ rng.standard_normal((RANK, cols)) / np.sqrt(RANK * cols)).astype(
        np.float32)


def _base(seed: int = 0):
    """X[batch, 16] → Gemm (exactly rank 4) → Relu → MatMul (exactly rank 4) → logits[batch, 8]: every
    compression at rank ≥ 4 reproduces the original."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["X", "W1"], ["h1"], transB=1, name="gemm"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("MatMul", ["h2", "W2"], ["logits"], name="mm")]
    inits = [numpy_helper.from_array(_low_rank(rng, 32, 16), "W1"), numpy_helper.from_array(_low_rank(rng, 32, 8), "W2")]
    return nodes, inits


X = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 16])
LOGITS = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])


def _model(nodes, inits, outputs, *, opset: int = 17, ir: int = 8, **kwargs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [X], outputs, inits, value_info=kwargs.pop("value_info", None))
    imports = [helper.make_opsetid("", opset)] + kwargs.pop("extra_opsets", [])
    model = helper.make_model(graph, opset_imports=imports, ir_version=ir, **kwargs)
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})


def _compress_exactly(model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    result = compress(model, keep_params=0.6, rank_multiple=1, **kwargs)
    assert sum(1 for row in result.report.layers if row.groups) == 2  # both layers rewritten
    onnx.checker.check_model(result.model, full_check=True)
    return result.model


def test_an_untouched_node_keeps_its_overload_doc_string_and_metadata():
    """A node calling overload 'neg' of a model-local function lost its ``overload`` in the round trip: the
    written model called the other overload (2·Relu instead of Neg), exit 0. Doc strings and metadata
    (torch's stack traces) went from every node and value_info entry."""
    plain = helper.make_function("local", "Block", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["t"]),
                                                                  helper.make_node("Add", ["t", "t"], ["y"])],
                                 [helper.make_opsetid("", 17)])
    negate = helper.make_function("local", "Block", ["x"], ["y"], [helper.make_node("Neg", ["x"], ["y"])],
                                  [helper.make_opsetid("", 17)])
    negate.overload = "neg"
    nodes, inits = _base()
    nodes[2].input[0] = "h3"
    nodes.insert(2, helper.make_node("Block", ["h2"], ["h3"], domain="local", name="blk", overload="neg"))
    nodes[1].doc_string = "relu doc"
    helper.set_metadata_props(nodes[1], {"pkg.torch.onnx.stack_trace": "model.py:12"})
    info = helper.make_tensor_value_info("h2", TensorProto.FLOAT, ["batch", 32])
    info.doc_string = "hidden"
    model = _model(nodes, inits, [LOGITS], ir=10, functions=[plain, negate], value_info=[info],
                   extra_opsets=[helper.make_opsetid("local", 1)])
    new = _compress_exactly(model)
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(new, x)[0], _run(model, x)[0], rtol=1e-4, atol=1e-5)
    by_name = {node.name: node for node in new.graph.node}
    assert by_name["blk"].overload == "neg"
    assert by_name["relu"].doc_string == "relu doc"
    assert [(p.key, p.value) for p in by_name["relu"].metadata_props] == [("pkg.torch.onnx.stack_trace", "model.py:12")]
    assert [v.doc_string for v in new.graph.value_info if v.name == "h2"] == ["hidden"]


def test_attributes_graphsurgeon_skips_and_optional_outputs_are_kept():
    """``Optional(type=...)`` lost its TYPE_PROTO attribute (the written model failed the checker: 'a bug in
    onnx-alds'); an optional-typed graph output was an UnboundLocalError traceback in the export."""
    nodes, inits = _base()
    nodes += [helper.make_node("Optional", [], ["empty"], type=helper.make_tensor_type_proto(TensorProto.FLOAT, [8])),
              helper.make_node("OptionalHasElement", ["empty"], ["has"]),
              helper.make_node("Cast", ["has"], ["hasf"], to=TensorProto.FLOAT),
              helper.make_node("Add", ["logits", "hasf"], ["out"]),
              helper.make_node("Optional", ["out"], ["opt"])]
    optional = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", 8]))
    model = _model(nodes, inits, [helper.make_value_info("opt", optional)], opset=18)
    new = _compress_exactly(model)
    assert new.graph.output[0] == model.graph.output[0]
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(new, x)[0], _run(model, x)[0], rtol=1e-4, atol=1e-5)


def test_a_sequence_output_of_tensors_of_different_shapes_is_carried():
    """``SequenceConstruct(logits, h2)`` as an output: every command was a numpy traceback (the run check took
    the list of a [2, 8] and a [2, 32] tensor for one array)."""
    nodes, inits = _base()
    nodes.append(helper.make_node("SequenceConstruct", ["logits", "h2"], ["seq"]))
    sequence = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None))
    model = _model(nodes, inits, [helper.make_value_info("seq", sequence), LOGITS])
    new = _compress_exactly(model)
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    got, want = _run(new, x), _run(model, x)
    assert [item.shape for item in got[0]] == [(2, 8), (2, 32)]
    for a, b in zip(got[0] + [got[1]], want[0] + [want[1]]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_subgraphs_beside_a_model_local_function():
    """An If node and a model-local function in one model: graphsurgeon's function sort recursed forever
    (RecursionError traceback)."""
    act = helper.make_function("local", "Act", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["t"]),
                                                              helper.make_node("Add", ["t", "t"], ["y"])],
                               [helper.make_opsetid("", 17)])
    nodes, inits = _base()
    nodes[1] = helper.make_node("Act", ["h1"], ["h2"], domain="local", name="act")
    then = helper.make_graph([helper.make_node("Neg", ["logits"], ["t_out"])], "then", [],
                             [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["logits"], ["e_out"])], "else", [],
                              [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes.append(helper.make_node("If", ["flag"], ["out"], then_branch=then, else_branch=other, name="if"))
    graph = helper.make_graph(nodes, "g", [X, helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              ir_version=8, functions=[act])
    new = _compress_exactly(model)
    assert [f.name for f in new.functions] == ["Act"]
    x = np.random.default_rng(4).standard_normal((2, 16)).astype(np.float32)
    session = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for flag in (True, False):
        feeds = {"X": x, "flag": np.array(flag)}
        np.testing.assert_allclose(session.run(None, feeds)[0], reference.run(None, feeds)[0], rtol=1e-4, atol=1e-5)


def _training_model(*, bias_trained: bool = False, reinitialized: bool = False) -> onnx.ModelProto:
    """The base model with a Gemm bias B1 and on-device training state: optimizer momentum and a learning
    rate that only ``training_info`` reads, and a class-name table nothing reads."""
    nodes, inits = _base()
    nodes[0].input.append("B1")
    inits += [numpy_helper.from_array(np.full(32, 0.1, np.float32), "B1"),
              numpy_helper.from_array(np.array(0.01, np.float32), "lr"),
              numpy_helper.from_array(np.zeros(32, np.float32), "B1_momentum"),
              numpy_helper.from_array(np.array([b"a", b"b"], dtype=object), "class_names")]
    model = _model(nodes, inits, [LOGITS])
    info = onnx.TrainingInfoProto()
    trained = "B1" if bias_trained else "B1_momentum"
    info.algorithm.CopyFrom(helper.make_graph(
        [helper.make_node("Mul", ["B1_momentum", "lr"], ["step"]), helper.make_node("Sub", [trained, "step"], ["new"])],
        "train", [], [helper.make_tensor_value_info("new", TensorProto.FLOAT, [32])]))
    info.update_binding.add(key=trained, value="new")
    if reinitialized:
        info.initialization.CopyFrom(helper.make_graph(
            [helper.make_node("RandomNormal", [], ["w_init"], shape=[32, 16])], "init", [],
            [helper.make_tensor_value_info("w_init", TensorProto.FLOAT, [32, 16])]))
        info.initialization_binding.add(key="W1", value="w_init")
    model.training_info.append(info)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_initializers_no_node_reads_and_training_state_are_kept():
    """Optimizer state and a learning rate that only ``training_info`` binds, and a table nothing reads,
    were dropped by the export's cleanup whenever a layer was rewritten: the bindings dangled."""
    model = _training_model()
    new = _compress_exactly(model)
    names = {init.name for init in new.graph.initializer}
    assert {"lr", "B1_momentum", "class_names", "B1"} <= names
    assert new.training_info[0] == model.training_info[0]


@pytest.mark.parametrize("options", [{}, {"bias_correction": True}, {"prune": "only"}])
def test_a_layer_whose_bias_or_weight_training_binds_is_left_as_it_is(options):
    """``--bias-correction`` replaced a bias that ``training_info`` updates and ``--prune`` sliced it (the binding
    named a tensor the model no longer had); a weight re-initialized by ``initialization_binding`` was
    factorized away. Such layers and blocks stay dense, with the reason."""
    from onnx_alds.errors import BudgetError, UnsupportedModelError

    calibration = InputSet({"X": np.random.default_rng(5).standard_normal((64, 16)).astype(np.float32)})
    for model, reason in ((_training_model(bias_trained=True), "bias is trained on device"),
                          (_training_model(reinitialized=True), "weight is trained on device")):
        if options.get("prune"):
            with pytest.raises(UnsupportedModelError, match="trained on device"):
                compress(model, keep_params=0.9, rank_multiple=1, calibration=calibration, **options)
            continue
        result = compress(model, keep_params=0.9, rank_multiple=1, calibration=calibration, **options)
        gemm = next(row for row in result.report.layers if row.name == "gemm")
        assert not gemm.groups and reason in (gemm.skip_reason or "")
        names = {init.name for init in result.model.graph.initializer}
        assert {"B1", "W1"} <= names
        with pytest.raises(BudgetError):
            compress(model, keep_params=0.3, rank_multiple=1, calibration=calibration, **options)


def test_graphsurgeon_warnings_stay_off_standard_output(capsys):
    """A ZipMap output made onnx-graphsurgeon print '[W] ...' lines on stdout, into the report."""
    nodes, inits = _base()
    nodes += [helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
              helper.make_node("ZipMap", ["prob"], ["zm"], domain="ai.onnx.ml", classlabels_int64s=list(range(8)))]
    zipped = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    model = _model(nodes, inits, [helper.make_value_info("zm", zipped)], extra_opsets=[helper.make_opsetid("ai.onnx.ml", 3)])
    capsys.readouterr()
    _compress_exactly(model)
    captured = capsys.readouterr()
    assert "[W]" not in captured.out and "[W]" not in captured.err


def test_every_node_not_replaced_is_written_byte_for_byte_as_it_was():
    """Kept nodes gained explicit empty doc_string/overload fields, and a Constant's unnamed tensor a name
    (onnx-graphsurgeon names it, in the model it reads too): 112 of 327 nodes of a BERT export differed."""
    nodes, inits = _base()
    value = numpy_helper.from_array(np.float32(2.0))
    value.ClearField("name")
    nodes[2].output[0] = "m"
    nodes += [helper.make_node("Constant", [], ["two"], name="const", value=value),
              helper.make_node("Mul", ["m", "two"], ["logits"], name="mul")]
    model = _model(nodes, inits, [LOGITS])
    before = model.SerializeToString()
    new = _compress_exactly(model)
    assert model.SerializeToString() == before  # the caller's model is left as it was
    written = {node.name: node.SerializeToString() for node in new.graph.node}
    for node in model.graph.node:
        if node.name not in ("gemm", "mm"):
            assert written[node.name] == node.SerializeToString(), node.name


@pytest.mark.parametrize("prune", [False, True], ids=["low-rank", "prune"])
def test_unnamed_and_repeated_node_names_are_written_as_they_were(prune):
    """The names given to unnamed nodes (Relu_1) and to a repeated one (relu_1) for the layers, plans and reports
    were written into the user's model."""
    nodes, inits = _base()
    nodes[1].name = ""
    extra = [helper.make_node("Relu", ["logits0"], ["r2"], name="relu"),  # the name of another node again
             helper.make_node("Identity", ["r2"], ["logits"])]  # no name
    nodes[2].output[0] = "logits0"
    model = _model(nodes + extra, inits, [LOGITS])
    if prune:
        x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
        new = compress(model, keep_params=0.8, rank_multiple=1, prune="only", calibration=InputSet({"X": x})).model
    else:
        new = _compress_exactly(model)
    kept = [(node.op_type, node.name) for node in new.graph.node if node.op_type in ("Relu", "Identity")]
    assert kept == [("Relu", ""), ("Relu", "relu"), ("Identity", "")]
