"""Patterns that real exporters produce: each is compressed correctly or refused with one clear line.

Every model is built here with exactly low-rank weights, so a factorization at or above that rank
reproduces the original: outputs must agree with the original's in ONNX Runtime to float32 rounding
(rtol 1e-5 on the output's scale), not merely "run".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_alds
from onnx_alds.cli import main
from onnx_alds.errors import BudgetError, ModelLoadError, OnnxAldsError, UnsupportedModelError

ort = pytest.importorskip("onnxruntime")

RTOL = 1e-5  # float32 rounding of a sum of a few hundred products, relative to the output's scale


def low_rank(rng: np.random.Generator, rows: int, cols: int, rank: int = 2) -> np.ndarray:
    return (rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols)) / np.sqrt(cols)).astype(np.float32)


def make(nodes, inputs, outputs, inits, *, opset: int = 17, ir: int = 8, **fields) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)], **fields)
    model.ir_version = ir
    return model


def vector_model(nodes, weights, rng, **fields) -> onnx.ModelProto:
    """``x [4, 64]`` → ``y [4, 64]`` through ``nodes``; each name in ``weights`` a 64x64 low-rank initializer."""
    return make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
                [numpy_helper.from_array(low_rank(rng, 64, 64), name) for name in weights], **fields)


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_outputs(original: onnx.ModelProto, compressed: onnx.ModelProto, feeds: dict) -> None:
    onnx.checker.check_model(compressed, full_check=True)
    for before, after in zip(run(original, feeds), run(compressed, feeds)):
        scale = float(np.max(np.abs(before))) or 1.0
        np.testing.assert_allclose(after, before, rtol=0, atol=RTOL * scale * 10)


def factorized(result) -> list[str]:
    return [row.name for row in result.report.layers if row.groups]


def conv_relu_conv(rng, *, batch=1, names=("/conv1/Conv", "/conv2/Conv")) -> onnx.ModelProto:
    w1 = low_rank(rng, 32, 16 * 9, 4).reshape(32, 16, 3, 3)
    w2 = low_rank(rng, 32, 32 * 9, 4).reshape(32, 32, 3, 3)
    nodes = [helper.make_node("Conv", ["x", "conv1.weight"], ["h"], pads=[1] * 4, name=names[0]),
             helper.make_node("Relu", ["h"], ["r"], name="/relu/Relu"),
             helper.make_node("Conv", ["r", "conv2.weight"], ["y"], pads=[1] * 4, name=names[1])]
    return make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16, 10, 10])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 32, 10, 10])],
                [numpy_helper.from_array(w1, "conv1.weight"), numpy_helper.from_array(w2, "conv2.weight")])


def test_recompressing_a_compressed_model_keeps_every_name_unique():
    rng = np.random.default_rng(0)
    model = conv_relu_conv(rng)
    once = onnx_alds.compress(model, keep_params=0.5).model
    twice = onnx_alds.compress(once, keep_params=0.5)
    names = [n.name for n in twice.model.graph.node] + [i.name for i in twice.model.graph.initializer]
    outputs = [o for n in twice.model.graph.node for o in n.output]
    assert len(names) == len(set(names)) and len(outputs) == len(set(outputs))
    assert len(factorized(twice)) >= 1
    assert_same_outputs(model, twice.model, {"x": rng.standard_normal((1, 16, 10, 10)).astype(np.float32)})


def test_ir3_model_lists_new_initializers_as_graph_inputs():
    rng = np.random.default_rng(1)
    w = low_rank(rng, 16, 8 * 9).reshape(16, 8, 3, 3)
    g = low_rank(rng, 10, 16 * 36)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(16, np.float32), "b"),
             numpy_helper.from_array(g, "G"), numpy_helper.from_array(np.zeros(10, np.float32), "gb")]
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "G", "gb"], ["y"], transB=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])] + [
        helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    model = make(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits, opset=8, ir=3)
    result = onnx_alds.compress(model, keep_params=0.5)
    listed = {v.name for v in result.model.graph.input}
    assert result.model.ir_version == 3
    assert {t.name for t in result.model.graph.initializer} <= listed
    assert factorized(result)
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32)})
    # the spec reads IR 3's initializer inputs as overridable; the note says they were read as constants
    note = [n for n in result.report.notes if n.startswith("IR version 3 lists every initializer as a graph input")]
    replaced = [name for name in ("W", "G") if name not in listed]
    assert replaced and note and f"first: '{replaced[0]}'" in note[0]


def test_ir3_note_counts_weights_folded_through_a_cast_chain():
    rng = np.random.default_rng(2)
    w16, w2 = low_rank(rng, 32, 32).astype(np.float16), low_rank(rng, 32, 32)
    inits = [numpy_helper.from_array(w16, "W"), numpy_helper.from_array(w2, "W2")]
    nodes = [helper.make_node("Cast", ["W"], ["Wf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "Wf"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])] + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    model = make(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], inits, opset=8, ir=3)
    result = onnx_alds.compress(model, keep_params=0.5)
    listed = {v.name for v in result.model.graph.input}
    assert len(factorized(result)) == 2 and not {"W", "W2"} & listed
    note = [n for n in result.report.notes if n.startswith("IR version 3 lists every initializer")]
    assert note and "the inputs of the 2 replaced weights" in note[0]


def test_a_weight_cast_through_int4_is_folded_as_onnx_runtime_computes_it():
    """float -> Cast(INT4) -> Cast(FLOAT): onnx's reference evaluator truncates and saturates (2.7 -> 2,
    9.2 -> 7), ONNX Runtime rounds and wraps (3, -7). The chain was folded by the evaluator: the factors
    approximated a weight the model never computes with (output error 0.41, reported error as if 0.5 of
    another matrix)."""
    rng = np.random.default_rng(4)
    weight = rng.uniform(-10, 10, (32, 32)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["Ws"], ["Wi"], to=TensorProto.INT4),
             helper.make_node("Cast", ["Wi"], ["W"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
                 [numpy_helper.from_array(weight, "Ws")], opset=21, ir=10)
    eye = {"x": np.eye(32, dtype=np.float32)}
    computed = run(model, eye)[0].astype(np.float64)  # the weight ONNX Runtime multiplies by
    result = onnx_alds.compress(model, keep_params=0.9, rank_multiple=1, method="svd")
    [layer] = [row for row in result.report.layers if row.rank]
    u, s, vt = np.linalg.svd(computed)
    best = (u[:, :layer.rank] * s[:layer.rank]) @ vt[:layer.rank]
    np.testing.assert_allclose(run(result.model, eye)[0], best, atol=1e-4)


def test_a_model_of_einsum_layers_only_says_so_when_nothing_is_compressed():
    """Every linear layer an Einsum with a constant weight: the error said only "0 Conv/Gemm/MatMul nodes ... (the
    model has no Conv, Gemm or MatMul with a weight)", though analyze named the Einsum nodes."""
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Einsum", ["x", "W"], ["h"], equation="bi,io->bo", name="e1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Einsum", ["r", "K"], ["y"], equation="bi,io->bo", name="e2")]
    model = vector_model(nodes, ["W", "K"], rng)
    with pytest.raises(UnsupportedModelError, match=r"nothing to compress: no Conv/Gemm/MatMul node; 2 Einsum nodes "
                                                    r"with a constant operand \(first: 'e1'\)"):
        onnx_alds.compress(model, keep_params=0.5)


def test_quantization_annotations_of_factorized_weights_go_with_a_note():
    rng = np.random.default_rng(3)
    model = vector_model([helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
                          helper.make_node("MatMul", ["r", "K"], ["y"], name="mm2")], ["W", "K"], rng)
    for name in ("W", "h"):
        annotation = model.graph.quantization_annotation.add(tensor_name=name)
        annotation.quant_parameter_tensor_names.add(key="SCALE_TENSOR", value="s")
    result = onnx_alds.compress(model, keep_params=0.75, exclude=["mm2"])
    assert factorized(result) == ["mm1"]
    kept = [annotation.tensor_name for annotation in result.model.graph.quantization_annotation]
    assert kept == ["h"]  # the activation's annotation stays; the factorized weight's has nothing to describe
    note = [n for n in result.report.notes if "quantization annotations" in n]
    assert note and note[0].startswith("1 quantization annotations of the graph (first: 'W')")


def if_model(rng) -> onnx.ModelProto:
    def branch(name: str) -> onnx.GraphProto:
        node = helper.make_node("Conv", ["c", f"{name}.weight"], [f"{name}_y"], kernel_shape=[3, 3], pads=[1] * 4,
                                name=f"{name}/Conv")
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT,
                                                                                 [1, 32, 6, 6])])
    inits = [numpy_helper.from_array(low_rank(rng, 32, 72).reshape(32, 8, 3, 3), "stem.weight"),
             numpy_helper.from_array(low_rank(rng, 32, 288).reshape(32, 32, 3, 3), "then.weight"),
             numpy_helper.from_array(low_rank(rng, 32, 288).reshape(32, 32, 3, 3), "else.weight"),
             numpy_helper.from_array(low_rank(rng, 32, 16), "fc.weight"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["x", "stem.weight"], ["c"], kernel_shape=[3, 3], pads=[1] * 4, name="stem/Conv"),
             helper.make_node("If", ["cond"], ["b"], then_branch=branch("then"), else_branch=branch("else"), name="If_0"),
             helper.make_node("ReduceMean", ["b", "axes"], ["p"], keepdims=0),
             helper.make_node("MatMul", ["p", "fc.weight"], ["out"], name="fc/MatMul")]
    return make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6]),
                        helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16]),
                 helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 32, 6, 6])], inits, opset=18)


def test_layers_inside_if_branches_are_found_counted_and_compressed():
    rng = np.random.default_rng(2)
    model = if_model(rng)
    analysis = onnx_alds.analyze(model)
    by_name = {row.name: row for row in analysis.layers}
    assert {"then/Conv", "else/Conv"} <= set(by_name) and by_name["then/Conv"].macs == 32 * 32 * 9 * 36
    result = onnx_alds.compress(model, keep_flops=0.5)
    assert {"then/Conv", "else/Conv"} <= set(factorized(result))
    # the reported ratio is the model's: recount the MACs of every Conv/MatMul in the written model
    assert result.report.macs_before == 32 * 8 * 9 * 36 + 2 * 32 * 32 * 9 * 36 + 32 * 16
    assert result.report.achieved == pytest.approx(result.report.macs_after / result.report.macs_before)
    assert result.report.achieved <= 0.5 * 1.01
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    for cond in (True, False):
        assert_same_outputs(model, result.model, {"x": x, "cond": np.array(cond)})


def test_layers_inside_model_local_functions_are_inlined_and_compressed():
    rng = np.random.default_rng(3)
    function = helper.make_function("local", "Block", ["inp", "w"], ["out"],
                                    [helper.make_node("MatMul", ["inp", "w"], ["m"]),
                                     helper.make_node("Relu", ["m"], ["out"])],
                                    opset_imports=[helper.make_opsetid("", 17)])
    w = low_rank(rng, 64, 64)
    nodes = [helper.make_node("Block", ["x", "w"], ["y"], domain="local", name="block")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], [numpy_helper.from_array(w, "w")],
                 functions=[function])
    model.opset_import.append(helper.make_opsetid("local", 1))
    result = onnx_alds.compress(model, keep_params=0.5)
    assert factorized(result) and any("inlined" in note for note in result.report.notes)
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 64)).astype(np.float32)})


def _sibling_weights_model(rng, *, dead: bool) -> onnx.ModelProto:
    """Two If branches that each define their own ``W`` (legal: sibling scopes). ``dead``: the else branch's
    ``W`` is junk no node reads and the then branch's Conv reads its exactly rank-2 ``W``; otherwise both
    branches' Convs read their own (different) ``W``."""
    def branch(name: str, weight: np.ndarray, read: str) -> onnx.GraphProto:
        node = helper.make_node("Conv", ["x", read], [f"{name}_y"], kernel_shape=[3, 3], pads=[1] * 4,
                                name=f"{name}/Conv")
        inits = [numpy_helper.from_array(weight, "W")]
        if read != "W":
            inits.append(numpy_helper.from_array(low_rank(rng, 16, 72).reshape(16, 8, 3, 3), read))
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT,
                                                                                  [1, 16, 6, 6])], inits)
    rank2 = low_rank(rng, 16, 72).reshape(16, 8, 3, 3)
    junk = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    then = branch("then", rank2, "W")
    other = branch("else", junk, "V" if dead else "W")
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="If_0")]
    return make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6]),
                        helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])], [], opset=18)


@pytest.mark.parametrize("dead", [True, False], ids=["junk-in-the-other-branch", "both-branches-read-their-own"])
def test_a_weight_name_two_sibling_subgraphs_define_is_never_read_from_the_wrong_one(dead):
    """The then branch's Conv was factorized from the else branch's ``W`` (first definition by name): a
    rank-2 weight reported error 0.43 and the written model's output moved by 100 %, exit 0. With both
    branches' Convs on their own ``W`` the layers were called "shared by 2 uses"."""
    rng = np.random.default_rng(12)
    model = _sibling_weights_model(rng, dead=dead)
    onnx.checker.check_model(model, full_check=True)
    rows = {row.name: row for row in onnx_alds.analyze(model).layers}
    reading_w = ["then/Conv"] + ([] if dead else ["else/Conv"])
    assert all("'W' (what its weight is read from) is defined in more than one subgraph" in rows[name].skip_reason
               for name in reading_w)
    if not dead:
        with pytest.raises(UnsupportedModelError, match="defined in more than one subgraph"):
            onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)
        return
    result = onnx_alds.compress(model, keep_params=0.75, rank_multiple=1)  # the else branch's own V only
    assert factorized(result) == ["else/Conv"]
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    for cond in (True, False):
        assert_same_outputs(model, result.model, {"x": x, "cond": np.array(cond)})


def _linear_function_of_opset_13(rng) -> onnx.FunctionProto:
    """``local::Lin``: a MatMul by a 64x64 low-rank Constant, importing ai.onnx 13 (the models import 17)."""
    return helper.make_function("local", "Lin", ["inp"], ["out"],
                                [helper.make_node("Constant", [], ["w"],
                                                  value=numpy_helper.from_array(low_rank(rng, 64, 64), "w")),
                                 helper.make_node("MatMul", ["inp", "w"], ["out"])],
                                opset_imports=[helper.make_opsetid("", 13)])


