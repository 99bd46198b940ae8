"""Input sets for running a model: validation inputs and calibration data come from here.

One function, :func:`load_inputs`, turns exactly one source into an :class:`InputSet`:

* an ``.npz`` with one array per graph input, keyed by the input's name, batch (sample axis) first,
  plus an optional ``labels`` array of class ids;
* a folder of images (``.jpg``/``.jpeg``/``.png``/``.bmp``, read in sorted file-name order) with a
  named :class:`Preprocess`;
* ``random=N`` samples that honour the graph inputs' dtypes and shapes (a last resort: the set's
  ``source`` says "not real data" so that reports can label it).

Labels (integer class ids, one per sample) are opt-in: the ``labels`` array of an ``.npz``, a labels
file (:func:`read_labels_file`: one integer per line in sample order, or ``name,label`` lines for
images), or, for images, ``labels_from_filenames=True`` (:func:`label_from_filename`). They are read
and checked before any image is decoded and before any model runs.

Every array of an ``InputSet`` already has the dtype of its graph input and shares the first (sample)
axis with the others. The CLI helpers :func:`add_input_arguments` / :func:`inputs_from_args` give
``validate`` (``--inputs/--images/--random``) and ``compress`` (``--calibration/--calibration-images/
--calibration-random``) the same flags and the same checks.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper

from .argtypes import positive_int
from .errors import InputDataError, RandomInputsError
from .model_io import (InputSpec, check_input_shapes, graph_inputs, is_stream, parse_input_shapes, resolve_input_shapes,
                       unreadable)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LABELS_FILE_HELP = "one integer class id per line in sample (sorted file) order, or name,label lines"
LABELS_KEY = "labels"
RANDOM_INT_HIGH = 100  # integer inputs (token ids, indices) of no known table are drawn from [0, RANDOM_INT_HIGH)

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------------------------------
# InputSet


@dataclass(frozen=True, eq=False)
class InputSet:
    """Samples for every graph input, batch first, ready to feed to ONNX Runtime.

    ``arrays`` maps each graph input name to an array whose first axis is the sample axis (all of the
    same length); ``labels`` holds one integer class id per sample when known; ``source`` says in words
    where the data came from (random data says "not real data"; empty: "arrays given in Python").
    """

    arrays: Mapping[str, np.ndarray]
    labels: Optional[np.ndarray] = None
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.arrays, Mapping):
            raise InputDataError(f"the input set's arrays are a {type(self.arrays).__name__}; give a dict of graph "
                                 "input name to array, e.g. InputSet({'input': array})")
        if not self.arrays:
            raise InputDataError("the input set holds no arrays; give one array per graph input, e.g. "
                                 "InputSet({'input': array})")
        key = next((name for name in self.arrays if not isinstance(name, str)), None)
        if key is not None:
            raise InputDataError(f"input set key {key!r} ({type(key).__name__}) is no graph input name; key each array by its "
                                 "graph input's name, e.g. InputSet({'input': array})")
        if self.source is None:
            object.__setattr__(self, "source", "")
        if not isinstance(self.source, str):
            raise InputDataError(f"source={self.source!r}: give where the data came from in words, or leave it out")
        odd = next((name for name, array in self.arrays.items() if not isinstance(array, np.ndarray)), None)
        if odd is not None:
            raise InputDataError(f"input '{odd}' is a {type(self.arrays[odd]).__name__}; give numpy arrays, batch "
                                 "first (numpy.asarray(values, dtype=numpy.float32))")
        lengths = {name: (arr.shape[0] if arr.ndim else None) for name, arr in self.arrays.items()}
        if None in lengths.values() or len(set(lengths.values())) != 1:
            pretty = ", ".join(f"{name}: {n}" for name, n in lengths.items())
            raise InputDataError(
                f"input arrays disagree on the number of samples ({pretty}); give every input the same first "
                "(sample) dim (an input without one, such as a table every sample reads, cannot be fed: make it a "
                "constant of the model; inputs that share no sample axis, such as a graph's nodes and its edge list, "
                "cannot be calibrated or validated: compress the model data-free)"
            )
        if not self.source:  # reports and notes say where the data came from
            plural = "s" if len(self) != 1 else ""
            object.__setattr__(self, "source", f"arrays given in Python ({len(self)} sample{plural})")
        if self.labels is not None:
            labels = self.labels
            if not isinstance(labels, np.ndarray):  # a list of ids is fine; a list of floats is not
                labels = np.asarray(labels)
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise InputDataError(f"labels are {labels.dtype} of shape {labels.shape}; give one integer class id "
                                     "per sample, e.g. numpy.array([3, 0, 7], dtype=numpy.int64)")
            if len(labels) != len(self):
                raise InputDataError(
                    f"{len(labels)} labels for {len(self)} samples; give exactly one label per sample"
                )
            object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches of at most ``batch_size`` samples (the last one may be smaller)."""
        if batch_size < 1:
            raise InputDataError(f"got batch size {batch_size}; the batch size must be ≥ 1")
        for start in range(0, len(self), batch_size):
            yield {name: arr[start:start + batch_size] for name, arr in self.arrays.items()}

    def head(self, count: int) -> "InputSet":
        """The first ``count`` samples as a new set."""
        labels = None if self.labels is None else self.labels[:count]
        return InputSet({n: a[:count] for n, a in self.arrays.items()}, labels, self.source)

    def take(self, indices: np.ndarray) -> "InputSet":
        """The samples at ``indices`` (in that order) as a new set."""
        labels = None if self.labels is None else self.labels[indices]
        return InputSet({n: a[indices] for n, a in self.arrays.items()}, labels, self.source)

    @property
    def is_random(self) -> bool:
        """True for random data (its ``source`` says "not real data")."""
        return "not real data" in self.source


