"""Distillation: train the factor tensors of a compressed model to reproduce the original's outputs.

The ALDS paper's accuracy comes after retraining; a post-export user has the ONNX file and some
unlabeled inputs. :func:`distill` runs that retraining step without labels (knowledge distillation):

- teacher: the original model in ONNX Runtime (its graph outputs and, optionally, the outputs of the
  layers that were factorized, which keep their names in the compressed graph);
- student: the compressed graph itself, executed node by node on torch ops by :class:`TorchGraph`
  (a small ONNX interpreter, below); only the factor tensors (the initializers the rewrite created,
  see :func:`factor_tensors`) and the biases of their decoder nodes are ``torch.nn.Parameter``s,
  every other tensor is frozen;
- inputs: the calibration set, augmented as fits the input kind (:func:`make_augmenter`: crops,
  flips, scale, noise and mixing for images; spans, splices and token swaps for token inputs; noise
  otherwise); a held-out part of it, with fixed augmented views, decides early stopping and reports
  the agreement before and after;
- write-back: the trained values go into the compressed model's initializers by name, in their
  original dtype (:func:`write_back`); the written model is run in ONNX Runtime and must reproduce
  the trained student (torch) within a tight tolerance before it is returned; the graph's structure,
  names, ops and every other initializer are left byte-identical.

torch is an optional extra (``pip install 'onnx-alds[distill]'``, a CPU build of torch 2.13.0) and is
imported only here; ``docs/DISTILL.md`` says why this route (and not onnx2torch) and what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Collection, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import (InputDataError, OnnxAldsError, UnknownOptionError, UnsupportedModelError, interrupted,
                     runtime_error_text)
from .inputs import (InputSet, as_input_set, cast_notes, conform_inputs, dim_name_clash, one_sample_at_a_time,
                     without_repeats)
from .layers import is_layer_node, iter_total_params, overridable_initializers
from .model_io import ModelLike, graph_inputs, load_model, opset_version

log = logging.getLogger(__name__)

TORCH_VERSION = "2.13.0"
INSTALL_HINT = f"pip install 'onnx-alds[distill]' (a CPU build of torch=={TORCH_VERSION})"


class DistillError(OnnxAldsError):
    """Distillation cannot run (missing extra) or its result failed verification."""


def import_torch():
    """Import torch or raise a one-line error that names the extra to install.

    Before the first import, OpenMP is told to let idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``,
    unless the environment sets it): training alternates ONNX Runtime (teacher) and torch (student),
    and on a busy machine spinning OpenMP threads made each step up to 30 times slower (docs/DISTILL.md).
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError as exc:
        if interrupted(exc):  # Ctrl-C or SIGTERM during the import, not a missing package
            raise KeyboardInterrupt from None
        raise DistillError(f"distillation needs PyTorch, which is not installed; {INSTALL_HINT}") from None
    return torch


# ==================================================================================================
# The ONNX interpreter on torch ops
# ==================================================================================================

_ONNX_TO_TORCH_DTYPE: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT16: "int16", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


def _torch_dtype(torch, onnx_type: int):
    name = _ONNX_TO_TORCH_DTYPE.get(int(onnx_type))
    if name is None:
        raise UnsupportedModelError(f"distillation cannot handle tensors of ONNX type "
                                    f"{onnx.TensorProto.DataType.Name(onnx_type)}")
    return getattr(torch, name)


_WIDER_INTEGERS = {"int4": np.int8, "uint4": np.uint8, "int2": np.int8, "uint2": np.uint8}


def _to_tensor(torch, array: np.ndarray):
    """``array`` as a torch tensor of its own values. numpy types torch does not read (onnx's ml_dtypes:
    bfloat16, float8, int4, float4) become the torch type of that name where there is one, else a wider one
    that holds every value exactly (int4 in int8, float4 in float32): the ops such constants feed (Cast,
    Reshape, Transpose) give the same values."""
    array = np.asarray(array)
    if array.dtype == np.uint16 or array.dtype == np.uint32 or array.dtype == np.uint64:
        array = array.astype(np.int64)
    if type(array.dtype).__module__.startswith("ml_dtypes") or array.dtype.type.__module__.startswith("ml_dtypes"):
        name = array.dtype.name
        if name in _WIDER_INTEGERS:
            return torch.from_numpy(array.astype(_WIDER_INTEGERS[name]))
        wide = torch.from_numpy(array.astype(np.float32))
        held = getattr(torch, name, None)
        if isinstance(held, torch.dtype) and held.is_floating_point:
            try:
                return wide.to(held)
            except (RuntimeError, TypeError):
                pass
        return wide
    return torch.from_numpy(np.array(array, copy=True))