def test_function_importing_another_opset_is_converted_and_inlined():
    """onnx's inliner skips such a function unless asked to convert it: its 64x64 MatMul was neither a layer
    nor in the totals ("4.10k weights" for 8.19k), and the report said it was inlined."""
    rng = np.random.default_rng(13)
    function = _linear_function_of_opset_13(rng)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"], name="first"),
             helper.make_node("Lin", ["a"], ["y"], domain="local", name="lin")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
                 [numpy_helper.from_array(low_rank(rng, 64, 64), "w0")], functions=[function])
    model.opset_import.append(helper.make_opsetid("local", 1))
    result = onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)
    assert result.report.params_before == 2 * 64 * 64 and len(factorized(result)) == 2
    assert not result.model.functions
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 64)).astype(np.float32)})


def test_function_of_another_opset_whose_call_output_has_no_type_is_inlined():
    """The inliner converts a function's opset only when its call's output has a type: an untyped intermediate
    (no value_info, as hand-built graphs and some exporters leave it) failed with "cannot inline the model's
    local functions (... Type unknown for h)". The types are inferred on a copy; the graph gains no value_info."""
    rng = np.random.default_rng(15)
    function = _linear_function_of_opset_13(rng)
    nodes = [helper.make_node("Lin", ["x"], ["h"], domain="local", name="lin"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], [], functions=[function])
    model.opset_import.append(helper.make_opsetid("local", 1))
    result = onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)
    assert len(factorized(result)) == 1 and not result.model.functions
    assert not result.model.graph.value_info
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 64)).astype(np.float32)})


def test_weight_values_whose_products_overflow_float64_stay_dense():
    """A float64 weight holding 1.9e282 (finite) overflowed its Gram matrix: LinAlgError from the eigensolver."""
    rng = np.random.default_rng(14)
    huge = low_rank(rng, 32, 32).astype(np.float64)
    huge[3, 5] = 1.9e282
    nodes = [helper.make_node("MatMul", ["x", "huge"], ["a"], name="huge/MatMul"),
             helper.make_node("MatMul", ["a", "fine"], ["y"], name="fine/MatMul")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [4, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [4, 32])],
                 [numpy_helper.from_array(huge, "huge"),
                  numpy_helper.from_array(low_rank(rng, 32, 32).astype(np.float64), "fine")])
    result = onnx_alds.compress(model, keep_params=0.75, rank_multiple=1)
    rows = {row.name: row for row in result.report.layers}
    assert "too large to factorize in float64" in rows["huge/MatMul"].skip_reason
    assert factorized(result) == ["fine/MatMul"]


@pytest.mark.parametrize("declared, ir", [(False, 8), (True, 8), (True, 3)],
                         ids=["unused", "unused-overridable-input", "unused-ir3"])
def test_unused_initializers_do_not_stop_the_tool(declared, ir):
    """An initializer no node reads, larger than what is handed to ONNX Runtime in memory: ORT drops it and
    then refused the hand-over ("Failed to find existing initializer"). Declared as a graph input (an
    overridable default), the rewrite's cleanup dropped it and the output check called that a bug."""
    rng = np.random.default_rng(6)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])]
    if declared:
        inputs.append(helper.make_tensor_value_info("spare", TensorProto.FLOAT, [100, 100]))
    if ir < 4:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 48]))
    model = make([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], inputs,
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48])],
                 [numpy_helper.from_array(low_rank(rng, 64, 48, rank=4), "w"),
                  numpy_helper.from_array(rng.standard_normal((100, 100)).astype(np.float32), "spare")], ir=ir)
    assert onnx_alds.analyze(model).params_total == 64 * 48 + 100 * 100
    from onnx_alds.inputs import random_inputs

    calibration = random_inputs(model, 8, input_shapes={"x": (1, 64)}, seed=0)
    result = onnx_alds.compress(model, keep_params=0.85, rank_multiple=4, calibration=calibration)
    assert factorized(result) == ["mm"]
    if declared:
        assert [value.name for value in result.model.graph.input][:2] == ["x", "spare"]
        assert "spare" in {init.name for init in result.model.graph.initializer}, "the input keeps its default"
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((3, 64)).astype(np.float32)})


def test_recurrent_nodes_are_named_in_the_totals_and_in_an_unreachable_budget():
    """An LSTM holds most weights and MACs but is not a layer the tool changes: the report says its MACs
    are not in the totals, and a --keep-params it makes unreachable says where the weights are."""
    rng = np.random.default_rng(7)
    hidden, features = 32, 16
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h"], name="lstm", hidden_size=hidden),
             helper.make_node("Squeeze", ["h", "axes"], ["hs"], name="squeeze"),
             helper.make_node("Gemm", ["hs", "head"], ["y"], name="head", transB=1)]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, features])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 24])],
                 [numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, features)).astype(np.float32), "W"),
                  numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R"),
                  numpy_helper.from_array(np.zeros((1, 8 * hidden), np.float32), "B"),
                  numpy_helper.from_array(np.array([0], np.int64), "axes"),
                  numpy_helper.from_array(low_rank(rng, 24, hidden), "head")])
    notes = onnx_alds.analyze(model).notes
    assert any("1 recurrent nodes (LSTM/GRU/RNN; first: 'lstm')" in note and "their MACs do not" in note
               for note in notes)
    with pytest.raises(BudgetError, match="of the weights are outside the layers. weight matrices"):
        onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)


def _stored_elements(model: onnx.ModelProto) -> int:
    """Weight elements the file holds: initializers and Constant values, function bodies included."""
    nodes = list(model.graph.node) + [node for function in model.functions for node in function.node]
    return (sum(int(np.prod(init.dims)) for init in model.graph.initializer)
            + sum(int(np.prod(a.t.dims)) for node in nodes if node.op_type == "Constant" for a in node.attribute
                  if a.name == "value"))


def _block_function(weight: np.ndarray) -> onnx.FunctionProto:
    """A model-local function ``local.Block``: Constant(weight) → Conv (pads 1) → Relu."""
    return helper.make_function("local", "Block", ["inp"], ["out"],
                                [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w")),
                                 helper.make_node("Conv", ["inp", "w"], ["c"], pads=[1] * 4),
                                 helper.make_node("Relu", ["c"], ["out"])],
                                opset_imports=[helper.make_opsetid("", 17)])


def test_function_constant_called_twice_is_stored_and_counted_once():
    """A function holding its weight as a Constant, called twice: inlining copies the constant per call.
    The copies were counted twice and factorized per call, so the written file grew (1.9x at
    --keep-params 0.99) while the report claimed the budget."""
    rng = np.random.default_rng(5)
    function = _block_function(low_rank(rng, 32, 32 * 9).reshape(32, 32, 3, 3))
    nodes = [helper.make_node("Block", ["x"], ["h1"], domain="local", name="b1"),
             helper.make_node("Block", ["h1"], ["h2"], domain="local", name="b2"),
             helper.make_node("Conv", ["h2", "head.w"], ["y"], name="head")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 6, 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 6, 6])],
                 [numpy_helper.from_array(low_rank(rng, 32, 32).reshape(32, 32, 1, 1), "head.w")],
                 functions=[function])
    model.opset_import.append(helper.make_opsetid("local", 1))
    stored = _stored_elements(model)
    assert onnx_alds.analyze(model).params_total == stored
    result = onnx_alds.compress(model, keep_params=0.95, rank_multiple=1)
    rows = {row.name: row for row in result.report.layers}
    shared = [row for row in rows.values() if row.op == "Conv" and row.name != "head"]
    assert len(shared) == 2 and all(row.groups == 0 and "shared by 2 uses" in row.skip_reason for row in shared)
    assert "head" in factorized(result)
    assert result.report.params_before == stored
    assert result.report.params_after == _stored_elements(result.model) < stored
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((1, 32, 6, 6)).astype(np.float32)})


def test_weight_behind_identity_is_folded_and_factorized():
    rng = np.random.default_rng(4)
    w1 = low_rank(rng, 32, 8 * 9).reshape(32, 8, 3, 3)
    w2 = low_rank(rng, 32, 32 * 9).reshape(32, 32, 3, 3)
    nodes = [helper.make_node("Identity", ["conv1.weight"], ["onnx::Conv_201"]),
             helper.make_node("Conv", ["x", "onnx::Conv_201"], ["h"], pads=[1] * 4, name="/conv1/Conv"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "conv2.weight"], ["y"], pads=[1] * 4, name="/conv2/Conv")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])],
                 [numpy_helper.from_array(w1, "conv1.weight"), numpy_helper.from_array(w2, "conv2.weight")])
    analysis = onnx_alds.analyze(model)
    assert all(row.skip_reason is None for row in analysis.layers)
    result = onnx_alds.compress(model, keep_params=0.6)
    assert "/conv1/Conv" in factorized(result)
    assert any("Identity" in note for note in result.report.notes)
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)})