# --------------------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes an input array.

    Steps, in order: decode with Pillow and convert to RGB (``channels=3``) or grayscale ``L``
    (``channels=1``); resize either to exactly ``size`` (height, width) or so that the short side is
    ``resize_short`` (aspect kept, long side rounded), bilinear; center-crop to ``crop`` (height,
    width; offsets ``round((H - h) / 2)`` as torchvision does); ``x = pixel * scale`` with pixels in
    0..255; ``x = (x - mean) / std`` per channel; lay out as ``CHW`` or ``HWC`` (the batch axis is
    added when samples are stacked).
    """

    name: str
    resize_short: Optional[int] = None
    size: Optional[tuple[int, int]] = None
    crop: Optional[tuple[int, int]] = None
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    channels: int = 3

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise InputDataError(f"got layout '{self.layout}'; the layout must be NCHW or NHWC")
        if self.channels not in (1, 3):
            raise InputDataError(f"got {self.channels} channels; preprocessing makes 1 (grayscale) or 3 (RGB)")
        if self.resize_short is not None and self.size is not None:
            raise InputDataError("give either a short-side resize or an exact size, not both")
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise InputDataError(
                    f"--{label} has {len(values)} values for {self.channels} channel(s); give "
                    + ("1 value" if self.channels == 1 else f"1 or {self.channels} values")
                )
        if any(s == 0 for s in self.std):
            raise InputDataError("--std contains 0; every std must be non-zero")

    def describe(self) -> str:
        """One line, e.g. ``imagenet (short side 256, crop 224x224, x/255, mean/std, NCHW RGB)``."""
        parts = []
        if self.size:
            parts.append(f"resize {self.size[0]}x{self.size[1]}")
        if self.resize_short:
            parts.append(f"short side {self.resize_short}")
        if self.crop:
            parts.append(f"crop {self.crop[0]}x{self.crop[1]}")
        parts.append(f"scale {self.scale:g}, mean {_fmt_tuple(self.mean)}, std {_fmt_tuple(self.std)}")
        parts.append(f"{self.layout} {'RGB' if self.channels == 3 else 'grayscale'}")
        return f"{self.name} ({', '.join(parts)})"


def value_bytes(array: np.ndarray):
    """The bytes a digest reads for ``array``'s values: its buffer, except for an object array (strings: the
    buffer holds pointers, other on every run), whose elements are each hashed as length and UTF-8 text."""
    if array.dtype.kind != "O":
        return np.ascontiguousarray(array).data
    parts = []
    for value in array.ravel():
        text = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        parts.append(len(text).to_bytes(8, "little") + text)
    return b"".join(parts)


def first_occurrences(inputs: InputSet, unit: int = 1) -> list[int]:
    """The indices of the samples that repeat no earlier one exactly (values of every input; -0.0 as 0.0), in order.
    ``unit`` > 1: a model that fixes its first dim to ``unit`` takes whole inputs of ``unit`` rows (its first
    axis is no batch), so whole inputs are compared, and the rows of those that repeat none are returned (a
    remainder of fewer rows is kept as it is)."""
    import hashlib

    unit = max(1, int(unit))
    count = len(inputs)
    whole = count - count % unit
    first: dict[bytes, int] = {}
    for start in range(0, whole, unit):
        digest = hashlib.sha1()
        for name in sorted(inputs.arrays):
            part = inputs.arrays[name][start:start + unit]
            if part.dtype.kind in "fc":
                part = part + part.dtype.type(0)  # (-0.0 + 0.0 is 0.0: values equal, bytes not)
            digest.update(value_bytes(part))
        first.setdefault(digest.digest(), start)
    return [row for start in sorted(first.values()) for row in range(start, start + unit)] + list(range(whole, count))


def without_repeats(inputs, unit: int = 1):
    """``inputs`` without the samples that repeat an earlier one exactly (values of every input; whole
    inputs of ``unit`` rows for a model that fixes its first dim: :func:`first_occurrences`), its source
    saying how many went; any other input set (a shard source) as it is."""
    arrays = getattr(inputs, "arrays", None)
    if not isinstance(inputs, InputSet) or not arrays or len(inputs) < 2 * max(1, unit):
        return inputs
    first = first_occurrences(inputs, unit)
    if len(first) == len(inputs):
        return inputs
    keep = np.array(first)
    labels = None if inputs.labels is None else inputs.labels[keep]
    dropped = (len(inputs) - len(keep)) // max(1, unit)
    what = "samples" if unit <= 1 else f"inputs (of {unit} rows: the model fixes its first dim)"
    return InputSet({name: array[keep] for name, array in arrays.items()}, labels,
                    f"{inputs.source}; {dropped} {'repeat' if dropped == 1 else 'repeats'} of other {what} left out")


def _fmt_tuple(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess("imagenet", resize_short=256, crop=(224, 224), scale=1 / 255,
                           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "efficientnet-lite": Preprocess("efficientnet-lite", resize_short=256, crop=(224, 224), scale=1.0,
                                    mean=(127.0,), std=(128.0,)),
    # torchvision's MNIST normalization, which the bundled demo model and most MNIST models expect
    "mnist": Preprocess("mnist", size=(28, 28), scale=1 / 255, mean=(0.1307,), std=(0.3081,), channels=1),
    # The identity: pixels 0..255 as floats at their own size; custom flags fill in the rest.
    "custom": Preprocess("custom"),
}


def get_preprocess(name: Union[str, Preprocess]) -> Preprocess:
    """The preset called ``name`` (a :class:`Preprocess` is returned as is)."""
    if isinstance(name, Preprocess):
        return name
    if name not in PRESETS:
        raise InputDataError(f"unknown preprocessing '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


MAX_RESIZED_PIXELS = 64 << 20  # an image resized to more pixels than this is refused (extreme aspect ratio)


def preprocess_image(path: PathLike, preprocess: Preprocess, modes: Optional[Counter] = None) -> np.ndarray:
    """One image file as a float32 array, ``CHW`` or ``HWC`` as ``preprocess.layout`` says; ``modes`` counts the
    Pillow modes converted on the way (an RGBA or grayscale image read as RGB ...)."""
    from PIL import Image  # optional dependency: only image inputs need it

    try:
        with Image.open(path) as opened:
            if opened.mode.startswith("I;16") or opened.mode in ("I", "F"):  # 16-bit or wider: PIL's convert clips
                values = np.asarray(opened, dtype=np.float64)
                top = 65535.0 if opened.mode.startswith("I;16") or values.max() > 255 else 255.0
                opened = Image.fromarray(np.clip(np.round(values * 255.0 / top), 0, 255).astype(np.uint8), "L")
            wanted = "RGB" if preprocess.channels == 3 else "L"
            if modes is not None and opened.mode != wanted:
                modes[opened.mode] += 1
            image = opened.convert(wanted)
    except Image.DecompressionBombError:
        raise InputDataError(f"image '{path}' has more pixels than Pillow reads (its guard against decompression "
                             f"bombs: {2 * Image.MAX_IMAGE_PIXELS} pixels); shrink it, or remove it") from None
    except Exception as exc:
        problem = unreadable(path, f"the image '{path}'") if isinstance(exc, OSError) else None
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__  # "image file is truncated"
        raise InputDataError(problem or f"cannot read image '{path}' ({detail}); remove or replace the file") from None
    width, height = image.size
    if preprocess.size is not None:
        height, width = preprocess.size
        image = image.resize((width, height), Image.BILINEAR)
    elif preprocess.resize_short is not None:
        short = preprocess.resize_short
        if width <= height:
            width, height = short, max(1, int(round(height * short / width)))
        else:
            width, height = max(1, int(round(width * short / height))), short
        if width * height > MAX_RESIZED_PIXELS:  # a 1x6000 strip resized to short side 256 is 1.5 G pixels
            raise InputDataError(f"image '{path}' ({image.size[1]}x{image.size[0]}) would be {height}x{width} after "
                                 f"resizing its short side to {short}; remove it, or give an exact size (--resize HxW)")
        image = image.resize((width, height), Image.BILINEAR)
    if preprocess.crop is not None:
        crop_h, crop_w = preprocess.crop
        if crop_h > height or crop_w > width:
            raise InputDataError(
                f"image '{path}' is {height}x{width} after resizing, smaller than the {crop_h}x{crop_w} crop; "
                "resize it larger (--resize) or crop less (--crop)"
            )
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        image = image.crop((left, top, left + crop_w, top + crop_h))
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    values = pixels * np.float32(preprocess.scale)
    values = (values - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
    if preprocess.layout == "NCHW":
        values = values.transpose(2, 0, 1)
    return np.ascontiguousarray(values, dtype=np.float32)


_LABEL_RE = re.compile(r"(?:^|[_-])(\d+)$")


def label_from_filename(path: PathLike) -> Optional[int]:
    """The class id in an image file name, or None (used only with ``--labels-from-filenames``).

    Rule: the integer at the very end of the file name before the extension, preceded by ``_``,
    ``-`` or nothing: ``cat_281.jpg`` → 281, ``imagenet_03_281.png`` → 281, ``7.png`` → 7;
    ``img5.jpg`` and ``cat.jpg`` have none.
    """
    match = _LABEL_RE.search(Path(path).stem)
    return int(match.group(1)) if match else None


def image_files(folder: PathLike) -> list[Path]:
    """The image files of ``folder`` (not recursive), sorted by name; hidden files (``.name``, such as
    the ``._photo.jpg`` metadata files macOS writes beside copies) are not images."""
    root = Path(folder)
    if not root.exists():
        raise InputDataError(f"image folder '{root}' does not exist; check the path")
    if not root.is_dir():
        raise InputDataError(f"'{root}' is not a folder; give a folder of .jpg/.png/.bmp images")
    files = sorted(p for p in root.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        entries = list(root.iterdir())
        nested = any(p.is_dir() and not p.name.startswith(".") for p in entries)
        unread, formats = _unread_images(entries)
        broken = _broken_image_names(entries)
        hidden = [p for p in entries if p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
        raise InputDataError(f"folder '{root}' holds no .jpg/.jpeg/.png/.bmp files"
                             + (f" but {_count(len(hidden), 'hidden one')} ('{hidden[0].name}'; names starting "
                                "with '.' are skipped, as macOS's '._' metadata files must be)" if hidden
                                else "")
                             + "; "
                             + (f"its {_count(len(broken), 'entry', 'entries')} named like images "
                                f"('{broken[0].name}') "
                                + ("is a link to no file, or a folder" if len(broken) == 1 else
                                   "are links to no file, or folders") + ": link the images themselves" if broken else
                                f"its {unread} images are {formats}, which are not read: convert them to PNG"
                                if unread else "rename them without the leading '.'" if hidden else "put images in it")
                             + (" (its subfolders are not read: put the images of every class in one folder, and "
                                "give their classes with --labels FILE)" if nested else ""))
    return files


def _broken_image_names(entries: Sequence[Path]) -> list[Path]:
    """The visible ``entries`` of a folder named like images that are no file: a link to nothing (or to
    itself), a folder, a link to a folder."""
    return sorted(p for p in entries
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_file())


def _count(number: int, one: str, many: str = "") -> str:
    """``1 entry``, ``3 entries``."""
    return f"{number} {one if number == 1 else (many or one + 's')}"


def _left_out_entries(root: Path) -> str:
    """``; … left out`` for what an image folder holds beside the images read (other formats, entries
    named like images that are no file, subfolders), or ``""``."""
    entries = list(root.iterdir())  # (listed once: a folder of many images)
    others, formats = _unread_images(entries)
    broken = _broken_image_names(entries)
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".") and p not in broken]
    parts = [f"{others} images in other formats left out ({formats}: only {'/'.join(IMAGE_SUFFIXES)} are read)"
             if others else "",
             f"{_count(len(broken), 'entry', 'entries')} named like images left out: links to no file, or folders "
             f"(first: '{broken[0].name}')" if broken else "",
             f"{_count(len(folders), 'subfolder')} not read (first: '{folders[0].name}')" if folders else ""]
    return "".join(f"; {part}" for part in parts if part)


# --------------------------------------------------------------------------------------------------
# Labels


@dataclass(frozen=True)
class LabelsFile:
    """A parsed labels file: either ``ids`` in sample order or ``by_name`` (file name → class id)."""

    path: Path
    ids: Optional[np.ndarray] = None
    by_name: Optional[dict[str, int]] = None

    def for_samples(self, count: int) -> np.ndarray:
        """The ids of a set of ``count`` samples (plain-id files only)."""
        if self.ids is None:
            raise InputDataError(
                f"labels file '{self.path}' has name,label lines, which name image files; with --inputs write one "
                "integer class id per line, in sample order"
            )
        if len(self.ids) != count:
            raise InputDataError(
                f"labels file '{self.path}' has {len(self.ids)} labels for {count} samples; give exactly one per sample"
            )
        return self.ids

    def for_files(self, files: Sequence[Path], all_files: Sequence[Path]) -> np.ndarray:
        """The ids of the image ``files`` (the first of ``all_files``, the folder's images in sorted order)."""
        if self.ids is not None:
            if len(self.ids) != len(all_files):
                raise InputDataError(
                    f"labels file '{self.path}' has {len(self.ids)} labels for {len(all_files)} images; give one per "
                    "image, in sorted file-name order"
                )
            position = {path: index for index, path in enumerate(all_files)}
            return self.ids[[position[path] for path in files]]
        assert self.by_name is not None
        known = {_same_text(p.name) for p in all_files}
        if len(known) < len(all_files):  # two files whose names differ only in their Unicode form
            forms = [_same_text(p.name) for p in all_files]
            twin = next(name for name in forms if forms.count(name) > 1)
            raise InputDataError(f"two images of the folder are named '{twin}' in two Unicode forms (composed and "
                                 "decomposed), which a labels file cannot tell apart; rename one")
        stray = next((name for name in self.by_name if name not in known), None)
        if stray is not None:
            raise InputDataError(
                f"labels file '{self.path}' names '{stray}', which is not an image of the folder; list only its "
                "images, by file name alone (no folder part)"
            )
        missing = next((p.name for p in files if _same_text(p.name) not in self.by_name), None)
        if missing is not None:
            raise InputDataError(f"image '{missing}' has no label in '{self.path}'; give every image a name,label line")
        return np.asarray([self.by_name[_same_text(p.name)] for p in files], dtype=np.int64)


def _same_text(name: str) -> str:
    """``name`` in Unicode's composed form (NFC): macOS writes file names decomposed ("e" + "\u0301"), where a
    labels file typed elsewhere holds "\u00e9"; both look the same and name the same image."""
    return unicodedata.normalize("NFC", name)


def read_labels_file(path: PathLike) -> LabelsFile:
    """Parse a labels file: one integer class id per line, or ``name,label`` lines (not both).

    Empty lines and lines starting with ``#`` are skipped; class ids must be integers ≥ 0; in
    ``name,label`` lines the label follows the last comma and each name appears once. Raises
    :class:`InputDataError` (one line naming the file and line) on anything else.
    """
    file = Path(path)
    if not file.exists():
        raise InputDataError(f"labels file '{file}' does not exist; check the path")
    if not file.is_file():
        raise InputDataError(f"labels file '{file}' is not a file; give a text file ({LABELS_FILE_HELP})")
    problem = unreadable(file, f"the labels file '{file}'")
    if problem:
        raise InputDataError(problem)
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark (Notepad, Excel) is not part of a label
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"cannot read labels file '{file}' as UTF-8 text ({type(exc).__name__}); "
                             f"write {LABELS_FILE_HELP}") from None
    ids: list[int] = []
    by_name: dict[str, int] = {}
    first_kind: Optional[tuple[str, int]] = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, comma, value = line.rpartition(",")
        kind = "name,label" if comma else "plain"
        if first_kind is None:
            first_kind = (kind, number)
        elif kind != first_kind[0]:
            raise InputDataError(
                f"labels file '{file}' mixes plain ids and name,label lines (line {first_kind[1]} is {first_kind[0]}, "
                f"line {number} is {kind}); use one format"
            )
        value = value.strip()
        try:
            if not re.fullmatch(r"-?[0-9]+", value):  # (int() also reads "1_0" as 10 and "+1" as 1)
                raise ValueError(value)
            label = int(value)
        except ValueError:
            raise InputDataError(
                f"labels file '{file}' line {number}: '{value}' is not an integer class id; write {LABELS_FILE_HELP}"
            ) from None
        if label < 0:
            raise InputDataError(
                f"labels file '{file}' line {number}: class id {label} is negative; class ids are ≥ 0")
        if label > np.iinfo(np.int64).max:
            raise InputDataError(f"labels file '{file}' line {number}: class id {value[:30]} is beyond any class "
                                 "count (over 2^63 - 1); write the class index")
        if kind == "plain":
            ids.append(label)
            continue
        name = _same_text(name.strip())
        if not name:
            raise InputDataError(f"labels file '{file}' line {number}: no file name before the comma; write name,label")
        if name in by_name:
            raise InputDataError(f"labels file '{file}' line {number}: '{name}' is listed twice; give each image once")
        by_name[name] = label
    if first_kind is None:
        raise InputDataError(f"labels file '{file}' holds no labels; write {LABELS_FILE_HELP}")
    if first_kind[0] == "plain":
        return LabelsFile(file, ids=np.asarray(ids, dtype=np.int64))
    return LabelsFile(file, by_name=by_name)