def _loss_precision(torch, x):
    """``x`` in float32 where it is a half type: a float16 output's squared error over its variance overflows
    float16 (65504) when the variance is small, and the gradients became inf (nothing trained)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _Node:
    """One node, ready to run: op, input and output names, attributes as Python values."""

    __slots__ = ("op", "name", "inputs", "outputs", "attrs", "opset")

    def __init__(self, node: onnx.NodeProto, opset: int) -> None:
        self.op = node.op_type
        self.name = node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.opset = opset

    def attr(self, name: str, default=None):
        value = self.attrs.get(name, default)
        if isinstance(value, bytes):
            return value.decode()
        return value


def _ints(torch, value) -> list[int]:
    """A 0-d/1-d integer tensor (shape, axes, pads ...) as a Python list."""
    if value is None:
        return []
    return [int(v) for v in value.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _unsupported(node: _Node, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"distillation cannot run node '{node.name}' (op {node.op}): {why}")


# --- op implementations: f(torch, F, node, *inputs) -> tensor or tuple of tensors ----------------

def _conv_padding(node: _Node, x, kernel: Sequence[int], strides, dilations):
    spatial = list(x.shape[2:])
    auto_pad = node.attr("auto_pad", "NOTSET")
    rank = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins, ends
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    pads = list(node.attr("pads", [0] * (2 * rank)))
    return pads[:rank], pads[rank:]


def _explicit_pad(torch, F, x, begins, ends, value=0.0):
    torch_pads: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        torch_pads += [b, e]
    return F.pad(x, torch_pads, mode="constant", value=value)


def _op_conv(torch, F, node, x, w, b=None):
    rank = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = list(node.attr("strides", [1] * rank))
    dilations = list(node.attr("dilations", [1] * rank))
    group = int(node.attr("group", 1))
    begins, ends = _conv_padding(node, x, kernel, strides, dilations)
    if begins == ends:
        padding = begins
    else:
        x = _explicit_pad(torch, F, x, begins, ends)
        padding = [0] * rank
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(rank)
    if conv is None:
        raise _unsupported(node, f"{rank}-D convolution")
    return conv(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=group)


def _op_gemm(torch, F, node, a, b, c=None):
    if int(node.attr("transA", 0)):
        a = a.transpose(0, 1)
    if int(node.attr("transB", 0)):
        b = b.transpose(0, 1)
    y = torch.matmul(a, b)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _op_div(torch, F, node, a, b):
    if not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc").to(a.dtype)
    return a / b


def _op_pow(torch, F, node, a, b):
    if b.dim() == 0 and b.is_floating_point() and float(b) == 2.0:
        return a * a
    return torch.pow(a, b).to(a.dtype)


def _op_mod(torch, F, node, a, b):
    return torch.fmod(a, b) if int(node.attr("fmod", 0)) else torch.remainder(a, b)


def _op_clip(torch, F, node, x, low=None, high=None):
    if node.opset < 11:
        low_v, high_v = node.attr("min"), node.attr("max")
        return torch.clamp(x, min=low_v, max=high_v)
    if low is not None and high is not None:
        if x.is_floating_point() and low.dim() == 0 and high.dim() == 0 and not low.requires_grad \
                and not high.requires_grad and float(low) <= float(high):
            return F.hardtanh(x, float(low), float(high))  # one fused kernel forward and backward (ReLU6)
        # (min above max: every value becomes max, in ONNX Runtime as in torch.clamp; hardtanh refuses it)
        return torch.clamp(x, min=low.to(x.dtype), max=high.to(x.dtype))
    if low is not None:
        return torch.clamp(x, min=low.to(x.dtype))
    if high is not None:
        return torch.clamp(x, max=high.to(x.dtype))
    return x


def _softmax_like(torch, F, node, x, fn):
    if node.opset >= 13:
        return fn(x, dim=int(node.attr("axis", -1)))
    axis = _axis(int(node.attr("axis", 1)), x.dim())
    shape = x.shape
    flat = x.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
    return fn(flat, dim=1).reshape(shape)


def _op_cast(torch, F, node, x):
    return x.to(_torch_dtype(torch, node.attr("to")))


def _op_shape(torch, F, node, x):
    dims = list(x.shape)
    start = node.attr("start", 0)
    end = node.attr("end", None)
    dims = dims[start:end] if end is not None else dims[start:]
    return torch.tensor(dims, dtype=torch.int64)


def _op_reshape(torch, F, node, x, shape):
    dims = _ints(torch, shape)
    if not int(node.attr("allowzero", 0)):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _op_flatten(torch, F, node, x):
    axis = _axis(int(node.attr("axis", 1)), x.dim())
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(outer, -1)


def _op_transpose(torch, F, node, x):
    perm = node.attr("perm")
    if perm is None:
        perm = list(range(x.dim()))[::-1]
    return x.permute(*perm)


def _axes_of(torch, node, axes_input):
    if axes_input is not None:
        return _ints(torch, axes_input)
    axes = node.attr("axes")
    return None if axes is None else list(axes)


def _op_squeeze(torch, F, node, x, axes=None):
    dims = _axes_of(torch, node, axes)
    if dims is None:
        return x.squeeze()
    dims = sorted((_axis(a, x.dim()) for a in dims), reverse=True)
    for d in dims:
        x = x.squeeze(d)
    return x


def _op_unsqueeze(torch, F, node, x, axes=None):
    dims = _axes_of(torch, node, axes) or []
    rank = x.dim() + len(dims)
    for d in sorted(_axis(a, rank) for a in dims):
        x = x.unsqueeze(d)
    return x


def _op_concat(torch, F, node, *xs):
    xs = [x for x in xs if x is not None]
    return torch.cat(xs, dim=int(node.attr("axis")))


def _op_split(torch, F, node, x, split=None):
    axis = _axis(int(node.attr("axis", 0)), x.dim())
    sizes = _ints(torch, split) if split is not None else node.attr("split")
    count = len(node.outputs)
    if not sizes:
        parts = int(node.attr("num_outputs", count))
        size = x.shape[axis]
        chunk = -(-size // parts)
        sizes = [min(chunk, size - i * chunk) for i in range(parts)]
    return tuple(torch.split(x, list(sizes), dim=axis))


def _slice_indices(size: int, start: int, end: int, step: int) -> range:
    return range(size)[slice(start, end, step)]


def _op_slice(torch, F, node, x, starts=None, ends=None, axes=None, steps=None):
    if node.opset < 10:
        starts_l, ends_l = list(node.attr("starts")), list(node.attr("ends"))
        axes_l = list(node.attr("axes", range(len(starts_l))))
        steps_l = [1] * len(starts_l)
    else:
        starts_l, ends_l = _ints(torch, starts), _ints(torch, ends)
        axes_l = _ints(torch, axes) if axes is not None else list(range(len(starts_l)))
        steps_l = _ints(torch, steps) if steps is not None else [1] * len(starts_l)
    index: list[Any] = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts_l, ends_l, axes_l, steps_l):
        axis = _axis(axis, x.dim())
        size = x.shape[axis]
        start = max(min(start, size + 1), -size - 1) if abs(start) > 2**62 else start
        end = max(min(end, size + 1), -size - 1) if abs(end) > 2**62 else end
        picked = _slice_indices(size, start, end, step)
        if step > 0:
            index[axis] = slice(picked.start, picked.start + len(picked) * step if len(picked) else picked.start, step)
        else:
            flips.append((axis, list(picked)))
    y = x[tuple(index)]
    for axis, picked in flips:
        y = torch.index_select(y, axis, torch.tensor(picked, dtype=torch.int64))
    return y


def _op_gather(torch, F, node, data, indices):
    axis = _axis(int(node.attr("axis", 0)), data.dim())
    idx = indices.to(torch.int64)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    picked = torch.index_select(data, axis, idx.reshape(-1))
    shape = list(data.shape[:axis]) + list(indices.shape) + list(data.shape[axis + 1:])
    return picked.reshape(shape)


def _op_gather_elements(torch, F, node, data, indices):
    axis = _axis(int(node.attr("axis", 0)), data.dim())
    idx = indices.to(torch.int64)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    return torch.gather(data, axis, idx)


def _op_expand(torch, F, node, x, shape):
    target = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(torch, shape)))
    return x.expand(target)


def _op_constant(torch, F, node):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            value = node.attrs[key]
            if key == "value":
                return _to_tensor(torch, numpy_helper.to_array(value))
            if key in ("value_float", "value_floats"):
                return torch.tensor(value, dtype=torch.float32)
            return torch.tensor(value, dtype=torch.int64)
    raise _unsupported(node, f"Constant with attribute {sorted(node.attrs)}")


def _op_constant_of_shape(torch, F, node, shape):
    value = node.attrs.get("value")
    fill = _to_tensor(torch, numpy_helper.to_array(value)).reshape(-1) if value is not None else torch.zeros(1)
    return torch.full(_ints(torch, shape), fill[0].item(), dtype=fill.dtype)


def _op_range(torch, F, node, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _op_where(torch, F, node, cond, a, b):
    return torch.where(cond.to(torch.bool), a, b)


def _reduce_axes(torch, node, x, axes_input):
    axes = _axes_of(torch, node, axes_input)
    if not axes:
        if int(node.attr("noop_with_empty_axes", 0)):
            return None, True
        return list(range(x.dim())), False
    return [_axis(a, x.dim()) for a in axes], False


def _make_reduce(kind: str):
    def run(torch, F, node, x, axes=None):
        dims, noop = _reduce_axes(torch, node, x, axes)
        if noop:
            return x
        keep = bool(int(node.attr("keepdims", 1)))
        if kind == "mean":
            return x.mean(dim=dims, keepdim=keep)
        if kind == "sum":
            return x.sum(dim=dims, keepdim=keep)
        if kind == "max":
            return x.amax(dim=dims, keepdim=keep)
        if kind == "min":
            return x.amin(dim=dims, keepdim=keep)
        if kind == "prod":
            y = x
            for d in sorted(dims, reverse=True):
                y = y.prod(dim=d, keepdim=keep)
            return y
        if kind == "l2":
            return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
        if kind == "l1":
            return x.abs().sum(dim=dims, keepdim=keep)
        if kind == "sumsquare":
            return (x * x).sum(dim=dims, keepdim=keep)
        raise AssertionError(kind)
    return run


def _op_argmax(torch, F, node, x, largest=True):
    axis = int(node.attr("axis", 0))
    keep = bool(int(node.attr("keepdims", 1)))
    if int(node.attr("select_last_index", 0)):
        raise _unsupported(node, "select_last_index=1")
    return (torch.argmax if largest else torch.argmin)(x, dim=axis, keepdim=keep)


def _op_global_pool(kind: str):
    def run(torch, F, node, x):
        dims = list(range(2, x.dim()))
        return x.mean(dim=dims, keepdim=True) if kind == "avg" else x.amax(dim=dims, keepdim=True)
    return run


def _op_pool(kind: str):
    def run(torch, F, node, x):
        kernel = list(node.attr("kernel_shape"))
        rank = len(kernel)
        strides = list(node.attr("strides", [1] * rank))
        dilations = list(node.attr("dilations", [1] * rank))
        if node.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and any(d != 1 for d in dilations):
            raise _unsupported(node, "auto_pad SAME with dilations (ONNX Runtime sizes that output otherwise than "
                                     "the ONNX spec)")
        begins, ends = _conv_padding(node, x, kernel, strides, dilations)
        ceil_mode = bool(int(node.attr("ceil_mode", 0)))
        sizes = None  # ONNX Runtime's output size, where padding by hand hides its rule from torch
        if begins != ends or any(2 * p > k for p, k in zip(begins, kernel)):
            if kind == "avg" and not int(node.attr("count_include_pad", 0)) and any(begins + ends):
                raise _unsupported(node, "asymmetric padding with count_include_pad=0")
            if ceil_mode:  # a window that would start in the end padding is dropped (ORT, torch alike)
                sizes = [_ceil_pool_size(size, k, s, d, b, e) for size, k, s, d, b, e
                         in zip(x.shape[2:], kernel, strides, dilations, begins, ends)]
            x = _explicit_pad(torch, F, x, begins, ends, value=-math.inf if kind == "max" else 0.0)
            begins = [0] * rank
        if kind == "max":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}.get(rank)
            if fn is None:
                raise _unsupported(node, f"{rank}-D pooling")
            return _cropped(fn(x, kernel, strides, begins, dilations, ceil_mode=ceil_mode), sizes)
        if any(d != 1 for d in dilations):
            raise _unsupported(node, "dilated average pooling")
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}.get(rank)
        if fn is None:
            raise _unsupported(node, f"{rank}-D pooling")
        return _cropped(fn(x, kernel, strides, begins, ceil_mode=ceil_mode,
                           count_include_pad=bool(int(node.attr("count_include_pad", 0)))), sizes)
    return run


def _ceil_pool_size(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> int:
    """A pooled axis's length with ``ceil_mode``: ``ceil((size + pads − span) / stride) + 1``, less one when
    the last window would start in the end padding (ONNX Runtime's rule, as torch's for symmetric pads)."""
    span = (kernel - 1) * dilation + 1
    count = -(-(size + begin + end - span) // stride) + 1
    return count - 1 if (count - 1) * stride >= size + begin else count


def _cropped(y, sizes: Optional[Sequence[int]]):
    """``y`` cut to ``sizes`` on its spatial axes (None: as it is)."""
    if sizes is None:
        return y
    return y[(slice(None), slice(None)) + tuple(slice(0, size) for size in sizes)]


def _op_pad(torch, F, node, x, pads=None, value=None, axes=None):
    mode = node.attr("mode", "constant")
    if node.opset < 11:
        pad_list = list(node.attr("pads"))
        fill = float(node.attr("value", 0.0))
        axes_l = list(range(x.dim()))
    else:
        pad_list = _ints(torch, pads)
        fill = float(value.reshape(-1)[0].item()) if value is not None and value.numel() else 0.0
        axes_l = [_axis(a, x.dim()) for a in _ints(torch, axes)] if axes is not None else list(range(x.dim()))
    n = len(axes_l)
    begins = [0] * x.dim()
    ends = [0] * x.dim()
    for i, a in enumerate(axes_l):
        begins[a], ends[a] = pad_list[i], pad_list[n + i]
    if mode == "constant":
        return _explicit_pad(torch, F, x, begins, ends, value=fill)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise _unsupported(node, f"pad mode '{mode}'")
    first = next((i for i in range(x.dim()) if begins[i] or ends[i]), x.dim())
    if x.dim() - first > 3 or first < 1:
        raise _unsupported(node, f"pad mode '{mode}' on leading axes")
    torch_pads: list[int] = []
    for b, e in zip(reversed(begins[first:]), reversed(ends[first:])):
        torch_pads += [b, e]
    return F.pad(x, torch_pads, mode=torch_mode)


def _op_batch_norm(torch, F, node, x, scale, bias, mean, var):
    if int(node.attr("training_mode", 0)):
        raise _unsupported(node, "training_mode=1")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(node.attr("epsilon", 1e-5)))


def _op_instance_norm(torch, F, node, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=float(node.attr("epsilon", 1e-5)))


def _op_layer_norm(torch, F, node, x, scale, bias=None):
    axis = _axis(int(node.attr("axis", -1)), x.dim())
    eps = float(node.attr("epsilon", 1e-5))
    shape = tuple(x.shape[axis:])
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    y = F.layer_norm(x, shape, None, None, eps) * scale
    return y if bias is None else y + bias


def _op_gelu(torch, F, node, x):
    return F.gelu(x, approximate="tanh" if node.attr("approximate", "none") == "tanh" else "none")


def _op_variadic(kind: str):
    def run(torch, F, node, *xs):
        xs = [x for x in xs if x is not None]
        y = xs[0]
        for x in xs[1:]:
            y = {"max": torch.maximum, "min": torch.minimum, "sum": torch.add, "mean": torch.add}[kind](y, x)
        return y / len(xs) if kind == "mean" else y
    return run


def _op_einsum(torch, F, node, *xs):
    return torch.einsum(node.attr("equation"), *xs)


def _op_tile(torch, F, node, x, repeats):
    return x.repeat(_ints(torch, repeats))


def _op_trilu(torch, F, node, x, k=None):
    offset = int(k.item()) if k is not None else 0
    return torch.triu(x, offset) if int(node.attr("upper", 1)) else torch.tril(x, offset)


def _op_cumsum(torch, F, node, x, axis):
    if int(node.attr("exclusive", 0)) or int(node.attr("reverse", 0)):
        raise _unsupported(node, "exclusive or reverse CumSum")
    return torch.cumsum(x, dim=int(axis.item()))


def _op_dropout(torch, F, node, x, *rest):
    return (x, torch.ones_like(x, dtype=torch.bool)) if len(node.outputs) > 1 else x


def _unary(fn_name: str):
    def run(torch, F, node, x):
        return getattr(torch, fn_name)(x)
    return run


def _binary(fn_name: str):
    def run(torch, F, node, a, b):
        return getattr(torch, fn_name)(a, b)
    return run


def _op_hard_sigmoid(torch, F, node, x):
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def _op_prelu(torch, F, node, x, slope):
    return torch.where(x < 0, x * slope, x)


OPS: dict[str, Callable] = {
    "Conv": _op_conv, "Gemm": _op_gemm,
    "MatMul": lambda torch, F, node, a, b: torch.matmul(a, b),
    "Add": lambda torch, F, node, a, b: a + b,
    "Sub": lambda torch, F, node, a, b: a - b,
    "Mul": lambda torch, F, node, a, b: a * b,
    "Div": _op_div, "Pow": _op_pow, "Mod": _op_mod,
    "Relu": lambda torch, F, node, x: F.relu(x),
    "LeakyRelu": lambda torch, F, node, x: F.leaky_relu(x, float(node.attr("alpha", 0.01))),
    "Elu": lambda torch, F, node, x: F.elu(x, float(node.attr("alpha", 1.0))),
    "Selu": lambda torch, F, node, x: float(node.attr("gamma", 1.0507009873554805)) * torch.where(
        x > 0, x, float(node.attr("alpha", 1.6732632423543772)) * (torch.exp(x) - 1)),
    "PRelu": _op_prelu, "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"), "Erf": _unary("erf"),
    "HardSigmoid": _op_hard_sigmoid, "HardSwish": lambda torch, F, node, x: F.hardswish(x),
    "Softplus": lambda torch, F, node, x: F.softplus(x), "Softsign": lambda torch, F, node, x: x / (1 + x.abs()),
    "Gelu": _op_gelu, "Mish": lambda torch, F, node, x: F.mish(x),
    "Sqrt": _unary("sqrt"), "Exp": _unary("exp"), "Log": _unary("log"), "Abs": _unary("abs"),
    "Neg": _unary("neg"), "Reciprocal": _unary("reciprocal"), "Floor": _unary("floor"), "Ceil": _unary("ceil"),
    "Round": _unary("round"), "Sign": _unary("sign"), "Sin": _unary("sin"), "Cos": _unary("cos"),
    "IsNaN": _unary("isnan"), "Not": _unary("logical_not"),
    "And": _binary("logical_and"), "Or": _binary("logical_or"), "Xor": _binary("logical_xor"),
    "Equal": _binary("eq"), "Less": _binary("lt"), "LessOrEqual": _binary("le"), "Greater": _binary("gt"),
    "GreaterOrEqual": _binary("ge"),
    "Clip": _op_clip,
    "Softmax": lambda torch, F, node, x: _softmax_like(torch, F, node, x, torch.softmax),
    "LogSoftmax": lambda torch, F, node, x: _softmax_like(torch, F, node, x, torch.log_softmax),
    "Cast": _op_cast, "CastLike": lambda torch, F, node, x, like: x.to(like.dtype),
    "Identity": lambda torch, F, node, x: x, "Dropout": _op_dropout,
    "Shape": _op_shape, "Size": lambda torch, F, node, x: torch.tensor(x.numel(), dtype=torch.int64),
    "Reshape": _op_reshape, "Flatten": _op_flatten, "Transpose": _op_transpose,
    "Squeeze": _op_squeeze, "Unsqueeze": _op_unsqueeze, "Concat": _op_concat, "Split": _op_split,
    "Slice": _op_slice, "Gather": _op_gather, "GatherElements": _op_gather_elements, "Expand": _op_expand,
    "Constant": _op_constant, "ConstantOfShape": _op_constant_of_shape, "Range": _op_range, "Where": _op_where,
    "ReduceMean": _make_reduce("mean"), "ReduceSum": _make_reduce("sum"), "ReduceMax": _make_reduce("max"),
    "ReduceMin": _make_reduce("min"), "ReduceProd": _make_reduce("prod"), "ReduceL2": _make_reduce("l2"),
    "ReduceL1": _make_reduce("l1"), "ReduceSumSquare": _make_reduce("sumsquare"),
    "ArgMax": lambda torch, F, node, x: _op_argmax(torch, F, node, x, True),
    "ArgMin": lambda torch, F, node, x: _op_argmax(torch, F, node, x, False),
    "GlobalAveragePool": _op_global_pool("avg"), "GlobalMaxPool": _op_global_pool("max"),
    "AveragePool": _op_pool("avg"), "MaxPool": _op_pool("max"),
    "Pad": _op_pad, "BatchNormalization": _op_batch_norm, "InstanceNormalization": _op_instance_norm,
    "LayerNormalization": _op_layer_norm,
    "Max": _op_variadic("max"), "Min": _op_variadic("min"), "Sum": _op_variadic("sum"), "Mean": _op_variadic("mean"),
    "Einsum": _op_einsum, "Tile": _op_tile, "Trilu": _op_trilu, "CumSum": _op_cumsum,
}
"""ONNX op (default domain) → implementation on torch ops. Anything else is refused by name."""


def check_distillable(model: onnx.ModelProto) -> None:
    """Refuse, before anything runs, a model distillation cannot train: one that fixes its batch (the
    training and held-out batches vary; export it with a dynamic batch dim) or holds an op the torch
    interpreter cannot run. Raises :class:`UnsupportedModelError`."""
    from .model_io import fixed_batch

    fixed = fixed_batch(model)
    if fixed is not None:
        name = next((spec.name for spec in graph_inputs(model)), "x")
        raise UnsupportedModelError(f"distillation needs a model whose batch dim is free; this one fixes it to {fixed} "
                                    "(export it again with a dynamic batch axis, e.g. torch.onnx.export(..., "
                                    f"dynamo=True, dynamic_shapes={{'{name}': {{0: torch.export.Dim('batch')}}}}) or, "
                                    f"with dynamo=False, dynamic_axes={{'{name}': {{0: 'batch'}}}}), or compress "
                                    "without --distill")
    _refuse_unsupported_ops(model)


def _refuse_unsupported_ops(model: onnx.ModelProto) -> None:
    """Raise :class:`UnsupportedModelError` naming the ops :class:`TorchGraph` cannot run, if any."""
    bad = unsupported_ops(model)
    if bad:
        ops = sorted({op for _, op in bad})
        raise UnsupportedModelError(
            f"distillation cannot convert this model: op {', '.join(ops)} (first node '{bad[0][0]}') "
            f"is not supported by the torch interpreter; supported ops: {len(OPS)} standard ones, "
            "see onnx_alds.distill.OPS; compress without --distill (or distill the model in the framework it came "
            "from)")


def unsupported_ops(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(node name, op)`` of every node :class:`TorchGraph` cannot run (other domains included)."""
    found = []
    for node in model.graph.node:
        domain = node.domain or ""
        if domain not in ("", "ai.onnx") or node.op_type not in OPS:
            label = node.op_type if domain in ("", "ai.onnx") else f"{domain}::{node.op_type}"
            found.append((node.name or node.output[0], label))
    return found


