"""onnx-alds against, and together with, ONNX Runtime's INT8 quantization, on the reference models.

For each model, in one run (``docs/INT8.md`` has the table this writes and what it means):

- ``fp32``: the original model;
- ``int8-dyn``: ``onnxruntime.quantization.quantize_dynamic`` (per-channel weights, int8 weights,
  activations quantized at run time);
- ``int8-qdq``: ``quantize_static`` in QDQ format, per-channel int8 weights, uint8 activations, MinMax
  calibration over the model's ``calibration.npz`` (the same inputs onnx-alds calibrates with);
- ``alds``: ``onnx-alds compress --keep-flops 0.5 --rank-multiple 16 --calibration calibration.npz``
  (``--order pointwise-first`` on the CNNs);
- ``alds+int8-qdq``: the ``alds`` model, then the same static quantization (the recipe of docs/INT8.md);
- ``alds+int8-dyn``: the ``alds`` model, then the same dynamic quantization.

Every quantization runs on the output of ``onnxruntime.quantization.shape_inference.quant_pre_process``
(as ONNX Runtime recommends). For every variant: file size, quality against the original on the held-out
data (``onnx_alds.sweep.evaluate``: ``onnx_alds.validate.compare_output`` and the nearest-neighbour
figures), quality against its own fp32 parent (for ``alds+int8-*`` that is ``alds``: the drop INT8 adds
on top of the factorization), and CPU latency at one batch size, every variant of the model in one
interleaved ``onnx_alds.bench`` run (speedup = median latency of fp32 / median of the variant).

Then it checks that the compressed model quantized cleanly: every factor node (``<node>.enc`` /
``<node>.dec``) of the ``alds`` model must read its weight from a per-channel ``DequantizeLinear`` (one
scale per output channel) and its activation from a ``DequantizeLinear`` in ``alds+int8-qdq``, and run
as ``ConvInteger``/``MatMulInteger`` in ``alds+int8-dyn``; it records the relative quantization error of
every weight (dense weights of ``int8-qdq`` against the factor weights of ``alds+int8-qdq``).

The models and their data come from ``tools/sweep.py`` (``reference_specs``: ``models/cache/<name>/``,
built by ``python -m models.build NAME``); the MNIST ResNet is the bundled demo asset
(``onnx_alds/data/``). Outputs: ``docs/results/int8_compare.json`` (every figure, the checks, the
machine and its load) and ``docs/results/int8_compare.csv``; the table is printed.

    python tools/int8_compare.py                                  # the three models (about 15 min on 2 loaded cores)
    python tools/int8_compare.py --models mnist-resnet --bench-target-s 5
    python tools/int8_compare.py --quick                          # small eval sets, short timings (a smoke run,
                                                                  # written to docs/results/quick)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import logging
import math
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

from _tool import check_known, check_output_folder, keep_ratio, positive_float  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from onnx_alds.argtypes import positive_int, thread_count  # noqa: E402
from onnx_alds.errors import InputDataError, OnnxAldsError  # noqa: E402

RESULTS = ROOT / "docs" / "results"  # the published results; a --quick run writes to RESULTS / "quick"


_REF = None


def reference_sweep():
    """tools/sweep.py (not a package): its reference models and how their data is read. Imported on
    first use, so that the quantization helpers below work without it (tests/test_int8_chain.py)."""
    global _REF
    if _REF is None:
        spec = importlib.util.spec_from_file_location("_onnx_alds_reference_sweep", ROOT / "tools" / "sweep.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _REF = module
    return _REF

DEFAULT_MODELS = ("mnist-resnet", "efficientnet-lite0", "minilm")
VARIANTS = ("fp32", "int8-dyn", "int8-qdq", "alds", "alds+int8-qdq", "alds+int8-dyn")
PARENT = {"fp32": None, "int8-dyn": "fp32", "int8-qdq": "fp32", "alds": "fp32", "alds+int8-qdq": "alds",
          "alds+int8-dyn": "alds"}
CNN_MODELS = ("mnist-resnet", "efficientnet-lite0")   # compressed with --order pointwise-first
BATCH = {"mnist-resnet": 32, "efficientnet-lite0": 8, "minilm": 8}
# the op types static QDQ quantizes per model (absent: ONNX Runtime's default, every op it can). MiniLM:
# with the default set (Add, Softmax, LayerNorm, Gather, ... with static per-tensor ranges) the embeddings
# lose their meaning (mean cosine 0.38 to the original on 100 eval sentences; MatMul only: 0.94); on the
# CNNs the default set is better (EfficientNet-Lite0 with Conv/MatMul/Gemm only: agreement 0.55 instead of
# 0.83 and 1.3x instead of 3.0x: the ReLU6 Clips stay float and break the QLinearConv fusion)
STATIC_OPS = {"minilm": ("MatMul",)}
# ops only a quantized model has (besides ORT's QLinear* ops)
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")
FACTOR_RE = re.compile(r"\.(enc|dec)(\.\d+)?$")
SAMPLE_FIELDS = ("eval_samples", "agreement_samples")  # how many held-out samples the figures are measured on
QUALITY_FIELDS = ("accuracy", "accuracy_original", "accuracy_drop", "agreement", "agreement_top5", "cos_mean",
                  "cos_min", "nn_top1", "nn_top10", "spearman", "rel_error_mean")


# ------------------------------------------------------------------------------------------------
# Models


def model_specs(quick: bool = False) -> dict[str, Any]:
    """The reference models of tools/sweep.py; ``mnist-resnet`` is the bundled demo asset (500 test digits)."""
    ref = reference_sweep()
    specs = ref.reference_specs(ROOT, quick=quick)
    data = ROOT / "onnx_alds" / "data"
    specs["mnist-resnet"] = ref.ModelSpec(
        "mnist-resnet", data / "mnist_resnet.onnx", data / "mnist_calibration.npz",
        [ref.EvalSet("eval", data / "mnist_eval.npz", "accuracy", 100 if quick else None)],
        quality_metric="accuracy", extra_metrics=("agreement",))
    return specs


# ------------------------------------------------------------------------------------------------
# Quantization (ONNX Runtime)


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in initializers]


def calibration_reader(inputs, names: Sequence[str], batch_size: int = 8):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over an :class:`onnx_alds.inputs.InputSet`."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator = iter(())
            self.rewind()

        def get_next(self):
            feed = next(self._batches, None)
            return None if feed is None else {n: feed[n] for n in names}

        def rewind(self) -> None:
            self._batches = iter(inputs.batches(batch_size))

    return _Reader()


@contextlib.contextmanager
def _in_scratch_folder() -> Iterator[None]:
    """Run in a temporary working folder: when symbolic shape inference fails, ONNX Runtime dumps the
    partial model to ``sym_shape_infer_temp.onnx`` plus a ``<uuid>.data`` file of every weight in the
    *current* folder (90 MB for MiniLM)."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="int8_compare.") as folder:
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(previous)


