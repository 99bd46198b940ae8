"""User-facing errors: one hierarchy, each message a single line naming the problem and the fix."""

from __future__ import annotations

import errno
import re


_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with its control characters and line separators as escapes (``\\n``, ``\\x08``): one line."""
    return _LINE_BREAKING.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class OnnxAldsError(Exception):
    """Base class of every error the CLI prints as one ``error: ...`` line and exits 1 on. Control
    characters in the message (a tensor name with a newline in it) read as escapes (``\\n``, ``\\x08``):
    the message stays one line."""

    def __str__(self) -> str:
        return escape_controls(Exception.__str__(self))


class ModelLoadError(OnnxAldsError):
    """The model file is missing, truncated, not ONNX, or otherwise cannot be read."""


class UnsupportedModelError(OnnxAldsError):
    """The model is valid ONNX but cannot be processed (nothing to compress, unknown shapes, ...)."""


class BudgetError(OnnxAldsError):
    """The requested keep ratio is out of range or cannot be reached."""


class InputDataError(OnnxAldsError):
    """Calibration or validation inputs are missing, malformed or do not match the model."""


class UnknownOptionError(InputDataError, TypeError):
    """A keyword a function does not take (``make_plan`` and ``distill``, which pass keywords on): a
    ``TypeError``, as Python raises for the other functions' misspelled keywords, that names the valid ones."""


class RandomInputsError(InputDataError):
    """Random inputs cannot be made for the model (a string input) or do not fit it (ids that reach a small
    table through other ops): real inputs are needed. ``reason``: the problem alone, without the fix."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def named(self, where: str) -> "RandomInputsError":
        """The same error, its message prefixed with ``where`` (the model that failed)."""
        return RandomInputsError(f"{where}: {self}", self.reason)


class ProviderError(OnnxAldsError):
    """An ONNX Runtime execution provider was requested but is not available."""


class ValidationFailedError(OnnxAldsError):
    """The compressed model missed a tolerance the user stated."""


class OutputPathError(OnnxAldsError):
    """The output path is unusable (equal to the input, in a missing folder, ...)."""


class RuntimeResourceError(OnnxAldsError):
    """ONNX Runtime could not get threads or memory: the machine's state, neither the model nor a bug."""


class InternalCheckError(OnnxAldsError):
    """The tool's own output failed a check it runs before writing: a bug to report, nothing written."""


def ratio_at_least(value: float) -> str:
    """``value`` rounded *up* to 4 decimals, for "the smallest reachable ratio is …" messages: a user
    who asks for the printed figure must get it (rounded to nearest, 0.35384 printed 0.3538 was refused)."""
    import math

    if not math.isfinite(value):
        return f"{value:.4f}"
    return f"{math.ceil(value * 1e4 - 1e-9) / 1e4:.4f}"


def os_error_text(exc: OSError) -> str:
    """An operating-system failure (a full disk, no permission, a name too long) as an ``error:`` line says
    it: the cause, the file (long names shortened) and what to do."""
    name = str(exc.filename or "")
    where = f" ('{name if len(name) <= 120 else name[:60] + '…' + name[-40:]}')" if name else ""
    if exc.errno == errno.ENAMETOOLONG:  # (onnx-alds writes a temporary file of a short name beside the output)
        return f"{exc.strerror or exc}{where}; give a shorter path"
    return f"{exc.strerror or exc}{where}; fix the path or free the resource and run again"


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message (its type when empty), at most ``limit`` characters:
    what a one-line ``error:`` quotes of a library's failure."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def one_line(exc: BaseException, limit: int = 320) -> str:
    """An exception's whole message on one line (lines joined by spaces; its type when empty), at most
    ``limit`` characters: for a library whose one-line message carries on over several lines (onnx.checker's
    "... input 'x' of node: \\nname: mm OpType: MatMul\\n is not output of any previous nodes.")."""
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:limit]


_NODE_IN_MESSAGE = re.compile(r"running (\S+) node\. Name:'([^']*)'")
_SOURCE_PREFIX = re.compile(r"(?:^|(?<=: ))(?:/\S+|\S+\.(?:cc|h|cpp)):\d+ [^(]*?::~?\w+(?:<[^()]*>)?"  # file:line ns::Fn
                            r"\((?:[^()]|\([^()]*\))*\)\s*(?:const\s*)?(?:\[with [^\]]*\]\s*)?")  # (args) const


_RUNTIME_NOISE = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : |Exception during initialization: ")


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` stands for a Ctrl-C or SIGTERM: a KeyboardInterrupt raised while a C extension was
    being imported reaches Python as the ImportError it broke (numpy's, onnxruntime's), with the interrupt
    in its chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def runtime_error_text(exc: BaseException, limit: int = 240) -> str:
    """An ONNX Runtime failure in words a user can act on: the node (op and name) and the status message
    without its ``source.h:84 onnxruntime::Function(args)`` prefix (at its start or after a ``: ``), which
    alone filled the old 200 characters."""
    text = _RUNTIME_NOISE.sub("", first_line(exc, limit=4000))
    node = _NODE_IN_MESSAGE.search(text)
    message = _SOURCE_PREFIX.sub("", text.split("Status Message: ")[-1].strip())
    where = (f"node '{node.group(2)}' (run as ONNX Runtime's {node.group(1)}, fused from it): "
             if node and node.group(2) and node.group(1).startswith("Fused") else
             f"{node.group(1)} node '{node.group(2)}': " if node and node.group(2) else
             f"an unnamed {node.group(1)} node: " if node else "")
    return (where + message)[:limit]
