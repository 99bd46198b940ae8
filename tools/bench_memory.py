"""Peak memory and wall time of ``onnx-alds compress`` on one model, in a fresh process per run.

    python tools/bench_memory.py MODEL.onnx [--keep-params 0.5 1.0] [--json out.json] [-- extra compress flags]

For every ``--keep-params`` value: runs ``onnx-alds compress MODEL -o <tmp>/out.onnx --keep-params K``
in a child process under ``/usr/bin/time -v`` (its "Maximum resident set size"), or, where that
program is missing, reads the child's peak from ``getrusage(RUSAGE_CHILDREN)``; prints the model's
size on disk (the .onnx file plus its external data files), the peak resident memory, their ratio,
the wall time and the output's size. The output is written to a temporary folder next to the model
(or ``--out-dir``) and deleted afterwards unless ``--keep-output``.

Run one at a time on a shared machine: the figure is the child's own peak, but the time is not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/_tool.py (which also finds onnx_alds)

from _tool import check_output_file, keep_ratio  # noqa: E402
from onnx_alds.errors import ModelLoadError, OutputPathError  # noqa: E402


def model_bytes(path: Path) -> int:
    """Size on disk of the model file and every external data file it names."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except OSError:  # unreadable: run_tool says so
        raise
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ... (as onnx_alds.model_io says)
        raise ModelLoadError(f"cannot read '{path}' as an ONNX model ({type(exc).__name__}); the file is truncated "
                             "or not ONNX") from None
    locations = {ExternalDataInfo(t).location for t in _get_all_tensors(proto) if uses_external_data(t)}
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in locations
                                     if (path.parent / name).is_file())


def output_bytes(path: Path) -> int:
    return model_bytes(path) if path.exists() else 0


def compress_command(model: Path, output: Path, keep: float, extra: list[str]) -> list[str]:
    script = Path(sys.executable).with_name("onnx-alds")
    base = [str(script)] if script.exists() else [sys.executable, "-c",
                                                  "import sys; from onnx_alds.cli import main; sys.exit(main())"]
    return base + ["compress", str(model), "-o", str(output), "--keep-params", f"{keep:g}", *extra]


def run_once(model: Path, keep: float, extra: list[str], out_dir: Path, keep_output: bool) -> dict:
    """One compress in a child process; its temporary folder is removed afterwards (also when interrupted),
    unless ``keep_output`` and the run finished."""
    work = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=str(out_dir)))
    finished = False
    try:
        output = work / f"{model.stem}.keep{keep:g}.onnx"
        command = compress_command(model, output, keep, extra)
        timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
        started = time.perf_counter()
        if timer:
            process = subprocess.run([timer, "-v", *command], capture_output=True, text=True)
            wall = time.perf_counter() - started
            match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", process.stderr)
            peak = int(match.group(1)) * 1024 if match else None
            stderr = "\n".join(line for line in process.stderr.splitlines() if not line.startswith("\t"))
        else:
            import resource

            process = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
            stderr = process.stderr
        result = {"keep_params": keep, "returncode": process.returncode, "peak_bytes": peak, "seconds": wall,
                  "output_bytes": output_bytes(output), "command": " ".join(command[command.index("compress") - 1:]),
                  "summary": [line for line in process.stdout.splitlines()
                              if line.startswith(("target:", "weights:", "layers factorized", "time:", "note:",
                                                  "wrote"))],
                  "stderr": stderr.strip()[-2000:]}
        finished = True
    finally:
        if not (keep_output and finished):
            shutil.rmtree(work, ignore_errors=True)
    if keep_output:
        result["output"] = str(output)
    return result


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--keep-params", type=keep_ratio, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--out-dir", type=Path, default=None, help="where the outputs go (default: the model's folder)")
    parser.add_argument("--keep-output", action="store_true", help="leave the compressed models on disk")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        raise ModelLoadError(f"model file '{args.model}' does not exist (or is not a file); check the path")
    out_dir = args.out_dir or args.model.parent
    if not out_dir.is_dir():
        raise OutputPathError(f"--out-dir '{out_dir}' is not an existing folder; create it first")
    check_output_file(args.json, "--json")  # now, not after every run
    size = model_bytes(args.model)
    print(f"model {args.model}: {size / 1e9:.3f} GB on disk; {os.cpu_count()} CPUs", flush=True)
    rows = []
    for keep in args.keep_params:
        row = run_once(args.model, keep, extra, out_dir, args.keep_output)
        row["model_bytes"] = size
        row["ratio"] = row["peak_bytes"] / size if row["peak_bytes"] else None
        rows.append(row)
        status = "ok" if row["returncode"] == 0 else f"FAILED (exit {row['returncode']})"
        peak = f"{row['peak_bytes'] / 1e9:.2f} GB" if row["peak_bytes"] else "?"
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "?"
        print(f"keep-params {keep:g}: peak RSS {peak} = {ratio} the model, {row['seconds']:.0f} s, "
              f"output {row['output_bytes'] / 1e9:.3f} GB, {status}", flush=True)
        for line in row["summary"]:
            print(f"    {line}")
        if row["returncode"] != 0:
            print(row["stderr"], file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "model_bytes": size, "runs": rows}, indent=2))
    return 0 if all(row["returncode"] == 0 for row in rows) else 1


if __name__ == "__main__":
    from _tool import run_tool

    raise SystemExit(run_tool(main, kept="the runs printed above are all that was measured (no --json file was "
                                       "written); their temporary outputs were removed"))