def labels_from_filenames(files: Sequence[Path]) -> np.ndarray:
    """The class id of every file by :func:`label_from_filename`; an error names the first file without one."""
    found = [label_from_filename(p) for p in files]
    missing = next((p.name for p, label in zip(files, found) if label is None), None)
    if missing is not None:
        raise InputDataError(
            f"--labels-from-filenames: '{missing}' has no class id at the end of its name (like cat_281.jpg); "
            "rename the files or give --labels FILE"
        )
    huge = next((p.name for p, label in zip(files, found) if label > np.iinfo(np.int64).max), None)
    if huge is not None:
        raise InputDataError(f"--labels-from-filenames: the class id at the end of '{huge}' is too large for a class "
                             "id; rename the file or give --labels FILE")
    return np.asarray(found, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Sources


def load_inputs(model: Union[onnx.ModelProto, PathLike], *, npz: Optional[PathLike] = None,
                images: Optional[PathLike] = None,
                preprocess: Union[str, Preprocess] = "imagenet", random: Optional[int] = None,
                input_shapes: Optional[Mapping[str, Sequence[int]]] = None, seed: int = 0,
                limit: Optional[int] = None, progress: Optional[bool] = None,
                labels_file: Optional[PathLike] = None, labels_from_filenames: bool = False) -> InputSet:
    """Inputs for ``model`` from exactly one of ``npz``, ``images`` or ``random``.

    ``input_shapes`` gives dynamic dims (random inputs; the sample axis is always the first dim); every name
    in it must be a graph input, and images and ``.npz`` arrays must have the per-sample dims it gives;
    ``limit`` keeps ``limit`` samples spread evenly over the set (:func:`spread_indices`); ``progress``
    shows a bar while decoding images (default: only when stderr is a terminal). Labels: an ``.npz``'s
    ``labels`` array, or ``labels_file`` (:func:`read_labels_file`), or ``labels_from_filenames`` (images
    only); they are checked before any image is decoded. ``model``: a ModelProto or a path (only its graph
    is read). Raises :class:`InputDataError` when the data does not fit the model, :class:`ModelLoadError`
    when the model cannot be read.
    """
    from .argtypes import check_count

    if not isinstance(model, onnx.ModelProto):
        from .model_io import open_model

        model = open_model(model).model
    check_count("limit", limit, optional=True)
    check_count("random", random, optional=True)
    check_count("seed", seed, 0)
    given = [name for name, value in (("npz", npz), ("images", images), ("random", random)) if value is not None]
    if len(given) != 1:
        raise InputDataError(
            f"got {len(given)} input sources ({', '.join(given) or 'none'}); give exactly one of an .npz, "
            "an image folder or a random sample count"
        )
    if limit is not None and limit < 1:
        raise InputDataError(f"got limit={limit}; the sample limit must be ≥ 1")
    if labels_file is not None and labels_from_filenames:
        raise InputDataError("give either a labels file or --labels-from-filenames, not both")
    if labels_from_filenames and images is None:
        raise InputDataError("--labels-from-filenames reads class ids from image file names; use it with --images DIR")
    if images is None and preprocess != "imagenet" and preprocess != PRESETS["imagenet"]:  # (ignored, unsaid)
        raise InputDataError(f"preprocess={preprocess!r} applies to images only; drop it, or give images=DIR")
    if labels_file is not None and random is not None:
        raise InputDataError(
            "labels for random inputs mean nothing; give --inputs FILE.npz or --images DIR with --labels")
    parsed = read_labels_file(labels_file) if labels_file is not None else None
    specs = graph_inputs(model)
    if not specs:
        raise InputDataError("the model has no graph inputs to feed; nothing to load")
    input_shapes = check_input_shapes(model, input_shapes)  # names, types, dims (for every source)
    if npz is not None:
        result = _load_npz(specs, Path(npz), limit, parsed, defaults=initializer_inputs(model))
        check_sample_dims(result, input_shapes, f"the arrays in '{npz}' are",
                           "give inputs of that size, or another --input-shape")
    elif images is not None:
        result = _load_images(specs, images, get_preprocess(preprocess), limit, progress, parsed,
                              labels_from_filenames)
        check_sample_dims(result, input_shapes, "the images come out",
                           "--resize/--crop to that size, or another --input-shape")
    else:
        count = int(random) if limit is None else min(int(random), limit)
        result = random_inputs(model, count, input_shapes=input_shapes, seed=seed)
    log.info("loaded %d samples: %s", len(result), result.source)
    return result


def check_sample_dims(inputs: InputSet, input_shapes: Optional[Mapping[str, Sequence[int]]], what: str,
                       fix: str) -> None:
    """Raise :class:`InputDataError` when a loaded input's per-sample dims differ from its ``--input-shape``
    (which is otherwise used to plan and time at a shape the inputs do not have); a dim of length 0 in the
    data (a key/value cache's first step, which ``--input-shape`` cannot give) is no difference, and neither
    is an attention mask's (an input named ``*mask*``) dim shorter by such a past's given length (the mask spans
    past and current positions; any other input's dims must agree)."""
    given = {name: (tuple(inputs.arrays[name].shape[1:]), tuple(tuple(dims)[1:]))
             for name, dims in (input_shapes or {}).items()}
    pasts = {a for made, asked in given.values() if len(made) == len(asked)  # past lengths the data holds as 0
             for m, a in zip(made, asked) if m == 0 and a > 0}
    for name, (made, asked) in given.items():
        dims = input_shapes[name]
        spans_past = pasts if "mask" in name.lower() else set()
        if len(asked) == len(made) and all(m == a or m == 0 or a - m in spans_past for m, a in zip(made, asked)):
            continue  # (a key/value cache of past length 0 in the data, sized at 1 or more for counting and timing)
        if asked != made:
            raise InputDataError(
                f"{what} {'x'.join(map(str, made)) or 'scalar'} per sample for '{name}', but --input-shape asks for "
                f"{name}:{'x'.join(map(str, dims))}; make them agree ({fix})")


def _check_batchable(spec: InputSpec) -> None:
    if not spec.dims:
        raise InputDataError(
            f"graph input '{spec.name}' is a scalar (rank 0); inputs are stacked batch first, so only inputs of "
            f"rank ≥ 1 can be fed: export '{spec.name}' with shape [1] or [N] (or as a constant of the model) to "
            "give it data; data-free compression needs no inputs"
        )


def initializer_inputs(model: onnx.ModelProto) -> frozenset[str]:
    """Initializers the graph also lists as inputs (IR >= 4: defaults a caller may override; onnx-alds reads
    them as constants and feeds only the other inputs)."""
    listed = {value.name for value in model.graph.input}
    return frozenset(init.name for init in model.graph.initializer if init.name in listed)


def _load_npz(specs: list[InputSpec], path: Path, limit: Optional[int],
              labels_file: Optional[LabelsFile] = None, *, defaults: frozenset[str] = frozenset()) -> InputSet:
    if not path.exists():
        raise InputDataError(f"input file '{path}' does not exist; check the path")
    if is_stream(path):  # a pipe (a shell's <(...)), a device: a zip is read with seeks
        raise InputDataError(f"'{path}' is a pipe or device, not a file (an .npz is a zip archive, read with seeks); "
                             "save it to a file and give that path")
    problem = unreadable(path, f"the input file '{path}'")
    if problem:
        raise InputDataError(problem)
    key = None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {}
            for key in data.files:
                stored[key] = data[key]
    except Exception as exc:
        if key is not None and "allow_pickle" in str(exc):  # an object array: pickled Python objects
            raise InputDataError(
                f"member '{key}' of '{path}' is an array of Python objects, which onnx-alds does not unpickle (samples "
                "of different lengths stacked as objects, or strings from pandas' .values); give samples of one shape "
                "per file (pad them, or one file per length) and strings as a numpy string array: "
                "numpy.savez(path, name=array.astype(str), ...)") from None
        raise InputDataError(
            f"cannot read '{path}' as an .npz ({type(exc).__name__}); save it with numpy.savez(path, name=array, ...)"
        ) from None
    damaged = sorted(key for key, value in stored.items() if not isinstance(value, np.ndarray))
    if damaged:  # numpy hands back the raw bytes of a member that is not a valid .npy
        raise InputDataError(f"member '{damaged[0]}' of '{path}' is not a numpy array (a damaged file, or not written "
                             "by numpy); save it with numpy.savez(path, name=array, ...)")
    arrays, casts = _conformed_arrays(specs, stored, f"'{path}'", labels_key=True, defaults=defaults)
    names = [spec.name for spec in specs]
    cast_note = f"; {'; '.join(casts)}" if casts else ""
    labels = None
    if LABELS_KEY in stored and LABELS_KEY not in names:
        labels = stored[LABELS_KEY]
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise InputDataError(
                f"'{LABELS_KEY}' in '{path}' is {labels.dtype} of shape {labels.shape}; store one integer class id per sample"
            )
        labels = labels.astype(np.int64)
    count = len(next(iter(arrays.values())))
    if labels_file is not None:
        if labels is not None:
            raise InputDataError(
                f"'{path}' already holds '{LABELS_KEY}' and a labels file '{labels_file.path}' was given too; "
                "give labels in one place"
            )
        labels = labels_file.for_samples(count)
    try:
        result = InputSet(arrays, labels, f"{path} ({count} sample{'s' if count != 1 else ''}{cast_note})")
    except InputDataError as exc:  # (sample counts that disagree): named with the file
        raise InputDataError(f"'{path}': {exc}") from None
    if limit is not None and limit < len(result):
        kept = result.take(spread_indices(len(result), limit))
        result = InputSet(kept.arrays, kept.labels, f"{path} ({limit} of {len(result)} samples, evenly spaced"
                                                    f"{cast_note})")
    return result


def dim_name_clash(session, feed: Mapping[str, np.ndarray]) -> str:
    """``; …`` naming the first dim name that two graph inputs of ``session`` (ONNX Runtime's) declare and
    ``feed``'s arrays give different sizes (``input_ids [batch, seq]`` 8 long, ``attention_mask [batch, seq]``
    6 long), the likely cause of a failed run; ``""`` when there is none."""
    seen: dict[str, tuple[str, int]] = {}
    for spec in session.get_inputs():
        array = feed.get(spec.name)
        if array is None or np.ndim(array) != len(spec.shape):
            continue
        for dim, size in zip(spec.shape, np.shape(array)):
            if isinstance(dim, str) and dim:
                first = seen.setdefault(dim, (spec.name, size))
                if first[1] != size:
                    return (f"; inputs '{first[0]}' and '{spec.name}' both declare the dim '{dim}', but the arrays "
                            f"give it {first[1]} and {size}: give them equal sizes")
    return ""


def as_input_set(inputs: Any, what: str = "inputs") -> "InputSet":
    """``inputs`` as an :class:`InputSet`: itself, or the InputSet of the ``.arrays`` (and ``.labels``,
    ``.source``) of an object with the InputSet's members (checked as an InputSet's are). Raises
    :class:`InputDataError` for anything else, naming ``what``."""
    if isinstance(inputs, InputSet):
        return inputs
    arrays = getattr(inputs, "arrays", None)
    if not (isinstance(arrays, Mapping) and hasattr(inputs, "batches")):
        raise InputDataError(f"{what} is a {type(inputs).__name__}; give an onnx_alds.inputs.InputSet, e.g. "
                             "InputSet({'input': array}) or load_inputs(...)")
    return InputSet(dict(arrays), getattr(inputs, "labels", None), getattr(inputs, "source", "") or "")


def one_sample_at_a_time(session, names: Optional[Sequence[str]], feed: Mapping[str, np.ndarray], flag: str) -> str:
    """``; …`` saying to give ``flag`` 1 when ``session`` runs the first sample of ``feed`` alone although the
    whole batch failed (an op inside fixes the batch to 1, as a Reshape to [1, -1] does, while the input's
    first dim is dynamic); ``""`` otherwise. Costs one more run, on a failure only."""
    samples = {len(array) for array in feed.values() if np.ndim(array)}
    if len(samples) != 1 or samples.pop() < 2:
        return ""
    try:
        session.run(None if names is None else list(names), {name: array[:1] if np.ndim(array) else array
                                                             for name, array in feed.items()})
    except Exception:  # noqa: BLE001 - it fails on one sample too: another cause
        return ""
    return (f"; it runs on one sample at a time (an op inside fixes the batch to 1 while the input's first dim is "
            f"dynamic): give {flag} 1")


def refuse_unfeedable(specs: Sequence[InputSpec]) -> None:
    """Graph inputs of a type numpy holds only through ``ml_dtypes`` (bfloat16, float8, int4, float4) cannot be
    fed to ONNX Runtime from Python. Raises :class:`InputDataError` naming the first."""
    for spec in specs:
        if spec.dtype.kind == "V":
            raise InputDataError(f"graph input '{spec.name}' is {spec.dtype.name}, which ONNX Runtime's Python API "
                                 "cannot be fed; export the model with a float32 (or float16) input and a Cast "
                                 "inside the graph")


def _conformed_arrays(specs: list[InputSpec], stored: Mapping[str, np.ndarray], source: str, *,
                      labels_key: bool = False, defaults: frozenset[str] = frozenset()
                      ) -> tuple[dict[str, np.ndarray], list[str]]:
    """``stored``'s arrays checked against the graph inputs (names, samples, rank, fixed dims, dtype, finite
    values) and cast to the inputs' dtypes where numpy casts them safely (``same_kind``); the casts, in words.
    ``source`` names where the arrays came from in messages; ``labels_key``: a ``labels`` array may be beside
    the inputs; ``defaults``: :func:`initializer_inputs` (named as such when given). Raises
    :class:`InputDataError`."""
    refuse_unfeedable(specs)
    names = [spec.name for spec in specs]
    missing = [n for n in names if n not in stored]
    if missing:
        raise InputDataError(
            f"{source} has no array for graph input '{missing[0]}' (it has: {', '.join(sorted(stored)) or 'nothing'}); "
            f"key one array per graph input by name: {', '.join(names)}"
        )
    extra = sorted(k for k in stored if k not in names and not (labels_key and k == LABELS_KEY))
    overridden = next((k for k in extra if k in defaults), None)
    if overridden is not None:
        raise InputDataError(
            f"{source} has array '{overridden}', an initializer the graph also lists as an input (a default that "
            "callers may override); onnx-alds reads it as the constant it holds and feeds only the inputs without "
            f"one ({', '.join(names)}): drop '{overridden}' from the inputs, or re-export with the value you mean "
            "as the initializer")
    if extra:
        raise InputDataError(
            f"{source} has array '{extra[0]}', which is not a graph input; graph inputs are: {', '.join(names)}"
            + (f" (plus optional '{LABELS_KEY}')" if labels_key else "")
        )
    empty = next((name for name in names if stored[name].ndim and stored[name].shape[0] == 0), None)
    if empty is not None:
        raise InputDataError(f"array '{empty}' in {source} holds no samples (shape {stored[empty].shape}); give at "
                             "least one sample, batch first")
    arrays: dict[str, np.ndarray] = {}
    casts: list[str] = []  # said in the set's source, so reports show it
    for spec in specs:
        _check_batchable(spec)
        array = stored[spec.name]
        if array.ndim != len(spec.dims):
            raise InputDataError(
                f"array '{spec.name}' in {source} has rank {array.ndim} (shape {array.shape}), but the graph input "
                f"has rank {len(spec.dims)} ({_pretty_dims(spec.dims)}); store it batch first with the input's rank"
            )
        for axis, (got, declared) in enumerate(zip(array.shape, spec.dims)):
            if axis > 0 and isinstance(declared, int) and got != declared:
                raise InputDataError(
                    f"array '{spec.name}' in {source} has shape {array.shape}, but the model fixes dim {axis} to "
                    f"{declared} ({_pretty_dims(spec.dims)}); store arrays of the model's shape"
                )
        if spec.dtype == object and array.dtype.kind not in "USO":  # numbers would become the text "1", "2" ...
            raise InputDataError(f"array '{spec.name}' in {source} is {array.dtype}, but the graph input takes "
                                 "strings; store the strings themselves (a numpy str array)")
        if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            raise InputDataError(
                f"array '{spec.name}' in {source} is {array.dtype}, which cannot be cast to the input's {spec.dtype}; "
                f"store it as {spec.dtype}"
            )
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            bad = int(np.argmax((~np.isfinite(array.reshape(len(array), -1))).any(axis=1))) if array.ndim else 0
            raise InputDataError(f"array '{spec.name}' in {source} holds NaN or Inf values (first in sample {bad}); "
                                 "give finite inputs")
        if array.dtype != spec.dtype and np.issubdtype(array.dtype, np.integer) and array.size \
                and np.issubdtype(spec.dtype, np.integer):
            limits = np.iinfo(spec.dtype)
            if array.min() < limits.min or array.max() > limits.max:  # the cast would wrap silently
                raise InputDataError(f"array '{spec.name}' in {source} holds values outside the input's {spec.dtype} "
                                     f"range ({array.min()} to {array.max()}); give values that fit {spec.dtype}")
        if array.dtype != spec.dtype:  # (worded as CAST_NOTE reads it back)
            casts.append(f"'{spec.name}' {array.dtype} cast to {spec.dtype}"
                         + (", integer values: are they preprocessed?" if np.issubdtype(array.dtype, np.integer)
                            and np.issubdtype(spec.dtype, np.floating) else ""))
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are refused just below
            cast = np.ascontiguousarray(array.astype(spec.dtype, copy=False))
        if cast is not array and np.issubdtype(spec.dtype, np.floating) and not np.all(np.isfinite(cast)):
            raise InputDataError(f"array '{spec.name}' in {source} holds values beyond the range of the input's "
                                 f"{spec.dtype} (largest {float(np.max(np.abs(array))):g}): cast to it they become "
                                 "infinite; scale the inputs as the model expects")
        arrays[spec.name] = cast
    return arrays, casts


def calibration_as_fitted(model: onnx.ModelProto, calibration: InputSet) -> InputSet:
    """The calibration set as compress fits it: cast to the model's input types (:func:`conform_inputs`), the
    samples that repeat an earlier one left out (:func:`without_repeats`: whole inputs where the model fixes
    its first dim), which adds no information and would let ``--method damage`` probe on copies of the inputs
    it fitted to. A plan keeps this set's digest and source."""
    from .model_io import fixed_batch

    return without_repeats(conform_inputs(model, calibration, "calibration"), fixed_batch(model) or 1)


def conform_inputs(model: onnx.ModelProto, inputs: InputSet, what: str) -> InputSet:
    """``inputs`` (given to the Python API) checked against ``model``'s graph inputs as an ``.npz`` is: one
    array per input and no other, rank, the dims the model fixes, dtype (cast ``same_kind``, said in the
    set's ``source``), finite values. ``what`` names the set in messages ("calibration"). The same set is
    returned when nothing was cast. Raises :class:`InputDataError`."""
    if not (hasattr(inputs, "arrays") and hasattr(inputs, "batches")):  # an InputSet (or one like it)
        raise InputDataError(f"the {what} inputs are a {type(inputs).__name__}; give an onnx_alds.inputs.InputSet, "
                             "e.g. InputSet({'input': array}) or load_inputs(...)")
    specs = graph_inputs(model)
    arrays, casts = _conformed_arrays(specs, dict(inputs.arrays), f"the {what} InputSet",
                                      defaults=initializer_inputs(model))
    if not casts and all(arrays[name] is inputs.arrays[name] for name in arrays):
        return inputs
    source = f"{inputs.source}; {'; '.join(casts)}" if casts else inputs.source
    return InputSet(arrays, inputs.labels, source)


# a cast as _conformed_arrays words it into an input set's source
CAST_NOTE = re.compile(r"'[^']*' \w+ cast to \w+(?:, integer values: are they preprocessed\?)?")


def cast_notes(*input_sets: InputSet) -> list[str]:
    """The casts the input sets went through on the way in (an int64 or float64 array for a float32
    input), each once, as their ``source`` says them."""
    return list(dict.fromkeys(cast for inputs in input_sets for cast in CAST_NOTE.findall(inputs.source)))


def spread_indices(count: int, limit: int) -> np.ndarray:
    """``limit`` indices spread evenly over ``range(count)``, first and last included: a limited set covers
    the whole file (a set sorted by class, or an image folder whose file names start with the class, gives
    every class, where its first samples would all be one class)."""
    if limit >= count:
        return np.arange(count)
    return np.round(np.linspace(0, count - 1, limit)).astype(np.int64)


def _pretty_dims(dims: Sequence[Union[int, str, None]]) -> str:
    return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in dims)


