"""Load and save ONNX models safely, and describe and resolve their graph inputs.

Loading turns every way a file can be wrong into one clear :class:`ModelLoadError`. Saving is
atomic (a temporary file in the target folder, then a rename), never touches the input file, and
switches to external data when the model is too large for a single protobuf.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from .errors import InputDataError, ModelLoadError, OutputPathError, UnsupportedModelError

log = logging.getLogger(__name__)

ModelLike = Union[str, os.PathLike, onnx.ModelProto]

# A serialized protobuf cannot exceed 2 GiB; stay clearly below it.
_PROTOBUF_LIMIT = 2**31 - 2**26


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Return the model as a ``ModelProto`` with its external data loaded.

    A ``ModelProto`` passed in is returned as a deep copy, so callers never see it modified.
    """
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"model file '{path}' does not exist; check the path")
    if path.is_dir():
        raise ModelLoadError(f"'{path}' is a folder, not an ONNX model file; pass the .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, OSError ...
        raise ModelLoadError(
            f"cannot read '{path}' as an ONNX model ({type(exc).__name__}); "
            "the file is truncated or not ONNX: export it again"
        ) from None
    _load_external_data(proto, path)
    if len(proto.graph.node) == 0 or not proto.opset_import:
        raise ModelLoadError(
            f"'{path}' holds no ONNX graph (no nodes or no opset); "
            "the file is truncated or not ONNX: export it again"
        )
    return proto


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Read the tensors stored beside the model, naming a missing or short data file."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    base = path.parent
    external = [tensor for tensor in _get_all_tensors(proto) if uses_external_data(tensor)]
    for tensor in external:
        info = ExternalDataInfo(tensor)
        location = base / info.location
        if not location.is_file():
            raise ModelLoadError(f"the external data file '{info.location}' of '{path.name}' is missing "
                                 f"(tensor '{tensor.name}'); put it next to the model in '{base}'")
        if info.length and location.stat().st_size < (info.offset or 0) + info.length:
            raise ModelLoadError(f"the external data file '{info.location}' of '{path.name}' is shorter than the "
                                 f"model says (tensor '{tensor.name}'); copy the complete file next to the model")
    if external:
        try:
            onnx.load_external_data_for_model(proto, str(base))
        except Exception as exc:
            raise ModelLoadError(f"cannot read the external data of '{path.name}' ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); check the data files") from None


def opset_version(model: onnx.ModelProto) -> int:
    """Opset of the default (ai.onnx) domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise UnsupportedModelError("the model imports no ai.onnx opset; export it with a standard opset")


def save_model(model: onnx.ModelProto, path: Union[str, os.PathLike], *,
               protect: Sequence[Union[str, os.PathLike]] = (),
               external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` completely or not at all.

    ``protect`` lists paths that must never be overwritten (the input model). ``external_data``
    forces (True) or forbids (False) storing tensors beside the model in ``<name>.data``; by default
    it is used only when the model would exceed the 2 GiB protobuf limit.
    """
    target = Path(path)
    check_output_path(target, protect)
    if external_data is None:
        external_data = model.ByteSize() > _PROTOBUF_LIMIT
    tmp_dir = tempfile.mkdtemp(prefix=".onnx-alds-", dir=str(target.parent))
    try:
        tmp_model = Path(tmp_dir) / target.name
        data_name = target.name + ".data"
        if external_data:
            # onnx rewrites the tensors it moves out in place: save a copy, not the caller's model
            model = load_model(model)
            onnx.save_model(model, str(tmp_model), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
            os.replace(Path(tmp_dir) / data_name, target.parent / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, target)
    finally:
        for leftover in Path(tmp_dir).glob("*"):
            leftover.unlink()
        os.rmdir(tmp_dir)
    return target


def check_output_path(target: Path, protect: Sequence[Union[str, os.PathLike]] = ()) -> None:
    """Raise :class:`OutputPathError` when ``target`` cannot or must not be written."""
    for other in protect:
        if isinstance(other, (str, os.PathLike)) and Path(other).exists() and target.exists() \
                and os.path.samefile(other, target):
            raise OutputPathError(f"output path '{target}' is the input model; choose another -o path")
        if isinstance(other, (str, os.PathLike)) and Path(other).resolve() == target.resolve():
            raise OutputPathError(f"output path '{target}' is the input model; choose another -o path")
    if target.is_dir():
        raise OutputPathError(f"output path '{target}' is a folder; give a file name such as model.small.onnx")
    if not target.parent.exists():
        raise OutputPathError(f"output folder '{target.parent}' does not exist; create it first")
    try:  # a read-only file system or folder: say so now, not after the whole compression
        handle, probe = tempfile.mkstemp(prefix=".onnx-alds-probe-", dir=str(target.parent))
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"cannot write to the output folder '{target.parent}' ({exc.strerror or exc}); "
                              "choose a writable -o path") from None
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputPathError(f"output file '{target}' is not writable; choose another path or remove it")


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, numpy dtype and dims (an int, or None/str when dynamic)."""

    name: str
    dtype: np.dtype
    dims: tuple[Union[int, str, None], ...]

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.dims)


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real graph inputs (initializers that double as inputs are left out)."""
    initializer_names = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        dims: list[Union[int, str, None]] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(value.name, dtype, tuple(dims)))
    return specs


