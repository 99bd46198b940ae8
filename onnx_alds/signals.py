"""Signal handling shared by the CLI and the writers: handlers set for a block, and signals held across
steps that must not be split (the model file and its weights file renamed into place)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Sequence

INTERRUPTS = ("SIGINT", "SIGTERM", "SIGHUP")  # Ctrl-C, timeout / CI cancel / docker stop, a closed terminal


@contextlib.contextmanager
def signal_handlers(names: Sequence[str], handler: Callable) -> Iterator[None]:
    """``handler`` for the named signals this platform has and the process does not ignore (under nohup
    SIGHUP stays ignored), inside; the previous handlers after. Main thread only (Python sets handlers
    there)."""
    numbers = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {number: signal.signal(number, handler) for number in numbers
                if signal.getsignal(number) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old if old is not None else signal.SIG_DFL)  # (None: set in C)


@contextlib.contextmanager
def held_signals(names: Sequence[str] = INTERRUPTS) -> Iterator[list[int]]:
    """Inside, the named signals are recorded (whichever thread the operating system hands them to, Python
    runs handlers in the main thread), not acted on; yields the list they are recorded in. Outside the main
    thread nothing can be held, and nothing is."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    with signal_handlers(names, lambda signum, frame: caught.append(signum)):
        yield caught


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Inside, Ctrl-C, SIGTERM and SIGHUP wait: the first that arrived is delivered (to the handler there was
    before) when the block ends, so the block runs whole or, when it raises, as far as it got (the signal is
    delivered then too)."""
    held: list[int] = []
    try:
        with held_signals() as held:
            yield
    finally:
        if held:
            signal.raise_signal(held[0])


def exit_at_once_on_interrupt(code: int) -> None:
    """For a process whose command has finished (its output landed): a Ctrl-C, SIGTERM or SIGHUP during the
    interpreter's teardown (freeing ONNX Runtime sessions and modules takes ~0.4 s) ends it at once with the
    command's exit ``code``. By the signal's default action it exited 143 with no message (or a traceback)
    though every output was written. Main thread only; ignored signals stay ignored."""
    import os
    import sys

    def exit_now(signum, frame) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    if threading.current_thread() is not threading.main_thread():
        return
    for name in INTERRUPTS:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, exit_now)