def _load_images(specs: list[InputSpec], folder: PathLike, preprocess: Preprocess, limit: Optional[int],
                 progress: Optional[bool], labels_file: Optional[LabelsFile] = None,
                 from_filenames: bool = False) -> InputSet:
    if len(specs) != 1:
        raise InputDataError(
            f"an image folder feeds a model with one input, but this one has {len(specs)} "
            f"({', '.join(s.name for s in specs)}); use --inputs FILE.npz"
        )
    spec = specs[0]
    refuse_unfeedable(specs)
    all_files = image_files(folder)
    files = [all_files[i] for i in spread_indices(len(all_files), limit)] if limit is not None else all_files
    labels = None  # labels first: a bad name or file fails before any image is decoded
    if from_filenames:
        labels = labels_from_filenames(files)
    elif labels_file is not None:
        labels = labels_file.for_files(files, all_files)
    _check_image_spec(spec, preprocess)
    if not np.issubdtype(spec.dtype, np.floating):
        _check_integer_pixels(spec, preprocess)
    elif spec.dtype == np.float16:
        _check_float16_pixels(spec, preprocess)
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    samples = []
    converted: Counter = Counter()
    for path in tqdm(files, desc="images", unit="img", disable=not show):
        samples.append(preprocess_image(path, preprocess, converted))
    shapes = {s.shape for s in samples}
    if len(shapes) != 1:
        raise InputDataError(
            f"images in '{folder}' come out in {len(shapes)} different shapes; give a crop or exact resize "
            "(--crop / --resize HxW) so that all have one size"
        )
    stacked = np.stack(samples)
    for axis, (got, declared) in enumerate(zip(stacked.shape, spec.dims)):
        if axis > 0 and isinstance(declared, int) and got != declared:
            raise InputDataError(
                f"preprocessing {preprocess.describe()} makes {'x'.join(map(str, stacked.shape[1:]))} per image, but "
                f"input '{spec.name}' is {_pretty_dims(spec.dims)}; "
                + (_preset_hint(spec, preprocess) or "choose the matching --preprocess or --resize/--crop")
            )
    if np.issubdtype(spec.dtype, np.integer):
        stacked = np.rint(stacked)
    arrays = {spec.name: np.ascontiguousarray(stacked.astype(spec.dtype))}
    wanted = "RGB" if preprocess.channels == 3 else "grayscale"
    modes = (f"; {_count(sum(converted.values()), 'image')} converted to {wanted} (Pillow modes "
             f"{', '.join(sorted(converted))}{': alpha dropped' if any('A' in m for m in converted) else ''})"
             if converted else "")
    source = (f"{folder} ({len(files)} images{_left_out_entries(Path(folder))}{modes}, preprocessing "
              f"{preprocess.describe()})")
    return InputSet(arrays, labels, source)


