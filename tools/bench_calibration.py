"""Calibration cost and accuracy on synthetic models shaped like the ones users reported.

Cases (each runs in this process; run one case per invocation so that the peak RSS is its own):

- ``detector``: a text-detector-like conv net at 640×640 (ResNet-like backbone, widths 32…512 at
  strides 2…32, and an FPN-like head that concatenates four 64-channel maps at 160×160 into a 3x3
  conv with 2304 inputs per patch), ~10.7 GMAC per image;
- ``vgg16``: VGG16 at 224×224 (13 3x3 convs, then the 25088 → 4096 → 4096 → 1000 classifier), 15.5 GMAC
  and 138 M weights;
- ``quality``: how well position sampling estimates the moments, per layer, on the bundled MNIST ResNet
  (trained weights, real digits) and on the detector at 320×320 (random weights, natural photos);
- ``precision``: float32 chunk products against float64 on the same layers.

Inputs are crops of the natural photos shipped inside the scikit-image and foolbox wheels (random
crop, flip and resize, ImageNet normalization), or smooth random fields where those are missing.
Weights are random (He init): costs depend on shapes only.

    python tools/bench_calibration.py detector [--samples 32] [--size 640] [--positions 1024] [--float64] [--forward]
    python tools/bench_calibration.py vgg16 [--samples 32] [--compress 0.5]
    python tools/bench_calibration.py quality [--positions 64 256 1024]
    python tools/bench_calibration.py precision

Prints wall time of the statistics (``collect_statistics``), with ``--compress F`` also of a whole
data-aware ``compress(keep_params=F)``, the process's peak RSS (``resource.getrusage``, which includes
ONNX Runtime's buffers) and the ``tracemalloc`` peak (numpy/Python allocations only). Runs against older
code too (``PYTHONPATH=OLD_CHECKOUT``): without ``CalibrationLimits`` it calls ``collect_statistics`` as
it was.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Optional, Sequence

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: an older checkout there wins
sys.path.append(str(Path(__file__).resolve().parent))  # tools/_tool.py

from _tool import keep_ratio  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_alds import calibrate  # noqa: E402
from onnx_alds.argtypes import positive_int  # noqa: E402
from onnx_alds.layers import constant_tensors, find_layers, folded_weight  # noqa: E402

HAS_LIMITS = hasattr(calibrate, "CalibrationLimits")
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "grass.png", "gravel.png", "brick.png",
          "moon.png", "coins.png", "page.png", "text.png", "cell.png", "clock_motion.png", "color.png")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


class Samples:
    """The ``InputSet`` members calibration uses, over one array."""

    def __init__(self, name: str, array: np.ndarray, source: str) -> None:
        self.arrays = {name: array}
        self.source = source
        self.is_random = False

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def batches(self, size: int):
        for start in range(0, len(self), size):
            yield {name: array[start:start + size] for name, array in self.arrays.items()}


def _photo_files() -> list[Path]:
    files: list[Path] = []
    for package, names in (("skimage", PHOTOS), ("foolbox", None)):
        spec = importlib.util.find_spec(package)  # locates the wheel without importing it
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(list(spec.submodule_search_locations)[0]) / "data"
        if names is None:
            files += sorted(folder.glob("imagenet_*.jpg"))
        else:
            files += [folder / name for name in names if (folder / name).exists()]
    return files


def natural_images(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``count`` normalized RGB crops (``count × 3 × size × size`` float32) of bundled photos."""
    rng = np.random.default_rng(seed)
    files = _photo_files()
    if not files:
        fields = rng.standard_normal((count, 3, size // 16 + 1, size // 16 + 1)).astype(np.float32)
        big = np.repeat(np.repeat(fields, 16, axis=2), 16, axis=3)[:, :, :size, :size]
        noisy = big + 0.1 * rng.standard_normal(big.shape).astype(np.float32)
        return np.ascontiguousarray(noisy), "smooth random fields"
    from PIL import Image

    images = []
    for index in range(count):
        with Image.open(files[index % len(files)]) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        side = int(min(width, height) * rng.uniform(0.4, 1.0))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0
        images.append((pixels - MEAN) / STD)
    return np.stack(images).astype(np.float32), f"crops of {len(files)} bundled photos"


class Builder:
    """Conv/Gemm graphs with He-initialized random weights."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: Sequence[int]) -> str:
        fan_in = int(np.prod(shape[1:]))
        value = (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> str:
        w = self.weight(f"{name}.weight", (cout, cin, k, k))
        b = name + ".bias"
        self.inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), b))
        self.nodes.append(helper.make_node("Conv", [x, w, b], [name], name=f"/{name}/Conv", kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4))
        return self.relu(name) if relu else name

    def relu(self, x: str) -> str:
        self.nodes.append(helper.make_node("Relu", [x], [x + ".relu"], name=f"/{x}/Relu"))
        return x + ".relu"

    def gemm(self, x: str, name: str, cin: int, cout: int, relu: bool = True) -> str:
        w = self.weight(f"{name}.weight", (cout, cin))
        b = name + ".bias"
        self.inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), b))
        self.nodes.append(helper.make_node("Gemm", [x, w, b], [name], name=f"/{name}/Gemm", transB=1))
        return self.relu(name) if relu else name

    def model(self, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "bench", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def detector(size: int = 640, seed: int = 0) -> onnx.ModelProto:
    """Backbone 32/64/128/256/512 at strides 2/4/8/16/32, FPN-like head at stride 4 (dynamic batch)."""
    b = Builder(seed)
    x = b.conv("input", "stem", 3, 32, stride=2)
    feats = []
    cin = 32
    for stage, width in enumerate((64, 128, 256, 512)):
        x = b.conv(x, f"stage{stage}.down", cin, width, stride=2)
        x = b.conv(x, f"stage{stage}.conv", width, width)
        feats.append((x, width, 2 ** stage))
        cin = width
    lateral = []
    for (feature, width, scale) in feats:
        y = b.conv(feature, f"lateral{scale}", width, 64, k=1, relu=False)
        if scale > 1:
            scales = f"up{scale}.scales"
            b.inits.append(numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), scales))
            b.nodes.append(helper.make_node("Resize", [y, "", scales], [f"up{scale}"], name=f"/up{scale}/Resize",
                                            mode="nearest"))
            y = f"up{scale}"
        lateral.append(y)
    b.nodes.append(helper.make_node("Concat", lateral, ["fused"], name="/fuse/Concat", axis=1))
    y = b.conv("fused", "head", 256, 64)
    y = b.conv(y, "prob", 64, 2, k=1, relu=False)
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                   [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 2, size // 4, size // 4])])


def vgg16(size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """VGG16 (configuration D) with its 25088-input classifier (dynamic batch)."""
    b = Builder(seed)
    x, cin = "input", 3
    for block, (width, count) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for index in range(count):
            x = b.conv(x, f"features.{block}.{index}", cin, width)
            cin = width
        b.nodes.append(helper.make_node("MaxPool", [x], [f"pool{block}"], name=f"/pool{block}/MaxPool",
                                        kernel_shape=[2, 2], strides=[2, 2]))
        x = f"pool{block}"
    b.nodes.append(helper.make_node("Flatten", [x], ["flat"], name="/flatten/Flatten", axis=1))
    side = size // 32
    x = b.gemm("flat", "classifier.0", 512 * side * side, 4096)
    x = b.gemm(x, "classifier.3", 4096, 4096)
    x = b.gemm(x, "classifier.6", 4096, 1000, relu=False)
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                   [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 1000])])


def _limits(args: argparse.Namespace):
    if not HAS_LIMITS:
        return {}
    sizes = {}
    if args.activation_mib:
        sizes["activation_bytes"] = args.activation_mib << 20
    if args.moment_mib:
        sizes["moment_bytes"] = args.moment_mib << 20
    return {"limits": calibrate.CalibrationLimits(positions_per_sample=args.positions, float32=not args.float64,
                                                  **sizes)}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib() -> float:
    """The resident set now (Linux ``/proc``; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_case(model: onnx.ModelProto, data: np.ndarray, source: str, args: argparse.Namespace) -> None:
    layers = [layer for layer in find_layers(model, {}) if layer.compressible]
    inputs = Samples("input", data, source)
    weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    precision = "float64" if args.float64 or not HAS_LIMITS else "float32"
    print(f"model: {len(layers)} layers, {weights / 1e6:.1f} M weights; inputs {data.shape} ({source}); "
          f"code: {'bounded' if HAS_LIMITS else 'old (unbounded)'}; positions per sample "
          f"{args.positions if HAS_LIMITS else 'all'}; {precision} products", flush=True)
    notes: list[str] = []
    extra = _limits(args)
    if HAS_LIMITS:
        extra["notes"] = notes
    if args.forward:
        from onnx_alds.runtime import make_session

        session = make_session(model, "cpu")
        tick, cpu = time.perf_counter(), time.process_time()
        for batch in inputs.batches(args.batch):
            session.run(None, batch)
        print(f"forward pass alone (batch {args.batch}): {time.perf_counter() - tick:.1f} s wall, "
              f"{time.process_time() - cpu:.1f} s CPU", flush=True)
        del session
    print(f"before the statistics (model and inputs built): RSS {_current_rss_mib():.0f} MiB", flush=True)
    tracemalloc.start()
    tick, cpu = time.perf_counter(), time.process_time()
    stats = calibrate.collect_statistics(model, layers, inputs, batch_size=args.batch, **extra)
    seconds, cpu = time.perf_counter() - tick, time.process_time() - cpu
    traced = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    print(f"statistics: {seconds:.1f} s wall, {cpu:.1f} s CPU (all threads) for {len(inputs)} samples, "
          f"{len(stats)} of {len(layers)} layers; tracemalloc peak {traced:.0f} MiB; "
          f"max RSS so far {_rss_mib():.0f} MiB", flush=True)
    for note in notes:
        print(f"  note: {note}")
    del stats
    if args.compress:
        from onnx_alds import compress

        tick, cpu = time.perf_counter(), time.process_time()
        result = compress(model, keep_params=args.compress, calibration=inputs, calibration_batch_size=args.batch)
        print(f"compress(keep_params={args.compress}, calibration=...): {time.perf_counter() - tick:.1f} s wall, "
              f"{time.process_time() - cpu:.1f} s CPU; "
              f"seconds {({k: round(v, 1) for k, v in result.report.seconds.items()})}; "
              f"max RSS {_rss_mib():.0f} MiB", flush=True)
        for note in result.report.notes:
            print(f"  note: {note}")


def _metric_error(weight: np.ndarray, approx: np.ndarray, moment: np.ndarray) -> float:
    """Relative RMS output error ``sqrt(tr(E C Eᵀ) / tr(W C Wᵀ))`` of ``approx`` under the moment ``C``."""
    error = weight - approx
    return float(np.sqrt(max(0.0, np.einsum("ij,jk,ik->", error, moment, error))
                         / np.einsum("ij,jk,ik->", weight, moment, weight)))


def quality(args: argparse.Namespace) -> None:
    """Sampled vs full moments per layer: relative Frobenius error of ``C``, and the held-out output error of
    rank-``d/4`` data-aware factors fitted on the sampled moment against those fitted on the full one."""
    from onnx_alds.data_aware import data_aware_factors
    from onnx_alds.inputs import load_inputs

    root = Path(__file__).resolve().parents[1]
    cases = []
    mnist = onnx.load(str(root / "onnx_alds" / "data" / "mnist_resnet.onnx"))
    fit = load_inputs(mnist, npz=root / "onnx_alds" / "data" / "mnist_calibration.npz")
    held = load_inputs(mnist, npz=root / "onnx_alds" / "data" / "mnist_eval.npz", limit=200)
    cases.append(("mnist-resnet (trained, 48 digits; held out: 200 digits)", mnist, fit, held))
    det = detector(args.size)
    fit_images, source = natural_images(args.samples, args.size, seed=1)
    held_images, _ = natural_images(args.samples, args.size, seed=2)
    cases.append((f"detector at {args.size} ({args.samples} {source}; held out: {args.samples} others)", det,
                  Samples("input", fit_images, source), Samples("input", held_images, source)))
    exact = dict(float32=False)
    for title, model, fit_set, held_set in cases:
        layers = [layer for layer in find_layers(model, {}) if layer.compressible and layer.op == "Conv"]
        constants = constant_tensors(model)
        full = calibrate.collect_statistics(model, layers, fit_set, notes=[], limits=calibrate.CalibrationLimits(
            positions_per_sample=None, **exact))
        truth = calibrate.collect_statistics(model, layers, held_set, notes=[], limits=calibrate.CalibrationLimits(
            positions_per_sample=None, **exact))
        print(f"\n{title}")
        print("layer                           d     positions  P      vectors  ‖C_P−C‖/‖C‖  "
              "held-out err (full → P)")
        for positions in args.positions_list:
            sampled = calibrate.collect_statistics(model, layers, fit_set, notes=[], limits=calibrate.CalibrationLimits(
                positions_per_sample=positions, **exact))
            for layer in layers:
                if sampled[layer.name].positions_per_sample is None:
                    continue
                c_full, c_p = full[layer.name].second_moment, sampled[layer.name].second_moment
                rel = np.linalg.norm(c_p - c_full) / np.linalg.norm(c_full)
                weight = folded_weight(layer, constants)
                rank = max(1, min(weight.shape) // 4)
                err = []
                for stat in (full[layer.name], sampled[layer.name]):
                    factors = data_aware_factors(weight, 1, rank, stat.shrunk(), refit=True)
                    err.append(_metric_error(weight, factors.dense(), truth[layer.name].second_moment))
                per_sample = full[layer.name].count // len(fit_set)
                print(f"{layer.name[:30]:30s}  {layer.cols:5d} {per_sample:9d}  {positions:5d}  "
                      f"{sampled[layer.name].count:7d}  {rel:11.4f}  {err[0]:.4f} → {err[1]:.4f} "
                      f"({(err[1] / err[0] - 1) * 100:+.1f} %)", flush=True)


def precision(args: argparse.Namespace) -> None:
    """float32 chunk products against float64, on the same (sampled) vectors."""
    det = detector(args.size)
    images, source = natural_images(args.samples, args.size, seed=1)
    layers = [layer for layer in find_layers(det, {}) if layer.compressible]
    mnist_root = Path(__file__).resolve().parents[1] / "onnx_alds" / "data"
    from onnx_alds.inputs import load_inputs

    mnist = onnx.load(str(mnist_root / "mnist_resnet.onnx"))
    cases = [(f"detector at {args.size} ({source})", det, layers, Samples("input", images, source)),
             ("mnist-resnet (48 digits)", mnist, [layer for layer in find_layers(mnist, {}) if layer.compressible],
              load_inputs(mnist, npz=mnist_root / "mnist_calibration.npz"))]
    for title, model, chosen, data in cases:
        timings, results = {}, {}
        for float64 in (True, False):
            tick = time.perf_counter()
            results[float64] = calibrate.collect_statistics(model, chosen, data, notes=[],
                                                            limits=calibrate.CalibrationLimits(
                                                                positions_per_sample=args.positions,
                                                                float32=not float64))
            timings[float64] = time.perf_counter() - tick
        worst = max(np.linalg.norm(results[False][n].second_moment - results[True][n].second_moment, 2)
                    / np.linalg.norm(results[True][n].second_moment, 2) for n in results[True])
        worst_mean = max(np.linalg.norm(results[False][n].mean - results[True][n].mean)
                         / max(np.linalg.norm(results[True][n].mean), 1e-30) for n in results[True])
        print(f"{title}: float64 {timings[True]:.1f} s, float32 {timings[False]:.1f} s; "
              f"largest ‖C32 − C64‖₂/‖C64‖₂ over {len(chosen)} layers {worst:.2e}, mean {worst_mean:.2e}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=("detector", "vgg16", "quality", "precision"))
    parser.add_argument("--samples", type=positive_int, default=32)
    parser.add_argument("--size", type=positive_int, default=None, help="input side (detector 640, vgg16 224, quality 320)")
    parser.add_argument("--batch", type=positive_int, default=16, help="calibration batch size")
    parser.add_argument("--positions", type=positive_int, nargs="+", default=None,
                        help="positions per sample (quality: several); default the library's")
    parser.add_argument("--float64", action="store_true", help="float64 products")
    parser.add_argument("--compress", type=keep_ratio, default=None, help="also run compress(keep_params=F)")
    parser.add_argument("--forward", action="store_true", help="first time the plain forward pass over the samples")
    parser.add_argument("--activation-mib", type=positive_int, default=None,
                        help="CalibrationLimits.activation_bytes in MiB")
    parser.add_argument("--moment-mib", type=positive_int, default=None, help="CalibrationLimits.moment_bytes in MiB")
    args = parser.parse_args(argv)
    default_positions = calibrate.DEFAULT_LIMITS.positions_per_sample if HAS_LIMITS else None
    args.positions_list = args.positions or [64, 256, 1024]
    args.positions = args.positions[0] if args.positions else default_positions
    if args.case == "quality":
        args.size = args.size or 320
        args.samples = min(args.samples, 16)
        quality(args)
    elif args.case == "precision":
        args.size = args.size or 320
        args.samples = min(args.samples, 8)
        precision(args)
    else:
        size = args.size or (640 if args.case == "detector" else 224)
        model = detector(size) if args.case == "detector" else vgg16(size)
        images, source = natural_images(args.samples, size, seed=1)
        run_case(model, images, source, args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"max RSS {_rss_mib():.0f} MiB; process CPU {usage.ru_utime + usage.ru_stime:.0f} s")


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the figures printed above are all that was measured"))
