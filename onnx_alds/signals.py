"""Signal handling shared by the CLI and the writers: handlers set for a block, and signals held across
steps that must not be split (the model file and its weights file renamed into place)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, NoReturn, Optional, Sequence

INTERRUPTS = ("SIGINT", "SIGTERM", "SIGHUP")  # Ctrl-C, timeout / CI cancel / docker stop, a closed terminal


def raise_interrupt(signum, frame) -> None:
    """A handler that makes SIGTERM and SIGHUP end a run as Ctrl-C does: KeyboardInterrupt, through the same
    clean-up."""
    raise KeyboardInterrupt


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


class ScriptExit:
    """Signal handling for a command-line process (``onnx-alds``, a tools/ script) around its command: until
    :meth:`finished` is called, Ctrl-C, SIGTERM and SIGHUP raise KeyboardInterrupt (the command's clean-up
    runs and says what was written); from then on they end the process at once with the command's exit code
    (its outputs have landed: a signal in its last clean-up or in the exit killed it by the signal's default
    action, 143 and no message, or a traceback from a ``finally`` block). :meth:`exit` ends the process:
    atexit functions run (Ray's shutdown, temporary folders), then ``os._exit`` skips the interpreter's
    teardown (freeing every module's objects, ~0.4 s, with Python's default handlers back)."""

    def __init__(self) -> None:
        self.code: Optional[int] = None
        self.flushing = False  # in exit(), writing what is left of standard output

    def handler(self, signum, frame) -> None:
        if self.flushing:  # (its output cut short: not the command's code; no second flush of a blocked stream)
            import os

            os.write(2, b"error: interrupted while writing standard output; it may be cut short\n")
            os._exit(130)
        if self.code is not None:
            _exit_now(self.code)
        raise KeyboardInterrupt

    def finished(self, code: int) -> None:
        self.code = code

    def exit(self, code: int) -> NoReturn:
        """End the process with ``code``; 1 instead of 0 when standard output cannot take what is left in its
        buffer (a full disk: Python's own exit said 120 and "Exception ignored"; a closed pipe, as ``| head``
        leaves it, is no failure)."""
        import atexit
        import sys

        self.code = code
        self.flushing = True
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            pass
        except OSError as exc:
            print(f"error: writing standard output failed ({exc.strerror or exc})", file=sys.stderr)
            code = code or 1
        except (ValueError, RuntimeError, AttributeError):  # (closed, or a flush already under way)
            pass
        self.flushing = False
        self.code = code
        try:
            run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
            if run_exit_functions is not None:
                run_exit_functions()
        finally:
            _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    """``os._exit(code)`` after flushing what it can (a flush that fails or is already under way, a signal
    arriving in one, is passed over: the process is ending)."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, RuntimeError, AttributeError):
            pass
    os._exit(code)