OTHER_IMAGE_SUFFIXES = (".tif", ".tiff", ".webp", ".gif", ".jfif", ".jpe", ".ppm", ".pgm", ".pbm", ".heic", ".avif",
                        ".jp2", ".ico", ".tga")


def _unread_images(entries: Sequence[Path]) -> tuple[int, str]:
    """How many visible files among an image folder's ``entries`` are in image formats onnx-alds does not
    read, and those formats (".tif, .webp")."""
    unread = [p for p in entries
              if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in OTHER_IMAGE_SUFFIXES]
    return len(unread), ", ".join(sorted({p.suffix.lower() for p in unread}))


def _check_integer_pixels(spec: InputSpec, preprocess: Preprocess) -> None:
    """An integer image input takes the preprocessed pixels exactly: every value the preprocessing makes of
    a pixel 0..255 must be whole and inside the input's type (an int8 input of pixel − 128 takes
    ``--mean 128``); raises :class:`InputDataError` naming the fix, before any image is decoded."""
    pixels = np.arange(256, dtype=np.float64)[:, None]
    values = (pixels * preprocess.scale - np.asarray(preprocess.mean, np.float64)) / np.asarray(preprocess.std, np.float64)
    fix = ("adjust --scale, --mean and --std" if preprocess.name == "custom"
           else "use --preprocess custom with --resize/--crop as needed")
    if np.max(np.abs(values - np.rint(values))) > 1e-6:
        raise InputDataError(f"input '{spec.name}' is {spec.dtype}, but preprocessing {preprocess.describe()} makes "
                             f"fractional values; {fix} so that pixels stay whole numbers (raw 0..255: no --scale, "
                             "--mean or --std)")
    limits = np.iinfo(spec.dtype) if np.issubdtype(spec.dtype, np.integer) else None
    low, high = float(values.min()), float(values.max())
    if limits is not None and (low < limits.min or high > limits.max):
        example = f" (e.g. --mean {-limits.min} for pixel − {-limits.min})" if limits.min < 0 else ""
        raise InputDataError(f"input '{spec.name}' is {spec.dtype} ({limits.min}..{limits.max}), but preprocessing "
                             f"{preprocess.describe()} makes pixels {low:g}..{high:g}, which would wrap around; "
                             f"{fix}{example}")


def _check_float16_pixels(spec: InputSpec, preprocess: Preprocess) -> None:
    """A float16 image input holds values up to 65504: preprocessing that makes larger ones from pixels
    0..255 (a ``--scale`` of 1000) would feed Inf; raises :class:`InputDataError` naming the flags, before
    any image is decoded."""
    pixels = np.arange(256, dtype=np.float64)[:, None]
    values = (pixels * preprocess.scale - np.asarray(preprocess.mean, np.float64)) / np.asarray(preprocess.std, np.float64)
    largest = float(np.abs(values).max())
    if largest > float(np.finfo(np.float16).max):
        raise InputDataError(f"input '{spec.name}' is float16 (values up to 65504), but preprocessing "
                             f"{preprocess.describe()} makes pixels up to {largest:g} in magnitude, which would be "
                             "Inf; adjust --scale, --mean and --std")


