"""``onnx-alds demo``: the main job end to end on the bundled MNIST model.

Compress (data-aware ALDS at half the MACs, pointwise-first pairs, calibrated on 48 bundled training
digits), validate on 500 bundled test digits (accuracy of both models, top-1 agreement; checked
against the same default tolerances as ``validate`` and ``compress --validate``, exit 1 when one is
missed), benchmark both in ONNX Runtime on the CPU, and print the report. Needs no download and no
deep-learning framework.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from .argtypes import positive_int
from .errors import OutputPathError, ValidationFailedError

MODEL = "mnist_resnet.onnx"
CALIBRATION = "mnist_calibration.npz"
EVALUATION = "mnist_eval.npz"
OUTPUTS = ("mnist_resnet.alds.onnx", "compress_report.json", "demo_report.json")  # what --out DIR gets


def bundled(name: str) -> Path:
    """Path of a file bundled in ``onnx_alds/data``."""
    return Path(str(resources.files("onnx_alds") / "data" / name))


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="onnx-alds-demo", metavar="DIR",
                        help="folder for the compressed model and the reports (default: ./onnx-alds-demo)")
    parser.add_argument("--keep-flops", type=float, default=0.5, metavar="F", help="fraction of MACs to keep")
    parser.add_argument("--data-free", action="store_true", help="ignore the calibration digits (plain ALDS)")
    parser.add_argument("--rank-multiple", type=int, default=16, metavar="N",
                        help="round ranks (and channels per group) to multiples of N (default 16: fast CPU kernels)")
    from .layers import ORDERS, POINTWISE_FIRST

    parser.add_argument("--order", choices=ORDERS, default=POINTWISE_FIRST,
                        help="factorized pair of the 3x3 stride-1 convs (default pointwise-first: 1x1 then 3x3, "
                             "measured faster and as accurate here; spatial-first is the ALDS paper's)")
    parser.add_argument("--batch", type=positive_int, default=32, metavar="N", help="batch size of the CPU benchmark")


def run_demo_command(args: argparse.Namespace) -> int:
    from .api import compress
    from .inputs import load_inputs
    from .model_io import (first_missing_folder, load_model, refuse_foreign_file, remove_if_no_files, removed_whole,
                           replace_keeping_mode)
    from .signals import uninterrupted

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--out '{out}' is a file; give a folder for the demo's outputs")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):  # (a read-only working folder: the default --out is in it)
        raise OutputPathError(f"cannot write the demo's folder '{out}' ('{existing}' is not writable); give a "
                              "writable folder with --out DIR")
    for name, kind in zip(OUTPUTS, ("onnx-alds model", "onnx-alds report", "onnx-alds report")):
        if (out / name).is_dir():
            raise OutputPathError(f"'{out / name}' is a folder where the demo writes a file; give another --out folder")
        refuse_foreign_file(out / name, kind, flag="the demo's file", command="demo",  # (a user's file there)
                            fix="give another --out folder (or move the file away)")
    model_path = bundled(MODEL)
    model = load_model(model_path)
    calibration = None if args.data_free else load_inputs(model, npz=bundled(CALIBRATION))
    evaluation = load_inputs(model, npz=bundled(EVALUATION))
    print(f"model: {model_path.name} (bundled MNIST ResNet, {len(evaluation)} test digits"
          f"{'' if calibration is None else f', {len(calibration)} calibration digits'})\n")

    result = compress(model, keep_flops=args.keep_flops, rank_multiple=args.rank_multiple, calibration=calibration,
                      order=args.order)
    created = first_missing_folder(out)  # removed again if it fails
    out.mkdir(parents=True, exist_ok=True)  # (only now: an error above leaves no folder behind)
    staging = Path(tempfile.mkdtemp(prefix=".onnx-alds-demo-", dir=out))  # this run's files, until they all are
    args.written_files = []  # what an interrupt from here on leaves written (cli names it)
    try:
        validation = _write_and_check(args, staging, model_path, result, evaluation, final=out)
        with uninterrupted():  # all three in place, or none: an earlier run's files stay as they were
            for name in OUTPUTS:
                replace_keeping_mode(staging / name, out / name)
            args.written_files.extend(str(out / name) for name in OUTPUTS)  # (told, if an interrupt comes now)
    except BaseException:  # a full disk, an interrupt: nothing of this run is left (a failed check raises after)
        removed_whole(lambda: shutil.rmtree(staging, ignore_errors=True))
        if not args.written_files:  # (an interrupt after the renames: they landed)
            remove_if_no_files(created)
        raise
    removed_whole(lambda: shutil.rmtree(staging, ignore_errors=True))
    print(f"wrote {', '.join(str(out / name) for name in OUTPUTS)}")
    if not validation.passed:  # (validate's own advice names flags the demo does not take)
        problem = validation.failure_message().split("; ")[0]
        raise ValidationFailedError(
            f"the demo's validation failed: {problem}; compress less (a --keep-flops above {args.keep_flops:g}"
            f"{', or without --data-free' if args.data_free else ''}); the model and reports are kept in {out} "
            "to inspect")
    return 0


def _write_and_check(args: argparse.Namespace, out: Path, model_path: Path, result, evaluation, *, final: Path):
    """Write the compressed model and its report into ``out`` (the run's staging folder), validate and time
    it (named as it will be in ``final``, where it lands), write the demo's report; returns the validation
    report."""
    from .model_io import save_model
    from .report import write_json
    from .validate import validate_and_bench

    compressed_path = out / OUTPUTS[0]
    save_model(result.model, compressed_path, protect=[model_path])
    result.report.save_json(out / OUTPUTS[1])
    print(result.report.format())
    print()

    report = result.report
    validation, bench, summary = validate_and_bench(
        model_path, compressed_path, inputs=evaluation, batch=args.batch,
        names=[str(model_path), str(final / OUTPUTS[0])],
        weights_kept=report.params_after / report.params_before,
        macs_kept=(report.macs_after or 0) / report.macs_before if report.macs_before else None)
    print("\n".join(validation.lines()))
    print()
    if bench is not None:
        print("\n".join(bench.lines()))
    print()
    print(summary)
    write_json({"compress": report.to_dict(), "validate": validation.to_dict(),
                "bench": None if bench is None else bench.to_dict(), "summary": summary}, out / OUTPUTS[2])
    return validation