def parse_input_shapes(entries: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME:1x3x224x224`` strings (as given to ``--input-shape``) into a dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    for entry in entries or ():
        name, sep, dims = entry.rpartition(":")
        try:
            values = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            values = ()
        if not sep or not name or not values or any(v <= 0 for v in values):
            raise InputDataError(
                f"cannot parse input shape '{entry}'; write NAME:DIMS with positive dims, e.g. input:1x3x224x224"
            )
        shapes[name] = values
    return shapes


def resolve_input_shapes(model: onnx.ModelProto, overrides: Mapping[str, Sequence[int]] | None = None,
                         *, batch_default: int | None = None) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Concrete shapes for every graph input, and notes on what was assumed.

    Shapes come from the model where static, else from ``overrides``. When ``batch_default`` is set,
    a dynamic *first* dim alone is set to it (and a note says so); any other dynamic dim without an
    override raises :class:`UnsupportedModelError` asking for ``--input-shape``.
    """
    overrides = dict(overrides or {})
    specs = graph_inputs(model)
    names = {spec.name for spec in specs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InputDataError(
            f"--input-shape names '{unknown[0]}', which is not a graph input; inputs are: {', '.join(sorted(names))}"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    notes: list[str] = []
    for spec in specs:
        if spec.name in overrides:
            shape = tuple(int(d) for d in overrides[spec.name])
            if len(shape) != len(spec.dims):
                raise InputDataError(
                    f"--input-shape gives {len(shape)} dims for '{spec.name}', which has {len(spec.dims)}; "
                    f"give all of them, e.g. {spec.name}:{'x'.join(str(d) if isinstance(d, int) else '1' for d in spec.dims)}"
                )
            for given, declared in zip(shape, spec.dims):
                if isinstance(declared, int) and given != declared:
                    raise InputDataError(
                        f"--input-shape gives {'x'.join(map(str, shape))} for '{spec.name}', "
                        f"but the model fixes it to {'x'.join(str(d) for d in spec.dims)}"
                    )
            shapes[spec.name] = shape
            continue
        dims = list(spec.dims)
        if batch_default is not None and dims and not isinstance(dims[0], int) \
                and all(isinstance(d, int) for d in dims[1:]):
            dims[0] = batch_default
            notes.append(f"input '{spec.name}': dynamic batch dim set to {batch_default}")
        if not all(isinstance(d, int) for d in dims):
            pretty = "x".join(str(d) if isinstance(d, int) else "?" for d in spec.dims)
            raise UnsupportedModelError(
                f"input '{spec.name}' has dynamic dims ({pretty}); give them with --input-shape {spec.name}:"
                + "x".join(str(d) if isinstance(d, int) else "N" for d in spec.dims)
            )
        shapes[spec.name] = tuple(int(d) for d in dims)
    return shapes, notes