def pre_process(src: Path, dst: Path, notes: list[str]) -> Path:
    """``quant_pre_process`` (symbolic shape inference, ORT graph optimizations, ONNX shape inference).
    Where symbolic shape inference fails (MiniLM: 'Incomplete symbolic shape inference'), it is retried
    without that pass and a note says so."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()
    with _in_scratch_folder():
        try:
            quant_pre_process(str(src), str(dst))
        except Exception as exc:  # noqa: BLE001 - recorded, then retried without the symbolic pass
            notes.append(f"quant_pre_process({src.name}) failed ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]}); retried with skip_symbolic_shape=True")
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's quantizer logs a warning on the root logger for every rank-1 weight it cannot quantize per
    channel (LayerNorm scales: 'Axis 1 is out-of-range ...'; they get one scale, as they should)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_static_qdq(src: Path, dst: Path, calibration, *, batch_size: int = 8,
                        op_types: Optional[Sequence[str]] = None, activation_type: str = "uint8") -> Path:
    """Static INT8 in QDQ format: per-channel int8 weights (symmetric), ``activation_type`` activations
    (``uint8``: U8S8, ONNX Runtime's fast x86 path; ``int8``: S8S8), MinMax ranges over ``calibration``.
    ``op_types``: the op types to quantize (None: ONNX Runtime's default, every op it can)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    names = graph_input_names(onnx.load(str(src), load_external_data=False))
    with _quiet_root_logger():
        quantize_static(str(src), str(dst), calibration_reader(calibration, names, batch_size),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=list(op_types) if op_types else None)
    check_quantized(dst, f"static QDQ (op types {' '.join(op_types) if op_types else 'ONNX Runtime default'})")
    return dst


def quantize_dyn(src: Path, dst: Path) -> Path:
    """Dynamic INT8: per-channel int8 weights, uint8 activations quantized at run time (ORT's default op
    types: Conv, MatMul and Gemm among them)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    check_quantized(dst, "dynamic quantization")
    return dst


def static_op_types() -> set[str]:
    """The op types ONNX Runtime's static quantizer knows (QOperator and QDQ): what ``--static-ops`` may name."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QLinearOpsRegistry) | set(QDQRegistry)


def check_quantized(path: Path, how: str) -> None:
    """Raise :class:`OnnxAldsError` when the quantized model at ``path`` has no quantized node: its figures would
    be the float model's, labelled int8."""
    model = onnx.load(str(path), load_external_data=False)
    if not any(node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear") for node in model.graph.node):
        Path(path).unlink()  # a float model named int8 must not be left in --work
        raise OnnxAldsError(f"{how} quantized no node of '{Path(path).name}': none of its ops is one it quantizes; "
                            "choose --static-ops the model has (e.g. Conv MatMul Gemm), or 'all'")


def check_static_ops(name: str, model_path: Path, static_ops: Optional[Sequence[str]]) -> None:
    """Raise :class:`OnnxAldsError` before any work when model ``name`` has none of the op types ``static_ops``
    names: its static quantization would quantize nothing, and fail after the models before it were measured."""
    if not static_ops:
        return
    model = onnx.load(str(model_path), load_external_data=False)
    present = {node.op_type for node in model.graph.node}
    if not present & set(static_ops):
        has = sorted(present & static_op_types())
        raise OnnxAldsError(f"--static-ops {' '.join(static_ops)}: {name} has no {' or '.join(static_ops)} node, so its "
                            f"static quantization would quantize nothing; it has {', '.join(has) or 'no op it quantizes'}"
                            f" (name those, or 'all'), or leave {name} out of --models")


# ------------------------------------------------------------------------------------------------
# Did the factor pairs quantize?


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def factor_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes onnx-alds wrote (``<node>.enc`` / ``<node>.dec``) that carry a constant weight."""
    initializers = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if FACTOR_RE.search(n.name) and n.op_type in ("Conv", "Gemm", "MatMul")
            and any(i in initializers for i in n.input)]


def weight_input(node: onnx.NodeProto, initializers: Mapping[str, Any]) -> tuple[int, str]:
    """(index, name) of the node's constant weight: input 1 of Conv/Gemm, the constant side of MatMul."""
    if node.op_type == "MatMul" and node.input[0] in initializers and node.input[1] not in initializers:
        return 0, node.input[0]
    return 1, node.input[1]


def _out_channels(node: onnx.NodeProto, weight: np.ndarray, index: int) -> int:
    if node.op_type == "Conv":
        return int(weight.shape[0])
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return int(weight.shape[0] if trans_b else weight.shape[1])
    return int(weight.shape[0] if index == 0 else weight.shape[-1])  # MatMul: W @ x rows, x @ W columns


def _dequantized(model: onnx.ModelProto, dq: onnx.NodeProto) -> Optional[np.ndarray]:
    init = {t.name: t for t in model.graph.initializer}
    if any(name not in init for name in dq.input[:2]):
        return None
    q = numpy_helper.to_array(init[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(init[dq.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(init[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] in init \
        else np.zeros_like(scale)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def simulated_int8_error(weight: np.ndarray, axis: Optional[int]) -> float:
    """Relative Frobenius error of symmetric int8 quantization (scale = max|w| / 127, as ORT's int8 weights)
    per slice along ``axis``, or of the whole tensor when ``axis`` is None."""
    if axis is None:
        absmax = np.max(np.abs(weight))
    else:
        moved = np.moveaxis(weight, axis, 0)
        absmax = np.max(np.abs(moved.reshape(moved.shape[0], -1)), axis=1)
        shape = [1] * weight.ndim
        shape[axis] = -1
        absmax = absmax.reshape(shape)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0)
    quantized = np.clip(np.round(weight / scale), -127, 127) * scale
    return float(np.linalg.norm(quantized - weight) / max(np.linalg.norm(weight), 1e-30))


def check_qdq(fp32: onnx.ModelProto, qdq: onnx.ModelProto, nodes: Sequence[onnx.NodeProto]) -> dict[str, Any]:
    """For each of ``nodes`` (Conv/Gemm/MatMul with a constant weight in ``fp32``), where its weight went in
    the QDQ model ``qdq``: quantized (an int8 initializer through a DequantizeLinear into the same op), per
    channel (one scale per output channel), with its activation input from a DequantizeLinear; the
    relative Frobenius error of the dequantized weight. Matched by weight name, since quant_pre_process
    may rename nodes."""
    init32 = {t.name: t for t in fp32.graph.initializer}
    initq = {t.name: t for t in qdq.graph.initializer}
    producers, consumers = _producers(qdq), _consumers(qdq)
    layers, problems = [], []
    for node in nodes:
        index, wname = weight_input(node, init32)
        weight = numpy_helper.to_array(init32[wname]).astype(np.float64)
        entry: dict[str, Any] = dict(node=node.name, op=node.op_type, weight=wname, shape=list(weight.shape),
                                     out_channels=_out_channels(node, weight, index))
        dq = None
        if wname in initq:  # still a float initializer: find what reads it
            users = consumers.get(wname, [])
            entry.update(quantized=False, consumer=[u.op_type for u in users])
            problems.append(f"{node.name}: weight '{wname}' left in float (read by {[u.op_type for u in users]})")
        else:
            dqs = [n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initq
                   and n.input[0] == wname + "_quantized"]  # ORT's name for the quantized weight
            dq = dqs[0] if dqs else None
            users = consumers.get(dq.output[0], []) if dq else []
            op = users[0] if users else None
            entry.update(quantized=dq is not None and op is not None and op.op_type == node.op_type,
                         consumer=[u.op_type for u in users], qdq_node=op.name if op else None)
            if dq is None:
                problems.append(f"{node.name}: no DequantizeLinear for weight '{wname}' (folded or removed)")
            elif not entry["quantized"]:
                problems.append(f"{node.name}: weight '{wname}' dequantized into {entry['consumer']}, not {node.op_type}")
        if dq is not None:
            scale = numpy_helper.to_array(initq[dq.input[1]]) if dq.input[1] in initq else None
            q_type = initq[dq.input[0]].data_type
            entry["weight_dtype"] = onnx.helper.tensor_dtype_to_np_dtype(q_type).name
            entry["scales"] = int(scale.size) if scale is not None else None
            entry["per_channel"] = bool(scale is not None and scale.size == entry["out_channels"]
                                        and entry["out_channels"] > 1)
            if not entry["per_channel"]:
                problems.append(f"{node.name}: {entry['scales']} weight scale(s) for {entry['out_channels']} "
                                "output channels (not per channel)")
            value = _dequantized(qdq, dq)
            if value is not None and value.shape == weight.shape:
                entry["weight_rel_error"] = float(np.linalg.norm(value - weight) / max(np.linalg.norm(weight), 1e-30))
            # what one scale for the whole weight would have cost (simulated): per channel matters when the
            # rows differ in scale, as a factor's do (onnx-alds splits each singular value as √σ·√σ)
            entry["per_tensor_rel_error_sim"] = simulated_int8_error(weight, None)
            op = consumers.get(dq.output[0], [None])[0]
            if op is not None:
                act = op.input[1 - index] if op.op_type == "MatMul" else op.input[0]
                source = producers.get(act)
                entry["activation_dq"] = bool(source is not None and source.op_type == "DequantizeLinear")
                out_users = consumers.get(op.output[0], [])
                entry["output_q"] = any(u.op_type == "QuantizeLinear" for u in out_users)
                if not entry["activation_dq"]:
                    problems.append(f"{node.name}: activation '{act}' not from a DequantizeLinear "
                                    f"({source.op_type if source is not None else 'graph input'})")
        layers.append(entry)
    return dict(layers=layers, problems=problems)


def check_dynamic(fp32: onnx.ModelProto, dyn: onnx.ModelProto, nodes: Sequence[onnx.NodeProto]) -> dict[str, Any]:
    """For each of ``nodes``: does its weight run as an integer op (ConvInteger/MatMulInteger) in ``dyn``?"""
    init32 = {t.name for t in fp32.graph.initializer}
    initd = {t.name: t for t in dyn.graph.initializer}
    consumers = _consumers(dyn)
    layers, problems = [], []
    for node in nodes:
        _, wname = weight_input(node, init32)
        # ORT's names: <w>_quantized, <w>_Transposed_quantized (a Gemm with transB, run as MatMulInteger)
        ops = [u.op_type for name in (wname, wname + "_quantized", wname + "_Transposed_quantized") if name in initd
               for u in consumers.get(name, [])]
        integer = any(op in ("ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearConv") for op in ops)
        layers.append(dict(node=node.name, op=node.op_type, weight=wname, integer_op=integer, consumers=ops))
        if not integer:
            problems.append(f"{node.name}: weight '{wname}' not in an integer op (read by {ops})")
    return dict(layers=layers, problems=problems)


def quantization_summary(check: Mapping[str, Any]) -> dict[str, Any]:
    layers = check["layers"]
    errors = [x["weight_rel_error"] for x in layers if x.get("weight_rel_error") is not None]
    tensor = [x["per_tensor_rel_error_sim"] for x in layers if x.get("per_tensor_rel_error_sim") is not None]
    return dict(weights=len(layers), quantized=sum(1 for x in layers if x.get("quantized")),
                per_channel=sum(1 for x in layers if x.get("per_channel")),
                activation_dq=sum(1 for x in layers if x.get("activation_dq")),
                output_q=sum(1 for x in layers if x.get("output_q")),
                weight_rel_error_median=float(np.median(errors)) if errors else None,
                weight_rel_error_max=float(np.max(errors)) if errors else None,
                per_tensor_rel_error_sim_median=float(np.median(tensor)) if tensor else None,
                problems=len(check["problems"]))


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(n.op_type for n in model.graph.node)
    return {k: counts.get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                                          "ConvInteger", "MatMulInteger")}


def factor_qdq_counts(qdq: onnx.ModelProto, alds: onnx.ModelProto) -> dict[str, int]:
    """QuantizeLinear / DequantizeLinear nodes adjacent to the factor nodes of ``alds`` in ``qdq``: the
    DQs feeding them (weights and activations) and the Qs reading their outputs."""
    init = {t.name for t in alds.graph.initializer}
    quantized = {weight_input(n, init)[1] + "_quantized" for n in factor_nodes(alds)}
    producers, consumers = _producers(qdq), _consumers(qdq)
    initq = {t.name for t in qdq.graph.initializer}
    ops = set()
    for dq in qdq.graph.node:
        if dq.op_type == "DequantizeLinear" and dq.input[0] in initq and dq.input[0] in quantized:
            ops.update(id(u) for u in consumers.get(dq.output[0], []))
    dq_in = q_out = 0
    for node in qdq.graph.node:
        if id(node) not in ops:
            continue
        dq_in += sum(1 for i in node.input if producers.get(i) is not None and producers[i].op_type == "DequantizeLinear")
        q_out += sum(1 for o in node.output for u in consumers.get(o, []) if u.op_type == "QuantizeLinear")
    return dict(factor_ops=len(ops), dequantize_in=dq_in, quantize_out=q_out)


# ------------------------------------------------------------------------------------------------
# One model


def _size(path: Path) -> int:
    return path.stat().st_size


def _say(text: str) -> None:
    print(text, flush=True)


def build_variants(spec, data, work: Path, *, keep_flops: float, rank_multiple: int, activation_type: str = "uint8",
                   static_ops: Optional[Sequence[str]] = None,
                   say: Callable[[str], None] = _say) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write every variant of ``spec`` into ``work`` (the originals are read only). Returns the paths and
    what happened on the way (times, the compression report's totals, notes)."""
    from onnx_alds.api import compress

    work.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"fp32": Path(spec.model)}
    info: dict[str, Any] = {"seconds": {}, "notes": [],
                            "static": dict(activation_type=activation_type, weight_type="int8", per_channel=True,
                                           format="QDQ", calibrate_method="MinMax",
                                           calibration_samples=len(data.calibration),
                                           op_types=list(static_ops) if static_ops else "onnxruntime default (all)"),
                            "dynamic": dict(weight_type="int8", per_channel=True, op_types="onnxruntime default")}
    tick = time.perf_counter()
    pre = pre_process(paths["fp32"], work / "fp32.pre.onnx", info["notes"])
    info["seconds"]["pre_process"] = time.perf_counter() - tick

    tick = time.perf_counter()
    paths["int8-dyn"] = quantize_dyn(pre, work / "int8-dyn.onnx")
    info["seconds"]["int8-dyn"] = time.perf_counter() - tick
    tick = time.perf_counter()
    paths["int8-qdq"] = quantize_static_qdq(pre, work / "int8-qdq.onnx", data.calibration, op_types=static_ops,
                                            activation_type=activation_type)
    info["seconds"]["int8-qdq"] = time.perf_counter() - tick
    say(f"  quantized fp32: dynamic {info['seconds']['int8-dyn']:.1f} s, static {info['seconds']['int8-qdq']:.1f} s")

    order = "pointwise-first" if spec.name in CNN_MODELS else "spatial-first"
    tick = time.perf_counter()
    proto = onnx.load(str(spec.model))
    result = compress(proto, keep_flops=keep_flops, rank_multiple=rank_multiple, calibration=data.calibration,
                      input_shapes=spec.input_shapes, order=order)
    info["seconds"]["alds"] = time.perf_counter() - tick
    report = result.report
    info["alds"] = dict(order=order, keep_flops=keep_flops, rank_multiple=rank_multiple, achieved=report.achieved,
                        params_kept=report.params_after / report.params_before if report.params_before else None,
                        layers_factorized=sum(1 for layer in report.layers if layer.groups),
                        layers_total=len(report.layers), max_error=report.max_error,
                        notes=list(report.notes))
    paths["alds"] = work / "alds.onnx"
    onnx.save(result.model, str(paths["alds"]))
    say(f"  alds: {info['alds']['layers_factorized']}/{info['alds']['layers_total']} layers factorized, "
        f"MACs kept {report.achieved:.3f} ({info['seconds']['alds']:.1f} s)")

    tick = time.perf_counter()
    alds_pre = pre_process(paths["alds"], work / "alds.pre.onnx", info["notes"])
    info["seconds"]["alds_pre_process"] = time.perf_counter() - tick
    tick = time.perf_counter()
    paths["alds+int8-qdq"] = quantize_static_qdq(alds_pre, work / "alds+int8-qdq.onnx", data.calibration,
                                                 op_types=static_ops, activation_type=activation_type)
    info["seconds"]["alds+int8-qdq"] = time.perf_counter() - tick
    tick = time.perf_counter()
    paths["alds+int8-dyn"] = quantize_dyn(alds_pre, work / "alds+int8-dyn.onnx")
    info["seconds"]["alds+int8-dyn"] = time.perf_counter() - tick
    say(f"  quantized alds: static {info['seconds']['alds+int8-qdq']:.1f} s, "
        f"dynamic {info['seconds']['alds+int8-dyn']:.1f} s")
    return paths, info


def quality_rows(data, paths: Mapping[str, Path], threads: int) -> dict[str, dict[str, Any]]:
    """Figures of every variant against the original, and of each quantized variant against its parent
    (``onnx_alds.sweep.evaluate``: onnx_alds.validate.compare_output and the nearest-neighbour figures)."""
    from onnx_alds.sweep import ModelData, WorkerState, evaluate

    state = WorkerState(threads=threads)
    figures = {}
    parents: dict[str, WorkerState] = {}
    for name, path in paths.items():
        if name == "fp32":
            continue
        row = {k: v for k, v in evaluate(state, data, path.read_bytes()).items()
               if k in QUALITY_FIELDS or k in SAMPLE_FIELDS}
        parent = PARENT[name]
        if parent not in ("fp32", None):
            parent_data = ModelData(f"{data.name}:{parent}", paths[parent].read_bytes(), None, data.evals)
            state_p = parents.setdefault(parent, WorkerState(threads=threads))
            row["vs_parent"] = {k: v for k, v in evaluate(state_p, parent_data, path.read_bytes()).items()
                                if k in QUALITY_FIELDS}
        else:
            row["vs_parent"] = {k: v for k, v in row.items() if k in QUALITY_FIELDS}
        figures[name] = row
    return figures


def time_variants(spec, paths: Mapping[str, Path], *, batch: int, threads: int, target_s: float, min_runs: int = 30,
                  say: Callable[[str], None] = _say) -> dict[str, Any]:
    """Every variant in one interleaved bench run at ``batch``; the round count fills about ``target_s``
    (at least ``min_runs`` rounds, at most 300)."""
    from onnx_alds.bench import bench
    from onnx_alds.sweep import load_average

    names = list(paths)
    models = [str(paths[n]) for n in names]
    probe = bench(models, provider="cpu", batch_sizes=(batch,), threads=threads, warmup=1, runs=1, min_time_s=0.0,
                  input_shapes=spec.input_shapes, names=names)
    per_round = sum(probe.timing(i, batch).median_ms for i in range(len(names))) / 1e3
    runs = int(min(300, max(min_runs, target_s / max(per_round, 1e-6))))
    load_before = load_average()
    tick = time.perf_counter()
    report = bench(models, provider="cpu", batch_sizes=(batch,), threads=threads, warmup=3, runs=runs,
                   min_time_s=0.0, input_shapes=spec.input_shapes, names=names)
    seconds = time.perf_counter() - tick
    load_after = load_average()
    for line in report.lines():
        say("  " + line)
    timings = {}
    for i, name in enumerate(names):
        t = report.timing(i, batch)
        timings[name] = dict(ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms, spread=t.spread, runs=t.runs,
                             speedup=t.speedup, throughput=t.throughput)
    return dict(batch=batch, threads=threads, runs=runs, seconds=seconds, load_before=load_before,
                load_after=load_after, timings=timings)


def run_model(spec, work: Path, *, keep_flops: float, rank_multiple: int, batch: int, threads: int,
              target_s: float, min_runs: int = 30, activation_type: str = "uint8", static_ops: Optional[Sequence[str]] = None,
              say: Callable[[str], None] = _say) -> dict[str, Any]:
    from onnx_alds.sweep import load_model_data

    say(f"{spec.name}: {spec.model}")
    tick = time.perf_counter()
    data = load_model_data(reference_sweep().sweep_model(spec), need_calibration=True)
    paths, info = build_variants(spec, data, work / spec.name, keep_flops=keep_flops, rank_multiple=rank_multiple,
                                 activation_type=activation_type, static_ops=static_ops, say=say)
    quality = quality_rows(data, paths, threads)
    say("  validated every variant")

    alds = onnx.load(str(paths["alds"]))
    nodes = factor_nodes(alds)
    fp32 = onnx.load(str(paths["fp32"]))
    dense_nodes = [n for n in fp32.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                   and any(i in {t.name for t in fp32.graph.initializer} for i in n.input)]
    qdq_alds = onnx.load(str(paths["alds+int8-qdq"]))
    qdq_fp32 = onnx.load(str(paths["int8-qdq"]))
    checks = dict(
        factor_nodes=len(nodes),
        alds_qdq=check_qdq(alds, qdq_alds, nodes),
        alds_dyn=check_dynamic(alds, onnx.load(str(paths["alds+int8-dyn"])), nodes),
        fp32_qdq=check_qdq(fp32, qdq_fp32, dense_nodes),
        fp32_dyn=check_dynamic(fp32, onnx.load(str(paths["int8-dyn"])), dense_nodes),
        node_counts={name: qdq_counts(onnx.load(str(p))) for name, p in paths.items() if "int8" in name},
        factor_qdq=factor_qdq_counts(qdq_alds, alds),
    )
    checks["summary"] = {k: quantization_summary(checks[k]) for k in ("alds_qdq", "fp32_qdq")}
    for k in ("alds_dyn", "fp32_dyn"):
        checks["summary"][k] = dict(weights=len(checks[k]["layers"]),
                                    integer_op=sum(1 for x in checks[k]["layers"] if x["integer_op"]),
                                    problems=len(checks[k]["problems"]))
    s = checks["summary"]["alds_qdq"]
    say(f"  factor nodes {len(nodes)}: QDQ-quantized {s['quantized']}, per channel {s['per_channel']}, activation "
        f"DQ {s['activation_dq']}, problems {s['problems']}; dynamic integer ops "
        f"{checks['summary']['alds_dyn']['integer_op']}")
    for problem in checks["alds_qdq"]["problems"][:10] + checks["alds_dyn"]["problems"][:10]:
        say(f"  problem: {problem}")

    timing = time_variants(spec, paths, batch=batch, threads=threads, target_s=target_s, min_runs=min_runs, say=say)
    rows = []
    fp32_size = _size(paths["fp32"])
    for name in paths:
        row = dict(model=spec.name, variant=name, size_bytes=_size(paths[name]),
                   size_ratio=_size(paths[name]) / fp32_size, batch=batch,
                   **{k: v for k, v in timing["timings"][name].items()})
        q = quality.get(name, {})
        row.update({k: v for k, v in q.items() if k != "vs_parent"})
        if name == "fp32":
            row.update(_fp32_quality(quality))
        row["vs_parent"] = q.get("vs_parent", {})
        rows.append(row)
    return dict(model=spec.name, path=str(spec.model), calibration=str(spec.calibration),
                evals=[dict(label=e.label, npz=str(e.npz), kind=e.kind, limit=e.limit) for e in spec.evals],
                input_shapes=spec.input_shapes, seconds=time.perf_counter() - tick, build=info, rows=rows,
                timing={k: v for k, v in timing.items() if k != "timings"}, checks=checks)


def _fp32_quality(quality: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The original's own figures: its accuracy, and 1.0 for every agreement figure."""
    any_row = next(iter(quality.values()))
    row: dict[str, Any] = {}
    if any_row.get("accuracy_original") is not None:
        row.update(accuracy=any_row["accuracy_original"], accuracy_original=any_row["accuracy_original"],
                   accuracy_drop=0.0)
    for key in ("agreement", "agreement_top5", "cos_mean", "cos_min", "nn_top1", "nn_top10", "spearman"):
        if any_row.get(key) is not None:
            row[key] = 1.0
    if any_row.get("rel_error_mean") is not None:
        row["rel_error_mean"] = 0.0
    return row


# ------------------------------------------------------------------------------------------------
# Outputs


CSV_COLUMNS = ("model", "variant", "batch", "size_bytes", "size_ratio", "accuracy", "accuracy_drop", "agreement",
               "agreement_top5", "nn_top1", "nn_top10", "cos_mean", "cos_min", "parent_accuracy_drop",
               "parent_agreement", "parent_nn_top1", "parent_cos_mean", "ms", "p10_ms", "p90_ms", "spread", "runs",
               "speedup", "speedup_p10")

# per model: (row field, column title) of the quality figures in the printed/markdown table; "{eval}" and
# "{agreement}" become the samples of that held-out set the run measured on (column_title)
QUALITY_COLUMNS = {
    "mnist-resnet": (("accuracy", "accuracy ({eval} digits)"), ("agreement", "top-1 agreement")),
    "efficientnet-lite0": (("agreement", "top-1 agreement ({agreement} crops)"), ("accuracy", "accuracy ({eval} photos)")),
    "minilm": (("nn_top1", "NN top-1 kept ({eval} sentences)"), ("cos_mean", "mean cosine")),
}
WHOLE_SET_SAMPLES = {"mnist-resnet": {"eval": 500}, "efficientnet-lite0": {"eval": 20}}  # sets read whole (no limit)
PARENT_COLUMN = {"mnist-resnet": "agreement", "efficientnet-lite0": "agreement", "minilm": "nn_top1"}


def column_title(result: Mapping[str, Any], title: str) -> str:
    """``title`` with the number of held-out samples the run measured on: the rows' ``<set>_samples`` (runs
    that record it), else the set's ``limit``, else the whole set's size; "?" where none is known."""
    counts = {}
    for label in ("eval", "agreement"):
        recorded = [row[f"{label}_samples"] for row in result["rows"] if row.get(f"{label}_samples")]
        limit = next((e.get("limit") for e in result.get("evals", []) if e.get("label") == label), None)
        counts[label] = (max(recorded) if recorded else limit
                         or WHOLE_SET_SAMPLES.get(result["model"], {}).get(label, "?"))
    return title.format(**counts)


def speedup_p10(result: Mapping[str, Any], row: Mapping[str, Any]) -> Optional[float]:
    """fp32's p10 latency / the variant's: the fast end of each distribution, which other processes on
    the machine disturb least (an interleaved run makes the medians comparable; under heavy load they
    are still inflated, the longer runs more)."""
    fp32 = next((r for r in result["rows"] if r["variant"] == "fp32"), None)
    if fp32 is None or not row.get("p10_ms") or not fp32.get("p10_ms"):
        return None
    return fp32["p10_ms"] / row["p10_ms"]


def flat_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        for row in result["rows"]:
            flat = {k: v for k, v in row.items() if k != "vs_parent"}
            flat["speedup_p10"] = speedup_p10(result, row)
            parent = row.get("vs_parent") or {}
            flat.update(parent_accuracy_drop=parent.get("accuracy_drop"), parent_agreement=parent.get("agreement"),
                        parent_nn_top1=parent.get("nn_top1"), parent_cos_mean=parent.get("cos_mean"))
            rows.append(flat)
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: Sequence[Mapping[str, Any]]) -> str:
    """One table per model: size, quality vs the original, quality vs the parent, latency and speedup."""
    parts = []
    for result in results:
        model = result["model"]
        quality = QUALITY_COLUMNS.get(model, (("agreement", "top-1 agreement"),))
        parent_key = PARENT_COLUMN.get(model, "agreement")
        timing = result["timing"]
        header = (["variant", "size MB", "size ×"] + [column_title(result, title) for _, title in quality]
                  + [f"{parent_key} vs parent", f"median ms (batch {timing['batch']})", "p10–p90 spread",
                     "speedup (median)", "speedup (p10)"])
        lines = [f"**{model}** — batch {timing['batch']}, {timing['runs']} interleaved rounds, load average "
                 f"{_fmt(timing['load_before'], 1)} → {_fmt(timing['load_after'], 1)}", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in result["rows"]:
            parent = row.get("vs_parent") or {}
            cells = [f"`{row['variant']}`", f"{row['size_bytes'] / 1e6:.2f}", f"{row['size_ratio']:.2f}"]
            cells += [_fmt(row.get(key)) for key, _ in quality]
            cells += ["-" if row["variant"] == "fp32" else
                      f"{_fmt(parent.get(parent_key))} (vs {PARENT[row['variant']]})",
                      f"{row['ms']:.2f}", f"{100 * row['spread']:.0f} %", f"**{row['speedup']:.2f}×**",
                      f"{_fmt(speedup_p10(result, row), 2)}×"]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def text_table(results: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for result in results:
        model = result["model"]
        quality = QUALITY_COLUMNS.get(model, (("agreement", "agreement"),))
        parent_key = PARENT_COLUMN.get(model, "agreement")
        lines.append(f"{model} (batch {result['timing']['batch']}, load {_fmt(result['timing']['load_before'], 1)}"
                     f" -> {_fmt(result['timing']['load_after'], 1)})")
        lines.append(f"  {'variant':<15} {'MB':>7} {'size':>5}  " + "  ".join(f"{k:>9}" for k, _ in quality)
                     + f"  {parent_key + '/parent':>15} {'ms':>9} {'spread':>7} {'speedup':>7} {'p10 sp.':>7}")
        for row in result["rows"]:
            parent = (row.get("vs_parent") or {}).get(parent_key) if row["variant"] != "fp32" else None
            lines.append(f"  {row['variant']:<15} {row['size_bytes'] / 1e6:7.2f} {row['size_ratio']:5.2f}  "
                         + "  ".join(f"{_fmt(row.get(k)):>9}" for k, _ in quality)
                         + f"  {_fmt(parent):>15} {row['ms']:9.2f} {100 * row['spread']:6.1f}% {row['speedup']:6.2f}x"
                         + f" {_fmt(speedup_p10(result, row), 2):>6}x")
        s = result["checks"]["summary"]
        lines.append(f"  factor nodes {result['checks']['factor_nodes']}: QDQ {s['alds_qdq']['quantized']} quantized, "
                     f"{s['alds_qdq']['per_channel']} per channel, {s['alds_qdq']['activation_dq']} with DQ activation; "
                     f"dynamic {s['alds_dyn']['integer_op']} integer ops; weight rel. error median "
                     f"{_fmt(s['alds_qdq']['weight_rel_error_median'], 4)} (dense weights in int8-qdq "
                     f"{_fmt(s['fp32_qdq']['weight_rel_error_median'], 4)}); one scale per tensor would give "
                     f"{_fmt(s['alds_qdq']['per_tensor_rel_error_sim_median'], 4)} "
                     f"(dense {_fmt(s['fp32_qdq']['per_tensor_rel_error_sim_median'], 4)})")
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and value.startswith(str(ROOT) + os.sep):
        return os.path.relpath(value, ROOT)  # paths in the repository, relative to its root
    return value


def write_outputs(record: Mapping[str, Any], out: Path, name: str = "int8_compare") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(_clean(record), indent=1) + "\n")
    with open(out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in flat_rows(record["results"]):
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()
                             if k in CSV_COLUMNS and v is not None})


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--keep-flops", type=keep_ratio, default=0.5)
    parser.add_argument("--rank-multiple", type=positive_int, default=16)
    parser.add_argument("--batch", type=positive_int, default=None,
                        help="batch size for timing (default per model: " +
                             ", ".join(f"{k} {v}" for k, v in BATCH.items()) + ")")
    parser.add_argument("--threads", type=thread_count, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--bench-target-s", type=positive_float, default=None,
                        help="seconds of timed rounds per model (default 90, at least 30 rounds; 4 s and 7 rounds "
                             "with --quick)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onnx-alds-int8",
                        help="where the variants are written (default $TMP/onnx-alds-int8)")
    parser.add_argument("--out", type=Path, default=None,
                        help="NAME.json / NAME.csv go here (default docs/results; with --quick docs/results/quick, "
                             "so that a smoke run leaves the published results alone)")
    parser.add_argument("--name", default="int8_compare", help="output file stem (default int8_compare)")
    parser.add_argument("--activation-type", choices=("uint8", "int8"), default="uint8",
                        help="static QDQ activations: uint8 (U8S8, default: ONNX Runtime's fast x86 path) or int8 "
                             "(S8S8; measured much slower here, see docs/INT8.md)")
    parser.add_argument("--static-ops", nargs="+", default=None, metavar="OP",
                        help="op types static QDQ quantizes, every model (default: per model, " +
                             ", ".join(f"{k}: {' '.join(v)}" for k, v in STATIC_OPS.items()) +
                             "; else ONNX Runtime's default); 'all' for ONNX Runtime's default everywhere")
    parser.add_argument("--quick", action="store_true",
                        help="100 eval samples per set, short timings; written to docs/results/quick unless --out")
    parser.add_argument("--report", action="store_true",
                        help="measure nothing: print the tables of OUT/NAME.json and rewrite the CSV")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    check_output_folder(args.out, "--out")
    if args.report:
        path = args.out / f"{args.name}.json"
        if not path.is_file():
            raise InputDataError(f"--report: no '{path}' to print; run the comparison first (without --report), or "
                                 "give the --out and --name of an earlier run")
        record = json.loads(path.read_text())
        write_outputs(record, args.out, args.name)
        print(f"{record['command']} ({record['started']}, {record['seconds']:.0f} s; uptime at start: "
              f"{record.get('uptime_start')})\n")
        print(text_table(record["results"]))
        print()
        print(markdown(record["results"]))
        return 0
    command = "python tools/int8_compare.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                   else sys.argv[1:]))
    try:
        found = importlib.util.find_spec("onnxruntime.quantization") is not None
    except ImportError:
        found = False
    if not found:
        print("error: onnxruntime.quantization is not available; install onnx-alds[cpu]", file=sys.stderr)
        return 1
    from onnx_alds.sweep import load_average

    specs = model_specs(quick=args.quick)
    check_known(args.models, specs)
    if args.static_ops is not None and "all" in args.static_ops and len(args.static_ops) > 1:
        raise OnnxAldsError(f"--static-ops {' '.join(args.static_ops)}: 'all' (every op ONNX Runtime quantizes) must be "
                            "given alone; drop 'all' or the other names")
    if args.static_ops is not None and args.static_ops != ["all"]:
        check_known(args.static_ops, sorted(static_op_types()), "--static-ops")
    chosen = []  # (name, spec, static ops), every model checked before the first is measured
    for name in args.models:
        spec = specs[name]
        if not Path(spec.model).exists():
            print(f"skip {name}: no {spec.model} (build it: python -m models.build {name})", file=sys.stderr)
            continue
        if args.static_ops is None:
            static_ops = STATIC_OPS.get(name)
        else:
            static_ops = None if args.static_ops == ["all"] else tuple(args.static_ops)
        check_static_ops(name, Path(spec.model), static_ops)
        chosen.append((name, spec, static_ops))
    target_s = args.bench_target_s if args.bench_target_s is not None else (4.0 if args.quick else 90.0)
    started = time.time()
    load_start = load_average()
    uptime_start = _uptime()
    results = []
    for name, spec, static_ops in chosen:
        results.append(run_model(spec, args.work, keep_flops=args.keep_flops, rank_multiple=args.rank_multiple,
                                 batch=args.batch or BATCH.get(name, 32), threads=args.threads, target_s=target_s,
                                 min_runs=7 if args.quick else 30,
                                 activation_type=args.activation_type, static_ops=static_ops))
    record = dict(command=command, started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
                  seconds=time.time() - started, load_start=load_start, load_end=load_average(),
                  uptime_start=uptime_start, uptime_end=_uptime(), environment=_environment(),
                  settings=dict(keep_flops=args.keep_flops, rank_multiple=args.rank_multiple, threads=args.threads,
                                bench_target_s=target_s, quick=args.quick,
                                static=f"quantize_static QDQ, per_channel=True, {args.activation_type} activations, "
                                       "int8 weights, MinMax, calibration.npz in batches of 8, after quant_pre_process; "
                                       "op types per model in results[].build.static",
                                dynamic="quantize_dynamic, per_channel=True, QInt8 weights, after quant_pre_process"),
                  results=results)
    write_outputs(record, args.out, args.name)
    print()
    print(text_table(results))
    print()
    print(markdown(results))
    print(f"done in {record['seconds']:.0f} s (load {_fmt(load_start, 1)} -> {_fmt(record['load_end'], 1)}); wrote "
          f"{args.out}/{args.name}.json and {args.name}.csv")
    return 0


def _uptime() -> Optional[str]:
    try:
        return os.popen("uptime").read().strip() or None
    except OSError:
        return None


def _environment() -> dict[str, Any]:
    from onnx_alds.sweep import environment

    env = environment()
    try:
        import onnxruntime

        env["versions"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return env


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="no results were written (the variants built so far are in --work)"))