def _make_graph_module():
    """Define :class:`TorchGraph` lazily: torch must not be imported before it is needed."""
    torch = import_torch()
    import torch.nn.functional as F

    class TorchGraph(torch.nn.Module):
        """An ONNX graph executed node by node (topological order) on torch ops.

        ``trainable`` initializers become ``nn.Parameter``s (float32 or float64 as stored); every
        other initializer is a frozen tensor. Nodes whose inputs are all frozen constants are
        evaluated once here (constant folding), so the shape arithmetic that exporters leave in
        graphs costs nothing per step. :meth:`forward` takes the graph inputs by name and returns the
        named tensors asked for (graph outputs or any intermediate tensor).
        """

        def __init__(self, model: onnx.ModelProto, trainable: Sequence[str] = ()) -> None:
            super().__init__()
            _refuse_unsupported_ops(model)
            opset = opset_version(model)
            wanted = set(trainable)
            self.param_names: list[str] = []
            self._params = torch.nn.ParameterList()
            constants: dict[str, Any] = {}
            params: dict[str, Any] = {}
            for tensor in model.graph.initializer:
                array = numpy_helper.to_array(tensor)
                if tensor.name in wanted:
                    if array.dtype not in (np.float32, np.float64):
                        raise UnsupportedModelError(
                            f"factor tensor '{tensor.name}' is {array.dtype}; distillation trains float32/float64 "
                            "tensors only (compress a float32 model)")
                    param = torch.nn.Parameter(_to_tensor(torch, array))
                    self._params.append(param)
                    self.param_names.append(tensor.name)
                    params[tensor.name] = param
                else:
                    constants[tensor.name] = _to_tensor(torch, array)
            missing = wanted - set(params)
            if missing:
                raise UnsupportedModelError(f"trainable tensor(s) {sorted(missing)[:3]} are not initializers")
            self.input_names = [spec.name for spec in graph_inputs(model)]
            self.output_names = [o.name for o in model.graph.output]
            nodes = [_Node(node, opset) for node in model.graph.node]
            with torch.no_grad():
                self.nodes = self._fold(torch, F, nodes, constants)
            # frozen constants that some remaining node reads
            used = {name for node in self.nodes for name in node.inputs if name}
            used |= set(self.output_names)
            self.constants = {k: v for k, v in constants.items() if k in used}
            self.params_by_name = params
            self._check_order()

        @staticmethod
        def _fold(torch, F, nodes: list[_Node], constants: dict[str, Any]) -> list[_Node]:
            remaining = []
            for node in nodes:
                if all((not name) or name in constants for name in node.inputs):
                    outputs = _run_node(torch, F, node, [constants[n] if n else None for n in node.inputs])
                    for name, value in zip(node.outputs, outputs):
                        if name:
                            constants[name] = value
                else:
                    remaining.append(node)
            return remaining

        def _check_order(self) -> None:
            known = set(self.constants) | set(self.params_by_name) | set(self.input_names)
            for node in self.nodes:
                for name in node.inputs:
                    if name and name not in known:
                        raise UnsupportedModelError(
                            f"node '{node.name}' reads '{name}', which no earlier node produces "
                            "(the graph is not in topological order or uses outer-scope values)")
                known.update(n for n in node.outputs if n)

        def named_factors(self) -> dict[str, Any]:
            """The trainable tensors by initializer name."""
            return dict(zip(self.param_names, self._params))

        def forward(self, feeds: Mapping[str, Any], wanted: Optional[Sequence[str]] = None,
                    detach: Collection[str] = ()) -> dict[str, Any]:
            """The ``wanted`` tensors (default: the graph outputs) for ``feeds``; the tensors named in
            ``detach`` pass no gradient to what produced them (layer-local training)."""
            wanted = list(wanted) if wanted is not None else list(self.output_names)
            env: dict[str, Any] = dict(self.constants)
            env.update(self.params_by_name)
            for name in self.input_names:
                if name not in feeds:
                    raise InputDataError(f"no value for graph input '{name}'")
                env[name] = feeds[name]
            for node in self.nodes:
                outputs = _run_node(torch, F, node, [env[n] if n else None for n in node.inputs])
                for name, value in zip(node.outputs, outputs):
                    if name:
                        env[name] = value.detach() if name in detach else value
            return {name: env[name] for name in wanted}

    return TorchGraph


def _run_node(torch, F, node: _Node, values: list) -> tuple:
    while values and values[-1] is None:
        values.pop()
    try:
        result = OPS[node.op](torch, F, node, *values)
    except UnsupportedModelError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"distillation failed to run node '{node.name}' (op {node.op}) on torch: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return result if isinstance(result, tuple) else (result,)


_GRAPH_CLASS = None


def torch_graph(model: onnx.ModelProto, trainable: Sequence[str] = ()):
    """A :class:`TorchGraph` (an ``nn.Module``) of ``model`` with ``trainable`` initializers as parameters."""
    global _GRAPH_CLASS
    if _GRAPH_CLASS is None:
        _GRAPH_CLASS = _make_graph_module()
    return _GRAPH_CLASS(model, trainable)


# ==================================================================================================
# Which tensors train, and where the teacher's intermediate outputs match the student's
# ==================================================================================================

_WEIGHTED = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class FactorSet:
    """The tensors distillation may change, and the matching points between teacher and student.

    ``factors``: initializers of the compressed model that the original lacks (the rewrite's factor
    tensors, and the sliced tensors of a pruned block, except a BatchNormalization's statistics); ``biases``: the biases of the decoder nodes (Conv/Gemm input C, or a MatMul's bias
    ``Add``) when they are initializers used by nothing else; ``points``: tensors produced by a
    factorized pair that exist under the same name in the original graph (each factorized layer's
    output), excluding graph outputs.
    """

    factors: tuple[str, ...]
    biases: tuple[str, ...]
    points: tuple[str, ...]

    @property
    def trainable(self) -> tuple[str, ...]:
        return self.factors + self.biases


def factor_tensors(original: onnx.ModelProto, compressed: onnx.ModelProto) -> FactorSet:
    """Find the factor tensors by difference with the original, not by name pattern."""
    before = {t.name for t in original.graph.initializer}
    initializers = {t.name: t for t in compressed.graph.initializer}
    statistics = {name for node in compressed.graph.node if node.op_type == "BatchNormalization"
                  for name in node.input[3:5]}  # running mean and variance: fixed statistics, not weights
    # a factor is new and is the weight of a Conv/Gemm/MatMul: a new name on anything else (a tool renamed a
    # LayerNorm's scale) stays frozen; an initializer that is also a graph input (callers override it) too
    overridable = overridable_initializers(compressed)
    weights = {name for node in compressed.graph.node if is_layer_node(node)
               for name in (node.input[:2] if node.op_type == "MatMul" else node.input[1:2])}
    factors = [t.name for t in compressed.graph.initializer if t.name not in before and t.name not in statistics
               and t.name in weights and t.name not in overridable]
    factor_set = set(factors)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in compressed.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    biases: list[str] = []

    def add_bias(name: str, user: onnx.NodeProto) -> None:
        if name in initializers and name not in factor_set and name not in biases and name not in overridable \
                and all(c is user for c in consumers.get(name, [])) \
                and numpy_helper.to_array(initializers[name]).dtype in (np.float32, np.float64):
            biases.append(name)

    factor_nodes = [n for n in compressed.graph.node if any(i in factor_set for i in n.input)]
    after_bias: dict[str, str] = {}  # a MatMul decoder's output -> the output of its bias Add
    for node in factor_nodes:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
            add_bias(node.input[2], node)
        elif node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in factor_set:
            users = consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add" and not any(i in factor_set for i in users[0].input):
                other = [i for i in users[0].input if i != node.output[0]]
                if len(other) == 1:
                    add_bias(other[0], users[0])
                    if other[0] in biases:
                        after_bias[node.output[0]] = users[0].output[0]
    produced_before = {o for n in original.graph.node for o in n.output}
    outputs = {o.name for o in compressed.graph.output}
    points: list[str] = []
    for node in factor_nodes:
        for name in node.output:
            name = after_bias.get(name, name) if after_bias.get(name) in produced_before else name
            if name in produced_before and name not in outputs and name not in points:
                points.append(name)
    if points:  # a pruned block's hidden tensor keeps its name but not its width: no matching point
        before_shapes, after_shapes = _value_shapes(original), _value_shapes(compressed)
        points = [name for name in points if not _shapes_differ(before_shapes.get(name), after_shapes.get(name))]
    return FactorSet(tuple(factors), tuple(biases), tuple(points))


def _points_of_one_shape(teacher, student, train: Mapping[str, np.ndarray], points: Sequence[str], batch: int
                         ) -> tuple[list[str], int]:
    """The matching points whose tensors have the same shape in both models on the first training batch, and
    how many were left out (inferred shapes with dims unknown in either model cannot tell)."""
    if not points:
        return [], 0
    torch = import_torch()
    first = {name: array[:batch] for name, array in train.items()}
    expected = dict(zip(points, teacher.run(list(points), first)))
    with torch.no_grad():
        got = student({name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in first.items()},
                      list(points))
    kept = [name for name in points if tuple(got[name].shape) == tuple(np.shape(expected[name]))]
    return kept, len(points) - len(kept)


def _shapes_differ(before: Optional[tuple], after: Optional[tuple]) -> bool:
    """Whether two inferred shapes surely differ: another rank, or a dim known in both with other sizes. A
    dim named or unknown in either matches (shape inference names the dims it cannot size anew in each
    model: ``unk__2`` in one is ``unk__6`` in the other); the points are compared at run time too."""
    if before is None or after is None:
        return False
    return len(before) != len(after) or any(isinstance(a, int) and isinstance(b, int) and a and b and a != b
                                             for a, b in zip(before, after))


def _value_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Every value's inferred shape (ints, dim names, or None where unknown), by name."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an unknown op or a graph over 2 GB: no shapes, every point is compared at run time
        return {}
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                       for d in value.type.tensor_type.shape.dim)
    return shapes


# ==================================================================================================
# Augmentation
# ==================================================================================================


class Augmenter:
    """Makes training batches from the training samples; subclasses perturb them to fit the input kind."""

    kind = "resample"
    note: Optional[str] = None  # for the report's notes: an augmentation left out, and why

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.count = len(next(iter(self.arrays.values())))

    def on(self, arrays: Mapping[str, np.ndarray]) -> "Augmenter":
        """The same augmentation, with the same decisions, of other samples (the held-out views)."""
        return Augmenter(arrays)

    def describe(self) -> str:
        return "resampling only"

    def pick(self, rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
        index = rng.integers(0, self.count, size=size)
        return {k: v[index] for k, v in self.arrays.items()}

    def batch(self, rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
        return self.pick(rng, size)


class NoiseAugmenter(Augmenter):
    """Float inputs that are not images: per-sample scale (±10 %) and Gaussian noise (≤ 5 % of the std)."""

    kind = "noise"

    def __init__(self, arrays, float_names: Sequence[str]) -> None:
        super().__init__(arrays)
        self.float_names = list(float_names)
        self.std = {k: float(np.std(self.arrays[k], dtype=np.float64)) or 1.0 for k in self.float_names}

    def on(self, arrays):
        return NoiseAugmenter(arrays, self.float_names)

    def describe(self) -> str:
        kept = [k for k in self.arrays if k not in self.float_names]
        return ("resampling, per-sample scale ±10 %, Gaussian noise ≤ 5 % of the std"
                + (f" (of {', '.join(self.float_names)}; {', '.join(kept)} unchanged)" if kept else ""))

    def batch(self, rng, size):
        out = self.pick(rng, size)
        for k in self.float_names:
            x = out[k].astype(np.float32)
            shape = (size,) + (1,) * (x.ndim - 1)
            x = x * rng.uniform(0.9, 1.1, size=shape) + rng.standard_normal(x.shape) * (
                rng.uniform(0, 0.05, size=shape) * self.std[k])
            out[k] = x.astype(self.arrays[k].dtype)
        return out


class ImageAugmenter(Augmenter):
    """One image input (N,C,H,W or N,H,W,C with C = 1 or 3), augmented in its preprocessed form.

    Per sample: a random affine view (zoom so the view covers 55-110 % of the side, aspect 3/4-4/3,
    shift anywhere the view fits, rotation ±10°; a horizontal flip for colour images), bilinear,
    border pixels repeated; contrast ×0.75-1.25 around the sample mean and a brightness shift of
    ±0.2 std (colour: per-channel gain ±10 %); Gaussian noise up to 0.1 std; and, for half of the
    samples, a mix ``λ·x + (1-λ)·x'`` with another sample (λ in 0.5-1). A fifth of the samples stay
    as they are.
    """

    kind = "image"

    def __init__(self, arrays, name: str, layout: str) -> None:
        super().__init__(arrays)
        self.name, self.layout = name, layout
        self.std = float(np.std(self.arrays[name], dtype=np.float64)) or 1.0
        x = self.arrays[name]
        self.channels = x.shape[1] if layout == "NCHW" else x.shape[3]

    def on(self, arrays):
        return ImageAugmenter(arrays, self.name, self.layout)

    def describe(self) -> str:
        flip = ", horizontal flips" if self.channels == 3 else ""
        return (f"image {self.layout}: random zoom/crop 55-110 %, aspect 3/4-4/3, rotation ±10°{flip}, contrast, "
                "brightness, noise, mixing of two samples (half the batch); a fifth unchanged (chosen from the "
                "input's shape: give --no-augment if these arrays are not images)")

    def batch(self, rng, size):
        torch = import_torch()
        import torch.nn.functional as F

        out = self.pick(rng, size)
        x = out[self.name].astype(np.float32)
        if self.layout == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        keep = rng.uniform(size=size) < 0.2
        side = rng.uniform(0.55, 1.1, size=size)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), size=size))
        sx, sy = side * np.sqrt(aspect), side / np.sqrt(aspect)
        angle = np.deg2rad(rng.uniform(-10, 10, size=size))
        flip = np.where((rng.uniform(size=size) < 0.5) & (self.channels == 3), -1.0, 1.0)
        tx = rng.uniform(-1, 1, size=size) * np.abs(1 - sx)
        ty = rng.uniform(-1, 1, size=size) * np.abs(1 - sy)
        cos, sin = np.cos(angle), np.sin(angle)
        theta = np.zeros((size, 2, 3), np.float32)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = sx * cos * flip, -sy * sin, tx
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sx * sin * flip, sy * cos, ty
        theta[keep] = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
        tx_ = torch.from_numpy(x)
        grid = F.affine_grid(torch.from_numpy(theta), list(tx_.shape), align_corners=False)
        y = F.grid_sample(tx_, grid, mode="bilinear", padding_mode="border", align_corners=False).numpy()
        shape = (size, 1, 1, 1)
        mean = y.mean(axis=(1, 2, 3), keepdims=True)
        contrast = rng.uniform(0.75, 1.25, size=shape)
        gain = rng.uniform(0.9, 1.1, size=(size, self.channels, 1, 1)) if self.channels == 3 else 1.0
        shift = rng.uniform(-0.2, 0.2, size=shape) * self.std
        noise = rng.standard_normal(y.shape) * rng.uniform(0, 0.1, size=shape) * self.std
        z = (y - mean) * contrast * gain + mean + shift + noise
        mix = (rng.uniform(size=size) < 0.5) & ~keep
        partner = rng.permutation(size)
        lam = rng.uniform(0.5, 1.0, size=shape)
        mixed = lam * z + (1 - lam) * z[partner]
        z = np.where(mix[:, None, None, None], mixed, z)
        z = np.where(keep[:, None, None, None], x, z).astype(np.float32)
        if self.layout == "NHWC":
            z = z.transpose(0, 2, 3, 1)
        out[self.name] = np.ascontiguousarray(z.astype(self.arrays[self.name].dtype))
        return out


