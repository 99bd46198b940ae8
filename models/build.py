"""python -m models.build NAME [NAME ...] [--out models/cache]

Builds each named reference model into ``<out>/<name>/`` (model.onnx, its eval/calibration
data and info.json). Names: see ``models.BUILDERS`` or ``--list``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from . import BUILDERS

DEFAULT_OUT = Path(__file__).resolve().parent / "cache"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"one or more of: {', '.join(BUILDERS)}, or 'all'")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache root (default: models/cache)")
    p.add_argument("--list", action="store_true", help="list the model names and exit")
    args = p.parse_args(argv)
    if args.list or not args.names:
        print("\n".join(BUILDERS))
        return 0 if args.list else 2
    names = list(BUILDERS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        p.error(f"unknown model(s): {', '.join(unknown)} (choose from {', '.join(BUILDERS)})")
    for name in names:
        mod = importlib.import_module(f".{BUILDERS[name]}", __package__)
        out = args.out / name
        t0 = time.perf_counter()
        print(f"== building {name} into {out}", flush=True)
        mod.build(out)
        print(f"== {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