def test_weight_shared_through_identity_nodes_is_left_dense_and_the_file_shrinks(tmp_path):
    """PyTorch shares a tensor between two uses through Identity nodes: factorizing each use would store
    the weight twice (the file grew while the report claimed the budget)."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Identity", ["w"], ["a"], name="id_a"),
             helper.make_node("Identity", ["w"], ["b"], name="id_b"),
             helper.make_node("MatMul", ["x", "a"], ["h"], name="first"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "b"], ["h2"], name="second"),
             helper.make_node("MatMul", ["h2", "u"], ["y"], name="own")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
                 [numpy_helper.from_array(low_rank(rng, 64, 64), "w"),
                  numpy_helper.from_array(low_rank(rng, 64, 64), "u")])
    reasons = {row.name: row.skip_reason for row in onnx_alds.analyze(model).layers}
    assert "shared by 2 uses" in reasons["first"] and "shared by 2 uses" in reasons["second"]
    assert reasons["own"] is None
    result = onnx_alds.compress(model, keep_params=0.75)
    assert factorized(result) == ["own"]
    stored = sum(int(np.prod(init.dims)) for init in result.model.graph.initializer)
    assert stored <= 0.75 * 2 * 64 * 64
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 64)).astype(np.float32)})


def test_matmul_with_the_weight_first_is_factorized():
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["proj.weight", "x"], ["h"], name="proj"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["out.weight", "r"], ["y"], name="out")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 10])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 10])],
                 [numpy_helper.from_array(low_rank(rng, 32, 64), "proj.weight"),
                  numpy_helper.from_array(low_rank(rng, 8, 32), "out.weight")])
    analysis = onnx_alds.analyze(model)
    assert [row.weight_shape for row in analysis.layers] == [(32, 64), (8, 32)]
    assert analysis.layers[0].macs == 32 * 64 * 10
    result = onnx_alds.compress(model, keep_params=0.5)
    assert "proj" in factorized(result)
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((64, 10)).astype(np.float32)})


def test_quantized_weight_is_left_dense_with_the_real_reason():
    rng = np.random.default_rng(6)
    q = rng.integers(-100, 100, (16, 8, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(q, "conv.weight_q"), numpy_helper.from_array(np.full(16, 0.01, np.float32), "s"),
             numpy_helper.from_array(np.zeros(16, np.int8), "z"),
             numpy_helper.from_array(low_rank(rng, 10, 16 * 36), "fc.weight")]
    nodes = [helper.make_node("DequantizeLinear", ["conv.weight_q", "s", "z"], ["w"], axis=0),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "fc.weight"], ["y"], transB=1, name="fc")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    result = onnx_alds.compress(model, keep_params=0.9)
    rows = {row.name: row for row in result.report.layers}
    assert "DequantizeLinear" in rows["conv"].skip_reason and "quantiz" in rows["conv"].skip_reason
    assert factorized(result) == ["fc"]
    # its weights are the int8 tensor's and its scales' and zero points' (the row said 0, beside totals that count
    # them)
    assert rows["conv"].params_before == q.size + 16 + 16


def test_empty_weight_is_skipped_not_a_traceback(tmp_path):
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(low_rank(rng, 16, 72).reshape(16, 8, 3, 3), "a.weight"),
             numpy_helper.from_array(np.zeros((0, 8, 3, 3), np.float32), "b.weight")]
    nodes = [helper.make_node("Conv", ["x", "a.weight"], ["a"], pads=[1] * 4, name="A"),
             helper.make_node("Conv", ["x", "b.weight"], ["b"], pads=[1] * 4, name="B"),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])], inits)
    analysis = onnx_alds.analyze(model)
    assert "empty weight" in {row.name: row for row in analysis.layers}["B"].skip_reason
    result = onnx_alds.compress(model, keep_params=0.6)
    assert factorized(result) == ["A"]
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32)})


def custom_op_model(rng) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1] * 4, name="conv1"),
             helper.make_node("CustomAct", ["h"], ["a"], domain="custom.plugins", name="act"),
             helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1] * 4, name="conv2")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, "H", "W"])],
                 [numpy_helper.from_array(low_rank(rng, 16, 72).reshape(16, 8, 3, 3), "w1"),
                  numpy_helper.from_array(low_rank(rng, 16, 144).reshape(16, 16, 3, 3), "w2")])
    model.opset_import.append(helper.make_opsetid("custom.plugins", 1))
    return model


def test_custom_op_that_blocks_sizing_is_named():
    model = custom_op_model(np.random.default_rng(8))
    with pytest.raises(UnsupportedModelError) as caught:
        onnx_alds.compress(model, keep_flops=0.6)
    assert "custom.plugins::CustomAct" in str(caught.value) and "--keep-params" in str(caught.value)
    assert "install onnxruntime" not in str(caught.value)
    result = onnx_alds.compress(model, keep_params=0.6)
    assert factorized(result)
    onnx.checker.check_model(result.model, full_check=True)


def test_rank_multiple_above_every_rank_names_the_flag():
    model = conv_relu_conv(np.random.default_rng(9))
    with pytest.raises(BudgetError, match=r"--rank-multiple 64 .*largest rank that shrinks .* is 28"):
        onnx_alds.compress(model, keep_params=0.5, rank_multiple=64)


def test_bfloat16_weights_are_factorized_and_stored_as_bfloat16():
    rng = np.random.default_rng(10)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    w = low_rank(rng, 32, 64).T.astype(ml_dtypes.bfloat16)  # (64, 32): x @ w
    model = make([helper.make_node("MatMul", ["x", "fc1.weight"], ["y"], name="/fc1/MatMul")],
                 [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4, 32])],
                 [numpy_helper.from_array(w, "fc1.weight")])
    result = onnx_alds.compress(model, keep_params=0.5)
    assert factorized(result) == ["/fc1/MatMul"]
    factors = [t for t in result.model.graph.initializer if t.name != "fc1.weight"]
    assert factors and all(t.data_type == TensorProto.BFLOAT16 for t in factors)
    onnx.checker.check_model(result.model, full_check=True)
    # bf16 MatMul has no ONNX Runtime CPU kernel: compare the factors' product with the weight instead
    enc, dec = (numpy_helper.to_array(t).astype(np.float64) for t in factors)
    np.testing.assert_allclose(enc @ dec, np.asarray(w, np.float64), atol=0.02 * float(np.abs(w.astype(np.float64)).max()))


def test_training_info_is_kept_and_its_weight_left_dense():
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("MatMul", ["x", "fc.weight"], ["h"], name="fc"),
             helper.make_node("MatMul", ["h", "head.weight"], ["y"], name="head")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
                 [numpy_helper.from_array(low_rank(rng, 64, 64), "fc.weight"),
                  numpy_helper.from_array(low_rank(rng, 16, 64).T.copy(), "head.weight"),
                  numpy_helper.from_array(np.array(0.1, np.float32), "lr")])
    algorithm = helper.make_graph([helper.make_node("Mul", ["fc.weight", "lr"], ["fc.weight_new"])], "train", [],
                                  [helper.make_tensor_value_info("fc.weight_new", TensorProto.FLOAT, [64, 64])])
    info = onnx.TrainingInfoProto(algorithm=algorithm)
    info.update_binding.add(key="fc.weight", value="fc.weight_new")
    model.training_info.append(info)
    with pytest.raises(BudgetError, match=r"cannot be reached.*1 layer left dense holds 80% .*training_info"):
        onnx_alds.compress(model, keep_params=0.7)
    result = onnx_alds.compress(model, keep_params=0.9)
    rows = {row.name: row for row in result.report.layers}
    assert "training_info" in rows["fc"].skip_reason
    assert factorized(result) == ["head"]
    assert len(result.model.training_info) == 1 and result.model.training_info[0].update_binding[0].key == "fc.weight"
    onnx.checker.check_model(result.model, full_check=True)


def test_every_model_field_survives_the_rewrite():
    model = conv_relu_conv(np.random.default_rng(12))
    model.producer_name, model.model_version, model.doc_string, model.domain = "exporter", 7, "doc", "org.example"
    model.graph.doc_string = "graph doc"
    onnx.helper.set_model_props(model, {"author": "someone"})
    new = onnx_alds.compress(model, keep_params=0.5).model
    for name in ("producer_name", "model_version", "doc_string", "domain", "ir_version"):
        assert getattr(new, name) == getattr(model, name)
    assert new.graph.doc_string == "graph doc"
    assert {p.key: p.value for p in new.metadata_props}["author"] == "someone"


def test_invalid_models_are_refused_in_one_line(tmp_path):
    rng = np.random.default_rng(13)
    model = conv_relu_conv(rng)
    model.graph.node[1].ClearField("input")  # Relu with no input: onnx.checker refuses it
    with pytest.raises(ModelLoadError, match="not valid ONNX"):
        onnx_alds.compress(model, keep_params=0.5)
    broken = conv_relu_conv(rng)
    broken.graph.initializer[1].CopyFrom(numpy_helper.from_array(
        low_rank(rng, 32, 32 * 6).reshape(32, 32, 3, 2), "conv2.weight"))  # a 3x2 kernel: ONNX Runtime cannot run it
    broken.graph.node[2].attribute.append(helper.make_attribute("kernel_shape", [3, 3]))
    with pytest.raises(OnnxAldsError) as caught:
        onnx_alds.compress(broken, keep_params=0.5)
    assert "\n" not in str(caught.value)


def test_fixed_batch_models_keep_their_interface():
    rng = np.random.default_rng(14)
    model = conv_relu_conv(rng, batch=2)
    new = onnx_alds.compress(model, keep_params=0.5).model
    assert [str(v.type) for v in new.graph.input] == [str(v.type) for v in model.graph.input]
    assert [str(v.type) for v in new.graph.output] == [str(v.type) for v in model.graph.output]


# ---------------------------------------------------------------------------------------------------
# Command line: files, pipes, errors


def test_unwritable_output_folder_fails_before_any_work(tmp_path, capsys, monkeypatch):
    model_path = tmp_path / "m.onnx"
    onnx.save(conv_relu_conv(np.random.default_rng(15)), model_path)
    import onnx_alds.api

    monkeypatch.setattr(onnx_alds.api, "compress", lambda *a, **k: pytest.fail("compression ran"))
    code = main(["compress", str(model_path), "-o", "/proc/out.onnx", "--keep-params", "0.5"])
    assert code == 1 and "cannot write to the folder of -o" in capsys.readouterr().err


def test_failed_validation_writes_neither_model_nor_report(tmp_path, capsys):
    model_path, out, report = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(conv_relu_conv(np.random.default_rng(16)), model_path)
    code = main(["compress", str(model_path), "-o", str(out), "--keep-params", "0.3", "--rank-multiple", "1",
                 "--report", str(report), "--validate", "--validate-random", "4", "--rtol", "1e-9",
                 "--bench-batch", "1"])
    captured = capsys.readouterr()
    assert code == 1 and captured.err.startswith("error:")
    assert "FAILED" in captured.out and "bench on" not in captured.out  # not timed: nothing is written
    assert not out.exists() and not report.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_unwritable_report_writes_no_model(tmp_path, capsys):
    model_path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(conv_relu_conv(np.random.default_rng(17)), model_path)
    code = main(["compress", str(model_path), "-o", str(out), "--keep-params", "0.5",
                 "--report", str(tmp_path / "missing" / "r.json")])
    assert code == 1 and not out.exists()


def test_missing_external_data_file_is_named(tmp_path, capsys):
    model = conv_relu_conv(np.random.default_rng(18))
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    os.unlink(tmp_path / "m.onnx.data")
    code = main(["analyze", str(path)])
    assert code == 1 and "external data file 'm.onnx.data'" in capsys.readouterr().err


def test_analyze_piped_to_head_exits_quietly_and_writes_its_json(tmp_path):
    rng = np.random.default_rng(19)
    nodes, inits, name = [], [], "x"
    for index in range(400):
        weight = f"/model/encoder/layers.{index}/a_rather_long_module_name_as_exporters_write_it/weight"
        nodes += [helper.make_node("MatMul", [name, weight], [f"m{index}"], name=weight.replace("weight", "MatMul")),
                  helper.make_node("Relu", [f"m{index}"], [f"r{index}"])]
        inits.append(numpy_helper.from_array(low_rank(rng, 32, 32), weight))
        name = f"r{index}"
    nodes[-1].output[0] = "y"
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], inits)
    model_path, report = tmp_path / "m.onnx", tmp_path / "a.json"
    onnx.save(model, model_path)
    command = (f"{sys.executable} -m onnx_alds.cli analyze {model_path} --json {report} | head -2")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr and done.stderr.strip() == ""
    assert done.returncode in (0, 141)
    assert len(done.stdout.splitlines()) == 2 and report.exists()


def test_data_free_deep_cut_and_tiny_head_are_warned(capsys):
    rng = np.random.default_rng(20)
    hidden = rng.standard_normal((256, 256)).astype(np.float32) / 16  # full rank: any cut costs
    head = rng.standard_normal((256, 1000)).astype(np.float32) / 16
    nodes = [helper.make_node("MatMul", ["x", "hidden"], ["h"], name="hidden"),
             helper.make_node("MatMul", ["h", "head"], ["y"], name="head")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 256])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1000])],
                 [numpy_helper.from_array(hidden, "hidden"), numpy_helper.from_array(head, "head")])
    report = onnx_alds.compress(model, keep_params=0.08).report
    assert any("no calibration data" in w for w in report.warnings)
    assert any("full rank" in w for w in report.warnings)
    assert "warning: no calibration data" in report.format()
    # (at 0.95 the full-rank hidden layer keeps rank 105 of 256 and the outputs move 0.51 on random
    # inputs, which are this model's own kind: warned, rightly, since the random-input check)
    gentle = onnx_alds.compress(model, keep_params=0.98).report
    assert not gentle.warnings
    assert any(re.search(r"not (a multiple|multiples) of 16", note) for note in gentle.notes) or all(
        row.rank % 16 == 0 for row in gentle.layers if row.groups)


# ---------------------------------------------------------------------------------------------------
# Kinds of fault the fuzzer (tools/fuzz.py) found: each is refused in one line or handled


def test_fuzz_kinds_are_refused_in_one_line():
    rng = np.random.default_rng(21)
    corrupt = conv_relu_conv(rng)
    corrupt.graph.name = "main"
    data = corrupt.SerializeToString().replace(b"main", b"m\xffin")  # a name that is not UTF-8
    no_outputs = conv_relu_conv(rng)
    del no_outputs.graph.output[:]
    reference = conv_relu_conv(rng)
    reference.graph.node[0].attribute.append(onnx.AttributeProto(name="dilations", ref_attr_name="d",
                                                                 type=onnx.AttributeProto.INTS))
    untyped = conv_relu_conv(rng)
    untyped.graph.input[0].type.Clear()
    for model in (onnx.load_from_string(data), no_outputs, reference, untyped):
        with pytest.raises(OnnxAldsError) as caught:
            onnx_alds.compress(model, keep_params=0.5)
        assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_overridable_weight_behind_a_transpose_stays_an_input():
    rng = np.random.default_rng(22)
    nodes = [helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("MatMul", ["y", "w2"], ["z"], name="mm2")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32]),
                         helper.make_tensor_value_info("wt", TensorProto.FLOAT, [24, 32])],
                 [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 32])],
                 [numpy_helper.from_array(low_rank(rng, 24, 32), "wt"),
                  numpy_helper.from_array(low_rank(rng, 24, 32), "w2")])
    result = onnx_alds.compress(model, keep_params=0.9)
    assert [v.name for v in result.model.graph.input] == ["x", "wt"]
    assert "mm" not in factorized(result)


def test_layer_that_reaches_no_output_is_dropped_with_the_dead_branch():
    rng = np.random.default_rng(23)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["dead"], name="dead_mm"),
             helper.make_node("MatMul", ["x", "v"], ["y"], name="live_mm")]
    model = vector_model(nodes, ["w", "v"], rng)
    result = onnx_alds.compress(model, keep_params=0.3)
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 64)).astype(np.float32)})


def test_no_output_may_replace_an_input_a_device_or_a_link(tmp_path, capsys):
    model_path = tmp_path / "m.onnx"
    onnx.save(conv_relu_conv(np.random.default_rng(24)), model_path)
    calibration = tmp_path / "cal.npz"
    np.savez(calibration, x=np.random.default_rng(0).standard_normal((4, 16, 10, 10)).astype(np.float32))
    before = {p: p.read_bytes() for p in (model_path, calibration)}
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    attempts = [["bench", str(model_path), "--json", str(model_path)],
                ["compress", str(model_path), "-o", str(calibration), "--keep-params", "0.9", "--rank-multiple", "1",
                 "--calibration", str(calibration)],
                ["compress", str(model_path), "-o", str(tmp_path / "o.onnx"), "--keep-params", "0.9",
                 "--report", str(tmp_path / "o.onnx")],
                ["analyze", str(model_path), "--json", str(tmp_path / "link.json")],
                ["analyze", str(model_path), "--json", str(tmp_path)]]
    for argv in attempts:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1, err
    assert all(p.read_bytes() == data for p, data in before.items())
    assert (tmp_path / "link.json").is_symlink() and not (tmp_path / "o.onnx").exists()


def test_seed_out_of_range_is_one_line():
    with pytest.raises(BudgetError, match="--seed -1"):
        onnx_alds.compress(conv_relu_conv(np.random.default_rng(25)), keep_params=0.9, seed=-1)


def _custom_op_between_convs() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "W2")]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4, name="conv1"),
             helper.make_node("CustomAct", ["c1"], ["a1"], domain="custom.plugins", name="act"),
             helper.make_node("Conv", ["a1", "W2"], ["y"], kernel_shape=[3, 3], pads=[1] * 4, name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, "H", "W"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("custom.plugins", 1)])
    model.ir_version = 8
    return model


def test_custom_op_sizes_message_fits_the_budget():
    from onnx_alds.errors import UnsupportedModelError

    model = _custom_op_between_convs()
    with pytest.raises(UnsupportedModelError, match=r"custom op custom.plugins::CustomAct.*--keep-params instead"):
        onnx_alds.compress(model, keep_flops=0.6)
    notes = " ".join(onnx_alds.compress(model, keep_params=0.6).report.notes)
    assert "custom.plugins::CustomAct" in notes and "MACs are not counted" in notes
    assert "instead of --keep-flops" not in notes


# --------------------------------------------------------------------------------------------------
# faults found by trying new exports (each a whole kind, not one model)


def _fixed_batch_ffn(rng, batch: int = 1) -> onnx.ModelProto:
    """MatMul → Relu → MatMul → ReduceSum on x[batch, 8, 32]: a prunable block in a fixed-batch model."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["o"], name="fc2"),
             helper.make_node("ReduceSum", ["o"], ["y"], keepdims=0)]
    return make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 32])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                [numpy_helper.from_array((rng.standard_normal((32, 64)) / 6).astype(np.float32), "w1"),
                 numpy_helper.from_array((rng.standard_normal((64, 32)) / 8).astype(np.float32), "w2")])


@pytest.mark.parametrize("prune", ["only", "combined"])
def test_pruning_a_fixed_batch_model_runs_whole_batches(prune):
    from onnx_alds.inputs import InputSet, random_inputs

    rng = np.random.default_rng(8)
    model = _fixed_batch_ffn(rng, batch=3)
    calibration = random_inputs(model, 32)  # (drawn in whole batches: 33)
    calibration = InputSet({"x": calibration.arrays["x"][:32]}, None, "32 samples")
    result = onnx_alds.compress(model, keep_flops=0.7, calibration=calibration, prune=prune, rank_multiple=4)
    assert result.report.pruned and any(block.width_after < block.width_before for block in result.report.pruned)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report.calibration_samples == 30  # the samples used: whole batches of 3 (a note says so)


