"""Load and save ONNX models safely, and describe and resolve their graph inputs.

Loading turns every way a file can be wrong into one clear :class:`ModelLoadError`. Saving is
atomic (a temporary file in the target folder, then a rename), never touches the input file, and
switches to external data when the model is too large for a single protobuf.

The pipeline itself works on *light* models (:func:`open_model`): large weights stay in their data
file (or in the caller's ModelProto) and are read one at a time; :func:`save_model` writes tensor by
tensor. Memory then follows the largest layer, not the model (docs/LARGE_MODELS.md).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import InputDataError, ModelLoadError, OutputPathError, UnsupportedModelError
from .signals import uninterrupted

log = logging.getLogger(__name__)

ModelLike = Union[str, os.PathLike, onnx.ModelProto]

# A serialized protobuf cannot exceed 2 GiB; stay clearly below it.
_PROTOBUF_LIMIT = 2**31 - 2**26


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Return the model as a ``ModelProto`` with its external data loaded.

    A ``ModelProto`` passed in is returned as a deep copy, so callers never see it modified.
    (:func:`open_model` reads only what is needed, for the pipeline's own use.)
    """
    if isinstance(model, onnx.ModelProto):
        _refuse_unreachable_data(model)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    path = _model_path(model)
    proto = _read_model_file(path)
    _load_external_data(proto, path)
    _check_has_graph(proto, path)
    return proto


def structure_of(model: ModelLike) -> tuple[onnx.ModelProto, "TensorStore"]:
    """The model for reading its graph (inputs, outputs, ops, shapes; ONNX Runtime runs the file or the
    given proto itself) and the store of its weights: opened light (:func:`open_model`: a path's external
    weights stay on disk, a proto's are referenced, not copied), with its int32/int64 constants complete
    (index offsets and shape tables bound the random ids drawn for it). ``onnx-alds validate`` and ``bench``
    held every weight of both models on top of ONNX Runtime's copies."""
    if isinstance(model, onnx.ModelProto):
        _refuse_unreachable_data(model)  # (as load_model: a light result's stubs, unloaded external data)
    opened = open_model(model)
    for tensor in _stubs(opened.model):
        if tensor.data_type in (onnx.TensorProto.INT32, onnx.TensorProto.INT64):
            opened.store.fill(tensor)
    return opened.model, opened.store


def same_weights(first: onnx.ModelProto, first_store: "TensorStore", second: onnx.ModelProto,
                 second_store: "TensorStore") -> bool:
    """Whether two light models (:func:`structure_of`) are the same model: equal graphs and local functions
    once their stubs' places are set aside, and the same bytes behind each pair of stubs (taken in the
    graphs' order, so that same-named tensors of two subgraphs are not mixed up), read a chunk at a time.
    A model with externally stored sparse initializers is never called the same (not compared)."""
    placeless = [_without_stub_places(model) for model in (first, second)]
    if placeless[0].graph != placeless[1].graph or list(placeless[0].functions) != list(placeless[1].functions):
        return False
    if any(_is_external(tensor) for model in (first, second) for graph in _graphs(model.graph)
           for sparse in graph.sparse_initializer for tensor in (sparse.values, sparse.indices)):
        return False
    stubs = (_stubs(first), _stubs(second))
    return len(stubs[0]) == len(stubs[1]) and all(first_store.same_data(one, second_store, other)
                                                  for one, other in zip(*stubs))


