"""Value types for command-line flags, shared by every command: each rejects bad input with a message
that names the value and the allowed range (argparse turns it into a usage error, exit code 2)."""

from __future__ import annotations

import argparse
import numbers
import os
from typing import Optional


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"'{text}' is not {noun}") from None


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; give an integer ≥ 1")
    return value


THREADS_PER_CPU = 4  # more threads than this per CPU only slow a run down (and 10 000 exhausted memory)


def max_threads() -> int:
    """The most threads a ``--threads`` flag or ``threads=`` argument may ask for on this machine."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def check_threads(threads: Optional[int]) -> None:
    """Raise :class:`onnx_alds.errors.InputDataError` for a thread count outside 1 … :func:`max_threads`
    (``threads=`` of the API; None is the library's default)."""
    from .errors import InputDataError

    check_count("threads", threads, optional=True)
    if threads is not None and not 1 <= threads <= max_threads():
        raise InputDataError(f"got {threads} threads; give 1 to {max_threads()} ({os.cpu_count()} CPUs here)")


def thread_count(text: str) -> int:
    """A thread count: an integer from 1 to :func:`max_threads`."""
    value = positive_int(text)
    if value > max_threads():
        raise argparse.ArgumentTypeError(f"got {value} threads; this machine has {os.cpu_count()} CPUs: give at most "
                                         f"{max_threads()}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {value}; give an integer ≥ 0")
    return value


def random_seed(text: str) -> int:
    """A random seed: an integer in [0, 2**32) (numpy's generators refuse negative seeds)."""
    value = _number(text, int)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"got {value}; give an integer in [0, 2**32), e.g. 0")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"got {value}; give a number ≥ 0")
    return value


def seconds(text: str) -> float:
    """A finite duration in seconds, ≥ 0 (``inf`` would time for ever)."""
    value = non_negative_float(text)
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"got {value}; give a finite number of seconds")
    return value


def fraction(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value <= 1:  # (nan too)
        raise argparse.ArgumentTypeError(f"got {value}; give a fraction in [0, 1]")
    return value


def finite_number(low: float = 0.0, high: float = float("inf"), *, low_included: bool = False):
    """A flag type for a finite number above ``low`` (or from it, with ``low_included``) and below ``high``."""
    bound = f"{'≥' if low_included else '>'} {low:g}" + (f" and < {high:g}" if high < float("inf") else "")

    def check(text: str) -> float:
        value = _number(text, float)
        if not ((value >= low if low_included else value > low) and value < high and abs(value) < float("inf")):
            raise argparse.ArgumentTypeError(f"got {value}; give a finite number {bound}")  # (nan too)
        return value
    return check


def any_float(text: str) -> float:
    """A number; its range is checked where the meaning is known (e.g. a keep ratio in (0, 1])."""
    return _number(text, float)


# --------------------------------------------------------------------------------------------------
# The same checks for values given to the Python API (an InputDataError instead of a usage error)


def check_count(name: str, value, minimum: int = 1, *, optional: bool = False) -> None:
    """Raise :class:`onnx_alds.errors.InputDataError` unless ``value`` is an integer ≥ ``minimum`` (a bool,
    float or string is refused, not truncated; None passes when ``optional``)."""
    from .errors import InputDataError

    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # (numpy's integers are Integral)
        raise InputDataError(f"{name}={value!r}: give an integer ≥ {minimum}")
    if value < minimum:
        raise InputDataError(f"got {name}={value}; give an integer ≥ {minimum}")


def check_seed(name: str, value) -> None:
    """Raise :class:`onnx_alds.errors.InputDataError` unless ``value`` is an integer in [0, 2**32) (numpy's
    generators refuse negative seeds), as :func:`random_seed` checks the flag."""
    from .errors import InputDataError

    check_count(name, value, 0)
    if value >= 2**32:
        raise InputDataError(f"got {name}={value}; give an integer in [0, 2**32), e.g. 0")


def check_switch(name: str, value) -> None:
    """Raise :class:`onnx_alds.errors.InputDataError` unless ``value`` is True or False."""
    import numpy as np

    from .errors import InputDataError

    if not isinstance(value, (bool, np.bool_)):
        raise InputDataError(f"{name}={value!r}: give True or False")


def check_number(name: str, value, *, optional: bool = False) -> None:
    """Raise :class:`onnx_alds.errors.InputDataError` unless ``value`` is a real number (not a bool or a
    string; None passes when ``optional``)."""
    from .errors import InputDataError

    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputDataError(f"{name}={value!r}: give a number")