@pytest.mark.parametrize("op", ["Cast", "Identity", "Transpose"])
def test_float16_weight_behind_constant_ops_calibrates(op):
    """A float16 layer whose weight comes through Cast (autocast) / Identity / Transpose: the calibration
    probe declared its input float32 and ONNX Runtime refused the probe."""
    from onnx_alds.inputs import random_inputs

    rng = np.random.default_rng(9)
    second = low_rank(rng, 32, 32, 4)
    if op == "Cast":
        pre, stored = helper.make_node("Cast", ["w1"], ["w1f"], to=TensorProto.FLOAT16), second
    elif op == "Transpose":
        pre, stored = helper.make_node("Transpose", ["w1"], ["w1f"], perm=[1, 0]), second.T.astype(np.float16)
    else:
        pre, stored = helper.make_node("Identity", ["w1"], ["w1f"]), second.astype(np.float16)
    nodes = [pre, helper.make_node("MatMul", ["x", "w2"], ["a"], name="mm1"),
             helper.make_node("MatMul", ["a", "w1f"], ["y"], name="mm2")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 32])],
                 [numpy_helper.from_array(low_rank(rng, 32, 32, 4).astype(np.float16), "w2"),
                  numpy_helper.from_array(np.ascontiguousarray(stored), "w1")])
    for method in ("alds", "damage"):
        result = onnx_alds.compress(model, keep_flops=0.5, calibration=random_inputs(model, 16), rank_multiple=1,
                                    method=method)
        assert "mm2" in factorized(result)
        feeds = {"x": rng.standard_normal((4, 32)).astype(np.float16)}
        before, after = run(model, feeds)[0].astype(np.float32), run(result.model, feeds)[0].astype(np.float32)
        assert np.linalg.norm(after - before) <= 0.02 * np.linalg.norm(before)


def _embedding_model(rows: int = 40) -> onnx.ModelProto:
    rng = np.random.default_rng(10)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])]
    return make(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 32])],
                [numpy_helper.from_array(rng.standard_normal((rows, 32)).astype(np.float32), "table"),
                 numpy_helper.from_array(low_rank(rng, 32, 32, 4), "w")])


def test_random_ids_stay_inside_the_embedding_table_and_failures_are_one_line(tmp_path, capsys):
    from onnx_alds.inputs import InputSet, random_inputs
    from onnx_alds.validate import validate

    model = _embedding_model(rows=40)
    ids = random_inputs(model, 64).arrays["ids"]
    assert ids.min() >= 0 and ids.max() < 40 and len(np.unique(ids)) > 20
    # over the whole table, not its first 100 rows (a vocabulary's special tokens: the random-input check
    # read 0.036 where held-out sentences moved 0.384)
    wide = random_inputs(_embedding_model(rows=1000), 64).arrays["ids"]
    assert wide.max() < 1000 and np.mean(wide >= 100) > 0.8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert main(["validate", str(path), str(path), "--random", "4"]) == 0
    capsys.readouterr()
    bad = InputSet({"ids": np.full((2, 5), 99, np.int64)}, source="bad ids")
    with pytest.raises(OnnxAldsError, match="running the original model on the validation inputs failed"):
        validate(model, model, inputs=bad)


def test_input_shape_that_contradicts_a_fixed_dim_names_the_flag(tmp_path, capsys):
    rng = np.random.default_rng(11)
    path = tmp_path / "m.onnx"
    onnx.save(conv_relu_conv(rng), str(path))
    code = main(["compress", str(path), "-o", str(tmp_path / "out.onnx"), "--keep-flops", "0.9",
                 "--input-shape", "x:2x16x10x10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--input-shape gives 2x16x10x10" in err[0] and "fixes 1 where 2" in err[0]
    assert not (tmp_path / "out.onnx").exists()


def test_gemm_with_the_constant_as_its_first_input_is_described_and_left_alone():
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("Gemm", ["w", "x"], ["y"], name="g", transB=1)]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 48])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [40, 4])],
                 [numpy_helper.from_array(low_rank(rng, 40, 48), "w")])
    row = onnx_alds.analyze(model).layers[0]
    assert row.weight_shape == (40, 48) and "first input" in row.skip_reason


def test_layer_on_a_loop_carried_value_names_the_subgraph_for_flops_and_compresses_by_params():
    rng = np.random.default_rng(13)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["state", "w_loop"], ["mixed"], name="loop_mm"),
         helper.make_node("Tanh", ["mixed"], ["state_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("state", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("MatMul", ["x", "w_pre"], ["s0"], name="pre"),
             helper.make_node("Loop", ["trip", "cond", "s0"], ["final"], name="loop", body=body),
             helper.make_node("MatMul", ["final", "w_post"], ["y"], name="post")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
                 [numpy_helper.from_array(low_rank(rng, 32, 32), "w_pre"),
                  numpy_helper.from_array(low_rank(rng, 32, 32), "w_loop"),
                  numpy_helper.from_array(low_rank(rng, 32, 16), "w_post"),
                  numpy_helper.from_array(np.array(3, np.int64), "trip"),
                  numpy_helper.from_array(np.array(True), "cond")])
    with pytest.raises(UnsupportedModelError, match="'loop_mm'.*inside If/Loop/Scan subgraphs.*--keep-params"):
        onnx_alds.compress(model, keep_flops=0.5, rank_multiple=1)
    result = onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 32)).astype(np.float32)})


def test_plan_far_below_the_requested_keep_is_a_warning():
    """With rank steps of 16 the only plan within --keep-params 0.95 of a 64x64 layer keeps half of it."""
    rng = np.random.default_rng(16)
    model = make([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
                 [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")])
    result = onnx_alds.compress(model, keep_params=0.95, rank_multiple=16)
    assert result.report.achieved == pytest.approx(0.5)
    assert any("well below the requested 0.95" in w and "--rank-multiple" in w for w in result.report.warnings)
    gentle = onnx_alds.compress(model, keep_params=0.95, rank_multiple=1)
    assert not any("well below" in w for w in gentle.report.warnings)


def test_conv_transpose_macs_count_in_the_total_and_it_is_left_alone():
    rng = np.random.default_rng(17)
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1] * 4, name="conv"),
             helper.make_node("ConvTranspose", ["h", "wt"], ["y"], strides=[2, 2], name="up")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
                 [numpy_helper.from_array(low_rank(rng, 32, 16 * 9).reshape(32, 16, 3, 3), "w"),
                  numpy_helper.from_array(rng.standard_normal((32, 8, 2, 2)).astype(np.float32), "wt")])
    analysis = onnx_alds.analyze(model)
    conv = 32 * 16 * 9 * 64
    assert analysis.macs_total == conv + 32 * 8 * 4 * 64  # every input position meets every weight element
    assert [row.name for row in analysis.layers] == ["conv"]
    assert any("ConvTranspose" in note for note in analysis.notes)
    result = onnx_alds.compress(model, keep_flops=0.8, rank_multiple=1)
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((1, 16, 8, 8)).astype(np.float32)})


def test_every_dynamic_input_is_named_in_one_error():
    rng = np.random.default_rng(18)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["em"]), helper.make_node("MatMul", ["em", "w"], ["y"], name="mm")]
    model = make(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
                         helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 32])],
                 [numpy_helper.from_array(rng.standard_normal((50, 32)).astype(np.float32), "table"),
                  numpy_helper.from_array(np.array([2], np.int64), "axis"),
                  numpy_helper.from_array(low_rank(rng, 32, 32), "w")])
    with pytest.raises(UnsupportedModelError, match=r"inputs 'ids' \[batch, seq\], 'mask' \[batch, seq\] have "
                                                    r"dynamic dims; give them with --input-shape ids:1xseq \(for seq: "
                                                    r".*\) \(the other input takes the sizes of the dims named alike\)"):
        onnx_alds.compress(model, keep_flops=0.5, rank_multiple=1)
    result = onnx_alds.compress(model, keep_flops=0.5, rank_multiple=1, input_shapes={"ids": (1, 7), "mask": (1, 7)})
    assert factorized(result) == ["mm"]
    # the dims are named alike: given for 'ids', 'seq' and 'batch' hold for 'mask' too (it was asked for as well,
    # and is no more)
    alone = onnx_alds.compress(model, keep_flops=0.5, rank_multiple=1, input_shapes={"ids": (1, 7)})
    assert alone.model.SerializeToString() == result.model.SerializeToString()
    assert "input 'mask': its dims named like those of 'ids' take their sizes (batch=1, seq=7)" in alone.report.notes


def test_weight_shared_by_two_if_branches_stays_once_in_the_main_graph():
    """The graph export moved a main-graph weight read only inside If branches into each branch: stored
    twice, while the report counted it once."""
    rng = np.random.default_rng(20)

    def branch(name, nodes, out):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [4, 32])])

    then = branch("then", [helper.make_node("Identity", ["w"], ["wi"]),
                           helper.make_node("MatMul", ["h", "wi"], ["t"], name="then_mm")], "t")
    other = branch("else", [helper.make_node("MatMul", ["h", "w"], ["e"], name="else_mm")], "e")
    nodes = [helper.make_node("MatMul", ["x", "u"], ["h"], name="first"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other)]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                 [numpy_helper.from_array(low_rank(rng, 32, 32), "u"), numpy_helper.from_array(low_rank(rng, 32, 32), "w"),
                  numpy_helper.from_array(np.array(True), "cond")])
    result = onnx_alds.compress(model, keep_params=0.75, rank_multiple=1)
    assert factorized(result) == ["first"]
    names = [init.name for _, graph in onnx_alds.layers.iter_graphs(result.model.graph) for init in graph.initializer]
    assert names.count("w") == 1 and "w" in [init.name for init in result.model.graph.initializer]
    from onnx_alds.layers import iter_total_params
    assert result.report.params_after == sum(iter_total_params(result.model)) < sum(iter_total_params(model))
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 32)).astype(np.float32)})


def test_random_ids_respect_a_table_behind_a_cast_and_a_bench_failure_is_one_line(tmp_path, capsys):
    from onnx_alds.inputs import index_bounds

    rng = np.random.default_rng(22)
    nodes = [helper.make_node("Cast", ["table16"], ["table"], to=TensorProto.FLOAT),
             helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])]
    model = make(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 32])],
                 [numpy_helper.from_array(rng.standard_normal((7, 32)).astype(np.float16), "table16"),
                  numpy_helper.from_array(low_rank(rng, 32, 32), "w")])
    assert index_bounds(model) == {"ids": 7}
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert main(["bench", str(path), "--runs", "3"]) == 0
    capsys.readouterr()
    # a table sliced at run time to a length shape inference cannot know (the ids' length, 5): random ids
    # overrun it, and the run fails in one error line
    sliced = [helper.make_node("Shape", ["ids"], ["end"], start=1, end=2),
              helper.make_node("Slice", ["table16b", "start", "end"], ["table16"])] + nodes
    bad = make(sliced, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 32])],
               [numpy_helper.from_array(rng.standard_normal((7, 32)).astype(np.float16), "table16b"),
                numpy_helper.from_array(np.array([0], np.int64), "start"),
                numpy_helper.from_array(low_rank(rng, 32, 32), "w")])
    onnx.save(bad, str(path))
    assert main(["bench", str(path), "--runs", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: m.onnx at batch 1: running the model on random timing "
                                               "inputs failed")


def test_a_symbolic_dim_shared_by_two_inputs_takes_one_value():
    rng = np.random.default_rng(23)
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["y"], name="mm")]
    model = make(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "S", 32]),
                         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "S", 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 32])],
                 [numpy_helper.from_array(low_rank(rng, 32, 32), "w")])
    with pytest.raises(OnnxAldsError, match="gives the dim 'S' 8 for 'a' and 9 for 'b'"):
        onnx_alds.compress(model, keep_flops=0.5, rank_multiple=1, input_shapes={"a": (1, 8, 32), "b": (1, 9, 32)})
    result = onnx_alds.compress(model, keep_flops=0.5, rank_multiple=1, input_shapes={"a": (1, 8, 32), "b": (1, 8, 32)})
    assert factorized(result) == ["mm"]


def _if_model(rng, *, branch_weight: bool, ir: int = 8) -> onnx.ModelProto:
    """x → MatMul(u) → If(then: MatMul(w), else: MatMul(u2)); ``branch_weight``: the then-branch also holds
    its own initializer named 'w' (a name of the main graph) with other values."""
    w, u, u2 = low_rank(rng, 32, 32), low_rank(rng, 32, 32), low_rank(rng, 32, 32)
    then_inits = [numpy_helper.from_array(low_rank(rng, 32, 32), "w")] if branch_weight else []
    then = helper.make_graph([helper.make_node("MatMul", ["h", "w"], ["t"], name="then_mm")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, 32])], then_inits)
    other = helper.make_graph([helper.make_node("MatMul", ["h", "u2"], ["e"], name="else_mm")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4, 32])])
    nodes = [helper.make_node("MatMul", ["x", "u"], ["h"], name="first"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other)]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(u, "u"), numpy_helper.from_array(u2, "u2"),
             numpy_helper.from_array(np.array(True), "cond")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])]
    if ir < 4:
        inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs,
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], inits),
                              opset_imports=[helper.make_opsetid("", 17 if ir >= 4 else 8)])
    model.ir_version = ir
    return model


def test_subgraph_that_redefines_an_outer_name_is_refused_and_ir3_bodies_are_factorized():
    rng = np.random.default_rng(24)
    # the branch's own 'w' was silently replaced by the main graph's 'w' (outputs off by 3.4x)
    with pytest.raises(UnsupportedModelError, match="subgraph of node 'branch' defines 'w' again"):
        onnx_alds.compress(_if_model(rng, branch_weight=True), keep_params=0.99, rank_multiple=1)
    # IR 3: a layer in a branch gets its factors in the main graph, listed as graph inputs
    model = _if_model(rng, branch_weight=False, ir=3)
    result = onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)
    assert "then_mm" in factorized(result)
    onnx.checker.check_model(result.model, full_check=True)
    listed = {value.name for value in result.model.graph.input}
    assert all(init.name in listed for init in result.model.graph.initializer)
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((4, 32)).astype(np.float32)})


def test_function_constant_called_in_a_branch_is_stored_and_counted_once():
    """The inliner puts a branch's copy of the function's Constant inside the branch: it was counted and
    factorized once more there (the file grew 3.3x at a reported 0.83)."""
    rng = np.random.default_rng(10)
    function = _block_function(low_rank(rng, 16, 16 * 9).reshape(16, 16, 3, 3))
    branch = helper.make_graph([helper.make_node("Block", ["h"], ["t"], domain="local", name="in_branch")], "then",
                               [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 16, 6, 6])])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 16, 6, 6])])
    nodes = [helper.make_node("Block", ["x"], ["h"], domain="local", name="b1"),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other, name="if")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 6, 6]),
                         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])], [], functions=[function])
    model.opset_import.append(helper.make_opsetid("local", 1))
    analysis = onnx_alds.analyze(model)
    assert analysis.params_total == _stored_elements(model) == 16 * 16 * 9
    assert all("shared by 2 uses" in (row.skip_reason or "") for row in analysis.layers)