def _without_stub_places(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a light model (its stubs hold no data) whose stubs keep their name, type and dims but not
    where their data is (a file's offset, a store's token)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in _stubs(copy):
        del tensor.external_data[:]
    return copy


def _stubs(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model`` (initializers and attribute tensors, of every graph and local function) whose
    data is elsewhere: in an external file, or in a light result's store."""
    tensors = itertools.chain((t for graph in _graphs(model.graph) for t in graph.initializer),
                              _attribute_tensors(model.graph, model.functions))
    return [tensor for tensor in tensors if _is_external(tensor)]


def _location(tensor: onnx.TensorProto) -> str:
    """An external tensor's ``location`` entry ("" when it has none)."""
    return {entry.key: entry.value for entry in tensor.external_data}.get("location", "")


def _refuse_unreachable_data(model: onnx.ModelProto) -> None:
    """A ModelProto in memory whose tensors point elsewhere cannot be run: raise :class:`ModelLoadError`
    saying how to get the complete model (a light result of ``compress``, or a proto read without its
    external data)."""
    stubs = _stubs(model)
    if not stubs:
        return
    _refuse_in_memory_stubs(stubs)
    raise ModelLoadError(f"the model's tensor '{stubs[0].name}' is stored in the external file "
                         f"'{_location(stubs[0])}', which a ModelProto in memory cannot reach; give the model's path instead, or "
                         "onnx.load(path) with its external data (for a light result of compress: "
                         "onnx_alds.model_io.materialize(result.model, result.store))")


def _refuse_in_memory_stubs(tensors: Iterable[onnx.TensorProto]) -> None:
    """Raise :class:`ModelLoadError` for a stub of a light result of ``compress`` among ``tensors``: its data
    is in that result's store, which a model alone cannot reach (another store's tensor at the same index
    would be read in its place)."""
    for tensor in tensors:
        if _is_external(tensor) and _location(tensor) == IN_MEMORY:
            raise ModelLoadError(f"the model's weights are not in it (tensor '{tensor.name}' is held by the result's "
                                 "store: a light result of compress); give onnx_alds.model_io.materialize(result.model, "
                                 "result.store), or save it with onnx_alds.model_io.save_model(result.model, path, "
                                 "store=result.store) and give the path")


def _refuse_stubs_without_store(model: onnx.ModelProto, beside: Optional[Path] = None) -> None:
    """Raise :class:`ModelLoadError` for any tensor of ``model`` that holds no data of its own (a stub of a
    light result, in memory or reading the input's data file): with no store to read it from, it would be
    written (or left) pointing at a file beside the output that does not exist. ``beside``: the folder a
    model is written to; stubs whose data file is there (a model loaded without its external data, saved
    next to it, as ``onnx.save`` would) are written as they are."""
    stubs = _stubs(model)
    _refuse_in_memory_stubs(stubs)
    if beside is not None:
        stubs = [stub for stub in stubs if not (beside / _location(stub)).is_file()]
    if stubs:
        raise ModelLoadError(f"the model's tensor '{stubs[0].name}' holds no data of its own (it reads "
                             f"'{_location(stubs[0])}' "
                             "beside the model it came from: a light result of compress, or a model loaded without "
                             "its external data); give store=result.store, or the complete model "
                             "(onnx.load(path) with its external data)")


def _model_path(model: Any) -> Path:
    """``model`` as a path; anything other than a path (or a ``ModelProto``, handled by the callers) is a
    :class:`ModelLoadError`."""
    if isinstance(model, (str, os.PathLike)):
        if not os.fspath(model):  # (Path('') is the current folder)
            raise ModelLoadError("the model path is empty; give the path of an .onnx file")
        return Path(model)
    raise ModelLoadError(f"the model is of type {type(model).__name__}; give the path of an .onnx file or an "
                         "onnx.ModelProto")


def unreadable(path: Path, what: str) -> Optional[str]:
    """Why the existing file ``path`` (``what``: the file in words, "the model file 'm.onnx'") cannot be opened
    for reading, as an error message with the fix (permission denied, an I/O error), or None when it can."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return f"permission denied reading {what}; make it readable (chmod u+r) or give a readable copy"
    except OSError as exc:
        return f"cannot open {what} ({exc.strerror or exc}); check the file"
    return None


def _read_model_file(path: Path) -> onnx.ModelProto:
    """The model file's protobuf, external data not loaded; every way it can be wrong is one error."""
    if not path.exists():
        raise ModelLoadError(f"model file '{path}' does not exist; check the path")
    if path.is_dir():
        raise ModelLoadError(f"'{path}' is a folder, not an ONNX model file; pass the .onnx file")
    problem = unreadable(path, f"the model file '{path}'")
    if problem:
        raise ModelLoadError(problem)
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, OSError ...
        raise ModelLoadError(
            f"cannot read '{path}' as an ONNX model ({type(exc).__name__}); "
            "the file is truncated or not ONNX: export it again"
        ) from None


def _check_has_graph(proto: onnx.ModelProto, path: Path) -> None:
    if len(proto.graph.node) and not proto.opset_import:  # (a graph, but which version of its ops is not said)
        raise ModelLoadError(f"'{path}' imports no opset (its opset_import is empty, so the version of its "
                             f"{len(proto.graph.node)} nodes' ops is not said; or the file is cut short after its "
                             "graph); add one, e.g. model.opset_import.append(onnx.helper.make_opsetid('', 17)), "
                             "or export it again")
    if len(proto.graph.node) == 0 or not proto.opset_import:
        raise ModelLoadError(
            f"'{path}' holds no ONNX graph (no nodes or no opset); "
            "the file is truncated or not ONNX: export it again"
        )


def _check_external_files(proto: onnx.ModelProto, path: Path) -> list[onnx.TensorProto]:
    """The tensors stored beside the model; raises naming a missing or short data file."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    base = path.parent
    external = [tensor for tensor in _get_all_tensors(proto) if uses_external_data(tensor)]
    for tensor in external:
        _complete_length(tensor)
        try:
            info = ExternalDataInfo(tensor)
        except ValueError as exc:  # an offset or length that is not a number
            raise ModelLoadError(f"tensor '{tensor.name}' of '{path.name}' has a broken external data entry "
                                 f"({exc}); export the model again") from None
        if (info.offset or 0) < 0 or (info.length or 0) < 0:
            raise ModelLoadError(f"tensor '{tensor.name}' of '{path.name}' has a negative external data offset or "
                                 "length; export the model again")
        if not isinstance(info.location, str) or not isinstance(tensor.name, str):
            raise ModelLoadError(f"an external data location in '{path.name}' is not valid UTF-8 (the file is "
                                 "corrupt); export the model again")
        location = base / info.location
        _refuse_linked_data(base, info.location, tensor.name)
        if location.is_dir():
            raise ModelLoadError(f"the external data file '{info.location}' of '{path.name}' is a folder, not a "
                                 f"file (tensor '{tensor.name}'); put the data file there in its place")
        if not location.is_file():
            raise ModelLoadError(f"the external data file '{info.location}' of '{path.name}' is missing "
                                 f"(tensor '{tensor.name}'); put it next to the model in '{base}'")
        problem = unreadable(location, f"the external data file '{info.location}' of '{path.name}'")
        if problem:
            raise ModelLoadError(problem)
        if info.length and location.stat().st_size < (info.offset or 0) + info.length:
            raise ModelLoadError(f"the external data file '{info.location}' of '{path.name}' is shorter than the "
                                 f"model says (tensor '{tensor.name}'); copy the complete file next to the model")
    return external


_PACKED_4BIT = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1")
                if hasattr(onnx.TensorProto, name)}


def _complete_length(tensor: onnx.TensorProto) -> None:
    """Give an external tensor without a ``length`` entry (optional in the spec) the length its dims and type
    make: onnx's loader would otherwise read from the offset to the end of the file."""
    entries = {entry.key for entry in tensor.external_data}
    if "length" in entries or tensor.data_type == onnx.TensorProto.STRING:
        return
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    if tensor.data_type in _PACKED_4BIT:
        length = (count + 1) // 2
    else:
        try:
            length = count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            return  # an unknown type: onnx's own reading stands
    tensor.external_data.add(key="length", value=str(length))


def _refuse_linked_data(base: Path, location: str, tensor: str) -> None:
    """A data file ``base / location`` reached through a symbolic link (a Hugging Face cache's snapshot; the file
    or a folder of its location) is refused by onnx's loader for safety; say so with the fix, before onnx's own
    message."""
    parts = Path(location).parts
    if any(base.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts) + 1)):  # the folders, the file
        raise ModelLoadError(f"the external data file '{location}' (tensor '{tensor}') is or goes through a symbolic "
                             "link, which onnx "
                             "does not read (a safety rule); copy the model and its data with the links resolved "
                             "(cp -L) and run again")
    data_file = base.joinpath(*parts)
    try:
        links = data_file.stat().st_nlink if parts and data_file.is_file() else 1  # (a folder has 2 or more)
    except OSError:  # (missing: said by the caller's own checks)
        links = 1
    if links > 1:  # (cp -l, rsync --link-dest, link caches): onnx refuses it as a possible link attack
        raise ModelLoadError(f"the external data file '{location}' (tensor '{tensor}') has {links} hard links, which "
                             "onnx does not read (a safety rule); give it one link, e.g. cp "
                             f"'{data_file}' '{data_file}.copy' && mv '{data_file}.copy' '{data_file}', and run again")


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Read the tensors stored beside the model, naming a missing or short data file."""
    if _check_external_files(proto, path):
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:
            raise ModelLoadError(f"cannot read the external data of '{path.name}' ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); check the data files") from None


# ---------------------------------------------------------------------------------------------------
# Light models: the pipeline's own view of a model, with its large weights read on demand.
#
# A light model is a ModelProto in which every large initializer is a *stub*: its name, type and dims,
# with ``data_location = EXTERNAL``. A stub is either the model file's own external data (location
# relative to the model's folder: read from the file when needed, never all at once), or, for a large
# tensor held in memory (a model passed as a ModelProto, or stored in one file), location
# ``onnx-alds-in-memory`` with the index of that tensor in its :class:`TensorStore` (kept by
# reference, never copied nor modified). Small tensors (shape constants, biases) are loaded as usual.
# ---------------------------------------------------------------------------------------------------

LIGHT_ELEMENTS = 4096  # initializers with more elements than this are stubs in a light model
IN_MEMORY = "onnx-alds-in-memory"  # the location of a stub standing for a tensor held in memory
_PAYLOAD_FIELDS = frozenset({"raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                             "uint64_data", "external_data", "data_location"})
# element types whose external bytes numpy reads as they are (little-endian, one element per item)
_RAW_DTYPES = {onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.DOUBLE: "<f8", onnx.TensorProto.FLOAT16: "<f2",
               onnx.TensorProto.INT8: "i1", onnx.TensorProto.UINT8: "u1", onnx.TensorProto.INT16: "<i2",
               onnx.TensorProto.INT32: "<i4", onnx.TensorProto.INT64: "<i8"}
_COPY_CHUNK = 64 << 20  # bytes copied at a time from one data file to another


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _copy_fields(source, target, skip=frozenset()) -> None:
    """Copy every set field of ``source`` into ``target`` (same message type) but those in ``skip``."""
    for field, value in source.ListFields():
        if field.name not in skip:
            _copy_field(field, value, target)


def _copy_field(field, value, target) -> None:
    if field.is_repeated:
        getattr(target, field.name).extend(value)
    elif field.message_type is not None:
        getattr(target, field.name).CopyFrom(value)
    else:
        setattr(target, field.name, value)


def _raw_length(tensor: onnx.TensorProto) -> Optional[int]:
    """Length of ``raw_data`` without reading it (None when the tensor has none)."""
    if not tensor.HasField("raw_data"):
        return None
    meta = onnx.TensorProto()
    _copy_fields(tensor, meta, skip=frozenset({"raw_data"}))
    field = tensor.ByteSize() - meta.ByteSize()  # tag (1 byte) + varint length + bytes
    for size in range(1, 11):
        if _varint_size(field - 1 - size) == size:
            return field - 1 - size
    raise ValueError(f"cannot size the raw data of tensor '{tensor.name}'")  # pragma: no cover


TensorVisitor = Callable[[onnx.TensorProto, bool], onnx.TensorProto]


def _copy_graph(source: onnx.GraphProto, target: onnx.GraphProto, visit: TensorVisitor, main: bool = True) -> None:
    """Copy ``source`` into ``target`` with every initializer replaced by ``visit(tensor, main)``
    (the tensor itself or another one), subgraphs likewise. Initializers are visited in onnx's
    external-data order: a graph's own first, then those of each node's subgraphs."""
    for tensor in source.initializer:
        target.initializer.append(visit(tensor, main))
    for node in source.node:
        copy = target.node.add()
        _copy_fields(node, copy, skip=frozenset({"attribute"}))
        for attribute in node.attribute:
            attribute_copy = copy.attribute.add()
            _copy_fields(attribute, attribute_copy, skip=frozenset({"g", "graphs"}))
            if attribute.HasField("g"):
                _copy_graph(attribute.g, attribute_copy.g, visit, False)
            for graph in attribute.graphs:
                _copy_graph(graph, attribute_copy.graphs.add(), visit, False)
    _copy_fields(source, target, skip=frozenset({"initializer", "node"}))


def _copy_model(model: onnx.ModelProto, visit: TensorVisitor) -> onnx.ModelProto:
    """A copy of ``model`` whose graph initializers pass through ``visit`` (see :func:`_copy_graph`)."""
    copy = onnx.ModelProto()
    _copy_fields(model, copy, skip=frozenset({"graph"}))
    if model.HasField("graph"):
        _copy_graph(model.graph, copy.graph, visit)
    return copy


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _attribute_tensors(graph: onnx.GraphProto,
                       functions: Iterable[onnx.FunctionProto] = ()) -> Iterator[onnx.TensorProto]:
    """The tensors nodes hold as attributes (Constant values ...): of ``graph`` and its subgraphs, and of
    the bodies of ``functions`` (a model's local functions; a Constant there may be in external data too)."""
    nodes = [node for sub in _graphs(graph) for node in sub.node]
    for function in functions:
        for node in function.node:
            nodes.append(node)
            for attribute in node.attribute:
                subgraphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
                nodes += [inner for sub in subgraphs for body in _graphs(sub) for inner in body.node]
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


class TensorStore:
    """Reads the payload of a light model's stubs on demand (see the comment above ``LIGHT_ELEMENTS``).

    ``base_dir``: the folder the model file's external data locations are relative to (None when the
    model came as a ModelProto); ``held``: the in-memory tensors that ``onnx-alds-in-memory`` stubs stand for.
    """

    def __init__(self, base_dir: Optional[Path] = None) -> None:
        self.base_dir = base_dir
        self.held: list[onnx.TensorProto] = []
        self.token = secrets.token_hex(8)  # in each stub: a stub of another store is refused, not read

    def hold(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """A stub for ``tensor``, which stays where it is (referenced, not copied)."""
        stub = onnx.TensorProto()
        _copy_fields(tensor, stub, skip=_PAYLOAD_FIELDS)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=IN_MEMORY)
        stub.external_data.add(key="offset", value=str(len(self.held)))
        stub.external_data.add(key="length", value=str(_estimated_bytes(tensor)))
        stub.external_data.add(key="store", value=self.token)
        self.held.append(tensor)
        return stub

    def original(self, tensor: onnx.TensorProto) -> Optional[onnx.TensorProto]:
        """The held tensor an in-memory stub stands for; None for any other tensor."""
        if not _is_external(tensor):
            return None
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if entries.get("location") != IN_MEMORY:
            return None
        if entries.get("store") != self.token:  # (its index would read another result's tensor in its place)
            raise ModelLoadError(f"the model's tensor '{tensor.name}' is held by the store of another result than the "
                                 "one given; give each light result's model with its own store (result.store)")
        held = self.held[int(entries["offset"])]
        if tuple(held.dims) != tuple(tensor.dims) or held.data_type != tensor.data_type:
            raise ModelLoadError(f"the model's tensor '{tensor.name}' does not match what the store holds at its "
                                 "place; give each light result's model with its own store (result.store)")
        return held

    def _span(self, tensor: onnx.TensorProto) -> tuple[Path, int, int]:
        """The data file, offset and length of a file stub, checked to stay inside the model's folder."""
        _complete_length(tensor)
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        if self.base_dir is None:
            raise ModelLoadError(f"tensor '{tensor.name}' keeps its data in the external file '{location}', which "
                                 "was not loaded; pass the model's path, or load it with onnx.load(path)")
        _refuse_linked_data(self.base_dir, location, tensor.name)
        base = self.base_dir.resolve()
        path = (base / location).resolve()
        if not location or os.path.isabs(location) or not path.is_relative_to(base) or not path.is_file():
            raise ModelLoadError(f"the external data of tensor '{tensor.name}' ('{location}') is not a file inside "
                                 f"'{self.base_dir}'; check the data files")
        offset = int(entries.get("offset") or 0)
        size = path.stat().st_size
        length = int(entries["length"]) if entries.get("length") else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelLoadError(f"the external data file '{location}' is shorter than the model says (tensor "
                                 f"'{tensor.name}'); copy the complete file next to the model")
        return path, offset, length

    def same_data(self, tensor: onnx.TensorProto, other: "TensorStore", other_tensor: onnx.TensorProto) -> bool:
        """Whether two stubs hold the same bytes: file spans compared :data:`_COPY_CHUNK` bytes at a time (the
        same span of the same file without reading it), held tensors by value."""
        if self.original(tensor) is not None or other.original(other_tensor) is not None:
            return bool(np.array_equal(self.array(tensor), other.array(other_tensor)))
        (path, offset, length), (other_path, other_offset, other_length) = \
            self._span(tensor), other._span(other_tensor)
        if length != other_length:
            return False
        if (path, offset) == (other_path, other_offset):
            return True
        with open(path, "rb") as first, open(other_path, "rb") as second:
            first.seek(offset)
            second.seek(other_offset)
            left = length
            while left:
                size = min(left, _COPY_CHUNK)
                if first.read(size) != second.read(size):
                    return False
                left -= size
        return True

    def payload_bytes(self, tensor: onnx.TensorProto) -> int:
        """About how many bytes the stub's data adds to the serialized model."""
        if self.original(tensor) is not None:
            return int({entry.key: entry.value for entry in tensor.external_data}["length"])
        return self._span(tensor)[2]

    def load(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """``tensor`` itself when it is not a stub, else a complete copy (the stub is left as it is)."""
        if not _is_external(tensor):
            return tensor
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        self.fill(copy)
        return copy

    def fill(self, tensor: onnx.TensorProto) -> None:
        """Turn a stub into the complete tensor, in place (as onnx's own external-data loading does)."""
        original = self.original(tensor)
        if original is not None:
            name = tensor.name
            tensor.CopyFrom(original)
            tensor.name = name
            return
        self._span(tensor)  # checked before onnx reads it
        from onnx.external_data_helper import load_external_data_for_tensor

        try:
            load_external_data_for_tensor(tensor, str(self.base_dir))
        except Exception as exc:
            detail = str(exc).splitlines()[0][:160] if str(exc) else ""
            raise ModelLoadError(f"cannot read the external data of tensor '{tensor.name}' ({type(exc).__name__}: "
                                 f"{detail}); check the data files") from None

    def array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The tensor's value; a file stub of a plain numeric type is read straight into the array."""
        original = self.original(tensor)
        if original is not None:
            return numpy_helper.to_array(original)
        if _is_external(tensor) and tensor.data_type in _RAW_DTYPES:
            path, offset, length = self._span(tensor)
            dtype = np.dtype(_RAW_DTYPES[tensor.data_type])
            count = _elements(tensor)
            if length == count * dtype.itemsize:
                return np.fromfile(path, dtype=dtype, count=count, offset=offset).astype(dtype.newbyteorder("="),
                                                                                          copy=False).reshape(
                    tuple(tensor.dims))
        return numpy_helper.to_array(self.load(tensor))

    def write_payload(self, tensor: onnx.TensorProto, handle) -> int:
        """Write the stub's raw bytes (what ``raw_data`` holds once loaded) to ``handle``; returns the count."""
        original = self.original(tensor)
        if original is not None:
            data = original.raw_data
            handle.write(data)
            return len(data)
        path, offset, length = self._span(tensor)
        with open(path, "rb") as source:
            source.seek(offset)
            left = length
            while left:
                chunk = source.read(min(left, _COPY_CHUNK))
                if not chunk:
                    raise ModelLoadError(f"the external data file of tensor '{tensor.name}' ended early")
                handle.write(chunk)
                left -= len(chunk)
        return length

    def write_serialized(self, tensor: onnx.TensorProto, handle) -> int:
        """Write what ``SerializeToString`` of the complete tensor gives, without holding a file stub's
        data: its fields before ``raw_data`` (field 9), the data copied from its file, the fields after."""
        original = self.original(tensor)
        if original is not None:
            data = self.load(tensor).SerializeToString()
            handle.write(data)
            return len(data)
        meta = onnx.TensorProto()
        _copy_fields(tensor, meta, skip=frozenset({"external_data", "data_location", "raw_data"}))
        meta.data_location = onnx.TensorProto.DEFAULT  # what loading sets
        head, tail = onnx.TensorProto(), onnx.TensorProto()
        for field, value in meta.ListFields():
            _copy_field(field, value, head if field.number < 9 else tail)
        head_bytes, tail_bytes = head.SerializeToString(), tail.SerializeToString()
        length = self._span(tensor)[2]
        prefix = b"\x4a" + _varint(length)  # field 9 (raw_data), length-delimited
        handle.write(head_bytes + prefix)
        self.write_payload(tensor, handle)
        handle.write(tail_bytes)
        return len(head_bytes) + len(prefix) + length + len(tail_bytes)

    def has_raw_payload(self, tensor: onnx.TensorProto) -> Optional[int]:
        """Length of the ``raw_data`` the complete tensor has (None when it stores its values otherwise)."""
        original = self.original(tensor)
        if original is not None:
            return _raw_length(original)
        return self._span(tensor)[2]

    def complete_size(self, tensor: onnx.TensorProto) -> int:
        """Serialized size of the complete tensor, computed without reading its data."""
        original = self.original(tensor)
        if original is not None:
            return original.ByteSize() if original.name == tensor.name else self.load(tensor).ByteSize()
        meta = onnx.TensorProto()
        _copy_fields(tensor, meta, skip=frozenset({"external_data", "data_location", "raw_data"}))
        meta.data_location = onnx.TensorProto.DEFAULT  # what loading sets
        length = self._span(tensor)[2]
        return meta.ByteSize() + 1 + _varint_size(length) + length


@dataclass
class OpenedModel:
    """A light model (its large weights are stubs, read on demand through ``store``) and where it came from."""

    model: onnx.ModelProto
    store: TensorStore
    path: Optional[Path] = None


def open_model(model: Union[ModelLike, OpenedModel]) -> OpenedModel:
    """The model as the pipeline reads it: light (see :class:`TensorStore`), with the same checks and
    errors as :func:`load_model`. A ModelProto passed in is neither copied whole nor modified; a path
    is read once: its external data stays on disk, read tensor by tensor when needed."""
    try:
        return _open_model(model)
    except UnicodeDecodeError:  # protobuf decodes a string field only when it is read
        raise ModelLoadError("the model holds names or text that are not valid UTF-8 (the file is corrupt); "
                             "export it again") from None


def _open_model(model: Union[ModelLike, OpenedModel]) -> OpenedModel:
    if isinstance(model, OpenedModel):
        return model
    if isinstance(model, onnx.ModelProto):
        _refuse_in_memory_stubs(tensor for graph in _graphs(model.graph) for tensor in graph.initializer)
        store = TensorStore()
        light = _copy_model(model, lambda tensor, main: store.hold(tensor) if main and _holdable(tensor) else tensor)
        return OpenedModel(light, store)
    path = _model_path(model)
    proto = _read_model_file(path)
    _check_external_files(proto, path)
    store = TensorStore(path.parent)
    for graph in _graphs(proto.graph):  # small external tensors (shape constants ...) are loaded now
        for tensor in graph.initializer:
            if _is_external(tensor) and _elements(tensor) <= LIGHT_ELEMENTS:
                store.fill(tensor)
    for tensor in _attribute_tensors(proto.graph, proto.functions):
        if _is_external(tensor):
            store.fill(tensor)
    _check_has_graph(proto, path)
    if any(_holdable(tensor) for tensor in proto.graph.initializer):  # a model stored in one file
        proto = _copy_model(proto, lambda tensor, main: store.hold(tensor) if main and _holdable(tensor) else tensor)
    return OpenedModel(proto, store, path)


def _holdable(tensor: onnx.TensorProto) -> bool:
    return not _is_external(tensor) and _elements(tensor) > LIGHT_ELEMENTS


def has_stubs(model: onnx.ModelProto) -> bool:
    return any(_is_external(tensor) for graph in _graphs(model.graph) for tensor in graph.initializer)


def model_bytes(model: onnx.ModelProto, store: Optional[TensorStore] = None) -> int:
    """About the size of the complete serialized model (stubs counted at their data's size), measured
    without serializing it: protobuf's ``ByteSize`` encodes the whole message to measure it (a
    transient copy of the model), so large tensors are counted from their type and dims instead."""
    extra = 0

    def visit(tensor: onnx.TensorProto, main: bool) -> onnx.TensorProto:
        nonlocal extra
        if _is_external(tensor) and store is not None:
            extra += store.payload_bytes(tensor)
            return tensor
        if not _is_external(tensor) and _elements(tensor) > LIGHT_ELEMENTS:
            extra += _estimated_bytes(tensor)
            stub = onnx.TensorProto()
            _copy_fields(tensor, stub, skip=_PAYLOAD_FIELDS)
            return stub
        return tensor

    return _copy_model(model, visit).ByteSize() + extra


def _estimated_bytes(tensor: onnx.TensorProto) -> int:
    """The size of a tensor's data from its type and dims (its ``ByteSize`` for types of no fixed size)."""
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # noqa: BLE001 - strings and the like: measure them
        return tensor.ByteSize()
    return _elements(tensor) * itemsize


def materialize(model: onnx.ModelProto, store: Optional[TensorStore]) -> onnx.ModelProto:
    """Turn every stub of ``model`` into its complete tensor, in place; returns ``model``. Raises
    :class:`ModelLoadError` for a stub without ``store`` (in memory or reading a file), or of another store."""
    if store is None:
        _refuse_stubs_without_store(model)
    if store is not None:
        for graph in _graphs(model.graph):
            for tensor in graph.initializer:
                if _is_external(tensor):
                    store.fill(tensor)
    return model


def handover_copy(model: onnx.ModelProto, store: Optional[TensorStore] = None
                  ) -> tuple[onnx.ModelProto, list[tuple[str, onnx.TensorProto]]]:
    """A small copy of ``model`` for ONNX Runtime, and the large main-graph tensors to hand over to it
    beside the model (as external initializers): every in-memory stub's held tensor, and every large
    in-memory initializer, which becomes a stub in the copy. File stubs stay (ONNX Runtime reads them)."""
    handed: list[tuple[str, onnx.TensorProto]] = []

    def visit(tensor: onnx.TensorProto, main: bool) -> onnx.TensorProto:
        original = store.original(tensor) if store is not None and main else None
        if original is not None:
            handed.append((tensor.name, original))
        elif main and not _is_external(tensor) and _elements(tensor) > LIGHT_ELEMENTS:
            handed.append((tensor.name, tensor))
            stub = onnx.TensorProto()
            _copy_fields(tensor, stub, skip=_PAYLOAD_FIELDS)
            stub.data_location = onnx.TensorProto.EXTERNAL
            stub.external_data.add(key="location", value=IN_MEMORY)
            return stub
        return tensor

    return _copy_model(model, visit), handed


def _check_raw_size(tensor: onnx.TensorProto) -> None:
    """What onnx.checker says of raw data that does not fit the tensor's shape and type."""
    length = _raw_length(tensor)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # noqa: BLE001 - types numpy has no fixed size for: left to ONNX Runtime
        return
    packed = {getattr(onnx.TensorProto, name, None) for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")}
    if tensor.data_type in packed | {onnx.TensorProto.STRING}:  # sub-byte types pack several per byte
        return
    if length is not None and length != _elements(tensor) * itemsize:
        raise ValueError(f"TensorProto (tensor name: {tensor.name}) raw_data size ({length} bytes) does not match "
                         f"the declared shape and type ({_elements(tensor) * itemsize} bytes required)")


def checkable_copy(model: onnx.ModelProto, store: Optional[TensorStore] = None) -> tuple[onnx.ModelProto, set[str]]:
    """A small copy of ``model`` for ``onnx.checker``: every stub and every large in-memory initializer
    is an external tensor (the checker needs its data file to exist, not its contents); returns the
    copy and the data file names it refers to (create them, empty, beside it)."""
    locations: set[str] = set()

    def visit(tensor: onnx.TensorProto, main: bool) -> onnx.TensorProto:
        if _is_external(tensor):
            locations.update(entry.value for entry in tensor.external_data if entry.key == "location")
            return tensor
        if _elements(tensor) <= LIGHT_ELEMENTS:
            return tensor
        _check_raw_size(tensor)
        stub = onnx.TensorProto()
        _copy_fields(tensor, stub, skip=_PAYLOAD_FIELDS)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=IN_MEMORY)
        locations.add(IN_MEMORY)
        return stub

    return _copy_model(model, visit), locations


def opset_version(model: onnx.ModelProto) -> int:
    """Opset of the default (ai.onnx) domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise UnsupportedModelError("the model imports no ai.onnx opset; export it with a standard opset")


@contextlib.contextmanager
def folder_lock(folder: Path, *, busy: str) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``folder`` itself, no file added, held inside; where another
    open of the folder holds it (another process's, or another thread's), or the folder was removed or made
    again meanwhile (its holder removed it: the lock taken would be on a folder no longer there), an
    :class:`OutputPathError` saying ``busy`` at once: no waiting. Where the platform or the file system has no
    ``flock``, or ``folder`` is no folder, nothing is locked (what is written there says what fails)."""
    try:
        import fcntl
    except ImportError:  # (Windows)
        yield
        return
    try:
        handle = os.open(folder, os.O_RDONLY)
    except FileNotFoundError:  # (made by the caller a moment ago: another holder removed it)
        raise OutputPathError(busy) from None
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputPathError(busy) from None
        except OSError:  # (a file system without flock: nothing to hold)
            pass
        else:
            held, now = os.fstat(handle), _stat_or_none(folder)
            if now is None or (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                raise OutputPathError(busy)
        yield
    finally:
        os.close(handle)  # (releases the lock)


def _stat_or_none(path: Union[str, os.PathLike]) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None


@contextlib.contextmanager
def landed(target: Path) -> Iterator[None]:
    """The final renames of a write, uninterrupted (:func:`onnx_alds.signals.uninterrupted`): an interrupt that
    arrived meanwhile is raised after them as a KeyboardInterrupt whose ``landed`` names ``target``, so that
    the caller can say what was written."""
    try:
        with uninterrupted():
            yield
    except KeyboardInterrupt as exc:
        exc.landed = str(target)
        raise


def removed_whole(remove: Callable[[], None]) -> None:
    """Run ``remove`` (the removal of a temporary file or folder, repeatable) whole: uninterrupted
    (:func:`onnx_alds.signals.uninterrupted`), and once more when an interrupt came before the signals were
    held; the interrupt is raised after it."""
    interrupt: Optional[KeyboardInterrupt] = None
    for _ in range(3):
        try:
            with uninterrupted():
                remove()
            break
        except KeyboardInterrupt as exc:  # held and delivered after it (it is done), or before the handlers were set
            interrupt = exc
    if interrupt is not None:
        raise interrupt


def replace_keeping_mode(pending: Path, target: Path) -> None:
    """Rename ``pending`` over ``target``, with the permissions ``target`` had when it exists (a file written
    over keeps its mode, as ``cp`` keeps it: a private model stays private)."""
    try:
        mode = target.stat().st_mode & 0o7777 if target.is_file() else None
    except OSError:
        mode = None
    if mode is not None:
        os.chmod(pending, mode)
    os.replace(pending, target)


def _umask() -> int:
    """The process's file-creation mask (read by setting it, then set back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_SCANNED_MODEL_BYTES = 256 << 20  # a model file larger than this is not parsed to see whether it reads a data file


def _other_reader(target: Path, data_name: str) -> Optional[str]:
    """Another ``.onnx`` file beside ``target`` that reads ``data_name``, or one too large to tell cheaply
    (then it is presumed to): such a data file is neither removed nor overwritten. None when there is none."""
    for other in sorted(target.parent.glob("*.onnx")):
        if other.name == target.name or not _is_file(other):
            continue
        if other.stat().st_size > _SCANNED_MODEL_BYTES or _references_file(other, data_name):
            return str(other)
    return None


def _written_by_onnx_alds(model_path: Path) -> bool:
    """Whether the ONNX file at ``model_path`` carries onnx-alds' metadata (``onnx_alds.*`` keys): an output of
    an earlier run. Read without its external data; a file that cannot be read as a model is not."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # (not a model, or unreadable: nothing of ours)
        return False
    return is_onnx_alds_output(model)


def has_onnx_alds_metadata(model: onnx.ModelProto) -> bool:
    """Whether ``model`` carries onnx-alds' provenance metadata (``onnx_alds.*`` keys)."""
    return any(entry.key.startswith("onnx_alds.") for entry in model.metadata_props)


GRAPH_DIGEST_KEY = "onnx_alds.graph_sha1"  # the graph onnx-alds wrote (graph_digest): another tool's edit changes it
GRAPH_DIGEST_VERSION = 1  # of graph_digest's rule: a digest of another rule (another release) is not compared


def graph_digest(model: onnx.ModelProto) -> str:
    """``<rule version>:`` and the SHA-1 of the model's structure: the IR version and the opsets of the domains
    its nodes use; every node's op, domain, inputs, outputs and attributes (a body graph's structure by the
    same rule), in sorted order, node names left out; the model-local functions by the same rule; the graph's
    inputs with their types, its outputs with their element types (shape inference fills in their dims); the
    initializers' and tensor attributes' names, types and dims, and the values of small integer ones
    (shapes, axes, bounds). Float weights' values are not in it (distillation changes them, and hashing them
    would read every weight). A model another tool rewrote (quantized, fused, converted to float16 or to
    another opset, an attribute, a shape constant or a function edited) has another."""
    import hashlib

    bodies = [model.graph, *(onnx.GraphProto(node=function.node) for function in model.functions)]
    used = {""} | {node.domain for body in bodies for graph in _graphs(body) for node in graph.node}
    lines = [f"ir {model.ir_version}", *sorted(f"opset {entry.domain}:{entry.version}" for entry in model.opset_import
                                               if entry.domain in used)]
    lines += _structure_lines(model.graph)
    for function in sorted(model.functions, key=lambda f: (f.domain, f.name)):
        body = onnx.GraphProto(node=function.node)
        lines += [f"function {function.domain}:{function.name}({','.join(function.input)})->"
                  f"({','.join(function.output)}) attributes {','.join(function.attribute)}",
                  *sorted(f"opset {entry.domain}:{entry.version}" for entry in function.opset_import),
                  *_structure_lines(body)]
    return f"{GRAPH_DIGEST_VERSION}:" + hashlib.sha1("\n".join(lines).encode("utf-8")).hexdigest()


_DIGESTED_VALUES = 4096  # integer tensors up to this many elements enter the graph digest with their values


def _tensor_text(tensor: onnx.TensorProto) -> str:
    """A tensor in :func:`graph_digest`: name, type, dims, and the values of a small integer one."""
    text = f"{tensor.name}:{tensor.data_type}:{list(tensor.dims)}"
    kind = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).kind if tensor.data_type else "?"
    small = int(np.prod(tensor.dims, dtype=np.int64)) <= _DIGESTED_VALUES
    if kind in "iub" and small and not _is_external(tensor):
        text += ":" + numpy_helper.to_array(tensor).tobytes().hex()
    return text


def _structure_lines(graph: onnx.GraphProto) -> list[str]:
    """The lines of :func:`graph_digest` for one graph (bodies inline, by their attribute)."""
    def attribute(entry: onnx.AttributeProto) -> str:
        if entry.type == onnx.AttributeProto.GRAPH:
            return f"{entry.name}=graph[" + "|".join(_structure_lines(entry.g)) + "]"
        if entry.type == onnx.AttributeProto.GRAPHS:
            return f"{entry.name}=graphs[" + "||".join("|".join(_structure_lines(g)) for g in entry.graphs) + "]"
        if entry.type == onnx.AttributeProto.TENSOR:
            return f"{entry.name}=tensor {_tensor_text(entry.t)}"
        kept = onnx.AttributeProto()
        kept.CopyFrom(entry)
        kept.ClearField("doc_string")
        return f"{entry.name}={kept.SerializeToString().hex()}"

    nodes = sorted("\0".join([node.domain, node.op_type, *node.input, "->", *node.output,
                               *sorted(attribute(entry) for entry in node.attribute)]) for node in graph.node)
    inputs = [f"{value.name}:{value.type.SerializeToString().hex()}" for value in graph.input]
    outputs = [f"{value.name}:{value.type.tensor_type.elem_type}" for value in graph.output]
    return [*nodes, "inputs", *inputs, "outputs", *outputs, "initializers",
            *sorted(map(_tensor_text, graph.initializer))]


def is_onnx_alds_output(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is an earlier onnx-alds output as it was written: onnx-alds' metadata, and the graph
    its :data:`GRAPH_DIGEST_KEY` names (outputs of versions that wrote no digest, or a digest of another rule,
    count by the metadata alone). A compressed model that another tool then quantized keeps the metadata but
    is that tool's output."""
    if not has_onnx_alds_metadata(model):
        return False
    recorded = next((entry.value for entry in model.metadata_props if entry.key == GRAPH_DIGEST_KEY), None)
    if recorded is None or not recorded.startswith(f"{GRAPH_DIGEST_VERSION}:"):
        return True
    return recorded == graph_digest(model)


def _references_file(model_path: Path, data_name: str) -> bool:
    """True when the ONNX file at ``model_path`` exists and keeps tensors in ``data_name`` beside it (a file
    that is not a model names none: nothing of ours to clean up)."""
    if not model_path.is_file():
        return False
    stat = model_path.stat()
    return data_name in _external_locations(str(model_path.resolve()), stat.st_mtime_ns, stat.st_size)


def refuse_over_protobuf_limit(model: Union[ModelLike, "OpenedModel"], why: str, fix: Optional[str] = None) -> None:
    """Raise :class:`UnsupportedModelError` when ``model`` (a path or a light model) is over protobuf's 2 GB
    limit, for a step that needs it serialized whole (``why`` says which; ``fix`` what to do instead, default:
    compress without --validate, then validate from the files); read light, without its weights."""
    opened = open_model(model)
    size = model_bytes(opened.model, opened.store)
    if size > _PROTOBUF_LIMIT:
        raise UnsupportedModelError(f"the model is {size / 2**30:.1f} GB, over protobuf's 2 GB limit, and {why}; "
                                    + (fix or "compress it with onnx-alds compress (no --validate), then run "
                                       "onnx-alds validate ORIGINAL OUTPUT, which reads both from their files"))


def write_file_atomically(path: Union[str, os.PathLike], data: bytes, *,
                          also: Optional[Callable[[], None]] = None) -> None:
    """Write ``data`` to ``path`` all or nothing: into a temporary file of a short name in the same folder
    (a name as long as the file system allows still fits), then renamed over ``path``; the temporary file
    is removed when anything fails. ``also``: run right after the rename, with it (:func:`landed`). Raises
    OSError as the file system does."""
    target = Path(path)
    pending = unused_name(target.parent, ".tmp")
    try:
        with open(pending, "xb") as stream:  # created inside the try: an interrupt cannot leave it behind
            stream.write(data)
        os.chmod(pending, 0o666 & ~_umask())  # the user's usual mode for a new file
        with landed(target):
            replace_keeping_mode(pending, target)
            if also is not None:
                also()
    except OSError as exc:
        raise _naming(exc, target)
    finally:
        removed_whole(lambda: os.unlink(pending) if os.path.exists(pending) else None)


def first_missing_folder(folder: Union[str, os.PathLike]) -> Optional[Path]:
    """The outermost folder of ``folder`` that does not exist yet (what writing into it will create), or
    None when it exists: a command that fails removes it again with :func:`remove_if_no_files`."""
    missing = Path(folder).absolute()
    if missing.exists():
        return None
    while not missing.parent.exists():
        missing = missing.parent
    return missing


def remove_if_no_files(folder: Optional[Path]) -> None:
    """Remove ``folder`` (from :func:`first_missing_folder`) when it holds no file, at any depth."""
    if folder is not None and folder.is_dir() and not any(path.is_file() for path in folder.rglob("*")):
        shutil.rmtree(folder)


def _naming(exc: OSError, target: Path) -> OSError:
    """``exc`` naming the file being written (a full disk's ENOSPC names no file; a temporary file's name
    means nothing to the user), for :func:`onnx_alds.errors.os_error_text`."""
    if exc.filename is None or TEMPORARY_PREFIX in str(exc.filename):
        exc.filename = str(target)
    return exc


TEMPORARY_PREFIX = ".onnx-alds-"  # of every temporary file and folder (unused_name)


def existing_file_kind(path: Path, *, csv_header: Optional[str] = None) -> Optional[str]:
    """What an existing file at an output path holds, judged by its bytes, never by its name: "onnx-alds
    model" (an ONNX model with onnx-alds' metadata and the graph it wrote: an earlier output,
    :func:`is_onnx_alds_output`), "ONNX model" (any other), "numpy data file" (numpy's magic bytes), "zip
    archive (an .npz, a .pt ...)" (zip's), "onnx-alds plan", "onnx-alds report" (JSON onnx-alds wrote: its
    ``versions`` name onnx-alds at the top, or in a sweep's ``environment`` or a demo's ``compress`` record;
    validate and distill reports of earlier versions by their keys), "JSON file" (any other JSON),
    "onnx-alds CSV table" (its first line is ``csv_header``), "onnx-alds plot" (a PNG that matplotlib wrote),
    "PNG image", "file of another kind" (a script, notes, a table ...), or None (no file, or an empty one,
    which holds nothing to lose)."""
    import json

    if not path.is_file():
        return None
    try:
        with open(path, "rb") as stream:
            head = stream.read(1024)
    except OSError:
        return None
    if not head:
        return None
    if head.startswith(b"\x93NUMPY"):
        return "numpy data file"
    if head.startswith(b"PK\x03\x04"):  # (an .npz, a torch checkpoint, any zip)
        return "zip archive (an .npz, a .pt ...)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "onnx-alds plot" if b"matplotlib" in head else "PNG image"
    if head[:1] == b"\x08":
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - not a model: another kind of file
            model = None
        if model is not None and model.HasField("graph") and model.graph.node:
            return "onnx-alds model" if is_onnx_alds_output(model) else "ONNX model"
    if csv_header is not None and head.startswith(csv_header.encode()[:len(head)]):
        with open(path, "rb") as stream:
            if stream.readline().rstrip(b"\r\n") == csv_header.encode():
                return "onnx-alds CSV table"
    if head.lstrip()[:1] in (b"{", b"["):
        try:
            with open(path, encoding="utf-8") as stream:
                data = json.load(stream)
        except (OSError, ValueError, RecursionError):
            return "file of another kind"
        return json_output_kind(data)
    return "file of another kind"


LEGACY_REPORT_KEYS = ({"default_tolerances", "tolerances", "outputs", "passed"},  # validate --json
                      {"stop_reason", "best_step", "agreement_before", "agreement_after", "curve"})  # distill


def json_output_kind(data: Any) -> str:
    """"onnx-alds plan", "onnx-alds report" or "JSON file" (see :func:`existing_file_kind`): only the places
    onnx-alds writes its versions count, so a user's file that quotes a report inside it stays the user's."""
    from .plan import PLAN_FORMAT

    if not isinstance(data, dict):
        return "JSON file"
    if data.get("format") == PLAN_FORMAT:
        return "onnx-alds plan"
    for record in (data, data.get("environment"), data.get("compress")):  # (a report; a sweep's; the demo's)
        versions = record.get("versions") if isinstance(record, dict) else None
        if isinstance(versions, dict) and isinstance(versions.get("onnx_alds"), str):
            return "onnx-alds report"
    if any(keys <= set(data) for keys in LEGACY_REPORT_KEYS):
        return "onnx-alds report"
    return "JSON file"


def refuse_foreign_file(path: Path, writes: str, *, flag: str, command: str, csv_header: Optional[str] = None,
                        fix: str = "give another path (or remove the file first)",
                        also_replaces: Collection[str] = ()) -> None:
    """Before any work: an existing non-empty file at an output ``path`` that is not an earlier output of
    the kind the command writes there (``writes``: "onnx-alds model", "onnx-alds plan", "onnx-alds report",
    "onnx-alds CSV table", "onnx-alds plot") is a user's file (a script, notes, data, their own model, a
    hand-edited plan, a JSON config) and is not overwritten; an earlier output of the same kind is replaced.
    ``also_replaces``: other kinds replaced too (a plain model over any ONNX model). Raises OutputPathError
    naming ``flag`` (e.g. "-o") and ending with ``fix``."""
    existing = existing_file_kind(Path(path), csv_header=csv_header)
    if existing is None or existing == writes or existing in also_replaces:
        return
    what = {"onnx-alds model": "ONNX model", "onnx-alds CSV table": "CSV table", "onnx-alds plot": "plot",
            "onnx-alds report": "JSON report", "onnx-alds plan": "plan"}.get(writes, writes)
    article = "an" if what[0] in "AEIOU" else "a"
    foreign = {"ONNX model": " that is not an onnx-alds output (or was changed by another tool since)",
               "JSON file": " not written by onnx-alds", "PNG image": " not written by onnx-alds"}.get(existing, "")
    raise OutputPathError(f"{flag} '{path}' is an existing {existing}{foreign}, and {command} would write {article} "
                          f"{what} over it; {fix}")


def unwritable_folder(folder: Path) -> Optional[str]:
    """Why no file can be created in ``folder`` (the error of creating a probe file there: a read-only file
    system or folder), or None when one can; the probe is removed."""
    probe = unused_name(Path(folder), ".probe")
    try:
        with open(probe, "xb"):
            pass
    except OSError as exc:
        return str(exc.strerror or exc)
    finally:
        removed_whole(lambda: probe.unlink() if probe.exists() else None)
    return None


def unused_name(folder: Path, suffix: str = "") -> Path:
    """A fresh name for a temporary file in ``folder`` (``.onnx-alds-<random><suffix>``), not created: the
    caller creates it inside its ``try`` (``open(..., "x")``, ``os.mkdir``), so that a Ctrl-C at any moment
    leaves nothing behind (with ``mkstemp`` the file exists before its name reaches the caller)."""
    return Path(folder) / f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}{suffix}"


def advice_path(path: Union[str, os.PathLike]) -> str:
    """``path`` as a command the tool suggests should name it, shell-quoted: ``./-x.onnx`` for a name that
    starts with a dash (read as a flag otherwise), ``MODEL.onnx`` for a pipe or device (``<(cat m.onnx)``,
    /dev/stdin: gone once read)."""
    import shlex

    text = os.fspath(path)
    if text.startswith(("/dev/fd/", "/dev/std", "/proc/")) or is_stream(text):  # (/dev/stdin from a file: once)
        return "MODEL.onnx"
    return shlex.quote("./" + text if text.startswith("-") else text)


def is_stream(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` names a pipe, device or socket (read once, no seeks): it exists and is neither a
    regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, TypeError, ValueError):
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def checked_dims(name: str, value: Any) -> tuple[int, ...]:
    """The dims given for input ``name`` (a sequence or array of integers) as ints; anything else (a string,
    None, a number, an iterator or mapping) an :class:`InputDataError` naming it."""
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, (str, bytes)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in value):
        raise InputDataError(f"the shape given for '{name}' is {value!r}; give a sequence of integers, e.g. "
                             "(1, 3, 224, 224)")
    return tuple(int(d) for d in value)


def path_argument(value: Any, what: str) -> Path:
    """``value`` as a Path: a str or os.PathLike (a file path an API call was given); anything else (None, a
    number, an open file) an :class:`OutputPathError` naming ``what``."""
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise OutputPathError(f"{what} is {value!r}; give a file path (a str or pathlib.Path)")
    return Path(value)


def save_model(model: onnx.ModelProto, path: Union[str, os.PathLike], *,
               protect: Sequence[Union[str, os.PathLike]] = (),
               external_data: bool | None = None, store: Optional[TensorStore] = None,
               also: Optional[Callable[[], None]] = None) -> Path:
    """Write ``model`` to ``path`` completely or not at all.

    ``protect`` lists paths that must never be overwritten (the input model and its external data
    files). An existing file at ``path`` is replaced only when it is an earlier onnx-alds model, or any ONNX
    model when ``model`` has no onnx-alds metadata (is not a compressed model); anything else (a user's
    model, data, the input's external data file) raises :class:`OutputPathError`, as on the command line.
    ``external_data`` forces (True) or forbids (False) storing tensors beside the model in ``<name>.data``;
    by default it is used only when the model would exceed the 2 GiB protobuf limit.
    ``store``: where the stubs of a light model (:func:`open_model`) are read from. ``also``: run right after
    the final renames, uninterrupted with them (:func:`landed`): a report renamed into place with its model.

    The bytes are those ``onnx.save_model`` writes (one file, or ``save_as_external_data`` with
    ``size_threshold=1024``), but written tensor by tensor: no serialized copy of the whole model is
    made, and ``model`` is not modified.
    """
    if not isinstance(model, onnx.ModelProto):
        raise ModelLoadError(f"save_model writes an onnx.ModelProto (e.g. result.model), not a "
                             f"{type(model).__name__}; give the model first and the path second")
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, str) and (path.endswith(("/", os.sep)) or os.path.basename(path) in (".", "..")):
        raise OutputPathError(f"'{path}' names a folder (it ends with '{os.path.basename(path) or '/'}'); give a file "
                              "path for the model")  # (Path() drops the slash or the dot)
    target = path_argument(path, "the model's path")
    check_output_path(target, protect)
    # (the command line checked its -o before its work; a script's path is checked here)
    refuse_foreign_file(target, "onnx-alds model", flag="the path", command="save_model",
                        also_replaces=() if has_onnx_alds_metadata(model) else ("ONNX model",))
    if store is None:  # written as they are, the stubs would point to onnx-alds-in-memory, or to a data file
        _refuse_stubs_without_store(model, beside=target.parent)  # beside the output that is not there
    if external_data is None:
        external_data = model_bytes(model, store) > _PROTOBUF_LIMIT
    data_name = target.name + ".data"
    data_path = target.parent / data_name
    taken = next((what for other, what in protected_files(protect) if other.resolve() == data_path.resolve()), None)
    # our earlier output's weights (the old model, written by onnx-alds, read them), unless an input reads them
    # too (a copy of the input model written over keeps its data file) or another model in the folder does; a
    # model onnx-alds did not write is the user's, and so is its data file, which others may read from anywhere
    stale = not external_data and not taken and _is_file(data_path) and _references_file(target, data_name) \
        and _written_by_onnx_alds(target) and _other_reader(target, data_name) is None
    tmp_dir = unused_name(target.parent)
    try:
        os.mkdir(tmp_dir, 0o700)
        tmp_model = Path(tmp_dir) / target.name
        if external_data:
            if taken:
                raise OutputPathError(f"the model is written with its weights in '{data_path}', which is {taken}; "
                                      "choose another -o name")
            check_data_file_name(target)
            wrote_data = _write_with_external_data(model, tmp_model, data_name, store)
        else:
            wrote_data = False
            _write_one_file(model, tmp_model, store)
        with landed(target):  # an interrupt between the renames left the old model reading the new weights
            if wrote_data:
                replace_keeping_mode(Path(tmp_dir) / data_name, data_path)
            replace_keeping_mode(tmp_model, target)
            if also is not None:
                also()
        if stale and data_path.is_file():  # the model written over kept its weights there
            data_path.unlink()
    except OSError as exc:
        raise _naming(exc, target)
    finally:
        removed_whole(lambda: _remove_folder(tmp_dir))  # (an interrupt just after the renames left it behind)
    return target


def _remove_folder(folder: Path) -> None:
    if folder.is_dir():
        for leftover in folder.glob("*"):
            leftover.unlink()
        os.rmdir(folder)


_STREAM_BYTES = 64 << 20  # models below this size with no stubs are serialized in one piece


def _write_one_file(model: onnx.ModelProto, path: Path, store: Optional[TensorStore]) -> None:
    """Serialize ``model`` (stubs loaded one at a time) to ``path``: the bytes of ``SerializeToString``,
    written piece by piece (protobuf writes fields in number order: the graph, field 7, between the
    model's fields 1-6 and 8+; the initializers, graph field 5, between its fields 1-2 and 10+)."""
    stubs = store is not None and has_stubs(model)
    if not stubs and model_bytes(model) < _STREAM_BYTES:
        path.write_bytes(model.SerializeToString())
        return

    def complete(tensor: onnx.TensorProto) -> onnx.TensorProto:
        return store.load(tensor) if stubs and _is_external(tensor) else tensor

    head, tail = onnx.ModelProto(), onnx.ModelProto()
    for field, value in model.ListFields():
        if field.number != 7:
            _copy_field(field, value, head if field.number < 7 else tail)
    graph = model.graph
    # the graph without its own initializers; those of subgraphs (rare, small) are complete copies
    shell = onnx.GraphProto()
    _copy_graph(graph, shell, lambda tensor, main: onnx.TensorProto() if main else complete(tensor))
    del shell.initializer[:]
    graph_head, graph_tail = onnx.GraphProto(), onnx.GraphProto()
    for field, value in shell.ListFields():
        _copy_field(field, value, graph_head if field.number < 5 else graph_tail)
    sizes = [store.complete_size(tensor) if stubs and _is_external(tensor) else tensor.ByteSize()
             for tensor in graph.initializer]
    graph_size = graph_head.ByteSize() + graph_tail.ByteSize() + sum(1 + _varint_size(n) + n for n in sizes)
    with open(path, "wb") as handle:
        handle.write(head.SerializeToString())
        if model.HasField("graph"):
            handle.write(b"\x3a" + _varint(graph_size))  # model field 7 (graph), length-delimited
            handle.write(graph_head.SerializeToString())
            for tensor, size in zip(graph.initializer, sizes):
                handle.write(b"\x2a" + _varint(size))  # graph field 5 (initializer), length-delimited
                if stubs and _is_external(tensor):
                    written = store.write_serialized(tensor, handle)
                else:
                    data = tensor.SerializeToString()
                    written = handle.write(data)
                    del data
                if written != size:  # pragma: no cover - a wrong size would corrupt the file
                    raise RuntimeError(f"tensor '{tensor.name}' serialized to {written} bytes, expected {size}")
            handle.write(graph_tail.SerializeToString())
        handle.write(tail.SerializeToString())


def _write_with_external_data(model: onnx.ModelProto, path: Path, data_name: str,
                              store: Optional[TensorStore]) -> bool:
    """Write ``model`` with every initializer whose raw data reaches 1 KB in ``data_name`` beside
    ``path`` (what ``onnx.save_model(..., save_as_external_data=True, all_tensors_to_one_file=True,
    size_threshold=1024)`` writes), one tensor at a time; returns whether the data file was written."""
    data_path = path.parent / data_name
    state = {"handle": None, "offset": 0}

    def visit(tensor: onnx.TensorProto, main: bool) -> onnx.TensorProto:
        stub = store is not None and _is_external(tensor)
        length = store.has_raw_payload(tensor) if stub else _raw_length(tensor)
        if length is None or length + 33 < 1024:  # onnx's test: sys.getsizeof(raw_data) >= size_threshold
            return store.load(tensor) if stub else tensor
        if state["handle"] is None:
            state["handle"] = os.fdopen(os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "wb")
        handle = state["handle"]
        written = store.write_payload(tensor, handle) if stub else handle.write(tensor.raw_data)
        converted = onnx.TensorProto()
        _copy_fields(tensor, converted, skip=frozenset({"raw_data", "external_data", "data_location"}))
        converted.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", data_name), ("offset", state["offset"]), ("length", written)):
            converted.external_data.add(key=key, value=str(value))
        state["offset"] += written
        return converted

    try:
        light = _copy_model(model, visit)
    finally:
        if state["handle"] is not None:
            state["handle"].close()
    path.write_bytes(light.SerializeToString())
    return state["handle"] is not None


_PARSED_FOR_DATA_FILES = 256 << 20  # a model file with external data is small; larger files are not parsed


def protected_files(protect: Sequence[Union[str, os.PathLike]]) -> list[tuple[Path, str]]:
    """The files ``protect`` names, and the external data files of those that are ONNX models (read
    without their data; a file over 256 MiB or not a model adds nothing), each with what it is."""
    files = []
    for other in protect:
        if not isinstance(other, (str, os.PathLike)):
            continue
        path = Path(other)
        files.append((path, f"one of the inputs ('{path}')"))
        try:
            stat = path.stat() if path.is_file() else None
        except OSError:
            stat = None
        if stat is None or stat.st_size > _PARSED_FOR_DATA_FILES:
            continue
        files.extend((path.parent / location, f"the external data file of the input model '{path}'")
                     for location in _external_locations(str(path.resolve()), stat.st_mtime_ns, stat.st_size))
    return files


@functools.lru_cache(maxsize=16)
def _external_locations(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The external data locations a model file names, normalized (``./a.data`` is ``a.data``; read once per
    file version: a command checks several output paths against the same inputs); none when the file is not
    a model."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # not a model (a plan, an .npz ...)
        return ()
    tensors = [t for graph in _graphs(model.graph) for t in graph.initializer]
    tensors += list(_attribute_tensors(model.graph, model.functions))
    locations = {entry.value for tensor in tensors if _is_external(tensor)
                 for entry in tensor.external_data if entry.key == "location"}
    return tuple(sorted(os.path.normpath(location) for location in locations if isinstance(location, str)))


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name longer than the file system takes (no such file can exist)."""
    try:
        return path.is_file()
    except OSError:
        return False


def check_data_file_name(target: Path) -> None:
    """Raise :class:`OutputPathError` when the weights file ``<name>.data`` of a model written to ``target``
    with external data cannot be written: a longer name than the file system takes, a file there that is
    not the data of the model at ``target`` (another model's, or anything), or data another model beside it
    reads too. Checked before any work where a model may need external data, and again when written."""
    try:
        longest = os.pathconf(str(target.parent), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        longest = 255
    if len(os.fsencode(target.name + ".data")) > longest:
        raise OutputPathError(f"-o name '{target.name[:40]}…' is too long for its weights file '<name>.data' "
                              f"(a file name takes at most {longest} bytes here); choose a shorter -o name")
    data_name = target.name + ".data"
    data_path = target.parent / data_name
    if not data_path.exists():
        return
    if not _references_file(target, data_name):  # another model's, or anything
        raise OutputPathError(f"the model is written with its weights in '{data_path}', which exists and is not the "
                              f"data of '{target}' (another model may read it); move it or choose another -o name")
    other = _other_reader(target, data_name)
    if other is not None:
        raise OutputPathError(f"the model is written with its weights in '{data_path}', which '{other}' reads too; "
                              "choose another -o name")


def may_need_external_data(model_path: Union[str, os.PathLike]) -> bool:
    """Whether a model compressed from the file at ``model_path`` could pass protobuf's 2 GB limit and be
    written with external data (the file and its external data files hold more than the limit)."""
    total = 0
    for path, _ in protected_files([model_path]):
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total > _PROTOBUF_LIMIT


def same_file(a: Union[str, os.PathLike], b: Union[str, os.PathLike]) -> bool:
    """Whether two paths name one file: the same resolved path, or two existing names of one file (a link,
    another spelling). A path the system cannot look at (a name too long for it) is no other's."""
    try:
        a, b = Path(a), Path(b)
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_path(target: Path, protect: Sequence[Union[str, os.PathLike]] = (), *, flag: str = "-o",
                      example: Optional[str] = None) -> None:
    """Raise :class:`OutputPathError` when ``target`` cannot or must not be written: it is one of the
    ``protect`` files (the inputs), a folder, a device, pipe or symbolic link (which an atomic rename
    would replace), in a missing or read-only folder. ``flag`` names the option in the message, ``example``
    a file name to suggest for a folder (default: a model's for ``-o``, else a JSON report's)."""
    target = Path(target)
    for other, what in protected_files(protect):
        if same_file(other, target):
            raise OutputPathError(f"{flag} '{target}' is {what}; choose another {flag} path")
    if target.is_symlink() or (target.exists() and not target.is_file() and not target.is_dir()):
        raise OutputPathError(f"{flag} '{target}' is a link, device or pipe, which onnx-alds would replace; "
                              "give a regular file path")
    if target.is_dir():
        raise OutputPathError(f"{flag} '{target}' is a folder; give a file name in it (such as "
                              f"{example or ('model.small.onnx' if flag == '-o' else 'report.json')})")
    if not target.parent.exists():
        raise OutputPathError(f"the folder of {flag} '{target}' does not exist; create it first")
    problem = unwritable_folder(target.parent)  # a read-only file system or folder: said now, not after the work
    if problem is not None:
        raise OutputPathError(f"cannot write to the folder of {flag} '{target}' ({problem}); "
                              "choose a path in a writable folder")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputPathError(f"{flag} '{target}' is not writable; choose another path or remove it")


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
            if dim.HasField("dim_value") and dim.dim_value >= 0:  # 0: a fixed empty dim
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        if value.type.WhichOneof("value") != "tensor_type" or not tensor_type.elem_type:
            raise UnsupportedModelError(f"graph input '{value.name}' is not a typed tensor; onnx-alds feeds tensor "
                                        "inputs with an element type (fix or re-export the model)")
        if not tensor_type.HasField("shape"):  # not a scalar: a rank nobody knows (onnx.checker refuses it too)
            raise UnsupportedModelError(f"graph input '{value.name}' has no shape, so its rank is unknown (onnx.checker "
                                        "refuses it too); re-export the model with input shapes, or set one with "
                                        "onnx.helper.make_tensor_value_info")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(value.name, dtype, tuple(dims)))
    return specs


_DIM_NAME = re.compile(r"[^\W\d][\w.]*")  # a dim's name: letters (any script), digits, _ and dots
_DIM_TOKEN = re.compile(r"\s*(?:(\d+)|([^\W\d][\w.]*)|([-+*]))")


def _dim_expression(text: str, values: Mapping[str, int]) -> Optional[int]:
    """The value of a dim named by sums, differences and products of other dims' names and whole numbers
    (``past_sequence+sequence``, ``past_sequence_length + 1``, ``2*s0``), each name at ``values``; None for a
    name that is no such expression, names one without a value, or comes to less than 1."""
    terms, sign, product, position, expect_operand = 0, 1, 1, 0, True
    while position < len(text.rstrip()):
        match = _DIM_TOKEN.match(text, position)
        if match is None:
            return None
        number, name, operator = match.groups()
        position = match.end()
        if expect_operand == (operator is not None):
            return None
        if operator is None:
            if name is not None and name not in values:
                return None
            product *= int(number) if number is not None else values[name]
        elif operator == "*":
            pass
        else:
            terms, sign, product = terms + sign * product, 1 if operator == "+" else -1, 1
        expect_operand = operator is not None
    value = terms + sign * product
    return value if not expect_operand and value >= 1 else None


def sized_inputs(specs: Sequence["InputSpec"], size: int, *, first: int = 1,
                 given: Optional[Mapping[str, Sequence[int]]] = None) -> dict[str, tuple[int, ...]]:
    """Every input's shape with its dynamic dims chosen by the tool: the first ``first``, the others ``size``,
    ``given`` shapes as they are; a dim named by an expression of the other dims' names
    (``past_sequence+sequence``: an attention mask over the cache and the new tokens, as Hugging Face exports
    name it) at its value, each name at what the shapes above give it (:func:`_dim_expression`), so that inputs
    whose dims must agree get sizes that do."""
    given = dict(given or {})
    named = [(spec, axis, dim) for spec in specs for axis, dim in enumerate(spec.dims)
             if isinstance(dim, str) and _DIM_NAME.fullmatch(dim)]
    values = {dim: int(given[spec.name][axis]) for spec, axis, dim in named  # (the given shapes' first)
              if spec.name in given and axis < len(given[spec.name])}
    for spec, axis, dim in named:
        values.setdefault(dim, first if axis == 0 else size)

    def dim_size(dim, axis: int) -> int:
        if isinstance(dim, int):
            return dim
        if isinstance(dim, str) and dim in values:
            return values[dim]
        computed = _dim_expression(dim, values) if isinstance(dim, str) else None
        return computed if computed is not None else first if axis == 0 else size

    return {spec.name: tuple(given[spec.name]) if spec.name in given else
            tuple(dim_size(dim, axis) for axis, dim in enumerate(spec.dims)) for spec in specs}


def fixed_batch(model: onnx.ModelProto) -> Optional[int]:
    """The first dim the graph inputs fix, or None when it is dynamic. Inputs fixing different ones are an
    :class:`UnsupportedModelError`: every input takes the same samples (calibration, validation, timing), so
    no batch runs them all."""
    fixed = {spec.dims[0] for spec in graph_inputs(model) if spec.dims and isinstance(spec.dims[0], int)}
    if len(fixed) > 1:
        raise UnsupportedModelError(f"the model's inputs fix different first dims ({sorted(fixed)}): every input "
                                    "takes the same samples, so no batch fits them all; export the model with one "
                                    "batch dim")
    return int(fixed.pop()) if fixed else None


def show_input_shapes(shapes: Mapping[str, Sequence[int]], separator: str = ", ") -> str:
    """``NAME:1x3x224x224`` per input, as ``--input-shape`` takes them (the inverse of :func:`parse_input_shapes`),
    in the mapping's order."""
    return separator.join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items())


MAX_DIM = 2**31 - 1  # a larger --input-shape dim is a typo: no tensor that size fits in memory


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
        if any(v > MAX_DIM for v in values):
            raise InputDataError(f"--input-shape '{entry}' has a dim above {MAX_DIM}, larger than any tensor "
                                 "ONNX Runtime can hold; give the size the model runs at, e.g. input:1x3x224x224")
        if name in shapes and shapes[name] != values:
            raise InputDataError(f"--input-shape gives input '{name}' twice ({'x'.join(map(str, shapes[name]))} and "
                                 f"{'x'.join(map(str, values))}); give each input once")
        shapes[name] = values
    return shapes


def check_input_shapes(model: onnx.ModelProto, overrides: Mapping[str, Sequence[int]] | None,
                       empty: Collection[str] = ()) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` values as int tuples, checked against the graph inputs: each names an input,
    gives all its dims and agrees with the dims the model fixes. Raises :class:`InputDataError`. The inputs
    named in ``empty`` may have dims of 0 (sizes taken from calibration arrays: a KV cache's empty past)."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise InputDataError(f"the input shapes are a {type(overrides).__name__}; give a dict of input name to "
                             "dims, e.g. {'input': (1, 3, 224, 224)}")
    overrides = dict(overrides or {})
    specs = graph_inputs(model)
    names = {spec.name for spec in specs}
    unknown = sorted(set(overrides) - names)
    constants = {init.name for init in model.graph.initializer} & {value.name for value in model.graph.input}
    if unknown and unknown[0] in constants:
        raise InputDataError(
            f"--input-shape names '{unknown[0]}', an initializer the graph also lists as an input: its shape is "
            f"the constant's; give only the inputs without one ({', '.join(sorted(names))})")
    if unknown:
        raise InputDataError(
            f"--input-shape names '{unknown[0]}', which is not a graph input; inputs are: {', '.join(sorted(names))}"
        )
    checked: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.name not in overrides:
            continue
        shape = checked_dims(spec.name, overrides[spec.name])
        if any(d > MAX_DIM for d in shape):
            raise InputDataError(f"the shape given for '{spec.name}' ({'x'.join(map(str, shape))}) has a dim above "
                                 f"{MAX_DIM}, larger than any tensor ONNX Runtime can hold; give the size the model "
                                 "runs at")
        example = 'x'.join(str(d) if isinstance(d, int) else '1' for d in spec.dims)
        declared = list(spec.dims) if len(shape) == len(spec.dims) else [None] * len(shape)
        if any(d < (0 if spec.name in empty else 1) and fixed != 0  # (0 where the model fixes it to 0)
               for d, fixed in zip(shape, declared)):
            raise InputDataError(f"--input-shape gives {'x'.join(map(str, shape))} for '{spec.name}'; every dim must "
                                 f"be at least 1, e.g. {spec.name}:{example}")
        if not spec.dims and shape:
            raise InputDataError(f"--input-shape gives {len(shape)} dim{'s' if len(shape) > 1 else ''} for "
                                 f"'{spec.name}', a scalar (rank 0), which has no dims to give; leave it out")
        if len(shape) != len(spec.dims):
            raise InputDataError(
                f"--input-shape gives {len(shape)} dims for '{spec.name}', which has {len(spec.dims)}; "
                f"give all of them, e.g. {spec.name}:{example}"
            )
        for given, declared in zip(shape, spec.dims):
            if isinstance(declared, int) and given != declared:
                fitted = 'x'.join(str(d) if isinstance(d, int) else str(g) for d, g in zip(spec.dims, shape))
                raise InputDataError(
                    f"--input-shape gives {'x'.join(map(str, shape))} for '{spec.name}', but the model declares it "
                    f"[{', '.join(_dim_text(d) for d in spec.dims)}], which fixes {declared} where {given} is given; "
                    f"change only its dynamic dims, e.g. {spec.name}:{fitted}"
                )
        checked[spec.name] = shape
    named: dict[str, tuple[int, str]] = {}  # a symbolic dim shared by several inputs takes one value
    for spec in specs:
        for given, declared in zip(checked.get(spec.name, ()), spec.dims):
            if isinstance(declared, str) and declared:
                value, first = named.setdefault(declared, (given, spec.name))
                if value != given:
                    raise InputDataError(
                        f"--input-shape gives the dim '{declared}' {value} for '{first}' and {given} for "
                        f"'{spec.name}'; the model names both '{declared}', so give them the same value")
    return checked


def _dim_text(dim) -> str:
    """A declared dim as words: its size, its name, or ``?`` (a name protobuf could not decode is shown as
    far as it reads)."""
    if isinstance(dim, int):
        return str(dim)
    if isinstance(dim, bytes):
        dim = dim.decode("utf-8", "replace")
    return str(dim) if dim else "?"


def resolve_input_shapes(model: onnx.ModelProto, overrides: Mapping[str, Sequence[int]] | None = None,
                         *, batch_default: int | None = None, empty: Collection[str] = ()
                         ) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Concrete shapes for every graph input, and notes on what was assumed.

    Shapes come from the model where static, else from ``overrides``. When ``batch_default`` is set,
    a dynamic *first* dim alone is set to it (and a note says so); any other dynamic dim without an
    override raises :class:`UnsupportedModelError` asking for ``--input-shape``.
    """
    overrides = check_input_shapes(model, overrides, empty)
    specs = graph_inputs(model)
    shapes: dict[str, tuple[int, ...]] = {}
    notes: list[str] = []
    dynamic, batched = [], []
    # a named dynamic dim ('sequence') has one size in every input: given for one input, it holds for all
    sizes_by_name: dict[str, tuple[int, str]] = {}
    for spec in specs:
        for dim, size in zip(spec.dims, overrides.get(spec.name, ())):
            if isinstance(dim, str) and dim:
                sizes_by_name.setdefault(dim, (size, spec.name))
    values = {name: size for name, (size, _) in sizes_by_name.items()}

    def named_size(dim) -> Optional[int]:
        """A dynamic dim's size from the sizes given for its name, or for the names of its expression
        ('past_sequence+sequence'); None when they do not give it."""
        if not isinstance(dim, str) or not dim:
            return None
        return values[dim] if dim in values else _dim_expression(dim, values)

    def sources_of(dim: str) -> set[str]:
        names = [dim] if dim in sizes_by_name else [token[1] for token in _DIM_TOKEN.findall(dim) if token[1]]
        return {sizes_by_name[name][1] for name in names if name in sizes_by_name}

    for spec in specs:
        if spec.name in overrides:
            shapes[spec.name] = overrides[spec.name]
            plain = {name: size for name, size in values.items() if _DIM_NAME.fullmatch(name)}
            for dim, size in zip(spec.dims, overrides[spec.name]):  # a size its name's expression contradicts
                expected = _dim_expression(dim, plain) if isinstance(dim, str) and dim not in plain else None
                if expected is not None and expected != size:
                    notes.append(f"input '{spec.name}': dim '{dim}' is given as {size}, where the sizes given for "
                                 f"the names in it make {expected}; check --input-shape")
            continue
        dims = [named_size(d) or d for d in spec.dims]
        if dims != list(spec.dims):
            taken = dict.fromkeys(d for d, size in zip(spec.dims, dims) if isinstance(d, str) and d and d != size)
            sources = sorted(set().union(*(sources_of(d) for d in taken)))
            notes.append(f"input '{spec.name}': its dims named like those of {', '.join(map(repr, sources))} take "
                         f"their sizes (" + ", ".join(f"{d}={named_size(d)}" for d in taken) + ")")
        if batch_default is not None and dims and not isinstance(dims[0], int) \
                and all(isinstance(d, int) for d in dims[1:]):
            dims[0] = batch_default
            batched.append(spec.name)
        if not all(isinstance(d, int) for d in dims):
            dynamic.append((spec, dims))
            continue
        shapes[spec.name] = tuple(int(d) for d in dims)
    if batched:  # one note for all of them (a table's 21 feature inputs made 21 notes)
        named = ", ".join(f"'{name}'" for name in batched[:3]) + (f" and {len(batched) - 3} more" if len(batched) > 3
                                                                     else "")
        notes.append(f"input{'s' if len(batched) > 1 else ''} {named}: dynamic batch dim set to {batch_default}")
    if dynamic:  # every input at once, so one run of the command says all that is missing
        pretty = ", ".join(f"'{spec.name}' [" + ", ".join(_dim_text(d) for d in spec.dims) + "]"
                           for spec, _ in dynamic)
        first = str(batch_default) if batch_default is not None else "N"

        def usable(dim) -> bool:  # a plain word without the separator x (the parser splits on x and X)
            return isinstance(dim, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", dim) is not None \
                and "x" not in dim.lower() and dim != first

        def takes_first(spec, i: int) -> bool:  # a dim of the first dim's name takes its value (adj [nodes, nodes])
            name = spec.dims[0] if spec.dims and isinstance(spec.dims[0], str) and spec.dims[0] else None
            return i == 0 or bool(name and spec.dims[i] == name)

        import shlex

        needed, covered = [], set()  # an input whose open dims are all named like a listed input's takes theirs
        for spec, dims in dynamic:
            open_dims = [spec.dims[i] for i, d in enumerate(dims) if not isinstance(d, int)]
            if needed and all(isinstance(d, str) and d and d in covered for d in open_dims):
                continue
            needed.append((spec, dims))
            covered.update(d for d in spec.dims if isinstance(d, str) and d)

        def key_of(spec, i: int):  # a named dim is one dim wherever it appears; each unnamed dim is its own
            return spec.dims[i] if isinstance(spec.dims[i], str) and spec.dims[i] else (spec.name, i)

        # dims without a usable name are D, or D1, D2, ... when there are several
        unnamed = list(dict.fromkeys(key_of(spec, i) for spec, dims in needed for i, d in enumerate(dims)
                                     if not (isinstance(d, int) or takes_first(spec, i) or usable(spec.dims[i]))))
        taken = {spec.dims[i] for spec, dims in needed for i in range(len(dims)) if usable(spec.dims[i])}
        free = (label for label in itertools.chain(["D"] if len(unnamed) == 1 else [],  # never a dim's own name
                                                   (f"D{n}" for n in itertools.count(1))) if label not in taken)
        labels = {key: next(free) for key in unnamed}

        def example(spec, dims) -> str:
            return "x".join(str(d) if isinstance(d, int) else first if takes_first(spec, i) else spec.dims[i]
                            if usable(spec.dims[i]) else labels[key_of(spec, i)] for i, d in enumerate(dims))

        examples = [(spec.name, example(spec, dims)) for spec, dims in needed]
        flags = " ".join(f"--input-shape {shlex.quote(f'{name}:{shape}')}" for name, shape in examples)
        placeholders = list(dict.fromkeys(part for _, shape in examples for part in shape.split("x")
                                          if not part.isdigit()))  # (no name nor label holds the separator)
        raise UnsupportedModelError(
            f"input{'s' if len(dynamic) > 1 else ''} {pretty} {'have' if len(dynamic) > 1 else 'has'} dynamic dims; "
            f"give them with {flags}" + (f" (for {', '.join(placeholders)}: the size you run the model at, a number)"
                                         if placeholders else "")
            + (f" (the other input{'s take' if len(dynamic) - len(needed) > 1 else ' takes'} the sizes of the dims "
               "named alike)" if len(needed) < len(dynamic) else ""))
    return shapes, notes