def _check_image_spec(spec: InputSpec, preprocess: Preprocess) -> None:
    if len(spec.dims) != 4:
        raise InputDataError(
            f"input '{spec.name}' has rank {len(spec.dims)} ({_pretty_dims(spec.dims)}), not an image batch of rank 4; "
            "use --inputs FILE.npz"
        )
    channel_axis = 1 if preprocess.layout == "NCHW" else 3
    declared = spec.dims[channel_axis]
    if isinstance(declared, int) and declared != preprocess.channels:
        raise InputDataError(
            f"input '{spec.name}' is {_pretty_dims(spec.dims)} but preprocessing '{preprocess.name}' makes "
            f"{preprocess.channels}-channel {preprocess.layout} images; {_channel_hint(spec, preprocess)}"
        )


def _fitting_presets(spec: InputSpec) -> Optional[str]:
    """``--preprocess NAME`` for the presets (:data:`PRESETS`) whose images have exactly the input's channels
    and size (``mnist`` for a 1x28x28 input; ``imagenet or efficientnet-lite`` for 3x224x224: the shape
    alone does not tell their normalizations apart), or None: named first, so that one hint fixes every
    mismatch."""
    fitting = []
    for name, preset in PRESETS.items():
        size = preset.crop or preset.size
        if size is None or len(spec.dims) != 4:
            continue
        made = (preset.channels, *size) if preset.layout == "NCHW" else (*size, preset.channels)
        if tuple(spec.dims[1:]) == made:
            fitting.append(name)
    if not fitting:
        return None
    return " or ".join(fitting) + (" (the one the model was trained with)" if len(fitting) > 1 else "")


def _preset_hint(spec: InputSpec, preprocess: Preprocess) -> Optional[str]:
    """``use --preprocess NAME, whose images fit it`` for the presets that fit ``spec`` whole; where the preset
    in use is one of them, the flags given that change it (``--layout NHWC``, ``--grayscale``, ``--crop``,
    ``--resize``) are what to drop; None when no preset fits."""
    fitting = _fitting_presets(spec)
    if fitting is None:
        return None
    base = preprocess.name.split("+")[0]  # ("imagenet+custom": the preset with flags that change it)
    preset = PRESETS.get(base)
    if preset is None or base == "custom" or base not in fitting.split(" (")[0].split(" or "):
        return f"use --preprocess {fitting}, whose images fit it"
    changed = [flag for flag, differs in (
        (f"--layout {preprocess.layout}", preprocess.layout != preset.layout),
        ("--grayscale", preprocess.channels != preset.channels),
        ("--resize", (preprocess.size, preprocess.resize_short) != (preset.size, preset.resize_short)),
        ("--crop", preprocess.crop != preset.crop)) if differs]
    return (f"--preprocess {base} fits this input as it is: drop " + (" and ".join(changed) or
            "the flags that change it"))


def _channel_hint(spec: InputSpec, preprocess: Preprocess) -> str:
    """What makes images fit an input whose channel count the preprocessing misses: a preset that fits the
    input whole, else the layout whose channel axis holds 1 or 3 channels, with ``--grayscale`` or without
    it, else an .npz."""
    hint = _preset_hint(spec, preprocess)
    if hint is not None:
        return hint
    for layout, axis in (("NCHW", 1), ("NHWC", 3)):
        channels = spec.dims[axis]
        if channels not in (1, 3):
            continue
        changes = [] if layout == preprocess.layout else [f"add --layout {layout}"]
        if channels != preprocess.channels:
            changes.append("add --grayscale" if channels == 1 else "use an RGB preprocessing (no --grayscale, not mnist)")
        return " and ".join(changes) if changes else "check --layout"
    return "images make 1 or 3 channels: feed this input from an .npz (--inputs / --calibration FILE.npz)"


RANDOM_INPUT_LIMIT = 2**31  # bytes: random inputs larger than this are refused, not allocated


DOMINANT_SHARE = 0.5  # one sample holding more of an input's sum of squares than this is warned of,
DOMINANT_MIN_SAMPLES = 16  # among at least this many (4 clips at ordinary loudness differences trip it)


def dominant_sample_warning(inputs: InputSet, what: str = "calibration") -> Optional[str]:
    """A warning when one sample holds more than :data:`DOMINANT_SHARE` of a float input's sum of squares over
    all samples (with at least :data:`DOMINANT_MIN_SAMPLES`): the data-aware factors are fitted to the inputs'
    second moments, which that one sample then decides (an outlier, a sample preprocessed otherwise, a stray
    unit); else None."""
    for name, array in inputs.arrays.items():
        values = np.asarray(array)
        if values.dtype.kind != "f" or len(values) < DOMINANT_MIN_SAMPLES or not values.size:
            continue
        rows = values.reshape(len(values), -1)
        energy = np.square(rows, dtype=np.float64).sum(axis=1)
        total = float(energy.sum())
        if not np.isfinite(total) or total <= 0:
            continue
        worst = int(np.argmax(energy))
        share = float(energy[worst]) / total
        if share > DOMINANT_SHARE:
            peak = float(np.max(np.abs(values[worst])))
            typical = float(np.median(np.max(np.abs(rows), axis=1)))
            return (f"{what} sample {worst} of '{name}' holds {share:.0%} of that input's sum of squares over "
                    f"{len(values)} samples (its largest value {peak:.4g}; a typical sample's {typical:.4g}): the "
                    "data-aware factors are fitted to the inputs' second moments, which that one sample decides; "
                    "if it is an outlier (other preprocessing, a stray value) remove it, else give more samples "
                    "like it")
    return None


def random_inputs(model: onnx.ModelProto, count: int, *,
                  input_shapes: Optional[Mapping[str, Sequence[int]]] = None, seed: int = 0,
                  batch_dim: bool = True) -> InputSet:
    """``count`` random samples for every graph input, honouring dtypes and shapes.

    Floats are standard normal; integers are uniform over the rows of the constant table they index
    through Gather (token ids over the whole vocabulary), else in ``[0, 100)``, except inputs whose
    name contains ``mask`` (all ones) or ``token_type``/``segment`` (all zeros); booleans are True for
    masks, else random. Dynamic dims other than the first come from ``input_shapes`` (else
    :class:`UnsupportedModelError` asks for ``--input-shape``); the first dim is the sample axis and
    becomes ``count`` (a model that fixes it to ``k`` gets ``count`` rounded down to whole batches of
    ``k`` — an error when below ``k``). With ``batch_dim=False`` the shapes are used as given.
    """
    if count < 1:
        raise InputDataError(f"got {count} random samples; ask for at least 1")
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**32):
        raise InputDataError(f"seed {seed!r} is out of range; give an integer in [0, 2**32), e.g. 0")
    specs = graph_inputs(model)
    shapes, _ = resolve_input_shapes(model, input_shapes, batch_default=1)
    bounds = index_bounds(model, shapes)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    asked, fixed = count, {spec.dims[0] for spec in specs if batch_dim and spec.dims and isinstance(spec.dims[0], int)
                           and spec.dims[0] > 1}
    if len(fixed) > 1:  # every sample holds one row of each input: first dims of 5 and 2 share no sample axis
        firsts = ", ".join(f"'{spec.name}' {spec.dims[0]}" for spec in specs if spec.dims and spec.dims[0] in fixed)
        raise InputDataError(f"the inputs fix different first dims ({firsts}), so they share no batch (sample) axis "
                             "that samples could be stacked on, so none can be drawn or batched for it: compress it "
                             "data-free (without calibration); validate and distill cannot run on it")
    if len(fixed) == 1:  # whole batches of the fixed size, as a set's remainder is dropped when it is read
        declared = fixed.pop()
        if count < declared:
            raise InputDataError(f"input '{next(s.name for s in specs if s.dims and s.dims[0] == declared)}' fixes "
                                 f"the batch to {declared}; ask for at least {declared} samples")
        count -= count % declared
    for spec in specs:
        shape = list(shapes[spec.name])
        per_sample = int(np.prod(shape[1:] if batch_dim else shape, dtype=np.float64)) * 8  # drawn as float64
        if per_sample * (count if batch_dim else 1) > RANDOM_INPUT_LIMIT:
            raise InputDataError(
                f"random inputs for '{spec.name}' ({'x'.join(map(str, shape[1:] if batch_dim else shape))} per sample, "
                f"{count} samples) would take {per_sample * count / 2**30:.1f} GiB; give real inputs, fewer samples "
                "or a smaller --input-shape")
        if batch_dim:
            _check_batchable(spec)
            declared = spec.dims[0]
            if isinstance(declared, int) and declared > 1 and count % declared:
                raise InputDataError(
                    f"input '{spec.name}' fixes the batch to {declared}; ask for a multiple of {declared} samples"
                )
            shape[0] = count
        arrays[spec.name] = random_array(spec.name, spec.dtype, tuple(shape), rng, high=bounds.get(spec.name))
    rounded = f", {asked} asked, rounded down to whole batches of the model's fixed batch" if count != asked else ""
    return InputSet(arrays, None, f"random ({count} sample{'s' if count != 1 else ''}{rounded}; not real data)")