def test_weight_computed_from_constants_by_other_ops_says_to_fold_them_first():
    """A weight norm exported by the dynamo exporter: W = g · v / ‖v‖ on constants. The reason named the
    last op ("computed at run time by a Mul node") as if the weight depended on the inputs."""
    from conftest import make_model

    rng = np.random.default_rng(41)
    nodes = [helper.make_node("Transpose", ["x"], ["x_t"]),
             helper.make_node("ReduceL2", ["v", "axes"], ["norm"], keepdims=1),
             helper.make_node("Div", ["v", "norm"], ["direction"]), helper.make_node("Mul", ["direction", "g"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("MatMul", ["x", "x_t"], ["z"], name="activations")]
    inits = [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "v"),
             numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(rng.standard_normal((1, 32)).astype(np.float32), "g")]
    model = make_model(nodes,
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 32])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 32]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT, [32, 32])], inits, opset=18)
    with pytest.raises(UnsupportedModelError, match=r"weight is computed from constants by Div, Mul, ReduceL2 nodes, "
                                                    r"which onnx-alds does not fold .*fold the constants first"):
        onnx_alds.compress(model, keep_params=0.5)


@pytest.mark.parametrize("through_transpose", [False, True], ids=["reshape", "reshape-then-transpose"])
def test_constant_weight_reshaped_by_a_run_time_shape_is_named_for_it(through_transpose):
    """A constant flattened weight reshaped to 64x64 by a shape built from Shape(x): the reason said "a product
    of two run-time tensors (as attention's Q·Kᵀ)", where nothing is multiplied but the shape is run-time."""
    from conftest import make_model

    weight = np.random.default_rng(43).standard_normal((64, 64)).astype(np.float32)
    nodes = [helper.make_node("Shape", ["x"], ["x_shape"]), helper.make_node("Slice", ["x_shape", "st", "en"], ["d"]),
             helper.make_node("Concat", ["d", "minus_one"], ["w_shape"], axis=0),
             helper.make_node("Reshape", ["w_flat", "w_shape"], ["w_r"])]
    nodes += [helper.make_node("Transpose", ["w_r"], ["w"], perm=[1, 0])] if through_transpose \
        else [helper.make_node("Identity", ["w_r"], ["w"])]
    nodes += [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(weight.reshape(-1), "w_flat"),
             numpy_helper.from_array(np.array([1], np.int64), "st"),
             numpy_helper.from_array(np.array([2], np.int64), "en"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 64])], inits, opset=17)
    with pytest.raises(UnsupportedModelError, match=r"weight is a constant given its shape at run time \(Reshape by a "
                                                    r"run-time value.*re-export with the weight's shape fixed"):
        onnx_alds.compress(model, keep_params=0.5)
    # products of two run-time tensors keep their own reason, a torch export's Add(bias, Q·Kᵀ) too: its first
    # input is a constant, but an Add gives no weight a shape
    attention = make_model([helper.make_node("Transpose", ["x"], ["x_t"]),
                            helper.make_node("MatMul", ["x", "x_t"], ["s"]),
                            helper.make_node("Add", ["bias", "x"], ["v"]),  # V = bias + x W, as exported
                            helper.make_node("MatMul", ["s", "v"], ["y"])],
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
                           [numpy_helper.from_array(np.zeros(64, np.float32), "bias")], opset=17)
    reasons = [row.skip_reason for row in onnx_alds.analyze(attention).layers]
    assert len(reasons) == 2 and all("Q·Kᵀ" in reason for reason in reasons), reasons


def test_a_finite_weight_that_a_cast_overflows_is_named_for_the_cast():
    """A float32 weight with values up to 1e6 read through Cast(float16) → Cast(float): skipped as "weight
    holds NaN or Inf values", while the stored initializer is finite."""
    from conftest import make_model

    weight = np.random.default_rng(44).standard_normal((32, 32)).astype(np.float32)
    weight[0, 0] = 1e6
    nodes = [helper.make_node("Cast", ["W"], ["w16"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w32"], ["y"], name="mm")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                       [numpy_helper.from_array(weight, "W")], opset=17)
    reason = onnx_alds.analyze(model, rank_multiple=1).layers[0].skip_reason
    assert reason.startswith("weight 'W' is finite as stored but holds Inf after the graph's Cast to FLOAT16 then "
                             "FLOAT")
    weight[0, 0] = np.inf  # stored as Inf: the weight's own values
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    assert onnx_alds.analyze(model, rank_multiple=1).layers[0].skip_reason == "weight holds NaN or Inf values"


@pytest.mark.parametrize("through", [False, True], ids=["directly", "through-identity"])
def test_unreachable_budget_counts_a_shared_weight_once(through):
    """A tied weight read by two MatMuls was counted once per use: "hold 98 % of them" where it is 49 %; read by
    each through its own Identity, it still said 127 %."""
    from conftest import make_model

    rng = np.random.default_rng(42)
    first, second = ("tied_a", "tied_b") if through else ("tied", "tied")
    nodes = [helper.make_node("Identity", ["tied"], ["tied_a"]), helper.make_node("Identity", ["tied"], ["tied_b"])] \
        if through else []
    nodes += [helper.make_node("MatMul", ["x", first], ["a"], name="a"), helper.make_node("Relu", ["a"], ["r"]),
              helper.make_node("MatMul", ["r", second], ["b"], name="b"),
              helper.make_node("MatMul", ["b", "own"], ["y"], name="c")]
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), name)
             for name in ("tied", "own")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], inits)
    with pytest.raises(BudgetError, match=r"2 layers left dense hold 50% of them \(weight is shared by 2 uses"):
        onnx_alds.compress(model, keep_params=0.5)


def test_a_tied_head_left_dense_is_not_said_to_be_folded_for_factorization():
    """Gather(W) and MatMul(x, Transpose(W)) (a GPT's tied weight, dynamo export): the head stays dense as shared,
    yet a note said its weight was "folded for factorization"."""
    from conftest import make_model

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["W", "ids"], ["e"], name="emb"),
             helper.make_node("MatMul", ["e", "W2"], ["m"], name="mid"),
             helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0], name="tr"),
             helper.make_node("MatMul", ["m", "Wt"], ["out"], name="head")]
    model = make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16, 200])],
                       [numpy_helper.from_array(rng.standard_normal((200, 64)).astype(np.float32), "W"),
                        numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W2")])
    report = onnx_alds.compress(model, keep_params=0.95, rank_multiple=1).report
    rows = {row.name: row for row in report.layers}
    assert "shared" in (rows["head"].skip_reason or "")
    assert not any("folded for factorization" in note for note in report.notes)
    # the reason names the other reader: "shared by 2 uses" alone left a user guessing why the head stayed dense
    assert rows["head"].skip_reason.endswith(": also read by Gather 'emb' (a tied embedding: the head shares the "
                                             "embedding table)")


def test_a_shared_weight_names_a_reader_past_an_identity_that_is_a_graph_output():
    """The first other reader was an Identity whose output the model returns: the reason gave up there and
    named no reader, though a MatMul read the weight too."""
    from conftest import make_model

    rng = np.random.default_rng(9)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="first"),
             helper.make_node("Identity", ["W"], ["W_out"], name="exposed"),
             helper.make_node("MatMul", ["a", "W"], ["y"], name="second")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32]),
                        helper.make_tensor_value_info("W_out", TensorProto.FLOAT, [32, 32])],
                       [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "W")])
    from onnx_alds.api import analyze

    rows = {row.name: row for row in analyze(model).layers}
    assert rows["first"].skip_reason.endswith(": also read by MatMul 'second'")


def test_a_product_of_two_constants_is_no_layer_and_runs_no_macs():
    """W = U @ V from two initializers (a factorized parametrization exported without constant folding):
    the constant product was a layer holding 92 % of the MACs, the whole cut went there, and ONNX Runtime
    folds it at load time: nothing ran faster, the report claimed 0.54 of the MACs kept."""
    from conftest import make_model

    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["U", "V"], ["W"], name="product"),
             helper.make_node("MatMul", ["x", "W"], ["h"], name="use"),
             helper.make_node("MatMul", ["h", "W3"], ["y"], name="last")]
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("U", (64, 48)), ("V", (48, 96)), ("W3", (96, 64)))]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], inits)
    from onnx_alds.api import analyze

    report = analyze(model, input_shapes={"x": (2, 64)})
    rows = {row.name: row for row in report.layers}
    assert rows["product"].skip_reason.startswith("both operands are constants") and not rows["product"].macs
    assert rows["use"].skip_reason.startswith("weight is computed from constants by MatMul nodes")
    assert rows["use"].params == 64 * 48 + 48 * 96 and rows["product"].params == 0  # what the file stores for it
    assert report.macs_total == 2 * 64 * 96 + 2 * 96 * 64  # the two products the model runs per call
    result = onnx_alds.compress(model, keep_flops=0.75, input_shapes={"x": (2, 64)}, rank_multiple=1)
    assert factorized(result) == ["last"]


def test_classical_ml_ops_are_named_as_left_alone():
    """skl2onnx's LinearClassifier holds its 4x3 coefficients in attributes: analyze said "weights: 0 total"
    and compress "no Conv, Gemm or MatMul with a weight" without naming it."""
    node = helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                            coefficients=[0.1 * i for i in range(12)], intercepts=[0.0, 0.1, 0.2],
                            classlabels_ints=[0, 1, 2])
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    assert any("ai.onnx.ml::LinearClassifier ×1 (classical ML ops" in note for note in onnx_alds.analyze(model).notes)
    with pytest.raises(onnx_alds.errors.UnsupportedModelError, match="LinearClassifier ×1 \\(classical ML ops"):
        onnx_alds.compress(model, keep_params=0.5)


def test_random_position_ids_stay_in_a_rotary_cache(tmp_path):
    """Opset 23's RotaryEmbedding indexes the rows of its cos/sin cache with position_ids: random ids in
    [0, 100) overran a 32-row cache and --calibration-random failed, telling the user to check arrays they
    never gave."""
    from onnx_alds.inputs import index_bounds

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("RotaryEmbedding", ["h", "cos", "sin", "position_ids"], ["y"], name="rope", num_heads=2)]
    graph = helper.make_graph(nodes, "rope", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 32]),
                                              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 16])],
                              [numpy_helper.from_array((rng.standard_normal((32, 16)) / 6).astype(np.float32), "w"),
                               numpy_helper.from_array(np.cos(rng.standard_normal((32, 4))).astype(np.float32), "cos"),
                               numpy_helper.from_array(np.sin(rng.standard_normal((32, 4))).astype(np.float32), "sin")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    assert index_bounds(model) == {"position_ids": 32}
    path = tmp_path / "rope.onnx"
    onnx.save(model, str(path))
    assert main(["compress", str(path), "-o", str(tmp_path / "out.onnx"), "--keep-params", "0.6",
                 "--calibration-random", "16", "--rank-multiple", "1"]) == 0


@pytest.mark.parametrize("weights_from", ["initializer", "constant_node"])
def test_function_of_another_opset_called_with_a_main_graph_weight(weights_from):
    """A function importing ai.onnx 13 called with its weight from the main graph (the model imports 17): from
    an initializer, the converting inliner failed ("Type unknown for W1") and the model was refused; from a
    Constant node, the inliner copied the node into each call, the weights counted twice (20.48k for
    12.29k: 'keep 0.40' reported for 0.67 written) and a call left dense defined its weight twice."""
    rng = np.random.default_rng(21)
    weights = [low_rank(rng, 64, 64) for _ in range(2)]
    function = helper.make_function("local", "G", ["x", "W"], ["y"],
                                    [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1, alpha=0.5)],
                                    opset_imports=[helper.make_opsetid("", 13)])
    constant = weights_from == "constant_node"
    nodes = ([helper.make_node("Constant", [], [f"W{i}"], value=numpy_helper.from_array(w, f"c{i}"))
              for i, w in enumerate(weights)] if constant else []) + [
        helper.make_node("G", ["x", "W0"], ["a"], domain="local", name="g0"), helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("G", ["b", "W1"], ["y"], domain="local", name="g1")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
                 [] if constant else [numpy_helper.from_array(w, f"W{i}") for i, w in enumerate(weights)],
                 functions=[function])
    model.opset_import.append(helper.make_opsetid("local", 1))
    result = onnx_alds.compress(model, keep_params=0.6, rank_multiple=1)
    from onnx_alds.layers import iter_total_params
    assert result.report.params_before == 2 * 64 * 64 == sum(iter_total_params(model))
    assert result.report.params_after == sum(iter_total_params(result.model))
    x = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    assert_same_outputs(model, result.model, x)
    dense = onnx_alds.compress(model, keep_params=0.9, rank_multiple=1, exclude=["W0"])
    onnx.checker.check_model(dense.model, full_check=True)
    assert_same_outputs(model, dense.model, x)


def test_an_uncalled_function_is_kept():
    """Inlining dropped a function that nothing calls (and the note counted it among those inlined)."""
    rng = np.random.default_rng(22)
    unused = helper.make_function("local", "Unused", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                                  opset_imports=[helper.make_opsetid("", 17)])
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"], name="first"),
             helper.make_node("Lin", ["a"], ["y"], domain="local", name="lin")]
    function = _linear_function_of_opset_13(rng)
    model = vector_model(nodes, ["w0"], rng, functions=[function, unused])
    model.opset_import.append(helper.make_opsetid("local", 1))
    result = onnx_alds.compress(model, keep_params=0.6, rank_multiple=1)
    assert [f.name for f in result.model.functions] == ["Unused"]
    assert any("1 that nothing calls are kept" in note for note in result.report.notes)
    onnx.checker.check_model(result.model, full_check=True)


