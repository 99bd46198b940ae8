"""Larger unlabeled input pools for the reference models, disjoint from their eval and calibration sets.

Calibration-size curves and distillation need more unlabeled inputs than the 48 of each
``calibration.npz``. This writes ``pool.npz`` beside them (same keys, already preprocessed):

- ``minilm``: every candidate sentence of ``pydoc_data.topics`` that is neither an eval nor a
  calibration sentence (645 with Python 3.11), tokenized like the others (length 64); the texts go
  to ``pool_sentences.json``.
- ``efficientnet-lite0``: ``--crops`` (default 512) further random crops / flips / scales of the same
  natural photos, drawn from the same seeded stream after the agreement and calibration crops (so none
  repeats one of theirs; a larger pool starts with the crops of a smaller one).

``--name`` writes ``NAME.npz`` instead of ``pool.npz`` (e.g. ``--crops 2048 --name pool2048`` beside the
default pool, for ``tools/prune_bench.py --calibration pool2048``).

    python -m models.pools [minilm] [efficientnet-lite0] [--crops 512] [--name pool] [--out models/cache]

Run after ``python -m models.build minilm efficientnet-lite0``; needs the same packages (transformers'
tokenizer for MiniLM, pillow and the photo wheels for EfficientNet-Lite0) but not torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / "cache"


def minilm_pool(out_dir: Path, name: str = "pool") -> int:
    from . import minilm

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer

    eval_s, calib_s = minilm.select_sentences()
    taken = set(eval_s) | set(calib_s)
    pool = [s for s in minilm.candidate_sentences() if s not in taken]
    tokenizer = AutoTokenizer.from_pretrained(str(minilm.model_dir()))
    np.savez(out_dir / f"{name}.npz", **minilm.tokenize(tokenizer, pool))
    (out_dir / f"{name}_sentences.json").write_text(json.dumps(pool, indent=1) + "\n")
    return len(pool)


def efficientnet_pool(out_dir: Path, crops: int, name: str = "pool") -> int:
    from . import efficientnet_lite0 as effnet

    photos = effnet.natural_photos()
    rng = np.random.default_rng(effnet.SEED)
    _, agree = effnet.random_crops(photos, effnet.N_AGREEMENT, rng)  # the stream as the build draws it
    _, calib = effnet.random_crops(photos, effnet.N_CALIBRATION, rng)
    x_pool, meta = effnet.random_crops(photos, crops, rng)
    if set(meta) & (set(agree) | set(calib)):
        raise SystemExit("error: a pool crop repeats an agreement or calibration crop")
    np.savez(out_dir / f"{name}.npz", input=x_pool)
    return crops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="minilm and/or efficientnet-lite0 (default: both)")
    parser.add_argument("--crops", type=int, default=512, help="EfficientNet-Lite0 pool size")
    parser.add_argument("--name", default="pool", help="file name of the pool, without .npz (default pool)")
    parser.add_argument("--out", type=Path, default=CACHE)
    args = parser.parse_args(argv)
    names = args.names or ["minilm", "efficientnet-lite0"]
    unknown = sorted(set(names) - {"minilm", "efficientnet-lite0"})
    if unknown:
        parser.error(f"unknown model {unknown[0]}; choose minilm or efficientnet-lite0")
    if not args.name or Path(args.name).name != args.name or args.name.startswith("."):
        parser.error(f"--name {args.name!r} is not a plain file name; give one such as pool2048")
    for name in names:
        folder = args.out / name
        if not (folder / "model.onnx").exists():
            raise SystemExit(f"error: {folder / 'model.onnx'} is missing; run python -m models.build {name} first")
        count = (minilm_pool(folder, args.name) if name == "minilm"
                 else efficientnet_pool(folder, args.crops, args.name))
        print(f"{name}: {count} pool inputs -> {folder / (args.name + '.npz')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