class TokenAugmenter(Augmenter):
    """Token ids with an attention mask (N, L): new sentences from the calibration sentences.

    The first token and the last real token of every sentence are kept (``[CLS]``/``[SEP]`` in BERT
    tokenizers); between them a sample is, with probabilities 0.15/0.25/0.25/0.2/0.15: unchanged; a random
    span (at least a third of the sentence); a splice of the start of one sentence and the end of
    another; the sentence with 15 % or 40 % of its tokens swapped for random ids. When the ids index an
    embedding table (a ``Gather`` from an initializer), swaps draw any id from the smallest content id
    of the calibration sentences to the table's size, so that training sees far more of the vocabulary
    than a few dozen sentences hold; otherwise they draw ids of the calibration sentences.
    Padding uses the id found at masked positions (0 when there is none). The mask (int, or float
    0/1) holds ones, then zeros. Other integer inputs are rebuilt by what they hold (:func:`_other_rule`):
    a row every sample shares (``position_ids`` 0..L-1) is kept, one value per sentence
    (``token_type_ids``) fills the new sentence; an input that varies otherwise cannot be given to a new
    sentence, so then no sentence changes its length (no spans, no splices; ``note`` says so): samples
    are unchanged (30 %) or have 15 % (40 %) or 40 % (30 %) of their tokens swapped, every other input as
    given. When the sequence dim is dynamic (``trim``), a batch is only as wide as its longest sentence.
    """

    kind = "tokens"

    def __init__(self, arrays, ids: str, mask: str, others: Sequence[str], trim: bool = False,
                 vocabulary: Optional[int] = None, rules: Optional[Mapping[str, tuple]] = None) -> None:
        super().__init__(arrays)
        self.ids, self.mask, self.others = ids, mask, list(others)
        self.trim = trim  # drop the columns that are padding in every sentence of a batch
        self.vocabulary = vocabulary  # rows of the embedding table the ids index, when found
        tokens, mask_values = self.arrays[ids], self.arrays[mask]
        padded = tokens[mask_values == 0]
        self.pad = int(np.bincount(padded.astype(np.int64)).argmax()) if padded.size else 0
        self.lengths = mask_values.sum(axis=1).astype(int)
        pool = [tokens[i, 1:max(self.lengths[i] - 1, 1)] for i in range(self.count)]
        self.pool = np.concatenate(pool) if pool else np.array([self.pad])
        if self.pool.size == 0:
            self.pool = np.array([self.pad])
        # ids for random swaps: the calibration sentences' content ids, or, when the embedding table is
        # known, any id from the smallest content id seen up to the table's size (special tokens stay out)
        self.low = int(self.pool.min())
        self.high = int(vocabulary) if vocabulary and vocabulary > self.low + 1 else None
        # how a new sentence gets each other input (given: the training set's rules, for held-out views)
        self.rules = dict(rules) if rules is not None else {
            k: _other_rule(self.arrays[k], self.lengths) for k in self.others}
        fixed = [k for k in self.others if self.rules[k][0] == "copy"]
        self.spans = not fixed  # spans and splices change a sentence's length
        if fixed:
            self.note = (f"token input(s) {', '.join(repr(k) for k in fixed)} vary per sentence in a way a new "
                         "sentence cannot be given (neither one row for all samples nor one value per sentence): "
                         "no spans or splices, only token swaps, every other input as given")

    def on(self, arrays):
        return TokenAugmenter(arrays, self.ids, self.mask, self.others, trim=self.trim, vocabulary=self.vocabulary,
                              rules=self.rules)

    def describe(self) -> str:
        swaps = (f"ids {self.low}..{self.high - 1} of the embedding table" if self.high
                 else "ids of the calibration sentences")
        if not self.spans:
            return (f"token sentences of the given lengths: unchanged 30 %, 15 % of the tokens swapped 40 %, "
                    f"40 % swapped 30 % (swaps draw {swaps}; no spans or splices: see the note)")
        return (f"token sentences: unchanged 15 %, random spans 25 %, splices of two sentences 25 %, 15 % of the "
                f"tokens swapped 20 %, 40 % swapped 15 % (swaps draw {swaps})")

    def _swap(self, rng, tokens: np.ndarray, rate: float) -> np.ndarray:
        new = tokens.copy()
        swap = rng.uniform(size=len(new)) < rate
        count = int(swap.sum())
        if self.high:
            new[swap] = rng.integers(self.low, self.high, size=count)
        else:
            new[swap] = rng.choice(self.pool, size=count)
        return new

    def _content(self, i: int) -> np.ndarray:
        length = self.lengths[i]
        return self.arrays[self.ids][i, 1:max(length - 1, 1)]

    def batch(self, rng, size):
        width = self.arrays[self.ids].shape[1]
        ids = np.full((size, width), self.pad, dtype=self.arrays[self.ids].dtype)
        mask = np.zeros((size, width), dtype=self.arrays[self.mask].dtype)
        others = {k: np.zeros((size, width), dtype=self.arrays[k].dtype) for k in self.others}
        picks = rng.integers(0, self.count, size=size)
        for row, i in enumerate(picks):
            tokens = self.arrays[self.ids][i]
            length = self.lengths[i]
            if not self.spans:  # the sample's length, mask and other inputs as given; only its tokens change
                body = self._content(i)
                choice = rng.uniform()
                ids[row] = tokens
                if choice >= 0.3 and length >= 3:
                    ids[row, 1:1 + len(body)] = self._swap(rng, body, 0.15 if choice < 0.7 else 0.4)
                mask[row] = self.arrays[self.mask][i]
                for k in self.others:
                    others[k][row] = self.arrays[k][i]
                continue
            first, last = tokens[0], tokens[max(length - 1, 0)]
            body = self._content(i)
            choice = rng.uniform()
            if choice < 0.15 or len(body) < 3:
                new = body
            elif choice < 0.4:
                span = int(rng.integers(max(1, len(body) // 3), len(body) + 1))
                start = int(rng.integers(0, len(body) - span + 1))
                new = body[start:start + span]
            elif choice < 0.65:
                other = self._content(int(rng.integers(0, self.count)))
                cut_a = int(rng.integers(1, len(body) + 1))
                cut_b = int(rng.integers(0, max(len(other), 1)))
                new = np.concatenate([body[:cut_a], other[cut_b:]])
            elif choice < 0.85:
                new = self._swap(rng, body, 0.15)
            else:
                new = self._swap(rng, body, 0.4)
            new = new[:max(width - 2, 0)]
            sentence = np.concatenate([[first], new, [last]]) if length >= 2 else tokens[:max(length, 1)]
            n = min(len(sentence), width)
            ids[row, :n] = sentence[:n]
            mask[row, :n] = 1
            for k in self.others:
                rule, value = self.rules[k]
                if rule == "shared":
                    others[k][row] = value
                elif rule == "constant":
                    others[k][row] = self.arrays[k][i, 0]
                else:  # "filled": the sentence's value, then the padding value
                    others[k][row, :n] = self.arrays[k][i, 0]
                    others[k][row, n:] = value
        out = {self.ids: ids, self.mask: mask}
        out.update(others)
        if self.trim:
            used = max(int(mask.sum(axis=1).max()), 1)
            out = {k: np.ascontiguousarray(v[:, :used]) for k, v in out.items()}
        return out


def _other_rule(values: np.ndarray, lengths: np.ndarray) -> tuple[str, Any]:
    """How a new sentence gets the row of another integer input (N, L), from the given rows:
    ``("shared", row)`` when every sample has the same row (``position_ids`` 0..L-1: kept);
    ``("constant", None)`` when each row holds one value (``token_type_ids``: the value fills the row);
    ``("filled", pad)`` when each sentence holds one value and every padding position ``pad``;
    ``("copy", None)`` otherwise: no new row can be made without inventing values."""
    if len(values) and np.all(values == values[:1]):
        return "shared", values[0].copy()
    if np.all(values == values[:, :1]):
        return "constant", None
    real = np.arange(values.shape[1])[None, :] < lengths[:, None]
    padding = np.unique(values[~real])
    if padding.size == 1 and np.all((values == values[:, :1]) | ~real):
        return "filled", padding[0]
    return "copy", None


def _is_mask_like(name: str, values: np.ndarray) -> bool:
    """A float input that masks rather than carries data: named ``*mask*``, or holding only 0 and 1.
    It never gets noise; a 0/1 one may be the attention mask of token ids."""
    values = np.asarray(values)
    return "mask" in name.lower() or bool(np.all((values == 0) | (values == 1)))


def _is_right_padded(mask: np.ndarray) -> bool:
    """A 2-D mask of 0/1 values, each row ones and then zeros (what :class:`TokenAugmenter` rebuilds)."""
    mask = np.asarray(mask)
    return (mask.ndim == 2 and bool(np.all((mask == 0) | (mask == 1)))
            and bool(np.all(np.diff(mask.astype(np.int8), axis=1) <= 0)))


def _embedding_rows(model: onnx.ModelProto, ids: str) -> Optional[int]:
    """Rows of the embedding table that a Gather reads with the graph input ``ids``, if there is one."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == ids \
                and len(shapes.get(node.input[0], [])) == 2:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0:
                return int(shapes[node.input[0]][0])
    return None


def make_augmenter(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], *, augment: bool = True) -> Augmenter:
    """The augmenter that fits the model's inputs (see each class); ``augment=False``: resampling only.
    Mask-like float inputs (:func:`_is_mask_like`) are never perturbed: a 0/1 one beside integer ids is
    their attention mask, as an integer mask is."""
    if not augment:
        return Augmenter(arrays)
    specs = {spec.name: spec for spec in graph_inputs(model)}
    names = list(arrays)
    floats = [k for k in names if np.issubdtype(np.asarray(arrays[k]).dtype, np.floating)]
    ints = [k for k in names if np.issubdtype(np.asarray(arrays[k]).dtype, np.integer)]
    plain = [k for k in floats if not _is_mask_like(k, arrays[k])]
    if len(names) == 1 and plain and np.asarray(arrays[names[0]]).ndim == 4:
        x = np.asarray(arrays[names[0]])
        if x.shape[1] in (1, 3) and x.shape[2] > 4 and x.shape[3] > 4:
            return ImageAugmenter(arrays, names[0], "NCHW")
        if x.shape[3] in (1, 3) and x.shape[1] > 4 and x.shape[2] > 4:
            return ImageAugmenter(arrays, names[0], "NHWC")
    if not plain and ints:
        masks = [k for k in ints if "mask" in k.lower()] + [k for k in floats if k not in plain]
        rank2 = [k for k in ints if np.asarray(arrays[k]).ndim == 2]
        candidates = [k for k in rank2 if k not in masks and not any(
            s in k.lower() for s in ("type", "segment", "position"))]
        mask = np.asarray(arrays[masks[0]]) if len(masks) == 1 else None
        if len(candidates) == 1 and mask is not None and mask.ndim == 2 and np.all((mask == 0) | (mask == 1)) \
                and not _is_right_padded(mask):  # (left-padded: the spans TokenAugmenter rebuilds would not fit)
            resampled = Augmenter(arrays)
            resampled.note = (f"the attention mask {masks[0]!r} is not right-padded (a sample's 1s do not all come "
                              "first): token augmentation (resampled spans) is off and training resamples whole "
                              "sentences; pad on the right to use it")
            return resampled
        if len(masks) == 1 and len(candidates) == 1:
            others = [k for k in rank2 if k not in masks and k not in candidates]
            width = np.asarray(arrays[candidates[0]]).shape[1]
            if len(others) + 2 == len(names) and all(np.asarray(arrays[k]).shape[1] == width
                                                     for k in [masks[0], *others]):
                dims = [specs[k].dims for k in [candidates[0], masks[0], *others] if k in specs]
                dynamic = bool(dims) and all(len(d) == 2 and not isinstance(d[1], int) for d in dims)
                return TokenAugmenter(arrays, candidates[0], masks[0], others, trim=dynamic,
                                      vocabulary=_embedding_rows(model, candidates[0]))
    if plain:
        return NoiseAugmenter(arrays, plain)
    return Augmenter(arrays)


# ==================================================================================================
# Distillation
# ==================================================================================================


@dataclass(frozen=True)
class DistillSettings:
    """How :func:`distill` trains (the CLI flags of the same names).

    ``steps`` and ``minutes`` bound the run (the first reached stops it; neither given means
    ``DEFAULT_MINUTES``); ``lr`` is relative: each tensor's Adam step size is ``lr × RMS`` of its
    starting value, so that factors of every scale move at the same relative speed; the learning rate
    warms up over the first 3 % and decays along a cosine to 5 % of ``lr``. ``held_out`` is the fraction
    of the samples kept out of training (at least one), each evaluated with ``views`` extra augmented
    views; ``eval_every`` steps the held-out loss is measured, the best parameters kept, and after
    ``patience`` evaluations without a 0.1 % improvement the run stops; a held-out loss above ``DIVERGED``
    times the best restores the best values and halves the step size. ``intermediate_weight`` weighs
    the loss on the factorized layers' outputs against the loss on the model outputs (0 turns it off).
    ``batch_size`` None: ``DEFAULT_BATCH_SIZE``, or the number of training samples when there are fewer
    (the report says so); a batch size given is never changed. Integer settings take ints (numpy ints
    too, bools not), the others real numbers; a wrong type is an :class:`InputDataError`.
    """

    steps: Optional[int] = None
    minutes: Optional[float] = None
    batch_size: Optional[int] = None
    lr: float = 0.01
    held_out: float = 0.2
    views: int = 4
    intermediate_weight: float = 1.0
    eval_every: int = 25
    patience: int = 8
    augment: bool = True
    seed: int = 0
    threads: Optional[int] = None
    verify_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        from .argtypes import check_threads

        self._check_types()
        if self.steps is not None and self.steps < 1:
            raise InputDataError(f"steps={self.steps} (--steps): give a positive number of steps")
        check_threads(self.threads)
        if self.minutes is not None and not 0 < self.minutes < math.inf:
            raise InputDataError(f"minutes={self.minutes} (--minutes): give a positive, finite time budget")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputDataError(f"batch_size={self.batch_size} (--batch-size): give a positive batch size")
        if not 0 < self.held_out < 1:
            raise InputDataError(f"held_out={self.held_out} (--held-out): give a fraction in (0, 1)")
        if not 0 < self.lr < math.inf:
            raise InputDataError(f"lr={self.lr} (--lr): give a positive, finite learning rate")
        if not 0 <= self.intermediate_weight < math.inf:
            raise InputDataError(f"intermediate_weight={self.intermediate_weight} (--intermediate-weight): give a "
                                 "finite weight ≥ 0")
        if self.views < 0:
            raise InputDataError(f"views={self.views}: give a number of augmented held-out views ≥ 0")
        for name, value in (("eval_every", self.eval_every), ("patience", self.patience)):
            if value < 1:
                raise InputDataError(f"{name}={value} (--{name.replace('_', '-')}): give a positive number")
        if not 0 <= self.seed < 2 ** 32:
            raise InputDataError(f"seed={self.seed} (--seed) is out of range; give an integer in [0, 2**32)")

    def _check_types(self) -> None:
        """Refuse a setting of the wrong type (``steps=2.5``, ``steps=True``, ``seed="1"``) with one line
        naming it and the type wanted; numpy numbers become Python numbers."""
        for name, kind in _SETTING_KINDS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_SETTINGS:
                continue
            if kind == "bool":
                ok = isinstance(value, (bool, np.bool_))
                wanted, convert = "True or False", bool
            elif kind == "int":
                ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
                wanted, convert = "an integer", int
            else:
                ok = (isinstance(value, (int, float, np.integer, np.floating))
                      and not isinstance(value, (bool, np.bool_)))
                wanted, convert = "a number", float
            if not ok:
                none = " or None" if name in _OPTIONAL_SETTINGS else ""
                raise InputDataError(f"distill setting {name}={value!r} ({type(value).__name__}): give {wanted}{none}")
            if type(value) is not convert:
                object.__setattr__(self, name, convert(value))


_SETTING_KINDS = {"steps": "int", "minutes": "float", "batch_size": "int", "lr": "float", "held_out": "float",
                  "views": "int", "intermediate_weight": "float", "eval_every": "int", "patience": "int",
                  "augment": "bool", "seed": "int", "threads": "int", "verify_tolerance": "float"}
_OPTIONAL_SETTINGS = {"steps", "minutes", "batch_size", "threads"}
DEFAULT_BATCH_SIZE = 16


DEFAULT_MINUTES = 10.0
ADAM_BETA1 = 0.9  # torch's default: the first step moves up to 1 / (1 - beta1) times the step size
DIVERGED = 2.0  # a held-out loss above this multiple of the best so far restores the best and halves the step size


@dataclass(frozen=True)
class DistillReport:
    """What :func:`distill` did; ``format()`` for people, ``to_dict()`` for JSON."""

    steps: int
    seconds: float
    stop_reason: str
    best_step: int
    train_samples: int
    held_out_samples: int
    held_out_views: int
    augmentation: str
    trainable_tensors: int
    trainable_values: int
    biases: int
    matching_points: int
    loss_before: float
    loss_after: float
    agreement_kind: str
    agreement_before: float
    agreement_after: float
    cosine_before: float
    cosine_after: float
    verify_max_diff: float
    verify_tolerance: float
    settings: dict
    curve: tuple
    torch_version: str
    threads: int
    notes: tuple = ()
    agreement_output: str = ""  # the output the agreement figure is of (_agreement_output)
    warnings: tuple = ()  # no step improved; the step kept agrees less than the student before training

    def format(self) -> str:
        kind = "top-1 agreement" if self.agreement_kind == "top-1" else "cosine similarity"
        lines = [
            f"distillation: {self.steps} step{'s' if self.steps != 1 else ''} in {self.seconds:.1f} s "
            f"({self.stop_reason}); "
            f"best held-out loss at step "
            f"{self.best_step}",
            f"trained: {self.trainable_tensors} tensors ({self.trainable_values:,} values; "
            f"{self.biases} of them biases), "
            f"everything else frozen; loss on the outputs"
            + (f" and on {self.matching_points} compressed layers' outputs (weight "
               f"{self.settings.get('intermediate_weight')})" if self.matching_points else ""),
            f"data: {self.train_samples} training sample{'s' if self.train_samples != 1 else ''} "
            f"({self.augmentation}); held out: {self.held_out_samples} "
            f"sample{'s' if self.held_out_samples != 1 else ''}"
            + (f" + {self.held_out_views} augmented views each" if self.held_out_views else ""),
            f"held-out loss {self.loss_before:.4g} -> {self.loss_after:.4g}; {kind}"
            f"{f' of output {self.agreement_output!r}' if self.agreement_output else ''} "
            f"{self.agreement_before:.4f} -> "
            f"{self.agreement_after:.4f}" + (f"; cosine {self.cosine_before:.4f} -> {self.cosine_after:.4f}"
                                             if self.agreement_kind == "top-1" else "")
            + (f" (the step kept is the one of lowest held-out loss, not of highest {kind})"
               if self.agreement_after < self.agreement_before else ""),
            f"verified: ONNX Runtime reproduces the trained student "
            f"(max |diff| {self.verify_max_diff:.2e} of the output "
            f"scale, tolerance {self.verify_tolerance:g})",
        ]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain JSON values: NaN and infinities (a diverging run's losses) become None."""
        from .report import json_safe, library_versions

        data = asdict(self)
        data["curve"] = [dict(point) for point in self.curve]
        data["versions"] = library_versions()  # (also what marks the file as onnx-alds's, to be replaced later)
        return json_safe(data)

    def save_json(self, path) -> None:
        """Write the report as strict JSON (no bare NaN, which strict parsers refuse), atomically."""
        from .report import write_json

        write_json(self.to_dict(), path)


@dataclass(frozen=True)
class DistillResult:
    """The compressed model with trained factor values, and the report."""

    model: onnx.ModelProto
    report: DistillReport


def _teacher_session(original: onnx.ModelProto, points: Sequence[str]):
    from .runtime import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(original)
    if points:
        types: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(original)
            types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
        except Exception:  # too large or unknown ops: fall back to float
            pass
        present = {o.name for o in probe.graph.output}
        for name in points:
            if name not in present:
                probe.graph.output.append(helper.make_tensor_value_info(
                    name, types.get(name) or onnx.TensorProto.FLOAT, None))
    return make_session(probe, "cpu", spinning=False, copy_of="distillation")


def _float_outputs(model: onnx.ModelProto) -> list[str]:
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return [o.name for o in model.graph.output if o.type.tensor_type.elem_type in floats]


def _batches(arrays: Mapping[str, np.ndarray], size: int):
    count = len(next(iter(arrays.values())))
    for start in range(0, count, size):
        yield {k: v[start:start + size] for k, v in arrays.items()}


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([c[k] for c in chunks], axis=0) for k in chunks[0]}


def _agreement(teacher: np.ndarray, student: np.ndarray, kind: str) -> tuple[float, float]:
    t = teacher.reshape(len(teacher), -1).astype(np.float64)
    s = student.reshape(len(student), -1).astype(np.float64)
    t_norm, s_norm = np.linalg.norm(t, axis=1), np.linalg.norm(s, axis=1)
    both_zero = (t_norm == 0) & (s_norm == 0)  # agrees exactly, as validate counts it (cos 1), not cos 0
    cosine = float(np.mean(np.where(both_zero, 1.0, np.sum(t * s, axis=1) / np.maximum(t_norm * s_norm, 1e-300))))
    top1 = float(np.mean(np.argmax(t, axis=1) == np.argmax(s, axis=1))) if kind == "top-1" else cosine
    return top1, cosine


def _agreement_output(teacher: Mapping[str, np.ndarray], outputs: Sequence[str]) -> tuple[str, str]:
    """The output the agreement figure is of, and its kind: the first that validate calls a classifier
    (:func:`onnx_alds.validate.detect_kind`: 2-D, ≥ 2 columns, rows not unit-norm, not named an embedding),
    measured by ``top-1``; else the first output, by ``cosine``."""
    from .validate import CLASSIFIER, detect_kind

    for name in outputs:
        if _agreement_kind(teacher[name]) == "top-1" and detect_kind(name, teacher[name])[0] == CLASSIFIER:
            return name, "top-1"
    return outputs[0], "cosine"


def _agreement_kind(teacher: np.ndarray) -> str:
    """``top-1`` for classifier-shaped outputs (2-D, ≥ 2 columns, rows not unit-norm), else ``cosine``."""
    if teacher.ndim != 2 or teacher.shape[1] < 2:
        return "cosine"
    norms = np.linalg.norm(teacher.astype(np.float64), axis=1)
    if np.allclose(norms, 1.0, atol=1e-3):
        return "cosine"  # an L2-normalized embedding
    return "top-1"


def split_inputs(inputs: InputSet, held_out: float = 0.2, seed: int = 0) -> tuple[InputSet, InputSet]:
    """``(training, held-out)``: a seeded random ``held_out`` fraction of the samples (at least one, and
    at least one left to train on), each part in the original order; samples that repeat an earlier one
    exactly are left out first (:func:`onnx_alds.inputs.without_repeats`; the sources say how many).
    ``inputs``: an :class:`~onnx_alds.inputs.InputSet` (``InputSet({"name": array})``, first axis the samples).

    ``compress --distill`` compresses with the training part only, so that the held-out part that
    decides early stopping was seen by neither step.
    """
    from .argtypes import check_number, check_seed

    check_number("held_out", held_out)  # (nan, "0.2" and True went through to a traceback or a clamp)
    if not 0 < held_out < 1:
        raise InputDataError(f"held_out={held_out!r}: give a fraction in (0, 1), e.g. 0.2")
    check_seed("seed", seed)
    given = as_input_set(inputs)  # (a dict's len counted its keys as samples)
    inputs = without_repeats(given)  # (a held-out sample that repeats a training one measures nothing held out)
    count = len(inputs)
    if count < 2:
        repeats = f" ({len(given)} given, the others repeat it)" if len(given) > count else ""
        raise InputDataError(f"distillation needs at least 2 distinct input samples (one to train on, one held "
                             f"out); got {count}{repeats}")
    held = min(max(1, int(round(held_out * count))), count - 1)
    order = np.random.default_rng([seed, 7]).permutation(count)
    parts = []
    for index, what in ((np.sort(order[held:]), "training"), (np.sort(order[:held]), "held-out")):
        labels = None if inputs.labels is None else inputs.labels[index]
        parts.append(InputSet({k: np.asarray(v)[index] for k, v in inputs.arrays.items()}, labels,
                              f"{inputs.source}, {what} part ({len(index)} sample{'s' if len(index) != 1 else ''})"))
    return parts[0], parts[1]


def _lr_factor(fraction: float) -> float:
    warm = 0.03
    if fraction < warm:
        return max(fraction / warm, 0.05)
    progress = min((fraction - warm) / (1 - warm), 1.0)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def distill(original: ModelLike, compressed: ModelLike, inputs: InputSet, *,
            held_out_inputs: Optional[InputSet] = None,
            settings: Optional[DistillSettings] = None, progress: Optional[bool] = None,
            callback: Optional[Callable[[int, float, Any], None]] = None, **kwargs) -> DistillResult:
    """Train the factor tensors of ``compressed`` so that it reproduces ``original`` on ``inputs``.

    ``held_out_inputs``: the samples that decide early stopping and the before/after figures; when not
    given, a ``settings.held_out`` fraction of ``inputs`` is split off (:func:`split_inputs`). Samples
    that the compression was calibrated on make an optimistic held-out set (the compressed model was
    fitted to them): ``compress --distill`` therefore compresses with the training part only.
    ``settings`` (or its fields as keywords: ``steps=``, ``minutes=``, ``seed=`` ...) say how; see
    :class:`DistillSettings`. ``progress``: a progress bar on stderr (default: when it is a terminal).
    ``callback(step, seconds, student)`` is called at every held-out evaluation (its own time is not
    counted in the budget); ``student`` is the :class:`TorchGraph`.

    Returns the compressed model with the trained values written into its initializers (same graph,
    names and ops; every other initializer byte-identical), verified in ONNX Runtime against the
    trained student. Raises :class:`DistillError` when torch is missing or verification fails,
    :class:`UnsupportedModelError` naming the op when the graph cannot be run on torch.
    """
    if settings is not None and kwargs:
        raise InputDataError("give settings=DistillSettings(...) or its fields as keywords "
                             f"({', '.join(sorted(kwargs))}), not both")
    if settings is not None and not isinstance(settings, DistillSettings):
        raise InputDataError(f"settings={settings!r}: give an onnx_alds.distill.DistillSettings(...), or its fields "
                             "as keywords")
    if callback is not None and not callable(callback):  # (it failed at the first evaluation, as a traceback)
        raise InputDataError(f"callback={callback!r}: give a function callback(step, seconds, student), or None")
    unknown = sorted(set(kwargs) - {f.name for f in fields(DistillSettings)})
    if unknown:
        raise UnknownOptionError(f"distill() got unknown option(s) {', '.join(unknown)}; its options: "
                                 f"{', '.join(f.name for f in fields(DistillSettings))}")
    settings = settings or DistillSettings(**kwargs)
    torch = import_torch()
    started = time.perf_counter()
    teacher_model = load_model(original)
    student_model = load_model(compressed)
    inputs = conform_inputs(teacher_model, inputs, "training")
    _check_interfaces(teacher_model, student_model, inputs)
    given = len(inputs)
    if held_out_inputs is None:
        inputs, held_out_inputs = split_inputs(inputs, settings.held_out, settings.seed)  # (repeats left out)
        distinct = len(inputs) + len(held_out_inputs)
    else:
        inputs = without_repeats(inputs)
        distinct = len(inputs)
        held_out_inputs = without_repeats(conform_inputs(teacher_model, held_out_inputs, "held-out"))
        _check_interfaces(teacher_model, student_model, held_out_inputs)
    casts = cast_notes(inputs, held_out_inputs)
    repeats = [f"{given - distinct} of the {given} input samples repeat others exactly and were left out (a repeat "
               "adds nothing to train on, and a held-out sample that repeats a training one measures nothing held "
               "out)"] if distinct < given else []
    in_sample = [note for note in (_calibrated_on(student_model, held_out_inputs), _trained_on(inputs, held_out_inputs))
                 if note]
    found = factor_tensors(teacher_model, student_model)
    if not found.factors:
        raise UnsupportedModelError(
            "the compressed model has no factor tensors (no initializer that the original lacks); " +
            MADE_FROM_IT)
    _check_ancestry(teacher_model, student_model, set(found.biases))
    _check_pair_order(teacher_model, student_model)
    _check_common_parts(teacher_model, student_model, set(found.biases))
    _check_step_sizes(student_model, found.trainable, settings.lr)
    outputs = _float_outputs(student_model)
    if not outputs:
        raise UnsupportedModelError("the model has no floating-point graph output to distill (its outputs are "
                                    "class ids or flags); export it with the float scores or logits as a graph output, "
                                    "or compress without --distill")
    points = list(found.points) if settings.intermediate_weight > 0 else []
    minutes = settings.minutes if settings.minutes is not None or settings.steps is not None else DEFAULT_MINUTES
    budget_s = None if minutes is None else 60.0 * minutes

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()  # the host's settings, put back after
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_rng = torch.get_rng_state()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(settings.seed)
    try:
        notes = casts + repeats + in_sample
        rng = np.random.default_rng(settings.seed)
        names = [spec.name for spec in graph_inputs(student_model)]
        train = {k: np.asarray(inputs.arrays[k]) for k in names}
        held = {k: np.asarray(held_out_inputs.arrays[k]) for k in names}
        batch_cut = settings.batch_size is None and len(inputs) < DEFAULT_BATCH_SIZE
        if settings.batch_size is None:  # the default: never more than the training samples (the report says so)
            settings = replace(settings, batch_size=min(DEFAULT_BATCH_SIZE, len(inputs)))
        elif settings.batch_size > len(inputs):  # each step would repeat samples (and 100 000 exhausted memory)
            raise InputDataError(f"--batch-size {settings.batch_size} is more than the {len(inputs)} training "
                                 f"samples; give at most {len(inputs)}, or more inputs")
        teacher = _teacher_session(teacher_model, points)
        # inputs the original cannot run are one error line, before anything else reads them
        with _original_runs(hint=dim_name_clash(teacher, train) or dim_name_clash(teacher, held),
                            one_sample=(teacher, {name: array[:settings.batch_size] for name, array in train.items()})):
            scales = _loss_scales(teacher, train, outputs, points, settings.batch_size)
            _run_session(teacher, held, outputs, settings.batch_size)
        augmenter = make_augmenter(student_model, train, augment=settings.augment)
        student = torch_graph(student_model, found.trainable)
        points, dropped = _points_of_one_shape(teacher, student, train, points, settings.batch_size)
        if dropped:
            notes.append(f"{dropped} compressed layers' outputs have another shape in the compressed model (a "
                         "narrowed block): the loss leaves them out")
        _fit_augmenter_to_model(teacher, augmenter, outputs, settings)
        eval_inputs = _held_out_set(held, settings, augmenter)
        teacher_eval = _run_session(teacher, eval_inputs, outputs, settings.batch_size)
        _check_finite_held_out(teacher_eval, len(next(iter(held.values()))))
        # the interpreter must agree with ONNX Runtime on the compressed model before anything trains
        _verify(student, _student_session(student_model), eval_inputs, outputs, settings.verify_tolerance,
                when="before training", model=student_model, batch=settings.batch_size)
        watched, kind = _agreement_output(teacher_eval, outputs)

        groups = []
        for name, param in student.named_factors().items():
            rms = float(param.detach().pow(2).mean().sqrt()) if param.numel() else 0.0
            groups.append({"params": [param], "lr": settings.lr * max(rms, 1e-3), "base": settings.lr * max(rms, 1e-3)})
        optimizer = torch.optim.Adam(groups, betas=(ADAM_BETA1, 0.999))

        def evaluate() -> tuple[float, float, float]:
            with torch.no_grad():
                chunks = []
                for batch in _batches(eval_inputs, settings.batch_size):
                    result = student({k: torch.from_numpy(v) for k, v in batch.items()}, outputs)
                    chunks.append({k: v.numpy() for k, v in result.items()})
            got = _concat(chunks)
            _check_output_shapes(teacher_eval, got, outputs)
            loss = float(np.mean([np.mean((got[o].astype(np.float64) - teacher_eval[o]) ** 2) / scales[o]
                                  for o in outputs]))
            top1, cosine = _agreement(teacher_eval[watched], got[watched], kind)
            return loss, top1, cosine

        show = sys.stderr.isatty() if progress is None else progress
        bar = _progress_bar(show, settings.steps, budget_s)
        excluded = 0.0  # callback time, not counted in the budget
        clock0 = time.perf_counter()
        loss0, agree0, cos0 = evaluate()
        curve = [dict(step=0, seconds=0.0, train_loss=None, held_out_loss=loss0, agreement=agree0, cosine=cos0)]
        if callback is not None:
            tick = time.perf_counter()
            callback(0, 0.0, student)
            excluded += time.perf_counter() - tick
        best = (loss0, 0, agree0, cos0, _snapshot(student))
        stale, step, running, seen, halvings = 0, 0, 0.0, 0, 0
        stop_reason = ""
        while True:
            elapsed = time.perf_counter() - clock0 - excluded
            fractions = [step / settings.steps] if settings.steps else []
            fractions += [elapsed / budget_s] if budget_s else []
            fraction = max(fractions)
            if settings.steps is not None and step >= settings.steps:
                stop_reason = f"step budget {settings.steps}"
                break
            if budget_s is not None and elapsed >= budget_s:
                stop_reason = f"time budget {minutes:g} min"
                break
            factor = _lr_factor(fraction)
            for group in optimizer.param_groups:
                group["lr"] = group["base"] * factor
            batch = augmenter.batch(rng, settings.batch_size)
            with _original_runs(AUGMENTED_FAILED):
                target = dict(zip(outputs + points, teacher.run(outputs + points, batch)))
            result = student({k: torch.from_numpy(v) for k, v in batch.items()}, outputs + points)
            def scaled_error(name: str):
                return torch.nn.functional.mse_loss(_loss_precision(torch, result[name]), _loss_precision(
                    torch, torch.from_numpy(target[name]))) / scales[name]

            loss = sum(scaled_error(o) for o in outputs) / len(outputs)
            if points:
                loss = loss + settings.intermediate_weight * sum(scaled_error(p) for p in points) / len(points)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running += float(loss.detach())
            seen += 1
            if bar is not None:
                bar.update(1 if settings.steps else 0)
            if step % settings.eval_every == 0:
                held_loss, agree, cosine = evaluate()
                elapsed = time.perf_counter() - clock0 - excluded
                curve.append(dict(step=step, seconds=round(elapsed, 2), train_loss=running / max(seen, 1),
                                  held_out_loss=held_loss, agreement=agree, cosine=cosine))
                running, seen = 0.0, 0
                if held_loss < best[0] * (1 - 1e-3):
                    best = (held_loss, step, agree, cosine, _snapshot(student))
                    stale = 0
                elif held_loss > DIVERGED * best[0] or not math.isfinite(held_loss):
                    # the step size is too large for this model: back to the best values, half the step size
                    _restore(student, best[4])
                    optimizer.state.clear()
                    for group in optimizer.param_groups:
                        group["base"] *= 0.5
                    halvings += 1
                    curve[-1]["lr_halved"] = True
                    stale += 1
                else:
                    stale += 1
                if bar is not None:
                    if not settings.steps:
                        bar.n = min(int(elapsed), bar.total or int(elapsed))
                    bar.set_postfix_str(f"loss {held_loss:.4g} {'agree' if kind == 'top-1' else 'cos'} {agree:.4f}")
                    bar.refresh()
                if callback is not None:
                    tick = time.perf_counter()
                    callback(step, elapsed, student)
                    excluded += time.perf_counter() - tick
                if stale >= settings.patience:
                    stop_reason = f"early stop: no held-out improvement in {settings.patience} evaluations"
                    break
        elapsed = time.perf_counter() - clock0 - excluded
        if step % settings.eval_every:
            held_loss, agree, cosine = evaluate()
            curve.append(dict(step=step, seconds=round(elapsed, 2), train_loss=running / max(seen, 1),
                              held_out_loss=held_loss, agreement=agree, cosine=cosine))
            if held_loss < best[0] * (1 - 1e-3):
                best = (held_loss, step, agree, cosine, _snapshot(student))
        if bar is not None:
            bar.close()
        _restore(student, best[4])
        values = {name: param.detach().numpy() for name, param in student.named_factors().items()}
        tuned = write_back(student_model, values)
        from .api import CALIBRATION_SAMPLES_KEY
        from .plan import kept_sample_digests
        from .rewrite import add_provenance

        earlier = {entry.key: entry.value for entry in tuned.metadata_props}.get(CALIBRATION_SAMPLES_KEY, "")
        add_provenance(tuned, {"onnx_alds.distill": f"steps={step} best_step={best[1]} seed={settings.seed}",
                               # the samples it was trained on, beside those the compression was fitted to
                               CALIBRATION_SAMPLES_KEY: kept_sample_digests(inputs, earlier)})
        # the student must be the exact values written (dtype round trip), then ORT must reproduce it
        _load_values(student, tuned, found.trainable)
        verify_diff, limits = _verify(student, _student_session(tuned), eval_inputs, outputs,
                                      settings.verify_tolerance, when="after writing the trained values", model=tuned,
                                      batch=settings.batch_size)
        coarse = {name: limit for name, limit in limits.items() if limit > settings.verify_tolerance}
        if coarse:
            notes.append(f"output(s) {', '.join(repr(n) for n in coarse)} of a coarser dtype (float16/bfloat16) were "
                         f"verified within twice its resolution ({max(coarse.values()):.3g} of the output scale) "
                         f"instead of {settings.verify_tolerance:g}")
        if halvings:
            notes.append(f"the held-out loss rose above {DIVERGED:g}x its best {halvings} time(s): each time the best "
                         f"values were restored and the step size halved (final lr {settings.lr * 0.5 ** halvings:g}); "
                         "a smaller learning rate (onnx-alds distill --lr, distill(lr=...)) may train faster")
        if augmenter.note:
            notes.append(augmenter.note)
        if inputs.is_random:
            notes.append("inputs are random, not real data: the student learned the teacher on noise")
        if len(inputs) < 16:
            cut = (f"batches of {settings.batch_size}, not the default {DEFAULT_BATCH_SIZE}; " if batch_cut else "")
            notes.append(f"only {len(inputs)} training samples: {cut}agreement on new data may be lower")
        warnings = []
        if step and best[1] == 0:
            warnings.append(f"no step lowered the held-out loss: the model written holds the compressed model's "
                            f"values as given; try a smaller learning rate (now {settings.lr:g}; onnx-alds "
                            "distill --lr) or more steps")
        elif best[2] < agree0:
            what = "top-1 agreement" if kind == "top-1" else "cosine similarity"
            warnings.append(f"the step kept (of lowest held-out loss) has a lower {what} than the student before "
                            f"training ({agree0:.4f} -> {best[2]:.4f}): measure the model with validate before using "
                            "it, or train with a smaller learning rate (onnx-alds distill --lr)")
        report = DistillReport(
            steps=step, seconds=round(time.perf_counter() - started, 2), stop_reason=stop_reason, best_step=best[1],
            train_samples=len(next(iter(train.values()))), held_out_samples=len(next(iter(held.values()))),
            held_out_views=settings.views if _adds_views(settings, augmenter) else 0,
            augmentation=augmenter.describe(),
            trainable_tensors=len(found.trainable),
            trainable_values=int(sum(v.size for v in values.values())), biases=len(found.biases),
            matching_points=len(points), loss_before=loss0, loss_after=best[0], agreement_kind=kind,
            agreement_output=watched,
            agreement_before=agree0, agreement_after=best[2], cosine_before=cos0, cosine_after=best[3],
            verify_max_diff=verify_diff, verify_tolerance=max(limits.values()), settings=asdict(settings),
            curve=tuple(curve), torch_version=str(torch.__version__), threads=torch.get_num_threads(),
            notes=tuple(notes), warnings=tuple(warnings))
        return DistillResult(tuned, report)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
        torch.set_rng_state(previous_rng)


def _check_step_sizes(model: onnx.ModelProto, trainable: Sequence[str], lr: float) -> None:
    """Each tensor's Adam step size is ``lr × RMS`` of its starting value (at least ``lr × 1e-3``), and
    Adam's bias correction moves up to ten times that in one step: a step that is not finite in the
    tensor's dtype (torch refused it in the middle of the first step, a traceback) is an
    :class:`InputDataError` before anything runs."""
    wanted = set(trainable)
    for tensor in model.graph.initializer:
        if tensor.name not in wanted:
            continue
        values = numpy_helper.to_array(tensor)
        if not np.all(np.isfinite(values)):  # (a -inf mask added after a factorized layer, taken for its bias)
            raise InputDataError(f"the compressed model's tensor '{tensor.name}', which distillation would train as "
                                 "a factor or bias, holds NaN or infinite values (a class masked with -inf?), and "
                                 "the outputs it reaches cannot be matched; distill a model whose outputs are finite "
                                 "(e.g. the logits before the mask)")
        rms = float(np.sqrt(np.mean(np.square(values, dtype=np.float64)))) if values.size else 0.0
        step = lr * max(rms, 1e-3) / (1 - ADAM_BETA1)
        dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.dtype(np.float32)
        if not step <= float(np.finfo(dtype).max):
            raise InputDataError(f"--lr {lr:g}: Adam's steps for '{tensor.name}' (up to {1 / (1 - ADAM_BETA1):g} × lr "
                                 f"× its RMS {rms:.3g}) overflow {dtype}; give a smaller --lr such as "
                                 f"{DistillSettings.lr:g}")


def _progress_bar(show: bool, steps: Optional[int], budget_s: Optional[float]):
    if not show:
        return None
    from tqdm import tqdm

    if steps:
        return tqdm(total=steps, desc="distill", unit="step", leave=False)
    return tqdm(total=int(budget_s or 0), desc="distill", unit="s", leave=False)


def _snapshot(student) -> dict[str, np.ndarray]:
    return {name: param.detach().numpy().copy() for name, param in student.named_factors().items()}


def _restore(student, values: Mapping[str, np.ndarray]) -> None:
    torch = import_torch()
    with torch.no_grad():
        for name, param in student.named_factors().items():
            param.copy_(torch.from_numpy(np.array(values[name], copy=True)))


def _load_values(student, model: onnx.ModelProto, names: Sequence[str]) -> None:
    wanted = set(names)
    _restore(student, {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in wanted})


def _check_interfaces(original: onnx.ModelProto, compressed: onnx.ModelProto, inputs: InputSet) -> None:
    """The pair takes and gives the same (names, order, types, declared shapes: as validate checks it; a teacher
    output of another shape was broadcast into the loss) and ``inputs`` feed every graph input."""
    from .validate import check_same_interface

    check_distillable(compressed)
    names_o = [s.name for s in graph_inputs(original)]
    check_same_interface(original, compressed, hint=MADE_FROM_IT)
    missing = [n for n in names_o if n not in inputs.arrays]
    if missing:
        raise InputDataError(f"the inputs lack the graph input(s) {', '.join(repr(m) for m in missing)}; "
                             "give one array per graph input, keyed by name")


MADE_FROM_IT = "give the original model and the output of `onnx-alds compress` made from it"


def _check_output_shapes(teacher: Mapping[str, np.ndarray], student: Mapping[str, np.ndarray],
                         outputs: Sequence[str]) -> None:
    """The outputs the loss compares have the same shape in both models on the same inputs (declared shapes may
    be dynamic); raises :class:`UnsupportedModelError` naming the first that differs."""
    for name in outputs:
        if teacher[name].shape != student[name].shape:
            raise UnsupportedModelError(f"output '{name}' has shape {teacher[name].shape} in the original and "
                                        f"{student[name].shape} in the compressed model; {MADE_FROM_IT}")


def _check_ancestry(original: onnx.ModelProto, compressed: onnx.ModelProto, trained: set[str]) -> None:
    """The compressed model must come from ``original``: every initializer the compression left alone
    (same name, type and shape in both; ``trained``, the decoder biases, excepted) holds the same values.
    A model of the same architecture with other weights (another checkpoint) would otherwise teach the
    student its own outputs. Raises :class:`UnsupportedModelError` naming the first differing tensor."""
    before = {t.name: t for t in original.graph.initializer}
    for tensor in compressed.graph.initializer:
        old = before.get(tensor.name)
        if old is None or tensor.name in trained or old.data_type != tensor.data_type or \
                tuple(old.dims) != tuple(tensor.dims):
            continue
        if not np.array_equal(numpy_helper.to_array(old), numpy_helper.to_array(tensor), equal_nan=True):
            raise UnsupportedModelError(
                f"the compressed model's weight '{tensor.name}' differs from the original's: it was not made "
                "from this original model; give the model that `onnx-alds compress` was run on")


def _check_pair_order(original: onnx.ModelProto, compressed: onnx.ModelProto) -> None:
    """The pair is (original, compressed from it): not swapped (the compressed model would be trained
    as the "original"'s dense weights), and, where the compressed model records a digest of the weights
    it replaced (:func:`onnx_alds.rewrite.replaced_digest`), made from this original; a compression
    that replaced every weight leaves :func:`_check_ancestry` nothing to compare. Raises
    :class:`UnsupportedModelError`."""
    from .api import EARLIER_STEPS_KEY
    from .rewrite import REPLACED_DIGEST_KEY, replaced_digest

    written = {entry.key: entry.value for entry in compressed.metadata_props}
    swapped = (any(entry.key == "onnx_alds.method" for entry in original.metadata_props)
               and "onnx_alds.method" not in written)
    if swapped or sum(iter_total_params(compressed)) > sum(iter_total_params(original)):
        raise UnsupportedModelError("the second model is not a compression of the first (it holds more weights, or only "
                                    "the first was written by onnx-alds); give ORIGINAL then COMPRESSED, in that order")
    digest = written.get(REPLACED_DIGEST_KEY)
    if digest and replaced_digest(original, compressed) != digest:
        earlier = written.get(EARLIER_STEPS_KEY)
        raise UnsupportedModelError("the compressed model was not made from this original (the weights it replaced "
                                    "differ from this model's); give the model that `onnx-alds compress` was run on"
                                    + (f" (it was itself compressed before: {earlier}; compress the first original "
                                       "once at the combined budget to distill against it)" if earlier else ""))


def _check_common_parts(original: onnx.ModelProto, compressed: onnx.ModelProto, trained: Collection[str] = ()
                        ) -> None:
    """A compressed model without the digest of the weights it replaced (checked by :func:`_check_pair_order`)
    must keep something of ``original`` whose values tie the two: a weight (an initializer of the same name, type
    and shape; its values are compared by :func:`_check_ancestry`, and one in ``trained``, a decoder bias
    the compression may have corrected, ties them only where it still holds the original's values) or a
    Constant node (the same output and value). Ops without weights (a Relu of the same names) tie nothing: a
    checkpoint of the same architecture with every layer factorized was distilled with exit 0, its other
    biases taken for kept weights. Raises :class:`UnsupportedModelError`."""
    from .rewrite import REPLACED_DIGEST_KEY

    if any(entry.key == REPLACED_DIGEST_KEY for entry in compressed.metadata_props):
        return
    before = {t.name: t for t in original.graph.initializer}

    def same_values(tensor: onnx.TensorProto) -> bool:
        return np.array_equal(numpy_helper.to_array(before[tensor.name]), numpy_helper.to_array(tensor),
                              equal_nan=True)

    kept = [t for t in compressed.graph.initializer if t.name in before and before[t.name].data_type == t.data_type
            and tuple(before[t.name].dims) == tuple(t.dims) and (t.name not in trained or same_values(t))]

    def constants(model):
        return {(tuple(n.output), tuple(a.SerializeToString() for a in n.attribute)) for n in model.graph.node
                if n.op_type == "Constant" and n.domain in ("", "ai.onnx")}

    if not (kept or constants(original) & constants(compressed)):
        raise UnsupportedModelError(
            "the compressed model keeps no weight of the original (an initializer of the same name, type and shape "
            "that distillation does not train, or a Constant node of the same value), and no onnx-alds metadata ties "
            "it to it; give the compressed model made from ORIGINAL (`onnx-alds compress ORIGINAL`)")


def _student_session(model: onnx.ModelProto):
    from .runtime import make_session

    return make_session(model, "cpu", spinning=False)


def _trained_on(train: InputSet, held_out: InputSet) -> Optional[str]:
    """A note when held-out samples are also training samples (exactly, every input): the training fits
    them, so the held-out figures and the early stopping are in-sample for them."""
    from .plan import sample_digests

    trained = set(sample_digests(train))
    seen = sum(digest in trained for digest in sample_digests(held_out))
    if not seen:
        return None
    return (("the held-out samples are" if seen == len(held_out) else f"{seen} of the {len(held_out)} held-out "
             "samples are") + " training samples too: the training fits them, so the held-out figures and the early "
            "stopping are in-sample; give held-out inputs apart from the training ones")


def _calibrated_on(compressed: onnx.ModelProto, held_out: InputSet) -> Optional[str]:
    """A note when the held-out samples are, or hold some of, the samples the compressed model was calibrated
    on (the digests ``compress`` wrote into its metadata: :func:`onnx_alds.plan.calibration_overlap`): the
    model was fitted to them, so the held-out figures are in-sample, or partly."""
    from .plan import calibration_overlap

    overlap = calibration_overlap(compressed, held_out)
    if overlap is None or not overlap[0]:
        return None
    seen, total = overlap
    return (("the held-out samples are" if seen == total else f"{seen} of the {total} held-out samples are")
            + " among the inputs the compressed model was calibrated or trained on (the same samples): it was fitted "
            "to them, so the held-out figures are in-sample, optimistic, and the training may find little to "
            "improve; give inputs the compression did not see (compress --distill calibrates on its training part only: "
            "its held-out part is unseen unless an earlier compression of the model saw it)")


def _adds_views(settings: DistillSettings, augmenter: Augmenter) -> bool:
    """Whether the held-out set gets augmented views: asked for, and an augmenter that does more than resample
    (the base :class:`Augmenter`'s views would be copies)."""
    return bool(settings.views) and settings.augment and type(augmenter) is not Augmenter


def _held_out_set(held: dict, settings: DistillSettings, train_augmenter: Augmenter) -> dict:
    """The held-out samples, then ``views`` augmented views of each (a fixed seed of their own), made as
    the training batches are (:meth:`Augmenter.on`) and as wide as the samples (never trimmed). An
    augmenter that only resamples (no augmentation fits the inputs) adds no views: they would be copies."""
    if not _adds_views(settings, train_augmenter):
        return held
    count = len(next(iter(held.values())))
    augmenter = train_augmenter.on(held)
    if hasattr(augmenter, "trim"):
        augmenter.trim = False  # the views sit beside the held-out samples, at their width
    views_rng = np.random.default_rng([settings.seed, 1])
    extra = []
    for _ in range(settings.views):
        picked = augmenter.batch(views_rng, count)
        extra.append(picked)
    return _concat([held] + extra)


def _run_session(session, arrays: Mapping[str, np.ndarray], names: Sequence[str], batch: int) -> dict:
    """The outputs ``names`` over every batch, joined sample by sample (float64). Raises
    :class:`UnsupportedModelError` when an output's first dim is not the batch (a scalar, a ``[C, N]``
    output): the loss and agreement compare outputs sample by sample."""
    chunks = []
    for feed in _batches(arrays, batch):
        outputs = dict(zip(names, session.run(list(names), feed)))
        samples = len(next(iter(feed.values())))
        for name, value in outputs.items():
            if np.ndim(value) == 0 or np.shape(value)[0] != samples:
                raise UnsupportedModelError(
                    f"distillation compares the output '{name}' sample by sample, but its first dim is not the "
                    f"batch (shape {list(np.shape(value))} for a batch of {samples}); export the model with the "
                    "batch as the first dim of every output")
        chunks.append(outputs)
    return {k: v.astype(np.float64) for k, v in _concat(chunks).items()}


ORIGINAL_FAILED = ("running the original model on the inputs failed", "check that the input arrays match the "
                   "model's inputs (dtype, shape, value range)")
AUGMENTED_FAILED = ("the original model does not run on the augmented inputs", "train on the inputs as they are "
                    "with --no-augment")


@contextlib.contextmanager
def _original_runs(failure: tuple[str, str] = ORIGINAL_FAILED, hint: str = "", one_sample=None):
    """Runs of the original model in ONNX Runtime inside: a failure (ids outside the embedding table, a
    mask of another length; an augmented batch it cannot take, with :data:`AUGMENTED_FAILED`) is an
    :class:`InputDataError` saying what failed, ONNX Runtime's reason and the fix (and ``hint``:
    :func:`onnx_alds.inputs.dim_name_clash`; ``one_sample``: ``(session, feed)`` to try one sample of, for
    :func:`onnx_alds.inputs.one_sample_at_a_time`)."""
    try:
        yield
    except OnnxAldsError:  # said already
        raise
    except Exception as exc:  # ONNX Runtime's own error types
        if not hint and one_sample is not None:
            hint = one_sample_at_a_time(one_sample[0], None, one_sample[1], "--batch-size")
        raise InputDataError(f"{failure[0]} ({runtime_error_text(exc)}); {failure[1]}{hint}") from None


def _fit_augmenter_to_model(teacher, augmenter: "Augmenter", outputs: Sequence[str], settings) -> None:
    """Token batches are trimmed to their longest sentence where the sequence dim is declared dynamic; a
    model exported at one length (a Reshape holding it) runs only untrimmed: one probe batch (its own
    seed, so training draws the same batches) decides, and an augmenter the model cannot run at all is
    an error pointing to ``--no-augment``."""
    if not settings.augment:
        return
    probe = np.random.default_rng(settings.seed + 1)
    batch = augmenter.batch(probe, settings.batch_size)
    if getattr(augmenter, "trim", False):
        shorter = {k: np.ascontiguousarray(v[:, :max(v.shape[1] - 1, 1)]) if v.ndim > 1 else v
                   for k, v in batch.items()}  # one column less than this batch: a trimmed batch's case
        rows = len(next(iter(batch.values())))
        try:  # a Reshape holding the exported length fails, or (with a -1) folds the rows into another batch
            bent = any(np.ndim(value) and np.shape(value)[0] != rows
                       for value in teacher.run(list(outputs), shorter))
        except Exception:
            bent = True
        if bent:
            augmenter.trim = False  # the model runs only at the full sequence length
            batch = augmenter.batch(probe, settings.batch_size)
    with _original_runs(AUGMENTED_FAILED):
        teacher.run(list(outputs), batch)


def _check_finite_held_out(teacher_eval: Mapping[str, np.ndarray], held_count: int) -> None:
    """The original's outputs on the ``held_count`` held-out samples (then their augmented views) must be
    finite: the held-out loss and the interpreter's check compare against them. Raises InputDataError
    naming the output and, where only the augmented views are at fault, ``--no-augment``."""
    for name, value in teacher_eval.items():
        finite = np.isfinite(np.asarray(value, np.float64)).reshape(len(value), -1).all(axis=1) \
            if np.asarray(value).ndim else np.isfinite(value)
        if np.all(finite):
            continue
        views_only = bool(np.all(finite[:held_count])) and len(finite) > held_count
        raise InputDataError(
            f"the original model's output '{name}' is NaN or infinite on "
            + ("the augmented views of the held-out samples (the noise, flips or scales take the inputs outside "
               "what the model accepts, e.g. below 0 into a Sqrt or a Log): add --no-augment (onnx-alds distill; "
               "compress --distill always augments)" if views_only else
               f"{int(np.sum(~finite[:held_count]))} held-out samples (a mask of zeros, a log of 0); distill on "
               "inputs on which its outputs are finite"))


def _loss_scales(session, arrays, outputs, points, batch: int) -> dict[str, float]:
    """Per tensor: the variance of the teacher's values on the training samples (streamed). Raises
    :class:`InputDataError` when one is NaN or infinite there (the squared difference to it is too)."""
    names = list(outputs) + list(points)
    sums = {n: [0.0, 0.0, 0] for n in names}
    for feed in _batches(arrays, batch):
        for name, value in zip(names, session.run(names, feed)):
            v = np.asarray(value, np.float64)
            if not np.all(np.isfinite(v)):
                raise InputDataError(
                    f"the original model's {'output' if name in outputs else 'tensor'} '{name}' is NaN or infinite "
                    "on the training inputs (a class masked with -inf, a log of 0), and distillation trains on the "
                    "squared difference to it; distill a model whose outputs are finite (e.g. the logits before "
                    "the mask), or inputs on which they are")
            sums[name][0] += float(v.sum())
            sums[name][1] += float((v * v).sum())
            sums[name][2] += v.size
    scales = {}
    for name, (total, squares, count) in sums.items():
        mean = total / max(count, 1)
        var = squares / max(count, 1) - mean * mean
        scales[name] = max(var, 1e-12 * max(squares / max(count, 1), 1e-30), 1e-30)
    return scales


def _verify(student, session, arrays: Mapping[str, np.ndarray], outputs: Sequence[str], tolerance: float, *,
            when: str, model: Optional[onnx.ModelProto] = None, batch: int = 16) -> tuple[float, dict[str, float]]:
    """``(max over outputs of max|ORT − torch| / max|torch|, the tolerance applied to each output)``;
    raises DistillError beyond an output's tolerance: ``tolerance``, or twice the resolution (eps) of
    the output's dtype where that is coarser (a float16 output rounds to 4.9e-4 of its scale), or on
    another shape, naming the first node where the two differ when ``model`` (the session's) is given. ``batch``:
    samples per run, at most 16 (the training batch: a model that runs one sample at a time is verified so)."""
    torch = import_torch()
    worst = 0.0
    limits = {name: tolerance for name in outputs}
    for feed in _batches(arrays, min(batch, 16)):
        expected = session.run(list(outputs), feed)
        with torch.no_grad():
            got = student({k: torch.from_numpy(v) for k, v in feed.items()}, outputs)
        for name, ort_value in zip(outputs, expected):
            resolution = max(_resolution(torch, got[name].dtype), _resolution(torch, np.asarray(ort_value).dtype))
            limits[name] = limit = max(tolerance, 2 * resolution)
            mine = got[name].to(torch.float64).numpy()
            if mine.shape != np.shape(ort_value):
                raise DistillError(
                    f"{when}: ONNX Runtime and the torch student give output '{name}' different shapes "
                    f"({tuple(np.shape(ort_value))} and {mine.shape}){_first_divergent_node(student, model, feed)}; "
                    "nothing was written")
            scale = max(float(np.max(np.abs(mine))) if mine.size else 0.0, 1e-12)
            diff = float(np.max(np.abs(mine - ort_value))) / scale if mine.size else 0.0
            worst = max(worst, diff)
            if not diff <= limit:
                dtype = f" ({str(got[name].dtype).replace('torch.', '')} output)" if limit > tolerance else ""
                raise DistillError(
                    f"{when}: ONNX Runtime and the torch student disagree on output '{name}' (max |diff| "
                    f"{diff:.2e} of the output scale > {limit:g}{dtype})"
                    f"{_first_divergent_node(student, model, feed, limit)}; nothing was written")
    return worst, limits


def _first_divergent_node(student, model: Optional[onnx.ModelProto], feed: Mapping[str, np.ndarray],
                          tolerance: float = 1e-4) -> str:
    """`` (first at node 'n' (op Op) …)`` naming the first node of the student's graph whose output differs
    from ONNX Runtime's (in shape, or beyond ``tolerance`` of its scale) on ``feed``, run with every node
    output exposed; ``""`` where none is found or the probe cannot run (the caller's error stands)."""
    if model is None:
        return ""
    torch = import_torch()
    try:
        model = onnx.ModelProto.FromString(model.SerializeToString())  # (a copy to add outputs to)
        names = [name for node in student.nodes for name in node.outputs if name]
        declared = {value.name for value in model.graph.output}
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names
                                  if name not in declared)
        probe = _student_session(model)
        expected = dict(zip(names, probe.run(names, feed)))
        with torch.no_grad():
            got = student({k: torch.from_numpy(v) for k, v in feed.items()}, names)
    except Exception:  # (a diagnosis only)
        return ""
    for node in student.nodes:
        for name in (n for n in node.outputs if n):
            theirs, mine = np.asarray(expected[name]), got[name].detach().cpu().numpy()
            if theirs.shape != mine.shape:
                return (f" (first at node '{node.name}' (op {node.op}): output '{name}' is {theirs.shape} in ONNX "
                        f"Runtime, {mine.shape} in the student; the interpreter does not compute this op as ONNX "
                        "Runtime does: please report it)")
            if np.issubdtype(theirs.dtype, np.floating) and theirs.size:
                finite = np.isfinite(theirs)
                scale = max(float(np.max(np.abs(theirs[finite]))) if finite.any() else 0.0, 1e-12)
                mine = mine.astype(np.float64)
                shared = (np.isnan(mine) & np.isnan(theirs)) | (mine == theirs)  # (a NaN or Inf both give)
                if not float(np.max(np.where(shared, 0.0, np.abs(mine - theirs)))) / scale <= tolerance:
                    return (f" (first at node '{node.name}' (op {node.op}), output '{name}'; the interpreter does "
                            "not compute this op as ONNX Runtime does: please report it)")
    return ""


def _resolution(torch, dtype) -> float:
    """The machine epsilon of a floating-point torch or numpy dtype (0 for any other)."""
    try:
        if isinstance(dtype, torch.dtype):
            return float(torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0
        return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 0.0
    except (TypeError, ValueError):
        return 0.0


def write_back(compressed: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``compressed`` whose initializers named in ``values`` hold those values, in the dtype and
    shape they had; every other initializer, node, name and attribute is left as it was."""
    model = onnx.ModelProto()
    model.CopyFrom(compressed)
    remaining = dict(values)
    for tensor in model.graph.initializer:
        if tensor.name not in remaining:
            continue
        old = numpy_helper.to_array(tensor)
        new = np.asarray(remaining.pop(tensor.name))
        if new.shape != old.shape:
            raise DistillError(f"trained value of '{tensor.name}' has shape {new.shape}, the initializer {old.shape}")
        replacement = numpy_helper.from_array(new.astype(old.dtype), tensor.name)
        replacement.doc_string = tensor.doc_string
        tensor.CopyFrom(replacement)
    if remaining:
        raise DistillError(f"no initializer named {sorted(remaining)[:3]} in the compressed model")
    return model


# ==================================================================================================
# Command line
# ==================================================================================================


def _add_training_arguments(group, prefix: str = "") -> None:
    """The budget flags; ``prefix="distill-"`` for ``compress --distill``."""
    from .argtypes import finite_number, positive_int

    group.add_argument(f"--{prefix}steps", type=positive_int, default=None, metavar="N",
                       help="stop after N training steps")
    group.add_argument(f"--{prefix}minutes", type=finite_number(), default=None, metavar="M",
                       help=f"stop after M minutes of training (default {DEFAULT_MINUTES:g} when no budget is given)")


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``onnx-alds distill``."""
    from .argtypes import finite_number, positive_int, random_seed, thread_count
    from .inputs import add_input_arguments

    parser.add_argument("original", metavar="ORIGINAL", help="the original .onnx model (the teacher)")
    parser.add_argument("compressed", metavar="COMPRESSED", help="its compressed .onnx model (written by compress)")
    parser.add_argument("-o", "--output", required=True, help="where to write the distilled model")
    add_input_arguments(parser, required=True)
    group = parser.add_argument_group("training")
    _add_training_arguments(group)
    group.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                       help=f"samples per step (default {DEFAULT_BATCH_SIZE}, or the number of training samples "
                            "when there are fewer)")
    group.add_argument("--lr", type=finite_number(), default=DistillSettings.lr, metavar="X",
                       help=f"Adam step size relative to each tensor's RMS (default {DistillSettings.lr:g})")
    group.add_argument("--held-out", type=finite_number(high=1), default=DistillSettings.held_out, metavar="F",
                       help="fraction of the inputs held out for early stopping "
                            f"(default {DistillSettings.held_out:g})")
    group.add_argument("--intermediate-weight", type=finite_number(low_included=True),
                       default=DistillSettings.intermediate_weight, metavar="W",
                       help="weight of the loss on the factorized layers' outputs (0: model outputs only; default "
                            f"{DistillSettings.intermediate_weight:g})")
    group.add_argument("--eval-every", type=positive_int, default=DistillSettings.eval_every, metavar="N",
                       help=f"steps between held-out evaluations (default {DistillSettings.eval_every})")
    group.add_argument("--patience", type=positive_int, default=DistillSettings.patience, metavar="N",
                       help=f"evaluations without improvement before stopping (default {DistillSettings.patience})")
    group.add_argument("--no-augment", dest="augment", action="store_false",
                       help="train on the samples as they are (resampled only)")
    group.add_argument("--seed", type=random_seed, default=0, help="seed of the split, the batches and the augmentation")
    group.add_argument("--threads", type=thread_count, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument("--report", metavar="FILE.json", help="write the distillation report (with its curve) as JSON")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="show the progress bar even when stderr is not a terminal")


def _settings_from_args(args: argparse.Namespace, prefix: str = "") -> DistillSettings:
    fields = {name: getattr(args, name) for name in ("batch_size", "lr", "held_out", "intermediate_weight",
                                                     "eval_every", "patience", "augment", "threads")
              if getattr(args, name, None) is not None}
    dest = prefix.replace("-", "_")
    try:
        return DistillSettings(steps=getattr(args, f"{dest}steps"), minutes=getattr(args, f"{dest}minutes"),
                               seed=getattr(args, "seed", 0) or 0, **fields)
    except InputDataError as exc:  # compress names them --distill-steps, --distill-minutes
        raise InputDataError(re.sub(r"--(steps|minutes)\b", rf"--{prefix}\1", str(exc))) from None


def run_distill_command(args: argparse.Namespace) -> int:
    """``onnx-alds distill``: train, verify, write atomically, print the report."""
    from pathlib import Path

    from .inputs import inputs_from_args
    from .model_io import check_output_path, save_model

    import_torch()  # fail fast, before any data is read
    output = Path(args.output)
    protect = [args.original, args.compressed]
    check_output_path(output, protect=protect)
    if args.report:
        check_output_path(Path(args.report), protect=protect + [args.output], flag="--report")
    settings = _settings_from_args(args)
    original = load_model(args.original)
    compressed = load_model(args.compressed)
    inputs = inputs_from_args(original, args, required=True)
    result = distill(original, compressed, inputs, settings=settings, progress=args.progress)
    from .cli import write_together

    args.written_files = []  # what an interrupt or a failed print from here on leaves written (cli names it)
    write_together(lambda also: save_model(result.model, output, protect=protect, also=also), output,
                   result.report, args.report, written=args.written_files)  # both or neither
    print(result.report.format())
    print(f"wrote {' and '.join(args.written_files)}")
    return 0


def add_compress_distill_arguments(parser: argparse.ArgumentParser) -> None:
    """``compress --distill [--distill-steps N | --distill-minutes M] [--distill-report FILE.json]``."""
    group = parser.add_argument_group("distillation (with --distill; needs onnx-alds[distill])")
    group.add_argument("--distill", action="store_true",
                       help="after compressing, train the factor tensors to reproduce the original's outputs on the "
                            "calibration inputs (a held-out fifth of them, not used to compress, decides early "
                            "stopping)")
    _add_training_arguments(group, "distill-")
    group.add_argument("--distill-report", metavar="FILE.json", help="write the distillation report as JSON")


def split_for_distill(calibration: Optional[InputSet], args: argparse.Namespace,
                      model: Optional[onnx.ModelProto] = None) -> tuple[InputSet, InputSet]:
    """``compress --distill``: the calibration set's training part (to compress and train on) and its
    held-out part; torch and the model (:func:`check_distillable`) are checked first, so that they fail
    before compressing."""
    import_torch()
    if model is not None:
        check_distillable(model)
    if calibration is None:
        raise InputDataError("--distill needs inputs to train on; give --calibration FILE.npz, "
                             "--calibration-images DIR or --calibration-random N")
    settings = _settings_from_args(args, "distill-")  # every setting checked before compressing
    return split_inputs(calibration, settings.held_out, settings.seed)


def distill_after_compress(original: ModelLike, result, train: InputSet, held_out: InputSet,
                           args: argparse.Namespace):
    """``compress --distill``: distill ``result.model``, print the report, return the result with the new
    (complete) model and the distillation report; the result's report gets a note with the before/after
    figures. ``--distill-report`` is written by the caller, with the model (none of them on a failed
    ``--validate``)."""
    from dataclasses import replace

    from .model_io import materialize

    if getattr(args, "distill_report", None):
        from pathlib import Path

        from .model_io import check_output_path

        check_output_path(Path(args.distill_report), protect=[original, args.output], flag="--distill-report")
    settings = _settings_from_args(args, "distill-")
    compressed = materialize(result.model, getattr(result, "store", None))
    distilled = distill(original, compressed, train, held_out_inputs=held_out, settings=settings)
    text = distilled.report.format()
    print(text)
    report = distilled.report
    views = f" + {report.held_out_views} augmented views each" if report.held_out_views else ""
    note = (f"distilled: {report.steps} step{'s' if report.steps != 1 else ''}, {report.seconds:.0f} s; held-out "
            f"{report.agreement_kind} of output {report.agreement_output!r} (on {report.held_out_samples} samples"
            f"{views}) {report.agreement_before:.4f} -> {report.agreement_after:.4f}"
            + (f" (kept: the step of lowest held-out loss, {report.loss_before:.4g} -> {report.loss_after:.4g})"
               if report.agreement_after < report.agreement_before else "")
            + " (the layer errors above are those of the factors before training; the written model holds the "
            "trained values)")
    changes = {"store": None} if hasattr(result, "store") else {}
    return replace(result, model=distilled.model, report=replace(result.report, notes=result.report.notes + (note,)),
                   **changes), report