def test_exclude_names_every_node_of_a_repeated_name():
    """Both If branches hold a node named 'mm': --exclude mm kept one dense and factorized the other, reported
    as 'mm_1', a name that is nowhere in the file."""
    rng = np.random.default_rng(23)

    def branch(name, weight):
        return helper.make_graph([helper.make_node("MatMul", ["x", weight], [f"{name}_y"], name="mm")], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [4, 64])])

    nodes = [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch("then", "u"),
                              else_branch=branch("else", "w")),
             helper.make_node("MatMul", ["x", "v"], ["z"], name="other")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64]),
                         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64]),
                  helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 64])],
                 [numpy_helper.from_array(low_rank(rng, 64, 64), name) for name in ("u", "w", "v")])
    result = onnx_alds.compress(model, keep_params=0.9, rank_multiple=1, exclude=["mm"])
    assert factorized(result) == ["other"]


def test_an_einsum_with_a_constant_is_noted_and_inputs_of_different_fixed_first_dims_are_named():
    rng = np.random.default_rng(24)
    nodes = [helper.make_node("Einsum", ["x", "e"], ["h"], name="ein", equation="bi,ij->bj"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm"),
             helper.make_node("MatMul", ["s", "w"], ["t"], name="mm2")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 64]),
                         helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 64]),
                  helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 64])],
                 [numpy_helper.from_array(low_rank(rng, 64, 64), "e"), numpy_helper.from_array(low_rank(rng, 64, 64), "w")])
    report = onnx_alds.analyze(model)
    assert any(note.startswith("1 Einsum nodes with a constant operand (first: 'ein')") for note in report.notes)
    from onnx_alds.errors import InputDataError
    from onnx_alds.inputs import load_inputs
    with pytest.raises(InputDataError, match=r"different first dims \('x' 5, 's' 2\)"):
        load_inputs(model, random=10)


def test_random_ids_stay_in_tables_behind_slices_offsets_and_picks_and_lengths_in_the_sequence():
    """Recommendation exports read ids through a Slice, a Gather that picks a column, or an Add of per-field
    offsets into one table; an LSTM reads sequence_lens. Random ids in [0, 100) overran tables of 7-57 rows
    and lengths over T = 12 were drawn: --calibration-random, bench and --keep-latency refused valid models."""
    from onnx_alds.inputs import index_bounds, load_inputs

    rng = np.random.default_rng(25)
    table = lambda name, rows: numpy_helper.from_array(rng.standard_normal((rows, 8)).astype(np.float32), name)
    nodes = [helper.make_node("Slice", ["item_ids", "one", "three", "one"], ["tail"]),  # (starts, ends, axes)
             helper.make_node("Gather", ["items", "tail"], ["e_items"]),
             helper.make_node("Gather", ["fields", "zero"], ["first_field"], axis=1),  # a column of the ids
             helper.make_node("Gather", ["small", "first_field"], ["e_small"]),
             helper.make_node("Add", ["cat_ids", "offsets"], ["shifted"]),
             helper.make_node("Gather", ["shared", "shifted"], ["e_shared"]),
             helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2]),  # time first, as LSTM reads it
             helper.make_node("LSTM", ["x_t", "W", "R", "", "lengths"], ["", "h"], hidden_size=4),
             helper.make_node("ReduceSum", ["e_items"], ["s1"], keepdims=0),
             helper.make_node("Identity", ["e_small"], ["s2"]), helper.make_node("Identity", ["e_shared"], ["s3"])]
    inits = [table("items", 40), table("small", 7), table("shared", 57),
             numpy_helper.from_array(np.array([0, 20, 50], np.int64), "offsets"),
             numpy_helper.from_array(np.array([1], np.int64), "one"), numpy_helper.from_array(np.array([3], np.int64), "three"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(rng.standard_normal((1, 16, 5)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "R")]
    model = make(nodes, [helper.make_tensor_value_info("item_ids", TensorProto.INT64, ["N", 3]),
                         helper.make_tensor_value_info("fields", TensorProto.INT64, ["N", 2]),
                         helper.make_tensor_value_info("cat_ids", TensorProto.INT64, ["N", 3]),
                         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12, 5]),
                         helper.make_tensor_value_info("lengths", TensorProto.INT32, ["N"])],
                 [helper.make_tensor_value_info("s1", TensorProto.FLOAT, None),
                  helper.make_tensor_value_info("s2", TensorProto.FLOAT, None),
                  helper.make_tensor_value_info("s3", TensorProto.FLOAT, None),
                  helper.make_tensor_value_info("h", TensorProto.FLOAT, None)], inits)
    assert index_bounds(model) == {"item_ids": 40, "fields": 7, "cat_ids": 7, "lengths": 13}
    inputs = load_inputs(model, random=16)
    run(model, {name: array for name, array in inputs.arrays.items()})  # (ONNX Runtime refused ids out of range)


def test_analyze_counts_only_constants_as_a_rows_weights():
    """A product with a graph input (A @ X of a graph net) showed that input's size as weights, and a batched 3-D
    constant showed 0: the rows summed to more than the model holds."""
    rng = np.random.default_rng(26)
    nodes = [helper.make_node("MatMul", ["adj", "x"], ["h"], name="propagate"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="transform"),
             helper.make_node("MatMul", ["fields", "per_field"], ["z"], name="per_field")]
    model = make(nodes, [helper.make_tensor_value_info("adj", TensorProto.FLOAT, [24, 24]),
                         helper.make_tensor_value_info("x", TensorProto.FLOAT, [24, 32]),
                         helper.make_tensor_value_info("fields", TensorProto.FLOAT, [5, 1, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [24, 16]),
                  helper.make_tensor_value_info("z", TensorProto.FLOAT, [5, 1, 16])],
                 [numpy_helper.from_array(low_rank(rng, 32, 16), "w"),
                  numpy_helper.from_array(rng.standard_normal((5, 32, 16)).astype(np.float32), "per_field")])
    report = onnx_alds.analyze(model)
    rows = {row.name: row for row in report.layers}
    assert rows["propagate"].params == 0 and rows["propagate"].macs == 24 * 24 * 32
    assert rows["per_field"].params == 5 * 32 * 16 and rows["per_field"].macs == 5 * 32 * 16
    assert sum(row.params for row in report.layers) == report.params_total


def test_inlining_keeps_sibling_branch_constants_and_converts_a_function_called_in_a_branch():
    """Two If branches each defining a Constant 'k' (same value) lost the else branch's copy when a function was
    inlined (refused as an internal bug); a function of ai.onnx 13 called inside the branches failed in the
    converting inliner ("Type unknown for else_y": it looks types up in the main graph only)."""
    rng = np.random.default_rng(27)
    w = low_rank(rng, 64, 64)
    linear = helper.make_function("local", "G", ["x", "W"], ["y"],
                                  [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1, alpha=0.5)],
                                  opset_imports=[helper.make_opsetid("", 13)])

    def branch(name, weight):
        return helper.make_graph(
            [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2.0], np.float32), "kv"))
             if name == "then" else helper.make_node("Constant", [], ["k2"], value=numpy_helper.from_array(
                 np.array([2.0], np.float32), "kv")),
             helper.make_node("G", ["x", weight], [f"{name}_g"], domain="local"),
             helper.make_node("Mul", [f"{name}_g", "k" if name == "then" else "k2"], [f"{name}_y"])], name, [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [4, 64])])

    def same_name_branch(name):
        return helper.make_graph([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
            np.array([3.0], np.float32), "cv")), helper.make_node("Mul", ["x", "c"], [f"{name}_z"])], name, [],
            [helper.make_tensor_value_info(f"{name}_z", TensorProto.FLOAT, [4, 64])])

    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", "W0"), else_branch=branch("else", "W1")),
             helper.make_node("If", ["cond"], ["z"], then_branch=same_name_branch("t2"),
                              else_branch=same_name_branch("e2"))]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64]),
                         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64]),
                  helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 64])],
                 [numpy_helper.from_array(w, "W0"), numpy_helper.from_array(w.T.copy(), "W1")], functions=[linear])
    model.opset_import.append(helper.make_opsetid("local", 1))
    onnx.checker.check_model(model, full_check=True)
    result = onnx_alds.compress(model, keep_params=0.8, rank_multiple=1)
    onnx.checker.check_model(result.model, full_check=True)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    for cond in (True, False):
        assert_same_outputs(model, result.model, {"x": x, "cond": np.array(cond)})


def test_exclude_takes_a_name_with_brackets_as_that_name():
    rng = np.random.default_rng(28)
    nodes = [helper.make_node("MatMul", ["x", "u"], ["h"], name="blk[0]"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="other")]
    model = vector_model(nodes, ["u", "w"], rng)
    result = onnx_alds.compress(model, keep_params=0.9, rank_multiple=1, exclude=["blk[0]"])  # (refused: no match)
    assert factorized(result) == ["other"]


def test_random_sequence_lengths_follow_the_given_input_shape():
    """A GRU whose time dim is dynamic: its sequence_lens were drawn in [0, 100) whatever --input-shape said."""
    from onnx_alds.inputs import index_bounds, load_inputs

    rng = np.random.default_rng(29)
    nodes = [helper.make_node("MatMul", ["x", "Wp"], ["p"], name="proj"),
             helper.make_node("Transpose", ["p"], ["pt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["pt", "W", "R", "", "lens"], ["", "h"], hidden_size=8)]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 32]),
                         helper.make_tensor_value_info("lens", TensorProto.INT32, ["N"])],
                 [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)],
                 [numpy_helper.from_array(low_rank(rng, 32, 32), "Wp"),
                  numpy_helper.from_array((0.1 * rng.standard_normal((1, 24, 32))).astype(np.float32), "W"),
                  numpy_helper.from_array((0.1 * rng.standard_normal((1, 24, 8))).astype(np.float32), "R")])
    assert index_bounds(model, {"x": (1, 12, 32), "lens": (1,)}) == {"lens": 13}
    inputs = load_inputs(model, random=16, input_shapes={"x": (1, 12, 32)})
    run(model, dict(inputs.arrays))


def test_a_graph_input_repeating_its_first_dim_names_the_calibration_batch_size():
    """A graph net (x [nodes, 16], adj [nodes, nodes]) failed calibration at the default batch with no word
    of the fix: batches of 16 rows cut adj to [16, 24]; one whole graph per run works."""
    rng = np.random.default_rng(30)
    nodes = [helper.make_node("MatMul", ["adj", "x"], ["h"], name="propagate"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="transform")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["nodes", 16]),
                         helper.make_tensor_value_info("adj", TensorProto.FLOAT, ["nodes", "nodes"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["nodes", 16])],
                 [numpy_helper.from_array(low_rank(rng, 16, 16), "w")])
    from onnx_alds.errors import InputDataError
    from onnx_alds.inputs import InputSet

    graph = InputSet({"x": rng.standard_normal((24, 16)).astype(np.float32),
                      "adj": (rng.random((24, 24)) < 0.2).astype(np.float32)})
    with pytest.raises(InputDataError, match="input 'adj' repeats its first dim 'nodes'.*--calibration-batch-size"):
        onnx_alds.compress(model, keep_params=0.8, rank_multiple=1, input_shapes={"adj": (24, 24)}, calibration=graph)
    result = onnx_alds.compress(model, keep_params=0.8, rank_multiple=1, input_shapes={"adj": (24, 24)},
                                calibration=graph, calibration_batch_size=24)
    assert factorized(result) == ["transform"]


def _reference(name: str, refers_to: str, kind=onnx.AttributeProto.INTS) -> onnx.AttributeProto:
    """An attribute of a function body's node that takes the value of the function's attribute ``refers_to``."""
    reference = onnx.AttributeProto()
    reference.name, reference.ref_attr_name, reference.type = name, refers_to, kind
    return reference


def _conv_function(name: str, attribute: str, default: list[int]) -> onnx.FunctionProto:
    """``pkg::name(x, w)``: a 3x3 Conv whose pads come from the function's attribute ``attribute`` (default
    ``default``)."""
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])
    conv.attribute.append(_reference("pads", attribute))
    return helper.make_function("pkg", name, ["x", "w"], ["y"], [conv], [helper.make_opsetid("", 18)], attributes=[],
                                attribute_protos=[helper.make_attribute(attribute, default)])


def test_a_function_attributes_default_survives_the_inlining():
    """A local function's Conv took its pads from an attribute whose default (1) the calls left out: onnx's inliner
    dropped the default, so the written Convs had no padding (output off by 10 %, exit 0, MACs 8.92M for 14.2M)."""
    rng = np.random.default_rng(9)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3])
    conv.attribute.append(_reference("pads", "pd"))
    function = helper.make_function("pkg", "ConvD", ["x", "w", "b"], ["y"], [conv], [helper.make_opsetid("", 18)],
                                    attributes=[], attribute_protos=[helper.make_attribute("pd", [1, 1, 1, 1])])
    nodes = [helper.make_node("ConvD", ["X", "W1", "B1"], ["a"], domain="pkg", name="c1"),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("ConvD", ["r", "W2", "B2"], ["b"], domain="pkg",
                                                                       name="c2"),
             helper.make_node("GlobalAveragePool", ["b"], ["p"]), helper.make_node("Flatten", ["p"], ["Y"])]
    inits = [numpy_helper.from_array(low_rank(rng, 16, 8 * 9).reshape(16, 8, 3, 3), "W1"),
             numpy_helper.from_array(np.ones(16, np.float32), "B1"),
             numpy_helper.from_array(low_rank(rng, 16, 16 * 9).reshape(16, 16, 3, 3), "W2"),
             numpy_helper.from_array(np.ones(16, np.float32), "B2")]
    model = make(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8, 8, 8])],
                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 16])], inits, opset=18,
                 functions=[function])
    model.opset_import.append(helper.make_opsetid("pkg", 1))
    result = onnx_alds.compress(model, keep_flops=0.7, rank_multiple=1)
    assert result.report.macs_before == 64 * (16 * 8 + 16 * 16) * 9  # 8x8 outputs: padded
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)
    expected, got = run(model, {"X": x})[0], run(result.model, {"X": x})[0]
    assert factorized(result) and np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_layers_in_a_loop_inside_a_local_function_are_found():
    """A function holding a Loop whose body multiplies by a weight was not inlined (only a function's top-level
    nodes were looked at): its layers were missing, the MACs 8.19k for 40.96k and --keep-flops 0.7 kept 0.93."""
    rng = np.random.default_rng(4)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_in", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["x_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [4, 64])])
    function = helper.make_function("pkg", "Rec", ["x", "w", "n", "c"], ["y"],
                                    [helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body)],
                                    [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("Rec", ["X", "W1", "M", "C"], ["h"], domain="pkg", name="r1"),
             helper.make_node("Rec", ["h", "W2", "M", "C"], ["h2"], domain="pkg", name="r2"),
             helper.make_node("MatMul", ["h2", "W3"], ["Y"], name="head")]
    inits = [numpy_helper.from_array(low_rank(rng, 64, 64, 16), "W1"), numpy_helper.from_array(low_rank(rng, 64, 64, 16), "W2"),
             numpy_helper.from_array(low_rank(rng, 64, 32, 16), "W3"), numpy_helper.from_array(np.array(2, np.int64), "M"),
             numpy_helper.from_array(np.array(True), "C")]
    model = make(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 32])], inits, opset=18, functions=[function])
    model.opset_import.append(helper.make_opsetid("pkg", 1))
    analysis = onnx_alds.analyze(model)
    assert len(analysis.layers) == 3 and analysis.macs_total == 4 * (64 * 64 * 2 + 64 * 32)
    result = onnx_alds.compress(model, keep_flops=0.7, rank_multiple=1)
    assert result.report.macs_after <= 0.7 * result.report.macs_before and len(factorized(result)) == 3