def random_feeds(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    """One random array per graph input at ``shapes`` (name → full shape), by the rules of
    :func:`random_array`, ids kept inside the tables they index (:func:`index_bounds`)."""
    bounds = index_bounds(model, shapes)
    return {spec.name: random_array(spec.name, spec.dtype, tuple(shapes[spec.name]), rng, high=bounds.get(spec.name))
            for spec in graph_inputs(model)}


_INDEX_PASS_OPS = ("Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Slice", "Split", "Transpose",
                   "Expand", "Tile")  # ops whose outputs hold some of their first input's values


def index_bounds(model: onnx.ModelProto, input_shapes: Optional[Mapping[str, Sequence[int]]] = None
                 ) -> dict[str, int]:
    """Integer graph inputs used as indices into a constant table, directly or through ops that keep their
    values (Cast, Reshape, Slice, Split, a Gather that picks some of them ...) or add a constant offset
    (one table for several id fields): a Gather's table (an embedding lookup), a RotaryEmbedding's position ids
    (rows of its cos cache), the ids of ONNX Runtime's EmbedLayerNormalization; the table's size along the
    indexed axis less the offset, so random ids stay in it. Also an LSTM/GRU/RNN's ``sequence_lens``: the
    sequence length + 1 where the model or ``input_shapes`` (name → full dims) fix it (lengths in [0, T])."""
    from .layers import constant_node_value, iter_graphs

    lengths = _sequence_lengths(model, input_shapes or {})
    inlined = _with_functions_inlined(model)
    nodes = [node for _, graph in iter_graphs(inlined.graph) for node in graph.node]
    constants = {t.name: t for _, graph in iter_graphs(model.graph) for t in graph.initializer}
    constants.update({n.output[0]: value for n in nodes
                      if n.op_type == "Constant" and (value := constant_node_value(n)) is not None})
    tables = {name: tuple(tensor.dims) for name, tensor in constants.items()}
    users: dict[str, list[onnx.NodeProto]] = {}  # (a subgraph's node reads an outer tensor by its name)
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for node in nodes:  # a table behind Cast/Identity (a float16 table cast up) keeps its dims
        if node.op_type in ("Cast", "Identity") and node.input and node.input[0] in tables:
            tables.setdefault(node.output[0], tables[node.input[0]])
    bounds: dict[str, int] = {}
    inferred: Optional[dict[str, tuple]] = None  # tables computed at run time (DequantizeLinear, Concat ...)

    def table_dims(name: str) -> Optional[tuple]:
        """A table's dims: a constant's, else shape inference's (run once, on a weightless copy)."""
        nonlocal inferred
        if name in tables:
            return tables[name]
        if inferred is None:
            inferred = _inferred_dims(inlined, input_shapes or {})
        return inferred.get(name)

    def bound(name: str, limit: int) -> None:
        if limit > 0:
            bounds[name] = min(bounds.get(name, limit), int(limit))

    for spec in model.graph.input:
        pending, seen = [(spec.name, 0)], set()
        while pending:
            tensor, offset = pending.pop()
            if (tensor, offset) in seen:
                continue
            seen.add((tensor, offset))
            if tensor in lengths:
                bound(spec.name, lengths[tensor] + 1 - offset)
            for node in users.get(tensor, []):
                pairs = _INDEXED_TABLES.get((node.domain or "", node.op_type), ())
                for index_at, table_at in pairs:
                    if len(node.input) > max(index_at, table_at) and node.input[index_at] == tensor \
                            and (dims := table_dims(node.input[table_at])) is not None:
                        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) \
                            if node.op_type == "Gather" else 0
                        if dims and -len(dims) <= axis < len(dims) and dims[axis] > 0:
                            bound(spec.name, int(dims[axis]) - offset)
                if node.domain not in ("", "ai.onnx"):
                    continue
                if (node.op_type in _INDEX_PASS_OPS + ("Gather",) and node.input[0] == tensor) \
                        or node.op_type == "Concat":  # (a Gather's data: it picks some of the ids)
                    pending.extend((out, offset) for out in node.output if out)
                elif node.op_type == "Add" and len(node.input) == 2:  # ids + a constant offset (fields, one table)
                    added = _integer_values(constants.get(node.input[1] if node.input[0] == tensor else node.input[0]))
                    if added is not None and added.size:
                        pending.append((node.output[0], offset + max(int(added.max()), 0)))
    return bounds


def _inferred_dims(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple]:
    """Static dims of the tensors shape inference can size (onnx's, on a weightless copy with the fixed
    input dims given); empty when it cannot run."""
    from .shapes import static_copy

    fixed = {name: tuple(int(d) for d in dims) for name, dims in input_shapes.items()
             if all(isinstance(d, (int, np.integer)) for d in dims)}
    try:
        inferred = onnx.shape_inference.infer_shapes(static_copy(model, fixed, stub_weights=True))
    except Exception:  # noqa: BLE001 - a model shape inference cannot take: no inferred table
        return {}
    dims = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        shape = value.type.tensor_type.shape
        if value.type.HasField("tensor_type") and shape.dim and all(d.HasField("dim_value") for d in shape.dim):
            dims[value.name] = tuple(int(d.dim_value) for d in shape.dim)
    return dims


def _with_functions_inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """For :func:`index_bounds`: the model's nodes with its model-local functions inlined (onnx's inliner), so
    ids that reach an embedding table inside a function (an exporter's module functions) are followed too.
    Inlined on a weightless copy (:func:`onnx_alds.shapes.static_copy`: the weights keep their dims only);
    the model itself when it has no functions or the inliner refuses it (ids then followed in the main graph)."""
    if not model.functions:
        return model
    from onnx import inliner

    from .shapes import static_copy

    try:
        return inliner.inline_local_functions(static_copy(model, {}, stub_weights=True), convert_version=False)
    except Exception:  # noqa: BLE001 - a model the inliner cannot take: its main graph, as before
        return model


def _integer_values(tensor: Optional[onnx.TensorProto]) -> Optional[np.ndarray]:
    """The values of an integer constant held in the model (not a light model's stub), else None."""
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type in (
            onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return None
    if not np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type), np.integer):
        return None
    return numpy_helper.to_array(tensor)


