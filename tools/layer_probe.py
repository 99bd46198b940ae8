"""Which layers a model cannot afford to approximate: factorize one layer at a time, measure the model.

For every factorizable layer of a reference model (or those named), compress that layer alone (data-aware,
``g = 1``, every other layer left dense) to about ``--layer-keep`` of its own MACs, and measure on the
held-out inputs: the layer's table error (its relative RMS output error on the calibration data), top-1
agreement of the whole model with the original, and the relative error of the model's first output.
A layer whose small error moves the output a lot is one the budget cannot be taken from.

    python tools/layer_probe.py --models efficientnet-lite0 [--layer-keep 0.5] [--layers NAME ...]
        [--eval-limit N] [--json out.json]
    python tools/layer_probe.py --model M.onnx --calibration C.npz --held-out H.npz ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _tool import check_not_empty, check_output_file, keep_ratio  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from data_aware_bench import _load_npz, find_models, outputs, spread  # noqa: E402
from onnx_alds import analyze, compress  # noqa: E402
from onnx_alds.argtypes import positive_int  # noqa: E402
from onnx_alds.errors import InputDataError, OnnxAldsError  # noqa: E402
from onnx_alds.inputs import InputSet, load_inputs  # noqa: E402
from onnx_alds.model_io import load_model  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="names under models/cache (default: all present)")
    parser.add_argument("--model", type=Path, default=None, help="an ONNX model instead of --models")
    parser.add_argument("--calibration", type=Path, default=None, help="with --model: calibration .npz")
    parser.add_argument("--held-out", type=Path, default=None, help="with --model: held-out .npz")
    parser.add_argument("--layer-keep", type=keep_ratio, default=0.5, help="fraction of the probed layer's MACs to keep")
    parser.add_argument("--layers", nargs="*", default=None, help="node names to probe (default: every factorizable)")
    parser.add_argument("--eval-limit", type=positive_int, default=None,
                        help="use N held-out inputs, spread evenly over the set")
    parser.add_argument("--json", type=Path, default=None, help="write all rows to this file")
    args = parser.parse_args(argv)
    check_not_empty(models=args.models, layers=args.layers)
    if args.model is not None and args.models is not None:
        raise OnnxAldsError("--model and --models: give one model file with --model, or reference models by name "
                            "with --models, not both")
    if args.model is None:
        given = [flag for flag, value in (("--calibration", args.calibration), ("--held-out", args.held_out)) if value]
        if given:
            one = len(given) == 1
            raise OnnxAldsError(f"{' and '.join(given)} only work{'s' if one else ''} with --model (a reference model "
                                "of --models uses its own calibration.npz and held-out file); add --model or drop "
                                f"{'it' if one else 'them'}")
    check_output_file(args.json, "--json")  # now, not after the whole run
    rows = []
    if args.model is not None:
        if args.calibration is None or args.held_out is None:
            parser.error("--model needs --calibration and --held-out")
        # read and checked now (a file that is no model, no .npz, or lacks an input: one error line)
        model = load_model(args.model)
        calibration = load_inputs(model, npz=args.calibration)
        held = dict(load_inputs(model, npz=args.held_out, limit=args.eval_limit).arrays)
        entries = [dict(name=args.model.name, loaded=(model, calibration, held))]
    else:
        entries = find_models(args.models)
    for entry in entries:
        if "loaded" in entry:
            model, calibration, held = entry["loaded"]
        else:
            model = onnx.load(str(entry["model"]))
            cal = _load_npz(entry["calibration"])
            cal.pop("labels", None)
            held = spread(_load_npz(entry["held_out"]), args.eval_limit)
            held.pop("labels", None)
            calibration = InputSet(cal, source=entry["calibration"].name)
        analysis = analyze(model)
        layers = [row for row in analysis.layers if row.skip_reason is None and row.macs]
        if args.layers:
            unknown = [name for name in args.layers if name not in {row.name for row in layers}]
            if unknown:
                names = [row.name for row in layers]
                raise InputDataError(
                    f"--layers: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} no factorizable layer of "
                    f"{entry['name']}; its {len(names)} factorizable layers: {', '.join(names[:20])}"
                    + (", …" if len(names) > 20 else ""))
            layers = [row for row in layers if row.name in args.layers]
        reference = outputs(model, held)
        top = np.sort(reference, axis=1)[:, ::-1]
        probability = 1.0 / np.sum(np.exp(reference - top[:, :1]), axis=1)
        print(f"\n## {entry['name']}: each layer alone at {args.layer_keep:g} of its MACs; "
              f"{len(reference)} held-out inputs, {len(calibration)} calibration inputs; the original's median "
              f"top-1 probability {np.median(probability):.2f}, median top-1/top-2 margin "
              f"{np.median(top[:, 0] - top[:, 1]):.2f}")
        print(f"{'layer':<40} {'MAC share':>9} {'rank':>5} {'layer err':>9} {'agree':>6} {'out err':>8}")
        for probe in layers:
            keep = 1.0 - (1.0 - args.layer_keep) * probe.macs / analysis.macs_total
            others = [row.name for row in analysis.layers if row.name != probe.name]
            try:
                result = compress(model, keep_flops=keep, calibration=calibration, exclude=others, max_groups=1)
            except Exception as exc:  # a probe keeps going; the failure is printed in the table
                print(f"{probe.name:<40} failed: {str(exc).splitlines()[0]}", flush=True)
                continue
            row = next(r for r in result.report.layers if r.name == probe.name)
            out = outputs(result.model, held)
            agree = float(np.mean(out.argmax(axis=1) == reference.argmax(axis=1)))
            error = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
            share = probe.macs / analysis.macs_total
            rows.append(dict(model=entry["name"], layer=probe.name, mac_share=share, rank=row.rank,
                             layer_error=row.error, agreement=agree, output_error=error))
            print(f"{probe.name:<40} {share:>9.3f} {row.rank or '-':>5} {row.error:>9.4f} {agree:>6.3f} {error:>8.3f}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if not rows:
        print("error: nothing was measured (every probe failed, or no model or layer to probe)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the rows printed above are all that was measured (no --json file was written)"))
