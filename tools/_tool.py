"""What every script under tools/ shares: one ``error: ...`` line (no traceback) for an ordinary failure, as
the ``onnx-alds`` command prints it, and the flag types and checks that make bad input fail before the work.

    if __name__ == "__main__":
        from _tool import run_tool
        sys.exit(run_tool(main))

A tool imports it before numpy and onnx: run as a script, an interrupt (Ctrl-C, SIGTERM, SIGHUP) while its
modules load is then the same one line and exit status 130 (:func:`_interrupted_while_loading`), not a
KeyboardInterrupt traceback; this module itself loads nothing heavy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: an older checkout named there still wins

from onnx_alds.argtypes import any_float  # noqa: E402
from onnx_alds.errors import OnnxAldsError, OutputPathError, os_error_text  # noqa: E402
from onnx_alds.signals import INTERRUPTS  # noqa: E402

_LOADING: dict = {}  # signal number -> the handler before _interrupted_while_loading, until run_tool starts


def _interrupted_while_loading(signum, frame) -> None:
    """Ctrl-C, SIGTERM or SIGHUP before :func:`run_tool` (while the tool's modules load): nothing was
    started, so the process ends at once with the line and status of any other interrupt (no traceback,
    no half-imported module left running)."""
    import os

    try:
        sys.stderr.write("error: interrupted; no output was written\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def _catch_interrupts_while_loading() -> None:
    """Set :func:`_interrupted_while_loading` when the running program is a script in tools/ (not a test
    that loads one, nor a multiprocessing child, whose main module is ``__mp_main__``)."""
    import signal

    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if getattr(main, "__name__", None) != "__main__" or not script:
        return
    if Path(script).resolve().parent != Path(__file__).resolve().parent:
        return
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for name in INTERRUPTS:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:  # (nohup: SIGHUP stays ignored)
            _LOADING[number] = signal.signal(number, _interrupted_while_loading)


_catch_interrupts_while_loading()


def _loaded() -> None:
    """The handlers from before :func:`_catch_interrupts_while_loading` again (Ctrl-C raises KeyboardInterrupt)."""
    import signal

    while _LOADING:
        number, previous = _LOADING.popitem()
        signal.signal(number, previous if previous is not None else signal.SIG_DFL)


def run_tool(main: Callable[[], Optional[int]], *, kept: str = "no output was written") -> int:
    """``main()``'s exit code; an :class:`OnnxAldsError` or an OSError (a missing file, a folder given for a
    file, a full disk) prints one ``error:`` line and returns 1, Ctrl-C returns 130 after saying ``kept``
    (what the interrupted tool leaves behind); SIGTERM (``timeout``, a CI cancel) and SIGHUP (a closed
    terminal) end it as Ctrl-C does, as ``onnx-alds`` does. Anything else is a bug of the tool: its traceback
    is shown."""
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _run_tool(main, kept)
    as_script = bool(_LOADING)  # (run as a tools/ script, not loaded by a test)
    _loaded()
    from onnx_alds.signals import INTERRUPTS, ScriptExit, raise_interrupt, signal_handlers

    if as_script:  # a signal once the tool's main returned exits with its code (onnx_alds.signals.ScriptExit)
        script = ScriptExit()
        with signal_handlers(INTERRUPTS, script.handler):
            script.exit(_run_tool(main, kept, script))
    with signal_handlers(("SIGTERM", "SIGHUP"), raise_interrupt):
        return _run_tool(main, kept)


def _run_tool(main: Callable[[], Optional[int]], kept: str, script=None) -> int:
    try:
        code = main() or 0
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        if script is not None:
            script.finished(code)
        return code
    except OnnxAldsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted(kept)
    except RuntimeError as exc:  # Python wraps an interrupt that lands in a class's __set_name__ (a lazy import)
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return _interrupted(kept)
        raise
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # stdout closed early (| head): nothing to say
            from onnx_alds.cli import _quiet_broken_pipe

            return _quiet_broken_pipe()
        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        return 1


def _interrupted(kept: str) -> int:
    print(f"error: interrupted; {kept}", file=sys.stderr)
    return 130


def positive_float(text: str) -> float:
    """A number > 0 (a time budget, a timeout)."""
    value = any_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"got {value}; give a number > 0")
    return value


def keep_ratio(text: str) -> float:
    """A fraction of the model to keep: a number in (0, 1]."""
    value = any_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"got {value}; give a fraction in (0, 1], such as 0.5")
    return value


def check_output_file(path: Optional[Path], flag: str) -> None:
    """Raise :class:`OutputPathError` now, before any work, when the file ``flag`` names cannot be written
    (a folder, in a missing or read-only folder: :func:`onnx_alds.model_io.check_output_path`): found after a
    long run, the run's figures would be lost."""
    if path is not None:
        from onnx_alds.model_io import check_output_path  # (numpy and onnx: not loaded with this module)

        check_output_path(Path(path), flag=flag)


def check_output_folder(path: Optional[Path], flag: str) -> None:
    """Raise :class:`OutputPathError` when ``path`` exists and is not a folder (a folder to be made is fine)."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise OutputPathError(f"{flag} '{path}' is a file; give a folder (it is created when missing)")


def check_known(names: Iterable[str], known: Iterable[str], flag: str = "--models") -> None:
    """Raise :class:`OnnxAldsError` for a name not in ``known`` (a typo would otherwise be skipped silently)."""
    known = list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise OnnxAldsError(f"unknown {flag} name{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                            f"choose from {', '.join(known)}")


def check_not_empty(**lists: Optional[list]) -> None:
    """Raise :class:`OnnxAldsError` for a list flag given with no values (``--models`` alone): an explicitly
    empty list would run nothing, or silently the default. Keywords are the flags' names (``keep`` → ``--keep``)."""
    for name, values in lists.items():
        if values is not None and len(values) == 0:
            flag = "--" + name.replace("_", "-")
            raise OnnxAldsError(f"{flag} was given no values; name at least one, or drop {flag} for its default")


def check_measured(rows: list[dict], what: str = "run") -> int:
    """The exit code of a bench whose rows hold ``error`` where a run failed: 1, with an ``error:`` line, when
    nothing was measured (no row, or every row failed), else 0."""
    failed = sum(1 for row in rows if row.get("error"))
    if not rows:
        print(f"error: nothing was measured (no {what} ran)", file=sys.stderr)
        return 1
    if failed == len(rows):
        print(f"error: every {what} failed ({failed} of {len(rows)}); nothing was measured", file=sys.stderr)
        return 1
    return 0