@pytest.mark.parametrize("calls", ["one function, two equal constants", "two functions, one constant each"])
def test_equal_constants_of_functions_called_once_are_two_weights(calls):
    """Inlined Constants were merged whenever their values were equal: two weights the file stores apart became
    one 'shared' weight (left dense, 'weights 8.19k' for a file of 12.29k, or nothing to compress)."""
    weight = numpy_helper.from_array(low_rank(np.random.default_rng(7), 64, 64, 8), "w")
    opset = [helper.make_opsetid("", 18)]

    def linear(name: str, count: int) -> onnx.FunctionProto:
        nodes = []
        for k in range(count):
            nodes += [helper.make_node("Constant", [], [f"w{k}"], value=weight),
                      helper.make_node("MatMul", [f"h{k}" if k else "x", f"w{k}"], [f"h{k + 1}" if k + 1 < count else "y"])]
        return helper.make_function("pkg", name, ["x"], ["y"], nodes, opset)

    functions = [linear("Two", 2)] if calls.startswith("one") else [linear("A", 1), linear("B", 1)]
    nodes = [helper.make_node(f.name, ["X" if i == 0 else f"t{i}"], [f"t{i + 1}" if i + 1 < len(functions) else "Y"],
                              domain="pkg", name=f"call{i}") for i, f in enumerate(functions)]
    model = make(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 64])], [], opset=18, functions=functions)
    model.opset_import.append(helper.make_opsetid("pkg", 1))
    result = onnx_alds.compress(model, keep_params=0.8, rank_multiple=1)
    assert result.report.params_before == 2 * 64 * 64 and len(factorized(result)) == 2
    assert not any("stored once" in note for note in result.report.notes)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    expected, got = run(model, {"X": x})[0], run(result.model, {"X": x})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def _linear_function(name: str, weight: str, calls: tuple[str, ...] = (), doc: str = "") -> onnx.FunctionProto:
    """``pkg::name(x) = x @ <Constant weight>`` (then each function in ``calls``, in turn)."""
    rng = np.random.default_rng(len(name))
    constant = helper.make_node("Constant", [], [weight], value=numpy_helper.from_array(low_rank(rng, 32, 32, 4), weight))
    constant.doc_string = doc
    nodes = [constant, helper.make_node("MatMul", ["x", weight], ["h0"])]
    for index, callee in enumerate(calls):
        nodes.append(helper.make_node(callee, [f"h{index}"], [f"h{index + 1}"], domain="pkg"))
    nodes.append(helper.make_node("Identity", [f"h{len(calls)}"], ["y"]))
    return helper.make_function("pkg", name, ["x"], ["y"], nodes, [helper.make_opsetid("", 18), helper.make_opsetid("pkg", 1)])


def _calling(functions, called: str) -> onnx.ModelProto:
    model = make([helper.make_node(called, ["X"], ["Y"], domain="pkg", name="call")],
                 [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 32])],
                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 32])], [], opset=18, functions=functions)
    model.opset_import.append(helper.make_opsetid("pkg", 1))
    return model


def test_functions_nothing_calls_are_kept_whole_with_what_they_call():
    """A function nothing calls, calling another: the first was kept, the second dropped (a dangling call),
    its Constants carried onnx-alds' internal marks for doc strings, and the note counted both as inlined."""
    functions = [_linear_function("Used", "wu"), _linear_function("Unused", "wn", calls=("Inner",), doc="unused doc"),
                 _linear_function("Inner", "wi")]
    result = onnx_alds.compress(_calling(functions, "Used"), keep_params=0.9, rank_multiple=1)
    kept = {f.name: f for f in result.model.functions}
    assert set(kept) == {"Unused", "Inner"}
    assert kept["Unused"].node[0].doc_string == "unused doc"
    assert any(note.startswith("inlined the calls of 1 model-local functions") for note in result.report.notes)
    onnx.checker.check_model(result.model, full_check=True)


def test_what_the_inliner_misreads_is_refused_naming_it():
    overloaded = [_linear_function("Blk", "wa"), _linear_function("Blk", "wb")]
    overloaded[0].overload, overloaded[1].overload = "a", "b"
    model = _calling(overloaded, "Blk")
    model.graph.node[0].overload = "a"
    model.ir_version = 10
    with pytest.raises(UnsupportedModelError, match="'pkg::Blk' has overloads"):
        onnx_alds.compress(model, keep_params=0.9)
    tensor_attribute = _linear_function("Lin", "w")
    tensor_attribute.node[0].attribute[0].CopyFrom(_reference("value", "W", onnx.AttributeProto.TENSOR))
    tensor_attribute.attribute.append("W")
    model = _calling([tensor_attribute], "Lin")
    model.graph.node[0].attribute.append(helper.make_attribute("W", numpy_helper.from_array(np.eye(32, dtype=np.float32))))
    with pytest.raises(UnsupportedModelError, match="takes a weight as a tensor attribute .'W'."):
        onnx_alds.compress(model, keep_params=0.9)


def test_a_forwarded_attribute_whose_inner_default_the_inliner_drops_is_refused():
    """Outer forwards pads=@pads (no default) to Inner (default [1,1,1,1]), the call leaves it out: ONNX Runtime
    pads by 1, the inlined model did not (output off by 464 %, exit 0)."""
    rng = np.random.default_rng(3)
    inner = _conv_function("Inner", "pads", [1, 1, 1, 1])
    call = helper.make_node("Inner", ["x", "w"], ["y"], domain="pkg")
    call.attribute.append(_reference("pads", "pads"))
    outer = helper.make_function("pkg", "Outer", ["x", "w"], ["y"], [call],
                                 [helper.make_opsetid("", 18), helper.make_opsetid("pkg", 1)], attributes=["pads"])
    model = make([helper.make_node("Outer", ["X", "W"], ["Y"], domain="pkg")],
                 [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8, 8, 8])],
                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 16, 8, 8])],
                 [numpy_helper.from_array(low_rank(rng, 16, 72, 4).reshape(16, 8, 3, 3), "W")], opset=18,
                 functions=[inner, outer])
    model.opset_import.append(helper.make_opsetid("pkg", 1))
    with pytest.raises(UnsupportedModelError, match="forwards its attribute 'pads' to 'Inner'"):
        onnx_alds.compress(model, keep_params=0.9)