def _sequence_lengths(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """``sequence_lens`` inputs of the main graph's LSTM/GRU/RNN nodes whose sequence length is fixed (by the
    model or ``input_shapes``) → that length (shape inference on a weightless copy; only run when such a node
    reads lengths)."""
    recurrent = [node for node in model.graph.node if node.op_type in ("LSTM", "GRU", "RNN")
                 and len(node.input) > 4 and node.input[4]]
    if not recurrent:
        return {}
    from .shapes import static_copy

    try:
        fixed = {name: tuple(int(d) for d in dims) for name, dims in input_shapes.items()
                 if all(isinstance(d, (int, np.integer)) for d in dims)}
        inferred = onnx.shape_inference.infer_shapes(static_copy(model, fixed, stub_weights=True))
    except Exception:  # (a model shape inference cannot take: no bound, as before)
        return {}
    known = {value.name: value for value in list(inferred.graph.value_info) + list(inferred.graph.input)}
    lengths = {}
    for node in recurrent:
        value = known.get(node.input[0])
        dims = value.type.tensor_type.shape.dim if value is not None else ()
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        if len(dims) == 3 and dims[1 if layout else 0].HasField("dim_value"):
            lengths[node.input[4]] = int(dims[1 if layout else 0].dim_value)
    return lengths


# (domain, op) -> (index input, table input) pairs: the index input's values are rows of the table
_INDEXED_TABLES = {
    ("", "Gather"): ((1, 0),),
    ("", "RotaryEmbedding"): ((3, 1),),  # position_ids into cos_cache (opset 23)
    ("com.microsoft", "RotaryEmbedding"): ((1, 2),),  # position_ids into cos_cache
    ("com.microsoft", "EmbedLayerNormalization"): ((0, 2), (1, 4), (8, 3)),  # input, segment, position ids
}


def random_array(name: str, dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator, *,
                 high: Optional[int] = None) -> np.ndarray:
    """One random array for an input called ``name`` (rules in :func:`random_inputs`); ``high``: integer
    values stay below it (the rows of the embedding table the input indexes)."""
    lowered = name.lower()
    dtype = np.dtype(dtype)
    drawn = float(np.prod(shape, dtype=np.float64)) * 8  # drawn as 64-bit values
    if drawn > RANDOM_INPUT_LIMIT:
        raise InputDataError(f"random inputs for '{name}' of shape {'x'.join(map(str, shape))} would take "
                             f"{drawn / 2**30:.1f} GiB; ask for a smaller batch (--batch, --bench-batch), fewer samples or "
                             "a smaller --input-shape")
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        if "mask" in lowered:
            return np.ones(shape, dtype=bool)
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        if "mask" in lowered:
            return np.ones(shape, dtype=dtype)
        if "token_type" in lowered or "segment" in lowered:
            return np.zeros(shape, dtype=dtype)
        # over the whole table where the graph gives it (a vocabulary's first 100 ids are its special tokens)
        return rng.integers(0, high or RANDOM_INT_HIGH, size=shape).astype(dtype)
    if dtype.kind == "V":  # (bfloat16, float8 ...: no array of it can be fed either)
        refuse_unfeedable([InputSpec(name, dtype, shape)])
    reason = f"cannot make random data of type {dtype} for input '{name}'"
    raise RandomInputsError(f"{reason}; give real inputs in an .npz (--inputs FILE.npz)", reason)


# --------------------------------------------------------------------------------------------------
# Command-line helpers


def _source_flags(prefix: str) -> tuple[str, str, str]:
    """The (npz, images, random) flags for a prefix: ``--{prefix}inputs``, ``--{prefix}images``,
    ``--{prefix}random``, except that ``calibration-`` names its npz flag ``--calibration`` (as the
    compress command documents it)."""
    npz_flag = "--calibration" if prefix == "calibration-" else f"--{prefix}inputs"
    return npz_flag, f"--{prefix}images", f"--{prefix}random"


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _labels_flags(prefix: str) -> tuple[str, str]:
    """The (labels file, labels from file names) flags for a prefix: ``--{prefix}labels``,
    ``--{prefix}labels-from-filenames``."""
    return f"--{prefix}labels", f"--{prefix}labels-from-filenames"


def add_input_arguments(parser: argparse.ArgumentParser, prefix: str = "", *, preprocess: bool = True,
                        input_shape: bool = True, required: bool = False, labels: bool = False) -> None:
    """Add the input-source flags (mutually exclusive) and, unless told not to, the shared flags.

    ``prefix=""`` adds ``--inputs FILE.npz | --images DIR | --random N``; ``prefix="calibration-"``
    adds ``--calibration FILE.npz | --calibration-images DIR | --calibration-random N``; any other
    prefix P adds ``--Pinputs | --Pimages | --Prandom``. ``labels=True`` also adds
    ``--Plabels FILE | --Plabels-from-filenames`` (for commands that use labels). The shared
    flags (``--preprocess`` and the custom preprocessing flags, ``--input-shape``) are not prefixed:
    when a parser takes two input sets, pass ``preprocess=False``/``input_shape=False`` the second time
    (and wherever the parser already has ``--input-shape``).
    """
    npz_flag, images_flag, random_flag = _source_flags(prefix)
    what = prefix.rstrip("-") or "input"
    group = parser.add_argument_group(f"{what} data")
    sources = group.add_mutually_exclusive_group(required=required)
    sources.add_argument(npz_flag, dest=_dest(npz_flag), metavar="FILE.npz",
                         help="one array per graph input keyed by name, batch first (optional 'labels')")
    sources.add_argument(images_flag, dest=_dest(images_flag), metavar="DIR",
                         help="folder of .jpg/.png/.bmp images, in sorted name order (no labels unless asked for)")
    sources.add_argument(random_flag, dest=_dest(random_flag), metavar="N", type=positive_int,
                         help="N random samples: for smoke tests only, random inputs are not data (they do not "
                              "rescue accuracy; reports say so); give real inputs for calibration and validation")
    if labels:
        file_flag, names_flag = _labels_flags(prefix)
        label_sources = group.add_mutually_exclusive_group()
        label_sources.add_argument(file_flag, dest=_dest(file_flag), metavar="FILE", default=None,
                                   help=f"class labels: {LABELS_FILE_HELP} (file names of the image folder)")
        label_sources.add_argument(names_flag, dest=_dest(names_flag), action="store_true",
                                   help="class labels from image file names: the integer at the end of the name, "
                                        "after _, - or nothing (cat_281.jpg -> 281, 7.png -> 7); every file must "
                                        "have one")
    if preprocess:
        add_preprocess_arguments(parser)
    if input_shape:
        group.add_argument("--input-shape", action="append", metavar="NAME:DIMS", default=None,
                           help="dims of a dynamic input, e.g. input_ids:1x128 (repeatable)")


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preprocess NAME`` and the flags that override its fields (``--resize`` ... ``--grayscale``)."""
    group = parser.add_argument_group("image preprocessing")
    group.add_argument("--preprocess", default="imagenet", choices=sorted(PRESETS),
                       help="named preprocessing for images (default: imagenet); 'custom' starts from raw "
                            "0..255 pixels; the flags below override fields of the chosen one")
    group.add_argument("--resize", metavar="N|HxW", default=None,
                       help="resize so the short side is N, or to exactly HxW")
    group.add_argument("--crop", metavar="N|HxW", default=None, help="center crop to NxN or HxW")
    group.add_argument("--mean", metavar="M[,M,M]", default=None, help="per-channel mean, after scaling")
    group.add_argument("--std", metavar="S[,S,S]", default=None, help="per-channel std, after scaling")
    group.add_argument("--scale", metavar="X", default=None, help="multiply 0..255 pixels by X first (e.g. 1/255)")
    group.add_argument("--layout", choices=("NCHW", "NHWC"), default=None, help="array layout")
    group.add_argument("--grayscale", action="store_true", default=None, help="one channel (luminance)")


def _parse_hw(text: str, flag: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        raise InputDataError(f"cannot parse {flag} '{text}'; write N or HxW with positive integers, e.g. 224 or 224x224")
    return (values[0], values[-1])


def _parse_floats(text: str, flag: str) -> tuple[float, ...]:
    def number(part: str) -> float:  # "0.5", "1/255", "1/127.5"
        top, slash, bottom = part.strip().partition("/")
        value = float(Fraction(top)) / float(Fraction(bottom)) if slash else float(Fraction(top))
        if not np.isfinite(value):
            raise ValueError(part)
        return value

    try:
        return tuple(number(part) for part in text.split(","))
    except (ValueError, ZeroDivisionError):
        raise InputDataError(f"cannot parse {flag} '{text}'; write finite numbers or fractions (one, or one per "
                             "channel separated by commas), e.g. 0.5, 1/127.5 or 0.485,0.456,0.406") from None


def preprocess_from_args(args: argparse.Namespace) -> Preprocess:
    """The preset named by ``--preprocess`` with the custom flags applied on top."""
    base = get_preprocess(getattr(args, "preprocess", None) or "imagenet")
    changes: dict = {}
    resize = getattr(args, "resize", None)
    if resize is not None:
        if "x" in resize.lower():
            changes.update(size=_parse_hw(resize, "--resize"), resize_short=None)
        else:
            changes.update(resize_short=_parse_hw(resize, "--resize")[0], size=None)
    if getattr(args, "crop", None) is not None:
        changes["crop"] = _parse_hw(args.crop, "--crop")
    if getattr(args, "mean", None) is not None:
        changes["mean"] = _parse_floats(args.mean, "--mean")
    if getattr(args, "std", None) is not None:
        changes["std"] = _parse_floats(args.std, "--std")
    if getattr(args, "scale", None) is not None:
        scale = _parse_floats(args.scale, "--scale")
        if len(scale) != 1:
            raise InputDataError(f"--scale takes one number, got '{args.scale}'")
        changes["scale"] = scale[0]
    if getattr(args, "layout", None):
        changes["layout"] = args.layout
    if getattr(args, "grayscale", None):
        changes["channels"] = 1
        if "mean" not in changes and len(base.mean) == 3:
            raise InputDataError(f"--grayscale with '{base.name}' needs one --mean and --std value, not three")
    if not changes:
        return base
    return replace(base, name=base.name if base.name == "custom" else f"{base.name}+custom", **changes)


def inputs_from_args(model: onnx.ModelProto, args: argparse.Namespace, prefix: str = "", *,
                     required: bool = True, seed: Optional[int] = None,
                     limit: Optional[int] = None) -> Optional[InputSet]:
    """The :class:`InputSet` the flags added by :func:`add_input_arguments` ask for.

    Returns None when no source was given and ``required`` is False; raises :class:`InputDataError`
    when none was given and one is required.
    """
    npz_flag, images_flag, random_flag = _source_flags(prefix)
    npz = getattr(args, _dest(npz_flag), None)
    images = getattr(args, _dest(images_flag), None)
    count = getattr(args, _dest(random_flag), None)
    file_flag, names_flag = _labels_flags(prefix)
    labels_file = getattr(args, _dest(file_flag), None)
    from_names = bool(getattr(args, _dest(names_flag), False))
    if npz is None and images is None and count is None:
        if labels_file is not None or from_names:
            raise InputDataError(f"{file_flag if labels_file is not None else names_flag} labels the samples of "
                                 f"{npz_flag} or {images_flag}, and neither was given; add one")
        if required:
            raise InputDataError(f"no inputs given; pass {npz_flag} FILE.npz, {images_flag} DIR or {random_flag} N")
        return None
    shapes = parse_input_shapes(getattr(args, "input_shape", None))
    if seed is None:
        seed = getattr(args, "seed", None) or 0
    if from_names and images is None:
        raise InputDataError(f"{names_flag} reads class ids from image file names; use it with {images_flag} DIR")
    if labels_file is not None and count is not None:
        raise InputDataError(f"{file_flag} with {random_flag}: labels for random inputs mean nothing; "
                             f"give {npz_flag} FILE.npz or {images_flag} DIR")
    try:
        return load_inputs(model, npz=npz, images=images, preprocess=preprocess_from_args(args),
                           random=count, input_shapes=shapes, seed=seed, limit=limit, labels_file=labels_file,
                           labels_from_filenames=from_names)
    except InputDataError as exc:  # the messages name validate's flags: name this command's
        raise InputDataError(with_prefixed_flags(str(exc), prefix)) from None


_LABEL_HINT = re.compile(r" \(its subfolders are not read: put the images of every class in one folder, and give "
                         r"their classes with --labels FILE\)")


def with_prefixed_flags(message: str, prefix: str) -> str:
    """``message`` (written with validate's ``--inputs``, ``--labels``, ``--labels-from-filenames``) with the
    flags of ``prefix`` (:func:`add_input_arguments`: ``calibration-`` → ``--calibration``, ``validate-`` →
    ``--validate-inputs``, ``--validate-labels`` ...); calibration reads no labels, so a hint to give them
    is left out."""
    if not prefix:
        return message
    npz_flag, images_flag, random_flag = _source_flags(prefix)
    file_flag, names_flag = _labels_flags(prefix)
    if prefix == "calibration-":
        message = _LABEL_HINT.sub(" (its subfolders are not read: put the images in the folder itself)", message)
    message = re.sub(r"--inputs\b(?!-)", npz_flag, message)  # ("--inputs FILE.npz", "with --inputs write ...")
    message = re.sub(r"--images\b(?!-)", images_flag, message)
    message = re.sub(r"--random\b(?!-)", random_flag, message)
    message = re.sub(r"--labels-from-filenames\b", names_flag, message)
    return re.sub(r"--labels FILE\b", f"{file_flag} FILE", message)


__all__ = [
    "InputSet", "Preprocess", "PRESETS", "get_preprocess", "preprocess_image", "label_from_filename",
    "LabelsFile", "read_labels_file", "labels_from_filenames",
    "image_files", "load_inputs", "dim_name_clash", "conform_inputs", "random_inputs", "random_array",
    "add_input_arguments",
    "add_preprocess_arguments", "preprocess_from_args", "inputs_from_args",
]