def test_dead_constant_nodes_count_in_the_weights_the_note_says_were_dropped():
    """'4 nodes reach no graph output (...; 0 weights)' while 2048 Constant-node weights went with them."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Constant", [], ["dead_w"], value=numpy_helper.from_array(low_rank(rng, 32, 64), "dead_w"),
                              name="dead_const"),
             helper.make_node("MatMul", ["X", "dead_w"], ["unused"], name="dead_mm"),
             helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")]
    model = make(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 32])],
                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 32])],
                 [numpy_helper.from_array(low_rank(rng, 32, 32), "W")])
    notes = onnx_alds.compress(model, keep_params=0.9, rank_multiple=1).report.notes
    assert any("2 nodes reach no graph output" in note and "2048 weights" in note for note in notes)


def test_what_the_inliner_reads_right_is_not_refused():
    """Refused at first: a forwarded attribute every call sets, a tensor attribute that is a Reshape's shape (no
    weight), and a function nothing calls that takes a tensor attribute."""
    rng = np.random.default_rng(3)
    inner = _conv_function("Inner", "pads", [0, 0, 0, 0])
    call = helper.make_node("Inner", ["x", "w"], ["c"], domain="pkg")
    call.attribute.append(_reference("pads", "pads"))
    shape = helper.make_node("Constant", [], ["s"])
    shape.attribute.append(_reference("value", "shape", onnx.AttributeProto.TENSOR))
    outer = helper.make_function("pkg", "Outer", ["x", "w"], ["y"],
                                 [call, shape, helper.make_node("Reshape", ["c", "s"], ["y"])],
                                 [helper.make_opsetid("", 18), helper.make_opsetid("pkg", 1)], attributes=["pads", "shape"])
    unused = helper.make_function("pkg", "Unused", ["x"], ["y"], [shape, helper.make_node("Reshape", ["x", "s"], ["y"])],
                                  [helper.make_opsetid("", 18)], attributes=["shape"])
    unused.node[0].output[0] = "s"
    the_call = helper.make_node("Outer", ["X", "W"], ["Y"], domain="pkg", pads=[1, 1, 1, 1],
                                shape=numpy_helper.from_array(np.array([1, 16, 64], np.int64)))
    model = make([the_call], [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8, 8, 8])],
                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 16, 64])],
                 [numpy_helper.from_array(low_rank(rng, 16, 72, 4).reshape(16, 8, 3, 3), "W")], opset=18,
                 functions=[inner, outer, unused])
    model.opset_import.append(helper.make_opsetid("pkg", 1))
    result = onnx_alds.compress(model, keep_params=0.9, rank_multiple=1)
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)
    expected, got = run(model, {"X": x})[0], run(result.model, {"X": x})[0]
    assert factorized(result) and np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert [f.name for f in result.model.functions] == ["Unused"]


def test_a_default_lost_through_a_chain_of_forwarded_attributes_is_refused():
    """H(r) -> F(p=@r) -> G(q=@p, default [1,1,1,1]), H called without r: every call of F sets p (by reference),
    yet q is left out and the inliner dropped G's default (output off by 69 %, exit 0)."""
    rng = np.random.default_rng(5)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("pkg", 1)]
    functions = [_conv_function("G", "q", [1, 1, 1, 1])]
    for name, callee, own, forwarded in (("F", "G", "p", "q"), ("H", "F", "r", "p")):
        call = helper.make_node(callee, ["x", "w"], ["y"], domain="pkg")
        call.attribute.append(_reference(forwarded, own))
        functions.append(helper.make_function("pkg", name, ["x", "w"], ["y"], [call], opsets, attributes=[own]))
    model = make([helper.make_node("H", ["X", "W"], ["c"], domain="pkg"), helper.make_node("GlobalAveragePool", ["c"], ["Y"])],
                 [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8, 8, 8])],
                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 16, 1, 1])],
                 [numpy_helper.from_array(low_rank(rng, 16, 72, 3).reshape(16, 8, 3, 3), "W")], opset=18,
                 functions=functions)
    model.opset_import.append(helper.make_opsetid("pkg", 1))
    with pytest.raises(UnsupportedModelError, match="forwards its attribute 'p' to 'G'"):
        onnx_alds.compress(model, keep_params=0.9)
    model.graph.node[0].attribute.append(helper.make_attribute("r", [1, 1, 1, 1]))  # set at the call: inlined right
    result = onnx_alds.compress(model, keep_params=0.9, rank_multiple=1)
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)
    expected, got = run(model, {"X": x})[0], run(result.model, {"X": x})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_nested_functions_of_another_opset_whose_ops_did_not_change_are_inlined():
    """Outer (opset 17) calling Inner (opset 17) in a model at opset 18: the inliner's conversion needed the
    type of Outer's inner value and stopped on an assertion ("Type unknown for A__1"): refused. MatMul and Relu
    mean the same at 17 and 18, so the functions are taken at the model's opset."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)

    def low_rank(name: str) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal((32, 4)) @ rng.standard_normal((4, 32))).astype(
            np.float32), name)

    inner = helper.make_function("local", "Inner", ["X"], ["Y"], [
        helper.make_node("Constant", [], ["W"], value=low_rank("Wi")), helper.make_node("MatMul", ["X", "W"], ["M"]),
        helper.make_node("Relu", ["M"], ["Y"])], [helper.make_opsetid("", 17)])
    outer = helper.make_function("local", "Outer", ["X"], ["Y"], [
        helper.make_node("Inner", ["X"], ["A"], domain="local"),
        helper.make_node("Constant", [], ["W2"], value=low_rank("Wo")), helper.make_node("MatMul", ["A", "W2"], ["Y"])],
        [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    graph = helper.make_graph([helper.make_node("Outer", ["x"], ["a"], domain="local", name="outer"),
                               helper.make_node("MatMul", ["a", "wm"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], [low_rank("wm")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                              functions=[inner, outer])
    model.ir_version = 8
    result = onnx_alds.compress(model, keep_params=0.5, rank_multiple=4)
    assert sum(bool(row.groups) for row in result.report.layers) == 3
    x = rng.standard_normal((5, 32)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (model, result.model)]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-3, atol=1e-3 * float(np.abs(run[0]).max()))


def test_random_ids_respect_a_table_inside_a_local_function_or_a_subgraph():
    """An exporter's module functions (torch's export_modules_as_functions, the dynamo exporter): the embedding
    Gather sits in a function body whose table is a formal input bound to an outer initializer, and ids were drawn
    in [0, 100) for a 1000-row table (calibration unlike the plain export's). A Gather in an If branch reads the
    outer ids by name."""
    from onnx_alds.inputs import index_bounds, random_inputs

    rng = np.random.default_rng(23)
    embedding = helper.make_function("mods", "Embedding", ["table", "ids"], ["e"],
                                     [helper.make_node("Gather", ["table", "ids"], ["e"])],
                                     [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Embedding", ["table", "ids"], ["e"], domain="mods", name="/emb/Embedding"),
             helper.make_node("MatMul", ["e", "w"], ["y"])]
    model = make(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 32])],
                 [numpy_helper.from_array(rng.standard_normal((1000, 32)).astype(np.float32), "table"),
                  numpy_helper.from_array(low_rank(rng, 32, 32), "w")])
    model.opset_import.append(helper.make_opsetid("mods", 1))
    model.functions.append(embedding)
    onnx.checker.check_model(model, full_check=True)
    assert index_bounds(model) == {"ids": 1000}
    ids = random_inputs(model, 64, seed=0).arrays["ids"]
    assert ids.max() >= 100 and ids.max() < 1000  # 384 draws in [0, 1000): some above 100
    # the same lookup inside an If's branch (the outer ids and table read by name)
    branch = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e_then"])], "then", [],
                               [helper.make_tensor_value_info("e_then", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e_else"])], "else", [],
                              [helper.make_tensor_value_info("e_else", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["flag"], ["e"], then_branch=branch, else_branch=other),
             helper.make_node("MatMul", ["e", "w"], ["y"])]
    model = make(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 32])],
                 [numpy_helper.from_array(rng.standard_normal((1000, 32)).astype(np.float32), "table"),
                  numpy_helper.from_array(low_rank(rng, 32, 32), "w"),
                  numpy_helper.from_array(np.array(True), "flag")])
    assert index_bounds(model) == {"ids": 1000}


def test_a_weight_read_by_shape_is_not_shared():
    """torch's dynamo exporter without its optimizer (optimize=False) builds a bias-free Conv's zero bias as
    Expand(CastLike(0, x), Shape(weight, end=1)): the Shape node read the weight's dims only, yet every such
    Conv was left dense as 'shared by 2 uses'. Shape/Size of an initializer become constants, with a note."""
    from onnx_alds.layers import fold_weight_shapes

    rng = np.random.default_rng(24)
    weight = (rng.standard_normal((32, 2)) @ rng.standard_normal((2, 16 * 9))).reshape(32, 16, 3, 3) / 12
    nodes = [helper.make_node("Shape", ["w"], ["w_rows"], name="node_Shape_0", end=1),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
             helper.make_node("CastLike", ["zero", "x"], ["zero_like"]),
             helper.make_node("Expand", ["zero_like", "w_rows"], ["bias"]),
             helper.make_node("Conv", ["x", "w", "bias"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, 8, 8])],
                 [numpy_helper.from_array(weight.astype(np.float32), "w")])
    feeds = {"x": rng.standard_normal((2, 16, 8, 8)).astype(np.float32)}
    result = onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)
    assert factorized(result) == ["conv"]
    assert any("Shape/Size nodes read a weight's dims only (first: 'node_Shape_0')" in note
               for note in result.report.notes)
    assert_same_outputs(model, result.model, feeds)  # (rank 2 weight: the factorization is exact)
    # every start/end of Shape (opset 15) and Size, as ONNX Runtime computes them
    probes = [("Shape", {}), ("Shape", {"start": 1}), ("Shape", {"start": -3, "end": -1}),
              ("Shape", {"start": -9, "end": 10}), ("Shape", {"start": 3, "end": 1}), ("Size", {})]
    nodes = [helper.make_node(op, ["w"], [f"s{i}"], name=f"probe{i}", **attributes)
             for i, (op, attributes) in enumerate(probes)]
    model = make(nodes, [], [helper.make_tensor_value_info(f"s{i}", TensorProto.INT64, None)
                             for i in range(len(probes))], [numpy_helper.from_array(weight.astype(np.float32), "w")])
    expected = run(model, {})
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_weight_shapes(folded) == {f"probe{i}": "w" for i in range(len(probes))}
    assert [node.op_type for node in folded.graph.node] == ["Constant"] * len(probes)
    for want, got in zip(expected, run(folded, {})):
        np.testing.assert_array_equal(want, got)


def test_random_ids_respect_a_table_computed_at_run_time():
    """An embedding table dequantized (DequantizeLinear of an int8 table, weight-only quantized exports) or
    concatenated from two constants: ids were drawn in [0, 100), out of range for a 30-row table (the run
    failed) and a tenth of a 1000-row one. Its dims now come from shape inference."""
    from onnx_alds.inputs import index_bounds, random_inputs

    rng = np.random.default_rng(25)
    nodes = [helper.make_node("DequantizeLinear", ["q_table", "scale", "zero"], ["table"]),
             helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])]
    model = make(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 32])],
                 [numpy_helper.from_array(rng.integers(-127, 127, (1000, 32)).astype(np.int8), "q_table"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "zero"),
                  numpy_helper.from_array(low_rank(rng, 32, 32), "w")])
    assert index_bounds(model) == {"ids": 1000}
    nodes = [helper.make_node("Concat", ["learned", "extra"], ["table"], axis=0),
             helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])]
    model = make(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 32])],
                 [numpy_helper.from_array(rng.standard_normal((26, 32)).astype(np.float32), "learned"),
                  numpy_helper.from_array(rng.standard_normal((4, 32)).astype(np.float32), "extra"),
                  numpy_helper.from_array(low_rank(rng, 32, 32), "w")])
    assert index_bounds(model) == {"ids": 30}
    ids = random_inputs(model, 16, seed=0).arrays["ids"]
    assert ids.max() < 30
    run(model, {"ids": ids})  # (ids over 29 fail in ONNX Runtime)


def test_a_weight_read_by_shape_in_an_ir3_model_is_not_shared():
    """IR 3 lists every initializer as a graph input, which onnx-alds reads as constants (as ONNX Runtime
    does); the Shape fold took every listed input as overridable, so an IR 3 model's Shape(weight) still made
    the weight 'shared' (the rule everywhere else: overridable from IR 4 on)."""
    rng = np.random.default_rng(26)
    weight = (rng.standard_normal((32, 2)) @ rng.standard_normal((2, 16 * 9))).reshape(32, 16, 3, 3) / 12
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0], np.int64), "first"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("Shape", ["w"], ["dims"], name="node_Shape_0"),
             helper.make_node("Gather", ["dims", "first"], ["rows"]),
             helper.make_node("Expand", ["zero", "rows"], ["bias"]),
             helper.make_node("Conv", ["x", "w", "bias"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 8, 8])] + [
        helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    model = make(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32, 8, 8])], inits,
                 opset=8, ir=3)
    result = onnx_alds.compress(model, keep_params=0.5, rank_multiple=1)
    assert factorized(result) == ["conv"]
    assert any("Shape/Size nodes read a weight's dims only" in note for note in result.report.notes)
    assert_same_outputs(model, result.model, {"x": rng.standard_normal((2, 16, 8, 8)).astype(np.float32)})


@pytest.mark.parametrize("method", ["alds", "damage"])
def test_matmul_with_the_weight_first_is_fitted_to_its_calibration_columns(method):
    """With calibration, every ``W @ x`` MatMul was kept dense ("data-aware factors are not supported yet") and
    the budget errors blamed the rank multiple. Its input vectors are x's columns: fitted to them, factors of
    a weight that is low rank on the inputs' span reproduce the outputs, where data-free factors of the
    same rank cannot."""
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(3)
    span = rng.standard_normal((48, 6))  # every input column lies in a 6-dimensional subspace
    weight = rng.standard_normal((40, 48)).astype(np.float32)  # full rank: only the inputs' span makes it low rank
    nodes = [helper.make_node("MatMul", ["w", "x"], ["h"], name="wx"),
             helper.make_node("Relu", ["h"], ["y"])]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 48, 12])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 40, 12])],
                 [numpy_helper.from_array(weight, "w")])

    def columns(samples: int) -> np.ndarray:
        return np.einsum("cr,nrt->nct", span, rng.standard_normal((samples, 6, 12))).astype(np.float32)

    calibration = InputSet({"x": columns(32)}, source="test")
    result = onnx_alds.compress(model, keep_params=0.3, rank_multiple=1, method=method, calibration=calibration)
    row = {row.name: row for row in result.report.layers}["wx"]
    assert row.rank and row.rank >= 6 and row.rank * (40 + 48) <= 0.3 * 40 * 48, (row.rank, row.skip_reason)
    import onnxruntime as ort

    def run(proto: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, held_out)[0]

    held_out = {"x": columns(8)}
    expected, got = run(model), run(result.model)
    assert np.linalg.norm(got - expected) <= 1e-2 * np.linalg.norm(expected)  # (up to the moments' shrinkage)
    free = onnx_alds.compress(model, keep_params=0.3, rank_multiple=1)
    blind = run(free.model)
    assert np.linalg.norm(blind - expected) > 0.1 * np.linalg.norm(expected)


def test_an_unreachable_budget_held_by_shared_weights_does_not_advise_a_lower_rank_multiple(capsys):
    """ALBERT shares its layers' weights (kept dense, 98 % of the MACs): the unreachable-budget error ended "or
    lower --rank-multiple", which cannot help; it still says so where finer ranks could reach the budget."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["h2"], name="second"),
             helper.make_node("MatMul", ["h2", "u"], ["y"], name="own")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                 [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
                  numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "u")])
    for prune in (None, "combined"):
        with pytest.raises(BudgetError) as caught:
            onnx_alds.compress(model, keep_flops=0.5, rank_multiple=16, prune=prune,
                               calibration=None if prune is None else
                               onnx_alds.inputs.InputSet({"x": rng.standard_normal((8, 64)).astype(np.float32)},
                                                         source="t"))
        assert "shared" in str(caught.value) and "rank-multiple" not in str(caught.value), str(caught.value)
    with pytest.raises(BudgetError, match="lower --rank-multiple"):  # the own layer alone could reach 0.9 at rank 1
        onnx_alds.compress(model, keep_flops=0.9, rank_multiple=16)


@pytest.mark.parametrize("option", ["bias_correction", "affine_correction"])
def test_a_weight_first_matmul_of_a_1d_input_takes_its_output_shift_as_it_is(option):
    """y = W @ x with x 1-D [c] gives a 1-D y [f]: --bias-correction / --affine-correction added their shift as
    [f, 1] (right for x [c, n]), and the written model failed the output check as a bug in onnx-alds."""
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(4)
    span = rng.standard_normal((16, 3))
    weight = rng.standard_normal((12, 16)).astype(np.float32)
    model = make([helper.make_node("MatMul", ["w", "x"], ["y"], name="wx")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [12])], [numpy_helper.from_array(weight, "w")])
    stacked = (span @ rng.standard_normal((3, 40)) + 1.0).T.astype(np.float32)  # 40 inputs of 16, off-centre
    result = onnx_alds.compress(model, keep_params=0.6, rank_multiple=1, **{option: True},
                                calibration=InputSet({"x": stacked.reshape(-1)}, source="t"))
    onnx.checker.check_model(result.model, full_check=True)
    x = (span @ rng.standard_normal(3) + 1.0).astype(np.float32)
    import onnxruntime as ort

    got = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert got.shape == (12,) and np.linalg.norm(got - weight @ x) <= 0.2 * np.linalg.norm(weight @ x)


def test_a_gemm_whose_constant_a_is_read_through_a_transpose_is_named_as_such():
    """Gemm(Transpose(W), x): the layer was shown with B's shape, 0 weights and "weight is an input of its
    graph"; a Gemm whose constant is A is left as it is, whether A is stored or computed from constants."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
             helper.make_node("Gemm", ["wt", "x"], ["y"], name="gemm_a")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, 32])],
                 [numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "w")])
    (row,) = onnx_alds.analyze(model).layers
    assert row.skip_reason == "the constant is the Gemm's first input A (y = A·B): left as it is"
    assert row.params == 64 * 128 and row.weight_shape == (128, 64)


def test_keep_flops_counts_dynamic_dims_at_the_calibration_arrays_sizes():
    """--keep-flops with calibration arrays of 16 tokens each asked for --input-shape (the arrays say the size);
    their sizes count the MACs now, with a note. Data-free, the flag is still needed."""
    from onnx_alds.inputs import InputSet

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 32])],
                 [numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "w1"),
                  numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w2")])
    with pytest.raises(UnsupportedModelError, match="--input-shape"):
        onnx_alds.compress(model, keep_flops=0.6, rank_multiple=4)
    calibration = InputSet({"x": rng.standard_normal((12, 16, 32)).astype(np.float32)}, source="t")
    report = onnx_alds.compress(model, keep_flops=0.6, rank_multiple=4, calibration=calibration).report
    assert report.macs_before == 16 * 2 * 32 * 64 and report.achieved <= 0.6
    assert any(note.startswith("MACs counted at the calibration arrays' sizes (x:1x16x32)") for note in report.notes)


def test_a_dequantization_written_out_is_a_quantized_weight_not_a_weight_norm():
    """int8 weight → Cast → Mul(scale) → MatMul was "computed from constants by Mul nodes (e.g. a weight norm):
    fold the constants first", which turns the int8 weight back into float32; it is a quantized weight."""
    rng = np.random.default_rng(3)
    ints = rng.integers(-100, 100, (64, 32)).astype(np.int8)
    nodes = [helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["qf", "scale"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = make(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                 [numpy_helper.from_array(ints, "q"), numpy_helper.from_array(np.float32(0.01), "scale")])
    (row,) = onnx_alds.analyze(model).layers
    assert row.skip_reason.startswith("quantized weight (int8 → Cast → Mul: a dequantization written out)"), \
        row.skip_reason


def test_input_shape_against_a_fixed_dim_shows_the_declared_dims_and_a_shape_that_fits():
    """[batch, 3, x_H, x_W] given 1x4x64x64 said "the model fixes it to batchx3xx_Hxx_W ... e.g. x:1x3x1x1"
    (names run into the separators; an example a UNet cannot run at)."""
    from onnx_alds.errors import InputDataError
    from onnx_alds.model_io import check_input_shapes

    model = make(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "x_H", "x_W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, "x_H", "x_W"])], [])
    with pytest.raises(InputDataError) as info:
        check_input_shapes(model, {"x": (1, 4, 64, 64)})
    assert "declares it [batch, 3, x_H, x_W], which fixes 3 where 4 is given" in str(info.value)
    assert str(info.value).endswith("e.g. x:1x3x64x64")


def test_input_shape_for_a_scalar_input_says_it_has_no_dims():
    """``s:1`` for a rank-0 input said "which has 0; give all of them, e.g. s:", an example that cannot be parsed."""
    from onnx_alds.errors import InputDataError
    from onnx_alds.model_io import check_input_shapes

    model = make([helper.make_node("Mul", ["x", "s"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                  helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [])
    with pytest.raises(InputDataError, match=r"for 's', a scalar \(rank 0\), which has no dims to give; leave it out$"):
        check_input_shapes(model, {"s": (1,)})
